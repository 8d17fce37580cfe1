//! `ctscope observe`: attach (or fall back), print a line per interval, and
//! write the report when the duration ends or on SIGINT/SIGTERM/SIGHUP.
//!
//! Its parts: `occupancy` (every namespace's count, sampled), `events`
//! (ctnetlink NEW/DESTROY in procfs mode), `lifetimes` (the kernel's lifetime
//! histograms) and `attribution` (namespaces and containers).

pub(crate) mod attribution;
mod build;
mod cost;
pub mod events;
pub(crate) mod lifetimes;
pub(crate) mod occupancy;
mod source;
mod text;

use build::{Ended, ProbeEnd, life_delta, origin_delta, probes_report, procfs_report};
use cost::cpu_seconds;
use source::{Selected, Signals, Source};
use text::{interval_line, summary};

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use std::collections::BTreeMap;

use conntrack_common::{Counter, OriginKey, OriginStats};
use thiserror::Error;

use crate::{
    host::kernel,
    host::procfs::{self, StatTotals, TableSettings},
    observe::lifetimes::Lifetimes,
    probe::arming::{self, Action, Arming},
    probe::environment::Environment,
    probe::probes::{self, ProbeError, Probes, Snapshot},
    report::{Mode, Report, Settings, write_atomic},
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
    conntrack_here(Path::new(procfs::SYSCTL_DIR))
        .map_err(|why| ObserveError::NoConntrack { why })?;

    let env = Environment::gather();
    let mut notices = Vec::new();
    let Selected {
        source,
        plan,
        stopped_early,
        interrupted,
    } = source::select(&opts, &env, &mut signals, &mut notices).await?;
    if opts.fault_offset_skew != 0 {
        notices.push(format!(
            "FAULT INJECTION (test only): the tuplehash offset was shifted by {} bytes",
            opts.fault_offset_skew
        ));
    }
    let mode = match source {
        Source::Probes(_, mode) => mode,
        Source::Procfs if interrupted.is_some() => Mode::None,
        Source::Procfs => Mode::Procfs,
    };
    // Before the ready file: namespaces are snapshotted and, in procfs mode,
    // ctnetlink listeners subscribed, before any traffic the run should see.
    // (Interrupted: no listener, the run is over; the namespaces are still
    // listed, which the report's netns rows need.)
    let session =
        attribution::Session::start(matches!(source, Source::Procfs) && interrupted.is_none());
    source::plan_notices(&opts, plan.as_ref(), &mut notices);

    let start = Start::take(&source)?;
    let mut occupancy = occupancy::Sampler::new(opts.interval.as_secs_f64());
    occupancy.sample();
    // CPU time is counted over the observation only: loading BTF and the
    // programs is a one-off start-up cost, not what observing costs.
    let cpu0 = cpu_seconds();
    let started = Instant::now();
    announce(&opts, &source, mode, &env.release, interrupted.is_some())?;

    let mut source = source;
    if stopped_early.is_none() {
        watch(
            &opts,
            &mut source,
            &mut signals,
            &mut notices,
            &mut occupancy,
            started,
            &start,
        )
        .await;
    }

    let last = Sample::take(&source)?;
    occupancy.sample();
    let lifetimes = match (&source, &start.life) {
        (Source::Probes(p, _), Some(before)) => {
            Some(Lifetimes::from_rows(&life_delta(&p.life_rows()?, before)))
        }
        _ => None,
    };
    let origins = match &source {
        Source::Probes(p, _) => Some(origin_delta(p.origins(), &start.origins)),
        Source::Procfs => None,
    };
    let end = ended(
        &start,
        &last,
        &occupancy,
        &mut notices,
        mode,
        &env,
        started,
        cpu0,
    );
    let report = match (&source, &last.snap, &start.snap, &plan) {
        (Source::Probes(p, _), Some(a), Some(b), Some(plan)) => probes_report(
            ProbeEnd {
                p,
                plan,
                a,
                b,
                misses0: &start.misses,
                origins,
                lifetimes,
            },
            session,
            end,
            notices,
        ),
        _ => procfs_report(
            last.stat.as_ref(),
            start.stat.as_ref(),
            session,
            interrupted.as_ref(),
            end,
            notices,
        ),
    };
    // Detach before writing: the run is over.
    drop(source);
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
        kprobe_not_attached: interrupted.is_some()
            && matches!(opts.mode, RequestedMode::Kprobe | RequestedMode::Fentry),
        report,
        self_check_failed,
    })
}

/// The maps and counters when the observation begins: the run's figures are
/// deltas from here.
struct Start {
    settings: TableSettings,
    stat: Option<StatTotals>,
    snap: Option<Snapshot>,
    /// Counted by the kernel from each program's load: the run's share is a
    /// delta from here, like every other counter.
    misses: BTreeMap<String, u64>,
    origins: Vec<(OriginKey, OriginStats)>,
    /// Deaths are counted by the kernel since attach: the run's are a delta.
    life: Option<Vec<Vec<u64>>>,
}

impl Start {
    fn take(source: &Source) -> Result<Start, ObserveError> {
        let settings = TableSettings::read();
        let stat = StatTotals::read_current().ok();
        Ok(match source {
            Source::Probes(p, _) => Start {
                settings,
                stat,
                snap: Some(p.snapshot()?),
                misses: p.recursion_misses(),
                origins: p.origins(),
                life: Some(p.life_rows()?),
            },
            Source::Procfs => Start {
                settings,
                stat,
                snap: None,
                misses: BTreeMap::new(),
                origins: Vec::new(),
                life: None,
            },
        })
    }
}

/// Says what runs (unless quiet), and creates the ready file: ready means
/// observing, which an interrupted run never was.
fn announce(
    opts: &Options,
    source: &Source,
    mode: Mode,
    release: &str,
    interrupted: bool,
) -> Result<(), ObserveError> {
    if !opts.quiet {
        let what = match source {
            Source::Probes(p, _) => format!(
                "{} probes attached: {}",
                p.attached.len(),
                p.attached.join(", ")
            ),
            Source::Procfs => "reading procfs counters".to_string(),
        };
        eprintln!(
            "ctscope: observing conntrack on {release} in {mode} mode ({what}); Ctrl-C ends the run"
        );
    }
    // Ready means observing: an interrupted run never was.
    if let Some(ready) = opts.ready_file.as_ref().filter(|_| !interrupted) {
        crate::safefile::write_atomic(ready, format!("{mode}\n").as_bytes(), 0o644).map_err(
            |error| ObserveError::Write {
                path: ready.display().to_string(),
                error,
            },
        )?;
    }

    Ok(())
}

/// Samples each interval until the duration ends or a signal comes: the
/// live line, occupancy, and attribution armed on demand (fentry mode,
/// `--attribution auto`: alerts polled, pressure read each interval).
async fn watch(
    opts: &Options,
    source: &mut Source,
    signals: &mut Signals,
    notices: &mut Vec<String>,
    occupancy: &mut occupancy::Sampler,
    started: Instant,
    start: &Start,
) {
    let mut tick = tokio::time::interval(opts.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut prev = Sample {
        at: Instant::now(),
        snap: start.snap.clone(),
        stat: start.stat.clone(),
    };
    // Attribution on demand (fentry mode, `--attribution auto`): alerts
    // polled, pressure read each interval (arming.rs).
    let on_demand = matches!(source, Source::Probes(p, _) if p.arms_on_demand());
    let mut arming = Arming::new(arming::HOLD);
    let mut arm_failed = false;
    // Woken by the kernel when an alert comes while not armed: no polling.
    let mut ring = match source {
        Source::Probes(p, _) if on_demand => p.take_alert_ring().and_then(|r| {
            // SAFETY: the ring owns its map fd (aya's MapData) and moves into
            // the AsyncFd, which drops it: the fd stays open and the same for
            // the AsyncFd's whole life, and as_raw_fd always returns it.
            unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(r, tokio::io::Interest::READABLE)
            }
            .map_err(|e| log::warn!("waiting on the alert ring: {e}; arming once per interval"))
            .ok()
        }),
        _ => None,
    };
    if let Source::Probes(p, _) = source
        && on_demand
    {
        // The baseline of the alerts, and the table as it is at the start.
        let t = TableSettings::read();
        let pressure = arming::pressure(None, t.count, t.max);
        let action = arming.step(Instant::now(), p.alerts().ok(), pressure, p.armed());
        act(p, action, &mut arm_failed, notices);
    }
    loop {
        let stop = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick.tick() => {
                // A failed read skips one live line; the run and its report go on.
                let mut pressure = false;
                let mut unseen = false;
                match Sample::take(source) {
                    Ok(now) => {
                        let t = TableSettings::read();
                        if !opts.quiet {
                            // A closed stdout (`| head`) must not end the run without a report.
                            let _ = writeln!(std::io::stdout(), "{}", interval_line(started, &prev, &now, &t));
                        }
                        let delta = now.stat.as_ref().zip(prev.stat.as_ref()).map(|(a, b)| a.delta(b).columns);
                        pressure = arming::pressure(delta.as_ref(), t.count, t.max);
                        unseen = now
                            .snap
                            .as_ref()
                            .is_some_and(|s| s.counter(Counter::DeathsUnseen) > 0);
                        prev = now;
                    }
                    Err(e) => log::warn!("skipping one interval: {e}"),
                }
                occupancy.sample();
                if let Source::Probes(p, _) = source
                    && on_demand
                {
                    // Unseen deaths need nf_conntrack_free for good, not
                    // attribution (arming.rs).
                    if unseen {
                        p.keep_free();
                    }
                    let action = arming.step(Instant::now(), p.alerts().ok(), pressure, p.armed());
                    act(p, action, &mut arm_failed, notices);
                }
            }
            Some(guard) = alert_ready(ring.as_mut()), if !arm_failed => {
                if let Some(mut guard) = guard {
                    // Wake-ups only: what counts is ALERTS.
                    while guard.get_inner_mut().next().is_some() {}
                    guard.clear_ready();
                }
                if let Source::Probes(p, _) = source {
                    let action = arming.step(Instant::now(), p.alerts().ok(), false, p.armed());
                    act(p, action, &mut arm_failed, notices);
                }
            }
            _ = signals.recv() => break,
            () = stop => break,
        }
    }
}

/// What both reports share, read once the run has ended.
#[expect(clippy::too_many_arguments, reason = "the run's parts, each used once")]
fn ended(
    start: &Start,
    last: &Sample,
    occupancy: &occupancy::Sampler,
    notices: &mut Vec<String>,
    mode: Mode,
    env: &Environment,
    started: Instant,
    cpu0: f64,
) -> Ended {
    let duration_s = started.elapsed().as_secs_f64();
    let settings1 = TableSettings::read();
    let kernel_stats = match (&last.stat, &start.stat) {
        (Some(a), Some(b)) => a.delta(b).columns,
        _ => Default::default(),
    };
    let settings = Settings {
        buckets: settings1.buckets,
        max: settings1.max,
        count_start: start.settings.count,
        count_end: settings1.count,
        slab_object_size: procfs::slab_object_size(),
        slab_size: procfs::slab_size(),
        timeouts: procfs::timeouts(),
        ram_bytes: procfs::ram_bytes(),
        cpus: procfs::cpus(),
    };
    if occupancy.dropped() > 0 {
        notices.push(format!(
        "more than {} namespaces held entries during the run: {} samples of the emptiest were not kept in occupancy.per_netns (the peaks are kept)",
        occupancy::PER_NETNS_MAX,
        occupancy.dropped()
    ));
    }
    Ended {
        mode,
        release: env.release.clone(),
        duration_s,
        settings,
        kernel_stats,
        occupancy: occupancy.report(),
        cpu0,
    }
}

type AlertRing = tokio::io::unix::AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>;

/// Waits until the alert ring is readable (`Some(Some(guard))`); an error
/// waiting gives `Some(None)` once the ring is dropped from the wait. No
/// ring: never.
async fn alert_ready(
    ring: Option<&mut AlertRing>,
) -> Option<Option<tokio::io::unix::AsyncFdReadyMutGuard<'_, aya::maps::RingBuf<aya::maps::MapData>>>>
{
    match ring {
        Some(r) => match r.readable_mut().await {
            Ok(g) => Some(Some(g)),
            Err(e) => {
                log::warn!("waiting on the alert ring: {e}");
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

/// Carries out an arming decision; a failure to arm is said once, and
/// attribution is not tried again.
fn act(p: &mut Probes, action: Action, failed: &mut bool, notices: &mut Vec<String>) {
    match action {
        Action::Arm if !*failed => {
            if let Err(e) = p.arm() {
                *failed = true;
                let n = format!(
                    "attribution could not be armed ({}): refusals are counted by reason, not by source",
                    probes::chain(&e)
                );
                log::warn!("{n}");
                notices.push(n);
            }
        }
        Action::Disarm => p.disarm(),
        Action::Arm | Action::Stay => {}
    }
}

struct Sample {
    at: Instant,
    snap: Option<Snapshot>,
    stat: Option<StatTotals>,
}

impl Sample {
    fn take(source: &Source) -> Result<Sample, ObserveError> {
        Ok(Sample {
            at: Instant::now(),
            snap: match source {
                Source::Probes(p, _) => Some(p.snapshot()?),
                Source::Procfs => None,
            },
            stat: StatTotals::read_current().ok(),
        })
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
