use std::{fs, os::unix::fs::PermissionsExt as _, path::PathBuf};

use super::{
    Step,
    files::{remove_durable, write_durable},
    risks::{chain_risk, with_margin},
};
use crate::tune::sizing::Size;

#[test]
fn durable_writes_replace_and_remove() {
    let dir = std::env::temp_dir().join(format!("ctscope-apply-{}", std::process::id()));
    let p = dir.join("sub/f.conf");
    write_durable(&p, "a\n").expect("write");
    write_durable(&p, "b\n").expect("rewrite");
    assert_eq!(fs::read_to_string(&p).expect("read"), "b\n");
    assert_eq!(
        fs::metadata(&p).expect("meta").permissions().mode() & 0o777,
        0o644
    );
    // No temporary file is left behind.
    assert_eq!(fs::read_dir(dir.join("sub")).expect("ls").count(), 1);
    remove_durable(&p).expect("remove");
    remove_durable(&p).expect("remove twice");
    assert!(!p.exists());
    fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn margins_and_loads() {
    // max(10%, 256) above the live count.
    assert_eq!(with_margin(0), 256);
    assert_eq!(with_margin(100_000), 110_000);
    assert_eq!(with_margin(u64::MAX), u64::MAX);
    let s = |buckets, max| Size { buckets, max };
    // Better than now, or no worse: never a risk.
    assert_eq!(chain_risk(s(512, 1 << 20), s(1024, 1 << 20)), None);
    // λ = 2 x 2^31 / 512 = 8M: refused without any tail sum.
    let r = chain_risk(s(262_144, 262_144), s(1, 2_147_483_647)).expect("risk");
    assert!(r.contains("8388608.0 nodes per bucket"), "{r}");
    // λ = 2 at the kernel's default: fine.
    assert_eq!(chain_risk(s(262_144, 131_072), s(262_144, 262_144)), None);
}

#[test]
fn buckets_read_back_rounded() {
    let st = Step {
        name: "nf_conntrack_buckets".into(),
        path: PathBuf::new(),
        before: 0,
        after: 1000,
    };
    assert_eq!(st.read_back_value(1000), 1024);
    let m = Step {
        name: "nf_conntrack_max".into(),
        ..st
    };
    assert_eq!(m.read_back_value(1000), 1000);
}
