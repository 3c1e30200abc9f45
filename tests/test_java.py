"""The Java loader (libffi_java.so) against a real nginx and a real JVM
(the release's default OpenJDK: 17 on Debian 12, 21 on Debian 13; and
Temurin 25), with workers running as `nobody`.

Runtimes under test: the examples in examples/java (built with Maven: a
jnr-ffi echo written as lua-resty-ffi's are, the handler-style echo,
Markdown rendering with commonmark-java) and small classes in tests/java,
compiled with javac against the loader's API sources. Everything is staged into the
world-readable stage folder and put on CLASSPATH with nginx's `env`.
"""

import os
import re
import shutil
import signal
import subprocess
import tempfile
import textwrap
import threading
import time

import pytest

import harness
from harness import call, load_error, par, q, unload  # clients of harness.LOADER_LOCATIONS

JDK25 = "/usr/lib/jvm/temurin-25-jdk-amd64"


def jdk25():
    """Temurin 25 (virtual threads, the FFM API): the machines this project
    runs on have it under /usr/lib/jvm, and the loader must work with it, so
    its absence is a failure, not a skip."""
    assert os.path.exists(JDK25 + "/bin/java"), (
        "Temurin 25 is expected at %s (the loader is tested on Debian's OpenJDK and "
        "Temurin 25)" % JDK25)
    return JDK25
API_SRC = os.path.join(harness.ROOT, "loader", "java", "java")

SERVER = harness.loader_locations("ffi_java")


def build_examples():
    """examples/java with Maven (fast when up to date); returns the jar."""
    d = os.path.join(harness.ROOT, "examples", "java")
    jar = os.path.join(d, "target", "resty-ffi-examples.jar")
    if os.environ.get("RESTY_FFI_SKIP_BUILD") != "1" or not os.path.exists(jar):
        harness.run(["mvn", "-q", "-B", "-Dstyle.color=never", "package"], cwd=d)
    return jar


def javac(out, *sources):
    subprocess.run(["javac", "--release", "17", "-d", out, "-sourcepath", API_SRC,
                    "-implicit:none", *sources], check=True)


@pytest.fixture(scope="session")
def jstage(stage):
    """The stage plus java/: test classes, the examples jar, a hot folder."""
    subprocess.run(["bash", os.path.join(harness.ROOT, "ci", "setup-java.sh")], check=True)
    root = os.path.join(stage.dir, "java")
    classes = os.path.join(root, "classes")
    os.makedirs(classes, exist_ok=True)
    tdir = os.path.join(harness.ROOT, "tests", "java", "t")
    javac(classes, *[os.path.join(tdir, f) for f in sorted(os.listdir(tdir))])
    # the FFM runtime needs JDK 22+: its own folder, on CLASSPATH only there
    stage.java_ffm = os.path.join(root, "ffm")
    subprocess.run([jdk25() + "/bin/javac", "--release", "22", "-d", stage.java_ffm,
                    os.path.join(harness.ROOT, "tests", "java", "ffm", "Echo.java")],
                   check=True)
    stage.java_examples = os.path.join(root, "examples.jar")
    shutil.copy(build_examples(), stage.java_examples)
    stage.java_hot = os.path.join(root, "hot")
    os.makedirs(stage.java_hot, exist_ok=True)
    stage.java_classpath = ":".join([classes, stage.java_hot, stage.java_examples])
    stage.examples_java = stage.add_tree(os.path.join(harness.ROOT, "examples", "java"),
                                         "java-examples")
    stage.world_readable()
    return stage


# /nt: a call through ngx.load_ffi with no opts, so no call timeout (as
# lua-resty-ffi's users load runtimes): an unanswered call waits forever.
NO_TIMEOUT = r"""
location /nt {
    content_by_lua_block {
        require "resty_ffi"
        local reply = require "t.reply"
        local rt, err = ngx.load_ffi("ffi_java", ngx.req.get_uri_args().cfg)
        if not rt then
            ngx.status = 500
            return ngx.print("load failed: ", err)
        end
        reply.send(rt:call(reply.body()))
    }
}
"""


@pytest.fixture
def j_nginx(nginx, jstage):
    def start(java_opts=None, java_home=None, main="", classpath=None, extra="", **kw):
        env = "env CLASSPATH=%s;\n" % (classpath or jstage.java_classpath)
        if java_opts is not None:
            env += "env \"JAVA_OPTS=%s\";\n" % java_opts
        if java_home:
            env += "env JAVA_HOME=%s;\n" % java_home
        return nginx(SERVER + NO_TIMEOUT + extra, main=env + main, **kw)
    return start


def java_threads(n, prefix):
    names = []
    for pid in n.worker_pids():
        names += [t for t in harness.thread_names(pid) if t.startswith(prefix)]
    return names


# ---- compat style -------------------------------------------------------

def test_lua_resty_ffi_jnr_ffi_echo_runs_unchanged(j_nginx):
    n = j_nginx()
    cfg = "demo.echo.App?,init,"
    for body in (b"hello", b"", b"a\x00b" * 1000, os.urandom(256 * 1024)):
        status, got = call(n, cfg, body)
        assert status == 200, got[:300] + n.error_log().encode()[-3000:]
        assert got == body
    unload(n, cfg)
    # System.out reaches error.log, as a notice line in nginx's format
    assert harness.wait_until(lambda: "exit java echo runtime" in n.error_log(), 5), \
        n.error_log()[-2000:]
    line = [l for l in n.error_log().splitlines() if "exit java echo runtime" in l][0]
    # (written by nginx from the dispatcher's timer: `*N` may come first)
    assert re.match(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[notice\] \d+#\d+: (\*\d+ )?ffi_java: ",
                    line), line
    # and without '?' (the class from the system class loader)
    assert call(n, "demo.echo.App,init", b"again") == (200, b"again")


def test_native_api_polls_answers_once_and_checks_queues(j_nginx):
    # -Xcheck:jni: the JVM checks every JNI call of the natives
    n = j_nginx(java_opts="-Xcheck:jni")
    cfg = "t.NativeEcho,init,hello"
    assert call(n, cfg, b"abc") == (200, b"ABC")
    assert call(n, cfg, b"nil") == (200, b"<nil>")
    assert call(n, cfg, b"x", nil=True) == (200, b"<null>")
    assert call(n, cfg, b"twice") == (200, b"first")
    assert call(n, cfg, b"fail") == (502, b"rc=42 err=custom failure")
    status, got = call(n, cfg, b"badq")
    assert (status, got) == (502, b"rc=3 err=resty.ffi: 0x3039 is not a task queue "
                                  b"(pass the tq your init was given)"), got
    log = n.error_log()
    assert "second respond: resty.ffi: the task is already answered" in log
    assert re.search(r"\[notice\] \d+#\d+: native echo started with cfg=hello\n", log), log[-2000:]
    unload(n, cfg)
    assert harness.wait_until(
        lambda: "native echo: queue finished, poller exits" in n.error_log(), 5)
    assert "in native method" not in n.error_log(), n.error_log()[-3000:]


# ---- handler style ------------------------------------------------------

def test_handler_style_echo_sync_and_async_needs_no_jar_of_ours(j_nginx):
    n = j_nginx()
    assert call(n, "demo.echo.Handler,echo,echo: ", b"hi") == (200, b"echo: hi")
    assert call(n, "demo.echo.Handler,echo", b"hi") == (200, b"hi")
    assert call(n, "demo.echo.Handler,echoAsync,>", b"hi") == (200, b">hi")
    big = os.urandom(200 * 1024)
    assert call(n, "demo.echo.Handler,echoAsync", big) == (200, big)
    # nil request arrives as null; cfg without rest is null
    status, got = call(n, "t.Handlers,where", nil=True)
    assert status == 200, got
    want = b"req=<null> cfg=null java=%d thread=jv" % harness.JAVA_MAJOR
    assert got.startswith(want), got
    # a null answer is nil in Lua; a raw Function works too
    assert call(n, "t.Handlers,raiserAsync", b"nil") == (200, b"<nil>")
    assert call(n, "t.Handlers,raw", b"raw") == (200, b"raw")
    # poller threads are named after the class
    assert java_threads(n, "jv0-Handler"), harness.thread_names(n.worker_pids()[0])


def test_100_calls_to_an_async_handler_sleeping_1s_finish_in_about_1s(j_nginx):
    n = j_nginx()
    cfg = "t.Handlers,asleep"
    assert call(n, cfg, b"warm") == (200, b"slept warm")
    good, elapsed = par(n, cfg, 100, "c", "slept c")
    assert good == 100, n.error_log()[-3000:]
    assert 0.95 < elapsed < 1.8, elapsed
    # a blocking sync handler gets a thread per call in flight
    good, elapsed = par(n, "t.Handlers,sleepSync", 50, "s", "slept s")
    assert good == 50, n.error_log()[-3000:]
    assert 0.95 < elapsed < 2.0, elapsed
    # and spare pollers end when calls stop
    assert harness.wait_until(lambda: len(java_threads(n, "jv")) <= 6, 5), \
        java_threads(n, "jv")


def test_thread_bound_and_unload_end_the_pollers(j_nginx):
    n = j_nginx(java_opts="-Dresty.ffi.threads=4")
    cfg = "t.Handlers,sleepSync"
    # at most 4 pollers: 8 calls of 1 s take two rounds
    good, elapsed = par(n, cfg, 8, "s", "slept s")
    assert good == 8
    assert 1.9 < elapsed < 3.0, elapsed
    assert len(java_threads(n, "jv")) <= 4
    unload(n, cfg)
    assert harness.wait_until(lambda: not java_threads(n, "jv"), 5), java_threads(n, "jv")


def test_virtual_thread_executor_runs_blocking_sync_handlers_unbounded(j_nginx):
    n = j_nginx(java_home=jdk25(), java_opts="-Dresty.ffi.executor=virtual -Dresty.ffi.threads=2")
    good, elapsed = par(n, "t.Handlers,sleepSync", 100, "v", "slept v")
    assert good == 100, n.error_log()[-3000:]
    assert 0.95 < elapsed < 1.8, elapsed
    assert len(java_threads(n, "jv")) <= 2
    status, got = call(n, "t.Handlers,where", b"x")
    assert status == 200 and b" thread= " in got, got    # virtual threads have no name
    status, got = call(n, "t.Handlers,raiser", b"raise")
    assert status == 502 and got.startswith(b"rc=1 err=t.Handlers$Boom"), got


@pytest.mark.parametrize("method", ["raiser", "raiserAsync"])
def test_handler_exceptions_become_error_answers_and_the_runtime_keeps_serving(j_nginx, method):
    n = j_nginx()
    cfg = "t.Handlers," + method
    status, got = call(n, cfg, b"raise")
    assert status == 502 and got.startswith(b"rc=1 err=t.Handlers$Boom: "), got
    if method == "raiser":
        status, got = call(n, cfg, b"npe")
        assert status == 502 and got.startswith(b"rc=1 err=java.lang.NullPointerException"), got
    else:
        assert call(n, cfg, b"fail") == (502, b"rc=1 err=java.lang.IllegalStateException: stage failed")
    assert call(n, cfg, b"ok") == (200, b"fine")
    # the answer goes first, the log line after it (through the dispatcher)
    threw = r"\[error\] \d+#\d+: (\*\d+ )?ffi_java: Handlers: handler threw t.Handlers\$Boom"
    assert harness.wait_until(lambda: re.search(threw, n.error_log()), 5), n.error_log()[-3000:]
    at = r"\[error\] \d+#\d+: (\*\d+ )?\tat t\.Handlers"
    assert harness.wait_until(lambda: re.search(at, n.error_log()), 5), n.error_log()[-3000:]


# ---- out of memory --------------------------------------------------------

OOM = b"rc=1 err=java.lang.OutOfMemoryError"


def test_calls_whose_client_went_away_are_given_up_the_runtime_sees_it_and_quit_is_prompt(
        j_nginx):
    """Calls parked with no timeout on Java runtimes that answer in a
    minute or never: when their clients go away they are given up within
    the sweep's second (nothing counts as waiting), a native runtime sees
    Task.cancelled(), the worker serves on, and a quit does not wait for
    them (nor for the JVM's threads still on them)."""
    n = j_nginx(extra=harness.abandon_locations("ffi_java"), shutdown_timeout="60s")
    harness.loader_gives_up_abandoned_calls(
        n, "t.Parked,init", ["t.Handlers,sleepSync,60000", "t.Parked,never"],
        "demo.echo.Handler,echo")


def test_an_async_handler_of_a_call_given_up_has_its_stage_cancelled_and_its_answer_reaches_nobody(
        j_nginx):
    """A plain call to a handler returning a CompletionStage that is given
    up (its timeout, its client gone) has the stage cancelled within the
    watcher's round: the handler's whenComplete sees isCancelled() and a
    CancellationException. A stage that cannot be cancelled is answered
    by the loader (to nobody). Other calls get their own answers, and no
    stack trace is logged for a cancellation."""
    n = j_nginx(extra=harness.abandon_locations("ffi_java"), shutdown_timeout="60s")
    cfg = "t.Parked,cancellable"
    assert call(n, cfg, b"seen") == (200, b"0")

    # the stage is cancelled at once on the call's timeout, not never
    harness.calls_given_up_reach_nobody(n, cfg, (b"wait", b"minimal"), (b"1", None, b"3"))
    assert call(n, "demo.echo.Handler,echo", b"e") == (200, b"e")
    log = n.error_log()
    assert "CancellationException" not in log, log[-3000:]
    assert "UnsupportedOperationException" not in log, log[-3000:]
    assert n.quit() < 5


def nt_call(n, cfg, body):
    """A call with no Lua timeout; (status, body, seconds)."""
    t0 = time.time()
    status, got = n.post("/nt?cfg=" + q(cfg), body, timeout=60)
    return status, got, time.time() - t0


@pytest.mark.parametrize("cfg,java_home,sizes", [
    ("t.Hog,sync", None, [16 << 20, 1 << 20, 64 << 10, 1 << 10, 16]),
    ("t.Hog,async", None, [4 << 20, 256 << 10, 16]),
    ("t.Hog,inStage", None, [1 << 20, 4 << 10, 16]),
    ("t.Hog,inStage", JDK25, [64 << 10, 16]),
    ("t.Hog,compat", None, [2 << 20, 64 << 10, 16]),
], ids=["function", "completion-stage", "in-stage", "in-stage-temurin-25", "compat"])
def test_a_full_heap_answers_out_of_memory_and_the_runtime_serves_again(
        j_nginx, cfg, java_home, sizes):
    if java_home:
        java_home = jdk25()
    # -Xcheck:jni: no JNI call of the loader's is made with an error pending
    n = j_nginx(java_opts="-Xmx32m -Xcheck:jni -Dresty.ffi.oomGrace=2000",
                java_home=java_home, log_level="notice")
    assert nt_call(n, cfg, b"echo")[:2] == (200, b"echo")
    pid = n.worker_pids()
    for size in sizes:
        # the call whose handler filled the heap gets the error; a stage
        # whose thread died of it is answered 2 s (oomGrace) after it
        status, got, took = nt_call(n, cfg, b"fill:%d:1500" % size)
        assert status == 502 and got.startswith(OOM), (size, got, n.error_log()[-3000:])
        print("fill from %d B: answered in %.2f s: %s" % (size, took, got))
        # while the heap stays full, calls are answered, or get the error
        # as soon as the JVM gives up allocating (each failed allocation
        # costs full collections of a heap of tiny objects: seconds on a
        # busy machine) or oomGrace after that for a stage
        status, got, took = nt_call(n, cfg, b"echo")
        assert (status, got) == (200, b"echo") or (status == 502 and got.startswith(OOM)), got
        assert took < 15, took
        # once the runtime lets go of its heap, the same pollers serve again
        assert harness.wait_until(lambda: nt_call(n, cfg, b"echo")[:2] == (200, b"echo"), 20), \
            n.error_log()[-3000:]
    assert n.worker_pids() == pid
    log = n.error_log()
    # no poller thread dies of it (the runtime's own threads may)
    assert 'UncaughtExceptionHandler in thread "jv' not in log, log[-3000:]
    assert "exited on signal" not in log
    assert "WARNING in native method" not in log, log[-3000:]
    assert "cannot count OutOfMemoryErrors" not in log


# ---- loading ------------------------------------------------------------

HOT = """
package hot;
public class Hot {
    public static java.util.function.Function<byte[], byte[]> init(String cfg) {
        return req -> "%s".getBytes();
    }
}
"""


def write_hot(jstage, version):
    src_dir = tempfile.mkdtemp(prefix="hot-src-")
    src = os.path.join(src_dir, "Hot.java")
    with open(src, "w") as f:
        f.write(HOT % version)
    javac(jstage.java_hot, src)
    jstage.world_readable()
    # a new mtime/size even within the same second
    time.sleep(0.01)


def test_question_mark_reloads_a_changed_class_after_unload(j_nginx, jstage):
    write_hot(jstage, "v1")
    n = j_nginx()
    assert call(n, "hot.Hot,init") == (200, b"v1")
    unload(n, "hot.Hot,init")
    write_hot(jstage, "version-2")
    # without '?' the class loaded first is reused as is
    assert call(n, "hot.Hot,init") == (200, b"v1")
    assert call(n, "hot.Hot?,init") == (200, b"version-2")
    unload(n, "hot.Hot?,init")
    write_hot(jstage, "three")
    assert call(n, "hot.Hot?,init") == (200, b"three")


def test_load_errors_are_clear_and_nginx_keeps_serving(j_nginx):
    n = j_nginx()
    cases = [
        ("t.Nope,init", 5, "ffi_java: class t.Nope not found (CLASSPATH: "),
        ("t.Nope?,init", 5, "ffi_java: class t.Nope not found (CLASSPATH: "),
        ("t.Exploding,init", 5, "ffi_java: cannot load class t.Exploding: "
                                "java.lang.ExceptionInInitializerError"),
        ("t.Bad,missing", 6, "ffi_java: t.Bad has no method 'missing'"),
        ("t.Bad,wrongSignature", 6,
         "ffi_java: t.Bad.wrongSignature has the wrong signature (found: public static "
         "java.lang.String t.Bad.wrongSignature(java.lang.String)); want public static int "
         "wrongSignature(String cfg, long tq)"),
        ("t.Bad,notStatic", 6, "t.Bad.notStatic has the wrong signature"),
        ("t.Bad,throwsInInit", 7, "ffi_java: t.Bad.throwsInInit(cfg, tq) threw "
                                  "java.lang.IllegalStateException: cannot reach the backend"),
        ("t.Bad,returnsSeven", 7, "ffi_java: t.Bad.returnsSeven(cfg, tq) returned 7"),
        ("t.Bad,returnsNull", 8, "ffi_java: t.Bad.returnsNull(cfg) returned null"),
        ("t.Bad", 2, "ffi_java: bad cfg 't.Bad': no method name"),
        ("t/Bad,init", 2, "is not a Java class name like pkg.Class"),
    ]
    for cfg, rc, msg in cases:
        harness.load_fails(n, cfg, rc, msg)
        assert call(n, "demo.echo.Handler,echo", b"alive") == (200, b"alive")
    # the stack trace of init's exception is in error.log
    assert re.search(r"\tat t\.Bad\.throwsInInit\(Bad\.java:\d+\)", n.error_log())
    assert len(n.worker_pids()) == 1


def test_bad_java_opts_fail_every_load_clearly_and_nginx_keeps_serving(j_nginx):
    n = j_nginx(java_opts="-XX:+NoSuchOption")
    for _ in range(2):
        err = load_error(n, "demo.echo.Handler,echo")
        assert "libffi_init returned 3" in err, err
        assert "ffi_java: cannot start the JVM: " in err, err
        assert "could not create a JVM" in err and "-XX:+NoSuchOption" in err, err
    assert "Unrecognized VM option 'NoSuchOption'" in n.error_log()
    assert n.get("/plain") == (200, b"plain")
    assert len(n.worker_pids()) == 1


def test_a_wrong_java_home_falls_back_to_the_default_jdk(j_nginx):
    n = j_nginx(java_home="/nonexistent/jdk")
    status, got = call(n, "t.Handlers,where", b"x")
    assert (status, got[:20]) == (200, b"req=x cfg=null java="), got


def test_default_heap_is_capped_unless_java_opts_sets_one(j_nginx):
    n = j_nginx()
    status, got = call(n, "t.Handlers,where", b"x")
    assert status == 200, got
    heap = int(re.search(rb"maxheap=(\d+)", got).group(1))
    assert 200 <= heap <= 256, got
    if os.geteuid() == 0:
        assert b"user=nobody" in got, got
    n2 = j_nginx(java_opts="-Xmx64m -Dx=1 -XX:+PrintCommandLineFlags")
    status, got = call(n2, "t.Handlers,where", b"x")
    heap = int(re.search(rb"maxheap=(\d+)", got).group(1))
    assert heap <= 64, got
    # the JVM's own output reaches error.log (its stdout is /dev/null)
    assert "-XX:MaxHeapSize=67108864" in n2.error_log(), n2.error_log()[-2000:]


def test_temurin_25_from_java_home_runs_both_styles(j_nginx):
    n = j_nginx(java_home=jdk25())
    status, got = call(n, "t.Handlers,where", b"x")
    assert status == 200, got + n.error_log().encode()[-2000:]
    assert b" java=25 " in got, got
    assert call(n, "demo.echo.App?,init,", b"jnr") == (200, b"jnr")
    good, elapsed = par(n, "t.Handlers,asleep", 100, "c", "slept c")
    assert good == 100 and elapsed < 1.8, (good, elapsed)


def test_ffm_runtime_finds_the_core_symbols_process_wide(j_nginx, jstage):
    n = j_nginx(java_home=jdk25(), java_opts="--enable-native-access=ALL-UNNAMED",
                classpath=jstage.java_classpath + ":" + jstage.java_ffm)
    for body in (b"hello", b""):
        status, got = call(n, "ffm.Echo,init", body)
        assert (status, got) == (200, b"ffm: " + body), got + n.error_log().encode()[-2000:]
    unload(n, "ffm.Echo,init")
    assert harness.wait_until(lambda: "ffm echo: queue finished" in n.error_log(), 5)


def jcmd_as_worker_user(pid):
    """`jcmd PID VM.version` run as the worker's user (nobody when nginx
    starts as root), as any other process of that user could."""
    cmd = [shutil.which("jcmd") or "/usr/bin/jcmd", str(pid), "VM.version"]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "nobody", "--"] + cmd
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def jvm_traces(pid):
    user = "nobody" if os.geteuid() == 0 else __import__("pwd").getpwuid(os.geteuid()).pw_name
    return {"attach socket": os.path.exists("/tmp/.java_pid%d" % pid),
            "perf data": os.path.exists("/tmp/hsperfdata_%s/%d" % (user, pid))}


def test_no_attach_listener_and_no_perf_data_unless_java_opts_turns_them_on(j_nginx):
    n = j_nginx()
    assert call(n, "demo.echo.Handler,echo", b"x") == (200, b"x")
    pid = n.worker_pids()[0]
    assert jvm_traces(pid) == {"attach socket": False, "perf data": False}
    r = jcmd_as_worker_user(pid)
    assert r.returncode != 0 and "OpenJDK" not in r.stdout, (r.stdout, r.stderr)
    assert jvm_traces(pid)["attach socket"] is False
    # (finding no attach support, jcmd sends the worker a QUIT, which nginx
    # takes as "quit": the master starts a new worker)
    assert harness.wait_until(lambda: n.worker_pids(), 5)
    assert call(n, "demo.echo.Handler,echo", b"y") == (200, b"y")

    # JAVA_OPTS come last: they may turn both back on
    n2 = j_nginx(java_opts="-XX:-DisableAttachMechanism -XX:+UsePerfData")
    assert call(n2, "demo.echo.Handler,echo", b"x") == (200, b"x")
    pid = n2.worker_pids()[0]
    assert jvm_traces(pid) == {"attach socket": True, "perf data": True}
    r = jcmd_as_worker_user(pid)
    assert r.returncode == 0 and "JDK %d." % harness.JAVA_MAJOR in r.stdout, (r.stdout, r.stderr)
    assert n2.worker_pids() == [pid]


# ---- nginx lifecycle ----------------------------------------------------

@pytest.mark.parametrize("java_home", [None, JDK25], ids=["default-jdk", "temurin-25"])
def test_reload_and_quit_stay_prompt_with_a_jvm_loaded(j_nginx, java_home):
    if java_home:
        java_home = jdk25()
    n = j_nginx(workers=2, java_home=java_home)
    cfg = "t.Handlers,asleep"
    assert n.get("/plain") == (200, b"plain")
    old = n.worker_pids()
    before = [harness.rss_kib(p) for p in old]
    for _ in range(4):
        status, got = call(n, cfg, b"w")
        assert status == 200, got
    assert n.worker_pids() == old
    after = [harness.rss_kib(p) for p in old]
    print("worker RSS (KiB) before / with a JVM loaded:", before, after)
    # -Xmx256m by default; a fresh JVM commits far less
    assert max(after) - min(before) < 150 * 1024, (before, after)
    n.reload()
    assert harness.wait_until(lambda: not set(n.worker_pids()) & set(old), 5), \
        (old, n.worker_pids())
    assert call(n, cfg, b"after") == (200, b"slept after")
    # reopen (USR1) while a JVM is loaded keeps serving
    n.signal(signal.SIGUSR1)
    assert call(n, "demo.echo.Handler,echo", b"reopen") == (200, b"reopen")
    # quit with a call in flight: it is answered, and quit is prompt
    results = []
    t = threading.Thread(target=lambda: results.append(call(n, cfg, b"late")))
    t.start()
    time.sleep(0.2)
    took = n.quit()
    t.join(10)
    assert results == [(200, b"slept late")]
    assert took < 5, took
    # workers with a JVM exit cleanly (no crash in the JVM at exit)
    assert "exited on signal" not in n.error_log(), n.error_log()[-3000:]


def test_loading_in_init_worker_creates_the_jvm_before_requests(j_nginx):
    n = j_nginx(http="""
        init_worker_by_lua_block {
            require "resty_ffi"
            local rt, err = ngx.load_ffi("ffi_java", "demo.echo.Handler,echo,early: ")
            if not rt then
                ngx.log(ngx.ERR, "init_worker load failed: ", err)
            end
        }
    """)
    assert harness.wait_until(lambda: n.worker_pids(), 5)
    pid = n.worker_pids()[0]
    assert harness.wait_until(lambda: any(t.startswith("jv") for t in harness.thread_names(pid)), 5)
    t0 = time.time()
    assert call(n, "demo.echo.Handler,echo,early: ", b"x") == (200, b"early: x")
    assert time.time() - t0 < 0.5
    assert "init_worker load failed" not in n.error_log()


def test_system_exit_ends_the_worker_and_nginx_starts_a_new_one(j_nginx):
    n = j_nginx()
    assert call(n, "demo.echo.Handler,echo", b"x") == (200, b"x")
    old = n.worker_pids()
    try:
        status, _ = call(n, "t.Handlers,exiter", b"bye")
        assert status != 200
    except OSError:
        pass    # the connection dies with the worker
    assert harness.wait_until(lambda: n.worker_pids() and n.worker_pids() != old, 5)
    assert "exited with code 3" in n.error_log()
    # the new worker creates its own JVM on its first call
    assert call(n, "demo.echo.Handler,echo", b"again") == (200, b"again")


# ---- examples -----------------------------------------------------------

def test_markdown_example_renders_with_commonmark(j_nginx):
    n = j_nginx()
    md = b"# Title\n\n| a | b |\n|---|---|\n| 1 | <i>2</i> |\n"
    status, got = call(n, "demo.markdown.Render,init", md)
    assert status == 200, got + n.error_log().encode()[-2000:]
    assert got.startswith(b"<h1>Title</h1>\n<table>"), got
    assert b"<td>&lt;i&gt;2&lt;/i&gt;</td>" in got, got


def test_example_nginx_conf_serves_every_java_example(nginx, jstage):
    with open(os.path.join(jstage.examples_java, "nginx.conf")) as f:
        server = f.read()
    n = nginx(server, main="env CLASSPATH=%s;" % jstage.java_examples)
    assert n.post("/java/echo", b"hello") == (200, b"hello")
    assert n.post("/java/echo-handler", b"hello") == (200, b"echo: hello")
    status, got = n.post("/java/markdown", b"*hi*")
    assert (status, got) == (200, b"<p><em>hi</em></p>\n"), got + n.error_log().encode()[-2000:]


def test_java_log_lines_are_written_by_nginx_at_their_level(j_nginx):
    n = j_nginx(log_level="notice")
    assert call(n, "t.Handlers,logger", b"x") == (200, b"logged")
    assert harness.wait_until(lambda: "java-error-line" in n.error_log(), 5)
    log = n.error_log()
    assert re.search(r"\[warn\] \d+#\d+: (\*\d+ )?java-warn-line", log), log[-2000:]
    assert re.search(r"\[error\] \d+#\d+: (\*\d+ )?java-error-line", log), log[-2000:]
    assert "java-info-line" not in log, "below the error_log level"


def test_metrics_name_a_java_runtime_by_loader_and_class_never_by_cfg(j_nginx):
    n = j_nginx()
    status, body = n.get("/name?cfg=" + q("t.NativeEcho,init,token=s3cret"))
    assert (status, body) == (200, b"ffi_java:t.NativeEcho"), body
