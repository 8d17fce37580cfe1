//! `ctscope report REPORT.json --html FILE`: an `observe --json` report as one self-contained
//! HTML page to hand a colleague: the chain-length histograms against the uniform model, the
//! table and the drops over time, the namespace and container shares, lifetimes, and with a
//! recommendation the side-by-side of the sizing methods. Charts are inline SVG; no script,
//! no font, nothing fetched. Every string from the report is escaped (names come from the
//! system and the file is input).

mod svg;

use std::fmt::Write as _;

use svg::Series;

use crate::{
    report::{ChainStats, Report, chain_model},
    tune::recommend::Recommendation,
};

/// HTML-escapes text (element content and attribute values alike).
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

fn or_q(v: Option<u64>) -> String {
    v.map_or_else(|| "?".into(), |v| v.to_string())
}

/// Rows of namespaces and containers drawn, at most.
const ROWS_MAX: usize = 15;
/// Chain lengths drawn one by one; longer ones are summed in the last bar.
const CHAIN_BARS: u32 = 12;

const STYLE: &str = "body{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}\
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}\
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}.note{color:#666;font-size:.9em}\
.warn{color:#a40}svg.chart{display:block;margin:.5em 0}";

/// The page.
pub fn html(r: &Report, rec: Option<&Recommendation>) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>ctscope report: {k}</title><style>{STYLE}</style></head><body>",
        k = esc(&r.kernel_release)
    );
    header(&mut out, r);
    chains(&mut out, r);
    timeline(&mut out, r);
    shares(&mut out, r);
    lifetimes(&mut out, r);
    if let Some(rec) = rec {
        recommendation(&mut out, rec);
    }
    if !r.notices.is_empty() {
        out.push_str("<h2>Notices</h2><ul>");
        for n in &r.notices {
            let _ = write!(out, "<li>{}</li>", esc(n));
        }
        out.push_str("</ul>");
    }
    let _ = writeln!(
        out,
        "<p class=\"note\">ctscope {} &middot; this page is self-contained: it fetches nothing.</p></body></html>",
        esc(&r.ctscope_version)
    );
    out
}

fn header(out: &mut String, r: &Report) {
    let s = &r.settings;
    let _ = write!(
        out,
        "<h1>Conntrack on {k}</h1><p>{mode} mode, {d:.0} s observed.</p>\
<table><tr><th>setting</th><th>value</th></tr>\
<tr><td>entries at the start / end</td><td>{cs} / {ce}</td></tr>\
<tr><td>nf_conntrack_max</td><td>{max}</td></tr><tr><td>nf_conntrack_buckets</td><td>{b}</td></tr>\
<tr><td>inserts</td><td>{ins}</td></tr><tr><td>refused (all reasons known)</td><td>{drops}</td></tr></table>",
        k = esc(&r.kernel_release),
        mode = esc(&r.mode.to_string()),
        d = r.duration_s,
        cs = or_q(s.count_start),
        ce = or_q(s.count_end),
        max = or_q(s.max),
        b = or_q(s.buckets),
        ins = or_q(r.inserts),
        drops = or_q(r.drops.total())
    );
    let d = &r.drops;
    let _ = write!(
        out,
        "<table><tr><th>refused because</th><th>connections</th></tr>\
<tr><td>table full</td><td>{}</td></tr><tr><td>chain too long</td><td>{}</td></tr>\
<tr><td>clash</td><td>{}</td></tr><tr><td>other</td><td>{}</td></tr><tr><td>allocation failed</td><td>{}</td></tr></table>",
        or_q(d.table_full),
        or_q(d.chain_too_long),
        or_q(d.clash),
        or_q(d.other),
        or_q(d.alloc_failed)
    );
}

/// Share of inserts per chain length (percent), lengths 1..CHAIN_BARS-1 and CHAIN_BARS+.
fn chain_shares(c: &ChainStats) -> Vec<f64> {
    let total = c.samples.max(1) as f64;
    let mut out: Vec<f64> = (1..CHAIN_BARS)
        .map(|len| {
            c.histogram
                .iter()
                .find(|(l, _)| *l == len)
                .map_or(0.0, |(_, n)| *n as f64 * 100.0 / total)
        })
        .collect();
    let more: u64 = c
        .histogram
        .iter()
        .filter(|(l, _)| *l >= CHAIN_BARS)
        .map(|(_, n)| *n)
        .sum();
    out.push(more as f64 * 100.0 / total);
    out
}

fn chains(out: &mut String, r: &Report) {
    out.push_str("<h2>Chain lengths</h2>");
    let entries = r
        .occupancy
        .as_ref()
        .and_then(|o| o.total_peak)
        .or(r.settings.count_end);
    let model = entries
        .zip(r.settings.buckets)
        .and_then(|(n, b)| chain_model::expected_chain_lengths(n, b));
    let labels: Vec<String> = (1..CHAIN_BARS)
        .map(|l| l.to_string())
        .chain(std::iter::once(format!("{CHAIN_BARS}+")))
        .collect();
    let Some(c) = &r.chain_length else {
        out.push_str("<p class=\"note\">No chain lengths in this report.</p>");
        return;
    };
    if c.orig.modeled {
        out.push_str("<p class=\"warn\">procfs mode: these are the chain lengths expected under uniform hashing for the entries and buckets seen, a model, not a measurement.</p>");
    }
    for (dir, stats) in [("original", &c.orig), ("reply", &c.reply)] {
        let mut series = vec![Series {
            name: if stats.modeled { "modeled" } else { "measured" },
            color: "#1f77b4",
            values: chain_shares(stats),
        }];
        if let Some(m) = model.as_ref().filter(|_| !stats.modeled) {
            series.push(Series {
                name: "uniform model at the peak",
                color: "#aaaaaa",
                values: chain_shares(&m.orig),
            });
        }
        let _ = write!(
            out,
            "<p>{dir} direction: {n}mean {mean:.2}, p50 {p50}, p99 {p99}, max {max}{trunc}.</p>{chart}",
            n = if stats.modeled {
                "modeled, ".to_string()
            } else {
                format!("{} inserts, ", stats.samples)
            },
            mean = stats.mean,
            p50 = stats.p50,
            p99 = stats.p99,
            max = stats.max,
            trunc = if stats.truncated > 0 {
                format!(", {} walks cut at the walk limit", stats.truncated)
            } else {
                String::new()
            },
            chart = svg::bars(
                &format!("chain length after insert, {dir} direction"),
                &labels,
                &series,
                "% of inserts"
            )
        );
    }
}

fn timeline(out: &mut String, r: &Report) {
    out.push_str("<h2>Over time</h2>");
    if r.timeline.len() < 2 {
        out.push_str("<p class=\"note\">The report has no timeline (a run shorter than two intervals, or an older ctscope).</p>");
        return;
    }
    let xs: Vec<f64> = r.timeline.iter().map(|p| p.t_s).collect();
    let per_s = |i: usize, v: Option<u64>| {
        let dt = if i == 0 {
            r.timeline[0].t_s
        } else {
            r.timeline[i].t_s - r.timeline[i - 1].t_s
        };
        v.map_or(0.0, |v| v as f64 / dt.max(1e-3))
    };
    let count = Series {
        name: "entries (nf_conntrack_count)",
        color: "#1f77b4",
        values: r
            .timeline
            .iter()
            .map(|p| p.count.unwrap_or(0) as f64)
            .collect(),
    };
    let mut fill = vec![count];
    if let Some(max) = r.settings.max {
        fill.push(Series {
            name: "nf_conntrack_max",
            color: "#d62728",
            values: vec![max as f64; xs.len()],
        });
    }
    out.push_str(&svg::lines("entries in the table", &xs, &fill, "entries"));
    type Pick = fn(&crate::report::TimelinePoint) -> Option<u64>;
    let reasons: [(&str, &str, Pick); 6] = [
        ("inserts", "#2ca02c", |p| p.inserts),
        ("table full", "#d62728", |p| p.drops.table_full),
        ("chain too long", "#9467bd", |p| p.drops.chain_too_long),
        ("clash", "#ff7f0e", |p| p.drops.clash),
        ("other", "#8c564b", |p| p.drops.other),
        ("kernel drop column", "#7f7f7f", |p| p.kernel_drop),
    ];
    let (ins, drops): (Vec<_>, Vec<_>) = reasons
        .iter()
        .filter(|(_, _, f)| r.timeline.iter().any(|p| f(p).is_some()))
        .map(|(name, color, f)| Series {
            name,
            color,
            values: r
                .timeline
                .iter()
                .enumerate()
                .map(|(i, p)| per_s(i, f(p)))
                .collect(),
        })
        .partition(|s| s.name == "inserts");
    if !ins.is_empty() {
        out.push_str(&svg::lines("inserts per second", &xs, &ins, "per second"));
    }
    out.push_str(&svg::lines(
        "refused connections per second, by reason",
        &xs,
        &drops,
        "per second",
    ));
}

fn shares(out: &mut String, r: &Report) {
    out.push_str("<h2>Who fills the table</h2>");
    let mut netns: Vec<_> = r.netns.iter().collect();
    netns.sort_by_key(|n| std::cmp::Reverse(n.live_entries));
    let mut containers: Vec<_> = r.containers.iter().collect();
    containers.sort_by_key(|c| std::cmp::Reverse(c.live_entries));
    for (what, rows) in [
        (
            "network namespaces",
            netns
                .iter()
                .take(ROWS_MAX)
                .map(|n| (n.name.clone(), n.live_entries, n.inserts, n.drops.total()))
                .collect::<Vec<_>>(),
        ),
        (
            "containers",
            containers
                .iter()
                .take(ROWS_MAX)
                .map(|c| (c.name.clone(), c.live_entries, c.inserts, c.drops))
                .collect(),
        ),
    ] {
        if rows.is_empty() {
            let _ = write!(
                out,
                "<p class=\"note\">No {what} with conntrack activity.</p>"
            );
            continue;
        }
        let labels: Vec<String> = rows
            .iter()
            .map(|(n, ..)| crate::text::name(n).chars().take(14).collect())
            .collect();
        out.push_str(&svg::bars(
            &format!("{what}: live entries and inserts"),
            &labels,
            &[
                Series {
                    name: "live entries at the end",
                    color: "#1f77b4",
                    values: rows.iter().map(|r| r.1.unwrap_or(0) as f64).collect(),
                },
                Series {
                    name: "inserts in the run",
                    color: "#2ca02c",
                    values: rows.iter().map(|r| r.2.unwrap_or(0) as f64).collect(),
                },
            ],
            "entries",
        ));
        let _ = write!(
            out,
            "<table><tr><th>{what}</th><th>live entries</th><th>inserts</th><th>refused</th></tr>"
        );
        for (name, e, i, d) in &rows {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&crate::text::name(name)),
                or_q(*e),
                or_q(*i),
                or_q(*d)
            );
        }
        out.push_str("</table>");
    }
}

fn lifetimes(out: &mut String, r: &Report) {
    out.push_str("<h2>How entries lived</h2>");
    let Some(l) = r.lifetimes.as_ref().filter(|l| !l.is_empty()) else {
        out.push_str("<p class=\"note\">No lifetimes in this report (no entry died during the run, or the deletions could not be observed).</p>");
        return;
    };
    out.push_str("<table><tr><th>protocol</th><th>deaths</th><th>p50</th><th>p99</th><th>max</th><th>by end</th></tr>");
    for (proto, p) in l {
        let ends: Vec<String> = p
            .by_end
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{} {n}", esc(k)))
            .collect();
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{:.0} ms</td><td>{:.0} ms</td><td>{:.0} ms</td><td>{}</td></tr>",
            esc(proto),
            p.count,
            p.p50_ms,
            p.p99_ms,
            p.max_ms,
            ends.join(", ")
        );
    }
    out.push_str("</table>");
}

fn recommendation(out: &mut String, rec: &Recommendation) {
    out.push_str("<h2>Sizing: ctscope's recommendation next to the formulas</h2>");
    let _ = write!(
        out,
        "<p>Recommended: nf_conntrack_buckets {}, nf_conntrack_max {}, {:.1} MiB.</p>",
        rec.buckets,
        rec.max,
        rec.memory_bytes as f64 / 1_048_576.0
    );
    out.push_str("<table><tr><th>method</th><th>buckets</th><th>max</th><th>memory</th><th>mean chain</th><th>p99 chain</th><th>the run's drops</th></tr>");
    for c in &rec.comparison {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1} MiB</td><td>{:.2}</td><td>{:.1}</td><td>{}</td></tr>",
            esc(&c.method),
            c.buckets,
            c.max,
            c.memory_bytes as f64 / 1_048_576.0,
            c.mean_chain,
            c.p99_chain,
            if c.would_drop {
                format!("would happen: {}", esc(&c.drops_because.join("; ")))
            } else {
                "none".to_string()
            }
        );
    }
    out.push_str("</table>");
    let labels: Vec<String> = rec.comparison.iter().map(|c| c.method.clone()).collect();
    out.push_str(&svg::bars(
        "memory of the table per method",
        &labels,
        &[Series {
            name: "MiB",
            color: "#1f77b4",
            values: rec
                .comparison
                .iter()
                .map(|c| c.memory_bytes as f64 / 1_048_576.0)
                .collect(),
        }],
        "MiB",
    ));
    out.push_str(&svg::bars(
        "p99 chain length at the observed peak per method",
        &labels,
        &[Series {
            name: "p99 chain",
            color: "#ff7f0e",
            values: rec.comparison.iter().map(|c| c.p99_chain).collect(),
        }],
        "entries",
    ));
    if !rec.reasons.is_empty() {
        out.push_str("<ul>");
        for r in &rec.reasons {
            let _ = write!(out, "<li>{}</li>", esc(r));
        }
        out.push_str("</ul>");
    }
}
