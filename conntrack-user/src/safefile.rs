//! The one way ctscope writes (and reads back) files, as root, in
//! directories other users may be able to write.
//!
//! - A file is written through a temporary file in the same directory,
//!   created with `O_CREAT|O_EXCL|O_NOFOLLOW` under a random name: a symlink
//!   or a file planted at any name we might use makes the create fail instead
//!   of redirecting the write or handing us someone else's inode. Its mode is
//!   set with `fchmod` on the descriptor (the umask does not matter); it is
//!   written, fsynced, renamed over the target (rename replaces a symlink at
//!   the destination, it never follows it), and the directory is fsynced.
//!   On any error the temporary file is removed.
//! - Directories are used through a descriptor (`openat`, `renameat`,
//!   `unlinkat`), so a directory swapped after it was checked does not move
//!   the write elsewhere.
//! - Inputs are read with a size cap and only from regular files
//!   (`--from /dev/zero` would otherwise read until memory runs out).

use std::{
    ffi::{CStr, CString, OsStr, OsString},
    fs,
    io::{self, Read as _, Write as _},
    os::{
        fd::{AsFd, AsRawFd as _, BorrowedFd, OwnedFd},
        unix::{
            ffi::{OsStrExt as _, OsStringExt as _},
            fs::{MetadataExt as _, PermissionsExt as _},
        },
    },
    path::{Path, PathBuf},
};

use nix::{
    fcntl::{AT_FDCWD, OFlag},
    sys::stat::Mode,
    unistd::UnlinkatFlags,
};
use thiserror::Error;

/// What every temporary file of ctscope has in its name:
/// `.<target name>.ctscope-tmp.<random>`. Leftovers of a killed run are found
/// by it ([`remove_leftovers`]).
pub const TMP_MARK: &str = ".ctscope-tmp.";

/// The most ctscope reads from a file given on the command line (a report or
/// a recommendation is a few hundred KiB at most).
pub const MAX_INPUT: u64 = 16 << 20;

/// Longest target-name part of a temporary name: NAME_MAX is 255 bytes and
/// the mark and the random part take 30 more.
const TMP_NAME_PART: usize = 200;

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in a file name"))
}

/// A single path component: no `/`, not `.` or `..`, not empty.
#[expect(
    clippy::unnecessary_debug_formatting,
    reason = "Debug quotes and escapes a name that may hold any byte"
)]
fn check_name(name: &OsStr) -> io::Result<()> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a file name"),
        ));
    }
    Ok(())
}

/// Splits `path` into its directory (`.` for a bare name) and file name.
fn split(path: &Path) -> io::Result<(&Path, &OsStr)> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} does not name a file", path.display()),
        )
    })?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok((dir, name))
}

/// openat(2) with exactly `flags | O_CLOEXEC` and `mode`: nix passes both
/// bit sets through unchanged, and its errno becomes the same io::Error that
/// `last_os_error` gave (the callers match on its kind and raw code).
fn open_raw(
    dir: Option<BorrowedFd<'_>>,
    name: &CStr,
    flags: OFlag,
    mode: Mode,
) -> io::Result<OwnedFd> {
    let dirfd = dir.unwrap_or(AT_FDCWD);
    nix::fcntl::openat(dirfd, name, flags | OFlag::O_CLOEXEC, mode).map_err(io::Error::from)
}

/// Opens the directory `path` (links in it are followed: the caller named
/// it) for use with the `*_at` functions.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    open_raw(
        None,
        &cstr(path.as_os_str())?,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY,
        Mode::empty(),
    )
}

/// 16 random hex digits for a temporary name. The name only has to be hard
/// to guess (so that nobody can pre-create it to make us fail); safety comes
/// from `O_EXCL|O_NOFOLLOW`.
fn random_suffix() -> String {
    let mut buf = [0u8; 8];
    // SAFETY: getrandom writes at most `buf.len()` bytes into `buf`, which
    // is valid for writes for the whole call.
    let got = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    let mut v = u64::from_ne_bytes(buf);
    if got != buf.len() as isize {
        // No getrandom (pre-3.17 kernel, seccomp): time and pid still make
        // a name that is hard to hit, and O_EXCL keeps it safe regardless.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        v ^= nanos.rotate_left(17) ^ u64::from(std::process::id());
    }
    format!("{v:016x}")
}

/// The temporary name for `name`: `.<name>.ctscope-tmp.<random>`.
fn tmp_name(name: &OsStr) -> OsString {
    let b = name.as_bytes();
    let part = &b[..b.len().min(TMP_NAME_PART)];
    let mut out = Vec::with_capacity(part.len() + 32);
    out.push(b'.');
    out.extend_from_slice(part);
    out.extend_from_slice(TMP_MARK.as_bytes());
    out.extend_from_slice(random_suffix().as_bytes());
    OsString::from_vec(out)
}

fn unlink_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // unlinkat never follows a symlink: it removes the link itself.
    // NoRemoveDir is flags 0, as before (a directory is refused, EISDIR).
    nix::unistd::unlinkat(dir, name, UnlinkatFlags::NoRemoveDir).map_err(io::Error::from)
}

fn fsync_dir(dir: BorrowedFd<'_>) -> io::Result<()> {
    nix::unistd::fsync(dir).map_err(io::Error::from)
}

/// Writes `bytes` to `path` atomically and durably with exactly `mode`
/// (see the module comment). Links in the directory part of `path` are
/// followed (the caller chose that directory); the file itself is never
/// opened through a link.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let (dir, name) = split(path)?;
    let dir = open_dir(dir)?;
    write_atomic_at(dir.as_fd(), name, bytes, mode)
}

/// [`write_atomic`] into the directory `dir` (a descriptor).
pub fn write_atomic_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    bytes: &[u8],
    mode: u32,
) -> io::Result<()> {
    check_name(name)?;
    let target = cstr(name)?;
    // A name taken (planted, or a leftover) makes O_EXCL fail: try another.
    let mut attempt = 0;
    let (tmp, fd) = loop {
        let tmp = cstr(&tmp_name(name))?;
        match open_raw(
            Some(dir),
            &tmp,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW,
            Mode::from_bits_retain(0o600),
        ) {
            Ok(fd) => break (tmp, fd),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 8 => attempt += 1,
            Err(e) => return Err(e),
        }
    };
    let result = (|| {
        let mut f = fs::File::from(fd);
        // fchmod on the descriptor: the mode asked for, whatever the umask.
        f.set_permissions(fs::Permissions::from_mode(mode & 0o7777))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        // Both names in the same directory, held open by descriptor.
        nix::fcntl::renameat(dir, tmp.as_c_str(), dir, target.as_c_str())?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        // Gone already if the rename happened; nothing else to do then.
        let _ = unlink_at(dir, &tmp);
    }
    result
}

/// Removes `path` (not following a link: a link is removed itself) and
/// fsyncs its directory. A file already absent is fine.
pub fn remove_durable(path: &Path) -> io::Result<()> {
    let (dir, name) = split(path)?;
    let dir = match open_dir(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    remove_durable_at(dir.as_fd(), name)
}

/// [`remove_durable`] in the directory `dir` (a descriptor).
pub fn remove_durable_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    check_name(name)?;
    match unlink_at(dir, &cstr(name)?) {
        Ok(()) => fsync_dir(dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Reads all of an open file, refusing anything but a regular file of at
/// most `cap` bytes.
fn read_fd_capped(fd: OwnedFd, cap: u64) -> io::Result<Vec<u8>> {
    let f = fs::File::from(fd);
    let meta = f.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (ctscope reads its inputs only from regular files)",
        ));
    }
    let too_big = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {cap} bytes, the most ctscope reads from it"),
        )
    };
    if meta.len() > cap {
        return Err(too_big());
    }
    let mut out = Vec::with_capacity(meta.len() as usize);
    // The size can change while we read (a file still being written): read
    // at most one byte past the cap, never more.
    f.take(cap.saturating_add(1)).read_to_end(&mut out)?;
    if out.len() as u64 > cap {
        return Err(too_big());
    }
    Ok(out)
}

/// Reads the file the user named (links followed), only if it is a regular
/// file of at most `cap` bytes. `O_NONBLOCK` so that opening a FIFO with no
/// writer does not hang before we can see what it is.
pub fn read_capped(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let fd = open_raw(
        None,
        &cstr(path.as_os_str())?,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
        Mode::empty(),
    )?;
    read_fd_capped(fd, cap)
}

/// Reads `name` in the directory `dir` without following a link, at most
/// `cap` bytes, only a regular file; `None` when it does not exist.
pub fn read_capped_at(dir: BorrowedFd<'_>, name: &OsStr, cap: u64) -> io::Result<Option<Vec<u8>>> {
    check_name(name)?;
    match open_raw(
        Some(dir),
        &cstr(name)?,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_NOFOLLOW,
        Mode::empty(),
    ) {
        Ok(fd) => read_fd_capped(fd, cap).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a symbolic link, not followed",
        )),
        Err(e) => Err(e),
    }
}

/// [`read_capped_at`] by path: the directory part is followed, the last
/// component is not.
pub fn read_capped_nofollow(path: &Path, cap: u64) -> io::Result<Option<Vec<u8>>> {
    let (dir, name) = split(path)?;
    let dir = match open_dir(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    read_capped_at(dir.as_fd(), name, cap)
}

/// Removes ctscope's own temporary files for the targets `own` (file names)
/// from the directory `dir`, left by a run that was killed between creating
/// and renaming them. Only names `.<own>.ctscope-tmp.*` are removed, as
/// links (never followed); a directory that does not exist has none. The
/// directory itself is opened as [`write_atomic`] opens it.
/// Returns the paths removed.
pub fn remove_leftovers(dir: &Path, own: &[&str]) -> io::Result<Vec<PathBuf>> {
    match open_dir(dir) {
        Ok(fd) => remove_leftovers_at(fd.as_fd(), dir, own),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// [`remove_leftovers`] in the directory `fd` (an open descriptor, e.g. a
/// checked [`private_dir`]); `dir` only names it in the result.
pub fn remove_leftovers_at(
    fd: BorrowedFd<'_>,
    dir: &Path,
    own: &[&str],
) -> io::Result<Vec<PathBuf>> {
    let prefixes: Vec<Vec<u8>> = own
        .iter()
        .map(|n| {
            let b = n.as_bytes();
            let mut p = vec![b'.'];
            p.extend_from_slice(&b[..b.len().min(TMP_NAME_PART)]);
            p.extend_from_slice(TMP_MARK.as_bytes());
            p
        })
        .collect();
    let mut removed = Vec::new();
    // List the directory we hold open, not whatever the path names now.
    for e in fs::read_dir(format!("/proc/self/fd/{}", fd.as_raw_fd()))? {
        let name = e?.file_name();
        let b = name.as_bytes();
        if prefixes
            .iter()
            .any(|p| b.len() > p.len() && b.starts_with(p))
        {
            unlink_at(fd, &cstr(&name)?)?;
            removed.push(dir.join(&name));
        }
    }
    if !removed.is_empty() {
        fsync_dir(fd)?;
    }
    Ok(removed)
}

#[derive(Debug, Error)]
pub enum DirError {
    /// Not a directory only we can write: someone else could plant or
    /// replace what we keep there.
    #[error(
        "{path} {why}: ctscope keeps its state only in a real directory owned by root (uid {euid}) that no one else can write; fix or remove it"
    )]
    Unsafe {
        path: String,
        why: String,
        euid: u32,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

/// Opens (with `create`, first creating it mode 0700) a directory that only
/// this user may write: a real directory, not a link, owned by the
/// effective uid, not writable by group or others. Anything else is
/// refused with the reason.
pub fn private_dir(path: &Path, create: bool) -> Result<OwnedFd, DirError> {
    let io_err = |what, source| DirError::Io {
        what,
        path: path.display().to_string(),
        source,
    };
    let euid = nix::unistd::geteuid().as_raw();
    let unsafe_dir = |why: String| DirError::Unsafe {
        path: path.display().to_string(),
        why,
        euid,
    };
    if create {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|e| io_err("creating", e))?;
        }
        let mut b = fs::DirBuilder::new();
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        match b.create(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("creating", e)),
        }
    }
    let fd = open_raw(
        None,
        &cstr(path.as_os_str()).map_err(|e| io_err("opening", e))?,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|e| match e.raw_os_error() {
        // O_NOFOLLOW|O_DIRECTORY on a link gives ENOTDIR (or ELOOP): say which.
        Some(libc::ELOOP | libc::ENOTDIR) => {
            if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
                unsafe_dir("is a symbolic link".into())
            } else {
                unsafe_dir("is not a directory".into())
            }
        }
        _ => io_err("opening", e),
    })?;
    let meta = fs::File::from(fd.try_clone().map_err(|e| io_err("opening", e))?)
        .metadata()
        .map_err(|e| io_err("checking", e))?;
    if meta.uid() != euid {
        return Err(unsafe_dir(format!("is owned by uid {}", meta.uid())));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_dir(format!(
            "is writable by {} (mode {:04o})",
            if meta.mode() & 0o002 != 0 {
                "everyone"
            } else {
                "its group"
            },
            meta.mode() & 0o7777
        )));
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ctscope-safefile-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("scratch dir");
        d
    }

    #[test]
    fn writes_with_the_mode_asked_whatever_the_umask() {
        let d = scratch("mode");
        let p = d.join("out.json");
        // A strict mask while writing, then the previous one back.
        let old = nix::sys::stat::umask(Mode::from_bits_retain(0o077));
        write_atomic(&p, b"one", 0o644).expect("write");
        nix::sys::stat::umask(old);
        assert_eq!(fs::read(&p).expect("read"), b"one");
        assert_eq!(fs::metadata(&p).expect("meta").mode() & 0o7777, 0o644);
        write_atomic(&p, b"two", 0o600).expect("rewrite");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        assert_eq!(fs::metadata(&p).expect("meta").mode() & 0o7777, 0o600);
        assert_eq!(fs::read_dir(&d).expect("ls").count(), 1, "no temp left");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_failed_write_leaves_no_temporary_file() {
        let d = scratch("fail");
        // The target is a directory: the rename fails after the temp exists.
        fs::create_dir(d.join("target")).expect("mkdir");
        assert!(write_atomic(&d.join("target"), b"x", 0o644).is_err());
        let names: Vec<_> = fs::read_dir(&d)
            .expect("ls")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("target")]);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn inputs_are_capped_and_regular_only() {
        let d = scratch("cap");
        let p = d.join("big");
        fs::write(&p, vec![b'x'; 2000]).expect("write");
        assert_eq!(read_capped(&p, 2000).expect("at the cap").len(), 2000);
        let e = read_capped(&p, 1999).expect_err("over the cap");
        assert!(e.to_string().contains("larger than"), "{e}");
        let e = read_capped(Path::new("/dev/zero"), MAX_INPUT).expect_err("device");
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn reading_in_a_directory_does_not_follow_links() {
        let d = scratch("nofollow");
        fs::write(d.join("real"), b"secret").expect("write");
        std::os::unix::fs::symlink(d.join("real"), d.join("link")).expect("symlink");
        let e = read_capped_nofollow(&d.join("link"), MAX_INPUT).expect_err("a link");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(
            read_capped_nofollow(&d.join("none"), MAX_INPUT).expect("absent"),
            None
        );
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn private_dirs_are_created_0700_and_checked() {
        let d = scratch("private");
        let p = d.join("state");
        private_dir(&p, true).expect("created");
        assert_eq!(fs::metadata(&p).expect("meta").mode() & 0o7777, 0o700);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o777)).expect("chmod");
        let e = private_dir(&p, true).expect_err("world-writable");
        assert!(e.to_string().contains("writable by everyone"), "{e}");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o770)).expect("chmod");
        let e = private_dir(&p, true).expect_err("group-writable");
        assert!(e.to_string().contains("writable by its group"), "{e}");
        fs::remove_dir(&p).expect("rmdir");
        std::os::unix::fs::symlink(&d, &p).expect("symlink");
        let e = private_dir(&p, true).expect_err("a link");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let _ = fs::remove_dir_all(&d);
    }
}
