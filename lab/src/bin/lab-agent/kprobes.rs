//! Counting conntrack probes in the kernel's own lists: the proof that ctscope detaches every
//! probe when it exits. Two kinds:
//!
//! - kprobes and kretprobes, in `/sys/kernel/debug/kprobes/list`, one line each, e.g.
//!   `ffffffffc0a1b2c0  r  __nf_conntrack_hash_insert+0x0  [nf_conntrack]  [FTRACE]`;
//! - fentry/fexit programs, whose BPF trampoline the function's ftrace site calls directly: in
//!   tracefs `enabled_functions` the function's line is followed by `\tdirect-->...`
//!   (kernel/trace/ftrace.c `t_show`, v6.1).
//!
//! Only lines naming a conntrack function (or the nf_conntrack module) are counted, so that a
//! probe someone else registered cannot make the count look like ctscope's.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The kernel's list of registered kprobes (debugfs).
pub(crate) const LIST: &str = "/sys/kernel/debug/kprobes/list";
/// The functions with ftrace callbacks or direct calls (tracefs under debugfs).
pub(crate) const FUNCTIONS: &str = "/sys/kernel/debug/tracing/enabled_functions";
/// Where debugfs is mounted; /init mounts it when the directory exists.
const DEBUGFS: &str = "/sys/kernel/debug";
/// A line mentioning any of these is a conntrack probe: the module name and the function names
/// ctscope attaches to (`__nf_conntrack_*`, `nf_ct_resolve_clash`, `early_drop`).
const CONNTRACK_MARKERS: &[&str] = &["nf_conntrack", "nf_ct_", "early_drop"];
/// How long the count may take to reach 0 after ctscope has exited. Closing a probe's perf
/// event unregisters it at once, but a BPF link's release can be deferred to a kernel worker.
/// A probe that was really left behind never goes, so waiting cannot hide one.
pub(crate) const DETACH_GRACE: Duration = Duration::from_secs(5);

/// The number of conntrack probes in the text of [`LIST`].
pub(crate) fn count_conntrack(list: &str) -> u64 {
    let n = list
        .lines()
        .filter(|l| CONNTRACK_MARKERS.iter().any(|m| l.contains(m)))
        .count();
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// The number of conntrack functions with a direct call (a BPF trampoline) in the text of
/// [`FUNCTIONS`]: a `direct-->` line after the function's own.
pub(crate) fn count_trampolines(functions: &str) -> u64 {
    let mut n = 0u64;
    let mut current_is_conntrack = false;
    for l in functions.lines() {
        if l.starts_with(char::is_whitespace) {
            if current_is_conntrack && l.trim_start().starts_with("direct-->") {
                n = n.saturating_add(1);
            }
        } else {
            let name = l.split_whitespace().next().unwrap_or("");
            current_is_conntrack = CONNTRACK_MARKERS.iter().any(|m| name.contains(m));
        }
    }
    n
}

/// Reads [`LIST`] and [`FUNCTIONS`] (mounting debugfs first if needed) and counts their
/// conntrack probes: kprobes, and fentry/fexit trampolines. A kernel without tracefs there
/// has no trampolines to show (and ctscope then uses kprobes): only the kprobes count.
pub(crate) fn count() -> Result<u64> {
    ensure_debugfs()?;
    let text = std::fs::read_to_string(LIST).with_context(|| format!("read {LIST}"))?;
    let direct = match std::fs::read_to_string(FUNCTIONS) {
        Ok(t) => count_trampolines(&t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e).with_context(|| format!("read {FUNCTIONS}")),
    };
    Ok(count_conntrack(&text).saturating_add(direct))
}

/// [`count`], repeated until it reaches 0 or [`DETACH_GRACE`] has passed. Returns the last count
/// and how long it took.
pub(crate) fn count_after_exit() -> Result<(u64, Duration)> {
    let start = Instant::now();
    loop {
        let n = count()?;
        if n == 0 || start.elapsed() >= DETACH_GRACE {
            return Ok((n, start.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Mounts debugfs on [`DEBUGFS`] unless it is mounted there already.
fn ensure_debugfs() -> Result<()> {
    if is_debugfs_mounted()? {
        return Ok(());
    }
    println!("lab: debugfs is not mounted on {DEBUGFS}: mounting it");
    // SAFETY: the three strings are NUL-terminated literals that live for the whole program;
    // no mount data is passed (null is allowed).
    let rc = unsafe {
        libc::mount(
            c"debugfs".as_ptr(),
            c"/sys/kernel/debug".as_ptr(),
            c"debugfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        // EBUSY: someone mounted it between the look and the mount, which is what we wanted.
        if err.raw_os_error() != Some(libc::EBUSY) {
            bail!("mount -t debugfs debugfs {DEBUGFS}: {err}");
        }
    }
    Ok(())
}

fn is_debugfs_mounted() -> Result<bool> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").context("read /proc/self/mounts")?;
    Ok(mounts.lines().any(|l| {
        let mut fields = l.split_whitespace().skip(1);
        fields.next() == Some(DEBUGFS) && fields.next() == Some("debugfs")
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_conntrack_trampolines() {
        // As 6.1 prints enabled_functions: two conntrack functions with a trampoline (one
        // with a kprobe too), one kprobe only, and another subsystem's trampoline.
        let text = "\
__nf_conntrack_hash_insert (1)           D   
\tdirect-->bpf_trampoline_6442512345_0+0x0/0x1000
nf_ct_delete (2) R         D   \ttramp: ftrace_regs_caller+0x0/0x65 (kprobe_ftrace_handler+0x0/0x1b0)
\tdirect-->bpf_trampoline_6442512399_0+0x0/0x1000
early_drop (1) R             \ttramp: 0xffffffffc0a02000 (kprobe_ftrace_handler+0x0/0x1b0)
tcp_v4_connect (1)           D   
\tdirect-->bpf_trampoline_6442400000_0+0x0/0x1000
";
        assert_eq!(count_trampolines(text), 2);
        assert_eq!(count_trampolines(""), 0);
    }

    #[test]
    fn counts_only_conntrack_probes() {
        // As 6.1 prints it: ctscope's five targets (three with a return probe), plus probes of
        // other subsystems that must not count.
        let list = "\
ffffffffc06e1c40  k  __nf_conntrack_hash_insert+0x0  [nf_conntrack]  [FTRACE]
ffffffffc06e1c40  r  __nf_conntrack_hash_insert+0x0  [nf_conntrack]  [FTRACE]
ffffffffc06e3a10  r  __nf_conntrack_alloc+0x0  [nf_conntrack]  [FTRACE]
ffffffffc06e2f00  r  early_drop+0x0  [nf_conntrack]  [FTRACE]
ffffffffc06e5b20  k  __nf_conntrack_confirm+0x0  [nf_conntrack]  [FTRACE]
ffffffffc06e5b20  r  __nf_conntrack_confirm+0x0  [nf_conntrack]  [FTRACE]
ffffffffc06e4d30  r  nf_ct_resolve_clash+0x0  [nf_conntrack]  [FTRACE]
ffffffff8a2b1c40  k  tcp_v4_connect+0x0    [FTRACE]
ffffffff8a0c1230  r  do_sys_openat2+0x0    [DISABLED][FTRACE]
";
        assert_eq!(count_conntrack(list), 7);
        assert_eq!(count_conntrack(""), 0);
        // vmlinux BTF kernels with conntrack built in print no module name.
        assert_eq!(
            count_conntrack("ffffffff8a8e2f00  r  early_drop+0x0    [FTRACE]\n"),
            1
        );
    }
}
