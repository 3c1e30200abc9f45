"""Timeouts, unload and reload/quit: who stops what, and what late answers
meet."""

import concurrent.futures
import time

import harness

TIMEOUTS = """
location /call {
    content_by_lua_block {
        local rt = assert(require("resty.ffi").load("ffi_echo", "threads=1",
                                                     { timeout = 0.3 }))
        local reply = require "t.reply"
        ngx.update_time()
        local t0 = ngx.now()
        local ok, res, err = rt:echo(ngx.var.arg_req, tonumber(ngx.var.arg_timeout))
        ngx.update_time()
        ngx.header["X-Took"] = string.format("%.3f", ngx.now() - t0)
        reply.send(ok, res, err)
    }
}
location /waiting {
    content_by_lua_block { ngx.print(require("resty.ffi").waiting()) }
}
"""


def took(n, path):
    import urllib.request
    import urllib.error
    try:
        r = urllib.request.urlopen(n.url(path), timeout=10)
    except urllib.error.HTTPError as e:
        r = e
    return r.status, r.read(), float(r.headers["X-Took"])


def test_a_call_that_is_never_answered_times_out_after_the_configured_time(nginx):
    n = nginx(TIMEOUTS)
    status, body, secs = took(n, "/call?req=!hang:")
    assert status == 502
    assert body == b"rc=nil err=resty_ffi: call timed out after 0.3 s"
    assert 0.25 <= secs < 1.0, secs
    # per-call override
    status, body, secs = took(n, "/call?req=!hang:&timeout=0.1")
    assert b"timed out after 0.1 s" in body and secs < 0.5, secs


def test_a_late_answer_after_timeout_is_freed_and_the_worker_goes_on(nginx):
    n = nginx(TIMEOUTS)
    [pid] = n.worker_pids()
    for _ in range(20):
        status, body, _ = took(n, "/call?req=!sleep:400:late")
        assert status == 502 and b"timed out" in body
    # the late answers arrive after 0.4 s and are drained with nobody waiting
    time.sleep(0.5)
    assert n.get("/call?req=fine") == (200, b"fine")
    assert n.get("/waiting") == (200, b"0")
    assert n.worker_pids() == [pid]


# Calls whose answer comes just as their timeout passes: each must end once,
# answered or timed out (issue 21, item 2).
AT_TIMEOUT = """
location /race {
    content_by_lua_block {
        local ffi = require "resty.ffi"
        local rt = assert(ffi.load("ffi_echo", "threads=2,tag=race"))
        local threads = tonumber(ngx.var.arg_threads)
        local calls = tonumber(ngx.var.arg_calls)
        local answered, timed_out, other, min_waiting = 0, 0, 0, 0
        local function run()
            for _ = 1, calls do
                local ok, res, err = rt:echo("!sleep:10:x", 0.010)
                if ok and res == "x" then
                    answered = answered + 1
                elseif ok == false and res == nil
                       and tostring(err):find("timed out", 1, true) then
                    timed_out = timed_out + 1
                else
                    other = other + 1
                end
                local w = ffi.stats().waiting
                if w < min_waiting then
                    min_waiting = w
                end
            end
            return true
        end
        local th = {}
        for i = 1, threads do
            th[i] = ngx.thread.spawn(run)
        end
        for i = 1, threads do
            assert(ngx.thread.wait(th[i]))
        end
        ngx.print(answered, " ", timed_out, " ", other, " ", min_waiting)
    }
}
location /rest {
    content_by_lua_block {
        local ffi = require "resty.ffi"
        local rt = assert(ffi.load("ffi_echo", "threads=2,tag=race"))
        local c = rt:__stats().calls
        ngx.print(ffi.stats().waiting, " ", c.ok, " ", c.timeout, " ", c.error)
    }
}
"""


def test_an_answer_arriving_at_its_timeout_is_reported_once_and_quit_stays_prompt(nginx):
    n = nginx(AT_TIMEOUT)
    threads, calls, rounds = 50, 40, 4
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=2)
    futures = [pool.submit(n.get, "/race?threads=%d&calls=%d" % (threads, calls),
                           timeout=60) for _ in range(rounds)]
    results = [f.result() for f in futures]
    pool.shutdown()
    answered = timed_out = 0
    for status, body in results:
        assert status == 200, body
        a, t, other, min_waiting = map(int, body.split())
        # every call ended once, with one of the two outcomes
        assert other == 0 and a + t == threads * calls, body
        assert min_waiting >= 0, body
        answered, timed_out = answered + a, timed_out + t
    # both outcomes happened, so the timing really was at the edge
    assert answered > 0 and timed_out > 0, (answered, timed_out)
    # at rest nothing is parked, and the core counted each call once, as
    # Lua saw it (a call both answered and timed out counts in both)
    time.sleep(0.1)
    status, body = n.get("/rest")
    assert status == 200
    assert body.split() == [b"0", b"%d" % answered, b"%d" % timed_out, b"0"], \
        (body, answered, timed_out)
    # and quit is prompt (with a parked count gone wrong the dispatcher
    # never stops and quit waits the full worker_shutdown_timeout, 10 s here)
    secs = n.quit(timeout=15)
    assert secs < 3, secs


UNLOAD = """
location /unload {
    content_by_lua_block {
        local ffi = require "resty.ffi"
        local rt = assert(ffi.load("ffi_echo", "threads=1"))
        -- two calls queued behind a blocked runtime thread, then unload:
        -- the queued calls must still be served
        local a = ngx.thread.spawn(function() return rt:echo("!block:200:first") end)
        local b = ngx.thread.spawn(function() return rt:echo("second") end)
        local c = ngx.thread.spawn(function() return rt:echo("third") end)
        ngx.sleep(0.05)
        rt:__unload()
        local ok, rc, err = rt:echo("after unload")
        local out = { tostring(ok) .. " " .. tostring(rc) .. " " .. tostring(err) }
        for _, th in ipairs({ a, b, c }) do
            local _, cok, res = ngx.thread.wait(th)
            out[#out + 1] = tostring(cok) .. ":" .. tostring(res)
        end
        ngx.print(table.concat(out, "|"))
    }
}
location /again {
    content_by_lua_block {
        local rt = assert(require("resty.ffi").load("ffi_echo", "threads=1"))
        local ok, res = rt:echo("fresh")
        ngx.print(tostring(ok), ":", res)
    }
}
"""


def echo_threads(n):
    [pid] = n.worker_pids()
    return [t for t in harness.thread_names(pid) if t.startswith("ffi-echo")]


def test_unload_serves_pending_calls_then_refuses_new_ones_and_threads_end(nginx):
    n = nginx(UNLOAD)
    status, body = n.get("/unload", timeout=10)
    assert status == 200
    parts = body.decode().split("|")
    assert parts[0] == "false nil resty_ffi: task queue is finished: the runtime is unloaded"
    assert parts[1:] == ["true:first", "true:second", "true:third"]
    # the runtime saw NULL from poll and its thread ended
    assert harness.wait_until(lambda: echo_threads(n) == [], 5), echo_threads(n)
    # loading again gives a fresh runtime with its own threads
    assert n.get("/again") == (200, b"true:fresh")
    assert echo_threads(n) == ["ffi-echo-0"]


INFLIGHT = """
location /sleep {
    content_by_lua_block {
        local rt = assert(require("resty.ffi").load("ffi_echo", "threads=2"))
        local reply = require "t.reply"
        reply.send(rt:echo("!sleep:" .. ngx.var.arg_ms .. ":done"))
    }
}
"""


def in_flight(n, count, ms):
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=count)
    futures = [pool.submit(n.get, "/sleep?ms=%d" % ms, timeout=20) for _ in range(count)]
    return pool, futures


def test_reload_with_calls_in_flight_finishes_them_and_old_workers_exit(nginx):
    n = nginx(INFLIGHT, workers=2)
    assert n.get("/sleep?ms=1") == (200, b"done")
    old = set(n.worker_pids())
    pool, futures = in_flight(n, 20, 1000)
    time.sleep(0.3)
    t0 = time.time()
    n.reload()
    results = [f.result() for f in futures]
    pool.shutdown()
    assert results == [(200, b"done")] * 20
    # old workers leave within seconds of their last call
    assert harness.wait_until(lambda: not (old & set(n.worker_pids())), 5)
    assert time.time() - t0 < 5
    assert n.get("/sleep?ms=1") == (200, b"done")
    log = n.error_log()
    assert "dispatcher stopped" not in log and "[alert]" not in log, log[-2000:]


def test_quit_with_calls_in_flight_finishes_them_and_exits_promptly(nginx):
    n = nginx(INFLIGHT, workers=2)
    assert n.get("/sleep?ms=1") == (200, b"done")
    pool, futures = in_flight(n, 20, 1000)
    time.sleep(0.3)
    secs = n.quit(timeout=15)
    results = [f.result() for f in futures]
    pool.shutdown()
    assert results == [(200, b"done")] * 20
    # calls needed ~0.7 s more; the rest is the exit itself
    assert secs < 4, secs


def test_quit_of_an_idle_worker_with_a_running_dispatcher_is_prompt(nginx):
    n = nginx(INFLIGHT)
    # a parked call starts the dispatcher, which then sleeps on its socket
    assert n.get("/sleep?ms=50") == (200, b"done")
    secs = n.quit(timeout=15)
    assert secs < 3, secs
