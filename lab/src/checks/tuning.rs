//! The tuner's closed loop (`[tuning]` scenarios): what ctscope recommended was applied as
//! recommended, persisted as recommended, removed the drops of the first run, and was rolled
//! back exactly. Every figure on the kernel's side is read by the agent itself. A value that is
//! missing or null fails the check that needs it, and its detail says which.

use serde_json::Value;

use super::{Check, compare, json_at, u64_at};
use crate::result::TuningResult;
use crate::scenario::Scenario;

/// Buckets as the kernel allocates them (whole pages of 512 heads).
fn table_buckets(b: u64) -> u64 {
    b.max(1).div_ceil(512) * 512
}

fn method<'a>(rec: &'a Value, name: &str) -> Option<&'a Value> {
    rec.get("comparison")?
        .as_array()?
        .iter()
        .find(|c| c.get("method").and_then(Value::as_str) == Some(name))
}

fn as_u64(v: Option<&Value>) -> Option<u64> {
    v.and_then(Value::as_u64)
}

/// The longer of the two directions' measured p99.
fn chain_p99(report: &Value) -> Option<u64> {
    let o = as_u64(json_at(report, "chain_length/orig/p99"))?;
    let r = as_u64(json_at(report, "chain_length/reply/p99"))?;
    Some(o.max(r))
}

/// Every drop key of a report: the replay must have none of any kind.
const DROP_KEYS: [&str; 5] = [
    "table_full",
    "chain_too_long",
    "clash",
    "other",
    "alloc_failed",
];

pub(super) fn checks(result: &Value, scenario: &Scenario) -> Vec<Check> {
    let t: TuningResult = match result.get("tuning") {
        None | Some(Value::Null) => {
            return vec![Check::missing(
                "tuning",
                "the result has no tuning section (the closed loop did not run)".into(),
            )];
        }
        Some(v) => match serde_json::from_value(v.clone()) {
            Ok(t) => t,
            Err(e) => {
                return vec![Check::missing(
                    "tuning",
                    format!("the result's tuning section does not parse: {e}"),
                )];
            }
        },
    };
    let null = Value::Null;
    let rec = t.recommendation.as_ref().unwrap_or(&null);
    let tuning = scenario.tuning.as_ref();
    let mut out = vec![
        recommend_check(&t, rec),
        applied_check(&t, rec),
        risk_check(&t, tuning.filter(|x| x.force)),
    ];
    if tuning.is_some_and(|x| x.persist) {
        out.push(persisted_check(&t, rec));
    }
    let before = before_drops(result);
    if let Some(min) = scenario.expect.drops_before_min {
        out.push(compare(
            "tuning-drops-before",
            before.clone().map(|(n, terms)| {
                (
                    n >= min,
                    format!("the kernel refused {terms} connections with its defaults (>= {min})"),
                )
            }),
        ));
    }
    out.push(comparison_check(rec, before));
    if scenario.expect.cheaper_than_formulas {
        out.push(cheaper_check(rec));
    }
    out.extend(replay_checks(result, &t, scenario));
    out.push(rollback_check(&t));
    out
}

/// `tuning-recommend`: `ctscope recommend` exited 0 with a recommendation.
fn recommend_check(t: &TuningResult, rec: &Value) -> Check {
    Check::new(
        "tuning-recommend",
        t.recommend_exit == Some(0) && rec.is_object(),
        format!(
            "recommend exit {:?}, recommendation {}",
            t.recommend_exit,
            if rec.is_object() {
                "present"
            } else {
                "missing"
            }
        ),
    )
}

/// `tuning-applied`: applied exactly as recommended, read back from the kernel by the agent.
/// A recommendation without buckets, max or timeouts is a difference, not a pass.
fn applied_check(t: &TuningResult, rec: &Value) -> Check {
    let applied = &t.settings_applied;
    let mut wrong = Vec::new();
    match as_u64(rec.get("buckets")).map(table_buckets) {
        Some(want) if applied.get("buckets") == Some(&want) => {}
        want => wrong.push(format!(
            "buckets {:?} (want {})",
            applied.get("buckets"),
            want.map_or_else(
                || "<missing in the recommendation>".into(),
                |w| w.to_string()
            )
        )),
    }
    match as_u64(rec.get("max")) {
        Some(want) if applied.get("max") == Some(&want) => {}
        want => wrong.push(format!(
            "max {:?} (want {})",
            applied.get("max"),
            want.map_or_else(
                || "<missing in the recommendation>".into(),
                |w| w.to_string()
            )
        )),
    }
    match rec.get("timeouts") {
        Some(Value::Object(ts)) => {
            for (k, v) in ts {
                if v.as_u64() != applied.get(k).copied() {
                    wrong.push(format!("{k} {:?} (want {v})", applied.get(k)));
                }
            }
        }
        _ if rec.is_object() => wrong.push("the recommendation has no timeouts object".into()),
        // No recommendation at all: `tuning-recommend` says so, and this fails on it below.
        _ => {}
    }
    Check::new(
        "tuning-applied",
        t.apply_exit == Some(0) && wrong.is_empty() && rec.is_object(),
        format!(
            "apply exit {:?}; kernel now buckets {:?}, max {:?}{}",
            t.apply_exit,
            applied.get("buckets"),
            applied.get("max"),
            if wrong.is_empty() {
                ", as recommended".to_string()
            } else {
                format!("; DIFFERS: {}", wrong.join(", "))
            }
        ),
    )
}

/// apply refuses risks (exit 6) unless --force; a forced apply prints each risk it took:
/// `tuning-forced-warnings` with `force = true`, else `tuning-no-risk`.
fn risk_check(t: &TuningResult, forced_by: Option<&crate::scenario::Tuning>) -> Check {
    let forced: Vec<&str> = t
        .apply_output
        .lines()
        .filter(|l| l.contains("warning (accepted with --force): "))
        .collect();
    match forced_by {
        Some(tuning) => {
            let missing: Vec<&String> = tuning
                .forced_warnings
                .iter()
                .filter(|w| !forced.iter().any(|l| l.contains(w.as_str())))
                .collect();
            Check::new(
                "tuning-forced-warnings",
                missing.is_empty() && !forced.is_empty(),
                format!(
                    "apply --force printed {} accepted risk(s){}",
                    forced.len(),
                    if missing.is_empty() {
                        String::new()
                    } else {
                        format!("; none says {missing:?}")
                    }
                ),
            )
        }
        None => Check::new(
            "tuning-no-risk",
            t.apply_exit != Some(6) && forced.is_empty(),
            format!(
                "apply without --force: exit {:?}{}",
                t.apply_exit,
                if t.apply_exit == Some(6) {
                    " (refused as risky: the recommendation should not be)"
                } else {
                    ""
                }
            ),
        ),
    }
}

/// `tuning-persisted`: the sysctl.d and modprobe.d files hold the recommended max and buckets.
fn persisted_check(t: &TuningResult, rec: &Value) -> Check {
    let file = |suffix: &str| {
        t.persisted
            .iter()
            .find(|(p, _)| p.ends_with(suffix))
            .map(|(_, text)| text.as_str())
    };
    let sysctl = file("sysctl.d/90-ctscope-conntrack.conf");
    let modprobe = file("modprobe.d/ctscope-conntrack.conf");
    let has = |text: &str, line: String| text.lines().any(|l| l.trim() == line);
    let ok = match (
        sysctl,
        modprobe,
        as_u64(rec.get("max")),
        as_u64(rec.get("buckets")),
    ) {
        (Some(s), Some(m), Some(max), Some(b)) => {
            has(s, format!("net.netfilter.nf_conntrack_max = {max}"))
                && has(s, format!("net.netfilter.nf_conntrack_buckets = {b}"))
                && has(m, format!("options nf_conntrack hashsize={b}"))
        }
        _ => false,
    };
    Check::new(
        "tuning-persisted",
        ok,
        format!(
            "files: {}",
            t.persisted
                .iter()
                .map(|(p, _)| p.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
}

/// The first run's refusals by the kernel (`drop + insert_failed` of the truth), with the sum
/// spelled out; an error when the truth lacks either.
fn before_drops(result: &Value) -> Result<(u64, String), String> {
    let drop = u64_at(result, "truth/stat_delta/drop")?;
    let failed = u64_at(result, "truth/stat_delta/insert_failed")?;
    let sum = drop + failed;
    Ok((sum, format!("drop {drop} + insert_failed {failed} = {sum}")))
}

/// `tuning-comparison`: the recommendation's own view of the first run matches what happened:
/// the current settings would drop exactly when the kernel refused some, ctscope's would not.
fn comparison_check(rec: &Value, before: Result<(u64, String), String>) -> Check {
    let cur_drops = method(rec, "current").and_then(|c| c.get("would_drop")?.as_bool());
    let mine_drops = method(rec, "ctscope").and_then(|c| c.get("would_drop")?.as_bool());
    compare(
        "tuning-comparison",
        before.map(|(n, terms)| {
            (
                cur_drops == Some(n > 0) && mine_drops == Some(false),
                format!(
                    "comparison: current would_drop {cur_drops:?} (the run refused {terms}), ctscope would_drop {mine_drops:?}"
                ),
            )
        }),
    )
}

/// `tuning-cheaper`: ctscope's settings cost less memory when full than both formulas'.
fn cheaper_check(rec: &Value) -> Check {
    let mem = |m: &str| method(rec, m).and_then(|c| as_u64(c.get("memory_bytes")));
    let (c, s, k) = (mem("ctscope"), mem("seed-formula"), mem("kube-proxy"));
    Check::new(
        "tuning-cheaper",
        matches!((c, s, k), (Some(c), Some(s), Some(k)) if c < s && c < k),
        format!("memory when full: ctscope {c:?}, seed formula {s:?}, kube-proxy {k:?} bytes"),
    )
}

/// The replay: no refusal at all (`tuning-replay-no-drops`), every flow one insert, ctscope
/// agreeing (`tuning-replay-inserts`), and shorter chains when the scenario says so
/// (`tuning-lower-chain-p99`).
fn replay_checks(result: &Value, t: &TuningResult, scenario: &Scenario) -> Vec<Check> {
    let null = Value::Null;
    let rt = t.replay_truth.as_ref();
    let replay = t.replay_ctscope.as_ref().unwrap_or(&null);
    let mut out = vec![compare(
        "tuning-replay-no-drops",
        (|| {
            let rt = rt.ok_or("the replay has no truth")?;
            let s = &rt.stat_delta;
            let kernel = (s.drop, s.insert_failed, s.early_drop);
            let mut ct = 0;
            for k in DROP_KEYS {
                ct += u64_at(replay, &format!("drops/{k}"))
                    .map_err(|w| format!("replay report: {w}"))?;
            }
            Ok((
                kernel == (0, 0, 0) && ct == 0,
                format!(
                    "after apply: kernel drop {}, insert_failed {}, early_drop {}; ctscope drops {ct} ({})",
                    s.drop,
                    s.insert_failed,
                    s.early_drop,
                    DROP_KEYS.join(" + ")
                ),
            ))
        })(),
    )];
    let sent: u64 = t
        .replay_clients
        .iter()
        .map(|c| c.load.flows.saturating_sub(c.load.send_errors))
        .sum();
    let ins = as_u64(replay.get("inserts"));
    // Inserts the kernel did not run the probe for are inserts all the same
    // (see super::skipped_inserts).
    let skipped = super::skipped_inserts(replay);
    let counted = ins.map(|n| n.saturating_add(skipped));
    out.push(Check::new(
        "tuning-replay-inserts",
        rt.map(|r| r.inserts) == counted && counted == Some(sent) && sent > 0,
        format!(
            "replay inserts: ctscope {ins:?} + {skipped} the kernel skipped its probe for, kernel {:?}, flows sent {sent}",
            rt.map(|r| r.inserts)
        ),
    ));
    if scenario.expect.lower_chain_p99 {
        let first = result.get("ctscope").and_then(chain_p99);
        let then = chain_p99(replay);
        out.push(Check::new(
            "tuning-lower-chain-p99",
            matches!((first, then), (Some(a), Some(b)) if b < a),
            format!(
                "chain p99 (longer direction): {first:?} with the defaults, {then:?} after apply"
            ),
        ));
    }
    out
}

/// `tuning-rollback`: rollback exited 0, every setting is back as before, no file is left.
fn rollback_check(t: &TuningResult) -> Check {
    let same = t.settings_rolled_back == t.settings_before && !t.settings_before.is_empty();
    let diff: Vec<String> = t
        .settings_before
        .iter()
        .filter(|(k, v)| t.settings_rolled_back.get(*k) != Some(v))
        .map(|(k, v)| format!("{k} {v} -> {:?}", t.settings_rolled_back.get(k)))
        .collect();
    Check::new(
        "tuning-rollback",
        t.rollback_exit == Some(0) && same && t.left_after_rollback.is_empty(),
        format!(
            "rollback exit {:?}; {} settings {}; files left: {:?}",
            t.rollback_exit,
            t.settings_before.len(),
            if same {
                "all back as before".to_string()
            } else {
                format!("DIFFER: {}", diff.join(", "))
            },
            t.left_after_rollback
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::super::check;
    use super::super::fixture::{failed, set, tuning_good, tuning_scenario};
    use super::*;
    use serde_json::json;

    /// Every check of a persisting, unforced loop with all three expectations, in order.
    const ALL: [&str; 11] = [
        "tuning-recommend",
        "tuning-applied",
        "tuning-no-risk",
        "tuning-persisted",
        "tuning-drops-before",
        "tuning-comparison",
        "tuning-cheaper",
        "tuning-replay-no-drops",
        "tuning-replay-inserts",
        "tuning-lower-chain-p99",
        "tuning-rollback",
    ];

    #[test]
    fn a_consistent_closed_loop_passes_every_tuning_check() {
        let s = tuning_scenario("");
        let r = tuning_good();
        let cs = checks(&r, &s);
        let names: Vec<&str> = cs.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ALL);
        assert_eq!(failed(&cs), Vec::<String>::new(), "{cs:#?}");
        // ... and so does the whole lab on that result.
        let all = check(&r, &s);
        assert_eq!(failed(&all), Vec::<String>::new(), "{all:#?}");
        let comparison = cs.iter().find(|c| c.name == "tuning-comparison");
        assert_eq!(
            comparison.map(|c| c.detail.as_str()),
            Some(
                "comparison: current would_drop Some(true) (the run refused drop 14 + insert_failed 8 = 22), ctscope would_drop Some(false)"
            )
        );
    }

    #[test]
    fn each_break_of_recommend_apply_and_persist_fails_its_own_check() {
        let rec = "/tuning/recommendation";
        let cases: Vec<(String, Value, Vec<&str>)> = vec![
            (
                "/tuning/recommend_exit".into(),
                json!(1),
                vec!["tuning-recommend"],
            ),
            (
                rec.into(),
                Value::Null,
                vec![
                    "tuning-recommend",
                    "tuning-applied",
                    "tuning-persisted",
                    "tuning-comparison",
                    "tuning-cheaper",
                ],
            ),
            (
                "/tuning/apply_exit".into(),
                json!(1),
                vec!["tuning-applied"],
            ),
            (
                "/tuning/apply_exit".into(),
                json!(6),
                vec!["tuning-applied", "tuning-no-risk"],
            ),
            (
                "/tuning/apply_output".into(),
                json!("  ! warning (accepted with --force): max 65536 -> 16384\n"),
                vec!["tuning-no-risk"],
            ),
            (
                "/tuning/settings_applied/buckets".into(),
                json!(1024),
                vec!["tuning-applied"],
            ),
            (
                "/tuning/settings_applied/max".into(),
                json!(65536),
                vec!["tuning-applied"],
            ),
            (
                "/tuning/settings_applied/udp_timeout".into(),
                json!(3600),
                vec!["tuning-applied"],
            ),
            // A recommendation without a figure is a difference, not a pass.
            (
                format!("{rec}/buckets"),
                Value::Null,
                vec!["tuning-applied", "tuning-persisted"],
            ),
            (
                format!("{rec}/max"),
                Value::Null,
                vec!["tuning-applied", "tuning-persisted"],
            ),
            (
                format!("{rec}/timeouts"),
                Value::Null,
                vec!["tuning-applied"],
            ),
            (
                "/tuning/persisted/1/1".into(),
                json!("net.netfilter.nf_conntrack_max = 65536\n"),
                vec!["tuning-persisted"],
            ),
            (
                "/tuning/persisted/0/1".into(),
                json!("options nf_conntrack hashsize=1024\n"),
                vec!["tuning-persisted"],
            ),
            (
                "/tuning/persisted".into(),
                json!([]),
                vec!["tuning-persisted"],
            ),
        ];
        each_fails_its_check(cases);
    }

    /// Each `(JSON path, value)` break of a good result fails exactly the checks it names.
    fn each_fails_its_check(cases: Vec<(String, Value, Vec<&str>)>) {
        let s = tuning_scenario("");
        for (path, value, want) in cases {
            let mut r = tuning_good();
            set(&mut r, &path, value);
            assert_eq!(failed(&checks(&r, &s)), want, "{path}");
        }
    }

    #[test]
    fn each_break_of_the_runs_replay_and_rollback_fails_its_own_check() {
        let s = tuning_scenario("");
        let rec = "/tuning/recommendation";
        let replay = "/tuning/replay_ctscope";
        let cases: Vec<(String, Value, Vec<&str>)> = vec![
            // The first run's truth: read, never taken as 0.
            (
                "/truth/stat_delta/drop".into(),
                Value::Null,
                vec!["tuning-drops-before", "tuning-comparison"],
            ),
            (
                "/truth/stat_delta/insert_failed".into(),
                Value::Null,
                vec!["tuning-drops-before", "tuning-comparison"],
            ),
            (
                "/truth".into(),
                Value::Null,
                vec!["tuning-drops-before", "tuning-comparison"],
            ),
            (
                format!("{rec}/comparison/0/would_drop"),
                json!(false),
                vec!["tuning-comparison"],
            ),
            (
                format!("{rec}/comparison/3/would_drop"),
                json!(true),
                vec!["tuning-comparison"],
            ),
            (
                format!("{rec}/comparison/3/memory_bytes"),
                json!(60_000_000),
                vec!["tuning-cheaper"],
            ),
            (
                format!("{rec}/comparison/1/memory_bytes"),
                Value::Null,
                vec!["tuning-cheaper"],
            ),
            (
                "/tuning/replay_truth/stat_delta/drop".into(),
                json!(1),
                vec!["tuning-replay-no-drops"],
            ),
            (
                "/tuning/replay_truth/stat_delta/insert_failed".into(),
                json!(1),
                vec!["tuning-replay-no-drops"],
            ),
            (
                "/tuning/replay_truth/stat_delta/early_drop".into(),
                json!(1),
                vec!["tuning-replay-no-drops"],
            ),
            (
                "/tuning/replay_truth".into(),
                Value::Null,
                vec!["tuning-replay-no-drops", "tuning-replay-inserts"],
            ),
            (
                format!("{replay}/inserts"),
                json!(1489),
                vec!["tuning-replay-inserts"],
            ),
            (
                "/tuning/replay_truth/inserts".into(),
                json!(1489),
                vec!["tuning-replay-inserts"],
            ),
            (
                "/tuning/replay_clients/0/send_errors".into(),
                json!(11),
                vec!["tuning-replay-inserts"],
            ),
            (
                format!("{replay}/chain_length/orig/p99"),
                json!(9),
                vec!["tuning-lower-chain-p99"],
            ),
            (
                "/ctscope/chain_length/reply/p99".into(),
                Value::Null,
                vec!["tuning-lower-chain-p99"],
            ),
            (
                "/tuning/rollback_exit".into(),
                json!(1),
                vec!["tuning-rollback"],
            ),
            (
                "/tuning/settings_rolled_back/max".into(),
                json!(16384),
                vec!["tuning-rollback"],
            ),
            (
                "/tuning/left_after_rollback".into(),
                json!(["/tmp/tune-etc/sysctl.d/90-ctscope-conntrack.conf"]),
                vec!["tuning-rollback"],
            ),
        ];
        each_fails_its_check(cases);
        // Every kind of drop in the replay counts, alloc_failed included; a missing one fails.
        for key in DROP_KEYS {
            for value in [json!(1), Value::Null] {
                let mut r = tuning_good();
                set(&mut r, &format!("{replay}/drops/{key}"), value.clone());
                let cs = checks(&r, &s);
                assert_eq!(failed(&cs), ["tuning-replay-no-drops"], "{key} {value}");
            }
        }
        // The first run's refusals below the floor.
        let mut r = tuning_good();
        set(&mut r, "/truth/stat_delta/drop", json!(0));
        set(&mut r, "/truth/stat_delta/insert_failed", json!(0));
        assert_eq!(
            failed(&checks(&r, &s)),
            ["tuning-drops-before", "tuning-comparison"]
        );
    }

    #[test]
    fn a_missing_or_broken_tuning_section_fails() {
        let s = tuning_scenario("");
        let mut r = tuning_good();
        r["tuning"] = Value::Null;
        let cs = checks(&r, &s);
        assert_eq!(failed(&cs), ["tuning"]);
        assert!(
            cs[0].detail.contains("no tuning section"),
            "{}",
            cs[0].detail
        );
        set(&mut r, "/tuning", json!({"apply_exit": "0"}));
        let cs = checks(&r, &s);
        assert_eq!(failed(&cs), ["tuning"]);
        assert!(cs[0].detail.contains("does not parse"), "{}", cs[0].detail);
        // A missing truth says which figure is missing.
        let mut r = tuning_good();
        set(&mut r, "/truth/stat_delta/drop", Value::Null);
        let cs = checks(&r, &s);
        let c = cs
            .iter()
            .find(|c| c.name == "tuning-comparison")
            .expect("check");
        assert_eq!(c.detail, "truth/stat_delta/drop is null (not measured)");
        let mut r = tuning_good();
        set(
            &mut r,
            "/tuning/replay_ctscope/drops/alloc_failed",
            Value::Null,
        );
        let cs = checks(&r, &s);
        let c = cs
            .iter()
            .find(|c| c.name == "tuning-replay-no-drops")
            .expect("check");
        assert_eq!(
            c.detail,
            "replay report: drops/alloc_failed is null (not measured)"
        );
    }

    #[test]
    fn recommended_buckets_are_applied_in_whole_pages() {
        assert_eq!(table_buckets(0), 512);
        assert_eq!(table_buckets(512), 512);
        assert_eq!(table_buckets(513), 1024);
        let s = tuning_scenario("");
        let mut r = tuning_good();
        set(&mut r, "/tuning/recommendation/buckets", json!(16000));
        set(
            &mut r,
            "/tuning/persisted/0/1",
            json!("options nf_conntrack hashsize=16000\n"),
        );
        set(
            &mut r,
            "/tuning/persisted/1/1",
            json!(
                "net.netfilter.nf_conntrack_max = 16384\nnet.netfilter.nf_conntrack_buckets = 16000\n"
            ),
        );
        assert_eq!(failed(&checks(&r, &s)), Vec::<String>::new());
    }

    fn run(scenario_tuning: &str, apply_exit: i32, apply_output: &str) -> Check {
        let scenario = Scenario::from_toml(&format!(
            "name = \"x\"\n[[containers]]\nname = \"a\"\nprotocol = \"udp\"\nflows = 1\n[tuning]\n{scenario_tuning}"
        ))
        .expect("scenario");
        let t = TuningResult {
            apply_exit: Some(apply_exit),
            apply_output: apply_output.into(),
            ..TuningResult::default()
        };
        let result = serde_json::json!({ "tuning": t });
        checks(&result, &scenario)
            .into_iter()
            .find(|c| c.name.starts_with("tuning-forced") || c.name == "tuning-no-risk")
            .expect("the force check")
    }

    #[test]
    fn a_forced_apply_must_print_the_risks_it_took() {
        let forced = "force = true\nforced_warnings = [\"max 65536 -> \"]\n";
        let printed = "ctscope apply:\n  ! warning (accepted with --force): max 65536 -> 6144 is a cut to 1/11 from an observation of 40 s\n";
        assert!(run(forced, 0, printed).passed);
        // Forced, but apply printed no such risk (or another one).
        assert!(!run(forced, 0, "ctscope apply:\n").passed);
        let other = "  ! warning (accepted with --force): buckets 65536 -> 16384 is a cut\n";
        assert!(!run(forced, 0, other).passed);
        // Not forced: a refusal as risky fails the check, a clean apply passes.
        assert!(run("", 0, "ctscope apply:\n").passed);
        let refused = "ctscope: error: refused, nothing was changed (1 risk; ...)";
        let c = run("", 6, refused);
        assert!(!c.passed && c.detail.contains("refused as risky"), "{c:?}");
    }
}
