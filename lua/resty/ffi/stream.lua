-- resty.ffi.stream: a call answered in chunks, read as they come.
--
--     local st, err = rt:__stream(req [, timeout])
--     while true do
--         local chunk, err, rc = st:recv([timeout])
--         if not chunk then break end   -- nil at the end; nil, msg[, rc]
--         ngx.print(chunk)
--         if not ngx.flush(true) then break end
--     end
--     st:close()
--
-- The request is posted as a stream (the core's resty_ffi_post_stream): the
-- runtime sends chunks with resty_ffi_respond_chunk, at most a window
-- ahead of the reader (bytes and chunks unread, opts.stream_window_bytes /
-- opts.stream_window_chunks), and ends the task as any call. A chunk that
-- finds the reader waiting pushes a notice through this VM's completion
-- channel; the dispatcher posts the stream's semaphore; recv takes the
-- chunk from the core. The final answer comes the same way, after every
-- notice. Closing cancels: the core frees unread chunks and tells the
-- runtime (respond_chunk returns 1); the task itself is freed by its final
-- answer, like a call that timed out. A stream nobody closed is closed when
-- collected.
--
-- Errors: recv returns nil, msg, rc when the runtime ended with rc ~= 0
-- (after the chunks sent before), nil, msg for the bridge's own errors
-- (timeout, closed). `timeout` on __stream bounds the whole stream (the
-- stream is then closed), on recv the wait for one chunk (the stream stays
-- usable).

local ffi = require "ffi"
local semaphore = require "ngx.semaphore"
local C = require("resty.ffi.lib").C
local channel = require "resty.ffi.channel"
local call = require "resty.ffi.call"
local dispatcher = require "resty.ffi.dispatcher"

local ffi_string = ffi.string
local ffi_gc = ffi.gc
local ffi_new = ffi.new
local ngx = ngx
local now = ngx.now
local get_phase = ngx.get_phase
local exiting = ngx.worker.exiting
local update_time = ngx.update_time
local sema_new = semaphore.new
local setmetatable = setmetatable
local tostring = tostring
local type = type

local ch = channel.channel
local take_result = channel.take_result
local add_waiter = channel.add
local give_up = channel.give_up
local drain = channel.drain

local _M = { _VERSION = "0.1.0" }

-- ngx.semaphore takes milliseconds in a C int: longer waits are chunked.
local MAX_WAIT = 1e6
local POLL_INTERVAL = dispatcher.POLL_INTERVAL

-- Stream ids count down from -1, so they never meet plain calls' ids.
local next_id = 0
local errp = ffi.new("int[1]")
-- recv takes up to TAKE chunks from the core at once (one lock, one FFI
-- call) and hands them out one per recv.
local TAKE = 64
local rspp = ffi.new("const char *[?]", TAKE)
local lenp = ffi.new("int[?]", TAKE)

local stream = {}
local mt = { __index = stream }

-- Ends the stream on the Lua side: cancels it in the core unless its final
-- answer is here already, in which case the task is freed now.
local function finish(w)
    if w.finished then
        return
    end
    w.finished = true
    local task = w.task
    if w.ended then
        -- the final answer was handed over but not read: free it
        take_result(task)
    elseif give_up(w.id, w, w.req) then
        -- the runtime may still be sending: tell it, and free its late
        -- final answer when it comes (as for a call that timed out)
        C.resty_ffi_task_cancel(task)
    end
end

-- Waits for a notice, at most `wait` seconds (nil: for ever). Until the
-- dispatcher's loop runs (its timer not run yet, dropped for want of
-- lua_max_running_timers, or the worker exits) it waits a slice at a time
-- and hands the channel's notices over itself.
local function wait_notice(w, wait)
    local looping = dispatcher.looping()
    local cap = MAX_WAIT
    if not looping then
        dispatcher.ensure()
        cap = POLL_INTERVAL
    end
    local chunk = wait
    if chunk == nil or chunk > cap then
        chunk = cap
    end
    -- (channel.sweep: a reader gone while reading leaves these set)
    w.reading = true
    w.waits = w.waits + 1
    local ok, err = w.sema:wait(chunk)
    w.reading = false
    if not ok and err ~= "timeout" then
        return nil, err
    end
    if not looping then
        drain()
    end
    return true
end

-- st:recv([timeout]) -> chunk | nil (the end) | nil, msg[, rc]
function stream.recv(self, timeout)
    local w = self.w
    if w.closed then
        return nil, "resty_ffi: the stream is closed"
    end
    if w.finished then
        return nil, w.final_err, w.final_rc
    end
    if timeout ~= nil and (type(timeout) ~= "number" or timeout ~= timeout
                           or timeout <= 0) then
        return nil, "resty_ffi: recv timeout must be a positive number of "
                    .. "seconds, got " .. tostring(timeout)
    end
    local task = w.task
    if timeout == nil then
        timeout = w.recv_timeout
    end
    local until_t
    if timeout ~= nil and timeout < MAX_WAIT then
        update_time()
        until_t = now() + timeout
    end
    local buf = w.buf
    local bi = w.bi
    if bi <= w.bn then
        local chunk = buf[bi]
        buf[bi] = nil
        w.bi = bi + 1
        return chunk
    end
    while true do
        local n = C.resty_ffi_stream_take(task, rspp, lenp, TAKE)
        if n > 0 then
            for i = 2, n do
                buf[i - 1] = ffi_string(rspp[i - 1], lenp[i - 1])
            end
            w.bi, w.bn = 1, n - 1
            return ffi_string(rspp[0], lenp[0])
        end
        if not w.ended and exiting() then
            finish(w)
            w.final_err = "resty_ffi: stream closed: the nginx worker "
                          .. "is exiting"
            return nil, w.final_err
        end
        if w.ended then
            w.finished = true
            local ok, res, err = take_result(task)
            if ok then
                if res ~= nil and res ~= "" then
                    return res
                end
                return nil
            end
            if res == nil then
                w.final_err = err
                return nil, err
            end
            w.final_err, w.final_rc = err or "", res
            return nil, w.final_err, res
        end
        update_time()
        local t = now()
        local wait = until_t and until_t - t
        if w.deadline and (wait == nil or w.deadline - t < wait) then
            wait = w.deadline - t
        end
        if wait ~= nil and wait <= 0 then
            if w.deadline and w.deadline <= t then
                finish(w)
                C.resty_ffi_runtime_timed_out(w.rt)
                w.final_err = "resty_ffi: stream timed out after "
                              .. tostring(w.timeout) .. " s"
                return nil, w.final_err
            end
            return nil, "resty_ffi: recv timed out after "
                        .. tostring(timeout) .. " s"
        end
        local ok, err = wait_notice(w, wait)
        if not ok then
            return nil, "resty_ffi: waiting for a chunk failed: "
                        .. tostring(err)
        end
    end
end

-- st:close(): idempotent; cancels a stream that has not ended.
function stream.close(self)
    local w = self.w
    if w.closed then
        return true
    end
    finish(w)
    w.closed = true
    return true
end

local state_of = call.state_of
local YIELDABLE = call.YIELDABLE

-- rt:__stream(req [, timeout]) -> stream object, or nil, err. `timeout`
-- bounds the whole stream (none by default); recv waits for a chunk up to
-- its own timeout, by default the runtime's call timeout.
function _M.method(self, req, timeout)
    local st = state_of[self]
    local rt = st and st.rt
    if not rt then
        return nil, call.method_error(self)
    end
    local phase = get_phase()
    if not YIELDABLE[phase] then
        return nil, "resty_ffi: cannot read a stream in the " .. phase
                    .. " phase (it cannot yield); stream from rewrite, "
                    .. "access, content or a timer (ngx.timer.at)"
    end
    local len = 0
    if req ~= nil then
        if type(req) ~= "string" then
            return nil, "resty_ffi: request must be a string or nil, got "
                        .. type(req)
        end
        len = #req
    end
    if timeout ~= nil then
        local ok, t = call.check_timeout(timeout, "the stream's timeout")
        if not ok then
            return nil, "resty_ffi: " .. t
        end
        timeout = t
    end
    next_id = next_id - 1
    local id = next_id
    local task = C.resty_ffi_post_stream(rt, ch, req, len, id,
                                         st.window_bytes or 0,
                                         st.window_chunks or 0, errp)
    if task == nil then
        return nil, call.post_error(st, errp[0])
    end
    local w = { sema = sema_new(), req = req, stream = true, task = task,
                id = id, rt = rt, timeout = timeout,
                recv_timeout = st.timeout, buf = {}, bi = 1, bn = 0,
                reading = false, waits = 0, abandon = finish }
    if timeout ~= nil then
        update_time()
        w.deadline = now() + timeout
    end
    add_waiter(id, w)
    dispatcher.ensure()
    dispatcher.arm_sweep()
    -- Closed when collected: the anchor's finalizer holds the waiter, not
    -- the stream object, so the object can be collected (the waiter stays
    -- reachable from the channel until the stream ends).
    local anchor = ffi_gc(ffi_new("char[1]"), function() finish(w) end)
    return setmetatable({ w = w, anchor = anchor }, mt)
end

return _M
