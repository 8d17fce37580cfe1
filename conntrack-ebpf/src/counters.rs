//! What the programs do with the maps of maps.rs: count (this CPU's
//! [`Stats`] block, histograms, atomic adds), raise alerts, keep the flag
//! counts, launder values through scratch words ([`opaque`]), log a first
//! diagnostic once per CPU, and key calls by the current task. Apart from
//! maps.rs so that it holds the statics alone and frames.rs can count
//! without a circle of imports.

use aya_ebpf::{helpers::generated::bpf_get_current_task, maps::PerCpuArray};
use conntrack_common::{ChainHist, Counter, HIST_OVERFLOW, StatsBlock};

use crate::maps::{ALERT_RING, ALERTS, ARMED, DIAG_LOGGED, FLAG_COUNTS, OPAQUE, STATS};

/// Which scratch word a program launders through ([`opaque`],
/// [`Stats::launder`]): one per program, since two different programs can
/// nest on one CPU (a BPF trampoline skips only the program already
/// running there, `__bpf_prog_enter_recur()`, kernel/bpf/trampoline.c,
/// 6.1) and a word shared between them could be overwritten between its
/// store and its load. Programs sharing a word are kprobes of kprobe mode
/// only, which never nest (`bpf_prog_active`).
#[derive(Clone, Copy)]
#[repr(u32)]
pub(crate) enum Scratch {
    Insert = 0,
    Delete = 1,
    Free = 2,
    Alloc = 3,
    Confirm = 4,
    Clash = 5,
}

/// `v`, as a value the verifier knows nothing about: stored in a map value
/// and loaded back (the verifier tracks no scalar through map memory). The
/// accesses are volatile so that the compiler keeps the round trip. Not
/// through the stack: a stack slot whose address a helper is given stays
/// live for the verifier, which keeps the states apart again. Used for
/// walk results (insert.rs) and to turn a BTF-typed pointer into a plain
/// number (a map key, say): a privileged program may store a pointer in
/// map memory, and what it loads back is a scalar.
#[inline(always)]
pub(crate) fn opaque(w: Scratch, v: u64) -> u64 {
    match OPAQUE.get_ptr_mut(w as u32) {
        // SAFETY: this CPU's own slot of a per-CPU array, this program's
        // own word (`Scratch`): no other program writes it on this CPU.
        Some(p) => unsafe {
            core::ptr::write_volatile(p, v);
            core::ptr::read_volatile(p)
        },
        None => u64::MAX,
    }
}

/// Whether the attribution programs are attached (maps.rs `ARMED`).
#[inline(always)]
pub(crate) fn armed() -> bool {
    match ARMED.get_ptr(0) {
        // SAFETY: a plain read of an array slot that only userspace writes.
        Some(p) => (unsafe { core::ptr::read_volatile(p) }) != 0,
        None => false,
    }
}

/// Counts an alert (maps.rs `ALERTS`), and wakes the loader while
/// attribution is not armed (`ALERT_RING`).
#[inline(always)]
pub(crate) fn alert() {
    if let Some(p) = ALERTS.get_ptr_mut(0) {
        // SAFETY: an aligned u64 of a map value; every writer adds atomically.
        unsafe { atomic_add(p, 1) };
    }
    if !armed() {
        // Default flags: the kernel wakes the reader only when it had
        // caught up (adaptive wakeup), once per burst.
        let _ = ALERT_RING.output::<u64>(&1u64, 0);
    }
}

/// Whether the flag map `which` of `FLAG_COUNTS` (maps.rs) may hold entries.
#[inline(always)]
pub(crate) fn flags_set(which: u32) -> bool {
    match FLAG_COUNTS.get_ptr(which) {
        // SAFETY: a slot of a plain array, read once (other CPUs change it
        // only through atomic adds).
        Some(p) => (unsafe { core::ptr::read_volatile(p) }) != 0,
        None => true,
    }
}

/// Adds `delta` (wrapping: -1 is `u64::MAX`) to `FLAG_COUNTS` slot `which`.
#[inline(always)]
pub(crate) fn flags_add(which: u32, delta: u64) {
    if let Some(p) = FLAG_COUNTS.get_ptr_mut(which) {
        // SAFETY: an aligned u64 slot of a map value that outlives the
        // program; every writer of the slot adds atomically.
        unsafe { atomic_add(p, delta) };
    }
}

/// The current task's address: a key that follows the call across CPUs.
#[inline(always)]
pub(crate) fn current_task() -> u64 {
    // SAFETY: a BPF helper without arguments or preconditions.
    unsafe { bpf_get_current_task() }
}

/// True the first time it is called on this CPU.
#[inline(always)]
pub(crate) fn first_diag() -> bool {
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

/// This CPU's `STATS` block, looked up once per program run: a per-CPU
/// array lookup is a helper call before Linux 6.10.
pub(crate) struct Stats(*mut StatsBlock);

/// This CPU's block (None only if the map lookup failed, which a per-CPU
/// array of one entry does not).
#[inline(always)]
pub(crate) fn stats() -> Option<Stats> {
    STATS.get_ptr_mut(0).map(Stats)
}

impl Stats {
    #[inline(always)]
    pub(crate) fn add(&self, c: Counter, n: u64) {
        // SAFETY: this CPU's block of a per-CPU array, which outlives the
        // program. Different programs can nest on one CPU (see `Scratch`),
        // so the add is atomic: a plain load-add-store interrupted by
        // another program's add of the same counter would lose one.
        if let Some(slot) = unsafe { (*self.0).counters.get_mut(c as usize) } {
            // SAFETY: an aligned u64 of that block.
            unsafe { atomic_add(slot, n) };
        }
    }

    #[inline(always)]
    pub(crate) fn count(&self, c: Counter) {
        self.add(c, 1);
    }

    /// `v` as a number the verifier knows nothing about, through this CPU's
    /// scratch word `w` (see [`opaque`], without its map lookup).
    #[inline(always)]
    pub(crate) fn launder(&self, w: Scratch, v: u64) -> u64 {
        // SAFETY: this CPU's block, and in it this program's own word
        // (`Scratch`): nothing else writes it between the store and the
        // load. `w` is below SCRATCH_WORDS (a constant enum).
        unsafe {
            let p = (*self.0).scratch.as_mut_ptr().add(w as usize);
            core::ptr::write_volatile(p, v);
            core::ptr::read_volatile(p)
        }
    }

    /// Records a chain length after an insert (lengths from
    /// `HIST_OVERFLOW` on in the overflow slot).
    #[inline(always)]
    pub(crate) fn chain(&self, reply: bool, len: u32) {
        let slot = if len < HIST_OVERFLOW {
            len
        } else {
            HIST_OVERFLOW
        } as usize;
        // SAFETY: this CPU's block; only the one insert program attached
        // (`fx_insert`, `insert` or `hash_insert_ret`) writes the chain
        // histograms, and a program does not nest in itself.
        let hist: &mut ChainHist = unsafe {
            if reply {
                &mut (*self.0).chain_reply
            } else {
                &mut (*self.0).chain_orig
            }
        };
        if let Some(s) = hist.get_mut(slot) {
            *s += 1;
        }
    }
}

/// One counter, for the paths that count a single thing (a lookup of the
/// block each time).
#[inline(always)]
pub(crate) fn count(c: Counter) {
    add(c, 1);
}

#[inline(always)]
pub(crate) fn add(c: Counter, n: u64) {
    if let Some(s) = stats() {
        s.add(c, n);
    }
}

/// Adds one to slot `slot` of this CPU's histogram `hist` (lookups).
#[inline(always)]
pub(crate) fn record_len(hist: &PerCpuArray<ChainHist>, len: u32) {
    let slot = if len < HIST_OVERFLOW {
        len
    } else {
        HIST_OVERFLOW
    };
    bump_slot(hist, slot);
}

/// Adds `delta` to the u64 at `p`, atomically (`lock *(u64 *)(p) += d`:
/// BPF_XADD, which every kernel ctscope runs on has). Rust has no atomic
/// read-modify-write for this target, hence the instruction itself.
///
/// # Safety
/// `p` must be an aligned u64 inside a map value that outlives the program.
#[inline(always)]
pub(crate) unsafe fn atomic_add(p: *mut u64, delta: u64) {
    // SAFETY: the caller's contract.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({p} + 0) += {d}",
            p = in(reg) p,
            d = in(reg) delta,
            options(nostack)
        );
    };
}
/// Adds one to slot `slot` of this CPU's histogram `hist`.
#[inline(always)]
pub(crate) fn bump_slot<const N: usize>(hist: &PerCpuArray<[u64; N]>, slot: u32) {
    if let Some(p) = hist.get_ptr_mut(0) {
        // SAFETY: this CPU's value of a per-CPU array; only the lookup
        // kprobes write these histograms, and kprobes never nest.
        if let Some(s) = unsafe { (*p).get_mut(slot as usize) } {
            *s += 1;
        }
    }
}
