//! The same load under each sizing method: the host's current settings, the
//! kernel's default, the usual formulas, and ctscope's.

use super::{Comparison, CurrentSettings, Inputs, fmt_n};
use crate::tune::sizing::{self, Chains, Size};

/// Each method's size evaluated against the observed load, ctscope's
/// (`recommended`) last.
pub(super) fn compare_methods(
    i: &Inputs,
    current: &CurrentSettings,
    kernel_release: &str,
    recommended: Size,
) -> Vec<Comparison> {
    let methods = [
        (
            "current",
            Size {
                buckets: current.buckets,
                max: current.max,
            },
        ),
        (
            "kernel-default",
            sizing::kernel_default(i.ram_bytes, kernel_release),
        ),
        ("seed-formula", sizing::seed_formula(i.ram_bytes)),
        ("kube-proxy", sizing::kube_proxy(i.cpus, current.buckets)),
        ("ctscope", recommended),
    ];
    methods
        .into_iter()
        .map(|(method, size)| evaluate(method, size, i))
        .collect()
}

/// One method's size at the observed load: its chains at the peak, and
/// whether (and why) the run's drops would have happened under it.
fn evaluate(method: &str, size: Size, i: &Inputs) -> Comparison {
    let at_peak: Chains = sizing::expected(i.total_peak.max(1), size.buckets, i.chain_skew);
    let mut because = Vec::new();
    if i.demand > size.max {
        because.push(format!(
            "table full: the busiest namespace wanted {} entries, max is {}",
            fmt_n(i.demand),
            fmt_n(size.max)
        ));
    }
    if i.chain_limit {
        let refused = sizing::expected_chain_refusals(i.inserts, i.total_peak, size.buckets);
        if refused >= 0.5 {
            because.push(format!(
                "chain too long: about {refused:.1} inserts expected over the kernel's chain limit at the observed peak"
            ));
        }
    }
    Comparison {
        method: method.to_string(),
        buckets: size.buckets,
        max: size.max,
        memory_bytes: sizing::memory_bytes(size, i.entry_cost),
        mean_chain: at_peak.mean,
        p99_chain: at_peak.p99,
        would_drop: !because.is_empty(),
        drops_because: because,
    }
}
