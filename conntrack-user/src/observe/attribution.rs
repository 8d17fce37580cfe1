//! Per-namespace and per-container attribution for one observe run: the glue
//! between namespace discovery, the per-namespace counters, ctnetlink and
//! (in kprobe mode) the probes' per-origin counters.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use conntrack_common::{OriginKey, OriginStats};

use crate::{
    host::containers::{self, Container},
    host::ctnetlink,
    host::namespaces::{self, Netns, NsCounters},
    observe::events::{self, Listener, NsTally, Tallies},
    report::{ContainerReport, Drops, NetnsKind, NetnsReport, ProtoLifetimes},
};

/// One run's attribution state, from [`Session::start`] to [`Session::finish`].
pub(crate) struct Session {
    namespaces: Vec<Netns>,
    start: BTreeMap<u64, NsCounters>,
    listener: Option<Listener>,
    containers: Vec<Container>,
    notices: Vec<String>,
    /// The last dump of live entries by source, for [`Session::peek`]
    /// when `reuse_live` (serve's scrapes).
    live: Mutex<Option<CachedLive>>,
    reuse_live: bool,
}

/// A [`Session::peek`] of `ctscope serve` reuses the last dump of the table
/// for containers' live entries while it is younger than this many times
/// what the dump took: a scrape loop then spends about 1/20 of a core at
/// most dumping (measured: 0.4 s per 200,000 entries; a 1,000,000-entry
/// table, 2 s, is dumped at most every 40 s, where every 15 s would cost
/// 13 % of a core). Small tables are dumped at every scrape.
const LIVE_REUSE_FACTOR: u32 = 20;
/// ... never when older than this (above about 1.5 million entries the
/// dumps then cost more than 1/20 of a core) ...
const LIVE_REUSE_MAX: Duration = Duration::from_mins(1);
/// ... and never once a namespace's count has moved by more than 1/this
/// of what it was at the dump (a flush, a burst, a container gone quiet).
const LIVE_REUSE_MOVE: u64 = 10;

/// What one dump stood for, and what it found.
struct CachedLive {
    at: Instant,
    took: Duration,
    /// The containers' names and addresses at the dump.
    containers: Vec<(String, Vec<IpAddr>)>,
    /// Every namespace's count at the dump, by inode.
    counts: BTreeMap<u64, u64>,
    live: LiveBySource,
}

/// The containers as the cache is keyed.
fn container_key(containers: &[Container]) -> Vec<(String, Vec<IpAddr>)> {
    containers
        .iter()
        .map(|c| (c.name.clone(), c.addresses.iter().copied().collect()))
        .collect()
}

/// Every namespace's count now, by inode (a namespace whose count is
/// unknown counts as 0).
fn counts_of(end: &BTreeMap<u64, NsCounters>) -> BTreeMap<u64, u64> {
    end.iter()
        .map(|(inode, c)| (*inode, c.count.unwrap_or(0)))
        .collect()
}

impl CachedLive {
    /// Whether this dump still stands for these containers and counts at
    /// `now`.
    fn fresh_for(
        &self,
        containers: &[(String, Vec<IpAddr>)],
        counts: &BTreeMap<u64, u64>,
        now: Instant,
    ) -> bool {
        let window = self
            .took
            .saturating_mul(LIVE_REUSE_FACTOR)
            .min(LIVE_REUSE_MAX);
        let moved = |then: u64, now: u64| now.abs_diff(then).saturating_mul(LIVE_REUSE_MOVE) > then;
        self.containers == containers
            && self.counts.len() == counts.len()
            && self
                .counts
                .iter()
                .zip(counts)
                .all(|((i, then), (j, now))| i == j && !moved(*then, *now))
            && self.live.failed.is_none()
            && now.saturating_duration_since(self.at) < window
    }
}

/// What [`Session::finish`] found.
#[derive(Debug, Clone, Default)]
pub(crate) struct Attribution {
    pub netns: Vec<NetnsReport>,
    pub containers: Vec<ContainerReport>,
    /// From ctnetlink events (procfs mode); `None` without them.
    pub lifetimes: Option<BTreeMap<String, ProtoLifetimes>>,
    /// DESTROY events of entries born before the listener (procfs mode).
    pub lifetimes_untracked: Option<u64>,
    /// Entries in the one global table at the end: every namespace's count
    /// summed (what the modeled chain lengths need).
    pub live_entries_total: Option<u64>,
    pub notices: Vec<String>,
}

impl Session {
    /// Start of the run: snapshots every namespace's count and stat file,
    /// subscribes to ctnetlink NEW/DESTROY events in each when
    /// `listen_events` (procfs mode), and discovers containers.
    pub(crate) fn start(listen_events: bool) -> Session {
        let nss = namespaces::discover();
        let start = nss
            .iter()
            .filter_map(|ns| Some((ns.inode, namespaces::counters(ns).ok()?)))
            .collect();
        let mut notices = Vec::new();
        let listener = if listen_events {
            match Listener::start(&nss) {
                Ok(l) => Some(l),
                Err(e) => {
                    notices.push(format!("ctnetlink event listener did not start: {e}"));
                    None
                }
            }
        } else {
            None
        };
        let containers = containers::discover(&nss);
        Session {
            namespaces: nss,
            start,
            listener,
            containers,
            notices,
            live: Mutex::new(None),
            reuse_live: false,
        }
    }

    /// Lets [`Session::peek`] reuse a recent dump of the table for the
    /// containers' live entries (see [`LIVE_REUSE_FACTOR`]): `ctscope
    /// serve`, whose scrapes export how old it is. Off by default.
    pub(crate) fn reuse_live_dumps(&mut self) {
        self.reuse_live = true;
    }

    /// Forgets the last dump (SIGHUP): the next peek dumps the table.
    pub(crate) fn forget_live_dump(&self) {
        *self.live.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// How old the containers' live entries of the last [`Session::peek`]
    /// were; `None` when it reuses no dump, or had no container.
    pub(crate) fn live_age(&self) -> Option<Duration> {
        let cached = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        cached.as_ref().map(|c| c.at.elapsed())
    }

    /// The run so far, the run going on (`ctscope serve`): namespaces and
    /// containers as they are now, those gone since left out (their series
    /// end), and no event tallies (the listener keeps listening).
    pub(crate) fn peek(
        &self,
        origins: Option<&[(OriginKey, OriginStats)]>,
        attributed_throughout: bool,
    ) -> Attribution {
        self.build(None, origins, attributed_throughout, false)
    }

    /// End of the run. `origins` are the probes' per-(netns, source)
    /// counters over the run, summed over CPUs; `None` in procfs mode.
    /// `attributed_throughout`: the attribution programs ran for the whole
    /// run, so that every refusal was counted by reason and source; else
    /// the reasons they alone tell apart come from each namespace's own
    /// kernel counters (see [`netns_drops`]).
    pub(crate) fn finish(
        mut self,
        origins: Option<&[(OriginKey, OriginStats)]>,
        attributed_throughout: bool,
    ) -> Attribution {
        let listener = self.listener.take();
        self.build(listener, origins, attributed_throughout, true)
    }

    /// The rows as of now. `keep_gone`: namespaces and containers seen at
    /// the start and gone since keep their row (a report of the whole run).
    fn build(
        &self,
        listener: Option<Listener>,
        origins: Option<&[(OriginKey, OriginStats)]>,
        attributed_throughout: bool,
        keep_gone: bool,
    ) -> Attribution {
        let mut notices = self.notices.clone();
        let start = &self.start;
        // Counters first, then the listener: every event of an entry that the
        // counters include is already queued on its socket by then.
        let mut nss = namespaces::discover();
        let end: BTreeMap<u64, NsCounters> = nss
            .iter()
            .filter_map(|ns| Some((ns.inode, namespaces::counters(ns).ok()?)))
            .collect();
        let tallies = listener.map(Listener::finish);
        // Namespaces gone by the end keep their row (with what was measured).
        for ns in self.namespaces.iter().filter(|_| keep_gone) {
            if !nss.iter().any(|n| n.inode == ns.inode) {
                nss.push(ns.clone());
            }
        }
        // Namespaces known only to the probes (born and gone during the run).
        for (inode, _) in origins
            .filter(|_| keep_gone)
            .map(index_origins)
            .unwrap_or_default()
        {
            if !nss.iter().any(|n| n.inode == inode) {
                nss.push(Netns {
                    inode,
                    path: Default::default(),
                    name: format!("netns-{inode}"),
                    kind: crate::host::namespaces::Kind::Netns,
                    docker_id: None,
                    netns_name: None,
                    pid: None,
                });
            }
        }
        nss.sort_by_key(|n| n.inode);
        let now = containers::discover(&nss);
        let containers = if keep_gone {
            merge_containers(now, self.containers.clone())
        } else {
            now
        };
        let addresses: BTreeSet<IpAddr> = containers
            .iter()
            .flat_map(|c| c.addresses.iter().copied())
            .collect();
        // The end of a run always dumps: its report is exact.
        let live = if keep_gone || !self.reuse_live {
            LiveBySource::read(&nss, &end, &addresses)
        } else {
            self.live_reused(&nss, &end, &containers, &addresses)
        };

        let ctx = Ctx {
            start,
            end: &end,
            tallies: tallies.as_ref(),
            origins: origins.map(index_origins),
            attributed_throughout,
        };
        let netns: Vec<NetnsReport> = nss.iter().filter_map(|ns| ctx.netns_row(ns)).collect();
        let container_rows = containers
            .iter()
            .map(|c| ctx.container_row(c, &live))
            .collect();

        if let Some(t) = &tallies {
            notices.extend(event_notices(t, &nss));
        }
        if let Some(why) = &live.failed {
            notices.push(format!(
                "live entries by source could not be read everywhere ({why}): containers' live_entries are null"
            ));
        }
        let live_entries_total = (!end.is_empty())
            .then(|| end.values().map(|c| c.count).sum::<Option<u64>>())
            .flatten();
        Attribution {
            netns,
            containers: container_rows,
            lifetimes: tallies.as_ref().map(|t| t.lifetimes.report()),
            lifetimes_untracked: tallies
                .as_ref()
                .map(|t| t.by_netns.values().map(|n| n.untracked).sum()),
            live_entries_total,
            notices,
        }
    }
}

/// Containers at the end, plus those seen only at the start (they exited
/// during the run), addresses merged.
fn merge_containers(mut end: Vec<Container>, start: Vec<Container>) -> Vec<Container> {
    for s in start {
        match end.iter_mut().find(|c| c.name == s.name) {
            Some(c) => {
                c.addresses.extend(s.addresses);
                c.netns_inode = c.netns_inode.or(s.netns_inode);
            }
            None => end.push(s),
        }
    }
    end.sort_by(|a, b| a.name.cmp(&b.name));
    end
}

fn origin_addr(k: &OriginKey) -> Option<IpAddr> {
    match i32::from(k.family) {
        libc::AF_INET => {
            let a: [u8; 4] = k.addr_bytes()[..4].try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(a)))
        }
        libc::AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(k.addr_bytes()))),
        // The per-namespace overflow key: counts without an address.
        _ => None,
    }
}

/// Origins by namespace inode (`net->ns.inum`, a u32 in the kernel), then by
/// source address (`None`: the overflow key).
type OriginIndex = BTreeMap<u64, HashMap<Option<IpAddr>, OriginStats>>;

fn index_origins(origins: &[(OriginKey, OriginStats)]) -> OriginIndex {
    let mut out = OriginIndex::new();
    for (k, v) in origins {
        out.entry(u64::from(k.netns))
            .or_default()
            .entry(origin_addr(k))
            .or_default()
            .add(v);
    }
    out
}

/// A namespace's refusals by reason, from the probes' counts of it (`s`,
/// summed over its sources) and its own kernel counters over the run
/// (`kernel`: the stat file's deltas).
///
/// Table full and clash are always the probes' (their programs run on
/// those paths only and are always attached). The other reasons are
/// counted by the attribution programs: where they ran for the whole run
/// (`attributed_throughout`) those counts are used; else the kernel's:
/// `chaintoolong` (5.15+; before, no limit, so none), and what its `drop`
/// and `insert_failed` counted beyond the probes' reasons
/// (`drop = table_full + clash + alloc_failed`, `insert_failed =
/// chaintoolong + clash + other`: net/netfilter/nf_conntrack_core.c,
/// v6.1). Without the kernel's counters those are unknown (null).
pub(crate) fn netns_drops(
    s: &OriginStats,
    kernel: Option<&BTreeMap<String, u64>>,
    attributed_throughout: bool,
) -> Drops {
    if attributed_throughout {
        return Drops {
            table_full: Some(s.table_full),
            chain_too_long: Some(s.chain_too_long),
            clash: Some(s.clash),
            other: Some(s.dying.saturating_add(s.other)),
            alloc_failed: Some(s.alloc_failed),
        };
    }
    let col = |k: &str| kernel.map(|c| c.get(k).copied().unwrap_or(0));
    let chain = col("chaintoolong");
    Drops {
        table_full: Some(s.table_full),
        chain_too_long: chain,
        clash: Some(s.clash),
        other: col("insert_failed")
            .zip(chain)
            .map(|(f, c)| f.saturating_sub(c).saturating_sub(s.clash)),
        alloc_failed: col("drop").map(|d| d.saturating_sub(s.table_full.saturating_add(s.clash))),
    }
}

impl Session {
    /// [`LiveBySource::read`], or the last one while it still stands (see
    /// [`LIVE_REUSE_FACTOR`]).
    fn live_reused(
        &self,
        nss: &[Netns],
        end: &BTreeMap<u64, NsCounters>,
        containers: &[Container],
        addresses: &BTreeSet<IpAddr>,
    ) -> LiveBySource {
        // A poisoned lock only means a peek panicked mid-way: the cache is
        // then dropped below or replaced, never trusted half-written.
        let mut cached = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        if addresses.is_empty() {
            // Nothing is dumped without a container, and no age exported.
            *cached = None;
            return LiveBySource::read(nss, end, addresses);
        }
        let key = container_key(containers);
        let counts = counts_of(end);
        if let Some(c) = cached.as_ref()
            && c.fresh_for(&key, &counts, Instant::now())
        {
            return c.live.clone();
        }
        let at = Instant::now();
        let live = LiveBySource::read(nss, end, addresses);
        *cached = Some(CachedLive {
            at,
            took: at.elapsed(),
            containers: key,
            counts,
            live: live.clone(),
        });
        live
    }
}

/// Live entries at the end by original source address, per namespace.
#[derive(Debug, Clone)]
struct LiveBySource {
    by_netns: BTreeMap<u64, HashMap<IpAddr, u64>>,
    failed: Option<String>,
}

impl LiveBySource {
    /// Counts, in every namespace that has entries, the live entries whose
    /// original source is one of `wanted` (the containers' addresses):
    /// ctnetlink, else the namespace's `/proc/net/nf_conntrack`. Nothing is
    /// dumped when no address is wanted, and only wanted sources are kept,
    /// so memory stays with the number of addresses, not the table's size.
    fn read(
        nss: &[Netns],
        end: &BTreeMap<u64, NsCounters>,
        wanted: &BTreeSet<IpAddr>,
    ) -> LiveBySource {
        let mut out = LiveBySource {
            by_netns: BTreeMap::new(),
            failed: None,
        };
        if wanted.is_empty() {
            return out;
        }
        for ns in nss {
            if end.get(&ns.inode).and_then(|c| c.count).unwrap_or(0) == 0 {
                continue;
            }
            let got = namespaces::visit(ns, || {
                let mut m: HashMap<IpAddr, u64> = HashMap::new();
                let mut count = |s: IpAddr| {
                    if wanted.contains(&s) {
                        *m.entry(s).or_default() += 1;
                    }
                };
                match ctnetlink::dump_each(|e| {
                    if let Some(s) = e.src {
                        count(s);
                    }
                }) {
                    Ok(()) => Ok(m),
                    Err(e) => {
                        // Counted so far is dropped: the fallback counts all.
                        m.clear();
                        std::fs::read_to_string(Path::new("/proc/thread-self/net/nf_conntrack"))
                            .map(|t| {
                                for s in ctnetlink::proc_table_sources(&t) {
                                    if wanted.contains(&s) {
                                        *m.entry(s).or_default() += 1;
                                    }
                                }
                                m
                            })
                            .map_err(|_| e)
                    }
                }
            });
            match got {
                Ok(Ok(m)) => {
                    out.by_netns.insert(ns.inode, m);
                }
                Ok(Err(e)) => {
                    out.failed.get_or_insert(format!("{}: {e}", ns.name));
                }
                // Vanished since: it has no entries any more.
                Err(_) => {}
            }
        }
        out
    }
}

struct Ctx<'a> {
    start: &'a BTreeMap<u64, NsCounters>,
    end: &'a BTreeMap<u64, NsCounters>,
    tallies: Option<&'a Tallies>,
    origins: Option<OriginIndex>,
    attributed_throughout: bool,
}

/// Events of one namespace that can be trusted as complete: listened from
/// the start, nothing lost.
fn complete(t: &NsTally) -> bool {
    t.from_start && t.overruns == 0
}

impl Ctx<'_> {
    fn tally(&self, inode: u64) -> Option<&NsTally> {
        self.tallies?.by_netns.get(&inode)
    }

    fn netns_row(&self, ns: &Netns) -> Option<NetnsReport> {
        let end = self.end.get(&ns.inode);
        // A namespace created during the run started from zero counters.
        let zero = NsCounters::default();
        let start = self.start.get(&ns.inode).unwrap_or(&zero);
        let delta = match (end.and_then(|e| e.stat.as_ref()), &start.stat) {
            (Some(e), Some(s)) => Some(e.delta(s)),
            (Some(e), None) if !self.start.contains_key(&ns.inode) => {
                Some(e.delta(&Default::default()))
            }
            _ => None,
        };
        let (inserts, drops) = match &self.origins {
            Some(idx) => {
                let mut sum = OriginStats::default();
                for s in idx.get(&ns.inode).into_iter().flat_map(|m| m.values()) {
                    sum.add(s);
                }
                let kernel = delta.as_ref().map(|d| &d.columns);
                (
                    Some(sum.inserts),
                    netns_drops(&sum, kernel, self.attributed_throughout),
                )
            }
            None => (
                // The stat file's `insert` column is no help: current kernels
                // count there only nf_conntrack_hash_check_insert (ctnetlink
                // and BPF inserts), not confirmations (measured 0 on 6.18
                // while the count rose). NEW events are the count.
                self.tally(ns.inode)
                    .filter(|t| complete(t))
                    .map(|t| t.new_total),
                Drops {
                    // Exact: the kernel's own counter (5.15+; no chain
                    // limit, hence none, before).
                    chain_too_long: delta
                        .as_ref()
                        .map(|d| d.columns.get("chaintoolong").copied().unwrap_or(0)),
                    ..Drops::default()
                },
            ),
        };
        let live_entries = end.and_then(|e| e.count);
        let kernel_stats = delta.map(|d| d.columns).unwrap_or_default();
        let active = inserts.unwrap_or(0) > 0
            || live_entries.unwrap_or(0) > 0
            || drops.total().unwrap_or(0) > 0
            || drops.chain_too_long.unwrap_or(0) > 0
            || kernel_stats.values().any(|v| *v > 0);
        active.then(|| NetnsReport {
            inode: ns.inode,
            name: ns.name.clone(),
            kind: ns.kind.into(),
            inserts,
            live_entries,
            drops,
            kernel_stats,
        })
    }

    fn container_row(&self, c: &Container, live: &LiveBySource) -> ContainerReport {
        let own = c.netns_inode;
        let mine = |a: &IpAddr| c.addresses.contains(a);
        let (nat_inserts, own_inserts, drops) = if let Some(idx) = &self.origins {
            let mut nat = OriginStats::default();
            let mut own_s = OriginStats::default();
            for (ino, m) in idx {
                for (addr, s) in m {
                    if Some(*ino) == own {
                        own_s.add(s);
                    } else if addr.as_ref().is_some_and(mine) {
                        nat.add(s);
                    }
                }
            }
            (
                Some(nat.inserts),
                own.map(|_| own_s.inserts),
                Some(nat.attributed_drops() + own_s.attributed_drops()),
            )
        } else {
            let nat = self.tallies.and_then(|t| {
                t.by_netns
                    .iter()
                    .filter(|(ino, _)| Some(**ino) != own)
                    .map(|(_, n)| {
                        // A full source map: this namespace's per-source
                        // counts are incomplete, so unknown, not low.
                        (complete(n) && n.src_overflow == 0).then(|| {
                            n.new_by_src
                                .iter()
                                .filter(|(a, _)| mine(a))
                                .map(|(_, v)| v)
                                .sum::<u64>()
                        })
                    })
                    .sum::<Option<u64>>()
            });
            let own_i = own
                .and_then(|o| self.tally(o))
                .filter(|t| complete(t))
                .map(|t| t.new_total);
            (nat, own_i, None)
        };
        let live_entries = if live.failed.is_some() {
            None
        } else {
            let own_count = match own {
                Some(o) => self.end.get(&o).and_then(|e| e.count),
                None => Some(0),
            };
            own_count.map(|n| {
                n + live
                    .by_netns
                    .iter()
                    .filter(|(ino, _)| Some(**ino) != own)
                    .flat_map(|(_, m)| m.iter())
                    .filter(|(a, _)| mine(a))
                    .map(|(_, v)| v)
                    .sum::<u64>()
            })
        };
        ContainerReport {
            name: c.name.clone(),
            id: c.id.clone(),
            netns_inode: own,
            addresses: c
                .addresses
                .iter()
                .map(std::string::ToString::to_string)
                .collect(),
            inserts: nat_inserts
                .zip(own_inserts.or(own.is_none().then_some(0)))
                .map(|(a, b)| a + b),
            nat_inserts,
            own_inserts,
            live_entries,
            drops,
        }
    }
}

fn event_notices(t: &Tallies, nss: &[Netns]) -> Vec<String> {
    let name = |ino: u64| {
        nss.iter()
            .find(|n| n.inode == ino)
            .map_or_else(|| ino.to_string(), |n| format!("{} ({ino})", n.name))
    };
    let mut out = vec![format!(
        "per-namespace inserts, container attribution and lifetimes come from ctnetlink NEW/DESTROY events ({} namespaces listened); a DESTROY event does not say why the entry went, so every end but a closing TCP state counts as timeout (early_drop, flush, unconfirmed and other are not told apart in this mode)",
        t.by_netns.len()
    )];
    let lossy: Vec<String> = t
        .by_netns
        .iter()
        .filter(|(_, n)| n.overruns > 0)
        .map(|(i, n)| format!("{}: {} overruns", name(*i), n.overruns))
        .collect();
    if !lossy.is_empty() {
        out.push(format!(
            "ctnetlink events were lost (receive buffer full) in {}: inserts counted there are null",
            lossy.join(", ")
        ));
    }
    let late: Vec<String> = t
        .by_netns
        .iter()
        .filter(|(_, n)| !n.from_start)
        .map(|(i, _)| name(*i))
        .collect();
    if !late.is_empty() {
        out.push(format!(
            "namespaces created during the run (listened from discovery, so their inserts are null): {}",
            late.join(", ")
        ));
    }
    let src_full: Vec<String> = t
        .by_netns
        .iter()
        .filter(|(_, n)| n.src_overflow > 0)
        .map(|(i, n)| format!("{}: {} inserts", name(*i), n.src_overflow))
        .collect();
    if !src_full.is_empty() {
        out.push(format!(
            "more than {} distinct source addresses: inserts from further sources were counted per namespace only ({}), so container inserts attributed from those namespaces are null",
            events::SOURCES_MAX,
            src_full.join(", ")
        ));
    }
    if t.born_overflow > 0 {
        out.push(format!(
            "{} entries were born while {} were already being tracked: they have no lifetime (their DESTROY counts as untracked)",
            t.born_overflow,
            events::BORN_MAX
        ));
    }
    if t.namespaces_skipped > 0 {
        out.push(format!(
            "{} namespaces found after {} were not listened to: their inserts are null",
            t.namespaces_skipped,
            events::NAMESPACES_MAX
        ));
    }
    if let Some((ino, why)) = t.refused.first() {
        out.push(format!(
            "ctnetlink events unavailable in {} namespaces (first: {}: {why}): their inserts are null",
            t.refused.len(),
            name(*ino)
        ));
    }
    out
}

/// The report's name for what discovery found.
impl From<crate::host::namespaces::Kind> for NetnsKind {
    fn from(kind: crate::host::namespaces::Kind) -> Self {
        use crate::host::namespaces::Kind;
        match kind {
            Kind::Host => NetnsKind::Host,
            Kind::Container => NetnsKind::Container,
            Kind::Netns => NetnsKind::Netns,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn a_dump_is_reused_for_twenty_times_what_it_took_and_no_more() {
        let at = Instant::now();
        let web = vec![(
            "web".to_string(),
            vec![IpAddr::V4(Ipv4Addr::new(172, 17, 0, 2))],
        )];
        let counts: BTreeMap<u64, u64> = [(1, 200_000), (2, 0)].into();
        let ok = || LiveBySource {
            by_netns: BTreeMap::new(),
            failed: None,
        };
        let c = CachedLive {
            at,
            took: Duration::from_millis(400),
            containers: web.clone(),
            counts: counts.clone(),
            live: ok(),
        };
        assert!(c.fresh_for(&web, &counts, at + Duration::from_millis(7_999)));
        assert!(!c.fresh_for(&web, &counts, at + Duration::from_secs(8)));
        // Another container (or the same name on a new address), a namespace more or
        // less, or a count moved by over a tenth: dumped again.
        assert!(!c.fresh_for(&[], &counts, at));
        let moved_web = vec![(
            "web".to_string(),
            vec![IpAddr::V4(Ipv4Addr::new(172, 17, 0, 3))],
        )];
        assert!(!c.fresh_for(&moved_web, &counts, at));
        assert!(!c.fresh_for(&web, &[(1, 200_000)].into(), at));
        assert!(c.fresh_for(&web, &[(1, 180_000), (2, 0)].into(), at));
        assert!(!c.fresh_for(&web, &[(1, 179_999), (2, 0)].into(), at));
        assert!(!c.fresh_for(&web, &[(1, 200_000), (2, 1)].into(), at));
        // A failed dump is not kept, and a slow one is redone within a minute.
        let failed = CachedLive {
            live: LiveBySource {
                by_netns: BTreeMap::new(),
                failed: Some("EPERM".into()),
            },
            ..c
        };
        assert!(!failed.fresh_for(&web, &counts, at));
        let slow = CachedLive {
            took: Duration::from_secs(10),
            live: ok(),
            ..failed
        };
        assert!(slow.fresh_for(&web, &counts, at + Duration::from_secs(59)));
        assert!(!slow.fresh_for(&web, &counts, at + Duration::from_mins(1)));
    }

    fn key(netns: u32, a: [u8; 4]) -> OriginKey {
        OriginKey {
            netns,
            family: libc::AF_INET as u16,
            _pad: 0,
            // As the kernel's bytes lie in memory.
            addr: [u32::from_ne_bytes(a), 0, 0, 0],
        }
    }

    #[test]
    fn origins_attribute_by_namespace_and_source() {
        let host = 100u64;
        let own = 200u64;
        let stats = |inserts, clash| OriginStats {
            inserts,
            clash,
            ..Default::default()
        };
        let origins = [
            (key(host as u32, [172, 17, 0, 2]), stats(30, 1)),
            (key(host as u32, [172, 17, 0, 3]), stats(7, 0)),
            (key(own as u32, [127, 0, 0, 1]), stats(5, 0)),
        ];
        let empty = BTreeMap::new();
        let ctx = Ctx {
            start: &empty,
            end: &empty,
            tallies: None,
            origins: Some(index_origins(&origins)),
            attributed_throughout: true,
        };
        let c = Container {
            name: "web".into(),
            id: None,
            netns_inode: Some(own),
            addresses: BTreeSet::from([IpAddr::from([172, 17, 0, 2])]),
        };
        let live = LiveBySource {
            by_netns: BTreeMap::new(),
            failed: None,
        };
        let row = ctx.container_row(&c, &live);
        assert_eq!(row.nat_inserts, Some(30));
        assert_eq!(row.own_inserts, Some(5));
        assert_eq!(row.inserts, Some(35));
        assert_eq!(row.drops, Some(1));
        let ns = Netns {
            inode: host,
            path: "/proc/1/ns/net".into(),
            name: "host".into(),
            kind: crate::host::namespaces::Kind::Host,
            docker_id: None,
            netns_name: None,
            pid: Some(1),
        };
        let r = ctx.netns_row(&ns).expect("active");
        assert_eq!(r.inserts, Some(37));
        assert_eq!(r.drops.clash, Some(1));
    }

    #[test]
    fn netns_drops_take_what_the_probes_did_not_count_from_the_kernel() {
        let s = OriginStats {
            table_full: 3,
            clash: 1,
            chain_too_long: 9,
            dying: 1,
            other: 1,
            alloc_failed: 4,
            ..Default::default()
        };
        let k: BTreeMap<String, u64> = [("drop", 6), ("insert_failed", 7), ("chaintoolong", 5)]
            .into_iter()
            .map(|(n, v)| (n.to_string(), v))
            .collect();
        let reasons = |d: &Drops| {
            (
                d.table_full,
                d.clash,
                d.chain_too_long,
                d.other,
                d.alloc_failed,
            )
        };
        // Attribution throughout: every reason is the probes'.
        let d = netns_drops(&s, Some(&k), true);
        assert_eq!(reasons(&d), (Some(3), Some(1), Some(9), Some(2), Some(4)));
        // Not throughout: table full and clash are the probes' (always attached), the rest
        // the kernel's: chaintoolong itself, insert_failed and drop less the probes' reasons.
        let d = netns_drops(&s, Some(&k), false);
        assert_eq!(reasons(&d), (Some(3), Some(1), Some(5), Some(1), Some(2)));
        // Without the kernel's counters those are unknown, not 0.
        let d = netns_drops(&s, None, false);
        assert_eq!(reasons(&d), (Some(3), Some(1), None, None, None));
    }
}
