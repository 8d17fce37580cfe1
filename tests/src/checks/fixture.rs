//! Test inputs shared by the check modules: a scenario with two containers and a consistent run.

use serde_json::{Value, json};

use super::Check;
use crate::scenario::Scenario;

/// Containers "a" (1000 UDP flows) and "b" (500 TCP flows), with `expect` as the `[expect]` body.
pub fn scenario(expect: &str) -> Scenario {
    Scenario::from_toml(&format!(
        "name = \"t\"\n[[containers]]\nname = \"a\"\nprotocol = \"udp\"\nflows = 1000\n\
         [[containers]]\nname = \"b\"\nprotocol = \"tcp\"\nflows = 500\n[expect]\n{expect}"
    ))
    .expect("valid scenario")
}

/// A consistent run: 1500 flows, 10 not sent, 1470 inserts, 11 table full, 1 slab allocation
/// failure, 5 chain too long, 2 clashes, 1 other drop (the kernel's `drop` column: 11 + 2 + 1);
/// 7 conntrack kprobes while ctscope ran, none after.
pub fn good() -> Value {
    json!({
        "kernel": "6.1",
        "kernel_release": "6.1.0-40-cloud-amd64",
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
            "notices": []
        },
        "doctor": {
            "kernel_release": "6.1.0-40-cloud-amd64",
            "conntrack": "module",
            "btf": {"vmlinux": true, "nf_conntrack_module": true, "nf_conn_source": "module_btf",
                    "offsets": {"source": "module_btf", "off_tuplehash": 16, "tuplehash_size": 56}},
            "kprobe": {"available": true, "reason": null},
            "fentry": {"available": false, "reason": "nf_conntrack is a module: aya 0.14 resolves fentry targets in vmlinux BTF only"},
            "mode": "kprobe"
        },
        "ctscope_exit": 0,
        "ctscope_stderr_tail": "",
        "truth": {
            "flows": 1500, "send_errors": 10, "connect_failures": 14, "inserts": 1470, "count_after": 1460,
            "stat_delta": {"insert_failed": 8, "drop": 14, "early_drop": 10, "chaintoolong": 5,
                           "clash_resolve": 0, "search_restart": 0},
            "per_netns": [],
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

/// Names of the checks that failed, in order.
pub fn failed(checks: &[Check]) -> Vec<String> {
    checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.name.clone())
        .collect()
}
