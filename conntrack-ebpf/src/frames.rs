//! Calls in flight: what an entry probe keeps for its return probe (a
//! kretprobe has no arguments), for `__nf_conntrack_alloc`,
//! `__nf_conntrack_confirm` and the opt-in lookups.
//!
//! Two stores, chosen at load time (`PER_CPU_CALLS`, from the kernel's
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
//!   read): a call can be preempted and resumed on another CPU, so frames
//!   are keyed by (task, nesting level) in preallocated LRU hashes.
//!
//! Either way a return without its frame is reported by the caller (counted,
//! never guessed), and a frame's owner is checked before it is used.

use aya_ebpf::maps::{LruHashMap, PerCpuArray};
use conntrack_common::{CONFIRM_DEPTH, Counter, FrameKey};

use crate::{
    config,
    maps::{count, current_task},
};

/// Frames per CPU stack; a power of two so that an index can be masked.
const DEPTH: usize = CONFIRM_DEPTH as usize;
const _: () = assert!(DEPTH.is_power_of_two());

/// One CPU's calls in flight, innermost last.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CallStack<T: Copy> {
    pub depth: u32,
    pub _pad: u32,
    pub task: [u64; DEPTH],
    pub frame: [T; DEPTH],
}

/// Where one kind of call keeps its frames: the per-CPU stack, and the
/// per-task depth and frames.
pub struct Calls<T: Copy + 'static> {
    pub stack: &'static PerCpuArray<CallStack<T>>,
    pub depth: &'static LruHashMap<u64, u32>,
    pub frames: &'static LruHashMap<FrameKey, T>,
}

impl<T: Copy + 'static> Calls<T> {
    /// Keeps `frame` for the matching return; false when there was no room
    /// (the return then finds no frame).
    #[inline(always)]
    pub fn push(&self, frame: T) -> bool {
        let task = current_task();
        if config::per_cpu_calls() {
            let Some(s) = self.stack.get_ptr_mut(0) else {
                return false;
            };
            // SAFETY: this CPU's stack; kprobe programs do not nest on one
            // CPU, so nothing else touches it while this program runs.
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
            return true;
        }
        // SAFETY: a plain read of this task's entry; only this task changes it.
        let level = unsafe { self.depth.get(task) }.copied().unwrap_or(0);
        let _ = self.depth.insert(task, level + 1, 0);
        if level >= CONFIRM_DEPTH {
            return false;
        }
        let key = FrameKey {
            task,
            level,
            _pad: 0,
        };
        self.frames.insert(key, frame, 0).is_ok()
    }

    /// Takes the innermost frame of this task at a return: `(true, frame)`,
    /// or `(false, default)` when the entry kept none. A tuple with explicit
    /// defaults rather than an `Option<T>`: LLVM may copy the undefined
    /// payload of a `None`, which the verifier rejects (seen on 6.18).
    #[inline(always)]
    pub fn pop(&self, default: T) -> (bool, T) {
        let task = current_task();
        if config::per_cpu_calls() {
            let Some(s) = self.stack.get_ptr_mut(0) else {
                return (false, default);
            };
            // SAFETY: as in `push`.
            let s = unsafe { &mut *s };
            let d = s.depth as usize;
            if d == 0 || d > DEPTH {
                return (false, default);
            }
            // Without preemption the innermost frame is this call's; a frame
            // of another task there would be one whose return never ran, and
            // it is dropped either way.
            let i = (d - 1) & (DEPTH - 1);
            s.depth = i as u32;
            return if s.task[i] == task {
                (true, s.frame[i])
            } else {
                (false, default)
            };
        }
        // SAFETY: a plain read of this task's entry; only this task changes it.
        let depth = unsafe { self.depth.get(task) }.copied().unwrap_or(0);
        if depth == 0 {
            return (false, default);
        }
        let level = depth - 1;
        if level == 0 {
            let _ = self.depth.remove(task);
        } else {
            let _ = self.depth.insert(task, level, 0);
        }
        let key = FrameKey {
            task,
            level,
            _pad: 0,
        };
        match self.frames.get_ptr(key) {
            Some(f) => {
                // SAFETY: this task's own frame, copied before its removal.
                let frame = unsafe { *f };
                let _ = self.frames.remove(key);
                (true, frame)
            }
            None => (false, default),
        }
    }

    /// The innermost frame of this task, in place (for a probe that runs
    /// between an entry and its return, such as `nf_ct_resolve_clash`).
    #[inline(always)]
    pub fn innermost(&self) -> Option<*mut T> {
        let task = current_task();
        if config::per_cpu_calls() {
            let s = self.stack.get_ptr_mut(0)?;
            // SAFETY: as in `push`.
            let s = unsafe { &mut *s };
            let d = s.depth as usize;
            if d == 0 || d > DEPTH {
                return None;
            }
            let i = (d - 1) & (DEPTH - 1);
            if s.task[i] != task {
                return None;
            }
            return Some(&mut s.frame[i] as *mut T);
        }
        // SAFETY: a plain read of this task's entry.
        let depth = unsafe { self.depth.get(task) }.copied().unwrap_or(0);
        if depth == 0 || depth > CONFIRM_DEPTH {
            return None;
        }
        let key = FrameKey {
            task,
            level: depth - 1,
            _pad: 0,
        };
        self.frames.get_ptr_mut(key)
    }
}
