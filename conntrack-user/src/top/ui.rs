//! Drawing `top`'s screen from its [`State`]: a pure function of the state and the frame's
//! size, so that a resize redraws the same picture at the new size.

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{
        Bar, BarChart, BarGroup, Block, Borders, Cell, Clear, Gauge, Paragraph, Row, Sparkline,
        Table,
    },
};

use super::state::{REASONS, Row as StateRow, State};
use crate::report::{ChainStats, Mode};

fn or_q(v: Option<u64>) -> String {
    v.map_or_else(|| "?".into(), |v| v.to_string())
}

fn rate(v: Option<f64>) -> String {
    v.map_or_else(|| "?".into(), |v| format!("{v:.0}"))
}

pub(crate) fn draw(f: &mut Frame<'_>, s: &State) {
    let [head, gauge, sparks, middle, tables, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(3),
        Constraint::Length(5),
        Constraint::Length(10),
        Constraint::Min(5),
        Constraint::Length(1),
    ])
    .areas(f.area());
    header(f, head, s);
    table_gauge(f, gauge, s);
    rates(f, sparks, s);
    chains(f, middle, s);
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(tables);
    rows_table(f, left, "network namespaces", &s.netns, s);
    rows_table(f, right, "containers", &s.containers, s);
    f.render_widget(
        Paragraph::new(format!(
            " q quit  s sort ({})  p {}  h help",
            s.sort.name(),
            if s.paused { "resume" } else { "pause" }
        ))
        .style(Style::default().add_modifier(Modifier::REVERSED)),
        foot,
    );
    if s.help {
        help(f, s);
    }
}

fn header(f: &mut Frame<'_>, area: Rect, s: &State) {
    let mode = s.mode.map_or_else(|| "?".into(), |m| m.to_string());
    let mut spans = vec![
        Span::styled("ctscope top", Style::default().add_modifier(Modifier::BOLD)),
        Span::raw(format!(
            "  kernel {}  mode {mode}  {:.0} s",
            s.release, s.elapsed_s
        )),
    ];
    if matches!(s.mode, Some(Mode::Procfs)) {
        spans.push(Span::styled(
            "  procfs: chain lengths MODELED, drops as the kernel counts them",
            Style::default().fg(Color::Yellow),
        ));
    }
    if s.paused {
        spans.push(Span::styled("  PAUSED", Style::default().fg(Color::Red)));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn table_gauge(f: &mut Frame<'_>, area: Rect, s: &State) {
    let t = &s.table;
    let ratio = t
        .count
        .zip(t.max)
        .filter(|(_, m)| *m > 0)
        .map_or(0.0, |(c, m)| (c as f64 / m as f64).clamp(0.0, 1.0));
    let color = if ratio >= 0.9 {
        Color::Red
    } else if ratio >= 0.7 {
        Color::Yellow
    } else {
        Color::Green
    };
    f.render_widget(
        Gauge::default()
            .block(Block::default().borders(Borders::ALL).title(format!(
                " count {} / max {}   buckets {}   load factor {} ",
                or_q(t.count),
                or_q(t.max),
                or_q(t.buckets),
                t.load_factor.map_or_else(|| "?".into(), |l| format!("{l:.2}"))
            )))
            .gauge_style(Style::default().fg(color))
            .ratio(ratio)
            .label(format!("{:.1}%", ratio * 100.0)),
        area,
    );
}

fn rates(f: &mut Frame<'_>, area: Rect, s: &State) {
    let [l, r] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
    let r0 = s.rates.as_ref();
    let inserts: Vec<u64> = s.inserts_history.iter().copied().collect();
    let drops: Vec<u64> = s.drops_history.iter().copied().collect();
    // The newest at the right edge: as many as fit.
    let tail = |v: &[u64], a: Rect| {
        v[v.len().saturating_sub(a.width.saturating_sub(2) as usize)..].to_vec()
    };
    f.render_widget(
        Sparkline::default()
            .block(Block::default().borders(Borders::ALL).title(format!(
                " inserts/s {} ",
                rate(r0.and_then(|r| r.inserts_per_s))
            )))
            .data(tail(&inserts, l))
            .style(Style::default().fg(Color::Cyan)),
        l,
    );
    let by_reason: Vec<String> = REASONS
        .iter()
        .map(|reason| {
            let v = r0
                .and_then(|r| r.drops_per_s.iter().find(|(k, _)| k == reason))
                .and_then(|(_, v)| *v);
            format!("{reason} {}", rate(v))
        })
        .collect();
    let kernel = r0
        .and_then(|r| r.kernel_drop_per_s)
        .map(|v| format!("  kernel drop {v:.0}"))
        .unwrap_or_default();
    f.render_widget(
        Sparkline::default()
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(format!(" drops/s: {}{kernel} ", by_reason.join("  "))),
            )
            .data(tail(&drops, r))
            .style(Style::default().fg(Color::Red)),
        r,
    );
}

/// Share of inserts per chain length, in per mille, lengths 1..=8 and 9+.
fn shares(c: &ChainStats) -> Vec<(String, u64)> {
    let total = c.samples.max(1) as f64;
    let mut out: Vec<(String, u64)> = (1..=8u32)
        .map(|len| {
            let n = c
                .histogram
                .iter()
                .find(|(l, _)| *l == len)
                .map_or(0, |(_, n)| *n);
            (len.to_string(), (n as f64 * 1000.0 / total).round() as u64)
        })
        .collect();
    let more: u64 = c
        .histogram
        .iter()
        .filter(|(l, _)| *l > 8)
        .map(|(_, n)| *n)
        .sum();
    out.push(("9+".into(), (more as f64 * 1000.0 / total).round() as u64));
    out
}

fn chains(f: &mut Frame<'_>, area: Rect, s: &State) {
    let measured = s.chain.as_ref().map(shares);
    let model = s.model.as_ref().map(shares);
    let groups: Vec<BarGroup<'_>> = (0..9)
        .map(|i| {
            let mut bars = Vec::new();
            if let Some(m) = &measured {
                bars.push(
                    Bar::default()
                        .value(m[i].1)
                        .style(Style::default().fg(Color::Cyan)),
                );
            }
            if let Some(m) = &model {
                bars.push(
                    Bar::default()
                        .value(m[i].1)
                        .style(Style::default().fg(Color::DarkGray)),
                );
            }
            let label = measured
                .as_ref()
                .or(model.as_ref())
                .map_or_else(String::new, |m| m[i].0.clone());
            BarGroup::default().label(Line::from(label)).bars(&bars)
        })
        .collect();
    let stats = |c: &Option<ChainStats>| {
        c.as_ref().map_or_else(
            || "none".to_string(),
            |c| format!("mean {:.2} p99 {} max {}", c.mean, c.p99, c.max),
        )
    };
    let title = format!(
        " chain length after insert, per mille: measured (cyan) {}; uniform model (grey) {} ",
        stats(&s.chain),
        stats(&s.model)
    );
    let mut chart = BarChart::default()
        .block(Block::default().borders(Borders::ALL).title(title))
        .bar_width(2)
        .bar_gap(0)
        .group_gap(2)
        .max(1000);
    for g in groups {
        chart = chart.data(g);
    }
    f.render_widget(chart, area);
}

fn rows_table(f: &mut Frame<'_>, area: Rect, title: &str, rows: &[StateRow], s: &State) {
    let header = Row::new(["name", "kind", "entries", "inserts", "drops"])
        .style(Style::default().add_modifier(Modifier::BOLD));
    let body: Vec<Row<'_>> = rows
        .iter()
        .map(|r| {
            Row::new(vec![
                Cell::from(r.name.clone()),
                Cell::from(r.kind.clone()),
                Cell::from(or_q(r.entries)),
                Cell::from(or_q(r.inserts)),
                Cell::from(or_q(r.drops)),
            ])
        })
        .collect();
    let shown = if rows.is_empty() { " (none)" } else { "" };
    f.render_widget(
        Table::new(
            body,
            [
                Constraint::Min(12),
                Constraint::Length(9),
                Constraint::Length(9),
                Constraint::Length(9),
                Constraint::Length(7),
            ],
        )
        .header(header)
        .block(
            Block::default()
                .borders(Borders::ALL)
                .title(format!(" {title} by {}{shown} ", s.sort.name())),
        ),
        area,
    );
}

fn help(f: &mut Frame<'_>, s: &State) {
    let area = f.area();
    let w = area.width.min(72);
    let h = area.height.min(14);
    let popup = Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    };
    let mut lines = vec![
        Line::from("q, Esc, Ctrl-C  quit (the terminal is restored)"),
        Line::from("s               sort by entries, inserts, drops, name"),
        Line::from("p, space        pause / resume sampling the screen"),
        Line::from("h, ?            this help"),
        Line::from(""),
        Line::from("entries: live entries now; inserts and drops: since ctscope started."),
        Line::from("containers: their own namespace's entries plus those NATed"),
        Line::from("in the host's namespace from their addresses."),
    ];
    if let Some(n) = &s.notice {
        lines.push(Line::from(""));
        lines.push(Line::from(n.clone()));
    }
    f.render_widget(Clear, popup);
    f.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" help ")),
        popup,
    );
}
