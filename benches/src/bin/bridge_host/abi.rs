//! The core's C ABI as the bridge host sees it: libresty_ffi.so opened with
//! RTLD_GLOBAL (so the runtime it loads finds `ngx_http_lua_ffi_*`, exactly
//! as under LuaJIT's `ffi.load(path, true)`), and typed wrappers around the
//! `resty_ffi_*` functions the Lua layer calls. All `unsafe` of the host
//! lives here.

use std::ffi::{c_char, c_int, c_void, CString};
use std::os::unix::net::UnixStream;

use libloading::os::unix::{Library, Symbol, RTLD_GLOBAL, RTLD_NOW};

type LoadFn = unsafe extern "C" fn(
    *const c_char,
    c_int,
    *const c_char,
    *const c_char,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    *mut c_char,
    c_int,
) -> *mut c_void;
type UnloadFn = unsafe extern "C" fn(*mut c_void);
type PostFn = unsafe extern "C" fn(
    *mut c_void,
    *mut c_void,
    *const c_char,
    c_int,
    f64,
    *mut c_int,
) -> *mut c_void;
type WaitFn = unsafe extern "C" fn(*mut c_void, c_int) -> c_int;
type ResultFn = unsafe extern "C" fn(*mut c_void, *mut *const c_char, *mut c_int) -> c_int;
type IdFn = unsafe extern "C" fn(*mut c_void) -> f64;
type FreeFn = unsafe extern "C" fn(*mut c_void);
type DrainFn = unsafe extern "C" fn(*mut c_void, *mut *mut c_void, c_int) -> c_int;
type PrepareSleepFn = unsafe extern "C" fn(*mut c_void) -> c_int;
type MsgFn = unsafe extern "C" fn(*mut c_void, *mut c_char, c_int) -> c_int;
type OpenFn = unsafe extern "C" fn() -> *mut c_void;

/// The core library and the functions the Lua layer uses.
pub struct Core {
    load: Symbol<LoadFn>,
    unload: Symbol<UnloadFn>,
    post: Symbol<PostFn>,
    wait: Symbol<WaitFn>,
    result: Symbol<ResultFn>,
    id: Symbol<IdFn>,
    free: Symbol<FreeFn>,
    drain: Symbol<DrainFn>,
    prepare_sleep: Symbol<PrepareSleepFn>,
    wake_listen: Symbol<MsgFn>,
    wake_accept: Symbol<MsgFn>,
    /// The host's completion channel (one, like one Lua VM); never closed.
    channel: *mut c_void,
    _lib: Library,
}

/// A task posted and not yet freed. Its request bytes are borrowed from the
/// caller, who keeps them alive until [`Core::free`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(transparent)]
pub struct Task(*mut c_void);

impl Default for Task {
    fn default() -> Self {
        Task(std::ptr::null_mut())
    }
}

/// A loaded runtime handle, unloaded on drop.
pub struct Runtime<'a> {
    core: &'a Core,
    rt: *mut c_void,
}

fn message(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

impl Core {
    /// Opens libresty_ffi.so at `path` with RTLD_NOW | RTLD_GLOBAL.
    pub fn open(path: &str) -> Result<Core, String> {
        // SAFETY: opening the core runs no constructors that need set-up;
        // it is the library the host exists to measure.
        let lib = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) }
            .map_err(|e| format!("cannot open {path}: {e}"))?;
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: each symbol is declared with its type in the core's
                // abi.rs; the Library outlives the Symbol (kept in Core).
                unsafe { lib.get(concat!($name, "\0").as_bytes()) }
                    .map_err(|e| format!("{path}: {}: {e}", $name))?
            };
        }
        let open: Symbol<OpenFn> = sym!("resty_ffi_channel_open");
        // SAFETY: no arguments; the channel lives as long as the process.
        let channel = unsafe { open() };
        Ok(Core {
            channel,
            load: sym!("resty_ffi_runtime_load"),
            unload: sym!("resty_ffi_runtime_unload"),
            post: sym!("resty_ffi_post"),
            wait: sym!("resty_ffi_wait"),
            result: sym!("resty_ffi_task_result"),
            id: sym!("resty_ffi_task_id"),
            free: sym!("resty_ffi_task_free"),
            drain: sym!("resty_ffi_drain"),
            prepare_sleep: sym!("resty_ffi_prepare_sleep"),
            wake_listen: sym!("resty_ffi_wake_listen"),
            wake_accept: sym!("resty_ffi_wake_accept"),
            _lib: lib,
        })
    }

    /// Loads a runtime as `ffi.load(lib, cfg, {spin_us, poll_spin_us})` does.
    pub fn load_runtime(
        &self,
        path: &str,
        cfg: Option<&str>,
        spin_us: i32,
        poll_spin_us: i32,
    ) -> Result<Runtime<'_>, String> {
        let cpath = CString::new(path).map_err(|_| "library path has a NUL".to_string())?;
        let mut err = [0u8; 1024];
        let (cfg_ptr, cfg_len) = match cfg {
            Some(c) => (c.as_ptr().cast(), c.len() as c_int),
            None => (std::ptr::null(), -1),
        };
        let key = format!("{path}&{}", cfg.unwrap_or(""));
        // SAFETY: every pointer (key, path, cfg, err) is valid for the
        // stated lengths during the call; the core copies key and cfg
        // before returning.
        let rt = unsafe {
            (self.load)(
                key.as_ptr().cast(),
                key.len() as c_int,
                cpath.as_ptr(),
                cfg_ptr,
                cfg_len,
                65536,
                0,
                spin_us,
                poll_spin_us,
                err.as_mut_ptr().cast(),
                err.len() as c_int,
            )
        };
        if rt.is_null() {
            return Err(message(&err));
        }
        Ok(Runtime { core: self, rt })
    }

    /// Opens the wake-up socket and connects to it, as the dispatcher does.
    pub fn wake_channel(&self) -> Result<UnixStream, String> {
        let mut buf = [0u8; 1024];
        // SAFETY: buf holds 1024 writable bytes.
        let n = unsafe {
            (self.wake_listen)(self.channel, buf.as_mut_ptr().cast(), buf.len() as c_int)
        };
        if n < 0 {
            return Err(message(&buf));
        }
        let path = message(&buf[..n as usize]);
        let stream = UnixStream::connect(&path).map_err(|e| format!("connect {path}: {e}"))?;
        // SAFETY: buf holds 1024 writable bytes.
        if unsafe { (self.wake_accept)(self.channel, buf.as_mut_ptr().cast(), buf.len() as c_int) }
            != 0
        {
            return Err(message(&buf));
        }
        Ok(stream)
    }

    /// Waits for a just-posted task: true when answered, false when parked.
    pub fn wait(&self, task: Task, may_spin: bool) -> bool {
        // SAFETY: task was posted and not yet freed.
        unsafe { (self.wait)(task.0, may_spin as c_int) == 1 }
    }

    /// The answer of a finished task: (rc, response bytes).
    pub fn result(&self, task: Task) -> (i32, &[u8]) {
        let mut rsp: *const c_char = std::ptr::null();
        let mut len: c_int = 0;
        // SAFETY: task is finished and not freed; the bytes live until free,
        // which takes the task by value after the borrow ends.
        unsafe {
            let rc = (self.result)(task.0, &mut rsp, &mut len);
            let bytes = if rsp.is_null() {
                &[][..]
            } else {
                std::slice::from_raw_parts(rsp.cast::<u8>(), len as usize)
            };
            (rc, bytes)
        }
    }

    pub fn id(&self, task: Task) -> f64 {
        // SAFETY: task is live.
        unsafe { (self.id)(task.0) }
    }

    pub fn free(&self, task: Task) {
        // SAFETY: task is finished and freed exactly once, here.
        unsafe { (self.free)(task.0) }
    }

    /// Answered parked tasks, up to `out.len()`.
    pub fn drain(&self, out: &mut [Task]) -> usize {
        // SAFETY: Task is repr(transparent) over *mut c_void, and out has
        // out.len() writable slots.
        unsafe { (self.drain)(self.channel, out.as_mut_ptr().cast(), out.len() as c_int) as usize }
    }

    /// 0 when the dispatcher may sleep (a push will wake it).
    pub fn prepare_sleep(&self) -> i32 {
        // SAFETY: the channel is the host's own, open for the process.
        unsafe { (self.prepare_sleep)(self.channel) }
    }
}

impl Runtime<'_> {
    /// Posts `req` with call id `id`. The bytes must outlive the task.
    pub fn post(&self, req: &[u8], id: f64) -> Result<Task, i32> {
        let mut err: c_int = 0;
        // SAFETY: req is valid for its length; the caller keeps it alive
        // until the task is freed.
        let t = unsafe {
            (self.core.post)(
                self.rt,
                self.core.channel,
                req.as_ptr().cast(),
                req.len() as c_int,
                id,
                &mut err,
            )
        };
        if t.is_null() {
            Err(err)
        } else {
            Ok(Task(t))
        }
    }
}

impl Drop for Runtime<'_> {
    fn drop(&mut self) {
        // SAFETY: rt came from resty_ffi_runtime_load; unloaded once, here.
        unsafe { (self.core.unload)(self.rt) }
    }
}

/// CPU time of this whole process (every thread, runtime threads included).
pub fn process_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
