//! Drops by reason, on the allocation and confirmation paths.
//!
//! - Table full: `__nf_conntrack_alloc` calls `early_drop()` once the
//!   namespace's count is over `nf_conntrack_max`, and when that finds
//!   nothing to evict it returns `ERR_PTR(-ENOMEM)` (the path that logs
//!   "nf_conntrack: table full, dropping packet"); `nf_conntrack_in` then
//!   counts `drop`. `early_drop` has no other caller, so its failed returns
//!   are the table-full refusals, counted here for their namespace.
//! - Refused confirmation: `__nf_conntrack_confirm` returns `NF_DROP`. Clash
//!   if `nf_ct_resolve_clash` ran in this call and failed (counted at its
//!   return, with the entry's origin); dying if the entry has `IPS_DYING`;
//!   otherwise, on kernels with a chain limit (5.15+), the chain was too
//!   long. Source: net/netfilter/nf_conntrack_core.c, v5.10 and v6.1.
//!
//! The `early_drop` and `nf_ct_resolve_clash` programs run only on those
//! rare paths and are always attached. The exits of `__nf_conntrack_alloc`
//! and `__nf_conntrack_confirm` run for every new connection: they tell
//! which source a refused entry came from (attribution), and fentry mode
//! attaches them only while refusals are likely (the loader arms them;
//! [`armed`]). Kprobe mode keeps them attached: a kretprobe attached while
//! calls are in flight would see returns without their entries.
//!
//! Two ways, as insert.rs: kprobes keep each call's arguments for its
//! return probe (frames.rs); fexit programs (fentry mode) see a call's
//! arguments and its result together, and read the entry directly.

use aya_ebpf::{
    macros::{fentry, fexit, kprobe, kretprobe},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use conntrack_common::{
    AllocArgs, CLASH_FAILED, CLASH_NONE, CLASH_RESOLVED, ConfirmFrame, Counter, IPS_DYING,
    NF_ACCEPT, NF_DROP, NFCT_PTRMASK, OriginKey,
};

use crate::{
    config,
    counters::{Scratch, alert, armed, count, current_task, flags_add, flags_set, opaque},
    frames::{allocs, confirms},
    maps::{CLASH_FAILED_SKB, DROP_FLAGS, EARLY_DROP_FAILED, EARLY_DROPS, IN_EARLY_DROP},
    mem::{Direct, Kmem, Probe},
    origin,
};

/// `IS_ERR_VALUE`: the top 4095 values of the address space are error codes.
const MAX_ERRNO: u64 = 4095;

/// `__nf_conntrack_alloc(struct net *net, const struct nf_conntrack_zone *zone,
/// const struct nf_conntrack_tuple *orig, ...)`: keeps the origin for the
/// return probe, which blames a failed allocation on it.
#[kprobe]
pub(crate) fn alloc(ctx: ProbeContext) -> u32 {
    if let (Some(net), Some(orig)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(2)) {
        let (key, _) = origin::tuple_origin::<Probe>(orig, origin::netns_of_net::<Probe>(net));
        let _ = allocs().push(AllocArgs { key });
    }
    0
}

#[kretprobe]
pub(crate) fn alloc_ret(ctx: RetProbeContext) -> u32 {
    let ret: u64 = ctx.ret();
    let (have_args, args) = allocs().pop(AllocArgs::default());
    if !have_args {
        count(Counter::AllocWithoutEntry);
    }
    allocated(ret, have_args.then_some(&args.key));
    0
}

/// `__nf_conntrack_alloc` as an fexit program: its arguments (the origin
/// is read only when it failed) and its result at once.
#[fexit(function = "__nf_conntrack_alloc")]
pub(crate) fn fx_alloc(ctx: FExitContext) -> u32 {
    // (net, zone, orig, repl, gfp, hash) -> struct nf_conn *: the result
    // follows the six arguments. A pointer or an error code, as a number
    // (the verifier types it as a pointer, and compares only numbers).
    let ret = opaque(Scratch::Alloc, ctx.arg::<u64>(6));
    if ret < u64::MAX - MAX_ERRNO + 1 {
        count(Counter::AllocOk);
        return 0;
    }
    let (net, orig) = (ctx.arg::<u64>(0), ctx.arg::<u64>(2));
    let (key, _) = origin::tuple_origin::<Direct>(orig, origin::netns_of_net::<Direct>(net));
    allocated(ret, Some(&key));
    0
}

/// Counts an allocation's result; a failure by reason, for its origin.
#[inline(always)]
fn allocated(ret: u64, key: Option<&OriginKey>) {
    let mut early_drop_failed = false;
    if flags_set(DROP_FLAGS) {
        let task = current_task();
        // SAFETY: a plain read of this task's entry, removed right below.
        early_drop_failed = unsafe { EARLY_DROP_FAILED.get(task) }.is_some_and(|v| *v != 0);
        if early_drop_failed && EARLY_DROP_FAILED.remove(task).is_ok() {
            flags_add(DROP_FLAGS, u64::MAX);
        }
    }
    if ret < u64::MAX - MAX_ERRNO + 1 {
        count(Counter::AllocOk);
    } else if early_drop_failed {
        // Counted already, for the namespace, at `early_drop`'s return.
        if let Some(k) = key {
            origin::bump(k, |s| &mut s.table_full_attributed);
        }
    } else if !config::early_drop_probed() {
        // Without an `early_drop` probe every failed allocation is taken as
        // table full, and counted here (the report says so).
        count(Counter::TableFull);
        if let Some(k) = key {
            origin::bump(k, |s| &mut s.table_full);
            origin::bump(k, |s| &mut s.table_full_attributed);
        }
    } else {
        count(Counter::AllocFailedOther);
        if let Some(k) = key {
            origin::bump(k, |s| &mut s.alloc_failed);
        }
    }
}

/// `early_drop(struct net *net, unsigned int hash)` entry: deletions until
/// its return are evictions. Keeps the namespace for the return probe.
#[kprobe]
pub(crate) fn early_drop(ctx: ProbeContext) -> u32 {
    let netns = ctx.arg::<u64>(0).map_or(0, origin::netns_of_net::<Probe>);
    early_drop_entered(netns);
    0
}

#[fentry(function = "early_drop")]
pub(crate) fn fe_early_drop(_ctx: FEntryContext) -> u32 {
    // The exit program has the namespace itself.
    early_drop_entered(0);
    0
}

#[inline(always)]
fn early_drop_entered(netns: u32) {
    alert();
    // A task already flagged (a return that never ran) is counted once.
    let task = current_task();
    // SAFETY: a plain read of this task's entry.
    let fresh = unsafe { IN_EARLY_DROP.get(task) }.is_none();
    if IN_EARLY_DROP.insert(task, netns, 0).is_ok() && fresh {
        flags_add(EARLY_DROPS, 1);
    }
}

#[kretprobe]
pub(crate) fn early_drop_ret(ctx: RetProbeContext) -> u32 {
    let task = current_task();
    // SAFETY: a plain read of this task's entry, removed right below.
    let netns = unsafe { IN_EARLY_DROP.get(task) }.copied().unwrap_or(0);
    early_drop_returned(ctx.ret(), netns);
    0
}

/// `early_drop(struct net *net, unsigned int hash)`: the result follows
/// the two arguments.
#[fexit(function = "early_drop")]
pub(crate) fn fx_early_drop(ctx: FExitContext) -> u32 {
    let netns = origin::netns_of_net::<Direct>(ctx.arg::<u64>(0));
    early_drop_returned(ctx.arg::<u64>(2), netns);
    0
}

#[inline(always)]
fn early_drop_returned(ret: u64, netns: u32) {
    let task = current_task();
    if IN_EARLY_DROP.remove(task).is_ok() {
        flags_add(EARLY_DROPS, u64::MAX);
    }
    // `early_drop` returns int (bool in some trees): only the low 32 bits count.
    if ret as u32 != 0 {
        count(Counter::EarlyDropOk);
        return;
    }
    count(Counter::EarlyDropFailed);
    count(Counter::TableFull);
    origin::bump(&origin::unknown_source(netns), |s| &mut s.table_full);
    // For the allocation's exit program, which names the source: only
    // while it is attached, or the flag would wait for a return that
    // never comes.
    if armed() {
        // SAFETY: a plain read of this task's entry.
        let fresh = unsafe { EARLY_DROP_FAILED.get(task) }.is_none();
        if EARLY_DROP_FAILED.insert(task, 1u32, 0).is_ok() && fresh {
            flags_add(DROP_FLAGS, 1);
        }
    }
}

#[kprobe]
pub(crate) fn confirm(ctx: ProbeContext) -> u32 {
    try_confirm(&ctx);
    0
}

#[inline(always)]
fn try_confirm(ctx: &ProbeContext) {
    count(Counter::Confirms);
    let ct = match ctx.arg::<u64>(0) {
        Some(skb) => match Probe::read::<u64>(skb + config::off_skb_nfct()) {
            Some(nfct) => nfct & NFCT_PTRMASK,
            None => 0,
        },
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
pub(crate) fn confirm_ret(ctx: RetProbeContext) -> u32 {
    let verdict: u64 = ctx.ret();
    let (found, frame) = confirms().pop(ConfirmFrame::default());
    if !found {
        count(Counter::ConfirmWithoutEntry);
    }
    if verdict as u32 == NF_DROP {
        refused(found, frame.ct, frame.clash == CLASH_FAILED);
    }
    0
}

/// `__nf_conntrack_confirm(struct sk_buff *skb)` as an fexit program: the
/// verdict follows the argument. Only a refusal costs more than a compare:
/// its entry (`skb->_nfct`), and whether a clash failed for this packet.
#[fexit(function = "__nf_conntrack_confirm")]
pub(crate) fn fx_confirm(ctx: FExitContext) -> u32 {
    count(Counter::Confirms);
    if ctx.arg::<u64>(1) as u32 != NF_DROP {
        return 0;
    }
    let skb = ctx.arg::<u64>(0);
    let ct = Direct::read::<u64>(skb + config::off_skb_nfct()).unwrap_or(0) & NFCT_PTRMASK;
    let key = opaque(Scratch::Confirm, skb);
    // SAFETY: a plain read of this packet's entry, removed right below.
    let clash = unsafe { CLASH_FAILED_SKB.get(key) }.is_some();
    if clash {
        let _ = CLASH_FAILED_SKB.remove(key);
    }
    refused(true, ct, clash);
    0
}

/// A refused confirmation, by reason, for its origin; a failed clash was
/// counted where it failed. `ct` came from `skb->_nfct`, a plain number to
/// the verifier: read through the helper.
#[inline(always)]
fn refused(found: bool, ct: u64, clash: bool) {
    count(Counter::ConfirmDrops);
    if clash {
        return;
    }
    let reason = if found {
        match Probe::read::<u64>(ct + config::off_status()) {
            Some(s) if s & IPS_DYING != 0 => Counter::DropDying,
            Some(_) if config::has_chain_limit() && config::clash_probed() && ct != 0 => {
                Counter::DropChainTooLong
            }
            _ => Counter::DropOther,
        }
    } else {
        Counter::DropOther
    };
    count(reason);
    if ct != 0 {
        let (key, _) = origin::ct_origin::<Probe>(ct);
        origin::bump(&key, |s| match reason {
            Counter::DropDying => &mut s.dying,
            Counter::DropChainTooLong => &mut s.chain_too_long,
            _ => &mut s.other,
        });
    }
}

/// `nf_ct_resolve_clash` returns: the outcome of a clash, counted here; a
/// failure is a dropped packet, counted for the entry's origin. The entry
/// is the confirmation's own (its frame: `nf_ct_resolve_clash` is only
/// called from inside `__nf_conntrack_confirm`, so this task's innermost
/// frame is that call's).
#[kretprobe]
pub(crate) fn resolve_clash_ret(ctx: RetProbeContext) -> u32 {
    let resolved = ctx.ret::<u64>() as u32 == NF_ACCEPT;
    let mut ct = 0;
    if let Some(f) = confirms().innermost() {
        // SAFETY: this call's own frame (frames.rs checks its owner).
        unsafe {
            (*f).clash = if resolved {
                CLASH_RESOLVED
            } else {
                CLASH_FAILED
            };
            ct = (*f).ct;
        }
    }
    clash_outcome(resolved, ct);
    0
}

/// `nf_ct_resolve_clash(struct sk_buff *skb, struct nf_conntrack_tuple_hash
/// *h, u32 repl_idx)` as an fexit program (fentry mode): the verdict
/// follows the three arguments. A failure is also kept by packet for the
/// confirmation's exit program, when it runs (attribution armed), so that
/// it does not take the refusal for a chain too long.
#[fexit(function = "nf_ct_resolve_clash")]
pub(crate) fn fx_resolve_clash(ctx: FExitContext) -> u32 {
    let resolved = ctx.arg::<u64>(3) as u32 == NF_ACCEPT;
    let skb = ctx.arg::<u64>(0);
    let ct = Direct::read::<u64>(skb + config::off_skb_nfct()).unwrap_or(0) & NFCT_PTRMASK;
    if !resolved && armed() {
        let _ = CLASH_FAILED_SKB.insert(opaque(Scratch::Clash, skb), 1u32, 0);
    }
    clash_outcome(resolved, ct);
    0
}

#[inline(always)]
fn clash_outcome(resolved: bool, ct: u64) {
    if resolved {
        // Routine (parallel DNS queries through a NAT): no alert.
        count(Counter::ClashResolved);
        return;
    }
    alert();
    count(Counter::DropClash);
    let key = if ct != 0 {
        origin::ct_origin::<Probe>(ct).0
    } else {
        origin::unknown_source(0)
    };
    origin::bump(&key, |s| &mut s.clash);
}

/// Capability probe for `ctscope doctor`: whether this kernel lets a tracing
/// program attach to conntrack (loaded and attached, then detached).
#[fentry(function = "__nf_conntrack_confirm")]
pub(crate) fn fentry_probe(_ctx: FEntryContext) -> u32 {
    count(Counter::FentryProbe);
    0
}
