//! The figures compared, where each comes from, and how each is judged against the thresholds.

use super::input::Kind;
use super::render::fmt_num;
use super::{
    DEFAULT_CHAIN_GROWTH, DEFAULT_DROP_GROWTH, DEFAULT_DROP_GROWTH_PCT, DEFAULT_NS_GROWTH_PCT,
    DEFAULT_RSS_GROWTH_PCT,
};
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Thresholds {
    pub rss_growth_pct: f64,
    pub ns_growth_pct: f64,
    pub chain_growth: u64,
    pub drop_growth: u64,
    pub drop_growth_pct: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            rss_growth_pct: DEFAULT_RSS_GROWTH_PCT,
            ns_growth_pct: DEFAULT_NS_GROWTH_PCT,
            chain_growth: DEFAULT_CHAIN_GROWTH,
            drop_growth: DEFAULT_DROP_GROWTH,
            drop_growth_pct: DEFAULT_DROP_GROWTH_PCT,
        }
    }
}

impl Thresholds {
    pub(super) fn to_json(self) -> Value {
        json!({
            "max_rss_growth_pct": self.rss_growth_pct,
            "max_ns_growth_pct": self.ns_growth_pct,
            "max_chain_growth": self.chain_growth,
            "max_drop_growth": self.drop_growth,
            "max_drop_growth_pct": self.drop_growth_pct,
        })
    }
}

/// How a figure is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rule {
    /// Shown only.
    Info,
    Rss,
    Ns,
    Chain,
    Drops,
    /// A failure count: rising from 0 is a regression.
    FromZero,
}

/// Where a figure comes from.
#[derive(Debug, Clone, Copy)]
pub(super) enum Source {
    /// A number at a `/`-separated path.
    At(&'static str),
    /// The length of the array at a path.
    Len(&'static str),
    /// Every program's `run_time_ns` over ctscope's inserts.
    NsPerInsert,
}

pub(super) struct Figure {
    pub(super) name: &'static str,
    pub(super) source: Source,
    pub(super) rule: Rule,
}

pub(super) const fn fig(name: &'static str, source: Source, rule: Rule) -> Figure {
    Figure { name, source, rule }
}

use Rule::{Chain, Drops, FromZero, Info, Ns, Rss};
use Source::{At, Len, NsPerInsert};

pub(super) const LAB_FIGURES: &[Figure] = &[
    fig("inserts (ctscope)", At("ctscope/inserts"), Info),
    fig("inserts (kernel)", At("truth/inserts"), Info),
    fig("drops table_full", At("ctscope/drops/table_full"), Drops),
    fig(
        "drops chain_too_long",
        At("ctscope/drops/chain_too_long"),
        Drops,
    ),
    fig("drops clash", At("ctscope/drops/clash"), Drops),
    fig("drops other", At("ctscope/drops/other"), Drops),
    fig(
        "drops alloc_failed",
        At("ctscope/drops/alloc_failed"),
        Drops,
    ),
    fig(
        "kernel insert_failed",
        At("truth/stat_delta/insert_failed"),
        Info,
    ),
    fig("kernel drop", At("truth/stat_delta/drop"), Info),
    fig("kernel early_drop", At("truth/stat_delta/early_drop"), Info),
    fig(
        "kernel chaintoolong",
        At("truth/stat_delta/chaintoolong"),
        Info,
    ),
    fig("chain p50", At("ctscope/chain_length/orig/p50"), Info),
    fig("chain p99", At("ctscope/chain_length/orig/p99"), Chain),
    fig("chain max", At("ctscope/chain_length/orig/max"), Chain),
    fig("self-check walks", At("ctscope/self_check/walks"), Info),
    fig(
        "self-check nulls_mismatch",
        At("ctscope/self_check/nulls_mismatch"),
        FromZero,
    ),
    fig(
        "self-check link_mismatch",
        At("ctscope/self_check/link_mismatch"),
        FromZero,
    ),
    fig(
        "self-check dir_mismatch",
        At("ctscope/self_check/dir_mismatch"),
        FromZero,
    ),
    fig(
        "self-check read_errors",
        At("ctscope/self_check/read_errors"),
        FromZero,
    ),
    fig(
        "self-check truncated",
        At("ctscope/self_check/truncated"),
        Info,
    ),
    fig("self-check missed", At("ctscope/self_check/missed"), Info),
    fig("ctscope exit", At("ctscope_exit"), Info),
    fig("eBPF ns per insert", NsPerInsert, Ns),
    fig("RSS peak KiB", At("ctscope/cost/max_rss_kib"), Rss),
    fig("RSS end KiB", At("ctscope/cost/rss_kib"), Info),
    fig("VM wall s", At("wall_s"), Info),
];

pub(super) const BENCH_FIGURES: &[Figure] = &[
    fig(
        "baseline busy ns per conn",
        At("summary/baseline_busy_ns_per_conn"),
        Info,
    ),
    fig("A/A spread %", At("summary/aa_spread_pct"), Info),
    fig(
        "default overhead % (busy)",
        At("summary/default_overhead_pct"),
        Info,
    ),
    fig(
        "--cost overhead % (busy)",
        At("summary/cost_overhead_pct"),
        Info,
    ),
    fig(
        "lookups overhead % (busy)",
        At("summary/lookups_overhead_pct"),
        Info,
    ),
    fig(
        "--cost eBPF ns per conn",
        At("summary/ebpf_ns_per_conn"),
        Ns,
    ),
    fig("baseline conn/s", At("variants/baseline/median_rate"), Info),
    fig("default conn/s", At("variants/default/median_rate"), Info),
    fig(
        "default overhead %",
        At("variants/default/overhead_percent"),
        Info,
    ),
    fig(
        "default eBPF ns per conn",
        At("variants/default/bpf_ns_per_connection"),
        Ns,
    ),
    fig(
        "default CPU % at 5000/s",
        At("variants/default/ctscope_cpu_percent_at_5000_per_s"),
        Info,
    ),
    fig(
        "default RSS peak KiB",
        At("variants/default/max_rss_kib"),
        Rss,
    ),
    fig(
        "default RSS end KiB",
        At("variants/default/rss_end_kib"),
        Info,
    ),
    fig("lookups conn/s", At("variants/lookups/median_rate"), Info),
    fig(
        "lookups overhead %",
        At("variants/lookups/overhead_percent"),
        Info,
    ),
    fig(
        "lookups eBPF ns per conn",
        At("variants/lookups/bpf_ns_per_connection"),
        Ns,
    ),
    fig(
        "lookups ns per lookup",
        At("variants/lookups/lookup_overhead_ns_median"),
        Info,
    ),
    fig(
        "lookups RSS peak KiB",
        At("variants/lookups/max_rss_kib"),
        Rss,
    ),
    fig("errors", Len("errors"), FromZero),
];

pub(super) fn figures(kind: Kind) -> &'static [Figure] {
    match kind {
        Kind::Lab => LAB_FIGURES,
        Kind::Bench => BENCH_FIGURES,
    }
}

pub(super) fn number_at(v: &Value, path: &str) -> Option<f64> {
    ctscope_lab::json_at(v, path)
        .and_then(Value::as_f64)
        .filter(|x| x.is_finite())
}

pub(super) fn extract(v: &Value, source: Source) -> Option<f64> {
    match source {
        At(path) => number_at(v, path),
        Len(path) => ctscope_lab::json_at(v, path)
            .and_then(Value::as_array)
            .map(|a| a.len() as f64),
        NsPerInsert => {
            let programs = ctscope_lab::json_at(v, "ctscope/cost/programs")?.as_array()?;
            let total: u64 = programs
                .iter()
                .filter_map(|p| p.get("run_time_ns").and_then(Value::as_u64))
                .fold(0u64, u64::saturating_add);
            let inserts = number_at(v, "ctscope/inserts")?;
            (inserts > 0.0 && total > 0).then(|| round2(total as f64 / inserts))
        }
    }
}

pub(super) fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Why `new` is worse than `base` under `rule`, or None.
pub(super) fn judge(
    rule: Rule,
    base: Option<f64>,
    new: Option<f64>,
    t: &Thresholds,
) -> Option<String> {
    if rule == Info {
        return None;
    }
    let (b, n) = match (base, new) {
        (Some(_), None) => return Some("measured in base, not in new".to_owned()),
        (Some(b), Some(n)) => (b, n),
        _ => return None,
    };
    let growth = n - b;
    let pct = |limit: f64| {
        // A base of 0 is "not measured" for RSS and ns: no percentage of it means anything.
        (b > 0.0 && growth > b * limit / 100.0).then(|| {
            format!(
                "+{:.1}% > {}%",
                growth / b * 100.0,
                fmt_num(Some(limit)).trim_start_matches('+')
            )
        })
    };
    match rule {
        Info => None,
        Rss => pct(t.rss_growth_pct),
        Ns => pct(t.ns_growth_pct),
        Chain => (growth > t.chain_growth as f64)
            .then(|| format!("+{} > {}", fmt_num(Some(growth)), t.chain_growth)),
        Drops => {
            (growth > t.drop_growth as f64 && growth > b * t.drop_growth_pct / 100.0).then(|| {
                format!(
                    "+{} > {} and > {}%",
                    fmt_num(Some(growth)),
                    t.drop_growth,
                    fmt_num(Some(t.drop_growth_pct))
                )
            })
        }
        FromZero => {
            (b == 0.0 && n > 0.0).then(|| format!("0 in base, {} in new", fmt_num(Some(n))))
        }
    }
}

/// One figure of one pair.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Row {
    pub(super) name: &'static str,
    pub(super) base: Option<f64>,
    pub(super) new: Option<f64>,
    pub(super) judged: bool,
    pub(super) regression: Option<String>,
}

pub(super) fn rows(
    kind: Kind,
    base: &Value,
    new: &Value,
    t: &Thresholds,
    judge_ns: bool,
) -> Vec<Row> {
    figures(kind)
        .iter()
        .map(|f| {
            let (b, n) = (extract(base, f.source), extract(new, f.source));
            let judged = f.rule != Info && (f.rule != Ns || judge_ns);
            Row {
                name: f.name,
                base: b,
                new: n,
                judged,
                regression: if judged { judge(f.rule, b, n, t) } else { None },
            }
        })
        .filter(|r| r.base.is_some() || r.new.is_some())
        .collect()
}
