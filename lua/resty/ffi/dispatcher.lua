-- resty.ffi.dispatcher: the light thread that wakes parked calls.
--
-- One dispatcher per Lua VM, started from a timer when a call parks (or a
-- runtime loads, so its log lines have a writer). It sleeps on a private
-- unix socket; runtime threads write a byte there when an answer to a
-- parked call arrives, and the dispatcher drains the answers in batches,
-- hands each to its waiter and writes the runtimes' log lines. When no such
-- socket can be made (no writable TMPDIR) it polls instead.
--
-- Stopping: a worker that exits runs pending timers early; one such timer
-- (or, with many VMs, a short one re-armed while the dispatcher runs) wakes
-- the dispatcher, which sees ngx.worker.exiting() and returns once nothing
-- is parked. With lua_code_cache off it also stops as soon as nothing of
-- its VM waits, so the VM can be freed. See DESIGN.md, "Facts from the
-- same experiment".

local ffi = require "ffi"
local C = require("resty.ffi.lib").C
local channel = require "resty.ffi.channel"
local runtime_log = require "resty.ffi.log"
local timer_thread = require "resty.ffi.timer_thread"

local ffi_string = ffi.string
local ngx = ngx
local exiting = ngx.worker.exiting
local timer_at = ngx.timer.at
local ngx_sleep = ngx.sleep
local ngx_now = ngx.now
local log = ngx.log
local ERR = ngx.ERR
local pcall = pcall

local ch = channel.channel
local drain = channel.drain
local sweep = channel.sweep
local parked = channel.parked
local pending = channel.pending
local many_vms = channel.many_vms
local wake_streams = channel.wake_streams
local drain_logs = runtime_log.drain

local _M = { _VERSION = "0.1.0" }

local FOREVER_MS = 86400 * 1000
local RESTART_DELAY = 0.1
local POLL_INTERVAL = 0.001
local POLL_IDLE_INTERVAL = 0.1
-- With many VMs a year-long timer would keep this VM alive for a year: a
-- short timer re-armed while the dispatcher runs does the same job, and
-- keeps the VM at most that long once the dispatcher stopped.
local EXIT_WATCH = 0.1
-- How often parked calls are checked for a caller that went away
-- (channel.sweep), while any is parked (seconds).
local SWEEP_EVERY = 1

_M.POLL_INTERVAL = POLL_INTERVAL

local thread              -- the dispatcher's timer thread (below)
local exit_timer_set = false
local wake_mode = "socket" -- or "polling" once no wake socket can be made
local msg_buf = ffi.new("char[?]", 1024)

-- Wakes the dispatcher (it re-checks whether it may stop).
local function wake()
    C.resty_ffi_wake(ch)
end
_M.wake = wake

local function on_worker_exit(premature)
    if premature then
        -- wake the dispatcher so it sees ngx.worker.exiting()
        wake()
    end
end

local function exit_watch(premature)
    if premature then
        wake()
    elseif thread.looping then
        timer_at(EXIT_WATCH, exit_watch)
    end
end

local next_sweep = 0
local sweep_timer_set = false

-- Gives up parked calls whose caller went away, at most every SWEEP_EVERY
-- seconds (`now`: at once).
local function sweep_due(now)
    if parked() > 0 and (now or ngx_now() >= next_sweep) then
        next_sweep = ngx_now() + SWEEP_EVERY
        return sweep()
    end
    return 0
end

-- The sweep's own timer, set while calls are parked: a dispatcher with
-- nothing to hand over sleeps on its socket (a read timeout there would
-- log an error each time). At worker exit it runs early and wakes the
-- dispatcher, which sweeps before it decides whether it may stop.
local arm_sweep

local function on_sweep(premature)
    sweep_timer_set = false
    if premature then
        wake()
        return
    end
    -- (due by construction: the rate limit is for the polling loop, and
    -- the timer's clock may read a hair early)
    sweep_due(true)
    arm_sweep()
end

arm_sweep = function()
    if not sweep_timer_set and parked() > 0 then
        sweep_timer_set = timer_at(SWEEP_EVERY, on_sweep) and true
    end
end

-- For a call or stream that parks: the loop arms the sweep only when it
-- wakes, and one that went to sleep with nothing parked wakes for an
-- answer or a log line, which a runtime that never answers never sends;
-- calls parked then, their callers gone, stayed parked for ever.
_M.arm_sweep = arm_sweep

-- Whether the dispatcher may stop: the worker exits and nothing is parked,
-- or (many VMs) nothing of this VM waits at all, so the VM can go.
local function may_stop()
    if exiting() then
        -- (a call whose caller went away would hold the exit forever)
        sweep_due(true)
        if parked() == 0 then
            return true
        end
        -- streams end when the worker exits (their readers see why)
        wake_streams()
        -- live readers woken run before this light thread does again; a
        -- stream whose reader is gone is seen so by a second sweep then
        ngx_sleep(0.001)
        if sweep_due(true) > 0 then
            ngx_sleep(0.001)
            sweep_due(true)
        end
        if parked() == 0 then
            return true
        end
    end
    return not pending() and many_vms()
end

local function poll_loop()
    C.resty_ffi_log_attach(ch, runtime_log.filter())
    while true do
        drain()
        drain_logs()
        sweep_due(exiting())
        if not pending() or (exiting() and parked() == 0) then
            return true
        end
        if exiting() then
            wake_streams()
        end
        ngx_sleep(parked() > 0 and POLL_INTERVAL or POLL_IDLE_INTERVAL)
    end
end

local function fall_back_to_polling(why)
    wake_mode = "polling"
    log(ERR, "resty_ffi: no wake-up socket (", why, "); answers to parked ",
        "calls are polled every ", POLL_INTERVAL * 1000, " ms instead, ",
        "which adds latency: set TMPDIR to a short folder the worker user ",
        "can write")
    return poll_loop()
end

local function socket_loop()
    local n = C.resty_ffi_wake_listen(ch, msg_buf, 1024)
    if n < 0 then
        return fall_back_to_polling(ffi_string(msg_buf))
    end
    local sock = ngx.socket.tcp()
    local ok, err = sock:connect("unix:" .. ffi_string(msg_buf, n))
    if not ok then
        C.resty_ffi_wake_accept(ch, msg_buf, 1024)
        return fall_back_to_polling("cannot connect it: " .. err)
    end
    if C.resty_ffi_wake_accept(ch, msg_buf, 1024) ~= 0 then
        sock:close()
        return nil, ffi_string(msg_buf)
    end
    sock:settimeouts(1000, 1000, FOREVER_MS)
    C.resty_ffi_log_attach(ch, runtime_log.filter())
    if many_vms() then
        timer_at(EXIT_WATCH, exit_watch)
    elseif not exit_timer_set then
        exit_timer_set = timer_at(FOREVER_MS / 1000, on_worker_exit) and true
    end
    while true do
        drain()
        drain_logs()
        if may_stop() then
            sock:close()
            return true
        end
        arm_sweep()
        if C.resty_ffi_prepare_sleep(ch) == 0 then
            local data, rerr = sock:receiveany(4096)
            if not data and rerr ~= "timeout" then
                sock:close()
                return nil, "wake socket: " .. rerr
            end
        end
    end
end

local function dispatch_loop()
    if wake_mode == "polling" then
        return poll_loop()
    end
    return socket_loop()
end

local function dispatch()
    local ok, res, err = pcall(dispatch_loop)
    C.resty_ffi_log_detach(ch)
    if not ok or not res then
        log(ERR, "resty_ffi: dispatcher stopped: ", ok and err or res)
    end
    if pending() and not (exiting() and parked() == 0) then
        -- retry soon, not at once: a broken environment must not turn
        -- into a busy loop of timers
        thread:start((ok and res) and 0 or RESTART_DELAY)
    end
end

thread = timer_thread.new("dispatcher", dispatch)

-- Whether the dispatcher's loop runs now: answers to parked calls are
-- handed over as they come. Until it does, waiters poll (call.lua).
function _M.looping()
    return thread.looping
end

-- Sets the dispatcher's timer unless its loop runs or a timer is due: true
-- if one runs or is on its way, nil and why not (the worker exits). A
-- timer nginx dropped (timer_thread.lua) is logged, and another set.
function _M.ensure()
    if thread:on_its_way() then
        return true
    end
    if thread:dropped() then
        log(ERR, "resty_ffi: the dispatcher's timer did not run within ",
            timer_thread.START_GRACE, " s of being due ",
            "(lua_max_running_timers reached?); parked calls poll for ",
            "their answers every ",
            POLL_INTERVAL * 1000, " ms meanwhile: raise ",
            "lua_max_running_timers")
    end
    return thread:start(0)
end

-- "socket", or "polling" when no wake socket could be made.
function _M.wake_mode()
    return wake_mode
end

return _M
