//! `cargo xtask demo`: ctscope on a real Debian kernel in the VM, then a readable summary.

use crate::compile;
use crate::kernels;
use crate::paths;
use crate::setup;
use crate::vm::{self, ScenarioFile};
use anyhow::{Result, bail};
use serde_json::Value;
use std::time::Duration;

pub const KERNEL: &str = "6.1";
pub const SCENARIO: &str = "scenarios/docker-nat.toml";

pub fn run(timeout: Duration) -> Result<()> {
    setup::run()?;
    let bins = compile::run(true)?;
    let kernel = kernels::prepare(KERNEL)?;
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

pub fn print_summary(result: &Value) {
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
