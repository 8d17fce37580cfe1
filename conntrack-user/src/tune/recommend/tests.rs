use super::*;

#[test]
fn budgets_parse() {
    assert_eq!("5%".parse::<Budget>(), Ok(Budget::Percent(5.0)));
    assert_eq!("512MiB".parse::<Budget>(), Ok(Budget::Bytes(512 << 20)));
    assert_eq!("2GiB".parse::<Budget>(), Ok(Budget::Bytes(2 << 30)));
    assert_eq!("1000".parse::<Budget>(), Ok(Budget::Bytes(1000)));
    for bad in [
        "0",
        "0%",
        "101%",
        "-5%",
        "lots",
        "5 parsecs",
        "99999999999999999999GiB",
    ] {
        assert!(bad.parse::<Budget>().is_err(), "{bad}");
    }
}

#[test]
fn buckets_meet_the_target() {
    for (n, target) in [(4096u64, 4u32), (65_536, 4), (100_000, 6), (3000, 3)] {
        let b = buckets_for(n, 1.0, target).expect("a size fits");
        assert!(sizing::expected(n, b, 1.0).p99 <= f64::from(target));
        assert_eq!(b % sizing::BUCKET_ROUND, 0);
        // Not wastefully large: a page less would miss the target
        // (unless at the floor).
        assert!(
            b == 1024 || sizing::expected(n, b - 512, 1.0).p99 > f64::from(target),
            "{n}: {b}"
        );
    }
    // Skew asks for more buckets.
    assert!(buckets_for(65_536, 1.5, 4) > buckets_for(65_536, 1.0, 4));
    // The highest target allowed (40) would put λ near 27, where refilling
    // a table of 1M or 10M entries expects "chain too long" refusals
    // (which apply refuses): the search keeps below one.
    for n in [1_000_000u64, 10_000_000] {
        let b = buckets_for(n, 1.0, 40).expect("a size fits");
        let refused = sizing::expected_chain_refusals(n, n, b);
        assert!(refused < 1.0, "{n} in {b}: {refused}");
    }
    // Monotone in the entries, bounded, and None where not even the
    // largest table meets the target (it once doubled without bound).
    let mut last = 0;
    for n in [1u64, 1000, 100_000, 1_000_000, 10_000_000, 27_000_000] {
        let b = buckets_for(n, 1.0, 4).expect("fits");
        assert!(b >= last && b <= sizing::MAX_BUCKETS, "{n}: {b}");
        last = b;
    }
    assert_eq!(buckets_for(100_000_000, 1.0, 4), None);
    assert_eq!(buckets_for(u64::MAX, 1.0, 40), None);
    assert_eq!(buckets_for(1000, f64::INFINITY, 4), None);
}

/// A report as `observe` writes it, with only what the tuner reads.
fn report(extra: serde_json::Value) -> Report {
    let mut r = serde_json::json!({
        "ctscope_version": "0.1.0",
        "mode": "kprobe",
        "kernel_release": "6.1.0-50-cloud-amd64",
        "duration_s": 120.0,
        "inserts": 10000,
        "drops": {"table_full": 0, "chain_too_long": 0, "clash": 0, "other": 0, "alloc_failed": 0},
        "settings": {"buckets": 65536, "max": 65536, "slab_object_size": 248, "slab_size": 256,
                     "ram_bytes": 2u64 << 30, "cpus": 2,
                     "timeouts": {"udp_timeout": 30, "tcp_timeout_time_wait": 120}},
        "kernel_stats": {"chaintoolong": 0},
        "occupancy": {"interval_s": 1.0, "samples": 120, "total_start": 0, "total_end": 3000,
                      "total_peak": 3000, "total_peak_at_s": 60.0, "netns_peak": 3000,
                      "netns_peak_name": "host", "growth_per_hour": null, "per_netns": []},
        "notices": []
    });
    if let (Some(o), serde_json::Value::Object(e)) = (r.as_object_mut(), extra) {
        o.extend(e);
    }
    serde_json::from_value(r).expect("a report")
}

#[test]
fn timeouts_shrink_only_where_entries_waited_them_out() {
    let exp = |waited: u64, max_active: f64| {
        serde_json::json!({"expiries": {"udp_timeout": {
            "timeout_s": 30, "count": 1000, "waited_out": waited,
            "active_p50_s": 0.0, "active_p99_s": 0.1, "active_max_s": max_active}}})
    };
    // 95% one-shot (DNS-like) flows: 30 -> 10 s (the floor; twice the
    // longest talk is 1 s).
    let r = recommend(&report(exp(950, 0.5)), &Options::default()).expect("rec");
    assert_eq!(r.timeouts.get("udp_timeout"), Some(&10));
    assert!(
        r.reasons
            .iter()
            .any(|t| t.contains("udp_timeout 30 -> 10 s")),
        "{r:?}"
    );
    // Flows that kept talking for 12 s: at least twice that, 24 s, is not
    // half of 30: unchanged.
    let r = recommend(&report(exp(950, 12.0)), &Options::default()).expect("rec");
    assert!(r.timeouts.is_empty(), "{:?}", r.timeouts);
    // Most entries still talking at expiry: unchanged.
    let r = recommend(&report(exp(500, 0.5)), &Options::default()).expect("rec");
    assert!(r.timeouts.is_empty());
    // No lifetimes (procfs mode): unchanged, and said so.
    let r = recommend(&report(serde_json::json!({})), &Options::default()).expect("rec");
    assert!(r.timeouts.is_empty());
    assert!(r.reasons.iter().any(|t| t.contains("timeouts unchanged")));
}

#[test]
fn max_covers_the_refused_demand_and_the_budget_is_never_exceeded() {
    let full = serde_json::json!({
        "drops": {"table_full": 5000, "chain_too_long": 0, "clash": 0, "other": 0, "alloc_failed": 0},
        "settings": {"buckets": 2048, "max": 2048, "slab_size": 256, "ram_bytes": 256u64 << 20,
                     "cpus": 2, "timeouts": {}},
        "occupancy": {"interval_s": 1.0, "samples": 10, "total_peak": 2048, "netns_peak": 2048,
                      "netns_peak_name": "host", "per_netns": []}
    });
    let r = recommend(&report(full.clone()), &Options::default()).expect("rec");
    // (2048 + 5000) x 2, up to a multiple of 1024.
    assert_eq!(r.max, 14_336);
    let cur = &r.comparison[0];
    assert_eq!((cur.method.as_str(), cur.would_drop), ("current", true));
    assert!(!r.comparison[4].would_drop);
    assert_eq!(r.memory_bytes, r.comparison[4].memory_bytes);
    // A budget below the recommendation cuts max, never past the budget.
    let opts = Options {
        budget: Some(Budget::Bytes(4 << 20)),
        ..Options::default()
    };
    let r = recommend(&report(full.clone()), &opts).expect("rec");
    assert!(r.memory_bytes <= 4 << 20, "{}", r.memory_bytes);
    assert!(r.max >= 7048 && r.max < 14_336, "{}", r.max);
    assert!(!r.warnings.is_empty());
    // One that cannot hold the observed demand is an error, not a silent cut.
    let opts = Options {
        budget: Some(Budget::Bytes(1 << 20)),
        ..Options::default()
    };
    assert!(matches!(
        recommend(&report(full), &opts),
        Err(RecommendError::BudgetTooSmall { .. })
    ));
}

#[test]
fn thousands() {
    assert_eq!(fmt_n(0), "0");
    assert_eq!(fmt_n(1_234_567), "1,234,567");
    assert_eq!(fmt_n(100), "100");
    assert_eq!(fmt_bytes(3 << 20), "3.0 MiB");
}

/// What a person reads for a host that refused connections: the
/// recommendation, its reasons and the methods side by side. A change of
/// wording or of a figure shows as a diff of the snapshot.
#[test]
fn the_recommendation_as_a_person_reads_it() {
    let full = serde_json::json!({
        "drops": {"table_full": 5000, "chain_too_long": 0, "clash": 0, "other": 0, "alloc_failed": 0},
        "settings": {"buckets": 2048, "max": 2048, "slab_size": 256, "ram_bytes": 256u64 << 20,
                     "cpus": 2, "timeouts": {"udp_timeout": 30}},
        "occupancy": {"interval_s": 1.0, "samples": 10, "total_peak": 2048, "netns_peak": 2048,
                      "netns_peak_name": "host", "per_netns": []},
        "expiries": {"udp_timeout": {"timeout_s": 30, "count": 1000, "waited_out": 950,
                     "active_p50_s": 0.0, "active_p99_s": 0.1, "active_max_s": 0.5}}
    });
    let r = recommend(&report(full), &Options::default()).expect("rec");
    insta::assert_snapshot!(render(&r));
}
