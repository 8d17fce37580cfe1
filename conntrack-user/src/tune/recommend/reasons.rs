//! The reasoning in words: each sentence states what the report measured and
//! what the recommendation made of it.

use std::collections::BTreeMap;

use super::{
    Inputs, MIN_EXPIRIES, RAM_SHARE_WARN, TIMEOUT_FLOORS, WAITED_OUT_SHARE, fmt_bytes, fmt_n,
};
use crate::{
    report::Report,
    tune::sizing::{self, EntryCost, Size},
};

/// Why max is what it is: the busiest namespace's demand times the
/// headroom (`wanted`), and what cut it to `max` if anything did.
pub(super) fn max_reason(i: &Inputs, wanted: u64, max: u64, headroom: f64) -> String {
    let wanted_more = i.wanted_more();
    let peak_name = i.netns_peak_name.as_deref().unwrap_or("?");
    format!(
        "max {}: the busiest namespace ({peak_name}) peaked at {} entries{}; the kernel compares each namespace's count with the one global max, so max covers that demand ({}) times the headroom {:.1}",
        if max == wanted {
            fmt_n(max)
        } else {
            format!(
                "{} (cut from {}, see the warnings)",
                fmt_n(max),
                fmt_n(wanted)
            )
        },
        fmt_n(i.netns_peak),
        if wanted_more > 0 {
            format!(
                ", and {} more connections wanted an entry ({} refused as table full, {} evicted by early_drop)",
                fmt_n(wanted_more),
                fmt_n(i.table_full),
                fmt_n(i.early_drop_evicted)
            )
        } else {
            String::new()
        },
        fmt_n(i.demand),
        headroom
    )
}

/// What the load says beyond the busiest namespace: the whole table's peak,
/// and whether the observation can tell growth (against the max `wanted`,
/// before any cut).
pub(super) fn load_reasons(i: &Inputs, wanted: u64) -> Vec<String> {
    let mut reasons = Vec::new();
    if i.total_peak > i.netns_peak {
        reasons.push(format!(
            "all namespaces together held up to {} entries in the one shared table: the buckets and the memory are sized for what the table can hold, and every namespace may fill up to max on its own",
            fmt_n(i.total_peak)
        ));
    }
    if i.duration_s < 600.0 {
        reasons.push(format!(
            "the observation lasted {:.0} s: too short to tell growth from ramp-up; a longer one (with the busy hour) grounds max better",
            i.duration_s
        ));
    } else if let Some(g) = i.growth_per_hour.filter(|g| *g > 0.0) {
        let hours = (wanted.saturating_sub(i.demand)) as f64 / g;
        reasons.push(format!(
            "the table grew by about {} entries/hour during the {:.0} s observation: the headroom lasts about {:.1} hours of such growth; observe longer (busy hours included) before trusting it further",
            fmt_n(g as u64),
            i.duration_s,
            hours
        ));
    }
    reasons
}

/// Why buckets is what it is: the chains of a full table, and the chain
/// limit's refusals where the run saw any.
pub(super) fn buckets_reasons(i: &Inputs, size: Size, target: u32) -> Vec<String> {
    let Size { buckets, max } = size;
    let skew = i.chain_skew;
    let full = sizing::expected(max, buckets, skew);
    let mut reasons = vec![format!(
        "buckets {}: with {} entries (a full table) that is {:.2} nodes per bucket, mean chain {:.2} and p99 {:.0} (target {}){}; a bucket costs 8 bytes, an entry {:.0}, so a generous table is cheap",
        fmt_n(buckets),
        fmt_n(max),
        2.0 * max as f64 / buckets as f64,
        full.mean,
        full.p99,
        target,
        if i.chain_measured {
            format!(
                ", scaled by the skew measured here ({skew:.2}: observed p99 over the uniform model's)"
            )
        } else {
            " under uniform hashing (chains were not measured: procfs mode)".to_string()
        },
        i.entry_cost.per_entry()
    )];
    if i.chain_limit && i.chain_too_long > 0 {
        reasons.push(format!(
            "{} inserts were refused because a bucket was over the kernel's random chain limit (50..79 since 6.3 and the 6.1.y/5.15.y backports): at the recommended size the expected number is {:.3}",
            fmt_n(i.chain_too_long),
            sizing::expected_chain_refusals(i.inserts, i.total_peak, buckets)
        ));
    }
    reasons
}

/// Timeouts, shortened only where the lifetimes show entries that carried
/// traffic at their start and then waited out the whole timeout; with the
/// reason for each (or for leaving them all alone).
pub(super) fn shorten_timeouts(report: &Report) -> (BTreeMap<String, u64>, Vec<String>) {
    let mut timeouts = BTreeMap::new();
    let mut reasons = Vec::new();
    let Some(exp) = &report.expiries else {
        reasons.push(
            "timeouts unchanged: lifetimes were not measured (procfs mode), so nothing shows entries waiting out a timeout"
                .into(),
        );
        return (timeouts, reasons);
    };
    for (class, e) in exp {
        let floor = TIMEOUT_FLOORS
            .iter()
            .find(|(c, _)| c == class)
            .map(|(_, f)| *f);
        let Some(floor) = floor else { continue };
        if e.count < MIN_EXPIRIES {
            continue;
        }
        let share = e.waited_out as f64 / e.count as f64;
        if share < WAITED_OUT_SHARE {
            continue;
        }
        // `as` saturates (a negative or NaN time gives 0, the floor wins).
        let want = floor.max((2.0 * e.active_max_s).ceil() as u64);
        if want.saturating_mul(2) > e.timeout_s {
            continue;
        }
        let rate = e.waited_out as f64 / report.duration_s.max(1.0);
        let freed = rate * e.timeout_s.saturating_sub(want) as f64;
        reasons.push(format!(
            "{class} {} -> {want} s: {:.0}% of the {} entries that expired under it carried traffic only at their start (the longest kept talking {:.1} s) and then waited out all {} s; at the observed rate that frees about {} entries",
            e.timeout_s,
            share * 100.0,
            fmt_n(e.count),
            e.active_max_s,
            e.timeout_s,
            fmt_n(freed as u64)
        ));
        timeouts.insert(class.clone(), want);
    }
    (timeouts, reasons)
}

/// Without a budget nothing limits the memory but the demand: a warning
/// when the table would take a large share of this host's RAM when full.
/// With apply's own cost: extensions at least NF_CT_EXT_PREALLOC, so that
/// no recommendation apply refuses comes without this warning.
pub(super) fn memory_warning(i: &Inputs, size: Size, budgeted: bool) -> Option<String> {
    let apply_cost = EntryCost {
        ext_bytes: i.entry_cost.ext_bytes.max(sizing::EXT_PREALLOC as f64),
        ..i.entry_cost
    };
    let apply_bytes = sizing::memory_bytes(size, apply_cost);
    let ram_share = apply_bytes as f64 / i.ram_bytes.max(1) as f64;
    (!budgeted && ram_share > RAM_SHARE_WARN).then(|| {
        format!(
            "the table takes up to {} when full, {:.0}% of this host's RAM ({}): apply refuses more than {:.0}% without --force (--max-memory-share); to stay within a share, give --memory-budget (e.g. 10%), which cuts max",
            fmt_bytes(apply_bytes),
            ram_share * 100.0,
            fmt_bytes(i.ram_bytes),
            RAM_SHARE_WARN * 100.0
        )
    })
}

/// The memory of the full table, part by part.
pub(super) fn memory_reason(i: &Inputs, size: Size, memory_bytes: u64) -> String {
    let cost = i.entry_cost;
    format!(
        "memory when full: {} = {} buckets x 8 B + {} entries x {:.0} B ({} B slab object{})",
        fmt_bytes(memory_bytes),
        fmt_n(sizing::table_buckets(size.buckets)),
        fmt_n(size.max),
        cost.per_entry(),
        cost.slab_bytes,
        if i.ext_measured {
            format!(" + {:.1} B of extensions, measured", cost.ext_bytes)
        } else {
            format!(
                " + {} B of extensions, assumed: NF_CT_EXT_PREALLOC, not measured in procfs mode",
                sizing::EXT_PREALLOC
            )
        }
    )
}
