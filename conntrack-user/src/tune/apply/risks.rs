//! What would hurt the host: each check gives its risks in words; `plan`
//! refuses them all at once unless `--force`.

use super::Step;
use crate::{
    host::{kernel, namespaces, procfs},
    text,
    tune::{
        recommend::{Recommendation, TIMEOUT_FLOORS, fmt_bytes},
        sizing::{self, EntryCost, Size},
    },
};

/// Default of `--max-memory-share`: the table when full may take up to this
/// share of RAM. The kernel's own default (RAM/16384/8 buckets, max =
/// buckets, 5.15+) spends well under 1%; 20% leaves the host most of its
/// memory even when every entry is in use.
pub const DEFAULT_MAX_MEMORY_SHARE_PCT: f64 = 20.0;
/// An observation shorter than this is too short for a large cut: it may have
/// missed the busy hour (recommend itself says so under 600 s).
pub const SHORT_OBSERVATION_S: f64 = 3600.0;
/// A cut of max or buckets by more than this factor is large.
pub const LARGE_CUT: u64 = 2;
/// Room a new, lower max must leave above a namespace's live count: 10% of
/// it, at least this many entries (a burst of new connections in the time
/// the apply takes, and room for entries that are counted before they are
/// confirmed: `__nf_conntrack_alloc` raises the count).
pub const LIVE_MARGIN_MIN: u64 = 256;
pub const LIVE_MARGIN_PCT: u64 = 10;
/// The kernel's chain limit since 6.3 and the 6.1.y/5.15.y backports: an
/// insert into a bucket longer than a random 50..79 (c77737b736ce) is refused.
/// A mean chain (λ = 2·max/buckets nodes per bucket) this long is refused
/// outright, on any kernel: on one without the limit every lookup walks it.
pub const CHAIN_LIMIT_MIN: f64 = 50.0;

/// The live count plus its margin.
pub(super) fn with_margin(count: u64) -> u64 {
    let pct = (u128::from(count) * u128::from(LIVE_MARGIN_PCT) / 100) as u64;
    count.saturating_add(pct.max(LIVE_MARGIN_MIN))
}

/// The namespaces: each must be readable, and a lower max must leave every
/// one room above what it holds now (the kernel compares each namespace's own
/// count with the one global max, `__nf_conntrack_alloc`).
pub(super) fn census_risks(census: &namespaces::Census, new_max: u64, cur_max: u64) -> Vec<String> {
    let mut out = Vec::new();
    for (name, why) in &census.unreadable {
        out.push(format!(
            "namespace {name} could not be read ({}): its live count is unknown, so no max can be proven safe for it",
            text::name(why)
        ));
    }
    if new_max >= cur_max {
        return out;
    }
    for c in &census.counts {
        let need = with_margin(c.count);
        if new_max < need {
            out.push(format!(
                "max {new_max} leaves namespace {} no room: it holds {} entries right now, and a max below {need} (its count + max({LIVE_MARGIN_PCT}%, {LIVE_MARGIN_MIN})) drops its new connections{}",
                c.name,
                c.count,
                if new_max <= c.count {
                    " from the very next one"
                } else {
                    " after a burst"
                }
            ));
        }
    }
    if let Some(unseen) = census.unseen_bound() {
        let need = with_margin(unseen);
        if new_max < need {
            out.push(format!(
                "max {new_max} may leave a namespace ctscope cannot open no room: the nf_conntrack slab has {} objects in use, {unseen} more than the {} entries of the namespaces read (a namespace held only by a socket is invisible; the slab also counts per-CPU free objects, so this is an upper bound), and a max below {need} could drop its new connections",
                census.slab_active.unwrap_or(0),
                census.total()
            ));
        }
    }
    out
}

/// Bytes one entry costs on this host: its slab object (this kernel's, not
/// the recommendation's) and its extensions (at least `NF_CT_EXT_PREALLOC`,
/// more where the recommendation measured more; capped, as it is input).
fn host_entry_cost(rec: &Recommendation) -> Option<EntryCost> {
    let slab = procfs::slab_size().or_else(procfs::slab_object_size)?;
    let measured = rec.inputs.entry_cost.ext_bytes;
    let ext = if measured.is_finite() {
        measured.clamp(sizing::EXT_PREALLOC as f64, 4096.0)
    } else {
        sizing::EXT_PREALLOC as f64
    };
    Some(EntryCost {
        slab_bytes: slab,
        ext_bytes: ext,
    })
}

/// The table when full against this host's RAM (only when it grows).
pub(super) fn memory_risk(
    rec: &Recommendation,
    cur: Size,
    new: Size,
    share_pct: f64,
) -> Option<String> {
    // Neither part grows: nothing to check, and nothing to refuse where the
    // slab size or MemTotal cannot be read.
    if new.max <= cur.max
        && sizing::table_buckets(new.buckets) <= sizing::table_buckets(cur.buckets)
    {
        return None;
    }
    let Some(cost) = host_entry_cost(rec) else {
        return Some(
            "the nf_conntrack slab's object size cannot be read (/sys/kernel/slab, /proc/slabinfo): the table's memory when full cannot be checked against RAM".into(),
        );
    };
    let Some(ram) = procfs::ram_bytes() else {
        return Some(
            "MemTotal cannot be read from /proc/meminfo: the table's memory when full cannot be checked against RAM".into(),
        );
    };
    let need = sizing::memory_bytes(new, cost);
    if need <= sizing::memory_bytes(cur, cost) {
        return None;
    }
    let limit = ram as f64 * share_pct / 100.0;
    (need as f64 > limit).then(|| {
        format!(
            "the table when full would take {} ({} buckets x 8 B + {} entries x {:.0} B: this host's {} B slab object + {:.0} B of extensions), {:.1}% of this host's {} of RAM, above the {share_pct}% allowed (--max-memory-share)",
            fmt_bytes(need),
            new.buckets,
            new.max,
            cost.per_entry(),
            cost.slab_bytes,
            cost.ext_bytes,
            need as f64 / ram as f64 * 100.0,
            fmt_bytes(ram)
        )
    })
}

/// Whether this kernel refuses inserts into long chains: the stat file's
/// `chaintoolong` column came with the limit (5.15+).
fn has_chain_limit() -> bool {
    procfs::StatTotals::read_current().is_ok_and(|s| s.has_chain_limit_column())
        || sizing::version(&kernel::release()).is_some_and(|v| v >= (5, 15))
}

/// The load at max: nodes per bucket when the table is full (only when it
/// gets worse than now).
pub(super) fn chain_risk(cur: Size, new: Size) -> Option<String> {
    let lambda = |s: Size| 2.0 * s.max as f64 / sizing::table_buckets(s.buckets) as f64;
    let (l_new, l_cur) = (lambda(new), lambda(cur));
    if l_new <= l_cur {
        return None;
    }
    if l_new >= CHAIN_LIMIT_MIN {
        // No tail sum here: at such loads the Poisson terms underflow.
        return Some(format!(
            "max {} in {} buckets is {l_new:.1} nodes per bucket when full: the mean chain alone reaches the kernel's chain limit (random 50..79 since 6.3 and 6.1.y/5.15.y; inserts into longer chains are refused), and on a kernel without it every lookup walks such a chain",
            new.max, new.buckets
        ));
    }
    if has_chain_limit() {
        // Upper bound: as if every insert met the full table.
        let refused = sizing::expected_chain_refusals(new.max, new.max, new.buckets);
        if refused >= 1.0 {
            return Some(format!(
                "max {} in {} buckets is {l_new:.1} nodes per bucket when full: of {} inserts into a full table, about {refused:.1} would be refused as \"chain too long\" (the kernel's random limit 50..79, Poisson chains)",
                new.max, new.buckets, new.max
            ));
        }
    }
    None
}

/// Timeouts lowered below recommend's floors: live but quiet flows would
/// lose their entries (a NATed one its mapping). A timeout recommend has no
/// floor for, it never shortens.
pub(super) fn timeout_risks(steps: &[Step]) -> Vec<String> {
    steps
        .iter()
        .filter(|st| st.after < st.before)
        .filter_map(|st| {
            let short = st
                .name
                .strip_prefix("nf_conntrack_")
                .filter(|n| n.contains("timeout"))?;
            match TIMEOUT_FLOORS.iter().find(|(n, _)| *n == short) {
                Some((_, floor)) if st.after < *floor => Some(format!(
                    "{short} {} -> {} s is below recommend's floor of {floor} s: entries of quiet but live flows would expire (and a NATed flow would get a new mapping)",
                    st.before, st.after
                )),
                Some(_) => None,
                None => Some(format!(
                    "{short} {} -> {} s: recommend never shortens this timeout (it has no floor for it), so nothing shows it safe",
                    st.before, st.after
                )),
            }
        })
        .collect()
}

/// A large cut of max or buckets from a short observation, which may have
/// missed the busy hour.
pub(super) fn cut_risks(rec: &Recommendation, cur: Size, new: Size) -> Vec<String> {
    let d = rec.inputs.duration_s;
    if d >= SHORT_OBSERVATION_S {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (what, before, after) in [
        ("max", cur.max, new.max),
        ("buckets", sizing::table_buckets(cur.buckets), new.buckets),
    ] {
        if after.saturating_mul(LARGE_CUT) < before {
            out.push(format!(
                "{what} {before} -> {after} is a cut to 1/{:.0} from an observation of {d:.0} s (under {SHORT_OBSERVATION_S:.0} s, it may have missed the busy hour): observe longer before cutting by more than {LARGE_CUT}x",
                before as f64 / after.max(1) as f64
            ));
        }
    }
    out
}
