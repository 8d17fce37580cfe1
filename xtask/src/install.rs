//! `cargo xtask install`: build ctscope with its eBPF object and put it in `PREFIX/bin`.
//!
//! The binary is copied to a temporary file in the destination directory and renamed over
//! `ctscope`. A rename is atomic within one file system: a ctscope that is running keeps its old
//! file, and nobody ever sees a half-written binary (overwriting in place fails with ETXTBSY
//! while it runs anyway).

use crate::cmd;
use crate::compile;
use crate::setup;
use anyhow::{Context, Result, anyhow};
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where `install` puts ctscope unless told otherwise.
pub(crate) const DEFAULT_PREFIX: &str = "/usr/local";

pub(crate) fn run(prefix: &Path) -> Result<()> {
    let bin_dir = prefix.join("bin");
    // Before setup and the build: an unwritable prefix should fail in a second, not after them.
    ensure_writable(prefix, &bin_dir)?;
    setup::toolchain()?;
    let bins = compile::run(true)?;
    let dest = bin_dir.join("ctscope");
    install_atomic(&bins.ctscope, &dest).map_err(|e| explain(prefix, &bin_dir, e))?;

    println!("install: {}", dest.display());
    let version = cmd::output(Command::new(&dest).arg("version"))
        .with_context(|| format!("the installed {} does not run", dest.display()))?;
    print!("{version}");
    if !on_path(&bin_dir) {
        println!(
            "install: note: {} is not on PATH; run {} by its full path or add the directory",
            bin_dir.display(),
            dest.display()
        );
    }
    Ok(())
}

/// Creates `bin_dir` if needed and proves that a file can be created in it.
fn ensure_writable(prefix: &Path, bin_dir: &Path) -> Result<()> {
    let probe = bin_dir.join(format!(".ctscope-install-{}.probe", std::process::id()));
    let attempt = std::fs::create_dir_all(bin_dir).and_then(|()| {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
            .map(drop)
    });
    match attempt {
        Ok(()) => {
            std::fs::remove_file(&probe)
                .with_context(|| format!("cannot remove {}", probe.display()))?;
            Ok(())
        }
        Err(e) => Err(explain(prefix, bin_dir, anyhow!(e))),
    }
}

/// Turns a permission problem into advice; other errors pass through with their context.
fn explain(prefix: &Path, bin_dir: &Path, e: anyhow::Error) -> anyhow::Error {
    let denied = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem
            )
        })
    });
    if !denied {
        return e.context(format!("cannot install into {}", bin_dir.display()));
    }
    let prefix_arg = if prefix == Path::new(DEFAULT_PREFIX) {
        String::new()
    } else {
        format!(" --prefix {}", prefix.display())
    };
    anyhow!(
        "{} is not writable for this user ({e:#}).\n\
         Install as root, keeping your toolchain on PATH:\n    \
         sudo -E env \"PATH=$PATH\" cargo xtask install{prefix_arg}\n\
         or choose a prefix you own:\n    \
         cargo xtask install --prefix ~/.local",
        bin_dir.display()
    )
}

/// Copies `src` to a temporary file next to `dest`, makes it 0755, syncs it and renames it over
/// `dest`. The temporary file is removed if any step fails.
fn install_atomic(src: &Path, dest: &Path) -> Result<()> {
    let dir = dest
        .parent()
        .with_context(|| format!("{} has no parent directory", dest.display()))?;
    let tmp = dir.join(format!(".ctscope.install-{}.tmp", std::process::id()));
    let result = (|| -> Result<()> {
        std::fs::copy(src, &tmp)
            .with_context(|| format!("cannot copy {} to {}", src.display(), tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot chmod 755 {}", tmp.display()))?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("cannot sync {}", tmp.display()))?;
        std::fs::rename(&tmp, dest)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), dest.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    // Makes the rename itself durable. Best effort: the new binary is in place already.
    let _ = File::open(dir).and_then(|d| d.sync_all());
    Ok(())
}

/// Whether `dir` is one of PATH's directories.
fn on_path(dir: &Path) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let dir = canonical(dir);
    std::env::split_paths(&path).any(|p| canonical(&p) == dir)
}

/// `--prefix`'s parser: a relative prefix is taken from the current directory, so that the
/// messages name the real place.
pub(crate) fn prefix_arg(s: &str) -> Result<PathBuf, String> {
    if s.is_empty() {
        return Err("the prefix must not be empty".to_owned());
    }
    let p = PathBuf::from(s);
    if p.is_absolute() {
        return Ok(p);
    }
    std::env::current_dir()
        .map(|cwd| cwd.join(p))
        .map_err(|e| format!("cannot resolve the relative prefix {s}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system's temp dir, removed at the end of the test.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir =
                std::env::temp_dir().join(format!("xtask-install-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create scratch dir");
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn installs_atomically_with_mode_755_and_leaves_no_temp_file() {
        let s = Scratch::new("atomic");
        let src = s.0.join("built");
        std::fs::write(&src, b"new binary").expect("write src");
        let prefix = s.0.join("prefix");
        let bin = prefix.join("bin");
        ensure_writable(&prefix, &bin).expect("writable");
        let dest = bin.join("ctscope");
        std::fs::write(&dest, b"old binary").expect("write old");

        install_atomic(&src, &dest).expect("install");
        assert_eq!(std::fs::read(&dest).expect("read dest"), b"new binary");
        let mode = std::fs::metadata(&dest).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        let left: Vec<_> = std::fs::read_dir(&bin)
            .expect("list bin")
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        assert_eq!(left, [std::ffi::OsString::from("ctscope")]);
    }

    #[test]
    fn a_failed_copy_leaves_nothing_behind() {
        let s = Scratch::new("missing");
        let dest = s.0.join("ctscope");
        let err = install_atomic(&s.0.join("no-such-file"), &dest).expect_err("must fail");
        assert!(format!("{err:#}").contains("cannot copy"), "{err:#}");
        let left = std::fs::read_dir(&s.0).expect("list").count();
        assert_eq!(left, 0);
    }

    #[test]
    fn permission_errors_suggest_sudo_or_a_prefix() {
        let denied = anyhow!(std::io::Error::from(ErrorKind::PermissionDenied));
        let text = format!(
            "{:#}",
            explain(Path::new("/opt/ct"), Path::new("/opt/ct/bin"), denied)
        );
        assert!(text.contains("/opt/ct/bin is not writable"), "{text}");
        assert!(text.contains("sudo -E"), "{text}");
        assert!(
            text.contains("cargo xtask install --prefix /opt/ct"),
            "{text}"
        );
        assert!(text.contains("--prefix ~/.local"), "{text}");

        let other = anyhow!(std::io::Error::from(ErrorKind::NotFound));
        let text = format!("{:#}", explain(Path::new("/x"), Path::new("/x/bin"), other));
        assert!(!text.contains("sudo"), "{text}");
    }

    #[test]
    fn relative_prefixes_become_absolute() {
        assert_eq!(prefix_arg("/usr/local"), Ok(PathBuf::from("/usr/local")));
        let p = prefix_arg("inst").expect("relative");
        assert!(p.is_absolute() && p.ends_with("inst"));
        assert!(prefix_arg("").is_err());
    }
}
