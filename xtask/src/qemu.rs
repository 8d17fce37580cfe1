//! Booting a kernel + initramfs under qemu (KVM or TCG, see `accel`), with the console streamed
//! live and logged.

use crate::accel::Accel;
use anyhow::{Context, Result, bail};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Console lines kept for error messages.
const TAIL_LINES: usize = 40;
/// After the result's END marker appears, how long poweroff may take before qemu is killed.
const POWEROFF_GRACE: Duration = Duration::from_secs(20);

pub(crate) struct Boot<'a> {
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    /// File behind the second serial port (ttyS1): the machine-readable result.
    pub result_file: &'a Path,
    /// Copy of everything the console printed.
    pub console_log: &'a Path,
    pub timeout: Duration,
    /// Echo the console to our stdout as it arrives.
    pub echo: bool,
    /// Guest RAM.
    pub memory_mib: u32,
    /// Appended to the kernel command line.
    pub kernel_args: &'a [String],
    /// TCG with instruction counting (see `ctscope_lab::scenario::Vm::deterministic`).
    pub deterministic: bool,
}

pub(crate) struct Outcome {
    pub wall: Duration,
    /// From qemu's start to the `LAB-INIT` line of /init.
    pub boot: Option<Duration>,
    pub timed_out: bool,
    /// `LAB-AGENT-EXIT=<rc>` as printed by /init.
    pub agent_exit: Option<i64>,
    pub tail: Vec<String>,
    /// The accelerator the VM ran under.
    pub accel: Accel,
}

/// What the console reader learns while the VM runs.
#[derive(Default)]
struct Console {
    tail: VecDeque<String>,
    partial: Vec<u8>,
    boot: Option<Duration>,
    agent_exit: Option<i64>,
}

impl Console {
    fn feed(&mut self, bytes: &[u8], started: Instant) {
        for &b in bytes {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.partial)
                    .trim_end_matches('\r')
                    .to_owned();
                self.partial.clear();
                self.line(&line, started);
            } else {
                self.partial.push(b);
            }
        }
    }

    fn line(&mut self, line: &str, started: Instant) {
        // Error messages quote these lines: no terminal escapes in them.
        let cleaned = EscapeFilter::new().filter(line.as_bytes());
        let line = String::from_utf8_lossy(&cleaned)
            .trim_matches(|c| c == '\r' || c == '\n')
            .to_owned();
        if self.boot.is_none() && line.contains("LAB-INIT:") {
            self.boot = Some(started.elapsed());
        }
        if let Some(rc) = line.trim().strip_prefix("LAB-AGENT-EXIT=") {
            self.agent_exit = rc.trim().parse().ok();
        }
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }
}

/// qemu's CPU arguments for a deterministic boot (the bench's method, BENCHMARKS.md).
pub(crate) const DETERMINISTIC_ARGS: [&str; 10] = [
    "-accel",
    "tcg,thread=single",
    "-cpu",
    "max",
    "-icount",
    "shift=0,sleep=off",
    "-rtc",
    "clock=vm",
    "-smp",
    "1",
];

pub(crate) fn command(boot: &Boot, accel: Accel) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    // KVM only where a probe boot proved it works: on nested machines a KVM guest hangs.
    if boot.deterministic && accel == Accel::Tcg {
        // Guest time is a count of guest instructions (1 ns each, shift=0), the guest never
        // sleeps in host time (sleep=off), its RTC follows that clock, one vCPU on one host
        // thread: the same workload takes the same guest time whatever the host is doing.
        c.args(DETERMINISTIC_ARGS);
    } else {
        c.args(accel.qemu_args()).args(["-smp", "2"]);
    }
    c.arg("-m")
        .arg(boot.memory_mib.to_string())
        .args(["-nographic", "-no-reboot"])
        // No network device: every address in the VM is its own (no user-mode NIC to set up).
        .args(["-nic", "none"])
        .args(["-serial", "mon:stdio"])
        .arg("-serial")
        .arg(format!("file:{}", boot.result_file.display()))
        .arg("-kernel")
        .arg(boot.vmlinuz)
        .arg("-initrd")
        .arg(boot.initrd)
        // The guest keeps its default clocksource (HPET: it finds the emulated TSCs
        // unsynchronized). `tsc=reliable` was tried: the kernel then enables its stable
        // sched_clock by patching code at boot, and one boot in about twenty died of an int3
        // in sched_clock_cpu under TCG, which is worse for a CI lab than slower timestamps.
        // Code patched while another vCPU runs it is what TCG handles worst: the bench saw one
        // run in about sixty where attaching BPF trampolines during traffic left a vCPU stuck
        // in the kernel (a soft lockup for the rest of the 600 s timeout). So a soft lockup
        // panics (the run is then tried again after seconds, as any kernel that died), and
        // loglevel 5 puts the lockup's registers and stack on the console, for the record.
        .arg("-append")
        .arg(
            ["console=ttyS0 panic=-1 quiet loglevel=5 softlockup_panic=1"]
                .into_iter()
                .chain(boot.kernel_args.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join(" "),
        );
    c
}

fn result_complete(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| ctscope_lab::framing::extract(&t).map(|_| ()))
        .is_some()
}

pub(crate) fn run(boot: &Boot) -> Result<Outcome> {
    if boot.result_file.exists() {
        std::fs::remove_file(boot.result_file)
            .with_context(|| format!("cannot remove {}", boot.result_file.display()))?;
    }
    let mut log = std::fs::File::create(boot.console_log)
        .with_context(|| format!("cannot create {}", boot.console_log.display()))?;

    let accel = crate::accel::for_boot(boot.vmlinuz)?;
    let mut cmd = command(boot, accel);
    // stdin is not the user's terminal: qemu would put it in raw mode and take Ctrl-C for itself.
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .context("cannot start qemu-system-x86_64 (run `cargo xtask setup`)")?;

    let console = Arc::new(Mutex::new(Console::default()));
    let mut stdout = child.stdout.take().context("qemu has no stdout")?;
    let stderr = child.stderr.take().context("qemu has no stderr")?;
    let echo = boot.echo;
    let reader_console = Arc::clone(&console);
    let reader = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = [0u8; 8192];
        let mut term = std::io::stdout();
        let mut firmware_filter = EscapeFilter::new();
        loop {
            let n = stdout.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            log.write_all(&buf[..n])?;
            if echo {
                // Unbuffered: the user sees ctscope's lines as they happen. The firmware's
                // terminal escapes (a full reset that clears the user's screen) are dropped.
                let shown = firmware_filter.filter(&buf[..n]);
                term.write_all(&shown)?;
                term.flush()?;
            }
            if let Ok(mut c) = reader_console.lock() {
                c.feed(&buf[..n], started);
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let mut stderr = stderr;
        let _ = stderr.read_to_string(&mut text);
        text
    });

    let (timed_out, _status) = supervise(&mut child, boot, started)?;
    let wall = started.elapsed();
    match reader.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("warning: console stream: {e}"),
        Err(_) => eprintln!("warning: console reader panicked"),
    }
    let qemu_stderr = err_reader.join().unwrap_or_default();
    if !qemu_stderr.trim().is_empty() {
        eprintln!("qemu: {}", qemu_stderr.trim());
    }

    let console = console
        .lock()
        .map_err(|_| anyhow::anyhow!("console state poisoned"))?;
    let mut tail: Vec<String> = console.tail.iter().cloned().collect();
    if !console.partial.is_empty() {
        tail.push(String::from_utf8_lossy(&console.partial).into_owned());
    }
    Ok(Outcome {
        wall,
        boot: console.boot,
        timed_out,
        agent_exit: console.agent_exit,
        tail,
        accel,
    })
}

/// Waits for qemu, killing it at the timeout or when it lingers after the result is complete.
fn supervise(
    child: &mut Child,
    boot: &Boot,
    started: Instant,
) -> Result<(bool, std::process::ExitStatus)> {
    let mut result_seen: Option<Instant> = None;
    loop {
        if let Some(status) = child.try_wait().context("waiting for qemu")? {
            return Ok((false, status));
        }
        if started.elapsed() > boot.timeout {
            eprintln!(
                "\nxtask: VM timed out after {} s: killing qemu",
                boot.timeout.as_secs()
            );
            return kill(child).map(|s| (true, s));
        }
        match result_seen {
            None if result_complete(boot.result_file) => result_seen = Some(Instant::now()),
            Some(t) if t.elapsed() > POWEROFF_GRACE => {
                eprintln!("\nxtask: result received but the VM did not power off: killing qemu");
                return kill(child).map(|s| (false, s));
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn kill(child: &mut Child) -> Result<std::process::ExitStatus> {
    child.kill().context("cannot kill qemu")?;
    child.wait().context("waiting for killed qemu")
}

/// Checks that qemu is installed before any expensive preparation.
pub(crate) fn ensure_available() -> Result<PathBuf> {
    crate::initramfs::host_program("qemu-system-x86_64")
        .or_else(|_| bail!("qemu-system-x86_64 not found: run `cargo xtask setup`"))
}

/// Removes terminal escape sequences (`ESC c`, `ESC [ ... final`) from a byte stream, across
/// chunk boundaries. SeaBIOS sends them to the serial console; on the user's terminal `ESC c`
/// is a full reset that wipes the build output above.
struct EscapeFilter {
    state: EscState,
    /// Whether the last byte let through ended a line.
    at_line_start: bool,
}

#[derive(Default, Clone, Copy, PartialEq)]
enum EscState {
    #[default]
    Text,
    Escape,
    Csi,
}

impl EscapeFilter {
    /// xtask's own output before the VM ends with a newline.
    fn new() -> Self {
        EscapeFilter {
            state: EscState::Text,
            at_line_start: true,
        }
    }

    fn filter(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len());
        for &b in bytes {
            self.state = match (self.state, b) {
                (EscState::Text, 0x1b) => EscState::Escape,
                (EscState::Text, _) => {
                    out.push(b);
                    self.at_line_start = b == b'\n';
                    EscState::Text
                }
                (EscState::Escape, b'[') => EscState::Csi,
                // A reset (the screen is cleared): keep what follows on a line of its own.
                (EscState::Escape, b'c') => {
                    if !self.at_line_start {
                        out.extend_from_slice(b"\r\n");
                        self.at_line_start = true;
                    }
                    EscState::Text
                }
                // A two-byte sequence such as `ESC c`.
                (EscState::Escape, _) => EscState::Text,
                // Parameters and intermediates continue a CSI; a byte in 0x40..=0x7e ends it.
                (EscState::Csi, 0x40..=0x7e) => EscState::Text,
                (EscState::Csi, _) => EscState::Csi,
            };
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::{Accel, Boot, Duration, EscapeFilter, command};

    #[test]
    fn strips_firmware_escapes_across_chunks() {
        let mut f = EscapeFilter::new();
        let mut out = f.filter(b"\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS\r\nROM..\x1bc\x1b[");
        out.extend(f.filter(b"2JLAB-INIT: kernel 6.1\n"));
        assert_eq!(out, b"SeaBIOS\r\nROM..\r\nLAB-INIT: kernel 6.1\n");
    }

    #[test]
    fn only_a_deterministic_tcg_boot_counts_instructions() {
        let dir = std::path::Path::new("/nonexistent");
        let boot = |deterministic| Boot {
            vmlinuz: dir,
            initrd: dir,
            result_file: dir,
            console_log: dir,
            timeout: Duration::from_secs(1),
            echo: false,
            memory_mib: 256,
            kernel_args: &[],
            deterministic,
        };
        let args = |b: &Boot, a: Accel| -> Vec<String> {
            command(b, a)
                .get_args()
                .map(|s| s.to_string_lossy().into_owned())
                .collect()
        };
        let icount = args(&boot(true), Accel::Tcg);
        assert!(
            icount
                .windows(2)
                .any(|w| w == ["-icount", "shift=0,sleep=off"])
        );
        assert!(icount.windows(2).any(|w| w == ["-smp", "1"]));
        for plain in [
            args(&boot(false), Accel::Tcg),
            args(&boot(true), Accel::Kvm),
        ] {
            assert!(!plain.iter().any(|a| a == "-icount"), "{plain:?}");
            assert!(plain.windows(2).any(|w| w == ["-smp", "2"]), "{plain:?}");
        }
    }
}
