//! Builds the eBPF object (`conntrack-ebpf`) with nightly + bpf-linker through
//! aya-build, or writes an empty stub when that toolchain is missing so that a
//! plain `cargo build`/`cargo test` of the userspace logic works on stable
//! alone (aya's own stub pattern). A stub-built ctscope says so at run time
//! and refuses the kprobe mode; `cargo xtask setup` installs the toolchain.

use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};

fn bpf_linker() -> Option<PathBuf> {
    let exe = "bpf-linker";
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            let p = dir.join(exe);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    let p = cargo_home.join("bin").join(exe);
    p.is_file().then_some(p)
}

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=CTSCOPE_EBPF_STUB");
    println!("cargo:rerun-if-env-changed=PATH");
    let out = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let object = out.join("conntrack");
    let forced_stub = env::var_os("CTSCOPE_EBPF_STUB").is_some_and(|v| v == "1")
        || env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v == "true");
    let linker = bpf_linker();
    if forced_stub || linker.is_none() {
        let why = if forced_stub {
            "CTSCOPE_EBPF_STUB/AYA_BUILD_SKIP is set"
        } else {
            "bpf-linker was not found (run `cargo xtask setup`)"
        };
        println!("cargo:warning=ctscope: building WITHOUT the eBPF object: {why}");
        fs::write(&object, []).with_context(|| format!("writing stub {}", object.display()))?;
        return Ok(());
    }
    if let Some(linker) = linker
        && let Some(dir) = linker.parent()
    {
        // rustc finds the linker through PATH; make sure its directory is there.
        let mut paths: Vec<PathBuf> =
            env::split_paths(&env::var_os("PATH").unwrap_or_default()).collect();
        if !paths.iter().any(|p| p == dir) {
            paths.push(dir.to_path_buf());
            let joined = env::join_paths(paths)?;
            // SAFETY: build scripts are single-threaded at this point.
            unsafe { env::set_var("PATH", joined) };
        }
    }
    // aya-build forwards every line the nested cargo prints as a build
    // warning; keep that to real diagnostics (errors and warnings still show).
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { env::set_var("CARGO_TERM_QUIET", "true") };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../conntrack-ebpf");
    let root = root
        .canonicalize()
        .with_context(|| format!("{}", root.display()))?;
    let root_dir = root
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", root.display()))?;
    println!("cargo:rerun-if-changed={root_dir}/src");
    println!("cargo:rerun-if-changed={root_dir}/../conntrack-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "conntrack-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the eBPF object with nightly + bpf-linker")
}
