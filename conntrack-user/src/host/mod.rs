//! Read-only facts of the running host: the kernel and its BTF, conntrack's
//! procfs and sysfs files, the network namespaces, ctnetlink, and the
//! containers behind them. Nothing here knows the report or the probes.

pub mod btf;
pub(crate) mod containers;
pub mod ctnetlink;
pub mod docker;
pub mod kernel;
pub mod namespaces;
pub mod procfs;
