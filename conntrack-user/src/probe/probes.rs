//! Loading and attaching the eBPF programs, and reading their maps.
//!
//! Two modes over one set of maps. **fentry** (where the kernel lets tracing
//! programs attach to conntrack: module BTF, 5.11+, or conntrack built in):
//! fentry/fexit programs, loaded by ctscope itself (tracing.rs), whose
//! dispatch is a BPF trampoline and whose reads of the entry are plain
//! loads. **kprobe** (5.10, kernels without BTF for conntrack, or where
//! tracing programs are refused): kprobes and kretprobes, loaded by aya.
//!
//! Return probes are attached before entry probes: a return without its entry
//! is harmless (counted and ignored), while an entry without its return would
//! leave per-CPU state behind. Dropping `Probes` detaches every program (aya
//! owns the kprobe links and their fds, [`Tracing`] the others), on every
//! exit path.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::KProbe,
};
use conntrack_common::{
    ChainHist, Config, Counter, LatencyHist, OriginKey, OriginStats, StatsBlock, life,
    names::{maps as map, programs as prog},
};
use thiserror::Error;

mod error;
mod load;
mod read;
mod targets;
mod trial;

pub use error::{ProbeError, chain, verifier_summary};
use load::{btf_object, kprobe, load_object, load_program, load_tracing, set_armed, take_array};
pub use read::Snapshot;
use targets::{FREE_FENTRY, LOOKUPS, every_kprobe, t};
pub use targets::{
    INSERT_PROGRAMS, Kind, TRACED_FUNCTIONS, Target, every_target, failed_program,
    is_lookup_program, on_demand, targets,
};
pub use trial::{try_fentry, try_kprobe, try_lookups};

use crate::{
    probe::object,
    probe::offsets::Offsets,
    probe::tracing::{self, Hook, Relocated, Tracing, TracingError},
};

/// A program the kernel accepted, as the kernel describes it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Loaded {
    pub program: String,
    /// The kernel keeps the first 15 bytes of the name.
    pub kernel_name: String,
    pub kernel_id: u32,
    /// Instructions the verifier processed (kernels 5.16+).
    pub verified_instructions: Option<u32>,
    /// How long the load (verification) took, as seen from here.
    pub verify_seconds: f64,
    /// Loads a pending signal interrupted (EAGAIN) before this one passed.
    pub interrupted: u32,
}

/// Where the tracing programs attach: the kernel BTF object that describes
/// conntrack's functions, and their ids in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracingTargets {
    /// `nf_conntrack` (a module: its split BTF) or `vmlinux` (built in).
    pub object: String,
    /// BTF `FUNC` ids by function name, in that object's numbering.
    pub ids: BTreeMap<String, u32>,
}

/// What to load: offsets and the kernel features the programs must know of.
#[derive(Debug, Clone)]
pub struct Plan {
    pub offsets: Offsets,
    pub has_chain_limit: bool,
    pub clash: bool,
    pub early_drop: bool,
    /// `nf_ct_delete` and `nf_conntrack_free` can be probed: lifetimes.
    pub lifetimes: bool,
    /// `--lookups`: probe `__nf_conntrack_find_get` (per packet).
    pub lookups: bool,
    /// kallsyms addresses of `nf_conntrack_hash` and `nf_conntrack_htable_size`
    /// (0: unknown; lookups then have no chain lengths).
    pub ct_hash_addr: u64,
    pub htable_size_addr: u64,
    /// Buckets of the lifetime slots (`LIFE_SLOTS`), a power of two.
    pub life_buckets: u32,
    /// Keep calls in flight per CPU (the kernel cannot preempt them) rather
    /// than per task (conntrack-ebpf/src/frames.rs; kprobes only).
    pub per_cpu_calls: bool,
    /// Turn the kernel's bpf_stats on while attached (`observe --cost`).
    /// Global to the host: every BPF program then pays two clock reads per
    /// run (kernel/bpf/syscall.c `bpf_enable_stats`, 5.8+), so off unless
    /// asked for.
    pub stats: bool,
    /// fentry mode: where its programs attach. None: kprobe mode.
    pub fentry: Option<TracingTargets>,
    /// When the attribution programs run (fentry mode; kprobe mode keeps
    /// them attached).
    pub attribution: Attribution,
}

/// When the programs that attribute refusals to their source run: the exits
/// of `__nf_conntrack_alloc` and `__nf_conntrack_confirm`, and
/// `nf_conntrack_free` (entries never inserted). They fire for every new
/// connection, and are needed only while connections are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Attribution {
    /// Attached while refusals are likely or happening (fentry mode):
    /// the table near full, long chains, early drops, clashes, refusals in
    /// the kernel's counters; detached after a quiet minute.
    Auto,
    /// Attached for the whole run.
    Always,
    /// Never attached: refusals are counted by reason, not by source.
    Off,
}

/// A chain of this many nodes after an insert arms attribution: the
/// kernel's limit is at least 50 existing nodes since v6.3 (c77737b736ce,
/// backported to 6.1.y and 5.15.y); on 5.15 kernels without the backport
/// (8..31) the kernel's own `chaintoolong` count arms it instead.
pub const CHAIN_ALERT: u32 = 40;

use Kind::{Fentry, Fexit, Kprobe as Kp, Kretprobe as Kret};

/// A loaded program: aya's (kprobes) or ctscope's (tracing.rs).
enum Attached {
    Aya(&'static str),
    Tracing(Tracing),
}

/// Whether the attribution programs are attached, and since when.
struct Arming {
    /// Attached for the whole run (kprobe mode, `--attribution always`).
    always: bool,
    since: Option<Instant>,
    /// Time armed before `since`.
    total: std::time::Duration,
    arms: u32,
    /// `ARMED`: tells the programs (conntrack-ebpf counters.rs `armed`).
    map: Array<MapData, u32>,
}

/// How long attribution ran, for the report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ArmedTime {
    /// The whole run.
    pub always: bool,
    pub seconds: f64,
    /// Times it was attached.
    pub arms: u32,
}

pub struct Probes {
    // Field order matters for drop: the tracing links and programs, then
    // the maps and aya's programs with `ebpf`.
    tracing: Vec<Tracing>,
    /// Loaded, attached only while armed ([`Probes::arm`]).
    on_demand: Vec<(Target, Tracing)>,
    /// `fe_free` stays attached ([`Probes::keep_free`]).
    keep_free: bool,
    arming: Arming,
    /// `ALERTS`: events that make attribution worth arming (conntrack-ebpf).
    alerts: Array<MapData, u64>,
    /// `ALERT_RING`: the wake-ups of those events while not armed, until
    /// [`Probes::take_alert_ring`].
    alert_ring: Option<RingBuf<MapData>>,
    /// Kernel-side diagnostics (aya-log), forwarded to env_logger.
    logger: Option<std::sync::Mutex<aya_log::EbpfLogger<&'static dyn log::Log>>>,
    stats_map: PerCpuArray<MapData, StatsBlock>,
    life_hist: Array<MapData, life::Hist>,
    lookup_latency: PerCpuArray<MapData, LatencyHist>,
    lookup_chain: PerCpuArray<MapData, ChainHist>,
    lookup_max: PerCpuArray<MapData, u64>,
    origins: PerCpuHashMap<MapData, OriginKey, OriginStats>,
    ebpf: Ebpf,
    /// Keeps the kernel's bpf_stats (run time, run count) on while it lives
    /// (`BPF_ENABLE_STATS`, 5.8+); None when the kernel refused.
    stats: Option<OwnedFd>,
    pub attached: Vec<String>,
    /// Programs attached, for their bpf_stats: aya's by name, or an index
    /// into `tracing`.
    programs: Vec<(&'static str, Option<usize>)>,
    /// The lookup programs are attached (their maps are read).
    lookups: bool,
}

/// Whether the attribution programs run for the whole observation: kprobe
/// mode (its return probes cannot be attached mid-call), or `--attribution
/// always`.
fn attributed_from_start(plan: &Plan) -> bool {
    plan.fentry.is_none() || plan.attribution == Attribution::Always
}

/// What [`Probes::attach_all`] returns.
type AttachedAll = (Ebpf, Vec<(Target, Attached)>, Vec<(Target, Tracing)>);

impl Plan {
    /// The programs' load-time settings (conntrack-common `Config`, the
    /// eBPF crate's `CONFIG` global). Offsets are destructured in full so
    /// that a new one fails to compile here until it has a field.
    pub fn config(&self) -> Config {
        let Offsets {
            source: _,
            nf_conn_size: _,
            off_tuplehash,
            tuplehash_size,
            off_hnnode,
            off_next,
            off_pprev,
            off_tuple_dir,
            off_status,
            off_skb_nfct,
            off_ct_net,
            off_net_inum,
            off_th_tuple,
            off_tuple_src,
            off_tuple_l3num,
            off_tuple_protonum,
            off_ct_timeout,
            off_ct_tcp_state,
            off_ct_ext,
            off_ext_len,
        } = self.offsets;
        Config {
            addr_ct_hash: self.ct_hash_addr,
            addr_ct_htable_size: self.htable_size_addr,
            off_tuplehash,
            tuplehash_size,
            off_hnnode,
            off_next,
            off_pprev,
            off_tuple_dir,
            off_status,
            off_skb_nfct,
            off_ct_net,
            off_net_inum,
            off_th_tuple,
            off_tuple_src,
            off_tuple_l3num,
            off_tuple_protonum,
            off_ct_timeout,
            off_ct_tcp_state,
            off_ct_ext,
            off_ext_len,
            has_chain_limit: u32::from(self.has_chain_limit),
            clash_probed: u32::from(self.clash),
            early_drop_probed: u32::from(self.early_drop),
            per_cpu_calls: u32::from(self.per_cpu_calls),
            life_bucket_mask: self.life_buckets.saturating_sub(1),
            chain_alert: CHAIN_ALERT,
        }
    }
}

impl Probes {
    /// Loads every kprobe program through the verifier without attaching
    /// any (what the host test does on a kernel without kprobes; tracing
    /// programs need a kernel that permits them, which the lab has), and
    /// returns what the kernel says about each loaded program.
    pub fn load_only(plan: &Plan) -> Result<Vec<Loaded>, ProbeError> {
        Self::load_only_until(plan, &AtomicBool::new(false))
    }

    /// [`Probes::load_only`], ended early by `stop` as [`Probes::attach`] is.
    pub fn load_only_until(plan: &Plan, stop: &AtomicBool) -> Result<Vec<Loaded>, ProbeError> {
        Self::verify_object(&mut Self::object(plan)?, stop)
    }

    /// The object, parsed, its maps created and globals set, no program
    /// loaded yet. (aya probes kernel features here, by loading tiny
    /// programs: a signal then can make it conclude a feature is missing.)
    pub fn object(plan: &Plan) -> Result<Ebpf, ProbeError> {
        load_object(plan)
    }

    /// Loads (verifies) every kprobe program of an [`Probes::object`].
    pub fn verify_object(ebpf: &mut Ebpf, stop: &AtomicBool) -> Result<Vec<Loaded>, ProbeError> {
        every_kprobe()
            .map(|t| load_program(ebpf, t.prog, stop))
            .collect()
    }

    /// Loads and attaches the programs of `plan`. `stop` set (by whoever
    /// interrupts this thread with a signal) ends the loading early.
    pub fn attach(plan: &Plan, stop: &AtomicBool) -> Result<Probes, ProbeError> {
        let (mut ebpf, loaded, on_demand) = Self::attach_all(plan, stop)?;
        let stats = if plan.stats {
            match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
                Ok(fd) => Some(fd),
                Err(e) => {
                    log::warn!(
                        "the kernel's bpf_stats are unavailable (probe cost not measured): {e}"
                    );
                    None
                }
            }
        } else {
            None
        };
        // Without the log map the probes still work; say so and go on.
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(std::sync::Mutex::new(l)),
            Err(e) => {
                log::warn!("kernel-side diagnostics unavailable: {e}");
                None
            }
        };
        let origins = ebpf
            .take_map(map::ORIGINS)
            .ok_or(ProbeError::MissingMap(map::ORIGINS))?;
        let life_hist = ebpf
            .take_map(map::LIFE_HIST)
            .ok_or(ProbeError::MissingMap(map::LIFE_HIST))?;
        let map_err = |what| move |source| ProbeError::Map { what, source };
        let armed_map: Array<MapData, u32> = ebpf
            .take_map(map::ARMED)
            .ok_or(ProbeError::MissingMap(map::ARMED))
            .and_then(|m| Array::try_from(m).map_err(map_err(map::ARMED)))?;
        // Set before anything was attached (`attach_all`).
        let always = attributed_from_start(plan);
        let alerts: Array<MapData, u64> = ebpf
            .take_map(map::ALERTS)
            .ok_or(ProbeError::MissingMap(map::ALERTS))
            .and_then(|m| Array::try_from(m).map_err(map_err(map::ALERTS)))?;
        let alert_ring = ebpf
            .take_map(map::ALERT_RING)
            .ok_or(ProbeError::MissingMap(map::ALERT_RING))
            .and_then(|m| RingBuf::try_from(m).map_err(map_err(map::ALERT_RING)))?;
        let mut tracing = Vec::new();
        let mut programs = Vec::new();
        let mut attached = Vec::new();
        for (target, l) in loaded {
            attached.push(format!("{}:{}", target.kind.name(), target.func));
            match l {
                Attached::Aya(name) => programs.push((name, None)),
                Attached::Tracing(tr) => {
                    programs.push((target.prog, Some(tracing.len())));
                    tracing.push(tr);
                }
            }
        }
        Ok(Probes {
            tracing,
            on_demand,
            keep_free: false,
            arming: Arming {
                always,
                since: None,
                total: std::time::Duration::ZERO,
                arms: 0,
                map: armed_map,
            },
            alerts,
            alert_ring: Some(alert_ring),
            logger,
            stats_map: take_array(&mut ebpf, map::STATS)?,
            life_hist: Array::try_from(life_hist).map_err(|source| ProbeError::Map {
                what: map::LIFE_HIST,
                source,
            })?,
            lookup_latency: take_array(&mut ebpf, map::LOOKUP_LATENCY)?,
            lookup_chain: take_array(&mut ebpf, map::CHAIN_LOOKUP)?,
            lookup_max: take_array(&mut ebpf, map::LOOKUP_MAX_NS)?,
            origins: PerCpuHashMap::try_from(origins).map_err(|source| ProbeError::Map {
                what: map::ORIGINS,
                source,
            })?,
            ebpf,
            stats,
            attached,
            lookups: programs.iter().any(|(p, _)| is_lookup_program(p)),
            programs,
        })
    }

    /// Loads the object and attaches every target of `plan`, in order: the
    /// object, the programs attached, and the on-demand programs loaded but
    /// not attached.
    fn attach_all(plan: &Plan, stop: &AtomicBool) -> Result<AttachedAll, ProbeError> {
        let mut ebpf = load_object(plan)?;
        // Armed before any program is attached: an `early_drop` or clash
        // exit that ran while `ARMED` was still 0 would leave no flag for
        // the allocation's or confirmation's exit, which would then take
        // that refusal for another reason as well.
        if attributed_from_start(plan) {
            set_armed(&mut ebpf, 1)?;
        }
        // Relocated before any map is taken out of `ebpf`.
        let tracing_ctx = match &plan.fentry {
            Some(targets) => {
                let rel = Relocated::new(&ebpf, object::object()?).map_err(|source| {
                    ProbeError::Tracing {
                        program: None,
                        what: "preparing the tracing programs".into(),
                        source,
                    }
                })?;
                Some((rel, targets, btf_object(targets)?))
            }
            None => None,
        };
        let mut out = Vec::new();
        for target in targets(plan) {
            if let (Some(_), Some((rel, targets, btf_obj))) = (target.kind.hook(), &tracing_ctx) {
                let (mut tr, _) = load_tracing(
                    rel,
                    &target,
                    targets,
                    btf_obj.as_ref().map(AsFd::as_fd),
                    stop,
                )?;
                tr.attach().map_err(|source| ProbeError::Tracing {
                    program: Some(target.prog),
                    what: format!(
                        "attaching {} to {} ({})",
                        target.prog,
                        target.func,
                        target.kind.name()
                    ),
                    source,
                })?;
                out.push((target, Attached::Tracing(tr)));
            } else {
                load_program(&mut ebpf, target.prog, stop)?;
                let p = kprobe(&mut ebpf, target.prog)?;
                p.attach(target.func, 0)
                    .map_err(|source| ProbeError::Program {
                        program: Some(target.prog),
                        what: format!("attaching {} to {}", target.prog, target.func),
                        source,
                    })?;
                out.push((target, Attached::Aya(target.prog)));
            }
        }
        // Verified now, attached when armed: arming is then an attach.
        let mut later = Vec::new();
        if let Some((rel, targets, btf_obj)) = &tracing_ctx {
            for target in on_demand(plan) {
                let (tr, _) = load_tracing(
                    rel,
                    &target,
                    targets,
                    btf_obj.as_ref().map(AsFd::as_fd),
                    stop,
                )?;
                later.push((target, tr));
            }
        }
        Ok((ebpf, out, later))
    }

    /// Whether [`Probes::arm`] has anything to attach.
    pub fn arms_on_demand(&self) -> bool {
        !self.on_demand.is_empty()
    }

    pub fn armed(&self) -> bool {
        self.arming.always || self.arming.since.is_some()
    }

    /// Tells the programs, then attaches the attribution programs (exits
    /// first): an `early_drop` or clash exit that runs in between leaves its
    /// flag, which the allocation's or confirmation's exit takes once
    /// attached (or a purge at the next disarm). A failure undoes it all and
    /// is returned.
    pub fn arm(&mut self) -> Result<(), ProbeError> {
        if self.armed() || self.on_demand.is_empty() {
            return Ok(());
        }
        self.arming
            .map
            .set(0, 1, 0)
            .map_err(|source| ProbeError::Map {
                what: map::ARMED,
                source,
            })?;
        for i in 0..self.on_demand.len() {
            let (target, tr) = &mut self.on_demand[i];
            let target = *target;
            if let Err(source) = tr.attach() {
                let keep_free = self.keep_free;
                for (t, tr) in &mut self.on_demand[..i] {
                    if !(keep_free && t.prog == FREE_FENTRY.prog) {
                        tr.detach();
                    }
                }
                self.clear_armed();
                return Err(ProbeError::Tracing {
                    program: Some(target.prog),
                    what: format!(
                        "attaching {} to {} ({})",
                        target.prog,
                        target.func,
                        target.kind.name()
                    ),
                    source,
                });
            }
        }
        self.arming.since = Some(Instant::now());
        self.arming.arms += 1;
        log::debug!("attribution armed");
        Ok(())
    }

    /// Detaches the attribution programs, then tells the programs (the
    /// other order would let an allocation's exit, still attached, take a
    /// table-full refusal whose flag was not left for another reason), then
    /// drops the flags left for programs no longer attached.
    pub fn disarm(&mut self) {
        let Some(since) = self.arming.since.take() else {
            return;
        };
        let keep_free = self.keep_free;
        for (t, tr) in self.on_demand.iter_mut().rev() {
            if !(keep_free && t.prog == FREE_FENTRY.prog) {
                tr.detach();
            }
        }
        self.clear_armed();
        self.arming.total += since.elapsed();
        log::debug!("attribution disarmed");
    }

    /// Clears `ARMED` and the flags the exits of `early_drop` and
    /// `nf_ct_resolve_clash` left for the attribution programs (none is
    /// taken any more). Only at a disarm: a few hundred entries at most.
    fn clear_armed(&mut self) {
        if let Err(e) = self.arming.map.set(0, 0, 0) {
            log::warn!("clearing ARMED: {e}");
        }
        for name in [map::EARLY_DROP_FAILED, map::CLASH_FAILED_SKB] {
            let Some(map) = self.ebpf.map_mut(name) else {
                continue;
            };
            let Ok(mut flags) = aya::maps::HashMap::<&mut MapData, u64, u32>::try_from(map) else {
                continue;
            };
            let keys: Vec<u64> = flags
                .keys()
                .filter_map(Result::ok)
                .take(conntrack_common::TASK_SLOTS as usize)
                .collect();
            for k in keys {
                let _ = flags.remove(&k);
            }
        }
        if let Some(map) = self.ebpf.map_mut(map::FLAG_COUNTS)
            && let Ok(mut counts) = Array::<&mut MapData, u64>::try_from(map)
        {
            // conntrack-ebpf maps.rs `DROP_FLAGS`.
            let _ = counts.set(1, 0, 0);
        }
    }

    /// Keeps `nf_conntrack_free`'s program attached from now on, armed or
    /// not: deaths went unseen (a kernel that inlines `nf_ct_delete`
    /// somewhere), and only that program sees them. Whether it is attached.
    pub fn keep_free(&mut self) -> bool {
        if self.keep_free {
            return true;
        }
        let Some((_, tr)) = self
            .on_demand
            .iter_mut()
            .find(|(t, _)| t.prog == FREE_FENTRY.prog)
        else {
            return false;
        };
        match tr.attach() {
            Ok(()) => {
                self.keep_free = true;
                log::debug!("{} kept attached: deaths went unseen", FREE_FENTRY.prog);
                true
            }
            Err(e) => {
                log::warn!("attaching {}: {e}", FREE_FENTRY.prog);
                false
            }
        }
    }

    /// How long attribution has run so far.
    pub fn armed_time(&self) -> ArmedTime {
        let now = self
            .arming
            .since
            .map_or(std::time::Duration::ZERO, |s| s.elapsed());
        ArmedTime {
            always: self.arming.always,
            seconds: (self.arming.total + now).as_secs_f64(),
            arms: self.arming.arms,
        }
    }
}

#[cfg(test)]
mod tests;
