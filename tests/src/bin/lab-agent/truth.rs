//! Ground truth from the kernel's own per-namespace counters: `nf_conntrack_count` and
//! `/proc/net/stat/nf_conntrack` (per-CPU counters; their rises are taken per CPU, 32-bit
//! wrapping, and summed), before and after the workload.

use anyhow::{Context, Result};
use ctscope_lab::conntrack_stat::StatSnapshot;
use ctscope_lab::{NetnsTruth, StatDelta, Truth};

use crate::netns::Netns;

/// One namespace's counters at one moment.
#[derive(Debug, Clone)]
pub struct NsSnapshot {
    pub ns: Netns,
    pub inode: u64,
    pub count: u64,
    pub stat: StatSnapshot,
}

/// Reads the counters of `ns` from a thread inside it.
pub fn snapshot(ns: &Netns) -> Result<NsSnapshot> {
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
pub fn snapshot_all(namespaces: &[Netns]) -> Result<Vec<NsSnapshot>> {
    namespaces.iter().map(snapshot).collect()
}

/// Client-side totals that go into the truth as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlowTotals {
    pub flows: u64,
    pub send_errors: u64,
    pub connect_failures: u64,
}

/// Per-namespace and total truth. A namespace's inserts are the rise of its count plus its
/// early drops (the only way an entry leaves during a run: timeouts are raised and connections
/// stay open). Problems (two stat snapshots of different layouts, a count that fell) are
/// returned as messages. A per-CPU stat counter that wrapped is no problem: its delta is taken
/// per CPU with 32-bit wrapping subtraction.
pub fn compute(
    before: &[NsSnapshot],
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
        let rise = i128::from(a.count) - i128::from(b.count) + i128::from(delta.early_drop);
        let inserts = u64::try_from(rise).unwrap_or_else(|_| {
            problems.push(format!(
                "{label}: count fell from {} to {} beyond early_drop {}: entries expired or were deleted",
                b.count, a.count, delta.early_drop
            ));
            0
        });
        truth.inserts += inserts;
        truth.count_after += a.count;
        truth.stat_delta.add(&delta);
        truth.per_netns.push(NetnsTruth {
            name: label.to_string(),
            inode: a.inode,
            inserts,
            count_after: a.count,
            stat_delta: delta,
        });
    }
    (truth, problems)
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
        let wan = Netns::Named("ctlab-wan".to_string());
        let before = vec![snap(Netns::Host, 10, 1, 0), snap(wan.clone(), 0, 0, 0)];
        let after = vec![snap(Netns::Host, 1500, 41, 3), snap(wan, 2, 0, 0)];
        let (t, problems) = compute(
            &before,
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
        assert_eq!(t.stat_delta.drop, 3);
        assert_eq!(t.stat_delta.early_drop, 40);
        assert_eq!((t.flows, t.send_errors, t.connect_failures), (2000, 1, 3));
    }

    #[test]
    fn falling_count_is_a_problem() {
        let before = vec![snap(Netns::Host, 100, 0, 0)];
        let after = vec![snap(Netns::Host, 90, 5, 0)];
        let (t, problems) = compute(&before, &after, FlowTotals::default());
        assert_eq!(t.inserts, 0);
        assert_eq!(problems.len(), 1);
    }

    #[test]
    fn a_wrapped_cpu_counter_is_no_problem() {
        let before = vec![snap(Netns::Host, 10, u32::MAX - 1, 0)];
        let after = vec![snap(Netns::Host, 10, 3, 0)];
        let (t, problems) = compute(&before, &after, FlowTotals::default());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(t.stat_delta.early_drop, 5);
        assert_eq!(t.inserts, 5);
    }

    #[test]
    fn a_changed_stat_layout_is_a_problem() {
        let before = vec![snap(Netns::Host, 10, 0, 0)];
        let mut after = vec![snap(Netns::Host, 12, 0, 0)];
        after[0].stat.cpus = 3;
        let (t, problems) = compute(&before, &after, FlowTotals::default());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("2 CPU lines before, 3 after"));
        assert_eq!(t.inserts, 2);
    }
}
