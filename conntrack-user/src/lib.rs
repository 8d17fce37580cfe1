//! ctscope: measures the netfilter conntrack hash table from the kernel side
//! (exact chain lengths at insert, drops by reason) with eBPF programs, and
//! falls back to the kernel's own counters where they cannot attach.
//!
//! The folders follow the data:
//!
//! - [`host`]: read-only facts of the running host (kernel, BTF, procfs,
//!   namespaces, ctnetlink, Docker);
//! - [`probe`]: the eBPF programs seen from userspace: offsets from BTF, the
//!   plan, loading, attaching and reading their maps;
//! - [`observe`]: one run over time: samples of the maps and of procfs, turned
//!   into a [`report::Report`];
//! - [`report`]: the report's schema (plain data) and the chain-length model;
//! - [`tune`]: sizing, the recommendation, and changing a host (apply,
//!   rollback);
//! - [`doctor`], [`safefile`], [`text`]: the doctor command, the one way
//!   ctscope writes files, and escaping for terminals.

pub mod doctor;
pub mod host;
pub mod observe;
pub mod probe;
pub mod report;
pub mod safefile;
pub mod serve;
pub mod share;
pub mod text;
pub mod top;
pub mod tune;
