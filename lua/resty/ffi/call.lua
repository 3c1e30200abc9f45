-- resty.ffi.call: one call to a runtime, the hot path.
--
-- rt:anyname(req [, timeout]) posts the request to the runtime's task
-- queue in the core (the string is borrowed, not copied), spins briefly
-- for the answer when nothing else of this VM is parked, and otherwise
-- parks on an ngx.semaphore until the dispatcher hands the answer over or
-- the timeout passes. See DESIGN.md, "The fast path": this file must stay
-- free of closure creation and other NYI operations, with hot globals in
-- locals (`-jv` shows trace aborts; benches/README.md measures it).

local ffi = require "ffi"
local semaphore = require "ngx.semaphore"
local C = require("resty.ffi.lib").C
local channel = require "resty.ffi.channel"
local dispatcher = require "resty.ffi.dispatcher"
local flush = require "resty.ffi.flush"

local ngx = ngx
local get_phase = ngx.get_phase
local exiting = ngx.worker.exiting
local log = ngx.log
local ERR = ngx.ERR
local sema_new = semaphore.new
local type = type
local tostring = tostring
local setmetatable = setmetatable

local ch = channel.channel
local take_result = channel.take_result
local parked = channel.parked
local add_waiter = channel.add
local give_up = channel.give_up
local drain = channel.drain
local dispatcher_looping = dispatcher.looping
local arm_sweep = dispatcher.arm_sweep
local ensure_dispatcher = dispatcher.ensure
local wake_dispatcher = dispatcher.wake
local flush_ready = flush.ready
local flush_request = flush.request

local _M = { _VERSION = "0.1.0" }

-- ngx.semaphore takes milliseconds in a C int: longer waits are chunked,
-- and a timeout this long or longer means "until answered".
local MAX_WAIT = 1e6
_M.MAX_WAIT = MAX_WAIT
local POLL_INTERVAL = dispatcher.POLL_INTERVAL

-- Phases whose code may yield, and so may wait for a runtime.
-- (ssl_client_hello is not one: on nginx-lua 0.10.23 any yield there,
-- even ngx.sleep, aborts the handshake.)
local YIELDABLE = {
    rewrite = true, access = true, content = true, timer = true,
    ssl_cert = true, ssl_session_fetch = true,
}
_M.YIELDABLE = YIELDABLE

-- Runtime object -> its state (rt: the core's runtime, false once
-- unloaded; core: kept after unload, for __stats; key, cache, timeout,
-- max_queue). Kept here, where no method name reaches it.
local state_of = setmetatable({}, { __mode = "k" })
_M.state_of = state_of

local next_id = 0
local errp = ffi.new("int[1]")

-- Checks a timeout: true and the seconds to wait (nil: until answered),
-- or false and why not.
local function check_timeout(v, what)
    if type(v) ~= "number" or v ~= v or v <= 0 then
        return false, what .. " must be a positive number of seconds "
               .. "(math.huge: until answered), got " .. tostring(v)
    end
    if v >= MAX_WAIT then
        return true, nil
    end
    return true, v
end
_M.check_timeout = check_timeout

-- Why a runtime object cannot be called.
local function method_error(self)
    if state_of[self] == nil then
        return "resty_ffi: call runtime methods with a colon, rt:method(req), "
               .. "not rt.method(req)"
    end
    return "resty_ffi: task queue is finished: the runtime is unloaded"
end
_M.method_error = method_error

local function post_error(st, code)
    if code == 1 then
        return "resty_ffi: post failed, queue full (max_queue "
               .. st.max_queue .. "): the runtime is not keeping up"
    elseif code == 2 then
        return "resty_ffi: task queue is finished: the runtime is unloaded"
    elseif code == 4 then
        return "resty_ffi: post failed: too many calls in flight in this worker"
    end
    return "resty_ffi: cannot post the call (code " .. tostring(code) .. ")"
end
_M.post_error = post_error

-- Waiters of parked calls, kept for the next call that parks: a waiter is
-- a table with its own semaphore, and making both per call (a table, a
-- semaphore, its finalizer) cost more than the rest of the park path. A
-- waiter goes back only when its semaphore's one post was consumed by its
-- wait, so every pooled semaphore has a count of 0.
local POOL_MAX = 4096
local pool = {}
local npool = 0

local function take_waiter(req, task)
    if npool == 0 then
        return { sema = sema_new(), req = req, task = task }
    end
    local w = pool[npool]
    pool[npool] = nil
    npool = npool - 1
    w.req, w.task = req, task
    return w
end

local function give_back(w)
    if npool < POOL_MAX then
        w.req, w.task, w.ok, w.res, w.err, w.done = nil, nil, nil, nil, nil, nil
        npool = npool + 1
        pool[npool] = w
    end
end

-- One wait on the waiter's semaphore, at most `seconds`: whether the
-- answer was handed over, whether the semaphore's post was consumed (the
-- waiter may then be reused), and whether it timed out with no answer
-- (the caller may wait again).
local function wait_once(w, id, seconds)
    local ok, err = w.sema:wait(seconds)
    if ok then
        return true, true, false
    end
    if w.done then
        return true, false, false
    end
    if err ~= "timeout" then
        log(ERR, "resty_ffi: waiting for call ", id, " failed: ", err)
        return false, false, false
    end
    return false, false, true
end

-- The rest of a wait until answered (nil timeout), in chunks of MAX_WAIT
-- seconds: kept out of wait_sema so the common path has no loop (a loop
-- there aborts the trace of every call that parks).
local function wait_forever(w, id)
    while true do
        local done, reuse, again = wait_once(w, id, MAX_WAIT)
        if not again then
            return done, reuse
        end
    end
end

-- Waits on the semaphore; nil timeout waits until answered. Returns
-- whether the answer was handed over, and whether the semaphore's post was
-- consumed.
local function wait_sema(w, id, timeout)
    local done, reuse, again = wait_once(w, id, timeout or MAX_WAIT)
    if not again or timeout ~= nil then
        return done, reuse
    end
    return wait_forever(w, id)
end

-- Waits while the dispatcher's loop does not run: its timer is not due
-- yet, or was dropped (lua_max_running_timers), or cannot be set (the
-- worker exits). In slices of POLL_INTERVAL, handing the channel's answers
-- over between them (ours among them: our semaphore is posted then), and
-- on a plain wait once the loop runs. Same returns as wait_sema.
local function wait_polling(w, id, timeout)
    local waited = 0
    while true do
        ensure_dispatcher()
        local done, reuse, again = wait_once(w, id, POLL_INTERVAL)
        if not again then
            return done, reuse
        end
        waited = waited + POLL_INTERVAL
        if timeout ~= nil and waited >= timeout then
            return false, false
        end
        if dispatcher_looping() then
            return wait_sema(w, id, timeout and timeout - waited)
        end
        drain()
    end
end

-- Waits for the answer to a call that did not come while spinning.
local function park(rt, task, id, req, timeout)
    local w = take_waiter(req, task)
    add_waiter(id, w)
    local done, reuse
    if dispatcher_looping() then
        arm_sweep()
        done, reuse = wait_sema(w, id, timeout)
    else
        done, reuse = wait_polling(w, id, timeout)
    end
    -- Exactly one of "answered" and "timed out": an answer handed over in
    -- the same cycle as the timeout stands (give_up refuses then).
    if done or not give_up(id, w, req) then
        local ok, res, err = w.ok, w.res, w.err
        if reuse then
            give_back(w)
        end
        if ok == nil then
            -- handed over, but reading it failed (drain logged why)
            return false, nil, "resty_ffi: the answer could not be read"
        end
        return ok, res, err
    end
    -- Timed out: the runtime may still answer; the request stays alive for
    -- it, and the dispatcher frees the late answer. The runtime can tell
    -- nobody waits (resty_ffi_task_cancelled) and stop early.
    C.resty_ffi_task_cancel(task)
    C.resty_ffi_runtime_timed_out(rt)
    if exiting() then
        wake_dispatcher()
    end
    return false, nil, "resty_ffi: call timed out after "
           .. tostring(timeout or MAX_WAIT) .. " s"
end

-- rt:anyname(req [, timeout]) -> ok, res_or_rc, err
local function call(self, req, timeout)
    local st = state_of[self]
    local rt = st and st.rt
    if not rt then
        return false, nil, method_error(self)
    end
    local phase = get_phase()
    if not YIELDABLE[phase] then
        return false, nil, "resty_ffi: cannot wait for a runtime in the "
               .. phase .. " phase (it cannot yield); call from rewrite, "
               .. "access, content or a timer (ngx.timer.at)"
    end
    local len = 0
    if req ~= nil then
        if type(req) ~= "string" then
            return false, nil, "resty_ffi: request must be a string or nil, "
                   .. "got " .. type(req)
        end
        len = #req
    end
    if timeout == nil then
        timeout = st.timeout
    else
        local ok, t = check_timeout(timeout, "the call's timeout")
        if not ok then
            return false, nil, "resty_ffi: " .. t
        end
        timeout = t
    end
    next_id = next_id + 1
    local id = next_id
    -- under load (calls parked) the runtime's threads are woken once this
    -- cycle, for every call posted in it (resty.ffi.flush); otherwise the
    -- post wakes one now and the caller may spin for the answer
    local nparked = parked()
    local task
    if nparked > 0 and flush_ready() then
        task = C.resty_ffi_post_deferred(rt, ch, req, len, id, errp)
        if task ~= nil then
            flush_request(st)
        end
    else
        task = C.resty_ffi_post(rt, ch, req, len, id, errp)
    end
    if task == nil then
        return false, nil, post_error(st, errp[0])
    end
    if C.resty_ffi_wait(task, nparked == 0 and 1 or 0) == 1 then
        return take_result(task)
    end
    return park(rt, task, id, req, timeout)
end
_M.call = call

return _M
