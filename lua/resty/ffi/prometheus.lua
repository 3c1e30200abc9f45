-- resty.ffi.prometheus: resty-ffi's metrics for the whole nginx, in the
-- Prometheus text exposition format.
--
-- Each worker publishes its metrics into the shared dict resty_ffi_stats
-- (declared by the operator: `lua_shared_dict resty_ffi_stats 1m;`) every
-- second; a scrape of any worker sums them.

local cjson = require "cjson.safe"
local stats = require "resty.ffi.stats"
local channel = require "resty.ffi.channel"

local ngx = ngx
local ipairs = ipairs
local pairs = pairs
local type = type
local tostring = tostring
local string_format = string.format
local table_concat = table.concat

local _M = { _VERSION = "0.1.0" }

local METRICS_DICT = "resty_ffi_stats"
local PUBLISH_EVERY = 1
local PUBLISH_TTL = 10
local NBUCKETS = stats.NBUCKETS
local BUCKETS = stats.LATENCY_BUCKETS

-- This worker's metrics, summed by runtime name.
local function worker_metrics()
    local by_name = {}
    for _, r in ipairs(stats.runtimes()) do
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
    local s = stats.worker()
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
function _M.start_publishing()
    if publishing or not ngx.shared[METRICS_DICT] or channel.many_vms() then
        return
    end
    publishing = ngx.timer.every(PUBLISH_EVERY, publish_timer) and true
end

local function label(v)
    return (tostring(v):gsub("\\", "\\\\"):gsub("\n", "\\n"):gsub('"', '\\"'))
end

-- The Prometheus text exposition of resty-ffi's metrics for the whole
-- nginx (all workers summed), or nil, err.
function _M.text()
    local dict = ngx.shared[METRICS_DICT]
    if not dict then
        return nil, "resty_ffi: prometheus() needs `lua_shared_dict "
               .. METRICS_DICT .. " 1m;` in the http block: every worker "
               .. "publishes its metrics there"
    end
    _M.start_publishing()
    publish(dict)
    local total = { runtimes = {}, log_lines_dropped = 0 }
    for _, key in ipairs(dict:get_keys(0)) do
        local w = key:sub(1, 2) == "w:" and cjson.decode(dict:get(key) or "")
        if type(w) == "table" then
            total.log_lines_dropped = total.log_lines_dropped
                                      + (w.log_lines_dropped or 0)
            for name, m in pairs(w.runtimes or {}) do
                local t = total.runtimes[name]
                if not t then
                    total.runtimes[name] = m
                else
                    for k, v in pairs(m) do
                        if k == "buckets" then
                            for i, c in ipairs(v) do
                                t.buckets[i] = t.buckets[i] + c
                            end
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
    local function add(...) out[#out + 1] = table_concat({ ... }) end
    add("# HELP resty_ffi_calls_total Calls to resty-ffi runtimes, by outcome.")
    add("# TYPE resty_ffi_calls_total counter")
    for _, name in ipairs(names) do
        local m = total.runtimes[name]
        for _, o in ipairs({ "ok", "error", "timeout", "refused" }) do
            add('resty_ffi_calls_total{runtime="', label(name), '",outcome="', o,
                '"} ', string_format("%d", m[o]))
        end
    end
    add("# HELP resty_ffi_call_duration_seconds Time from post to answer of ",
        "calls that were answered.")
    add("# TYPE resty_ffi_call_duration_seconds histogram")
    for _, name in ipairs(names) do
        local m = total.runtimes[name]
        local cum = 0
        for i = 1, NBUCKETS + 1 do
            cum = cum + m.buckets[i]
            local le = BUCKETS[i] and string_format("%g", BUCKETS[i]) or "+Inf"
            add('resty_ffi_call_duration_seconds_bucket{runtime="', label(name),
                '",le="', le, '"} ', string_format("%d", cum))
        end
        add('resty_ffi_call_duration_seconds_sum{runtime="', label(name), '"} ',
            string_format("%.9f", m.sum))
        add('resty_ffi_call_duration_seconds_count{runtime="', label(name), '"} ',
            string_format("%d", m.count))
    end
    for _, g in ipairs({ { "queue_length", "Tasks waiting in runtimes' queues." },
                         { "in_flight", "Calls posted and not yet answered and freed." },
                         { "parked", "Calls parked (waiting on the dispatcher)." } }) do
        add("# HELP resty_ffi_", g[1], " ", g[2])
        add("# TYPE resty_ffi_", g[1], " gauge")
        for _, name in ipairs(names) do
            add("resty_ffi_", g[1], '{runtime="', label(name), '"} ',
                string_format("%d", total.runtimes[name][g[1]]))
        end
    end
    add("# HELP resty_ffi_log_lines_dropped_total Runtime log lines dropped ",
        "because too many waited.")
    add("# TYPE resty_ffi_log_lines_dropped_total counter")
    add("resty_ffi_log_lines_dropped_total ",
        string_format("%d", total.log_lines_dropped))
    return table_concat(out, "\n") .. "\n"
end

return _M
