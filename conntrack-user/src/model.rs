//! The chain lengths expected under uniform hashing, for procfs mode where
//! nothing is measured.
//!
//! Every entry puts two nodes (original and reply tuple) into the one global
//! table (kernel-conntrack notes §5), so N entries in B buckets make an
//! average bucket occupancy λ = 2N/B. With a uniform hash, the occupancy of
//! the bucket a new node lands in is Poisson(λ), and the length an insert
//! sees (the probes' figure: the new node included) is 1 + Poisson(λ). Both
//! directions follow the same law.

use crate::report::{ChainLengths, ChainStats};

/// The scale of a modeled histogram: counts are probabilities × 1e6
/// (rounded), not observed inserts. `samples` is the sum of the rounded
/// counts and `truncated` the scaled probability of a length over
/// [`WALK_LIMIT`].
pub const MODEL_SCALE: f64 = 1e6;
/// Lengths the probes can report (longer walks are `truncated`).
pub const WALK_LIMIT: u32 = 255;

/// ln P(Poisson(λ) = k) for k in 0..=n.
fn ln_poisson(lambda: f64, n: u32) -> Vec<f64> {
    let mut out = Vec::with_capacity(n as usize + 1);
    let ln_l = lambda.ln();
    let mut ln_fact = 0.0;
    for k in 0..=n {
        if k > 0 {
            ln_fact += f64::from(k).ln();
        }
        out.push(-lambda + f64::from(k) * ln_l - ln_fact);
    }
    out
}

/// The expected distribution of the length an insert sees, with `entries`
/// live entries in `buckets` buckets; `None` without buckets or entries.
///
/// p50/p99 are nearest-rank percentiles of the distribution (lengths up to
/// the walk limit); `max` is the longest chain expected anywhere in the
/// table: the largest occupancy m for which the expected number of buckets
/// holding at least m nodes, B·P(Poisson(λ) ≥ m), is still at least 1.
pub fn expected_chains(entries: u64, buckets: u64) -> Option<ChainStats> {
    if buckets == 0 || entries == 0 {
        return None;
    }
    let lambda = 2.0 * entries as f64 / buckets as f64;
    // pmf[k] = P(occupancy = k); the insert then sees length k + 1.
    let pmf: Vec<f64> = ln_poisson(lambda, WALK_LIMIT)
        .into_iter()
        .map(f64::exp)
        .collect();
    let within: f64 = pmf.iter().take(WALK_LIMIT as usize).sum();
    let mut histogram = Vec::new();
    let mut samples = 0;
    for (k, p) in pmf.iter().take(WALK_LIMIT as usize).enumerate() {
        let c = (p * MODEL_SCALE).round() as u64;
        if c > 0 {
            histogram.push((k as u32 + 1, c));
            samples += c;
        }
    }
    let quantile = |q: f64| -> u32 {
        let mut acc = 0.0;
        for (k, p) in pmf.iter().take(WALK_LIMIT as usize).enumerate() {
            acc += p;
            if acc >= q * within {
                return k as u32 + 1;
            }
        }
        WALK_LIMIT
    };
    // Tail from the top: P(X ≥ m) without cancellation for large m.
    let mut tail = 1.0 - pmf.iter().sum::<f64>().min(1.0);
    let mut max = 0;
    for m in (1..=WALK_LIMIT).rev() {
        tail += pmf[m as usize];
        if buckets as f64 * tail >= 1.0 {
            max = m;
            break;
        }
    }
    Some(ChainStats {
        histogram,
        samples,
        mean: 1.0 + lambda,
        p50: quantile(0.50),
        p99: quantile(0.99),
        max: max.max(1),
        truncated: ((1.0 - within).max(0.0) * MODEL_SCALE).round() as u64,
        modeled: true,
    })
}

/// Both directions, which follow the same law.
pub fn expected_chain_lengths(entries: u64, buckets: u64) -> Option<ChainLengths> {
    let s = expected_chains(entries, buckets)?;
    Some(ChainLengths {
        orig: s.clone(),
        reply: s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Fills `buckets` with the 2N nodes of `entries` entries, then lets
    /// `probes` further inserts each see (and leave) a random bucket.
    fn simulate(entries: u64, buckets: u64, probes: u64, seed: u64) -> (Vec<u64>, u32) {
        let mut rng = XorShift(seed);
        let mut occ = vec![0u32; buckets as usize];
        for _ in 0..2 * entries {
            occ[(rng.next() % buckets) as usize] += 1;
        }
        let mut hist = vec![0u64; 258];
        for _ in 0..probes {
            let len = occ[(rng.next() % buckets) as usize] + 1;
            hist[len.min(256) as usize] += 1;
        }
        (hist, occ.into_iter().max().unwrap_or(0))
    }

    #[test]
    fn matches_a_simulated_table() {
        for (entries, buckets) in [(65_536u64, 65_536u64), (20_000, 16_384), (300_000, 65_536)] {
            let model = expected_chains(entries, buckets).expect("model");
            let (hist, sim_max) = simulate(entries, buckets, 400_000, 0x9e37_79b9_7f4a_7c15);
            let sim = ChainStats::from_counts(&hist);
            // Total variation distance between the two distributions.
            let p = |h: &[(u32, u64)], n: u64, len: u32| {
                h.iter()
                    .find(|(l, _)| *l == len)
                    .map(|(_, c)| *c as f64 / n as f64)
                    .unwrap_or(0.0)
            };
            let tv: f64 = (1..=WALK_LIMIT)
                .map(|l| {
                    (p(&model.histogram, model.samples, l) - p(&sim.histogram, sim.samples, l))
                        .abs()
                })
                .sum::<f64>()
                / 2.0;
            // One random table differs from the law by sampling noise (~0.01 for
            // 16k buckets); a wrong law (λ = N/B, or no +1) is off by > 0.3.
            assert!(tv < 0.025, "{entries}/{buckets}: tv {tv}");
            assert!(
                (model.mean - sim.mean).abs() / sim.mean < 0.01,
                "{model:?} {sim:?}"
            );
            assert!(model.p50.abs_diff(sim.p50) <= 1, "{model:?} {sim:?}");
            assert!(model.p99.abs_diff(sim.p99) <= 1, "{model:?} {sim:?}");
            // The longest chain of one random table is near the expectation.
            assert!(
                model.max.abs_diff(sim_max) <= 2,
                "{} vs {sim_max}",
                model.max
            );
            assert!(model.modeled);
        }
    }

    #[test]
    fn overloaded_tables_truncate() {
        // λ = 600: most inserts see chains beyond the walk limit.
        let s = expected_chains(300 * 1024, 1024).expect("model");
        assert!(s.truncated > 900_000, "{s:?}");
        assert_eq!(s.max, WALK_LIMIT);
        assert!(expected_chains(0, 1024).is_none());
        assert!(expected_chains(5, 0).is_none());
    }
}
