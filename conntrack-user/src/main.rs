//! The `ctscope` command line.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use conntrack_user::{
    apply::{self, ApplyError},
    doctor, object,
    observe::{self, ObserveError, RequestedMode},
    probes::Attribution,
    recommend::{self, Budget},
    report::Report,
};

/// Exit codes, documented in `--help`.
mod exit {
    pub const ERROR: u8 = 1;
    pub const NOT_ROOT: u8 = 3;
    pub const MODE_UNAVAILABLE: u8 = 4;
    pub const SELF_CHECK_FAILED: u8 = 5;
    pub const REFUSED: u8 = 6;
    pub const ROLLED_BACK: u8 = 7;
}

const AFTER_HELP: &str = "Exit codes: 0 success; 1 error; 2 bad usage; 3 not root; \
4 the requested --mode cannot work here, or observe finds no conntrack in its network namespace \
(the reason is printed); \
5 the run-time self-check failed (chain walks could not be proven: a start node not linked where \
it claimed, a wrong tuple direction, another bucket's nulls marker, or a failed kernel read; those \
walks are not counted and the report says so); \
6 apply/rollback refused, nothing was changed (another kernel's recommendation, a value out of \
range, not the initial network namespace, read-only /proc/sys or /sys, an unfinished earlier \
apply; and, unless --force, every risk at once: the table when full above --max-memory-share of \
RAM (default 20%), a load at max whose chains the kernel's limit would refuse, a timeout cut below \
recommend's floor, a lower max without max(10%, 256) entries of room above any namespace's live \
count, a cut of max or buckets by more than 2x from an observation under 1 hour, a namespace that \
cannot be read); \
7 a step of apply failed and every change before it was undone.";

#[derive(Parser)]
#[command(
    name = "ctscope",
    version,
    about = "Observe the netfilter conntrack hash table (exact chain lengths, drops by reason, who fills it) and size it from what was measured",
    long_about = "ctscope attaches kprobes to the kernel's conntrack insertion, allocation and \
confirmation paths (once per new connection, never per packet) to measure the exact length of \
the hash chains every new entry lands in, why connections are dropped, which namespace or \
container fills the table, and how entries live and die. Where probes cannot attach it falls \
back to the kernel's own counters. `recommend` sizes buckets, max and timeouts from such an \
observation; `apply` and `rollback` change the host carefully.",
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
    /// JSON report with --json. Runs until --duration ends or SIGINT/SIGTERM/SIGHUP.
    ///
    /// Docker container names come from the daemon's state directory, else its
    /// API on /var/run/docker.sock (DOCKER_HOST=unix:///PATH names another
    /// socket); a daemon that has not answered within 2 s is not asked again
    /// for 60 s.
    Observe {
        /// How long to observe (e.g. 30s, 5m, 1h; a bare number is seconds).
        /// Without it, runs until SIGINT/SIGTERM.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Time between live lines.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        interval: Duration,
        /// Write the final report as JSON to this file (atomically). Checked
        /// before the run starts: its directory must exist and be writable.
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
        /// Measure what the probes cost: turns the kernel's bpf_stats
        /// (BPF_ENABLE_STATS) on for the run and reports each program's run
        /// count and run time under cost.programs (null without it). Off by
        /// default because bpf_stats are global: while they are on, every BPF
        /// program on the host, other tools' per-packet programs included,
        /// pays two clock reads per run. --lookups turns them on too, to show
        /// what its per-packet probes cost.
        #[arg(long)]
        cost: bool,
        /// When to attribute refused connections to their source (fentry
        /// mode): the programs that do it fire for every new connection, so
        /// `auto` attaches them only while refusals are likely or happening
        /// (the table 80% full, long chains, early drops, clashes, the
        /// kernel's refusal counters moving) and for a minute after. Every
        /// refusal is counted by reason in any case. kprobe mode attributes
        /// always.
        #[arg(long, value_enum, default_value_t = Attribution::Auto)]
        attribution: Attribution,
    },
    /// Recommend nf_conntrack_buckets, nf_conntrack_max and timeouts from an
    /// observation, with their memory, next to what the kernel's defaults and the
    /// usual formulas would choose for the same load.
    ///
    /// Reads a report (`observe --json`) with --from, or observes for --duration
    /// first (default 60s). The JSON (--json) is what `ctscope apply --from` takes.
    Recommend {
        /// An `observe --json` report to recommend from.
        #[arg(long, value_name = "REPORT.json", conflicts_with = "duration")]
        from: Option<PathBuf>,
        /// Observe for this long first (e.g. 5m; include the busy hour).
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        /// max = the busiest namespace's demand (peak + refused + evicted) x this.
        #[arg(long, default_value_t = 2.0)]
        headroom: f64,
        /// Most memory the table may take when full: a share of RAM (5%) or a
        /// size (512MiB, 2GiB). Never exceeded; max is cut to fit.
        #[arg(long, value_name = "PCT|BYTES")]
        memory_budget: Option<Budget>,
        /// The p99 chain length wanted when the table is full (2..=40).
        #[arg(long, default_value_t = 4)]
        target_chain: u32,
        /// Print the recommendation as JSON (for `ctscope apply --from`).
        #[arg(long)]
        json: bool,
        /// Where the observation's numbers come from (with --duration).
        #[arg(long, value_enum, default_value = "auto")]
        mode: RequestedMode,
        /// Also write the JSON to this file (atomically).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Apply a recommendation to this host's kernel: runtime settings (read back
    /// and verified), and with --persist the files that keep them across reboots.
    ///
    /// Only in the initial network namespace. The previous state is journaled
    /// before the first change (`ctscope rollback` restores it); a failed step
    /// undoes the steps before it. Without --yes it asks on a terminal.
    Apply {
        /// A recommendation (`recommend --json`); default: the last one
        /// `ctscope recommend` made on this host.
        #[arg(long, value_name = "REC.json")]
        from: Option<PathBuf>,
        /// Show what would change, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also write /etc/sysctl.d (and, for the module, /etc/modprobe.d and
        /// /etc/modules-load.d) so the settings survive a reboot.
        #[arg(long)]
        persist: bool,
        /// Do not ask.
        #[arg(long, short = 'y')]
        yes: bool,
        /// Apply even what the checks call risky (table memory above
        /// --max-memory-share, chains the kernel's limit would refuse,
        /// timeouts below recommend's floors, max without room above a
        /// namespace's live count, a large cut from a short observation, a
        /// namespace that cannot be read); each risk is printed as a warning.
        #[arg(long)]
        force: bool,
        /// Most of this host's RAM the table may take when full, in percent
        /// (buckets x 8 B + max x this host's bytes per entry).
        #[arg(
            long,
            value_name = "PCT",
            default_value_t = apply::DEFAULT_MAX_MEMORY_SHARE_PCT,
            value_parser = parse_percent
        )]
        max_memory_share: f64,
        /// Test only: where /etc is.
        #[arg(long, hide = true, default_value = "/etc")]
        etc_dir: PathBuf,
        /// Test only: where ctscope keeps its journal.
        #[arg(long, hide = true, default_value = "/var/lib/ctscope")]
        state_dir: PathBuf,
    },
    /// Restore the settings and files from before ctscope's first apply.
    Rollback {
        /// Test only: where /etc is (the one the apply used).
        #[arg(long, hide = true, default_value = "/etc")]
        etc_dir: PathBuf,
        /// Test only: where ctscope keeps its journal.
        #[arg(long, hide = true, default_value = "/var/lib/ctscope")]
        state_dir: PathBuf,
    },
    /// Print the version and build facts.
    Version {
        #[arg(long)]
        json: bool,
    },
}

/// The longest `--duration` or `--interval` taken: 366 days.
const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

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
    // rejects zero). Above MAX_DURATION the run's deadline (`Instant::now() +
    // d`) could overflow the monotonic clock (1e19 s panicked with exit 101);
    // a run meant to last longer needs no --duration at all (it ends on a
    // signal).
    let d = Duration::try_from_secs_f64(secs).map_err(|_| {
        format!("`{s}` is out of range: the maximum is 8784h (366 days); without --duration observe runs until a signal")
    })?;
    if d < Duration::from_millis(1) {
        return Err(format!("`{s}` is too short: the minimum is 1ms"));
    }
    if d > MAX_DURATION {
        return Err(format!(
            "`{s}` is too long: the maximum is 8784h (366 days); without --duration observe runs until a signal"
        ));
    }
    Ok(d)
}

/// A share of RAM in percent: `20` or `20%`, above 0 and at most 100.
fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("`{s}` is not a percentage (try 20 or 20%)"))?;
    if v > 0.0 && v <= 100.0 {
        Ok(v)
    } else {
        Err(format!(
            "`{s}` is not a share of RAM (above 0, at most 100)"
        ))
    }
}

/// Fixes glibc's mmap threshold at 1 MiB. glibc raises the threshold to the
/// size of every mmapped block freed (up to 32 MiB), so after the 5-8 MiB BTF
/// buffer was freed, the next large blocks came from the heap and stayed
/// resident after their free: the peak on 6.12 and 7.3 was 28 MiB (24 MiB
/// with a fixed threshold). At glibc's 128 KiB default the blocks that
/// ctscope allocates and frees while it observes were mapped and unmapped
/// each time: +900 guest instructions per connection in the bench on 6.1.
const MMAP_THRESHOLD: i32 = 1 << 20;

fn fixed_mmap_threshold() {
    // SAFETY: mallopt only sets an allocator parameter; called first thing
    // in main, before any other thread exists.
    let _ = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
}

fn main() -> ExitCode {
    fixed_mmap_threshold();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = match (
                e.downcast_ref::<ObserveError>(),
                e.downcast_ref::<ApplyError>(),
            ) {
                (Some(ObserveError::NotRoot), _) | (_, Some(ApplyError::NotRoot(_))) => {
                    exit::NOT_ROOT
                }
                (Some(ObserveError::ModeUnavailable { .. }), _)
                | (Some(ObserveError::NoConntrack { .. }), _) => exit::MODE_UNAVAILABLE,
                (_, Some(ApplyError::Refused(_) | ApplyError::Risky(_))) => exit::REFUSED,
                (_, Some(ApplyError::RolledBack { .. })) => exit::ROLLED_BACK,
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
            cost,
            attribution,
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
                cost,
                attribution,
            }))?;
            Ok(if outcome.kprobe_not_attached {
                exit::MODE_UNAVAILABLE
            } else if outcome.self_check_failed {
                exit::SELF_CHECK_FAILED
            } else {
                0
            })
        }
        Command::Recommend {
            from,
            duration,
            headroom,
            memory_budget,
            target_chain,
            json,
            mode,
            out,
        } => {
            let report: Report = match &from {
                Some(path) => {
                    // A regular file, capped: `--from /dev/zero` must not read
                    // until memory runs out.
                    let text = conntrack_user::safefile::read_capped(
                        path,
                        conntrack_user::safefile::MAX_INPUT,
                    )
                    .with_context(|| format!("reading {}", path.display()))?;
                    let mut report: Report = serde_json::from_slice(&text).with_context(|| {
                        format!(
                            "{} is not a ctscope observe report (make one with `ctscope observe --json FILE`)",
                            path.display()
                        )
                    })?;
                    // Printed in the reasons: the file is input, the name in it too.
                    if let Some(n) = report
                        .occupancy
                        .as_mut()
                        .and_then(|o| o.netns_peak_name.as_mut())
                    {
                        *n = conntrack_user::text::name(n);
                    }
                    report
                }
                None => {
                    let d = duration.unwrap_or(Duration::from_secs(60));
                    eprintln!(
                        "ctscope: observing for {:.0} s before recommending (Ctrl-C ends it early)",
                        d.as_secs_f64()
                    );
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("starting the async runtime")?;
                    rt.block_on(observe::run(observe::Options {
                        duration: Some(d),
                        interval: Duration::from_secs(1),
                        json: None,
                        mode,
                        ready_file: None,
                        quiet: true,
                        fault_offset_skew: 0,
                        lookups: false,
                        cost: false,
                        attribution: conntrack_user::probes::Attribution::Auto,
                    }))?
                    .report
                }
            };
            if let Some(why) = &report.interrupted {
                anyhow::bail!(
                    "the report observed nothing to recommend from ({}): observe again",
                    conntrack_user::text::escape(why, 500)
                );
            }
            let rec = recommend::recommend(
                &report,
                &recommend::Options {
                    headroom,
                    budget: memory_budget,
                    target_chain,
                },
            )?;
            let text = serde_json::to_string_pretty(&rec).context("encoding JSON")? + "\n";
            if let Some(out) = &out {
                conntrack_user::report::write_atomic(out, &text)
                    .with_context(|| format!("writing {}", out.display()))?;
            }
            // `apply` without --from takes the last recommendation (root only:
            // the state directory is root's).
            if conntrack_user::kernel::is_root()
                && let Err(e) = apply::save_last_recommendation(&apply::Paths::default(), &text)
            {
                log::warn!("could not keep the recommendation: {e}");
            }
            emit(&if json { text } else { recommend::render(&rec) })?;
            Ok(0)
        }
        Command::Apply {
            from,
            dry_run,
            persist,
            yes,
            force,
            max_memory_share,
            etc_dir,
            state_dir,
        } => {
            // Root first, before the file is read or anything planned: every
            // check below needs it (setns into each namespace).
            if !conntrack_user::kernel::is_root() {
                bail!(ApplyError::NotRoot("apply"));
            }
            let paths = apply::Paths {
                etc: etc_dir,
                state: state_dir,
                ..apply::Paths::default()
            };
            let from = from.unwrap_or_else(|| paths.last_recommendation());
            if !from.exists() {
                bail!(
                    "no recommendation at {}: run `ctscope recommend` first, or pass --from FILE",
                    from.display()
                );
            }
            let rec = apply::load_recommendation(&from)?;
            let opts = apply::Options {
                dry_run,
                persist,
                force,
                max_memory_share_pct: max_memory_share,
                paths,
                source: from.display().to_string(),
            };
            let plan = apply::plan(&rec, &opts)?;
            emit(&apply::render_plan(&plan, dry_run))?;
            if dry_run {
                return Ok(0);
            }
            if !yes && !confirm("Apply these changes? [y/N] ")? {
                eprintln!("ctscope: nothing was changed");
                return Ok(exit::REFUSED);
            }
            let done = apply::apply(&rec, &opts)?;
            emit(&format!(
                "applied: {} runtime settings changed and verified{}; the previous state is in {} (`ctscope rollback` restores it)\n",
                done.steps.len(),
                if done.files.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", {} written",
                        done.files
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                },
                done.journal.display()
            ))?;
            Ok(0)
        }
        Command::Rollback { etc_dir, state_dir } => {
            if !conntrack_user::kernel::is_root() {
                bail!(ApplyError::NotRoot("rollback"));
            }
            let paths = apply::Paths {
                etc: etc_dir,
                state: state_dir,
                ..apply::Paths::default()
            };
            let r = apply::rollback(&paths)?;
            for w in &r.warnings {
                eprintln!("ctscope: warning: {w}");
            }
            let mut text = String::from("rolled back:\n");
            for v in &r.values {
                text.push_str(&format!("  {} = {}\n", v.name, v.before));
            }
            for f in &r.files {
                text.push_str(&format!("  restored {}\n", f.display()));
            }
            text.push_str(&format!("journal kept as {}\n", r.kept_as.display()));
            emit(&text)?;
            Ok(0)
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

/// Asks on the terminal; without one, refuses (pass --yes).
fn confirm(question: &str) -> anyhow::Result<bool> {
    use std::io::{BufRead as _, IsTerminal as _};
    if !std::io::stdin().is_terminal() {
        bail!(ApplyError::Refused(
            "stdin is not a terminal to ask on: pass --yes to apply, or --dry-run to look first"
                .into()
        ));
    }
    eprint!("{question}");
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the answer")?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
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
        // 1e19 s fits a Duration but overflowed the run's deadline (exit 101).
        for huge in ["10000000000000000000", "18446744073709551615", "8785h"] {
            let e = parse_duration(huge).expect_err(huge);
            assert!(e.contains("maximum is 8784h"), "{huge}: {e}");
        }
        assert_eq!(
            parse_duration("8784h"),
            Ok(Duration::from_secs(366 * 24 * 3600))
        );
    }

    #[test]
    fn percentages() {
        assert_eq!(parse_percent("20"), Ok(20.0));
        assert_eq!(parse_percent("2.5%"), Ok(2.5));
        assert!(parse_percent("0").is_err());
        assert!(parse_percent("101").is_err());
        assert!(parse_percent("NaN").is_err());
        assert!(parse_percent("inf").is_err());
        assert!(parse_percent("x%").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
