//! The loadgen server (in the wan namespace) and one client per container.

use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ctscope_lab::{ClientSummary, LoadSummary, Scenario};

use crate::cmd::Tools;
use crate::procs;
use crate::topology::{WAN_IP, WAN_NS};

const UDP_PORTS: &str = "9000-9001";
const UDP_BASE_PORT: &str = "9000";
const TCP_PORT: &str = "9100";
/// How long the server may take to bind its sockets.
const SERVER_READY_LIMIT: Duration = Duration::from_secs(20);

/// A running loadgen process (server or client).
pub(crate) struct Loadgen {
    pub name: String,
    child: Child,
    /// Kept open: a held client exits when it closes (a second release path besides SIGTERM).
    stdin: Option<ChildStdin>,
}

impl Loadgen {
    /// SIGTERM, close stdin, wait a little, SIGKILL if needed. True if it exited by itself.
    pub(crate) fn release(mut self) -> bool {
        drop(self.stdin.take());
        procs::stop(&mut self.child, libc::SIGTERM, Duration::from_secs(10)).is_some()
    }
}

/// `ip netns exec <ns> <loadgen> <args>` with all three standard streams piped.
fn spawn(tools: &Tools, loadgen: &str, ns: &str, args: &[&str]) -> Result<Child> {
    Command::new(&tools.ip)
        .args(["netns", "exec", ns, loadgen])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {loadgen} in {ns}"))
}

/// Starts the server and waits until it reports its sockets bound (its first stderr line).
pub(crate) fn start_server(tools: &Tools, loadgen: &str) -> Result<Loadgen> {
    let mut child = spawn(
        tools,
        loadgen,
        WAN_NS,
        &[
            "serve",
            "--addr",
            WAN_IP,
            "--udp-ports",
            UDP_PORTS,
            "--tcp-port",
            TCP_PORT,
        ],
    )?;
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        procs::forward(out, "[server] ".into(), None, None)?;
    }
    if let Some(err) = child.stderr.take() {
        procs::forward(err, "[server] ".into(), None, Some(tx))?;
    }
    let stdin = child.stdin.take();
    let server = Loadgen {
        name: "server".into(),
        child,
        stdin,
    };
    match rx.recv_timeout(SERVER_READY_LIMIT) {
        Ok((_, Some(line))) if line.starts_with("loadgen serve:") => {
            println!("[server] {line}");
            Ok(server)
        }
        Ok((_, Some(line))) => {
            server.release();
            bail!("loadgen server failed: {line}")
        }
        Ok((_, None)) | Err(_) => {
            server.release();
            bail!("loadgen server did not come up within {SERVER_READY_LIMIT:?}")
        }
    }
}

/// Per-run options of the clients that are not in the scenario.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunOptions {
    /// First source port of every client (a bench round uses fresh ports: no tuple of an
    /// earlier round is met again).
    pub src_port_base: u16,
    /// Keep the clients (and their connections) until released.
    pub hold: bool,
    /// Give every container its own source ports (container i starts after the ports of
    /// containers 0..i): masquerade then keeps every port, and no two CPUs can race for one
    /// NAT mapping (a clash drop that has nothing to do with the table's size).
    pub disjoint_ports: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            src_port_base: 20000,
            hold: true,
            disjoint_ports: false,
        }
    }
}

/// Starts every container's client at once, collects their JSON summaries. Returns the
/// clients (holding their connections with `opts.hold`) and the summaries; a client that
/// fails gives an error message instead of a summary.
pub(crate) fn run_clients(
    tools: &Tools,
    loadgen: &str,
    scenario: &Scenario,
    limit: Duration,
    opts: RunOptions,
) -> (Vec<Loadgen>, Vec<ClientSummary>, Vec<String>) {
    let (tx, rx) = mpsc::channel();
    let mut clients = Vec::new();
    let mut errors = Vec::new();
    let mut next_port = u32::from(opts.src_port_base);
    for c in &scenario.containers {
        let flows = c.flows.to_string();
        let concurrency = c.concurrency().to_string();
        let timeout = c.connect_timeout_ms().to_string();
        let src_base = if opts.disjoint_ports {
            let b = next_port;
            next_port += c.flows;
            b
        } else {
            u32::from(opts.src_port_base)
        }
        .to_string();
        let keepalive_s = c.keepalive_s.unwrap_or(0).to_string();
        let keepalive_ms = c.keepalive_interval_ms().to_string();
        let rate = c.rate.unwrap_or(0).to_string();
        let mut args = vec![
            "client",
            "--protocol",
            c.protocol.as_str(),
            "--dst",
            WAN_IP,
            "--flows",
            &flows,
            "--udp-base-port",
            UDP_BASE_PORT,
            "--tcp-port",
            TCP_PORT,
            "--concurrency",
            &concurrency,
            "--connect-timeout-ms",
            &timeout,
            "--src-port-base",
            &src_base,
            "--keepalive-s",
            &keepalive_s,
            "--keepalive-interval-ms",
            &keepalive_ms,
            "--rate",
            &rate,
        ];
        if c.close {
            args.push("--close");
        }
        if opts.hold {
            args.push("--hold");
        }
        let started = spawn(tools, loadgen, &c.netns(), &args).and_then(|mut child| {
            let prefix = format!("[client {}] ", c.name);
            if let Some(err) = child.stderr.take() {
                procs::forward(err, prefix.clone(), None, None)?;
            }
            if let Some(out) = child.stdout.take() {
                procs::forward(out, prefix, None, Some(tx.clone()))?;
            }
            Ok(child)
        });
        match started {
            Ok(mut child) => {
                let stdin = child.stdin.take();
                clients.push(Loadgen {
                    name: c.name.clone(),
                    child,
                    stdin,
                });
            }
            Err(e) => errors.push(format!("client {}: {e:#}", c.name)),
        }
    }
    drop(tx);

    let mut summaries = Vec::new();
    let deadline = Instant::now() + limit;
    let mut pending = clients.len();
    while pending > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok((prefix, line)) = rx.recv_timeout(left) else {
            errors.push(format!(
                "{pending} client(s) gave no summary within {limit:?}"
            ));
            break;
        };
        pending -= 1;
        let name = prefix
            .trim()
            .trim_start_matches("[client ")
            .trim_end_matches(']')
            .to_string();
        let Some(line) = line else {
            errors.push(format!("client {name} exited without a summary"));
            continue;
        };
        match serde_json::from_str::<LoadSummary>(&line) {
            Ok(s) => {
                println!(
                    "lab: client {name}: {} {} flows, {} established, {} send errors, {} connect failures, {:.1} s",
                    s.flows,
                    s.protocol,
                    s.established,
                    s.send_errors,
                    s.connect_failures,
                    s.elapsed_s
                );
                summaries.push(ClientSummary {
                    container: name,
                    load: s,
                });
            }
            Err(e) => errors.push(format!("client {name}: bad summary {line:?}: {e}")),
        }
    }
    // Report in scenario order, whatever order they finished in.
    summaries.sort_by_key(|s| {
        scenario
            .containers
            .iter()
            .position(|c| c.name == s.container)
    });
    (clients, summaries, errors)
}
