//! Test inputs shared by the check modules: a scenario with two containers and a consistent run.

use serde_json::{Value, json};

use super::Check;
use crate::scenario::Scenario;

/// Containers "a" (1000 UDP flows) and "b" (500 TCP flows), ctscope with `--cost`, with
/// `expect` as the `[expect]` body.
pub(super) fn scenario(expect: &str) -> Scenario {
    Scenario::from_toml(&format!(
        "name = \"t\"\n[[containers]]\nname = \"a\"\nprotocol = \"udp\"\nflows = 1000\n\
         [[containers]]\nname = \"b\"\nprotocol = \"tcp\"\nflows = 500\n\
         [ctscope]\nargs = [\"observe\", \"--cost\"]\n[expect]\n{expect}"
    ))
    .expect("valid scenario")
}

/// A consistent run: 1500 flows, 10 not sent, 1470 inserts, 11 table full, 1 slab allocation
/// failure, 5 chain too long, 2 clashes, 1 other drop (the kernel's `drop` column: 11 + 2 + 1);
/// 7 conntrack kprobes while ctscope ran, none after; kprobe mode (a kernel whose config does
/// not permit fentry), attributing throughout. All in the host namespace (inode 1000);
/// the wan and both containers' namespaces are quiet. 10 entries were early-dropped (the only
/// deletes); a's NAT share is 980 of its 990 sent flows, b's 490 of 500 (the host refused 20).
pub(super) fn good() -> Value {
    json!({
        "kernel": "6.1",
        "kernel_release": "6.1.0-40-cloud-amd64",
        "kernel_fentry": false,
        "scenario": "t",
        "ctscope": {
            "mode": "kprobe",
            "kernel_release": "6.1.0-40-cloud-amd64",
            "duration_s": 12.5,
            "inserts": 1470,
            "chain_length": {"orig": {"histogram": [[1, 1000], [9, 470]], "samples": 1470, "mean": 3.5, "p50": 1, "p99": 9, "max": 9, "truncated": 0},
                             "reply": {"histogram": [[1, 1470]], "samples": 1470, "mean": 1.0, "p50": 1, "p99": 1, "max": 1, "truncated": 0}},
            "drops": {"table_full": 11, "chain_too_long": 5, "clash": 2, "other": 1, "alloc_failed": 1},
            "self_check": {"walks": 2940, "nulls_mismatch": 0, "link_mismatch": 0, "dir_mismatch": 0,
                           "truncated": 0, "read_errors": 0, "missed": 0},
            "settings": {"buckets": 1024, "max": 65536, "count_start": 0, "count_end": 1460},
            "probes": {"offsets": {"source": "module_btf", "off_tuplehash": 16, "tuplehash_size": 56}},
            "netns": [
                {"inode": 1000, "name": "host", "kind": "host", "inserts": 1470, "live_entries": 1460,
                 "drops": {"table_full": 11, "chain_too_long": 5, "clash": 2, "other": 1, "alloc_failed": 1},
                 "kernel_stats": {}},
                {"inode": 1001, "name": "ctlab-wan", "kind": "netns", "inserts": 0, "live_entries": 0,
                 "drops": {"table_full": 0, "chain_too_long": 0, "clash": 0, "other": 0, "alloc_failed": 0},
                 "kernel_stats": {}}
            ],
            "containers": [
                {"name": "a", "id": null, "netns_inode": 1002, "addresses": ["172.17.0.2"], "inserts": 980,
                 "nat_inserts": 980, "own_inserts": 0, "live_entries": 975, "drops": 10},
                {"name": "b", "id": null, "netns_inode": 1003, "addresses": ["172.17.0.3"], "inserts": 490,
                 "nat_inserts": 490, "own_inserts": 0, "live_entries": 485, "drops": 10}
            ],
            "lifetimes": {
                "tcp": {"count": 10, "p50_ms": 5.0, "p99_ms": 9.0, "max_ms": 9.0,
                        "by_end": {"timeout": 0, "tcp_closed": 0, "early_drop": 2, "flush": 0, "unconfirmed": 8, "other": 0}},
                "udp": {"count": 8, "p50_ms": 50.0, "p99_ms": 90.0, "max_ms": 90.0,
                        "by_end": {"timeout": 0, "tcp_closed": 0, "early_drop": 8, "flush": 0, "unconfirmed": 0, "other": 0}}
            },
            "lifetimes_untracked": 0,
            "attribution": {"policy": "always", "throughout": true, "armed_s": 12.5, "arms": 0, "unattributed": 0},
            "early_drop": {"attempts": 12, "evicted": 10},
            "clash": {"resolved": 3, "failed": 2},
            "dying_at_confirm": 0,
            "lookups": null,
            "cost": {"programs": [{"name": "insert", "run_cnt": 1470, "run_time_ns": 2_940_000, "ns_per_run": 2000.0}],
                     "cpu_seconds": 0.5, "cpu_percent": 4.0, "max_rss_kib": 12000},
            "notices": []
        },
        "doctor": {
            "kernel_release": "6.1.0-40-cloud-amd64",
            "conntrack": "module",
            "btf": {"vmlinux": true, "nf_conntrack_module": true, "nf_conn_source": "module_btf",
                    "offsets": {"source": "module_btf", "off_tuplehash": 16, "tuplehash_size": 56}},
            "kprobe": {"available": true, "reason": null},
            "fentry": {"available": false, "reason": "no kernel BTF describes conntrack's functions"},
            "mode": "kprobe"
        },
        "ctscope_exit": 0,
        "ctscope_stop_s": 0.4,
        "ctscope_stderr_tail": "",
        "truth": {
            "flows": 1500, "send_errors": 10, "connect_failures": 14, "inserts": 1470, "count_after": 1460,
            "count_before": 0, "deletes": 10,
            "stat_delta": {"insert_failed": 8, "drop": 14, "early_drop": 10, "chaintoolong": 5,
                           "clash_resolve": 3, "search_restart": 0},
            "per_netns": [
                {"name": "host", "inode": 1000, "inserts": 1470, "count_before": 0, "count_after": 1460, "deletes": 10,
                 "stat_delta": {"insert_failed": 8, "drop": 14, "early_drop": 10, "chaintoolong": 5,
                                "clash_resolve": 3, "search_restart": 0}},
                {"name": "ctlab-wan", "inode": 1001, "inserts": 0, "count_before": 0, "count_after": 0, "deletes": 0,
                 "stat_delta": {"insert_failed": 0, "drop": 0, "early_drop": 0, "chaintoolong": 0,
                                "clash_resolve": 0, "search_restart": 0}},
                {"name": "ctlab-a", "inode": 1002, "inserts": 0, "count_before": 0, "count_after": 0, "deletes": 0,
                 "stat_delta": {"insert_failed": 0, "drop": 0, "early_drop": 0, "chaintoolong": 0,
                                "clash_resolve": 0, "search_restart": 0}},
                {"name": "ctlab-b", "inode": 1003, "inserts": 0, "count_before": 0, "count_after": 0, "deletes": 0,
                 "stat_delta": {"insert_failed": 0, "drop": 0, "early_drop": 0, "chaintoolong": 0,
                                "clash_resolve": 0, "search_restart": 0}}
            ],
            "containers": [
                {"name": "a", "netns": "ctlab-a", "inode": 1002, "addresses": ["172.17.0.2"], "protocol": "udp",
                 "flows": 1000, "send_errors": 10, "connect_failures": 0, "firewall": false},
                {"name": "b", "netns": "ctlab-b", "inode": 1003, "addresses": ["172.17.0.3"], "protocol": "tcp",
                 "flows": 500, "send_errors": 0, "connect_failures": 14, "firewall": false}
            ],
            "kprobes_during": 7,
            "kprobes_after_exit": 0
        },
        "clients": [
            {"container": "a", "protocol": "udp", "flows": 1000, "send_errors": 10, "connect_failures": 0, "established": 0, "elapsed_s": 1.0},
            {"container": "b", "protocol": "tcp", "flows": 500, "send_errors": 0, "connect_failures": 14, "established": 486, "elapsed_s": 2.0}
        ],
        "errors": []
    })
}

/// Sets the value at JSON pointer `path` of `r`; panics when the fixture has no such value,
/// so that a renamed key cannot turn a test's mutation into nothing.
pub(super) fn set(r: &mut Value, path: &str, value: Value) {
    let Some(v) = r.pointer_mut(path) else {
        panic!("{path} is not in the fixture");
    };
    *v = value;
}

/// Names of the checks that failed, in order.
pub(super) fn failed(checks: &[Check]) -> Vec<String> {
    checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.name.clone())
        .collect()
}

/// [`scenario`] with a `[tuning]` closed loop that persists (`tuning` is the rest of the
/// `[tuning]` body) and the tuner's expectations: drops before, cheaper than the formulas,
/// shorter chains after.
pub(super) fn tuning_scenario(tuning: &str) -> Scenario {
    scenario(&format!(
        "drops_before_min = 1\ncheaper_than_formulas = true\nlower_chain_p99 = true\n\
         [tuning]\npersist = true\n{tuning}"
    ))
}

/// [`good`] with the closed loop the agent records after it (`lab-agent/tuning.rs`): ctscope
/// recommends 16,384 buckets and max and a 30 s UDP timeout (the first run refused 22
/// connections: drop 14 + insert_failed 8); apply writes them and persists them in the
/// scratch /etc; the replay of the same 1,500 flows (1,490 sent) makes 1,490 inserts and no
/// refusal, with a chain p99 of 2 (9 before); rollback restores every setting and removes the
/// files.
pub(super) fn tuning_good() -> Value {
    let before = json!({"buckets": 1024, "max": 65536, "udp_timeout": 3600,
                        "tcp_timeout_established": 432_000});
    let stat = json!({"insert_failed": 0, "drop": 0, "early_drop": 0, "chaintoolong": 0,
                      "clash_resolve": 0, "search_restart": 0});
    let mut r = good();
    r["tuning"] = json!({
        "recommendation": {
            "ctscope_version": "0.1.0",
            "kernel_release": "6.1.0-40-cloud-amd64",
            "buckets": 16384, "max": 16384, "timeouts": {"udp_timeout": 30},
            "memory_bytes": 6_553_600,
            "reasons": ["max: twice the busiest namespace's peak of 1,460 entries, at least 16,384"],
            "warnings": [],
            "comparison": [
                {"method": "current", "buckets": 1024, "max": 65536, "memory_bytes": 26_222_592,
                 "mean_chain": 1.4, "p99_chain": 9.0, "would_drop": true,
                 "drops_because": ["chains over the kernel's limit in 1,024 buckets"]},
                {"method": "seed-formula", "buckets": 65536, "max": 262_144, "memory_bytes": 105_381_888,
                 "mean_chain": 1.0, "p99_chain": 2.0, "would_drop": false, "drops_because": []},
                {"method": "kube-proxy", "buckets": 32768, "max": 131_072, "memory_bytes": 52_690_944,
                 "mean_chain": 1.0, "p99_chain": 2.0, "would_drop": false, "drops_because": []},
                {"method": "ctscope", "buckets": 16384, "max": 16384, "memory_bytes": 6_553_600,
                 "mean_chain": 1.1, "p99_chain": 2.0, "would_drop": false, "drops_because": []}
            ],
            "current": {"buckets": 1024, "max": 65536, "timeouts": {"udp_timeout": 3600}},
            "inputs": {}
        },
        "recommend_exit": 0,
        "apply_exit": 0,
        "apply_output": "ctscope apply:\n  buckets 1024 -> 16384\n  max 65536 -> 16384\n  udp_timeout 3600 -> 30\n",
        "settings_before": before,
        "settings_applied": {"buckets": 16384, "max": 16384, "udp_timeout": 30,
                             "tcp_timeout_established": 432_000},
        "settings_rolled_back": before,
        "persisted": [
            ["/tmp/tune-etc/modprobe.d/ctscope-conntrack.conf", "options nf_conntrack hashsize=16384\n"],
            ["/tmp/tune-etc/sysctl.d/90-ctscope-conntrack.conf",
             "net.netfilter.nf_conntrack_max = 16384\nnet.netfilter.nf_conntrack_buckets = 16384\nnet.netfilter.nf_conntrack_udp_timeout = 30\n"]
        ],
        "left_after_rollback": [],
        "rollback_exit": 0,
        "replay_ctscope": {
            "mode": "kprobe", "inserts": 1490,
            "chain_length": {"orig": {"histogram": [[1, 1400], [2, 90]], "samples": 1490, "mean": 1.1, "p50": 1, "p99": 2, "max": 2, "truncated": 0},
                             "reply": {"histogram": [[1, 1490]], "samples": 1490, "mean": 1.0, "p50": 1, "p99": 1, "max": 1, "truncated": 0}},
            "drops": {"table_full": 0, "chain_too_long": 0, "clash": 0, "other": 0, "alloc_failed": 0}
        },
        "replay_truth": {
            "flows": 1500, "send_errors": 10, "connect_failures": 0, "inserts": 1490,
            "count_before": 0, "count_after": 1490, "deletes": 0, "stat_delta": stat,
            "per_netns": [{"name": "host", "inode": 1000, "inserts": 1490, "count_before": 0,
                           "count_after": 1490, "deletes": 0, "stat_delta": stat}]
        },
        "replay_clients": [
            {"container": "a", "protocol": "udp", "flows": 1000, "send_errors": 10, "connect_failures": 0, "established": 0, "elapsed_s": 1.0},
            {"container": "b", "protocol": "tcp", "flows": 500, "send_errors": 0, "connect_failures": 0, "established": 500, "elapsed_s": 2.0}
        ]
    });
    r
}
