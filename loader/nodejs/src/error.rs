//! The loader's one error type. At the ABI each error becomes the return
//! code of `libffi_init` (so `load_ffi` fails) plus a line in nginx's
//! error.log saying what failed, with what input, and what to do.

use thiserror::Error;

use crate::cfg::SYNTAX;

#[derive(Debug, Error)]
pub enum Error {
    #[error("bad cfg '{cfg}': {reason} (want \"{SYNTAX}\")")]
    Cfg { cfg: String, reason: String },
    #[error("cannot start Node.js: {0}")]
    Node(String),
    /// A failure the bootstrap script reported while loading the module;
    /// `rc` is the code it chose (see js/bootstrap.js), `text` says what
    /// and what to do.
    #[error("{text}")]
    Load { rc: i32, text: String },
    #[error("loading {module} did not finish within {secs} s (a Promise that never settles?)")]
    Timeout { module: String, secs: u64 },
    #[error("internal error: {0}")]
    Internal(String),
}

impl resty_ffi_loader::InitError for Error {
    /// The code `libffi_init` returns; a runtime's own non-zero code passes
    /// through unchanged.
    fn rc(&self) -> i32 {
        match self {
            Error::Cfg { .. } => 2,
            Error::Node(_) => 3,
            Error::Load { rc, .. } => *rc,
            Error::Timeout { .. } => 11,
            Error::Internal(_) => 10,
        }
    }
    fn from_panic(text: String) -> Self {
        Error::Internal(text)
    }
}
