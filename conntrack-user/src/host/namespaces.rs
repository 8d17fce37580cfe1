//! Every network namespace of the host, named, and a way to run code inside
//! one of them.
//!
//! Conntrack is per namespace (each has its own `nf_conntrack_count`,
//! `net->ct.count`, and stat file, `net->ct.stat`:
//! <https://elixir.bootlin.com/linux/v6.1/source/include/net/netns/conntrack.h>),
//! so ctscope visits each namespace to read
//! them. Namespaces are found through the processes in them
//! (`/proc/*/ns/net`) and through `ip netns` bind mounts (`/run/netns/*`),
//! which hold a namespace open with no process inside.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use thiserror::Error;

use crate::{
    host::docker,
    host::procfs::{self, StatTotals},
    text,
};

pub const NETNS_RUN_DIR: &str = "/run/netns";
pub const DOCKER_NETNS_DIR: &str = "/var/run/docker/netns";
/// Named namespaces (`ip netns`) whose name starts with this prefix are
/// containers, named by the rest (`--netns-containers PREFIX`): container
/// runtimes and test rigs that name their namespaces, such as the VM lab's
/// `ctlab-<name>` (docs/lab-contract.md). Unset, only Docker's are.
static CONTAINER_PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Longest `--netns-containers` prefix.
pub const CONTAINER_PREFIX_MAX: usize = 64;

/// Sets the prefix of named namespaces that are containers, once per
/// process. `Err` says why a prefix is refused: empty, too long, or with a
/// character a namespace name cannot hold (`/`, NUL) or a terminal would
/// act on.
pub fn set_container_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || prefix.len() > CONTAINER_PREFIX_MAX {
        return Err(format!("must be 1 to {CONTAINER_PREFIX_MAX} bytes long"));
    }
    if prefix
        .chars()
        .any(|c| c == '/' || c.is_control() || c.is_whitespace())
    {
        return Err("must not contain '/', spaces or control characters".into());
    }
    CONTAINER_PREFIX
        .set(prefix.to_string())
        .map_err(|_| "is already set".to_string())
}

#[derive(Debug, Error)]
pub enum NsError {
    #[error("opening {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The path now names another namespace: the one we knew is gone and its
    /// pid (or name) was reused.
    #[error("{path} is no longer namespace {inode}")]
    Vanished { path: String, inode: u64 },
    #[error("setns into {path}: {source}")]
    Setns {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the thread visiting {path} panicked")]
    Panicked { path: String },
}

/// Whose namespace it is, as discovery sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The init namespace, the host's own.
    Host,
    /// A Docker container's (a process inside is in its cgroup), or a named
    /// namespace the caller's prefix marks as a container.
    Container,
    /// Any other: named by `ip netns`, or after a process inside.
    Netns,
}

/// One network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    pub inode: u64,
    /// A path that opens it: `/proc/PID/ns/net` or `/run/netns/NAME`.
    pub path: PathBuf,
    pub name: String,
    pub kind: Kind,
    /// Docker container id when a process inside is in a Docker cgroup.
    pub docker_id: Option<String>,
    /// `ip netns` name when one is bound to it.
    pub netns_name: Option<String>,
    /// A process inside, if any (its `/proc/PID/net` shows this namespace).
    pub pid: Option<u32>,
}

impl Netns {
    /// The container a named namespace is, by `--netns-containers PREFIX`.
    pub fn named_container(&self) -> Option<&str> {
        self.container_by(CONTAINER_PREFIX.get()?)
    }

    fn container_by(&self, prefix: &str) -> Option<&str> {
        self.netns_name
            .as_deref()?
            .strip_prefix(prefix)
            .filter(|s| !s.is_empty())
    }
}

fn ns_inode(path: &Path) -> Option<u64> {
    fs::metadata(path).ok().map(|m| m.ino())
}

/// The device of nsfs, the one pseudo filesystem every namespace file lives
/// on (fs/nsfs.c, v5.10..v6.18: a single `nsfs_mnt` superblock).
fn nsfs_dev() -> Option<u64> {
    fs::metadata("/proc/self/ns/net").ok().map(|m| m.dev())
}

/// Whether an open file is on nsfs (the device of our own namespace file).
fn is_nsfs(file: &fs::File) -> bool {
    let dev = file.metadata().ok().map(|m| m.dev());
    dev.is_some() && dev == nsfs_dev()
}

/// The namespace a bind-mount path holds, or None where the path is no longer
/// a namespace: once Docker stops a container it unmounts the sandbox's
/// namespace, and the empty file left behind in /var/run/docker/netns (or a
/// stale /var/run/netns name) is a plain tmpfs file whose inode names nothing.
fn bound_ns_inode(path: &Path, nsfs: Option<u64>) -> Option<u64> {
    let m = fs::metadata(path).ok()?;
    (Some(m.dev()) == nsfs).then(|| m.ino())
}

#[derive(Default)]
struct Found {
    pids: Vec<u32>,
    netns_name: Option<String>,
    bind_path: Option<PathBuf>,
}

fn scan() -> BTreeMap<u64, Found> {
    let mut found: BTreeMap<u64, Found> = BTreeMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(ino) = ns_inode(&e.path().join("ns/net")) {
                found.entry(ino).or_default().pids.push(pid);
            }
        }
    }
    let nsfs = nsfs_dev();
    if let Ok(dir) = fs::read_dir(NETNS_RUN_DIR) {
        for e in dir.flatten() {
            let Some(ino) = bound_ns_inode(&e.path(), nsfs) else {
                continue;
            };
            let f = found.entry(ino).or_default();
            // Any file name at all (`ip netns add` takes anything but `/`):
            // escaped here, where it is read, before it reaches a terminal.
            let name = text::name(&e.file_name().to_string_lossy());
            // Several names may bind one namespace: keep the smallest, for a
            // name that does not depend on directory order.
            if f.netns_name.as_ref().is_none_or(|n| name < *n) {
                f.netns_name = Some(name);
                f.bind_path = Some(e.path());
            }
        }
    }
    // Docker's sandbox bind mounts (unnamed): they keep a container's
    // namespace alive between its processes, e.g. across a restart.
    if let Ok(dir) = fs::read_dir(DOCKER_NETNS_DIR) {
        for e in dir.flatten() {
            if let Some(ino) = bound_ns_inode(&e.path(), nsfs) {
                found
                    .entry(ino)
                    .or_default()
                    .bind_path
                    .get_or_insert(e.path());
            }
        }
    }
    found
}

/// Every namespace as `(inode, path to open it)`: the cheap part of
/// [`discover`], for rescans during a run.
pub fn scan_paths() -> Vec<(u64, PathBuf)> {
    scan()
        .into_iter()
        .filter_map(|(inode, f)| {
            let path = f.bind_path.or_else(|| {
                f.pids
                    .iter()
                    .min()
                    .map(|p| PathBuf::from(format!("/proc/{p}/ns/net")))
            })?;
            Some((inode, path))
        })
        .collect()
}

/// Every network namespace visible from here, named, sorted by inode.
/// Processes that exit while we look are skipped.
pub fn discover() -> Vec<Netns> {
    let init = crate::host::kernel::init_netns_inode();
    scan()
        .into_iter()
        .filter_map(|(inode, mut f)| {
            f.pids.sort_unstable();
            let docker_id = f.pids.iter().find_map(|p| {
                docker::container_id_from_cgroup(
                    &fs::read_to_string(format!("/proc/{p}/cgroup")).ok()?,
                )
            });
            let pid = f.pids.first().copied();
            let path = f
                .bind_path
                .clone()
                .or_else(|| pid.map(|p| PathBuf::from(format!("/proc/{p}/ns/net"))))?;
            let mut ns = Netns {
                inode,
                path,
                name: String::new(),
                kind: Kind::Netns,
                docker_id,
                netns_name: f.netns_name,
                pid,
            };
            (ns.name, ns.kind) = name_of(&ns, Some(inode) == init);
            Some(ns)
        })
        .collect()
}

fn name_of(ns: &Netns, is_init: bool) -> (String, Kind) {
    if is_init {
        return ("host".into(), Kind::Host);
    }
    if let Some(id) = &ns.docker_id {
        let name = docker::container_name(id).unwrap_or_else(|| id.chars().take(12).collect());
        return (name, Kind::Container);
    }
    if let Some(name) = ns.named_container() {
        return (name.to_string(), Kind::Container);
    }
    if let Some(n) = &ns.netns_name {
        return (n.clone(), Kind::Netns);
    }
    let comm = ns
        .pid
        .and_then(|p| fs::read_to_string(format!("/proc/{p}/comm")).ok())
        .map_or_else(
            || format!("netns-{}", ns.inode),
            |c| text::name(c.trim_end_matches('\n')),
        );
    (comm, Kind::Netns)
}

/// Runs `f` inside `ns`, on a dedicated short-lived thread that joined the
/// namespace with `setns(2)`: only that thread changes namespace, never the
/// caller's. Inside `f`, `/proc/thread-self/net` and `/proc/sys/net` show
/// `ns`, and sockets created there stay bound to `ns` for their whole life.
pub fn visit<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> Result<T, NsError> {
    visit_path(&ns.path, ns.inode, f)
}

/// Opens `ns_path` and checks that it still is namespace `inode`.
fn open_ns(ns_path: &Path, inode: u64) -> Result<fs::File, NsError> {
    let path = ns_path.display().to_string();
    // Non-blocking and without a controlling terminal: between discovery and
    // now a process can put a FIFO or a device behind its fd number or swap a
    // mount point, and a blocking open of a FIFO would hang root for good.
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(ns_path)
        .map_err(|source| NsError::Open {
            path: path.clone(),
            source,
        })?;
    // A pid can be reused by a process in another namespace between discovery
    // and now: check that the open file is still the namespace we mean, and
    // on nsfs (an inode number alone can match a file elsewhere).
    if file.metadata().map(|m| m.ino()).ok() != Some(inode) || !is_nsfs(&file) {
        return Err(NsError::Vanished { path, inode });
    }
    Ok(file)
}

/// Moves the calling thread into the namespace of `file` (`path` names it
/// in the error). Only ever called on a thread of its own.
fn enter(file: &fs::File, path: &Path) -> Result<(), NsError> {
    // setns(CLONE_NEWNET) changes the network namespace of the calling
    // thread only (hence a thread of its own).
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| NsError::Setns {
        path: path.display().to_string(),
        source: std::io::Error::from(e),
    })
}

/// [`visit`] by path, checking that the path still opens namespace `inode`.
pub fn visit_path<T: Send>(
    ns_path: &Path,
    inode: u64,
    f: impl FnOnce() -> T + Send,
) -> Result<T, NsError> {
    let file = open_ns(ns_path, inode)?;
    std::thread::scope(|s| {
        // A fresh scoped thread that ends right after `f`.
        s.spawn(|| {
            enter(&file, ns_path)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| {
            Err(NsError::Panicked {
                path: ns_path.display().to_string(),
            })
        })
    })
}

/// Runs `f` in each of `nss` in turn, on one short-lived thread that joins
/// them one after the other (never the caller's thread): what [`visit`]
/// does for each, for a thread's start and end once rather than once per
/// namespace (the occupancy sampler visits every namespace every interval).
pub fn visit_each<T: Send>(
    nss: &[Netns],
    f: impl Fn(&Netns) -> T + Send + Sync,
) -> Vec<Result<T, NsError>> {
    std::thread::scope(|s| {
        s.spawn(|| {
            nss.iter()
                .map(|ns| {
                    let file = open_ns(&ns.path, ns.inode)?;
                    enter(&file, &ns.path)?;
                    Ok(f(ns))
                })
                .collect()
        })
        .join()
        .unwrap_or_else(|_| {
            nss.iter()
                .map(|ns| {
                    Err(NsError::Panicked {
                        path: ns.path.display().to_string(),
                    })
                })
                .collect()
        })
    })
}

/// One namespace's conntrack counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NsCounters {
    /// `net.netfilter.nf_conntrack_count` of that namespace.
    pub count: Option<u64>,
    /// Its `/proc/net/stat/nf_conntrack`, summed over CPUs.
    pub stat: Option<StatTotals>,
}

/// Reads `ns`'s count and stat file from inside it.
pub fn counters(ns: &Netns) -> Result<NsCounters, NsError> {
    visit(ns, || NsCounters {
        count: procfs::sysctl("nf_conntrack_count").ok(),
        // thread-self, not self: /proc/self/net is the main thread's namespace.
        stat: StatTotals::read(Path::new("/proc/thread-self/net/stat/nf_conntrack")).ok(),
    })
}

/// Every place a namespace can be held open from, for [`census`]: apply must
/// count every namespace conntrack keeps entries for, not only those a
/// process sits in. A network namespace lives while anything holds a
/// reference: a task (any thread, not only a thread-group leader: `setns(2)`
/// moves one thread), an open nsfs file descriptor, or an nsfs bind mount in
/// any mount namespace (`ip netns` in a container's own /run/netns).
/// Sockets hold one too (`sk_alloc` takes a reference for user sockets,
/// net/core/sock.c v5.10..v6.18); those cannot be opened from here, so
/// [`census`] bounds what they may hide by the slab's object count.
#[derive(Debug, Default)]
struct Holders {
    /// Bind mounts that open it: tried first, they do not go away with a
    /// process.
    binds: Vec<PathBuf>,
    /// Other paths that open it: a process, a thread, a file descriptor.
    paths: Vec<PathBuf>,
    /// How it was found, for a name: `ip netns` name, pid, thread, fd.
    netns_name: Option<String>,
    pid: Option<u32>,
    thread: Option<(u32, u32)>,
    fd: Option<(u32, u32)>,
}

/// `net:[4026531840]` (what a namespace file descriptor's /proc link and an
/// nsfs mount's root read) -> the inode.
fn net_link_inode(text: &str) -> Option<u64> {
    text.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, fs/proc_namespace.c
/// `mangle`).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && (b'0'..=b'3').contains(&b[i + 1])
            && b[i + 2..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            // A first digit of 0..=3 keeps the value within a byte (the
            // kernel's `mangle` writes bytes as \ooo); \4xx and above are
            // not escapes and stay as they are.
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<u32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    out.sort_unstable();
    out
}

fn scan_holders() -> BTreeMap<u64, Holders> {
    let mut found: BTreeMap<u64, Holders> = BTreeMap::new();
    let nsfs = nsfs_dev();
    let add_bind = |found: &mut BTreeMap<u64, Holders>, path: PathBuf, name: Option<String>| {
        if let Some(ino) = bound_ns_inode(&path, nsfs) {
            let h = found.entry(ino).or_default();
            if h.netns_name.is_none() {
                h.netns_name = name;
            }
            h.binds.push(path);
        }
    };
    for dir in [NETNS_RUN_DIR, DOCKER_NETNS_DIR] {
        if let Ok(rd) = fs::read_dir(dir) {
            // Sorted: the smallest `ip netns` name names the namespace.
            let mut names: Vec<_> = rd.flatten().collect();
            names.sort_by_key(std::fs::DirEntry::file_name);
            for e in names {
                let name =
                    (dir == NETNS_RUN_DIR).then(|| e.file_name().to_string_lossy().into_owned());
                add_bind(&mut found, e.path(), name);
            }
        }
    }
    let mut mount_namespaces = std::collections::BTreeSet::new();
    for pid in pids() {
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let own = ns_inode(&proc.join("ns/net"));
        if let Some(ino) = own {
            let h = found.entry(ino).or_default();
            h.pid.get_or_insert(pid);
            h.paths.push(proc.join("ns/net"));
        }
        // Threads that joined another namespace (`setns` on one thread).
        if let Ok(rd) = fs::read_dir(proc.join("task")) {
            for t in rd.flatten() {
                let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                let p = t.path().join("ns/net");
                match ns_inode(&p) {
                    Some(ino) if Some(ino) != own => {
                        let h = found.entry(ino).or_default();
                        h.thread.get_or_insert((pid, tid));
                        h.paths.push(p);
                    }
                    _ => {}
                }
            }
        }
        // Namespace file descriptors: `net:[INODE]` links. One path per
        // namespace and process is enough.
        if let Ok(rd) = fs::read_dir(proc.join("fd")) {
            let mut seen = std::collections::BTreeSet::new();
            for f in rd.flatten() {
                let Some(ino) = fs::read_link(f.path())
                    .ok()
                    .and_then(|l| net_link_inode(&l.to_string_lossy()))
                else {
                    continue;
                };
                if !seen.insert(ino) {
                    continue;
                }
                let fdn = f
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let h = found.entry(ino).or_default();
                h.fd.get_or_insert((pid, fdn));
                h.paths.push(f.path());
            }
        }
        // nsfs bind mounts of every other mount namespace, opened through
        // that namespace's root (/proc/PID/root/...).
        if let Some(mnt) = ns_inode(&proc.join("ns/mnt"))
            && mount_namespaces.insert(mnt)
            && let Ok(text) = fs::read_to_string(proc.join("mountinfo"))
        {
            for line in text.lines() {
                let Some((pre, post)) = line.split_once(" - ") else {
                    continue;
                };
                if post.split_whitespace().next() != Some("nsfs") {
                    continue;
                }
                let f: Vec<&str> = pre.split_whitespace().collect();
                let (Some(root), Some(point)) = (f.get(3), f.get(4)) else {
                    continue;
                };
                if net_link_inode(root).is_none() {
                    continue;
                }
                let rel = unescape_mountinfo(point);
                let path = proc.join("root").join(rel.trim_start_matches('/'));
                add_bind(&mut found, path, None);
            }
        }
    }
    found
}

/// Objects in use in the `nf_conntrack` slab (`/proc/slabinfo`'s
/// `active_objs`, root only). Every entry of every namespace is one of them:
/// the per-net count is raised at allocation (`__nf_conntrack_alloc`) and the
/// cache is never merged with another (`SLAB_TYPESAFE_BY_RCU`,
/// nf_conntrack_core.c v5.10..v6.18).
///
/// Also the slack SLUB adds to it: the objects of each CPU's active slab and
/// of a CPU partial slab count as in use while free (mm/slub.c
/// `get_slabinfo`, v5.10..v6.18), so up to CPUs × 2 × objects per slab may be
/// phantoms (a busy host with many CPUs has thousands).
fn slab_active_objects() -> Option<(u64, u64)> {
    let text = crate::safefile::read_capped(Path::new("/proc/slabinfo"), 4 << 20).ok()?;
    let text = String::from_utf8_lossy(&text);
    let f: Vec<&str> = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"nf_conntrack"))?;
    let active = f.get(1)?.parse().ok()?;
    let per_slab: u64 = f.get(4).and_then(|v| v.parse().ok()).unwrap_or(0);
    let cpus = crate::host::procfs::cpus().unwrap_or(1);
    Some((active, cpus.saturating_mul(2).saturating_mul(per_slab)))
}

/// One namespace's live entry count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveCount {
    pub inode: u64,
    /// For people: `host`, an `ip netns` name, or how it is held.
    pub name: String,
    pub count: u64,
}

/// Every network namespace's conntrack count (see [`census`]).
#[derive(Debug, Clone, Default)]
pub struct Census {
    pub counts: Vec<LiveCount>,
    /// Namespaces that exist but could not be read: `(name, why)`.
    pub unreadable: Vec<(String, String)>,
    /// Objects the `nf_conntrack` slab has in use (`/proc/slabinfo`), every
    /// namespace together; at least the sum of all counts.
    pub slab_active: Option<u64>,
    /// Of those, how many may be free objects SLUB counts as in use.
    pub slab_slack: u64,
}

impl Census {
    /// The namespace with the most entries.
    pub fn busiest(&self) -> Option<&LiveCount> {
        self.counts.iter().max_by_key(|c| c.count)
    }
    /// Entries of every namespace read: the whole table.
    pub fn total(&self) -> u64 {
        self.counts
            .iter()
            .fold(0u64, |a, c| a.saturating_add(c.count))
    }
    /// How many entries may be in namespaces no path opens (held only by a
    /// socket): the slab's objects in use beyond the counts read. An upper
    /// bound (SLUB counts its per-CPU free objects as in use).
    pub fn unseen_bound(&self) -> Option<u64> {
        self.slab_active.map(|a| {
            a.saturating_sub(self.total())
                .saturating_sub(self.slab_slack)
        })
    }
}

fn holder_name(inode: u64, h: &Holders, init: Option<u64>) -> String {
    if Some(inode) == init {
        return "host".into();
    }
    let comm = |pid: u32| {
        fs::read_to_string(format!("/proc/{pid}/comm"))
            .map_or_else(|_| "?".into(), |c| crate::text::name(c.trim()))
    };
    if let Some(n) = &h.netns_name {
        return crate::text::name(n);
    }
    if let Some(pid) = h.pid {
        return format!("netns-{inode} ({}[{pid}])", comm(pid));
    }
    if let Some((pid, tid)) = h.thread {
        return format!("netns-{inode} (thread {tid} of {}[{pid}])", comm(pid));
    }
    if let Some((pid, fd)) = h.fd {
        return format!(
            "netns-{inode} (held only by fd {fd} of {}[{pid}])",
            comm(pid)
        );
    }
    format!("netns-{inode} (held only by a bind mount)")
}

/// `nf_conntrack_count` of the namespace the calling thread is in, else the
/// `entries` column of its stat file (the same per-net counter,
/// `ct_cpu_seq_show`): a namespace owned by another user namespace may not
/// show the sysctl on older kernels.
fn own_count() -> Result<u64, String> {
    procfs::sysctl("nf_conntrack_count").or_else(|e| {
        StatTotals::read(Path::new("/proc/thread-self/net/stat/nf_conntrack"))
            .ok()
            .and_then(|s| s.columns.get("entries").copied())
            .ok_or_else(|| {
                format!("neither nf_conntrack_count nor the stat file is readable ({e})")
            })
    })
}

/// Reads the conntrack count of every network namespace of the host: found
/// through processes, threads, namespace file descriptors, and nsfs bind
/// mounts of every mount namespace, each read from inside it. A namespace
/// that goes away while we look is left out; one that is still there but
/// cannot be read is listed in `unreadable`, never skipped silently.
pub fn census() -> Census {
    let init = crate::host::kernel::init_netns_inode();
    let own = crate::host::kernel::netns_inode();
    let slab = slab_active_objects();
    let mut out = Census {
        slab_active: slab.map(|(a, _)| a),
        slab_slack: slab.map_or(0, |(_, s)| s),
        ..Census::default()
    };
    let holders = scan_holders();
    let mut failed: Vec<(u64, String, String)> = Vec::new();
    for (inode, h) in &holders {
        let name = holder_name(*inode, h, init);
        let mut last = String::from("no path opens it");
        let mut got = None;
        if Some(*inode) == own {
            // Our own: no setns needed (nor CAP_SYS_ADMIN).
            match own_count() {
                Ok(c) => got = Some(c),
                Err(e) => last = e,
            }
        } else {
            for p in h.binds.iter().chain(&h.paths) {
                match visit_path(p, *inode, own_count) {
                    Ok(Ok(c)) => {
                        got = Some(c);
                        break;
                    }
                    Ok(Err(e)) => last = e,
                    Err(e) => last = e.to_string(),
                }
            }
        }
        match got {
            Some(count) => out.counts.push(LiveCount {
                inode: *inode,
                name,
                count,
            }),
            None => failed.push((*inode, name, last)),
        }
    }
    if !failed.is_empty() {
        // Gone meanwhile (its last process exited) is fine; still there and
        // unreadable is not.
        let now = scan_holders();
        out.unreadable = failed
            .into_iter()
            .filter(|(ino, _, _)| now.contains_key(ino))
            .map(|(_, n, e)| (n, e))
            .collect();
    }
    out
}

#[cfg(test)]
mod tests;
