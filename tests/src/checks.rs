//! The lab assertions (docs/lab-contract.md, "Lab assertions"), applied to one result.
//!
//! Every assertion is its own [`Check`], so a report shows all that failed, not only the first.
//! A value that is missing or null never passes: a run without a ctscope report, or with
//! ctscope in any mode but `kprobe`, fails.

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

/// Reads an unsigned integer at a `/`-separated path; the error says what was there instead.
fn u64_at(root: &Value, path: &str) -> Result<u64, String> {
    let mut v = root;
    for key in path.split('/') {
        v = v.get(key).ok_or_else(|| format!("{path} is missing"))?;
    }
    match v {
        Value::Null => Err(format!("{path} is null (not measured)")),
        other => other
            .as_u64()
            .ok_or_else(|| format!("{path} is not an unsigned integer: {other}")),
    }
}

/// Evaluates `f` when every input is present, else a failed check naming the first missing one.
fn compare(name: &str, inputs: Result<(bool, String), String>) -> Check {
    match inputs {
        Ok((passed, detail)) => Check::new(name, passed, detail),
        Err(why) => Check::missing(name, why),
    }
}

/// ctscope's four drop counters.
struct Drops {
    table_full: u64,
    chain_too_long: u64,
    clash: u64,
    other: u64,
}

impl Drops {
    fn read(report: &Value) -> Result<Drops, String> {
        Ok(Drops {
            table_full: u64_at(report, "drops/table_full")?,
            chain_too_long: u64_at(report, "drops/chain_too_long")?,
            clash: u64_at(report, "drops/clash")?,
            other: u64_at(report, "drops/other")?,
        })
    }

    fn total(&self) -> u64 {
        self.table_full + self.chain_too_long + self.clash + self.other
    }
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
    let report = result.get("ctscope").unwrap_or(&null);
    let report_ok = report.is_object();
    checks.push(Check::new(
        "ctscope-report",
        report_ok,
        if report_ok {
            "present".to_string()
        } else {
            format!(
                "no ctscope report (exit {}, stderr tail: {})",
                result.get("ctscope_exit").unwrap_or(&null),
                result
                    .get("ctscope_stderr_tail")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .trim()
            )
        },
    ));
    let mode = report.get("mode").and_then(Value::as_str);
    checks.push(Check::new(
        "mode-kprobe",
        mode == Some("kprobe"),
        format!("mode = {}", mode.unwrap_or("<missing>")),
    ));

    let truth = result.get("truth").unwrap_or(&null);
    checks.push(clients_check(result, truth, scenario));

    checks.push(compare(
        "inserts",
        (|| {
            let seen = u64_at(report, "inserts")?;
            let truth = u64_at(truth, "inserts")?;
            Ok((
                seen == truth,
                format!("ctscope {seen}, truth {truth} (count rise + early_drop)"),
            ))
        })(),
    ));

    let drops = Drops::read(report);
    checks.push(compare(
        "drop-column",
        (|| {
            let d = drops.as_ref().map_err(Clone::clone)?;
            let drop = u64_at(truth, "stat_delta/drop")?;
            Ok((
                d.table_full + d.clash == drop,
                format!(
                    "table_full {} + clash {} = {}, kernel drop {drop}",
                    d.table_full,
                    d.clash,
                    d.table_full + d.clash
                ),
            ))
        })(),
    ));
    checks.push(compare(
        "chain-too-long",
        (|| {
            let d = drops.as_ref().map_err(Clone::clone)?;
            let k = u64_at(truth, "stat_delta/chaintoolong")?;
            Ok((
                d.chain_too_long == k,
                format!("ctscope {}, kernel chaintoolong {k}", d.chain_too_long),
            ))
        })(),
    ));
    checks.push(compare(
        "insert-failed",
        (|| {
            let d = drops.as_ref().map_err(Clone::clone)?;
            let k = u64_at(truth, "stat_delta/insert_failed")?;
            let sum = d.chain_too_long + d.clash + d.other;
            Ok((
                sum == k,
                format!(
                    "chain_too_long {} + clash {} + other {} = {sum}, kernel insert_failed {k}",
                    d.chain_too_long, d.clash, d.other
                ),
            ))
        })(),
    ));
    checks.push(compare(
        "self-check",
        (|| {
            let walks = u64_at(report, "self_check/walks")?;
            let mismatch = u64_at(report, "self_check/nulls_mismatch")?;
            Ok((
                walks > 0 && mismatch == 0,
                format!("walks {walks} (> 0), nulls_mismatch {mismatch} (== 0)"),
            ))
        })(),
    ));
    checks.push(compare(
        "flows-accounted",
        (|| {
            let inserts = u64_at(report, "inserts")?;
            let d = drops.as_ref().map_err(Clone::clone)?;
            let flows = u64_at(truth, "flows")?;
            let send_errors = u64_at(truth, "send_errors")?;
            let sent = flows.checked_sub(send_errors).ok_or_else(|| {
                format!("send_errors {send_errors} exceed flows {flows}")
            })?;
            Ok((
                inserts + d.total() == sent,
                format!(
                    "inserts {inserts} + drops {} = {}, flows {flows} - send_errors {send_errors} = {sent}",
                    d.total(),
                    inserts + d.total()
                ),
            ))
        })(),
    ));

    expect_checks(report, drops.as_ref().ok(), scenario, &mut checks);
    checks
}

/// Every container reported, with the flows the scenario asked for, and truth adds them up.
fn clients_check(result: &Value, truth: &Value, scenario: &Scenario) -> Check {
    let clients = match result.get("clients") {
        Some(Value::Array(a)) => a,
        _ => return Check::missing("clients", "result has no clients array".to_string()),
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
                problems.push(format!("{}: {n} flows, scenario says {}", c.name, c.flows))
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

/// The scenario's `[expect]` entries.
fn expect_checks(report: &Value, drops: Option<&Drops>, scenario: &Scenario, out: &mut Vec<Check>) {
    let e = &scenario.expect;
    let no_drops = || "ctscope drops missing or null".to_string();
    if let Some(min) = e.chain_too_long_min {
        out.push(compare(
            "expect.chain_too_long_min",
            drops.ok_or_else(no_drops).map(|d| {
                (
                    d.chain_too_long >= min,
                    format!("chain_too_long {} >= {min}", d.chain_too_long),
                )
            }),
        ));
    }
    if let Some(min) = e.table_full_min {
        out.push(compare(
            "expect.table_full_min",
            drops.ok_or_else(no_drops).map(|d| {
                (
                    d.table_full >= min,
                    format!("table_full {} >= {min}", d.table_full),
                )
            }),
        ));
    }
    if let Some(max) = e.drops_max {
        out.push(compare(
            "expect.drops_max",
            drops
                .ok_or_else(no_drops)
                .map(|d| (d.total() <= max, format!("drops {} <= {max}", d.total()))),
        ));
    }
    if let Some(min) = e.inserts_min {
        out.push(compare(
            "expect.inserts_min",
            u64_at(report, "inserts").map(|n| (n >= min, format!("inserts {n} >= {min}"))),
        ));
    }
    if let Some(min) = e.chain_max_min {
        out.push(compare(
            "expect.chain_max_min",
            u64_at(report, "chain_length/orig/max")
                .map(|n| (n >= min, format!("chain_length.orig.max {n} >= {min}"))),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scenario(expect: &str) -> Scenario {
        Scenario::from_toml(&format!(
            "name = \"t\"\n[[containers]]\nname = \"a\"\nprotocol = \"udp\"\nflows = 1000\n\
             [[containers]]\nname = \"b\"\nprotocol = \"tcp\"\nflows = 500\n[expect]\n{expect}"
        ))
        .expect("valid scenario")
    }

    /// A consistent run: 1500 flows, 10 not sent, 1470 inserts, 12 table full, 5 chain too long,
    /// 2 clashes, 1 other drop.
    fn good() -> Value {
        json!({
            "kernel": "6.1",
            "kernel_release": "6.1.0-40-cloud-amd64",
            "scenario": "t",
            "ctscope": {
                "mode": "kprobe",
                "kernel_release": "6.1.0-40-cloud-amd64",
                "duration_s": 12.5,
                "inserts": 1470,
                "chain_length": {"orig": {"histogram": [[1, 1000], [9, 470]], "mean": 3.5, "p50": 1, "p99": 9, "max": 9},
                                 "reply": {"histogram": [[1, 1470]], "mean": 1.0, "p50": 1, "p99": 1, "max": 1}},
                "drops": {"table_full": 12, "chain_too_long": 5, "clash": 2, "other": 1},
                "self_check": {"walks": 2940, "nulls_mismatch": 0},
                "settings": {"buckets": 1024, "max": 65536, "count_start": 0, "count_end": 1460}
            },
            "ctscope_exit": 0,
            "ctscope_stderr_tail": "",
            "truth": {
                "flows": 1500, "send_errors": 10, "connect_failures": 14, "inserts": 1470, "count_after": 1460,
                "stat_delta": {"insert_failed": 8, "drop": 14, "early_drop": 10, "chaintoolong": 5,
                               "clash_resolve": 0, "search_restart": 0},
                "per_netns": []
            },
            "clients": [
                {"container": "a", "protocol": "udp", "flows": 1000, "send_errors": 10, "connect_failures": 0, "established": 0, "elapsed_s": 1.0},
                {"container": "b", "protocol": "tcp", "flows": 500, "send_errors": 0, "connect_failures": 14, "established": 486, "elapsed_s": 2.0}
            ],
            "errors": []
        })
    }

    fn failed(checks: &[Check]) -> Vec<String> {
        checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name.clone())
            .collect()
    }

    #[test]
    fn consistent_run_passes_everything() {
        let s = scenario(
            "table_full_min = 1\nchain_too_long_min = 5\ndrops_max = 20\ninserts_min = 1470\nchain_max_min = 9",
        );
        let checks = check(&good(), &s);
        assert_eq!(failed(&checks), Vec::<String>::new(), "{checks:#?}");
        assert!(all_passed(&checks));
        // 10 generic checks + 5 expectations.
        assert_eq!(checks.len(), 15);
    }

    #[test]
    fn each_mismatch_fails_its_own_check() {
        let s = scenario("");
        let mut r = good();
        r["ctscope"]["inserts"] = json!(1469);
        assert_eq!(failed(&check(&r, &s)), ["inserts", "flows-accounted"]);

        let mut r = good();
        r["truth"]["stat_delta"]["drop"] = json!(13);
        assert_eq!(failed(&check(&r, &s)), ["drop-column"]);

        let mut r = good();
        r["truth"]["stat_delta"]["chaintoolong"] = json!(0);
        assert_eq!(failed(&check(&r, &s)), ["chain-too-long"]);

        let mut r = good();
        r["truth"]["stat_delta"]["insert_failed"] = json!(9);
        assert_eq!(failed(&check(&r, &s)), ["insert-failed"]);

        let mut r = good();
        r["ctscope"]["self_check"]["nulls_mismatch"] = json!(1);
        assert_eq!(failed(&check(&r, &s)), ["self-check"]);

        let mut r = good();
        r["ctscope"]["self_check"]["walks"] = json!(0);
        assert_eq!(failed(&check(&r, &s)), ["self-check"]);

        let mut r = good();
        r["truth"]["send_errors"] = json!(11);
        assert_eq!(failed(&check(&r, &s)), ["flows-accounted"]);

        let mut r = good();
        r["errors"] = json!(["ip link add failed"]);
        let checks = check(&r, &s);
        assert_eq!(failed(&checks), ["agent-errors"]);
        assert!(checks[0].detail.contains("ip link add failed"));
    }

    #[test]
    fn missing_report_or_procfs_mode_never_passes() {
        let s = scenario("");
        let mut r = good();
        r["ctscope"] = Value::Null;
        r["ctscope_exit"] = json!(1);
        r["ctscope_stderr_tail"] = json!("kprobe: permission denied");
        let checks = check(&r, &s);
        let f = failed(&checks);
        for name in [
            "ctscope-report",
            "mode-kprobe",
            "inserts",
            "drop-column",
            "chain-too-long",
            "insert-failed",
            "self-check",
            "flows-accounted",
        ] {
            assert!(f.iter().any(|n| n == name), "{name} must fail: {f:?}");
        }
        assert!(checks[1].detail.contains("permission denied"));

        // procfs mode: same keys, unmeasured ones null.
        let mut r = good();
        r["ctscope"]["mode"] = json!("procfs");
        r["ctscope"]["drops"]["chain_too_long"] = Value::Null;
        r["ctscope"]["self_check"] = Value::Null;
        let f = failed(&check(&r, &s));
        assert_eq!(
            f,
            [
                "mode-kprobe",
                "drop-column",
                "chain-too-long",
                "insert-failed",
                "self-check",
                "flows-accounted"
            ]
        );
    }

    #[test]
    fn clients_must_match_the_scenario() {
        let s = scenario("");
        let mut r = good();
        r["clients"] = json!([r["clients"][0].clone()]);
        assert_eq!(failed(&check(&r, &s)), ["clients"]);

        let mut r = good();
        r["truth"] = Value::Null;
        let f = failed(&check(&r, &s));
        assert!(f.contains(&"clients".to_string()) && f.contains(&"inserts".to_string()));
    }

    #[test]
    fn expectations_fail_when_not_met() {
        let s = scenario(
            "table_full_min = 13\nchain_too_long_min = 6\ndrops_max = 19\ninserts_min = 1471\nchain_max_min = 10",
        );
        let f = failed(&check(&good(), &s));
        assert_eq!(
            f,
            [
                "expect.chain_too_long_min",
                "expect.table_full_min",
                "expect.drops_max",
                "expect.inserts_min",
                "expect.chain_max_min"
            ]
        );
        let mut r = good();
        r["ctscope"] = Value::Null;
        let s = scenario("table_full_min = 0");
        assert!(failed(&check(&r, &s)).contains(&"expect.table_full_min".to_string()));
    }
}
