//! Maps shared with userspace (`COUNTERS`, `CHAIN_*`) and per-CPU scratch
//! state for calls in flight (`PENDING_INSERT`, `CONFIRM_DEPTH`/`CONFIRM_FRAMES`,
//! `EARLY_DROP_FAILED`). Per-CPU arrays only: no locks, no allocation.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use conntrack_common::{
    CONFIRM_DEPTH, COUNTER_SLOTS, ConfirmFrame, Counter, HIST_OVERFLOW, HIST_SLOTS, PendingInsert,
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

/// Depth of this CPU's stack of `__nf_conntrack_confirm` calls in flight.
#[map]
pub static CONFIRM_DEPTH_NOW: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// The frames of that stack. A map rather than an array in a struct, so that
/// the map lookup bounds-checks the index for the verifier.
#[map]
pub static CONFIRM_FRAMES: PerCpuArray<ConfirmFrame> =
    PerCpuArray::with_max_entries(CONFIRM_DEPTH, 0);

/// Set by the `early_drop` return probe when it found nothing to evict; read
/// and cleared by the `__nf_conntrack_alloc` return probe (its only caller).
#[map]
pub static EARLY_DROP_FAILED: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

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
