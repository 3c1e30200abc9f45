-- resty.ffi.stats: the core's counters, as Lua tables.
--
-- The core counts per runtime (calls by outcome, in flight, parked, queue
-- length, latency histogram) and per worker (the call path's counters);
-- this module reads them for ffi.stats(), ffi.runtimes(), rt:__stats() and
-- the Prometheus exposition.

local ffi = require "ffi"
local C = require("resty.ffi.lib").C
local channel = require "resty.ffi.channel"
local dispatcher = require "resty.ffi.dispatcher"

local ffi_string = ffi.string
local ngx = ngx
local tonumber = tonumber
local math_min = math.min

local _M = { _VERSION = "0.1.0" }

local NBUCKETS = C.resty_ffi_latency_buckets(nil, 0)
local RT_STATS = 9 + NBUCKETS + 1
local rt_stats_buf = ffi.new("uint64_t[?]", RT_STATS)
local name_buf = ffi.new("char[?]", 1024)
local unloadedp = ffi.new("int[1]")

-- Bucket upper bounds in seconds (the last, +Inf, is implied).
local BUCKETS = {}
do
    local bucket_buf = ffi.new("uint64_t[?]", NBUCKETS)
    C.resty_ffi_latency_buckets(bucket_buf, NBUCKETS)
    for i = 1, NBUCKETS do
        BUCKETS[i] = tonumber(bucket_buf[i - 1]) / 1e9
    end
end
_M.LATENCY_BUCKETS = BUCKETS
_M.NBUCKETS = NBUCKETS

-- The counters of core runtime `rt` (a cdata pointer), as a table: name,
-- unloaded, calls {ok, error, timeout, refused}, in_flight, parked,
-- queue_length, latency {sum (s), count, buckets (each bucket's own count,
-- the bounds are LATENCY_BUCKETS, then +Inf)}.
local function of(rt)
    local n = C.resty_ffi_runtime_name(rt, name_buf, 1024, unloadedp)
    local name = ffi_string(name_buf, n)
    C.resty_ffi_runtime_stats(rt, rt_stats_buf, RT_STATS)
    local buckets = {}
    for i = 1, NBUCKETS + 1 do
        buckets[i] = tonumber(rt_stats_buf[8 + i])
    end
    local v = rt_stats_buf
    return {
        name = name,
        unloaded = unloadedp[0] == 1,
        calls = { ok = tonumber(v[0]), error = tonumber(v[1]),
                  timeout = tonumber(v[2]), refused = tonumber(v[3]) },
        in_flight = tonumber(v[4]),
        parked = tonumber(v[5]),
        queue_length = tonumber(v[6]),
        latency = { sum = tonumber(v[7]) / 1e9, count = tonumber(v[8]),
                    buckets = buckets },
    }
end
_M.of = of

-- Every runtime this worker loaded (unloaded ones too: their counters
-- stay), each as rt:__stats() gives it.
function _M.runtimes()
    local n = C.resty_ffi_runtimes(nil, 0)
    local out = {}
    if n == 0 then
        return out
    end
    local buf = ffi.new("void *[?]", n)
    n = math_min(n, C.resty_ffi_runtimes(buf, n))
    for i = 0, n - 1 do
        out[#out + 1] = of(buf[i])
    end
    return out
end

local STAT_NAMES = { "posted", "refused", "answered_spinning", "parked",
                     "drained", "wakes", "stray_answers", "log_lines_dropped",
                     "deferred", "thread_wakeups", "moved_off" }
local stats_buf = ffi.new("uint64_t[?]", #STAT_NAMES)

-- Counters of this worker's call path since it started: posted (calls
-- handed to a runtime), refused (queue full or unloaded), answered_spinning
-- (answered before the caller parked), parked, drained (answers handed over
-- by the dispatcher), wakes (wake-up bytes runtimes wrote), stray_answers
-- (answers to tasks not waiting for one: a runtime answered twice or late),
-- log_lines_dropped (runtime log lines dropped because too many waited),
-- deferred (calls posted under load, their runtime woken once per
-- event-loop cycle: resty.ffi.flush), thread_wakeups (sleeping runtime
-- threads woken by posts and flushes), moved_off (times a runtime thread
-- found itself on the CPU of the nginx thread it serves and moved to
-- another one: resty_ffi's poll, see README below the load options),
-- waiting (parked now, this VM), abandoned (parked calls given up because
-- their request ended first, this VM: resty.ffi.channel's sweep), wake
-- ("socket", or "polling" when no wake socket could be made), vms (Lua
-- VMs this worker has had: more than 1 with lua_code_cache off), pid (this
-- worker's process id).
function _M.worker()
    local n = C.resty_ffi_stats(stats_buf, #STAT_NAMES)
    local out = { waiting = channel.parked(), abandoned = channel.abandoned(),
                  wake = dispatcher.wake_mode(),
                  vms = channel.vms(), pid = ngx.worker.pid() }
    for i = 1, n do
        out[STAT_NAMES[i]] = tonumber(stats_buf[i - 1])
    end
    return out
end

return _M
