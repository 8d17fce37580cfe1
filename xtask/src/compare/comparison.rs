//! The comparison itself: each matched pair's figures and lab checks, BASE against NEW.

use super::input::{Kind, Run, load_inputs};
use super::render::{shown, shown_path};
use super::thresholds::{Row, Thresholds, rows};
use anyhow::Result;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The lab checks of both sides, compared by name.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct CheckDiff {
    pub(super) base_passed: usize,
    pub(super) base_failed: usize,
    pub(super) new_passed: usize,
    pub(super) new_failed: usize,
    /// Failing in NEW, not failing in BASE: (name, NEW's detail, what BASE had).
    pub(super) regressed: Vec<(String, String, &'static str)>,
    pub(super) still_failing: Vec<String>,
    pub(super) fixed: Vec<String>,
}

/// Check names made unique (a repeated name gets `#2`, `#3`...), with their outcome.
pub(super) fn keyed(checks: &[ctscope_lab::Check]) -> BTreeMap<String, &ctscope_lab::Check> {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    checks
        .iter()
        .map(|c| {
            let n = seen.entry(c.name.as_str()).or_default();
            *n += 1;
            let key = if *n == 1 {
                c.name.clone()
            } else {
                format!("{}#{n}", c.name)
            };
            (key, c)
        })
        .collect()
}

pub(super) fn diff_checks(base: &[ctscope_lab::Check], new: &[ctscope_lab::Check]) -> CheckDiff {
    let (b, n) = (keyed(base), keyed(new));
    let count =
        |cs: &[ctscope_lab::Check], passed: bool| cs.iter().filter(|c| c.passed == passed).count();
    let mut d = CheckDiff {
        base_passed: count(base, true),
        base_failed: count(base, false),
        new_passed: count(new, true),
        new_failed: count(new, false),
        ..CheckDiff::default()
    };
    for (key, c) in &n {
        match (c.passed, b.get(key).map(|bc| bc.passed)) {
            (false, Some(true)) => {
                d.regressed
                    .push((key.clone(), c.detail.clone(), "passed in base"));
            }
            (false, None) => d
                .regressed
                .push((key.clone(), c.detail.clone(), "not in base")),
            (false, Some(false)) => d.still_failing.push(key.clone()),
            (true, Some(false)) => d.fixed.push(key.clone()),
            (true, _) => {}
        }
    }
    d
}

/// Scenario files by scenario name, read once.
pub(super) struct Scenarios {
    pub(super) dir: PathBuf,
    pub(super) by_name: Option<BTreeMap<String, ctscope_lab::Scenario>>,
}

impl Scenarios {
    pub(super) fn get(&mut self, name: &str) -> Option<&ctscope_lab::Scenario> {
        let dir = &self.dir;
        self.by_name
            .get_or_insert_with(|| {
                let Ok(entries) = std::fs::read_dir(dir) else {
                    return BTreeMap::new();
                };
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                    .filter_map(|p| ctscope_lab::Scenario::load(&p).ok())
                    .map(|s| (s.name.clone(), s))
                    .collect()
            })
            .get(name)
    }
}

/// One matched pair, compared.
pub(super) struct PairReport {
    pub(super) label: String,
    pub(super) base_path: PathBuf,
    pub(super) new_path: PathBuf,
    pub(super) accel: (String, String),
    pub(super) rows: Vec<Row>,
    pub(super) checks: Option<CheckDiff>,
    pub(super) notes: Vec<String>,
}

impl PairReport {
    pub(super) fn regressions(&self) -> usize {
        self.rows.iter().filter(|r| r.regression.is_some()).count()
            + self.checks.as_ref().map_or(0, |c| c.regressed.len())
    }
}

pub(super) fn compare_pair(
    base: &Run,
    new: &Run,
    t: &Thresholds,
    scenarios: &mut Scenarios,
) -> PairReport {
    let mut notes = Vec::new();
    let accel = (base.accel().to_owned(), new.accel().to_owned());
    let judge_ns = accel.0 == accel.1;
    if !judge_ns {
        notes.push(format!(
            "accelerators differ ({} / {}): eBPF ns are not comparable, not judged",
            shown(&accel.0),
            shown(&accel.1)
        ));
    }
    let version = |r: &Run| {
        r.value
            .get("kernel_package_version")
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    if let (Some(b), Some(n)) = (version(base), version(new))
        && b != n
    {
        notes.push(format!(
            "kernel package versions differ: {} / {}",
            shown(&b),
            shown(&n)
        ));
    }
    let checks = match base.kind {
        Kind::Bench => None,
        Kind::Lab => {
            if let Some(s) = scenarios.get(&new.scenario) {
                Some(diff_checks(
                    &ctscope_lab::check(&base.value, s),
                    &ctscope_lab::check(&new.value, s),
                ))
            } else {
                notes.push(format!(
                    "no scenario `{}` in {}: lab checks not compared",
                    shown(&new.scenario),
                    shown_path(&scenarios.dir)
                ));
                None
            }
        }
    };
    PairReport {
        label: if base.key() == new.key() {
            base.label()
        } else {
            format!("{} / {}", base.label(), new.label())
        },
        base_path: base.path.clone(),
        new_path: new.path.clone(),
        accel,
        rows: rows(base.kind, &base.value, &new.value, t, judge_ns),
        checks,
        notes,
    }
}

/// The whole comparison.
pub(super) struct Comparison {
    pub(super) thresholds: Thresholds,
    pub(super) pairs: Vec<PairReport>,
    pub(super) base_only: Vec<String>,
    pub(super) new_only: Vec<String>,
    pub(super) skipped: Vec<(PathBuf, String)>,
    pub(super) notes: Vec<String>,
}

pub(super) fn compare(
    base: &Path,
    new: &Path,
    scenarios: &Path,
    t: Thresholds,
    ignore_kernel: bool,
) -> Result<Comparison> {
    let inputs = load_inputs(base, new, ignore_kernel)?;
    let mut scenarios = Scenarios {
        dir: scenarios.to_path_buf(),
        by_name: None,
    };
    let pairs = inputs
        .pairs
        .iter()
        .map(|(b, n)| compare_pair(b, n, &t, &mut scenarios))
        .collect();
    Ok(Comparison {
        thresholds: t,
        pairs,
        base_only: inputs.base_only.iter().map(Run::label).collect(),
        new_only: inputs.new_only.iter().map(Run::label).collect(),
        skipped: inputs.skipped,
        notes: inputs.notes,
    })
}

impl Comparison {
    pub(super) fn regressions(&self) -> usize {
        self.pairs.iter().map(PairReport::regressions).sum()
    }

    pub(super) fn regressed(&self) -> bool {
        self.regressions() > 0
    }
}
