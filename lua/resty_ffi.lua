-- resty_ffi: the lua-resty-ffi compatible entry point.
--
-- require("resty_ffi") installs ngx.load_ffi(lib, cfg, opts), which returns a
-- runtime whose every method posts a request: rt:anyname(req) returns
-- ok, res_or_rc, err. It is a thin adapter over resty.ffi that keeps the
-- original's observable behaviour, because third-party Lua code depends on
-- it:
--
-- - errors the bridge makes (queue full, unloaded, timeout, bad argument)
--   come back as `false, msg`; a runtime's own errors stay `false, rc, msg`;
-- - no default call timeout (opts.timeout and a per-call timeout still
--   work);
-- - every loader name the original used (ffi_python3, resty_ffi_python,
--   ffi_java) and LuaJIT's ffi.load naming (resty.ffi does both).
--
-- require("resty.ffi").load keeps our own shapes: a 60 s default timeout
-- and `false, nil, msg` for bridge errors.

local resty_ffi = require "resty.ffi"

-- `ok, nil, msg` (a bridge error) becomes `ok, msg`.
local function compat_shape(ok, a, b)
    if not ok and a == nil then
        return false, b
    end
    return ok, a, b
end

local load_ffi = resty_ffi.loader(function(call)
    return function(self, req, timeout)
        return compat_shape(call(self, req, timeout))
    end
end)

-- lua-resty-ffi's API is a field of ngx: setting it is the point
ngx.load_ffi = load_ffi -- luacheck: ignore 142

return resty_ffi
