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
    let Some(init) = crate::host::kernel::init_netns_inode() else {
        return;
    };
    let host = all
        .iter()
        .find(|n| n.inode == init)
        .expect("init netns found");
    assert_eq!((host.name.as_str(), host.kind), ("host", Kind::Host));
    // Our own namespace is always found (through our own pid).
    let me = crate::host::kernel::netns_inode().expect("own netns");
    assert!(all.iter().any(|n| n.inode == me));
    let mut inodes: Vec<u64> = all.iter().map(|n| n.inode).collect();
    inodes.dedup();
    assert_eq!(inodes.len(), all.len(), "one row per namespace");
}

#[test]
fn visit_reads_the_visited_namespace() {
    let me = crate::host::kernel::netns_inode().expect("own netns");
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
        Err(NsError::Setns { .. }) => assert!(!crate::host::kernel::is_root()),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn namespace_links_and_mountinfo_escapes() {
    assert_eq!(net_link_inode("net:[4026531840]"), Some(4_026_531_840));
    assert_eq!(net_link_inode("socket:[123]"), None);
    assert_eq!(net_link_inode("net:[x]"), None);
    assert_eq!(unescape_mountinfo("/run/netns/a\\040b"), "/run/netns/a b");
    assert_eq!(unescape_mountinfo("/x\\134y"), "/x\\y");
    assert_eq!(unescape_mountinfo("/tail\\04"), "/tail\\04");
    // \777 is 511: no byte; it overflowed a u8 (a debug panic) before.
    assert_eq!(unescape_mountinfo("/a\\777"), "/a\\777");
}

#[test]
fn census_reads_our_own_namespace() {
    let me = crate::host::kernel::netns_inode().expect("own netns");
    let c = census();
    if !std::path::Path::new("/proc/sys/net/netfilter/nf_conntrack_count").exists() {
        return;
    }
    // Our own namespace is read without setns, so even unprivileged.
    let own = c
        .counts
        .iter()
        .find(|n| n.inode == me)
        .expect("own netns counted");
    assert!(c.unreadable.iter().all(|(n, _)| *n != own.name));
    assert!(c.total() >= own.count);
    if let Some(bound) = c.unseen_bound() {
        // The slab holds every entry of every namespace.
        assert!(c.slab_active.unwrap_or(0) >= c.total(), "{c:?}");
        assert!(bound <= c.slab_active.unwrap_or(0));
    }
}

#[test]
fn named_containers_by_prefix() {
    let mut ns = Netns {
        inode: 1,
        path: PathBuf::new(),
        name: String::new(),
        kind: Kind::Netns,
        docker_id: None,
        netns_name: Some("ctlab-web".into()),
        pid: None,
    };
    assert_eq!(ns.container_by("ctlab-"), Some("web"));
    // The lab's wan namespace is not under the prefix.
    ns.netns_name = Some("ctwan".into());
    assert_eq!(ns.container_by("ctlab-"), None);
    // The prefix alone names no container.
    ns.netns_name = Some("ctlab-".into());
    assert_eq!(ns.container_by("ctlab-"), None);
    // Unset (this test process never sets it): no named namespace is a container.
    ns.netns_name = Some("ctlab-web".into());
    assert_eq!(ns.named_container(), None);
}

#[test]
fn container_prefixes_are_checked() {
    assert!(set_container_prefix("").is_err());
    assert!(set_container_prefix("a/b").is_err());
    assert!(set_container_prefix("a\u{1b}[2J").is_err());
    assert!(set_container_prefix(&"x".repeat(65)).is_err());
}
