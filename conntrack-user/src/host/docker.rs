//! A minimal Docker Engine API client: HTTP/1.0 GET over the Unix socket.
//!
//! ctscope needs two read-only calls (`GET /containers/json`, `GET
//! /containers/<id>/json`), so a hand-written request beats an HTTP stack:
//! HTTP/1.0 makes the daemon answer without chunked encoding and close the
//! connection, so the body is everything after the header block.
//!
//! The daemon is outside input, and a wedged or hostile one must never hold a
//! run: every request has a connect timeout and a total deadline (a byte a
//! second defeats per-read timeouts), runs on a thread of its own that the
//! caller waits for no longer than that deadline, and its answer is capped.
//! After a failure the API is not asked again for [`BACKOFF`]; names are
//! cached, one lookup per container id.
//!
//! The socket is `/var/run/docker.sock`, or the one `DOCKER_HOST=unix:///PATH`
//! names (Docker's own variable; other schemes such as `tcp://` are not
//! spoken, and then only the daemon's state directory is read).

use std::{
    collections::HashMap,
    io::{self, Read as _},
    os::{
        fd::{AsFd as _, AsRawFd as _, OwnedFd},
        unix::net::UnixStream,
    },
    path::{Path, PathBuf},
    sync::{Mutex, mpsc},
    time::{Duration, Instant},
};

use nix::{
    poll::{PollFd, PollFlags, PollTimeout},
    sys::socket::{self as sock, AddressFamily, SockFlag, SockType, UnixAddr},
};
use thiserror::Error;

pub const SOCKET: &str = "/var/run/docker.sock";
/// Where the daemon keeps each container's configuration.
pub const CONTAINERS_DIR: &str = "/var/lib/docker/containers";

/// The daemon accepts in microseconds; a full backlog must not hold up a run.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Everything one request may take, connect included. The daemon answers
/// these in milliseconds; a wedged daemon costs a run at most this, once per
/// [`BACKOFF`].
pub const DEADLINE: Duration = Duration::from_secs(2);
/// After a failed request the API is not asked again for this long (the
/// state directory answers meanwhile).
pub const BACKOFF: Duration = Duration::from_mins(1);
/// The largest answer read: 4 MiB. `GET /containers/json` took 819 bytes
/// per container here (Docker 20.10, one network, no labels or mounts);
/// Compose's or Kubernetes' labels and a few mounts bring that to a few
/// KiB, so this holds over 1,000 containers even at 4 KiB each, past the
/// densest hosts (Kubernetes' default is 110 pods a node). Parsed into a
/// `serde_json::Value` an answer costs about 16 times its size (the former
/// 64 MiB cap cost about 1 GB), so at most some 64 MiB now. A larger answer
/// is refused and the daemon's state directory (read per container)
/// answers instead.
pub const MAX_ANSWER: usize = 4 << 20;
/// The largest `config.v2.json` read (they are a few KiB).
const MAX_CONFIG: u64 = 1 << 20;
/// Names cached at most (one per container id; a bounded map).
const NAME_CACHE: usize = 4096;

#[derive(Debug, Error)]
pub enum DockerError {
    #[error("docker socket {socket}: {error}")]
    Io { socket: String, error: io::Error },
    #[error("docker socket {socket}: no {what} within {} ms", .after.as_millis())]
    Timeout {
        socket: String,
        what: &'static str,
        after: Duration,
    },
    #[error("docker API GET {path}: the answer is larger than {MAX_ANSWER} bytes")]
    TooLarge { path: String },
    #[error("docker API GET {path}: HTTP status {status}")]
    Status { path: String, status: u16 },
    #[error("docker API GET {path}: malformed answer: {why}")]
    Malformed { path: String, why: String },
    #[error("docker API not asked: {0}")]
    Unavailable(String),
}

/// The Engine API socket: `DOCKER_HOST=unix:///PATH`, else [`SOCKET`].
pub fn socket_path() -> Result<PathBuf, DockerError> {
    match std::env::var_os("DOCKER_HOST") {
        None => Ok(PathBuf::from(SOCKET)),
        Some(v) => {
            let v = v.to_string_lossy();
            match v.strip_prefix("unix://") {
                Some(p) if p.starts_with('/') => Ok(PathBuf::from(p)),
                _ => Err(DockerError::Unavailable(format!(
                    "DOCKER_HOST={:?} is not a unix:///PATH socket (the only kind ctscope speaks)",
                    v.chars().take(200).collect::<String>()
                ))),
            }
        }
    }
}

/// When the last request failed, and why (see [`BACKOFF`]).
static LAST_FAILURE: Mutex<Option<(Instant, String)>> = Mutex::new(None);

/// `GET path` on the Engine API, parsed as JSON, within [`DEADLINE`]: the
/// request runs on a thread of its own, so a caller on the async runtime's
/// thread waits no longer than that.
pub fn get(path: &str) -> Result<serde_json::Value, DockerError> {
    if let Ok(g) = LAST_FAILURE.lock()
        && let Some((at, why)) = g.as_ref()
        && at.elapsed() < BACKOFF
    {
        return Err(DockerError::Unavailable(format!(
            "it failed {:.0} s ago ({why})",
            at.elapsed().as_secs_f64()
        )));
    }
    let socket = socket_path()?;
    let (tx, rx) = mpsc::sync_channel(1);
    let owned = path.to_string();
    let sock = socket.clone();
    let spawned = std::thread::Builder::new()
        .name("docker-api".into())
        .spawn(move || {
            let _ = tx.send(get_within(&sock, &owned, CONNECT_TIMEOUT, DEADLINE));
        });
    let got = match spawned {
        // The request keeps its own deadline; this wait is the guard that
        // holds even if it did not.
        Ok(_) => rx
            .recv_timeout(DEADLINE + Duration::from_millis(250))
            .unwrap_or_else(|_| {
                Err(DockerError::Timeout {
                    socket: socket.display().to_string(),
                    what: "answer",
                    after: DEADLINE,
                })
            }),
        Err(error) => Err(DockerError::Io {
            socket: socket.display().to_string(),
            error,
        }),
    };
    // A 404 is an answer (a container gone since); anything else means the
    // API is not worth asking for a while.
    if let Err(e) = &got
        && !matches!(e, DockerError::Status { .. })
        && let Ok(mut g) = LAST_FAILURE.lock()
    {
        *g = Some((Instant::now(), e.to_string()));
    }
    got
}

/// `GET path` on the socket at `socket` with the default timeouts, on the
/// caller's thread.
pub fn get_from(socket: &Path, path: &str) -> Result<serde_json::Value, DockerError> {
    get_within(socket, path, CONNECT_TIMEOUT, DEADLINE)
}

/// `GET path` on the caller's thread: connected within `connect`, answered
/// completely within `total` of the call (both bounded whatever the peer
/// does), at most [`MAX_ANSWER`] bytes.
pub fn get_within(
    socket: &Path,
    path: &str,
    connect: Duration,
    total: Duration,
) -> Result<serde_json::Value, DockerError> {
    let t0 = Instant::now();
    let deadline = t0 + total;
    let name = socket.display().to_string();
    let io_err = |error: io::Error| DockerError::Io {
        socket: name.clone(),
        error,
    };
    let timeout = |what: &'static str, after: Duration| DockerError::Timeout {
        socket: name.clone(),
        what,
        after,
    };
    let fd = connect_unix(socket, t0 + connect.min(total)).map_err(|e| match e.kind() {
        io::ErrorKind::TimedOut => timeout("connection", connect.min(total)),
        _ => io_err(e),
    })?;
    let mut s = UnixStream::from(fd);
    let request = format!("GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n");
    let mut sent = 0;
    while sent < request.len() {
        match io::Write::write(&mut s, &request.as_bytes()[sent..]) {
            Ok(0) => return Err(io_err(io::ErrorKind::WriteZero.into())),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait(&s, PollFlags::POLLOUT, deadline)
                    .map_err(|()| timeout("request sent", total))?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(e)),
        }
    }
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if raw.len() + n > MAX_ANSWER {
                    return Err(DockerError::TooLarge {
                        path: path.to_string(),
                    });
                }
                raw.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait(&s, PollFlags::POLLIN, deadline)
                    .map_err(|()| timeout("complete answer", total))?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(e)),
        }
    }
    parse_response(path, &raw)
}

/// Waits for `events` on `s` until `deadline`; `Err` once it has passed.
fn wait(s: &UnixStream, events: PollFlags, deadline: Instant) -> Result<(), ()> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(());
        }
        let mut p = [PollFd::new(s.as_fd(), events)];
        // Rounded up a millisecond so that the wait never ends just before
        // the deadline; at most i32::MAX ms, poll's limit.
        let ms =
            PollTimeout::try_from(left.as_millis().saturating_add(1)).unwrap_or(PollTimeout::MAX);
        match nix::poll::poll(&mut p, ms) {
            // Readable, writable, or an error/hang-up the next call reports.
            Ok(n) if n > 0 => return Ok(()),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return Err(()),
        }
    }
}

/// A non-blocking stream socket connected to `path` by `by`. A Unix socket
/// whose listener's backlog is full refuses a non-blocking connect with
/// EAGAIN (unix_stream_connect, net/unix/af_unix.c, v5.10..v6.18) and has no
/// completion to poll for, so the connect is retried until `by`.
fn connect_unix(path: &Path, by: Instant) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt as _;
    /// sun_path's size (108 on Linux): sockaddr_un is the family and then it.
    const SUN_PATH_LEN: usize = std::mem::size_of::<libc::sockaddr_un>()
        - std::mem::offset_of!(libc::sockaddr_un, sun_path);
    let bytes = path.as_os_str().as_bytes();
    // Room for the terminating NUL in sun_path. Empty: nix's address would
    // be the bare family, which the kernel refuses with EINVAL; the old
    // all-zero sun_path named an abstract socket no one binds. Neither is a
    // path: refused here, with the same error as the other two.
    if bytes.is_empty() || bytes.len() >= SUN_PATH_LEN || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long or not a path",
        ));
    }
    let addr = UnixAddr::new(path)?;
    let fd = sock::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    loop {
        let e = match sock::connect(fd.as_raw_fd(), &addr) {
            Ok(()) => return Ok(fd),
            Err(e) => io::Error::from(e),
        };
        match e.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EAGAIN | libc::EINPROGRESS | libc::EALREADY) => {
                if Instant::now() >= by {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            // EISCONN: an earlier attempt completed meanwhile.
            Some(libc::EISCONN) => return Ok(fd),
            _ => return Err(e),
        }
    }
}

/// Parses one raw HTTP/1.0 answer of the Engine API: the status must be 200
/// and the body JSON. `raw` is outside input of any content.
pub fn parse_response(path: &str, raw: &[u8]) -> Result<serde_json::Value, DockerError> {
    let malformed = |why: &str| DockerError::Malformed {
        path: path.to_string(),
        why: why.to_string(),
    };
    if raw.len() > MAX_ANSWER {
        return Err(DockerError::TooLarge {
            path: path.to_string(),
        });
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| malformed("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status: u16 = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| malformed("no status line"))?;
    if status != 200 {
        return Err(DockerError::Status {
            path: path.to_string(),
            status,
        });
    }
    // serde_json's own recursion limit (128) bounds the nesting.
    serde_json::from_slice(&raw[split + 4..]).map_err(|e| malformed(&e.to_string()))
}

/// Whether `s` is a full container id (64 lowercase hex digits).
pub fn is_full_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The container id in one `/proc/PID/cgroup` text, if the process runs in a
/// Docker container: `.../docker-<id>.scope` (systemd cgroup driver) or
/// `.../docker/<id>` (cgroupfs driver).
pub fn container_id_from_cgroup(text: &str) -> Option<String> {
    for line in text.lines() {
        let path = line.splitn(3, ':').nth(2).unwrap_or(line);
        for part in path.split('/') {
            if let Some(id) = part
                .strip_prefix("docker-")
                .and_then(|p| p.strip_suffix(".scope"))
                .filter(|id| is_full_id(id))
            {
                return Some(id.to_string());
            }
        }
        let parts: Vec<&str> = path.split('/').collect();
        for w in parts.windows(2) {
            if w[0] == "docker" && is_full_id(w[1]) {
                return Some(w[1].to_string());
            }
        }
    }
    None
}

/// A container's `config.v2.json` from the daemon's state directory (at
/// most [`MAX_CONFIG`] bytes read).
pub fn config_v2(id: &str) -> Option<serde_json::Value> {
    if !is_full_id(id) {
        return None;
    }
    let f = std::fs::File::open(Path::new(CONTAINERS_DIR).join(id).join("config.v2.json")).ok()?;
    let mut text = Vec::new();
    f.take(MAX_CONFIG + 1).read_to_end(&mut text).ok()?;
    if text.len() as u64 > MAX_CONFIG {
        return None;
    }
    serde_json::from_slice(&text).ok()
}

/// Container names by id, for the whole run (bounded by [`NAME_CACHE`]).
static NAMES: Mutex<Option<HashMap<String, String>>> = Mutex::new(None);

/// A container's name without the leading `/`, escaped
/// ([`crate::text::name`]: whoever can talk to the daemon chooses it, and it
/// is printed): cached, else the daemon's
/// state directory (a local file, the same `Name` the API gives, no round
/// trip to a daemon that may be wedged), else the API (bounded, see [`get`]).
pub fn container_name(id: &str) -> Option<String> {
    if let Ok(g) = NAMES.lock()
        && let Some(n) = g.as_ref().and_then(|m| m.get(id))
    {
        return Some(n.clone());
    }
    let name = |v: serde_json::Value| {
        v.get("Name")?
            .as_str()
            .map(|n| crate::text::name(n.trim_start_matches('/')))
    };
    let found = config_v2(id)
        .and_then(name)
        .or_else(|| get(&format!("/containers/{id}/json")).ok().and_then(name))?;
    if let Ok(mut g) = NAMES.lock() {
        let m = g.get_or_insert_with(HashMap::new);
        if m.len() >= NAME_CACHE
            && let Some(k) = m.keys().next().cloned()
        {
            m.remove(&k);
        }
        m.insert(id.to_string(), found.clone());
    }
    Some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899";

    #[test]
    fn finds_ids_under_both_cgroup_drivers() {
        let systemd = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(container_id_from_cgroup(&systemd).as_deref(), Some(ID));
        let cgroupfs = format!("12:pids:/docker/{ID}\n0::/docker/{ID}\n");
        assert_eq!(container_id_from_cgroup(&cgroupfs).as_deref(), Some(ID));
        assert_eq!(
            container_id_from_cgroup("0::/user.slice/session-1.scope\n"),
            None
        );
        assert_eq!(container_id_from_cgroup("0::/docker/abc\n"), None);
    }

    #[test]
    fn parses_http_answers() {
        let ok = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"Name\":\"/web\"}";
        assert_eq!(parse_response("/x", ok).expect("ok")["Name"], "/web");
        let missing = b"HTTP/1.0 404 Not Found\r\n\r\n{\"message\":\"no such container\"}";
        assert!(matches!(
            parse_response("/x", missing),
            Err(DockerError::Status { status: 404, .. })
        ));
        assert!(parse_response("/x", b"garbage").is_err());
    }

    /// The socket path end to end (socket, connect, poll for the answer),
    /// against a listener of our own on a path in the temp directory.
    #[test]
    fn gets_an_answer_over_a_unix_socket() {
        use std::{io::Write as _, os::unix::net::UnixListener};
        let dir = std::env::temp_dir().join(format!("ctscope-docker-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let path = dir.join("docker.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let server = std::thread::spawn(move || {
            let (mut c, _) = listener.accept().expect("accept");
            let mut req = [0u8; 256];
            let _ = c.read(&mut req).expect("request");
            c.write_all(b"HTTP/1.0 200 OK\r\n\r\n{\"Name\":\"/web\"}")
                .expect("answer");
        });
        let got = get_from(&path, "/x").expect("answer");
        assert_eq!(got["Name"], "/web");
        server.join().expect("server");
        let e = connect_unix(Path::new(""), Instant::now()).expect_err("empty path");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let long = Path::new("/").join("x".repeat(200));
        let e = connect_unix(&long, Instant::now()).expect_err("too long");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
