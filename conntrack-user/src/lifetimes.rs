//! Lifetime histograms (hdrhistogram) from the `LIFE_EVENTS` ring buffer: one
//! event per finished entry, by L4 protocol and by how it ended.
//!
//! Histograms are allocated once, with bounds (1 µs .. 30 days, 3 significant
//! digits), so recording an event never allocates.

use std::collections::BTreeMap;

use conntrack_common::{LIFE_ASSURED, LifeEvent, end};
use hdrhistogram::Histogram;

use crate::report::{Expiry, ProtoLifetimes};

/// Longest lifetime the histograms hold, µs (30 days; longer ones are clamped).
const MAX_US: u64 = 30 * 24 * 3600 * 1_000_000;
const PROTOCOLS: [&str; 4] = ["tcp", "udp", "icmp", "other"];

#[derive(thiserror::Error, Debug)]
#[error("creating a lifetime histogram: {0}")]
pub struct LifetimesError(#[from] hdrhistogram::CreationError);

pub struct Lifetimes {
    hist: [Histogram<u64>; 4],
    by_end: [[u64; end::NAMES.len()]; 4],
    /// Lifetimes (ms) of entries that died by their timer, per timeout
    /// sysctl (short name): what the tuner reads to tell entries that waited
    /// out a long timeout from flows that were still talking.
    /// One per [`TIMEOUT_CLASSES`] entry, in its order.
    expired: Vec<Histogram<u64>>,
}

/// The timeout sysctls (short names, `nf_conntrack_` left out) an expiry is
/// charged to: TCP by its state at deletion (`enum tcp_conntrack`, 1..9),
/// UDP by whether it was ASSURED (a stream), ICMP, anything else.
/// net/netfilter/nf_conntrack_proto_{tcp,udp,icmp,generic}.c, v5.10..v6.12.
pub const TIMEOUT_CLASSES: [&str; 13] = [
    "tcp_timeout_syn_sent",
    "tcp_timeout_syn_recv",
    "tcp_timeout_established",
    "tcp_timeout_fin_wait",
    "tcp_timeout_close_wait",
    "tcp_timeout_last_ack",
    "tcp_timeout_time_wait",
    "tcp_timeout_close",
    "udp_timeout",
    "udp_timeout_stream",
    "icmp_timeout",
    "icmpv6_timeout",
    "generic_timeout",
];
/// Longest expired lifetime kept, ms (30 days).
const MAX_MS: u64 = 30 * 24 * 3600 * 1000;

/// The class of an entry that died by its timer, if it did.
fn timeout_class(e: &LifeEvent) -> Option<usize> {
    if e.end != end::TIMEOUT && e.end != end::TCP_CLOSED {
        return None;
    }
    let name = match e.proto {
        6 => match e.tcp_state {
            1 | 9 => "tcp_timeout_syn_sent", // SYN_SENT, SYN_SENT2
            2 => "tcp_timeout_syn_recv",
            3 => "tcp_timeout_established",
            4 => "tcp_timeout_fin_wait",
            5 => "tcp_timeout_close_wait",
            6 => "tcp_timeout_last_ack",
            7 => "tcp_timeout_time_wait",
            8 => "tcp_timeout_close",
            _ => return None,
        },
        17 | 136 if e.flags & LIFE_ASSURED != 0 => "udp_timeout_stream",
        17 | 136 => "udp_timeout",
        1 => "icmp_timeout",
        58 => "icmpv6_timeout",
        _ => "generic_timeout",
    };
    TIMEOUT_CLASSES.iter().position(|c| *c == name)
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
        // 2 significant digits in ms: about 25 KiB each, allocated once.
        let expired: Vec<Histogram<u64>> = TIMEOUT_CLASSES
            .iter()
            .map(|_| Histogram::new_with_bounds(1, MAX_MS, 2))
            .collect::<Result<_, _>>()?;
        Ok(Lifetimes {
            hist: [h()?, h()?, h()?, h()?],
            by_end: [[0; end::NAMES.len()]; 4],
            expired,
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
        if let Some(h) = timeout_class(e).and_then(|c| self.expired.get_mut(c)) {
            let ms = (e.lifetime_ns / 1_000_000).clamp(1, MAX_MS);
            let _ = h.record(ms);
        }
    }

    /// Per timeout class with expiries: how long the entries lived past
    /// their last packet's timer. `timeouts` are the sysctls' values (short
    /// names), read at the end of the run. An entry that lived no longer
    /// than its timeout plus `max(1 s, 2%)` carried traffic only at its
    /// start and then waited the timeout out.
    pub fn expiries(&self, timeouts: &BTreeMap<String, u64>) -> BTreeMap<String, Expiry> {
        let mut out = BTreeMap::new();
        for (class, h) in TIMEOUT_CLASSES.iter().zip(&self.expired) {
            let Some(&t) = timeouts.get(*class) else {
                continue;
            };
            if h.is_empty() {
                continue;
            }
            let t_ms = t * 1000;
            let slack_ms = (t_ms / 50).max(1000);
            let waited_out = h.count_between(0, t_ms + slack_ms);
            // Active span: the lifetime beyond the timeout (0 for a flow
            // that went quiet at once).
            let active = |q: f64| h.value_at_quantile(q).saturating_sub(t_ms) as f64 / 1000.0;
            out.insert(
                class.to_string(),
                Expiry {
                    timeout_s: t,
                    count: h.len(),
                    waited_out,
                    active_p50_s: active(0.50),
                    active_p99_s: active(0.99),
                    active_max_s: h.max().saturating_sub(t_ms) as f64 / 1000.0,
                },
            );
        }
        out
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
    fn expiries_by_timeout_class() {
        let mut l = Lifetimes::new().expect("histograms");
        // 90 one-shot UDP flows that waited out udp_timeout 30 s, 10 that
        // talked for 20 s more; one assured stream.
        for _ in 0..90 {
            l.record(&ev(17, end::TIMEOUT, 30_200));
        }
        for _ in 0..10 {
            l.record(&ev(17, end::TIMEOUT, 50_000));
        }
        let mut stream = ev(17, end::TIMEOUT, 130_000);
        stream.flags = LIFE_ASSURED;
        l.record(&stream);
        let mut tw = ev(6, end::TCP_CLOSED, 120_500);
        tw.tcp_state = 7;
        l.record(&tw);
        // Not expiries: closed by flush, never confirmed.
        l.record(&ev(17, end::FLUSH, 1_000));
        l.record(&ev(17, end::UNCONFIRMED, 0));
        let t: BTreeMap<String, u64> = [
            ("udp_timeout", 30),
            ("udp_timeout_stream", 120),
            ("tcp_timeout_time_wait", 120),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let x = l.expiries(&t);
        let udp = &x["udp_timeout"];
        assert_eq!((udp.count, udp.waited_out, udp.timeout_s), (100, 90, 30));
        assert!(udp.active_p50_s < 1.0, "{udp:?}");
        assert!((udp.active_max_s - 20.0).abs() < 0.5, "{udp:?}");
        assert_eq!(x["udp_timeout_stream"].count, 1);
        assert_eq!(x["tcp_timeout_time_wait"].waited_out, 1);
        assert_eq!(x.len(), 3);
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
