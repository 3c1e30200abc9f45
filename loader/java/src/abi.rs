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
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::RwLock;

use crate::load;

extern "C" {
    fn ngx_http_lua_ffi_task_poll(tq: *mut c_void) -> *mut c_void;
    fn ngx_http_lua_ffi_get_req(task: *mut c_void, len: *mut c_int) -> *mut c_char;
    fn ngx_http_lua_ffi_respond(task: *mut c_void, rc: c_int, rsp: *mut c_char, rsp_len: c_int);
    fn resty_ffi_task_try_poll(tq: *mut c_void) -> *mut c_void;
    fn resty_ffi_queue_finished(tq: *mut c_void) -> c_int;
    fn resty_ffi_log(level: c_int, msg: *const c_char, len: c_int);
}

/// Logs one line through nginx at nginx level `level` (1 emerg ... 8
/// debug): the core queues it and nginx writes it, obeying `error_log`.
pub fn log(level: i32, msg: &str) {
    let len = msg.len().min(c_int::MAX as usize) as c_int;
    // SAFETY: msg is valid for len bytes during the call; the core copies it.
    unsafe { resty_ffi_log(level, msg.as_ptr().cast(), len) }
}

/// Called by the core when Lua loads this library: parses `cfg`, creates
/// the JVM on first use, loads the class and starts it.
///
/// # Safety
/// Per the runtime ABI: `cfg` is NULL or a NUL-terminated string valid
/// during the call, `tq` a task queue of the core.
#[no_mangle]
pub unsafe extern "C" fn libffi_init(cfg: *mut c_char, tq: *mut c_void) -> c_int {
    let cfg = if cfg.is_null() {
        String::new()
    } else {
        // SAFETY: per the ABI, cfg is NUL-terminated and valid during init.
        unsafe { CStr::from_ptr(cfg) }
            .to_string_lossy()
            .into_owned()
    };
    let result = catch_unwind(AssertUnwindSafe(|| {
        register_queue(tq as usize);
        load::start(&cfg, tq as usize)
    }));
    let err = match result {
        Ok(Ok(())) => return 0,
        Ok(Err(e)) => e,
        Err(panic) => crate::Error::Internal(format!("panic: {}", panic_text(&*panic))),
    };
    let msg = format!("ffi_java: {err}");
    log(crate::log::ERR, &msg);
    report_init_error(&msg);
    match err.rc() {
        0 => 10,
        rc => rc,
    }
}

/// The text of a caught panic.
pub fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// Hands the message to the core when it offers `resty_ffi_init_error`
/// (then `load_ffi` returns it to Lua); without it the message is only in
/// error.log and Lua sees the return code.
fn report_init_error(msg: &str) {
    type ReportFn = unsafe extern "C" fn(*const c_char);
    let Ok(msg) = CString::new(msg.replace('\0', " ")) else {
        return;
    };
    // SAFETY: dlsym on the global scope with a NUL-terminated name.
    let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"resty_ffi_init_error".as_ptr()) };
    if !sym.is_null() {
        // SAFETY: the core declares the symbol with this signature; it
        // copies the string before returning.
        unsafe { std::mem::transmute::<*mut c_void, ReportFn>(sym)(msg.as_ptr()) };
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
    let addr = ngx_http_lua_ffi_task_poll as *const c_void;
    // SAFETY: dladdr only reads the link map; info is plain data.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: addr is the address of a function in a loaded library.
    if unsafe { libc::dladdr(addr, &mut info) } == 0 || info.dli_fname.is_null() {
        return Err("dladdr found no library for the core".into());
    }
    // SAFETY: RTLD_NOLOAD only bumps the flags of a loaded library; the
    // handle is deliberately never closed (the library stays loaded).
    let h = unsafe {
        libc::dlopen(
            info.dli_fname,
            libc::RTLD_NOW | libc::RTLD_NOLOAD | libc::RTLD_GLOBAL,
        )
    };
    if h.is_null() {
        // SAFETY: dli_fname is a NUL-terminated path set by dladdr.
        let path = unsafe { CStr::from_ptr(info.dli_fname) }.to_string_lossy();
        return Err(format!("cannot make {path} global"));
    }
    Ok(())
}

/// Names the calling OS thread (shown by top -H, ps -L, /proc/*/comm);
/// Linux keeps the first 15 bytes.
pub fn name_thread(name: &str) {
    let mut bytes: Vec<u8> = name.bytes().filter(|&b| b != 0).take(15).collect();
    bytes.push(0);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of any length and
    // applies to the calling thread only.
    unsafe { libc::prctl(libc::PR_SET_NAME, bytes.as_ptr() as libc::c_ulong, 0, 0, 0) };
}
