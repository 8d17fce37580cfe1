//! `cargo xtask test`: formatting, clippy, host tests, then the VM lab matrix with its checks.

use crate::cmd;
use crate::compile;
use crate::kernels::{self, Kernel};
use crate::paths;
use crate::setup;
use crate::vm::{self, ScenarioFile};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub(crate) struct Options {
    pub kernels: Option<Vec<String>>,
    pub scenarios: Option<Vec<String>>,
    pub no_lab: bool,
    pub lab_only: bool,
    pub no_setup: bool,
    pub no_build: bool,
    pub timeout: Duration,
}

/// Kernels every scenario runs on.
const FULL_KERNELS: &[&str] = &["6.1", "6.12", "7.3"];
/// The kernel the default run soaks `ctscope serve` on, for [`crate::soak::SHORT_MINUTES`]
/// (`cargo xtask soak` runs the whole soak on any kernel).
const SOAK_KERNEL: &str = "7.3";
/// Scenarios that also run on 5.10 (no module BTF, no chain limit, the old GC): the fallback
/// path, every attribution and life-and-death scenario (attribution, lifetimes, early drop) and the tuner's closed
/// loop (pre-5.15 defaults: max = 4 x buckets).
const OLD_KERNEL: (&str, &[&str]) = (
    "5.10",
    &[
        "chain-overflow",
        "uneven",
        "short-tcp",
        "long-udp",
        "early-drop",
        "tune-table-full",
        "tune-light",
        "serve",
    ],
);

pub(crate) fn run(opts: &Options) -> Result<()> {
    let started = Instant::now();
    if !opts.no_setup {
        setup::run()?;
    }
    let mut host_failures = Vec::new();
    if !opts.lab_only {
        let workspace = paths::workspace_root();
        for step in host_steps() {
            println!("\n== {}: {}", step.name, step.shown());
            let mut c = step.command();
            // The environment passes through (CTSCOPE_STRICT turns skips into failures).
            c.current_dir(&workspace)
                .env("PATH", paths::path_with_cargo_bin()?);
            if let Err(e) = cmd::run(&mut c) {
                eprintln!("== {} FAILED: {e:#}", step.name);
                host_failures.push(step.name);
            }
        }
    }

    let (passed, failed) = if opts.no_lab {
        println!("\nlab: skipped (--no-lab)");
        (0, 0)
    } else {
        lab(opts)?
    };

    println!("\ntotal time {:.0} s", started.elapsed().as_secs_f64());
    if !host_failures.is_empty() {
        println!("host steps failed: {}", host_failures.join(", "));
    }
    println!("lab: {passed} passed, {failed} failed");
    println!("{passed} passed, {failed} failed");
    if failed > 0 || !host_failures.is_empty() {
        bail!("tests failed");
    }
    Ok(())
}

/// One cargo invocation of the host steps.
struct HostStep {
    name: &'static str,
    /// `Some("+nightly")` runs rustup's `cargo` proxy with that toolchain instead of the cargo
    /// running xtask (which is a toolchain's own binary and takes no `+toolchain`).
    toolchain: Option<&'static str>,
    args: &'static [&'static str],
}

impl HostStep {
    fn command(&self) -> Command {
        if let Some(t) = self.toolchain {
            let mut c = Command::new("cargo");
            c.arg(t).args(self.args);
            c
        } else {
            let mut c = cmd::cargo();
            c.args(self.args);
            c
        }
    }

    fn shown(&self) -> String {
        let mut parts = vec!["cargo"];
        parts.extend(self.toolchain);
        parts.extend(self.args);
        parts.join(" ")
    }
}

/// fmt, clippy, clippy of the eBPF crate, host tests.
fn host_steps() -> [HostStep; 4] {
    [
        HostStep {
            name: "fmt",
            toolchain: None,
            args: &["fmt", "--all", "--", "--check"],
        },
        HostStep {
            name: "clippy",
            toolchain: None,
            args: &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        },
        // On the host the eBPF crate compiles to an empty main, so the workspace clippy never
        // sees its programs: lint them for their real target, with nightly as aya-build builds
        // them. From the workspace root, like every other step (the crate is a member).
        HostStep {
            name: "clippy (eBPF)",
            toolchain: Some("+nightly"),
            args: &[
                "clippy",
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "-p",
                "conntrack-ebpf",
                "--",
                "-D",
                "warnings",
            ],
        },
        HostStep {
            name: "host tests",
            toolchain: None,
            args: &["test", "--workspace"],
        },
    ]
}

/// Every scenarios/*.toml, sorted by file name.
fn scenario_files() -> Result<Vec<ScenarioFile>> {
    let dir = paths::workspace_root().join("scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files.iter().map(|p| ScenarioFile::load(p)).collect()
}

/// (kernel label, scenario) pairs to run, in order.
fn matrix(opts: &Options, all: &[ScenarioFile]) -> Result<Vec<(String, ScenarioFile)>> {
    if let Some(wanted) = &opts.scenarios {
        for w in wanted {
            if !all.iter().any(|s| s.name() == w) {
                let names: Vec<&str> = all.iter().map(super::vm::ScenarioFile::name).collect();
                bail!("no scenario `{w}` (scenarios/ has {})", names.join(", "));
            }
        }
    }
    if let Some(k) = &opts.kernels {
        kernels::check_specs(k)?;
    }
    let scenario_wanted = |s: &ScenarioFile| {
        opts.scenarios
            .as_ref()
            .is_none_or(|w| w.iter().any(|n| n == s.name()))
    };
    let mut pairs = Vec::new();
    // The soak runs by default once, on one kernel, and elsewhere only when named.
    let is_soak = |s: &ScenarioFile| s.scenario.soak.is_some();
    if let (Some(ks), Some(_)) = (&opts.kernels, &opts.scenarios) {
        // Both named explicitly: the user asked for exactly this cross product.
        for k in ks {
            for s in all.iter().filter(|s| scenario_wanted(s)) {
                pairs.push((k.clone(), s.clone()));
            }
        }
    } else if let Some(ks) = &opts.kernels {
        // Kernels named, scenarios not: each kernel gets its scenario set, in the order given;
        // a kernel outside the default matrix (a series, a package, a file) gets every one.
        let (old, old_scenarios) = OLD_KERNEL;
        for k in ks {
            for s in all.iter().filter(|s| {
                scenario_wanted(s) && !is_soak(s) && (k != old || old_scenarios.contains(&s.name()))
            }) {
                pairs.push((k.clone(), s.clone()));
            }
        }
    } else {
        for k in FULL_KERNELS {
            for s in all.iter().filter(|s| scenario_wanted(s) && !is_soak(s)) {
                pairs.push(((*k).to_owned(), s.clone()));
            }
        }
        let (old, old_scenarios) = OLD_KERNEL;
        for s in all
            .iter()
            .filter(|s| scenario_wanted(s) && old_scenarios.contains(&s.name()))
        {
            pairs.push((old.to_owned(), s.clone()));
        }
        for s in all.iter().filter(|s| scenario_wanted(s) && is_soak(s)) {
            pairs.push((SOAK_KERNEL.to_owned(), s.clone()));
        }
    }
    if pairs.is_empty() {
        bail!("the selected kernels and scenarios leave nothing to run");
    }
    Ok(pairs)
}

struct Row {
    kernel: String,
    scenario: String,
    wall_s: f64,
    /// The wrapped result, when the run produced one.
    result: Option<Value>,
    checks: Vec<ctscope_lab::Check>,
}

impl Row {
    /// A figure from ctscope's report, for the table.
    fn figure(&self, path: &str) -> String {
        self.result
            .as_ref()
            .and_then(|r| r.get("ctscope"))
            .and_then(|c| ctscope_lab::json_at(c, path))
            .and_then(Value::as_u64)
            .map_or_else(|| "-".to_owned(), |n| n.to_string())
    }

    fn drops(&self) -> String {
        let parts: Option<Vec<u64>> = ["table_full", "chain_too_long", "clash", "other"]
            .iter()
            .map(|k| self.figure(&format!("drops/{k}")).parse().ok())
            .collect();
        parts.map_or_else(|| "-".to_owned(), |p| p.iter().sum::<u64>().to_string())
    }
}

fn lab(opts: &Options) -> Result<(usize, usize)> {
    let mut all = scenario_files()?;
    all.push(crate::soak::short()?);
    let pairs = matrix(opts, &all)?;
    println!("\n== lab: {} runs", pairs.len());
    for (k, s) in &pairs {
        println!("   {:5} {}", kernels::shown(Path::new(k)), s.name());
    }

    let mut rows = Vec::new();
    // A build failure fails every run rather than aborting: the table still tells the story.
    let built = if opts.no_build {
        Ok(compile::binaries(true))
    } else {
        compile::run(true)
    };
    let bins = match built {
        Ok(b) => Some(b),
        Err(e) => {
            eprintln!("build FAILED: {e:#}");
            None
        }
    };
    let mut prepared: BTreeMap<String, Result<Kernel, String>> = BTreeMap::new();
    let lab_started = Instant::now();
    for (i, (spec, scenario)) in pairs.iter().enumerate() {
        let kernel = prepared
            .entry(spec.clone())
            .or_insert_with(|| kernels::prepare(spec).map_err(|e| format!("{e:#}")))
            .clone();
        // Results are filed under the kernel's label (safe for file names), not the spec.
        let label = kernel
            .as_ref()
            .map_or_else(|_| kernels::shown(Path::new(spec)), |k| k.label.clone());
        println!(
            "\n== lab [{}/{}, {:.0} s so far]: {} on {label}",
            i + 1,
            pairs.len(),
            lab_started.elapsed().as_secs_f64(),
            scenario.name()
        );
        let started = Instant::now();
        let outcome = match (&bins, kernel) {
            (None, _) => Err("the build failed".to_owned()),
            (_, Err(e)) => Err(format!("kernel {label} unavailable: {e}")),
            (Some(bins), Ok(kernel)) => {
                let out = vm::default_out(&kernel, scenario);
                let timeout = crate::soak::vm_timeout(&scenario.scenario, opts.timeout);
                vm::run_scenario(&kernel, bins, scenario, &out, timeout)
                    .map_err(|e| format!("{e:#}"))
            }
        };
        let wall = started.elapsed().as_secs_f64();
        let (result, checks) = match outcome {
            Ok(result) => {
                let checks = ctscope_lab::check(&result, &scenario.scenario);
                (Some(result), checks)
            }
            Err(e) => {
                eprintln!("lab: run failed: {e}");
                let check = ctscope_lab::Check {
                    name: "run".to_owned(),
                    passed: false,
                    detail: e.lines().next().unwrap_or_default().to_owned(),
                };
                (None, vec![check])
            }
        };
        for c in &checks {
            println!("   {c}");
        }
        rows.push(Row {
            kernel: label,
            scenario: scenario.name().to_owned(),
            wall_s: wall,
            result,
            checks,
        });
    }
    write_summary(&rows)?;
    for (key, what) in [
        ("vm_crashes", "whose emulated kernel died"),
        ("vm_hangs", "that gave no result before the timeout"),
    ] {
        let repeated: Vec<String> = rows
            .iter()
            .filter_map(|r| {
                let n = r.result.as_ref()?.get(key)?.as_u64()?;
                (n > 0).then(|| format!("{} {} ({n}x)", r.kernel, r.scenario))
            })
            .collect();
        if !repeated.is_empty() {
            println!(
                "\nlab: runs {what} and were run again: {}",
                repeated.join(", ")
            );
        }
    }
    Ok(print_table(&rows))
}

/// target/lab/results/summary.json: every run's checks and timing, for CI artifacts.
fn write_summary(rows: &[Row]) -> Result<()> {
    let runs: Vec<Value> = rows
        .iter()
        .map(|r| {
            let field = |k: &str| r.result.as_ref().and_then(|v| v.get(k));
            json!({
                "kernel": r.kernel,
                "scenario": r.scenario,
                "wall_s": (r.wall_s * 10.0).round() / 10.0,
                "kernel_package_version": field("kernel_package_version"),
                "kernel_spec": field("kernel_spec"),
                "kernel_spec_kind": field("kernel_spec_kind"),
                "kernel_source": field("kernel_source"),
                "kernel_image_release": field("kernel_image_release"),
                "kernel_image_sha256": field("kernel_image_sha256"),
                "accel": field("accel"),
                "vm_crashes": r.result.as_ref().and_then(|v| v.get("vm_crashes")),
                "vm_hangs": r.result.as_ref().and_then(|v| v.get("vm_hangs")),
                "checks": r.checks,
            })
        })
        .collect();
    let path = paths::lab_dir().join("results").join("summary.json");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&json!({ "runs": runs }))? + "\n",
    )
    .with_context(|| format!("cannot write {}", path.display()))
}

/// Prints one line per run and every failed check; returns (passed, failed) check counts.
fn print_table(rows: &[Row]) -> (usize, usize) {
    println!(
        "\n{:<6} {:<16} {:>6} {:>6} {:>7} {:>8} {:>6} {:>9}",
        "kernel", "scenario", "passed", "failed", "wall_s", "inserts", "drops", "chain_max"
    );
    let (mut passed, mut failed) = (0, 0);
    for r in rows {
        let p = r.checks.iter().filter(|c| c.passed).count();
        let f = r.checks.len() - p;
        passed += p;
        failed += f;
        println!(
            "{:<6} {:<16} {:>6} {:>6} {:>7.1} {:>8} {:>6} {:>9}",
            r.kernel,
            r.scenario,
            p,
            f,
            r.wall_s,
            r.figure("inserts"),
            r.drops(),
            r.figure("chain_length/orig/max"),
        );
    }
    let failures: Vec<String> =
        rows.iter()
            .flat_map(|r| {
                r.checks.iter().filter(|c| !c.passed).map(move |c| {
                    format!("  {} {}: {}: {}", r.kernel, r.scenario, c.name, c.detail)
                })
            })
            .collect();
    if !failures.is_empty() {
        println!("\nfailed checks:");
        for f in failures {
            println!("{f}");
        }
    }
    (passed, failed)
}
