//! ctscope's eBPF programs: kprobes/kretprobes on the conntrack insertion,
//! allocation, confirmation and deletion paths. Everything here fires per new
//! connection (alloc, confirm, insert, delete, free), never per packet,
//! except the opt-in lookup probes (lookup.rs).
//!
//! The loader finds each program by its function's name, spelled again in
//! conntrack-common `names::programs`: rename both (conntrack-user
//! tests/host.rs `every_shared_name_is_in_the_object` checks the object).
//!
//! On the host target this crate compiles to an empty `main` so that the
//! workspace builds and lints with the stable toolchain; the real object is
//! built for `bpfel-unknown-none` by `conntrack-user/build.rs` (aya-build).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// `asm!` for BPF's atomic add (counters.rs `atomic_add`): Rust has no atomic
// read-modify-write for this target.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]
// aya's program macros hand each entry its context by value, and the
// template's `try_` functions take it on the same way.
#![cfg_attr(
    target_arch = "bpf",
    expect(
        clippy::needless_pass_by_value,
        reason = "aya passes program contexts by value"
    )
)]

#[cfg(target_arch = "bpf")]
mod config;
#[cfg(target_arch = "bpf")]
mod counters;
#[cfg(target_arch = "bpf")]
mod drops;
#[cfg(target_arch = "bpf")]
mod frames;
#[cfg(target_arch = "bpf")]
mod insert;
#[cfg(target_arch = "bpf")]
mod life;
#[cfg(target_arch = "bpf")]
mod lookup;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod mem;
#[cfg(target_arch = "bpf")]
mod origin;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // As aya's ebpf-panic: no code path here should panic (bounds are
    // checked with `get`), and if one does, the program must not load. An
    // infinite loop is what the verifier refuses (a back-edge that never
    // exits, or "last insn is not an exit or jmp"), so a reachable panic is
    // a load error; `unreachable_unchecked` would make it undefined
    // behaviour that LLVM may silently delete with the code around it.
    loop {}
}

/// GPL-compatible licence: `bpf_probe_read_kernel` is GPL-only.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
