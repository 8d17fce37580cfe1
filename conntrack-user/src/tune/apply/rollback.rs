//! `ctscope rollback`: the state the journal recorded, restored.

use std::{fs, path::PathBuf};

use serde::Serialize;

use super::{
    ApplyError, Journal, JournalValue, Paths,
    files::{restore_file, restore_value, undo_all},
    journal::{lock, read_journal},
    paths::is_own_sysctl,
};
use crate::{
    host::{kernel, namespaces, procfs},
    text,
};

/// The highest count of any namespace now, and its name (for `rollback`'s
/// warning).
fn live_counts() -> (u64, String) {
    namespaces::census()
        .busiest()
        .map_or((0, "(none)".into()), |c| (c.count, c.name.clone()))
}

/// What `rollback` restored.
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
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
pub fn rollback(paths: &Paths) -> Result<Restored, ApplyError> {
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
    let mut errors = restore_values(&journal, &mut warnings);
    let files = journal.files.iter().rev();
    if let Err(e) = undo_all(files.map(|f| restore_file(&f.path, f.before.as_deref()))) {
        errors.push(e);
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
    Ok(Restored {
        values: journal.runtime.clone(),
        files: journal.files.iter().map(|f| f.path.clone()).collect(),
        warnings,
        kept_as,
    })
}

/// Puts each journaled runtime value back, last first, leaving alone those
/// that already hold it; warns where a restored max is below a namespace's
/// live count. Returns the errors (every value is tried).
fn restore_values(journal: &Journal, warnings: &mut Vec<String>) -> Vec<String> {
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
        if let Err(e) = restore_value(&v.path, v.before) {
            errors.push(e);
        }
    }
    errors
}
