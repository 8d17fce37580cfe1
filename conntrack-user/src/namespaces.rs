//! Every network namespace of the host, named, and a way to run code inside
//! one of them.
//!
//! Conntrack is per namespace (each has its own `nf_conntrack_count` and stat
//! file, kernel-conntrack notes §6), so ctscope visits each namespace to read
//! them. Namespaces are found through the processes in them
//! (`/proc/*/ns/net`) and through `ip netns` bind mounts (`/run/netns/*`),
//! which hold a namespace open with no process inside.

use std::{
    collections::BTreeMap,
    fs,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use thiserror::Error;

use crate::{
    docker,
    procfs::{self, StatTotals},
    report::NetnsKind,
    text,
};

pub const NETNS_RUN_DIR: &str = "/run/netns";
pub const DOCKER_NETNS_DIR: &str = "/var/run/docker/netns";
/// Named namespaces `ctlab-<name>` are containers of the VM lab
/// (docs/lab-contract.md): Docker-like namespaces behind the `ctlab0` bridge.
pub const LAB_PREFIX: &str = "ctlab-";
/// The lab's "internet" namespace, which is not a container.
pub const LAB_WAN: &str = "ctlab-wan";

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

/// One network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    pub inode: u64,
    /// A path that opens it: `/proc/PID/ns/net` or `/run/netns/NAME`.
    pub path: PathBuf,
    pub name: String,
    pub kind: NetnsKind,
    /// Docker container id when a process inside is in a Docker cgroup.
    pub docker_id: Option<String>,
    /// `ip netns` name when one is bound to it.
    pub netns_name: Option<String>,
    /// A process inside, if any (its `/proc/PID/net` shows this namespace).
    pub pid: Option<u32>,
}

impl Netns {
    /// Lab containers are named netns `ctlab-<name>`, except the wan.
    pub fn lab_container_name(&self) -> Option<&str> {
        let n = self.netns_name.as_deref()?;
        if n == LAB_WAN {
            return None;
        }
        n.strip_prefix(LAB_PREFIX).filter(|s| !s.is_empty())
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
    let init = crate::kernel::init_netns_inode();
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
                kind: NetnsKind::Netns,
                docker_id,
                netns_name: f.netns_name,
                pid,
            };
            (ns.name, ns.kind) = name_of(&ns, Some(inode) == init);
            Some(ns)
        })
        .collect()
}

fn name_of(ns: &Netns, is_init: bool) -> (String, NetnsKind) {
    if is_init {
        return ("host".into(), NetnsKind::Host);
    }
    if let Some(id) = &ns.docker_id {
        let name = docker::container_name(id).unwrap_or_else(|| id.chars().take(12).collect());
        return (name, NetnsKind::Container);
    }
    if let Some(lab) = ns.lab_container_name() {
        return (lab.to_string(), NetnsKind::Container);
    }
    if let Some(n) = &ns.netns_name {
        return (n.clone(), NetnsKind::Netns);
    }
    let comm = ns
        .pid
        .and_then(|p| fs::read_to_string(format!("/proc/{p}/comm")).ok())
        // Set by the process itself (prctl PR_SET_NAME): any 15 bytes.
        .map(|c| text::name(c.trim_end_matches('\n')))
        .unwrap_or_else(|| format!("netns-{}", ns.inode));
    (comm, NetnsKind::Netns)
}

/// Runs `f` inside `ns`, on a dedicated short-lived thread that joined the
/// namespace with `setns(2)`: only that thread changes namespace, never the
/// caller's. Inside `f`, `/proc/thread-self/net` and `/proc/sys/net` show
/// `ns`, and sockets created there stay bound to `ns` for their whole life.
pub fn visit<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> Result<T, NsError> {
    visit_path(&ns.path, ns.inode, f)
}

/// [`visit`] by path, checking that the path still opens namespace `inode`.
pub fn visit_path<T: Send>(
    ns_path: &Path,
    inode: u64,
    f: impl FnOnce() -> T + Send,
) -> Result<T, NsError> {
    let path = ns_path.display().to_string();
    let file = fs::File::open(ns_path).map_err(|source| NsError::Open {
        path: path.clone(),
        source,
    })?;
    // A pid can be reused by a process in another namespace between discovery
    // and now: check that the open file is still the namespace we mean.
    if file.metadata().map(|m| m.ino()).ok() != Some(inode) {
        return Err(NsError::Vanished { path, inode });
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: `file` is an open nsfs file descriptor that outlives this
            // call; setns(CLONE_NEWNET) changes the network namespace of this
            // thread only (a fresh scoped thread that ends right after `f`).
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(NsError::Setns {
                    path: path.clone(),
                    source: std::io::Error::last_os_error(),
                });
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(NsError::Panicked { path: path.clone() }))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_file_left_where_a_namespace_was_bound_is_not_a_namespace() {
        let nsfs = nsfs_dev();
        assert!(nsfs.is_some(), "/proc/self/ns/net unreadable");
        let own = Path::new("/proc/self/ns/net");
        assert_eq!(bound_ns_inode(own, nsfs), ns_inode(own));
        // What Docker leaves in /var/run/docker/netns after a container stops:
        // an empty regular file on tmpfs, with an inode of its own.
        let dir = std::env::temp_dir().join(format!("ctscope-nsfs-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let stale = dir.join("94cd9f849c73");
        fs::write(&stale, b"").expect("stale file");
        let got = bound_ns_inode(&stale, nsfs);
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(got, None);
    }

    #[test]
    fn finds_the_initial_namespace_as_host() {
        let all = discover();
        let Some(init) = crate::kernel::init_netns_inode() else {
            return;
        };
        let host = all
            .iter()
            .find(|n| n.inode == init)
            .expect("init netns found");
        assert_eq!((host.name.as_str(), host.kind), ("host", NetnsKind::Host));
        // Our own namespace is always found (through our own pid).
        let me = crate::kernel::netns_inode().expect("own netns");
        assert!(all.iter().any(|n| n.inode == me));
        let mut inodes: Vec<u64> = all.iter().map(|n| n.inode).collect();
        inodes.dedup();
        assert_eq!(inodes.len(), all.len(), "one row per namespace");
    }

    #[test]
    fn visit_reads_the_visited_namespace() {
        let me = crate::kernel::netns_inode().expect("own netns");
        let all = discover();
        let own = all.iter().find(|n| n.inode == me).expect("own netns found");
        let seen = visit(own, || {
            fs::metadata("/proc/thread-self/ns/net")
                .map(|m| m.ino())
                .ok()
        });
        match seen {
            Ok(ino) => assert_eq!(ino, Some(me)),
            // Unprivileged: setns needs CAP_SYS_ADMIN.
            Err(NsError::Setns { .. }) => assert!(!crate::kernel::is_root()),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn lab_names() {
        let mut ns = Netns {
            inode: 1,
            path: PathBuf::new(),
            name: String::new(),
            kind: NetnsKind::Netns,
            docker_id: None,
            netns_name: Some("ctlab-web".into()),
            pid: None,
        };
        assert_eq!(ns.lab_container_name(), Some("web"));
        ns.netns_name = Some(LAB_WAN.into());
        assert_eq!(ns.lab_container_name(), None);
        ns.netns_name = Some("other".into());
        assert_eq!(ns.lab_container_name(), None);
    }
}
