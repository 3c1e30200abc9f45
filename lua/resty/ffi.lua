-- resty.ffi: call runtimes written in Rust, Go, Python, Java... from
-- nginx-lua without blocking the worker.
--
-- This is the public face; the concepts live in one file each under
-- resty/ffi/ and are not part of the API:
--   lib.lua         library lookup, lua-resty-ffi's names, loading the core
--   runtime.lua     loading a runtime, the runtime object and its methods
--   call.lua        one call: post, spin, park, timeout (the hot path)
--   channel.lua     this VM's completion channel and its waiting calls
--   dispatcher.lua  the light thread that wakes parked calls
--   log.lua         runtimes' log lines into error.log
--   stats.lua       the core's counters as tables
--   prometheus.lua  the metrics of all workers, Prometheus text format
--
-- A call posts the request to the runtime's task queue in libresty_ffi.so
-- (the string is borrowed, not copied), spins briefly for the answer when
-- nothing else of this VM is waiting, and otherwise parks on an
-- ngx.semaphore until the dispatcher hands the answer over. Each Lua VM has
-- its own completion channel in the core, so answers reach the VM that
-- posted the call and nothing else; with lua_code_cache off runtimes are
-- shared through the core. See DESIGN.md.

local runtime = require "resty.ffi.runtime"
local channel = require "resty.ffi.channel"
local stats = require "resty.ffi.stats"
local prometheus = require "resty.ffi.prometheus"

local _M = {
    _VERSION = "0.1.0",
    -- Default call timeout in seconds, like nginx's proxy_read_timeout.
    DEFAULT_TIMEOUT = 60,
    -- Most a spin budget (opts.spin_us, opts.poll_spin_us) may be, in µs.
    MAX_SPIN_US = runtime.MAX_SPIN_US,
    -- Upper bounds (s) of the call latency histogram's buckets (+Inf
    -- implied), as rt:__stats() and ffi.runtimes() count them.
    LATENCY_BUCKETS = stats.LATENCY_BUCKETS,
}

-- load(lib, cfg, opts) -> runtime | nil, err
--
-- opts: max_queue (65536), is_global (false), unpin (accepted for
-- lua-resty-ffi compatibility; a changed library file is picked up after
-- unload anyway), timeout (seconds, default DEFAULT_TIMEOUT; math.huge:
-- until answered), spin_us (most the caller spins, default 50, at most
-- 1000; the actual spin adapts to recent answer times), poll_spin_us
-- (runtime poll spin, default 50, at most 1000), name (the runtime's name
-- in stats and metrics).
function _M.load(lib, cfg, opts)
    return runtime.load(lib, cfg, opts, _M.DEFAULT_TIMEOUT)
end

-- For resty_ffi (the lua-resty-ffi adapter): loader(wrap) returns a load
-- function whose runtimes' methods are wrap(call), with a cache of its own
-- and no default timeout.
_M.loader = runtime.loader

-- Counters of this worker's call path (see resty/ffi/stats.lua).
_M.stats = stats.worker

-- Every runtime this worker loaded, each as rt:__stats() gives it.
_M.runtimes = stats.runtimes

-- Calls of this Lua VM parked and not yet answered.
_M.waiting = channel.parked

-- The Prometheus text exposition of resty-ffi's metrics for the whole
-- nginx, or nil, err. Needs `lua_shared_dict resty_ffi_stats 1m;`.
_M.prometheus = prometheus.text

return _M
