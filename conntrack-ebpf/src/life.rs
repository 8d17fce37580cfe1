//! Life and death of entries: birth at `__nf_conntrack_alloc`, insertion at
//! `__nf_conntrack_hash_insert` (insert.rs), death at `nf_ct_delete`, and
//! `nf_conntrack_free`. Keyed by `struct nf_conn *` in `CT_LIFE`; the key is
//! removed on delete or free, before the slab can hand the address out again
//! (SLAB_TYPESAFE_BY_RCU reuses it at once).
//!
//! `bool nf_ct_delete(struct nf_conn *ct, u32 portid, int report)` sets
//! `IPS_DYING` with `test_and_set_bit` and returns false if it was set: every
//! caller (GC, `nf_ct_kill`, `early_drop`, flush, ctnetlink) goes through it.
//! A delete probe skips entries already dying, and the map removal claims an
//! entry exactly once should two CPUs race to delete it.
//! Source: net/netfilter/nf_conntrack_core.c, v5.10 and v6.1.

use aya_ebpf::{
    helpers::{bpf_jiffies64, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::kprobe,
    programs::ProbeContext,
};
use conntrack_common::{
    AllocArgs, Counter, IPS_ASSURED, IPS_DYING, LIFE_ASSURED, Life, LifeEvent, OriginKey,
    TCP_CONNTRACK_CLOSE, TCP_CONNTRACK_FIN_WAIT, end,
};

use crate::{
    config,
    maps::{
        CT_LIFE, EARLY_DROPS, IN_EARLY_DROP, LIFE_EVENTS, allocs, count, current_task, flags_set,
    },
    origin,
};

const IPPROTO_TCP: u8 = 6;
/// `BPF_RB_NO_WAKEUP` (include/uapi/linux/bpf.h, 5.8+).
const BPF_RB_NO_WAKEUP: u64 = 1;

#[inline(always)]
fn now() -> u64 {
    // SAFETY: a BPF helper without arguments or preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// `__nf_conntrack_alloc(struct net *net, const struct nf_conntrack_zone *zone,
/// const struct nf_conntrack_tuple *orig, ...)`: keeps the namespace and the
/// origin for the return probe (`alloc_ret` in drops.rs), which either starts
/// the entry's life or blames the drop on its origin.
#[kprobe]
pub fn alloc(ctx: ProbeContext) -> u32 {
    if let (Some(net), Some(orig)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(2)) {
        let (key, proto) = origin::tuple_origin(orig, origin::netns_of_net(net));
        let _ = allocs().push(AllocArgs {
            key,
            proto,
            _pad: [0; 7],
        });
    }
    0
}

/// The arguments the `alloc` entry probe kept for this call: `(false,
/// default)` when there are none (see `Calls::pop`).
#[inline(always)]
pub fn take_alloc_args() -> (bool, AllocArgs) {
    allocs().pop(AllocArgs::default())
}

/// A new entry was allocated: its life starts.
#[inline(always)]
pub fn born(ct: u64, args: &AllocArgs) {
    let life = Life {
        born_ns: now(),
        confirmed_ns: 0,
        netns: args.key.netns,
        family: args.key.family,
        proto: args.proto,
        _pad: 0,
        addr: args.key.addr,
    };
    if CT_LIFE.insert(ct, life, 0).is_err() {
        count(Counter::LifeTrackFull);
    }
}

/// The entry is in the table: its lifetime counts from here. Returns its
/// origin and L4 protocol: those the allocation kept (the same tuple and
/// namespace, read before the entry existed), else read from the entry,
/// which then starts being tracked (allocated before the run started).
#[inline(always)]
pub fn confirmed(ct: u64) -> (OriginKey, u8) {
    if let Some(p) = CT_LIFE.get_ptr_mut(ct) {
        // SAFETY: the entry of `ct`, which only the CPU holding its bucket
        // locks (this one, inside the insert) changes now.
        let l = unsafe {
            (*p).confirmed_ns = now();
            &*p
        };
        let key = OriginKey {
            netns: l.netns,
            family: l.family,
            _pad: 0,
            addr: l.addr,
        };
        return (key, l.proto);
    }
    let (key, proto) = origin::ct_origin(ct);
    let life = Life {
        born_ns: 0,
        confirmed_ns: now(),
        netns: key.netns,
        family: key.family,
        proto,
        _pad: 0,
        addr: key.addr,
    };
    if CT_LIFE.insert(ct, life, 0).is_err() {
        count(Counter::LifeTrackFull);
    }
    (key, proto)
}

#[kprobe]
pub fn ct_delete(ctx: ProbeContext) -> u32 {
    if let Some(ct) = ctx.arg::<u64>(0) {
        try_ct_delete(ct);
    }
    0
}

#[inline(always)]
fn try_ct_delete(ct: u64) {
    // SAFETY: bpf_probe_read_kernel checks the address.
    let status =
        unsafe { bpf_probe_read_kernel((ct + config::off_status()) as *const u64) }.unwrap_or(0);
    if status & IPS_DYING != 0 {
        // Already dying: this call returns false and deletes nothing.
        return;
    }
    let in_early_drop = in_early_drop();
    // Explicit defaults rather than an Option (see `take_alloc_args`).
    let (tracked, life) = match CT_LIFE.get_ptr(ct) {
        Some(p) => {
            // SAFETY: a copy of the entry's record; removal below claims it.
            let l = unsafe { *p };
            (l.confirmed_ns != 0, l)
        }
        None => (false, Life::default()),
    };
    if tracked && CT_LIFE.remove(ct).is_err() {
        // Another CPU's delete of the same entry claimed it first.
        return;
    }
    if in_early_drop {
        count(Counter::EarlyDropEvicted);
    }
    if !tracked {
        count(Counter::DeletesUntracked);
        if in_early_drop {
            let (key, _) = origin::ct_origin(ct);
            origin::bump(&key, |s| s.early_drop_evicted += 1);
        }
        return;
    }
    died(ct, &life, in_early_drop, status);
}

/// Classifies a tracked entry's death, counts it for its origin and sends
/// its lifetime (from insertion) to userspace.
#[inline(always)]
fn died(ct: u64, life: &Life, in_early_drop: bool, status: u64) {
    count(Counter::DeletesTracked);
    let mut tcp_state = 0u8;
    let how = if in_early_drop {
        end::EARLY_DROP
    } else {
        if life.proto == IPPROTO_TCP {
            // SAFETY: bpf_probe_read_kernel checks the address.
            tcp_state =
                unsafe { bpf_probe_read_kernel((ct + config::off_ct_tcp_state()) as *const u8) }
                    .unwrap_or(0);
        }
        if (TCP_CONNTRACK_FIN_WAIT..=TCP_CONNTRACK_CLOSE).contains(&tcp_state) {
            end::TCP_CLOSED
        } else if expired(ct) {
            end::TIMEOUT
        } else {
            end::FLUSH
        }
    };
    let key = conntrack_common::OriginKey {
        netns: life.netns,
        family: life.family,
        _pad: 0,
        addr: life.addr,
    };
    origin::bump(&key, |s| {
        s.deletes += 1;
        if how == end::EARLY_DROP {
            s.early_drop_evicted += 1;
        }
    });
    // `status` as read before the delete: IPS_ASSURED is only ever set, and
    // long before an entry dies.
    let flags = if status & IPS_ASSURED != 0 {
        LIFE_ASSURED
    } else {
        0
    };
    emit(
        life,
        now().saturating_sub(life.confirmed_ns),
        how,
        tcp_state,
        flags,
    );
}

/// `nf_ct_is_expired()`: `(s32)(ct->timeout - nfct_time_stamp) <= 0`, where
/// `nfct_time_stamp` is `(u32)jiffies` (include/net/netfilter/nf_conntrack.h,
/// 4.10+).
#[inline(always)]
fn expired(ct: u64) -> bool {
    // SAFETY: bpf_probe_read_kernel checks the address.
    match unsafe { bpf_probe_read_kernel((ct + config::off_ct_timeout()) as *const u32) } {
        Ok(timeout) => {
            // SAFETY: a BPF helper without arguments or preconditions (5.5+).
            let jiffies = unsafe { bpf_jiffies64() } as u32;
            (timeout.wrapping_sub(jiffies) as i32) <= 0
        }
        Err(_) => false,
    }
}

/// `void nf_conntrack_free(struct nf_conn *ct)`: the end of every entry,
/// inserted or not.
#[kprobe]
pub fn ct_free(ctx: ProbeContext) -> u32 {
    let Some(ct) = ctx.arg::<u64>(0) else {
        return 0;
    };
    let life = match CT_LIFE.get_ptr(ct) {
        // SAFETY: a copy of the entry's record; removal below claims it.
        Some(p) => unsafe { *p },
        None => return 0,
    };
    if CT_LIFE.remove(ct).is_err() {
        return 0;
    }
    if life.confirmed_ns == 0 {
        count(Counter::FreedUnconfirmed);
        emit(
            &life,
            now().saturating_sub(life.born_ns),
            end::UNCONFIRMED,
            0,
            0,
        );
    } else {
        // Inserted, and no `nf_ct_delete` probe saw it go: on 5.10 the
        // compiler inlines `nf_ct_delete` into its callers inside
        // nf_conntrack_core.c (GC via `nf_ct_kill`, `early_drop_list`), so
        // only outside callers (ctnetlink) hit the probe. The entry is freed
        // right after its last reference went: classify it now, by the same
        // rules. `early_drop()` frees its victims before it returns
        // (`nf_ct_put` right after `nf_ct_delete`), so the task flag holds.
        count(Counter::FreedUndeleted);
        let in_early_drop = in_early_drop();
        if in_early_drop {
            count(Counter::EarlyDropEvicted);
        }
        // SAFETY: bpf_probe_read_kernel checks the address.
        let status = unsafe { bpf_probe_read_kernel((ct + config::off_status()) as *const u64) }
            .unwrap_or(0);
        died(ct, &life, in_early_drop, status);
    }
    0
}

/// Whether this task is inside `early_drop()`: its deletions are evictions.
#[inline(always)]
fn in_early_drop() -> bool {
    // SAFETY: a plain read of this task's flag.
    flags_set(EARLY_DROPS) && unsafe { IN_EARLY_DROP.get(current_task()) }.is_some()
}

#[inline(always)]
fn emit(life: &Life, lifetime_ns: u64, how: u8, tcp_state: u8, flags: u8) {
    match LIFE_EVENTS.reserve::<LifeEvent>(0) {
        Some(mut slot) => {
            slot.write(LifeEvent {
                lifetime_ns,
                netns: life.netns,
                proto: life.proto,
                end: how,
                tcp_state,
                flags,
            });
            // No wakeup: userspace drains the ring on a timer (every 100 ms)
            // and never waits on it, and a wakeup is an irq_work (a
            // self-IPI) per event whenever the reader has caught up.
            slot.submit(BPF_RB_NO_WAKEUP);
        }
        None => count(Counter::EventsLost),
    }
}
