-- resty.ffi.timer_thread: a light thread started from an ngx.timer.at
-- timer that nginx may drop; the dispatcher and the flusher are two.
--
-- nginx checks lua_max_running_timers only when a timer fires, and drops
-- the timer then (with an "lua_max_running_timers are not enough" alert):
-- whoever set it is not told. So a thread counts as on its way only until
-- START_GRACE after its timer was due; past that it was dropped, and
-- starting it again sets another timer. A timer thought dropped that runs
-- late while another loop of the same thread runs returns at once, so a
-- thread never runs twice.

local timer_at = ngx.timer.at
local ngx_now = ngx.now
local log = ngx.log
local ERR = ngx.ERR
local pcall = pcall
local setmetatable = setmetatable

local START_GRACE = 1

local _M = { _VERSION = "0.1.0", START_GRACE = START_GRACE }
local mt = { __index = _M }

-- A thread whose loop is `body()`, called from the timer (not for a
-- premature one: the worker exited before it ran). `looping` is true while
-- body runs; body restarts the thread itself if it wants to (its new timer
-- fires once body has returned).
function _M.new(name, body)
    local t = setmetatable({ looping = false, due_at = nil }, mt)
    t.handler = function(premature)
        t.due_at = nil
        if premature or t.looping then
            return
        end
        t.looping = true
        local ok, err = pcall(body)
        t.looping = false
        if not ok then
            log(ERR, "resty_ffi: the ", name, " failed: ", err)
        end
    end
    return t
end

-- Sets the thread's timer, due in `delay` seconds (0): true, or nil and
-- why not (the worker exits).
function _M.start(t, delay)
    local ok, err = timer_at(delay or 0, t.handler)
    if not ok then
        return nil, err
    end
    t.due_at = ngx_now() + (delay or 0)
    return true
end

-- Whether the thread runs, or its timer is set and not overdue.
function _M.on_its_way(t)
    local due = t.due_at
    return t.looping or (due ~= nil and ngx_now() - due <= START_GRACE)
end

-- Whether its timer was set and is overdue: nginx dropped it.
function _M.dropped(t)
    local due = t.due_at
    return not t.looping and due ~= nil and ngx_now() - due > START_GRACE
end

return _M
