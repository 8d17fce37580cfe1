//! `cargo xtask bench`: ctscope's overhead, measured in the VM lab.
//!
//! The agent runs bench/workload.toml in bench mode: the same connection workload, each round
//! twice without ctscope (an A/A pair), once with its default probes, once with `--cost`
//! (bpf_stats on) and once with `--lookups`, in a rotated order. This module turns the runs
//! into bench/results/<kernel>.json (its `summary` first: the guest's busy time per
//! connection against the round's baselines, the A/A spread, bpf_stats per program; then the
//! rates, ctscope's CPU and memory) and regenerates the tables of BENCHMARKS.md from every
//! result file there.
//!
//! Under qemu TCG every instruction is emulated: absolute rates and nanoseconds are not those of
//! real hardware. Under the bench's guest clock (icount) guest time counts guest instructions,
//! so the busy time of a run is a deterministic measure of the work it did.

use crate::compile;
use crate::kernels;
use crate::paths;
use crate::setup;
use crate::vm::{self, ScenarioFile};
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

mod summary;
mod tables;

pub(crate) use summary::summarize;
pub(crate) use tables::{load_json_dir, regenerate_markdown, splice_between, table};

pub(crate) const WORKLOAD: &str = "bench/workload.toml";

pub(crate) struct Options {
    pub kernel: String,
    pub rounds: Option<u32>,
    pub timeout: Duration,
    pub no_build: bool,
}

/// What a measured VM run needs first: setup, the release binaries (built unless
/// `no_build`) and the kernel.
pub(crate) fn prepare(
    no_build: bool,
    kernel: &str,
) -> Result<(compile::Binaries, kernels::Kernel)> {
    setup::run()?;
    let bins = if no_build {
        compile::binaries(true)
    } else {
        compile::run(true)?
    };
    Ok((bins, kernels::prepare(kernel)?))
}

pub(crate) fn run(opts: &Options) -> Result<()> {
    let (bins, kernel) = prepare(opts.no_build, &opts.kernel)?;
    let root = paths::workspace_root();
    let mut scenario = ScenarioFile::load(&root.join(WORKLOAD))?;
    let Some(bench) = scenario.scenario.bench.as_mut() else {
        bail!("{WORKLOAD} has no [bench] section");
    };
    if let Some(r) = opts.rounds {
        bench.rounds = r;
    }
    let rounds = bench.rounds;
    // The VM gets the scenario file verbatim: write the one with the chosen rounds.
    let run_dir = paths::lab_dir()
        .join("run")
        .join(format!("{}-bench", kernel.label));
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create {}", run_dir.display()))?;
    let generated = run_dir.join("workload.toml");
    std::fs::write(&generated, scenario.scenario.to_toml()?)
        .with_context(|| format!("cannot write {}", generated.display()))?;
    scenario.path = generated;

    let out = paths::lab_dir()
        .join("results")
        .join(format!("{}-bench.json", kernel.label));
    let result = vm::run_scenario(&kernel, &bins, &scenario, &out, opts.timeout)?;
    // The spec as given repeats the run (the label of a path is no spec).
    let command = format!(
        "cargo xtask bench --kernel {} --rounds {rounds}",
        kernels::shown(std::path::Path::new(&kernel.spec))
    );
    let summary = summarize(
        &result,
        &scenario.scenario,
        &command,
        &today(),
        commit().as_deref(),
    )?;
    let file = results_dir().join(format!("{}.json", kernel.label));
    std::fs::create_dir_all(results_dir())?;
    std::fs::write(&file, serde_json::to_string_pretty(&summary)? + "\n")
        .with_context(|| format!("cannot write {}", file.display()))?;
    println!("bench: {}", file.display());
    print!("{}", table(std::slice::from_ref(&summary)));
    regenerate_markdown()?;
    if let Some(errors) = summary.get("errors").and_then(Value::as_array)
        && !errors.is_empty()
    {
        bail!(
            "the bench run had errors (see {}): {}",
            file.display(),
            errors
                .iter()
                .map(|e| e.as_str().unwrap_or("?"))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(())
}

fn results_dir() -> PathBuf {
    paths::workspace_root().join("bench").join("results")
}

/// Today's date (UTC), YYYY-MM-DD, from the system clock.
pub(crate) fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    civil_date(secs / 86_400)
}

/// Days since 1970-01-01 to a calendar date (Howard Hinnant's civil_from_days).
fn civil_date(days: u64) -> String {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The commit ctscope was built from, `-dirty` when the tree had changes; None outside git.
pub(crate) fn commit() -> Option<String> {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(paths::workspace_root())
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let head = git(&["rev-parse", "--short=12", "HEAD"])?;
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{head}-dirty") } else { head })
}

#[cfg(test)]
mod tests;
