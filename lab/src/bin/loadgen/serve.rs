//! `loadgen serve`: UDP sinks and a TCP acceptor that keeps every connection open until the
//! client closes it (then it closes its side too, like any server: a client that closes its
//! connection sees it go through FIN_WAIT .. TIME_WAIT, not hang in CLOSE_WAIT).

use std::collections::HashMap;
use std::io::Read;
use std::net::{SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::ServeArgs;
use crate::sys;

/// Descriptors the server may need: one per held connection (up to 40000 per client container,
/// several containers), plus the listeners.
const NOFILE_WANTED: u64 = 1 << 20;

pub(crate) fn run(args: &ServeArgs) -> Result<()> {
    // Before any thread exists, so that every thread inherits the blocked mask and only the
    // main thread's sigwait takes SIGINT/SIGTERM.
    let signals = sys::StopSignals::block().context("blocking SIGINT/SIGTERM")?;
    let nofile = sys::raise_nofile(NOFILE_WANTED).context("raising RLIMIT_NOFILE")?;

    let datagrams = Arc::new(AtomicU64::new(0));
    let (first, last) = args.udp_ports;
    for port in first..=last {
        let sock = UdpSocket::bind(SocketAddrV4::new(args.addr, port))
            .with_context(|| format!("binding UDP {}:{port}", args.addr))?;
        let count = Arc::clone(&datagrams);
        std::thread::Builder::new()
            .name(format!("udp-{port}"))
            .spawn(move || udp_sink(&sock, &count))
            .context("spawning a UDP thread")?;
    }

    let fd = sys::bound_socket(
        libc::SOCK_STREAM,
        SocketAddrV4::new(args.addr, args.tcp_port),
        false,
    )
    .with_context(|| format!("binding TCP {}:{}", args.addr, args.tcp_port))?;
    sys::listen(&fd, args.backlog).context("listen")?;
    let listener = TcpListener::from(fd);
    listener
        .set_nonblocking(true)
        .context("making the listener non-blocking")?;
    let epoll = sys::Epoll::new().context("epoll_create1")?;
    epoll
        .add(listener.as_raw_fd(), libc::EPOLLIN as u32)
        .context("epoll_ctl(listener)")?;
    let accepted = Arc::new(AtomicU64::new(0));
    let acc = Arc::clone(&accepted);
    std::thread::Builder::new()
        .name("tcp-accept".to_string())
        .spawn(move || accept_and_hold(&listener, &epoll, &acc))
        .context("spawning the TCP thread")?;

    eprintln!(
        "loadgen serve: udp {}:{first}-{last}, tcp {}:{} (backlog {}), nofile {nofile}",
        args.addr, args.addr, args.tcp_port, args.backlog
    );
    let sig = signals.wait().context("waiting for SIGINT/SIGTERM")?;
    eprintln!(
        "loadgen serve: signal {sig}: {} datagrams, {} connections accepted; exiting",
        datagrams.load(Ordering::Relaxed),
        accepted.load(Ordering::Relaxed)
    );
    // Exiting the process closes the held connections; the threads block in recv/accept.
    std::process::exit(0);
}

/// Reads and discards datagrams until the process exits.
fn udp_sink(sock: &UdpSocket, count: &AtomicU64) {
    let mut buf = [0u8; 2048];
    loop {
        match sock.recv(&mut buf) {
            Ok(_) => {
                count.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("loadgen serve: udp recv: {e}; this port stops reading");
                return;
            }
        }
    }
}

/// Accepts connections and keeps them (so they stay ESTABLISHED) until the client closes its
/// side, then closes them: the connection ends normally (FIN both ways).
fn accept_and_hold(listener: &TcpListener, epoll: &sys::Epoll, count: &AtomicU64) {
    let mut held: HashMap<i32, TcpStream> = HashMap::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut sink = [0u8; 512];
    let mut reported_error = false;
    let lfd = listener.as_raw_fd();
    let watch = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
    loop {
        let ready = match epoll.wait(&mut events) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("loadgen serve: epoll_wait: {e}; the TCP server stops");
                return;
            }
        };
        for (fd, _) in ready {
            if fd == lfd {
                loop {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let sfd = stream.as_raw_fd();
                            if let Err(e) = epoll.add(sfd, watch) {
                                // Unwatched, it is still held: it just never closes early.
                                eprintln!("loadgen serve: epoll_ctl(conn): {e}");
                            }
                            held.insert(sfd, stream);
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            // EMFILE and friends: report once, back off, keep serving.
                            if !reported_error {
                                eprintln!(
                                    "loadgen serve: accept: {e} (holding {} connections)",
                                    held.len()
                                );
                                reported_error = true;
                            }
                            std::thread::sleep(Duration::from_millis(50));
                            break;
                        }
                    }
                }
                continue;
            }
            // A held connection is readable: data (discarded), EOF or an error. Accepted
            // sockets are blocking, but epoll said a read will not block.
            let closed = match held.get_mut(&fd) {
                Some(stream) => match stream.read(&mut sink) {
                    Ok(n) => n == 0,
                    Err(e) => !matches!(
                        e.kind(),
                        std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                    ),
                },
                None => false,
            };
            if closed {
                // Dropping the stream closes it (and removes it from the epoll set).
                held.remove(&fd);
            }
        }
    }
}
