//! Where a run's numbers come from: the eBPF programs (fentry, else kprobes)
//! attached on a thread a stop signal can interrupt, or procfs counters.

use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};

use super::{ObserveError, Options, RequestedMode};
use crate::{
    host::kernel,
    probe::{
        environment::Environment,
        probes::{self, Probes},
    },
    report::Mode,
};

/// The signals that end a run: SIGINT, SIGTERM and SIGHUP (the ssh session
/// or terminal went away; the report is what the run was for).
pub(crate) struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Signals {
    pub(crate) fn new() -> Result<Signals, ObserveError> {
        let on = |kind| signal(kind).map_err(ObserveError::Signals);
        Ok(Signals {
            int: on(SignalKind::interrupt())?,
            term: on(SignalKind::terminate())?,
            hup: on(SignalKind::hangup())?,
        })
    }

    /// Waits for the next one, and names it.
    pub(crate) async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

pub(super) enum Source {
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
    signals: &mut Signals,
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
        s = signals.recv() => s,
    };
    stop.store(true, std::sync::atomic::Ordering::Release);
    let thread = handle.as_pthread_t();
    let deadline = tokio::time::Instant::now() + LOAD_STOP_LIMIT;
    loop {
        // `thread` is joinable (its JoinHandle is alive), so the id is
        // valid; SIGINT has tokio's handler, which only records it. A failure
        // (ESRCH: it is ending) is ignored, as before: the timeout below
        // decides.
        let _ = nix::sys::pthread::pthread_kill(thread, nix::sys::signal::Signal::SIGINT);
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
    signals: &mut Signals,
) -> Result<Result<(Probes, probes::Plan), String>, &'static str> {
    let mut tried = attach_interruptible(plan.clone(), signals).await?;
    if let Err(e) = &tried
        && plan.lookups
        && probes::failed_program(e).is_some_and(probes::is_lookup_program)
    {
        notices.push(format!(
            "--lookups: lookups not measured: {}",
            probes::chain(e)
        ));
        plan.lookups = false;
        tried = attach_interruptible(plan.clone(), signals).await?;
    }
    Ok(tried.map(|p| (p, plan)).map_err(|e| probes::chain(&e)))
}

/// The source a run takes, and what became of the attempt.
pub(super) struct Selected {
    pub(super) source: Source,
    pub(super) plan: Option<probes::Plan>,
    /// A stop signal seen before the observation began (while loading).
    pub(super) stopped_early: Option<&'static str>,
    /// What the report says about a run stopped that early.
    pub(super) interrupted: Option<String>,
}

impl Selected {
    fn procfs() -> Selected {
        Selected {
            source: Source::Procfs,
            plan: None,
            stopped_early: None,
            interrupted: None,
        }
    }
}

/// The options' share of a plan, and the one adjustment the kernel forces.
fn adjust(plan: &mut probes::Plan, opts: &Options, env: &Environment, notices: &mut Vec<String>) {
    plan.offsets.off_tuplehash += opts.fault_offset_skew;
    plan.lookups = opts.lookups && env.lookups_available();
    plan.stats = opts.cost || opts.lookups;
    plan.attribution = opts.attribution;
    if plan.fentry.is_some() && !plan.early_drop && plan.attribution != probes::Attribution::Always
    {
        // Without early_drop's exit only the allocation's exit counts
        // table-full refusals: it must run throughout.
        plan.attribution = probes::Attribution::Always;
        notices.push("early_drop cannot be probed on this kernel: table-full refusals are counted at the allocation's exit, which therefore stays attached (as with --attribution always)".to_string());
    }
}

/// Picks the source: auto tries fentry (cheapest), then kprobes, then
/// procfs with a notice; a forced mode tries only itself and fails with the
/// reason.
pub(super) async fn select(
    opts: &Options,
    env: &Environment,
    signals: &mut Signals,
    notices: &mut Vec<String>,
    listen_events: bool,
) -> Result<Selected, ObserveError> {
    let plans = match opts.mode {
        RequestedMode::Procfs => return Ok(Selected::procfs()),
        RequestedMode::Fentry => vec![(Mode::Fentry, env.fentry_plan())],
        RequestedMode::Kprobe => vec![(Mode::Kprobe, env.kprobe_plan())],
        RequestedMode::Auto => vec![
            (Mode::Fentry, env.fentry_plan()),
            (Mode::Kprobe, env.kprobe_plan()),
        ],
    };
    let mut failed: Vec<String> = Vec::new();
    let mut attached = None;
    let mut stopped_early = None;
    for (mode, plan) in plans {
        let mut plan = match plan {
            Ok(p) => p,
            Err(e) => {
                failed.push(format!("{mode}: {e}"));
                continue;
            }
        };
        adjust(&mut plan, opts, env, notices);
        match attach_with_fallback(plan, notices, signals).await {
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
        _ if stopped_early.is_some() => Ok(Selected {
            stopped_early,
            interrupted: Some(format!("nothing was observed: {reason}")),
            ..Selected::procfs()
        }),
        Some((p, plan, mode)) => {
            if opts.mode == RequestedMode::Auto && !failed.is_empty() {
                notices.push(format!("{mode} mode, since {reason}"));
            }
            // Reading the offsets parsed vmlinux and module BTF, and loading
            // relocated the programs: hand those freed megabytes back to the
            // system before the long observation (aya's own BTF parse ran on
            // a thread that has exited, `probes::loader`).
            // SAFETY: glibc's malloc_trim only releases free memory.
            unsafe { libc::malloc_trim(0) };
            Ok(Selected {
                source: Source::Probes(Box::new(p), mode),
                plan: Some(plan),
                ..Selected::procfs()
            })
        }
        None if opts.mode != RequestedMode::Auto => Err(ObserveError::ModeUnavailable {
            mode: if opts.mode == RequestedMode::Fentry {
                "fentry"
            } else {
                "kprobe"
            },
            reason,
        }),
        None => {
            let events = if listen_events {
                ", and inserts per namespace and per source come from ctnetlink events"
            } else {
                " (inserts per namespace are not counted in this mode)"
            };
            let n = format!(
                "eBPF probes cannot attach here ({reason}); falling back to procfs counters: chain lengths only as modeled under uniform hashing, drops only as the kernel counts them; every network namespace is visited for its own counters{events} (ctscope runs in namespace {})",
                kernel::netns_inode().map_or_else(|| "?".into(), |i| i.to_string())
            );
            eprintln!("ctscope: {n}");
            notices.push(n);
            Ok(Selected::procfs())
        }
    }
}

/// What the plan could not do that the options or the user expect.
pub(super) fn plan_notices(opts: &Options, plan: Option<&probes::Plan>, notices: &mut Vec<String>) {
    if opts.lookups && !plan.is_some_and(|p| p.lookups) {
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
    let Some(plan) = plan else { return };
    if plan.lookups && plan.ct_hash_addr == 0 {
        notices.push("--lookups: nf_conntrack_hash is not in /proc/kallsyms (CONFIG_KALLSYMS_ALL off?): lookup latency and hits are measured, the chain walked is not".into());
    }
    if !plan.lifetimes {
        notices.push("nf_ct_delete or nf_conntrack_free is not probe-able: no lifetimes".into());
    }
    if !plan.clash {
        notices.push("nf_ct_resolve_clash is not probe-able: clash and chain-too-long drops cannot be told apart (reported as other)".into());
    }
    if !plan.early_drop {
        notices.push(
            "early_drop is not probe-able: every failed allocation is counted as table full".into(),
        );
    }
}
