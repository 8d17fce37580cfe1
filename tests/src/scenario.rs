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
//! [ctscope]
//! args = ["observe"]     # the agent appends --json, --interval and --ready-file
//! [expect]               # optional, see [`Expect`]
//! chain_too_long_min = 1
//! self_check_fails = false # true: ctscope must catch a deliberate fault (see `checks`)
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
/// Options the agent passes to ctscope itself; a scenario must not set them.
pub const RESERVED_CTSCOPE_ARGS: &[&str] = &["--json", "--interval", "--ready-file"];

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
    #[error("[ctscope] args must start with \"observe\", got {0:?}")]
    CtscopeArgs(Vec<String>),
    #[error("[ctscope] args must not contain {0}: the lab agent sets it")]
    ReservedCtscopeArg(String),
    #[error(
        "[expect] {0} cannot hold with self_check_fails = true: a failed walk is never recorded as a chain length"
    )]
    ContradictoryExpect(&'static str),
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
}

impl Container {
    pub fn concurrency(&self) -> u32 {
        self.concurrency.unwrap_or(DEFAULT_CONCURRENCY)
    }

    pub fn connect_timeout_ms(&self) -> u32 {
        self.connect_timeout_ms
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS)
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
    /// Arguments after the binary name; must start with "observe".
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
    pub fn validate(&self) -> Result<(), ScenarioError> {
        if self.name.is_empty() || !self.name.chars().all(is_name_char) {
            return Err(ScenarioError::BadScenarioName(self.name.clone()));
        }
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
        }
        for (key, &value) in &self.conntrack {
            let ok = !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !ok {
                return Err(ScenarioError::BadConntrackKey(key.clone()));
            }
            // 0 would mean "no limit" for max and an instant expiry for timeouts: never what a
            // lab run wants, and hashsize 0 is refused by the kernel anyway.
            if value == 0 {
                return Err(ScenarioError::BadConntrackValue {
                    key: key.clone(),
                    value,
                });
            }
        }
        if self.ctscope.args.first().map(String::as_str) != Some("observe") {
            return Err(ScenarioError::CtscopeArgs(self.ctscope.args.clone()));
        }
        if self.expect.self_check_fails && self.expect.chain_max_min.is_some() {
            return Err(ScenarioError::ContradictoryExpect("chain_max_min"));
        }
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

    /// Total flows over all containers.
    pub fn total_flows(&self) -> u64 {
        self.containers.iter().map(|c| u64::from(c.flows)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        name = "docker-nat"
        description = "three containers"
        [conntrack]
        hashsize = 1024
        max = 65536
        udp_timeout = 600
        [[containers]]
        name = "web"
        protocol = "tcp"
        flows = 3000
        concurrency = 16
        [[containers]]
        name = "dns"
        protocol = "udp"
        flows = 4000
        [ctscope]
        args = ["observe", "--mode", "kprobe"]
        [expect]
        table_full_min = 1
    "#;

    #[test]
    fn parses_a_full_scenario() {
        let s = Scenario::from_toml(GOOD).expect("valid");
        assert_eq!(s.name, "docker-nat");
        assert_eq!(s.conntrack.get("hashsize"), Some(&1024));
        assert_eq!(s.conntrack.get("udp_timeout"), Some(&600));
        assert_eq!(s.containers.len(), 2);
        assert_eq!(s.containers[0].protocol, Protocol::Tcp);
        assert_eq!(s.containers[0].concurrency(), 16);
        assert_eq!(
            s.containers[0].connect_timeout_ms(),
            DEFAULT_CONNECT_TIMEOUT_MS
        );
        assert_eq!(s.containers[1].concurrency(), DEFAULT_CONCURRENCY);
        assert_eq!(s.containers[1].netns(), "ctlab-dns");
        assert_eq!(s.ctscope.args, ["observe", "--mode", "kprobe"]);
        assert_eq!(s.expect.table_full_min, Some(1));
        assert_eq!(s.expect.drops_max, None);
        assert!(!s.expect.self_check_fails);
        assert_eq!(s.total_flows(), 7000);
    }

    #[test]
    fn minimal_scenario_gets_defaults() {
        let s = Scenario::from_toml(
            "name = \"x\"\n[[containers]]\nname = \"a\"\nprotocol = \"udp\"\nflows = 1\n",
        )
        .expect("valid");
        assert!(s.conntrack.is_empty());
        assert_eq!(s.ctscope.args, ["observe"]);
        assert_eq!(s.expect, Expect::default());
    }

    fn with_container(line: &str) -> String {
        format!("name = \"x\"\n[[containers]]\n{line}\n")
    }

    #[test]
    fn rejects_bad_containers() {
        let cases = [
            (
                with_container("name = \"Web\"\nprotocol = \"udp\"\nflows = 1"),
                "BadContainerName",
            ),
            (
                with_container("name = \"abcdefghijkl\"\nprotocol = \"udp\"\nflows = 1"),
                "BadContainerName",
            ),
            (
                with_container("name = \"wan\"\nprotocol = \"udp\"\nflows = 1"),
                "BadContainerName",
            ),
            (
                with_container("name = \"a\"\nprotocol = \"udp\"\nflows = 0"),
                "Flows",
            ),
            (
                with_container("name = \"a\"\nprotocol = \"udp\"\nflows = 40001"),
                "Flows",
            ),
            (
                with_container("name = \"a\"\nprotocol = \"tcp\"\nflows = 1\nconcurrency = 0"),
                "ZeroTcpOption",
            ),
            (
                with_container(
                    "name = \"a\"\nprotocol = \"tcp\"\nflows = 1\nconnect_timeout_ms = 1000",
                ),
                "ConnectTimeout",
            ),
            (
                with_container("name = \"a\"\nprotocol = \"sctp\"\nflows = 1"),
                "Parse",
            ),
            (
                with_container("name = \"a\"\nprotocol = \"udp\"\nflows = 1\nflow = 2"),
                "Parse",
            ),
        ];
        for (text, want) in cases {
            let err = Scenario::from_toml(&text).expect_err(&text);
            let got = format!("{err:?}");
            assert!(got.starts_with(want), "{text}: want {want}, got {got}");
        }
    }

    #[test]
    fn rejects_duplicates_and_counts() {
        let dup = "name = \"x\"\n[[containers]]\nname = \"a\"\nprotocol = \"udp\"\nflows = 1\n\
                   [[containers]]\nname = \"a\"\nprotocol = \"tcp\"\nflows = 1\n";
        assert!(matches!(
            Scenario::from_toml(dup),
            Err(ScenarioError::DuplicateContainer(n)) if n == "a"
        ));
        assert!(matches!(
            Scenario::from_toml("name = \"x\"\ncontainers = []\n"),
            Err(ScenarioError::ContainerCount(0))
        ));
        let mut many = String::from("name = \"x\"\n");
        for i in 0..=MAX_CONTAINERS {
            many.push_str(&format!(
                "[[containers]]\nname = \"c{i}\"\nprotocol = \"udp\"\nflows = 1\n"
            ));
        }
        assert!(matches!(
            Scenario::from_toml(&many),
            Err(ScenarioError::ContainerCount(n)) if n == MAX_CONTAINERS + 1
        ));
    }

    #[test]
    fn rejects_bad_conntrack_and_ctscope_sections() {
        let base = with_container("name = \"a\"\nprotocol = \"udp\"\nflows = 1");
        let bad_key = format!("{base}[conntrack]\n\"udp-timeout\" = 5\n");
        assert!(matches!(
            Scenario::from_toml(&bad_key),
            Err(ScenarioError::BadConntrackKey(_))
        ));
        let zero = format!("{base}[conntrack]\nmax = 0\n");
        assert!(matches!(
            Scenario::from_toml(&zero),
            Err(ScenarioError::BadConntrackValue { .. })
        ));
        let not_observe = format!("{base}[ctscope]\nargs = [\"doctor\"]\n");
        assert!(matches!(
            Scenario::from_toml(&not_observe),
            Err(ScenarioError::CtscopeArgs(_))
        ));
        let reserved = format!("{base}[ctscope]\nargs = [\"observe\", \"--json=/x\"]\n");
        assert!(matches!(
            Scenario::from_toml(&reserved),
            Err(ScenarioError::ReservedCtscopeArg(a)) if a == "--json"
        ));
        let bad_expect = format!("{base}[expect]\nchain_too_long = 1\n");
        assert!(matches!(
            Scenario::from_toml(&bad_expect),
            Err(ScenarioError::Parse(_))
        ));
        let not_bool = format!("{base}[expect]\nself_check_fails = 1\n");
        assert!(matches!(
            Scenario::from_toml(&not_bool),
            Err(ScenarioError::Parse(_))
        ));
        let contradiction = format!("{base}[expect]\nself_check_fails = true\nchain_max_min = 2\n");
        assert!(matches!(
            Scenario::from_toml(&contradiction),
            Err(ScenarioError::ContradictoryExpect("chain_max_min"))
        ));
        let fault = format!("{base}[expect]\nself_check_fails = true\ninserts_min = 2\n");
        let s = Scenario::from_toml(&fault).expect("valid");
        assert!(s.expect.self_check_fails);
    }

    #[test]
    fn shipped_scenarios_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("scenarios/ exists") {
            let path = entry.expect("dir entry").path();
            if path.extension().and_then(|e| e.to_str()) == Some("toml") {
                let s = Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert_eq!(
                    Some(s.name.as_str()),
                    path.file_stem().and_then(|f| f.to_str()),
                    "scenario name matches its file name"
                );
                names.push(s.name);
            }
        }
        names.sort();
        assert_eq!(
            names,
            [
                "chain-overflow",
                "docker-nat",
                "self-check-fault",
                "table-full"
            ]
        );
    }
}
