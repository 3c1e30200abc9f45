//! Log levels for lines the loader and Java code send to nginx's
//! error.log through the core (`resty_ffi_log`): nginx writes them at their
//! level, so they obey `error_log` and follow `nginx -s reopen`.

/// nginx's levels, as Lua's `ngx.ERR` and friends (and `resty.ffi.Log`).
pub const ERR: i32 = 4;
