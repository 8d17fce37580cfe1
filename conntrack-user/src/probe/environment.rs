//! What the running kernel offers, gathered once, and the probe plan derived
//! from it. Shared by `doctor` (which reports it) and `observe` (which uses it).

use std::collections::BTreeMap;

use thiserror::Error;

use crate::{
    host::kernel::{self, ConntrackPresence, FunctionInfo},
    host::procfs::{self, StatTotals},
    probe::object,
    probe::offsets::{KernelBtf, NfConnSource, Offsets},
    probe::probes::{Plan, TRACED_FUNCTIONS, TracingTargets},
};

/// Why kprobe mode cannot work here (before any attach was tried).
#[derive(Debug, Clone, Error)]
pub enum PlanError {
    #[error(
        "the nf_conntrack module is not loaded: no connection is tracked yet (Docker, iptables NAT or an nft `ct` rule load it)"
    )]
    NotLoaded,
    #[error("this kernel has no nf_conntrack (neither built in nor a module)")]
    Absent,
    #[error(
        "the kernel has no kprobe PMU ({} does not exist: CONFIG_KPROBES is off)",
        kernel::KPROBE_PMU_TYPE
    )]
    NoKprobePmu,
    #[error("{0} is not in /proc/kallsyms (inlined on this kernel)")]
    Inlined(String),
    #[error(
        "{func} exists only as compiler clones ({clones}) whose arguments may differ: not probed"
    )]
    OnlyClones { func: String, clones: String },
    #[error(
        "no kernel BTF describes {0} (fentry needs the nf_conntrack module's BTF, Linux 5.11+ with CONFIG_DEBUG_INFO_BTF_MODULES, or conntrack built into a kernel with BTF)"
    )]
    NoFunctionBtf(String),
    #[error("{0}")]
    NoObject(String),
    #[error("{0}")]
    Offsets(String),
}

pub struct Environment {
    pub release: String,
    pub presence: ConntrackPresence,
    pub functions: BTreeMap<String, FunctionInfo>,
    pub vmlinux_btf: bool,
    pub module_btf: bool,
    pub offsets: Result<Offsets, String>,
    /// The conntrack hash table lives in `struct net` (`struct netns_ct` has
    /// a `hash` or `htable_size` member, as in the per-netns conntrack work
    /// posted upstream) rather than in the globals `nf_conntrack_hash` and
    /// `nf_conntrack_htable_size` (every release up to 7.3.4); `None`: no
    /// BTF to tell.
    pub per_netns_table: Option<bool>,
    pub stat: Option<StatTotals>,
    pub kprobe_pmu: bool,
    pub root: bool,
    pub preemption: kernel::Preemption,
    /// The BTF ids of conntrack's functions, where fentry programs attach
    /// (None: no BTF describes them, as on 5.10 with conntrack a module).
    pub tracing: Option<TracingTargets>,
}

impl Environment {
    pub fn gather() -> Environment {
        let names = kernel::PROBE_TARGETS
            .iter()
            .map(|(n, _)| *n)
            .chain(kernel::OTHER_FUNCTIONS.iter().copied());
        // Offsets first, so the parsed BTF (several MiB) is dropped before
        // kallsyms (several MiB more) is read: the two never add up in the peak.
        let (module_btf, offsets, per_netns_table, tracing) = match KernelBtf::load() {
            Ok(btf) => (
                btf.module.is_some(),
                btf.offsets().map_err(|e| e.to_string()),
                per_netns_table(&btf.vmlinux),
                tracing_targets(&btf),
            ),
            Err(e) => (false, Err(e.to_string()), None, None),
        };
        Environment {
            release: kernel::release(),
            presence: kernel::conntrack_presence(),
            functions: kernel::find_functions(names),
            vmlinux_btf: std::path::Path::new(crate::probe::offsets::VMLINUX_BTF).exists(),
            module_btf,
            offsets,
            per_netns_table,
            stat: StatTotals::read_current().ok(),
            kprobe_pmu: std::path::Path::new(kernel::KPROBE_PMU_TYPE).exists(),
            root: kernel::is_root(),
            preemption: kernel::preemption(),
            tracing,
        }
    }

    fn present(&self, f: &str) -> bool {
        self.functions.get(f).is_some_and(|i| i.present)
    }

    /// Kernels with a chain limit (5.15+) show the `chainlength` stat column.
    pub fn has_chain_limit(&self) -> bool {
        self.stat
            .as_ref()
            .is_some_and(super::super::host::procfs::StatTotals::has_chain_limit_column)
    }

    /// Everything kprobe mode needs, or the first reason it cannot work here
    /// (before trying to attach: attaching is the final test).
    pub fn kprobe_plan(&self) -> Result<Plan, PlanError> {
        match self.presence {
            ConntrackPresence::BuiltIn | ConntrackPresence::Module => {}
            ConntrackPresence::ModuleNotLoaded => return Err(PlanError::NotLoaded),
            ConntrackPresence::Absent => return Err(PlanError::Absent),
        }
        if !self.kprobe_pmu {
            return Err(PlanError::NoKprobePmu);
        }
        for (f, required) in kernel::PROBE_TARGETS {
            if *required && !self.present(f) {
                let clones = self
                    .functions
                    .get(*f)
                    .map(|i| i.clones.join(", "))
                    .unwrap_or_default();
                return Err(if clones.is_empty() {
                    PlanError::Inlined(f.to_string())
                } else {
                    PlanError::OnlyClones {
                        func: f.to_string(),
                        clones,
                    }
                });
            }
        }
        self.load_plan()
    }

    /// Everything fentry mode needs, or the first reason it cannot work here
    /// (before trying: the kernel may still refuse tracing programs, which
    /// only loading them tells).
    pub fn fentry_plan(&self) -> Result<Plan, PlanError> {
        match self.presence {
            ConntrackPresence::BuiltIn | ConntrackPresence::Module => {}
            ConntrackPresence::ModuleNotLoaded => return Err(PlanError::NotLoaded),
            ConntrackPresence::Absent => return Err(PlanError::Absent),
        }
        let tracing = self
            .tracing
            .as_ref()
            .ok_or_else(|| PlanError::NoFunctionBtf("conntrack's functions".into()))?;
        let has = |f: &str| self.present(f) && tracing.ids.contains_key(f);
        for (f, required) in kernel::PROBE_TARGETS {
            if *required && !has(f) {
                return Err(if self.present(f) {
                    PlanError::NoFunctionBtf(f.to_string())
                } else {
                    PlanError::Inlined(f.to_string())
                });
            }
        }
        let mut plan = self.load_plan()?;
        plan.clash &= has("nf_ct_resolve_clash");
        plan.early_drop &= has("early_drop");
        plan.lifetimes &= has("nf_ct_delete") && has("nf_conntrack_free");
        plan.fentry = Some(tracing.clone());
        Ok(plan)
    }

    /// What loading the programs needs (no attachment): the object, the
    /// offsets and the kernel's features.
    pub fn load_plan(&self) -> Result<Plan, PlanError> {
        object::object().map_err(|e| PlanError::NoObject(e.to_string()))?;
        let offsets = self.offsets.clone().map_err(PlanError::Offsets)?;
        // With a table per namespace the globals, if any are left, are not
        // the table: the lookup walk then goes without chain lengths rather
        // than walking something else.
        let symbols = if self.per_netns_table == Some(true) {
            BTreeMap::new()
        } else {
            kernel::data_symbols(&["nf_conntrack_hash", "nf_conntrack_htable_size"])
        };
        Ok(Plan {
            offsets,
            has_chain_limit: self.has_chain_limit(),
            clash: self.present("nf_ct_resolve_clash"),
            early_drop: self.present("early_drop"),
            lifetimes: self.present("nf_ct_delete") && self.present("nf_conntrack_free"),
            lookups: false,
            ct_hash_addr: symbols.get("nf_conntrack_hash").copied().unwrap_or(0),
            htable_size_addr: symbols
                .get("nf_conntrack_htable_size")
                .copied()
                .unwrap_or(0),
            life_buckets: life_buckets(procfs::sysctl("nf_conntrack_max").ok()),
            per_cpu_calls: !self.preemption.preemptible(),
            stats: false,
            fentry: None,
            attribution: crate::probe::probes::Attribution::Auto,
        })
    }

    /// Whether the opt-in lookup probe's target can be probed.
    pub fn lookups_available(&self) -> bool {
        self.present(kernel::LOOKUP_TARGET)
    }

    pub fn nf_conn_source(&self) -> Option<NfConnSource> {
        self.offsets.as_ref().ok().map(|o| o.source)
    }
}

/// Where fentry programs would attach: the BTF that describes conntrack's
/// functions (the module's where it is a module, else vmlinux's) and their
/// ids in it; None when it describes none of the required ones.
fn tracing_targets(btf: &KernelBtf) -> Option<TracingTargets> {
    let (object, b) = match &btf.module {
        Some(m) => ("nf_conntrack", m),
        None => ("vmlinux", &*btf.vmlinux),
    };
    let ids: BTreeMap<String, u32> = TRACED_FUNCTIONS
        .iter()
        .filter_map(|f| Some((f.to_string(), b.own_func_id(f)?)))
        .collect();
    (!ids.is_empty()).then(|| TracingTargets {
        object: object.to_string(),
        ids,
    })
}

/// Whether `struct netns_ct` (vmlinux BTF) holds the hash table; see
/// [`Environment::per_netns_table`]. The entry-side chain walk does not care:
/// it starts from the entry's own node and ends at its bucket's nulls marker.
fn per_netns_table(btf: &crate::host::btf::Btf) -> Option<bool> {
    if !btf.has_struct("netns_ct") {
        return None;
    }
    Some(
        ["hash", "htable_size"]
            .iter()
            .any(|m| btf.member("netns_ct", m).is_ok()),
    )
}

/// Buckets of `LIFE_SLOTS` (8 slots of 8 bytes each, conntrack-common
/// `life`): four slots per entry `nf_conntrack_max` allows, so that a full
/// table fills at most a quarter of them and a bucket is out of free slots
/// for about one entry in 900 (Poisson, mean 2 per bucket of 8; one in
/// 100,000 at half full); a power of
/// two; at least 8,192 buckets (512 KiB), at most 1 Mi (64 MiB: max 2 Mi).
/// An array, preallocated: its memory is the same full or empty.
pub fn life_buckets(max: Option<u64>) -> u32 {
    let slots = max.unwrap_or(0).saturating_mul(4);
    let buckets = (slots / conntrack_common::life::BUCKET_SLOTS as u64).max(1);
    buckets.next_power_of_two().clamp(8_192, 1 << 20) as u32
}
