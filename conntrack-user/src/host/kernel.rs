//! Facts about the running kernel: release, how conntrack is present, which
//! probe targets exist as symbols, and whether the kprobe PMU exists.

use std::{collections::BTreeMap, fs, path::Path};

use serde::Serialize;

/// Functions ctscope probes (kprobe/kretprobe), with whether each is required.
/// Sources: net/netfilter/nf_conntrack_core.c v5.10, v6.1, v6.12.
pub const PROBE_TARGETS: &[(&str, bool)] = &[
    ("__nf_conntrack_hash_insert", true),
    ("__nf_conntrack_confirm", true),
    ("__nf_conntrack_alloc", true),
    ("early_drop", false),
    ("nf_ct_resolve_clash", false),
    ("nf_ct_delete", false),
    ("nf_conntrack_free", false),
];

/// The opt-in lookup probe's target (`--lookups`).
pub const LOOKUP_TARGET: &str = "__nf_conntrack_find_get";

/// Further functions `doctor` reports on (later probes and the resize path).
pub const OTHER_FUNCTIONS: &[&str] = &[
    LOOKUP_TARGET,
    "nf_ct_destroy",
    "destroy_conntrack",
    "nf_conntrack_hash_resize",
    "nf_conntrack_hash_check_insert",
];

pub const KPROBE_PMU_TYPE: &str = "/sys/bus/event_source/devices/kprobe/type";

pub fn release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_string(), |s| s.trim().to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConntrackPresence {
    BuiltIn,
    Module,
    /// A module exists for this kernel but is not loaded: nothing to observe
    /// until something (Docker, iptables NAT, nft `ct`) loads it.
    ModuleNotLoaded,
    Absent,
}

pub fn conntrack_presence() -> ConntrackPresence {
    let sys = Path::new("/sys/module/nf_conntrack");
    if sys.exists() {
        // Loadable modules have `initstate`; built-in ones only `parameters`.
        return if sys.join("initstate").exists() {
            ConntrackPresence::Module
        } else {
            ConntrackPresence::BuiltIn
        };
    }
    let dep = format!("/lib/modules/{}/modules.dep", release());
    match fs::read_to_string(dep) {
        Ok(text) if text.contains("/nf_conntrack.ko") => ConntrackPresence::ModuleNotLoaded,
        _ => ConntrackPresence::Absent,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FunctionInfo {
    /// The exact symbol is in /proc/kallsyms (out of line: probe-able).
    pub present: bool,
    /// Compiler clones (`.isra.0`, `.constprop.0`, ...): their arguments may
    /// differ from the source, so ctscope never probes them.
    pub clones: Vec<String>,
}

/// Looks the given functions up in `/proc/kallsyms`.
pub fn find_functions<'a>(
    names: impl IntoIterator<Item = &'a str>,
) -> BTreeMap<String, FunctionInfo> {
    let mut out: BTreeMap<String, FunctionInfo> = names
        .into_iter()
        .map(|n| {
            (
                n.to_string(),
                FunctionInfo {
                    present: false,
                    clones: Vec::new(),
                },
            )
        })
        .collect();
    for line in kallsyms_lines() {
        let mut f = line.split_whitespace();
        let (Some(_addr), Some(kind), Some(sym)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if !matches!(kind, "t" | "T") {
            continue;
        }
        if let Some(info) = out.get_mut(sym) {
            info.present = true;
        } else if let Some((base, suffix)) = sym.split_once('.')
            // `.cold` is the unlikely half of the same function, not a clone.
            && suffix != "cold"
            && let Some(info) = out.get_mut(base)
            && !info.clones.iter().any(|c| c == sym)
        {
            info.clones.push(sym.to_string());
        }
    }
    out
}

/// Addresses of data symbols in `/proc/kallsyms` (kernels built with
/// `CONFIG_KALLSYMS_ALL`, as Debian's are; root sees real addresses). Absent
/// names, and zero addresses (`kptr_restrict`), are left out.
pub fn data_symbols(names: &[&str]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in kallsyms_lines() {
        let mut f = line.split_whitespace();
        let (Some(addr), Some(kind), Some(sym)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if !matches!(kind, "d" | "D" | "b" | "B") || !names.contains(&sym) {
            continue;
        }
        if let Ok(a) = u64::from_str_radix(addr, 16)
            && a != 0
        {
            out.insert(sym.to_string(), a);
        }
    }
    out
}

/// `/proc/kallsyms` line by line: the file is several MiB, and reading it
/// whole would set ctscope's peak memory.
fn kallsyms_lines() -> impl Iterator<Item = String> {
    use std::io::BufRead as _;
    fs::File::open("/proc/kallsyms")
        .ok()
        .map(std::io::BufReader::new)
        .into_iter()
        .flat_map(|r| r.lines().map_while(Result::ok))
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Inode of the network namespace ctscope runs in.
pub fn netns_inode() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self/ns/net").ok().map(|m| m.ino())
}

/// Inode of the initial network namespace. Kernel threads always live there,
/// and kthreadd (PID 2) is readable where PID 1 may not be (containers,
/// sandboxes with ptrace restrictions); PID 1 is the fallback.
pub fn init_netns_inode() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let kthreadd = fs::read_to_string("/proc/2/comm").is_ok_and(|c| c.trim() == "kthreadd");
    let pids: &[&str] = if kthreadd { &["2", "1"] } else { &["1"] };
    pids.iter()
        .find_map(|p| fs::metadata(format!("/proc/{p}/ns/net")).ok())
        .map(|m| m.ino())
}

/// The kernel's preemption model, and where ctscope read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Preemption {
    /// `none`, `voluntary`, `full`, `lazy`, `rt`, or `unknown`.
    pub model: String,
    /// The file or field the model was read from.
    pub source: String,
}

impl Preemption {
    /// Whether a task can be preempted, and resumed on another CPU, inside a
    /// conntrack call that does not sleep. Unknown counts as yes.
    pub fn preemptible(&self) -> bool {
        !matches!(self.model.as_str(), "none" | "voluntary")
    }
}

/// Reads the preemption model: RT kernels say so in /sys/kernel/realtime and
/// `uname -v`; PREEMPT_DYNAMIC kernels (5.12+) name the current mode in
/// parentheses in debugfs `sched/preempt`, or take it from `preempt=` on the
/// command line; other kernels carry `PREEMPT` in `uname -v` only when built
/// fully preemptible (init/Makefile, `UTS_VERSION`; v5.10..v6.18).
pub fn preemption() -> Preemption {
    let version = fs::read_to_string("/proc/sys/kernel/version").unwrap_or_default();
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let debugfs = fs::read_to_string("/sys/kernel/debug/sched/preempt").ok();
    let realtime = fs::read_to_string("/sys/kernel/realtime").ok();
    preemption_from(&version, &cmdline, debugfs.as_deref(), realtime.as_deref())
}

fn preemption_from(
    version: &str,
    cmdline: &str,
    debugfs: Option<&str>,
    realtime: Option<&str>,
) -> Preemption {
    let found = |model: &str, source: &str| Preemption {
        model: model.to_string(),
        source: source.to_string(),
    };
    let words: Vec<&str> = version.split_whitespace().collect();
    if realtime.is_some_and(|r| r.trim() == "1") || words.contains(&"PREEMPT_RT") {
        return found("rt", "/sys/kernel/realtime, kernel.version");
    }
    if words.contains(&"PREEMPT_DYNAMIC") {
        let current = debugfs.and_then(|t| {
            let open = t.find('(')?;
            let close = t[open..].find(')')? + open;
            Some(t[open + 1..close].trim().to_string())
        });
        if let Some(m) = current.filter(|m| !m.is_empty()) {
            return found(&m, "/sys/kernel/debug/sched/preempt");
        }
        if let Some(m) = cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix("preempt="))
        {
            return found(m, "/proc/cmdline preempt=");
        }
        // The build's default mode is not visible without debugfs.
        return found(
            "unknown",
            "kernel.version says PREEMPT_DYNAMIC; debugfs not mounted",
        );
    }
    if words.contains(&"PREEMPT") {
        return found("full", "kernel.version");
    }
    if words.contains(&"SMP") || !words.is_empty() {
        // Built without PREEMPT: none or voluntary; both keep a task on its
        // CPU inside a call that does not sleep.
        return found("voluntary", "kernel.version (no PREEMPT)");
    }
    found("unknown", "kernel.version unreadable")
}

#[cfg(test)]
mod preemption_tests {
    use super::*;

    #[test]
    fn models_from_what_the_kernel_says() {
        let m = |v, c, d, r| preemption_from(v, c, d, r).model;
        // Debian 6.1/6.12 (seen in the VM lab) and 5.10.
        let dynamic = "#1 SMP PREEMPT_DYNAMIC Debian 6.1.176-1 (2026-07-02)";
        assert_eq!(
            m(dynamic, "", Some("none (voluntary) full \n"), None),
            "voluntary"
        );
        assert_eq!(
            m(dynamic, "", Some("none voluntary (full) \n"), None),
            "full"
        );
        assert_eq!(m(dynamic, "quiet preempt=full", None, None), "full");
        assert_eq!(m(dynamic, "quiet", None, None), "unknown");
        assert_eq!(
            m("#1 SMP Debian 5.10.223-1 (2024-08-10)", "", None, None),
            "voluntary"
        );
        assert_eq!(m("#1 SMP PREEMPT Fri Jan 1", "", None, None), "full");
        assert_eq!(m("#1 SMP PREEMPT_RT Fri Jan 1", "", None, None), "rt");
        assert_eq!(m("#1 SMP", "", None, Some("1\n")), "rt");
        assert_eq!(m("", "", None, None), "unknown");
        assert!(!preemption_from(dynamic, "", Some("none (voluntary) full"), None).preemptible());
        assert!(preemption_from(dynamic, "", None, None).preemptible());
    }
}
