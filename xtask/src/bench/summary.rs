//! The bench summary of one VM result: per variant the guest's busy time per connection
//! against the round's baselines, the rates, ctscope's CPU, memory and bpf_stats; the A/A
//! spread; the headline figures and the goals.

use anyhow::{Context, Result, bail};
use ctscope_lab::BenchRun;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// The goals (BENCHMARKS.md): the default probes' share of a connection's guest busy time, ctscope's
/// CPU at 5,000 new connections/s, its peak RSS.
pub(super) const GOAL_OVERHEAD_PERCENT: f64 = 1.5;
pub(super) const GOAL_CPU_PERCENT_AT_5000: f64 = 1.0;
pub(super) const GOAL_RSS_MIB: f64 = 24.0;
/// A run whose A/A pair differs by more than this is flagged: its overheads are not resolved.
const AA_LIMIT_PERCENT: f64 = 1.0;
/// The variants, baselines first.
const VARIANTS: [&str; 6] = [
    "baseline",
    "baseline-aa",
    "default",
    "kprobe",
    "cost",
    "lookups",
];
/// How the summary measures (its `method`).
const METHOD: &str = "guest busy time per connection over the connections' whole life (from just before the clients start until the table has drained, ctscope attached throughout: CLOCK_MONOTONIC minus idle and iowait from /proc/timer_list, or where it has no idle times (7.x) the tasks' run time from /proc/schedstat); under icount a count of guest instructions. Overhead = a variant's busy time / the mean of the same round's two baselines - 1, median over rounds";

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    })
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// A run's busy share of the guest over its idle phase (0..1 per CPU).
fn idle_rate(r: &BenchRun) -> Option<f64> {
    let (busy, window) = (r.idle_busy_ns?, r.idle_window_ns?);
    (window > 0).then(|| busy as f64 / window as f64)
}

/// A run's busy time per connection that left the clients, ns.
fn busy_per_conn(r: &BenchRun) -> Option<f64> {
    let conns = r.flows.saturating_sub(r.send_errors);
    let busy = r.busy_ns?;
    (conns > 0 && busy > 0).then(|| busy as f64 / conns as f64)
}

/// The connections that left the clients, over these runs.
fn connections(mine: &[&BenchRun]) -> u64 {
    mine.iter()
        .map(|r| r.flows.saturating_sub(r.send_errors))
        .sum()
}

/// What every variant is set against: the baselines (no ctscope) of each round and overall.
struct Baselines {
    /// Each round's `baseline` rate, connections/s.
    rate: BTreeMap<u32, f64>,
    /// Each round's busy time per connection of its two baselines (the A/A pair), or the one
    /// there is.
    pair: BTreeMap<u32, Vec<f64>>,
    /// Each round's reference busy time per connection: the mean of `pair`.
    reference: BTreeMap<u32, f64>,
    /// The guest's busy share while idle, without ctscope: what each variant's idle phase is
    /// set against.
    idle: Option<f64>,
    /// The settling phase's busy time without ctscope, ns.
    settle: Option<f64>,
}

impl Baselines {
    fn of(runs: &[BenchRun]) -> Self {
        let rate = runs
            .iter()
            .filter(|r| r.variant == "baseline")
            .map(|r| (r.round, r.rate))
            .collect();
        let mut pair: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
        for r in runs
            .iter()
            .filter(|r| r.variant == "baseline" || r.variant == "baseline-aa")
        {
            if let Some(b) = busy_per_conn(r) {
                pair.entry(r.round).or_default().push(b);
            }
        }
        let reference = pair
            .iter()
            .map(|(round, v)| (*round, v.iter().sum::<f64>() / v.len() as f64))
            .collect();
        let idle = median(
            runs.iter()
                .filter(|r| r.variant.starts_with("baseline"))
                .filter_map(idle_rate)
                .collect(),
        );
        let settle = median(
            runs.iter()
                .filter(|r| r.variant.starts_with("baseline"))
                .filter_map(|r| r.settle_busy_ns)
                .map(|b| b as f64)
                .collect(),
        );
        Baselines {
            rate,
            pair,
            reference,
            idle,
            settle,
        }
    }

    /// The A/A spread: per round, how far apart the two baselines are (|a - b| / their mean),
    /// in %.
    fn aa_spreads(&self) -> Vec<f64> {
        self.pair
            .values()
            .filter(|v| v.len() == 2 && v[0] + v[1] > 0.0)
            .map(|v| round2((v[0] - v[1]).abs() / f64::midpoint(v[0], v[1]) * 100.0))
            .collect()
    }

    /// A busy time per connection against its round's reference, in % (None without one).
    fn busy_overhead(&self, r: &BenchRun, busy: f64) -> Option<f64> {
        let base = self.reference.get(&r.round).filter(|x| **x > 0.0)?;
        Some(round2((busy / base - 1.0) * 100.0))
    }
}

/// The bench summary of one VM result (the agent's `bench` runs, wrapped by xtask).
pub(crate) fn summarize(
    result: &Value,
    scenario: &ctscope_lab::Scenario,
    command: &str,
    date: &str,
    ctscope_commit: Option<&str>,
) -> Result<Value> {
    let runs = bench_runs(result)?;
    let base = Baselines::of(&runs);
    let mut variants = Map::new();
    let mut goals = Map::new();
    let mut busy_overheads: BTreeMap<&str, Option<f64>> = BTreeMap::new();
    for variant in VARIANTS {
        let mine: Vec<&BenchRun> = runs.iter().filter(|r| r.variant == variant).collect();
        let (v, busy_overhead) = variant_summary(variant, &mine, &base, &mut goals);
        if let Some(o) = busy_overhead {
            busy_overheads.insert(variant, o);
        }
        variants.insert(variant.into(), Value::Object(v));
    }
    // Peak RSS over every variant that ran ctscope: the start-up peak does not depend on
    // the probes.
    let rss = ["default", "kprobe", "cost", "lookups"]
        .iter()
        .filter_map(|v| ctscope_lab::json_at(&variants[*v], "max_rss_kib").and_then(Value::as_u64))
        .max();
    goals.insert(
        format!("rss_at_most_{GOAL_RSS_MIB}_mib"),
        json!(rss.map(|k| (k as f64) / 1024.0 <= GOAL_RSS_MIB)),
    );
    let summary = headline(&runs, &base, &variants, &busy_overheads, rss);
    let s = |k: &str| result.get(k).cloned().unwrap_or(Value::Null);
    Ok(json!({
        "kernel": s("kernel"),
        "kernel_release": s("kernel_release"),
        "kernel_package": s("kernel_package"),
        "kernel_package_version": s("kernel_package_version"),
        "kernel_spec_kind": s("kernel_spec_kind"),
        "kernel_source": s("kernel_source"),
        "kernel_image_sha256": s("kernel_image_sha256"),
        "date": date,
        "command": command,
        "accel": s("accel"),
        // "icount": guest time counted in guest instructions (the bench's [vm] deterministic).
        "guest_clock": s("guest_clock"),
        "emulated": match result.get("accel").and_then(Value::as_str) {
            Some("kvm") => "qemu KVM: guest code runs on the host CPU, the devices are emulated; ratios within one VM are what compares",
            _ => "qemu TCG: every instruction is emulated; only ratios within one VM mean something",
        },
        "rounds": runs.iter().map(|r| r.round).max().map(|m| m + 1),
        "summary": summary,
        "ctscope_commit": ctscope_commit,
        "workload": workload_text(scenario),
        "flows_per_run": scenario.total_flows(),
        "variants": variants,
        "goals": goals,
        "runs": runs,
        "errors": s("errors"),
    }))
}

/// The result's bench runs; an error when it has none.
fn bench_runs(result: &Value) -> Result<Vec<BenchRun>> {
    let runs: Vec<BenchRun> = serde_json::from_value(
        result
            .get("bench")
            .cloned()
            .context("the result has no bench runs (see its errors)")?,
    )
    .context("the result's bench runs do not parse")?;
    if runs.is_empty() {
        bail!("the result has no bench runs");
    }
    Ok(runs)
}

/// One variant's figures, and for a variant with ctscope its busy-time overhead (median over
/// the rounds). The default variant adds its goals to `goals`.
#[expect(
    clippy::option_option,
    reason = "None: the variant did not run; Some(None): it ran without a figure"
)]
fn variant_summary(
    variant: &str,
    mine: &[&BenchRun],
    base: &Baselines,
    goals: &mut Map<String, Value>,
) -> (Map<String, Value>, Option<Option<f64>>) {
    let mut v = Map::new();
    let busy: Vec<f64> = mine
        .iter()
        .filter_map(|r| busy_per_conn(r))
        .map(round2)
        .collect();
    v.insert("busy_ns_per_connection".into(), json!(busy));
    v.insert(
        "median_busy_ns_per_connection".into(),
        json!(median(busy).map(round2)),
    );
    // What this variant adds to an idle guest, as a share of a core: ctscope's fixed cost.
    let idle_delta = median(mine.iter().filter_map(|r| idle_rate(r)).collect())
        .zip(base.idle)
        .map(|(v, b)| (v - b).max(0.0));
    let busy_overhead = (variant != "baseline" && variant != "baseline-aa")
        .then(|| busy_overheads(&mut v, mine, base, idle_delta));
    rate_figures(&mut v, mine);
    if variant != "baseline" {
        ratio_figures(&mut v, mine, base);
        let at_5000 = cpu_figures(&mut v, mine, idle_delta);
        report_figures(&mut v, variant, mine);
        if variant == "default" {
            goals.insert(
                format!("default_probes_at_most_{GOAL_OVERHEAD_PERCENT}_percent_of_busy_time"),
                json!(busy_overhead.flatten().map(|o| o <= GOAL_OVERHEAD_PERCENT)),
            );
            goals.insert(
                format!("ctscope_at_most_{GOAL_CPU_PERCENT_AT_5000}_percent_cpu_at_5000_per_s"),
                json!(at_5000.map(|c| c <= GOAL_CPU_PERCENT_AT_5000)),
            );
        }
    }
    (v, busy_overhead)
}

/// A variant with ctscope: its busy time per connection against the rounds' baselines, whole
/// and less its fixed cost, its fixed cost and its start-up. Returns the busy-time overhead.
fn busy_overheads(
    v: &mut Map<String, Value>,
    mine: &[&BenchRun],
    base: &Baselines,
    idle_delta: Option<f64>,
) -> Option<f64> {
    let per_round: Vec<f64> = mine
        .iter()
        .filter_map(|r| base.busy_overhead(r, busy_per_conn(r)?))
        .collect();
    let overhead = median(per_round.clone()).map(round2);
    v.insert("busy_overhead_percent".into(), json!(overhead));
    v.insert("busy_overhead_percent_rounds".into(), json!(per_round));
    // ctscope's fixed cost: what it adds to an idle guest, in % of a core.
    v.insert(
        "idle_cpu_percent".into(),
        json!(idle_delta.map(|d| round2(d * 100.0))),
    );
    // Its start-up after ready: the settling phase's busy time against the baselines'.
    let settle = median(
        mine.iter()
            .filter_map(|r| r.settle_busy_ns)
            .map(|b| b as f64)
            .collect(),
    )
    .zip(base.settle)
    .map(|(v, b)| round2((v - b).max(0.0) / 1e6));
    v.insert("startup_busy_ms".into(), json!(settle));
    // Each connection's own cost: the busy time over the window less that fixed
    // cost over the window, against the round's baselines.
    let marginal: Vec<f64> = mine
        .iter()
        .filter_map(|r| {
            let conns = r.flows.saturating_sub(r.send_errors) as f64;
            let fixed = idle_delta? * r.window_ns? as f64 / conns;
            base.busy_overhead(r, busy_per_conn(r)? - fixed)
        })
        .collect();
    v.insert(
        "marginal_overhead_percent".into(),
        json!(median(marginal.clone()).map(round2)),
    );
    v.insert("marginal_overhead_percent_rounds".into(), json!(marginal));
    overhead
}

/// The clients' connection rates over the rounds, their median and spread.
fn rate_figures(v: &mut Map<String, Value>, mine: &[&BenchRun]) {
    let rates: Vec<f64> = mine.iter().map(|r| round2(r.rate)).collect();
    v.insert("rates".into(), json!(rates));
    v.insert(
        "median_rate".into(),
        json!(median(rates.clone()).map(round2)),
    );
    // The rates' spread over the rounds, (max - min) / median: for the baseline, what
    // the same run measures twice (an A/A spread), the bench's own noise.
    let spread = median(rates.clone())
        .filter(|m| *m > 0.0)
        .zip(
            rates
                .iter()
                .copied()
                .reduce(f64::min)
                .zip(rates.iter().copied().reduce(f64::max)),
        )
        .map(|(m, (lo, hi))| round2((hi - lo) / m * 100.0));
    v.insert("rate_spread_percent".into(), json!(spread));
}

/// The rates against each round's own baseline (drift between rounds cancels): the ratios,
/// their median, the rate overhead and its range over the rounds.
fn ratio_figures(v: &mut Map<String, Value>, mine: &[&BenchRun], base: &Baselines) {
    let ratios: Vec<f64> = mine
        .iter()
        .filter_map(|r| {
            base.rate
                .get(&r.round)
                .filter(|b| **b > 0.0)
                .map(|b| r.rate / b)
        })
        .collect();
    let ratio = median(ratios.clone());
    v.insert(
        "ratios".into(),
        json!(
            ratios
                .iter()
                .map(|r| (r * 10_000.0).round() / 10_000.0)
                .collect::<Vec<_>>()
        ),
    );
    v.insert(
        "median_ratio".into(),
        json!(ratio.map(|r| (r * 10_000.0).round() / 10_000.0)),
    );
    let overhead = ratio.map(|r| round2((1.0 - r) * 100.0));
    v.insert("overhead_percent".into(), json!(overhead));
    // The spread over rounds: under emulation one round can differ from the next by
    // more than the effect measured, and the reader should see that.
    let per_round: Vec<f64> = ratios.iter().map(|r| round2((1.0 - r) * 100.0)).collect();
    let range = per_round
        .iter()
        .copied()
        .reduce(f64::min)
        .zip(per_round.iter().copied().reduce(f64::max));
    v.insert(
        "overhead_percent_range".into(),
        json!(range.map(|(lo, hi)| [lo, hi])),
    );
}

/// ctscope's CPU during the workloads, per connection, and at 5,000 connections/s (returned).
fn cpu_figures(
    v: &mut Map<String, Value>,
    mine: &[&BenchRun],
    idle_delta: Option<f64>,
) -> Option<f64> {
    let cpu_s: f64 = mine.iter().filter_map(|r| r.ctscope_cpu_s).sum();
    let conns = connections(mine);
    // Over the window ctscope's CPU was read in: the busy window where there is one
    // (the connections' whole life), else the clients' time (older results).
    let busy_s: f64 = mine
        .iter()
        .map(|r| r.window_ns.map_or(r.elapsed_s, |w| w as f64 / 1e9))
        .sum();
    let cpu_percent = (busy_s > 0.0).then(|| round2(cpu_s / busy_s * 100.0));
    // At 5,000 connections/s: ctscope's fixed cost per second (its idle phase against
    // the baselines') plus its own CPU per connection: its run time over the window
    // (the agent's reading of its threads' schedstat, ns) less that fixed cost over
    // the window. Its report's CPU time covers its whole run, start and end included,
    // whose one-off work is no cost per connection.
    let idle_share = idle_delta;
    let per_conn: Vec<f64> = mine
        .iter()
        .filter_map(|r| {
            let cpu = r.ctscope_cpu_s?;
            let window_s = r.window_ns? as f64 / 1e9;
            let n = r.flows.saturating_sub(r.send_errors);
            let fixed = idle_share? * window_s;
            (n > 0).then(|| (cpu - fixed).max(0.0) / n as f64)
        })
        .collect();
    let at_5000 = idle_share
        .zip(median(per_conn.clone()))
        .map(|(i, p)| round2((i + p * 5000.0) * 100.0))
        .or_else(|| {
            // Older results (no idle phase): CPU per connection during the workload.
            (conns > 0 && idle_share.is_none())
                .then(|| round2(cpu_s / conns as f64 * 5000.0 * 100.0))
        });
    v.insert(
        "ctscope_cpu_us_per_connection".into(),
        json!(median(per_conn).map(|p| round2(p * 1e6))),
    );
    v.insert(
        "ctscope_cpu_percent_during_workload".into(),
        json!(cpu_percent),
    );
    v.insert("ctscope_cpu_percent_at_5000_per_s".into(), json!(at_5000));
    at_5000
}

/// What ctscope's own reports say: its RSS, CPU, bpf_stats per program (summed over the
/// rounds) and, for `lookups`, the cost of a lookup.
fn report_figures(v: &mut Map<String, Value>, variant: &str, mine: &[&BenchRun]) {
    let report = |r: &&BenchRun, p: &str| {
        r.ctscope
            .as_ref()
            .and_then(|c| ctscope_lab::json_at(c, p))
            .cloned()
    };
    let rss = mine
        .iter()
        .filter_map(|r| report(r, "cost/max_rss_kib").and_then(|v| v.as_u64()))
        .max();
    v.insert("max_rss_kib".into(), json!(rss));
    let rss_end = mine
        .iter()
        .filter_map(|r| report(r, "cost/rss_kib").and_then(|v| v.as_u64()))
        .max();
    v.insert("rss_end_kib".into(), json!(rss_end));
    let report_cpu: Vec<f64> = mine
        .iter()
        .filter_map(|r| report(r, "cost/cpu_percent").and_then(|v| v.as_f64()))
        .collect();
    v.insert(
        "report_cpu_percent_median".into(),
        json!(median(report_cpu).map(round2)),
    );
    program_figures(v, mine);
    if variant == "lookups" {
        let per_lookup: Vec<f64> = mine
            .iter()
            .filter_map(|r| report(r, "lookups/overhead_ns_per_lookup").and_then(|v| v.as_f64()))
            .collect();
        v.insert(
            "lookup_overhead_ns_median".into(),
            json!(median(per_lookup).map(round2)),
        );
    }
}

/// bpf_stats summed over the rounds, per program, and their total per connection.
fn program_figures(v: &mut Map<String, Value>, mine: &[&BenchRun]) {
    let mut programs: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for r in mine {
        let ps = r
            .ctscope
            .as_ref()
            .and_then(|c| ctscope_lab::json_at(c, "cost/programs"));
        if let Some(Value::Array(ps)) = ps {
            for p in ps {
                let name = p
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_string();
                let e = programs.entry(name).or_default();
                e.0 += p.get("run_cnt").and_then(Value::as_u64).unwrap_or(0);
                e.1 += p.get("run_time_ns").and_then(Value::as_u64).unwrap_or(0);
            }
        }
    }
    let total_ns: u64 = programs.values().map(|(_, ns)| ns).sum();
    v.insert(
        "programs".into(),
        Value::Array(
            programs
                .iter()
                .map(|(name, (cnt, ns))| {
                    json!({"name": name, "run_cnt": cnt, "run_time_ns": ns,
                           "ns_per_run": (*cnt > 0).then(|| round2(*ns as f64 / *cnt as f64))})
                })
                .collect(),
        ),
    );
    let conns = connections(mine);
    v.insert(
        "bpf_ns_per_connection".into(),
        json!((conns > 0 && total_ns > 0).then(|| round2(total_ns as f64 / conns as f64))),
    );
}

/// The summary's headline figures, taken from the variants' (`max_rss_kib`: the peak over
/// every variant with ctscope).
fn headline(
    runs: &[BenchRun],
    base: &Baselines,
    variants: &Map<String, Value>,
    busy_overheads: &BTreeMap<&str, Option<f64>>,
    rss: Option<u64>,
) -> Value {
    let aa = base.aa_spreads();
    // The largest over the rounds.
    let aa_spread = aa.iter().copied().reduce(f64::max);
    let at = |p: &str| ctscope_lab::json_at(&Value::Object(variants.clone()), p).cloned();
    let overhead = |variant: &str| busy_overheads.get(variant).copied().flatten();
    json!({
        "method": METHOD,
        "rounds": runs.iter().map(|r| r.round).max().map(|m| m + 1),
        "baseline_busy_ns_per_conn": median(
            runs.iter()
                .filter(|r| r.variant == "baseline" || r.variant == "baseline-aa")
                .filter_map(busy_per_conn)
                .collect()
        ).map(round2),
        "default_overhead_pct": overhead("default"),
        "default_marginal_overhead_pct": at("default/marginal_overhead_percent"),
        "ctscope_idle_cpu_pct": at("default/idle_cpu_percent"),
        "ctscope_startup_busy_ms": at("default/startup_busy_ms"),
        "kprobe_overhead_pct": overhead("kprobe"),
        "cost_overhead_pct": overhead("cost"),
        "lookups_overhead_pct": overhead("lookups"),
        "aa_spread_pct": aa_spread,
        "aa_spread_pct_rounds": aa,
        "aa_flagged": aa_spread.map(|a| a > AA_LIMIT_PERCENT),
        "ebpf_ns_per_conn": at("cost/bpf_ns_per_connection"),
        "programs": at("cost/programs").map(|ps| {
            ps.as_array()
                .map(|a| {
                    a.iter()
                        .map(|p| json!({"name": p["name"], "run_cnt": p["run_cnt"], "ns_per_run": p["ns_per_run"]}))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        }),
        "ctscope_cpu_percent_at_5000_per_s": at("default/ctscope_cpu_percent_at_5000_per_s"),
        "max_rss_kib": rss,
        "rss_end_kib": at("default/rss_end_kib"),
        "rate_overhead_pct": at("default/overhead_percent"),
    })
}

/// The workload in words: each container's flows, protocol and kind, joined by ` + `.
fn workload_text(scenario: &ctscope_lab::Scenario) -> String {
    scenario
        .containers
        .iter()
        .map(|c| {
            format!(
                "{} {} {}{}",
                c.flows,
                c.protocol,
                if c.close {
                    "connections opened and closed"
                } else {
                    "flows"
                },
                if c.firewall { " (own firewall)" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join(" + ")
}
