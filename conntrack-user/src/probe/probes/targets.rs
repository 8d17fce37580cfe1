//! Which program goes on which kernel function, for each mode and each
//! part of a plan (required, insert, clash, early drop, lifetimes, lookups).

use super::{Attribution, Fentry, Fexit, Hook, Kp, Kret, Plan, ProbeError, prog};

/// How a program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Kprobe,
    Kretprobe,
    Fentry,
    Fexit,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Kprobe => "kprobe",
            Kind::Kretprobe => "kretprobe",
            Kind::Fentry => "fentry",
            Kind::Fexit => "fexit",
        }
    }

    pub(super) fn hook(self) -> Option<Hook> {
        match self {
            Kind::Fentry => Some(Hook::Entry),
            Kind::Fexit => Some(Hook::Exit),
            Kind::Kprobe | Kind::Kretprobe => None,
        }
    }
}

/// One program and where it attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub prog: &'static str,
    pub kind: Kind,
    pub func: &'static str,
}

pub(super) const fn t(prog: &'static str, kind: Kind, func: &'static str) -> Target {
    Target { prog, kind, func }
}

/// Every group in both modes: (kprobe mode, fentry mode), return probes
/// first within each (see the module comment).
pub(super) const REQUIRED: (&[Target], &[Target]) = (
    &[
        t(prog::CONFIRM_RET, Kret, "__nf_conntrack_confirm"),
        t(prog::ALLOC_RET, Kret, "__nf_conntrack_alloc"),
        t(prog::CONFIRM, Kp, "__nf_conntrack_confirm"),
        t(prog::ALLOC, Kp, "__nf_conntrack_alloc"),
    ],
    // An fexit program sees the call's arguments and its result.
    &[
        t(prog::FX_CONFIRM, Fexit, "__nf_conntrack_confirm"),
        t(prog::FX_ALLOC, Fexit, "__nf_conntrack_alloc"),
    ],
);

/// Inserts where the table's address is known (`nf_conntrack_hash` in
/// kallsyms): one kprobe walks both buckets from their heads
/// (conntrack-ebpf/src/insert.rs). In fentry mode the exit walks from the
/// entry's own nodes with direct loads, no helper call: cheaper than the
/// entry's three reads of the table.
pub(super) const INSERT_AT_ENTRY: (&[Target], &[Target]) = (
    &[t(prog::INSERT, Kp, "__nf_conntrack_hash_insert")],
    &[t(prog::FX_INSERT, Fexit, "__nf_conntrack_hash_insert")],
);

/// Inserts otherwise: the return walks from the entry's own nodes.
pub(super) const INSERT_AT_RETURN: (&[Target], &[Target]) = (
    &[
        t(prog::HASH_INSERT_RET, Kret, "__nf_conntrack_hash_insert"),
        t(prog::HASH_INSERT, Kp, "__nf_conntrack_hash_insert"),
    ],
    &[t(prog::FX_INSERT, Fexit, "__nf_conntrack_hash_insert")],
);

/// The programs that count inserts (and walk their chains): a run of one of
/// them the kernel skipped (`recursion_misses`) is an insert not counted.
pub const INSERT_PROGRAMS: [&str; 4] = [
    prog::INSERT,
    prog::HASH_INSERT_RET,
    prog::FE_INSERT,
    prog::FX_INSERT,
];

pub(super) const CLASH: (&[Target], &[Target]) = (
    &[t(prog::RESOLVE_CLASH_RET, Kret, "nf_ct_resolve_clash")],
    &[t(prog::FX_RESOLVE_CLASH, Fexit, "nf_ct_resolve_clash")],
);

pub(super) const EARLY_DROP: (&[Target], &[Target]) = (
    &[
        t(prog::EARLY_DROP_RET, Kret, "early_drop"),
        t(prog::EARLY_DROP, Kp, "early_drop"),
    ],
    &[
        t(prog::FX_EARLY_DROP, Fexit, "early_drop"),
        t(prog::FE_EARLY_DROP, Fentry, "early_drop"),
    ],
);

/// Deaths: the free probe first, so that no tracked entry outlives its slot.
/// In fentry mode the free program is an attribution program (below).
pub(super) const LIFETIMES: (&[Target], &[Target]) = (
    &[
        t(prog::CT_FREE, Kp, "nf_conntrack_free"),
        t(prog::CT_DELETE, Kp, "nf_ct_delete"),
    ],
    &[t(prog::FE_DELETE, Fentry, "nf_ct_delete")],
);

/// fentry mode's free program: entries never inserted, and deaths
/// `nf_ct_delete` was not called out of line for.
pub(super) const FREE_FENTRY: Target = t(prog::FE_FREE, Fentry, "nf_conntrack_free");

/// Per packet, opt-in: kprobes in both modes (a latency needs the entry's
/// time, which the return needs).
pub(super) const LOOKUPS: &[Target] = &[
    t(prog::LOOKUP_RET, Kret, crate::host::kernel::LOOKUP_TARGET),
    t(prog::LOOKUP, Kp, crate::host::kernel::LOOKUP_TARGET),
];

/// The functions fentry mode needs BTF ids for.
pub const TRACED_FUNCTIONS: [&str; 7] = [
    "__nf_conntrack_confirm",
    "__nf_conntrack_alloc",
    "__nf_conntrack_hash_insert",
    "nf_ct_resolve_clash",
    "early_drop",
    "nf_conntrack_free",
    "nf_ct_delete",
];

/// The program a failure is about, if it is about one.
pub fn failed_program(e: &ProbeError) -> Option<&'static str> {
    match e {
        ProbeError::Program { program, .. } | ProbeError::Tracing { program, .. } => *program,
        ProbeError::Interrupted(p) | ProbeError::MissingProgram(p) => Some(p),
        _ => None,
    }
}

/// One of the opt-in lookup programs (`--lookups`).
pub fn is_lookup_program(prog: &str) -> bool {
    LOOKUPS.iter().any(|t| t.prog == prog)
}

/// The programs `attach` would attach for `plan`, in its order: optional
/// groups first, the required ones last (return probes before entry probes
/// within each; see the module comment).
pub fn targets(plan: &Plan) -> Vec<Target> {
    let fentry = plan.fentry.is_some();
    let pick = |g: (&'static [Target], &'static [Target])| if fentry { g.1 } else { g.0 };
    let mut targets: Vec<Target> = Vec::new();
    if plan.lookups {
        targets.extend_from_slice(LOOKUPS);
    }
    if fentry && plan.attribution == Attribution::Always {
        targets.extend(attribution_set(plan));
    }
    for (on, group) in [
        (plan.lifetimes, LIFETIMES),
        (plan.early_drop, EARLY_DROP),
        (plan.clash, CLASH),
    ] {
        if on {
            targets.extend_from_slice(pick(group));
        }
    }
    targets.extend_from_slice(pick(if plan.ct_hash_addr != 0 {
        INSERT_AT_ENTRY
    } else {
        INSERT_AT_RETURN
    }));
    if !fentry {
        targets.extend_from_slice(REQUIRED.0);
    }
    targets
}

/// fentry mode's attribution programs (exits first).
pub(super) fn attribution_set(plan: &Plan) -> Vec<Target> {
    let mut set = REQUIRED.1.to_vec();
    if plan.lifetimes {
        set.push(FREE_FENTRY);
    }
    set
}

/// The programs `attach` loads but attaches only on demand ([`Probes::arm`]):
/// fentry mode's attribution programs under `--attribution auto`.
pub fn on_demand(plan: &Plan) -> Vec<Target> {
    if plan.fentry.is_some() && plan.attribution == Attribution::Auto {
        attribution_set(plan)
    } else {
        Vec::new()
    }
}

/// Every program `attach` loads for `plan`: [`targets`] and [`on_demand`].
pub fn every_target(plan: &Plan) -> Vec<Target> {
    let mut all = targets(plan);
    all.extend(on_demand(plan));
    all
}

/// Every kprobe program of the object, for the host's verifier test.
pub(super) fn every_kprobe() -> impl Iterator<Item = &'static Target> {
    [
        INSERT_AT_ENTRY,
        INSERT_AT_RETURN,
        REQUIRED,
        CLASH,
        EARLY_DROP,
        LIFETIMES,
    ]
    .into_iter()
    .flat_map(|g| g.0.iter())
    .chain(LOOKUPS)
}
