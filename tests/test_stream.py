"""Streaming answers through a real nginx: rt:__stream(req), st:recv(),
st:close(), with the Rust echo runtime's !stream modes (chunk i starts
with i as 8 digits) producing through resty_ffi_respond_chunk."""

import concurrent.futures
import re
import socket
import time

import harness

STREAM = r"""
location /stream {
    content_by_lua_block {
        local args = ngx.req.get_uri_args()
        local rt, err
        if args.compat then
            require "resty_ffi"
            rt, err = ngx.load_ffi("ffi_echo", "threads=2")
        else
            rt, err = require("resty.ffi").load("ffi_echo", "threads=2",
                { stream_window_bytes = tonumber(args.wb),
                  stream_window_chunks = tonumber(args.wc) })
        end
        if not rt then
            ngx.status = 500
            return ngx.print("load failed: ", err)
        end
        local st, err = rt:__stream(ngx.unescape_uri(args.req), tonumber(args.timeout))
        if not st then
            ngx.status = 500
            return ngx.print("stream failed: ", err)
        end
        if args.pause then
            ngx.sleep(tonumber(args.pause))
        end
        local n = 0
        while true do
            local chunk, err, rc = st:recv(tonumber(args.recv_timeout))
            if not chunk then
                if err then
                    ngx.print("\nEND err=", err, " rc=", tostring(rc))
                    if args.again then
                        local c2, e2 = st:recv()
                        ngx.print("\nAGAIN ", tostring(c2), " ", tostring(e2))
                    end
                else
                    ngx.print("\nEND ok")
                end
                break
            end
            n = n + 1
            if args.sizes then
                ngx.print(#chunk, ",")
            else
                ngx.print(chunk, "\n")
            end
            local ok = ngx.flush(true)
            if not ok then
                break
            end
        end
        st:close()
        st:close()
        local c, e = st:recv()
        ngx.print("\nCLOSED ", tostring(c), " ", tostring(e))
    }
}
location /plain_call {
    content_by_lua_block {
        local rt = assert(require("resty.ffi").load("ffi_echo", "threads=2"))
        require("t.reply").send(rt:echo(ngx.unescape_uri(ngx.var.arg_req)))
    }
}
location /stats {
    content_by_lua_block {
        local s = require("resty.ffi").stats()
        ngx.print("waiting=", s.waiting)
    }
}
"""


def chunks_of(body):
    lines = body.decode().split("\n")
    return [l for l in lines if re.match(r"^\d{8}", l)], lines


def test_chunks_arrive_in_order_none_lost_through_both_entry_points(nginx):
    n = nginx(STREAM)
    for compat in ("", "&compat=1"):
        status, body = n.get("/stream?req=!stream:300:40:0" + compat)
        assert status == 200, body
        got, lines = chunks_of(body)
        assert [int(c[:8]) for c in got] == list(range(1, 301)), body[:300]
        assert all(len(c) == 40 for c in got)
        assert "END ok" in lines
        assert lines[-1] == "CLOSED nil resty_ffi: the stream is closed", lines[-1]


def test_a_plain_call_to_a_streaming_runtime_gets_the_chunks_joined(nginx):
    n = nginx(STREAM)
    status, body = n.get("/plain_call?req=!stream:10:12:0")
    assert status == 200
    assert body == b"".join(b"%08d" % i + bytes([97 + i % 26]) * 4 for i in range(1, 11))
    # an error ends a plain call with the error alone
    assert n.get("/plain_call?req=!streamfail:3:7:boom") == (502, b"rc=7 err=boom")


def test_a_runtime_error_mid_stream_reaches_recv_after_the_chunks_before_it(nginx):
    n = nginx(STREAM)
    status, body = n.get("/stream?req=!streamfail:3:7:disk%20on%20fire&again=1")
    lines = body.decode().split("\n")
    assert lines[:3] == ["c1", "c2", "c3"], lines
    assert "END err=disk on fire rc=7" in lines
    # the end is the end: the error again, not a hang
    assert "AGAIN nil disk on fire" in lines


def test_each_chunk_arrives_as_soon_as_it_is_produced(nginx):
    n = nginx(STREAM)
    n.get("/stream?req=!stream:1:8:0")
    _, buf, stamps = n.get_as_it_comes("/stream?req=!stream:50:16:20", timeout=10)
    first = next(t for t, lines in stamps if lines >= 1)
    last = next(t for t, lines in stamps if lines >= 50)
    got, _ = chunks_of(buf)
    assert len(got) == 50
    # 50 chunks 20 ms apart: the first within ~100 ms, the last at ~1 s
    # (slack for a busy CPU, but a buffered answer would arrive all at once)
    assert first < 0.35, stamps[:5]
    assert 0.9 < last < 3, last
    assert len({lines for _, lines in stamps}) > 10, "chunks were not flushed one by one"


def test_memory_stays_bounded_by_the_window_when_the_reader_is_slower(nginx):
    n = nginx(STREAM)
    n.get("/stream?req=!stream:1:8:0")
    [pid] = n.worker_pids()
    # 1600 chunks of 64 KiB = 100 MiB; the reader pauses 1 s first
    (status, body), growth_mib = harness.rss_growth_while(pid, lambda: n.get(
        "/stream?req=!stream:1600:65536:0&pause=1&sizes=1", timeout=120))
    assert status == 200
    sizes = body.decode().split("\n")[0].rstrip(",").split(",")
    assert len(sizes) == 1600 and set(sizes) == {"65536"}
    # the window is 1 MiB / 64 chunks (4 MiB of 64 KiB chunks) plus nginx's
    # own output buffers: nowhere near the 100 MiB the runtime pushed
    assert growth_mib < 30, growth_mib


def test_a_small_window_holds_the_producer_back(nginx):
    n = nginx(STREAM)
    status, body = n.get("/stream?req=!stream:40:100:0&wb=300&wc=2&sizes=1")
    assert status == 200
    assert body.decode().split("\n")[0].rstrip(",").split(",") == ["100"] * 40


def read_some_then_hang_up(port, path, want=3):
    return harness.hang_up_when(port, path, lambda buf: buf.count(b"\n") >= 8 + want)[0]


def test_a_client_that_disconnects_mid_stream_stops_the_producer(nginx):
    n = nginx(STREAM)
    n.get("/stream?req=!stream:1:8:0")
    read_some_then_hang_up(n.port, "/stream?req=!stream:100000:64:2")
    t0 = time.time()
    assert harness.wait_until(lambda: "echo stream cancelled after" in n.error_log(), 5), \
        n.error_log()[-2000:]
    stopped = time.time() - t0
    m = re.search(r"echo stream cancelled after (\d+) of 100000 chunks", n.error_log())
    assert m and int(m.group(1)) < 5000, m
    assert stopped < 1.0, stopped
    assert harness.wait_until(lambda: n.get("/stats")[1] == b"waiting=0", 5)


def test_1000_abandoned_streams_leak_nothing(nginx):
    n = nginx(STREAM)
    n.get("/stream?req=!stream:1:8:0")
    [pid] = n.worker_pids()

    def one(i):
        read_some_then_hang_up(n.port, "/stream?req=!stream:100000:256:1", want=2)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(200)))
    rss_warm = harness.rss_kib(pid)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(800)))
    assert harness.wait_until(lambda: n.get("/stats")[1] == b"waiting=0", 10), \
        n.get("/stats")
    # (identical lines are collapsed into "(repeated N times ...)")
    assert harness.wait_until(
        lambda: harness.logged(n.error_log(), "echo stream cancelled after") == 1000, 10), \
        harness.logged(n.error_log(), "echo stream cancelled after")
    growth_mib = (harness.rss_kib(pid) - rss_warm) / 1024
    assert growth_mib < 20, growth_mib
    assert n.worker_pids() == [pid]


def test_recv_timeout_leaves_the_stream_usable_and_the_stream_timeout_ends_it(nginx):
    n = nginx(STREAM)
    status, body = n.get("/stream?req=!stream:2:8:400&recv_timeout=0.1")
    assert b"END err=resty_ffi: recv timed out after 0.1 s" in body, body
    # the whole-stream timeout: ends the stream and cancels the producer
    status, body = n.get("/stream?req=!stream:100:8:100&timeout=0.35")
    lines = body.decode().split("\n")
    assert 1 <= len([l for l in lines if re.match(r"^\d{8}", l)]) <= 4, lines
    assert "END err=resty_ffi: stream timed out after 0.35 s rc=nil" in lines, lines
    assert harness.wait_until(lambda: "echo stream cancelled after" in n.error_log(), 3)


def test_bad_use_of_the_chunk_abi_is_refused_never_a_crash(nginx):
    n = nginx(STREAM)
    [pid] = n.worker_pids()
    status, body = n.get("/stream?req=!streambad:")
    assert status == 200
    assert body.decode().split("\n")[0] == "neg=-1 bogus=-1", body
    assert harness.wait_until(
        lambda: "echo chunk after the final answer: -1" in n.error_log(), 3)
    # a bad argument to __stream itself
    status, body = n.get("/plain_call?req=x")
    assert status == 200
    assert n.worker_pids() == [pid]


BOTH = STREAM + r"""
location /mixed {
    content_by_lua_block {
        local rt = assert(require("resty.ffi").load("ffi_echo", "threads=2"))
        local tag = ngx.var.arg_tag
        local ok, res = rt:echo(tag)
        ngx.print(ok and res or "fail")
    }
}
"""


def test_streams_and_plain_calls_share_two_workers_without_cross_talk(nginx):
    n = nginx(BOTH, workers=2)

    def stream(i):
        size = 64 + i
        status, body = n.get("/stream?req=!stream:60:%d:1&sizes=1" % size, timeout=60)
        return status, body.decode().split("\n")[0].rstrip(",").split(","), size

    def plain(i):
        tag = "tag-%d" % i
        return n.get("/mixed?tag=" + tag, timeout=60), tag

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        sf = [pool.submit(stream, i) for i in range(64)]
        pf = [pool.submit(plain, i) for i in range(640)]
        for f in sf:
            status, sizes, size = f.result()
            assert status == 200 and sizes == [str(size)] * 60, (size, sizes[:5])
        for f in pf:
            (status, body), tag = f.result()
            assert (status, body) == (200, tag.encode())


def test_quit_is_prompt_with_a_stream_open(nginx):
    n = nginx(STREAM)
    n.get("/stream?req=!stream:1:8:0")
    s = socket.create_connection(("127.0.0.1", n.port), timeout=10)
    s.sendall(b"GET /stream?req=!stream:100000:64:10 HTTP/1.1\r\nHost: x\r\n\r\n")
    buf = b""
    while buf.count(b"\n") < 12:
        buf += s.recv(4096)
    took = n.quit(timeout=20)
    assert took < 3, took
    rest = b""
    try:
        while True:
            data = s.recv(65536)
            if not data:
                break
            rest += data
    except OSError:
        pass
    s.close()
    assert b"worker is exiting" in buf + rest


def test_reload_retires_the_old_worker_promptly_with_a_stream_open(nginx):
    n = nginx(STREAM)
    n.get("/stream?req=!stream:1:8:0")
    [old] = n.worker_pids()
    s = socket.create_connection(("127.0.0.1", n.port), timeout=10)
    s.sendall(b"GET /stream?req=!stream:100000:64:10 HTTP/1.1\r\nHost: x\r\n\r\n")
    buf = b""
    while buf.count(b"\n") < 12:
        buf += s.recv(4096)
    t0 = time.time()
    n.reload()
    assert harness.wait_until(lambda: old not in n.worker_pids() and n.worker_pids(), 5), \
        n.worker_pids()
    assert time.time() - t0 < 4
    s.close()
    assert n.get("/stream?req=!stream:3:8:0")[0] == 200
