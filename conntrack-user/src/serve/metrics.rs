//! From a report of the run so far to the metrics `ctscope serve` exports:
//! OpenMetrics text through `prometheus-client`'s collector interface, and
//! the classic Prometheus text format (0.0.4) derived from it.
//!
//! Names follow OpenMetrics: counters end in `_total`, base units (seconds),
//! one name per meaning. No label is called `pod`, `namespace` or
//! `container`: Kubernetes scrape configurations add those themselves.

use std::{collections::BTreeMap, fmt::Write as _};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, MetricEncoder},
    metrics::MetricType,
    registry::{Registry, Unit},
};

use crate::{
    observe::lifetimes::LifeHistogram,
    report::{ChainStats, Drops, Mode, Report, chain_model},
};

/// Upper bounds of the chain-length histogram: fine where healthy tables
/// are (1..8), and 49 / 64 / 79 around the kernel's limit, which refuses an
/// insert into a chain of 50..79 entries (a random limit per boot from 6.3,
/// `nf_conntrack_max_chainlen` in net/netfilter/nf_conntrack_core.c).
pub(crate) const CHAIN_BOUNDS: [f64; 16] = [
    1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 40.0, 49.0, 64.0, 79.0, 128.0,
];

/// Upper bounds of the lifetime histogram, seconds: from a DNS query's
/// lifetime to the 5-day established-TCP timeout.
pub(crate) const LIFE_BOUNDS_S: [f64; 16] = [
    0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
    86_400.0, 432_000.0,
];

/// The `container_name` of the series that sums the containers past `--max-series`.
pub(crate) const FOLDED_CONTAINER: &str = "(other)";

/// Longest label value kept (a namespace's or container's name), in chars.
const LABEL_MAX: usize = 128;

/// What one scrape exports.
#[derive(Debug)]
pub(crate) struct Scrape {
    pub(crate) report: Report,
    /// Per protocol, from the kernel's lifetime histograms (probe modes).
    pub(crate) lifetimes: Vec<LifeHistogramOwned>,
    /// At most this many namespaces and this many containers get series
    /// of their own (the largest by live entries); the rest are folded into
    /// one `other` series.
    pub(crate) series_max: usize,
    /// `--cost`: what each program cost.
    pub(crate) cost: bool,
    /// How old the containers' live entries are (the last dump of the table,
    /// reused on a large table); `None` without containers.
    pub(crate) live_age: Option<std::time::Duration>,
}

/// [`LifeHistogram`] as owned, `Debug` data (a collector must be).
#[derive(Debug)]
pub(crate) struct LifeHistogramOwned {
    pub(crate) protocol: String,
    pub(crate) buckets: Vec<(f64, u64)>,
    pub(crate) sum_s: f64,
    pub(crate) count: u64,
}

impl From<LifeHistogram> for LifeHistogramOwned {
    fn from(h: LifeHistogram) -> Self {
        LifeHistogramOwned {
            protocol: h.protocol.to_string(),
            buckets: h.buckets,
            sum_s: h.sum_s,
            count: h.count,
        }
    }
}

type Labels = Vec<(&'static str, String)>;

/// A container's series: labels, live entries, inserts, drops.
type ContainerRow = (Labels, Option<u64>, Option<u64>, Option<u64>);

/// A label value as OpenMetrics wants it: `\`, `"` and newlines escaped
/// (prometheus-client writes values as given), control characters
/// replaced, and at most [`LABEL_MAX`] characters. Names come from
/// namespaces, processes and containers: outside input.
pub(crate) fn label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len().min(LABEL_MAX));
    for c in v.chars().take(LABEL_MAX) {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

fn describe<'a>(
    enc: &'a mut DescriptorEncoder<'_>,
    name: &'a str,
    help: &str,
    unit: Option<&'a Unit>,
    kind: MetricType,
) -> Result<MetricEncoder<'a>, std::fmt::Error> {
    enc.encode_descriptor(name, help, unit, kind)
}

fn gauges(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &[(Labels, f64)],
) -> std::fmt::Result {
    if series.is_empty() {
        return Ok(());
    }
    let mut m = describe(enc, name, help, None, MetricType::Gauge)?;
    for (labels, v) in series {
        if labels.is_empty() {
            m.encode_gauge(v)?;
        } else {
            m.encode_family(labels)?.encode_gauge(v)?;
        }
    }
    Ok(())
}

fn counters(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: &[(Labels, f64)],
) -> std::fmt::Result {
    if series.is_empty() {
        return Ok(());
    }
    let mut m = describe(enc, name, help, unit, MetricType::Counter)?;
    for (labels, v) in series {
        let none: Option<&prometheus_client::metrics::exemplar::Exemplar<Labels, f64>> = None;
        if labels.is_empty() {
            m.encode_counter(v, none)?;
        } else {
            m.encode_family(labels)?.encode_counter(v, none)?;
        }
    }
    Ok(())
}

/// One histogram series: labels, (upper bound, count at most) pairs, sum
/// and count.
struct HistSeries {
    labels: Labels,
    buckets: Vec<(f64, u64)>,
    sum: f64,
    count: u64,
}

fn histograms(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: &[HistSeries],
) -> std::fmt::Result {
    if series.is_empty() {
        return Ok(());
    }
    let mut m = describe(enc, name, help, unit, MetricType::Histogram)?;
    for s in series {
        // prometheus-client takes each bucket's own count, not the running
        // total, and writes `+Inf` for the bound f64::MAX.
        let mut own = Vec::with_capacity(s.buckets.len() + 1);
        let mut below = 0u64;
        for (le, at_most) in &s.buckets {
            own.push((*le, at_most.saturating_sub(below)));
            below = below.max(*at_most);
        }
        own.push((f64::MAX, s.count.saturating_sub(below)));
        m.encode_family(&s.labels)?
            .encode_histogram::<Labels>(s.sum, s.count, &own, None)?;
    }
    Ok(())
}

/// A measured chain-length distribution as a histogram series.
fn chain_series(direction: &str, c: &ChainStats) -> HistSeries {
    let at_most = |le: f64| {
        c.histogram
            .iter()
            .filter(|(len, _)| f64::from(*len) <= le)
            .map(|(_, n)| n)
            .fold(0u64, |a, b| a.saturating_add(*b))
    };
    HistSeries {
        labels: vec![("direction", direction.to_string())],
        buckets: CHAIN_BOUNDS.iter().map(|le| (*le, at_most(*le))).collect(),
        sum: c.mean * c.samples as f64,
        count: c.samples,
    }
}

/// Drops by reason as labelled series, the reasons known in this mode only
/// (an unknown count is absent, never 0).
fn drop_series(d: &Drops, labels: &Labels) -> Vec<(Labels, f64)> {
    [
        ("table_full", d.table_full),
        ("chain_too_long", d.chain_too_long),
        ("clash", d.clash),
        ("other", d.other),
        ("alloc_failed", d.alloc_failed),
    ]
    .into_iter()
    .filter_map(|(reason, v)| {
        let mut l = labels.clone();
        l.push(("reason", reason.to_string()));
        Some((l, v? as f64))
    })
    .collect()
}

/// Series of the largest `max` rows by `key`, and one `other` row that sums
/// the rest; the number folded is the second value.
fn fold<T, K: Ord>(rows: &[T], max: usize, key: impl Fn(&T) -> K) -> (Vec<&T>, Vec<&T>) {
    let mut sorted: Vec<&T> = rows.iter().collect();
    sorted.sort_by_key(|r| std::cmp::Reverse(key(r)));
    let rest = sorted.split_off(sorted.len().min(max));
    (sorted, rest)
}

fn sum_opt(mut v: impl Iterator<Item = Option<u64>>) -> Option<u64> {
    v.try_fold(0u64, |a, b| Some(a.saturating_add(b?)))
}

impl Scrape {
    fn table(&self, enc: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let r = &self.report;
        let one = |v: Option<u64>| -> Vec<(Labels, f64)> {
            v.map(|v| (Vec::new(), v as f64)).into_iter().collect()
        };
        // Every namespace's count: they share one table (its chains carry
        // every namespace's entries).
        let entries = if r.netns.is_empty() {
            r.settings.count_end
        } else {
            sum_opt(r.netns.iter().map(|n| n.live_entries))
        };
        gauges(
            enc,
            "ctscope_conntrack_entries",
            "Entries in the conntrack table, every network namespace's summed (they share one table).",
            &one(entries),
        )?;
        gauges(
            enc,
            "ctscope_conntrack_entries_limit",
            "nf_conntrack_max: the most entries one network namespace may hold.",
            &one(r.settings.max),
        )?;
        gauges(
            enc,
            "ctscope_conntrack_buckets",
            "nf_conntrack_buckets: hash buckets of the one table.",
            &one(r.settings.buckets),
        )?;
        counters(
            enc,
            "ctscope_conntrack_inserts",
            "Entries confirmed into the table since ctscope started (probe modes only).",
            None,
            &one(r.inserts),
        )?;
        counters(
            enc,
            "ctscope_conntrack_drops",
            "Connections refused by conntrack since ctscope started, by reason; a reason this mode cannot tell apart is absent, not 0.",
            None,
            &drop_series(&r.drops, &Vec::new()),
        )?;
        let measured: Vec<HistSeries> = r
            .chain_length
            .iter()
            .filter(|c| !c.orig.modeled)
            .flat_map(|c| {
                [
                    chain_series("orig", &c.orig),
                    chain_series("reply", &c.reply),
                ]
            })
            .collect();
        histograms(
            enc,
            "ctscope_conntrack_chain_length",
            "Entries in a hash chain right after an insert, the new one included, measured by walking it (probe modes only).",
            None,
            &measured,
        )?;
        let model = entries
            .zip(r.settings.buckets)
            .and_then(|(n, b)| chain_model::expected_chain_lengths(n, b))
            .map(|m| {
                let o = m.orig;
                vec![
                    (vec![("statistic", "mean".to_string())], o.mean),
                    (vec![("statistic", "p50".to_string())], f64::from(o.p50)),
                    (vec![("statistic", "p99".to_string())], f64::from(o.p99)),
                    (vec![("statistic", "max".to_string())], f64::from(o.max)),
                ]
            })
            .unwrap_or_default();
        gauges(
            enc,
            "ctscope_conntrack_chain_length_uniform_model",
            "Chain length expected after an insert if the hash were uniform, for the entries and buckets now: a model, not a measurement.",
            &model,
        )
    }

    fn namespaces(&self, enc: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let r = &self.report;
        let (kept, rest) = fold(&r.netns, self.series_max, |n| n.live_entries.unwrap_or(0));
        let labels = |inode: String, name: &str, kind: &str| -> Labels {
            vec![
                ("netns_inode", inode),
                ("name", label_value(name)),
                ("kind", kind.to_string()),
            ]
        };
        let mut rows: Vec<(Labels, Option<u64>, Option<u64>, Drops)> = kept
            .iter()
            .map(|n| {
                let kind = serde_json::to_value(n.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                (
                    labels(n.inode.to_string(), &n.name, &kind),
                    n.live_entries,
                    n.inserts,
                    n.drops.clone(),
                )
            })
            .collect();
        if !rest.is_empty() {
            rows.push((
                labels("other".into(), "other", "other"),
                sum_opt(rest.iter().map(|n| n.live_entries)),
                sum_opt(rest.iter().map(|n| n.inserts)),
                sum_drops(rest.iter().map(|n| &n.drops)),
            ));
        }
        gauges(
            enc,
            "ctscope_netns_conntrack_entries",
            "Entries a network namespace holds (its nf_conntrack_count).",
            &rows
                .iter()
                .filter_map(|(l, e, ..)| Some((l.clone(), (*e)? as f64)))
                .collect::<Vec<_>>(),
        )?;
        counters(
            enc,
            "ctscope_netns_conntrack_inserts",
            "Entries confirmed in a network namespace since ctscope started (probe modes).",
            None,
            &rows
                .iter()
                .filter_map(|(l, _, i, _)| Some((l.clone(), (*i)? as f64)))
                .collect::<Vec<_>>(),
        )?;
        counters(
            enc,
            "ctscope_netns_conntrack_drops",
            "Connections refused in a network namespace since ctscope started, by reason.",
            None,
            &rows
                .iter()
                .flat_map(|(l, _, _, d)| drop_series(d, l))
                .collect::<Vec<_>>(),
        )?;
        gauges(
            enc,
            "ctscope_netns_series_folded",
            "Network namespaces folded into the name=\"other\" series (more than --max-series).",
            &[(Vec::new(), rest.len() as f64)],
        )
    }

    fn containers(&self, enc: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let r = &self.report;
        let (kept, rest) = fold(&r.containers, self.series_max, |c| {
            c.live_entries.unwrap_or(0)
        });
        let mut rows: Vec<ContainerRow> = kept
            .iter()
            .map(|c| {
                (
                    vec![("container_name", label_value(&c.name))],
                    c.live_entries,
                    c.inserts,
                    c.drops,
                )
            })
            .collect();
        if !rest.is_empty() {
            rows.push((
                // Not a name Docker allows (it must start with a letter or digit): no
                // container's own series can have it.
                vec![("container_name", FOLDED_CONTAINER.to_string())],
                sum_opt(rest.iter().map(|c| c.live_entries)),
                sum_opt(rest.iter().map(|c| c.inserts)),
                sum_opt(rest.iter().map(|c| c.drops)),
            ));
        }
        let pick = |f: fn(&ContainerRow) -> Option<u64>| {
            rows.iter()
                .filter_map(|row| Some((row.0.clone(), f(row)? as f64)))
                .collect::<Vec<_>>()
        };
        if let Some(age) = self.live_age {
            gauges(
                enc,
                "ctscope_container_conntrack_entries_age_seconds",
                "How old ctscope_container_conntrack_entries is: a scrape reuses the last dump of the table while younger than 20 times what it took (at most 60 s) and nothing moved by over a tenth.",
                &[(Vec::new(), age.as_secs_f64())],
            )?;
        }
        gauges(
            enc,
            "ctscope_container_conntrack_entries",
            "Entries of a container's traffic: its own namespace's, plus those NATed in the host's namespace from its addresses.",
            &pick(|r| r.1),
        )?;
        counters(
            enc,
            "ctscope_container_conntrack_inserts",
            "Entries of a container's traffic confirmed since ctscope started (probe modes).",
            None,
            &pick(|r| r.2),
        )?;
        counters(
            enc,
            "ctscope_container_conntrack_drops",
            "Connections of a container refused since ctscope started (probe modes, while attribution ran).",
            None,
            &pick(|r| r.3),
        )?;
        gauges(
            enc,
            "ctscope_container_series_folded",
            "Containers folded into the container_name=\"(other)\" series (more than --max-series).",
            &[(Vec::new(), rest.len() as f64)],
        )
    }

    fn kernel_and_self(&self, enc: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let r = &self.report;
        let life: Vec<HistSeries> = self
            .lifetimes
            .iter()
            .map(|h| HistSeries {
                labels: vec![("protocol", h.protocol.clone())],
                buckets: h.buckets.clone(),
                sum: h.sum_s,
                count: h.count,
            })
            .collect();
        histograms(
            enc,
            "ctscope_conntrack_entry_lifetime",
            "How long entries lived, from confirmation to deletion, by protocol (probe modes; within 6.25% per bucket).",
            Some(&Unit::Seconds),
            &life,
        )?;
        counters(
            enc,
            "ctscope_kernel_conntrack_stat",
            "The kernel's own per-CPU counters of /proc/net/stat/nf_conntrack in ctscope's namespace, summed over CPUs, since ctscope started.",
            None,
            &r.kernel_stats
                .iter()
                .map(|(k, v)| (vec![("column", label_value(k))], *v as f64))
                .collect::<Vec<_>>(),
        )?;
        if let Some(c) = &r.self_check {
            counters(
                enc,
                "ctscope_self_check_walks",
                "Chain walks proven by ending at their own bucket's nulls marker.",
                None,
                &[(Vec::new(), c.walks as f64)],
            )?;
            counters(
                enc,
                "ctscope_self_check_failures",
                "Chain walks that could not be proven (offsets wrong): chain lengths are then not to be trusted.",
                None,
                &[(Vec::new(), c.failures() as f64)],
            )?;
        }
        if self.cost
            && let Some(ps) = &r.cost.programs
        {
            let per = |f: fn(&crate::report::ProgramCost) -> f64| {
                ps.iter()
                    .map(|p| (vec![("program", label_value(&p.name))], f(p)))
                    .collect::<Vec<_>>()
            };
            counters(
                enc,
                "ctscope_probe_runs",
                "Runs of each eBPF program since ctscope started (--cost: the kernel's bpf_stats).",
                None,
                &per(|p| p.run_cnt as f64),
            )?;
            counters(
                enc,
                "ctscope_probe_run",
                "Time spent in each eBPF program since ctscope started (--cost).",
                Some(&Unit::Seconds),
                &per(|p| p.run_time_ns as f64 / 1e9),
            )?;
        }
        gauges(
            enc,
            "ctscope_resident_memory_bytes",
            "ctscope's own resident set.",
            &[(Vec::new(), r.cost.rss_kib as f64 * 1024.0)],
        )
    }
}

fn sum_drops<'a>(ds: impl Iterator<Item = &'a Drops>) -> Drops {
    let ds: Vec<&Drops> = ds.collect();
    let s = |f: fn(&Drops) -> Option<u64>| sum_opt(ds.iter().map(|d| f(d)));
    Drops {
        table_full: s(|d| d.table_full),
        chain_too_long: s(|d| d.chain_too_long),
        clash: s(|d| d.clash),
        other: s(|d| d.other),
        alloc_failed: s(|d| d.alloc_failed),
    }
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        let r = &self.report;
        let mut info = describe(
            &mut enc,
            "ctscope_build",
            "ctscope's version, the kernel it runs on and where its numbers come from.",
            None,
            MetricType::Info,
        )?;
        info.encode_info(&vec![
            ("version", label_value(&r.ctscope_version)),
            ("kernel", label_value(&r.kernel_release)),
            ("mode", r.mode.to_string()),
        ])?;
        gauges(
            &mut enc,
            "ctscope_probes_attached",
            "1 when eBPF probes measure (fentry or kprobe mode), 0 in procfs mode (the kernel's counters only; chain lengths modeled).",
            &[(
                Vec::new(),
                f64::from(u8::from(matches!(r.mode, Mode::Fentry | Mode::Kprobe))),
            )],
        )?;
        gauges(
            &mut enc,
            "ctscope_attribution_throughout",
            "1 when refused connections have been attributed to their source since ctscope started (kprobe mode, or --attribution always); 0 when attribution ran on demand, so that some refusals are counted by reason only.",
            &r.attribution
                .as_ref()
                .map(|a| vec![(Vec::new(), f64::from(u8::from(a.throughout)))])
                .unwrap_or_default(),
        )?;
        self.table(&mut enc)?;
        self.namespaces(&mut enc)?;
        self.containers(&mut enc)?;
        self.kernel_and_self(&mut enc)
    }
}

/// The scrape as OpenMetrics text (`# EOF` included).
pub(crate) fn openmetrics(scrape: Scrape) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

/// OpenMetrics text as the classic Prometheus text format (0.0.4): a
/// counter's `# TYPE`/`# HELP` name takes its `_total`, an info becomes a
/// gauge named `_info`, and `# UNIT` and `# EOF` go (that format has
/// neither). Samples are the same lines.
pub(crate) fn classic(openmetrics: &str) -> String {
    let mut kinds: BTreeMap<&str, &str> = BTreeMap::new();
    for l in openmetrics.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ")
            && let Some((name, kind)) = rest.split_once(' ')
        {
            kinds.insert(name, kind);
        }
    }
    let rename = |name: &str| -> String {
        match kinds.get(name) {
            Some(&"counter") => format!("{name}_total"),
            Some(&"info") => format!("{name}_info"),
            _ => name.to_string(),
        }
    };
    let mut out = String::with_capacity(openmetrics.len());
    for l in openmetrics.lines() {
        if l == "# EOF" || l.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = l.strip_prefix("# TYPE ")
            && let Some((name, kind)) = rest.split_once(' ')
        {
            let kind = if kind == "info" { "gauge" } else { kind };
            let _ = writeln!(out, "# TYPE {} {kind}", rename(name));
        } else if let Some(rest) = l.strip_prefix("# HELP ")
            && let Some((name, help)) = rest.split_once(' ')
        {
            let _ = writeln!(out, "# HELP {} {help}", rename(name));
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests;
