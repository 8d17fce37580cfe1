//! Attribution against a real Docker Engine: three containers on Docker's
//! default bridge send uneven numbers of distinct UDP flows to an address
//! outside the bridge, so Docker's own MASQUERADE rule tracks them in the
//! host namespace. ctscope (procfs mode) must give each container, by its
//! Docker name, exactly the flows it sent.
//!
//! The image is built here with `docker import` (no registry needed): only
//! `/bin/sleep` and its shared libraries, to keep each container's network
//! namespace alive. The flows are sent from a test thread that joined the
//! container's namespace (`setns`), which is what a process inside does.
//!
//! Skips when root or the Docker daemon is missing; `CTSCOPE_STRICT=1`
//! makes that a failure.

mod common;

use std::{
    fs,
    net::Ipv4Addr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::Command,
};

use common::{NamedNetns, Observe, run, skip, within};
use conntrack_user::{host::kernel, report::NetnsKind};

/// Everything the test creates, removed on drop (also when an assertion fails).
struct Lab {
    tag: String,
    image: String,
    containers: Vec<String>,
    host_veth: String,
    wan: Option<NamedNetns>,
    rootfs: PathBuf,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = Command::new("docker").args(["rm", "-f", c]).output();
        }
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.image])
            .output();
        let _ = Command::new("ip")
            .args(["link", "delete", &self.host_veth])
            .output();
        self.wan.take();
        let _ = fs::remove_dir_all(&self.rootfs);
        eprintln!("cleaned up {}", self.tag);
    }
}

fn docker_reachable() -> bool {
    Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `/bin/sleep` plus every library `ldd` lists for it, as an image.
fn build_image(rootfs: &Path, image: &str) {
    let bin = Path::new("/bin/sleep");
    let mut files = vec![bin.to_path_buf()];
    for line in run("ldd", &[bin.to_str().expect("path")]).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vdso has no file.
        let path = line
            .split("=>")
            .last()
            .and_then(|r| r.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        if let Some(p) = path {
            files.push(PathBuf::from(p));
        }
    }
    for f in &files {
        let dst = rootfs.join(f.strip_prefix("/").expect("absolute"));
        fs::create_dir_all(dst.parent().expect("parent")).expect("mkdir");
        fs::copy(f, &dst).unwrap_or_else(|e| panic!("copy {}: {e}", f.display()));
    }
    let tar = rootfs.with_extension("tar");
    run(
        "tar",
        &[
            "-C",
            rootfs.to_str().expect("path"),
            "-cf",
            tar.to_str().expect("path"),
            ".",
        ],
    );
    run("docker", &["import", tar.to_str().expect("path"), image]);
    let _ = fs::remove_file(tar);
}

const TRACK_OUT: &str = "table ip ctscope_track {\n chain out {\n  type filter hook output priority 0; policy accept;\n  ct state new counter\n }\n}\n";

#[test]
fn procfs_mode_attributes_docker_nat_by_container_name() {
    if !kernel::is_root() {
        return skip("needs root (Docker, network namespaces, setns)");
    }
    if !docker_reachable() {
        return skip("the Docker daemon is not reachable (docker version failed)");
    }
    let id = std::process::id() % 100_000;
    let tag = format!("ctscope-dk{id}");
    let mut lab = Lab {
        tag: tag.clone(),
        image: format!("{tag}:sleep"),
        containers: Vec::new(),
        host_veth: format!("ctdk{id}"),
        wan: None,
        rootfs: std::env::temp_dir().join(format!("{tag}-rootfs")),
    };
    let _ = fs::remove_dir_all(&lab.rootfs);
    build_image(&lab.rootfs, &lab.image);

    // The "internet": a namespace behind a host veth, 198.18.9.0/24. Leaving
    // through it (not docker0), container flows hit Docker's MASQUERADE.
    let wan = NamedNetns::new(&format!("ctdk-w{id}"));
    run(
        "ip",
        &[
            "link",
            "add",
            &lab.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &wan.name,
        ],
    );
    run(
        "ip",
        &["addr", "add", "198.18.9.1/24", "dev", &lab.host_veth],
    );
    run("ip", &["link", "set", &lab.host_veth, "up"]);
    wan.ip(&["addr", "add", "198.18.9.2/24", "dev", "eth0"]);
    wan.ip(&["link", "set", "eth0", "up"]);
    lab.wan = Some(wan);

    const FLOWS: [u16; 3] = [100, 300, 600];
    struct Box_ {
        name: String,
        id: String,
        pid: u32,
        ip: String,
    }
    let mut boxes = Vec::new();
    for (i, _) in FLOWS.iter().enumerate() {
        let name = format!("{tag}-{}", ["a", "b", "c"][i]);
        lab.containers.push(name.clone());
        let cid = run(
            "docker",
            &[
                "run",
                "-d",
                "--name",
                &name,
                "--network",
                "bridge",
                // No IPv6: its neighbour discovery would add entries.
                "--sysctl",
                "net.ipv6.conf.all.disable_ipv6=1",
                &lab.image,
                "/bin/sleep",
                "300",
            ],
        )
        .trim()
        .to_string();
        let inspect = run(
            "docker",
            &[
                "inspect",
                "-f",
                "{{.State.Pid}} {{.NetworkSettings.IPAddress}}",
                &cid,
            ],
        );
        let mut f = inspect.split_whitespace();
        let pid: u32 = f.next().and_then(|p| p.parse().ok()).expect("pid");
        let ip = f.next().expect("container address").to_string();
        // Make the container's own namespace track its traffic too, so it has
        // a netns row of its own (a process forked on a setns'd thread
        // inherits that thread's namespace).
        let rules = lab.rootfs.with_extension(format!("{i}.nft"));
        fs::write(&rules, TRACK_OUT).expect("write rules");
        let ns = PathBuf::from(format!("/proc/{pid}/ns/net"));
        within(&ns, || run("nft", &["-f", rules.to_str().expect("path")]));
        let _ = fs::remove_file(rules);
        boxes.push(Box_ {
            name,
            id: cid,
            pid,
            ip,
        });
    }
    // A new interface sends unsolicited IGMP reports for a few seconds (and
    // br_netfilter tracks bridged packets in the host): let them pass first.
    std::thread::sleep(std::time::Duration::from_secs(3));

    let obs = Observe::start("docker");
    let dst = Ipv4Addr::new(198, 18, 9, 2);
    let sent: Vec<u64> = boxes
        .iter()
        .zip(FLOWS)
        .map(|(b, n)| {
            common::send_flows(
                &PathBuf::from(format!("/proc/{}/ns/net", b.pid)),
                dst,
                20_000,
                n,
            )
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(800));
    // Independent truth: the host's own table, by original source.
    let table = fs::read_to_string("/proc/net/nf_conntrack").expect("host conntrack table");
    let truth: Vec<u64> = boxes
        .iter()
        .map(|b| {
            let needle = format!("src={} dst=198.18.9.2 ", b.ip);
            table.lines().filter(|l| l.contains(&needle)).count() as u64
        })
        .collect();
    let report = obs.stop();
    eprintln!("sent {sent:?}, host table by source {truth:?}");
    assert_eq!(
        sent,
        FLOWS.iter().map(|n| u64::from(*n)).collect::<Vec<_>>()
    );
    assert_eq!(truth, sent, "the host tracked every flow, NATed");

    for (b, n) in boxes.iter().zip(&sent) {
        let c = report
            .containers
            .iter()
            .find(|c| c.name == b.name)
            .unwrap_or_else(|| panic!("no container {}: {:?}", b.name, report.containers));
        eprintln!("container row: {c:?}");
        let inode = fs::metadata(format!("/proc/{}/ns/net", b.pid))
            .expect("netns")
            .ino();
        assert_eq!(c.id.as_deref(), Some(b.id.as_str()));
        assert_eq!(c.netns_inode, Some(inode));
        assert!(c.addresses.contains(&b.ip), "{c:?}");
        assert_eq!(
            c.nat_inserts,
            Some(*n),
            "{}: NAT inserts in the host",
            b.name
        );
        assert_eq!(
            c.own_inserts,
            Some(*n),
            "{}: inserts in its own namespace",
            b.name
        );
        assert_eq!(c.inserts, Some(2 * n));
        let row = report
            .netns
            .iter()
            .find(|r| r.inode == inode)
            .unwrap_or_else(|| panic!("no netns row for {}: {:?}", b.name, report.netns));
        assert_eq!(
            (row.name.as_str(), row.kind),
            (b.name.as_str(), NetnsKind::Container)
        );
        assert_eq!(row.inserts, Some(*n));
    }
    // The host namespace holds the NAT entries.
    let host = report
        .netns
        .iter()
        .find(|r| r.kind == NetnsKind::Host)
        .expect("host row");
    assert!(
        host.inserts.unwrap_or(0) >= sent.iter().sum::<u64>(),
        "{host:?}"
    );
}
