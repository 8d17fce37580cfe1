//! Reading the programs' maps: counters and histograms summed over CPUs
//! (`Snapshot`), per-origin counts, lifetime rows, alerts, and what the
//! kernel counts for each program (run time, recursion misses).

use super::{
    AsFd, BTreeMap, BorrowedFd, Counter, MapData, OriginKey, OriginStats, PerCpuArray, ProbeError,
    Probes, RingBuf, life, map, tracing,
};

impl Probes {
    /// The ring the alerts wake the loader through while attribution is
    /// not armed (to wait on: it is readable when one came). Once.
    pub fn take_alert_ring(&mut self) -> Option<RingBuf<MapData>> {
        self.alert_ring.take()
    }

    /// Events since attach that make attribution worth arming (`ALERTS`):
    /// `early_drop` calls, clashes, deaths no probe saw, long chains.
    pub fn alerts(&self) -> Result<u64, ProbeError> {
        self.alerts.get(&0, 0).map_err(|source| ProbeError::Map {
            what: map::ALERTS,
            source,
        })
    }

    /// The lifetime histograms' rows (`LIFE_HIST`), in row order: deaths
    /// since attach. Read at the start and the end of a run, not per
    /// interval (54 rows of 5 KiB).
    pub fn life_rows(&self) -> Result<Vec<Vec<u64>>, ProbeError> {
        (0..life::ROWS)
            .map(|r| {
                self.life_hist
                    .get(&r, 0)
                    .map(|h| h.to_vec())
                    .map_err(|source| ProbeError::Map {
                        what: map::LIFE_HIST,
                        source,
                    })
            })
            .collect()
    }

    /// Per-origin counters summed over CPUs (totals since attach).
    pub fn origins(&self) -> Vec<(OriginKey, OriginStats)> {
        self.origins
            .iter()
            .filter_map(Result::ok)
            .map(|(k, per_cpu)| {
                let mut sum = OriginStats::default();
                for v in per_cpu.iter() {
                    sum.add(v);
                }
                (k, sum)
            })
            .collect()
    }

    /// Every attached program's fd, by name; the attribution programs of
    /// fentry mode too, attached or not (their counts cover their armed
    /// time).
    pub(super) fn program_fds(&self) -> impl Iterator<Item = (&'static str, BorrowedFd<'_>)> {
        self.programs
            .iter()
            .filter_map(|(name, idx)| {
                let fd = match idx {
                    Some(i) => self.tracing.get(*i)?.fd(),
                    None => self.ebpf.program(name)?.fd().ok()?.as_fd(),
                };
                Some((*name, fd))
            })
            .chain(self.on_demand.iter().map(|(t, tr)| (t.prog, tr.fd())))
    }

    /// Runs the kernel skipped per attached program (`recursion_misses` of
    /// bpf_prog_info, 5.12+; bpf_prog_inc_misses_counter() when
    /// trace_call_bpf() in kernel/trace/bpf_trace.c, or a trampoline's
    /// `__bpf_prog_enter`, finds the program already running on this CPU).
    /// Those with none are left out.
    pub fn recursion_misses(&self) -> BTreeMap<String, u64> {
        self.program_fds()
            .filter_map(|(name, fd)| {
                let info = tracing::prog_info(fd).ok()?;
                (info.recursion_misses > 0).then(|| (name.to_string(), info.recursion_misses))
            })
            .collect()
    }

    /// The kernel's bpf_stats per attached program: (name, run_cnt, run_time_ns).
    /// None when the stats are off.
    pub fn costs(&self) -> Option<Vec<(String, u64, u64)>> {
        self.stats.as_ref()?;
        Some(
            self.program_fds()
                .filter_map(|(name, fd)| {
                    let info = tracing::prog_info(fd).ok()?;
                    Some((name.to_string(), info.run_cnt, info.run_time_ns))
                })
                .collect(),
        )
    }

    pub fn snapshot(&self) -> Result<Snapshot, ProbeError> {
        if let Some(Ok(mut l)) = self.logger.as_ref().map(|m| m.lock()) {
            l.flush();
        }
        // One block per map and CPU: one lookup (system call) per map.
        fn sum<const N: usize>(into: &mut Vec<u64>, block: &[u64; N]) {
            into.resize(N, 0);
            for (s, v) in into.iter_mut().zip(block.iter()) {
                *s = s.wrapping_add(*v);
            }
        }
        fn read<const N: usize>(
            map: &PerCpuArray<MapData, [u64; N]>,
            name: &'static str,
        ) -> Result<Vec<u64>, ProbeError> {
            let per_cpu = map
                .get(&0, 0)
                .map_err(|source| ProbeError::Map { what: name, source })?;
            let mut out = vec![0u64; N];
            for block in per_cpu.iter() {
                sum(&mut out, block);
            }
            Ok(out)
        }
        let blocks = self
            .stats_map
            .get(&0, 0)
            .map_err(|source| ProbeError::Map {
                what: map::STATS,
                source,
            })?;
        let (mut counters, mut orig, mut reply) = (Vec::new(), Vec::new(), Vec::new());
        for b in blocks.iter() {
            sum(&mut counters, &b.counters);
            sum(&mut orig, &b.chain_orig);
            sum(&mut reply, &b.chain_reply);
        }
        // The lookup maps only where lookups are probed: three system calls
        // an interval saved, which add up in a long observation.
        let (lookup_latency, lookup_chain, lookup_max) = if self.lookups {
            (
                read(&self.lookup_latency, map::LOOKUP_LATENCY)?,
                read(&self.lookup_chain, map::CHAIN_LOOKUP)?,
                self.lookup_max
                    .get(&0, 0)
                    .map(|v| v.iter().copied().max().unwrap_or(0))
                    .map_err(|source| ProbeError::Map {
                        what: map::LOOKUP_MAX_NS,
                        source,
                    })?,
            )
        } else {
            (Vec::new(), Vec::new(), 0)
        };
        Ok(Snapshot {
            counters,
            orig,
            reply,
            lookup_latency,
            lookup_chain,
            lookup_max,
        })
    }
}

/// Map contents summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub counters: Vec<u64>,
    pub orig: Vec<u64>,
    pub reply: Vec<u64>,
    pub lookup_latency: Vec<u64>,
    pub lookup_chain: Vec<u64>,
    /// Longest lookup since attach (not a difference: a maximum).
    pub lookup_max: u64,
}

impl Snapshot {
    pub fn counter(&self, c: Counter) -> u64 {
        self.counters.get(c as usize).copied().unwrap_or(0)
    }

    /// `self - earlier`, element-wise.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        let sub = |a: &[u64], b: &[u64]| {
            a.iter()
                .enumerate()
                .map(|(i, v)| v.saturating_sub(b.get(i).copied().unwrap_or(0)))
                .collect()
        };
        Snapshot {
            counters: sub(&self.counters, &earlier.counters),
            orig: sub(&self.orig, &earlier.orig),
            reply: sub(&self.reply, &earlier.reply),
            lookup_latency: sub(&self.lookup_latency, &earlier.lookup_latency),
            lookup_chain: sub(&self.lookup_chain, &earlier.lookup_chain),
            lookup_max: self.lookup_max,
        }
    }
}
