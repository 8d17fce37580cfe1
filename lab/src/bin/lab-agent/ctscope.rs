//! Running ctscope in the host namespace: start, wait for its ready file, stop with SIGINT, read
//! its JSON report.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ctscope_lab::CTSCOPE_EXIT_SELF_CHECK_FAILED;

use crate::procs::{self, Tail};

pub(crate) const REPORT: &str = "/tmp/ctscope.json";
/// The lab's containers are named namespaces `ctlab-<name>` (docs/lab-contract.md): every
/// ctscope the agent starts is told so.
pub(crate) const NETNS_CONTAINERS: [&str; 2] = ["--netns-containers", "ctlab-"];

/// Where `ctscope serve` listens in the lab.
pub(crate) const SERVE_ADDR: &str = "127.0.0.1:9978";
pub(crate) const READY: &str = "/tmp/ctscope.ready";
/// How long ctscope may take to attach its probes (BTF parsing and verification under TCG).
pub(crate) const READY_LIMIT: Duration = Duration::from_mins(1);
/// How long ctscope may take to detach and write its report after SIGINT.
pub(crate) const STOP_LIMIT: Duration = Duration::from_secs(30);

/// Whether exit code `code` means that ctscope completed its run and wrote its report.
pub(crate) fn wrote_report(code: i32) -> bool {
    code == 0 || code == CTSCOPE_EXIT_SELF_CHECK_FAILED
}

/// A note for the console on what an exit code means to the lab.
pub(crate) fn exit_meaning(code: i32) -> &'static str {
    match code {
        0 => "",
        CTSCOPE_EXIT_SELF_CHECK_FAILED => {
            " (self-check failed; the report is written all the same)"
        }
        _ => " (an error: no report is expected)",
    }
}

/// Runs `<binary> doctor --json` and returns its JSON.
pub(crate) fn doctor(binary: &str) -> Result<serde_json::Value> {
    let out = Command::new(binary)
        .args(["doctor", "--json"])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {binary} doctor --json"))?;
    if !out.status.success() {
        anyhow::bail!(
            "exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).context("doctor printed no JSON")
}

pub(crate) struct Ctscope {
    child: Child,
    stderr_tail: Tail,
    forwarders: Vec<JoinHandle<()>>,
    exit: Option<i32>,
    /// Seconds from SIGINT to exit, when [`Ctscope::stop`] stopped it.
    pub stop_s: Option<f64>,
    /// `ctscope serve`: ready when /healthz answers, stopped with SIGTERM, no report.
    serve: bool,
}

/// Whether `args` run `ctscope serve`.
pub(crate) fn is_serve(args: &[String]) -> bool {
    args.first().is_some_and(|a| a == "serve")
}

/// One HTTP/1.0 GET to [`SERVE_ADDR`], with deadlines: the status and the body.
pub(crate) fn http_get(path: &str, accept: &str) -> Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let addr: std::net::SocketAddr = SERVE_ADDR.parse().context("the serve address")?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connect {SERVE_ADDR}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: localhost\r\nAccept: {accept}\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    // At most 16 MiB: a scrape of a lab run is a few KiB.
    s.take(16 << 20).read_to_end(&mut raw)?;
    let raw = String::from_utf8_lossy(&raw);
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

/// `ctscope serve`'s metrics (at [`SERVE_ADDR`]) now, as OpenMetrics text.
pub(crate) fn scrape() -> Result<String> {
    let (status, body) = http_get(
        "/metrics",
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    )?;
    anyhow::ensure!(
        status == 200,
        "GET /metrics: HTTP {status}: {}",
        body.trim()
    );
    Ok(body)
}

/// How the wait for the ready file ended.
pub(crate) enum Ready {
    /// Probes attached after this long.
    Attached(Duration),
    /// ctscope exited first, with this code.
    Exited(i32),
    /// Neither happened within [`READY_LIMIT`].
    TimedOut,
}

impl Ctscope {
    /// Starts `<binary> <args> --json REPORT --interval 1 --ready-file READY`, its output
    /// echoed on the console.
    pub(crate) fn start(binary: &str, args: &[String]) -> Result<Ctscope> {
        Self::start_with(binary, args, true)
    }

    /// [`Ctscope::start`], its live lines (stdout) read and dropped when `echo_stdout` is
    /// false: the bench's, whose window the console would pay for (each line goes out through
    /// the guest's emulated serial port: a lab cost, not ctscope's). ctscope still writes them.
    pub(crate) fn start_with(binary: &str, args: &[String], echo_stdout: bool) -> Result<Ctscope> {
        for stale in [REPORT, READY] {
            if Path::new(stale).exists() {
                std::fs::remove_file(stale).with_context(|| format!("remove stale {stale}"))?;
            }
        }
        let serve = is_serve(args);
        let extra: &[&str] = if serve {
            &["--listen", SERVE_ADDR, "--interval", "1"]
        } else {
            &["--json", REPORT, "--interval", "1", "--ready-file", READY]
        };
        let mut child = Command::new(binary)
            .args(args)
            .args(extra)
            .args(NETNS_CONTAINERS)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {binary}"))?;
        let stderr_tail = Tail::default();
        let mut forwarders = Vec::new();
        if let Some(out) = child.stdout.take() {
            forwarders.push(if echo_stdout {
                procs::forward(out, "[ctscope] ".into(), None, None)?
            } else {
                procs::drain(out)?
            });
        }
        if let Some(err) = child.stderr.take() {
            forwarders.push(procs::forward(
                err,
                "[ctscope] ".into(),
                Some(stderr_tail.clone()),
                None,
            )?);
        }
        Ok(Ctscope {
            child,
            stderr_tail,
            forwarders,
            exit: None,
            stop_s: None,
            serve,
        })
    }

    /// `ctscope serve`'s metrics now, as OpenMetrics text.
    pub(crate) fn scrape(&self) -> Result<String> {
        anyhow::ensure!(self.serve, "only ctscope serve has metrics to scrape");
        scrape()
    }

    /// ctscope's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn is_ready(&self) -> bool {
        if self.serve {
            // serve answers only once its probes are attached.
            http_get("/healthz", "*/*").is_ok_and(|(s, _)| s == 200)
        } else {
            Path::new(READY).exists()
        }
    }

    /// Waits for the ready file, or for ctscope to exit, up to [`READY_LIMIT`].
    pub(crate) fn wait_ready(&mut self) -> Ready {
        let start = Instant::now();
        while start.elapsed() < READY_LIMIT {
            if self.is_ready() {
                return Ready::Attached(start.elapsed());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let code = procs::exit_code(status);
                self.exit = Some(code);
                self.drain();
                return Ready::Exited(code);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ready::TimedOut
    }

    /// SIGINT (serve: SIGTERM), then up to [`STOP_LIMIT`] for a clean exit (else SIGKILL). Returns the exit code,
    /// or `None` if it had to be killed.
    pub(crate) fn stop(&mut self) -> Option<i32> {
        if self.exit.is_some() {
            return self.exit;
        }
        let asked = std::time::Instant::now();
        let sig = if self.serve {
            libc::SIGTERM
        } else {
            libc::SIGINT
        };
        let status = procs::stop(&mut self.child, sig, STOP_LIMIT);
        if status.is_some() {
            self.stop_s = Some(asked.elapsed().as_secs_f64());
        }
        self.exit = status.map(procs::exit_code);
        self.drain();
        self.exit
    }

    /// Waits for the output forwarders, so the stderr tail is complete.
    fn drain(&mut self) {
        for f in self.forwarders.drain(..) {
            let _ = f.join();
        }
    }

    /// ctscope's CPU time so far, while it runs: the scheduler's run time of each of its
    /// threads (`/proc/PID/task/TID/schedstat`, first field, ns: precise, where the stat
    /// file's utime and stime are whole ticks that the guest's few milliseconds round to
    /// 0); the stat file's where schedstat is missing.
    pub(crate) fn cpu_seconds(&self) -> Option<f64> {
        let pid = self.child.id();
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
        let mut ns = 0u64;
        let mut any = false;
        for t in tasks.flatten() {
            let Ok(text) = std::fs::read_to_string(t.path().join("schedstat")) else {
                continue;
            };
            if let Some(v) = text
                .split_whitespace()
                .next()
                .and_then(|f| f.parse::<u64>().ok())
            {
                ns = ns.saturating_add(v);
                any = true;
            }
        }
        if any {
            return Some(ns as f64 / 1e9);
        }
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) may hold spaces; the fields after its ')' are fixed.
        let rest = &text[text.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        // SAFETY: sysconf() takes no pointers.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        (hz > 0).then(|| (utime + stime) as f64 / hz as f64)
    }

    pub(crate) fn is_serving(&self) -> bool {
        self.serve
    }

    pub(crate) fn exit_code(&self) -> Option<i32> {
        self.exit
    }

    pub(crate) fn stderr_tail(&self) -> String {
        self.stderr_tail.text()
    }

    /// Reads the JSON report ctscope wrote on exit.
    pub(crate) fn report() -> Result<serde_json::Value> {
        let text = std::fs::read_to_string(REPORT).with_context(|| format!("read {REPORT}"))?;
        serde_json::from_str(&text).with_context(|| format!("{REPORT} is not JSON"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_check_exit_still_means_a_report() {
        assert!(wrote_report(0));
        assert!(wrote_report(CTSCOPE_EXIT_SELF_CHECK_FAILED));
        for code in [1, 2, 3, 4, 130, -1] {
            assert!(!wrote_report(code), "{code}");
        }
        assert_eq!(exit_meaning(0), "");
        assert!(exit_meaning(CTSCOPE_EXIT_SELF_CHECK_FAILED).contains("report is written"));
    }
}
