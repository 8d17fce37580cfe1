//! The deployment files agree with the metrics ctscope exports: the Grafana
//! dashboard queries only sample names docs/metrics.md lists, every family
//! that serve/metrics.rs declares is documented there, every dashboard
//! query is scoped to the `$instance` variable, and the Kubernetes and
//! systemd files keep the settings ctscope needs and the bounds it runs in.
//!
//! Text files only: the metrics module is crate-private, and no YAML crate
//! is a dependency (the manifest is checked line by line).

use std::{collections::BTreeSet, fs, path::PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate is in the workspace")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let p = repo().join(rel);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

fn ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Every `ctscope_[a-z0-9_]+` identifier in `text`, whole (not the tail of
/// a longer identifier), with its byte offset just past its end.
fn metric_names(text: &str) -> Vec<(String, usize)> {
    const PREFIX: &str = "ctscope_";
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find(PREFIX).map(|i| from + i) {
        let mut end = at + PREFIX.len();
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        let whole_start = at == 0 || !ident_byte(bytes[at - 1]);
        let whole_end = end == bytes.len() || !ident_byte(bytes[end]);
        if whole_start && whole_end && end > at + PREFIX.len() {
            out.push((text[at..end].to_string(), end));
        }
        from = end.max(at + 1);
    }
    out
}

/// The metric names inside backtick spans of a Markdown text.
fn backticked_names(md: &str) -> BTreeSet<String> {
    md.split('`')
        .skip(1)
        .step_by(2)
        .flat_map(|span| metric_names(span).into_iter().map(|(n, _)| n))
        .collect()
}

/// Every `expr` of every panel target, rows' nested panels included.
fn dashboard_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(o) => {
            if let Some(serde_json::Value::Array(targets)) = o.get("targets") {
                for t in targets {
                    if let Some(e) = t.get("expr").and_then(serde_json::Value::as_str) {
                        out.push(e.to_string());
                    }
                }
            }
            for (k, x) in o {
                // Template variables query metrics too, but are not panels.
                if k != "templating" {
                    dashboard_exprs(x, out);
                }
            }
        }
        serde_json::Value::Array(a) => {
            for x in a {
                dashboard_exprs(x, out);
            }
        }
        _ => {}
    }
}

fn dashboard() -> Vec<String> {
    let text = read("deploy/grafana/ctscope-dashboard.json");
    let json: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("deploy/grafana/ctscope-dashboard.json is not valid JSON: {e}"));
    let mut exprs = Vec::new();
    dashboard_exprs(&json, &mut exprs);
    assert!(
        exprs.len() >= 10,
        "deploy/grafana/ctscope-dashboard.json: only {} panel queries (`expr`) found; the panels' targets were not read",
        exprs.len()
    );
    exprs
}

#[test]
fn the_dashboard_queries_only_documented_sample_names() {
    let documented = backticked_names(&read("docs/metrics.md"));
    assert!(
        !documented.is_empty(),
        "docs/metrics.md names no ctscope_* sample in backticks"
    );
    let mut missing = BTreeSet::new();
    for expr in dashboard() {
        for (name, _) in metric_names(&expr) {
            if !documented.contains(&name) {
                missing.insert(format!("{name} (in `{expr}`)"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "deploy/grafana/ctscope-dashboard.json queries sample names that docs/metrics.md does not list in backticks (no such metric, or undocumented):\n  {}",
        missing.into_iter().collect::<Vec<_>>().join("\n  ")
    );
}

#[test]
fn every_dashboard_selector_is_scoped_to_the_instance_variable() {
    let mut unscoped = Vec::new();
    for expr in dashboard() {
        for (name, end) in metric_names(&expr) {
            let selector = expr[end..]
                .strip_prefix('{')
                .and_then(|rest| rest.split_once('}'))
                .map(|(labels, _)| labels);
            if !selector.is_some_and(|l| l.contains(r#"instance=~"$instance""#)) {
                unscoped.push(format!("{name} in `{expr}`"));
            }
        }
    }
    assert!(
        unscoped.is_empty(),
        "deploy/grafana/ctscope-dashboard.json has selectors without {{instance=~\"$instance\"}}:\n  {}",
        unscoped.join("\n  ")
    );
}

#[test]
fn every_declared_family_is_documented() {
    let src = read("conntrack-user/src/serve/metrics.rs");
    // String literals that are a whole metric name: `"ctscope_..."`.
    let families: BTreeSet<String> = metric_names(&src)
        .into_iter()
        .filter(|(name, end)| {
            src[..*end - name.len()].ends_with('"') && src[*end..].starts_with('"')
        })
        .map(|(name, _)| name)
        .collect();
    assert!(
        families.len() >= 10,
        "conntrack-user/src/serve/metrics.rs: only {} metric family names found (\"ctscope_...\" literals): {families:?}",
        families.len()
    );
    let doc: BTreeSet<String> = metric_names(&read("docs/metrics.md"))
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let missing: Vec<&String> = families.iter().filter(|f| !doc.contains(*f)).collect();
    assert!(
        missing.is_empty(),
        "metric families declared in conntrack-user/src/serve/metrics.rs are not documented in docs/metrics.md: {missing:?}"
    );
}

/// The lines of `text` without `#` comments, trimmed, blank ones left out.
fn settings(text: &str) -> Vec<&str> {
    text.lines()
        .map(|l| l.split_once('#').map_or(l, |(before, _)| before).trim())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn the_daemonset_keeps_what_ctscope_needs_and_drops_the_rest() {
    const FILE: &str = "deploy/kubernetes/daemonset.yaml";
    let text = read(FILE);
    let lines = settings(&text);
    for want in ["hostNetwork: true", "hostPID: true"] {
        assert!(
            lines.contains(&want),
            "{FILE}: no `{want}` (ctscope must see the host's network namespace and processes)"
        );
    }
    // `drop: [ALL]`, `drop: ["ALL"]`, or `drop:` followed by a `- ALL` item.
    let drops_all = lines.iter().enumerate().any(|(i, l)| {
        let Some(rest) = l.strip_prefix("drop:") else {
            return false;
        };
        let rest = rest.trim();
        if rest.is_empty() {
            lines[i + 1..]
                .iter()
                .take_while(|l| l.starts_with('-'))
                .any(|item| item.trim_start_matches('-').trim().trim_matches('"') == "ALL")
        } else {
            rest.trim_matches(|c| c == '[' || c == ']')
                .split(',')
                .any(|item| item.trim().trim_matches('"') == "ALL")
        }
    });
    assert!(
        drops_all,
        "{FILE}: the container's capabilities do not `drop:` `ALL` (only the capabilities added may remain)"
    );
    assert!(
        lines.iter().any(|l| l.contains("/healthz")),
        "{FILE}: no probe on /healthz"
    );
}

#[test]
fn the_systemd_unit_is_bounded() {
    const FILE: &str = "deploy/systemd/ctscope.service";
    let text = read(FILE);
    let lines = settings(&text);
    let bounding = lines
        .iter()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="));
    assert!(
        bounding.is_some_and(|caps| !caps.trim().is_empty()),
        "{FILE}: no non-empty CapabilityBoundingSet= (root must be bounded to the capabilities ctscope needs)"
    );
    assert!(
        lines.contains(&"NoNewPrivileges=yes"),
        "{FILE}: no NoNewPrivileges=yes"
    );
    let exec = lines.iter().find_map(|l| l.strip_prefix("ExecStart="));
    assert!(
        exec.is_some_and(|cmd| {
            let mut words = cmd.split_whitespace();
            words.next().is_some_and(|bin| bin.ends_with("/ctscope"))
                && words.next() == Some("serve")
        }),
        "{FILE}: ExecStart= does not run `ctscope serve` (found {exec:?})"
    );
}
