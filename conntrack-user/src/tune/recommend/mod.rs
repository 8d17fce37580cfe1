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
//!   Buckets cost 8 bytes, entries about 384 (a 256-byte slab object and a
//!   128-byte extension area on Debian 6.1): buckets are cheap.
//! - **timeouts** are shortened only where the lifetimes show entries that
//!   carried traffic at their start and then waited out the whole timeout.
//! - **memory**: buckets x 8 + max x (slab bytes + extension bytes), within
//!   the budget when one is given.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{
    report::Report,
    tune::sizing::{self, EntryCost},
};

mod compare;
mod inputs;
mod reasons;
mod render;
mod size;
#[cfg(test)]
mod tests;

pub use render::render;
pub use size::buckets_for;

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

/// The recommendation for `report`: its inputs read and checked, max from
/// the demand, buckets for the chain target, both cut to the budget, the
/// timeouts to shorten, and every sizing method compared at the same load.
pub fn recommend(report: &Report, opts: &Options) -> Result<Recommendation, RecommendError> {
    check_options(opts)?;
    let (inputs, current) = Inputs::from_report(report)?;
    let mut warnings = Vec::new();

    let (max_wanted, capped) = size::size_max(&inputs, opts);
    warnings.extend(capped);
    let (size, cut) = size::fit_chain_target(&inputs, max_wanted, opts.target_chain)?;
    warnings.extend(cut);
    let (size, cut) = size::fit_budget(&inputs, size, opts)?;
    warnings.extend(cut);

    let mut reasons = vec![reasons::max_reason(
        &inputs,
        max_wanted,
        size.max,
        opts.headroom,
    )];
    reasons.extend(reasons::load_reasons(&inputs, max_wanted));
    reasons.extend(reasons::buckets_reasons(&inputs, size, opts.target_chain));
    if size.buckets != current.buckets {
        // The whole table: every namespace's entries share it.
        warnings.push(format!(
            "on apply, {}",
            crate::tune::resize::warning(
                inputs.total_peak,
                current.buckets,
                sizing::table_buckets(size.buckets),
                "the observed peak"
            )
        ));
    }
    let (timeouts, timeout_reasons) = reasons::shorten_timeouts(report);
    reasons.extend(timeout_reasons);
    let memory_bytes = sizing::memory_bytes(size, inputs.entry_cost);
    warnings.extend(reasons::memory_warning(
        &inputs,
        size,
        opts.budget.is_some(),
    ));
    reasons.push(reasons::memory_reason(&inputs, size, memory_bytes));

    let comparison = compare::compare_methods(&inputs, &current, &report.kernel_release, size);
    Ok(Recommendation {
        ctscope_version: env!("CARGO_PKG_VERSION").to_string(),
        kernel_release: report.kernel_release.clone(),
        buckets: size.buckets,
        max: size.max,
        timeouts,
        memory_bytes,
        reasons,
        warnings,
        comparison,
        current,
        inputs,
    })
}

/// The options' own bounds, before the report is read.
fn check_options(opts: &Options) -> Result<(), RecommendError> {
    // NaN is refused too; an infinite headroom is capped in size_max.
    if opts.headroom.is_nan() || opts.headroom < 1.0 {
        return Err(RecommendError::Headroom(opts.headroom));
    }
    if !(2..=40).contains(&opts.target_chain) {
        return Err(RecommendError::TargetChain(opts.target_chain));
    }
    Ok(())
}
