//! Lifetimes from the kernel's own histograms (`LIFE_HIST`, conntrack-common
//! `life`): one row per (protocol, end, TCP state, assured), one slot per
//! lifetime range (16 per power of two, 6.25% wide) plus one for deaths
//! without a lifetime (inserted before the run, no free slot, or never
//! inserted). Counts are exact; percentiles are a slot's middle, so within
//! about 3% of the true value.

use std::collections::BTreeMap;

use conntrack_common::{end, life};

use crate::report::{Expiry, ProtoLifetimes};

/// Report classes: ICMP and ICMPv6 are one.
const PROTOCOLS: [&str; 4] = ["tcp", "udp", "icmp", "other"];

/// Nanoseconds per lifetime unit.
const UNIT_NS: f64 = (1u64 << life::UNIT_SHIFT) as f64;

/// The timeout sysctls (short names, `nf_conntrack_` left out) an expiry is
/// charged to: TCP by its state at deletion (`enum tcp_conntrack`, 1..9),
/// UDP by whether it was ASSURED (a stream), ICMP, anything else.
/// net/netfilter/nf_conntrack_proto_{tcp,udp,icmp,generic}.c, v5.10..v6.12.
pub(crate) const TIMEOUT_CLASSES: [&str; 13] = [
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

/// One histogram of lifetimes: counts by `life` slot.
#[derive(Debug, Clone)]
struct Hist(Vec<u64>);

impl Hist {
    fn new() -> Hist {
        Hist(vec![0; life::HIST_SLOTS as usize])
    }

    fn add(&mut self, row: &[u64]) {
        for (a, b) in self.0.iter_mut().zip(row) {
            *a = a.saturating_add(*b);
        }
    }

    /// Every death, with a lifetime or not.
    fn count(&self) -> u64 {
        self.0.iter().fold(0u64, |a, b| a.saturating_add(*b))
    }

    /// Deaths with a lifetime: every slot but the last.
    fn measured(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.0
            .iter()
            .take(life::UNKNOWN_SLOT as usize)
            .enumerate()
            .map(|(i, n)| (i as u32, *n))
    }

    fn measured_count(&self) -> u64 {
        self.measured().map(|(_, n)| n).fold(0, u64::saturating_add)
    }

    /// A slot's lifetimes, ms: its lower bound and the next slot's.
    fn bounds_ms(slot: u32) -> (f64, f64) {
        let ms = |units: u64| units as f64 * UNIT_NS / 1e6;
        (
            ms(life::slot_floor(slot)),
            ms(life::slot_floor(slot + 1).max(life::slot_floor(slot) + 1)),
        )
    }

    /// The nearest-rank quantile `q` of the measured lifetimes, ms: the
    /// middle of its slot (0 with none measured).
    fn quantile_ms(&self, q: f64) -> f64 {
        let n = self.measured_count();
        if n == 0 {
            return 0.0;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (slot, c) in self.measured() {
            seen += c;
            if seen >= rank {
                let (lo, hi) = Self::bounds_ms(slot);
                return f64::midpoint(lo, hi);
            }
        }
        0.0
    }

    /// The longest measured lifetime, ms: the upper end of its slot.
    fn max_ms(&self) -> f64 {
        self.measured()
            .filter(|(_, n)| *n > 0)
            .last()
            .map_or(0.0, |(slot, _)| Self::bounds_ms(slot).1)
    }

    /// Measured lifetimes of at most `ms`: every slot that begins there or
    /// below (a slot across `ms` counts whole: up to 6.25% above it).
    fn count_at_most_ms(&self, ms: f64) -> u64 {
        self.measured()
            .filter(|(slot, _)| Self::bounds_ms(*slot).0 <= ms)
            .map(|(_, n)| n)
            .fold(0, u64::saturating_add)
    }
}

/// One protocol's lifetimes as a Prometheus histogram ([`Lifetimes::histograms`]).
pub(crate) struct LifeHistogram {
    pub(crate) protocol: &'static str,
    /// (upper bound in seconds, measured deaths at most that long).
    pub(crate) buckets: Vec<(f64, u64)>,
    pub(crate) sum_s: f64,
    pub(crate) count: u64,
}

/// Deaths over a run: the difference of two reads of `LIFE_HIST`.
pub(crate) struct Lifetimes {
    /// Per report class: every death's lifetime slot.
    hist: [Hist; 4],
    by_end: [[u64; end::NAMES.len()]; 4],
    /// Per [`TIMEOUT_CLASSES`] entry, in its order: lifetimes of entries
    /// that died by their timer (TCP closes included, which wait out a
    /// closing state's timeout).
    expired: Vec<Hist>,
}

/// The timeout class of a row, if its deaths waited out a timeout.
fn timeout_class(
    class: u8,
    end: u8,
    tcp_state: Option<u8>,
    assured: Option<bool>,
) -> Option<usize> {
    if end != end::TIMEOUT && end != end::TCP_CLOSED {
        return None;
    }
    let name = match class {
        life::TCP => match tcp_state? {
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
        life::UDP if assured == Some(true) => "udp_timeout_stream",
        life::UDP => "udp_timeout",
        life::ICMP => "icmp_timeout",
        life::ICMPV6 => "icmpv6_timeout",
        _ => "generic_timeout",
    };
    TIMEOUT_CLASSES.iter().position(|c| *c == name)
}

/// The report class of a protocol class.
fn report_class(class: u8) -> usize {
    match class {
        life::TCP => 0,
        life::UDP => 1,
        life::ICMP | life::ICMPV6 => 2,
        _ => 3,
    }
}

impl Lifetimes {
    /// From the rows of `LIFE_HIST` (in row order) counted over the run.
    pub(crate) fn from_rows(rows: &[Vec<u64>]) -> Lifetimes {
        let mut out = Lifetimes {
            hist: [Hist::new(), Hist::new(), Hist::new(), Hist::new()],
            by_end: [[0; end::NAMES.len()]; 4],
            expired: TIMEOUT_CLASSES.iter().map(|_| Hist::new()).collect(),
        };
        for (r, row) in rows.iter().enumerate() {
            let Some((class, e, tcp_state, assured)) =
                u32::try_from(r).ok().and_then(life::row_info)
            else {
                continue;
            };
            let p = report_class(class);
            out.hist[p].add(row);
            let n: u64 = row.iter().fold(0, |a, b| a.saturating_add(*b));
            if let Some(slot) = out.by_end[p].get_mut(e as usize) {
                *slot = slot.saturating_add(n);
            }
            if let Some(h) =
                timeout_class(class, e, tcp_state, assured).and_then(|c| out.expired.get_mut(c))
            {
                h.add(row);
            }
        }
        out
    }

    /// Per timeout class with expiries: how long the entries lived past
    /// their last packet's timer. `timeouts` are the sysctls' values (short
    /// names), read at the end of the run. An entry that lived no longer
    /// than its timeout plus `max(1 s, 2%)` carried traffic only at its
    /// start and then waited the timeout out (to the precision of the
    /// histogram's slots: a lifetime up to 6.25% above that counts too).
    /// Only measured lifetimes count.
    pub(crate) fn expiries(&self, timeouts: &BTreeMap<String, u64>) -> BTreeMap<String, Expiry> {
        let mut out = BTreeMap::new();
        for (class, h) in TIMEOUT_CLASSES.iter().zip(&self.expired) {
            let Some(&t) = timeouts.get(*class) else {
                continue;
            };
            if h.measured_count() == 0 {
                continue;
            }
            let t_ms = t as f64 * 1000.0;
            let slack_ms = (t_ms / 50.0).max(1000.0);
            // Active span: the lifetime beyond the timeout (0 for a flow
            // that went quiet at once).
            let active = |ms: f64| (ms - t_ms).max(0.0) / 1000.0;
            out.insert(
                class.to_string(),
                Expiry {
                    timeout_s: t,
                    count: h.measured_count(),
                    waited_out: h.count_at_most_ms(t_ms + slack_ms),
                    active_p50_s: active(h.quantile_ms(0.50)),
                    active_p99_s: active(h.quantile_ms(0.99)),
                    active_max_s: active(h.max_ms()),
                },
            );
        }
        out
    }

    /// Per protocol with a measured death, as a Prometheus histogram: for
    /// each bound (seconds, ascending) the measured deaths at most that long
    /// (a slot across the bound counts whole, as in [`Hist::count_at_most_ms`]),
    /// the sum of lifetimes in seconds (slot middles) and the measured count.
    pub(crate) fn histograms(&self, bounds_s: &[f64]) -> Vec<LifeHistogram> {
        PROTOCOLS
            .iter()
            .zip(&self.hist)
            .filter(|(_, h)| h.measured_count() > 0)
            .map(|(name, h)| LifeHistogram {
                protocol: name,
                buckets: bounds_s
                    .iter()
                    .map(|b| (*b, h.count_at_most_ms(b * 1000.0)))
                    .collect(),
                sum_s: h
                    .measured()
                    .map(|(slot, n)| {
                        let (lo, hi) = Hist::bounds_ms(slot);
                        n as f64 * (lo + hi) / 2.0 / 1000.0
                    })
                    .sum(),
                count: h.measured_count(),
            })
            .collect()
    }

    /// Deaths counted.
    #[cfg(test)]
    fn len(&self) -> u64 {
        self.hist
            .iter()
            .map(Hist::count)
            .fold(0, u64::saturating_add)
    }

    /// Per protocol with at least one death: the count (every death, with
    /// a lifetime or not), percentiles in ms of the measured lifetimes, and
    /// the count per way of ending (every way listed, zeros included).
    pub(crate) fn report(&self) -> BTreeMap<String, ProtoLifetimes> {
        PROTOCOLS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.hist[*i].count() > 0)
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
                        count: h.count(),
                        p50_ms: h.quantile_ms(0.50),
                        p99_ms: h.quantile_ms(0.99),
                        max_ms: h.max_ms(),
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

    /// Rows as the kernel would count `n` deaths of `ms` each (None: no
    /// lifetime) in the row of (class, end, tcp_state, assured).
    struct Rows(Vec<Vec<u64>>);

    impl Rows {
        fn new() -> Rows {
            Rows(vec![
                vec![0; life::HIST_SLOTS as usize];
                life::ROWS as usize
            ])
        }

        fn add(&mut self, class: u8, e: u8, state: u8, assured: bool, ms: Option<u64>, n: u64) {
            let row = life::row(class, e, state, assured) as usize;
            let slot = match ms {
                Some(ms) => life::slot((ms * 1_000_000) >> life::UNIT_SHIFT),
                None => life::UNKNOWN_SLOT,
            } as usize;
            self.0[row][slot] += n;
        }
    }

    #[test]
    fn expiries_by_timeout_class() {
        let mut r = Rows::new();
        // 90 one-shot UDP flows that waited out udp_timeout 30 s, 10 that
        // talked for 20 s more; one assured stream.
        r.add(life::UDP, end::TIMEOUT, 0, false, Some(30_200), 90);
        r.add(life::UDP, end::TIMEOUT, 0, false, Some(50_000), 10);
        r.add(life::UDP, end::TIMEOUT, 0, true, Some(130_000), 1);
        r.add(life::TCP, end::TCP_CLOSED, 7, false, Some(120_500), 1);
        // Not expiries: flushed, never confirmed, or without a lifetime.
        r.add(life::UDP, end::FLUSH, 0, false, Some(1_000), 1);
        r.add(life::UDP, end::UNCONFIRMED, 0, false, None, 1);
        r.add(life::UDP, end::TIMEOUT, 0, false, None, 5);
        let l = Lifetimes::from_rows(&r.0);
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
        // 50 s in a slot 6.25% wide: the slot's upper end.
        assert!((udp.active_max_s - 20.0).abs() < 3.2, "{udp:?}");
        assert_eq!(x["udp_timeout_stream"].count, 1);
        assert_eq!(x["tcp_timeout_time_wait"].waited_out, 1);
        assert_eq!(x.len(), 3);
    }

    #[test]
    fn counts_and_percentiles_per_protocol() {
        let mut r = Rows::new();
        for ms in 1..=100 {
            r.add(life::TCP, end::TCP_CLOSED, 7, false, Some(ms), 1);
        }
        r.add(life::UDP, end::TIMEOUT, 0, false, Some(30_000), 1);
        r.add(life::UDP, end::UNCONFIRMED, 0, false, None, 1);
        r.add(life::ICMPV6, end::TIMEOUT, 0, false, None, 2);
        let l = Lifetimes::from_rows(&r.0);
        let rep = l.report();
        let tcp = &rep["tcp"];
        assert_eq!(tcp.count, 100);
        assert_eq!(tcp.by_end["tcp_closed"], 100);
        assert_eq!(tcp.by_end["timeout"], 0);
        // Slots are 6.25% wide; the middle of one is within 3.2%.
        assert!(
            (tcp.p50_ms - 50.0).abs() <= 50.0 * 0.032,
            "p50 {}",
            tcp.p50_ms
        );
        assert!(
            (tcp.p99_ms - 99.0).abs() <= 99.0 * 0.032,
            "p99 {}",
            tcp.p99_ms
        );
        assert!(
            tcp.max_ms >= 100.0 && tcp.max_ms <= 100.0 * 1.07,
            "max {}",
            tcp.max_ms
        );
        let udp = &rep["udp"];
        // The unconfirmed death counts, without a lifetime.
        assert_eq!((udp.count, udp.by_end["unconfirmed"]), (2, 1));
        assert!((udp.p50_ms - 30_000.0).abs() <= 30_000.0 * 0.032, "{udp:?}");
        // ICMPv6 is reported with ICMP; deaths without a lifetime only.
        assert_eq!((rep["icmp"].count, rep["icmp"].p50_ms), (2, 0.0));
        assert!(!rep.contains_key("other"));
        assert_eq!(l.len(), 104);
    }
}
