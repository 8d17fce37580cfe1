//! `loadgen client`: N flows, each a distinct 5-tuple (its own bound source port), so that no
//! tuple repeats and every flow is exactly one conntrack decision on the way to the server.

use std::io::{Read, Write};
use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ctscope_lab::LoadSummary;

use crate::sys;
use crate::{ClientArgs, Proto};

/// Most TCP flows: source ports 20000.. must stay distinct and below 65536.
const MAX_TCP_FLOWS: u32 = 40_000;
/// What each UDP datagram carries (the server discards it).
const PAYLOAD: &[u8] = b"ctscope-lab";

/// Maps a flow number to its (source port, destination port index): source ports run from the
/// base to 65535, then the next destination port is used with the same source ports again.
#[derive(Debug, Clone, Copy)]
struct FlowPlan {
    src_base: u16,
    per_dst: u32,
    dst_count: u32,
}

impl FlowPlan {
    fn new(src_base: u16, dst_count: u16) -> Result<FlowPlan> {
        if src_base == 0 {
            bail!("--src-port-base must be at least 1");
        }
        Ok(FlowPlan {
            src_base,
            per_dst: 65536 - u32::from(src_base),
            dst_count: u32::from(dst_count),
        })
    }

    fn capacity(&self) -> u64 {
        u64::from(self.per_dst) * u64::from(self.dst_count)
    }

    /// `None` past the capacity.
    fn flow(&self, i: u32) -> Option<(u16, u32)> {
        let dst = i / self.per_dst;
        if dst >= self.dst_count {
            return None;
        }
        let src = u32::from(self.src_base) + i % self.per_dst;
        Some((u16::try_from(src).ok()?, dst))
    }
}

/// When each flow may start: at once, or `rate` flows per second from the start.
#[derive(Debug, Clone, Copy)]
struct Pace {
    start: Instant,
    rate: Option<u32>,
}

impl Pace {
    fn new(start: Instant, rate: u32) -> Pace {
        Pace {
            start,
            rate: (rate > 0).then_some(rate),
        }
    }

    /// When flow `i` is due (the start itself when unpaced).
    fn due(&self, i: u32) -> Instant {
        match self.rate {
            None => self.start,
            Some(r) => {
                self.start + Duration::from_nanos(u64::from(i) * 1_000_000_000 / u64::from(r))
            }
        }
    }
}

/// Counters of a run, plus the first local error for the log.
#[derive(Debug, Default)]
struct Tally {
    send_errors: u64,
    connect_failures: u64,
    established: u64,
    first_error: Option<String>,
    /// UDP: datagrams per flow, the longest gap between two of one flow, and when the last
    /// round started (seconds after the client started).
    rounds: u64,
    max_refresh_gap_s: f64,
    last_round_start_s: f64,
}

impl Tally {
    fn send_error(&mut self, what: &str, err: &std::io::Error) {
        self.send_errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{what}: {err}"));
        }
    }
}

pub(crate) fn run(args: &ClientArgs) -> Result<()> {
    // Block the stop signals before any thread exists (see wait_for_release).
    let signals = if args.hold {
        Some(sys::StopSignals::block().context("blocking SIGINT/SIGTERM")?)
    } else {
        None
    };
    if args.flows == 0 {
        bail!("--flows must be at least 1");
    }
    if args.close && args.protocol != Proto::Tcp {
        bail!("--close is for TCP only");
    }
    if args.keepalive_s > 0 && args.protocol != Proto::Udp {
        bail!("--keepalive-s is for UDP only");
    }
    if args.keepalive_s > 0 && args.rate > 0 {
        bail!("--rate and --keepalive-s do not go together");
    }
    let start = Instant::now();
    let pace = Pace::new(start, args.rate);
    let (tally, kept) = match args.protocol {
        Proto::Udp => (udp(args, start, pace)?, Vec::new()),
        Proto::Tcp => tcp(args, pace)?,
    };
    let summary = LoadSummary {
        protocol: match args.protocol {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
        }
        .to_string(),
        flows: u64::from(args.flows),
        send_errors: tally.send_errors,
        connect_failures: tally.connect_failures,
        established: tally.established,
        elapsed_s: start.elapsed().as_secs_f64(),
        rounds: tally.rounds.max(1),
        max_refresh_gap_s: tally.max_refresh_gap_s,
        last_round_start_s: tally.last_round_start_s,
    };
    if let Some(e) = &tally.first_error {
        eprintln!("loadgen client: first local error: {e}");
    }
    let line = serde_json::to_string(&summary).context("encoding the summary")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").context("writing the summary")?;
    out.flush().context("flushing stdout")?;
    drop(out);

    if let Some(signals) = signals {
        wait_for_release(signals);
    }
    drop(kept);
    Ok(())
}

/// One datagram per flow, each from a fresh socket bound to the flow's own source port; with
/// --keepalive-s, the sockets stay open and every flow gets a datagram every interval.
fn udp(args: &ClientArgs, start: Instant, pace: Pace) -> Result<Tally> {
    let plan = FlowPlan::new(args.src_port_base, args.udp_port_count)?;
    if u64::from(args.flows) > plan.capacity() {
        bail!(
            "{} UDP flows do not fit: {} source ports from {} x {} destination ports = {}",
            args.flows,
            plan.per_dst,
            args.src_port_base,
            args.udp_port_count,
            plan.capacity()
        );
    }
    let keepalive = args.keepalive_s > 0;
    if keepalive && args.keepalive_interval_ms == 0 {
        bail!("--keepalive-interval-ms must be at least 1");
    }
    let needed = if keepalive {
        u64::from(args.flows) + 64
    } else {
        1024
    };
    let nofile = sys::raise_nofile(needed).context("raising RLIMIT_NOFILE")?;
    if nofile < needed {
        bail!("RLIMIT_NOFILE is {nofile}, {needed} descriptors are needed");
    }
    let mut tally = Tally::default();
    // Kept-alive flows: the socket and its destination.
    let mut live: Vec<(UdpSocket, SocketAddrV4)> = Vec::new();
    for i in 0..args.flows {
        let Some((src, dst_index)) = plan.flow(i) else {
            bail!("flow {i} is past the plan's capacity");
        };
        std::thread::sleep(pace.due(i).saturating_duration_since(Instant::now()));
        let dst_port = u32::from(args.udp_base_port) + dst_index;
        let Ok(dst_port) = u16::try_from(dst_port) else {
            bail!("UDP destination port {dst_port} is above 65535");
        };
        let fd = match sys::bound_socket(libc::SOCK_DGRAM, sys::any(src), false) {
            Ok(fd) => fd,
            Err(e) => {
                tally.send_error(&format!("udp bind :{src}"), &e);
                continue;
            }
        };
        let sock = UdpSocket::from(fd);
        let dst = SocketAddrV4::new(args.dst, dst_port);
        match sock.send_to(PAYLOAD, dst) {
            // A flow whose first datagram failed is not kept alive: a later datagram would
            // create its entry after all, and it is counted as never sent.
            Err(e) => tally.send_error(&format!("udp send :{src} -> :{dst_port}"), &e),
            Ok(_) if keepalive => live.push((sock, dst)),
            // Closing the socket sends nothing; the conntrack entry stays until it times out.
            Ok(_) => {}
        }
    }
    tally.rounds = 1;
    if !keepalive {
        return Ok(tally);
    }
    let interval = Duration::from_millis(u64::from(args.keepalive_interval_ms));
    let until = Instant::now() + Duration::from_secs(u64::from(args.keepalive_s));
    let mut prev_start = start;
    let mut refresh_errors = 0u64;
    loop {
        let next = prev_start + interval;
        if next >= until {
            break;
        }
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let round_start = Instant::now();
        for (sock, dst) in &live {
            if sock.send_to(PAYLOAD, *dst).is_err() {
                refresh_errors += 1;
            }
        }
        let end = Instant::now();
        // Every flow got a datagram in the previous round (after prev_start) and one in this
        // round (before end): no gap of one flow is longer than this.
        tally.max_refresh_gap_s = tally
            .max_refresh_gap_s
            .max((end - prev_start).as_secs_f64());
        tally.last_round_start_s = (round_start - start).as_secs_f64();
        tally.rounds += 1;
        prev_start = round_start;
    }
    if refresh_errors > 0 {
        eprintln!("loadgen client: {refresh_errors} keep-alive datagrams failed to send");
    }
    Ok(tally)
}

/// One connection per flow, at most `concurrency` in flight; established ones are kept open so
/// their conntrack entries stay ESTABLISHED + ASSURED (neither early_drop nor GC evicts those).
fn tcp(args: &ClientArgs, pace: Pace) -> Result<(Tally, Vec<OwnedFd>)> {
    let plan = FlowPlan::new(args.src_port_base, 1)?;
    let limit = u64::from(MAX_TCP_FLOWS).min(plan.capacity());
    if u64::from(args.flows) > limit {
        bail!(
            "{} TCP flows: at most {limit} from source port {}",
            args.flows,
            args.src_port_base
        );
    }
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let needed = u64::from(args.flows) + u64::from(args.concurrency) + 64;
    let nofile = sys::raise_nofile(needed).context("raising RLIMIT_NOFILE")?;
    if nofile < needed {
        bail!("RLIMIT_NOFILE is {nofile}, {needed} descriptors are needed");
    }
    let dst = SocketAddrV4::new(args.dst, args.tcp_port);
    let timeout = Duration::from_millis(u64::from(args.connect_timeout_ms));
    let mut tally = Tally::default();
    let mut kept: Vec<OwnedFd> = Vec::with_capacity(args.flows as usize);
    let mut inflight: Vec<(OwnedFd, Instant)> = Vec::new();
    let mut pollfds: Vec<libc::pollfd> = Vec::new();
    let mut next: u32 = 0;

    // Every pass either starts a connect, completes one, or waits (poll, or a sleep when none
    // is in flight) at most until the earliest deadline or the next flow's start, after which
    // that connect is given up or that flow started: the loop ends.
    while next < args.flows || !inflight.is_empty() {
        let now = Instant::now();
        while inflight.len() < args.concurrency as usize
            && next < args.flows
            && pace.due(next) <= now
        {
            let Some((src, _)) = plan.flow(next) else {
                bail!("flow {next} is past the plan's capacity");
            };
            next += 1;
            let fd = match sys::bound_socket(libc::SOCK_STREAM, sys::any(src), true) {
                Ok(fd) => fd,
                Err(e) => {
                    tally.send_error(&format!("tcp bind :{src}"), &e);
                    continue;
                }
            };
            match sys::start_connect(&fd, dst) {
                Ok(true) => {
                    tally.established += 1;
                    if !args.close {
                        kept.push(fd);
                    }
                }
                Ok(false) => inflight.push((fd, Instant::now() + timeout)),
                Err(e) => tally.send_error(&format!("tcp connect :{src}"), &e),
            }
        }
        // The next flow's start, when a connect slot is free for it.
        let due = (next < args.flows && inflight.len() < args.concurrency as usize)
            .then(|| pace.due(next));
        let now = Instant::now();
        if inflight.is_empty() {
            if let Some(at) = due {
                std::thread::sleep(at.saturating_duration_since(now));
            }
            continue;
        }
        let wait = inflight
            .iter()
            .map(|(_, deadline)| *deadline)
            .chain(due)
            .min()
            .map_or(Duration::ZERO, |at| at.saturating_duration_since(now));
        pollfds.clear();
        pollfds.extend(inflight.iter().map(|(fd, _)| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        }));
        match sys::poll(&mut pollfds, wait) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("poll"),
        }
        let now = Instant::now();
        // Walk backwards so swap_remove keeps pollfds[i] matched with inflight[i].
        for i in (0..inflight.len()).rev() {
            let revents = pollfds[i].revents;
            if revents != 0 {
                let (fd, _) = inflight.swap_remove(i);
                match sys::socket_error(fd.as_raw_fd()) {
                    Ok(0) => {
                        tally.established += 1;
                        // --close: dropping the socket closes the connection (FIN).
                        if !args.close {
                            kept.push(fd);
                        }
                    }
                    // Refused, reset or unreachable: the SYN went out, conntrack saw it.
                    Ok(_) | Err(_) => tally.connect_failures += 1,
                }
            } else if now >= inflight[i].1 {
                // Closing a SYN_SENT socket sends nothing, and 500 ms is before the first
                // SYN retransmission: this flow was exactly one SYN.
                drop(inflight.swap_remove(i));
                tally.connect_failures += 1;
            }
        }
    }
    Ok((tally, kept))
}

/// Blocks until SIGINT/SIGTERM or EOF on stdin, whichever comes first.
fn wait_for_release(signals: sys::StopSignals) {
    let (tx, rx) = mpsc::channel::<&'static str>();
    let tx_sig = tx.clone();
    let spawned_sig = std::thread::Builder::new()
        .name("signals".to_string())
        .spawn(move || {
            let why = match signals.wait() {
                Ok(libc::SIGINT) => "SIGINT",
                Ok(_) => "SIGTERM",
                Err(_) => "sigwait failed",
            };
            let _ = tx_sig.send(why);
        });
    let spawned_stdin = std::thread::Builder::new()
        .name("stdin".to_string())
        .spawn(move || {
            let mut sink = [0u8; 256];
            let mut stdin = std::io::stdin().lock();
            // Each read either returns data (the loop goes on), EOF (0) or an error: stdin
            // closing is the release signal, e.g. when the lab agent dies.
            while let Ok(n) = stdin.read(&mut sink) {
                if n == 0 {
                    break;
                }
            }
            let _ = tx.send("stdin closed");
        });
    if spawned_sig.is_err() || spawned_stdin.is_err() {
        eprintln!("loadgen client: cannot spawn the release threads; releasing now");
        return;
    }
    let why = rx.recv().unwrap_or("release channel closed");
    eprintln!("loadgen client: released ({why})");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paced_flows_are_evenly_spaced_from_the_start() {
        let start = Instant::now();
        let paced = Pace::new(start, 40);
        assert_eq!(paced.due(0), start);
        assert_eq!(paced.due(1) - start, Duration::from_millis(25));
        assert_eq!(paced.due(30_000) - start, Duration::from_secs(750));
        let unpaced = Pace::new(start, 0);
        assert_eq!(unpaced.due(39_999), start);
    }

    #[test]
    fn flow_plan_gives_distinct_tuples() {
        let plan = FlowPlan::new(20000, 2).expect("plan");
        assert_eq!(plan.capacity(), 2 * 45536);
        assert_eq!(plan.flow(0), Some((20000, 0)));
        assert_eq!(plan.flow(45535), Some((65535, 0)));
        assert_eq!(plan.flow(45536), Some((20000, 1)));
        assert_eq!(plan.flow(2 * 45536), None);
        let mut seen = std::collections::HashSet::new();
        for i in 0..plan.capacity() as u32 {
            assert!(seen.insert(plan.flow(i).expect("in capacity")));
        }
        assert!(FlowPlan::new(0, 1).is_err());
    }
}
