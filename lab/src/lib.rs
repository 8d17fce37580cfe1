//! ctscope's VM lab, shared by `xtask` (on the host) and the `lab-agent` (inside the VM).
//!
//! - [`scenario`]: the scenario file (TOML) and its validation.
//! - [`result`]: the agent's result JSON (see `docs/lab-contract.md`).
//! - [`conntrack_stat`]: parsing `/proc/net/stat/nf_conntrack` across kernel versions.
//! - [`checks`]: the lab assertions, applied to a result.
//! - [`framing`]: the markers around the result on the VM's second serial port.

pub mod checks;
pub mod conntrack_stat;
pub mod framing;
pub mod result;
pub mod scenario;

pub use checks::{Check, all_passed, check, json_at};
pub use result::{
    AgentResult, BenchRun, ClientSummary, ContainerTruth, LoadSummary, MapFill, NetnsSample,
    NetnsTruth, SettleTruth, SoakResult, SoakSample, StatDelta, Truth, TuningResult,
};
pub use scenario::{
    Bench, Container, Expect, Expiry, Protocol, Scenario, ScenarioError, Soak, Tuning, Vm,
};

/// ctscope's exit code when its run-time self-check failed (README, "Exit codes"). The run
/// completed and the report was written, flagged, exactly as with exit code 0.
pub const CTSCOPE_EXIT_SELF_CHECK_FAILED: i32 = 5;

/// What one of the report's `notices` says when ctscope's run-time self-check failed.
pub const CTSCOPE_SELF_CHECK_NOTICE: &str = "SELF-CHECK FAILED";

/// Modules the initramfs carries but the agent loads only when a scenario needs them:
/// `nf_conntrack_netlink` for the `[tuning]` loop's table flush (loading it everywhere would add
/// the event extension to every 5.10 entry, where `nf_conntrack_events` defaults to 1).
pub const VM_MODULES_ON_DEMAND: &[&str] = &["nf_conntrack_netlink"];

/// Kernel modules the lab needs inside the VM. xtask copies their dependency closure into the
/// initramfs (names a kernel does not have are skipped) and the agent `modprobe`s each of them.
///
/// `nft_counter` is separate from `nf_tables` on 5.10; `nf_defrag_*` are dependencies that some
/// kernels do not pull in by themselves; `veth`, `bridge` and `dummy` build the Docker-like host.
pub const VM_MODULES: &[&str] = &[
    "nf_conntrack",
    "nf_defrag_ipv4",
    "nf_defrag_ipv6",
    "nf_nat",
    "nf_tables",
    "nft_ct",
    "nft_chain_nat",
    "nft_masq",
    "nft_counter",
    "veth",
    "bridge",
    "dummy",
];
