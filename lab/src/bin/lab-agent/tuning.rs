//! `[tuning]`: the tuner's closed loop, after the normal (first) run of the scenario.
//!
//! 1. ctscope's first report is kept; the clients are released and the table is flushed.
//! 2. `ctscope recommend --from <report> --json`, then `ctscope apply --yes` (with
//!    `--persist` into a scratch /etc when the scenario says so). The agent reads the kernel's
//!    settings itself before and after.
//! 3. The table is flushed again and the same workload runs on fresh source ports, observed
//!    by ctscope again, with its own truth.
//! 4. `ctscope rollback`: every setting must be back, every persisted file gone.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ctscope_lab::{Scenario, TuningResult};

use crate::ctscope::{Ctscope, Ready};
use crate::netns::Netns;
use crate::{Lab, finish_ctscope, truth, workload};

const BEFORE_REPORT: &str = "/tmp/tune-before.json";
const RECOMMENDATION: &str = "/tmp/tune-recommendation.json";
const ETC: &str = "/tmp/tune-etc";
const STATE: &str = "/tmp/tune-state";
const SYSCTL_DIR: &str = "/proc/sys/net/netfilter";

/// The settings the tuner may change, by short sysctl name (`buckets`, `max`, `*timeout*`).
pub(crate) fn settings() -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(SYSCTL_DIR) else {
        return out;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(short) = name.strip_prefix("nf_conntrack_") else {
            continue;
        };
        if !(short == "buckets" || short == "max" || short.contains("timeout")) {
            continue;
        }
        if let Ok(v) = std::fs::read_to_string(e.path())
            && let Ok(v) = v.trim().parse()
        {
            out.insert(short.to_string(), v);
        }
    }
    out
}

/// Deletes every conntrack entry of `ns` (ctnetlink `IPCTNL_MSG_CT_DELETE` without a tuple:
/// what `conntrack -F` sends), so that the replay meets an empty table.
fn flush(ns: &Netns) -> Result<()> {
    ns.run(|| {
        // SAFETY: plain socket(2); the descriptor is owned by `fd` below.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if raw < 0 {
            bail!("netlink socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
        use std::os::fd::AsRawFd as _;
        // nlmsghdr (16) + nfgenmsg (4): type (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE.
        let mut msg = [0u8; 20];
        msg[0..4].copy_from_slice(&20u32.to_ne_bytes());
        msg[4..6].copy_from_slice(&((1u16 << 8) | 2).to_ne_bytes());
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
        msg[6..8].copy_from_slice(&flags.to_ne_bytes());
        msg[8..12].copy_from_slice(&1u32.to_ne_bytes());
        // nfgenmsg: family AF_UNSPEC with version 0: every family (`ctnetlink_del_conntrack`).
        // SAFETY: sends `msg`, which outlives the call, on the socket owned by `fd`.
        let sent = unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if sent != msg.len() as isize {
            bail!("netlink send: {}", std::io::Error::last_os_error());
        }
        let mut buf = [0u8; 256];
        // SAFETY: receives into `buf`, which outlives the call.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 20 {
            bail!("netlink recv: {}", std::io::Error::last_os_error());
        }
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let errno = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
        if kind != libc::NLMSG_ERROR as u16 || errno != 0 {
            bail!("conntrack flush refused: type {kind}, error {errno}");
        }
        Ok(())
    })
    .with_context(|| format!("flushing conntrack in {}", ns.label()))
}

fn ctscope(binary: &str, args: &[&str]) -> Result<(i32, String, String)> {
    let out = Command::new(binary)
        .args(args)
        .args(crate::ctscope::NETNS_CONTAINERS)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {binary}"))?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The loop, after the first run: `lab.result` holds that run's report and truth.
pub(crate) fn run(lab: &mut Lab, scenario: &Scenario, namespaces: &[Netns]) -> Result<()> {
    let Some(tuning) = &scenario.tuning else {
        return Ok(());
    };
    // The first run's ctscope ends here, its report and truth stay the result's own.
    finish_ctscope(lab);
    lab.ctscope = None;
    let mut out = TuningResult::default();
    let result = closed_loop(lab, scenario, tuning, namespaces, &mut out);
    lab.result.tuning = Some(out);
    result
}

/// The steps of the module's doc, in order; `out` keeps what each step read, even when a later
/// one fails.
fn closed_loop(
    lab: &mut Lab,
    scenario: &Scenario,
    tuning: &ctscope_lab::Tuning,
    namespaces: &[Netns],
    out: &mut TuningResult,
) -> Result<()> {
    flush_after_first_run(lab, namespaces)?;
    let bin = lab.cli.ctscope.clone();
    recommend(&bin, tuning, out)?;
    apply(&bin, tuning, out)?;
    replay(lab, scenario, namespaces, out)?;
    rollback(&bin, out)
}

/// Step 1: the first report kept for recommend, the clients released, every table flushed.
fn flush_after_first_run(lab: &mut Lab, namespaces: &[Netns]) -> Result<()> {
    let report = lab
        .result
        .ctscope
        .clone()
        .context("the first run has no ctscope report: nothing to recommend from")?;
    std::fs::write(BEFORE_REPORT, report.to_string()).context(BEFORE_REPORT)?;
    for c in std::mem::take(&mut lab.clients) {
        c.release();
    }
    crate::cmd::run(&lab.tools.modprobe, &["nf_conntrack_netlink"])
        .context("the table flush needs ctnetlink")?;
    for ns in namespaces {
        flush(ns)?;
    }
    Ok(())
}

/// Step 2a: `ctscope recommend --json` (kept), and its text on the console.
fn recommend(bin: &str, tuning: &ctscope_lab::Tuning, out: &mut TuningResult) -> Result<()> {
    let mut args = vec![
        "recommend",
        "--from",
        BEFORE_REPORT,
        "--json",
        "--out",
        RECOMMENDATION,
    ];
    args.extend(tuning.recommend_args.iter().map(String::as_str));
    let (code, stdout, stderr) = ctscope(bin, &args)?;
    out.recommend_exit = Some(code);
    if code != 0 {
        bail!("ctscope recommend exited {code}: {}", stderr.trim());
    }
    out.recommendation =
        Some(serde_json::from_str(&stdout).context("ctscope recommend --json printed no JSON")?);
    for line in stderr.lines() {
        println!("[ctscope recommend] {line}");
    }
    let (_, text, _) = ctscope(bin, &["recommend", "--from", BEFORE_REPORT])?;
    for line in text.lines() {
        println!("[ctscope recommend] {line}");
    }
    Ok(())
}

/// Step 2b: `ctscope apply --yes`, with the kernel's settings read before and after and the
/// persisted files read back.
fn apply(bin: &str, tuning: &ctscope_lab::Tuning, out: &mut TuningResult) -> Result<()> {
    out.settings_before = settings();
    let mut args = vec![
        "apply",
        "--from",
        RECOMMENDATION,
        "--yes",
        "--etc-dir",
        ETC,
        "--state-dir",
        STATE,
    ];
    if tuning.persist {
        args.push("--persist");
    }
    // A risk the scenario takes on purpose (checked: each one must be printed as a warning).
    if tuning.force {
        args.push("--force");
    }
    let (code, stdout, stderr) = ctscope(bin, &args)?;
    for line in stdout.lines().chain(stderr.lines()) {
        println!("[ctscope apply] {line}");
    }
    out.apply_exit = Some(code);
    out.apply_output = format!("{stdout}{stderr}");
    out.settings_applied = settings();
    out.persisted = persisted_files();
    if code != 0 {
        bail!("ctscope apply exited {code}");
    }
    Ok(())
}

/// Step 3, the replay: an empty table, the same workload on fresh ports, observed again.
fn replay(
    lab: &mut Lab,
    scenario: &Scenario,
    namespaces: &[Netns],
    out: &mut TuningResult,
) -> Result<()> {
    for ns in namespaces {
        flush(ns)?;
    }
    let mut ct = Ctscope::start(&lab.cli.ctscope, &scenario.ctscope.args)?;
    match ct.wait_ready() {
        Ready::Attached(_) => {}
        Ready::Exited(code) => bail!("replay: ctscope exited with code {code} before it was ready"),
        Ready::TimedOut => {
            ct.stop();
            bail!("replay: ctscope was not ready in time")
        }
    }
    let before = truth::snapshot_all(namespaces).context("replay truth before")?;
    // Fresh ports: above every port of the first run (which used disjoint ranges too).
    let base = u16::try_from(20_000 + scenario.total_flows()).context("replay source ports")?;
    println!("lab: replay after apply: {} flows", scenario.total_flows());
    let (clients, summaries, errors) = workload::run_clients(
        &lab.tools,
        &lab.cli.loadgen,
        scenario,
        Duration::from_secs(lab.cli.client_timeout_s),
        workload::RunOptions {
            src_port_base: base,
            hold: true,
            disjoint_ports: true,
        },
    );
    lab.result
        .errors
        .extend(errors.into_iter().map(|e| format!("replay: {e}")));
    std::thread::sleep(Duration::from_secs(1));
    let mid = truth::snapshot_all(namespaces).context("replay truth after the clients")?;
    std::thread::sleep(Duration::from_secs(1));
    let after = truth::snapshot_all(namespaces).context("replay truth at the end")?;
    let totals = truth::FlowTotals {
        flows: scenario.total_flows(),
        send_errors: summaries.iter().map(|s| s.load.send_errors).sum(),
        connect_failures: summaries.iter().map(|s| s.load.connect_failures).sum(),
    };
    let (replay_truth, problems) = truth::compute(&before, &mid, &after, totals);
    lab.result
        .errors
        .extend(problems.into_iter().map(|p| format!("replay: {p}")));
    let code = ct.stop();
    println!(
        "lab: replay truth: {} inserts, drop {}, insert_failed {}, early_drop {}; ctscope exit {code:?}",
        replay_truth.inserts,
        replay_truth.stat_delta.drop,
        replay_truth.stat_delta.insert_failed,
        replay_truth.stat_delta.early_drop
    );
    match Ctscope::report() {
        Ok(r) => out.replay_ctscope = Some(r),
        Err(e) => lab
            .result
            .errors
            .push(format!("replay: no ctscope report: {e:#}")),
    }
    out.replay_truth = Some(replay_truth);
    out.replay_clients = summaries;
    for c in clients {
        c.release();
    }
    Ok(())
}

/// Step 4: `ctscope rollback`, then the settings and the persisted files read again.
fn rollback(bin: &str, out: &mut TuningResult) -> Result<()> {
    let (code, stdout, stderr) =
        ctscope(bin, &["rollback", "--etc-dir", ETC, "--state-dir", STATE])?;
    for line in stdout.lines().chain(stderr.lines()) {
        println!("[ctscope rollback] {line}");
    }
    out.rollback_exit = Some(code);
    out.settings_rolled_back = settings();
    out.left_after_rollback = out
        .persisted
        .iter()
        .filter(|(p, _)| std::path::Path::new(p).exists())
        .map(|(p, _)| p.clone())
        .collect();
    Ok(())
}

/// Every file under the scratch /etc, with its content.
fn persisted_files() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for sub in ["sysctl.d", "modprobe.d", "modules-load.d"] {
        let dir = std::path::Path::new(ETC).join(sub);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if let Ok(text) = std::fs::read_to_string(&path) {
                out.push((path.display().to_string(), text));
            }
        }
    }
    out.sort();
    out
}
