//! vmlinux BTF (`/sys/kernel/btf/vmlinux`): `Btf::parse` and every lookup
//! ctscope makes in it.
#![no_main]

use std::sync::Arc;

use ctscope::{host::btf::Btf, probe::offsets::KernelBtf};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(btf) = Btf::parse(data.to_vec(), None) {
        ctscope_fuzz::exercise(&KernelBtf {
            vmlinux: Arc::new(btf),
            module: None,
        });
    }
});
