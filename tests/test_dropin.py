"""Drop-in for lua-resty-ffi users: what third-party Lua code written for
lua-resty-ffi sees through `ngx.load_ffi`, against a real nginx.

(The Python loader's names and its cfg without a third field are tested in
test_python.py, next to the other Python tests.)
"""

import os
import re
import shutil

import harness

COMPAT = r"""
location /compat {
    content_by_lua_block {
        require "resty_ffi"
        local out = {}
        local function add(...)
            local t = {}
            for i = 1, select("#", ...) do t[i] = tostring((select(i, ...))) end
            out[#out + 1] = table.concat(t, "|")
        end
        local rt = assert(ngx.load_ffi("ffi_echo", "threads=1", { max_queue = 1 }))
        -- runtime errors keep their rc
        add(rt:echo("!fail:3:nope"))
        -- a full queue: the one thread blocks, one task waits, the third is refused
        local t1 = ngx.thread.spawn(function() return rt:echo("!block:300:a") end)
        ngx.sleep(0.05)
        local t2 = ngx.thread.spawn(function() return rt:echo("b") end)
        add(rt:echo("c"))
        ngx.thread.wait(t1)
        ngx.thread.wait(t2)
        -- a bad request and a per-call timeout are bridge errors too
        add(rt:echo({}))
        add(rt:echo("!sleep:500:late", 0.05))
        rt:__unload()
        add(rt:echo("after"))
        ngx.print(table.concat(out, "\n"))
    }
}
location /own {
    content_by_lua_block {
        local rt = assert(require("resty.ffi").load("ffi_echo", "threads=1"))
        rt:__unload()
        local ok, a, b = rt:echo("after")
        ngx.print(tostring(ok), "|", tostring(a), "|", tostring(b))
    }
}
"""


def test_ngx_load_ffi_gives_bridge_errors_as_false_msg_and_runtime_errors_with_rc(nginx):
    n = nginx(COMPAT)
    status, body = n.get("/compat")
    assert status == 200, body
    lines = body.decode().split("\n")
    assert lines[0] == "false|3|nope"
    assert lines[1].startswith("false|resty_ffi: post failed, queue full (max_queue 1)"), lines[1]
    assert lines[2] == "false|resty_ffi: request must be a string or nil, got table"
    assert lines[3] == "false|resty_ffi: call timed out after 0.05 s"
    assert lines[4] == "false|resty_ffi: task queue is finished: the runtime is unloaded"
    # our own API keeps `false, nil, msg`
    assert n.get("/own") == (200, b"false|nil|resty_ffi: task queue is finished: "
                                  b"the runtime is unloaded")


TIMEOUT = r"""
location /slow {
    content_by_lua_block {
        require "resty_ffi"
        local ffi = require "resty.ffi"
        ffi.DEFAULT_TIMEOUT = 0.2   -- our own default, shortened for the test
        local own = assert(ffi.load("ffi_echo"))
        local compat = assert(ngx.load_ffi("ffi_echo"))
        local a = { own:echo("!sleep:600:own") }
        local b = { compat:echo("!sleep:600:compat") }
        local c = { assert(ngx.load_ffi("ffi_echo", "tag=t", { timeout = 0.2 }))
                    :echo("!sleep:600:opts") }
        ngx.print(tostring(a[1]), " ", tostring(a[3]), "\n",
                  tostring(b[1]), " ", tostring(b[2]), "\n",
                  tostring(c[1]), " ", tostring(c[2]))
    }
}
"""


def test_ngx_load_ffi_has_no_default_timeout_and_keeps_opts_timeout(nginx):
    n = nginx(TIMEOUT)
    status, body = n.get("/slow")
    assert status == 200, body
    assert body.decode().split("\n") == [
        "false resty_ffi: call timed out after 0.2 s",
        "true compat",
        "false resty_ffi: call timed out after 0.2 s",
    ]


OPEN = r"""
location /open {
    content_by_lua_block {
        require "resty_ffi"
        local rt, err = ngx.load_ffi(ngx.var.arg_lib)
        if not rt then
            return ngx.print("nil ", err)
        end
        local ok, res = rt:echo("named")
        ngx.print(tostring(ok), " ", tostring(res))
    }
}
"""


def test_a_library_that_cannot_be_opened_is_logged_at_error_level(nginx):
    n = nginx(OPEN)
    status, body = n.get("/open?lib=no_such_runtime")
    assert status == 200
    assert body.startswith(b"nil resty_ffi: cannot load runtime library 'libno_such_runtime.so'"), body
    assert re.search(r"\[error\].*resty_ffi: cannot load runtime library "
                     r"'libno_such_runtime.so'", n.error_log())


def test_library_names_follow_luajit_ffi_load_rules_then_our_search_path(nginx, stage):
    stage.add_lib(os.path.join(stage.lib, "libffi_echo.so"), "libprobe.so")
    n = nginx(OPEN)
    for lib in ["probe", "probe.so", "libprobe.so", "libprobe", stage.lib + "/libprobe.so"]:
        assert n.get("/open?lib=" + lib) == (200, b"true named"), lib


SWAP = r"""
location /swap {
    content_by_lua_block {
        require "resty_ffi"
        local rt = assert(ngx.load_ffi("swap", nil, { unpin = true }))
        local ok, a, b = rt:echo("!fail:3:x")
        if ngx.var.arg_unload then
            rt:__unload()
        end
        ngx.print(tostring(ok), " ", tostring(a), " ", tostring(b))
    }
}
"""


def test_a_changed_library_is_picked_up_on_the_next_load_after_unload(nginx, stage):
    swap = os.path.join(stage.lib, "libswap.so")
    shutil.copy(os.path.join(stage.lib, "libffi_echo.so"), swap)
    os.chmod(swap, 0o755)
    n = nginx(SWAP)
    # the Rust echo runtime answers `!fail:3:x` with rc 3
    assert n.get("/swap") == (200, b"false 3 x")
    assert n.get("/swap?unload=1") == (200, b"false 3 x")
    # a new build is installed the way install(1) does: a new file renamed
    # over the old one (the old code stays mapped for its threads)
    tmp = swap + ".new"
    shutil.copy(os.path.join(stage.lib, "libffi_go_echo.so"), tmp)
    os.chmod(tmp, 0o755)
    os.replace(tmp, swap)
    # the Go echo runtime echoes every request byte for byte
    assert n.get("/swap") == (200, b"true !fail:3:x nil")
    assert n.get("/swap") == (200, b"true !fail:3:x nil")
    assert len(n.worker_pids()) == 1


def test_harness_writes_no_load_module_lines_for_an_nginx_with_lua_built_in(tmp_path):
    fake = tmp_path / "openresty"
    fake.write_text("#!/bin/sh\necho 'nginx version: openresty/1.25.3.1' >&2\n"
                    "echo 'configure arguments: --prefix=/usr/local/openresty/nginx "
                    "--add-module=../ngx_lua-0.10.26' >&2\n")
    fake.chmod(0o755)
    assert harness.lua_compiled_in(str(fake))
    assert not harness.lua_compiled_in(harness.NGINX) or os.environ.get("RESTY_FFI_NGINX")
