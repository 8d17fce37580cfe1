//! Parsing `/proc/net/stat/nf_conntrack`: a header of column names, then one line of hex values
//! per possible CPU. The header changed over kernel versions (see kernel-conntrack notes §6), so
//! columns are summed by NAME and the renamed ones are mapped to one name:
//!
//! | kernel | column | our name |
//! |---|---|---|
//! | 5.10+ | `clashres` | `clash_resolve` |
//! | 5.15+ | `chainlength` | `chaintoolong` |
//!
//! `searched` (<= 5.9) and `delete_list` (<= 5.14) are different counters and keep their names;
//! a counter missing on a kernel reads as 0 (there is no chain limit before 5.15).

use std::collections::BTreeMap;

use crate::result::StatDelta;

/// Why a stat file could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StatParseError {
    #[error("the stat file is empty")]
    Empty,
    #[error("line {line}: {found} values for {expected} columns")]
    ColumnCount {
        line: usize,
        expected: usize,
        found: usize,
    },
    #[error("line {line}: {value:?} is not a hex number")]
    NotHex { line: usize, value: String },
}

/// Counters summed over all CPUs, by (normalised) column name.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StatSnapshot(pub BTreeMap<String, u64>);

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
        let mut sums: BTreeMap<String, u64> =
            header.iter().map(|h| (h.to_string(), 0u64)).collect();
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
                let v = u64::from_str_radix(value, 16).map_err(|_| StatParseError::NotHex {
                    line: i + 2,
                    value: value.to_string(),
                })?;
                if let Some(sum) = sums.get_mut(*name) {
                    *sum = sum.saturating_add(v);
                }
            }
        }
        Ok(StatSnapshot(sums))
    }

    /// A counter's sum, 0 when this kernel has no such column.
    pub fn get(&self, name: &str) -> u64 {
        self.0.get(name).copied().unwrap_or(0)
    }

    /// The rise of the counters the lab reports, from `before` to `self`. `None` if a counter went
    /// down, which only a per-CPU 32-bit wrap could do: then the numbers cannot be trusted.
    pub fn delta_since(&self, before: &StatSnapshot) -> Option<StatDelta> {
        let d = |name: &str| self.get(name).checked_sub(before.get(name));
        Some(StatDelta {
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
    // Layout of 5.10: `delete_list` where 5.15 has `chainlength`.
    const V510: &str = "\
entries  clashres found new invalid ignore delete delete_list insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart
00000010  00000000 00000000 00000000 00000000 00000000 00000000 00000007 00000000 00000001 00000001 00000000 00000000  00000000 00000000 00000000 00000000
";

    #[test]
    fn sums_columns_by_name_over_cpus() {
        let s = StatSnapshot::parse(NEW).expect("parses");
        assert_eq!(s.get("entries"), 0x4e20 * 2);
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
    }

    #[test]
    fn delta_between_snapshots() {
        let before = StatSnapshot::parse(V510).expect("parses");
        let after = StatSnapshot::parse(NEW).expect("parses");
        let d = after.delta_since(&before).expect("no counter went down");
        assert_eq!(
            d,
            StatDelta {
                insert_failed: 13,
                drop: 14,
                early_drop: 16,
                chaintoolong: 12,
                clash_resolve: 3,
                search_restart: 5,
            }
        );
        assert_eq!(before.delta_since(&after), None);
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
    }
}
