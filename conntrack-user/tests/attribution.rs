//! Attribution in procfs mode against real namespaces and NAT: two lab-style
//! containers (`ctlab-<name>` namespaces) behind a bridge with masquerade in
//! a router namespace send known numbers of distinct UDP flows; ctscope must
//! count each namespace's inserts as the kernel's own count rises, and give
//! each container exactly its flows as NAT inserts in the router namespace.
//! Needs root; skips otherwise, failing under `CTSCOPE_STRICT=1`.

mod common;

use std::net::Ipv4Addr;

use common::{NamedNetns, Observe, count_in, send_flows, skip, within};
use conntrack_user::{
    host::kernel,
    report::{Mode, NetnsKind},
};

/// Conntrack only tracks a namespace whose rules need it: this makes the
/// containers' own namespaces track their traffic too (IPv4 only).
const TRACK_OUT: &str = "table ip ctscope_track {\n chain out {\n  type filter hook output priority 0; policy accept;\n  ct state new counter\n }\n}\n";

const NAT: &str = "table ip ctscope_nat {\n chain post {\n  type nat hook postrouting priority 100; policy accept;\n  ip saddr 10.77.0.0/24 oifname \"wan0\" masquerade\n }\n}\n";

#[test]
fn procfs_mode_attributes_nat_inserts_to_lab_containers() {
    if !kernel::is_root() {
        return skip("needs root (network namespaces, nftables, setns)");
    }
    let id = std::process::id() % 100_000;
    let router = NamedNetns::new(&format!("ctat-r{id}"));
    let a_name = format!("ta{id}");
    let b_name = format!("tb{id}");
    let a = NamedNetns::new(&format!("ctlab-{a_name}"));
    let b = NamedNetns::new(&format!("ctlab-{b_name}"));

    // Router: bridge br0 10.77.0.1/24 with one veth per container, and a
    // veth wan0 198.18.7.1/24 to a "wan" namespace (198.18.7.2, no conntrack
    // rules) where the masqueraded flows go.
    let wan_ns = NamedNetns::new(&format!("ctat-w{id}"));
    router.ip(&["link", "add", "br0", "type", "bridge"]);
    router.ip(&["addr", "add", "10.77.0.1/24", "dev", "br0"]);
    router.ip(&["link", "set", "br0", "up"]);
    router.ip(&[
        "link",
        "add",
        "wan0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &wan_ns.name,
    ]);
    router.ip(&["addr", "add", "198.18.7.1/24", "dev", "wan0"]);
    router.ip(&["link", "set", "wan0", "up"]);
    wan_ns.ip(&["addr", "add", "198.18.7.2/24", "dev", "eth0"]);
    wan_ns.ip(&["link", "set", "eth0", "up"]);
    router.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    router.nft(NAT);
    for (ns, veth, addr) in [(&a, "va", "10.77.0.2/24"), (&b, "vb", "10.77.0.3/24")] {
        router.ip(&[
            "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ]);
        router.ip(&["link", "set", veth, "master", "br0", "up"]);
        ns.ip(&["addr", "add", addr, "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["route", "add", "default", "via", "10.77.0.1"]);
        ns.nft(TRACK_OUT);
    }
    // Let the links settle (bridge port state; br0's own IGMP report, which
    // the router tracks too) before counting.
    std::thread::sleep(std::time::Duration::from_millis(1500));

    let nss = [&router, &a, &b];
    let before: Vec<u64> = nss.iter().map(|n| count_in(&n.path())).collect();
    let obs = Observe::start("attribution");
    const FLOWS_A: u16 = 120;
    const FLOWS_B: u16 = 250;
    let wan = Ipv4Addr::new(198, 18, 7, 2);
    let sent_a = send_flows(&a.path(), wan, 20_000, FLOWS_A);
    let sent_b = send_flows(&b.path(), wan, 20_000, FLOWS_B);
    // Forwarded packets are confirmed in the router's softirq, after send().
    std::thread::sleep(std::time::Duration::from_millis(800));
    let after: Vec<u64> = nss.iter().map(|n| count_in(&n.path())).collect();
    let flows_seen: Vec<u64> = nss
        .iter()
        .map(|n| {
            within(&n.path(), || {
                std::fs::read_to_string("/proc/thread-self/net/nf_conntrack")
                    .expect("conntrack table")
                    .lines()
                    .filter(|l| l.contains("udp") && l.contains(" dst=198.18.7.2 "))
                    .count() as u64
            })
        })
        .collect();
    let report = obs.stop();
    assert_eq!((sent_a, sent_b), (u64::from(FLOWS_A), u64::from(FLOWS_B)));
    assert_eq!(report.mode, Mode::Procfs);

    // Independent truth: each namespace's table holds exactly the flows
    // through it, and its own count rose by its inserts (UDP entries live
    // 30 s, nothing expires during the test; a stray entry such as an IGMP
    // report of the router's bridge counts in both the rise and ctscope).
    let rise: Vec<u64> = after.iter().zip(&before).map(|(x, y)| x - y).collect();
    eprintln!("count rises (router, a, b): {rise:?}, flows in tables {flows_seen:?}");
    assert_eq!(
        flows_seen,
        vec![sent_a + sent_b, sent_a, sent_b],
        "kernel tables"
    );

    for (ns, want_name, want_kind, r) in [
        (&router, router.name.as_str(), NetnsKind::Netns, rise[0]),
        (&a, a_name.as_str(), NetnsKind::Container, rise[1]),
        (&b, b_name.as_str(), NetnsKind::Container, rise[2]),
    ] {
        let row = report
            .netns
            .iter()
            .find(|n| n.inode == ns.inode())
            .unwrap_or_else(|| panic!("no netns row for {}: {:?}", ns.name, report.netns));
        eprintln!("netns row: {row:?}");
        assert_eq!((row.name.as_str(), row.kind), (want_name, want_kind));
        assert_eq!(row.inserts, Some(r), "{}", ns.name);
        assert_eq!(
            row.live_entries,
            Some(after[nss.iter().position(|n| n.name == ns.name).expect("ns")])
        );
        // The kernel refused nothing, and says so in this namespace's stat file.
        assert_eq!(row.kernel_stats.get("insert_failed"), Some(&0), "{row:?}");
        assert_eq!(row.drops.chain_too_long, Some(0));
        assert!(row.drops.table_full.is_none() && row.drops.clash.is_none());
    }

    for (name, ns, ip, sent) in [
        (&a_name, &a, "10.77.0.2", sent_a),
        (&b_name, &b, "10.77.0.3", sent_b),
    ] {
        let c = report
            .containers
            .iter()
            .find(|c| &c.name == name)
            .unwrap_or_else(|| panic!("no container {name}: {:?}", report.containers));
        eprintln!("container row: {c:?}");
        assert_eq!(c.id, None);
        assert_eq!(c.netns_inode, Some(ns.inode()));
        assert_eq!(c.addresses, vec![ip.to_string()]);
        assert_eq!(
            c.nat_inserts,
            Some(sent),
            "{name}: NAT inserts in the router"
        );
        assert_eq!(
            c.own_inserts,
            Some(sent),
            "{name}: inserts in its own namespace"
        );
        assert_eq!(c.inserts, Some(2 * sent));
        // Own entries plus the router's entries from its address.
        assert_eq!(c.live_entries, Some(2 * sent));
        assert_eq!(c.drops, None, "procfs mode does not attribute drops");
    }
    // The router namespace is not a container.
    assert!(!report.containers.iter().any(|c| c.name.contains("ctat-r")));
    // Lifetimes are measured from events (none ended during the test).
    assert!(report.lifetimes.is_some());
    // Modeled chains, from the entries of every namespace in the one table.
    let chains = report.chain_length.expect("modeled chain lengths");
    assert!(chains.orig.modeled && chains.reply.modeled);
    assert!(chains.orig.p50 >= 1 && chains.orig.max >= chains.orig.p99);
}
