//! Lifetime histograms (hdrhistogram) from the `LIFE_EVENTS` ring buffer: one
//! event per finished entry, by L4 protocol and by how it ended.
//!
//! Histograms are allocated once, with bounds (1 µs .. 30 days, 3 significant
//! digits), so recording an event never allocates.

use std::collections::BTreeMap;

use conntrack_common::{LifeEvent, end};
use hdrhistogram::Histogram;

use crate::report::ProtoLifetimes;

/// Longest lifetime the histograms hold, µs (30 days; longer ones are clamped).
const MAX_US: u64 = 30 * 24 * 3600 * 1_000_000;
const PROTOCOLS: [&str; 4] = ["tcp", "udp", "icmp", "other"];

#[derive(thiserror::Error, Debug)]
#[error("creating a lifetime histogram: {0}")]
pub struct LifetimesError(#[from] hdrhistogram::CreationError);

pub struct Lifetimes {
    hist: [Histogram<u64>; 4],
    by_end: [[u64; end::NAMES.len()]; 4],
}

/// Index of an L4 protocol number in [`PROTOCOLS`].
fn proto_index(proto: u8) -> usize {
    match proto {
        6 => 0,
        17 | 136 => 1, // UDP, UDP-Lite
        1 | 58 => 2,   // ICMP, ICMPv6
        _ => 3,
    }
}

impl Lifetimes {
    pub fn new() -> Result<Lifetimes, LifetimesError> {
        let h = || Histogram::new_with_bounds(1, MAX_US, 3);
        Ok(Lifetimes {
            hist: [h()?, h()?, h()?, h()?],
            by_end: [[0; end::NAMES.len()]; 4],
        })
    }

    pub fn record(&mut self, e: &LifeEvent) {
        let p = proto_index(e.proto);
        let us = (e.lifetime_ns / 1_000).clamp(1, MAX_US);
        // In bounds by the clamp: recording cannot fail or allocate.
        let _ = self.hist[p].record(us);
        if let Some(n) = self.by_end[p].get_mut(e.end as usize) {
            *n += 1;
        }
    }

    /// Events recorded so far.
    pub fn len(&self) -> u64 {
        self.by_end.iter().flatten().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Per protocol with at least one entry: count, percentiles in ms, and
    /// the count per way of ending (every way listed, zeros included).
    pub fn report(&self) -> BTreeMap<String, ProtoLifetimes> {
        let ms = |us: u64| us as f64 / 1_000.0;
        PROTOCOLS
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.hist[*i].is_empty())
            .map(|(i, name)| {
                let h = &self.hist[i];
                let by_end = end::NAMES
                    .iter()
                    .zip(self.by_end[i])
                    .map(|(n, c)| (n.to_string(), c))
                    .collect();
                (
                    name.to_string(),
                    ProtoLifetimes {
                        count: h.len(),
                        p50_ms: ms(h.value_at_quantile(0.50)),
                        p99_ms: ms(h.value_at_quantile(0.99)),
                        max_ms: ms(h.max()),
                        by_end,
                    },
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(proto: u8, how: u8, ms: u64) -> LifeEvent {
        LifeEvent {
            lifetime_ns: ms * 1_000_000,
            proto,
            end: how,
            ..Default::default()
        }
    }

    #[test]
    fn counts_and_percentiles_per_protocol() {
        let mut l = Lifetimes::new().expect("histograms");
        for ms in 1..=100 {
            l.record(&ev(6, end::TCP_CLOSED, ms));
        }
        l.record(&ev(17, end::TIMEOUT, 30_000));
        l.record(&ev(17, end::UNCONFIRMED, 0));
        let r = l.report();
        let tcp = &r["tcp"];
        assert_eq!(tcp.count, 100);
        assert_eq!(tcp.by_end["tcp_closed"], 100);
        assert_eq!(tcp.by_end["timeout"], 0);
        // 3 significant digits: within 0.1% of the exact nearest rank.
        assert!((tcp.p50_ms - 50.0).abs() <= 0.05, "p50 {}", tcp.p50_ms);
        assert!((tcp.p99_ms - 99.0).abs() <= 0.1, "p99 {}", tcp.p99_ms);
        assert!((tcp.max_ms - 100.0).abs() <= 0.1, "max {}", tcp.max_ms);
        let udp = &r["udp"];
        assert_eq!((udp.count, udp.by_end["unconfirmed"]), (2, 1));
        assert!(!r.contains_key("icmp"));
        assert_eq!(l.len(), 102);
    }
}
