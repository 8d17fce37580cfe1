//! `ctscope recommend`: buckets, max and timeouts from what an observe run
//! measured, with the memory they cost and the reasoning in words, next to
//! what the kernel's defaults and the usual formulas would have chosen for
//! the same load.
//!
//! - **max** covers the demand of the busiest namespace (the kernel compares
//!   each namespace's count with the one global max): its peak, plus the
//!   connections the table refused or evicted to make room (they wanted an
//!   entry too), times the headroom.
//! - **buckets** keep the chains short even when the table is full: the
//!   smallest size whose p99 chain at `max` entries, under uniform hashing
//!   and scaled by the skew measured on this host, is within the target.
//!   Buckets cost 8 bytes, entries about 300: buckets are cheap.
//! - **timeouts** are shortened only where the lifetimes show entries that
//!   carried traffic at their start and then waited out the whole timeout.
//! - **memory**: buckets x 8 + max x (slab bytes + extension bytes), within
//!   the budget when one is given.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{
    report::Report,
    report::chain_model,
    tune::sizing::{self, Chains, EntryCost, Size},
};

/// Options of `ctscope recommend`.
#[derive(Debug, Clone)]
pub struct Options {
    /// max = demand x headroom.
    pub headroom: f64,
    pub budget: Option<Budget>,
    /// p99 chain length wanted when the table is full.
    pub target_chain: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            headroom: 2.0,
            budget: None,
            target_chain: 4,
        }
    }
}

/// `--memory-budget`: a share of RAM or a number of bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    Percent(f64),
    Bytes(u64),
}

impl std::str::FromStr for Budget {
    type Err = String;

    fn from_str(s: &str) -> Result<Budget, String> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let v: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("`{s}` is not a percentage (try 5%)"))?;
            if !(v > 0.0 && v <= 100.0) {
                return Err(format!("`{s}`: a share of RAM must be in (0, 100]%"));
            }
            return Ok(Budget::Percent(v));
        }
        let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(digits);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size (try 512MiB, 2GiB or 5%)"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "K" | "KiB" | "k" => 1 << 10,
            "M" | "MiB" => 1 << 20,
            "G" | "GiB" => 1 << 30,
            "KB" | "kB" => 1000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            u => {
                return Err(format!(
                    "unknown unit `{u}` in `{s}` (B, KiB, MiB, GiB, or %)"
                ));
            }
        };
        let bytes = n
            .checked_mul(mult)
            .ok_or_else(|| format!("`{s}` is too large"))?;
        if bytes == 0 {
            return Err(format!("`{s}`: the budget must be more than 0"));
        }
        Ok(Budget::Bytes(bytes))
    }
}

#[derive(Debug, Error)]
pub enum RecommendError {
    #[error(
        "the report has no occupancy figures (made by ctscope before 0.1.0's tuner, or no namespace was readable): run `ctscope observe --json` again"
    )]
    NoOccupancy,
    #[error("the report does not say {0}; it cannot ground a recommendation")]
    Missing(&'static str),
    #[error("--headroom must be at least 1.0 (got {0})")]
    Headroom(f64),
    #[error(
        "--target-chain must be 2..=40 (got {0}): 1 is no chain at all, and the kernel refuses chains from 50 on"
    )]
    TargetChain(u32),
    #[error(
        "the memory budget ({budget} bytes) cannot hold even the observed demand of {demand} entries ({need} bytes with {buckets} buckets): raise --memory-budget, or expect table-full drops"
    )]
    BudgetTooSmall {
        budget: u64,
        demand: u64,
        need: u64,
        buckets: u64,
    },
    #[error(
        "the busiest namespace wanted {demand} entries, more than nf_conntrack_max can be set to ({limit}: the sysctl is an int); the report cannot be right, or this load needs more than one host"
    )]
    DemandTooLarge { demand: u64, limit: u64 },
    #[error(
        "no table ctscope recommends (up to {max_buckets} buckets) keeps the p99 chain within {target} at the observed demand of {demand} entries (chain skew {skew:.2}): raise --target-chain, or spread this load over more hosts"
    )]
    ChainTargetUnreachable {
        demand: u64,
        target: u32,
        skew: f64,
        max_buckets: u64,
    },
}

/// One sizing method evaluated against the observed load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// current | kernel-default | seed-formula | kube-proxy | ctscope
    pub method: String,
    pub buckets: u64,
    pub max: u64,
    pub memory_bytes: u64,
    /// Chains expected for inserts at the observed peak (all namespaces).
    pub mean_chain: f64,
    pub p99_chain: f64,
    /// Whether the drops observed in the run would have happened.
    pub would_drop: bool,
    /// Why, in words (empty when none).
    pub drops_because: Vec<String>,
}

/// What the recommendation rests on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inputs {
    pub mode: String,
    pub duration_s: f64,
    pub total_peak: u64,
    pub netns_peak: u64,
    pub netns_peak_name: Option<String>,
    pub table_full: u64,
    pub early_drop_evicted: u64,
    pub chain_too_long: u64,
    /// netns peak + refused + evicted.
    pub demand: u64,
    pub growth_per_hour: Option<f64>,
    /// Observed p99 chain over the uniform model's at the observed load
    /// (1.0 when not measured).
    pub chain_skew: f64,
    pub chain_measured: bool,
    pub entry_cost: EntryCost,
    pub ext_measured: bool,
    pub ram_bytes: u64,
    pub cpus: u64,
    pub chain_limit: bool,
    pub inserts: u64,
}

/// A recommendation (`recommend --json`; `apply --from` takes this file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    pub ctscope_version: String,
    /// The kernel the observation ran on: `apply` refuses another one.
    pub kernel_release: String,
    pub buckets: u64,
    pub max: u64,
    /// Short sysctl names (`nf_conntrack_` left out) and seconds; only the
    /// ones to change.
    pub timeouts: BTreeMap<String, u64>,
    pub memory_bytes: u64,
    pub reasons: Vec<String>,
    pub warnings: Vec<String>,
    pub comparison: Vec<Comparison>,
    pub current: CurrentSettings,
    pub inputs: Inputs,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurrentSettings {
    pub buckets: u64,
    pub max: u64,
    pub timeouts: BTreeMap<String, u64>,
}

/// Lowest value ctscope recommends per timeout, seconds: below these,
/// entries of quiet but live flows would die (and a NATed flow would get a
/// new mapping). TIME_WAIT: the TCP stack's own 60 s (TCP_TIMEWAIT_LEN);
/// established: kube-proxy's 24 h.
pub const TIMEOUT_FLOORS: &[(&str, u64)] = &[
    ("udp_timeout", 10),
    ("udp_timeout_stream", 60),
    ("icmp_timeout", 10),
    ("icmpv6_timeout", 10),
    ("generic_timeout", 60),
    ("tcp_timeout_syn_sent", 30),
    ("tcp_timeout_syn_recv", 30),
    ("tcp_timeout_established", 86_400),
    ("tcp_timeout_fin_wait", 30),
    ("tcp_timeout_close_wait", 60),
    ("tcp_timeout_last_ack", 30),
    ("tcp_timeout_time_wait", 60),
    ("tcp_timeout_close", 10),
];
/// Share of RAM above which a recommendation without a budget warns that
/// the table, full, takes much of the host's memory: the share above which
/// `apply` refuses it without `--force`, so that no recommendation is
/// refused without having said so.
const RAM_SHARE_WARN: f64 = crate::tune::apply::DEFAULT_MAX_MEMORY_SHARE_PCT / 100.0;
/// Expiries a class needs before its timeout is judged.
const MIN_EXPIRIES: u64 = 100;
/// Share of a class's expiries that must have waited the timeout out.
const WAITED_OUT_SHARE: f64 = 0.9;

fn fmt_n(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn fmt_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", b / (1u64 << 30) as f64)
    } else if b >= (1u64 << 20) as f64 {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    } else {
        format!("{:.0} KiB", b / 1024.0)
    }
}

/// The skew of the measured chains: observed p99 over the model's p99 at
/// the occupancy the observed mean implies (mean = 1 + 2N/B).
fn chain_skew(report: &Report, buckets: u64) -> (f64, bool) {
    let Some(c) = &report.chain_length else {
        return (1.0, false);
    };
    let measured: Vec<_> = [&c.orig, &c.reply]
        .into_iter()
        .filter(|s| !s.modeled && s.samples >= 100)
        .collect();
    if measured.is_empty() {
        return (1.0, false);
    }
    let mut skew: f64 = 1.0;
    for s in measured {
        let n = ((s.mean - 1.0).max(0.0) * buckets as f64 / 2.0).round() as u64;
        if let Some(m) = chain_model::chain_quantiles(n.max(1), buckets) {
            skew = skew.max(f64::from(s.p99) / m.p99.max(1.0));
        }
    }
    (sizing::round2(skew), true)
}

pub fn recommend(report: &Report, opts: &Options) -> Result<Recommendation, RecommendError> {
    // NaN is refused too; an infinite headroom is capped below.
    if opts.headroom.is_nan() || opts.headroom < 1.0 {
        return Err(RecommendError::Headroom(opts.headroom));
    }
    if !(2..=40).contains(&opts.target_chain) {
        return Err(RecommendError::TargetChain(opts.target_chain));
    }
    let occ = report
        .occupancy
        .as_ref()
        .ok_or(RecommendError::NoOccupancy)?;
    let total_peak = occ.total_peak.ok_or(RecommendError::NoOccupancy)?;
    let netns_peak = occ.netns_peak.ok_or(RecommendError::NoOccupancy)?;
    let st = &report.settings;
    let cur_buckets = st
        .buckets
        .ok_or(RecommendError::Missing("the current buckets"))?;
    let cur_max = st.max.ok_or(RecommendError::Missing("the current max"))?;
    let ram = st
        .ram_bytes
        .ok_or(RecommendError::Missing("the RAM size"))?;
    let cpus = st.cpus.unwrap_or(1);
    let slab = st
        .slab_size
        .or(st.slab_object_size)
        .ok_or(RecommendError::Missing("the slab object size"))?;
    let chain_limit = report.kernel_stats.contains_key("chaintoolong")
        || sizing::version(&report.kernel_release).is_some_and(|v| v >= (5, 15));

    let mut reasons = Vec::new();
    let mut warnings = Vec::new();

    // Drops and evictions: connections that wanted an entry. procfs mode
    // has no table-full count: the kernel's `drop` column (table full and
    // unresolved clashes) of every namespace stands in for it, an upper bound.
    let kernel_sum = |col: &str| -> u64 {
        report
            .netns
            .iter()
            .filter_map(|n| n.kernel_stats.get(col).copied())
            .fold(0u64, u64::saturating_add)
    };
    let table_full = report
        .drops
        .table_full
        .unwrap_or_else(|| kernel_sum("drop"));
    let evicted = report
        .early_drop
        .evicted
        .unwrap_or_else(|| kernel_sum("early_drop"));
    let chain_too_long = report.drops.chain_too_long.unwrap_or(0);
    // Report numbers are input: saturate, never wrap (a wrapped sum was a
    // max of 0).
    let wanted_more = table_full.saturating_add(evicted);
    let demand = netns_peak.saturating_add(wanted_more);
    if demand > sizing::MAX_ENTRIES {
        return Err(RecommendError::DemandTooLarge {
            demand,
            limit: sizing::MAX_ENTRIES,
        });
    }

    let (ext_bytes, ext_measured) = match &report.extensions {
        // A figure that is no byte count (negative, or beyond any entry)
        // is not used: the kernel's preallocation stands in.
        Some(e) if e.inserts > 0 && (0.0..1e6).contains(&e.bytes_per_entry) => {
            (e.bytes_per_entry, true)
        }
        _ => (sizing::EXT_PREALLOC as f64, false),
    };
    let cost = EntryCost {
        slab_bytes: slab,
        ext_bytes: sizing::round2(ext_bytes),
    };
    let (skew, chain_measured) = chain_skew(report, cur_buckets);

    // max: demand x headroom up to a multiple of 1024, within what the
    // sysctl holds (an infinite or huge headroom is cut there, and said).
    let wanted = demand as f64 * opts.headroom;
    let mut max = if wanted < sizing::MAX_ENTRIES as f64 {
        // Below 2^31: the cast is exact and the rounding cannot overflow.
        ((wanted.ceil() as u64).div_ceil(1024).max(1)) * 1024
    } else {
        warnings.push(format!(
            "max is capped at {} (nf_conntrack_max is an int sysctl): headroom {:.1} over the demand of {} entries would ask for more",
            fmt_n(sizing::MAX_ENTRIES),
            opts.headroom,
            fmt_n(demand)
        ));
        sizing::MAX_ENTRIES
    };
    let peak_name = occ.netns_peak_name.clone().unwrap_or_else(|| "?".into());
    // Said with this max; restated below if the target or the budget cuts it.
    let (max_wanted, max_reason) = (max, reasons.len());
    reasons.push(format!(
        "max {}: the busiest namespace ({peak_name}) peaked at {} entries{}; the kernel compares each namespace's count with the one global max, so max covers that demand ({}) times the headroom {:.1}",
        fmt_n(max),
        fmt_n(netns_peak),
        if wanted_more > 0 {
            format!(
                ", and {} more connections wanted an entry ({} refused as table full, {} evicted by early_drop)",
                fmt_n(wanted_more),
                fmt_n(table_full),
                fmt_n(evicted)
            )
        } else {
            String::new()
        },
        fmt_n(demand),
        opts.headroom
    ));
    if total_peak > netns_peak {
        reasons.push(format!(
            "all namespaces together held up to {} entries in the one shared table: the buckets and the memory are sized for what the table can hold, and every namespace may fill up to max on its own",
            fmt_n(total_peak)
        ));
    }
    if report.duration_s < 600.0 {
        reasons.push(format!(
            "the observation lasted {:.0} s: too short to tell growth from ramp-up; a longer one (with the busy hour) grounds max better",
            report.duration_s
        ));
    } else if let Some(g) = occ.growth_per_hour.filter(|g| *g > 0.0) {
        let hours = (max.saturating_sub(demand)) as f64 / g;
        reasons.push(format!(
            "the table grew by about {} entries/hour during the {:.0} s observation: the headroom lasts about {:.1} hours of such growth; observe longer (busy hours included) before trusting it further",
            fmt_n(g as u64),
            report.duration_s,
            hours
        ));
    }

    // buckets: smallest size with p99 <= target when full. Where no size
    // up to MAX_BUCKETS meets the target at this max, max is cut to the
    // largest that one does, as long as that still covers the demand.
    let target = opts.target_chain;
    let mut buckets = match buckets_for(max, skew, target) {
        Some(b) => b,
        None => {
            let cut = largest_max(max, |m| buckets_for(m, skew, target).is_some())
                .filter(|m| *m >= demand);
            let Some((m, b)) = cut.and_then(|m| Some((m, buckets_for(m, skew, target)?))) else {
                return Err(RecommendError::ChainTargetUnreachable {
                    demand,
                    target,
                    skew,
                    max_buckets: sizing::MAX_BUCKETS,
                });
            };
            warnings.push(format!(
                "even {} buckets (the most ctscope recommends) do not keep the p99 chain within {target} at max {}: max is cut to {} (headroom {:.2} over the observed demand)",
                fmt_n(sizing::MAX_BUCKETS),
                fmt_n(max),
                fmt_n(m),
                m as f64 / demand.max(1) as f64
            ));
            max = m;
            b
        }
    };
    // Memory budget.
    if let Some(budget) = opts.budget {
        let limit = match budget {
            Budget::Bytes(b) => b,
            // `as` saturates; a share that is no number is no budget (0).
            Budget::Percent(p) if p.is_finite() && p > 0.0 => (ram as f64 * p / 100.0) as u64,
            Budget::Percent(_) => 0,
        };
        let need = sizing::memory_bytes(Size { buckets, max }, cost);
        if need > limit {
            // Fewer entries, buckets scaled with them: memory grows with max
            // (buckets_for is monotone), so the largest max within the
            // budget is a binary search (a step-down loop of 1024 at a time
            // ran for minutes at a peak of 1e12).
            let within = |m: u64| {
                buckets_for(m, skew, target).is_some_and(|b| {
                    sizing::memory_bytes(Size { buckets: b, max: m }, cost) <= limit
                })
            };
            let cut = largest_max(max, within)
                .filter(|m| *m >= demand)
                .and_then(|m| Some((m, buckets_for(m, skew, target)?)));
            let Some((m, b)) = cut else {
                let at_demand =
                    buckets_for(demand.max(1), skew, target).unwrap_or(sizing::MAX_BUCKETS);
                return Err(RecommendError::BudgetTooSmall {
                    budget: limit,
                    demand,
                    need: sizing::memory_bytes(
                        Size {
                            buckets: at_demand,
                            max: demand,
                        },
                        cost,
                    ),
                    buckets: at_demand,
                });
            };
            warnings.push(format!(
                "the memory budget ({}) does not hold max {} with headroom {:.1}: max is cut to {} (headroom {:.2} over the observed demand)",
                fmt_bytes(limit),
                fmt_n(max),
                opts.headroom,
                fmt_n(m),
                m as f64 / demand.max(1) as f64
            ));
            max = m;
            buckets = b;
        }
    }
    if max != max_wanted
        && let Some(r) = reasons.get_mut(max_reason)
    {
        *r = r.replacen(
            &format!("max {}:", fmt_n(max_wanted)),
            &format!(
                "max {} (cut from {}, see the warnings):",
                fmt_n(max),
                fmt_n(max_wanted)
            ),
            1,
        );
    }
    let full = sizing::expected(max, buckets, skew);
    reasons.push(format!(
        "buckets {}: with {} entries (a full table) that is {:.2} nodes per bucket, mean chain {:.2} and p99 {:.0} (target {}){}; a bucket costs 8 bytes, an entry {:.0}, so a generous table is cheap",
        fmt_n(buckets),
        fmt_n(max),
        2.0 * max as f64 / buckets as f64,
        full.mean,
        full.p99,
        opts.target_chain,
        if chain_measured {
            format!(
                ", scaled by the skew measured here ({skew:.2}: observed p99 over the uniform model's)"
            )
        } else {
            " under uniform hashing (chains were not measured: procfs mode)".to_string()
        },
        cost.per_entry()
    ));
    if chain_limit && chain_too_long > 0 {
        reasons.push(format!(
            "{} inserts were refused because a bucket was over the kernel's random chain limit (50..79 since 6.3 and the 6.1.y/5.15.y backports): at the recommended size the expected number is {:.3}",
            fmt_n(chain_too_long),
            sizing::expected_chain_refusals(report.inserts.unwrap_or(0), total_peak, buckets)
        ));
    }
    if buckets != cur_buckets {
        // The whole table: every namespace's entries share it.
        warnings.push(format!(
            "on apply, {}",
            crate::tune::resize::warning(
                total_peak,
                cur_buckets,
                sizing::table_buckets(buckets),
                "the observed peak"
            )
        ));
    }

    // Timeouts.
    let mut timeouts = BTreeMap::new();
    if let Some(exp) = &report.expiries {
        for (class, e) in exp {
            let floor = TIMEOUT_FLOORS
                .iter()
                .find(|(c, _)| c == class)
                .map(|(_, f)| *f);
            let Some(floor) = floor else { continue };
            if e.count < MIN_EXPIRIES {
                continue;
            }
            let share = e.waited_out as f64 / e.count as f64;
            if share < WAITED_OUT_SHARE {
                continue;
            }
            // `as` saturates (a negative or NaN time gives 0, the floor wins).
            let want = floor.max((2.0 * e.active_max_s).ceil() as u64);
            if want.saturating_mul(2) > e.timeout_s {
                continue;
            }
            let rate = e.waited_out as f64 / report.duration_s.max(1.0);
            let freed = rate * e.timeout_s.saturating_sub(want) as f64;
            reasons.push(format!(
                "{class} {} -> {want} s: {:.0}% of the {} entries that expired under it carried traffic only at their start (the longest kept talking {:.1} s) and then waited out all {} s; at the observed rate that frees about {} entries",
                e.timeout_s,
                share * 100.0,
                fmt_n(e.count),
                e.active_max_s,
                e.timeout_s,
                fmt_n(freed as u64)
            ));
            timeouts.insert(class.clone(), want);
        }
    } else {
        reasons.push(
            "timeouts unchanged: lifetimes were not measured (procfs mode), so nothing shows entries waiting out a timeout"
                .into(),
        );
    }

    let memory_bytes = sizing::memory_bytes(Size { buckets, max }, cost);
    // Without a budget nothing limits the memory but the demand: say when
    // the table would take a large share of this host's RAM when full.
    // With apply's own cost: extensions at least NF_CT_EXT_PREALLOC.
    let apply_cost = EntryCost {
        ext_bytes: cost.ext_bytes.max(sizing::EXT_PREALLOC as f64),
        ..cost
    };
    let apply_bytes = sizing::memory_bytes(Size { buckets, max }, apply_cost);
    let ram_share = apply_bytes as f64 / ram.max(1) as f64;
    if opts.budget.is_none() && ram_share > RAM_SHARE_WARN {
        warnings.push(format!(
            "the table takes up to {} when full, {:.0}% of this host's RAM ({}): apply refuses more than {:.0}% without --force (--max-memory-share); to stay within a share, give --memory-budget (e.g. 10%), which cuts max",
            fmt_bytes(apply_bytes),
            ram_share * 100.0,
            fmt_bytes(ram),
            RAM_SHARE_WARN * 100.0
        ));
    }
    reasons.push(format!(
        "memory when full: {} = {} buckets x 8 B + {} entries x {:.0} B ({} B slab object{})",
        fmt_bytes(memory_bytes),
        fmt_n(sizing::table_buckets(buckets)),
        fmt_n(max),
        cost.per_entry(),
        cost.slab_bytes,
        if ext_measured {
            format!(" + {:.1} B of extensions, measured", cost.ext_bytes)
        } else {
            format!(
                " + {} B of extensions, assumed: NF_CT_EXT_PREALLOC, not measured in procfs mode",
                sizing::EXT_PREALLOC
            )
        }
    ));

    let inputs = Inputs {
        mode: report.mode.to_string(),
        duration_s: report.duration_s,
        total_peak,
        netns_peak,
        netns_peak_name: occ.netns_peak_name.clone(),
        table_full,
        early_drop_evicted: evicted,
        chain_too_long,
        demand,
        growth_per_hour: occ.growth_per_hour,
        chain_skew: skew,
        chain_measured,
        entry_cost: cost,
        ext_measured,
        ram_bytes: ram,
        cpus,
        chain_limit,
        inserts: report.inserts.unwrap_or(0),
    };
    let mut comparison = Vec::new();
    let methods = [
        (
            "current",
            Size {
                buckets: cur_buckets,
                max: cur_max,
            },
        ),
        (
            "kernel-default",
            sizing::kernel_default(ram, &report.kernel_release),
        ),
        ("seed-formula", sizing::seed_formula(ram)),
        ("kube-proxy", sizing::kube_proxy(cpus, cur_buckets)),
        ("ctscope", Size { buckets, max }),
    ];
    for (method, size) in methods {
        comparison.push(evaluate(method, size, &inputs, cost, skew));
    }
    Ok(Recommendation {
        ctscope_version: env!("CARGO_PKG_VERSION").to_string(),
        kernel_release: report.kernel_release.clone(),
        buckets,
        max,
        timeouts,
        memory_bytes,
        reasons,
        warnings,
        comparison,
        current: CurrentSettings {
            buckets: cur_buckets,
            max: cur_max,
            timeouts: st.timeouts.clone(),
        },
        inputs,
    })
}

/// The smallest bucket count (a multiple of 512, 1024..=MAX_BUCKETS) whose
/// p99 chain at `entries` is within `target` after the measured skew;
/// `None` when not even MAX_BUCKETS is. A size for which the model has no
/// figure (`expected_checked` gives `None`) does not fit: the old search
/// took the smallest size, where the model had underflowed to a p99 of 1.
pub fn buckets_for(entries: u64, skew: f64, target: u32) -> Option<u64> {
    let page = sizing::BUCKET_ROUND;
    // Also no "chain too long" refusal expected when the full table is
    // filled again: at a high --target-chain (λ ≈ 27 at target 40) the p99
    // alone would allow chains the kernel's random 50..79 limit refuses, and
    // apply refuses such a load (apply.rs chain_risk).
    let fits = |pages: u64| {
        sizing::expected_checked(entries, pages * page, skew)
            .is_some_and(|c| c.p99 <= f64::from(target))
            && sizing::expected_chain_refusals(entries, entries, pages * page) < 1.0
    };
    // The p99 only falls as buckets grow (Poisson(λ) grows stochastically
    // with λ), so a binary search between the bounds finds the smallest
    // that fits, in at most 17 steps.
    let (mut lo, mut hi) = (1024 / page, sizing::MAX_BUCKETS / page);
    if !fits(hi) {
        return None;
    }
    if fits(lo) {
        return Some(lo * page);
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some(hi * page)
}

/// The largest multiple of 1024 in 1024..=`upto` for which `ok` holds, for
/// an `ok` that holds up to some size and not beyond; `None` when it does
/// not hold even at 1024. A binary search: at most 22 calls of `ok`.
fn largest_max(upto: u64, ok: impl Fn(u64) -> bool) -> Option<u64> {
    let (mut lo, mut hi) = (1u64, (upto / 1024).max(1));
    if !ok(lo * 1024) {
        return None;
    }
    if ok(hi * 1024) {
        return Some(hi * 1024);
    }
    // Invariant: ok(lo), !ok(hi).
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if ok(mid * 1024) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(lo * 1024)
}

fn evaluate(method: &str, size: Size, i: &Inputs, cost: EntryCost, skew: f64) -> Comparison {
    let at_peak: Chains = sizing::expected(i.total_peak.max(1), size.buckets, skew);
    let mut because = Vec::new();
    if i.demand > size.max {
        because.push(format!(
            "table full: the busiest namespace wanted {} entries, max is {}",
            fmt_n(i.demand),
            fmt_n(size.max)
        ));
    }
    if i.chain_limit {
        let refused = sizing::expected_chain_refusals(i.inserts, i.total_peak, size.buckets);
        if refused >= 0.5 {
            because.push(format!(
                "chain too long: about {refused:.1} inserts expected over the kernel's chain limit at the observed peak"
            ));
        }
    }
    Comparison {
        method: method.to_string(),
        buckets: size.buckets,
        max: size.max,
        memory_bytes: sizing::memory_bytes(size, cost),
        mean_chain: at_peak.mean,
        p99_chain: at_peak.p99,
        would_drop: !because.is_empty(),
        drops_because: because,
    }
}

/// The recommendation for people.
pub fn render(r: &Recommendation) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "ctscope recommends (from a {:.0} s {} observation on {}):\n",
        r.inputs.duration_s,
        crate::text::name(&r.inputs.mode),
        crate::text::name(&r.kernel_release)
    ));
    s.push_str(&format!(
        "  nf_conntrack_buckets {}   (now {})\n  nf_conntrack_max     {}   (now {})\n",
        r.buckets, r.current.buckets, r.max, r.current.max
    ));
    for (k, v) in &r.timeouts {
        s.push_str(&format!(
            "  nf_conntrack_{k} {v}   (now {})\n",
            r.current
                .timeouts
                .get(k)
                .map(|v| v.to_string())
                .unwrap_or_else(|| "?".into())
        ));
    }
    s.push_str(&format!(
        "  memory when full: {}\n\nWhy:\n",
        fmt_bytes(r.memory_bytes)
    ));
    for reason in &r.reasons {
        s.push_str(&format!("  - {reason}\n"));
    }
    if !r.warnings.is_empty() {
        s.push_str("\nWarnings:\n");
        for w in &r.warnings {
            s.push_str(&format!("  ! {w}\n"));
        }
    }
    s.push_str(&format!(
        "\nThe same load ({} entries at the peak in all namespaces; {} wanted by the busiest) under each sizing:\n",
        r.inputs.total_peak, r.inputs.demand
    ));
    s.push_str(&format!(
        "  {:<15} {:>9} {:>9} {:>11} {:>10} {:>9}  {}\n",
        "method", "buckets", "max", "memory", "mean chain", "p99 chain", "observed drops?"
    ));
    for c in &r.comparison {
        s.push_str(&format!(
            "  {:<15} {:>9} {:>9} {:>11} {:>10.2} {:>9.0}  {}\n",
            c.method,
            c.buckets,
            c.max,
            fmt_bytes(c.memory_bytes),
            c.mean_chain,
            c.p99_chain,
            if c.would_drop {
                format!("yes: {}", c.drops_because.join("; "))
            } else {
                "no".into()
            }
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_parse() {
        assert_eq!("5%".parse::<Budget>(), Ok(Budget::Percent(5.0)));
        assert_eq!("512MiB".parse::<Budget>(), Ok(Budget::Bytes(512 << 20)));
        assert_eq!("2GiB".parse::<Budget>(), Ok(Budget::Bytes(2 << 30)));
        assert_eq!("1000".parse::<Budget>(), Ok(Budget::Bytes(1000)));
        for bad in [
            "0",
            "0%",
            "101%",
            "-5%",
            "lots",
            "5 parsecs",
            "99999999999999999999GiB",
        ] {
            assert!(bad.parse::<Budget>().is_err(), "{bad}");
        }
    }

    #[test]
    fn buckets_meet_the_target() {
        for (n, target) in [(4096u64, 4u32), (65_536, 4), (100_000, 6), (3000, 3)] {
            let b = buckets_for(n, 1.0, target).expect("a size fits");
            assert!(sizing::expected(n, b, 1.0).p99 <= f64::from(target));
            assert_eq!(b % sizing::BUCKET_ROUND, 0);
            // Not wastefully large: a page less would miss the target
            // (unless at the floor).
            assert!(
                b == 1024 || sizing::expected(n, b - 512, 1.0).p99 > f64::from(target),
                "{n}: {b}"
            );
        }
        // Skew asks for more buckets.
        assert!(buckets_for(65_536, 1.5, 4) > buckets_for(65_536, 1.0, 4));
        // The highest target allowed (40) would put λ near 27, where refilling
        // a table of 1M or 10M entries expects "chain too long" refusals
        // (which apply refuses): the search keeps below one.
        for n in [1_000_000u64, 10_000_000] {
            let b = buckets_for(n, 1.0, 40).expect("a size fits");
            let refused = sizing::expected_chain_refusals(n, n, b);
            assert!(refused < 1.0, "{n} in {b}: {refused}");
        }
        // Monotone in the entries, bounded, and None where not even the
        // largest table meets the target (it once doubled without bound).
        let mut last = 0;
        for n in [1u64, 1000, 100_000, 1_000_000, 10_000_000, 27_000_000] {
            let b = buckets_for(n, 1.0, 4).expect("fits");
            assert!(b >= last && b <= sizing::MAX_BUCKETS, "{n}: {b}");
            last = b;
        }
        assert_eq!(buckets_for(100_000_000, 1.0, 4), None);
        assert_eq!(buckets_for(u64::MAX, 1.0, 40), None);
        assert_eq!(buckets_for(1000, f64::INFINITY, 4), None);
    }

    /// A report as `observe` writes it, with only what the tuner reads.
    fn report(extra: serde_json::Value) -> Report {
        let mut r = serde_json::json!({
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
        if let (Some(o), serde_json::Value::Object(e)) = (r.as_object_mut(), extra) {
            o.extend(e);
        }
        serde_json::from_value(r).expect("a report")
    }

    #[test]
    fn timeouts_shrink_only_where_entries_waited_them_out() {
        let exp = |waited: u64, max_active: f64| {
            serde_json::json!({"expiries": {"udp_timeout": {
                "timeout_s": 30, "count": 1000, "waited_out": waited,
                "active_p50_s": 0.0, "active_p99_s": 0.1, "active_max_s": max_active}}})
        };
        // 95% one-shot (DNS-like) flows: 30 -> 10 s (the floor; twice the
        // longest talk is 1 s).
        let r = recommend(&report(exp(950, 0.5)), &Options::default()).expect("rec");
        assert_eq!(r.timeouts.get("udp_timeout"), Some(&10));
        assert!(
            r.reasons
                .iter()
                .any(|t| t.contains("udp_timeout 30 -> 10 s")),
            "{r:?}"
        );
        // Flows that kept talking for 12 s: at least twice that, 24 s, is not
        // half of 30: unchanged.
        let r = recommend(&report(exp(950, 12.0)), &Options::default()).expect("rec");
        assert!(r.timeouts.is_empty(), "{:?}", r.timeouts);
        // Most entries still talking at expiry: unchanged.
        let r = recommend(&report(exp(500, 0.5)), &Options::default()).expect("rec");
        assert!(r.timeouts.is_empty());
        // No lifetimes (procfs mode): unchanged, and said so.
        let r = recommend(&report(serde_json::json!({})), &Options::default()).expect("rec");
        assert!(r.timeouts.is_empty());
        assert!(r.reasons.iter().any(|t| t.contains("timeouts unchanged")));
    }

    #[test]
    fn max_covers_the_refused_demand_and_the_budget_is_never_exceeded() {
        let full = serde_json::json!({
            "drops": {"table_full": 5000, "chain_too_long": 0, "clash": 0, "other": 0, "alloc_failed": 0},
            "settings": {"buckets": 2048, "max": 2048, "slab_size": 256, "ram_bytes": 256u64 << 20,
                         "cpus": 2, "timeouts": {}},
            "occupancy": {"interval_s": 1.0, "samples": 10, "total_peak": 2048, "netns_peak": 2048,
                          "netns_peak_name": "host", "per_netns": []}
        });
        let r = recommend(&report(full.clone()), &Options::default()).expect("rec");
        // (2048 + 5000) x 2, up to a multiple of 1024.
        assert_eq!(r.max, 14_336);
        let cur = &r.comparison[0];
        assert_eq!((cur.method.as_str(), cur.would_drop), ("current", true));
        assert!(!r.comparison[4].would_drop);
        assert_eq!(r.memory_bytes, r.comparison[4].memory_bytes);
        // A budget below the recommendation cuts max, never past the budget.
        let opts = Options {
            budget: Some(Budget::Bytes(4 << 20)),
            ..Options::default()
        };
        let r = recommend(&report(full.clone()), &opts).expect("rec");
        assert!(r.memory_bytes <= 4 << 20, "{}", r.memory_bytes);
        assert!(r.max >= 7048 && r.max < 14_336, "{}", r.max);
        assert!(!r.warnings.is_empty());
        // One that cannot hold the observed demand is an error, not a silent cut.
        let opts = Options {
            budget: Some(Budget::Bytes(1 << 20)),
            ..Options::default()
        };
        assert!(matches!(
            recommend(&report(full), &opts),
            Err(RecommendError::BudgetTooSmall { .. })
        ));
    }

    #[test]
    fn thousands() {
        assert_eq!(fmt_n(0), "0");
        assert_eq!(fmt_n(1234567), "1,234,567");
        assert_eq!(fmt_n(100), "100");
        assert_eq!(fmt_bytes(3 << 20), "3.0 MiB");
    }
}
