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

/// Lifetimes, measured in the kernel: when an entry is inserted its birth
/// goes into a slot of `LIFE_SLOTS`, a preallocated table of buckets keyed
/// by a hash of its `struct nf_conn *`; when it dies the slot is found,
/// cleared, and the lifetime counted in `LIFE_HIST`, one log-linear
/// histogram per (protocol, end, detail) row. No record per event leaves
/// the kernel and nothing is allocated per connection.
pub mod life {
    /// Slots per bucket: one 64-byte cache line of `u64` slots.
    pub const BUCKET_SLOTS: usize = 8;
    /// A bucket of `LIFE_SLOTS`.
    pub type Bucket = [u64; BUCKET_SLOTS];

    /// A slot is `tag << TAG_SHIFT | born`, 0 when free. `born` is
    /// `bpf_ktime_get_ns() >> UNIT_SHIFT` (units of 1,024 ns) in the low
    /// 44 bits: it wraps after 2^54 ns, 208 days.
    pub const UNIT_SHIFT: u32 = 10;
    pub const TAG_SHIFT: u32 = 44;
    pub const BORN_MASK: u64 = (1 << TAG_SHIFT) - 1;

    /// A hash of an entry's address (`struct nf_conn *`, 8-byte aligned):
    /// the bucket comes from its top 32 bits, the tag from 19 bits below
    /// them (a 20th always set: see [`tag`]), so that two live entries
    /// share a bucket and a tag with odds of 2^-19 per pair in one bucket.
    #[inline(always)]
    pub fn hash(ct: u64) -> u64 {
        (ct >> 3).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    /// The bucket of hash `h` in a table of `mask + 1` buckets.
    #[inline(always)]
    pub fn bucket(h: u64, mask: u32) -> u32 {
        ((h >> 32) as u32) & mask
    }

    /// The tag of hash `h`, shifted into place; never 0 (bit 19 of the
    /// tag is always set), so a taken slot is never 0.
    #[inline(always)]
    pub fn tag(h: u64) -> u64 {
        (((h >> 12) & 0x7_FFFF) | 0x8_0000) << TAG_SHIFT
    }

    /// Slots per histogram row: 16 per power of two of the lifetime in
    /// units of 1,024 ns (6.25% wide, lifetimes below 16 units each in a
    /// slot of their own), up to 2^44 units (208 days, the rest clamped
    /// into the last), and one more for deaths without a lifetime.
    pub const HIST_SLOTS: u32 = 657;
    /// The slot of deaths whose lifetime was not measured.
    pub const UNKNOWN_SLOT: u32 = HIST_SLOTS - 1;
    const MAX_OCTAVE: u32 = 43;
    /// One row of `LIFE_HIST`.
    pub type Hist = [u64; HIST_SLOTS as usize];

    /// The slot of a lifetime of `units` (see [`HIST_SLOTS`]).
    #[inline(always)]
    pub fn slot(units: u64) -> u32 {
        if units < 16 {
            return units as u32;
        }
        let b = super::log2_floor(units);
        if b > MAX_OCTAVE {
            return UNKNOWN_SLOT - 1;
        }
        (b - 3) * 16 + ((units >> (b - 4)) & 15) as u32
    }

    /// The smallest lifetime (units) in `slot`: the inverse of [`slot`].
    pub fn slot_floor(slot: u32) -> u64 {
        if slot < 16 {
            return u64::from(slot);
        }
        let (b, sub) = (slot / 16 + 3, u64::from(slot % 16));
        (16 + sub) << (b - 4)
    }

    /// Protocol classes of the rows.
    pub const TCP: u8 = 0;
    pub const UDP: u8 = 1;
    pub const ICMP: u8 = 2;
    pub const ICMPV6: u8 = 3;
    pub const OTHER: u8 = 4;

    /// The class of an L4 protocol number.
    #[inline(always)]
    pub fn class(proto: u8) -> u8 {
        match proto {
            6 => TCP,
            17 | 136 => UDP, // UDP, UDP-Lite
            1 => ICMP,
            58 => ICMPV6,
            _ => OTHER,
        }
    }

    /// TCP states kept apart in a row: `enum tcp_conntrack` 0..9
    /// (include/uapi/linux/netfilter/nf_conntrack_tcp.h), larger ones in 9.
    pub const TCP_STATES: u8 = 10;
    /// Rows: TCP timeouts and closes by state (20), TCP's other ends (4),
    /// UDP by end and assured (12), ICMP, ICMPv6 and the rest by end (6 each).
    pub const ROWS: u32 = 54;

    /// The row of a death: protocol class, how it ended (`super::end`), the
    /// TCP state at death and whether the entry was assured.
    #[inline(always)]
    pub fn row(class: u8, end: u8, tcp_state: u8, assured: bool) -> u32 {
        let end = u32::from(if end > super::end::OTHER {
            super::end::OTHER
        } else {
            end
        });
        match class {
            TCP => match end as u8 {
                super::end::TIMEOUT | super::end::TCP_CLOSED => {
                    let s = if tcp_state < TCP_STATES {
                        tcp_state
                    } else {
                        TCP_STATES - 1
                    };
                    end * u32::from(TCP_STATES) + u32::from(s)
                }
                // early_drop 2 .. other 5 -> 20..23
                _ => 18 + end,
            },
            UDP => 24 + end * 2 + u32::from(assured),
            ICMP => 36 + end,
            ICMPV6 => 42 + end,
            _ => 48 + end,
        }
    }

    /// What a row holds: (protocol class, end, TCP state if TCP and a
    /// timeout or close, assured if UDP). The inverse of [`row`].
    pub fn row_info(row: u32) -> Option<(u8, u8, Option<u8>, Option<bool>)> {
        let r = row;
        Some(match r {
            0..20 => (TCP, (r / 10) as u8, Some((r % 10) as u8), None),
            20..24 => (TCP, (r - 18) as u8, None, None),
            24..36 => (UDP, ((r - 24) / 2) as u8, None, Some((r - 24) % 2 == 1)),
            36..42 => (ICMP, (r - 36) as u8, None, None),
            42..48 => (ICMPV6, (r - 42) as u8, None, None),
            48..54 => (OTHER, (r - 48) as u8, None, None),
            _ => return None,
        })
    }
}

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

/// The programs' load-time settings: one `#[repr(C)]` global (the eBPF
/// crate's `CONFIG`, in `.rodata`) that the loader overrides as a whole
/// with values read from the running kernel (BTF, kallsyms, the probe plan;
/// conntrack-user probes.rs `Plan::config`), never baked in. One struct
/// rather than a global per setting: a new setting is a field here, its
/// accessor in conntrack-ebpf config.rs and its value in `Plan::config`.
///
/// The 64-bit fields come first so that there is no implicit padding (the
/// struct is [`aya::Pod`] on the user side, and both sides must agree on
/// its layout: see the size assert below). Flags are `u32` 0/1, not
/// `bool`, so that every bit pattern is valid.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Address of `nf_conntrack_hash` (kallsyms; 0 when not exported).
    pub addr_ct_hash: u64,
    /// Address of `nf_conntrack_htable_size` (kallsyms; 0 when not exported).
    pub addr_ct_htable_size: u64,
    /// `offsetof(struct nf_conn, tuplehash)`.
    pub off_tuplehash: u32,
    /// `sizeof(struct nf_conntrack_tuple_hash)`: `tuplehash[1]` is this far on.
    pub tuplehash_size: u32,
    /// `offsetof(struct nf_conntrack_tuple_hash, hnnode)`.
    pub off_hnnode: u32,
    /// `offsetof(struct hlist_nulls_node, next)`.
    pub off_next: u32,
    /// `offsetof(struct hlist_nulls_node, pprev)`.
    pub off_pprev: u32,
    /// Offset of `tuple.dst.dir` inside `struct nf_conntrack_tuple_hash`.
    pub off_tuple_dir: u32,
    /// `offsetof(struct nf_conn, status)`.
    pub off_status: u32,
    /// `offsetof(struct sk_buff, _nfct)`.
    pub off_skb_nfct: u32,
    /// `offsetof(struct nf_conn, ct_net)` (`possible_net_t`, whose only member
    /// is `struct net *net`).
    pub off_ct_net: u32,
    /// `offsetof(struct net, ns.inum)`.
    pub off_net_inum: u32,
    /// `offsetof(struct nf_conntrack_tuple_hash, tuple)`.
    pub off_th_tuple: u32,
    /// `offsetof(struct nf_conntrack_tuple, src.u3)`.
    pub off_tuple_src: u32,
    /// `offsetof(struct nf_conntrack_tuple, src.l3num)`.
    pub off_tuple_l3num: u32,
    /// `offsetof(struct nf_conntrack_tuple, dst.protonum)`.
    pub off_tuple_protonum: u32,
    /// `offsetof(struct nf_conn, timeout)` (u32 jiffies).
    pub off_ct_timeout: u32,
    /// `offsetof(struct nf_conn, proto.tcp.state)`.
    pub off_ct_tcp_state: u32,
    /// `offsetof(struct nf_conn, ext)` (0: not known; extensions unmeasured).
    pub off_ct_ext: u32,
    /// `offsetof(struct nf_ct_ext, len)`.
    pub off_ext_len: u32,
    /// 1 when the kernel refuses inserts into over-long chains (5.15+).
    pub has_chain_limit: u32,
    /// 1 when `nf_ct_resolve_clash` is probed, so clash drops can be told apart.
    pub clash_probed: u32,
    /// 1 when `early_drop` is probed, so table-full can be told from slab failure.
    pub early_drop_probed: u32,
    /// 1 when calls in flight may be kept per CPU: the kernel cannot preempt
    /// them (preempt=none or voluntary, not RT); 0 keys them by task.
    pub per_cpu_calls: u32,
    /// Buckets of `LIFE_SLOTS` minus one (their number is a power of two).
    pub life_bucket_mask: u32,
    /// A chain at least this long after an insert raises an alert (the
    /// loader arms attribution: the kernel's chain limit may be near).
    pub chain_alert: u32,
}

impl Config {
    /// The symbol of the eBPF crate's global, for `override_global`.
    pub const GLOBAL: &'static str = "CONFIG";

    /// The value in the object before the loader overrides it: zero offsets
    /// (a walk with them ends at the wrong nulls marker and is counted as a
    /// mismatch, never as a length), every feature off, and no chain long
    /// enough for an alert.
    pub const UNSET: Config = Config {
        addr_ct_hash: 0,
        addr_ct_htable_size: 0,
        off_tuplehash: 0,
        tuplehash_size: 0,
        off_hnnode: 0,
        off_next: 0,
        off_pprev: 0,
        off_tuple_dir: 0,
        off_status: 0,
        off_skb_nfct: 0,
        off_ct_net: 0,
        off_net_inum: 0,
        off_th_tuple: 0,
        off_tuple_src: 0,
        off_tuple_l3num: 0,
        off_tuple_protonum: 0,
        off_ct_timeout: 0,
        off_ct_tcp_state: 0,
        off_ct_ext: 0,
        off_ext_len: 0,
        has_chain_limit: 0,
        clash_probed: 0,
        early_drop_probed: 0,
        per_cpu_calls: 0,
        life_bucket_mask: 0,
        chain_alert: u32::MAX,
    };
}

/// Names of the eBPF object's maps and programs that the loader looks up
/// (conntrack-user probes.rs). The eBPF side cannot use these constants:
/// `#[map]` and the program macros name a map or program by the Rust
/// identifier of its static or function (conntrack-ebpf maps.rs and the
/// program files), so each constant repeats one. `ALL` lists them so that
/// a test (conntrack-user tests/host.rs `every_shared_name_is_in_the_object`)
/// can find each in the built object.
pub mod names {
    /// Maps, by their static's name in conntrack-ebpf maps.rs.
    pub mod maps {
        pub const ARMED: &str = "ARMED";
        pub const LIFE_SLOTS: &str = "LIFE_SLOTS";
        pub const ORIGINS: &str = "ORIGINS";
        pub const LIFE_HIST: &str = "LIFE_HIST";
        pub const ALERTS: &str = "ALERTS";
        pub const ALERT_RING: &str = "ALERT_RING";
        pub const STATS: &str = "STATS";
        pub const LOOKUP_LATENCY: &str = "LOOKUP_LATENCY";
        pub const CHAIN_LOOKUP: &str = "CHAIN_LOOKUP";
        pub const LOOKUP_MAX_NS: &str = "LOOKUP_MAX_NS";
        pub const EARLY_DROP_FAILED: &str = "EARLY_DROP_FAILED";
        pub const CLASH_FAILED_SKB: &str = "CLASH_FAILED_SKB";
        pub const FLAG_COUNTS: &str = "FLAG_COUNTS";

        /// Every name above.
        pub const ALL: [&str; 13] = [
            ARMED,
            LIFE_SLOTS,
            ORIGINS,
            LIFE_HIST,
            ALERTS,
            ALERT_RING,
            STATS,
            LOOKUP_LATENCY,
            CHAIN_LOOKUP,
            LOOKUP_MAX_NS,
            EARLY_DROP_FAILED,
            CLASH_FAILED_SKB,
            FLAG_COUNTS,
        ];
    }

    /// Programs, by their function's name (the kernel keeps 15 bytes of it).
    pub mod programs {
        // Kprobe mode.
        pub const ALLOC: &str = "alloc";
        pub const ALLOC_RET: &str = "alloc_ret";
        pub const CONFIRM: &str = "confirm";
        pub const CONFIRM_RET: &str = "confirm_ret";
        pub const EARLY_DROP: &str = "early_drop";
        pub const EARLY_DROP_RET: &str = "early_drop_ret";
        pub const RESOLVE_CLASH_RET: &str = "resolve_clash_ret";
        pub const INSERT: &str = "insert";
        pub const HASH_INSERT: &str = "hash_insert";
        pub const HASH_INSERT_RET: &str = "hash_insert_ret";
        pub const CT_DELETE: &str = "ct_delete";
        pub const CT_FREE: &str = "ct_free";
        pub const LOOKUP: &str = "lookup";
        pub const LOOKUP_RET: &str = "lookup_ret";
        // Fentry mode.
        pub const FX_ALLOC: &str = "fx_alloc";
        pub const FX_CONFIRM: &str = "fx_confirm";
        pub const FE_EARLY_DROP: &str = "fe_early_drop";
        pub const FX_EARLY_DROP: &str = "fx_early_drop";
        pub const FX_RESOLVE_CLASH: &str = "fx_resolve_clash";
        pub const FE_INSERT: &str = "fe_insert";
        pub const FX_INSERT: &str = "fx_insert";
        pub const FE_DELETE: &str = "fe_delete";
        pub const FE_FREE: &str = "fe_free";
        pub const FENTRY_PROBE: &str = "fentry_probe";

        /// Every name above.
        pub const ALL: [&str; 24] = [
            ALLOC,
            ALLOC_RET,
            CONFIRM,
            CONFIRM_RET,
            EARLY_DROP,
            EARLY_DROP_RET,
            RESOLVE_CLASH_RET,
            INSERT,
            HASH_INSERT,
            HASH_INSERT_RET,
            CT_DELETE,
            CT_FREE,
            LOOKUP,
            LOOKUP_RET,
            FX_ALLOC,
            FX_CONFIRM,
            FE_EARLY_DROP,
            FX_EARLY_DROP,
            FX_RESOLVE_CLASH,
            FE_INSERT,
            FX_INSERT,
            FE_DELETE,
            FE_FREE,
            FENTRY_PROBE,
        ];
    }
}

// Layout invariants, checked at compile time.
const _: () = assert!(Counter::ALL.len() as u32 <= COUNTER_SLOTS);
const _: () = assert!(WALK_LIMIT < HIST_OVERFLOW);
// `Counter::ALL` names every counter once, in index order: dense (a variant
// left out shifts every index after it), and ending at the last variant (a
// variant left out at the end).
const _: () = {
    assert!(Counter::LAST as usize + 1 == Counter::ALL.len());
    let mut i = 0;
    while i < Counter::ALL.len() {
        assert!(Counter::ALL[i] as usize == i);
        i += 1;
    }
};

/// Asserts at compile time that `$t` is exactly its fields laid end to end:
/// no implicit padding, which the `aya::Pod` claims below rely on. The
/// pattern names every field with its type (a field added, removed or
/// retyped without this list fails to compile), and the size must be the
/// sum of theirs. Both sides compile it: kernel and user agree on layout.
macro_rules! no_padding {
    ($t:path { $($f:ident: $ft:ty),* $(,)? }) => {
        const _: () = {
            #[expect(dead_code, reason = "compiled for its pattern, never called")]
            fn every_field_is_listed(v: $t) {
                let $t { $($f),* } = v;
                $(let _: $ft = $f;)*
            }
            assert!(core::mem::size_of::<$t>() == 0 $(+ core::mem::size_of::<$ft>())*);
        };
    };
}

no_padding!(StatsBlock {
    counters: CounterBlock,
    chain_orig: ChainHist,
    chain_reply: ChainHist,
    scratch: [u64; SCRATCH_WORDS],
});
no_padding!(PendingInsert {
    ct: u64,
    hash: u32,
    reply_hash: u32,
    valid: u32,
    _pad: u32,
});
no_padding!(ConfirmFrame {
    ct: u64,
    clash: u32,
    _pad: u32,
});
no_padding!(OriginKey {
    netns: u32,
    family: u16,
    _pad: u16,
    addr: [u32; 4],
});
no_padding!(OriginStats {
    inserts: u64,
    table_full: u64,
    clash: u64,
    early_drop_evicted: u64,
    table_full_attributed: u64,
    chain_too_long: u64,
    dying: u64,
    other: u64,
    alloc_failed: u64,
});
no_padding!(AllocArgs { key: OriginKey });
no_padding!(LookupFrame {
    start_ns: u64,
    hash: u32,
    _pad: u32,
});
no_padding!(Config {
    addr_ct_hash: u64,
    addr_ct_htable_size: u64,
    off_tuplehash: u32,
    tuplehash_size: u32,
    off_hnnode: u32,
    off_next: u32,
    off_pprev: u32,
    off_tuple_dir: u32,
    off_status: u32,
    off_skb_nfct: u32,
    off_ct_net: u32,
    off_net_inum: u32,
    off_th_tuple: u32,
    off_tuple_src: u32,
    off_tuple_l3num: u32,
    off_tuple_protonum: u32,
    off_ct_timeout: u32,
    off_ct_tcp_state: u32,
    off_ct_ext: u32,
    off_ext_len: u32,
    has_chain_limit: u32,
    clash_probed: u32,
    early_drop_probed: u32,
    per_cpu_calls: u32,
    life_bucket_mask: u32,
    chain_alert: u32,
});
// The eBPF-only call stacks, for each frame type they hold.
no_padding!(CallStack<AllocArgs> {
    depth: u32,
    _pad: u32,
    task: [u64; CONFIRM_DEPTH as usize],
    frame: [AllocArgs; CONFIRM_DEPTH as usize],
});
no_padding!(CallStack<ConfirmFrame> {
    depth: u32,
    _pad: u32,
    task: [u64; CONFIRM_DEPTH as usize],
    frame: [ConfirmFrame; CONFIRM_DEPTH as usize],
});
no_padding!(CallStack<LookupFrame> {
    depth: u32,
    _pad: u32,
    task: [u64; CONFIRM_DEPTH as usize],
    frame: [LookupFrame; CONFIRM_DEPTH as usize],
});
// And the sizes themselves, spelled out: the loader's `Config` must match
// the object's `CONFIG` byte for byte, or `override_global` refuses it.
const _: () = assert!(core::mem::size_of::<Config>() == 2 * 8 + 24 * 4);
const _: () = assert!(core::mem::size_of::<OriginKey>() == 24);

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
    // SAFETY: as above (arrays of u64 and a u64, no padding).
    unsafe impl aya::Pod for super::StatsBlock {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LookupFrame {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AllocArgs {}
    // SAFETY: as above (u64 fields first, then u32s of an even count: no
    // padding anywhere).
    unsafe impl aya::Pod for super::Config {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log2_floor_is_the_highest_bit() {
        assert_eq!(log2_floor(0), 0);
        for b in 0..64u32 {
            assert_eq!(log2_floor(1 << b), b);
            assert_eq!(log2_floor((1 << b) | ((1 << b) - 1)), b);
        }
        assert_eq!(log2_floor(u64::MAX), 63);
    }

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
    fn life_slots_are_monotonic_and_invert() {
        let mut last = 0;
        let mut units = 0u64;
        while units < 1 << 46 {
            let s = life::slot(units);
            assert!(s >= last, "slot went down at {units}");
            assert!(s < life::UNKNOWN_SLOT, "{units} in the unknown slot");
            last = s;
            if units < 1 << 44 {
                let floor = life::slot_floor(s);
                assert!(floor <= units, "floor {floor} above {units}");
                // 16 slots per octave: at most 1/16 wide.
                assert!(
                    units - floor <= units / 16,
                    "slot of {units} starts at {floor}"
                );
                assert_eq!(life::slot(floor), s);
            }
            units = units + 1 + units / 7;
        }
        assert_eq!(life::slot(u64::MAX), life::UNKNOWN_SLOT - 1);
    }

    #[test]
    fn life_rows_are_a_bijection() {
        let mut seen = [false; life::ROWS as usize];
        for class in [life::TCP, life::UDP, life::ICMP, life::ICMPV6, life::OTHER] {
            for e in 0..end::NAMES.len() as u8 {
                for state in 0..life::TCP_STATES {
                    for assured in [false, true] {
                        let r = life::row(class, e, state, assured);
                        assert!(r < life::ROWS, "row {r}");
                        seen[r as usize] = true;
                        let (c, e2, st, a) = life::row_info(r).expect("a row");
                        assert_eq!((c, e2), (class, e));
                        if class == life::TCP && e <= end::TCP_CLOSED {
                            assert_eq!(st, Some(state));
                        }
                        if class == life::UDP {
                            assert_eq!(a, Some(assured));
                        }
                    }
                }
            }
        }
        assert!(seen.iter().all(|s| *s), "every row is used");
        assert_eq!(life::row_info(life::ROWS), None);
    }

    #[test]
    fn life_tags_are_never_zero_and_fit() {
        for ct in [0u64, 8, 0xffff_8880_0000_0100, u64::MAX] {
            let h = life::hash(ct);
            let t = life::tag(h);
            assert_ne!(t, 0);
            assert_eq!(t & life::BORN_MASK, 0);
        }
    }
}
