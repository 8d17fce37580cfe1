//! The eBPF object embedded at build time (see build.rs).

use thiserror::Error;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/conntrack"));

#[derive(Debug, Error)]
#[error(
    "this ctscope binary was built without its eBPF object (bpf-linker or nightly was missing at build time); run `cargo xtask setup` and rebuild"
)]
pub struct NoObject;

/// The object's bytes, or an error when the build wrote a stub.
pub fn object() -> Result<&'static [u8], NoObject> {
    if OBJECT.is_empty() {
        Err(NoObject)
    } else {
        Ok(OBJECT)
    }
}

pub fn object_len() -> usize {
    OBJECT.len()
}
