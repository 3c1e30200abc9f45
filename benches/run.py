#!/usr/bin/env python3
"""resty-ffi's benchmarks: one command, every section, tables, JSON, chart.

    python3 benches/run.py            # full run (several minutes)
    python3 benches/run.py --quick    # seconds: small N, one payload

Builds what it needs, stages libraries and Lua into a world-readable folder
(nginx workers run as `nobody`), starts its own nginx through
tests/harness.py and its own proxy-model server, and measures in one run:

  1  sequential echo from one Lua request, per runtime and payload size,
     wall and CPU (worker + runtime threads, from /proc) per call;
  2  the same with nginx, the runtime and the proxy pinned to one CPU;
  3  the unix-socket proxy model (tokio side process, cosockets, keepalive
     pool, length-prefixed frames; raw and MessagePack RPC), same payloads;
  4  throughput with wrk: plain Lua, one echo call per request, proxy;
  5  gRPC: N sequential SayHello calls from Lua (resty.ffi.grpc) against a
     native tonic client (grpc_bench_client) on the same server, and 64
     concurrent Lua callers against 64 concurrent tonic tasks;
  6  the bridge alone, without nginx (benches/src/bin/bridge_host);
  7  streaming: one rt:__stream read to the end, 64 B chunks (chunks/s) and
     64 KiB chunks (MB/s), time to the first chunk, per runtime that
     streams (a `stream` request in its RUNTIMES entry), against the proxy
     model streaming the same bytes over a held-open unix socket.

Records go to target/bench/results.json, tables to target/bench/results.md,
the echo chart to target/bench/echo.png. Every process started here is
stopped on the way out, errors and Ctrl-C included.

Runtimes are the RUNTIMES table below: adding one is one entry plus its
staging step. An entry whose library is not built prints "not built".
"""

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import harness  # noqa: E402  (tests/harness.py: Stage, Nginx)

RELEASE = os.path.join(ROOT, "target", "release")
OUT = os.path.join(ROOT, "target", "bench")
KIB = 1024
PAYLOADS = [512, 4 * KIB, 10 * KIB, 100 * KIB]


class NotBuilt(Exception):
    """A runtime's library (or what it needs) is not there: skip it."""


# ---- runtimes ---------------------------------------------------------------

def release_lib(name):
    path = os.path.join(RELEASE, name)
    if not os.path.exists(path):
        raise NotBuilt("%s not built (cargo build --release)" % name)
    return path


def stage_rust_echo(stage, ctx):
    stage.add_lib(release_lib("libffi_echo.so"))


def stage_go_echo(stage, ctx):
    path = os.path.join(ROOT, "examples", "go", "libffi_go_echo.so")
    if not os.path.exists(path):
        raise NotBuilt("examples/go/libffi_go_echo.so not built")
    stage.add_lib(path)


def python_venv(ctx):
    """A venv with cffi for the compat-style runtime that workers (user
    nobody) can read: the one ci/setup-python.sh makes for the examples (it
    holds cffi), else one made once in target/bench, which only works where
    the checkout itself is readable by that user."""
    shared = os.environ.get("RESTY_FFI_VENV", "/var/cache/resty-ffi/venv")
    if os.path.exists(os.path.join(shared, ".resty-ffi-requirements")):
        return shared
    venv = os.path.join(OUT, "py-venv")
    marker = os.path.join(venv, ".cffi-ok")
    if not os.path.exists(marker):
        py = shutil.which("python3.11") or "/usr/bin/python3.11"
        if not os.path.exists("/usr/bin/python3.11"):
            raise NotBuilt("Debian's python3.11 is not installed")
        py = "/usr/bin/python3.11"
        shutil.rmtree(venv, ignore_errors=True)
        try:
            subprocess.run([py, "-m", "venv", venv], check=True, capture_output=True)
            subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", "cffi"],
                           check=True, capture_output=True, timeout=300)
        except (subprocess.SubprocessError, OSError) as e:
            raise NotBuilt("cannot make a venv with cffi: %s" % e)
        open(marker, "w").close()
        for top, dirs, files in os.walk(venv):
            for d in dirs:
                os.chmod(os.path.join(top, d), 0o755)
            for f in files:
                p = os.path.join(top, f)
                if not os.path.islink(p):
                    os.chmod(p, os.stat(p).st_mode | 0o444)
    return venv


def stage_python(style):
    def stage_it(stage, ctx):
        stage.add_lib(release_lib("libffi_python3.so"))
        stage.add_tree(os.path.join(HERE, "python"), "python")
        if style == "cffi":
            # lua-resty-ffi's style: the example runtime itself, unchanged
            stage.add_tree(os.path.join(ROOT, "examples", "python", "ffi"), "python/ffi")
            ctx["venv"] = python_venv(ctx)
    return stage_it


def stage_java(stage, ctx):
    """libffi_java.so plus benches/java compiled with javac against the
    loader's API sources; nginx passes the classes folder as CLASSPATH."""
    stage.add_lib(release_lib("libffi_java.so"))
    if "java_classpath" in ctx:
        return
    javac = shutil.which("javac")
    if not javac:
        raise NotBuilt("no javac (ci/setup-java.sh installs a JDK)")
    out = os.path.join(stage.dir, "java-bench")
    src = os.path.join(HERE, "java", "bench", "Echo.java")
    try:
        subprocess.run([javac, "--release", "17", "-d", out, "-implicit:none",
                        "-sourcepath", os.path.join(ROOT, "loader", "java", "java"), src],
                       check=True, capture_output=True)
    except subprocess.CalledProcessError as e:
        raise NotBuilt("javac failed: %s" % e.stderr.decode(errors="replace")[:200])
    ctx["java_classpath"] = out
    # the jnr-ffi echo of examples/java (the java-jnr variant), when Maven built it
    jar = os.path.join(ROOT, "examples", "java", "target", "resty-ffi-examples.jar")
    if os.path.exists(jar):
        shutil.copy(jar, os.path.join(out, "examples.jar"))
        ctx["java_classpath"] += ":" + os.path.join(out, "examples.jar")


def stage_java_jnr(stage, ctx):
    stage_java(stage, ctx)
    if "examples.jar" not in ctx["java_classpath"]:
        raise NotBuilt("examples/java not built (cd examples/java && mvn package)")


def stage_nodejs(stage, ctx):
    """libffi_nodejs.so and benches/nodejs; libnode is found at run time
    (Debian's libnode108, or ci/setup-nodejs.sh's prefix)."""
    stage.add_lib(release_lib("libffi_nodejs.so"))
    stage.add_tree(os.path.join(HERE, "nodejs"), "nodejs")


# name, library as Lua loads it, cfg ({stage}, {venv} filled in), staging
# step, and whether a missing library fails the run (Rust and Go always run);
# optional `opts` (spin_us, poll_spin_us) are passed to ffi.load, so a
# variant of a runtime is one more entry.
RUNTIMES = [
    dict(name="rust-echo", lib="ffi_echo", cfg="threads=2",
         stage=stage_rust_echo, required=True, stream="!stream:{n}:{size}:0"),
    dict(name="rust-echo-1t", lib="ffi_echo", cfg="threads=1",
         stage=stage_rust_echo, required=False, variant=True),
    # "threads=2," differs from rust-echo's cfg only so that the Lua layer's
    # runtime cache (keyed by lib & cfg, not opts) loads a second runtime
    dict(name="rust-echo-nospin", lib="ffi_echo", cfg="threads=2,",
         opts=dict(spin_us=0, poll_spin_us=0),
         stage=stage_rust_echo, required=False, variant=True),
    dict(name="go-echo", lib="ffi_go_echo", cfg="",
         stage=stage_go_echo, required=True),
    dict(name="python-handler", lib="ffi_python3",
         cfg="{stage}/python/resty_ffi_bench.echo_handler,init",
         stage=stage_python("handler"), required=False,
         stream="!stream:{n}:{size}"),  # an async generator (echo_handler.py)
    dict(name="python-async", lib="ffi_python3",
         cfg="{stage}/python/resty_ffi_bench.echo_async,init",
         stage=stage_python("handler"), required=False),
    dict(name="python-cffi", lib="ffi_python3",
         cfg="venv={venv}:{stage}/python/ffi.echo,init,threads=1",
         stage=stage_python("cffi"), required=False),
    dict(name="java-jni", lib="ffi_java", cfg="bench.Echo,init,threads=1",
         stage=stage_java, required=False),
    dict(name="java-handler", lib="ffi_java", cfg="bench.Echo,handler",
         stage=stage_java, required=False, stream="!stream:{n}:{size}"),
    dict(name="java-jnr", lib="ffi_java", cfg="demo.echo.App,init",
         stage=stage_java_jnr, required=False, variant=True),
    dict(name="node-compat", lib="ffi_nodejs", cfg="{stage}/nodejs/echo.js,compat",
         stage=stage_nodejs, required=False),
    dict(name="node-handler", lib="ffi_nodejs", cfg="{stage}/nodejs/echo.js,handler",
         stage=stage_nodejs, required=False),
]

# The proxy-model baselines, measured in the same run with the same payloads.
BASELINES = [
    dict(name="socket-raw", proto="raw"),
    dict(name="socket-msgpack", proto="msgpack"),
]
BASELINE = "socket-raw"


# ---- processes ---------------------------------------------------------------

@contextlib.contextmanager
def affinity(cpus):
    """Processes started inside inherit CPU set `cpus` (None: unchanged)."""
    if cpus is None:
        yield
        return
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


class ProxyServer:
    """bench-proxy-server on two unix sockets in the stage."""

    def __init__(self, stage):
        sock_dir = os.path.join(stage.dir, "sock")
        os.makedirs(sock_dir, exist_ok=True)
        os.chmod(sock_dir, 0o755)
        self.raw = os.path.join(sock_dir, "raw.sock")
        self.msgpack = os.path.join(sock_dir, "msgpack.sock")
        self.proc = None

    def path(self, proto):
        return self.raw if proto == "raw" else self.msgpack

    def start(self):
        self.proc = subprocess.Popen(
            [os.path.join(RELEASE, "bench-proxy-server"),
             "--raw", self.raw, "--msgpack", self.msgpack],
            stdout=subprocess.PIPE, stderr=sys.stderr)
        line = self.proc.stdout.readline()
        if line.strip() != b"ready":
            self.stop()
            raise RuntimeError("bench-proxy-server did not start")
        return self

    def stop(self):
        harness.terminate(self.proc, 5)


def cpu_ns(pids):
    """On-CPU time of every thread of `pids`, in ns (/proc schedstat; falls
    back to utime + stime from stat, 10 ms resolution)."""
    total = 0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            tids = os.listdir("/proc/%d/task" % pid)
        except OSError:
            continue
        for tid in tids:
            base = "/proc/%d/task/%s/" % (pid, tid)
            try:
                with open(base + "schedstat") as f:
                    total += int(f.read().split()[0])
                continue
            except (OSError, ValueError, IndexError):
                pass
            try:
                with open(base + "stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) * 10**9 // tick
            except (OSError, ValueError, IndexError):
                pass
    return total


def grpc_nginx(stage, proto):
    """A started 1-worker nginx with section 5's locations (lua/bench/grpc.lua),
    the helloworld service of `proto` (a staged folder) loaded."""
    http = ("init_worker_by_lua_block { assert(require('resty.ffi.grpc')"
            ".loadfile(%s)) }" % lua_str(proto + "/helloworld.proto"))
    loc = ("location = /grpc/seq { content_by_lua_block { require('bench.grpc').seq() } }\n"
           "location = /grpc/conc { content_by_lua_block { require('bench.grpc').conc() } }\n")
    nginx = harness.Nginx(stage, loc, http=http, workers=1, log_level="warn")
    nginx.start()
    return nginx


class Bench:
    """One started nginx (with the bench locations) and proxy server."""

    def __init__(self, stage, ctx, runtimes, workers=1, cpus=None):
        self.stage, self.ctx, self.runtimes = stage, ctx, runtimes
        self.workers, self.cpus = workers, cpus
        self.proxy = ProxyServer(stage)
        self.nginx = None

    def server_block(self):
        lines = [
            "location = /seq { content_by_lua_block { require('bench.run').seq_ffi() } }",
            "location = /seq_socket { content_by_lua_block { require('bench.run').seq_socket() } }",
            "location = /delay { content_by_lua_block { require('bench.run').delay() } }",
            "location = /stream_ffi { content_by_lua_block { require('bench.run').stream_ffi() } }",
            "location = /stream_socket { content_by_lua_block { "
            "require('bench.run').stream_socket() } }",
            "location = /plain { content_by_lua_block { require('bench.run').plain() } }",
            "location = /yield { content_by_lua_block { require('bench.run').yield_plain() } }",
            "location = /stats { content_by_lua_block { "
            "ngx.say(require('cjson').encode(require('resty.ffi').stats())) } }",
        ]
        for rt in self.runtimes:
            opts = ", ".join("%s = %d" % kv for kv in sorted(rt.get("opts", {}).items()))
            lines.append("location = /call/%s { content_by_lua_block { "
                         "require('bench.run').call(%s, %s, { %s }) } }"
                         % (rt["name"], lua_str(rt["lib"]), lua_str(self.cfg(rt)), opts))
        for b in BASELINES:
            lines.append("location = /proxy/%s { content_by_lua_block { "
                         "require('bench.run').proxy(%s, %s) } }"
                         % (b["proto"], lua_str(self.proxy.path(b["proto"])),
                            lua_str(b["proto"])))
        return "\n".join(lines) + "\n"

    def cfg(self, rt):
        return runtime_cfg(rt, self.stage, self.ctx)

    def __enter__(self):
        try:
            with affinity(self.cpus):
                self.proxy.start()
                main = ""
                if "java_classpath" in self.ctx:
                    main = "env CLASSPATH=%s;" % self.ctx["java_classpath"]
                    # JAVA_HOME / JAVA_OPTS of this run reach the JVM
                    main += "".join("env %s;" % v for v in ("JAVA_HOME", "JAVA_OPTS")
                                    if os.environ.get(v))
                self.nginx = harness.Nginx(self.stage, self.server_block(), main=main,
                                           workers=self.workers, log_level="warn")
                self.nginx.start()
            self.workers_pids = self.nginx.worker_pids()
            if len(self.workers_pids) != self.workers:
                time.sleep(0.5)
                self.workers_pids = self.nginx.worker_pids()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        if self.nginx:
            log = self.nginx.error_log()
            self.nginx.stop()
            self.last_error_log = log
        self.proxy.stop()

    def pids(self, side=False):
        return self.workers_pids + ([self.proxy.proc.pid] if side else [])

    def get(self, path, timeout=300):
        status, body = self.nginx.get(path, timeout=timeout)
        if status != 200:
            raise RuntimeError("GET %s: %d %s\n%s" % (
                path, status, body[:300].decode(errors="replace"),
                self.nginx.error_log()[-2000:]))
        return body

    def timed(self, path, side=False):
        """Runs one loop request; returns its JSON plus CPU µs per call."""
        pids = self.pids(side)
        c0 = cpu_ns(pids)
        body = self.get(path)
        c1 = cpu_ns(pids)
        rec = json.loads(body)
        rec["cpu_us_per_call"] = (c1 - c0) / 1e3 / rec["calls"]
        return rec

    def seq_ffi(self, rt, payload, n, reps):
        base = dict(lib=rt["lib"], cfg=self.cfg(rt), payload=payload, **rt.get("opts", {}))
        q = urllib.parse.urlencode(dict(base, n=n))
        self.get("/seq?" + urllib.parse.urlencode(dict(base, n=min(n, 2000))))
        return median_run([self.timed("/seq?" + q) for _ in range(reps)])

    def seq_socket(self, proto, payload, n, reps, cmd="ECHO"):
        q = urllib.parse.urlencode(dict(path=self.proxy.path(proto), proto=proto,
                                        payload=payload, n=n, cmd=cmd))
        warm = urllib.parse.urlencode(dict(path=self.proxy.path(proto), proto=proto,
                                           payload=payload, n=min(n, 2000), cmd=cmd))
        self.get("/seq_socket?" + warm)
        return median_run([self.timed("/seq_socket?" + q, side=True) for _ in range(reps)])


def runtime_cfg(rt, stage, ctx):
    return rt["cfg"].format(stage=stage.dir, venv=ctx.get("venv", ""))


def lua_str(s):
    return '"%s"' % s.replace("\\", "\\\\").replace('"', '\\"')


def median_run(runs):
    """The run with the median wall time; all wall times kept in `runs_us`."""
    ordered = sorted(runs, key=lambda r: r["wall_us_per_call"])
    rec = dict(ordered[len(ordered) // 2])
    rec["runs_us"] = [round(r["wall_us_per_call"], 3) for r in runs]
    return rec


# ---- sections ----------------------------------------------------------------

class Run:
    def __init__(self, args):
        self.args = args
        self.records = []
        self.skipped = {}    # runtime name -> reason
        self.failed = {}     # (section, runtime) -> reason
        self.cpus = len(os.sched_getaffinity(0))

    def add(self, **rec):
        self.records.append(rec)
        return rec

    def log(self, msg):
        print(msg, flush=True)

    def sequential(self, bench, runtimes, section, pinned):
        a = self.args
        for payload in a.payloads:
            for rt in runtimes:
                try:
                    r = bench.seq_ffi(rt, payload, a.calls, a.reps)
                except Exception as e:  # noqa: BLE001 (reported, not hidden)
                    if rt["required"]:
                        raise
                    self.failed[(section, rt["name"])] = str(e).splitlines()[0][:200]
                    continue
                self.emit(section, "sequential", rt["name"], payload, r, bench, pinned)
            for b in BASELINES:
                r = bench.seq_socket(b["proto"], payload, a.calls, a.reps)
                self.emit(section, "sequential", b["name"], payload, r, bench, pinned)

    def emit(self, section, bench_name, runtime, payload, r, bench, pinned):
        rec = self.add(
            bench=bench_name, section=section, runtime=runtime, payload=payload,
            calls=r["calls"], workers=bench.workers,
            cpus=len(bench.cpus) if bench.cpus else self.cpus, pinned=pinned,
            wall_us_per_call=r["wall_us_per_call"], cpu_us_per_call=r["cpu_us_per_call"],
            p50_us=r["p50_us"], p99_us=r["p99_us"], runs_us=r.get("runs_us"))
        for k in ("spun", "parked", "thread_wakeups", "moved_off"):
            if k in r:
                rec[k] = r[k]
        self.log("  [%s] %-15s %7d B  wall %8.2f us  p50 %7.2f  p99 %8.2f  cpu %8.2f us"
                 "  spinning %s"
                 % (section, runtime, payload, rec["wall_us_per_call"], rec["p50_us"],
                    rec["p99_us"], rec["cpu_us_per_call"], spun_share(rec)))

    def sections_1_3(self, stage, ctx, runtimes):
        self.log("== 1+3: sequential echo (%d calls per loop)" % self.args.calls)
        with Bench(stage, ctx, runtimes) as bench:
            self.sequential(bench, runtimes, "1", pinned=False)
            # section 3 extras: the RPC commands of the MessagePack variant
            r = bench.seq_socket("msgpack", 0, self.args.calls, self.args.reps, cmd="PING")
            self.emit("3", "rpc-ping", "socket-msgpack", 0, r, bench, False)
            d = json.loads(bench.get("/delay?" + urllib.parse.urlencode(
                dict(path=bench.proxy.msgpack, ms=20))))
            self.add(bench="rpc-delay", section="3", runtime="socket-msgpack", payload=0,
                     calls=1, workers=1, cpus=self.cpus, delay_ms=d["ms"], took_ms=d["took_ms"])
            self.log("  [3] DELAY 20 ms answered in %.2f ms" % d["took_ms"])

    def section_2(self, stage, ctx, runtimes):
        self.log("== 2: pinned to one CPU (taskset-style affinity {0})")
        with Bench(stage, ctx, runtimes, cpus={0}) as bench:
            self.sequential(bench, runtimes, "2", pinned=True)

    def section_4(self, stage, ctx, runtimes):
        a = self.args
        for workers in a.workers:
            self.log("== 4: wrk, %d worker(s), %d s per run, median of %d"
                     % (workers, a.duration, a.wrk_runs))
            with Bench(stage, ctx, runtimes, workers=workers) as bench:
                targets = [("plain", "/plain", False), ("yield", "/yield", False)]
                targets += [(rt["name"], "/call/" + rt["name"], False) for rt in runtimes]
                targets += [(b["name"], "/proxy/" + b["proto"], True) for b in BASELINES]
                live = []
                for name, path, side in targets:
                    try:
                        bench.get(path)
                        wrk(bench.nginx.url(path), 16, 1)   # warm every worker
                    except Exception as e:  # noqa: BLE001
                        if name in ("plain", "yield", "rust-echo", "go-echo") or side:
                            raise
                        self.failed[("4", name)] = str(e).splitlines()[0][:200]
                        continue
                    live.append((name, path, side))
                self.throughput(bench, live, workers, busy=False)
                if a.busy:
                    self.log("== 4: the same, one CPU kept busy by an unrelated process")
                    with cpu_hog():
                        self.throughput(bench, [t for t in live if t[0] in BUSY_TARGETS],
                                        workers, busy=True)

    def throughput(self, bench, targets, workers, busy):
        """wrk against each target, `--wrk-runs` times per connection count,
        the targets in turn (reversed every other round, so drift hits all
        alike); the run with the median req/s is kept, all are printed."""
        a = self.args
        for conns in a.connections:
            runs = {name: [] for name, _, _ in targets}
            for i in range(a.wrk_runs):
                for name, path, side in (targets if i % 2 == 0 else targets[::-1]):
                    pids = bench.pids(side)
                    c0 = cpu_ns(pids)
                    w = wrk(bench.nginx.url(path), conns, a.duration)
                    c1 = cpu_ns(pids)
                    w["cpu"] = (c1 - c0) / 1e3 / (w["requests"] or 1)
                    runs[name].append(w)
                    self.log("  [4] %-15s w%d c%-4d%s %10.0f req/s  cpu %6.2f us/req%s"
                             % (name, workers, conns, " busy" if busy else "", w["rps"],
                                w["cpu"], "  ERRORS %d" % w["errors"] if w["errors"] else ""))
            for name, _, _ in targets:
                ordered = sorted(runs[name], key=lambda w: w["rps"])
                med = ordered[len(ordered) // 2]
                self.add(bench="throughput", section="4", runtime=name, payload=512,
                         connections=conns, workers=workers, cpus=self.cpus, busy=busy,
                         rps=med["rps"], errors=sum(w["errors"] for w in runs[name]),
                         cpu_us_per_request=med["cpu"],
                         runs_rps=[round(w["rps"]) for w in runs[name]])

    def section_7(self, stage, ctx, runtimes):
        a = self.args
        self.log("== 7: streaming, one stream read to the end, 1 worker")
        streaming = [rt for rt in runtimes if rt.get("stream")]
        with Bench(stage, ctx, streaming) as bench:
            for size, n in a.stream_sizes:
                for rt in streaming + [dict(name="socket-stream")]:
                    if rt["name"] == "socket-stream":
                        path = "/stream_socket?" + urllib.parse.urlencode(dict(
                            path=bench.proxy.path("msgpack"), n=n, size=size))
                    else:
                        path = "/stream_ffi?" + urllib.parse.urlencode(dict(
                            lib=rt["lib"], cfg=bench.cfg(rt), n=n, size=size,
                            req=rt["stream"].format(n=n, size=size)))
                    try:
                        bench.get(path)   # warm
                        runs = [json.loads(bench.get(path)) for _ in range(a.reps)]
                    except Exception as e:  # noqa: BLE001 (reported, not hidden)
                        if rt.get("required") or rt["name"] == "socket-stream":
                            raise
                        self.failed[("7", rt["name"])] = str(e).splitlines()[0][:200]
                        continue
                    runs.sort(key=lambda r: r["secs"])
                    r = runs[len(runs) // 2]
                    rec = self.add(
                        bench="stream", section="7", runtime=rt["name"], payload=size,
                        chunks=r["chunks"], workers=1, cpus=self.cpus,
                        chunks_per_s=r["chunks_per_s"], mb_per_s=r["mb_per_s"],
                        ttfb_us=r["ttfb_us"],
                        runs_chunks_per_s=[round(x["chunks_per_s"]) for x in runs])
                    self.log("  [7] %-15s %6d B x %-6d %10.0f chunks/s %9.1f MB/s  "
                             "first chunk %7.1f us" % (rt["name"], size, n,
                                                       rec["chunks_per_s"], rec["mb_per_s"],
                                                       rec["ttfb_us"]))

    def section_6(self, stage, ctx, runtimes):
        a = self.args
        self.log("== 6: the bridge alone (bench-bridge-host, %d calls)" % a.calls)
        host = os.path.join(RELEASE, "bench-bridge-host")
        core = os.path.join(stage.lib, "libresty_ffi.so")
        for rt in runtimes:
            lib = harness_find(stage, rt["lib"])
            for payload in a.bridge_payloads:
                cmd = [host, "--core", core, "--lib", lib, "--name", rt["name"],
                       "--payload", str(payload), "--calls", str(a.calls * 5),
                       "--batch", "64"]
                cfg = runtime_cfg(rt, stage, ctx)
                if cfg:
                    cmd += ["--cfg", cfg]
                try:
                    env = dict(os.environ)
                    if "java_classpath" in ctx:
                        env["CLASSPATH"] = ctx["java_classpath"]
                    p = subprocess.run(cmd, capture_output=True, timeout=120, check=True,
                                       env=env)
                except subprocess.SubprocessError as e:
                    if rt["required"]:
                        raise RuntimeError("%s: %s" % (" ".join(cmd), getattr(e, "stderr", e)))
                    self.failed[("6", rt["name"])] = str(getattr(e, "stderr", e))[:200]
                    continue
                for line in p.stdout.decode().splitlines():
                    r = json.loads(line)
                    r["section"] = "6"
                    self.records.append(r)
                    if r["mode"] == "roundtrip":
                        self.log("  [6] %-15s %7d B  roundtrip p50 %6.2f us  p99 %7.2f us  "
                                 "cpu %6.2f us" % (rt["name"], payload, r["p50_us"],
                                                   r["p99_us"], r["cpu_us_per_call"]))
                    else:
                        self.log("  [6] %-15s %7d B  batch of 64: %10.0f calls/s  cpu %6.2f us"
                                 % (rt["name"], payload, r["rps"], r["cpu_us_per_call"]))

    def section_5(self, stage):
        a = self.args
        self.log("== 5: gRPC SayHello, Lua (resty.ffi.grpc) vs native tonic, %d calls"
                 % a.calls)
        stage.add_lib(release_lib("libffi_grpc.so"))
        proto = stage.add_tree(os.path.join(ROOT, "examples", "grpc", "proto"), "proto")
        server = subprocess.Popen([os.path.join(RELEASE, "grpc_test_server")],
                                  stdout=subprocess.PIPE, text=True)
        nginx = None
        try:
            line = server.stdout.readline()
            if not line.startswith("listening on "):
                raise RuntimeError("grpc_test_server did not start: %r" % line)
            addr = line.split()[-1]
            nginx = grpc_nginx(stage, proto)
            worker_pids = nginx.worker_pids()
            native = os.path.join(RELEASE, "grpc_bench_client")

            def lua(path, **q):
                pids = worker_pids + [server.pid]
                c0 = cpu_ns(pids)
                status, body = nginx.get(path + "?" + urllib.parse.urlencode(
                    dict(q, addr=addr)), timeout=600)
                c1 = cpu_ns(pids)
                if status != 200:
                    raise RuntimeError("%s: %d %s\n%s" % (path, status, body[:300],
                                                          nginx.error_log()[-2000:]))
                rec = json.loads(body)
                rec["cpu_us_per_call"] = (c1 - c0) / 1e3 / rec["calls"]
                return rec

            def tonic(n, conc):
                c0 = cpu_ns([server.pid])
                p = subprocess.run([native, addr, str(n), str(conc)], capture_output=True,
                                   text=True, timeout=600, check=True)
                rec = json.loads(p.stdout)
                rec["server_cpu_us_per_call"] = (cpu_ns([server.pid]) - c0) / 1e3 / rec["calls"]
                return rec

            for mode, conc in (("sequential", 1), ("concurrent", 64)):
                lua_runs, native_runs = [], []
                for rep in range(a.reps):
                    # Lua first in even reps, native first in odd ones: the
                    # one that runs second does not always find the server
                    # (and the machine) warmed by the other
                    for side in ((0, 1) if rep % 2 == 0 else (1, 0)):
                        if side == 1:
                            native_runs.append(tonic(a.calls, conc))
                        elif conc == 1:
                            lua_runs.append(lua("/grpc/seq", n=a.calls))
                        else:
                            lua_runs.append(lua("/grpc/conc", n=a.calls, c=conc))
                key = "wall_us_per_call" if conc == 1 else "us_per_call"
                lr = sorted(lua_runs, key=lambda r: r[key])[len(lua_runs) // 2]
                nr = sorted(native_runs, key=lambda r: r["us_per_call"])[len(native_runs) // 2]
                lua_us = lr[key]
                for name, r, us in (("lua-grpc", lr, lua_us),
                                    ("tonic-native", nr, nr["us_per_call"])):
                    rec = self.add(bench="grpc-" + mode, section="5", runtime=name,
                                   calls=r["calls"], concurrency=conc, workers=1,
                                   cpus=self.cpus, us_per_call=us, rate=1e6 / us,
                                   p50_us=r.get("p50_us"), p99_us=r.get("p99_us"),
                                   runs_us=[round(x.get(key, x.get("us_per_call")), 3)
                                            for x in (lua_runs if name == "lua-grpc"
                                                      else native_runs)])
                    self.log("  [5] %-12s %-10s c%-3d %8.2f us/call  %9.0f calls/s"
                             % (name, mode, conc, rec["us_per_call"], rec["rate"]))
        finally:
            if nginx:
                nginx.stop()
            harness.terminate(server, 5)


def harness_find(stage, lib):
    for name in ("lib%s.so" % lib, "%s.so" % lib):
        path = os.path.join(stage.lib, name)
        if os.path.exists(path):
            return path
    return lib


# What the busy-CPU variant of section 4 measures (the targets).
BUSY_TARGETS = ("plain", "yield", "rust-echo")


@contextlib.contextmanager
def cpu_hog():
    """One process that keeps a CPU busy (unrelated to nginx: a shell loop,
    not pinned) while the body runs."""
    hog = subprocess.Popen(["sh", "-c", "while :; do :; done"])
    try:
        time.sleep(0.5)
        yield
    finally:
        hog.kill()
        hog.wait()


def wrk(url, conns, duration):
    threads = min(2, conns)
    cmd = ["wrk", "-t%d" % threads, "-c%d" % conns, "-d%ds" % duration,
           "--timeout", "5s", url]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30)
    out = p.stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    n = re.search(r"(\d+) requests in", out)
    if p.returncode != 0 or not m or not n:
        raise RuntimeError("wrk failed: %s %s" % (out, p.stderr))
    errors = 0
    e = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if e:
        errors += int(e.group(1))
    s = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if s:
        errors += sum(int(x) for x in s.groups())
    return dict(rps=float(m.group(1)), requests=int(n.group(1)), errors=errors)


# ---- build and stage ---------------------------------------------------------

def build(args):
    if args.no_build or os.environ.get("RESTY_FFI_SKIP_BUILD") == "1":
        return
    # the whole workspace, as ci/test.sh builds it, so that after CI's build
    # this is a no-op: a subset (-p ...) unifies features differently and
    # rebuilds shared crates (prost-build, tempfile)
    whole = subprocess.run(["cargo", "build", "--release", "--workspace"], cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if whole.returncode != 0:
        # a machine without some loader's build needs (libnode headers, ...):
        # the required set, then each optional loader on its own, where a
        # failed build means "not built", never a failed run
        harness.run(["cargo", "build", "--release", "-p", "resty-ffi", "-p", "ffi-echo",
                     "-p", "resty-ffi-benches", "-p", "ffi-grpc", "-p", "grpc-examples"])
        for pkg in ("ffi-python3", "ffi-java", "ffi-nodejs"):
            subprocess.run(["cargo", "build", "--release", "-p", pkg], cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    harness.run(["go", "build", "-buildmode=c-shared", "-o", "libffi_go_echo.so", "echo.go"],
                cwd=os.path.join(ROOT, "examples", "go"))


def stage_all(args):
    stage = harness.Stage()
    ctx = {}
    stage.add_lib(release_lib("libresty_ffi.so"))
    stage.add_tree(os.path.join(HERE, "lua"), "lua")
    runtimes = []
    skipped = {}
    for rt in RUNTIMES:
        if args.runtimes and rt["name"] not in args.runtimes:
            continue
        if rt.get("variant") and not args.runtimes:
            continue    # variants run only when named with --runtimes
        try:
            rt["stage"](stage, ctx)
        except NotBuilt as e:
            if rt["required"]:
                stage.remove()
                raise RuntimeError("%s is required and %s" % (rt["name"], e))
            skipped[rt["name"]] = str(e)
            continue
        runtimes.append(rt)
    stage.world_readable()
    return stage, ctx, runtimes, skipped


# ---- report -------------------------------------------------------------------

def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) // (1024 * 1024)
    nginx = subprocess.run([harness.NGINX, "-v"], capture_output=True, text=True).stderr.strip()
    return dict(cpus=os.cpu_count(), model=model, mem_gib=mem,
                kernel=platform.release(), nginx=nginx.replace("nginx version: ", ""),
                load=os.getloadavg())


def fmt(v, digits=2):
    if v is None:
        return "-"
    if v >= 100:
        return "%.0f" % v
    return "%.*f" % (digits, v)


def ratio(base, v):
    if not base or not v:
        return "-"
    return "%.1fx" % (base / v)


def vs(r, base):
    """r's req/s over base's: the median of the per-round ratios when both
    were measured round by round (the runs of one round ran back to back,
    so the machine's drift cancels), else the ratio of the medians."""
    a, b = r.get("runs_rps"), base.get("runs_rps")
    if a and b and len(a) == len(b):
        return statistics.median(x / y for x, y in zip(a, b) if y)
    return r["rps"] / base["rps"]


def find(records, **kw):
    for r in records:
        if all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def seq_table(run, section, pinned):
    recs = [r for r in run.records if r.get("section") == section and r["bench"] == "sequential"]
    if not recs:
        return []
    names = []
    for r in recs:
        if r["runtime"] not in names:
            names.append(r["runtime"])
    lines = ["| runtime | payload | wall µs/call | p50 µs | p99 µs | CPU µs/call "
             "| speed-up vs %s (wall) | CPU vs %s | answered spinning |"
             % (BASELINE, BASELINE),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for payload in sorted({r["payload"] for r in recs}):
        base = find(recs, runtime=BASELINE, payload=payload)
        for name in names:
            r = find(recs, runtime=name, payload=payload)
            if not r:
                continue
            lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                name, human(payload), fmt(r["wall_us_per_call"]), fmt(r["p50_us"]),
                fmt(r["p99_us"]), fmt(r["cpu_us_per_call"]),
                ratio(base and base["wall_us_per_call"], r["wall_us_per_call"]),
                ratio(base and base["cpu_us_per_call"], r["cpu_us_per_call"]),
                spun_share(r)))
    return lines


def spun_share(r):
    """Share of a sequential loop's calls answered while the caller spun
    (the rest parked and were handed over by the dispatcher)."""
    if "spun" not in r:
        return "-"
    done = r["spun"] + r["parked"]
    return "%.0f%%" % (100.0 * r["spun"] / done) if done else "-"


def human(n):
    return "%d KiB" % (n // KIB) if n >= KIB and n % KIB == 0 else "%d B" % n


def report(run, mach, stage_runtimes):
    a = run.args
    L = ["# resty-ffi benchmark results", ""]
    L.append("Run %s, mode %s: %d calls per loop, median of %d loop(s); wrk %d s per run."
             % (datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
                "quick" if a.quick else "full", a.calls, a.reps, a.duration))
    L.append("")
    L.append("Machine: %d CPUs (%s), %d GiB, Linux %s, nginx %s; load average at start "
             "%.2f / %.2f / %.2f." % (mach["cpus"], mach["model"], mach["mem_gib"],
                                      mach["kernel"], mach["nginx"], *mach["load"]))
    L.append("")
    if run.skipped:
        L.append("| runtime | status |")
        L.append("|---|---|")
        for name, why in run.skipped.items():
            L.append("| %s | not built (%s) |" % (name, why))
        L.append("")
    if run.failed:
        L.append("| section | runtime | failed |")
        L.append("|---|---|---|")
        for (sec, name), why in run.failed.items():
            L.append("| %s | %s | %s |" % (sec, name, why.replace("|", "/")))
        L.append("")
    t = seq_table(run, "1", False)
    if t:
        L += ["## 1 + 3. Sequential echo from one Lua request, 1 worker", "",
              "One request loops N calls; wall from clock_gettime in Lua, CPU = worker "
              "process (all threads: runtime threads included) + proxy server, from "
              "/proc/*/task/*/schedstat.", ""] + t + [""]
    ping = find(run.records, bench="rpc-ping")
    delay = find(run.records, bench="rpc-delay")
    if ping or delay:
        L += ["MessagePack RPC commands: "
              + ("PING %s µs/call (p50 %s, CPU %s µs); " % (
                  fmt(ping["wall_us_per_call"]), fmt(ping["p50_us"]),
                  fmt(ping["cpu_us_per_call"])) if ping else "")
              + ("DELAY 20 ms answered in %.2f ms." % delay["took_ms"] if delay else ""), ""]
    t = seq_table(run, "2", True)
    if t:
        L += ["## 2. Pinned to one CPU (nginx, runtime threads and proxy server on CPU 0)",
              "", "Nothing spins here (the core checks sched_getaffinity): "
              "each side yields the CPU once instead.", ""] + t + [""]
    thr = [r for r in run.records if r["bench"] == "throughput" and not r.get("busy")]
    if thr:
        L += ["## 4. Throughput (wrk, 512 B answers)", "",
              "Median of %d wrk run(s) each (req/s of every run in results.json, "
              "`runs_rps`); the ratios are medians of each round's ratio (one "
              "round runs every location back to back)." % a.wrk_runs, "",
              "`yield` is the plain answer after one bare `ngx.sleep(0)`: no thread, "
              "no runtime, the least a call that does not block the worker costs in "
              "nginx-lua; \"vs yield\" is each row against it.", "",
              "| workers | connections | location | req/s | vs plain Lua | vs yield | vs %s "
              "| CPU µs/req | errors |"
              % BASELINE, "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
        for workers in sorted({r["workers"] for r in thr}):
            for conns in sorted({r["connections"] for r in thr}):
                plain = find(thr, runtime="plain", workers=workers, connections=conns)
                floor = find(thr, runtime="yield", workers=workers, connections=conns)
                proxy = find(thr, runtime=BASELINE, workers=workers, connections=conns)
                for r in thr:
                    if r["workers"] != workers or r["connections"] != conns:
                        continue
                    L.append("| %d | %d | %s | %.0f | %s | %s | %s | %s | %d |" % (
                        workers, conns, r["runtime"], r["rps"],
                        "%.0f%%" % (100 * vs(r, plain)) if plain else "-",
                        "%.0f%%" % (100 * vs(r, floor)) if floor else "-",
                        "%.2fx" % vs(r, proxy) if proxy else "-",
                        fmt(r["cpu_us_per_request"]), r["errors"]))
        L.append("")
    busy = [r for r in run.records if r["bench"] == "throughput" and r.get("busy")]
    if busy:
        L += ["### 4, one CPU kept busy by an unrelated process", "",
              "A shell loop (`while :; do :; done`, not pinned) runs beside nginx, "
              "the runtime and wrk.", "",
              "| workers | connections | location | req/s | vs plain Lua | quiet: vs plain | "
              "busy / quiet ratio | CPU µs/req |", "|---:|---:|---|---:|---:|---:|---:|---:|"]
        for r in busy:
            plain = find(busy, runtime="plain", workers=r["workers"],
                         connections=r["connections"])
            qr, qp = (find(thr, runtime=n, workers=r["workers"], connections=r["connections"])
                      for n in (r["runtime"], "plain"))
            ratio_busy = vs(r, plain) if plain else None
            ratio_quiet = vs(qr, qp) if qr and qp else None
            L.append("| %d | %d | %s | %.0f | %s | %s | %s | %s |" % (
                r["workers"], r["connections"], r["runtime"], r["rps"],
                "%.0f%%" % (100 * ratio_busy) if ratio_busy else "-",
                "%.0f%%" % (100 * ratio_quiet) if ratio_quiet else "-",
                "%.2f" % (ratio_busy / ratio_quiet) if ratio_busy and ratio_quiet else "-",
                fmt(r["cpu_us_per_request"])))
        L.append("")
    g = [r for r in run.records if r.get("section") == "5"]
    if g:
        L += ["## 5. gRPC: SayHello from Lua (resty.ffi.grpc) vs native tonic", "",
              "Same server (grpc_test_server, tonic), same run. Lua: one nginx worker, "
              "one connection; native: grpc_bench_client (tonic on tokio's "
              "multi-threaded runtime, one channel), in turn, which one goes first "
              "alternating from loop to loop. Median of the loops.", "",
              "| calls | concurrency | client | µs/call | calls/s | p50 µs | p99 µs | vs tonic |",
              "|---|---:|---|---:|---:|---:|---:|---:|"]
        for mode in ("sequential", "concurrent"):
            nat = find(g, bench="grpc-" + mode, runtime="tonic-native")
            for r in g:
                if r["bench"] != "grpc-" + mode:
                    continue
                L.append("| %s | %d | %s | %s | %.0f | %s | %s | %s |" % (
                    mode, r["concurrency"], r["runtime"], fmt(r["us_per_call"]), r["rate"],
                    fmt(r["p50_us"]) if r.get("p50_us") else "-",
                    fmt(r["p99_us"]) if r.get("p99_us") else "-",
                    "%+.0f%%" % (100 * (r["us_per_call"] / nat["us_per_call"] - 1))
                    if nat else "-"))
        L.append("")
    br = [r for r in run.records if r["bench"] == "bridge"]
    if br:
        L += ["## 6. The bridge alone (no nginx): bench-bridge-host", "",
              "| runtime | payload | round-trip p50 µs | p99 µs | mean µs | CPU µs/call "
              "| parked | batch-64 calls/s | batch CPU µs/call |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in br:
            if r["mode"] != "roundtrip":
                continue
            b = find(br, mode="batch", runtime=r["runtime"], payload=r["payload"])
            L.append("| %s | %s | %s | %s | %s | %s | %.1f%% | %s | %s |" % (
                r["runtime"], human(r["payload"]), fmt(r["p50_us"]), fmt(r["p99_us"]),
                fmt(r["wall_us_per_call"]), fmt(r["cpu_us_per_call"]),
                100 * r["parked_share"], "%.0f" % b["rps"] if b else "-",
                fmt(b["cpu_us_per_call"]) if b else "-"))
        L.append("")
    st = [r for r in run.records if r["bench"] == "stream"]
    if st:
        L += ["## 7. Streaming: one stream read to the end, 1 worker", "",
              "Runtime to Lua through rt:__stream / st:recv (the Rust echo's "
              "`!stream` mode), against the proxy model streaming the same bytes as "
              "length-prefixed frames on a held-open unix socket. Median of the runs.", "",
              "| runtime | chunk | chunks | chunks/s | MB/s | first chunk µs | vs socket |",
              "|---|---:|---:|---:|---:|---:|---:|"]
        for size in sorted({r["payload"] for r in st}):
            base = find(st, runtime="socket-stream", payload=size)
            for r in st:
                if r["payload"] != size:
                    continue
                L.append("| %s | %s | %d | %.0f | %.1f | %s | %s |" % (
                    r["runtime"], human(size), r["chunks"], r["chunks_per_s"],
                    r["mb_per_s"], fmt(r["ttfb_us"]),
                    "%.1fx" % (r["chunks_per_s"] / base["chunks_per_s"]) if base else "-"))
        L.append("")
    L += targets(run)
    L += floor_table(run)
    return "\n".join(L) + "\n"


def floor_table(run):
    """Section 4's gap to plain Lua split at the bare yield: what any call
    that does not block the worker pays in nginx-lua, and what the Rust
    echo call adds to it (output only)."""
    thr = [r for r in run.records if r["bench"] == "throughput" and not r.get("busy")]
    rows = []
    for workers in sorted({r["workers"] for r in thr}):
        for conns in sorted({r["connections"] for r in thr}):
            q = dict(workers=workers, connections=conns, busy=False)
            plain, floor, rust = (find(thr, runtime=n, **q)
                                  for n in ("plain", "yield", "rust-echo"))
            if not (plain and floor and rust):
                continue
            rows.append("| %d | %d | %.0f%% | %+.2f | %.0f%% | %.0f%% | %+.2f |" % (
                workers, conns, 100 * vs(floor, plain),
                floor["cpu_us_per_request"] - plain["cpu_us_per_request"],
                100 * vs(rust, plain), 100 * vs(rust, floor),
                rust["cpu_us_per_request"] - floor["cpu_us_per_request"]))
    if not rows:
        return []
    return ["## Section 4's gap: the yield, then the call", "",
            "A bare yield (`ngx.sleep(0)`, no thread) against plain Lua, and the Rust "
            "echo call against both: the yield's share is nginx-lua's, paid by any "
            "call that does not block the worker; the rest is the call's own "
            "(the bridge, the runtime's thread, its wake-ups).", "",
            "| workers | connections | yield vs plain | yield CPU µs/req over plain "
            "| call vs plain | call vs yield | call CPU µs/req over yield |",
            "|---:|---:|---:|---:|---:|---:|---:|"] + rows + [""]


def targets(run):
    """The issue's targets, each with its measured value (output only)."""
    recs = run.records
    rows = []

    def speedup(section, runtime, payload):
        r = find(recs, section=section, bench="sequential", runtime=runtime, payload=payload)
        b = find(recs, section=section, bench="sequential", runtime=BASELINE, payload=payload)
        if r and b:
            return b["wall_us_per_call"] / r["wall_us_per_call"], r
        return None, r

    def check(name, value, goal, shown):
        if value is None:
            rows.append("| %s | not measured | - |" % name)
        else:
            rows.append("| %s | %s | %s |" % (name, shown, "met" if value >= goal else "MISSED"))

    s, r = speedup("1", "rust-echo", 512)
    check("Rust echo >= 40x socket at 512 B", s, 40, "%.1fx" % s if s else "")
    if r:
        check("Rust echo p50 <= 1 µs at 512 B", 1 / r["p50_us"], 1, "%.2f µs" % r["p50_us"])
    s, _ = speedup("1", "rust-echo", 100 * KIB)
    check("Rust echo >= 10x socket at 100 KiB", s, 10, "%.1fx" % s if s else "")
    s, _ = speedup("2", "rust-echo", 512)
    check("pinned: Rust echo >= 3x socket at 512 B", s, 3, "%.1fx" % s if s else "")
    for name, goal in (("go-echo", 10), ("java-jni", 10), ("java-handler", 10),
                       ("python-handler", 5), ("python-cffi", 3),
                       ("node-compat", 10), ("node-handler", 5)):
        s, _ = speedup("1", name, 512)
        check("%s >= %dx socket at 512 B" % (name, goal), s, goal, "%.1fx" % s if s else "")
    thr = [r for r in recs if r["bench"] == "throughput"]
    for workers, goal in ((1, 0.85), (2, 0.75)):
        for conns in (16, 64, 256):
            q = dict(workers=workers, connections=conns)
            plain = find(thr, runtime="plain", busy=False, **q)
            rust = find(thr, runtime="rust-echo", busy=False, **q)
            if not (plain and rust):
                continue
            v = vs(rust, plain)
            check("wrk -c%d %d worker(s): Rust call >= %.0f%% of plain Lua"
                  % (conns, workers, 100 * goal), v, goal, "%.0f%%" % (100 * v))
            d = rust["cpu_us_per_request"] - plain["cpu_us_per_request"]
            check("wrk -c%d %d worker(s): Rust call CPU within 2 µs of plain" % (conns, workers),
                  -d, -2, "%+.2f µs" % d)
            bplain = find(thr, runtime="plain", busy=True, **q)
            brust = find(thr, runtime="rust-echo", busy=True, **q)
            if bplain and brust:
                b = vs(brust, bplain) / v
                check("wrk -c%d %d worker(s), one CPU busy: ratio within 10%% of quiet"
                      % (conns, workers), b, 0.9, "%.2f of quiet" % b)
    plain = find(thr, runtime="plain", busy=False, workers=1, connections=64)
    rust = find(thr, runtime="rust-echo", busy=False, workers=1, connections=64)
    proxy = find(thr, runtime=BASELINE, busy=False, workers=1, connections=64)
    if proxy and rust:
        v = vs(rust, proxy)
        check("wrk -c64 1 worker: Rust call >= 2x proxy", v, 2, "%.2fx" % v)
    for mode in ("sequential", "concurrent"):
        lua = find(recs, bench="grpc-" + mode, runtime="lua-grpc")
        nat = find(recs, bench="grpc-" + mode, runtime="tonic-native")
        if lua and nat:
            v = nat["us_per_call"] / lua["us_per_call"]
            check("gRPC %s: Lua within 10%% of native tonic" % mode, v, 1 / 1.1,
                  "%+.0f%%" % (100 * (lua["us_per_call"] / nat["us_per_call"] - 1)))
    for name in ("rust-echo", "python-handler"):
        small = find(recs, bench="stream", runtime=name, payload=64)
        sock_small = find(recs, bench="stream", runtime="socket-stream", payload=64)
        if small and sock_small:
            v = small["chunks_per_s"] / sock_small["chunks_per_s"]
            check("stream %s: 64 B chunks/s >= 10x socket" % name, v, 10, "%.1fx" % v)
        big = find(recs, bench="stream", runtime=name, payload=64 * KIB)
        sock_big = find(recs, bench="stream", runtime="socket-stream", payload=64 * KIB)
        if big and sock_big:
            v = big["mb_per_s"] / sock_big["mb_per_s"]
            check("stream %s: 64 KiB MB/s >= 3x socket" % name, v, 3, "%.1fx" % v)
    if not rows:
        return []
    return ["## Targets", "", "| target | measured | |", "|---|---:|---|"] + rows + [""]


# ---- main ------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="seconds long: small N, one payload, short wrk runs")
    p.add_argument("--calls", type=int, help="calls per sequential loop (20000)")
    p.add_argument("--reps", type=int, help="loops per measurement, median kept (3)")
    p.add_argument("--duration", type=int, help="seconds per wrk run (5)")
    p.add_argument("--wrk-runs", type=int,
                   help="wrk runs per location and connection count, median kept (3)")
    p.add_argument("--busy", action="store_true", default=None,
                   help="section 4 also with one CPU kept busy (default in full runs)")
    p.add_argument("--no-busy", dest="busy", action="store_false",
                   help="section 4 without the busy-CPU variant")
    p.add_argument("--sections", default="1,2,3,4,5,6,7",
                   help="comma-separated sections to run (1 and 3 run together)")
    p.add_argument("--runtimes", help="comma-separated runtime names (default: all)")
    p.add_argument("--out", default=OUT, help="output folder (target/bench)")
    p.add_argument("--no-build", action="store_true", help="use what is built")
    p.add_argument("--no-chart", action="store_true", help="skip the PNG chart")
    p.add_argument("--publish", action="store_true",
                   help="also copy results.md, results.json and echo.png to benches/results/")
    a = p.parse_args(argv)
    a.calls = a.calls or (2000 if a.quick else 20000)
    a.reps = a.reps or (1 if a.quick else 3)
    a.duration = a.duration or (1 if a.quick else 5)
    a.payloads = [512] if a.quick else PAYLOADS
    a.bridge_payloads = [512] if a.quick else [512, 100 * KIB]
    a.connections = [64] if a.quick else [16, 64, 256]
    a.wrk_runs = a.wrk_runs or (1 if a.quick else 3)
    if a.busy is None:
        a.busy = not a.quick
    a.workers = [1] if a.quick else [1, 2]
    # (chunk size, chunks per stream) for section 7
    a.stream_sizes = ([(64, 5000), (64 * KIB, 200)] if a.quick
                      else [(64, 50000), (64 * KIB, 2000)])
    a.sections = set(a.sections.split(","))
    a.runtimes = a.runtimes.split(",") if a.runtimes else None
    for bound, name in ((a.calls, "--calls"), (a.duration, "--duration")):
        if not 0 < bound <= 10**7:
            p.error("%s out of range" % name)
    return a


def main(argv=None):
    a = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every `finally` stops its processes
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    build(a)
    os.makedirs(a.out, exist_ok=True)
    mach = machine()
    run = Run(a)
    stage, ctx, runtimes, run.skipped = stage_all(a)
    for name, why in run.skipped.items():
        print("  %-15s not built: %s" % (name, why))
    try:
        if a.sections & {"1", "3"}:
            run.sections_1_3(stage, ctx, runtimes)
        if "2" in a.sections:
            run.section_2(stage, ctx, runtimes)
        if "6" in a.sections:
            run.section_6(stage, ctx, runtimes)
        if "4" in a.sections:
            run.section_4(stage, ctx, runtimes)
        if "5" in a.sections:
            run.section_5(stage)
        if "7" in a.sections:
            run.section_7(stage, ctx, runtimes)
    finally:
        stage.remove()
    for r in run.records:
        r.setdefault("machine", {k: mach[k] for k in ("cpus", "model", "kernel")})
        r["run"] = "quick" if a.quick else "full"
    results = os.path.join(a.out, "results.json")
    with open(results, "w") as f:
        json.dump(run.records, f, indent=1)
    md = report(run, mach, runtimes)
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write(md)
    print()
    print(md)
    if not a.no_chart and any(r["bench"] == "sequential" for r in run.records):
        chart = os.path.join(a.out, "echo.png")
        subprocess.run([os.path.join(RELEASE, "bench-chart"), results, chart], check=True)
        print("chart: %s" % chart)
    print("records: %s" % results)
    if a.publish:
        dest = os.path.join(HERE, "results")
        os.makedirs(dest, exist_ok=True)
        for name in ("results.md", "results.json", "echo.png"):
            if os.path.exists(os.path.join(a.out, name)):
                shutil.copy(os.path.join(a.out, name), os.path.join(dest, name))
        print("published to %s" % dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
