//! `cargo xtask demo`: ctscope on a real Debian kernel in the VM, the tuner's whole loop: the
//! problem (a small host at the kernel's defaults, table full), the evidence (ctscope's
//! report), the recommendation next to the formulas, the fix (apply) and the proof (the same
//! load again without a drop, shorter chains, then rollback), and a readable summary.

use crate::compile;
use crate::kernels;
use crate::paths;
use crate::setup;
use crate::vm::{self, ScenarioFile};
use anyhow::{Result, bail};
use serde_json::Value;
use std::time::Duration;

/// The demo's kernel when none is given.
pub(crate) const KERNEL: &str = "6.1";
pub(crate) const SCENARIO: &str = "scenarios/tune-table-full.toml";

pub(crate) fn run(kernel: &str, timeout: Duration) -> Result<()> {
    setup::run()?;
    let bins = compile::run(true)?;
    let kernel = kernels::prepare(kernel)?;
    let scenario = ScenarioFile::load(&paths::workspace_root().join(SCENARIO))?;
    println!(
        "\ndemo: Debian {} in qemu, scenario `{}`: {}\n",
        kernel.release,
        scenario.name(),
        scenario.scenario.description.as_deref().unwrap_or("")
    );
    let out = vm::default_out(&kernel, &scenario);
    let result = vm::run_scenario(&kernel, &bins, &scenario, &out, timeout)?;
    print_summary(&result);
    print_tuning(&result);
    let checks = ctscope_lab::check(&result, &scenario.scenario);
    println!("\nchecks (ctscope against the kernel's own counters):");
    for c in &checks {
        println!("  {c}");
    }
    if !ctscope_lab::all_passed(&checks) {
        bail!("some checks failed (result: {})", out.display());
    }
    Ok(())
}

/// Formats a JSON number or null.
fn num(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "n/a".to_owned(),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(u), _) => u.to_string(),
            (None, Some(f)) => format!("{f:.2}"),
            _ => n.to_string(),
        },
        Some(other) => other.to_string(),
    }
}

use ctscope_lab::json_at as at;

/// The closed loop: before, the recommendation and its comparison, after.
pub(crate) fn print_tuning(result: &Value) {
    let Some(t) = at(result, "tuning").filter(|t| t.is_object()) else {
        return;
    };
    let s = |p: &str| num(at(t, p));
    println!("\n================ the tuner's loop ================");
    println!(
        "problem    kernel defaults: {} buckets, max {}; the kernel refused {} connections (drop), ctscope: table full {}",
        s("settings_before/buckets"),
        s("settings_before/max"),
        num(at(result, "truth/stat_delta/drop")),
        num(at(result, "ctscope/drops/table_full"))
    );
    if let Some(Value::Array(rows)) = at(t, "recommendation/comparison") {
        println!(
            "sizing     for the observed load (memory when full; chains at the observed peak):"
        );
        for c in rows {
            let f = |k: &str| num(c.get(k));
            println!(
                "           {:<15} buckets {:>7}  max {:>7}  memory {:>10} B  p99 chain {:>3}  would drop: {}",
                c.get("method").and_then(Value::as_str).unwrap_or("?"),
                f("buckets"),
                f("max"),
                f("memory_bytes"),
                f("p99_chain"),
                if c.get("would_drop").and_then(Value::as_bool) == Some(true) {
                    "yes"
                } else {
                    "no"
                }
            );
        }
    }
    println!(
        "fix        ctscope apply (exit {}): buckets {}, max {} (read back from the kernel)",
        s("apply_exit"),
        s("settings_applied/buckets"),
        s("settings_applied/max")
    );
    println!(
        "proof      the same load again: {} inserts, kernel drop {}, insert_failed {}; ctscope chain p99 {} (was {})",
        s("replay_truth/inserts"),
        s("replay_truth/stat_delta/drop"),
        s("replay_truth/stat_delta/insert_failed"),
        s("replay_ctscope/chain_length/reply/p99"),
        num(at(result, "ctscope/chain_length/reply/p99"))
    );
    println!(
        "rollback   exit {}: buckets {}, max {} again",
        s("rollback_exit"),
        s("settings_rolled_back/buckets"),
        s("settings_rolled_back/max")
    );
}

pub(crate) fn print_summary(result: &Value) {
    let s = |p: &str| num(at(result, p));
    let text = |p: &str| {
        at(result, p)
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned()
    };
    println!("\n================ summary ================");
    println!(
        "kernel     {} ({} {}), booted in {} s, run {} s",
        text("kernel_release"),
        text("kernel_package"),
        text("kernel_package_version"),
        s("boot_s"),
        s("wall_s")
    );
    let Some(report) = at(result, "ctscope").filter(|r| r.is_object()) else {
        println!(
            "ctscope    no report (exit {}): {}",
            s("ctscope_exit"),
            text("ctscope_stderr_tail")
        );
        return;
    };
    let r = |p: &str| num(at(report, p));
    println!(
        "ctscope    mode {}, {} s, table {} buckets / max {}, count {} -> {}",
        at(report, "mode").and_then(Value::as_str).unwrap_or("?"),
        r("duration_s"),
        r("settings/buckets"),
        r("settings/max"),
        r("settings/count_start"),
        r("settings/count_end")
    );
    println!(
        "inserts    ctscope {}   kernel (count rise + early drops) {}",
        r("inserts"),
        s("truth/inserts")
    );
    println!(
        "drops      table full {}, chain too long {}, clash {}, other {}",
        r("drops/table_full"),
        r("drops/chain_too_long"),
        r("drops/clash"),
        r("drops/other")
    );
    println!(
        "kernel     stat deltas: drop {}, insert_failed {}, chaintoolong {}, early_drop {}, clash_resolve {}",
        s("truth/stat_delta/drop"),
        s("truth/stat_delta/insert_failed"),
        s("truth/stat_delta/chaintoolong"),
        s("truth/stat_delta/early_drop"),
        s("truth/stat_delta/clash_resolve")
    );
    for dir in ["orig", "reply"] {
        println!(
            "chain      {dir:5}: p50 {}, p99 {}, max {}, mean {}",
            r(&format!("chain_length/{dir}/p50")),
            r(&format!("chain_length/{dir}/p99")),
            r(&format!("chain_length/{dir}/max")),
            r(&format!("chain_length/{dir}/mean"))
        );
    }
    println!(
        "self-check {} walks proven; failed: {} wrong nulls marker, {} not linked, {} wrong \
         direction, {} read errors",
        r("self_check/walks"),
        r("self_check/nulls_mismatch"),
        r("self_check/link_mismatch"),
        r("self_check/dir_mismatch"),
        r("self_check/read_errors")
    );
    println!(
        "kprobes    conntrack probes: {} while ctscope ran, {} after it exited",
        s("truth/kprobes_during"),
        s("truth/kprobes_after_exit")
    );
    println!(
        "load       {} flows, {} send errors, {} connect failures; {} entries after",
        s("truth/flows"),
        s("truth/send_errors"),
        s("truth/connect_failures"),
        s("truth/count_after")
    );
    if let Some(Value::Array(errors)) = result.get("errors")
        && !errors.is_empty()
    {
        println!("errors     {}", Value::Array(errors.clone()));
    }
}
