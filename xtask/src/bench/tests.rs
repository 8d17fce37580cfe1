use super::tables::{BEGIN, END, load_summaries, splice};
use super::*;
use serde_json::json;

fn run(round: u32, variant: &str, rate: f64, busy_ns: u64, cpu: Option<f64>) -> Value {
    let ctscope = (!variant.starts_with("baseline")).then(|| {
        let programs = if variant == "default" {
            Value::Null
        } else {
            json!([{"name": "insert", "run_cnt": 1000, "run_time_ns": 2_000_000, "ns_per_run": 2000.0}])
        };
        json!({"duration_s": 10.0, "cost": {"programs": programs, "cpu_seconds": 1.0, "cpu_percent": 3.0, "max_rss_kib": 20480},
               "lookups": if variant == "lookups" { json!({"overhead_ns_per_lookup": 150.0}) } else { Value::Null }})
    });
    json!({"round": round, "variant": variant, "flows": 1000, "send_errors": 0, "connect_failures": 0,
           "elapsed_s": 1000.0 / rate, "rate": rate, "inserts": 1000, "ctscope": ctscope, "ctscope_cpu_s": cpu,
           "busy_ns": busy_ns, "window_ns": 200_000u64,
           // Idle: 1 % of the guest busy without ctscope, 1.5 % with it.
           "idle_busy_ns": if variant.starts_with("baseline") { 20_000_000u64 } else { 30_000_000 },
           "idle_window_ns": 2_000_000_000u64})
}

#[test]
fn summary_compares_busy_time_with_the_rounds_baselines() {
    let scenario = ctscope_lab::Scenario::from_toml(
        "name = \"bench\"\n[[containers]]\nname = \"a\"\nprotocol = \"tcp\"\nflows = 1000\nclose = true\n[bench]\nrounds = 2\n",
    )
    .expect("valid");
    // Round 0: baselines 100 and 102 ns per connection (reference 101), default +2 %,
    // cost +5 %, lookups +10 %; round 1: both baselines 100, +1 %, +4 %, +10 %.
    let result = json!({"kernel": "6.1", "kernel_package_version": "6.1.176-1", "accel": "tcg",
        "guest_clock": "icount", "errors": [],
        "bench": [run(0, "baseline", 500.0, 100_000, None), run(0, "default", 490.0, 103_020, Some(0.02)),
                  run(0, "baseline-aa", 500.0, 102_000, None), run(0, "cost", 480.0, 106_050, Some(0.02)),
                  run(0, "lookups", 450.0, 111_100, Some(0.03)),
                  run(1, "default", 396.0, 101_000, Some(0.02)), run(1, "baseline-aa", 400.0, 100_000, None),
                  run(1, "cost", 390.0, 104_000, Some(0.02)), run(1, "lookups", 360.0, 110_000, Some(0.03)),
                  run(1, "baseline", 400.0, 100_000, None)]});
    let s = summarize(
        &result,
        &scenario,
        "cargo xtask bench --kernel 6.1 --rounds 2",
        "2026-12-04",
        Some("abc123"),
    )
    .expect("summary");
    assert_eq!(s["rounds"], json!(2));
    assert_eq!(s["ctscope_commit"], json!("abc123"));
    let sum = &s["summary"];
    assert_eq!(sum["rounds"], json!(2));
    assert_eq!(sum["default_overhead_pct"], json!(1.5));
    assert_eq!(sum["cost_overhead_pct"], json!(4.5));
    assert_eq!(sum["lookups_overhead_pct"], json!(10.0));
    // |100 - 102| / 101 = 1.98 %: over the 1 % limit, flagged.
    assert_eq!(sum["aa_spread_pct"], json!(1.98));
    assert_eq!(sum["aa_spread_pct_rounds"], json!([1.98, 0.0]));
    assert_eq!(sum["aa_flagged"], json!(true));
    assert_eq!(sum["baseline_busy_ns_per_conn"], json!(100.0));
    // bpf_stats of the cost variant: 4,000,000 ns over 2,000 connections.
    assert_eq!(sum["ebpf_ns_per_conn"], json!(2000.0));
    assert_eq!(sum["programs"][0]["run_cnt"], json!(2000));
    assert_eq!(sum["programs"][0]["ns_per_run"], json!(2000.0));
    assert!(
        s["variants"]["default"]["programs"]
            .as_array()
            .is_some_and(Vec::is_empty)
    );
    // ctscope's fixed cost: 1.5 % - 1 % of a core.
    assert_eq!(sum["ctscope_idle_cpu_pct"], json!(0.5));
    // Less that fixed cost over each window (0.005 x 200 us / 1000 connections = 1 ns
    // each): rounds +1.01 % and 0 %.
    assert_eq!(
        s["variants"]["default"]["marginal_overhead_percent_rounds"],
        json!([1.01, 0.0])
    );
    assert_eq!(sum["default_marginal_overhead_pct"], json!(0.51));
    // 20 ms of CPU over a 200 µs window, 1 µs of it the fixed cost: 20.0 µs per
    // connection (rounded); at 5,000/s 0.5 % + 10 %.
    assert_eq!(
        s["variants"]["default"]["ctscope_cpu_us_per_connection"],
        json!(20.0)
    );
    assert_eq!(sum["ctscope_cpu_percent_at_5000_per_s"], json!(10.5));
    // The rates stay, secondary: ratios 0.98 and 0.99, median 0.985, overhead 1.5 %.
    assert_eq!(s["variants"]["default"]["median_ratio"], json!(0.985));
    assert_eq!(sum["rate_overhead_pct"], json!(1.5));
    let goal = |k: &str| {
        s["goals"].as_object().and_then(|g| {
            g.iter()
                .find(|(n, _)| n.starts_with(k))
                .map(|(_, v)| v.clone())
        })
    };
    assert_eq!(goal("default_probes_at_most_1.5"), Some(json!(true)));
    assert_eq!(goal("ctscope_at_most_1"), Some(json!(false)));
    assert_eq!(goal("rss_at_most_24"), Some(json!(true)));
    // (500 - 400) / 450: the baseline's rate spread over the two rounds.
    assert_eq!(
        s["variants"]["baseline"]["rate_spread_percent"],
        json!(22.22)
    );
    let t = table(&[s]);
    assert!(
        t.contains("| 6.1 (6.1.176-1) | 2026-12-04 | `abc123` | tcg, icount | 2 | 100 | 1.98 % (flagged) | 1.50 % (1.00..2.00) | 0.51 % | n/a | 4.50 % (4.00..5.00) | 10 % (10.00..10.00) | 2000 | 0.50 % / n/a | 10.50 % | n/a / 20.0 MiB | 1.50 % | yes / no / yes |"),
        "{t}"
    );
    assert!(t.contains("| 6.1 | insert | 2000 | 2000 |"), "{t}");
    assert!(
        t.contains("| 6.1 | lookups | insert | 2000 | 2000 |"),
        "{t}"
    );
}

#[test]
fn benchmarks_md_is_generated_from_the_committed_results() {
    let (files, summaries) = load_summaries().expect("bench/results");
    assert!(!files.is_empty());
    let path = paths::workspace_root().join("BENCHMARKS.md");
    let text = std::fs::read_to_string(&path).expect("BENCHMARKS.md");
    let expected = splice(&text, &table(&summaries)).expect("markers");
    assert!(
        text == expected,
        "BENCHMARKS.md is not what bench/results/*.json generate; expected:\n{expected}"
    );
}

#[test]
fn splice_replaces_only_the_generated_part() {
    let text = format!("# B\nintro\n{BEGIN}\nold\n{END}\nafter\n");
    let out = splice(&text, "new\n").expect("markers");
    assert_eq!(out, format!("# B\nintro\n{BEGIN}\nnew\n{END}\nafter\n"));
    assert!(splice("no markers", "x").is_err());
}

#[test]
fn dates_are_civil() {
    assert_eq!(civil_date(0), "1970-01-01");
    assert_eq!(civil_date(20_819), "2027-01-01");
    assert_eq!(civil_date(19_782), "2024-02-29");
}
