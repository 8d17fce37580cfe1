//! Applying `[conntrack]` and raising the conntrack timeouts, so that nothing expires during a
//! run (then the rise of nf_conntrack_count plus early_drop is the exact number of inserts).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ctscope_lab::Scenario;

use crate::netns::Netns;

/// Every timeout is raised to at least this many seconds (an hour: far longer than any run).
pub(crate) const MIN_TIMEOUT_S: u64 = 3600;
const SYSCTL_DIR: &str = "/proc/sys/net/netfilter";
const HASHSIZE: &str = "/sys/module/nf_conntrack/parameters/hashsize";

/// Where a `[conntrack]` key is written.
pub(crate) fn key_path(key: &str) -> PathBuf {
    match key {
        "hashsize" => PathBuf::from(HASHSIZE),
        other => Path::new(SYSCTL_DIR).join(format!("nf_conntrack_{other}")),
    }
}

fn read_u64(path: &Path) -> Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("{} holds {:?}, not an integer", path.display(), text.trim()))
}

fn write_u64(path: &Path, value: u64) -> Result<()> {
    std::fs::write(path, format!("{value}\n"))
        .with_context(|| format!("write {value} to {}", path.display()))
}

/// Writes every `[conntrack]` key in the host namespace (hashsize first: it is the table the
/// other settings are about), reads each back, and returns one message per failure.
pub(crate) fn apply_host(scenario: &Scenario) -> Vec<String> {
    let mut keys: Vec<(&String, &u64)> = scenario.conntrack.iter().collect();
    keys.sort_by_key(|(k, _)| (k.as_str() != "hashsize", k.as_str() != "max"));
    let mut failures = Vec::new();
    for (key, &value) in keys {
        let path = key_path(key);
        if !path.exists() {
            failures.push(format!(
                "[conntrack] {key}: {} does not exist on this kernel",
                path.display()
            ));
            continue;
        }
        let outcome = write_u64(&path, value).and_then(|()| {
            let now = read_u64(&path)?;
            if now != value {
                bail!("{} reads {now} after writing {value}", path.display());
            }
            Ok(())
        });
        match outcome {
            Ok(()) => println!("lab: conntrack {key} = {value}"),
            Err(e) => failures.push(format!("[conntrack] {key} = {value}: {e:#}")),
        }
    }
    failures
}

/// In `ns` (a namespace the lab created: conntrack timeouts are per namespace, and a new one
/// starts from the kernel's defaults), writes every `*timeout*` key of `[conntrack]`.
pub(crate) fn apply_timeouts(ns: &Netns, scenario: &Scenario) -> Result<usize> {
    let keys: Vec<(String, u64)> = scenario
        .conntrack
        .iter()
        .filter(|(k, _)| k.contains("timeout"))
        .map(|(k, &v)| (k.clone(), v))
        .collect();
    ns.run(move || {
        for (key, value) in &keys {
            write_u64(&key_path(key), *value)?;
        }
        Ok(keys.len())
    })
}

/// In `ns`, raises every `nf_conntrack_*timeout*` sysctl that holds one integer below
/// [`MIN_TIMEOUT_S`] to it, except the ones in `keep` (short names the scenario sets).
/// Returns how many were raised.
pub(crate) fn raise_timeouts(ns: &Netns, keep: &BTreeSet<String>) -> Result<usize> {
    let keep = keep.clone();
    ns.run(move || {
        let mut raised = 0;
        let mut failures = Vec::new();
        let entries =
            std::fs::read_dir(SYSCTL_DIR).with_context(|| format!("list {SYSCTL_DIR}"))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("list {SYSCTL_DIR}"))?;
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(short) = file.strip_prefix("nf_conntrack_") else {
                continue;
            };
            if !short.contains("timeout") || keep.contains(short) {
                continue;
            }
            let path = entry.path();
            // Read-only in this namespace (or a multi-value file): nothing to raise.
            let writable = entry.metadata().map(|m| m.permissions().readonly()).ok() == Some(false);
            let Ok(current) = read_u64(&path) else {
                continue;
            };
            if current >= MIN_TIMEOUT_S || !writable {
                continue;
            }
            match write_u64(&path, MIN_TIMEOUT_S) {
                Ok(()) => raised += 1,
                Err(e) => failures.push(format!("{e:#}")),
            }
        }
        if !failures.is_empty() {
            bail!("raising timeouts: {}", failures.join("; "));
        }
        Ok(raised)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths() {
        assert_eq!(key_path("hashsize"), PathBuf::from(HASHSIZE));
        assert_eq!(
            key_path("max"),
            PathBuf::from("/proc/sys/net/netfilter/nf_conntrack_max")
        );
        assert_eq!(
            key_path("udp_timeout"),
            PathBuf::from("/proc/sys/net/netfilter/nf_conntrack_udp_timeout")
        );
    }
}
