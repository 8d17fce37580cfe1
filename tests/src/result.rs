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

/// Ground truth of one network namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsTruth {
    /// `host`, `ctlab-wan` or `ctlab-<container>`.
    pub name: String,
    /// Inode of the namespace (as ctscope would see `net->ns.inum`).
    pub inode: u64,
    /// `count_after - count_before + stat_delta.early_drop`.
    pub inserts: u64,
    pub count_after: u64,
    pub stat_delta: StatDelta,
}

/// Ground truth over all namespaces of the run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Truth {
    /// Flows the clients attempted (the sum of their `flows`).
    pub flows: u64,
    /// Flows whose packet never left the client (a local send or connect error).
    pub send_errors: u64,
    /// TCP connects that did not complete in time (informational: the SYN may still have made an
    /// entry or been dropped by conntrack; either way it is counted there).
    pub connect_failures: u64,
    pub inserts: u64,
    pub count_after: u64,
    pub stat_delta: StatDelta,
    pub per_netns: Vec<NetnsTruth>,
    /// Conntrack kprobes in `/sys/kernel/debug/kprobes/list` right after ctscope was ready
    /// (null when the list could not be read). Positive in kprobe mode: it proves the list is
    /// readable, so that [`Truth::kprobes_after_exit`] means something.
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
    pub ctscope_exit: Option<i32>,
    pub ctscope_stderr_tail: String,
    /// Null when the run stopped before the workload.
    pub truth: Option<Truth>,
    pub clients: Vec<ClientSummary>,
    pub errors: Vec<String>,
}
