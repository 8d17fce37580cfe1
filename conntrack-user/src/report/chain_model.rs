//! The chain lengths expected under uniform hashing, for procfs mode where
//! nothing is measured.
//!
//! Every entry puts two nodes (original and reply tuple) into the one global
//! table (`__nf_conntrack_hash_insert` links both into `nf_conntrack_hash`,
//! <https://elixir.bootlin.com/linux/v6.1/source/net/netfilter/nf_conntrack_core.c>),
//! so N entries in B buckets make an
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

/// Above this λ the occupancy law is no longer walked term by term (the
/// walk takes about 25·√λ terms) but approximated: the Wilson–Hilferty
/// transform of the Poisson tail as a gamma tail, P(X ≥ k) = P(Γ(k) ≤ λ),
/// whose relative error at λ = 1e6 is far below the 1e-7 of the normal
/// tail used (checked against the exact walk in the tests).
pub const EXACT_LIMIT: f64 = 1e6;
/// Terms of the walk smaller than this, relative to the mode's, are left
/// out: B·P stays below 1 for any B up to u64::MAX (1.8e19 × 1e-30), so no
/// quantile, not even the longest chain expected in the largest table, can
/// lie among them.
const WALK_CUTOFF: f64 = 1e-30;
/// A bound on the walk's length (λ ≤ EXACT_LIMIT needs about 25,000 terms):
/// a deadline for the loops, never reached.
const WALK_MAX_TERMS: usize = 1 << 22;

/// The occupancy law Poisson(λ), as the model evaluates it.
enum Law {
    /// P(X = k0 + i) = pmf[i], normalised, every term of relative size
    /// WALK_CUTOFF or more.
    Walked { k0: u64, pmf: Vec<f64> },
    /// λ > EXACT_LIMIT: tails from the Wilson–Hilferty approximation.
    Approx { lambda: f64 },
}

impl Law {
    fn new(lambda: f64) -> Law {
        if lambda > EXACT_LIMIT {
            return Law::Approx { lambda };
        }
        // The recurrence p(k+1) = p(k)·λ/(k+1) outward from the mode,
        // relative to the mode's term: no factorial, no underflow (a
        // direct e^-λ·λ^k/k! underflows to 0 for every k once λ > 745,
        // which is how the old model lost all its mass).
        let mode = lambda.floor() as u64;
        let mut right = vec![1.0];
        let (mut t, mut k) = (1.0f64, mode);
        while right.len() < WALK_MAX_TERMS {
            k += 1;
            t *= lambda / k as f64;
            if t < WALK_CUTOFF {
                break;
            }
            right.push(t);
        }
        let mut left = Vec::new();
        let (mut t, mut k) = (1.0f64, mode);
        while k > 0 && left.len() < WALK_MAX_TERMS {
            // p(k-1) = p(k)·k/λ
            t *= k as f64 / lambda;
            k -= 1;
            if t < WALK_CUTOFF {
                break;
            }
            left.push(t);
        }
        let k0 = mode - left.len() as u64;
        left.reverse();
        left.extend(right);
        let sum: f64 = left.iter().sum();
        for p in &mut left {
            *p /= sum;
        }
        Law::Walked { k0, pmf: left }
    }

    /// P(X = k) (0 in the approximated regime, where every k the histogram
    /// shows is ~40 standard deviations below the mean).
    fn pmf(&self, k: u64) -> f64 {
        match self {
            Law::Walked { k0, pmf } => k
                .checked_sub(*k0)
                .and_then(|i| pmf.get(usize::try_from(i).ok()?))
                .copied()
                .unwrap_or(0.0),
            Law::Approx { .. } => 0.0,
        }
    }

    /// P(X ≥ k).
    fn tail(&self, k: u64) -> f64 {
        match self {
            Law::Walked { k0, pmf } => {
                let from = usize::try_from(k.saturating_sub(*k0)).unwrap_or(usize::MAX);
                // Summed from the top: no cancellation in small tails.
                pmf.iter().skip(from).rev().sum::<f64>().min(1.0)
            }
            Law::Approx { lambda } => wilson_hilferty_tail(*lambda, k as f64),
        }
    }

    /// Nearest-rank quantile of the occupancy: the smallest k with
    /// P(X ≤ k) ≥ q.
    fn quantile(&self, q: f64) -> f64 {
        match self {
            Law::Walked { k0, pmf } => {
                let mut acc = 0.0;
                for (i, p) in pmf.iter().enumerate() {
                    acc += p;
                    if acc >= q {
                        return (k0 + i as u64) as f64;
                    }
                }
                (k0 + pmf.len().saturating_sub(1) as u64) as f64
            }
            // P(X ≤ k) ≥ q ⇔ P(X ≥ k + 1) ≤ 1 - q; the smallest such k.
            Law::Approx { lambda } => {
                let (lo, hi) = approx_range(*lambda);
                search(lo, hi, |k| {
                    wilson_hilferty_tail(*lambda, k + 1.0) <= 1.0 - q
                })
            }
        }
    }

    /// The longest chain expected anywhere in `buckets` buckets: the
    /// largest m with buckets·P(X ≥ m) ≥ 1.
    fn longest(&self, buckets: u64) -> f64 {
        let b = buckets as f64;
        match self {
            Law::Walked { k0, pmf } => {
                let mut tail = 0.0;
                for (i, p) in pmf.iter().enumerate().rev() {
                    tail += p;
                    if b * tail >= 1.0 {
                        return (k0 + i as u64) as f64;
                    }
                }
                // P(X ≥ k0) is 1 up to the omitted terms: only a single
                // bucket misses it.
                *k0 as f64
            }
            Law::Approx { lambda } => {
                let (lo, hi) = approx_range(*lambda);
                // The smallest k that fails, less one, is the largest that holds.
                (search(lo, hi, |k| b * wilson_hilferty_tail(*lambda, k) < 1.0) - 1.0).max(0.0)
            }
        }
    }
}

/// Where every quantile of Poisson(λ) for a λ above EXACT_LIMIT lies: ±60
/// standard deviations hold any probability down to 1e-780.
fn approx_range(lambda: f64) -> (f64, f64) {
    let sd = lambda.sqrt();
    (
        (lambda - 60.0 * sd).floor().max(0.0),
        (lambda + 60.0 * sd).ceil() + 100.0,
    )
}

/// The smallest integer k in [lo, hi] where `pred` holds (hi when none), for
/// a `pred` false then true; bounded to 200 halvings, which cover any f64
/// range (beyond 2^53 the integers are spaced wider than 1, and the search
/// stops at the spacing).
fn search(mut lo: f64, mut hi: f64, pred: impl Fn(f64) -> bool) -> f64 {
    if pred(lo) {
        return lo;
    }
    // Invariant: pred(lo) false, hi the candidate.
    for _ in 0..200 {
        let mid = f64::midpoint(lo, hi).floor();
        if mid <= lo || mid >= hi {
            break;
        }
        if pred(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

/// P(Poisson(λ) ≥ k) = P(Gamma(k, 1) ≤ λ) (k ≥ 1), by the Wilson–Hilferty
/// cube-root normal approximation of the gamma law; for large λ (above
/// 1e6 here, so a shape k over 1e5 wherever the tail is not 0 or 1) its
/// error is far below the quantiles' integer resolution.
pub fn wilson_hilferty_tail(lambda: f64, k: f64) -> f64 {
    if k <= 0.0 {
        return 1.0;
    }
    if lambda.is_nan() || lambda <= 0.0 {
        return 0.0;
    }
    if lambda.is_infinite() {
        return 1.0;
    }
    let c = 1.0 / (9.0 * k);
    let x = ((lambda / k).cbrt() - 1.0 + c) / c.sqrt();
    normal_cdf(x)
}

/// Φ(x), through erfc (so that small lower tails keep their precision).
fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

/// The complementary error function, Chebyshev fit with relative error
/// below 1.2e-7 everywhere (Numerical Recipes, 2nd ed., §6.2 `erfcc`).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// ln k! (exact sum up to 32, Stirling's series beyond: error < 1e-15
/// relative there). Constant time for any k.
fn ln_factorial(k: u64) -> f64 {
    if k <= 32 {
        return (2..=k).map(|i| (i as f64).ln()).sum();
    }
    let n = k as f64;
    n * n.ln() - n + 0.5 * (2.0 * std::f64::consts::PI * n).ln() + 1.0 / (12.0 * n)
        - 1.0 / (360.0 * n * n * n)
        + 1.0 / (1260.0 * n.powi(5))
}

/// P(Poisson(λ) ≥ k) for any λ and k, in bounded time: an exact sum of the
/// terms that matter (ln space for the first, then the recurrence) up to
/// λ = EXACT_LIMIT, the Wilson–Hilferty approximation above. λ NaN or ≤ 0:
/// 0 (for k ≥ 1); λ infinite: 1.
pub fn poisson_upper_tail(lambda: f64, k: u64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if lambda.is_nan() || lambda <= 0.0 {
        return 0.0;
    }
    if lambda > EXACT_LIMIT {
        return wilson_hilferty_tail(lambda, k as f64);
    }
    let kf = k as f64;
    // A term relative to the running sum below this no longer changes it.
    const EPS: f64 = 1e-17;
    if kf > lambda {
        // Upward from k: terms fall by λ/(j+1) < 1 each step.
        let ln_pk = -lambda + kf * lambda.ln() - ln_factorial(k);
        let ratio = lambda / (kf + 1.0);
        if ln_pk < -700.0 {
            // Below f64's range anyway; the geometric bound p_k/(1-ratio)
            // is the value to the precision f64 has there.
            return (ln_pk - (1.0 - ratio).ln()).exp().min(1.0);
        }
        let mut t = ln_pk.exp();
        let mut sum = t;
        let mut j = kf;
        for _ in 0..WALK_MAX_TERMS {
            j += 1.0;
            t *= lambda / j;
            sum += t;
            if t < sum * EPS {
                break;
            }
        }
        sum.min(1.0)
    } else {
        // 1 - P(X ≤ k-1), downward from k-1 ≤ λ: terms fall by j/λ ≤ 1.
        let mut j = k - 1;
        let mut t = (-lambda + (j as f64) * lambda.ln() - ln_factorial(j)).exp();
        let mut sum = t;
        for _ in 0..WALK_MAX_TERMS {
            if j == 0 {
                break;
            }
            t *= j as f64 / lambda;
            j -= 1;
            sum += t;
            if t < sum * EPS {
                break;
            }
        }
        (1.0 - sum).clamp(0.0, 1.0)
    }
}

/// The model's figures in f64, for any load: chain lengths as an insert sees
/// them (occupancy + 1), except `longest`, which is the occupancy of the
/// fullest bucket expected (the figure a table scan shows).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChainQuantiles {
    /// 2N/B.
    pub lambda: f64,
    /// 1 + λ.
    pub mean: f64,
    pub p50: f64,
    /// Never below the mean by more than 0.01: the 0.99 quantile of
    /// Poisson(λ) is at least λ except for λ < ln(1/0.99), where it is 0.
    pub p99: f64,
    /// The largest m with B·P(Poisson(λ) ≥ m) ≥ 1 (at least 1).
    pub longest: f64,
}

/// The chains expected with `entries` live entries in `buckets` buckets;
/// `None` without buckets or entries.
pub fn chain_quantiles(entries: u64, buckets: u64) -> Option<ChainQuantiles> {
    if buckets == 0 || entries == 0 {
        return None;
    }
    let lambda = 2.0 * entries as f64 / buckets as f64;
    let law = Law::new(lambda);
    Some(ChainQuantiles {
        lambda,
        mean: 1.0 + lambda,
        p50: 1.0 + law.quantile(0.50),
        p99: 1.0 + law.quantile(0.99),
        longest: law.longest(buckets).max(1.0),
    })
}

/// The expected distribution of the length an insert sees, with `entries`
/// live entries in `buckets` buckets; `None` without buckets or entries.
///
/// The histogram holds lengths up to the walk limit, `truncated` the mass
/// beyond; p50/p99 are nearest-rank percentiles of the whole distribution
/// and `max` the longest chain expected anywhere in the table (the largest
/// occupancy m for which the expected number of buckets holding at least m
/// nodes, B·P(Poisson(λ) ≥ m), is still at least 1), at any load: past the
/// walk limit too, saturated at u32::MAX only beyond what a u32 holds.
pub fn expected_chains(entries: u64, buckets: u64) -> Option<ChainStats> {
    if buckets == 0 || entries == 0 {
        return None;
    }
    let lambda = 2.0 * entries as f64 / buckets as f64;
    let law = Law::new(lambda);
    let mut histogram = Vec::new();
    let mut samples = 0;
    // pmf(k) = P(occupancy = k); the insert then sees length k + 1.
    for k in 0..u64::from(WALK_LIMIT) {
        let c = (law.pmf(k) * MODEL_SCALE).round() as u64;
        if c > 0 {
            histogram.push((k as u32 + 1, c));
            samples += c;
        }
    }
    // `as` saturates: a length beyond u32 (λ > 4e9) shows as u32::MAX.
    Some(ChainStats {
        histogram,
        samples,
        mean: 1.0 + lambda,
        p50: (1.0 + law.quantile(0.50)) as u32,
        p99: (1.0 + law.quantile(0.99)) as u32,
        max: law.longest(buckets).max(1.0) as u32,
        truncated: (law.tail(u64::from(WALK_LIMIT)) * MODEL_SCALE).round() as u64,
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
                    .map_or(0.0, |(_, c)| *c as f64 / n as f64)
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
        // λ = 600: most inserts see chains beyond the walk limit; the
        // histogram stops there, the quantiles do not (sd √600 ≈ 24.5:
        // p50 ≈ 601, p99 ≈ 601 + 2.33 sd ≈ 658; the fullest of 1024
        // buckets ≈ 600 + 3.1 sd ≈ 677).
        let s = expected_chains(300 * 1024, 1024).expect("model");
        assert!(s.truncated > 999_000, "{s:?}");
        assert!(s.p50.abs_diff(601) <= 1, "{s:?}");
        assert!((655..=662).contains(&s.p99), "{s:?}");
        assert!((670..=685).contains(&s.max), "{s:?}");
        assert!(f64::from(s.p99) >= s.mean);
        assert!(expected_chains(0, 1024).is_none());
        assert!(expected_chains(5, 0).is_none());
    }
}
