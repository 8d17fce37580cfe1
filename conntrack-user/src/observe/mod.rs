//! `ctscope observe`: attach (or fall back), print a line per interval, and
//! write the report when the duration ends or on SIGINT/SIGTERM/SIGHUP.
//!
//! Its parts: `occupancy` (every namespace's count, sampled), `events`
//! (ctnetlink NEW/DESTROY in procfs mode), `lifetimes` (the kernel's lifetime
//! histograms) and `attribution` (namespaces and containers).

pub(crate) mod attribution;
pub mod events;
pub(crate) mod lifetimes;
pub(crate) mod occupancy;

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use conntrack_common::{Counter, OriginKey, OriginStats, latency_slot_floor};
use thiserror::Error;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    host::kernel,
    host::procfs::{self, StatTotals, TableSettings},
    observe::lifetimes::Lifetimes,
    probe::arming::{self, Action, Arming},
    probe::environment::Environment,
    probe::probes::{self, ProbeError, Probes, Snapshot},
    report::chain_model,
    report::{
        AttributionReport, ChainLengths, ChainStats, ClashOutcomes, Cost, Drops, EarlyDrop,
        Extensions, LatencyNs, Lookups, Mode, Occupancy, ProbeDetails, ProgramCost, Report,
        SelfCheck, Settings, or_unknown, write_atomic,
    },
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
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
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

enum Source {
    /// Attached, in fentry or kprobe mode.
    Probes(Box<Probes>, Mode),
    Procfs,
}

/// How long a stop signal may wait for the loading thread to give up.
const LOAD_STOP_LIMIT: Duration = Duration::from_millis(1500);

/// Loads and attaches the probes on a thread of their own, so that a stop
/// signal ends even a long verification: the signal is sent on to that
/// thread, whose `bpf(BPF_PROG_LOAD)` then returns EAGAIN (do_check() in
/// kernel/bpf/verifier.c stops at a pending signal), and `stop` keeps it
/// from trying again (aya retries a failed load once with a log; every
/// retry is interrupted the same way). `Err` names the signal.
async fn attach_interruptible(
    plan: probes::Plan,
    sigint: &mut tokio::signal::unix::Signal,
    sigterm: &mut tokio::signal::unix::Signal,
    sighup: &mut tokio::signal::unix::Signal,
) -> Result<Result<Probes, probes::ProbeError>, &'static str> {
    use std::os::unix::thread::JoinHandleExt;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let flag = stop.clone();
    let fallback = plan.clone();
    let spawned = std::thread::Builder::new()
        .name("ctscope-load".into())
        .spawn(move || {
            let _ = tx.send(Probes::attach(&plan, &flag));
        });
    let handle = match spawned {
        Ok(h) => h,
        // No thread: load here, not interruptible but loaded all the same.
        Err(e) => {
            log::warn!("cannot start the loading thread ({e}); loading on the main thread");
            return Ok(Probes::attach(&fallback, &stop));
        }
    };
    let gone = || {
        Err(probes::ProbeError::Interrupted(
            "the programs (the loading thread died)",
        ))
    };
    let signal = tokio::select! {
        r = &mut rx => return Ok(r.unwrap_or_else(|_| gone())),
        _ = sigint.recv() => "SIGINT",
        _ = sigterm.recv() => "SIGTERM",
        _ = sighup.recv() => "SIGHUP",
    };
    stop.store(true, std::sync::atomic::Ordering::Release);
    let thread = handle.as_pthread_t();
    let deadline = tokio::time::Instant::now() + LOAD_STOP_LIMIT;
    loop {
        // SAFETY: `thread` is joinable (its JoinHandle is alive), so the id
        // is valid; SIGINT has tokio's handler, which only records it.
        unsafe { libc::pthread_kill(thread, libc::SIGINT) };
        match tokio::time::timeout(Duration::from_millis(50), &mut rx).await {
            // Whatever it loaded is dropped (detached) here: the run is over.
            Ok(_) => break,
            Err(_) if tokio::time::Instant::now() >= deadline => {
                log::warn!(
                    "the loading thread did not stop within {LOAD_STOP_LIMIT:?}; leaving it"
                );
                break;
            }
            Err(_) => {}
        }
    }
    Err(signal)
}

/// Attaches `plan`; if the opt-in lookup programs are what failed, says so
/// in `notices` and attaches without them rather than not at all. `Err`
/// names a stop signal that came while loading.
async fn attach_with_fallback(
    mut plan: probes::Plan,
    notices: &mut Vec<String>,
    sigint: &mut tokio::signal::unix::Signal,
    sigterm: &mut tokio::signal::unix::Signal,
    sighup: &mut tokio::signal::unix::Signal,
) -> Result<Result<(Probes, probes::Plan), String>, &'static str> {
    let mut tried = attach_interruptible(plan.clone(), sigint, sigterm, sighup).await?;
    if let Err(e) = &tried
        && plan.lookups
        && probes::failed_program(e).is_some_and(probes::is_lookup_program)
    {
        notices.push(format!(
            "--lookups: lookups not measured: {}",
            probes::chain(e)
        ));
        plan.lookups = false;
        tried = attach_interruptible(plan.clone(), sigint, sigterm, sighup).await?;
    }
    Ok(tried.map(|p| (p, plan)).map_err(|e| probes::chain(&e)))
}

pub async fn run(opts: Options) -> Result<Outcome, ObserveError> {
    if !kernel::is_root() {
        return Err(ObserveError::NotRoot);
    }
    // Handlers first: a SIGINT that arrives right after the ready file exists
    // must end the run with a report, not kill the process. SIGHUP (the ssh
    // session or terminal went away) ends it the same way: the report is
    // what the run was for.
    let mut sigint = signal(SignalKind::interrupt()).map_err(ObserveError::Signals)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(ObserveError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(ObserveError::Signals)?;
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
    // A stop signal seen before the observation began (while loading), and
    // what the report says about it.
    let mut stopped_early: Option<&'static str> = None;
    let mut interrupted: Option<String> = None;
    let (source, plan) = match opts.mode {
        RequestedMode::Procfs => (Source::Procfs, None),
        RequestedMode::Kprobe | RequestedMode::Auto | RequestedMode::Fentry => {
            // Auto tries fentry (cheapest), then kprobes; a forced mode
            // tries only itself.
            let plans = match opts.mode {
                RequestedMode::Fentry => vec![(Mode::Fentry, env.fentry_plan())],
                RequestedMode::Kprobe => vec![(Mode::Kprobe, env.kprobe_plan())],
                _ => vec![
                    (Mode::Fentry, env.fentry_plan()),
                    (Mode::Kprobe, env.kprobe_plan()),
                ],
            };
            let mut failed: Vec<String> = Vec::new();
            let mut attached = None;
            for (mode, plan) in plans {
                let mut plan = match plan {
                    Ok(p) => p,
                    Err(e) => {
                        failed.push(format!("{mode}: {e}"));
                        continue;
                    }
                };
                plan.offsets.off_tuplehash += opts.fault_offset_skew;
                plan.lookups = opts.lookups && env.lookups_available();
                plan.stats = opts.cost || opts.lookups;
                plan.attribution = opts.attribution;
                if plan.fentry.is_some()
                    && !plan.early_drop
                    && plan.attribution != probes::Attribution::Always
                {
                    // Without early_drop's exit only the allocation's exit
                    // counts table-full refusals: it must run throughout.
                    plan.attribution = probes::Attribution::Always;
                    notices.push("early_drop cannot be probed on this kernel: table-full refusals are counted at the allocation's exit, which therefore stays attached (as with --attribution always)".to_string());
                }
                match attach_with_fallback(
                    plan,
                    &mut notices,
                    &mut sigint,
                    &mut sigterm,
                    &mut sighup,
                )
                .await
                {
                    Ok(Ok((p, plan))) => {
                        attached = Some((p, plan, mode));
                        break;
                    }
                    Ok(Err(e)) => failed.push(format!("{mode}: {e}")),
                    Err(signal) => {
                        stopped_early = Some(signal);
                        failed.push(format!(
                            "{signal} arrived while the kernel verified the eBPF programs; loading was interrupted (the verifier stops at a pending signal) and nothing was attached"
                        ));
                        break;
                    }
                }
            }
            let reason = failed.join("; ");
            match attached {
                _ if stopped_early.is_some() => {
                    interrupted = Some(format!("nothing was observed: {reason}"));
                    (Source::Procfs, None)
                }
                Some((p, plan, mode)) => {
                    if opts.mode == RequestedMode::Auto && !failed.is_empty() {
                        notices.push(format!("{mode} mode, since {reason}"));
                    }
                    // Reading the offsets parsed vmlinux and module BTF, and
                    // loading relocated the programs: hand those freed
                    // megabytes back to the system before the long
                    // observation (aya's own BTF parse ran on a thread that
                    // has exited, `probes::loader`).
                    // SAFETY: glibc's malloc_trim only releases free memory.
                    unsafe { libc::malloc_trim(0) };
                    (Source::Probes(Box::new(p), mode), Some(plan))
                }
                None if opts.mode != RequestedMode::Auto => {
                    return Err(ObserveError::ModeUnavailable {
                        mode: if opts.mode == RequestedMode::Fentry {
                            "fentry"
                        } else {
                            "kprobe"
                        },
                        reason,
                    });
                }
                None => {
                    let n = format!(
                        "eBPF probes cannot attach here ({reason}); falling back to procfs counters: chain lengths only as modeled under uniform hashing, drops only as the kernel counts them; every network namespace is visited for its own counters, and inserts per namespace and per source come from ctnetlink events (ctscope runs in namespace {})",
                        kernel::netns_inode()
                            .map(|i| i.to_string())
                            .unwrap_or_else(|| "?".into())
                    );
                    eprintln!("ctscope: {n}");
                    notices.push(n);
                    (Source::Procfs, None)
                }
            }
        }
    };
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
    if opts.lookups && !plan.as_ref().is_some_and(|p| p.lookups) {
        let why = if plan.is_some() {
            format!(
                "{} is not probe-able on this kernel (inlined or absent)",
                kernel::LOOKUP_TARGET
            )
        } else {
            "they need kprobes".to_string()
        };
        notices.push(format!("--lookups: lookups not measured: {why}"));
    }
    if let Some(plan) = &plan {
        if plan.lookups && plan.ct_hash_addr == 0 {
            notices.push("--lookups: nf_conntrack_hash is not in /proc/kallsyms (CONFIG_KALLSYMS_ALL off?): lookup latency and hits are measured, the chain walked is not".into());
        }
        if !plan.lifetimes {
            notices
                .push("nf_ct_delete or nf_conntrack_free is not probe-able: no lifetimes".into());
        }
        if !plan.clash {
            notices.push("nf_ct_resolve_clash is not probe-able: clash and chain-too-long drops cannot be told apart (reported as other)".into());
        }
        if !plan.early_drop {
            notices.push(
                "early_drop is not probe-able: every failed allocation is counted as table full"
                    .into(),
            );
        }
    }

    let settings0 = TableSettings::read();
    let stat0 = StatTotals::read_current().ok();
    let snap0 = match &source {
        Source::Probes(p, _) => Some(p.snapshot()?),
        Source::Procfs => None,
    };
    // Counted by the kernel from each program's load: the run's share is a
    // delta from here, like every other counter.
    let misses0 = match &source {
        Source::Probes(p, _) => p.recursion_misses(),
        Source::Procfs => Default::default(),
    };
    let origins0 = match &source {
        Source::Probes(p, _) => p.origins(),
        Source::Procfs => Vec::new(),
    };
    // Deaths are counted by the kernel since attach: the run's are a delta.
    let life0 = match &source {
        Source::Probes(p, _) => Some(p.life_rows()?),
        Source::Procfs => None,
    };
    let mut occupancy = occupancy::Sampler::new(opts.interval.as_secs_f64());
    occupancy.sample();
    // CPU time is counted over the observation only: loading BTF and the
    // programs is a one-off start-up cost, not what observing costs.
    let cpu0 = cpu_seconds();
    let started = Instant::now();
    if !opts.quiet {
        let what = match &source {
            Source::Probes(p, _) => format!(
                "{} probes attached: {}",
                p.attached.len(),
                p.attached.join(", ")
            ),
            Source::Procfs => "reading procfs counters".to_string(),
        };
        eprintln!(
            "ctscope: observing conntrack on {} in {mode} mode ({what}); Ctrl-C ends the run",
            env.release
        );
    }
    // Ready means observing: an interrupted run never was.
    if let Some(ready) = opts.ready_file.as_ref().filter(|_| interrupted.is_none()) {
        crate::safefile::write_atomic(ready, format!("{mode}\n").as_bytes(), 0o644).map_err(
            |error| ObserveError::Write {
                path: ready.display().to_string(),
                error,
            },
        )?;
    }

    let mut tick = tokio::time::interval(opts.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut prev = Sample {
        at: Instant::now(),
        snap: snap0.clone(),
        stat: stat0.clone(),
    };
    // Attribution on demand (fentry mode, `--attribution auto`): alerts
    // polled, pressure read each interval (arming.rs).
    let mut source = source;
    let on_demand = matches!(&source, Source::Probes(p, _) if p.arms_on_demand());
    let mut arming = Arming::new(arming::HOLD);
    let mut arm_failed = false;
    // Woken by the kernel when an alert comes while not armed: no polling.
    let mut ring = match &mut source {
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
    if let Source::Probes(p, _) = &mut source
        && on_demand
    {
        // The baseline of the alerts, and the table as it is at the start.
        let t = TableSettings::read();
        let pressure = arming::pressure(None, t.count, t.max);
        let action = arming.step(Instant::now(), p.alerts().ok(), pressure, p.armed());
        act(p, action, &mut arm_failed, &mut notices);
    }
    while stopped_early.is_none() {
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
                match Sample::take(&source) {
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
                if let Source::Probes(p, _) = &mut source
                    && on_demand
                {
                    // Unseen deaths need nf_conntrack_free for good, not
                    // attribution (arming.rs).
                    if unseen {
                        p.keep_free();
                    }
                    let action = arming.step(Instant::now(), p.alerts().ok(), pressure, p.armed());
                    act(p, action, &mut arm_failed, &mut notices);
                }
            }
            Some(guard) = alert_ready(ring.as_mut()), if !arm_failed => {
                if let Some(mut guard) = guard {
                    // Wake-ups only: what counts is ALERTS.
                    while guard.get_inner_mut().next().is_some() {}
                    guard.clear_ready();
                }
                if let Source::Probes(p, _) = &mut source {
                    let action = arming.step(Instant::now(), p.alerts().ok(), false, p.armed());
                    act(p, action, &mut arm_failed, &mut notices);
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => break,
            _ = stop => break,
        }
    }

    let last = Sample::take(&source)?;
    occupancy.sample();
    let lifetimes = match (&source, &life0) {
        (Source::Probes(p, _), Some(before)) => {
            Some(Lifetimes::from_rows(&life_delta(&p.life_rows()?, before)))
        }
        _ => None,
    };
    let origins = match &source {
        Source::Probes(p, _) => Some(origin_delta(p.origins(), &origins0)),
        Source::Procfs => None,
    };
    let duration_s = started.elapsed().as_secs_f64();
    let settings1 = TableSettings::read();
    let kernel_stats = match (&last.stat, &stat0) {
        (Some(a), Some(b)) => a.delta(b).columns,
        _ => Default::default(),
    };
    let settings = Settings {
        buckets: settings1.buckets,
        max: settings1.max,
        count_start: settings0.count,
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
    let occupancy = occupancy.report();
    let mut self_check_failed = false;
    let report = match (&source, &last.snap, &snap0, &plan) {
        (Source::Probes(p, _), Some(a), Some(b), Some(plan)) => {
            let misses: std::collections::BTreeMap<String, u64> = p
                .recursion_misses()
                .into_iter()
                .map(|(k, v)| {
                    let before = misses0.get(&k).copied().unwrap_or(0);
                    (k, v.saturating_sub(before))
                })
                .filter(|(_, v)| *v > 0)
                .collect();
            if !misses.is_empty() {
                let list: Vec<String> = misses.iter().map(|(k, v)| format!("{k} {v}")).collect();
                notices.push(format!(
                    "the kernel skipped runs of ctscope's programs because a BPF program (ctscope's or another tool's) was already running on that CPU ({}): {} inserts are not counted (nor their chains measured) and the other figures of those connections are missing",
                    list.join(", "),
                    crate::probe::probes::INSERT_PROGRAMS
                        .iter()
                        .filter_map(|p| misses.get(*p))
                        .sum::<u64>()
                ));
            }
            let d = a.since(b);
            let c = |k| d.counter(k);
            let check = SelfCheck {
                walks: c(Counter::WalksOk),
                nulls_mismatch: c(Counter::NullsMismatch),
                link_mismatch: c(Counter::LinkMismatch),
                dir_mismatch: c(Counter::DirMismatch),
                truncated: c(Counter::WalksTruncated),
                read_errors: c(Counter::ReadErrors),
                missed: c(Counter::InsertWithoutEntry)
                    + c(Counter::ConfirmWithoutEntry)
                    + c(Counter::InsertReturnMissed)
                    + c(Counter::ConfirmStackOverflow)
                    + c(Counter::AllocWithoutEntry)
                    + c(Counter::CallStackReset),
            };
            if check.failures() > 0 {
                self_check_failed = true;
                notices.push(format!(
                    "SELF-CHECK FAILED: of {} chain walks, {} ended at another bucket's nulls marker, {} started at a node not linked where it claimed, {} had the wrong tuple direction, {} hit failed kernel reads: the struct offsets do not match this kernel, so those walks were not counted and the chain lengths are NOT trustworthy",
                    check.walks + check.failures(),
                    check.nulls_mismatch,
                    check.link_mismatch,
                    check.dir_mismatch,
                    check.read_errors
                ));
            }
            if check.missed > 0 {
                notices.push(format!(
                    "{} probe events were lost (kretprobe instances exhausted?): counts may be low by that much",
                    check.missed
                ));
            }
            for (counter, what) in [
                (
                    Counter::LifeTrackFull,
                    "entries found no free lifetime slot (their bucket was full): their deaths are counted, without a lifetime",
                ),
                (
                    Counter::OriginOverflow,
                    "per-origin updates overflowed the origin map: those counts are only per namespace, not per source address",
                ),
                (
                    Counter::LookupWalkMismatch,
                    "lookup bucket walks ended at another bucket's nulls marker (a resize or a moved entry mid-walk): not recorded",
                ),
            ] {
                if c(counter) > 0 {
                    notices.push(format!("{} {what}", c(counter)));
                }
            }
            let armed = p.armed_time();
            let att = session.finish(origins.as_deref(), armed.always);
            notices.extend(att.notices);
            // Without the clash probe, clash and chain-too-long drops cannot
            // be told apart: both are unmeasured (null), and every refused
            // confirmation lands in `other`. Without the early-drop probe
            // every failed allocation counts as table full.
            let drops = if armed.always {
                Drops {
                    table_full: Some(c(Counter::TableFull)),
                    chain_too_long: plan.clash.then(|| c(Counter::DropChainTooLong)),
                    clash: plan.clash.then(|| c(Counter::DropClash)),
                    other: Some(c(Counter::DropOther).saturating_add(c(Counter::DropDying))),
                    alloc_failed: plan.early_drop.then(|| c(Counter::AllocFailedOther)),
                }
            } else {
                // The reasons only the attribution programs tell apart, from
                // every namespace's kernel counters (attribution::netns_drops).
                let sum = |f: fn(&Drops) -> Option<u64>| {
                    att.netns.iter().map(|n| f(&n.drops)).sum::<Option<u64>>()
                };
                Drops {
                    table_full: Some(c(Counter::TableFull)),
                    chain_too_long: sum(|d| d.chain_too_long),
                    clash: plan.clash.then(|| c(Counter::DropClash)),
                    other: sum(|d| d.other),
                    alloc_failed: sum(|d| d.alloc_failed),
                }
            };
            let attributed: u64 = origins
                .iter()
                .flatten()
                .filter(|(k, _)| k.family != 0)
                .map(|(_, v)| v.attributed_drops())
                .fold(0, u64::saturating_add);
            let attribution = AttributionReport {
                policy: if plan.fentry.is_some() {
                    format!("{:?}", plan.attribution).to_lowercase()
                } else {
                    "always".into()
                },
                throughout: armed.always,
                armed_s: if armed.always {
                    duration_s
                } else {
                    armed.seconds
                },
                arms: armed.arms,
                unattributed: drops.total().map(|t| t.saturating_sub(attributed)),
            };
            if let Some(n) = attribution.unattributed.filter(|n| *n > 0) {
                notices.push(format!(
                    "{n} refused connections are counted by reason but not by source: attribution {}",
                    if attribution.arms == 0 {
                        "never ran (nothing suggested refusals; see --attribution)".to_string()
                    } else {
                        format!("ran {:.1} s of the {duration_s:.1} s, armed by the first signs of trouble, after some refusals", attribution.armed_s)
                    }
                ));
            }
            let deaths_unseen = c(Counter::DeathsUnseen);
            if deaths_unseen > 0 {
                notices.push(format!(
                    "{deaths_unseen} entries died without nf_ct_delete or nf_conntrack_free being seen (this kernel calls nf_ct_delete inline somewhere, and nf_conntrack_free was not probed then; it stays attached once this is seen): their deaths are missing from lifetimes"
                ));
            }
            Report {
                inserts: Some(c(Counter::Inserts)),
                chain_length: Some(ChainLengths {
                    orig: ChainStats::from_counts(&d.orig),
                    reply: ChainStats::from_counts(&d.reply),
                }),
                drops,
                attribution: Some(attribution),
                self_check: Some(check),
                probes: Some(ProbeDetails {
                    attached: p.attached.clone(),
                    allocations: c(Counter::AllocOk),
                    alloc_failed_other: c(Counter::AllocFailedOther),
                    confirms: c(Counter::Confirms),
                    confirm_drops: c(Counter::ConfirmDrops),
                    dying: c(Counter::DropDying),
                    early_drop_evicted: c(Counter::EarlyDropOk),
                    early_drop_failed: c(Counter::EarlyDropFailed),
                    clash_resolved: c(Counter::ClashResolved),
                    same_bucket_inserts: c(Counter::SameBucket),
                    calls_kept: if plan.per_cpu_calls {
                        "per_cpu".into()
                    } else {
                        "per_task".into()
                    },
                    recursion_misses: misses.clone(),
                    offsets: serde_json::to_value(&plan.offsets).ok(),
                }),
                early_drop: EarlyDrop {
                    attempts: plan
                        .early_drop
                        .then(|| c(Counter::EarlyDropOk) + c(Counter::EarlyDropFailed)),
                    evicted: (plan.early_drop && plan.lifetimes)
                        .then(|| c(Counter::EarlyDropEvicted)),
                },
                clash: ClashOutcomes {
                    resolved: plan.clash.then(|| c(Counter::ClashResolved)),
                    failed: plan.clash.then(|| c(Counter::DropClash)),
                },
                // Counted by the confirmation's exit: only whole when it ran
                // throughout.
                dying_at_confirm: armed.always.then(|| c(Counter::DropDying)),
                lifetimes: lifetimes
                    .as_ref()
                    .filter(|_| plan.lifetimes)
                    .map(Lifetimes::report),
                expiries: plan
                    .lifetimes
                    .then(|| lifetimes.as_ref().map(|l| l.expiries(&settings.timeouts)))
                    .flatten(),
                extensions: (plan.offsets.off_ct_ext != 0).then(|| {
                    let inserts = c(Counter::Inserts);
                    Extensions {
                        entries_with_ext: c(Counter::ExtEntries),
                        inserts,
                        bytes_per_entry: if inserts > 0 {
                            c(Counter::ExtBytes) as f64 / inserts as f64
                        } else {
                            0.0
                        },
                    }
                }),
                lifetimes_untracked: plan.lifetimes.then(|| c(Counter::DeletesUntracked)),
                lookups: plan
                    .lookups
                    .then(|| lookups_report(&d, plan, p.costs().as_deref())),
                cost: cost(duration_s, cpu0, p.costs()),
                netns: att.netns,
                containers: att.containers,
                ..base_report(
                    mode,
                    &env,
                    duration_s,
                    settings,
                    kernel_stats,
                    occupancy,
                    notices,
                )
            }
        }
        _ => {
            // procfs: the kernel counts chain-too-long drops exactly (a column
            // since 5.15; before that no chain limit exists, so none happen).
            // Its `drop` mixes table-full and clash, so neither is claimed.
            // An unreadable stat file measures nothing: null, not 0.
            let chain = match (&last.stat, &stat0) {
                (Some(_), Some(_)) => kernel_stats.get("chaintoolong").copied().or(Some(0)),
                _ => None,
            };
            let att = session.finish(None, false);
            notices.extend(att.notices);
            // The table is global: the model takes every namespace's entries.
            let modeled = att
                .live_entries_total
                .zip(settings.buckets)
                .filter(|_| interrupted.is_none())
                .and_then(|(n, b)| chain_model::expected_chain_lengths(n, b));
            Report {
                drops: Drops {
                    chain_too_long: chain,
                    ..Drops::default()
                },
                chain_length: modeled,
                netns: att.netns,
                containers: att.containers,
                lifetimes: att.lifetimes,
                lifetimes_untracked: att.lifetimes_untracked,
                cost: cost(duration_s, cpu0, None),
                interrupted: interrupted.clone(),
                ..base_report(
                    mode,
                    &env,
                    duration_s,
                    settings,
                    kernel_stats,
                    occupancy,
                    notices,
                )
            }
        }
    };
    // Detach before writing: the run is over.
    drop(source);

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

/// Rows of `LIFE_HIST` over the run: `now - start`, slot by slot.
fn life_delta(now: &[Vec<u64>], start: &[Vec<u64>]) -> Vec<Vec<u64>> {
    now.iter()
        .zip(start)
        .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x.saturating_sub(*y)).collect())
        .collect()
}

/// Per-origin counts over the run: `now - start`, key by key.
fn origin_delta(
    now: Vec<(OriginKey, OriginStats)>,
    start: &[(OriginKey, OriginStats)],
) -> Vec<(OriginKey, OriginStats)> {
    let before: std::collections::HashMap<OriginKey, OriginStats> = start.iter().copied().collect();
    now.into_iter()
        .map(|(k, v)| (k, v.since(&before.get(&k).copied().unwrap_or_default())))
        .filter(|(_, d)| *d != OriginStats::default())
        .collect()
}

/// `--lookups` results from the run's counters and histograms.
fn lookups_report(
    d: &Snapshot,
    plan: &probes::Plan,
    costs: Option<&[(String, u64, u64)]>,
) -> Lookups {
    let c = |k| d.counter(k);
    let count = c(Counter::Lookups);
    let pct = |q: f64| {
        let rank = ((q * count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (slot, n) in d.lookup_latency.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return latency_slot_floor(slot as u32);
            }
        }
        0
    };
    let overhead = costs.and_then(|cs| {
        let (runs, ns) = cs
            .iter()
            .filter(|(name, ..)| name.starts_with("lookup"))
            .fold((0u64, 0u64), |(r, t), (_, rc, rt)| (r.max(*rc), t + rt));
        (runs > 0).then(|| ns as f64 / runs as f64)
    });
    Lookups {
        count,
        hits: c(Counter::LookupHits),
        misses: c(Counter::LookupMisses),
        latency_ns: LatencyNs {
            mean: if count > 0 {
                c(Counter::LookupNsSum) as f64 / count as f64
            } else {
                0.0
            },
            p50: if count > 0 { pct(0.50) } else { 0 },
            p99: if count > 0 { pct(0.99) } else { 0 },
            max: d.lookup_max,
        },
        chain: (plan.ct_hash_addr != 0 && plan.htable_size_addr != 0)
            .then(|| ChainStats::from_counts(&d.lookup_chain)),
        overhead_ns_per_lookup: overhead,
    }
}

/// This process's user + system CPU seconds and peak RSS in KiB (getrusage).
fn rusage() -> Option<(f64, u64)> {
    // SAFETY: an all-zero rusage is a valid value for getrusage to overwrite.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return None;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    // ru_maxrss is in KiB on Linux.
    Some((
        secs(ru.ru_utime) + secs(ru.ru_stime),
        ru.ru_maxrss.max(0) as u64,
    ))
}

/// `VmRSS` of this process, KiB.
fn current_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn cpu_seconds() -> f64 {
    rusage().map(|(c, _)| c).unwrap_or(0.0)
}

/// ctscope's own CPU time over the observation, its peak memory, and the
/// probes' kernel-side cost.
pub fn cost(duration_s: f64, cpu_at_start: f64, costs: Option<Vec<(String, u64, u64)>>) -> Cost {
    let (cpu_now, rss) = rusage().unwrap_or((cpu_at_start, 0));
    let cpu = (cpu_now - cpu_at_start).max(0.0);
    Cost {
        programs: costs.map(|cs| {
            cs.into_iter()
                .map(|(name, run_cnt, run_time_ns)| ProgramCost {
                    ns_per_run: if run_cnt > 0 {
                        run_time_ns as f64 / run_cnt as f64
                    } else {
                        0.0
                    },
                    name,
                    run_cnt,
                    run_time_ns,
                })
                .collect()
        }),
        cpu_seconds: cpu,
        cpu_percent: if duration_s > 0.0 {
            100.0 * cpu / duration_s
        } else {
            0.0
        },
        max_rss_kib: rss,
        rss_kib: current_rss_kib().unwrap_or(0),
    }
}

fn base_report(
    mode: Mode,
    env: &Environment,
    duration_s: f64,
    settings: Settings,
    kernel_stats: std::collections::BTreeMap<String, u64>,
    occupancy: Occupancy,
    notices: Vec<String>,
) -> Report {
    Report {
        ctscope_version: env!("CARGO_PKG_VERSION").to_string(),
        mode,
        kernel_release: env.release.clone(),
        netns_inode: kernel::netns_inode(),
        duration_s,
        inserts: None,
        chain_length: None,
        drops: Drops::default(),
        self_check: None,
        settings,
        kernel_stats,
        probes: None,
        netns: Vec::new(),
        containers: Vec::new(),
        lifetimes: None,
        lifetimes_untracked: None,
        early_drop: Default::default(),
        clash: Default::default(),
        dying_at_confirm: None,
        lookups: None,
        cost: Default::default(),
        occupancy: Some(occupancy),
        extensions: None,
        expiries: None,
        attribution: None,
        notices,
        interrupted: None,
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

/// One live line: what happened since the previous sample.
fn interval_line(started: Instant, prev: &Sample, now: &Sample, t: &TableSettings) -> String {
    let dt = now.at.duration_since(prev.at).as_secs_f64().max(1e-3);
    let mut line = format!(
        "[{:6.1}s] count {}/{}",
        now.at.duration_since(started).as_secs_f64(),
        or_unknown(t.count),
        or_unknown(t.max)
    );
    match (&now.snap, &prev.snap) {
        (Some(a), Some(b)) => {
            let d = a.since(b);
            let o = ChainStats::from_counts(&d.orig);
            let r = ChainStats::from_counts(&d.reply);
            line.push_str(&format!(
                "  inserts/s {:.0}  drops full {} chain {} clash {} other {}  chain p50/p99/max orig {}/{}/{} reply {}/{}/{}",
                d.counter(Counter::Inserts) as f64 / dt,
                d.counter(Counter::TableFull),
                d.counter(Counter::DropChainTooLong),
                d.counter(Counter::DropClash),
                d.counter(Counter::DropOther) + d.counter(Counter::DropDying),
                o.p50, o.p99, o.max, r.p50, r.p99, r.max
            ));
            if d.counter(Counter::NullsMismatch) > 0 {
                line.push_str(&format!(
                    "  SELF-CHECK MISMATCH {}",
                    d.counter(Counter::NullsMismatch)
                ));
            }
        }
        _ => {
            if let (Some(a), Some(b)) = (&now.stat, &prev.stat) {
                let d = a.delta(b);
                line.push_str(&format!(
                    "  kernel: drop {} insert_failed {} chaintoolong {} early_drop {} clash_resolve {}",
                    d.get("drop"),
                    d.get("insert_failed"),
                    d.get("chaintoolong"),
                    d.get("early_drop"),
                    d.get("clash_resolve")
                ));
            }
        }
    }
    line
}

/// The closing summary for a person.
pub fn summary(r: &Report) -> String {
    let mut s = format!(
        "\nctscope summary ({} mode, kernel {}, {:.1} s)\n",
        r.mode, r.kernel_release, r.duration_s
    );
    s.push_str(&format!(
        "  table: count {} -> {} of max {}, {} buckets\n",
        or_unknown(r.settings.count_start),
        or_unknown(r.settings.count_end),
        or_unknown(r.settings.max),
        or_unknown(r.settings.buckets)
    ));
    if let Some(i) = r.inserts {
        s.push_str(&format!("  inserts: {i}\n"));
    }
    s.push_str(&format!(
        "  drops: table full {}, chain too long {}, clash {}, other {}, allocation failed {}\n",
        or_unknown(r.drops.table_full),
        or_unknown(r.drops.chain_too_long),
        or_unknown(r.drops.clash),
        or_unknown(r.drops.other),
        or_unknown(r.drops.alloc_failed)
    ));
    if let Some(c) = r.chain_length.as_ref().filter(|c| c.orig.modeled) {
        s.push_str(&format!(
            "  chain length after insert, MODELED (uniform hashing, {} entries): mean {:.2}  p50 {}  p99 {}  max {}\n",
            or_unknown(r.netns.iter().map(|n| n.live_entries).sum()),
            c.orig.mean,
            c.orig.p50,
            c.orig.p99,
            c.orig.max
        ));
    } else if let Some(c) = &r.chain_length {
        for (dir, st) in [("orig", &c.orig), ("reply", &c.reply)] {
            s.push_str(&format!(
                "  chain length after insert ({dir:5}): mean {:.2}  p50 {}  p99 {}  max {}  ({} proven lengths{})\n",
                st.mean,
                st.p50,
                st.p99,
                st.max,
                st.samples,
                if st.truncated > 0 {
                    format!(", {} longer than the walk limit", st.truncated)
                } else {
                    String::new()
                }
            ));
        }
    }
    if let Some(sc) = &r.self_check {
        s.push_str(&format!(
            "  self-check: {} walks proven (linked start node, own direction, own bucket's nulls marker), {} failed\n",
            sc.walks,
            sc.failures()
        ));
    }
    if !r.kernel_stats.is_empty() {
        let k = |n: &str| r.kernel_stats.get(n).copied().unwrap_or(0);
        s.push_str(&format!(
            "  kernel stat deltas (this netns): drop {} insert_failed {} chaintoolong {} early_drop {} clash_resolve {}\n",
            k("drop"),
            k("insert_failed"),
            k("chaintoolong"),
            k("early_drop"),
            k("clash_resolve")
        ));
    }
    s.push_str(&attribution_lines(r));
    s.push_str(&life_lines(r));
    for n in &r.notices {
        s.push_str(&format!("  note: {n}\n"));
    }
    s
}

/// Who filled the table: namespaces by inserts, then the NAT-attributed
/// container view.
fn attribution_lines(r: &Report) -> String {
    let mut s = String::new();
    let mut rows: Vec<_> = r.netns.iter().collect();
    rows.sort_by_key(|n| std::cmp::Reverse((n.inserts.unwrap_or(0), n.live_entries.unwrap_or(0))));
    if !rows.is_empty() {
        s.push_str("  by namespace (inserts / live at end / drops):\n");
    }
    for n in rows.iter().take(12) {
        let kind = match n.kind {
            crate::report::NetnsKind::Host => "host",
            crate::report::NetnsKind::Container => "container",
            crate::report::NetnsKind::Netns => "netns",
        };
        s.push_str(&format!(
            "    {:<24} {:<9} {:>10} {:>10} {:>8}   inode {}\n",
            n.name,
            kind,
            or_unknown(n.inserts),
            or_unknown(n.live_entries),
            or_unknown(n.drops.total()),
            n.inode
        ));
    }
    if rows.len() > 12 {
        s.push_str(&format!(
            "    ... {} more in the JSON report\n",
            rows.len() - 12
        ));
    }
    if !r.containers.is_empty() {
        let total: u64 = r.containers.iter().filter_map(|c| c.inserts).sum();
        s.push_str("  by container, NAT entries attributed by source address (inserts / share / live / drops):\n");
        let mut cs: Vec<_> = r.containers.iter().collect();
        cs.sort_by_key(|c| std::cmp::Reverse(c.inserts.unwrap_or(0)));
        for c in cs {
            let share = match c.inserts {
                Some(i) if total > 0 => format!("{:.1}%", 100.0 * i as f64 / total as f64),
                _ => "?".into(),
            };
            s.push_str(&format!(
                "    {:<24} {:>10} {:>7} {:>10} {:>8}   {}\n",
                c.name,
                or_unknown(c.inserts),
                share,
                or_unknown(c.live_entries),
                or_unknown(c.drops),
                c.addresses.join(",")
            ));
        }
    }
    s
}

/// How entries lived and died, lookups, and what observing cost.
fn life_lines(r: &Report) -> String {
    let mut s = String::new();
    if let Some(l) = &r.lifetimes {
        for (proto, p) in l {
            let ends: Vec<String> = p
                .by_end
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(e, n)| format!("{e} {n}"))
                .collect();
            s.push_str(&format!(
                "  lifetimes {proto:4}: {} ended, p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  ({})\n",
                p.count,
                p.p50_ms,
                p.p99_ms,
                p.max_ms,
                ends.join(", ")
            ));
        }
    }
    if r.early_drop.attempts.is_some() || r.clash.resolved.is_some() {
        s.push_str(&format!(
            "  early drop: {} attempts, {} evicted; clashes: {} resolved, {} failed\n",
            or_unknown(r.early_drop.attempts),
            or_unknown(r.early_drop.evicted),
            or_unknown(r.clash.resolved),
            or_unknown(r.clash.failed)
        ));
    }
    if let Some(l) = &r.lookups {
        s.push_str(&format!(
            "  lookups: {} ({} hits, {} misses), latency mean {:.0} ns p50 {} p99 {} max {}; probe cost {} ns per lookup\n",
            l.count,
            l.hits,
            l.misses,
            l.latency_ns.mean,
            l.latency_ns.p50,
            l.latency_ns.p99,
            l.latency_ns.max,
            l.overhead_ns_per_lookup
                .map(|v| format!("{v:.0}"))
                .unwrap_or_else(|| "?".into())
        ));
        if let Some(c) = &l.chain {
            s.push_str(&format!(
                "  bucket searched per lookup: mean {:.2}  p50 {}  p99 {}  max {}\n",
                c.mean, c.p50, c.p99, c.max
            ));
        }
    }
    let c = &r.cost;
    let probe_ns: Option<(u64, u64)> = c.programs.as_ref().map(|ps| {
        ps.iter()
            .filter(|p| !p.name.starts_with("lookup"))
            .fold((0, 0), |(n, t), p| (n + p.run_cnt, t + p.run_time_ns))
    });
    s.push_str(&format!(
        "  cost: ctscope {:.2}% of a core, RSS {:.1} MiB at the end (peak {:.1} MiB, start-up included){}\n",
        c.cpu_percent,
        c.rss_kib as f64 / 1024.0,
        c.max_rss_kib as f64 / 1024.0,
        match (probe_ns, r.inserts) {
            (Some((_, t)), Some(i)) if i > 0 => format!(
                "; default probes {:.0} ns of kernel time per new connection (bpf_stats)",
                t as f64 / i as f64
            ),
            _ => String::new(),
        }
    ));
    s
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
