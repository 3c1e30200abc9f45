//! Every crossing of the C ABI, in one place.
//!
//! - `libffi_init`, the entry point the core calls when Lua loads
//!   `ffi_java` (runs inside `catch_unwind`: no panic reaches C);
//! - the core's functions this loader calls. They are declared, not linked:
//!   the dynamic linker resolves them from the already loaded
//!   `libresty_ffi.so`, exactly as for any runtime;
//! - small libc helpers (making the core's symbols global, naming threads).
//!
//! Raw task and queue pointers never leave this file: the rest of the crate
//! sees addresses (`usize`, Java's `long`) and the owning [`TaskRef`].

use std::collections::HashSet;
use std::ffi::{c_char, c_int, c_void};
use std::sync::RwLock;

use crate::load;

extern "C" {
    fn ngx_http_lua_ffi_task_poll(tq: *mut c_void) -> *mut c_void;
    fn ngx_http_lua_ffi_get_req(task: *mut c_void, len: *mut c_int) -> *mut c_char;
    fn ngx_http_lua_ffi_respond(task: *mut c_void, rc: c_int, rsp: *mut c_char, rsp_len: c_int);
    fn resty_ffi_task_try_poll(tq: *mut c_void) -> *mut c_void;
    fn resty_ffi_queue_finished(tq: *mut c_void) -> c_int;
}

pub use resty_ffi_loader::{log, name_thread, panic_text};

/// Called by the core when Lua loads this library: parses `cfg`, creates
/// the JVM on first use, loads the class and starts it.
///
/// # Safety
/// Per the runtime ABI: `cfg` is NULL or a NUL-terminated string valid
/// during the call, `tq` a task queue of the core.
#[no_mangle]
pub unsafe extern "C" fn libffi_init(cfg: *mut c_char, tq: *mut c_void) -> c_int {
    // SAFETY: per this function's contract.
    unsafe {
        resty_ffi_loader::init("ffi_java", cfg, tq, |cfg, tq| {
            register_queue(tq);
            load::start(cfg, tq)
        })
    }
}

/// Queue addresses the core handed to `libffi_init`. Queues are never
/// freed by the core, so an address once seen stays valid.
static QUEUES: RwLock<Option<HashSet<usize>>> = RwLock::new(None);

fn register_queue(tq: usize) {
    let mut q = QUEUES.write().unwrap_or_else(|e| e.into_inner());
    q.get_or_insert_with(HashSet::new).insert(tq);
}

/// True if `tq` is a queue the core handed to this loader.
pub fn is_queue(tq: usize) -> bool {
    let q = QUEUES.read().unwrap_or_else(|e| e.into_inner());
    q.as_ref().is_some_and(|q| q.contains(&tq))
}

/// One task taken from a queue, answered at most once. Java holds it as a
/// `long` inside `resty.ffi.Task`, which answers once.
#[derive(Debug)]
pub struct TaskRef(*mut c_void);

// SAFETY: the core's tasks may be read and answered from any thread (ABI).
unsafe impl Send for TaskRef {}

impl TaskRef {
    fn new(p: *mut c_void) -> Option<TaskRef> {
        (!p.is_null()).then_some(TaskRef(p))
    }

    /// The handle Java keeps (never 0).
    pub fn into_handle(self) -> i64 {
        self.0 as i64
    }

    /// Takes back a handle from Java.
    ///
    /// # Safety
    /// `handle` came from [`TaskRef::into_handle`] and was not answered
    /// yet; `resty.ffi.Task` guarantees both for the natives it calls.
    pub unsafe fn from_handle(handle: i64) -> Option<TaskRef> {
        TaskRef::new(handle as usize as *mut c_void)
    }

    /// The request bytes (None for a nil request), valid until answered.
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

    /// Answers with `rc` and a body of `len` bytes that `fill` writes into
    /// the malloc()ed, NUL-terminated buffer the core will own (`len` None:
    /// a nil answer). If `fill` fails the task is answered with rc 1 and
    /// its message instead.
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
            let msg = format!("ffi_java: cannot allocate {len} bytes for the answer");
            return self.respond_error(&msg);
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

/// Blocks for the next task of a checked queue; None once finished.
pub fn poll(tq: usize) -> Option<TaskRef> {
    // SAFETY: tq is a live queue (checked by the caller), valid forever.
    TaskRef::new(unsafe { ngx_http_lua_ffi_task_poll(tq as *mut c_void) })
}

/// Never blocks: the next task if one is queued right now.
pub fn try_poll(tq: usize) -> Option<TaskRef> {
    // SAFETY: as for poll.
    TaskRef::new(unsafe { resty_ffi_task_try_poll(tq as *mut c_void) })
}

/// True once the queue is finished and drained.
pub fn finished(tq: usize) -> bool {
    // SAFETY: as for poll.
    unsafe { resty_ffi_queue_finished(tq as *mut c_void) != 0 }
}

/// Re-opens the already loaded core with RTLD_GLOBAL, so runtimes that
/// find the three C functions by name (jnr-ffi's
/// `LibraryLoader.DEFAULT_LIBRARY`, the FFM API's default lookup) see them
/// even if the core was opened RTLD_LOCAL. The Lua layer already opens it
/// RTLD_GLOBAL; this makes it hold whoever loaded it.
pub fn make_core_global() -> Result<(), String> {
    resty_ffi_loader::make_global(ngx_http_lua_ffi_task_poll as *const () as usize).map(|_| ())
}
