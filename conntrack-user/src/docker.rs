//! A minimal Docker Engine API client: HTTP/1.0 GET over the Unix socket.
//!
//! ctscope needs two read-only calls (`GET /containers/json`, `GET
//! /containers/<id>/json`), so a hand-written request beats an HTTP stack:
//! HTTP/1.0 makes the daemon answer without chunked encoding and close the
//! connection, so the body is everything after the header block.

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use thiserror::Error;

pub const SOCKET: &str = "/var/run/docker.sock";
/// Where the daemon keeps each container's configuration (the fallback when
/// the API does not answer).
pub const CONTAINERS_DIR: &str = "/var/lib/docker/containers";

/// Short: the daemon answers these in milliseconds, and a wedged daemon must
/// not hold up the start of a run.
const TIMEOUT: Duration = Duration::from_millis(1500);
/// A generous bound on one answer (a host with thousands of containers).
const MAX_BODY: u64 = 64 << 20;

#[derive(Debug, Error)]
pub enum DockerError {
    #[error("docker socket {SOCKET}: {0}")]
    Io(#[from] std::io::Error),
    #[error("docker API GET {path}: HTTP status {status}")]
    Status { path: String, status: u16 },
    #[error("docker API GET {path}: malformed answer: {why}")]
    Malformed { path: String, why: String },
}

/// `GET path` on the Engine API, parsed as JSON.
pub fn get(path: &str) -> Result<serde_json::Value, DockerError> {
    get_from(Path::new(SOCKET), path)
}

pub fn get_from(socket: &Path, path: &str) -> Result<serde_json::Value, DockerError> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n").as_bytes())?;
    let mut raw = Vec::new();
    s.take(MAX_BODY).read_to_end(&mut raw)?;
    parse_response(path, &raw)
}

pub fn parse_response(path: &str, raw: &[u8]) -> Result<serde_json::Value, DockerError> {
    let malformed = |why: &str| DockerError::Malformed {
        path: path.to_string(),
        why: why.to_string(),
    };
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

/// A container's `config.v2.json` from the daemon's state directory.
pub fn config_v2(id: &str) -> Option<serde_json::Value> {
    let text = std::fs::read(Path::new(CONTAINERS_DIR).join(id).join("config.v2.json")).ok()?;
    serde_json::from_slice(&text).ok()
}

/// A container's name without the leading `/`: the API first, then the
/// daemon's state directory.
pub fn container_name(id: &str) -> Option<String> {
    let v = get(&format!("/containers/{id}/json"))
        .ok()
        .or_else(|| config_v2(id))?;
    v.get("Name")?
        .as_str()
        .map(|n| n.trim_start_matches('/').to_string())
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
}
