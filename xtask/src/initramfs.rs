//! The VM's initramfs, laid out as docs/lab-contract.md says.

use crate::cmd;
use crate::cpio;
use crate::kernels::Kernel;
use crate::modules;
use anyhow::{Context, Result, bail};
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What goes into one initramfs.
pub(crate) struct Spec<'a> {
    pub kernel: &'a Kernel,
    /// (host file, absolute path inside the VM) for executables; their libraries come along.
    pub binaries: Vec<(PathBuf, &'static str)>,
    /// (host file, absolute path inside the VM) for plain files, copied verbatim.
    pub files: Vec<(PathBuf, &'static str)>,
    /// Module names whose dependency closure is installed.
    pub modules: &'a [&'a str],
    /// Shell commands /init runs after the mounts; the last of them decides the exit line.
    pub payload: String,
}

/// The command /init runs in a lab run.
pub(crate) const LAB_PAYLOAD: &str = "/bin/lab-agent /lab/scenario.toml --result /dev/ttyS1";

/// The /init script: mounts, limits, then the payload, its exit code on the console, power off.
fn init_script(payload: &str) -> String {
    format!(
        r#"#!/bin/busybox sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
echo "LAB-INIT: kernel $(uname -r)"
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t bpf bpf /sys/fs/bpf
# debugfs/tracefs are where kprobe events live on kernels that need them mounted.
[ -d /sys/kernel/debug ] && mount -t debugfs debugfs /sys/kernel/debug
[ -d /sys/kernel/tracing ] && mount -t tracefs tracefs /sys/kernel/tracing
ln -s /proc/self/fd /dev/fd
ulimit -n 1048576
{payload}
echo "LAB-AGENT-EXIT=$?"
poweroff -f
"#
    )
}

/// Builds `<run_dir>/root` and packs it into `<run_dir>/initrd.gz`; returns the archive's path.
pub(crate) fn build(spec: &Spec, run_dir: &Path) -> Result<PathBuf> {
    let root = run_dir.join("root");
    if root.exists() {
        std::fs::remove_dir_all(&root)
            .with_context(|| format!("cannot clean {}", root.display()))?;
    }
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "lib", "lib64", "dev", "proc", "sys", "run", "tmp",
        "etc", "lab", "root",
    ] {
        mkdir(&root.join(d))?;
    }

    install_busybox(&root)?;
    for (src, dest) in &spec.binaries {
        install_binary(&root, src, dest)?;
    }
    // The dynamic loader is named by absolute path in every binary, whatever ldd printed.
    copy_file(
        Path::new("/lib64/ld-linux-x86-64.so.2"),
        &root.join("lib64/ld-linux-x86-64.so.2"),
    )?;
    for (src, dest) in &spec.files {
        copy_file(src, &under(&root, dest))?;
    }
    for f in ["/etc/protocols", "/etc/services"] {
        if Path::new(f).is_file() {
            copy_file(Path::new(f), &under(&root, f))?;
        }
    }
    write(
        &root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n",
        0o644,
    )?;
    write(&root.join("etc/group"), "root:x:0:\n", 0o644)?;
    install_modules(&root, spec.kernel, spec.modules)?;
    write(&root.join("init"), &init_script(&spec.payload), 0o755)?;

    let archive = run_dir.join("initrd.gz");
    pack(&root, &archive)?;
    Ok(archive)
}

fn under(root: &Path, abs: &str) -> PathBuf {
    root.join(abs.trim_start_matches('/'))
}

fn mkdir(d: &Path) -> Result<()> {
    std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", path.display()))
}

/// Copies a file's content (following symlinks), replacing whatever is at `dest`.
fn copy_file(src: &Path, dest: &Path) -> Result<()> {
    if let Some(parent) = dest.parent() {
        mkdir(parent)?;
    }
    if dest.symlink_metadata().is_ok() {
        std::fs::remove_file(dest).with_context(|| format!("cannot replace {}", dest.display()))?;
    }
    std::fs::copy(src, dest)
        .with_context(|| format!("cannot copy {} to {}", src.display(), dest.display()))?;
    Ok(())
}

/// Finds a host program by name in PATH and the sbin directories (not always on PATH).
pub(crate) fn host_program(name: &str) -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("`{name}` not found on this machine (run `cargo xtask setup`)"))
}

/// Busybox and a link for every applet, at the place busybox itself names.
fn install_busybox(root: &Path) -> Result<()> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .context("busybox not found (install busybox-static: `cargo xtask setup`)")?;
    install_binary(root, busybox, "/bin/busybox")?;
    let list = cmd::output(Command::new(busybox).arg("--list-full"))?;
    for applet in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let link = root.join(applet);
        if link.symlink_metadata().is_ok() {
            continue;
        }
        if let Some(parent) = link.parent() {
            mkdir(parent)?;
        }
        std::os::unix::fs::symlink("/bin/busybox", &link)
            .with_context(|| format!("cannot link {}", link.display()))?;
    }
    // The kernel autoloads modules (e.g. nft_counter on 5.10) through /sbin/modprobe.
    if root.join("sbin/modprobe").symlink_metadata().is_err() {
        bail!("busybox has no modprobe applet: the kernel could not autoload modules");
    }
    Ok(())
}

/// Copies an executable and every shared library `ldd` lists for it.
fn install_binary(root: &Path, src: &Path, dest: &str) -> Result<()> {
    if !src.is_file() {
        bail!("{} does not exist", src.display());
    }
    copy_file(src, &under(root, dest))?;
    for lib in shared_libraries(src)? {
        let Some(lib_str) = lib.to_str() else {
            continue;
        };
        let target = under(root, lib_str);
        if !target.exists() {
            copy_file(&lib, &target)?;
        }
    }
    Ok(())
}

/// The absolute library paths `ldd` prints; nothing for static executables.
fn shared_libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    // ldd exits non-zero for static executables, so read its output whatever the status.
    let out = Command::new("ldd")
        .arg(bin)
        .stdin(Stdio::null())
        .output()
        .context("cannot run ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.contains("not found") {
            bail!(
                "{}: a library is missing on this machine: {line}",
                bin.display()
            );
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

fn install_modules(root: &Path, kernel: &Kernel, wanted: &[&str]) -> Result<()> {
    let closure = modules::closure(&kernel.modules_dir, wanted, &kernel.builtin)?;
    // The lab cannot work without conntrack; every other module may be absent (a kernel that
    // lacks one fails the scenarios that need it, with the agent's own message). A kernel that
    // tells neither (no modules.builtin, no config) boots and the VM tells.
    let can_tell =
        kernel.modules_dir.join("modules.builtin").is_file() || !kernel.builtin.is_empty();
    if can_tell && closure.missing.iter().any(|m| m == "nf_conntrack") {
        bail!(
            "kernel {} ({}) has nf_conntrack neither as a module nor built in",
            kernel.label,
            kernel.release
        );
    }
    let dest_dir = root.join("lib/modules").join(&kernel.release);
    mkdir(&dest_dir)?;
    for rel in &closure.files {
        copy_file(&kernel.modules_dir.join(rel), &dest_dir.join(rel))?;
    }
    // depmod and modprobe consult these to tell built-in modules from missing ones.
    for f in [
        "modules.order",
        "modules.builtin",
        "modules.builtin.modinfo",
    ] {
        let src = kernel.modules_dir.join(f);
        if src.is_file() {
            copy_file(&src, &dest_dir.join(f))?;
        }
    }
    cmd::output(
        Command::new("depmod")
            .arg("-b")
            .arg(root)
            .arg(&kernel.release),
    )
    .context("depmod on the initramfs tree")?;
    let mut notes = Vec::new();
    if !closure.builtin.is_empty() {
        notes.push(format!("built in: {}", closure.builtin.join(" ")));
    }
    if !closure.missing.is_empty() {
        notes.push(format!(
            "absent from this kernel: {}",
            closure.missing.join(" ")
        ));
    }
    println!(
        "initramfs: {} module files for {}{}",
        closure.files.len(),
        kernel.release,
        if notes.is_empty() {
            String::new()
        } else {
            format!(" ({})", notes.join("; "))
        }
    );
    Ok(())
}

/// Packs the tree as cpio newc (plus /dev/console, which the kernel opens before /init runs)
/// and compresses it with gzip, which every kernel of the lab can unpack.
fn pack(root: &Path, archive: &Path) -> Result<()> {
    let out = std::fs::File::create(archive)
        .with_context(|| format!("cannot create {}", archive.display()))?;
    let mut gzip = Command::new("gzip")
        .args(["-1", "-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(out)
        .spawn()
        .context("cannot run gzip")?;
    let stdin = gzip.stdin.take().context("gzip has no stdin")?;
    let mut writer = cpio::Writer::new(BufWriter::with_capacity(1 << 20, stdin));
    writer.add_tree(root)?;
    writer.add_char_dev(&cpio::CharDev {
        path: "dev/console",
        mode: 0o600,
        major: 5,
        minor: 1,
    })?;
    // Dropping the writer closes gzip's stdin so that it can finish.
    drop(writer.finish()?);
    let status = gzip.wait().context("waiting for gzip")?;
    if !status.success() {
        bail!("gzip failed ({status})");
    }
    Ok(())
}
