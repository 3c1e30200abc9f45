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
//!
//! Runtimes are shared by every Lua VM of the process, keyed by
//! `lib & cfg` (see [`load_shared`]): with `lua_code_cache off` each request
//! has a VM of its own, and loading per request must not start new threads
//! each time.
//!
//! A library file that changed on disk since this process opened it (a new
//! build after `__unload`) is opened from a private copy in memory
//! (memfd): the dynamic linker would otherwise hand back the old,
//! still-mapped code. The old code stays mapped (its threads may still run
//! it); each changed reload costs the size of the library in memory.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CString};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};
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
    key: Vec<u8>,
    /// The name its metrics carry (opts.name, else the key).
    name: Mutex<String>,
}

/// Every runtime this process loaded, unloaded ones included.
static ALL: Mutex<Vec<&'static Runtime>> = Mutex::new(Vec::new());

/// Every runtime this process loaded, in load order.
pub fn all() -> Vec<&'static Runtime> {
    ALL.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Loaded, not yet unloaded runtimes of this process, by `lib & cfg`.
static RUNTIMES: Mutex<Option<HashMap<Vec<u8>, &'static Runtime>>> = Mutex::new(None);

/// The identity of a library file when this process first opened it.
type FileId = (u64, u64, i64, i64, u64);
static OPENED_FILES: Mutex<Option<HashMap<String, FileId>>> = Mutex::new(None);

fn file_id(path: &str) -> Option<FileId> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.size()))
}

/// The runtime loaded under `key` (`lib & cfg`), loading it first if no VM
/// of this process has. A runtime that was unloaded is loaded afresh.
pub fn load_shared(
    key: &[u8],
    path: &str,
    cfg: Option<&[u8]>,
    opts: &Options,
) -> Result<&'static Runtime, Error> {
    let mut map = RUNTIMES.lock().unwrap_or_else(|e| e.into_inner());
    let map = map.get_or_insert_with(HashMap::new);
    if let Some(rt) = map.get(key) {
        return Ok(rt);
    }
    let rt: &'static Runtime = Box::leak(Box::new(Runtime::load(key, path, cfg, opts)?));
    map.insert(key.to_vec(), rt);
    ALL.lock().unwrap_or_else(|e| e.into_inner()).push(rt);
    Ok(rt)
}

/// Opens `path`, from a private in-memory copy when the file changed since
/// this process opened it.
fn open_library(path: &str, flags: c_int) -> Result<Library, Error> {
    let open_err = |reason: String| Error::Open {
        path: path.into(),
        reason,
    };
    let now = file_id(path);
    let changed = {
        let mut files = OPENED_FILES.lock().unwrap_or_else(|e| e.into_inner());
        let files = files.get_or_insert_with(HashMap::new);
        match (files.get(path), now) {
            (Some(before), Some(now)) => *before != now,
            (None, Some(now)) => {
                files.insert(path.to_string(), now);
                false
            }
            _ => false,
        }
    };
    let target = if changed {
        private_copy(path).map_err(|e| open_err(format!("cannot copy the changed library: {e}")))?
    } else {
        path.to_string()
    };
    // SAFETY: opening a library runs its constructors; loading the runtime
    // the user named is the point of this call.
    unsafe { Library::open(Some(&target), flags) }.map_err(|e| {
        let reason = e.to_string();
        match crate::needed::missing_dependency(path, &reason) {
            Some(dep) => {
                let others = crate::needed::other_versions(&dep);
                Error::MissingDependency {
                    path: path.into(),
                    others: if others.is_empty() {
                        String::new()
                    } else {
                        format!(" (this system has {})", others.join(", "))
                    },
                    dep,
                }
            }
            None => open_err(reason),
        }
    })
}

/// Copies `path` into a memfd and returns a path the dynamic linker can
/// open. The fd stays open for the process's life: its number is part of
/// the name the linker remembers, and must never name another library.
fn private_copy(path: &str) -> std::io::Result<String> {
    let name = CString::new("resty-ffi-runtime").expect("no NUL");
    // SAFETY: memfd_create with a valid name; the fd is ours.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh fd we own; File takes it over for the copy and
    // into_raw_fd gives it back without closing it.
    let mut out = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    std::io::copy(&mut std::fs::File::open(path)?, &mut out)?;
    let fd = std::os::fd::IntoRawFd::into_raw_fd(out);
    Ok(format!("/proc/self/fd/{fd}"))
}

impl Runtime {
    /// Opens `path`, starts the runtime with `cfg`, and returns it.
    pub fn load(
        key: &[u8],
        path: &str,
        cfg: Option<&[u8]>,
        opts: &Options,
    ) -> Result<Runtime, Error> {
        let flags = RTLD_NOW
            | if opts.is_global {
                RTLD_GLOBAL
            } else {
                RTLD_LOCAL
            };
        let lib = open_library(path, flags)?;
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
        Ok(Runtime {
            queue,
            key: key.to_vec(),
            name: Mutex::new(String::from_utf8_lossy(key).into_owned()),
        })
    }

    pub fn name(&self) -> String {
        self.name.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_name(&self, name: String) {
        *self.name.lock().unwrap_or_else(|e| e.into_inner()) = name;
    }

    /// Finishes the queue: queued tasks are served, then pollers get NULL.
    /// The next load of the same `lib & cfg` starts a fresh runtime.
    pub fn unload(&'static self) {
        let mut map = RUNTIMES.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(map) = map.as_mut() {
            if map.get(&self.key).is_some_and(|r| std::ptr::eq(*r, self)) {
                map.remove(&self.key);
            }
        }
        drop(map);
        self.queue.finish();
    }
}
