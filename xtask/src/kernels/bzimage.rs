//! The kernel release a bzImage names in its own setup header (Documentation/arch/x86/boot.rst):
//! "HdrS" at 0x202, the u16 at 0x20E points (minus 0x200) at a NUL-terminated version string
//! such as "6.12.57+deb13-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP ...".

use anyhow::{Result, bail};

const MAGIC_AT: usize = 0x202;
const VERSION_PTR_AT: usize = 0x20E;
/// The pointer is relative to the start of the setup header's sector, 0x200 into the file.
const VERSION_BASE: usize = 0x200;
/// A release longer than this is no release (`uname -r` is at most 64 bytes).
const MAX_RELEASE: usize = 64;

/// The release (`uname -r`) of the kernel in `image`: the version string up to its first space.
pub(super) fn release(image: &[u8]) -> Result<String> {
    if image.get(MAGIC_AT..MAGIC_AT + 4) != Some(b"HdrS".as_slice()) {
        bail!("not a bzImage (no \"HdrS\" magic at 0x202)");
    }
    let Some(ptr) = image.get(VERSION_PTR_AT..VERSION_PTR_AT + 2) else {
        bail!("the bzImage header is truncated");
    };
    let ptr = usize::from(u16::from_le_bytes([ptr[0], ptr[1]]));
    if ptr == 0 {
        bail!("the bzImage header has no kernel version string (offset 0 at 0x20E)");
    }
    let start = ptr.saturating_add(VERSION_BASE);
    let Some(rest) = image.get(start..) else {
        bail!("the bzImage's version string offset {start:#x} lies beyond the file");
    };
    let end = rest
        .iter()
        .position(|&b| b == b' ' || b == 0)
        .unwrap_or(rest.len())
        .min(MAX_RELEASE + 1);
    let release = &rest[..end];
    let valid = |b: &u8| b.is_ascii_alphanumeric() || b"._+-~".contains(b);
    // Also a path component later (lib/modules/<release>): `.` and `..` are none.
    let dots = release.iter().all(|&b| b == b'.');
    if release.is_empty() || dots || release.len() > MAX_RELEASE || !release.iter().all(valid) {
        bail!(
            "the bzImage's version string at {start:#x} is no kernel release: {:?}",
            String::from_utf8_lossy(&release[..release.len().min(MAX_RELEASE)])
        );
    }
    Ok(String::from_utf8_lossy(release).into_owned())
}

#[cfg(test)]
mod tests {
    use super::release;
    use crate::paths;

    /// A real image: one the lab downloaded (`cargo xtask kernel --kernel 6.12` or 7.3), whose
    /// release Debian also put in its file or directory name.
    #[test]
    fn release_of_a_real_debian_image() {
        let kernels = paths::lab_dir().join("kernels");
        let mut checked = 0;
        for record in std::fs::read_dir(&kernels).into_iter().flatten().flatten() {
            let json = record.path().join("kernel.json");
            let Ok(text) = std::fs::read_to_string(&json) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            let (Some(vmlinuz), Some(modules_dir)) = (
                v.get("vmlinuz").and_then(|x| x.as_str()),
                v.get("modules_dir").and_then(|x| x.as_str()),
            ) else {
                continue;
            };
            let Ok(image) = std::fs::read(vmlinuz) else {
                continue;
            };
            // The modules directory is named by Debian's packaging, independently of the header.
            let named = std::path::Path::new(modules_dir)
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            assert_eq!(release(&image).expect(vmlinuz), named, "{vmlinuz}");
            checked += 1;
        }
        println!("checked {checked} downloaded images");
        if checked == 0 {
            println!(
                "skipped: no downloaded kernel under {} (run `cargo xtask kernel --kernel 6.12`)",
                kernels.display()
            );
        }
    }

    #[test]
    fn refuses_what_is_not_a_bzimage() {
        assert!(release(b"\x7fELF").is_err());
        let mut image = vec![0u8; 0x400];
        image[0x202..0x206].copy_from_slice(b"HdrS");
        // No version string pointer.
        assert!(release(&image).is_err());
        // A pointer past the end.
        image[0x20E..0x210].copy_from_slice(&0x300u16.to_le_bytes());
        assert!(release(&image).is_err());
        // A pointer to "6.1.0-9-cloud-amd64 (x)" at 0x200 + 0x100.
        image[0x20E..0x210].copy_from_slice(&0x100u16.to_le_bytes());
        image[0x300..0x317].copy_from_slice(b"6.1.0-9-cloud-amd64 (x)");
        assert_eq!(release(&image).unwrap(), "6.1.0-9-cloud-amd64");
        // Control bytes are no release.
        image[0x300] = b'\n';
        assert!(release(&image).is_err());
    }
}
