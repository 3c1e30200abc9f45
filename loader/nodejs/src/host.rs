//! The C++ host object (host/host.cc), carried inside this library.
//!
//! build.rs compiles it into a small shared object whose references to
//! node, V8 and libuv are left for the dynamic linker; its bytes are part
//! of this library. [`open`] runs once libnode is loaded RTLD_GLOBAL: it
//! writes the bytes into an anonymous memory file (memfd), dlopens that
//! (its references resolve in libnode and libuv now) and takes the host's
//! functions with dlsym. Nothing is written to disk; the object stays
//! loaded for the life of the process.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

use crate::napi;
use resty_ffi_loader::dlerror;

const OBJECT: &[u8] = include_bytes!(env!("FFI_NODEJS_HOST"));

pub type UvCb = unsafe extern "C" fn(*mut c_void);

pub type RunFn = unsafe extern "C" fn(
    *const *const c_char,
    c_int,
    *const c_char,
    unsafe extern "C" fn(napi::RawEnv, napi::RawValue) -> napi::RawValue,
    unsafe extern "C" fn(*mut c_void, c_int, *const c_char),
    *mut c_void,
    unsafe extern "C" fn(c_int),
    c_int,
) -> c_int;
pub type WatchFn = unsafe extern "C" fn(*mut c_void, c_int, UvCb, *mut c_void) -> *mut c_void;
pub type IdleNewFn = unsafe extern "C" fn(*mut c_void, UvCb, *mut c_void) -> *mut c_void;
pub type HandleFn = unsafe extern "C" fn(*mut c_void);

/// The host's functions (see host/host.cc for what each does).
pub struct Host {
    pub run: RunFn,
    pub watch: WatchFn,
    pub unwatch: HandleFn,
    pub idle_new: IdleNewFn,
    pub idle_start: HandleFn,
    pub idle_stop: HandleFn,
    pub idle_close: HandleFn,
}

static HOST: OnceLock<Host> = OnceLock::new();

/// The host, once [`open`] succeeded.
pub fn get() -> &'static Host {
    HOST.get()
        .expect("the host is used only after Node started")
}

/// Loads the host object; libnode must be loaded RTLD_GLOBAL already.
pub fn open() -> Result<&'static Host, String> {
    if let Some(h) = HOST.get() {
        return Ok(h);
    }
    // SAFETY: memfd_create with a C string name; the fd is ours.
    let fd = unsafe { libc::memfd_create(c"resty-ffi-node-host".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
    }
    let mut written = 0;
    while written < OBJECT.len() {
        // SAFETY: writes from a static byte slice to our fd.
        let n = unsafe {
            libc::write(
                fd,
                OBJECT[written..].as_ptr().cast(),
                OBJECT.len() - written,
            )
        };
        if n <= 0 {
            let e = std::io::Error::last_os_error();
            // SAFETY: our fd, closed once.
            unsafe { libc::close(fd) };
            return Err(format!("writing the host object: {e}"));
        }
        written += n as usize;
    }
    let path = std::ffi::CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL");
    // SAFETY: dlopen of the object build.rs made; its initialisers are the
    // C++ runtime's only. The mapping outlives the fd, closed right after.
    let h = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    // SAFETY: our fd, closed once.
    unsafe { libc::close(fd) };
    if h.is_null() {
        return Err(format!("cannot load the loader's Node host: {}", dlerror()));
    }
    let sym = |name: &CStr| -> Result<*mut c_void, String> {
        // SAFETY: a live handle and a C string.
        let p = unsafe { libc::dlsym(h, name.as_ptr()) };
        if p.is_null() {
            Err(format!("the Node host has no {}", name.to_string_lossy()))
        } else {
            Ok(p)
        }
    };
    // SAFETY: each symbol is defined in host/host.cc with the signature the
    // field declares.
    let host = unsafe {
        Host {
            run: std::mem::transmute::<*mut c_void, RunFn>(sym(c"resty_node_run")?),
            watch: std::mem::transmute::<*mut c_void, WatchFn>(sym(c"resty_uv_watch")?),
            unwatch: std::mem::transmute::<*mut c_void, HandleFn>(sym(c"resty_uv_unwatch")?),
            idle_new: std::mem::transmute::<*mut c_void, IdleNewFn>(sym(c"resty_uv_idle_new")?),
            idle_start: std::mem::transmute::<*mut c_void, HandleFn>(sym(c"resty_uv_idle_start")?),
            idle_stop: std::mem::transmute::<*mut c_void, HandleFn>(sym(c"resty_uv_idle_stop")?),
            idle_close: std::mem::transmute::<*mut c_void, HandleFn>(sym(c"resty_uv_idle_close")?),
        }
    };
    let _ = HOST.set(host);
    Ok(HOST.get().expect("set above"))
}
