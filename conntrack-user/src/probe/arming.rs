//! When to run the attribution programs (`--attribution auto`, fentry mode).
//!
//! They fire for every new connection (the exits of `__nf_conntrack_alloc`
//! and `__nf_conntrack_confirm`, and `nf_conntrack_free`), about 0.7% of a
//! connection's kernel work on Debian 6.1 (the bench, BENCHMARKS.md), and tell
//! something only while connections are refused. So they are attached
//! while refusals are likely or happening and detached after a quiet
//! spell:
//!
//! - the kernel-side alerts (`ALERTS`): `early_drop()` called (a namespace is
//!   over `nf_conntrack_max`, before the refusal it may end in), a clash that
//!   failed (resolved clashes are routine: parallel DNS queries through a
//!   NAT), an
//!   insert into a chain of `CHAIN_ALERT` nodes (the kernel refuses from
//!   50), a death no probe saw. While attribution is off each one also
//!   wakes ctscope through a ring buffer, so that quiet costs nothing (a
//!   100 ms poll cost 0.2% of a core in the bench's guest);
//! - once per interval: the kernel's own refusal counters moved (`drop`,
//!   `insert_failed`, `chaintoolong`, `early_drop`), or the table of
//!   ctscope's namespace is at least 80% full (another namespace's table is
//!   not read every interval; its refusals show in the shared counters'
//!   alerts: `early_drop()` runs for any namespace).
//!
//! A death no probe saw is an alert too, but what it needs is
//! `nf_conntrack_free`, not attribution: the loader then keeps that program
//! attached for the rest of the run (`Probes::keep_free`).
//!
//! Refusals before the first alert are counted (by reason, exactly) but not
//! attributed to a source; the report says how many.

use std::time::{Duration, Instant};

/// How long attribution stays on after the last alert or pressure.
pub(crate) const HOLD: Duration = Duration::from_mins(1);

/// Occupancy (count / max) from which the table counts as near full.
pub(crate) const NEAR_FULL: f64 = 0.8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Arm,
    Disarm,
    Stay,
}

/// The decision's memory: the alerts last seen and the last reason to run.
#[derive(Debug, Clone)]
pub(crate) struct Arming {
    hold: Duration,
    last_alerts: Option<u64>,
    last_reason: Option<Instant>,
}

impl Arming {
    pub(crate) fn new(hold: Duration) -> Arming {
        Arming {
            hold,
            last_alerts: None,
            last_reason: None,
        }
    }

    /// One decision at `now`: `alerts` is the kernel's alert count (None if
    /// it could not be read), `pressure` what the last interval showed,
    /// `armed` whether the programs are attached.
    pub(crate) fn step(
        &mut self,
        now: Instant,
        alerts: Option<u64>,
        pressure: bool,
        armed: bool,
    ) -> Action {
        let alerted = match (alerts, self.last_alerts) {
            (Some(a), Some(b)) => a != b,
            // The first read is the baseline: alerts counted before the
            // run (the programs were attached a moment ago) say nothing.
            _ => false,
        };
        if let Some(a) = alerts {
            self.last_alerts = Some(a);
        }
        if alerted || pressure {
            self.last_reason = Some(now);
            return if armed { Action::Stay } else { Action::Arm };
        }
        let quiet = self
            .last_reason
            .is_none_or(|t| now.saturating_duration_since(t) >= self.hold);
        if armed && quiet {
            Action::Disarm
        } else {
            Action::Stay
        }
    }
}

/// Whether the kernel's own counters (one interval's deltas of the stat
/// file) or the table's occupancy say refusals are near.
pub(crate) fn pressure(
    kernel_delta: Option<&std::collections::BTreeMap<String, u64>>,
    count: Option<u64>,
    max: Option<u64>,
) -> bool {
    let moved = kernel_delta.is_some_and(|d| {
        ["drop", "insert_failed", "chaintoolong", "early_drop"]
            .iter()
            .any(|k| d.get(*k).copied().unwrap_or(0) > 0)
    });
    let near_full = match (count, max) {
        (Some(c), Some(m)) if m > 0 => c as f64 >= NEAR_FULL * m as f64,
        _ => false,
    };
    moved || near_full
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_arm_and_quiet_disarms_after_the_hold() {
        let t0 = Instant::now();
        let mut a = Arming::new(Duration::from_mins(1));
        // The first read is a baseline, even of a large count.
        assert_eq!(a.step(t0, Some(7), false, false), Action::Stay);
        assert_eq!(a.step(t0, Some(7), false, false), Action::Stay);
        // A new alert arms; while armed and alerted it stays.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(a.step(t1, Some(8), false, false), Action::Arm);
        assert_eq!(a.step(t1, Some(9), false, true), Action::Stay);
        // Quiet, but within the hold of the last alert.
        let t2 = t1 + Duration::from_secs(59);
        assert_eq!(a.step(t2, Some(9), false, true), Action::Stay);
        // Quiet for the whole hold: disarm.
        let t3 = t1 + Duration::from_mins(1);
        assert_eq!(a.step(t3, Some(9), false, true), Action::Disarm);
        assert_eq!(a.step(t3, Some(9), false, false), Action::Stay);
    }

    #[test]
    fn pressure_arms_and_an_unreadable_count_is_no_alert() {
        let t0 = Instant::now();
        let mut a = Arming::new(Duration::from_mins(1));
        assert_eq!(a.step(t0, None, false, false), Action::Stay);
        assert_eq!(a.step(t0, None, true, false), Action::Arm);
        // Reads that fail keep the last good count as the baseline.
        assert_eq!(a.step(t0, Some(3), false, true), Action::Stay);
        assert_eq!(a.step(t0, None, false, true), Action::Stay);
        assert_eq!(a.step(t0, Some(3), false, true), Action::Stay);
    }

    #[test]
    fn pressure_from_counters_and_occupancy() {
        let d = |k: &str, v: u64| std::collections::BTreeMap::from([(k.to_string(), v)]);
        assert!(pressure(Some(&d("insert_failed", 1)), None, None));
        assert!(pressure(Some(&d("drop", 2)), Some(1), Some(100)));
        // Resolved clashes refuse nothing.
        assert!(!pressure(Some(&d("clash_resolve", 2)), Some(1), Some(100)));
        assert!(!pressure(Some(&d("searched", 9)), Some(79), Some(100)));
        assert!(pressure(None, Some(80), Some(100)));
        assert!(!pressure(None, Some(80), Some(0)));
        assert!(!pressure(None, None, Some(100)));
    }
}
