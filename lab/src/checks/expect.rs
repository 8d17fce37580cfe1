//! The scenario's `[expect]` floors and ceilings (`self_check_fails` is not one of them: it
//! chooses which generic checks apply, see [`super::check`]).

use serde_json::Value;

use super::exact::Drops;
use super::{Check, compare, json_at, u64_at};
use crate::scenario::Scenario;

pub(super) fn checks(
    result: &Value,
    report: &Value,
    truth: &Value,
    scenario: &Scenario,
    out: &mut Vec<Check>,
) {
    let e = &scenario.expect;
    let drops = Drops::read(report).ok();
    let drops = drops.as_ref();
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
    if e.attribution_armed {
        out.push(compare(
            "expect.attribution_armed",
            (|| {
                let throughout = super::exact::attributed_throughout(report)?;
                let arms = u64_at(report, "attribution/arms")?;
                let armed_s = json_at(report, "attribution/armed_s")
                    .and_then(Value::as_f64)
                    .ok_or("attribution/armed_s is not a number")?;
                Ok((
                    throughout || (arms >= 1 && armed_s > 0.0),
                    format!(
                        "attribution throughout {throughout}, armed {arms} times for {armed_s:.1} s"
                    ),
                ))
            })(),
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
    if let Some(want) = &e.calls_kept {
        let got = json_at(report, "probes/calls_kept").and_then(Value::as_str);
        // `by_preemption`: what the kernel's preemption model allows: per
        // CPU only where a probed call cannot be preempted (none,
        // voluntary); Debian's 7.x cloud kernels are `lazy`. The model is
        // the lab's own reading of the kernel's config (`kernel_preempt`,
        // xtask), not ctscope's; only a kernel without a config falls back
        // to doctor's, and says so.
        let (model, source) = match result.get("kernel_preempt").and_then(Value::as_str) {
            Some(m) => (Some(m), "the kernel's config"),
            None => (
                json_at(result, "doctor/preemption/model").and_then(Value::as_str),
                "doctor (no kernel config)",
            ),
        };
        let want = match (want.as_str(), model) {
            ("by_preemption", Some("none" | "voluntary")) => "per_cpu".to_string(),
            ("by_preemption", Some(_)) => "per_task".to_string(),
            ("by_preemption", None) => "<doctor's preemption model>".to_string(),
            (w, _) => w.to_string(),
        };
        out.push(Check::new(
            "expect.calls_kept",
            got == Some(want.as_str()),
            format!(
                "probes.calls_kept {} == {want} (preemption {}, from {source})",
                got.unwrap_or("<missing>"),
                model.unwrap_or("?")
            ),
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
    // Truth-side floors: proof that the scenario did to the kernel what it is about.
    if let Some(min) = e.deletes_min {
        out.push(compare(
            "expect.deletes_min",
            u64_at(truth, "deletes").map(|n| (n >= min, format!("kernel deletes {n} >= {min}"))),
        ));
    }
    if let Some(min) = e.early_drop_min {
        out.push(compare(
            "expect.early_drop_min",
            u64_at(truth, "stat_delta/early_drop")
                .map(|n| (n >= min, format!("kernel early_drop {n} >= {min}"))),
        ));
    }
    for (key, &min) in &e.by_end_min {
        out.push(compare(
            &format!("expect.by_end_min.{key}"),
            (|| {
                let Some(Value::Object(lifetimes)) = json_at(report, "lifetimes") else {
                    return Err("lifetimes missing or null".to_string());
                };
                let mut n = 0;
                for (proto, v) in lifetimes {
                    n +=
                        u64_at(v, &format!("by_end/{key}")).map_err(|w| format!("{proto}: {w}"))?;
                }
                Ok((n >= min, format!("sum of by_end.{key} {n} >= {min}")))
            })(),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::super::check;
    use super::super::fixture::{failed, good, scenario, set};
    use serde_json::{Value, json};

    /// The outcome and detail of check `name` on `r`.
    fn outcome(r: &Value, expect: &str, name: &str) -> (bool, String) {
        let c = check(r, &scenario(expect))
            .into_iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no check {name}"));
        (c.passed, c.detail)
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

    #[test]
    fn truth_floors_pass_when_met_and_fail_each_on_its_own() {
        // The fixture: 10 deletes, 10 early drops; by_end early_drop 2 + 8, unconfirmed 8 + 0.
        let met = "deletes_min = 10\nearly_drop_min = 10\n[expect.by_end_min]\nearly_drop = 10\nunconfirmed = 8";
        let f = failed(&check(&good(), &scenario(met)));
        assert_eq!(f, Vec::<String>::new());
        for (expect, name) in [
            ("deletes_min = 11", "expect.deletes_min"),
            ("early_drop_min = 11", "expect.early_drop_min"),
            (
                "[expect.by_end_min]\nearly_drop = 11",
                "expect.by_end_min.early_drop",
            ),
            (
                "[expect.by_end_min]\nunconfirmed = 9",
                "expect.by_end_min.unconfirmed",
            ),
        ] {
            assert_eq!(
                failed(&check(&good(), &scenario(expect))),
                [name],
                "{expect}"
            );
        }
        assert_eq!(
            outcome(&good(), "deletes_min = 11", "expect.deletes_min"),
            (false, "kernel deletes 10 >= 11".to_string())
        );
        assert_eq!(
            outcome(&good(), "early_drop_min = 10", "expect.early_drop_min"),
            (true, "kernel early_drop 10 >= 10".to_string())
        );
        assert_eq!(
            outcome(
                &good(),
                "[expect.by_end_min]\nearly_drop = 10",
                "expect.by_end_min.early_drop"
            ),
            (true, "sum of by_end.early_drop 10 >= 10".to_string())
        );
    }

    #[test]
    fn truth_floors_fail_on_a_missing_value() {
        let mut r = good();
        set(&mut r, "/truth/deletes", Value::Null);
        assert_eq!(
            outcome(&r, "deletes_min = 0", "expect.deletes_min"),
            (false, "deletes is null (not measured)".to_string())
        );
        let mut r = good();
        set(&mut r, "/truth/stat_delta/early_drop", Value::Null);
        assert_eq!(
            outcome(&r, "early_drop_min = 0", "expect.early_drop_min"),
            (
                false,
                "stat_delta/early_drop is null (not measured)".to_string()
            )
        );
        let mut r = good();
        set(
            &mut r,
            "/ctscope/lifetimes/udp/by_end/early_drop",
            Value::Null,
        );
        assert_eq!(
            outcome(
                &r,
                "[expect.by_end_min]\nearly_drop = 0",
                "expect.by_end_min.early_drop"
            ),
            (
                false,
                "udp: by_end/early_drop is null (not measured)".to_string()
            )
        );
        let mut r = good();
        set(&mut r, "/ctscope/lifetimes", Value::Null);
        assert_eq!(
            outcome(
                &r,
                "[expect.by_end_min]\nearly_drop = 0",
                "expect.by_end_min.early_drop"
            ),
            (false, "lifetimes missing or null".to_string())
        );
    }

    #[test]
    fn calls_kept_names_what_it_wanted_and_got() {
        let mut r = good();
        r["ctscope"]["probes"]["calls_kept"] = json!("per_cpu");
        assert!(outcome(&r, "calls_kept = \"per_cpu\"", "expect.calls_kept").0);
        let (passed, detail) = outcome(&r, "calls_kept = \"per_task\"", "expect.calls_kept");
        assert!(!passed);
        assert!(
            detail.starts_with("probes.calls_kept per_cpu == per_task"),
            "{detail}"
        );
        // A report without the key fails, and says so.
        let (passed, detail) = outcome(&good(), "calls_kept = \"per_cpu\"", "expect.calls_kept");
        assert!(!passed);
        assert!(
            detail.starts_with("probes.calls_kept <missing> == per_cpu"),
            "{detail}"
        );
    }
}
