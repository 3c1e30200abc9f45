"""Many calls at once: the worker never blocks, answers never mix, queues
refuse cleanly, clients that go away cost nothing."""

import concurrent.futures
import http.client
import socket
import time

import harness

SLEEPY = """
location /sleep {
    content_by_lua_block {
        local rt = assert(require("resty.ffi").load("ffi_echo", "threads=2"))
        local reply = require "t.reply"
        reply.send(rt:echo("!sleep:" .. ngx.var.arg_ms .. ":" .. ngx.var.arg_tag))
    }
}
location /plain {
    content_by_lua_block { ngx.print("plain") }
}
location /waiting {
    content_by_lua_block { ngx.print(require("resty.ffi").waiting()) }
}
"""


def test_slow_calls_do_not_block_the_worker(nginx):
    n = nginx(SLEEPY)
    n.get("/sleep?ms=1&tag=warm")

    def slow(i):
        return n.get("/sleep?ms=500&tag=t%d" % i, timeout=30)

    t0 = time.time()
    with concurrent.futures.ThreadPoolExecutor(max_workers=200) as pool:
        futures = [pool.submit(slow, i) for i in range(200)]
        time.sleep(0.2)
        # while 200 calls wait in the runtime, the worker answers at once
        plain_times = []
        for _ in range(5):
            p0 = time.time()
            assert n.get("/plain", timeout=5) == (200, b"plain")
            plain_times.append(time.time() - p0)
        results = [f.result() for f in futures]
    elapsed = time.time() - t0
    assert all(r == (200, b"t%d" % i) for i, r in enumerate(results))
    # serial would be 100 s; a blocked worker would delay /plain by ~0.5 s
    assert elapsed < 5, elapsed
    assert max(plain_times) < 0.3, plain_times


QUEUE = """
location /fill {
    content_by_lua_block {
        local rt = assert(require("resty.ffi").load("ffi_echo", "threads=1",
                                                     { max_queue = 2 }))
        -- the one runtime thread blocks for 1 s, two calls fill the queue,
        -- the fourth must be refused at once
        local blocker = ngx.thread.spawn(function() return rt:echo("!block:1000:b") end)
        ngx.sleep(0.1)
        local q1 = ngx.thread.spawn(function() return rt:echo("q1") end)
        local q2 = ngx.thread.spawn(function() return rt:echo("q2") end)
        local queued = rt:__queue_len()
        ngx.update_time()
        local t0 = ngx.now()
        local ok, rc, err = rt:echo("overflow")
        ngx.update_time()
        local refused_in = ngx.now() - t0
        local out = { tostring(ok), tostring(rc), err, tostring(refused_in < 0.1),
                      tostring(queued) }
        for _, th in ipairs({ blocker, q1, q2 }) do
            local _, cok, res = ngx.thread.wait(th)
            out[#out + 1] = tostring(cok) .. ":" .. tostring(res)
        end
        ngx.print(table.concat(out, "|"))
    }
}
"""


def test_full_queue_refuses_at_once_with_a_clear_error_and_loses_nothing(nginx):
    n = nginx(QUEUE)
    status, body = n.get("/fill", timeout=10)
    assert status == 200
    parts = body.decode().split("|")
    assert parts[0:2] == ["false", "nil"]
    assert parts[2].startswith("resty_ffi: post failed, queue full (max_queue 2)")
    assert parts[3] == "true"
    assert parts[4] == "2", "rt:__queue_len() counts the tasks waiting"
    assert parts[5:] == ["true:b", "true:q1", "true:q2"]


ECHO_ID = """
location /echo {
    content_by_lua_block {
        local rt = assert(require("resty.ffi").load("ffi_echo", "threads=2"))
        local req = ngx.var.arg_id .. ":" .. ngx.worker.pid()
        local ok, res = rt:echo(req)
        if ok and res == req then
            ngx.print(ngx.var.arg_id)
        else
            ngx.status = 500
            ngx.print(tostring(ok), " ", tostring(res))
        end
    }
}
"""


def test_two_workers_many_clients_every_answer_matches_its_request(nginx):
    n = nginx(ECHO_ID, workers=2)
    clients, calls = 50, 1000

    def client(c):
        conn = http.client.HTTPConnection("127.0.0.1", n.port, timeout=30)
        bad = 0
        for i in range(calls):
            rid = "c%d-%d" % (c, i)
            conn.request("GET", "/echo?id=" + rid)
            r = conn.getresponse()
            body = r.read()
            if r.status != 200 or body != rid.encode():
                bad += 1
        conn.close()
        return bad

    with concurrent.futures.ThreadPoolExecutor(max_workers=clients) as pool:
        bad = sum(pool.map(client, range(clients)))
    assert bad == 0
    assert len(n.worker_pids()) == 2


ABORTS = """
location /sleep {
    lua_check_client_abort on;
    content_by_lua_block {
        local rt = assert(require("resty.ffi").load("ffi_echo", "threads=2"))
        local _, res = rt:echo("!sleep:" .. ngx.var.arg_ms .. ":late answer")
        ngx.print(res)
    }
}
location /sleep_noabort {
    content_by_lua_block {
        local rt = assert(require("resty.ffi").load("ffi_echo", "threads=2"))
        local _, res = rt:echo("!sleep:" .. ngx.var.arg_ms .. ":late answer")
        ngx.print(res)
    }
}
location /waiting {
    content_by_lua_block { ngx.print(require("resty.ffi").waiting()) }
}
"""


def hit_and_run(port, path, count):
    """Sends `count` requests and closes each socket right away."""
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        s.close()


def test_clients_that_disconnect_mid_call_leave_the_worker_up_and_flat(nginx):
    n = nginx(ABORTS)
    [pid] = n.worker_pids()

    def rounds(k):
        for _ in range(k):
            hit_and_run(n.port, b"/sleep?ms=100", 250)
            hit_and_run(n.port, b"/sleep_noabort?ms=100", 250)
            # every late answer is drained and freed; nothing waits any more
            assert harness.wait_until(lambda: n.get("/waiting") == (200, b"0"), 10)

    def settled_rss():
        # the echo runtime's sleeper threads end just after answering; their
        # stacks make RSS swing by a few MiB, so take the low point of a second
        samples = []
        for _ in range(10):
            samples.append(harness.rss_kib(pid))
            time.sleep(0.1)
        return min(samples)

    # warm up: the runtime's sleeper threads and malloc's per-thread arenas
    # reach their steady size first
    rounds(2)
    before = settled_rss()
    rounds(4)  # 2000 clients that go away mid-call
    after = settled_rss()
    assert n.worker_pids() == [pid], "the worker must not have died"
    assert n.get("/sleep?ms=1") == (200, b"late answer")
    print("worker RSS before %d KiB, after %d KiB" % (before, after))
    assert after - before < 4 * 1024, (before, after)


ABANDON = """
location /wait {
    lua_check_client_abort on;
    content_by_lua_block {
        local rt = assert(require("resty.ffi").load("ffi_echo", "threads=2"))
        local ok, res, err = rt:echo("!wait:" .. ngx.var.arg_ms .. ":answer",
                                     math.huge)
        ngx.print(tostring(ok), " ", tostring(res), " ", tostring(err))
    }
}
location /killed {
    content_by_lua_block {
        local rt = assert(require("resty.ffi").load("ffi_echo", "threads=2"))
        local th = ngx.thread.spawn(function()
            return rt:echo("!wait:60000:never", math.huge)
        end)
        ngx.sleep(0.05)
        local ok, err = ngx.thread.kill(th)
        ngx.print(ok and "killed" or err)
    }
}
location /stream {
    lua_check_client_abort on;
    content_by_lua_block {
        -- no ngx.on_abort closing the stream: the request just ends
        local rt = assert(require("resty.ffi").load("ffi_echo", "threads=2"))
        local st = assert(rt:__stream("!stream:600:10:100", math.huge))
        while st:recv() do end
    }
}
""" + harness.ABANDON_STATS


def test_calls_whose_request_ended_are_given_up_the_runtime_told_and_quit_is_prompt(nginx):
    """A call parked with no timeout whose request ends (client gone under
    lua_check_client_abort, its light thread killed) must not stay parked
    until a runtime that may never answer does: it would count as waiting
    forever and hold the worker's graceful exit."""
    n = nginx(ABANDON, shutdown_timeout="60s")
    assert n.get("/wait?ms=1") == (200, b"true answer nil")

    harness.abandon(n.port, b"/wait?ms=60000", 5)
    assert n.get("/killed") == (200, b"killed")
    # given up within the sweep's second, and the runtime hears of each
    harness.given_up_soon(n, 6)
    assert harness.wait_until(
        lambda: n.error_log().count("echo call cancelled after") == 6, 5), n.error_log()[-2000:]
    assert n.get("/wait?ms=1") == (200, b"true answer nil")
    # callers gone just before a quit do not hold the worker (it used to
    # wait for the runtime's answers: here a minute, up to
    # worker_shutdown_timeout)
    harness.quit_is_prompt(n, [b"/wait?ms=60000"], 3)


def test_streams_whose_reader_is_gone_mid_recv_are_closed_and_quit_is_prompt(nginx):
    """The same for a stream whose request ends while its reader waits in
    recv(): it used to stay open until Lua's garbage collector ran, the
    producer kept sending, and a quit waited for it."""
    n = nginx(ABANDON, shutdown_timeout="60s")

    harness.abandon(n.port, b"/stream", 3)
    # two sweeps a second apart tell a reader that is gone
    harness.given_up_soon(n, 3, timeout=6)
    assert harness.wait_until(
        lambda: n.error_log().count("echo stream cancelled after") == 3, 5), \
        n.error_log()[-2000:]
    harness.quit_is_prompt(n, [b"/stream"])


REUSE = """
location /mixed {
    content_by_lua_block {
        local rt = assert(require("resty.ffi").load("ffi_echo", "threads=2"))
        local bad, timeouts = 0, 0
        local function worker(t)
            for i = 1, 40 do
                local id = t .. "-" .. i .. "-" .. ngx.var.arg_round
                if i % 5 == 0 then
                    -- times out: its late answer comes while later calls
                    -- wait on reused waiters, and must reach none of them
                    local ok, _, err = rt:echo("!sleep:30:late-" .. id, 0.005)
                    if ok or not err:find("timed out", 1, true) then
                        bad = bad + 1
                    else
                        timeouts = timeouts + 1
                    end
                else
                    local ok, res = rt:echo(id)
                    if not ok or res ~= id then
                        bad = bad + 1
                    end
                end
            end
        end
        local threads = {}
        for t = 1, 20 do
            threads[t] = ngx.thread.spawn(worker, t)
        end
        for t = 1, 20 do
            ngx.thread.wait(threads[t])
        end
        ngx.print(bad, " ", timeouts)
    }
}
location /waiting {
    content_by_lua_block { ngx.print(require("resty.ffi").waiting()) }
}
"""


def test_parked_calls_reuse_waiters_and_no_late_answer_reaches_a_later_call(nginx):
    n = nginx(REUSE)
    for rnd in range(4):
        assert n.get("/mixed?round=%d" % rnd) == (200, b"0 160"), rnd
        # every late answer drained before the next round reuses waiters
        assert harness.wait_until(lambda: n.get("/waiting") == (200, b"0"), 10)


BATCHED = """
location /batch {
    content_by_lua_block {
        local ffi = require "resty.ffi"
        -- runtime threads that never spin: every call they take while
        -- asleep needs a wake-up, which only the flush gives deferred calls
        local rt = assert(ffi.load("ffi_echo", "threads=2,",
                                   { spin_us = 0, poll_spin_us = 0, timeout = 5 }))
        -- a slow call on another runtime stays parked throughout: the
        -- worker has calls waiting, so the batch's calls are posted
        -- deferred (the flusher starts with the first of them)
        local slow = assert(ffi.load("ffi_echo", "threads=1"))
        local n = tonumber(ngx.var.arg_n)
        local s0 = ffi.stats()
        local background = ngx.thread.spawn(function()
            return slow:echo("!sleep:300:slow")
        end)
        local threads = {}
        for i = 1, n do
            threads[i] = ngx.thread.spawn(function()
                local ok, res, err = rt:echo("c" .. i)
                return ok and res or ("failed: " .. tostring(res) .. " " .. tostring(err))
            end)
        end
        local bad = 0
        for i = 1, n do
            local _, res = ngx.thread.wait(threads[i])
            if res ~= "c" .. i then
                bad = bad + 1
                ngx.log(ngx.ERR, "call ", i, ": ", res)
            end
        end
        local s1 = ffi.stats()
        local _, _, slow_res = ngx.thread.wait(background)
        if slow_res ~= "slow" then
            bad = bad + 1
        end
        ngx.print(bad, " ", s1.deferred - s0.deferred, " ",
                  s1.thread_wakeups - s0.thread_wakeups, " ", ffi.waiting())
    }
}
"""


def test_calls_under_load_wake_the_runtime_once_per_cycle_not_once_per_call(nginx):
    n = nginx(BATCHED)
    status, body = n.get("/batch?n=1")
    assert status == 200, (body, n.error_log()[-3000:])
    for _ in range(3):
        status, body = n.get("/batch?n=500", timeout=30)
        assert status == 200, body
        bad, deferred, wakeups, waiting = map(int, body.split())
        assert (bad, waiting) == (0, 0), (body, n.error_log()[-2000:])
        # posted deferred (all but the one that starts the flusher): their
        # sleeping runtime threads are woken by the flush, once per
        # event-loop cycle, or the calls would time out
        assert deferred >= 495, body
        assert wakeups <= 50, body
