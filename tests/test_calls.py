"""Single calls through a real nginx: payloads, errors, phases, loading."""

import os
import urllib.request

import harness

ECHO = """
location /echo {
    content_by_lua_block {
        local ffi = require "resty.ffi"
        local reply = require "t.reply"
        local rt, err = ffi.load("ffi_echo", "threads=2", { timeout = 2 })
        if not rt then
            ngx.status = 500
            return ngx.print(err)
        end
        reply.send(rt:echo(reply.body()))
    }
}
"""


def test_the_nginx_and_lua_files_under_test_are_the_releases_or_the_stages(nginx, stage):
    """Host runs use the host's nginx and the staged Lua files; with
    RESTY_FFI_DEBIAN=N, that release's nginx, lua module, lua-resty-core
    and the files its package installed. Debian's own nginx on either
    runs with that release's lua-resty-core (ngx.semaphore included),
    from Debian's folder."""
    n = nginx("""
location /where {
    content_by_lua_block {
        -- the primitive the call path parks on, from lua-resty-core
        local sema = require("ngx.semaphore").new(0)
        sema:post(1)
        local posted = sema:wait(0)
        ngx.print(math.floor(ngx.config.nginx_version / 1000), " ",
                  ngx.config.ngx_lua_version, " ",
                  package.searchpath("resty_ffi", package.path), " ",
                  package.searchpath("resty.ffi.call", package.path), " ",
                  require("resty.core.base").version, " ",
                  package.searchpath("resty.core.base", package.path), " ",
                  package.searchpath("ngx.semaphore", package.path), " ",
                  posted and "semaphore-ok" or "semaphore-failed")
    }
}
""")
    status, body = n.get("/where")
    assert status == 200, body
    (major_minor, lua_version, resty_ffi, call,
     core_version, core_base, semaphore, works) = body.decode().split()
    if harness.DEBIAN is None:
        assert resty_ffi == stage.lua + "/resty_ffi.lua"
        assert call == stage.lua + "/resty/ffi/call.lua"
    else:
        want = harness.RELEASES[harness.DEBIAN]
        assert (int(major_minor), int(lua_version)) == (want["nginx"], want["ngx_lua"])
        assert resty_ffi == "/usr/share/lua/5.1/resty_ffi.lua"
        assert call == "/usr/share/lua/5.1/resty/ffi/call.lua"
        assert os.path.realpath(stage.lib + "/libresty_ffi.so") == harness.PACKAGE_LIB + "/libresty_ffi.so"
    assert works == "semaphore-ok", body
    if harness.DEBIAN is not None or not harness.lua_compiled_in():
        # Debian's nginx-lua: Debian's lua-resty-core, for that lua module
        assert core_version == harness.TARGET["resty_core"], body
        assert core_base == "/usr/share/lua/5.1/resty/core/base.lua", body
        assert semaphore == "/usr/share/lua/5.1/ngx/semaphore.lua", body


def test_binary_payloads_round_trip_byte_for_byte(nginx):
    n = nginx(ECHO)
    payloads = [b"", b"hello", b"a\x00b\x00\x00c", bytes(range(256)) * 4,
                os.urandom(1024 * 1024)]
    for p in payloads:
        status, body = n.post("/echo", p)
        assert status == 200, body[:200]
        if p == b"":
            assert body == b""
        else:
            assert body == p


def test_runtime_error_code_and_message_reach_lua(nginx):
    n = nginx(ECHO)
    assert n.post("/echo", b"!fail:42:disk on fire") == (502, b"rc=42 err=disk on fire")


def test_nil_and_nul_terminated_responses(nginx):
    n = nginx(ECHO)
    assert n.post("/echo", b"!nil:") == (200, b"<nil>")
    assert n.post("/echo", b"!cstr:c string") == (200, b"c string")


REQUEST_KINDS = """
location /kinds {
    content_by_lua_block {
        local ffi = require "resty.ffi"
        local rt = assert(ffi.load("ffi_echo"))
        local out = {}
        for _, req in ipairs({ 42, {}, true }) do
            local ok, rc, err = rt:echo(req)
            out[#out + 1] = tostring(ok) .. "|" .. tostring(rc) .. "|" .. err
        end
        -- nil is a NULL request, as in lua-resty-ffi: the runtime sees
        -- zero bytes
        local ok, res = rt:echo(nil)
        out[#out + 1] = tostring(ok) .. "|" .. res .. "|"
        ngx.print(table.concat(out, "\\n"))
    }
}
"""


def test_non_string_requests_get_a_clear_error_and_nil_is_an_empty_request(nginx):
    n = nginx(REQUEST_KINDS)
    status, body = n.get("/kinds")
    assert status == 200
    lines = body.decode().split("\n")
    for line, kind in zip(lines, ["number", "table", "boolean"]):
        assert line == "false|nil|resty_ffi: request must be a string or nil, got " + kind
    assert lines[3] == "true||"


LOADS = """
location /load {
    content_by_lua_block {
        local ffi = require "resty.ffi"
        local rt, err = ffi.load(ngx.var.arg_lib, ngx.var.arg_cfg)
        if rt then
            local ok, res = rt:echo("ping")
            return ngx.print("loaded ", tostring(ok), " ", tostring(res))
        end
        ngx.status = 500
        ngx.print(err)
    }
}
location /plain {
    content_by_lua_block { ngx.print("plain") }
}
"""


def test_load_errors_are_clear_and_nginx_keeps_serving(nginx, stage):
    n = nginx(LOADS)
    status, body = n.get("/load?lib=no_such_runtime")
    assert status == 500
    assert b"cannot load runtime library 'libno_such_runtime.so'" in body
    # a real library without libffi_init
    status, body = n.get("/load?lib=" + stage.lib + "/libresty_ffi.so")
    assert status == 500 and b"has no libffi_init" in body, body
    status, body = n.get("/load?lib=ffi_echo&cfg=fail_init")
    assert status == 500 and b"libffi_init returned 7: the runtime refused" in body, body
    status, body = n.get("/load?lib=ffi_echo&cfg=bogus_option")
    assert status == 500 and b"libffi_init returned 3" in body, body
    assert n.get("/plain") == (200, b"plain")
    # short name, file name and full path all find the same runtime
    for lib in ["ffi_echo", "libffi_echo.so", stage.lib + "/libffi_echo.so"]:
        assert n.get("/load?lib=" + lib) == (200, b"loaded true ping")


BAD_OPTS = """
location /opts {
    content_by_lua_block {
        local ffi = require "resty.ffi"
        local out = {}
        for _, opts in ipairs({ { max_queue = -1 }, { timeout = "soon" },
                                { max_queue = 1.5 }, { timeout = 0 }, 7 }) do
            local rt, err = ffi.load("ffi_echo", "opts-test", opts)
            out[#out + 1] = tostring(rt) .. " " .. err
        end
        ngx.print(table.concat(out, "\\n"))
    }
}
"""


def test_bad_options_are_refused_with_their_name(nginx):
    n = nginx(BAD_OPTS)
    status, body = n.get("/opts")
    lines = body.decode().split("\n")
    assert status == 200
    assert "opts.max_queue must be a non-negative integer, got -1" in lines[0]
    assert "opts.timeout must be a positive number of seconds (math.huge: until answered), got soon" in lines[1]
    assert "opts.max_queue must be a non-negative integer, got 1.5" in lines[2]
    assert "opts.timeout must be a positive number of seconds" in lines[3]
    assert "opts must be a table, got number" in lines[4]
    assert all(line.startswith("nil ") for line in lines)


PHASES = """
location /phases {
    header_filter_by_lua_block {
        local rt = require("resty.ffi").load("ffi_echo")
        local ok, _, err = rt:echo("from header_filter")
        ngx.header["X-Header-Filter"] = tostring(ok) .. " " .. tostring(err)
    }
    log_by_lua_block {
        local rt = require("resty.ffi").load("ffi_echo")
        local ok, _, err = rt:echo("from log")
        ngx.shared.t:set("log", tostring(ok) .. " " .. tostring(err))
    }
    content_by_lua_block {
        ngx.print(ngx.shared.t:get("init_worker"), "\\n",
                  tostring(ngx.shared.t:get("log")))
    }
}
"""

PHASES_HTTP = """
lua_shared_dict t 1m;
init_worker_by_lua_block {
    local rt, err = require("resty.ffi").load("ffi_echo")
    local ok, _, cerr = rt:echo("from init_worker")
    ngx.shared.t:set("init_worker", tostring(ok) .. " " .. tostring(cerr))
}
"""


def test_calls_from_phases_that_cannot_yield_fail_clearly_without_hanging(nginx):
    n = nginx(PHASES, http=PHASES_HTTP)
    status, body = n.get("/phases", timeout=5)
    assert status == 200
    init_worker, _ = body.decode().split("\n")
    assert init_worker.startswith("false resty_ffi: cannot wait for a runtime in the init_worker phase")
    # the log phase of the first request ran after its body was sent
    status, body = n.get("/phases", timeout=5)
    log_line = body.decode().split("\n")[1]
    assert log_line.startswith("false resty_ffi: cannot wait for a runtime in the log phase"), log_line
    req = urllib.request.urlopen(n.url("/phases"), timeout=5)
    assert req.headers["X-Header-Filter"].startswith(
        "false resty_ffi: cannot wait for a runtime in the header_filter phase")


INIT_LOAD = """
location /x { content_by_lua_block { ngx.print(ngx.shared.t:get("init")) } }
"""
INIT_LOAD_HTTP = """
lua_shared_dict t 1m;
init_by_lua_block {
    local rt, err = require("resty.ffi").load("ffi_echo")
    ngx.shared.t:set("init", tostring(rt) .. " " .. tostring(err))
}
"""


def test_loading_in_the_master_is_refused(nginx):
    n = nginx(INIT_LOAD, http=INIT_LOAD_HTTP)
    status, body = n.get("/x")
    assert body.startswith(b"nil resty_ffi: cannot load a runtime in init_by_lua"), body


GO = """
location /go {
    content_by_lua_block {
        require "resty_ffi"
        local reply = require "t.reply"
        local rt, err = ngx.load_ffi("ffi_go_echo")
        if not rt then ngx.status = 500 return ngx.print(err) end
        reply.send(rt:anything(reply.body()))
    }
}
"""


def test_unchanged_lua_resty_ffi_go_runtime_loads_and_answers(nginx):
    n = nginx(GO)
    assert n.post("/go", b"hello go") == (200, b"hello go")
    assert n.post("/go", b"upper:shout") == (200, b"SHOUT")
    assert n.post("/go", b"fail:nope") == (502, b"rc=2 err=nope")
    big = bytes(range(256)) * 4096
    assert n.post("/go", big) == (200, big)


def test_a_runtime_panic_and_a_stray_answer_leave_the_worker_serving(nginx):
    n = nginx(ECHO)
    [pid] = n.worker_pids()
    status, body = n.post("/echo", b"!panic:boom")
    assert (status, body) == (502, b"rc=1 err=echo runtime panicked: boom")
    assert n.post("/echo", b"!stray:real answer") == (200, b"real answer")
    # runtimes' log lines reach error.log through the dispatcher, later
    assert harness.wait_until(
        lambda: "a runtime answered a task that is not waiting for an answer" in n.error_log(),
        10), n.error_log()[-2000:]
    assert n.post("/echo", b"still here") == (200, b"still here")
    assert n.worker_pids() == [pid]


def test_the_wake_socket_leaves_no_path_behind(nginx):
    import glob
    before = set(glob.glob("/tmp/resty-ffi-??????"))
    n = nginx(ECHO)
    # a slow call parks and starts the dispatcher, which connects the socket
    assert n.post("/echo", b"!sleep:100:parked") == (200, b"parked")
    assert set(glob.glob("/tmp/resty-ffi-??????")) == before
    [pid] = n.worker_pids()
    import os
    sockets = [os.readlink("/proc/%d/fd/%s" % (pid, fd))
               for fd in os.listdir("/proc/%d/fd" % pid)]
    assert sum(1 for s in sockets if s.startswith("socket:")) >= 3  # listen + both wake ends


STATS = ECHO + """
location /stats {
    content_by_lua_block {
        local s = require("resty.ffi").stats()
        ngx.print(s.posted, " ", s.refused, " ", s.answered_spinning + s.parked,
                  " ", s.parked - s.drained, " ", s.waiting)
    }
}
"""


def test_stats_count_every_call_and_each_parked_call_is_drained(nginx):
    n = nginx(STATS)
    for i in range(20):
        assert n.post("/echo", b"x%d" % i) == (200, b"x%d" % i)
    for i in range(5):
        assert n.post("/echo", b"!sleep:20:s%d" % i) == (200, b"s%d" % i)
    posted, refused, waited, undrained, waiting = map(int, n.get("/stats")[1].split())
    assert posted == 25 and refused == 0
    assert waited == 25, "every posted call is answered while spinning or parked"
    assert undrained == 0 and waiting == 0


GLOBAL = """
location /global {
    content_by_lua_block {
        local ffi = require "ffi"
        pcall(ffi.cdef, "int libffi_init(char *cfg, void *tq);")
        local function visible()
            return (pcall(function() return ffi.C.libffi_init end))
        end
        local rf = require "resty.ffi"
        assert(rf.load("ffi_echo", "threads=1"))
        local before = visible()
        assert(rf.load("ffi_echo", "threads=1,", { is_global = true }))
        ngx.print(tostring(before), " ", tostring(visible()))
    }
}
"""


def test_is_global_makes_the_runtime_symbols_visible_to_later_libraries(nginx):
    n = nginx(GLOBAL)
    assert n.get("/global") == (200, b"false true")


TIMER = """
location /timer {
    content_by_lua_block {
        local done = require("ngx.semaphore").new()
        local out
        ngx.timer.at(0, function()
            local rt = require("resty.ffi").load("ffi_echo")
            local ok, res = rt:echo("!sleep:20:from a timer")
            out = tostring(ok) .. " " .. tostring(res)
            done:post(1)
        end)
        done:wait(5)
        ngx.print(out)
    }
}
"""


def test_calls_work_from_timers(nginx):
    n = nginx(TIMER)
    assert n.get("/timer") == (200, b"true from a timer")
