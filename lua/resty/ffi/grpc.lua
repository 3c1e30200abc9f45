-- resty.ffi.grpc: a gRPC client for nginx-lua, in the API of
-- lua-resty-ffi-grpc (switch by changing the require), on resty.ffi and
-- libffi_grpc.so (tonic on a tokio runtime of its own).
--
-- .proto files are compiled in Rust at run time (imports, well-known
-- types) on a thread with a stack of its own: from phases that can yield
-- through the runtime (the request yields meanwhile), elsewhere by a direct
-- FFI call that waits for it, so grpc.load/loadfile work in init_worker
-- (and init) too. Messages cross as Lua tables in the protobuf
-- JSON mapping (int64 as strings, bytes as base64, enums by name, proto
-- field names). Calls go through the runtime's task queue and yield; they
-- need a phase that can yield (rewrite, access, content, timer...).
--
-- Errors never throw. Every call (connect, unary, new_stream, send, recv,
-- close_send) answers in resty.ffi's shape, `ok, res_or_code, err`, with
-- the gRPC status as a fourth value:
--   true, res [, metadata]
--   false, code, err, status
-- code: a gRPC status code (1-16): the server's, or the client's own as
-- gRPC clients report them (UNAVAILABLE for transport failures,
-- DEADLINE_EXCEEDED for deadlines and timeouts); grpc.BAD_INPUT (100) for
-- a call refused before anything was sent (bad input, a closed connection
-- or stream); nil for resty.ffi's own errors (queue full, a phase that
-- cannot yield), with no status. err: one line, "NAME (code): message"
-- for a status. status: { code, status = "NAME", message, metadata,
-- details } (details: grpc-status-details-bin, base64, or nil).

local ffi = require "ffi"
local resty_ffi = require "resty.ffi"
local find_library = require("resty.ffi.lib").find_library
local json = require("cjson.safe").new()

local ffi_new = ffi.new
local ffi_gc = ffi.gc
local ffi_string = ffi.string
local json_encode = json.encode
local json_decode = json.decode
local type = type
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local floor = math.floor
local str_find = string.find
local str_sub = string.sub
local io_open = io.open
local pairs = pairs
local pcall = pcall
local concat = table.concat
local get_phase = ngx.get_phase

-- Phases where grpc.load/loadfile yield while the runtime compiles (the
-- others, init_worker included, wait for the compile thread).
local CAN_YIELD = {
    rewrite = true, access = true, content = true, timer = true,
}

local _M = { _VERSION = "0.1.0" }

ffi.cdef[[
int resty_ffi_grpc_load(const char *src, int src_len, int is_file,
                        const char *includes, char *err, int err_len);
int resty_ffi_grpc_conn_close(double id);
int resty_ffi_grpc_stream_close(double id);
int resty_ffi_grpc_open_count(int *conns, int *streams);
int resty_ffi_grpc_loop_stats(uint64_t *out);
double resty_ffi_grpc_call_id(void);
int resty_ffi_grpc_cancel(double id);
]]

-- The library; a path, a file name or a short name as resty.ffi.load takes.
_M.LIB = "ffi_grpc"
-- The runtime's cfg ("threads=N": tokio worker threads, default 1). Set
-- before the first connect or load of the worker.
_M.CFG = nil
-- resty.ffi.load options of the runtime (max_queue, spin_us: the most a
-- caller spins for an answer; poll_spin_us: how long the runtime's loop
-- looks for the next call once the last one was answered, default 50, 0
-- off). Set before the first connect or load of the worker.
_M.LOAD_OPTS = nil
-- How long a call without a deadline may wait for the runtime (seconds).
_M.NO_DEADLINE_WAIT = 3600
-- Extra wait beyond a deadline before the bridge itself gives up.
local GRACE = 5
-- The longest timeout or deadline taken (seconds): a year. Longer ones are
-- mistakes (math.huge, 1e300) that timers and grpc-timeout cannot hold.
local MAX_SECONDS = 365 * 24 * 3600

-- The code of a call refused before anything was sent.
local BAD_INPUT = 100
_M.BAD_INPUT = BAD_INPUT

local STATUS = {
    [1] = "CANCELLED", [2] = "UNKNOWN", [3] = "INVALID_ARGUMENT",
    [4] = "DEADLINE_EXCEEDED", [5] = "NOT_FOUND", [6] = "ALREADY_EXISTS",
    [7] = "PERMISSION_DENIED", [8] = "RESOURCE_EXHAUSTED",
    [9] = "FAILED_PRECONDITION", [10] = "ABORTED", [11] = "OUT_OF_RANGE",
    [12] = "UNIMPLEMENTED", [13] = "INTERNAL", [14] = "UNAVAILABLE",
    [15] = "DATA_LOSS", [16] = "UNAUTHENTICATED",
    [BAD_INPUT] = "BAD_INPUT",
}
_M.STATUS = STATUS

pcall(json.encode_number_precision, 17)

local lib        -- the library through LuaJIT FFI (load, close)
local rt         -- the library as a resty.ffi runtime (calls)
local err_buf = ffi_new("char[?]", 4096)

local function library()
    if lib then
        return lib
    end
    local ok, l = pcall(ffi.load, find_library(_M.LIB))
    if not ok then
        return nil, "resty.ffi.grpc: cannot load " .. _M.LIB .. ": "
                    .. tostring(l)
    end
    lib = l
    return lib
end

local function runtime()
    if rt then
        return rt
    end
    local r, err = resty_ffi.load(_M.LIB, _M.CFG, _M.LOAD_OPTS)
    if not r then
        return nil, err
    end
    rt = r
    return rt
end

local function compile(src, is_file, includes)
    local l, err = library()
    if not l then
        return nil, err
    end
    if type(src) ~= "string" then
        return nil, "resty.ffi.grpc: want a string, got " .. type(src)
    end
    if includes ~= nil and type(includes) ~= "table" then
        return nil, "resty.ffi.grpc: includes must be a table of folders"
    end
    local inc = includes and concat(includes, ":") or nil
    if CAN_YIELD[get_phase()] then
        -- compile on the runtime's side while this request yields
        local r
        r, err = runtime()
        if not r then
            return nil, err
        end
        local ok, rc, msg = r:call("P" .. is_file .. "\t" .. (inc or "")
                                   .. "\n" .. src,
                                   _M.NO_DEADLINE_WAIT)
        if ok then
            return true
        end
        return nil, msg or rc
    end
    if l.resty_ffi_grpc_load(src, #src, is_file, inc, err_buf, 4096) ~= 0 then
        return nil, ffi_string(err_buf)
    end
    return true
end

-- grpc.loadfile(path [, includes]) -> true | nil, err
-- Imports are looked up in the file's folder, then in `includes`. A
-- relative path is taken from nginx's working folder, then from its prefix.
function _M.loadfile(path, includes)
    if type(path) == "string" and str_sub(path, 1, 1) ~= "/" then
        local f = io_open(path, "rb")
        if f then
            f:close()
        else
            local prefixed = ngx.config.prefix() .. path
            f = io_open(prefixed, "rb")
            if f then
                f:close()
                path = prefixed
            end
        end
    end
    return compile(path, 1, includes)
end

-- grpc.load(source [, includes]) -> true | nil, err
function _M.load(src, includes)
    return compile(src, 0, includes)
end

-- grpc.readfile(path) -> content | nil, err
function _M.readfile(path)
    local f, err = io_open(path, "rb")
    if not f then
        return nil, err
    end
    local content = f:read("*a")
    f:close()
    return content
end

-- Splits "<metadata json>\n<rest>".
local function split_meta(body)
    local nl = str_find(body, "\n", 1, true)
    if not nl then
        return {}, body
    end
    return json_decode(str_sub(body, 1, nl - 1)) or {}, str_sub(body, nl + 1)
end

-- A failed call: false, code, err, status (see the top of this file).
local function fail(code, msg, md, details)
    local name = STATUS[code]
    local err = msg
    if code ~= BAD_INPUT then
        err = name .. " (" .. code .. "): " .. msg
    end
    return false, code, err, { code = code, status = name, message = msg,
                               metadata = md or {}, details = details }
end

local function bad_input(msg)
    return fail(BAD_INPUT, msg)
end

-- What the runtime (or the bridge) answered, as a failed call.
local function failure(rc, body)
    if rc == nil then                        -- the bridge itself failed
        if body and str_find(body, "timed out", 1, true) then
            -- its wait for the answer timed out: a timeout as any other
            return fail(4, body)
        end
        return false, nil, body
    end
    local name = STATUS[rc]
    if not name or rc == BAD_INPUT then      -- refused on our side
        return fail(BAD_INPUT, body or ("resty.ffi.grpc: error "
                                        .. tostring(rc)))
    end
    -- "<metadata json>\n<details base64>\n<message>"
    local md, rest = split_meta(body or "")
    local nl = str_find(rest, "\n", 1, true)
    local details
    if nl then
        details = str_sub(rest, 1, nl - 1)
        rest = str_sub(rest, nl + 1)
    end
    return fail(rc, rest, md, details ~= "" and details or nil)
end

local function wait_for(deadline)
    if deadline then
        return deadline + GRACE
    end
    return _M.NO_DEADLINE_WAIT
end

-- Checks a timeout in seconds: true, or nil and why not.
local function check_seconds(t, what)
    if type(t) ~= "number" or not (t > 0 and t <= MAX_SECONDS) then
        return nil, "resty.ffi.grpc: " .. what .. " must be a number of "
                    .. "seconds above 0 and at most " .. MAX_SECONDS
                    .. " (a year), got " .. tostring(t)
    end
    return true
end

local function millis(t)
    if t == nil then
        return 0, nil
    end
    local ok, err = check_seconds(t, "timeout")
    if not ok then
        return nil, err
    end
    local ms = floor(t * 1000)
    return ms > 0 and ms or 1
end

-- Checks that md is a table of strings by strings: true, or nil and why not.
local function check_meta(md, what)
    if type(md) ~= "table" then
        return nil, "resty.ffi.grpc: " .. what .. " must be a table of "
                    .. "strings, got " .. type(md)
    end
    for k, v in pairs(md) do
        if type(k) ~= "string" or type(v) ~= "string" then
            return nil, "resty.ffi.grpc: " .. what .. " must be a table of "
                        .. "strings, got " .. type(k) .. " " .. tostring(k)
                        .. " = " .. type(v)
        end
    end
    return true
end

local function encode_meta(md)
    if md == nil then
        return ""
    end
    local ok, err = check_meta(md, "metadata")
    if not ok then
        return nil, err
    end
    local s
    s, err = json_encode(md)
    if not s then
        return nil, "resty.ffi.grpc: bad metadata: " .. err
    end
    return s
end

local function close_conn_gc(c)
    lib.resty_ffi_grpc_conn_close(c[0])
end

-- The finalizer of a call's guard: the call's id in a cdata that only the
-- calling coroutine holds (and, once open, its stream). Collected while
-- the call is in flight, the coroutine was killed (ngx.thread.kill, the
-- request ended): the runtime cancels the call.
local function cancel_gc(c)
    lib.resty_ffi_grpc_cancel(c[0])
end

local function guard(id)
    return ffi_gc(ffi_new("double[1]", id), cancel_gc)
end


local stream_mt = {}
stream_mt.__index = stream_mt

-- stream:send(tbl) -> true | false, code, err, status
function stream_mt.send(self, tbl)
    if self.closed then
        return bad_input("resty.ffi.grpc: stream is closed")
    end
    local body, err = json_encode(tbl)
    if not body then
        return bad_input("resty.ffi.grpc: cannot encode the table: " .. err)
    end
    local ok, rc, res = rt:call(self._send .. body, self._wait)
    if ok then
        return true
    end
    if rc == nil then
        self:close()
    end
    return failure(rc, res)
end

-- stream:recv() -> true, res | true, nil (end) | false, code, err, status
-- The messages arrive as one streamed answer (rt:__stream): the runtime
-- reads ahead of recv only as far as resty.ffi's stream window allows, and
-- stops (cancelling the RPC) once the stream is closed, collected, or the
-- worker exits.
function stream_mt.recv(self)
    if self.closed then
        return bad_input("resty.ffi.grpc: stream is closed")
    end
    local chunk, err, rc = self._st:recv(self._wait)
    if chunk then
        local t, jerr = json_decode(chunk)
        if t == nil then
            return fail(13, "resty.ffi.grpc: bad response JSON: "
                            .. tostring(jerr))
        end
        return true, t
    end
    if err == nil then
        return true, nil                     -- the end
    end
    if rc == nil then
        self:close()   -- the bridge gave up waiting, or the worker exits
    end
    return failure(rc, err)
end

-- stream:close_send() -> true | false, code, err, status
function stream_mt.close_send(self)
    if self.closed then
        return bad_input("resty.ffi.grpc: stream is closed")
    end
    local ok, rc, res = rt:call(self._close_send, self._wait)
    if ok then
        return true
    end
    if rc == nil then
        self:close()
    end
    return failure(rc, res)
end

-- stream:close() -> true. Cancels the call if still running.
function stream_mt.close(self)
    if not self.closed then
        self.closed = true
        self._st:close()
        lib.resty_ffi_grpc_stream_close(self._gc[0])
        ffi_gc(self._gc, nil)
    end
    return true
end

local conn_mt = {}
conn_mt.__index = conn_mt

local function call_head(self, prefix, id, path, opts)
    if self.closed then
        return nil, "resty.ffi.grpc: connection is closed"
    end
    if type(path) ~= "string" then
        return nil, "resty.ffi.grpc: path must be a string like "
                    .. "/pkg.Service/Method"
    end
    local ms, md, flags, deadline = 0, "", "", self._timeout
    if opts ~= nil then
        if type(opts) ~= "table" then
            return nil, "resty.ffi.grpc: opts must be a table"
        end
        local err
        if opts.timeout ~= nil then
            ms, err = millis(opts.timeout)
            if not ms then
                return nil, err
            end
            deadline = opts.timeout
        end
        md, err = encode_meta(opts.metadata)
        if not md then
            return nil, err
        end
        if opts.response_metadata then
            flags = "m"
        end
    end
    return prefix .. id .. "\t" .. ms .. "\t" .. flags .. "\t" .. path .. "\n"
               .. md .. "\n",
           wait_for(deadline)
end

-- conn:unary(path, tbl [, opts]) -> true, res [, metadata]
--                                  | false, code, err, status
-- opts: timeout (deadline, seconds), metadata (table), response_metadata
-- (true: also return the response's headers and trailers).
function conn_mt.unary(self, path, tbl, opts)
    local id = lib.resty_ffi_grpc_call_id()
    local head, wait = call_head(self, self._unary, id, path, opts)
    if not head then
        return bad_input(wait)
    end
    local body, err = json_encode(tbl == nil and {} or tbl)
    if not body then
        return bad_input("resty.ffi.grpc: cannot encode the table: " .. err)
    end
    -- a wait that times out cancels the task in the core, which the
    -- runtime sees: only a killed coroutine needs its guard
    local g = guard(id)
    local ok, res, msg = rt:call(head .. body, wait)
    ffi_gc(g, nil)
    if not ok then
        return failure(res, msg)
    end
    local md
    if opts and opts.response_metadata then
        md, res = split_meta(res)
    end
    local t
    t, err = json_decode(res)
    if t == nil then
        return fail(13, "resty.ffi.grpc: bad response JSON: " .. tostring(err))
    end
    return true, t, md
end

-- conn:new_stream(path [, opts]) -> true, stream | false, code, err, status
-- opts as for unary (timeout covers the whole stream).
function conn_mt.new_stream(self, path, opts)
    local id = lib.resty_ffi_grpc_call_id()
    local head, wait = call_head(self, self._stream, id, path, opts)
    if not head then
        return bad_input(wait)
    end
    local g = guard(id)
    local ok, res, msg = rt:call(head, wait)
    if not ok then
        if res == nil then
            -- the bridge gave up: the stream may open after all
            lib.resty_ffi_grpc_cancel(id)
        end
        ffi_gc(g, nil)
        return failure(res, msg)
    end
    -- the messages, as one streamed answer (collected, it is cancelled)
    local st, err = rt:__stream("M" .. id)
    if not st then
        lib.resty_ffi_grpc_stream_close(id)
        ffi_gc(g, nil)
        return failure(nil, err)
    end
    -- the guard becomes the stream's: collected, it closes the stream
    local s = setmetatable({
        closed = false,
        _send = "W" .. id .. "\n",
        _close_send = "E" .. id,
        _wait = wait,
        _gc = g,
        _st = st,
    }, stream_mt)
    return true, s
end

-- conn:close() -> true. The channel stays cached for other handles.
function conn_mt.close(self)
    if not self.closed then
        self.closed = true
        lib.resty_ffi_grpc_conn_close(self._gc[0])
    end
    return true
end

local CONNECT_OPTS = {
    host = "string", ca = "string", cert = "string", priv_key = "string",
    connect_timeout = "number", timeout = "number", metadata = "table",
}

-- grpc.connect(target, opts) -> true, conn | false, code, err, status
-- target: "host:port", "[::1]:port" or a URI (http://, https://).
-- opts: host (authority / TLS name), ca, cert, priv_key (PEM strings; any of
-- them means TLS), connect_timeout (s, default 10), timeout (default
-- deadline of each call, s), metadata (sent with each call).
function _M.connect(target, opts)
    if type(target) ~= "string" or target == "" then
        return bad_input("resty.ffi.grpc: target must be a string like "
                         .. "host:port")
    end
    local req = { target = target }
    if opts ~= nil then
        if type(opts) ~= "table" then
            return bad_input("resty.ffi.grpc: opts must be a table")
        end
        for k, v in pairs(opts) do
            local want = CONNECT_OPTS[k]
            if not want then
                return bad_input("resty.ffi.grpc: unknown connect option '"
                                 .. tostring(k) .. "'")
            end
            if type(v) ~= want then
                return bad_input("resty.ffi.grpc: opts." .. k .. " must be a "
                                 .. want .. ", got " .. type(v))
            end
            local ok, err = true, nil
            if want == "number" then
                ok, err = check_seconds(v, "opts." .. k)
            elseif k == "metadata" then
                ok, err = check_meta(v, "opts.metadata")
            end
            if not ok then
                return bad_input(err)
            end
            req[k] = v
        end
    end
    local l, err = library()
    if not l then
        return false, nil, err
    end
    local r
    r, err = runtime()
    if not r then
        return false, nil, err
    end
    local body
    body, err = json_encode(req)
    if not body then
        return bad_input("resty.ffi.grpc: bad connect options: " .. err)
    end
    local wait = (opts and opts.connect_timeout or 10) + GRACE
    local ok, res, msg = r:call("C" .. body, wait)
    if not ok then
        return failure(res, msg)
    end
    local id = tonumber(res)
    return true, setmetatable({
        closed = false,
        target = target,
        _unary = "U" .. id .. "\t",
        _stream = "S" .. id .. "\t",
        _timeout = opts and opts.timeout,
        _gc = ffi_gc(ffi_new("double[1]", id), close_conn_gc),
    }, conn_mt)
end

local counts = ffi_new("int[2]")

-- grpc.open_count() -> connection handles, streams open in this worker
-- (dropped ones are closed by the GC).
function _M.open_count()
    local l, err = library()
    if not l then
        return nil, err
    end
    l.resty_ffi_grpc_open_count(counts, counts + 1)
    return counts[0], counts[1]
end

local loop_buf = ffi_new("uint64_t[2]")

-- grpc.loop_stats() -> { idle_looks, taken_looking }: how often, in this
-- worker, the runtime answered its last call in flight and looked for the
-- next one (spinning within LOAD_OPTS.poll_spin_us), and how often it
-- found it then, with no wake-up of its thread.
function _M.loop_stats()
    local l, err = library()
    if not l then
        return nil, err
    end
    l.resty_ffi_grpc_loop_stats(loop_buf)
    return { idle_looks = tonumber(loop_buf[0]),
             taken_looking = tonumber(loop_buf[1]) }
end

return _M
