//! `resty_ffi`, the native Python module the loader gives every runtime.
//!
//! ```python
//! import resty_ffi
//! task = resty_ffi.poll(tq)          # blocks with the GIL released; None: finished
//! req = task.req                     # the request, bytes (None for a nil request)
//! task.respond(0, b"answer")         # rc, bytes | bytearray | memoryview | str | None
//! tasks = resty_ffi.poll_batch(tq)   # one blocking wait, then up to 63 queued more
//! task = resty_ffi.poll_spin(tq)     # never blocks beyond the poll spin; None: nothing came
//!
//! # streaming: chunks before the final answer
//! if task.respond_chunk(b"part") == 1:  # blocks (GIL released) while the window is full
//!     ...                               # 1: nobody waits any more, stop
//! task.try_respond_chunk(b"part")    # never blocks: 2 = window full, wait for
//!                                    # resty_ffi.queue_space_fd(tq), offer again
//! task.cancelled                     # True once nobody waits (closed, timed out, gone)
//! task.respond(0)                    # ends the stream
//! ```
//!
//! Guarantees: a task is answered exactly once (a second `respond` raises);
//! a task dropped unanswered (say, a runtime bug) is answered with rc 1 so
//! the nginx side is never left waiting. `tq` must be a queue the loader
//! handed to `init`: anything else raises instead of crashing the worker.

use std::cell::RefCell;
use std::sync::{Mutex, MutexGuard};

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView, PyString};

use crate::abi::{self, Chunk, Chunks, TaskRef};

thread_local! {
    /// The cfg address and text passed to the init being called right now.
    static INIT_CFG: RefCell<Option<(usize, String)>> = const { RefCell::new(None) };
}

fn check_queue(tq: usize) -> PyResult<()> {
    if abi::is_queue(tq) {
        Ok(())
    } else {
        Err(PyValueError::new_err(format!(
            "resty_ffi: {tq:#x} is not a task queue (pass the tq your init was given)"
        )))
    }
}

/// Runs `f` with `resty_ffi.cfg_string(addr)` answering `text`.
pub fn with_init_cfg<R>(cfg: Option<(usize, String)>, f: impl FnOnce() -> R) -> R {
    INIT_CFG.with(|c| *c.borrow_mut() = cfg);
    let r = f();
    INIT_CFG.with(|c| *c.borrow_mut() = None);
    r
}

/// One call from nginx, waiting for its answer.
#[pyclass(module = "resty_ffi", frozen)]
pub struct Task {
    inner: Mutex<Option<TaskRef>>,
}

impl Task {
    fn new(t: TaskRef) -> Task {
        Task {
            inner: Mutex::new(Some(t)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<TaskRef>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The task's streaming side, taken without keeping the lock (a
    /// blocked chunk must not hold up `respond` from another thread).
    fn chunks(&self) -> PyResult<Chunks> {
        self.lock()
            .as_ref()
            .map(TaskRef::chunks)
            .ok_or_else(|| PyRuntimeError::new_err("resty_ffi: the task is already answered"))
    }

    /// Offers `data` as the next chunk: first without blocking, with the
    /// GIL held (the common case costs no GIL hand-off); when the window is
    /// full and `block`, again blocking with the GIL released.
    fn offer(&self, py: Python<'_>, data: &Bound<'_, PyAny>, block: bool) -> PyResult<i32> {
        let chunks = self.chunks()?;
        let data = immutable_chunk(data)?;
        let bytes = chunk_bytes(&data)?;
        if bytes.len() > i32::MAX as usize {
            return Err(PyValueError::new_err("resty_ffi: chunk larger than 2 GiB"));
        }
        let mut got = chunks.offer(bytes, false);
        if got == Chunk::Full && block {
            got = py.allow_threads(|| chunks.offer(bytes, true));
        }
        match got {
            Chunk::Taken => Ok(0),
            Chunk::Cancelled => Ok(1),
            Chunk::Full => Ok(2),
            Chunk::Stale => Err(PyRuntimeError::new_err(
                "resty_ffi: the task is already answered",
            )),
        }
    }
}

/// A chunk as an immutable object (bytes or str), so its bytes may be read
/// with the GIL released: bytearray and memoryview are copied once.
fn immutable_chunk<'py>(data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    if data.is_instance_of::<PyBytes>() || data.is_instance_of::<PyString>() {
        Ok(data.clone())
    } else if let Ok(b) = data.downcast::<PyByteArray>() {
        Ok(PyBytes::new(data.py(), &b.to_vec()).into_any())
    } else if data.is_instance_of::<PyMemoryView>() {
        data.call_method0("tobytes")
    } else {
        Err(PyTypeError::new_err(format!(
            "resty_ffi: a chunk must be bytes, bytearray, memoryview or str, got {}",
            data.get_type().name()?
        )))
    }
}

/// The bytes of an [`immutable_chunk`] (str as UTF-8).
fn chunk_bytes<'a>(data: &'a Bound<'_, PyAny>) -> PyResult<&'a [u8]> {
    match data.downcast::<PyBytes>() {
        Ok(b) => Ok(b.as_bytes()),
        Err(_) => Ok(data.downcast::<PyString>()?.to_str()?.as_bytes()),
    }
}

/// Calls `f` with the bytes of a response, borrowed from the Python object
/// where it can be (bytes, str): the only copy is the core's malloc()ed
/// answer.
fn with_body<R>(rsp: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
    if let Ok(b) = rsp.downcast::<PyBytes>() {
        Ok(f(b.as_bytes()))
    } else if let Ok(s) = rsp.downcast::<PyString>() {
        Ok(f(s.to_str()?.as_bytes()))
    } else if let Ok(b) = rsp.downcast::<PyByteArray>() {
        Ok(f(&b.to_vec()))
    } else if rsp.is_instance_of::<PyMemoryView>() {
        let bytes = rsp.call_method0("tobytes")?;
        Ok(f(bytes.downcast::<PyBytes>()?.as_bytes()))
    } else {
        Err(PyTypeError::new_err(format!(
            "resty_ffi: a response must be bytes, bytearray, memoryview, str or None, got {}",
            rsp.get_type().name()?
        )))
    }
}

#[pymethods]
impl Task {
    /// The request bytes (None for a nil request from Lua).
    #[getter]
    fn req<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let guard = self.lock();
        let t = guard
            .as_ref()
            .ok_or_else(|| PyRuntimeError::new_err("resty_ffi: the task is already answered"))?;
        Ok(t.request().map(|r| PyBytes::new(py, r)))
    }

    /// Answers the call: `rc` 0 means ok; the body may be bytes-like, str
    /// (sent as UTF-8) or None.
    #[pyo3(signature = (rc = 0, rsp = None))]
    fn respond(&self, rc: i32, rsp: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let take = || {
            self.lock()
                .take()
                .ok_or_else(|| PyRuntimeError::new_err("resty_ffi: the task is already answered"))
        };
        match rsp {
            None => take()?.respond(rc, None),
            Some(rsp) => with_body(rsp, |body| {
                if body.len() > i32::MAX as usize {
                    return Err(PyValueError::new_err(
                        "resty_ffi: response larger than 2 GiB",
                    ));
                }
                take()?.respond(rc, Some(body));
                Ok(())
            })??,
        }
        Ok(())
    }

    /// Sends `data` (bytes, bytearray, memoryview or str) as the next chunk
    /// of the answer; the final `respond` ends it. Returns 0 when taken, 1
    /// when nobody waits any more (stop producing, then `respond`). Blocks,
    /// with the GIL released, while the stream's window is full (the reader
    /// is behind). For a plain call the chunks are joined with the final
    /// answer and this never blocks.
    fn respond_chunk(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<i32> {
        self.offer(py, data, true)
    }

    /// Like `respond_chunk`, never blocking, for event loops: 2 when the
    /// window is full and the chunk was not taken; wait until
    /// `resty_ffi.queue_space_fd(tq)` is readable, then offer it again.
    fn try_respond_chunk(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<i32> {
        self.offer(py, data, false)
    }

    /// True once nobody waits for the answer (the stream was closed, the
    /// call timed out, the request ended) or the task was answered.
    #[getter]
    fn cancelled(&self) -> bool {
        self.lock().as_ref().is_none_or(|t| t.chunks().cancelled())
    }

    /// True once `respond` was called.
    #[getter]
    fn answered(&self) -> bool {
        self.lock().is_none()
    }

    fn __repr__(&self) -> String {
        match self.lock().as_ref() {
            Some(t) => format!(
                "<resty_ffi.Task {} request bytes>",
                t.request().map_or(0, <[u8]>::len)
            ),
            None => "<resty_ffi.Task answered>".into(),
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        if let Some(t) = self.lock().take() {
            t.respond(
                1,
                Some(b"ffi_python3: the runtime dropped the task without answering it"),
            );
        }
    }
}

/// Blocks (GIL released) until a task arrives; None once the queue is
/// finished (after `rt:__unload()`): stop polling then.
#[pyfunction]
fn poll(py: Python<'_>, tq: usize) -> PyResult<Option<Task>> {
    check_queue(tq)?;
    Ok(py.allow_threads(|| abi::poll(tq)).map(Task::new))
}

/// Blocks (GIL released) for one task, then takes up to `max - 1` more that
/// are already queued; an empty list once the queue is finished.
#[pyfunction]
#[pyo3(signature = (tq, max = 64))]
fn poll_batch(py: Python<'_>, tq: usize, max: usize) -> PyResult<Vec<Task>> {
    check_queue(tq)?;
    let tasks = py.allow_threads(|| abi::poll_batch(tq, max));
    Ok(tasks.into_iter().map(Task::new).collect())
}

/// Never blocks: a task if one is queued right now, else None (see
/// `finished` to tell an empty queue from a finished one).
#[pyfunction]
fn try_poll(tq: usize) -> PyResult<Option<Task>> {
    check_queue(tq)?;
    Ok(abi::try_poll(tq).map(Task::new))
}

/// Never blocks beyond the queue's poll spin (ffi.load's `poll_spin_us`,
/// 50 µs by default; the core closes it for a while after misses, and on
/// one CPU it yields once instead): a task queued now or posted while it
/// spins (GIL released), else None. The core counts it as a spinning
/// poller, so the caller of a task taken so spins for its answer instead
/// of parking. For event loops, before they arm the readiness fd and sleep.
#[pyfunction]
fn poll_spin(py: Python<'_>, tq: usize) -> PyResult<Option<Task>> {
    check_queue(tq)?;
    Ok(py.allow_threads(|| abi::poll_spin(tq)).map(Task::new))
}

/// Never blocks: up to `max` tasks queued right now (maybe none).
#[pyfunction]
#[pyo3(signature = (tq, max = 64))]
fn drain(tq: usize, max: usize) -> PyResult<Vec<Task>> {
    check_queue(tq)?;
    Ok(std::iter::from_fn(|| abi::try_poll(tq))
        .take(max)
        .map(Task::new)
        .collect())
}

/// The queue's readiness fd, for event loops (`loop.add_reader`): it becomes
/// readable when tasks wait. On readable: read 8 bytes from it, `drain`,
/// then `queue_arm` before waiting again.
#[pyfunction]
fn queue_fd(tq: usize) -> PyResult<i32> {
    check_queue(tq)?;
    match abi::queue_fd(tq) {
        fd if fd >= 0 => Ok(fd),
        _ => Err(PyValueError::new_err(
            "resty_ffi.queue_fd: the core could not create the eventfd (see error.log)",
        )),
    }
}

/// The queue's space fd, for event loops that stream (`loop.add_reader`):
/// readable after a stream of the queue made room in its window (retry a
/// chunk `try_respond_chunk` refused with 2) or was cancelled (look at
/// `task.cancelled`). Read 8 bytes from it when readable; readiness may be
/// spurious.
#[pyfunction]
fn queue_space_fd(tq: usize) -> PyResult<i32> {
    check_queue(tq)?;
    match abi::queue_space_fd(tq) {
        fd if fd >= 0 => Ok(fd),
        _ => Err(PyValueError::new_err(
            "resty_ffi.queue_space_fd: the core could not create the eventfd (see error.log)",
        )),
    }
}

/// Arms the readiness fd before waiting on it: the number of tasks that
/// arrived meanwhile (0: wait now), or -1 once the queue is finished and
/// drained (stop).
#[pyfunction]
fn queue_arm(tq: usize) -> PyResult<i32> {
    check_queue(tq)?;
    Ok(abi::queue_arm(tq))
}

/// True once the queue is finished and drained.
#[pyfunction]
fn finished(tq: usize) -> PyResult<bool> {
    check_queue(tq)?;
    Ok(abi::finished(tq))
}

/// The text of the `cfg` address your init was given (None for 0, which
/// is what a cfg without its third field gives, as in lua-resty-ffi).
/// Only valid during init, as the address itself is.
#[pyfunction]
fn cfg_string(cfg: Option<usize>) -> PyResult<Option<String>> {
    let Some(addr) = cfg.filter(|&a| a != 0) else {
        return Ok(None);
    };
    INIT_CFG.with(|c| match &*c.borrow() {
        Some((a, text)) if *a == addr => Ok(Some(text.clone())),
        _ => Err(PyValueError::new_err(
            "resty_ffi.cfg_string: pass the cfg your init was given, during init",
        )),
    })
}

/// Logs `msg` through nginx at nginx level `level` (1 emerg, 2 alert, 3
/// crit, 4 err, 5 warn, 6 notice, 7 info, 8 debug).
#[pyfunction]
fn log(level: i32, msg: &str) {
    abi::log(level, msg);
}

/// Names the calling OS thread (15 bytes kept), for top -H and /proc.
#[pyfunction]
fn name_thread(name: &str) {
    abi::name_thread(name);
}

/// Fills the `resty_ffi` module (the interpreter registers it in sys.modules).
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Task>()?;
    m.add_function(wrap_pyfunction!(poll, m)?)?;
    m.add_function(wrap_pyfunction!(poll_batch, m)?)?;
    m.add_function(wrap_pyfunction!(try_poll, m)?)?;
    m.add_function(wrap_pyfunction!(poll_spin, m)?)?;
    m.add_function(wrap_pyfunction!(finished, m)?)?;
    m.add_function(wrap_pyfunction!(drain, m)?)?;
    m.add_function(wrap_pyfunction!(queue_fd, m)?)?;
    m.add_function(wrap_pyfunction!(queue_arm, m)?)?;
    m.add_function(wrap_pyfunction!(queue_space_fd, m)?)?;
    m.add_function(wrap_pyfunction!(cfg_string, m)?)?;
    m.add_function(wrap_pyfunction!(name_thread, m)?)?;
    m.add_function(wrap_pyfunction!(log, m)?)?;
    Ok(())
}
