"""The Debian package for each supported release (12 bookworm, 13
trixie; ci/package.sh [--debian N]), installed with apt into a clean root of
that release (an overlay over ci/debian-root.sh's cached debootstrap root),
where that root's own nginx with no lua_package_path, lua_package_cpath or
LD_LIBRARY_PATH calls the Rust echo runtime, a Python handler (that
release's libpython), a Java handler (its default JRE), a Node handler (its
libnode) and a gRPC server; then `apt remove` leaves nothing of the package
behind.

The root has no Rust, no checkout and no build tools: only Debian's
nginx-lua packages, libpython3.X, a JRE and libnode. nginx runs chrooted
there and is driven from outside over loopback, where the gRPC server
(Python's grpcio) listens.
"""

import contextlib
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

import harness

RELEASES = sorted(harness.RELEASES)


@pytest.fixture(params=RELEASES, ids=["debian%d" % r for r in RELEASES])
def release(request):
    if os.geteuid() != 0:
        pytest.fail("debootstrap, mount and chroot need root: run the tests as root")
    return request.param


@pytest.fixture(scope="module")
def greeter():
    """A helloworld gRPC server on loopback (grpcio, from PyPI)."""
    subprocess.run(["bash", os.path.join(harness.ROOT, "ci", "setup-grpc.sh")], check=True)
    proc = subprocess.Popen(
        [sys.executable, os.path.join(harness.ROOT, "tests", "grpc", "helloworld_server.py"),
         os.path.join(harness.ROOT, "examples", "grpc", "proto")],
        stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("listening on "), line
    yield line.split()[-1]
    harness.terminate(proc, 5)


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
    init_worker_by_lua_block {{
        require "resty_ffi"
        assert(require("resty.ffi.grpc").loadfile("/srv/app/helloworld.proto"))
    }}
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
        location /other-python {{
            content_by_lua_block {{
                local rt, err = ngx.load_ffi("ffi_python3_other", "/srv/app/shout,init")
                ngx.print(rt and "loaded" or err)
            }}
        }}
        location /node {{
            content_by_lua_block {{
                local rt, err = ngx.load_ffi("ffi_nodejs", "/srv/app/shout,init")
                if not rt then return ngx.print("node load: ", err) end
                local ok, res, err = rt:call("node words")
                ngx.print("node: ", ok and res or err)
            }}
        }}
        location /grpc {{
            content_by_lua_block {{
                local grpc = require "resty.ffi.grpc"
                local ok, conn, err = grpc.connect("{greeter}")
                if not ok then return ngx.print("grpc connect: ", err) end
                local ok, res, err = conn:unary("/helloworld.Greeter/SayHello", {{ name = "debian" }})
                conn:close()
                ngx.print("grpc: ", ok and res.message or err)
            }}
        }}
    }}
}}
"""

SHOUT_PY = """\
import sys

def init(cfg, tq):
    def handle(req):
        return req.upper() + (" %d.%d" % sys.version_info[:2]).encode()
    return handle
"""

SHOUT_JS = """\
exports.init = () => async (req) =>
  req.toString().toUpperCase() + ' ' + process.versions.node.split('.')[0];
"""

SHOUT_JAVA = """\
import java.util.function.Function;

public class Shout {
    public static Function<byte[], byte[]> handler(String cfg) {
        return req -> (new String(req).toUpperCase() + " " + Runtime.version().feature()).getBytes();
    }
}
"""


def get(port, path):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=30) as r:
        return r.read().decode()


def test_the_deb_installs_into_a_clean_root_of_its_release_and_stock_nginx_calls_every_language(
        release, greeter, tmp_path):
    deb = harness.debian_package(release)
    assert os.path.basename(deb).startswith("resty-ffi_")
    assert "~deb%d_" % release in os.path.basename(deb)
    fields = harness.sh("dpkg-deb", "-f", deb, "Version", "Depends", "Recommends")
    python = harness.RELEASES[release]["python"]
    assert "libpython%s" % python in fields, fields
    assert "default-jre-headless" in fields, fields
    assert harness.RELEASES[release]["libnode"] in fields, fields
    with harness.DebianRoot(release) as root:
        assert not os.path.exists(root.path("/usr/bin/rustc")), "no Rust in the root"
        assert not os.path.exists(root.path("/usr/bin/gcc")), "no build tools in the root"
        root.install(deb)
        files = [f for f in root.run("dpkg", "-L", "resty-ffi").split()
                 if not os.path.isdir(root.path(f))]
        assert "/usr/lib/x86_64-linux-gnu/lua/5.1/libresty_ffi.so" in files
        assert "/usr/share/lua/5.1/resty_ffi.lua" in files
        for lib in ("libffi_python3.so", "libresty_ffi_python.so", "libffi_java.so",
                    "libffi_nodejs.so", "libffi_grpc.so", "libffi_echo.so"):
            assert "/usr/lib/x86_64-linux-gnu/lua/5.1/" + lib in files, lib
        assert "/usr/share/java/resty-ffi.jar" in files
        # every library resolves against the root's own libraries
        ldd = root.run("ldd", "/usr/lib/x86_64-linux-gnu/lua/5.1/libffi_python3.so")
        assert "libpython%s.so" % python in ldd and "not found" not in ldd, ldd
        # a Python handler, a Java handler (compiled here: the root has a
        # JRE, no JDK) and the gRPC runtime's proto
        os.makedirs(root.path("/srv/app"), exist_ok=True)
        with open(root.path("/srv/app/shout.py"), "w") as f:
            f.write(SHOUT_PY)
        with open(root.path("/srv/app/shout.js"), "w") as f:
            f.write(SHOUT_JS)
        shutil.copy(os.path.join(harness.ROOT, "examples", "grpc", "proto", "helloworld.proto"),
                    root.path("/srv/app/helloworld.proto"))
        src = tmp_path / "Shout.java"
        src.write_text(SHOUT_JAVA)
        subprocess.run(["javac", "--release", "17", "-d", root.path("/srv/java"), str(src)],
                       check=True)
        subprocess.run(["chmod", "-R", "a+rX", root.path("/srv")], check=True)
        with running(root, "env CLASSPATH=/srv/java;", greeter) as port:
            assert get(port, "/rust") == "rust: from the package"
            # that release's Python and default JRE
            assert get(port, "/python") == "python: QUIET WORDS " + python
            assert get(port, "/java") == "java: JAVA WORDS %d" % harness.RELEASES[release]["java"]
            assert get(port, "/node") == "node: NODE WORDS %d" % harness.RELEASES[release]["node"]
            assert get(port, "/grpc") == "grpc: Hello debian from grpcio!"
        root.run("apt-get", "remove", "-y", "-qq", "resty-ffi")
        left = [f for f in files if os.path.lexists(root.path(f))]
        assert left == [], "apt remove left %s" % left


def test_a_python_loader_built_for_the_other_release_names_the_libpython_it_needs(tmp_path):
    """Debian 12's libffi_python3.so on Debian 13: the load error names
    libpython3.11 and the libpython3.13 that is installed instead."""
    deb12, deb13 = harness.debian_package(12), harness.debian_package(13)
    with harness.DebianRoot(13) as root:
        root.install(deb13)
        unpacked = str(tmp_path / "deb12")
        harness.sh("dpkg-deb", "-x", deb12, unpacked)
        shutil.copy(unpacked + harness.PACKAGE_LIB + "/libffi_python3.so",
                    root.path(harness.PACKAGE_LIB + "/libffi_python3_other.so"))
        os.makedirs(root.path("/srv/app"), exist_ok=True)
        shutil.copy(os.path.join(harness.ROOT, "examples", "grpc", "proto", "helloworld.proto"),
                    root.path("/srv/app/helloworld.proto"))
        subprocess.run(["chmod", "-R", "a+rX", root.path("/srv")], check=True)
        with running(root, "", "127.0.0.1:1") as port:
            err = get(port, "/other-python")
            # and the release's own loader still serves
            assert get(port, "/rust") == "rust: from the package"
    assert err == (
        "resty_ffi: cannot load runtime library '%s/libffi_python3_other.so': it was built "
        "against libpython3.11.so.1.0, which is not installed here (this system has "
        "libpython3.13.so.1.0): install the package that provides libpython3.11.so.1.0, "
        "or use a build of the library made for this system" % harness.PACKAGE_LIB), err


@contextlib.contextmanager
def running(root, env, greeter):
    """The root's own nginx serving CONF; yields its port. On exit it quits
    and its error.log must hold no alert or emerg."""
    work = root.path("/tmp/resty-ffi-pkg")
    os.makedirs(work, exist_ok=True)
    # root's nginx reads its config from here: writable by root only
    os.chown(work, 0, 0)
    os.chmod(work, 0o755)
    port = harness.free_port()
    conf_text = CONF.format(port=port, env=env, greeter=greeter)
    assert "lua_package_path" not in conf_text and "lua_package_cpath" not in conf_text
    with open(os.path.join(work, "nginx.conf"), "w") as f:
        f.write(conf_text)
    root.run("/usr/sbin/nginx", "-c", "/tmp/resty-ffi-pkg/nginx.conf")
    try:
        assert harness.wait_until(lambda: _listening(port), 10)
        yield port
    finally:
        subprocess.run(["chroot", root.dir, "/usr/sbin/nginx", "-c",
                        "/tmp/resty-ffi-pkg/nginx.conf", "-s", "quit"], check=False)
        harness.wait_until(lambda: not os.path.exists(os.path.join(work, "nginx.pid")), 10)
    assert not os.path.exists(os.path.join(work, "nginx.pid")), "nginx did not quit"
    with open(os.path.join(work, "error.log"), errors="replace") as f:
        log = f.read()
    assert "[alert]" not in log and "[emerg]" not in log, log[-3000:]


def _listening(port):
    import socket
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False
