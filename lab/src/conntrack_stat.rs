//! Parsing `/proc/net/stat/nf_conntrack`: a header of column names, then one line of hex values
//! per possible CPU. The header changed over kernel versions (see kernel-conntrack notes §6), so
//! columns are read by NAME and the renamed ones are mapped to one name:
//!
//! | kernel | column | our name |
//! |---|---|---|
//! | 5.10+ | `clashres` | `clash_resolve` |
//! | 5.15+ | `chainlength` | `chaintoolong` |
//!
//! `searched` (<= 5.9) and `delete_list` (<= 5.14) are different counters and keep their names;
//! a counter missing on a kernel reads as 0 (there is no chain limit before 5.15).
//!
//! Two kinds of column:
//! - `entries` is the namespace's entry count (`nf_conntrack_count`), printed again on every
//!   CPU's line. It is not a per-CPU counter and is never summed: [`StatSnapshot::entries`]
//!   keeps one value (the lines are formatted one after the other, so they can differ by the
//!   inserts in between; the largest is kept).
//! - every other column is a per-CPU `unsigned int` counter, kept per CPU. A delta is computed
//!   per CPU with 32-bit wrapping subtraction and then summed, so a CPU's counter that wrapped
//!   past `u32::MAX` between two snapshots still gives its true rise (as long as no CPU's counter
//!   rose by 2^32 or more in between, which a lab run cannot reach).

use std::collections::{BTreeMap, BTreeSet};

use crate::result::StatDelta;

/// Why a stat file could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StatParseError {
    #[error("the stat file is empty")]
    Empty,
    #[error("column {name:?} appears twice in the header")]
    DuplicateColumn { name: String },
    #[error("line {line}: {found} values for {expected} columns")]
    ColumnCount {
        line: usize,
        expected: usize,
        found: usize,
    },
    #[error("line {line}: {value:?} is not a 32-bit hex number")]
    NotHex { line: usize, value: String },
}

/// Why two snapshots cannot be subtracted: they do not have the same layout, so they are not
/// two readings of the same file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StatDeltaError {
    #[error("{before} CPU lines before, {after} after")]
    CpuCount { before: usize, after: usize },
    #[error("column {name:?} is in only one of the two snapshots")]
    Column { name: String },
}

/// The name of the column that holds the namespace's entry count.
pub const ENTRIES: &str = "entries";

/// One reading of the stat file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatSnapshot {
    /// The `entries` column: the namespace's entry count, not a per-CPU counter. The first
    /// line's value, or the largest if the lines disagree; 0 when there is no such column.
    pub entries: u64,
    /// The number of CPU lines.
    pub cpus: usize,
    /// Every other column by (normalised) name: one value per CPU line, in file order.
    pub per_cpu: BTreeMap<String, Vec<u32>>,
}

/// Maps a header name to the name the lab uses for it.
pub fn normalise_column(name: &str) -> &str {
    match name {
        "clashres" => "clash_resolve",
        "chainlength" => "chaintoolong",
        other => other,
    }
}

impl StatSnapshot {
    /// Parses the whole file.
    pub fn parse(text: &str) -> Result<StatSnapshot, StatParseError> {
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let header: Vec<&str> = lines
            .next()
            .ok_or(StatParseError::Empty)?
            .split_whitespace()
            .map(normalise_column)
            .collect();
        let mut snap = StatSnapshot::default();
        let mut seen = BTreeSet::new();
        for name in &header {
            if !seen.insert(*name) {
                return Err(StatParseError::DuplicateColumn {
                    name: name.to_string(),
                });
            }
            if *name != ENTRIES {
                snap.per_cpu.insert(name.to_string(), Vec::new());
            }
        }
        for (i, line) in lines.enumerate() {
            let values: Vec<&str> = line.split_whitespace().collect();
            if values.len() != header.len() {
                return Err(StatParseError::ColumnCount {
                    line: i + 2,
                    expected: header.len(),
                    found: values.len(),
                });
            }
            for (name, value) in header.iter().zip(values) {
                let v = u32::from_str_radix(value, 16).map_err(|_| StatParseError::NotHex {
                    line: i + 2,
                    value: value.to_string(),
                })?;
                if *name == ENTRIES {
                    snap.entries = snap.entries.max(u64::from(v));
                } else if let Some(cpus) = snap.per_cpu.get_mut(*name) {
                    cpus.push(v);
                }
            }
            snap.cpus += 1;
        }
        Ok(snap)
    }

    /// The namespace-wide value of a column: `entries` as it is, any other column summed over
    /// CPUs; 0 when this kernel has no such column.
    pub fn get(&self, name: &str) -> u64 {
        if name == ENTRIES {
            return self.entries;
        }
        self.per_cpu
            .get(name)
            .map_or(0, |cpus| cpus.iter().map(|v| u64::from(*v)).sum())
    }

    /// The rise of one per-CPU counter from `before` to `self`: per CPU, 32-bit wrapping, then
    /// summed. A column that neither snapshot has rose by 0.
    fn rise(&self, before: &StatSnapshot, name: &str) -> Result<u64, StatDeltaError> {
        match (self.per_cpu.get(name), before.per_cpu.get(name)) {
            (None, None) => Ok(0),
            (Some(after), Some(before)) => Ok(after
                .iter()
                .zip(before)
                .map(|(a, b)| u64::from(a.wrapping_sub(*b)))
                .sum()),
            _ => Err(StatDeltaError::Column {
                name: name.to_string(),
            }),
        }
    }

    /// The rise of the counters the lab reports, from `before` to `self`. A per-CPU counter that
    /// wrapped is no error (see the module documentation); snapshots of different layouts are.
    pub fn delta_since(&self, before: &StatSnapshot) -> Result<StatDelta, StatDeltaError> {
        if self.cpus != before.cpus {
            return Err(StatDeltaError::CpuCount {
                before: before.cpus,
                after: self.cpus,
            });
        }
        let d = |name: &str| self.rise(before, name);
        Ok(StatDelta {
            insert_failed: d("insert_failed")?,
            drop: d("drop")?,
            early_drop: d("early_drop")?,
            chaintoolong: d("chaintoolong")?,
            clash_resolve: d("clash_resolve")?,
            search_restart: d("search_restart")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Layout of 6.1+ (2 CPUs).
    const NEW: &str = "\
entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart
00004e20  00000001 00000000 00000000 00000000 00000000 00000000 00000002 00000000 00000003 00000003 00000010 00000000  00000000 00000000 00000000 00000005
00004e20  00000002 00000000 00000000 00000000 00000000 00000000 0000000a 00000000 0000000b 0000000c 00000000 00000000  00000000 00000000 00000000 00000000
";
    // The same 2 CPUs earlier, with CPU 0's `drop` and `insert_failed` just below the 32-bit
    // wrap (they read 3 in `NEW`), and `entries` changing between the two lines.
    const NEW_BEFORE: &str = "\
entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart
00004e1e  00000001 00000000 00000000 00000000 00000000 00000000 00000001 00000000 fffffffe fffffffd 00000008 00000000  00000000 00000000 00000000 00000005
00004e1f  00000000 00000000 00000000 00000000 00000000 00000000 00000004 00000000 00000005 00000006 00000000 00000000  00000000 00000000 00000000 00000000
";
    // Layout of 5.10: `delete_list` where 5.15 has `chainlength` (1 CPU).
    const V510: &str = "\
entries  clashres found new invalid ignore delete delete_list insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart
00000010  00000000 00000000 00000000 00000000 00000000 00000000 00000007 00000000 00000001 00000001 00000000 00000000  00000000 00000000 00000000 00000000
";

    #[test]
    fn entries_is_the_namespace_count_not_a_sum() {
        let s = StatSnapshot::parse(NEW).expect("parses");
        assert_eq!(s.cpus, 2);
        assert_eq!(s.entries, 0x4e20, "the same count on every CPU line");
        assert_eq!(s.get("entries"), 0x4e20);
        assert!(!s.per_cpu.contains_key("entries"));
        // Lines formatted while entries were inserted disagree: the largest is kept.
        let s = StatSnapshot::parse(NEW_BEFORE).expect("parses");
        assert_eq!(s.get(ENTRIES), 0x4e1f);
    }

    #[test]
    fn counters_are_kept_per_cpu_by_name() {
        let s = StatSnapshot::parse(NEW).expect("parses");
        assert_eq!(s.per_cpu["clash_resolve"], [1, 2]);
        assert_eq!(s.per_cpu["drop"], [3, 0xc]);
        assert_eq!(s.get("clash_resolve"), 3);
        assert_eq!(s.get("chaintoolong"), 12);
        assert_eq!(s.get("insert_failed"), 14);
        assert_eq!(s.get("drop"), 15);
        assert_eq!(s.get("early_drop"), 16);
        assert_eq!(s.get("search_restart"), 5);
        assert_eq!(
            s.get("clashres"),
            0,
            "renamed column is only under its new name"
        );
    }

    #[test]
    fn old_kernels_have_no_chaintoolong() {
        let s = StatSnapshot::parse(V510).expect("parses");
        assert_eq!(s.get("chaintoolong"), 0);
        assert_eq!(s.get("delete_list"), 7);
        assert_eq!(s.get("insert_failed"), 1);
        assert_eq!(s.entries, 0x10);
        // Both snapshots lack the column: it rose by 0.
        let d = s.delta_since(&s).expect("same layout");
        assert_eq!(d, StatDelta::default());
    }

    #[test]
    fn delta_is_per_cpu_and_survives_a_32_bit_wrap() {
        let before = StatSnapshot::parse(NEW_BEFORE).expect("parses");
        let after = StatSnapshot::parse(NEW).expect("parses");
        // The sums went down for `drop` and `insert_failed` (CPU 0 wrapped), yet each CPU rose.
        assert!(after.get("drop") < before.get("drop"));
        let d = after.delta_since(&before).expect("same layout");
        assert_eq!(
            d,
            StatDelta {
                // CPU 0: 0xfffffffe -> 3 is 5; CPU 1: 5 -> 0xb is 6.
                insert_failed: 11,
                // CPU 0: 0xfffffffd -> 3 is 6; CPU 1: 6 -> 0xc is 6.
                drop: 12,
                early_drop: 8,
                chaintoolong: 1 + 6,
                clash_resolve: 2,
                search_restart: 0,
            }
        );
        assert_eq!(after.delta_since(&after), Ok(StatDelta::default()));
    }

    #[test]
    fn snapshots_of_different_layouts_do_not_subtract() {
        let v510 = StatSnapshot::parse(V510).expect("parses");
        let new = StatSnapshot::parse(NEW).expect("parses");
        assert_eq!(
            new.delta_since(&v510),
            Err(StatDeltaError::CpuCount {
                before: 1,
                after: 2
            })
        );
        let one_cpu_new =
            StatSnapshot::parse(&NEW[..NEW.rfind("00004e20").expect("line 3")]).expect("parses");
        assert_eq!(one_cpu_new.cpus, 1);
        assert_eq!(
            one_cpu_new.delta_since(&v510),
            Err(StatDeltaError::Column {
                name: "chaintoolong".to_string()
            })
        );
    }

    #[test]
    fn rejects_malformed_files() {
        assert_eq!(StatSnapshot::parse(""), Err(StatParseError::Empty));
        assert!(matches!(
            StatSnapshot::parse("a b\n1\n"),
            Err(StatParseError::ColumnCount { line: 2, .. })
        ));
        assert!(matches!(
            StatSnapshot::parse("a b\n1 zz\n"),
            Err(StatParseError::NotHex { .. })
        ));
        assert!(
            matches!(
                StatSnapshot::parse("a b\n1 100000000\n"),
                Err(StatParseError::NotHex { line: 2, .. })
            ),
            "the counters are 32-bit"
        );
        assert_eq!(
            StatSnapshot::parse("clashres clash_resolve\n1 2\n"),
            Err(StatParseError::DuplicateColumn {
                name: "clash_resolve".to_string()
            })
        );
    }
}
