//! The `ctscope` command line: one function per subcommand, over the library.

mod cli;

use std::{process::ExitCode, time::Duration};

use anyhow::{Context as _, bail};
use clap::Parser as _;
use cli::{
    ApplyArgs, Cli, Command, DoctorArgs, ObserveArgs, RecommendArgs, ReportArgs, RollbackArgs,
    ServeArgs, TopArgs, VersionArgs,
};
use conntrack_user::{
    doctor,
    host::kernel,
    observe::{self, ObserveError},
    probe::{object, probes::Attribution},
    report::{self, Report},
    safefile,
    serve::{self, ServeError},
    share, text,
    top::{self, TopError},
    tune::{
        apply::{self, ApplyError},
        recommend,
    },
};

/// Exit codes, documented in `--help`.
mod exit {
    pub(crate) const ERROR: u8 = 1;
    pub(crate) const NOT_ROOT: u8 = 3;
    pub(crate) const MODE_UNAVAILABLE: u8 = 4;
    pub(crate) const SELF_CHECK_FAILED: u8 = 5;
    pub(crate) const REFUSED: u8 = 6;
    pub(crate) const ROLLED_BACK: u8 = 7;
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
                (
                    Some(ObserveError::ModeUnavailable { .. } | ObserveError::NoConntrack { .. }),
                    _,
                ) => exit::MODE_UNAVAILABLE,
                _ if matches!(
                    e.downcast_ref::<ServeError>(),
                    Some(ServeError::Observe(ObserveError::NotRoot))
                ) || matches!(
                    e.downcast_ref::<TopError>(),
                    Some(TopError::Observe(ObserveError::NotRoot))
                ) =>
                {
                    exit::NOT_ROOT
                }
                _ if matches!(
                    e.downcast_ref::<ServeError>(),
                    Some(ServeError::Observe(
                        ObserveError::ModeUnavailable { .. } | ObserveError::NoConntrack { .. }
                    ))
                ) || matches!(
                    e.downcast_ref::<TopError>(),
                    Some(TopError::Observe(
                        ObserveError::ModeUnavailable { .. } | ObserveError::NoConntrack { .. }
                    ))
                ) =>
                {
                    exit::MODE_UNAVAILABLE
                }
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
    if let Some(prefix) = &cli.netns_containers {
        conntrack_user::host::namespaces::set_container_prefix(prefix)
            .map_err(|why| anyhow::anyhow!("--netns-containers {prefix:?}: {why}"))?;
    }
    match cli.command {
        Command::Doctor(args) => cmd_doctor(&args),
        Command::Observe(args) => cmd_observe(args),
        Command::Serve(args) => cmd_serve(args),
        Command::Top(args) => cmd_top(args),
        Command::Report(args) => cmd_report(&args),
        Command::Recommend(args) => cmd_recommend(&args),
        Command::Apply(args) => cmd_apply(args),
        Command::Rollback(args) => cmd_rollback(args),
        Command::Version(args) => cmd_version(&args),
    }
}

fn cmd_doctor(args: &DoctorArgs) -> anyhow::Result<u8> {
    let d = doctor::run();
    if args.json {
        emit(&(serde_json::to_string_pretty(&d).context("encoding JSON")? + "\n"))?;
    } else {
        emit(&doctor::render(&d))?;
    }
    Ok(0)
}

/// Runs one observation on a runtime of its own (the only async part).
fn observe_blocking(opts: observe::Options) -> anyhow::Result<observe::Outcome> {
    block_on(observe::run(opts))
}

fn cmd_observe(args: ObserveArgs) -> anyhow::Result<u8> {
    // Every field named: a new option must be handed on or refused here.
    let ObserveArgs {
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
    } = args;
    let outcome = observe_blocking(observe::Options {
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
    })?;
    Ok(if outcome.kprobe_not_attached {
        exit::MODE_UNAVAILABLE
    } else if outcome.self_check_failed {
        exit::SELF_CHECK_FAILED
    } else {
        0
    })
}

/// The engine's options for a front end that runs until a signal: no
/// report file, no live lines, no lookups.
fn engine_options(
    interval: Duration,
    mode: observe::RequestedMode,
    attribution: Attribution,
    cost: bool,
) -> observe::Options {
    observe::Options {
        duration: None,
        interval,
        json: None,
        mode,
        ready_file: None,
        quiet: true,
        fault_offset_skew: 0,
        lookups: false,
        cost,
        attribution,
    }
}

/// Runs `f` to its end on a single-threaded runtime of its own.
fn block_on<T, E>(f: impl std::future::Future<Output = Result<T, E>>) -> anyhow::Result<T>
where
    anyhow::Error: From<E>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    Ok(rt.block_on(f)?)
}

fn cmd_serve(args: ServeArgs) -> anyhow::Result<u8> {
    // Every field named: a new option must be handed on or refused here.
    let ServeArgs {
        listen,
        max_series,
        interval,
        mode,
        cost,
        attribution,
    } = args;
    block_on(serve::run(serve::Options {
        listen,
        max_series: usize::from(max_series),
        observe: engine_options(interval, mode, attribution, cost),
    }))?;
    Ok(0)
}

fn cmd_top(args: TopArgs) -> anyhow::Result<u8> {
    // Every field named: a new option must be handed on or refused here.
    let TopArgs {
        batch,
        interval,
        count,
        mode,
        attribution,
    } = args;
    block_on(top::run(top::Options {
        batch,
        count,
        observe: engine_options(interval, mode, attribution, false),
    }))?;
    Ok(0)
}

fn cmd_report(args: &ReportArgs) -> anyhow::Result<u8> {
    let report = read_report(&args.report)?;
    let rec = match &args.recommendation {
        None => None,
        Some(path) => {
            let text = safefile::read_capped(path, safefile::MAX_INPUT)
                .with_context(|| format!("reading {}", path.display()))?;
            Some(
                serde_json::from_slice::<recommend::Recommendation>(&text).with_context(|| {
                    format!(
                        "{} is not a ctscope recommendation (make one with `ctscope recommend --json`)",
                        path.display()
                    )
                })?,
            )
        }
    };
    match &args.html {
        Some(path) => {
            let page = share::html(&report, rec.as_ref());
            safefile::write_atomic(path, page.as_bytes(), 0o644)
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "ctscope: wrote {} ({} KiB)",
                path.display(),
                page.len().div_ceil(1024)
            );
        }
        None => emit(&observe::summary_text(&report))?,
    }
    Ok(0)
}

/// The report to recommend from: a file (`--from`), or a quiet observation.
fn recommend_input(args: &RecommendArgs) -> anyhow::Result<Report> {
    let Some(path) = &args.from else {
        let d = args.duration.unwrap_or(Duration::from_mins(1));
        eprintln!(
            "ctscope: observing for {:.0} s before recommending (Ctrl-C ends it early)",
            d.as_secs_f64()
        );
        return Ok(observe_blocking(observe::Options {
            duration: Some(d),
            interval: Duration::from_secs(1),
            json: None,
            mode: args.mode,
            ready_file: None,
            quiet: true,
            fault_offset_skew: 0,
            lookups: false,
            cost: false,
            attribution: Attribution::Auto,
        })?
        .report);
    };
    read_report(path)
}

/// An observe report from a file: a regular file, capped (`/dev/zero` must
/// not be read until memory runs out), its names made printable.
fn read_report(path: &std::path::Path) -> anyhow::Result<Report> {
    let text = safefile::read_capped(path, safefile::MAX_INPUT)
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
        *n = text::name(n);
    }
    Ok(report)
}

fn cmd_recommend(args: &RecommendArgs) -> anyhow::Result<u8> {
    let report = recommend_input(args)?;
    if let Some(why) = &report.interrupted {
        bail!(
            "the report observed nothing to recommend from ({}): observe again",
            text::escape(why, 500)
        );
    }
    let rec = recommend::recommend(
        &report,
        &recommend::Options {
            headroom: args.headroom,
            budget: args.memory_budget,
            target_chain: args.target_chain,
        },
    )?;
    let json = serde_json::to_string_pretty(&rec).context("encoding JSON")? + "\n";
    if let Some(out) = &args.out {
        report::write_atomic(out, &json).with_context(|| format!("writing {}", out.display()))?;
    }
    // `apply` without --from takes the last recommendation (root only: the
    // state directory is root's).
    if kernel::is_root()
        && let Err(e) = apply::save_last_recommendation(&apply::Paths::default(), &json)
    {
        log::warn!("could not keep the recommendation: {e}");
    }
    emit(&if args.json {
        json
    } else {
        recommend::render(&rec)
    })?;
    Ok(0)
}

fn cmd_apply(args: ApplyArgs) -> anyhow::Result<u8> {
    let ApplyArgs {
        from,
        dry_run,
        persist,
        yes,
        force,
        max_memory_share,
        etc_dir,
        state_dir,
    } = args;
    // Root first, before the file is read or anything planned: every check
    // below needs it (setns into each namespace).
    if !kernel::is_root() {
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
    let files = if done.files.is_empty() {
        String::new()
    } else {
        let names: Vec<String> = done.files.iter().map(|p| p.display().to_string()).collect();
        format!(", {} written", names.join(", "))
    };
    emit(&format!(
        "applied: {} runtime settings changed and verified{files}; the previous state is in {} (`ctscope rollback` restores it)\n",
        done.steps.len(),
        done.journal.display()
    ))?;
    Ok(0)
}

fn cmd_rollback(args: RollbackArgs) -> anyhow::Result<u8> {
    if !kernel::is_root() {
        bail!(ApplyError::NotRoot("rollback"));
    }
    let paths = apply::Paths {
        etc: args.etc_dir,
        state: args.state_dir,
        ..apply::Paths::default()
    };
    let r = apply::rollback(&paths)?;
    for w in &r.warnings {
        eprintln!("ctscope: warning: {w}");
    }
    let mut out = String::from("rolled back:\n");
    for v in &r.values {
        out.push_str(&format!("  {} = {}\n", v.name, v.before));
    }
    for f in &r.files {
        out.push_str(&format!("  restored {}\n", f.display()));
    }
    out.push_str(&format!("journal kept as {}\n", r.kept_as.display()));
    emit(&out)?;
    Ok(0)
}

fn cmd_version(args: &VersionArgs) -> anyhow::Result<u8> {
    let bytes = object::object_len();
    if args.json {
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
