//! `ctscope doctor`: what this kernel offers ctscope, and why not where not.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    host::kernel::{self, ConntrackPresence, FunctionInfo},
    host::procfs::{self, TableSettings},
    probe::environment::Environment,
    probe::object,
    probe::offsets::{NfConnSource, Offsets},
    probe::probes,
    report::{Mode, or_unknown},
};

#[derive(Debug, Serialize)]
pub struct Capability {
    pub available: bool,
    /// Why not, exactly (the kernel's or aya's own error where one was seen).
    pub reason: Option<String>,
}

impl Capability {
    fn from(r: Result<(), String>) -> Capability {
        match r {
            Ok(()) => Capability {
                available: true,
                reason: None,
            },
            Err(reason) => Capability {
                available: false,
                reason: Some(reason),
            },
        }
    }
}

#[derive(Debug, Serialize)]
pub struct BtfInfo {
    pub vmlinux: bool,
    pub nf_conntrack_module: bool,
    pub nf_conn_source: Option<NfConnSource>,
    pub offsets: Option<Offsets>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SettingsInfo {
    pub count: Option<u64>,
    pub max: Option<u64>,
    pub buckets: Option<u64>,
    pub timeouts: BTreeMap<String, u64>,
    pub slab_object_size: Option<u64>,
    /// The kernel refuses inserts into over-long chains (5.15+: random 50..79
    /// since 6.3 and the stable backports; none before 5.15).
    pub chain_limit: bool,
}

#[derive(Debug, Serialize)]
pub struct Doctor {
    pub kernel_release: String,
    pub conntrack: ConntrackPresence,
    pub root: bool,
    pub netns_inode: Option<u64>,
    pub initial_netns: Option<bool>,
    pub btf: BtfInfo,
    /// The hash table per network namespace (struct netns_ct, from BTF)
    /// rather than global; null when BTF cannot tell.
    pub per_netns_table: Option<bool>,
    pub kprobe: Capability,
    /// Every program `observe` would attach, as the kernel's verifier took
    /// it (empty unless all passed), the lookup programs last where they passed.
    pub programs: Vec<probes::Loaded>,
    /// Whether `observe --lookups` can add its lookup programs.
    pub lookups: Capability,
    pub fentry: Capability,
    pub functions: BTreeMap<String, FunctionInfo>,
    pub settings: SettingsInfo,
    pub ebpf_object_bytes: usize,
    /// The kernel's preemption model: whether probes keep calls in flight
    /// per CPU (none, voluntary) or per task (full, lazy, RT, unknown).
    pub preemption: kernel::Preemption,
    /// What `observe --mode auto` would use.
    pub mode: Mode,
}

pub fn run() -> Doctor {
    let env = Environment::gather();
    let mut programs = Vec::new();
    let kprobe = Capability::from(
        env.kprobe_plan()
            .map_err(|e| e.to_string())
            .and_then(|plan| {
                if !env.root {
                    return Err(
                        "not root: attaching was not tried (run ctscope doctor with sudo)".into(),
                    );
                }
                probes::try_kprobe(&plan)
                    .map(|loaded| programs = loaded)
                    .map_err(|e| probes::chain(&e))
            }),
    );
    // `observe --lookups` adds the lookup programs: verified here too, told
    // apart (observe then goes on without them, not without kprobes).
    let lookups = Capability::from(if !kprobe.available {
        Err("kprobe mode is unavailable".to_string())
    } else if !env.lookups_available() {
        Err(format!(
            "{} is not probe-able here (inlined or absent)",
            kernel::LOOKUP_TARGET
        ))
    } else {
        env.kprobe_plan()
            .map_err(|e| e.to_string())
            .and_then(|plan| {
                probes::try_lookups(&plan)
                    .map(|loaded| programs.extend(loaded))
                    .map_err(|e| probes::chain(&e))
            })
    });
    // fentry mode, what `observe` tries first: every program through the
    // verifier, one attached and detached.
    let mut fentry_programs = Vec::new();
    let fentry = Capability::from(
        env.fentry_plan()
            .map_err(|e| e.to_string())
            .and_then(|plan| {
                if !env.root {
                    return Err(
                        "not root: loading was not tried (run ctscope doctor with sudo)".into(),
                    );
                }
                probes::try_fentry(&plan)
                    .map(|loaded| fentry_programs = loaded)
                    .map_err(|e| probes::chain(&e))
            }),
    );
    if fentry.available {
        // What observe attaches: the tracing programs, and the lookup
        // kprobes (--lookups) last.
        let lookups: Vec<probes::Loaded> = programs
            .drain(..)
            .filter(|l| probes::is_lookup_program(&l.program))
            .collect();
        programs = fentry_programs;
        programs.extend(lookups);
    }
    let t = TableSettings::read();
    let init = kernel::init_netns_inode();
    let ns = kernel::netns_inode();
    Doctor {
        kernel_release: env.release.clone(),
        conntrack: env.presence,
        root: env.root,
        netns_inode: ns,
        initial_netns: init.zip(ns).map(|(a, b)| a == b),
        btf: BtfInfo {
            vmlinux: env.vmlinux_btf,
            nf_conntrack_module: env.module_btf,
            nf_conn_source: env.nf_conn_source(),
            offsets: env.offsets.as_ref().ok().cloned(),
            error: env.offsets.as_ref().err().cloned(),
        },
        mode: if fentry.available {
            Mode::Fentry
        } else if kprobe.available {
            Mode::Kprobe
        } else {
            Mode::Procfs
        },
        per_netns_table: env.per_netns_table,
        kprobe,
        programs,
        lookups,
        fentry,
        functions: env.functions.clone(),
        settings: SettingsInfo {
            count: t.count,
            max: t.max,
            buckets: t.buckets,
            timeouts: procfs::timeouts(),
            slab_object_size: procfs::slab_object_size(),
            chain_limit: env.has_chain_limit(),
        },
        ebpf_object_bytes: object::object_len(),
        preemption: env.preemption.clone(),
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

pub fn render(d: &Doctor) -> String {
    let mut s = String::new();
    let mut line = |k: &str, v: String| s.push_str(&format!("{k:<22} {v}\n"));
    line("kernel", d.kernel_release.clone());
    line("conntrack", format!("{:?}", d.conntrack).to_lowercase());
    line(
        "network namespace",
        match d.initial_netns {
            Some(true) => "initial".into(),
            Some(false) => "NOT the initial one (settings are read-only here)".into(),
            None => "unknown".into(),
        },
    );
    line(
        "BTF",
        format!(
            "vmlinux {}, nf_conntrack module BTF {}, struct nf_conn from {}",
            yes(d.btf.vmlinux),
            yes(d.btf.nf_conntrack_module),
            d.btf
                .nf_conn_source
                .map_or_else(|| "nowhere".into(), |s| format!("{s:?}"))
        ),
    );
    if let Some(o) = &d.btf.offsets {
        line(
            "offsets",
            format!(
                "nf_conn {} bytes, tuplehash +{} ({}-byte entries), status +{}, sk_buff._nfct +{}",
                o.nf_conn_size, o.off_tuplehash, o.tuplehash_size, o.off_status, o.off_skb_nfct
            ),
        );
    }
    if let Some(e) = &d.btf.error {
        line("offsets", format!("unavailable: {e}"));
    }
    line(
        "hash table",
        match d.per_netns_table {
            Some(true) => {
                "one per network namespace (struct netns_ct holds it): lookups walk no chain".into()
            }
            Some(false) => {
                "global (nf_conntrack_hash), shared by every network namespace".to_string()
            }
            None => "unknown (no vmlinux BTF)".into(),
        },
    );
    for (name, c) in [
        ("kprobe", &d.kprobe),
        ("--lookups", &d.lookups),
        ("fentry", &d.fentry),
    ] {
        line(
            name,
            match &c.reason {
                None => "can attach".into(),
                Some(r) => format!("cannot attach: {r}"),
            },
        );
    }
    if let Some(big) = d
        .programs
        .iter()
        .max_by_key(|l| l.verified_instructions.unwrap_or(0))
    {
        let total: f64 = d.programs.iter().map(|l| l.verify_seconds).sum();
        line(
            "programs verified",
            format!(
                "{} in {total:.2} s; the largest, {}, {} instructions processed (the kernel's limit is 1,000,000)",
                d.programs.len(),
                big.program,
                big.verified_instructions
                    .map_or_else(|| "? (kernel < 5.16)".into(), |n| n.to_string())
            ),
        );
    }
    for (f, i) in &d.functions {
        let mut v = if i.present {
            "found".to_string()
        } else {
            "absent".to_string()
        };
        if !i.clones.is_empty() {
            v.push_str(&format!(" (clones: {})", i.clones.join(", ")));
        }
        line(&format!("  {f}"), v);
    }
    let o = or_unknown;
    line(
        "table",
        format!(
            "count {} / max {}, {} buckets, chain limit {}",
            o(d.settings.count),
            o(d.settings.max),
            o(d.settings.buckets),
            if d.settings.chain_limit {
                "yes (5.15+)"
            } else {
                "none"
            }
        ),
    );
    line("slab object size", o(d.settings.slab_object_size));
    let timeouts: Vec<String> = d
        .settings
        .timeouts
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    line("timeouts (s)", timeouts.join(" "));
    line(
        "eBPF object",
        if d.ebpf_object_bytes > 0 {
            format!("{} bytes", d.ebpf_object_bytes)
        } else {
            "MISSING (built without bpf-linker)".into()
        },
    );
    line(
        "preemption",
        format!(
            "{} (from {}): probes keep calls in flight {}",
            d.preemption.model,
            d.preemption.source,
            if d.preemption.preemptible() {
                "per task"
            } else {
                "per CPU"
            }
        ),
    );
    line("observe would use", format!("{} mode", d.mode));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a person reads from `doctor` on a host where fentry is refused
    /// and kprobes work: a change of wording or of a line shows as a diff.
    #[test]
    fn doctor_as_a_person_reads_it() {
        let d = Doctor {
            kernel_release: "6.1.0-50-cloud-amd64".into(),
            conntrack: ConntrackPresence::Module,
            root: true,
            netns_inode: Some(4_026_531_840),
            initial_netns: Some(true),
            btf: BtfInfo {
                vmlinux: true,
                nf_conntrack_module: true,
                nf_conn_source: Some(NfConnSource::ModuleBtf),
                offsets: None,
                error: None,
            },
            per_netns_table: Some(false),
            kprobe: Capability::from(Ok(())),
            programs: vec![probes::Loaded {
                program: "fx_insert".into(),
                kernel_name: "fx_insert".into(),
                kernel_id: 42,
                verified_instructions: Some(1_234),
                verify_seconds: 0.25,
                interrupted: 0,
            }],
            lookups: Capability::from(Err("__nf_conntrack_find_get is inlined".into())),
            fentry: Capability::from(Err("the kernel refused a tracing program: EPERM".into())),
            functions: [
                (
                    "__nf_conntrack_hash_insert".to_string(),
                    FunctionInfo {
                        present: true,
                        clones: Vec::new(),
                    },
                ),
                (
                    "early_drop".to_string(),
                    FunctionInfo {
                        present: false,
                        clones: vec!["early_drop.isra.0".into()],
                    },
                ),
            ]
            .into(),
            settings: SettingsInfo {
                count: Some(12),
                max: Some(65_536),
                buckets: Some(16_384),
                timeouts: [("udp_timeout".to_string(), 30)].into(),
                slab_object_size: Some(320),
                chain_limit: true,
            },
            ebpf_object_bytes: 1_655_152,
            preemption: kernel::Preemption {
                model: "voluntary".into(),
                source: "uname -v".into(),
            },
            mode: Mode::Kprobe,
        };
        insta::assert_snapshot!(render(&d));
    }
}
