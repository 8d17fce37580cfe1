//! Where ctscope writes: the sysctls, the persisted files and its state
//! directory, and the names it owns there.

use std::path::PathBuf;

use crate::host::procfs;

/// Where ctscope writes (overridable for tests).
#[derive(Debug, Clone)]
pub struct Paths {
    pub etc: PathBuf,
    pub state: PathBuf,
    pub sysctl_dir: PathBuf,
    pub hashsize_param: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            etc: PathBuf::from("/etc"),
            state: PathBuf::from("/var/lib/ctscope"),
            sysctl_dir: PathBuf::from(procfs::SYSCTL_DIR),
            hashsize_param: PathBuf::from(procfs::HASHSIZE_PARAM),
        }
    }
}

impl Paths {
    pub fn journal(&self) -> PathBuf {
        self.state.join("state.json")
    }
    pub fn last_recommendation(&self) -> PathBuf {
        self.state.join("last-recommendation.json")
    }
    pub(super) fn sysctl_file(&self) -> PathBuf {
        self.etc.join("sysctl.d").join(SYSCTL_FILE)
    }
    pub(super) fn modprobe_file(&self) -> PathBuf {
        self.etc.join("modprobe.d").join(MODULE_FILE)
    }
    pub(super) fn modules_load_file(&self) -> PathBuf {
        self.etc.join("modules-load.d").join(MODULE_FILE)
    }
    /// Every file `--persist` may write: the only files `rollback` restores.
    pub(super) fn own_files(&self) -> [PathBuf; 3] {
        [
            self.sysctl_file(),
            self.modprobe_file(),
            self.modules_load_file(),
        ]
    }
}

/// The names of the files `--persist` writes (in sysctl.d, and in
/// modprobe.d and modules-load.d).
pub(super) const SYSCTL_FILE: &str = "90-ctscope-conntrack.conf";
pub(super) const MODULE_FILE: &str = "ctscope-conntrack.conf";
/// The names ctscope writes in its state directory.
pub(super) const STATE_FILES: &[&str] = &[
    "state.json",
    "last-recommendation.json",
    "state.rolled-back.json",
];
/// Mode of the persisted files: what systemd-sysctl and modprobe expect
/// (root-writable, world-readable).
pub(super) const PERSIST_MODE: u32 = 0o644;
/// Mode of the journal and the kept recommendation.
pub(super) const STATE_MODE: u32 = 0o600;
/// A journal holds a few values and at most three small files.
pub(super) const MAX_JOURNAL: u64 = 4 << 20;
/// A persisted file ctscope replaces is read into the journal: a few lines.
pub(super) const MAX_PERSISTED: u64 = 1 << 20;

/// Whether `k` (without `nf_conntrack_`) can be a conntrack timeout
/// sysctl's name: lowercase, digits and `_` only, so that it can neither
/// leave the sysctl directory nor add anything to a persisted file.
pub(super) fn is_timeout_name(k: &str) -> bool {
    k.contains("timeout")
        && k.len() <= 64
        && k.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// The sysctls ctscope sets (short names): max, buckets, timeouts.
pub(super) fn is_own_sysctl(name: &str) -> bool {
    name == "nf_conntrack_max"
        || name == "nf_conntrack_buckets"
        || name
            .strip_prefix("nf_conntrack_")
            .is_some_and(is_timeout_name)
}
