//! Why loading or attaching failed, in words a person can act on: the
//! error chain, and the verifier's log cut to what matters.

use super::{Error, TracingError, object};

#[derive(Debug, Error)]
pub enum ProbeError {
    #[error(transparent)]
    NoObject(#[from] object::NoObject),
    #[error("loading the eBPF object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("{what}: {source}")]
    Program {
        /// The program, when one failed (not the object or a map).
        program: Option<&'static str>,
        what: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {what}: {source}")]
    Map {
        what: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("{what}: {source}")]
    Tracing {
        /// The program, when one failed.
        program: Option<&'static str>,
        what: String,
        #[source]
        source: TracingError,
    },
    #[error("interrupted by a signal while the kernel verified {0}: nothing attached")]
    Interrupted(&'static str),
}

/// Renders an error with its whole source chain, for one-line reasons. A
/// verifier log (thousands of lines for a complex program) is cut to what the
/// kernel concluded: its error message and statistics, with what the errno
/// means for a program load. The full log goes to the debug log.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = String::new();
    let mut cur = Some(e);
    while let Some(c) = cur {
        let t = match (
            c.downcast_ref::<ProbeError>(),
            c.downcast_ref::<aya::programs::ProgramError>(),
            c.downcast_ref::<TracingError>(),
        ) {
            // Its Display repeats the source's (the whole log): its own part only.
            (Some(ProbeError::Program { what, .. } | ProbeError::Tracing { what, .. }), _, _) => {
                what.clone()
            }
            (
                _,
                Some(aya::programs::ProgramError::LoadError {
                    io_error,
                    verifier_log,
                }),
                _,
            ) => {
                let log = verifier_log.to_string();
                log::debug!("verifier log:\n{log}");
                load_failure(io_error, &log)
            }
            (_, _, Some(TracingError::Load { source, log })) => {
                log::debug!("verifier log:\n{log}");
                load_failure(source, log)
            }
            _ => c.to_string(),
        };
        if !s.contains(&t) {
            if !s.is_empty() {
                s.push_str(": ");
            }
            s.push_str(&t);
        }
        if matches!(
            c.downcast_ref::<aya::programs::ProgramError>(),
            Some(aya::programs::ProgramError::LoadError { .. })
        ) || matches!(
            c.downcast_ref::<TracingError>(),
            Some(TracingError::Load { .. })
        ) {
            break;
        }
        cur = c.source();
    }
    crate::text::escape(&s, MAX_REASON)
}

/// Longest reason kept (a verifier message and its statistics fit).
pub(super) const MAX_REASON: usize = 1500;

/// One line on a failed `BPF_PROG_LOAD`: the errno, what it means there, and
/// the verifier's own conclusion.
pub(super) fn load_failure(io_error: &std::io::Error, log: &str) -> String {
    // Meanings from kernel/bpf/verifier.c and syscall.c (v7.3.4).
    let meaning = match io_error.raw_os_error() {
        Some(libc::EAGAIN) => {
            " (a signal was pending: do_check() stops verifying and returns -EAGAIN, which is why libbpf retries)"
        }
        Some(libc::E2BIG) => " (beyond the verifier's complexity limits)",
        Some(libc::EPERM) => {
            " (refused before the verifier ran: this kernel or its security policy does not permit this program type)"
        }
        Some(libc::EACCES) => " (the verifier rejected the program)",
        Some(libc::ENOSPC) => " (the verifier log did not fit)",
        _ => "",
    };
    let summary = verifier_summary(log);
    if summary.is_empty() {
        format!("the BPF_PROG_LOAD syscall returned {io_error}{meaning}")
    } else {
        format!(
            "the BPF_PROG_LOAD syscall returned {io_error}{meaning}; the verifier said: {summary}"
        )
    }
}

/// The verifier's conclusion in a log: the message lines after the last
/// instruction trace, and its `processed N insns` line; empty when the log
/// has neither (a load refused before verification, or interrupted).
pub fn verifier_summary(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    // A register dump (`R1=ctx() R10=fp0`, `R6_w=...`), not a message that
    // names a register (`R2 !read_ok`, `R1 invalid mem access 'scalar'`).
    let is_dump = |l: &str| {
        let Some(rest) = l.strip_prefix('R') else {
            return false;
        };
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        digits > 0 && {
            let after = &rest[digits..];
            after.starts_with('=') || after.starts_with("_w=") || after.starts_with("_rw=")
        }
    };
    let is_trace = |l: &str| {
        let digits = l.bytes().take_while(u8::is_ascii_digit).count();
        (digits > 0 && l[digits..].starts_with(':'))
            || l.starts_with(';')
            || is_dump(l)
            || l.starts_with("frame")
            || l.starts_with("caller")
            || l.starts_with("callee")
            || l.starts_with("returning from")
            || l.starts_with("to caller")
            || l.starts_with("from ")
    };
    let tail_start = lines.iter().rposition(|l| is_trace(l)).map_or(0, |i| i + 1);
    let mut kept: Vec<&str> = lines[tail_start..]
        .iter()
        .copied()
        .filter(|l| {
            !(l.starts_with("verification time")
                || l.starts_with("stack depth")
                || l.starts_with("subprog "))
        })
        .take(4)
        .collect();
    if kept.is_empty() {
        kept.extend(lines.iter().rev().find(|l| l.starts_with("processed ")));
    }
    kept.join("; ")
}
