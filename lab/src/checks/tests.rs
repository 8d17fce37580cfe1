//! Tests of the lab assertions as a whole: a consistent run passes every check, and each
//! mismatch fails its own.

#[test]
fn early_deaths_are_allowed_only_when_the_net_change_is_exact() {
    let report = |inserts: u64, deaths: u64| {
        serde_json::json!({
            "inserts": inserts,
            "lifetimes": {"tcp": {"count": deaths, "by_end": {"unconfirmed": 0}}},
            "lifetimes_untracked": 0
        })
    };
    let truth = |settle: bool| {
        serde_json::json!({
            "inserts": 3495, "deletes": 3495,
            "settle": if settle { serde_json::json!({"timeout_s": 20}) } else { Value::Null }
        })
    };
    // The short-tcp run on 6.12: 5 entries died before the truth's snapshot.
    assert_eq!(unseen_early_deaths(&report(3500, 3500), &truth(true)), 5);
    // Overcounted inserts (deaths do not follow): no allowance.
    assert_eq!(unseen_early_deaths(&report(3500, 3495), &truth(true)), 0);
    // Scenarios where nothing should die in the run: no allowance.
    assert_eq!(unseen_early_deaths(&report(3500, 3500), &truth(false)), 0);
    assert_eq!(unseen_early_deaths(&report(3495, 3495), &truth(true)), 0);
}

use super::fixture::{failed, good, scenario, set};
use super::*;
use serde_json::json;

#[test]
fn consistent_run_passes_everything() {
    let s = scenario(
        "table_full_min = 1\nchain_too_long_min = 5\ndrops_max = 20\ninserts_min = 1470\nchain_max_min = 9",
    );
    let checks = check(&good(), &s);
    assert_eq!(failed(&checks), Vec::<String>::new(), "{checks:#?}");
    assert!(all_passed(&checks));
    // 13 generic checks, 2 namespace checks (host; the quiet ones), 3 container checks (a, b,
    // their sum), 7 life-and-death checks, 5 expectations.
    assert_eq!(checks.len(), 30);
}

#[test]
fn calls_kept_follows_the_kernels_config_not_ctscope() {
    let s = scenario("calls_kept = \"by_preemption\"");
    let kept = |preempt: Option<&str>, doctor: &str, got: &str| {
        let mut r = good();
        r["kernel_preempt"] = json!(preempt);
        r["doctor"]["preemption"] = json!({ "model": doctor });
        r["ctscope"]["probes"]["calls_kept"] = json!(got);
        check(&r, &s)
            .into_iter()
            .find(|c| c.name == "expect.calls_kept")
            .map(|c| c.passed)
    };
    assert_eq!(kept(Some("voluntary"), "voluntary", "per_cpu"), Some(true));
    assert_eq!(kept(Some("lazy"), "lazy", "per_task"), Some(true));
    // ctscope (and its doctor) misreading a lazy kernel as voluntary is caught.
    assert_eq!(kept(Some("lazy"), "voluntary", "per_cpu"), Some(false));
    // Without a config, doctor's reading is all there is.
    assert_eq!(kept(None, "full", "per_task"), Some(true));
}

#[test]
fn inserts_the_kernel_skipped_are_allowed_exactly() {
    let s = scenario("");
    let inserts = |r: &Value| {
        check(r, &s)
            .into_iter()
            .find(|c| c.name == "inserts")
            .map(|c| c.passed)
    };
    let short = |by: u64, skipped: u64| {
        let mut r = good();
        let n = r["ctscope"]["inserts"].as_u64().unwrap_or(0);
        r["ctscope"]["inserts"] = json!(n - by);
        r["ctscope"]["probes"]["recursion_misses"] = json!({ "hash_insert_ret": skipped });
        r
    };
    assert_eq!(inserts(&short(3, 3)), Some(true));
    assert_eq!(inserts(&short(3, 2)), Some(false));
    assert_eq!(inserts(&short(0, 1)), Some(false));
}

#[test]
fn a_slow_or_killed_stop_fails() {
    let s = scenario("");
    let stop = |r: &Value| {
        check(r, &s)
            .into_iter()
            .find(|c| c.name == "stop")
            .map(|c| c.passed)
    };
    assert_eq!(stop(&good()), Some(true));
    let mut slow = good();
    slow["ctscope_stop_s"] = json!(STOP_LIMIT_S + 0.5);
    assert_eq!(stop(&slow), Some(false));
    let mut killed = good();
    killed["ctscope_stop_s"] = Value::Null;
    killed["ctscope_exit"] = Value::Null;
    assert_eq!(stop(&killed), Some(false));
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

    // Every kind of walk failure counts, and a ctscope without the newer keys fails.
    for key in ["link_mismatch", "dir_mismatch", "read_errors"] {
        let mut r = good();
        r["ctscope"]["self_check"][key] = json!(1);
        assert_eq!(failed(&check(&r, &s)), ["self-check"], "{key}");
        if let Some(o) = r["ctscope"]["self_check"].as_object_mut() {
            o.remove(key);
        }
        assert_eq!(failed(&check(&r, &s)), ["self-check"], "{key} missing");
    }

    let mut r = good();
    r["clients"][0]["send_errors"] = json!(11);
    assert_eq!(failed(&check(&r, &s)), ["flows-accounted"]);

    let mut r = good();
    r["errors"] = json!(["ip link add failed"]);
    let checks = check(&r, &s);
    assert_eq!(failed(&checks), ["agent-errors"]);
    assert!(checks[0].detail.contains("ip link add failed"));
}

#[test]
fn attribution_and_life_checks_fail_on_each_difference() {
    let s = scenario("");
    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        ("/ctscope/netns/0/inserts", json!(1469), vec!["netns[host]"]),
        (
            "/ctscope/netns/0/live_entries",
            json!(1),
            vec!["netns[host]"],
        ),
        (
            "/ctscope/netns/0/drops/other",
            json!(0),
            vec!["netns[host]"],
        ),
        // Activity in a quiet namespace: misattributed entries.
        ("/ctscope/netns/1/inserts", json!(3), vec!["netns-quiet"]),
        // A's share too small for what the host refused, and the sum off.
        (
            "/ctscope/containers/0/nat_inserts",
            json!(960),
            vec!["container[a]", "containers-nat-sum"],
        ),
        (
            "/ctscope/containers/1/own_inserts",
            json!(1),
            vec!["container[b]"],
        ),
        (
            "/ctscope/containers/1/addresses",
            json!(["172.17.0.9"]),
            vec!["container[b]"],
        ),
        ("/truth/deletes", json!(11), vec!["lifetimes"]),
        ("/ctscope/lifetimes/udp/count", json!(9), vec!["lifetimes"]),
        (
            "/ctscope/lifetimes",
            Value::Null,
            vec!["lifetimes", "lifetimes-early-drop"],
        ),
        (
            "/ctscope/lifetimes/tcp/by_end/early_drop",
            json!(1),
            vec!["lifetimes", "lifetimes-early-drop"],
        ),
        ("/ctscope/early_drop/evicted", json!(9), vec!["early-drop"]),
        ("/ctscope/clash/failed", json!(1), vec!["clash"]),
        ("/truth/stat_delta/clash_resolve", json!(0), vec!["clash"]),
        (
            "/ctscope/dying_at_confirm",
            Value::Null,
            vec!["dying-at-confirm"],
        ),
        // More dying entries than ctscope's other refusals (1) and than the kernel's
        // insert_failed beyond its chain refusals (8 - 5).
        (
            "/ctscope/dying_at_confirm",
            json!(2),
            vec!["dying-at-confirm"],
        ),
        (
            "/ctscope/lookups",
            json!({"count": 1}),
            vec!["lookups-consistent"],
        ),
        ("/ctscope/cost/programs", Value::Null, vec!["cost"]),
        ("/ctscope/cost/max_rss_kib", json!(0), vec!["cost"]),
        ("/ctscope/cost/cpu_percent", json!(-1.0), vec!["cost"]),
        ("/ctscope/cost/cpu_percent", Value::Null, vec!["cost"]),
        // A namespace unknown to the lab with a null count is no quiet one.
        ("/ctscope/netns/1/inode", json!(4242), vec![]),
    ];
    for (path, value, want) in cases {
        let mut r = good();
        set(&mut r, path, value);
        assert_eq!(failed(&check(&r, &s)), want, "{path}");
    }
    // An unknown namespace must report its count: null or missing is no 0.
    for inserts in [Value::Null, json!("0")] {
        let mut r = good();
        set(&mut r, "/ctscope/netns/1/inode", json!(4242));
        set(&mut r, "/ctscope/netns/1/inserts", inserts);
        assert_eq!(failed(&check(&r, &s)), ["netns-quiet"]);
    }
    // Without --cost the report must not have bpf_stats (they stay off).
    let mut plain = s.clone();
    plain.ctscope.args = vec!["observe".into()];
    assert_eq!(failed(&check(&good(), &plain)), ["cost"]);
    let mut r = good();
    r["ctscope"]["cost"]["programs"] = Value::Null;
    assert!(failed(&check(&r, &plain)).is_empty());
    // A wrong share fails, and the detail names both sides.
    let mut r = good();
    r["ctscope"]["containers"][0]["nat_inserts"] = json!(960);
    let checks = check(&r, &s);
    let c = checks
        .iter()
        .find(|c| c.name == "containers-nat-sum")
        .expect("check");
    assert_eq!(c.detail, "sum of nat_inserts 1450, host inserts 1470");
}

#[test]
fn container_shares_are_exact_when_the_host_refused_nothing() {
    let s = scenario("");
    let mut r = good();
    for path in [
        "/truth/per_netns/0/stat_delta/drop",
        "/truth/per_netns/0/stat_delta/insert_failed",
    ] {
        set(&mut r, path, json!(0));
    }
    let checks = check(&r, &s);
    let a = checks
        .iter()
        .find(|c| c.name == "container[a]")
        .expect("check");
    assert!(!a.passed);
    assert!(
        a.detail
            .starts_with("DIFFERS: nat_inserts 980 vs flows 1000 - send_errors 10 = 990"),
        "{}",
        a.detail
    );
}

#[test]
fn lookups_are_checked_when_asked_for() {
    let s = Scenario::from_toml(
        "name = \"t\"\n[[containers]]\nname = \"a\"\nprotocol = \"udp\"\nflows = 1000\n\
         [[containers]]\nname = \"b\"\nprotocol = \"tcp\"\nflows = 500\n\
         [ctscope]\nargs = [\"observe\", \"--lookups\"]\n",
    )
    .expect("valid");
    let lookups = json!({"count": 100, "hits": 60, "misses": 40,
        "latency_ns": {"mean": 300.0, "p50": 250, "p99": 900, "max": 1200},
        "chain": {"histogram": [[1, 100]], "samples": 100, "mean": 1.0, "p50": 1, "p99": 1, "max": 1, "truncated": 0},
        "overhead_ns_per_lookup": 150.0});
    let mut r = good();
    r["ctscope"]["lookups"] = lookups.clone();
    assert_eq!(failed(&check(&r, &s)), Vec::<String>::new());
    for (path, value) in [
        ("/ctscope/lookups/hits", json!(61)),
        ("/ctscope/lookups/latency_ns/p99", json!(1300)),
        ("/ctscope/lookups/chain", Value::Null),
        ("/ctscope/lookups/count", json!(0)),
    ] {
        let mut r = good();
        r["ctscope"]["lookups"] = lookups.clone();
        set(&mut r, path, value);
        assert_eq!(failed(&check(&r, &s)), ["lookups-consistent"], "{path}");
    }
    let r = good();
    assert_eq!(
        failed(&check(&r, &s)),
        ["lookups-consistent"],
        "null with --lookups"
    );
}

#[test]
fn drop_column_counts_slab_allocation_failures() {
    let s = scenario("");
    let checks = check(&good(), &s);
    let drop_column = checks
        .iter()
        .find(|c| c.name == "drop-column")
        .expect("check");
    assert!(drop_column.passed);
    assert_eq!(
        drop_column.detail,
        "table_full 11 + clash 2 + alloc_failed 1 = 14, kernel drop 14"
    );

    // An allocation failure ctscope missed (or invented) shows in the drop column.
    let mut r = good();
    r["ctscope"]["drops"]["alloc_failed"] = json!(2);
    assert_eq!(failed(&check(&r, &s)), ["drop-column", "flows-accounted"]);

    // A report without the key (an older ctscope) is read with 0 and says so.
    for absent in ["missing", "null"] {
        let mut r = good();
        for drops in ["/ctscope/drops", "/ctscope/netns/0/drops"] {
            let Some(d) = r.pointer_mut(drops) else {
                panic!("{drops} in the fixture");
            };
            if absent == "null" {
                d["alloc_failed"] = Value::Null;
            } else if let Some(o) = d.as_object_mut() {
                o.remove("alloc_failed");
            }
        }
        r["truth"]["stat_delta"]["drop"] = json!(13);
        r["truth"]["per_netns"][0]["stat_delta"]["drop"] = json!(13);
        r["clients"][0]["send_errors"] = json!(11);
        let checks = check(&r, &s);
        assert_eq!(
            failed(&checks),
            Vec::<String>::new(),
            "{absent}: {checks:#?}"
        );
        for name in ["drop-column", "flows-accounted"] {
            let c = checks.iter().find(|c| c.name == name).expect("check");
            assert!(
                c.detail
                    .contains(&format!("alloc_failed 0 ({absent} in the report")),
                "{absent}: {}",
                c.detail
            );
        }
        // ... and the kernel's slab failure then shows as a mismatch, not a missing value.
        r["truth"]["stat_delta"]["drop"] = json!(14);
        r["truth"]["per_netns"][0]["stat_delta"]["drop"] = json!(14);
        assert_eq!(
            failed(&check(&r, &s)),
            ["drop-column", "netns[host]"],
            "{absent}"
        );
    }

    // Present but not a count: a broken report fails every drop check.
    let mut r = good();
    r["ctscope"]["drops"]["alloc_failed"] = json!("1");
    let checks = check(&r, &s);
    assert_eq!(
        failed(&checks),
        [
            "drop-column",
            "chain-too-long",
            "insert-failed",
            "flows-accounted"
        ]
    );
    assert!(
        checks
            .iter()
            .any(|c| c.detail == "drops/alloc_failed is not an unsigned integer: \"1\"")
    );
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
        "mode",
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
            "mode",
            "drop-column",
            "chain-too-long",
            "insert-failed",
            "self-check",
            "flows-accounted",
            // doctor predicted kprobe mode; observe used procfs.
            "doctor"
        ]
    );
}

#[test]
fn clients_must_match_the_scenario() {
    let s = scenario("");
    let mut r = good();
    r["clients"] = json!([r["clients"][0].clone()]);
    // Without b's summary its flows cannot be accounted for either.
    assert_eq!(failed(&check(&r, &s)), ["clients", "flows-accounted"]);

    let mut r = good();
    r["truth"] = Value::Null;
    let f = failed(&check(&r, &s));
    assert!(f.contains(&"clients".to_string()) && f.contains(&"inserts".to_string()));
    assert!(f.contains(&"probes-detached".to_string()));
}
