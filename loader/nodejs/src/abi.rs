//! The loader's crossings of the C ABI, in one place.
//!
//! - `libffi_init`, the entry point the core calls when Lua loads
//!   `ffi_nodejs` (its body, shared with every loader, catches panics);
//! - the task ABI (poll, request, respond) and the helpers every loader
//!   shares, from `resty_ffi_loader`;
//! - making the core's symbols global.
//!
//! Raw task and queue pointers never leave the shared crate: this crate
//! sees addresses (`usize`, JavaScript's BigInt) and the owning [`TaskRef`].

use std::ffi::{c_char, c_int, c_void};

use crate::load;

pub use resty_ffi_loader::task::{
    is_queue, poll, poll_spin, queue_arm, queue_fd, queue_space_fd, register_queue, try_poll,
    Chunk, TaskRef,
};
pub use resty_ffi_loader::{log, panic_text};

/// Called by the core when Lua loads this library: parses `cfg`, starts
/// Node on first use, loads the module and starts it.
///
/// # Safety
/// Per the runtime ABI: `cfg` is NULL or a NUL-terminated string valid
/// during the call, `tq` a task queue of the core.
#[no_mangle]
pub unsafe extern "C" fn libffi_init(cfg: *mut c_char, tq: *mut c_void) -> c_int {
    // SAFETY: per this function's contract.
    unsafe {
        resty_ffi_loader::init("ffi_nodejs", cfg, tq, |cfg, tq| {
            register_queue(tq);
            load::start(cfg, tq)
        })
    }
}

/// Re-opens the already loaded core with RTLD_GLOBAL, so native addons
/// that call the three C functions by name find them however Lua loaded
/// the core.
pub fn make_core_global() -> Result<(), String> {
    resty_ffi_loader::make_global(resty_ffi_loader::task::core_symbol()).map(|_| ())
}
