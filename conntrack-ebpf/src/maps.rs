//! Maps shared with userspace (`STATS`, `ORIGINS`, `LIFE_HIST`), the
//! lifetime slots, and scratch state for calls in flight: per CPU where the
//! call cannot migrate (`PENDING_INSERT`: spinlocks held, bottom halves off),
//! per CPU or per task as the kernel's preemption model allows (frames.rs,
//! kprobes only: an fexit program sees its call's arguments and result
//! together), per task for the rare early-drop flags. Arrays and
//! preallocated LRU hashes: nothing allocated per event.
//!
//! The map statics only: what the programs do with them (counting, alerts,
//! flags, laundering) is in counters.rs, the call stacks in frames.rs.
//! The loader finds a map by its static's name, spelled again in
//! conntrack-common `names::maps`: rename both (conntrack-user
//! tests/host.rs `every_shared_name_is_in_the_object` checks the object).

use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use conntrack_common::{
    AllocArgs, CallStack, ChainHist, ConfirmFrame, LatencyHist, LookupFrame, ORIGIN_SLOTS,
    OriginKey, OriginStats, PendingInsert, SCRATCH_WORDS, StatsBlock, TASK_SLOTS, life,
};

/// Words per CPU that the verifier cannot see through (counters.rs `opaque`).
#[map]
pub(crate) static OPAQUE: PerCpuArray<u64> = PerCpuArray::with_max_entries(SCRATCH_WORDS as u32, 0);

/// Counters per (namespace, original source address).
#[map]
pub(crate) static ORIGINS: PerCpuHashMap<OriginKey, OriginStats> =
    PerCpuHashMap::with_max_entries(ORIGIN_SLOTS, 0);

/// When each entry in the table was inserted (life.rs): buckets of slots,
/// keyed by a hash of `struct nf_conn *`. The loader sizes it from
/// `nf_conntrack_max` (a power of two, and `Config::life_bucket_mask` to match).
#[map]
pub(crate) static LIFE_SLOTS: Array<life::Bucket> = Array::with_max_entries(1, 0);

/// Deaths by (protocol, end, detail) row, by lifetime (conntrack-common
/// `life`). Shared by every CPU: counted with atomic adds.
#[map]
pub(crate) static LIFE_HIST: Array<life::Hist> = Array::with_max_entries(life::ROWS, 0);

/// 1 while the attribution programs are attached (set by the loader after
/// attaching them, cleared before detaching): only then does a failed
/// `early_drop()` leave its flag for the allocation's exit program.
#[map]
pub(crate) static ARMED: Array<u32> = Array::with_max_entries(1, 0);

/// Events that make attribution worth running: `early_drop()` called (a
/// namespace over `nf_conntrack_max`), a clash, a death no probe saw, an
/// insert into a chain of `config::chain_alert` nodes or more. Only rare
/// paths add to it (atomically); the loader reads it once per interval.
#[map]
pub(crate) static ALERTS: Array<u64> = Array::with_max_entries(1, 0);

/// While attribution is not armed, each alert also wakes the loader, which
/// waits on this ring (no polling: nothing costs anything while all is
/// quiet). One page: a few records suffice, a full ring drops records,
/// which are wake-ups only.
#[map]
pub(crate) static ALERT_RING: RingBuf = RingBuf::with_byte_size(4096, 0);

/// `nf_ct_resolve_clash` calls that failed, by `struct sk_buff *`, for the
/// `__nf_conntrack_confirm` exit program of the same packet (fentry mode;
/// written only when a clash failed).
#[map]
pub(crate) static CLASH_FAILED_SKB: LruHashMap<u64, u32> =
    LruHashMap::with_max_entries(TASK_SLOTS, 0);

/// `__nf_conntrack_alloc` calls in flight (frames.rs): their arguments.
#[map]
pub(crate) static ALLOC_STACK: PerCpuArray<CallStack<AllocArgs>> =
    PerCpuArray::with_max_entries(1, 0);
#[map]
pub(crate) static ALLOC_TASKS: LruHashMap<u64, CallStack<AllocArgs>> =
    LruHashMap::with_max_entries(TASK_SLOTS, 0);

/// Per task: set while `early_drop()` runs (its deletions are evictions).
#[map]
pub(crate) static IN_EARLY_DROP: LruHashMap<u64, u32> = LruHashMap::with_max_entries(TASK_SLOTS, 0);

/// How many entries `IN_EARLY_DROP` ([`EARLY_DROPS`]) and `EARLY_DROP_FAILED`
/// ([`DROP_FLAGS`]) hold, over all CPUs: while a count is 0 its map is empty
/// and the per-connection probes skip their lookup in it (an LRU-hash miss
/// per connection each, for flags that are only ever set while the table is
/// full). A plain array: its lookups are inlined by the verifier. Raised
/// only after an insert succeeded and lowered only after a remove did, so a
/// count never falls below the entries there are; a lost return leaves it
/// high, which costs the lookups again and nothing else.
#[map]
pub(crate) static FLAG_COUNTS: Array<u64> = Array::with_max_entries(2, 0);
pub(crate) const EARLY_DROPS: u32 = 0;
pub(crate) const DROP_FLAGS: u32 = 1;

/// Lookups in flight (frames.rs; a softirq can nest one on top of another).
#[map]
pub(crate) static LOOKUP_STACK: PerCpuArray<CallStack<LookupFrame>> =
    PerCpuArray::with_max_entries(1, 0);
#[map]
pub(crate) static LOOKUP_TASKS: LruHashMap<u64, CallStack<LookupFrame>> =
    LruHashMap::with_max_entries(TASK_SLOTS, 0);

/// Lookup latency, log-linear slots (`conntrack_common::latency_slot`).
#[map]
pub(crate) static LOOKUP_LATENCY: PerCpuArray<LatencyHist> = PerCpuArray::with_max_entries(1, 0);

/// Length of the bucket each lookup walked.
#[map]
pub(crate) static CHAIN_LOOKUP: PerCpuArray<ChainHist> = PerCpuArray::with_max_entries(1, 0);

/// Longest lookup seen on each CPU, ns.
#[map]
pub(crate) static LOOKUP_MAX_NS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Every counter and the insert chain-length histograms, one block per CPU
/// (`conntrack_common::StatsBlock`).
#[map]
pub(crate) static STATS: PerCpuArray<StatsBlock> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub(crate) static PENDING_INSERT: PerCpuArray<PendingInsert> = PerCpuArray::with_max_entries(1, 0);

/// `__nf_conntrack_confirm` calls in flight (frames.rs): the entry and the
/// outcome of a clash resolved inside the call.
#[map]
pub(crate) static CONFIRM_STACK: PerCpuArray<CallStack<ConfirmFrame>> =
    PerCpuArray::with_max_entries(1, 0);
#[map]
pub(crate) static CONFIRM_TASKS: LruHashMap<u64, CallStack<ConfirmFrame>> =
    LruHashMap::with_max_entries(TASK_SLOTS, 0);

/// Per task: set by the `early_drop` return probe when it found nothing to
/// evict; taken by the `__nf_conntrack_alloc` return probe (its only caller).
#[map]
pub(crate) static EARLY_DROP_FAILED: LruHashMap<u64, u32> =
    LruHashMap::with_max_entries(TASK_SLOTS, 0);

/// Set once a CPU has logged its first self-check failure: diagnostics go
/// through aya-log once per CPU, never per event.
#[map]
pub(crate) static DIAG_LOGGED: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);
