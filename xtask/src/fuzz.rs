//! `cargo xtask fuzz`: libFuzzer on ctscope's parsers of outside input, on stable rust.
//!
//! The fuzz crate (`fuzz/`, its own workspace and Cargo.lock) is built the way cargo-fuzz builds
//! one without a sanitizer: LLVM's SanitizerCoverage pass with inline 8-bit counters, a PC table
//! and compare tracing (what libFuzzer reads), `--cfg fuzzing`, debug assertions and overflow
//! checks on (an overflow is a finding), release optimisation. `--target <host>` keeps those
//! flags off build scripts and proc macros, as cargo-fuzz does. No nightly, no cargo-fuzz.
//!
//! Seed corpora come from this host at run time (`seeds`: vmlinux BTF and a split BTF cut from
//! it, a ctnetlink dump and events, /proc/net/stat/nf_conntrack, Docker Engine answers, a
//! procfs-mode observe report and its recommendation) plus the few hand-made seeds in
//! fuzz/seeds/. Everything lives under target/fuzz/: corpus/<target>/, artifacts/<target>/
//! (libFuzzer's crashing inputs), logs/<target>.log.

use anyhow::{Context, Result, bail};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{cmd, paths};

/// Every target, in the order they run; names of the binaries in fuzz/Cargo.toml.
pub(crate) const TARGETS: &[&str] = &[
    "btf_vmlinux",
    "btf_split",
    "ctnetlink",
    "conntrack_stat",
    "docker_response",
    "report_recommend",
    "recommendation_render",
];

/// What cargo-fuzz 0.12 passes without `-s` (its `-Zsanitizer` is the only nightly part, left
/// out here).
const RUSTFLAGS: &[&str] = &[
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    "--cfg",
    "fuzzing",
    "-Cdebug-assertions",
    "-Coverflow-checks",
];

/// libFuzzer's limits for one input: seconds before it counts as a hang, MiB of RSS (and of one
/// malloc: a length field that makes the parser allocate gigabytes is a finding).
const INPUT_TIMEOUT_S: u64 = 20;
const RSS_LIMIT_MB: u64 = 2048;
/// Past `--seconds`, how long a target may take to load its corpus and stop before it is killed.
const GRACE: Duration = Duration::from_mins(5);

pub(crate) struct Options {
    pub seconds: u64,
    pub target: Option<String>,
}

pub(crate) fn target_arg(s: &str) -> Result<String, String> {
    if TARGETS.contains(&s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "unknown fuzz target {s:?} (one of: {})",
            TARGETS.join(", ")
        ))
    }
}

fn fuzz_dir() -> PathBuf {
    paths::target_dir().join("fuzz")
}

fn host_triple() -> Result<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = cmd::output(Command::new(rustc).arg("-vV"))?;
    out.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .context("`rustc -vV` names no host")
}

/// libfuzzer-sys compiles libFuzzer (C++) with the system compiler.
fn ensure_cxx() -> Result<()> {
    if cmd::probe("c++", &["--version"]).is_some() || cmd::probe("g++", &["--version"]).is_some() {
        return Ok(());
    }
    eprintln!("fuzz: no C++ compiler (libfuzzer-sys needs one): apt-get install g++");
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "g++"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("installing g++ (apt-get needs root)")
}

/// A cargo command on the fuzz workspace, its own target dir, without the eBPF build.
fn fuzz_cargo(root: &Path) -> Command {
    let mut c = cmd::cargo();
    c.current_dir(root.join("fuzz"))
        .arg("build")
        .arg("--locked")
        .arg("--manifest-path")
        .arg(root.join("fuzz").join("Cargo.toml"))
        .arg("--target-dir")
        .arg(fuzz_dir())
        .env("AYA_BUILD_SKIP", "1")
        // Flags from the caller's environment would change the instrumented build (or, for
        // `seeds`, instrument what must not be).
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    c
}

fn build(root: &Path, host: &str, targets: &[&str]) -> Result<PathBuf> {
    ensure_cxx()?;
    // `seeds` uninstrumented: SanitizerCoverage's hooks exist only where libFuzzer is linked.
    cmd::run(fuzz_cargo(root).args(["--bin", "seeds"])).context("building the seeds binary")?;
    let mut c = fuzz_cargo(root);
    c.args(["--release", "--features", "fuzz", "--target", host])
        .env("RUSTFLAGS", RUSTFLAGS.join(" "));
    for t in targets {
        c.args(["--bin", t]);
    }
    cmd::run(&mut c).context("building the fuzz targets")?;
    Ok(fuzz_dir().join(host).join("release"))
}

/// Fills corpus/<target>/ with this host's data and the committed hand-made seeds.
fn seed(root: &Path, corpus: &Path) -> Result<()> {
    let seeds = fuzz_dir().join("debug").join("seeds");
    cmd::run(Command::new(&seeds).arg(corpus).stdin(Stdio::null()))
        .context("writing the seed corpora")?;
    let committed = root.join("fuzz").join("seeds");
    for t in TARGETS {
        let Ok(dir) = fs::read_dir(committed.join(t)) else {
            continue;
        };
        let out = corpus.join(t);
        fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        for e in dir.flatten() {
            let to = out.join(format!(
                "seed-committed-{}",
                e.file_name().to_string_lossy()
            ));
            // The corpus is ours: replace, never write through, what is there.
            let _ = fs::remove_file(&to);
            fs::copy(e.path(), &to)
                .with_context(|| format!("copying {} to {}", e.path().display(), to.display()))?;
        }
    }
    Ok(())
}

/// The largest input in a corpus, so that libFuzzer keeps whole seeds (its default cap is
/// 1 MiB; vmlinux BTF is several).
fn largest_input(dir: &Path) -> u64 {
    fs::read_dir(dir).map_or(0, |d| {
        d.flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .max()
            .unwrap_or(0)
    })
}

enum Outcome {
    Clean { runs: u64 },
    Crash { artifact: Option<String> },
}

fn fuzz_one(bin_dir: &Path, corpus: &Path, target: &str, seconds: u64) -> Result<Outcome> {
    let dir = corpus.join(target);
    let artifacts = fuzz_dir().join("artifacts").join(target);
    let logs = fuzz_dir().join("logs");
    for d in [&dir, &artifacts, &logs] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let log_path = logs.join(format!("{target}.log"));
    let _ = fs::remove_file(&log_path);
    let log = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let max_len = largest_input(&dir).max(4096);
    let mut child = Command::new(bin_dir.join(target))
        .arg(&dir)
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(format!("-max_len={max_len}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_S}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg("-print_final_stats=1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("log file")?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting fuzz target {target}"))?;
    let deadline = Instant::now() + Duration::from_secs(seconds) + GRACE;
    let status = loop {
        if let Some(s) = child.try_wait().context("waiting for the fuzz target")? {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = fs::read_to_string(&log_path).unwrap_or_default();
    let runs = text.lines().rev().find_map(|l| {
        l.strip_prefix("Done ")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    });
    let artifact = text.lines().find_map(|l| {
        l.split_once("Test unit written to ")
            .map(|(_, p)| p.trim().to_owned())
    });
    match (status, runs) {
        (Some(s), Some(runs)) if s.success() => Ok(Outcome::Clean { runs }),
        (status, _) => {
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("--- {target}: last lines of {} ---", log_path.display());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
            if status.is_none() {
                eprintln!("{target}: killed, still running {GRACE:?} after its time");
            }
            Ok(Outcome::Crash { artifact })
        }
    }
}

pub(crate) fn run(opts: &Options) -> Result<()> {
    let root = paths::workspace_root();
    let targets: Vec<&str> = match &opts.target {
        Some(t) => TARGETS.iter().copied().filter(|x| x == t).collect(),
        None => TARGETS.to_vec(),
    };
    let host = host_triple()?;
    let bin_dir = build(&root, &host, &targets)?;
    let corpus = fuzz_dir().join("corpus");
    seed(&root, &corpus)?;
    let mut failed = Vec::new();
    for t in &targets {
        match fuzz_one(&bin_dir, &corpus, t, opts.seconds)? {
            Outcome::Clean { runs } => println!("{t}: {runs} runs, no crash"),
            Outcome::Crash { artifact } => {
                match &artifact {
                    Some(p) => println!("{t}: CRASH, input saved to {p}"),
                    None => println!("{t}: FAILED (no crashing input saved; see its log above)"),
                }
                failed.push(*t);
            }
        }
    }
    if !failed.is_empty() {
        bail!("fuzz targets failed: {}", failed.join(", "));
    }
    Ok(())
}
