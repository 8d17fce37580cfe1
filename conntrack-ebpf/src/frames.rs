//! Calls in flight: what an entry probe keeps for its return probe (a
//! kretprobe has no arguments), for `__nf_conntrack_alloc`,
//! `__nf_conntrack_confirm` and the opt-in lookups.
//!
//! Two stores, chosen at load time (`Config::per_cpu_calls`, from the kernel's
//! preemption model):
//!
//! - **Per CPU** (kernels built or booted with `preempt=none|voluntary`, no
//!   RT): none of these functions sleeps (GFP_ATOMIC allocation, bucket
//!   spinlocks), so without preemption a call returns on the CPU and in the
//!   task it started on, and calls nest strictly (a softirq that runs
//!   conntrack on top of a process-context call returns first). A small
//!   per-CPU stack is then exact, and it costs an array access instead of
//!   two to four LRU-hash operations (about 10 µs each under the lab's TCG
//!   emulation, the larger part of what the default probes cost there).
//! - **Per task** (`preempt=full`, `lazy`, RT, or a model ctscope could not
//!   read): a call can be preempted and resumed on another CPU, so each task
//!   has a stack of its own, the same `CallStack`, in a preallocated LRU
//!   hash keyed by the task. A softirq that runs conntrack on top of a
//!   task's call runs as that task (`current`), so it nests on that stack
//!   as it would on the CPU's. The stack stays in the map between calls:
//!   a task's push and pop are one lookup each once it exists (its first
//!   call inserts it). Keeping a depth and a frame per (task, level), as
//!   before, took seven LRU operations per call, about 1 µs per program
//!   under the lab's TCG on 7.3.
//!
//! Either way a return without its frame is reported by the caller (counted,
//! never guessed), and a frame's owner is checked before it is used.

use aya_ebpf::maps::{LruHashMap, PerCpuArray};
use conntrack_common::{AllocArgs, CONFIRM_DEPTH, CallStack, ConfirmFrame, Counter, LookupFrame};

use crate::{
    config,
    counters::{count, current_task},
    maps::{ALLOC_STACK, ALLOC_TASKS, CONFIRM_STACK, CONFIRM_TASKS, LOOKUP_STACK, LOOKUP_TASKS},
};

/// Frames per stack; a power of two so that an index can be masked.
const DEPTH: usize = CONFIRM_DEPTH as usize;
const _: () = assert!(DEPTH.is_power_of_two());

/// Where one kind of call keeps its frames: the per-CPU stack, and the
/// per-task stacks.
pub(crate) struct Calls<T: Copy + 'static> {
    pub stack: &'static PerCpuArray<CallStack<T>>,
    pub tasks: &'static LruHashMap<u64, CallStack<T>>,
}

/// `__nf_conntrack_alloc` calls in flight: their arguments.
#[inline(always)]
pub(crate) fn allocs() -> Calls<AllocArgs> {
    Calls {
        stack: &ALLOC_STACK,
        tasks: &ALLOC_TASKS,
    }
}

/// Lookups in flight.
#[inline(always)]
pub(crate) fn lookups() -> Calls<LookupFrame> {
    Calls {
        stack: &LOOKUP_STACK,
        tasks: &LOOKUP_TASKS,
    }
}

/// `__nf_conntrack_confirm` calls in flight.
#[inline(always)]
pub(crate) fn confirms() -> Calls<ConfirmFrame> {
    Calls {
        stack: &CONFIRM_STACK,
        tasks: &CONFIRM_TASKS,
    }
}

impl<T: Copy + 'static> Calls<T> {
    /// The stack of this CPU or of this task (created on its first call;
    /// None when the map cannot take it, or for a return that finds none).
    ///
    /// Only the program running now uses the stack it gets: the CPU's (kprobe
    /// programs do not nest on one CPU), or the task's (only programs
    /// running as this task touch it, and a task runs on one CPU at a time).
    #[inline(always)]
    fn stack(&self, task: u64, create: bool) -> Option<*mut CallStack<T>> {
        if config::per_cpu_calls() {
            return self.stack.get_ptr_mut(0);
        }
        if let Some(s) = self.tasks.get_ptr_mut(task) {
            return Some(s);
        }
        if !create {
            return None;
        }
        // A blank stack from the per-CPU scratch slot (a `CallStack` is too
        // large for the BPF stack), which per-task mode does not use else.
        let blank = self.stack.get_ptr_mut(0)?;
        // SAFETY: this CPU's scratch slot (see above); frames past the
        // depth are never read.
        unsafe { (*blank).depth = 0 };
        // The map copies the value from the slot.
        #[expect(
            clippy::needless_borrows_for_generic_args,
            reason = "aya's insert takes `impl Borrow<V>`: a reference avoids copying the frame to the stack"
        )]
        // SAFETY: as above.
        let _ = self.tasks.insert(task, unsafe { &*blank }, 0);
        self.tasks.get_ptr_mut(task)
    }

    /// Keeps `frame` for the matching return; false when there was no room
    /// (the return then finds no frame).
    #[inline(always)]
    pub(crate) fn push(&self, frame: T) -> bool {
        let task = current_task();
        let Some(s) = self.stack(task, true) else {
            return false;
        };
        // SAFETY: see `stack`: nothing else uses it while this program runs.
        let s = unsafe { &mut *s };
        let d = s.depth as usize;
        if d >= DEPTH {
            // Only frames whose return probe never ran can pile up this
            // deep (nesting stops at process + softirq): start over.
            count(Counter::CallStackReset);
            s.depth = 0;
            return false;
        }
        let i = d & (DEPTH - 1);
        s.task[i] = task;
        s.frame[i] = frame;
        s.depth = d as u32 + 1;
        true
    }

    /// Takes the innermost frame of this task at a return: `(true, frame)`,
    /// or `(false, default)` when the entry kept none. A tuple with explicit
    /// defaults rather than an `Option<T>`: LLVM may copy the undefined
    /// payload of a `None`, which the verifier rejects (seen on 6.18).
    #[inline(always)]
    pub(crate) fn pop(&self, default: T) -> (bool, T) {
        let task = current_task();
        let Some(s) = self.stack(task, false) else {
            return (false, default);
        };
        // SAFETY: as in `push`.
        let s = unsafe { &mut *s };
        let d = s.depth as usize;
        if d == 0 || d > DEPTH {
            return (false, default);
        }
        // The innermost frame is this call's; a frame of another task there
        // would be one whose return never ran, and it is dropped either way.
        let i = (d - 1) & (DEPTH - 1);
        s.depth = i as u32;
        if s.task[i] == task {
            (true, s.frame[i])
        } else {
            (false, default)
        }
    }

    /// The innermost frame of this task, in place (for a probe that runs
    /// between an entry and its return, such as `nf_ct_resolve_clash`).
    #[inline(always)]
    pub(crate) fn innermost(&self) -> Option<*mut T> {
        let task = current_task();
        // SAFETY: as in `push`; the pointer returned is into the same stack.
        let s = unsafe { &mut *self.stack(task, false)? };
        let d = s.depth as usize;
        if d == 0 || d > DEPTH {
            return None;
        }
        let i = (d - 1) & (DEPTH - 1);
        if s.task[i] != task {
            return None;
        }
        Some(&raw mut s.frame[i])
    }
}
