//! `ctscope serve` scenarios: `/metrics`, scraped at the end of the run, against the kernel.
//!
//! The samples that carry what a report carries (inserts, drops by reason, whether refusals
//! were attributed throughout, the self-check, the mode) are read into a report of the same
//! shape, which the exactness checks ([`super::exact`]) judge as they judge `observe`'s. Then,
//! per container: its entries equal its inserts (nothing expires in a lab run), and its
//! inserts plus its refused connections equal the flows it sent.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{Check, compare, u64_at};

/// The samples of an OpenMetrics (or classic) text: name, labels, value.
pub struct Samples(Vec<(String, BTreeMap<String, String>, f64)>);

/// `k="v",k2="v2"` into a map; `\"`, `\\` and `\n` unescaped.
fn labels(text: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        out.insert(key.trim_start_matches(',').to_string(), value);
        rest = &after[end + 1..];
    }
    Some(out)
}

/// A sample's value as a whole number: `None` when it is negative, fractional, or too large
/// for an f64 to hold it exactly (2^53 and above).
pub fn whole(v: f64) -> Option<u64> {
    (v >= 0.0 && v.fract() == 0.0 && v < 2f64.powi(53)).then_some(v as u64)
}

impl Samples {
    pub fn parse(text: &str) -> Samples {
        let mut out = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => match l.strip_suffix('}').and_then(labels) {
                    Some(l) => (n, l),
                    None => continue,
                },
                None => (series, BTreeMap::new()),
            };
            out.push((name.to_string(), labels, value));
        }
        Samples(out)
    }

    /// The one sample of `name` whose labels include `with`.
    pub fn get(&self, name: &str, with: &[(&str, &str)]) -> Option<f64> {
        let mut found = self.0.iter().filter(|(n, l, _)| {
            n == name
                && with
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        });
        let first = found.next()?;
        found.next().is_none().then_some(first.2)
    }

    /// [`Samples::get`] as a whole number: `None` when it is negative, fractional, or too
    /// large for an f64 to hold it exactly (2^53 and above).
    pub fn whole(&self, name: &str, with: &[(&str, &str)]) -> Option<u64> {
        self.get(name, with).and_then(whole)
    }

    /// Every sample of `name`: its labels and value.
    pub fn series<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = (&'a BTreeMap<String, String>, f64)> + 'a {
        self.0
            .iter()
            .filter(move |(n, ..)| n == name)
            .map(|(_, l, v)| (l, *v))
    }

    /// The sum of every sample of `name`, whatever its labels; `None` when there is none.
    pub(crate) fn all(&self, name: &str) -> Option<f64> {
        self.0
            .iter()
            .filter(|(n, ..)| n == name)
            .map(|(.., v)| *v)
            .reduce(|a, b| a + b)
    }

    fn label(&self, name: &str, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, ..)| n == name)
            .and_then(|(_, l, _)| l.get(key))
            .map(String::as_str)
    }
}

/// What a summary of a serve run shows from its last scrape.
#[derive(Debug, Clone, Default)]
pub struct MetricValues {
    /// `ctscope_build_info`'s mode.
    pub mode: Option<String>,
    pub inserts: Option<u64>,
}

/// [`MetricValues`] of the result's `metrics` (empty without a scrape).
pub fn metric_values(result: &Value) -> MetricValues {
    let s = Samples::parse(result.get("metrics").and_then(Value::as_str).unwrap_or(""));
    MetricValues {
        mode: s.label("ctscope_build_info", "mode").map(str::to_string),
        inserts: s.whole("ctscope_conntrack_inserts_total", &[]),
    }
}

/// The report fields the exactness, mode and doctor checks read, from the samples. Serve
/// exports the self-check's failures as one total: it stands in the first failure counter.
pub(crate) fn as_report(s: &Samples) -> Value {
    let drop =
        |reason: &str| json!(s.whole("ctscope_conntrack_drops_total", &[("reason", reason)]));
    json!({
        "mode": s.label("ctscope_build_info", "mode"),
        "inserts": s.whole("ctscope_conntrack_inserts_total", &[]),
        "drops": {
            "table_full": drop("table_full"),
            "chain_too_long": drop("chain_too_long"),
            "clash": drop("clash"),
            "other": drop("other"),
            "alloc_failed": drop("alloc_failed"),
        },
        "attribution": {
            "throughout": s.get("ctscope_attribution_throughout", &[]).map(|v| v == 1.0),
        },
        "self_check": {
            "walks": s.whole("ctscope_self_check_walks_total", &[]),
            "nulls_mismatch": s.whole("ctscope_self_check_failures_total", &[]),
            "link_mismatch": 0,
            "dir_mismatch": 0,
            "read_errors": 0,
        },
    })
}

/// `metrics`: the scrape is there, whole (OpenMetrics ends with `# EOF`), from attached probes.
pub(crate) fn present_check(result: &Value) -> Check {
    let text = result.get("metrics").and_then(Value::as_str);
    let s = text.map(Samples::parse);
    let attached = s
        .as_ref()
        .and_then(|s| s.get("ctscope_probes_attached", &[]));
    Check::new(
        "metrics",
        text.is_some_and(|t| t.ends_with("# EOF\n")) && attached == Some(1.0),
        match text {
            None => format!("no /metrics scrape ({})", super::exit_and_tail(result)),
            Some(t) => format!(
                "{} samples, # EOF {}, ctscope_probes_attached {attached:?} (1)",
                s.as_ref().map_or(0, |s| s.0.len()),
                if t.ends_with("# EOF\n") {
                    "present"
                } else {
                    "MISSING"
                }
            ),
        },
    )
}

/// `netns-metrics`: the last scrape (after the truth's end snapshot, the counts stable by
/// then, and loopback untracked in the lab so the scrape itself makes no entry) exports each
/// lab namespace's count as the kernel read it (a namespace with nothing in it has no
/// series: 0), and `ctscope_conntrack_entries` is their sum: no namespace counted twice,
/// none left out, none the lab did not make.
pub(crate) fn entries_check(result: &Value, truth: &Value) -> Check {
    let s = Samples::parse(result.get("metrics").and_then(Value::as_str).unwrap_or(""));
    compare(
        "netns-metrics",
        (|| {
            let Some(Value::Array(per)) = truth.get("per_netns") else {
                return Err("truth has no per_netns array".to_string());
            };
            let mut wrong = Vec::new();
            let mut shown = Vec::new();
            let mut sum = 0u64;
            for ns in per {
                let name = ns.get("name").and_then(Value::as_str).unwrap_or("?");
                let inode = u64_at(ns, "inode")?;
                let count = u64_at(ns, "count_after")?;
                sum = sum.saturating_add(count);
                let inode_text = inode.to_string();
                let exported = s
                    .whole(
                        "ctscope_netns_conntrack_entries",
                        &[("netns_inode", &inode_text)],
                    )
                    .or_else(|| {
                        // Absent (not active) is 0; present but unreadable is wrong.
                        s.series("ctscope_netns_conntrack_entries")
                            .all(|(l, _)| l.get("netns_inode") != Some(&inode_text))
                            .then_some(0)
                    });
                if exported != Some(count) {
                    wrong.push(format!(
                        "{name} exported {}, kernel {count}",
                        exported.map_or_else(|| "unreadable".into(), |e| e.to_string())
                    ));
                }
                if count > 0 {
                    shown.push(format!("{name} {count}"));
                }
            }
            let total = s.whole("ctscope_conntrack_entries", &[]);
            Ok((
                wrong.is_empty() && total == Some(sum),
                format!(
                    "ctscope_conntrack_entries {}, kernel {sum} ({}){}",
                    total.map_or_else(|| "absent".into(), |t| t.to_string()),
                    if shown.is_empty() {
                        "every namespace empty".to_string()
                    } else {
                        shown.join(", ")
                    },
                    if wrong.is_empty() {
                        String::new()
                    } else {
                        format!("; per namespace: {}", wrong.join("; "))
                    }
                ),
            ))
        })(),
    )
}

/// `container-metrics[<name>]` for every container of the truth: its entries are at most its
/// inserts, and its inserts plus its refused connections are the flows it sent. Then
/// `containers-evicted`: entries die in a lab run only by early_drop (the timeouts are raised),
/// so what the containers inserted and no longer hold is the kernel's `early_drop` count; in a
/// soak (`truth.inserts_from`, entries expiring, nothing but the containers' flows inserted)
/// it is every death the kernel counted.
pub(crate) fn container_checks(result: &Value, truth: &Value) -> Vec<Check> {
    let s = Samples::parse(result.get("metrics").and_then(Value::as_str).unwrap_or(""));
    let Some(Value::Array(containers)) = truth.get("containers") else {
        return vec![Check::missing(
            "container-metrics",
            "truth has no containers array".into(),
        )];
    };
    let mut gone: Result<f64, String> = Ok(0.0);
    let mut checks: Vec<Check> = containers
        .iter()
        .map(|tc| {
            let name = tc.get("name").and_then(Value::as_str).unwrap_or("?");
            let inputs: Result<(f64, f64, f64, u64), String> = (|| {
                let sent = u64_at(tc, "flows")?.saturating_sub(u64_at(tc, "send_errors")?);
                let with = [("container_name", name)];
                let get = |metric: &str| {
                    s.get(metric, &with)
                        .ok_or_else(|| format!("no {metric}{{container_name=\"{name}\"}}"))
                };
                let entries = get("ctscope_container_conntrack_entries")?;
                let inserts = get("ctscope_container_conntrack_inserts_total")?;
                let drops = get("ctscope_container_conntrack_drops_total")?;
                Ok((entries, inserts, drops, sent))
            })();
            match &inputs {
                Ok((entries, inserts, ..)) => {
                    if let Ok(g) = gone.as_mut() {
                        *g += inserts - entries;
                    }
                }
                Err(e) => gone = Err(e.clone()),
            }
            compare(
                &format!("container-metrics[{name}]"),
                inputs.map(|(entries, inserts, drops, sent)| {
                    (
                        entries <= inserts && inserts + drops == sent as f64,
                        format!(
                            "entries {entries} <= inserts {inserts}; inserts + drops {drops} == flows sent {sent}"
                        ),
                    )
                }),
            )
        })
        .collect();
    // A soak's truth: its entries expire, and only the containers' flows make entries.
    let expired = truth.get("inserts_from").is_some_and(|s| !s.is_null())
        && truth.get("settle").is_some_and(|s| !s.is_null());
    checks.push(compare(
        "containers-evicted",
        (|| {
            let gone = gone?;
            if expired {
                // Entries expire in this run (`[expiry]`, e.g. a soak): every death counts.
                let deletes = u64_at(truth, "deletes")?;
                return Ok((
                    gone == deletes as f64,
                    format!(
                        "inserted and no longer held, all containers: {gone}, kernel deletes {deletes} (the entries expire in this run)"
                    ),
                ));
            }
            let early = u64_at(truth, "stat_delta/early_drop")?;
            Ok((
                gone == early as f64,
                format!(
                    "inserted and no longer held, all containers: {gone}, kernel early_drop {early} (nothing else ends an entry in a lab run)"
                ),
            ))
        })(),
    ));
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE ctscope_build info\nctscope_build_info{version=\"0.1.0\",kernel=\"6.1.0\",mode=\"fentry\"} 1\n\
ctscope_probes_attached 1.0\nctscope_conntrack_inserts_total 100.0\n\
ctscope_conntrack_drops_total{reason=\"table_full\"} 5.0\nctscope_conntrack_drops_total{reason=\"clash\"} 0.0\n\
ctscope_conntrack_drops_total{reason=\"chain_too_long\"} 0.0\nctscope_conntrack_drops_total{reason=\"other\"} 0.0\n\
ctscope_attribution_throughout 1.0\nctscope_self_check_walks_total 200.0\nctscope_self_check_failures_total 0.0\n\
ctscope_container_conntrack_entries{container_name=\"web\"} 58.0\nctscope_container_conntrack_inserts_total{container_name=\"web\"} 60.0\n\
ctscope_container_conntrack_drops_total{container_name=\"web\"} 5.0\n\
ctscope_netns_conntrack_entries{netns_inode=\"1\",name=\"a \\\"b\\\"\",kind=\"netns\"} 3.0\n# EOF\n";

    #[test]
    fn whole_numbers_are_read_from_unlabelled_samples_only() {
        let text = "# TYPE ctscope_conntrack_entries gauge\nctscope_conntrack_entries 812\n\
ctscope_conntrack_entries_limit 65536\nctscope_resident_memory_bytes 1.2345e7\n";
        let s = Samples::parse(text);
        assert_eq!(s.whole("ctscope_conntrack_entries", &[]), Some(812));
        assert_eq!(
            s.whole("ctscope_resident_memory_bytes", &[]),
            Some(12_345_000)
        );
        assert_eq!(s.whole("ctscope_conntrack", &[]), None);
        assert_eq!(Samples::parse("x 1.5\n").whole("x", &[]), None);
        assert_eq!(Samples::parse("x -1\n").whole("x", &[]), None);
        assert_eq!(Samples::parse("x 9007199254740992\n").whole("x", &[]), None);
    }

    #[test]
    fn samples_and_labels_are_read_back() {
        let s = Samples::parse(TEXT);
        assert_eq!(s.get("ctscope_conntrack_inserts_total", &[]), Some(100.0));
        assert_eq!(
            s.get("ctscope_netns_conntrack_entries", &[("name", "a \"b\"")]),
            Some(3.0)
        );
        let r = as_report(&s);
        assert_eq!(r["mode"], "fentry");
        assert_eq!(r["drops"]["table_full"], 5);
        assert_eq!(r["drops"]["alloc_failed"], Value::Null);
        assert_eq!(r["attribution"]["throughout"], true);
        assert_eq!(r["self_check"]["walks"], 200);
    }

    #[test]
    fn namespace_series_must_match_the_kernels_counts() {
        let truth = json!({"per_netns": [
            {"name": "host", "inode": 10, "count_after": 300},
            {"name": "ctlab-web", "inode": 11, "count_after": 0},
            {"name": "ctlab-fw", "inode": 12, "count_after": 40},
        ]});
        let text = |total: u64, host: &str, extra: &str| {
            json!({"metrics": format!(
                "ctscope_conntrack_entries {total}\n\
            ctscope_netns_conntrack_entries{{netns_inode=\"10\",name=\"host\",kind=\"init\"}} {host}\n\
            ctscope_netns_conntrack_entries{{netns_inode=\"12\",name=\"ctlab-fw\",kind=\"netns\"}} 40\n{extra}# EOF\n"
            )})
        };
        let check = |r: &Value| entries_check(r, &truth);
        let ok = check(&text(340, "300", ""));
        assert!(ok.passed, "{ok:?}");
        assert!(
            ok.detail.contains("kernel 340 (host 300, ctlab-fw 40)"),
            "{ok:?}"
        );
        // The total counts a namespace twice.
        assert!(!check(&text(640, "300", "")).passed);
        // A namespace's series is off.
        assert!(!check(&text(340, "301", "")).passed);
        // Its value is not a whole number.
        assert!(!check(&text(340, "300.5", "")).passed);
        // An empty lab namespace shows entries.
        let extra = "ctscope_netns_conntrack_entries{netns_inode=\"11\",name=\"ctlab-web\",kind=\"netns\"} 2\n";
        assert!(!check(&text(342, "300", extra)).passed);
        // No truth to compare with.
        assert!(!entries_check(&text(340, "300", ""), &json!({})).passed);
    }

    #[test]
    fn each_wrong_metric_fails_its_check() {
        let truth = json!({"containers": [{"name": "web", "flows": 70, "send_errors": 5}],
            "stat_delta": {"early_drop": 2}});
        let result = |t: &str| json!({"metrics": t});
        let ok = container_checks(&result(TEXT), &truth);
        assert!(ok.iter().all(|c| c.passed), "{ok:?}");
        assert!(present_check(&result(TEXT)).passed);
        for (from, to) in [
            // more entries than inserts
            (
                "entries{container_name=\"web\"} 58.0",
                "entries{container_name=\"web\"} 61.0",
            ),
            // entries gone that no early drop explains
            (
                "entries{container_name=\"web\"} 58.0",
                "entries{container_name=\"web\"} 57.0",
            ),
            // inserts + drops differ from what was sent
            (
                "drops_total{container_name=\"web\"} 5.0",
                "drops_total{container_name=\"web\"} 4.0",
            ),
            // a container missing
            ("{container_name=\"web\"}", "{container_name=\"api\"}"),
        ] {
            let bad = TEXT.replace(from, to);
            assert_ne!(bad, TEXT, "{from}");
            assert!(
                container_checks(&result(&bad), &truth)
                    .iter()
                    .any(|c| !c.passed),
                "{to}"
            );
        }
        assert!(!present_check(&result(&TEXT.replace("# EOF\n", ""))).passed);
        assert!(!present_check(&result(&TEXT.replace("attached 1.0", "attached 0.0"))).passed);
        assert!(!present_check(&json!({})).passed);
    }
}
