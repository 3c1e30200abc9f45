-- resty.ffi.channel: this Lua VM's completion channel and the calls
-- waiting on it.
--
-- Each Lua VM has its own channel in the core, so answers reach the VM that
-- posted the call and nothing else (with lua_code_cache off every request
-- has a VM of its own). A call that parks registers a waiter under its id;
-- the dispatcher drains the channel and hands each answer to its waiter.
-- Every parked call ends exactly once: answered (deliver) or given up
-- (give_up, after its timeout), whichever comes first; the other finds the
-- waiter gone. A call given up keeps its request string referenced until
-- the late answer comes, because the runtime may still be reading it.

local ffi = require "ffi"
local C = require("resty.ffi.lib").C

local ffi_string = ffi.string
local ngx = ngx
local log = ngx.log
local ERR = ngx.ERR
local NOTICE = ngx.NOTICE
local type = type
local next = next
local pcall = pcall
local pairs = pairs

local _M = { _VERSION = "0.1.0" }

local DRAIN_BATCH = 64

-- This VM's completion channel: answers to its parked calls come here. It
-- is closed when the VM is collected, and the core frees what comes later.
local channel = ffi.gc(C.resty_ffi_channel_open(), C.resty_ffi_channel_close)
_M.channel = channel

local waiters = {}        -- call id -> waiter table, or the request of a call
                          -- that was given up (kept alive for the late answer)
local nwaiting = 0        -- parked calls neither answered nor given up

local rspp = ffi.new("const char *[1]")
local lenp = ffi.new("int[1]")
local drain_buf = ffi.new("void *[?]", DRAIN_BATCH)

-- More than one Lua VM in this worker: lua_code_cache is off. Once true
-- it stays true (the count only grows), so it is asked of the core only
-- until then.
local vms_seen_many = false
function _M.many_vms()
    if not vms_seen_many then
        vms_seen_many = C.resty_ffi_channel_vms(channel) > 1
    end
    return vms_seen_many
end

-- Lua VMs this worker has had.
function _M.vms()
    return C.resty_ffi_channel_vms(channel)
end

-- Reads a finished task's answer in lua-resty-ffi's shape (ok, res, nil or
-- false, rc, msg) and frees it, counting the call's outcome in its
-- runtime's stats.
local function take_result(task)
    local rc = C.resty_ffi_task_result(task, rspp, lenp)
    local p = rspp[0]
    local n = lenp[0]
    if n < 0 then
        local err = "resty_ffi: bad answer: " .. ffi_string(p)
        C.resty_ffi_task_free(task, 1)
        return false, nil, err
    end
    local res
    if p ~= nil then
        res = ffi_string(p, n)
    end
    if rc == 0 then
        C.resty_ffi_task_free(task, 0)
        return true, res, nil
    end
    C.resty_ffi_task_free(task, 1)
    return false, rc, res
end
_M.take_result = take_result

-- Parks waiter `w` (a table with a semaphore `sema`) for call `id`.
function _M.add(id, w)
    waiters[id] = w
    nwaiting = nwaiting + 1
end

-- Gives up waiting for call `id` (its timeout passed): true if it was still
-- unanswered, and then the late answer is freed when it comes; false if
-- the answer was handed over meanwhile (w.done), which then stands.
function _M.give_up(id, w, req)
    if waiters[id] ~= w then
        return false
    end
    waiters[id] = req or true
    nwaiting = nwaiting - 1
    return true
end

-- Parked calls whose caller went away: the request ended while the call
-- waited (the client went away under lua_check_client_abort, ngx.exit()
-- from another light thread, ngx.thread.kill). nginx then takes the dead
-- coroutine off its semaphore's wait queue but tells nobody else, so the
-- call would stay parked until its answer came (for ever, for a runtime
-- that never answers), holding the worker's exit: the dispatcher waits for
-- every parked call. Such calls are given up as a timeout is (the late
-- answer is freed when it comes) and cancelled in the core, so the runtime
-- can tell nobody waits and stop early.
--
-- How a gone caller is told: a plain call's coroutine waits on its own
-- semaphore whenever another light thread runs, so a count of 0, not -1,
-- means it is gone (an answer takes the waiter out of `waiters` before it
-- posts). A stream's reader does other things between two recv(), and
-- chunks post its semaphore while it stays listed: a reader counts as gone
-- when it was reading (`reading`) with no wait pending (count >= 0) at two
-- sweeps in a row within the same wait (`waits`), since a posted reader
-- runs within one event-loop cycle. Returns how many streams were seen
-- gone once (a second sweep decides).
local abandoned = 0

function _M.sweep()
    local suspects = 0
    for id, w in pairs(waiters) do
        -- (not a table: given up already, its late answer still to come)
        local live = type(w) == "table"
        if live and not w.stream then
            if w.task ~= nil and w.sema:count() == 0
               and _M.give_up(id, w, w.req) then
                C.resty_ffi_task_cancel(w.task)
                w.task = nil
                abandoned = abandoned + 1
            end
        elseif live and w.reading and w.sema:count() >= 0 then
            if w.gone_at == w.waits then
                w.abandon(w)
                abandoned = abandoned + 1
            else
                w.gone_at = w.waits
                suspects = suspects + 1
            end
        elseif live then
            w.gone_at = nil
        end
    end
    return suspects
end

-- Parked calls given up because their caller went away (sweep), this VM.
function _M.abandoned()
    return abandoned
end

-- Hands one drained answer to its waiter, or frees it if nobody waits
-- (a late answer to a call that was given up). A stream's waiter is woken
-- for each notice (a chunk is there: resty.ffi.stream reads it) and for
-- its final answer, which it reads itself.
local function deliver(task)
    local id = C.resty_ffi_task_id(task)
    local w = waiters[id]
    if type(w) == "table" and not w.stream then
        waiters[id] = nil
        nwaiting = nwaiting - 1
        w.ok, w.res, w.err = take_result(task)
        w.done = true
        w.sema:post(1)
        return
    end
    if C.resty_ffi_task_is_notice(task) == 1 then
        if type(w) == "table" then
            w.sema:post(1)
        end
        return
    end
    waiters[id] = nil
    if type(w) ~= "table" then
        C.resty_ffi_task_free(task, 2)
        return
    end
    nwaiting = nwaiting - 1
    w.ended = true
    w.sema:post(1)
end

-- Hands every drained answer over, each in isolation: one that fails
-- fails alone.
function _M.drain()
    while true do
        local n = C.resty_ffi_drain(channel, drain_buf, DRAIN_BATCH)
        for i = 0, n - 1 do
            local ok, err = pcall(deliver, drain_buf[i])
            if not ok then
                log(ERR, "resty_ffi: cannot hand over an answer: ", err)
            end
        end
        if n < DRAIN_BATCH then
            return
        end
    end
end

-- The worker exits: wakes every open stream's reader (it then ends its
-- stream), once per stream.
function _M.wake_streams()
    for _, w in pairs(waiters) do
        if type(w) == "table" and w.stream and not w.told_exit then
            w.told_exit = true
            w.sema:post(1)
        end
    end
end

-- Calls of this VM parked now (neither answered nor given up).
function _M.parked()
    return nwaiting
end

-- Whether any call of this VM still expects an answer (parked, or given
-- up with its late answer still to come).
function _M.pending()
    return next(waiters) ~= nil
end

if C.resty_ffi_channel_vms(channel) == 2 and ngx.get_phase() ~= "init" then
    log(NOTICE, "resty_ffi: more than one Lua VM in this worker ",
        "(lua_code_cache off?): runtimes are shared by all of them, and ",
        "each VM's answers reach only that VM")
end

return _M
