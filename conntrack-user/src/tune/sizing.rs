//! What a table of a given size costs and what it does at a given load: the
//! kernel's own defaults, the formulas people use instead of measuring, the
//! memory of a (buckets, max) pair, and the chains expected at a load.
//!
//! Kernel sources: `nf_conntrack_init_start` and `nf_ct_alloc_hashtable`
//! (net/netfilter/nf_conntrack_core.c, v5.10 and v6.1; d532bcd0b269 changed
//! the defaults in 5.15), `nf_ct_ext_add` (nf_conntrack_extend.c).

use serde::{Deserialize, Serialize};

use crate::report::chain_model;

/// The kernel allocates buckets in whole pages: `nf_ct_alloc_hashtable`
/// rounds the size up to a multiple of `PAGE_SIZE / sizeof(struct
/// hlist_nulls_head)` = 512 (x86_64, 4 KiB pages).
pub const BUCKET_ROUND: u64 = 512;
/// Bytes per bucket (`struct hlist_nulls_head`: one pointer).
pub const BUCKET_BYTES: u64 = 8;
/// `NF_CT_EXT_PREALLOC`: an entry with any extension gets at least this
/// much in a separate kmalloc (nf_conntrack_extend.c, 3.x..6.18).
pub const EXT_PREALLOC: u64 = 128;

/// The largest bucket count ctscope recommends, and the largest `apply`
/// accepts (apply.rs uses this one): 2^26 heads are 512 MiB. The kernel
/// itself refuses tables over INT_MAX / sizeof(struct hlist_nulls_head)
/// slots, about 2^28 (`nf_ct_alloc_hashtable`, v5.10..v6.12).
pub const MAX_BUCKETS: u64 = 1 << 26;
/// The largest max ctscope recommends: `nf_conntrack_max` is an `int`
/// sysctl (INT_MAX), rounded down to the 1024 entries ctscope rounds max to.
pub const MAX_ENTRIES: u64 = i32::MAX as u64 / 1024 * 1024;

/// Buckets as the kernel will allocate them (whole pages), saturated at the
/// largest multiple of a page a u64 holds.
pub fn table_buckets(requested: u64) -> u64 {
    requested
        .max(1)
        .div_ceil(BUCKET_ROUND)
        .checked_mul(BUCKET_ROUND)
        .unwrap_or(u64::MAX / BUCKET_ROUND * BUCKET_ROUND)
}

/// `major.minor` of a release string such as `6.1.0-50-cloud-amd64`.
pub fn version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// A (buckets, max) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Size {
    pub buckets: u64,
    pub max: u64,
}

/// The kernel's defaults for a machine with `ram_bytes` of RAM (totalram
/// pages as `MemTotal` shows them), without a `hashsize=` parameter.
/// 5.15+ (d532bcd0b269): RAM/16384/8 buckets, 262144 above 4 GiB (64-bit),
/// 65536 above 1 GiB, at least 1024; max = buckets. Before: 65536 above
/// 4 GiB, 16384 above 1 GiB, at least 32; max = 4 x buckets.
pub fn kernel_default(ram_bytes: u64, release: &str) -> Size {
    const GIB: u64 = 1 << 30;
    let raw = ram_bytes / 16384 / 8;
    let new_defaults = version(release).is_none_or(|v| v >= (5, 15));
    let (buckets, factor) = if new_defaults {
        let b = if ram_bytes > 4 * GIB {
            262_144
        } else if ram_bytes > GIB {
            65_536
        } else {
            raw
        };
        (b.max(1024), 1)
    } else {
        let b = if ram_bytes > 4 * GIB {
            65_536
        } else if ram_bytes > GIB {
            16_384
        } else {
            raw
        };
        (b.max(32), 4)
    };
    // `nf_ct_alloc_hashtable` rounds the size up to whole pages first, and
    // max is computed from the rounded size (seen: 2,048/2,048 in a 256 MiB
    // 6.1 VM, where RAM/16384/8 is about 1,740).
    let buckets = table_buckets(buckets);
    Size {
        buckets,
        max: buckets.saturating_mul(factor),
    }
}

/// The seed post's formula (the ip_conntrack-era default): max = RAM /
/// 16384 / (pointer bits / 32), buckets = max / 4.
pub fn seed_formula(ram_bytes: u64) -> Size {
    let max = ram_bytes / 16384 / (u64::from(usize::BITS) / 32);
    Size {
        buckets: table_buckets(max / 4),
        max,
    }
}

/// kube-proxy's: max = max(131072, 32768 x cores) (`--conntrack-min`,
/// `--conntrack-max-per-core`), and hashsize raised to max / 4 when it is
/// below (cmd/kube-proxy/app/conntrack.go).
pub fn kube_proxy(cpus: u64, current_buckets: u64) -> Size {
    let max = 32_768u64.saturating_mul(cpus).max(131_072);
    Size {
        buckets: table_buckets(current_buckets.max(max / 4)),
        max,
    }
}

/// What one entry costs: its slab object and its extension area.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EntryCost {
    /// Slab bytes per object (`slab_size`, else the object size).
    pub slab_bytes: u64,
    /// Extension bytes per entry (mean; measured or estimated).
    pub ext_bytes: f64,
}

impl EntryCost {
    pub fn per_entry(&self) -> f64 {
        self.slab_bytes as f64 + self.ext_bytes
    }
}

/// Bytes of a table of `s` when full: the buckets plus `max` entries,
/// saturated at u64::MAX (a cost that is not a number counts as the most,
/// so that no budget check passes on it; a negative one as 0).
pub fn memory_bytes(s: Size, cost: EntryCost) -> u64 {
    let entries = s.max as f64 * cost.per_entry();
    // `as` saturates (inf -> u64::MAX, negative -> 0); NaN would give 0.
    let entries = if entries.is_nan() {
        u64::MAX
    } else {
        entries.ceil() as u64
    };
    table_buckets(s.buckets)
        .saturating_mul(BUCKET_BYTES)
        .saturating_add(entries)
}

/// Chains expected for inserts when `entries` live in `buckets`, under
/// uniform hashing, scaled by the skew measured on this host (the
/// observed p99 over the model's at the observed load; 1 = uniform).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Chains {
    pub mean: f64,
    pub p99: f64,
}

/// Chains of 1 where the model has no figure: an empty table, or a skew
/// that is no finite number (recommend's skew always is). Callers that
/// decide on the figure use [`expected_checked`].
pub fn expected(entries: u64, buckets: u64, skew: f64) -> Chains {
    expected_checked(entries, buckets, skew).unwrap_or(Chains {
        mean: 1.0,
        p99: 1.0,
    })
}

/// The chains expected, `None` where the model has no figure: no entries,
/// a skew that is not a finite number, or a result that is not finite.
/// The p99 is the model's true quantile at any load (never the walk
/// limit's), times the skew (at least 1).
pub fn expected_checked(entries: u64, buckets: u64, skew: f64) -> Option<Chains> {
    if !skew.is_finite() {
        return None;
    }
    let q = chain_model::chain_quantiles(entries, table_buckets(buckets))?;
    let c = Chains {
        mean: round2(q.mean),
        p99: round2(q.p99 * skew.max(1.0)),
    };
    (c.mean.is_finite() && c.p99.is_finite()).then_some(c)
}

/// Expected inserts refused as "chain too long" among `inserts` inserts at
/// `entries` live entries: an upper bound, as if every insert met that
/// occupancy (a table that filled up during the run met it only at the
/// end). A bucket is refused once it already holds more than the kernel's
/// limit + 1 nodes, the limit being drawn per insert from 50..79
/// (`MIN_CHAINLEN` + `get_random_u32_below(MAX_CHAINLEN)`, c77737b736ce: 6.3
/// and the 6.1.y/5.15.y backports); each insert checks two buckets.
pub fn expected_chain_refusals(inserts: u64, entries: u64, buckets: u64) -> f64 {
    let b = table_buckets(buckets) as f64;
    let lambda = 2.0 * entries as f64 / b;
    let per_limit: f64 = (50..80).map(|l| poisson_tail(lambda, l + 2)).sum::<f64>() / 30.0;
    2.0 * inserts as f64 * per_limit
}

/// P(Poisson(λ) >= k), right for any λ (for λ far above k it is ~1: the
/// old upward sum from k returned ~0 there, "no refusals" for a table
/// hundreds of times over its chain limit). λ NaN or <= 0: 0 for k >= 1.
pub fn poisson_tail(lambda: f64, k: u32) -> f64 {
    chain_model::poisson_upper_tail(lambda, u64::from(k))
}

pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn kernel_defaults_by_version_and_ram() {
        // The lab's 2 GiB VMs: 6.1 and 6.12 show 65536/65536 (seen), 5.10
        // 16384 buckets and max 65536 (seen in the lab's 5.10 runs).
        assert_eq!(
            kernel_default(2 * GIB - 100 * (1 << 20), "6.1.0-50-cloud-amd64"),
            Size {
                buckets: 65_536,
                max: 65_536
            }
        );
        assert_eq!(
            kernel_default(2 * GIB - 100 * (1 << 20), "5.10.0-32-cloud-amd64"),
            Size {
                buckets: 16_384,
                max: 65_536
            }
        );
        // Small machines: RAM/16384/8, rounded up to whole pages of 512
        // buckets, max from the rounded size (the lab's 256 MiB 6.1 VM: 2048/2048).
        let small = kernel_default(480 * (1 << 20), "6.12.117+deb13-cloud-amd64");
        assert_eq!(
            small,
            Size {
                buckets: 4096,
                max: 4096
            }
        );
        assert_eq!(kernel_default(480 * (1 << 20), "5.10.0").max, 4 * 4096);
        assert_eq!(kernel_default(64 * GIB, "6.18.0").max, 262_144);
        assert_eq!(kernel_default(100 << 20, "6.18.0").buckets, 1024);
    }

    #[test]
    fn formulas() {
        // The seed: 2 GiB -> 65536 entries, 16384 buckets.
        assert_eq!(
            seed_formula(2 * GIB),
            Size {
                buckets: 16_384,
                max: 65_536
            }
        );
        // kube-proxy: 2 cores stay at the minimum; 96 cores (kubernetes #72472).
        assert_eq!(kube_proxy(2, 65_536).max, 131_072);
        assert_eq!(kube_proxy(2, 1024).buckets, 32_768);
        assert_eq!(kube_proxy(2, 65_536).buckets, 65_536);
        assert_eq!(kube_proxy(96, 1024).max, 3_145_728);
    }

    #[test]
    fn memory_and_rounding() {
        assert_eq!(table_buckets(1), 512);
        assert_eq!(table_buckets(1024), 1024);
        assert_eq!(table_buckets(1025), 1536);
        let cost = EntryCost {
            slab_bytes: 256,
            ext_bytes: 128.0,
        };
        // 1M buckets are 8 MiB; 1M entries at 384 bytes are 384 MiB.
        assert_eq!(
            memory_bytes(
                Size {
                    buckets: 1 << 20,
                    max: 1 << 20
                },
                cost
            ),
            8 * (1 << 20) + 384 * (1 << 20)
        );
    }

    #[test]
    fn chains_and_refusals() {
        // λ = 2 (max = buckets, full): mean 3 (1 + λ).
        let c = expected(65_536, 65_536, 1.0);
        assert!((c.mean - 3.0).abs() < 0.01, "{c:?}");
        let skewed = expected(65_536, 65_536, 1.5);
        assert!(skewed.p99 > c.p99);
        // The lab's chain-overflow: 20,000 entries in 1024 buckets (λ ≈ 39)
        // refused 1..10 of 20,000 inserts on 6.1/6.12 while filling up; the
        // bound (every insert at the peak) is above that, not orders above.
        let r = expected_chain_refusals(20_000, 20_000, 1024);
        assert!(r > 10.0 && r < 1000.0, "{r}");
        assert!(expected_chain_refusals(20_000, 20_000, 65_536) < 1e-9);
        assert!((poisson_tail(3.0, 0) - 1.0).abs() < 1e-12);
        assert!((poisson_tail(1.0, 1) - (1.0 - (-1.0f64).exp())).abs() < 1e-12);
    }

    #[test]
    fn absurd_sizes_saturate() {
        // These wrapped (release) or panicked (debug).
        assert_eq!(table_buckets(u64::MAX), u64::MAX / 512 * 512);
        assert_eq!(table_buckets(u64::MAX - 600), u64::MAX / 512 * 512);
        let cost = |ext: f64| EntryCost {
            slab_bytes: u64::MAX,
            ext_bytes: ext,
        };
        let huge = Size {
            buckets: u64::MAX,
            max: u64::MAX,
        };
        assert_eq!(memory_bytes(huge, cost(0.0)), u64::MAX);
        // A cost that is no number is the most, never 0 (which would pass
        // any budget).
        assert_eq!(
            memory_bytes(
                Size {
                    buckets: 1024,
                    max: 1024
                },
                EntryCost {
                    slab_bytes: 0,
                    ext_bytes: f64::NAN
                }
            ),
            u64::MAX
        );
        assert_eq!(kube_proxy(u64::MAX, 0).max, u64::MAX);
        assert_eq!(kernel_default(u64::MAX, "5.10.0").max, 65_536 * 4);
        // λ far above the chain limit: every insert refused, not none.
        assert!((poisson_tail(20_000.0, 52) - 1.0).abs() < 1e-12);
        assert!((poisson_tail(1e9, 52) - 1.0).abs() < 1e-12);
        assert!(poisson_tail(1e9, 2_000_000_000) < 1e-300);
        let r = expected_chain_refusals(1000, 10_000_000, 1024);
        assert!((r - 2000.0).abs() < 1e-6, "{r}");
        assert!(expected_checked(1000, 1024, f64::INFINITY).is_none());
        assert!(expected_checked(0, 1024, 1.0).is_none());
    }

    #[test]
    fn versions() {
        assert_eq!(version("6.12.117+deb13-cloud-amd64"), Some((6, 12)));
        assert_eq!(version("5.10.0-32-cloud-amd64"), Some((5, 10)));
        assert_eq!(version("x"), None);
    }
}
