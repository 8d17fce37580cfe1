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
    CLASH_FAILED, CLASH_NONE, CLASH_RESOLVED, ConfirmFrame, Counter, IPS_DYING, NF_ACCEPT, NF_DROP,
    NFCT_PTRMASK,
};

use crate::{
    config, life,
    maps::{
        DROP_FLAGS, EARLY_DROP_FAILED, EARLY_DROPS, IN_EARLY_DROP, confirms, count, current_task,
        flags_add, flags_set,
    },
    origin,
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
    let mut early_drop_failed = false;
    if flags_set(DROP_FLAGS) {
        let task = current_task();
        // SAFETY: a plain read of this task's entry, removed right below.
        early_drop_failed = unsafe { EARLY_DROP_FAILED.get(task) }.is_some_and(|v| *v != 0);
        if early_drop_failed && EARLY_DROP_FAILED.remove(task).is_ok() {
            flags_add(DROP_FLAGS, u64::MAX);
        }
    }
    let (have_args, args) = life::take_alloc_args();
    if !have_args {
        count(Counter::AllocWithoutEntry);
    }
    if ret < u64::MAX - MAX_ERRNO + 1 {
        count(Counter::AllocOk);
        if have_args {
            life::born(ret, &args);
        }
    } else if early_drop_failed || !config::early_drop_probed() {
        count(Counter::TableFull);
        if have_args {
            origin::bump(&args.key, |s| s.table_full += 1);
        }
    } else {
        count(Counter::AllocFailedOther);
        if have_args {
            origin::bump(&args.key, |s| s.alloc_failed += 1);
        }
    }
}

/// `early_drop()` entry: deletions until its return are evictions.
#[kprobe]
pub fn early_drop(_ctx: ProbeContext) -> u32 {
    // A task already flagged (a return that never ran) is counted once.
    let task = current_task();
    // SAFETY: a plain read of this task's entry.
    let fresh = unsafe { IN_EARLY_DROP.get(task) }.is_none();
    if IN_EARLY_DROP.insert(task, 1u32, 0).is_ok() && fresh {
        flags_add(EARLY_DROPS, 1);
    }
    0
}

#[kretprobe]
pub fn early_drop_ret(ctx: RetProbeContext) -> u32 {
    let ret: u64 = ctx.ret();
    if IN_EARLY_DROP.remove(current_task()).is_ok() {
        flags_add(EARLY_DROPS, u64::MAX);
    }
    // `early_drop` returns int (bool in some trees): only the low 32 bits count.
    if ret as u32 != 0 {
        count(Counter::EarlyDropOk);
    } else {
        count(Counter::EarlyDropFailed);
        let task = current_task();
        // SAFETY: a plain read of this task's entry.
        let fresh = unsafe { EARLY_DROP_FAILED.get(task) }.is_none();
        if EARLY_DROP_FAILED.insert(task, 1u32, 0).is_ok() && fresh {
            flags_add(DROP_FLAGS, 1);
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
        Some(skb) => {
            // SAFETY: bpf_probe_read_kernel checks the address.
            match unsafe { bpf_probe_read_kernel((skb + config::off_skb_nfct()) as *const u64) } {
                Ok(nfct) => nfct & NFCT_PTRMASK,
                Err(_) => 0,
            }
        }
        None => 0,
    };
    let frame = ConfirmFrame {
        ct,
        clash: CLASH_NONE,
        _pad: 0,
    };
    // No room: the return finds no frame and counts the miss.
    let _ = confirms().push(frame);
}

#[kretprobe]
pub fn confirm_ret(ctx: RetProbeContext) -> u32 {
    try_confirm_ret(&ctx);
    0
}

#[inline(always)]
fn try_confirm_ret(ctx: &RetProbeContext) {
    let verdict: u64 = ctx.ret();
    let (found, frame) = confirms().pop(ConfirmFrame::default());
    if !found {
        count(Counter::ConfirmWithoutEntry);
    }
    let (ct, clash) = (frame.ct, frame.clash);
    if verdict as u32 != NF_DROP {
        return;
    }
    count(Counter::ConfirmDrops);
    let reason = if !found {
        Counter::DropOther
    } else if clash == CLASH_FAILED {
        Counter::DropClash
    } else {
        // SAFETY: bpf_probe_read_kernel checks the address.
        let status = unsafe { bpf_probe_read_kernel((ct + config::off_status()) as *const u64) };
        match status {
            Ok(s) if s & IPS_DYING != 0 => Counter::DropDying,
            Ok(_) if config::has_chain_limit() && config::clash_probed() && ct != 0 => {
                Counter::DropChainTooLong
            }
            _ => Counter::DropOther,
        }
    };
    count(reason);
    if ct != 0 {
        let (key, _) = origin::ct_origin(ct);
        origin::bump(&key, |s| match reason {
            Counter::DropClash => s.clash += 1,
            Counter::DropDying => s.dying += 1,
            Counter::DropChainTooLong => s.chain_too_long += 1,
            _ => s.other += 1,
        });
    }
}

#[kretprobe]
pub fn resolve_clash_ret(ctx: RetProbeContext) -> u32 {
    let verdict: u64 = ctx.ret();
    let resolved = verdict as u32 == NF_ACCEPT;
    if resolved {
        count(Counter::ClashResolved);
    }
    // `nf_ct_resolve_clash` is only called from inside
    // `__nf_conntrack_confirm`: this task's innermost frame is that call's.
    if let Some(f) = confirms().innermost() {
        // SAFETY: this call's own frame (frames.rs checks its owner).
        unsafe {
            (*f).clash = if resolved {
                CLASH_RESOLVED
            } else {
                CLASH_FAILED
            }
        };
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
