//! The runtime side of the task ABI in safe Rust: a polled task that is
//! answered exactly once ([`TaskRef`]), the poll functions, and the set of
//! queues the core handed to this loader's `libffi_init` (so a queue address
//! coming back from Python or Java is checked before the core sees it).

use std::collections::HashSet;
use std::ffi::{c_char, c_int, c_void};
use std::sync::RwLock;

extern "C" {
    fn ngx_http_lua_ffi_task_poll(tq: *mut c_void) -> *mut c_void;
    fn ngx_http_lua_ffi_get_req(task: *mut c_void, len: *mut c_int) -> *mut c_char;
    fn ngx_http_lua_ffi_respond(task: *mut c_void, rc: c_int, rsp: *mut c_char, rsp_len: c_int);
    fn resty_ffi_task_try_poll(tq: *mut c_void) -> *mut c_void;
    fn resty_ffi_task_poll_spin(tq: *mut c_void) -> *mut c_void;
    fn resty_ffi_task_poll_batch(tq: *mut c_void, out: *mut *mut c_void, max: c_int) -> c_int;
    fn resty_ffi_queue_finished(tq: *mut c_void) -> c_int;
    fn resty_ffi_queue_fd(tq: *mut c_void) -> c_int;
    fn resty_ffi_queue_arm(tq: *mut c_void) -> c_int;
}

/// The address of `ngx_http_lua_ffi_task_poll`, for [`crate::make_global`]
/// (the core's symbols made global).
pub fn core_symbol() -> usize {
    ngx_http_lua_ffi_task_poll as *const () as usize
}

/// Queue addresses the core handed to `libffi_init`. Queues are never
/// freed by the core, so an address once seen stays valid.
static QUEUES: RwLock<Option<HashSet<usize>>> = RwLock::new(None);

/// Records a queue the core handed to `libffi_init`.
pub fn register_queue(tq: usize) {
    let mut q = QUEUES.write().unwrap_or_else(|e| e.into_inner());
    q.get_or_insert_with(HashSet::new).insert(tq);
}

/// True if `tq` is a queue the core handed to this loader.
pub fn is_queue(tq: usize) -> bool {
    let q = QUEUES.read().unwrap_or_else(|e| e.into_inner());
    q.as_ref().is_some_and(|q| q.contains(&tq))
}

/// One task taken from a queue, answered at most once (answering consumes
/// it).
#[derive(Debug)]
pub struct TaskRef(*mut c_void);

// SAFETY: the core's tasks may be read and answered from any thread (ABI).
unsafe impl Send for TaskRef {}
// SAFETY: `request` only reads; answering takes `self` by value.
unsafe impl Sync for TaskRef {}

impl TaskRef {
    fn new(p: *mut c_void) -> Option<TaskRef> {
        (!p.is_null()).then_some(TaskRef(p))
    }

    /// The handle a language keeps for the task (never 0).
    pub fn into_handle(self) -> i64 {
        self.0 as i64
    }

    /// Takes back a handle.
    ///
    /// # Safety
    /// `handle` came from [`TaskRef::into_handle`] and was not answered
    /// yet.
    // SAFETY: unsafe only for that contract; the body makes no unsafe call
    // (the core validates the handle), and the Java and Node natives pass
    // back handles they got from `into_handle`.
    pub unsafe fn from_handle(handle: i64) -> Option<TaskRef> {
        TaskRef::new(handle as usize as *mut c_void)
    }

    /// The request bytes (None for a nil request). They live until the
    /// task is answered, which needs `self` by value, so the borrow holds.
    pub fn request(&self) -> Option<&[u8]> {
        let mut len: c_int = 0;
        // SAFETY: the task is live (unanswered) while self exists.
        let p = unsafe { ngx_http_lua_ffi_get_req(self.0, &mut len) };
        if p.is_null() {
            return None;
        }
        // SAFETY: the core guarantees `len` readable bytes at p until answered.
        Some(unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len.max(0) as usize) })
    }

    /// Answers with `rc` and a copy of `body` (None: a nil answer).
    pub fn respond(self, rc: i32, body: Option<&[u8]>) {
        self.respond_with(rc, body.map(<[u8]>::len), |buf| {
            buf.copy_from_slice(body.unwrap_or_default());
            Ok(())
        })
    }

    /// Answers with `rc` and a body of `len` bytes that `fill` writes into
    /// the malloc()ed, NUL-terminated buffer the core will own (`len` None:
    /// a nil answer). If `fill` fails, or the buffer cannot be allocated,
    /// the task is answered with rc 1 and the reason instead.
    pub fn respond_with(
        self,
        rc: i32,
        len: Option<usize>,
        fill: impl FnOnce(&mut [u8]) -> Result<(), String>,
    ) {
        let Some(len) = len else {
            // SAFETY: the task came from poll and `self` is consumed: once only.
            unsafe { ngx_http_lua_ffi_respond(self.0, rc, std::ptr::null_mut(), 0) };
            return;
        };
        let Some(p) = alloc_answer(len) else {
            return self.respond_error(&format!("cannot allocate {len} bytes for the answer"));
        };
        // SAFETY: p points to len + 1 writable bytes, owned here.
        let buf = unsafe { std::slice::from_raw_parts_mut(p, len + 1) };
        match fill(&mut buf[..len]) {
            // SAFETY: once only (self consumed); the core frees p.
            Ok(()) => unsafe { ngx_http_lua_ffi_respond(self.0, rc, p.cast(), len as c_int) },
            Err(why) => {
                // SAFETY: p came from malloc and was not handed out.
                unsafe { libc::free(p.cast()) };
                self.respond_error(&why)
            }
        }
    }

    /// Answers rc 1 with `msg` (nil if even that cannot be allocated).
    fn respond_error(self, msg: &str) {
        let (p, len) = match alloc_answer(msg.len()) {
            Some(p) => {
                // SAFETY: p has msg.len() + 1 writable bytes.
                unsafe { std::ptr::copy_nonoverlapping(msg.as_ptr(), p, msg.len()) };
                (p, msg.len())
            }
            None => (std::ptr::null_mut(), 0),
        };
        // SAFETY: once only (self consumed); the core frees p.
        unsafe { ngx_http_lua_ffi_respond(self.0, 1, p.cast(), len as c_int) }
    }
}

/// A malloc()ed buffer of len + 1 bytes whose last byte is NUL, so
/// rsp_len 0 (an empty answer) still reads as "".
fn alloc_answer(len: usize) -> Option<*mut u8> {
    // SAFETY: a fresh allocation; the NUL is written within its bounds.
    unsafe {
        let p = libc::malloc(len + 1) as *mut u8;
        if p.is_null() {
            return None;
        }
        *p.add(len) = 0;
        Some(p)
    }
}

/// Blocks for the next task; None once the queue is finished.
///
/// `tq` must be a queue the core handed to `libffi_init` (see
/// [`is_queue`]); queues are never freed.
pub fn poll(tq: usize) -> Option<TaskRef> {
    // SAFETY: tq is a live queue (checked by the caller), valid forever.
    TaskRef::new(unsafe { ngx_http_lua_ffi_task_poll(tq as *mut c_void) })
}

/// Never blocks: the next task if one is queued right now.
pub fn try_poll(tq: usize) -> Option<TaskRef> {
    // SAFETY: as for poll.
    TaskRef::new(unsafe { resty_ffi_task_try_poll(tq as *mut c_void) })
}

/// Never blocks beyond the queue's poll spin: the next task if one is
/// queued now or comes while spinning (counted as a spinning poller, so the
/// caller spins for the answer). For event loops.
pub fn poll_spin(tq: usize) -> Option<TaskRef> {
    // SAFETY: as for poll.
    TaskRef::new(unsafe { resty_ffi_task_poll_spin(tq as *mut c_void) })
}

/// Blocks for one task, then takes up to `max - 1` more already queued;
/// empty once the queue is finished.
pub fn poll_batch(tq: usize, max: usize) -> Vec<TaskRef> {
    let max = max.clamp(1, 4096);
    let mut out = vec![std::ptr::null_mut(); max];
    // SAFETY: as for poll; `out` has `max` writable slots.
    let n = unsafe { resty_ffi_task_poll_batch(tq as *mut c_void, out.as_mut_ptr(), max as c_int) };
    out.into_iter()
        .take(n.max(0) as usize)
        .filter_map(TaskRef::new)
        .collect()
}

/// The queue's readiness eventfd (-1 on error).
pub fn queue_fd(tq: usize) -> i32 {
    // SAFETY: as for poll.
    unsafe { resty_ffi_queue_fd(tq as *mut c_void) }
}

/// Arms the readiness fd: tasks waiting (0: wait on the fd), -1 finished.
pub fn queue_arm(tq: usize) -> i32 {
    // SAFETY: as for poll.
    unsafe { resty_ffi_queue_arm(tq as *mut c_void) }
}

/// True once the queue is finished and drained.
pub fn finished(tq: usize) -> bool {
    // SAFETY: as for poll.
    unsafe { resty_ffi_queue_finished(tq as *mut c_void) != 0 }
}

// ---- streaming answers ----------------------------------------------------

extern "C" {
    fn resty_ffi_respond_chunk(task: *mut c_void, data: *const c_char, len: c_int) -> c_int;
    fn resty_ffi_try_respond_chunk(task: *mut c_void, data: *const c_char, len: c_int) -> c_int;
    fn resty_ffi_task_cancelled(task: *mut c_void) -> c_int;
    fn resty_ffi_queue_space_fd(tq: *mut c_void) -> c_int;
}

/// What became of a chunk offered with [`TaskRef::try_chunk`] or
/// [`Chunks::offer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Copied into the stream (or joined, for a plain call).
    Taken,
    /// Nobody waits any more: stop producing, then answer the task.
    Cancelled,
    /// The stream's window is full and the chunk was NOT taken (only when
    /// not blocking): wait for the queue's space fd ([`queue_space_fd`]),
    /// then offer it again.
    Full,
    /// The task was answered already (or the handle is bad).
    Stale,
}

impl TaskRef {
    /// Offers one chunk of the answer without blocking (the final answer
    /// still comes with `respond`); the bytes are copied.
    pub fn try_chunk(&self, bytes: &[u8]) -> Chunk {
        self.chunks().offer(bytes, false)
    }

    /// True once nobody waits for the answer (closed, timed out, gone).
    pub fn cancelled(&self) -> bool {
        self.chunks().cancelled()
    }

    /// The task's streaming side, a copyable view that may be used without
    /// holding the `TaskRef` (say, blocked on a full window while another
    /// thread may answer the task).
    pub fn chunks(&self) -> Chunks {
        Chunks(self.0)
    }
}

/// The streaming side of a task (see [`TaskRef::chunks`]). Safe to use
/// after the task was answered: the core checks the handle's generation,
/// so a late chunk is [`Chunk::Stale`], never delivered to another call.
#[derive(Debug, Clone, Copy)]
pub struct Chunks(*mut c_void);

// SAFETY: the core's streaming functions are thread-safe and validate the
// handle (a stale one only ever touches never-freed slots).
unsafe impl Send for Chunks {}
// SAFETY: as above; nothing here mutates through the pointer.
unsafe impl Sync for Chunks {}

impl Chunks {
    /// Offers one chunk (copied). With `block`, waits while the stream's
    /// window is full, until the reader reads or goes away; without, says
    /// [`Chunk::Full`] instead.
    pub fn offer(self, bytes: &[u8], block: bool) -> Chunk {
        let Ok(len) = c_int::try_from(bytes.len()) else {
            return Chunk::Stale;
        };
        // SAFETY: bytes are readable for len and copied before the call
        // returns; the core validates the handle.
        let rc = unsafe {
            if block {
                resty_ffi_respond_chunk(self.0, bytes.as_ptr().cast(), len)
            } else {
                resty_ffi_try_respond_chunk(self.0, bytes.as_ptr().cast(), len)
            }
        };
        match rc {
            0 => Chunk::Taken,
            1 => Chunk::Cancelled,
            2 => Chunk::Full,
            _ => Chunk::Stale,
        }
    }

    /// True once nobody waits for the answer (closed, timed out, its
    /// request gone) or the task was answered.
    pub fn cancelled(self) -> bool {
        // SAFETY: any value may be passed; the core looks handles up.
        unsafe { resty_ffi_task_cancelled(self.0) != 0 }
    }
}

/// The queue's space eventfd: readable after a stream of it made room
/// while a producer waited, or was cancelled (-1 on error).
pub fn queue_space_fd(tq: usize) -> i32 {
    // SAFETY: as for poll.
    unsafe { resty_ffi_queue_space_fd(tq as *mut c_void) }
}
