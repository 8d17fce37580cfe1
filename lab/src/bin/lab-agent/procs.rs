//! Child processes of the lab (ctscope, the loadgen server and clients): output forwarding to the
//! console with a prefix, signals, and bounded waits.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ExitStatus};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The last lines of a stream, for error reports.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tail(Arc<Mutex<VecDeque<String>>>);

impl Tail {
    const LINES: usize = 30;

    fn push(&self, line: &str) {
        if let Ok(mut q) = self.0.lock() {
            if q.len() == Self::LINES {
                q.pop_front();
            }
            q.push_back(line.to_string());
        }
    }

    pub(crate) fn text(&self) -> String {
        self.0
            .lock()
            .map(|q| q.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }
}

/// Copies `reader` line by line to the console as `<prefix><line>`, keeping a [`Tail`] if given.
/// If `first` is given, the first line goes there instead of the console (a client's JSON
/// summary); at EOF without any line, `None` is sent, so the receiver never waits in vain.
pub(crate) fn forward<R: Read + Send + 'static>(
    reader: R,
    prefix: String,
    tail: Option<Tail>,
    first: Option<Sender<(String, Option<String>)>>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("fwd {}", prefix.trim()))
        .spawn(move || {
            let mut first = first;
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                if let Some(tx) = first.take() {
                    let _ = tx.send((prefix.clone(), Some(line)));
                    continue;
                }
                if let Some(t) = &tail {
                    t.push(&line);
                }
                println!("{prefix}{line}");
            }
            if let Some(tx) = first {
                let _ = tx.send((prefix, None));
            }
        })
}

/// Reads `reader` to its end on a thread of its own and drops what it reads (a child's output
/// that must be read, lest the child block on a full pipe, but not shown).
pub(crate) fn drain<R: Read + Send + 'static>(mut reader: R) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("drain".into())
        .spawn(move || {
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        })
}

/// Sends `sig` to `child`. Errors (it already exited) are ignored: the caller waits next.
pub(crate) fn signal(child: &Child, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    // SAFETY: kill() takes no pointers. `child` is our own child and has not been reaped (we
    // hold its `Child` and reap only through it), so the pid cannot belong to anyone else.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Waits up to `limit` for `child` to exit.
pub(crate) fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(_) => return None,
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `sig`, waits up to `grace`, then SIGKILLs and reaps. Returns the exit status if the
/// child exited by itself within the grace period.
pub(crate) fn stop(child: &mut Child, sig: libc::c_int, grace: Duration) -> Option<ExitStatus> {
    signal(child, sig);
    if let Some(status) = wait_timeout(child, grace) {
        return Some(status);
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// An exit status as a number: the code, or 128 + signal like a shell.
pub(crate) fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}
