"""Streaming answers from Java (libffi_java.so) against a real nginx and a
real JVM: handler-style runtimes answering with an Iterator<byte[]>, a
Stream<byte[]> or a Flow.Publisher<byte[]> (also as a CompletionStage's
value), and a compat runtime on Task.chunk / Task.cancelled
(tests/java/t/Streaming.java: requests are "n:size:ms[:failAt]", chunk i
starts with i as 8 digits)."""

import concurrent.futures
import re
import socket
import time

import pytest

import harness
from harness import q
from test_java import JDK25, jdk25, jstage  # noqa: F401 (jstage is a fixture)

STREAM = harness.stream_location("ffi_java", "/jstream")

SHAPES = ["t.Streaming,iter", "t.Streaming,stream", "t.Streaming,publisher",
          "t.Streaming,stageIter", "t.Streaming,stageStream", "t.Streaming,stagePublisher",
          "t.Streaming,compat"]
IDS = ["iterator", "stream", "publisher", "stage-iterator", "stage-stream", "stage-publisher",
       "compat"]


@pytest.fixture
def js_nginx(nginx, jstage):  # noqa: F811 (the fixture imported above)
    def start(java_opts=None, java_home=None, classpath=None, **kw):
        main = "env CLASSPATH=%s;\n" % (classpath or jstage.java_classpath)
        if java_opts:
            main += "env \"JAVA_OPTS=%s\";\n" % java_opts
        if java_home:
            main += "env JAVA_HOME=%s;\n" % java_home
        return nginx(harness.loader_locations("ffi_java") + STREAM, main=main,
                     log_level="notice", **kw)
    return start


def path(cfg, req, **args):
    """/jstream's path: each chunk written with a newline after it."""
    p = "/jstream?cfg=%s&req=%s&nl=1" % (q(cfg), q(req))
    for k, v in args.items():
        p += "&%s=%s" % (k, v)
    return p


def lines_of(n, cfg, req, **args):
    status, body = n.get(path(cfg, req, **args), timeout=60)
    assert status == 200, body
    return body.decode().split("\n")


def numbered(lines):
    return [l for l in lines if re.match(r"^\d{8}", l)]


def expected(n, size):
    return [("%08d" % i + chr(97 + i % 26) * size)[:size] for i in range(1, n + 1)]


@pytest.mark.parametrize("cfg", SHAPES, ids=IDS)
def test_each_shape_streams_its_chunks_in_order_and_a_plain_call_gets_them_joined(js_nginx, cfg):
    # -Xcheck:jni: the JVM checks every JNI call of the chunk natives
    n = js_nginx(java_opts="-Xcheck:jni")
    # first (the runtime's window is set when it is loaded): a small window,
    # so the producer waits for room over and over
    lines = lines_of(n, cfg, "200:100:0", wb=300, wc=2)
    assert numbered(lines) == expected(200, 100) and lines[-1] == "END ok", lines[-3:]
    lines = lines_of(n, cfg, "300:40:0")
    assert numbered(lines) == expected(300, 40), (lines[:5], n.error_log()[-2000:])
    assert lines[-1] == "END ok", lines[-3:]
    # a plain call to the same runtime: every chunk (and compat's final
    # answer) joined into one answer
    status, body = n.post("/call?cfg=" + q(cfg), b"10:12:0")
    tail = b"end" if cfg.endswith("compat") else b""
    assert (status, body) == (200, "".join(expected(10, 12)).encode() + tail), body
    assert "WARNING in native method" not in n.error_log(), n.error_log()[-3000:]


@pytest.mark.parametrize("cfg", SHAPES[:3] + SHAPES[-1:], ids=IDS[:3] + IDS[-1:])
def test_chunks_arrive_as_they_are_produced(js_nginx, cfg):
    n = js_nginx()
    lines_of(n, cfg, "1:8:0")    # the JVM and the class are loaded
    _, buf, stamps = n.get_as_it_comes(
        path(cfg, "20:16:50"), count=lambda b: len(numbered(b.decode().split("\n"))),
        timeout=20)
    assert numbered(buf.decode().split("\n")) == expected(20, 16)
    first = next(t for t, k in stamps if k >= 1)
    last = next(t for t, k in stamps if k >= 20)
    # 20 chunks 50 ms apart: the first at once, the last ~0.95 s later (a
    # buffered answer would arrive all at once)
    assert first < 0.4, stamps[:5]
    assert last - first > 0.8, (first, last)
    assert len({k for _, k in stamps}) > 10, "chunks were not sent one by one"


@pytest.mark.parametrize("cfg", SHAPES, ids=IDS)
def test_an_exception_mid_stream_reaches_recv_after_the_chunks_before_it(js_nginx, cfg):
    n = js_nginx()
    lines = lines_of(n, cfg, "5:16:0:4")
    assert numbered(lines) == expected(3, 16), lines
    assert lines[-1] == "END err=java.lang.IllegalStateException: source broke at 4 rc=1", lines[-2:]
    if not cfg.endswith("compat"):
        # the handler style logs the stack trace, as for any handler error
        assert harness.wait_until(lambda: "handler threw java.lang.IllegalStateException: "
                                          "source broke at 4" in n.error_log(), 5)
    # an element that is no byte[] ends the stream the same way
    lines = lines_of(n, "t.Streaming,wrongType", "")
    assert lines[0] == "ok;" and lines[-1] == (
        "END err=java.lang.ClassCastException: resty.ffi: a stream element must be byte[], "
        "got java.lang.String rc=1"), lines


def read_some_then_hang_up(port, p, want=3):
    def enough(buf):
        return len(numbered(buf.decode(errors="replace").split("\n"))) >= want
    buf, t = harness.hang_up_when(port, p, enough)
    assert enough(buf), buf
    return t


@pytest.mark.parametrize("cfg,marker", [
    ("t.Streaming,iter", r"java iter interrupted after (\d+)"),
    ("t.Streaming,stream", r"java stream closed after (\d+) of 100"),
    ("t.Streaming,publisher", r"java publisher cancelled after (\d+)"),
    ("t.Streaming,stageStream", r"java stream closed after (\d+) of 100"),
    ("t.Streaming,compat", r"java compat cancelled after (\d+)"),
], ids=["iterator", "stream", "publisher", "stage-stream", "compat"])
def test_a_client_that_disconnects_stops_a_slow_source_at_once(js_nginx, cfg, marker):
    n = js_nginx()
    lines_of(n, cfg, "1:8:0")
    # 100 chunks 1 s apart: the source sleeps when the client leaves, so
    # only the cancellation (not the next chunk) can stop it in time
    gone = read_some_then_hang_up(n.port, path(cfg, "100:16:1000"), want=2)
    assert harness.wait_until(lambda: re.search(marker, n.error_log()), 5, step=0.01), \
        n.error_log()[-3000:]
    took = time.time() - gone
    print("%s stopped %.0f ms after the client left" % (cfg, took * 1000))
    assert took < 0.5, took
    assert int(re.search(marker, n.error_log()).group(1)) <= 3
    # and the loader ended the task: nothing is left waiting
    assert harness.wait_until(lambda: n.get("/plain") == (200, b"plain"), 5)


@pytest.mark.parametrize("cfg", ["t.Streaming,sameIter", "t.Streaming,samePublisher"],
                         ids=["iterator", "publisher"])
def test_memory_stays_bounded_by_the_window_when_the_reader_pauses(js_nginx, cfg):
    n = js_nginx()
    lines_of(n, cfg, "200:65536:0", sizes=1)   # warm: classes, JIT, buffers
    [pid] = n.worker_pids()
    produced = []

    def mid_pause():
        # the producer was held back by the window (1 MiB: 16 chunks of 64
        # KiB; plus the one waiting, or the 16 a Publisher is asked for
        # ahead), not run to the end
        time.sleep(0.7)
        produced.append(int(n.post("/call?cfg=t.Streaming,produced", b"")[1]))

    # 1600 chunks of 64 KiB = 100 MiB; the reader pauses 1 s first
    (status, body), growth_mib = harness.rss_growth_while(pid, lambda: n.get(
        path(cfg, "1600:65536:0", pause=1, sizes=1), timeout=120), meanwhile=mid_pause)
    assert status == 200
    sizes = body.decode().split("\n")[0].rstrip(",").split(",")
    assert len(sizes) == 1600 and set(sizes) == {"65536"}, body[-200:]
    assert 16 <= produced[0] <= 40, produced
    print("%s: %d chunks produced during the pause, worker grew %.1f MiB"
          % (cfg, produced[0], growth_mib))
    assert growth_mib < 30, growth_mib


@pytest.mark.parametrize("cfg,java_opts,java_home", [
    ("t.Streaming,sameIter", None, None),
    ("t.Streaming,samePublisher", "-Dresty.ffi.threads=2", None),
    ("t.Streaming,sameIter", "-Dresty.ffi.executor=virtual -Dresty.ffi.threads=2", JDK25),
], ids=["iterator-pollers", "publisher-2-threads", "iterator-virtual-temurin-25"])
def test_streams_held_back_by_slow_readers_leave_plain_calls_served(
        js_nginx, cfg, java_opts, java_home):
    n = js_nginx(java_opts=java_opts, java_home=jdk25() if java_home else None)
    lines_of(n, cfg, "3:8:0")
    # 8 streams whose readers sit still for 3 s: each producer is at a full
    # window (a poller blocked in the core, or a parked virtual thread, or
    # a Publisher asked for nothing)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        streams = [pool.submit(n.get, path(cfg, "400:65536:0", pause=3, sizes=1), timeout=60)
                   for _ in range(8)]
        time.sleep(1)
        for i in range(20):
            t0 = time.time()
            status, body = n.post("/call?cfg=" + q(cfg), b"2:8:0")
            assert (status, body[:8]) == (200, b"%08d" % 1), body
            assert time.time() - t0 < 1, (i, time.time() - t0)
        assert all(not f.done() for f in streams), "the readers still pause"
        for f in streams:
            status, body = f.result()
            assert status == 200 and body.decode().count(",") == 400, body[-200:]
    assert "exited on signal" not in n.error_log()


def test_a_runtime_calling_resty_ffi_respond_chunk_itself_streams(js_nginx, jstage):  # noqa: F811
    # as lua-resty-ffi's jnr-ffi runtimes would: the core's symbols are
    # global, found here with dlsym through the JDK's FFM API (JDK 22+)
    n = js_nginx(java_home=jdk25(), java_opts="--enable-native-access=ALL-UNNAMED",
                 classpath=jstage.java_classpath + ":" + jstage.java_ffm)
    lines = lines_of(n, "ffm.Echo,init", "chunks:one,two,three")
    assert lines == ["one", "two", "three", "ffm: end", "", "END ok"], \
        (lines, n.error_log()[-2000:])
    assert n.post("/call?cfg=" + q("ffm.Echo,init"), b"chunks:a,b") == (200, b"abffm: end")


def test_300_abandoned_streams_close_their_sources_and_leak_nothing(js_nginx):
    n = js_nginx()
    lines_of(n, "t.Streaming,stream", "3:8:0")
    [pid] = n.worker_pids()
    threads0 = len(harness.thread_names(pid))

    def one(i):
        read_some_then_hang_up(n.port, path("t.Streaming,stream", "100000:256:1"), want=2)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(50)))
    rss_warm = harness.rss_kib(pid)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(250)))
    # every source was closed (its onClose ran) ...
    # (identical lines are collapsed by the core's log limit: count repeats)
    assert harness.wait_until(
        lambda: harness.logged(n.error_log(), "java stream closed after") == 301, 20), \
        harness.logged(n.error_log(), "java stream closed after")
    assert "of 100000" in n.error_log() and "closed after 100000" not in n.error_log()
    # ... and the pollers that pulled them went back or ended
    assert harness.wait_until(lambda: len(harness.thread_names(pid)) <= threads0 + 4, 10), \
        (threads0, harness.thread_names(pid))
    growth_mib = (harness.rss_kib(pid) - rss_warm) / 1024
    # the JVM's young generation grows toward its cap (-Xmx256m) as garbage
    # accrues (20-50 MiB seen); leaking each stream's unread window (up to
    # 1 MiB) would be ~250 MiB
    assert growth_mib < 100, growth_mib
    assert n.worker_pids() == [pid]


def test_quit_is_prompt_with_java_streams_open(js_nginx):
    n = js_nginx()
    lines_of(n, "t.Streaming,publisher", "1:8:0")
    socks = []
    for cfg in ("t.Streaming,iter", "t.Streaming,stream", "t.Streaming,publisher"):
        s = socket.create_connection(("127.0.0.1", n.port), timeout=10)
        s.sendall(b"GET " + path(cfg, "100000:16:50").encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        buf = b""
        while len(numbered(buf.decode(errors="replace").split("\n"))) < 2:
            buf += s.recv(4096)
        socks.append(s)
    took = n.quit(timeout=20)
    for s in socks:
        s.close()
    assert took < 3, took
    assert "exited on signal" not in n.error_log()
