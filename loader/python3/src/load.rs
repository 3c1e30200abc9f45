//! Starting one Python runtime: what `libffi_init` does for a cfg.
//!
//! Parse the cfg, create the interpreter (first time only), set sys.path,
//! import (or with `?` reload) the module, and call `func(cfg, tq)` exactly
//! as lua-resty-ffi's Python loader does: `cfg` is the address of the rest
//! of the string (a `char *`, valid during the call) or 0, `tq` the
//! queue's address. What `func` returns decides the style:
//! - an int: the compat style; the runtime started its own pollers and the
//!   int is the return code (0 = ok);
//! - a callable: the handler style; `resty_ffi._serve` runs the poll loop
//!   and calls it per request (sync on a thread pool, `async def` on an
//!   asyncio loop owned by the runtime).
//!
//! Not stalling the worker: `libffi_init` runs on the worker's event loop,
//! and an import needs the GIL again after every file it reads. While a
//! handler thread runs Python, each of those waits lasts up to the
//! interpreter's switch interval (5 ms), and a module importing a few
//! packages stalled the worker for seconds (4.3 s seen). So the import
//! and `func(cfg, tq)` run on a loader thread (`load-python3`); the worker
//! waits for it at most [`LOAD_WAIT`]. A load done by then reports as
//! always (its error fails `load_ffi`). A longer one finishes in the
//! background: `load_ffi` returns the runtime at once and calls wait in its
//! queue (their timeouts run) until it polls; if that load fails, the
//! loader thread logs the error and answers every call with rc 1 and it
//! until the runtime is unloaded (`rt:__unload()`, then load again).
//! Creating the interpreter (the first load of a worker) stays on the
//! worker's thread: no other Python thread can hold the GIL then.

use std::ffi::CString;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use pyo3::exceptions::{PyAttributeError, PyKeyboardInterrupt, PySystemExit};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyInt};

use crate::{abi, cfg, interpreter, module, paths, Error};

/// How long `libffi_init` waits for a load before it lets the load
/// finish in the background (see the module doc): ten switch intervals.
pub const LOAD_WAIT: Duration = Duration::from_millis(50);

/// nginx's notice level.
const NOTICE: i32 = 6;

/// Where a load on the loader thread stands, as the worker sees it.
enum Outcome {
    Running,
    Done(Result<(), Error>),
    /// The worker stopped waiting: the loader thread deals with the result.
    Background,
}

/// Starts the runtime `cfg` names on queue `tq`.
pub fn start(cfg_text: &str, tq: usize) -> Result<(), Error> {
    let spec = cfg::parse(cfg_text).map_err(|reason| Error::Cfg {
        cfg: cfg_text.into(),
        reason,
    })?;
    interpreter::ensure()?;
    let state = Arc::new((Mutex::new(Outcome::Running), Condvar::new()));
    let theirs = Arc::clone(&state);
    let cfg = cfg_text.to_string();
    std::thread::Builder::new()
        .name("load-python3".into())
        .spawn(move || {
            let result = catch_unwind(AssertUnwindSafe(|| {
                Python::with_gil(|py| start_in(py, &spec, tq))
            }))
            .unwrap_or_else(|p| {
                Err(Error::Internal(format!(
                    "panic: {}",
                    resty_ffi_loader::panic_text(&*p)
                )))
            });
            let (lock, done) = &*theirs;
            let mut outcome = lock.lock().unwrap_or_else(|e| e.into_inner());
            if matches!(*outcome, Outcome::Background) {
                drop(outcome);
                finish_in_background(&cfg, result, tq);
            } else {
                *outcome = Outcome::Done(result);
                done.notify_one();
            }
        })
        .map_err(|e| Error::Internal(format!("cannot start the loader thread: {e}")))?;
    let (lock, done) = &*state;
    let outcome = lock.lock().unwrap_or_else(|e| e.into_inner());
    let (mut outcome, _) = done
        .wait_timeout_while(outcome, LOAD_WAIT, |o| matches!(o, Outcome::Running))
        .unwrap_or_else(|e| e.into_inner());
    match std::mem::replace(&mut *outcome, Outcome::Background) {
        Outcome::Done(result) => result,
        _ => {
            abi::log(
                NOTICE,
                &format!(
                    "ffi_python3: loading '{cfg_text}' takes longer than {} ms (a slow import, or a thread holding the GIL): it goes on in the background, calls wait in the queue until it is done",
                    LOAD_WAIT.as_millis()
                ),
            );
            Ok(())
        }
    }
}

/// The end of a load the worker stopped waiting for: on failure, logs the
/// error and answers every call with it until the queue is finished.
fn finish_in_background(cfg: &str, result: Result<(), Error>, tq: usize) {
    let Err(e) = result else {
        return;
    };
    let msg = format!("ffi_python3: {e}");
    abi::log(
        resty_ffi_loader::ERR,
        &format!("{msg} (loading '{cfg}' in the background: every call to it is answered with this error; unload it and load again)"),
    );
    while let Some(task) = abi::poll(tq) {
        task.respond(1, Some(msg.as_bytes()));
    }
}

fn describe(py: Python<'_>, e: &PyErr) -> String {
    let ty = e
        .get_type(py)
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Exception".into());
    let text = e.value(py).to_string();
    if ty == "ModuleNotFoundError" {
        text
    } else {
        format!("{ty}: {text}")
    }
}

/// Logs the traceback as one error.log entry (resty_ffi._log joins its
/// lines). Never PyErr_Print: for a SystemExit it calls Py_Exit, which
/// would end the nginx worker.
fn log_traceback(py: Python<'_>, e: &PyErr) {
    let logged = py
        .import("resty_ffi._log")
        .and_then(|m| m.call_method1("log_exception", (e.value(py),)));
    if logged.is_err() {
        e.display(py);
    }
}

/// SystemExit and KeyboardInterrupt: exceptions user code raises to end
/// the process, which must not end the nginx worker.
fn is_exit(py: Python<'_>, e: &PyErr) -> bool {
    e.is_instance_of::<PySystemExit>(py) || e.is_instance_of::<PyKeyboardInterrupt>(py)
}

fn sys_path_text(py: Python<'_>) -> String {
    py.import("sys")
        .and_then(|s| s.getattr("path"))
        .and_then(|p| p.extract::<Vec<String>>())
        .map(|v| v.join(":"))
        .unwrap_or_default()
}

fn import<'py>(py: Python<'py>, spec: &cfg::Spec) -> Result<Bound<'py, PyModule>, Error> {
    let fail = |e: PyErr| {
        log_traceback(py, &e);
        if is_exit(py, &e) {
            return Error::ImportExited {
                module: spec.module.clone(),
                reason: describe(py, &e),
            };
        }
        Error::Import {
            module: spec.module.clone(),
            reason: describe(py, &e),
            path: sys_path_text(py),
        }
    };
    let loaded = py
        .import("sys")
        .and_then(|s| s.getattr("modules"))
        .and_then(|m| m.call_method1("get", (&spec.module,)))
        .map_err(fail)?;
    if loaded.is_none() {
        return py.import(spec.module.as_str()).map_err(fail);
    }
    if !spec.reload {
        return loaded
            .downcast_into::<PyModule>()
            .map_err(|e| fail(e.into()));
    }
    let importlib = py.import("importlib").map_err(fail)?;
    importlib.call_method0("invalidate_caches").map_err(fail)?;
    importlib
        .call_method1("reload", (loaded,))
        .and_then(|m| Ok(m.downcast_into::<PyModule>()?))
        .map_err(fail)
}

fn start_in(py: Python<'_>, spec: &cfg::Spec, tq: usize) -> Result<(), Error> {
    if let Some(venv) = &spec.venv {
        paths::add_venv(py, venv).map_err(|reason| Error::Venv {
            path: venv.clone(),
            reason,
        })?;
    }
    if let Some(dir) = &spec.dir {
        paths::prepend(py, dir).map_err(|e| Error::Internal(describe(py, &e)))?;
    }
    let m = import(py, spec)?;
    let no_function = |why: String| Error::NoFunction {
        module: spec.module.clone(),
        file: m
            .getattr("__file__")
            .map(|f| f.to_string())
            .unwrap_or_else(|_| "built-in".into()),
        func: spec.func.clone(),
        why,
    };
    let func = match m.getattr(spec.func.as_str()) {
        Ok(f) => f,
        Err(e) if e.is_instance_of::<PyAttributeError>(py) => {
            return Err(no_function(String::new()))
        }
        Err(e) => return Err(no_function(format!(": {}", describe(py, &e)))),
    };
    if !func.is_callable() {
        let ty = func
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_default();
        return Err(no_function(format!(" (it is a {ty}, not callable)")));
    }
    abi::register_queue(tq);
    // The rest of the cfg as a C string whose address the function gets.
    let rest = spec
        .rest
        .as_ref()
        .map(|r| CString::new(r.as_str()).map_err(|_| Error::Internal("cfg has a NUL byte".into())))
        .transpose()?;
    // No third field: 0, as lua-resty-ffi passes (runtimes do
    // `ffi.cast("char*", cfg)`, which None would break).
    let cfg_arg: usize = rest.as_ref().map_or(0, |c| c.as_ptr() as usize);
    let init_cfg = rest
        .as_ref()
        .map(|c| (c.as_ptr() as usize, spec.rest.clone().unwrap_or_default()));
    let result = module::with_init_cfg(init_cfg, || func.call1((cfg_arg, tq)));
    drop(rest);
    let ret = result.map_err(|e| {
        log_traceback(py, &e);
        Error::InitRaised {
            module: spec.module.clone(),
            func: spec.func.clone(),
            reason: describe(py, &e),
        }
    })?;
    if ret.is_instance_of::<PyInt>() && !ret.is_instance_of::<PyBool>() {
        let rc = ret.extract::<i32>().unwrap_or(-1);
        if rc == 0 {
            return Ok(());
        }
        return Err(Error::InitReturned {
            module: spec.module.clone(),
            func: spec.func.clone(),
            rc,
        });
    }
    if !ret.is_callable() {
        let what = ret.repr().map(|r| r.to_string()).unwrap_or_default();
        return Err(Error::BadReturn {
            module: spec.module.clone(),
            func: spec.func.clone(),
            what,
        });
    }
    py.import("resty_ffi._serve")
        .and_then(|s| s.call_method1("start", (ret, tq, &spec.module)))
        .map(|_| ())
        .map_err(|e| {
            log_traceback(py, &e);
            Error::Serve {
                module: spec.module.clone(),
                func: spec.func.clone(),
                reason: describe(py, &e),
            }
        })
}
