-- resty.ffi.runtime: loading a runtime, and the object Lua calls it
-- through.
--
-- A runtime is loaded once per worker and cache key (`lib .. "&" .. cfg`);
-- the object's every method name is a call (resty.ffi.call), as in
-- lua-resty-ffi, except the double-underscore ones: __unload, __queue_len,
-- __stats, __stream (resty.ffi.stream). Two loaders share this code:
-- resty.ffi.load (our shapes, a default timeout) and resty_ffi's
-- ngx.load_ffi (lua-resty-ffi's shapes), which differ only in the
-- metatable, the cache and the default timeout.

local ffi = require "ffi"
local lib = require "resty.ffi.lib"
local call = require "resty.ffi.call"
local stream = require "resty.ffi.stream"
local channel = require "resty.ffi.channel"
local dispatcher = require "resty.ffi.dispatcher"
local stats = require "resty.ffi.stats"
local prometheus = require "resty.ffi.prometheus"
local runtime_log = require "resty.ffi.log"

local ffi_string = ffi.string
local ngx = ngx
local get_phase = ngx.get_phase
local log = ngx.log
local ERR = ngx.ERR
local WARN = ngx.WARN
local type = type
local tostring = tostring
local setmetatable = setmetatable
local rawset = rawset

local C = lib.C
local state_of = call.state_of
local method_error = call.method_error

local _M = { _VERSION = "0.1.0" }

-- Spin budgets above this would burn a CPU the other side needs.
local MAX_SPIN_US = 1000
_M.MAX_SPIN_US = MAX_SPIN_US
-- A load taking this long (seconds) is worth a warning: the worker served
-- nothing meanwhile.
local SLOW_LOAD = 0.1

local msg_buf = ffi.new("char[?]", 1024)

-- Loaders whose cfg starts with what they load (a Python module, a Java
-- class, a Node module), and whose first load starts an interpreter.
local LOADERS = { ffi_python3 = true, ffi_java = true, ffi_nodejs = true }

-- The library's short name: `/x/libffi_echo.so`, `ffi_echo.so` and
-- `ffi_echo` are all `ffi_echo`; lua-resty-ffi's loader names are ours.
local function short_name(lib_name)
    local base = lib_name:match("([^/]*)$")
    base = lib.ALIASES[base] or base
    base = base:gsub("%.so[%.%d]*$", ""):gsub("^lib", "")
    return base
end

-- The name a runtime has in stats and metrics when opts.name gives none:
-- the library's short name, and for a loader the module or class it loads
-- (`ffi_python3:app.render`). Never any other part of cfg: it holds paths
-- that change on every deploy, and the free text after them often holds
-- DSNs and tokens.
local function default_name(lib_name, cfg)
    local short = short_name(lib_name)
    if not LOADERS[short] or not cfg then
        return short
    end
    local target = cfg:match("^[^,]*")
    if short == "ffi_python3" then
        target = target:gsub("^venv=[^:]*:", "")
    end
    target = target:match("([^/]*)$"):gsub("%?$", ""):gsub("[^%w_.%-]", "_")
    if target == "" then
        return short
    end
    return short .. ":" .. target:sub(1, 100)
end
_M.default_name = default_name

local function unload(self)
    local st = state_of[self]
    local rt = st and st.rt
    if not rt then
        return
    end
    st.rt = false
    if st.cache[st.key] == self then
        st.cache[st.key] = nil
    end
    C.resty_ffi_runtime_unload(rt)
end

local function queue_len(self)
    local st = state_of[self]
    local rt = st and st.rt
    if not rt then
        return 0
    end
    return C.resty_ffi_runtime_queue_len(rt)
end

-- rt:__stats(): this runtime's counters in this worker, as
-- resty.ffi.stats gives them. (Double underscore like __unload:
-- `rt:stats()` is a call to the runtime's own `stats` method.)
local function runtime_stats(self)
    local st = state_of[self]
    if not st then
        return nil, method_error(self)
    end
    return stats.of(st.core)
end

-- Any method name calls the runtime, as in lua-resty-ffi; cache it on the
-- object so LuaJIT sees a plain table hit, not a new closure. State lives
-- in `state_of`, where no method name reaches it.
local function method_index(fn)
    return {
        __index = function(self, k)
            rawset(self, k, fn)
            return fn
        end,
        __call = fn,
    }
end

-- Checks one integer option (nil is fine): nil, or why it is wrong.
-- `max` bounds it further (nil: any int32). Called once per option rather
-- than in a loop: `load` runs on every request that looks its runtime up
-- (lua-resty-ffi's examples do), and a loop here made LuaJIT abort every
-- trace through it ("inner loop in root trace"), leaving the whole
-- request, call included, to the interpreter.
local function check_int(opts, name, max)
    local v = opts[name]
    if v == nil then
        return nil
    end
    if type(v) ~= "number" or v ~= v or v < 0 or v % 1 ~= 0 or v >= 2^31 then
        return "opts." .. name .. " must be a non-negative integer, got "
               .. tostring(v)
    end
    if max and v > max then
        return "opts." .. name .. " must be at most " .. max
               .. " (µs; a longer spin burns the CPU the other side "
               .. "needs), got " .. tostring(v)
    end
    return nil
end

-- Checks opts; returns them and the call timeout they give (nil: until
-- answered, `default` when they give none), or nil, err.
-- What no opts give (only read, so one table serves every load).
local NO_OPTS = {}

local function check_opts(opts, default)
    if opts == nil then
        return NO_OPTS, default
    end
    if type(opts) ~= "table" then
        return nil, "opts must be a table, got " .. type(opts)
    end
    local err = check_int(opts, "max_queue")
                or check_int(opts, "spin_us", MAX_SPIN_US)
                or check_int(opts, "poll_spin_us", MAX_SPIN_US)
                or check_int(opts, "stream_window_bytes")
                or check_int(opts, "stream_window_chunks")
    if err then
        return nil, err
    end
    if opts.max_queue == 0 then
        return nil, "opts.max_queue must be positive"
    end
    if opts.timeout == nil then
        return opts, default
    end
    local ok, t = call.check_timeout(opts.timeout, "opts.timeout")
    if not ok then
        return nil, t
    end
    return opts, t
end

-- Loads (or finds in `cache`) runtime `lib` with `cfg`: the object, or
-- nil, err. `meta` is the metatable its methods come from and
-- `default_timeout` the call timeout when opts give none (nil: until
-- answered).
local function load(lib_name, cfg, opts, meta, cache, default_timeout)
    local err, timeout
    if type(lib_name) ~= "string" or lib_name == "" then
        err = "resty_ffi: lib must be a library name or path, got "
              .. tostring(lib_name)
    elseif lib_name:find("\0", 1, true) then
        err = "resty_ffi: lib must not contain a NUL byte: "
              .. lib_name:gsub("%z", "\\0")
    elseif cfg ~= nil and type(cfg) ~= "string" then
        err = "resty_ffi: cfg must be a string or nil, got " .. type(cfg)
    else
        opts, timeout = check_opts(opts, default_timeout)
        err = not opts and "resty_ffi: " .. timeout
    end
    if not err and get_phase() == "init" then
        err = "resty_ffi: cannot load a runtime in init_by_lua: it runs "
              .. "in the nginx master, whose threads do not survive fork; load "
              .. "it in init_worker_by_lua or later"
    end
    if err then
        return nil, err
    end
    local key = cfg and (lib_name .. "&" .. cfg) or lib_name
    local cached = cache[key]
    if cached then
        return cached
    end
    local max_queue = opts.max_queue or 65536
    local path = lib.find_library(lib_name)
    -- the runtime may log from libffi_init on: drop what nginx would not write
    C.resty_ffi_log_filter(runtime_log.filter())
    ngx.update_time()
    local t0 = ngx.now()
    local rt = C.resty_ffi_runtime_load(key, #key, path, cfg,
                                        cfg and #cfg or -1, max_queue,
                                        opts.is_global and 1 or 0,
                                        opts.spin_us or -1,
                                        opts.poll_spin_us or -1, msg_buf, 1024)
    ngx.update_time()
    local took = ngx.now() - t0
    local name = opts.name ~= nil and tostring(opts.name)
                 or default_name(lib_name, cfg)
    if took >= SLOW_LOAD then
        local advice
        if LOADERS[short_name(lib_name)] then
            advice = "the first load of a loader starts its interpreter: "
                     .. "load it in init_worker_by_lua"
        else
            advice = "libffi_init should start threads and return"
        end
        log(WARN, "resty_ffi: loading ", name, " took ",
            string.format("%.3f", took), " s, during which the worker ",
            "served nothing (", advice, ")")
    end
    if rt == nil then
        err = "resty_ffi: " .. ffi_string(msg_buf)
        log(ERR, err)
        prometheus.load_failed(name)
        return nil, err
    end
    C.resty_ffi_runtime_set_name(rt, name, #name)
    if not channel.many_vms() then
        -- runtimes may log before any call parks: lines need a writer
        dispatcher.ensure()
    end
    prometheus.start_publishing()
    local obj = setmetatable({
        __unload = unload,
        __queue_len = queue_len,
        __stats = runtime_stats,
        __stream = stream.method,
    }, meta)
    state_of[obj] = {
        rt = rt,            -- false once unloaded
        core = rt,          -- kept after unload, for __stats
        key = key,
        cache = cache,
        timeout = timeout,
        max_queue = max_queue,
        window_bytes = opts.stream_window_bytes,
        window_chunks = opts.stream_window_chunks,
    }
    cache[key] = obj
    return obj
end

local own_meta = method_index(call.call)
local own_cache = {}

-- resty.ffi.load: our shapes, `default_timeout` when opts give none.
function _M.load(lib_name, cfg, opts, default_timeout)
    return load(lib_name, cfg, opts, own_meta, own_cache, default_timeout)
end

-- For resty_ffi (the lua-resty-ffi adapter): a loader whose methods are
-- wrap(call), with its own cache and no default timeout.
function _M.loader(wrap)
    local meta = method_index(wrap(call.call))
    local cache = {}
    return function(lib_name, cfg, opts)
        return load(lib_name, cfg, opts, meta, cache, nil)
    end
end

return _M
