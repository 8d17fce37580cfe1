//! Progress of long steps (kernel download, unpack, depmod, initramfs): on a terminal one line
//! that counts the seconds while the step runs, then its result; otherwise (CI logs) a plain
//! line when it starts and one when it ends, nothing in between.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the terminal line is redrawn.
const TICK: Duration = Duration::from_millis(250);

pub(crate) struct Step {
    label: String,
    started: Instant,
    ticker: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

/// Starts showing `label` (already escaped by the caller where it holds outside names).
pub(crate) fn step(label: impl Into<String>) -> Step {
    let label = label.into();
    let started = Instant::now();
    let ticker = if std::io::stdout().is_terminal() {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let shown = label.clone();
        // A thread that cannot start only costs the live seconds: the end line still comes.
        std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || {
                while !flag.load(Ordering::Acquire) {
                    let mut out = std::io::stdout().lock();
                    let _ = write!(
                        out,
                        "\r\x1b[K{shown} ... {:.0} s",
                        started.elapsed().as_secs_f64()
                    );
                    let _ = out.flush();
                    drop(out);
                    std::thread::sleep(TICK);
                }
            })
            .ok()
            .map(|h| (stop, h))
    } else {
        println!("{label} ...");
        None
    };
    Step {
        label,
        started,
        ticker,
    }
}

impl Step {
    /// Ends the step with `what` (e.g. "done", "13.6 MB"): one final line either way.
    pub(crate) fn finish(mut self, what: &str) {
        self.end(what);
    }

    fn end(&mut self, what: &str) {
        let elapsed = self.started.elapsed().as_secs_f64();
        match self.ticker.take() {
            Some((stop, handle)) => {
                stop.store(true, Ordering::Release);
                let _ = handle.join();
                println!("\r\x1b[K{}: {what} in {elapsed:.1} s", self.label);
            }
            None => println!("{}: {what} in {elapsed:.1} s", self.label),
        }
    }
}

impl Drop for Step {
    /// A step left by an error (`?`) still ends its line, so the error is printed on its own.
    fn drop(&mut self) {
        if self.ticker.is_some() {
            self.end("stopped");
        }
    }
}
