//! From a run's counters to its report: the kernel maps' deltas mapped to
//! report fields (probe modes) or the kernel's own counters (procfs mode).

use std::collections::BTreeMap;

use conntrack_common::{Counter, OriginKey, OriginStats, latency_slot_floor};

use super::{attribution, cost::cost, lifetimes::Lifetimes};
use crate::{
    host::{kernel, procfs::StatTotals},
    probe::probes::{self, Probes, Snapshot},
    report::{
        AttributionReport, ChainLengths, ChainStats, ClashOutcomes, Drops, EarlyDrop, Extensions,
        LatencyNs, Lookups, Mode, NetnsReport, Occupancy, ProbeDetails, Report, SelfCheck,
        Settings, chain_model,
    },
};

/// Rows of `LIFE_HIST` over the run: `now - start`, slot by slot.
pub(super) fn life_delta(now: &[Vec<u64>], start: &[Vec<u64>]) -> Vec<Vec<u64>> {
    now.iter()
        .zip(start)
        .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x.saturating_sub(*y)).collect())
        .collect()
}

/// Per-origin counts over the run: `now - start`, key by key.
pub(super) fn origin_delta(
    now: Vec<(OriginKey, OriginStats)>,
    start: &[(OriginKey, OriginStats)],
) -> Vec<(OriginKey, OriginStats)> {
    let before: std::collections::HashMap<OriginKey, OriginStats> = start.iter().copied().collect();
    now.into_iter()
        .map(|(k, v)| (k, v.since(&before.get(&k).copied().unwrap_or_default())))
        .filter(|(_, d)| *d != OriginStats::default())
        .collect()
}

/// `--lookups` results from the run's counters and histograms.
fn lookups_report(
    d: &Snapshot,
    plan: &probes::Plan,
    costs: Option<&[(String, u64, u64)]>,
) -> Lookups {
    let c = |k| d.counter(k);
    let count = c(Counter::Lookups);
    let pct = |q: f64| {
        let rank = ((q * count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (slot, n) in d.lookup_latency.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return latency_slot_floor(slot as u32);
            }
        }
        0
    };
    let overhead = costs.and_then(|cs| {
        let (runs, ns) = cs
            .iter()
            .filter(|(name, ..)| name.starts_with("lookup"))
            .fold((0u64, 0u64), |(r, t), (_, rc, rt)| (r.max(*rc), t + rt));
        (runs > 0).then(|| ns as f64 / runs as f64)
    });
    Lookups {
        count,
        hits: c(Counter::LookupHits),
        misses: c(Counter::LookupMisses),
        latency_ns: LatencyNs {
            mean: if count > 0 {
                c(Counter::LookupNsSum) as f64 / count as f64
            } else {
                0.0
            },
            p50: if count > 0 { pct(0.50) } else { 0 },
            p99: if count > 0 { pct(0.99) } else { 0 },
            max: d.lookup_max,
        },
        chain: (plan.ct_hash_addr != 0 && plan.htable_size_addr != 0)
            .then(|| ChainStats::from_counts(&d.lookup_chain)),
        overhead_ns_per_lookup: overhead,
    }
}

fn base_report(end: Ended, notices: Vec<String>) -> Report {
    let Ended {
        mode,
        release,
        duration_s,
        settings,
        kernel_stats,
        occupancy,
        cpu0: _,
    } = end;
    Report {
        ctscope_version: env!("CARGO_PKG_VERSION").to_string(),
        mode,
        kernel_release: release,
        netns_inode: kernel::netns_inode(),
        duration_s,
        inserts: None,
        chain_length: None,
        drops: Drops::default(),
        self_check: None,
        settings,
        kernel_stats,
        probes: None,
        netns: Vec::new(),
        containers: Vec::new(),
        lifetimes: None,
        lifetimes_untracked: None,
        early_drop: Default::default(),
        clash: Default::default(),
        dying_at_confirm: None,
        lookups: None,
        cost: Default::default(),
        occupancy: Some(occupancy),
        extensions: None,
        expiries: None,
        attribution: None,
        notices,
        interrupted: None,
        timeline: Vec::new(),
    }
}

/// What both modes' reports share, gathered once the run has ended.
pub(super) struct Ended {
    pub(super) mode: Mode,
    pub(super) release: String,
    pub(super) duration_s: f64,
    pub(super) settings: Settings,
    pub(super) kernel_stats: BTreeMap<String, u64>,
    pub(super) occupancy: Occupancy,
    /// ctscope's CPU seconds when the observation began.
    pub(super) cpu0: f64,
}

/// A probe run at its end: the maps at the start (`b`) and now (`a`).
pub(super) struct ProbeEnd<'a> {
    pub(super) p: &'a Probes,
    pub(super) plan: &'a probes::Plan,
    pub(super) a: &'a Snapshot,
    pub(super) b: &'a Snapshot,
    /// Recursion misses counted by the kernel since each program's load.
    pub(super) misses0: &'a BTreeMap<String, u64>,
    pub(super) origins: Option<Vec<(OriginKey, OriginStats)>>,
    pub(super) lifetimes: Option<&'a Lifetimes>,
}

/// The report of a probe run; its `self_check` says whether chain walks
/// could not be proven.
pub(super) fn probes_report(
    run: ProbeEnd<'_>,
    att: attribution::Attribution,
    end: Ended,
    mut notices: Vec<String>,
) -> Report {
    let ProbeEnd {
        p,
        plan,
        a,
        b,
        misses0,
        origins,
        lifetimes,
    } = run;
    let misses = run_misses(p.recursion_misses(), misses0, &mut notices);
    let d = a.since(b);
    let c = |k| d.counter(k);
    let check = self_check(&d, &mut notices);
    let armed = p.armed_time();
    notices.extend(att.notices);
    let probed = Probed {
        clash: plan.clash,
        early_drop: plan.early_drop,
    };
    let drops = drops(&d, probed, armed.always, &att.netns);
    let attributed: u64 = origins
        .iter()
        .flatten()
        .filter(|(k, _)| k.family != 0)
        .map(|(_, v)| v.attributed_drops())
        .fold(0, u64::saturating_add);
    let attribution = AttributionReport {
        policy: if plan.fentry.is_some() {
            format!("{:?}", plan.attribution).to_lowercase()
        } else {
            "always".into()
        },
        throughout: armed.always,
        armed_s: if armed.always {
            end.duration_s
        } else {
            armed.seconds
        },
        arms: armed.arms,
        unattributed: drops.total().map(|t| t.saturating_sub(attributed)),
    };
    if let Some(n) = attribution.unattributed.filter(|n| *n > 0) {
        notices.push(format!(
            "{n} refused connections are counted by reason but not by source: attribution {}",
            if attribution.arms == 0 {
                "never ran (nothing suggested refusals; see --attribution)".to_string()
            } else {
                format!("ran {:.1} s of the {:.1} s, armed by the first signs of trouble, after some refusals", attribution.armed_s, end.duration_s)
            }
        ));
    }
    let deaths_unseen = c(Counter::DeathsUnseen);
    if deaths_unseen > 0 {
        notices.push(format!(
            "{deaths_unseen} entries died without nf_ct_delete or nf_conntrack_free being seen (this kernel calls nf_ct_delete inline somewhere, and nf_conntrack_free was not probed then; it stays attached once this is seen): their deaths are missing from lifetimes"
        ));
    }
    Report {
        inserts: Some(c(Counter::Inserts)),
        chain_length: Some(ChainLengths {
            orig: ChainStats::from_counts(&d.orig),
            reply: ChainStats::from_counts(&d.reply),
        }),
        drops,
        attribution: Some(attribution),
        self_check: Some(check),
        probes: Some(ProbeDetails {
            attached: p.attached.clone(),
            allocations: c(Counter::AllocOk),
            alloc_failed_other: c(Counter::AllocFailedOther),
            confirms: c(Counter::Confirms),
            confirm_drops: c(Counter::ConfirmDrops),
            dying: c(Counter::DropDying),
            early_drop_evicted: c(Counter::EarlyDropOk),
            early_drop_failed: c(Counter::EarlyDropFailed),
            clash_resolved: c(Counter::ClashResolved),
            same_bucket_inserts: c(Counter::SameBucket),
            calls_kept: if plan.per_cpu_calls {
                "per_cpu".into()
            } else {
                "per_task".into()
            },
            recursion_misses: misses.clone(),
            offsets: serde_json::to_value(&plan.offsets).ok(),
        }),
        early_drop: EarlyDrop {
            attempts: plan
                .early_drop
                .then(|| c(Counter::EarlyDropOk) + c(Counter::EarlyDropFailed)),
            evicted: (plan.early_drop && plan.lifetimes).then(|| c(Counter::EarlyDropEvicted)),
        },
        clash: ClashOutcomes {
            resolved: plan.clash.then(|| c(Counter::ClashResolved)),
            failed: plan.clash.then(|| c(Counter::DropClash)),
        },
        // Counted by the confirmation's exit: only whole when it ran
        // throughout.
        dying_at_confirm: armed.always.then(|| c(Counter::DropDying)),
        lifetimes: lifetimes.filter(|_| plan.lifetimes).map(Lifetimes::report),
        expiries: plan
            .lifetimes
            .then(|| lifetimes.map(|l| l.expiries(&end.settings.timeouts)))
            .flatten(),
        extensions: (plan.offsets.off_ct_ext != 0).then(|| {
            let inserts = c(Counter::Inserts);
            Extensions {
                entries_with_ext: c(Counter::ExtEntries),
                inserts,
                bytes_per_entry: if inserts > 0 {
                    c(Counter::ExtBytes) as f64 / inserts as f64
                } else {
                    0.0
                },
            }
        }),
        lifetimes_untracked: plan.lifetimes.then(|| c(Counter::DeletesUntracked)),
        lookups: plan
            .lookups
            .then(|| lookups_report(&d, plan, p.costs().as_deref())),
        cost: cost(end.duration_s, end.cpu0, p.costs()),
        netns: att.netns,
        containers: att.containers,
        ..base_report(end, notices)
    }
}

/// The report of a procfs run: the kernel's own counters, and chain lengths
/// only as modeled.
pub(super) fn procfs_report(
    last_stat: Option<&StatTotals>,
    stat0: Option<&StatTotals>,
    att: attribution::Attribution,
    interrupted: Option<&String>,
    end: Ended,
    mut notices: Vec<String>,
) -> Report {
    // procfs: the kernel counts chain-too-long drops exactly (a column
    // since 5.15; before that no chain limit exists, so none happen).
    // Its `drop` mixes table-full and clash, so neither is claimed.
    // An unreadable stat file measures nothing: null, not 0.
    let chain = match (last_stat, stat0) {
        (Some(_), Some(_)) => end.kernel_stats.get("chaintoolong").copied().or(Some(0)),
        _ => None,
    };
    notices.extend(att.notices);
    // The table is global: the model takes every namespace's entries.
    let modeled = att
        .live_entries_total
        .zip(end.settings.buckets)
        .filter(|_| interrupted.is_none())
        .and_then(|(n, b)| chain_model::expected_chain_lengths(n, b));
    Report {
        drops: Drops {
            chain_too_long: chain,
            ..Drops::default()
        },
        chain_length: modeled,
        netns: att.netns,
        containers: att.containers,
        lifetimes: att.lifetimes,
        lifetimes_untracked: att.lifetimes_untracked,
        cost: cost(end.duration_s, end.cpu0, None),
        interrupted: interrupted.cloned(),
        ..base_report(end, notices)
    }
}

/// Runs the kernel skipped over the run (it counts them from each program's
/// load), those with any; a notice says what they cost.
fn run_misses(
    now: BTreeMap<String, u64>,
    misses0: &BTreeMap<String, u64>,
    notices: &mut Vec<String>,
) -> BTreeMap<String, u64> {
    let misses: BTreeMap<String, u64> = now
        .into_iter()
        .map(|(k, v)| {
            let before = misses0.get(&k).copied().unwrap_or(0);
            (k, v.saturating_sub(before))
        })
        .filter(|(_, v)| *v > 0)
        .collect();
    if !misses.is_empty() {
        let list: Vec<String> = misses.iter().map(|(k, v)| format!("{k} {v}")).collect();
        notices.push(format!(
            "the kernel skipped runs of ctscope's programs because a BPF program (ctscope's or another tool's) was already running on that CPU ({}): {} inserts are not counted (nor their chains measured) and the other figures of those connections are missing",
            list.join(", "),
            crate::probe::probes::INSERT_PROGRAMS
                .iter()
                .filter_map(|p| misses.get(*p))
                .sum::<u64>()
        ));
    }
    misses
}

/// The run-time self-check of the chain walks, with a notice for each kind
/// of failure or loss.
fn self_check(d: &Snapshot, notices: &mut Vec<String>) -> SelfCheck {
    let c = |k| d.counter(k);
    let check = SelfCheck {
        walks: c(Counter::WalksOk),
        nulls_mismatch: c(Counter::NullsMismatch),
        link_mismatch: c(Counter::LinkMismatch),
        dir_mismatch: c(Counter::DirMismatch),
        truncated: c(Counter::WalksTruncated),
        read_errors: c(Counter::ReadErrors),
        missed: c(Counter::InsertWithoutEntry)
            + c(Counter::ConfirmWithoutEntry)
            + c(Counter::InsertReturnMissed)
            + c(Counter::ConfirmStackOverflow)
            + c(Counter::AllocWithoutEntry)
            + c(Counter::CallStackReset),
    };
    if check.failures() > 0 {
        notices.push(format!(
            "SELF-CHECK FAILED: of {} chain walks, {} ended at another bucket's nulls marker, {} started at a node not linked where it claimed, {} had the wrong tuple direction, {} hit failed kernel reads: the struct offsets do not match this kernel, so those walks were not counted and the chain lengths are NOT trustworthy",
            check.walks + check.failures(),
            check.nulls_mismatch,
            check.link_mismatch,
            check.dir_mismatch,
            check.read_errors
        ));
    }
    if check.missed > 0 {
        notices.push(format!(
            "{} probe events were lost (kretprobe instances exhausted?): counts may be low by that much",
            check.missed
        ));
    }
    for (counter, what) in [
        (
            Counter::LifeTrackFull,
            "entries found no free lifetime slot (their bucket was full): their deaths are counted, without a lifetime",
        ),
        (
            Counter::OriginOverflow,
            "per-origin updates overflowed the origin map: those counts are only per namespace, not per source address",
        ),
        (
            Counter::LookupWalkMismatch,
            "lookup bucket walks ended at another bucket's nulls marker (a resize or a moved entry mid-walk): not recorded",
        ),
    ] {
        if c(counter) > 0 {
            notices.push(format!("{} {what}", c(counter)));
        }
    }
    check
}

/// Which of the optional drop paths the plan probes.
#[derive(Debug, Clone, Copy)]
struct Probed {
    clash: bool,
    early_drop: bool,
}

/// Drops by reason over the run. With the attribution programs attached
/// throughout, every reason is counted by the programs; otherwise the
/// reasons only they tell apart come from every namespace's kernel counters
/// (`attribution::netns_drops`).
fn drops(d: &Snapshot, plan: Probed, always: bool, netns: &[NetnsReport]) -> Drops {
    let c = |k| d.counter(k);
    // Without the clash probe, clash and chain-too-long drops cannot
    // be told apart: both are unmeasured (null), and every refused
    // confirmation lands in `other`. Without the early-drop probe
    // every failed allocation counts as table full.
    if always {
        Drops {
            table_full: Some(c(Counter::TableFull)),
            chain_too_long: plan.clash.then(|| c(Counter::DropChainTooLong)),
            clash: plan.clash.then(|| c(Counter::DropClash)),
            other: Some(c(Counter::DropOther).saturating_add(c(Counter::DropDying))),
            alloc_failed: plan.early_drop.then(|| c(Counter::AllocFailedOther)),
        }
    } else {
        // The reasons only the attribution programs tell apart, from
        // every namespace's kernel counters (attribution::netns_drops).
        let sum =
            |f: fn(&Drops) -> Option<u64>| netns.iter().map(|n| f(&n.drops)).sum::<Option<u64>>();
        Drops {
            table_full: Some(c(Counter::TableFull)),
            chain_too_long: sum(|d| d.chain_too_long),
            clash: plan.clash.then(|| c(Counter::DropClash)),
            other: sum(|d| d.other),
            alloc_failed: sum(|d| d.alloc_failed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{NetnsKind, Occupancy};

    /// A delta with each counter set to a distinct value (its index + 1000),
    /// so that a counter mapped to the wrong field shows.
    fn delta() -> Snapshot {
        Snapshot {
            counters: (0..Counter::ALL.len() as u64).map(|i| 1000 + i).collect(),
            ..Snapshot::default()
        }
    }

    fn netns(chain: Option<u64>, other: Option<u64>, alloc: Option<u64>) -> NetnsReport {
        NetnsReport {
            inode: 1,
            name: "n".into(),
            kind: NetnsKind::Netns,
            inserts: Some(0),
            live_entries: Some(0),
            drops: Drops {
                table_full: Some(0),
                chain_too_long: chain,
                clash: Some(0),
                other,
                alloc_failed: alloc,
            },
            kernel_stats: Default::default(),
        }
    }

    #[test]
    fn drops_counted_by_the_programs_throughout() {
        let d = delta();
        let c = |k| d.counter(k);
        let all = Probed {
            clash: true,
            early_drop: true,
        };
        let got = drops(&d, all, true, &[]);
        assert_eq!(got.table_full, Some(c(Counter::TableFull)));
        assert_eq!(got.chain_too_long, Some(c(Counter::DropChainTooLong)));
        assert_eq!(got.clash, Some(c(Counter::DropClash)));
        assert_eq!(
            got.other,
            Some(c(Counter::DropOther) + c(Counter::DropDying))
        );
        assert_eq!(got.alloc_failed, Some(c(Counter::AllocFailedOther)));
        // Without the clash probe the two confirm refusals cannot be told
        // apart: unmeasured, not 0.
        let none = Probed {
            clash: false,
            early_drop: false,
        };
        let got = drops(&d, none, true, &[]);
        assert_eq!(
            (got.chain_too_long, got.clash, got.alloc_failed),
            (None, None, None)
        );
        assert_eq!(got.table_full, Some(c(Counter::TableFull)));
    }

    #[test]
    fn drops_from_the_namespaces_when_attribution_did_not_run_throughout() {
        let d = delta();
        let probed = Probed {
            clash: true,
            early_drop: true,
        };
        let ns = [
            netns(Some(2), Some(3), Some(4)),
            netns(Some(20), Some(30), Some(40)),
        ];
        let got = drops(&d, probed, false, &ns);
        assert_eq!(got.table_full, Some(d.counter(Counter::TableFull)));
        assert_eq!(got.clash, Some(d.counter(Counter::DropClash)));
        assert_eq!(
            (got.chain_too_long, got.other, got.alloc_failed),
            (Some(22), Some(33), Some(44))
        );
        // One namespace that could not be read: the sum is unknown, not low.
        let ns = [
            netns(Some(2), Some(3), Some(4)),
            netns(None, Some(30), None),
        ];
        let got = drops(&d, probed, false, &ns);
        assert_eq!(
            (got.chain_too_long, got.other, got.alloc_failed),
            (None, Some(33), None)
        );
    }

    #[test]
    fn self_check_fails_on_any_unproven_walk() {
        let mut notices = Vec::new();
        let clean = Snapshot {
            counters: vec![0; Counter::ALL.len()],
            ..Snapshot::default()
        };
        let check = self_check(&clean, &mut notices);
        assert_eq!((check.failures(), notices.len()), (0, 0));
        for bad in [
            Counter::NullsMismatch,
            Counter::LinkMismatch,
            Counter::DirMismatch,
            Counter::ReadErrors,
        ] {
            let mut d = clean.clone();
            d.counters[bad as usize] = 3;
            let mut notices = Vec::new();
            let check = self_check(&d, &mut notices);
            assert_eq!(check.failures(), 3, "{bad:?}");
            assert!(
                notices[0].starts_with("SELF-CHECK FAILED"),
                "{bad:?}: {notices:?}"
            );
        }
        // Lost events are said, but prove nothing wrong about a walk.
        let mut d = clean.clone();
        d.counters[Counter::CallStackReset as usize] = 2;
        let mut notices = Vec::new();
        let check = self_check(&d, &mut notices);
        assert_eq!((check.missed, check.failures()), (2, 0));
        assert!(
            notices[0].contains("2 probe events were lost"),
            "{notices:?}"
        );
    }

    #[test]
    fn recursion_misses_are_the_runs_share() {
        let now = BTreeMap::from([("fx_insert".to_string(), 7), ("fe_delete".to_string(), 2)]);
        let before = BTreeMap::from([("fx_insert".to_string(), 4), ("fe_delete".to_string(), 2)]);
        let mut notices = Vec::new();
        let got = run_misses(now, &before, &mut notices);
        assert_eq!(got, BTreeMap::from([("fx_insert".to_string(), 3)]));
        assert_eq!(notices.len(), 1);
    }

    /// The report's JSON, as a person or a script reads it (procfs mode: the
    /// one a unit test can build whole). A renamed, added or dropped key
    /// shows as a diff to review. What depends on the machine (ctscope's
    /// own cost, the namespace it runs in) is replaced before the snapshot.
    #[test]
    fn the_procfs_report_as_json() {
        let end = Ended {
            mode: Mode::Procfs,
            release: "6.1.0-50-cloud-amd64".into(),
            duration_s: 60.0,
            settings: Settings {
                buckets: Some(65_536),
                max: Some(65_536),
                count_start: Some(10),
                count_end: Some(2_010),
                slab_object_size: Some(320),
                slab_size: Some(320),
                timeouts: [("udp_timeout".to_string(), 30)].into(),
                ram_bytes: Some(2 << 30),
                cpus: Some(2),
            },
            kernel_stats: [("chaintoolong".to_string(), 0), ("drop".to_string(), 3)].into(),
            occupancy: Occupancy {
                interval_s: 1.0,
                samples: 60,
                total_start: Some(10),
                total_end: Some(2_010),
                total_peak: Some(2_010),
                total_peak_at_s: Some(59.0),
                netns_peak: Some(2_000),
                netns_peak_name: Some("host".into()),
                growth_per_hour: Some(120_000.0),
                per_netns: Vec::new(),
            },
            cpu0: 0.0,
        };
        let att = attribution::Attribution {
            netns: vec![netns(Some(0), None, None)],
            live_entries_total: Some(2_010),
            notices: vec!["a notice from attribution".into()],
            ..Default::default()
        };
        let stat = StatTotals::default();
        let r = procfs_report(
            Some(&stat),
            Some(&stat),
            att,
            None,
            end,
            vec!["a notice from the run".into()],
        );
        let mut v = serde_json::to_value(&r).expect("JSON");
        v["cost"] = serde_json::json!("<this machine>");
        v["netns_inode"] = serde_json::json!("<this machine>");
        insta::assert_snapshot!(serde_json::to_string_pretty(&sorted(v)).expect("JSON"));
    }

    /// Objects with their keys in order: serde_json keeps insertion order
    /// when another crate of the build turns its `preserve_order` on.
    fn sorted(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let mut keys: Vec<(String, serde_json::Value)> = m.into_iter().collect();
                keys.sort_by(|a, b| a.0.cmp(&b.0));
                serde_json::Value::Object(keys.into_iter().map(|(k, v)| (k, sorted(v))).collect())
            }
            serde_json::Value::Array(a) => {
                serde_json::Value::Array(a.into_iter().map(sorted).collect())
            }
            other => other,
        }
    }
}
