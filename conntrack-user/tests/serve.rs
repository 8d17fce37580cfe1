//! `ctscope serve` against a real Prometheus server (Debian's `prometheus`
//! package; `cargo xtask setup` installs it), on the host in procfs mode.
//!
//! A private namespace (conntrack on through an nft `ct` rule) holds a known
//! number of UDP entries; Prometheus scrapes ctscope every second; the
//! test asks Prometheus's HTTP API for that namespace's series and compares
//! it with the kernel's own count in that namespace. `promtool check
//! metrics` lints the classic text format, and SIGTERM must end serve
//! within 2 s.

mod common;

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{NamedNetns, count_in, send_flows, skip};
use conntrack_user::host::kernel;

const TRACK_OUT: &str = "table ip ctscope_track {\n chain out {\n  type filter hook output priority 0; policy accept;\n  ct state new counter\n }\n}\n";

/// Flows the namespace sends: one entry each.
const FLOWS: u16 = 300;

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    l.local_addr().expect("addr").port()
}

/// GET `path` from 127.0.0.1:`port` (HTTP/1.0, the body read to the end):
/// the status code and the body.
fn get(port: u16, path: &str, accept: Option<&str>) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n{accept}\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Percent-encodes a PromQL query for a URL.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of an instant query's only sample, if there is one.
fn query(port: u16, q: &str) -> Option<f64> {
    let (status, body) = get(port, &format!("/api/v1/query?query={}", encode(q)), None).ok()?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let result = v.pointer("/data/result")?.as_array()?;
    if result.len() != 1 {
        return None;
    }
    result[0].pointer("/value/1")?.as_str()?.parse().ok()
}

fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn prometheus_scrapes_serve_and_sees_the_kernels_count_per_namespace() {
    if !kernel::is_root() {
        return skip("needs root (network namespaces, nftables, setns)");
    }
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        return skip("no prometheus binary (cargo xtask setup installs Debian's prometheus)");
    }
    let ns = NamedNetns::new(&format!("ctsv-{}", std::process::id()));
    // Entries stay for the whole test: nothing expires under it.
    ns.exec(&[
        "sysctl",
        "-qw",
        "net.netfilter.nf_conntrack_udp_timeout=600",
    ]);
    ns.nft(TRACK_OUT);
    let sent = send_flows(&ns.path(), Ipv4Addr::LOCALHOST, 31_000, FLOWS);
    assert_eq!(sent, u64::from(FLOWS));
    let kernel_count = count_in(&ns.path());
    assert!(
        kernel_count >= u64::from(FLOWS),
        "kernel count {kernel_count}"
    );

    let port = free_port();
    let serve = Proc(
        Command::new(env!("CARGO_BIN_EXE_ctscope"))
            .args(["serve", "--mode", "procfs", "--interval", "1s", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .spawn()
            .expect("start ctscope serve"),
    );
    wait_for("serve's /healthz", Duration::from_secs(30), || {
        get(port, "/healthz", None).ok().filter(|(s, _)| *s == 200)
    });

    // The classic text format passes Prometheus's own linter.
    let (status, classic) = get(port, "/metrics", None).expect("scrape");
    assert_eq!(status, 200);
    let dir = std::env::temp_dir().join(format!("ctscope-prom-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("mkdir");
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    lint.stdin
        .take()
        .expect("stdin")
        .write_all(classic.as_bytes())
        .expect("feed promtool");
    let out = lint.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{classic}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let prom_port = free_port();
    let config = dir.join("prometheus.yml");
    fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: ctscope\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ),
    )
    .expect("write config");
    let _prom = Proc(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("prometheus.log")).expect("log file"))
            .spawn()
            .expect("start prometheus"),
    );
    let up = wait_for(
        "Prometheus scraping ctscope",
        Duration::from_mins(1),
        || query(prom_port, "up{job=\"ctscope\"}").filter(|v| *v == 1.0),
    );
    let series = format!(
        "ctscope_netns_conntrack_entries{{job=\"ctscope\",name=\"{}\",netns_inode=\"{}\",kind=\"netns\"}}",
        ns.name,
        ns.inode()
    );
    let seen = wait_for("the namespace's series", Duration::from_secs(30), || {
        query(prom_port, &series)
    });
    let kernel_now = count_in(&ns.path());
    println!(
        "Prometheus: up {up}; {series} = {seen}; the kernel's nf_conntrack_count there: {kernel_now}"
    );
    assert_eq!(
        seen as u64, kernel_now,
        "Prometheus's value against the kernel's count"
    );
    // The mode is said in a metric, and the table's series are there.
    assert_eq!(query(prom_port, "ctscope_probes_attached"), Some(0.0));
    assert!(query(prom_port, "ctscope_conntrack_entries_limit").is_some_and(|v| v > 0.0));
    assert!(
        query(prom_port, "ctscope_build_info{mode=\"procfs\"}").is_some(),
        "{}",
        fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
    );

    // SIGTERM: every probe detached and out within 2 s.
    let mut serve = serve;
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    let rc = unsafe { libc::kill(serve.0.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let t0 = Instant::now();
    let status = wait_for("serve exiting on SIGTERM", Duration::from_secs(5), || {
        serve.0.try_wait().ok().flatten()
    });
    let took = t0.elapsed();
    assert!(status.success(), "serve: {status}");
    assert!(took < Duration::from_secs(2), "serve took {took:?} to exit");
    let _ = fs::remove_dir_all(Path::new(&dir));
}
