//! The run interval by interval (the report's `timeline`): the table's count, inserts and
//! drops by reason, in constant memory over a run of any length. When [`POINTS_MAX`] points
//! are kept, neighbours are merged in pairs and each later point covers twice as many
//! intervals as before.

use conntrack_common::Counter;

use super::engine::Tick;
use crate::report::{Drops, TimelinePoint};

/// Points kept at most: even, so that a merge pairs every point.
pub(crate) const POINTS_MAX: usize = 512;
const _: () = assert!(POINTS_MAX.is_multiple_of(2));

fn add(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    Some(a?.saturating_add(b?))
}

fn merge(a: &TimelinePoint, b: &TimelinePoint) -> TimelinePoint {
    TimelinePoint {
        t_s: b.t_s,
        count: b.count,
        inserts: add(a.inserts, b.inserts),
        drops: Drops {
            table_full: add(a.drops.table_full, b.drops.table_full),
            chain_too_long: add(a.drops.chain_too_long, b.drops.chain_too_long),
            clash: add(a.drops.clash, b.drops.clash),
            other: add(a.drops.other, b.drops.other),
            alloc_failed: add(a.drops.alloc_failed, b.drops.alloc_failed),
        },
        kernel_drop: add(a.kernel_drop, b.kernel_drop),
    }
}

/// One interval's point: what happened between the tick's two samples, at `t_s` seconds
/// from the start.
pub(crate) fn point(t: &Tick, t_s: f64) -> TimelinePoint {
    let stat = t.stat_delta();
    let kernel = |col: &str| stat.as_ref().map(|d| d.get(col));
    let (inserts, drops) = match (&t.now.snap, &t.prev.snap) {
        (Some(a), Some(b)) => {
            let d = a.since(b);
            let c = |k| d.counter(k);
            (
                Some(c(Counter::Inserts)),
                Drops {
                    table_full: Some(c(Counter::TableFull)),
                    chain_too_long: Some(c(Counter::DropChainTooLong)),
                    clash: Some(c(Counter::DropClash)),
                    other: Some(c(Counter::DropOther).saturating_add(c(Counter::DropDying))),
                    alloc_failed: Some(c(Counter::AllocFailedOther)),
                },
            )
        }
        // procfs: the kernel counts chain-too-long refusals by themselves; its `drop` mixes
        // table-full and clash, so it is kept apart (kernel_drop), not as a reason.
        _ => (
            None,
            Drops {
                chain_too_long: kernel("chaintoolong"),
                ..Drops::default()
            },
        ),
    };
    TimelinePoint {
        t_s: (t_s * 1000.0).round() / 1000.0,
        count: t.table.count,
        inserts,
        drops,
        kernel_drop: kernel("drop"),
    }
}

/// The points so far.
#[derive(Debug, Default)]
pub(crate) struct Timeline {
    points: Vec<TimelinePoint>,
    /// Intervals per point now (a power of two).
    stride: u32,
    /// Intervals merged into the point being built.
    pending: Option<(TimelinePoint, u32)>,
}

impl Timeline {
    pub(crate) fn push(&mut self, p: TimelinePoint) {
        let stride = self.stride.max(1);
        let (built, n) = match self.pending.take() {
            Some((acc, n)) => (merge(&acc, &p), n + 1),
            None => (p, 1),
        };
        if n < stride {
            self.pending = Some((built, n));
            return;
        }
        if self.points.capacity() < POINTS_MAX {
            // One allocation for the whole run: a merge works in place, and no
            // push after it reallocates (a soak saw each merge's new vector
            // leave about 90 KiB of heap behind).
            self.points
                .reserve_exact(POINTS_MAX.saturating_sub(self.points.len()));
        }
        if self.points.len() == POINTS_MAX {
            let len = self.points.len();
            for i in 0..len / 2 {
                let pair = merge(&self.points[2 * i], &self.points[2 * i + 1]);
                self.points[i] = pair;
            }
            self.points.truncate(len / 2);
            self.stride = stride * 2;
        }
        self.points.push(built);
    }

    /// Every point, the one being built included.
    pub(crate) fn points(&self) -> Vec<TimelinePoint> {
        let mut out = self.points.clone();
        out.extend(self.pending.as_ref().map(|(p, _)| p.clone()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(t: f64, inserts: u64) -> TimelinePoint {
        TimelinePoint {
            t_s: t,
            count: Some(t as u64),
            inserts: Some(inserts),
            drops: Drops {
                table_full: Some(1),
                ..Drops::default()
            },
            kernel_drop: None,
        }
    }

    #[test]
    fn the_points_never_move_once_allocated() {
        let mut tl = Timeline::default();
        tl.push(p(1.0, 1));
        let at = tl.points.as_ptr();
        for i in 2..=5_000u64 {
            tl.push(p(i as f64, 1));
        }
        assert_eq!(tl.points.as_ptr(), at, "reallocated");
        assert_eq!(tl.points.capacity(), POINTS_MAX);
    }

    #[test]
    fn a_long_run_keeps_its_totals_in_bounded_points() {
        let mut tl = Timeline::default();
        let n = 10_000u64;
        for i in 1..=n {
            tl.push(p(i as f64, 3));
            assert!(tl.points().len() <= POINTS_MAX + 1, "after {i}");
        }
        let pts = tl.points();
        let inserts: u64 = pts.iter().filter_map(|p| p.inserts).sum();
        let full: u64 = pts.iter().filter_map(|p| p.drops.table_full).sum();
        assert_eq!(inserts, 3 * n);
        assert_eq!(full, n);
        // Unknown stays unknown through merges; the last point ends at the last interval.
        assert!(pts.iter().all(|p| p.drops.clash.is_none()));
        assert_eq!(pts.last().map(|p| p.t_s), Some(n as f64));
        assert_eq!(pts.last().and_then(|p| p.count), Some(n));
        // Times only grow.
        assert!(pts.windows(2).all(|w| w[0].t_s < w[1].t_s));
    }
}
