//! Life-and-death checks: lifetimes against the kernel's deletes, early drops and
//! clashes against its stat columns, lookups when asked for, and the cost block.
//!
//! - `lifetimes`: in every protocol `count` is the sum of `by_end`, and the deaths of inserted
//!   entries, `sum(count - by_end.unconfirmed)` (those without a lifetime included:
//!   `lifetimes_untracked` of them, which cannot exceed it), equal the truth's deletes
//!   (`inserts - (count_after - count_before)` over all namespaces; the agent stops ctscope only
//!   once the counts are stable, so no death falls between the two).
//! - `lifetimes-early-drop`: `sum(by_end.early_drop)` equals the kernel's `early_drop` delta.
//! - `early-drop`: `early_drop.evicted` equals the kernel's `early_drop` delta, and
//!   `attempts > 0` when it is not 0 (one call may evict several entries).
//! - `clash`: `clash.failed == drops.clash` and `clash.resolved` equals the kernel's `clashres`.
//! - `dying-at-confirm`: a count where attribution ran throughout (kprobe mode, `--attribution
//!   always`), at most `drops.other` and at most the kernel's `insert_failed - chaintoolong`
//!   (an upper bound: the kernel has no counter of its own for them); null otherwise.
//! - `lookups-consistent`: with `--lookups`, `count > 0`, `hits + misses == count`,
//!   `p50 <= p99 <= max`, `chain` measured (Debian kernels export `nf_conntrack_hash`);
//!   without, `lookups` is null. Self-consistency only: the kernel keeps no lookup counter.
//! - `cost`: with `--cost` (or `--lookups`), bpf_stats per program (`run_cnt` and
//!   `run_time_ns` for each); without, `cost.programs` is null (bpf_stats stay off: they
//!   would tax every BPF program on the host); `max_rss_kib > 0`, `cpu_percent` a finite
//!   number >= 0. Sanity bounds on ctscope's own figures: there is no kernel truth of them.

use serde_json::Value;

use super::{Check, compare, u64_at, value_at};

/// The sum over protocols of `by_end.<key>`.
fn by_end_sum(lifetimes: &serde_json::Map<String, Value>, key: &str) -> Result<u64, String> {
    lifetimes
        .iter()
        .map(|(proto, v)| u64_at(v, &format!("by_end/{key}")).map_err(|w| format!("{proto}: {w}")))
        .sum()
}

fn lifetimes_object(report: &Value) -> Result<&serde_json::Map<String, Value>, String> {
    match value_at(report, "lifetimes")? {
        Value::Object(m) => Ok(m),
        Value::Null => Err("lifetimes is null (not measured)".into()),
        other => Err(format!("lifetimes is not an object: {other}")),
    }
}

/// A figure for a detail only (the check does not rest on it): `?` when missing.
fn shown(v: Result<u64, String>) -> String {
    v.map_or_else(|_| "?".to_string(), |n| n.to_string())
}

/// Deaths of inserted entries ctscope saw: every protocol's count less its unconfirmed
/// entries (deaths without a lifetime are in the counts).
pub(super) fn deaths(report: &Value) -> Result<u64, String> {
    let l = lifetimes_object(report)?;
    let mut n = 0;
    for (proto, v) in l {
        let count = u64_at(v, "count")?;
        let unconfirmed = u64_at(v, "by_end/unconfirmed")?;
        n += count.checked_sub(unconfirmed).ok_or_else(|| {
            format!("lifetimes/{proto}: unconfirmed {unconfirmed} > count {count}")
        })?;
    }
    Ok(n)
}

pub(super) fn checks(
    report: &Value,
    truth: &Value,
    lookups: bool,
    cost: bool,
    early: u64,
) -> Vec<Check> {
    let mut out = Vec::new();
    out.push(compare(
        "lifetimes",
        (|| {
            let l = lifetimes_object(report)?;
            let mut inconsistent = Vec::new();
            let mut confirmed = 0;
            let mut terms = Vec::new();
            for (proto, v) in l {
                let count = u64_at(v, "count")?;
                let Some(Value::Object(ends)) = v.get("by_end") else {
                    return Err(format!("lifetimes/{proto}/by_end is not an object"));
                };
                let mut sum = 0;
                for (k, n) in ends {
                    sum += n
                        .as_u64()
                        .ok_or_else(|| format!("lifetimes/{proto}/by_end/{k} is not a count"))?;
                }
                if sum != count {
                    inconsistent.push(format!("{proto}: count {count} != sum of by_end {sum}"));
                }
                let unconfirmed = u64_at(v, "by_end/unconfirmed")?;
                let deaths = count.checked_sub(unconfirmed).ok_or_else(|| {
                    format!("lifetimes/{proto}: unconfirmed {unconfirmed} > count {count}")
                })?;
                confirmed += deaths;
                terms.push(format!("{proto} {count} - {unconfirmed}"));
            }
            let untracked = u64_at(report, "lifetimes_untracked")?;
            let deletes = u64_at(truth, "deletes")?;
            let seen = confirmed;
            if untracked > seen {
                inconsistent.push(format!(
                    "lifetimes_untracked {untracked} > deaths counted {seen}"
                ));
            }
            let mut detail = format!(
                "({}) = {seen} (untracked {untracked} of them), kernel deletes {deletes} (inserts {} - (count {} - {}))",
                if terms.is_empty() {
                    "no protocol".to_string()
                } else {
                    terms.join(" + ")
                },
                shown(u64_at(truth, "inserts")),
                shown(u64_at(truth, "count_after")),
                shown(u64_at(truth, "count_before")),
            );
            if !inconsistent.is_empty() {
                detail = format!("{}; {detail}", inconsistent.join("; "));
            }
            if early > 0 {
                detail.push_str(&format!(
                    " + {early} deleted before the truth's snapshot (inserts and deaths both exceed the truth by it, so the net count change is exact)"
                ));
            }
            Ok((seen == deletes + early && inconsistent.is_empty(), detail))
        })(),
    ));
    out.push(compare(
        "lifetimes-early-drop",
        (|| {
            let l = lifetimes_object(report)?;
            let n = by_end_sum(l, "early_drop")?;
            let k = u64_at(truth, "stat_delta/early_drop")?;
            Ok((
                n == k,
                format!("sum of by_end.early_drop {n}, kernel early_drop {k}"),
            ))
        })(),
    ));
    out.push(compare(
        "early-drop",
        (|| {
            let evicted = u64_at(report, "early_drop/evicted")?;
            let attempts = u64_at(report, "early_drop/attempts")?;
            let k = u64_at(truth, "stat_delta/early_drop")?;
            // One early_drop() call may evict several entries (6.x evicts every unassured
            // entry of the bucket it picks), so attempts only has to be > 0 when some were.
            Ok((
                evicted == k && (evicted == 0 || attempts > 0),
                format!("evicted {evicted}, kernel early_drop {k}; attempts {attempts} (> 0 when evicted)"),
            ))
        })(),
    ));
    out.push(compare(
        "clash",
        (|| {
            let failed = u64_at(report, "clash/failed")?;
            let resolved = u64_at(report, "clash/resolved")?;
            let dropped = u64_at(report, "drops/clash")?;
            let k = u64_at(truth, "stat_delta/clash_resolve")?;
            Ok((
                failed == dropped && resolved == k,
                format!(
                    "failed {failed}, drops.clash {dropped}; resolved {resolved}, kernel clashres {k}"
                ),
            ))
        })(),
    ));
    out.push(dying_at_confirm_check(report, truth));
    out.push(lookups_check(report, lookups));
    out.push(cost_check(report, cost));
    out
}

/// `dying-at-confirm`: where attribution ran throughout, a count, bounded by what the kernel
/// implies: the kernel counts every confirmation it refuses for a dying entry in
/// `insert_failed` (and has no counter of its own for them), and a chain refusal is no such
/// one, so `dying_at_confirm <= insert_failed - chaintoolong`; ctscope counts them among its
/// `drops.other` too, so `dying_at_confirm <= drops.other`. Otherwise null (never a partial
/// count).
fn dying_at_confirm_check(report: &Value, truth: &Value) -> Check {
    compare(
        "dying-at-confirm",
        (|| {
            if !super::exact::attributed_throughout(report)? {
                return value_at(report, "dying_at_confirm").map(|v| {
                    (
                        v.is_null(),
                        format!("{v} (null: attribution did not run throughout)"),
                    )
                });
            }
            let n = u64_at(report, "dying_at_confirm")?;
            let other = u64_at(report, "drops/other")?;
            let failed = u64_at(truth, "stat_delta/insert_failed")?;
            let chain = u64_at(truth, "stat_delta/chaintoolong")?;
            let room = failed.saturating_sub(chain);
            Ok((
                n <= other && n <= room,
                format!(
                    "{n} <= drops.other {other}, and <= kernel insert_failed {failed} - chaintoolong {chain} = {room} (an upper bound: the kernel has no counter of dying entries at confirm)"
                ),
            ))
        })(),
    )
}

/// `lookups-consistent`: with `--lookups`, ctscope's lookup figures agree with themselves
/// (the kernel keeps no lookup counter to compare them with): `count > 0`, `hits + misses ==
/// count`, `p50 <= p99 <= max`, a chain measured; without, `lookups` is null.
fn lookups_check(report: &Value, wanted: bool) -> Check {
    const NAME: &str = "lookups-consistent";
    if !wanted {
        return compare(
            NAME,
            value_at(report, "lookups").map(|v| {
                (
                    v.is_null(),
                    format!(
                        "without --lookups: {}",
                        if v.is_null() { "null" } else { "present" }
                    ),
                )
            }),
        );
    }
    compare(
        NAME,
        (|| {
            let count = u64_at(report, "lookups/count")?;
            let hits = u64_at(report, "lookups/hits")?;
            let misses = u64_at(report, "lookups/misses")?;
            let p = |k: &str| -> Result<f64, String> {
                value_at(report, &format!("lookups/latency_ns/{k}"))?
                    .as_f64()
                    .ok_or_else(|| format!("lookups/latency_ns/{k} is not a number"))
            };
            let (p50, p99, max) = (p("p50")?, p("p99")?, p("max")?);
            let chain = value_at(report, "lookups/chain")?;
            let chain_samples = chain.get("samples").and_then(Value::as_u64);
            let mut bad = Vec::new();
            if count == 0 {
                bad.push("count is 0");
            }
            if hits + misses != count {
                bad.push("hits + misses != count");
            }
            if !(p50 <= p99 && p99 <= max) {
                bad.push("latencies out of order");
            }
            if chain_samples.is_none_or(|n| n == 0) {
                bad.push("no chain walked (null or no samples)");
            }
            Ok((
                bad.is_empty(),
                format!(
                    "{}self-consistency only, no kernel truth: count {count} (> 0), hits {hits} + misses {misses} (== count); latency p50 {p50} <= p99 {p99} <= max {max} ns; chain samples {}",
                    if bad.is_empty() {
                        String::new()
                    } else {
                        format!("DIFFERS: {}; ", bad.join(", "))
                    },
                    chain_samples.map_or_else(|| "null".to_string(), |n| n.to_string())
                ),
            ))
        })(),
    )
}

fn cost_check(report: &Value, measured: bool) -> Check {
    compare(
        "cost",
        (|| {
            let rss = u64_at(report, "cost/max_rss_kib")?;
            let cpu = value_at(report, "cost/cpu_percent")?
                .as_f64()
                .ok_or("cost/cpu_percent is not a number")?;
            // ctscope's own figure (no truth to compare it with): it only has to be one.
            let cpu_ok = cpu.is_finite() && cpu >= 0.0;
            if !measured {
                let programs = value_at(report, "cost/programs")?;
                return Ok((
                    programs.is_null() && rss > 0 && cpu_ok,
                    format!(
                        "no --cost: cost/programs {} (null: bpf_stats stay off); cpu {cpu:.2}% of a core (finite, >= 0); max RSS {rss} KiB (> 0)",
                        if programs.is_null() {
                            "null"
                        } else {
                            "present"
                        }
                    ),
                ));
            }
            let programs = match value_at(report, "cost/programs")? {
                Value::Array(a) if !a.is_empty() => a,
                Value::Array(_) => return Err("cost/programs is empty".into()),
                Value::Null => return Err("cost/programs is null (bpf_stats not enabled)".into()),
                other => return Err(format!("cost/programs is not an array: {other}")),
            };
            let mut runs = 0;
            for p in programs {
                runs += u64_at(p, "run_cnt")?;
                u64_at(p, "run_time_ns")?;
            }
            Ok((
                rss > 0 && runs > 0 && cpu_ok,
                format!(
                    "sanity bounds, no kernel truth: {} programs, {runs} runs (> 0); cpu {cpu:.2}% of a core (finite, >= 0); max RSS {rss} KiB (> 0)",
                    programs.len()
                ),
            ))
        })(),
    )
}
