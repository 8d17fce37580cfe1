//! The comparison as text (side-by-side tables) or JSON, and input text made safe to print.

use super::comparison::{Comparison, PairReport};
use super::thresholds::{Row, round2};
use serde_json::{Value, json};
use std::path::Path;

impl Comparison {
    pub(super) fn render(&self) -> String {
        let t = &self.thresholds;
        let mut out = format!(
            "compare: thresholds: RSS peak +{}%, eBPF ns +{}%, chain p99/max +{}, drops +{} and +{}%; \
             failing checks and self-check failures from 0 always count\n",
            fmt_num(Some(t.rss_growth_pct)),
            fmt_num(Some(t.ns_growth_pct)),
            t.chain_growth,
            t.drop_growth,
            fmt_num(Some(t.drop_growth_pct)),
        );
        for note in &self.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        for p in &self.pairs {
            out.push_str(&render_pair(p));
        }
        if !self.base_only.is_empty() {
            out.push_str(&format!(
                "\nonly in base (not compared): {}\n",
                self.base_only.join(", ")
            ));
        }
        if !self.new_only.is_empty() {
            out.push_str(&format!(
                "\nonly in new (not compared): {}\n",
                self.new_only.join(", ")
            ));
        }
        for (path, why) in &self.skipped {
            out.push_str(&format!("skipped {}: {}\n", shown_path(path), shown(why)));
        }
        let n = self.regressions();
        let worse = self.pairs.iter().filter(|p| p.regressions() > 0).count();
        out.push_str(&if n == 0 {
            format!(
                "\ncompare: no regression in {} compared runs\n",
                self.pairs.len()
            )
        } else {
            format!(
                "\ncompare: REGRESSED: {n} regressions in {worse} of {} compared runs\n",
                self.pairs.len()
            )
        });
        out
    }

    pub(super) fn to_json(&self) -> Value {
        json!({
            "regressed": self.regressed(),
            "regressions": self.regressions(),
            "thresholds": self.thresholds.to_json(),
            "pairs": self.pairs.iter().map(pair_json).collect::<Vec<_>>(),
            "base_only": self.base_only,
            "new_only": self.new_only,
            "skipped": self.skipped.iter()
                .map(|(p, why)| json!({"path": p.display().to_string(), "why": why}))
                .collect::<Vec<_>>(),
            "notes": self.notes,
        })
    }
}

pub(super) fn pair_json(p: &PairReport) -> Value {
    json!({
        "run": p.label,
        "base": p.base_path.display().to_string(),
        "new": p.new_path.display().to_string(),
        "accel": {"base": p.accel.0, "new": p.accel.1},
        "regressions": p.regressions(),
        "figures": p.rows.iter().map(|r| json!({
            "name": r.name,
            "base": r.base,
            "new": r.new,
            "delta": delta(r),
            "judged": r.judged,
            "regression": r.regression,
        })).collect::<Vec<_>>(),
        "checks": p.checks.as_ref().map(|c| json!({
            "base": {"passed": c.base_passed, "failed": c.base_failed},
            "new": {"passed": c.new_passed, "failed": c.new_failed},
            "regressed": c.regressed.iter()
                .map(|(name, detail, was)| json!({"name": name, "detail": detail, "base": was}))
                .collect::<Vec<_>>(),
            "still_failing": c.still_failing,
            "fixed": c.fixed,
        })),
        "notes": p.notes,
    })
}

pub(super) fn delta(r: &Row) -> Option<f64> {
    Some(round2(r.new? - r.base?))
}

pub(super) fn render_pair(p: &PairReport) -> String {
    let mut out = format!(
        "\n== {} (accel {} / {})\n   base {}\n   new  {}\n",
        p.label,
        shown(&p.accel.0),
        shown(&p.accel.1),
        shown_path(&p.base_path),
        shown_path(&p.new_path)
    );
    for note in &p.notes {
        out.push_str(&format!("   note: {note}\n"));
    }
    let cells: Vec<[String; 5]> = p
        .rows
        .iter()
        .map(|r| {
            [
                r.name.to_owned(),
                fmt_num(r.base),
                fmt_num(r.new),
                delta(r).map_or_else(|| "-".to_owned(), fmt_delta),
                match (&r.regression, r.judged) {
                    (Some(why), _) => format!("REGRESSED: {why}"),
                    (None, true) => "ok".to_owned(),
                    (None, false) => String::new(),
                },
            ]
        })
        .collect();
    let header = [
        "figure".to_owned(),
        "base".to_owned(),
        "new".to_owned(),
        "delta".to_owned(),
        String::new(),
    ];
    let mut width = [0usize; 4];
    for row in std::iter::once(&header).chain(&cells) {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&cells) {
        let line = format!(
            "   {:<w0$}  {:>w1$}  {:>w2$}  {:>w3$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            w0 = width[0],
            w1 = width[1],
            w2 = width[2],
            w3 = width[3],
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if let Some(c) = &p.checks {
        out.push_str(&format!(
            "   checks: base {} passed, {} failed; new {} passed, {} failed\n",
            c.base_passed, c.base_failed, c.new_passed, c.new_failed
        ));
        for (name, detail, was) in &c.regressed {
            out.push_str(&format!(
                "   REGRESSED check {} ({was}): {}\n",
                shown(name),
                shown(detail)
            ));
        }
        if !c.still_failing.is_empty() {
            out.push_str(&format!(
                "   failing in both: {}\n",
                shown(&c.still_failing.join(", "))
            ));
        }
        if !c.fixed.is_empty() {
            out.push_str(&format!(
                "   fixed in new: {}\n",
                shown(&c.fixed.join(", "))
            ));
        }
    }
    out
}

/// A number for the table: integers without decimals, others with two; `-` when absent.
pub(super) fn fmt_num(x: Option<f64>) -> String {
    match x {
        None => "-".to_owned(),
        Some(x) if x.fract() == 0.0 && x.abs() < 1e15 => format!("{x:.0}"),
        Some(x) => format!("{x:.2}"),
    }
}

pub(super) fn fmt_delta(d: f64) -> String {
    if d > 0.0 {
        format!("+{}", fmt_num(Some(d)))
    } else {
        fmt_num(Some(d))
    }
}

/// Text from an input file, safe to print: control characters and the Unicode line, paragraph
/// and direction marks are escaped (a result file's strings come from a VM and its user).
pub(super) fn shown(s: &str) -> String {
    s.chars()
        .map(|c| {
            let risky = c.is_control()
                || matches!(
                    c,
                    '\u{2028}' | '\u{2029}' | '\u{061c}' | '\u{200e}' | '\u{200f}'
                )
                || ('\u{202a}'..='\u{202e}').contains(&c)
                || ('\u{2066}'..='\u{2069}').contains(&c);
            if risky {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

pub(super) fn shown_path(p: &Path) -> String {
    shown(&p.to_string_lossy())
}
