-- resty.ffi: call runtimes written in Rust, Go, Python, Java... from
-- nginx-lua without blocking the worker.
--
-- A call posts the request to the runtime's task queue in libresty_ffi.so
-- (the string is borrowed, not copied), spins briefly for the answer when
-- nothing else of this worker is waiting, and otherwise parks on an
-- ngx.semaphore. One dispatcher light thread per Lua VM sleeps on a private
-- unix socket; runtime threads write a byte there when an answer to a parked
-- call arrives, and the dispatcher drains the answers in batches and wakes
-- each waiter. When no such socket can be made (no writable TMPDIR), the
-- dispatcher polls instead. See DESIGN.md, "The nginx side needs no
-- recompiled nginx".
--
-- Each Lua VM has its own completion channel in the core, so answers reach
-- the VM that posted the call and nothing else. With lua_code_cache off
-- every request has a VM of its own: runtimes are then shared through the
-- core (no new threads per request) and a VM's dispatcher stops as soon as
-- none of its calls waits, so the VM can be freed.

local ffi = require "ffi"
local semaphore = require "ngx.semaphore"

local ffi_string = ffi.string
local ngx = ngx
local get_phase = ngx.get_phase
local exiting = ngx.worker.exiting
local timer_at = ngx.timer.at
local ngx_sleep = ngx.sleep
local log = ngx.log
local ERR = ngx.ERR
local WARN = ngx.WARN
local NOTICE = ngx.NOTICE
local sema_new = semaphore.new
local type = type
local next = next
local tostring = tostring
local setmetatable = setmetatable
local pcall = pcall

local _M = { _VERSION = "0.2.0" }

ffi.cdef[[
void *resty_ffi_runtime_load(const char *key, int key_len, const char *path,
                             const char *cfg, int cfg_len, int max_queue,
                             int is_global, int caller_spin_us,
                             int poll_spin_us, char *err, int err_len);
void resty_ffi_runtime_unload(void *rt);
int resty_ffi_runtime_queue_len(void *rt);
void *resty_ffi_post(void *rt, void *ch, const char *req, int len, double id,
                     int *err);
int resty_ffi_wait(void *task, int may_spin);
int resty_ffi_task_result(void *task, const char **rsp, int *len);
double resty_ffi_task_id(void *task);
void resty_ffi_task_free(void *task, int outcome);
void resty_ffi_runtime_timed_out(void *rt);
int resty_ffi_runtimes(void **out, int max);
void resty_ffi_runtime_set_name(void *rt, const char *name, int len);
int resty_ffi_runtime_name(void *rt, char *buf, int cap, int *unloaded);
int resty_ffi_runtime_stats(void *rt, uint64_t *out, int max);
int resty_ffi_latency_buckets(uint64_t *out, int max);
void resty_ffi_log(int level, const char *msg, int len);
void resty_ffi_log_attach(void *ch, int filter);
void resty_ffi_log_filter(int filter);
void resty_ffi_log_detach(void *ch);
int resty_ffi_log_take(char *buf, int cap, int *level);
void *resty_ffi_channel_open(void);
void resty_ffi_channel_close(void *ch);
int resty_ffi_channel_vms(void *ch);
int resty_ffi_drain(void *ch, void **out, int max);
int resty_ffi_prepare_sleep(void *ch);
int resty_ffi_wake_listen(void *ch, char *buf, int cap);
int resty_ffi_wake_accept(void *ch, char *err, int cap);
void resty_ffi_wake(void *ch);
int resty_ffi_stats(uint64_t *out, int max);
]]

-- Default call timeout in seconds, like nginx's proxy_read_timeout.
_M.DEFAULT_TIMEOUT = 60
-- Spin budgets above this would burn a CPU the other side needs.
_M.MAX_SPIN_US = 1000
local DRAIN_BATCH = 64
local FOREVER_MS = 86400 * 1000
-- ngx.semaphore takes milliseconds in a C int: longer waits are chunked.
local MAX_WAIT = 1e6
local RESTART_DELAY = 0.1
local POLL_INTERVAL = 0.001
local POLL_IDLE_INTERVAL = 0.1
local SLOW_LOAD = 0.1

local function readable(path)
    local f = io.open(path, "rb")
    if f then
        f:close()
        return true
    end
    return false
end

-- Names lua-resty-ffi's loaders have had, and the library of ours that
-- answers to each.
local ALIASES = {
    resty_ffi_python = "ffi_python3",
    ["libresty_ffi_python.so"] = "libffi_python3.so",
    ["resty_ffi_python.so"] = "libffi_python3.so",
    resty_ffi_java = "ffi_java",
    ["libresty_ffi_java.so"] = "libffi_java.so",
}
_M.ALIASES = ALIASES

-- The file name LuaJIT's ffi.load would open for `lib` (and so
-- lua-resty-ffi): a name without "." gets ".so", one not starting with
-- "lib" gets "lib" in front.
local function luajit_name(lib)
    local name = lib
    if not name:find(".", 1, true) then
        name = name .. ".so"
    end
    if name:sub(1, 3) ~= "lib" then
        name = "lib" .. name
    end
    return name
end

-- Finds a library: a path is used as is; otherwise the name LuaJIT's
-- ffi.load would use comes first, then the name as given, each looked up
-- in LD_LIBRARY_PATH and the folders of lua_package_cpath; failing that the
-- LuaJIT name is left to the dynamic linker's own search.
local function find_library(lib)
    if lib:find("/", 1, true) then
        return lib
    end
    lib = ALIASES[lib] or lib
    local names = { luajit_name(lib) }
    if lib:find("%.so[%.%d]*$") and lib ~= names[1] then
        names[2] = lib
    end
    local dirs = {}
    for dir in (os.getenv("LD_LIBRARY_PATH") or ""):gmatch("[^:]+") do
        dirs[#dirs + 1] = dir
    end
    for pattern in package.cpath:gmatch("[^;]+") do
        local dir = pattern:match("^(.*)/[^/]*%?[^/]*$")
        if dir then
            dirs[#dirs + 1] = dir
        end
    end
    for _, name in ipairs(names) do
        for _, dir in ipairs(dirs) do
            local path = dir .. "/" .. name
            if readable(path) then
                return path
            end
        end
    end
    return names[1]
end
_M.find_library = find_library

-- The core is loaded with RTLD_GLOBAL so runtimes find its
-- ngx_http_lua_ffi_* symbols.
local core_ok, C = pcall(ffi.load, find_library("resty_ffi"), true)
if not core_ok then
    error("resty.ffi: cannot load libresty_ffi.so (" .. tostring(C)
          .. "): put it in a folder of lua_package_cpath or LD_LIBRARY_PATH")
end
_M.C = C

-- Phases whose code may yield, and so may wait for a runtime.
-- (ssl_client_hello is not one: on nginx-lua 0.10.23 any yield there,
-- even ngx.sleep, aborts the handshake.)
local YIELDABLE = {
    rewrite = true, access = true, content = true, timer = true,
    ssl_cert = true, ssl_session_fetch = true,
}

-- This VM's completion channel: answers to its parked calls come here. It
-- is closed when the VM is collected, and the core frees what comes later.
local channel = ffi.gc(C.resty_ffi_channel_open(), C.resty_ffi_channel_close)

-- Per-VM state.
local runtimes = {}       -- cache key -> runtime object
local state_of = setmetatable({}, { __mode = "k" }) -- object -> its state
local waiters = {}        -- call id -> waiter table, or the request of a call
                          -- that timed out (kept alive for the late answer)
local nwaiting = 0        -- parked calls neither answered nor timed out
local next_id = 0
local dispatcher_running = false
local exit_timer_set = false
local wake_mode = "socket" -- or "polling" once no wake socket can be made
local start_publishing    -- metrics, defined with prometheus() below

local errp = ffi.new("int[1]")
local rspp = ffi.new("const char *[1]")
local lenp = ffi.new("int[1]")
local drain_buf = ffi.new("void *[?]", DRAIN_BATCH)
local msg_buf = ffi.new("char[?]", 1024)

-- More than one Lua VM in this worker: lua_code_cache is off. Once true
-- it stays true (the count only grows), so it is asked of the core only
-- until then.
local vms_seen_many = false
local function many_vms()
    if not vms_seen_many then
        vms_seen_many = C.resty_ffi_channel_vms(channel) > 1
    end
    return vms_seen_many
end

-- Reads a finished task's answer in lua-resty-ffi's shape and frees it
-- (counting the call's outcome in its runtime's stats).
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

-- Hands one drained answer to its waiter, or frees it if nobody waits
-- (a late answer to a call that timed out).
local function deliver(task)
    local id = C.resty_ffi_task_id(task)
    local w = waiters[id]
    waiters[id] = nil
    if type(w) ~= "table" then
        C.resty_ffi_task_free(task, 2)
        return
    end
    nwaiting = nwaiting - 1
    w.ok, w.res, w.err, w.done = take_result(task)
    w.sema:post(1)
end

local log_buf = ffi.new("char[?]", 4096)
local levelp = ffi.new("int[1]")
local raw_log_ok, errlog = pcall(require, "ngx.errlog")
local raw_log = raw_log_ok and errlog.raw_log or nil
local LOG_BATCH = 256

-- Writes the runtimes' log lines through nginx, at their level.
local function drain_logs()
    for _ = 1, LOG_BATCH do
        local n = C.resty_ffi_log_take(log_buf, 4096, levelp)
        if n < 0 then
            return
        end
        local msg = ffi_string(log_buf, n)
        if raw_log then
            raw_log(levelp[0], msg)
        else
            log(levelp[0], msg)
        end
    end
end

local function log_filter()
    if raw_log_ok and errlog.get_sys_filter_level then
        local ok, level = pcall(errlog.get_sys_filter_level)
        if ok and level then
            return level
        end
    end
    return ngx.DEBUG
end

-- Hands every drained answer over, each in isolation: one that fails
-- fails alone.
local function drain()
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
_M.drain = drain

local function on_worker_exit(premature)
    if premature then
        -- wake the dispatcher so it sees ngx.worker.exiting()
        C.resty_ffi_wake(channel)
    end
end

-- With many VMs a year-long timer would keep this VM alive for a year: a
-- short timer re-armed while the dispatcher runs does the same job, and
-- keeps the VM at most that long once the dispatcher stopped.
local EXIT_WATCH = 0.1
local function exit_watch(premature)
    if premature then
        C.resty_ffi_wake(channel)
    elseif dispatcher_running then
        timer_at(EXIT_WATCH, exit_watch)
    end
end

-- Whether the dispatcher may stop: the worker exits and nothing is parked,
-- or (many VMs) nothing of this VM waits at all, so the VM can go.
local function may_stop()
    if exiting() and nwaiting == 0 then
        return true
    end
    return next(waiters) == nil and many_vms()
end

local function poll_loop()
    C.resty_ffi_log_attach(channel, log_filter())
    while true do
        drain()
        drain_logs()
        if next(waiters) == nil or (exiting() and nwaiting == 0) then
            return true
        end
        ngx_sleep(nwaiting > 0 and POLL_INTERVAL or POLL_IDLE_INTERVAL)
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
    local n = C.resty_ffi_wake_listen(channel, msg_buf, 1024)
    if n < 0 then
        return fall_back_to_polling(ffi_string(msg_buf))
    end
    local sock = ngx.socket.tcp()
    local ok, err = sock:connect("unix:" .. ffi_string(msg_buf, n))
    if not ok then
        C.resty_ffi_wake_accept(channel, msg_buf, 1024)
        return fall_back_to_polling("cannot connect it: " .. err)
    end
    if C.resty_ffi_wake_accept(channel, msg_buf, 1024) ~= 0 then
        sock:close()
        return nil, ffi_string(msg_buf)
    end
    sock:settimeouts(1000, 1000, FOREVER_MS)
    C.resty_ffi_log_attach(channel, log_filter())
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
        if C.resty_ffi_prepare_sleep(channel) == 0 then
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

local start_dispatcher

local function dispatch(premature)
    if premature then
        dispatcher_running = false
        return
    end
    local ok, res, err = pcall(dispatch_loop)
    dispatcher_running = false
    C.resty_ffi_log_detach(channel)
    if not ok or not res then
        log(ERR, "resty_ffi: dispatcher stopped: ", ok and err or res)
    end
    if next(waiters) ~= nil and not (exiting() and nwaiting == 0) then
        -- retry soon, not at once: a broken environment must not turn
        -- into a busy loop of timers
        start_dispatcher((ok and res) and 0 or RESTART_DELAY)
    end
end

start_dispatcher = function(delay)
    local ok, err = timer_at(delay or 0, dispatch)
    if not ok then
        return nil, err
    end
    dispatcher_running = true
    return true
end

-- Waits without the dispatcher: only while the worker exits and no timer
-- can start it. Polls the channel with ngx.sleep.
local function wait_polling(w, timeout)
    local waited = 0
    while not w.done and (timeout == nil or waited < timeout) do
        ngx_sleep(POLL_INTERVAL)
        waited = waited + POLL_INTERVAL
        drain()
    end
    return w.done
end

-- Waits on the semaphore; nil timeout waits until answered.
local function wait_sema(w, id, timeout)
    while true do
        local chunk = timeout
        if chunk == nil or chunk > MAX_WAIT then
            chunk = MAX_WAIT
        end
        local ok, err = w.sema:wait(chunk)
        if ok or w.done then
            return true
        end
        if err ~= "timeout" then
            log(ERR, "resty_ffi: waiting for call ", id, " failed: ", err)
            return false
        end
        if timeout ~= nil then
            timeout = timeout - chunk
            if timeout <= 0 then
                return false
            end
        end
    end
end

local function park(rt, id, req, timeout)
    local w = { sema = sema_new(), req = req }
    waiters[id] = w
    nwaiting = nwaiting + 1
    local done
    if dispatcher_running or start_dispatcher() then
        done = wait_sema(w, id, timeout)
    else
        done = wait_polling(w, timeout)
    end
    if done then
        return w.ok, w.res, w.err
    end
    -- Timed out: the runtime may still answer; keep the request alive for
    -- it, and let the dispatcher free the late answer.
    waiters[id] = req or true
    nwaiting = nwaiting - 1
    C.resty_ffi_runtime_timed_out(rt)
    if exiting() then
        C.resty_ffi_wake(channel)
    end
    return false, nil, "resty_ffi: call timed out after "
           .. tostring(timeout or MAX_WAIT) .. " s"
end

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

local function method_error(self)
    if state_of[self] == nil then
        return "resty_ffi: call runtime methods with a colon, rt:method(req), "
               .. "not rt.method(req)"
    end
    return "resty_ffi: task queue is finished: the runtime is unloaded"
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
            return false, nil, "resty_ffi: request must be a string or nil, got "
                   .. type(req)
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
    local task = C.resty_ffi_post(rt, channel, req, len, id, errp)
    if task == nil then
        return false, nil, post_error(st, errp[0])
    end
    if C.resty_ffi_wait(task, nwaiting == 0 and 1 or 0) == 1 then
        return take_result(task)
    end
    return park(rt, id, req, timeout)
end

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

local NBUCKETS = C.resty_ffi_latency_buckets(nil, 0)
local RT_STATS = 9 + NBUCKETS + 1
local rt_stats_buf = ffi.new("uint64_t[?]", RT_STATS)
local bucket_buf = ffi.new("uint64_t[?]", NBUCKETS)
C.resty_ffi_latency_buckets(bucket_buf, NBUCKETS)
-- Bucket upper bounds in seconds (the last, +Inf, is implied).
local BUCKETS = {}
for i = 1, NBUCKETS do
    BUCKETS[i] = tonumber(bucket_buf[i - 1]) / 1e9
end
_M.LATENCY_BUCKETS = BUCKETS
local unloadedp = ffi.new("int[1]")

-- The counters of core runtime `rt` (a cdata pointer), as a table.
local function stats_of(rt)
    local n = C.resty_ffi_runtime_name(rt, msg_buf, 1024, unloadedp)
    local name = ffi_string(msg_buf, n)
    C.resty_ffi_runtime_stats(rt, rt_stats_buf, RT_STATS)
    local v = function(i) return tonumber(rt_stats_buf[i]) end
    local buckets = {}
    for i = 1, NBUCKETS + 1 do
        buckets[i] = v(8 + i)
    end
    return {
        name = name,
        unloaded = unloadedp[0] == 1,
        calls = { ok = v(0), error = v(1), timeout = v(2), refused = v(3) },
        in_flight = v(4),
        parked = v(5),
        queue_length = v(6),
        latency = { sum = v(7) / 1e9, count = v(8), buckets = buckets },
    }
end

-- rt:__stats(): this runtime's counters in this worker: name, unloaded,
-- calls {ok, error, timeout, refused}, in_flight, parked, queue_length,
-- latency {sum (s), count, buckets (each bucket's own count, the bounds
-- are _M.LATENCY_BUCKETS, then +Inf)}. (Double underscore like __unload:
-- `rt:stats()` is a call to the runtime's own `stats` method.)
local function runtime_stats(self)
    local st = state_of[self]
    if not st then
        return nil, method_error(self)
    end
    return stats_of(st.core)
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

local mt = method_index(call)

local SPIN_OPTS = { spin_us = true, poll_spin_us = true }

-- Checks opts; returns them and the call timeout they give (nil: until
-- answered, `default` when they give none), or nil, err.
local function check_opts(opts, default)
    if opts == nil then
        return {}, default
    end
    if type(opts) ~= "table" then
        return nil, "opts must be a table, got " .. type(opts)
    end
    for _, spec in ipairs({ { "max_queue", true }, { "spin_us", true },
                            { "poll_spin_us", true } }) do
        local name, v = spec[1], opts[spec[1]]
        if v ~= nil and (type(v) ~= "number" or v ~= v or v < 0
                         or v % 1 ~= 0 or v >= 2^31) then
            return nil, "opts." .. name .. " must be a non-negative integer, got "
                   .. tostring(v)
        end
        if v and SPIN_OPTS[name] and v > _M.MAX_SPIN_US then
            return nil, "opts." .. name .. " must be at most " .. _M.MAX_SPIN_US
                   .. " (µs; a longer spin burns the CPU the other side "
                   .. "needs), got " .. tostring(v)
        end
    end
    if opts.max_queue == 0 then
        return nil, "opts.max_queue must be positive"
    end
    if opts.timeout == nil then
        return opts, default
    end
    local ok, t = check_timeout(opts.timeout, "opts.timeout")
    if not ok then
        return nil, t
    end
    return opts, t
end

-- Builds a runtime object; `meta` is the metatable its methods come from
-- (resty_ffi's adapter passes one with lua-resty-ffi's return shapes) and
-- `cache` the table it is cached in.
local function load(lib, cfg, opts, meta, cache, default_timeout)
    local err, timeout
    if type(lib) ~= "string" or lib == "" then
        err = "resty_ffi: lib must be a library name or path, got " .. tostring(lib)
    elseif lib:find("\0", 1, true) then
        err = "resty_ffi: lib must not contain a NUL byte: " .. lib:gsub("%z", "\\0")
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
    local key = cfg and (lib .. "&" .. cfg) or lib
    local cached = cache[key]
    if cached then
        return cached
    end
    local max_queue = opts.max_queue or 65536
    local path = find_library(lib)
    -- the runtime may log from libffi_init on: drop what nginx would not write
    C.resty_ffi_log_filter(log_filter())
    ngx.update_time()
    local t0 = ngx.now()
    local rt = C.resty_ffi_runtime_load(key, #key, path, cfg, cfg and #cfg or -1,
                                        max_queue, opts.is_global and 1 or 0,
                                        opts.spin_us or -1,
                                        opts.poll_spin_us or -1, msg_buf, 1024)
    ngx.update_time()
    local took = ngx.now() - t0
    if took >= SLOW_LOAD then
        log(WARN, "resty_ffi: loading ", key, " took ",
            string.format("%.3f", took), " s: the worker ",
            "serves nothing while a runtime's libffi_init runs (start threads ",
            "and return)")
    end
    if rt == nil then
        err = "resty_ffi: " .. ffi_string(msg_buf)
        log(ERR, err)
        return nil, err
    end
    if opts.name ~= nil then
        local name = tostring(opts.name)
        C.resty_ffi_runtime_set_name(rt, name, #name)
    end
    if not dispatcher_running and not many_vms() then
        -- runtimes may log before any call parks: lines need a writer
        start_dispatcher()
    end
    start_publishing()
    local obj = setmetatable({
        __unload = unload,
        __queue_len = queue_len,
        __stats = runtime_stats,
    }, meta)
    state_of[obj] = {
        rt = rt,            -- false once unloaded
        core = rt,          -- kept after unload, for __stats
        key = key,
        cache = cache,
        timeout = timeout,
        max_queue = max_queue,
    }
    cache[key] = obj
    return obj
end

-- load(lib, cfg, opts) -> runtime | nil, err
--
-- opts: max_queue (65536), is_global (false), unpin (accepted for
-- lua-resty-ffi compatibility; a changed library file is picked up after
-- unload anyway), timeout (seconds, default 60; math.huge: until answered),
-- spin_us (most the caller spins, default 50, at most 1000; the actual spin
-- adapts to recent answer times), poll_spin_us (runtime poll spin, default
-- 50, at most 1000).
function _M.load(lib, cfg, opts)
    return load(lib, cfg, opts, mt, runtimes, _M.DEFAULT_TIMEOUT)
end

-- For resty_ffi (the lua-resty-ffi adapter): a loader with other method
-- shapes, its own cache, and no default timeout.
function _M.loader(wrap)
    local meta = method_index(wrap(call))
    local cache = {}
    return function(lib, cfg, opts)
        return load(lib, cfg, opts, meta, cache, nil)
    end
end

-- Every runtime this worker loaded (unloaded ones too: their counters
-- stay), each as rt:__stats() gives it.
function _M.runtimes()
    local n = C.resty_ffi_runtimes(nil, 0)
    local out = {}
    if n == 0 then
        return out
    end
    local buf = ffi.new("void *[?]", n)
    n = math.min(n, C.resty_ffi_runtimes(buf, n))
    for i = 0, n - 1 do
        out[#out + 1] = stats_of(buf[i])
    end
    return out
end

local cjson = require "cjson.safe"
local METRICS_DICT = "resty_ffi_stats"
local PUBLISH_EVERY = 1
local PUBLISH_TTL = 10

-- This worker's metrics, summed by runtime name.
local function worker_metrics()
    local by_name = {}
    for _, r in ipairs(_M.runtimes()) do
        local m = by_name[r.name]
        if not m then
            m = { ok = 0, error = 0, timeout = 0, refused = 0, in_flight = 0,
                  queue_length = 0, parked = 0, sum = 0, count = 0, buckets = {} }
            for i = 1, NBUCKETS + 1 do m.buckets[i] = 0 end
            by_name[r.name] = m
        end
        for k, v in pairs(r.calls) do m[k] = m[k] + v end
        m.in_flight = m.in_flight + r.in_flight
        m.queue_length = m.queue_length + r.queue_length
        m.parked = m.parked + r.parked
        m.sum = m.sum + r.latency.sum
        m.count = m.count + r.latency.count
        for i, c in ipairs(r.latency.buckets) do
            m.buckets[i] = m.buckets[i] + c
        end
    end
    local s = _M.stats()
    return { runtimes = by_name, log_lines_dropped = s.log_lines_dropped }
end

-- Writes this worker's metrics into the shared dict (expiring, so a dead
-- worker's numbers go away).
local function publish(dict)
    local blob = cjson.encode(worker_metrics())
    if blob then
        dict:set("w:" .. ngx.worker.pid(), blob, PUBLISH_TTL)
    end
end

local publishing = false
local function publish_timer(premature)
    local dict = ngx.shared[METRICS_DICT]
    if premature or not dict then
        return
    end
    publish(dict)
end

-- Starts publishing this worker's metrics every second, once, when the
-- operator declared the shared dict (not with lua_code_cache off: a timer
-- would keep each request's VM alive; there a worker publishes when it
-- serves a scrape).
start_publishing = function()
    if publishing or not ngx.shared[METRICS_DICT] or many_vms() then
        return
    end
    publishing = ngx.timer.every(PUBLISH_EVERY, publish_timer) and true
end
_M.start_publishing = start_publishing

local function label(v)
    return (tostring(v):gsub("\\", "\\\\"):gsub("\n", "\\n"):gsub('"', '\\"'))
end

-- The Prometheus text exposition of resty-ffi's metrics for the whole
-- nginx (all workers summed), or nil, err. Needs
-- `lua_shared_dict resty_ffi_stats 1m;` in the http block.
function _M.prometheus()
    local dict = ngx.shared[METRICS_DICT]
    if not dict then
        return nil, "resty_ffi: prometheus() needs `lua_shared_dict "
               .. METRICS_DICT .. " 1m;` in the http block: every worker "
               .. "publishes its metrics there"
    end
    start_publishing()
    publish(dict)
    local total = { runtimes = {}, log_lines_dropped = 0 }
    for _, key in ipairs(dict:get_keys(0)) do
        local w = key:sub(1, 2) == "w:" and cjson.decode(dict:get(key) or "")
        if type(w) == "table" then
            total.log_lines_dropped = total.log_lines_dropped + (w.log_lines_dropped or 0)
            for name, m in pairs(w.runtimes or {}) do
                local t = total.runtimes[name]
                if not t then
                    total.runtimes[name] = m
                else
                    for k, v in pairs(m) do
                        if k == "buckets" then
                            for i, c in ipairs(v) do t.buckets[i] = t.buckets[i] + c end
                        else
                            t[k] = t[k] + v
                        end
                    end
                end
            end
        end
    end
    local names = {}
    for name in pairs(total.runtimes) do names[#names + 1] = name end
    table.sort(names)
    local out = {}
    local function add(...) out[#out + 1] = table.concat({ ... }) end
    add("# HELP resty_ffi_calls_total Calls to resty-ffi runtimes, by outcome.")
    add("# TYPE resty_ffi_calls_total counter")
    for _, name in ipairs(names) do
        local m = total.runtimes[name]
        for _, o in ipairs({ "ok", "error", "timeout", "refused" }) do
            add('resty_ffi_calls_total{runtime="', label(name), '",outcome="', o,
                '"} ', string.format("%d", m[o]))
        end
    end
    add("# HELP resty_ffi_call_duration_seconds Time from post to answer of calls that were answered.")
    add("# TYPE resty_ffi_call_duration_seconds histogram")
    for _, name in ipairs(names) do
        local m = total.runtimes[name]
        local cum = 0
        for i = 1, NBUCKETS + 1 do
            cum = cum + m.buckets[i]
            local le = BUCKETS[i] and string.format("%g", BUCKETS[i]) or "+Inf"
            add('resty_ffi_call_duration_seconds_bucket{runtime="', label(name),
                '",le="', le, '"} ', string.format("%d", cum))
        end
        add('resty_ffi_call_duration_seconds_sum{runtime="', label(name), '"} ',
            string.format("%.9f", m.sum))
        add('resty_ffi_call_duration_seconds_count{runtime="', label(name), '"} ',
            string.format("%d", m.count))
    end
    for _, g in ipairs({ { "queue_length", "Tasks waiting in runtimes' queues." },
                         { "in_flight", "Calls posted and not yet answered and freed." },
                         { "parked", "Calls parked (waiting on the dispatcher)." } }) do
        add("# HELP resty_ffi_", g[1], " ", g[2])
        add("# TYPE resty_ffi_", g[1], " gauge")
        for _, name in ipairs(names) do
            add("resty_ffi_", g[1], '{runtime="', label(name), '"} ',
                string.format("%d", total.runtimes[name][g[1]]))
        end
    end
    add("# HELP resty_ffi_log_lines_dropped_total Runtime log lines dropped because too many waited.")
    add("# TYPE resty_ffi_log_lines_dropped_total counter")
    add("resty_ffi_log_lines_dropped_total ", string.format("%d", total.log_lines_dropped))
    return table.concat(out, "\n") .. "\n"
end

-- Number of calls of this VM parked and waiting for an answer.
function _M.waiting()
    return nwaiting
end

local STAT_NAMES = { "posted", "refused", "answered_spinning", "parked",
                     "drained", "wakes", "stray_answers", "log_lines_dropped" }
local stats_buf = ffi.new("uint64_t[?]", #STAT_NAMES)

-- Counters of this worker's call path since it started: posted (calls
-- handed to a runtime), refused (queue full or unloaded), answered_spinning
-- (answered before the caller parked), parked, drained (answers handed over
-- by the dispatcher), wakes (wake-up bytes runtimes wrote), stray_answers
-- (answers to tasks not waiting for one: a runtime answered twice or late),
-- log_lines_dropped (runtime log lines dropped because too many waited),
-- waiting (parked now, this VM), wake ("socket", or "polling" when no wake
-- socket could be made), vms (Lua VMs this worker has had: more than 1 with
-- lua_code_cache off).
function _M.stats()
    local n = C.resty_ffi_stats(stats_buf, #STAT_NAMES)
    local out = { waiting = nwaiting, wake = wake_mode,
                  vms = C.resty_ffi_channel_vms(channel) }
    for i = 1, n do
        out[STAT_NAMES[i]] = tonumber(stats_buf[i - 1])
    end
    return out
end

if C.resty_ffi_channel_vms(channel) == 2 and get_phase() ~= "init" then
    log(NOTICE, "resty_ffi: more than one Lua VM in this worker (lua_code_cache ",
        "off?): runtimes are shared by all of them, and each VM's answers ",
        "reach only that VM")
end

return _M
