//! Kernels for the VM lab, from a `--kernel SPEC`:
//!
//! - a series (`5.10`, `6.1`, `6.12`, `7.3`, ...): the newest Debian cloud kernel of that series
//!   in the suites the lab knows ([`debian::SUITES`]); `latest`: the newest of all;
//! - `debian:PACKAGE[=VERSION]`: one Debian package by name (with its modules package, for the
//!   7.x layout);
//! - a `.deb` file, or several joined (`image.deb,modules.deb`; `+` after `.deb` works too and
//!   is what `test --kernels`, itself comma-separated, needs);
//! - a directory with a kernel someone built or unpacked (see [`tree::locate`]).
//!
//! Downloads and unpacked packages are cached under `target/lab/kernels/<label>/` with a
//! `kernel.json` record; a user's directory is never written to (depmod runs on a copy).

mod bzimage;
mod debian;
mod tree;

use crate::cmd;
use crate::paths;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Bump when the record's fields change: an older record is re-fetched.
const RECORD_FORMAT: u64 = 4;

/// How a kernel was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Spec {
    /// `7.3`: the newest Debian kernel of the series.
    Series(String),
    /// The newest Debian cloud kernel of all.
    Latest,
    /// `debian:PACKAGE[=VERSION]`.
    Debian {
        package: String,
        version: Option<String>,
    },
    /// One or more .deb files, unpacked into one root.
    Debs(Vec<PathBuf>),
    /// A directory holding an image and (usually) its modules.
    Dir(PathBuf),
}

impl Spec {
    pub(crate) fn parse(text: &str) -> Result<Spec> {
        if text == "latest" {
            return Ok(Spec::Latest);
        }
        if let Some(rest) = text.strip_prefix("debian:") {
            let (package, version) = match rest.split_once('=') {
                Some((p, v)) => (p, Some(v)),
                None => (rest, None),
            };
            let name_ok = !package.is_empty()
                && package
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".+-".contains(c));
            let version_ok = version.is_none_or(|v| {
                !v.is_empty()
                    && v.chars()
                        .all(|c| c.is_ascii_alphanumeric() || ".+~:-".contains(c))
            });
            if !name_ok || !version_ok {
                bail!(
                    "`{}` is no Debian package: debian:PACKAGE or debian:PACKAGE=VERSION",
                    shown(Path::new(text))
                );
            }
            return Ok(Spec::Debian {
                package: package.to_owned(),
                version: version.map(str::to_owned),
            });
        }
        if is_series(text) {
            return Ok(Spec::Series(text.to_owned()));
        }
        let debs: Vec<PathBuf> = text
            .replace(".deb,", ".deb\n")
            .replace(".deb+", ".deb\n")
            .split('\n')
            .map(PathBuf::from)
            .collect();
        if text.ends_with(".deb") {
            for d in &debs {
                if !d.is_file() {
                    bail!("kernel package {} does not exist", shown(d));
                }
            }
            return Ok(Spec::Debs(debs));
        }
        let dir = PathBuf::from(text);
        if dir.is_dir() {
            return Ok(Spec::Dir(dir));
        }
        bail!(
            "unknown kernel `{}`: give a series (5.10, 6.1, 6.12, 7.3, ...), `latest`, \
             debian:PACKAGE[=VERSION], a .deb file (image.deb,modules.deb) or a kernel directory",
            shown(Path::new(text))
        )
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Spec::Series(_) => "series",
            Spec::Latest => "latest",
            Spec::Debian { .. } => "debian",
            Spec::Debs(_) => "deb",
            Spec::Dir(_) => "dir",
        }
    }

    /// A name for results and cache directories: only `[A-Za-z0-9._-]`. Paths get a hash of
    /// their absolute form, so that two `kernel/` directories do not share a cache.
    pub(crate) fn label(&self) -> String {
        match self {
            Spec::Series(s) => s.clone(),
            Spec::Latest => "latest".to_owned(),
            Spec::Debian { package, version } => match version {
                Some(v) => sanitize(&format!("debian-{package}-{v}")),
                None => sanitize(&format!("debian-{package}")),
            },
            Spec::Debs(debs) => {
                let first = debs
                    .first()
                    .and_then(|d| d.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                // `name_version_arch.deb`: the package name says enough.
                let name = first.split('_').next().unwrap_or_default();
                let joined: Vec<String> = debs.iter().map(|d| absolute(d)).collect();
                sanitize(&format!("deb-{name}-{:08x}", fnv(&joined.join("\n"))))
            }
            Spec::Dir(dir) => {
                let name = absolute(dir);
                let base = Path::new(&name)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                sanitize(&format!("dir-{base}-{:08x}", fnv(&name)))
            }
        }
    }
}

/// `7.3`, `6.12`: two small numbers.
fn is_series(text: &str) -> bool {
    let Some((major, minor)) = text.split_once('.') else {
        return false;
    };
    let num = |s: &str| !s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit());
    num(major) && num(minor)
}

/// Only `[A-Za-z0-9._-]`, at most 100 characters, never starting with `.`.
fn sanitize(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    if out.starts_with('.') {
        out.replace_range(0..1, "_");
    }
    out
}

fn absolute(p: &Path) -> String {
    p.canonicalize()
        .unwrap_or_else(|_| p.to_path_buf())
        .to_string_lossy()
        .into_owned()
}

/// FNV-1a, folded to 32 bits: a stable short name for a path (not a checksum of anything).
fn fnv(text: &str) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h ^ (h >> 32)) as u32
}

/// A path or name from the user, with control characters and quotes escaped, for messages.
pub(crate) fn shown(p: &Path) -> String {
    p.to_string_lossy().escape_debug().to_string()
}

/// A kernel ready to boot.
#[derive(Debug, Clone)]
pub(crate) struct Kernel {
    /// Safe for file names: see [`Spec::label`].
    pub label: String,
    /// The spec as given.
    pub spec: String,
    /// series, latest, debian, deb or dir.
    pub spec_kind: String,
    /// The image's Debian package name, when it came from one.
    pub package: Option<String>,
    /// That package's exact version.
    pub version: Option<String>,
    /// Where it came from: `name=version` of every Debian package, or the path(s) given.
    pub source: Vec<String>,
    /// `uname -r`, from the image's own header (and the modules directory's name).
    pub release: String,
    pub vmlinuz: PathBuf,
    pub image_sha256: String,
    /// `.../lib/modules/<release>` with modules.dep.
    pub modules_dir: PathBuf,
    /// Lab modules the kernel's config builds in (where modules.builtin may be missing).
    pub builtin: Vec<String>,
    /// The preemption model its config chooses by default (`none`, `voluntary`, `full`,
    /// `lazy`, `rt`), when it has a config: the lab's own reading, independent of ctscope's.
    pub preempt: Option<String>,
    /// Whether its config lets tracing programs (fentry/fexit) attach to nf_conntrack's
    /// functions (see [`fentry_by_config`]), when it has a config: which mode ctscope's
    /// `--mode auto` must choose there.
    pub fentry: Option<bool>,
}

fn kernel_dir(label: &str) -> PathBuf {
    paths::lab_dir().join("kernels").join(label)
}

/// Fails with a clear message when a spec is invalid (for argument checking up front).
pub(crate) fn check_specs(specs: &[String]) -> Result<()> {
    for s in specs {
        Spec::parse(s)?;
    }
    if specs.is_empty() {
        bail!("no kernels selected");
    }
    Ok(())
}

/// Returns the kernel for `text` (a spec, see the module's doc), downloading or unpacking it
/// the first time, and checks that the lab can use it.
pub(crate) fn prepare(text: &str) -> Result<Kernel> {
    let spec = Spec::parse(text)?;
    let label = spec.label();
    let kernel = match &spec {
        Spec::Series(_) | Spec::Latest | Spec::Debian { .. } => from_debian(text, &spec, &label)?,
        Spec::Debs(debs) => from_debs(text, &spec, &label, debs)?,
        Spec::Dir(dir) => from_dir(text, &spec, &label, dir)?,
    };
    Ok(kernel)
}

/// Prints and returns the cached kernel when its record is current and its files intact.
fn cached(label: &str, inputs: &[String]) -> Result<Option<Kernel>> {
    let record = kernel_dir(label).join("kernel.json");
    let Some(kernel) = load_record(&record, inputs)? else {
        return Ok(None);
    };
    if tree::sha256(&kernel.vmlinuz)? != kernel.image_sha256 {
        println!("kernel {label}: the cached image changed; fetching again");
        return Ok(None);
    }
    println!(
        "kernel {label}: cached {} ({})",
        kernel.source.join(" + "),
        kernel.release
    );
    Ok(Some(kernel))
}

/// A fresh cache directory: a half-finished earlier attempt must not be mistaken for a kernel.
fn fresh_dir(label: &str) -> Result<PathBuf> {
    let dir = kernel_dir(label);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clean {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

fn from_debian(text: &str, spec: &Spec, label: &str) -> Result<Kernel> {
    if let Some(kernel) = cached(label, &[])? {
        return Ok(kernel);
    }
    let found = match spec {
        Spec::Series(s) => debian::newest(Some(s))?,
        Spec::Latest => debian::newest(None)?,
        Spec::Debian { package, version } => debian::package(package, version.as_deref())?,
        Spec::Debs(_) | Spec::Dir(_) => bail!("not a Debian spec"),
    };
    let dir = fresh_dir(label)?;
    let debs = debian::download(&found, &dir)?;
    let root = unpack(&debs, &dir)?;
    let source: Vec<String> = found.packages.iter().map(debian::Package::spec).collect();
    let image = found.packages.first().context("no package found")?;
    let kernel = finish(
        text,
        spec,
        label,
        &root,
        Some((image.name.clone(), image.version.clone())),
        source,
        &[],
    )?;
    // The unpacked tree is all we need; the .debs would only double the cache.
    for deb in &debs {
        std::fs::remove_file(deb).with_context(|| format!("cannot remove {}", deb.display()))?;
    }
    Ok(kernel)
}

fn from_debs(text: &str, spec: &Spec, label: &str, debs: &[PathBuf]) -> Result<Kernel> {
    // The record remembers which files it was made from: a rebuilt .deb is unpacked again.
    let mut inputs = Vec::new();
    for d in debs {
        inputs.push(tree::sha256(d)?);
    }
    if let Some(kernel) = cached(label, &inputs)? {
        return Ok(kernel);
    }
    let dir = fresh_dir(label)?;
    let root = unpack(debs, &dir)?;
    let mut source = Vec::new();
    let mut image = None;
    for d in debs {
        let fields = cmd::output(
            Command::new("dpkg-deb")
                .arg("-f")
                .arg(d)
                .args(["Package", "Version"]),
        )
        .with_context(|| format!("{} is no Debian package", shown(d)))?;
        let field = |k: &str| {
            fields
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        let (name, version) = (field("Package:"), field("Version:"));
        if image.is_none() && !name.starts_with("linux-modules-") {
            image = Some((name.clone(), version.clone()));
        }
        source.push(absolute(d));
    }
    finish(text, spec, label, &root, image, source, &inputs)
}

fn from_dir(text: &str, spec: &Spec, label: &str, dir: &Path) -> Result<Kernel> {
    let found = tree::locate(dir).with_context(|| format!("kernel {}", shown(dir)))?;
    refuse_problems(label, &found)?;
    let ConfigFacts {
        builtin,
        preempt,
        fentry,
    } = config_facts(&found)?;
    let modules_dir = match &found.modules_dir {
        // `make modules_install` ran depmod: use the tree as it is.
        Some(m) if m.join("modules.dep").is_file() => m.clone(),
        // Never write into the user's directory: depmod runs on a copy.
        Some(m) => {
            let cache = fresh_dir(label)?;
            let copy = cache.join("root/lib/modules").join(&found.release);
            std::fs::create_dir_all(&copy)
                .with_context(|| format!("cannot create {}", copy.display()))?;
            // The contents of the real directory: a symlinked <release> copied as the link
            // itself would let depmod write through it into the user's tree.
            let real = m
                .canonicalize()
                .with_context(|| format!("cannot resolve {}", shown(m)))?;
            println!(
                "kernel {label}: copying {} to run depmod on the copy",
                shown(&real)
            );
            cmd::run(
                Command::new("cp")
                    .arg("-a")
                    .arg("--")
                    .arg(real.join("."))
                    .arg(&copy),
            )?;
            let meta = std::fs::symlink_metadata(&copy)
                .with_context(|| format!("cannot stat {}", copy.display()))?;
            if !meta.is_dir() {
                bail!("{} is not a directory after the copy", copy.display());
            }
            tree::depmod(&cache.join("root"), &found.release)?;
            copy
        }
        // Everything built in (and said so, or the checks above would have refused it): an
        // empty module set.
        None => {
            let cache = fresh_dir(label)?;
            let empty = cache.join("root/lib/modules").join(&found.release);
            std::fs::create_dir_all(&empty)
                .with_context(|| format!("cannot create {}", empty.display()))?;
            println!("kernel {label}: no modules directory; the lab will load none");
            tree::depmod(&cache.join("root"), &found.release)?;
            empty
        }
    };
    let kernel = Kernel {
        label: label.to_owned(),
        spec: text.to_owned(),
        spec_kind: spec.kind().to_owned(),
        package: None,
        version: None,
        source: vec![absolute(dir)],
        release: found.release,
        vmlinuz: found.image,
        image_sha256: found.image_sha256,
        modules_dir,
        builtin,
        preempt,
        fentry,
    };
    println!(
        "kernel {label}: {} from {} (sha256 {})",
        kernel.release,
        shown(&kernel.vmlinuz),
        &kernel.image_sha256[..12]
    );
    Ok(kernel)
}

/// `dpkg -x` of every package into `<dir>/root`.
fn unpack(debs: &[PathBuf], dir: &Path) -> Result<PathBuf> {
    let root = dir.join("root");
    for deb in debs {
        let step = crate::progress::step(format!("kernel: unpacking {}", shown(deb)));
        cmd::run(Command::new("dpkg").arg("-x").arg(deb).arg(&root))
            .with_context(|| format!("unpacking {}", shown(deb)))?;
        step.finish("unpacked");
    }
    Ok(root)
}

/// Locates, checks and depmods an unpacked root (the lab's own), then records it.
fn finish(
    text: &str,
    spec: &Spec,
    label: &str,
    root: &Path,
    image: Option<(String, String)>,
    source: Vec<String>,
    inputs: &[String],
) -> Result<Kernel> {
    let found = tree::locate(root).with_context(|| format!("kernel {label}"))?;
    refuse_problems(label, &found)?;
    let Some(modules_dir) = found.modules_dir.clone() else {
        bail!(
            "kernel {label}: no lib/modules/{} or usr/lib/modules/{} in {}",
            found.release,
            found.release,
            source.join(", ")
        );
    };
    // Debian's packages have no modules.dep (their postinst runs depmod).
    if !modules_dir.join("modules.dep").is_file() {
        tree::depmod(root, &found.release)?;
    }
    let ConfigFacts {
        builtin,
        preempt,
        fentry,
    } = config_facts(&found)?;
    let (package, version) = image.unzip();
    let kernel = Kernel {
        label: label.to_owned(),
        spec: text.to_owned(),
        spec_kind: spec.kind().to_owned(),
        package,
        version,
        source,
        release: found.release,
        vmlinuz: found.image,
        image_sha256: found.image_sha256,
        modules_dir,
        builtin,
        preempt,
        fentry,
    };
    save_record(&kernel_dir(label).join("kernel.json"), &kernel, inputs)?;
    println!(
        "kernel {label}: {} ready ({}, sha256 {})",
        kernel.source.join(" + "),
        kernel.release,
        &kernel.image_sha256[..12]
    );
    Ok(kernel)
}

/// One clear line, before any boot, when the files say that the lab cannot use this kernel.
fn refuse_problems(label: &str, found: &tree::Tree) -> Result<()> {
    let problems = tree::problems(found)?;
    if !problems.is_empty() {
        bail!(
            "kernel {label} ({}) cannot be used by the lab: {}",
            found.release,
            problems.join("; ")
        );
    }
    Ok(())
}

/// What the kernel's config says (all empty or `None` without a config).
#[derive(Default)]
struct ConfigFacts {
    /// The lab modules it builds in.
    builtin: Vec<String>,
    /// Its default preemption model.
    preempt: Option<String>,
    /// Whether tracing programs can attach to conntrack.
    fentry: Option<bool>,
}

fn config_facts(found: &tree::Tree) -> Result<ConfigFacts> {
    let Some(config) = &found.config else {
        return Ok(ConfigFacts::default());
    };
    let text = std::fs::read_to_string(config)
        .with_context(|| format!("cannot read {}", shown(config)))?;
    let builtin = tree::builtin_by_config(&text);
    let fentry = fentry_by_config(&text, builtin.iter().any(|m| m == "nf_conntrack"));
    Ok(ConfigFacts {
        builtin,
        preempt: preempt_model(&text),
        fentry: Some(fentry),
    })
}

/// Whether fentry/fexit programs can attach to nf_conntrack's functions on a kernel built
/// with `config`: BTF for them (vmlinux BTF where conntrack is built in, module BTF where it
/// is a module: CONFIG_DEBUG_INFO_BTF_MODULES, 5.11+), a JIT (BPF trampolines are JITed)
/// and ftrace direct calls (how a trampoline is entered: kernel/bpf/trampoline.c, v6.1).
fn fentry_by_config(config: &str, conntrack_builtin: bool) -> bool {
    let y = |sym: &str| tree::config_value(config, sym).as_deref() == Some("y");
    y("DEBUG_INFO_BTF")
        && y("BPF_JIT")
        && y("DYNAMIC_FTRACE_WITH_DIRECT_CALLS")
        && (conntrack_builtin || y("DEBUG_INFO_BTF_MODULES"))
}

/// The preemption model a config chooses (kernel/Kconfig.preempt's `choice`; with
/// PREEMPT_DYNAMIC it is the boot default, which the lab does not override).
fn preempt_model(config: &str) -> Option<String> {
    [
        ("PREEMPT_RT", "rt"),
        ("PREEMPT_LAZY", "lazy"),
        ("PREEMPT", "full"),
        ("PREEMPT_VOLUNTARY", "voluntary"),
        ("PREEMPT_NONE", "none"),
    ]
    .iter()
    .find(|(sym, _)| tree::config_value(config, sym).as_deref() == Some("y"))
    .map(|(_, model)| (*model).to_owned())
}

fn load_record(record: &Path, inputs: &[String]) -> Result<Option<Kernel>> {
    let Ok(text) = std::fs::read_to_string(record) else {
        return Ok(None);
    };
    let json: Value = serde_json::from_str(&text)
        .with_context(|| format!("corrupt {} (delete it to fetch again)", record.display()))?;
    if json.get("format").and_then(Value::as_u64) != Some(RECORD_FORMAT) {
        // An older xtask's record lacks the kernel's identity: fetch again.
        return Ok(None);
    }
    let field = |k: &str| json.get(k).and_then(Value::as_str).map(str::to_owned);
    let list = |k: &str| -> Vec<String> {
        json.get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    if list("inputs_sha256") != inputs {
        return Ok(None);
    }
    let (
        Some(label),
        Some(spec),
        Some(spec_kind),
        Some(release),
        Some(vmlinuz),
        Some(sha),
        Some(modules_dir),
    ) = (
        field("label"),
        field("spec"),
        field("spec_kind"),
        field("release"),
        field("vmlinuz"),
        field("image_sha256"),
        field("modules_dir"),
    )
    else {
        return Ok(None);
    };
    let kernel = Kernel {
        label,
        spec,
        spec_kind,
        package: field("package"),
        version: field("version"),
        source: list("source"),
        release,
        vmlinuz: vmlinuz.into(),
        image_sha256: sha,
        modules_dir: modules_dir.into(),
        builtin: list("builtin"),
        preempt: field("preempt"),
        fentry: json.get("fentry").and_then(Value::as_bool),
    };
    let complete = kernel.vmlinuz.is_file() && kernel.modules_dir.join("modules.dep").is_file();
    Ok(complete.then_some(kernel))
}

fn save_record(record: &Path, kernel: &Kernel, inputs: &[String]) -> Result<()> {
    let json = json!({
        "format": RECORD_FORMAT,
        "label": kernel.label,
        "spec": kernel.spec,
        "spec_kind": kernel.spec_kind,
        "package": kernel.package,
        "version": kernel.version,
        "source": kernel.source,
        "inputs_sha256": inputs,
        "release": kernel.release,
        "vmlinuz": kernel.vmlinuz,
        "image_sha256": kernel.image_sha256,
        "modules_dir": kernel.modules_dir,
        "builtin": kernel.builtin,
        "preempt": kernel.preempt,
        "fentry": kernel.fentry,
    });
    crate::paths::write_atomic(record, &(serde_json::to_string_pretty(&json)? + "\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(Spec::parse("7.3").unwrap(), Spec::Series("7.3".into()));
        assert_eq!(Spec::parse("6.12").unwrap().label(), "6.12");
        assert_eq!(Spec::parse("latest").unwrap(), Spec::Latest);
        let d = Spec::parse("debian:linux-binary-unsigned-7.3.4+deb13-cloud-amd64=7.3.4-1~bpo13+1")
            .unwrap();
        assert_eq!(d.kind(), "debian");
        assert_eq!(
            d.label(),
            "debian-linux-binary-unsigned-7.3.4_deb13-cloud-amd64-7.3.4-1_bpo13_1"
        );
        assert!(Spec::parse("debian:").is_err());
        assert!(Spec::parse("debian:linux image").is_err());
        assert!(Spec::parse("/no/such/kernel.deb").is_err());
        assert!(Spec::parse("/no/such/dir").is_err());
        assert!(Spec::parse("7").is_err());
    }

    #[test]
    fn deb_lists_and_labels() {
        let dir = paths::target_dir().join("tmp/spec-test");
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("linux-binary-unsigned-7.3.4+deb13-cloud-amd64_7.3.4-1~bpo13+1_amd64.deb");
        let b = dir.join("linux-modules-7.3.4+deb13-cloud-amd64_7.3.4-1~bpo13+1_amd64.deb");
        std::fs::write(&a, b"").unwrap();
        std::fs::write(&b, b"").unwrap();
        for sep in [",", "+"] {
            let text = format!("{}{sep}{}", a.display(), b.display());
            let spec = Spec::parse(&text).unwrap();
            assert_eq!(spec, Spec::Debs(vec![a.clone(), b.clone()]), "{text}");
            let label = spec.label();
            assert!(label.starts_with("deb-linux-binary-unsigned-7.3.4_deb13-cloud-amd64-"));
            assert!(
                label
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
            );
        }
        let spec = Spec::parse(&dir.display().to_string()).unwrap();
        assert_eq!(spec.kind(), "dir");
        let label = spec.label();
        assert!(label.starts_with("dir-spec-test-"), "{label}");
        assert!(sanitize("../x\ny").bytes().all(|c| c != b'/' && c != b'\n'));
        assert!(!sanitize("..").starts_with('.'));
    }
}
