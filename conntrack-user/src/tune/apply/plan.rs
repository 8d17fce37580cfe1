//! What `apply` will do: the recommendation checked against this host, the
//! steps (runtime settings) and files it changes, and the risks `--force`
//! would accept.

use std::{
    fs,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{
    ApplyError, Options, Paths,
    files::persist_files,
    paths::is_timeout_name,
    risks::{census_risks, chain_risk, cut_risks, memory_risk, timeout_risks},
};
use crate::{
    host::{kernel, namespaces, procfs},
    text,
    tune::{
        recommend::Recommendation,
        resize,
        sizing::{self, Size},
    },
};

/// One runtime setting to change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// The sysctl's short name (`nf_conntrack_max`), or `hashsize`.
    pub name: String,
    pub path: PathBuf,
    pub before: u64,
    pub after: u64,
}

impl Step {
    /// What reading the setting back must show: buckets come back rounded
    /// up to whole pages (`nf_ct_alloc_hashtable`).
    pub(super) fn read_back_value(&self, v: u64) -> u64 {
        if self.is_buckets() {
            sizing::table_buckets(v)
        } else {
            v
        }
    }
    pub(super) fn is_buckets(&self) -> bool {
        self.name == "nf_conntrack_buckets" || self.name == "hashsize"
    }
}

/// One file `--persist` writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChange {
    pub path: PathBuf,
    /// Content before (None: the file did not exist).
    pub before: Option<String>,
    pub after: String,
}

/// What `apply` will do (the dry run prints it).
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub files: Vec<FileChange>,
    pub warnings: Vec<String>,
    /// Risks the checks found that `--force` accepted (empty otherwise).
    pub forced: Vec<String>,
    /// The highest count of any namespace right now.
    pub live_max: u64,
    /// Entries of every namespace together right now (the whole table).
    pub live_total: u64,
}

fn read_value(path: &Path) -> Result<u64, ApplyError> {
    procfs::read_u64(path).map_err(|e| ApplyError::io(format!("reading {}", path.display()), e))
}

fn writable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o222 != 0)
        && fs::OpenOptions::new().write(true).open(path).is_ok()
}

/// Largest accepted values: buckets as recommend's own bound
/// ([`sizing::MAX_BUCKETS`]), max as the sysctl's `int`, timeouts as
/// `proc_dointvec_jiffies` can hold at HZ=1000.
const MAX_BUCKETS: u64 = sizing::MAX_BUCKETS;
const MAX_MAX: u64 = i32::MAX as u64;
const MAX_TIMEOUT_S: u64 = i32::MAX as u64 / 1000;

/// Checks a recommendation against this host and builds the plan. Changes
/// nothing.
pub fn plan(rec: &Recommendation, opts: &Options) -> Result<Plan, ApplyError> {
    // Every namespace must be entered to be counted (setns), and the
    // settings are root's to write: without root nothing here is sound.
    if !kernel::is_root() {
        return Err(ApplyError::NotRoot("apply"));
    }
    validate(rec, opts)?;
    let p = &opts.paths;
    let max_path = initial_netns_max(p)?;
    let target = check_writable(p, &max_path)?;
    let (steps, cur) = steps(rec, p, target, max_path)?;

    // What would hurt the host: refused unless --force, all listed at once.
    let census = namespaces::census();
    let risks = risks(rec, opts, &census, &steps, cur);
    let warnings = warnings(rec, &steps, cur, census.total());
    if !risks.is_empty() && !opts.force {
        return Err(ApplyError::Risky(risks));
    }
    let files = if opts.persist {
        persist_files(rec, opts)?
    } else {
        Vec::new()
    };
    Ok(Plan {
        steps,
        files,
        warnings,
        forced: risks,
        live_max: census.busiest().map_or(0, |c| c.count),
        live_total: census.total(),
    })
}

/// A refusal: nothing was changed.
fn refuse<T>(m: String) -> Result<T, ApplyError> {
    Err(ApplyError::Refused(m))
}

/// The recommendation's own values, and the options': refused when from
/// another kernel, out of range, or naming a timeout this kernel lacks.
fn validate(rec: &Recommendation, opts: &Options) -> Result<(), ApplyError> {
    if !(opts.max_memory_share_pct > 0.0 && opts.max_memory_share_pct <= 100.0) {
        return refuse(format!(
            "--max-memory-share {} is not a share of RAM (0 < PCT <= 100)",
            opts.max_memory_share_pct
        ));
    }
    let release = kernel::release();
    if rec.kernel_release != release {
        return refuse(format!(
            "the recommendation was made on kernel {}, this is {release}: defaults, limits and memory per entry differ between kernels, so observe and recommend again here",
            text::name(&rec.kernel_release)
        ));
    }
    if rec.buckets == 0 || rec.buckets > MAX_BUCKETS {
        return refuse(format!(
            "buckets {} is not a table size (1..={MAX_BUCKETS})",
            rec.buckets
        ));
    }
    if rec.max == 0 || rec.max > MAX_MAX {
        return refuse(format!(
            "max {} is not a limit ctscope sets (1..={MAX_MAX}; 0 would turn the limit off)",
            rec.max
        ));
    }
    let p = &opts.paths;
    for (name, v) in &rec.timeouts {
        if !is_timeout_name(name) || !p.sysctl_dir.join(format!("nf_conntrack_{name}")).exists() {
            return refuse(format!(
                "{name:?} is not a conntrack timeout sysctl on this kernel (no {}/nf_conntrack_{name})",
                p.sysctl_dir.display()
            ));
        }
        if *v == 0 || *v > MAX_TIMEOUT_S {
            return refuse(format!(
                "timeout {name} = {v} s is out of range (1..={MAX_TIMEOUT_S})"
            ));
        }
    }
    Ok(())
}

/// The path of `nf_conntrack_max`, refused where conntrack is not loaded or
/// this is not the initial network namespace.
fn initial_netns_max(p: &Paths) -> Result<PathBuf, ApplyError> {
    let max_path = p.sysctl_dir.join("nf_conntrack_max");
    if !max_path.exists() {
        return refuse(format!(
            "{} does not exist: nf_conntrack is not loaded here",
            max_path.display()
        ));
    }
    let init = kernel::init_netns_inode();
    let own = kernel::netns_inode();
    let read_only = fs::metadata(&max_path).is_ok_and(|m| m.mode() & 0o222 == 0);
    if read_only || init.zip(own).is_some_and(|(a, b)| a != b) {
        return refuse(format!(
            "this is not the initial network namespace (netns {}; the initial one is {}): the kernel keeps nf_conntrack_max and nf_conntrack_buckets read-only (0444) in every other namespace, and they are global: apply from the host",
            own.map_or_else(|| "?".into(), |i| i.to_string()),
            init.map_or_else(|| "?".into(), |i| i.to_string())
        ));
    }
    Ok(max_path)
}

/// Where the bucket count is written: the sysctl, or the module parameter.
struct BucketTarget {
    /// The step's name: `nf_conntrack_buckets` or `hashsize`.
    name: &'static str,
    path: PathBuf,
}

/// Buckets: the sysctl where it is writable, else the module parameter;
/// refused when neither, or max, cannot be written.
fn check_writable(p: &Paths, max_path: &Path) -> Result<BucketTarget, ApplyError> {
    let buckets_sysctl = p.sysctl_dir.join("nf_conntrack_buckets");
    let target = if writable(&buckets_sysctl) {
        BucketTarget {
            name: "nf_conntrack_buckets",
            path: buckets_sysctl,
        }
    } else if writable(&p.hashsize_param) {
        BucketTarget {
            name: "hashsize",
            path: p.hashsize_param.clone(),
        }
    } else {
        return refuse(format!(
            "neither {} nor {} can be written (read-only /proc/sys or /sys, as in a container): the bucket count cannot be changed here",
            buckets_sysctl.display(),
            p.hashsize_param.display()
        ));
    };
    if !writable(max_path) {
        return refuse(format!(
            "{} cannot be written (read-only /proc/sys?)",
            max_path.display()
        ));
    }
    Ok(target)
}

/// The runtime settings that differ from the recommendation, and the
/// current size (buckets as the kernel reports them).
fn steps(
    rec: &Recommendation,
    p: &Paths,
    target: BucketTarget,
    max_path: PathBuf,
) -> Result<(Vec<Step>, Size), ApplyError> {
    let mut steps = Vec::new();
    let buckets_sysctl = p.sysctl_dir.join("nf_conntrack_buckets");
    let cur_buckets = read_value(&buckets_sysctl).or_else(|_| read_value(&target.path))?;
    if sizing::table_buckets(rec.buckets) != cur_buckets {
        steps.push(Step {
            name: target.name.into(),
            path: target.path,
            before: cur_buckets,
            after: rec.buckets,
        });
    }
    let cur_max = read_value(&max_path)?;
    if cur_max != rec.max {
        steps.push(Step {
            name: "nf_conntrack_max".into(),
            path: max_path,
            before: cur_max,
            after: rec.max,
        });
    }
    for (name, v) in &rec.timeouts {
        let path = p.sysctl_dir.join(format!("nf_conntrack_{name}"));
        let before = read_value(&path)?;
        if !writable(&path) {
            return refuse(format!("{} cannot be written", path.display()));
        }
        if before != *v {
            steps.push(Step {
                name: format!("nf_conntrack_{name}"),
                path,
                before,
                after: *v,
            });
        }
    }
    let cur = Size {
        buckets: cur_buckets,
        max: cur_max,
    };
    Ok((steps, cur))
}

/// Every risk the checks find in going from `cur` to the recommendation.
fn risks(
    rec: &Recommendation,
    opts: &Options,
    census: &namespaces::Census,
    steps: &[Step],
    cur: Size,
) -> Vec<String> {
    let new = Size {
        buckets: sizing::table_buckets(rec.buckets),
        max: rec.max,
    };
    let mut risks = Vec::new();
    risks.extend(census_risks(census, rec.max, cur.max));
    risks.extend(memory_risk(rec, cur, new, opts.max_memory_share_pct));
    risks.extend(chain_risk(cur, new));
    risks.extend(timeout_risks(steps));
    risks.extend(cut_risks(rec, cur, new));
    risks
}

/// What apply does not refuse but should say: a resize of the live table,
/// and settings that changed since the observation.
fn warnings(rec: &Recommendation, steps: &[Step], cur: Size, live_total: u64) -> Vec<String> {
    let mut warnings = Vec::new();
    if steps.iter().any(Step::is_buckets) {
        warnings.push(resize::warning(
            live_total,
            cur.buckets,
            sizing::table_buckets(rec.buckets),
            "live now",
        ));
    }
    if rec.current.max != cur.max || rec.current.buckets != cur.buckets {
        warnings.push(format!(
            "the settings changed since the observation (max {} -> {}, buckets {} -> {}): the comparison in the recommendation describes the old ones",
            rec.current.max, cur.max, rec.current.buckets, cur.buckets
        ));
    }
    warnings
}

/// The plan for people.
pub fn render_plan(plan: &Plan, dry_run: bool) -> String {
    let mut s = String::new();
    s.push_str(if dry_run {
        "ctscope apply --dry-run: nothing is changed. It would:\n"
    } else {
        "ctscope apply:\n"
    });
    if plan.steps.is_empty() {
        s.push_str("  runtime: nothing to change (the settings already match)\n");
    }
    for st in &plan.steps {
        s.push_str(&format!(
            "  set {:<34} {:>9} -> {:<9} ({})\n",
            st.name,
            st.before,
            st.after,
            st.path.display()
        ));
    }
    for f in &plan.files {
        s.push_str(&format!(
            "  {} {}:\n",
            if f.before.is_some() {
                "replace"
            } else {
                "create"
            },
            f.path.display()
        ));
        for line in f.after.lines() {
            s.push_str(&format!("      {line}\n"));
        }
    }
    for w in &plan.warnings {
        s.push_str(&format!("  ! {w}\n"));
    }
    for r in &plan.forced {
        s.push_str(&format!("  ! warning (accepted with --force): {r}\n"));
    }
    s
}
