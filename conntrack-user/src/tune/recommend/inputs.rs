//! What a recommendation rests on, read from the report: the demand, what an
//! entry costs, the measured chain skew, and the settings the run saw.

use super::{CurrentSettings, Inputs, RecommendError};
use crate::{
    report::{Report, chain_model},
    tune::sizing::{self, EntryCost},
};

impl Inputs {
    /// The measured facts and the settings the observation ran under. Each
    /// figure the recommendation cannot do without is an error when missing,
    /// in this order: occupancy, current buckets, current max, RAM, slab
    /// object; then a demand beyond what the max sysctl can hold.
    pub(super) fn from_report(
        report: &Report,
    ) -> Result<(Inputs, CurrentSettings), RecommendError> {
        let occ = report
            .occupancy
            .as_ref()
            .ok_or(RecommendError::NoOccupancy)?;
        let total_peak = occ.total_peak.ok_or(RecommendError::NoOccupancy)?;
        let netns_peak = occ.netns_peak.ok_or(RecommendError::NoOccupancy)?;
        let st = &report.settings;
        let current = CurrentSettings {
            buckets: st
                .buckets
                .ok_or(RecommendError::Missing("the current buckets"))?,
            max: st.max.ok_or(RecommendError::Missing("the current max"))?,
            timeouts: st.timeouts.clone(),
        };
        let ram = st
            .ram_bytes
            .ok_or(RecommendError::Missing("the RAM size"))?;
        let slab = st
            .slab_size
            .or(st.slab_object_size)
            .ok_or(RecommendError::Missing("the slab object size"))?;
        let chain_limit = report.kernel_stats.contains_key("chaintoolong")
            || sizing::version(&report.kernel_release).is_some_and(|v| v >= (5, 15));

        let (table_full, evicted) = refused_and_evicted(report);
        // Report numbers are input: saturate, never wrap (a wrapped sum was a
        // max of 0).
        let demand = netns_peak.saturating_add(table_full.saturating_add(evicted));
        if demand > sizing::MAX_ENTRIES {
            return Err(RecommendError::DemandTooLarge {
                demand,
                limit: sizing::MAX_ENTRIES,
            });
        }
        let (ext_bytes, ext_measured) = match &report.extensions {
            // A figure that is no byte count (negative, or beyond any entry)
            // is not used: the kernel's preallocation stands in.
            Some(e) if e.inserts > 0 && (0.0..1e6).contains(&e.bytes_per_entry) => {
                (e.bytes_per_entry, true)
            }
            _ => (sizing::EXT_PREALLOC as f64, false),
        };
        let (chain_skew, chain_measured) = chain_skew(report, current.buckets);
        let inputs = Inputs {
            mode: report.mode.to_string(),
            duration_s: report.duration_s,
            total_peak,
            netns_peak,
            netns_peak_name: occ.netns_peak_name.clone(),
            table_full,
            early_drop_evicted: evicted,
            chain_too_long: report.drops.chain_too_long.unwrap_or(0),
            demand,
            growth_per_hour: occ.growth_per_hour,
            chain_skew,
            chain_measured,
            entry_cost: EntryCost {
                slab_bytes: slab,
                ext_bytes: sizing::round2(ext_bytes),
            },
            ext_measured,
            ram_bytes: ram,
            cpus: st.cpus.unwrap_or(1),
            chain_limit,
            inserts: report.inserts.unwrap_or(0),
        };
        Ok((inputs, current))
    }

    /// Connections the table refused or evicted to make room: they wanted
    /// an entry too.
    pub(super) fn wanted_more(&self) -> u64 {
        self.table_full.saturating_add(self.early_drop_evicted)
    }
}

/// Drops and evictions: connections that wanted an entry (table full,
/// evicted). procfs mode has no table-full count: the kernel's `drop` column
/// (table full and unresolved clashes) of every namespace stands in for it,
/// an upper bound.
fn refused_and_evicted(report: &Report) -> (u64, u64) {
    let kernel_sum = |col: &str| -> u64 {
        report
            .netns
            .iter()
            .filter_map(|n| n.kernel_stats.get(col).copied())
            .fold(0u64, u64::saturating_add)
    };
    let table_full = report
        .drops
        .table_full
        .unwrap_or_else(|| kernel_sum("drop"));
    let evicted = report
        .early_drop
        .evicted
        .unwrap_or_else(|| kernel_sum("early_drop"));
    (table_full, evicted)
}

/// The skew of the measured chains: observed p99 over the model's p99 at
/// the occupancy the observed mean implies (mean = 1 + 2N/B).
fn chain_skew(report: &Report, buckets: u64) -> (f64, bool) {
    let Some(c) = &report.chain_length else {
        return (1.0, false);
    };
    let measured: Vec<_> = [&c.orig, &c.reply]
        .into_iter()
        .filter(|s| !s.modeled && s.samples >= 100)
        .collect();
    if measured.is_empty() {
        return (1.0, false);
    }
    let mut skew: f64 = 1.0;
    for s in measured {
        let n = ((s.mean - 1.0).max(0.0) * buckets as f64 / 2.0).round() as u64;
        if let Some(m) = chain_model::chain_quantiles(n.max(1), buckets) {
            skew = skew.max(f64::from(s.p99) / m.p99.max(1.0));
        }
    }
    (sizing::round2(skew), true)
}
