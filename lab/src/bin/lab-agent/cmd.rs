//! Running the lab's tools (ip, nft, modprobe) and failing with their stderr.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The first of `candidates` that exists, else the bare `name` (looked up in PATH).
pub(crate) fn tool(candidates: &[&str], name: &str) -> String {
    candidates
        .iter()
        .find(|p| Path::new(p).exists())
        .map_or_else(|| name.to_string(), std::string::ToString::to_string)
}

/// Paths of the tools inside the initramfs (with fallbacks for a normal distro).
pub(crate) struct Tools {
    pub ip: String,
    pub nft: String,
    pub modprobe: String,
}

impl Tools {
    pub(crate) fn find() -> Tools {
        Tools {
            ip: tool(
                &["/sbin/ip", "/usr/sbin/ip", "/bin/ip", "/usr/bin/ip"],
                "ip",
            ),
            nft: tool(&["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"], "nft"),
            modprobe: tool(
                &["/sbin/modprobe", "/usr/sbin/modprobe", "/bin/modprobe"],
                "modprobe",
            ),
        }
    }
}

/// Runs `program args...`, waits, and fails with the command line, exit status and stderr
/// unless it exits 0. Returns stdout.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip <args>` split on whitespace (the lab's arguments never contain spaces).
pub(crate) fn ip(tools: &Tools, args: &str) -> Result<()> {
    let argv: Vec<&str> = args.split_whitespace().collect();
    run(&tools.ip, &argv).map(|_| ())
}
