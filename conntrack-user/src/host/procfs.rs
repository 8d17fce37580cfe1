//! Conntrack counters and settings from procfs and sysfs: the ground the
//! kernel itself reports, and ctscope's fallback when probes cannot attach.

use std::{collections::BTreeMap, fs, io, path::Path};

use serde::Serialize;

pub const STAT_FILE: &str = "/proc/net/stat/nf_conntrack";
pub const SYSCTL_DIR: &str = "/proc/sys/net/netfilter";
pub const HASHSIZE_PARAM: &str = "/sys/module/nf_conntrack/parameters/hashsize";

/// Per-CPU lines of `/proc/net/stat/nf_conntrack` summed by column, under
/// stable names: the header changed over time (`searched` -> `clashres` in
/// 5.10, `delete_list` -> `chainlength` in 5.15).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StatTotals {
    /// Column name -> sum over CPUs. `entries` is the namespace's count
    /// repeated on every line, so it is kept once, not summed.
    pub columns: BTreeMap<String, u64>,
    /// Column name -> each CPU's 32-bit counter, as read: what a delta
    /// needs to see through a CPU's counter wrapping (a sum goes down then).
    #[serde(skip)]
    pub per_cpu: BTreeMap<String, Vec<u32>>,
}

fn canonical(name: &str) -> &str {
    match name {
        "clashres" => "clash_resolve",
        "chainlength" => "chaintoolong",
        other => other,
    }
}

impl StatTotals {
    pub fn parse(text: &str) -> io::Result<StatTotals> {
        let mut lines = text.lines();
        let header: Vec<&str> = lines
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "empty stat file"))?
            .split_whitespace()
            .collect();
        let mut columns = BTreeMap::new();
        let mut per_cpu: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for line in lines {
            for (name, field) in header.iter().zip(line.split_whitespace()) {
                let v = u64::from_str_radix(field, 16).map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidData, format!("{name}={field}: {e}"))
                })?;
                let slot = columns.entry(canonical(name).to_string()).or_insert(0u64);
                if *name == "entries" {
                    *slot = v;
                } else {
                    // Wider than 32 bits is not a per-CPU counter of this
                    // file: the per-CPU rows are then left out (deltas of
                    // the sums only).
                    match u32::try_from(v) {
                        Ok(v32) => per_cpu
                            .entry(canonical(name).to_string())
                            .or_default()
                            .push(v32),
                        Err(_) => {
                            per_cpu.insert(canonical(name).to_string(), Vec::new());
                        }
                    }
                    // The kernel's per-CPU counters are 32-bit (seq_printf
                    // "%08x", nf_conntrack_standalone.c, v6.1): a sum past
                    // u64 is not a counter, it is a file to refuse.
                    *slot = slot.checked_add(v).ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("column {name}: the sum over CPUs overflows 64 bits"),
                        )
                    })?;
                }
            }
        }
        Ok(StatTotals { columns, per_cpu })
    }

    pub fn read(path: &Path) -> io::Result<StatTotals> {
        StatTotals::parse(&fs::read_to_string(path)?)
    }

    pub fn read_current() -> io::Result<StatTotals> {
        Self::read(Path::new(STAT_FILE))
    }

    pub fn get(&self, name: &str) -> u64 {
        self.columns.get(name).copied().unwrap_or(0)
    }

    /// The kernel has a chain limit (5.15+) when the column exists.
    pub fn has_chain_limit_column(&self) -> bool {
        self.columns.contains_key("chaintoolong")
    }

    /// Column-wise difference `self - earlier`: per CPU with 32-bit
    /// wrapping subtraction, then summed, so that a CPU's counter that
    /// wrapped once between the two reads still counts what it rose (the
    /// sums alone would go down). Where the CPUs do not match (a CPU came
    /// online, a row too wide), the sums' difference, saturating.
    pub fn delta(&self, earlier: &StatTotals) -> StatTotals {
        let columns = self
            .columns
            .iter()
            .filter(|(k, _)| k.as_str() != "entries")
            .map(|(k, v)| {
                let rows = self.per_cpu.get(k).zip(earlier.per_cpu.get(k));
                let d = match rows {
                    Some((a, b)) if a.len() == b.len() && !a.is_empty() => a
                        .iter()
                        .zip(b)
                        .map(|(x, y)| u64::from(x.wrapping_sub(*y)))
                        .fold(0u64, u64::saturating_add),
                    _ => v.saturating_sub(earlier.get(k)),
                };
                (k.clone(), d)
            })
            .collect();
        StatTotals {
            columns,
            per_cpu: BTreeMap::new(),
        }
    }

    /// Adds a delta's columns to these (running totals; saturating).
    pub fn accumulate(&mut self, delta: &StatTotals) {
        for (k, v) in &delta.columns {
            let slot = self.columns.entry(k.clone()).or_insert(0);
            *slot = slot.saturating_add(*v);
        }
    }
}

pub fn read_u64(path: &Path) -> io::Result<u64> {
    let s = fs::read_to_string(path)?;
    s.trim().parse::<u64>().map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}

pub fn sysctl(name: &str) -> io::Result<u64> {
    read_u64(&Path::new(SYSCTL_DIR).join(name))
}

/// Current table settings of the namespace ctscope runs in.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct TableSettings {
    pub count: Option<u64>,
    pub max: Option<u64>,
    pub buckets: Option<u64>,
}

impl TableSettings {
    pub fn read() -> TableSettings {
        TableSettings {
            count: sysctl("nf_conntrack_count").ok(),
            max: sysctl("nf_conntrack_max").ok(),
            buckets: sysctl("nf_conntrack_buckets").ok(),
        }
    }
}

/// Every `nf_conntrack_*timeout*` sysctl holding one integer, by short name.
pub fn timeouts() -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(dir) = fs::read_dir(SYSCTL_DIR) else {
        return out;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("nf_conntrack_")
            && name.contains("timeout")
            && let Ok(v) = read_u64(&e.path())
        {
            out.insert(name.trim_start_matches("nf_conntrack_").to_string(), v);
        }
    }
    out
}

/// Bytes the `nf_conntrack` slab spends per object (its `slab_size`: the
/// object with its alignment), from SLUB's sysfs.
pub fn slab_size() -> Option<u64> {
    read_u64(Path::new("/sys/kernel/slab/nf_conntrack/slab_size")).ok()
}

/// `MemTotal` from /proc/meminfo, in bytes.
pub fn ram_bytes() -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Online CPUs.
pub fn cpus() -> Option<u64> {
    std::thread::available_parallelism()
        .ok()
        .map(|n| n.get() as u64)
}

/// Object size of the `nf_conntrack` slab cache: SLUB's sysfs first, then
/// `/proc/slabinfo` (root only).
pub fn slab_object_size() -> Option<u64> {
    if let Ok(v) = read_u64(Path::new("/sys/kernel/slab/nf_conntrack/object_size")) {
        return Some(v);
    }
    let text = fs::read_to_string("/proc/slabinfo").ok()?;
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"nf_conntrack"))
        .and_then(|f| f.get(3)?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_cpus_and_renames_columns() {
        let text = "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart\n\
                    0000000a  00000001 00000000 00000000 00000002 00000000 00000000 00000003 00000000 00000004 00000005 00000000 00000000  00000000 00000000 00000000 00000010\n\
                    0000000a  00000001 00000000 00000000 00000000 00000000 00000000 00000007 00000000 00000008 00000000 00000001 00000000  00000000 00000000 00000000 00000001\n";
        let s = StatTotals::parse(text).expect("parse");
        assert_eq!(s.get("entries"), 10);
        assert_eq!(s.get("clash_resolve"), 2);
        assert_eq!(s.get("chaintoolong"), 10);
        assert_eq!(s.get("insert_failed"), 12);
        assert_eq!(s.get("search_restart"), 17);
        assert!(s.has_chain_limit_column());
        let d = s.delta(&StatTotals::default());
        assert!(!d.columns.contains_key("entries"));
    }

    #[test]
    fn old_header_has_no_chain_limit() {
        let text = "entries searched found new invalid ignore delete delete_list insert insert_failed drop early_drop icmp_error expect_new expect_create expect_delete search_restart\n\
                    00000001 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000\n";
        let s = StatTotals::parse(text).expect("parse");
        assert!(!s.has_chain_limit_column());
        assert!(StatTotals::parse("").is_err());
        assert!(StatTotals::parse("a b\nzz 1\n").is_err());
    }

    #[test]
    fn a_column_sum_past_u64_is_an_error_not_a_wrap() {
        let text = "entries found\n00000001 ffffffffffffffff\n00000001 0000000000000001\n";
        let err = StatTotals::parse(text).expect_err("overflowing sum");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("found"), "{err}");
        // The largest sum that fits is kept exactly.
        let text = "entries found\n00000001 fffffffffffffffe\n00000001 0000000000000001\n";
        assert_eq!(
            StatTotals::parse(text).expect("fits").get("found"),
            u64::MAX
        );
    }

    #[test]
    fn a_cpu_counter_that_wrapped_still_counts_what_it_rose() {
        let before =
            "entries drop insert\n00000001 fffffff0 00000005\n00000001 00000010 00000001\n";
        // CPU 0's drop counter wrapped: 0xfffffff0 -> 0x00000004 is 20 more.
        let after = "entries drop insert\n00000001 00000004 00000007\n00000001 00000013 00000001\n";
        let (b, a) = (
            StatTotals::parse(before).expect("parse"),
            StatTotals::parse(after).expect("parse"),
        );
        // The sums went down (0x1_0000_0000 -> 0x17): no longer a delta.
        assert!(a.get("drop") < b.get("drop"));
        let d = a.delta(&b);
        assert_eq!(d.get("drop"), 20 + 3);
        assert_eq!(d.get("insert"), 2);
        // Running totals over two intervals.
        let mut acc = StatTotals::default();
        acc.accumulate(&d);
        acc.accumulate(&d);
        assert_eq!(acc.get("drop"), 46);
        // Another number of CPUs: the sums, saturating.
        let one_cpu = StatTotals::parse("entries drop\n00000001 00000001\n").expect("parse");
        assert_eq!(one_cpu.delta(&b).get("drop"), 0);
    }
}
