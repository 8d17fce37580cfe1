//! Types and constants shared by the eBPF programs (`conntrack-ebpf`) and the
//! userspace loader (`conntrack-user`). `no_std`, `#[repr(C)]`, plain data.
#![no_std]

/// Chain-length histogram slots: lengths `0..=255` in their own slot, and one
/// overflow slot for walks that did not reach the nulls marker within
/// [`WALK_LIMIT`] nodes.
pub const HIST_SLOTS: u32 = 257;
/// Index of the overflow slot in the chain-length histograms.
pub const HIST_OVERFLOW: u32 = HIST_SLOTS - 1;
/// Most nodes a chain walk visits. The kernel's random chain limit is at most
/// 79 since v6.3 (c77737b736ce, backported to 6.1.y/5.15.y); kernels before 5.15
/// have no limit at all, so chains can be longer: anything beyond this lands
/// in [`HIST_OVERFLOW`] and is reported as truncated, never as a length.
pub const WALK_LIMIT: u32 = 255;

/// Deepest nesting of `__nf_conntrack_confirm` calls kept per task. Confirm can
/// be interrupted by a softirq that confirms another packet before it disables
/// bottom halves, so one frame is not enough; more than 4 levels cannot occur
/// (process, softirq, hardirq, NMI), and overflow is counted.
pub const CONFIRM_DEPTH: u32 = 4;

/// `NF_DROP` and `NF_ACCEPT` verdicts (include/uapi/linux/netfilter.h).
pub const NF_DROP: u32 = 0;
pub const NF_ACCEPT: u32 = 1;
/// `IPS_DYING_BIT` (include/uapi/linux/netfilter/nf_conntrack_common.h, stable
/// since 2.6).
pub const IPS_DYING: u64 = 1 << 9;
/// `NFCT_PTRMASK`: `skb->_nfct` keeps `ctinfo` in its 3 low bits
/// (include/linux/skbuff.h, 4.11+).
pub const NFCT_PTRMASK: u64 = !7;

/// Indices into the `COUNTERS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// `__nf_conntrack_hash_insert` returned: one new entry in the table.
    Inserts = 0,
    /// Inserts whose original and reply tuples hash to the same bucket.
    SameBucket,
    /// Chain walks that ended at the nulls marker of the expected bucket.
    WalksOk,
    /// Chain walks that ended at the marker of another bucket: the offsets
    /// are wrong, or the entry moved (resize). Numbers are not trusted then.
    NullsMismatch,
    /// Chain walks cut at `WALK_LIMIT` nodes.
    WalksTruncated,
    /// A kernel read failed during a walk.
    ReadErrors,
    /// Return probe fired without its entry probe (missed entry).
    InsertWithoutEntry,
    /// `__nf_conntrack_alloc` returned an entry.
    AllocOk,
    /// `__nf_conntrack_alloc` failed after `early_drop` found nothing to evict:
    /// "nf_conntrack: table full, dropping packet".
    TableFull,
    /// `__nf_conntrack_alloc` failed otherwise (slab allocation failure).
    AllocFailedOther,
    /// `early_drop` evicted at least one entry.
    EarlyDropOk,
    /// `early_drop` found nothing to evict.
    EarlyDropFailed,
    /// `__nf_conntrack_confirm` calls.
    Confirms,
    /// `__nf_conntrack_confirm` returned `NF_DROP`.
    ConfirmDrops,
    /// ... because a clash with an existing entry could not be resolved.
    DropClash,
    /// ... because the entry was already dying.
    DropDying,
    /// ... for the remaining reason on kernels with a chain limit (5.15+):
    /// a bucket was over its random chain limit.
    DropChainTooLong,
    /// ... for a reason ctscope cannot name on this kernel.
    DropOther,
    /// `nf_ct_resolve_clash` resolved a clash (the packet goes on).
    ClashResolved,
    /// Confirm frames deeper than `CONFIRM_DEPTH` (not kept).
    ConfirmStackOverflow,
    /// Confirm returns without a matching entry frame.
    ConfirmWithoutEntry,
    /// The fentry capability probe ran (doctor only).
    FentryProbe,
    /// The walk's start node is not linked where it claims: `*node->pprev`
    /// is not the node. Wrong offsets; the walk is not made.
    LinkMismatch,
    /// `tuplehash[dir].tuple.dst.dir` is not `dir`: wrong offsets.
    DirMismatch,
    /// An insert entry probe found the previous call's arguments unconsumed:
    /// its return probe was missed (kretprobe instances exhausted).
    InsertReturnMissed,
}

/// Number of slots in the `COUNTERS` map (room to grow without a layout break).
pub const COUNTER_SLOTS: u32 = 32;

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; 25] = [
        Counter::Inserts,
        Counter::SameBucket,
        Counter::WalksOk,
        Counter::NullsMismatch,
        Counter::WalksTruncated,
        Counter::ReadErrors,
        Counter::InsertWithoutEntry,
        Counter::AllocOk,
        Counter::TableFull,
        Counter::AllocFailedOther,
        Counter::EarlyDropOk,
        Counter::EarlyDropFailed,
        Counter::Confirms,
        Counter::ConfirmDrops,
        Counter::DropClash,
        Counter::DropDying,
        Counter::DropChainTooLong,
        Counter::DropOther,
        Counter::ClashResolved,
        Counter::ConfirmStackOverflow,
        Counter::ConfirmWithoutEntry,
        Counter::FentryProbe,
        Counter::LinkMismatch,
        Counter::DirMismatch,
        Counter::InsertReturnMissed,
    ];
}

/// Arguments of an `__nf_conntrack_hash_insert(ct, hash, reply_hash)` call in
/// flight on one CPU. The function runs with both bucket locks held and bottom
/// halves disabled (both callers, 5.10..6.18), so nothing else can run on this
/// CPU between its entry and its return: one slot per CPU is exact.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PendingInsert {
    pub ct: u64,
    pub hash: u32,
    pub reply_hash: u32,
    pub valid: u32,
    pub _pad: u32,
}

/// Clash outcome recorded in a confirm frame by the `nf_ct_resolve_clash`
/// return probe.
pub const CLASH_NONE: u32 = 0;
pub const CLASH_RESOLVED: u32 = 1;
pub const CLASH_FAILED: u32 = 2;

/// Key of a confirm frame: the task and its nesting level. Keyed by task, not
/// CPU: on preemptible kernels (`preempt=full`, RT) a confirm can be preempted
/// at `local_bh_enable()` and return on another CPU; a softirq that nests a
/// second confirm runs on top of the same task, one level up.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameKey {
    pub task: u64,
    pub level: u32,
    pub _pad: u32,
}

/// Entries in each task-keyed LRU map: tasks inside confirm or alloc at one
/// moment (preallocated, so nothing is allocated per event).
pub const TASK_SLOTS: u32 = 8192;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConfirmFrame {
    pub ct: u64,
    pub clash: u32,
    pub _pad: u32,
}

/// Key of the per-origin counters: the namespace of the entry (`net->ns.inum`)
/// and the original direction's source address. Docker's bridge NAT entries
/// live in the host namespace, so the source address is what names the
/// container behind them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OriginKey {
    pub netns: u32,
    /// `AF_INET` (2) or `AF_INET6` (10); 0 for the per-namespace overflow key
    /// used when the map is full (address then all zero).
    pub family: u16,
    pub _pad: u16,
    /// IPv4 in the first 4 bytes, network order; IPv6 all 16.
    pub addr: [u8; 16],
}

/// Counters per [`OriginKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OriginStats {
    pub inserts: u64,
    pub table_full: u64,
    pub chain_too_long: u64,
    pub clash: u64,
    pub dying: u64,
    pub other: u64,
    pub alloc_failed: u64,
    /// Entries deleted (`nf_ct_delete`) that were inserted while ctscope ran.
    pub deletes: u64,
    pub early_drop_evicted: u64,
}

impl OriginStats {
    pub fn add(&mut self, o: &OriginStats) {
        self.inserts += o.inserts;
        self.table_full += o.table_full;
        self.chain_too_long += o.chain_too_long;
        self.clash += o.clash;
        self.dying += o.dying;
        self.other += o.other;
        self.alloc_failed += o.alloc_failed;
        self.deletes += o.deletes;
        self.early_drop_evicted += o.early_drop_evicted;
    }

    /// New connections refused, every reason.
    pub fn drops(&self) -> u64 {
        self.table_full + self.chain_too_long + self.clash + self.dying + self.other + self.alloc_failed
    }
}

/// Most origins kept; beyond it, counts go to the namespace's overflow key.
pub const ORIGIN_SLOTS: u32 = 16384;

/// Names of the load-time globals the loader must set (read from the running
/// kernel's BTF; never baked in).
pub mod globals {
    /// `offsetof(struct nf_conn, tuplehash)`.
    pub const OFF_TUPLEHASH: &str = "OFF_TUPLEHASH";
    /// `sizeof(struct nf_conntrack_tuple_hash)`: `tuplehash[1]` is this far on.
    pub const TUPLEHASH_SIZE: &str = "TUPLEHASH_SIZE";
    /// `offsetof(struct nf_conntrack_tuple_hash, hnnode)`.
    pub const OFF_HNNODE: &str = "OFF_HNNODE";
    /// `offsetof(struct hlist_nulls_node, next)`.
    pub const OFF_NEXT: &str = "OFF_NEXT";
    /// `offsetof(struct hlist_nulls_node, pprev)`.
    pub const OFF_PPREV: &str = "OFF_PPREV";
    /// Offset of `tuple.dst.dir` inside `struct nf_conntrack_tuple_hash`.
    pub const OFF_TUPLE_DIR: &str = "OFF_TUPLE_DIR";
    /// `offsetof(struct nf_conn, status)`.
    pub const OFF_STATUS: &str = "OFF_STATUS";
    /// `offsetof(struct sk_buff, _nfct)`.
    pub const OFF_SKB_NFCT: &str = "OFF_SKB_NFCT";
    /// 1 when the kernel refuses inserts into over-long chains (5.15+).
    pub const HAS_CHAIN_LIMIT: &str = "HAS_CHAIN_LIMIT";
    /// 1 when `nf_ct_resolve_clash` is probed, so clash drops can be told apart.
    pub const CLASH_PROBED: &str = "CLASH_PROBED";
    /// 1 when `early_drop` is probed, so table-full can be told from slab failure.
    pub const EARLY_DROP_PROBED: &str = "EARLY_DROP_PROBED";
}

// Layout invariants, checked at compile time.
const _: () = assert!(Counter::ALL.len() as u32 <= COUNTER_SLOTS);
const _: () = assert!(WALK_LIMIT < HIST_OVERFLOW);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers with explicit padding fields: every bit
    // pattern is valid and there is no implicit padding.
    unsafe impl aya::Pod for super::PendingInsert {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ConfirmFrame {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FrameKey {}
    // SAFETY: as above (`_pad` makes the padding explicit).
    unsafe impl aya::Pod for super::OriginKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OriginStats {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_dense_and_fit() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }
}
