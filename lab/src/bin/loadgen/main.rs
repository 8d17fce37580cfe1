//! loadgen: the lab's load generator. `serve` runs in the lab's "wan" namespace; `client` runs in
//! each container namespace and opens N flows, every one a distinct 5-tuple, so that each flow is
//! exactly one conntrack decision (an insert or a drop) in the host namespace.

mod client;
mod serve;
mod sys;

use std::net::Ipv4Addr;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

/// Load generator for the ctscope VM lab.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Transport of the client's flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Proto {
    /// One datagram per flow, each from its own socket bound to its own source port.
    Udp,
    /// One connection per flow, bound to its own source port, kept open once established.
    Tcp,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Server: discard UDP datagrams on a range of ports and accept TCP connections, keeping every
    /// accepted connection open (so it stays ESTABLISHED) until SIGTERM/SIGINT.
    Serve(ServeArgs),
    /// Client: open N flows with distinct 5-tuples, print one JSON summary line on stdout:
    /// {"protocol","flows","send_errors","connect_failures","established","elapsed_s"}.
    Client(ClientArgs),
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Local address to bind.
    #[arg(long, default_value = "0.0.0.0")]
    pub addr: Ipv4Addr,
    /// UDP ports to read (and discard) on, e.g. 9000-9001 or 9000.
    #[arg(long, default_value = "9000-9001", value_parser = sys::parse_port_range)]
    pub udp_ports: (u16, u16),
    /// TCP port to accept connections on.
    #[arg(long, default_value_t = 9100)]
    pub tcp_port: u16,
    /// listen() backlog (the kernel caps it at net.core.somaxconn).
    #[arg(long, default_value_t = 4096)]
    pub backlog: i32,
}

#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// Transport of the flows.
    #[arg(long, value_enum)]
    pub protocol: Proto,
    /// Server address.
    #[arg(long)]
    pub dst: Ipv4Addr,
    /// Number of flows (distinct 5-tuples). TCP: at most 40000.
    #[arg(long)]
    pub flows: u32,
    /// First source port; flow i binds source port SRC_PORT_BASE + i (modulo the ports left
    /// below 65536, moving to the next UDP destination port each time they run out).
    #[arg(long, default_value_t = 20000)]
    pub src_port_base: u16,
    /// First UDP destination port.
    #[arg(long, default_value_t = 9000)]
    pub udp_base_port: u16,
    /// Number of UDP destination ports (UDP_BASE_PORT..) the server listens on; more flows than
    /// free source ports spill over to the next destination port.
    #[arg(long, default_value_t = 2)]
    pub udp_port_count: u16,
    /// TCP destination port.
    #[arg(long, default_value_t = 9100)]
    pub tcp_port: u16,
    /// TCP: connects in flight at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: u32,
    /// TCP: a connect not done after this many ms is closed and counted in connect_failures.
    /// Keep it below 1000 (the initial SYN retransmission timeout) so that a dropped SYN is never
    /// retransmitted.
    #[arg(long, default_value_t = 500)]
    pub connect_timeout_ms: u32,
    /// TCP: close each connection as soon as it is established (instead of keeping it open).
    #[arg(long)]
    pub close: bool,
    /// UDP: after the first datagram of every flow, resend on every flow (same socket, same
    /// 5-tuple) every --keepalive-interval-ms for this many seconds.
    #[arg(long, default_value_t = 0)]
    pub keepalive_s: u32,
    /// UDP: interval between two datagrams of one kept-alive flow.
    #[arg(long, default_value_t = 1000)]
    pub keepalive_interval_ms: u32,
    /// Flows started per second, evenly spaced (flow i at i/RATE s after the start; a client
    /// that falls behind catches up at once). 0: as fast as possible. Not with --keepalive-s.
    #[arg(long, default_value_t = 0)]
    pub rate: u32,
    /// After printing the summary, keep the sockets (TCP connections) open until SIGTERM/SIGINT
    /// or EOF on stdin.
    #[arg(long)]
    pub hold: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(&args),
        Command::Client(args) => client::run(&args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "loadgen",
            "client",
            "--protocol",
            "tcp",
            "--dst",
            "198.18.0.2",
            "--flows",
            "10",
            "--hold",
        ])
        .expect("parses");
        let Command::Client(c) = cli.command else {
            panic!("client subcommand expected");
        };
        assert_eq!(
            (c.src_port_base, c.concurrency, c.connect_timeout_ms),
            (20000, 8, 500)
        );
        assert!(c.hold && c.protocol == Proto::Tcp);
        assert!(!c.close && c.keepalive_s == 0 && c.keepalive_interval_ms == 1000);
        let cli =
            Cli::try_parse_from(["loadgen", "serve", "--udp-ports", "9000-9003"]).expect("parses");
        let Command::Serve(s) = cli.command else {
            panic!("serve subcommand expected");
        };
        assert_eq!(s.udp_ports, (9000, 9003));
        assert_eq!(s.backlog, 4096);
    }
}
