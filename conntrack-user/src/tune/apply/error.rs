//! Why apply or rollback stopped, and what state it left the host in.

use std::io;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ApplyError {
    #[error("ctscope {0} needs root: it writes kernel settings. Run it with sudo.")]
    NotRoot(&'static str),
    /// Refusals: nothing was changed.
    #[error("refused, nothing was changed: {0}")]
    Refused(String),
    /// Risks to the host that `--force` would accept: nothing was changed.
    #[error(
        "refused, nothing was changed ({} risk{}; `--force` applies anyway and prints each as a warning):{}",
        .0.len(),
        if .0.len() == 1 { "" } else { "s" },
        risk_lines(.0)
    )]
    Risky(Vec<String>),
    /// A step failed; what had been done was undone.
    #[error("{what}; every change made before it was undone: the host is as it was")]
    RolledBack { what: String },
    /// A step failed and undoing failed too: the journal says what to do.
    #[error(
        "{what}; undoing it also failed ({undo}): the previous state is kept in {journal}, run `ctscope rollback`"
    )]
    Stuck {
        what: String,
        undo: String,
        journal: String,
    },
    #[error("{0}")]
    Io(String),
}

impl ApplyError {
    #[expect(
        clippy::needless_pass_by_value,
        reason = "called as `map_err(|e| ApplyError::io(what, e))`, which owns the error"
    )]
    pub(super) fn io(what: impl std::fmt::Display, e: io::Error) -> ApplyError {
        ApplyError::Io(format!("{what}: {e}"))
    }
}

/// The risks, one per line, for `ApplyError::Risky`'s message.
fn risk_lines(risks: &[String]) -> String {
    use std::fmt::Write as _;
    risks.iter().fold(String::new(), |mut s, r| {
        // Writing into a String cannot fail.
        let _ = write!(s, "\n  - {r}");
        s
    })
}
