-- resty.ffi.log: runtimes' log lines into nginx's error.log.
--
-- Runtime threads cannot call nginx: they log through the core
-- (resty_ffi_log), which queues the lines; the dispatcher writes them with
-- ngx.errlog.raw_log at their own level, so reopen and the error_log level
-- work as for any other line. Lines nginx would not write are dropped in
-- the core already (the filter level is handed over).

local ffi = require "ffi"
local C = require("resty.ffi.lib").C

local ffi_string = ffi.string
local ngx = ngx
local log = ngx.log
local pcall = pcall

local _M = { _VERSION = "0.1.0" }

local LOG_BATCH = 256
local LINE_MAX = 4096

local log_buf = ffi.new("char[?]", LINE_MAX)
local levelp = ffi.new("int[1]")
local raw_log_ok, errlog = pcall(require, "ngx.errlog")
local raw_log = raw_log_ok and errlog.raw_log or nil

-- The level below which nginx writes nothing (error_log's level).
function _M.filter()
    if raw_log_ok and errlog.get_sys_filter_level then
        local ok, level = pcall(errlog.get_sys_filter_level)
        if ok and level then
            return level
        end
    end
    return ngx.DEBUG
end

-- Writes up to a batch of queued runtime log lines through nginx, at their
-- level.
function _M.drain()
    for _ = 1, LOG_BATCH do
        local n = C.resty_ffi_log_take(log_buf, LINE_MAX, levelp)
        if n < 0 then
            return
        end
        local msg = ffi_string(log_buf, n)
        if raw_log then
            raw_log(levelp[0], msg)
        else
            log(levelp[0], msg)
        end
    end
end

return _M
