//! The programs' load-time settings: one `#[repr(C)]` struct, `CONFIG` in
//! the object, set by the loader with one `override_global`.

/// The programs' load-time settings: one `#[repr(C)]` global (the eBPF
/// crate's `CONFIG`, in `.rodata`) that the loader overrides as a whole
/// with values read from the running kernel (BTF, kallsyms, the probe plan;
/// conntrack-user probes.rs `Plan::config`), never baked in. One struct
/// rather than a global per setting: a new setting is a field here, its
/// accessor in conntrack-ebpf config.rs and its value in `Plan::config`.
///
/// The 64-bit fields come first so that there is no implicit padding (the
/// struct is [`aya::Pod`] on the user side, and both sides must agree on
/// its layout: see the size assert below). Flags are `u32` 0/1, not
/// `bool`, so that every bit pattern is valid.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Address of `nf_conntrack_hash` (kallsyms; 0 when not exported).
    pub addr_ct_hash: u64,
    /// Address of `nf_conntrack_htable_size` (kallsyms; 0 when not exported).
    pub addr_ct_htable_size: u64,
    /// `offsetof(struct nf_conn, tuplehash)`.
    pub off_tuplehash: u32,
    /// `sizeof(struct nf_conntrack_tuple_hash)`: `tuplehash[1]` is this far on.
    pub tuplehash_size: u32,
    /// `offsetof(struct nf_conntrack_tuple_hash, hnnode)`.
    pub off_hnnode: u32,
    /// `offsetof(struct hlist_nulls_node, next)`.
    pub off_next: u32,
    /// `offsetof(struct hlist_nulls_node, pprev)`.
    pub off_pprev: u32,
    /// Offset of `tuple.dst.dir` inside `struct nf_conntrack_tuple_hash`.
    pub off_tuple_dir: u32,
    /// `offsetof(struct nf_conn, status)`.
    pub off_status: u32,
    /// `offsetof(struct sk_buff, _nfct)`.
    pub off_skb_nfct: u32,
    /// `offsetof(struct nf_conn, ct_net)` (`possible_net_t`, whose only member
    /// is `struct net *net`).
    pub off_ct_net: u32,
    /// `offsetof(struct net, ns.inum)`.
    pub off_net_inum: u32,
    /// `offsetof(struct nf_conntrack_tuple_hash, tuple)`.
    pub off_th_tuple: u32,
    /// `offsetof(struct nf_conntrack_tuple, src.u3)`.
    pub off_tuple_src: u32,
    /// `offsetof(struct nf_conntrack_tuple, src.l3num)`.
    pub off_tuple_l3num: u32,
    /// `offsetof(struct nf_conntrack_tuple, dst.protonum)`.
    pub off_tuple_protonum: u32,
    /// `offsetof(struct nf_conn, timeout)` (u32 jiffies).
    pub off_ct_timeout: u32,
    /// `offsetof(struct nf_conn, proto.tcp.state)`.
    pub off_ct_tcp_state: u32,
    /// `offsetof(struct nf_conn, ext)` (0: not known; extensions unmeasured).
    pub off_ct_ext: u32,
    /// `offsetof(struct nf_ct_ext, len)`.
    pub off_ext_len: u32,
    /// 1 when the kernel refuses inserts into over-long chains (5.15+).
    pub has_chain_limit: u32,
    /// 1 when `nf_ct_resolve_clash` is probed, so clash drops can be told apart.
    pub clash_probed: u32,
    /// 1 when `early_drop` is probed, so table-full can be told from slab failure.
    pub early_drop_probed: u32,
    /// 1 when calls in flight may be kept per CPU: the kernel cannot preempt
    /// them (preempt=none or voluntary, not RT); 0 keys them by task.
    pub per_cpu_calls: u32,
    /// Buckets of `LIFE_SLOTS` minus one (their number is a power of two).
    pub life_bucket_mask: u32,
    /// A chain at least this long after an insert raises an alert (the
    /// loader arms attribution: the kernel's chain limit may be near).
    pub chain_alert: u32,
}

impl Config {
    /// The symbol of the eBPF crate's global, for `override_global`.
    pub const GLOBAL: &'static str = "CONFIG";

    /// The value in the object before the loader overrides it: zero offsets
    /// (a walk with them ends at the wrong nulls marker and is counted as a
    /// mismatch, never as a length), every feature off, and no chain long
    /// enough for an alert.
    pub const UNSET: Config = Config {
        addr_ct_hash: 0,
        addr_ct_htable_size: 0,
        off_tuplehash: 0,
        tuplehash_size: 0,
        off_hnnode: 0,
        off_next: 0,
        off_pprev: 0,
        off_tuple_dir: 0,
        off_status: 0,
        off_skb_nfct: 0,
        off_ct_net: 0,
        off_net_inum: 0,
        off_th_tuple: 0,
        off_tuple_src: 0,
        off_tuple_l3num: 0,
        off_tuple_protonum: 0,
        off_ct_timeout: 0,
        off_ct_tcp_state: 0,
        off_ct_ext: 0,
        off_ext_len: 0,
        has_chain_limit: 0,
        clash_probed: 0,
        early_drop_probed: 0,
        per_cpu_calls: 0,
        life_bucket_mask: 0,
        chain_alert: u32::MAX,
    };
}
