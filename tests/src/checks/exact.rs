//! The exactness checks of a normal run: ctscope's inserts and drops equal the kernel's own
//! counters, and every chain walk proved itself.

use serde_json::Value;

use super::{Check, compare, self_check_failures, u64_at};

/// ctscope's four drop counters.
pub(super) struct Drops {
    pub table_full: u64,
    pub chain_too_long: u64,
    pub clash: u64,
    pub other: u64,
}

impl Drops {
    pub fn read(report: &Value) -> Result<Drops, String> {
        Ok(Drops {
            table_full: u64_at(report, "drops/table_full")?,
            chain_too_long: u64_at(report, "drops/chain_too_long")?,
            clash: u64_at(report, "drops/clash")?,
            other: u64_at(report, "drops/other")?,
        })
    }

    pub fn total(&self) -> u64 {
        self.table_full + self.chain_too_long + self.clash + self.other
    }
}

/// inserts, drop-column, chain-too-long, insert-failed, self-check and flows-accounted.
pub(super) fn checks(report: &Value, truth: &Value) -> Vec<Check> {
    let mut checks = Vec::new();
    checks.push(compare(
        "inserts",
        (|| {
            let seen = u64_at(report, "inserts")?;
            let truth = u64_at(truth, "inserts")?;
            Ok((
                seen == truth,
                format!("ctscope {seen}, truth {truth} (count rise + early_drop)"),
            ))
        })(),
    ));

    let drops = Drops::read(report);
    checks.push(compare(
        "drop-column",
        (|| {
            let d = drops.as_ref().map_err(Clone::clone)?;
            let drop = u64_at(truth, "stat_delta/drop")?;
            Ok((
                d.table_full + d.clash == drop,
                format!(
                    "table_full {} + clash {} = {}, kernel drop {drop}",
                    d.table_full,
                    d.clash,
                    d.table_full + d.clash
                ),
            ))
        })(),
    ));
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
            let inserts = u64_at(report, "inserts")?;
            let d = drops.as_ref().map_err(Clone::clone)?;
            let flows = u64_at(truth, "flows")?;
            let send_errors = u64_at(truth, "send_errors")?;
            let sent = flows.checked_sub(send_errors).ok_or_else(|| {
                format!("send_errors {send_errors} exceed flows {flows}")
            })?;
            Ok((
                inserts + d.total() == sent,
                format!(
                    "inserts {inserts} + drops {} = {}, flows {flows} - send_errors {send_errors} = {sent}",
                    d.total(),
                    inserts + d.total()
                ),
            ))
        })(),
    ));
    checks
}
