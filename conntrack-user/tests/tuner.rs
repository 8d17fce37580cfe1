//! The tuner against the real host kernel (conntrack built in, initial
//! namespace): a recommendation from a real observation, a real apply and
//! rollback of real sysctls, and every way apply must refuse, each leaving the
//! host exactly as it was. Persisted files go to a scratch /etc. The tests
//! change the host's real settings, so they run one at a time and put back
//! what they found even when they fail.

mod common;

use std::{
    collections::BTreeMap,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::Mutex,
};

use common::{NamedNetns, send_flows, skip};
use conntrack_user::{host::kernel, host::procfs};
use serde_json::{Value, json};

/// One test at a time: they share the host's settings.
static HOST: Mutex<()> = Mutex::new(());

const KNOBS: &[&str] = &[
    "nf_conntrack_buckets",
    "nf_conntrack_max",
    "nf_conntrack_udp_timeout",
    "nf_conntrack_generic_timeout",
    "nf_conntrack_tcp_timeout_established",
];

fn knobs() -> BTreeMap<String, u64> {
    KNOBS
        .iter()
        .map(|k| (k.to_string(), procfs::sysctl(k).expect("readable sysctl")))
        .collect()
}

/// Puts the host's settings back on drop, whatever the test did.
struct Restore(BTreeMap<String, u64>);

impl Drop for Restore {
    fn drop(&mut self) {
        for (k, v) in &self.0 {
            let p = Path::new(procfs::SYSCTL_DIR).join(k);
            if procfs::read_u64(&p).ok() != Some(*v) {
                let _ = fs::write(&p, format!("{v}\n"));
            }
        }
    }
}

/// Root, conntrack and the initial namespace, or a skip.
fn ready() -> Option<(std::sync::MutexGuard<'static, ()>, Restore, Scratch)> {
    if !kernel::is_root() {
        skip("needs root: apply writes kernel settings");
        return None;
    }
    if !Path::new(procfs::SYSCTL_DIR)
        .join("nf_conntrack_max")
        .exists()
    {
        skip("no conntrack on this kernel");
        return None;
    }
    if kernel::init_netns_inode() != kernel::netns_inode() {
        skip("not in the initial network namespace");
        return None;
    }
    let guard = HOST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Some((guard, Restore(knobs()), Scratch::new()))
}

/// A scratch /etc and state directory.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ctscope-tuner-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("etc")).expect("mkdir");
        Scratch { dir }
    }
    fn etc(&self) -> PathBuf {
        self.dir.join("etc")
    }
    fn state(&self) -> PathBuf {
        self.dir.join("state")
    }
    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    /// Every file under the scratch /etc.
    fn etc_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for sub in ["sysctl.d", "modprobe.d", "modules-load.d"] {
            if let Ok(rd) = fs::read_dir(self.etc().join(sub)) {
                out.extend(rd.flatten().map(|e| e.path()));
            }
        }
        out
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn ctscope(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ctscope"))
        .args(args)
        .output()
        .expect("run ctscope")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A real recommendation: a short procfs observation of this host, then
/// `recommend --json`.
fn real_recommendation(s: &Scratch) -> Value {
    let report = s.file("report.json");
    let o = ctscope(&[
        "observe",
        "--mode",
        "procfs",
        "--duration",
        "2s",
        "--quiet",
        "--json",
        report.to_str().expect("utf-8"),
    ]);
    assert!(o.status.success(), "observe: {}", text(&o));
    let o = ctscope(&[
        "recommend",
        "--from",
        report.to_str().expect("utf-8"),
        "--json",
    ]);
    assert!(o.status.success(), "recommend: {}", text(&o));
    serde_json::from_slice(&o.stdout).expect("recommend --json prints JSON")
}

/// A recommendation that changes the host a little and safely: buckets one
/// page up, max 4096 up, udp_timeout one second down.
fn gentle(s: &Scratch) -> Value {
    let mut rec = real_recommendation(s);
    let now = knobs();
    rec["buckets"] = json!(now["nf_conntrack_buckets"] + 512);
    rec["max"] = json!(now["nf_conntrack_max"] + 4096);
    rec["timeouts"] = json!({"udp_timeout": now["nf_conntrack_udp_timeout"] - 1});
    rec
}

fn write_rec(s: &Scratch, name: &str, rec: &Value) -> PathBuf {
    let p = s.file(name);
    fs::write(&p, rec.to_string()).expect("write recommendation");
    p
}

fn apply(s: &Scratch, rec: &Path, extra: &[&str]) -> Output {
    apply_with_env(s, rec, extra, &[])
}

/// `apply` with test-only variables set (an injected abort or failure).
fn apply_with_env(s: &Scratch, rec: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ctscope"))
        .envs(env.iter().copied())
        .arg("apply")
        .arg("--from")
        .arg(rec)
        .arg("--etc-dir")
        .arg(s.etc())
        .arg("--state-dir")
        .arg(s.state())
        .args(extra)
        .output()
        .expect("run ctscope")
}

#[test]
fn recommendation_from_a_real_observation_has_every_key() {
    let Some((_g, _restore, s)) = ready() else {
        return;
    };
    let rec = real_recommendation(&s);
    for key in [
        "buckets",
        "max",
        "timeouts",
        "memory_bytes",
        "reasons",
        "comparison",
    ] {
        assert!(rec.get(key).is_some(), "no {key} in {rec}");
    }
    let methods: Vec<&str> = rec["comparison"]
        .as_array()
        .expect("comparison")
        .iter()
        .filter_map(|c| c["method"].as_str())
        .collect();
    assert_eq!(
        methods,
        [
            "current",
            "kernel-default",
            "seed-formula",
            "kube-proxy",
            "ctscope"
        ]
    );
    for c in rec["comparison"].as_array().expect("comparison") {
        for key in [
            "buckets",
            "max",
            "memory_bytes",
            "mean_chain",
            "p99_chain",
            "would_drop",
        ] {
            assert!(c.get(key).is_some(), "no {key} in {c}");
        }
    }
    // Current is what the kernel has now.
    let now = knobs();
    assert_eq!(rec["comparison"][0]["max"], json!(now["nf_conntrack_max"]));
    assert_eq!(
        rec["comparison"][0]["buckets"],
        json!(now["nf_conntrack_buckets"])
    );
    // The memory is buckets x 8 + max x per-entry bytes, per entry at least
    // the slab's object.
    let slab = procfs::slab_object_size().expect("slab object size") as f64;
    let m = rec["memory_bytes"].as_f64().expect("memory");
    let (b, x) = (
        rec["buckets"].as_f64().expect("b"),
        rec["max"].as_f64().expect("m"),
    );
    assert!(m >= b * 8.0 + x * slab, "{m} < {b} x 8 + {x} x {slab}");
}

#[test]
fn dry_run_changes_nothing() {
    let Some((_g, _restore, s)) = ready() else {
        return;
    };
    let before = knobs();
    let rec = write_rec(&s, "rec.json", &gentle(&s));
    let o = apply(&s, &rec, &["--dry-run", "--persist"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("nothing is changed"), "{out}");
    assert!(out.contains("nf_conntrack_max"), "{out}");
    assert_eq!(knobs(), before);
    assert!(s.etc_files().is_empty(), "{:?}", s.etc_files());
    assert!(!s.state().join("state.json").exists());
}

#[test]
fn apply_then_rollback_restores_the_host_exactly() {
    let Some((_g, _restore, s)) = ready() else {
        return;
    };
    let before = knobs();
    let rec_value = gentle(&s);
    let rec = write_rec(&s, "rec.json", &rec_value);
    let o = apply(&s, &rec, &["--yes", "--persist"]);
    assert!(o.status.success(), "{}", text(&o));
    let now = knobs();
    assert_eq!(
        now["nf_conntrack_buckets"],
        before["nf_conntrack_buckets"] + 512
    );
    assert_eq!(now["nf_conntrack_max"], before["nf_conntrack_max"] + 4096);
    assert_eq!(
        now["nf_conntrack_udp_timeout"],
        before["nf_conntrack_udp_timeout"] - 1
    );
    // Built in here: the sysctl file only (no modprobe.d for a built-in).
    let conf = fs::read_to_string(s.etc().join("sysctl.d/90-ctscope-conntrack.conf"))
        .expect("persisted sysctl file");
    assert!(
        conf.contains(&format!(
            "net.netfilter.nf_conntrack_max = {}",
            now["nf_conntrack_max"]
        )),
        "{conf}"
    );
    assert!(!s.etc().join("modprobe.d/ctscope-conntrack.conf").exists());

    let o = ctscope(&[
        "rollback",
        "--etc-dir",
        s.etc().to_str().expect("utf-8"),
        "--state-dir",
        s.state().to_str().expect("utf-8"),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(knobs(), before);
    assert!(s.etc_files().is_empty(), "{:?}", s.etc_files());
    // A second rollback has nothing to do, and says so.
    let o = ctscope(&[
        "rollback",
        "--etc-dir",
        s.etc().to_str().expect("utf-8"),
        "--state-dir",
        s.state().to_str().expect("utf-8"),
    ]);
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    assert!(text(&o).contains("nothing to roll back"), "{}", text(&o));
}

/// `apply` must refuse (exit 6), say `why`, and leave everything as it was.
fn refused(s: &Scratch, rec: &Path, why: &str) {
    let before = knobs();
    let o = apply(s, rec, &["--yes", "--persist"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(6), "{out}");
    assert!(out.contains(why), "want {why:?} in: {out}");
    assert_eq!(knobs(), before, "{out}");
    assert!(s.etc_files().is_empty(), "{:?}", s.etc_files());
    assert!(!s.state().join("state.json").exists(), "{out}");
}

#[test]
fn nonsense_values_are_refused() {
    let Some((_g, _restore, s)) = ready() else {
        return;
    };
    let good = gentle(&s);
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "max0",
            Box::new(|r| r["max"] = json!(0)),
            "would turn the limit off",
        ),
        (
            "buckets0",
            Box::new(|r| r["buckets"] = json!(0)),
            "is not a table size",
        ),
        (
            "buckets-huge",
            Box::new(|r| r["buckets"] = json!(1u64 << 40)),
            "is not a table size",
        ),
        (
            "timeout-name",
            Box::new(|r| r["timeouts"] = json!({"../../kernel/panic": 1})),
            "is not a conntrack timeout sysctl",
        ),
        (
            "timeout-zero",
            Box::new(|r| r["timeouts"] = json!({"udp_timeout": 0})),
            "out of range",
        ),
        (
            "other-kernel",
            Box::new(|r| r["kernel_release"] = json!("5.4.0-1-fake")),
            "the recommendation was made on kernel 5.4.0-1-fake",
        ),
    ];
    for (name, edit, why) in cases {
        let mut rec = good.clone();
        edit(&mut rec);
        let p = write_rec(&s, &format!("{name}.json"), &rec);
        refused(&s, &p, why);
    }
    // Not a recommendation at all.
    let p = s.file("garbage.json");
    fs::write(&p, "{\"buckets\": \"many\"").expect("write");
    refused(&s, &p, "is not a ctscope recommendation");
}

#[test]
fn max_below_a_namespaces_live_count_is_refused() {
    let Some((_g, _restore, s)) = ready() else {
        return;
    };
    let ns = NamedNetns::new("ctscope-tuner-live");
    ns.nft(
        "table inet t {\n chain out {\n  type filter hook output priority 0; policy accept;\n  ct state new counter\n }\n}\n",
    );
    let sent = send_flows(&ns.path(), Ipv4Addr::LOCALHOST, 20000, 300);
    assert!(sent >= 250, "sent {sent}");
    let mut rec = gentle(&s);
    rec["max"] = json!(100);
    let p = write_rec(&s, "low.json", &rec);
    refused(&s, &p, "leaves namespace ctscope-tuner-live no room");
}

#[test]
fn outside_the_initial_namespace_apply_is_refused() {
    let Some((_g, _restore, s)) = ready() else {
        return;
    };
    let ns = NamedNetns::new("ctscope-tuner-netns");
    let p = write_rec(&s, "rec.json", &gentle(&s));
    let before = knobs();
    let o = Command::new("ip")
        .args(["netns", "exec", &ns.name, env!("CARGO_BIN_EXE_ctscope")])
        .args(["apply", "--yes", "--persist", "--from"])
        .arg(&p)
        .arg("--etc-dir")
        .arg(s.etc())
        .arg("--state-dir")
        .arg(s.state())
        .output()
        .expect("run");
    let out = text(&o);
    assert_eq!(o.status.code(), Some(6), "{out}");
    assert!(out.contains("not the initial network namespace"), "{out}");
    assert_eq!(knobs(), before);
    assert!(s.etc_files().is_empty());
}

#[test]
fn read_only_proc_sys_and_sysfs_are_refused() {
    let Some((_g, _restore, s)) = ready() else {
        return;
    };
    let p = write_rec(&s, "rec.json", &gentle(&s));
    let before = knobs();
    // A private mount namespace where /proc/sys/net/netfilter and /sys are
    // read-only, as in a container.
    let script = format!(
        "mount --bind {d} {d} && mount -o remount,bind,ro {d} && mount -o remount,bind,ro /sys && exec {bin} apply --yes --from {p} --etc-dir {etc} --state-dir {st}",
        d = procfs::SYSCTL_DIR,
        bin = env!("CARGO_BIN_EXE_ctscope"),
        p = p.display(),
        etc = s.etc().display(),
        st = s.state().display()
    );
    let o = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("run unshare");
    let out = text(&o);
    assert_eq!(o.status.code(), Some(6), "{out}");
    assert!(out.contains("can be written"), "{out}");
    assert_eq!(knobs(), before);
}

#[test]
fn an_interrupted_apply_is_refused_until_rolled_back() {
    let Some((_g, _restore, s)) = ready() else {
        return;
    };
    let before = knobs();
    let p = write_rec(&s, "rec.json", &gentle(&s));
    // Killed (abort) after the three runtime writes and the first file.
    let o = apply_with_env(
        &s,
        &p,
        &["--yes", "--persist"],
        &[(conntrack_user::tune::apply::ABORT_ENV, "4")],
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert_ne!(knobs(), before, "the abort came after the runtime writes");
    let journal = fs::read_to_string(s.state().join("state.json")).expect("journal left");
    assert!(journal.contains("\"applying\""), "{journal}");

    // Another apply refuses until the host is rolled back.
    let o = apply(&s, &p, &["--yes"]);
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    assert!(text(&o).contains("did not finish"), "{}", text(&o));

    let o = ctscope(&[
        "rollback",
        "--etc-dir",
        s.etc().to_str().expect("utf-8"),
        "--state-dir",
        s.state().to_str().expect("utf-8"),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(knobs(), before);
    assert!(s.etc_files().is_empty(), "{:?}", s.etc_files());
}

#[test]
fn a_failed_step_undoes_the_steps_before_it() {
    let Some((_g, _restore, s)) = ready() else {
        return;
    };
    let before = knobs();
    let p = write_rec(&s, "rec.json", &gentle(&s));
    // The third write (udp_timeout, after buckets and max) fails.
    let o = apply_with_env(
        &s,
        &p,
        &["--yes", "--persist"],
        &[(conntrack_user::tune::apply::FAIL_ENV, "3")],
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(7), "{out}");
    assert!(
        out.contains("every change made before it was undone"),
        "{out}"
    );
    assert_eq!(knobs(), before, "{out}");
    assert!(s.etc_files().is_empty(), "{:?}", s.etc_files());
    assert!(!s.state().join("state.json").exists(), "{out}");
}

/// Every line of the persisted files is a comment or one of the settings
/// ctscope writes, with a plain number.
fn assert_only_ctscope_lines(s: &Scratch) {
    let files = s.etc_files();
    assert!(!files.is_empty(), "nothing persisted");
    for f in files {
        let t = fs::read_to_string(&f).expect("persisted file");
        for line in t.lines() {
            let setting = line
                .strip_prefix("net.netfilter.nf_conntrack_")
                .and_then(|l| l.split_once(" = "))
                .is_some_and(|(k, v)| {
                    k.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                        && !v.is_empty()
                        && v.chars().all(|c| c.is_ascii_digit())
                });
            let module = line == "nf_conntrack"
                || line
                    .strip_prefix("options nf_conntrack hashsize=")
                    .is_some_and(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit()));
            let comment = line.starts_with("# ") && !line.chars().any(char::is_control);
            assert!(
                setting || module || comment,
                "{}: injected line {line:?} in:\n{t}",
                f.display()
            );
        }
    }
}

fn rollback_scratch(s: &Scratch) -> Output {
    ctscope(&[
        "rollback",
        "--etc-dir",
        s.etc().to_str().expect("utf-8"),
        "--state-dir",
        s.state().to_str().expect("utf-8"),
    ])
}

#[test]
fn a_newline_in_the_from_path_injects_no_line_into_persisted_files() {
    let Some((_g, _restore, s)) = ready() else {
        return;
    };
    let before = knobs();
    // In /etc/modprobe.d an `install` line runs its command as root when
    // the module loads; in sysctl.d any line sets a sysctl at boot.
    let rec = write_rec(
        &s,
        "rec\ninstall nf_conntrack touch pwned\nkernel.panic = 1\n\x1b[2J.json",
        &gentle(&s),
    );
    let o = apply(&s, &rec, &["--yes", "--persist"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_only_ctscope_lines(&s);
    let conf = fs::read_to_string(s.etc().join("sysctl.d/90-ctscope-conntrack.conf"))
        .expect("persisted sysctl file");
    assert!(
        conf.contains("rec\\x0ainstall nf_conntrack touch pwned\\x0akernel.panic = 1"),
        "the source is still named, escaped: {conf}"
    );
    let o = rollback_scratch(&s);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(knobs(), before);
}

/// A namespace with `flows` conntrack entries (UDP to closed ports on its
/// loopback), or its entry count where the kernel already had some.
fn fill(ns: &NamedNetns, flows: u16) -> u64 {
    ns.nft(
        "table inet t {\n chain out {\n  type filter hook output priority 0; policy accept;\n  ct state new counter\n }\n}\n",
    );
    let sent = send_flows(&ns.path(), Ipv4Addr::LOCALHOST, 20000, flows);
    assert!(sent >= u64::from(flows) * 9 / 10, "sent {sent}");
    common::count_in(&ns.path())
}

#[test]
fn risky_recommendations_are_refused_with_every_reason() {
    let Some((_g, _restore, s)) = ready() else {
        return;
    };
    let good = gentle(&s);
    let now = knobs();
    type Edit = Box<dyn Fn(&mut Value)>;
    let cur_max = now["nf_conntrack_max"];
    let cases: Vec<(&str, Edit, &[&str], &[&str])> = vec![
        // About 768 GiB when full, and 8 million nodes per bucket.
        (
            "one-bucket",
            Box::new(|r| {
                r["buckets"] = json!(1);
                r["max"] = json!(2_147_483_647u64);
            }),
            &[
                "the table when full would take",
                "above the 20% allowed",
                "nodes per bucket when full",
            ],
            &[],
        ),
        // 2^26 buckets are 512 MiB of heads alone: more than 1% of this
        // host's RAM (24 GiB here) when the share is set so.
        (
            "2^26-buckets",
            Box::new(|r| r["buckets"] = json!(1u64 << 26)),
            &["the table when full would take", "above the 1% allowed"],
            &["--max-memory-share", "1"],
        ),
        (
            "established-1s",
            Box::new(|r| r["timeouts"] = json!({"tcp_timeout_established": 1})),
            &["below recommend's floor of 86400 s"],
            &[],
        ),
        (
            "timeout-without-floor",
            Box::new(|r| r["timeouts"] = json!({"tcp_timeout_max_retrans": 1})),
            &["recommend never shortens this timeout"],
            &[],
        ),
        // An idle 3-second observation cutting max 256 times.
        (
            "cut-256x",
            Box::new(move |r| {
                r["max"] = json!(cur_max / 256);
                r["inputs"]["duration_s"] = json!(3.0);
            }),
            &["is a cut to 1/256 from an observation of 3 s"],
            &[],
        ),
        // A load at max the chain limit would punish, memory fine: λ = 2 x
        // 262,144 x 8 / 65,536 = 64 nodes per bucket.
        (
            "chains",
            Box::new(move |r| {
                r["buckets"] = json!(65_536);
                r["max"] = json!(2_097_152);
                r["inputs"]["duration_s"] = json!(86_400.0);
            }),
            &["64.0 nodes per bucket when full"],
            &[],
        ),
    ];
    for (name, edit, whys, extra) in cases {
        let mut rec = good.clone();
        edit(&mut rec);
        let p = write_rec(&s, &format!("{name}.json"), &rec);
        let before = knobs();
        let mut args = vec!["--yes", "--persist"];
        args.extend_from_slice(extra);
        let o = apply(&s, &p, &args);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(6), "{name}: {out}");
        for why in whys {
            assert!(out.contains(why), "{name}: want {why:?} in: {out}");
        }
        assert!(out.contains("`--force` applies anyway"), "{name}: {out}");
        assert_eq!(knobs(), before, "{name}: {out}");
        assert!(s.etc_files().is_empty(), "{name}: {:?}", s.etc_files());
        assert!(!s.state().join("state.json").exists(), "{name}: {out}");
        // The dry run refuses the same way.
        let o = apply(&s, &p, &[&["--dry-run"], extra].concat());
        assert_eq!(o.status.code(), Some(6), "{name} --dry-run: {}", text(&o));
    }
}

#[test]
fn max_at_a_namespaces_live_count_is_refused() {
    let Some((_g, _restore, s)) = ready() else {
        return;
    };
    let ns = NamedNetns::new("ctscope-tuner-full");
    let count = fill(&ns, 300);
    assert!(count >= 270, "count {count}");
    let mut rec = gentle(&s);
    // Exactly what it holds: the very next connection there is dropped.
    rec["max"] = json!(count);
    let p = write_rec(&s, "at-count.json", &rec);
    refused(
        &s,
        &p,
        &format!(
            "max {count} leaves namespace ctscope-tuner-full no room: it holds {count} entries right now"
        ),
    );
}

/// A network namespace no process, thread or mount is in: only an open file
/// descriptor of this test process holds it, with `flows` entries.
fn fd_held_namespace(flows: u16) -> (fs::File, u64) {
    std::thread::spawn(move || fd_held_namespace_here(flows))
        .join()
        .expect("netns thread")
}

/// Moves the calling thread into a new namespace with `flows` entries and
/// opens it.
fn fd_held_namespace_here(flows: u16) -> (fs::File, u64) {
    {
        // SAFETY: unshare(CLONE_NEWNET) moves the calling thread alone, a
        // thread of the test's own that no other code runs on.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
        // Children inherit this thread's namespace.
        common::run("ip", &["link", "set", "lo", "up"]);
        let rules = std::env::temp_dir().join(format!("ctscope-fdns-{}.nft", std::process::id()));
        fs::write(
            &rules,
            "table inet t {\n chain out {\n  type filter hook output priority 0; policy accept;\n  ct state new counter\n }\n}\n",
        )
        .expect("rules");
        common::run("nft", &["-f", rules.to_str().expect("utf-8")]);
        let _ = fs::remove_file(&rules);
        let sock = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
        for i in 0..flows {
            let _ = sock.send_to(b"ctscope", (Ipv4Addr::LOCALHOST, 20000 + i));
        }
        drop(sock);
        let count = procfs::sysctl("nf_conntrack_count").expect("count");
        let fd = fs::File::open("/proc/thread-self/ns/net").expect("open own netns");
        (fd, count)
    }
}

#[test]
fn a_namespace_held_only_by_an_fd_is_counted() {
    let Some((_g, _restore, s)) = ready() else {
        return;
    };
    let mut rec = gentle(&s);
    let (fd, count) = fd_held_namespace(300);
    assert!(count >= 270, "count {count}");
    use std::os::unix::fs::MetadataExt as _;
    let inode = fd.metadata().expect("netns inode").ino();
    // No process, thread or bind mount is in it.
    let seen_by_scan = conntrack_user::host::namespaces::discover()
        .iter()
        .any(|n| n.inode == inode);
    assert!(
        !seen_by_scan,
        "the plain scan finds it: the test proves nothing"
    );
    rec["max"] = json!(count / 2);
    let p = write_rec(&s, "below-fd.json", &rec);
    refused(
        &s,
        &p,
        &format!("leaves namespace netns-{inode} (held only by fd"),
    );
    drop(fd);
}

#[test]
fn a_namespace_that_cannot_be_read_fails_closed() {
    let Some((_g, _restore, s)) = ready() else {
        return;
    };
    let ns = NamedNetns::new("ctscope-tuner-closed");
    let p = write_rec(&s, "rec.json", &gentle(&s));
    let before = knobs();
    // Root without CAP_SYS_ADMIN (a confined container's root): setns(2) into
    // another namespace fails, so that namespace's count cannot be read.
    let o = Command::new("setpriv")
        .args(["--bounding-set=-sys_admin", env!("CARGO_BIN_EXE_ctscope")])
        .args(["apply", "--yes", "--persist", "--from"])
        .arg(&p)
        .arg("--etc-dir")
        .arg(s.etc())
        .arg("--state-dir")
        .arg(s.state())
        .output()
        .expect("run setpriv");
    let out = text(&o);
    assert_eq!(o.status.code(), Some(6), "{out}");
    assert!(
        out.contains(&format!("namespace {} could not be read", ns.name)),
        "{out}"
    );
    assert!(out.contains("Operation not permitted"), "{out}");
    assert_eq!(knobs(), before, "{out}");
    assert!(s.etc_files().is_empty(), "{:?}", s.etc_files());
    assert!(!s.state().join("state.json").exists(), "{out}");
}

#[test]
fn the_resize_warning_counts_every_namespace_and_estimates_the_stall() {
    let Some((_g, _restore, s)) = ready() else {
        return;
    };
    let ns = NamedNetns::new("ctscope-tuner-resize");
    let count = fill(&ns, 300);
    let host = procfs::sysctl("nf_conntrack_count").expect("count");
    let p = write_rec(&s, "rec.json", &gentle(&s));
    let o = apply(&s, &p, &["--dry-run"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let line = out
        .lines()
        .find(|l| l.contains("the bucket count changes"))
        .unwrap_or_else(|| panic!("no resize warning in: {out}"));
    let entries: u64 = line
        .split(" entries (live now, every namespace")
        .next()
        .and_then(|h| h.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no entry count in: {line}"));
    assert!(
        entries >= count + host.saturating_sub(32),
        "{entries} entries rehashed, but {ns:?} holds {count} and the host {host}: {line}",
        ns = ns.name
    );
    assert!(line.contains("Estimated stall: about"), "{line}");
    assert!(line.contains("an estimate"), "{line}");
}

#[test]
fn force_applies_a_risky_change_and_prints_each_risk() {
    let Some((_g, _restore, s)) = ready() else {
        return;
    };
    let before = knobs();
    let mut rec = real_recommendation(&s);
    let cur_max = before["nf_conntrack_max"];
    // A 4x cut from a 2-second observation; buckets and timeouts as they are.
    rec["buckets"] = json!(before["nf_conntrack_buckets"]);
    rec["max"] = json!(cur_max / 4);
    rec["timeouts"] = json!({});
    let p = write_rec(&s, "cut.json", &rec);
    refused(&s, &p, "is a cut to 1/4 from an observation of");
    let o = apply(&s, &p, &["--yes", "--force"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains(&format!(
            "warning (accepted with --force): max {cur_max} -> {} is a cut to 1/4",
            cur_max / 4
        )),
        "{out}"
    );
    assert_eq!(knobs()["nf_conntrack_max"], cur_max / 4);
    let o = rollback_scratch(&s);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(knobs(), before);
}

#[test]
fn apply_removes_the_leftovers_of_a_killed_persist() {
    let Some((_g, _restore, s)) = ready() else {
        return;
    };
    let before = knobs();
    let dir = s.etc().join("sysctl.d");
    fs::create_dir_all(&dir).expect("mkdir");
    // What a SIGKILL between create and rename leaves.
    let leftover = dir.join(".90-ctscope-conntrack.conf.ctscope-tmp.31337");
    fs::write(&leftover, "net.netfilter.nf_conntrack_max = 1\n").expect("leftover");
    let other = dir.join("50-other.conf");
    fs::write(&other, "kernel.x = 1\n").expect("other");
    let rec = write_rec(&s, "rec.json", &gentle(&s));
    let o = apply(&s, &rec, &["--yes", "--persist"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!leftover.exists(), "leftover kept");
    assert_eq!(fs::read_to_string(&other).expect("other"), "kernel.x = 1\n");
    let names: Vec<String> = fs::read_dir(&dir)
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.contains(".ctscope-tmp.")),
        "{names:?}"
    );
    let o = rollback_scratch(&s);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(knobs(), before);
}

#[test]
fn apply_refuses_a_state_dir_others_can_write() {
    let Some((_g, _restore, s)) = ready() else {
        return;
    };
    use std::os::unix::fs::PermissionsExt as _;
    fs::create_dir_all(s.state()).expect("mkdir");
    fs::set_permissions(s.state(), fs::Permissions::from_mode(0o777)).expect("chmod");
    let rec = write_rec(&s, "rec.json", &gentle(&s));
    refused(&s, &rec, "writable by everyone");
}

#[test]
fn apply_and_rollback_need_root_before_anything_else() {
    if !kernel::is_root() {
        skip("needs root to run ctscope as another user");
        return;
    }
    // A copy nobody's user can execute, wherever the target dir is.
    let dir = std::env::temp_dir().join(format!("ctscope-nonroot-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("mkdir");
    let bin = dir.join("ctscope");
    fs::copy(env!("CARGO_BIN_EXE_ctscope"), &bin).expect("copy binary");
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).expect("chmod");
    let rec = dir.join("rec.json");
    fs::write(&rec, "{}").expect("rec");
    fs::set_permissions(&rec, fs::Permissions::from_mode(0o644)).expect("chmod");
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                bin.to_str().expect("utf-8"),
            ])
            .args(args)
            .output()
            .expect("run setpriv")
    };
    let cases: &[&[&str]] = &[
        // Not even read: the file does not exist, then is not a recommendation.
        &["apply", "--from", "/nonexistent/rec.json"],
        &["apply", "--dry-run", "--from", rec.to_str().expect("utf-8")],
        &["apply", "--yes", "--force"],
        &["rollback", "--state-dir", "/nonexistent/state"],
    ];
    for args in cases {
        let o = as_nobody(args);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(3), "{args:?}: {out}");
        assert!(out.contains("needs root"), "{args:?}: {out}");
    }
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_namespace_only_a_thread_is_in_is_counted() {
    let Some((_g, _restore, s)) = ready() else {
        return;
    };
    let mut rec = gentle(&s);
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    // One thread of this process moves into a namespace of its own (as
    // setns(2) moves one thread) and stays there: /proc/PID/ns/net shows the
    // main thread's namespace, not this one.
    let thread = std::thread::spawn(move || {
        let (fd, count) = fd_held_namespace_here(300);
        use std::os::unix::fs::MetadataExt as _;
        let inode = fd.metadata().expect("inode").ino();
        drop(fd);
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        ready_tx.send((inode, count, tid)).expect("send");
        let _ = rx.recv();
    });
    let (inode, count, tid) = ready_rx.recv().expect("thread ready");
    assert!(count >= 270, "count {count}");
    rec["max"] = json!(count / 2);
    let p = write_rec(&s, "below-thread.json", &rec);
    refused(
        &s,
        &p,
        &format!("leaves namespace netns-{inode} (thread {tid} of"),
    );
    drop(tx);
    thread.join().expect("thread");
}

#[test]
fn a_namespace_bound_only_in_another_mount_namespace_is_counted() {
    let Some((_g, _restore, s)) = ready() else {
        return;
    };
    let mut rec = gentle(&s);
    let (fd, count) = fd_held_namespace(300);
    assert!(count >= 270, "count {count}");
    use std::os::{fd::AsRawFd as _, unix::fs::MetadataExt as _};
    let inode = fd.metadata().expect("inode").ino();
    // A process in a private mount namespace bind-mounts it (as `ip netns`
    // in a container's own /run/netns would); then our fd closes, so only
    // that mount holds it.
    let target = s.file("bound-ns");
    fs::write(&target, b"").expect("mount target");
    let script = format!(
        "mount --bind /proc/{}/fd/{} {} && echo ready && exec sleep 120",
        std::process::id(),
        fd.as_raw_fd(),
        target.display()
    );
    let mut holder = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("unshare");
    let mut line = String::new();
    use std::io::BufRead as _;
    std::io::BufReader::new(holder.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line.trim(), "ready");
    drop(fd);
    rec["max"] = json!(count / 2);
    let p = write_rec(&s, "below-mount.json", &rec);
    let before = knobs();
    let o = apply(&s, &p, &["--yes", "--persist"]);
    let _ = holder.kill();
    let _ = holder.wait();
    let out = text(&o);
    assert_eq!(o.status.code(), Some(6), "{out}");
    assert!(
        out.contains(&format!(
            "leaves namespace netns-{inode} (held only by a bind mount)"
        )),
        "{out}"
    );
    assert_eq!(knobs(), before, "{out}");
    assert!(!s.state().join("state.json").exists(), "{out}");
}
