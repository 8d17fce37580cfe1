//! `ctscope observe`: attach (or fall back), print a line per interval, and
//! write the report when the duration ends or on SIGINT/SIGTERM/SIGHUP.
//!
//! Its parts: `occupancy` (every namespace's count, sampled), `events`
//! (ctnetlink NEW/DESTROY in procfs mode), `lifetimes` (the kernel's lifetime
//! histograms) and `attribution` (namespaces and containers).

pub(crate) mod attribution;
mod build;
mod cost;
mod engine;
pub mod events;
pub(crate) mod lifetimes;
pub(crate) mod occupancy;
mod source;
mod text;
pub(crate) mod timeline;

pub(crate) use engine::{Engine, Tick};
pub(crate) use source::Signals;
use text::{interval_line, summary};

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use thiserror::Error;

use crate::{
    host::kernel,
    probe::probes::{self, ProbeError},
    report::{Report, write_atomic},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RequestedMode {
    /// fentry where the kernel permits it, else kprobes, else procfs
    /// counters (with a notice saying why).
    Auto,
    /// kprobes or a clear error.
    Kprobe,
    /// fentry/fexit programs or a clear error.
    Fentry,
    /// procfs/sysctl counters only: no eBPF.
    Procfs,
}

pub struct Options {
    pub duration: Option<Duration>,
    pub interval: Duration,
    pub json: Option<PathBuf>,
    pub mode: RequestedMode,
    pub ready_file: Option<PathBuf>,
    pub quiet: bool,
    /// Test only: shifts the tuplehash offset so that the self-check must
    /// catch it (the VM lab's self-check-fault scenario).
    pub fault_offset_skew: u32,
    /// Probe every lookup (per packet): latency, hits, chain walked.
    pub lookups: bool,
    /// Turn the kernel's bpf_stats on for the run (`--cost`; `--lookups`
    /// implies it): `cost.programs`.
    pub cost: bool,
    /// When the attribution programs run (fentry mode).
    pub attribution: probes::Attribution,
}

#[derive(Debug, Error)]
pub enum ObserveError {
    #[error(
        "ctscope observe needs root: attaching eBPF probes needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN). Run it with sudo."
    )]
    NotRoot,
    #[error("--mode {mode} is not available here: {reason}")]
    ModeUnavailable { mode: &'static str, reason: String },
    #[error("conntrack is not there in this network namespace, nothing to observe: {why}")]
    NoConntrack { why: String },
    #[error("--json {path} cannot be written: {why}")]
    JsonPath { path: String, why: String },
    // The source is in the message, not a `#[source]`: `{e:#}` (main) would
    // print it twice ("...: No such file or directory (os error 2): No such
    // file or directory (os error 2)").
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("reading the probes' maps: {0}")]
    Probe(#[from] ProbeError),
    #[error("encoding the report: {0}")]
    Encode(serde_json::Error),
    #[error("writing {path}: {error}")]
    Write { path: String, error: std::io::Error },
}

/// Whether conntrack is there in the network namespace whose sysctls are in
/// `sysctl_dir` (`/proc/sys/net/netfilter`). `nf_conntrack_max` is registered
/// in every namespace as soon as nf_conntrack is loaded
/// (nf_conntrack_standalone.c, nf_conntrack_pernet_init ->
/// nf_conntrack_standalone_init_sysctl, v5.10..v6.18); without it no counter
/// ctscope reads exists, and a report of zeros would claim a quiet table.
pub fn conntrack_here(sysctl_dir: &Path) -> Result<(), String> {
    let max = sysctl_dir.join("nf_conntrack_max");
    match std::fs::read_to_string(&max) {
        Ok(t) if t.trim().parse::<u64>().is_ok() => Ok(()),
        Ok(t) => Err(format!(
            "{} does not hold a number ({:?})",
            max.display(),
            t.trim().chars().take(40).collect::<String>()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "{} does not exist: the nf_conntrack module is not loaded (Docker, iptables NAT or an nft `ct` rule load it; `ctscope doctor` says more)",
            max.display()
        )),
        Err(e) => Err(format!("{}: {e}", max.display())),
    }
}

/// Checks at the start of a run that the report can be written to `path` at
/// the end: its directory exists, is a directory and takes a new file (a
/// probe file is created exclusively there, without following links, and
/// removed), and `path` is not a directory. A bad path found only at the end
/// lost the whole run.
pub fn check_output_path(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    if path.file_name().is_none() {
        return Err("it names no file".into());
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(format!("{} is not a directory", dir.display())),
        Err(e) => return Err(format!("its directory {}: {e}", dir.display())),
    }
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
        return Err("it is a directory".into());
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let probe = dir.join(format!(".ctscope-check.{}.{nanos}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&probe)
        .map_err(|e| format!("no new file can be created in {}: {e}", dir.display()))?;
    std::fs::remove_file(&probe)
        .map_err(|e| format!("removing the probe file {}: {e}", probe.display()))?;
    Ok(())
}

/// The report and whether its numbers passed the run-time self-check.
pub struct Outcome {
    pub report: Report,
    pub self_check_failed: bool,
    /// `--mode kprobe` stopped before its probes attached.
    pub kprobe_not_attached: bool,
}

pub async fn run(opts: Options) -> Result<Outcome, ObserveError> {
    if !kernel::is_root() {
        return Err(ObserveError::NotRoot);
    }
    // Handlers first: a SIGINT that arrives right after the ready file exists
    // must end the run with a report, not kill the process.
    let mut signals = Signals::new()?;
    if let Some(path) = &opts.json {
        check_output_path(path).map_err(|why| ObserveError::JsonPath {
            path: path.display().to_string(),
            why,
        })?;
    }
    let mut engine = Engine::open(&opts, &mut signals, true).await?;
    announce(&opts, &engine)?;
    if !engine.stopped_early() {
        watch(&opts, &mut engine, &mut signals).await;
    }
    let interrupted = engine.interrupted();
    // The probes are detached when `finish` returns: the run is over.
    let report = engine.finish()?;
    // Exit code 5: walks that could not be proven (procfs mode has none).
    let self_check_failed = report.self_check.as_ref().is_some_and(|c| c.failures() > 0);

    if !opts.quiet {
        let _ = write!(std::io::stderr(), "{}", summary(&report));
    }
    if let Some(path) = &opts.json {
        let text = serde_json::to_string_pretty(&report).map_err(ObserveError::Encode)?;
        write_atomic(path, &text).map_err(|error| ObserveError::Write {
            path: path.display().to_string(),
            error,
        })?;
    }
    Ok(Outcome {
        // A forced kprobe mode that never attached is unavailable (exit 4),
        // report written.
        kprobe_not_attached: interrupted
            && matches!(opts.mode, RequestedMode::Kprobe | RequestedMode::Fentry),
        report,
        self_check_failed,
    })
}

/// The summary observe prints at the end of a run, for a report read back.
pub fn summary_text(report: &Report) -> String {
    summary(report)
}

/// Says what runs (unless quiet), and creates the ready file: ready means
/// observing, which an interrupted run never was.
fn announce(opts: &Options, engine: &Engine) -> Result<(), ObserveError> {
    let mode = engine.mode();
    if !opts.quiet {
        let what = match engine.attached() {
            Some(a) => format!("{} probes attached: {}", a.len(), a.join(", ")),
            None => "reading procfs counters".to_string(),
        };
        eprintln!(
            "ctscope: observing conntrack on {} in {mode} mode ({what}); Ctrl-C ends the run",
            engine.release()
        );
    }
    if let Some(ready) = opts.ready_file.as_ref().filter(|_| !engine.interrupted()) {
        crate::safefile::write_atomic(ready, format!("{mode}\n").as_bytes(), 0o644).map_err(
            |error| ObserveError::Write {
                path: ready.display().to_string(),
                error,
            },
        )?;
    }
    Ok(())
}

/// Samples each interval until the duration ends or a signal comes, with a
/// live line per interval.
async fn watch(opts: &Options, engine: &mut Engine, signals: &mut Signals) {
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let started = engine.started();
    loop {
        let stop = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            tick = engine.next() => {
                if let Some(Tick { prev, now, table }) = tick && !opts.quiet {
                    // A closed stdout (`| head`) must not end the run without a report.
                    let _ = writeln!(std::io::stdout(), "{}", interval_line(started, &prev, &now, &table));
                }
            }
            _ = signals.recv() => break,
            () = stop => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conntrack_is_there_only_with_its_max_sysctl() {
        let d = std::env::temp_dir().join(format!("ctscope-ct-here-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("mkdir");
        let e = conntrack_here(&d).expect_err("absent");
        assert!(e.contains("does not exist"), "{e}");
        std::fs::write(d.join("nf_conntrack_max"), "junk\n").expect("write");
        assert!(conntrack_here(&d).is_err());
        std::fs::write(d.join("nf_conntrack_max"), "262144\n").expect("write");
        assert_eq!(conntrack_here(&d), Ok(()));
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn output_paths_are_checked_before_the_run() {
        let d = std::env::temp_dir().join(format!("ctscope-out-check-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("mkdir");
        assert_eq!(check_output_path(&d.join("r.json")), Ok(()));
        assert!(check_output_path(&d).is_err());
        assert!(check_output_path(&d.join("none/r.json")).is_err());
        std::fs::write(d.join("f"), "").expect("write");
        assert!(check_output_path(&d.join("f/r.json")).is_err());
        assert!(check_output_path(Path::new("/")).is_err());
        // The probe file is gone again.
        assert_eq!(std::fs::read_dir(&d).expect("ls").count(), 1);
        std::fs::remove_dir_all(&d).ok();
    }
}
