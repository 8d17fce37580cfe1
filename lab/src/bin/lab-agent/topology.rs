//! The Docker-like host: bridge `ctlab0` (172.17.0.1/16) with one namespace per container behind
//! it, a "wan" namespace (198.18.0.2/24) over a veth, forwarding, and Docker's masquerade rule.
//! Conntrack entries of container traffic therefore live in the host namespace.
//!
//! Every MAC address is fixed and every neighbour entry permanent: no flow waits for ARP, so a
//! burst cannot lose packets in a neighbour queue before they reach conntrack.

use anyhow::{Context, Result};
use ctscope_lab::Scenario;

use crate::cmd::{self, Tools};
use crate::netns::Netns;

pub(crate) const BRIDGE: &str = "ctlab0";
pub(crate) const BRIDGE_IP: &str = "172.17.0.1";
const BRIDGE_MAC: &str = "02:42:ac:11:00:01";
/// Not under the containers' `ctlab-` prefix: the wan is not a container.
pub(crate) const WAN_NS: &str = "ctwan";
/// The wan namespace's address: the loadgen server listens here.
pub(crate) const WAN_IP: &str = "198.18.0.2";
const HOST_WAN_IP: &str = "198.18.0.1";
const HOST_WAN_DEV: &str = "ctw-host";
const HOST_WAN_MAC: &str = "02:c6:12:00:00:01";
const WAN_PEER: &str = "ctw-wan";
const WAN_MAC: &str = "02:c6:12:00:00:02";
pub(crate) const NFT_FILE: &str = "/tmp/ctlab.nft";

/// Docker's masquerade rule. The empty prerouting nat chain costs nothing and keeps older
/// kernels, which wanted both nat hooks registered, happy. Numeric priorities: older nft lacks
/// the keywords.
pub(crate) const NFT_RULES: &str = r#"table ip ctlab_nat {
    chain prerouting {
        type nat hook prerouting priority -100; policy accept;
    }
    chain postrouting {
        type nat hook postrouting priority 100; policy accept;
        ip saddr 172.17.0.0/16 oifname != "ctlab0" masquerade
    }
}
"#;

/// A container's own stateful firewall (`firewall = true`): any `ct` expression makes conntrack
/// track every flow of the namespace, as a container running its own iptables/nftables would.
pub(crate) const NFT_FIREWALL: &str = r"table inet ctlab_fw {
    chain output {
        type filter hook output priority 0; policy accept;
        ct state new counter
    }
}
";
const NFT_FIREWALL_FILE: &str = "/tmp/ctlab-fw.nft";

/// `ctscope serve` scenarios: the agent's scrapes go over loopback in the host namespace,
/// where they would be tracked like the workload and counted in the truth's and ctscope's
/// figures (the scrape's own SYN is confirmed before serve reads its counters). Loopback is
/// left untracked instead, and brought up (the initramfs leaves it down).
pub(crate) const NFT_NOTRACK_LO: &str = r"table ip ctlab_lo {
    chain pre {
        type filter hook prerouting priority -300; policy accept;
        iifname lo notrack
    }
    chain out {
        type filter hook output priority -300; policy accept;
        oifname lo notrack
    }
}
";
const NFT_NOTRACK_LO_FILE: &str = "/tmp/ctlab-lo.nft";

/// Loopback up and untracked in the host namespace (see [`NFT_NOTRACK_LO`]).
pub(crate) fn untracked_loopback(tools: &Tools) -> Result<()> {
    cmd::ip(tools, "link set lo up").context("bringing loopback up")?;
    std::fs::write(NFT_NOTRACK_LO_FILE, NFT_NOTRACK_LO)
        .with_context(|| format!("write {NFT_NOTRACK_LO_FILE}"))?;
    cmd::run(&tools.nft, &["-f", NFT_NOTRACK_LO_FILE])
        .context("loading the loopback notrack rule")?;
    Ok(())
}

/// Address and MAC of the container at `index` (0-based): 172.17.0.(index+2). Validation keeps
/// index below 200, so the last byte fits.
pub(crate) fn container_addr(index: usize) -> (String, String) {
    let n = index + 2;
    (format!("172.17.0.{n}"), format!("02:42:ac:11:00:{n:02x}"))
}

/// Builds everything; returns the namespaces it created (wan first, then containers).
pub(crate) fn build(scenario: &Scenario, tools: &Tools) -> Result<Vec<Netns>> {
    let ip = |args: String| cmd::ip(tools, &args);
    let mut created = Vec::new();

    // No stray IPv4 packets from the host itself during a run: a bridge with multicast snooping
    // joins 224.0.0.106 and sends IGMP reports for it (seen: one extra conntrack entry to
    // 224.0.0.22), and link-local group reports would do the same for any other join.
    let igmp = "/proc/sys/net/ipv4/igmp_link_local_mcast_reports";
    if std::path::Path::new(igmp).exists() {
        std::fs::write(igmp, "0\n").with_context(|| format!("write 0 to {igmp}"))?;
    }
    ip(format!("link add {BRIDGE} type bridge mcast_snooping 0"))?;
    ip(format!("link set {BRIDGE} address {BRIDGE_MAC}"))?;
    ip(format!("addr add {BRIDGE_IP}/16 dev {BRIDGE}"))?;
    ip(format!("link set {BRIDGE} up"))?;

    ip(format!("netns add {WAN_NS}"))?;
    created.push(Netns::Named(WAN_NS.to_string()));
    ip(format!(
        "link add {HOST_WAN_DEV} address {HOST_WAN_MAC} type veth peer name {WAN_PEER} address {WAN_MAC}"
    ))?;
    ip(format!("link set {WAN_PEER} netns {WAN_NS}"))?;
    ip(format!("-n {WAN_NS} link set {WAN_PEER} name eth0"))?;
    ip(format!("-n {WAN_NS} addr add {WAN_IP}/24 dev eth0"))?;
    ip(format!("-n {WAN_NS} link set eth0 up"))?;
    ip(format!("-n {WAN_NS} link set lo up"))?;
    ip(format!(
        "-n {WAN_NS} neigh replace {HOST_WAN_IP} lladdr {HOST_WAN_MAC} dev eth0 nud permanent"
    ))?;
    ip(format!("addr add {HOST_WAN_IP}/24 dev {HOST_WAN_DEV}"))?;
    ip(format!("link set {HOST_WAN_DEV} up"))?;
    ip(format!(
        "neigh replace {WAN_IP} lladdr {WAN_MAC} dev {HOST_WAN_DEV} nud permanent"
    ))?;

    for (index, c) in scenario.containers.iter().enumerate() {
        let ns = c.netns();
        let (addr, mac) = container_addr(index);
        let host_dev = format!("ctv-{}", c.name);
        let peer = format!("ctp-{}", c.name);
        ip(format!("netns add {ns}"))?;
        created.push(Netns::Named(ns.clone()));
        ip(format!(
            "link add {host_dev} type veth peer name {peer} address {mac}"
        ))?;
        ip(format!("link set {peer} netns {ns}"))?;
        ip(format!("-n {ns} link set {peer} name eth0"))?;
        ip(format!("-n {ns} addr add {addr}/16 dev eth0"))?;
        ip(format!("-n {ns} link set eth0 up"))?;
        ip(format!("-n {ns} link set lo up"))?;
        ip(format!("-n {ns} route add default via {BRIDGE_IP}"))?;
        ip(format!(
            "-n {ns} neigh replace {BRIDGE_IP} lladdr {BRIDGE_MAC} dev eth0 nud permanent"
        ))?;
        ip(format!("link set {host_dev} master {BRIDGE}"))?;
        ip(format!("link set {host_dev} up"))?;
        ip(format!(
            "neigh replace {addr} lladdr {mac} dev {BRIDGE} nud permanent"
        ))?;
    }

    if scenario.containers.iter().any(|c| c.firewall) {
        std::fs::write(NFT_FIREWALL_FILE, NFT_FIREWALL)
            .with_context(|| format!("write {NFT_FIREWALL_FILE}"))?;
    }
    for c in scenario.containers.iter().filter(|c| c.firewall) {
        let ns = c.netns();
        cmd::run(
            &tools.ip,
            &["netns", "exec", &ns, &tools.nft, "-f", NFT_FIREWALL_FILE],
        )
        .with_context(|| format!("loading the firewall of {ns}"))?;
    }

    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1\n").context("enable ip_forward")?;
    std::fs::write(NFT_FILE, NFT_RULES).with_context(|| format!("write {NFT_FILE}"))?;
    cmd::run(&tools.nft, &["-f", NFT_FILE]).context("loading the masquerade rule")?;
    Ok(created)
}

/// Removes what [`build`] created, best effort (inside the VM the power-off does it anyway;
/// outside, this keeps a test host clean). Returns the failures.
pub(crate) fn teardown(scenario: &Scenario, tools: &Tools) -> Vec<String> {
    let mut failures = Vec::new();
    let mut quiet = |args: String| {
        if let Err(e) = cmd::ip(tools, &args) {
            failures.push(format!("{e:#}"));
        }
    };
    for c in &scenario.containers {
        quiet(format!("netns del {}", c.netns()));
    }
    quiet(format!("netns del {WAN_NS}"));
    quiet(format!("link del {BRIDGE}"));
    if let Err(e) = cmd::run(&tools.nft, &["delete", "table", "ip", "ctlab_nat"]) {
        failures.push(format!("{e:#}"));
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_addresses() {
        assert_eq!(
            container_addr(0),
            ("172.17.0.2".to_string(), "02:42:ac:11:00:02".to_string())
        );
        assert_eq!(
            container_addr(199),
            ("172.17.0.201".to_string(), "02:42:ac:11:00:c9".to_string())
        );
    }
}
