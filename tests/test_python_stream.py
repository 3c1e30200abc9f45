"""Streaming answers from Python runtimes through a real nginx: handlers
that are generators or async generators (the loader's handler style), and
the native module's / cffi's chunk primitives (the compat style).

The test module `pygen` below has one sync and one async generator
handler; the request says what to stream. Markers they print reach
error.log (print -> nginx), with the generator's own clock, so a test can
tell when the generator saw its cancellation.
"""

import concurrent.futures
import json
import re
import socket
import time

import pytest

import harness
from harness import q
from test_python import VENV, moddir, pystage, write_module  # noqa: F401 (fixtures)

STREAM = harness.loader_locations("ffi_python3") + harness.stream_location("ffi_python3") + r"""
location /stats {
    content_by_lua_block {
        ngx.print("waiting=", require("resty.ffi").stats().waiting)
    }
}
"""

PYGEN = '''
import asyncio, time

BIG = b"x" * 65536

def marker(what, req):
    # the generator's own clock, for the test to compare with its own
    print("pygen %s %s at %.6f" % (what, req.decode(), time.time()))

def parse(req):
    mode, _, arg = req.decode().partition(":")
    return mode, [int(a) for a in arg.split(":") if a.isdigit()], arg

async def agen(req):
    mode, nums, arg = parse(req)
    try:
        if mode == "tick":                # N chunks, MS apart
            n, ms = nums
            for i in range(1, n + 1):
                await asyncio.sleep(ms / 1000)
                yield "%08d\\n" % i
        elif mode == "types":
            yield b"bytes,"
            yield bytearray(b"bytearray,")
            yield memoryview(b"..memoryview,")[2:]
            yield "str \\u00e9,"
            yield b""
            yield "end"
        elif mode == "badtype":
            yield "ok,"
            yield 42
            yield "never"
        elif mode == "fail":
            yield "c1\\n"
            yield "c2\\n"
            raise ValueError("mid-stream " + arg)
        elif mode == "big":               # MiB of 64 KiB chunks, at once
            for _ in range(nums[0] * 16):
                yield BIG
        elif mode == "sleepy":            # one chunk, then a long wait
            yield "first\\n"
            await asyncio.sleep(60)
            yield "late\\n"
    except asyncio.CancelledError:
        marker("CancelledError", req)
        raise
    except GeneratorExit:
        marker("GeneratorExit", req)
        raise
    finally:
        marker("finally", req)

def sgen(req):
    mode, nums, arg = parse(req)
    try:
        if mode == "tick":
            n, ms = nums
            for i in range(1, n + 1):
                time.sleep(ms / 1000)
                yield b"%08d\\n" % i
        elif mode == "types":
            yield b"bytes,"
            yield bytearray(b"bytearray,")
            yield memoryview(b"..memoryview,")[2:]
            yield "str \\u00e9,"
            yield b""
            yield "end"
        elif mode == "badtype":
            yield "ok,"
            yield 42
            yield "never"
        elif mode == "fail":
            yield "c1\\n"
            yield "c2\\n"
            raise ValueError("mid-stream " + arg)
        elif mode == "big":
            for _ in range(nums[0] * 16):
                yield BIG
    except GeneratorExit:
        marker("GeneratorExit", req)
        raise
    finally:
        marker("finally", req)

def init_async(cfg, tq):
    return agen

def init_sync(cfg, tq):
    return sgen
'''

STYLES = {"async": "init_async", "sync": "init_sync"}


@pytest.fixture
def gen_nginx(nginx, pystage, moddir):  # noqa: F811
    write_module(moddir, "pygen", PYGEN)
    n = nginx(STREAM)
    n.cfgs = {style: moddir + "/pygen," + init for style, init in STYLES.items()}
    return n


def stream_path(n, style, req, **extra):
    """/stream's path for a style's cfg: chunks written as they are, the
    runtime loaded with a 30 s call timeout."""
    path = "/stream?cfg=%s&req=%s&load_timeout=30" % (q(n.cfgs[style]), q(req))
    for k, v in extra.items():
        path += "&%s=%s" % (k, v)
    return path


def markers(n, what, req):
    return [float(t) for t in re.findall(
        r"pygen %s %s at ([\d.]+)" % (re.escape(what), re.escape(req)), n.error_log())]


def hang_up_after(port, path, lines):
    """Reads until `lines` body lines came, then resets the connection;
    returns the time of the reset."""
    def enough(buf):
        return b"\r\n\r\n" in buf and buf.split(b"\r\n\r\n", 1)[1].count(b"\n") >= lines
    return harness.hang_up_when(port, path, enough, timeout=10)[1]


def waiting_is_zero(n):
    return harness.wait_until(lambda: n.get("/stats")[1] == b"waiting=0", 10)


@pytest.mark.parametrize("style", ["async", "sync"])
def test_generator_chunks_reach_the_client_as_they_are_produced(gen_nginx, style):
    n = gen_nginx
    assert n.get(stream_path(n, style, "tick:1:0"))[0] == 200  # load, warm
    _, body, stamps = n.get_as_it_comes(stream_path(n, style, "tick:50:20"))
    got = [l for l in body.decode().split("\n") if re.match(r"^\d{8}$", l)]
    assert [int(l) for l in got] == list(range(1, 51)), body[-300:]
    assert body.endswith(b"\nEND ok"), body[-100:]
    first = next(t for t, lines in stamps if lines >= 1)
    last = next(t for t, lines in stamps if lines >= 50)
    # 50 chunks 20 ms apart: the first after ~20 ms, the last at ~1 s
    # (slack for a busy CPU; a buffered answer would come all at ~1 s)
    assert first < 0.3, stamps[:5]
    assert 0.95 < last < 3, last
    assert len({lines for _, lines in stamps}) > 10, "chunks were not flushed one by one"


@pytest.mark.parametrize("style", ["async", "sync"])
def test_items_may_be_bytes_bytearray_memoryview_or_str(gen_nginx, style):
    n = gen_nginx
    status, body = n.get(stream_path(n, style, "types"))
    assert (status, body.decode()) == (
        200, "bytes,bytearray,memoryview,str \u00e9,end\nEND ok")
    # anything else ends the stream with an error after the chunks before
    # it, and the generator is closed (its finally runs)
    status, body = n.get(stream_path(n, style, "badtype"))
    assert body.decode() == ("ok,\nEND err=TypeError: resty_ffi: a chunk must be bytes, "
                             "bytearray, memoryview or str, got int rc=1"), body
    assert harness.wait_until(lambda: markers(n, "finally", "badtype"), 3)
    assert len(markers(n, "GeneratorExit", "badtype")) == 1


@pytest.mark.parametrize("style", ["async", "sync"])
def test_an_exception_mid_stream_reaches_recv_after_the_chunks_before_it(gen_nginx, style):
    n = gen_nginx
    status, body = n.get(stream_path(n, style, "fail:disk on fire"))
    assert status == 200
    assert body.decode() == "c1\nc2\n\nEND err=ValueError: mid-stream disk on fire rc=1", body
    log = n.error_log()
    assert "handler raised ValueError: mid-stream disk on fire" in log
    assert "Traceback (most recent call last)" in log
    # the runtime keeps serving
    assert n.get(stream_path(n, style, "tick:3:0"))[1].endswith(b"00000003\n\nEND ok")


@pytest.mark.parametrize("style", ["async", "sync"])
def test_a_plain_call_to_a_streaming_handler_gets_the_chunks_joined(gen_nginx, style):
    n = gen_nginx
    cfg = q(n.cfgs[style])
    assert n.post("/call?cfg=" + cfg, b"tick:5:0") == (
        200, b"".join(b"%08d\n" % i for i in range(1, 6)))
    assert n.post("/call?cfg=" + cfg, b"types") == (
        200, "bytes,bytearray,memoryview,str \u00e9,end".encode())
    # an error ends a plain call with the error alone
    assert n.post("/call?cfg=" + cfg, b"fail:x") == (502, b"rc=1 err=ValueError: mid-stream x")
    # 100 MiB joined would be a lot: 4 MiB is enough to cross any window
    status, body = n.post("/call?cfg=" + cfg, b"big:4")
    assert status == 200 and body == b"x" * (4 << 20)


@pytest.mark.parametrize("style,seen", [("async", "CancelledError"), ("sync", "GeneratorExit")])
def test_a_client_that_disconnects_mid_stream_stops_the_generator_at_once(
        gen_nginx, style, seen):
    n = gen_nginx
    assert n.get(stream_path(n, style, "tick:1:0"))[0] == 200
    req = "tick:100000:20"
    gone = hang_up_after(n.port, stream_path(n, style, req), lines=5)
    assert harness.wait_until(lambda: markers(n, "finally", req), 5), n.error_log()[-2000:]
    [saw] = markers(n, seen, req)
    # the next chunk (<= 20 ms later) finds the client gone; the generator
    # hears of it within ~100 ms of that (slack for a busy CPU)
    assert saw - gone < 0.15, saw - gone
    assert waiting_is_zero(n)


def test_an_async_generator_awaiting_a_long_time_is_cancelled_when_the_stream_ends(gen_nginx):
    n = gen_nginx
    # the whole-stream timeout ends the stream while the generator sleeps 60 s
    t0 = time.time()
    status, body = n.get(stream_path(n, "async", "sleepy", timeout="0.5"))
    ended = time.time()
    assert body.decode() == "first\n\nEND err=resty_ffi: stream timed out after 0.5 s rc=nil", body
    assert harness.wait_until(lambda: markers(n, "finally", "sleepy"), 5), n.error_log()[-2000:]
    [saw] = markers(n, "CancelledError", "sleepy")
    assert saw - t0 < ended - t0 + 0.1, (saw - t0, ended - t0)
    # and a client that leaves while nothing is written (nginx sees it
    # through lua_check_client_abort + ngx.on_abort, which closes the stream)
    gone = hang_up_after(n.port, stream_path(n, "async", "sleepy"), lines=1)
    assert harness.wait_until(lambda: len(markers(n, "CancelledError", "sleepy")) == 2, 5)
    saw = markers(n, "CancelledError", "sleepy")[1]
    assert saw - gone < 0.15, saw - gone
    assert waiting_is_zero(n)


def test_1000_abandoned_streams_leak_nothing(gen_nginx):
    n = gen_nginx
    assert n.get(stream_path(n, "async", "tick:1:0"))[0] == 200
    [pid] = n.worker_pids()

    def one(i):
        hang_up_after(n.port, stream_path(n, "async", "tick:100000:1"), lines=2)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(200)))
    assert harness.wait_until(
        lambda: harness.logged(n.error_log(), "pygen finally tick:100000:1") == 200, 10)
    rss_warm = harness.rss_kib(pid)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(800)))
    assert waiting_is_zero(n), n.get("/stats")
    # (identical lines are collapsed into "(repeated N times ...)")
    assert harness.wait_until(
        lambda: harness.logged(n.error_log(), "pygen finally tick:100000:1") == 1000, 10), \
        harness.logged(n.error_log(), "pygen finally tick:100000:1")
    # every one was cancelled, not run to its end: awaiting its next tick
    # (CancelledError) or at a yield whose chunk was refused (GeneratorExit)
    log = n.error_log()
    assert (harness.logged(log, "pygen CancelledError tick:100000:1")
            + harness.logged(log, "pygen GeneratorExit tick:100000:1")) == 1000
    growth_mib = (harness.rss_kib(pid) - rss_warm) / 1024
    assert growth_mib < 20, growth_mib
    assert n.worker_pids() == [pid]


@pytest.mark.parametrize("style", ["async", "sync"])
def test_memory_stays_bounded_by_the_window_when_the_reader_is_slower(gen_nginx, style):
    n = gen_nginx
    assert n.get(stream_path(n, style, "tick:1:0"))[0] == 200
    [pid] = n.worker_pids()
    # 100 MiB in 64 KiB chunks, as fast as the generator can; the reader
    # pauses 1 s before its first recv
    (status, body), growth_mib = harness.rss_growth_while(pid, lambda: n.get(
        stream_path(n, style, "big:100", pause=1, sizes=1), timeout=120))
    assert status == 200
    sizes = body.decode().split("\n")[0].rstrip(",").split(",")
    assert len(sizes) == 1600 and set(sizes) == {"65536"}, (len(sizes), body[-200:])
    # the window is 1 MiB / 64 chunks plus nginx's own output buffers:
    # nowhere near the 100 MiB the generator produced
    assert growth_mib < 30, growth_mib


@pytest.mark.parametrize("style", ["async", "sync"])
def test_a_small_window_holds_the_generator_back_and_nothing_is_lost(gen_nginx, style):
    n = gen_nginx
    status, body = n.get(stream_path(n, style, "tick:300:0", wb=100, wc=2))
    assert status == 200
    got = [l for l in body.decode().split("\n") if re.match(r"^\d{8}$", l)]
    assert [int(l) for l in got] == list(range(1, 301)), body[-300:]


MIXED = '''
import asyncio, time

async def agen(n):
    try:
        for i in range(1, n + 1):
            await asyncio.sleep(0.002)
            yield b"%08d\\n" % i
    except asyncio.CancelledError:
        print("mixed agen cancelled at %.6f" % time.time())
        raise

def sgen(n):
    try:
        for i in range(1, n + 1):
            yield b"%08d\\n" % i
    except GeneratorExit:
        print("mixed sgen closed at %.6f" % time.time())
        raise

def sync_handler(req):          # a sync handler returning an async iterator
    return agen(int(req.split(b":")[1]))

async def async_handler(req):   # an async handler returning a sync iterator
    await asyncio.sleep(0)
    return sgen(int(req.split(b":")[1]))

def init_sync(cfg, tq):
    return sync_handler

def init_async(cfg, tq):
    return async_handler
'''


@pytest.mark.parametrize("init,seen", [("init_sync", "mixed agen cancelled"),
                                       ("init_async", "mixed sgen closed")])
def test_handlers_may_return_iterators_of_the_other_kind(nginx, pystage, moddir, init, seen):  # noqa: F811
    write_module(moddir, "pymixed", MIXED)
    n = nginx(STREAM)
    n.cfgs = {"m": moddir + "/pymixed," + init}
    status, body = n.get(stream_path(n, "m", "n:500", wc=4))
    got = [l for l in body.decode().split("\n") if re.match(r"^\d{8}$", l)]
    assert [int(l) for l in got] == list(range(1, 501)), body[-300:]
    assert n.post("/call?cfg=" + q(n.cfgs["m"]), b"n:3") == (
        200, b"00000001\n00000002\n00000003\n")
    gone = hang_up_after(n.port, stream_path(n, "m", "n:100000000", wc=4), lines=3)
    pat = seen + r" at ([\d.]+)"
    assert harness.wait_until(lambda: re.search(pat, n.error_log()), 5), n.error_log()[-2000:]
    assert float(re.search(pat, n.error_log()).group(1)) - gone < 0.15
    assert waiting_is_zero(n)
    # unload: the runtime's threads (and the loop a sync handler started for
    # its async iterators) end
    assert n.get("/unload?cfg=" + q(n.cfgs["m"])) == (200, b"unloaded")
    [pid] = n.worker_pids()
    assert harness.wait_until(
        lambda: not [t for t in harness.thread_names(pid) if t.startswith("py")], 5), \
        harness.thread_names(pid)


def test_quit_is_prompt_with_python_streams_open(gen_nginx):
    n = gen_nginx
    assert n.get(stream_path(n, "async", "tick:1:0"))[0] == 200
    assert n.get(stream_path(n, "sync", "tick:1:0"))[0] == 200
    socks = []
    for style in ("async", "sync"):
        s = socket.create_connection(("127.0.0.1", n.port), timeout=10)
        s.sendall(b"GET " + stream_path(n, style, "tick:100000:10").encode()
                  + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        buf = b""
        while buf.count(b"\n") < 12:
            buf += s.recv(4096)
        socks.append(s)
    took = n.quit(timeout=20)
    assert took < 3, took
    for s in socks:
        s.close()


COMPAT = '''
import threading, time, resty_ffi
from cffi import FFI

ffi = FFI()
ffi.cdef("""
int resty_ffi_respond_chunk(void *task, const char *data, int len);
int resty_ffi_task_cancelled(void *task);
void *ngx_http_lua_ffi_task_poll(void *tq);
char *ngx_http_lua_ffi_get_req(void *task, int *len);
void ngx_http_lua_ffi_respond(void *task, int rc, char *rsp, int rsp_len);
""")
C = ffi.dlopen(None)

def native(tq):
    # the loader's native module
    while (task := resty_ffi.poll(tq)) is not None:
        n = int(task.req.split(b":")[1])
        for i in range(1, n + 1):
            time.sleep(0.002)
            if task.respond_chunk(b"%08d\\n" % i) == 1:
                print("compat native cancelled after %d, cancelled=%s"
                      % (i - 1, task.cancelled))
                task.respond(1, "cancelled")
                break
        else:
            was = task.cancelled
            task.respond(0)
            print("compat native done cancelled=%s then %s" % (was, task.cancelled))

def cffi_loop(tq):
    # lua-resty-ffi style: the core's C functions through cffi
    queue = ffi.cast("void *", tq)
    length = ffi.new("int *")
    while (task := C.ngx_http_lua_ffi_task_poll(queue)) != ffi.NULL:
        req = ffi.string(C.ngx_http_lua_ffi_get_req(task, length), length[0])
        n = int(req.split(b":")[1])
        for i in range(1, n + 1):
            time.sleep(0.002)
            chunk = b"%08d\\n" % i
            if C.resty_ffi_respond_chunk(task, chunk, len(chunk)) == 1:
                print("compat cffi cancelled after %d, task_cancelled=%d"
                      % (i - 1, C.resty_ffi_task_cancelled(task)))
                break
        C.ngx_http_lua_ffi_respond(task, 0, ffi.NULL, 0)

def init(cfg, tq):
    target = native if resty_ffi.cfg_string(cfg) == "native" else cffi_loop
    threading.Thread(target=target, args=(tq,), daemon=True).start()
    return 0
'''


@pytest.mark.parametrize("kind", ["native", "cffi"])
def test_compat_runtimes_stream_through_the_native_module_and_cffi(
        nginx, pystage, moddir, kind):  # noqa: F811
    write_module(moddir, "pycompat", COMPAT)
    n = nginx(STREAM)
    n.cfgs = {"c": moddir + "/pycompat,init," + kind}
    _, body, stamps = n.get_as_it_comes(stream_path(n, "c", "n:100"))
    got = [l for l in body.decode().split("\n") if re.match(r"^\d{8}$", l)]
    assert [int(l) for l in got] == list(range(1, 101)), body[-300:]
    assert len({lines for _, lines in stamps}) > 5, "chunks were not flushed one by one"
    if kind == "native":
        assert harness.wait_until(
            lambda: "compat native done cancelled=False then True" in n.error_log(), 3)
    # a plain call gets them joined
    assert n.post("/call?cfg=" + q(n.cfgs["c"]), b"n:3") == (
        200, b"00000001\n00000002\n00000003\n")
    hang_up_after(n.port, stream_path(n, "c", "n:100000"), lines=3)
    pat = r"compat %s cancelled after (\d+), \w+=(True|1)" % kind
    assert harness.wait_until(lambda: re.search(pat, n.error_log()), 5), n.error_log()[-1500:]
    assert int(re.search(pat, n.error_log()).group(1)) < 1000
    assert waiting_is_zero(n)


def sse_server(pystage):  # noqa: F811
    with open(pystage.examples + "/nginx.conf") as f:
        server = f.read().replace("/opt/resty-ffi/examples/python", pystage.examples)
    return server.replace("/var/cache/resty-ffi/venv", VENV) + STREAM


def test_the_sse_example_relays_tokens_as_made_and_stops_when_the_client_leaves(
        nginx, pystage):  # noqa: F811
    n = nginx(sse_server(pystage))
    r, buf, stamps = n.get_as_it_comes("/python/sse?prompt=hi%20there",
                                       count=lambda b: b.count(b"\n\n"))
    assert r.status == 200
    assert r.getheader("Content-Type") == "text/event-stream"
    events = buf.decode().split("\n\n")
    assert events[0] == 'event: start\ndata: {"prompt": "hi there"}', events[:2]
    tokens = [json.loads(e[len("data: "):])["token"] for e in events if e.startswith("data: ")]
    assert "".join(tokens).startswith("resty-ffi relays every token"), tokens
    assert events[-2:] == ["event: done\ndata: {}", ""], events[-3:]
    # one token each 50 ms: spread over time, not in one piece
    t_first = next(t for t, e in stamps if e >= 2)
    t_last = next(t for t, e in stamps if e >= len(tokens) + 1)
    assert t_last - t_first > 0.04 * (len(tokens) - 1), (t_first, t_last)
    assert len({e for _, e in stamps}) > len(tokens) / 2, "tokens were not flushed one by one"
    # a client that leaves: the generator stops (CancelledError) at once
    gone = hang_up_after(n.port, "/python/sse?prompt=bye", lines=6)
    pat = r"sse: the client left after (\d+) tokens; generation stopped"
    assert harness.wait_until(lambda: re.search(pat, n.error_log()), 3), n.error_log()[-2000:]
    assert time.time() - gone < 0.5  # (logged through the dispatcher, polled)
    assert int(re.search(pat, n.error_log()).group(1)) < len(tokens)
    assert waiting_is_zero(n)
