//! The loader's crossings of the C ABI, in one place.
//!
//! - `libffi_init`, the entry point the core calls when Lua loads
//!   `ffi_java` (its body, shared with every loader, catches panics);
//! - the task ABI (poll, request, respond) and the helpers every loader
//!   shares, from `resty_ffi_loader`;
//! - waiting on a queue's space fd (streams whose window was full);
//! - making the core's symbols global.
//!
//! Raw task and queue pointers never leave the shared crate: this crate
//! sees addresses (`usize`, Java's `long`) and the owning [`TaskRef`].

use std::ffi::{c_char, c_int, c_void};

use crate::load;

pub use resty_ffi_loader::task::{
    finished, is_queue, poll, queue_space_fd, register_queue, try_poll, Chunk, TaskRef,
};
pub use resty_ffi_loader::{log, name_thread, panic_text};

/// Called by the core when Lua loads this library: parses `cfg`, creates
/// the JVM on first use, loads the class and starts it.
///
/// # Safety
/// Per the runtime ABI: `cfg` is NULL or a NUL-terminated string valid
/// during the call, `tq` a task queue of the core.
#[no_mangle]
pub unsafe extern "C" fn libffi_init(cfg: *mut c_char, tq: *mut c_void) -> c_int {
    // SAFETY: per this function's contract.
    unsafe {
        resty_ffi_loader::init("ffi_java", cfg, tq, |cfg, tq| {
            register_queue(tq);
            load::start(cfg, tq)
        })
    }
}

/// Re-opens the already loaded core with RTLD_GLOBAL, so runtimes that
/// find the three C functions by name (jnr-ffi's
/// `LibraryLoader.DEFAULT_LIBRARY`, the FFM API's default lookup) see them
/// even if the core was opened RTLD_LOCAL. The Lua layer already opens it
/// RTLD_GLOBAL; this makes it hold whoever loaded it.
pub fn make_core_global() -> Result<(), String> {
    resty_ffi_loader::make_global(resty_ffi_loader::task::core_symbol()).map(|_| ())
}

/// Waits up to `timeout_ms` for queue `tq`'s space fd (a stream of the
/// queue made room in its window, or was cancelled) and resets it. True
/// when it was readable; false on timeout or when the core has no fd.
/// Blocks the calling thread (a platform thread: `resty.ffi.Window`).
pub fn await_space(tq: usize, timeout_ms: i32) -> bool {
    let fd = queue_space_fd(tq);
    if fd < 0 {
        std::thread::sleep(std::time::Duration::from_millis(timeout_ms.max(0) as u64));
        return false;
    }
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; the fd is the core's, open for the
    // process's life.
    let n = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    if n <= 0 {
        return false;
    }
    let mut buf = [0u8; 8];
    // SAFETY: 8 writable bytes; the eventfd is non-blocking, so a reader
    // that lost the race reads nothing (EAGAIN) and returns at once.
    unsafe { libc::read(fd, buf.as_mut_ptr().cast(), 8) };
    true
}
