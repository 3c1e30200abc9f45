//! Every crossing of the C ABI, in one place.
//!
//! - `libffi_init`, the entry point the core calls when Lua loads
//!   `ffi_python3` (runs inside `catch_unwind`: no panic reaches C);
//! - the core's functions this loader calls. They are declared, not linked:
//!   the dynamic linker resolves them from the already loaded
//!   `libresty_ffi.so`, exactly as for any runtime;
//! - small libc helpers (making libraries' symbols global, naming threads).
//!
//! Raw task and queue pointers never leave this file: the rest of the crate
//! sees addresses (`usize`) and the owning [`TaskRef`].

use std::ffi::{c_char, c_int, c_void};

use crate::load;

extern "C" {
    fn ngx_http_lua_ffi_task_poll(tq: *mut c_void) -> *mut c_void;
    fn ngx_http_lua_ffi_get_req(task: *mut c_void, len: *mut c_int) -> *mut c_char;
    fn ngx_http_lua_ffi_respond(task: *mut c_void, rc: c_int, rsp: *mut c_char, rsp_len: c_int);
    fn resty_ffi_task_try_poll(tq: *mut c_void) -> *mut c_void;
    fn resty_ffi_task_poll_batch(tq: *mut c_void, out: *mut *mut c_void, max: c_int) -> c_int;
    fn resty_ffi_queue_finished(tq: *mut c_void) -> c_int;
    fn resty_ffi_queue_fd(tq: *mut c_void) -> c_int;
    fn resty_ffi_queue_arm(tq: *mut c_void) -> c_int;
}

pub use resty_ffi_loader::{log, name_thread};

/// Called by the core when Lua loads this library: parses `cfg`, creates
/// the interpreter on first use, imports the module and starts it.
///
/// # Safety
/// Per the runtime ABI: `cfg` is NULL or a NUL-terminated string valid
/// during the call, `tq` a task queue of the core.
#[no_mangle]
pub unsafe extern "C" fn libffi_init(cfg: *mut c_char, tq: *mut c_void) -> c_int {
    // SAFETY: per this function's contract.
    unsafe { resty_ffi_loader::init("ffi_python3", cfg, tq, load::start) }
}

/// One task taken from a queue, answered at most once.
#[derive(Debug)]
pub struct TaskRef(*mut c_void);

// SAFETY: the core's tasks may be read and answered from any thread (ABI).
unsafe impl Send for TaskRef {}
// SAFETY: `request` only reads; `respond` takes `self` by value.
unsafe impl Sync for TaskRef {}

impl TaskRef {
    fn new(p: *mut c_void) -> Option<TaskRef> {
        (!p.is_null()).then_some(TaskRef(p))
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

    /// Answers the task; `body` is copied into a malloc()ed, NUL-terminated
    /// buffer that the core owns from now on.
    pub fn respond(self, rc: i32, body: Option<&[u8]>) {
        let (rsp, len) = match body {
            Some(b) => (malloc_copy(b), b.len() as c_int),
            None => (std::ptr::null_mut(), 0),
        };
        // SAFETY: the task came from poll and `self` is consumed: once only.
        unsafe { ngx_http_lua_ffi_respond(self.0, rc, rsp, len) }
    }
}

fn malloc_copy(bytes: &[u8]) -> *mut c_char {
    // SAFETY: a fresh allocation of len + 1 bytes, filled within bounds;
    // NUL-terminated so rsp_len 0 (an empty answer) still reads as "".
    unsafe {
        let p = libc::malloc(bytes.len() + 1) as *mut u8;
        if !p.is_null() {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
            *p.add(bytes.len()) = 0;
        }
        p.cast()
    }
}

/// Blocks for the next task; None once the queue is finished.
///
/// `tq` must be a queue address the core handed to `libffi_init`
/// (see `module::check_queue`); queues are never freed.
pub fn poll(tq: usize) -> Option<TaskRef> {
    // SAFETY: tq is a live queue (checked by the caller), valid forever.
    TaskRef::new(unsafe { ngx_http_lua_ffi_task_poll(tq as *mut c_void) })
}

/// Never blocks: the next task if one is queued right now.
pub fn try_poll(tq: usize) -> Option<TaskRef> {
    // SAFETY: as for poll.
    TaskRef::new(unsafe { resty_ffi_task_try_poll(tq as *mut c_void) })
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

/// Makes libpython's and the core's symbols global (see
/// [`resty_ffi_loader::make_global`]).
pub fn make_symbols_global() -> Result<(), String> {
    resty_ffi_loader::make_global(pyo3::ffi::Py_InitializeFromConfig as *const () as usize)?;
    resty_ffi_loader::make_global(ngx_http_lua_ffi_task_poll as *const () as usize)?;
    Ok(())
}
