//! Drops by reason, on the allocation and confirmation paths.
//!
//! - Table full: `__nf_conntrack_alloc` returns `ERR_PTR(-ENOMEM)` after
//!   `early_drop()` found nothing to evict (the path that logs "nf_conntrack:
//!   table full, dropping packet"); `nf_conntrack_in` then counts `drop`.
//! - Refused confirmation: `__nf_conntrack_confirm` returns `NF_DROP`. Clash if
//!   `nf_ct_resolve_clash` ran in this call and failed; dying if the entry has
//!   `IPS_DYING`; otherwise, on kernels with a chain limit (5.15+), the chain
//!   was too long. Source: net/netfilter/nf_conntrack_core.c, v5.10 and v6.1.

use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::{fentry, kprobe, kretprobe},
    programs::{FEntryContext, ProbeContext, RetProbeContext},
};
use conntrack_common::{
    CLASH_FAILED, CLASH_NONE, CLASH_RESOLVED, CONFIRM_DEPTH, ConfirmFrame, Counter, IPS_DYING,
    NF_ACCEPT, NF_DROP, NFCT_PTRMASK,
};

use crate::{
    config,
    maps::{CONFIRM_DEPTH_NOW, CONFIRM_FRAMES, EARLY_DROP_FAILED, count},
};

/// `IS_ERR_VALUE`: the top 4095 values of the address space are error codes.
const MAX_ERRNO: u64 = 4095;

#[kretprobe]
pub fn alloc_ret(ctx: RetProbeContext) -> u32 {
    try_alloc_ret(&ctx);
    0
}

#[inline(always)]
fn try_alloc_ret(ctx: &RetProbeContext) {
    let ret: u64 = ctx.ret();
    let mut early_drop_failed = 0;
    if let Some(p) = EARLY_DROP_FAILED.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; read and cleared here only.
        unsafe {
            early_drop_failed = *p;
            *p = 0;
        }
    }
    if ret < u64::MAX - MAX_ERRNO + 1 {
        count(Counter::AllocOk);
    } else if early_drop_failed != 0 || !config::early_drop_probed() {
        count(Counter::TableFull);
    } else {
        count(Counter::AllocFailedOther);
    }
}

#[kretprobe]
pub fn early_drop_ret(ctx: RetProbeContext) -> u32 {
    let ret: u64 = ctx.ret();
    // `early_drop` returns int (bool in some trees): only the low 32 bits count.
    if ret as u32 != 0 {
        count(Counter::EarlyDropOk);
    } else {
        count(Counter::EarlyDropFailed);
        if let Some(p) = EARLY_DROP_FAILED.get_ptr_mut(0) {
            // SAFETY: this CPU's slot.
            unsafe { *p = 1 };
        }
    }
    0
}

#[kprobe]
pub fn confirm(ctx: ProbeContext) -> u32 {
    try_confirm(&ctx);
    0
}

#[inline(always)]
fn try_confirm(ctx: &ProbeContext) {
    count(Counter::Confirms);
    let ct = match ctx.arg::<u64>(0) {
        // SAFETY: bpf_probe_read_kernel checks the address.
        Some(skb) => {
            match unsafe { bpf_probe_read_kernel((skb + config::off_skb_nfct()) as *const u64) } {
                Ok(nfct) => nfct & NFCT_PTRMASK,
                Err(_) => 0,
            }
        }
        None => 0,
    };
    let Some(depth) = CONFIRM_DEPTH_NOW.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slots; programs do not nest on one CPU, and a nested
    // confirm (softirq) completes before the interrupted one goes on, so the
    // stack discipline holds.
    unsafe {
        let d = *depth;
        match CONFIRM_FRAMES.get_ptr_mut(d) {
            Some(f) => {
                *f = ConfirmFrame {
                    ct,
                    clash: CLASH_NONE,
                    _pad: 0,
                }
            }
            None => count(Counter::ConfirmStackOverflow),
        }
        // Bounded so that lost returns cannot wedge the stack for good.
        if d < CONFIRM_DEPTH * 2 {
            *depth = d + 1;
        }
    }
}

#[kretprobe]
pub fn confirm_ret(ctx: RetProbeContext) -> u32 {
    try_confirm_ret(&ctx);
    0
}

#[inline(always)]
fn try_confirm_ret(ctx: &RetProbeContext) {
    let verdict: u64 = ctx.ret();
    let Some(depth) = CONFIRM_DEPTH_NOW.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slots, see `try_confirm`.
    let frame = unsafe {
        let d = *depth;
        if d == 0 {
            count(Counter::ConfirmWithoutEntry);
            return;
        }
        *depth = d - 1;
        CONFIRM_FRAMES.get(d - 1).copied()
    };
    if verdict as u32 != NF_DROP {
        return;
    }
    count(Counter::ConfirmDrops);
    let Some(frame) = frame else {
        count(Counter::DropOther);
        return;
    };
    if frame.clash == CLASH_FAILED {
        count(Counter::DropClash);
        return;
    }
    // SAFETY: bpf_probe_read_kernel checks the address.
    let status = unsafe { bpf_probe_read_kernel((frame.ct + config::off_status()) as *const u64) };
    match status {
        Ok(s) if s & IPS_DYING != 0 => count(Counter::DropDying),
        Ok(_) if config::has_chain_limit() && config::clash_probed() && frame.ct != 0 => {
            count(Counter::DropChainTooLong)
        }
        _ => count(Counter::DropOther),
    }
}

#[kretprobe]
pub fn resolve_clash_ret(ctx: RetProbeContext) -> u32 {
    let verdict: u64 = ctx.ret();
    let resolved = verdict as u32 == NF_ACCEPT;
    if resolved {
        count(Counter::ClashResolved);
    }
    if let Some(depth) = CONFIRM_DEPTH_NOW.get(0) {
        // `nf_ct_resolve_clash` is only called from inside
        // `__nf_conntrack_confirm`, whose frame is on top.
        let d = *depth;
        if d > 0
            && let Some(f) = CONFIRM_FRAMES.get_ptr_mut(d - 1)
        {
            // SAFETY: this CPU's slot.
            unsafe {
                (*f).clash = if resolved {
                    CLASH_RESOLVED
                } else {
                    CLASH_FAILED
                }
            };
        }
    }
    0
}

/// Capability probe for `ctscope doctor`: whether this kernel lets a tracing
/// program attach to conntrack. Never attached by `observe` in this version.
#[fentry(function = "__nf_conntrack_confirm")]
pub fn fentry_probe(_ctx: FEntryContext) -> u32 {
    count(Counter::FentryProbe);
    0
}
