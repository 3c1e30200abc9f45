//! The loader's one error type. At the ABI each error becomes the return
//! code of `libffi_init` (so `load_ffi` fails) plus a line in nginx's
//! error.log saying what failed, with what input, and what to do.

use thiserror::Error;

use crate::cfg::SYNTAX;

#[derive(Debug, Error)]
pub enum Error {
    #[error("bad cfg '{cfg}': {reason} (want \"{SYNTAX}\")")]
    Cfg { cfg: String, reason: String },
    #[error("cannot start the Python interpreter: {0}")]
    Interpreter(String),
    #[error("venv '{path}': {reason}")]
    Venv { path: String, reason: String },
    #[error("cannot import module '{module}': {reason} (sys.path: {path})")]
    Import {
        module: String,
        reason: String,
        path: String,
    },
    #[error("module '{module}' ({file}) has no function '{func}'{why}")]
    NoFunction {
        module: String,
        file: String,
        func: String,
        why: String,
    },
    #[error("importing module '{module}' raised {reason}: a runtime must not end the process (it is the nginx worker)")]
    ImportExited { module: String, reason: String },
    #[error("{module}.{func}(cfg, tq) raised {reason}")]
    InitRaised {
        module: String,
        func: String,
        reason: String,
    },
    #[error("{module}.{func}(cfg, tq) returned {rc}")]
    InitReturned {
        module: String,
        func: String,
        rc: i32,
    },
    #[error("{module}.{func}(cfg, tq) returned {what}: return 0 once your own threads poll the queue, or a handler (a callable taking the request bytes)")]
    BadReturn {
        module: String,
        func: String,
        what: String,
    },
    #[error("cannot start the handler of {module}.{func}: {reason}")]
    Serve {
        module: String,
        func: String,
        reason: String,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

impl resty_ffi_loader::InitError for Error {
    /// The code `libffi_init` returns; a runtime's own non-zero code passes
    /// through unchanged.
    fn rc(&self) -> i32 {
        match self {
            Error::Cfg { .. } => 2,
            Error::Interpreter(_) => 3,
            Error::Venv { .. } => 4,
            Error::Import { .. } => 5,
            Error::NoFunction { .. } => 6,
            Error::InitRaised { .. } | Error::ImportExited { .. } => 7,
            Error::InitReturned { rc, .. } => *rc,
            Error::BadReturn { .. } => 8,
            Error::Serve { .. } => 9,
            Error::Internal(_) => 10,
        }
    }
    fn from_panic(text: String) -> Self {
        Error::Internal(text)
    }
}
