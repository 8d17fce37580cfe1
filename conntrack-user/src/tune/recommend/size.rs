//! The table's size: max from the demand and the headroom, then buckets for
//! the chain target, each cut where the target or the memory budget cannot
//! be met otherwise (never below the demand).

use super::{Budget, Inputs, Options, RecommendError, fmt_bytes, fmt_n};
use crate::tune::sizing::{self, Size};

/// max: demand x headroom up to a multiple of 1024, within what the sysctl
/// holds (an infinite or huge headroom is cut there, and said in the
/// warning).
pub(super) fn size_max(i: &Inputs, opts: &Options) -> (u64, Option<String>) {
    let wanted = i.demand as f64 * opts.headroom;
    if wanted < sizing::MAX_ENTRIES as f64 {
        // Below 2^31: the cast is exact and the rounding cannot overflow.
        return (((wanted.ceil() as u64).div_ceil(1024).max(1)) * 1024, None);
    }
    let warning = format!(
        "max is capped at {} (nf_conntrack_max is an int sysctl): headroom {:.1} over the demand of {} entries would ask for more",
        fmt_n(sizing::MAX_ENTRIES),
        opts.headroom,
        fmt_n(i.demand)
    );
    (sizing::MAX_ENTRIES, Some(warning))
}

/// buckets: the smallest size with p99 <= target when full. Where no size
/// up to MAX_BUCKETS meets the target at this max, max is cut to the largest
/// that one does (said in the warning), as long as that still covers the
/// demand.
pub(super) fn fit_chain_target(
    i: &Inputs,
    max: u64,
    target: u32,
) -> Result<(Size, Option<String>), RecommendError> {
    let skew = i.chain_skew;
    if let Some(buckets) = buckets_for(max, skew, target) {
        return Ok((Size { buckets, max }, None));
    }
    let cut =
        largest_max(max, |m| buckets_for(m, skew, target).is_some()).filter(|m| *m >= i.demand);
    let Some((m, b)) = cut.and_then(|m| Some((m, buckets_for(m, skew, target)?))) else {
        return Err(RecommendError::ChainTargetUnreachable {
            demand: i.demand,
            target,
            skew,
            max_buckets: sizing::MAX_BUCKETS,
        });
    };
    let warning = format!(
        "even {} buckets (the most ctscope recommends) do not keep the p99 chain within {target} at max {}: max is cut to {} (headroom {:.2} over the observed demand)",
        fmt_n(sizing::MAX_BUCKETS),
        fmt_n(max),
        fmt_n(m),
        m as f64 / i.demand.max(1) as f64
    );
    Ok((Size { buckets: b, max: m }, Some(warning)))
}

/// The memory budget: where `size` takes more, fewer entries with buckets
/// scaled with them (said in the warning); an error where not even the
/// demand fits.
pub(super) fn fit_budget(
    i: &Inputs,
    size: Size,
    opts: &Options,
) -> Result<(Size, Option<String>), RecommendError> {
    let Some(budget) = opts.budget else {
        return Ok((size, None));
    };
    let (skew, target, cost) = (i.chain_skew, opts.target_chain, i.entry_cost);
    let limit = match budget {
        Budget::Bytes(b) => b,
        // `as` saturates; a share that is no number is no budget (0).
        Budget::Percent(p) if p.is_finite() && p > 0.0 => (i.ram_bytes as f64 * p / 100.0) as u64,
        Budget::Percent(_) => 0,
    };
    if sizing::memory_bytes(size, cost) <= limit {
        return Ok((size, None));
    }
    // Fewer entries, buckets scaled with them: memory grows with max
    // (buckets_for is monotone), so the largest max within the budget is a
    // binary search (a step-down loop of 1024 at a time ran for minutes at a
    // peak of 1e12).
    let within = |m: u64| {
        buckets_for(m, skew, target)
            .is_some_and(|b| sizing::memory_bytes(Size { buckets: b, max: m }, cost) <= limit)
    };
    let cut = largest_max(size.max, within)
        .filter(|m| *m >= i.demand)
        .and_then(|m| Some((m, buckets_for(m, skew, target)?)));
    let Some((m, b)) = cut else {
        let at_demand = buckets_for(i.demand.max(1), skew, target).unwrap_or(sizing::MAX_BUCKETS);
        return Err(RecommendError::BudgetTooSmall {
            budget: limit,
            demand: i.demand,
            need: sizing::memory_bytes(
                Size {
                    buckets: at_demand,
                    max: i.demand,
                },
                cost,
            ),
            buckets: at_demand,
        });
    };
    let warning = format!(
        "the memory budget ({}) does not hold max {} with headroom {:.1}: max is cut to {} (headroom {:.2} over the observed demand)",
        fmt_bytes(limit),
        fmt_n(size.max),
        opts.headroom,
        fmt_n(m),
        m as f64 / i.demand.max(1) as f64
    );
    Ok((Size { buckets: b, max: m }, Some(warning)))
}

/// The smallest bucket count (a multiple of 512, 1024..=MAX_BUCKETS) whose
/// p99 chain at `entries` is within `target` after the measured skew;
/// `None` when not even MAX_BUCKETS is. A size for which the model has no
/// figure (`expected_checked` gives `None`) does not fit: the old search
/// took the smallest size, where the model had underflowed to a p99 of 1.
pub fn buckets_for(entries: u64, skew: f64, target: u32) -> Option<u64> {
    let page = sizing::BUCKET_ROUND;
    // Also no "chain too long" refusal expected when the full table is
    // filled again: at a high --target-chain (λ ≈ 27 at target 40) the p99
    // alone would allow chains the kernel's random 50..79 limit refuses, and
    // apply refuses such a load (apply.rs chain_risk).
    let fits = |pages: u64| {
        sizing::expected_checked(entries, pages * page, skew)
            .is_some_and(|c| c.p99 <= f64::from(target))
            && sizing::expected_chain_refusals(entries, entries, pages * page) < 1.0
    };
    // The p99 only falls as buckets grow (Poisson(λ) grows stochastically
    // with λ), so a binary search between the bounds finds the smallest
    // that fits, in at most 17 steps.
    let (mut lo, mut hi) = (1024 / page, sizing::MAX_BUCKETS / page);
    if !fits(hi) {
        return None;
    }
    if fits(lo) {
        return Some(lo * page);
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some(hi * page)
}

/// The largest multiple of 1024 in 1024..=`upto` for which `ok` holds, for
/// an `ok` that holds up to some size and not beyond; `None` when it does
/// not hold even at 1024. A binary search: at most 22 calls of `ok`.
fn largest_max(upto: u64, ok: impl Fn(u64) -> bool) -> Option<u64> {
    let (mut lo, mut hi) = (1u64, (upto / 1024).max(1));
    if !ok(lo * 1024) {
        return None;
    }
    if ok(hi * 1024) {
        return Some(hi * 1024);
    }
    // Invariant: ok(lo), !ok(hi).
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if ok(mid * 1024) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(lo * 1024)
}
