//! ctscope's eBPF maps as the kernel holds them, read by the agent itself (the soak's
//! bounds): every map is listed through the bpf syscall (`BPF_MAP_GET_NEXT_ID`, aya's
//! `loaded_maps`), the keys of each hash map are counted (`BPF_MAP_GET_NEXT_KEY`) and the
//! lifetime slots' buckets read (`BPF_MAP_LOOKUP_ELEM`). Nothing here goes through ctscope,
//! so a map ctscope lets grow shows here whatever ctscope reports.
//!
//! In the lab VM ctscope is the only program that loads eBPF maps: every hash map there is
//! one of its own.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use anyhow::{Context, Result, bail};
use aya::maps::{MapType, loaded_maps};
use ctscope_lab::MapFill;

/// The lifetime slots (conntrack-ebpf maps.rs `LIFE_SLOTS`): an array of buckets of u64
/// slots, 0 when free.
const LIFE_SLOTS: &str = "LIFE_SLOTS";
/// Most maps listed (ctscope has about 25).
const MAX_MAPS: usize = 4096;
/// Longest key or value the agent reads (ctscope's largest is a 64-byte bucket).
const MAX_ELEM: u32 = 4096;

/// `union bpf_attr` for BPF_MAP_LOOKUP_ELEM and BPF_MAP_GET_NEXT_KEY (include/uapi/linux/
/// bpf.h, unchanged since 4.x): map_fd, then the key and the value (or next key) pointers,
/// then flags.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

fn elem_call(
    cmd: libc::c_long,
    fd: BorrowedFd<'_>,
    key: Option<&[u8]>,
    out: &mut [u8],
) -> std::io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        _pad: 0,
        key: key.map_or(0, |k| k.as_ptr() as u64),
        value: out.as_mut_ptr() as u64,
        flags: 0,
    };
    // SAFETY: `attr` is a complete, zero-padded prefix of union bpf_attr for these two
    // commands, and its size is passed with it; `key` (or null: the first key) and `out` are
    // live buffers of at least the map's key and value size (the callers size them from the
    // map's info), which the kernel reads and writes only during the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            &raw mut attr,
            std::mem::size_of::<ElemAttr>() as libc::c_uint,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Keys of a hash map, at most `max`. A key deleted while the walk stands on it sends the
/// walk back to the first key (`htab_map_get_next_key`, kernel/bpf/hashtab.c): when the first
/// key comes round again the count starts over, and the walk gives up after four times `max`
/// steps (a map that churns faster than it can be walked).
fn count_keys(fd: BorrowedFd<'_>, key_size: u32, max: u64) -> Result<u64> {
    let mut key = vec![0u8; key_size as usize];
    let mut next = vec![0u8; key_size as usize];
    let mut first: Option<Vec<u8>> = None;
    let mut n = 0u64;
    for _ in 0..max.saturating_mul(4).max(16) {
        let current = first.is_some().then_some(key.as_slice());
        match elem_call(BPF_MAP_GET_NEXT_KEY, fd, current, &mut next) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(n),
            Err(e) => return Err(e).context("BPF_MAP_GET_NEXT_KEY"),
        }
        match &first {
            None => first = Some(next.clone()),
            // Back at the start: the walk restarted.
            Some(f) if *f == next => n = 0,
            Some(_) => {}
        }
        n += 1;
        if n >= max {
            return Ok(n);
        }
        std::mem::swap(&mut key, &mut next);
    }
    bail!("the keys changed faster than they could be walked")
}

/// Taken slots of the lifetime slots' array: non-zero u64 words of every bucket.
fn count_slots(fd: BorrowedFd<'_>, buckets: u32, value_size: u32) -> Result<u64> {
    if value_size == 0 || !value_size.is_multiple_of(8) {
        bail!("{LIFE_SLOTS}: value size {value_size} is not a whole number of u64 slots");
    }
    let mut value = vec![0u8; value_size as usize];
    let mut taken = 0u64;
    for i in 0..buckets {
        elem_call(BPF_MAP_LOOKUP_ELEM, fd, Some(&i.to_ne_bytes()), &mut value)
            .with_context(|| format!("BPF_MAP_LOOKUP_ELEM {LIFE_SLOTS}[{i}]"))?;
        taken += value
            .chunks_exact(8)
            .filter(|w| w.iter().any(|b| *b != 0))
            .count() as u64;
    }
    Ok(taken)
}

/// Every hash map and the lifetime slots, by name, and what could not be read.
pub(crate) fn read() -> (BTreeMap<String, MapFill>, Vec<String>) {
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    // A map freed between its id and its fd is an error of its own: the listing goes on,
    // within a bound.
    for info in loaded_maps().take(MAX_MAPS) {
        let info = match info {
            Ok(i) => i,
            Err(e) => {
                errors.push(format!("listing eBPF maps: {e}"));
                continue;
            }
        };
        let name = info.name_as_str().unwrap_or("?").to_string();
        let kind = match info.map_type() {
            Ok(MapType::Hash) => "hash",
            Ok(MapType::PerCpuHash) => "percpu_hash",
            Ok(MapType::LruHash) => "lru_hash",
            Ok(MapType::LruPerCpuHash) => "lru_percpu_hash",
            Ok(MapType::Array) if name == LIFE_SLOTS => "slots",
            _ => continue,
        };
        if info.key_size() > MAX_ELEM || info.value_size() > MAX_ELEM {
            errors.push(format!("{name}: key or value over {MAX_ELEM} bytes"));
            continue;
        }
        let fill = info.fd().map_err(anyhow::Error::from).and_then(|fd| {
            let fd = fd.as_fd();
            if kind == "slots" {
                let slots = u64::from(info.max_entries()) * u64::from(info.value_size() / 8);
                Ok((
                    count_slots(fd, info.max_entries(), info.value_size())?,
                    slots,
                ))
            } else {
                let max = u64::from(info.max_entries());
                // One more than it may hold: a map over its bound shows as such.
                Ok((count_keys(fd, info.key_size(), max + 1)?, max))
            }
        });
        match fill {
            Ok((entries, max_entries)) => {
                out.insert(
                    name,
                    MapFill {
                        kind: kind.to_string(),
                        entries,
                        max_entries,
                    },
                );
            }
            Err(e) => errors.push(format!("{name}: {e:#}")),
        }
    }
    (out, errors)
}
