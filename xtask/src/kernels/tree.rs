//! A kernel on disk, however it came (an unpacked Debian package, `make modules_install
//! INSTALL_MOD_PATH=DIR`, a build directory): its image, release, modules and config, and what
//! makes it unusable for the lab, told before it boots.

use super::bzimage;
use super::shown;
use crate::cmd;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// What a kernel tree holds.
#[derive(Debug, Clone)]
pub(super) struct Tree {
    /// The release the image names in its own header.
    pub release: String,
    pub image: PathBuf,
    pub image_sha256: String,
    /// `<root>/lib/modules/<release>` or `<root>/usr/lib/modules/<release>`, when present.
    pub modules_dir: Option<PathBuf>,
    /// The kernel's config, when the tree has one.
    pub config: Option<PathBuf>,
}

/// Where an image may be, in order; the first place with one wins, two in one place is an error.
fn image_candidates(root: &Path) -> Result<Vec<Vec<PathBuf>>> {
    let plain = ["bzImage", "vmlinuz", "arch/x86/boot/bzImage"]
        .iter()
        .map(|n| root.join(n))
        .filter(|p| p.is_file())
        .collect();
    let boot = files_in(&root.join("boot"), |n| n.starts_with("vmlinuz-"))?;
    let mut in_modules = Vec::new();
    for dir in module_dirs(root)? {
        // Debian 7.x: the unsigned binary package has vmlinuz.unsigned, the signed one vmlinuz.
        if let Some(p) = ["vmlinuz.unsigned", "vmlinuz"]
            .iter()
            .map(|n| dir.join(n))
            .find(|p| p.is_file())
        {
            in_modules.push(p);
        }
    }
    Ok(vec![plain, boot, in_modules])
}

/// Every `lib/modules/*` and `usr/lib/modules/*` directory (one per release).
fn module_dirs(root: &Path) -> Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for base in ["lib/modules", "usr/lib/modules"] {
        let base = root.join(base);
        // With a `lib -> usr/lib` link both name the same directories.
        if !base.is_dir() || dirs.iter().any(|d: &PathBuf| same_parent(d, &base)) {
            continue;
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir(&base)
            .with_context(|| format!("cannot read {}", base.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        found.sort();
        dirs.extend(found);
    }
    Ok(dirs)
}

fn same_parent(dir: &Path, base: &Path) -> bool {
    match (
        dir.parent().and_then(|p| p.canonicalize().ok()),
        base.canonicalize().ok(),
    ) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

fn files_in(dir: &Path, pred: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&pred))
        .collect();
    found.sort();
    Ok(found)
}

/// Finds the image, reads its release, and finds the modules and config of that release.
pub(super) fn locate(root: &Path) -> Result<Tree> {
    let Some(group) = image_candidates(root)?.into_iter().find(|g| !g.is_empty()) else {
        bail!(
            "no kernel image in {}: looked for bzImage, vmlinuz, arch/x86/boot/bzImage, \
             boot/vmlinuz-* and [usr/]lib/modules/<release>/vmlinuz[.unsigned]",
            shown(root)
        );
    };
    if group.len() > 1 {
        let names: Vec<String> = group.iter().map(|p| shown(p)).collect();
        bail!(
            "more than one kernel image in {}: {} (give the lab a directory with one)",
            shown(root),
            names.join(", ")
        );
    }
    let image = group[0].clone();
    // The header and the version string it points to lie in the first 64 KiB (a u16 offset
    // plus 0x200): no need to read a whole image into memory.
    let mut bytes = Vec::new();
    {
        use std::io::Read;
        std::fs::File::open(&image)
            .and_then(|f| f.take(0x1_0000 + 0x200 + 256).read_to_end(&mut bytes))
            .with_context(|| format!("cannot read {}", shown(&image)))?;
    }
    let release = bzimage::release(&bytes).with_context(|| shown(&image))?;
    let image_sha256 = sha256(&image)?;

    let dirs = module_dirs(root)?;
    let modules_dir = dirs
        .iter()
        .find(|d| d.file_name().is_some_and(|n| n == release.as_str()))
        .cloned();
    if modules_dir.is_none() && !dirs.is_empty() {
        let names: Vec<String> = dirs
            .iter()
            .filter_map(|d| d.file_name())
            .map(|n| shown(Path::new(n)))
            .collect();
        bail!(
            "modules of another release: the image {} is {}, the modules directory is for {}",
            shown(&image),
            shown(Path::new(&release)),
            names.join(", ")
        );
    }
    let config = [
        Some(root.join("boot").join(format!("config-{release}"))),
        modules_dir.as_ref().map(|d| d.join("config")),
        Some(root.join(".config")),
    ]
    .into_iter()
    .flatten()
    .find(|p| p.is_file());
    Ok(Tree {
        release,
        image,
        image_sha256,
        modules_dir,
        config,
    })
}

/// The value of `CONFIG_<name>` (`y`, `m`, a string), `None` when unset.
pub(super) fn config_value(config: &str, name: &str) -> Option<String> {
    let key = format!("CONFIG_{name}=");
    config
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .map(str::to_owned)
}

/// The config symbol of each lab module, to tell a built-in one when modules.builtin is absent
/// (Debian's 7.x packages have neither modules.builtin nor modules.order).
const CONFIG_OF_MODULE: &[(&str, &str)] = &[
    ("nf_conntrack", "NF_CONNTRACK"),
    ("nf_defrag_ipv4", "NF_DEFRAG_IPV4"),
    ("nf_defrag_ipv6", "NF_DEFRAG_IPV6"),
    ("nf_nat", "NF_NAT"),
    ("nf_tables", "NF_TABLES"),
    ("nft_ct", "NFT_CT"),
    ("nft_chain_nat", "NFT_NAT"),
    ("nft_masq", "NFT_MASQ"),
    ("nft_counter", "NFT_COUNTER"),
    ("nf_conntrack_netlink", "NF_CT_NETLINK"),
    ("veth", "VETH"),
    ("bridge", "BRIDGE"),
    ("dummy", "DUMMY"),
];

/// The lab modules this config builds in (`=y`).
pub(super) fn builtin_by_config(config: &str) -> Vec<String> {
    CONFIG_OF_MODULE
        .iter()
        .filter(|(_, sym)| config_value(config, sym).as_deref() == Some("y"))
        .map(|(m, _)| (*m).to_owned())
        .collect()
}

/// The file of module `name` under `dir` (any compression), searched recursively.
pub(super) fn find_module(dir: &Path, name: &str) -> Option<PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut subdirs = Vec::new();
    for e in entries.filter_map(std::result::Result::ok) {
        let path = e.path();
        let Ok(kind) = e.file_type() else { continue };
        if kind.is_dir() {
            subdirs.push(path);
        } else if let Some(n) = path.file_name().and_then(|n| n.to_str()) {
            let stem = n
                .strip_suffix(".xz")
                .or_else(|| n.strip_suffix(".zst"))
                .or_else(|| n.strip_suffix(".gz"))
                .unwrap_or(n);
            if stem
                .strip_suffix(".ko")
                .is_some_and(|s| s.replace('-', "_") == name)
            {
                return Some(path);
            }
        }
    }
    subdirs.sort();
    subdirs.iter().find_map(|d| find_module(d, name))
}

/// Why the lab cannot use this kernel, as far as its files tell; empty when nothing is wrong
/// or nothing can be told. Each reason is one short clause.
pub(super) fn problems(tree: &Tree) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let config = match &tree.config {
        Some(c) => {
            Some(std::fs::read_to_string(c).with_context(|| format!("cannot read {}", shown(c)))?)
        }
        None => None,
    };
    if let (Some(text), Some(path)) = (&config, &tree.config) {
        if config_value(text, "KPROBES").as_deref() != Some("y") {
            problems.push(format!(
                "no kprobes (CONFIG_KPROBES is not y in {})",
                shown(path)
            ));
        }
        if config_value(text, "DEBUG_INFO_BTF").as_deref() != Some("y") {
            problems.push(format!(
                "no BTF (CONFIG_DEBUG_INFO_BTF is not y in {})",
                shown(path)
            ));
        }
    }
    let builtin_list = tree
        .modules_dir
        .as_ref()
        .and_then(|d| std::fs::read_to_string(d.join("modules.builtin")).ok());
    let listed_builtin = builtin_list.as_deref().is_some_and(|t| {
        t.lines()
            .any(|l| l.rsplit('/').next() == Some("nf_conntrack.ko"))
    });
    let config_builtin = config
        .as_deref()
        .is_some_and(|t| config_value(t, "NF_CONNTRACK").as_deref() == Some("y"));
    let module = tree
        .modules_dir
        .as_ref()
        .and_then(|d| find_module(d, "nf_conntrack"));
    // Only a config or a modules.builtin can say that it is not built in.
    let can_tell = config.is_some() || builtin_list.is_some();
    if module.is_none() && !listed_builtin && !config_builtin && can_tell {
        problems.push(
            "nf_conntrack is neither built in (modules.builtin, CONFIG_NF_CONNTRACK=y) \
             nor a module (no nf_conntrack.ko*)"
                .to_owned(),
        );
    }
    if let Some(module) = &module
        && let Some(vermagic) =
            cmd::probe("modinfo", &["-F", "vermagic", &module.to_string_lossy()])
    {
        let built_for = vermagic.split_whitespace().next().unwrap_or_default();
        if !built_for.is_empty() && built_for != tree.release {
            problems.push(format!(
                "modules of another release ({} is built for {}, the image is {})",
                shown(module),
                shown(Path::new(built_for)),
                shown(Path::new(&tree.release))
            ));
        }
    }
    Ok(problems)
}

/// The sha256 of a file, by coreutils' sha256sum.
pub(super) fn sha256(path: &Path) -> Result<String> {
    let out = cmd::output(Command::new("sha256sum").arg("--").arg(path))?;
    let sum = out.split_whitespace().next().unwrap_or_default();
    if sum.len() != 64 || !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("sha256sum printed no sum for {}", shown(path));
    }
    Ok(sum.to_owned())
}

/// Generates modules.dep for `release` under `root` (in place: `root` must be the lab's own copy).
pub(super) fn depmod(root: &Path, release: &str) -> Result<()> {
    // `depmod -b` looks in <base>/lib/modules; point lib at usr/lib when only the latter exists.
    let lib = root.join("lib");
    if !lib.exists() && root.join("usr/lib/modules").is_dir() {
        std::os::unix::fs::symlink("usr/lib", &lib)
            .with_context(|| format!("cannot link {} -> usr/lib", lib.display()))?;
    }
    let step = crate::progress::step(format!("kernel: depmod {release}"));
    // Without modules.order/modules.builtin (Debian 7.x) depmod warns on stderr and works.
    cmd::output(Command::new("depmod").arg("-b").arg(root).arg(release)).with_context(|| {
        format!("depmod for {release} (is kmod installed? `cargo xtask setup`)")
    })?;
    step.finish("modules.dep written");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paths;

    /// A real downloaded image (any in target/lab/kernels), or `None` with the reason printed.
    fn real_image() -> Option<PathBuf> {
        let kernels = paths::lab_dir().join("kernels");
        let found = std::fs::read_dir(&kernels)
            .into_iter()
            .flatten()
            .flatten()
            .find_map(|e| locate(&e.path().join("root")).ok().map(|t| t.image));
        if found.is_none() {
            println!(
                "skipped: no downloaded kernel under {} (`cargo xtask kernel --kernel 7.3`)",
                kernels.display()
            );
        }
        found
    }

    /// A tree whose image is a real kernel: the release is the header's, the modules directory
    /// must be of that release, and the config's verdicts come out as one clause each.
    #[test]
    fn trees_around_a_real_image() {
        let Some(image) = real_image() else { return };
        let release = bzimage::release(&std::fs::read(&image).unwrap()).unwrap();
        let dir = paths::target_dir().join("tmp/tree-test");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("lib/modules/9.9.9-other")).unwrap();
        std::os::unix::fs::symlink(&image, dir.join("bzImage")).unwrap();
        let err = locate(&dir).unwrap_err().to_string();
        assert!(err.contains("modules of another release"), "{err}");
        assert!(
            err.contains("9.9.9-other") && err.contains(&release),
            "{err}"
        );

        let modules = dir.join("usr/lib/modules").join(&release);
        std::fs::create_dir_all(&modules).unwrap();
        std::fs::write(
            dir.join(".config"),
            "# CONFIG_KPROBES is not set\nCONFIG_DEBUG_INFO_BTF=y\nCONFIG_NF_CONNTRACK=m\n",
        )
        .unwrap();
        let tree = locate(&dir).unwrap();
        assert_eq!(tree.release, release);
        assert_eq!(tree.modules_dir.as_deref(), Some(modules.as_path()));
        assert_eq!(tree.image_sha256, sha256(&image).unwrap());
        let p = problems(&tree).unwrap();
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].starts_with("no kprobes"), "{p:?}");
        assert!(p[1].starts_with("nf_conntrack is neither"), "{p:?}");
        // Built in: nothing to refuse.
        std::fs::write(
            dir.join(".config"),
            "CONFIG_KPROBES=y\nCONFIG_DEBUG_INFO_BTF=y\nCONFIG_NF_CONNTRACK=y\n",
        )
        .unwrap();
        assert!(problems(&tree).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn config_values() {
        let c = "CONFIG_KPROBES=y\n# CONFIG_DEBUG_INFO_BTF is not set\nCONFIG_NF_CONNTRACK=m\n";
        assert_eq!(config_value(c, "KPROBES").as_deref(), Some("y"));
        assert_eq!(config_value(c, "DEBUG_INFO_BTF"), None);
        assert_eq!(config_value(c, "NF_CONNTRACK").as_deref(), Some("m"));
        assert!(builtin_by_config(c).is_empty());
        let c = "CONFIG_NF_CONNTRACK=y\nCONFIG_VETH=y\nCONFIG_NF_CONNTRACK_MARK=y\n";
        assert_eq!(builtin_by_config(c), ["nf_conntrack", "veth"]);
    }
}
