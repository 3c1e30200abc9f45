-- resty.ffi.lib: finds libraries and loads the core, libresty_ffi.so.
--
-- A library is named as lua-resty-ffi users name it: a path, a file name or
-- a short name (`echo` -> `libecho.so`), plus the loader names
-- lua-resty-ffi has had. The core is loaded once per Lua VM with
-- RTLD_GLOBAL, so runtimes find its ngx_http_lua_ffi_* symbols; its C ABI
-- is declared here, once, for every module of resty.ffi.

local ffi = require "ffi"

local io_open = io.open
local os_getenv = os.getenv
local ipairs = ipairs
local tostring = tostring
local pcall = pcall

local _M = { _VERSION = "0.1.0" }

ffi.cdef[[
void *resty_ffi_runtime_load(const char *key, int key_len, const char *path,
                             const char *cfg, int cfg_len, int max_queue,
                             int is_global, int caller_spin_us,
                             int poll_spin_us, char *err, int err_len);
void resty_ffi_runtime_unload(void *rt);
int resty_ffi_runtime_queue_len(void *rt);
void *resty_ffi_post(void *rt, void *ch, const char *req, int len, double id,
                     int *err);
void *resty_ffi_post_deferred(void *rt, void *ch, const char *req, int len,
                              double id, int *err);
void resty_ffi_runtime_flush(void *rt);
void *resty_ffi_post_stream(void *rt, void *ch, const char *req, int len,
                            double id, int window_bytes, int window_chunks,
                            int *err);
int resty_ffi_stream_take(void *task, const char **rsp, int *len, int max);
void resty_ffi_task_cancel(void *task);
int resty_ffi_task_is_notice(void *task);
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
int resty_ffi_log_roll_ms(void);
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

local function readable(path)
    local f = io_open(path, "rb")
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
    for dir in (os_getenv("LD_LIBRARY_PATH") or ""):gmatch("[^:]+") do
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

return _M
