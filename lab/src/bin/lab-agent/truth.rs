//! Ground truth from the kernel's own per-namespace counters: `nf_conntrack_count` and
//! `/proc/net/stat/nf_conntrack` (per-CPU counters; their rises are taken per CPU, 32-bit
//! wrapping, and summed), before and after the workload.

use anyhow::{Context, Result};
use ctscope_lab::conntrack_stat::StatSnapshot;
use ctscope_lab::{NetnsTruth, StatDelta, Truth};

use crate::netns::Netns;

/// One namespace's counters at one moment.
#[derive(Debug, Clone)]
pub(crate) struct NsSnapshot {
    pub ns: Netns,
    pub inode: u64,
    pub count: u64,
    pub stat: StatSnapshot,
}

/// Reads the counters of `ns` from a thread inside it.
pub(crate) fn snapshot(ns: &Netns) -> Result<NsSnapshot> {
    let inode = ns.inode()?;
    let (count, stat) = ns
        .run(|| {
            let count_path = "/proc/sys/net/netfilter/nf_conntrack_count";
            let text = std::fs::read_to_string(count_path).context(count_path)?;
            let count: u64 = text
                .trim()
                .parse()
                .with_context(|| format!("{count_path} holds {:?}", text.trim()))?;
            let stat_path = "/proc/thread-self/net/stat/nf_conntrack";
            let text = std::fs::read_to_string(stat_path).context(stat_path)?;
            let stat = StatSnapshot::parse(&text).context(stat_path)?;
            Ok((count, stat))
        })
        .with_context(|| format!("reading conntrack counters of {}", ns.label()))?;
    Ok(NsSnapshot {
        ns: ns.clone(),
        inode,
        count,
        stat,
    })
}

/// Snapshots every namespace, in order.
pub(crate) fn snapshot_all(namespaces: &[Netns]) -> Result<Vec<NsSnapshot>> {
    namespaces.iter().map(snapshot).collect()
}

/// Client-side totals that go into the truth as they are.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FlowTotals {
    pub flows: u64,
    pub send_errors: u64,
    pub connect_failures: u64,
}

/// Per-namespace and total truth from three snapshots: `before` (ctscope ready), `mid` (right
/// after the clients: the end of the insert phase) and `after` (the counts are stable: right
/// before ctscope is stopped).
///
/// A namespace's inserts are the rise of its count over the insert phase plus its early drops
/// there: nothing else removes an entry in that phase (timeouts are raised, or the agent
/// checked that the phase ended before the shortest lowered timeout could run out; connections
/// that stay open do not end). Nothing may be inserted after `mid` (the clients are done), so
/// `deletes = inserts - (count_after - count_before)`: expiries and early drops over the run.
/// Problems (a stat file that changed layout, a count that fell in the insert phase, conntrack
/// activity after it) are returned as messages. A per-CPU stat counter that wrapped is no
/// problem: its delta is taken per CPU with 32-bit wrapping subtraction.
pub(crate) fn compute(
    before: &[NsSnapshot],
    mid: &[NsSnapshot],
    after: &[NsSnapshot],
    totals: FlowTotals,
) -> (Truth, Vec<String>) {
    let mut problems = Vec::new();
    let mut truth = Truth {
        flows: totals.flows,
        send_errors: totals.send_errors,
        connect_failures: totals.connect_failures,
        ..Truth::default()
    };
    for a in after {
        let label = a.ns.label();
        let (Some(b), Some(m)) = (
            before.iter().find(|b| b.ns == a.ns),
            mid.iter().find(|m| m.ns == a.ns),
        ) else {
            problems.push(format!(
                "{label}: no snapshot before the run or after the clients"
            ));
            continue;
        };
        let mut delta_or_report = |from: &NsSnapshot, to: &NsSnapshot, what: &str| {
            to.stat.delta_since(&from.stat).unwrap_or_else(|e| {
                problems.push(format!(
                    "{label}: /proc/net/stat/nf_conntrack changed layout {what}: {e}"
                ));
                StatDelta::default()
            })
        };
        let delta = delta_or_report(b, a, "during the run");
        let insert_phase = delta_or_report(b, m, "during the insert phase");
        let late = delta_or_report(m, a, "after the insert phase");
        let rise = i128::from(m.count) - i128::from(b.count) + i128::from(insert_phase.early_drop);
        let inserts = u64::try_from(rise).unwrap_or_else(|_| {
            problems.push(format!(
                "{label}: count fell from {} to {} in the insert phase beyond early_drop {}: entries expired or were deleted",
                b.count, m.count, insert_phase.early_drop
            ));
            0
        });
        if a.count > m.count || late.drop + late.insert_failed + late.early_drop > 0 {
            problems.push(format!(
                "{label}: conntrack activity after the clients were done (count {} -> {}, drop {}, insert_failed {}, early_drop {}): the insert phase missed inserts",
                m.count, a.count, late.drop, late.insert_failed, late.early_drop
            ));
        }
        let kept = i128::from(a.count) - i128::from(b.count);
        let deletes = u64::try_from(i128::from(inserts) - kept).unwrap_or_else(|_| {
            problems.push(format!(
                "{label}: {inserts} inserts but the count rose by {kept}: inserts were missed"
            ));
            0
        });
        add_netns(&mut truth, b, a, inserts, deletes, delta);
    }
    (truth, problems)
}

/// Adds one namespace's figures (`b` before, `a` after) to the truth's totals and rows.
fn add_netns(
    truth: &mut Truth,
    b: &NsSnapshot,
    a: &NsSnapshot,
    inserts: u64,
    deletes: u64,
    delta: StatDelta,
) {
    truth.inserts += inserts;
    truth.deletes += deletes;
    truth.count_before += b.count;
    truth.count_after += a.count;
    truth.stat_delta.add(&delta);
    truth.per_netns.push(NetnsTruth {
        name: a.ns.label().to_string(),
        inode: a.inode,
        inserts,
        count_before: b.count,
        count_after: a.count,
        deletes,
        stat_delta: delta,
    });
}

/// The truth of a soak, from the snapshots before the clients and after every entry died.
///
/// Entries die during the churn, so a count rise says nothing of the inserts. What does: every
/// flow that left its container is one new entry in the host (NAT) namespace, as long as the
/// kernel refused none (no drop, insert_failed or early_drop anywhere), no container tracks
/// its own flows (no firewall), `nf_conntrack_tcp_loose` is 0 (a stray packet after an
/// entry's death cannot make a new one) and the UDP sinks never reply (a reply after the
/// entry's timeout would be an entry of its own: `loadgen serve` only reads). `host_sent` is
/// that sum. Every other namespace must end with the count it started with (the lab's wan and
/// containers have no conntrack hooks); then `deletes = inserts - (count_after -
/// count_before)`.
pub(crate) fn compute_soak(
    before: &[NsSnapshot],
    after: &[NsSnapshot],
    totals: FlowTotals,
    host_sent: u64,
) -> (Truth, Vec<String>) {
    let mut problems = Vec::new();
    let mut truth = Truth {
        flows: totals.flows,
        send_errors: totals.send_errors,
        connect_failures: totals.connect_failures,
        inserts_from: Some("flows sent, nothing refused".to_string()),
        ..Truth::default()
    };
    for a in after {
        let label = a.ns.label();
        let Some(b) = before.iter().find(|b| b.ns == a.ns) else {
            problems.push(format!("{label}: no snapshot before the run"));
            continue;
        };
        let delta = a.stat.delta_since(&b.stat).unwrap_or_else(|e| {
            problems.push(format!(
                "{label}: /proc/net/stat/nf_conntrack changed layout during the run: {e}"
            ));
            StatDelta::default()
        });
        if delta.drop + delta.insert_failed + delta.early_drop > 0 {
            problems.push(format!(
                "{label}: the kernel refused or evicted entries (drop {}, insert_failed {}, early_drop {}): a soak's truth holds only without refusals (raise max)",
                delta.drop, delta.insert_failed, delta.early_drop
            ));
        }
        let inserts = if a.ns == Netns::Host {
            host_sent
        } else {
            if a.count != b.count {
                problems.push(format!(
                    "{label}: count {} -> {}: only the host namespace may track the soak's flows",
                    b.count, a.count
                ));
            }
            0
        };
        let kept = i128::from(a.count) - i128::from(b.count);
        let deletes = u64::try_from(i128::from(inserts) - kept).unwrap_or_else(|_| {
            problems.push(format!(
                "{label}: {inserts} flows sent but the count rose by {kept}"
            ));
            0
        });
        add_netns(&mut truth, b, a, inserts, deletes, delta);
    }
    (truth, problems)
}

/// The total `nf_conntrack_count` of `namespaces` and each one's (cheaper than a snapshot: no
/// stat file), for watching the counts fall.
pub(crate) fn counts(namespaces: &[Netns]) -> Result<Vec<u64>> {
    namespaces
        .iter()
        .map(|ns| {
            ns.run(|| {
                let path = "/proc/sys/net/netfilter/nf_conntrack_count";
                let text = std::fs::read_to_string(path).context(path)?;
                text.trim()
                    .parse::<u64>()
                    .with_context(|| format!("{path} holds {:?}", text.trim()))
            })
            .with_context(|| format!("reading the count of {}", ns.label()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A namespace on a 2-CPU machine, its stat counters all on CPU 1.
    fn snap(ns: Netns, count: u64, early_drop: u32, drop: u32) -> NsSnapshot {
        let mut per_cpu = BTreeMap::new();
        per_cpu.insert("early_drop".to_string(), vec![0, early_drop]);
        per_cpu.insert("drop".to_string(), vec![0, drop]);
        NsSnapshot {
            ns,
            inode: 7,
            count,
            stat: StatSnapshot {
                entries: count,
                cpus: 2,
                per_cpu,
            },
        }
    }

    #[test]
    fn inserts_are_count_rise_plus_early_drop() {
        let wan = Netns::Named("ctwan".to_string());
        let before = vec![snap(Netns::Host, 10, 1, 0), snap(wan.clone(), 0, 0, 0)];
        let after = vec![snap(Netns::Host, 1500, 41, 3), snap(wan, 2, 0, 0)];
        let (t, problems) = compute(
            &before,
            &after,
            &after,
            FlowTotals {
                flows: 2000,
                send_errors: 1,
                connect_failures: 3,
            },
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(t.per_netns[0].name, "host");
        assert_eq!(t.per_netns[0].inserts, 1490 + 40);
        assert_eq!(t.per_netns[1].inserts, 2);
        assert_eq!(t.inserts, 1532);
        assert_eq!(t.count_after, 1502);
        assert_eq!(t.count_before, 10);
        // Early drops are the only deletions here.
        assert_eq!(t.deletes, 40);
        assert_eq!(t.per_netns[0].deletes, 40);
        assert_eq!(t.stat_delta.drop, 3);
        assert_eq!(t.stat_delta.early_drop, 40);
        assert_eq!((t.flows, t.send_errors, t.connect_failures), (2000, 1, 3));
    }

    #[test]
    fn deaths_after_the_insert_phase_are_deletes() {
        // 3000 inserted, then all but 100 expired before the counts settled.
        let before = vec![snap(Netns::Host, 5, 0, 0)];
        let mid = vec![snap(Netns::Host, 3005, 0, 0)];
        let after = vec![snap(Netns::Host, 105, 0, 0)];
        let (t, problems) = compute(&before, &mid, &after, FlowTotals::default());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!((t.inserts, t.deletes, t.count_after), (3000, 2900, 105));
    }

    #[test]
    fn activity_after_the_insert_phase_is_a_problem() {
        let before = vec![snap(Netns::Host, 0, 0, 0)];
        let mid = vec![snap(Netns::Host, 100, 0, 0)];
        let rose = vec![snap(Netns::Host, 101, 0, 0)];
        let (_, problems) = compute(&before, &mid, &rose, FlowTotals::default());
        // Both the late activity and the deletes that would come out negative.
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("after the clients were done"));
        let dropped = vec![snap(Netns::Host, 100, 0, 1)];
        let (_, problems) = compute(&before, &mid, &dropped, FlowTotals::default());
        assert_eq!(problems.len(), 1, "{problems:?}");
    }

    #[test]
    fn falling_count_is_a_problem() {
        let before = vec![snap(Netns::Host, 100, 0, 0)];
        let after = vec![snap(Netns::Host, 90, 5, 0)];
        let (t, problems) = compute(&before, &after, &after, FlowTotals::default());
        assert_eq!(t.inserts, 0);
        assert_eq!(problems.len(), 1);
    }

    #[test]
    fn a_wrapped_cpu_counter_is_no_problem() {
        let before = vec![snap(Netns::Host, 10, u32::MAX - 1, 0)];
        let after = vec![snap(Netns::Host, 10, 3, 0)];
        let (t, problems) = compute(&before, &after, &after, FlowTotals::default());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(t.stat_delta.early_drop, 5);
        assert_eq!(t.inserts, 5);
    }

    #[test]
    fn a_soak_counts_the_flows_sent_as_the_host_inserts() {
        let wan = Netns::Named("ctwan".to_string());
        let before = vec![snap(Netns::Host, 3, 0, 0), snap(wan.clone(), 0, 0, 0)];
        let after = vec![snap(Netns::Host, 4, 0, 0), snap(wan.clone(), 0, 0, 0)];
        let totals = FlowTotals {
            flows: 60_000,
            send_errors: 2,
            connect_failures: 0,
        };
        let (t, problems) = compute_soak(&before, &after, totals, 59_998);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!((t.inserts, t.deletes), (59_998, 59_997));
        assert_eq!(t.per_netns[1].inserts, 0);
        // A refusal, or another namespace tracking flows, voids the truth.
        let dropped = vec![snap(Netns::Host, 4, 0, 1), snap(wan.clone(), 0, 0, 0)];
        let (_, p) = compute_soak(&before, &dropped, totals, 59_998);
        assert_eq!(p.len(), 1, "{p:?}");
        let tracked = vec![snap(Netns::Host, 4, 0, 0), snap(wan, 5, 0, 0)];
        let (_, p) = compute_soak(&before, &tracked, totals, 59_998);
        assert!(p[0].contains("only the host namespace"), "{p:?}");
    }

    #[test]
    fn a_changed_stat_layout_is_a_problem() {
        let before = vec![snap(Netns::Host, 10, 0, 0)];
        let mut after = vec![snap(Netns::Host, 12, 0, 0)];
        after[0].stat.cpus = 3;
        let (t, problems) = compute(&before, &after, &after, FlowTotals::default());
        // The insert phase and the whole run both see the changed layout.
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("2 CPU lines before, 3 after"));
        assert_eq!(t.inserts, 2);
    }
}
