//! The layouts both sides rely on, checked at compile time: every Pod type
//! is its fields laid end to end (no implicit padding), the counters are
//! dense, and the Pod claims the user side makes.

use crate::{
    AllocArgs, CONFIRM_DEPTH, COUNTER_SLOTS, CallStack, ChainHist, Config, ConfirmFrame, Counter,
    CounterBlock, HIST_OVERFLOW, LookupFrame, OriginKey, OriginStats, PendingInsert, SCRATCH_WORDS,
    StatsBlock, WALK_LIMIT,
};

// Layout invariants, checked at compile time.
const _: () = assert!(Counter::ALL.len() as u32 <= COUNTER_SLOTS);
const _: () = assert!(WALK_LIMIT < HIST_OVERFLOW);
// `Counter::ALL` names every counter once, in index order: dense (a variant
// left out shifts every index after it), and ending at the last variant (a
// variant left out at the end).
const _: () = {
    assert!(Counter::LAST as usize + 1 == Counter::ALL.len());
    let mut i = 0;
    while i < Counter::ALL.len() {
        assert!(Counter::ALL[i] as usize == i);
        i += 1;
    }
};

/// Asserts at compile time that `$t` is exactly its fields laid end to end:
/// no implicit padding, which the `aya::Pod` claims below rely on. The
/// pattern names every field with its type (a field added, removed or
/// retyped without this list fails to compile), and the size must be the
/// sum of theirs. Both sides compile it: kernel and user agree on layout.
macro_rules! no_padding {
    ($t:path { $($f:ident: $ft:ty),* $(,)? }) => {
        const _: () = {
            #[expect(dead_code, reason = "compiled for its pattern, never called")]
            fn every_field_is_listed(v: $t) {
                let $t { $($f),* } = v;
                $(let _: $ft = $f;)*
            }
            assert!(core::mem::size_of::<$t>() == 0 $(+ core::mem::size_of::<$ft>())*);
        };
    };
}

no_padding!(StatsBlock {
    counters: CounterBlock,
    chain_orig: ChainHist,
    chain_reply: ChainHist,
    scratch: [u64; SCRATCH_WORDS],
});
no_padding!(PendingInsert {
    ct: u64,
    hash: u32,
    reply_hash: u32,
    valid: u32,
    _pad: u32,
});
no_padding!(ConfirmFrame {
    ct: u64,
    clash: u32,
    _pad: u32,
});
no_padding!(OriginKey {
    netns: u32,
    family: u16,
    _pad: u16,
    addr: [u32; 4],
});
no_padding!(OriginStats {
    inserts: u64,
    table_full: u64,
    clash: u64,
    early_drop_evicted: u64,
    table_full_attributed: u64,
    chain_too_long: u64,
    dying: u64,
    other: u64,
    alloc_failed: u64,
});
no_padding!(AllocArgs { key: OriginKey });
no_padding!(LookupFrame {
    start_ns: u64,
    hash: u32,
    _pad: u32,
});
no_padding!(Config {
    addr_ct_hash: u64,
    addr_ct_htable_size: u64,
    off_tuplehash: u32,
    tuplehash_size: u32,
    off_hnnode: u32,
    off_next: u32,
    off_pprev: u32,
    off_tuple_dir: u32,
    off_status: u32,
    off_skb_nfct: u32,
    off_ct_net: u32,
    off_net_inum: u32,
    off_th_tuple: u32,
    off_tuple_src: u32,
    off_tuple_l3num: u32,
    off_tuple_protonum: u32,
    off_ct_timeout: u32,
    off_ct_tcp_state: u32,
    off_ct_ext: u32,
    off_ext_len: u32,
    has_chain_limit: u32,
    clash_probed: u32,
    early_drop_probed: u32,
    per_cpu_calls: u32,
    life_bucket_mask: u32,
    chain_alert: u32,
});
// The eBPF-only call stacks, for each frame type they hold.
no_padding!(CallStack<AllocArgs> {
    depth: u32,
    _pad: u32,
    task: [u64; CONFIRM_DEPTH as usize],
    frame: [AllocArgs; CONFIRM_DEPTH as usize],
});
no_padding!(CallStack<ConfirmFrame> {
    depth: u32,
    _pad: u32,
    task: [u64; CONFIRM_DEPTH as usize],
    frame: [ConfirmFrame; CONFIRM_DEPTH as usize],
});
no_padding!(CallStack<LookupFrame> {
    depth: u32,
    _pad: u32,
    task: [u64; CONFIRM_DEPTH as usize],
    frame: [LookupFrame; CONFIRM_DEPTH as usize],
});
// And the sizes themselves, spelled out: the loader's `Config` must match
// the object's `CONFIG` byte for byte, or `override_global` refuses it.
const _: () = assert!(core::mem::size_of::<Config>() == 2 * 8 + 24 * 4);
const _: () = assert!(core::mem::size_of::<OriginKey>() == 24);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers with explicit padding fields: every bit
    // pattern is valid and there is no implicit padding.
    unsafe impl aya::Pod for crate::PendingInsert {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::ConfirmFrame {}
    // SAFETY: as above (`_pad` makes the padding explicit).
    unsafe impl aya::Pod for crate::OriginKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::OriginStats {}
    // SAFETY: as above (arrays of u64 and a u64, no padding).
    unsafe impl aya::Pod for crate::StatsBlock {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::LookupFrame {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::AllocArgs {}
    // SAFETY: as above (u64 fields first, then u32s of an even count: no
    // padding anywhere).
    unsafe impl aya::Pod for crate::Config {}
}
