"""Go runtimes as they are written in the wild, through a real nginx.

tests/go/tasks is shaped like lua-resty-ffi's Go runtimes (lua-resty-ffi-req
and friends): a goroutine per task, tasks held as unsafe.Pointer in a map
and a channel, stack growth and garbage collections between poll and
respond. Go aborts the worker when a task handle does not look like a
foreign pointer to it, so these tests fail with a dead worker (and
"fatal error" in error.log) if handles ever become small integers or
addresses inside memory Go may own.
"""

import concurrent.futures
import os
import re
import subprocess

import pytest

import harness

GO = """
location /go {
    content_by_lua_block {
        require "resty_ffi"
        local reply = require "t.reply"
        local rt, err = ngx.load_ffi("ffi_go_tasks", nil, { timeout = 20 })
        if not rt then
            ngx.status = 500
            return ngx.print("load failed: ", err)
        end
        reply.send(rt:call(reply.body()))
    }
}
location /pid {
    content_by_lua_block { ngx.print(ngx.worker.pid()) }
}
"""


@pytest.fixture(scope="module")
def go_stage(stage):
    src = os.path.join(harness.ROOT, "tests", "go", "tasks")
    out = os.path.join(stage.lib, "libffi_go_tasks.so")
    subprocess.run(["go", "build", "-buildmode=c-shared", "-o", out, "."],
                   cwd=src, check=True)
    os.chmod(out, 0o755)
    return stage


def call_many(n, total, clients=16, depth=None):
    """`total` calls from `clients` HTTP clients; returns the answers seen
    as (request, status, body)."""
    def one(i):
        text = "call-%d-%s" % (i, os.urandom(4).hex())
        body = text if depth is None else "depth:%d:%s" % (depth, text)
        status, got = n.post("/go", body.encode(), timeout=60)
        return text, status, got.decode(errors="replace")
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, range(total)))


def check_answers(results, depth):
    want_sum = sum(range(1, depth + 1)) + 1
    for text, status, body in results:
        assert status == 200, (text, body)
        got_text, got_sum, handle = body.rsplit("|", 2)
        assert got_text == text, "another request's answer: %r for %r" % (body, text)
        assert int(got_sum) == want_sum
        assert int(handle, 16) >= 4096, "handle %s looks like a small integer" % handle


@pytest.mark.parametrize("godebug", ["", "gccheckmark=1"])
def test_go_runtime_growing_stacks_and_collecting_serves_5000_calls_in_2_workers(
        go_stage, godebug):
    main = 'env GODEBUG=%s;' % godebug if godebug else ""
    n = harness.Nginx(go_stage, GO, main=main, workers=2)
    with n:
        assert harness.wait_until(lambda: len(n.worker_pids()) == 2, 10)
        pids = n.worker_pids()
        total = 5000 if not godebug else 1500
        check_answers(call_many(n, total), 64)
        # deep stacks: several growths (and copies) of each goroutine's stack
        check_answers(call_many(n, 200, depth=3000), 3000)
        assert n.worker_pids() == pids, "a worker died:\n" + n.error_log()[-3000:]
        log = n.error_log()
        assert not re.search(r"fatal error|bad pointer|invalid pointer|signal \d+", log), \
            log[-3000:]
        assert n.quit() < 10


GO_STREAM = r"""
location /go_stream {
    content_by_lua_block {
        local rt = assert(require("resty.ffi").load("ffi_go_stream"))
        local st = assert(rt:__stream(ngx.var.arg_req))
        while true do
            local chunk, err, rc = st:recv()
            if not chunk then
                if err then ngx.print("ERR ", err, " ", rc) end
                break
            end
            ngx.print(chunk)
            if not ngx.flush(true) then break end
        end
        st:close()
    }
}
location /go_plain {
    content_by_lua_block {
        local rt = assert(require("resty.ffi").load("ffi_go_stream"))
        local ok, res, err = rt:call(ngx.var.arg_req)
        ngx.print(tostring(ok), "|", tostring(res), "|", tostring(err))
    }
}
"""


def test_go_streaming_example_streams_joins_and_stops_when_the_client_leaves(nginx):
    n = nginx(GO_STREAM)
    status, body = n.get("/go_stream?req=200:0:tok")
    assert status == 200
    assert body.decode() == "".join("%d:tok\n" % i for i in range(1, 201))
    assert n.get("/go_plain?req=3:0:x") == (200, b"true|1:x\n2:x\n3:x\n|nil")
    assert n.get("/go_stream?req=bad") == (200, b"ERR request must be N:MS:text 2")
    # a client that leaves mid-stream: the goroutine stops
    harness.hang_up_when(n.port, "/go_stream?req=100000:2:tok",
                         lambda buf: buf.count(b"tok") >= 5)
    assert harness.wait_until(lambda: "go stream: reader gone after" in n.error_log(), 5), \
        n.error_log()[-2000:]
