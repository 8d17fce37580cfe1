//! `cargo xtask compare BASE NEW`: what changed between two lab runs (or two bench results)
//! that matters, side by side, and whether NEW is worse than BASE beyond thresholds.
//!
//! Inputs are the wrapped lab results `cargo xtask vm`/`test` write (target/lab/results/
//! <kernel>-<scenario>.json) or the bench summaries `cargo xtask bench` writes
//! (bench/results/<kernel>.json), as two files or two directories of them. Lab results are
//! re-checked with this tree's checks and scenarios/, so "a check that passed in BASE fails in
//! NEW" is judged by the same rules on both sides.

mod comparison;
mod input;
mod render;
#[cfg(test)]
mod tests;
mod thresholds;

use crate::paths;
use comparison::compare;
use std::io::Write;
use std::path::PathBuf;
pub(crate) use thresholds::Thresholds;

pub(crate) const DEFAULT_RSS_GROWTH_PCT: f64 = 15.0;
pub(crate) const DEFAULT_NS_GROWTH_PCT: f64 = 30.0;
pub(crate) const DEFAULT_CHAIN_GROWTH: u64 = 3;
pub(crate) const DEFAULT_DROP_GROWTH: u64 = 10;
pub(crate) const DEFAULT_DROP_GROWTH_PCT: f64 = 25.0;

#[derive(clap::Args)]
pub(crate) struct Args {
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
pub(crate) const LONG_ABOUT: &str = "Compare two lab runs, or two bench results, and fail when NEW is worse.\n\n\
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

/// The exit code of `cargo xtask compare`: 0, 1 (regression) or 2 (usage or input error).
pub(crate) fn main(args: &Args) -> i32 {
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
