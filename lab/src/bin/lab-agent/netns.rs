//! Reading and writing files of another network namespace without leaving our own: a helper
//! thread `setns()`es itself into the namespace. Only that thread's view changes, so it must use
//! `/proc/thread-self/net/...` (not `/proc/self/net` or `/proc/net`, which follow the main
//! thread); `/proc/sys/net/...` follows the calling thread already.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};

/// A namespace the lab looks at: the host's (the agent's own) or a named one (`ip netns add`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Netns {
    Host,
    Named(String),
}

impl Netns {
    /// The name in the result JSON.
    pub(crate) fn label(&self) -> &str {
        match self {
            Netns::Host => "host",
            Netns::Named(n) => n,
        }
    }

    fn path(&self) -> PathBuf {
        match self {
            Netns::Host => PathBuf::from("/proc/self/ns/net"),
            // iproute2 keeps named namespaces in /run/netns (Debian) or /var/run/netns (its
            // upstream default, the same place where /var/run links to /run).
            Netns::Named(n) => {
                let run = PathBuf::from(format!("/run/netns/{n}"));
                let var_run = PathBuf::from(format!("/var/run/netns/{n}"));
                if !run.exists() && var_run.exists() {
                    var_run
                } else {
                    run
                }
            }
        }
    }

    /// The namespace's inode number (the `net->ns.inum` ctscope may report).
    pub(crate) fn inode(&self) -> Result<u64> {
        let path = self.path();
        Ok(std::fs::metadata(&path)
            .with_context(|| format!("stat {}", path.display()))?
            .ino())
    }

    /// Runs `f` on a fresh thread that lives in this namespace, and returns its result.
    pub(crate) fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        let target = match self {
            Netns::Host => None,
            Netns::Named(_) => Some(self.path()),
        };
        let label = self.label().to_string();
        let handle = std::thread::Builder::new()
            .name(format!("netns-{label}"))
            .spawn(move || -> Result<T> {
                if let Some(path) = target {
                    let file =
                        File::open(&path).with_context(|| format!("open {}", path.display()))?;
                    // SAFETY: setns() only reads the descriptor, which `file` keeps open for the
                    // call; CLONE_NEWNET moves just this thread into that network namespace.
                    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    if rc != 0 {
                        bail!(
                            "setns({}) failed: {}",
                            path.display(),
                            std::io::Error::last_os_error()
                        );
                    }
                }
                f()
            })
            .context("spawning a namespace thread")?;
        handle
            .join()
            .map_err(|_| anyhow!("the thread for namespace {label} panicked"))?
    }
}
