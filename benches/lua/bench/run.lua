-- bench.run: the Lua side of resty-ffi's benchmarks.
--
-- Each function is the body of one bench location the driver
-- (benches/run.py) generates:
--   seq_ffi      one request loops N calls to a runtime (sections 1, 2)
--   seq_socket   the same against the unix-socket proxy (section 3)
--   plain, call, proxy   one-request-one-answer locations for wrk (section 4)
-- The sequential loops time every call with clock_gettime through LuaJIT
-- FFI (about 20 ns each, paid alike by every variant) and answer JSON:
-- wall µs per call, p50, p99. CPU is measured by the driver from /proc.

local ffi = require "ffi"
local cjson = require "cjson.safe"
local resty_ffi = require "resty.ffi"
local mp = require "MessagePack"
local bit = require "bit"

local ngx = ngx
local C = ffi.C
local tcp = ngx.socket.tcp
local str_char = string.char
local str_byte = string.byte
local str_rep = string.rep
local band = bit.band
local rshift = bit.rshift
local lshift = bit.lshift
local tonumber = tonumber
local sort = table.sort
local mp_pack = mp.pack
local mp_unpack = mp.unpack

local _M = { _VERSION = "0.1.0" }

pcall(ffi.cdef, [[
typedef struct { long tv_sec; long tv_nsec; } resty_ffi_bench_timespec;
int clock_gettime(int clk, resty_ffi_bench_timespec *ts);
]])

local CLOCK_MONOTONIC = 1
local ts = ffi.new("resty_ffi_bench_timespec")

local function now_ns()
    C.clock_gettime(CLOCK_MONOTONIC, ts)
    return tonumber(ts.tv_sec) * 1e9 + tonumber(ts.tv_nsec)
end

local payloads = {}

-- A payload of `size` bytes, the same string every time (built once).
local function payload(size)
    local p = payloads[size]
    if not p then
        p = str_rep("0123456789abcdef", math.ceil(size / 16)):sub(1, size)
        payloads[size] = p
    end
    return p
end
_M.payload = payload

local function fail(status, msg)
    ngx.status = status
    ngx.say(msg)
    return ngx.exit(status)
end

-- Answers the timing of one loop as JSON.
local function report(lat, n, t0, t1, extra)
    local sorted = {}
    for i = 1, n do
        sorted[i] = lat[i - 1]
    end
    sort(sorted)
    local out = {
        calls = n,
        wall_us_per_call = (t1 - t0) / n / 1e3,
        p50_us = sorted[math.floor((n - 1) * 0.50 + 0.5) + 1] / 1e3,
        p99_us = sorted[math.floor((n - 1) * 0.99 + 0.5) + 1] / 1e3,
        p999_us = sorted[math.floor((n - 1) * 0.999 + 0.5) + 1] / 1e3,
        max_us = sorted[n] / 1e3,
    }
    -- the calls slower than 1 ms: where a mean far above the p99 comes from
    local slow, slow_us = 0, 0
    for i = n, 1, -1 do
        if sorted[i] < 1e6 then
            break
        end
        slow, slow_us = slow + 1, slow_us + sorted[i] / 1e3
    end
    out.over_1ms = slow
    out.over_1ms_us = slow_us
    for k, v in pairs(extra or {}) do
        out[k] = v
    end
    ngx.say(cjson.encode(out))
end

local function uint(args, name, default)
    local v = tonumber(args[name])
    if not v or v < 0 then
        return default
    end
    return math.floor(v)
end

local function load_runtime(lib, cfg, args)
    local opts = { timeout = 10 }
    if args then
        opts.spin_us = tonumber(args.spin_us)
        opts.poll_spin_us = tonumber(args.poll_spin_us)
    end
    if cfg == "" then
        cfg = nil
    end
    return resty_ffi.load(lib, cfg, opts)
end

-- GET /seq?lib=L&cfg=C&payload=B&n=N[&spin_us=&poll_spin_us=]
function _M.seq_ffi()
    local args = ngx.req.get_uri_args()
    local n = uint(args, "n", 20000)
    local req = payload(uint(args, "payload", 512))
    local rt, err = load_runtime(args.lib, args.cfg or "", args)
    if not rt then
        return fail(500, err)
    end
    local lat = ffi.new("double[?]", n)
    local s0 = resty_ffi.stats()
    local t0 = now_ns()
    local prev = t0
    for i = 0, n - 1 do
        local ok, res, cerr = rt:echo(req)
        if not ok or res ~= req then
            return fail(502, "call " .. i .. " failed: rc=" .. tostring(res)
                        .. " err=" .. tostring(cerr))
        end
        local t = now_ns()
        lat[i] = t - prev
        prev = t
    end
    local s1 = resty_ffi.stats()
    report(lat, n, t0, prev, {
        parked_now = resty_ffi.waiting(),
        spun = s1.answered_spinning - s0.answered_spinning,
        parked = s1.parked - s0.parked,
        thread_wakeups = s1.thread_wakeups - s0.thread_wakeups,
        moved_off = (s1.moved_off or 0) - (s0.moved_off or 0),
    })
end

-- ---- the proxy model: cosockets, keepalive pool, length-prefixed frames --

local POOL_SIZE = 64

local function be32(n)
    return str_char(band(rshift(n, 24), 255), band(rshift(n, 16), 255),
                    band(rshift(n, 8), 255), band(n, 255))
end

local function read_be32(s)
    local a, b, c, d = str_byte(s, 1, 4)
    return lshift(a, 24) + lshift(b, 16) + lshift(c, 8) + d
end

-- One frame out, one frame back, on a pooled connection.
local function roundtrip(path, body)
    local sock = tcp()
    sock:settimeouts(1000, 10000, 10000)
    local ok, err = sock:connect(path)
    if not ok then
        return nil, "connect " .. path .. ": " .. err
    end
    local frame = { be32(#body), body }
    ok, err = sock:send(frame)
    if not ok then
        sock:close()
        return nil, "send: " .. err
    end
    local hdr
    hdr, err = sock:receive(4)
    if not hdr then
        sock:close()
        return nil, "receive: " .. err
    end
    local rsp
    rsp, err = sock:receive(read_be32(hdr))
    if not rsp then
        sock:close()
        return nil, "receive: " .. err
    end
    sock:setkeepalive(60000, POOL_SIZE)
    return rsp
end

-- Calls the proxy server: raw echo, or the MessagePack RPC command `cmd`.
local function proxy_call(path, proto, cmd, arg)
    if proto == "raw" then
        return roundtrip(path, arg)
    end
    local rsp, err = roundtrip(path, mp_pack({ cmd, arg }))
    if not rsp then
        return nil, err
    end
    local ok, msg = pcall(mp_unpack, rsp)
    if not ok or type(msg) ~= "table" then
        return nil, "bad MessagePack answer"
    end
    if msg[1] ~= 0 then
        return nil, "server error: " .. tostring(msg[2])
    end
    return msg[2]
end
_M.proxy_call = proxy_call

-- GET /seq_socket?path=P&proto=raw|msgpack&cmd=ECHO|PING&payload=B&n=N
function _M.seq_socket()
    local args = ngx.req.get_uri_args()
    local n = uint(args, "n", 20000)
    local req = payload(uint(args, "payload", 512))
    local path = "unix:" .. args.path
    local proto = args.proto or "raw"
    local cmd = args.cmd or "ECHO"
    local want = req
    if cmd == "PING" then
        req, want = nil, "PONG"
    end
    local lat = ffi.new("double[?]", n)
    local t0 = now_ns()
    local prev = t0
    for i = 0, n - 1 do
        local res, err = proxy_call(path, proto, cmd, req)
        if res ~= want then
            return fail(502, "call " .. i .. " failed: " .. tostring(err))
        end
        local t = now_ns()
        lat[i] = t - prev
        prev = t
    end
    report(lat, n, t0, prev)
end

-- GET /delay?path=P&ms=MS: the DELAY command answers after MS ms.
function _M.delay()
    local args = ngx.req.get_uri_args()
    local ms = uint(args, "ms", 1)
    local t0 = now_ns()
    local res, err = proxy_call("unix:" .. args.path, "msgpack", "DELAY", ms)
    if res ~= ms then
        return fail(502, "DELAY failed: " .. tostring(err))
    end
    ngx.say(cjson.encode({ ms = ms, took_ms = (now_ns() - t0) / 1e6 }))
end

-- ---- streams (section 7) -------------------------------------------------

-- Answers a stream's figures as JSON: chunks, bytes, seconds, time to the
-- first chunk.
local function stream_report(chunks, bytes, t0, t_first, t1)
    ngx.say(cjson.encode({
        chunks = chunks, bytes = bytes,
        secs = (t1 - t0) / 1e9,
        ttfb_us = (t_first - t0) / 1e3,
        chunks_per_s = chunks / ((t1 - t0) / 1e9),
        mb_per_s = bytes / 1e6 / ((t1 - t0) / 1e9),
    }))
end

-- GET /stream_ffi?lib=L&cfg=C&req=R&n=N&size=B: one rt:__stream(req), every
-- chunk read; the runtime must send N chunks of B bytes.
function _M.stream_ffi()
    local args = ngx.req.get_uri_args()
    local n, size = uint(args, "n", 1000), uint(args, "size", 64)
    local rt, err = load_runtime(args.lib, args.cfg or "", args)
    if not rt then
        return fail(500, err)
    end
    local t0 = now_ns()
    local st, serr = rt:__stream(args.req)
    if not st then
        return fail(500, serr)
    end
    local chunks, bytes, t_first = 0, 0, nil
    while true do
        local chunk, cerr, rc = st:recv()
        if not chunk then
            if cerr then
                return fail(502, "stream failed: " .. cerr .. " "
                                 .. tostring(rc))
            end
            break
        end
        if not t_first then
            t_first = now_ns()
        end
        chunks = chunks + 1
        bytes = bytes + #chunk
    end
    local t1 = now_ns()
    st:close()
    if chunks ~= n or bytes ~= n * size then
        return fail(502, "got " .. chunks .. " chunks, " .. bytes .. " bytes")
    end
    stream_report(chunks, bytes, t0, t_first or t1, t1)
end

-- GET /stream_socket?path=P&n=N&size=B: the proxy model streams the same
-- bytes: one STREAM request, N length-prefixed frames back on a pooled
-- connection, an empty frame at the end.
function _M.stream_socket()
    local args = ngx.req.get_uri_args()
    local n, size = uint(args, "n", 1000), uint(args, "size", 64)
    local sock = tcp()
    sock:settimeouts(1000, 10000, 10000)
    local t0 = now_ns()
    local ok, err = sock:connect("unix:" .. args.path)
    if not ok then
        return fail(502, "connect: " .. err)
    end
    local req = mp_pack({ "STREAM", n, size })
    ok, err = sock:send({ be32(#req), req })
    if not ok then
        return fail(502, "send: " .. err)
    end
    local chunks, bytes, t_first = 0, 0, nil
    while true do
        local hdr, rerr = sock:receive(4)
        if not hdr then
            return fail(502, "receive: " .. rerr)
        end
        local len = read_be32(hdr)
        if len == 0 then
            break
        end
        local chunk
        chunk, rerr = sock:receive(len)
        if not chunk then
            return fail(502, "receive: " .. rerr)
        end
        if not t_first then
            t_first = now_ns()
        end
        chunks = chunks + 1
        bytes = bytes + #chunk
    end
    local t1 = now_ns()
    sock:setkeepalive(60000, POOL_SIZE)
    stream_report(chunks, bytes, t0, t_first or t1, t1)
end

-- ---- one request, one answer: the wrk locations -------------------------

local PAYLOAD_512 = payload(512)

-- The ceiling: Lua answers 512 bytes itself.
function _M.plain()
    ngx.print(PAYLOAD_512)
end

-- The plain answer after one bare yield and resume (ngx.sleep(0): the
-- coroutine yields, a posted event resumes it in the same event-loop
-- cycle). No thread, no runtime: the least any call that does not block
-- the worker costs in nginx-lua, the floor under section 4's call rows.
function _M.yield_plain()
    ngx.sleep(0)
    ngx.print(PAYLOAD_512)
end

-- One 512 B echo call to a runtime per request. `opts` may carry spin_us
-- and poll_spin_us (a runtime entry's variant in run.py).
function _M.call(lib, cfg, opts)
    local rt, err = load_runtime(lib, cfg, opts)
    if not rt then
        return fail(500, err)
    end
    local ok, res, cerr = rt:echo(PAYLOAD_512)
    if not ok then
        return fail(502, "rc=" .. tostring(res) .. " err=" .. tostring(cerr))
    end
    ngx.print(res)
end

-- One 512 B call to the proxy server per request.
function _M.proxy(path, proto)
    local res, err = proxy_call("unix:" .. path, proto, "ECHO", PAYLOAD_512)
    if not res then
        return fail(502, err)
    end
    ngx.print(res)
end

return _M
