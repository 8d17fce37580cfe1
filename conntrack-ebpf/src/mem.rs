//! Reading kernel memory, two ways.
//!
//! - [`Probe`]: `bpf_probe_read_kernel`, for kprobes (their arguments are
//!   plain numbers to the verifier) and for any address the verifier does
//!   not know the type of (the hash table's, from kallsyms; an entry taken
//!   from `skb->_nfct`). A helper call: about 117 guest instructions each
//!   under the lab's instruction-counted TCG (the bench, Debian 6.1).
//! - [`Direct`]: a plain load, for fentry/fexit programs, whose pointer
//!   arguments the verifier types from the kernel's BTF (`PTR_TO_BTF_ID`).
//!   A load through such a pointer at an offset that the loader read from
//!   the same BTF (a `.rodata` global, a constant to the verifier) is
//!   checked against the struct's layout and becomes a `PROBE_MEM` load: one
//!   instruction, and a fault reads as 0 (kernel/bpf/verifier.c
//!   `check_ptr_to_btf_access`, arch/x86/net/bpf_jit_comp.c, v6.1). Loading a
//!   pointer member gives another typed pointer, so chains such as
//!   `ct->ct_net.net->ns.inum` stay direct.
//!
//! Code generic over [`Kmem`] is written once for both kinds of program.

use aya_ebpf::helpers::bpf_probe_read_kernel;

pub(crate) trait Kmem {
    /// The `T` at `addr`; `None` where the read failed (a direct read never
    /// fails: a fault reads as zero).
    fn read<T: Copy>(addr: u64) -> Option<T>;
}

/// Through `bpf_probe_read_kernel`.
pub(crate) struct Probe;

/// Plain loads through BTF-typed pointers (fentry/fexit only).
pub(crate) struct Direct;

impl Kmem for Probe {
    #[inline(always)]
    fn read<T: Copy>(addr: u64) -> Option<T> {
        // SAFETY: bpf_probe_read_kernel checks the address: a bad one is an
        // error, never a fault.
        unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
    }
}

impl Kmem for Direct {
    #[inline(always)]
    fn read<T: Copy>(addr: u64) -> Option<T> {
        // SAFETY: only called with a BTF-typed pointer argument of a tracing
        // program plus offsets read from that BTF: the verifier checks the
        // access against the struct's layout and the JIT emits a load whose
        // fault is caught (the destination reads as 0). Volatile, so that
        // LLVM neither widens nor merges it into a load the layout would
        // not allow.
        Some(unsafe { core::ptr::read_volatile(addr as *const T) })
    }
}
