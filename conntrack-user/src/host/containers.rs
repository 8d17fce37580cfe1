//! Containers and the addresses their traffic leaves with: Docker containers
//! (Engine API, else the daemon's state directory) and named namespaces
//! under `--netns-containers PREFIX` (the VM lab's `ctlab-<name>`).
//!
//! Behind Docker's bridge NAT, a container's connections are tracked in the
//! host namespace with the container's address as original source; these
//! addresses are what attributes those entries to the container.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use crate::{
    host::docker,
    host::namespaces::{self, Netns},
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Container {
    /// Docker name without the leading `/`, or the lab name.
    pub name: String,
    /// Full Docker id; `None` for lab containers.
    pub id: Option<String>,
    pub netns_inode: Option<u64>,
    pub addresses: BTreeSet<IpAddr>,
}

/// Local IPv4 addresses in a `/proc/net/fib_trie` text: the address line
/// right before each `/32 host LOCAL` line, loopback left out.
pub(crate) fn local_v4_from_fib_trie(text: &str) -> BTreeSet<IpAddr> {
    let mut out = BTreeSet::new();
    let mut prev: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let t = line.trim();
        if t == "/32 host LOCAL" {
            if let Some(a) = prev.filter(|a| !a.is_loopback()) {
                out.insert(IpAddr::V4(a));
            }
        } else {
            prev = t.strip_prefix("|-- ").and_then(|a| a.parse().ok());
        }
    }
    out
}

/// Addresses in a `/proc/net/if_inet6` text, loopback and link-local left
/// out: link-local addresses never leave their link, so they are never the
/// source of an entry in another namespace.
pub(crate) fn v6_from_if_inet6(text: &str) -> BTreeSet<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let hex = l.split_whitespace().next()?;
            let v = u128::from_str_radix(hex, 16).ok()?;
            let a = Ipv6Addr::from(v);
            (!a.is_loopback() && !a.is_unicast_link_local()).then_some(IpAddr::V6(a))
        })
        .collect()
}

fn read_addresses(net_dir: &Path) -> BTreeSet<IpAddr> {
    let mut out = fs::read_to_string(net_dir.join("fib_trie"))
        .map(|t| local_v4_from_fib_trie(&t))
        .unwrap_or_default();
    if let Ok(t) = fs::read_to_string(net_dir.join("if_inet6")) {
        out.extend(v6_from_if_inet6(&t));
    }
    out
}

/// The local addresses configured in `ns`: through a process inside
/// (`/proc/PID/net`), else from inside the namespace.
pub(crate) fn namespace_addresses(ns: &Netns) -> BTreeSet<IpAddr> {
    if let Some(pid) = ns.pid {
        let a = read_addresses(Path::new(&format!("/proc/{pid}/net")));
        if !a.is_empty() {
            return a;
        }
    }
    namespaces::visit(ns, || read_addresses(Path::new("/proc/thread-self/net"))).unwrap_or_default()
}

/// IP addresses Docker assigned, from a container's `NetworkSettings`.
fn docker_addresses(settings: Option<&serde_json::Value>) -> BTreeSet<IpAddr> {
    let mut out = BTreeSet::new();
    let Some(s) = settings else {
        return out;
    };
    let mut take = |v: Option<&serde_json::Value>| {
        if let Some(a) = v.and_then(|v| v.as_str()).and_then(|s| s.parse().ok()) {
            out.insert(a);
        }
    };
    take(s.get("IPAddress"));
    take(s.get("GlobalIPv6Address"));
    if let Some(nets) = s.get("Networks").and_then(|n| n.as_object()) {
        for n in nets.values() {
            take(n.get("IPAddress"));
            take(n.get("GlobalIPv6Address"));
        }
    }
    out
}

/// Container directories read at most from the daemon's state directory.
const MAX_STATE_DIRS: usize = 10_000;

/// Running Docker containers as `(id, name, addresses, pid)`: the API first,
/// else the daemon's state directory.
fn docker_containers() -> Vec<(String, String, BTreeSet<IpAddr>, Option<u32>)> {
    if let Ok(list) = docker::get("/containers/json")
        && let Some(list) = list.as_array()
    {
        return list
            .iter()
            .filter_map(|c| {
                let id = c.get("Id")?.as_str()?.to_string();
                let name = c
                    .get("Names")
                    .and_then(|n| n.get(0))
                    .and_then(|n| n.as_str())
                    .map_or_else(
                        || crate::text::name(&id.chars().take(12).collect::<String>()),
                        |n| crate::text::name(n.trim_start_matches('/')),
                    );
                Some((id, name, docker_addresses(c.get("NetworkSettings")), None))
            })
            .collect();
    }
    let Ok(dir) = fs::read_dir(docker::CONTAINERS_DIR) else {
        return Vec::new();
    };
    // Bounded: a state directory is read per container, and a host has far
    // fewer containers than this.
    dir.flatten()
        .take(MAX_STATE_DIRS)
        .filter_map(|e| {
            let id = e.file_name().to_string_lossy().into_owned();
            let v = docker::config_v2(&id)?;
            let state = v.get("State")?;
            if state.get("Running").and_then(serde_json::Value::as_bool) != Some(true) {
                return None;
            }
            let name = crate::text::name(v.get("Name")?.as_str()?.trim_start_matches('/'));
            let pid = state
                .get("Pid")
                .and_then(serde_json::Value::as_u64)
                .and_then(|p| u32::try_from(p).ok())
                .filter(|p| *p > 0);
            Some((id, name, docker_addresses(v.get("NetworkSettings")), pid))
        })
        .collect()
}

/// Every container, given the namespaces found: Docker containers (matched
/// to their namespace by the cgroup scan, or by the daemon's `State.Pid`)
/// and lab containers. Sorted by name.
pub(crate) fn discover(nss: &[Netns]) -> Vec<Container> {
    let mut out: BTreeMap<String, Container> = BTreeMap::new();
    for (id, name, mut addresses, pid) in docker_containers() {
        let ns = nss
            .iter()
            .find(|n| n.docker_id.as_deref() == Some(id.as_str()))
            .or_else(|| {
                let ino = fs::metadata(format!("/proc/{}/ns/net", pid?))
                    .ok()
                    .map(|m| std::os::unix::fs::MetadataExt::ino(&m))?;
                nss.iter().find(|n| n.inode == ino)
            });
        if let Some(ns) = ns {
            addresses.extend(namespace_addresses(ns));
        }
        out.insert(
            name.clone(),
            Container {
                name,
                id: Some(id),
                netns_inode: ns.map(|n| n.inode),
                addresses,
            },
        );
    }
    for ns in nss {
        if let Some(name) = ns.named_container() {
            out.entry(name.to_string()).or_insert_with(|| Container {
                name: name.to_string(),
                id: None,
                netns_inode: Some(ns.inode),
                addresses: namespace_addresses(ns),
            });
        }
    }
    out.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // /proc/net/fib_trie of a Docker container on 6.18 (addresses in both the
    // Main and the Local table).
    const FIB_TRIE: &str = "Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 172.17.0.0/16 2 0 2
        +-- 172.17.0.0/30 2 0 2
           |-- 172.17.0.0
              /16 link UNICAST
           |-- 172.17.0.2
              /32 host LOCAL
        |-- 172.17.255.255
           /32 link BROADCAST
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 172.17.0.2
        /32 host LOCAL
";

    #[test]
    fn local_addresses_from_fib_trie() {
        let a = local_v4_from_fib_trie(FIB_TRIE);
        assert_eq!(a, BTreeSet::from([IpAddr::from([172, 17, 0, 2])]));
    }

    #[test]
    fn global_v6_only() {
        let t = "00000000000000000000000000000001 01 80 10 80       lo\n\
                 fe800000000000000042acfffe110002 02 40 20 80     eth0\n\
                 20010db8000000000000000000000002 02 40 00 80     eth0\n";
        let a = v6_from_if_inet6(t);
        assert_eq!(
            a,
            BTreeSet::from(["2001:db8::2".parse::<IpAddr>().expect("addr")])
        );
    }

    #[test]
    fn docker_settings() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"IPAddress":"","Networks":{"bridge":{"IPAddress":"172.17.0.3","GlobalIPv6Address":""}}}"#,
        )
        .expect("json");
        assert_eq!(
            docker_addresses(Some(&v)),
            BTreeSet::from([IpAddr::from([172, 17, 0, 3])])
        );
    }
}
