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
//!   (every namespace, [`crate::host::namespaces::census`]; one that cannot
//!   be read fails closed), and a large cut from a short observation.
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
    io,
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::{
    host::{kernel, procfs},
    safefile, text,
    tune::recommend::Recommendation,
};

mod error;
mod files;
mod journal;
mod paths;
mod plan;
mod risks;
mod rollback;
#[cfg(test)]
mod tests;

pub use error::ApplyError;
pub use files::write_durable;
pub use journal::{Journal, JournalFile, JournalValue, save_last_recommendation};
pub use paths::Paths;
pub use plan::{FileChange, Plan, Step, plan, render_plan};
pub use risks::{
    CHAIN_LIMIT_MIN, DEFAULT_MAX_MEMORY_SHARE_PCT, LARGE_CUT, LIVE_MARGIN_MIN, LIVE_MARGIN_PCT,
    SHORT_OBSERVATION_S,
};
pub use rollback::{Restored, rollback};

use files::{remove_durable, undo_files, undo_values, write_value};
use journal::{lock, read_journal, save_journal};

/// Test only: abort (as a `kill -9` would) after this many changes. Read in
/// debug builds only: a release binary ignores it.
pub const ABORT_ENV: &str = "CTSCOPE_TEST_ABORT_AFTER";
/// Test only: make this change (1-based) fail as a refused write would.
/// Debug builds only, as [`ABORT_ENV`].
pub const FAIL_ENV: &str = "CTSCOPE_TEST_FAIL_AT";

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

    let mut journal = journal_before(&plan, previous.as_ref(), &rec.kernel_release);
    save_journal(&journal_path, &journal)?;
    let undo = Undo {
        journal_path: &journal_path,
        previous: previous.as_ref(),
    };
    let mut changes = Changes::new();
    let mut done = Vec::new();
    if let Err(what) = write_steps(&plan.steps, &mut changes, &mut done) {
        return Err(undo.failed(what, undo_values(&done)));
    }
    let mut written = Vec::new();
    if let Err(what) = write_files(&plan.files, &mut changes, &mut written) {
        return Err(undo.failed(what, undo_files(&written).and_then(|()| undo_values(&done))));
    }
    journal.status = "applied".into();
    save_journal(&journal_path, &journal)?;
    Ok(Applied {
        steps: plan.steps.clone(),
        files: plan.files.iter().map(|f| f.path.clone()).collect(),
        journal: journal_path,
    })
}

/// The journal to write before the first change, status `applying`. It
/// keeps the state before ctscope's FIRST change: values and files already
/// journaled keep their original `before`.
fn journal_before(plan: &Plan, previous: Option<&Journal>, kernel_release: &str) -> Journal {
    let mut journal = previous.cloned().unwrap_or(Journal {
        version: 1,
        status: "applying".into(),
        kernel_release: kernel_release.to_string(),
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
    journal
}

/// Writes each runtime value and reads it back. Every step tried goes into
/// `done`, the failed one too: a failed write may still have changed the
/// value, so it is undone as well.
fn write_steps<'a>(
    steps: &'a [Step],
    changes: &mut Changes,
    done: &mut Vec<&'a Step>,
) -> Result<(), String> {
    for st in steps {
        let result = write_step(st, changes);
        done.push(st);
        result?;
    }
    Ok(())
}

/// One runtime value: written (or failed on purpose, test only), counted,
/// then read back and compared with what the kernel must show.
fn write_step(st: &Step, changes: &mut Changes) -> Result<(), String> {
    let injected = changes.next_fails();
    (if injected {
        Err(io::Error::other(format!("{FAIL_ENV} (test)")))
    } else {
        write_value(&st.path, st.after)
    })
    .map_err(|e| format!("writing {} = {} failed: {e}", st.path.display(), st.after))?;
    changes.one();
    let got = procfs::read_u64(&st.path)
        .map_err(|e| format!("reading {} back failed: {e}", st.path.display()))?;
    if got != st.read_back_value(st.after) {
        return Err(format!(
            "{} reads back {got} after writing {} (expected {}): the kernel did not take it",
            st.path.display(),
            st.after,
            st.read_back_value(st.after)
        ));
    }
    Ok(())
}

/// Writes the persisted files; the ones written go into `written`.
fn write_files<'a>(
    files: &'a [FileChange],
    changes: &mut Changes,
    written: &mut Vec<&'a FileChange>,
) -> Result<(), String> {
    for f in files {
        write_durable(&f.path, &f.after)
            .map_err(|e| format!("writing {} failed: {e}", f.path.display()))?;
        written.push(f);
        changes.one();
    }
    Ok(())
}

/// How a failed apply ends once its changes are undone.
struct Undo<'a> {
    journal_path: &'a Path,
    /// The journal before this apply (None: there was none).
    previous: Option<&'a Journal>,
}

impl Undo<'_> {
    /// A failed step, after its undo: undone (the journal goes back to what
    /// it was), or stuck (the journal stays for `rollback`). Restoring the
    /// journal can fail too: that error is the one returned.
    fn failed(&self, what: String, undo: Result<(), String>) -> ApplyError {
        let path = self.journal_path;
        match undo {
            Ok(()) => {
                let restored = match self.previous {
                    Some(j) => save_journal(path, j),
                    None => remove_durable(path)
                        .map_err(|e| ApplyError::io(format!("removing {}", path.display()), e)),
                };
                match restored {
                    Ok(()) => ApplyError::RolledBack { what },
                    Err(e) => e,
                }
            }
            Err(undo) => ApplyError::Stuck {
                what,
                undo,
                journal: path.display().to_string(),
            },
        }
    }
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
