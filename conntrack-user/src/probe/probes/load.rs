//! Loading one program: aya's loader made without vmlinux BTF, kprobes
//! through aya, tracing programs through ctscope's own BPF_PROG_LOAD (module
//! BTF), each retried when the verifier was interrupted (EAGAIN).

use super::{
    Array, AsFd, AtomicBool, BorrowedFd, Config, Ebpf, EbpfLoader, Instant, KProbe, Loaded,
    MapData, Ordering, OwnedFd, PerCpuArray, Plan, ProbeError, Relocated, Target, Tracing,
    TracingError, TracingTargets, map, object, tracing,
};

/// A loader that has not parsed vmlinux BTF. aya 0.14's `EbpfLoader::new()`
/// parses `/sys/kernel/btf/vmlinux` (for CO-RE relocations, which ctscope
/// does not use: its offsets come in a global) before `.btf(None)` can say
/// so: about 15 MiB held while it loads, most of ctscope's peak memory. So
/// the loader is made where that file does not exist: on a thread of its
/// own that unshared its filesystem context (`CLONE_FS`: root and cwd, of
/// that thread alone) and made `/proc` its root (`/proc/sys/kernel/btf`
/// exists on no kernel). Nothing else changes; the thread ends at once.
/// Where that cannot be done, the ordinary loader.
pub(super) fn loader() -> EbpfLoader<'static> {
    let without_btf = std::thread::scope(|s| {
        s.spawn(|| {
            // Both change this thread's own filesystem context only
            // (CLONE_FS unshared first, so the chroot is not the process's).
            if nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS).is_err()
                || nix::unistd::chroot(c"/proc").is_err()
            {
                return None;
            }
            Some(EbpfLoader::new())
        })
        .join()
        .ok()
        .flatten()
    });
    without_btf.unwrap_or_else(|| {
        log::debug!("the loader could not be made without vmlinux BTF");
        EbpfLoader::new()
    })
}

/// Sets `ARMED` (conntrack-ebpf counters.rs `armed`) in a loaded object.
pub(super) fn set_armed(ebpf: &mut Ebpf, v: u32) -> Result<(), ProbeError> {
    let map = ebpf
        .map_mut(map::ARMED)
        .ok_or(ProbeError::MissingMap(map::ARMED))?;
    let mut armed: Array<&mut MapData, u32> =
        Array::try_from(map).map_err(|source| ProbeError::Map {
            what: map::ARMED,
            source,
        })?;
    armed.set(0, v, 0).map_err(|source| ProbeError::Map {
        what: map::ARMED,
        source,
    })
}

pub(super) fn load_object(plan: &Plan) -> Result<Ebpf, ProbeError> {
    let config = plan.config();
    loader()
        // The programs use no CO-RE relocations: offsets come in `CONFIG`.
        .btf(None)
        .map_max_entries(map::LIFE_SLOTS, plan.life_buckets)
        // Into `.rodata`, which aya creates as a frozen read-only map; the
        // tracing programs (tracing.rs) are relocated against that same map.
        .override_global(Config::GLOBAL, &config, true)
        .load(object::object()?)
        .map_err(ProbeError::Load)
}

pub(super) fn kprobe<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut KProbe, ProbeError> {
    ebpf.program_mut(name)
        .ok_or(ProbeError::MissingProgram(name))?
        .try_into()
        .map_err(|source| ProbeError::Program {
            program: Some(name),
            what: format!("program {name}"),
            source,
        })
}

pub(super) fn take_array<V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<PerCpuArray<MapData, V>, ProbeError> {
    let map = ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))?;
    PerCpuArray::try_from(map).map_err(|source| ProbeError::Map { what: name, source })
}

/// Program loads interrupted by a pending signal (EAGAIN) that are tried
/// again when nobody asked to stop: libbpf retries 5 times for this reason.
pub(super) const EAGAIN_RETRIES: u32 = 3;

/// Runs `load` until it passes, a stop is asked for, or it fails otherwise:
/// a load the kernel stopped for a pending signal (EAGAIN) is tried again
/// unless `stop` says the signal was a request to stop. Returns the result
/// and the tries signals cost.
pub(super) fn with_retries<T, E>(
    prog: &'static str,
    stop: &AtomicBool,
    mut load: impl FnMut() -> Result<T, E>,
    eagain: impl Fn(&E) -> bool,
) -> Result<(T, u32), Result<E, ProbeError>> {
    let mut attempt = 0;
    loop {
        if stop.load(Ordering::Acquire) {
            return Err(Err(ProbeError::Interrupted(prog)));
        }
        match load() {
            Ok(v) => return Ok((v, attempt)),
            Err(e) => {
                let again = eagain(&e);
                if again && stop.load(Ordering::Acquire) {
                    return Err(Err(ProbeError::Interrupted(prog)));
                }
                if again && attempt < EAGAIN_RETRIES {
                    attempt += 1;
                    log::debug!("{prog}: verification interrupted by a signal (EAGAIN); again");
                    continue;
                }
                return Err(Ok(e));
            }
        }
    }
}

/// Loads (verifies) one kprobe program.
pub(super) fn load_program(
    ebpf: &mut Ebpf,
    prog: &'static str,
    stop: &AtomicBool,
) -> Result<Loaded, ProbeError> {
    let p = kprobe(ebpf, prog)?;
    let t = Instant::now();
    let eagain = |e: &aya::programs::ProgramError| {
        matches!(e, aya::programs::ProgramError::LoadError { io_error, .. }
            if io_error.raw_os_error() == Some(libc::EAGAIN))
    };
    let ((), interrupted) = with_retries(prog, stop, || p.load(), eagain).map_err(|e| match e {
        Err(stopped) => stopped,
        Ok(source) => ProbeError::Program {
            program: Some(prog),
            what: format!("verifier rejected {prog}"),
            source,
        },
    })?;
    let fd = p.fd().map_err(|source| ProbeError::Program {
        program: Some(prog),
        what: format!("reading the kernel's info on {prog}"),
        source,
    })?;
    loaded(prog, fd.as_fd(), t, interrupted)
}

/// What the kernel says of a program it just accepted.
pub(super) fn loaded(
    prog: &'static str,
    fd: BorrowedFd<'_>,
    t: Instant,
    interrupted: u32,
) -> Result<Loaded, ProbeError> {
    let info = tracing::prog_info(fd).map_err(|source| ProbeError::Tracing {
        program: Some(prog),
        what: format!("reading the kernel's info on {prog}"),
        source,
    })?;
    let name_len = info
        .name
        .iter()
        .position(|c| *c == 0)
        .unwrap_or(info.name.len());
    let loaded = Loaded {
        program: prog.to_string(),
        kernel_name: info.name[..name_len]
            .iter()
            .map(|c| *c as u8 as char)
            .collect(),
        kernel_id: info.id,
        verified_instructions: (info.verified_insns > 0).then_some(info.verified_insns),
        verify_seconds: t.elapsed().as_secs_f64(),
        interrupted,
    };
    log::debug!(
        "{prog}: verified in {:.2} s ({:?} instructions processed)",
        loaded.verify_seconds,
        loaded.verified_instructions
    );
    Ok(loaded)
}

/// The kernel BTF object fentry mode attaches in: None for vmlinux (which
/// `attach_btf_obj_fd` 0 names).
pub(super) fn btf_object(targets: &TracingTargets) -> Result<Option<OwnedFd>, ProbeError> {
    if targets.object == "vmlinux" {
        return Ok(None);
    }
    tracing::kernel_btf_object(&targets.object)
        .map(Some)
        .map_err(|source| ProbeError::Tracing {
            program: None,
            what: format!("finding the kernel's BTF object {}", targets.object),
            source,
        })
}

/// Loads (verifies) one tracing program of `target`.
pub(super) fn load_tracing(
    rel: &Relocated,
    target: &Target,
    targets: &TracingTargets,
    btf_obj: Option<BorrowedFd<'_>>,
    stop: &AtomicBool,
) -> Result<(Tracing, Loaded), ProbeError> {
    let (prog, func) = (target.prog, target.func);
    let hook = target.kind.hook().ok_or(ProbeError::MissingProgram(prog))?;
    let id = *targets.ids.get(func).ok_or_else(|| ProbeError::Tracing {
        program: Some(prog),
        what: format!("{func} has no BTF id in {}", targets.object),
        source: TracingError::NoProgram(prog),
    })?;
    let t = Instant::now();
    let eagain = |e: &TracingError| matches!(e, TracingError::Load { source, .. } if source.raw_os_error() == Some(libc::EAGAIN));
    let (tr, interrupted) = with_retries(prog, stop, || rel.load(prog, hook, id, btf_obj), eagain)
        .map_err(|e| match e {
            Err(stopped) => stopped,
            Ok(source) => ProbeError::Tracing {
                program: Some(prog),
                what: format!("verifier rejected {prog} ({} {func})", hook.name()),
                source,
            },
        })?;
    let l = loaded(prog, tr.fd(), t, interrupted)?;
    Ok((tr, l))
}
