use super::*;

/// A report as `observe --json` writes it, probe mode, with `extra` merged.
fn report(extra: serde_json::Value) -> Report {
    let mut r = serde_json::json!({
        "ctscope_version": "0.1.0",
        "mode": "fentry",
        "kernel_release": "6.1.0-50-cloud-amd64",
        "duration_s": 120.0,
        "inserts": 10000,
        "drops": {"table_full": 7, "chain_too_long": 0, "clash": 2, "other": 1, "alloc_failed": null},
        "settings": {"buckets": 65536, "max": 65536, "count_end": 3000},
        "kernel_stats": {"drop": 7, "insert_failed": 3},
        "notices": []
    });
    if let (Some(o), serde_json::Value::Object(e)) = (r.as_object_mut(), extra) {
        o.extend(e);
    }
    serde_json::from_value(r).expect("a report")
}

fn render(r: Report, series_max: usize) -> String {
    openmetrics(Scrape {
        report: r,
        lifetimes: Vec::new(),
        series_max,
        cost: false,
        live_age: None,
    })
    .expect("encodes")
}

/// The value of the one sample line that starts with `prefix` + ` `.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

#[test]
fn label_values_are_escaped_and_bounded() {
    assert_eq!(label_value("web-1"), "web-1");
    assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    assert_eq!(label_value("bell\u{7}"), "bell?");
    assert_eq!(label_value(&"x".repeat(500)).chars().count(), LABEL_MAX);
}

#[test]
fn drops_by_reason_and_none_for_what_is_unknown() {
    let t = render(report(serde_json::json!({})), 50);
    assert_eq!(
        value(&t, "ctscope_conntrack_drops_total{reason=\"table_full\"}"),
        Some(7.0)
    );
    assert_eq!(
        value(&t, "ctscope_conntrack_drops_total{reason=\"clash\"}"),
        Some(2.0)
    );
    // alloc_failed is null in the report: absent, never 0.
    assert!(!t.contains("reason=\"alloc_failed\""), "{t}");
    assert_eq!(value(&t, "ctscope_conntrack_inserts_total"), Some(10000.0));
    assert_eq!(value(&t, "ctscope_conntrack_entries"), Some(3000.0));
    assert_eq!(value(&t, "ctscope_probes_attached"), Some(1.0));
    assert!(t.ends_with("# EOF\n"));
}

#[test]
fn chain_lengths_are_a_cumulative_histogram_with_the_kernel_limit_visible() {
    let chain = serde_json::json!({"histogram": [[1, 5], [2, 3], [55, 1]], "samples": 9,
        "mean": 2.0, "p50": 1, "p99": 55, "max": 55, "truncated": 0});
    let t = render(
        report(serde_json::json!({"chain_length": {"orig": chain, "reply": chain}})),
        50,
    );
    let b = |le: &str| {
        value(
            &t,
            &format!("ctscope_conntrack_chain_length_bucket{{le=\"{le}\",direction=\"orig\"}}"),
        )
    };
    assert_eq!(b("1.0"), Some(5.0), "{t}");
    assert_eq!(b("2.0"), Some(8.0));
    // 55 is past the kernel's lowest limit (50) and within its highest (79).
    assert_eq!(b("49.0"), Some(8.0));
    assert_eq!(b("64.0"), Some(9.0));
    assert_eq!(b("+Inf"), Some(9.0));
    assert_eq!(
        value(
            &t,
            "ctscope_conntrack_chain_length_count{direction=\"reply\"}"
        ),
        Some(9.0)
    );
    assert_eq!(
        value(&t, "ctscope_conntrack_chain_length_sum{direction=\"orig\"}"),
        Some(18.0)
    );
}

#[test]
fn namespaces_past_the_limit_fold_into_other() {
    let ns = |inode: u64, name: &str, live: u64, inserts: u64| {
        serde_json::json!({"inode": inode, "name": name, "kind": "container", "inserts": inserts,
            "live_entries": live, "drops": {"table_full": 1, "chain_too_long": 0, "clash": 0,
            "other": 0, "alloc_failed": null}})
    };
    let t = render(
        report(serde_json::json!({"netns": [
            ns(1, "small", 5, 50), ns(2, "big", 500, 60), ns(3, "mid", 50, 70), ns(4, "tiny", 1, 80)
        ]})),
        2,
    );
    let e = |labels: &str| value(&t, &format!("ctscope_netns_conntrack_entries{{{labels}}}"));
    assert_eq!(
        e("netns_inode=\"2\",name=\"big\",kind=\"container\""),
        Some(500.0)
    );
    assert_eq!(
        e("netns_inode=\"3\",name=\"mid\",kind=\"container\""),
        Some(50.0)
    );
    assert_eq!(
        e("netns_inode=\"other\",name=\"other\",kind=\"other\""),
        Some(6.0)
    );
    assert!(!t.contains("name=\"small\""));
    assert_eq!(value(&t, "ctscope_netns_series_folded"), Some(2.0));
    assert_eq!(
        value(
            &t,
            "ctscope_netns_conntrack_inserts_total{netns_inode=\"other\",name=\"other\",kind=\"other\"}"
        ),
        Some(130.0)
    );
    assert_eq!(
        value(
            &t,
            "ctscope_netns_conntrack_drops_total{netns_inode=\"other\",name=\"other\",kind=\"other\",reason=\"table_full\"}"
        ),
        Some(2.0)
    );
    // Every namespace's entries, the folded ones included.
    assert_eq!(value(&t, "ctscope_conntrack_entries"), Some(556.0));
}

#[test]
fn the_classic_format_names_counters_with_total_and_has_no_eof() {
    let om = render(report(serde_json::json!({})), 50);
    let c = classic(&om);
    assert!(
        c.contains("# TYPE ctscope_conntrack_drops_total counter\n"),
        "{c}"
    );
    assert!(c.contains("# HELP ctscope_conntrack_drops_total "), "{c}");
    assert!(c.contains("# TYPE ctscope_build_info gauge\n"), "{c}");
    assert!(!c.contains("# EOF") && !c.contains("# UNIT"), "{c}");
    // Samples are the same lines.
    let samples = |t: &str| t.lines().filter(|l| !l.starts_with('#')).count();
    assert_eq!(samples(&om), samples(&c));
}
