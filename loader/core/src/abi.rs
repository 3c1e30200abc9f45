//! The C ABI: every function the outside world calls.
//!
//! Two audiences:
//! - runtimes call the three lua-resty-ffi functions
//!   (`ngx_http_lua_ffi_task_poll`, `ngx_http_lua_ffi_get_req`,
//!   `ngx_http_lua_ffi_respond`) with exactly its semantics, plus optional
//!   `resty_ffi_task_*` extensions (non-blocking and batch polling);
//! - the Lua layer calls the `resty_ffi_*` functions through LuaJIT FFI.
//!
//! Every body runs inside [`guard`]: a panic becomes an error value and a
//! line on stderr (nginx's error.log), never an unwind into C.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use crate::completion::Channel;
use crate::queue::TaskQueue;
use crate::runtime::{self, Options, Runtime};
use crate::stats::Outcome;
use crate::stream::Offer;
use crate::task::{Response, TaskPtr};

fn guard<R>(name: &str, on_panic: R, body: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(r) => r,
        Err(e) => {
            let msg = e
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| e.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            crate::log::error(&format!("resty_ffi: panic in {name}: {msg}"));
            on_panic
        }
    }
}

/// Copies `msg` into the caller's buffer (NUL-terminated, truncated).
fn write_str(buf: *mut c_char, cap: c_int, msg: &str) -> c_int {
    if buf.is_null() || cap <= 0 {
        return 0;
    }
    let n = msg.len().min(cap as usize - 1);
    // SAFETY: the caller gave `cap` writable bytes at `buf`; we write n + 1.
    unsafe {
        std::ptr::copy_nonoverlapping(msg.as_ptr(), buf.cast(), n);
        *buf.add(n) = 0;
    }
    n as c_int
}

fn queue<'a>(tq: *mut c_void) -> Option<&'a TaskQueue> {
    // SAFETY: tq was handed to libffi_init by Runtime::load and the queue
    // is never freed (see runtime.rs), so any such pointer stays valid.
    unsafe { (tq as *const TaskQueue).as_ref() }
}

fn runtime(rt: *mut c_void) -> Option<&'static Runtime> {
    // SAFETY: rt comes from resty_ffi_runtime_load, whose runtimes are
    // never freed (runtime.rs).
    unsafe { (rt as *const Runtime).as_ref() }
}

fn channel(ch: *mut c_void) -> Option<&'static Channel> {
    // SAFETY: ch comes from resty_ffi_channel_open, whose channels are
    // never freed (completion.rs).
    unsafe { (ch as *const Channel).as_ref() }
}

fn opt_duration_us(us: c_int, default: Duration) -> Duration {
    if us < 0 {
        default
    } else {
        Duration::from_micros(us as u64)
    }
}

// ---- the lua-resty-ffi runtime ABI --------------------------------------

/// Blocks until a task is queued; NULL once the queue is finished and empty.
///
/// # Safety
/// Pointer arguments must be valid as described, per the C ABI.
#[no_mangle]
pub unsafe extern "C" fn ngx_http_lua_ffi_task_poll(tq: *mut c_void) -> *mut c_void {
    guard("ngx_http_lua_ffi_task_poll", std::ptr::null_mut(), || {
        queue(tq)
            .and_then(|q| q.poll())
            .map_or(std::ptr::null_mut(), TaskPtr::handle)
    })
}

/// The request bytes of a task (NULL for a nil request, or for a task that
/// is not waiting for an answer); `len` may be NULL. The bytes are read-only
/// and valid until the task is answered.
///
/// # Safety
/// Pointer arguments must be valid as described, per the C ABI.
#[no_mangle]
pub unsafe extern "C" fn ngx_http_lua_ffi_get_req(
    task: *mut c_void,
    len: *mut c_int,
) -> *mut c_char {
    guard("ngx_http_lua_ffi_get_req", std::ptr::null_mut(), || {
        let (req, req_len) = TaskPtr::request_of(task).unwrap_or((std::ptr::null(), 0));
        if !len.is_null() {
            // SAFETY: the runtime passed a writable int.
            unsafe { *len = req_len };
        }
        req as *mut c_char
    })
}

/// Answers a task. `rsp` must come from malloc() (or be NULL) and is ours
/// from now on; `rsp_len` 0 with `rsp` set means NUL-terminated; a negative
/// `rsp_len`, or one beyond the malloc()ed size, makes the call fail with a
/// clear error. Only the first answer to a task counts: a second one, one
/// after unload or to a made-up pointer is freed, counted and logged.
///
/// # Safety
/// Pointer arguments must be valid as described, per the C ABI.
#[no_mangle]
pub unsafe extern "C" fn ngx_http_lua_ffi_respond(
    task: *mut c_void,
    rc: c_int,
    rsp: *mut c_char,
    rsp_len: c_int,
) {
    guard("ngx_http_lua_ffi_respond", (), || {
        TaskPtr::respond_to(task, rc, rsp, rsp_len);
    })
}

// ---- extensions for runtimes --------------------------------------------

/// Like `ngx_http_lua_ffi_task_poll` but never blocks: NULL when no task is
/// queued right now (see `resty_ffi_queue_finished` to tell why).
///
/// # Safety
/// Pointer arguments must be valid as described, per the C ABI.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_task_try_poll(tq: *mut c_void) -> *mut c_void {
    guard("resty_ffi_task_try_poll", std::ptr::null_mut(), || {
        queue(tq)
            .and_then(|q| q.try_poll())
            .map_or(std::ptr::null_mut(), TaskPtr::handle)
    })
}

/// Like `resty_ffi_task_try_poll`, but first spins within the queue's
/// poll budget (as `ngx_http_lua_ffi_task_poll` does before it blocks),
/// counted as a spinning poller so the caller spins for the answer. Never
/// blocks longer than the budget: for runtimes that run an event loop and
/// wait on `resty_ffi_queue_fd` once this returns NULL.
///
/// # Safety
/// Pointer arguments must be valid as described, per the C ABI.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_task_poll_spin(tq: *mut c_void) -> *mut c_void {
    guard("resty_ffi_task_poll_spin", std::ptr::null_mut(), || {
        queue(tq)
            .and_then(|q| q.poll_spin())
            .map_or(std::ptr::null_mut(), TaskPtr::handle)
    })
}

/// Blocks for one task, then takes up to `max - 1` more that are already
/// queued. Returns how many were written to `out`; 0 means finished.
///
/// # Safety
/// Pointer arguments must be valid as described, per the C ABI.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_task_poll_batch(
    tq: *mut c_void,
    out: *mut *mut c_void,
    max: c_int,
) -> c_int {
    guard("resty_ffi_task_poll_batch", 0, || {
        let (Some(q), false, true) = (queue(tq), out.is_null(), max > 0) else {
            return 0;
        };
        // SAFETY: the caller gave `max` writable slots at `out`.
        let out = unsafe { std::slice::from_raw_parts_mut(out, max as usize) };
        let Some(first) = q.poll() else { return 0 };
        out[0] = first.handle();
        let mut n = 1;
        while n < out.len() {
            match q.try_poll() {
                Some(t) => {
                    out[n] = t.handle();
                    n += 1;
                }
                None => break,
            }
        }
        n as c_int
    })
}

/// The queue's readiness fd (an eventfd), for runtimes with an event loop;
/// -1 on error. Wait for it to be readable, read it, drain the queue with
/// `resty_ffi_task_try_poll`, then `resty_ffi_queue_arm` before waiting
/// again.
///
/// # Safety
/// `tq` is a queue handed to `libffi_init`.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_queue_fd(tq: *mut c_void) -> c_int {
    guard("resty_ffi_queue_fd", -1, || {
        queue(tq).map_or(-1, |q| match q.ready.fd() {
            Ok(fd) => fd,
            Err(e) => {
                crate::log::error(&format!("resty_ffi: {e}"));
                -1
            }
        })
    })
}

/// Arms the readiness fd: returns the number of tasks waiting (0: wait on
/// the fd now, a post will make it readable), or -1 when the queue is
/// finished and drained (stop).
///
/// # Safety
/// `tq` is a queue handed to `libffi_init`.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_queue_arm(tq: *mut c_void) -> c_int {
    guard("resty_ffi_queue_arm", -1, || {
        queue(tq).map_or(-1, |q| match q.arm() {
            Some(n) => n.min(c_int::MAX as usize) as c_int,
            None => -1,
        })
    })
}

/// 1 once the queue is finished and drained (poll would return NULL).
///
/// # Safety
/// Pointer arguments must be valid as described, per the C ABI.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_queue_finished(tq: *mut c_void) -> c_int {
    guard("resty_ffi_queue_finished", 1, || {
        queue(tq).is_none_or(|q| q.is_finished() && q.is_empty()) as c_int
    })
}

// ---- streaming answers (see stream.rs) -----------------------------------

fn offer(task: *mut c_void, data: *const c_char, len: c_int, block: bool) -> c_int {
    if len < 0 || (data.is_null() && len > 0) {
        return -1;
    }
    let bytes = if len == 0 {
        &[][..]
    } else {
        // SAFETY: the runtime passes `len` readable bytes at `data`; they
        // are copied before this returns.
        unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len as usize) }
    };
    match TaskPtr::offer_chunk(task, bytes, block) {
        Offer::Taken => 0,
        Offer::Cancelled => 1,
        Offer::Full => {
            // make sure the space fd exists before the reader can signal it
            if let Some((q, _)) = TaskPtr::queue_of(task) {
                let _ = q.space.fd();
            }
            2
        }
        Offer::Stale => -1,
    }
}

/// Sends one chunk of a task's answer; `data` is copied. Returns 0 when
/// taken, 1 when nobody waits any more (the stream was closed, the call
/// timed out or its request ended: stop producing and end the task with
/// `ngx_http_lua_ffi_respond` as usual), -1 for a bad handle (answered
/// already, unknown) or bad arguments (negative `len`, NULL `data` with
/// `len` > 0). Blocks while the stream holds more unread data than its
/// window, until the reader catches up or goes away. To a plain call (not
/// `rt:__stream`) chunks never block: they are joined with the final
/// answer into one.
///
/// # Safety
/// `data` must point to `len` readable bytes (or be NULL with `len` 0).
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_respond_chunk(
    task: *mut c_void,
    data: *const c_char,
    len: c_int,
) -> c_int {
    guard("resty_ffi_respond_chunk", -1, || {
        offer(task, data, len, true)
    })
}

/// Like `resty_ffi_respond_chunk`, never blocking, for event loops: 2 when
/// the window is full and the chunk was NOT taken. Then wait until the
/// queue's space fd (`resty_ffi_queue_space_fd`) is readable, read it, and
/// offer the chunk again (readiness may be spurious, and covers every
/// stream of the queue).
///
/// # Safety
/// `data` must point to `len` readable bytes (or be NULL with `len` 0).
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_try_respond_chunk(
    task: *mut c_void,
    data: *const c_char,
    len: c_int,
) -> c_int {
    guard("resty_ffi_try_respond_chunk", -1, || {
        offer(task, data, len, false)
    })
}

/// 1 once the caller no longer waits for the task's answer (closed, timed
/// out, request gone, or already answered), 0 while it does, -1 for a
/// value that is no task handle at all.
///
/// # Safety
/// Any value may be passed; only handles are looked at.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_task_cancelled(task: *mut c_void) -> c_int {
    guard("resty_ffi_task_cancelled", 1, || {
        TaskPtr::cancelled_of(task).map_or(-1, |c| c as c_int)
    })
}

/// An eventfd of the queue that becomes readable after a stream of it made
/// room in its window or a task of it (stream or plain call) was
/// cancelled: what an event-loop producer waits for after
/// `resty_ffi_try_respond_chunk` answered 2, and how a loop learns that a
/// call it serves was given up. Created on first request: until then a
/// cancellation writes nothing. -1 on error.
///
/// # Safety
/// `tq` is a queue handed to `libffi_init`.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_queue_space_fd(tq: *mut c_void) -> c_int {
    guard("resty_ffi_queue_space_fd", -1, || {
        queue(tq).map_or(-1, |q| match q.space.fd() {
            Ok(fd) => fd,
            Err(e) => {
                crate::log::error(&format!("resty_ffi: {e}"));
                -1
            }
        })
    })
}

/// Called by a runtime from inside its `libffi_init`, on the same thread,
/// before returning non-zero: `msg` becomes part of the error `load`
/// returns to Lua.
///
/// # Safety
/// `msg` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_init_error(msg: *const c_char) {
    guard("resty_ffi_init_error", (), || {
        if !msg.is_null() {
            // SAFETY: per the doc above.
            let msg = unsafe { CStr::from_ptr(msg) }
                .to_string_lossy()
                .into_owned();
            crate::runtime::set_init_error(msg);
        }
    })
}

// ---- the Lua layer ------------------------------------------------------

/// The runtime of this process loaded under `key` (`lib & cfg`), loading
/// the library and starting it first if needed. On failure returns NULL
/// with a message in `err`. `cfg_len < 0` passes a NULL cfg; spin budgets < 0 take
/// the defaults.
///
/// # Safety
/// Pointer arguments must be valid as described, per the C ABI.
#[no_mangle]
#[allow(clippy::too_many_arguments)] // mirrors the Lua opts table, one field each
pub unsafe extern "C" fn resty_ffi_runtime_load(
    key: *const c_char,
    key_len: c_int,
    path: *const c_char,
    cfg: *const c_char,
    cfg_len: c_int,
    max_queue: c_int,
    is_global: c_int,
    caller_spin_us: c_int,
    poll_spin_us: c_int,
    err: *mut c_char,
    err_len: c_int,
) -> *mut c_void {
    guard("resty_ffi_runtime_load", std::ptr::null_mut(), || {
        if path.is_null() || key.is_null() || key_len < 0 {
            write_str(err, err_len, "bad argument: library path or key is NULL");
            return std::ptr::null_mut();
        }
        // SAFETY: Lua passes key_len readable bytes.
        let key = unsafe { std::slice::from_raw_parts(key.cast::<u8>(), key_len as usize) };
        // SAFETY: Lua passes a NUL-terminated string.
        let path = unsafe { CStr::from_ptr(path) }.to_string_lossy();
        let cfg = if cfg.is_null() || cfg_len < 0 {
            None
        } else {
            // SAFETY: Lua passes cfg_len readable bytes.
            Some(unsafe { std::slice::from_raw_parts(cfg.cast::<u8>(), cfg_len as usize) })
        };
        let defaults = Options::default();
        let opts = Options {
            max_queue: if max_queue > 0 {
                max_queue as usize
            } else {
                defaults.max_queue
            },
            is_global: is_global != 0,
            caller_spin: opt_duration_us(caller_spin_us, defaults.caller_spin),
            poll_spin: opt_duration_us(poll_spin_us, defaults.poll_spin),
        };
        match runtime::load_shared(key, &path, cfg, &opts) {
            Ok(rt) => (rt as *const Runtime).cast_mut().cast(),
            Err(e) => {
                write_str(err, err_len, &e.to_string());
                std::ptr::null_mut()
            }
        }
    })
}

/// Finishes the runtime's queue. Queued tasks are still served; the
/// runtime's pollers then get NULL. The handle stays valid (posts to it
/// fail with "unloaded"); the next load of its key starts a fresh runtime.
///
/// # Safety
/// Pointer arguments must be valid as described, per the C ABI.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_runtime_unload(rt: *mut c_void) {
    guard("resty_ffi_runtime_unload", (), || {
        if let Some(rt) = runtime(rt) {
            rt.unload();
        }
    })
}

/// Tasks waiting in the runtime's queue.
///
/// # Safety
/// Pointer arguments must be valid as described, per the C ABI.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_runtime_queue_len(rt: *mut c_void) -> c_int {
    guard("resty_ffi_runtime_queue_len", 0, || {
        runtime(rt).map_or(0, |r| r.queue.len() as c_int)
    })
}

/// Posts a call to runtime `rt` for the Lua VM of channel `ch`; returns
/// the task (the Lua side's pointer) or NULL with `*err` set to 1 (queue
/// full), 2 (unloaded), 3 (bad argument) or 4 (too many calls in flight in
/// this process). The request bytes are borrowed: the caller keeps them
/// alive until the task is freed.
///
/// # Safety
/// Pointer arguments must be valid as described, per the C ABI.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_post(
    rt: *mut c_void,
    ch: *mut c_void,
    req: *const c_char,
    len: c_int,
    id: f64,
    err: *mut c_int,
) -> *mut c_void {
    guard("resty_ffi_post", std::ptr::null_mut(), || {
        post(rt, ch, req, len, id, Post::Now, err)
    })
}

/// Like `resty_ffi_post`, but a sleeping runtime thread is not woken for
/// the task until `resty_ffi_runtime_flush(rt)`: a caller under load (other
/// calls parked) posts every call of one event-loop cycle this way and
/// flushes once, so a batch costs one wake-up instead of one per call, and
/// runtime threads sleep between batches instead of spinning. The caller
/// must flush before the task can be answered by a sleeping runtime; it
/// then waits with `resty_ffi_wait(task, 0)` as for any parked call.
///
/// # Safety
/// Pointer arguments must be valid as described, per the C ABI.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_post_deferred(
    rt: *mut c_void,
    ch: *mut c_void,
    req: *const c_char,
    len: c_int,
    id: f64,
    err: *mut c_int,
) -> *mut c_void {
    guard("resty_ffi_post_deferred", std::ptr::null_mut(), || {
        post(rt, ch, req, len, id, Post::Deferred, err)
    })
}

/// Wakes runtime `rt`'s sleeping threads for the tasks
/// `resty_ffi_post_deferred` queued. Cheap when there is nothing to do.
///
/// # Safety
/// Pointer arguments must be valid as described, per the C ABI.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_runtime_flush(rt: *mut c_void) {
    guard("resty_ffi_runtime_flush", (), || {
        if let Some(rt) = runtime(rt) {
            rt.queue.flush();
        }
    })
}

/// Like `resty_ffi_post`, for a stream read chunk by chunk with
/// `resty_ffi_stream_next`: the runtime may get `window_bytes` unread bytes
/// or `window_chunks` unread chunks ahead of the reader (values below 1
/// take the defaults, 1 MiB and 64). The task is parked from the start:
/// chunk notices and the final answer come through `resty_ffi_drain`.
///
/// # Safety
/// Pointer arguments must be valid as described, per the C ABI.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_post_stream(
    rt: *mut c_void,
    ch: *mut c_void,
    req: *const c_char,
    len: c_int,
    id: f64,
    window_bytes: c_int,
    window_chunks: c_int,
    err: *mut c_int,
) -> *mut c_void {
    guard("resty_ffi_post_stream", std::ptr::null_mut(), || {
        let or = |v: c_int, d: usize| if v < 1 { d } else { v as usize };
        let window = (
            or(window_bytes, crate::stream::WINDOW_BYTES),
            or(window_chunks, crate::stream::WINDOW_CHUNKS),
        );
        post(rt, ch, req, len, id, Post::Stream(window), err)
    })
}

/// How a task is posted.
enum Post {
    /// A call; a sleeping runtime thread is woken for it now.
    Now,
    /// A call whose wake-up waits for `resty_ffi_runtime_flush`.
    Deferred,
    /// A stream with its window (bytes, chunks).
    Stream((usize, usize)),
}

fn post(
    rt: *mut c_void,
    ch: *mut c_void,
    req: *const c_char,
    len: c_int,
    id: f64,
    how: Post,
    err: *mut c_int,
) -> *mut c_void {
    let set_err = |code: c_int| {
        if !err.is_null() {
            // SAFETY: Lua passes a writable int.
            unsafe { *err = code };
        }
    };
    let Some(rt) = runtime(rt) else {
        set_err(2);
        return std::ptr::null_mut();
    };
    let Some(ch) = channel(ch) else {
        set_err(3);
        return std::ptr::null_mut();
    };
    let window = match how {
        Post::Stream(w) => Some(w),
        _ => None,
    };
    let Some(task) = TaskPtr::new(&rt.queue, Some(ch), id, req.cast(), len, window) else {
        crate::stats::refused();
        rt.queue.stats.refused();
        set_err(4);
        return std::ptr::null_mut();
    };
    let posted = if matches!(how, Post::Deferred) {
        crate::stats::deferred();
        rt.queue.post_deferred(task).map(|()| false)
    } else {
        rt.queue.post(task)
    };
    match posted {
        Ok(spinning) => {
            crate::stats::posted();
            task.set_poller_spinning(spinning);
            task.as_raw()
        }
        Err(e) => {
            crate::stats::refused();
            rt.queue.stats.refused();
            task.free();
            set_err(e.post_code());
            std::ptr::null_mut()
        }
    }
}

/// Waits for a just-posted task: 1 when answered (read it, then free it),
/// 0 when parked (its answer will come through `resty_ffi_drain`).
/// `may_spin` 0 parks at once; otherwise the task's queue decides how long
/// to spin.
///
/// # Safety
/// Pointer arguments must be valid as described, per the C ABI.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_wait(task: *mut c_void, may_spin: c_int) -> c_int {
    guard("resty_ffi_wait", 0, || {
        let Some(task) = TaskPtr::from_raw(task) else {
            return 0;
        };
        let answered = task.wait(may_spin != 0);
        if answered {
            crate::stats::answered_spinning();
        } else {
            crate::stats::parked();
        }
        answered as c_int
    })
}

/// The answer of a finished task: returns rc, sets `*rsp` (may be NULL) and
/// `*len`. The bytes live until `resty_ffi_task_free`. An answer that
/// breaks the ABI sets `*len` to -1 and `*rsp` to a static message.
///
/// # Safety
/// Pointer arguments must be valid as described, per the C ABI.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_task_result(
    task: *mut c_void,
    rsp: *mut *const c_char,
    len: *mut c_int,
) -> c_int {
    guard("resty_ffi_task_result", -1, || {
        let Some(task) = TaskPtr::from_raw(task) else {
            return -1;
        };
        let (rc, p, n) = match task.response() {
            Response::Ok { rc, rsp, len } => (rc, rsp, len.min(c_int::MAX as usize) as c_int),
            Response::Bad(msg) => (-1, msg.as_ptr(), -1),
        };
        // SAFETY: Lua passes writable out-parameters.
        unsafe {
            *rsp = p;
            *len = n;
        }
        rc
    })
}

/// The id the caller gave `resty_ffi_post`.
///
/// # Safety
/// Pointer arguments must be valid as described, per the C ABI.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_task_id(task: *mut c_void) -> f64 {
    guard("resty_ffi_task_id", -1.0, || {
        TaskPtr::from_raw(task).map_or(-1.0, TaskPtr::id)
    })
}

/// Frees a finished task and its response, counting the call in its
/// runtime's stats as `outcome`: 0 ok, 1 error, 2 a late answer to a call
/// that timed out (counted when it timed out).
///
/// # Safety
/// Pointer arguments must be valid as described, per the C ABI.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_task_free(task: *mut c_void, outcome: c_int) {
    guard("resty_ffi_task_free", (), || {
        if let Some(t) = TaskPtr::from_raw(task) {
            t.free_as(Some(match outcome {
                0 => Outcome::Ok,
                1 => Outcome::Error,
                _ => Outcome::Late,
            }));
        }
    })
}

/// Takes up to `max` chunks of a stream into `rsp[i]` / `len[i]` (valid
/// until the next call on this task); returns how many. 0 when none is
/// queued now: a notice comes through `resty_ffi_drain` with the next
/// chunk or the final answer.
///
/// # Safety
/// `rsp` and `len` have room for `max` entries, per the C ABI.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_stream_take(
    task: *mut c_void,
    rsp: *mut *const c_char,
    len: *mut c_int,
    max: c_int,
) -> c_int {
    guard("resty_ffi_stream_take", 0, || {
        let Some(task) = TaskPtr::from_raw(task) else {
            return 0;
        };
        if rsp.is_null() || len.is_null() || max <= 0 {
            return 0;
        }
        let mut got = [(std::ptr::null::<u8>(), 0usize); 64];
        let want = (max as usize).min(got.len());
        let n = task.take_chunks(&mut got[..want]);
        // SAFETY: Lua passes arrays of `max` >= n entries.
        let (rsp, len) = unsafe {
            (
                std::slice::from_raw_parts_mut(rsp, n),
                std::slice::from_raw_parts_mut(len, n),
            )
        };
        for (i, (p, l)) in got[..n].iter().enumerate() {
            rsp[i] = p.cast();
            len[i] = (*l).min(c_int::MAX as usize) as c_int;
        }
        n as c_int
    })
}

/// The caller stopped waiting for a task (stream closed, call timed out):
/// its queued chunks are freed and the runtime learns it from its next
/// chunk or `resty_ffi_task_cancelled`. The task is still freed by its
/// final answer, as a timed-out call's is. Idempotent.
///
/// # Safety
/// Pointer arguments must be valid as described, per the C ABI.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_task_cancel(task: *mut c_void) {
    guard("resty_ffi_task_cancel", (), || {
        if let Some(t) = TaskPtr::from_raw(task) {
            t.cancel();
        }
    })
}

/// 1 when a pointer from `resty_ffi_drain` is a stream's chunk notice, 0
/// when it is a final answer.
#[no_mangle]
pub extern "C" fn resty_ffi_task_is_notice(task: *mut c_void) -> c_int {
    guard("resty_ffi_task_is_notice", 0, || {
        TaskPtr::is_notice(task) as c_int
    })
}

/// Counts a call of runtime `rt` that timed out.
///
/// # Safety
/// `rt` comes from `resty_ffi_runtime_load`.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_runtime_timed_out(rt: *mut c_void) {
    guard("resty_ffi_runtime_timed_out", (), || {
        if let Some(r) = runtime(rt) {
            r.queue.stats.timed_out();
        }
    })
}

/// Every runtime this process loaded (unloaded ones too, so counters never
/// go back): writes up to `max` into `out`, returns how many there are.
///
/// # Safety
/// `out` has `max` writable slots.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_runtimes(out: *mut *mut c_void, max: c_int) -> c_int {
    guard("resty_ffi_runtimes", 0, || {
        let all = runtime::all();
        if !out.is_null() && max > 0 {
            // SAFETY: per the doc above.
            let out = unsafe { std::slice::from_raw_parts_mut(out, max as usize) };
            for (o, rt) in out.iter_mut().zip(&all) {
                *o = (*rt as *const Runtime).cast_mut().cast();
            }
        }
        all.len().min(c_int::MAX as usize) as c_int
    })
}

/// Names a runtime for its metrics (default: its `lib & cfg` key).
///
/// # Safety
/// `rt` comes from `resty_ffi_runtime_load`; `name` has `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_runtime_set_name(
    rt: *mut c_void,
    name: *const c_char,
    len: c_int,
) {
    guard("resty_ffi_runtime_set_name", (), || {
        if let (Some(r), false, true) = (runtime(rt), name.is_null(), len >= 0) {
            // SAFETY: per the doc above.
            let bytes = unsafe { std::slice::from_raw_parts(name.cast::<u8>(), len as usize) };
            r.set_name(String::from_utf8_lossy(bytes).into_owned());
        }
    })
}

/// Writes the runtime's name into `buf`; returns its length (cut to fit),
/// and through `unloaded` whether it was unloaded.
///
/// # Safety
/// `rt` comes from `resty_ffi_runtime_load`; `buf` has `cap` bytes;
/// `unloaded` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_runtime_name(
    rt: *mut c_void,
    buf: *mut c_char,
    cap: c_int,
    unloaded: *mut c_int,
) -> c_int {
    guard("resty_ffi_runtime_name", 0, || {
        let Some(r) = runtime(rt) else { return 0 };
        if !unloaded.is_null() {
            // SAFETY: per the doc above.
            unsafe { *unloaded = r.queue.is_finished() as c_int };
        }
        write_str(buf, cap, &r.name())
    })
}

/// The runtime's counters (see `RuntimeStats::snapshot` for the order: ok,
/// error, timeout, refused, in_flight, parked, queue_len, latency sum ns,
/// latency count, then the histogram buckets' own counts); returns how
/// many were written.
///
/// # Safety
/// `rt` comes from `resty_ffi_runtime_load`; `out` has `max` slots.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_runtime_stats(
    rt: *mut c_void,
    out: *mut u64,
    max: c_int,
) -> c_int {
    guard("resty_ffi_runtime_stats", 0, || {
        let (Some(r), false, true) = (runtime(rt), out.is_null(), max > 0) else {
            return 0;
        };
        let snap = r.queue.stats.snapshot(r.queue.len());
        let n = snap.len().min(max as usize);
        // SAFETY: per the doc above.
        unsafe { std::ptr::copy_nonoverlapping(snap.as_ptr(), out, n) };
        n as c_int
    })
}

/// Latency histogram bucket bounds in ns (without the last, unbounded
/// one): writes up to `max`, returns how many there are.
///
/// # Safety
/// `out` has `max` writable slots.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_latency_buckets(out: *mut u64, max: c_int) -> c_int {
    guard("resty_ffi_latency_buckets", 0, || {
        let b = crate::stats::BUCKETS_NS;
        if !out.is_null() && max > 0 {
            let n = b.len().min(max as usize);
            // SAFETY: per the doc above.
            unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), out, n) };
        }
        b.len() as c_int
    })
}

/// Logs a line through nginx (`level`: 1 emerg ... 4 err, 5 warn, 6
/// notice, 7 info, 8 debug; `len` -1 for NUL-terminated). Callable from any
/// thread. nginx writes it at its level once the worker's dispatcher takes
/// it; lines below the `error_log` level are dropped here; past 4096 lines
/// (or 1 MiB) waiting, lines are dropped and counted.
///
/// # Safety
/// `msg` has `len` readable bytes, or is NUL-terminated when `len` is -1.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_log(level: c_int, msg: *const c_char, len: c_int) {
    guard("resty_ffi_log", (), || {
        if msg.is_null() {
            return;
        }
        // SAFETY: per the doc above.
        let bytes = unsafe {
            if len < 0 {
                CStr::from_ptr(msg).to_bytes()
            } else {
                std::slice::from_raw_parts(msg.cast::<u8>(), len as usize)
            }
        };
        crate::log::log(level, bytes);
    })
}

/// Makes channel `ch`'s dispatcher the writer of log lines; `filter` is
/// nginx's error_log level.
///
/// # Safety
/// `ch` comes from `resty_ffi_channel_open`.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_log_attach(ch: *mut c_void, filter: c_int) {
    guard("resty_ffi_log_attach", (), || {
        if let Some(ch) = channel(ch) {
            crate::log::attach(ch, filter);
        }
    })
}

/// Milliseconds until collapsed or dropped log lines are to be summed up
/// (the dispatcher wakes itself then and takes the summary lines), or -1
/// when nothing is owed.
#[no_mangle]
pub extern "C" fn resty_ffi_log_roll_ms() -> c_int {
    guard("resty_ffi_log_roll_ms", -1, || {
        crate::log::roll_in_ms().map_or(-1, |ms| ms.min(c_int::MAX as u64) as c_int)
    })
}

/// Sets nginx's error_log level: log lines above it are dropped at once.
#[no_mangle]
pub extern "C" fn resty_ffi_log_filter(filter: c_int) {
    guard("resty_ffi_log_filter", (), || {
        crate::log::set_filter(filter)
    })
}

/// Channel `ch`'s dispatcher stops writing log lines: from now on they go
/// to stderr (error.log) directly.
///
/// # Safety
/// `ch` comes from `resty_ffi_channel_open`.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_log_detach(ch: *mut c_void) {
    guard("resty_ffi_log_detach", (), || {
        if let Some(c) = channel(ch) {
            crate::log::detach(c);
        }
    })
}

/// Takes the next log line: copies it into `buf` (cut to `cap`), sets
/// `*level`, returns its length, or -1 when none waits.
///
/// # Safety
/// `buf` has `cap` writable bytes; `level` is writable.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_log_take(
    buf: *mut c_char,
    cap: c_int,
    level: *mut c_int,
) -> c_int {
    guard("resty_ffi_log_take", -1, || {
        let Some((l, msg)) = crate::log::take() else {
            return -1;
        };
        let n = msg.len().min(cap.max(0) as usize);
        // SAFETY: per the doc above.
        unsafe {
            std::ptr::copy_nonoverlapping(msg.as_ptr(), buf.cast::<u8>(), n);
            *level = l;
        }
        n as c_int
    })
}

/// Opens a completion channel for the calling Lua VM (one per VM; see
/// completion.rs). Close it with `resty_ffi_channel_close` when the VM is
/// collected.
#[no_mangle]
pub extern "C" fn resty_ffi_channel_open() -> *mut c_void {
    guard("resty_ffi_channel_open", std::ptr::null_mut(), || {
        (Channel::open() as *const Channel).cast_mut().cast()
    })
}

/// Closes a channel: answers waiting in it, and any that arrive later, are
/// freed by the core. Called once, when the VM that opened it is collected.
///
/// # Safety
/// `ch` comes from `resty_ffi_channel_open` and is not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_channel_close(ch: *mut c_void) {
    guard("resty_ffi_channel_close", (), || {
        if let Some(ch) = channel(ch) {
            ch.close();
        }
    })
}

/// How many Lua VMs this worker process has had, as channels tell: more
/// than one means `lua_code_cache off` (a VM per request).
///
/// # Safety
/// `ch` comes from `resty_ffi_channel_open`.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_channel_vms(ch: *mut c_void) -> c_int {
    guard("resty_ffi_channel_vms", 0, || {
        channel(ch).map_or(0, |c| c.vms().min(c_int::MAX as u64) as c_int)
    })
}

/// Moves up to `max` answered, parked tasks of channel `ch` into `out`;
/// returns how many.
///
/// # Safety
/// Pointer arguments must be valid as described, per the C ABI.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_drain(
    ch: *mut c_void,
    out: *mut *mut c_void,
    max: c_int,
) -> c_int {
    guard("resty_ffi_drain", 0, || {
        let Some(ch) = channel(ch) else { return 0 };
        if out.is_null() || max <= 0 {
            return 0;
        }
        // SAFETY: the caller gave `max` writable slots at `out`.
        let out = unsafe { std::slice::from_raw_parts_mut(out, max as usize) };
        ch.drain(out) as c_int
    })
}

/// Marks the channel's dispatcher asleep unless answers wait; returns how
/// many wait.
///
/// # Safety
/// `ch` comes from `resty_ffi_channel_open`.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_prepare_sleep(ch: *mut c_void) -> c_int {
    guard("resty_ffi_prepare_sleep", 1, || {
        channel(ch).map_or(1, |c| c.prepare_sleep().min(c_int::MAX as usize) as c_int)
    })
}

/// Creates the channel's wake-up socket; writes its path (or an error) to
/// `buf`. Returns the path length, or -1 on error.
///
/// # Safety
/// Pointer arguments must be valid as described, per the C ABI.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_wake_listen(
    ch: *mut c_void,
    buf: *mut c_char,
    cap: c_int,
) -> c_int {
    guard("resty_ffi_wake_listen", -1, || {
        let Some(ch) = channel(ch) else {
            write_str(buf, cap, "bad argument: no channel");
            return -1;
        };
        match ch.listen() {
            Ok(path) if (path.len() as c_int) < cap => write_str(buf, cap, &path),
            Ok(_) => {
                write_str(buf, cap, "wake socket path longer than buffer");
                -1
            }
            Err(e) => {
                write_str(buf, cap, &e.to_string());
                -1
            }
        }
    })
}

/// Accepts the dispatcher's connection (waits at most a second); 0 on
/// success, else -1 and `err`.
///
/// # Safety
/// Pointer arguments must be valid as described, per the C ABI.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_wake_accept(
    ch: *mut c_void,
    err: *mut c_char,
    cap: c_int,
) -> c_int {
    guard("resty_ffi_wake_accept", -1, || {
        match channel(ch).map(|c| c.accept()) {
            Some(Ok(())) => 0,
            Some(Err(e)) => {
                write_str(err, cap, &e.to_string());
                -1
            }
            None => {
                write_str(err, cap, "bad argument: no channel");
                -1
            }
        }
    })
}

/// Writes a wake byte to the channel (the worker-exit timer uses it to stop
/// the dispatcher).
///
/// # Safety
/// `ch` comes from `resty_ffi_channel_open`.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_wake(ch: *mut c_void) {
    guard("resty_ffi_wake", (), || {
        if let Some(c) = channel(ch) {
            c.wake();
        }
    })
}

/// Copies up to `max` process-wide counters into `out` (see stats.rs for
/// their order: posted, refused, answered_spinning, parked, drained, wakes,
/// stray_answers, log_lines_dropped, deferred, thread_wakeups, moved_off);
/// returns how many.
///
/// # Safety
/// `out` has `max` writable slots.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_stats(out: *mut u64, max: c_int) -> c_int {
    guard("resty_ffi_stats", 0, || {
        if out.is_null() || max <= 0 {
            return 0;
        }
        let snap = crate::stats::snapshot();
        let n = snap.len().min(max as usize);
        // SAFETY: per the doc above.
        unsafe { std::ptr::copy_nonoverlapping(snap.as_ptr(), out, n) };
        n as c_int
    })
}
