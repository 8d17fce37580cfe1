//! Opt-in (`--lookups`): every `__nf_conntrack_find_get(struct net *net,
//! const struct nf_conntrack_zone *zone, const struct nf_conntrack_tuple
//! *tuple, u32 hash)` call, which runs once or twice per packet: latency,
//! hits and misses, and the length of the bucket it searched. `hash` is the
//! raw hash; the bucket is `reciprocal_scale(hash, nf_conntrack_htable_size)`
//! (`____nf_conntrack_find`, net/netfilter/nf_conntrack_core.c v5.10..v6.12).
//! The table and its size are globals the loader finds in kallsyms (Debian
//! kernels export data symbols); without them only the chain is missing.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use conntrack_common::{Counter, HIST_OVERFLOW, LookupFrame, WALK_LIMIT, latency_slot};

use crate::{
    config,
    counters::{add, bump_slot, count, record_len},
    frames::lookups,
    maps::{CHAIN_LOOKUP, LOOKUP_LATENCY, LOOKUP_MAX_NS},
};

#[kprobe]
pub(crate) fn lookup(ctx: ProbeContext) -> u32 {
    let hash = ctx.arg::<u32>(3).unwrap_or(0);
    let _ = lookups().push(LookupFrame {
        // SAFETY: a BPF helper without arguments or preconditions.
        start_ns: unsafe { bpf_ktime_get_ns() },
        hash,
        _pad: 0,
    });
    0
}

#[kretprobe]
pub(crate) fn lookup_ret(ctx: RetProbeContext) -> u32 {
    try_lookup_ret(&ctx);
    0
}

#[inline(always)]
fn try_lookup_ret(ctx: &RetProbeContext) {
    // SAFETY: a BPF helper without arguments or preconditions.
    let end = unsafe { bpf_ktime_get_ns() };
    let found: u64 = ctx.ret();
    let (ok, frame) = lookups().pop(LookupFrame::default());
    if !ok {
        count(Counter::LookupWithoutEntry);
        return;
    }
    let (start, hash) = (frame.start_ns, frame.hash);
    let ns = end.saturating_sub(start);
    count(Counter::Lookups);
    count(if found != 0 {
        Counter::LookupHits
    } else {
        Counter::LookupMisses
    });
    add(Counter::LookupNsSum, ns);
    bump_slot(&LOOKUP_LATENCY, latency_slot(ns));
    if let Some(p) = LOOKUP_MAX_NS.get_ptr_mut(0) {
        // SAFETY: as above.
        unsafe {
            if ns > *p {
                *p = ns;
            }
        }
    }
    bucket_length(hash);
}

/// Walks the bucket of raw hash `hash` from its head and records its length,
/// if the walk ends at that bucket's nulls marker.
#[inline(always)]
fn bucket_length(hash: u32) {
    let (table_at, size_at) = (config::addr_ct_hash(), config::addr_ct_htable_size());
    if table_at == 0 || size_at == 0 {
        return;
    }
    // SAFETY: bpf_probe_read_kernel checks every address it is given.
    let read = unsafe {
        (
            bpf_probe_read_kernel(table_at as *const u64),
            bpf_probe_read_kernel(size_at as *const u32),
        )
    };
    let (Ok(table), Ok(size)) = read else {
        return;
    };
    let bucket = ((u64::from(hash) * u64::from(size)) >> 32) as u32;
    // SAFETY: as above.
    let Ok(mut p) =
        (unsafe { bpf_probe_read_kernel((table + u64::from(bucket) * 8) as *const u64) })
    else {
        return;
    };
    let off_next = config::off_next();
    for len in 0..WALK_LIMIT {
        if p & 1 == 1 {
            if p >> 1 == u64::from(bucket) {
                record_len(&CHAIN_LOOKUP, len);
            } else {
                count(Counter::LookupWalkMismatch);
            }
            return;
        }
        // SAFETY: as above.
        match unsafe { bpf_probe_read_kernel((p + off_next) as *const u64) } {
            Ok(next) => p = next,
            Err(_) => return,
        }
    }
    record_len(&CHAIN_LOOKUP, HIST_OVERFLOW);
}
