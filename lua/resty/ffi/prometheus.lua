-- resty.ffi.prometheus: resty-ffi's metrics for the whole nginx, in the
-- Prometheus text exposition format.
--
-- Every worker adds what its counters grew by since it last published into
-- the shared dict resty_ffi_stats (declared by the operator:
-- `lua_shared_dict resty_ffi_stats 1m;`), with the dict's atomic incr, as
-- knyar/nginx-lua-prometheus does: the dict holds one total per series for
-- its whole life, so counters only grow, across reloads and worker
-- restarts alike. What a worker last published is kept in the dict too,
-- under its pid (with lua_code_cache off every request has a Lua VM of its
-- own, but the core's counters are the process's). Gauges (queue length,
-- in flight, parked) are each worker's own, written with a short expiry and
-- removed when the worker exits, so they sum live workers only.
--
-- Publishing runs every second from a timer, at worker exit once the
-- worker's parked calls are answered, and in the worker serving a scrape.

local stats = require "resty.ffi.stats"
local channel = require "resty.ffi.channel"

local ngx = ngx
local ipairs = ipairs
local pairs = pairs
local tostring = tostring
local string_format = string.format
local table_concat = table.concat
local table_sort = table.sort

local _M = { _VERSION = "0.1.0" }

local DICT = "resty_ffi_stats"
local PUBLISH_EVERY = 1
-- A gauge not refreshed for this long belongs to a worker that is gone.
local GAUGE_TTL = 10
local EXIT_WAIT_STEP = 0.05
local SEP = "\1"
local NBUCKETS = stats.NBUCKETS
local BUCKETS = stats.LATENCY_BUCKETS
local OUTCOMES = { "ok", "error", "timeout", "refused" }
local GAUGES = {
    { "queue_length", "Tasks waiting in runtimes' queues." },
    { "in_flight", "Calls posted and not yet answered and freed." },
    { "parked", "Calls parked (waiting on the dispatcher)." },
}

local LE = {}
for i = 1, NBUCKETS + 1 do
    LE[i] = BUCKETS[i] and string_format("%g", BUCKETS[i]) or "+Inf"
end

local function escape(v)
    return (tostring(v):gsub("\\", "\\\\"):gsub("\n", "\\n"):gsub('"', '\\"'))
end

local function dict_of()
    return ngx.shared[DICT]
end

-- Adds what counter `key` grew by since this process last published it.
local function publish_counter(dict, pid, key, value)
    local last_key = "l" .. SEP .. pid .. SEP .. key
    local last = dict:get(last_key) or 0
    if value < last then
        -- another process had this pid before: its numbers are not ours
        last = 0
    end
    if value > last then
        if dict:incr("c" .. SEP .. key, value - last, 0) then
            dict:set(last_key, value)
        end
    end
end

local function publish_gauge(dict, pid, key, value)
    dict:set("g" .. SEP .. pid .. SEP .. key, value, GAUGE_TTL)
end

-- This process's numbers, summed by runtime name, into the dict.
local function publish(dict)
    local pid = ngx.worker.pid()
    local by_name = {}
    local names = {}
    for _, r in ipairs(stats.runtimes()) do
        local m = by_name[r.name]
        if not m then
            m = { ok = 0, error = 0, timeout = 0, refused = 0, in_flight = 0,
                  queue_length = 0, parked = 0, sum = 0, count = 0,
                  buckets = {} }
            for i = 1, NBUCKETS + 1 do m.buckets[i] = 0 end
            by_name[r.name] = m
            names[#names + 1] = r.name
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
    for _, name in ipairs(names) do
        local m = by_name[name]
        local rt = 'runtime="' .. escape(name) .. '"'
        for _, o in ipairs(OUTCOMES) do
            publish_counter(dict, pid, "resty_ffi_calls_total" .. SEP .. rt
                            .. ',outcome="' .. o .. '"', m[o])
        end
        local cum = 0
        for i = 1, NBUCKETS + 1 do
            cum = cum + m.buckets[i]
            publish_counter(dict, pid, "resty_ffi_call_duration_seconds_bucket"
                            .. SEP .. rt .. ',le="' .. LE[i] .. '"', cum)
        end
        publish_counter(dict, pid, "resty_ffi_call_duration_seconds_sum" .. SEP
                        .. rt, m.sum)
        publish_counter(dict, pid, "resty_ffi_call_duration_seconds_count"
                        .. SEP .. rt, m.count)
        for _, g in ipairs(GAUGES) do
            publish_gauge(dict, pid, "resty_ffi_" .. g[1] .. SEP .. rt, m[g[1]])
        end
    end
    local w = stats.worker()
    publish_counter(dict, pid, "resty_ffi_log_lines_dropped_total" .. SEP,
                    w.log_lines_dropped or 0)
    publish_counter(dict, pid, "resty_ffi_stray_answers_total" .. SEP,
                    w.stray_answers or 0)
end

-- This worker exits: publishes once its parked calls are answered, then
-- removes its gauges and what it last published.
local function retire(dict)
    while channel.parked() > 0 do
        ngx.sleep(EXIT_WAIT_STEP)
    end
    publish(dict)
    local mine = SEP .. ngx.worker.pid() .. SEP
    for _, key in ipairs(dict:get_keys(0)) do
        local kind = key:sub(1, 1)
        if (kind == "g" or kind == "l")
           and key:sub(2, #mine + 1) == mine then
            dict:delete(key)
        end
    end
end

local publishing = false
local function publish_timer(premature)
    local dict = dict_of()
    if not dict then
        return
    end
    if premature then
        return retire(dict)
    end
    publish(dict)
end

-- Starts publishing this worker's metrics every second, once, when the
-- operator declared the shared dict (not with lua_code_cache off: a timer
-- would keep each request's VM alive; there a worker publishes when it
-- serves a scrape).
function _M.start_publishing()
    if publishing or not dict_of() or channel.many_vms() then
        return
    end
    publishing = ngx.timer.every(PUBLISH_EVERY, publish_timer) and true
end

-- Counts a runtime that failed to load (`name`: its metrics name).
function _M.load_failed(name)
    local dict = dict_of()
    if dict then
        dict:incr("c" .. SEP .. "resty_ffi_load_failures_total" .. SEP
                  .. 'runtime="' .. escape(name) .. '"', 1, 0)
    end
end

local FAMILIES = {
    { "resty_ffi_calls_total", "counter",
      "Calls to resty-ffi runtimes, by outcome." },
    { "resty_ffi_call_duration_seconds", "histogram",
      "Time from post to answer of calls that were answered." },
    { "resty_ffi_queue_length", "gauge", GAUGES[1][2] },
    { "resty_ffi_in_flight", "gauge", GAUGES[2][2] },
    { "resty_ffi_parked", "gauge", GAUGES[3][2] },
    { "resty_ffi_load_failures_total", "counter",
      "Runtimes that failed to load." },
    { "resty_ffi_stray_answers_total", "counter",
      "Answers to tasks not waiting for one (a runtime answered twice or "
      .. "late)." },
    { "resty_ffi_log_lines_dropped_total", "counter",
      "Runtime log lines dropped (too many waiting, or over the rate "
      .. "bound)." },
}
-- Series that exist from the start (no labels).
local ALWAYS = {
    resty_ffi_stray_answers_total = true,
    resty_ffi_log_lines_dropped_total = true,
}

local function number(v)
    if v % 1 == 0 then
        return string_format("%d", v)
    end
    return string_format("%.9f", v)
end

-- The Prometheus text exposition of resty-ffi's metrics for the whole
-- nginx (all workers), or nil, err.
function _M.text()
    local dict = dict_of()
    if not dict then
        return nil, "resty_ffi: prometheus() needs `lua_shared_dict "
               .. DICT .. " 1m;` in the http block: every worker "
               .. "publishes its metrics there"
    end
    _M.start_publishing()
    publish(dict)
    -- family -> labels text -> value
    local series = {}
    for _, key in ipairs(dict:get_keys(0)) do
        local kind = key:sub(1, 1)
        local name, labels
        if kind == "c" then
            name, labels = key:match("^c\1([^\1]*)\1(.*)$")
        elseif kind == "g" then
            name, labels = key:match("^g\1[^\1]*\1([^\1]*)\1(.*)$")
        end
        local v = name and dict:get(key)
        if v then
            local family = name:gsub("_bucket$", ""):gsub("_sum$", "")
                           :gsub("_count$", "")
            local s = series[family]
            if not s then
                s = {}
                series[family] = s
            end
            local id = name .. SEP .. labels
            s[id] = (s[id] or 0) + v
        end
    end
    local out = {}
    for _, f in ipairs(FAMILIES) do
        local family = f[1]
        out[#out + 1] = "# HELP " .. family .. " " .. f[3]
        out[#out + 1] = "# TYPE " .. family .. " " .. f[2]
        local s = series[family] or {}
        if ALWAYS[family] and not s[family .. SEP] then
            s[family .. SEP] = 0
        end
        local ids = {}
        for id in pairs(s) do ids[#ids + 1] = id end
        if f[2] == "histogram" then
            -- by runtime, then buckets in order, then sum and count
            local rank = {}
            for i = 1, NBUCKETS + 1 do
                rank['le="' .. LE[i] .. '"'] = i
            end
            local function order(id)
                local name, labels = id:match("^([^\1]*)\1(.*)$")
                local rt, le = labels:match('^(.-),?(le="[^"]*")$')
                rt = rt or labels
                local pos = le and rank[le]
                            or (name:find("_sum$") and NBUCKETS + 2)
                            or NBUCKETS + 3
                return rt, pos
            end
            table_sort(ids, function(a, b)
                local ra, pa = order(a)
                local rb, pb = order(b)
                if ra ~= rb then
                    return ra < rb
                end
                return pa < pb
            end)
        else
            table_sort(ids)
        end
        for _, id in ipairs(ids) do
            local name, labels = id:match("^([^\1]*)\1(.*)$")
            if labels ~= "" then
                name = name .. "{" .. labels .. "}"
            end
            out[#out + 1] = name .. " " .. number(s[id])
        end
    end
    return table_concat(out, "\n") .. "\n"
end

return _M
