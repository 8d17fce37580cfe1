//! `cargo xtask build`: ctscope (with its eBPF object) and the lab binaries.

use crate::cmd;
use crate::paths;
use anyhow::{Context, Result, bail};
use std::path::PathBuf;

/// The binaries the VM lab copies into the initramfs.
pub(crate) struct Binaries {
    pub ctscope: PathBuf,
    pub lab_agent: PathBuf,
    pub loadgen: PathBuf,
}

pub(crate) fn binaries(release: bool) -> Binaries {
    let dir = paths::profile_dir(release);
    Binaries {
        ctscope: dir.join("ctscope"),
        lab_agent: dir.join("lab-agent"),
        loadgen: dir.join("loadgen"),
    }
}

pub(crate) fn run(release: bool) -> Result<Binaries> {
    // conntrack-user's build.rs writes an empty stub object when asked to skip the eBPF build:
    // a ctscope built that way cannot observe anything, so refuse instead of producing it.
    if std::env::var_os("AYA_BUILD_SKIP").is_some() {
        bail!(
            "AYA_BUILD_SKIP is set: the eBPF object would be an empty stub. \
             Unset it (and run `cargo xtask setup` if bpf-linker is missing)"
        );
    }
    let mut cargo = cmd::cargo();
    cargo
        .current_dir(paths::workspace_root())
        .args([
            "build",
            "--package",
            "conntrack-user",
            "--package",
            "ctscope-lab",
            "--bins",
        ])
        // bpf-linker lives in ~/.cargo/bin, which is not on every CI PATH.
        .env("PATH", paths::path_with_cargo_bin()?);
    if release {
        cargo.arg("--release");
    }
    println!("build: {}", cmd::display(&cargo));
    cmd::run(&mut cargo).context("building ctscope and the lab binaries")?;

    let bins = binaries(release);
    for bin in [&bins.ctscope, &bins.lab_agent, &bins.loadgen] {
        if !bin.is_file() {
            bail!("the build finished but {} is missing", bin.display());
        }
    }
    check_ebpf_object(&bins.ctscope)?;
    Ok(bins)
}

/// Asks the built ctscope how large its embedded eBPF object is: 0 means the stub was embedded.
fn check_ebpf_object(ctscope: &std::path::Path) -> Result<()> {
    // TODO: once `ctscope version --json` exists everywhere, make its absence an error too.
    let Some(out) = cmd::probe(ctscope, &["version", "--json"]) else {
        println!("build: `ctscope version --json` not available yet: eBPF object size not checked");
        return Ok(());
    };
    let json: serde_json::Value = match serde_json::from_str(out.trim()) {
        Ok(v) => v,
        Err(e) => {
            println!("build: `ctscope version --json` printed no JSON ({e}): not checked");
            return Ok(());
        }
    };
    match json
        .get("ebpf_object_bytes")
        .and_then(serde_json::Value::as_u64)
    {
        Some(0) => bail!(
            "ctscope embeds an EMPTY eBPF object (the build used the stub: bpf-linker or nightly \
             rust-src missing?). Run `cargo xtask setup`, then `cargo clean -p conntrack-user`"
        ),
        Some(n) => {
            println!("build: eBPF object embedded in ctscope: {n} bytes");
            Ok(())
        }
        None => {
            println!("build: `ctscope version --json` has no ebpf_object_bytes: not checked");
            Ok(())
        }
    }
}
