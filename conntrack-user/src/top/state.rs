//! What `top` shows, from the engine's ticks and reports: rates per interval, their recent
//! history (bounded), and the latest namespaces and containers. Also the `--batch` JSON.

use std::collections::VecDeque;

use serde::Serialize;

use crate::{
    observe::{Tick, timeline},
    report::{ChainStats, Mode, Report, chain_model},
};

/// Intervals of history kept for the sparklines.
pub(crate) const HISTORY: usize = 240;

/// Drop reasons, in the order they are shown.
pub(crate) const REASONS: [&str; 4] = ["table_full", "chain_too_long", "clash", "other"];

/// Rates over one interval; `None` where this mode cannot tell.
#[derive(Debug, Clone, Default, Serialize)]
#[expect(
    clippy::struct_field_names,
    reason = "the unit is part of each name, as in the JSON"
)]
pub(crate) struct Rates {
    pub(crate) interval_s: f64,
    pub(crate) inserts_per_s: Option<f64>,
    /// Per reason of [`REASONS`]; in procfs mode the kernel's `drop` column is table-full
    /// and clash together, so only chain_too_long (its own column) is known by reason, and
    /// `kernel_drop_per_s` carries the rest.
    pub(crate) drops_per_s: Vec<(&'static str, Option<f64>)>,
    pub(crate) kernel_drop_per_s: Option<f64>,
    pub(crate) early_drop_per_s: Option<f64>,
}

impl Rates {
    /// The interval's counts ([`timeline::point`], as the report's timeline
    /// has them) per second.
    pub(crate) fn from_tick(t: &Tick) -> Rates {
        let dt = t.now.at.duration_since(t.prev.at).as_secs_f64().max(1e-3);
        let per = |v: Option<u64>| v.map(|n| n as f64 / dt);
        let p = timeline::point(t, 0.0);
        Rates {
            interval_s: dt,
            inserts_per_s: per(p.inserts),
            drops_per_s: vec![
                ("table_full", per(p.drops.table_full)),
                ("chain_too_long", per(p.drops.chain_too_long)),
                ("clash", per(p.drops.clash)),
                ("other", per(p.drops.other)),
            ],
            kernel_drop_per_s: per(p.kernel_drop),
            early_drop_per_s: per(t.stat_delta().map(|d| d.get("early_drop"))),
        }
    }

    /// Every refusal per second this mode counts: by reason, else the kernel's drop column
    /// plus chain-too-long.
    pub(crate) fn drops_total(&self) -> f64 {
        let by_reason: Option<f64> = self.drops_per_s.iter().map(|(_, v)| *v).sum();
        by_reason.unwrap_or_else(|| {
            self.kernel_drop_per_s.unwrap_or(0.0)
                + self
                    .drops_per_s
                    .iter()
                    .find(|(r, _)| *r == "chain_too_long")
                    .and_then(|(_, v)| *v)
                    .unwrap_or(0.0)
        })
    }
}

/// The table's settings now.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Table {
    pub(crate) count: Option<u64>,
    pub(crate) max: Option<u64>,
    pub(crate) buckets: Option<u64>,
    pub(crate) load_factor: Option<f64>,
}

/// How namespaces and containers are sorted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum SortBy {
    #[default]
    Entries,
    Inserts,
    Drops,
    Name,
}

impl SortBy {
    pub(crate) fn next(self) -> SortBy {
        match self {
            SortBy::Entries => SortBy::Inserts,
            SortBy::Inserts => SortBy::Drops,
            SortBy::Drops => SortBy::Name,
            SortBy::Name => SortBy::Entries,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            SortBy::Entries => "entries",
            SortBy::Inserts => "inserts",
            SortBy::Drops => "drops",
            SortBy::Name => "name",
        }
    }
}

/// One row of the namespace or container table.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    pub(crate) name: String,
    pub(crate) kind: String,
    pub(crate) entries: Option<u64>,
    pub(crate) inserts: Option<u64>,
    pub(crate) drops: Option<u64>,
}

/// Everything on the screen (or in one `--batch` line).
#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) release: String,
    pub(crate) mode: Option<Mode>,
    pub(crate) elapsed_s: f64,
    pub(crate) table: Table,
    pub(crate) rates: Option<Rates>,
    pub(crate) inserts_history: VecDeque<u64>,
    pub(crate) drops_history: VecDeque<u64>,
    /// Since the start: measured (probe modes) and the uniform model for the table now.
    pub(crate) chain: Option<ChainStats>,
    pub(crate) model: Option<ChainStats>,
    pub(crate) netns: Vec<Row>,
    pub(crate) containers: Vec<Row>,
    pub(crate) sort: SortBy,
    pub(crate) paused: bool,
    pub(crate) help: bool,
    pub(crate) notice: Option<String>,
}

fn push(h: &mut VecDeque<u64>, v: f64) {
    if h.len() == HISTORY {
        h.pop_front();
    }
    h.push_back(v.max(0.0).round() as u64);
}

impl State {
    pub(crate) fn on_tick(&mut self, t: &Tick, elapsed_s: f64) {
        let r = Rates::from_tick(t);
        push(&mut self.inserts_history, r.inserts_per_s.unwrap_or(0.0));
        push(&mut self.drops_history, r.drops_total());
        self.rates = Some(r);
        self.elapsed_s = elapsed_s;
        self.table = Table {
            count: t.table.count,
            max: t.table.max,
            buckets: t.table.buckets,
            load_factor: t
                .table
                .count
                .zip(t.table.buckets)
                .filter(|(_, b)| *b > 0)
                .map(|(c, b)| c as f64 / b as f64),
        };
    }

    pub(crate) fn on_report(&mut self, r: &Report) {
        self.mode = Some(r.mode);
        self.chain = r
            .chain_length
            .as_ref()
            .filter(|c| !c.orig.modeled)
            .map(|c| c.orig.clone());
        let entries: Option<u64> = r.netns.iter().map(|n| n.live_entries).sum();
        self.model = entries
            .or(r.settings.count_end)
            .zip(r.settings.buckets)
            .and_then(|(n, b)| chain_model::expected_chain_lengths(n, b))
            .map(|m| m.orig);
        self.netns = r
            .netns
            .iter()
            .map(|n| Row {
                name: crate::text::name(&n.name),
                kind: serde_json::to_value(n.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                entries: n.live_entries,
                inserts: n.inserts,
                drops: n.drops.total().or(n.drops.chain_too_long),
            })
            .collect();
        self.containers = r
            .containers
            .iter()
            .map(|c| Row {
                name: crate::text::name(&c.name),
                kind: "container".into(),
                entries: c.live_entries,
                inserts: c.inserts,
                drops: c.drops,
            })
            .collect();
        self.sort_rows();
    }

    pub(crate) fn sort_rows(&mut self) {
        let sort = self.sort;
        for rows in [&mut self.netns, &mut self.containers] {
            match sort {
                SortBy::Entries => rows.sort_by_key(|r| std::cmp::Reverse(r.entries)),
                SortBy::Inserts => rows.sort_by_key(|r| std::cmp::Reverse(r.inserts)),
                SortBy::Drops => rows.sort_by_key(|r| std::cmp::Reverse(r.drops)),
                SortBy::Name => rows.sort_by(|a, b| a.name.cmp(&b.name)),
            }
        }
    }

    /// One `--batch` line: keys `settings`, `rates`, `netns`, `containers` (and more).
    pub(crate) fn batch_json(&self, rows_max: usize) -> serde_json::Value {
        let chain = |c: &Option<ChainStats>| {
            c.as_ref().map(
                |c| serde_json::json!({"mean": c.mean, "p50": c.p50, "p99": c.p99, "max": c.max}),
            )
        };
        serde_json::json!({
            "t_s": (self.elapsed_s * 1000.0).round() / 1000.0,
            "kernel": self.release,
            "mode": self.mode,
            "settings": self.table,
            "rates": self.rates.as_ref().map(|r| serde_json::json!({
                "interval_s": r.interval_s,
                "inserts_per_s": r.inserts_per_s,
                "drops_per_s": r.drops_per_s.iter().map(|(k, v)| ((*k).to_string(), *v)).collect::<std::collections::BTreeMap<_, _>>(),
                "kernel_drop_per_s": r.kernel_drop_per_s,
                "early_drop_per_s": r.early_drop_per_s,
            })),
            "chain_length": chain(&self.chain),
            "chain_length_uniform_model": chain(&self.model),
            "netns": self.netns.iter().take(rows_max).collect::<Vec<_>>(),
            "containers": self.containers.iter().take(rows_max).collect::<Vec<_>>(),
        })
    }
}
