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
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use conntrack_common::{
    AllocArgs, ChainHist, ConfirmFrame, Counter, CounterBlock, HIST_OVERFLOW, LIFE_RING_BYTES,
    LatencyHist, Life, LookupFrame, ORIGIN_SLOTS, OriginKey, OriginStats, PendingInsert,
    TASK_SLOTS,
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
pub static ALLOC_TASKS: LruHashMap<u64, CallStack<AllocArgs>> =
    LruHashMap::with_max_entries(TASK_SLOTS, 0);

#[inline(always)]
pub fn allocs() -> Calls<AllocArgs> {
    Calls {
        stack: &ALLOC_STACK,
        tasks: &ALLOC_TASKS,
    }
}

/// Per task: set while `early_drop()` runs (its deletions are evictions).
#[map]
pub static IN_EARLY_DROP: LruHashMap<u64, u32> = LruHashMap::with_max_entries(TASK_SLOTS, 0);

/// How many entries `IN_EARLY_DROP` ([`EARLY_DROPS`]) and `EARLY_DROP_FAILED`
/// ([`DROP_FLAGS`]) hold, over all CPUs: while a count is 0 its map is empty
/// and the per-connection probes skip their lookup in it (an LRU-hash miss
/// per connection each, for flags that are only ever set while the table is
/// full). A plain array: its lookups are inlined by the verifier. Raised
/// only after an insert succeeded and lowered only after a remove did, so a
/// count never falls below the entries there are; a lost return leaves it
/// high, which costs the lookups again and nothing else.
#[map]
pub static FLAG_COUNTS: Array<u64> = Array::with_max_entries(2, 0);
pub const EARLY_DROPS: u32 = 0;
pub const DROP_FLAGS: u32 = 1;

/// Whether the flag map `which` of [`FLAG_COUNTS`] may hold entries.
#[inline(always)]
pub fn flags_set(which: u32) -> bool {
    match FLAG_COUNTS.get_ptr(which) {
        // SAFETY: a slot of a plain array, read once (other CPUs change it
        // only through atomic adds).
        Some(p) => (unsafe { core::ptr::read_volatile(p) }) != 0,
        None => true,
    }
}

/// Adds `delta` (wrapping: -1 is `u64::MAX`) to [`FLAG_COUNTS`] slot `which`.
#[inline(always)]
pub fn flags_add(which: u32, delta: u64) {
    if let Some(p) = FLAG_COUNTS.get_ptr_mut(which) {
        // SAFETY: `p` is an aligned u64 slot of a map value that outlives
        // the program; `lock ... +=` is BPF's atomic add without fetch
        // (BPF_XADD, every kernel ctscope runs on), what every writer of
        // the slot uses. Rust has no atomic read-modify-write for this
        // target, hence the instruction itself.
        unsafe {
            core::arch::asm!(
                "lock *(u64 *)({p} + 0) += {d}",
                p = in(reg) p,
                d = in(reg) delta,
                options(nostack)
            )
        };
    }
}

/// Lookups in flight (frames.rs; a softirq can nest one on top of another).
#[map]
pub static LOOKUP_STACK: PerCpuArray<CallStack<LookupFrame>> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub static LOOKUP_TASKS: LruHashMap<u64, CallStack<LookupFrame>> =
    LruHashMap::with_max_entries(TASK_SLOTS, 0);

#[inline(always)]
pub fn lookups() -> Calls<LookupFrame> {
    Calls {
        stack: &LOOKUP_STACK,
        tasks: &LOOKUP_TASKS,
    }
}

/// Lookup latency, log-linear slots (`conntrack_common::latency_slot`).
#[map]
pub static LOOKUP_LATENCY: PerCpuArray<LatencyHist> = PerCpuArray::with_max_entries(1, 0);

/// Length of the bucket each lookup walked.
#[map]
pub static CHAIN_LOOKUP: PerCpuArray<ChainHist> = PerCpuArray::with_max_entries(1, 0);

/// Longest lookup seen on each CPU, ns.
#[map]
pub static LOOKUP_MAX_NS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Every counter, one block per CPU (`conntrack_common::CounterBlock`).
#[map]
pub static COUNTERS: PerCpuArray<CounterBlock> = PerCpuArray::with_max_entries(1, 0);

/// Chain length of the original-direction bucket after each insert.
#[map]
pub static CHAIN_ORIG: PerCpuArray<ChainHist> = PerCpuArray::with_max_entries(1, 0);

/// Chain length of the reply-direction bucket after each insert.
#[map]
pub static CHAIN_REPLY: PerCpuArray<ChainHist> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static PENDING_INSERT: PerCpuArray<PendingInsert> = PerCpuArray::with_max_entries(1, 0);

/// `__nf_conntrack_confirm` calls in flight (frames.rs): the entry and the
/// outcome of a clash resolved inside the call.
#[map]
pub static CONFIRM_STACK: PerCpuArray<CallStack<ConfirmFrame>> =
    PerCpuArray::with_max_entries(1, 0);
#[map]
pub static CONFIRM_TASKS: LruHashMap<u64, CallStack<ConfirmFrame>> =
    LruHashMap::with_max_entries(TASK_SLOTS, 0);

#[inline(always)]
pub fn confirms() -> Calls<ConfirmFrame> {
    Calls {
        stack: &CONFIRM_STACK,
        tasks: &CONFIRM_TASKS,
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
    if let Some(p) = COUNTERS.get_ptr_mut(0) {
        // SAFETY: `p` points to this CPU's block of a per-CPU array; programs
        // do not nest on one CPU, so nothing else writes it concurrently.
        if let Some(slot) = unsafe { (*p).get_mut(c as usize) } {
            *slot += n;
        }
    }
}

#[inline(always)]
pub fn record_len(hist: &PerCpuArray<ChainHist>, len: u32) {
    let slot = if len < HIST_OVERFLOW {
        len
    } else {
        HIST_OVERFLOW
    };
    bump_slot(hist, slot);
}

/// Adds one to slot `slot` of this CPU's histogram `hist`.
#[inline(always)]
pub fn bump_slot<const N: usize>(hist: &PerCpuArray<[u64; N]>, slot: u32) {
    if let Some(p) = hist.get_ptr_mut(0) {
        // SAFETY: as in `add`.
        if let Some(s) = unsafe { (*p).get_mut(slot as usize) } {
            *s += 1;
        }
    }
}
