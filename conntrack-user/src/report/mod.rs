//! The observe report (`--json`) and the chain-length statistics in it.
//!
//! `chain_model`: the chain lengths expected under uniform hashing, shown
//! where nothing is measured and used by the sizing.

pub mod chain_model;

use std::{collections::BTreeMap, path::Path};

use conntrack_common::HIST_OVERFLOW;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// fentry/fexit programs (BPF trampolines).
    Fentry,
    Kprobe,
    Procfs,
    /// Nothing was observed: a stop signal came while the probes loaded.
    None,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Fentry => "fentry",
            Mode::Kprobe => "kprobe",
            Mode::Procfs => "procfs",
            Mode::None => "none",
        })
    }
}

/// Distribution of chain lengths: the number of nodes in a bucket right after
/// an insert, the new node included. Walks cut short at the walk limit are
/// not lengths: they are counted in `truncated` only, never in the histogram,
/// `samples`, the mean or the percentiles.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChainStats {
    /// `[length, inserts]` pairs, zero counts left out.
    pub histogram: Vec<(u32, u64)>,
    pub samples: u64,
    pub mean: f64,
    pub p50: u32,
    pub p99: u32,
    pub max: u32,
    pub truncated: u64,
    /// True when the distribution is the one expected under uniform hashing
    /// (procfs mode), not measured.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub modeled: bool,
}

impl ChainStats {
    /// From per-length counts (index = length, last slot = overflow).
    pub fn from_counts(counts: &[u64]) -> ChainStats {
        let lengths = counts.get(..HIST_OVERFLOW as usize).unwrap_or(counts);
        let samples: u64 = lengths.iter().sum();
        let histogram: Vec<(u32, u64)> = lengths
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(l, c)| (l as u32, *c))
            .collect();
        let weighted: f64 = histogram
            .iter()
            .map(|(l, c)| f64::from(*l) * *c as f64)
            .sum();
        ChainStats {
            mean: if samples > 0 {
                weighted / samples as f64
            } else {
                0.0
            },
            p50: percentile(&histogram, samples, 0.50),
            p99: percentile(&histogram, samples, 0.99),
            max: histogram.last().map_or(0, |(l, _)| *l),
            truncated: counts.get(HIST_OVERFLOW as usize).copied().unwrap_or(0),
            histogram,
            samples,
            modeled: false,
        }
    }
}

/// Nearest-rank percentile: the smallest length with at least `q * n` samples
/// at or below it. Exact, since every length has its own slot.
pub fn percentile(hist: &[(u32, u64)], n: u64, q: f64) -> u32 {
    if n == 0 {
        return 0;
    }
    let rank = ((q * n as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (len, c) in hist {
        seen += c;
        if seen >= rank {
            return *len;
        }
    }
    hist.last().map_or(0, |(l, _)| *l)
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChainLengths {
    pub orig: ChainStats,
    pub reply: ChainStats,
}

/// New connections refused by the kernel, by reason. `null` = not measured in
/// this mode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drops {
    /// `__nf_conntrack_alloc` failed after `early_drop` found nothing to evict.
    pub table_full: Option<u64>,
    /// Confirmation refused: a bucket was over the kernel's chain limit (5.15+).
    pub chain_too_long: Option<u64>,
    /// Confirmation refused: a clash with an existing entry was not resolved.
    pub clash: Option<u64>,
    /// Confirmation refused for another reason (entry dying, extension change).
    pub other: Option<u64>,
    /// `__nf_conntrack_alloc` failed with room in the table (slab allocation
    /// failure). The kernel counts these in `drop` too.
    pub alloc_failed: Option<u64>,
}

impl Drops {
    pub fn total(&self) -> Option<u64> {
        Some(
            self.table_full?
                + self.chain_too_long?
                + self.clash?
                + self.other?
                + self.alloc_failed.unwrap_or(0),
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelfCheck {
    /// Walks that ended at the nulls marker of their own bucket.
    pub walks: u64,
    /// Walks that ended at another bucket's marker: offsets unproven.
    pub nulls_mismatch: u64,
    /// Start nodes not linked where they claim (`*node->pprev != node`).
    pub link_mismatch: u64,
    /// Tuples whose `dst.dir` is not their direction.
    pub dir_mismatch: u64,
    pub truncated: u64,
    pub read_errors: u64,
    /// Probe events lost: a return without its entry, or an entry whose
    /// return never ran (inserts then go uncounted).
    pub missed: u64,
}

impl SelfCheck {
    /// Walks whose offsets or chain could not be proven.
    pub fn failures(&self) -> u64 {
        self.nulls_mismatch + self.link_mismatch + self.dir_mismatch + self.read_errors
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub buckets: Option<u64>,
    pub max: Option<u64>,
    pub count_start: Option<u64>,
    pub count_end: Option<u64>,
    pub slab_object_size: Option<u64>,
    /// Bytes the slab really spends per entry (`slab_size`: the object
    /// aligned); the tuner's per-entry cost.
    #[serde(default)]
    pub slab_size: Option<u64>,
    /// Every `nf_conntrack_*timeout*` sysctl at the end of the run (short names).
    #[serde(default)]
    pub timeouts: BTreeMap<String, u64>,
    /// `MemTotal` (the kernel's defaults and the formulas scale with it).
    #[serde(default)]
    pub ram_bytes: Option<u64>,
    /// Online CPUs (kube-proxy's formula scales with them).
    #[serde(default)]
    pub cpus: Option<u64>,
}

/// How full the one global table got (docs/report-schema.md, "Occupancy").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Occupancy {
    pub interval_s: f64,
    pub samples: u64,
    /// Every namespace's count summed: the entries in the shared table.
    pub total_start: Option<u64>,
    pub total_end: Option<u64>,
    pub total_peak: Option<u64>,
    pub total_peak_at_s: Option<f64>,
    /// The highest count of any one namespace: what the kernel compares
    /// with the global `nf_conntrack_max`.
    pub netns_peak: Option<u64>,
    pub netns_peak_name: Option<String>,
    /// Straight-line fit of the total over the run, entries per hour.
    pub growth_per_hour: Option<f64>,
    pub per_netns: Vec<NetnsPeak>,
}

/// One point of the run's `timeline`: what happened since the previous point.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TimelinePoint {
    /// Seconds from the start of the observation to the end of this point.
    pub t_s: f64,
    /// `nf_conntrack_count` (ctscope's namespace) at `t_s`.
    pub count: Option<u64>,
    pub inserts: Option<u64>,
    /// By reason, as in `drops`; unknown reasons are null (procfs mode knows chain_too_long).
    pub drops: Drops,
    /// The kernel's `drop` column (table full, clash and allocation failures together).
    pub kernel_drop: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsPeak {
    pub inode: u64,
    pub name: String,
    pub peak: u64,
}

/// Extension areas of the entries inserted during the run (kprobe mode).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Extensions {
    /// Inserted entries that carry an extension area.
    pub entries_with_ext: u64,
    pub inserts: u64,
    /// Mean kmalloc bytes per inserted entry (entries without ext count 0).
    pub bytes_per_entry: f64,
}

/// Probe-only details beyond the headline numbers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeDetails {
    pub attached: Vec<String>,
    pub offsets: Option<serde_json::Value>,
    /// This and the next four are counted by the attribution programs:
    /// only while they ran (`attribution`).
    pub allocations: u64,
    pub alloc_failed_other: u64,
    pub confirms: u64,
    pub confirm_drops: u64,
    pub dying: u64,
    pub early_drop_evicted: u64,
    pub early_drop_failed: u64,
    pub clash_resolved: u64,
    pub same_bucket_inserts: u64,
    /// Where the probes keep calls in flight: `per_cpu` (the kernel cannot
    /// preempt them) or `per_task`.
    #[serde(default)]
    pub calls_kept: String,
    /// Runs of ctscope's programs the kernel skipped because another BPF
    /// program was running on that CPU (the connection's softirq ran on
    /// the exit of an interrupt that had stopped one of them): by program,
    /// those with any. `insert`'s and `hash_insert_ret`'s are inserts not
    /// counted.
    #[serde(default)]
    pub recursion_misses: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub ctscope_version: String,
    pub mode: Mode,
    pub kernel_release: String,
    pub netns_inode: Option<u64>,
    pub duration_s: f64,
    pub inserts: Option<u64>,
    pub chain_length: Option<ChainLengths>,
    pub drops: Drops,
    pub self_check: Option<SelfCheck>,
    pub settings: Settings,
    /// Deltas of `/proc/net/stat/nf_conntrack` (this namespace) over the run.
    pub kernel_stats: BTreeMap<String, u64>,
    pub probes: Option<ProbeDetails>,
    #[serde(default)]
    pub netns: Vec<NetnsReport>,
    #[serde(default)]
    pub containers: Vec<ContainerReport>,
    #[serde(default)]
    pub lifetimes: Option<BTreeMap<String, ProtoLifetimes>>,
    #[serde(default)]
    pub lifetimes_untracked: Option<u64>,
    #[serde(default)]
    pub early_drop: EarlyDrop,
    #[serde(default)]
    pub clash: ClashOutcomes,
    #[serde(default)]
    pub dying_at_confirm: Option<u64>,
    #[serde(default)]
    pub lookups: Option<Lookups>,
    #[serde(default)]
    pub cost: Cost,
    #[serde(default)]
    pub occupancy: Option<Occupancy>,
    #[serde(default)]
    pub extensions: Option<Extensions>,
    /// Per timeout sysctl: entries that died by their timer (probe modes).
    #[serde(default)]
    pub expiries: Option<BTreeMap<String, Expiry>>,
    /// When refusals were attributed to their source (probe modes).
    #[serde(default)]
    pub attribution: Option<AttributionReport>,
    pub notices: Vec<String>,
    /// Why nothing was observed, when a stop signal ended the run while the
    /// probes were loading (`mode` is then `none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<String>,
    /// The run interval by interval (at most 512 points; a long run's points each cover
    /// several intervals).
    #[serde(default)]
    pub timeline: Vec<TimelinePoint>,
}

/// When the attribution programs ran (the exits of `__nf_conntrack_alloc`
/// and `__nf_conntrack_confirm`, and `nf_conntrack_free` in fentry mode):
/// docs/report-schema.md, "Attribution".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttributionReport {
    /// `auto`, `always` or `off` (`--attribution`; kprobe mode: always).
    pub policy: String,
    /// They ran for the whole observation: every refusal was counted by
    /// reason and source, and `drops` are all the probes' own counts.
    /// Otherwise chain-too-long, other and alloc-failed refusals come from
    /// the kernel's counters of each namespace.
    pub throughout: bool,
    /// Seconds they ran.
    pub armed_s: f64,
    /// Times they were attached.
    pub arms: u32,
    /// Refusals whose source is not known (they happened while the programs
    /// were not attached); null when the total is unknown.
    pub unattributed: Option<u64>,
}

/// Whose namespace a `netns` row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetnsKind {
    Container,
    Netns,
    Host,
}

/// One network namespace (docs/report-schema.md, "Attribution").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetnsReport {
    pub inode: u64,
    pub name: String,
    pub kind: NetnsKind,
    pub inserts: Option<u64>,
    pub live_entries: Option<u64>,
    pub drops: Drops,
    #[serde(default)]
    pub kernel_stats: BTreeMap<String, u64>,
}

/// One container, NAT-attributed (docs/report-schema.md, "Attribution").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerReport {
    pub name: String,
    pub id: Option<String>,
    pub netns_inode: Option<u64>,
    pub addresses: Vec<String>,
    pub inserts: Option<u64>,
    pub nat_inserts: Option<u64>,
    pub own_inserts: Option<u64>,
    pub live_entries: Option<u64>,
    pub drops: Option<u64>,
}

/// How entries of one L4 protocol lived (docs/report-schema.md, "Life and death").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProtoLifetimes {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub by_end: BTreeMap<String, u64>,
}

/// Entries of one timeout class that died by their timer
/// (docs/report-schema.md, "Expiries").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Expiry {
    /// The sysctl's value at the end of the run.
    pub timeout_s: u64,
    pub count: u64,
    /// Entries that lived no longer than the timeout (+ max(1 s, 2%)):
    /// traffic only at their start, then the whole timeout waited out.
    pub waited_out: u64,
    /// Lifetime beyond the timeout (how long the flow kept talking).
    pub active_p50_s: f64,
    pub active_p99_s: f64,
    pub active_max_s: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EarlyDrop {
    pub attempts: Option<u64>,
    pub evicted: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClashOutcomes {
    pub resolved: Option<u64>,
    pub failed: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyNs {
    pub mean: f64,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

/// `--lookups` results (docs/report-schema.md, "Lookups").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Lookups {
    pub count: u64,
    pub hits: u64,
    pub misses: u64,
    pub latency_ns: LatencyNs,
    pub chain: Option<ChainStats>,
    pub overhead_ns_per_lookup: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProgramCost {
    pub name: String,
    pub run_cnt: u64,
    pub run_time_ns: u64,
    pub ns_per_run: f64,
}

/// What the run cost (docs/report-schema.md, "Cost").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    pub programs: Option<Vec<ProgramCost>>,
    pub cpu_seconds: f64,
    pub cpu_percent: f64,
    /// Peak resident set over the whole process life (VmHWM), start-up
    /// (BTF parsing, program loading) included.
    pub max_rss_kib: u64,
    /// Resident set at the end of the run (VmRSS): what observing holds.
    #[serde(default)]
    pub rss_kib: u64,
}

/// An optional count for people: the number, or `?` when not known.
pub fn or_unknown(v: Option<u64>) -> String {
    v.map_or_else(|| "?".into(), |v| v.to_string())
}

/// The mode of reports and recommendations ctscope writes: readable by
/// all (they hold counts and names, nothing secret), writable by the owner.
pub const REPORT_MODE: u32 = 0o644;

/// Writes `text` to `path` atomically with mode [`REPORT_MODE`], through
/// the project's one writer ([`crate::safefile::write_atomic`]: exclusive
/// temporary file, no link followed, fsync of file and directory).
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    crate::safefile::write_atomic(path, text.as_bytes(), REPORT_MODE)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/report-schema.md has a heading naming every top-level key.
    #[test]
    fn every_key_is_documented() {
        let doc = include_str!("../../../docs/report-schema.md");
        let headings: Vec<&str> = doc.lines().filter(|l| l.starts_with("### ")).collect();
        let report: Report = serde_json::from_value(serde_json::json!({
            "ctscope_version": "0", "mode": "procfs", "kernel_release": "x",
            "netns_inode": null, "duration_s": 1.0, "inserts": null, "chain_length": null,
            "drops": {}, "self_check": null, "settings": {}, "kernel_stats": {},
            "probes": null, "notices": [], "interrupted": "a signal",
        }))
        .expect("a minimal report");
        let value = serde_json::to_value(&report).expect("encodes");
        let keys: Vec<&String> = value.as_object().expect("an object").keys().collect();
        assert!(keys.len() >= 25, "{keys:?}");
        for key in keys {
            let named = format!("`{key}`");
            assert!(
                headings.iter().any(|h| h.contains(&named)),
                "docs/report-schema.md has no heading for {named}"
            );
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut counts = vec![0u64; 257];
        counts[1] = 50;
        counts[2] = 49;
        counts[9] = 1;
        let s = ChainStats::from_counts(&counts);
        assert_eq!(s.samples, 100);
        assert_eq!(s.p50, 1);
        assert_eq!(s.p99, 2);
        assert_eq!(s.max, 9);
        assert!((s.mean - 1.57).abs() < 1e-9);
        assert_eq!(s.histogram, vec![(1, 50), (2, 49), (9, 1)]);
        counts[256] = 3;
        let t = ChainStats::from_counts(&counts);
        assert_eq!(t.truncated, 3);
        // Truncated walks are not lengths: the statistics do not move.
        assert_eq!(
            (t.samples, t.max, t.p99, t.mean),
            (s.samples, s.max, s.p99, s.mean)
        );
        assert_eq!(ChainStats::from_counts(&[0; 257]).p99, 0);
    }

    #[test]
    fn drop_total_needs_every_reason() {
        let d = Drops {
            table_full: Some(1),
            chain_too_long: Some(2),
            clash: Some(0),
            other: Some(3),
            alloc_failed: Some(1),
        };
        assert_eq!(d.total(), Some(7));
        assert_eq!(Drops::default().total(), None);
    }

    #[test]
    fn atomic_write_replaces_whole_file() {
        use std::{fs, os::unix::fs::MetadataExt as _};
        let dir = std::env::temp_dir().join(format!("ctscope-test-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("mkdir");
        let p = dir.join("r.json");
        write_atomic(&p, "first").expect("write");
        write_atomic(&p, "second").expect("write");
        assert_eq!(fs::read_to_string(&p).expect("read"), "second");
        assert_eq!(fs::read_dir(&dir).expect("ls").count(), 1);
        assert_eq!(fs::metadata(&p).expect("meta").mode() & 0o7777, REPORT_MODE);
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
