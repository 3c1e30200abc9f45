//! The per-process completion queue: answers to calls whose caller parked.
//!
//! Runtime threads push answered tasks here ([`push`]); the worker's
//! dispatcher drains them in batches ([`drain`]). The dispatcher announces
//! it is about to sleep with [`prepare_sleep`]; a push that finds it asleep
//! writes one wake byte (see [`crate::wake`]), so many answers fold into one
//! wake and a busy dispatcher is never woken at all.
//!
//! No lost wake-up: `prepare_sleep` sets "asleep" before it looks at the
//! queue under the lock, and `push` adds under the same lock before it
//! clears "asleep"; either the dispatcher sees the task or the pusher sees
//! "asleep". A spare byte only costs one empty drain.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::task::TaskPtr;
use crate::wake;

static QUEUE: Mutex<VecDeque<TaskPtr>> = Mutex::new(VecDeque::new());
static ASLEEP: AtomicBool = AtomicBool::new(false);

fn queue() -> std::sync::MutexGuard<'static, VecDeque<TaskPtr>> {
    QUEUE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Queues an answered task for the dispatcher; wakes it if it sleeps.
pub fn push(task: TaskPtr) {
    queue().push_back(task);
    if ASLEEP.swap(false, Ordering::AcqRel) {
        crate::stats::wake_written();
        wake::notify();
    }
}

/// Moves up to `out.len()` answered tasks into `out`; returns how many.
pub fn drain(out: &mut [*mut std::ffi::c_void]) -> usize {
    let mut q = queue();
    let n = out.len().min(q.len());
    for (slot, task) in out.iter_mut().zip(q.drain(..n)) {
        *slot = task.as_raw();
    }
    crate::stats::drained(n);
    n
}

/// Marks the dispatcher asleep unless answers are waiting. Returns the
/// number waiting: 0 means "sleep now, a push will wake you".
pub fn prepare_sleep() -> usize {
    ASLEEP.store(true, Ordering::SeqCst);
    let n = queue().len();
    if n > 0 {
        ASLEEP.store(false, Ordering::SeqCst);
    }
    n
}
