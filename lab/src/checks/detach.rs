//! `probes-detached`: ctscope's probes exist while it runs and are gone after it exits.
//!
//! The agent counts the conntrack lines of `/sys/kernel/debug/kprobes/list` (kprobes) and the
//! conntrack functions with a BPF trampoline in tracefs `enabled_functions` (fentry/fexit)
//! right after ctscope is ready (`truth.kprobes_during`) and after it has exited
//! (`truth.kprobes_after_exit`). The
//! first must be positive: it proves the list was readable and that the second's 0 means
//! something. A probe left behind would keep firing in every new connection of the host.

use serde_json::Value;

use super::{Check, compare, u64_at};

pub(super) fn check(truth: &Value) -> Check {
    compare(
        "probes-detached",
        (|| {
            let during = u64_at(truth, "kprobes_during")?;
            let after = u64_at(truth, "kprobes_after_exit")?;
            Ok((
                during > 0 && after == 0,
                format!(
                    "conntrack probes (kprobes and trampolines): {during} while running (> 0), {after} after exit (== 0)"
                ),
            ))
        })(),
    )
}

#[cfg(test)]
mod tests {
    use super::super::check as check_all;
    use super::super::fixture::{failed, good, scenario};
    use serde_json::{Value, json};

    #[test]
    fn probes_must_be_seen_and_then_gone() {
        let s = scenario("");
        let checks = check_all(&good(), &s);
        let c = checks
            .iter()
            .find(|c| c.name == "probes-detached")
            .expect("probes-detached is a generic check");
        assert!(c.passed, "{c}");

        for (during, after) in [(json!(7), json!(2)), (json!(0), json!(0))] {
            let mut r = good();
            r["truth"]["kprobes_during"] = during;
            r["truth"]["kprobes_after_exit"] = after;
            assert_eq!(failed(&check_all(&r, &s)), ["probes-detached"]);
        }
        for key in ["kprobes_during", "kprobes_after_exit"] {
            let mut r = good();
            r["truth"][key] = Value::Null;
            assert_eq!(
                failed(&check_all(&r, &s)),
                ["probes-detached"],
                "{key} null"
            );
            if let Some(t) = r["truth"].as_object_mut() {
                t.remove(key);
            }
            assert_eq!(
                failed(&check_all(&r, &s)),
                ["probes-detached"],
                "{key} missing"
            );
        }
    }
}
