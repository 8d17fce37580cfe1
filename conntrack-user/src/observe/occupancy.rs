//! How full the table got: every namespace's `nf_conntrack_count`, sampled at
//! each interval of an observe run.
//!
//! All namespaces share one hash table (its chains carry every namespace's
//! entries), while the kernel compares each namespace's own count with the
//! one global `nf_conntrack_max` (`__nf_conntrack_alloc`,
//! net/netfilter/nf_conntrack_core.c, v5.10..v6.18). The tuner needs both: the
//! total for buckets and memory, the largest namespace for max.

use std::{collections::BTreeMap, time::Instant};

use crate::{
    host::namespaces::{self, Netns},
    host::procfs,
    report::{NetnsPeak, Occupancy},
};

/// Namespaces are looked for again every this many samples (new containers).
const REDISCOVER_EVERY: u64 = 10;
/// Namespaces whose peak is kept at most (container churn over a long run);
/// past it the smallest peak makes room, and [`Sampler::dropped`] counts it.
pub(crate) const PER_NETNS_MAX: usize = 4096;

/// A running least-squares fit of `y` over `t` (Welford's co-moments): the
/// growth over a run of any length in constant memory, where a series of
/// every sample grew by 16 bytes a sample for good.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Fit {
    n: u64,
    mean_t: f64,
    mean_y: f64,
    m2_t: f64,
    c_ty: f64,
}

impl Fit {
    pub(crate) fn add(&mut self, t: f64, y: f64) {
        self.n += 1;
        let n = self.n as f64;
        let dt = t - self.mean_t;
        self.mean_t += dt / n;
        self.mean_y += (y - self.mean_y) / n;
        // With the updated mean_y and the old mean_t: the exact co-moment.
        self.m2_t += dt * (t - self.mean_t);
        self.c_ty += dt * (y - self.mean_y);
    }

    /// Entries per second; None with fewer than 3 points or no spread in time.
    pub(crate) fn slope(&self) -> Option<f64> {
        (self.n >= 3 && self.m2_t > 0.0).then(|| self.c_ty / self.m2_t)
    }
}

pub(crate) struct Sampler {
    started: Instant,
    interval_s: f64,
    namespaces: Vec<Netns>,
    samples: u64,
    /// (seconds since start, total), fitted as they come.
    fit: Fit,
    first: Option<u64>,
    last: Option<u64>,
    peak: Option<(u64, f64)>,
    per_netns: BTreeMap<u64, (String, u64)>,
    dropped: u64,
}

impl Sampler {
    pub(crate) fn new(interval_s: f64) -> Sampler {
        Sampler {
            started: Instant::now(),
            interval_s,
            namespaces: namespaces::discover(),
            samples: 0,
            fit: Fit::default(),
            first: None,
            last: None,
            peak: None,
            per_netns: BTreeMap::new(),
            dropped: 0,
        }
    }

    /// Reads every namespace's count once. Unreadable namespaces (gone, or no
    /// conntrack there) are skipped for this sample.
    pub(crate) fn sample(&mut self) {
        if self.samples > 0 && self.samples.is_multiple_of(REDISCOVER_EVERY) {
            self.namespaces = namespaces::discover();
        }
        self.samples += 1;
        let mut total = 0u64;
        let mut any = false;
        let counts =
            namespaces::visit_each(&self.namespaces, |_| procfs::sysctl("nf_conntrack_count"));
        for (ns, count) in self.namespaces.iter().zip(counts) {
            let Ok(Ok(count)) = count else {
                continue;
            };
            any = true;
            total = total.saturating_add(count);
            if !self.per_netns.contains_key(&ns.inode) && self.per_netns.len() >= PER_NETNS_MAX {
                self.dropped += 1;
                // Room for a namespace that is fuller than the emptiest kept.
                let smallest = self
                    .per_netns
                    .iter()
                    .min_by_key(|(_, (_, p))| *p)
                    .map(|(i, (_, p))| (*i, *p));
                match smallest {
                    Some((i, p)) if p < count => {
                        self.per_netns.remove(&i);
                    }
                    _ => continue,
                }
            }
            let e = self
                .per_netns
                .entry(ns.inode)
                .or_insert_with(|| (ns.name.clone(), 0));
            e.1 = e.1.max(count);
        }
        if !any {
            return;
        }
        let at = self.started.elapsed().as_secs_f64();
        self.fit.add(at, total as f64);
        self.first.get_or_insert(total);
        self.last = Some(total);
        if self.peak.is_none_or(|(p, _)| total > p) {
            self.peak = Some((total, at));
        }
    }

    /// Namespaces whose peak was not kept ([`PER_NETNS_MAX`] reached).
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }

    pub(crate) fn report(&self) -> Occupancy {
        let netns_peak = self
            .per_netns
            .iter()
            .max_by_key(|(_, (_, p))| *p)
            .map(|(i, (n, p))| (*i, n.clone(), *p));
        Occupancy {
            interval_s: self.interval_s,
            samples: self.samples,
            total_start: self.first,
            total_end: self.last,
            total_peak: self.peak.map(|(p, _)| p),
            total_peak_at_s: self.peak.map(|(_, t)| (t * 10.0).round() / 10.0),
            netns_peak: netns_peak.as_ref().map(|(_, _, p)| *p),
            netns_peak_name: netns_peak.map(|(_, n, _)| n),
            growth_per_hour: self.fit.slope().map(|s| (s * 3600.0).round()),
            per_netns: self
                .per_netns
                .iter()
                .map(|(inode, (name, peak))| NetnsPeak {
                    inode: *inode,
                    name: name.clone(),
                    peak: *peak,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Least-squares slope of `y` over `t` through the running fit.
    fn slope(series: &[(f64, u64)]) -> Option<f64> {
        let mut f = Fit::default();
        for (t, y) in series {
            f.add(*t, *y as f64);
        }
        f.slope()
    }

    #[test]
    fn slope_of_a_line_and_of_noise() {
        let line: Vec<(f64, u64)> = (0..10).map(|i| (i as f64, 100 + 5 * i)).collect();
        assert!((slope(&line).expect("slope") - 5.0).abs() < 1e-9);
        let flat: Vec<(f64, u64)> = (0..10).map(|i| (f64::from(i), 7)).collect();
        assert_eq!(slope(&flat), Some(0.0));
        assert_eq!(slope(&line[..2]), None);
        assert_eq!(slope(&[(1.0, 1), (1.0, 5), (1.0, 9)]), None);
        // A day of 1 s samples, a million entries, growing 3 an hour, with
        // noise: the running fit keeps its precision in constant memory.
        let day: Vec<(f64, u64)> = (0..86_400u64)
            .map(|i| (i as f64, 1_000_000 + i * 3 / 3600 + (i * 7919) % 5))
            .collect();
        let s = slope(&day).expect("slope") * 3600.0;
        assert!((s - 3.0).abs() < 0.01, "{s}");
    }

    #[test]
    fn samples_this_host() {
        // Real namespaces, real counts: without root only ours may be readable.
        let mut s = Sampler::new(1.0);
        s.sample();
        s.sample();
        let r = s.report();
        assert_eq!(r.samples, 2);
        if crate::host::kernel::is_root()
            && std::path::Path::new("/proc/sys/net/netfilter").exists()
        {
            let total = r.total_peak.expect("a readable namespace");
            assert!(r.netns_peak.expect("peak") <= total);
            assert_eq!(
                r.per_netns.iter().map(|p| p.peak).max(),
                r.netns_peak,
                "{r:?}"
            );
        }
    }
}
