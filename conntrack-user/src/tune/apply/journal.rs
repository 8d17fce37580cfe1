//! The journal of the state before ctscope's first change, the checked
//! state directory it lives in, and the lock on it.

use std::{
    ffi::OsStr,
    fs, io,
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use nix::{fcntl::OFlag, sys::stat::Mode};
use serde::{Deserialize, Serialize};

use super::{
    ApplyError, Paths,
    paths::{MAX_JOURNAL, MODULE_FILE, STATE_FILES, STATE_MODE, SYSCTL_FILE},
};
use crate::safefile::{self, DirError};

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

pub(super) fn read_journal(path: &Path) -> Result<Option<Journal>, ApplyError> {
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

pub(super) fn save_journal(path: &Path, j: &Journal) -> Result<(), ApplyError> {
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

/// An exclusive lock on the state directory for the whole apply/rollback
/// (released when the file closes).
pub(super) struct Lock {
    _file: fs::File,
}

/// Takes the lock in the checked state directory (created 0700 if needed),
/// then removes the leftovers of a killed run.
pub(super) fn lock(paths: &Paths) -> Result<Lock, ApplyError> {
    let dir = state_dir(&paths.state, true)?;
    let path = paths.state.join("lock");
    let name = c"lock";
    // O_NOFOLLOW: a link named `lock` is refused, never opened. No O_EXCL:
    // the lock file stays between runs; what guards it is the private
    // directory and flock. nix passes the flags and the mode through as they
    // are.
    let fd = nix::fcntl::openat(
        dir.as_fd(),
        name,
        OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_retain(0o600),
    )
    .map_err(|e| ApplyError::io(format!("opening {}", path.display()), io::Error::from(e)))?;
    let f = fs::File::from(fd);
    // flock(LOCK_EX | LOCK_NB) on Linux: released when the file is closed,
    // also when the process dies.
    match f.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            return Err(ApplyError::Refused(format!(
                "another ctscope apply or rollback holds {}",
                path.display()
            )));
        }
        Err(fs::TryLockError::Error(e)) => {
            return Err(ApplyError::io(format!("locking {}", path.display()), e));
        }
    }
    for p in remove_leftovers(paths, &dir)? {
        log::info!("removed {}, left by an interrupted ctscope", p.display());
    }
    Ok(Lock { _file: f })
}
