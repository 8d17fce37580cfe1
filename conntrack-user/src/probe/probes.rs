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

use crate::{
    probe::object,
    probe::offsets::Offsets,
    probe::tracing::{self, Hook, Relocated, Tracing, TracingError},
};

#[derive(Debug, Error)]
pub enum ProbeError {
    #[error(transparent)]
    NoObject(#[from] object::NoObject),
    #[error("loading the eBPF object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("{what}: {source}")]
    Program {
        /// The program, when one failed (not the object or a map).
        program: Option<&'static str>,
        what: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {what}: {source}")]
    Map {
        what: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("{what}: {source}")]
    Tracing {
        /// The program, when one failed.
        program: Option<&'static str>,
        what: String,
        #[source]
        source: TracingError,
    },
    #[error("interrupted by a signal while the kernel verified {0}: nothing attached")]
    Interrupted(&'static str),
}

/// Renders an error with its whole source chain, for one-line reasons. A
/// verifier log (thousands of lines for a complex program) is cut to what the
/// kernel concluded: its error message and statistics, with what the errno
/// means for a program load. The full log goes to the debug log.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = String::new();
    let mut cur = Some(e);
    while let Some(c) = cur {
        let t = match (
            c.downcast_ref::<ProbeError>(),
            c.downcast_ref::<aya::programs::ProgramError>(),
            c.downcast_ref::<TracingError>(),
        ) {
            // Its Display repeats the source's (the whole log): its own part only.
            (Some(ProbeError::Program { what, .. } | ProbeError::Tracing { what, .. }), _, _) => {
                what.clone()
            }
            (
                _,
                Some(aya::programs::ProgramError::LoadError {
                    io_error,
                    verifier_log,
                }),
                _,
            ) => {
                let log = verifier_log.to_string();
                log::debug!("verifier log:\n{log}");
                load_failure(io_error, &log)
            }
            (_, _, Some(TracingError::Load { source, log })) => {
                log::debug!("verifier log:\n{log}");
                load_failure(source, log)
            }
            _ => c.to_string(),
        };
        if !s.contains(&t) {
            if !s.is_empty() {
                s.push_str(": ");
            }
            s.push_str(&t);
        }
        if matches!(
            c.downcast_ref::<aya::programs::ProgramError>(),
            Some(aya::programs::ProgramError::LoadError { .. })
        ) || matches!(
            c.downcast_ref::<TracingError>(),
            Some(TracingError::Load { .. })
        ) {
            break;
        }
        cur = c.source();
    }
    crate::text::escape(&s, MAX_REASON)
}

/// Longest reason kept (a verifier message and its statistics fit).
const MAX_REASON: usize = 1500;

/// One line on a failed `BPF_PROG_LOAD`: the errno, what it means there, and
/// the verifier's own conclusion.
fn load_failure(io_error: &std::io::Error, log: &str) -> String {
    // Meanings from kernel/bpf/verifier.c and syscall.c (v7.3.4).
    let meaning = match io_error.raw_os_error() {
        Some(libc::EAGAIN) => {
            " (a signal was pending: do_check() stops verifying and returns -EAGAIN, which is why libbpf retries)"
        }
        Some(libc::E2BIG) => " (beyond the verifier's complexity limits)",
        Some(libc::EPERM) => {
            " (refused before the verifier ran: this kernel or its security policy does not permit this program type)"
        }
        Some(libc::EACCES) => " (the verifier rejected the program)",
        Some(libc::ENOSPC) => " (the verifier log did not fit)",
        _ => "",
    };
    let summary = verifier_summary(log);
    if summary.is_empty() {
        format!("the BPF_PROG_LOAD syscall returned {io_error}{meaning}")
    } else {
        format!(
            "the BPF_PROG_LOAD syscall returned {io_error}{meaning}; the verifier said: {summary}"
        )
    }
}

/// The verifier's conclusion in a log: the message lines after the last
/// instruction trace, and its `processed N insns` line; empty when the log
/// has neither (a load refused before verification, or interrupted).
pub fn verifier_summary(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    // A register dump (`R1=ctx() R10=fp0`, `R6_w=...`), not a message that
    // names a register (`R2 !read_ok`, `R1 invalid mem access 'scalar'`).
    let is_dump = |l: &str| {
        let Some(rest) = l.strip_prefix('R') else {
            return false;
        };
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        digits > 0 && {
            let after = &rest[digits..];
            after.starts_with('=') || after.starts_with("_w=") || after.starts_with("_rw=")
        }
    };
    let is_trace = |l: &str| {
        let digits = l.bytes().take_while(u8::is_ascii_digit).count();
        (digits > 0 && l[digits..].starts_with(':'))
            || l.starts_with(';')
            || is_dump(l)
            || l.starts_with("frame")
            || l.starts_with("caller")
            || l.starts_with("callee")
            || l.starts_with("returning from")
            || l.starts_with("to caller")
            || l.starts_with("from ")
    };
    let tail_start = lines.iter().rposition(|l| is_trace(l)).map_or(0, |i| i + 1);
    let mut kept: Vec<&str> = lines[tail_start..]
        .iter()
        .copied()
        .filter(|l| {
            !(l.starts_with("verification time")
                || l.starts_with("stack depth")
                || l.starts_with("subprog "))
        })
        .take(4)
        .collect();
    if kept.is_empty() {
        kept.extend(lines.iter().rev().find(|l| l.starts_with("processed ")));
    }
    kept.join("; ")
}

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

/// How a program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Kprobe,
    Kretprobe,
    Fentry,
    Fexit,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Kprobe => "kprobe",
            Kind::Kretprobe => "kretprobe",
            Kind::Fentry => "fentry",
            Kind::Fexit => "fexit",
        }
    }

    fn hook(self) -> Option<Hook> {
        match self {
            Kind::Fentry => Some(Hook::Entry),
            Kind::Fexit => Some(Hook::Exit),
            Kind::Kprobe | Kind::Kretprobe => None,
        }
    }
}

/// One program and where it attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub prog: &'static str,
    pub kind: Kind,
    pub func: &'static str,
}

const fn t(prog: &'static str, kind: Kind, func: &'static str) -> Target {
    Target { prog, kind, func }
}

use Kind::{Fentry, Fexit, Kprobe as Kp, Kretprobe as Kret};

/// Every group in both modes: (kprobe mode, fentry mode), return probes
/// first within each (see the module comment).
const REQUIRED: (&[Target], &[Target]) = (
    &[
        t(prog::CONFIRM_RET, Kret, "__nf_conntrack_confirm"),
        t(prog::ALLOC_RET, Kret, "__nf_conntrack_alloc"),
        t(prog::CONFIRM, Kp, "__nf_conntrack_confirm"),
        t(prog::ALLOC, Kp, "__nf_conntrack_alloc"),
    ],
    // An fexit program sees the call's arguments and its result.
    &[
        t(prog::FX_CONFIRM, Fexit, "__nf_conntrack_confirm"),
        t(prog::FX_ALLOC, Fexit, "__nf_conntrack_alloc"),
    ],
);
/// Inserts where the table's address is known (`nf_conntrack_hash` in
/// kallsyms): one kprobe walks both buckets from their heads
/// (conntrack-ebpf/src/insert.rs). In fentry mode the exit walks from the
/// entry's own nodes with direct loads, no helper call: cheaper than the
/// entry's three reads of the table.
const INSERT_AT_ENTRY: (&[Target], &[Target]) = (
    &[t(prog::INSERT, Kp, "__nf_conntrack_hash_insert")],
    &[t(prog::FX_INSERT, Fexit, "__nf_conntrack_hash_insert")],
);
/// Inserts otherwise: the return walks from the entry's own nodes.
const INSERT_AT_RETURN: (&[Target], &[Target]) = (
    &[
        t(prog::HASH_INSERT_RET, Kret, "__nf_conntrack_hash_insert"),
        t(prog::HASH_INSERT, Kp, "__nf_conntrack_hash_insert"),
    ],
    &[t(prog::FX_INSERT, Fexit, "__nf_conntrack_hash_insert")],
);
/// The programs that count inserts (and walk their chains): a run of one of
/// them the kernel skipped (`recursion_misses`) is an insert not counted.
pub const INSERT_PROGRAMS: [&str; 4] = [
    prog::INSERT,
    prog::HASH_INSERT_RET,
    prog::FE_INSERT,
    prog::FX_INSERT,
];
const CLASH: (&[Target], &[Target]) = (
    &[t(prog::RESOLVE_CLASH_RET, Kret, "nf_ct_resolve_clash")],
    &[t(prog::FX_RESOLVE_CLASH, Fexit, "nf_ct_resolve_clash")],
);
const EARLY_DROP: (&[Target], &[Target]) = (
    &[
        t(prog::EARLY_DROP_RET, Kret, "early_drop"),
        t(prog::EARLY_DROP, Kp, "early_drop"),
    ],
    &[
        t(prog::FX_EARLY_DROP, Fexit, "early_drop"),
        t(prog::FE_EARLY_DROP, Fentry, "early_drop"),
    ],
);
/// Deaths: the free probe first, so that no tracked entry outlives its slot.
/// In fentry mode the free program is an attribution program (below).
const LIFETIMES: (&[Target], &[Target]) = (
    &[
        t(prog::CT_FREE, Kp, "nf_conntrack_free"),
        t(prog::CT_DELETE, Kp, "nf_ct_delete"),
    ],
    &[t(prog::FE_DELETE, Fentry, "nf_ct_delete")],
);
/// fentry mode's free program: entries never inserted, and deaths
/// `nf_ct_delete` was not called out of line for.
const FREE_FENTRY: Target = t(prog::FE_FREE, Fentry, "nf_conntrack_free");
/// Per packet, opt-in: kprobes in both modes (a latency needs the entry's
/// time, which the return needs).
const LOOKUPS: &[Target] = &[
    t(prog::LOOKUP_RET, Kret, crate::host::kernel::LOOKUP_TARGET),
    t(prog::LOOKUP, Kp, crate::host::kernel::LOOKUP_TARGET),
];

/// The functions fentry mode needs BTF ids for.
pub const TRACED_FUNCTIONS: [&str; 7] = [
    "__nf_conntrack_confirm",
    "__nf_conntrack_alloc",
    "__nf_conntrack_hash_insert",
    "nf_ct_resolve_clash",
    "early_drop",
    "nf_conntrack_free",
    "nf_ct_delete",
];

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

/// A loader that has not parsed vmlinux BTF. aya 0.14's `EbpfLoader::new()`
/// parses `/sys/kernel/btf/vmlinux` (for CO-RE relocations, which ctscope
/// does not use: its offsets come in a global) before `.btf(None)` can say
/// so: about 15 MiB held while it loads, most of ctscope's peak memory. So
/// the loader is made where that file does not exist: on a thread of its
/// own that unshared its filesystem context (`CLONE_FS`: root and cwd, of
/// that thread alone) and made `/proc` its root (`/proc/sys/kernel/btf`
/// exists on no kernel). Nothing else changes; the thread ends at once.
/// Where that cannot be done, the ordinary loader.
fn loader() -> EbpfLoader<'static> {
    let without_btf = std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare and chroot take no pointers but a
            // NUL-terminated literal; they change this thread's own
            // filesystem context only (CLONE_FS unshared first).
            unsafe {
                if libc::unshare(libc::CLONE_FS) != 0 || libc::chroot(c"/proc".as_ptr()) != 0 {
                    return None;
                }
            }
            Some(EbpfLoader::new())
        })
        .join()
        .ok()
        .flatten()
    });
    without_btf.unwrap_or_else(|| {
        log::debug!("the loader could not be made without vmlinux BTF");
        EbpfLoader::new()
    })
}

/// Whether the attribution programs run for the whole observation: kprobe
/// mode (its return probes cannot be attached mid-call), or `--attribution
/// always`.
fn attributed_from_start(plan: &Plan) -> bool {
    plan.fentry.is_none() || plan.attribution == Attribution::Always
}

/// Sets `ARMED` (conntrack-ebpf counters.rs `armed`) in a loaded object.
fn set_armed(ebpf: &mut Ebpf, v: u32) -> Result<(), ProbeError> {
    let map = ebpf
        .map_mut(map::ARMED)
        .ok_or(ProbeError::MissingMap(map::ARMED))?;
    let mut armed: Array<&mut MapData, u32> =
        Array::try_from(map).map_err(|source| ProbeError::Map {
            what: map::ARMED,
            source,
        })?;
    armed.set(0, v, 0).map_err(|source| ProbeError::Map {
        what: map::ARMED,
        source,
    })
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

fn load_object(plan: &Plan) -> Result<Ebpf, ProbeError> {
    let config = plan.config();
    loader()
        // The programs use no CO-RE relocations: offsets come in `CONFIG`.
        .btf(None)
        .map_max_entries(map::LIFE_SLOTS, plan.life_buckets)
        // Into `.rodata`, which aya creates as a frozen read-only map; the
        // tracing programs (tracing.rs) are relocated against that same map.
        .override_global(Config::GLOBAL, &config, true)
        .load(object::object()?)
        .map_err(ProbeError::Load)
}

fn kprobe<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut KProbe, ProbeError> {
    ebpf.program_mut(name)
        .ok_or(ProbeError::MissingProgram(name))?
        .try_into()
        .map_err(|source| ProbeError::Program {
            program: Some(name),
            what: format!("program {name}"),
            source,
        })
}

fn take_array<V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<PerCpuArray<MapData, V>, ProbeError> {
    let map = ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))?;
    PerCpuArray::try_from(map).map_err(|source| ProbeError::Map { what: name, source })
}

/// The program a failure is about, if it is about one.
pub fn failed_program(e: &ProbeError) -> Option<&'static str> {
    match e {
        ProbeError::Program { program, .. } | ProbeError::Tracing { program, .. } => *program,
        ProbeError::Interrupted(p) | ProbeError::MissingProgram(p) => Some(p),
        _ => None,
    }
}

/// One of the opt-in lookup programs (`--lookups`).
pub fn is_lookup_program(prog: &str) -> bool {
    LOOKUPS.iter().any(|t| t.prog == prog)
}

/// Program loads interrupted by a pending signal (EAGAIN) that are tried
/// again when nobody asked to stop: libbpf retries 5 times for this reason.
const EAGAIN_RETRIES: u32 = 3;

/// The programs `attach` would attach for `plan`, in its order: optional
/// groups first, the required ones last (return probes before entry probes
/// within each; see the module comment).
pub fn targets(plan: &Plan) -> Vec<Target> {
    let fentry = plan.fentry.is_some();
    let pick = |g: (&'static [Target], &'static [Target])| if fentry { g.1 } else { g.0 };
    let mut targets: Vec<Target> = Vec::new();
    if plan.lookups {
        targets.extend_from_slice(LOOKUPS);
    }
    if fentry && plan.attribution == Attribution::Always {
        targets.extend(attribution_set(plan));
    }
    for (on, group) in [
        (plan.lifetimes, LIFETIMES),
        (plan.early_drop, EARLY_DROP),
        (plan.clash, CLASH),
    ] {
        if on {
            targets.extend_from_slice(pick(group));
        }
    }
    targets.extend_from_slice(pick(if plan.ct_hash_addr != 0 {
        INSERT_AT_ENTRY
    } else {
        INSERT_AT_RETURN
    }));
    if !fentry {
        targets.extend_from_slice(REQUIRED.0);
    }
    targets
}

/// fentry mode's attribution programs (exits first).
fn attribution_set(plan: &Plan) -> Vec<Target> {
    let mut set = REQUIRED.1.to_vec();
    if plan.lifetimes {
        set.push(FREE_FENTRY);
    }
    set
}

/// The programs `attach` loads but attaches only on demand ([`Probes::arm`]):
/// fentry mode's attribution programs under `--attribution auto`.
pub fn on_demand(plan: &Plan) -> Vec<Target> {
    if plan.fentry.is_some() && plan.attribution == Attribution::Auto {
        attribution_set(plan)
    } else {
        Vec::new()
    }
}

/// Every program `attach` loads for `plan`: [`targets`] and [`on_demand`].
pub fn every_target(plan: &Plan) -> Vec<Target> {
    let mut all = targets(plan);
    all.extend(on_demand(plan));
    all
}

/// Every kprobe program of the object, for the host's verifier test.
fn every_kprobe() -> impl Iterator<Item = &'static Target> {
    [
        INSERT_AT_ENTRY,
        INSERT_AT_RETURN,
        REQUIRED,
        CLASH,
        EARLY_DROP,
        LIFETIMES,
    ]
    .into_iter()
    .flat_map(|g| g.0.iter())
    .chain(LOOKUPS)
}

/// Runs `load` until it passes, a stop is asked for, or it fails otherwise:
/// a load the kernel stopped for a pending signal (EAGAIN) is tried again
/// unless `stop` says the signal was a request to stop. Returns the result
/// and the tries signals cost.
fn with_retries<T, E>(
    prog: &'static str,
    stop: &AtomicBool,
    mut load: impl FnMut() -> Result<T, E>,
    eagain: impl Fn(&E) -> bool,
) -> Result<(T, u32), Result<E, ProbeError>> {
    let mut attempt = 0;
    loop {
        if stop.load(Ordering::Acquire) {
            return Err(Err(ProbeError::Interrupted(prog)));
        }
        match load() {
            Ok(v) => return Ok((v, attempt)),
            Err(e) => {
                let again = eagain(&e);
                if again && stop.load(Ordering::Acquire) {
                    return Err(Err(ProbeError::Interrupted(prog)));
                }
                if again && attempt < EAGAIN_RETRIES {
                    attempt += 1;
                    log::debug!("{prog}: verification interrupted by a signal (EAGAIN); again");
                    continue;
                }
                return Err(Ok(e));
            }
        }
    }
}

/// Loads (verifies) one kprobe program.
fn load_program(
    ebpf: &mut Ebpf,
    prog: &'static str,
    stop: &AtomicBool,
) -> Result<Loaded, ProbeError> {
    let p = kprobe(ebpf, prog)?;
    let t = Instant::now();
    let eagain = |e: &aya::programs::ProgramError| {
        matches!(e, aya::programs::ProgramError::LoadError { io_error, .. }
            if io_error.raw_os_error() == Some(libc::EAGAIN))
    };
    let ((), interrupted) = with_retries(prog, stop, || p.load(), eagain).map_err(|e| match e {
        Err(stopped) => stopped,
        Ok(source) => ProbeError::Program {
            program: Some(prog),
            what: format!("verifier rejected {prog}"),
            source,
        },
    })?;
    let fd = p.fd().map_err(|source| ProbeError::Program {
        program: Some(prog),
        what: format!("reading the kernel's info on {prog}"),
        source,
    })?;
    loaded(prog, fd.as_fd(), t, interrupted)
}

/// What the kernel says of a program it just accepted.
fn loaded(
    prog: &'static str,
    fd: BorrowedFd<'_>,
    t: Instant,
    interrupted: u32,
) -> Result<Loaded, ProbeError> {
    let info = tracing::prog_info(fd).map_err(|source| ProbeError::Tracing {
        program: Some(prog),
        what: format!("reading the kernel's info on {prog}"),
        source,
    })?;
    let name_len = info
        .name
        .iter()
        .position(|c| *c == 0)
        .unwrap_or(info.name.len());
    let loaded = Loaded {
        program: prog.to_string(),
        kernel_name: info.name[..name_len]
            .iter()
            .map(|c| *c as u8 as char)
            .collect(),
        kernel_id: info.id,
        verified_instructions: (info.verified_insns > 0).then_some(info.verified_insns),
        verify_seconds: t.elapsed().as_secs_f64(),
        interrupted,
    };
    log::debug!(
        "{prog}: verified in {:.2} s ({:?} instructions processed)",
        loaded.verify_seconds,
        loaded.verified_instructions
    );
    Ok(loaded)
}

/// The kernel BTF object fentry mode attaches in: None for vmlinux (which
/// `attach_btf_obj_fd` 0 names).
fn btf_object(targets: &TracingTargets) -> Result<Option<OwnedFd>, ProbeError> {
    if targets.object == "vmlinux" {
        return Ok(None);
    }
    tracing::kernel_btf_object(&targets.object)
        .map(Some)
        .map_err(|source| ProbeError::Tracing {
            program: None,
            what: format!("finding the kernel's BTF object {}", targets.object),
            source,
        })
}

/// Loads (verifies) one tracing program of `target`.
fn load_tracing(
    rel: &Relocated,
    target: &Target,
    targets: &TracingTargets,
    btf_obj: Option<BorrowedFd<'_>>,
    stop: &AtomicBool,
) -> Result<(Tracing, Loaded), ProbeError> {
    let (prog, func) = (target.prog, target.func);
    let hook = target.kind.hook().ok_or(ProbeError::MissingProgram(prog))?;
    let id = *targets.ids.get(func).ok_or_else(|| ProbeError::Tracing {
        program: Some(prog),
        what: format!("{func} has no BTF id in {}", targets.object),
        source: TracingError::NoProgram(prog),
    })?;
    let t = Instant::now();
    let eagain = |e: &TracingError| matches!(e, TracingError::Load { source, .. } if source.raw_os_error() == Some(libc::EAGAIN));
    let (tr, interrupted) = with_retries(prog, stop, || rel.load(prog, hook, id, btf_obj), eagain)
        .map_err(|e| match e {
            Err(stopped) => stopped,
            Ok(source) => ProbeError::Tracing {
                program: Some(prog),
                what: format!("verifier rejected {prog} ({} {func})", hook.name()),
                source,
            },
        })?;
    let l = loaded(prog, tr.fd(), t, interrupted)?;
    Ok((tr, l))
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
            match (target.kind.hook(), &tracing_ctx) {
                (Some(_), Some((rel, targets, btf_obj))) => {
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
                }
                _ => {
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

    /// The ring the alerts wake the loader through while attribution is
    /// not armed (to wait on: it is readable when one came). Once.
    pub fn take_alert_ring(&mut self) -> Option<RingBuf<MapData>> {
        self.alert_ring.take()
    }

    /// Events since attach that make attribution worth arming (`ALERTS`):
    /// `early_drop` calls, clashes, deaths no probe saw, long chains.
    pub fn alerts(&self) -> Result<u64, ProbeError> {
        self.alerts.get(&0, 0).map_err(|source| ProbeError::Map {
            what: map::ALERTS,
            source,
        })
    }

    /// The lifetime histograms' rows (`LIFE_HIST`), in row order: deaths
    /// since attach. Read at the start and the end of a run, not per
    /// interval (54 rows of 5 KiB).
    pub fn life_rows(&self) -> Result<Vec<Vec<u64>>, ProbeError> {
        (0..life::ROWS)
            .map(|r| {
                self.life_hist
                    .get(&r, 0)
                    .map(|h| h.to_vec())
                    .map_err(|source| ProbeError::Map {
                        what: map::LIFE_HIST,
                        source,
                    })
            })
            .collect()
    }

    /// Per-origin counters summed over CPUs (totals since attach).
    pub fn origins(&self) -> Vec<(OriginKey, OriginStats)> {
        self.origins
            .iter()
            .filter_map(Result::ok)
            .map(|(k, per_cpu)| {
                let mut sum = OriginStats::default();
                for v in per_cpu.iter() {
                    sum.add(v);
                }
                (k, sum)
            })
            .collect()
    }

    /// Every attached program's fd, by name; the attribution programs of
    /// fentry mode too, attached or not (their counts cover their armed
    /// time).
    fn program_fds(&self) -> impl Iterator<Item = (&'static str, BorrowedFd<'_>)> {
        self.programs
            .iter()
            .filter_map(|(name, idx)| {
                let fd = match idx {
                    Some(i) => self.tracing.get(*i)?.fd(),
                    None => self.ebpf.program(name)?.fd().ok()?.as_fd(),
                };
                Some((*name, fd))
            })
            .chain(self.on_demand.iter().map(|(t, tr)| (t.prog, tr.fd())))
    }

    /// Runs the kernel skipped per attached program (`recursion_misses` of
    /// bpf_prog_info, 5.12+; bpf_prog_inc_misses_counter() when
    /// trace_call_bpf() in kernel/trace/bpf_trace.c, or a trampoline's
    /// `__bpf_prog_enter`, finds the program already running on this CPU).
    /// Those with none are left out.
    pub fn recursion_misses(&self) -> BTreeMap<String, u64> {
        self.program_fds()
            .filter_map(|(name, fd)| {
                let info = tracing::prog_info(fd).ok()?;
                (info.recursion_misses > 0).then(|| (name.to_string(), info.recursion_misses))
            })
            .collect()
    }

    /// The kernel's bpf_stats per attached program: (name, run_cnt, run_time_ns).
    /// None when the stats are off.
    pub fn costs(&self) -> Option<Vec<(String, u64, u64)>> {
        self.stats.as_ref()?;
        Some(
            self.program_fds()
                .filter_map(|(name, fd)| {
                    let info = tracing::prog_info(fd).ok()?;
                    Some((name.to_string(), info.run_cnt, info.run_time_ns))
                })
                .collect(),
        )
    }

    pub fn snapshot(&self) -> Result<Snapshot, ProbeError> {
        if let Some(Ok(mut l)) = self.logger.as_ref().map(|m| m.lock()) {
            l.flush();
        }
        // One block per map and CPU: one lookup (system call) per map.
        fn sum<const N: usize>(into: &mut Vec<u64>, block: &[u64; N]) {
            into.resize(N, 0);
            for (s, v) in into.iter_mut().zip(block.iter()) {
                *s = s.wrapping_add(*v);
            }
        }
        fn read<const N: usize>(
            map: &PerCpuArray<MapData, [u64; N]>,
            name: &'static str,
        ) -> Result<Vec<u64>, ProbeError> {
            let per_cpu = map
                .get(&0, 0)
                .map_err(|source| ProbeError::Map { what: name, source })?;
            let mut out = vec![0u64; N];
            for block in per_cpu.iter() {
                sum(&mut out, block);
            }
            Ok(out)
        }
        let blocks = self
            .stats_map
            .get(&0, 0)
            .map_err(|source| ProbeError::Map {
                what: map::STATS,
                source,
            })?;
        let (mut counters, mut orig, mut reply) = (Vec::new(), Vec::new(), Vec::new());
        for b in blocks.iter() {
            sum(&mut counters, &b.counters);
            sum(&mut orig, &b.chain_orig);
            sum(&mut reply, &b.chain_reply);
        }
        // The lookup maps only where lookups are probed: three system calls
        // an interval saved, which add up in a long observation.
        let (lookup_latency, lookup_chain, lookup_max) = if self.lookups {
            (
                read(&self.lookup_latency, map::LOOKUP_LATENCY)?,
                read(&self.lookup_chain, map::CHAIN_LOOKUP)?,
                self.lookup_max
                    .get(&0, 0)
                    .map(|v| v.iter().copied().max().unwrap_or(0))
                    .map_err(|source| ProbeError::Map {
                        what: map::LOOKUP_MAX_NS,
                        source,
                    })?,
            )
        } else {
            (Vec::new(), Vec::new(), 0)
        };
        Ok(Snapshot {
            counters,
            orig,
            reply,
            lookup_latency,
            lookup_chain,
            lookup_max,
        })
    }
}

/// Attaches a kprobe to `__nf_conntrack_confirm` and detaches it at once:
/// the only honest answer to "can kprobes attach here".
pub fn try_kprobe(plan: &Plan) -> Result<Vec<Loaded>, ProbeError> {
    // Every program observe would attach goes through the verifier: a
    // kernel that accepts the small one and rejects the chain walk (Linux
    // 7.3 before the walk was made cheap to verify) must not be predicted
    // as kprobe mode.
    let mut plan = plan.clone();
    plan.fentry = None;
    let mut ebpf = load_object(&plan)?;
    let never = AtomicBool::new(false);
    let loaded = targets(&plan)
        .into_iter()
        .map(|t| load_program(&mut ebpf, t.prog, &never))
        .collect::<Result<Vec<_>, _>>()?;
    let p = kprobe(&mut ebpf, "confirm")?;
    p.attach("__nf_conntrack_confirm", 0)
        .map_err(|source| ProbeError::Program {
            program: Some(prog::CONFIRM),
            what: "attaching a kprobe to __nf_conntrack_confirm".into(),
            source,
        })?;
    Ok(loaded)
}

/// Loads (verifies) the opt-in lookup programs, for doctor: `observe
/// --lookups` attaches them first and would otherwise find out itself.
pub fn try_lookups(plan: &Plan) -> Result<Vec<Loaded>, ProbeError> {
    let mut plan = plan.clone();
    plan.lookups = true;
    let mut ebpf = load_object(&plan)?;
    let never = AtomicBool::new(false);
    LOOKUPS
        .iter()
        .map(|t| load_program(&mut ebpf, t.prog, &never))
        .collect()
}

/// Loads every tracing program fentry mode would attach (the verifier's
/// answer on each), then attaches one to `__nf_conntrack_confirm` and
/// detaches it: whether fentry mode works here.
pub fn try_fentry(plan: &Plan) -> Result<Vec<Loaded>, ProbeError> {
    let Some(tt) = &plan.fentry else {
        return Err(ProbeError::MissingProgram("fentry targets"));
    };
    let ebpf = load_object(plan)?;
    let rel = Relocated::new(&ebpf, object::object()?).map_err(|source| ProbeError::Tracing {
        program: None,
        what: "preparing the tracing programs".into(),
        source,
    })?;
    let obj = btf_object(tt)?;
    let never = AtomicBool::new(false);
    let mut plan = plan.clone();
    plan.lookups = false;
    let mut out = Vec::new();
    // The on-demand programs too: observe loads them at its start.
    for target in every_target(&plan) {
        let (_, l) = load_tracing(&rel, &target, tt, obj.as_ref().map(AsFd::as_fd), &never)?;
        out.push(l);
    }
    let probe = t(prog::FENTRY_PROBE, Fentry, "__nf_conntrack_confirm");
    let (mut tr, _) = load_tracing(&rel, &probe, tt, obj.as_ref().map(AsFd::as_fd), &never)?;
    tr.attach().map_err(|source| ProbeError::Tracing {
        program: Some(prog::FENTRY_PROBE),
        what: "attaching fentry to __nf_conntrack_confirm".into(),
        source,
    })?;
    Ok(out)
}

/// Map contents summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub counters: Vec<u64>,
    pub orig: Vec<u64>,
    pub reply: Vec<u64>,
    pub lookup_latency: Vec<u64>,
    pub lookup_chain: Vec<u64>,
    /// Longest lookup since attach (not a difference: a maximum).
    pub lookup_max: u64,
}

impl Snapshot {
    pub fn counter(&self, c: Counter) -> u64 {
        self.counters.get(c as usize).copied().unwrap_or(0)
    }

    /// `self - earlier`, element-wise.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        let sub = |a: &[u64], b: &[u64]| {
            a.iter()
                .enumerate()
                .map(|(i, v)| v.saturating_sub(b.get(i).copied().unwrap_or(0)))
                .collect()
        };
        Snapshot {
            counters: sub(&self.counters, &earlier.counters),
            orig: sub(&self.orig, &earlier.orig),
            reply: sub(&self.reply, &earlier.reply),
            lookup_latency: sub(&self.lookup_latency, &earlier.lookup_latency),
            lookup_chain: sub(&self.lookup_chain, &earlier.lookup_chain),
            lookup_max: self.lookup_max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The end of a real verifier log: `hash_insert_ret` before its
    /// restructure, on Debian's 7.3.4 cloud kernel under qemu (E2BIG).
    const E2BIG_LOG: &str = include_str!("../../tests/data/verifier-7.3.4-e2big.log");

    #[test]
    fn a_verifier_log_is_cut_to_its_conclusion() {
        let s = verifier_summary(E2BIG_LOG);
        assert!(
            s.starts_with("BPF program is too large. Processed 1000001 insn"),
            "{s}"
        );
        assert!(s.contains("processed 1000001 insns (limit 1000000)"), "{s}");
        // No instruction trace, no per-subprog statistics.
        assert!(!s.contains("r7 >>= 32") && !s.contains("subprog"), "{s}");
        let e2big = std::io::Error::from_raw_os_error(libc::E2BIG);
        let line = load_failure(&e2big, E2BIG_LOG);
        assert!(
            line.contains("complexity limits") && line.contains("too large"),
            "{line}"
        );
    }

    /// Every field of the programs' `Config` comes from its own source in
    /// the plan: distinct values, so that two fields swapped would show.
    #[test]
    fn the_config_takes_each_field_from_the_plan() {
        let offsets = Offsets {
            source: crate::probe::offsets::NfConnSource::ModuleBtf,
            nf_conn_size: 999,
            off_tuplehash: 1,
            tuplehash_size: 2,
            off_hnnode: 3,
            off_next: 4,
            off_pprev: 5,
            off_tuple_dir: 6,
            off_status: 7,
            off_skb_nfct: 8,
            off_ct_net: 9,
            off_net_inum: 10,
            off_th_tuple: 11,
            off_tuple_src: 12,
            off_tuple_l3num: 13,
            off_tuple_protonum: 14,
            off_ct_timeout: 15,
            off_ct_tcp_state: 16,
            off_ct_ext: 17,
            off_ext_len: 18,
        };
        let plan = Plan {
            offsets,
            has_chain_limit: true,
            clash: false,
            early_drop: true,
            lifetimes: true,
            lookups: false,
            ct_hash_addr: 0xffff_0000_0000_1000,
            htable_size_addr: 0xffff_0000_0000_2000,
            life_buckets: 1 << 12,
            per_cpu_calls: true,
            stats: false,
            fentry: None,
            attribution: Attribution::Auto,
        };
        let want = Config {
            addr_ct_hash: 0xffff_0000_0000_1000,
            addr_ct_htable_size: 0xffff_0000_0000_2000,
            off_tuplehash: 1,
            tuplehash_size: 2,
            off_hnnode: 3,
            off_next: 4,
            off_pprev: 5,
            off_tuple_dir: 6,
            off_status: 7,
            off_skb_nfct: 8,
            off_ct_net: 9,
            off_net_inum: 10,
            off_th_tuple: 11,
            off_tuple_src: 12,
            off_tuple_l3num: 13,
            off_tuple_protonum: 14,
            off_ct_timeout: 15,
            off_ct_tcp_state: 16,
            off_ct_ext: 17,
            off_ext_len: 18,
            has_chain_limit: 1,
            clash_probed: 0,
            early_drop_probed: 1,
            per_cpu_calls: 1,
            life_bucket_mask: (1 << 12) - 1,
            chain_alert: CHAIN_ALERT,
        };
        assert_eq!(plan.config(), want);
        // No lifetime slots: a mask of 0, not an underflow.
        let none = Plan {
            life_buckets: 0,
            ..plan
        };
        assert_eq!(none.config().life_bucket_mask, 0);
    }

    #[test]
    fn a_log_without_a_conclusion_says_so_by_saying_nothing() {
        // The same log cut before the verifier's message, as when a signal
        // interrupted it: only the trace is left.
        let cut = E2BIG_LOG
            .split("BPF program is too large")
            .next()
            .unwrap_or_default();
        assert_eq!(verifier_summary(cut), "");
        let eagain = std::io::Error::from_raw_os_error(libc::EAGAIN);
        let line = load_failure(&eagain, cut);
        assert!(line.contains("signal was pending"), "{line}");
        assert!(!line.contains("the verifier said"), "{line}");
    }
}
