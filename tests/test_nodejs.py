"""The Node.js loader (libffi_nodejs.so) against a real nginx and a real
Node, with workers running as `nobody`: on the host, Debian 12's libnode108
(Node 18: from dpkg, or unpacked by ci/setup-nodejs.sh into its private
prefix); with RESTY_FFI_DEBIAN=13, inside a Debian 13 root (harness.py) with
its libnode115 (Node 20) and the package built for it.

Runtimes under test: lua-resty-ffi's demo/echo.js unchanged (compat style:
a worker_thread polls, the main thread answers; examples/nodejs/demo),
handler-style modules in tests/nodejs, and an npm package (escape-html,
installed by ci/setup-nodejs.sh) required from a folder on NODE_PATH.
Everything is staged into the world-readable stage folder (the npm
packages too: a Debian root sees the host's /tmp, not /var/cache); nginx
passes NODE_PATH with `env`.
"""

import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

import harness
from harness import call, par, q, unload  # clients of harness.LOADER_LOCATIONS

SERVER = harness.loader_locations("ffi_nodejs") + r"""
location /stream {
    content_by_lua_block {
        local args = ngx.req.get_uri_args()
        local rt, err = require("resty.ffi").load("ffi_nodejs", args.cfg,
            { stream_window_bytes = tonumber(args.wb) })
        if not rt then
            ngx.status = 500
            return ngx.print("load failed: ", err)
        end
        local st, err = rt:__stream(args.req)
        if not st then
            ngx.status = 500
            return ngx.print("stream failed: ", err)
        end
        if args.pause then
            ngx.sleep(tonumber(args.pause))
        end
        local n, max = 0, tonumber(args.max)
        while true do
            local chunk, err, rc = st:recv()
            if not chunk then
                ngx.print(err and ("END err=" .. err .. " rc=" .. tostring(rc)) or "END ok")
                break
            end
            n = n + 1
            ngx.print(args.sizes and #chunk or chunk, "|")
            if max and n >= max then
                ngx.print("CLOSE")
                break
            end
        end
        st:close()
    }
}
location /global {
    content_by_lua_block {
        require "resty_ffi"
        -- lua-resty-ffi's own README line
        local demo = ngx.load_ffi("ffi_nodejs", "demo/echo,init", {is_global=true})
        local ok, res = demo:echo("hello")
        assert(ok)
        assert(res == "hello")
        ngx.print(res)
    }
}
"""

NODE_MODULES = os.environ.get("RESTY_FFI_NODE_MODULES", "/var/cache/resty-ffi/node")


@pytest.fixture(scope="session")
def nstage(stage):
    """The stage plus js/ (tests/nodejs) and hot/ (for reload tests)."""
    subprocess.run(["bash", os.path.join(harness.ROOT, "ci", "setup-nodejs.sh")], check=True)
    stage.js = stage.add_tree(os.path.join(harness.ROOT, "tests", "nodejs"), "js")
    # lua-resty-ffi's demo/echo.js: the example's copy, as NODE_PATH's demo/
    stage.add_tree(os.path.join(harness.ROOT, "examples", "nodejs", "demo"), "js/demo")
    stage.js_hot = os.path.join(stage.dir, "hot")
    os.makedirs(stage.js_hot, exist_ok=True)
    stage.node_modules = stage.add_tree(os.path.join(NODE_MODULES, "node_modules"),
                                        "node_modules")
    stage.node_path = ":".join([stage.js, stage.js_hot, stage.node_modules])
    stage.world_readable()
    return stage


@pytest.fixture
def n_nginx(nginx, nstage):
    def start(env=None, main="", extra="", **kw):
        lines = "env NODE_PATH=%s;\n" % nstage.node_path
        for k, v in (env or {}).items():
            lines += "env %s=%s;\n" % (k, v)
        return nginx(SERVER + extra, main=lines + main, **kw)
    return start


def lines_at(log, level, text):
    """error.log lines at nginx level `level` that contain `text`."""
    return [ln for ln in log.splitlines() if "[%s]" % level in ln and text in ln]


# ---- both styles --------------------------------------------------------

def test_lua_resty_ffi_demo_echo_runs_unchanged_and_unload_ends_its_worker_thread(n_nginx):
    n = n_nginx()
    assert call(n, "demo/echo,init", b"hello") == (200, b"hello")
    assert n.get("/global") == (200, b"hello")
    good, _ = par(n, "demo/echo,init", 50, "m", "m")
    assert good == 50
    unload(n, "demo/echo,init")
    # the worker_thread's console.log reaches error.log through the main
    # thread's process.stdout
    assert harness.wait_until(
        lambda: lines_at(n.error_log(), "notice", "ffi_nodejs: exit ffi nodejs echo runtime"),
        5), n.error_log()[-2000:]


def test_handler_style_answers_bytes_strings_and_nil(n_nginx):
    n = n_nginx()
    binary = bytes(range(256)) * 4
    assert call(n, "handler,echo", binary) == (200, binary)
    assert call(n, "handler,upper,cfg: ", b"abc") == (200, b"cfg: ABC")
    assert call(n, "handler,kind", b"") == (200, b"buffer:0")
    assert call(n, "handler,kind", nil=True) == (200, b"null")
    assert call(n, "handler,nil", b"x") == (200, b"<nil>")
    assert call(n, "handler,bytes", b"x") == (200, bytes([0, 1, 2, 255]))
    big = os.urandom(300 * 1024)
    assert call(n, "handler,echo", big) == (200, big)


def test_async_init_and_es_modules_load(n_nginx):
    n = n_nginx()
    assert call(n, "inits,later", b"x") == (200, b"async init: x")
    assert call(n, "./esm.mjs,handler,c", b"x") == (200, b"esm c: x")


def test_100_concurrent_calls_to_an_async_handler_awaiting_1s_finish_in_about_1s(n_nginx):
    n = n_nginx()
    cfg = "handler,later,1000"
    assert call(n, cfg, b"warm") == (200, b"late:warm")
    good, elapsed = par(n, cfg, 100, "r", "late:r")
    assert good == 100
    # all in flight at once on Node's one thread: ~1 s, not 100 s
    assert elapsed < 3.0, elapsed


def test_a_handler_taking_a_signal_sees_it_aborted_when_its_call_is_given_up_and_its_answer_reaches_nobody(
        n_nginx):
    """A handler declared `(req, signal)` gets an AbortSignal that is
    aborted when its call is given up (its timeout, its client gone), at
    once: a timers/promises sleep of an hour rejects with AbortError. The
    call is answered then (to nobody), even when the handler ignores the
    signal and never settles; other calls get their own answers, and
    nothing is logged for it."""
    n = n_nginx(extra=harness.abandon_locations("ffi_nodejs"), shutdown_timeout="60s")
    cfg = "handler,abortable"
    assert call(n, cfg, b"seen") == (200, b"0")

    # the signal is aborted at once on the call's timeout, not in an hour
    harness.calls_given_up_reach_nobody(n, cfg, (b"wait", b"ignore"), (b"1", None, b"3"))
    assert call(n, "handler,echo", b"e") == (200, b"e")
    # a handler with one parameter gets no signal
    assert call(n, "handler,arity", b"x") == (200, b"undefined")
    log = n.error_log()
    assert "AbortError" not in log and "handler failed" not in log, log[-3000:]
    assert n.quit() < 5


def test_throws_and_rejections_answer_rc_1_log_the_stack_and_the_runtime_goes_on(n_nginx):
    n = n_nginx()
    pid = None
    for cfg, want in (("handler,throws", b"rc=1 err=TypeError: bad request: boom"),
                      ("handler,rejects", b"rc=1 err=RangeError: rejected: boom")):
        assert call(n, cfg, b"boom") == (502, want)
    log = n.error_log()
    assert lines_at(log, "error", "handler.throws: handler failed: TypeError: bad request"), log
    assert re.search(r"at .*handler\.js:\d+", log), log
    assert lines_at(log, "error", "handler.rejects: handler failed: RangeError"), log
    assert call(n, "handler,number", b"x") == (
        502, b"rc=1 err=the answer is a number (42): answer a string, a Buffer "
             b"(or any TypedArray / ArrayBuffer), or null")
    pid = n.worker_pids()
    # an exception nobody catches and a rejection nobody handles are logged,
    # and the worker (Node) goes on
    assert call(n, "handler,stray", b"s1") == (200, b"ok")
    assert harness.wait_until(lambda: lines_at(
        n.error_log(), "error", "uncaught exception (uncaughtException); the runtime goes on: "
                                "Error: stray exception s1"), 5), n.error_log()[-2000:]
    assert harness.wait_until(lambda: lines_at(
        n.error_log(), "error", "unhandled Promise rejection; the runtime goes on: "
                                "Error: stray rejection s1"), 5), n.error_log()[-2000:]
    assert call(n, "handler,echo", b"still") == (200, b"still")
    assert n.worker_pids() == pid


def test_console_and_warnings_are_written_by_nginx_at_their_level(n_nginx):
    n = n_nginx(log_level="debug")
    assert call(n, "handler,console", b"t1") == (200, b"logged")

    def logged():
        log = n.error_log()
        return all(lines_at(log, level, "ffi_nodejs: " + text) for level, text in (
            ("notice", "log t1"), ("info", "info t1"), ("warn", "warn t1"),
            ("error", "error t1"), ("warn", "Warning: warning t1"),
            ("notice", "worker t1")))
    assert harness.wait_until(logged, 5), n.error_log()[-3000:]


def test_question_mark_reloads_a_changed_module_after_unload(n_nginx, nstage):
    path = os.path.join(nstage.js_hot, "hot.js")

    def write(version):
        with open(path, "w") as f:
            f.write("exports.make = () => () => 'v%d';\n" % version)
        os.chmod(path, 0o644)
    write(1)
    n = n_nginx()
    assert call(n, "hot,make", b"") == (200, b"v1")
    unload(n, "hot,make")
    write(2)
    # without '?' the module Node loaded before is kept
    assert call(n, "hot,make", b"") == (200, b"v1")
    unload(n, "hot,make")
    assert call(n, "hot?,make", b"") == (200, b"v2")


def test_the_worker_runs_the_releases_node(n_nginx, nstage):
    """Node 18 (libnode108) on Debian 12, Node 20 (libnode115) on Debian 13:
    the loader the package ships for a release opens that release's
    libnode."""
    n = n_nginx()
    status, body = call(n, "handler,versions", b"")
    assert status == 200, body
    version, modules = body.decode().split()
    assert int(version.split(".")[0]) == harness.TARGET["node"], version
    assert "libnode" + modules == harness.TARGET["libnode"], modules
    [pid] = n.worker_pids()
    with open("/proc/%d/maps" % pid) as f:
        libnode = {ln.split()[-1] for ln in f if "/libnode.so." in ln}
    assert [os.path.basename(p) for p in libnode] == ["libnode.so." + modules], libnode
    if nstage.root:
        # the root's own library, not the host's
        assert all(p.startswith(nstage.root.dir + "/") for p in libnode), libnode


def test_npm_package_from_a_folder_on_node_path(n_nginx):
    n = n_nginx()
    assert call(n, "handler,escape", b"<a href=\"x\">&</a>") == (
        200, b"&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;")


# ---- streaming ----------------------------------------------------------

def stream(n, cfg, req, **args):
    path = "/stream?cfg=%s&req=%s" % (q(cfg), q(req))
    path += "".join("&%s=%s" % kv for kv in args.items())
    status, body = n.get(path, timeout=60)
    assert status == 200, body
    return body.decode().split("|")


def test_async_generators_and_generators_stream_each_value_as_a_chunk(n_nginx):
    n = n_nginx()
    got = stream(n, "streams,chunks,300,40", "x")
    assert got[-1] == "END ok", got[-3:]
    chunks = [c for c in got[:-1] if c]
    assert [int(c[:8]) for c in chunks] == list(range(1, 301))
    assert all(len(c) == 40 for c in chunks)
    assert stream(n, "streams,gen", "mid") == ["a:", "mid", ":z", "END ok"]
    assert stream(n, "streams,later", "x") == ["later:", "x", "END ok"]
    # a plain call gets the chunks joined into one answer
    assert call(n, "streams,gen", b"mid") == (200, b"a:mid:z")


def test_a_full_window_makes_the_producer_wait_and_nothing_is_lost(n_nginx):
    n = n_nginx()
    # 200 chunks of 16 KiB through a 64 KiB window, read after a pause
    got = stream(n, "streams,chunks,200,16384", "y", wb=65536, pause="0.3", sizes=1)
    assert got[-1] == "END ok", got[-3:]
    assert [c for c in got[:-1] if c] == ["16384"] * 200


def test_closing_a_stream_stops_the_generator_and_runs_its_finally(n_nginx):
    n = n_nginx()
    before = int(call(n, "streams,closed", b"")[1])
    got = stream(n, "streams,forever", "", max=3)
    assert got[:3] == ["tick0;", "tick1;", "tick2;"] and got[-1] == "CLOSE", got
    assert harness.wait_until(
        lambda: int(call(n, "streams,closed", b"")[1]) == before + 1, 5)
    assert call(n, "handler,echo", b"on") == (200, b"on")


def test_a_stream_that_throws_or_yields_no_bytes_ends_with_rc_1(n_nginx):
    n = n_nginx()
    got = stream(n, "streams,fails", "")
    assert got[:2] == ["one;", "two;"] and got[-1] == "END err=Error: stream broke rc=1", got
    assert lines_at(n.error_log(), "error", "streams.fails: handler failed: Error: stream broke")
    got = stream(n, "streams,wrong", "")
    assert got[0] == "ok;" and "a stream yielded a number (42)" in got[-1], got


# ---- load errors --------------------------------------------------------

def test_load_errors_say_what_to_do_and_nginx_keeps_serving(n_nginx):
    n = n_nginx()
    cases = [
        ("nope,init", 5, "cannot find module 'nope' (NODE_PATH: "),
        ("nope,init", 5, "put it in a folder on NODE_PATH"),
        ("broken,init", 5, "loading module 'broken' ("),
        ("broken,init", 5, "SyntaxError"),
        ("handler,missing", 6, "has no function 'missing' (it exports: echo, upper"),
        ("inits,value", 6, "has no function 'value' (it is a number (7), not a function)"),
        ("inits,throws", 7, "inits.throws(cfg, tq) threw Error: no configuration given"),
        ("inits,undef", 8, "inits.undef(cfg, tq) returned undefined: return 0 once"),
        ("inits,rc", 3, "inits.rc(cfg, tq) returned 3"),
        ("handler", 2, "bad cfg 'handler': no function name"),
    ]
    for cfg, rc, text in cases:
        harness.load_fails(n, cfg, rc, text)
    assert n.get("/plain") == (200, b"plain")
    assert call(n, "handler,echo", b"fine") == (200, b"fine")


def test_without_libnode_the_load_fails_saying_what_to_install(n_nginx):
    n = n_nginx(env={"RESTY_FFI_LIBNODE": "/nonexistent/libnode.so.108"})
    status, body = call(n, "handler,echo", b"x")
    assert status == 500, body
    text = body.decode()
    assert "/nonexistent/libnode.so.108 (RESTY_FFI_LIBNODE): no such file" in text, text
    install = "apt install " + harness.TARGET["libnode"]
    assert install in text, text
    # remembered: every later load says the same, and nginx serves on
    status, body = call(n, "demo/echo,init", b"x")
    assert status == 500 and install.encode() in body, body
    assert n.get("/plain") == (200, b"plain")


# ---- the worker process -------------------------------------------------

def worker_threads_signal_masks(pid):
    """{thread name: SigBlk mask} of every thread of `pid`."""
    out = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
                st = dict(ln.split(":\t", 1) for ln in f.read().splitlines() if ":\t" in ln)
        except OSError:
            continue
        out.setdefault(st["Name"].strip(), []).append(int(st["SigBlk"], 16))
    return out


def test_node_threads_block_signals_and_usr1_to_the_worker_still_reopens_logs(n_nginx):
    n = n_nginx()
    assert call(n, "handler,echo", b"x") == (200, b"x")
    [pid] = n.worker_pids()
    masks = worker_threads_signal_masks(pid)
    usr1, term, hup = 1 << (10 - 1), 1 << (15 - 1), 1 << (1 - 1)
    node_threads = {k: v for k, v in masks.items() if k != "nginx"}
    assert "node" in node_threads, masks
    for name, ms in node_threads.items():
        for m in ms:
            if name.startswith("resty") or name.startswith("ffi"):
                continue    # the core's own threads
            assert m & usr1 and m & term and m & hup, (name, hex(m))
    # USR1 straight to the worker: nginx reopens its logs (Node's default
    # would start its inspector on 127.0.0.1:9229). The worker (nobody)
    # creates the new file itself: the folder must let it.
    log = os.path.join(n.prefix, "logs", "error.log")
    os.chmod(os.path.dirname(log), 0o777)
    os.rename(log, log + ".1")
    os.kill(pid, signal.SIGUSR1)
    time.sleep(0.3)
    assert call(n, "handler,console", b"after-usr1") == (200, b"logged")
    assert harness.wait_until(
        lambda: os.path.exists(log) and "log after-usr1" in open(log).read(), 5)
    assert n.worker_pids() == [pid]
    assert call(n, "handler,inspector", b"") == (200, b"none")
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", 9229)) != 0, "Node's inspector is listening"
    with open(log + ".1") as f:
        old = f.read()
    assert "%d#%d: reopening logs" % (pid, pid) in old, old[-2000:]
    assert "Debugger listening" not in old + open(log).read()


def test_reload_and_quit_stay_prompt_with_node_loaded(n_nginx):
    n = n_nginx(workers=2)
    cfg = "handler,later,300"
    old = n.worker_pids()
    before = [harness.rss_kib(p) for p in old]
    for _ in range(6):
        assert call(n, cfg, b"w") == (200, b"late:w")
    after = [harness.rss_kib(p) for p in old]
    print("worker RSS (KiB) before / with Node loaded:", before, after)
    # Node 18 / 20 with a small handler: about 50 MiB more per worker
    assert max(after) - min(before) < 150 * 1024, (before, after)
    assert n.worker_pids() == old
    n.reload()
    assert harness.wait_until(lambda: not set(n.worker_pids()) & set(old), 5), \
        (old, n.worker_pids())
    assert call(n, cfg, b"after") == (200, b"late:after")
    n.signal(signal.SIGUSR1)    # nginx -s reopen
    assert call(n, "handler,echo", b"reopen") == (200, b"reopen")
    results = []
    t = threading.Thread(target=lambda: results.append(call(n, cfg, b"inflight")))
    t.start()
    time.sleep(0.1)
    took = n.quit()
    t.join(10)
    assert results == [(200, b"late:inflight")]
    assert took < 5, took
    assert n.proc.returncode == 0
    assert "exited on signal" not in n.error_log(), n.error_log()[-3000:]


def test_loading_in_init_worker_starts_node_before_requests(n_nginx):
    n = n_nginx(http="""
        init_worker_by_lua_block {
            require "resty_ffi"
            local rt, err = ngx.load_ffi("ffi_nodejs", "handler,upper,early: ")
            if not rt then
                ngx.log(ngx.ERR, "init_worker load failed: ", err)
            end
        }
    """)
    assert harness.wait_until(lambda: n.worker_pids(), 5)
    pid = n.worker_pids()[0]
    assert harness.wait_until(lambda: "node" in harness.thread_names(pid), 10)
    t0 = time.time()
    assert call(n, "handler,upper,early: ", b"x") == (200, b"early: X")
    assert time.time() - t0 < 0.5
    assert "init_worker load failed" not in n.error_log()


def test_two_workers_each_start_their_own_node(n_nginx):
    n = n_nginx(workers=2)
    pids = set(n.worker_pids())
    assert len(pids) == 2
    seen = set()
    lock = threading.Lock()

    def ask():
        for _ in range(20):
            status, body = call(n, "handler,pid", b"")
            assert status == 200, body
            with lock:
                seen.add(int(body))
    deadline = time.time() + 30
    while seen != pids and time.time() < deadline:
        threads = [threading.Thread(target=ask) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    # process.pid in Node is the nginx worker's own pid
    assert seen == pids, (seen, pids)
    for pid in pids:
        assert "node" in harness.thread_names(pid)


def test_process_exit_ends_only_that_worker_and_nginx_starts_a_new_one(n_nginx):
    n = n_nginx()
    assert call(n, "handler,echo", b"x") == (200, b"x")
    old = n.worker_pids()
    try:
        status, _ = call(n, "handler,exit", b"3")
        assert status != 200
    except OSError:
        pass    # the connection dies with the worker
    assert harness.wait_until(lambda: n.worker_pids() and n.worker_pids() != old, 5)
    log = n.error_log()
    assert "process.exit() called in Node: this nginx worker exits with code 3" in log, log
    assert "exited with code 3" in log, log
    # the new worker starts its own Node on its first call
    assert call(n, "handler,echo", b"again") == (200, b"again")
    # exit code 2 would stop nginx from starting a new worker: it becomes 1
    old = n.worker_pids()
    try:
        call(n, "handler,exit", b"2")
    except OSError:
        pass
    assert harness.wait_until(lambda: n.worker_pids() and n.worker_pids() != old, 5)
    assert "exited with code 1" in n.error_log()
    assert call(n, "handler,echo", b"third") == (200, b"third")


def test_example_nginx_conf_serves_every_node_example(nginx, nstage):
    ex = nstage.add_tree(os.path.join(harness.ROOT, "examples", "nodejs"), "nodejs-examples")
    with open(os.path.join(ex, "nginx.conf")) as f:
        server = f.read()
    node_path = "%s:%s" % (ex, nstage.node_modules)
    n = nginx(server, main="env NODE_PATH=%s;" % node_path)
    assert n.post("/node/echo", b"hi") == (200, b"hi")
    assert n.post("/node/escape", b"<b>&") == (200, b"&lt;b&gt;&amp;")
    assert n.post("/node/slow", b"x") == (200, b"waited: x")
