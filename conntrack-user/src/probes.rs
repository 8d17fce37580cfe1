//! Loading and attaching the eBPF programs, and reading their maps.
//!
//! Return probes are attached before entry probes: a return without its entry
//! is harmless (counted and ignored), while an entry without its return would
//! leave per-CPU state behind. Dropping `Probes` detaches every program (aya
//! owns the links and their fds), on every exit path.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{FEntry, KProbe},
};
use conntrack_common::{
    ChainHist, Counter, CounterBlock, LatencyHist, LifeEvent, OriginKey, OriginStats, globals,
};
use thiserror::Error;

use crate::{object, offsets::Offsets};

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
    #[error("reading BTF for fentry: {0}")]
    Btf(#[source] aya::BtfError),
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
        ) {
            // Its Display repeats the source's (the whole log): its own part only.
            (Some(ProbeError::Program { what, .. }), _) => what.clone(),
            (
                _,
                Some(aya::programs::ProgramError::LoadError {
                    io_error,
                    verifier_log,
                }),
            ) => {
                let log = verifier_log.to_string();
                log::debug!("verifier log:\n{log}");
                load_failure(io_error, &log)
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
    /// Size of the entry-tracking map.
    pub life_slots: u32,
    /// Keep calls in flight per CPU (the kernel cannot preempt them) rather
    /// than per task (conntrack-ebpf/src/frames.rs).
    pub per_cpu_calls: bool,
    /// Turn the kernel's bpf_stats on while attached (`observe --cost`).
    /// Global to the host: every BPF program then pays two clock reads per
    /// run (kernel/bpf/syscall.c `bpf_enable_stats`, 5.8+), so off unless
    /// asked for.
    pub stats: bool,
}

/// (program, kernel function): return probes first, see the module comment.
const REQUIRED: &[(&str, &str)] = &[
    ("confirm_ret", "__nf_conntrack_confirm"),
    ("alloc_ret", "__nf_conntrack_alloc"),
    ("confirm", "__nf_conntrack_confirm"),
    ("alloc", "__nf_conntrack_alloc"),
];
/// Inserts where the table's address is known (`nf_conntrack_hash` in
/// kallsyms): one kprobe walks both buckets from their heads
/// (conntrack-ebpf/src/insert.rs).
const INSERT_AT_ENTRY: &[(&str, &str)] = &[("insert", "__nf_conntrack_hash_insert")];
/// Inserts otherwise: the return probe walks from the entry's own nodes.
const INSERT_AT_RETURN: &[(&str, &str)] = &[
    ("hash_insert_ret", "__nf_conntrack_hash_insert"),
    ("hash_insert", "__nf_conntrack_hash_insert"),
];
/// The programs that count inserts (and walk their chains): a run of one of
/// them the kernel skipped (`recursion_misses`) is an insert not counted.
pub const INSERT_PROGRAMS: [&str; 2] = ["insert", "hash_insert_ret"];
const CLASH: &[(&str, &str)] = &[("resolve_clash_ret", "nf_ct_resolve_clash")];
const EARLY_DROP: &[(&str, &str)] = &[
    ("early_drop_ret", "early_drop"),
    ("early_drop", "early_drop"),
];
/// Deaths: the free probe first, so that no tracked entry outlives its slot.
const LIFETIMES: &[(&str, &str)] = &[
    ("ct_free", "nf_conntrack_free"),
    ("ct_delete", "nf_ct_delete"),
];
const LOOKUPS: &[(&str, &str)] = &[
    ("lookup_ret", crate::kernel::LOOKUP_TARGET),
    ("lookup", crate::kernel::LOOKUP_TARGET),
];

pub struct Probes {
    // Field order matters for drop: maps and programs go with `ebpf`.
    /// Kernel-side diagnostics (aya-log), forwarded to env_logger.
    logger: Option<std::sync::Mutex<aya_log::EbpfLogger<&'static dyn log::Log>>>,
    counters: PerCpuArray<MapData, CounterBlock>,
    orig: PerCpuArray<MapData, ChainHist>,
    reply: PerCpuArray<MapData, ChainHist>,
    lookup_latency: PerCpuArray<MapData, LatencyHist>,
    lookup_chain: PerCpuArray<MapData, ChainHist>,
    lookup_max: PerCpuArray<MapData, u64>,
    origins: PerCpuHashMap<MapData, OriginKey, OriginStats>,
    events: RingBuf<MapData>,
    ebpf: Ebpf,
    /// Keeps the kernel's bpf_stats (run time, run count) on while it lives
    /// (`BPF_ENABLE_STATS`, 5.8+); None when the kernel refused.
    stats: Option<OwnedFd>,
    pub attached: Vec<String>,
    /// Programs attached, for their bpf_stats.
    programs: Vec<&'static str>,
}

fn load_object(plan: &Plan) -> Result<Ebpf, ProbeError> {
    let o = &plan.offsets;
    let flag = |b: bool| u32::from(b);
    let chain_limit = flag(plan.has_chain_limit);
    let clash = flag(plan.clash);
    let early_drop = flag(plan.early_drop);
    let per_cpu_calls = flag(plan.per_cpu_calls);
    EbpfLoader::new()
        // The programs use no CO-RE relocations: offsets come as globals.
        .btf(None)
        .map_max_entries("CT_LIFE", plan.life_slots)
        .override_global(globals::OFF_CT_NET, &o.off_ct_net, true)
        .override_global(globals::OFF_NET_INUM, &o.off_net_inum, true)
        .override_global(globals::OFF_TH_TUPLE, &o.off_th_tuple, true)
        .override_global(globals::OFF_TUPLE_SRC, &o.off_tuple_src, true)
        .override_global(globals::OFF_TUPLE_L3NUM, &o.off_tuple_l3num, true)
        .override_global(globals::OFF_TUPLE_PROTONUM, &o.off_tuple_protonum, true)
        .override_global(globals::OFF_CT_TIMEOUT, &o.off_ct_timeout, true)
        .override_global(globals::OFF_CT_TCP_STATE, &o.off_ct_tcp_state, true)
        .override_global(globals::OFF_CT_EXT, &o.off_ct_ext, true)
        .override_global(globals::OFF_EXT_LEN, &o.off_ext_len, true)
        .override_global(globals::ADDR_CT_HASH, &plan.ct_hash_addr, true)
        .override_global(globals::ADDR_CT_HTABLE_SIZE, &plan.htable_size_addr, true)
        .override_global(globals::OFF_TUPLEHASH, &o.off_tuplehash, true)
        .override_global(globals::TUPLEHASH_SIZE, &o.tuplehash_size, true)
        .override_global(globals::OFF_HNNODE, &o.off_hnnode, true)
        .override_global(globals::OFF_NEXT, &o.off_next, true)
        .override_global(globals::OFF_PPREV, &o.off_pprev, true)
        .override_global(globals::OFF_TUPLE_DIR, &o.off_tuple_dir, true)
        .override_global(globals::OFF_STATUS, &o.off_status, true)
        .override_global(globals::OFF_SKB_NFCT, &o.off_skb_nfct, true)
        .override_global(globals::HAS_CHAIN_LIMIT, &chain_limit, true)
        .override_global(globals::CLASH_PROBED, &clash, true)
        .override_global(globals::EARLY_DROP_PROBED, &early_drop, true)
        .override_global(globals::PER_CPU_CALLS, &per_cpu_calls, true)
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
        ProbeError::Program { program, .. } => *program,
        ProbeError::Interrupted(p) | ProbeError::MissingProgram(p) => Some(p),
        _ => None,
    }
}

/// One of the opt-in lookup programs (`--lookups`).
pub fn is_lookup_program(prog: &str) -> bool {
    LOOKUPS.iter().any(|(p, _)| *p == prog)
}

/// Program loads interrupted by a pending signal (EAGAIN) that are tried
/// again when nobody asked to stop: libbpf retries 5 times for this reason.
const EAGAIN_RETRIES: u32 = 3;

/// The programs `attach` would attach for `plan`, in its order: optional
/// groups first, the required ones last (return probes before entry probes
/// within each; see the module comment).
pub fn targets(plan: &Plan) -> Vec<(&'static str, &'static str)> {
    let mut targets: Vec<(&'static str, &'static str)> = Vec::new();
    for (on, group) in [
        (plan.lookups, LOOKUPS),
        (plan.lifetimes, LIFETIMES),
        (plan.early_drop, EARLY_DROP),
        (plan.clash, CLASH),
    ] {
        if on {
            targets.extend_from_slice(group);
        }
    }
    targets.extend_from_slice(if plan.ct_hash_addr != 0 {
        INSERT_AT_ENTRY
    } else {
        INSERT_AT_RETURN
    });
    targets.extend_from_slice(REQUIRED);
    targets
}

/// Loads (verifies) one program. A load the kernel stopped for a pending
/// signal (EAGAIN) is tried again unless `stop` says the signal was a
/// request to stop; then it ends with [`ProbeError::Interrupted`].
fn load_program(
    ebpf: &mut Ebpf,
    prog: &'static str,
    stop: &AtomicBool,
) -> Result<Loaded, ProbeError> {
    let p = kprobe(ebpf, prog)?;
    let mut attempt = 0;
    loop {
        if stop.load(Ordering::Acquire) {
            return Err(ProbeError::Interrupted(prog));
        }
        let t = Instant::now();
        match p.load() {
            Ok(()) => {
                let info = p.info().map_err(|source| ProbeError::Program {
                    program: Some(prog),
                    what: format!("reading the kernel's info on {prog}"),
                    source,
                })?;
                let loaded = Loaded {
                    program: prog.to_string(),
                    kernel_name: info.name_as_str().unwrap_or_default().to_string(),
                    kernel_id: info.id(),
                    verified_instructions: info.verified_instruction_count(),
                    verify_seconds: t.elapsed().as_secs_f64(),
                    interrupted: attempt,
                };
                log::debug!(
                    "{prog}: verified in {:.2} s ({:?} instructions processed)",
                    loaded.verify_seconds,
                    loaded.verified_instructions
                );
                return Ok(loaded);
            }
            Err(source) => {
                let eagain = matches!(
                    &source,
                    aya::programs::ProgramError::LoadError { io_error, .. }
                        if io_error.raw_os_error() == Some(libc::EAGAIN)
                );
                if eagain && stop.load(Ordering::Acquire) {
                    return Err(ProbeError::Interrupted(prog));
                }
                if eagain && attempt < EAGAIN_RETRIES {
                    attempt += 1;
                    log::debug!("{prog}: verification interrupted by a signal (EAGAIN); again");
                    continue;
                }
                return Err(ProbeError::Program {
                    program: Some(prog),
                    what: format!("verifier rejected {prog}"),
                    source,
                });
            }
        }
    }
}

impl Probes {
    /// Loads every program through the verifier without attaching any (what
    /// the host test does on a kernel without kprobes), and returns what the
    /// kernel says about each loaded program.
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

    /// Loads (verifies) every program of an [`Probes::object`].
    pub fn verify_object(ebpf: &mut Ebpf, stop: &AtomicBool) -> Result<Vec<Loaded>, ProbeError> {
        INSERT_AT_ENTRY
            .iter()
            .chain(INSERT_AT_RETURN)
            .chain(REQUIRED)
            .chain(CLASH)
            .chain(EARLY_DROP)
            .chain(LIFETIMES)
            .chain(LOOKUPS)
            .map(|(prog, _)| load_program(ebpf, prog, stop))
            .collect()
    }

    /// Loads and attaches the programs of `plan`. `stop` set (by whoever
    /// interrupts this thread with a signal) ends the loading early.
    pub fn attach(plan: &Plan, stop: &AtomicBool) -> Result<Probes, ProbeError> {
        let mut ebpf = load_object(plan)?;
        let mut attached = Vec::new();
        let mut programs = Vec::new();
        for (prog, func) in targets(plan) {
            load_program(&mut ebpf, prog, stop)?;
            let p = kprobe(&mut ebpf, prog)?;
            p.attach(func, 0).map_err(|source| ProbeError::Program {
                program: Some(prog),
                what: format!("attaching {prog} to {func}"),
                source,
            })?;
            attached.push(format!("{}:{func}", p.kind_name()));
            programs.push(prog);
        }
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
            .take_map("ORIGINS")
            .ok_or(ProbeError::MissingMap("ORIGINS"))?;
        let events = ebpf
            .take_map("LIFE_EVENTS")
            .ok_or(ProbeError::MissingMap("LIFE_EVENTS"))?;
        Ok(Probes {
            logger,
            counters: take_array(&mut ebpf, "COUNTERS")?,
            orig: take_array(&mut ebpf, "CHAIN_ORIG")?,
            reply: take_array(&mut ebpf, "CHAIN_REPLY")?,
            lookup_latency: take_array(&mut ebpf, "LOOKUP_LATENCY")?,
            lookup_chain: take_array(&mut ebpf, "CHAIN_LOOKUP")?,
            lookup_max: take_array(&mut ebpf, "LOOKUP_MAX_NS")?,
            origins: PerCpuHashMap::try_from(origins).map_err(|source| ProbeError::Map {
                what: "ORIGINS",
                source,
            })?,
            events: RingBuf::try_from(events).map_err(|source| ProbeError::Map {
                what: "LIFE_EVENTS",
                source,
            })?,
            ebpf,
            stats,
            attached,
            programs,
        })
    }

    /// Hands every finished entry waiting in the ring buffer to `f`.
    pub fn drain_events(&mut self, mut f: impl FnMut(&LifeEvent)) {
        while let Some(item) = self.events.next() {
            if item.len() >= std::mem::size_of::<LifeEvent>() {
                // SAFETY: the kernel wrote a whole `LifeEvent` (a #[repr(C)]
                // Pod type, every bit pattern valid) at the start of the
                // item; read_unaligned makes no alignment assumption.
                let e = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<LifeEvent>()) };
                f(&e);
            }
        }
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

    /// Runs the kernel skipped per attached program (`recursion_misses` of
    /// bpf_prog_info, 5.12+; bpf_prog_inc_misses_counter() when
    /// trace_call_bpf() in kernel/trace/bpf_trace.c finds a BPF program
    /// already running on this CPU). Those with none are left out.
    pub fn recursion_misses(&self) -> std::collections::BTreeMap<String, u64> {
        use std::os::fd::{AsFd, AsRawFd};
        /// The `BPF_OBJ_GET_INFO_BY_FD` member of `union bpf_attr`; the
        /// kernel takes a shorter attr and zero-fills the rest.
        #[repr(C)]
        struct InfoAttr {
            bpf_fd: u32,
            info_len: u32,
            info: u64,
        }
        const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
        let mut out = std::collections::BTreeMap::new();
        for name in &self.programs {
            let Some(fd) = self.ebpf.program(name).and_then(|p| p.fd().ok()) else {
                continue;
            };
            // SAFETY: bpf_prog_info is plain integers; all zeroes is valid.
            let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
            let mut attr = InfoAttr {
                bpf_fd: fd.as_fd().as_raw_fd() as u32,
                info_len: std::mem::size_of_val(&info) as u32,
                info: std::ptr::addr_of_mut!(info) as u64,
            };
            // SAFETY: `attr` and `info` are live for the call and sized as
            // told; the kernel writes at most info_len bytes into `info`.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_OBJ_GET_INFO_BY_FD,
                    std::ptr::addr_of_mut!(attr),
                    std::mem::size_of::<InfoAttr>(),
                )
            };
            if r == 0 && info.recursion_misses > 0 {
                out.insert(name.to_string(), info.recursion_misses);
            }
        }
        out
    }

    /// The kernel's bpf_stats per attached program: (name, run_cnt, run_time_ns).
    /// None when the stats are off.
    pub fn costs(&self) -> Option<Vec<(String, u64, u64)>> {
        self.stats.as_ref()?;
        let mut out = Vec::new();
        for name in &self.programs {
            let Some(p) = self.ebpf.program(name) else {
                continue;
            };
            if let Ok(info) = p.info() {
                out.push((
                    name.to_string(),
                    info.run_count(),
                    info.run_time().as_nanos() as u64,
                ));
            }
        }
        Some(out)
    }

    pub fn snapshot(&self) -> Result<Snapshot, ProbeError> {
        if let Some(Ok(mut l)) = self.logger.as_ref().map(|m| m.lock()) {
            l.flush();
        }
        // One block per map and CPU: one lookup (system call) per map.
        fn read<const N: usize>(
            map: &PerCpuArray<MapData, [u64; N]>,
            name: &'static str,
        ) -> Result<Vec<u64>, ProbeError> {
            let per_cpu = map
                .get(&0, 0)
                .map_err(|source| ProbeError::Map { what: name, source })?;
            let mut sum = vec![0u64; N];
            for block in per_cpu.iter() {
                for (s, v) in sum.iter_mut().zip(block.iter()) {
                    *s = s.wrapping_add(*v);
                }
            }
            Ok(sum)
        }
        let lookup_max = self
            .lookup_max
            .get(&0, 0)
            .map(|v| v.iter().copied().max().unwrap_or(0))
            .map_err(|source| ProbeError::Map {
                what: "LOOKUP_MAX_NS",
                source,
            })?;
        Ok(Snapshot {
            counters: read(&self.counters, "COUNTERS")?,
            orig: read(&self.orig, "CHAIN_ORIG")?,
            reply: read(&self.reply, "CHAIN_REPLY")?,
            lookup_latency: read(&self.lookup_latency, "LOOKUP_LATENCY")?,
            lookup_chain: read(&self.lookup_chain, "CHAIN_LOOKUP")?,
            lookup_max,
        })
    }
}

trait KindName {
    fn kind_name(&self) -> &'static str;
}

impl KindName for KProbe {
    fn kind_name(&self) -> &'static str {
        match self.kind() {
            aya::programs::ProbeKind::Entry => "kprobe",
            aya::programs::ProbeKind::Return => "kretprobe",
        }
    }
}

/// Attaches a kprobe to `__nf_conntrack_confirm` and detaches it at once:
/// the only honest answer to "can kprobes attach here".
pub fn try_kprobe(plan: &Plan) -> Result<Vec<Loaded>, ProbeError> {
    // Every program observe would attach goes through the verifier: a
    // kernel that accepts the small one and rejects the chain walk (Linux
    // 7.3 before the walk was made cheap to verify) must not be predicted
    // as kprobe mode.
    let mut ebpf = load_object(plan)?;
    let never = AtomicBool::new(false);
    let loaded = targets(plan)
        .into_iter()
        .map(|(prog, _)| load_program(&mut ebpf, prog, &never))
        .collect::<Result<Vec<_>, _>>()?;
    let p = kprobe(&mut ebpf, "confirm")?;
    p.attach("__nf_conntrack_confirm", 0)
        .map_err(|source| ProbeError::Program {
            program: Some("confirm"),
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
        .map(|(prog, _)| load_program(&mut ebpf, prog, &never))
        .collect()
}

/// Loads and attaches the fentry capability program, then detaches it.
pub fn try_fentry(plan: &Plan) -> Result<(), ProbeError> {
    let mut ebpf = load_object(plan)?;
    let btf = aya::Btf::from_sys_fs().map_err(ProbeError::Btf)?;
    let p: &mut FEntry = ebpf
        .program_mut("fentry_probe")
        .ok_or(ProbeError::MissingProgram("fentry_probe"))?
        .try_into()
        .map_err(|source| ProbeError::Program {
            program: Some("fentry_probe"),
            what: "program fentry_probe".into(),
            source,
        })?;
    p.load("__nf_conntrack_confirm", &btf)
        .map_err(|source| ProbeError::Program {
            program: Some("fentry_probe"),
            what: "loading an fentry program for __nf_conntrack_confirm".into(),
            source,
        })?;
    p.attach().map_err(|source| ProbeError::Program {
        program: Some("fentry_probe"),
        what: "attaching fentry to __nf_conntrack_confirm".into(),
        source,
    })?;
    Ok(())
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
    const E2BIG_LOG: &str = include_str!("../tests/data/verifier-7.3.4-e2big.log");

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
