//! The eBPF programs seen from userspace: the embedded object, the offsets
//! they need (from the running kernel's BTF), the plan of what to attach
//! where, loading and attaching (kprobes, or fentry/fexit through module BTF),
//! when to arm the attribution programs, and reading their maps as snapshots.

pub(crate) mod arming;
pub mod environment;
pub mod object;
pub mod offsets;
pub mod probes;
pub(crate) mod tracing;
