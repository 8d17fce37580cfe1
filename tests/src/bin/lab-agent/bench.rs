//! Bench mode (`[bench]` in the scenario, run by `cargo xtask bench`): the same connection
//! workload again and again, without ctscope, with ctscope's default probes and with
//! `--lookups`, so that the connection rates can be compared within one VM.
//!
//! Every round runs each variant once, in an order rotated by one each round (round 0:
//! baseline, default, lookups; round 1: default, lookups, baseline; ...), so that a drift of
//! the machine over time (a host busy elsewhere, a table that grew) does not favour one
//! variant. Every run uses fresh source ports, and the next run waits until the host's table
//! is back to its size before the run: each run meets the same table.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ctscope_lab::{BenchRun, Scenario};
use serde_json::{Value, json};

use crate::ctscope::{Ctscope, Ready};
use crate::netns::Netns;
use crate::{Lab, truth, workload};

/// The variants, in the order of round 0.
pub const VARIANTS: [&str; 3] = ["baseline", "default", "lookups"];
/// Source ports the load generator may use (20000..65535).
const PORTS: u32 = 45_536;
const FIRST_PORT: u32 = 20_000;

/// The variants of round `round`, rotated.
pub fn order(round: u32) -> Vec<&'static str> {
    let k = round as usize % VARIANTS.len();
    VARIANTS[k..]
        .iter()
        .chain(&VARIANTS[..k])
        .copied()
        .collect()
}

/// ctscope's arguments for a variant (`None`: no ctscope).
fn ctscope_args(scenario: &Scenario, variant: &str) -> Option<Vec<String>> {
    let mut args = scenario.ctscope.args.clone();
    match variant {
        "baseline" => return None,
        "lookups" if !args.iter().any(|a| a == "--lookups") => args.push("--lookups".into()),
        _ => {}
    }
    Some(args)
}

/// The report keys a bench keeps.
fn report_subset(report: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for key in ["cost", "lookups", "inserts", "duration_s", "mode"] {
        out.insert(key.into(), report.get(key).cloned().unwrap_or(Value::Null));
    }
    Value::Object(out)
}

pub fn run(lab: &mut Lab, scenario: &Scenario, namespaces: &[Netns]) -> Result<Vec<BenchRun>> {
    let Some(bench) = &scenario.bench else {
        bail!("not a bench scenario");
    };
    let per_run = scenario
        .containers
        .iter()
        .map(|c| c.flows)
        .max()
        .unwrap_or(0);
    let runs = bench.rounds * VARIANTS.len() as u32;
    if per_run == 0 || runs * per_run > PORTS {
        bail!(
            "{runs} runs of {per_run} flows do not fit in {PORTS} source ports: fewer rounds or flows"
        );
    }
    let host = [Netns::Host];
    let mut results = Vec::new();
    let mut index = 0u32;
    for round in 0..bench.rounds {
        for variant in order(round) {
            let src_port_base = u16::try_from(FIRST_PORT + index * per_run)
                .context("source port base past 65535")?;
            index += 1;
            let start_count = truth::counts(&host)?.iter().sum::<u64>();
            let mut ct = match ctscope_args(scenario, variant) {
                None => None,
                Some(args) => {
                    let mut ct = Ctscope::start(&lab.cli.ctscope, &args)?;
                    match ct.wait_ready() {
                        Ready::Attached(_) => Some(ct),
                        Ready::Exited(code) => {
                            bail!("round {round} {variant}: ctscope exited with code {code}")
                        }
                        Ready::TimedOut => {
                            ct.stop();
                            bail!("round {round} {variant}: ctscope was not ready in time")
                        }
                    }
                }
            };
            let cpu_before = ct.as_ref().and_then(Ctscope::cpu_seconds);
            let (clients, summaries, errors) = workload::run_clients(
                &lab.tools,
                &lab.cli.loadgen,
                scenario,
                Duration::from_secs(lab.cli.client_timeout_s),
                workload::RunOptions {
                    src_port_base,
                    hold: false,
                    disjoint_ports: false,
                },
            );
            let end_count = truth::counts(&host)?.iter().sum::<u64>();
            let cpu_after = ct.as_ref().and_then(Ctscope::cpu_seconds);
            let ctscope_cpu_s = cpu_before.zip(cpu_after).map(|(b, a)| a - b);
            lab.result.errors.extend(
                errors
                    .into_iter()
                    .map(|e| format!("round {round} {variant}: {e}")),
            );
            let report = match ct.as_mut() {
                None => None,
                Some(ct) => {
                    let code = ct.stop();
                    match Ctscope::report() {
                        Ok(r) => Some(report_subset(&r)),
                        Err(e) => {
                            lab.result.errors.push(format!(
                                "round {round} {variant}: no report (exit {code:?}): {e:#}"
                            ));
                            Some(json!(null))
                        }
                    }
                }
            };
            for c in clients {
                c.release();
            }
            let flows: u64 = summaries.iter().map(|s| s.load.flows).sum();
            let send_errors: u64 = summaries.iter().map(|s| s.load.send_errors).sum();
            let connect_failures: u64 = summaries.iter().map(|s| s.load.connect_failures).sum();
            // The clients run at once: the workload lasts as long as the slowest.
            let elapsed_s = summaries
                .iter()
                .map(|s| s.load.elapsed_s)
                .fold(0.0, f64::max);
            let rate = if elapsed_s > 0.0 {
                flows.saturating_sub(send_errors) as f64 / elapsed_s
            } else {
                0.0
            };
            println!(
                "bench: round {round} {variant:8}: {flows} flows in {elapsed_s:.2} s = {rate:.0}/s ({send_errors} send errors, {connect_failures} connect failures)"
            );
            results.push(BenchRun {
                round,
                variant: variant.to_string(),
                flows,
                send_errors,
                connect_failures,
                elapsed_s,
                rate,
                inserts: end_count.saturating_sub(start_count),
                ctscope: report,
                ctscope_cpu_s,
            });
            wait_for_count(
                namespaces,
                start_count,
                Duration::from_secs(u64::from(bench.settle_max_s)),
            )
            .with_context(|| format!("after round {round} {variant}"))?;
        }
    }
    Ok(results)
}

/// Waits until the host's count is at most `target` again (the run's entries expired).
fn wait_for_count(namespaces: &[Netns], target: u64, limit: Duration) -> Result<()> {
    let host = namespaces
        .iter()
        .position(|n| *n == Netns::Host)
        .context("no host namespace")?;
    let start = Instant::now();
    loop {
        let counts = truth::counts(namespaces)?;
        if counts[host] <= target {
            println!(
                "bench: table back to {} entries after {:.1} s",
                counts[host],
                start.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if start.elapsed() >= limit {
            bail!(
                "the host's count stayed at {} (target {target}) for {} s: lower the timeouts",
                counts[host],
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_round_rotates_the_order() {
        assert_eq!(order(0), ["baseline", "default", "lookups"]);
        assert_eq!(order(1), ["default", "lookups", "baseline"]);
        assert_eq!(order(2), ["lookups", "baseline", "default"]);
        assert_eq!(order(3), order(0));
    }

    #[test]
    fn variants_choose_ctscope_arguments() {
        let s = Scenario::from_toml(
            "name = \"b\"\n[[containers]]\nname = \"a\"\nprotocol = \"tcp\"\nflows = 10\nclose = true\n[bench]\nrounds = 1\n",
        )
        .expect("valid");
        assert_eq!(ctscope_args(&s, "baseline"), None);
        assert_eq!(
            ctscope_args(&s, "default"),
            Some(vec!["observe".to_string()])
        );
        assert_eq!(
            ctscope_args(&s, "lookups"),
            Some(vec!["observe".to_string(), "--lookups".to_string()])
        );
    }
}
