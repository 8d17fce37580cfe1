//! Load-time settings: one global, [`CONFIG`] (conntrack-common `Config`),
//! that the loader overrides as a whole with values read from the running
//! kernel (conntrack-user probes.rs `Plan::config`). The object's own value,
//! `Config::UNSET`, is never used for real: a walk with its zero offsets
//! ends at the wrong nulls marker and is counted as a mismatch instead of a
//! length.

use conntrack_common::Config;

// No `aya_ebpf::Global<Config>`: its `load` copies the whole struct (a
// volatile read of 112 bytes onto the stack) where each accessor needs one
// field. The name is `Config::GLOBAL`, which the loader overrides (it fails
// to load an object without it).
#[unsafe(no_mangle)]
static CONFIG: Config = Config::UNSET;

/// Reads one field of [`CONFIG`] with a volatile load of that field alone:
/// without it LLVM folds `Config::UNSET` into the code and the loader's
/// override has no effect; a volatile copy of the whole struct would cost a
/// stack copy per firing.
macro_rules! field {
    ($f:ident) => {
        // SAFETY: an aligned field of an initialised static that lives in
        // .rodata (a read-only map frozen by the loader): nothing writes it
        // while a program runs.
        unsafe { core::ptr::read_volatile(&raw const CONFIG.$f) }
    };
}

/// Accessors for the `u32` offsets, widened to `u64` for pointer maths.
macro_rules! offset {
    ($($f:ident),* $(,)?) => {
        $(
            #[inline(always)]
            pub(crate) fn $f() -> u64 {
                u64::from(field!($f))
            }
        )*
    };
}

/// Accessors for the `u32` 0/1 flags.
macro_rules! flag {
    ($($(#[$doc:meta])* $f:ident),* $(,)?) => {
        $(
            $(#[$doc])*
            #[inline(always)]
            pub(crate) fn $f() -> bool {
                field!($f) != 0
            }
        )*
    };
}

offset! {
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
}

flag! {
    has_chain_limit,
    clash_probed,
    early_drop_probed,
    /// Calls in flight kept per CPU rather than per task (frames.rs).
    per_cpu_calls,
}

/// Address of `nf_conntrack_hash` (0: unknown).
#[inline(always)]
pub(crate) fn addr_ct_hash() -> u64 {
    field!(addr_ct_hash)
}

/// Address of `nf_conntrack_htable_size` (0: unknown).
#[inline(always)]
pub(crate) fn addr_ct_htable_size() -> u64 {
    field!(addr_ct_htable_size)
}

/// A chain this long after an insert is an alert (maps.rs `ALERTS`).
#[inline(always)]
pub(crate) fn chain_alert() -> u32 {
    field!(chain_alert)
}

/// `LIFE_SLOTS` buckets minus one.
#[inline(always)]
pub(crate) fn life_bucket_mask() -> u32 {
    field!(life_bucket_mask)
}
