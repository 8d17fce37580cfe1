//! The command line's definition: subcommands, their arguments and help,
//! and the parsers of durations and percentages.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use conntrack_user::{
    observe::RequestedMode,
    probe::probes::Attribution,
    tune::{apply, recommend::Budget},
};

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
    long_about = "ctscope attaches eBPF programs (fentry/fexit where the kernel permits them, else \
kprobes) to the kernel's conntrack insertion, deletion and drop paths (per new connection, never \
per packet unless --lookups asks) to measure the exact length of \
the hash chains every new entry lands in, why connections are dropped, which namespace or \
container fills the table, and how entries live and die. Where probes cannot attach it falls \
back to the kernel's own counters. `recommend` sizes buckets, max and timeouts from such an \
observation; `apply` and `rollback` change the host carefully.",
    after_help = AFTER_HELP
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Named network namespaces (`ip netns`) whose name starts with PREFIX
    /// are containers, named by the rest of the name (e.g. `ctlab-` makes
    /// `ctlab-web` the container `web`): for runtimes and test rigs that
    /// name their namespaces. Docker's containers are found without it.
    #[arg(long, global = true, value_name = "PREFIX")]
    pub netns_containers: Option<String>,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Report what this kernel offers: conntrack, BTF, whether kprobes and
    /// fentry can attach (and exactly why not), settings, the mode observe would use.
    Doctor(DoctorArgs),
    /// Measure conntrack: a line per interval, a summary at the end, and a
    /// JSON report with --json. Runs until --duration ends or SIGINT/SIGTERM/SIGHUP.
    ///
    /// Docker container names come from the daemon's state directory, else its
    /// API on /var/run/docker.sock (DOCKER_HOST=unix:///PATH names another
    /// socket); a daemon that has not answered within 2 s is not asked again
    /// for 60 s.
    Observe(ObserveArgs),
    /// Keep observing and serve the numbers as Prometheus metrics on
    /// /metrics (OpenMetrics when the scraper asks for it), with /healthz.
    ///
    /// The same probes as observe (procfs counters where they cannot attach,
    /// said by ctscope_probes_attached 0 and in the log); the maps are read at
    /// each scrape. Counters count from ctscope's start. SIGINT or SIGTERM
    /// detach every probe and exit; SIGHUP makes the next scrape read
    /// container and namespace names afresh (every scrape does).
    Serve(ServeArgs),
    /// Watch conntrack live in the terminal: the table's fill, inserts/s and
    /// drops/s by reason, chain lengths measured next to the uniform model,
    /// and the namespaces and containers that hold the entries.
    ///
    /// Keys: q quits, s changes the sort, p pauses, h shows help. With
    /// --batch, no screen: one JSON object per interval on stdout (keys
    /// settings, rates, chain_length, netns, containers), for scripts and CI logs.
    Top(TopArgs),
    /// Turn an observe report into something to read or share: with --html,
    /// one self-contained HTML page (charts as inline SVG, nothing fetched);
    /// without, the summary observe printed.
    Report(ReportArgs),
    /// Recommend nf_conntrack_buckets, nf_conntrack_max and timeouts from an
    /// observation, with their memory, next to what the kernel's defaults and the
    /// usual formulas would choose for the same load.
    ///
    /// Reads a report (`observe --json`) with --from, or observes for --duration
    /// first (default 60s). The JSON (--json) is what `ctscope apply --from` takes.
    Recommend(RecommendArgs),
    /// Apply a recommendation to this host's kernel: runtime settings (read back
    /// and verified), and with --persist the files that keep them across reboots.
    ///
    /// Only in the initial network namespace. The previous state is journaled
    /// before the first change (`ctscope rollback` restores it); a failed step
    /// undoes the steps before it. Without --yes it asks on a terminal.
    Apply(ApplyArgs),
    /// Restore the settings and files from before ctscope's first apply.
    Rollback(RollbackArgs),
    /// Print the version and build facts.
    Version(VersionArgs),
}

/// The arguments of `ctscope doctor`.
#[derive(Args)]
pub(crate) struct DoctorArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The arguments of `ctscope observe`.
#[derive(Args)]
pub(crate) struct ObserveArgs {
    /// How long to observe (e.g. 30s, 5m, 1h; a bare number is seconds).
    /// Without it, runs until SIGINT/SIGTERM.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Time between live lines.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Write the final report as JSON to this file (atomically). Checked
    /// before the run starts: its directory must exist and be writable.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Where the numbers come from. auto: fentry where the kernel permits it,
    /// else kprobes, else procfs counters with a notice; a forced mode fails
    /// with the reason.
    #[arg(long, value_enum, default_value = "auto")]
    pub mode: RequestedMode,
    /// No live lines or summary (the report is still written).
    #[arg(long)]
    pub quiet: bool,
    /// Create this file once every probe is attached (for test harnesses).
    #[arg(long, value_name = "FILE", hide = true)]
    pub ready_file: Option<PathBuf>,
    /// Test only: shift the tuplehash offset by BYTES so that the run-time
    /// self-check must catch it (exit code 5).
    #[arg(long, value_name = "BYTES", hide = true, default_value_t = 0)]
    pub fault_offset_skew: u32,
    /// Also probe every conntrack lookup (__nf_conntrack_find_get): latency,
    /// hits/misses and the length of the bucket searched. This fires per
    /// PACKET, not per connection, so it is off by default; its cost per
    /// lookup (the kernel's bpf_stats) is reported next to the results.
    #[arg(long)]
    pub lookups: bool,
    /// Measure what the probes cost: turns the kernel's bpf_stats
    /// (BPF_ENABLE_STATS) on for the run and reports each program's run
    /// count and run time under cost.programs (null without it). Off by
    /// default because bpf_stats are global: while they are on, every BPF
    /// program on the host, other tools' per-packet programs included,
    /// pays two clock reads per run. --lookups turns them on too, to show
    /// what its per-packet probes cost.
    #[arg(long)]
    pub cost: bool,
    /// When to attribute refused connections to their source (fentry
    /// mode): the programs that do it fire for every new connection, so
    /// `auto` attaches them only while refusals are likely or happening
    /// (the table 80% full, long chains, early drops, clashes, the
    /// kernel's refusal counters moving) and for a minute after. Every
    /// refusal is counted by reason in any case. kprobe mode attributes
    /// always.
    #[arg(long, value_enum, default_value_t = Attribution::Auto)]
    pub attribution: Attribution,
}

/// The arguments of `ctscope serve`.
#[derive(Args, Clone, Copy)]
pub(crate) struct ServeArgs {
    /// Address and port to listen on. Loopback by default; any other address
    /// is warned about (the metrics name namespaces and containers).
    #[arg(long, value_name = "ADDR:PORT", default_value_t = std::net::SocketAddr::from(([127, 0, 0, 1], conntrack_user::serve::DEFAULT_PORT)))]
    pub listen: std::net::SocketAddr,
    /// Namespaces, and containers, with series of their own: the largest by
    /// live entries; the rest are summed in one series named `other`, and
    /// their number is exported (..._series_folded).
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=10_000))]
    pub max_series: u16,
    /// Time between samples of the table (occupancy, on-demand attribution).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Where the numbers come from, as for observe.
    #[arg(long, value_enum, default_value = "auto")]
    pub mode: RequestedMode,
    /// Export what each eBPF program costs (ctscope_probe_run_seconds_total),
    /// from the kernel's bpf_stats, which are global while on (see observe --cost).
    #[arg(long)]
    pub cost: bool,
    /// When to attribute refused connections to their source, as for observe.
    #[arg(long, value_enum, default_value_t = Attribution::Auto)]
    pub attribution: Attribution,
}

/// The arguments of `ctscope top`.
#[derive(Args, Clone, Copy)]
pub(crate) struct TopArgs {
    /// No screen: one JSON object per interval on stdout.
    #[arg(long)]
    pub batch: bool,
    /// Time between updates.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// With --batch: stop after N lines.
    #[arg(long, value_name = "N", requires = "batch")]
    pub count: Option<u64>,
    /// Where the numbers come from, as for observe.
    #[arg(long, value_enum, default_value = "auto")]
    pub mode: RequestedMode,
    /// When to attribute refused connections to their source, as for observe.
    #[arg(long, value_enum, default_value_t = Attribution::Auto)]
    pub attribution: Attribution,
}

/// The arguments of `ctscope report`.
#[derive(Args)]
pub(crate) struct ReportArgs {
    /// A report written by `ctscope observe --json`.
    #[arg(value_name = "REPORT.json")]
    pub report: PathBuf,
    /// Write the report as one HTML page to this file (created, or replaced
    /// atomically; mode 0644).
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// A recommendation (`ctscope recommend --json`) to show next to the
    /// report: ctscope's sizing beside the formulas'.
    #[arg(long, value_name = "REC.json")]
    pub recommendation: Option<PathBuf>,
}

/// The arguments of `ctscope recommend`.
#[derive(Args)]
pub(crate) struct RecommendArgs {
    /// An `observe --json` report to recommend from.
    #[arg(long, value_name = "REPORT.json", conflicts_with = "duration")]
    pub from: Option<PathBuf>,
    /// Observe for this long first (e.g. 5m; include the busy hour).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// max = the busiest namespace's demand (peak + refused + evicted) x this.
    #[arg(long, default_value_t = 2.0)]
    pub headroom: f64,
    /// Most memory the table may take when full: a share of RAM (5%) or a
    /// size (512MiB, 2GiB). Never exceeded; max is cut to fit.
    #[arg(long, value_name = "PCT|BYTES")]
    pub memory_budget: Option<Budget>,
    /// The p99 chain length wanted when the table is full (2..=40).
    #[arg(long, default_value_t = 4)]
    pub target_chain: u32,
    /// Print the recommendation as JSON (for `ctscope apply --from`).
    #[arg(long)]
    pub json: bool,
    /// Where the observation's numbers come from (with --duration).
    #[arg(long, value_enum, default_value = "auto")]
    pub mode: RequestedMode,
    /// Also write the JSON to this file (atomically).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// The arguments of `ctscope apply`.
#[derive(Args)]
pub(crate) struct ApplyArgs {
    /// A recommendation (`recommend --json`); default: the last one
    /// `ctscope recommend` made on this host.
    #[arg(long, value_name = "REC.json")]
    pub from: Option<PathBuf>,
    /// Show what would change, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also write /etc/sysctl.d (and, for the module, /etc/modprobe.d and
    /// /etc/modules-load.d) so the settings survive a reboot.
    #[arg(long)]
    pub persist: bool,
    /// Do not ask.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Apply even what the checks call risky (table memory above
    /// --max-memory-share, chains the kernel's limit would refuse,
    /// timeouts below recommend's floors, max without room above a
    /// namespace's live count, a large cut from a short observation, a
    /// namespace that cannot be read); each risk is printed as a warning.
    #[arg(long)]
    pub force: bool,
    /// Most of this host's RAM the table may take when full, in percent
    /// (buckets x 8 B + max x this host's bytes per entry).
    #[arg(
        long,
        value_name = "PCT",
        default_value_t = apply::DEFAULT_MAX_MEMORY_SHARE_PCT,
        value_parser = parse_percent
    )]
    pub max_memory_share: f64,
    /// Test only: where /etc is.
    #[arg(long, hide = true, default_value = "/etc")]
    pub etc_dir: PathBuf,
    /// Test only: where ctscope keeps its journal.
    #[arg(long, hide = true, default_value = "/var/lib/ctscope")]
    pub state_dir: PathBuf,
}

/// The arguments of `ctscope rollback`.
#[derive(Args)]
pub(crate) struct RollbackArgs {
    /// Test only: where /etc is (the one the apply used).
    #[arg(long, hide = true, default_value = "/etc")]
    pub etc_dir: PathBuf,
    /// Test only: where ctscope keeps its journal.
    #[arg(long, hide = true, default_value = "/var/lib/ctscope")]
    pub state_dir: PathBuf,
}

/// The arguments of `ctscope version`.
#[derive(Args)]
pub(crate) struct VersionArgs {
    #[arg(long)]
    pub json: bool,
}

/// The longest `--duration` or `--interval` taken: 366 days.
const MAX_DURATION: Duration = Duration::from_hours(8784);

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
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
pub(crate) fn parse_percent(s: &str) -> Result<f64, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_mins(2)));
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
        assert_eq!(parse_duration("8784h"), Ok(Duration::from_hours(8784)));
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

    /// Every subcommand's `--help` as a user sees it (exit codes included):
    /// a change of an option, a default or a sentence shows as a diff.
    #[test]
    fn help_as_a_user_reads_it() {
        use clap::CommandFactory;
        let mut cli = Cli::command().term_width(100);
        insta::assert_snapshot!("help", cli.render_long_help().to_string());
        // Every subcommand: a new one gets its snapshot without being listed.
        let subs: Vec<String> = cli
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .filter(|n| n != "help")
            .collect();
        assert!(subs.len() >= 7, "{subs:?}");
        for sub in subs {
            let mut cmd = cli
                .find_subcommand_mut(&sub)
                .expect("a subcommand")
                .clone()
                .term_width(100);
            insta::assert_snapshot!(format!("help-{sub}"), cmd.render_long_help().to_string());
        }
    }
}
