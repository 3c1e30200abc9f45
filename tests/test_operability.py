"""Operability: runtime logs written by nginx at their level, metrics per
runtime and worker, and the Prometheus text for the whole nginx.

Against a real nginx, with the echo runtime's `!log` / `!flood` commands (a
C-ABI runtime calling `resty_ffi_log`) and a Python runtime.
"""

import os
import re
import signal
import time

import pytest

import harness
from harness import q

LOG = r"""
location /call {
    content_by_lua_block {
        local rt = assert(require("resty.ffi").load("ffi_echo"))
        require("t.reply").send(rt:echo(ngx.unescape_uri(ngx.var.arg_req)))
    }
}
location /stats {
    content_by_lua_block {
        local s = require("resty.ffi").stats()
        ngx.print(s.log_lines_dropped)
    }
}
"""


def test_runtime_log_lines_are_written_by_nginx_at_their_level_and_follow_reopen(nginx):
    n = nginx(LOG, log_level="notice")
    assert n.get("/call?req=warm") == (200, b"warm")
    for level, word in [(4, "c-error-line"), (5, "c-warn-line"), (7, "c-info-line")]:
        assert n.get("/call?req=" + q("!log:%d:%s" % (level, word))) == (200, b"logged")
    assert harness.wait_until(lambda: "c-warn-line" in n.error_log(), 5)
    log = n.error_log()
    # nginx's own line format, with no request's context (no "*N", no
    # "client:", no "context: ngx.timer" of whichever request started the
    # dispatcher)
    head = r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d "
    assert re.search(head + r"\[error\] \d+#\d+: c-error-line$", log, re.M), log[-2000:]
    assert re.search(head + r"\[warn\] \d+#\d+: c-warn-line$", log, re.M), log[-2000:]
    assert "c-info-line" not in log, "below the error_log level"
    # reopen: nginx writes later lines to the new file
    path = os.path.join(n.prefix, "logs", "error.log")
    os.rename(path, path + ".1")
    n.signal(signal.SIGUSR1)
    assert harness.wait_until(lambda: os.path.exists(path), 5)
    assert n.get("/call?req=" + q("!log:4:after-reopen")) == (200, b"logged")
    assert harness.wait_until(lambda: "after-reopen" in n.error_log(), 5), n.error_log()
    with open(path + ".1") as f:
        assert "after-reopen" not in f.read()


def test_a_flood_of_a_million_identical_lines_writes_a_few_and_says_how_many(nginx):
    n = nginx(LOG, log_level="notice")
    assert n.get("/call?req=warm") == (200, b"warm")
    [pid] = n.worker_pids()
    before = harness.rss_kib(pid)
    size0 = len(n.error_log())
    assert n.get("/call?req=" + q("!flood:1000000:" + "f" * 100), timeout=60) == \
        (200, b"flooded")
    assert n.get("/call?req=still-serving") == (200, b"still-serving")
    grown = harness.rss_kib(pid) - before
    assert grown < 20 * 1024, "worker grew by %d KiB" % grown
    # when the second is over the repeats are summed up, with no other line
    # or call needed to come first
    assert harness.wait_until(lambda: "(repeated" in n.error_log(), 5), n.error_log()[-2000:]
    log = n.error_log()
    written = len(re.findall(r"f{100}$", log, re.M))
    assert 1 <= written <= 10, written
    said = [int(c.replace(",", "")) for c in
            re.findall(r"f{100} \(repeated ([\d,]+) times in the last (?:second|\d+ seconds)\)", log)]
    assert said and sum(said) + written == 1000000, (said, written)
    assert len(log) - size0 < 16 * 1024, len(log) - size0


def test_a_flood_of_distinct_lines_is_bounded_and_the_drops_counted(nginx):
    n = nginx(LOG, log_level="notice")
    assert n.get("/call?req=warm") == (200, b"warm")
    size0 = len(n.error_log())
    t0 = time.time()
    assert n.get("/call?req=" + q("!floodn:200000:" + "d" * 100), timeout=60) == \
        (200, b"flooded")
    secs = time.time() - t0
    time.sleep(1.1)
    assert n.get("/call?req=" + q("!log:5:next-line")) == (200, b"logged")
    assert harness.wait_until(lambda: "next-line" in n.error_log(), 5)
    log = n.error_log()
    written = len(re.findall(r"d{100} \d+\n", log))
    # at most 5000 lines a second, first occurrences included
    assert 100 <= written <= 5000 * (int(secs) + 2), (written, secs)
    status, body = n.get("/stats")
    assert status == 200 and int(body) >= 200000 - written, (body, written)
    assert re.search(r"\[warn\] \d+#\d+: resty_ffi: [\d,]+ runtime log lines dropped in the last", log)
    assert len(log) - size0 < 2 * 1024 * 1024 * (int(secs) + 2)


PY_LOG = r"""
location /py {
    content_by_lua_block {
        require "resty_ffi"
        local rt = assert(ngx.load_ffi("ffi_python3", ngx.unescape_uri(ngx.var.arg_cfg)))
        require("t.reply").send(rt:call("x"))
    }
}
"""


def test_python_print_and_log_levels_go_through_nginx(nginx, stage):
    d = os.path.join(stage.dir, "oplog")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "levels.py"), "w") as f:
        f.write("import resty_ffi, logging\n"
                "log = logging.getLogger('levels')\n"
                "def init(cfg, tq):\n"
                "    def handle(req):\n"
                "        print('py-notice-line')\n"
                "        resty_ffi.log(7, 'py-info-line')\n"
                "        log.error('py-logging-error')\n"
                "        return b'ok'\n"
                "    return handle\n")
    stage.world_readable()
    n = nginx(PY_LOG, log_level="notice")
    assert n.get("/py?cfg=" + q(d + "/levels,init")) == (200, b"ok")
    assert harness.wait_until(lambda: "py-logging-error" in n.error_log(), 5)
    log = n.error_log()
    assert re.search(r"\[notice\] .*ffi_python3: py-notice-line", log)
    assert re.search(r"\[error\] .*ffi_python3: py-logging-error", log)
    assert "py-info-line" not in log


METRICS = r"""
location /call {
    content_by_lua_block {
        local args = ngx.req.get_uri_args()
        local rt = assert(require("resty.ffi").load("ffi_echo", "threads=1",
                                                     { name = "echo", max_queue = 1 }))
        require("t.reply").send(rt:echo(args.req, tonumber(args.timeout)))
    }
}
location /rtstats {
    content_by_lua_block {
        local ffi = require "resty.ffi"
        local rt = assert(ffi.load("ffi_echo", "threads=1", { name = "echo", max_queue = 1 }))
        local s = rt:__stats()
        local all = ffi.runtimes()
        ngx.print(s.name, " ok=", s.calls.ok, " error=", s.calls.error,
                  " timeout=", s.calls.timeout, " refused=", s.calls.refused,
                  " count=", s.latency.count, " runtimes=", #all)
    }
}
location /metrics {
    content_by_lua_block {
        local text, err = require("resty.ffi").prometheus()
        if not text then
            ngx.status = 500
            return ngx.print(err)
        end
        ngx.header.content_type = "text/plain; version=0.0.4"
        ngx.print(text)
    }
}
"""


def metrics(n):
    from prometheus_client.parser import text_string_to_metric_families
    status, body = n.get("/metrics")
    assert status == 200, body
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_move_with_outcomes_and_prometheus_sums_both_workers(nginx):
    n = nginx(METRICS, workers=2, http="lua_shared_dict resty_ffi_stats 1m;")
    import concurrent.futures
    ok = [n.get("/call?req=ok%d" % i) for i in range(200)]
    assert all(r[0] == 200 for r in ok), [r for r in ok if r[0] != 200][:3]
    fails = [n.get("/call?req=" + q("!fail:3:no")) for _ in range(10)]
    assert all(r == (502, b"rc=3 err=no") for r in fails)
    timeouts = [n.get("/call?req=" + q("!sleep:300:late") + "&timeout=0.05") for _ in range(4)]
    assert all(r[0] == 502 and b"timed out" in r[1] for r in timeouts)
    time.sleep(0.5)  # the late answers arrive
    # refused: one thread blocked, one task queued, the rest refused
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        burst = list(pool.map(lambda i: n.get("/call?req=" + q("!block:300:b%d" % i)), range(6)))
    refused = sum(1 for r in burst if b"queue full" in r[1])
    assert refused >= 1, burst
    time.sleep(1.5)  # every worker publishes its numbers each second
    m = metrics(n)

    def calls(outcome):
        return m[("resty_ffi_calls_total", (("outcome", outcome), ("runtime", "echo")))]
    assert calls("ok") == 200 + 6 - refused
    assert calls("error") == 10
    assert calls("timeout") == 4
    assert calls("refused") == refused
    count = m[("resty_ffi_call_duration_seconds_count", (("runtime", "echo"),))]
    assert count == calls("ok") + calls("error"), "timeouts are not in the histogram"
    inf = m[("resty_ffi_call_duration_seconds_bucket", (("le", "+Inf"), ("runtime", "echo")))]
    assert inf == count
    assert m[("resty_ffi_in_flight", (("runtime", "echo"),))] == 0
    assert m[("resty_ffi_queue_length", (("runtime", "echo"),))] == 0
    assert ("resty_ffi_log_lines_dropped_total", ()) in m
    # one worker's own view
    status, body = n.get("/rtstats")
    assert status == 200 and body.startswith(b"echo ok="), body
    assert re.search(rb" runtimes=1$", body), body


def test_prometheus_without_the_shared_dict_says_what_to_declare(nginx):
    n = nginx(METRICS)
    status, body = n.get("/metrics")
    assert status == 500
    assert b"needs `lua_shared_dict resty_ffi_stats 1m;` in the http block" in body


RELOADS = r"""
location /call {
    content_by_lua_block {
        local ffi = require "resty.ffi"
        -- no opts.name: the metrics name is the library's short name, never
        -- the cfg (which here holds a "token")
        local rt = assert(ffi.load("ffi_echo", "threads=1,tag=token-s3cret"))
        require("t.reply").send(rt:echo(ngx.unescape_uri(ngx.var.arg_req), 0.2))
    }
}
location /bad {
    content_by_lua_block {
        local rt, err = require("resty.ffi").load("/nowhere/libffi_gone.so", "pw=s3cret")
        ngx.print(tostring(rt), " ", err ~= nil)
    }
}
location /pid {
    content_by_lua_block { ngx.print(require("resty.ffi").stats().pid) }
}
location /metrics {
    content_by_lua_block { ngx.print(assert(require("resty.ffi").prometheus())) }
}
"""


def test_counters_only_grow_across_reloads_and_gauges_drop_exited_workers(nginx):
    n = nginx(RELOADS, workers=2, http="lua_shared_dict resty_ffi_stats 1m;")
    pids = set(n.worker_pids())
    assert int(n.get("/pid")[1]) in pids
    for i in range(40):
        assert n.get("/call?req=a%d" % i) == (200, b"a%d" % i)
    # a runtime answering twice, a library that does not load, a hung call
    assert n.get("/call?req=" + q("!twice:10:x")) == (200, b"x")
    assert n.get("/bad") == (200, b"nil true")
    assert b"timed out" in n.get("/call?req=" + q("!hang:"))[1]
    time.sleep(1.5)
    status, body = n.get("/metrics")
    assert status == 200
    assert b"s3cret" not in body and b"token" not in body and b"nowhere" not in body, body
    m = metrics(n)
    ok = ("resty_ffi_calls_total", (("outcome", "ok"), ("runtime", "ffi_echo")))
    assert m[ok] == 41
    assert m[("resty_ffi_calls_total", (("outcome", "timeout"), ("runtime", "ffi_echo")))] == 1
    assert m[("resty_ffi_load_failures_total", (("runtime", "ffi_gone"),))] == 1
    assert m[("resty_ffi_stray_answers_total", ())] >= 1
    in_flight = ("resty_ffi_in_flight", (("runtime", "ffi_echo"),))
    assert m[in_flight] == 1, "the hung call"
    # reload: new workers start from zero, old ones leave; scrape throughout
    n.reload()
    seen = [m[ok]]
    deadline = time.time() + 10
    while (pids & set(n.worker_pids())) and time.time() < deadline:
        n.get("/call?req=b")
        seen.append(metrics(n)[ok])
    assert not (pids & set(n.worker_pids())), "old workers left"
    for i in range(20):
        assert n.get("/call?req=c%d" % i) == (200, b"c%d" % i)
    time.sleep(1.5)
    m = metrics(n)
    seen.append(m[ok])
    assert seen == sorted(seen), seen
    assert m[ok] == 41 + (len(seen) - 2) + 20, (m[ok], len(seen))
    # the hung call's worker is gone, and so is its gauge
    assert m[in_flight] == 0
    # and past any expiry of what the old workers published, nothing goes
    # back (a snapshot per worker with a TTL would drop their 41 calls here)
    time.sleep(11)
    assert metrics(n)[ok] == m[ok]


MODULES = r"""
location /modules {
    content_by_lua_block {
        local out = {}
        local ffi = require "resty.ffi"
        local names = {}
        for k in pairs(ffi) do names[#names + 1] = k end
        table.sort(names)
        out[1] = table.concat(names, ",")
        for _, m in ipairs({ "resty.ffi", "resty.ffi.lib", "resty.ffi.channel",
                             "resty.ffi.call", "resty.ffi.dispatcher", "resty.ffi.flush",
                             "resty.ffi.log", "resty.ffi.runtime",
                             "resty.ffi.stats", "resty.ffi.prometheus",
                             "resty.ffi.stream", "resty.ffi.timer_thread",
                             "resty.ffi.grpc", "resty_ffi" }) do
            out[#out + 1] = m .. "=" .. tostring(require(m)._VERSION)
        end
        ngx.print(table.concat(out, "\n"))
    }
}
"""


def package_version():
    with open(os.path.join(harness.ROOT, "Cargo.toml")) as f:
        return re.search(r'^version = "(.*)"', f.read(), re.M).group(1)


def test_resty_ffi_exports_only_its_api_and_every_module_has_the_package_version(nginx):
    n = nginx(MODULES)
    status, body = n.get("/modules")
    assert status == 200, body
    lines = body.decode().split("\n")
    # the public face: no core handle, no dispatcher or metrics internals
    assert lines[0] == ("DEFAULT_TIMEOUT,LATENCY_BUCKETS,MAX_SPIN_US,_VERSION,"
                        "load,loader,prometheus,runtimes,stats,waiting")
    # every module under lua/ says the package's version (resty_ffi returns
    # resty.ffi itself)
    modules = sorted(f[:-4] for f in os.listdir(os.path.join(harness.ROOT, "lua", "resty", "ffi")))
    assert sorted(l.split("=")[0] for l in lines[1:]) == sorted(
        ["resty.ffi", "resty_ffi"] + ["resty.ffi." + m for m in modules])
    assert lines[1:] == [l.split("=")[0] + "=" + package_version() for l in lines[1:]]
