//! Thin wrappers over the few system calls std does not offer: sockets bound to an explicit source
//! port before a non-blocking connect, a listen backlog of our choice, poll, rlimits and signals.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn sockaddr_in(addr: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain old data; all-zero is a valid value that we then fill in.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = addr.port().to_be();
    sa.sin_addr = libc::in_addr {
        s_addr: u32::from(*addr.ip()).to_be(),
    };
    sa
}

/// A socket of `kind` (SOCK_DGRAM / SOCK_STREAM) with SO_REUSEADDR, bound to `local`.
/// `nonblocking` makes a later connect return EINPROGRESS instead of waiting.
pub(crate) fn bound_socket(
    kind: libc::c_int,
    local: SocketAddrV4,
    nonblocking: bool,
) -> io::Result<OwnedFd> {
    let flags = libc::SOCK_CLOEXEC | if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
    // SAFETY: socket() takes no pointers; a non-negative return is a new descriptor we own.
    let fd = cvt(unsafe { libc::socket(libc::AF_INET, kind | flags, 0) })?;
    // SAFETY: fd was just returned by socket() and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: the option value points to a live c_int and its exact size is passed.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    let sa = sockaddr_in(local);
    // SAFETY: sa is a valid sockaddr_in that outlives the call; its exact size is passed.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const sa).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })?;
    Ok(fd)
}

/// Starts a connect on a non-blocking socket. `Ok(true)`: connected at once; `Ok(false)`: in
/// progress (EINPROGRESS); `Err`: the connect failed locally.
pub(crate) fn start_connect(fd: &OwnedFd, remote: SocketAddrV4) -> io::Result<bool> {
    let sa = sockaddr_in(remote);
    // SAFETY: sa is a valid sockaddr_in that outlives the call; its exact size is passed.
    let ret = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&raw const sa).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if ret == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EINPROGRESS) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// The pending error of a socket (SO_ERROR): 0 once a non-blocking connect succeeded.
pub(crate) fn socket_error(fd: RawFd) -> io::Result<i32> {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: err and len are live locals; len holds err's exact size.
    cvt(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&raw mut err).cast(),
            &raw mut len,
        )
    })?;
    Ok(err)
}

/// `listen()` with an explicit backlog (std always uses its own).
pub(crate) fn listen(fd: &OwnedFd, backlog: i32) -> io::Result<()> {
    // SAFETY: listen() takes no pointers; fd is a live socket.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) }).map(|_| ())
}

/// Waits until one of `fds` is ready or `timeout` passes; fills in `revents`.
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout: Duration) -> io::Result<usize> {
    // Rounded up: a wait of less than 1 ms must not become a busy loop of 0 ms polls.
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
    // SAFETY: the pointer and length describe a live, exclusively borrowed slice of pollfd.
    let n = cvt(unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) })?;
    Ok(n as usize)
}

/// An epoll instance: the server watches its listener and every held connection with it, so
/// that it notices a client's close among thousands of idle connections at no cost.
pub(crate) struct Epoll(OwnedFd);

impl Epoll {
    pub(crate) fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1() takes no pointers; a non-negative return is a new descriptor.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: fd was just returned by epoll_create1() and is owned by nothing else.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Watches `fd` for `events`, tagged with `fd` itself.
    pub(crate) fn add(&self, fd: RawFd, events: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events,
            u64: fd as u64,
        };
        // SAFETY: ev is a live epoll_event for the duration of the call.
        cvt(unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &raw mut ev) })
            .map(|_| ())
    }

    /// Waits for events (EINTR is returned as an error of kind Interrupted); returns the tags
    /// and events of the ready descriptors.
    pub(crate) fn wait(&self, buf: &mut [libc::epoll_event]) -> io::Result<Vec<(RawFd, u32)>> {
        let max = buf.len().min(i32::MAX as usize) as libc::c_int;
        // SAFETY: the pointer and length describe a live, exclusively borrowed slice.
        let n = cvt(unsafe { libc::epoll_wait(self.0.as_raw_fd(), buf.as_mut_ptr(), max, -1) })?;
        Ok(buf[..n as usize]
            .iter()
            .map(|e| (e.u64 as RawFd, e.events))
            .collect())
    }
}

/// Raises RLIMIT_NOFILE so that `needed` descriptors fit (the hard limit too, which root may do).
/// Returns the soft limit in force afterwards.
pub(crate) fn raise_nofile(needed: u64) -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a live rlimit the kernel fills in.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) })?;
    if lim.rlim_cur >= needed {
        return Ok(lim.rlim_cur);
    }
    let want = libc::rlimit {
        rlim_cur: needed,
        rlim_max: lim.rlim_max.max(needed),
    };
    // SAFETY: want is a live, initialised rlimit.
    if cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const want) }).is_ok() {
        return Ok(needed);
    }
    // Not allowed to raise the hard limit: take as much as it allows.
    let capped = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: capped is a live, initialised rlimit.
    cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const capped) })?;
    Ok(lim.rlim_max)
}

/// SIGINT and SIGTERM, blocked in the calling thread (and every thread it spawns afterwards), so
/// that [`wait_for_signal`] can take them synchronously.
pub(crate) struct StopSignals(libc::sigset_t);

impl StopSignals {
    /// Call before spawning any thread.
    pub(crate) fn block() -> io::Result<StopSignals> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before any other use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: set is a live sigset_t; SIGINT/SIGTERM are valid signal numbers.
        unsafe {
            libc::sigemptyset(&raw mut set);
            libc::sigaddset(&raw mut set, libc::SIGINT);
            libc::sigaddset(&raw mut set, libc::SIGTERM);
        }
        // SAFETY: set is initialised; a null old-set pointer is allowed.
        let rc =
            unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(StopSignals(set))
    }

    /// Blocks until SIGINT or SIGTERM arrives; returns its number.
    pub(crate) fn wait(&self) -> io::Result<i32> {
        let mut sig: libc::c_int = 0;
        // SAFETY: self.0 is an initialised sigset_t and sig a live c_int.
        let rc = unsafe { libc::sigwait(&raw const self.0, &raw mut sig) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(sig)
    }
}

/// Parses `9000-9001` or `9000` into an inclusive port range.
pub(crate) fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (a, b),
        None => (s, s),
    };
    let a: u16 = a
        .trim()
        .parse()
        .map_err(|e| format!("bad port {a:?}: {e}"))?;
    let b: u16 = b
        .trim()
        .parse()
        .map_err(|e| format!("bad port {b:?}: {e}"))?;
    if a == 0 || b < a {
        return Err(format!(
            "bad port range {s:?}: want LOW-HIGH with 0 < LOW <= HIGH"
        ));
    }
    Ok((a, b))
}

/// The unspecified address with `port`, for binding.
pub(crate) fn any(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("9000-9001"), Ok((9000, 9001)));
        assert_eq!(parse_port_range("9100"), Ok((9100, 9100)));
        assert!(parse_port_range("9001-9000").is_err());
        assert!(parse_port_range("0-5").is_err());
        assert!(parse_port_range("x").is_err());
    }
}
