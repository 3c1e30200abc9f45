"""The one harness every test uses: builds and stages the project, starts
a real nginx (Debian's nginx-light + lua module) on a free loopback port
with a generated config, and talks HTTP to it.

Workers load libraries, Lua files and interpreters as the unprivileged
worker user (nginx's default when started as root), so everything is staged
into a world-readable temporary folder first: the checkout itself may sit
under /root, which that user cannot enter.

RESTY_FFI_DEBIAN=13 (or 12) runs the nginx-facing suites inside a Debian
root of that release instead (see DebianRoot): its own nginx, lua module,
lua-resty-core, Python and JVM, with the resty-ffi package built for it
(ci/package.sh --debian N) installed by apt, so the Lua files and libraries
under test are the ones the package put there. nginx runs chrooted and is
driven from outside over loopback; the host's /tmp is bound into the root,
so the stage and nginx prefixes have the same paths on both sides.
"""

import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# RESTY_FFI_NGINX picks the nginx binary (an OpenResty build, say); by
# default Debian's nginx with the dynamic lua module.
NGINX = os.environ.get("RESTY_FFI_NGINX") or shutil.which("nginx") or "/usr/sbin/nginx"
MODULES = "/usr/lib/nginx/modules"
HOST_RELEASE = int(open("/etc/debian_version").read().split(".")[0])
# RESTY_FFI_DEBIAN=N: run nginx inside a Debian N root (None: the host's)
DEBIAN = int(os.environ["RESTY_FFI_DEBIAN"]) if os.environ.get("RESTY_FFI_DEBIAN") else None
# what each release's packages give: the Python the loader embeds, the
# default JDK's major version, libnode's Node major, nginx's major.minor,
# lua-nginx-module's version (as ngx.config reports them) and
# lua-resty-core's (ngx.semaphore, which the call path waits on, is one of
# its modules; it refuses to load with any lua module but the one it was
# released with)
RELEASES = {12: {"codename": "bookworm", "python": "3.11", "java": 17, "node": 18,
                 "libnode": "libnode108", "nginx": 1022, "ngx_lua": 10023,
                 "resty_core": "0.1.25"},
            13: {"codename": "trixie", "python": "3.13", "java": 21, "node": 20,
                 "libnode": "libnode115", "nginx": 1026, "ngx_lua": 10028,
                 "resty_core": "0.1.31"}}
TARGET = RELEASES[DEBIAN or HOST_RELEASE]
PYTHON_VERSION = TARGET["python"]
PYTHON = "/usr/bin/python" + PYTHON_VERSION
JAVA_MAJOR = TARGET["java"]
# the package's library folder (Debian's nginx-lua cpath)
PACKAGE_LIB = "/usr/lib/x86_64-linux-gnu/lua/5.1"


def lua_compiled_in(binary=NGINX):
    """True when the nginx binary has the lua module built in (OpenResty),
    so no load_module lines are written."""
    out = subprocess.run([binary, "-V"], capture_output=True, text=True).stderr
    return bool(re.search(r"--add-module=\S*lua", out))


def load_module_lines(root=None):
    # a root's nginx is Debian's with dynamic modules (its modules-enabled
    # files name them relative to the prefix, which -p moves)
    if root is None and lua_compiled_in():
        return ""
    return ("load_module %s/ndk_http_module.so;\n"
            "load_module %s/ngx_http_lua_module.so;" % (MODULES, MODULES))


def run(cmd, cwd=ROOT, env=None):
    subprocess.run(cmd, cwd=cwd, check=True, env=env)


def build_all():
    """Builds the Rust workspace (release) and the Go example runtime."""
    if os.environ.get("RESTY_FFI_SKIP_BUILD") != "1":
        run(["cargo", "build", "--release", "--workspace"])
        for name in ("echo", "stream"):
            run(["go", "build", "-buildmode=c-shared", "-o", "libffi_go_%s.so" % name,
                 name + ".go"], cwd=os.path.join(ROOT, "examples", "go"))
    return os.path.join(ROOT, "target", "release")


class Stage:
    """A world-readable folder with lib/ (shared libraries) and lua/.

    With a DebianRoot, lua/ holds only the tests' own modules (resty-ffi's
    come from the package, on the root's default path) and a library the
    package installed is linked, not copied: lib/X.so -> the package's X.so.
    """

    def __init__(self, root=None):
        self.root = root
        self.dir = tempfile.mkdtemp(prefix="resty-ffi-stage-")
        os.chmod(self.dir, 0o755)
        self.lib = os.path.join(self.dir, "lib")
        self.lua = os.path.join(self.dir, "lua")
        os.makedirs(self.lib)
        if root is None:
            shutil.copytree(os.path.join(ROOT, "lua"), self.lua)
        shutil.copytree(os.path.join(ROOT, "tests", "lua"), self.lua, dirs_exist_ok=True)
        self.world_readable()

    def add_lib(self, path, name=None):
        dest = os.path.join(self.lib, name or os.path.basename(path))
        packaged = PACKAGE_LIB + "/" + os.path.basename(path)
        if self.root and os.path.exists(self.root.path(packaged)):
            os.symlink(packaged, dest)
            return dest
        shutil.copy(path, dest)
        os.chmod(dest, 0o755)
        return dest

    def add_tree(self, src, name):
        dest = os.path.join(self.dir, name)
        shutil.copytree(src, dest, dirs_exist_ok=True)
        self.world_readable()
        return dest

    def world_readable(self):
        for top, dirs, files in os.walk(self.dir):
            for d in dirs:
                os.chmod(os.path.join(top, d), 0o755)
            for f in files:
                p = os.path.join(top, f)
                if not os.path.islink(p):   # links into a DebianRoot
                    os.chmod(p, os.stat(p).st_mode | 0o444)

    def remove(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def sh(*cmd, **kw):
    """Runs a command, returns its stdout; raises with its stderr on failure."""
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise RuntimeError("%s exited %d:\n%s" % (" ".join(cmd), p.returncode, p.stderr[-4000:]))
    return p.stdout


_packages = {}


def debian_package(release):
    """The .deb for Debian `release` (ci/package.sh [--debian N]), built
    once per test session. The host's release packages target/release
    (built by build_all); another release compiles in its build root unless
    RESTY_FFI_SKIP_BUILD=1, which takes that root's last build."""
    if release not in _packages:
        if release == HOST_RELEASE:
            build_all()
            env = dict(os.environ, RESTY_FFI_SKIP_BUILD="1")
            out = sh("bash", os.path.join(ROOT, "ci", "package.sh"), env=env)
        else:
            out = sh("bash", os.path.join(ROOT, "ci", "package.sh"), "--debian", str(release))
        _packages[release] = out.strip().splitlines()[-1]
    return _packages[release]


class DebianRoot:
    """A throwaway Debian root: an overlay over a cached clean root
    (ci/debian-root.sh --debian N --kind K), so whatever a test installs or
    writes vanishes with it and the cache stays clean. Needs root (mount,
    chroot). `binds` are host folders bound at the same path inside
    (read-only unless listed in `writable`). Use as a context manager or
    call close()."""

    def __init__(self, release, kind="run", binds=(), writable=()):
        self.release = release
        base = sh("bash", os.path.join(ROOT, "ci", "debian-root.sh"),
                  "--debian", str(release), "--kind", kind).strip().splitlines()[-1]
        self.work = tempfile.mkdtemp(prefix="resty-ffi-root-", dir="/var/tmp")
        self.dir = os.path.join(self.work, "merged")
        for d in ("upper", "overlay-work", "merged"):
            os.makedirs(os.path.join(self.work, d))
        self.mounts = []
        try:
            self._mount(["-t", "overlay", "overlay", "-o",
                         "lowerdir=%s,upperdir=%s/upper,workdir=%s/overlay-work"
                         % (base, self.work, self.work)], self.dir)
            self._mount(["-t", "proc", "proc"], self.path("/proc"))
            for src in binds:
                dest = self.path(src)
                os.makedirs(dest, exist_ok=True)
                self._mount(["--bind", src], dest)
                if src not in writable:
                    subprocess.run(["mount", "-o", "remount,bind,ro", dest], check=True)
        except Exception:
            self.close()
            raise

    def _mount(self, args, dest):
        subprocess.run(["mount"] + args + [dest], check=True)
        self.mounts.append(dest)

    def path(self, inside):
        """The host path of `inside` (an absolute path in the root)."""
        return os.path.join(self.dir, inside.lstrip("/"))

    def run(self, *cmd, **kw):
        """Runs cmd chrooted in the root; returns stdout."""
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        return sh("chroot", self.dir, *cmd, env=env, **kw)

    def install(self, deb):
        """apt install of a .deb (its dependencies are already in the root)."""
        shutil.copy(deb, self.path("/var/tmp/resty-ffi.deb"))
        self.run("apt-get", "install", "-y", "-qq", "/var/tmp/resty-ffi.deb")

    def close(self):
        for m in reversed(self.mounts):
            if subprocess.run(["umount", m], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", m], check=False)
        self.mounts = []
        with open("/proc/mounts") as f:
            still = [line.split()[1] for line in f if line.split()[1].startswith(self.work)]
        # never remove a folder with a host folder still bound into it
        if not still:
            shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def suite_root():
    """The root RESTY_FFI_DEBIAN asks the suites to run in (None without
    it): the suite kind (with a venv made by that release's Python), the
    package for that release installed, the host's /tmp bound in (stages
    and nginx prefixes), and Temurin 25 where the host has it (the Java
    suite's JAVA_HOME cases)."""
    if DEBIAN is None:
        return None
    binds = ["/tmp"] + [d for d in ("/usr/lib/jvm/temurin-25-jdk-amd64",) if os.path.isdir(d)]
    root = DebianRoot(DEBIAN, "suite", binds=binds, writable=["/tmp"])
    try:
        root.install(debian_package(DEBIAN))
    except Exception:
        root.close()
        raise
    return root


def terminate(proc, timeout):
    """Stops a child process: SIGTERM, then SIGKILL after `timeout` s."""
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CONF = """\
{user}
worker_processes {workers};
error_log {prefix}/logs/error.log {log_level};
pid {prefix}/logs/nginx.pid;
worker_shutdown_timeout {shutdown_timeout};
{load_modules}
{main}
events {{ worker_connections 4096; }}
http {{
    access_log off;
    # the build's own lua-resty-core (OpenResty's) wins over Debian's folder
    lua_package_path "{stage}/lua/?.lua;;/usr/share/lua/5.1/?.lua";
    lua_package_cpath "{stage}/lib/?.so;;";
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    client_body_buffer_size 4m;
    client_max_body_size 8m;
{http}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
{server}
    }}
}}
"""


# The locations every language loader's tests use: /call (load, then call
# with the POST body; `nil_req=1` sends nil), /unload, /par (n calls at
# once from light threads, counting right answers) and /plain.
LOADER_LOCATIONS = r"""
location /call {
    content_by_lua_block {
        require "resty_ffi"
        local reply = require "t.reply"
        local args = ngx.req.get_uri_args()
        local rt, err = ngx.load_ffi("@LOADER@", args.cfg,
                                     { timeout = tonumber(args.timeout) or 10 })
        if not rt then
            ngx.status = 500
            return ngx.print("load failed: ", err)
        end
        local req = reply.body()
        if args.nil_req then req = nil end
        reply.send(rt:call(req))
    }
}
location /unload {
    content_by_lua_block {
        require "resty_ffi"
        local rt, err = ngx.load_ffi("@LOADER@", ngx.req.get_uri_args().cfg)
        if not rt then
            ngx.status = 500
            return ngx.print("load failed: ", err)
        end
        rt:__unload()
        ngx.print("unloaded")
    }
}
location /par {
    content_by_lua_block {
        require "resty_ffi"
        local args = ngx.req.get_uri_args()
        local rt, err = ngx.load_ffi("@LOADER@", args.cfg, { timeout = 30 })
        if not rt then
            ngx.status = 500
            return ngx.print("load failed: ", err)
        end
        local n = tonumber(args.n)
        local t0 = ngx.now()
        local threads = {}
        for i = 1, n do
            threads[i] = ngx.thread.spawn(function()
                return rt:call(args.req .. i)
            end)
        end
        local good = 0
        for i = 1, n do
            local _, ok, res, e = ngx.thread.wait(threads[i])
            if ok and res == args.want .. i then
                good = good + 1
            else
                ngx.log(ngx.ERR, "call ", i, ": ", tostring(res), " ", tostring(e))
            end
        end
        ngx.update_time()
        ngx.print("good=", good, " elapsed=", ngx.now() - t0)
    }
}
location /name {
    content_by_lua_block {
        require "resty_ffi"
        local rt = assert(ngx.load_ffi("@LOADER@", ngx.req.get_uri_args().cfg))
        ngx.print(rt:__stats().name)
    }
}
location /plain {
    content_by_lua_block { ngx.print("plain") }
}
"""


def loader_locations(loader):
    """LOADER_LOCATIONS for `loader` (the name given to ngx.load_ffi)."""
    return LOADER_LOCATIONS.replace("@LOADER@", loader)


# A location that streams one call's answer (rt:__stream) to the client as
# its chunks arrive: `cfg` and `req`; `wb` / `wc` the window (bytes,
# chunks), `load_timeout` the runtime's call timeout (a stream's default
# bound), `timeout` this stream's; `pause` seconds before the first recv;
# `sizes=1` writes each chunk's size and a comma instead of the chunk,
# `nl=1` a newline after each chunk. The answer ends with "\nEND ok" or
# "\nEND err=<err> rc=<rc>".
STREAM_LOCATION = r"""
location @PATH@ {
    lua_check_client_abort on;
    content_by_lua_block {
        local args = ngx.req.get_uri_args()
        local rt, err = require("resty.ffi").load("@LOADER@", args.cfg,
            { timeout = tonumber(args.load_timeout),
              stream_window_bytes = tonumber(args.wb),
              stream_window_chunks = tonumber(args.wc) })
        if not rt then
            ngx.status = 500
            return ngx.print("load failed: ", err)
        end
        local st, err = rt:__stream(args.req, tonumber(args.timeout))
        if not st then
            ngx.status = 500
            return ngx.print("stream failed: ", err)
        end
        -- the client went away: close the stream now, not at the next
        -- write (a producer waiting between items writes nothing, so
        -- ngx.flush would not see it)
        ngx.on_abort(function()
            st:close()
            ngx.exit(499)
        end)
        if args.pause then
            ngx.sleep(tonumber(args.pause))
        end
        local nl = args.nl and "\n" or ""
        while true do
            local chunk, err, rc = st:recv()
            if not chunk then
                if err then
                    ngx.print("\nEND err=", err, " rc=", tostring(rc))
                else
                    ngx.print("\nEND ok")
                end
                break
            end
            if args.sizes then
                ngx.print(#chunk, ",")
            else
                ngx.print(chunk, nl)
            end
            if not ngx.flush(true) then
                break
            end
        end
        st:close()
    }
}
"""


def stream_location(loader, path="/stream"):
    """STREAM_LOCATION for `loader` at `path`."""
    return STREAM_LOCATION.replace("@LOADER@", loader).replace("@PATH@", path)


# For calls whose request ends while they wait (the client goes away):
# /abandon_stats answers "<waiting> <abandoned>" of ffi.stats(); /parked
# (abandon_locations) calls runtime `cfg` with `req` and no timeout, its
# request ending when the client goes away (lua_check_client_abort);
# /in_flight answers how many tasks of runtime `cfg` the core holds (not
# yet answered by the runtime, or answered and not yet freed).
ABANDON_STATS = r"""
location /abandon_stats {
    content_by_lua_block {
        local s = require("resty.ffi").stats()
        ngx.print(s.waiting, " ", s.abandoned)
    }
}
"""

PARKED = r"""
location /parked {
    lua_check_client_abort on;
    content_by_lua_block {
        local args = ngx.req.get_uri_args()
        local rt = assert(require("resty.ffi").load("@LOADER@", args.cfg))
        local ok, res, err = rt:call(args.req, math.huge)
        ngx.print(tostring(ok), " ", tostring(res), " ", tostring(err))
    }
}
location /in_flight {
    content_by_lua_block {
        local cfg = ngx.req.get_uri_args().cfg
        local rt = assert(require("resty.ffi").load("@LOADER@", cfg))
        ngx.print(rt:__stats().in_flight)
    }
}
"""


def abandon_locations(loader):
    """/parked for `loader`, and /abandon_stats."""
    return PARKED.replace("@LOADER@", loader) + ABANDON_STATS


def parked_path(cfg, req):
    """The /parked path calling runtime `cfg` with `req`."""
    return "/parked?cfg=%s&req=%s" % (q(cfg), q(req))


def abandon(port, path, count, wait=0.3):
    """Sends `count` GETs for `path`, each closed once its call waits
    (`wait` s after it was sent)."""
    if isinstance(path, str):
        path = path.encode()
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(wait)  # parked (or reading) by now
        s.close()


def abandon_stats(n):
    """(waiting, abandoned) of ffi.stats() in `n`'s (one) worker."""
    status, body = n.get("/abandon_stats")
    assert status == 200, body
    waiting, abandoned = body.split()
    return int(waiting), int(abandoned)


def in_flight(n, cfg):
    """How many tasks of runtime `cfg` `n`'s (one) worker holds (see
    abandon_locations)."""
    status, body = n.get("/in_flight?cfg=" + q(cfg))
    assert status == 200, body
    return int(body)


def given_up_soon(n, abandoned, timeout=5):
    """Asserts that within `timeout` s nothing waits in `n`'s worker and
    `abandoned` calls in all were given up because their caller was gone."""
    assert wait_until(lambda: abandon_stats(n) == (0, abandoned), timeout), \
        (abandon_stats(n), abandoned)


def calls_given_up_reach_nobody(n, cfg, kinds, seen):
    """The handler styles' cancellation scenario: a call of `cfg` for each
    of the two `kinds` (requests its handler waits on for ever) is given
    up by its 0.3 s timeout, then two of the first kind and one of the
    second by clients that go away. `seen` holds what `cfg` answers to
    b"seen" after each timeout (None: not asked) and after the clients.
    Then every task of `cfg` was answered and freed, and the late answers
    went to nobody: each later call gets its own."""
    def seen_is(want):
        return wait_until(lambda: call(n, cfg, b"seen") == (200, want), 3)

    for kind, want in zip(kinds, seen):
        status, body = call(n, cfg, kind, timeout=0.3)
        assert (status, b"timed out" in body) == (502, True), body
        if want is not None:
            assert seen_is(want), call(n, cfg, b"seen")
    # the clients went away (the sweep gives the calls up within its second)
    abandon(n.port, parked_path(cfg, kinds[0]), 2)
    abandon(n.port, parked_path(cfg, kinds[1]), 1)
    given_up_soon(n, 3)
    assert seen_is(seen[-1]), call(n, cfg, b"seen")
    assert wait_until(lambda: in_flight(n, cfg) == 0, 3), in_flight(n, cfg)
    for body in (b"a", b"b" * 70000, b"c"):
        assert call(n, cfg, body) == (200, body)


def quit_is_prompt(n, paths, count=2):
    """Leaves `count` calls of each path abandoned, quits `n` (whose
    worker_shutdown_timeout is long) and asserts it took under 5 s."""
    for path in paths:
        abandon(n.port, path, count)
    took = n.quit(timeout=30)
    assert took < 5, took


# Clients of LOADER_LOCATIONS, shared by the loaders' suites: `n` is a
# running Nginx serving them, `cfg` the loader's cfg string.

def q(s):
    """`s` quoted for a query string (cfg strings hold '/', ',', '?')."""
    return urllib.parse.quote(s, safe="")


def call(n, cfg, body=b"", timeout=None, nil=False):
    """One call through /call: (status, body)."""
    path = "/call?cfg=" + q(cfg)
    if timeout:
        path += "&timeout=%s" % timeout
    if nil:
        path += "&nil_req=1"
    return n.post(path, body)


def unload(n, cfg):
    status, body = n.get("/unload?cfg=" + q(cfg))
    assert (status, body) == (200, b"unloaded"), body


def par(n, cfg, count, req, want):
    """`count` calls at once through /par: (right answers, seconds)."""
    status, body = n.get("/par?cfg=%s&n=%d&req=%s&want=%s" % (
        q(cfg), count, q(req), q(want)), timeout=60)
    assert status == 200, body
    m = re.fullmatch(rb"good=(\d+) elapsed=([\d.]+)", body)
    assert m, body
    return int(m.group(1)), float(m.group(2))


def load_error(n, cfg):
    """The error Lua got for a load of `cfg` that must fail."""
    status, got = call(n, cfg, b"x")
    assert status == 500, (cfg, got)
    return got.decode()


def load_fails(n, cfg, rc, text, background=False):
    """Loading `cfg` must fail with libffi_init's code `rc` and `text` in
    both Lua's error and the error.log lines this load wrote; returns
    those lines.

    `background`: a Python load that outlives the loader's 50 ms wait (a
    busy machine) finishes in the background and its error answers the
    calls instead (rc 1, loader/python3/src/load.rs); that is accepted too,
    with `text` in the answer and the log, and the runtime is unloaded."""
    before = len(n.error_log())
    if background:
        status, got = call(n, cfg, b"x")
        if status == 502:
            got = got.decode()
            assert got.startswith("rc=1 err=") and text in got, (cfg, got)
            assert wait_until(lambda: text in n.error_log()[before:], 10), \
                (cfg, n.error_log()[-3000:])
            unload(n, cfg)
            return n.error_log()[before:]
    err = load_error(n, cfg)
    assert err.startswith("load failed: resty_ffi: "), (cfg, err)
    assert "libffi_init returned %d" % rc in err and text in err, (cfg, err)
    new = n.error_log()[before:]
    assert text in new, (cfg, new[-3000:])
    return new


def loader_gives_up_abandoned_calls(n, native, others, echo):
    """The loaders' test of calls whose client went away, on `n` (serving
    LOADER_LOCATIONS and abandon_locations, with a long
    worker_shutdown_timeout): runtime `native` waits on each call until it
    is cancelled and answers "seen" with how many it saw so; the runtimes
    `others` answer in a minute or never. Three calls to each, their
    clients gone, must be given up within seconds, `native` must see its
    three cancelled, `echo` must still answer "e", and a quit with two more
    to each outstanding must be prompt."""
    cfgs = [native] + list(others)
    assert call(n, native, b"seen") == (200, b"0")
    for cfg in cfgs:
        abandon(n.port, parked_path(cfg, "x"), 3)
    given_up_soon(n, 3 * len(cfgs))
    assert wait_until(lambda: call(n, native, b"seen") == (200, b"3"), 5), \
        call(n, native, b"seen")
    assert call(n, echo, b"e") == (200, b"e")
    quit_is_prompt(n, [parked_path(cfg, "y") for cfg in cfgs])


class Nginx:
    """A running nginx with the lua module. Use as a context manager."""

    def __init__(self, stage, server, http="", main="", workers=1,
                 log_level="info", shutdown_timeout="10s"):
        self.stage = stage
        self.workers = workers
        self.port = free_port()
        self.prefix = tempfile.mkdtemp(prefix="resty-ffi-nginx-")
        os.chmod(self.prefix, 0o755)
        for d in ("conf", "logs", "tmp"):
            os.makedirs(os.path.join(self.prefix, d))
        user = "user nobody nogroup;" if os.geteuid() == 0 else ""
        self.conf = os.path.join(self.prefix, "conf", "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(CONF.format(
                user=user, workers=workers, prefix=self.prefix,
                load_modules=load_module_lines(stage.root),
                stage=stage.dir, port=self.port, log_level=log_level,
                shutdown_timeout=shutdown_timeout,
                main=textwrap.indent(textwrap.dedent(main), ""),
                http=textwrap.indent(textwrap.dedent(http), "    "),
                server=textwrap.indent(textwrap.dedent(server), "        ")))
        self.proc = None

    def write_conf_server(self, server):
        """Rewrites the server block (for reload tests)."""
        with open(self.conf) as f:
            text = f.read()
        start = text.index("backlog=4096;\n") + len("backlog=4096;\n")
        end = text.rindex("    }\n}")
        with open(self.conf, "w") as f:
            f.write(text[:start] + textwrap.indent(textwrap.dedent(server), "        ") + text[end:])

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        argv = [NGINX, "-p", self.prefix, "-c", self.conf, "-g", "daemon off;"]
        if self.stage.root:    # the root's nginx; chroot execs it, same pid
            argv = ["chroot", self.stage.root.dir, "/usr/sbin/nginx"] + argv[1:]
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 15
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("nginx exited at start: %s\n%s" % (
                    self.proc.stderr.read().decode(errors="replace"), self.error_log()))
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    # the master listens before it forks: wait for the
                    # workers too, so tests may read worker_pids() at once
                    wait_until(lambda: len(self.worker_pids()) >= self.workers,
                               max(0.5, deadline - time.time()))
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not listen on port %d" % self.port)

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def reload(self):
        self.signal(signal.SIGHUP)

    def quit(self, timeout=20):
        """Graceful stop; returns the seconds it took."""
        t0 = time.time()
        self.signal(signal.SIGQUIT)
        self.proc.wait(timeout=timeout)
        return time.time() - t0

    def stop(self):
        terminate(self.proc, 10)
        # workers may outlive a killed master for a moment
        for pid in self.worker_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if os.environ.get("RESTY_FFI_KEEP_LOGS") != "1":
            shutil.rmtree(self.prefix, ignore_errors=True)

    def worker_pids(self):
        if not self.proc:
            return []
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % entry) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open("/proc/%s/cmdline" % entry, "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid and b"worker process" in cmd:
                pids.append(int(entry))
        return sorted(pids)

    def error_log(self):
        try:
            with open(os.path.join(self.prefix, "logs", "error.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def get_as_it_comes(self, path, count=lambda body: body.count(b"\n"), timeout=30):
        """GET `path`, reading each piece as it arrives (a stream's chunks,
        server-sent events): returns (response, body, stamps), stamps being
        [(seconds since the request, count(body so far))] per piece. The
        response's status and headers stay readable."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        t0 = time.time()
        conn.request("GET", path)
        r = conn.getresponse()
        stamps, body = [], b""
        while True:
            data = r.read1(65536)
            if not data:
                break
            body += data
            stamps.append((time.time() - t0, count(body)))
        conn.close()
        return r, body, stamps

    def request(self, path, body=None, timeout=30, method=None):
        """Returns (status, body bytes)."""
        req = urllib.request.Request(self.url(path), data=body, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def get(self, path, **kw):
        return self.request(path, **kw)

    def post(self, path, body, **kw):
        return self.request(path, body=body, method="POST", **kw)


def thread_names(pid):
    names = []
    try:
        for tid in os.listdir("/proc/%d/task" % pid):
            try:
                with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
                    names.append(f.read().strip())
            except OSError:
                pass
    except OSError:
        pass
    return names


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0



def rss_growth_while(pid, work, meanwhile=None):
    """Runs `work()` on a thread and samples `pid`'s RSS every 20 ms until
    it returns (`meanwhile()`, if given, runs first, right after the thread
    starts). Returns (what work returned, the peak growth in MiB over the
    RSS before)."""
    rss0 = rss_kib(pid)
    peak, done = [rss0], []
    t = threading.Thread(target=lambda: done.append(work()))
    t.start()
    if meanwhile:
        meanwhile()
    while t.is_alive():
        peak.append(rss_kib(pid))
        time.sleep(0.02)
    t.join()
    assert done, "work() failed (its traceback is above)"
    return done[0], (max(peak) - rss0) / 1024

def logged(log, text):
    """How many times lines containing `text` were logged: those written,
    plus the repeats the core collapsed into "(repeated N times ...)"."""
    n = 0
    for line in log.splitlines():
        if text not in line:
            continue
        m = re.search(r" \(repeated ([\d,]+) times? in the last (?:second|\d+ seconds)\)$", line)
        n += int(m.group(1).replace(",", "")) if m else 1
    return n


def hang_up_when(port, path, enough, timeout=20):
    """A client that leaves mid-answer: GETs `path`, reads until
    `enough(received bytes)` is true (or the server closes), then resets
    the connection (RST, not FIN: the client is gone). Returns the bytes
    received and the time of the reset."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    buf = b""
    while not enough(buf):
        data = s.recv(4096)
        if not data:
            break
        buf += data
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01" + b"\x00" * 7)
    t = time.time()
    s.close()
    return buf, t


def wait_until(cond, timeout, step=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()
