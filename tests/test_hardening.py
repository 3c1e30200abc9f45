"""Hardening: no runtime bug, odd setting or bad number may kill a worker,
hang nginx, leak without bound or hand one request another's answer.

Each test drives a real nginx with the echo runtime's misbehaving commands
(runtimes/echo: `!twice`, `!len`, `!sleep`...) or an odd configuration.
"""

import concurrent.futures
import os
import re
import subprocess
import tempfile
import time

import pytest

import harness

CALL = """
location /call {
    content_by_lua_block {
        local rt = assert(require("resty.ffi").load("ffi_echo"))
        require("t.reply").send(rt:echo(ngx.unescape_uri(ngx.var.arg_req)))
    }
}
location /stats {
    content_by_lua_block {
        local s = require("resty.ffi").stats()
        local keys = {}
        for k in pairs(s) do keys[#keys + 1] = k end
        table.sort(keys)
        for _, k in ipairs(keys) do ngx.say(k, "=", s[k]) end
    }
}
location /plain {
    return 200 "plain";
}
"""


def stats(n):
    status, body = n.get("/stats")
    assert status == 200
    return dict(line.split("=", 1) for line in body.decode().split())


def call_many(n, reqs, workers=32, path="/call?req="):
    """Sends each request (URL-quoted) from `workers` threads; returns the
    (status, body) list in request order."""
    import urllib.parse
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(n.get, path + urllib.parse.quote(r), timeout=30)
                   for r in reqs]
        return [f.result() for f in futures]


def worker_pid(n):
    """The one worker's pid, once it is there."""
    assert harness.wait_until(lambda: len(n.worker_pids()) == 1, 10), n.worker_pids()
    return n.worker_pids()[0]


def thread_count(pid):
    return len(harness.thread_names(pid))


# ---- 1. lua_code_cache off ------------------------------------------------

def test_code_cache_off_answers_reach_their_own_request_and_nothing_leaks(nginx):
    n = nginx(CALL, http="lua_code_cache off;")
    pid = worker_pid(n)
    assert n.get("/call?req=warm") == (200, b"warm")
    threads_before = thread_count(pid)
    reqs = ["!sleep:20:answer-%d" % i for i in range(400)]
    results = call_many(n, reqs, workers=32)
    wrong = [(r, got) for r, got in zip(reqs, results)
             if got != (200, r.split(":", 2)[2].encode())]
    assert wrong == [], wrong[:5]
    s = stats(n)
    assert int(s["vms"]) > 2, s
    # each request's VM is freed once its calls are answered
    rss_before = harness.rss_kib(pid)
    more = ["!sleep:5:more-%d" % i for i in range(1200)]
    assert call_many(n, more) == [(200, r.split(":", 2)[2].encode()) for r in more]
    time.sleep(1)  # the last VMs' timers end
    grown = harness.rss_kib(pid) - rss_before
    assert grown < 30 * 1024, "1200 requests' VMs grew the worker by %d KiB" % grown
    # runtimes are shared by the VMs: no new threads per request (the echo
    # runtime's `!sleep` threads end as they answer)
    assert harness.wait_until(lambda: thread_count(pid) <= threads_before, 5), \
        (thread_count(pid), threads_before)
    log = n.error_log()
    assert "dispatcher stopped" not in log
    # nginx's own config-time alert for this mode is expected (it lands in
    # the file on builds whose default error log is a file, as OpenResty's);
    # any other alert is not
    alerts = [l for l in log.splitlines() if "[alert]" in l
              and not re.search(r"\[alert\] .*lua_code_cache is off; this will hurt "
                                r"performance in \S+:\d+$", l)]
    assert alerts == [], alerts
    assert "[crit]" not in log
    assert n.quit(timeout=15) < 5


# ---- 3. no wake socket ------------------------------------------------------

def check_polling_fallback(n, why):
    pid = worker_pid(n)
    assert n.get("/call?req=!sleep:30:parked") == (200, b"parked")
    reqs = ["!sleep:5:p-%d" % i for i in range(2000)]
    rss_before = harness.rss_kib(pid)
    results = call_many(n, reqs, workers=16)
    assert results == [(200, r.split(":", 2)[2].encode()) for r in reqs]
    grown = harness.rss_kib(pid) - rss_before
    assert grown < 20 * 1024, "worker grew by %d KiB" % grown
    s = stats(n)
    assert s["wake"] == "polling", s
    log = n.error_log()
    assert log.count("resty_ffi: no wake-up socket") == 1, log[-3000:]
    assert why in log, log[-3000:]
    assert n.get("/plain") == (200, b"plain")


def test_without_a_writable_tmpdir_parked_calls_are_polled_and_answered(nginx):
    n = nginx(CALL, main="env TMPDIR=/nonexistent;")
    check_polling_fallback(n, "cannot create a private directory under /nonexistent")


def test_a_tmpdir_too_long_for_a_unix_socket_falls_back_to_polling(nginx):
    base = tempfile.mkdtemp(prefix="resty-ffi-long-")
    long_dir = os.path.join(base, "d" * 100)
    os.makedirs(long_dir)
    for d in (base, long_dir):
        os.chmod(d, 0o777)
    try:
        n = nginx(CALL, main="env TMPDIR=%s;" % long_dir)
        check_polling_fallback(n, "socket path too long for a unix socket")
    finally:
        subprocess.run(["rm", "-rf", base], check=False)


# ---- 4. absurd timeouts -------------------------------------------------------

TIMEOUTS = """
location /timeouts {
    content_by_lua_block {
        local ffi = require "resty.ffi"
        local rt = assert(ffi.load("ffi_echo"))
        local out = {}
        for _, t in ipairs({ 2147484, 1e12, math.huge, 0/0, -1, 0, "x" }) do
            local ok, a, b = rt:echo("!sleep:30:late", t)
            out[#out + 1] = tostring(t) .. " " .. tostring(ok) .. " "
                            .. tostring(a) .. " " .. tostring(b)
        end
        for _, t in ipairs({ 2147484, math.huge, 0/0, -3 }) do
            local r, err = ffi.load("ffi_echo", "tag=" .. tostring(t),
                                    { timeout = t })
            if r then
                local ok, a = r:echo("!sleep:30:opt")
                out[#out + 1] = "opts " .. tostring(t) .. " " .. tostring(ok)
                                .. " " .. tostring(a)
            else
                out[#out + 1] = "opts " .. tostring(t) .. " nil " .. err
            end
        end
        ngx.print(table.concat(out, "\\n"))
    }
}
"""


def test_huge_timeouts_wait_until_answered_and_nan_or_negative_are_refused(nginx):
    n = nginx(TIMEOUTS)
    status, body = n.get("/timeouts")
    assert status == 200
    lines = body.decode().split("\n")
    assert lines[0] == "2147484 true late nil"
    assert lines[1] == "1000000000000 true late nil"
    assert lines[2] == "inf true late nil"
    for line, shown in zip(lines[3:7], ["nan", "-1", "0", "x"]):
        assert line.startswith(shown + " false nil resty_ffi: the call's timeout must be "
                               "a positive number of seconds"), line
    assert lines[7] == "opts 2147484 true opt"
    assert lines[8] == "opts inf true opt"
    assert lines[9].startswith("opts nan nil resty_ffi: opts.timeout must be a positive"), lines[9]
    assert lines[10].startswith("opts -3 nil resty_ffi: opts.timeout must be a positive"), lines[10]


def test_nul_terminated_answer_without_a_nul_keeps_the_runtimes_rc_and_text(nginx):
    # lua-resty-ffi-soap answers errors this way; the original reads them,
    # so the runtime's rc and text must reach Lua, read no further than the
    # answer's allocation, with the defect logged (at most once a second)
    n = nginx(CALL)
    text = b"soap fault "
    for _ in range(3):
        status, body = n.get("/call?req=!nonul:7:soap%20fault%20")
        assert status == 502, body
        assert body.startswith(b"rc=7 err="), body
        err = body[len(b"rc=7 err="):]
        # the whole buffer (its usable size), and nothing past it
        assert len(text) <= len(err) < 4096, err
        assert err == (text * 400)[:len(err)], err
    log = n.error_log()
    assert log.count("with no NUL in its") == 1, log[-2000:]


# ---- 5. one bad answer in a drained batch ------------------------------------------

def test_a_bad_answer_in_a_drained_batch_fails_alone(nginx):
    n = nginx(CALL)
    assert n.get("/call?req=warm") == (200, b"warm")
    reqs = ["!sleep:300:ok-%d" % i for i in range(31)]
    reqs.insert(13, "!len:2147483647:300:liar")
    reqs.insert(20, "!len:-5:300:negative")
    results = call_many(n, reqs, workers=33)
    for r, got in zip(reqs, results):
        if r.startswith("!len:2147483647"):
            assert got == (502, b"rc=nil err=resty_ffi: bad answer: the runtime answered "
                                b"a length larger than its answer buffer"), got
        elif r.startswith("!len:-5"):
            assert got == (502, b"rc=nil err=resty_ffi: bad answer: the runtime answered "
                                b"a negative length"), got
        else:
            assert got == (200, r.split(":", 2)[2].encode()), (r, got)
    s = stats(n)
    assert int(s["waiting"]) == 0
    assert "dispatcher stopped" not in n.error_log()
    assert n.get("/call?req=after") == (200, b"after")


# ---- 6. a runtime that answers twice ------------------------------------------

BIG = """
location /big {
    content_by_lua_block {
        local rt = assert(require("resty.ffi").load("ffi_echo"))
        local id = ngx.var.arg_id
        local body = id .. string.rep("x", 300 * 1024)
        local ok, res, err = rt:echo("!twice:2:" .. body)
        if ok and res == body then
            ngx.print("ok ", id)
        else
            ngx.status = 502
            ngx.print("wrong ", id, " ", tostring(res and #res), " ", tostring(err))
        end
    }
}
"""


def test_answering_twice_never_reaches_another_request_and_memory_stays_flat(nginx):
    n = nginx(CALL + BIG)
    pid = worker_pid(n)
    reqs = ["!twice:2:client-%d" % i for i in range(1920)]
    results = call_many(n, reqs, workers=32)
    wrong = [(r, got) for r, got in zip(reqs, results)
             if got != (200, r.split(":", 2)[2].encode())]
    assert wrong == [], wrong[:5]
    # 300 KB answers, each answered twice: the second copies are freed
    rss_before = harness.rss_kib(pid)
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        big = list(pool.map(lambda i: n.get("/big?id=%d" % i, timeout=30), range(640)))
    assert big == [(200, b"ok %d" % i) for i in range(640)], \
        [b for b in big if b[0] != 200][:3]
    time.sleep(0.5)
    grown = harness.rss_kib(pid) - rss_before
    assert grown < 100 * 1024, "worker grew by %d KiB" % grown
    s = stats(n)
    assert harness.wait_until(lambda: int(stats(n)["stray_answers"]) >= 2560, 5), s
    log = n.error_log()
    lines = log.count("a runtime answered a task that is not waiting for an answer")
    assert 1 <= lines <= 60, lines  # at most one a second
    assert n.worker_pids() == [pid], "the worker did not die"
    assert n.quit(timeout=15) < 5


# ---- 7. smaller ones --------------------------------------------------------------

ODD = """
location /odd {
    content_by_lua_block {
        local ffi = require "resty.ffi"
        local out = {}
        local function add(...)
            local t = {}
            for i = 1, select("#", ...) do t[i] = tostring((select(i, ...))) end
            out[#out + 1] = table.concat(t, " ")
        end
        add(ffi.load("ffi_echo", "spin", { spin_us = 5e6 }))
        add(ffi.load("ffi_echo", "pspin", { poll_spin_us = 1001 }))
        add(ffi.load("ffi_echo", "nan", { max_queue = 0/0 }))
        add(ffi.load("ffi_echo\\0evil"))
        local rt = assert(ffi.load("ffi_echo", "tag=ok", { spin_us = 1000 }))
        for _, name in ipairs({ "_rt", "_key", "_timeout", "_max_queue", "rt", "state" }) do
            add(name, rt[name](rt, name))
        end
        add(rt.echo("dot"))
        rt:__unload()
        add(rt:echo("after"))
        ngx.print(table.concat(out, "\\n"))
    }
}
"""


def test_odd_options_names_and_calls_get_clear_answers(nginx):
    n = nginx(ODD)
    status, body = n.get("/odd")
    assert status == 200, body
    lines = body.decode().split("\n")
    assert lines[0].startswith("nil resty_ffi: opts.spin_us must be at most 1000"), lines[0]
    assert lines[1].startswith("nil resty_ffi: opts.poll_spin_us must be at most 1000"), lines[1]
    assert lines[2].startswith("nil resty_ffi: opts.max_queue must be a non-negative integer, got nan"), lines[2]
    assert lines[3] == "nil resty_ffi: lib must not contain a NUL byte: ffi_echo\\0evil", lines[3]
    for line, name in zip(lines[4:10], ["_rt", "_key", "_timeout", "_max_queue", "rt", "state"]):
        assert line == "%s true %s nil" % (name, name), line
    assert lines[10] == ("false nil resty_ffi: call runtime methods with a colon, "
                         "rt:method(req), not rt.method(req)"), lines[10]
    assert lines[11] == "false nil resty_ffi: task queue is finished: the runtime is unloaded"


SLOW_LOAD = """
location /slow {
    content_by_lua_block {
        local rt = assert(require("resty.ffi").load("ffi_echo", "init_sleep=300"))
        require("t.reply").send(rt:echo("loaded"))
    }
}
"""


def test_a_slow_libffi_init_is_logged_with_how_long_it_took(nginx):
    n = nginx(SLOW_LOAD)
    assert n.get("/slow") == (200, b"loaded")
    m = re.search(r"\[warn\].*resty_ffi: loading ffi_echo took ([0-9.]+) s, during which "
                  r"the worker served nothing \(libffi_init should start threads and "
                  r"return\)", n.error_log())
    assert m and 0.25 < float(m.group(1)) < 5, n.error_log()[-2000:]
    # the cfg (where people put tokens) stays out of the line
    assert "init_sleep" not in n.error_log()


def make_cert(dirname):
    key = os.path.join(dirname, "key.pem")
    cert = os.path.join(dirname, "cert.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost"],
                   check=True, capture_output=True)
    for p in (key, cert):
        os.chmod(p, 0o644)
    return cert, key


def test_a_call_in_ssl_client_hello_fails_at_once_and_the_handshake_goes_on(nginx, stage):
    import ssl
    import urllib.request
    cert, key = make_cert(stage.dir)
    server = """
listen 127.0.0.1:{port} ssl;
ssl_certificate {cert};
ssl_certificate_key {key};
ssl_client_hello_by_lua_block {{
    local rt = require("resty.ffi").load("ffi_echo")
    local ok, res, err = rt:echo("hello")
    ngx.log(ngx.ERR, "client_hello call: ", tostring(ok), " ", tostring(err))
}}
location /tls {{
    return 200 "tls ok";
}}
"""
    tls_port = harness.free_port()
    n = nginx(server.format(port=tls_port, cert=cert, key=key))
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen("https://127.0.0.1:%d/tls" % tls_port, context=ctx,
                                timeout=10) as r:
        assert r.read() == b"tls ok"
    assert ("client_hello call: false resty_ffi: cannot wait for a runtime in the "
            "ssl_client_hello phase") in n.error_log()


TIMERS = """
location /burst {
    content_by_lua_block {
        local rt = assert(require("resty.ffi").load("ffi_echo", "threads=2"))
        local threads = {}
        for i = 1, 200 do
            threads[i] = ngx.thread.spawn(function() return rt:echo("t" .. i) end)
        end
        local bad = 0
        for i = 1, 200 do
            local _, ok, res = ngx.thread.wait(threads[i])
            if not ok or res ~= "t" .. i then bad = bad + 1 end
        end
        ngx.print(bad, " ", ngx.timer.running_count(), " ", ngx.timer.pending_count(),
                  " ", require("resty.ffi").stats().deferred)
    }
}
"""


def test_a_worker_runs_at_most_two_timer_light_threads_for_its_calls(nginx):
    n = nginx(TIMERS)
    for _ in range(3):
        status, body = n.get("/burst")
        assert status == 200, body
        bad, running, pending, deferred = map(int, body.split())
        # the dispatcher and, once calls were deferred, the flusher (README,
        # "Timers"); pending: the two exit watches and the sweep's timer
        assert bad == 0 and running <= 2 and pending <= 3, body
    assert deferred > 0, body


DROPPED_TIMERS = """
location /hog {
    content_by_lua_block {
        -- takes the only running-timer slot until the worker exits
        assert(ngx.timer.at(0, function()
            while not ngx.worker.exiting() do ngx.sleep(0.05) end
        end))
        ngx.sleep(0.1)
        ngx.print(ngx.timer.running_count())
    }
}
location /call {
    content_by_lua_block {
        local rt = assert(require("resty.ffi").load("ffi_echo", "threads=2"))
        local t0 = ngx.now()
        local ok, res, err = rt:echo("!sleep:100:" .. ngx.var.arg_v, 10)
        ngx.update_time()
        ngx.print(tostring(ok), " ", tostring(res or err), " ",
                  string.format("%.2f", ngx.now() - t0))
    }
}
location /stream {
    content_by_lua_block {
        local rt = assert(require("resty.ffi").load("ffi_echo", "threads=2"))
        local st = assert(rt:__stream("!stream:3:4:50", 10))
        local n = 0
        while true do
            local chunk, err = st:recv()
            if not chunk then
                ngx.print(n, " ", tostring(err))
                return
            end
            n = n + 1
        end
    }
}
"""


def test_calls_and_streams_are_answered_when_nginx_drops_the_dispatchers_timer(nginx):
    # lua_max_running_timers 1, held by the application's own timer: nginx
    # drops every other timer when it fires, the dispatcher's among them.
    # Calls must still be answered (polled), not hang to their timeout.
    n = nginx(DROPPED_TIMERS, http="lua_max_running_timers 1;")
    status, body = n.get("/hog")
    assert (status, body) == (200, b"1"), body
    for i in range(3):
        status, body = n.get("/call?v=v%d" % i)
        assert status == 200, body
        ok, rest = body.decode().split(" ", 1)
        res, took = rest.rsplit(" ", 1)
        assert (ok, res) == ("true", "v%d" % i), body
        assert float(took) < 3, "the call waited for a dispatcher that never ran: " + body
        if i == 0:
            time.sleep(1.2)  # the dispatcher's timer is overdue now
    status, body = n.get("/stream")
    assert (status, body) == (200, b"3 nil"), body
    log = n.error_log()
    assert "lua_max_running_timers are not enough" in log, log[-2000:]
    assert "the dispatcher's timer did not run within" in log, log[-2000:]
