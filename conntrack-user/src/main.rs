//! The `ctscope` command line.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use conntrack_user::{
    doctor, object,
    observe::{self, ObserveError, RequestedMode},
};

/// Exit codes, documented in `--help`.
mod exit {
    pub const ERROR: u8 = 1;
    pub const NOT_ROOT: u8 = 3;
    pub const MODE_UNAVAILABLE: u8 = 4;
    pub const SELF_CHECK_FAILED: u8 = 5;
}

const AFTER_HELP: &str = "Exit codes: 0 success; 1 error; 2 bad usage; 3 not root; \
4 the requested --mode cannot work here (the reason is printed); \
5 the run-time self-check failed (chain walks could not be proven: a start node not linked where \
it claimed, a wrong tuple direction, another bucket's nulls marker, or a failed kernel read; those \
walks are not counted and the report says so).";

#[derive(Parser)]
#[command(
    name = "ctscope",
    version,
    about = "Observe the netfilter conntrack hash table: exact chain lengths and drops by reason",
    long_about = "ctscope attaches kprobes to the kernel's conntrack insertion, allocation and \
confirmation paths (once per new connection, never per packet) to measure the exact length of \
the hash chains every new entry lands in and why connections are dropped. Where probes cannot \
attach it falls back to the kernel's own counters.",
    after_help = AFTER_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Report what this kernel offers: conntrack, BTF, whether kprobes and
    /// fentry can attach (and exactly why not), settings, the mode observe would use.
    Doctor {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Measure conntrack: a line per interval, a summary at the end, and a
    /// JSON report with --json. Runs until --duration ends or SIGINT/SIGTERM.
    Observe {
        /// How long to observe (e.g. 30s, 5m, 1h; a bare number is seconds).
        /// Without it, runs until SIGINT/SIGTERM.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Time between live lines.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        interval: Duration,
        /// Write the final report as JSON to this file (atomically).
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Where the numbers come from. auto: kprobes where they attach, else
        /// procfs counters with a notice; a forced mode fails with the reason.
        #[arg(long, value_enum, default_value = "auto")]
        mode: RequestedMode,
        /// No live lines or summary (the report is still written).
        #[arg(long)]
        quiet: bool,
        /// Create this file once every probe is attached (for test harnesses).
        #[arg(long, value_name = "FILE", hide = true)]
        ready_file: Option<PathBuf>,
        /// Test only: shift the tuplehash offset by BYTES so that the run-time
        /// self-check must catch it (exit code 5).
        #[arg(long, value_name = "BYTES", hide = true, default_value_t = 0)]
        fault_offset_skew: u32,
        /// Also probe every conntrack lookup (__nf_conntrack_find_get): latency,
        /// hits/misses and the length of the bucket searched. This fires per
        /// PACKET, not per connection, so it is off by default; its cost per
        /// lookup (the kernel's bpf_stats) is reported next to the results.
        #[arg(long)]
        lookups: bool,
    },
    /// Print the version and build facts.
    Version {
        #[arg(long)]
        json: bool,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (try 30s, 5m, 1h)"))?;
    let secs = match unit.trim() {
        "ms" => v / 1000.0,
        "s" | "" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        u => return Err(format!("unknown unit `{u}` in `{s}` (use ms, s, m or h)")),
    };
    // Below a millisecond nothing useful can be sampled (and tokio's interval
    // rejects zero); above ~584 years Duration overflows.
    let d = Duration::try_from_secs_f64(secs).map_err(|_| format!("`{s}` is out of range"))?;
    if d < Duration::from_millis(1) {
        return Err(format!("`{s}` is too short: the minimum is 1ms"));
    }
    Ok(d)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = match e.downcast_ref::<ObserveError>() {
                Some(ObserveError::NotRoot) => exit::NOT_ROOT,
                Some(ObserveError::ModeUnavailable { .. }) => exit::MODE_UNAVAILABLE,
                _ => exit::ERROR,
            };
            eprintln!("ctscope: error: {e:#}");
            ExitCode::from(code)
        }
    }
}

/// Writes to stdout; a closed pipe (`ctscope doctor | head`) is not an error.
fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(()),
    }
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Doctor { json } => {
            let d = doctor::run();
            if json {
                emit(&(serde_json::to_string_pretty(&d).context("encoding JSON")? + "\n"))?;
            } else {
                emit(&doctor::render(&d))?;
            }
            Ok(0)
        }
        Command::Observe {
            duration,
            interval,
            json,
            mode,
            quiet,
            ready_file,
            fault_offset_skew,
            lookups,
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let outcome = rt.block_on(observe::run(observe::Options {
                duration,
                interval,
                json,
                mode,
                ready_file,
                quiet,
                fault_offset_skew,
                lookups,
            }))?;
            Ok(if outcome.self_check_failed {
                exit::SELF_CHECK_FAILED
            } else {
                0
            })
        }
        Command::Version { json } => {
            let bytes = object::object_len();
            if json {
                emit(&format!(
                    "{}\n",
                    serde_json::json!({
                        "version": env!("CARGO_PKG_VERSION"),
                        "ebpf_object_bytes": bytes,
                    })
                ))?;
            } else {
                emit(&format!(
                    "ctscope {} (eBPF object: {bytes} bytes)\n",
                    env!("CARGO_PKG_VERSION")
                ))?;
                if bytes == 0 {
                    bail!("{}", object::NoObject);
                }
            }
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("0.0000000001").is_err());
        assert!(parse_duration("99999999999999999999999h").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("3 days").is_err());
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
