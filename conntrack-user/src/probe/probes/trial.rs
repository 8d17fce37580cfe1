//! `doctor`'s honest answers: each mode's programs loaded (and one
//! attached and detached at once) to see whether this kernel takes them.

use super::{
    AsFd, AtomicBool, Fentry, LOOKUPS, Loaded, Plan, ProbeError, Relocated, btf_object,
    every_target, kprobe, load_object, load_program, load_tracing, object, prog, t, targets,
};

/// Attaches a kprobe to `__nf_conntrack_confirm` and detaches it at once:
/// the only honest answer to "can kprobes attach here".
pub fn try_kprobe(plan: &Plan) -> Result<Vec<Loaded>, ProbeError> {
    // Every program observe would attach goes through the verifier: a
    // kernel that accepts the small one and rejects the chain walk (Linux
    // 7.3 before the walk was made cheap to verify) must not be predicted
    // as kprobe mode.
    let mut plan = plan.clone();
    plan.fentry = None;
    let mut ebpf = load_object(&plan)?;
    let never = AtomicBool::new(false);
    let loaded = targets(&plan)
        .into_iter()
        .map(|t| load_program(&mut ebpf, t.prog, &never))
        .collect::<Result<Vec<_>, _>>()?;
    let p = kprobe(&mut ebpf, "confirm")?;
    p.attach("__nf_conntrack_confirm", 0)
        .map_err(|source| ProbeError::Program {
            program: Some(prog::CONFIRM),
            what: "attaching a kprobe to __nf_conntrack_confirm".into(),
            source,
        })?;
    Ok(loaded)
}

/// Loads (verifies) the opt-in lookup programs, for doctor: `observe
/// --lookups` attaches them first and would otherwise find out itself.
pub fn try_lookups(plan: &Plan) -> Result<Vec<Loaded>, ProbeError> {
    let mut plan = plan.clone();
    plan.lookups = true;
    let mut ebpf = load_object(&plan)?;
    let never = AtomicBool::new(false);
    LOOKUPS
        .iter()
        .map(|t| load_program(&mut ebpf, t.prog, &never))
        .collect()
}

/// Loads every tracing program fentry mode would attach (the verifier's
/// answer on each), then attaches one to `__nf_conntrack_confirm` and
/// detaches it: whether fentry mode works here.
pub fn try_fentry(plan: &Plan) -> Result<Vec<Loaded>, ProbeError> {
    let Some(tt) = &plan.fentry else {
        return Err(ProbeError::MissingProgram("fentry targets"));
    };
    let ebpf = load_object(plan)?;
    let rel = Relocated::new(&ebpf, object::object()?).map_err(|source| ProbeError::Tracing {
        program: None,
        what: "preparing the tracing programs".into(),
        source,
    })?;
    let obj = btf_object(tt)?;
    let never = AtomicBool::new(false);
    let mut plan = plan.clone();
    plan.lookups = false;
    let mut out = Vec::new();
    // The on-demand programs too: observe loads them at its start.
    for target in every_target(&plan) {
        let (_, l) = load_tracing(&rel, &target, tt, obj.as_ref().map(AsFd::as_fd), &never)?;
        out.push(l);
    }
    let probe = t(prog::FENTRY_PROBE, Fentry, "__nf_conntrack_confirm");
    let (mut tr, _) = load_tracing(&rel, &probe, tt, obj.as_ref().map(AsFd::as_fd), &never)?;
    tr.attach().map_err(|source| ProbeError::Tracing {
        program: Some(prog::FENTRY_PROBE),
        what: "attaching fentry to __nf_conntrack_confirm".into(),
        source,
    })?;
    Ok(out)
}
