-- resty.ffi.log: runtimes' log lines into nginx's error.log.
--
-- Runtime threads cannot call nginx: they log through the core
-- (resty_ffi_log), which queues the lines; the dispatcher writes them at
-- their own level through the cycle's log, as nginx writes its own lines,
-- so reopen, the error_log level and every error_log target work as for
-- any other line. The cycle's log carries no request's context: a runtime
-- line is not about whichever request started the dispatcher's timer, and
-- it reads the same as the lines the core writes itself while no
-- dispatcher runs ("date [level] pid#tid: text"). Where the nginx binary
-- does not export ngx_cycle and ngx_log_error_core, ngx.errlog.raw_log
-- writes them instead. Lines nginx would not write are dropped in the core
-- already (the filter level is handed over).

local ffi = require "ffi"
local C = require("resty.ffi.lib").C
local channel = require "resty.ffi.channel"

local ffi_string = ffi.string
local ngx = ngx
local log = ngx.log
local pcall = pcall

local _M = { _VERSION = "0.1.0" }

local timer_at = ngx.timer.at

local LOG_BATCH = 256
local LINE_MAX = 4096

local log_buf = ffi.new("char[?]", LINE_MAX)
local levelp = ffi.new("int[1]")
local raw_log_ok, errlog = pcall(require, "ngx.errlog")
local raw_log = raw_log_ok and errlog.raw_log or nil

-- nginx's own logger and the cycle (only the head of ngx_cycle_t, whose
-- first three members have not moved since nginx 1.0).
pcall(ffi.cdef, [[
typedef struct {
    void ****conf_ctx;
    void *pool;
    void *log;
} resty_ffi_ngx_cycle_head_t;
extern resty_ffi_ngx_cycle_head_t *ngx_cycle;
void ngx_log_error_core(uintptr_t level, void *log, int err,
                        const char *fmt, ...);
]])
local cycle_log_ok = pcall(function()
    return ffi.C.ngx_log_error_core ~= nil and ffi.C.ngx_cycle.log ~= nil
end)
local FMT = "%*s"
local size_t = ffi.typeof("size_t")

-- Writes `n` bytes of `buf` at `level` with no request's context.
local function write_line(level, buf, n)
    if cycle_log_ok then
        ffi.C.ngx_log_error_core(level, ffi.C.ngx_cycle.log, 0, FMT,
                                 size_t(n), buf)
    elseif raw_log then
        raw_log(level, ffi_string(buf, n))
    else
        log(level, ffi_string(buf, n))
    end
end

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

-- The core collapses repeated lines and drops those over the rate; when
-- their second is over it sums them up ("... (repeated N times in the last
-- second)"). A timer wakes the dispatcher then, so the summary is written
-- even when no other line or answer comes.
local roll_timer = false
local function on_roll()
    roll_timer = false
    C.resty_ffi_wake(channel.channel)
end

-- Writes up to a batch of queued runtime log lines through nginx, at their
-- level.
function _M.drain()
    for _ = 1, LOG_BATCH do
        local n = C.resty_ffi_log_take(log_buf, LINE_MAX, levelp)
        if n < 0 then
            break
        end
        write_line(levelp[0], log_buf, n)
    end
    if not roll_timer then
        local ms = C.resty_ffi_log_roll_ms()
        if ms >= 0 then
            roll_timer = timer_at(ms / 1000 + 0.002, on_roll) and true
        end
    end
end

return _M
