//! Split (module) BTF such as `/sys/kernel/btf/nf_conntrack`, on top of this
//! host's vmlinux BTF cut before `struct nf_conn` (see `slice_vmlinux`):
//! `Btf::parse(data, Some(base))` and every lookup ctscope makes.
#![no_main]

use std::sync::{Arc, LazyLock};

use ctscope::{host::btf::Btf, probe::offsets::KernelBtf};
use libfuzzer_sys::fuzz_target;

static BASE: LazyLock<Arc<Btf>> = LazyLock::new(ctscope_fuzz::split_base);

fuzz_target!(|data: &[u8]| {
    let base = Arc::clone(&BASE);
    if let Ok(module) = Btf::parse(data.to_vec(), Some(Arc::clone(&base))) {
        ctscope_fuzz::exercise(&KernelBtf {
            vmlinux: base,
            module: Some(module),
        });
    }
});
