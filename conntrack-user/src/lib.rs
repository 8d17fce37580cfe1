//! ctscope: measures the netfilter conntrack hash table from the kernel side
//! (exact chain lengths at insert, drops by reason) with aya kprobes, and falls
//! back to the kernel's own counters where probes cannot attach.

pub mod btf;
pub mod doctor;
pub mod environment;
pub mod kernel;
pub mod object;
pub mod observe;
pub mod offsets;
pub mod probes;
pub mod procfs;
pub mod report;
