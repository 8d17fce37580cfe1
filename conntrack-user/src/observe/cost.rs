//! What ctscope itself costs: its CPU and memory, and its programs' run time
//! when bpf_stats are on (`--cost`).

use crate::report::{Cost, ProgramCost};

/// This process's user + system CPU seconds and peak RSS in KiB (getrusage).
fn rusage() -> Option<(f64, u64)> {
    use nix::sys::{
        resource::{UsageWho, getrusage},
        time::TimeVal,
    };
    let ru = getrusage(UsageWho::RUSAGE_SELF).ok()?;
    let secs = |t: TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    // ru_maxrss is in KiB on Linux.
    Some((
        secs(ru.user_time()) + secs(ru.system_time()),
        ru.max_rss().max(0) as u64,
    ))
}

/// `VmRSS` of this process, KiB.
fn current_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

pub(super) fn cpu_seconds() -> f64 {
    rusage().map_or(0.0, |(c, _)| c)
}

/// ctscope's own CPU time over the observation, its peak memory, and the
/// probes' kernel-side cost.
pub(super) fn cost(
    duration_s: f64,
    cpu_at_start: f64,
    costs: Option<Vec<(String, u64, u64)>>,
) -> Cost {
    let (cpu_now, rss) = rusage().unwrap_or((cpu_at_start, 0));
    let cpu = (cpu_now - cpu_at_start).max(0.0);
    Cost {
        programs: costs.map(|cs| {
            cs.into_iter()
                .map(|(name, run_cnt, run_time_ns)| ProgramCost {
                    ns_per_run: if run_cnt > 0 {
                        run_time_ns as f64 / run_cnt as f64
                    } else {
                        0.0
                    },
                    name,
                    run_cnt,
                    run_time_ns,
                })
                .collect()
        }),
        cpu_seconds: cpu,
        cpu_percent: if duration_s > 0.0 {
            100.0 * cpu / duration_s
        } else {
            0.0
        },
        max_rss_kib: rss,
        rss_kib: current_rss_kib().unwrap_or(0),
    }
}
