//! ctscope: measures the netfilter conntrack hash table from the kernel side
//! (exact chain lengths at insert, drops by reason) with aya kprobes, and falls
//! back to the kernel's own counters where probes cannot attach.

pub mod apply;
pub mod arming;
pub mod attribution;
pub mod btf;
pub mod containers;
pub mod ctnetlink;
pub mod docker;
pub mod doctor;
pub mod environment;
pub mod events;
pub mod kernel;
pub mod lifetimes;
pub mod model;
pub mod namespaces;
pub mod object;
pub mod observe;
pub mod occupancy;
pub mod offsets;
pub mod probes;
pub mod procfs;
pub mod recommend;
pub mod report;
pub mod resize;
pub mod safefile;
pub mod sizing;
pub mod text;
pub mod tracing;
