-- bench.grpc: the Lua side of benchmark section 5 (gRPC), the same calls
-- the native tonic client (grpc_bench_client) makes against the same
-- server in the same run:
--   seq    one request loops N SayHello calls, timing each
--   conc   C light threads share N calls over one connection
-- Both answer JSON the driver (benches/run.py) records.

local ffi = require "ffi"
local cjson = require "cjson.safe"
local grpc = require "resty.ffi.grpc"
local resty_ffi = require "resty.ffi"
require "bench.run"     -- declares clock_gettime and its timespec

local C = ffi.C
local tonumber = tonumber
local floor = math.floor
local sort = table.sort
local spawn = ngx.thread.spawn
local wait = ngx.thread.wait

local _M = { _VERSION = "0.1.0" }

local PATH = "/helloworld.Greeter/SayHello"
local ts = ffi.new("resty_ffi_bench_timespec")

local function now_ns()
    C.clock_gettime(1, ts)
    return tonumber(ts.tv_sec) * 1e9 + tonumber(ts.tv_nsec)
end

local function fail(msg)
    ngx.status = 502
    ngx.say(msg)
    return ngx.exit(502)
end

local function connect(args)
    if args.cfg and args.cfg ~= "" then
        grpc.CFG = args.cfg
    end
    if args.spin_us or args.poll_spin_us then
        grpc.LOAD_OPTS = { spin_us = tonumber(args.spin_us),
                           poll_spin_us = tonumber(args.poll_spin_us) }
    end
    local ok, conn, err = grpc.connect(args.addr)
    if not ok then
        return fail("connect: " .. tostring(err))
    end
    for _ = 1, 200 do      -- warm the connection and the JIT
        local ok2, res = conn:unary(PATH, { name = "warm" })
        if not ok2 then
            return fail("warm-up: " .. tostring(res))
        end
    end
    return conn
end

-- GET /grpc/seq?addr=A&n=N
function _M.seq()
    local args = ngx.req.get_uri_args()
    local n = floor(tonumber(args.n) or 20000)
    local conn = connect(args)
    local req = { name = "bench" }
    local lat = ffi.new("double[?]", n)
    local s0 = resty_ffi.stats()
    local t0 = now_ns()
    local prev = t0
    for i = 0, n - 1 do
        local ok, res = conn:unary(PATH, req)
        if not ok or res.message ~= "Hello bench!" then
            return fail("call " .. i .. ": " .. tostring(res))
        end
        local t = now_ns()
        lat[i] = t - prev
        prev = t
    end
    local s1 = resty_ffi.stats()
    local sorted = {}
    for i = 1, n do
        sorted[i] = lat[i - 1]
    end
    sort(sorted)
    ngx.say(cjson.encode({
        calls = n,
        wall_us_per_call = (prev - t0) / n / 1e3,
        p50_us = sorted[floor((n - 1) * 0.50 + 0.5) + 1] / 1e3,
        p99_us = sorted[floor((n - 1) * 0.99 + 0.5) + 1] / 1e3,
        -- how the calls were answered: while the caller spun, or parked
        -- (then the dispatcher handed them over, woken by `wakes` bytes)
        spun = s1.answered_spinning - s0.answered_spinning,
        parked = s1.parked - s0.parked,
        wakes = s1.wakes - s0.wakes,
    }))
end

local function caller(conn, n)
    local req = { name = "bench" }
    for _ = 1, n do
        local ok, res = conn:unary(PATH, req)
        if not ok or res.message ~= "Hello bench!" then
            return tostring(res)
        end
    end
    return nil
end

-- GET /grpc/conc?addr=A&n=N&c=C
function _M.conc()
    local args = ngx.req.get_uri_args()
    local c = floor(tonumber(args.c) or 64)
    local per = floor((tonumber(args.n) or 20000) / c)
    local conn = connect(args)
    local threads = {}
    local t0 = now_ns()
    for i = 1, c do
        threads[i] = spawn(caller, conn, per)
    end
    for i = 1, c do
        local ok, err = wait(threads[i])
        if not ok or err then
            return fail("caller " .. i .. ": " .. tostring(err))
        end
    end
    local secs = (now_ns() - t0) / 1e9
    ngx.say(cjson.encode({
        calls = per * c,
        seconds = secs,
        rate = per * c / secs,
        us_per_call = secs * 1e6 / (per * c),
    }))
end

return _M
