//! Debian kernels for the VM lab: find the newest cloud image of a series in its suite, download it
//! with a private apt state (the machine's own apt configuration stays untouched), unpack it.

use crate::cmd;
use crate::paths;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A kernel series the lab knows: its label, the Debian suite that ships it, and the package name
/// pattern (`<prefix><abi><suffix>`) of its unsigned cloud image.
pub struct Series {
    pub label: &'static str,
    pub suite: &'static str,
    prefix: &'static str,
    suffix: &'static str,
    search: &'static str,
}

pub const SERIES: &[Series] = &[
    Series {
        label: "5.10",
        suite: "bullseye",
        prefix: "linux-image-5.10.0-",
        suffix: "-cloud-amd64-unsigned",
        search: r"^linux-image-5\.10\.0-[0-9]+-cloud-amd64-unsigned$",
    },
    Series {
        label: "6.1",
        suite: "bookworm",
        prefix: "linux-image-6.1.0-",
        suffix: "-cloud-amd64-unsigned",
        search: r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$",
    },
    Series {
        label: "6.12",
        suite: "trixie",
        prefix: "linux-image-6.12.",
        suffix: "+deb13-cloud-amd64-unsigned",
        search: r"^linux-image-6\.12\.[0-9]+\+deb13-cloud-amd64-unsigned$",
    },
];

pub fn labels() -> Vec<&'static str> {
    SERIES.iter().map(|s| s.label).collect()
}

pub fn series(label: &str) -> Result<&'static Series> {
    SERIES.iter().find(|s| s.label == label).with_context(|| {
        format!(
            "unknown kernel `{label}`: the lab has {}",
            labels().join(", ")
        )
    })
}

/// An unpacked kernel, ready to boot.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub label: String,
    /// Debian package name.
    pub package: String,
    /// Exact Debian package version.
    pub version: String,
    /// `uname -r` of the kernel (the modules directory name).
    pub release: String,
    pub vmlinuz: PathBuf,
    /// `<root>/lib/modules/<release>` or `<root>/usr/lib/modules/<release>`, with modules.dep.
    pub modules_dir: PathBuf,
}

impl Kernel {
    /// `name=version`, as recorded in results.
    pub fn package_spec(&self) -> String {
        format!("{}={}", self.package, self.version)
    }
}

fn kernel_dir(label: &str) -> PathBuf {
    paths::lab_dir().join("kernels").join(label)
}

/// Returns the unpacked kernel for `label`, downloading it the first time.
pub fn prepare(label: &str) -> Result<Kernel> {
    let series = series(label)?;
    let dir = kernel_dir(label);
    let record = dir.join("kernel.json");
    if let Some(kernel) = load_record(&record, label)? {
        println!(
            "kernel {label}: cached {} ({})",
            kernel.package_spec(),
            kernel.release
        );
        return Ok(kernel);
    }

    let apt = Apt::new(series.suite)?;
    apt.update()?;
    let (package, version) = apt
        .newest(series)
        .with_context(|| format!("finding the {label} kernel in Debian {}", series.suite))?;
    println!(
        "kernel {label}: downloading {package}={version} from Debian {}",
        series.suite
    );

    // A fresh directory: a half-finished earlier attempt must not be mistaken for a kernel.
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clean {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    apt.download(&package, &dir)?;
    let deb = find_file(&dir, |n| {
        n.starts_with(&format!("{package}_")) && n.ends_with(".deb")
    })?
    .with_context(|| {
        format!(
            "apt-get download left no {package}_*.deb in {}",
            dir.display()
        )
    })?;

    let root = dir.join("root");
    cmd::run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))
        .with_context(|| format!("unpacking {}", deb.display()))?;
    let kernel = locate(label, &package, &version, &root)?;
    depmod(&root, &kernel.release)?;
    save_record(&record, &kernel)?;
    // The unpacked tree is all we need; the .deb would only double the cache.
    std::fs::remove_file(&deb).with_context(|| format!("cannot remove {}", deb.display()))?;
    println!(
        "kernel {label}: {} ready ({})",
        kernel.package_spec(),
        kernel.release
    );
    Ok(kernel)
}

/// Finds vmlinuz and the modules directory in an unpacked image package.
fn locate(label: &str, package: &str, version: &str, root: &Path) -> Result<Kernel> {
    let vmlinuz = find_file(&root.join("boot"), |n| n.starts_with("vmlinuz-"))?
        .with_context(|| format!("no boot/vmlinuz-* in {package}"))?;
    let release = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .context("vmlinuz has no release in its name")?
        .to_owned();
    // Trixie moved modules to /usr/lib/modules (merged /usr); older suites use /lib/modules.
    let modules_dir = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| root.join(d).join(&release))
        .find(|d| d.is_dir())
        .with_context(|| {
            format!("no lib/modules/{release} or usr/lib/modules/{release} in {package}")
        })?;
    Ok(Kernel {
        label: label.to_owned(),
        package: package.to_owned(),
        version: version.to_owned(),
        release,
        vmlinuz,
        modules_dir,
    })
}

/// Debian's package has no modules.dep (its postinst runs depmod): generate it in the tree.
fn depmod(root: &Path, release: &str) -> Result<()> {
    // `depmod -b` looks in <base>/lib/modules; point lib at usr/lib when only the latter exists.
    let lib = root.join("lib");
    if !lib.exists() && root.join("usr/lib/modules").is_dir() {
        std::os::unix::fs::symlink("usr/lib", &lib)
            .with_context(|| format!("cannot link {} -> usr/lib", lib.display()))?;
    }
    cmd::run(Command::new("depmod").arg("-b").arg(root).arg(release))
        .with_context(|| format!("depmod for {release} (is kmod installed? `cargo xtask setup`)"))
}

fn find_file(dir: &Path, pred: impl Fn(&str) -> bool) -> Result<Option<PathBuf>> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&pred))
        .collect();
    found.sort();
    Ok(found.pop())
}

fn load_record(record: &Path, label: &str) -> Result<Option<Kernel>> {
    let Ok(text) = std::fs::read_to_string(record) else {
        return Ok(None);
    };
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("corrupt {} (delete it to re-download)", record.display()))?;
    let field = |k: &str| json.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let (Some(package), Some(version), Some(release), Some(vmlinuz), Some(modules_dir)) = (
        field("package"),
        field("version"),
        field("release"),
        field("vmlinuz"),
        field("modules_dir"),
    ) else {
        return Ok(None);
    };
    let kernel = Kernel {
        label: label.to_owned(),
        package,
        version,
        release,
        vmlinuz: vmlinuz.into(),
        modules_dir: modules_dir.into(),
    };
    let complete = kernel.vmlinuz.is_file() && kernel.modules_dir.join("modules.dep").is_file();
    Ok(complete.then_some(kernel))
}

fn save_record(record: &Path, kernel: &Kernel) -> Result<()> {
    let json = serde_json::json!({
        "label": kernel.label,
        "package": kernel.package,
        "version": kernel.version,
        "release": kernel.release,
        "vmlinuz": kernel.vmlinuz,
        "modules_dir": kernel.modules_dir,
    });
    std::fs::write(record, serde_json::to_string_pretty(&json)? + "\n")
        .with_context(|| format!("cannot write {}", record.display()))
}

/// apt-get/apt-cache with a private sources list, lists and cache under `target/lab/apt/<suite>`.
struct Apt {
    dir: PathBuf,
    options: Vec<String>,
}

impl Apt {
    fn new(suite: &str) -> Result<Apt> {
        let dir = paths::lab_dir().join("apt").join(suite);
        for sub in ["lists/partial", "cache/archives/partial"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d)
                .with_context(|| format!("cannot create {}", d.display()))?;
        }
        let sources = dir.join("sources.list");
        std::fs::write(
            &sources,
            format!("deb http://deb.debian.org/debian {suite} main\n"),
        )
        .with_context(|| format!("cannot write {}", sources.display()))?;
        let d = dir.display();
        let options = vec![
            format!("Dir::Etc::SourceList={d}/sources.list"),
            "Dir::Etc::SourceParts=/dev/null".to_owned(),
            format!("Dir::State::Lists={d}/lists"),
            format!("Dir::Cache={d}/cache"),
            // Our directories belong to the invoking user; apt's `_apt` sandbox user could not
            // write them (and warns when run as root).
            "APT::Sandbox::User=root".to_owned(),
            // A transient archive or network hiccup must not turn CI red.
            "Acquire::Retries=4".to_owned(),
            // Only the package lists are needed, not Contents/DEP-11/translations.
            "Acquire::Languages=none".to_owned(),
            "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false".to_owned(),
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".to_owned(),
            "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false".to_owned(),
            "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false".to_owned(),
        ];
        Ok(Apt { dir, options })
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        for o in &self.options {
            c.arg("-o").arg(o);
        }
        c
    }

    fn update(&self) -> Result<()> {
        let mut c = self.command("apt-get");
        c.args(["-q", "update"]);
        cmd::output(&mut c).with_context(|| {
            format!(
                "updating the private package lists in {} (is deb.debian.org reachable?)",
                self.dir.display()
            )
        })?;
        Ok(())
    }

    /// The newest image package of the series and its exact version.
    fn newest(&self, series: &Series) -> Result<(String, String)> {
        let mut c = self.command("apt-cache");
        c.args(["search", "--names-only", series.search]);
        let listing = cmd::output(&mut c)?;
        let mut newest: Option<(String, String)> = None;
        for line in listing.lines() {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            // Re-check the pattern by hand: the regex dialect of apt-cache is not ours.
            let Some(abi) = name
                .strip_prefix(series.prefix)
                .and_then(|r| r.strip_suffix(series.suffix))
            else {
                continue;
            };
            if abi.is_empty() || !abi.chars().all(|c| c.is_ascii_digit()) {
                continue;
            }
            let version = self.version_of(name)?;
            let newer = match &newest {
                None => true,
                Some((_, best)) => version_gt(&version, best)?,
            };
            if newer {
                newest = Some((name.to_owned(), version));
            }
        }
        newest.with_context(|| format!("no package matches {}", series.search))
    }

    fn version_of(&self, package: &str) -> Result<String> {
        let mut c = self.command("apt-cache");
        c.args(["show", "--no-all-versions", package]);
        let show = cmd::output(&mut c)?;
        show.lines()
            .find_map(|l| l.strip_prefix("Version: "))
            .map(|v| v.trim().to_owned())
            .with_context(|| format!("apt-cache show {package} has no Version"))
    }

    fn download(&self, package: &str, into: &Path) -> Result<()> {
        let mut c = self.command("apt-get");
        c.args(["-q", "download", package]).current_dir(into);
        cmd::output(&mut c).with_context(|| format!("downloading {package}"))?;
        Ok(())
    }
}

/// Debian version comparison, by dpkg itself.
fn version_gt(a: &str, b: &str) -> Result<bool> {
    let status = Command::new("dpkg")
        .args(["--compare-versions", a, "gt", b])
        .status()
        .context("cannot run dpkg --compare-versions")?;
    Ok(status.success())
}

/// Fails with a clear message when a kernel label is unknown (for argument checking up front).
pub fn check_labels(labels: &[String]) -> Result<()> {
    for l in labels {
        series(l)?;
    }
    if labels.is_empty() {
        bail!("no kernels selected");
    }
    Ok(())
}
