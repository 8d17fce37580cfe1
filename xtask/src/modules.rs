//! Kernel modules for the initramfs: the dependency closure of a list of names, from modules.dep.

use anyhow::{Context, Result};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// The module name of a modules.dep path: basename without `.ko[.xz|.zst|.gz]`, `-` as `_`.
fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = base.split(".ko").next().unwrap_or(base);
    stem.replace('-', "_")
}

/// Result of resolving a module list against one kernel.
pub(crate) struct Closure {
    /// Module files relative to the modules directory, dependencies included.
    pub files: BTreeSet<String>,
    /// Requested names that this kernel has neither as a module nor built in.
    pub missing: Vec<String>,
    /// Requested names built into this kernel (nothing to copy).
    pub builtin: Vec<String>,
}

/// Resolves `wanted` (and everything they depend on) in `modules_dir/modules.dep`. A module is
/// built in when modules.builtin lists it or it is in `builtin` (from the kernel's config:
/// Debian's 7.x packages have no modules.builtin).
pub(crate) fn closure(modules_dir: &Path, wanted: &[&str], builtin: &[String]) -> Result<Closure> {
    let dep_file = modules_dir.join("modules.dep");
    let text = std::fs::read_to_string(&dep_file)
        .with_context(|| format!("cannot read {}", dep_file.display()))?;
    let mut by_name: HashMap<String, (String, Vec<String>)> = HashMap::new();
    for line in text.lines() {
        let Some((file, deps)) = line.split_once(':') else {
            continue;
        };
        let deps = deps.split_whitespace().map(str::to_owned).collect();
        by_name.insert(module_name(file), (file.to_owned(), deps));
    }
    let mut builtin_names: BTreeSet<String> =
        std::fs::read_to_string(modules_dir.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .map(module_name)
            .collect();
    builtin_names.extend(builtin.iter().map(|m| m.replace('-', "_")));

    let mut closure = Closure {
        files: BTreeSet::new(),
        missing: Vec::new(),
        builtin: Vec::new(),
    };
    for name in wanted {
        let name = name.replace('-', "_");
        match by_name.get(&name) {
            // A module the config builds in is not loaded even if a stray file has its name.
            _ if builtin_names.contains(&name) => closure.builtin.push(name),
            Some((file, deps)) => {
                // modules.dep already lists the full transitive dependency set of each module.
                closure.files.insert(file.clone());
                closure.files.extend(deps.iter().cloned());
            }
            None => closure.missing.push(name),
        }
    }
    Ok(closure)
}

#[cfg(test)]
mod tests {
    use super::module_name;

    #[test]
    fn names_from_paths() {
        assert_eq!(
            module_name("kernel/net/netfilter/nf_conntrack.ko"),
            "nf_conntrack"
        );
        assert_eq!(module_name("kernel/net/netfilter/nft_ct.ko.xz"), "nft_ct");
        assert_eq!(module_name("kernel/drivers/net/dummy.ko.zst"), "dummy");
        assert_eq!(module_name("kernel/x/nf-nat.ko"), "nf_nat");
    }
}
