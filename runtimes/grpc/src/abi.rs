//! The C ABI, and every `unsafe` of the crate.
//!
//! Inbound: `libffi_init` (the runtime ABI) and the `resty_ffi_grpc_*`
//! functions resty/ffi/grpc.lua calls directly through LuaJIT FFI (they
//! never block, so they work in any phase, init_worker included).
//! Outbound: the core's task functions, wrapped in [`Queue`] and [`Task`],
//! which own the raw pointers so the rest of the crate never sees one.
//! Every exported body runs under `catch_unwind`.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::os::fd::{AsRawFd, RawFd};

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::error::Error;

extern "C" {
    fn ngx_http_lua_ffi_get_req(task: *mut c_void, len: *mut c_int) -> *mut c_char;
    fn ngx_http_lua_ffi_respond(task: *mut c_void, rc: c_int, rsp: *mut c_char, rsp_len: c_int);
    fn resty_ffi_task_try_poll(tq: *mut c_void) -> *mut c_void;
    fn resty_ffi_task_poll_spin(tq: *mut c_void) -> *mut c_void;
    fn resty_ffi_queue_fd(tq: *mut c_void) -> c_int;
    fn resty_ffi_queue_arm(tq: *mut c_void) -> c_int;
    fn resty_ffi_queue_space_fd(tq: *mut c_void) -> c_int;
    fn resty_ffi_init_error(msg: *const c_char);
    fn resty_ffi_try_respond_chunk(task: *mut c_void, data: *const c_char, len: c_int) -> c_int;
}

/// What [`Task::try_chunk`] did with a chunk.
pub enum Chunk {
    /// taken
    Taken,
    /// the reader's window is full: not taken; offer it again once the
    /// queue's space fd said there is room
    Full,
    /// nobody reads any more (closed, timed out, request gone): stop
    Gone,
}

/// The task queue `libffi_init` was given; valid for the process's life.
#[derive(Clone, Copy)]
pub struct Queue(*mut c_void);
// SAFETY: the core's queue functions are thread-safe (runtime ABI).
unsafe impl Send for Queue {}
// SAFETY: as above; the queue is only used through those functions.
unsafe impl Sync for Queue {}

/// What [`Queue::arm`] found.
pub enum Armed {
    /// no task waits: wait for the fd
    Wait,
    /// tasks arrived meanwhile: poll again
    Tasks,
    /// finished and drained: stop
    Finished,
}

impl Queue {
    /// A task waiting now, without blocking.
    pub fn try_poll(&self) -> Option<Task> {
        // SAFETY: self.0 is a live queue (given to libffi_init).
        let t = unsafe { resty_ffi_task_try_poll(self.0) };
        (!t.is_null()).then_some(Task(t))
    }

    /// A task waiting now, or posted while this spins within the queue's
    /// poll budget (ffi.load's `poll_spin_us`); never blocks longer. The
    /// core counts this thread as a spinning poller meanwhile, so a caller
    /// whose post it takes may spin for the answer instead of parking.
    pub fn poll_spin(&self) -> Option<Task> {
        // SAFETY: self.0 is a live queue (given to libffi_init).
        let t = unsafe { resty_ffi_task_poll_spin(self.0) };
        (!t.is_null()).then_some(Task(t))
    }

    /// The queue's readiness eventfd.
    pub fn fd(&self) -> Result<RawFd, Error> {
        // SAFETY: self.0 is a live queue.
        let fd = unsafe { resty_ffi_queue_fd(self.0) };
        if fd < 0 {
            return Err(Error::Init("the core gave no readiness fd".into()));
        }
        Ok(fd)
    }

    /// Arms the readiness fd before waiting on it.
    pub fn arm(&self) -> Armed {
        // SAFETY: self.0 is a live queue.
        match unsafe { resty_ffi_queue_arm(self.0) } {
            0 => Armed::Wait,
            n if n > 0 => Armed::Tasks,
            _ => Armed::Finished,
        }
    }

    /// The readiness fd registered with the current tokio runtime.
    pub fn watch(&self) -> Result<AsyncFd<QueueFd>, Error> {
        watch_fd(self.fd()?, "readiness")
    }

    /// The queue's space fd (readable after a task of the queue was
    /// cancelled: its caller stopped waiting) registered with the current
    /// tokio runtime.
    pub fn watch_cancels(&self) -> Result<AsyncFd<QueueFd>, Error> {
        // SAFETY: self.0 is a live queue.
        let fd = unsafe { resty_ffi_queue_space_fd(self.0) };
        if fd < 0 {
            return Err(Error::Init("the core gave no space fd".into()));
        }
        watch_fd(fd, "space")
    }
}

fn watch_fd(fd: RawFd, what: &str) -> Result<AsyncFd<QueueFd>, Error> {
    // SAFETY: the core creates each eventfd once per queue and never
    // closes it (queues live as long as the process), so it stays open and
    // the same for the AsyncFd's whole life.
    unsafe { AsyncFd::register_with_interest(QueueFd(fd), Interest::READABLE) }
        .map_err(|e| Error::Init(format!("cannot watch the queue's {what} fd: {e}")))
}

/// The queue's eventfd, owned by the core (never closed here).
pub struct QueueFd(RawFd);

impl AsRawFd for QueueFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Empties the eventfd counter (readiness is re-checked by polling).
pub fn clear_eventfd(fd: &QueueFd) {
    let fd = fd.0;
    let mut buf = [0u8; 8];
    // SAFETY: reads at most 8 bytes into a local buffer; the fd is a
    // non-blocking eventfd, so this never blocks (EAGAIN when empty).
    unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
}

/// One call from Lua. Answered exactly once: by [`Task::respond`], or on
/// drop with an error (a panic or a shutdown never leaves Lua waiting).
pub struct Task(*mut c_void);
// SAFETY: tasks may be read and answered from any thread (runtime ABI).
unsafe impl Send for Task {}
// SAFETY: the request bytes are read-only until the answer.
unsafe impl Sync for Task {}

/// A task's handle kept to ask whether its caller still waits; any value
/// is safe to ask about (the core checks it), so it may outlive the task.
#[derive(Clone, Copy)]
pub struct TaskHandle(usize);

type CancelledFn = unsafe extern "C" fn(*mut c_void) -> c_int;

impl TaskHandle {
    /// Whether the caller stopped waiting (timed out, worker exiting) or
    /// the task was answered already. The core's function is looked up at
    /// run time (unit tests run without the core; a core without it
    /// cancels nothing).
    pub fn cancelled(self) -> bool {
        static F: OnceLock<Option<CancelledFn>> = OnceLock::new();
        let f = F.get_or_init(|| {
            // SAFETY: looking up a symbol by a NUL-terminated name; when
            // found it is the core's resty_ffi_task_cancelled, with this
            // signature.
            unsafe {
                let p = libc::dlsym(libc::RTLD_DEFAULT, c"resty_ffi_task_cancelled".as_ptr());
                (!p.is_null()).then(|| std::mem::transmute::<*mut c_void, CancelledFn>(p))
            }
        });
        match f {
            // SAFETY: the core takes any value here: it decodes handles
            // and answers -1 for anything that is not one.
            Some(f) => unsafe { f(self.0 as *mut c_void) != 0 },
            None => false,
        }
    }
}

impl Task {
    /// Its handle, for [`TaskHandle::cancelled`].
    pub fn handle(&self) -> TaskHandle {
        TaskHandle(self.0 as usize)
    }

    /// The request bytes, valid until the task is answered.
    pub fn request(&self) -> &[u8] {
        let mut len: c_int = 0;
        // SAFETY: the task is live (not answered: respond consumes self);
        // the core keeps the bytes valid and unchanged until the answer.
        unsafe {
            let p = ngx_http_lua_ffi_get_req(self.0, &mut len);
            if p.is_null() || len <= 0 {
                &[]
            } else {
                std::slice::from_raw_parts(p.cast::<u8>(), len as usize)
            }
        }
    }

    /// Offers one chunk of a streamed answer (the task came from Lua's
    /// `rt:__stream`), never blocking.
    pub fn try_chunk(&self, data: &[u8]) -> Chunk {
        // SAFETY: the task is live (not answered: respond consumes self);
        // data is readable for its length; the core copies it.
        match unsafe {
            resty_ffi_try_respond_chunk(self.0, data.as_ptr().cast(), data.len() as c_int)
        } {
            0 => Chunk::Taken,
            2 => Chunk::Full,
            _ => Chunk::Gone,
        }
    }

    /// Answers with `rc` and `body` (None: a NULL answer, Lua's nil).
    pub fn respond(mut self, rc: i32, body: Option<&[u8]>) {
        let t = std::mem::replace(&mut self.0, std::ptr::null_mut());
        answer(t, rc, body);
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // INTERNAL, in the body shape of a status (no metadata, no details)
            answer(
                self.0,
                tonic::Code::Internal as i32,
                Some(b"{}\n\nffi_grpc: the call was dropped before it was answered (runtime panic or unload)"),
            );
        }
    }
}

fn answer(task: *mut c_void, rc: i32, body: Option<&[u8]>) {
    let (rsp, len) = match body {
        Some(b) => (malloc_copy(b), b.len() as c_int),
        None => (std::ptr::null_mut(), 0),
    };
    // SAFETY: task came from the queue and is answered once (Task's
    // pointer is taken or the Task dropped); rsp is malloc()ed, and
    // NUL-terminated so that len 0 (empty answer) is a valid C string.
    unsafe { ngx_http_lua_ffi_respond(task, rc, rsp, len) }
}

fn malloc_copy(bytes: &[u8]) -> *mut c_char {
    // SAFETY: a fresh allocation of len + 1 bytes, written within bounds;
    // the core frees it with free().
    unsafe {
        let p = libc::malloc(bytes.len() + 1) as *mut u8;
        if !p.is_null() {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
            *p.add(bytes.len()) = 0;
        }
        p.cast()
    }
}

fn guarded<F: FnOnce() -> c_int>(what: &str, f: F) -> c_int {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        eprintln!("ffi_grpc: {what} panicked");
        -2
    })
}

/// Copies `msg` into the caller's buffer, NUL-terminated and truncated.
fn write_err(msg: &str, buf: *mut c_char, cap: c_int) {
    if buf.is_null() || cap <= 0 {
        return;
    }
    let n = msg.len().min(cap as usize - 1);
    // SAFETY: the caller gave a buffer of `cap` bytes; we write n + 1 <= cap.
    unsafe {
        std::ptr::copy_nonoverlapping(msg.as_ptr(), buf.cast::<u8>(), n);
        *buf.add(n) = 0;
    }
}

/// # Safety
/// `p` is NULL or points to `len` readable bytes (`len < 0`: NUL-terminated).
// SAFETY: unsafe only for that contract; its callers pass the cfg and the
// .proto text Lua handed over through FFI, alive during their call.
unsafe fn bytes<'a>(p: *const c_char, len: c_int) -> &'a [u8] {
    if p.is_null() {
        return &[];
    }
    if len < 0 {
        // SAFETY: the caller promises a NUL-terminated string.
        return unsafe { CStr::from_ptr(p) }.to_bytes();
    }
    // SAFETY: the caller promises `len` readable bytes.
    unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len as usize) }
}

/// The runtime ABI's entry: starts the tokio runtime (once per process)
/// and a loop serving this queue. cfg: `threads=N` tokio worker threads
/// (first init wins; default 1).
///
/// # Safety
/// `cfg` is NULL or NUL-terminated; `tq` is a task queue of the core.
#[no_mangle]
pub unsafe extern "C" fn libffi_init(cfg: *mut c_char, tq: *mut c_void) -> c_int {
    // SAFETY: per the ABI, cfg is NULL or NUL-terminated during this call.
    let cfg = String::from_utf8_lossy(unsafe { bytes(cfg, -1) }).into_owned();
    let queue = Queue(tq);
    guarded("libffi_init", move || {
        match crate::runtime::start(&cfg, queue) {
            Ok(()) => 0,
            Err(e) => {
                let msg =
                    std::ffi::CString::new(e.to_string().replace('\0', " ")).unwrap_or_default();
                // SAFETY: msg is NUL-terminated; called from libffi_init's thread.
                unsafe { resty_ffi_init_error(msg.as_ptr()) };
                1
            }
        }
    })
}

/// Compiles a .proto into this process's descriptor pool. `is_file` 1:
/// `src` is a path; 0: `src` is the source itself. `includes` is a
/// ':'-separated list of import folders (may be NULL). Returns 0, or -1 with
/// the reason in `err`. Never blocks on the network; callable in any phase.
/// The compiler runs on a thread of its own (see protos.rs); this waits for
/// it, so a large file holds the caller for as long as it compiles (phases
/// that can yield send a `P` task instead).
///
/// # Safety
/// `src` has `src_len` bytes; `includes` is NULL or NUL-terminated; `err`
/// has `err_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_grpc_load(
    src: *const c_char,
    src_len: c_int,
    is_file: c_int,
    includes: *const c_char,
    err: *mut c_char,
    err_len: c_int,
) -> c_int {
    // SAFETY: per this function's contract.
    let (src, includes) = unsafe { (bytes(src, src_len), bytes(includes, -1)) };
    guarded("resty_ffi_grpc_load", || {
        let load = crate::protos::Load {
            src: String::from_utf8_lossy(src).into_owned(),
            is_file: is_file != 0,
            includes: crate::protos::includes(&String::from_utf8_lossy(includes)),
        };
        match crate::protos::compile(load) {
            Ok(()) => 0,
            Err(e) => {
                write_err(&e.to_string(), err, err_len);
                -1
            }
        }
    })
}

/// Drops a connection handle (the channel stays cached for reuse).
/// Returns 1 if it was open, 0 if already closed.
#[no_mangle]
pub extern "C" fn resty_ffi_grpc_conn_close(id: f64) -> c_int {
    guarded("resty_ffi_grpc_conn_close", || {
        crate::conn::close(id as u64) as c_int
    })
}

/// Closes a stream: stops sending and cancels the call. Returns 1 if it
/// was open, 0 if already closed.
#[no_mangle]
pub extern "C" fn resty_ffi_grpc_stream_close(id: f64) -> c_int {
    guarded("resty_ffi_grpc_stream_close", || {
        crate::stream::close(id as u64) as c_int
    })
}

/// A fresh call id for a unary call or a new stream (see cancel.rs);
/// 0 if this panicked (a call that cannot be cancelled).
#[no_mangle]
pub extern "C" fn resty_ffi_grpc_call_id() -> f64 {
    catch_unwind(crate::cancel::new_id).unwrap_or(0) as f64
}

/// The Lua side gave up on call `id`: end it (RST_STREAM to the server),
/// close its stream, or make it end as it starts. Never blocks; callable
/// from a GC finalizer in any phase.
#[no_mangle]
pub extern "C" fn resty_ffi_grpc_cancel(id: f64) -> c_int {
    guarded("resty_ffi_grpc_cancel", || {
        crate::cancel::cancel(id as u64);
        0
    })
}

/// How many connection handles and streams are open in this process
/// (tests check that dropped ones are cleaned up).
///
/// # Safety
/// `conns` and `streams` point to writable ints.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_grpc_open_count(
    conns: *mut c_int,
    streams: *mut c_int,
) -> c_int {
    let (c, s) = match catch_unwind(|| (crate::conn::count(), crate::stream::count())) {
        Ok(v) => v,
        Err(_) => return -2,
    };
    // SAFETY: the caller gives two writable ints.
    unsafe {
        *conns = c as c_int;
        *streams = s as c_int;
    }
    0
}

/// How often the queue loops of this process looked for the next call
/// right after answering the last one in flight, and how often they found
/// it then (taken while spinning, without a wake-up): `out[0]`, `out[1]`.
///
/// # Safety
/// `out` points to two writable u64s.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_grpc_loop_stats(out: *mut u64) -> c_int {
    let Ok((looks, taken)) = catch_unwind(crate::runtime::loop_stats) else {
        return -2;
    };
    // SAFETY: the caller gives two writable u64s.
    unsafe {
        *out = looks;
        *out.add(1) = taken;
    }
    0
}
