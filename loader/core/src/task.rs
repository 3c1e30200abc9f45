//! One call in flight from Lua to a runtime.
//!
//! A task is allocated by [`Task::post`]-ers (the Lua side, through the ABI),
//! travels through a runtime's queue to a runtime thread, and is answered
//! with [`Task::respond`]. Who finishes it is decided by one atomic:
//!
//! - `PENDING -> DONE`: the runtime answered while the caller was still
//!   spinning; the caller reads the answer and frees the task.
//! - `PENDING -> PARKED`: the caller gave up spinning first. The runtime's
//!   answer then pushes the task on the per-process completion queue, and the
//!   dispatcher frees it after handing the answer to the waiting coroutine
//!   (or to nobody, if that call timed out: late answers are freed the same
//!   way).
//!
//! Whoever loses the compare-and-swap knows the other side's move, so every
//! task is freed exactly once.

use std::cell::UnsafeCell;
use std::os::raw::{c_char, c_int};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::completion;
use crate::queue::TaskQueue;
use crate::spin::now_ns;

const PENDING: u32 = 0;
const DONE: u32 = 1;
const PARKED: u32 = 2;

/// Marks live tasks so that a stray pointer handed back by a runtime is
/// caught (and logged) instead of being written through, in most cases.
const MAGIC: u32 = 0x7e57_ff1a;
const DEAD: u32 = 0xdead_7a5c;

/// The runtime's answer: written once by `respond`, read after the state
/// change that publishes it.
struct Answer {
    rc: c_int,
    rsp: *mut c_char,
    rsp_len: c_int,
    answered_ns: u64,
}

pub struct Task {
    magic: AtomicU32,
    state: AtomicU32,
    id: f64,
    /// The queue the task was posted to: never freed, so always valid.
    queue: *const TaskQueue,
    /// When a runtime thread took the task from the queue (0: not yet).
    picked_ns: AtomicU64,
    /// Whether a runtime thread was spinning in poll when the task was
    /// posted: only then can the caller expect an answer within a spin.
    /// Written and read by the caller's thread only.
    poller_spinning: AtomicBool,
    /// Borrowed request bytes: the Lua side keeps the string referenced until
    /// the task is freed (late answers included), so no copy is made.
    req: *const u8,
    req_len: c_int,
    answer: UnsafeCell<Answer>,
}

/// An owned pointer to a live task, passed between threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskPtr(NonNull<Task>);

// SAFETY: a task is handed from thread to thread, never shared for writing:
// the queue gives it to one runtime thread, whose `respond` publishes the
// answer with a release CAS that the reader acquires.
unsafe impl Send for TaskPtr {}

/// The answer as the caller reads it.
#[derive(Debug)]
pub struct Response {
    pub rc: c_int,
    /// Owned by the task until [`TaskPtr::free`]; may be null.
    pub rsp: *const c_char,
    pub len: usize,
}

impl TaskPtr {
    /// Allocates a task for `queue` borrowing `req[..req_len]` (which may
    /// be null). `queue` must live for the rest of the process.
    pub fn new(queue: &TaskQueue, id: f64, req: *const u8, req_len: c_int) -> TaskPtr {
        let task = Box::new(Task {
            magic: AtomicU32::new(MAGIC),
            state: AtomicU32::new(PENDING),
            id,
            queue,
            picked_ns: AtomicU64::new(0),
            poller_spinning: AtomicBool::new(false),
            req,
            req_len: if req.is_null() { 0 } else { req_len },
            answer: UnsafeCell::new(Answer {
                rc: 0,
                rsp: std::ptr::null_mut(),
                rsp_len: 0,
                answered_ns: 0,
            }),
        });
        TaskPtr(NonNull::from(Box::leak(task)))
    }

    /// Checks a pointer coming back from C: null or not one of ours -> None.
    pub fn from_raw(p: *mut std::ffi::c_void) -> Option<TaskPtr> {
        let p = NonNull::new(p as *mut Task)?;
        // SAFETY: the ABI contract says `p` is a task we handed out and not
        // yet answered. The magic check catches most violations of that.
        let magic = unsafe { p.as_ref().magic.load(Ordering::Relaxed) };
        if magic != MAGIC {
            eprintln!("resty_ffi: ignoring a pointer that is not a live task ({p:p})");
            return None;
        }
        Some(TaskPtr(p))
    }

    pub fn as_raw(self) -> *mut std::ffi::c_void {
        self.0.as_ptr().cast()
    }

    fn queue(&self) -> &TaskQueue {
        // SAFETY: queues are never freed (queue.rs), so the pointer taken
        // from a live reference in `new` is valid for the process's life.
        unsafe { &*self.task().queue }
    }

    fn task(&self) -> &Task {
        // SAFETY: a TaskPtr exists only for a live task (freed solely by
        // `free`, which consumes it).
        unsafe { self.0.as_ref() }
    }

    pub fn id(self) -> f64 {
        self.task().id
    }

    pub fn request(self) -> (*const u8, c_int) {
        let t = self.task();
        (t.req, t.req_len)
    }

    /// Stores the runtime's answer and finishes the task's trip.
    ///
    /// After this returns the runtime must not touch the task again: the
    /// caller may already have freed it.
    pub fn respond(self, rc: c_int, rsp: *mut c_char, rsp_len: c_int) {
        let t = self.task();
        // SAFETY: only the one runtime thread holding the task writes the
        // answer, once; readers wait for the state change below.
        unsafe {
            *t.answer.get() = Answer {
                rc,
                rsp,
                rsp_len,
                answered_ns: now_ns(),
            };
        }
        match t
            .state
            .compare_exchange(PENDING, DONE, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {}
            Err(_) => completion::push(self),
        }
    }

    /// Notes that a runtime thread took the task (for its service time).
    pub fn mark_picked(self) {
        self.task().picked_ns.store(now_ns(), Ordering::Relaxed);
    }

    /// Notes whether a poller was spinning when the task was posted.
    pub fn set_poller_spinning(self, spinning: bool) {
        self.task()
            .poller_spinning
            .store(spinning, Ordering::Relaxed);
    }

    /// Waits for the answer, spinning within the queue's caller budget when
    /// `may_spin` and a runtime thread was spinning in poll when the task
    /// was posted (a sleeping runtime takes longer to wake than any spin is
    /// worth). Returns true when answered (the caller reads and frees the
    /// task), false when parked (the answer will come through the
    /// completion queue).
    pub fn wait(self, may_spin: bool) -> bool {
        let state = &self.task().state;
        if may_spin
            && self.task().poller_spinning.load(Ordering::Relaxed)
            && self
                .queue()
                .caller_gate
                .spin(|| state.load(Ordering::Acquire) == DONE)
        {
            return true;
        }
        state
            .compare_exchange(PENDING, PARKED, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
    }

    /// The answer; valid once `wait` returned true or the task came out of
    /// the completion queue.
    pub fn response(self) -> Response {
        // SAFETY: the answer was published by the AcqRel CAS in `respond`
        // (observed by `wait`) or by the completion queue's mutex.
        let a = unsafe { &*self.task().answer.get() };
        let len = if a.rsp.is_null() {
            0
        } else if a.rsp_len > 0 {
            a.rsp_len as usize
        } else {
            // SAFETY: rsp_len 0 with rsp set means NUL-terminated, per ABI.
            unsafe { libc::strlen(a.rsp) }
        };
        Response {
            rc: a.rc,
            rsp: a.rsp,
            len,
        }
    }

    /// Frees the task and the runtime's response buffer, exactly once.
    /// An answered task reports its service time (taken to answered) to its
    /// queue's caller gate.
    pub fn free(self) {
        // SAFETY: freeing means the answer was published (or never written,
        // answered_ns 0): see `response`.
        let answered_ns = unsafe { (*self.task().answer.get()).answered_ns };
        let picked_ns = self.task().picked_ns.load(Ordering::Relaxed);
        if answered_ns != 0 && picked_ns != 0 {
            self.queue()
                .caller_gate
                .observe(answered_ns.saturating_sub(picked_ns));
        }
        // SAFETY: the task came from Box::leak in `new` and this consumes the
        // only pointer left to it; rsp was malloc()ed by the runtime and is
        // ours since respond.
        unsafe {
            let task = Box::from_raw(self.0.as_ptr());
            task.magic.store(DEAD, Ordering::Relaxed);
            let a = &*task.answer.get();
            if !a.rsp.is_null() {
                libc::free(a.rsp.cast());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static QUEUE: std::sync::LazyLock<TaskQueue> = std::sync::LazyLock::new(|| {
        TaskQueue::new(1, std::time::Duration::ZERO, std::time::Duration::ZERO)
    });

    fn malloced(s: &[u8]) -> *mut c_char {
        // SAFETY: fresh allocation of s.len() bytes, filled from s.
        unsafe {
            let p = libc::malloc(s.len().max(1)) as *mut u8;
            std::ptr::copy_nonoverlapping(s.as_ptr(), p, s.len());
            p.cast()
        }
    }

    #[test]
    fn answer_before_wait_is_seen_without_parking() {
        let t = TaskPtr::new(&QUEUE, 1.0, b"hi".as_ptr(), 2);
        t.respond(0, malloced(b"yo"), 2);
        assert!(t.wait(false));
        let r = t.response();
        assert_eq!(r.len, 2);
        t.free();
    }

    #[test]
    fn nul_terminated_answer_length_is_measured() {
        let t = TaskPtr::new(&QUEUE, 1.0, std::ptr::null(), 5);
        assert_eq!(t.request().1, 0, "null request has length 0");
        t.respond(3, malloced(b"abc\0"), 0);
        assert!(t.wait(false));
        let r = t.response();
        assert_eq!((r.rc, r.len), (3, 3));
        t.free();
    }
}
