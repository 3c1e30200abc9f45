"""The one harness every test uses: builds and stages the project, starts
a real nginx (Debian's nginx-light + lua module) on a free loopback port
with a generated config, and talks HTTP to it.

Workers load libraries, Lua files and interpreters as the unprivileged
worker user (nginx's default when started as root), so everything is staged
into a world-readable temporary folder first: the checkout itself may sit
under /root, which that user cannot enter.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# RESTY_FFI_NGINX picks the nginx binary (an OpenResty build, say); by
# default Debian's nginx with the dynamic lua module.
NGINX = os.environ.get("RESTY_FFI_NGINX") or shutil.which("nginx") or "/usr/sbin/nginx"
MODULES = "/usr/lib/nginx/modules"


def lua_compiled_in(binary=NGINX):
    """True when the nginx binary has the lua module built in (OpenResty),
    so no load_module lines are written."""
    out = subprocess.run([binary, "-V"], capture_output=True, text=True).stderr
    return bool(re.search(r"--add-module=\S*lua", out))


def load_module_lines():
    if lua_compiled_in():
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
    """A world-readable folder with lib/ (shared libraries) and lua/."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="resty-ffi-stage-")
        os.chmod(self.dir, 0o755)
        self.lib = os.path.join(self.dir, "lib")
        self.lua = os.path.join(self.dir, "lua")
        os.makedirs(self.lib)
        shutil.copytree(os.path.join(ROOT, "lua"), self.lua)
        shutil.copytree(os.path.join(ROOT, "tests", "lua"), self.lua, dirs_exist_ok=True)
        self.world_readable()

    def add_lib(self, path, name=None):
        dest = os.path.join(self.lib, name or os.path.basename(path))
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
                os.chmod(p, os.stat(p).st_mode | 0o444)

    def remove(self):
        shutil.rmtree(self.dir, ignore_errors=True)


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
location /plain {
    content_by_lua_block { ngx.print("plain") }
}
"""


def loader_locations(loader):
    """LOADER_LOCATIONS for `loader` (the name given to ngx.load_ffi)."""
    return LOADER_LOCATIONS.replace("@LOADER@", loader)


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
                load_modules=load_module_lines(),
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
        self.proc = subprocess.Popen(
            [NGINX, "-p", self.prefix, "-c", self.conf, "-g", "daemon off;"],
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


def wait_until(cond, timeout, step=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()
