//! The one CPython interpreter of a worker process.
//!
//! Created lazily by the first `libffi_init` (which runs inside the nginx
//! worker, never in the master that forks), then kept for the life of the
//! process: CPython cannot be finalised and started again safely, and
//! runtime threads may still run.
//!
//! Creation:
//! 1. libpython's and the core's symbols are made global, so extension
//!    modules (`_ctypes`, `_cffi_backend`, ...) and cffi's `dlopen(None)`
//!    find them without the user passing `is_global`;
//! 2. the interpreter starts with `program_name` set to the Python the
//!    loader was built against (Debian's /usr/bin/python3.11), so it finds
//!    its standard library and site-packages from that path rather than
//!    from /usr/sbin/nginx, and `sys.executable` names a real Python;
//!    no signal handlers are installed (signals belong to nginx);
//! 3. `resty_ffi` is registered, `sys.stdout`/`sys.stderr` go to
//!    error.log, and the worker's `VIRTUAL_ENV` (when nginx passes it with
//!    `env VIRTUAL_ENV;`) is added like a per-runtime venv;
//! 4. the GIL is released: the worker's main thread must not hold it.

use std::ffi::CString;
use std::sync::OnceLock;

use pyo3::ffi;
use pyo3::prelude::*;

use crate::{abi, module, paths, Error};

/// The Python the loader embeds (its libpython is linked in).
pub const EXECUTABLE: &str = env!("FFI_PYTHON3_EXECUTABLE");
/// Its `major.minor`, which names venv site-packages folders.
pub const VERSION: &str = env!("FFI_PYTHON3_VERSION");

const LOG_PY: &str = include_str!("../python/resty_ffi/_log.py");
const SERVE_PY: &str = include_str!("../python/resty_ffi/_serve.py");

static CREATED: OnceLock<Result<(), String>> = OnceLock::new();

/// Creates the interpreter on first use; later calls return the outcome
/// of that first attempt.
pub fn ensure() -> Result<(), Error> {
    CREATED
        .get_or_init(create)
        .clone()
        .map_err(Error::Interpreter)
}

fn create() -> Result<(), String> {
    abi::make_symbols_global()?;
    start_cpython()?;
    Python::with_gil(|py| setup(py).map_err(|e| format!("setting up Python: {e}")))
}

fn start_cpython() -> Result<(), String> {
    // SAFETY: querying the state has no preconditions.
    if unsafe { ffi::Py_IsInitialized() } != 0 {
        // Someone in this process embedded Python before us: share it.
        return Ok(());
    }
    let program = CString::new(EXECUTABLE).map_err(|e| e.to_string())?;
    // SAFETY: the PyConfig API used as CPython documents it: init, set,
    // start, clear; every status is checked. The worker's main thread is
    // the only one touching Python here (we are inside CREATED's once).
    unsafe {
        let mut config: ffi::PyConfig = std::mem::zeroed();
        ffi::PyConfig_InitPythonConfig(&mut config);
        config.install_signal_handlers = 0;
        config.parse_argv = 0;
        let status =
            ffi::PyConfig_SetBytesString(&mut config, &mut config.program_name, program.as_ptr());
        if ffi::PyStatus_Exception(status) != 0 {
            ffi::PyConfig_Clear(&mut config);
            return Err(status_message("setting program_name", &status));
        }
        let status = ffi::Py_InitializeFromConfig(&config);
        ffi::PyConfig_Clear(&mut config);
        if ffi::PyStatus_Exception(status) != 0 {
            return Err(status_message("Py_InitializeFromConfig", &status));
        }
        // Release the GIL the main thread now holds; pyo3 takes it per use.
        ffi::PyEval_SaveThread();
    }
    Ok(())
}

fn status_message(what: &str, status: &ffi::PyStatus) -> String {
    let msg = if status.err_msg.is_null() {
        "unknown error".into()
    } else {
        // SAFETY: CPython sets err_msg to a static C string.
        unsafe { std::ffi::CStr::from_ptr(status.err_msg) }
            .to_string_lossy()
            .into_owned()
    };
    format!("{what} failed: {msg} (embedding {EXECUTABLE})")
}

fn setup(py: Python<'_>) -> PyResult<()> {
    let sys = py.import("sys")?;
    let modules = sys.getattr("modules")?;
    let m = PyModule::new(py, "resty_ffi")?;
    module::register(&m)?;
    modules.set_item("resty_ffi", &m)?;
    for (name, src) in [("_log", LOG_PY), ("_serve", SERVE_PY)] {
        let full = format!("resty_ffi.{name}");
        let code = CString::new(src)?;
        let file = CString::new(format!("<ffi_python3>/resty_ffi/{name}.py"))?;
        let sub = PyModule::from_code(py, &code, &file, &CString::new(full.clone())?)?;
        m.setattr(name, &sub)?;
        modules.set_item(full, &sub)?;
    }
    m.getattr("_log")?.call_method0("install")?;
    if let Ok(venv) = std::env::var("VIRTUAL_ENV") {
        if !venv.is_empty() {
            paths::add_venv(py, &venv).map_err(|e| {
                pyo3::exceptions::PyRuntimeError::new_err(format!("VIRTUAL_ENV: {e}"))
            })?;
        }
    }
    Ok(())
}
