//! The measurement engine: one session that attaches the probes (or falls
//! back to procfs counters), samples at each interval, and builds a report of
//! the run so far ([`Engine::report`], for `serve`) or of the whole run
//! ([`Engine::finish`], for `observe`). Front ends own the engine and decide
//! when to sample, what to print and when to stop.

use std::{collections::BTreeMap, path::Path, time::Instant};

use conntrack_common::{Counter, OriginKey, OriginStats};

use super::{
    ObserveError, Options,
    attribution::{self, Attribution},
    build::{Ended, ProbeEnd, life_delta, origin_delta, probes_report, procfs_report},
    conntrack_here,
    cost::cpu_seconds,
    lifetimes::Lifetimes,
    occupancy,
    source::{self, Selected, Signals, Source},
    timeline,
};
use crate::{
    host::procfs::{self, StatTotals, TableSettings},
    probe::arming::{self, Action, Arming},
    probe::environment::Environment,
    probe::probes::{self, Probes, Snapshot},
    report::{Mode, Report, Settings},
};

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

/// The maps and the kernel's counters at one moment.
#[derive(Clone)]
pub(crate) struct Sample {
    pub(crate) at: Instant,
    pub(crate) snap: Option<Snapshot>,
    pub(crate) stat: Option<StatTotals>,
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

/// One interval: the samples at its two ends and the table as it is now.
pub(crate) struct Tick {
    pub(crate) prev: Sample,
    pub(crate) now: Sample,
    pub(crate) table: TableSettings,
}

impl Tick {
    /// The kernel's stat counters over the interval, when both reads worked.
    pub(crate) fn stat_delta(&self) -> Option<StatTotals> {
        self.now
            .stat
            .as_ref()
            .zip(self.prev.stat.as_ref())
            .map(|(a, b)| a.delta(b))
    }
}

type AlertRing = tokio::io::unix::AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>;

pub(crate) struct Engine {
    source: Source,
    plan: Option<probes::Plan>,
    mode: Mode,
    env: Environment,
    notices: Vec<String>,
    /// What the report says about a run stopped before it observed.
    interrupted: Option<String>,
    stopped_early: bool,
    /// Taken by [`Engine::finish`].
    attribution: Option<attribution::Session>,
    start: Start,
    occupancy: occupancy::Sampler,
    started: Instant,
    /// ctscope's CPU seconds when the observation began.
    cpu0: f64,
    tick: tokio::time::Interval,
    prev: Sample,
    /// The kernel's stat counters over the run, added up interval by
    /// interval (so that a per-CPU 32-bit counter may wrap between any two
    /// reads, not just once in the run), and the read they count to.
    stat_run: StatTotals,
    stat_last: Option<StatTotals>,
    timeline: timeline::Timeline,
    /// Attribution on demand (fentry mode, `--attribution auto`).
    on_demand: bool,
    arming: Arming,
    arm_failed: bool,
    /// Woken by the kernel when an alert comes while not armed: no polling.
    ring: Option<AlertRing>,
}

impl Engine {
    /// Attaches (or falls back) and takes the start of the run. Namespaces
    /// are snapshotted and, in procfs mode with `listen_events`, ctnetlink
    /// listeners subscribed, before it returns: traffic after it is seen.
    pub(crate) async fn open(
        opts: &Options,
        signals: &mut Signals,
        listen_events: bool,
    ) -> Result<Engine, ObserveError> {
        conntrack_here(Path::new(procfs::SYSCTL_DIR))
            .map_err(|why| ObserveError::NoConntrack { why })?;
        let env = Environment::gather();
        let mut notices = Vec::new();
        let Selected {
            source,
            plan,
            stopped_early,
            interrupted,
        } = source::select(opts, &env, signals, &mut notices, listen_events).await?;
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
        // Interrupted: no listener, the run is over; the namespaces are still
        // listed, which the report's netns rows need.
        let session = attribution::Session::start(
            listen_events && matches!(source, Source::Procfs) && interrupted.is_none(),
        );
        source::plan_notices(opts, plan.as_ref(), &mut notices);
        let start = Start::take(&source)?;
        let mut occupancy = occupancy::Sampler::new(opts.interval.as_secs_f64());
        occupancy.sample();
        let on_demand = matches!(&source, Source::Probes(p, _) if p.arms_on_demand());
        let mut engine = Engine {
            prev: Sample {
                at: Instant::now(),
                snap: start.snap.clone(),
                stat: start.stat.clone(),
            },
            ring: None,
            stat_run: StatTotals::default(),
            timeline: timeline::Timeline::default(),
            stat_last: start.stat.clone(),
            source,
            plan,
            mode,
            env,
            notices,
            interrupted,
            stopped_early: stopped_early.is_some(),
            attribution: Some(session),
            start,
            occupancy,
            // CPU time is counted over the observation only: loading BTF and
            // the programs is a one-off start-up cost, not what observing costs.
            cpu0: cpu_seconds(),
            started: Instant::now(),
            tick: {
                let mut t = tokio::time::interval_at(
                    tokio::time::Instant::now() + opts.interval,
                    opts.interval,
                );
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            },
            on_demand,
            arming: Arming::new(arming::HOLD),
            arm_failed: false,
        };
        engine.arm_start();
        Ok(engine)
    }

    /// The alert ring, and the first arming decision: the baseline of the
    /// alerts, and the table as it is at the start.
    fn arm_start(&mut self) {
        let Source::Probes(p, _) = &mut self.source else {
            return;
        };
        if !self.on_demand {
            return;
        }
        self.ring = p.take_alert_ring().and_then(|r| {
            // SAFETY: the ring owns its map fd (aya's MapData) and moves into
            // the AsyncFd, which drops it: the fd stays open and the same for
            // the AsyncFd's whole life, and as_raw_fd always returns it.
            unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(r, tokio::io::Interest::READABLE)
            }
            .map_err(|e| log::warn!("waiting on the alert ring: {e}; arming once per interval"))
            .ok()
        });
        let t = TableSettings::read();
        let pressure = arming::pressure(None, t.count, t.max);
        let action = self
            .arming
            .step(Instant::now(), p.alerts().ok(), pressure, p.armed());
        act(p, action, &mut self.arm_failed, &mut self.notices);
    }

    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    pub(crate) fn release(&self) -> &str {
        &self.env.release
    }

    /// The programs attached; `None` in procfs mode.
    pub(crate) fn attached(&self) -> Option<&[String]> {
        match &self.source {
            Source::Probes(p, _) => Some(&p.attached),
            Source::Procfs => None,
        }
    }

    /// A stop signal came while the programs loaded: nothing was observed.
    pub(crate) fn stopped_early(&self) -> bool {
        self.stopped_early
    }

    pub(crate) fn interrupted(&self) -> bool {
        self.interrupted.is_some()
    }

    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// Waits for the next interval and samples it; an alert from the kernel
    /// in between arms attribution and gives `None`. Cancel-safe: every
    /// await comes before any state changes.
    pub(crate) async fn next(&mut self) -> Option<Tick> {
        enum Woke {
            Tick,
            Alert,
        }
        let woke = {
            let Engine {
                tick,
                ring,
                arm_failed,
                ..
            } = self;
            tokio::select! {
                _ = tick.tick() => Woke::Tick,
                () = alert_drained(ring.as_mut()), if !*arm_failed => Woke::Alert,
            }
        };
        match woke {
            Woke::Tick => self.sample(),
            Woke::Alert => {
                if let Source::Probes(p, _) = &mut self.source {
                    let action =
                        self.arming
                            .step(Instant::now(), p.alerts().ok(), false, p.armed());
                    act(p, action, &mut self.arm_failed, &mut self.notices);
                }
                None
            }
        }
    }

    /// One interval's sample: the maps, occupancy, and the arming decision.
    /// A failed read skips one interval; the run goes on.
    fn sample(&mut self) -> Option<Tick> {
        let mut pressure = false;
        let mut unseen = false;
        let tick = match Sample::take(&self.source) {
            Ok(now) => {
                let table = TableSettings::read();
                let delta = now
                    .stat
                    .as_ref()
                    .zip(self.prev.stat.as_ref())
                    .map(|(a, b)| a.delta(b).columns);
                pressure = arming::pressure(delta.as_ref(), table.count, table.max);
                unseen = now
                    .snap
                    .as_ref()
                    .is_some_and(|s| s.counter(Counter::DeathsUnseen) > 0);
                if let Some(st) = &now.stat {
                    if let Some(last) = &self.stat_last {
                        self.stat_run.accumulate(&st.delta(last));
                    }
                    self.stat_last = Some(st.clone());
                }
                let prev = std::mem::replace(&mut self.prev, now.clone());
                let tick = Tick { prev, now, table };
                let t_s = tick.now.at.duration_since(self.started).as_secs_f64();
                self.timeline.push(timeline::point(&tick, t_s));
                Some(tick)
            }
            Err(e) => {
                log::warn!("skipping one interval: {e}");
                None
            }
        };
        self.occupancy.sample();
        if let Source::Probes(p, _) = &mut self.source
            && self.on_demand
        {
            // Unseen deaths need nf_conntrack_free for good, not attribution
            // (arming.rs).
            if unseen {
                p.keep_free();
            }
            let action = self
                .arming
                .step(Instant::now(), p.alerts().ok(), pressure, p.armed());
            act(p, action, &mut self.arm_failed, &mut self.notices);
        }
        tick
    }

    /// The run so far, the run going on: namespaces and containers as they
    /// are now (those gone are left out). With it, in probe modes that count
    /// them, the lifetimes it was built from (for histograms with buckets of
    /// one's own): one read of the kernel's map serves both.
    pub(crate) fn report(&self) -> Result<(Report, Option<Lifetimes>), ObserveError> {
        let last = Sample::take(&self.source)?;
        let (report, lifetimes) = self.build(&last, |session, origins, always| match session {
            Some(s) => s.peek(origins, always),
            None => Attribution::default(),
        })?;
        let counted = self.plan.as_ref().is_some_and(|p| p.lifetimes);
        Ok((report, lifetimes.filter(|_| counted)))
    }

    /// How old the containers' live entries of the last [`Engine::report`]
    /// were, when reports reuse recent dumps of the table (see
    /// [`Engine::reuse_live_dumps`]); `None` otherwise, or without containers.
    pub(crate) fn live_age(&self) -> Option<std::time::Duration> {
        self.attribution.as_ref()?.live_age()
    }

    /// Lets [`Engine::report`] reuse a recent dump of the table for the
    /// containers' live entries (`ctscope serve`: see
    /// `attribution::LIVE_REUSE_FACTOR`). The report of [`Engine::finish`]
    /// always dumps.
    pub(crate) fn reuse_live_dumps(&mut self) {
        if let Some(s) = self.attribution.as_mut() {
            s.reuse_live_dumps();
        }
    }

    /// Forgets the last dump (`ctscope serve`'s SIGHUP).
    pub(crate) fn forget_live_dump(&self) {
        if let Some(s) = self.attribution.as_ref() {
            s.forget_live_dump();
        }
    }

    /// Ends the run: the last sample, the report of the whole run, and the
    /// probes detached (dropped) when it returns.
    pub(crate) fn finish(mut self) -> Result<Report, ObserveError> {
        let last = Sample::take(&self.source)?;
        self.occupancy.sample();
        let session = self.attribution.take();
        self.build(&last, move |_, origins, always| match session {
            Some(s) => s.finish(origins, always),
            None => Attribution::default(),
        })
        .map(|(report, _)| report)
    }

    fn build(
        &self,
        last: &Sample,
        attribute: impl FnOnce(
            Option<&attribution::Session>,
            Option<&[(OriginKey, OriginStats)]>,
            bool,
        ) -> Attribution,
    ) -> Result<(Report, Option<Lifetimes>), ObserveError> {
        let lifetimes = match (&self.source, &self.start.life) {
            (Source::Probes(p, _), Some(before)) => {
                Some(Lifetimes::from_rows(&life_delta(&p.life_rows()?, before)))
            }
            _ => None,
        };
        let origins = match &self.source {
            Source::Probes(p, _) => Some(origin_delta(p.origins(), &self.start.origins)),
            Source::Procfs => None,
        };
        let mut notices = self.notices.clone();
        let end = self.ended(last, &mut notices);
        let mut report = match (&self.source, &last.snap, &self.start.snap, &self.plan) {
            (Source::Probes(p, _), Some(a), Some(b), Some(plan)) => {
                let att = attribute(
                    self.attribution.as_ref(),
                    origins.as_deref(),
                    p.armed_time().always,
                );
                probes_report(
                    ProbeEnd {
                        p,
                        plan,
                        a,
                        b,
                        misses0: &self.start.misses,
                        origins,
                        lifetimes: lifetimes.as_ref(),
                    },
                    att,
                    end,
                    notices,
                )
            }
            _ => procfs_report(
                last.stat.as_ref(),
                self.start.stat.as_ref(),
                attribute(self.attribution.as_ref(), None, false),
                self.interrupted.as_ref(),
                end,
                notices,
            ),
        };
        report.timeline = self.timeline.points();
        Ok((report, lifetimes))
    }

    /// What both reports share, read at `last`.
    fn ended(&self, last: &Sample, notices: &mut Vec<String>) -> Ended {
        let duration_s = self.started.elapsed().as_secs_f64();
        let settings1 = TableSettings::read();
        // The running totals, and the rise since the last interval's read.
        let kernel_stats = match (&last.stat, &self.stat_last) {
            (Some(a), Some(b)) if self.start.stat.is_some() => {
                let mut run = self.stat_run.clone();
                run.accumulate(&a.delta(b));
                run.columns
            }
            _ => Default::default(),
        };
        let settings = Settings {
            buckets: settings1.buckets,
            max: settings1.max,
            count_start: self.start.settings.count,
            count_end: settings1.count,
            slab_object_size: procfs::slab_object_size(),
            slab_size: procfs::slab_size(),
            timeouts: procfs::timeouts(),
            ram_bytes: procfs::ram_bytes(),
            cpus: procfs::cpus(),
        };
        if self.occupancy.dropped() > 0 {
            notices.push(format!(
                "more than {} namespaces held entries during the run: {} samples of the emptiest were not kept in occupancy.per_netns (the peaks are kept)",
                occupancy::PER_NETNS_MAX,
                self.occupancy.dropped()
            ));
        }
        Ended {
            mode: self.mode,
            release: self.env.release.clone(),
            duration_s,
            settings,
            kernel_stats,
            occupancy: self.occupancy.report(),
            cpu0: self.cpu0,
        }
    }
}

/// Waits until the alert ring is readable and drains it (wake-ups only: what
/// counts is ALERTS). An error waiting is logged and the ring is then never
/// ready again; no ring: never.
async fn alert_drained(ring: Option<&mut AlertRing>) {
    let Some(r) = ring else {
        return std::future::pending().await;
    };
    match r.readable_mut().await {
        Ok(mut guard) => {
            while guard.get_inner_mut().next().is_some() {}
            guard.clear_ready();
        }
        Err(e) => {
            log::warn!("waiting on the alert ring: {e}");
            std::future::pending::<()>().await;
        }
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
