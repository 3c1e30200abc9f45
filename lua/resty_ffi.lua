-- resty_ffi: lua-resty-ffi compatible entry point.
--
-- require("resty_ffi") installs ngx.load_ffi(lib, cfg, opts), which returns a
-- runtime whose every method posts a request: rt:anyname(req) returns
-- ok, res_or_rc, err. Everything lives in resty.ffi; this only adds the
-- global entry point lua-resty-ffi users already call.

local resty_ffi = require "resty.ffi"

ngx.load_ffi = resty_ffi.load

return resty_ffi
