use super::comparison::Comparison;
use super::input::{Kind, classify, read_json};
use super::render::{delta, shown};
use super::thresholds::{Row, number_at};
use super::*;
use clap::Parser;
use conntrack_user::report::{
    ChainLengths, ChainStats, ClashOutcomes, Cost, Drops, EarlyDrop, Mode, ProgramCost, Report,
    SelfCheck, Settings,
};
use ctscope_lab::{AgentResult, NetnsTruth, StatDelta, Truth};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;

/// What varies between the fixture runs of chain-overflow on 6.1.
#[derive(Clone)]
struct Fx {
    kernel: &'static str,
    chain_max: u32,
    max_rss_kib: u64,
    chain_too_long: u64,
    nulls_mismatch: u64,
    /// Total bpf_stats time of the programs.
    bpf_ns: u64,
    errors: Vec<String>,
    accel: &'static str,
}

impl Default for Fx {
    fn default() -> Self {
        Fx {
            kernel: "6.1",
            chain_max: 58,
            max_rss_kib: 20_000,
            chain_too_long: 10,
            nulls_mismatch: 0,
            bpf_ns: 19_858 * 12_000,
            errors: Vec::new(),
            accel: "tcg",
        }
    }
}

const INSERTS: u64 = 19_858;

impl Fx {
    /// ctscope's report, through its own types.
    fn report(&self) -> Report {
        let mut counts = vec![0u64; self.chain_max as usize + 1];
        counts[1] = 10_000;
        counts[20] = INSERTS - 10_000 - 8;
        counts[self.chain_max as usize] += 8;
        let drops = Drops {
            table_full: Some(0),
            chain_too_long: Some(self.chain_too_long),
            clash: Some(0),
            other: Some(0),
            alloc_failed: Some(0),
        };
        Report {
            ctscope_version: "0.1.0".into(),
            mode: Mode::Kprobe,
            kernel_release: "6.1.0-50-cloud-amd64".into(),
            netns_inode: Some(4_026_531_840),
            duration_s: 30.0,
            inserts: Some(INSERTS),
            chain_length: Some(ChainLengths {
                orig: ChainStats::from_counts(&counts),
                reply: ChainStats::from_counts(&counts),
            }),
            drops,
            self_check: Some(SelfCheck {
                walks: 2 * INSERTS,
                nulls_mismatch: self.nulls_mismatch,
                ..SelfCheck::default()
            }),
            settings: Settings {
                buckets: Some(1024),
                max: Some(65_536),
                ..Settings::default()
            },
            kernel_stats: BTreeMap::from([("chaintoolong".to_owned(), self.chain_too_long)]),
            probes: None,
            netns: Vec::new(),
            containers: Vec::new(),
            lifetimes: None,
            lifetimes_untracked: None,
            attribution: None,
            early_drop: EarlyDrop::default(),
            clash: ClashOutcomes::default(),
            dying_at_confirm: None,
            lookups: None,
            cost: Cost {
                programs: Some(vec![
                    ProgramCost {
                        name: "hash_insert".into(),
                        run_cnt: INSERTS,
                        run_time_ns: self.bpf_ns / 2,
                        ns_per_run: 0.0,
                    },
                    ProgramCost {
                        name: "hash_insert_ret".into(),
                        run_cnt: INSERTS,
                        run_time_ns: self.bpf_ns - self.bpf_ns / 2,
                        ns_per_run: 0.0,
                    },
                ]),
                cpu_seconds: 0.5,
                cpu_percent: 2.0,
                max_rss_kib: self.max_rss_kib,
                rss_kib: self.max_rss_kib / 2,
            },
            occupancy: None,
            extensions: None,
            expiries: None,
            notices: Vec::new(),
            interrupted: None,
            timeline: Vec::new(),
        }
    }

    /// The lab result: the agent's result through ctscope-lab's types, wrapped with the
    /// keys vm.rs adds.
    fn result(&self) -> Value {
        let stat_delta = StatDelta {
            insert_failed: self.chain_too_long,
            drop: self.chain_too_long,
            chaintoolong: self.chain_too_long,
            ..StatDelta::default()
        };
        let agent = AgentResult {
            kernel_release: "6.1.0-50-cloud-amd64".into(),
            scenario: "chain-overflow".into(),
            doctor: None,
            ctscope: Some(serde_json::to_value(self.report()).expect("report")),
            metrics: None,
            ctscope_exit: Some(0),
            ctscope_stop_s: Some(0.5),
            ctscope_stderr_tail: String::new(),
            truth: Some(Truth {
                flows: 20_000,
                inserts: INSERTS,
                count_after: INSERTS,
                stat_delta,
                per_netns: vec![NetnsTruth {
                    name: "host".into(),
                    inode: 4_026_531_840,
                    inserts: INSERTS,
                    count_after: INSERTS,
                    stat_delta,
                    ..NetnsTruth::default()
                }],
                ..Truth::default()
            }),
            clients: Vec::new(),
            bench: None,
            tuning: None,
            soak: None,
            errors: self.errors.clone(),
        };
        let mut wrapped = serde_json::Map::new();
        wrapped.insert("kernel".into(), json!(self.kernel));
        wrapped.insert(
            "kernel_package".into(),
            json!("linux-image-6.1.0-50-cloud-amd64-unsigned"),
        );
        wrapped.insert("kernel_package_version".into(), json!("6.1.176-1"));
        // A kprobe-mode report (the config's verdict, as xtask vm wraps it).
        wrapped.insert("kernel_fentry".into(), json!(false));
        wrapped.insert("accel".into(), json!(self.accel));
        wrapped.insert("wall_s".into(), json!(41.5));
        let Value::Object(agent) = serde_json::to_value(agent).expect("agent result") else {
            panic!("the agent result is an object");
        };
        wrapped.extend(agent);
        Value::Object(wrapped)
    }
}

/// A fresh directory under the target directory.
fn scratch(name: &str) -> PathBuf {
    let dir = paths::target_dir()
        .join("test-compare")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn write(dir: &Path, name: &str, v: &Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(v).expect("json")).expect("write");
    path
}

/// `cargo xtask compare ARGS...`'s exit code, through clap and [`run`].
fn exit_code(args: &[&str]) -> i32 {
    exit_and_output(args).0
}

fn exit_and_output(args: &[&str]) -> (i32, String) {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }
    let cli = Cli::try_parse_from(std::iter::once("compare").chain(args.iter().copied()))
        .expect("valid arguments");
    let mut out = Vec::new();
    let code = run(&cli.args, &mut out);
    (code, String::from_utf8(out).expect("UTF-8 output"))
}

fn scenarios() -> PathBuf {
    paths::workspace_root().join("scenarios")
}

fn pair(base: &Fx, new: &Fx, name: &str) -> (PathBuf, PathBuf, Comparison) {
    let dir = scratch(name);
    let b = write(&dir, "base.json", &base.result());
    let n = write(&dir, "new.json", &new.result());
    let c = compare(&b, &n, &scenarios(), Thresholds::default(), false).expect("compared");
    (b, n, c)
}

fn row<'a>(c: &'a Comparison, name: &str) -> &'a Row {
    c.pairs[0]
        .rows
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no row {name}"))
}

#[test]
fn the_fixture_is_a_valid_report_and_lab_result() {
    let v = Fx::default().result();
    let agent: AgentResult = serde_json::from_value(v.clone()).expect("agent result");
    let report: Report = serde_json::from_value(agent.ctscope.expect("report")).expect("report");
    assert_eq!(report.chain_length.expect("chains").orig.max, 58);
    assert_eq!(
        classify(&v),
        Ok((Kind::Lab, "6.1".into(), "chain-overflow".into()))
    );
    // The checks run on it: the ones compare's tests rely on pass.
    let scenario =
        ctscope_lab::Scenario::load(&scenarios().join("chain-overflow.toml")).expect("scenario");
    let checks = ctscope_lab::check(&v, &scenario);
    for name in ["agent-errors", "ctscope-report", "mode"] {
        assert!(
            checks.iter().any(|c| c.name == name && c.passed),
            "{name}: {checks:?}"
        );
    }
}

#[test]
fn identical_runs_exit_0() {
    let (b, n, c) = pair(&Fx::default(), &Fx::default(), "identical");
    assert_eq!(c.regressions(), 0, "{}", c.render());
    assert!(c.pairs[0].rows.iter().all(|r| delta(r) == Some(0.0)));
    let checks = c.pairs[0].checks.as_ref().expect("checks compared");
    assert!(checks.regressed.is_empty());
    assert_eq!(checks.base_failed, checks.new_failed);
    let (b, n) = (b.to_string_lossy(), n.to_string_lossy());
    let (code, text) = exit_and_output(&[&b, &n]);
    assert_eq!(code, 0);
    assert!(
        text.contains("compare: no regression in 1 compared runs"),
        "{text}"
    );
    let (code, text) = exit_and_output(&["--json", &b, &n]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&text).expect("--json prints JSON");
    assert_eq!(v["regressed"], json!(false));
    assert_eq!(v["pairs"][0]["run"], "6.1 chain-overflow");
}

#[test]
fn injected_regressions_exit_1() {
    let base = Fx::default();
    let new = Fx {
        chain_max: 68,
        max_rss_kib: 30_000,
        errors: vec!["nft rule failed".into()],
        ..base.clone()
    };
    let (b, n, c) = pair(&base, &new, "regressed");
    assert_eq!(row(&c, "chain max").base, Some(58.0));
    assert_eq!(row(&c, "chain max").new, Some(68.0));
    assert_eq!(row(&c, "chain max").regression.as_deref(), Some("+10 > 3"));
    assert_eq!(
        row(&c, "RSS peak KiB").regression.as_deref(),
        Some("+50.0% > 15%")
    );
    assert_eq!(row(&c, "chain p99").regression, None);
    let checks = c.pairs[0].checks.as_ref().expect("checks compared");
    assert_eq!(
        checks.regressed,
        vec![(
            "agent-errors".to_owned(),
            "nft rule failed".to_owned(),
            "passed in base"
        )]
    );
    assert_eq!(c.regressions(), 3);
    let text = c.render();
    assert!(text.contains("REGRESSED: +10 > 3"), "{text}");
    assert!(
        text.contains("REGRESSED check agent-errors (passed in base): nft rule failed"),
        "{text}"
    );
    let (b, n) = (b.to_string_lossy(), n.to_string_lossy());
    assert_eq!(exit_code(&[&b, &n]), 1);
    let json = c.to_json();
    assert_eq!(json["regressed"], json!(true));
    assert_eq!(
        json["pairs"][0]["checks"]["regressed"][0]["name"],
        "agent-errors"
    );
}

#[test]
fn thresholds_come_from_the_command_line() {
    let base = Fx::default();
    let new = Fx {
        chain_max: 68,
        max_rss_kib: 30_000,
        ..base.clone()
    };
    let (b, n, _) = pair(&base, &new, "thresholds");
    let (b, n) = (b.to_string_lossy(), n.to_string_lossy());
    assert_eq!(exit_code(&[&b, &n]), 1);
    assert_eq!(exit_code(&["--max-chain-growth", "10", &b, &n]), 1);
    assert_eq!(
        exit_code(&[
            "--max-chain-growth",
            "10",
            "--max-rss-growth-pct",
            "50",
            &b,
            &n
        ]),
        0
    );
}

#[test]
fn run_to_run_noise_is_no_regression() {
    // What two TCG runs of one scenario differ by: the hash seed (chains, chain-too-long
    // drops), the host's load (eBPF ns), the allocator (RSS).
    let base = Fx::default();
    let new = Fx {
        chain_max: 61,
        max_rss_kib: 22_000,
        chain_too_long: 18,
        bpf_ns: base.bpf_ns / 100 * 125,
        ..base.clone()
    };
    let (_, _, c) = pair(&base, &new, "noise");
    assert_eq!(c.regressions(), 0, "{}", c.render());
    assert_eq!(row(&c, "eBPF ns per insert").base, Some(12_000.0));
    assert_eq!(row(&c, "eBPF ns per insert").new, Some(15_000.0));
    // Beyond both drop thresholds (+40 > 10 and > 25% of 10): a regression.
    let more = Fx {
        chain_too_long: 50,
        ..base.clone()
    };
    let (_, _, c) = pair(&base, &more, "drops");
    assert_eq!(
        row(&c, "drops chain_too_long").regression.as_deref(),
        Some("+40 > 10 and > 25%")
    );
}

#[test]
fn self_check_failures_count_from_zero_only() {
    let clean = Fx::default();
    let failing = Fx {
        nulls_mismatch: 5,
        ..clean.clone()
    };
    let (_, _, c) = pair(&clean, &failing, "self-check");
    assert_eq!(
        row(&c, "self-check nulls_mismatch").regression.as_deref(),
        Some("0 in base, 5 in new")
    );
    let worse = Fx {
        nulls_mismatch: 9,
        ..clean.clone()
    };
    let (_, _, c) = pair(&failing, &worse, "self-check-2");
    assert_eq!(row(&c, "self-check nulls_mismatch").regression, None);
}

#[test]
fn ebpf_ns_across_accelerators_is_not_judged() {
    let base = Fx::default();
    let new = Fx {
        accel: "kvm",
        bpf_ns: base.bpf_ns * 3,
        ..base.clone()
    };
    let (_, _, c) = pair(&base, &new, "accel");
    assert_eq!(c.regressions(), 0, "{}", c.render());
    assert!(!row(&c, "eBPF ns per insert").judged);
    assert!(c.pairs[0].notes[0].contains("accelerators differ (tcg / kvm)"));
}

#[test]
fn directories_match_by_kernel_and_scenario() {
    let (base, new) = (scratch("dir-base"), scratch("dir-new"));
    write(&base, "6.1-chain-overflow.json", &Fx::default().result());
    let k612 = Fx {
        kernel: "6.12",
        ..Fx::default()
    };
    write(&base, "6.12-chain-overflow.json", &k612.result());
    write(&new, "6.1-chain-overflow.json", &Fx::default().result());
    // The lab's summary is no result: skipped, and said so.
    write(&new, "summary.json", &json!({"runs": []}));
    let c = compare(&base, &new, &scenarios(), Thresholds::default(), false).expect("compared");
    assert_eq!(c.pairs.len(), 1);
    assert_eq!(c.base_only, vec!["6.12 chain-overflow".to_owned()]);
    assert!(c.new_only.is_empty());
    assert_eq!(c.skipped.len(), 1);
    let text = c.render();
    assert!(
        text.contains("only in base (not compared): 6.12 chain-overflow"),
        "{text}"
    );
    assert_eq!(
        exit_code(&[&base.to_string_lossy(), &new.to_string_lossy()]),
        0
    );
}

#[test]
fn unmatched_directories_are_an_input_error() {
    let (base, new) = (scratch("unmatched-base"), scratch("unmatched-new"));
    write(&base, "6.1-chain-overflow.json", &Fx::default().result());
    let k612 = Fx {
        kernel: "6.12",
        ..Fx::default()
    };
    write(&new, "6.12-chain-overflow.json", &k612.result());
    let err = compare(&base, &new, &scenarios(), Thresholds::default(), false)
        .err()
        .expect("nothing matches");
    assert!(
        format!("{err:#}").contains("base has 6.1 chain-overflow, new has 6.12 chain-overflow"),
        "{err:#}"
    );
    let (b, n) = (base.to_string_lossy(), new.to_string_lossy());
    assert_eq!(exit_code(&[&b, &n]), 2);
    // A file against a directory, and a file that is no result: input errors too.
    let file = write(&base, "x.json", &json!({"runs": []}));
    assert_eq!(exit_code(&[&file.to_string_lossy(), &n]), 2);
    assert_eq!(
        exit_code(&[&file.to_string_lossy(), &file.to_string_lossy()]),
        2
    );
}

#[test]
fn bench_results_compare_their_cost() {
    let real = paths::workspace_root().join("bench/results/6.1.json");
    let base = read_json(&real).expect("the committed bench result");
    let dir = scratch("bench");
    let mut fatter = base.clone();
    let rss = number_at(&base, "variants/default/max_rss_kib").expect("rss");
    fatter["variants"]["default"]["max_rss_kib"] = json!((rss * 1.5) as u64);
    let new = write(&dir, "6.1.json", &fatter);
    let c = compare(&real, &new, &scenarios(), Thresholds::default(), false).expect("compared");
    assert_eq!(c.pairs[0].label, "6.1 bench");
    assert!(c.pairs[0].checks.is_none());
    assert_eq!(
        row(&c, "default RSS peak KiB").regression.as_deref(),
        Some("+50.0% > 15%")
    );
    assert_eq!(c.regressions(), 1);
    assert_eq!(
        exit_code(&[&real.to_string_lossy(), &real.to_string_lossy()]),
        0
    );
    assert_eq!(
        exit_code(&[&real.to_string_lossy(), &new.to_string_lossy()]),
        1
    );
}

#[test]
fn names_from_input_are_escaped() {
    assert_eq!(shown("6.1\u{1b}[2J\u{202e}x"), "6.1\\u{1b}[2J\\u{202e}x");
}
