-- resty.ffi: call runtimes written in Rust, Go, Python, Java... from
-- nginx-lua without blocking the worker.
--
-- A call posts the request to the runtime's task queue in libresty_ffi.so
-- (the string is borrowed, not copied), spins briefly for the answer when
-- nothing else of this worker is waiting, and otherwise parks on an
-- ngx.semaphore. One dispatcher light thread per worker sleeps on a private
-- unix socket; runtime threads write a byte there when an answer to a parked
-- call arrives, and the dispatcher drains the answers in batches and wakes
-- each waiter. See DESIGN.md, "The nginx side needs no recompiled nginx".

local ffi = require "ffi"
local semaphore = require "ngx.semaphore"

local ffi_string = ffi.string
local ngx = ngx
local get_phase = ngx.get_phase
local exiting = ngx.worker.exiting
local timer_at = ngx.timer.at
local log = ngx.log
local ERR = ngx.ERR
local sema_new = semaphore.new
local type = type
local tostring = tostring
local setmetatable = setmetatable
local pcall = pcall

local _M = { _VERSION = "0.1.0" }

ffi.cdef[[
void *resty_ffi_runtime_load(const char *path, const char *cfg, int cfg_len,
                             int max_queue, int is_global, int caller_spin_us,
                             int poll_spin_us, char *err, int err_len);
void resty_ffi_runtime_unload(void *rt);
int resty_ffi_runtime_queue_len(void *rt);
void *resty_ffi_post(void *rt, const char *req, int len, double id, int *err);
int resty_ffi_wait(void *task, int may_spin);
int resty_ffi_task_result(void *task, const char **rsp, int *len);
double resty_ffi_task_id(void *task);
void resty_ffi_task_free(void *task);
int resty_ffi_drain(void **out, int max);
int resty_ffi_prepare_sleep(void);
int resty_ffi_wake_listen(char *buf, int cap);
int resty_ffi_wake_accept(char *err, int cap);
void resty_ffi_wake(void);
int resty_ffi_stats(uint64_t *out, int max);
]]

-- Default call timeout in seconds, like nginx's proxy_read_timeout.
_M.DEFAULT_TIMEOUT = 60
local DRAIN_BATCH = 64
local FOREVER_MS = 86400 * 1000
local RESTART_DELAY = 0.1

local function readable(path)
    local f = io.open(path, "rb")
    if f then
        f:close()
        return true
    end
    return false
end

-- Finds a library the way DESIGN.md says: a path is used as is; a short
-- name ("echo") or file name ("libecho.so") is looked up in
-- LD_LIBRARY_PATH and the folders of lua_package_cpath, then left to the
-- dynamic linker's own search.
local function find_library(lib)
    if lib:find("/", 1, true) then
        return lib
    end
    local names
    if lib:find("%.so[%.%d]*$") then
        names = { lib }
    else
        names = { "lib" .. lib .. ".so", lib .. ".so" }
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
    for _, dir in ipairs(dirs) do
        for _, name in ipairs(names) do
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
local YIELDABLE = {
    rewrite = true, access = true, content = true, timer = true,
    ssl_cert = true, ssl_session_fetch = true, ssl_client_hello = true,
}

-- Per-worker state (each worker has its own Lua VM).
local runtimes = {}       -- cache key -> runtime object
local waiters = {}        -- call id -> waiter table, or the request of a call
                          -- that timed out (kept alive for the late answer)
local nwaiting = 0        -- parked calls neither answered nor timed out
local next_id = 0
local dispatcher_running = false
local exit_timer_set = false

local errp = ffi.new("int[1]")
local rspp = ffi.new("const char *[1]")
local lenp = ffi.new("int[1]")
local drain_buf = ffi.new("void *[?]", DRAIN_BATCH)
local msg_buf = ffi.new("char[?]", 1024)

-- Reads a finished task's answer in lua-resty-ffi's shape and frees it.
local function take_result(task)
    local rc = C.resty_ffi_task_result(task, rspp, lenp)
    local p = rspp[0]
    local res
    if p ~= nil then
        res = ffi_string(p, lenp[0])
    end
    C.resty_ffi_task_free(task)
    if rc == 0 then
        return true, res, nil
    end
    return false, rc, res
end

-- Hands every drained answer to its waiter; frees answers nobody waits for.
local function drain()
    while true do
        local n = C.resty_ffi_drain(drain_buf, DRAIN_BATCH)
        for i = 0, n - 1 do
            local task = drain_buf[i]
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
        if n < DRAIN_BATCH then
            return
        end
    end
end
_M.drain = drain

local function on_worker_exit(premature)
    if premature then
        -- wake the dispatcher so it sees ngx.worker.exiting()
        C.resty_ffi_wake()
    end
end

local function dispatch_loop()
    local n = C.resty_ffi_wake_listen(msg_buf, 1024)
    if n < 0 then
        return nil, ffi_string(msg_buf)
    end
    local sock = ngx.socket.tcp()
    local ok, err = sock:connect("unix:" .. ffi_string(msg_buf, n))
    if not ok then
        return nil, "cannot connect the wake socket: " .. err
    end
    if C.resty_ffi_wake_accept(msg_buf, 1024) ~= 0 then
        sock:close()
        return nil, ffi_string(msg_buf)
    end
    sock:settimeouts(1000, 1000, FOREVER_MS)
    if not exit_timer_set then
        exit_timer_set = timer_at(FOREVER_MS / 1000, on_worker_exit) and true
    end
    while true do
        drain()
        if exiting() and nwaiting == 0 then
            sock:close()
            return true
        end
        if C.resty_ffi_prepare_sleep() == 0 then
            local data, rerr = sock:receiveany(4096)
            if not data and rerr ~= "timeout" then
                sock:close()
                return nil, "wake socket: " .. rerr
            end
        end
    end
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
        if nwaiting > 0 and not exiting() then
            -- retry soon, not at once: a broken environment (no writable
            -- TMPDIR) must not turn into a busy loop of timers
            start_dispatcher(RESTART_DELAY)
        end
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
-- can start it. Polls the completion queue with ngx.sleep.
local function wait_polling(w, timeout)
    local waited = 0
    while not w.done and waited < timeout do
        ngx.sleep(0.001)
        waited = waited + 0.001
        drain()
    end
    return w.done
end

local function park(id, req, timeout)
    local w = { sema = sema_new(), req = req }
    waiters[id] = w
    nwaiting = nwaiting + 1
    local done
    if dispatcher_running or start_dispatcher() then
        local ok, err = w.sema:wait(timeout)
        done = ok or w.done
        if not ok and err ~= "timeout" and not w.done then
            log(ERR, "resty_ffi: waiting for call ", id, " failed: ", err)
        end
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
        C.resty_ffi_wake()
    end
    return false, nil, "resty_ffi: call timed out after " .. timeout .. " s"
end

local function post_error(self, code)
    if code == 1 then
        return "resty_ffi: task queue is full (max_queue " .. self._max_queue
               .. "): the runtime is not keeping up"
    elseif code == 2 then
        return "resty_ffi: runtime is unloaded"
    end
    return "resty_ffi: cannot post the call (code " .. tostring(code) .. ")"
end

-- rt:anyname(req [, timeout]) -> ok, res_or_rc, err
local function call(self, req, timeout)
    local rt = self._rt
    if not rt then
        return false, nil, "resty_ffi: runtime is unloaded"
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
    if type(timeout) ~= "number" or timeout <= 0 then
        timeout = self._timeout
    end
    next_id = next_id + 1
    local id = next_id
    local task = C.resty_ffi_post(rt, req, len, id, errp)
    if task == nil then
        return false, nil, post_error(self, errp[0])
    end
    if C.resty_ffi_wait(task, nwaiting == 0 and 1 or 0) == 1 then
        return take_result(task)
    end
    return park(id, req, timeout)
end

local function unload(self)
    local rt = self._rt
    if not rt then
        return
    end
    self._rt = false
    runtimes[self._key] = nil
    C.resty_ffi_runtime_unload(rt)
end

local function queue_len(self)
    local rt = self._rt
    if not rt then
        return 0
    end
    return C.resty_ffi_runtime_queue_len(rt)
end

local mt = {
    -- any method name calls the runtime, as in lua-resty-ffi; cache it on
    -- the object so LuaJIT sees a plain table hit, not a new closure
    __index = function(self, k)
        rawset(self, k, call)
        return call
    end,
    __call = call,
}

local function check_opts(opts)
    if opts == nil then
        return {}
    end
    if type(opts) ~= "table" then
        return nil, "opts must be a table, got " .. type(opts)
    end
    local function non_negative(name, integer)
        local v = opts[name]
        if v ~= nil and (type(v) ~= "number" or v < 0
                         or (integer and v % 1 ~= 0)) then
            return nil, "opts." .. name .. " must be a non-negative "
                   .. (integer and "integer" or "number") .. ", got "
                   .. tostring(v)
        end
        return true
    end
    for _, spec in ipairs({ { "max_queue", true }, { "timeout", false },
                            { "spin_us", true }, { "poll_spin_us", true } }) do
        local ok, err = non_negative(spec[1], spec[2])
        if not ok then
            return nil, err
        end
    end
    if opts.max_queue == 0 or opts.timeout == 0 then
        return nil, "opts.max_queue and opts.timeout must be positive"
    end
    return opts
end

-- load(lib, cfg, opts) -> runtime | nil, err
--
-- opts: max_queue (65536), is_global (false), unpin (accepted for
-- lua-resty-ffi compatibility; libraries always stay loaded), timeout
-- (seconds, default 60), spin_us (most the caller spins, default 50; the
-- actual spin adapts to recent answer times), poll_spin_us
-- (runtime poll spin, default 50).
function _M.load(lib, cfg, opts)
    if type(lib) ~= "string" or lib == "" then
        return nil, "resty_ffi: lib must be a library name or path, got "
               .. tostring(lib)
    end
    if cfg ~= nil and type(cfg) ~= "string" then
        return nil, "resty_ffi: cfg must be a string or nil, got " .. type(cfg)
    end
    local err
    opts, err = check_opts(opts)
    if not opts then
        return nil, "resty_ffi: " .. err
    end
    if get_phase() == "init" then
        return nil, "resty_ffi: cannot load a runtime in init_by_lua: it runs "
               .. "in the nginx master, whose threads do not survive fork; load "
               .. "it in init_worker_by_lua or later"
    end
    local key = cfg and (lib .. "&" .. cfg) or lib
    local cached = runtimes[key]
    if cached then
        return cached
    end
    local max_queue = opts.max_queue or 65536
    local path = find_library(lib)
    local rt = C.resty_ffi_runtime_load(path, cfg, cfg and #cfg or -1,
                                        max_queue, opts.is_global and 1 or 0,
                                        opts.spin_us or -1,
                                        opts.poll_spin_us or -1, msg_buf, 1024)
    if rt == nil then
        return nil, "resty_ffi: " .. ffi_string(msg_buf)
    end
    local obj = setmetatable({
        _rt = rt,
        _key = key,
        _timeout = opts.timeout or _M.DEFAULT_TIMEOUT,
        _max_queue = max_queue,
        __unload = unload,
        __queue_len = queue_len,
    }, mt)
    runtimes[key] = obj
    return obj
end

-- Number of calls of this worker parked and waiting for an answer.
function _M.waiting()
    return nwaiting
end

local STAT_NAMES = { "posted", "refused", "answered_spinning", "parked",
                     "drained", "wakes" }
local stats_buf = ffi.new("uint64_t[?]", #STAT_NAMES)

-- Counters of this worker's call path since it started: posted (calls
-- handed to a runtime), refused (queue full or unloaded), answered_spinning
-- (answered before the caller parked), parked, drained (answers handed over
-- by the dispatcher), wakes (wake-up bytes runtimes wrote), waiting (parked
-- now).
function _M.stats()
    local n = C.resty_ffi_stats(stats_buf, #STAT_NAMES)
    local out = { waiting = nwaiting }
    for i = 1, n do
        out[STAT_NAMES[i]] = tonumber(stats_buf[i - 1])
    end
    return out
end

return _M
