//! Reading the inputs: result files and directories of them, classified (lab or bench) and
//! matched into pairs by kernel and scenario.

use super::render::{shown, shown_path};
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Result files larger than this are refused (a lab result is well under 1 MiB).
const MAX_RESULT_BYTES: u64 = 64 << 20;

/// What one result file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Lab,
    Bench,
}

/// One result file, read.
#[derive(Debug, Clone)]
pub(super) struct Run {
    pub(super) kind: Kind,
    pub(super) kernel: String,
    pub(super) scenario: String,
    pub(super) path: PathBuf,
    pub(super) value: Value,
}

impl Run {
    pub(super) fn key(&self) -> (String, String) {
        (self.kernel.clone(), self.scenario.clone())
    }

    pub(super) fn label(&self) -> String {
        format!("{} {}", shown(&self.kernel), shown(&self.scenario))
    }

    /// The accelerator the run used: results from before `accel` was recorded all ran
    /// under TCG (the only accelerator xtask used then).
    pub(super) fn accel(&self) -> &str {
        self.value
            .get("accel")
            .and_then(Value::as_str)
            .unwrap_or("tcg")
    }
}

/// What kind of result `v` is, with its kernel and scenario; `Err` says why it is neither.
pub(super) fn classify(v: &Value) -> Result<(Kind, String, String), String> {
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    if !v.is_object() {
        return Err("not a JSON object".to_owned());
    }
    if v.get("variants").is_some_and(Value::is_object) {
        let kernel = text("kernel").ok_or("a bench summary without `kernel`")?;
        return Ok((Kind::Bench, kernel, "bench".to_owned()));
    }
    if v.get("bench").is_some_and(Value::is_array) {
        return Err(
            "the raw result of a bench run: compare bench/results/<kernel>.json instead".to_owned(),
        );
    }
    match (text("kernel"), text("scenario"), v.get("truth")) {
        (Some(kernel), Some(scenario), Some(_)) => Ok((Kind::Lab, kernel, scenario)),
        _ => Err("neither a lab result (kernel, scenario, truth) nor a bench summary".to_owned()),
    }
}

pub(super) fn read_json(path: &Path) -> Result<Value> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", shown_path(path)))?;
    if meta.len() > MAX_RESULT_BYTES {
        bail!(
            "{} is {} bytes: larger than any result ({MAX_RESULT_BYTES} at most)",
            shown_path(path),
            meta.len()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {}", shown_path(path)))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", shown_path(path)))
}

pub(super) fn load_file(path: &Path) -> Result<Run> {
    let value = read_json(path)?;
    let (kind, kernel, scenario) =
        classify(&value).map_err(|why| anyhow::anyhow!("{}: {why}", shown_path(path)))?;
    Ok(Run {
        kind,
        kernel,
        scenario,
        path: path.to_path_buf(),
        value,
    })
}

/// The results of one directory (its *.json, sorted), and the files skipped with why.
pub(super) struct DirRuns {
    pub(super) runs: Vec<Run>,
    pub(super) skipped: Vec<(PathBuf, String)>,
}

pub(super) fn load_dir(dir: &Path) -> Result<DirRuns> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", shown_path(dir)))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut out = DirRuns {
        runs: Vec::new(),
        skipped: Vec::new(),
    };
    let mut seen: BTreeMap<(String, String), PathBuf> = BTreeMap::new();
    for path in files {
        let value = match read_json(&path) {
            Ok(v) => v,
            Err(e) => {
                out.skipped.push((path, format!("{e:#}")));
                continue;
            }
        };
        let (kind, kernel, scenario) = match classify(&value) {
            Ok(c) => c,
            Err(why) => {
                out.skipped.push((path, why));
                continue;
            }
        };
        let run = Run {
            kind,
            kernel,
            scenario,
            path,
            value,
        };
        if let Some(other) = seen.insert(run.key(), run.path.clone()) {
            bail!(
                "{} and {} are both {}: which one to compare is ambiguous",
                shown_path(&other),
                shown_path(&run.path),
                run.label()
            );
        }
        out.runs.push(run);
    }
    Ok(out)
}

/// BASE and NEW, read and matched.
pub(super) struct Inputs {
    pub(super) pairs: Vec<(Run, Run)>,
    pub(super) base_only: Vec<Run>,
    pub(super) new_only: Vec<Run>,
    pub(super) skipped: Vec<(PathBuf, String)>,
    pub(super) notes: Vec<String>,
}

pub(super) fn load_inputs(base: &Path, new: &Path, ignore_kernel: bool) -> Result<Inputs> {
    match (base.is_dir(), new.is_dir()) {
        (false, false) => {
            let (b, n) = (load_file(base)?, load_file(new)?);
            if b.kind != n.kind {
                bail!(
                    "{} is a {} and {} a {}: nothing to compare",
                    shown_path(base),
                    kind_name(b.kind),
                    shown_path(new),
                    kind_name(n.kind)
                );
            }
            let mut notes = Vec::new();
            if b.key() != n.key() {
                notes.push(format!(
                    "comparing different runs as asked: base is {}, new is {}",
                    b.label(),
                    n.label()
                ));
            }
            Ok(Inputs {
                pairs: vec![(b, n)],
                base_only: Vec::new(),
                new_only: Vec::new(),
                skipped: Vec::new(),
                notes,
            })
        }
        (true, true) => {
            let (b, n) = (load_dir(base)?, load_dir(new)?);
            let mut inputs = pair_runs(b.runs, n.runs, ignore_kernel)?;
            inputs.skipped = b.skipped.into_iter().chain(n.skipped).collect();
            if inputs.pairs.is_empty() {
                bail!(
                    "no result in {} matches one in {} by {} (base has {}, new has {}{})",
                    shown_path(base),
                    shown_path(new),
                    if ignore_kernel {
                        "scenario"
                    } else {
                        "kernel and scenario"
                    },
                    list_or_none(&inputs.base_only),
                    list_or_none(&inputs.new_only),
                    if ignore_kernel {
                        ""
                    } else {
                        "; --ignore-kernel matches by scenario alone"
                    }
                );
            }
            Ok(inputs)
        }
        _ => bail!(
            "BASE and NEW must both be files or both be directories ({} and {})",
            shown_path(base),
            shown_path(new)
        ),
    }
}

pub(super) fn list_or_none(runs: &[Run]) -> String {
    if runs.is_empty() {
        "none".to_owned()
    } else {
        runs.iter().map(Run::label).collect::<Vec<_>>().join(", ")
    }
}

pub(super) fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Lab => "lab result",
        Kind::Bench => "bench summary",
    }
}

/// Matches runs by (kernel, scenario), unique on each side (see [`load_dir`]), or by scenario
/// alone with `ignore_kernel`, where a scenario twice on one side is an error.
pub(super) fn pair_runs(base: Vec<Run>, new: Vec<Run>, ignore_kernel: bool) -> Result<Inputs> {
    let key = |r: &Run| {
        if ignore_kernel {
            (String::new(), r.scenario.clone())
        } else {
            r.key()
        }
    };
    if ignore_kernel {
        for side in [&base, &new] {
            let mut seen = std::collections::BTreeSet::new();
            for r in side {
                if !seen.insert(r.scenario.clone()) {
                    bail!(
                        "--ignore-kernel: scenario {} is there for more than one kernel",
                        shown(&r.scenario)
                    );
                }
            }
        }
    }
    let mut new_by_key: BTreeMap<(String, String), Run> =
        new.into_iter().map(|r| (key(&r), r)).collect();
    let mut pairs = Vec::new();
    let mut base_only = Vec::new();
    for b in base {
        match new_by_key.remove(&key(&b)) {
            Some(n) if n.kind != b.kind => bail!(
                "{} is a {} and {} a {}: nothing to compare",
                shown_path(&b.path),
                kind_name(b.kind),
                shown_path(&n.path),
                kind_name(n.kind)
            ),
            Some(n) => pairs.push((b, n)),
            None => base_only.push(b),
        }
    }
    Ok(Inputs {
        pairs,
        base_only,
        new_only: new_by_key.into_values().collect(),
        skipped: Vec::new(),
        notes: Vec::new(),
    })
}
