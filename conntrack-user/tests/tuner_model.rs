//! The tuner's arithmetic, without a kernel: the chain model and every
//! figure of recommend's comparison table against direct simulations of a
//! hash table (2N nodes hashed at random into B buckets) from 10 to
//! 10,000,000 entries, the loads that once gave 1024 buckets, and
//! recommend over the whole input space of a report (property tests): no
//! panic, no wrap, no hang, and its invariants whenever it answers.
//!
//! No host state is read or written: nothing here needs the host lock.

use std::{
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use conntrack_user::{
    report::Report,
    report::chain_model,
    tune::recommend::{self, Budget, Options, RecommendError, Recommendation},
    tune::sizing::{self, EntryCost, Size},
};
use proptest::prelude::*;
use serde_json::{Value, json};

/// wyrand (Wang Yi's; passes PractRand and BigCrush): fast even in a debug
/// build, and a fair stand-in for the kernel's keyed hash of a tuple, which
/// is what the uniform model assumes.
struct WyRand(u64);

impl WyRand {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    }
}

/// Per-bucket node counts: a byte each while every bucket holds under 256
/// (the recommended tables: 24 MB for 24 million buckets, which stays in
/// the L3 cache, where u32 counts were a cache and TLB miss per node and
/// 8 s of a debug build), widened to u32 on the first bucket that would
/// overflow (the overloaded tables, all small).
enum Counts {
    Narrow(Vec<u8>),
    Wide(Vec<u32>),
}

impl Counts {
    fn len(&self) -> usize {
        match self {
            Counts::Narrow(v) => v.len(),
            Counts::Wide(v) => v.len(),
        }
    }

    /// Widens the counts before a fill to `nodes` could take a bucket past
    /// a byte: beyond λ + 10 sd + 40 no bucket goes (P < 1e-20).
    fn room_for(&mut self, nodes: u64) {
        let lambda = nodes as f64 / self.len() as f64;
        if let Counts::Narrow(v) = self
            && lambda + 10.0 * lambda.sqrt() + 40.0 > f64::from(u8::MAX)
        {
            *self = Counts::Wide(v.iter().map(|c| u32::from(*c)).collect());
        }
    }

    /// Buckets per occupancy (while loops over slices: see fill_together).
    fn histogram(&self) -> Vec<u64> {
        let mut hist = vec![0u64; 256];
        macro_rules! count {
            ($v:expr) => {{
                let v = $v.as_slice();
                let mut j = 0;
                while j < v.len() {
                    let o = v[j] as usize;
                    if o >= hist.len() {
                        hist.resize(o + 1, 0);
                    }
                    hist[o] += 1;
                    j += 1;
                }
            }};
        }
        match self {
            Counts::Narrow(v) => count!(v),
            Counts::Wide(v) => count!(v),
        }
        while hist.len() > 1 && hist.last() == Some(&0) {
            hist.pop();
        }
        hist
    }
}

/// A simulated table: per-bucket node counts, filled a node at a time.
struct Table {
    occ: Counts,
    nodes: u64,
    rng: WyRand,
}

/// What a simulated table shows, as the model states it: the length an
/// insert sees is its bucket's occupancy + 1, the insert's bucket uniform,
/// so the law of that length is the occupancy histogram over buckets.
struct Sim {
    buckets: u64,
    nodes: u64,
    mean: f64,
    p50: u64,
    p99: u64,
    /// Occupancy of the fullest bucket.
    max: u64,
    /// Buckets per occupancy.
    hist: Vec<u64>,
}

/// The figures without the histogram (thousands of zeros in a message).
impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Sim {{ buckets: {}, nodes: {}, mean: {:.3}, p50: {}, p99: {}, max: {} }}",
            self.buckets, self.nodes, self.mean, self.p50, self.p99, self.max
        )
    }
}

impl Sim {
    /// Share of buckets holding at most `k` nodes.
    fn share_at_most(&self, k: u64) -> f64 {
        let upto = usize::try_from(k.saturating_add(1))
            .unwrap_or(usize::MAX)
            .min(self.hist.len());
        self.hist[..upto].iter().sum::<u64>() as f64 / self.buckets as f64
    }
}

impl Table {
    fn new(buckets: u64, seed: u64) -> Table {
        Table {
            occ: Counts::Narrow(vec![
                0;
                usize::try_from(buckets).expect("buckets fit in memory")
            ]),
            nodes: 0,
            rng: WyRand(seed),
        }
    }

    /// Hashes nodes in until the table holds `nodes`.
    fn fill_to(&mut self, nodes: u64) {
        let mut rng = WyRand(self.rng.next());
        Table::fill_together(std::slice::from_mut(self), nodes, &mut rng);
    }

    /// Hashes nodes into every table at once until each holds `nodes`
    /// (the tables must hold the same number now): one random hash per
    /// node, reduced to each table's size, as the kernel reduces one tuple
    /// hash to whatever size the table has. Each table on its own is a
    /// uniform hashing of its nodes (the rows are correlated, which no
    /// check here depends on).
    ///
    /// Speed, for a debug build: hashes come in blocks, and for a table
    /// larger than the caches a block is first ordered by its top 10 bits
    /// (a counting sort), so that its increments walk the table in order:
    /// random increments into 24 million buckets were a cache and TLB miss
    /// each, 8 of the 10 s that 10,000,000 entries took. Order within a
    /// block changes no count.
    fn fill_together(tables: &mut [Table], nodes: u64, rng: &mut WyRand) {
        const BLOCK: usize = 1 << 16;
        const BIG: usize = 1 << 20;
        let from = tables.first().map_or(nodes, |t| t.nodes);
        assert!(tables.iter().all(|t| t.nodes == from));
        let big = tables.iter().any(|t| t.occ.len() > BIG);
        for t in tables.iter_mut() {
            t.occ.room_for(nodes);
        }
        let mut hashes = vec![0u64; BLOCK];
        let mut ordered = vec![0u64; BLOCK];
        let mut n = from;
        while n < nodes {
            let len = usize::try_from(nodes - n).unwrap_or(BLOCK).min(BLOCK);
            for h in &mut hashes[..len] {
                *h = rng.next();
            }
            if big {
                let mut start = [0usize; 1025];
                for h in &hashes[..len] {
                    start[(h >> 54) as usize + 1] += 1;
                }
                for i in 1..1025 {
                    start[i] += start[i - 1];
                }
                for h in &hashes[..len] {
                    let slot = &mut start[(h >> 54) as usize];
                    ordered[*slot] = *h;
                    *slot += 1;
                }
            }
            for t in tables.iter_mut() {
                let b = t.occ.len() as u64;
                let src: &[u64] = if t.occ.len() > BIG { &ordered } else { &hashes };
                // floor(h·B / 2^64) from two 32x32 products (exact for
                // B < 2^32; u128 arithmetic is a call in debug). Plain
                // slice indexing in while loops: a debug build makes a
                // call of every iterator step and Vec index. A count
                // past its width panics (overflow checks), never wraps.
                macro_rules! add {
                    ($v:expr) => {{
                        let v = $v.as_mut_slice();
                        let mut j = 0;
                        while j < len {
                            let h = src[j];
                            let i = ((h >> 32) * b + (((h & 0xffff_ffff) * b) >> 32)) >> 32;
                            v[i as usize] += 1;
                            j += 1;
                        }
                    }};
                }
                match &mut t.occ {
                    Counts::Narrow(v) => add!(v),
                    Counts::Wide(v) => add!(v),
                }
            }
            n += len as u64;
        }
        for t in tables.iter_mut() {
            t.nodes = nodes.max(from);
        }
    }

    fn stats(&self) -> Sim {
        let b = self.occ.len() as u64;
        let hist = self.occ.histogram();
        let max = hist.len() - 1;
        // Nearest rank over buckets: the smallest occupancy with at least
        // ceil(q·B) buckets at or below it.
        let quantile = |q: f64| -> u64 {
            let rank = (q * b as f64).ceil() as u64;
            let mut seen = 0;
            for (k, c) in hist.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return k as u64;
                }
            }
            max as u64
        };
        Sim {
            buckets: b,
            nodes: self.nodes,
            mean: 1.0 + self.nodes as f64 / b as f64,
            p50: 1 + quantile(0.50),
            p99: 1 + quantile(0.99),
            max: max as u64,
            hist,
        }
    }
}

/// Sampling noise of a nearest-rank q-quantile over B buckets, in chain
/// units, four standard deviations plus one for the integer steps: the
/// share of buckets at or below a length is binomial (sd √(q(1-q)/B)), and
/// a share turns into a length through the density at the quantile,
/// φ(z_q)/√λ (normal approximation; where λ is small the steps are whole
/// lengths and the +1 covers them). A false alarm per check is ~1e-4.
fn quantile_tol(q: f64, lambda: f64, buckets: u64) -> f64 {
    let phi = match q {
        0.5 => 0.398_942, // φ(0)
        _ => 0.026_652,   // φ(2.326), q = 0.99
    };
    1.0 + 4.0 * (q * (1.0 - q) / buckets as f64).sqrt() * lambda.max(1.0).sqrt() / phi
}

/// Noise of the fullest of B buckets: the maximum of B Poisson(λ) draws
/// spreads like a Gumbel of scale σ/√(2 ln B), sd 1.28 times that; four of
/// those plus 2 for the integer steps and for the model's definition (the
/// largest m with B·P(X ≥ m) ≥ 1 sits a fraction of a scale from the
/// median of the maximum).
fn max_tol(lambda: f64, buckets: u64) -> f64 {
    2.0 + 4.0 * 1.28 * lambda.sqrt() / (2.0 * (buckets as f64).ln()).sqrt()
}

/// P(Poisson(λ) ≤ k), summed directly: the test's own oracle, independent
/// of the model (good for the small k and moderate λ the chain targets
/// mean; for λ > 700 e^-λ underflows and it says 0, which is right to the
/// precision that matters here).
fn poisson_cdf(lambda: f64, k: u64) -> f64 {
    let mut t = (-lambda).exp();
    let mut s = t;
    for j in 1..=k {
        t *= lambda / j as f64;
        s += t;
    }
    s
}

/// A report as `observe` writes it, with only what the tuner reads (as
/// recommend.rs's unit tests build it); `extra` replaces top-level keys.
fn report(extra: Value) -> Report {
    let mut r = json!({
        "ctscope_version": "0.1.0",
        "mode": "kprobe",
        "kernel_release": "6.1.0-50-cloud-amd64",
        "duration_s": 120.0,
        "inserts": 10000,
        "drops": {"table_full": 0, "chain_too_long": 0, "clash": 0, "other": 0, "alloc_failed": 0},
        "settings": {"buckets": 65536, "max": 65536, "slab_object_size": 248, "slab_size": 256,
                     "ram_bytes": 2u64 << 30, "cpus": 2,
                     "timeouts": {"udp_timeout": 30, "tcp_timeout_time_wait": 120}},
        "kernel_stats": {"chaintoolong": 0},
        "occupancy": {"interval_s": 1.0, "samples": 120, "total_start": 0, "total_end": 3000,
                      "total_peak": 3000, "total_peak_at_s": 60.0, "netns_peak": 3000,
                      "netns_peak_name": "host", "growth_per_hour": null, "per_netns": []},
        "notices": []
    });
    if let (Some(o), Value::Object(e)) = (r.as_object_mut(), extra) {
        o.extend(e);
    }
    serde_json::from_value(r).expect("a report")
}

/// A report whose busiest namespace (and the whole table) peaked at `peak`,
/// on a host with 1024 buckets now: the setting that overloads at scale.
fn peak_report(peak: u64) -> Report {
    report(json!({
        "mode": "procfs",
        "drops": {"table_full": null, "chain_too_long": null, "clash": null, "other": null, "alloc_failed": null},
        "settings": {"buckets": 1024, "max": 1u64 << 21, "slab_size": 256,
                     "ram_bytes": (2u64 << 30) - (100 << 20), "cpus": 2, "timeouts": {}},
        "occupancy": {"interval_s": 1.0, "samples": 120, "total_peak": peak, "netns_peak": peak,
                      "netns_peak_name": "host", "per_netns": []}
    }))
}

/// Checks one (entries, buckets) figure of the model against a simulated
/// table holding 2·entries nodes; returns a line for the log.
fn check_against(label: &str, entries: u64, buckets: u64, sim: &Sim) -> String {
    let b = sizing::table_buckets(buckets);
    assert_eq!(sim.buckets, b);
    assert_eq!(sim.nodes, 2 * entries);
    let lambda = 2.0 * entries as f64 / b as f64;
    let chains = sizing::expected(entries, buckets, 1.0);
    let stats = chain_model::expected_chains(entries, b).expect("a model");
    // The mean is exact in the simulation (nodes / buckets): only the
    // report's rounding to 0.01 separates them.
    assert!(
        (chains.mean - sim.mean).abs() <= 0.005 + 1e-9,
        "{label}: mean {} vs simulated {}",
        chains.mean,
        sim.mean
    );
    let tol99 = quantile_tol(0.99, lambda, b);
    assert!(
        (chains.p99 - sim.p99 as f64).abs() <= tol99,
        "{label}: p99 {} vs simulated {} (tolerance {tol99:.1}; {sim:?})",
        chains.p99,
        sim.p99
    );
    assert!(
        (f64::from(stats.p99) - sim.p99 as f64).abs() <= tol99,
        "{label}: ChainStats p99 {} vs simulated {}",
        stats.p99,
        sim.p99
    );
    let tol50 = quantile_tol(0.5, lambda, b);
    assert!(
        (f64::from(stats.p50) - sim.p50 as f64).abs() <= tol50,
        "{label}: p50 {} vs simulated {} (tolerance {tol50:.1})",
        stats.p50,
        sim.p50
    );
    let tolmax = max_tol(lambda, b);
    assert!(
        (f64::from(stats.max) - sim.max as f64).abs() <= tolmax,
        "{label}: longest chain {} vs simulated {} (tolerance {tolmax:.1})",
        stats.max,
        sim.max
    );
    // Never a p99 below the mean (up to the mean's rounding).
    assert!(chains.p99 + 0.01 >= chains.mean, "{label}: {chains:?}");
    format!(
        "{label}: N {entries} B {b} λ {lambda:.3}: mean {:.2}/{:.2} p50 {}/{} p99 {}/{} max {}/{} (model/simulated)",
        chains.mean, sim.mean, stats.p50, sim.p50, chains.p99, sim.p99, stats.max, sim.max
    )
}

/// Every figure of the comparison table, and the recommended size's chains
/// at max, against simulated tables from 10 to 10,000,000 entries: light
/// loads (the recommended sizes, λ < 1) and very heavy ones (1,000,000 and
/// 10,000,000 entries in the 1024 buckets the report has now: λ ≈ 1953 and
/// 19531, where the old model said p99 1).
#[test]
fn comparison_table_matches_simulated_tables() {
    let started = Instant::now();
    let mut log = Vec::new();
    for (i, peak) in [10u64, 1_000, 100_000, 1_000_000, 10_000_000]
        .into_iter()
        .enumerate()
    {
        // At 10,000,000 entries the default headroom (2) would ask for a
        // 49-million-bucket table filled with 40 million nodes, each a cache
        // miss: headroom 1 halves that (max ~ the peak), and 1,000,000
        // covers the default headroom at max.
        let opts = Options {
            headroom: if peak >= 10_000_000 { 1.0 } else { 2.0 },
            ..Options::default()
        };
        let rec = recommend::recommend(&peak_report(peak), &opts)
            .unwrap_or_else(|e| panic!("{peak}: {e}"));
        assert_eq!(rec.comparison.len(), 5);
        // Rows of equal size share one simulated table.
        let mut sizes: Vec<u64> = rec
            .comparison
            .iter()
            .map(|c| sizing::table_buckets(c.buckets))
            .collect();
        sizes.sort_unstable();
        sizes.dedup();
        let mut tables: Vec<Table> = sizes
            .iter()
            .map(|b| Table::new(*b, 0x5eed ^ ((i as u64) << 32) ^ b))
            .collect();
        Table::fill_together(&mut tables, 2 * peak, &mut WyRand(0x00c0_ffee ^ i as u64));
        for c in &rec.comparison {
            let b = sizing::table_buckets(c.buckets);
            let t = &tables[sizes.binary_search(&b).expect("a table")];
            // The table's own figures are the model's at the peak.
            let at_peak = sizing::expected(peak, c.buckets, 1.0);
            assert_eq!((c.mean_chain, c.p99_chain), (at_peak.mean, at_peak.p99));
            log.push(check_against(
                &format!("{peak} {}", c.method),
                peak,
                c.buckets,
                &t.stats(),
            ));
        }
        // The recommended size when full: the same table, filled on to max.
        let b = sizing::table_buckets(rec.buckets);
        let t = &mut tables[sizes.binary_search(&b).expect("the ctscope row's table")];
        t.fill_to(2 * rec.max);
        let sim = t.stats();
        log.push(check_against(
            &format!("{peak} ctscope at max"),
            rec.max,
            rec.buckets,
            &sim,
        ));
        // And what the target means in a real (simulated) table: at least
        // 99% of buckets short enough, up to the binomial noise of 4 sd.
        let target = u64::from(opts.target_chain);
        let share = sim.share_at_most(target - 1);
        let noise = 4.0 * (0.99 * 0.01 / sim.buckets as f64).sqrt();
        assert!(
            share >= 0.99 - noise,
            "{peak}: {share} of buckets within the target at max ({sim:?})"
        );
    }
    for l in &log {
        eprintln!("{l}");
    }
    eprintln!("simulations took {:?}", started.elapsed());
}

/// The model alone at scales the comparison does not reach, against a
/// simulated table: few entries in many buckets and many in few.
#[test]
fn model_matches_simulated_tables_at_extreme_loads() {
    for (entries, buckets) in [
        (10u64, 1 << 20),
        (1_000, 1024),
        (20_000, 1024),
        (300 * 1024, 1024),
        (1_000_000, 1024),
        (1_000_000, 1 << 21),
        (2_000_000, 512),
    ] {
        let mut t = Table::new(sizing::table_buckets(buckets), entries ^ buckets);
        t.fill_to(2 * entries);
        let line = check_against("extreme", entries, buckets, &t.stats());
        eprintln!("{line}");
    }
}

/// A regression: busiest-namespace peaks of 350,000, 400,000 and 1,000,000 gave
/// 1,701,888 / 1024 / 1024 buckets (the last with max 2,000,896 and "p99
/// 1"). The buckets must keep the full table within the target chain, by
/// the test's own Poisson sum, and by a simulated table for the largest.
#[test]
fn issue_peaks_get_buckets_that_keep_full_tables_short() {
    let target = Options::default().target_chain;
    for peak in [350_000u64, 400_000, 1_000_000] {
        let rec = recommend::recommend(&peak_report(peak), &Options::default())
            .unwrap_or_else(|e| panic!("{peak}: {e}"));
        assert!(rec.max >= 2 * peak, "{peak}: max {}", rec.max);
        let b = sizing::table_buckets(rec.buckets);
        let lambda = 2.0 * rec.max as f64 / b as f64;
        // p99 <= target ⇔ P(occupancy <= target - 1) >= 0.99; at target 4
        // that needs λ <= 0.82.
        let f = poisson_cdf(lambda, u64::from(target) - 1);
        assert!(
            f >= 0.99,
            "{peak}: {} buckets for max {}: 2·max/buckets = {lambda:.2}, only {:.4} of buckets within the target chain {target}",
            rec.buckets,
            rec.max,
            f
        );
        assert!(lambda <= 0.83, "{peak}: λ {lambda}");
        // Not wastefully large either: a 10% smaller table would miss.
        let smaller = 2.0 * rec.max as f64 / (b as f64 * 0.9);
        assert!(poisson_cdf(smaller, u64::from(target) - 1) < 0.99, "{peak}");
        let full = sizing::expected(rec.max, rec.buckets, 1.0);
        eprintln!(
            "peak {peak}: max {} buckets {} (2·max/buckets {lambda:.3}, {f:.4} of buckets within {target}), full: mean {} p99 {}",
            rec.max, rec.buckets, full.mean, full.p99
        );
        assert!(
            full.p99 >= full.mean && full.p99 <= f64::from(target),
            "{full:?}"
        );
        // The comparison's rows at 1024 buckets: chains in the thousands,
        // never a p99 below the mean.
        for c in &rec.comparison {
            assert!(c.p99_chain >= c.mean_chain, "{peak}: {c:?}");
        }
        let current = &rec.comparison[0];
        assert_eq!(current.buckets, 1024);
        assert!(
            current.p99_chain > 2.0 * peak as f64 / 1024.0,
            "{current:?}"
        );
        // A table that long is far over the kernel's chain limit (50..79):
        // the refusal estimate says so (it said ~0: the tail summed from
        // the limit upward underflowed when λ was far above it).
        assert!(
            sizing::expected_chain_refusals(10_000, peak, 1024) > 19_000.0,
            "{peak}"
        );
        assert!((sizing::poisson_tail(2.0 * peak as f64 / 1024.0, 52) - 1.0).abs() < 1e-9);
    }
    // The 1,000,000 recommendation, full, in a simulated table: in
    // comparison_table_matches_simulated_tables (the same report).
}

/// Numbers that wrapped (a peak of u64::MAX or an infinite headroom gave
/// max 0) and a budget loop that ran for minutes (1 GiB, a peak of 1e12):
/// each now an answer or a clear error, within seconds.
#[test]
fn absurd_reports_give_an_answer_or_an_error_never_a_wrap_or_a_hang() {
    let within = |report: Report, opts: Options| -> Result<Recommendation, RecommendError> {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let _ = tx.send(recommend::recommend(&report, &opts));
        });
        rx.recv_timeout(Duration::from_secs(20))
            .expect("recommend answered within 20 s")
    };
    for peak in [u64::MAX, 1u64 << 63, 1_000_000_000_000] {
        match within(peak_report(peak), Options::default()) {
            Ok(r) => panic!("{peak}: max {} buckets {}", r.max, r.buckets),
            Err(e) => assert!(e.to_string().contains("nf_conntrack_max"), "{e}"),
        }
    }
    let r = within(
        peak_report(1_000_000_000_000),
        Options {
            budget: Some(Budget::Bytes(1 << 30)),
            ..Options::default()
        },
    );
    assert!(r.is_err());
    // Drops and evictions that overflow when added.
    let wrap = report(json!({
        "drops": {"table_full": u64::MAX, "chain_too_long": 0, "clash": 0, "other": 0, "alloc_failed": 0},
        "early_drop": {"attempts": 5, "evicted": u64::MAX}
    }));
    assert!(within(wrap, Options::default()).is_err());
    // An infinite headroom: max as high as the kernel and the target allow.
    let r = within(
        report(json!({})),
        Options {
            headroom: f64::INFINITY,
            ..Options::default()
        },
    )
    .expect("a recommendation");
    assert!(r.max >= 3000 * 2, "{}", r.max);
    assert!(!r.warnings.is_empty());
    for bad in [f64::NAN, 0.5, f64::NEG_INFINITY] {
        assert!(
            within(
                report(json!({})),
                Options {
                    headroom: bad,
                    ..Options::default()
                }
            )
            .is_err()
        );
    }
}

/// The exact walk and the approximation above λ = 1e6 agree where they meet.
#[test]
fn exact_and_approximated_laws_meet() {
    let exact = chain_model::chain_quantiles(500_000_000, 1000).expect("λ = 1e6, walked");
    let approx =
        chain_model::chain_quantiles(500_000_001, 1000).expect("λ just over, approximated");
    assert_eq!(exact.lambda, 1e6);
    assert!(approx.lambda > chain_model::EXACT_LIMIT);
    for (a, b) in [
        (exact.p50, approx.p50),
        (exact.p99, approx.p99),
        (exact.longest, approx.longest),
    ] {
        assert!((a - b).abs() <= 2.0, "{exact:?} vs {approx:?}");
    }
    // p99 = λ + 2.326·1000 + ~1 (skew); the fullest of 1000 buckets at
    // z ≈ 3.09.
    assert!((exact.p99 - 1_002_327.0).abs() < 5.0, "{exact:?}");
    assert!((exact.longest - 1_003_090.0).abs() < 10.0, "{exact:?}");
    for k in [995_000u64, 1_000_000, 1_002_326, 1_004_000] {
        let e = chain_model::poisson_upper_tail(1e6, k);
        let w = chain_model::wilson_hilferty_tail(1e6, k as f64);
        assert!((e - w).abs() <= 1e-4 * e.max(1e-3), "{k}: {e} vs {w}");
    }
    // Far beyond: finite, ordered figures, quickly.
    for (n, b) in [(u64::MAX, 1024), (u64::MAX, 512), (1u64 << 40, 1024)] {
        let q = chain_model::chain_quantiles(n, b).expect("q");
        assert!(
            q.p99.is_finite() && q.p99 >= q.mean && q.longest >= q.p99 - 1.0,
            "{q:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Property tests: recommend over the whole input space of a report.

/// Counts at every scale: small, large, any u64, and the edges.
fn count() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => 0..5_000u64,
        3 => 0..50_000_000u64,
        2 => any::<u64>(),
        1 => (0u32..64).prop_map(|s| 1u64 << s),
        1 => Just(u64::MAX),
    ]
}

/// Finite report numbers (JSON has no NaN or infinity): ordinary, zero,
/// negative and huge.
fn finite() -> impl Strategy<Value = f64> {
    prop_oneof![
        3 => 0.0..100_000.0f64,
        1 => Just(0.0),
        1 => -1e6..0.0f64,
        1 => Just(1e300),
        1 => Just(-1e300),
    ]
}

/// Any f64, the non-finite ones included (options are not JSON).
fn any_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => 1.0..10.0f64,
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => Just(f64::NAN),
        1 => Just(f64::MAX),
        1 => Just(1e300),
        1 => -10.0..1.0f64,
        1 => Just(1.0),
    ]
}

fn budget() -> impl Strategy<Value = Option<Budget>> {
    prop_oneof![
        2 => Just(None),
        2 => count().prop_map(|b| Some(Budget::Bytes(b))),
        2 => any_f64().prop_map(|p| Some(Budget::Percent(p))),
        1 => (0.0..100.0f64).prop_map(|p| Some(Budget::Percent(p))),
    ]
}

#[derive(Debug, Clone)]
struct Input {
    report: Value,
    opts: Options,
}

fn opt<S: Strategy>(s: S) -> impl Strategy<Value = Option<S::Value>>
where
    S::Value: Clone,
{
    prop_oneof![1 => Just(None), 3 => s.prop_map(Some)]
}

fn input() -> impl Strategy<Value = Input> {
    let occupancy = (opt(count()), opt(count()), opt(finite()));
    let drops = (opt(count()), opt(count()), opt(count()), opt(count()));
    let netns = prop::collection::vec((opt(count()), opt(count())), 0..3);
    let settings = (
        opt(count()),
        opt(count()),
        opt(count()),
        opt(count()),
        opt(count()),
    );
    let run = (
        finite(),
        opt(count()),
        prop_oneof![Just("kprobe"), Just("procfs")],
        prop_oneof![
            Just("6.1.0-50-cloud-amd64"),
            Just("5.10.0-32-cloud-amd64"),
            Just("x")
        ],
    );
    let ext = opt((count(), finite()));
    let expiry = opt((count(), count(), count(), finite()));
    let opts = (any_f64(), budget(), 0u32..=50);
    (occupancy, drops, netns, settings, run, ext, expiry, opts).prop_map(
        |(occ, drops, netns, settings, run, ext, expiry, opts)| {
            let (peak, total_extra, growth) = occ;
            let (table_full, chain_too_long, evicted, _) = drops;
            let (buckets, max, ram, slab, cpus) = settings;
            let (duration, inserts, mode, release) = run;
            let total = peak.map(|p| p.saturating_add(total_extra.unwrap_or(0) % 1000));
            let report = json!({
                "ctscope_version": "0.1.0",
                "mode": mode,
                "kernel_release": release,
                "duration_s": duration,
                "inserts": inserts,
                "drops": {"table_full": table_full, "chain_too_long": chain_too_long,
                          "clash": 0, "other": 0, "alloc_failed": 0},
                "early_drop": {"attempts": evicted, "evicted": evicted},
                "settings": {"buckets": buckets, "max": max, "slab_size": slab,
                             "ram_bytes": ram, "cpus": cpus,
                             "timeouts": {"udp_timeout": 30}},
                "kernel_stats": {"chaintoolong": 0},
                "netns": netns.iter().enumerate().map(|(i, (drop, early))| {
                    let mut ks = serde_json::Map::new();
                    if let Some(d) = drop { ks.insert("drop".into(), json!(d)); }
                    if let Some(e) = early { ks.insert("early_drop".into(), json!(e)); }
                    json!({"inode": i, "name": format!("ns{i}"), "kind": "netns",
                           "inserts": null, "live_entries": null,
                           "drops": {"table_full": null, "chain_too_long": null, "clash": null,
                                     "other": null, "alloc_failed": null},
                           "kernel_stats": ks})
                }).collect::<Vec<_>>(),
                "occupancy": {"interval_s": 1.0, "samples": 10, "total_peak": total,
                              "netns_peak": peak, "netns_peak_name": "host",
                              "growth_per_hour": growth, "per_netns": []},
                "extensions": ext.map(|(inserts, bytes)| json!({
                    "entries_with_ext": inserts, "inserts": inserts, "bytes_per_entry": bytes})),
                "expiries": expiry.map(|(timeout, count, waited, active)| json!({
                    "udp_timeout": {"timeout_s": timeout, "count": count,
                                    "waited_out": waited.min(count), "active_p50_s": 0.0,
                                    "active_p99_s": 0.0, "active_max_s": active}})),
                "notices": []
            });
            let (headroom, budget, target_chain) = opts;
            Input {
                report,
                opts: Options {
                    headroom,
                    budget,
                    target_chain,
                },
            }
        },
    )
}

/// What the budget allows, as `--memory-budget` means it.
fn limit(budget: Budget, ram: u64) -> u64 {
    match budget {
        Budget::Bytes(b) => b,
        Budget::Percent(p) if p.is_finite() && p > 0.0 => (ram as f64 * p / 100.0) as u64,
        Budget::Percent(_) => 0,
    }
}

fn check(input: &Input) -> Result<(), TestCaseError> {
    let report: Report = serde_json::from_value(input.report.clone()).expect("a report");
    let opts = &input.opts;
    let started = Instant::now();
    let out = recommend::recommend(&report, opts);
    // Bounded work: every search is a binary search over bounded ranges
    // (a debug build answers in milliseconds; 10 s only catches a hang).
    prop_assert!(started.elapsed() < Duration::from_secs(10));
    let occ = report.occupancy.as_ref();
    let st = &report.settings;
    let sane_opts = opts.headroom >= 1.0 && (2..=40).contains(&opts.target_chain);
    let complete = occ.is_some_and(|o| o.total_peak.is_some() && o.netns_peak.is_some())
        && st.buckets.is_some()
        && st.max.is_some()
        && st.ram_bytes.is_some()
        && st.slab_size.is_some();
    let r = match out {
        Err(e) => {
            // A refusal names its cause; sane, complete, modest inputs
            // without a budget always get an answer.
            let modest = occ
                .and_then(|o| o.netns_peak)
                .is_some_and(|p| p < 1_000_000)
                && report.drops.table_full.is_some_and(|d| d < 1_000_000)
                && report.early_drop.evicted.is_some_and(|d| d < 1_000_000)
                && opts.headroom < 4.0;
            prop_assert!(
                !(sane_opts && complete && modest && opts.budget.is_none()),
                "refused a sane report: {e}"
            );
            prop_assert!(!e.to_string().is_empty());
            if matches!(e, RecommendError::BudgetTooSmall { .. }) {
                prop_assert!(opts.budget.is_some());
            }
            if matches!(e, RecommendError::Headroom(_)) {
                prop_assert!(opts.headroom.is_nan() || opts.headroom < 1.0);
            }
            return Ok(());
        }
        Ok(r) => r,
    };
    prop_assert!(sane_opts && complete);
    let _ = recommend::render(&r);
    let demand = r.inputs.demand;
    // The demand as observed, saturating.
    let ks = |col: &str| {
        report
            .netns
            .iter()
            .filter_map(|n| n.kernel_stats.get(col).copied())
            .fold(0u64, u64::saturating_add)
    };
    let want = occ
        .and_then(|o| o.netns_peak)
        .unwrap_or(0)
        .saturating_add(report.drops.table_full.unwrap_or_else(|| ks("drop")))
        .saturating_add(
            report
                .early_drop
                .evicted
                .unwrap_or_else(|| ks("early_drop")),
        );
    prop_assert_eq!(demand, want);
    // max covers the demand, times the headroom unless a warning says
    // what cut it (the budget, the sysctl's range, or the chain target).
    prop_assert!(r.max >= demand && r.max >= 1024 && r.max % 1024 == 0);
    prop_assert!(i32::try_from(r.max).is_ok());
    // The reasons state the max recommended, not the one before a cut.
    let digits = r.max.to_string();
    let mut with_commas = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            with_commas.push(',');
        }
        with_commas.push(c);
    }
    prop_assert!(
        r.reasons[0].starts_with(&format!("max {with_commas}:"))
            || r.reasons[0].starts_with(&format!("max {with_commas} (cut from")),
        "{}",
        r.reasons[0]
    );
    if (r.max as f64) < demand as f64 * opts.headroom {
        prop_assert!(
            r.warnings
                .iter()
                .any(|w| w.contains("max is cut") || w.contains("max is capped")),
            "max {} under {} x {} without a word: {:?}",
            r.max,
            demand,
            opts.headroom,
            r.warnings
        );
    }
    // The buckets keep a full table within the target: the model's p99 at
    // (max, buckets), and the test's own Poisson sum (skew is 1: these
    // reports measure no chains).
    prop_assert!(r.buckets >= 1024 && r.buckets <= 1 << 26 && r.buckets % 512 == 0);
    let full = sizing::expected(r.max, r.buckets, r.inputs.chain_skew);
    prop_assert!(full.p99 <= f64::from(opts.target_chain), "{:?}", full);
    prop_assert!(full.p99 + 0.01 >= full.mean, "{:?}", full);
    let lambda = 2.0 * r.max as f64 / sizing::table_buckets(r.buckets) as f64;
    prop_assert!(
        poisson_cdf(lambda, u64::from(opts.target_chain) - 1) >= 0.99 - 1e-9,
        "λ {} at target {}",
        lambda,
        opts.target_chain
    );
    // Memory: as the figures say, and never over the budget.
    let cost: EntryCost = r.inputs.entry_cost;
    prop_assert_eq!(
        r.memory_bytes,
        sizing::memory_bytes(
            Size {
                buckets: r.buckets,
                max: r.max
            },
            cost
        )
    );
    if let Some(b) = opts.budget {
        let l = limit(b, r.inputs.ram_bytes);
        prop_assert!(r.memory_bytes <= l, "{} over {}", r.memory_bytes, l);
    }
    // The table: finite figures, never a p99 below the mean.
    prop_assert_eq!(r.comparison.len(), 5);
    for c in &r.comparison {
        prop_assert!(
            c.mean_chain.is_finite() && c.p99_chain.is_finite(),
            "{:?}",
            c
        );
        prop_assert!(c.p99_chain + 0.01 >= c.mean_chain, "{:?}", c);
    }
    // Timeouts never below recommend's floors, never more than halved.
    for (class, v) in &r.timeouts {
        let floor = recommend::TIMEOUT_FLOORS
            .iter()
            .find(|(c, _)| c == class)
            .map(|(_, f)| *f);
        prop_assert!(floor.is_some_and(|f| *v >= f), "{class} {v}");
        let now = report
            .expiries
            .as_ref()
            .and_then(|e| e.get(class))
            .map(|e| e.timeout_s);
        prop_assert!(now.is_some_and(|t| v.saturating_mul(2) <= t));
    }
    Ok(())
}

proptest! {
    // 256 cases take a few seconds in a debug build.
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn recommend_holds_its_invariants_on_any_report(i in input()) {
        check(&i)?;
    }

    /// The same over complete reports with valid options, so that most
    /// cases get past the first refusals and answer (or refuse on a limit).
    #[test]
    fn recommend_holds_its_invariants_on_complete_reports(
        i in input(),
        fill in (count(), count(), count(), count(), count(), 0..1000u64),
        headroom in prop_oneof![4 => 1.0..8.0f64, 1 => Just(f64::INFINITY), 1 => Just(1e300)],
        target in 2u32..=40,
    ) {
        let mut i = i;
        let (peak, buckets, max, ram, slab, extra) = fill;
        // Peaks mostly at the scales a host has, sometimes any u64.
        let peak = if peak % 16 == 0 { peak } else { peak % 50_000_000 };
        let set = |v: &mut Value, key: &str, x: u64| {
            if v[key].is_null() {
                v[key] = json!(x);
            }
        };
        set(&mut i.report["occupancy"], "netns_peak", peak);
        set(&mut i.report["occupancy"], "total_peak", peak.saturating_add(extra));
        set(&mut i.report["settings"], "buckets", buckets);
        set(&mut i.report["settings"], "max", max);
        set(&mut i.report["settings"], "ram_bytes", ram);
        set(&mut i.report["settings"], "slab_size", slab % 4096);
        // Drops and evictions mostly at a host's scale too.
        for (section, key) in [("drops", "table_full"), ("early_drop", "evicted")] {
            if let Some(x) = i.report[section][key].as_u64().filter(|x| x % 8 != 0) {
                i.report[section][key] = json!(x % 5_000_000);
            }
        }
        if let Some(netns) = i.report["netns"].as_array_mut() {
            for n in netns {
                for key in ["drop", "early_drop"] {
                    if let Some(x) = n["kernel_stats"][key].as_u64() {
                        n["kernel_stats"][key] = json!(x % 1_000_000);
                    }
                }
            }
        }
        i.opts.headroom = headroom;
        i.opts.target_chain = target;
        check(&i)?;
    }

    /// The model alone, over every (entries, buckets): bounded, finite,
    /// ordered.
    #[test]
    fn the_model_is_defined_everywhere(n in count(), b in count(), skew in any_f64()) {
        let started = Instant::now();
        if let Some(q) = chain_model::chain_quantiles(n, b) {
            prop_assert!(q.mean.is_finite() && q.p50.is_finite() && q.p99.is_finite());
            prop_assert!(q.p50 <= q.p99 && q.p99 + 0.01 >= q.mean, "{:?}", q);
            prop_assert!(q.longest >= 1.0 && q.longest.is_finite());
        }
        if let Some(s) = chain_model::expected_chains(n, b) {
            prop_assert!(s.p50 <= s.p99 && s.truncated <= 1_000_000);
        }
        let c = sizing::expected(n, b, skew);
        prop_assert!(c.mean.is_finite() && c.p99.is_finite());
        let t = sizing::poisson_tail(2.0 * n as f64 / b.max(1) as f64, (b % 100) as u32);
        prop_assert!((0.0..=1.0).contains(&t));
        let _ = sizing::memory_bytes(Size { buckets: b, max: n }, EntryCost { slab_bytes: b, ext_bytes: skew });
        let _ = sizing::kube_proxy(n, b);
        let _ = sizing::kernel_default(n, "6.1.0");
        let _ = sizing::kernel_default(n, "5.10.0");
        prop_assert!(sizing::table_buckets(n) >= n.min(u64::MAX / 512 * 512));
        prop_assert!(started.elapsed() < Duration::from_secs(10));
    }
}
