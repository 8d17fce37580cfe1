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

/// Deepest nesting of calls in flight (alloc, confirm, lookup) kept per task
/// or per CPU. A call can be interrupted by a softirq that runs conntrack for
/// another packet before it disables bottom halves, so one frame is not
/// enough; more than 4 levels cannot occur (process, softirq, hardirq, NMI),
/// and overflow is counted.
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
    /// Entries deleted by `early_drop()` (the kernel's `early_drop` stat).
    EarlyDropEvicted,
    /// `nf_ct_delete` of an entry inserted while ctscope ran (a lifetime).
    DeletesTracked,
    /// `nf_ct_delete` of an entry ctscope never saw inserted (it predates
    /// the run, or tracking was full): no lifetime.
    DeletesUntracked,
    /// Entries freed without ever being inserted (`unconfirmed`).
    FreedUnconfirmed,
    /// Inserted entries freed without a `nf_ct_delete` seen.
    FreedUndeleted,
    /// The entry-tracking map was full: an entry got no lifetime.
    LifeTrackFull,
    /// The lifetime ring buffer was full: an event was lost.
    EventsLost,
    /// The per-origin map was full: counts went to the namespace's overflow key.
    OriginOverflow,
    /// `__nf_conntrack_find_get` returns (with `--lookups`).
    Lookups,
    LookupHits,
    LookupMisses,
    /// Sum of lookup latencies, ns.
    LookupNsSum,
    /// Lookup return without its entry frame.
    LookupWithoutEntry,
    /// Lookup bucket walks that ended at another bucket's nulls marker (the
    /// table was resized or an entry moved mid-walk; not recorded).
    LookupWalkMismatch,
    /// A per-CPU stack of calls in flight was full of frames whose return
    /// probe never ran, and was emptied (conntrack-ebpf/src/frames.rs).
    CallStackReset,
    /// An `__nf_conntrack_alloc` return found no frame of its entry probe.
    AllocWithoutEntry,
    /// Inserted entries with an extension area (`ct->ext`).
    ExtEntries,
    /// Bytes of those areas, each rounded to its kmalloc size class.
    ExtBytes,
}

/// Number of slots in the `COUNTERS` block (room to grow without a layout break).
pub const COUNTER_SLOTS: u32 = 64;

/// The `COUNTERS` map's one value per CPU: every counter, by [`Counter`]
/// index. One block rather than one map entry per counter: userspace reads
/// all of them with one system call per interval (a map of 64 entries took
/// 64), and the histograms below likewise.
pub type CounterBlock = [u64; COUNTER_SLOTS as usize];
/// A chain-length histogram's one value per CPU ([`HIST_SLOTS`] slots).
pub type ChainHist = [u64; HIST_SLOTS as usize];
/// The lookup-latency histogram's one value per CPU ([`LAT_SLOTS`] slots).
pub type LatencyHist = [u64; LAT_SLOTS as usize];

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; 43] = [
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
        Counter::EarlyDropEvicted,
        Counter::DeletesTracked,
        Counter::DeletesUntracked,
        Counter::FreedUnconfirmed,
        Counter::FreedUndeleted,
        Counter::LifeTrackFull,
        Counter::EventsLost,
        Counter::OriginOverflow,
        Counter::Lookups,
        Counter::LookupHits,
        Counter::LookupMisses,
        Counter::LookupNsSum,
        Counter::LookupWithoutEntry,
        Counter::LookupWalkMismatch,
        Counter::CallStackReset,
        Counter::AllocWithoutEntry,
        Counter::ExtEntries,
        Counter::ExtBytes,
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

/// Entries in each task-keyed LRU map of call stacks (conntrack-ebpf
/// frames.rs): tasks that called alloc, confirm or a lookup lately; an evicted
/// task's calls in flight are counted as returns without their entry
/// (preallocated, so nothing is allocated per event).
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
        self.table_full
            + self.chain_too_long
            + self.clash
            + self.dying
            + self.other
            + self.alloc_failed
    }
}

/// Most origins kept; beyond it, counts go to the namespace's overflow key.
pub const ORIGIN_SLOTS: u32 = 16384;

/// How an entry ended (the `end` of a [`LifeEvent`]).
pub mod end {
    /// Deleted after its timeout expired, TCP (if TCP) not closing.
    pub const TIMEOUT: u8 = 0;
    /// TCP state at deletion was FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT or CLOSE.
    pub const TCP_CLOSED: u8 = 1;
    /// Evicted by `early_drop()` to make room.
    pub const EARLY_DROP: u8 = 2;
    /// Deleted before expiry otherwise: ctnetlink, flush, namespace exit,
    /// GC eviction under pressure.
    pub const FLUSH: u8 = 3;
    /// Freed without ever being inserted.
    pub const UNCONFIRMED: u8 = 4;
    /// Freed after insertion without a `nf_ct_delete` seen.
    pub const OTHER: u8 = 5;
    /// Report names, indexed by the codes above.
    pub const NAMES: [&str; 6] = [
        "timeout",
        "tcp_closed",
        "early_drop",
        "flush",
        "unconfirmed",
        "other",
    ];
}

/// `enum tcp_conntrack` (include/uapi/linux/netfilter/nf_conntrack_tcp.h,
/// unchanged 2.6..6.18): FIN_WAIT 4 .. CLOSE 8 are the closing states.
pub const TCP_CONNTRACK_FIN_WAIT: u8 = 4;
pub const TCP_CONNTRACK_CLOSE: u8 = 8;

/// One tracked entry, keyed by its `struct nf_conn *` (addresses are reused
/// at once: the key is removed on delete or free).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Life {
    /// `bpf_ktime_get_ns` at allocation (0: allocated before the run).
    pub born_ns: u64,
    /// ... at insertion (0: not inserted yet).
    pub confirmed_ns: u64,
    pub netns: u32,
    pub family: u16,
    pub proto: u8,
    pub _pad: u8,
    pub addr: [u8; 16],
}

/// One finished entry, sent to userspace through the `LIFE_EVENTS` ring
/// buffer (one per connection, never per packet).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LifeEvent {
    pub lifetime_ns: u64,
    pub netns: u32,
    pub proto: u8,
    pub end: u8,
    /// `enum tcp_conntrack` at deletion (TCP only).
    pub tcp_state: u8,
    /// [`LIFE_ASSURED`] when the entry was ASSURED (it saw traffic both
    /// ways): which timeout it waited out (UDP: stream or not).
    pub flags: u8,
}

/// [`LifeEvent::flags`]: `IPS_ASSURED` was set at death.
pub const LIFE_ASSURED: u8 = 1;
/// `IPS_ASSURED_BIT` (include/uapi/linux/netfilter/nf_conntrack_common.h).
pub const IPS_ASSURED: u64 = 1 << 2;

/// Ring buffer size for [`LifeEvent`]s (16 bytes + 8 header each): room for
/// about 43,000 deaths between two reads.
pub const LIFE_RING_BYTES: u32 = 1 << 20;

/// Arguments of an `__nf_conntrack_alloc` call in flight on a task.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AllocArgs {
    pub key: OriginKey,
    pub proto: u8,
    pub _pad: [u8; 7],
}

/// A lookup in flight: start time and raw hash.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LookupFrame {
    pub start_ns: u64,
    pub hash: u32,
    pub _pad: u32,
}

/// Lookup latency histogram: log-linear, 4 slots per power of two (see
/// [`latency_slot`]); 256 slots cover every u64.
pub const LAT_SLOTS: u32 = 256;

/// Slot of a latency in ns: `ns` itself below 4, else `4 * floor(log2 ns)`
/// plus the next two bits (25% wide slots).
#[inline(always)]
pub fn latency_slot(ns: u64) -> u32 {
    if ns < 4 {
        return ns as u32;
    }
    // floor(log2(ns)) without a count-leading-zeros instruction (BPF has none).
    let mut v = ns;
    let mut b = 0u32;
    if v >= 1 << 32 {
        v >>= 32;
        b += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        b += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        b += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        b += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        b += 2;
    }
    if v >= 1 << 1 {
        b += 1;
    }
    let sub = ((ns >> (b - 2)) & 3) as u32;
    (b * 4 + sub) & (LAT_SLOTS - 1)
}

/// The smallest latency that lands in `slot` (inverse of [`latency_slot`]).
pub fn latency_slot_floor(slot: u32) -> u64 {
    if slot < 4 {
        return slot as u64;
    }
    let (b, sub) = (slot / 4, (slot % 4) as u64);
    if b < 2 {
        return 0;
    }
    (4 + sub) << (b - 2)
}

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
    /// `offsetof(struct nf_conn, ct_net)` (`possible_net_t`, whose only member
    /// is `struct net *net`).
    pub const OFF_CT_NET: &str = "OFF_CT_NET";
    /// `offsetof(struct net, ns.inum)`.
    pub const OFF_NET_INUM: &str = "OFF_NET_INUM";
    /// `offsetof(struct nf_conntrack_tuple_hash, tuple)`.
    pub const OFF_TH_TUPLE: &str = "OFF_TH_TUPLE";
    /// `offsetof(struct nf_conntrack_tuple, src.u3)`.
    pub const OFF_TUPLE_SRC: &str = "OFF_TUPLE_SRC";
    /// `offsetof(struct nf_conntrack_tuple, src.l3num)`.
    pub const OFF_TUPLE_L3NUM: &str = "OFF_TUPLE_L3NUM";
    /// `offsetof(struct nf_conntrack_tuple, dst.protonum)`.
    pub const OFF_TUPLE_PROTONUM: &str = "OFF_TUPLE_PROTONUM";
    /// `offsetof(struct nf_conn, timeout)` (u32 jiffies).
    pub const OFF_CT_TIMEOUT: &str = "OFF_CT_TIMEOUT";
    /// `offsetof(struct nf_conn, proto.tcp.state)`.
    pub const OFF_CT_TCP_STATE: &str = "OFF_CT_TCP_STATE";
    /// `offsetof(struct nf_conn, ext)` (0: not known; extensions unmeasured).
    pub const OFF_CT_EXT: &str = "OFF_CT_EXT";
    /// `offsetof(struct nf_ct_ext, len)`.
    pub const OFF_EXT_LEN: &str = "OFF_EXT_LEN";
    /// 1 when calls in flight may be kept per CPU: the kernel cannot preempt
    /// them (preempt=none or voluntary, not RT); 0 keys them by task.
    pub const PER_CPU_CALLS: &str = "PER_CPU_CALLS";
    /// Address of `nf_conntrack_hash` (kallsyms; 0 when not exported).
    pub const ADDR_CT_HASH: &str = "ADDR_CT_HASH";
    /// Address of `nf_conntrack_htable_size` (kallsyms; 0 when not exported).
    pub const ADDR_CT_HTABLE_SIZE: &str = "ADDR_CT_HTABLE_SIZE";
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
    // SAFETY: as above (`_pad` makes the padding explicit).
    unsafe impl aya::Pod for super::OriginKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OriginStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Life {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LifeEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LookupFrame {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AllocArgs {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_slots_are_monotonic_and_invert() {
        let mut last = 0;
        for ns in (0..100_000u64).chain([u64::MAX / 3, u64::MAX]) {
            let s = latency_slot(ns);
            assert!(s >= last || ns > 100_000, "slot went down at {ns}");
            last = s;
            let floor = latency_slot_floor(s);
            assert!(floor <= ns, "floor {floor} above {ns}");
            // Slots are at most 25% wide.
            assert!(ns - floor <= ns / 4, "slot of {ns} starts at {floor}");
        }
    }

    #[test]
    fn counters_are_dense_and_fit() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }
}
