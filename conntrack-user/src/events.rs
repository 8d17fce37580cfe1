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
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{
    ctnetlink::{self, Message, NFNLGRP_CONNTRACK_DESTROY, NFNLGRP_CONNTRACK_NEW, Socket},
    namespaces::{self, Netns},
};

/// Receive buffer per socket: 8 MiB holds about 40k event messages, a
/// second of a heavy connection storm, between two reads.
const RCVBUF: i32 = 8 << 20;
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

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lifetime {
    pub l4proto: u8,
    pub ms: f64,
    pub end: End,
}

/// What the events of one namespace showed.
#[derive(Debug, Clone, Default)]
pub struct NsTally {
    /// Whether the socket existed from the start of the run (else it was
    /// opened when the namespace was found during the run).
    pub from_start: bool,
    pub new_total: u64,
    pub new_by_src: HashMap<IpAddr, u64>,
    /// `ENOBUFS` reads: each means at least one event was lost.
    pub overruns: u64,
    pub lifetimes: Vec<Lifetime>,
    /// DESTROY events of entries whose NEW was not seen.
    pub untracked: u64,
    born: HashMap<u32, (Instant, u8)>,
}

impl NsTally {
    fn on(&mut self, m: Message, now: Instant) {
        match m {
            Message::New(e) => {
                self.new_total += 1;
                if let Some(src) = e.src {
                    *self.new_by_src.entry(src).or_default() += 1;
                }
                if let Some(id) = e.id {
                    self.born.insert(id, (now, e.l4proto.unwrap_or(0)));
                }
            }
            Message::Destroy(e) => match e.id.and_then(|id| self.born.remove(&id)) {
                Some((t0, proto)) => self.lifetimes.push(Lifetime {
                    l4proto: proto,
                    ms: now.duration_since(t0).as_secs_f64() * 1e3,
                    end: if proto == libc::IPPROTO_TCP as u8
                        && e.tcp_state.is_some_and(ctnetlink::tcp_state_is_closing)
                    {
                        End::TcpClosed
                    } else {
                        End::Timeout
                    },
                }),
                None => self.untracked += 1,
            },
            _ => {}
        }
    }
}

/// Everything the listeners saw, by namespace inode.
#[derive(Debug, Default)]
pub struct Tallies {
    pub by_netns: BTreeMap<u64, NsTally>,
    /// Namespaces whose socket could not be opened, and why.
    pub refused: Vec<(u64, String)>,
}

struct Sub {
    inode: u64,
    sock: Socket,
}

fn subscribe(path: &Path, inode: u64) -> Result<Socket, String> {
    let opened = namespaces::visit_path(path, inode, || -> io::Result<Socket> {
        // Per namespace: 0 means no events at all, and a silent socket would
        // read as "no inserts" (nf_conntrack_ecache.c, nf_ct_ecache_ext_add).
        if crate::procfs::sysctl("nf_conntrack_events").ok() == Some(0) {
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

fn drain(sub: &Sub, tally: &mut NsTally, buf: &mut [u8]) {
    loop {
        match sub.sock.recv(buf) {
            Ok(0) => return,
            Ok(n) => {
                let now = Instant::now();
                for m in ctnetlink::parse_messages(&buf[..n]) {
                    tally.on(m, now);
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => tally.overruns += 1,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // EAGAIN: drained. Anything else: this socket is broken; its
            // namespace keeps what it counted so far.
            Err(_) => return,
        }
    }
}

fn read_loop(mut subs: Vec<Sub>, mut tallies: Tallies, stop: &AtomicBool) -> Tallies {
    let mut buf = vec![0u8; 1 << 16];
    let mut last_scan = Instant::now();
    loop {
        let stopping = stop.load(Ordering::Acquire);
        let mut fds: Vec<libc::pollfd> = subs
            .iter()
            .map(|s| libc::pollfd {
                fd: s.sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        if !stopping {
            // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        }
        for s in &subs {
            let tally = tallies.by_netns.entry(s.inode).or_default();
            drain(s, tally, &mut buf);
        }
        if stopping {
            return tallies;
        }
        if last_scan.elapsed() >= RESCAN {
            last_scan = Instant::now();
            let now = namespaces::scan_paths();
            // A socket holds a reference on its namespace (sk_alloc takes
            // get_net), so a namespace that lost its last process and bind
            // mount would live on only because of us: everything it counted
            // was drained above, so let it go.
            subs.retain(|s| now.iter().any(|(i, _)| *i == s.inode));
            for (inode, path) in now {
                if tallies.by_netns.contains_key(&inode)
                    || tallies.refused.iter().any(|(i, _)| *i == inode)
                {
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
    use crate::ctnetlink::Entry;

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
        let mut t = NsTally::default();
        let t0 = Instant::now();
        t.on(Message::New(entry(1, 6, None)), t0);
        t.on(Message::New(entry(2, 17, None)), t0);
        t.on(
            Message::Destroy(entry(1, 6, Some(7))),
            t0 + Duration::from_millis(250),
        );
        t.on(
            Message::Destroy(entry(2, 17, None)),
            t0 + Duration::from_secs(30),
        );
        t.on(Message::Destroy(entry(3, 17, None)), t0);
        assert_eq!(t.new_total, 2);
        assert_eq!(t.new_by_src[&IpAddr::from([10, 0, 0, 1])], 2);
        assert_eq!(t.untracked, 1);
        assert_eq!(t.lifetimes.len(), 2);
        assert_eq!(t.lifetimes[0].end, End::TcpClosed);
        assert!((t.lifetimes[0].ms - 250.0).abs() < 1e-6);
        assert_eq!(t.lifetimes[1].end, End::Timeout);
        assert!(t.born.is_empty());
    }
}
