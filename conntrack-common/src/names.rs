//! Names of the eBPF object's maps and programs that the loader looks up
//! (conntrack-user probes.rs). The eBPF side cannot use these constants:
//! `#[map]` and the program macros name a map or program by the Rust
//! identifier of its static or function (conntrack-ebpf maps.rs and the
//! program files), so each constant repeats one. `ALL` lists them so that
//! a test (conntrack-user tests/host.rs `every_shared_name_is_in_the_object`)
//! can find each in the built object.

/// Maps, by their static's name in conntrack-ebpf maps.rs.
pub mod maps {
    pub const ARMED: &str = "ARMED";
    pub const LIFE_SLOTS: &str = "LIFE_SLOTS";
    pub const ORIGINS: &str = "ORIGINS";
    pub const LIFE_HIST: &str = "LIFE_HIST";
    pub const ALERTS: &str = "ALERTS";
    pub const ALERT_RING: &str = "ALERT_RING";
    pub const STATS: &str = "STATS";
    pub const LOOKUP_LATENCY: &str = "LOOKUP_LATENCY";
    pub const CHAIN_LOOKUP: &str = "CHAIN_LOOKUP";
    pub const LOOKUP_MAX_NS: &str = "LOOKUP_MAX_NS";
    pub const EARLY_DROP_FAILED: &str = "EARLY_DROP_FAILED";
    pub const CLASH_FAILED_SKB: &str = "CLASH_FAILED_SKB";
    pub const FLAG_COUNTS: &str = "FLAG_COUNTS";

    /// Every name above.
    pub const ALL: [&str; 13] = [
        ARMED,
        LIFE_SLOTS,
        ORIGINS,
        LIFE_HIST,
        ALERTS,
        ALERT_RING,
        STATS,
        LOOKUP_LATENCY,
        CHAIN_LOOKUP,
        LOOKUP_MAX_NS,
        EARLY_DROP_FAILED,
        CLASH_FAILED_SKB,
        FLAG_COUNTS,
    ];
}

/// Programs, by their function's name (the kernel keeps 15 bytes of it).
pub mod programs {
    // Kprobe mode.
    pub const ALLOC: &str = "alloc";
    pub const ALLOC_RET: &str = "alloc_ret";
    pub const CONFIRM: &str = "confirm";
    pub const CONFIRM_RET: &str = "confirm_ret";
    pub const EARLY_DROP: &str = "early_drop";
    pub const EARLY_DROP_RET: &str = "early_drop_ret";
    pub const RESOLVE_CLASH_RET: &str = "resolve_clash_ret";
    pub const INSERT: &str = "insert";
    pub const HASH_INSERT: &str = "hash_insert";
    pub const HASH_INSERT_RET: &str = "hash_insert_ret";
    pub const CT_DELETE: &str = "ct_delete";
    pub const CT_FREE: &str = "ct_free";
    pub const LOOKUP: &str = "lookup";
    pub const LOOKUP_RET: &str = "lookup_ret";
    // Fentry mode.
    pub const FX_ALLOC: &str = "fx_alloc";
    pub const FX_CONFIRM: &str = "fx_confirm";
    pub const FE_EARLY_DROP: &str = "fe_early_drop";
    pub const FX_EARLY_DROP: &str = "fx_early_drop";
    pub const FX_RESOLVE_CLASH: &str = "fx_resolve_clash";
    pub const FE_INSERT: &str = "fe_insert";
    pub const FX_INSERT: &str = "fx_insert";
    pub const FE_DELETE: &str = "fe_delete";
    pub const FE_FREE: &str = "fe_free";
    pub const FENTRY_PROBE: &str = "fentry_probe";

    /// Every name above.
    pub const ALL: [&str; 24] = [
        ALLOC,
        ALLOC_RET,
        CONFIRM,
        CONFIRM_RET,
        EARLY_DROP,
        EARLY_DROP_RET,
        RESOLVE_CLASH_RET,
        INSERT,
        HASH_INSERT,
        HASH_INSERT_RET,
        CT_DELETE,
        CT_FREE,
        LOOKUP,
        LOOKUP_RET,
        FX_ALLOC,
        FX_CONFIRM,
        FE_EARLY_DROP,
        FX_EARLY_DROP,
        FX_RESOLVE_CLASH,
        FE_INSERT,
        FX_INSERT,
        FE_DELETE,
        FE_FREE,
        FENTRY_PROBE,
    ];
}
