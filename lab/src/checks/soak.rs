//! `[soak]` scenarios: what the agent sampled while `ctscope serve` stayed attached to a
//! steady churn. The counts themselves are judged as in every serve scenario (exactness and
//! per container, against the truth of [`crate::scenario::Soak`]); these checks add what only
//! a long run shows:
//!
//! - `soak-samples`: every sample was taken, every scrape answered, every map read;
//! - `soak-rss-flat`: ctscope's resident memory after the warm-up stays within
//!   `rss_flat_kib` (its lowest to its highest sample, the one after the churn included);
//! - `soak-maps-below-capacity`: no hash map of ctscope's ever reached its capacity (an LRU
//!   evicts calls in flight from about 90 % on, a full origin map folds sources together);
//! - `soak-origins-flat`: the per-origin map stops growing after the warm-up (its keys are
//!   sources, not connections);
//! - `soak-slots-drained`: once every entry has died, the lifetime slots hold no more than
//!   the kernel's count (a slot that outlives its entry is a leak);
//! - `soak-lifetimes`: the lifetime histogram counted every death the kernel made;
//! - `soak-entries`: at every sample, `ctscope_conntrack_entries` and each lab namespace's
//!   `ctscope_netns_conntrack_entries` lie between the kernel's counts read right before and
//!   right after the scrape, give or take the flows born meanwhile.
//!
//! Why a band and not one count: `nf_conntrack_count` includes entries whose timeout has
//! passed but that nothing has reaped yet (the GC worker's next pass, a lookup or an
//! early drop meeting them). A ctnetlink dump reaps the expired entries it walks past (up to
//! 8 per bucket), in every namespace (`ctnetlink_dump_table`, net/netfilter/nf_conntrack_netlink.c
//! v5.10..v7.3), and a serve scrape with containers dumps (after it has read the counts); the GC
//! worker may also run between the two reads. Measured in the soak at 100 flows/s: up to 1,303
//! right before a scrape (7.3; as low as 359 right after a GC pass), 352 right after it.

use serde_json::Value;

use super::serve::Samples;
use super::{Check, compare, u64_at};
use crate::result::{SoakResult, SoakSample};
use crate::scenario::Soak;

/// `rate`: the flows the containers start per second, all together.
pub(crate) fn checks(result: &Value, truth: &Value, soak: &Soak, rate: u64) -> Vec<Check> {
    let parsed = result
        .get("soak")
        .filter(|v| !v.is_null())
        .ok_or_else(|| "the result has no soak samples".to_string())
        .and_then(|v| {
            serde_json::from_value::<SoakResult>(v.clone()).map_err(|e| format!("soak: {e}"))
        });
    let r = match parsed {
        Ok(r) => r,
        Err(why) => return vec![Check::missing("soak", why)],
    };
    vec![
        samples_check(&r, soak),
        rss_check(&r, soak),
        capacity_check(&r),
        origins_check(&r, soak),
        slots_check(&r),
        lifetimes_check(result, truth),
        entries_check(&r, rate),
    ]
}

/// The flows that may be born between the agent's two reads around a scrape: the rate over
/// the scrape and a second more for the reads, doubled because a client that fell behind
/// catches up faster than its rate.
fn born_within(rate: u64, scrape_ms: f64) -> u64 {
    let window_s = scrape_ms.max(0.0) / 1000.0 + 1.0;
    (2.0 * rate as f64 * window_s).ceil() as u64
}

/// Whether `exported` lies within `before` and `after` (either order), `slack` either side.
fn within(exported: u64, before: u64, after: u64, slack: u64) -> bool {
    let (lo, hi) = (before.min(after), before.max(after));
    exported >= lo.saturating_sub(slack) && exported <= hi.saturating_add(slack)
}

fn entries_check(r: &SoakResult, rate: u64) -> Check {
    let mut bad: Vec<String> = Vec::new();
    let mut checked = 0usize;
    // The sample with the widest gap between the two reads, for the detail.
    let mut widest: Option<(f64, u64, u64, u64)> = None;
    for s in r.all() {
        let (Some(exported), Some(before), Some(after), Some(ms)) = (
            s.exported_entries,
            s.kernel_count_before,
            s.kernel_count,
            s.scrape_ms,
        ) else {
            bad.push(format!(
                "at {:.0} s: a count or the scrape is missing",
                s.t_s
            ));
            continue;
        };
        checked += 1;
        let slack = born_within(rate, ms);
        if !within(exported, before, after, slack) {
            bad.push(format!(
                "at {:.0} s: exported {exported}, kernel {before} before and {after} after the scrape (give or take {slack})",
                s.t_s
            ));
        }
        for n in &s.namespaces {
            match (n.exported, n.kernel_count_before, n.kernel_count) {
                (e, Some(b), Some(a)) => {
                    if !within(e.unwrap_or(0), b, a, slack) {
                        bad.push(format!(
                            "at {:.0} s: {} exported {}, kernel {b} before and {a} after",
                            s.t_s,
                            n.label,
                            e.map_or_else(|| "nothing".into(), |e| e.to_string())
                        ));
                    }
                }
                // A namespace the lab did not make: no count to hold it to here, but its
                // entries push the total above the lab's counts, which fails above.
                (_, None, None) => {}
                _ => bad.push(format!("at {:.0} s: {}'s count is missing", s.t_s, n.label)),
            }
        }
        if s.namespaces.iter().all(|n| n.kernel_count.is_none()) {
            bad.push(format!("at {:.0} s: no namespace recorded", s.t_s));
        }
        if widest.is_none_or(|(_, _, b, a)| b.abs_diff(a) < before.abs_diff(after)) {
            widest = Some((s.t_s, exported, before, after));
        }
    }
    Check::new(
        "soak-entries",
        checked > 0 && bad.is_empty(),
        format!(
            "{checked} scrapes within the kernel's counts around them{}{}",
            widest.map_or_else(String::new, |(t, e, b, a)| format!(
                "; widest at {t:.0} s: exported {e}, kernel {b} before and {a} after the scrape (expired entries reaped in between)"
            )),
            if bad.is_empty() {
                String::new()
            } else {
                format!("; outside: {}", bad.join("; "))
            }
        ),
    )
}

fn samples_check(r: &SoakResult, soak: &Soak) -> Check {
    let expected = (r.churn_s / f64::from(soak.sample_s)).floor() as usize;
    let failed: Vec<String> = r
        .all()
        .filter_map(|s| {
            let mut why: Vec<String> = s.map_errors.clone();
            if let Some(e) = &s.scrape_error {
                why.push(format!("scrape: {e}"));
            }
            if s.rss_kib.is_none() {
                why.push("no VmRSS".into());
            }
            if s.maps.is_empty() {
                why.push("no map read".into());
            }
            (!why.is_empty()).then(|| format!("at {:.0} s: {}", s.t_s, why.join(", ")))
        })
        .collect();
    let slowest = r.all().filter_map(|s| s.scrape_ms).fold(0.0, f64::max);
    Check::new(
        "soak-samples",
        r.samples.len() >= expected && r.end.is_some() && failed.is_empty(),
        format!(
            "{} samples over {:.0} s of churn (at least {expected}), end sample {}; slowest scrape {slowest:.0} ms{}",
            r.samples.len(),
            r.churn_s,
            if r.end.is_some() { "taken" } else { "MISSING" },
            if failed.is_empty() {
                String::new()
            } else {
                format!("; failed: {}", failed.join("; "))
            }
        ),
    )
}

fn rss_check(r: &SoakResult, soak: &Soak) -> Check {
    let after: Vec<u64> = r
        .all()
        .filter(|s| s.t_s >= f64::from(soak.warmup_s))
        .filter_map(|s| s.rss_kib)
        .collect();
    let (Some(lo), Some(hi)) = (after.iter().min(), after.iter().max()) else {
        return Check::missing(
            "soak-rss-flat",
            format!("no sample after the {} s warm-up", soak.warmup_s),
        );
    };
    let first = r.samples.first().and_then(|s| s.rss_kib);
    Check::new(
        "soak-rss-flat",
        after.len() >= 2 && hi - lo <= soak.rss_flat_kib,
        format!(
            "after the {} s warm-up, {} samples: {lo}..{hi} KiB, spread {} KiB (limit {}); first sample {} KiB",
            soak.warmup_s,
            after.len(),
            hi - lo,
            soak.rss_flat_kib,
            first.map_or_else(|| "?".into(), |k| k.to_string())
        ),
    )
}

/// An LRU hash starts evicting before it is full (its free nodes sit in per-CPU lists:
/// kernel/bpf/bpf_lru_list.c), so it is held to this many tenths of its capacity.
const LRU_TENTHS: u64 = 9;

fn capacity_check(r: &SoakResult) -> Check {
    // Name -> (peak, capacity, the most it may reach).
    let mut peak: std::collections::BTreeMap<&str, (u64, u64, u64)> = Default::default();
    for s in r.all() {
        for (name, m) in &s.maps {
            let limit = if m.kind.starts_with("lru") {
                m.max_entries / 10 * LRU_TENTHS
            } else {
                m.max_entries.saturating_sub(1)
            };
            let e = peak.entry(name).or_insert((0, m.max_entries, limit));
            e.0 = e.0.max(m.entries);
        }
    }
    let full: Vec<&str> = peak
        .iter()
        .filter(|(_, (n, _, limit))| n > limit)
        .map(|(name, _)| *name)
        .collect();
    Check::new(
        "soak-maps-below-capacity",
        !peak.is_empty() && full.is_empty(),
        format!(
            "peak/capacity: {}{}",
            peak.iter()
                .map(|(n, (e, m, _))| format!("{n} {e}/{m}"))
                .collect::<Vec<_>>()
                .join(", "),
            if full.is_empty() {
                String::new()
            } else {
                format!("; AT CAPACITY (an LRU from 90 %): {}", full.join(", "))
            }
        ),
    )
}

fn origins_check(r: &SoakResult, soak: &Soak) -> Check {
    let warm = f64::from(soak.warmup_s);
    let by_kind = |s: &SoakSample| s.fill("percpu_hash");
    let during = r
        .samples
        .iter()
        .filter(|s| s.t_s < warm)
        .filter_map(by_kind)
        .max();
    let after = r.all().filter(|s| s.t_s >= warm).filter_map(by_kind).max();
    compare(
        "soak-origins-flat",
        match (during, after) {
            (Some(d), Some(a)) => Ok((
                a <= d,
                format!("per-origin keys: at most {d} during the warm-up, at most {a} after it"),
            )),
            _ => Err("no per-origin map in the samples (before and after the warm-up)".into()),
        },
    )
}

fn slots_check(r: &SoakResult) -> Check {
    let Some(end) = &r.end else {
        return Check::missing("soak-slots-drained", "no sample after the churn".into());
    };
    let slots = end.fill("slots");
    let peak = r.samples.iter().filter_map(|s| s.fill("slots")).max();
    let peak_count = r.samples.iter().filter_map(|s| s.kernel_count).max();
    compare(
        "soak-slots-drained",
        match (slots, end.kernel_count) {
            (Some(slots), Some(count)) => Ok((
                slots <= count,
                format!(
                    "after every entry died: {slots} lifetime slots taken, kernel count {count}; during the churn at most {} slots, kernel count at most {}",
                    peak.map_or_else(|| "?".into(), |p| p.to_string()),
                    peak_count.map_or_else(|| "?".into(), |p| p.to_string())
                ),
            )),
            _ => Err("the end sample has no lifetime slots or no kernel count".into()),
        },
    )
}

fn lifetimes_check(result: &Value, truth: &Value) -> Check {
    let s = Samples::parse(result.get("metrics").and_then(Value::as_str).unwrap_or(""));
    compare(
        "soak-lifetimes",
        (|| {
            let deletes = u64_at(truth, "deletes")?;
            let before = u64_at(truth, "count_before")?;
            let counted = s
                .all("ctscope_conntrack_entry_lifetime_seconds_count")
                .ok_or("no ctscope_conntrack_entry_lifetime_seconds_count sample")?;
            // Entries older than ctscope die without a lifetime (at most the count before).
            let low = deletes.saturating_sub(before) as f64;
            Ok((
                counted >= low && counted <= deletes as f64,
                format!(
                    "lifetimes counted {counted}, kernel deletes {deletes} (less at most {before} entries older than ctscope)"
                ),
            ))
        })(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::{MapFill, NetnsSample};
    use serde_json::json;

    fn sample(t_s: f64, rss: u64, origins: u64, slots: u64, count: u64) -> SoakSample {
        let mut maps = std::collections::BTreeMap::new();
        let fill = |kind: &str, entries, max_entries| MapFill {
            kind: kind.into(),
            entries,
            max_entries,
        };
        maps.insert("ORIGINS".into(), fill("percpu_hash", origins, 16384));
        maps.insert("LIFE_SLOTS".into(), fill("slots", slots, 131_072));
        maps.insert("ALLOC_TASKS".into(), fill("lru_hash", 3, 8192));
        // Before the scrape the count holds twice as many expired entries as live ones;
        // the scrape's dump reaps them; the export lies in between, plus a few new flows.
        let before = count * 3;
        let exported = count * 2 + 5;
        SoakSample {
            t_s,
            rss_kib: Some(rss),
            scrape_ms: Some(40.0),
            scrape_bytes: 12_000,
            kernel_count: Some(count),
            kernel_count_before: Some(before),
            exported_entries: Some(exported),
            namespaces: vec![
                NetnsSample {
                    label: "host".into(),
                    inode: 4_026_531_840,
                    kernel_count_before: Some(before),
                    kernel_count: Some(count),
                    exported: Some(exported),
                },
                NetnsSample {
                    label: "ctlab-web".into(),
                    inode: 4_026_532_200,
                    kernel_count_before: Some(0),
                    kernel_count: Some(0),
                    exported: None,
                },
            ],
            maps,
            ..SoakSample::default()
        }
    }

    /// Flows per second in the fixtures: 2 x 30 x 1.04 s, 63 may be born around a scrape.
    const RATE: u64 = 30;

    fn soak() -> Soak {
        Soak {
            sample_s: 10,
            warmup_s: 20,
            rss_flat_kib: 1024,
        }
    }

    fn good() -> SoakResult {
        SoakResult {
            churn_s: 40.5,
            samples: vec![
                sample(0.0, 8000, 1, 10, 10),
                sample(10.0, 9000, 2, 300, 300),
                sample(20.0, 9500, 2, 310, 310),
                sample(30.0, 9600, 2, 305, 305),
                sample(40.0, 9550, 2, 300, 301),
            ],
            end: Some(sample(70.0, 9700, 2, 0, 0)),
        }
    }

    fn run(r: &SoakResult, lifetimes: f64) -> Vec<Check> {
        let metrics = format!(
            "ctscope_conntrack_entry_lifetime_seconds_count{{protocol=\"tcp\"}} {}\nctscope_conntrack_entry_lifetime_seconds_count{{protocol=\"udp\"}} 1000\n",
            lifetimes - 1000.0
        );
        let result = json!({"soak": r, "metrics": metrics});
        let truth = json!({"deletes": 4000, "count_before": 0});
        checks(&result, &truth, &soak(), RATE)
    }

    fn failed(checks: &[Check]) -> Vec<&str> {
        checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name.as_str())
            .collect()
    }

    #[test]
    fn a_flat_drained_soak_passes() {
        let c = run(&good(), 4000.0);
        assert!(failed(&c).is_empty(), "{c:?}");
        assert_eq!(c.len(), 7);
    }

    #[test]
    fn each_sign_of_a_leak_fails_its_check() {
        fn map<'a>(s: &'a mut SoakSample, name: &str) -> &'a mut MapFill {
            s.maps.get_mut(name).expect("fixture map")
        }
        let mut grown = good();
        grown.end.as_mut().expect("end").rss_kib = Some(9500 + 1025);
        assert_eq!(failed(&run(&grown, 4000.0)), ["soak-rss-flat"]);

        let mut keys = good();
        map(&mut keys.samples[3], "ORIGINS").entries = 3;
        assert_eq!(failed(&run(&keys, 4000.0)), ["soak-origins-flat"]);

        let mut full = good();
        map(&mut full.samples[2], "ALLOC_TASKS").entries = 8192 / 10 * 9 + 1;
        assert_eq!(failed(&run(&full, 4000.0)), ["soak-maps-below-capacity"]);
        let mut origins_full = good();
        map(&mut origins_full.samples[0], "ORIGINS").entries = 16384;
        assert!(failed(&run(&origins_full, 4000.0)).contains(&"soak-maps-below-capacity"));

        let mut stuck = good();
        map(stuck.end.as_mut().expect("end"), "LIFE_SLOTS").entries = 1;
        assert_eq!(failed(&run(&stuck, 4000.0)), ["soak-slots-drained"]);

        assert_eq!(failed(&run(&good(), 3999.0)), ["soak-lifetimes"]);

        let mut gap = good();
        gap.samples.pop();
        gap.samples[1].scrape_error = Some("connection refused".into());
        assert_eq!(failed(&run(&gap, 4000.0)), ["soak-samples"]);

        let mut no_end = good();
        no_end.end = None;
        assert!(failed(&run(&no_end, 4000.0)).contains(&"soak-slots-drained"));
        assert_eq!(
            failed(&checks(&json!({}), &json!({}), &soak(), RATE)),
            ["soak"]
        );
    }

    /// The series of a namespace the lab did not make.
    fn foreign_ns(exported: u64) -> NetnsSample {
        NetnsSample {
            label: "netns-4026532999".into(),
            inode: 4_026_532_999,
            kernel_count_before: None,
            kernel_count: None,
            exported: Some(exported),
        }
    }

    #[test]
    fn exported_entries_outside_the_kernels_counts_fail() {
        // A namespace counted twice: the total is above the count before the scrape.
        let mut doubled = good();
        let s = &mut doubled.samples[2];
        s.exported_entries = s.kernel_count_before.map(|b| b * 2);
        assert_eq!(failed(&run(&doubled, 4000.0)), ["soak-entries"]);

        // Just within the births allowed, then one more.
        let mut edge = good();
        let s = &mut edge.samples[2];
        let top = s.kernel_count_before.expect("fixture") + born_within(RATE, 40.0);
        s.exported_entries = Some(top);
        s.namespaces[0].exported = Some(top);
        assert!(failed(&run(&edge, 4000.0)).is_empty());
        let s = &mut edge.samples[2];
        s.exported_entries = Some(top + 1);
        assert_eq!(failed(&run(&edge, 4000.0)), ["soak-entries"]);

        // The host's series is missing while the total is right.
        let mut missing = good();
        missing.samples[3].namespaces[0].exported = None;
        assert_eq!(failed(&run(&missing, 4000.0)), ["soak-entries"]);

        // A lab namespace's entries exported under another inode: its own series is
        // missing, and the other one is a namespace the lab did not make.
        let mut moved = good();
        let s = &mut moved.samples[1];
        s.namespaces[1].kernel_count_before = Some(500);
        s.namespaces[1].kernel_count = Some(500);
        s.kernel_count_before = s.kernel_count_before.map(|c| c + 500);
        s.kernel_count = s.kernel_count.map(|c| c + 500);
        s.exported_entries = s.exported_entries.map(|c| c + 500);
        s.namespaces.push(foreign_ns(500));
        assert_eq!(failed(&run(&moved, 4000.0)), ["soak-entries"]);
        // Under its own inode, the same sample passes.
        let s = &mut moved.samples[1];
        s.namespaces.pop();
        s.namespaces[1].exported = Some(500);
        assert!(failed(&run(&moved, 4000.0)).is_empty());

        // A namespace the lab did not make holds entries: the total is above the lab's counts.
        let mut elsewhere = good();
        let s = &mut elsewhere.samples[2];
        s.exported_entries = s.exported_entries.map(|c| c + 500);
        s.namespaces.push(foreign_ns(500));
        assert_eq!(failed(&run(&elsewhere, 4000.0)), ["soak-entries"]);

        // A count the agent could not read.
        let mut unread = good();
        unread.samples[1].kernel_count_before = None;
        assert_eq!(failed(&run(&unread, 4000.0)), ["soak-entries"]);
    }
}
