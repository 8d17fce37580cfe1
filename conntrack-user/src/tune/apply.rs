//! `ctscope apply` and `ctscope rollback`: changing a host's conntrack
//! settings, carefully.
//!
//! - Only in the initial network namespace: everywhere else the kernel makes
//!   `nf_conntrack_max` and `nf_conntrack_buckets` read-only (0444,
//!   `nf_conntrack_standalone.c`), and ctscope says so instead of failing
//!   half-way.
//! - Every value is checked before anything is written: a recommendation
//!   from another kernel or nonsense numbers are refused, and the host stays
//!   as it was. A recommendation file is input (edited, or from another
//!   host), so what would hurt this host is refused too, every reason listed
//!   at once, unless `--force` (then each is printed as a warning): the table
//!   when full above a share of this host's RAM, a load at max whose chains
//!   the kernel's chain limit would refuse, timeouts cut below recommend's
//!   floors, a lower max without room above any namespace's live count
//!   (every namespace, [`namespaces::census`]; one that cannot be read fails
//!   closed), and a large cut from a short observation.
//! - A journal of the previous state is written (atomically) before the
//!   first change; each runtime write is read back and verified; if a step
//!   fails, the steps already done are undone in reverse order. A run that
//!   is killed half-way leaves the journal behind: the next `apply` refuses,
//!   and `rollback` restores exactly what the journal says.
//! - `--persist` writes `/etc/sysctl.d/90-ctscope-conntrack.conf` and, where
//!   nf_conntrack is a module, `/etc/modprobe.d/ctscope-conntrack.conf`
//!   (`options nf_conntrack hashsize=N`: the table is sized at load) and
//!   `/etc/modules-load.d/ctscope-conntrack.conf` (so the module is loaded by
//!   systemd-modules-load, which runs before systemd-sysctl applies the
//!   sysctl file). Each file is written atomically (temporary file, fsync,
//!   rename, fsync of the directory); its previous content is journaled.

use std::{
    ffi::OsStr,
    fs,
    io::{self, Write as _},
    os::{
        fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::fs::{MetadataExt as _, PermissionsExt as _},
    },
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{
    host::kernel::{self, ConntrackPresence},
    host::namespaces,
    host::procfs,
    safefile::{self, DirError},
    text,
    tune::recommend::{Recommendation, TIMEOUT_FLOORS, fmt_bytes},
    tune::resize,
    tune::sizing::{self, EntryCost, Size},
};

/// Test only: abort (as a `kill -9` would) after this many changes. Read in
/// debug builds only: a release binary ignores it.
pub const ABORT_ENV: &str = "CTSCOPE_TEST_ABORT_AFTER";
/// Test only: make this change (1-based) fail as a refused write would.
/// Debug builds only, as [`ABORT_ENV`].
pub const FAIL_ENV: &str = "CTSCOPE_TEST_FAIL_AT";

#[derive(Debug, Error)]
pub enum ApplyError {
    #[error("ctscope {0} needs root: it writes kernel settings. Run it with sudo.")]
    NotRoot(&'static str),
    /// Refusals: nothing was changed.
    #[error("refused, nothing was changed: {0}")]
    Refused(String),
    /// Risks to the host that `--force` would accept: nothing was changed.
    #[error(
        "refused, nothing was changed ({} risk{}; `--force` applies anyway and prints each as a warning):{}",
        .0.len(),
        if .0.len() == 1 { "" } else { "s" },
        .0.iter().map(|r| format!("\n  - {r}")).collect::<String>()
    )]
    Risky(Vec<String>),
    /// A step failed; what had been done was undone.
    #[error("{what}; every change made before it was undone: the host is as it was")]
    RolledBack { what: String },
    /// A step failed and undoing failed too: the journal says what to do.
    #[error(
        "{what}; undoing it also failed ({undo}): the previous state is kept in {journal}, run `ctscope rollback`"
    )]
    Stuck {
        what: String,
        undo: String,
        journal: String,
    },
    #[error("{0}")]
    Io(String),
}

impl ApplyError {
    fn io(what: impl std::fmt::Display, e: io::Error) -> ApplyError {
        ApplyError::Io(format!("{what}: {e}"))
    }
}

/// Where ctscope writes (overridable for tests).
#[derive(Debug, Clone)]
pub struct Paths {
    pub etc: PathBuf,
    pub state: PathBuf,
    pub sysctl_dir: PathBuf,
    pub hashsize_param: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            etc: PathBuf::from("/etc"),
            state: PathBuf::from("/var/lib/ctscope"),
            sysctl_dir: PathBuf::from(procfs::SYSCTL_DIR),
            hashsize_param: PathBuf::from(procfs::HASHSIZE_PARAM),
        }
    }
}

impl Paths {
    pub fn journal(&self) -> PathBuf {
        self.state.join("state.json")
    }
    pub fn last_recommendation(&self) -> PathBuf {
        self.state.join("last-recommendation.json")
    }
    fn sysctl_file(&self) -> PathBuf {
        self.etc.join("sysctl.d").join(SYSCTL_FILE)
    }
    fn modprobe_file(&self) -> PathBuf {
        self.etc.join("modprobe.d").join(MODULE_FILE)
    }
    fn modules_load_file(&self) -> PathBuf {
        self.etc.join("modules-load.d").join(MODULE_FILE)
    }
    /// Every file `--persist` may write: the only files `rollback` restores.
    fn own_files(&self) -> [PathBuf; 3] {
        [
            self.sysctl_file(),
            self.modprobe_file(),
            self.modules_load_file(),
        ]
    }
}

/// The names of the files `--persist` writes (in sysctl.d, and in
/// modprobe.d and modules-load.d).
const SYSCTL_FILE: &str = "90-ctscope-conntrack.conf";
const MODULE_FILE: &str = "ctscope-conntrack.conf";
/// The names ctscope writes in its state directory.
const STATE_FILES: &[&str] = &[
    "state.json",
    "last-recommendation.json",
    "state.rolled-back.json",
];
/// Mode of the persisted files: what systemd-sysctl and modprobe expect
/// (root-writable, world-readable).
const PERSIST_MODE: u32 = 0o644;
/// Mode of the journal and the kept recommendation.
const STATE_MODE: u32 = 0o600;
/// A journal holds a few values and at most three small files.
const MAX_JOURNAL: u64 = 4 << 20;
/// A persisted file ctscope replaces is read into the journal: a few lines.
const MAX_PERSISTED: u64 = 1 << 20;

/// Whether `k` (without `nf_conntrack_`) can be a conntrack timeout
/// sysctl's name: lowercase, digits and `_` only, so that it can neither
/// leave the sysctl directory nor add anything to a persisted file.
fn is_timeout_name(k: &str) -> bool {
    k.contains("timeout")
        && k.len() <= 64
        && k.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// The sysctls ctscope sets (short names): max, buckets, timeouts.
fn is_own_sysctl(name: &str) -> bool {
    name == "nf_conntrack_max"
        || name == "nf_conntrack_buckets"
        || name
            .strip_prefix("nf_conntrack_")
            .is_some_and(is_timeout_name)
}

pub struct Options {
    pub dry_run: bool,
    pub persist: bool,
    /// Apply even what the checks call risky (each risk becomes a warning).
    pub force: bool,
    /// Most of this host's RAM (percent) the table may take when full.
    pub max_memory_share_pct: f64,
    pub paths: Paths,
    /// Where the recommendation came from (for the files' comments).
    pub source: String,
}

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
    fn expected(&self, v: u64) -> u64 {
        if self.is_buckets() {
            sizing::table_buckets(v)
        } else {
            v
        }
    }
    fn is_buckets(&self) -> bool {
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

/// The journal: the state before ctscope's first change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub version: u32,
    /// `applying` until every step is done, then `applied`.
    pub status: String,
    pub kernel_release: String,
    pub runtime: Vec<JournalValue>,
    pub files: Vec<JournalFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalValue {
    pub name: String,
    pub path: PathBuf,
    pub before: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalFile {
    pub path: PathBuf,
    pub before: Option<String>,
}

fn read_value(path: &Path) -> Result<u64, ApplyError> {
    procfs::read_u64(path).map_err(|e| ApplyError::io(format!("reading {}", path.display()), e))
}

fn write_value(path: &Path, v: u64) -> io::Result<()> {
    let mut f = fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(format!("{v}\n").as_bytes())
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
    let refuse = |m: String| Err(ApplyError::Refused(m));
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
            own.map(|i| i.to_string()).unwrap_or_else(|| "?".into()),
            init.map(|i| i.to_string()).unwrap_or_else(|| "?".into())
        ));
    }

    // Buckets: the sysctl where it is writable, else the module parameter.
    let buckets_sysctl = p.sysctl_dir.join("nf_conntrack_buckets");
    let (bname, bpath) = if writable(&buckets_sysctl) {
        ("nf_conntrack_buckets", buckets_sysctl.clone())
    } else if writable(&p.hashsize_param) {
        ("hashsize", p.hashsize_param.clone())
    } else {
        return refuse(format!(
            "neither {} nor {} can be written (read-only /proc/sys or /sys, as in a container): the bucket count cannot be changed here",
            buckets_sysctl.display(),
            p.hashsize_param.display()
        ));
    };
    if !writable(&max_path) {
        return refuse(format!(
            "{} cannot be written (read-only /proc/sys?)",
            max_path.display()
        ));
    }

    let mut steps = Vec::new();
    let cur_buckets = read_value(&buckets_sysctl).or_else(|_| read_value(&bpath))?;
    if sizing::table_buckets(rec.buckets) != cur_buckets {
        steps.push(Step {
            name: bname.into(),
            path: bpath,
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

    // What would hurt the host: refused unless --force, all listed at once.
    let census = namespaces::census();
    let live = census
        .busiest()
        .map(|c| (c.count, c.name.clone()))
        .unwrap_or((0, "(none)".into()));
    let live_total = census.total();
    let cur = Size {
        buckets: cur_buckets,
        max: cur_max,
    };
    let new = Size {
        buckets: sizing::table_buckets(rec.buckets),
        max: rec.max,
    };
    let mut risks = Vec::new();
    risks.extend(census_risks(&census, rec.max, cur_max));
    risks.extend(memory_risk(rec, cur, new, opts.max_memory_share_pct));
    risks.extend(chain_risk(cur, new));
    risks.extend(timeout_risks(&steps));
    risks.extend(cut_risks(rec, cur, new));

    let mut warnings = Vec::new();
    if steps.iter().any(Step::is_buckets) {
        warnings.push(resize::warning(
            live_total,
            cur_buckets,
            sizing::table_buckets(rec.buckets),
            "live now",
        ));
    }
    if rec.current.max != cur_max || rec.current.buckets != cur_buckets {
        warnings.push(format!(
            "the settings changed since the observation (max {} -> {cur_max}, buckets {} -> {cur_buckets}): the comparison in the recommendation describes the old ones",
            rec.current.max, rec.current.buckets
        ));
    }
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
        live_max: live.0,
        live_total,
    })
}

/// Default of `--max-memory-share`: the table when full may take up to this
/// share of RAM. The kernel's own default (RAM/16384/8 buckets, max =
/// buckets, 5.15+) spends well under 1%; 20% leaves the host most of its
/// memory even when every entry is in use.
pub const DEFAULT_MAX_MEMORY_SHARE_PCT: f64 = 20.0;
/// An observation shorter than this is too short for a large cut: it may have
/// missed the busy hour (recommend itself says so under 600 s).
pub const SHORT_OBSERVATION_S: f64 = 3600.0;
/// A cut of max or buckets by more than this factor is large.
pub const LARGE_CUT: u64 = 2;
/// Room a new, lower max must leave above a namespace's live count: 10% of
/// it, at least this many entries (a burst of new connections in the time
/// the apply takes, and room for entries that are counted before they are
/// confirmed: `__nf_conntrack_alloc` raises the count).
pub const LIVE_MARGIN_MIN: u64 = 256;
pub const LIVE_MARGIN_PCT: u64 = 10;
/// The kernel's chain limit since 6.3 and the 6.1.y/5.15.y backports: an
/// insert into a bucket longer than a random 50..79 (c77737b736ce) is refused.
/// A mean chain (λ = 2·max/buckets nodes per bucket) this long is refused
/// outright, on any kernel: on one without the limit every lookup walks it.
pub const CHAIN_LIMIT_MIN: f64 = 50.0;

/// The live count plus its margin.
fn with_margin(count: u64) -> u64 {
    let pct = (u128::from(count) * u128::from(LIVE_MARGIN_PCT) / 100) as u64;
    count.saturating_add(pct.max(LIVE_MARGIN_MIN))
}

/// The namespaces: each must be readable, and a lower max must leave every
/// one room above what it holds now (the kernel compares each namespace's own
/// count with the one global max, `__nf_conntrack_alloc`).
fn census_risks(census: &namespaces::Census, new_max: u64, cur_max: u64) -> Vec<String> {
    let mut out = Vec::new();
    for (name, why) in &census.unreadable {
        out.push(format!(
            "namespace {name} could not be read ({}): its live count is unknown, so no max can be proven safe for it",
            text::name(why)
        ));
    }
    if new_max >= cur_max {
        return out;
    }
    for c in &census.counts {
        let need = with_margin(c.count);
        if new_max < need {
            out.push(format!(
                "max {new_max} leaves namespace {} no room: it holds {} entries right now, and a max below {need} (its count + max({LIVE_MARGIN_PCT}%, {LIVE_MARGIN_MIN})) drops its new connections{}",
                c.name,
                c.count,
                if new_max <= c.count {
                    " from the very next one"
                } else {
                    " after a burst"
                }
            ));
        }
    }
    if let Some(unseen) = census.unseen_bound() {
        let need = with_margin(unseen);
        if new_max < need {
            out.push(format!(
                "max {new_max} may leave a namespace ctscope cannot open no room: the nf_conntrack slab has {} objects in use, {unseen} more than the {} entries of the namespaces read (a namespace held only by a socket is invisible; the slab also counts per-CPU free objects, so this is an upper bound), and a max below {need} could drop its new connections",
                census.slab_active.unwrap_or(0),
                census.total()
            ));
        }
    }
    out
}

/// Bytes one entry costs on this host: its slab object (this kernel's, not
/// the recommendation's) and its extensions (at least `NF_CT_EXT_PREALLOC`,
/// more where the recommendation measured more; capped, as it is input).
fn host_entry_cost(rec: &Recommendation) -> Option<EntryCost> {
    let slab = procfs::slab_size().or_else(procfs::slab_object_size)?;
    let measured = rec.inputs.entry_cost.ext_bytes;
    let ext = if measured.is_finite() {
        measured.clamp(sizing::EXT_PREALLOC as f64, 4096.0)
    } else {
        sizing::EXT_PREALLOC as f64
    };
    Some(EntryCost {
        slab_bytes: slab,
        ext_bytes: ext,
    })
}

/// The table when full against this host's RAM (only when it grows).
fn memory_risk(rec: &Recommendation, cur: Size, new: Size, share_pct: f64) -> Option<String> {
    // Neither part grows: nothing to check, and nothing to refuse where the
    // slab size or MemTotal cannot be read.
    if new.max <= cur.max
        && sizing::table_buckets(new.buckets) <= sizing::table_buckets(cur.buckets)
    {
        return None;
    }
    let Some(cost) = host_entry_cost(rec) else {
        return Some(
            "the nf_conntrack slab's object size cannot be read (/sys/kernel/slab, /proc/slabinfo): the table's memory when full cannot be checked against RAM".into(),
        );
    };
    let Some(ram) = procfs::ram_bytes() else {
        return Some(
            "MemTotal cannot be read from /proc/meminfo: the table's memory when full cannot be checked against RAM".into(),
        );
    };
    let need = sizing::memory_bytes(new, cost);
    if need <= sizing::memory_bytes(cur, cost) {
        return None;
    }
    let limit = ram as f64 * share_pct / 100.0;
    (need as f64 > limit).then(|| {
        format!(
            "the table when full would take {} ({} buckets x 8 B + {} entries x {:.0} B: this host's {} B slab object + {:.0} B of extensions), {:.1}% of this host's {} of RAM, above the {share_pct}% allowed (--max-memory-share)",
            fmt_bytes(need),
            new.buckets,
            new.max,
            cost.per_entry(),
            cost.slab_bytes,
            cost.ext_bytes,
            need as f64 / ram as f64 * 100.0,
            fmt_bytes(ram)
        )
    })
}

/// Whether this kernel refuses inserts into long chains: the stat file's
/// `chaintoolong` column came with the limit (5.15+).
fn has_chain_limit() -> bool {
    procfs::StatTotals::read_current().is_ok_and(|s| s.has_chain_limit_column())
        || sizing::version(&kernel::release()).is_some_and(|v| v >= (5, 15))
}

/// The load at max: nodes per bucket when the table is full (only when it
/// gets worse than now).
fn chain_risk(cur: Size, new: Size) -> Option<String> {
    let lambda = |s: Size| 2.0 * s.max as f64 / sizing::table_buckets(s.buckets) as f64;
    let (l_new, l_cur) = (lambda(new), lambda(cur));
    if l_new <= l_cur {
        return None;
    }
    if l_new >= CHAIN_LIMIT_MIN {
        // No tail sum here: at such loads the Poisson terms underflow.
        return Some(format!(
            "max {} in {} buckets is {l_new:.1} nodes per bucket when full: the mean chain alone reaches the kernel's chain limit (random 50..79 since 6.3 and 6.1.y/5.15.y; inserts into longer chains are refused), and on a kernel without it every lookup walks such a chain",
            new.max, new.buckets
        ));
    }
    if has_chain_limit() {
        // Upper bound: as if every insert met the full table.
        let refused = sizing::expected_chain_refusals(new.max, new.max, new.buckets);
        if refused >= 1.0 {
            return Some(format!(
                "max {} in {} buckets is {l_new:.1} nodes per bucket when full: of {} inserts into a full table, about {refused:.1} would be refused as \"chain too long\" (the kernel's random limit 50..79, Poisson chains)",
                new.max, new.buckets, new.max
            ));
        }
    }
    None
}

/// Timeouts lowered below recommend's floors: live but quiet flows would
/// lose their entries (a NATed one its mapping). A timeout recommend has no
/// floor for, it never shortens.
fn timeout_risks(steps: &[Step]) -> Vec<String> {
    steps
        .iter()
        .filter(|st| st.after < st.before)
        .filter_map(|st| {
            let short = st
                .name
                .strip_prefix("nf_conntrack_")
                .filter(|n| n.contains("timeout"))?;
            match TIMEOUT_FLOORS.iter().find(|(n, _)| *n == short) {
                Some((_, floor)) if st.after < *floor => Some(format!(
                    "{short} {} -> {} s is below recommend's floor of {floor} s: entries of quiet but live flows would expire (and a NATed flow would get a new mapping)",
                    st.before, st.after
                )),
                Some(_) => None,
                None => Some(format!(
                    "{short} {} -> {} s: recommend never shortens this timeout (it has no floor for it), so nothing shows it safe",
                    st.before, st.after
                )),
            }
        })
        .collect()
}

/// A large cut of max or buckets from a short observation, which may have
/// missed the busy hour.
fn cut_risks(rec: &Recommendation, cur: Size, new: Size) -> Vec<String> {
    let d = rec.inputs.duration_s;
    if d >= SHORT_OBSERVATION_S {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (what, before, after) in [
        ("max", cur.max, new.max),
        ("buckets", sizing::table_buckets(cur.buckets), new.buckets),
    ] {
        if after.saturating_mul(LARGE_CUT) < before {
            out.push(format!(
                "{what} {before} -> {after} is a cut to 1/{:.0} from an observation of {d:.0} s (under {SHORT_OBSERVATION_S:.0} s, it may have missed the busy hour): observe longer before cutting by more than {LARGE_CUT}x",
                before as f64 / after.max(1) as f64
            ));
        }
    }
    out
}

/// The highest count of any namespace now, and its name (for `rollback`'s
/// warning).
fn live_counts() -> (u64, String) {
    namespaces::census()
        .busiest()
        .map(|c| (c.count, c.name.clone()))
        .unwrap_or((0, "(none)".into()))
}

/// The files `--persist` writes. Nothing from outside enters them as it
/// came: the source path and kernel release go into a comment escaped to one
/// printable line (a newline in a `--from` name would otherwise add a line
/// to /etc/modprobe.d, where `install` runs a command as root at boot), the
/// sysctl names are ctscope's own, every value is a number.
fn persist_files(rec: &Recommendation, opts: &Options) -> Result<Vec<FileChange>, ApplyError> {
    let p = &opts.paths;
    let header = format!(
        "# Written by ctscope {} (`ctscope apply --persist`, from {}) for kernel {}.\n# `ctscope rollback` restores what was here before.\n",
        env!("CARGO_PKG_VERSION"),
        text::escape(&opts.source, 512),
        text::escape(&rec.kernel_release, 128)
    );
    let mut sysctl = header.clone();
    sysctl.push_str(&format!(
        "net.netfilter.nf_conntrack_buckets = {}\nnet.netfilter.nf_conntrack_max = {}\n",
        rec.buckets, rec.max
    ));
    for (k, v) in &rec.timeouts {
        if !is_timeout_name(k) {
            return Err(ApplyError::Refused(format!(
                "{} is not a conntrack timeout sysctl",
                text::name(k)
            )));
        }
        sysctl.push_str(&format!("net.netfilter.nf_conntrack_{k} = {v}\n"));
    }
    let mut out = vec![(p.sysctl_file(), sysctl)];
    if kernel::conntrack_presence() == ConntrackPresence::Module {
        out.push((
            p.modprobe_file(),
            format!(
                "{header}# The table is sized when the module loads; the sysctl file sets it again later.\noptions nf_conntrack hashsize={}\n",
                rec.buckets
            ),
        ));
        out.push((
            p.modules_load_file(),
            format!(
                "{header}# Loaded by systemd-modules-load, before systemd-sysctl applies 90-ctscope-conntrack.conf.\nnf_conntrack\n"
            ),
        ));
    }
    out.into_iter()
        .map(|(path, after)| {
            // Not through a link: its target's content would go into the
            // journal and come back as this file on rollback.
            let before = safefile::read_capped_nofollow(&path, MAX_PERSISTED)
                .and_then(|b| {
                    b.map(|b| {
                        String::from_utf8(b)
                            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
                    })
                    .transpose()
                })
                .map_err(|e| ApplyError::io(format!("reading {}", path.display()), e))?;
            Ok(FileChange {
                path,
                before,
                after,
            })
        })
        .collect()
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

/// Writes `text` to `path` (mode 0644) through the project's one writer,
/// [`safefile::write_atomic`]: an exclusive temporary file that follows no
/// link, fsync, rename over the target, fsync of the directory. The
/// directory is created first if needed (a fresh /etc/modprobe.d).
pub fn write_durable(path: &Path, text: &str) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
    }
    safefile::write_atomic(path, text.as_bytes(), PERSIST_MODE)
}

/// Removes `path` (a link itself, never its target) and fsyncs the directory.
fn remove_durable(path: &Path) -> io::Result<()> {
    safefile::remove_durable(path)
}

/// The state directory, checked: a real directory owned by root that no one
/// else can write (else the journal could be planted, or swapped for a link
/// between our check and our write). Refused otherwise, nothing changed.
fn state_dir(dir: &Path, create: bool) -> Result<OwnedFd, ApplyError> {
    safefile::private_dir(dir, create).map_err(|e| match e {
        DirError::Unsafe { .. } => ApplyError::Refused(e.to_string()),
        DirError::Io { .. } => ApplyError::Io(e.to_string()),
    })
}

/// The state directory and the journal's name in it.
fn journal_parts(path: &Path) -> Result<(&Path, &OsStr), ApplyError> {
    let name = path
        .file_name()
        .ok_or_else(|| ApplyError::Io(format!("{} names no file", path.display())))?;
    Ok((path.parent().unwrap_or(Path::new(".")), name))
}

fn read_journal(path: &Path) -> Result<Option<Journal>, ApplyError> {
    let (dir, name) = journal_parts(path)?;
    let dir = state_dir(dir, false)?;
    // Not through a link, and not without end.
    match safefile::read_capped_at(dir.as_fd(), name, MAX_JOURNAL) {
        Ok(Some(t)) => serde_json::from_slice(&t).map(Some).map_err(|e| {
            ApplyError::Io(format!(
                "{} is not a ctscope journal ({e}): move it away by hand",
                path.display()
            ))
        }),
        Ok(None) => Ok(None),
        Err(e) => Err(ApplyError::io(format!("reading {}", path.display()), e)),
    }
}

fn save_journal(path: &Path, j: &Journal) -> Result<(), ApplyError> {
    let text = serde_json::to_string_pretty(j).map_err(|e| ApplyError::Io(e.to_string()))?;
    let (dir, name) = journal_parts(path)?;
    let dir = state_dir(dir, true)?;
    safefile::write_atomic_at(dir.as_fd(), name, text.as_bytes(), STATE_MODE)
        .map_err(|e| ApplyError::io(format!("writing {}", path.display()), e))
}

/// Keeps `text` as the recommendation `apply` takes without --from, in the
/// checked state directory.
pub fn save_last_recommendation(paths: &Paths, text: &str) -> Result<(), ApplyError> {
    let dir = state_dir(&paths.state, true)?;
    let path = paths.last_recommendation();
    let (_, name) = journal_parts(&path)?;
    safefile::write_atomic_at(dir.as_fd(), name, text.as_bytes(), STATE_MODE)
        .map_err(|e| ApplyError::io(format!("writing {}", path.display()), e))
}

/// Removes what a run killed half-way through a write left behind: only
/// ctscope's own temporary names for its own files, in the directories it
/// writes (see [`safefile::remove_leftovers`]).
fn remove_leftovers(paths: &Paths, state: &OwnedFd) -> Result<Vec<PathBuf>, ApplyError> {
    // The state directory through the descriptor that was checked.
    let mut removed = safefile::remove_leftovers_at(state.as_fd(), &paths.state, STATE_FILES)
        .map_err(|e| ApplyError::io(format!("cleaning {}", paths.state.display()), e))?;
    for (dir, own) in [
        (paths.etc.join("sysctl.d"), &[SYSCTL_FILE][..]),
        (paths.etc.join("modprobe.d"), &[MODULE_FILE][..]),
        (paths.etc.join("modules-load.d"), &[MODULE_FILE][..]),
    ] {
        removed.extend(
            safefile::remove_leftovers(&dir, own)
                .map_err(|e| ApplyError::io(format!("cleaning {}", dir.display()), e))?,
        );
    }
    Ok(removed)
}

/// Counts changes for the test-only abort (`CTSCOPE_TEST_ABORT_AFTER`).
struct Changes {
    done: u64,
    abort_after: Option<u64>,
    fail_at: Option<u64>,
}

impl Changes {
    /// The test-only hooks exist in debug builds (what `cargo test` runs)
    /// only: a release binary on a production host never reads them.
    #[cfg(debug_assertions)]
    fn new() -> Changes {
        let var = |k| std::env::var(k).ok().and_then(|v| v.parse().ok());
        Changes {
            done: 0,
            abort_after: var(ABORT_ENV),
            fail_at: var(FAIL_ENV),
        }
    }
    #[cfg(not(debug_assertions))]
    fn new() -> Changes {
        Changes {
            done: 0,
            abort_after: None,
            fail_at: None,
        }
    }
    /// Whether the next change is to fail (test only).
    fn next_fails(&self) -> bool {
        self.fail_at == Some(self.done + 1)
    }
    fn one(&mut self) {
        self.done += 1;
        if self.abort_after == Some(self.done) {
            eprintln!(
                "ctscope: {ABORT_ENV}: aborting after {} changes (test)",
                self.done
            );
            std::process::abort();
        }
    }
}

/// An exclusive lock on the state directory for the whole apply/rollback
/// (released when the file closes).
struct Lock {
    _file: fs::File,
}

/// Takes the lock in the checked state directory (created 0700 if needed),
/// then removes the leftovers of a killed run.
fn lock(paths: &Paths) -> Result<Lock, ApplyError> {
    let dir = state_dir(&paths.state, true)?;
    let path = paths.state.join("lock");
    let name = c"lock";
    // SAFETY: `name` is a NUL-terminated literal; `dir` is an open directory
    // descriptor borrowed for the call. O_NOFOLLOW: a link named `lock` is
    // refused, never opened.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(ApplyError::io(
            format!("opening {}", path.display()),
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: openat just returned this descriptor; nothing else owns it.
    let f = fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    // SAFETY: flock on a file descriptor this function owns; no memory is shared.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(ApplyError::Refused(format!(
            "another ctscope apply or rollback holds {}",
            path.display()
        )));
    }
    for p in remove_leftovers(paths, &dir)? {
        log::info!("removed {}, left by an interrupted ctscope", p.display());
    }
    Ok(Lock { _file: f })
}

/// What a finished apply did.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    pub steps: Vec<Step>,
    pub files: Vec<PathBuf>,
    pub journal: PathBuf,
}

/// Applies `rec` (after [`plan`] accepted it).
pub fn apply(rec: &Recommendation, opts: &Options) -> Result<Applied, ApplyError> {
    if !kernel::is_root() {
        return Err(ApplyError::NotRoot("apply"));
    }
    let _lock = lock(&opts.paths)?;
    let journal_path = opts.paths.journal();
    let previous = read_journal(&journal_path)?;
    if let Some(j) = &previous
        && j.status != "applied"
    {
        return Err(ApplyError::Refused(format!(
            "a previous apply did not finish ({} says `{}`): run `ctscope rollback` to restore the state before it, then apply again",
            journal_path.display(),
            j.status
        )));
    }
    let plan = plan(rec, opts)?;

    // The journal keeps the state before ctscope's FIRST change: values and
    // files already journaled keep their original `before`.
    let mut journal = previous.clone().unwrap_or(Journal {
        version: 1,
        status: "applying".into(),
        kernel_release: rec.kernel_release.clone(),
        runtime: Vec::new(),
        files: Vec::new(),
    });
    journal.status = "applying".into();
    for st in &plan.steps {
        if !journal.runtime.iter().any(|v| v.path == st.path) {
            journal.runtime.push(JournalValue {
                name: st.name.clone(),
                path: st.path.clone(),
                before: st.before,
            });
        }
    }
    for f in &plan.files {
        if !journal.files.iter().any(|j| j.path == f.path) {
            journal.files.push(JournalFile {
                path: f.path.clone(),
                before: f.before.clone(),
            });
        }
    }
    save_journal(&journal_path, &journal)?;
    // A failed step, after its undo: undone (the journal goes back to what it
    // was), or stuck (the journal stays for `rollback`).
    let failed = |what: String, undo: Result<(), String>| -> Result<ApplyError, ApplyError> {
        match undo {
            Ok(()) => {
                match &previous {
                    Some(j) => save_journal(&journal_path, j)?,
                    None => remove_durable(&journal_path).map_err(|e| {
                        ApplyError::io(format!("removing {}", journal_path.display()), e)
                    })?,
                }
                Ok(ApplyError::RolledBack { what })
            }
            Err(undo) => Ok(ApplyError::Stuck {
                what,
                undo,
                journal: journal_path.display().to_string(),
            }),
        }
    };

    let mut changes = Changes::new();
    let mut done: Vec<&Step> = Vec::new();
    for st in &plan.steps {
        let injected = changes.next_fails();
        let result = (if injected {
            Err(io::Error::other(format!("{FAIL_ENV} (test)")))
        } else {
            write_value(&st.path, st.after)
        })
            .map_err(|e| format!("writing {} = {} failed: {e}", st.path.display(), st.after))
            .and_then(|()| {
                changes.one();
                let got = procfs::read_u64(&st.path)
                    .map_err(|e| format!("reading {} back failed: {e}", st.path.display()))?;
                if got != st.expected(st.after) {
                    return Err(format!(
                        "{} reads back {got} after writing {} (expected {}): the kernel did not take it",
                        st.path.display(),
                        st.after,
                        st.expected(st.after)
                    ));
                }
                Ok(())
            });
        // A failed write may still have changed the value: undo it too.
        done.push(st);
        if let Err(what) = result {
            return Err(failed(what, undo_values(&done))?);
        }
    }
    let mut written: Vec<&FileChange> = Vec::new();
    for f in &plan.files {
        if let Err(e) = write_durable(&f.path, &f.after) {
            let what = format!("writing {} failed: {e}", f.path.display());
            return Err(failed(
                what,
                undo_files(&written).and_then(|()| undo_values(&done)),
            )?);
        }
        written.push(f);
        changes.one();
    }
    journal.status = "applied".into();
    save_journal(&journal_path, &journal)?;
    Ok(Applied {
        steps: plan.steps.clone(),
        files: plan.files.iter().map(|f| f.path.clone()).collect(),
        journal: journal_path,
    })
}

fn undo_values(done: &[&Step]) -> Result<(), String> {
    let mut errors = Vec::new();
    for st in done.iter().rev() {
        if let Err(e) = write_value(&st.path, st.before) {
            errors.push(format!("{} = {}: {e}", st.path.display(), st.before));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

fn undo_files(written: &[&FileChange]) -> Result<(), String> {
    let mut errors = Vec::new();
    for f in written.iter().rev() {
        let r = match &f.before {
            Some(text) => write_durable(&f.path, text),
            None => remove_durable(&f.path),
        };
        if let Err(e) = r {
            errors.push(format!("{}: {e}", f.path.display()));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// What `rollback` restored.
#[derive(Debug, Clone, Serialize)]
pub struct RolledBack {
    pub values: Vec<JournalValue>,
    pub files: Vec<PathBuf>,
    pub warnings: Vec<String>,
    pub kept_as: PathBuf,
}

/// Refuses a journal that names anything ctscope does not write itself:
/// rollback writes each path a journal names, as root, so a journal is
/// trusted for values only, never for where they go.
fn check_journal(j: &Journal, paths: &Paths) -> Result<(), ApplyError> {
    let refuse = |what: String| {
        Err(ApplyError::Refused(format!(
            "the journal names {what}, which ctscope never writes: it was not written by this ctscope (or was edited); restore by hand"
        )))
    };
    for v in &j.runtime {
        let own = match v.name.as_str() {
            "hashsize" => Some(paths.hashsize_param.clone()),
            n if is_own_sysctl(n) => Some(paths.sysctl_dir.join(n)),
            _ => None,
        };
        if own.as_ref() != Some(&v.path) {
            return refuse(format!(
                "setting {} at {}",
                text::name(&v.name),
                text::name(&v.path.to_string_lossy())
            ));
        }
    }
    let own = paths.own_files();
    for f in &j.files {
        if !own.contains(&f.path) {
            return refuse(format!(
                "the file {} (ctscope writes only {})",
                text::name(&f.path.to_string_lossy()),
                own.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    Ok(())
}

/// Restores the state the journal recorded before ctscope's first change.
/// Only the paths ctscope writes are touched ([`check_journal`]); `paths.etc`
/// must be the `/etc` the apply used.
pub fn rollback(paths: &Paths) -> Result<RolledBack, ApplyError> {
    if !kernel::is_root() {
        return Err(ApplyError::NotRoot("rollback"));
    }
    let _lock = lock(paths)?;
    let journal_path = paths.journal();
    let Some(journal) = read_journal(&journal_path)? else {
        return Err(ApplyError::Refused(format!(
            "nothing to roll back: no journal at {} (ctscope has not applied anything here, or it was rolled back already)",
            journal_path.display()
        )));
    };
    check_journal(&journal, paths)?;
    let mut warnings = Vec::new();
    if journal.kernel_release != kernel::release() {
        warnings.push(format!(
            "the journal was written on kernel {}, this is {}: the runtime values are restored for this boot anyway",
            text::name(&journal.kernel_release),
            kernel::release()
        ));
    }
    let mut errors = Vec::new();
    for v in journal.runtime.iter().rev() {
        match procfs::read_u64(&v.path) {
            Ok(now) if now == v.before => continue,
            Ok(_) => {}
            Err(e) => {
                errors.push(format!("{}: {e}", v.path.display()));
                continue;
            }
        }
        if v.name == "nf_conntrack_max" {
            let (live, at) = live_counts();
            if live > v.before {
                warnings.push(format!(
                    "restoring max {} while namespace {at} holds {live} entries: new connections there are dropped until enough expire",
                    v.before
                ));
            }
        }
        if let Err(e) = write_value(&v.path, v.before) {
            errors.push(format!("{} = {}: {e}", v.path.display(), v.before));
        }
    }
    for f in journal.files.iter().rev() {
        let r = match &f.before {
            Some(text) => write_durable(&f.path, text),
            None => remove_durable(&f.path),
        };
        if let Err(e) = r {
            errors.push(format!("{}: {e}", f.path.display()));
        }
    }
    if !errors.is_empty() {
        return Err(ApplyError::Io(format!(
            "rollback incomplete ({}); the journal is kept at {} for another try",
            errors.join("; "),
            journal_path.display()
        )));
    }
    // Kept for the record, out of the way of the next apply.
    let kept_as = paths.state.join("state.rolled-back.json");
    fs::rename(&journal_path, &kept_as)
        .map_err(|e| ApplyError::io(format!("moving {}", journal_path.display()), e))?;
    Ok(RolledBack {
        values: journal.runtime.clone(),
        files: journal.files.iter().map(|f| f.path.clone()).collect(),
        warnings,
        kept_as,
    })
}

/// Reads a recommendation file (`recommend --json`): a regular file of at
/// most [`safefile::MAX_INPUT`] bytes.
pub fn load_recommendation(path: &Path) -> Result<Recommendation, ApplyError> {
    let text = safefile::read_capped(path, safefile::MAX_INPUT).map_err(|e| {
        ApplyError::Io(format!(
            "reading {}: {e}",
            text::name(&path.to_string_lossy())
        ))
    })?;
    serde_json::from_slice(&text).map_err(|e| {
        ApplyError::Refused(format!(
            "{} is not a ctscope recommendation ({e}); make one with `ctscope recommend --json FILE`",
            text::name(&path.to_string_lossy())
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_writes_replace_and_remove() {
        let dir = std::env::temp_dir().join(format!("ctscope-apply-{}", std::process::id()));
        let p = dir.join("sub/f.conf");
        write_durable(&p, "a\n").expect("write");
        write_durable(&p, "b\n").expect("rewrite");
        assert_eq!(fs::read_to_string(&p).expect("read"), "b\n");
        assert_eq!(
            fs::metadata(&p).expect("meta").permissions().mode() & 0o777,
            0o644
        );
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.join("sub")).expect("ls").count(), 1);
        remove_durable(&p).expect("remove");
        remove_durable(&p).expect("remove twice");
        assert!(!p.exists());
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn margins_and_loads() {
        // max(10%, 256) above the live count.
        assert_eq!(with_margin(0), 256);
        assert_eq!(with_margin(100_000), 110_000);
        assert_eq!(with_margin(u64::MAX), u64::MAX);
        let s = |buckets, max| Size { buckets, max };
        // Better than now, or no worse: never a risk.
        assert_eq!(chain_risk(s(512, 1 << 20), s(1024, 1 << 20)), None);
        // λ = 2 x 2^31 / 512 = 8M: refused without any tail sum.
        let r = chain_risk(s(262_144, 262_144), s(1, 2_147_483_647)).expect("risk");
        assert!(r.contains("8388608.0 nodes per bucket"), "{r}");
        // λ = 2 at the kernel's default: fine.
        assert_eq!(chain_risk(s(262_144, 131_072), s(262_144, 262_144)), None);
    }

    #[test]
    fn buckets_read_back_rounded() {
        let st = Step {
            name: "nf_conntrack_buckets".into(),
            path: PathBuf::new(),
            before: 0,
            after: 1000,
        };
        assert_eq!(st.expected(1000), 1024);
        let m = Step {
            name: "nf_conntrack_max".into(),
            ..st
        };
        assert_eq!(m.expected(1000), 1000);
    }
}
