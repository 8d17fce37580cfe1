//! A minimal cpio "newc" writer. Writing the archive ourselves lets us add device nodes
//! (`/dev/console`) without root and makes the archive reproducible (uid 0, mtime 0, sorted).

use anyhow::{Context, Result};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// A character device to add to the archive.
pub(crate) struct CharDev {
    pub path: &'static str,
    pub mode: u32,
    pub major: u32,
    pub minor: u32,
}

pub(crate) struct Writer<W: Write> {
    out: W,
    ino: u32,
}

impl<W: Write> Writer<W> {
    pub(crate) fn new(out: W) -> Self {
        Writer { out, ino: 1 }
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) -> Result<()> {
        let namesize = name.len() + 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0, // uid
            0, // gid
            if mode & S_IFDIR == S_IFDIR { 2 } else { 1 },
            0, // mtime
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            namesize,
            0,
        );
        self.ino += 1;
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.pad(header.len() + namesize)?;
        self.out.write_all(data)?;
        self.pad(data.len())?;
        Ok(())
    }

    fn pad(&mut self, len: usize) -> Result<()> {
        let pad = (4 - len % 4) % 4;
        self.out.write_all(&[0u8; 3][..pad])?;
        Ok(())
    }

    /// Adds `dir`'s contents recursively, names relative to `dir`, parents before children.
    pub(crate) fn add_tree(&mut self, dir: &Path) -> Result<()> {
        self.add_dir_contents(dir, "")
    }

    fn add_dir_contents(&mut self, dir: &Path, prefix: &str) -> Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("cannot read {}", dir.display()))?;
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for e in entries {
            let path = e.path();
            let file_name = e.file_name();
            let Some(file_name) = file_name.to_str() else {
                anyhow::bail!("non-UTF-8 file name in initramfs tree: {}", path.display());
            };
            let name = format!("{prefix}{file_name}");
            let meta = std::fs::symlink_metadata(&path)
                .with_context(|| format!("cannot stat {}", path.display()))?;
            let perm = meta.permissions().mode() & 0o7777;
            let ft = meta.file_type();
            if ft.is_dir() {
                self.entry(&name, S_IFDIR | perm, (0, 0), &[])?;
                self.add_dir_contents(&path, &format!("{name}/"))?;
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path)
                    .with_context(|| format!("cannot read link {}", path.display()))?;
                let target = target.to_string_lossy();
                self.entry(&name, S_IFLNK | 0o777, (0, 0), target.as_bytes())?;
            } else if ft.is_file() {
                let data = std::fs::read(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                debug_assert_eq!(data.len() as u64, meta.size());
                self.entry(&name, S_IFREG | perm, (0, 0), &data)?;
            } else {
                anyhow::bail!(
                    "unsupported file type in initramfs tree: {}",
                    path.display()
                );
            }
        }
        Ok(())
    }

    pub(crate) fn add_char_dev(&mut self, dev: &CharDev) -> Result<()> {
        self.entry(dev.path, S_IFCHR | dev.mode, (dev.major, dev.minor), &[])
    }

    /// Writes the trailer and returns the underlying writer.
    pub(crate) fn finish(mut self) -> Result<W> {
        self.entry("TRAILER!!!", 0, (0, 0), &[])?;
        self.out.flush()?;
        Ok(self.out)
    }
}
