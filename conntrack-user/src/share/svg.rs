//! Inline SVG charts for the HTML report: drawn by hand (a few dozen elements each), so the page
//! needs no script, no font file and no network to view.

use std::fmt::Write as _;

use super::esc;

/// One series of a chart.
pub(crate) struct Series<'a> {
    pub(crate) name: &'a str,
    pub(crate) color: &'a str,
    pub(crate) values: Vec<f64>,
}

const W: f64 = 720.0;
const H: f64 = 240.0;
const LEFT: f64 = 56.0;
const BOTTOM: f64 = 36.0;
const TOP: f64 = 24.0;

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if v <= m * p {
            return m * p;
        }
    }
    10.0 * p
}

/// The top of the y axis: the largest value of any series, rounded up.
fn top_of(series: &[Series<'_>]) -> f64 {
    nice_max(
        series
            .iter()
            .flat_map(|s| s.values.iter().copied())
            .fold(0.0, f64::max),
    )
}

fn fmt_tick(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn frame(out: &mut String, title: &str, ymax: f64, y_label: &str) {
    let _ = write!(
        out,
        r##"<svg class="chart" role="img" xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}"><title>{t}</title><rect x="0" y="0" width="{W}" height="{H}" fill="#ffffff"/>"##,
        t = esc(title)
    );
    for i in 0..=4 {
        let v = ymax * f64::from(i) / 4.0;
        let y = H - BOTTOM - (H - BOTTOM - TOP) * f64::from(i) / 4.0;
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{x2}" y2="{y:.1}" stroke="#e0e0e0"/><text x="{tx}" y="{ty:.1}" font-size="11" text-anchor="end" fill="#444">{v}</text>"##,
            x2 = W - 8.0,
            tx = LEFT - 4.0,
            ty = y + 4.0,
            v = fmt_tick(v)
        );
    }
    let _ = write!(
        out,
        r##"<text x="12" y="{y}" font-size="11" fill="#444" transform="rotate(-90 12 {y})" text-anchor="middle">{l}</text>"##,
        y = f64::midpoint(H - BOTTOM, TOP),
        l = esc(y_label)
    );
}

fn legend(out: &mut String, series: &[Series<'_>]) {
    let mut x = LEFT;
    for s in series {
        let _ = write!(
            out,
            r##"<rect x="{x}" y="6" width="10" height="10" fill="{c}"/><text x="{tx}" y="15" font-size="11" fill="#222">{n}</text>"##,
            c = esc(s.color),
            tx = x + 14.0,
            n = esc(s.name)
        );
        x += 22.0 + 7.0 * s.name.chars().count() as f64;
    }
}

/// Grouped bars: one group per label, one bar per series.
pub(crate) fn bars(title: &str, labels: &[String], series: &[Series<'_>], y_label: &str) -> String {
    let mut out = String::new();
    let ymax = top_of(series);
    frame(&mut out, title, ymax, y_label);
    let n = labels.len().max(1) as f64;
    let group = (W - LEFT - 8.0) / n;
    let bar = (group * 0.8) / series.len().max(1) as f64;
    for (i, label) in labels.iter().enumerate() {
        let gx = LEFT + group * i as f64 + group * 0.1;
        for (j, s) in series.iter().enumerate() {
            let v = s.values.get(i).copied().unwrap_or(0.0).max(0.0);
            let h = (H - BOTTOM - TOP) * v / ymax;
            let _ = write!(
                out,
                r#"<rect class="bar" x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="{c}"><title>{n} {l}: {v}</title></rect>"#,
                x = gx + bar * j as f64,
                y = H - BOTTOM - h,
                w = (bar - 1.0).max(1.0),
                c = esc(s.color),
                n = esc(s.name),
                l = esc(label),
                v = fmt_tick(v)
            );
        }
        let _ = write!(
            out,
            r##"<text x="{x:.1}" y="{y}" font-size="11" text-anchor="middle" fill="#222">{l}</text>"##,
            x = gx + group * 0.4,
            y = H - BOTTOM + 14.0,
            l = esc(label)
        );
    }
    legend(&mut out, series);
    out.push_str("</svg>");
    out
}

/// Lines over `xs` (seconds).
pub(crate) fn lines(title: &str, xs: &[f64], series: &[Series<'_>], y_label: &str) -> String {
    let mut out = String::new();
    let ymax = top_of(series);
    frame(&mut out, title, ymax, y_label);
    let xmax = xs.iter().copied().fold(0.0, f64::max).max(1.0);
    let px = |x: f64| LEFT + (W - LEFT - 8.0) * x / xmax;
    for s in series {
        let pts: Vec<String> = xs
            .iter()
            .zip(&s.values)
            .map(|(x, y)| {
                format!(
                    "{:.1},{:.1}",
                    px(*x),
                    H - BOTTOM - (H - BOTTOM - TOP) * y.max(0.0) / ymax
                )
            })
            .collect();
        let _ = write!(
            out,
            r#"<polyline class="line" fill="none" stroke="{c}" stroke-width="2" points="{p}"><title>{n}</title></polyline>"#,
            c = esc(s.color),
            p = pts.join(" "),
            n = esc(s.name)
        );
    }
    for i in 0..=4 {
        let x = xmax * f64::from(i) / 4.0;
        let _ = write!(
            out,
            r##"<text x="{tx:.1}" y="{y}" font-size="11" text-anchor="middle" fill="#444">{v} s</text>"##,
            tx = px(x),
            y = H - BOTTOM + 14.0,
            v = if xmax >= 20.0 {
                fmt_tick(x.round())
            } else {
                format!("{x:.1}")
            }
        );
    }
    legend(&mut out, series);
    out.push_str("</svg>");
    out
}
