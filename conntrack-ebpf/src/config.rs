//! Load-time settings. The loader overrides every one of them with values read
//! from the running kernel's BTF (see conntrack-user/src/offsets.rs); the
//! zeros here are never used for real: a walk with wrong offsets ends at the
//! wrong nulls marker and is counted as a mismatch instead of a length.

#[unsafe(no_mangle)]
static OFF_TUPLEHASH: u32 = 0;
#[unsafe(no_mangle)]
static TUPLEHASH_SIZE: u32 = 0;
#[unsafe(no_mangle)]
static OFF_HNNODE: u32 = 0;
#[unsafe(no_mangle)]
static OFF_NEXT: u32 = 0;
#[unsafe(no_mangle)]
static OFF_PPREV: u32 = 0;
#[unsafe(no_mangle)]
static OFF_TUPLE_DIR: u32 = 0;
#[unsafe(no_mangle)]
static OFF_STATUS: u32 = 0;
#[unsafe(no_mangle)]
static OFF_SKB_NFCT: u32 = 0;
#[unsafe(no_mangle)]
static HAS_CHAIN_LIMIT: u32 = 0;
#[unsafe(no_mangle)]
static CLASH_PROBED: u32 = 0;
#[unsafe(no_mangle)]
static EARLY_DROP_PROBED: u32 = 0;
#[unsafe(no_mangle)]
static OFF_CT_NET: u32 = 0;
#[unsafe(no_mangle)]
static OFF_NET_INUM: u32 = 0;
#[unsafe(no_mangle)]
static OFF_TH_TUPLE: u32 = 0;
#[unsafe(no_mangle)]
static OFF_TUPLE_SRC: u32 = 0;
#[unsafe(no_mangle)]
static OFF_TUPLE_L3NUM: u32 = 0;
#[unsafe(no_mangle)]
static OFF_TUPLE_PROTONUM: u32 = 0;
#[unsafe(no_mangle)]
static OFF_CT_TIMEOUT: u32 = 0;
#[unsafe(no_mangle)]
static OFF_CT_TCP_STATE: u32 = 0;
#[unsafe(no_mangle)]
static PER_CPU_CALLS: u32 = 0;
#[unsafe(no_mangle)]
static OFF_CT_EXT: u32 = 0;
#[unsafe(no_mangle)]
static OFF_EXT_LEN: u32 = 0;
#[unsafe(no_mangle)]
static ADDR_CT_HASH: u64 = 0;
#[unsafe(no_mangle)]
static ADDR_CT_HTABLE_SIZE: u64 = 0;
#[unsafe(no_mangle)]
static LIFE_BUCKET_MASK: u32 = 0;
#[unsafe(no_mangle)]
static CHAIN_ALERT: u32 = u32::MAX;

/// Reads a global through a volatile load: without it LLVM folds the
/// initial value into the code and the loader's override has no effect.
macro_rules! global {
    ($name:ident) => {
        // SAFETY: a plain read of a static that lives in .rodata.
        unsafe { core::ptr::read_volatile(&$name) }
    };
}

#[inline(always)]
pub fn off_tuplehash() -> u64 {
    global!(OFF_TUPLEHASH) as u64
}
#[inline(always)]
pub fn tuplehash_size() -> u64 {
    global!(TUPLEHASH_SIZE) as u64
}
#[inline(always)]
pub fn off_hnnode() -> u64 {
    global!(OFF_HNNODE) as u64
}
#[inline(always)]
pub fn off_next() -> u64 {
    global!(OFF_NEXT) as u64
}
#[inline(always)]
pub fn off_pprev() -> u64 {
    global!(OFF_PPREV) as u64
}
#[inline(always)]
pub fn off_tuple_dir() -> u64 {
    global!(OFF_TUPLE_DIR) as u64
}
#[inline(always)]
pub fn off_status() -> u64 {
    global!(OFF_STATUS) as u64
}
#[inline(always)]
pub fn off_skb_nfct() -> u64 {
    global!(OFF_SKB_NFCT) as u64
}
#[inline(always)]
pub fn has_chain_limit() -> bool {
    global!(HAS_CHAIN_LIMIT) != 0
}
#[inline(always)]
pub fn clash_probed() -> bool {
    global!(CLASH_PROBED) != 0
}
#[inline(always)]
pub fn early_drop_probed() -> bool {
    global!(EARLY_DROP_PROBED) != 0
}
/// Calls in flight kept per CPU rather than per task (frames.rs).
#[inline(always)]
pub fn per_cpu_calls() -> bool {
    global!(PER_CPU_CALLS) != 0
}

macro_rules! offset {
    ($($f:ident => $name:ident),* $(,)?) => {
        $(
            #[inline(always)]
            pub fn $f() -> u64 {
                global!($name) as u64
            }
        )*
    };
}

offset! {
    off_ct_net => OFF_CT_NET,
    off_net_inum => OFF_NET_INUM,
    off_th_tuple => OFF_TH_TUPLE,
    off_tuple_src => OFF_TUPLE_SRC,
    off_tuple_l3num => OFF_TUPLE_L3NUM,
    off_tuple_protonum => OFF_TUPLE_PROTONUM,
    off_ct_timeout => OFF_CT_TIMEOUT,
    off_ct_tcp_state => OFF_CT_TCP_STATE,
    off_ct_ext => OFF_CT_EXT,
    off_ext_len => OFF_EXT_LEN,
    addr_ct_hash => ADDR_CT_HASH,
    addr_ct_htable_size => ADDR_CT_HTABLE_SIZE,
}

/// A chain this long after an insert is an alert (maps.rs `ALERTS`).
#[inline(always)]
pub fn chain_alert() -> u32 {
    global!(CHAIN_ALERT)
}

/// `LIFE_SLOTS` buckets minus one.
#[inline(always)]
pub fn life_bucket_mask() -> u32 {
    global!(LIFE_BUCKET_MASK)
}
