//! The agent's result JSON (docs/lab-contract.md, "Agent result JSON"). xtask wraps it, adding
//! `kernel` and timings; [`crate::check`] reads it as a `serde_json::Value` so those extra keys
//! and the free-form ctscope report need no schema here.

use serde::{Deserialize, Serialize};

/// Rise of the `/proc/net/stat/nf_conntrack` counters the lab reports, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatDelta {
    pub insert_failed: u64,
    pub drop: u64,
    pub early_drop: u64,
    /// `chainlength` column (kernels >= 5.15); 0 where the kernel has no chain limit.
    pub chaintoolong: u64,
    /// `clashres` column (kernels >= 5.10).
    pub clash_resolve: u64,
    pub search_restart: u64,
}

impl StatDelta {
    pub fn add(&mut self, other: &StatDelta) {
        self.insert_failed += other.insert_failed;
        self.drop += other.drop;
        self.early_drop += other.early_drop;
        self.chaintoolong += other.chaintoolong;
        self.clash_resolve += other.clash_resolve;
        self.search_restart += other.search_restart;
    }
}

impl StatDelta {
    /// Whether any counter rose.
    pub fn any(&self) -> bool {
        *self != StatDelta::default()
    }
}

/// Ground truth of one network namespace (docs/lab-contract.md, "Truth").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsTruth {
    /// `host`, `ctwan` or `ctlab-<container>`.
    pub name: String,
    /// Inode of the namespace (as ctscope would see `net->ns.inum`).
    pub inode: u64,
    /// Entries confirmed during the run: the rise of the count over the insert phase (which
    /// ends before any lowered timeout can have run out) plus the early drops in it.
    pub inserts: u64,
    /// `nf_conntrack_count` right after ctscope was ready.
    #[serde(default)]
    pub count_before: u64,
    /// `nf_conntrack_count` at the end, when it is stable (right before ctscope is stopped).
    pub count_after: u64,
    /// Entries deleted during the run: `inserts - (count_after - count_before)`.
    #[serde(default)]
    pub deletes: u64,
    /// Counter deltas from the first to the last snapshot.
    pub stat_delta: StatDelta,
}

impl NetnsTruth {
    /// Whether conntrack did anything in this namespace during the run.
    pub fn active(&self) -> bool {
        self.inserts > 0 || self.deletes > 0 || self.stat_delta.any()
    }
}

/// Ground truth of one lab container: what its client did, and where it lives.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerTruth {
    pub name: String,
    /// `ctlab-<name>`.
    pub netns: String,
    pub inode: u64,
    /// The container's IPv4 addresses (the source of its flows before NAT).
    pub addresses: Vec<String>,
    pub protocol: String,
    /// Flows its client attempted, and those whose packet never left it (a local error).
    pub flows: u64,
    pub send_errors: u64,
    pub connect_failures: u64,
    /// Whether it has its own conntrack (an nft `ct` rule in its namespace).
    pub firewall: bool,
}

/// How the counts fell back after the clients, in a scenario whose entries expire
/// (`[expiry]`): what the GC of this kernel took. Times are seconds after the clients were done.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SettleTruth {
    /// The shortest timeout the scenario set: no entry could expire sooner after its last packet.
    pub timeout_s: u64,
    /// Total count (all lab namespaces) right after the clients, and the target (the total
    /// before the run).
    pub count_start: u64,
    pub target: u64,
    /// When the first entry was gone, and when the target was reached (null: not within
    /// `wait_max_s`).
    pub first_reap_s: Option<f64>,
    pub settled_s: Option<f64>,
    /// `settled_s - timeout_s`: how long after the last possible expiry the GC reaped the last
    /// entry (an upper bound: the last packet was before the clients were done).
    pub reap_lag_s: Option<f64>,
    /// (seconds, total count) whenever the total changed.
    pub timeline: Vec<(f64, u64)>,
}

/// Ground truth over all namespaces of the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Truth {
    /// Flows the clients attempted (the sum of their `flows`).
    pub flows: u64,
    /// Flows whose packet never left the client (a local send or connect error).
    pub send_errors: u64,
    /// TCP connects that did not complete in time (informational: the SYN may still have made an
    /// entry or been dropped by conntrack; either way it is counted there).
    pub connect_failures: u64,
    pub inserts: u64,
    /// How `inserts` was found: absent for the count rise plus early drops of the insert
    /// phase; `flows sent` in a soak (every flow that left its container, no refusal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inserts_from: Option<String>,
    pub count_after: u64,
    #[serde(default)]
    pub count_before: u64,
    /// Entries deleted during the run, over all namespaces.
    #[serde(default)]
    pub deletes: u64,
    pub stat_delta: StatDelta,
    pub per_netns: Vec<NetnsTruth>,
    #[serde(default)]
    pub containers: Vec<ContainerTruth>,
    /// Present when the scenario has `[expiry]`.
    #[serde(default)]
    pub settle: Option<SettleTruth>,
    /// Conntrack probes right after ctscope was ready: kprobes in
    /// `/sys/kernel/debug/kprobes/list` and fentry/fexit trampolines in tracefs
    /// `enabled_functions` (null when the lists could not be read). Positive: it proves the
    /// lists are readable, so that [`Truth::kprobes_after_exit`] means something.
    #[serde(default)]
    pub kprobes_during: Option<u64>,
    /// The same count once ctscope has exited: 0 when it detached every probe.
    #[serde(default)]
    pub kprobes_after_exit: Option<u64>,
}

/// The one JSON line `loadgen client` prints when its flows are done.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadSummary {
    pub protocol: String,
    pub flows: u64,
    pub send_errors: u64,
    pub connect_failures: u64,
    pub established: u64,
    pub elapsed_s: f64,
    /// Datagrams sent per flow (1 unless kept alive).
    #[serde(default = "one")]
    pub rounds: u64,
    /// Kept-alive flows: the longest time between two datagrams of one flow (0 otherwise).
    #[serde(default)]
    pub max_refresh_gap_s: f64,
    /// When the last round of datagrams started, in seconds after the client started (0 for
    /// one datagram per flow).
    #[serde(default)]
    pub last_round_start_s: f64,
}

fn one() -> u64 {
    1
}

/// A container's client summary, as the agent reports it: the client's own
/// line with the container's name beside it (same flat JSON object).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientSummary {
    pub container: String,
    #[serde(flatten)]
    pub load: LoadSummary,
}

/// The agent's result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentResult {
    pub kernel_release: String,
    pub scenario: String,
    /// `ctscope doctor --json`, run before observe, or null when it failed.
    #[serde(default)]
    pub doctor: Option<serde_json::Value>,
    /// ctscope's observe report (`--json`), or null when there is none.
    pub ctscope: Option<serde_json::Value>,
    /// `ctscope serve` scenarios: `/metrics` (OpenMetrics text) scraped at the end of the run,
    /// before SIGTERM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    pub ctscope_exit: Option<i32>,
    /// Seconds from the agent's SIGINT to ctscope's exit (report written);
    /// null when ctscope had already exited or was killed.
    #[serde(default)]
    pub ctscope_stop_s: Option<f64>,
    pub ctscope_stderr_tail: String,
    /// Null when the run stopped before the workload.
    pub truth: Option<Truth>,
    pub clients: Vec<ClientSummary>,
    /// `cargo xtask bench`: one entry per (round, variant); absent in lab runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bench: Option<Vec<BenchRun>>,
    /// `[tuning]` scenarios: the closed loop after the first (normal) run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuning: Option<TuningResult>,
    /// `[soak]` scenarios: what the agent sampled while ctscope serve ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak: Option<SoakResult>,
    pub errors: Vec<String>,
}

/// How full one of ctscope's eBPF maps was, as the kernel holds it (read by the agent
/// through the bpf syscall, not from ctscope).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapFill {
    /// `hash`, `percpu_hash`, `lru_hash`, `lru_percpu_hash` (keys counted), or `slots` (the
    /// lifetime slots: non-zero slots of every bucket counted).
    pub kind: String,
    pub entries: u64,
    /// The most the map can hold (for `slots`: buckets x slots per bucket).
    pub max_entries: u64,
}

/// One sample of a soak.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SoakSample {
    /// Seconds since the clients started.
    pub t_s: f64,
    /// ctscope's resident memory, `VmRSS` of /proc/PID/status, KiB.
    pub rss_kib: Option<u64>,
    /// How long the scrape of /metrics took, ms; None when it failed.
    pub scrape_ms: Option<f64>,
    /// Its size, bytes.
    pub scrape_bytes: u64,
    /// Why the scrape failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scrape_error: Option<String>,
    /// `ctscope_resident_memory_bytes` and `ctscope_conntrack_entries` of that scrape.
    pub exported_rss_bytes: Option<u64>,
    pub exported_entries: Option<u64>,
    /// The kernel's `nf_conntrack_count`, summed over the lab's namespaces, read right
    /// before the maps.
    pub kernel_count: Option<u64>,
    /// The same sum read right before the scrape: the exported entries were counted
    /// between the two reads.
    #[serde(default)]
    pub kernel_count_before: Option<u64>,
    /// Per namespace: the kernel's count (right after the scrape) and what the scrape's
    /// `ctscope_netns_conntrack_entries` said for that namespace's inode; the series of
    /// namespaces the lab did not make come with `label` = their `name` and no count.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<NetnsSample>,
    /// ctscope's eBPF maps by name (the kernel's, at most 15 bytes).
    pub maps: std::collections::BTreeMap<String, MapFill>,
    /// Why a map could not be read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub map_errors: Vec<String>,
}

/// One namespace in a soak sample.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsSample {
    pub label: String,
    pub inode: u64,
    /// `nf_conntrack_count` read inside it right before and right after the scrape; `None`
    /// for a namespace the lab did not make.
    pub kernel_count_before: Option<u64>,
    pub kernel_count: Option<u64>,
    /// `ctscope_netns_conntrack_entries{netns_inode=inode}`; `None` when not exported.
    pub exported: Option<u64>,
}

/// What the agent sampled during a soak.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SoakResult {
    /// Seconds from the clients' start until the last was done.
    pub churn_s: f64,
    /// Every `[soak] sample_s` during the churn.
    pub samples: Vec<SoakSample>,
    /// Once every entry had died (after `[expiry]`'s wait), right before the last scrape.
    pub end: Option<SoakSample>,
}

impl SoakSample {
    /// The entries of this sample's maps of `kind` (`slots`, `percpu_hash`, ...), the
    /// largest where there are several; `None` without such a map.
    pub fn fill(&self, kind: &str) -> Option<u64> {
        self.maps
            .values()
            .filter(|m| m.kind == kind)
            .map(|m| m.entries)
            .reduce(u64::max)
    }
}

impl SoakResult {
    /// The samples during the churn, then the one after it.
    pub fn all(&self) -> impl Iterator<Item = &SoakSample> {
        self.samples.iter().chain(self.end.as_ref())
    }
}

/// What the tuner's closed loop did, read by the agent itself (not from ctscope).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TuningResult {
    /// `ctscope recommend --json` (null when it failed).
    pub recommendation: Option<serde_json::Value>,
    pub recommend_exit: Option<i32>,
    pub apply_exit: Option<i32>,
    pub apply_output: String,
    /// The kernel's settings (buckets, max and every timeout, by sysctl short name) before
    /// apply, after it, and after rollback.
    pub settings_before: std::collections::BTreeMap<String, u64>,
    pub settings_applied: std::collections::BTreeMap<String, u64>,
    pub settings_rolled_back: std::collections::BTreeMap<String, u64>,
    /// Files `apply --persist` wrote (path, content), read right after apply.
    pub persisted: Vec<(String, String)>,
    /// Of those, the ones still there after rollback.
    pub left_after_rollback: Vec<String>,
    pub rollback_exit: Option<i32>,
    /// The replay: ctscope's report and the kernel's truth.
    pub replay_ctscope: Option<serde_json::Value>,
    pub replay_truth: Option<Truth>,
    pub replay_clients: Vec<ClientSummary>,
}

/// One measured workload of `cargo xtask bench`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BenchRun {
    pub round: u32,
    /// `baseline` and `baseline-aa` (no ctscope: the A/A pair), `default` (ctscope observe),
    /// `cost` (observe --cost: bpf_stats on) or `lookups` (observe --lookups).
    pub variant: String,
    pub flows: u64,
    pub send_errors: u64,
    pub connect_failures: u64,
    /// From the clients' start until the last was done.
    pub elapsed_s: f64,
    /// New connections per second: (flows - send_errors) / elapsed_s.
    pub rate: f64,
    /// Conntrack entries inserted in the host namespace during the workload (count rise).
    pub inserts: u64,
    /// ctscope's report keys `cost`, `lookups`, `inserts` and `duration_s` (null without ctscope).
    pub ctscope: Option<serde_json::Value>,
    /// ctscope's own CPU time (user + system) during the workload alone, from /proc/PID/stat
    /// (its report's `cost` also counts its start: BTF, verification, attaching).
    #[serde(default)]
    pub ctscope_cpu_s: Option<f64>,
    /// The guest's busy time over the connections' whole life: from just before the clients
    /// start until the table has drained back (every entry deleted and freed, ctscope still
    /// attached), in ns: the window's CLOCK_MONOTONIC time minus the CPUs' idle and iowait
    /// time (`/proc/timer_list`, ns). Under the bench's guest clock (icount) a count of guest
    /// instructions. None in results from before 2026-12-04.
    #[serde(default)]
    pub busy_ns: Option<u64>,
    /// The window's length, ns.
    #[serde(default)]
    pub window_ns: Option<u64>,
    /// The guest's busy time over an idle phase right after the window (2 s; ctscope still
    /// attached in its variants, nothing running in the baselines): ctscope's fixed cost per
    /// second, against the baselines'.
    #[serde(default)]
    pub idle_busy_ns: Option<u64>,
    #[serde(default)]
    pub idle_window_ns: Option<u64>,
    /// The guest's busy time over 3 s right after ctscope was ready (right before the window
    /// in the baselines): ctscope's start-up, kept out of the window.
    #[serde(default)]
    pub settle_busy_ns: Option<u64>,
    #[serde(default)]
    pub settle_window_ns: Option<u64>,
}
