"""The Debian package, installed with apt into a clean Debian 12 root
(debootstrap, cached: ci/debian-root.sh), where that root's own nginx with
no lua_package_path, lua_package_cpath or LD_LIBRARY_PATH calls the Rust
echo runtime, a Python handler, (with the recommended JRE) a Java handler
and (with the recommended libnode108, from Debian's own path) a Node.js
handler; then `apt remove` leaves nothing of the package behind.

The root has no Rust, no checkout and no build tools: only Debian's nginx-lua
packages, libpython3.11, a JRE and libnode108. nginx runs chrooted there and is driven
from outside over loopback.
"""

import os
import shutil
import subprocess
import textwrap
import time
import urllib.request

import pytest

import harness


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


@pytest.fixture(scope="module")
def debian_root():
    if os.geteuid() != 0:
        pytest.skip("debootstrap and chroot need root; run the tests as root")
    try:
        root = sh("bash", os.path.join(harness.ROOT, "ci", "debian-root.sh")).strip().splitlines()[-1]
    except subprocess.CalledProcessError as e:
        pytest.skip("debootstrap cannot make a Debian 12 root here: %s" % e.stderr[-2000:])
    proc = os.path.join(root, "proc")
    if not os.path.ismount(proc):
        subprocess.run(["mount", "-t", "proc", "proc", proc], check=True)
    yield root
    subprocess.run(["umount", proc], check=False)


@pytest.fixture(scope="module")
def deb():
    env = dict(os.environ, RESTY_FFI_SKIP_BUILD="1")
    return sh("bash", os.path.join(harness.ROOT, "ci", "package.sh"), env=env).strip().splitlines()[-1]


CONF = """\
user nobody nogroup;
worker_processes 2;
error_log /tmp/resty-ffi-pkg/error.log info;
pid /tmp/resty-ffi-pkg/nginx.pid;
include /etc/nginx/modules-enabled/*.conf;
{env}
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path /tmp/resty-ffi-pkg/body;
    init_worker_by_lua_block {{ require "resty_ffi" }}
    server {{
        listen 127.0.0.1:{port};
        location /rust {{
            content_by_lua_block {{
                local rt = assert(ngx.load_ffi("ffi_echo"))
                local ok, res = rt:echo("from the package")
                ngx.print("rust: ", res)
            }}
        }}
        location /python {{
            content_by_lua_block {{
                local rt = assert(ngx.load_ffi("resty_ffi_python", "/srv/app/shout,init"))
                local ok, res, err = rt:call("quiet words")
                ngx.print("python: ", ok and res or err)
            }}
        }}
        location /java {{
            content_by_lua_block {{
                local rt, err = ngx.load_ffi("ffi_java", "Shout,handler")
                if not rt then return ngx.print("java load: ", err) end
                local ok, res, err = rt:call("java words")
                ngx.print("java: ", ok and res or err)
            }}
        }}
        location /node {{
            content_by_lua_block {{
                local rt, err = ngx.load_ffi("ffi_nodejs", "/srv/node/shout.js,handler")
                if not rt then return ngx.print("node load: ", err) end
                local ok, res, err = rt:call("node words")
                ngx.print("node: ", ok and res or err)
            }}
        }}
    }}
}}
"""

SHOUT_PY = """\
def init(cfg, tq):
    def handle(req):
        return req.upper()
    return handle
"""

SHOUT_JAVA = """\
import java.util.function.Function;

public class Shout {
    public static Function<byte[], byte[]> handler(String cfg) {
        return req -> new String(req).toUpperCase().getBytes();
    }
}
"""

SHOUT_JS = """\
exports.handler = () => (req) => req.toString().toUpperCase();
"""


def get(port, path):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=30) as r:
        return r.read().decode()


def test_the_deb_installs_into_clean_debian_12_and_stock_nginx_calls_every_language(
        debian_root, deb, tmp_path):
    root = debian_root
    assert "libnode108" in sh("dpkg-deb", "-f", deb, "Recommends")
    shutil.copy(deb, os.path.join(root, "tmp", "resty-ffi.deb"))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    sh("chroot", root, "apt-get", "install", "-y", "-qq", "/tmp/resty-ffi.deb", env=env)
    files = [f for f in sh("chroot", root, "dpkg", "-L", "resty-ffi").split()
             if not os.path.isdir(os.path.join(root, f.lstrip("/")))]
    assert "/usr/lib/x86_64-linux-gnu/lua/5.1/libresty_ffi.so" in files
    assert "/usr/share/lua/5.1/resty_ffi.lua" in files
    assert not os.path.exists(os.path.join(root, "root", ".cargo")), "no Rust in the root"
    for lib in ("libffi_python3.so", "libresty_ffi_python.so", "libffi_java.so",
                "libffi_nodejs.so", "libffi_grpc.so", "libffi_echo.so"):
        assert "/usr/lib/x86_64-linux-gnu/lua/5.1/" + lib in files, lib
    assert "/usr/share/java/resty-ffi.jar" in files
    # a Python handler and a Java handler (compiled here: the root has a
    # JRE, no JDK)
    app = os.path.join(root, "srv", "app")
    os.makedirs(app, exist_ok=True)
    with open(os.path.join(app, "shout.py"), "w") as f:
        f.write(SHOUT_PY)
    jdir = os.path.join(root, "srv", "java")
    os.makedirs(jdir, exist_ok=True)
    src = tmp_path / "Shout.java"
    src.write_text(SHOUT_JAVA)
    subprocess.run(["javac", "--release", "17", "-d", jdir, str(src)], check=True)
    ndir = os.path.join(root, "srv", "node")
    os.makedirs(ndir, exist_ok=True)
    with open(os.path.join(ndir, "shout.js"), "w") as f:
        f.write(SHOUT_JS)
    env_lines = "env CLASSPATH=/srv/java;"
    sh("chmod", "-R", "a+rX", os.path.join(root, "srv"))
    work = os.path.join(root, "tmp", "resty-ffi-pkg")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    os.chmod(work, 0o777)
    port = harness.free_port()
    with open(os.path.join(work, "nginx.conf"), "w") as f:
        f.write(CONF.format(port=port, env=env_lines))
    conf_text = open(os.path.join(work, "nginx.conf")).read()
    assert "lua_package_path" not in conf_text and "lua_package_cpath" not in conf_text
    sh("chroot", root, "/usr/sbin/nginx", "-c", "/tmp/resty-ffi-pkg/nginx.conf")
    try:
        assert harness.wait_until(lambda: _listening(port), 10)
        assert get(port, "/rust") == "rust: from the package"
        assert get(port, "/python") == "python: QUIET WORDS"
        assert get(port, "/java") == "java: JAVA WORDS"
        assert get(port, "/node") == "node: NODE WORDS"
    finally:
        subprocess.run(["chroot", root, "/usr/sbin/nginx", "-c", "/tmp/resty-ffi-pkg/nginx.conf",
                        "-s", "quit"], check=False)
        for _ in range(100):
            if not os.path.exists(os.path.join(work, "nginx.pid")):
                break
            time.sleep(0.1)
        log = open(os.path.join(work, "error.log")).read() if os.path.exists(
            os.path.join(work, "error.log")) else ""
        sh("chroot", root, "apt-get", "remove", "-y", "-qq", "resty-ffi", env=env)
    assert "[alert]" not in log and "[emerg]" not in log, log[-3000:]
    left = [f for f in files if os.path.lexists(os.path.join(root, f.lstrip("/")))]
    assert left == [], "apt remove left %s" % left


def _listening(port):
    import socket
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False
