//! Exact chain lengths at insertion.
//!
//! `__nf_conntrack_hash_insert(struct nf_conn *ct, unsigned int hash,
//! unsigned int reply_hash)` has had this signature from 4.18 to 7.3.4; `hash`
//! and `reply_hash` are bucket indices (already scaled). Both callers
//! (`__nf_conntrack_confirm`, `nf_conntrack_hash_check_insert`) hold both
//! bucket locks with bottom halves disabled from before the call until after
//! it returns, and a resize (`nf_conntrack_hash_resize`) needs every bucket
//! lock: from the entry of the call to its return the two chains and the
//! table pointer cannot change under the probe.
//!
//! Nodes are added at the head (`hlist_nulls_add_head_rcu`), the reply node
//! last, and every bucket `i` ends with the nulls marker `(i << 1) | 1`
//! (`INIT_HLIST_NULLS_HEAD(&hash[i], i)` in `nf_ct_alloc_hashtable`). See
//! net/netfilter/nf_conntrack_core.c (v6.1) and include/linux/list_nulls.h.
//!
//! Two ways to walk, chosen by the loader:
//!
//! - **At entry** (`fe_insert`, fentry, or `insert`, a kprobe where fentry
//!   cannot attach), where the loader found the table's
//!   address (`nf_conntrack_hash` in kallsyms, as on Debian's kernels): each
//!   bucket is walked from its head, `nf_conntrack_hash[i].first`, to its
//!   marker, and the entry's own nodes (not linked yet) are added: one per
//!   bucket, two when both directions share one. The marker proves the walk:
//!   a wrong table, bucket or `next` offset ends anywhere but at marker `i`.
//!   The entry's tuple offsets, which the walk does not use but the origin
//!   and the lifetimes do, are proven by the direction each tuple states
//!   (`tuplehash[d].tuple.dst.dir == d`). No return probe: a kretprobe costs
//!   an entry handler, a return trampoline and a second dispatch.
//! - **At return** (`hash_insert` + `hash_insert_ret`), where the table's
//!   address is unknown (no `CONFIG_KALLSYMS_ALL`): walking from the entry's
//!   own node to the marker counts the whole chain (the node is at or next
//!   to the head). The marker alone does not prove the offsets there: a node
//!   pointer 8 bytes off lands on `hnnode.pprev`, which points back into the
//!   same chain, so such a walk would end at the right marker with a length
//!   off by one. Before each walk two more facts are checked: the start node
//!   is linked where it claims (`*node->pprev == node`), and its tuple says
//!   its own direction.
//!
//! A walk that fails any check is counted as a mismatch and never recorded
//! as a length.

use aya_ebpf::{
    EbpfContext,
    macros::{fentry, fexit, kprobe, kretprobe},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use conntrack_common::{Counter, HIST_OVERFLOW, PendingInsert, WALK_LIMIT};

use aya_log_ebpf::warn;

use crate::{
    config,
    counters::{Scratch, Stats, alert, count, first_diag, stats},
    life,
    maps::PENDING_INSERT,
    mem::{Direct, Kmem, Probe},
    origin,
};

#[kprobe]
pub(crate) fn insert(ctx: ProbeContext) -> u32 {
    if let (Some(ct), Some(hash), Some(reply_hash)) =
        (ctx.arg::<u64>(0), ctx.arg::<u32>(1), ctx.arg::<u32>(2))
    {
        at_entry::<Probe, _>(&ctx, ct, hash, reply_hash);
    }
    0
}

/// `insert` as an fentry program: the entry's own fields are read
/// directly (mem.rs); the table, which no BTF describes, as before.
#[fentry(function = "__nf_conntrack_hash_insert")]
pub(crate) fn fe_insert(ctx: FEntryContext) -> u32 {
    at_entry::<Direct, _>(
        &ctx,
        ctx.arg::<u64>(0),
        ctx.arg::<u32>(1),
        ctx.arg::<u32>(2),
    );
    0
}

#[inline(always)]
fn at_entry<M: Kmem, C: EbpfContext>(ctx: &C, ct: u64, hash: u32, reply_hash: u32) {
    let Some(s) = stats() else {
        return;
    };
    let opaque = |v: u64| s.launder(Scratch::Insert, v);
    // Both walks first, for the verifier (see `at_return`).
    let table = Probe::read::<u64>(config::addr_ct_hash());
    let orig_th = ct + config::off_tuplehash();
    let reply_th = orig_th + config::tuplehash_size();
    let same_bucket = hash == reply_hash;
    // A tuple in the wrong direction means the entry's offsets are wrong:
    // neither walk is recorded then, though neither used them.
    let proof = match (direction::<M>(orig_th, 0), direction::<M>(reply_th, 1)) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(w), _) | (_, Err(w)) => Err(w),
    };
    let (reply, orig) = match (table, proof) {
        (None, _) => {
            let e = opaque(Walk::ReadError.encode());
            (e, e)
        }
        (Some(_), Err(w)) => {
            let e = opaque(w.encode());
            (e, e)
        }
        (Some(table), Ok(())) => {
            // The entry's reply node, and its original one if it shares
            // the bucket, are not linked yet.
            let reply = opaque(head_walk(table, reply_hash, 1 + u32::from(same_bucket)).encode());
            let orig = if same_bucket {
                reply
            } else {
                opaque(head_walk(table, hash, 1).encode())
            };
            (reply, orig)
        }
    };
    record::<M, C>(ctx, &s, ct, hash, reply_hash, orig, reply);
}

/// What both ways have in common once the walks are done: the insert
/// counted for its origin, its life started, its extension area, both
/// chains accounted.
#[inline(always)]
fn record<M: Kmem, C: EbpfContext>(
    ctx: &C,
    s: &Stats,
    ct: u64,
    hash: u32,
    reply_hash: u32,
    orig: u64,
    reply: u64,
) {
    s.count(Counter::Inserts);
    let (key, _) = origin::ct_origin::<M>(ct);
    origin::bump(&key, |o| &mut o.inserts);
    extension_memory::<M>(s, ct);
    life::start(s, ct);

    if hash == reply_hash {
        s.count(Counter::SameBucket);
    }
    account(s, Walk::decode(reply), true);
    account(s, Walk::decode(orig), false);
    if let Some(kind) = Walk::decode(reply).failure() {
        diagnose(ctx, kind, reply_hash);
    } else if let Some(kind) = Walk::decode(orig).failure() {
        diagnose(ctx, kind, hash);
    }
}

#[kprobe]
pub(crate) fn hash_insert(ctx: ProbeContext) -> u32 {
    try_hash_insert(&ctx);
    0
}

#[inline(always)]
fn try_hash_insert(ctx: &ProbeContext) {
    let (Some(ct), Some(hash), Some(reply_hash)) =
        (ctx.arg::<u64>(0), ctx.arg::<u32>(1), ctx.arg::<u32>(2))
    else {
        return;
    };
    if let Some(p) = PENDING_INSERT.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; see the module comment for why one slot
        // per CPU cannot be overwritten before the matching return.
        unsafe {
            if (*p).valid != 0 {
                // The previous call's return probe never ran (kretprobe
                // instances exhausted): that insert went uncounted.
                count(Counter::InsertReturnMissed);
            }
            *p = PendingInsert {
                ct,
                hash,
                reply_hash,
                valid: 1,
                _pad: 0,
            }
        };
    }
}

#[kretprobe]
pub(crate) fn hash_insert_ret(ctx: RetProbeContext) -> u32 {
    try_hash_insert_ret(&ctx);
    0
}

#[inline(always)]
fn try_hash_insert_ret(ctx: &RetProbeContext) {
    let Some(p) = PENDING_INSERT.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot, written by the entry probe of this call.
    let pending = unsafe { *p };
    // SAFETY: as above.
    unsafe { (*p).valid = 0 };
    if pending.valid == 0 {
        count(Counter::InsertWithoutEntry);
        return;
    }
    at_return::<Probe, _>(ctx, pending.ct, pending.hash, pending.reply_hash);
}

/// fentry mode's insert: an fexit program, which sees the call's arguments
/// with its return, the entry's nodes linked at the heads of their buckets.
/// Every read is a direct load through the BTF-typed entry (mem.rs), the
/// walks included: no helper call at all, where the entry-side walk needs
/// three (the table pointer and two bucket heads, which no BTF describes).
///
/// Proofs, all from the entry's own nodes:
/// - its tuples state their direction (`tuplehash[d].tuple.dst.dir == d`);
/// - both nodes are linked where the kernel links them
///   (`hlist_nulls_add_head_rcu`): the reply node heads bucket `reply_hash`,
///   so its `pprev` is `&table[reply_hash].first`; the original node heads
///   bucket `hash`, so its `pprev` is `reply.pprev - 8 * (reply_hash - hash)`,
///   or, sharing the reply's bucket, it follows the reply node (`pprev` is
///   `&reply.next`). A node pointer 8 bytes off (the `pprev` case a marker
///   alone misses, see the module comment) breaks these;
/// - each walk ends at its own bucket's nulls marker.
#[fexit(function = "__nf_conntrack_hash_insert")]
pub(crate) fn fx_insert(ctx: FExitContext) -> u32 {
    let Some(s) = stats() else {
        return 0;
    };
    let (ct, hash, reply_hash) = (ctx.arg::<u64>(0), ctx.arg::<u32>(1), ctx.arg::<u32>(2));
    let orig_th = ct + config::off_tuplehash();
    let reply_th = orig_th + config::tuplehash_size();
    let (orig_node, reply_node) = (
        orig_th + config::off_hnnode(),
        reply_th + config::off_hnnode(),
    );
    let same_bucket = hash == reply_hash;
    let proof = match (
        direction::<Direct>(orig_th, 0),
        direction::<Direct>(reply_th, 1),
        linked_at_heads(&s, orig_node, reply_node, hash, reply_hash),
    ) {
        (Ok(()), Ok(()), Ok(())) => Ok(()),
        (Err(w), _, _) | (_, Err(w), _) | (_, _, Err(w)) => Err(w),
    };
    let (reply, orig) = if let Err(w) = proof {
        let e = s.launder(Scratch::Insert, w.encode());
        (e, e)
    } else {
        let reply = s.launder(
            Scratch::Insert,
            direct_walk(&s, reply_node, reply_hash).encode(),
        );
        let orig = if same_bucket {
            reply
        } else {
            s.launder(Scratch::Insert, direct_walk(&s, orig_node, hash).encode())
        };
        (reply, orig)
    };
    record::<Direct, _>(&ctx, &s, ct, hash, reply_hash, orig, reply);
    0
}

/// The entry's nodes are linked as the kernel links them at insertion (see
/// [`fx_insert`]). `pprev` is a pointer to a pointer, a plain number when
/// loaded directly; the nodes' own addresses are laundered into numbers.
#[inline(always)]
fn linked_at_heads(
    s: &Stats,
    orig_node: u64,
    reply_node: u64,
    hash: u32,
    reply_hash: u32,
) -> Result<(), Walk> {
    let pprev = |node: u64| Direct::read::<u64>(node + config::off_pprev()).unwrap_or(0);
    let (orig_pprev, reply_pprev) = (pprev(orig_node), pprev(reply_node));
    let expected = if hash == reply_hash {
        s.launder(Scratch::Insert, reply_node) + config::off_next()
    } else {
        reply_pprev
            .wrapping_sub(u64::from(reply_hash).wrapping_mul(8))
            .wrapping_add(u64::from(hash).wrapping_mul(8))
    };
    if reply_pprev == 0 || orig_pprev != expected {
        return Err(Walk::LinkMismatch);
    }
    Ok(())
}

/// Walks from `node` (BTF-typed, the start node, which counts) to the
/// nulls marker with direct loads. A node pointer the verifier types is a
/// pointer, on which it allows no bit test: each is laundered into a
/// number to be tested, and the typed one followed. A load that faults
/// reads 0, taken as a read error.
#[inline(always)]
fn direct_walk(s: &Stats, node: u64, bucket: u32) -> Walk {
    let off_next = config::off_next();
    let mut p = Direct::read::<u64>(node + off_next).unwrap_or(0);
    let mut n = 1;
    while n <= WALK_LIMIT {
        let v = s.launder(Scratch::Insert, p);
        if v & 1 == 1 {
            return if v >> 1 == u64::from(bucket) {
                Walk::Len(n)
            } else {
                Walk::Mismatch
            };
        }
        if v == 0 {
            return Walk::ReadError;
        }
        p = Direct::read::<u64>(p + off_next).unwrap_or(0);
        n += 1;
    }
    Walk::Truncated
}

/// Walks both chains from the entry's own nodes, now linked, and records.
/// The walks and their proofs read through the helper: a node reached by
/// `next` is a plain number to the verifier.
#[inline(always)]
fn at_return<M: Kmem, C: EbpfContext>(ctx: &C, ct: u64, hash: u32, reply_hash: u32) {
    let Some(s) = stats() else {
        return;
    };
    // Both walks first, while the verifier holds one state here. Their
    // results stay encoded, values the verifier does not know (see `walk`),
    // until the accounting at the end: decoded, each is one of six kinds,
    // and the origin and lifetime code in between would be verified once
    // per pair of kinds (36 times).
    let orig_th = ct + config::off_tuplehash();
    let reply_th = orig_th + config::tuplehash_size();
    let reply = checked_walk(&s, reply_th, 1, reply_hash);
    let same_bucket = hash == reply_hash;
    // Both nodes in one bucket: the reply walk counted both. The original
    // node is still proven, so that a wrong offset shows.
    let orig = if same_bucket {
        match proven(orig_th, 0) {
            Ok(()) => reply,
            Err(w) => s.launder(Scratch::Insert, w.encode()),
        }
    } else {
        checked_walk(&s, orig_th, 0, hash)
    };
    record::<M, C>(ctx, &s, ct, hash, reply_hash, orig, reply);
}

/// What the entry's extension area costs: `ct->ext` is a separate kmalloc of
/// `max(ext->len, NF_CT_EXT_PREALLOC = 128)` bytes, rounded up to its kmalloc
/// size class (net/netfilter/nf_conntrack_extend.c, v5.10..v6.12; `len` is a
/// u8). Extensions can only be added before confirmation, so at insertion the
/// area is final. The tuner adds this to each entry's slab object.
#[inline(always)]
fn extension_memory<M: Kmem>(s: &Stats, ct: u64) {
    if config::off_ct_ext() == 0 {
        return;
    }
    let Some(ext) = M::read::<u64>(ct + config::off_ct_ext()) else {
        return;
    };
    if ext == 0 {
        return;
    }
    let Some(len) = M::read::<u8>(ext + config::off_ext_len()) else {
        return;
    };
    let bytes = match len {
        0..=128 => 128,
        129..=192 => 192,
        _ => 256,
    };
    s.count(Counter::ExtEntries);
    s.add(Counter::ExtBytes, bytes);
}

/// One aya-log warning per CPU on the first failed proof; later failures are
/// only counted (userspace reports them all).
#[inline(always)]
fn diagnose<C: EbpfContext>(ctx: &C, kind: u32, bucket: u32) {
    if first_diag() {
        warn!(
            ctx,
            "chain walk self-check failed (kind {}: 1 nulls, 2 link, 3 dir, 4 read) at bucket {}; further failures on this CPU are only counted",
            kind,
            bucket
        );
    }
}

/// Proves that `tuple_hash` (a `struct nf_conntrack_tuple_hash *`) is the
/// direction-`dir` half of a linked entry, then walks its chain: the result
/// encoded ([`Walk::encode`]) and opaque to the verifier.
#[inline(always)]
fn checked_walk(s: &Stats, tuple_hash: u64, dir: u8, bucket: u32) -> u64 {
    let w = match proven(tuple_hash, dir) {
        Ok(()) => walk(tuple_hash + config::off_hnnode(), bucket),
        Err(w) => w,
    };
    s.launder(Scratch::Insert, w.encode())
}

/// The tuple of `tuple_hash` says direction `dir`.
#[inline(always)]
fn direction<M: Kmem>(tuple_hash: u64, dir: u8) -> Result<(), Walk> {
    let d = M::read::<u8>(tuple_hash + config::off_tuple_dir()).ok_or(Walk::ReadError)?;
    if d != dir {
        return Err(Walk::DirMismatch);
    }
    Ok(())
}

/// `tuple_hash` says its direction and is linked where it claims.
#[inline(always)]
fn proven(tuple_hash: u64, dir: u8) -> Result<(), Walk> {
    direction::<Probe>(tuple_hash, dir)?;
    let node = tuple_hash + config::off_hnnode();
    let pprev = Probe::read::<u64>(node + config::off_pprev()).ok_or(Walk::ReadError)?;
    // A garbage pointer makes the read fail, not fault.
    let back = Probe::read::<u64>(pprev).ok_or(Walk::ReadError)?;
    if back != node {
        return Err(Walk::LinkMismatch);
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Walk {
    /// Nodes in the chain, the starting node included.
    Len(u32),
    Mismatch,
    LinkMismatch,
    DirMismatch,
    Truncated,
    ReadError,
}

impl Walk {
    /// One number for the whole result: the kind in the high half, the length
    /// in the low one.
    #[inline(always)]
    fn encode(self) -> u64 {
        match self {
            Walk::Len(n) => u64::from(n),
            Walk::Mismatch => 1 << 32,
            Walk::LinkMismatch => 2 << 32,
            Walk::DirMismatch => 3 << 32,
            Walk::Truncated => 4 << 32,
            Walk::ReadError => 5 << 32,
        }
    }

    /// The inverse of [`Walk::encode`]; anything else is a read error. The
    /// length is bounded again, for the verifier that no longer knows it.
    #[inline(always)]
    fn decode(raw: u64) -> Walk {
        match raw >> 32 {
            0 => Walk::Len((raw as u32).min(WALK_LIMIT)),
            1 => Walk::Mismatch,
            2 => Walk::LinkMismatch,
            3 => Walk::DirMismatch,
            4 => Walk::Truncated,
            _ => Walk::ReadError,
        }
    }

    /// A code for the failed proof, if any (see `diagnose`).
    #[inline(always)]
    fn failure(self) -> Option<u32> {
        match self {
            Walk::Len(_) | Walk::Truncated => None,
            Walk::Mismatch => Some(1),
            Walk::LinkMismatch => Some(2),
            Walk::DirMismatch => Some(3),
            Walk::ReadError => Some(4),
        }
    }
}

#[inline(always)]
fn account(s: &Stats, w: Walk, reply: bool) {
    match w {
        Walk::Len(n) => {
            s.count(Counter::WalksOk);
            s.chain(reply, n);
            if n >= config::chain_alert() {
                alert();
            }
        }
        Walk::Mismatch => s.count(Counter::NullsMismatch),
        Walk::LinkMismatch => s.count(Counter::LinkMismatch),
        Walk::DirMismatch => s.count(Counter::DirMismatch),
        Walk::Truncated => {
            s.count(Counter::WalksTruncated);
            s.chain(reply, HIST_OVERFLOW);
        }
        Walk::ReadError => s.count(Counter::ReadErrors),
    }
}

/// Walks from `node` to the nulls marker and checks that the marker is the one
/// of bucket `bucket`.
///
/// The verifier follows a bounded loop iteration by iteration with the counter
/// known exactly, so each of the up to `WALK_LIMIT` exits would reach the code
/// after the walk as a state of its own, and that code (the second walk, the
/// aya-log call of `diagnose`) would be verified once per exit: 255 x 255
/// paths. Linux 6.18's pruning happened to absorb that (209,044 instructions
/// processed for `hash_insert_ret`); 7.3.4's did not, and stopped at its limit
/// of 1,000,000 with E2BIG ("BPF program is too large", after 18.8 s under
/// qemu TCG). The result therefore leaves `checked_walk` through
/// `Stats::launder` (a word of map memory): one state, whatever the exit.
#[inline(always)]
fn walk(node: u64, bucket: u32) -> Walk {
    match Probe::read::<u64>(node + config::off_next()) {
        // `next` of the start node, which counts.
        Some(p) => chase(p, bucket, 1),
        None => Walk::ReadError,
    }
}

/// Walks bucket `bucket` of `table` from its head to the nulls marker and
/// checks that the marker is the bucket's own: the nodes found, plus `extra`
/// (the entry's own, not linked yet). Bounded as [`walk`] is.
#[inline(always)]
fn head_walk(table: u64, bucket: u32, extra: u32) -> Walk {
    match Probe::read::<u64>(table + u64::from(bucket) * 8) {
        // The bucket's `first`.
        Some(p) => chase(p, bucket, extra),
        None => Walk::ReadError,
    }
}

/// Follows `next` pointers from `p` to the nulls marker, at most
/// [`WALK_LIMIT`] nodes: the nodes passed, plus `counted` (those before
/// `p`), if the marker is bucket `bucket`'s. A plain counter: `1..=N`
/// carries an `exhausted` flag, one more branch per iteration for the
/// verifier.
#[inline(always)]
fn chase(mut p: u64, bucket: u32, counted: u32) -> Walk {
    let off_next = config::off_next();
    let mut n = 0;
    while n < WALK_LIMIT {
        if p & 1 == 1 {
            return if p >> 1 == u64::from(bucket) {
                Walk::Len(n + counted)
            } else {
                Walk::Mismatch
            };
        }
        // A bad address is an error, not a fault.
        match Probe::read::<u64>(p + off_next) {
            Some(next) => p = next,
            None => return Walk::ReadError,
        }
        n += 1;
    }
    Walk::Truncated
}
