//! The recommendation as text for people (`ctscope recommend` without
//! `--json`).

use super::{Recommendation, fmt_bytes};

/// The recommendation for people.
pub fn render(r: &Recommendation) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "ctscope recommends (from a {:.0} s {} observation on {}):\n",
        r.inputs.duration_s,
        crate::text::name(&r.inputs.mode),
        crate::text::name(&r.kernel_release)
    ));
    s.push_str(&format!(
        "  nf_conntrack_buckets {}   (now {})\n  nf_conntrack_max     {}   (now {})\n",
        r.buckets, r.current.buckets, r.max, r.current.max
    ));
    for (k, v) in &r.timeouts {
        s.push_str(&format!(
            "  nf_conntrack_{k} {v}   (now {})\n",
            r.current
                .timeouts
                .get(k)
                .map_or_else(|| "?".into(), std::string::ToString::to_string)
        ));
    }
    s.push_str(&format!(
        "  memory when full: {}\n\nWhy:\n",
        fmt_bytes(r.memory_bytes)
    ));
    for reason in &r.reasons {
        s.push_str(&format!("  - {reason}\n"));
    }
    if !r.warnings.is_empty() {
        s.push_str("\nWarnings:\n");
        for w in &r.warnings {
            s.push_str(&format!("  ! {w}\n"));
        }
    }
    s.push_str(&format!(
        "\nThe same load ({} entries at the peak in all namespaces; {} wanted by the busiest) under each sizing:\n",
        r.inputs.total_peak, r.inputs.demand
    ));
    s.push_str(&format!(
        "  {:<15} {:>9} {:>9} {:>11} {:>10} {:>9}  {}\n",
        "method", "buckets", "max", "memory", "mean chain", "p99 chain", "observed drops?"
    ));
    for c in &r.comparison {
        s.push_str(&format!(
            "  {:<15} {:>9} {:>9} {:>11} {:>10.2} {:>9.0}  {}\n",
            c.method,
            c.buckets,
            c.max,
            fmt_bytes(c.memory_bytes),
            c.mean_chain,
            c.p99_chain,
            if c.would_drop {
                format!("yes: {}", c.drops_because.join("; "))
            } else {
                "no".into()
            }
        ));
    }
    s
}
