//! lab-agent: the scenario driver inside the lab VM (docs/lab-contract.md, "lab-agent").
//!
//! It loads the conntrack modules, applies `[conntrack]`, builds a Docker-like host (bridge,
//! container namespaces, a wan namespace, masquerade), starts ctscope and waits until its probes
//! are attached, runs every container's load generator at once, snapshots the kernel's own
//! counters before and after, stops ctscope, checks that its kprobes are gone, and writes one
//! framed JSON result. Whatever fails, it still writes a result, with the failures in `errors`.

mod bench;
mod bpf_maps;
mod cmd;
mod conntrack_settings;
mod ctscope;
mod kprobes;
mod netns;
mod procs;
mod soak;
mod topology;
mod truth;
mod tuning;
mod workload;

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use ctscope_lab::{AgentResult, ContainerTruth, Scenario, SettleTruth, Truth, VM_MODULES, framing};

use crate::cmd::Tools;
use crate::ctscope::{Ctscope, Ready};
use crate::netns::Netns;
use crate::workload::Loadgen;

/// Drives one ctscope lab scenario inside the VM and writes the framed JSON result.
///
/// Steps: modprobe the lab modules; apply [conntrack] and raise every conntrack timeout to at
/// least 3600 s; build bridge ctlab0 (172.17.0.1/16), a namespace per container and the wan
/// namespace (198.18.0.2) with masquerade NAT; start the loadgen server and ctscope (waiting up to
/// 60 s for its ready file); count the conntrack probes (kprobes, and fentry/fexit trampolines);
/// snapshot the kernel's conntrack counters; run all clients at once; snapshot again; stop
/// ctscope with SIGINT; count the probes again (none may be left); write the result between
/// CTSCOPE-LAB-RESULT-BEGIN/END lines; release the clients. Exits 0 when the result was written.
#[derive(Debug, Parser)]
#[command(name = "lab-agent", version, about, long_about)]
struct Cli {
    /// Scenario file (TOML), e.g. /lab/scenario.toml.
    scenario: PathBuf,
    /// Where the framed result goes (the VM's second serial port, /dev/ttyS1, or a file).
    #[arg(long)]
    result: PathBuf,
    /// The ctscope binary.
    #[arg(long, default_value = "/bin/ctscope")]
    ctscope: String,
    /// The loadgen binary.
    #[arg(long, default_value = "/bin/loadgen")]
    loadgen: String,
    /// Do not modprobe the lab modules (e.g. when conntrack is built into the kernel).
    #[arg(long)]
    no_modprobe: bool,
    /// Remove the namespaces, the bridge and the nft table at the end. Pointless in the VM (it
    /// powers off); useful when trying the agent inside a throw-away namespace.
    #[arg(long)]
    teardown: bool,
    /// Longest time the clients may take together, in seconds.
    #[arg(long, default_value_t = 900)]
    client_timeout_s: u64,
}

/// Everything a run holds, so that the end of the run can always stop, write and release.
struct Lab {
    cli: Cli,
    tools: Tools,
    result: AgentResult,
    ctscope: Option<Ctscope>,
    server: Option<Loadgen>,
    clients: Vec<Loadgen>,
    built: bool,
    /// Conntrack kprobes counted right after ctscope was ready (goes into the truth).
    kprobes_during: Option<u64>,
    /// `[soak]`: when the clients started (the samples' time 0).
    soak_t0: Option<Instant>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let started = Instant::now();
    let mut lab = Lab {
        tools: Tools::find(),
        result: AgentResult {
            kernel_release: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            ..AgentResult::default()
        },
        cli,
        ctscope: None,
        server: None,
        clients: Vec::new(),
        built: false,
        kprobes_during: None,
        soak_t0: None,
    };
    println!(
        "lab: agent on kernel {}, scenario {}",
        lab.result.kernel_release,
        lab.cli.scenario.display()
    );
    match Scenario::load(&lab.cli.scenario) {
        Ok(scenario) => {
            lab.result.scenario.clone_from(&scenario.name);
            if let Err(e) = run(&mut lab, &scenario) {
                lab.result.errors.push(format!("{e:#}"));
            }
            finish_ctscope(&mut lab);
            let written = write_result(&lab.cli.result, &lab.result);
            release(&mut lab, &scenario);
            conclude(&lab, written, started)
        }
        Err(e) => {
            lab.result.scenario = lab
                .cli
                .scenario
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            lab.result.errors.push(format!("{e}"));
            let written = write_result(&lab.cli.result, &lab.result);
            conclude(&lab, written, started)
        }
    }
}

fn conclude(lab: &Lab, written: Result<()>, started: Instant) -> ExitCode {
    for e in &lab.result.errors {
        println!("lab: ERROR: {e}");
    }
    match written {
        Ok(()) => {
            println!(
                "lab: result written to {} ({} errors) after {:.1} s",
                lab.cli.result.display(),
                lab.result.errors.len(),
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("lab: cannot write the result: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The run, one fn per step of docs/lab-contract.md ("lab-agent").
fn run(lab: &mut Lab, scenario: &Scenario) -> Result<()> {
    let keep = prepare_conntrack(lab, scenario)?;
    let namespaces = build_host(lab, scenario, &keep)?;
    if scenario.bench.is_some() {
        let runs = bench::run(lab, scenario, &namespaces)?;
        lab.result.bench = Some(runs);
        return Ok(());
    }
    run_doctor(lab);
    start_ctscope(lab, scenario)?;
    let workload = run_workload(lab, scenario, &namespaces)?;
    record_truth(lab, scenario, &namespaces, workload)?;
    if let (Some(result), Some(ct), Some(t0)) =
        (lab.result.soak.as_mut(), lab.ctscope.as_ref(), lab.soak_t0)
    {
        // Every entry has died: what ctscope's maps hold now is what it leaks.
        match soak::inodes(&namespaces) {
            Ok(inodes) => result.end = Some(soak::sample(ct.pid(), &namespaces, &inodes, t0)),
            Err(e) => lab
                .result
                .errors
                .push(format!("the soak's end sample: {e:#}")),
        }
    }
    if scenario.tuning.is_some() {
        tuning::run(lab, scenario, &namespaces)?;
    }
    Ok(())
}

/// Steps 1 and 2: the modules, `[conntrack]`, and the host namespace's timeouts raised. Returns
/// the keys the scenario sets (the timeouts not to raise).
fn prepare_conntrack(lab: &mut Lab, scenario: &Scenario) -> Result<BTreeSet<String>> {
    if !lab.cli.no_modprobe {
        load_modules(&lab.tools);
    }
    if !Path::new("/proc/sys/net/netfilter/nf_conntrack_max").exists() {
        bail!("conntrack is not available: /proc/sys/net/netfilter/nf_conntrack_max is missing");
    }
    let failures = conntrack_settings::apply_host(scenario);
    if !failures.is_empty() {
        bail!("applying [conntrack]: {}", failures.join("; "));
    }
    let keep: BTreeSet<String> = scenario.conntrack.keys().cloned().collect();
    let raised =
        conntrack_settings::raise_timeouts(&Netns::Host, &keep).context("host namespace")?;
    println!(
        "lab: raised {raised} conntrack timeouts to >= {} s in the host namespace",
        conntrack_settings::MIN_TIMEOUT_S
    );
    Ok(keep)
}

/// Step 3: the Docker-like host (bridge, containers, wan with the loadgen server). Returns
/// every namespace of the lab, the host's first.
fn build_host(lab: &mut Lab, scenario: &Scenario, keep: &BTreeSet<String>) -> Result<Vec<Netns>> {
    lab.built = true;
    let created = topology::build(scenario, &lab.tools).context("building the lab network")?;
    for ns in &created {
        // Timeouts are per namespace and a new one starts from the kernel's defaults.
        conntrack_settings::raise_timeouts(ns, keep).with_context(|| ns.label().to_string())?;
        conntrack_settings::apply_timeouts(ns, scenario).with_context(|| ns.label().to_string())?;
    }
    println!(
        "lab: {} containers up behind {} (masquerade to {}){}",
        scenario.containers.len(),
        topology::BRIDGE,
        topology::WAN_IP,
        if scenario.containers.iter().any(|c| c.firewall) {
            ", some with their own firewall"
        } else {
            ""
        }
    );
    lab.server = Some(workload::start_server(&lab.tools, &lab.cli.loadgen)?);
    let mut namespaces = vec![Netns::Host];
    namespaces.extend(created);
    Ok(namespaces)
}

/// What ctscope says of this kernel before it observes: the lab holds it to what the run then
/// shows (the `doctor` check).
fn run_doctor(lab: &mut Lab) {
    match ctscope::doctor(&lab.cli.ctscope) {
        Ok(d) => {
            println!(
                "lab: ctscope doctor: kprobe available {}, observe would use {} mode",
                d["kprobe"]["available"], d["mode"]
            );
            lab.result.doctor = Some(d);
        }
        Err(e) => lab.result.errors.push(format!("ctscope doctor: {e:#}")),
    }
}

/// Step 4: ctscope started and ready, its probes counted.
fn start_ctscope(lab: &mut Lab, scenario: &Scenario) -> Result<()> {
    if scenario.serves() {
        topology::untracked_loopback(&lab.tools)?;
    }
    let ct = lab
        .ctscope
        .insert(Ctscope::start(&lab.cli.ctscope, &scenario.ctscope.args)?);
    match ct.wait_ready() {
        Ready::Attached(after) => {
            println!("lab: ctscope attached after {:.1} s", after.as_secs_f64());
            lab.kprobes_during = count_kprobes(&mut lab.result.errors, "while ctscope runs");
            Ok(())
        }
        Ready::Exited(code) => {
            bail!("ctscope exited with code {code} before it was ready; workload skipped")
        }
        Ready::TimedOut => bail!(
            "ctscope was not ready within {:?}; workload skipped",
            ctscope::READY_LIMIT
        ),
    }
}

/// What the insert phase leaves for the truth: the snapshots around it and the clients' totals.
struct Workload {
    before: Vec<truth::NsSnapshot>,
    mid: Vec<truth::NsSnapshot>,
    /// When the clients were done.
    done: Instant,
    totals: truth::FlowTotals,
    containers: Vec<ContainerTruth>,
}

/// Step 5, the insert phase: a snapshot, every client at once, a snapshot a second later.
fn run_workload(lab: &mut Lab, scenario: &Scenario, namespaces: &[Netns]) -> Result<Workload> {
    let before = truth::snapshot_all(namespaces).context("truth before the run")?;
    println!(
        "lab: starting {} clients ({} flows)",
        scenario.containers.len(),
        scenario.total_flows()
    );
    let t0 = Instant::now();
    let sampler = match (&scenario.soak, lab.ctscope.as_ref()) {
        (Some(s), Some(ct)) => Some(soak::Sampler::start(
            ct.pid(),
            namespaces.to_vec(),
            Duration::from_secs(u64::from(s.sample_s)),
            t0,
        )?),
        _ => None,
    };
    let (clients, summaries, errors) = workload::run_clients(
        &lab.tools,
        &lab.cli.loadgen,
        scenario,
        client_limit(lab.cli.client_timeout_s, scenario),
        workload::RunOptions {
            disjoint_ports: scenario.tuning.is_some(),
            ..workload::RunOptions::default()
        },
    );
    let done = Instant::now();
    if let Some(sampler) = sampler {
        let samples = sampler.finish().unwrap_or_else(|e| {
            lab.result.errors.push(e);
            Vec::new()
        });
        lab.result.soak = Some(ctscope_lab::SoakResult {
            churn_s: t0.elapsed().as_secs_f64(),
            samples,
            end: None,
        });
        lab.soak_t0 = Some(t0);
    }
    lab.clients = clients;
    lab.result.errors.extend(errors);
    let totals = truth::FlowTotals {
        flows: scenario.total_flows(),
        send_errors: summaries.iter().map(|s| s.load.send_errors).sum(),
        connect_failures: summaries.iter().map(|s| s.load.connect_failures).sum(),
    };
    println!(
        "lab: clients done: {} flows, {} send errors, {} connect failures in {:.1} s",
        totals.flows,
        totals.send_errors,
        totals.connect_failures,
        t0.elapsed().as_secs_f64()
    );

    // Let the last packets (SYN-ACKs, final ACKs) pass conntrack before the count is read.
    std::thread::sleep(Duration::from_secs(1));
    let mid = truth::snapshot_all(namespaces).context("truth after the clients")?;
    let mid_at = t0.elapsed().as_secs_f64();
    // A soak's entries die during the churn on purpose: its truth does not rest on the
    // insert phase (truth::compute_soak).
    if let Some(problem) = insert_phase_problem(scenario, &summaries, mid_at)
        && scenario.soak.is_none()
    {
        lab.result.errors.push(problem);
    }
    let containers = container_truth(scenario, &summaries);
    lab.result.clients = summaries;
    Ok(Workload {
        before,
        mid,
        done,
        totals,
        containers,
    })
}

/// How long the clients may take: `--client-timeout-s`, or for paced clients (a soak) at
/// least their churn and 5 minutes more.
fn client_limit(timeout_s: u64, scenario: &Scenario) -> Duration {
    let paced = scenario.churn_s().map_or(0, |c| c.ceil() as u64 + 300);
    Duration::from_secs(timeout_s.max(paced))
}

/// Step 5, the end: the counts stable (settled, with `[expiry]`), the last snapshot, and the
/// truth computed and put into the result.
fn record_truth(
    lab: &mut Lab,
    scenario: &Scenario,
    namespaces: &[Netns],
    w: Workload,
) -> Result<()> {
    // The counts must be stable before ctscope stops: a death between the last snapshot and
    // ctscope's exit would be in the truth's deletes but not in ctscope's lifetimes.
    let settle = if let Some(expiry) = &scenario.expiry {
        Some(settle(
            namespaces,
            &w.before,
            w.done,
            Duration::from_secs(u64::from(expiry.wait_max_s)),
            scenario.lowered_timeout_s().unwrap_or(0),
            &mut lab.result.errors,
        )?)
    } else {
        std::thread::sleep(Duration::from_secs(1));
        None
    };
    let after = truth::snapshot_all(namespaces).context("truth at the end")?;
    let (truth, problems) = if scenario.soak.is_some() {
        let host_sent = w
            .containers
            .iter()
            .filter(|c| !c.firewall)
            .map(|c| c.flows.saturating_sub(c.send_errors))
            .sum();
        truth::compute_soak(&w.before, &after, w.totals, host_sent)
    } else {
        truth::compute(&w.before, &w.mid, &after, w.totals)
    };
    print_truth(&truth);
    let mut containers = w.containers;
    for c in &mut containers {
        match Netns::Named(c.netns.clone()).inode() {
            Ok(inode) => c.inode = inode,
            Err(e) => lab.result.errors.push(format!("{}: {e:#}", c.netns)),
        }
    }
    lab.result.truth = Some(Truth {
        kprobes_during: lab.kprobes_during,
        containers,
        settle,
        ..truth
    });
    lab.result.errors.extend(problems);
    Ok(())
}

/// The truth on the console: the totals, and each namespace that saw activity.
fn print_truth(truth: &Truth) {
    println!(
        "lab: truth: {} inserts, {} deletes, count {} -> {}, drop {}, insert_failed {}, early_drop {}, chaintoolong {}",
        truth.inserts,
        truth.deletes,
        truth.count_before,
        truth.count_after,
        truth.stat_delta.drop,
        truth.stat_delta.insert_failed,
        truth.stat_delta.early_drop,
        truth.stat_delta.chaintoolong
    );
    for ns in truth.per_netns.iter().filter(|n| n.active()) {
        println!(
            "lab: truth {} (inode {}): {} inserts, {} deletes, count {} -> {}, drop {}, insert_failed {}, early_drop {}",
            ns.name,
            ns.inode,
            ns.inserts,
            ns.deletes,
            ns.count_before,
            ns.count_after,
            ns.stat_delta.drop,
            ns.stat_delta.insert_failed,
            ns.stat_delta.early_drop
        );
    }
}

/// Why the insert phase (before the agent's snapshot after the clients) may have seen an entry
/// expire, which would make the count rise undercount the inserts; `None` when it cannot have.
/// An entry lives at least the shortest lowered timeout after its last packet, and every
/// packet of a flow was sent after the clients started (`t0`, at most `mid_at` seconds before
/// the snapshot) or, kept alive, in its client's last round.
fn insert_phase_problem(
    scenario: &Scenario,
    summaries: &[ctscope_lab::ClientSummary],
    mid_at: f64,
) -> Option<String> {
    let timeout = scenario.lowered_timeout_s()? as f64;
    let mut problems = Vec::new();
    for s in summaries {
        if s.load.max_refresh_gap_s >= timeout {
            problems.push(format!(
                "client {}: {:.1} s between two datagrams of one flow, timeout {timeout} s",
                s.container, s.load.max_refresh_gap_s
            ));
        }
        if mid_at - s.load.last_round_start_s >= timeout {
            problems.push(format!(
                "client {}: the snapshot came {:.1} s after its last round started, timeout {timeout} s",
                s.container,
                mid_at - s.load.last_round_start_s
            ));
        }
    }
    (!problems.is_empty()).then(|| {
        format!(
            "entries may have expired during the insert phase, so the truth's inserts may be short: {} (raise the timeouts or lower the flows)",
            problems.join("; ")
        )
    })
}

/// Per-container truth (the namespace inode is filled in by the caller).
fn container_truth(
    scenario: &Scenario,
    summaries: &[ctscope_lab::ClientSummary],
) -> Vec<ContainerTruth> {
    scenario
        .containers
        .iter()
        .enumerate()
        .map(|(index, c)| {
            let load = summaries
                .iter()
                .find(|s| s.container == c.name)
                .map(|s| s.load.clone())
                .unwrap_or_default();
            ContainerTruth {
                name: c.name.clone(),
                netns: c.netns(),
                inode: 0,
                addresses: vec![topology::container_addr(index).0],
                protocol: c.protocol.as_str().to_string(),
                flows: u64::from(c.flows),
                send_errors: load.send_errors,
                connect_failures: load.connect_failures,
                firewall: c.firewall,
            }
        })
        .collect()
}

/// Waits until every namespace's count is back at most to where it was before the run (the
/// entries expired and the kernel reaped them), watching the total fall. A target not reached
/// within `limit` is an error of the run.
fn settle(
    namespaces: &[Netns],
    before: &[truth::NsSnapshot],
    done: Instant,
    limit: Duration,
    timeout_s: u64,
    errors: &mut Vec<String>,
) -> Result<SettleTruth> {
    let targets: Vec<u64> = namespaces
        .iter()
        .map(|ns| before.iter().find(|b| &b.ns == ns).map_or(0, |b| b.count))
        .collect();
    let target: u64 = targets.iter().sum();
    let mut out = SettleTruth {
        timeout_s,
        target,
        ..SettleTruth::default()
    };
    let start = Instant::now();
    let mut last = None;
    loop {
        let counts = truth::counts(namespaces)?;
        let total: u64 = counts.iter().sum();
        let t = (done.elapsed().as_secs_f64() * 10.0).round() / 10.0;
        if last.is_none() {
            out.count_start = total;
        } else if out.first_reap_s.is_none() && Some(total) < last {
            out.first_reap_s = Some(t);
        }
        if last != Some(total) {
            out.timeline.push((t, total));
            last = Some(total);
        }
        if counts.iter().zip(&targets).all(|(c, t)| c <= t) {
            out.settled_s = Some(t);
            out.reap_lag_s = Some(((t - timeout_s as f64) * 10.0).round() / 10.0);
            println!(
                "lab: counts settled {t:.1} s after the clients (shortest timeout {timeout_s} s, first entry gone at {} s)",
                out.first_reap_s
                    .map_or_else(|| "-".to_string(), |f| format!("{f:.1}"))
            );
            return Ok(out);
        }
        if start.elapsed() >= limit {
            // What is left, for the log: a few entries of each namespace still above target.
            let mut left = Vec::new();
            for ((ns, c), t) in namespaces.iter().zip(&counts).zip(&targets) {
                if c > t {
                    let sample = ns
                        .run(|| {
                            let text =
                                std::fs::read_to_string("/proc/thread-self/net/nf_conntrack")
                                    .unwrap_or_default();
                            Ok(text.lines().take(3).collect::<Vec<_>>().join(" | "))
                        })
                        .unwrap_or_default();
                    left.push(format!("{}: {c} (e.g. {sample})", ns.label()));
                }
            }
            errors.push(format!(
                "the counts did not fall back to {target} within {} s of waiting (still {total}; {}): ctscope may see deaths the truth does not",
                limit.as_secs(),
                left.join("; ")
            ));
            return Ok(out);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Counts conntrack probes now; a list that cannot be read is an error of the run, since
/// the probes-detached check then has nothing to stand on.
fn count_kprobes(errors: &mut Vec<String>, when: &str) -> Option<u64> {
    match kprobes::count() {
        Ok(n) => {
            println!(
                "lab: {n} conntrack probes (kprobes in {}, trampolines in {}) {when}",
                kprobes::LIST,
                kprobes::FUNCTIONS
            );
            Some(n)
        }
        Err(e) => {
            errors.push(format!("cannot count kprobes {when}: {e:#}"));
            None
        }
    }
}

/// modprobe every lab module; a module this kernel lacks (or has built in) is fine.
fn load_modules(tools: &Tools) {
    let mut missing = Vec::new();
    for m in VM_MODULES {
        if cmd::run(&tools.modprobe, &[m]).is_err() {
            missing.push(*m);
        }
    }
    if missing.is_empty() {
        println!("lab: modules loaded");
    } else {
        println!("lab: modules loaded; not available: {}", missing.join(", "));
    }
}

/// Stops ctscope (if it was started), puts its exit code, stderr tail and report into the
/// result, and counts the conntrack kprobes it left behind. A missing report is an error.
///
/// The report is read whatever the exit code: 0 and 5 (self-check failed) both mean that the
/// run completed and the report was written, and the lab's checks judge the code itself.
fn finish_ctscope(lab: &mut Lab) {
    let Some(ct) = lab.ctscope.as_mut() else {
        return;
    };
    let serve = ct.is_serving();
    if serve && ct.exit_code().is_none() {
        match ct.scrape() {
            Ok(text) => lab.result.metrics = Some(text),
            Err(e) => lab
                .result
                .errors
                .push(format!("scraping ctscope serve: {e:#}")),
        }
    }
    let exit = ct.stop();
    let code = exit.or(ct.exit_code());
    lab.result.ctscope_exit = code;
    lab.result.ctscope_stop_s = ct.stop_s;
    lab.result.ctscope_stderr_tail = ct.stderr_tail();
    match exit {
        Some(code) => println!(
            "lab: ctscope exited with code {code}{}",
            ctscope::exit_meaning(code)
        ),
        None => lab.result.errors.push(format!(
            "ctscope did not exit within {:?} of SIGINT and was killed",
            ctscope::STOP_LIMIT
        )),
    }
    match Ctscope::report() {
        _ if serve => {}
        Ok(report) => lab.result.ctscope = Some(report),
        Err(e) => lab.result.errors.push(match code {
            Some(c) if ctscope::wrote_report(c) => {
                format!("ctscope exited with code {c}, which promises a report, but: {e:#}")
            }
            Some(c) => format!("no ctscope report (exit code {c}): {e:#}"),
            None => format!("no ctscope report: {e:#}"),
        }),
    }

    // After the exit, not before: detaching is ctscope's job on every exit path.
    match kprobes::count_after_exit() {
        Ok((n, waited)) => {
            println!(
                "lab: {n} conntrack probes (kprobes in {}, trampolines in {}) after ctscope exited (looked for {:.1} s)",
                kprobes::LIST,
                kprobes::FUNCTIONS,
                waited.as_secs_f64()
            );
            if let Some(t) = lab.result.truth.as_mut() {
                t.kprobes_after_exit = Some(n);
            }
        }
        Err(e) => lab
            .result
            .errors
            .push(format!("cannot count kprobes after ctscope exited: {e:#}")),
    }
}

/// Lets the clients close their connections, stops the server, and optionally tears down.
fn release(lab: &mut Lab, scenario: &Scenario) {
    let clients = std::mem::take(&mut lab.clients);
    let n = clients.len();
    let mut killed = 0;
    for c in clients {
        let name = c.name.clone();
        if !c.release() {
            killed += 1;
            println!("lab: client {name} had to be killed");
        }
    }
    let server = lab.server.take().map(workload::Loadgen::release);
    println!(
        "lab: released {n} clients ({killed} killed){}",
        match server {
            Some(true) => ", server stopped",
            Some(false) => ", server killed",
            None => "",
        }
    );
    if lab.cli.teardown && lab.built {
        let failures = topology::teardown(scenario, &lab.tools);
        if failures.is_empty() {
            println!("lab: torn down");
        } else {
            println!("lab: teardown: {}", failures.join("; "));
        }
    }
}

/// Writes the framed result and makes sure it left the machine (a tty is drained, a file synced).
fn write_result(path: &Path, result: &AgentResult) -> Result<()> {
    let json = serde_json::to_string(result).context("encoding the result")?;
    let mut out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    out.write_all(framing::frame(&json).as_bytes())
        .and_then(|()| out.flush())
        .with_context(|| format!("write {}", path.display()))?;
    let fd = out.as_raw_fd();
    // SAFETY: isatty() only inspects the descriptor, which `out` keeps open.
    if unsafe { libc::isatty(fd) } == 1 {
        // SAFETY: as above; tcdrain() blocks until the serial port has sent everything.
        if unsafe { libc::tcdrain(fd) } != 0 {
            bail!(
                "tcdrain {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
    } else {
        out.sync_all()
            .with_context(|| format!("fsync {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn paced_clients_get_their_churn_and_more() {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/soak.toml"),
        )
        .expect("bench/soak.toml");
        let mut soak = Scenario::from_toml(&text).expect("valid");
        assert_eq!(client_limit(900, &soak), Duration::from_mins(15));
        for c in &mut soak.containers {
            c.rate = Some(20);
            c.flows = 36_000;
        }
        assert_eq!(client_limit(900, &soak), Duration::from_mins(35));
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
        let cli =
            Cli::try_parse_from(["lab-agent", "/lab/scenario.toml", "--result", "/dev/ttyS1"])
                .expect("the /init command line parses");
        assert_eq!(cli.ctscope, "/bin/ctscope");
        assert_eq!(cli.loadgen, "/bin/loadgen");
        assert!(!cli.teardown && !cli.no_modprobe);
    }
}
