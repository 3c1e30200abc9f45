//! The loader's crossings of the C ABI, in one place.
//!
//! - `libffi_init`, the entry point the core calls when Lua loads
//!   `ffi_python3` (its body, shared with every loader, catches panics);
//! - the task ABI (poll, request, respond) and the helpers every loader
//!   shares, from `resty_ffi_loader`;
//! - making libpython's and the core's symbols global.
//!
//! Raw task and queue pointers never leave the shared crate: this crate
//! sees addresses (`usize`) and the owning [`TaskRef`].

use std::ffi::{c_char, c_int, c_void};

use crate::load;

pub use resty_ffi_loader::task::{
    finished, is_queue, poll, poll_batch, poll_spin, queue_arm, queue_fd, queue_space_fd,
    register_queue, try_poll, Chunk, Chunks, TaskRef,
};
pub use resty_ffi_loader::{log, name_thread};

/// Called by the core when Lua loads this library: parses `cfg`, creates
/// the interpreter on first use, imports the module and starts it.
///
/// # Safety
/// Per the runtime ABI: `cfg` is NULL or a NUL-terminated string valid
/// during the call, `tq` a task queue of the core.
#[no_mangle]
pub unsafe extern "C" fn libffi_init(cfg: *mut c_char, tq: *mut c_void) -> c_int {
    // SAFETY: per this function's contract.
    unsafe { resty_ffi_loader::init("ffi_python3", cfg, tq, load::start) }
}

/// Makes libpython's and the core's symbols global (see
/// [`resty_ffi_loader::make_global`]).
pub fn make_symbols_global() -> Result<(), String> {
    resty_ffi_loader::make_global(pyo3::ffi::Py_InitializeFromConfig as *const () as usize)?;
    resty_ffi_loader::make_global(resty_ffi_loader::task::core_symbol())?;
    Ok(())
}
