//! fentry/fexit programs on kernel functions described by BTF: in vmlinux
//! where nf_conntrack is built in, and in a module's split BTF where it is a
//! module, as on every distribution kernel.
//!
//! aya 0.14 loads fentry/fexit against vmlinux BTF only: `FEntry::load` sets
//! `attach_btf_id` and never `attach_btf_obj_fd` (aya issues #300/#301), so a
//! module function's id is read in vmlinux's numbering and refused. ctscope
//! therefore loads its tracing programs itself, with the instructions aya-obj
//! relocates against the maps aya created (one set of maps serves the kprobe
//! and the tracing programs), and attaches them with
//! `BPF_RAW_TRACEPOINT_OPEN`. The kernel side of both: `bpf_prog_load` and
//! `bpf_check_attach_target` in kernel/bpf/syscall.c and verifier.c (v6.1:
//! `attach_btf_obj_fd` names a kernel BTF object, module or vmlinux, and
//! `attach_btf_id` is a FUNC in that object's numbering, which for a module
//! continues vmlinux's).
//!
//! Every fd is owned: dropping a [`Tracing`] detaches it (link first) and
//! unloads it.

use std::{
    collections::HashSet,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
};

use aya::{
    Ebpf,
    maps::{Map, MapData},
};
use aya_obj::generated::{
    bpf_attach_type, bpf_attr, bpf_btf_info, bpf_cmd, bpf_insn, bpf_prog_info, bpf_prog_type,
};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TracingError {
    #[error("parsing the eBPF object for its tracing programs: {0}")]
    Parse(#[source] aya_obj::ParseError),
    #[error("relocating the tracing programs: {0}")]
    Relocate(#[source] aya_obj::relocation::EbpfRelocationError),
    #[error("map {0} of the eBPF object was not created by the loader")]
    NoMap(String),
    #[error("program {0} is missing from the eBPF object")]
    NoProgram(&'static str),
    #[error(
        "no kernel BTF object is named {0} (its module is not loaded, or the kernel lacks CONFIG_DEBUG_INFO_BTF_MODULES)"
    )]
    NoBtfObject(String),
    #[error("{call}: {source}")]
    Syscall {
        call: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the BPF_PROG_LOAD syscall returned {source}")]
    Load {
        #[source]
        source: std::io::Error,
        /// The verifier's log of the failed load (its end, where it concludes).
        log: String,
    },
}

/// Entry or exit of the function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hook {
    Entry,
    Exit,
}

impl Hook {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Hook::Entry => "fentry",
            Hook::Exit => "fexit",
        }
    }

    fn attach_type(self) -> u32 {
        match self {
            Hook::Entry => bpf_attach_type::BPF_TRACE_FENTRY as u32,
            Hook::Exit => bpf_attach_type::BPF_TRACE_FEXIT as u32,
        }
    }
}

/// `bpf(2)`. The attribute is zero past what the caller set, which the kernel
/// requires of the bytes it does not know (`bpf_check_uarg_tail_zero`).
fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> std::io::Result<i64> {
    loop {
        // SAFETY: `attr` is a live, fully initialised `union bpf_attr` of the
        // size passed; the kernel reads it and writes only within it.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd as libc::c_long,
                std::ptr::from_mut(attr),
                std::mem::size_of::<bpf_attr>(),
            )
        };
        if r >= 0 {
            return Ok(r);
        }
        let e = std::io::Error::last_os_error();
        // EINTR only: an EAGAIN of BPF_PROG_LOAD is a verification a signal
        // stopped, which the caller decides about.
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

fn zeroed_attr() -> bpf_attr {
    // SAFETY: `union bpf_attr` is plain integers: all zeroes is valid (and
    // what the kernel expects of every member not set).
    unsafe { std::mem::zeroed() }
}

/// An fd the kernel just returned, owned from here.
fn owned(fd: i64, call: &'static str) -> Result<OwnedFd, TracingError> {
    let raw = RawFd::try_from(fd)
        .ok()
        .filter(|fd| *fd >= 0)
        .ok_or_else(|| TracingError::Syscall {
            call,
            source: std::io::Error::from_raw_os_error(libc::EBADF),
        })?;
    // SAFETY: the kernel returned a new fd, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// The kernel BTF object named `name` (`vmlinux`, or a module such as
/// `nf_conntrack`), as an fd for `attach_btf_obj_fd`. The kernel's BTF ids
/// are walked with `BPF_BTF_GET_NEXT_ID` and each object's name read
/// (`bpf_btf_info.name`, 5.11+).
pub(crate) fn kernel_btf_object(name: &str) -> Result<OwnedFd, TracingError> {
    // Bounded: a kernel holds one BTF object per module and per loaded
    // program that brought BTF; a runaway walk stops here.
    const MAX_OBJECTS: usize = 1 << 16;
    let mut id = 0u32;
    for _ in 0..MAX_OBJECTS {
        let mut attr = zeroed_attr();
        attr.__bindgen_anon_6.__bindgen_anon_1.start_id = id;
        match bpf(bpf_cmd::BPF_BTF_GET_NEXT_ID, &mut attr) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(source) => {
                return Err(TracingError::Syscall {
                    call: "BPF_BTF_GET_NEXT_ID",
                    source,
                });
            }
        }
        // SAFETY: the kernel wrote the next id into this member.
        id = unsafe { attr.__bindgen_anon_6.next_id };
        let mut attr = zeroed_attr();
        attr.__bindgen_anon_6.__bindgen_anon_1.btf_id = id;
        let fd = match bpf(bpf_cmd::BPF_BTF_GET_FD_BY_ID, &mut attr) {
            Ok(fd) => owned(fd, "BPF_BTF_GET_FD_BY_ID")?,
            // Gone since (a program's BTF freed): the walk goes on.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(source) => {
                return Err(TracingError::Syscall {
                    call: "BPF_BTF_GET_FD_BY_ID",
                    source,
                });
            }
        };
        let mut buf = [0u8; 64];
        // SAFETY: bpf_btf_info is plain integers; all zeroes is valid.
        let mut info: bpf_btf_info = unsafe { std::mem::zeroed() };
        info.name = buf.as_mut_ptr() as u64;
        info.name_len = buf.len() as u32;
        obj_info(fd.as_fd(), &mut info)?;
        let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        if info.kernel_btf != 0 && &buf[..len] == name.as_bytes() {
            return avoid_fd_zero(fd);
        }
    }
    Err(TracingError::NoBtfObject(name.to_string()))
}

/// `attach_btf_obj_fd` 0 means vmlinux to the kernel: an object that got fd
/// 0 (stdin closed) is moved up.
fn avoid_fd_zero(fd: OwnedFd) -> Result<OwnedFd, TracingError> {
    if fd.as_raw_fd() != 0 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC on an fd we own returns a new fd or -1.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if r < 0 {
        return Err(TracingError::Syscall {
            call: "fcntl(F_DUPFD_CLOEXEC)",
            source: std::io::Error::last_os_error(),
        });
    }
    owned(i64::from(r), "fcntl(F_DUPFD_CLOEXEC)")
}

/// `BPF_OBJ_GET_INFO_BY_FD` into `info` (a `bpf_*_info`).
fn obj_info<T>(fd: BorrowedFd<'_>, info: &mut T) -> Result<(), TracingError> {
    let mut attr = zeroed_attr();
    attr.info.bpf_fd = fd.as_raw_fd() as u32;
    attr.info.info_len = std::mem::size_of::<T>() as u32;
    attr.info.info = std::ptr::from_mut(info) as u64;
    bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)
        .map(|_| ())
        .map_err(|source| TracingError::Syscall {
            call: "BPF_OBJ_GET_INFO_BY_FD",
            source,
        })
}

/// What the kernel says of a loaded program (run counts and times with
/// bpf_stats on, `recursion_misses`, `verified_insns`).
pub(crate) fn prog_info(fd: BorrowedFd<'_>) -> Result<bpf_prog_info, TracingError> {
    // SAFETY: bpf_prog_info is plain integers; all zeroes is valid.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    obj_info(fd, &mut info)?;
    Ok(info)
}

/// The fd of a map aya created, whatever its kind.
fn map_data(map: &Map) -> &MapData {
    match map {
        Map::Array(m)
        | Map::ArrayOfMaps(m)
        | Map::BloomFilter(m)
        | Map::CgroupArray(m)
        | Map::CgroupStorage(m)
        | Map::CgrpStorage(m)
        | Map::CpuMap(m)
        | Map::DevMap(m)
        | Map::DevMapHash(m)
        | Map::HashMap(m)
        | Map::HashOfMaps(m)
        | Map::InodeStorage(m)
        | Map::LpmTrie(m)
        | Map::LruHashMap(m)
        | Map::PerCpuArray(m)
        | Map::PerCpuCgroupStorage(m)
        | Map::PerCpuHashMap(m)
        | Map::PerCpuLruHashMap(m)
        | Map::PerfEventArray(m)
        | Map::ProgramArray(m)
        | Map::Queue(m)
        | Map::ReusePortSockArray(m)
        | Map::RingBuf(m)
        | Map::SockHash(m)
        | Map::SockMap(m)
        | Map::SkStorage(m)
        | Map::Stack(m)
        | Map::StackTraceMap(m)
        | Map::Unsupported(m)
        | Map::XskMap(m) => m,
    }
}

/// The eBPF object's functions, relocated against the maps of `ebpf` (the
/// same object, loaded by aya, its maps created and its globals set): what
/// the tracing programs are loaded from. Call it before any map is taken
/// out of `ebpf`, and load from it while those maps live: it holds their fd
/// numbers, not the fds (a borrow of `ebpf` would forbid loading aya's own
/// programs meanwhile), so a map dropped before a load would leave a number
/// another file may reuse. `Probes::attach_all` loads every tracing program
/// before it returns, and takes no map out of `ebpf` until then.
pub(crate) struct Relocated {
    obj: aya_obj::Object,
}

impl Relocated {
    pub(crate) fn new(ebpf: &Ebpf, object: &[u8]) -> Result<Relocated, TracingError> {
        let mut obj = aya_obj::Object::parse(object).map_err(TracingError::Parse)?;
        let mut fds = Vec::with_capacity(obj.maps.len());
        for name in obj.maps.keys() {
            let map = ebpf
                .map(name)
                .ok_or_else(|| TracingError::NoMap(name.clone()))?;
            fds.push((name.clone(), map_data(map).fd().as_fd().as_raw_fd()));
        }
        let text_sections: HashSet<usize> = obj
            .functions
            .keys()
            .map(|(section_index, _)| *section_index)
            .collect();
        let maps = std::mem::take(&mut obj.maps);
        let relocated = obj.relocate_maps(
            fds.iter()
                .filter_map(|(name, fd)| maps.get(name.as_str()).map(|m| (name.as_str(), *fd, m))),
            &text_sections,
        );
        obj.maps = maps;
        relocated.map_err(TracingError::Relocate)?;
        obj.relocate_calls(&text_sections)
            .map_err(TracingError::Relocate)?;
        obj.sanitize_functions(aya::features());
        Ok(Relocated { obj })
    }

    fn instructions(&self, prog: &'static str) -> Result<&[bpf_insn], TracingError> {
        let p = self
            .obj
            .programs
            .get(prog)
            .ok_or(TracingError::NoProgram(prog))?;
        self.obj
            .functions
            .get(&p.function_key())
            .map(|f| f.instructions.as_slice())
            .ok_or(TracingError::NoProgram(prog))
    }

    /// Loads (verifies) program `prog` as `hook` of the function with BTF id
    /// `btf_id` in the kernel BTF object `btf_obj` (None: vmlinux).
    pub(crate) fn load(
        &self,
        prog: &'static str,
        hook: Hook,
        btf_id: u32,
        btf_obj: Option<BorrowedFd<'_>>,
    ) -> Result<Tracing, TracingError> {
        let insns = self.instructions(prog)?;
        let license = c"Dual MIT/GPL";
        let attempt = |log: Option<&mut Vec<u8>>| {
            let mut attr = zeroed_attr();
            // SAFETY: writing plain integers into the prog-load member of a
            // zeroed union.
            let u = unsafe { &mut attr.__bindgen_anon_3 };
            u.prog_type = bpf_prog_type::BPF_PROG_TYPE_TRACING as u32;
            u.expected_attach_type = hook.attach_type();
            u.insns = insns.as_ptr() as u64;
            u.insn_cnt = insns.len() as u32;
            u.license = license.as_ptr() as u64;
            u.attach_btf_id = btf_id;
            u.__bindgen_anon_1.attach_btf_obj_fd = btf_obj.map_or(0, |fd| fd.as_raw_fd() as u32);
            for (d, s) in u.prog_name.iter_mut().zip(prog.bytes().take(15)) {
                *d = s as libc::c_char;
            }
            if let Some(buf) = log {
                u.log_level = 1;
                u.log_buf = buf.as_mut_ptr() as u64;
                u.log_size = buf.len() as u32;
            }
            let r = bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr);
            // SAFETY: reading back an integer of the same union member.
            (r, unsafe { attr.__bindgen_anon_3.log_true_size })
        };
        let fd = match attempt(None).0 {
            Ok(fd) => fd,
            Err(first) => {
                // Again with the verifier's log, to say why. A log too long
                // for its buffer fails with ENOSPC. Since Linux 6.4 it keeps
                // its end, where the conclusion is, and says the size it
                // needed (`log_true_size`, 0 before); before, it keeps its
                // start: a larger buffer then, up to LOG_MAX.
                let mut size = 1 << 20;
                loop {
                    let mut buf = vec![0u8; size];
                    let (again, true_size) = attempt(Some(&mut buf));
                    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
                    let log = String::from_utf8_lossy(&buf[..end]).into_owned();
                    match again {
                        Ok(fd) => break fd,
                        Err(e)
                            if e.raw_os_error() == Some(libc::ENOSPC)
                                && true_size == 0
                                && size < LOG_MAX =>
                        {
                            size *= 4;
                        }
                        Err(e) => {
                            // ENOSPC only says the log was cut: the first error is the real one.
                            let source = if e.raw_os_error() == Some(libc::ENOSPC) {
                                first
                            } else {
                                e
                            };
                            return Err(TracingError::Load { source, log });
                        }
                    }
                }
            }
        };
        Ok(Tracing {
            prog: owned(fd, "BPF_PROG_LOAD")?,
            link: None,
        })
    }
}

/// The largest verifier log asked for (the kernel takes up to 1 GiB).
const LOG_MAX: usize = 16 << 20;

/// A loaded tracing program, and its attachment once attached.
#[derive(Debug)]
pub(crate) struct Tracing {
    // Field order: the link goes before the program.
    link: Option<OwnedFd>,
    prog: OwnedFd,
}

impl Tracing {
    /// Attaches the program where it was loaded for
    /// (`BPF_RAW_TRACEPOINT_OPEN` with no name, 5.5+).
    pub(crate) fn attach(&mut self) -> Result<(), TracingError> {
        if self.link.is_some() {
            return Ok(());
        }
        let mut attr = zeroed_attr();
        attr.raw_tracepoint.name = 0;
        attr.raw_tracepoint.prog_fd = self.prog.as_raw_fd() as u32;
        let fd = bpf(bpf_cmd::BPF_RAW_TRACEPOINT_OPEN, &mut attr).map_err(|source| {
            TracingError::Syscall {
                call: "BPF_RAW_TRACEPOINT_OPEN",
                source,
            }
        })?;
        self.link = Some(owned(fd, "BPF_RAW_TRACEPOINT_OPEN")?);
        Ok(())
    }

    /// Detaches it (closing the link); it stays loaded.
    pub(crate) fn detach(&mut self) {
        self.link = None;
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.prog.as_fd()
    }
}
