//! What a person reads: the live line per interval and the closing summary.

use std::time::Instant;

use conntrack_common::Counter;

use super::engine::Sample;
use crate::{
    host::procfs::TableSettings,
    report::{ChainStats, Report, or_unknown},
};

/// One live line: what happened since the previous sample.
pub(super) fn interval_line(
    started: Instant,
    prev: &Sample,
    now: &Sample,
    t: &TableSettings,
) -> String {
    let dt = now.at.duration_since(prev.at).as_secs_f64().max(1e-3);
    let mut line = format!(
        "[{:6.1}s] count {}/{}",
        now.at.duration_since(started).as_secs_f64(),
        or_unknown(t.count),
        or_unknown(t.max)
    );
    match (&now.snap, &prev.snap) {
        (Some(a), Some(b)) => {
            let d = a.since(b);
            let o = ChainStats::from_counts(&d.orig);
            let r = ChainStats::from_counts(&d.reply);
            line.push_str(&format!(
                "  inserts/s {:.0}  drops full {} chain {} clash {} other {}  chain p50/p99/max orig {}/{}/{} reply {}/{}/{}",
                d.counter(Counter::Inserts) as f64 / dt,
                d.counter(Counter::TableFull),
                d.counter(Counter::DropChainTooLong),
                d.counter(Counter::DropClash),
                d.counter(Counter::DropOther) + d.counter(Counter::DropDying),
                o.p50, o.p99, o.max, r.p50, r.p99, r.max
            ));
            if d.counter(Counter::NullsMismatch) > 0 {
                line.push_str(&format!(
                    "  SELF-CHECK MISMATCH {}",
                    d.counter(Counter::NullsMismatch)
                ));
            }
        }
        _ => {
            if let (Some(a), Some(b)) = (&now.stat, &prev.stat) {
                let d = a.delta(b);
                line.push_str(&format!(
                    "  kernel: drop {} insert_failed {} chaintoolong {} early_drop {} clash_resolve {}",
                    d.get("drop"),
                    d.get("insert_failed"),
                    d.get("chaintoolong"),
                    d.get("early_drop"),
                    d.get("clash_resolve")
                ));
            }
        }
    }
    line
}

/// The closing summary for a person.
pub(super) fn summary(r: &Report) -> String {
    let mut s = format!(
        "\nctscope summary ({} mode, kernel {}, {:.1} s)\n",
        r.mode, r.kernel_release, r.duration_s
    );
    s.push_str(&format!(
        "  table: count {} -> {} of max {}, {} buckets\n",
        or_unknown(r.settings.count_start),
        or_unknown(r.settings.count_end),
        or_unknown(r.settings.max),
        or_unknown(r.settings.buckets)
    ));
    if let Some(i) = r.inserts {
        s.push_str(&format!("  inserts: {i}\n"));
    }
    s.push_str(&format!(
        "  drops: table full {}, chain too long {}, clash {}, other {}, allocation failed {}\n",
        or_unknown(r.drops.table_full),
        or_unknown(r.drops.chain_too_long),
        or_unknown(r.drops.clash),
        or_unknown(r.drops.other),
        or_unknown(r.drops.alloc_failed)
    ));
    if let Some(c) = r.chain_length.as_ref().filter(|c| c.orig.modeled) {
        s.push_str(&format!(
            "  chain length after insert, MODELED (uniform hashing, {} entries): mean {:.2}  p50 {}  p99 {}  max {}\n",
            or_unknown(r.netns.iter().map(|n| n.live_entries).sum()),
            c.orig.mean,
            c.orig.p50,
            c.orig.p99,
            c.orig.max
        ));
    } else if let Some(c) = &r.chain_length {
        for (dir, st) in [("orig", &c.orig), ("reply", &c.reply)] {
            s.push_str(&format!(
                "  chain length after insert ({dir:5}): mean {:.2}  p50 {}  p99 {}  max {}  ({} proven lengths{})\n",
                st.mean,
                st.p50,
                st.p99,
                st.max,
                st.samples,
                if st.truncated > 0 {
                    format!(", {} longer than the walk limit", st.truncated)
                } else {
                    String::new()
                }
            ));
        }
    }
    if let Some(sc) = &r.self_check {
        s.push_str(&format!(
            "  self-check: {} walks proven (linked start node, own direction, own bucket's nulls marker), {} failed\n",
            sc.walks,
            sc.failures()
        ));
    }
    if !r.kernel_stats.is_empty() {
        let k = |n: &str| r.kernel_stats.get(n).copied().unwrap_or(0);
        s.push_str(&format!(
            "  kernel stat deltas (this netns): drop {} insert_failed {} chaintoolong {} early_drop {} clash_resolve {}\n",
            k("drop"),
            k("insert_failed"),
            k("chaintoolong"),
            k("early_drop"),
            k("clash_resolve")
        ));
    }
    s.push_str(&attribution_lines(r));
    s.push_str(&life_lines(r));
    for n in &r.notices {
        s.push_str(&format!("  note: {n}\n"));
    }
    s
}

/// Who filled the table: namespaces by inserts, then the NAT-attributed
/// container view.
fn attribution_lines(r: &Report) -> String {
    let mut s = String::new();
    let mut rows: Vec<_> = r.netns.iter().collect();
    rows.sort_by_key(|n| std::cmp::Reverse((n.inserts.unwrap_or(0), n.live_entries.unwrap_or(0))));
    if !rows.is_empty() {
        s.push_str("  by namespace (inserts / live at end / drops):\n");
    }
    for n in rows.iter().take(12) {
        let kind = match n.kind {
            crate::report::NetnsKind::Host => "host",
            crate::report::NetnsKind::Container => "container",
            crate::report::NetnsKind::Netns => "netns",
        };
        s.push_str(&format!(
            "    {:<24} {:<9} {:>10} {:>10} {:>8}   inode {}\n",
            n.name,
            kind,
            or_unknown(n.inserts),
            or_unknown(n.live_entries),
            or_unknown(n.drops.total()),
            n.inode
        ));
    }
    if rows.len() > 12 {
        s.push_str(&format!(
            "    ... {} more in the JSON report\n",
            rows.len() - 12
        ));
    }
    if !r.containers.is_empty() {
        let total: u64 = r.containers.iter().filter_map(|c| c.inserts).sum();
        s.push_str("  by container, NAT entries attributed by source address (inserts / share / live / drops):\n");
        let mut cs: Vec<_> = r.containers.iter().collect();
        cs.sort_by_key(|c| std::cmp::Reverse(c.inserts.unwrap_or(0)));
        for c in cs {
            let share = match c.inserts {
                Some(i) if total > 0 => format!("{:.1}%", 100.0 * i as f64 / total as f64),
                _ => "?".into(),
            };
            s.push_str(&format!(
                "    {:<24} {:>10} {:>7} {:>10} {:>8}   {}\n",
                c.name,
                or_unknown(c.inserts),
                share,
                or_unknown(c.live_entries),
                or_unknown(c.drops),
                c.addresses.join(",")
            ));
        }
    }
    s
}

/// How entries lived and died, lookups, and what observing cost.
fn life_lines(r: &Report) -> String {
    let mut s = String::new();
    if let Some(l) = &r.lifetimes {
        for (proto, p) in l {
            let ends: Vec<String> = p
                .by_end
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(e, n)| format!("{e} {n}"))
                .collect();
            s.push_str(&format!(
                "  lifetimes {proto:4}: {} ended, p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  ({})\n",
                p.count,
                p.p50_ms,
                p.p99_ms,
                p.max_ms,
                ends.join(", ")
            ));
        }
    }
    if r.early_drop.attempts.is_some() || r.clash.resolved.is_some() {
        s.push_str(&format!(
            "  early drop: {} attempts, {} evicted; clashes: {} resolved, {} failed\n",
            or_unknown(r.early_drop.attempts),
            or_unknown(r.early_drop.evicted),
            or_unknown(r.clash.resolved),
            or_unknown(r.clash.failed)
        ));
    }
    if let Some(l) = &r.lookups {
        s.push_str(&format!(
            "  lookups: {} ({} hits, {} misses), latency mean {:.0} ns p50 {} p99 {} max {}; probe cost {} ns per lookup\n",
            l.count,
            l.hits,
            l.misses,
            l.latency_ns.mean,
            l.latency_ns.p50,
            l.latency_ns.p99,
            l.latency_ns.max,
            l.overhead_ns_per_lookup.map_or_else(|| "?".into(), |v| format!("{v:.0}"))
        ));
        if let Some(c) = &l.chain {
            s.push_str(&format!(
                "  bucket searched per lookup: mean {:.2}  p50 {}  p99 {}  max {}\n",
                c.mean, c.p50, c.p99, c.max
            ));
        }
    }
    let c = &r.cost;
    let probe_ns: Option<(u64, u64)> = c.programs.as_ref().map(|ps| {
        ps.iter()
            .filter(|p| !p.name.starts_with("lookup"))
            .fold((0, 0), |(n, t), p| (n + p.run_cnt, t + p.run_time_ns))
    });
    s.push_str(&format!(
        "  cost: ctscope {:.2}% of a core, RSS {:.1} MiB at the end (peak {:.1} MiB, start-up included){}\n",
        c.cpu_percent,
        c.rss_kib as f64 / 1024.0,
        c.max_rss_kib as f64 / 1024.0,
        match (probe_ns, r.inserts) {
            (Some((_, t)), Some(i)) if i > 0 => format!(
                "; default probes {:.0} ns of kernel time per new connection (bpf_stats)",
                t as f64 / i as f64
            ),
            _ => String::new(),
        }
    ));
    s
}
