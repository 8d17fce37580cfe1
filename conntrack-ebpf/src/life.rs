//! Life and death of entries, counted in the kernel: an entry's life starts
//! at its insertion (insert.rs calls [`start`]) and ends at `nf_ct_delete`;
//! `nf_conntrack_free` ends the rest (entries never inserted, and deletes
//! the probe did not see). Each death is counted in `LIFE_HIST` by its row
//! (protocol, how it ended, TCP state, assured) and its lifetime; nothing
//! leaves the kernel per event and nothing is allocated per connection.
//!
//! Births are kept in `LIFE_SLOTS` (conntrack-common `life`): a bucket of 8
//! slots per hash of the entry's address, each slot its tag and its birth
//! time. [`start`] takes a free slot (or the slot its address already holds:
//! the entry that had this address before is dead, its death unseen); a
//! death takes its slot back. With no free slot the entry lives untracked:
//! its death is still counted, without a lifetime. The slab reuses an
//! address at once (SLAB_TYPESAFE_BY_RCU); a death clears its slot before
//! the address can be reused, so a slot's tag names one entry, as long as
//! every death is seen (one that is not leaves its slot to the next entry
//! at that address, which counts it: `DeathsUnseen`). Two CPUs deleting one
//! entry at once (GC and a lookup that found it expired) can both pass the
//! `IPS_DYING` check before either sets it, and both count a death: the
//! slots are not taken with an atomic exchange, which 5.10's BPF lacks.
//!
//! `bool nf_ct_delete(struct nf_conn *ct, u32 portid, int report)` sets
//! `IPS_DYING` with `test_and_set_bit` and returns false if it was set:
//! every caller (GC, `nf_ct_kill`, `early_drop`, flush, ctnetlink) goes
//! through it, and a probe at its entry skips entries already dying.
//! Source: net/netfilter/nf_conntrack_core.c, v5.10 and v6.1.

use aya_ebpf::{
    helpers::{bpf_jiffies64, bpf_ktime_get_ns},
    macros::{fentry, kprobe},
    programs::{FEntryContext, ProbeContext},
};
use conntrack_common::{
    Counter, IPS_ASSURED, IPS_CONFIRMED, IPS_DYING, TCP_CONNTRACK_CLOSE, TCP_CONNTRACK_FIN_WAIT,
    end, life,
};

use crate::{
    config,
    counters::{Scratch, Stats, alert, atomic_add, current_task, flags_set, stats},
    maps::{EARLY_DROPS, IN_EARLY_DROP, LIFE_HIST, LIFE_SLOTS},
    mem::{Direct, Kmem, Probe},
    origin,
};

const IPPROTO_TCP: u8 = 6;

/// Now, in lifetime units (conntrack-common `life::UNIT_SHIFT`). Not the
/// coarse clock: `bpf_ktime_get_coarse_ns` is refused to tracing and kprobe
/// programs ("unknown func", Linux 6.1: its seqlock is not NMI-safe).
#[inline(always)]
fn now_units() -> u64 {
    // SAFETY: a BPF helper without arguments or preconditions.
    (unsafe { bpf_ktime_get_ns() }) >> life::UNIT_SHIFT
}

/// No lifetime (see [`take`]).
const UNTRACKED: u64 = u64::MAX;

/// The bucket of `ct` in `LIFE_SLOTS`, and its tag. The address is hashed
/// as a number: in a tracing program it is a typed pointer, on which the
/// verifier allows no shift or multiplication.
#[inline(always)]
fn bucket_of(s: &Stats, w: Scratch, ct: u64) -> Option<(*mut life::Bucket, u64)> {
    let h = life::hash(s.launder(w, ct));
    let b = LIFE_SLOTS.get_ptr_mut(life::bucket(h, config::life_bucket_mask()))?;
    Some((b, life::tag(h)))
}

/// The entry is in the table: its life starts (insert.rs).
#[inline(always)]
pub(crate) fn start(s: &Stats, ct: u64) {
    let Some((b, tag)) = bucket_of(s, Scratch::Insert, ct) else {
        return;
    };
    let slot = tag | (now_units() & life::BORN_MASK);
    // SAFETY: a bucket of an array map, which lives as long as the
    // program. Two CPUs inserting entries of the same bucket at once may
    // both take one free slot; the later write wins and the other entry's
    // death finds no slot (counted as untracked), the cost of not taking a
    // lock here.
    let bucket = unsafe { &mut *b };
    for v in bucket.iter_mut() {
        let cur = *v;
        if cur & !life::BORN_MASK == tag {
            // This address's previous entry died and no probe saw it.
            s.count(Counter::DeathsUnseen);
            alert();
            *v = slot;
            return;
        }
    }
    for v in bucket.iter_mut() {
        if *v == 0 {
            *v = slot;
            return;
        }
    }
    s.count(Counter::LifeTrackFull);
}

/// Takes `ct`'s slot back: its lifetime in units, or [`UNTRACKED`]. The
/// result leaves through the scratch word: one state for the verifier
/// whichever slot matched.
#[inline(always)]
fn take(s: &Stats, w: Scratch, ct: u64) -> u64 {
    let mut lifetime = UNTRACKED;
    if let Some((b, tag)) = bucket_of(s, w, ct) {
        // SAFETY: as in `start`.
        let bucket = unsafe { &mut *b };
        for v in bucket.iter_mut() {
            let cur = *v;
            if cur != 0 && cur & !life::BORN_MASK == tag {
                *v = 0;
                let born = cur & life::BORN_MASK;
                lifetime = now_units().wrapping_sub(born) & life::BORN_MASK;
                break;
            }
        }
    }
    s.launder(w, lifetime)
}

/// Counts one death in `LIFE_HIST`: `row` and `slot` masked into range
/// (both are in range already; the masks are what the verifier sees).
#[inline(always)]
fn hist_add(row: u32, slot: u32) {
    let Some(h) = LIFE_HIST.get_ptr_mut(row) else {
        return;
    };
    let slot = slot.min(life::UNKNOWN_SLOT) as usize;
    // SAFETY: a row of an array map, which lives as long as the program;
    // `slot` is at most the row's last index.
    let p = unsafe { h.cast::<u64>().add(slot) };
    // SAFETY: an aligned u64 of that row; every CPU adds atomically.
    unsafe { atomic_add(p, 1) };
}

#[kprobe]
pub(crate) fn ct_delete(ctx: ProbeContext) -> u32 {
    if let Some(ct) = ctx.arg::<u64>(0) {
        on_delete::<Probe>(ct);
    }
    0
}

#[fentry(function = "nf_ct_delete")]
pub(crate) fn fe_delete(ctx: FEntryContext) -> u32 {
    on_delete::<Direct>(ctx.arg::<u64>(0));
    0
}

#[inline(always)]
fn on_delete<M: Kmem>(ct: u64) {
    let status = M::read::<u64>(ct + config::off_status()).unwrap_or(0);
    if status & IPS_DYING != 0 {
        // Already dying: this call returns false and deletes nothing.
        return;
    }
    if let Some(s) = stats() {
        let lifetime = take(&s, Scratch::Delete, ct);
        died::<M>(&s, Scratch::Delete, ct, status, lifetime);
    }
}

/// Classifies an inserted entry's death and counts it.
#[inline(always)]
fn died<M: Kmem>(s: &Stats, w: Scratch, ct: u64, status: u64, lifetime: u64) {
    let in_early_drop = in_early_drop();
    let proto = M::read::<u8>(
        ct + config::off_tuplehash() + config::off_th_tuple() + config::off_tuple_protonum(),
    )
    .unwrap_or(0);
    let mut tcp_state = 0u8;
    let how = if in_early_drop {
        end::EARLY_DROP
    } else {
        if proto == IPPROTO_TCP {
            tcp_state = M::read::<u8>(ct + config::off_ct_tcp_state()).unwrap_or(0);
        }
        if (TCP_CONNTRACK_FIN_WAIT..=TCP_CONNTRACK_CLOSE).contains(&tcp_state) {
            end::TCP_CLOSED
        } else if expired::<M>(ct) {
            end::TIMEOUT
        } else {
            end::FLUSH
        }
    };
    // `status` as read before the delete: IPS_ASSURED is only ever set, and
    // long before an entry dies. Row and slot leave their computations
    // laundered (`Stats::launder`): each is reached by many paths (the
    // slot's logarithm alone by 64), and the code after them would be
    // verified once per path.
    let row = s.launder(
        w,
        u64::from(life::row(
            life::class(proto),
            how,
            tcp_state,
            status & IPS_ASSURED != 0,
        )),
    ) as u32;
    let tracked = lifetime != UNTRACKED;
    let slot = s.launder(
        w,
        u64::from(if tracked {
            life::slot(lifetime)
        } else {
            life::UNKNOWN_SLOT
        }),
    ) as u32;
    hist_add(row, slot);
    s.count(if tracked {
        Counter::DeletesTracked
    } else {
        Counter::DeletesUntracked
    });
    if in_early_drop {
        // Rare (the table is full): whose entries were evicted.
        s.count(Counter::EarlyDropEvicted);
        let (key, _) = origin::ct_origin::<M>(ct);
        origin::bump(&key, |o| &mut o.early_drop_evicted);
    }
}

/// `nf_ct_is_expired()`: `(s32)(ct->timeout - nfct_time_stamp) <= 0`, where
/// `nfct_time_stamp` is `(u32)jiffies` (include/net/netfilter/nf_conntrack.h,
/// 4.10+).
#[inline(always)]
fn expired<M: Kmem>(ct: u64) -> bool {
    match M::read::<u32>(ct + config::off_ct_timeout()) {
        Some(timeout) => {
            // SAFETY: a BPF helper without arguments or preconditions (5.5+).
            let jiffies = unsafe { bpf_jiffies64() } as u32;
            (timeout.wrapping_sub(jiffies) as i32) <= 0
        }
        None => false,
    }
}

/// `void nf_conntrack_free(struct nf_conn *ct)`: the end of every entry,
/// inserted or not.
#[kprobe]
pub(crate) fn ct_free(ctx: ProbeContext) -> u32 {
    if let Some(ct) = ctx.arg::<u64>(0) {
        on_free::<Probe>(ct);
    }
    0
}

#[fentry(function = "nf_conntrack_free")]
pub(crate) fn fe_free(ctx: FEntryContext) -> u32 {
    on_free::<Direct>(ctx.arg::<u64>(0));
    0
}

#[inline(always)]
fn on_free<M: Kmem>(ct: u64) {
    let Some(s) = stats() else {
        return;
    };
    let lifetime = take(&s, Scratch::Free, ct);
    let status = M::read::<u64>(ct + config::off_status()).unwrap_or(0);
    if lifetime != UNTRACKED {
        // Inserted, and no `nf_ct_delete` probe saw it go: on 5.10 the
        // compiler inlines `nf_ct_delete` into its callers inside
        // nf_conntrack_core.c (GC via `nf_ct_kill`, `early_drop_list`), so
        // only outside callers (ctnetlink) hit the probe. The entry is freed
        // right after its last reference went: classify it now, by the same
        // rules. `early_drop()` frees its victims before it returns
        // (`nf_ct_put` right after `nf_ct_delete`), so the task flag holds.
        s.count(Counter::FreedUndeleted);
        died::<M>(&s, Scratch::Free, ct, status, lifetime);
    } else if status & IPS_CONFIRMED == 0 {
        // Never in the table (refused at confirmation, or its packet was
        // dropped before it): counted, without a lifetime.
        s.count(Counter::FreedUnconfirmed);
        let proto = M::read::<u8>(
            ct + config::off_tuplehash() + config::off_th_tuple() + config::off_tuple_protonum(),
        )
        .unwrap_or(0);
        hist_add(
            life::row(life::class(proto), end::UNCONFIRMED, 0, false),
            life::UNKNOWN_SLOT,
        );
    }
}

/// Whether this task is inside `early_drop()`: its deletions are evictions.
#[inline(always)]
fn in_early_drop() -> bool {
    // SAFETY: a plain read of this task's flag.
    flags_set(EARLY_DROPS) && unsafe { IN_EARLY_DROP.get(current_task()) }.is_some()
}
