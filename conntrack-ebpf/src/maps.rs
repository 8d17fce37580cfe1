//! Maps shared with userspace (`COUNTERS`, `CHAIN_*`) and scratch state for
//! calls in flight: per CPU where the call cannot migrate (`PENDING_INSERT`:
//! spinlocks held, bottom halves off), per CPU or per task as the kernel's
//! preemption model allows (frames.rs), per task for the rare early-drop
//! flags. Per-CPU arrays and preallocated LRU hashes: no locks,
//! nothing allocated per event.

use crate::frames::{CallStack, Calls};
use aya_ebpf::{
    helpers::generated::bpf_get_current_task,
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use conntrack_common::{
    AllocArgs, COUNTER_SLOTS, ConfirmFrame, Counter, FrameKey, HIST_OVERFLOW, HIST_SLOTS,
    LAT_SLOTS, LIFE_RING_BYTES, Life, LookupFrame, ORIGIN_SLOTS, OriginKey, OriginStats,
    PendingInsert, TASK_SLOTS,
};

/// One word per CPU that the verifier cannot see through (insert.rs `opaque`).
#[map]
pub static OPAQUE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// `BPF_F_NO_PREALLOC`: memory follows the entries actually tracked.
const BPF_F_NO_PREALLOC: u32 = 1;

/// Counters per (namespace, original source address).
#[map]
pub static ORIGINS: PerCpuHashMap<OriginKey, OriginStats> =
    PerCpuHashMap::with_max_entries(ORIGIN_SLOTS, 0);

/// Entries alive in the table (or allocated, not yet inserted), by
/// `struct nf_conn *`. The loader sizes it from `nf_conntrack_max`.
#[map]
pub static CT_LIFE: HashMap<u64, Life> = HashMap::with_max_entries(65536, BPF_F_NO_PREALLOC);

/// Finished entries, for the lifetime histograms in userspace.
#[map]
pub static LIFE_EVENTS: RingBuf = RingBuf::with_byte_size(LIFE_RING_BYTES, 0);

/// `__nf_conntrack_alloc` calls in flight (frames.rs): their arguments.
#[map]
pub static ALLOC_STACK: PerCpuArray<CallStack<AllocArgs>> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub static ALLOC_DEPTH: LruHashMap<u64, u32> = LruHashMap::with_max_entries(TASK_SLOTS, 0);
#[map]
pub static ALLOC_FRAMES: LruHashMap<FrameKey, AllocArgs> =
    LruHashMap::with_max_entries(TASK_SLOTS, 0);

#[inline(always)]
pub fn allocs() -> Calls<AllocArgs> {
    Calls {
        stack: &ALLOC_STACK,
        depth: &ALLOC_DEPTH,
        frames: &ALLOC_FRAMES,
    }
}

/// Per task: set while `early_drop()` runs (its deletions are evictions).
#[map]
pub static IN_EARLY_DROP: LruHashMap<u64, u32> = LruHashMap::with_max_entries(TASK_SLOTS, 0);

/// Lookups in flight (frames.rs; a softirq can nest one on top of another).
#[map]
pub static LOOKUP_STACK: PerCpuArray<CallStack<LookupFrame>> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub static LOOKUP_DEPTH: LruHashMap<u64, u32> = LruHashMap::with_max_entries(TASK_SLOTS, 0);
#[map]
pub static LOOKUP_FRAMES: LruHashMap<FrameKey, LookupFrame> =
    LruHashMap::with_max_entries(TASK_SLOTS, 0);

#[inline(always)]
pub fn lookups() -> Calls<LookupFrame> {
    Calls {
        stack: &LOOKUP_STACK,
        depth: &LOOKUP_DEPTH,
        frames: &LOOKUP_FRAMES,
    }
}

/// Lookup latency, log-linear slots (`conntrack_common::latency_slot`).
#[map]
pub static LOOKUP_LATENCY: PerCpuArray<u64> = PerCpuArray::with_max_entries(LAT_SLOTS, 0);

/// Length of the bucket each lookup walked.
#[map]
pub static CHAIN_LOOKUP: PerCpuArray<u64> = PerCpuArray::with_max_entries(HIST_SLOTS, 0);

/// Longest lookup seen on each CPU, ns.
#[map]
pub static LOOKUP_MAX_NS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Chain length of the original-direction bucket after each insert.
#[map]
pub static CHAIN_ORIG: PerCpuArray<u64> = PerCpuArray::with_max_entries(HIST_SLOTS, 0);

/// Chain length of the reply-direction bucket after each insert.
#[map]
pub static CHAIN_REPLY: PerCpuArray<u64> = PerCpuArray::with_max_entries(HIST_SLOTS, 0);

#[map]
pub static PENDING_INSERT: PerCpuArray<PendingInsert> = PerCpuArray::with_max_entries(1, 0);

/// `__nf_conntrack_confirm` calls in flight (frames.rs): the entry and the
/// outcome of a clash resolved inside the call.
#[map]
pub static CONFIRM_STACK: PerCpuArray<CallStack<ConfirmFrame>> =
    PerCpuArray::with_max_entries(1, 0);
#[map]
pub static CONFIRM_DEPTH_BY_TASK: LruHashMap<u64, u32> =
    LruHashMap::with_max_entries(TASK_SLOTS, 0);
#[map]
pub static CONFIRM_FRAMES: LruHashMap<FrameKey, ConfirmFrame> =
    LruHashMap::with_max_entries(TASK_SLOTS, 0);

#[inline(always)]
pub fn confirms() -> Calls<ConfirmFrame> {
    Calls {
        stack: &CONFIRM_STACK,
        depth: &CONFIRM_DEPTH_BY_TASK,
        frames: &CONFIRM_FRAMES,
    }
}

/// Per task: set by the `early_drop` return probe when it found nothing to
/// evict; taken by the `__nf_conntrack_alloc` return probe (its only caller).
#[map]
pub static EARLY_DROP_FAILED: LruHashMap<u64, u32> = LruHashMap::with_max_entries(TASK_SLOTS, 0);

/// The current task's address: a key that follows the call across CPUs.
#[inline(always)]
pub fn current_task() -> u64 {
    // SAFETY: a BPF helper without arguments or preconditions.
    unsafe { bpf_get_current_task() }
}

/// Set once a CPU has logged its first self-check failure: diagnostics go
/// through aya-log once per CPU, never per event.
#[map]
pub static DIAG_LOGGED: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// True the first time it is called on this CPU.
#[inline(always)]
pub fn first_diag() -> bool {
    match DIAG_LOGGED.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; programs do not nest on one CPU.
        Some(p) => unsafe {
            let first = *p == 0;
            *p = 1;
            first
        },
        None => false,
    }
}

#[inline(always)]
pub fn count(c: Counter) {
    add(c, 1);
}

#[inline(always)]
pub fn add(c: Counter, n: u64) {
    if let Some(p) = COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: `p` points to this CPU's slot of a per-CPU array; programs do
        // not nest on one CPU, so nothing else writes it concurrently.
        unsafe { *p += n };
    }
}

#[inline(always)]
pub fn record_len(hist: &PerCpuArray<u64>, len: u32) {
    let slot = if len < HIST_OVERFLOW {
        len
    } else {
        HIST_OVERFLOW
    };
    if let Some(p) = hist.get_ptr_mut(slot) {
        // SAFETY: as in `count`.
        unsafe { *p += 1 };
    }
}
