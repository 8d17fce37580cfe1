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
    /// `early_drop` found nothing to evict, so `__nf_conntrack_alloc` fails:
    /// "nf_conntrack: table full, dropping packet" (counted at the return of
    /// `early_drop`, its only caller's refusal; by the allocation's return
    /// where `early_drop` cannot be probed).
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
    /// ... because a clash with an existing entry could not be resolved
    /// (counted at the return of `nf_ct_resolve_clash`).
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
    /// Deaths of inserted entries whose lifetime was measured (inserted
    /// while ctscope ran, and a slot was free in `LIFE_SLOTS`).
    DeletesTracked,
    /// Deaths of inserted entries without a lifetime: inserted before the
    /// run, or no slot was free. Counted all the same, by how they ended.
    DeletesUntracked,
    /// Entries freed without ever being inserted (`unconfirmed`).
    FreedUnconfirmed,
    /// Inserted entries freed without a `nf_ct_delete` seen.
    FreedUndeleted,
    /// Every slot of the entry's bucket in `LIFE_SLOTS` was taken: the entry
    /// got no lifetime (its death is still counted, by how it ended).
    LifeTrackFull,
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
    /// An insert found its own address still holding a lifetime slot: the
    /// entry that had the address before died, and no probe saw it go
    /// (`nf_ct_delete` inlined into a caller, and `nf_conntrack_free` not
    /// probed). Its death is not counted anywhere else.
    DeathsUnseen,
}

/// Number of slots in the `COUNTERS` block (room to grow without a layout break).
pub const COUNTER_SLOTS: u32 = 64;

/// Every counter, by [`Counter`] index.
pub type CounterBlock = [u64; COUNTER_SLOTS as usize];
/// A chain-length histogram ([`HIST_SLOTS`] slots).
pub type ChainHist = [u64; HIST_SLOTS as usize];

/// The `STATS` map's one value per CPU: every counter and both insert
/// chain-length histograms. One block: a program that counts and records
/// looks it up once (a per-CPU array lookup is a helper call before Linux
/// 6.10), and userspace reads all of it with one system call per interval.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StatsBlock {
    pub counters: CounterBlock,
    /// Length of the original-direction bucket after each insert.
    pub chain_orig: ChainHist,
    /// Length of the reply-direction bucket after each insert.
    pub chain_reply: ChainHist,
    /// Scratch for the programs (not a count): a value stored and loaded
    /// back through map memory, which the verifier does not track (turns a
    /// typed pointer into a plain number). One word per program that uses
    /// it (conntrack-ebpf counters.rs `Scratch`): a BPF trampoline skips only a
    /// program already running on its CPU, so two different programs can
    /// nest there (a softirq's insert inside a worker's delete).
    pub scratch: [u64; SCRATCH_WORDS],
}

/// Words of [`StatsBlock::scratch`].
pub const SCRATCH_WORDS: usize = 8;
/// The lookup-latency histogram's one value per CPU ([`LAT_SLOTS`] slots).
pub type LatencyHist = [u64; LAT_SLOTS as usize];

impl Counter {
    /// The last variant: a new counter goes after it, and becomes it (the
    /// layout asserts below then check that [`Counter::ALL`] has it).
    pub const LAST: Counter = Counter::DeathsUnseen;

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
        Counter::DeathsUnseen,
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

/// One CPU's or one task's calls in flight, innermost last (conntrack-ebpf
/// frames.rs): the value of the `*_STACK` and `*_TASKS` maps.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CallStack<T: Copy> {
    pub depth: u32,
    pub _pad: u32,
    /// The task that pushed each frame.
    pub task: [u64; CONFIRM_DEPTH as usize],
    pub frame: [T; CONFIRM_DEPTH as usize],
}

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
    /// The address in network byte order as the kernel stores it, read as
    /// 32-bit words (`union nf_inet_addr.all`): IPv4 in the first word,
    /// IPv6 in all four. Words rather than bytes: a byte array is copied
    /// byte by byte in BPF.
    pub addr: [u32; 4],
}

impl OriginKey {
    /// The address as bytes in network order (the first 4 for IPv4).
    pub fn addr_bytes(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        for (chunk, w) in out.chunks_exact_mut(4).zip(self.addr) {
            // The kernel's bytes as they lay in memory: native order.
            chunk.copy_from_slice(&w.to_ne_bytes());
        }
        out
    }
}

/// Counters per [`OriginKey`].
///
/// Two kinds. Counted always, by programs that run only on their own rare
/// path: `table_full` (an `early_drop()` that found nothing to evict, for the
/// namespace's key: which source's packet it was is not known there),
/// `clash` (an unresolved clash, for the entry's origin) and
/// `early_drop_evicted`. Counted by the attribution programs (the exits of
/// `__nf_conntrack_alloc` and `__nf_conntrack_confirm`), which run always in
/// kprobe mode and on demand in fentry mode: the refusals by origin.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OriginStats {
    pub inserts: u64,
    pub table_full: u64,
    pub clash: u64,
    pub early_drop_evicted: u64,
    /// Table-full refusals, for the origin of the refused entry.
    pub table_full_attributed: u64,
    pub chain_too_long: u64,
    pub dying: u64,
    pub other: u64,
    pub alloc_failed: u64,
}

impl OriginStats {
    /// Adds `o` field by field (saturating: the kernel's numbers are input).
    pub fn add(&mut self, o: &OriginStats) {
        self.inserts = self.inserts.saturating_add(o.inserts);
        self.table_full = self.table_full.saturating_add(o.table_full);
        self.clash = self.clash.saturating_add(o.clash);
        self.early_drop_evicted = self.early_drop_evicted.saturating_add(o.early_drop_evicted);
        self.table_full_attributed = self
            .table_full_attributed
            .saturating_add(o.table_full_attributed);
        self.chain_too_long = self.chain_too_long.saturating_add(o.chain_too_long);
        self.dying = self.dying.saturating_add(o.dying);
        self.other = self.other.saturating_add(o.other);
        self.alloc_failed = self.alloc_failed.saturating_add(o.alloc_failed);
    }

    /// `self - earlier`, field by field (saturating).
    pub fn since(&self, earlier: &OriginStats) -> OriginStats {
        OriginStats {
            inserts: self.inserts.saturating_sub(earlier.inserts),
            table_full: self.table_full.saturating_sub(earlier.table_full),
            clash: self.clash.saturating_sub(earlier.clash),
            early_drop_evicted: self
                .early_drop_evicted
                .saturating_sub(earlier.early_drop_evicted),
            table_full_attributed: self
                .table_full_attributed
                .saturating_sub(earlier.table_full_attributed),
            chain_too_long: self.chain_too_long.saturating_sub(earlier.chain_too_long),
            dying: self.dying.saturating_sub(earlier.dying),
            other: self.other.saturating_sub(earlier.other),
            alloc_failed: self.alloc_failed.saturating_sub(earlier.alloc_failed),
        }
    }

    /// New connections refused from this origin, every reason known for it.
    pub fn attributed_drops(&self) -> u64 {
        [
            self.table_full_attributed,
            self.chain_too_long,
            self.dying,
            self.other,
            self.alloc_failed,
        ]
        .iter()
        .fold(self.clash, |a, b| a.saturating_add(*b))
    }
}

/// Most origins kept; beyond it, counts go to the namespace's overflow key.
pub const ORIGIN_SLOTS: u32 = 16384;

/// How an entry ended (a dimension of a `LIFE_HIST` row).
mod config;
pub use config::Config;

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

/// `IPS_CONFIRMED_BIT` (include/uapi/linux/netfilter/nf_conntrack_common.h):
/// set once the entry is in the table. Linux 6.1.y and later set it after
/// the insert (`__nf_conntrack_insert_prepare`); 5.10 sets it before the
/// clash check, so there an entry dropped as a clash also has it.
pub const IPS_CONFIRMED: u64 = 1 << 3;
/// `IPS_ASSURED_BIT` (include/uapi/linux/netfilter/nf_conntrack_common.h).
pub const IPS_ASSURED: u64 = 1 << 2;

pub mod life;

/// Arguments of an `__nf_conntrack_alloc` call in flight on a task.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AllocArgs {
    /// Whose allocation it is: the drop is blamed on it if it fails.
    pub key: OriginKey,
}

/// A lookup in flight: start time and raw hash.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LookupFrame {
    pub start_ns: u64,
    pub hash: u32,
    pub _pad: u32,
}

/// `floor(log2(v))` (0 for 0) without a count-leading-zeros instruction
/// (BPF has none): a binary search in six steps.
#[inline(always)]
pub fn log2_floor(v: u64) -> u32 {
    let mut v = v;
    let mut b = 0u32;
    for shift in [32u32, 16, 8, 4, 2, 1] {
        if v >= 1 << shift {
            v >>= shift;
            b += shift;
        }
    }
    b
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
    let b = log2_floor(ns);
    let sub = ((ns >> (b - 2)) & 3) as u32;
    (b * 4 + sub) & (LAT_SLOTS - 1)
}

/// The smallest latency that lands in `slot` (inverse of [`latency_slot`]).
pub fn latency_slot_floor(slot: u32) -> u64 {
    if slot < 4 {
        return u64::from(slot);
    }
    let (b, sub) = (slot / 4, u64::from(slot % 4));
    if b < 2 {
        return 0;
    }
    (4 + sub) << (b - 2)
}

pub mod names;

mod layout;

#[cfg(test)]
mod tests;
