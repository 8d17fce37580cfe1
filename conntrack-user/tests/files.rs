//! Files ctscope writes and reads cannot be hijacked: no
//! symlink or pre-created file redirects or takes over a write, the journal
//! is kept only in a directory no one else can write and rollback touches
//! only ctscope's own paths, leftovers of a killed run are removed, inputs
//! are capped, and names from the system are escaped before they are shown.
//! None of these tests changes a sysctl: rollbacks here are refused, or find
//! nothing to restore.

mod common;

use std::{
    fs,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _, chown, symlink},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::{NamedNetns, skip};
use conntrack_user::{host::kernel, host::namespaces, report, tune::apply};

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("ctscope-files-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("scratch dir");
        Scratch(d)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).expect("stat").mode() & 0o7777
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

/// A victim file a hijacked write would change.
fn victim(s: &Scratch, name: &str) -> PathBuf {
    let v = s.path(name);
    fs::write(&v, "precious\n").expect("victim");
    fs::set_permissions(&v, fs::Permissions::from_mode(0o600)).expect("chmod victim");
    v
}

fn assert_untouched(v: &Path) {
    assert_eq!(fs::read_to_string(v).expect("victim"), "precious\n");
    assert_eq!(mode(v), 0o600, "victim's mode changed");
}

/// The written file is a regular file of ours with exactly `want` mode.
fn assert_ours(p: &Path, content: &str, want: u32) {
    let m = fs::symlink_metadata(p).expect("stat output");
    assert!(
        m.file_type().is_file(),
        "{} is not a regular file",
        p.display()
    );
    assert_eq!(fs::read_to_string(p).expect("read"), content);
    assert_eq!(m.mode() & 0o7777, want, "mode of {}", p.display());
    assert_eq!(m.uid(), euid(), "owner of {}", p.display());
}

#[test]
fn a_symlink_at_the_temp_or_final_name_does_not_redirect_a_report() {
    let s = Scratch::new("report-link");
    let out = s.path("report.json");
    let v1 = victim(&s, "victim1");
    let v2 = victim(&s, "victim2");
    // The name the old writer used (`.<name>.tmp.<pid>`), and the target.
    symlink(
        &v1,
        s.path(&format!(".report.json.tmp.{}", std::process::id())),
    )
    .expect("plant");
    symlink(&v2, &out).expect("plant at final name");
    report::write_atomic(&out, "{\"report\":1}").expect("write");
    assert_untouched(&v1);
    assert_untouched(&v2);
    assert_ours(&out, "{\"report\":1}", 0o644);
}

#[test]
fn a_symlink_at_the_temp_name_does_not_redirect_a_persisted_file() {
    let s = Scratch::new("durable-link");
    let out = s.path("90-ctscope-conntrack.conf");
    let v = victim(&s, "victim");
    // The old journal/persist writer's name: `.<name>.ctscope-tmp.<pid>`;
    // it followed the link, wrote the victim and chmodded it 0644.
    symlink(
        &v,
        s.path(&format!(
            ".90-ctscope-conntrack.conf.ctscope-tmp.{}",
            std::process::id()
        )),
    )
    .expect("plant");
    apply::write_durable(&out, "a = 1\n").expect("write");
    assert_untouched(&v);
    assert_ours(&out, "a = 1\n", 0o644);
}

#[test]
fn a_pre_created_file_cannot_make_the_output_other_owned_or_0666() {
    if euid() != 0 {
        skip("needs root to give a file to another user");
        return;
    }
    let s = Scratch::new("precreated");
    let out = s.path("rec.json");
    // Another user's files at the old temp name and at the target, 0666.
    let tmp = s.path(&format!(".rec.json.tmp.{}", std::process::id()));
    for p in [&tmp, &out] {
        fs::write(p, "theirs").expect("pre-create");
        chown(p, Some(65534), Some(65534)).expect("chown");
        fs::set_permissions(p, fs::Permissions::from_mode(0o666)).expect("chmod");
    }
    report::write_atomic(&out, "ours").expect("write");
    assert_ours(&out, "ours", 0o644);
    // Their file was neither used nor written.
    assert_eq!(fs::read_to_string(&tmp).expect("theirs"), "theirs");
}

/// A journal (as `apply` writes it) restoring `files` and `runtime`.
#[expect(
    clippy::needless_pass_by_value,
    reason = "the callers build the values in the call"
)]
fn journal(files: serde_json::Value, runtime: serde_json::Value) -> String {
    serde_json::json!({
        "version": 1,
        "status": "applying",
        "kernel_release": kernel::release(),
        "runtime": runtime,
        "files": files,
    })
    .to_string()
}

fn private_state(s: &Scratch) -> PathBuf {
    let st = s.path("state");
    fs::create_dir(&st).expect("state dir");
    fs::set_permissions(&st, fs::Permissions::from_mode(0o700)).expect("chmod");
    st
}

#[test]
fn a_state_dir_others_can_write_or_own_is_refused() {
    if euid() != 0 {
        skip("rollback needs root");
        return;
    }
    let s = Scratch::new("state-dir");
    let v = victim(&s, "victim");
    let st = s.path("state");
    type Spoil = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Spoil)> = vec![
        (
            "writable by everyone",
            Box::new(|d| fs::set_permissions(d, fs::Permissions::from_mode(0o777)).expect("chmod")),
        ),
        (
            "writable by its group",
            Box::new(|d| fs::set_permissions(d, fs::Permissions::from_mode(0o770)).expect("chmod")),
        ),
        (
            "owned by uid 65534",
            Box::new(|d| chown(d, Some(65534), None).expect("chown")),
        ),
    ];
    for (why, spoil) in cases {
        let _ = fs::remove_dir_all(&st);
        fs::create_dir(&st).expect("state dir");
        fs::set_permissions(&st, fs::Permissions::from_mode(0o700)).expect("chmod");
        // What another user could plant there: a journal that "restores"
        // a file of their choice.
        fs::write(
            st.join("state.json"),
            journal(
                serde_json::json!([{"path": v, "before": "pwned\n"}]),
                serde_json::json!([]),
            ),
        )
        .expect("plant journal");
        spoil(&st);
        let o = ctscope(&["rollback", "--state-dir", st.to_str().expect("utf-8")]);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(6), "{why}: {out}");
        assert!(out.contains(why), "want {why:?} in: {out}");
        assert!(out.contains("no one else can write"), "{out}");
        assert_untouched(&v);
        assert!(st.join("state.json").exists(), "{why}: journal kept");
    }
    // A link in place of the directory.
    let _ = fs::remove_dir_all(&st);
    let real = s.path("elsewhere");
    fs::create_dir(&real).expect("mkdir");
    symlink(&real, &st).expect("symlink");
    let o = ctscope(&["rollback", "--state-dir", st.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    assert!(text(&o).contains("is a symbolic link"), "{}", text(&o));
    assert_eq!(
        fs::read_dir(&real).expect("ls").count(),
        0,
        "nothing created through it"
    );
}

#[test]
fn a_new_state_dir_is_created_0700() {
    if euid() != 0 {
        skip("rollback needs root");
        return;
    }
    let s = Scratch::new("state-new");
    let st = s.path("state");
    let o = ctscope(&["rollback", "--state-dir", st.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    assert!(text(&o).contains("nothing to roll back"), "{}", text(&o));
    assert_eq!(mode(&st), 0o700);
}

#[test]
fn a_journal_naming_a_foreign_path_makes_rollback_refuse_and_touch_nothing() {
    if euid() != 0 {
        skip("rollback needs root");
        return;
    }
    let s = Scratch::new("foreign");
    let st = private_state(&s);
    let v1 = victim(&s, "passwd");
    let v2 = victim(&s, "shadow");
    let v3 = s.path("not-a-sysctl");
    fs::write(&v3, "123\n").expect("victim");
    let v4 = s.path("not-ours");
    fs::write(&v4, "5\n").expect("victim");
    let cases = [
        // A file restored with content of the journal's choice.
        journal(
            serde_json::json!([{"path": v1, "before": "root::0:0::/:/bin/sh\n"}]),
            serde_json::json!([]),
        ),
        // A file "created by ctscope", so deleted on rollback.
        journal(
            serde_json::json!([{"path": v2, "before": null}]),
            serde_json::json!([]),
        ),
        // One of ctscope's sysctl names, at a path that is not that sysctl.
        journal(
            serde_json::json!([]),
            serde_json::json!([{"name": "nf_conntrack_max", "path": v3, "before": 7}]),
        ),
        // A name ctscope never sets (and a terminal escape in it).
        journal(
            serde_json::json!([]),
            serde_json::json!([{"name": "../../kernel/\x1b[2Jpanic", "path": v4, "before": 1}]),
        ),
    ];
    for j in cases {
        fs::write(st.join("state.json"), &j).expect("journal");
        let o = ctscope(&["rollback", "--state-dir", st.to_str().expect("utf-8")]);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(6), "{j}: {out}");
        assert!(out.contains("which ctscope never writes"), "{out}");
        assert!(!out.contains('\x1b'), "{out}");
        assert_untouched(&v1);
        assert_untouched(&v2);
        assert_eq!(fs::read_to_string(&v3).expect("victim"), "123\n");
        assert_eq!(fs::read_to_string(&v4).expect("victim"), "5\n");
        assert_eq!(fs::read_to_string(st.join("state.json")).expect("kept"), j);
    }
}

#[test]
fn rollback_removes_the_leftovers_of_a_killed_run_and_nothing_else() {
    if euid() != 0 {
        skip("rollback needs root");
        return;
    }
    let s = Scratch::new("leftovers");
    let st = private_state(&s);
    let etc = s.path("etc");
    for d in ["sysctl.d", "modprobe.d", "modules-load.d"] {
        fs::create_dir_all(etc.join(d)).expect("mkdir");
    }
    let v = victim(&s, "victim");
    let ours = [
        etc.join("sysctl.d/.90-ctscope-conntrack.conf.ctscope-tmp.4242"),
        etc.join("modules-load.d/.ctscope-conntrack.conf.ctscope-tmp.0123456789abcdef"),
        st.join(".state.json.ctscope-tmp.99"),
    ];
    for p in &ours {
        fs::write(p, "half-written\n").expect("leftover");
    }
    // A leftover that is a link: removed as a link, its target kept.
    let link = etc.join("modprobe.d/.ctscope-conntrack.conf.ctscope-tmp.77");
    symlink(&v, &link).expect("symlink");
    // Not ours: other files, other names with the mark, the bare prefix.
    let theirs = [
        etc.join("sysctl.d/10-other.conf"),
        etc.join("sysctl.d/.10-other.conf.ctscope-tmp.1"),
        etc.join("sysctl.d/.90-ctscope-conntrack.conf.ctscope-tmp."),
        etc.join("modprobe.d/blacklist.conf"),
        s.path(".state.json.ctscope-tmp.5"),
    ];
    for p in &theirs {
        fs::write(p, "keep\n").expect("theirs");
    }
    let o = ctscope(&[
        "rollback",
        "--etc-dir",
        etc.to_str().expect("utf-8"),
        "--state-dir",
        st.to_str().expect("utf-8"),
    ]);
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    assert!(text(&o).contains("nothing to roll back"), "{}", text(&o));
    for p in ours.iter().chain([&link]) {
        assert!(fs::symlink_metadata(p).is_err(), "{} left", p.display());
    }
    for p in &theirs {
        assert_eq!(
            fs::read_to_string(p).expect("kept"),
            "keep\n",
            "{}",
            p.display()
        );
    }
    assert_untouched(&v);
}

/// Runs ctscope with at most 1 GiB of address space and a deadline: an
/// unbounded read must fail here, not take the machine's memory.
fn bounded(
    args: &[&str],
    deadline: Duration,
) -> (Option<std::process::ExitStatus>, String, Duration) {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ctscope"));
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: only setrlimit, async-signal-safe, runs in the child between
    // fork and exec; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 1 << 30,
                rlim_max: 1 << 30,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &raw const lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawn");
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break Some(st);
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = start.elapsed();
    let out = child.wait_with_output().expect("output");
    (
        status,
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        took,
    )
}

#[test]
fn from_dev_zero_a_fifo_or_a_huge_file_fails_fast_and_clearly() {
    let s = Scratch::new("inputs");
    let fifo = s.path("fifo");
    let c = std::ffi::CString::new(fifo.to_str().expect("utf-8")).expect("c path");
    // SAFETY: mkfifo with a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let huge = s.path("huge.json");
    fs::File::create(&huge)
        .and_then(|f| f.set_len(17 << 20))
        .expect("sparse file");
    let mut runs = Vec::new();
    for input in [
        "/dev/zero",
        fifo.to_str().expect("utf-8"),
        huge.to_str().expect("utf-8"),
    ] {
        runs.push(vec!["recommend", "--from", input]);
        if euid() == 0 {
            runs.push(vec!["apply", "--dry-run", "--from", input]);
        }
    }
    for args in runs {
        let (status, out, took) = bounded(&args, Duration::from_secs(20));
        let status = status.unwrap_or_else(|| panic!("{args:?} still running after {took:?}"));
        assert_eq!(status.code(), Some(1), "{args:?}: {status}: {out}");
        let why = if args.last() == Some(&huge.to_str().expect("utf-8")) {
            "larger than 16777216 bytes"
        } else {
            "not a regular file"
        };
        assert!(out.contains(why), "{args:?}: want {why:?} in: {out}");
        assert!(took < Duration::from_secs(5), "{args:?} took {took:?}");
    }
}

#[test]
fn control_characters_in_a_namespace_name_are_escaped() {
    if euid() != 0 {
        skip("ip netns add needs root");
        return;
    }
    let raw = "ctscope-files-\x1b[2J\x07\u{9b}\u{202e}evil";
    let ns = NamedNetns::new(raw);
    let inode = ns.inode();
    let found = namespaces::discover();
    let got = found
        .iter()
        .find(|n| n.inode == inode)
        .expect("the named namespace is found");
    for s in [&got.name, got.netns_name.as_deref().unwrap_or("")] {
        assert!(
            !s.chars().any(|c| c.is_control() || c == '\u{202e}'),
            "{s:?}"
        );
    }
    assert_eq!(got.name, "ctscope-files-\\x1b[2J\\x07\\x9b\\u{202e}evil");
}

#[test]
fn control_characters_in_a_process_name_are_escaped() {
    if euid() != 0 {
        skip("unshare -n needs root");
        return;
    }
    // A shell alone in a new network namespace, renamed by itself (comm is
    // whatever a process sets with PR_SET_NAME), waiting on its stdin.
    let mut child = Command::new("unshare")
        .args([
            "-n",
            "sh",
            "-c",
            "printf 'c\\033]0;x\\007' > /proc/self/comm && echo ok && read x",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("unshare");
    let mut line = String::new();
    {
        use std::io::BufRead as _;
        let out = child.stdout.as_mut().expect("stdout");
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .expect("ready line");
    }
    assert_eq!(line, "ok\n");
    let pid = child.id();
    let inode = fs::metadata(format!("/proc/{pid}/ns/net"))
        .expect("child netns")
        .ino();
    let found = namespaces::discover();
    drop(child.stdin.take());
    let _ = child.wait();
    let got = found
        .iter()
        .find(|n| n.inode == inode)
        .expect("the child's namespace is found");
    assert!(!got.name.chars().any(char::is_control), "{:?}", got.name);
    assert_eq!(got.name, "c\\x1b]0;x\\x07");
}
