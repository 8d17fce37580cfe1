//! Which qemu accelerator the lab's VMs use: KVM where it really works, TCG otherwise.
//!
//! `/dev/kvm` existing proves little: on the project's (nested) machines it opens, and a KVM
//! guest then hangs before userspace. So `auto` boots the lab's own kernel once with a tiny
//! initramfs whose /init prints a marker, under `-accel kvm -cpu host`, and takes KVM only when
//! the marker arrives within [`PROBE_DEADLINE`]; qemu is killed (and waited for) at the
//! deadline. The decision is made once per xtask process, and kept for an hour in
//! target/lab/accel.json for later processes on the same host kernel.

use crate::cpio;
use crate::paths;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long the probe boot may take to reach userspace. A KVM guest of the lab's kernels gets
/// there in one or two seconds; a hanging one never does, and TCG would take about six.
pub(crate) const PROBE_DEADLINE: Duration = Duration::from_secs(6);
/// How long a cached decision holds.
const CACHE_TTL: Duration = Duration::from_hours(1);
/// What the probe's /init prints.
const MARKER: &str = "CTSCOPE-ACCEL-PROBE-USERSPACE";
/// The cache file is a few hundred bytes; anything larger is not ours.
const MAX_CACHE_BYTES: u64 = 64 << 10;

/// `--accel` on the commands that boot VMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Choice {
    /// KVM when /dev/kvm opens read-write and a probe boot reaches userspace within 6 s,
    /// else TCG.
    Auto,
    /// KVM (`-accel kvm -cpu host`), without a probe; fails if /dev/kvm cannot be opened.
    Kvm,
    /// TCG (`-accel tcg -cpu max`): every instruction emulated, works everywhere.
    Tcg,
}

#[derive(clap::Args, Clone, Copy, Debug)]
pub(crate) struct Arg {
    /// qemu accelerator. auto: KVM when /dev/kvm opens read-write and a probe boot of the lab
    /// kernel reaches userspace within 6 s, else TCG (said once). auto's decision is cached for
    /// an hour in target/lab/accel.json, per host kernel release (delete it to probe again).
    #[arg(long, value_enum, default_value_t = Choice::Auto)]
    pub accel: Choice,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// The name recorded in results (`accel`).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    fn from_name(s: &str) -> Option<Accel> {
        match s {
            "kvm" => Some(Accel::Kvm),
            "tcg" => Some(Accel::Tcg),
            _ => None,
        }
    }

    /// qemu's accelerator and CPU model. TCG keeps `-cpu max` (every feature it can
    /// emulate); KVM passes the host's CPU through.
    pub(crate) fn qemu_args(self) -> [&'static str; 4] {
        match self {
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => ["-accel", "tcg", "-cpu", "max"],
        }
    }
}

static CHOICE: OnceLock<Choice> = OnceLock::new();
static DECIDED: OnceLock<Accel> = OnceLock::new();

/// Records `--accel` for this process (the first call wins; main calls it once).
pub(crate) fn set_choice(choice: Choice) {
    let _ = CHOICE.set(choice);
}

/// The accelerator of this process's VMs, decided at the first boot (`vmlinuz` is the kernel
/// a probe boots) and the same for every later one.
pub(crate) fn for_boot(vmlinuz: &Path) -> Result<Accel> {
    if let Some(a) = DECIDED.get() {
        return Ok(*a);
    }
    let choice = CHOICE.get().copied().unwrap_or(Choice::Auto);
    let (accel, why) = decide(choice, vmlinuz)?;
    println!("accel: {why}");
    Ok(*DECIDED.get_or_init(|| accel))
}

/// The accelerator and the sentence that says why.
fn decide(choice: Choice, vmlinuz: &Path) -> Result<(Accel, String)> {
    match choice {
        Choice::Tcg => Ok((Accel::Tcg, "tcg (--accel tcg)".to_owned())),
        Choice::Kvm => match open_kvm() {
            Ok(()) => Ok((Accel::Kvm, "kvm (--accel kvm, not probed)".to_owned())),
            Err(e) => bail!("--accel kvm: /dev/kvm cannot be opened: {e}"),
        },
        Choice::Auto => Ok(auto(vmlinuz)),
    }
}

fn open_kvm() -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
}

fn auto(vmlinuz: &Path) -> (Accel, String) {
    if let Err(e) = open_kvm() {
        return (
            Accel::Tcg,
            format!("/dev/kvm cannot be opened: {e}: using tcg"),
        );
    }
    let release = host_release();
    let cache = cache_file();
    if let Some((accel, why, age)) = read_cache(&cache, &release, now_unix()) {
        return (
            accel,
            format!(
                "{} (cached {} min ago in {}: kept an hour per host kernel; delete it to probe again)",
                said(accel, &why),
                age / 60,
                cache.display()
            ),
        );
    }
    let dir = paths::lab_dir().join("run").join("accel-probe");
    let (accel, why) = match probe(vmlinuz, &dir, Accel::Kvm, PROBE_DEADLINE) {
        Ok(Some(t)) => (
            Accel::Kvm,
            format!(
                "a KVM probe boot reached userspace in {:.1} s",
                t.as_secs_f64()
            ),
        ),
        Ok(None) => (
            Accel::Tcg,
            format!(
                "kvm hangs here (no userspace within {} s; console in {})",
                PROBE_DEADLINE.as_secs(),
                dir.join("console.log").display()
            ),
        ),
        Err(e) => {
            // Not cached: a probe that could not run says nothing about this host.
            return (
                Accel::Tcg,
                format!("the KVM probe boot could not run ({e:#}): using tcg"),
            );
        }
    };
    if let Err(e) = write_cache(&cache, &release, accel, &why, now_unix()) {
        eprintln!("warning: cannot cache the accelerator: {e:#}");
    }
    (accel, said(accel, &why))
}

/// The decision as said to the user: `kvm (<why>)` or `<why>: using tcg`.
fn said(accel: Accel, why: &str) -> String {
    match accel {
        Accel::Kvm => format!("kvm ({why})"),
        Accel::Tcg => format!("{why}: using tcg"),
    }
}

fn host_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn cache_file() -> PathBuf {
    paths::lab_dir().join("accel.json")
}

/// A cached decision for this host kernel that is less than an hour old: (accel, why, age s).
fn read_cache(path: &Path, release: &str, now: u64) -> Option<(Accel, String, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.len() > MAX_CACHE_BYTES || release.is_empty() {
        return None;
    }
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    if v.get("host_kernel_release")?.as_str()? != release {
        return None;
    }
    let at = v.get("decided_unix")?.as_u64()?;
    // A time in the future (a clock set back) is no evidence of freshness.
    let age = now.checked_sub(at)?;
    if age >= CACHE_TTL.as_secs() {
        return None;
    }
    let accel = Accel::from_name(v.get("accel")?.as_str()?)?;
    let why = v.get("why")?.as_str()?.escape_debug().to_string();
    Some((accel, why, age))
}

/// Writes the decision atomically (a temporary file renamed over the cache), mode 644.
fn write_cache(path: &Path, release: &str, accel: Accel, why: &str, now: u64) -> Result<()> {
    let dir = path.parent().context("the cache file has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let text = serde_json::to_string_pretty(&json!({
        "host_kernel_release": release,
        "accel": accel.name(),
        "why": why,
        "decided_unix": now,
    }))? + "\n";
    crate::paths::write_atomic(path, &text)
}

/// The probe's initramfs: a static busybox and an /init that prints [`MARKER`] and powers off.
fn probe_initrd(dir: &Path) -> Result<PathBuf> {
    let root = dir.join("root");
    if root.exists() {
        std::fs::remove_dir_all(&root)
            .with_context(|| format!("cannot clean {}", root.display()))?;
    }
    std::fs::create_dir_all(root.join("bin"))
        .with_context(|| format!("cannot create {}", root.display()))?;
    std::fs::create_dir_all(root.join("dev"))
        .with_context(|| format!("cannot create {}", root.display()))?;
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .context("busybox not found (install busybox-static: `cargo xtask setup`)")?;
    std::fs::copy(busybox, root.join("bin/busybox"))
        .with_context(|| format!("cannot copy {}", busybox.display()))?;
    let init = root.join("init");
    std::fs::write(
        &init,
        format!("#!/bin/busybox sh\n/bin/busybox echo {MARKER}\n/bin/busybox poweroff -f\n"),
    )
    .with_context(|| format!("cannot write {}", init.display()))?;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot chmod {}", init.display()))?;
    // Uncompressed: every kernel unpacks a plain cpio.
    let archive = dir.join("initrd.cpio");
    let file = std::fs::File::create(&archive)
        .with_context(|| format!("cannot create {}", archive.display()))?;
    let mut w = cpio::Writer::new(std::io::BufWriter::new(file));
    w.add_tree(&root)?;
    w.add_char_dev(&cpio::CharDev {
        path: "dev/console",
        mode: 0o600,
        major: 5,
        minor: 1,
    })?;
    w.finish()?;
    Ok(archive)
}

/// Boots `vmlinuz` under `accel` (KVM, but for the tests): `Some(time to the marker)`, or None
/// when it did not come within `deadline` (qemu is then killed and waited for).
fn probe(vmlinuz: &Path, dir: &Path, accel: Accel, deadline: Duration) -> Result<Option<Duration>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let initrd = probe_initrd(dir)?;
    let console_log = dir.join("console.log");
    let mut log = std::fs::File::create(&console_log)
        .with_context(|| format!("cannot create {}", console_log.display()))?;
    let mut child = Command::new("qemu-system-x86_64")
        .args(accel.qemu_args())
        .args(["-m", "256", "-smp", "2"])
        .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
        .args(["-nic", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet loglevel=3"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start qemu-system-x86_64 (run `cargo xtask setup`)")?;
    let started = Instant::now();
    let seen = Arc::new(AtomicBool::new(false));
    let mut stdout = child.stdout.take().context("qemu has no stdout")?;
    let mut stderr = child.stderr.take().context("qemu has no stderr")?;
    let reader_seen = Arc::clone(&seen);
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            let _ = log.write_all(&buf[..n]);
            text.extend_from_slice(&buf[..n]);
            if !reader_seen.load(Ordering::Relaxed)
                && text.windows(MARKER.len()).any(|w| w == MARKER.as_bytes())
            {
                reader_seen.store(true, Ordering::Relaxed);
            }
        }
    });
    let err_text = Arc::new(Mutex::new(String::new()));
    let err_sink = Arc::clone(&err_text);
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        if let Ok(mut e) = err_sink.lock() {
            *e = s;
        }
    });
    let outcome = watch(&mut child, &seen, started, deadline);
    // Whatever happened, qemu is gone before we return: killed if it still runs, then reaped.
    let _ = child.kill();
    let status = child.wait().context("waiting for the probe's qemu")?;
    let _ = reader.join();
    let _ = err_reader.join();
    match outcome {
        Watch::Marker(t) => Ok(Some(t)),
        Watch::Deadline => Ok(None),
        Watch::Exited => {
            let err = err_text
                .lock()
                .map(|e| e.trim().to_owned())
                .unwrap_or_default();
            bail!(
                "qemu exited ({status}) before userspace{}",
                if err.is_empty() {
                    String::new()
                } else {
                    format!(": {}", err.escape_debug())
                }
            )
        }
    }
}

enum Watch {
    Marker(Duration),
    Deadline,
    Exited,
}

/// Polls until the marker appears, qemu exits, or the deadline passes.
fn watch(child: &mut Child, seen: &AtomicBool, started: Instant, deadline: Duration) -> Watch {
    loop {
        if seen.load(Ordering::Relaxed) {
            return Watch::Marker(started.elapsed());
        }
        match child.try_wait() {
            // The marker may be in the last bytes before qemu exited (poweroff).
            Ok(Some(_)) | Err(_) => {
                std::thread::sleep(Duration::from_millis(100));
                return if seen.load(Ordering::Relaxed) {
                    Watch::Marker(started.elapsed())
                } else {
                    Watch::Exited
                };
            }
            Ok(None) => {}
        }
        if started.elapsed() > deadline {
            return Watch::Deadline;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = paths::target_dir()
            .join("test-accel")
            .join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    #[test]
    fn cache_holds_for_an_hour_on_the_same_host_kernel() {
        let path = scratch("cache").join("accel.json");
        write_cache(&path, "6.18.44", Accel::Tcg, "kvm hangs here", 1_000_000).expect("written");
        let mode = std::fs::metadata(&path)
            .expect("cache")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o644);
        assert_eq!(
            read_cache(&path, "6.18.44", 1_000_000 + 59 * 60),
            Some((Accel::Tcg, "kvm hangs here".to_owned(), 59 * 60))
        );
        assert_eq!(read_cache(&path, "6.18.44", 1_000_000 + 3600), None);
        assert_eq!(read_cache(&path, "6.19.0", 1_000_100), None);
        // A clock set back makes no old decision fresh.
        assert_eq!(read_cache(&path, "6.18.44", 999_000), None);
        std::fs::write(&path, "not json").expect("overwrite");
        assert_eq!(read_cache(&path, "6.18.44", 1_000_100), None);
    }

    #[test]
    fn probe_initrd_is_a_cpio_with_init_and_busybox() {
        let dir = scratch("initrd");
        let archive = probe_initrd(&dir).expect("built");
        let bytes = std::fs::read(&archive).expect("archive");
        assert!(bytes.starts_with(b"070701"));
        for name in ["init\0", "bin/busybox\0", "dev/console\0", "TRAILER!!!\0"] {
            assert!(
                bytes.windows(name.len()).any(|w| w == name.as_bytes()),
                "{name}"
            );
        }
        let init = std::fs::read_to_string(dir.join("root/init")).expect("init");
        assert!(init.contains(MARKER));
    }

    /// The lab's 6.1 kernel (`cargo xtask kernel --kernel 6.1`).
    fn lab_kernel() -> PathBuf {
        let boot = paths::lab_dir().join("kernels/6.1/root/boot");
        std::fs::read_dir(&boot)
            .expect("run `cargo xtask kernel --kernel 6.1` first")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz"))
            })
            .expect("a vmlinuz")
    }

    /// Boots a VM: run alone, under the lab's lock:
    /// `flock /tmp/ctscope-vm.lock cargo test -p xtask -- --ignored probe_`.
    #[test]
    #[ignore = "boots qemu (TCG) with the lab kernel"]
    fn probe_sees_userspace_under_tcg_and_gives_up_at_the_deadline() {
        let kernel = lab_kernel();
        let dir = scratch("probe");
        let t = probe(&kernel, &dir, Accel::Tcg, Duration::from_mins(1))
            .expect("probe ran")
            .expect("userspace reached");
        assert!(t < Duration::from_mins(1));
        let console = std::fs::read_to_string(dir.join("console.log")).expect("console");
        assert!(console.contains(MARKER), "{console}");
        // The same boot cannot reach userspace in 50 ms: the deadline kills it.
        let started = Instant::now();
        let none = probe(&kernel, &dir, Accel::Tcg, Duration::from_millis(50)).expect("probe ran");
        assert_eq!(none, None);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn qemu_args_keep_cpu_max_under_tcg() {
        assert_eq!(Accel::Tcg.qemu_args(), ["-accel", "tcg", "-cpu", "max"]);
        assert_eq!(Accel::Kvm.qemu_args(), ["-accel", "kvm", "-cpu", "host"]);
    }
}
