//! Log levels for lines the loader and Python code send to nginx's
//! error.log through the core (`resty_ffi_log`): nginx writes them at their
//! level, so they obey `error_log` and follow `nginx -s reopen`.

/// nginx's levels, as Lua's `ngx.ERR` and friends.
pub const ERR: i32 = 4;
