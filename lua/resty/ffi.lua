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
void resty_ffi_task_free(void *task);
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

local errp = ffi.new("int[1]")
local rspp = ffi.new("const char *[1]")
local lenp = ffi.new("int[1]")
local drain_buf = ffi.new("void *[?]", DRAIN_BATCH)
local msg_buf = ffi.new("char[?]", 1024)

-- More than one Lua VM in this worker: lua_code_cache is off.
local function many_vms()
    return C.resty_ffi_channel_vms(channel) > 1
end

-- Reads a finished task's answer in lua-resty-ffi's shape and frees it.
local function take_result(task)
    local rc = C.resty_ffi_task_result(task, rspp, lenp)
    local p = rspp[0]
    local n = lenp[0]
    local ok, a, b
    if n < 0 then
        ok, a, b = false, nil, "resty_ffi: bad answer: " .. ffi_string(p)
    else
        local res
        if p ~= nil then
            res = ffi_string(p, n)
        end
        if rc == 0 then
            ok, a, b = true, res, nil
        else
            ok, a, b = false, rc, res
        end
    end
    C.resty_ffi_task_free(task)
    return ok, a, b
end

-- Hands one drained answer to its waiter, or frees it if nobody waits.
local function deliver(task)
    local id = C.resty_ffi_task_id(task)
    local ok, a, b = take_result(task)
    local w = waiters[id]
    if w ~= nil then
        waiters[id] = nil
        if type(w) == "table" then
            nwaiting = nwaiting - 1
            w.ok, w.res, w.err, w.done = ok, a, b, true
            w.sema:post(1)
        end
    end
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
-- one-second timer re-armed while the dispatcher runs does the same job.
local function exit_watch(premature)
    if premature then
        C.resty_ffi_wake(channel)
    elseif dispatcher_running then
        timer_at(1, exit_watch)
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
    while true do
        drain()
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
    if many_vms() then
        timer_at(1, exit_watch)
    elseif not exit_timer_set then
        exit_timer_set = timer_at(FOREVER_MS / 1000, on_worker_exit) and true
    end
    while true do
        drain()
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

local function park(id, req, timeout)
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

-- A timeout in seconds: nil when it means "until answered", or nil, err.
local function check_timeout(v, what)
    if type(v) ~= "number" or v ~= v or v <= 0 then
        return nil, "resty_ffi: " .. what .. " must be a positive number of "
               .. "seconds (math.huge: until answered), got " .. tostring(v)
    end
    if v >= MAX_WAIT then
        return false
    end
    return v
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
        local t, err = check_timeout(timeout, "the call's timeout")
        if t == nil then
            return false, nil, err
        end
        timeout = t or nil
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
    return park(id, req, timeout)
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

local function check_opts(opts)
    if opts == nil then
        return {}
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
    if opts.timeout ~= nil then
        local _, err = check_timeout(opts.timeout, "opts.timeout")
        if err then
            return nil, err:gsub("^resty_ffi: ", "")
        end
    end
    return opts
end

-- Builds a runtime object; `meta` is the metatable its methods come from
-- (resty_ffi's adapter passes one with lua-resty-ffi's return shapes) and
-- `cache` the table it is cached in.
local function load(lib, cfg, opts, meta, cache, default_timeout)
    local err
    if type(lib) ~= "string" or lib == "" then
        err = "resty_ffi: lib must be a library name or path, got " .. tostring(lib)
    elseif lib:find("\0", 1, true) then
        err = "resty_ffi: lib must not contain a NUL byte: " .. lib:gsub("%z", "\\0")
    elseif cfg ~= nil and type(cfg) ~= "string" then
        err = "resty_ffi: cfg must be a string or nil, got " .. type(cfg)
    else
        opts, err = check_opts(opts)
        err = err and "resty_ffi: " .. err
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
    ngx.update_time()
    local t0 = ngx.now()
    local rt = C.resty_ffi_runtime_load(key, #key, path, cfg, cfg and #cfg or -1,
                                        max_queue, opts.is_global and 1 or 0,
                                        opts.spin_us or -1,
                                        opts.poll_spin_us or -1, msg_buf, 1024)
    ngx.update_time()
    local took = ngx.now() - t0
    if took >= SLOW_LOAD then
        log(WARN, "resty_ffi: loading ", key, " took ", took, " s: the worker ",
            "serves nothing while a runtime's libffi_init runs (start threads ",
            "and return)")
    end
    if rt == nil then
        err = "resty_ffi: " .. ffi_string(msg_buf)
        log(ERR, err)
        return nil, err
    end
    local timeout = opts.timeout
    if timeout == nil then
        timeout = default_timeout
    else
        timeout = check_timeout(timeout, "opts.timeout") or nil
    end
    local obj = setmetatable({
        __unload = unload,
        __queue_len = queue_len,
    }, meta)
    state_of[obj] = {
        rt = rt,
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

-- Number of calls of this VM parked and waiting for an answer.
function _M.waiting()
    return nwaiting
end

local STAT_NAMES = { "posted", "refused", "answered_spinning", "parked",
                     "drained", "wakes", "stray_answers" }
local stats_buf = ffi.new("uint64_t[?]", #STAT_NAMES)

-- Counters of this worker's call path since it started: posted (calls
-- handed to a runtime), refused (queue full or unloaded), answered_spinning
-- (answered before the caller parked), parked, drained (answers handed over
-- by the dispatcher), wakes (wake-up bytes runtimes wrote), stray_answers
-- (answers to tasks not waiting for one: a runtime answered twice or late),
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
