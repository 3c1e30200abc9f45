"""gRPC streams the Lua side stops reading end on the server, promptly and
without leaking, against a real tonic server (its Ticks stream counts how
each tagged call ended: finished, or cancelled by the client).
"""

import signal
import socket
import time

import harness
from test_grpc import (ENDED, RUN, grpc_stage, http_block, ngx, run,  # noqa: F401
                       servers)

TICKS = "/resty.test.Probe/Ticks"

# Lua: a long, fast server stream (a tick every 10 ms for ~17 minutes),
# read twice.
OPEN = ENDED + """
    local function cancelled(e) return e.cancelled >= 1 end
    local function open(conn, tag)
        local ok, s = conn:new_stream(args.path)
        assert(ok, s)
        assert(s:send({ count = 100000, interval_ms = 10, tag = tag }))
        assert(s:close_send())
        for i = 0, 1 do
            local ok2, t, err = s:recv()
            assert(ok2 and t.n == i, tostring(err))
        end
        return s
    end
"""


def test_a_long_server_stream_closed_after_two_messages_is_cancelled_within_a_second(run, servers):
    res = run(OPEN + """
        local ok, conn = grpc.connect(args.addr)
        local tag = "close2-" .. ngx.now() .. "-" .. ngx.worker.pid()
        local s = open(conn, tag)
        ngx.update_time()
        local t0 = ngx.now()
        s:close()
        local e = ended(conn, tag, cancelled)
        ngx.update_time()
        e.took = ngx.now() - t0
        return e
    """, addr=servers["plain"].addr, path=TICKS)
    assert (res["started"], res["finished"], res["cancelled"]) == (1, 0, 1), res
    assert res["took"] < 1.0, res


def test_a_stream_whose_reader_is_killed_mid_recv_is_cancelled(run, servers):
    # the light thread parked in recv is killed and its stream dropped: the
    # runtime's recv task ends and the RPC is cancelled, with no close()
    res = run(OPEN + """
        local ok, conn = grpc.connect(args.addr)
        local tag = "kill-" .. ngx.now() .. "-" .. ngx.worker.pid()
        collectgarbage("collect")
        local s0 = select(2, grpc.open_count())
        local th = ngx.thread.spawn(function()
            local ok, s = conn:new_stream(args.path)
            assert(s:send({ count = 2, interval_ms = 60000, tag = tag }))
            assert(s:close_send())
            assert(s:recv())
            return s:recv()     -- parks: the next tick is a minute away
        end)
        ngx.sleep(0.2)
        local killed = ngx.thread.kill(th) and true
        th = nil
        collectgarbage("collect")
        collectgarbage("collect")
        ngx.update_time()
        local t0 = ngx.now()
        local e = ended(conn, tag, cancelled)
        ngx.update_time()
        e.took = ngx.now() - t0
        collectgarbage("collect")
        return { killed = killed, e = e, streams = select(2, grpc.open_count()) - s0 }
    """, addr=servers["plain"].addr, path=TICKS)
    assert res["killed"] is True, res
    e = res["e"]
    assert (e["started"], e["finished"], e["cancelled"]) == (1, 0, 1), res
    assert e["took"] < 1.0, res
    assert res["streams"] == 0, res


def test_a_stream_whose_reader_is_gone_ends_and_cancels_the_rpc(run, servers):
    # the runtime on its own: the messages task of a stream whose reader
    # the core marks gone (here its streamed answer is closed; a timeout,
    # its collection or the worker exiting do the same) ends at once and
    # cancels the RPC, whatever the Lua side does next (here: nothing;
    # grpc.lua's close would also close the stream)
    res = run(ENDED + """
        local ok, conn = grpc.connect(args.addr)
        local tag = "gone-" .. ngx.now() .. "-" .. ngx.worker.pid()
        local ok, s = conn:new_stream(args.path)
        assert(s:send({ count = 2, interval_ms = 60000, tag = tag }))
        assert(s:close_send())
        assert(s:recv())
        local s0 = select(2, grpc.open_count())
        s._st:close()                 -- the next tick is a minute away
        ngx.update_time()
        local t0 = ngx.now()
        local e = ended(conn, tag, function(e) return e.cancelled >= 1 end)
        ngx.update_time()
        e.took = ngx.now() - t0
        return { e = e, closed = s0 - select(2, grpc.open_count()) }
    """, addr=servers["plain"].addr, path=TICKS)
    e = res["e"]
    assert (e["started"], e["finished"], e["cancelled"]) == (1, 0, 1), res
    assert e["took"] < 1.0, res
    assert res["closed"] == 1, res


def test_many_streams_closed_or_dropped_mid_way_leave_nothing_behind(run, servers):
    def rss_kb():
        pids = run.nginx.worker_pids()
        total = 0
        for pid in pids:
            with open("/proc/%d/status" % pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total

    lua = OPEN + """
        local ok, conn = grpc.connect(args.addr)
        local tag = "many-" .. args.round .. "-" .. ngx.now() .. "-" .. ngx.worker.pid()
        collectgarbage("collect")
        local s0 = select(2, grpc.open_count())
        local n = tonumber(args.n)
        for i = 1, n do
            local s = open(conn, tag)
            if i % 25 ~= 0 then
                s:close()
            end          -- else dropped: its GC closes it
        end
        collectgarbage("collect")
        collectgarbage("collect")
        local e = ended(conn, tag, function(e) return e.cancelled >= n end)
        collectgarbage("collect")
        return { e = e, streams = select(2, grpc.open_count()) - s0 }
    """
    n = 150
    first = run(lua, addr=servers["plain"].addr, path=TICKS, n=n, round=0, timeout=120)
    after_first = rss_kb()
    for r in range(1, 4):
        res = run(lua, addr=servers["plain"].addr, path=TICKS, n=n, round=r, timeout=120)
        e = res["e"]
        assert (e["started"], e["finished"], e["cancelled"]) == (n, 0, n), res
        assert res["streams"] == 0, res
    assert first["streams"] == 0, first
    grown = rss_kb() - after_first
    # 450 more streams: far below what keeping their buffers would cost
    assert grown < 16 * 1024, "worker RSS grew by %d KiB" % grown


def test_quit_is_prompt_with_a_stream_parked_in_recv_and_the_rpc_is_cancelled(
        stage, grpc_stage, servers, run):
    # a client request waits in recv for a tick a minute away; nginx -s quit:
    # the worker tells the reader it exits, the runtime cancels the RPC
    tag = "quit-%d" % harness.free_port()
    with harness.Nginx(stage, RUN, http=http_block(grpc_stage["proto"]), workers=1) as n:
        lua = """
            local ok, conn = grpc.connect(args.addr)
            local ok, s = conn:new_stream("/resty.test.Probe/Ticks")
            assert(s:send({ count = 2, interval_ms = 60000, tag = args.tag }))
            assert(s:close_send())
            assert(s:recv())
            ngx.print("first\\n")
            ngx.flush(true)
            local ok2, code, err = s:recv()
            ngx.print(tostring(ok2), " ", tostring(code), " ", tostring(err))
        """.encode()
        c = socket.create_connection(("127.0.0.1", n.port), timeout=20)
        c.sendall(b"POST /lua?addr=%s&tag=%s HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Length: %d\r\n\r\n" % (servers["plain"].addr.encode(),
                                                   tag.encode(), len(lua)) + lua)
        buf = b""
        while b"first" not in buf:
            data = c.recv(4096)
            assert data, buf
            buf += data
        t0 = time.time()
        n.signal(signal.SIGQUIT)
        rest = b""
        try:
            while True:
                data = c.recv(65536)
                if not data:
                    break
                rest += data
        except OSError:
            pass
        c.close()       # else nginx lingers on the connection (lingering_timeout)
        n.proc.wait(timeout=20)
        took = time.time() - t0
    assert took < 3, (took, buf + rest)
    assert b"worker is exiting" in buf + rest, buf + rest
    res = run(ENDED + """
        local ok, conn = grpc.connect(args.addr)
        return ended(conn, args.tag, function(e) return e.cancelled >= 1 end)
    """, addr=servers["plain"].addr, tag=tag)
    assert (res["started"], res["finished"], res["cancelled"]) == (1, 0, 1), res
