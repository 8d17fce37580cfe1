//! The scenario file: what the lab sets up inside the VM and what it expects.
//!
//! ```toml
//! name = "chain-overflow"
//! description = "a small table flooded with UDP"
//! [conntrack]            # applied in the host namespace; omitted keys keep the kernel's defaults
//! hashsize = 1024        # /sys/module/nf_conntrack/parameters/hashsize
//! max = 65536            # net.netfilter.nf_conntrack_max
//! udp_timeout = 600      # any other net.netfilter.nf_conntrack_<key>
//! [[containers]]         # a netns behind the ctlab0 bridge with masquerade NAT (Docker's default)
//! name = "burst"
//! protocol = "udp"       # udp | tcp
//! flows = 20000          # distinct 5-tuples sent to the server in the "wan" namespace
//! concurrency = 8        # tcp only: connects in flight (default 8)
//! connect_timeout_ms = 500 # tcp only: give up on a connect after this long (default 500)
//! close = false          # tcp only: close each connection once established (it then dies by
//!                        # the closing-state timeouts instead of staying ESTABLISHED)
//! keepalive_s = 10       # udp only: keep every flow alive by resending on it ...
//! keepalive_interval_ms = 1000 # ... this often, for this long, then stop (it then expires)
//! firewall = false       # the container runs its own stateful firewall (an nft `ct state`
//!                        # rule), so its flows are tracked in its own namespace too
//! rate = 50              # flows started per second, evenly spaced (default: as fast as it can)
//! [expiry]               # optional: the flows' entries expire during the run; after the
//! wait_max_s = 180       # clients, wait (at most this long) until every namespace's count is
//!                        # back to where it started, so that ctscope sees every death
//! [ctscope]
//! args = ["observe"]     # the agent appends --json, --interval and --ready-file; or
//!                        # ["serve", ...]: the agent appends --listen and --interval and
//!                        # scrapes /metrics at the end instead of reading a report
//! [expect]               # optional, see [`Expect`]
//! chain_too_long_min = 1
//! self_check_fails = false # true: ctscope must catch a deliberate fault (see `checks`)
//! [expect.by_end_min]    # lifetimes.<proto>.by_end.<key>, summed over protocols, at least
//! tcp_closed = 1000
//! [vm]                   # optional: the VM itself (see [`Vm`])
//! memory_mib = 512       # guest RAM (default 2048); the kernel sizes conntrack's defaults by it
//! kernel_args = ["preempt=full"] # appended to the kernel command line
//! [tuning]               # optional: the tuner's closed loop (see [`Tuning`]): observe, then
//! recommend_args = []    # `ctscope recommend` (with these), `ctscope apply --yes`, the table
//! persist = true         # flushed, the same workload again (fresh ports) observed again, then
//!                        # `ctscope rollback`
//! force = true           # `apply --force`; each of forced_warnings must be printed as a warning
//! forced_warnings = ["is a cut to 1/"]
//! [bench]                # only in bench/*.toml: `cargo xtask bench` (see [`Bench`])
//! rounds = 3
//! [soak]                 # only in bench/soak.toml: `cargo xtask soak` (see [`Soak`])
//! sample_s = 10
//! ```

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Most containers a scenario may have: container N gets 172.17.0.(N+1) and a MAC ending in N+1.
pub const MAX_CONTAINERS: usize = 200;
/// Most flows per container: the load generator binds source ports 20000.. and must stay below 65536.
pub const MAX_FLOWS_PER_CONTAINER: u32 = 40_000;
/// Longest container name: the host side of its veth is `ctv-<name>` and interface names hold 15 bytes.
pub const MAX_NAME_LEN: usize = 11;
/// Default TCP connects in flight per container.
pub const DEFAULT_CONCURRENCY: u32 = 8;
/// Default TCP connect timeout. It stays below the kernel's 1 s initial SYN retransmission timeout,
/// so a SYN that conntrack dropped is never sent again (one flow = one conntrack decision).
pub const DEFAULT_CONNECT_TIMEOUT_MS: u32 = 500;
/// Default interval between two datagrams of a kept-alive UDP flow.
pub const DEFAULT_KEEPALIVE_INTERVAL_MS: u32 = 1000;
/// How a lifetime can end (`lifetimes.<proto>.by_end` keys, docs/report-schema.md).
pub const BY_END_KEYS: &[&str] = &[
    "timeout",
    "tcp_closed",
    "early_drop",
    "flush",
    "unconfirmed",
    "other",
];
/// `[conntrack]` keys that are on/off switches, where 0 is a setting.
pub const SWITCH_KEYS: &[&str] = &["tcp_loose", "tcp_be_liberal"];
/// Most samples of a soak (an hour at one every second): the agent stops sampling there.
pub const MAX_SOAK_SAMPLES: usize = 3600;
/// Most bench rounds (each round runs every variant once).
pub const MAX_BENCH_ROUNDS: u32 = 20;
/// Options the agent passes to ctscope itself; a scenario must not set them.
pub const RESERVED_CTSCOPE_ARGS: &[&str] = &["--json", "--interval", "--ready-file", "--listen"];

/// Why a scenario is rejected.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("scenario is not valid TOML for the lab: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("scenario name {0:?} must be non-empty and use only a-z, 0-9 and '-'")]
    BadScenarioName(String),
    #[error("scenario needs 1..={MAX_CONTAINERS} containers, it has {0}")]
    ContainerCount(usize),
    #[error("[tuning] cannot be combined with [bench], [expiry] or self_check_fails")]
    TuningWith,
    #[error(
        "[tuning]: force and forced_warnings go together (a forced apply must say which risks it accepts)"
    )]
    TuningForce,
    #[error(
        "[tuning]: {0} flows, twice (the replay), do not fit in the 45,535 source ports 20000..65535"
    )]
    TuningPorts(u64),
    #[error("[vm] memory_mib must be 256..=16384, not {0}")]
    VmMemory(u32),
    #[error("[vm] kernel_args: {0:?} is empty or holds white space (one argument per string)")]
    KernelArg(String),
    #[error(
        "container name {0:?} must be 1..={MAX_NAME_LEN} characters of a-z, 0-9 and '-', not start with '-', and not be \"wan\""
    )]
    BadContainerName(String),
    #[error("container name {0:?} is used twice")]
    DuplicateContainer(String),
    #[error("container {name:?}: flows must be 1..={MAX_FLOWS_PER_CONTAINER}, got {flows}")]
    Flows { name: String, flows: u32 },
    #[error("container {name:?}: {field} must be at least 1")]
    ZeroTcpOption { name: String, field: &'static str },
    #[error(
        "container {name:?}: connect_timeout_ms {ms} must stay below 1000 (the initial SYN retransmission timeout)"
    )]
    ConnectTimeout { name: String, ms: u32 },
    #[error(
        "[conntrack] key {0:?} must be a short sysctl name of a-z, 0-9 and '_' (e.g. udp_timeout)"
    )]
    BadConntrackKey(String),
    #[error("[conntrack] {key} = {value}: must be positive")]
    BadConntrackValue { key: String, value: u64 },
    #[error(
        "[ctscope] args must start with \"observe\" (or \"serve\", without [tuning], [bench] or self_check_fails), got {0:?}"
    )]
    CtscopeArgs(Vec<String>),
    #[error("[ctscope] args must not contain {0}: the lab agent sets it")]
    ReservedCtscopeArg(String),
    #[error(
        "[expect] {0} cannot hold with self_check_fails = true: a failed walk is never recorded as a chain length"
    )]
    ContradictoryExpect(&'static str),
    #[error("container {name:?}: {field} is for {protocol} containers only")]
    WrongProtocol {
        name: String,
        field: &'static str,
        protocol: Protocol,
    },
    #[error(
        "container {name:?}: keepalive_interval_ms {interval_ms} must be at least 1 and below keepalive_s * 1000 and the udp_timeout"
    )]
    KeepaliveInterval { name: String, interval_ms: u32 },
    #[error("[expiry] needs at least one lowered *timeout* key in [conntrack], or nothing expires")]
    ExpiryWithoutTimeout,
    #[error("[expiry] wait_max_s must be 1..=600, got {0}")]
    ExpiryWait(u32),
    #[error("[expect.by_end_min] key {0:?} is not one of {BY_END_KEYS:?}")]
    ByEndKey(String),
    #[error("[bench] {0}")]
    Bench(String),
    #[error("[soak] {0}")]
    Soak(String),
    #[error("container {name:?}: rate must be at least 1 flow/s and cannot go with keepalive_s")]
    Rate { name: String },
    #[error("cannot encode the scenario as TOML: {0}")]
    Encode(String),
}

/// Transport of a container's flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Udp,
    Tcp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Udp => "udp",
            Protocol::Tcp => "tcp",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One Docker-like container: a network namespace `ctlab-<name>` behind the `ctlab0` bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Container {
    pub name: String,
    pub protocol: Protocol,
    /// Distinct flows (5-tuples) the container's client opens.
    pub flows: u32,
    /// TCP connects in flight (default [`DEFAULT_CONCURRENCY`]).
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// TCP connect timeout in ms (default [`DEFAULT_CONNECT_TIMEOUT_MS`]).
    #[serde(default)]
    pub connect_timeout_ms: Option<u32>,
    /// TCP only: close each connection as soon as it is established (the server closes its
    /// side on EOF), so its entry goes through FIN_WAIT .. TIME_WAIT and dies by timeout.
    #[serde(default, skip_serializing_if = "is_false")]
    pub close: bool,
    /// UDP only: after the first datagram of every flow, keep resending on every flow (same
    /// socket, same tuple) for this many seconds, then stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_s: Option<u32>,
    /// UDP only: the interval between two datagrams of one flow while kept alive (default
    /// [`DEFAULT_KEEPALIVE_INTERVAL_MS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_interval_ms: Option<u32>,
    /// The container runs its own stateful firewall: an nft rule with `ct state` in its
    /// namespace makes conntrack track its flows there too (own entries), besides the host's
    /// NAT entries.
    #[serde(default, skip_serializing_if = "is_false")]
    pub firewall: bool,
    /// Flows started per second, evenly spaced (flow i at i/rate s); absent: as fast as the
    /// client can. A soak's churn: with lowered timeouts, entries die as new ones come.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u32>,
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if passes a reference"
)]
fn is_false(b: &bool) -> bool {
    !*b
}

impl Container {
    pub fn concurrency(&self) -> u32 {
        self.concurrency.unwrap_or(DEFAULT_CONCURRENCY)
    }

    pub fn connect_timeout_ms(&self) -> u32 {
        self.connect_timeout_ms
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS)
    }

    pub fn keepalive_interval_ms(&self) -> u32 {
        self.keepalive_interval_ms
            .unwrap_or(DEFAULT_KEEPALIVE_INTERVAL_MS)
    }

    /// Network namespace of this container.
    pub fn netns(&self) -> String {
        format!("ctlab-{}", self.name)
    }
}

/// How ctscope is started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CtscopeConfig {
    /// Arguments after the binary name; must start with "observe" (or "serve": the agent
    /// scrapes its metrics instead of reading a report).
    pub args: Vec<String>,
}

impl Default for CtscopeConfig {
    fn default() -> Self {
        CtscopeConfig {
            args: vec!["observe".to_string()],
        }
    }
}

/// Scenario-specific expectations, checked on top of the generic lab assertions.
/// Every field is optional; an absent field checks nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// ctscope's `drops.chain_too_long` is at least this (refused inserts, kernels >= 5.15).
    pub chain_too_long_min: Option<u64>,
    /// ctscope's `drops.table_full` is at least this.
    pub table_full_min: Option<u64>,
    /// The sum of ctscope's drops (all reasons) is at most this.
    pub drops_max: Option<u64>,
    /// ctscope's `inserts` is at least this.
    pub inserts_min: Option<u64>,
    /// The longest chain ctscope saw at an insert (`chain_length.orig.max`) is at least this.
    pub chain_max_min: Option<u64>,
    /// ctscope runs with a deliberate fault (e.g. `observe --fault-offset-skew 8`) and its
    /// run-time self-check must catch it: exit code 5, every walk failed, no chain length
    /// recorded. The exactness checks (inserts and drops against the kernel's counters) are
    /// replaced by these, since wrong offsets make no number trustworthy.
    #[serde(default)]
    pub self_check_fails: bool,
    /// Truth: the kernel deleted at least this many entries during the run (proof that a
    /// scenario about expiry really saw entries die).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletes_min: Option<u64>,
    /// Truth: the kernel's `early_drop` column rose by at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_drop_min: Option<u64>,
    /// ctscope: `lifetimes.<proto>.by_end.<key>`, summed over protocols, is at least this.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_end_min: BTreeMap<String, u64>,
    /// The table fills with TCP connections whose abandoned handshakes `early_drop` may evict,
    /// after which their late packets are decisions of their own: flows-accounted then holds
    /// as `inserts <= flows + evicted <= inserts + drops + evicted` instead of an equality.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tcp_reopened: bool,
    /// Tuning: the kernel refused at least this many connections (drop + insert_failed)
    /// before the recommendation was applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drops_before_min: Option<u64>,
    /// Tuning: the replay's measured chain p99 is below the first run's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lower_chain_p99: bool,
    /// Tuning: ctscope's recommendation needs less memory than the seed's and kube-proxy's
    /// formulas.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cheaper_than_formulas: bool,
    /// ctscope: where its probes kept calls in flight (`probes.calls_kept`): `per_cpu` on
    /// kernels that cannot preempt them, `per_task` otherwise (e.g. `preempt=full`);
    /// `by_preemption`: whichever the kernel's preemption model (doctor's) calls for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls_kept: Option<String>,
    /// ctscope attributed refusals to their source: its attribution programs ran
    /// (`attribution.arms >= 1`, or throughout). Under `--attribution auto` that is the proof
    /// that the signs of trouble armed them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attribution_armed: bool,
}

/// `[expiry]`: the scenario's entries die during the run (lowered timeouts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expiry {
    /// After the clients are done, how long to wait at most for every namespace's count to
    /// fall back to where it was before the run (expired and reaped by the kernel's GC).
    pub wait_max_s: u32,
}

/// `[tuning]`: the tuner's closed loop. The workload runs once observed, ctscope recommends
/// from that report and applies it (`--persist` into a scratch /etc when `persist`), the
/// table is flushed, and the same workload runs again on fresh source ports, observed again;
/// at the end `ctscope rollback` must bring every setting back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tuning {
    #[serde(default)]
    pub recommend_args: Vec<String>,
    #[serde(default)]
    pub persist: bool,
    /// `ctscope apply --force`: the scenario applies, on purpose, what apply refuses as risky
    /// without it (e.g. a large cut of max from an observation under an hour). Each of
    /// `forced_warnings` must then be printed as a warning accepted with --force.
    #[serde(default)]
    pub force: bool,
    /// With `force`: text each expected warning holds (at least one; see `force`).
    #[serde(default)]
    pub forced_warnings: Vec<String>,
}

/// Guest RAM when a scenario does not say.
pub const DEFAULT_VM_MEMORY_MIB: u32 = 2048;

/// `[vm]`: how the VM is booted. The kernel sizes conntrack's defaults by its RAM (buckets =
/// RAM / 16384 / 8, at least 1024, 65536 above 1 GiB, 262144 above 4 GiB on 5.15+; max =
/// buckets on 5.15+, 4 x buckets before), so a smaller VM is how a scenario meets the
/// defaults of a small host without setting anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vm {
    #[serde(default = "default_vm_memory")]
    pub memory_mib: u32,
    /// Appended to the kernel command line (e.g. `preempt=full`).
    #[serde(default)]
    pub kernel_args: Vec<String>,
    /// Guest time as a count of guest instructions (TCG `-icount shift=0,sleep=off`, one
    /// vCPU, single-threaded, `-rtc clock=vm`): timings no longer follow the host's load.
    /// For the bench; no effect under KVM.
    #[serde(default)]
    pub deterministic: bool,
}

fn default_vm_memory() -> u32 {
    DEFAULT_VM_MEMORY_MIB
}

impl Default for Vm {
    fn default() -> Self {
        Vm {
            memory_mib: DEFAULT_VM_MEMORY_MIB,
            kernel_args: Vec::new(),
            deterministic: false,
        }
    }
}

/// `[bench]`: what `cargo xtask bench` runs (bench/*.toml). The containers' flows are one
/// round's workload; each round runs it once per variant (without ctscope, ctscope with its
/// default probes, ctscope with `--lookups`), in a rotating order so that drift cancels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bench {
    pub rounds: u32,
    /// After a round, wait (at most this long) until the table is back to its size before the
    /// round, so that every round starts from the same table.
    #[serde(default = "default_bench_settle_s")]
    pub settle_max_s: u32,
}

fn default_bench_settle_s() -> u32 {
    120
}

/// `[soak]`: what `cargo xtask soak` runs (bench/soak.toml). `ctscope serve` stays attached
/// while every container opens its flows at its `rate` (the churn lasts flows / rate seconds)
/// and, with the timeouts lowered, entries die all the time. Every `sample_s` the agent
/// scrapes `/metrics`, reads ctscope's resident memory (`/proc/PID/status`) and the
/// occupancy of ctscope's eBPF maps (read by the agent through the bpf syscall, not from
/// ctscope). After the churn, `[expiry]` waits until every entry is gone, and the counts are
/// judged exactly as in a serve scenario.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Soak {
    /// Seconds between two samples.
    #[serde(default = "default_soak_sample_s")]
    pub sample_s: u32,
    /// Samples before this many seconds of churn are warm-up: not held to `rss_flat_kib`.
    #[serde(default = "default_soak_warmup_s")]
    pub warmup_s: u32,
    /// Largest rise of ctscope's resident memory allowed after the warm-up, in KiB.
    #[serde(default = "default_soak_rss_flat_kib")]
    pub rss_flat_kib: u64,
}

fn default_soak_sample_s() -> u32 {
    10
}

fn default_soak_warmup_s() -> u32 {
    120
}

fn default_soak_rss_flat_kib() -> u64 {
    1024
}

/// A lab scenario (see the module documentation for the file format).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// `hashsize`, `max`, or any `nf_conntrack_<key>` sysctl by its short name.
    #[serde(default)]
    pub conntrack: BTreeMap<String, u64>,
    pub containers: Vec<Container>,
    #[serde(default)]
    pub ctscope: CtscopeConfig,
    #[serde(default)]
    pub expect: Expect,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry: Option<Expiry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bench: Option<Bench>,
    #[serde(default)]
    pub vm: Vm,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuning: Option<Tuning>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak: Option<Soak>,
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
}

impl Scenario {
    /// Parses and validates a scenario from TOML text.
    pub fn from_toml(text: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = toml::from_str(text)?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Reads, parses and validates a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Scenario::from_toml(&text)
    }

    /// Checks everything the agent relies on, so that a bad file fails on the host, not in the VM.
    /// One section at a time, in this order (a file with several errors reports the first).
    pub fn validate(&self) -> Result<(), ScenarioError> {
        self.validate_name_and_vm()?;
        self.validate_tuning()?;
        self.validate_containers()?;
        self.validate_conntrack()?;
        let serve_ok = self.serves()
            && self.tuning.is_none()
            && self.bench.is_none()
            && !self.expect.self_check_fails;
        if self.ctscope.args.first().map(String::as_str) != Some("observe") && !serve_ok {
            return Err(ScenarioError::CtscopeArgs(self.ctscope.args.clone()));
        }
        if self.expect.self_check_fails && self.expect.chain_max_min.is_some() {
            return Err(ScenarioError::ContradictoryExpect("chain_max_min"));
        }
        self.validate_expiry()?;
        if let Some(key) = self
            .expect
            .by_end_min
            .keys()
            .find(|k| !BY_END_KEYS.contains(&k.as_str()))
        {
            return Err(ScenarioError::ByEndKey(key.clone()));
        }
        self.validate_bench()?;
        self.validate_soak()?;
        for arg in &self.ctscope.args {
            if let Some(reserved) = RESERVED_CTSCOPE_ARGS
                .iter()
                .find(|r| arg == *r || arg.starts_with(&format!("{r}=")))
            {
                return Err(ScenarioError::ReservedCtscopeArg(reserved.to_string()));
            }
        }
        Ok(())
    }

    /// The scenario's name, and `[vm]`.
    fn validate_name_and_vm(&self) -> Result<(), ScenarioError> {
        if self.name.is_empty() || !self.name.chars().all(is_name_char) {
            return Err(ScenarioError::BadScenarioName(self.name.clone()));
        }
        if !(256..=16384).contains(&self.vm.memory_mib) {
            return Err(ScenarioError::VmMemory(self.vm.memory_mib));
        }
        if let Some(a) = self
            .vm
            .kernel_args
            .iter()
            .find(|a| a.is_empty() || a.contains(char::is_whitespace))
        {
            return Err(ScenarioError::KernelArg(a.clone()));
        }
        Ok(())
    }

    /// `[tuning]`: alone (no bench, expiry or fault run), force with its warnings, room for
    /// both runs' source ports.
    fn validate_tuning(&self) -> Result<(), ScenarioError> {
        let Some(t) = &self.tuning else {
            return Ok(());
        };
        if self.bench.is_some() || self.expiry.is_some() || self.expect.self_check_fails {
            return Err(ScenarioError::TuningWith);
        }
        if t.force == t.forced_warnings.is_empty() {
            return Err(ScenarioError::TuningForce);
        }
        // Both runs give every container its own source ports (20000..65535).
        if 2 * self.total_flows() > 45_535 {
            return Err(ScenarioError::TuningPorts(self.total_flows()));
        }
        Ok(())
    }

    /// `[[containers]]`: how many, their names, flows and TCP options, then
    /// [`Scenario::validate_behaviour`] for each.
    fn validate_containers(&self) -> Result<(), ScenarioError> {
        if self.containers.is_empty() || self.containers.len() > MAX_CONTAINERS {
            return Err(ScenarioError::ContainerCount(self.containers.len()));
        }
        let mut seen = HashSet::new();
        for c in &self.containers {
            let ok = !c.name.is_empty()
                && c.name.len() <= MAX_NAME_LEN
                && c.name.chars().all(is_name_char)
                && !c.name.starts_with('-')
                && c.name != "wan";
            if !ok {
                return Err(ScenarioError::BadContainerName(c.name.clone()));
            }
            if !seen.insert(c.name.as_str()) {
                return Err(ScenarioError::DuplicateContainer(c.name.clone()));
            }
            if c.flows == 0 || c.flows > MAX_FLOWS_PER_CONTAINER {
                return Err(ScenarioError::Flows {
                    name: c.name.clone(),
                    flows: c.flows,
                });
            }
            if c.concurrency == Some(0) {
                return Err(ScenarioError::ZeroTcpOption {
                    name: c.name.clone(),
                    field: "concurrency",
                });
            }
            match c.connect_timeout_ms {
                Some(0) => {
                    return Err(ScenarioError::ZeroTcpOption {
                        name: c.name.clone(),
                        field: "connect_timeout_ms",
                    });
                }
                Some(ms) if ms >= 1000 => {
                    return Err(ScenarioError::ConnectTimeout {
                        name: c.name.clone(),
                        ms,
                    });
                }
                _ => {}
            }
            self.validate_behaviour(c)?;
        }
        Ok(())
    }

    /// `[conntrack]`: sysctl-like keys, no 0.
    fn validate_conntrack(&self) -> Result<(), ScenarioError> {
        for (key, &value) in &self.conntrack {
            let ok = !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !ok {
                return Err(ScenarioError::BadConntrackKey(key.clone()));
            }
            // 0 would mean "no limit" for max and an instant expiry for timeouts: never what a
            // lab run wants, and hashsize 0 is refused by the kernel anyway. Switches are the
            // exception: `tcp_loose = 0` keeps a stray packet from making a new entry.
            if value == 0 && !SWITCH_KEYS.contains(&key.as_str()) {
                return Err(ScenarioError::BadConntrackValue {
                    key: key.clone(),
                    value,
                });
            }
        }
        Ok(())
    }

    /// `[expiry]`: a lowered timeout to expire by, and a bounded wait.
    fn validate_expiry(&self) -> Result<(), ScenarioError> {
        if let Some(e) = &self.expiry {
            if self.lowered_timeout_s().is_none() {
                return Err(ScenarioError::ExpiryWithoutTimeout);
            }
            if e.wait_max_s == 0 || e.wait_max_s > 600 {
                return Err(ScenarioError::ExpiryWait(e.wait_max_s));
            }
        }
        Ok(())
    }

    /// `[bench]`: rounds in range, no `[expiry]`.
    fn validate_bench(&self) -> Result<(), ScenarioError> {
        if let Some(b) = &self.bench {
            if b.rounds == 0 || b.rounds > MAX_BENCH_ROUNDS {
                return Err(ScenarioError::Bench(format!(
                    "rounds must be 1..={MAX_BENCH_ROUNDS}, got {}",
                    b.rounds
                )));
            }
            if self.expiry.is_some() {
                return Err(ScenarioError::Bench(
                    "cannot be combined with [expiry] (a bench round settles by itself)".into(),
                ));
            }
        }
        Ok(())
    }

    /// `[soak]`: serve, every container paced, `[expiry]` to see every entry die, and the
    /// samples within the churn.
    fn validate_soak(&self) -> Result<(), ScenarioError> {
        let Some(s) = &self.soak else {
            return Ok(());
        };
        let bad = |why: &str| Err(ScenarioError::Soak(why.to_string()));
        if !self.serves() || self.bench.is_some() || self.tuning.is_some() {
            return bad("needs ctscope serve, and cannot go with [bench] or [tuning]");
        }
        if self.expiry.is_none() {
            return bad("needs [expiry]: the counts are judged once every entry has died");
        }
        if self.containers.iter().any(|c| c.rate.is_none()) {
            return bad("every container needs a rate (flows/s): a soak is a steady churn");
        }
        // The truth (one host entry per flow sent) needs each flow in one table, and no
        // stray packet after an entry's death making a new one.
        if self.containers.iter().any(|c| c.firewall) {
            return bad("no container may run its own firewall (one entry per flow, in the host)");
        }
        if self.conntrack.get("tcp_loose") != Some(&0) {
            return bad(
                "needs tcp_loose = 0 in [conntrack] (a late packet of a dead connection must not make a new entry)",
            );
        }
        let churn = self.churn_s().unwrap_or(0.0);
        if s.sample_s == 0 || f64::from(s.sample_s) > churn {
            return bad("sample_s must be at least 1 and within the churn (flows / rate)");
        }
        if f64::from(s.warmup_s) >= churn {
            return bad("warmup_s must end before the churn does (flows / rate)");
        }
        if churn / f64::from(s.sample_s) >= MAX_SOAK_SAMPLES as f64 {
            return bad("more than 3,600 samples: raise sample_s");
        }
        Ok(())
    }

    /// How long the paced containers take to start their flows (the longest flows / rate),
    /// in seconds; `None` when no container is paced.
    pub fn churn_s(&self) -> Option<f64> {
        self.containers
            .iter()
            .filter_map(|c| Some(f64::from(c.flows) / f64::from(c.rate?)))
            .reduce(f64::max)
    }

    /// The flows the paced containers start per second, all together.
    pub fn rate_per_s(&self) -> u64 {
        self.containers
            .iter()
            .filter_map(|c| c.rate.map(u64::from))
            .sum()
    }

    /// The scenario as TOML (e.g. a bench scenario with its rounds changed), validated first.
    pub fn to_toml(&self) -> Result<String, ScenarioError> {
        self.validate()?;
        toml::to_string(self).map_err(|e| ScenarioError::Encode(e.to_string()))
    }

    /// Total flows over all containers.
    pub fn total_flows(&self) -> u64 {
        self.containers.iter().map(|c| u64::from(c.flows)).sum()
    }

    /// The shortest conntrack timeout the scenario sets (any `[conntrack]` key with `timeout`
    /// in its name), in seconds: no entry can expire sooner than this after its last packet.
    /// `None` when the scenario sets none (the lab raises every timeout to an hour).
    pub fn lowered_timeout_s(&self) -> Option<u64> {
        self.conntrack
            .iter()
            .filter(|(k, _)| k.contains("timeout"))
            .map(|(_, &v)| v)
            .min()
    }

    /// Whether ctscope runs as `ctscope serve` (its metrics are checked, not a report).
    pub fn serves(&self) -> bool {
        self.ctscope.args.first().is_some_and(|a| a == "serve")
    }

    /// Whether ctscope runs with `--lookups`.
    pub fn lookups(&self) -> bool {
        self.ctscope.args.iter().any(|a| a == "--lookups")
    }

    /// The value ctscope's args give option `name` (`--name VALUE` or `--name=VALUE`).
    pub fn ctscope_option(&self, name: &str) -> Option<&str> {
        let args = &self.ctscope.args;
        let long = format!("--{name}");
        args.iter().enumerate().find_map(|(i, a)| {
            if *a == long {
                args.get(i + 1).map(String::as_str)
            } else {
                a.strip_prefix(&long)?.strip_prefix('=')
            }
        })
    }

    /// Whether ctscope's report has bpf_stats (`--cost`, or `--lookups`,
    /// which implies it).
    pub fn cost_measured(&self) -> bool {
        self.lookups() || self.ctscope.args.iter().any(|a| a == "--cost")
    }

    /// Per-container options that only make sense for one protocol, and keepalive timing.
    fn validate_behaviour(&self, c: &Container) -> Result<(), ScenarioError> {
        let wrong = |field: &'static str, protocol: Protocol| ScenarioError::WrongProtocol {
            name: c.name.clone(),
            field,
            protocol,
        };
        if c.close && c.protocol != Protocol::Tcp {
            return Err(wrong("close", Protocol::Tcp));
        }
        if c.protocol != Protocol::Udp {
            if c.keepalive_s.is_some() {
                return Err(wrong("keepalive_s", Protocol::Udp));
            }
            if c.keepalive_interval_ms.is_some() {
                return Err(wrong("keepalive_interval_ms", Protocol::Udp));
            }
        }
        if c.rate == Some(0) || (c.rate.is_some() && c.keepalive_s.is_some()) {
            return Err(ScenarioError::Rate {
                name: c.name.clone(),
            });
        }
        if c.keepalive_interval_ms.is_some() && c.keepalive_s.is_none() {
            return Err(wrong(
                "keepalive_interval_ms (without keepalive_s)",
                Protocol::Udp,
            ));
        }
        if let Some(s) = c.keepalive_s {
            let ms = c.keepalive_interval_ms();
            let udp_timeout_ms = self
                .conntrack
                .get("udp_timeout")
                .map_or(u64::MAX, |t| t.saturating_mul(1000));
            // A refresh slower than the timeout would let the entry die and the next datagram
            // create a new one: one flow would be two inserts.
            if ms == 0 || u64::from(ms) >= u64::from(s) * 1000 || u64::from(ms) >= udp_timeout_ms {
                return Err(ScenarioError::KeepaliveInterval {
                    name: c.name.clone(),
                    interval_ms: ms,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
