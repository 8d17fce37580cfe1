//! `[soak]` (docs/lab-contract.md, "soak"): while the clients churn, every `sample_s` the
//! agent scrapes ctscope serve's `/metrics`, reads ctscope's resident memory from
//! `/proc/PID/status` and the fill of its eBPF maps through the bpf syscall, and the kernel's
//! count. The samples go into the result as they are; xtask judges them.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ctscope_lab::checks::{Samples, whole};
use ctscope_lab::{NetnsSample, SoakSample};

use crate::netns::Netns;
use crate::{bpf_maps, ctscope, truth};

use ctscope_lab::scenario::MAX_SOAK_SAMPLES;

/// The sampling thread of a soak.
pub(crate) struct Sampler {
    stop: mpsc::Sender<()>,
    handle: JoinHandle<Vec<SoakSample>>,
}

impl Sampler {
    /// Samples now and then every `every`, until [`Sampler::finish`].
    pub(crate) fn start(
        pid: u32,
        namespaces: Vec<Netns>,
        every: Duration,
        t0: Instant,
    ) -> Result<Sampler> {
        // Resolved once: a sample must not put a lab namespace under a made-up inode.
        let inodes = inodes(&namespaces)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let handle = std::thread::Builder::new()
            .name("soak-sampler".into())
            .spawn(move || {
                let mut samples = Vec::new();
                let mut next = Instant::now();
                loop {
                    if samples.len() < MAX_SOAK_SAMPLES {
                        let s = sample(pid, &namespaces, &inodes, t0);
                        print_sample(&s);
                        samples.push(s);
                    }
                    next += every;
                    let wait = next.saturating_duration_since(Instant::now());
                    match stopped.recv_timeout(wait) {
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        // Asked to stop, or the agent is gone.
                        Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
                samples
            })
            .context("starting the soak's sampling thread")?;
        Ok(Sampler { stop, handle })
    }

    /// Stops the sampling and returns every sample taken, or why there are none.
    pub(crate) fn finish(self) -> Result<Vec<SoakSample>, String> {
        let _ = self.stop.send(());
        self.handle.join().map_err(|panic| {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_default();
            format!("the soak's sampling thread panicked: {why}")
        })
    }
}

/// The inode of each of `namespaces`, in order.
pub(crate) fn inodes(namespaces: &[Netns]) -> Result<Vec<u64>> {
    namespaces
        .iter()
        .map(|ns| {
            ns.inode()
                .with_context(|| format!("the inode of namespace {}", ns.label()))
        })
        .collect()
}

/// One sample: ctscope's memory, the kernel's counts, a scrape, the counts again, then the
/// maps. `inodes`: those of `namespaces` ([`inodes`]).
pub(crate) fn sample(pid: u32, namespaces: &[Netns], inodes: &[u64], t0: Instant) -> SoakSample {
    let rss_kib = rss_kib(pid);
    let before = truth::counts(namespaces).ok();
    let asked = Instant::now();
    let scraped = ctscope::scrape();
    let scrape_ms = asked.elapsed().as_secs_f64() * 1000.0;
    let after = truth::counts(namespaces).ok();
    let kernel_count = after.as_ref().map(|c| c.iter().sum());
    let (maps, map_errors) = bpf_maps::read();
    let (text, scrape_error) = match scraped {
        Ok(t) => (t, None),
        Err(e) => (String::new(), Some(format!("{e:#}"))),
    };
    let metrics = Samples::parse(&text);
    let per_netns = netns_samples(
        namespaces,
        inodes,
        before.as_deref(),
        after.as_deref(),
        &metrics,
    );
    SoakSample {
        t_s: (t0.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        rss_kib,
        scrape_ms: scrape_error
            .is_none()
            .then_some((scrape_ms * 10.0).round() / 10.0),
        scrape_bytes: text.len() as u64,
        scrape_error,
        exported_rss_bytes: metrics.whole("ctscope_resident_memory_bytes", &[]),
        exported_entries: metrics.whole("ctscope_conntrack_entries", &[]),
        kernel_count,
        kernel_count_before: before.map(|c| c.iter().sum()),
        namespaces: per_netns,
        maps,
        map_errors,
    }
}

/// Each lab namespace's count beside what the scrape exported for its inode, then every
/// other namespace the scrape exported (what the lab did not make but ctscope counts). An
/// inode exported twice counts as the sum of its series (a doubled series shows as a doubled
/// count); a value that is not a whole number as none.
fn netns_samples(
    namespaces: &[Netns],
    inodes: &[u64],
    before: Option<&[u64]>,
    after: Option<&[u64]>,
    metrics: &Samples,
) -> Vec<NetnsSample> {
    // Inode -> (name, value); the folded `other` series has no inode and is left out.
    let mut exported: std::collections::BTreeMap<u64, (String, Option<u64>)> = Default::default();
    for (labels, v) in metrics.series("ctscope_netns_conntrack_entries") {
        let Some(inode) = labels.get("netns_inode").and_then(|i| i.parse().ok()) else {
            continue;
        };
        let name = labels.get("name").cloned().unwrap_or_default();
        exported
            .entry(inode)
            .and_modify(|(_, sum)| *sum = sum.zip(whole(v)).map(|(a, b)| a.saturating_add(b)))
            .or_insert((name, whole(v)));
    }
    let mut out: Vec<NetnsSample> = namespaces
        .iter()
        .zip(inodes)
        .enumerate()
        .map(|(i, (ns, &inode))| NetnsSample {
            label: ns.label().to_string(),
            inode,
            kernel_count_before: before.and_then(|c| c.get(i).copied()),
            kernel_count: after.and_then(|c| c.get(i).copied()),
            exported: exported.get(&inode).and_then(|(_, v)| *v),
        })
        .collect();
    for (inode, (name, v)) in &exported {
        if !out.iter().any(|n| n.inode == *inode) {
            out.push(NetnsSample {
                label: name.clone(),
                inode: *inode,
                kernel_count_before: None,
                kernel_count: None,
                exported: *v,
            });
        }
    }
    out
}

/// `VmRSS` of /proc/PID/status, KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn print_sample(s: &SoakSample) {
    let maps: Vec<String> = s
        .maps
        .iter()
        .filter(|(_, m)| m.entries > 0 || m.kind == "slots")
        .map(|(n, m)| format!("{n} {}/{}", m.entries, m.max_entries))
        .collect();
    let opt = |v: Option<u64>| v.map_or_else(|| "?".into(), |c| c.to_string());
    let netns: Vec<String> = s
        .namespaces
        .iter()
        .filter(|n| n.exported.is_some() || n.kernel_count.is_some_and(|c| c > 0))
        .map(|n| format!("{} {}/{}", n.label, opt(n.exported), opt(n.kernel_count)))
        .collect();
    println!(
        "lab: soak {:.0} s: entries exported {} (kernel {}..{}; per netns exported/kernel: {})",
        s.t_s,
        opt(s.exported_entries),
        opt(s.kernel_count_before),
        opt(s.kernel_count),
        netns.join(", ")
    );
    println!(
        "lab: soak {:.0} s: rss {} KiB, scrape {}, kernel count {}, maps: {}{}",
        s.t_s,
        s.rss_kib.map_or_else(|| "?".into(), |k| k.to_string()),
        match (&s.scrape_ms, &s.scrape_error) {
            (Some(ms), _) => format!("{ms:.0} ms ({} bytes)", s.scrape_bytes),
            (None, e) => format!("FAILED ({})", e.as_deref().unwrap_or("?")),
        },
        s.kernel_count.map_or_else(|| "?".into(), |c| c.to_string()),
        if maps.is_empty() {
            "none in use".to_string()
        } else {
            maps.join(", ")
        },
        if s.map_errors.is_empty() {
            String::new()
        } else {
            format!(" (errors: {})", s.map_errors.join("; "))
        }
    );
}
