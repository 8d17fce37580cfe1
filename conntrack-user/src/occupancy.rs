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
    namespaces::{self, Netns},
    procfs,
    report::{NetnsPeak, Occupancy},
};

/// Namespaces are looked for again every this many samples (new containers).
const REDISCOVER_EVERY: u64 = 10;

pub struct Sampler {
    started: Instant,
    interval_s: f64,
    namespaces: Vec<Netns>,
    samples: u64,
    /// (seconds since start, total) for the growth fit.
    series: Vec<(f64, u64)>,
    first: Option<u64>,
    last: Option<u64>,
    peak: Option<(u64, f64)>,
    per_netns: BTreeMap<u64, (String, u64)>,
}

impl Sampler {
    pub fn new(interval_s: f64) -> Sampler {
        Sampler {
            started: Instant::now(),
            interval_s,
            namespaces: namespaces::discover(),
            samples: 0,
            series: Vec::new(),
            first: None,
            last: None,
            peak: None,
            per_netns: BTreeMap::new(),
        }
    }

    /// Reads every namespace's count once. Unreadable namespaces (gone, or no
    /// conntrack there) are skipped for this sample.
    pub fn sample(&mut self) {
        if self.samples > 0 && self.samples.is_multiple_of(REDISCOVER_EVERY) {
            self.namespaces = namespaces::discover();
        }
        self.samples += 1;
        let mut total = 0u64;
        let mut any = false;
        for ns in &self.namespaces {
            let Ok(Ok(count)) = namespaces::visit(ns, || procfs::sysctl("nf_conntrack_count"))
            else {
                continue;
            };
            any = true;
            total += count;
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
        // The series is for a straight-line fit: one point per sample, a few
        // bytes each; a day of 1 s samples is about 1.4 MiB.
        self.series.push((at, total));
        self.first.get_or_insert(total);
        self.last = Some(total);
        if self.peak.is_none_or(|(p, _)| total > p) {
            self.peak = Some((total, at));
        }
    }

    pub fn report(&self) -> Occupancy {
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
            growth_per_hour: slope(&self.series).map(|s| (s * 3600.0).round()),
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

/// Least-squares slope of `y` over `t` (entries per second); None with fewer
/// than 3 points or no spread in time.
pub fn slope(series: &[(f64, u64)]) -> Option<f64> {
    if series.len() < 3 {
        return None;
    }
    let n = series.len() as f64;
    let mt = series.iter().map(|(t, _)| t).sum::<f64>() / n;
    let my = series.iter().map(|(_, y)| *y as f64).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (t, y) in series {
        num += (t - mt) * (*y as f64 - my);
        den += (t - mt) * (t - mt);
    }
    (den > 0.0).then(|| num / den)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line_and_of_noise() {
        let line: Vec<(f64, u64)> = (0..10).map(|i| (i as f64, 100 + 5 * i)).collect();
        assert!((slope(&line).expect("slope") - 5.0).abs() < 1e-9);
        let flat: Vec<(f64, u64)> = (0..10).map(|i| (i as f64, 7)).collect();
        assert_eq!(slope(&flat), Some(0.0));
        assert_eq!(slope(&line[..2]), None);
        assert_eq!(slope(&[(1.0, 1), (1.0, 5), (1.0, 9)]), None);
    }

    #[test]
    fn samples_this_host() {
        // Real namespaces, real counts: without root only ours may be readable.
        let mut s = Sampler::new(1.0);
        s.sample();
        s.sample();
        let r = s.report();
        assert_eq!(r.samples, 2);
        if crate::kernel::is_root() && std::path::Path::new("/proc/sys/net/netfilter").exists() {
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
