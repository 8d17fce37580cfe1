//! Writing: runtime values, the files `--persist` writes (durably), and
//! putting either back as it was.

use std::{
    fs,
    io::{self, Write as _},
    path::Path,
};

use super::{
    ApplyError, FileChange, Options, Step,
    paths::{MAX_PERSISTED, PERSIST_MODE, is_timeout_name},
};
use crate::{
    host::kernel::{self, ConntrackPresence},
    safefile, text,
    tune::recommend::Recommendation,
};

pub(super) fn write_value(path: &Path, v: u64) -> io::Result<()> {
    let mut f = fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(format!("{v}\n").as_bytes())
}

/// The files `--persist` writes. Nothing from outside enters them as it
/// came: the source path and kernel release go into a comment escaped to one
/// printable line (a newline in a `--from` name would otherwise add a line
/// to /etc/modprobe.d, where `install` runs a command as root at boot), the
/// sysctl names are ctscope's own, every value is a number.
pub(super) fn persist_files(
    rec: &Recommendation,
    opts: &Options,
) -> Result<Vec<FileChange>, ApplyError> {
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
pub(super) fn remove_durable(path: &Path) -> io::Result<()> {
    safefile::remove_durable(path)
}

/// Undoes the runtime values written, last first.
pub(super) fn undo_values(done: &[&Step]) -> Result<(), String> {
    undo_all(
        done.iter()
            .rev()
            .map(|st| restore_value(&st.path, st.before)),
    )
}

/// Undoes the files written, last first.
pub(super) fn undo_files(written: &[&FileChange]) -> Result<(), String> {
    undo_all(
        written
            .iter()
            .rev()
            .map(|f| restore_file(&f.path, f.before.as_deref())),
    )
}

/// Runs every restore (one failing does not stop the others) and joins
/// their errors.
pub(super) fn undo_all(restores: impl Iterator<Item = Result<(), String>>) -> Result<(), String> {
    let errors: Vec<String> = restores.filter_map(Result::err).collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Puts a runtime value back; the error names the path and the value.
pub(super) fn restore_value(path: &Path, before: u64) -> Result<(), String> {
    write_value(path, before).map_err(|e| format!("{} = {before}: {e}", path.display()))
}

/// Puts a file back as it was: its old content, or no file. The error names
/// the path.
pub(super) fn restore_file(path: &Path, before: Option<&str>) -> Result<(), String> {
    match before {
        Some(text) => write_durable(path, text),
        None => remove_durable(path),
    }
    .map_err(|e| format!("{}: {e}", path.display()))
}
