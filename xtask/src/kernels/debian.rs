//! Debian's cloud kernels: which package holds the newest kernel of a series (or of all), in
//! which suite, and what else must come with it; downloads with a private apt state per suite
//! under `target/lab/apt/<suite>` (the machine's own apt configuration stays untouched).
//!
//! Two package layouts: up to 6.x one `linux-image-<rel>-unsigned` holds `boot/vmlinuz-<rel>` and
//! the modules; from 7.x `linux-binary-unsigned-<rel>` holds
//! `usr/lib/modules/<rel>/vmlinuz.unsigned` and `linux-modules-<rel>` the modules
//! (`linux-image-<rel>` is then a meta package depending on the signed `linux-binary-<rel>`).

use crate::cmd;
use crate::paths;
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The suites the lab searches. bullseye-backports is not here: Debian moved it to
/// archive.debian.org (deb.debian.org answers 404).
pub(super) const SUITES: &[&str] = &[
    "bullseye",
    "bookworm",
    "bookworm-backports",
    "trixie",
    "trixie-backports",
    "sid",
];

/// One package of a kernel, at an exact version, in a suite.
#[derive(Debug, Clone)]
pub(super) struct Package {
    pub name: String,
    pub version: String,
    pub size: Option<u64>,
}

impl Package {
    pub(super) fn spec(&self) -> String {
        format!("{}={}", self.name, self.version)
    }
}

/// Everything to download for one kernel: the image package first.
#[derive(Debug, Clone)]
pub(super) struct Found {
    pub suite: &'static str,
    pub packages: Vec<Package>,
}

/// The release of a cloud image package name and whether it is unsigned, for the layouts the
/// lab can boot; `None` for everything else (debug symbols, meta packages, other flavours).
fn image_release(name: &str) -> Option<(&str, bool)> {
    let (release, unsigned) = if let Some(r) = name.strip_prefix("linux-binary-unsigned-") {
        (r, true)
    } else if let Some(r) = name.strip_prefix("linux-binary-") {
        (r, false)
    } else {
        let r = name
            .strip_prefix("linux-image-")?
            .strip_suffix("-unsigned")?;
        (r, true)
    };
    let valid = release.ends_with("-cloud-amd64")
        && release.starts_with(|c: char| c.is_ascii_digit())
        && release
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+-~".contains(c));
    valid.then_some((release, unsigned))
}

/// Whether a release such as `6.1.0-32-cloud-amd64` or `7.3.4+deb13-cloud-amd64` is of `series`.
fn in_series(release: &str, series: &str) -> bool {
    release
        .strip_prefix(series)
        .and_then(|r| r.strip_prefix('.'))
        .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
}

/// The new layout's modules come in a package of their own, and its config, modules.builtin
/// and modules.order in `linux-base-<rel>` (which the lab's pre-boot checks read).
fn companion_packages(image: &str) -> Option<[String; 2]> {
    let release = image
        .strip_prefix("linux-binary-unsigned-")
        .or_else(|| image.strip_prefix("linux-binary-"))?;
    Some([
        format!("linux-modules-{release}"),
        format!("linux-base-{release}"),
    ])
}

/// The newest image of `series` (e.g. `7.3`), or of all series with `None`, in every suite.
pub(super) fn newest(series: Option<&str>) -> Result<Found> {
    let mut best: Option<(&'static str, Package, bool)> = None;
    for suite in SUITES {
        let apt = Apt::new(suite)?;
        apt.update()?;
        for (pkg, unsigned) in apt.images(series)? {
            let better = match &best {
                None => true,
                Some((_, b, b_unsigned)) => {
                    version_gt(&pkg.version, &b.version)?
                        || (pkg.version == b.version && unsigned && !b_unsigned)
                }
            };
            if better {
                best = Some((suite, pkg, unsigned));
            }
        }
    }
    let what = series.map_or_else(|| "any".to_owned(), |s| format!("a {s}"));
    let (suite, image, _) = best.with_context(|| {
        format!(
            "Debian has no {what} cloud kernel in {} (unsigned or signed image package)",
            SUITES.join(", ")
        )
    })?;
    complete(suite, image)
}

/// The package `name` (at `version`, or its newest), searched in every suite.
pub(super) fn package(name: &str, version: Option<&str>) -> Result<Found> {
    let mut best: Option<(&'static str, Package, Option<String>)> = None;
    for suite in SUITES {
        let apt = Apt::new(suite)?;
        apt.update()?;
        for stanza in apt.show(&[name])? {
            let (Some(v), Some(n)) = (stanza.get("Version"), stanza.get("Package")) else {
                continue;
            };
            if n != name || version.is_some_and(|want| want != v) {
                continue;
            }
            let better = match &best {
                None => true,
                Some((_, b, _)) => version_gt(v, &b.version)?,
            };
            if better {
                let pkg = Package {
                    name: n.clone(),
                    version: v.clone(),
                    size: stanza.get("Size").and_then(|s| s.parse().ok()),
                };
                best = Some((suite, pkg, stanza.get("Depends").cloned()));
            }
        }
    }
    let wanted = version.map_or_else(|| name.to_owned(), |v| format!("{name}={v}"));
    let (suite, pkg, depends) =
        best.with_context(|| format!("Debian has no package {wanted} in {}", SUITES.join(", ")))?;
    if image_release(&pkg.name).is_some() {
        return complete(suite, pkg);
    }
    // A meta package (7.x `linux-image-<rel>`): the kernel is in the binary and modules
    // packages it depends on, at its own version.
    let mut found = Found {
        suite,
        packages: Vec::new(),
    };
    let apt = Apt::new(suite)?;
    for dep in depends.iter().flat_map(|d| d.split(',')) {
        let dep_name = dep.split_whitespace().next().unwrap_or_default();
        if ["linux-binary-", "linux-modules-", "linux-base-"]
            .iter()
            .any(|p| dep_name.starts_with(p))
        {
            found.packages.push(apt.exact(dep_name, &pkg.version)?);
        }
    }
    // The image first: results name it as the kernel's package.
    found
        .packages
        .sort_by_key(|p| !p.name.starts_with("linux-binary-"));
    if found.packages.is_empty() {
        bail!(
            "{} is neither a kernel image package the lab knows (linux-image-*-unsigned, \
             linux-binary[-unsigned]-*) nor a meta package depending on one",
            pkg.spec()
        );
    }
    Ok(found)
}

/// The image package and, for the new layout, its modules and base packages at the same
/// version (the base package is optional: without it the checks before boot say less).
fn complete(suite: &'static str, image: Package) -> Result<Found> {
    let Some([modules, base]) = companion_packages(&image.name) else {
        return Ok(Found {
            suite,
            packages: vec![image],
        });
    };
    let apt = Apt::new(suite)?;
    let modules = apt
        .exact(&modules, &image.version)
        .with_context(|| format!("{} needs its modules package in {suite}", image.spec()))?;
    let base = apt.exact(&base, &image.version).ok();
    let mut packages = vec![image, modules];
    packages.extend(base);
    Ok(Found { suite, packages })
}

/// Downloads every package of `found` into `into`; returns the .deb files, image first.
pub(super) fn download(found: &Found, into: &Path) -> Result<Vec<PathBuf>> {
    let apt = Apt::new(found.suite)?;
    let mut debs = Vec::new();
    for p in &found.packages {
        let size = p
            .size
            .map_or_else(String::new, |s| format!(" ({:.1} MB)", s as f64 / 1e6));
        let step = crate::progress::step(format!(
            "kernel: downloading {}{size} from Debian {}",
            p.spec(),
            found.suite
        ));
        apt.download(&p.spec(), into)?;
        step.finish("downloaded");
        let deb = std::fs::read_dir(into)
            .with_context(|| format!("cannot read {}", into.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|f| {
                f.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{}_", p.name)) && n.ends_with(".deb"))
            })
            .with_context(|| {
                format!(
                    "apt-get download left no {}_*.deb in {}",
                    p.name,
                    into.display()
                )
            })?;

        debs.push(deb);
    }
    Ok(debs)
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
        crate::paths::write_atomic(
            &sources,
            &format!("deb http://deb.debian.org/debian {suite} main\n"),
        )?;
        let d = dir.display();
        let options = vec![
            format!("Dir::Etc::SourceList={d}/sources.list"),
            "Dir::Etc::SourceParts=/dev/null".to_owned(),
            format!("Dir::State::Lists={d}/lists"),
            format!("Dir::Cache={d}/cache"),
            // The lab boots amd64 kernels, whatever foreign architectures this machine has.
            "APT::Architectures=amd64".to_owned(),
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
        println!(
            "kernel: updating the package lists of Debian {}",
            self.suite()
        );
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

    fn suite(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Every cloud image package of `series` (all with `None`) in this suite, every version,
    /// with whether it is unsigned.
    fn images(&self, series: Option<&str>) -> Result<Vec<(Package, bool)>> {
        let mut c = self.command("apt-cache");
        c.args([
            "search",
            "--names-only",
            r"^linux-(image|binary)-.*cloud-amd64",
        ]);
        let listing = cmd::output(&mut c)?;
        // Re-checked by hand: the regex dialect of apt-cache is not ours.
        let names: Vec<&str> = listing
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| {
                image_release(n).is_some_and(|(r, _)| series.is_none_or(|s| in_series(r, s)))
            })
            .collect();
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for stanza in self.show(&names)? {
            let (Some(name), Some(version)) = (stanza.get("Package"), stanza.get("Version")) else {
                continue;
            };
            let Some((_, unsigned)) = image_release(name) else {
                continue;
            };
            let size = stanza.get("Size").and_then(|s| s.parse().ok());
            out.push((
                Package {
                    name: name.clone(),
                    version: version.clone(),
                    size,
                },
                unsigned,
            ));
        }
        Ok(out)
    }

    /// `apt-cache show` of these packages, all versions: one map of fields per stanza.
    fn show(&self, names: &[&str]) -> Result<Vec<BTreeMap<String, String>>> {
        let mut c = self.command("apt-cache");
        c.arg("show").args(names);
        // apt-cache exits 100 when one of the names is unknown: that is an empty answer.
        let out = c
            .stdin(std::process::Stdio::null())
            .output()
            .with_context(|| format!("cannot start `{}`", cmd::display(&c)))?;
        Ok(stanzas(&String::from_utf8_lossy(&out.stdout)))
    }

    /// `name` at exactly `version`, as this suite has it.
    fn exact(&self, name: &str, version: &str) -> Result<Package> {
        self.show(&[name])?
            .into_iter()
            .find(|s| {
                s.get("Package").is_some_and(|n| n == name)
                    && s.get("Version").is_some_and(|v| v == version)
            })
            .map(|s| Package {
                name: name.to_owned(),
                version: version.to_owned(),
                size: s.get("Size").and_then(|x| x.parse().ok()),
            })
            .with_context(|| format!("Debian {} has no {name}={version}", self.suite()))
    }

    fn download(&self, spec: &str, into: &Path) -> Result<()> {
        let mut c = self.command("apt-get");
        c.args(["-q", "download", spec]).current_dir(into);
        cmd::output(&mut c).with_context(|| format!("downloading {spec}"))?;
        Ok(())
    }
}

/// Single-line fields of deb822 stanzas (continuation lines are skipped: none is needed).
fn stanzas(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut out = Vec::new();
    let mut current = BTreeMap::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            current.insert(k.to_owned(), v.trim().to_owned());
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Debian version comparison, by dpkg itself.
pub(super) fn version_gt(a: &str, b: &str) -> Result<bool> {
    let status = Command::new("dpkg")
        .args(["--compare-versions", a, "gt", b])
        .status()
        .context("cannot run dpkg --compare-versions")?;
    Ok(status.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_package_names() {
        assert_eq!(
            image_release("linux-image-6.1.0-32-cloud-amd64-unsigned"),
            Some(("6.1.0-32-cloud-amd64", true))
        );
        assert_eq!(
            image_release("linux-binary-unsigned-7.3.4+deb13-cloud-amd64"),
            Some(("7.3.4+deb13-cloud-amd64", true))
        );
        assert_eq!(
            image_release("linux-binary-7.0.4+deb13-cloud-amd64"),
            Some(("7.0.4+deb13-cloud-amd64", false))
        );
        // Meta packages, debug symbols and other flavours are no image the lab boots.
        assert_eq!(image_release("linux-image-7.3.4+deb13-cloud-amd64"), None);
        assert_eq!(
            image_release("linux-image-7.3.4+deb13-cloud-amd64-dbg"),
            None
        );
        assert_eq!(image_release("linux-image-6.1.0-32-amd64-unsigned"), None);
        assert_eq!(
            companion_packages("linux-binary-unsigned-7.3.4+deb13-cloud-amd64"),
            Some([
                "linux-modules-7.3.4+deb13-cloud-amd64".to_owned(),
                "linux-base-7.3.4+deb13-cloud-amd64".to_owned()
            ])
        );
        assert_eq!(
            companion_packages("linux-image-6.12.57+deb13-cloud-amd64-unsigned"),
            None
        );
    }

    #[test]
    fn series_membership() {
        assert!(in_series("6.1.0-32-cloud-amd64", "6.1"));
        assert!(in_series("6.12.57+deb13-cloud-amd64", "6.12"));
        assert!(!in_series("6.12.57+deb13-cloud-amd64", "6.1"));
        assert!(in_series("7.3.4+deb13-cloud-amd64", "7.3"));
        assert!(!in_series("7.30.1-cloud-amd64", "7.3"));
    }

    #[test]
    fn version_order_is_dpkg_s() {
        assert!(version_gt("7.3.4-1~bpo13+1", "7.2.13-1").unwrap());
        assert!(version_gt("6.12.57-1", "6.12.9-1").unwrap());
        assert!(!version_gt("7.3.4-1~bpo13+1", "7.3.4-1").unwrap());
    }
}
