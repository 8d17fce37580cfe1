//! The lab assertions (docs/lab-contract.md, "Lab assertions"), applied to one result.
//!
//! Every assertion is its own [`Check`], so a report shows all that failed, not only the first.
//! A value that is missing or null never passes: a run without a ctscope report, or with
//! ctscope in another mode than the kernel calls for (`mode`), fails.
//!
//! - [`exact`]: ctscope's inserts and drops equal the kernel's own counters (normal runs).
//! - [`self_check_fault`]: a run with deliberately wrong offsets fails ctscope's self-check the
//!   way it must (`[expect] self_check_fails = true`), replacing the exactness checks.
//! - [`detach`]: ctscope's kprobes are gone once it has exited.
//! - [`attribution`]: per-namespace figures against each namespace's own counters, and
//!   per-container NAT shares against what each container sent (normal runs).
//! - [`life`]: lifetimes against the kernel's deletes, early drops, clashes, lookups and cost
//!   (normal runs).
//! - [`serve`]: `ctscope serve` scenarios: the metrics scraped at the end, read into a report
//!   for the exactness checks, and per container against what it sent.
//! - [`soak`]: `[soak]` scenarios: ctscope's memory and eBPF maps over a long churn.
//! - [`expect`]: the scenario's `[expect]` floors and ceilings.
//! - [`tuning`]: the tuner's closed loop (`[tuning]` scenarios): applied, persisted and rolled
//!   back as recommended, and the replay without drops.

mod attribution;
mod detach;
mod doctor;
mod exact;
mod expect;
mod life;
mod self_check_fault;
mod serve;
mod soak;
mod tuning;

#[cfg(test)]
mod fixture;

pub use serve::{MetricValues, Samples, metric_values, whole};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::scenario::Scenario;

/// One assertion and its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    /// The numbers compared (or why they could not be).
    pub detail: String,
}

impl Check {
    fn new(name: &str, passed: bool, detail: String) -> Check {
        Check {
            name: name.to_string(),
            passed,
            detail,
        }
    }

    /// A check that fails because an input is missing.
    fn missing(name: &str, why: String) -> Check {
        Check::new(name, false, why)
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mark = if self.passed { "ok  " } else { "FAIL" };
        write!(f, "{mark} {}: {}", self.name, self.detail)
    }
}

/// True when every check passed (and there is at least one).
pub fn all_passed(checks: &[Check]) -> bool {
    !checks.is_empty() && checks.iter().all(|c| c.passed)
}

/// The value at a `/`-separated path such as `drops/table_full`, if every key is there.
pub fn json_at<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('/').try_fold(root, |v, key| v.get(key))
}

/// [`json_at`], with an error that names the missing path.
fn value_at<'a>(root: &'a Value, path: &str) -> Result<&'a Value, String> {
    json_at(root, path).ok_or_else(|| format!("{path} is missing"))
}

/// Reads an unsigned integer at a `/`-separated path; the error says what was there instead.
fn u64_at(root: &Value, path: &str) -> Result<u64, String> {
    match value_at(root, path)? {
        Value::Null => Err(format!("{path} is null (not measured)")),
        other => other
            .as_u64()
            .ok_or_else(|| format!("{path} is not an unsigned integer: {other}")),
    }
}

/// The self-check's failure counters: every way a chain walk can fail to prove itself.
const SELF_CHECK_FAILURES: [&str; 4] = [
    "nulls_mismatch",
    "link_mismatch",
    "dir_mismatch",
    "read_errors",
];

/// The sum of [`SELF_CHECK_FAILURES`] in `report.self_check`, and its terms spelled out.
fn self_check_failures(report: &Value) -> Result<(u64, String), String> {
    let mut sum = 0;
    let mut terms = Vec::new();
    for key in SELF_CHECK_FAILURES {
        let n = u64_at(report, &format!("self_check/{key}"))?;
        sum += n;
        terms.push(format!("{key} {n}"));
    }
    Ok((sum, format!("{} = {sum}", terms.join(" + "))))
}

/// Evaluates `f` when every input is present, else a failed check naming the first missing one.
fn compare(name: &str, inputs: Result<(bool, String), String>) -> Check {
    match inputs {
        Ok((passed, detail)) => Check::new(name, passed, detail),
        Err(why) => Check::missing(name, why),
    }
}

/// How long ctscope may take from SIGINT to exit, report written (the signal contract:
/// within 2 s in every mode), under emulation included.
pub const STOP_LIMIT_S: f64 = 2.0;

/// ctscope ended within [`STOP_LIMIT_S`] of the agent's SIGINT. A run where
/// ctscope exited by itself before (an error) has no stop time; the exit
/// code and report checks judge that run.
fn stop_check(result: &Value) -> Check {
    match result.get("ctscope_stop_s").and_then(Value::as_f64) {
        Some(s) => Check::new(
            "stop",
            s <= STOP_LIMIT_S,
            format!("ctscope exited {s:.2} s after SIGINT (limit {STOP_LIMIT_S} s)"),
        ),
        None => Check::new(
            "stop",
            result.get("ctscope_exit").is_some_and(|c| !c.is_null()),
            "not stopped by the agent (it had exited, or was killed)".to_string(),
        ),
    }
}

/// `mode`: the mode ctscope observed in is the one it must choose: the scenario's `--mode`,
/// else fentry where the kernel's config permits tracing programs on conntrack (the lab's own
/// reading, `kernel_fentry`) and kprobe where it does not; without a config, doctor's.
fn mode_check(result: &Value, report: &Value, scenario: &Scenario) -> Check {
    let got = report.get("mode").and_then(Value::as_str);
    let (want, why) = match (
        scenario.ctscope_option("mode"),
        result.get("kernel_fentry").and_then(Value::as_bool),
    ) {
        (Some(m), _) if m != "auto" => (Some(m), "the scenario's --mode"),
        // A fault run skews the offsets the programs load through. The
        // verifier type-checks an fentry program's direct loads against BTF,
        // so it may refuse them before any walk runs: kprobe mode, whose
        // run-time proofs catch the skew, is then the right answer, as long
        // as the report says the verifier refused fentry.
        (_, Some(true))
            if scenario.expect.self_check_fails
                && got == Some("kprobe")
                && fentry_refused_by_verifier(report) =>
        {
            (
                Some("kprobe"),
                "the verifier refused the skewed fentry programs (fault run)",
            )
        }
        (_, Some(true)) => (Some("fentry"), "the kernel's config permits fentry"),
        (_, Some(false)) => (Some("kprobe"), "the kernel's config does not permit fentry"),
        (_, None) => (
            json_at(result, "doctor/mode").and_then(Value::as_str),
            "no config: doctor's prediction",
        ),
    };
    Check::new(
        "mode",
        got.is_some() && got == want,
        format!(
            "mode = {}, expected {} ({why})",
            got.unwrap_or("<missing>"),
            want.unwrap_or("<unknown>")
        ),
    )
}

/// A notice of `report` says auto mode fell back because the verifier
/// rejected an fentry program.
pub(super) fn fentry_refused_by_verifier(report: &Value) -> bool {
    report
        .get("notices")
        .and_then(Value::as_array)
        .is_some_and(|n| {
            n.iter()
                .filter_map(Value::as_str)
                .any(|n| n.starts_with("kprobe mode, since fentry: verifier rejected"))
        })
}

/// Applies every lab assertion and every `[expect]` entry of `scenario` to `result` (the agent's
/// JSON, possibly wrapped by xtask with extra keys).
pub fn check(result: &Value, scenario: &Scenario) -> Vec<Check> {
    let mut checks = Vec::new();

    // The agent's own errors: a run that did not set up or tear down as planned proves nothing.
    let errors: Vec<String> = match result.get("errors") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_string))
            .collect(),
        _ => vec!["result has no errors array".to_string()],
    };
    checks.push(Check::new(
        "agent-errors",
        errors.is_empty(),
        if errors.is_empty() {
            "none".to_string()
        } else {
            errors.join("; ")
        },
    ));

    let null = Value::Null;
    let serving = scenario.serves();
    let from_metrics;
    let report = if serving {
        checks.push(serve::present_check(result));
        from_metrics = serve::as_report(&serve::Samples::parse(
            result.get("metrics").and_then(Value::as_str).unwrap_or(""),
        ));
        &from_metrics
    } else {
        let report = result.get("ctscope").unwrap_or(&null);
        checks.push(report_check(result, report));
        report
    };
    checks.push(stop_check(result));
    checks.push(mode_check(result, report, scenario));

    let truth = result.get("truth").unwrap_or(&null);
    checks.push(clients_check(result, truth, scenario));

    if scenario.expect.self_check_fails {
        // Wrong offsets on purpose: no number of ctscope's can match the kernel's, so the
        // exactness checks would only restate the fault. What must hold instead is that
        // ctscope noticed, on every walk, and said so.
        checks.extend(self_check_fault::checks(result, report));
    } else {
        let early = unseen_early_deaths(report, truth);
        let skipped = skipped_inserts(report);
        checks.extend(exact::checks(
            report,
            truth,
            decisions(result, scenario),
            early,
            skipped,
        ));
        if serving {
            // Per container from the metrics; lifetimes are a histogram there, not checked.
            checks.push(serve::entries_check(result, truth));
            checks.extend(serve::container_checks(result, truth));
        } else {
            checks.extend(attribution::checks(report, truth, early, skipped, scenario));
            checks.extend(life::checks(
                report,
                truth,
                scenario.lookups(),
                scenario.cost_measured(),
                early,
            ));
        }
    }
    checks.push(detach::check(truth));
    checks.push(doctor::check(
        result,
        report,
        // serve does not export its offsets.
        !scenario.expect.self_check_fails && !serving,
        scenario.ctscope_option("mode"),
    ));

    expect::checks(result, report, truth, scenario, &mut checks);
    if scenario.tuning.is_some() {
        checks.extend(tuning::checks(result, scenario));
    }
    if let Some(s) = &scenario.soak {
        checks.extend(soak::checks(result, truth, s, scenario.rate_per_s()));
    }
    checks
}

/// `ctscope-report`: observe wrote its report.
fn report_check(result: &Value, report: &Value) -> Check {
    let report_ok = report.is_object();
    Check::new(
        "ctscope-report",
        report_ok,
        if report_ok {
            "present".to_string()
        } else {
            format!("no ctscope report ({})", exit_and_tail(result))
        },
    )
}

/// ctscope's exit code and the tail of its stderr, for a check whose input is missing.
fn exit_and_tail(result: &Value) -> String {
    format!(
        "exit {}, stderr tail: {}",
        result.get("ctscope_exit").unwrap_or(&Value::Null),
        result
            .get("ctscope_stderr_tail")
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim()
    )
}

/// The conntrack decisions (an insert or a refusal) the clients' flows must have caused: every
/// flow that left its container (flows - send_errors, from each client's summary) is one
/// decision in the host (NAT) namespace, and one more in its own namespace when the container
/// runs a firewall. A flow refused in its own namespace never leaves it: the client sees the
/// error, so it is a send error and is in neither term.
fn decisions(result: &Value, scenario: &Scenario) -> Result<Decisions, String> {
    let Some(Value::Array(clients)) = result.get("clients") else {
        return Err("result has no clients array".to_string());
    };
    let mut total = 0;
    let mut terms = Vec::new();
    for c in &scenario.containers {
        let v = clients
            .iter()
            .find(|v| v.get("container").and_then(Value::as_str) == Some(c.name.as_str()))
            .ok_or_else(|| format!("no client summary of {}", c.name))?;
        let flows = u64_at(v, "flows")?;
        let send_errors = u64_at(v, "send_errors")?;
        let sent = flows
            .checked_sub(send_errors)
            .ok_or_else(|| format!("{}: send_errors {send_errors} exceed flows {flows}", c.name))?;
        let per_flow = if c.firewall { 2 } else { 1 };
        total += sent * per_flow;
        terms.push(if c.firewall {
            format!("2 x ({flows} - {send_errors})")
        } else {
            format!("({flows} - {send_errors})")
        });
    }
    let reopened = if scenario.expect.tcp_reopened {
        u64_at(result, "truth/stat_delta/early_drop")?
    } else {
        0
    };
    Ok(Decisions {
        sent: total,
        how: format!("flows - send_errors = {} = {total}", terms.join(" + ")),
        retried: scenario.containers.iter().any(|c| c.keepalive_s.is_some()),
        reopened,
    })
}

/// What the clients' flows imply for ctscope's inserts and drops (see [`decisions`]).
#[derive(Debug, Clone)]
pub(crate) struct Decisions {
    /// Flows that left their container, times the namespaces that track each.
    pub sent: u64,
    /// How `sent` was computed, for the check's detail.
    pub how: String,
    /// Kept-alive flows: a refused datagram is sent again a second later and then makes the
    /// entry, so a refusal is one decision more, not a flow less: `inserts <= sent <= inserts +
    /// drops` instead of `inserts + drops == sent`.
    pub retried: bool,
    /// Entries `early_drop` evicted (kernel truth) in a scenario that says its TCP flows can
    /// meet conntrack again (`[expect] tcp_reopened`): a connect the client gave up on is
    /// closed (RST), its entry waits in CLOSE, unassured, where `early_drop` may evict it
    /// (`tcp_can_early_drop`), and the flow's late packets are decisions of their own (seen
    /// on 5.10 with the table full: 122 evictions, 164 decisions more than flows).
    pub reopened: u64,
}

/// Every container reported, with the flows the scenario asked for, and truth adds them up.
fn clients_check(result: &Value, truth: &Value, scenario: &Scenario) -> Check {
    let Some(Value::Array(clients)) = result.get("clients") else {
        return Check::missing("clients", "result has no clients array".to_string());
    };
    let mut problems = Vec::new();
    for c in &scenario.containers {
        let found = clients
            .iter()
            .find(|v| v.get("container").and_then(Value::as_str) == Some(c.name.as_str()));
        match found.map(|v| u64_at(v, "flows")) {
            None => problems.push(format!("{}: no summary", c.name)),
            Some(Err(why)) => problems.push(format!("{}: {why}", c.name)),
            Some(Ok(n)) if n != u64::from(c.flows) => {
                problems.push(format!("{}: {n} flows, scenario says {}", c.name, c.flows));
            }
            Some(Ok(_)) => {}
        }
    }
    match u64_at(truth, "flows") {
        Ok(n) if n == scenario.total_flows() => {}
        Ok(n) => problems.push(format!(
            "truth.flows {n}, scenario total {}",
            scenario.total_flows()
        )),
        Err(why) => problems.push(why),
    }
    Check::new(
        "clients",
        problems.is_empty(),
        if problems.is_empty() {
            format!(
                "{} containers, {} flows",
                scenario.containers.len(),
                scenario.total_flows()
            )
        } else {
            problems.join("; ")
        },
    )
}

/// Entries that died during the insert phase, which the truth cannot see: it counts inserts as
/// the rise of `nf_conntrack_count` (plus early drops) up to its snapshot, so an entry the kernel
/// deleted before that snapshot (an RST that kills a connection at once, in scenarios whose
/// connections close) is missing from both its inserts and its deletes. Allowed only in
/// scenarios where entries die during the run (`truth.settle` present), and only when the
/// exact identity still holds: ctscope's inserts minus its deaths equal the kernel's net count
/// change (`truth.inserts - truth.deletes`), so ctscope overcounts neither. 0 otherwise, which
/// keeps every check exact.
/// Inserts the kernel did not run ctscope's insert probe for, as the kernel
/// counts them (`probes.recursion_misses` of `insert`, the kprobe that walks at entry, or
/// `hash_insert_ret`, the return probe that walks where the table's address is unknown): a connection
/// handled in a softirq on the exit of an interrupt that had stopped another
/// of ctscope's programs on that CPU (trace_call_bpf() runs one BPF program
/// per CPU at a time). Seen on 7.3 under TCG: 7 of 8,500 in docker-nat.
pub(crate) fn skipped_inserts(report: &Value) -> u64 {
    ["insert", "hash_insert_ret"]
        .iter()
        .map(|p| u64_at(report, &format!("probes/recursion_misses/{p}")).unwrap_or(0))
        .sum()
}

pub(crate) fn unseen_early_deaths(report: &Value, truth: &Value) -> u64 {
    let settled = truth.get("settle").is_some_and(|s| !s.is_null());
    let (Ok(ci), Ok(ti), Ok(td)) = (
        u64_at(report, "inserts"),
        u64_at(truth, "inserts"),
        u64_at(truth, "deletes"),
    ) else {
        return 0;
    };
    let deaths = life::deaths(report).unwrap_or(0);
    match (ci.checked_sub(ti), deaths.checked_sub(td)) {
        (Some(a), Some(b)) if settled && a == b => a,
        _ => 0,
    }
}

#[cfg(test)]
mod tests;
