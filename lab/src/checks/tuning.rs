//! The tuner's closed loop (`[tuning]` scenarios): what ctscope recommended was applied as
//! recommended, persisted as recommended, removed the drops of the first run, and was rolled
//! back exactly. Every figure on the kernel's side is read by the agent itself.

use serde_json::Value;

use super::{Check, json_at};
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

fn u(v: Option<&Value>) -> Option<u64> {
    v.and_then(Value::as_u64)
}

/// The longer of the two directions' measured p99.
fn chain_p99(report: &Value) -> Option<u64> {
    let o = u(json_at(report, "chain_length/orig/p99"))?;
    let r = u(json_at(report, "chain_length/reply/p99"))?;
    Some(o.max(r))
}

pub(super) fn checks(result: &Value, scenario: &Scenario) -> Vec<Check> {
    let mut out = Vec::new();
    let t: Option<TuningResult> = result
        .get("tuning")
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    let Some(t) = t else {
        out.push(Check::missing(
            "tuning",
            "the result has no tuning section (the closed loop did not run)".into(),
        ));
        return out;
    };
    let null = Value::Null;
    let rec = t.recommendation.as_ref().unwrap_or(&null);
    out.push(Check::new(
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
    ));

    // Applied exactly as recommended, read back from the kernel by the agent.
    let mut wrong = Vec::new();
    let want_b = u(rec.get("buckets")).map(table_buckets);
    if want_b != t.settings_applied.get("buckets").copied() {
        wrong.push(format!(
            "buckets {:?} (want {want_b:?})",
            t.settings_applied.get("buckets")
        ));
    }
    let want_m = u(rec.get("max"));
    if want_m != t.settings_applied.get("max").copied() {
        wrong.push(format!(
            "max {:?} (want {want_m:?})",
            t.settings_applied.get("max")
        ));
    }
    if let Some(Value::Object(ts)) = rec.get("timeouts") {
        for (k, v) in ts {
            if v.as_u64() != t.settings_applied.get(k).copied() {
                wrong.push(format!("{k} {:?} (want {v})", t.settings_applied.get(k)));
            }
        }
    }
    out.push(Check::new(
        "tuning-applied",
        t.apply_exit == Some(0) && wrong.is_empty() && rec.is_object(),
        format!(
            "apply exit {:?}; kernel now buckets {:?}, max {:?}{}",
            t.apply_exit,
            t.settings_applied.get("buckets"),
            t.settings_applied.get("max"),
            if wrong.is_empty() {
                ", as recommended".to_string()
            } else {
                format!("; DIFFERS: {}", wrong.join(", "))
            }
        ),
    ));

    // apply refuses risks (exit 6) unless --force; a forced apply prints each risk it took.
    let forced: Vec<&str> = t
        .apply_output
        .lines()
        .filter(|l| l.contains("warning (accepted with --force): "))
        .collect();
    match scenario.tuning.as_ref().filter(|x| x.force) {
        Some(tuning) => {
            let missing: Vec<&String> = tuning
                .forced_warnings
                .iter()
                .filter(|w| !forced.iter().any(|l| l.contains(w.as_str())))
                .collect();
            out.push(Check::new(
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
            ));
        }
        None => out.push(Check::new(
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
        )),
    }

    if scenario.tuning.as_ref().is_some_and(|x| x.persist) {
        let sysctl = t
            .persisted
            .iter()
            .find(|(p, _)| p.ends_with("sysctl.d/90-ctscope-conntrack.conf"));
        let modprobe = t
            .persisted
            .iter()
            .find(|(p, _)| p.ends_with("modprobe.d/ctscope-conntrack.conf"));
        let has = |text: &str, line: String| text.lines().any(|l| l.trim() == line);
        let ok = match (sysctl, modprobe, want_m, u(rec.get("buckets"))) {
            (Some((_, s)), Some((_, m)), Some(max), Some(b)) => {
                has(s, format!("net.netfilter.nf_conntrack_max = {max}"))
                    && has(s, format!("net.netfilter.nf_conntrack_buckets = {b}"))
                    && has(m, format!("options nf_conntrack hashsize={b}"))
            }
            _ => false,
        };
        out.push(Check::new(
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
        ));
    }

    let truth = result.get("truth").unwrap_or(&null);
    let before_drops = u(json_at(truth, "stat_delta/drop")).unwrap_or(0)
        + u(json_at(truth, "stat_delta/insert_failed")).unwrap_or(0);
    if let Some(min) = scenario.expect.drops_before_min {
        out.push(Check::new(
            "tuning-drops-before",
            before_drops >= min,
            format!("the kernel refused {before_drops} connections with its defaults (>= {min})"),
        ));
    }
    // The recommendation's own view of the first run must match what happened.
    let cur_drops = method(rec, "current").and_then(|c| c.get("would_drop")?.as_bool());
    let mine_drops = method(rec, "ctscope").and_then(|c| c.get("would_drop")?.as_bool());
    out.push(Check::new(
        "tuning-comparison",
        cur_drops == Some(before_drops > 0) && mine_drops == Some(false),
        format!(
            "comparison: current would_drop {cur_drops:?} (the run refused {before_drops}), ctscope would_drop {mine_drops:?}"
        ),
    ));
    if scenario.expect.cheaper_than_formulas {
        let mem = |m: &str| method(rec, m).and_then(|c| u(c.get("memory_bytes")));
        let (c, s, k) = (mem("ctscope"), mem("seed-formula"), mem("kube-proxy"));
        out.push(Check::new(
            "tuning-cheaper",
            matches!((c, s, k), (Some(c), Some(s), Some(k)) if c < s && c < k),
            format!("memory when full: ctscope {c:?}, seed formula {s:?}, kube-proxy {k:?} bytes"),
        ));
    }

    // The replay: no refusal at all, every flow one insert, ctscope agreeing.
    let rt = t.replay_truth.as_ref();
    let replay = t.replay_ctscope.as_ref().unwrap_or(&null);
    let drops = rt.map(|r| {
        (
            r.stat_delta.drop,
            r.stat_delta.insert_failed,
            r.stat_delta.early_drop,
        )
    });
    let ct_drops: Option<u64> = ["table_full", "chain_too_long", "clash", "other"]
        .iter()
        .map(|k| u(json_at(replay, &format!("drops/{k}"))))
        .sum();
    out.push(Check::new(
        "tuning-replay-no-drops",
        drops == Some((0, 0, 0)) && ct_drops == Some(0),
        format!(
            "after apply: kernel (drop, insert_failed, early_drop) {drops:?}, ctscope drops {ct_drops:?}"
        ),
    ));
    let sent: u64 = t
        .replay_clients
        .iter()
        .map(|c| c.load.flows.saturating_sub(c.load.send_errors))
        .sum();
    let ins = u(replay.get("inserts"));
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

    let same = t.settings_rolled_back == t.settings_before && !t.settings_before.is_empty();
    let diff: Vec<String> = t
        .settings_before
        .iter()
        .filter(|(k, v)| t.settings_rolled_back.get(*k) != Some(v))
        .map(|(k, v)| format!("{k} {v} -> {:?}", t.settings_rolled_back.get(k)))
        .collect();
    out.push(Check::new(
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
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
