//! Helpers shared by the attribution tests (host.rs keeps its own): skips
//! that fail under `CTSCOPE_STRICT=1`, named network namespaces removed on
//! drop, a UDP flow sender run inside a namespace, and a ctscope run.
#![allow(
    dead_code,
    reason = "each test binary uses its own part of these helpers"
)]

use std::{
    fs,
    net::{Ipv4Addr, UdpSocket},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use conntrack_user::{host::procfs, report::Report};

pub(crate) fn strict() -> bool {
    std::env::var_os("CTSCOPE_STRICT").is_some_and(|v| v == "1")
}

/// Skips (prints why) or, under CTSCOPE_STRICT=1, fails.
pub(crate) fn skip(why: &str) {
    assert!(
        !strict(),
        "CTSCOPE_STRICT=1 and this test cannot run: {why}"
    );
    eprintln!("SKIPPED: {why}");
}

/// Runs a command, panicking with its output when it fails.
pub(crate) fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `f` on a fresh thread that joined the network namespace at `path`.
pub(crate) fn within<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> T {
    let file = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on a thread we own, with a valid netns fd; it
            // changes only this thread's network namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("netns thread")
    })
}

/// This namespace's entry count, read from inside it.
pub(crate) fn count_in(path: &Path) -> u64 {
    within(path, || {
        procfs::sysctl("nf_conntrack_count").expect("count")
    })
}

/// Sends one datagram to each of `flows` distinct ports of `dst` from one
/// socket, from inside the namespace at `ns`: `flows` distinct tuples.
/// Returns how many sends succeeded.
pub(crate) fn send_flows(ns: &Path, dst: Ipv4Addr, first_port: u16, flows: u16) -> u64 {
    within(ns, || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
        (0..flows)
            .filter(|i| s.send_to(b"ctscope", (dst, first_port + i)).is_ok())
            .count() as u64
    })
}

/// A named network namespace (`ip netns`), deleted on drop.
pub(crate) struct NamedNetns {
    pub name: String,
}

impl NamedNetns {
    pub(crate) fn new(name: &str) -> NamedNetns {
        let _ = Command::new("ip")
            .args(["netns", "delete", name])
            .stderr(std::process::Stdio::null())
            .status();
        run("ip", &["netns", "add", name]);
        let ns = NamedNetns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        // No IPv6: its neighbour discovery and MLD would add entries of
        // their own to the counts the tests compare.
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
        ns
    }

    pub(crate) fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    pub(crate) fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    pub(crate) fn exec(&self, args: &[&str]) -> String {
        let mut a = vec!["netns", "exec", self.name.as_str()];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    /// Loads an nftables ruleset into this namespace.
    pub(crate) fn nft(&self, rules: &str) {
        let file = std::env::temp_dir().join(format!("{}.nft", self.name));
        fs::write(&file, rules).expect("write rules");
        self.exec(&["nft", "-f", file.to_str().expect("utf-8 path")]);
        let _ = fs::remove_file(file);
    }

    pub(crate) fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(self.path()).expect("netns inode").ino()
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// A `ctscope observe --mode procfs` run in the host namespace.
pub(crate) struct Observe {
    child: Child,
    dir: PathBuf,
}

impl Observe {
    pub(crate) fn start(tag: &str) -> Observe {
        let dir = std::env::temp_dir().join(format!("ctscope-{tag}-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("mkdir");
        let ready = dir.join("ready");
        let _ = fs::remove_file(&ready);
        let mut child = Command::new(env!("CARGO_BIN_EXE_ctscope"))
            .args([
                // Named namespaces `ctlab-<name>` are containers, as in the VM lab.
                "--netns-containers",
                "ctlab-",
                "observe",
                "--mode",
                "procfs",
                "--interval",
                "1s",
                "--duration",
                "50s",
                "--json",
            ])
            .arg(dir.join("report.json"))
            .arg("--ready-file")
            .arg(&ready)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start ctscope");
        let t0 = Instant::now();
        while !ready.exists() {
            assert!(t0.elapsed().as_secs() < 30, "ctscope never became ready");
            if let Ok(Some(st)) = child.try_wait() {
                panic!("ctscope exited early: {st}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Observe { child, dir }
    }

    /// SIGINT, then the report.
    pub(crate) fn stop(mut self) -> Report {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        assert_eq!(rc, 0);
        let st = self.child.wait().expect("wait");
        assert!(st.success(), "ctscope: {st}");
        let text = fs::read_to_string(self.dir.join("report.json")).expect("report");
        serde_json::from_str(&text).expect("parse report")
    }
}

impl Drop for Observe {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
