//! `cargo xtask compare BASE NEW`: what changed between two lab runs (or two bench results)
//! that matters, side by side, and whether NEW is worse than BASE beyond thresholds.
//!
//! Inputs are the wrapped lab results `cargo xtask vm`/`test` write (target/lab/results/
//! <kernel>-<scenario>.json) or the bench summaries `cargo xtask bench` writes
//! (bench/results/<kernel>.json), as two files or two directories of them. Lab results are
//! re-checked with this tree's checks and scenarios/, so "a check that passed in BASE fails in
//! NEW" is judged by the same rules on both sides.

use crate::paths;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Result files larger than this are refused (a lab result is well under 1 MiB).
const MAX_RESULT_BYTES: u64 = 64 << 20;

pub const DEFAULT_RSS_GROWTH_PCT: f64 = 15.0;
pub const DEFAULT_NS_GROWTH_PCT: f64 = 30.0;
pub const DEFAULT_CHAIN_GROWTH: u64 = 3;
pub const DEFAULT_DROP_GROWTH: u64 = 10;
pub const DEFAULT_DROP_GROWTH_PCT: f64 = 25.0;

#[derive(clap::Args)]
pub struct Args {
    /// The base run: a result JSON file, or a directory of them (e.g. a saved
    /// target/lab/results or bench/results).
    base: PathBuf,
    /// The new run: a file if BASE is a file, a directory if BASE is one.
    new: PathBuf,
    /// Peak RSS of ctscope (`cost.max_rss_kib`) may grow by this many percent.
    #[arg(long, default_value_t = DEFAULT_RSS_GROWTH_PCT, value_parser = non_negative)]
    max_rss_growth_pct: f64,
    /// eBPF nanoseconds per insert (lab) or per connection (bench) may grow by this many
    /// percent. Not judged when the two runs used different accelerators.
    #[arg(long, default_value_t = DEFAULT_NS_GROWTH_PCT, value_parser = non_negative)]
    max_ns_growth_pct: f64,
    /// Chain length p99 and max may grow by this many entries (absolute).
    #[arg(long, default_value_t = DEFAULT_CHAIN_GROWTH)]
    max_chain_growth: u64,
    /// Drops of one reason may grow by this many (absolute); a regression only when the
    /// growth also exceeds --max-drop-growth-pct.
    #[arg(long, default_value_t = DEFAULT_DROP_GROWTH)]
    max_drop_growth: u64,
    /// Drops of one reason may grow by this many percent of BASE's; a regression only when
    /// the growth also exceeds --max-drop-growth.
    #[arg(long, default_value_t = DEFAULT_DROP_GROWTH_PCT, value_parser = non_negative)]
    max_drop_growth_pct: f64,
    /// Scenario files the lab checks are re-evaluated with [default: scenarios/].
    #[arg(long)]
    scenarios: Option<PathBuf>,
    /// Print the comparison as JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Match directories by scenario alone: two kernels (or two builds of one) on the same
    /// scenarios, one result per scenario on each side.
    #[arg(long)]
    ignore_kernel: bool,
}

/// The long help of `cargo xtask compare` (main.rs puts it on the subcommand).
pub const LONG_ABOUT: &str = "Compare two lab runs, or two bench results, and fail when NEW is worse.\n\n\
BASE and NEW are two result files or two directories of them: the wrapped lab results of \
`cargo xtask vm`/`test` (target/lab/results/<kernel>-<scenario>.json), or the bench summaries of \
`cargo xtask bench` (bench/results/<kernel>.json). Directories are matched by kernel and scenario; \
results on one side only are listed, and only when nothing matches is that an error. Other JSON \
files (summary.json, the raw <kernel>-bench.json run) are skipped and listed.\n\n\
Shown side by side (base, new, delta): inserts (ctscope's and the kernel's), drops by reason \
(ctscope's and the kernel's counters), chain length p50/p99/max, the self-check, eBPF ns per \
insert (all programs' bpf_stats time / ctscope's inserts; bench: per connection), ctscope's peak \
and final RSS; for bench results the rates and overheads of each variant too.\n\n\
Regressions (exit 1):\n  \
- a lab check that did not fail in BASE fails in NEW (both re-evaluated with this tree's checks \
and --scenarios);\n  \
- a self-check failure counter (nulls/link/dir mismatch, read errors) or a bench's errors rise \
from 0;\n  \
- peak RSS beyond --max-rss-growth-pct (default 15: the peak is mostly BTF parsing at start-up, \
nearly the same from run to run);\n  \
- eBPF ns beyond --max-ns-growth-pct (default 30: under TCG bpf_stats times are emulated and \
follow the host's load, tens of percent from run to run; not judged across accelerators);\n  \
- chain p99 or max beyond --max-chain-growth (default 3: the kernel seeds its hash at every boot, \
the longest chain moves by a few between runs of one scenario);\n  \
- drops of one reason beyond both --max-drop-growth (default 10) and --max-drop-growth-pct \
(default 25): chain-too-long drops move by a handful with the hash seed, table-full drops with \
the workload's timing;\n  \
- a figure with a threshold that BASE measured and NEW did not.\n\
Rates, overheads, inserts and the kernel's counters are shown, not judged: under emulation they \
move more than the effects the checks and thresholds catch.\n\n\
Exit codes: 0 no regression, 1 regression, 2 usage or input error.";

fn non_negative(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(format!("`{s}` is not a non-negative number")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
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
    fn to_json(self) -> Value {
        json!({
            "max_rss_growth_pct": self.rss_growth_pct,
            "max_ns_growth_pct": self.ns_growth_pct,
            "max_chain_growth": self.chain_growth,
            "max_drop_growth": self.drop_growth,
            "max_drop_growth_pct": self.drop_growth_pct,
        })
    }
}

/// The exit code of `cargo xtask compare`: 0, 1 (regression) or 2 (usage or input error).
pub fn main(args: &Args) -> i32 {
    run(args, &mut std::io::stdout().lock())
}

/// [`main`], printing to `out`.
fn run(args: &Args, out: &mut impl Write) -> i32 {
    let thresholds = Thresholds {
        rss_growth_pct: args.max_rss_growth_pct,
        ns_growth_pct: args.max_ns_growth_pct,
        chain_growth: args.max_chain_growth,
        drop_growth: args.max_drop_growth,
        drop_growth_pct: args.max_drop_growth_pct,
    };
    let scenarios = args
        .scenarios
        .clone()
        .unwrap_or_else(|| paths::workspace_root().join("scenarios"));
    match compare(
        &args.base,
        &args.new,
        &scenarios,
        thresholds,
        args.ignore_kernel,
    ) {
        Ok(c) => {
            let text = if args.json {
                match serde_json::to_string_pretty(&c.to_json()) {
                    Ok(text) => text + "\n",
                    Err(e) => {
                        eprintln!("error: cannot render the comparison: {e}");
                        return 2;
                    }
                }
            } else {
                c.render()
            };
            // A reader that stopped early (`| head`) is no reason to change the verdict.
            if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush())
                && e.kind() != std::io::ErrorKind::BrokenPipe
            {
                eprintln!("error: cannot write the comparison: {e}");
                return 2;
            }
            i32::from(c.regressed())
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    }
}

/// What one result file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Lab,
    Bench,
}

/// One result file, read.
#[derive(Debug, Clone)]
struct Run {
    kind: Kind,
    kernel: String,
    scenario: String,
    path: PathBuf,
    value: Value,
}

impl Run {
    fn key(&self) -> (String, String) {
        (self.kernel.clone(), self.scenario.clone())
    }

    fn label(&self) -> String {
        format!("{} {}", shown(&self.kernel), shown(&self.scenario))
    }

    /// The accelerator the run used: results from before `accel` was recorded all ran
    /// under TCG (the only accelerator xtask used then).
    fn accel(&self) -> &str {
        self.value
            .get("accel")
            .and_then(Value::as_str)
            .unwrap_or("tcg")
    }
}

/// What kind of result `v` is, with its kernel and scenario; `Err` says why it is neither.
fn classify(v: &Value) -> Result<(Kind, String, String), String> {
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    if !v.is_object() {
        return Err("not a JSON object".to_owned());
    }
    if v.get("variants").is_some_and(Value::is_object) {
        let kernel = text("kernel").ok_or("a bench summary without `kernel`")?;
        return Ok((Kind::Bench, kernel, "bench".to_owned()));
    }
    if v.get("bench").is_some_and(Value::is_array) {
        return Err(
            "the raw result of a bench run: compare bench/results/<kernel>.json instead".to_owned(),
        );
    }
    match (text("kernel"), text("scenario"), v.get("truth")) {
        (Some(kernel), Some(scenario), Some(_)) => Ok((Kind::Lab, kernel, scenario)),
        _ => Err("neither a lab result (kernel, scenario, truth) nor a bench summary".to_owned()),
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", shown_path(path)))?;
    if meta.len() > MAX_RESULT_BYTES {
        bail!(
            "{} is {} bytes: larger than any result ({MAX_RESULT_BYTES} at most)",
            shown_path(path),
            meta.len()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {}", shown_path(path)))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", shown_path(path)))
}

fn load_file(path: &Path) -> Result<Run> {
    let value = read_json(path)?;
    let (kind, kernel, scenario) =
        classify(&value).map_err(|why| anyhow::anyhow!("{}: {why}", shown_path(path)))?;
    Ok(Run {
        kind,
        kernel,
        scenario,
        path: path.to_path_buf(),
        value,
    })
}

/// The results of one directory (its *.json, sorted), and the files skipped with why.
struct DirRuns {
    runs: Vec<Run>,
    skipped: Vec<(PathBuf, String)>,
}

fn load_dir(dir: &Path) -> Result<DirRuns> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", shown_path(dir)))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut out = DirRuns {
        runs: Vec::new(),
        skipped: Vec::new(),
    };
    let mut seen: BTreeMap<(String, String), PathBuf> = BTreeMap::new();
    for path in files {
        let value = match read_json(&path) {
            Ok(v) => v,
            Err(e) => {
                out.skipped.push((path, format!("{e:#}")));
                continue;
            }
        };
        let (kind, kernel, scenario) = match classify(&value) {
            Ok(c) => c,
            Err(why) => {
                out.skipped.push((path, why));
                continue;
            }
        };
        let run = Run {
            kind,
            kernel,
            scenario,
            path,
            value,
        };
        if let Some(other) = seen.insert(run.key(), run.path.clone()) {
            bail!(
                "{} and {} are both {}: which one to compare is ambiguous",
                shown_path(&other),
                shown_path(&run.path),
                run.label()
            );
        }
        out.runs.push(run);
    }
    Ok(out)
}

/// BASE and NEW, read and matched.
struct Inputs {
    pairs: Vec<(Run, Run)>,
    base_only: Vec<Run>,
    new_only: Vec<Run>,
    skipped: Vec<(PathBuf, String)>,
    notes: Vec<String>,
}

fn load_inputs(base: &Path, new: &Path, ignore_kernel: bool) -> Result<Inputs> {
    match (base.is_dir(), new.is_dir()) {
        (false, false) => {
            let (b, n) = (load_file(base)?, load_file(new)?);
            if b.kind != n.kind {
                bail!(
                    "{} is a {} and {} a {}: nothing to compare",
                    shown_path(base),
                    kind_name(b.kind),
                    shown_path(new),
                    kind_name(n.kind)
                );
            }
            let mut notes = Vec::new();
            if b.key() != n.key() {
                notes.push(format!(
                    "comparing different runs as asked: base is {}, new is {}",
                    b.label(),
                    n.label()
                ));
            }
            Ok(Inputs {
                pairs: vec![(b, n)],
                base_only: Vec::new(),
                new_only: Vec::new(),
                skipped: Vec::new(),
                notes,
            })
        }
        (true, true) => {
            let (b, n) = (load_dir(base)?, load_dir(new)?);
            let mut inputs = pair_runs(b.runs, n.runs, ignore_kernel)?;
            inputs.skipped = b.skipped.into_iter().chain(n.skipped).collect();
            if inputs.pairs.is_empty() {
                bail!(
                    "no result in {} matches one in {} by {} (base has {}, new has {}{})",
                    shown_path(base),
                    shown_path(new),
                    if ignore_kernel {
                        "scenario"
                    } else {
                        "kernel and scenario"
                    },
                    list_or_none(&inputs.base_only),
                    list_or_none(&inputs.new_only),
                    if ignore_kernel {
                        ""
                    } else {
                        "; --ignore-kernel matches by scenario alone"
                    }
                );
            }
            Ok(inputs)
        }
        _ => bail!(
            "BASE and NEW must both be files or both be directories ({} and {})",
            shown_path(base),
            shown_path(new)
        ),
    }
}

fn list_or_none(runs: &[Run]) -> String {
    if runs.is_empty() {
        "none".to_owned()
    } else {
        runs.iter().map(Run::label).collect::<Vec<_>>().join(", ")
    }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Lab => "lab result",
        Kind::Bench => "bench summary",
    }
}

/// Matches runs by (kernel, scenario), unique on each side (see [`load_dir`]), or by scenario
/// alone with `ignore_kernel`, where a scenario twice on one side is an error.
fn pair_runs(base: Vec<Run>, new: Vec<Run>, ignore_kernel: bool) -> Result<Inputs> {
    let key = |r: &Run| {
        if ignore_kernel {
            (String::new(), r.scenario.clone())
        } else {
            r.key()
        }
    };
    if ignore_kernel {
        for side in [&base, &new] {
            let mut seen = std::collections::BTreeSet::new();
            for r in side.iter() {
                if !seen.insert(r.scenario.clone()) {
                    bail!(
                        "--ignore-kernel: scenario {} is there for more than one kernel",
                        shown(&r.scenario)
                    );
                }
            }
        }
    }
    let mut new_by_key: BTreeMap<(String, String), Run> =
        new.into_iter().map(|r| (key(&r), r)).collect();
    let mut pairs = Vec::new();
    let mut base_only = Vec::new();
    for b in base {
        match new_by_key.remove(&key(&b)) {
            Some(n) if n.kind != b.kind => bail!(
                "{} is a {} and {} a {}: nothing to compare",
                shown_path(&b.path),
                kind_name(b.kind),
                shown_path(&n.path),
                kind_name(n.kind)
            ),
            Some(n) => pairs.push((b, n)),
            None => base_only.push(b),
        }
    }
    Ok(Inputs {
        pairs,
        base_only,
        new_only: new_by_key.into_values().collect(),
        skipped: Vec::new(),
        notes: Vec::new(),
    })
}

/// How a figure is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
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
enum Source {
    /// A number at a `/`-separated path.
    At(&'static str),
    /// The length of the array at a path.
    Len(&'static str),
    /// Every program's `run_time_ns` over ctscope's inserts.
    NsPerInsert,
}

struct Figure {
    name: &'static str,
    source: Source,
    rule: Rule,
}

const fn fig(name: &'static str, source: Source, rule: Rule) -> Figure {
    Figure { name, source, rule }
}

use Rule::{Chain, Drops, FromZero, Info, Ns, Rss};
use Source::{At, Len, NsPerInsert};

const LAB_FIGURES: &[Figure] = &[
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

const BENCH_FIGURES: &[Figure] = &[
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

fn figures(kind: Kind) -> &'static [Figure] {
    match kind {
        Kind::Lab => LAB_FIGURES,
        Kind::Bench => BENCH_FIGURES,
    }
}

fn number_at(v: &Value, path: &str) -> Option<f64> {
    ctscope_lab::json_at(v, path)
        .and_then(Value::as_f64)
        .filter(|x| x.is_finite())
}

fn extract(v: &Value, source: Source) -> Option<f64> {
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

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Why `new` is worse than `base` under `rule`, or None.
fn judge(rule: Rule, base: Option<f64>, new: Option<f64>, t: &Thresholds) -> Option<String> {
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
struct Row {
    name: &'static str,
    base: Option<f64>,
    new: Option<f64>,
    judged: bool,
    regression: Option<String>,
}

fn rows(kind: Kind, base: &Value, new: &Value, t: &Thresholds, judge_ns: bool) -> Vec<Row> {
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

/// The lab checks of both sides, compared by name.
#[derive(Debug, Default, Clone, PartialEq)]
struct CheckDiff {
    base_passed: usize,
    base_failed: usize,
    new_passed: usize,
    new_failed: usize,
    /// Failing in NEW, not failing in BASE: (name, NEW's detail, what BASE had).
    regressed: Vec<(String, String, &'static str)>,
    still_failing: Vec<String>,
    fixed: Vec<String>,
}

/// Check names made unique (a repeated name gets `#2`, `#3`...), with their outcome.
fn keyed(checks: &[ctscope_lab::Check]) -> BTreeMap<String, &ctscope_lab::Check> {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    checks
        .iter()
        .map(|c| {
            let n = seen.entry(c.name.as_str()).or_default();
            *n += 1;
            let key = if *n == 1 {
                c.name.clone()
            } else {
                format!("{}#{n}", c.name)
            };
            (key, c)
        })
        .collect()
}

fn diff_checks(base: &[ctscope_lab::Check], new: &[ctscope_lab::Check]) -> CheckDiff {
    let (b, n) = (keyed(base), keyed(new));
    let count =
        |cs: &[ctscope_lab::Check], passed: bool| cs.iter().filter(|c| c.passed == passed).count();
    let mut d = CheckDiff {
        base_passed: count(base, true),
        base_failed: count(base, false),
        new_passed: count(new, true),
        new_failed: count(new, false),
        ..CheckDiff::default()
    };
    for (key, c) in &n {
        match (c.passed, b.get(key).map(|bc| bc.passed)) {
            (false, Some(true)) => {
                d.regressed
                    .push((key.clone(), c.detail.clone(), "passed in base"))
            }
            (false, None) => d
                .regressed
                .push((key.clone(), c.detail.clone(), "not in base")),
            (false, Some(false)) => d.still_failing.push(key.clone()),
            (true, Some(false)) => d.fixed.push(key.clone()),
            (true, _) => {}
        }
    }
    d
}

/// Scenario files by scenario name, read once.
struct Scenarios {
    dir: PathBuf,
    by_name: Option<BTreeMap<String, ctscope_lab::Scenario>>,
}

impl Scenarios {
    fn get(&mut self, name: &str) -> Option<&ctscope_lab::Scenario> {
        let dir = &self.dir;
        self.by_name
            .get_or_insert_with(|| {
                let Ok(entries) = std::fs::read_dir(dir) else {
                    return BTreeMap::new();
                };
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                    .filter_map(|p| ctscope_lab::Scenario::load(&p).ok())
                    .map(|s| (s.name.clone(), s))
                    .collect()
            })
            .get(name)
    }
}

/// One matched pair, compared.
struct PairReport {
    label: String,
    base_path: PathBuf,
    new_path: PathBuf,
    accel: (String, String),
    rows: Vec<Row>,
    checks: Option<CheckDiff>,
    notes: Vec<String>,
}

impl PairReport {
    fn regressions(&self) -> usize {
        self.rows.iter().filter(|r| r.regression.is_some()).count()
            + self.checks.as_ref().map_or(0, |c| c.regressed.len())
    }
}

fn compare_pair(base: &Run, new: &Run, t: &Thresholds, scenarios: &mut Scenarios) -> PairReport {
    let mut notes = Vec::new();
    let accel = (base.accel().to_owned(), new.accel().to_owned());
    let judge_ns = accel.0 == accel.1;
    if !judge_ns {
        notes.push(format!(
            "accelerators differ ({} / {}): eBPF ns are not comparable, not judged",
            shown(&accel.0),
            shown(&accel.1)
        ));
    }
    let version = |r: &Run| {
        r.value
            .get("kernel_package_version")
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    if let (Some(b), Some(n)) = (version(base), version(new))
        && b != n
    {
        notes.push(format!(
            "kernel package versions differ: {} / {}",
            shown(&b),
            shown(&n)
        ));
    }
    let checks = match base.kind {
        Kind::Bench => None,
        Kind::Lab => match scenarios.get(&new.scenario) {
            Some(s) => Some(diff_checks(
                &ctscope_lab::check(&base.value, s),
                &ctscope_lab::check(&new.value, s),
            )),
            None => {
                notes.push(format!(
                    "no scenario `{}` in {}: lab checks not compared",
                    shown(&new.scenario),
                    shown_path(&scenarios.dir)
                ));
                None
            }
        },
    };
    PairReport {
        label: if base.key() == new.key() {
            base.label()
        } else {
            format!("{} / {}", base.label(), new.label())
        },
        base_path: base.path.clone(),
        new_path: new.path.clone(),
        accel,
        rows: rows(base.kind, &base.value, &new.value, t, judge_ns),
        checks,
        notes,
    }
}

/// The whole comparison.
struct Comparison {
    thresholds: Thresholds,
    pairs: Vec<PairReport>,
    base_only: Vec<String>,
    new_only: Vec<String>,
    skipped: Vec<(PathBuf, String)>,
    notes: Vec<String>,
}

fn compare(
    base: &Path,
    new: &Path,
    scenarios: &Path,
    t: Thresholds,
    ignore_kernel: bool,
) -> Result<Comparison> {
    let inputs = load_inputs(base, new, ignore_kernel)?;
    let mut scenarios = Scenarios {
        dir: scenarios.to_path_buf(),
        by_name: None,
    };
    let pairs = inputs
        .pairs
        .iter()
        .map(|(b, n)| compare_pair(b, n, &t, &mut scenarios))
        .collect();
    Ok(Comparison {
        thresholds: t,
        pairs,
        base_only: inputs.base_only.iter().map(Run::label).collect(),
        new_only: inputs.new_only.iter().map(Run::label).collect(),
        skipped: inputs.skipped,
        notes: inputs.notes,
    })
}

impl Comparison {
    fn regressions(&self) -> usize {
        self.pairs.iter().map(PairReport::regressions).sum()
    }

    fn regressed(&self) -> bool {
        self.regressions() > 0
    }

    fn render(&self) -> String {
        let t = &self.thresholds;
        let mut out = format!(
            "compare: thresholds: RSS peak +{}%, eBPF ns +{}%, chain p99/max +{}, drops +{} and +{}%; \
             failing checks and self-check failures from 0 always count\n",
            fmt_num(Some(t.rss_growth_pct)),
            fmt_num(Some(t.ns_growth_pct)),
            t.chain_growth,
            t.drop_growth,
            fmt_num(Some(t.drop_growth_pct)),
        );
        for note in &self.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        for p in &self.pairs {
            out.push_str(&render_pair(p));
        }
        if !self.base_only.is_empty() {
            out.push_str(&format!(
                "\nonly in base (not compared): {}\n",
                self.base_only.join(", ")
            ));
        }
        if !self.new_only.is_empty() {
            out.push_str(&format!(
                "\nonly in new (not compared): {}\n",
                self.new_only.join(", ")
            ));
        }
        for (path, why) in &self.skipped {
            out.push_str(&format!("skipped {}: {}\n", shown_path(path), shown(why)));
        }
        let n = self.regressions();
        let worse = self.pairs.iter().filter(|p| p.regressions() > 0).count();
        out.push_str(&if n == 0 {
            format!(
                "\ncompare: no regression in {} compared runs\n",
                self.pairs.len()
            )
        } else {
            format!(
                "\ncompare: REGRESSED: {n} regressions in {worse} of {} compared runs\n",
                self.pairs.len()
            )
        });
        out
    }

    fn to_json(&self) -> Value {
        json!({
            "regressed": self.regressed(),
            "regressions": self.regressions(),
            "thresholds": self.thresholds.to_json(),
            "pairs": self.pairs.iter().map(pair_json).collect::<Vec<_>>(),
            "base_only": self.base_only,
            "new_only": self.new_only,
            "skipped": self.skipped.iter()
                .map(|(p, why)| json!({"path": p.display().to_string(), "why": why}))
                .collect::<Vec<_>>(),
            "notes": self.notes,
        })
    }
}

fn pair_json(p: &PairReport) -> Value {
    json!({
        "run": p.label,
        "base": p.base_path.display().to_string(),
        "new": p.new_path.display().to_string(),
        "accel": {"base": p.accel.0, "new": p.accel.1},
        "regressions": p.regressions(),
        "figures": p.rows.iter().map(|r| json!({
            "name": r.name,
            "base": r.base,
            "new": r.new,
            "delta": delta(r),
            "judged": r.judged,
            "regression": r.regression,
        })).collect::<Vec<_>>(),
        "checks": p.checks.as_ref().map(|c| json!({
            "base": {"passed": c.base_passed, "failed": c.base_failed},
            "new": {"passed": c.new_passed, "failed": c.new_failed},
            "regressed": c.regressed.iter()
                .map(|(name, detail, was)| json!({"name": name, "detail": detail, "base": was}))
                .collect::<Vec<_>>(),
            "still_failing": c.still_failing,
            "fixed": c.fixed,
        })),
        "notes": p.notes,
    })
}

fn delta(r: &Row) -> Option<f64> {
    Some(round2(r.new? - r.base?))
}

fn render_pair(p: &PairReport) -> String {
    let mut out = format!(
        "\n== {} (accel {} / {})\n   base {}\n   new  {}\n",
        p.label,
        shown(&p.accel.0),
        shown(&p.accel.1),
        shown_path(&p.base_path),
        shown_path(&p.new_path)
    );
    for note in &p.notes {
        out.push_str(&format!("   note: {note}\n"));
    }
    let cells: Vec<[String; 5]> = p
        .rows
        .iter()
        .map(|r| {
            [
                r.name.to_owned(),
                fmt_num(r.base),
                fmt_num(r.new),
                delta(r).map_or_else(|| "-".to_owned(), fmt_delta),
                match (&r.regression, r.judged) {
                    (Some(why), _) => format!("REGRESSED: {why}"),
                    (None, true) => "ok".to_owned(),
                    (None, false) => String::new(),
                },
            ]
        })
        .collect();
    let header = [
        "figure".to_owned(),
        "base".to_owned(),
        "new".to_owned(),
        "delta".to_owned(),
        String::new(),
    ];
    let mut width = [0usize; 4];
    for row in std::iter::once(&header).chain(&cells) {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&cells) {
        let line = format!(
            "   {:<w0$}  {:>w1$}  {:>w2$}  {:>w3$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            w0 = width[0],
            w1 = width[1],
            w2 = width[2],
            w3 = width[3],
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if let Some(c) = &p.checks {
        out.push_str(&format!(
            "   checks: base {} passed, {} failed; new {} passed, {} failed\n",
            c.base_passed, c.base_failed, c.new_passed, c.new_failed
        ));
        for (name, detail, was) in &c.regressed {
            out.push_str(&format!(
                "   REGRESSED check {} ({was}): {}\n",
                shown(name),
                shown(detail)
            ));
        }
        if !c.still_failing.is_empty() {
            out.push_str(&format!(
                "   failing in both: {}\n",
                shown(&c.still_failing.join(", "))
            ));
        }
        if !c.fixed.is_empty() {
            out.push_str(&format!(
                "   fixed in new: {}\n",
                shown(&c.fixed.join(", "))
            ));
        }
    }
    out
}

/// A number for the table: integers without decimals, others with two; `-` when absent.
fn fmt_num(x: Option<f64>) -> String {
    match x {
        None => "-".to_owned(),
        Some(x) if x.fract() == 0.0 && x.abs() < 1e15 => format!("{x:.0}"),
        Some(x) => format!("{x:.2}"),
    }
}

fn fmt_delta(d: f64) -> String {
    if d > 0.0 {
        format!("+{}", fmt_num(Some(d)))
    } else {
        fmt_num(Some(d))
    }
}

/// Text from an input file, safe to print: control characters and the Unicode line, paragraph
/// and direction marks are escaped (a result file's strings come from a VM and its user).
fn shown(s: &str) -> String {
    s.chars()
        .map(|c| {
            let risky = c.is_control()
                || matches!(
                    c,
                    '\u{2028}' | '\u{2029}' | '\u{061c}' | '\u{200e}' | '\u{200f}'
                )
                || ('\u{202a}'..='\u{202e}').contains(&c)
                || ('\u{2066}'..='\u{2069}').contains(&c);
            if risky {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn shown_path(p: &Path) -> String {
    shown(&p.to_string_lossy())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use ctscope::report::{
        ChainLengths, ChainStats, ClashOutcomes, Cost, Drops, EarlyDrop, Mode, ProgramCost, Report,
        SelfCheck, Settings,
    };
    use ctscope_lab::{AgentResult, NetnsTruth, StatDelta, Truth};

    /// What varies between the fixture runs of chain-overflow on 6.1.
    #[derive(Clone)]
    struct Fx {
        kernel: &'static str,
        chain_max: u32,
        max_rss_kib: u64,
        chain_too_long: u64,
        nulls_mismatch: u64,
        /// Total bpf_stats time of the programs.
        bpf_ns: u64,
        errors: Vec<String>,
        accel: &'static str,
    }

    impl Default for Fx {
        fn default() -> Self {
            Fx {
                kernel: "6.1",
                chain_max: 58,
                max_rss_kib: 20_000,
                chain_too_long: 10,
                nulls_mismatch: 0,
                bpf_ns: 19_858 * 12_000,
                errors: Vec::new(),
                accel: "tcg",
            }
        }
    }

    const INSERTS: u64 = 19_858;

    impl Fx {
        /// ctscope's report, through its own types.
        fn report(&self) -> Report {
            let mut counts = vec![0u64; self.chain_max as usize + 1];
            counts[1] = 10_000;
            counts[20] = INSERTS - 10_000 - 8;
            counts[self.chain_max as usize] += 8;
            let drops = Drops {
                table_full: Some(0),
                chain_too_long: Some(self.chain_too_long),
                clash: Some(0),
                other: Some(0),
                alloc_failed: Some(0),
            };
            Report {
                ctscope_version: "0.1.0".into(),
                mode: Mode::Kprobe,
                kernel_release: "6.1.0-50-cloud-amd64".into(),
                netns_inode: Some(4026531840),
                duration_s: 30.0,
                inserts: Some(INSERTS),
                chain_length: Some(ChainLengths {
                    orig: ChainStats::from_counts(&counts),
                    reply: ChainStats::from_counts(&counts),
                }),
                drops,
                self_check: Some(SelfCheck {
                    walks: 2 * INSERTS,
                    nulls_mismatch: self.nulls_mismatch,
                    ..SelfCheck::default()
                }),
                settings: Settings {
                    buckets: Some(1024),
                    max: Some(65_536),
                    ..Settings::default()
                },
                kernel_stats: BTreeMap::from([("chaintoolong".to_owned(), self.chain_too_long)]),
                probes: None,
                netns: Vec::new(),
                containers: Vec::new(),
                lifetimes: None,
                lifetimes_untracked: None,
                attribution: None,
                early_drop: EarlyDrop::default(),
                clash: ClashOutcomes::default(),
                dying_at_confirm: None,
                lookups: None,
                cost: Cost {
                    programs: Some(vec![
                        ProgramCost {
                            name: "hash_insert".into(),
                            run_cnt: INSERTS,
                            run_time_ns: self.bpf_ns / 2,
                            ns_per_run: 0.0,
                        },
                        ProgramCost {
                            name: "hash_insert_ret".into(),
                            run_cnt: INSERTS,
                            run_time_ns: self.bpf_ns - self.bpf_ns / 2,
                            ns_per_run: 0.0,
                        },
                    ]),
                    cpu_seconds: 0.5,
                    cpu_percent: 2.0,
                    max_rss_kib: self.max_rss_kib,
                    rss_kib: self.max_rss_kib / 2,
                },
                occupancy: None,
                extensions: None,
                expiries: None,
                notices: Vec::new(),
                interrupted: None,
            }
        }

        /// The lab result: the agent's result through ctscope-lab's types, wrapped with the
        /// keys vm.rs adds.
        fn result(&self) -> Value {
            let stat_delta = StatDelta {
                insert_failed: self.chain_too_long,
                drop: self.chain_too_long,
                chaintoolong: self.chain_too_long,
                ..StatDelta::default()
            };
            let agent = AgentResult {
                kernel_release: "6.1.0-50-cloud-amd64".into(),
                scenario: "chain-overflow".into(),
                doctor: None,
                ctscope: Some(serde_json::to_value(self.report()).expect("report")),
                ctscope_exit: Some(0),
                ctscope_stop_s: Some(0.5),
                ctscope_stderr_tail: String::new(),
                truth: Some(Truth {
                    flows: 20_000,
                    inserts: INSERTS,
                    count_after: INSERTS,
                    stat_delta,
                    per_netns: vec![NetnsTruth {
                        name: "host".into(),
                        inode: 4026531840,
                        inserts: INSERTS,
                        count_after: INSERTS,
                        stat_delta,
                        ..NetnsTruth::default()
                    }],
                    ..Truth::default()
                }),
                clients: Vec::new(),
                bench: None,
                tuning: None,
                errors: self.errors.clone(),
            };
            let mut wrapped = serde_json::Map::new();
            wrapped.insert("kernel".into(), json!(self.kernel));
            wrapped.insert(
                "kernel_package".into(),
                json!("linux-image-6.1.0-50-cloud-amd64-unsigned"),
            );
            wrapped.insert("kernel_package_version".into(), json!("6.1.176-1"));
            // A kprobe-mode report (the config's verdict, as xtask vm wraps it).
            wrapped.insert("kernel_fentry".into(), json!(false));
            wrapped.insert("accel".into(), json!(self.accel));
            wrapped.insert("wall_s".into(), json!(41.5));
            let Value::Object(agent) = serde_json::to_value(agent).expect("agent result") else {
                panic!("the agent result is an object");
            };
            wrapped.extend(agent);
            Value::Object(wrapped)
        }
    }

    /// A fresh directory under the target directory.
    fn scratch(name: &str) -> PathBuf {
        let dir = paths::target_dir()
            .join("test-compare")
            .join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    fn write(dir: &Path, name: &str, v: &Value) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, serde_json::to_string_pretty(v).expect("json")).expect("write");
        path
    }

    /// `cargo xtask compare ARGS...`'s exit code, through clap and [`run`].
    fn exit_code(args: &[&str]) -> i32 {
        exit_and_output(args).0
    }

    fn exit_and_output(args: &[&str]) -> (i32, String) {
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let cli = Cli::try_parse_from(std::iter::once("compare").chain(args.iter().copied()))
            .expect("valid arguments");
        let mut out = Vec::new();
        let code = run(&cli.args, &mut out);
        (code, String::from_utf8(out).expect("UTF-8 output"))
    }

    fn scenarios() -> PathBuf {
        paths::workspace_root().join("scenarios")
    }

    fn pair(base: &Fx, new: &Fx, name: &str) -> (PathBuf, PathBuf, Comparison) {
        let dir = scratch(name);
        let b = write(&dir, "base.json", &base.result());
        let n = write(&dir, "new.json", &new.result());
        let c = compare(&b, &n, &scenarios(), Thresholds::default(), false).expect("compared");
        (b, n, c)
    }

    fn row<'a>(c: &'a Comparison, name: &str) -> &'a Row {
        c.pairs[0]
            .rows
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no row {name}"))
    }

    #[test]
    fn the_fixture_is_a_valid_report_and_lab_result() {
        let v = Fx::default().result();
        let agent: AgentResult = serde_json::from_value(v.clone()).expect("agent result");
        let report: Report =
            serde_json::from_value(agent.ctscope.expect("report")).expect("report");
        assert_eq!(report.chain_length.expect("chains").orig.max, 58);
        assert_eq!(
            classify(&v),
            Ok((Kind::Lab, "6.1".into(), "chain-overflow".into()))
        );
        // The checks run on it: the ones compare's tests rely on pass.
        let scenario = ctscope_lab::Scenario::load(&scenarios().join("chain-overflow.toml"))
            .expect("scenario");
        let checks = ctscope_lab::check(&v, &scenario);
        for name in ["agent-errors", "ctscope-report", "mode"] {
            assert!(
                checks.iter().any(|c| c.name == name && c.passed),
                "{name}: {checks:?}"
            );
        }
    }

    #[test]
    fn identical_runs_exit_0() {
        let (b, n, c) = pair(&Fx::default(), &Fx::default(), "identical");
        assert_eq!(c.regressions(), 0, "{}", c.render());
        assert!(c.pairs[0].rows.iter().all(|r| delta(r) == Some(0.0)));
        let checks = c.pairs[0].checks.as_ref().expect("checks compared");
        assert!(checks.regressed.is_empty());
        assert_eq!(checks.base_failed, checks.new_failed);
        let (b, n) = (b.to_string_lossy(), n.to_string_lossy());
        let (code, text) = exit_and_output(&[&b, &n]);
        assert_eq!(code, 0);
        assert!(
            text.contains("compare: no regression in 1 compared runs"),
            "{text}"
        );
        let (code, text) = exit_and_output(&["--json", &b, &n]);
        assert_eq!(code, 0);
        let v: Value = serde_json::from_str(&text).expect("--json prints JSON");
        assert_eq!(v["regressed"], json!(false));
        assert_eq!(v["pairs"][0]["run"], "6.1 chain-overflow");
    }

    #[test]
    fn injected_regressions_exit_1() {
        let base = Fx::default();
        let new = Fx {
            chain_max: 68,
            max_rss_kib: 30_000,
            errors: vec!["nft rule failed".into()],
            ..base.clone()
        };
        let (b, n, c) = pair(&base, &new, "regressed");
        assert_eq!(row(&c, "chain max").base, Some(58.0));
        assert_eq!(row(&c, "chain max").new, Some(68.0));
        assert_eq!(row(&c, "chain max").regression.as_deref(), Some("+10 > 3"));
        assert_eq!(
            row(&c, "RSS peak KiB").regression.as_deref(),
            Some("+50.0% > 15%")
        );
        assert_eq!(row(&c, "chain p99").regression, None);
        let checks = c.pairs[0].checks.as_ref().expect("checks compared");
        assert_eq!(
            checks.regressed,
            vec![(
                "agent-errors".to_owned(),
                "nft rule failed".to_owned(),
                "passed in base"
            )]
        );
        assert_eq!(c.regressions(), 3);
        let text = c.render();
        assert!(text.contains("REGRESSED: +10 > 3"), "{text}");
        assert!(
            text.contains("REGRESSED check agent-errors (passed in base): nft rule failed"),
            "{text}"
        );
        let (b, n) = (b.to_string_lossy(), n.to_string_lossy());
        assert_eq!(exit_code(&[&b, &n]), 1);
        let json = c.to_json();
        assert_eq!(json["regressed"], json!(true));
        assert_eq!(
            json["pairs"][0]["checks"]["regressed"][0]["name"],
            "agent-errors"
        );
    }

    #[test]
    fn thresholds_come_from_the_command_line() {
        let base = Fx::default();
        let new = Fx {
            chain_max: 68,
            max_rss_kib: 30_000,
            ..base.clone()
        };
        let (b, n, _) = pair(&base, &new, "thresholds");
        let (b, n) = (b.to_string_lossy(), n.to_string_lossy());
        assert_eq!(exit_code(&[&b, &n]), 1);
        assert_eq!(exit_code(&["--max-chain-growth", "10", &b, &n]), 1);
        assert_eq!(
            exit_code(&[
                "--max-chain-growth",
                "10",
                "--max-rss-growth-pct",
                "50",
                &b,
                &n
            ]),
            0
        );
    }

    #[test]
    fn run_to_run_noise_is_no_regression() {
        // What two TCG runs of one scenario differ by: the hash seed (chains, chain-too-long
        // drops), the host's load (eBPF ns), the allocator (RSS).
        let base = Fx::default();
        let new = Fx {
            chain_max: 61,
            max_rss_kib: 22_000,
            chain_too_long: 18,
            bpf_ns: base.bpf_ns / 100 * 125,
            ..base.clone()
        };
        let (_, _, c) = pair(&base, &new, "noise");
        assert_eq!(c.regressions(), 0, "{}", c.render());
        assert_eq!(row(&c, "eBPF ns per insert").base, Some(12_000.0));
        assert_eq!(row(&c, "eBPF ns per insert").new, Some(15_000.0));
        // Beyond both drop thresholds (+40 > 10 and > 25% of 10): a regression.
        let more = Fx {
            chain_too_long: 50,
            ..base.clone()
        };
        let (_, _, c) = pair(&base, &more, "drops");
        assert_eq!(
            row(&c, "drops chain_too_long").regression.as_deref(),
            Some("+40 > 10 and > 25%")
        );
    }

    #[test]
    fn self_check_failures_count_from_zero_only() {
        let clean = Fx::default();
        let failing = Fx {
            nulls_mismatch: 5,
            ..clean.clone()
        };
        let (_, _, c) = pair(&clean, &failing, "self-check");
        assert_eq!(
            row(&c, "self-check nulls_mismatch").regression.as_deref(),
            Some("0 in base, 5 in new")
        );
        let worse = Fx {
            nulls_mismatch: 9,
            ..clean.clone()
        };
        let (_, _, c) = pair(&failing, &worse, "self-check-2");
        assert_eq!(row(&c, "self-check nulls_mismatch").regression, None);
    }

    #[test]
    fn ebpf_ns_across_accelerators_is_not_judged() {
        let base = Fx::default();
        let new = Fx {
            accel: "kvm",
            bpf_ns: base.bpf_ns * 3,
            ..base.clone()
        };
        let (_, _, c) = pair(&base, &new, "accel");
        assert_eq!(c.regressions(), 0, "{}", c.render());
        assert!(!row(&c, "eBPF ns per insert").judged);
        assert!(c.pairs[0].notes[0].contains("accelerators differ (tcg / kvm)"));
    }

    #[test]
    fn directories_match_by_kernel_and_scenario() {
        let (base, new) = (scratch("dir-base"), scratch("dir-new"));
        write(&base, "6.1-chain-overflow.json", &Fx::default().result());
        let k612 = Fx {
            kernel: "6.12",
            ..Fx::default()
        };
        write(&base, "6.12-chain-overflow.json", &k612.result());
        write(&new, "6.1-chain-overflow.json", &Fx::default().result());
        // The lab's summary is no result: skipped, and said so.
        write(&new, "summary.json", &json!({"runs": []}));
        let c = compare(&base, &new, &scenarios(), Thresholds::default(), false).expect("compared");
        assert_eq!(c.pairs.len(), 1);
        assert_eq!(c.base_only, vec!["6.12 chain-overflow".to_owned()]);
        assert!(c.new_only.is_empty());
        assert_eq!(c.skipped.len(), 1);
        let text = c.render();
        assert!(
            text.contains("only in base (not compared): 6.12 chain-overflow"),
            "{text}"
        );
        assert_eq!(
            exit_code(&[&base.to_string_lossy(), &new.to_string_lossy()]),
            0
        );
    }

    #[test]
    fn unmatched_directories_are_an_input_error() {
        let (base, new) = (scratch("unmatched-base"), scratch("unmatched-new"));
        write(&base, "6.1-chain-overflow.json", &Fx::default().result());
        let k612 = Fx {
            kernel: "6.12",
            ..Fx::default()
        };
        write(&new, "6.12-chain-overflow.json", &k612.result());
        let err = compare(&base, &new, &scenarios(), Thresholds::default(), false)
            .err()
            .expect("nothing matches");
        assert!(
            format!("{err:#}").contains("base has 6.1 chain-overflow, new has 6.12 chain-overflow"),
            "{err:#}"
        );
        let (b, n) = (base.to_string_lossy(), new.to_string_lossy());
        assert_eq!(exit_code(&[&b, &n]), 2);
        // A file against a directory, and a file that is no result: input errors too.
        let file = write(&base, "x.json", &json!({"runs": []}));
        assert_eq!(exit_code(&[&file.to_string_lossy(), &n]), 2);
        assert_eq!(
            exit_code(&[&file.to_string_lossy(), &file.to_string_lossy()]),
            2
        );
    }

    #[test]
    fn bench_results_compare_their_cost() {
        let real = paths::workspace_root().join("bench/results/6.1.json");
        let base = read_json(&real).expect("the committed bench result");
        let dir = scratch("bench");
        let mut fatter = base.clone();
        let rss = number_at(&base, "variants/default/max_rss_kib").expect("rss");
        fatter["variants"]["default"]["max_rss_kib"] = json!((rss * 1.5) as u64);
        let new = write(&dir, "6.1.json", &fatter);
        let c = compare(&real, &new, &scenarios(), Thresholds::default(), false).expect("compared");
        assert_eq!(c.pairs[0].label, "6.1 bench");
        assert!(c.pairs[0].checks.is_none());
        assert_eq!(
            row(&c, "default RSS peak KiB").regression.as_deref(),
            Some("+50.0% > 15%")
        );
        assert_eq!(c.regressions(), 1);
        assert_eq!(
            exit_code(&[&real.to_string_lossy(), &real.to_string_lossy()]),
            0
        );
        assert_eq!(
            exit_code(&[&real.to_string_lossy(), &new.to_string_lossy()]),
            1
        );
    }

    #[test]
    fn names_from_input_are_escaped() {
        assert_eq!(shown("6.1\u{1b}[2J\u{202e}x"), "6.1\\u{1b}[2J\\u{202e}x");
    }
}
