//! What every language loader (loader/python3, loader/java, loader/nodejs)
//! shares, and nothing language-specific: the body of `libffi_init` (cfg
//! as text, panics caught, the error handed to the core), the cfg grammar
//! ([`cfg`]), the task ABI in safe Rust ([`task`]), logging through nginx,
//! thread names, and opening libraries (re-opening one with RTLD_GLOBAL,
//! dlerror's text).
//!
//! The core's functions are declared, not linked: the dynamic linker
//! resolves them from the already loaded `libresty_ffi.so`, exactly as for
//! any runtime. `resty_ffi_init_error` is looked up at run time, so a
//! loader still starts under a core without it.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::fmt::Display;
use std::panic::{catch_unwind, AssertUnwindSafe};

pub mod cfg;
pub mod task;

extern "C" {
    fn resty_ffi_log(level: c_int, msg: *const c_char, len: c_int);
}

/// nginx's levels, as Lua's `ngx.ERR` and friends.
pub const ERR: i32 = 4;

/// Logs one line through nginx at nginx level `level` (1 emerg ... 8
/// debug): the core queues it and nginx writes it, obeying `error_log`.
pub fn log(level: i32, msg: &str) {
    let len = msg.len().min(c_int::MAX as usize) as c_int;
    // SAFETY: msg is valid for len bytes during the call; the core copies it.
    unsafe { resty_ffi_log(level, msg.as_ptr().cast(), len) }
}

/// An error a loader's start can fail with: its text, and the code
/// `libffi_init` returns for it.
pub trait InitError: Display {
    fn rc(&self) -> i32;
    /// The error a caught panic becomes.
    fn from_panic(text: String) -> Self;
}

/// The body of a loader's `libffi_init`: reads `cfg` (NULL: empty), runs
/// `start(cfg, tq)` with panics caught, and on failure hands
/// "`name`: error" to the core (so `load_ffi` returns it, and Lua logs it
/// once) and returns the error's code (never 0).
///
/// # Safety
/// Per the runtime ABI: `cfg` is NULL or a NUL-terminated string valid
/// during the call.
// SAFETY: unsafe only for `cfg`; each loader's `libffi_init` passes the
// cfg the core gave it, a NUL-terminated copy alive during the call.
pub unsafe fn init<E: InitError>(
    name: &str,
    cfg: *const c_char,
    tq: *mut c_void,
    start: impl FnOnce(&str, usize) -> Result<(), E>,
) -> c_int {
    let cfg = if cfg.is_null() {
        String::new()
    } else {
        // SAFETY: per the ABI, cfg is NUL-terminated and valid during init.
        unsafe { CStr::from_ptr(cfg) }
            .to_string_lossy()
            .into_owned()
    };
    let err = match catch_unwind(AssertUnwindSafe(|| start(&cfg, tq as usize))) {
        Ok(Ok(())) => return 0,
        Ok(Err(e)) => e,
        Err(panic) => E::from_panic(format!("panic: {}", panic_text(&*panic))),
    };
    // Not logged here: Lua logs the load error once, with this text in it.
    let msg = format!("{name}: {err}");
    report_init_error(&msg);
    match err.rc() {
        0 => 10,
        rc => rc,
    }
}

/// The text of a caught panic.
pub fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// Hands the message to the core when it offers `resty_ffi_init_error`
/// (then `load_ffi` returns it to Lua); without it the message is only in
/// error.log and Lua sees the return code.
fn report_init_error(msg: &str) {
    type ReportFn = unsafe extern "C" fn(*const c_char);
    let Ok(msg) = CString::new(msg.replace('\0', " ")) else {
        return;
    };
    // SAFETY: dlsym on the global scope with a NUL-terminated name.
    let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"resty_ffi_init_error".as_ptr()) };
    if !sym.is_null() {
        // SAFETY: the core declares the symbol with this signature; it
        // copies the string before returning.
        unsafe { std::mem::transmute::<*mut c_void, ReportFn>(sym)(msg.as_ptr()) };
    }
}

/// Re-opens the already loaded library that holds the code at address
/// `addr` (a function's address as an integer) with RTLD_GLOBAL,
/// so code that finds symbols by name in the global scope (extension
/// modules, cffi's `dlopen(None)`, jnr-ffi, the FFM API) sees its symbols
/// whoever opened it and how. Returns the library's path.
pub fn make_global(addr: usize) -> Result<String, String> {
    // SAFETY: dladdr only reads the link map; info is plain data.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only looks the address up in the link map; it never
    // dereferences it.
    if unsafe { libc::dladdr(addr as *const c_void, &mut info) } == 0 || info.dli_fname.is_null() {
        return Err("dladdr found no library".into());
    }
    // SAFETY: dladdr set dli_fname to a NUL-terminated path.
    let path = unsafe { CStr::from_ptr(info.dli_fname) };
    // SAFETY: RTLD_NOLOAD only bumps the flags of a loaded library; the
    // handle is deliberately never closed (the library stays loaded).
    let h = unsafe {
        libc::dlopen(
            path.as_ptr(),
            libc::RTLD_NOW | libc::RTLD_NOLOAD | libc::RTLD_GLOBAL,
        )
    };
    let path = path.to_string_lossy().into_owned();
    if h.is_null() {
        return Err(format!("cannot make {path} global: {}", dlerror()));
    }
    Ok(path)
}

/// The text of the last dl* failure of this thread ("unknown error" when
/// dlerror has none).
pub fn dlerror() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated message.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown error".into()
    } else {
        // SAFETY: non-NULL: a C string owned by libc.
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

/// Names the calling OS thread (shown by top -H, ps -L, /proc/*/comm);
/// Linux keeps the first 15 bytes.
pub fn name_thread(name: &str) {
    let mut bytes: Vec<u8> = name.bytes().filter(|&b| b != 0).take(15).collect();
    bytes.push(0);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of any length and
    // applies to the calling thread only.
    unsafe { libc::prctl(libc::PR_SET_NAME, bytes.as_ptr() as libc::c_ulong, 0, 0, 0) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_text_reads_str_and_string_payloads() {
        let p = catch_unwind(|| panic!("plain")).unwrap_err();
        assert_eq!(panic_text(&*p), "plain");
        let p = catch_unwind(|| panic!("formatted {}", 7)).unwrap_err();
        assert_eq!(panic_text(&*p), "formatted 7");
    }

    #[test]
    fn make_global_names_the_library_holding_an_address() {
        let path = make_global(libc::malloc as *const () as usize).expect("libc is loaded");
        assert!(path.contains("libc"), "{path}");
    }
}
