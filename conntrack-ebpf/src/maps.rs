//! Maps shared with userspace (`COUNTERS`, `CHAIN_*`) and scratch state for
//! calls in flight: per CPU where the call cannot migrate (`PENDING_INSERT`:
//! spinlocks held, bottom halves off), per task where it can (confirm frames,
//! the early-drop flag). Per-CPU arrays and preallocated LRU hashes: no locks,
//! nothing allocated per event.

use aya_ebpf::{
    helpers::generated::bpf_get_current_task,
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use conntrack_common::{
    COUNTER_SLOTS, ConfirmFrame, Counter, FrameKey, HIST_OVERFLOW, HIST_SLOTS, PendingInsert,
    TASK_SLOTS,
};

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

/// Per task: how many `__nf_conntrack_confirm` calls are in flight.
#[map]
pub static CONFIRM_DEPTH_BY_TASK: LruHashMap<u64, u32> =
    LruHashMap::with_max_entries(TASK_SLOTS, 0);

/// Per (task, level): the entry and clash outcome of a confirm in flight.
#[map]
pub static CONFIRM_FRAMES: LruHashMap<FrameKey, ConfirmFrame> =
    LruHashMap::with_max_entries(TASK_SLOTS, 0);

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
    if let Some(p) = COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: `p` points to this CPU's slot of a per-CPU array; programs do
        // not nest on one CPU, so nothing else writes it concurrently.
        unsafe { *p += 1 };
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
