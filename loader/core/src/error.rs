//! The core's one error type. At the C ABI each error becomes a return code
//! plus a message copied into the caller's buffer; in Lua, `nil, err`.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("cannot load runtime library '{path}': {reason} (give a full path, or put it in LD_LIBRARY_PATH or lua_package_cpath)")]
    Open { path: String, reason: String },
    #[error("cannot load runtime library '{path}': it was built against {dep}, which is not installed here{others}: install the package that provides {dep}, or use a build of the library made for this system")]
    MissingDependency {
        path: String,
        dep: String,
        /// " (this system has X, Y)" when other versions of dep are here.
        others: String,
    },
    #[error("runtime library '{path}' has no libffi_init: {reason} (a runtime must export `int libffi_init(char *cfg, void *tq)`)")]
    NoInit { path: String, reason: String },
    #[error("runtime library '{path}': libffi_init returned {rc}: {detail}")]
    InitFailed {
        path: String,
        rc: i32,
        /// What the runtime said through `resty_ffi_init_error`, if anything.
        detail: String,
    },
    #[error("bad argument: {0}")]
    BadArgument(String),
    #[error("task queue is full ({max} tasks waiting): the runtime is not keeping up; raise max_queue or add runtime threads")]
    QueueFull { max: usize },
    #[error("runtime is unloaded: its task queue is finished")]
    Finished,
    #[error("wake-up socket: {0}")]
    Wake(String),
}

impl Error {
    /// The code Lua sees for errors of posting a task.
    pub fn post_code(&self) -> i32 {
        match self {
            Error::QueueFull { .. } => 1,
            Error::Finished => 2,
            _ => 3,
        }
    }
}
