//! The exactness checks of a normal run: ctscope's inserts and drops equal the kernel's own
//! counters, and every chain walk proved itself.

use serde_json::Value;

use super::{Check, compare, self_check_failures, u64_at, value_at};

/// ctscope's drop counters.
pub(super) struct Drops {
    pub table_full: u64,
    pub chain_too_long: u64,
    pub clash: u64,
    pub other: u64,
    /// `drops.alloc_failed`: `__nf_conntrack_alloc` failures that were not "table full" (slab
    /// allocation failures), which the kernel counts in `drop` too. `Err` says why it was taken
    /// as 0: reports of older ctscope runs have no such key (or a null).
    pub alloc_failed: Result<u64, &'static str>,
}

impl Drops {
    pub(super) fn read(report: &Value) -> Result<Drops, String> {
        const ALLOC_FAILED: &str = "drops/alloc_failed";
        Ok(Drops {
            table_full: u64_at(report, "drops/table_full")?,
            chain_too_long: u64_at(report, "drops/chain_too_long")?,
            clash: u64_at(report, "drops/clash")?,
            other: u64_at(report, "drops/other")?,
            alloc_failed: match value_at(report, ALLOC_FAILED) {
                Err(_) => Err("missing"),
                Ok(Value::Null) => Err("null"),
                // Present but not a count: a broken report, not an older one.
                Ok(_) => Ok(u64_at(report, ALLOC_FAILED)?),
            },
        })
    }

    /// `alloc_failed`, 0 when the report lacks it.
    pub(super) fn alloc_failed(&self) -> u64 {
        self.alloc_failed.unwrap_or(0)
    }

    /// `alloc_failed` for a check's detail, saying so when it was taken as 0.
    pub(super) fn alloc_failed_term(&self) -> String {
        match self.alloc_failed {
            Ok(n) => format!("alloc_failed {n}"),
            Err(why) => {
                format!("alloc_failed 0 ({why} in the report, an older ctscope: taken as 0)")
            }
        }
    }

    /// Every drop, whatever its reason.
    pub(super) fn total(&self) -> u64 {
        self.table_full + self.chain_too_long + self.clash + self.other + self.alloc_failed()
    }
}

/// Whether the report's refusals were all counted by the probes
/// (`attribution.throughout`): else chain-too-long, other and alloc-failed come from the
/// kernel's counters.
pub(super) fn attributed_throughout(report: &Value) -> Result<bool, String> {
    match value_at(report, "attribution/throughout")? {
        Value::Bool(b) => Ok(*b),
        other => Err(format!("attribution/throughout is not a bool: {other}")),
    }
}

/// The drop column: table full, clash and allocation failures, against the kernel's `drop`.
/// Not attributed throughout, alloc_failed is what the kernel's `drop` counted beyond the
/// probes' table_full and clash: the identity would restate it, so it is held to what the lab
/// knows, no allocation failure (a table-full or clash refusal the probes missed shows there).
pub(super) fn drop_column(d: &Drops, drop: u64, throughout: bool) -> (bool, String) {
    let sum = d.table_full + d.clash + d.alloc_failed();
    if throughout {
        return (
            sum == drop,
            format!(
                "table_full {} + clash {} + {} = {sum}, kernel drop {drop}",
                d.table_full,
                d.clash,
                d.alloc_failed_term()
            ),
        );
    }
    let measured = d.table_full + d.clash;
    (
        measured == drop && d.alloc_failed() == 0,
        format!(
            "table_full {} + clash {} (probes) = {measured}, kernel drop {drop}; alloc_failed {} (the rest of the kernel's drop: the lab has no allocation failures, so 0)",
            d.table_full,
            d.clash,
            d.alloc_failed()
        ),
    )
}

/// inserts, drop-column, chain-too-long, insert-failed, self-check and flows-accounted.
/// `decisions` is the number of conntrack decisions the clients' flows must have caused, with
/// how it was computed (see [`super::decisions`]).
pub(super) fn checks(
    report: &Value,
    truth: &Value,
    decisions: Result<super::Decisions, String>,
    early: u64,
    skipped: u64,
) -> Vec<Check> {
    let mut checks = Vec::new();
    checks.push(compare(
        "inserts",
        (|| {
            let seen = u64_at(report, "inserts")?;
            let from = truth
                .get("inserts_from")
                .and_then(Value::as_str)
                .unwrap_or("count rise + early_drop");
            let truth = u64_at(truth, "inserts")?;
            Ok((
                seen.saturating_add(skipped) == truth.saturating_add(early),
                format!(
                    "ctscope {seen} + {skipped} the kernel skipped its probe for (recursion_misses), truth {truth} ({from}) + {early} entries deleted before the truth's snapshot (see checks::unseen_early_deaths)"
                ),
            ))
        })(),
    ));

    let drops = Drops::read(report);
    let throughout = attributed_throughout(report);
    checks.push(compare(
        "drop-column",
        (|| {
            let d = drops.as_ref().map_err(Clone::clone)?;
            let drop = u64_at(truth, "stat_delta/drop")?;
            Ok(drop_column(d, drop, throughout.clone()?))
        })(),
    ));
    match throughout {
        Ok(true) => {
            checks.push(compare(
                "chain-too-long",
                (|| {
                    let d = drops.as_ref().map_err(Clone::clone)?;
                    let k = u64_at(truth, "stat_delta/chaintoolong")?;
                    Ok((
                        d.chain_too_long == k,
                        format!("ctscope {}, kernel chaintoolong {k}", d.chain_too_long),
                    ))
                })(),
            ));
            checks.push(compare(
                "insert-failed",
                (|| {
                    let d = drops.as_ref().map_err(Clone::clone)?;
                    let k = u64_at(truth, "stat_delta/insert_failed")?;
                    let sum = d.chain_too_long + d.clash + d.other;
                    Ok((
                        sum == k,
                        format!(
                            "chain_too_long {} + clash {} + other {} = {sum}, kernel insert_failed {k}",
                            d.chain_too_long, d.clash, d.other
                        ),
                    ))
                })(),
            ));
        }
        Err(e) => {
            checks.push(Check::missing("chain-too-long", e.clone()));
            checks.push(Check::missing("insert-failed", e));
        }
        // Chain-too-long and other refusals are then the kernel's own counts, and the same
        // comparison would restate them: what the probes measured of insert_failed, the
        // clashes, must fit in what the kernel counted beyond its chain refusals.
        Ok(false) => checks.push(compare(
            "insert-failed",
            (|| {
                let d = drops.as_ref().map_err(Clone::clone)?;
                let failed = u64_at(truth, "stat_delta/insert_failed")?;
                let chain = u64_at(truth, "stat_delta/chaintoolong")?;
                let room = failed.saturating_sub(chain);
                Ok((
                    chain <= failed && d.clash <= room,
                    format!(
                        "clash {} (probes) <= kernel insert_failed {failed} - chaintoolong {chain} = {room} (attribution did not run throughout: chain_too_long and other are the kernel's)",
                        d.clash
                    ),
                ))
            })(),
        )),
    }
    checks.push(compare(
        "self-check",
        (|| {
            // Every kind of failure counts, not only the nulls marker: a node pointer 8 bytes
            // off reaches the right marker through `pprev` (docs/design.md).
            let walks = u64_at(report, "self_check/walks")?;
            let (failures, terms) = self_check_failures(report)?;
            Ok((
                walks > 0 && failures == 0,
                format!("walks {walks} (> 0), {terms} (== 0)"),
            ))
        })(),
    ));
    checks.push(compare(
        "flows-accounted",
        (|| {
            // Inserts the kernel skipped the probe for were inserts all the same.
            let inserts = u64_at(report, "inserts")?.saturating_add(skipped);
            let d = drops.as_ref().map_err(Clone::clone)?;
            let dec = decisions?;
            let (sent, how) = (dec.sent, dec.how);
            let total = inserts + d.total();
            let (ok, relation) = if dec.retried {
                (
                    inserts <= sent && sent <= total,
                    format!("inserts {inserts} <= {how} <= inserts + drops {total} (kept-alive flows retry a refused datagram)"),
                )
            } else if dec.reopened > 0 {
                let reopened = dec.reopened;
                (
                    inserts <= sent + reopened && sent <= total,
                    format!("inserts {inserts} <= {how} + {reopened} evicted, and that <= inserts + drops {total} (TCP entries evicted mid-handshake are made again by the next packet)"),
                )
            } else {
                (
                    total == sent,
                    format!("inserts {inserts} + drops {} = {total}, {how}", d.total()),
                )
            };
            Ok((
                ok,
                format!(
                    "{relation}{}",
                    if d.alloc_failed.is_err() {
                        format!(" ({})", d.alloc_failed_term())
                    } else {
                        String::new()
                    }
                ),
            ))
        })(),
    ));
    checks
}
