//! Bench mode (`[bench]` in the scenario, run by `cargo xtask bench`): the same connection
//! workload again and again, without ctscope (twice: an A/A pair, the bench's own noise), with
//! ctscope's default probes, with `--mode kprobe` (the same observation through kprobes, on the
//! same kernel), with `--cost` (bpf_stats on) and with `--lookups`, so that what ctscope costs
//! can be compared within one VM.
//!
//! Every round runs each variant once, in an order rotated by one each round (round 0:
//! baseline, default, baseline-aa, kprobe, cost, lookups; round 1: default, baseline-aa, ...), so that a
//! drift of the machine over time (a table that grew) does not favour one variant. One
//! unrecorded baseline run warms the VM up first. Every run uses fresh source ports, and the
//! next run waits until the host's table is back to its size before the run: each run meets
//! the same table.
//!
//! What a run measures is the guest's busy time over its connections' whole life: from just
//! before the clients start until the table has drained (every entry deleted and freed), with
//! ctscope attached all along, so that its delete and free probes and its own userspace work
//! are inside the window.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ctscope_lab::{BenchRun, ClientSummary, Scenario};
use serde_json::{Value, json};

use crate::ctscope::{Ctscope, Ready};
use crate::netns::Netns;
use crate::{Lab, truth, workload};

/// The variants, in the order of round 0: the two baselines apart, so that the A/A pair
/// does not measure two neighbours only.
pub(crate) const VARIANTS: [&str; 6] = [
    "baseline",
    "default",
    "baseline-aa",
    "kprobe",
    "cost",
    "lookups",
];
/// When `wait_for_count` starts reaping expired entries: once every entry of the run has
/// expired (its timeouts are 1 s from its last packet, and the last packet was before the
/// clients reported), so that one read of `/proc/net/nf_conntrack` kills them all and
/// prints none. At 1.5 s a first read could meet entries not yet expired, print them, and
/// leave them to a second read: how much of that work a run did depended on timing, and
/// ctscope's variants run slightly slower. (7.3's runs still vary by up to 8 million guest
/// instructions, 1.2 % of a window, in some windows and not others: not identified.)
const REAP_AFTER: Duration = Duration::from_millis(2500);
/// The settling phase after ctscope is ready, before each window (see `one_run`).
const SETTLE: Duration = Duration::from_secs(3);
/// The idle phase after each window (see `one_run`).
const IDLE: Duration = Duration::from_secs(2);
/// After each run, the guest must be quiet over one slice of this length (see `quiesce`).
const QUIESCE_SLICE: Duration = Duration::from_millis(500);
/// Quiet: less busy time than this over a slice (0.4 % of it).
const QUIESCE_BUSY_NS: u64 = 2_000_000;
/// The longest `quiesce` waits.
const QUIESCE_MAX: Duration = Duration::from_secs(15);
/// Source ports the load generator may use (20000..65535).
const PORTS: u32 = 45_536;
const FIRST_PORT: u32 = 20_000;

/// The variants of round `round`, rotated.
pub(crate) fn order(round: u32) -> Vec<&'static str> {
    let k = round as usize % VARIANTS.len();
    VARIANTS[k..]
        .iter()
        .chain(&VARIANTS[..k])
        .copied()
        .collect()
}

/// ctscope's arguments for a variant (`None`: no ctscope).
fn ctscope_args(scenario: &Scenario, variant: &str) -> Option<Vec<String>> {
    let mut args = scenario.ctscope.args.clone();
    let has = |args: &[String], a: &str| args.iter().any(|x| x == a);
    match variant {
        "baseline" | "baseline-aa" => return None,
        "cost" if !has(&args, "--cost") => args.push("--cost".into()),
        // The same probes as kprobes, on the same kernel: what fentry saves.
        "kprobe" if !has(&args, "--mode") => args.extend(["--mode".into(), "kprobe".into()]),
        "lookups" if !has(&args, "--lookups") => args.push("--lookups".into()),
        _ => {}
    }
    Some(args)
}

/// The report keys a bench keeps.
fn report_subset(report: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for key in ["cost", "lookups", "inserts", "duration_s", "mode"] {
        out.insert(key.into(), report.get(key).cloned().unwrap_or(Value::Null));
    }
    Value::Object(out)
}

pub(crate) fn run(
    lab: &mut Lab,
    scenario: &Scenario,
    namespaces: &[Netns],
) -> Result<Vec<BenchRun>> {
    let Some(bench) = &scenario.bench else {
        bail!("not a bench scenario");
    };
    let ports = PortRanges::of(scenario)?;
    let mut results = Vec::new();
    let mut index = 0u32;
    let settle = Duration::from_secs(u64::from(bench.settle_max_s));
    no_time_wait(namespaces)?;
    warm_up(lab, scenario, namespaces, settle)?;
    index += 1;
    for round in 0..bench.rounds {
        for variant in order(round) {
            let src_port_base = ports.base(index)?;
            index += 1;
            let at = RunAt {
                round,
                variant,
                src_port_base,
            };
            results.push(one_run(lab, scenario, namespaces, settle, &at)?);
        }
    }
    Ok(results)
}

/// The source ports of the runs: consecutive ranges of one run's flows each.
struct PortRanges {
    /// The most flows one container's client opens in a run.
    per_run: u32,
    /// How many runs' ranges fit in [`PORTS`].
    slots: u32,
}

impl PortRanges {
    fn of(scenario: &Scenario) -> Result<Self> {
        let per_run = scenario
            .containers
            .iter()
            .map(|c| c.flows)
            .max()
            .unwrap_or(0);
        // Runs take consecutive port ranges, and start over once the ranges are used up: by
        // then the ports' earlier run is many runs back, its entries deleted (every run waits
        // for the table to drain) and no socket left in TIME_WAIT (see `no_time_wait`).
        let slots = PORTS.checked_div(per_run).unwrap_or(0);
        if slots < 2 {
            bail!(
                "runs of {per_run} flows need at most {} per container",
                PORTS / 2
            );
        }
        Ok(PortRanges { per_run, slots })
    }

    /// The first source port of the `index`th run (the warm-up is run 0).
    fn base(&self, index: u32) -> Result<u16> {
        u16::try_from(FIRST_PORT + (index % self.slots) * self.per_run)
            .context("source port base past 65535")
    }
}

/// No TIME_WAIT sockets: each run's 5,000 would stay 60 s (TCP_TIMEWAIT_LEN) in the
/// namespaces' socket tables, their timers firing inside later runs' windows, so that a
/// run's cost would depend on what ran before it (the first baseline after the warm-up
/// measured 2.7 % below the next ones). The conntrack side does not change: the entries
/// still go through FIN_WAIT .. TIME_WAIT on the packets they see.
fn no_time_wait(namespaces: &[Netns]) -> Result<()> {
    for ns in namespaces {
        ns.run(|| {
            std::fs::write("/proc/sys/net/ipv4/tcp_max_tw_buckets", "0")
                .context("write net.ipv4.tcp_max_tw_buckets")
        })
        .with_context(|| format!("namespace {}", ns.label()))?;
    }
    Ok(())
}

/// The warm-up: the first run after boot meets cold caches, slabs not grown yet, neighbour
/// entries not resolved; its figures are not kept.
fn warm_up(
    lab: &mut Lab,
    scenario: &Scenario,
    namespaces: &[Netns],
    settle: Duration,
) -> Result<()> {
    let start_count = truth::counts(&[Netns::Host])?.iter().sum::<u64>();
    let (clients, _, errors) = workload::run_clients(
        &lab.tools,
        &lab.cli.loadgen,
        scenario,
        Duration::from_secs(lab.cli.client_timeout_s),
        workload::RunOptions {
            src_port_base: u16::try_from(FIRST_PORT).context("first port")?,
            hold: false,
            disjoint_ports: false,
        },
    );
    lab.result
        .errors
        .extend(errors.into_iter().map(|e| format!("warm-up: {e}")));
    for c in clients {
        c.release();
    }
    wait_for_count(namespaces, start_count, settle).context("after the warm-up")?;
    println!("bench: warmed up");
    Ok(())
}

/// Which run: its round, its variant and its first source port.
struct RunAt {
    round: u32,
    variant: &'static str,
    src_port_base: u16,
}

/// The busy-time readings at both ends of a run's phases.
type Phase = (Result<Busy>, Result<Busy>);

/// One run of one variant: ctscope started and settled, the workload until the table has
/// drained, the idle phase, ctscope stopped, then the guest quiet again.
fn one_run(
    lab: &mut Lab,
    scenario: &Scenario,
    namespaces: &[Netns],
    settle: Duration,
    at: &RunAt,
) -> Result<BenchRun> {
    let RunAt { round, variant, .. } = *at;
    let host = [Netns::Host];
    let start_count = truth::counts(&host)?.iter().sum::<u64>();
    let mut ct = start_ctscope(lab, scenario, round, variant)?;
    // ctscope's first seconds are not what it costs per connection: after its probes
    // attached the guest stayed busy for up to 15 M instructions more (seen on 6.1 in
    // 2 of 3 default runs; the kernel's deferred work after loading and attaching,
    // or ctscope's own), a one-off start-up cost measured here and kept apart.
    let settle_phase = busy_over(SETTLE);
    let cpu_before = ct.as_ref().and_then(Ctscope::cpu_seconds);
    let busy_before = busy_snapshot();
    let (clients, summaries, errors) = workload::run_clients(
        &lab.tools,
        &lab.cli.loadgen,
        scenario,
        Duration::from_secs(lab.cli.client_timeout_s),
        workload::RunOptions {
            src_port_base: at.src_port_base,
            hold: false,
            disjoint_ports: false,
        },
    );
    let end_count = truth::counts(&host)?.iter().sum::<u64>();
    lab.result.errors.extend(
        errors
            .into_iter()
            .map(|e| format!("round {round} {variant}: {e}")),
    );
    for c in clients {
        c.release();
    }
    // The connections' whole life: the window ends once the table has drained, every
    // entry deleted and freed (the count falls in nf_conntrack_free), ctscope attached.
    let drained = wait_for_count(namespaces, start_count, settle)
        .with_context(|| format!("after round {round} {variant}"));
    let busy_after = busy_snapshot();
    let cpu_after = ct.as_ref().and_then(Ctscope::cpu_seconds);
    // What the guest does with no connection at all, after the run (ctscope has
    // settled: in the seconds after its start its idle cost varied by 5x): ctscope's
    // fixed cost per second (its timers, map reads, procfs), against the baselines'.
    let idle_phase = busy_over(IDLE);
    let ctscope_cpu_s = cpu_before.zip(cpu_after).map(|(b, a)| a - b);
    let report = ct.as_mut().map(|ct| stop_ctscope(lab, ct, round, variant));
    drained?;
    quiesce();
    let mut run = bench_run(at, &summaries);
    (run.busy_ns, run.window_ns) = busy_delta(lab, at, (busy_before, busy_after), "busy time");
    (run.idle_busy_ns, run.idle_window_ns) = busy_delta(lab, at, idle_phase, "idle busy time");
    (run.settle_busy_ns, run.settle_window_ns) =
        busy_delta(lab, at, settle_phase, "start-up busy time");
    run.inserts = end_count.saturating_sub(start_count);
    run.ctscope = report;
    run.ctscope_cpu_s = ctscope_cpu_s;
    print_run(&run);
    Ok(run)
}

/// Starts ctscope for a variant that runs it and waits until it is ready (`None`: a baseline).
fn start_ctscope(
    lab: &Lab,
    scenario: &Scenario,
    round: u32,
    variant: &str,
) -> Result<Option<Ctscope>> {
    let Some(args) = ctscope_args(scenario, variant) else {
        return Ok(None);
    };
    let mut ct = Ctscope::start_with(&lab.cli.ctscope, &args, false)?;
    match ct.wait_ready() {
        Ready::Attached(_) => Ok(Some(ct)),
        Ready::Exited(code) => {
            bail!("round {round} {variant}: ctscope exited with code {code}")
        }
        Ready::TimedOut => {
            ct.stop();
            bail!("round {round} {variant}: ctscope was not ready in time")
        }
    }
}

/// Stops ctscope and keeps the part of its report the bench uses (null when it wrote none:
/// an error of the run then).
fn stop_ctscope(lab: &mut Lab, ct: &mut Ctscope, round: u32, variant: &str) -> Value {
    let code = ct.stop();
    match Ctscope::report() {
        Ok(r) => report_subset(&r),
        Err(e) => {
            lab.result.errors.push(format!(
                "round {round} {variant}: no report (exit {code:?}): {e:#}"
            ));
            json!(null)
        }
    }
}

/// The busy-time readings before and after sleeping `phase`.
fn busy_over(phase: Duration) -> Phase {
    let before = busy_snapshot();
    std::thread::sleep(phase);
    (before, busy_snapshot())
}

/// A phase's busy time and length, ns; (None, None) and an error of the run when a reading
/// failed.
fn busy_delta(lab: &mut Lab, at: &RunAt, phase: Phase, what: &str) -> (Option<u64>, Option<u64>) {
    match phase {
        (Ok(b), Ok(a)) => {
            let window = a.monotonic_ns.saturating_sub(b.monotonic_ns);
            (Some(a.busy_ns.saturating_sub(b.busy_ns)), Some(window))
        }
        (Err(e), _) | (_, Err(e)) => {
            lab.result.errors.push(format!(
                "round {} {}: {what} not measured: {e:#}",
                at.round, at.variant
            ));
            (None, None)
        }
    }
}

/// A run's record from its clients' summaries; the busy times, inserts and ctscope's figures
/// are the caller's to fill in.
fn bench_run(at: &RunAt, summaries: &[ClientSummary]) -> BenchRun {
    let flows: u64 = summaries.iter().map(|s| s.load.flows).sum();
    let send_errors: u64 = summaries.iter().map(|s| s.load.send_errors).sum();
    let connect_failures: u64 = summaries.iter().map(|s| s.load.connect_failures).sum();
    // The clients run at once: the workload lasts as long as the slowest.
    let elapsed_s = summaries
        .iter()
        .map(|s| s.load.elapsed_s)
        .fold(0.0, f64::max);
    let rate = if elapsed_s > 0.0 {
        flows.saturating_sub(send_errors) as f64 / elapsed_s
    } else {
        0.0
    };
    BenchRun {
        round: at.round,
        variant: at.variant.to_string(),
        flows,
        send_errors,
        connect_failures,
        elapsed_s,
        rate,
        ..BenchRun::default()
    }
}

/// One line per run on the console.
fn print_run(r: &BenchRun) {
    let (round, variant, flows, elapsed_s, rate) =
        (r.round, r.variant.as_str(), r.flows, r.elapsed_s, r.rate);
    let (send_errors, connect_failures) = (r.send_errors, r.connect_failures);
    println!(
        "bench: round {round} {variant:11}: {flows} flows in {elapsed_s:.2} s = {rate:.0}/s ({send_errors} send errors, {connect_failures} connect failures); busy {} ns per connection",
        r.busy_ns
            .zip((flows > 0).then_some(flows))
            .map_or_else(|| "?".to_string(), |(b, f)| (b / f).to_string())
    );
}

/// Waits until the guest is quiet over a whole [`QUIESCE_SLICE`] (at most [`QUIESCE_MAX`]):
/// the kernel's deferred work after ctscope's exit (its maps freed, its programs and
/// trampolines released, after RCU grace periods) is about 12 million guest instructions,
/// seen in the start-up phase of every baseline run that followed a ctscope run. Where it
/// landed later, in the next run's window, 7.3's runs varied by as much (1.5 % between the
/// two baselines of one round), whatever the variant.
fn quiesce() {
    let deadline = Instant::now() + QUIESCE_MAX;
    while Instant::now() < deadline {
        let Ok(before) = busy_snapshot() else {
            return;
        };
        std::thread::sleep(QUIESCE_SLICE);
        let Ok(after) = busy_snapshot() else {
            return;
        };
        if after.busy_ns.saturating_sub(before.busy_ns) < QUIESCE_BUSY_NS {
            return;
        }
    }
    println!(
        "bench: the guest was not quiet within {} s",
        QUIESCE_MAX.as_secs()
    );
}

/// Reads the host namespace's `/proc/net/nf_conntrack` to its end (see `wait_for_count`),
/// discarding it; a kernel without it (no `CONFIG_NF_CONNTRACK_PROCFS`) leaves the GC to it.
fn reap_expired() {
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open("/proc/net/nf_conntrack") else {
        return;
    };
    let mut buf = vec![0u8; 64 * 1024];
    // Bounded: at most 4 GiB of text; the table holds far less.
    for _ in 0..65_536 {
        match f.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// CLOCK_MONOTONIC and the guest's busy time so far, both in ns.
struct Busy {
    monotonic_ns: u64,
    busy_ns: u64,
}

/// Reads [`Busy`], from the most precise source the kernel has:
///
/// - `/proc/timer_list` (kernel/time/timer_list.c): every CPU's `.idle_sleeptime` and
///   `.iowait_sleeptime`, nanoseconds kept by the NO_HZ idle code; busy = CLOCK_MONOTONIC
///   minus their sum. The reading CPU is busy (this process runs on it), so its idle time is
///   up to date; with the bench's one vCPU that is every CPU. 5.10 to 6.12 print them;
///   Debian's 7.3 does not.
/// - else `/proc/schedstat`: every CPU's `rq_cpu_time`, the nanoseconds its tasks ran, idle
///   task excepted (kernel/sched/stats.c, CONFIG_SCHEDSTATS, on in Debian's kernels).
///   Interrupts taken while idle are not in it.
///
/// (/proc/stat has busy and idle time only in 10 ms units.)
fn busy_snapshot() -> Result<Busy> {
    let timer_list = std::fs::read_to_string("/proc/timer_list").context("read /proc/timer_list");
    let now = monotonic_ns()?;
    if let Ok(idle_ns) = timer_list.and_then(|t| idle_from_timer_list(&t)) {
        return Ok(Busy {
            monotonic_ns: now,
            busy_ns: now.saturating_sub(idle_ns),
        });
    }
    // This process's running slice enters rq_cpu_time only when it is switched out: sleep
    // first, so that what it ran until now is counted and the slice read in is a fresh one
    // (a few microseconds) at both ends of a window.
    std::thread::sleep(Duration::from_millis(1));
    let monotonic_ns = monotonic_ns()?;
    let text = std::fs::read_to_string("/proc/schedstat")
        .context("neither /proc/timer_list idle times nor /proc/schedstat")?;
    Ok(Busy {
        monotonic_ns,
        busy_ns: run_time_from_schedstat(&text)?,
    })
}

/// The sum of every `cpuN` line's 7th number (`rq_cpu_time`, ns) of `/proc/schedstat`
/// (versions 15 to 17: `cpuN yld_count legacy sched_count sched_goidle ttwu_count ttwu_local
/// rq_cpu_time run_delay pcount`).
fn run_time_from_schedstat(text: &str) -> Result<u64> {
    let mut sum = 0u64;
    let mut seen = 0;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(cpu) = fields.next() else { continue };
        if !cpu.starts_with("cpu")
            || !cpu[3..].bytes().all(|b| b.is_ascii_digit())
            || cpu.len() == 3
        {
            continue;
        }
        let n: u64 = fields
            .nth(6)
            .context("a /proc/schedstat cpu line without rq_cpu_time")?
            .parse()
            .with_context(|| format!("/proc/schedstat: {line:?}"))?;
        sum = sum.saturating_add(n);
        seen += 1;
    }
    if seen == 0 {
        bail!("/proc/schedstat has no cpu lines");
    }
    Ok(sum)
}

fn monotonic_ns() -> Result<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) } != 0 {
        bail!("clock_gettime: {}", std::io::Error::last_os_error());
    }
    Ok(u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000
        + u64::try_from(ts.tv_nsec).unwrap_or(0))
}

/// The sum of every `.idle_sleeptime` and `.iowait_sleeptime` line (`N nsecs`).
fn idle_from_timer_list(text: &str) -> Result<u64> {
    let mut sum = 0u64;
    let mut seen = 0;
    for line in text.lines() {
        let line = line.trim();
        // Aligned by the kernel: ".idle_sleeptime : N nsecs", ".iowait_sleeptime: N nsecs".
        let Some(rest) = line
            .strip_prefix(".idle_sleeptime")
            .or_else(|| line.strip_prefix(".iowait_sleeptime"))
            .and_then(|r| r.trim_start().strip_prefix(':'))
        else {
            continue;
        };
        let n: u64 = rest
            .trim()
            .trim_end_matches("nsecs")
            .trim()
            .parse()
            .with_context(|| format!("/proc/timer_list: {line:?}"))?;
        sum = sum.saturating_add(n);
        seen += 1;
    }
    if seen == 0 {
        bail!("/proc/timer_list has no .idle_sleeptime (a kernel without NO_HZ?)");
    }
    Ok(sum)
}

/// Waits until the host's count is at most `target` again (the run's entries expired and were
/// reaped).
///
/// Expired entries are reaped by conntrack's GC worker, whose adaptive interval on 6.1 let a
/// table of 5,000 entries with 1 s timeouts wait about 60 s (guest time) for its pass, with the
/// machine idle and ctscope's fixed cost per second filling the window. Reading
/// `/proc/net/nf_conntrack` reaps them at once: `ct_seq_show` kills every expired entry it
/// meets (`nf_ct_should_gc` then `nf_ct_kill`, net/netfilter/nf_conntrack_standalone.c, v5.10
/// to v6.12), through `nf_ct_delete` as the GC worker does, so the same probes see the same
/// deaths. The read costs the same busy time in every variant.
fn wait_for_count(namespaces: &[Netns], target: u64, limit: Duration) -> Result<()> {
    let host = namespaces
        .iter()
        .position(|n| *n == Netns::Host)
        .context("no host namespace")?;
    let start = Instant::now();
    loop {
        let counts = truth::counts(namespaces)?;
        if counts[host] <= target {
            println!(
                "bench: table back to {} entries after {:.1} s",
                counts[host],
                start.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        // Once the workload's timeouts (1 s) have passed (see REAP_AFTER).
        if start.elapsed() >= REAP_AFTER {
            reap_expired();
        }
        if start.elapsed() >= limit {
            bail!(
                "the host's count stayed at {} (target {target}) for {} s: lower the timeouts",
                counts[host],
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_round_rotates_the_order() {
        assert_eq!(
            order(0),
            [
                "baseline",
                "default",
                "baseline-aa",
                "kprobe",
                "cost",
                "lookups"
            ]
        );
        assert_eq!(
            order(1),
            [
                "default",
                "baseline-aa",
                "kprobe",
                "cost",
                "lookups",
                "baseline"
            ]
        );
        assert_eq!(order(6), order(0));
    }

    #[test]
    fn idle_time_is_summed_over_cpus() {
        let text = "cpu: 0\n clock 0:\n  .idle_sleeptime : 1000 nsecs\n  .iowait_sleeptime: 20 nsecs\n\
                    cpu: 1\n  .idle_sleeptime: 300 nsecs\n  .iowait_sleeptime: 0 nsecs\n";
        assert_eq!(idle_from_timer_list(text).expect("parsed"), 1320);
        assert!(idle_from_timer_list("no such lines").is_err());
        assert!(idle_from_timer_list(".idle_sleeptime: x nsecs").is_err());
    }

    #[test]
    fn run_time_is_summed_over_cpus() {
        let text = "version 15\ntimestamp 4295\ncpu0 0 0 10 5 7 3 123456 99 4\ndomain0 3 1 2 3\n\
                    cpu1 0 0 10 5 7 3 1000 99 4\n";
        assert_eq!(run_time_from_schedstat(text).expect("parsed"), 124_456);
        assert!(run_time_from_schedstat("version 15\n").is_err());
        assert!(run_time_from_schedstat("cpu0 1 2\n").is_err());
    }

    #[test]
    fn the_running_kernel_reports_idle_time() {
        // The host kernel here has NO_HZ too: the reader works on a real /proc/timer_list
        // where it is readable (root).
        if let Ok(text) = std::fs::read_to_string("/proc/timer_list") {
            assert!(idle_from_timer_list(&text).expect("idle time") > 0);
        }
    }

    #[test]
    fn variants_choose_ctscope_arguments() {
        let s = Scenario::from_toml(
            "name = \"b\"\n[[containers]]\nname = \"a\"\nprotocol = \"tcp\"\nflows = 10\nclose = true\n[bench]\nrounds = 1\n",
        )
        .expect("valid");
        assert_eq!(ctscope_args(&s, "baseline"), None);
        assert_eq!(
            ctscope_args(&s, "default"),
            Some(vec!["observe".to_string()])
        );
        assert_eq!(
            ctscope_args(&s, "lookups"),
            Some(vec!["observe".to_string(), "--lookups".to_string()])
        );
        assert_eq!(ctscope_args(&s, "baseline-aa"), None);
        assert_eq!(
            ctscope_args(&s, "cost"),
            Some(vec!["observe".to_string(), "--cost".to_string()])
        );
    }
}
