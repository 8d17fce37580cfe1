use super::error::load_failure;
use super::*;

/// The end of a real verifier log: `hash_insert_ret` before its
/// restructure, on Debian's 7.3.4 cloud kernel under qemu (E2BIG).
const E2BIG_LOG: &str = include_str!("../../../tests/data/verifier-7.3.4-e2big.log");

#[test]
fn a_verifier_log_is_cut_to_its_conclusion() {
    let s = verifier_summary(E2BIG_LOG);
    assert!(
        s.starts_with("BPF program is too large. Processed 1000001 insn"),
        "{s}"
    );
    assert!(s.contains("processed 1000001 insns (limit 1000000)"), "{s}");
    // No instruction trace, no per-subprog statistics.
    assert!(!s.contains("r7 >>= 32") && !s.contains("subprog"), "{s}");
    let e2big = std::io::Error::from_raw_os_error(libc::E2BIG);
    let line = load_failure(&e2big, E2BIG_LOG);
    assert!(
        line.contains("complexity limits") && line.contains("too large"),
        "{line}"
    );
}

/// Every field of the programs' `Config` comes from its own source in
/// the plan: distinct values, so that two fields swapped would show.
#[test]
fn the_config_takes_each_field_from_the_plan() {
    let offsets = Offsets {
        source: crate::probe::offsets::NfConnSource::ModuleBtf,
        nf_conn_size: 999,
        off_tuplehash: 1,
        tuplehash_size: 2,
        off_hnnode: 3,
        off_next: 4,
        off_pprev: 5,
        off_tuple_dir: 6,
        off_status: 7,
        off_skb_nfct: 8,
        off_ct_net: 9,
        off_net_inum: 10,
        off_th_tuple: 11,
        off_tuple_src: 12,
        off_tuple_l3num: 13,
        off_tuple_protonum: 14,
        off_ct_timeout: 15,
        off_ct_tcp_state: 16,
        off_ct_ext: 17,
        off_ext_len: 18,
    };
    let plan = Plan {
        offsets,
        has_chain_limit: true,
        clash: false,
        early_drop: true,
        lifetimes: true,
        lookups: false,
        ct_hash_addr: 0xffff_0000_0000_1000,
        htable_size_addr: 0xffff_0000_0000_2000,
        life_buckets: 1 << 12,
        per_cpu_calls: true,
        stats: false,
        fentry: None,
        attribution: Attribution::Auto,
    };
    let want = Config {
        addr_ct_hash: 0xffff_0000_0000_1000,
        addr_ct_htable_size: 0xffff_0000_0000_2000,
        off_tuplehash: 1,
        tuplehash_size: 2,
        off_hnnode: 3,
        off_next: 4,
        off_pprev: 5,
        off_tuple_dir: 6,
        off_status: 7,
        off_skb_nfct: 8,
        off_ct_net: 9,
        off_net_inum: 10,
        off_th_tuple: 11,
        off_tuple_src: 12,
        off_tuple_l3num: 13,
        off_tuple_protonum: 14,
        off_ct_timeout: 15,
        off_ct_tcp_state: 16,
        off_ct_ext: 17,
        off_ext_len: 18,
        has_chain_limit: 1,
        clash_probed: 0,
        early_drop_probed: 1,
        per_cpu_calls: 1,
        life_bucket_mask: (1 << 12) - 1,
        chain_alert: CHAIN_ALERT,
    };
    assert_eq!(plan.config(), want);
    // No lifetime slots: a mask of 0, not an underflow.
    let none = Plan {
        life_buckets: 0,
        ..plan
    };
    assert_eq!(none.config().life_bucket_mask, 0);
}

#[test]
fn a_log_without_a_conclusion_says_so_by_saying_nothing() {
    // The same log cut before the verifier's message, as when a signal
    // interrupted it: only the trace is left.
    let cut = E2BIG_LOG
        .split("BPF program is too large")
        .next()
        .unwrap_or_default();
    assert_eq!(verifier_summary(cut), "");
    let eagain = std::io::Error::from_raw_os_error(libc::EAGAIN);
    let line = load_failure(&eagain, cut);
    assert!(line.contains("signal was pending"), "{line}");
    assert!(!line.contains("the verifier said"), "{line}");
}
