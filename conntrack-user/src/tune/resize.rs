//! What changing the bucket count costs a running host.
//!
//! `nf_conntrack_hash_resize` (net/netfilter/nf_conntrack_core.c, v5.10 and
//! v6.1..v6.18) allocates the new table, then, with bottom halves disabled on
//! its CPU (`local_bh_disable`) and every one of the `CONNTRACK_LOCKS` bucket
//! locks held (`nf_conntrack_all_lock`), walks every old bucket and moves
//! every node to the new one (hashing its tuple again). Every entry is two
//! nodes (original and reply direction), in every namespace: the table is
//! shared. Meanwhile every insert on every CPU waits on the locks and lookups
//! restart (`search_restart`). Then `synchronize_net` waits for an RCU grace
//! period before the old table is freed.

/// Estimated cost of moving one node: a cache miss to reach the entry
/// (nodes are scattered over the slab; about 100 ns from DRAM) dominates
/// the siphash of the tuple (tens of ns). An estimate, not a measurement.
pub(crate) const NS_PER_NODE: f64 = 100.0;
/// Estimated cost of visiting one old bucket head (sequential reads).
pub(crate) const NS_PER_BUCKET: f64 = 2.0;

/// Estimated seconds the resize holds every bucket lock with bottom halves
/// off, for `entries` live entries (all namespaces) in `old_buckets`.
pub(crate) fn stall_estimate_s(entries: u64, old_buckets: u64) -> f64 {
    let nodes = 2.0 * entries as f64;
    (nodes * NS_PER_NODE + old_buckets as f64 * NS_PER_BUCKET) / 1e9
}

/// A duration for people: `0.4 ms`, `12 ms`, `1.3 s`.
pub(crate) fn fmt_seconds(s: f64) -> String {
    if s < 0.001 {
        format!("{:.2} ms", s * 1000.0)
    } else if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else {
        format!("{s:.1} s")
    }
}

/// The warning a bucket change gets: what is rehashed and the stall.
pub(crate) fn warning(
    entries: u64,
    old_buckets: u64,
    new_buckets: u64,
    entries_are: &str,
) -> String {
    format!(
        "the bucket count changes ({old_buckets} -> {new_buckets}): the kernel rehashes the whole table at once (nf_conntrack_hash_resize), {entries} entries ({entries_are}, every namespace: the table is shared) = {} nodes, with every bucket lock held and bottom halves off on its CPU; inserts on every CPU wait and lookups restart meanwhile. Estimated stall: about {} (an estimate: {NS_PER_NODE:.0} ns per node, {NS_PER_BUCKET:.0} ns per old bucket; the real cost depends on the CPU and memory); on a busy host do it at a quiet time",
        entries.saturating_mul(2),
        fmt_seconds(stall_estimate_s(entries, old_buckets))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stall_grows_with_nodes_and_buckets() {
        // 1M entries = 2M nodes at 100 ns: 0.2 s, plus 262,144 buckets at 2 ns.
        let s = stall_estimate_s(1_000_000, 262_144);
        assert!((s - (0.2 + 262_144.0 * 2e-9)).abs() < 1e-9, "{s}");
        assert!(stall_estimate_s(0, 0) == 0.0);
        assert!(stall_estimate_s(u64::MAX, u64::MAX).is_finite());
        assert_eq!(fmt_seconds(0.0123), "12 ms");
        assert_eq!(fmt_seconds(1.26), "1.3 s");
        let w = warning(1_000_000, 262_144, 524_288, "live now");
        assert!(w.contains("2000000 nodes"), "{w}");
        assert!(w.contains("about 201 ms"), "{w}");
    }
}
