//! The checks of a fault scenario (`[expect] self_check_fails = true`): ctscope runs with its
//! tuplehash offset deliberately skewed (`observe --fault-offset-skew`), so every chain walk
//! starts at the wrong address. They replace the exactness checks, which would only restate the
//! fault, and prove instead that the run-time self-check caught it:
//!
//! - `ctscope-exit-5`: ctscope exits with its self-check code (README, "Exit codes");
//! - `self-check-failures`: it counted failures (`nulls_mismatch + link_mismatch + dir_mismatch
//!   + read_errors > 0`);
//! - `self-check-every-insert`: at least one failure per insert it saw, so no insert slipped
//!   through with a walk that passed;
//! - `self-check-no-walks`: no walk was counted as proven (`walks == 0`);
//! - `no-chain-samples`: no failed walk was recorded as a chain length;
//! - `self-check-notice`: the report says "SELF-CHECK FAILED" to its reader.

use serde_json::Value;

use super::{Check, compare, self_check_failures, u64_at, value_at};
use crate::{
    CTSCOPE_EXIT_SELF_CHECK_FAILED as SELF_CHECK_EXIT, CTSCOPE_SELF_CHECK_NOTICE as NOTICE,
};

pub(super) fn checks(result: &Value, report: &Value) -> Vec<Check> {
    let failures = self_check_failures(report);
    vec![
        compare(
            "ctscope-exit-5",
            u64_at(result, "ctscope_exit").map(|code| {
                (
                    i32::try_from(code) == Ok(SELF_CHECK_EXIT),
                    format!("exit code {code} (== {SELF_CHECK_EXIT})"),
                )
            }),
        ),
        compare(
            "self-check-failures",
            failures
                .clone()
                .map(|(sum, terms)| (sum > 0, format!("{terms} (> 0)"))),
        ),
        compare(
            "self-check-every-insert",
            (|| {
                let (sum, _) = failures.clone()?;
                let inserts = u64_at(report, "inserts")?;
                Ok((
                    sum >= inserts,
                    format!("failures {sum} >= ctscope inserts {inserts}"),
                ))
            })(),
        ),
        compare(
            "self-check-no-walks",
            u64_at(report, "self_check/walks")
                .map(|walks| (walks == 0, format!("walks {walks} (== 0)"))),
        ),
        compare(
            "no-chain-samples",
            (|| {
                let orig = u64_at(report, "chain_length/orig/samples")?;
                let reply = u64_at(report, "chain_length/reply/samples")?;
                Ok((
                    orig + reply == 0,
                    format!("orig {orig} + reply {reply} samples (== 0)"),
                ))
            })(),
        ),
        compare("self-check-notice", notice(report)),
    ]
}

/// Whether a notice says [`NOTICE`] (`SELF-CHECK FAILED`).
fn notice(report: &Value) -> Result<(bool, String), String> {
    let Value::Array(notices) = value_at(report, "notices")? else {
        return Err("notices is not an array".to_string());
    };
    let found = notices
        .iter()
        .filter_map(Value::as_str)
        .find(|n| n.contains(NOTICE));
    Ok(match found {
        Some(n) => (true, format!("notice: {n}")),
        None => (
            false,
            format!("none of {} notices says {NOTICE:?}", notices.len()),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::super::check;
    use super::super::fixture::{failed, good, scenario};
    use crate::scenario::Scenario;
    use serde_json::{Value, json};

    /// The fault run ctscope must produce: 1470 inserts, every walk failed one way or another
    /// (1470 reply walks + 1300 original walks), nothing recorded, exit code 5.
    fn faulted() -> Value {
        let mut r = good();
        let ct = &mut r["ctscope"];
        ct["self_check"] = json!({"walks": 0, "nulls_mismatch": 2, "link_mismatch": 2700,
                                  "dir_mismatch": 60, "truncated": 0, "read_errors": 8, "missed": 0});
        // What ctscope emits for no samples: numbers, 0 for every statistic.
        ct["chain_length"]["orig"] = json!({"histogram": [], "samples": 0, "mean": 0.0,
                                            "p50": 0, "p99": 0, "max": 0, "truncated": 0});
        ct["chain_length"]["reply"] = ct["chain_length"]["orig"].clone();
        ct["notices"] = json!([
            "resolve_clash attached",
            "SELF-CHECK FAILED: 2770 chain walks failed: the struct offsets do not match this kernel"
        ]);
        // Inserts and drops stay as the kernel had them, but are no longer compared: break them.
        ct["inserts"] = json!(1400);
        ct["drops"]["table_full"] = json!(0);
        r["ctscope_exit"] = json!(crate::CTSCOPE_EXIT_SELF_CHECK_FAILED);
        r
    }

    fn fault_scenario() -> Scenario {
        scenario("self_check_fails = true")
    }

    #[test]
    fn a_caught_fault_passes_without_the_exactness_checks() {
        let checks = check(&faulted(), &fault_scenario());
        assert_eq!(failed(&checks), Vec::<String>::new(), "{checks:#?}");
        let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "agent-errors",
                "ctscope-report",
                "stop",
                "mode",
                "clients",
                "ctscope-exit-5",
                "self-check-failures",
                "self-check-every-insert",
                "self-check-no-walks",
                "no-chain-samples",
                "self-check-notice",
                "probes-detached",
                "doctor",
            ]
        );
        // The same result under a normal scenario fails exactly where the fault shows.
        let f = failed(&check(&faulted(), &scenario("")));
        assert_eq!(
            f,
            ["inserts", "drop-column", "self-check", "flows-accounted"]
        );
    }

    #[test]
    fn on_an_fentry_kernel_kprobe_passes_only_when_the_verifier_refused_fentry() {
        let s = fault_scenario();
        let mode = |r: &Value| {
            check(r, &s)
                .into_iter()
                .find(|c| c.name == "mode")
                .expect("a mode check")
        };
        let mut r = faulted();
        r["kernel_fentry"] = json!(true);
        // Doctor predicted fentry from the true offsets.
        r["doctor"]["mode"] = json!("fentry");
        r["doctor"]["fentry"] = json!({"available": true, "reason": null});
        let c = mode(&r);
        assert!(!c.passed, "kprobe without a reason: {c:?}");
        r["ctscope"]["notices"].as_array_mut().expect("notices").push(json!(
            "kprobe mode, since fentry: verifier rejected fe_delete (fentry nf_ct_delete): cannot access ptr member next"
        ));
        let c = mode(&r);
        assert!(c.passed, "{c:?}");
        assert_eq!(failed(&check(&r, &s)), Vec::<String>::new());
        // Another reason to fall back is no excuse.
        let n = r["ctscope"]["notices"].as_array_mut().expect("notices");
        n.pop();
        n.push(json!("kprobe mode, since fentry: attach failed"));
        assert!(!mode(&r).passed);
        // Nor does the excuse hold outside a fault run.
        r["ctscope"]["notices"]
            .as_array_mut()
            .expect("notices")
            .push(json!(
                "kprobe mode, since fentry: verifier rejected fe_delete (fentry nf_ct_delete)"
            ));
        let c = check(&r, &scenario(""))
            .into_iter()
            .find(|c| c.name == "mode")
            .expect("a mode check");
        assert!(!c.passed);
    }

    #[test]
    fn each_sign_of_an_uncaught_fault_fails_its_own_check() {
        let s = fault_scenario();
        /// What is broken, how, and which checks must fail.
        type Case = (&'static str, fn(&mut Value), &'static [&'static str]);
        let cases: [Case; 9] = [
            (
                "exit 0",
                |r| r["ctscope_exit"] = json!(0),
                &["ctscope-exit-5"],
            ),
            (
                "exit null (killed)",
                |r| r["ctscope_exit"] = Value::Null,
                &["ctscope-exit-5"],
            ),
            (
                "no failures at all",
                |r| {
                    for k in [
                        "nulls_mismatch",
                        "link_mismatch",
                        "dir_mismatch",
                        "read_errors",
                    ] {
                        r["ctscope"]["self_check"][k] = json!(0);
                    }
                },
                &["self-check-failures", "self-check-every-insert"],
            ),
            (
                "fewer failures than inserts",
                |r| r["ctscope"]["inserts"] = json!(2771),
                &["self-check-every-insert"],
            ),
            (
                "a walk passed",
                |r| r["ctscope"]["self_check"]["walks"] = json!(1),
                &["self-check-no-walks"],
            ),
            (
                "a failed walk recorded as a length",
                |r| r["ctscope"]["chain_length"]["reply"]["samples"] = json!(1),
                &["no-chain-samples"],
            ),
            (
                "no notice",
                |r| r["ctscope"]["notices"] = json!(["resolve_clash attached"]),
                &["self-check-notice"],
            ),
            (
                "procfs mode",
                |r| r["ctscope"]["mode"] = json!("procfs"),
                &["mode", "doctor"],
            ),
            (
                "link_mismatch missing (an older ctscope)",
                |r| {
                    if let Some(o) = r["ctscope"]["self_check"].as_object_mut() {
                        o.remove("link_mismatch");
                    }
                },
                &["self-check-failures", "self-check-every-insert"],
            ),
        ];
        for (what, break_it, want) in cases {
            let mut r = faulted();
            break_it(&mut r);
            assert_eq!(failed(&check(&r, &s)), want, "{what}");
        }
    }

    #[test]
    fn missing_report_fails_every_fault_check() {
        let mut r = faulted();
        r["ctscope"] = Value::Null;
        r["ctscope_exit"] = json!(1);
        let f = failed(&check(&r, &fault_scenario()));
        assert_eq!(
            f,
            [
                "ctscope-report",
                "mode",
                "ctscope-exit-5",
                "self-check-failures",
                "self-check-every-insert",
                "self-check-no-walks",
                "no-chain-samples",
                "self-check-notice",
                // doctor predicted kprobe mode; no report contradicts it.
                "doctor",
            ]
        );
        let mut r = faulted();
        r["ctscope"]["chain_length"] = Value::Null;
        r["ctscope"]["notices"] = json!("SELF-CHECK FAILED");
        let checks = check(&r, &fault_scenario());
        assert_eq!(failed(&checks), ["no-chain-samples", "self-check-notice"]);
        assert!(
            checks
                .iter()
                .any(|c| c.detail == "chain_length/orig/samples is missing")
        );
    }
}
