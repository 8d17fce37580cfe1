//! `cargo xtask setup`: install what a fresh Debian 12 machine lacks, idempotently.

use crate::cmd;
use crate::paths;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian packages the build and the VM lab need.
pub(crate) const DEBIAN_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "cpio",
    "zstd",
    "xz-utils",
    "nftables",
    "iproute2",
    // `ctscope serve`'s test scrapes it with a real Prometheus server (and lints the text
    // format with its promtool).
    "prometheus",
    // `ctscope top`'s test runs it in a real terminal.
    "tmux",
    // `ctscope report --html`'s test renders the page in a real browser (headless).
    "chromium",
];

/// The bpf-linker release that matches aya 0.14 and nightly's LLVM.
const BPF_LINKER_VERSION: &str = "0.13.0";

pub(crate) fn run() -> Result<()> {
    println!("setup: checking the machine");
    debian_packages()?;
    toolchain()?;
    println!("setup: done");
    Ok(())
}

/// What building ctscope itself needs (no VM lab packages): nightly's
/// components and bpf-linker. `install` uses only this, so installing on a
/// real host needs neither root for apt nor qemu.
pub(crate) fn toolchain() -> Result<()> {
    nightly_components()?;
    bpf_linker()
}

/// Whether we run as root (from /proc, so no unsafe libc call is needed).
pub(crate) fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

fn is_installed(package: &str) -> bool {
    cmd::probe("dpkg-query", &["-W", "-f=${Status}", package])
        .is_some_and(|s| s.trim() == "install ok installed")
}

fn debian_packages() -> Result<()> {
    if cmd::probe("dpkg-query", &["--version"]).is_none() {
        bail!("dpkg-query not found: setup supports Debian (12 or later) only");
    }
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| !is_installed(p))
        .collect();
    if missing.is_empty() {
        println!(
            "setup: Debian packages present: {}",
            DEBIAN_PACKAGES.join(" ")
        );
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages: {}\n\
             apt-get needs root: run `sudo cargo xtask setup` (or install them yourself with\n\
             `sudo apt-get install --no-install-recommends {}`)",
            missing.join(" "),
            missing.join(" ")
        );
    }
    println!("setup: installing Debian packages: {}", missing.join(" "));
    // A failing third-party source makes `apt-get update` exit non-zero although Debian's own
    // lists are fine: warn and let the install decide.
    if let Err(e) = cmd::run(
        Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    ) {
        eprintln!("setup: warning: {e:#}; trying the install anyway");
    }
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("apt-get install")?;
    let still: Vec<&str> = missing.into_iter().filter(|p| !is_installed(p)).collect();
    if !still.is_empty() {
        bail!(
            "apt-get ran but these are still not installed: {}",
            still.join(" ")
        );
    }
    Ok(())
}

fn rustup() -> Command {
    Command::new("rustup")
}

/// Nightly's components: rust-src for `-Z build-std=core` (the eBPF build), clippy for the
/// eBPF crate's lint in `cargo xtask test` (a `--profile minimal` nightly lacks it).
const NIGHTLY_COMPONENTS: &[&str] = &["rust-src", "clippy"];

fn nightly_components() -> Result<()> {
    let installed = cmd::output(rustup().args(["+nightly", "component", "list", "--installed"]))
        .context(
            "cannot list nightly's components: is the nightly toolchain installed \
             (`rustup toolchain install nightly`)?",
        )?;
    for component in NIGHTLY_COMPONENTS {
        if installed.lines().any(|l| l.trim().starts_with(component)) {
            println!("setup: {component} for nightly present");
            continue;
        }
        println!("setup: adding {component} to nightly");
        cmd::run(rustup().args(["component", "add", component, "--toolchain", "nightly"]))?;
    }
    Ok(())
}

/// The stable directory bpf-linker's rpath points to (`$LLVM_PREFIX/lib`). It holds symlinks into
/// nightly's sysroot, so it must outlive any temporary directory.
pub(crate) fn llvm_prefix() -> Result<PathBuf> {
    Ok(paths::home_dir()?.join(".local/share/ctscope/llvm"))
}

/// Links every `libLLVM.so.<major>*` of nightly (and the unversioned name) into the prefix.
/// Returns LLVM's major version. Refreshed on every run: a nightly update renames the library.
fn link_nightly_llvm(prefix: &Path) -> Result<u32> {
    let sysroot = cmd::output(rustup().args(["run", "nightly", "rustc", "--print", "sysroot"]))
        .context("cannot find nightly's sysroot")?;
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    let mut libs: Vec<PathBuf> = std::fs::read_dir(&lib)
        .with_context(|| format!("cannot read {}", lib.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .collect();
    libs.sort();
    let Some(first) = libs.first() else {
        bail!(
            "nightly ships no libLLVM.so.* in {}: bpf-linker cannot be built against it",
            lib.display()
        );
    };
    let name = first
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    let major: u32 = name
        .trim_start_matches("libLLVM.so.")
        .split(['.', '-'])
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("cannot read LLVM's major version from {name}"))?;
    let dest = prefix.join("lib");
    std::fs::create_dir_all(&dest).with_context(|| format!("cannot create {}", dest.display()))?;
    for src in &libs {
        let file_name = src.file_name().unwrap_or_default();
        symlink_force(src, &dest.join(file_name))?;
        symlink_force(src, &dest.join("libLLVM.so"))?;
    }
    Ok(major)
}

fn symlink_force(src: &Path, link: &Path) -> Result<()> {
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(link).with_context(|| format!("cannot replace {}", link.display()))?;
    }
    std::os::unix::fs::symlink(src, link)
        .with_context(|| format!("cannot link {} -> {}", link.display(), src.display()))
}

/// `bpf-linker --version` if it runs (it only runs when its libLLVM resolves).
fn bpf_linker_version() -> Option<String> {
    let on_path = cmd::probe("bpf-linker", &["--version"]);
    let in_cargo_bin = || {
        let bin = paths::cargo_bin_dir().ok()?.join("bpf-linker");
        cmd::probe(bin, &["--version"])
    };
    on_path.or_else(in_cargo_bin).map(|v| v.trim().to_owned())
}

fn bpf_linker() -> Result<()> {
    let prefix = llvm_prefix()?;
    let major = link_nightly_llvm(&prefix)?;
    let wanted = format!("bpf-linker {BPF_LINKER_VERSION}");
    match bpf_linker_version() {
        Some(v) if v == wanted => {
            println!(
                "setup: {v} present (LLVM {major} from nightly, prefix {})",
                prefix.display()
            );
            return Ok(());
        }
        Some(v) => println!("setup: found `{v}`, want {wanted}: rebuilding"),
        None => println!("setup: bpf-linker missing or cannot load its libLLVM: building it"),
    }
    println!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {major} \
         (LLVM_PREFIX={}, takes about a minute)",
        prefix.display()
    );
    cmd::run(
        Command::new("cargo")
            .args(["+stable", "install", "bpf-linker", "--force"])
            .args(["--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", &prefix),
    )
    .context("building bpf-linker")?;
    match bpf_linker_version() {
        Some(v) if v == wanted => {
            println!("setup: installed {v}");
            Ok(())
        }
        other => bail!(
            "bpf-linker was installed but does not run as expected (got {other:?}); \
             check that {} holds libLLVM.so",
            prefix.join("lib").display()
        ),
    }
}
