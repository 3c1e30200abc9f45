//! A loaded runtime: its library, its task queue and the caller's spin gate.
//!
//! Loading opens the library (RTLD_NOW, RTLD_GLOBAL when asked so the
//! runtime's own symbols serve extension modules it loads), finds
//! `libffi_init`, creates the queue and calls `libffi_init(cfg, tq)` with a
//! malloc()ed copy of cfg that is freed after it returns, as lua-resty-ffi
//! does.
//!
//! Lifetime: the library is never closed and the queue never freed. After
//! unload the runtime's threads may still be draining or polling, and code
//! or memory pulled from under them would crash the worker; both are small
//! and a worker loads few runtimes.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::Arc;
use std::time::Duration;

use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_LOCAL, RTLD_NOW};

use crate::queue::TaskQueue;
use crate::Error;

type InitFn = unsafe extern "C" fn(*mut c_char, *mut c_void) -> c_int;

thread_local! {
    /// Why the `libffi_init` running on this thread failed, as the runtime
    /// told us through `resty_ffi_init_error`.
    static INIT_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Records why the runtime's `libffi_init`, running on this thread, fails.
pub fn set_init_error(msg: String) {
    INIT_ERROR.with(|e| *e.borrow_mut() = Some(msg));
}

/// What `load` needs besides the library and cfg.
#[derive(Debug, Clone)]
pub struct Options {
    pub max_queue: usize,
    pub is_global: bool,
    /// The most the caller may spin for an answer before parking (the
    /// actual budget adapts to recent answer times, see spin.rs).
    pub caller_spin: Duration,
    /// How long runtime threads spin in poll before blocking.
    pub poll_spin: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_queue: 65536,
            is_global: false,
            caller_spin: Duration::from_micros(50),
            poll_spin: Duration::from_micros(50),
        }
    }
}

pub struct Runtime {
    pub queue: Arc<TaskQueue>,
}

impl Runtime {
    /// Opens `path`, starts the runtime with `cfg`, and returns it.
    pub fn load(path: &str, cfg: Option<&[u8]>, opts: &Options) -> Result<Runtime, Error> {
        let flags = RTLD_NOW
            | if opts.is_global {
                RTLD_GLOBAL
            } else {
                RTLD_LOCAL
            };
        // SAFETY: opening a library runs its constructors; loading the
        // runtime the user named is the point of this call.
        let lib = unsafe { Library::open(Some(path), flags) }.map_err(|e| Error::Open {
            path: path.into(),
            reason: e.to_string(),
        })?;
        // SAFETY: the symbol is declared by the runtime ABI with this type.
        let init: InitFn = unsafe { lib.get::<InitFn>(b"libffi_init\0") }
            .map(|s| *s)
            .map_err(|e| Error::NoInit {
                path: path.into(),
                reason: e.to_string(),
            })?;
        let queue = Arc::new(TaskQueue::new(
            opts.max_queue,
            opts.poll_spin,
            opts.caller_spin,
        ));
        let cfg = match cfg {
            Some(c) => Some(
                CString::new(c)
                    .map_err(|_| Error::BadArgument("cfg contains a NUL byte".into()))?,
            ),
            None => None,
        };
        // lua-resty-ffi hands the runtime a malloc()ed cfg; keep that exact
        // allocator in case a runtime frees or reallocs it.
        let cfg_ptr = match &cfg {
            // SAFETY: strdup of a valid NUL-terminated string.
            Some(c) => unsafe { libc::strdup(c.as_ptr()) },
            None => std::ptr::null_mut(),
        };
        let tq = Arc::as_ptr(&queue) as *mut c_void;
        INIT_ERROR.with(|e| e.borrow_mut().take());
        // SAFETY: calling the runtime's entry point per the ABI; tq stays
        // valid forever (one reference is leaked below).
        let rc = unsafe { init(cfg_ptr, tq) };
        if !cfg_ptr.is_null() {
            // SAFETY: allocated by strdup above; the ABI says cfg is freed
            // after libffi_init returns.
            unsafe { libc::free(cfg_ptr.cast()) };
        }
        // The runtime may have started threads holding tq even if it failed.
        std::mem::forget(queue.clone());
        std::mem::forget(lib);
        if rc != 0 {
            queue.finish();
            let detail = INIT_ERROR
                .with(|e| e.borrow_mut().take())
                .unwrap_or_else(|| {
                    "the runtime refused its cfg or could not start (see error.log)".into()
                });
            return Err(Error::InitFailed {
                path: path.into(),
                rc,
                detail,
            });
        }
        Ok(Runtime { queue })
    }

    /// Finishes the queue: queued tasks are served, then pollers get NULL.
    pub fn unload(&self) {
        self.queue.finish();
    }
}
