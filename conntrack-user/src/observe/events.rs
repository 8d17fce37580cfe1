//! ctnetlink NEW/DESTROY event listeners, one socket per network namespace,
//! read by one thread: per-source insert counts and entry lifetimes for
//! procfs mode.
//!
//! With `net.netfilter.nf_conntrack_events = 2` (the "auto" mode added in
//! 6.0, and this host's default) the kernel attaches the event extension only
//! to entries created while a listener exists, so entries older than the
//! listener send no DESTROY; where they do (`= 1`) they are counted as
//! untracked, never given a lifetime.

use std::{
    collections::{BTreeMap, HashMap},
    io,
    net::IpAddr,
    os::fd::AsFd as _,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use nix::poll::{PollFd, PollFlags, PollTimeout};

use crate::{
    host::ctnetlink::{self, Message, NFNLGRP_CONNTRACK_DESTROY, NFNLGRP_CONNTRACK_NEW, Socket},
    host::namespaces::{self, Netns},
    report::ProtoLifetimes,
};

/// Receive buffer per socket: 8 MiB holds about 40k event messages, a
/// second of a heavy connection storm, between two reads.
const RCVBUF: usize = 8 << 20;
/// How often the reader looks for namespaces created during the run.
const RESCAN: Duration = Duration::from_secs(1);

/// How one entry ended, as far as its DESTROY event tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// TCP in FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT or CLOSE.
    TcpClosed,
    /// Everything else. A DESTROY event does not say why the entry went
    /// (timeout, early drop, flush and namespace exit look alike), so these
    /// are reported as timeouts and the notice says so.
    Timeout,
}

/// Entries tracked from their NEW to their DESTROY at most, over every
/// namespace: 16 bytes each in the map, so about 8 MiB when full. Entries
/// alive at once are bounded by the table, but a DESTROY lost to an overrun
/// would leave its entry here for good; past the cap, births are counted in
/// [`Tallies::born_overflow`] and get no lifetime.
pub const BORN_MAX: usize = 1 << 18;
/// Distinct (namespace, source address) pairs counted per source at most:
/// sources are outside input (a spoofed IPv6 storm has no end of them);
/// about 3 MiB when full. Past it, inserts are still counted per namespace
/// and in [`NsTally::src_overflow`].
pub const SOURCES_MAX: usize = 1 << 16;
/// Namespaces tallied at most (listened or refused), for runs with
/// container churn; past it they are counted in [`Tallies::namespaces_skipped`].
pub const NAMESPACES_MAX: usize = 4096;
/// Longest lifetime the histograms hold, µs (30 days; longer ones clamped).
const MAX_US: u64 = 30 * 24 * 3600 * 1_000_000;
/// The protocols lifetimes are reported by.
pub const PROTOCOLS: [&str; 4] = ["tcp", "udp", "icmp", "other"];

fn proto_index(p: u8) -> usize {
    match i32::from(p) {
        libc::IPPROTO_TCP => 0,
        libc::IPPROTO_UDP => 1,
        libc::IPPROTO_ICMP | libc::IPPROTO_ICMPV6 => 2,
        _ => 3,
    }
}

/// Lifetimes aggregated as deaths arrive: one histogram per protocol
/// (hdrhistogram, 1 µs .. 30 days, 3 significant digits, about 270 KiB each,
/// allocated on the protocol's first death), so memory does not grow with
/// the number of deaths.
#[derive(Debug, Default)]
pub struct LifeHists {
    hist: [Option<Histogram<u64>>; 4],
    timeout: [u64; 4],
    closed: [u64; 4],
}

impl LifeHists {
    /// One death, by how it ended; its lifetime in µs when known.
    pub fn record(&mut self, l4proto: u8, us: Option<u64>, end: End) {
        let p = proto_index(l4proto);
        match end {
            End::Timeout => self.timeout[p] += 1,
            End::TcpClosed => self.closed[p] += 1,
        }
        let Some(us) = us else {
            return;
        };
        if self.hist[p].is_none() {
            self.hist[p] = Histogram::new_with_bounds(1, MAX_US, 3).ok();
        }
        if let Some(h) = &mut self.hist[p] {
            // In bounds by the clamp: recording cannot fail or allocate.
            let _ = h.record(us.clamp(1, MAX_US));
        }
    }

    /// Deaths recorded.
    pub fn len(&self) -> u64 {
        self.timeout.iter().chain(&self.closed).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Per protocol with deaths: the count (every death, with a lifetime
    /// or not), percentiles and max in ms of the measured lifetimes (within
    /// 0.1%; 0 with none measured), and the count per way of ending.
    pub fn report(&self) -> BTreeMap<String, ProtoLifetimes> {
        let ms = |us: u64| us as f64 / 1_000.0;
        PROTOCOLS
            .iter()
            .enumerate()
            .filter_map(|(i, name)| {
                let count = self.timeout[i] + self.closed[i];
                if count == 0 {
                    return None;
                }
                let h = self.hist[i].as_ref().filter(|h| !h.is_empty());
                let at = |q: f64| h.map_or(0.0, |h| ms(h.value_at_quantile(q)));
                let by_end = BTreeMap::from([
                    ("timeout".to_string(), self.timeout[i]),
                    ("tcp_closed".to_string(), self.closed[i]),
                ]);
                Some((
                    name.to_string(),
                    ProtoLifetimes {
                        count,
                        p50_ms: at(0.50),
                        p99_ms: at(0.99),
                        max_ms: h.map_or(0.0, |h| ms(h.max())),
                        by_end,
                    },
                ))
            })
            .collect()
    }
}

/// What the events of one namespace showed.
#[derive(Debug, Clone, Default)]
pub struct NsTally {
    /// Whether the socket existed from the start of the run (else it was
    /// opened when the namespace was found during the run).
    pub from_start: bool,
    pub new_total: u64,
    /// NEW events by original source, for the sources that fit
    /// [`SOURCES_MAX`].
    pub new_by_src: HashMap<IpAddr, u64>,
    /// NEW events whose source could not be counted per source (the map
    /// was full): per-source figures of this namespace are incomplete.
    pub src_overflow: u64,
    /// `ENOBUFS` reads: each means at least one event was lost.
    pub overruns: u64,
    /// DESTROY events of entries whose NEW was not seen (or not tracked).
    pub untracked: u64,
    /// Entry id -> birth: L4 protocol in the top 8 bits, µs since the
    /// listener's start in the low 56.
    born: HashMap<u32, u64>,
}

/// Everything the listeners saw, by namespace inode.
#[derive(Debug)]
pub struct Tallies {
    pub by_netns: BTreeMap<u64, NsTally>,
    /// Namespaces whose socket could not be opened, and why.
    pub refused: Vec<(u64, String)>,
    /// Lifetimes of every namespace, by protocol.
    pub lifetimes: LifeHists,
    /// NEW events not tracked for a lifetime ([`BORN_MAX`] reached).
    pub born_overflow: u64,
    /// Namespaces not listened to ([`NAMESPACES_MAX`] reached).
    pub namespaces_skipped: u64,
    born_total: usize,
    sources_total: usize,
    epoch: Instant,
}

impl Default for Tallies {
    fn default() -> Tallies {
        Tallies::new(Instant::now())
    }
}

const PROTO_SHIFT: u32 = 56;
const US_MASK: u64 = (1 << PROTO_SHIFT) - 1;

impl Tallies {
    /// Empty tallies; `epoch` is the earliest instant an event is stamped with.
    pub fn new(epoch: Instant) -> Tallies {
        Tallies {
            by_netns: BTreeMap::new(),
            refused: Vec::new(),
            lifetimes: LifeHists::default(),
            born_overflow: 0,
            namespaces_skipped: 0,
            born_total: 0,
            sources_total: 0,
            epoch,
        }
    }

    /// Whether one more namespace may be tallied.
    fn room_for_namespace(&self) -> bool {
        self.by_netns.len() + self.refused.len() < NAMESPACES_MAX
    }

    /// Entries tracked from birth right now (bounded by [`BORN_MAX`]).
    pub fn tracked(&self) -> usize {
        self.born_total
    }

    /// Distinct (namespace, source) pairs counted (bounded by [`SOURCES_MAX`]).
    pub fn sources(&self) -> usize {
        self.sources_total
    }

    /// One event of namespace `inode`, received at `now`.
    pub fn on(&mut self, inode: u64, m: Message, now: Instant) {
        let us = u64::try_from(now.saturating_duration_since(self.epoch).as_micros())
            .unwrap_or(u64::MAX)
            .min(US_MASK);
        let t = self.by_netns.entry(inode).or_default();
        match m {
            Message::New(e) => {
                t.new_total += 1;
                if let Some(src) = e.src {
                    match t.new_by_src.get_mut(&src) {
                        Some(n) => *n += 1,
                        None if self.sources_total < SOURCES_MAX => {
                            t.new_by_src.insert(src, 1);
                            self.sources_total += 1;
                        }
                        None => t.src_overflow += 1,
                    }
                }
                if let Some(id) = e.id {
                    let packed = (u64::from(e.l4proto.unwrap_or(0)) << PROTO_SHIFT) | us;
                    match t.born.get_mut(&id) {
                        // An id reused without its DESTROY seen: the new birth.
                        Some(b) => *b = packed,
                        None if self.born_total < BORN_MAX => {
                            t.born.insert(id, packed);
                            self.born_total += 1;
                        }
                        None => self.born_overflow += 1,
                    }
                }
            }
            Message::Destroy(e) => {
                let end = |proto: u8| {
                    if proto == libc::IPPROTO_TCP as u8
                        && e.tcp_state.is_some_and(ctnetlink::tcp_state_is_closing)
                    {
                        End::TcpClosed
                    } else {
                        End::Timeout
                    }
                };
                if let Some(b) = e.id.and_then(|id| t.born.remove(&id)) {
                    self.born_total -= 1;
                    let proto = (b >> PROTO_SHIFT) as u8;
                    self.lifetimes
                        .record(proto, Some(us.saturating_sub(b & US_MASK)), end(proto));
                } else {
                    // Born before the listener: counted by how it ended, without a
                    // lifetime (as the probes count such deaths).
                    t.untracked += 1;
                    let proto = e.l4proto.unwrap_or(0);
                    self.lifetimes.record(proto, None, end(proto));
                }
            }
            _ => {}
        }
    }

    /// Gives back what a namespace's maps no longer use (a burst's peak
    /// stays allocated otherwise), and forgets the births of namespaces in
    /// `gone`: no DESTROY comes from them any more.
    fn compact(&mut self, gone: &[u64]) {
        for ino in gone {
            if let Some(t) = self.by_netns.get_mut(ino) {
                self.born_total -= t.born.len();
                t.born = HashMap::new();
            }
        }
        for t in self.by_netns.values_mut() {
            if t.born.capacity() > 1024 && t.born.len() < t.born.capacity() / 4 {
                t.born.shrink_to(t.born.len() * 2);
            }
        }
    }
}

struct Sub {
    inode: u64,
    sock: Socket,
}

fn subscribe(path: &Path, inode: u64) -> Result<Socket, String> {
    let opened = namespaces::visit_path(path, inode, || -> io::Result<Socket> {
        // Per namespace: 0 means no events at all, and a silent socket would
        // read as "no inserts" (nf_conntrack_ecache.c, nf_ct_ecache_ext_add).
        if crate::host::procfs::sysctl("nf_conntrack_events").ok() == Some(0) {
            return Err(io::Error::other("events are off (nf_conntrack_events = 0)"));
        }
        let s = Socket::open(&[NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_DESTROY])?;
        s.set_rcvbuf_force(RCVBUF)?;
        s.set_nonblocking()?;
        Ok(s)
    });
    match opened {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!("ctnetlink: {e}")),
        Err(e) => Err(e.to_string()),
    }
}

/// The running listeners.
pub struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Tallies>>,
}

impl Drop for Listener {
    /// A listener dropped without [`Listener::finish`] still stops its thread.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

impl Listener {
    /// Subscribes in every namespace of `nss` before returning (events of
    /// traffic that starts right after are seen), then reads on one thread.
    pub fn start(nss: &[Netns]) -> io::Result<Listener> {
        let mut tallies = Tallies::default();
        let mut subs = Vec::new();
        for ns in nss {
            if !tallies.room_for_namespace() {
                tallies.namespaces_skipped += 1;
                continue;
            }
            match subscribe(&ns.path, ns.inode) {
                Ok(sock) => {
                    subs.push(Sub {
                        inode: ns.inode,
                        sock,
                    });
                    tallies.by_netns.insert(
                        ns.inode,
                        NsTally {
                            from_start: true,
                            ..Default::default()
                        },
                    );
                }
                Err(e) => tallies.refused.push((ns.inode, e)),
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ctnetlink".into())
            .spawn(move || read_loop(subs, tallies, &flag))?;
        Ok(Listener {
            stop,
            thread: Some(thread),
        })
    }

    /// Drains what is queued, stops, and returns the tallies.
    pub fn finish(mut self) -> Tallies {
        self.stop.store(true, Ordering::Release);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

/// Datagrams read from one socket per pass (64 KiB each, some 300 events):
/// a namespace whose events arrive faster than they are parsed must not
/// keep the reader on it for good, starving the others and the stop.
const DATAGRAMS_PER_PASS: usize = 256;
/// How long the last drain at the stop may take: a storm that never lets a
/// socket run dry must not hold the end of the run (what is left is lost,
/// and counted as an overrun).
const FINAL_DRAIN: Duration = Duration::from_secs(2);

/// Reads what is queued on `sub`, at most [`DATAGRAMS_PER_PASS`] datagrams:
/// whether the socket ran dry (or broke).
fn drain(sub: &Sub, tallies: &mut Tallies, buf: &mut [u8]) -> bool {
    for _ in 0..DATAGRAMS_PER_PASS {
        match sub.sock.recv(buf) {
            Ok(0) => return true,
            Ok(n) => {
                let now = Instant::now();
                for m in ctnetlink::parse_messages(&buf[..n]) {
                    tallies.on(sub.inode, m, now);
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                tallies.by_netns.entry(sub.inode).or_default().overruns += 1;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // EAGAIN: drained. Anything else: this socket is broken; its
            // namespace keeps what it counted so far.
            Err(_) => return true,
        }
    }
    false
}

fn read_loop(mut subs: Vec<Sub>, mut tallies: Tallies, stop: &AtomicBool) -> Tallies {
    let mut buf = vec![0u8; 1 << 16];
    let mut last_scan = Instant::now();
    loop {
        let stopping = stop.load(Ordering::Acquire);
        if !stopping {
            let mut fds: Vec<PollFd<'_>> = subs
                .iter()
                .map(|s| PollFd::new(s.sock.as_fd(), PollFlags::POLLIN))
                .collect();
            // Only a wait of at most 100 ms: every socket is drained below
            // whatever poll said, and an error (EINTR) just ends the wait.
            let _ = nix::poll::poll(&mut fds, PollTimeout::from(100u16));
        }
        if stopping {
            let until = Instant::now() + FINAL_DRAIN;
            let mut dry = vec![false; subs.len()];
            while dry.iter().any(|d| !d) && Instant::now() < until {
                for (s, d) in subs.iter().zip(dry.iter_mut()).filter(|(_, d)| !**d) {
                    *d = drain(s, &mut tallies, &mut buf);
                }
            }
            for (s, _) in subs.iter().zip(&dry).filter(|(_, d)| !**d) {
                tallies.by_netns.entry(s.inode).or_default().overruns += 1;
            }
            return tallies;
        }
        for s in &subs {
            drain(s, &mut tallies, &mut buf);
        }
        if last_scan.elapsed() >= RESCAN {
            last_scan = Instant::now();
            let now = namespaces::scan_paths();
            // A socket holds a reference on its namespace (sk_alloc takes
            // get_net), so a namespace that lost its last process and bind
            // mount would live on only because of us: everything it counted
            // was drained above, so let it go.
            let gone: Vec<u64> = subs
                .iter()
                .map(|s| s.inode)
                .filter(|i| !now.iter().any(|(n, _)| n == i))
                .collect();
            subs.retain(|s| !gone.contains(&s.inode));
            tallies.compact(&gone);
            for (inode, path) in now {
                if tallies.by_netns.contains_key(&inode)
                    || tallies.refused.iter().any(|(i, _)| *i == inode)
                {
                    continue;
                }
                if !tallies.room_for_namespace() {
                    tallies.namespaces_skipped += 1;
                    continue;
                }
                match subscribe(&path, inode) {
                    Ok(sock) => {
                        subs.push(Sub { inode, sock });
                        tallies.by_netns.insert(inode, NsTally::default());
                    }
                    // Vanished already, or refused: not worth a retry.
                    Err(e) => tallies.refused.push((inode, e)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::ctnetlink::Entry;

    fn entry(id: u32, proto: u8, state: Option<u8>) -> Entry {
        Entry {
            id: Some(id),
            src: Some(IpAddr::from([10, 0, 0, 1])),
            l4proto: Some(proto),
            tcp_state: state,
        }
    }

    #[test]
    fn pairs_new_with_destroy() {
        let t0 = Instant::now();
        let mut t = Tallies::new(t0);
        t.on(7, Message::New(entry(1, 6, None)), t0);
        t.on(7, Message::New(entry(2, 17, None)), t0);
        t.on(
            7,
            Message::Destroy(entry(1, 6, Some(7))),
            t0 + Duration::from_millis(250),
        );
        t.on(
            7,
            Message::Destroy(entry(2, 17, None)),
            t0 + Duration::from_secs(30),
        );
        t.on(7, Message::Destroy(entry(3, 17, None)), t0);
        let n = &t.by_netns[&7];
        assert_eq!(n.new_total, 2);
        assert_eq!(n.new_by_src[&IpAddr::from([10, 0, 0, 1])], 2);
        assert_eq!(n.untracked, 1);
        assert!(n.born.is_empty());
        assert_eq!(t.tracked(), 0);
        let r = t.lifetimes.report();
        assert_eq!(r["tcp"].count, 1);
        assert_eq!(r["tcp"].by_end["tcp_closed"], 1);
        assert!((r["tcp"].p50_ms - 250.0).abs() < 0.25, "{:?}", r["tcp"]);
        // The death of an entry born before the listener counts by how it ended,
        // without a lifetime.
        assert_eq!((r["udp"].count, r["udp"].by_end["timeout"]), (2, 2));
        assert!((r["udp"].max_ms - 30_000.0).abs() < 30.0, "{:?}", r["udp"]);
    }

    #[test]
    fn births_and_sources_are_bounded() {
        let t0 = Instant::now();
        let mut t = Tallies::new(t0);
        let n = BORN_MAX as u32 + 100;
        for id in 0..n {
            let mut e = entry(id, 17, None);
            // Distinct IPv6 sources: outside input without end.
            e.src = Some(IpAddr::from([
                0x2001,
                0xdb8,
                0,
                0,
                0,
                0,
                (id >> 16) as u16,
                id as u16,
            ]));
            t.on(1, Message::New(e), t0);
        }
        assert_eq!(t.tracked(), BORN_MAX);
        assert_eq!(t.born_overflow, 100);
        assert_eq!(t.sources(), SOURCES_MAX);
        assert_eq!(
            t.by_netns[&1].src_overflow,
            u64::from(n) - SOURCES_MAX as u64
        );
        assert_eq!(t.by_netns[&1].new_total, u64::from(n));
        // The namespace goes: its births are forgotten, the budget is back.
        t.compact(&[1]);
        assert_eq!(t.tracked(), 0);
    }
}
