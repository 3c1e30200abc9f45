-- resty.ffi.flush: one wake-up of a runtime's threads per event-loop cycle
-- under load, instead of one per call.
--
-- A call made while other calls of this VM are parked (the worker is busy)
-- is posted deferred (resty_ffi_post_deferred): its runtime's sleeping
-- threads are not woken for it at once. The call asks for a flush, which
-- posts this module's semaphore the first time in a cycle; the flusher, a
-- light thread waiting on that semaphore, is resumed once nginx has run
-- the cycle's other handlers (posted events come after them), and wakes
-- each runtime that got deferred calls once, for all of them
-- (resty_ffi_runtime_flush). The runtime threads then take the whole batch
-- and sleep again rather than spin between calls. See benches/README.md.
--
-- Deferring needs the flusher's loop running: until it runs (its timer
-- may even be dropped when lua_max_running_timers is reached: then another
-- is set a second later), while the worker exits, and with more than one
-- Lua VM per worker (lua_code_cache off: a flusher would keep its VM
-- alive) calls are posted as usual.

local semaphore = require "ngx.semaphore"
local C = require("resty.ffi.lib").C
local channel = require "resty.ffi.channel"
local timer_thread = require "resty.ffi.timer_thread"

local ngx = ngx
local exiting = ngx.worker.exiting
local timer_at = ngx.timer.at
local log = ngx.log
local ERR = ngx.ERR
local pcall = pcall

local many_vms = channel.many_vms

local _M = { _VERSION = "0.1.0" }

-- How long the flusher waits on its semaphore at a time (seconds; the
-- worker's exit wakes it sooner).
local IDLE_WAIT = 60
local RESTART_DELAY = 0.1

local sema = semaphore.new()
local thread              -- the flusher's timer thread: calls may be
                          -- deferred while its loop runs
local posted = false      -- the semaphore was posted for this cycle
local dirty = {}          -- runtimes' states with deferred calls to flush
local ndirty = 0

-- Wakes the runtimes of every deferred call so far.
local function flush_all()
    for i = 1, ndirty do
        local st = dirty[i]
        dirty[i] = nil
        st.dirty = false
        local rt = st.rt
        if rt then
            C.resty_ffi_runtime_flush(rt)
        end
    end
    ndirty = 0
end

local function loop()
    while true do
        local ok, err = sema:wait(IDLE_WAIT)
        posted = false
        flush_all()
        if exiting() then
            return true
        end
        if not ok and err ~= "timeout" then
            return nil, err
        end
    end
end

local start

local function flusher()
    local ok, res, err = pcall(loop)
    -- no yield from here to the end of the loop (timer_thread then sets
    -- `looping` false): a call made after it posts as usual, so nothing
    -- deferred is left behind
    flush_all()
    if not ok or not res then
        log(ERR, "resty_ffi: flusher stopped: ", ok and err or res)
        if not exiting() then
            start(RESTART_DELAY)
        end
    end
end

-- A timer that never fires but at worker exit (nginx runs pending timers
-- early then): wakes the flusher so that it stops at once.
local exit_timer_set = false
local FOREVER = 86400

local function on_worker_exit(premature)
    if premature then
        sema:post(1)
    else
        exit_timer_set = timer_at(FOREVER, on_worker_exit) and true
    end
end

thread = timer_thread.new("flusher", flusher)

start = function(delay)
    if thread:start(delay) then
        if not exit_timer_set then
            exit_timer_set = timer_at(FOREVER, on_worker_exit) and true
        end
    end
end

-- Whether a call may be posted deferred now: only while the flusher's
-- loop runs. Starts the flusher when it does not run and is not due (the
-- calls that find it stopped post as usual).
function _M.ready()
    if thread.looping then
        return true
    end
    if not thread:on_its_way() and not exiting() and not many_vms() then
        start(0)
    end
    return false
end

-- A call to the runtime of state `st` was posted deferred: flush it this
-- cycle.
function _M.request(st)
    if not st.dirty then
        st.dirty = true
        ndirty = ndirty + 1
        dirty[ndirty] = st
    end
    if not posted then
        posted = true
        sema:post(1)
    end
end

return _M
