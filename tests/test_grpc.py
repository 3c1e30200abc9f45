"""The gRPC runtime (libffi_grpc.so + resty.ffi.grpc) against a real nginx
and real gRPC servers: the tonic servers of examples/grpc (plaintext, TLS,
mTLS) and Python's grpcio.

Each test sends a Lua snippet to one location that runs it with `grpc`
loaded (protos compiled in init_worker) and answers its return value as
JSON, so a test reads as: the Lua it runs, and what must come back.
"""

import json
import os
import subprocess
import sys
import threading
import time

import pytest

import harness

RELEASE = os.path.join(harness.ROOT, "target", "release")
PROTO_SRC = os.path.join(harness.ROOT, "examples", "grpc", "proto")


class Server:
    """A gRPC server child process that prints `listening on ADDR`."""

    def __init__(self, argv):
        self.argv = argv
        self.proc = None
        self.addr = None

    def start(self):
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("listening on "), "server said %r" % line
        self.addr = line.split()[-1]
        self.port = int(self.addr.rsplit(":", 1)[1])
        return self

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def stop(self):
        harness.terminate(self.proc, 5)


def tonic_server(*args):
    return Server([os.path.join(RELEASE, "grpc_test_server")] + list(args)).start()


@pytest.fixture(scope="module")
def grpc_stage(stage):
    proto = stage.add_tree(PROTO_SRC, "proto")
    certs = os.path.join(stage.dir, "certs")
    subprocess.run([os.path.join(RELEASE, "grpc_certs"), certs], check=True)
    stage.world_readable()
    return {"proto": proto, "certs": certs}


@pytest.fixture(scope="module")
def servers(grpc_stage):
    certs = grpc_stage["certs"]
    s = {
        "plain": tonic_server(),
        "tls": tonic_server("--tls", certs),
        "mtls": tonic_server("--tls", certs, "--mtls"),
    }
    yield s
    for srv in s.values():
        srv.stop()


def http_block(proto, init="", extra=""):
    return """
    init_worker_by_lua_block {
        local grpc = require "resty.ffi.grpc"
        for _, f in ipairs({ "helloworld", "route_guide", "echo", "probe" }) do
            assert(grpc.loadfile("%s/" .. f .. ".proto"))
        end
        %s
    }
    %s
    """ % (proto, init, extra)


RUN = r"""
location /lua {
    content_by_lua_block {
        local cjson = require "cjson"
        ngx.req.read_body()
        local f, err = loadstring(ngx.req.get_body_data())
        if not f then
            ngx.status = 500
            return ngx.print(err)
        end
        local env = setmetatable({ grpc = require "resty.ffi.grpc",
                                   cjson = cjson,
                                   args = ngx.req.get_uri_args() },
                                 { __index = _G })
        setfenv(f, env)
        local ok, res = pcall(f)
        if not ok then
            ngx.status = 500
            return ngx.print(tostring(res))
        end
        ngx.print(cjson.encode(res))
    }
}
"""


@pytest.fixture(scope="module")
def ngx(stage, grpc_stage):
    """One nginx (2 workers) for the module's tests."""
    with harness.Nginx(stage, RUN, http=http_block(grpc_stage["proto"]), workers=2) as n:
        yield n


@pytest.fixture
def run(ngx, servers):
    n = ngx

    def run_lua(lua, timeout=30, **args):
        q = "&".join("%s=%s" % (k, v) for k, v in args.items())
        status, body = n.post("/lua?" + q, lua.encode(), timeout=timeout)
        assert status == 200, body.decode(errors="replace") + "\n" + n.error_log()[-3000:]
        return json.loads(body)

    run_lua.nginx = n
    return run_lua


def test_unary_call_with_protos_compiled_in_init_worker(run, servers):
    res = run("""
        local ok, conn, err = grpc.connect(args.addr)
        assert(ok, err)
        local ok, res = conn:unary("/helloworld.Greeter/SayHello", { name = "foobar" })
        assert(ok, res)
        conn:close()
        return res
    """, addr=servers["plain"].addr)
    assert res == {"message": "Hello foobar!"}


def test_target_forms_uri_and_ipv6(run, servers):
    v6 = tonic_server("--listen", "[::1]:0")
    try:
        res = run("""
            local out = {}
            for _, t in ipairs({ args.plain, "http://" .. args.plain,
                                 "localhost:" .. args.port, args.v6 }) do
                local ok, conn, err = grpc.connect(t)
                assert(ok, err)
                local ok, res = conn:unary("/helloworld.Greeter/SayHello", { name = t })
                assert(ok, res)
                out[#out + 1] = res.message
            end
            return out
        """, plain=servers["plain"].addr, port=servers["plain"].port, v6=v6.addr)
    finally:
        v6.stop()
    p = servers["plain"]
    assert res == ["Hello %s!" % t for t in
                   [p.addr, "http://" + p.addr, "localhost:%d" % p.port, v6.addr]]


def test_protobuf_json_mapping_round_trips_every_field_kind(run, servers):
    res = run("""
        local ok, conn, err = grpc.connect(args.addr)
        assert(ok, err)
        local msg = {
            i32 = -5, i64 = "-9007199254740993", u64 = "18446744073709551615",
            d = 1.5, b = true, s = "héllo", raw = ngx.encode_base64("\\0\\1\\255"),
            color = "GREEN", inner = { label = "in", values = { 1, 2, 3 } },
            inners = { { label = "a" }, { label = "b", values = { 7 } } },
            nums = { "1", "-2", "9223372036854775807" },
            counts = { x = 1, y = 2 }, id = 42,
            at = "2024-01-02T03:04:05.500Z", took = "1.5s", maybe = "here",
        }
        local ok, res = conn:unary("/resty.test.Probe/Echo", msg)
        assert(ok, res)
        return res
    """, addr=servers["plain"].addr)
    assert res == {
        "i32": -5, "i64": "-9007199254740993", "u64": "18446744073709551615",
        "d": 1.5, "b": True, "s": "héllo", "raw": "AAH/", "color": "GREEN",
        "inner": {"label": "in", "values": [1, 2, 3]},
        "inners": [{"label": "a"}, {"label": "b", "values": [7]}],
        "nums": ["1", "-2", "9223372036854775807"], "counts": {"x": 1, "y": 2},
        "id": 42, "at": "2024-01-02T03:04:05.500Z", "took": "1.500s", "maybe": "here",
    }


def test_empty_lua_tables_fit_lists_maps_and_messages(run, servers):
    res = run("""
        local ok, conn = grpc.connect(args.addr)
        local ok, res = conn:unary("/resty.test.Probe/Echo",
                                   { nums = {}, inners = {}, counts = {}, inner = {} })
        assert(ok, res)
        return { res.inner ~= nil, res.nums == nil, res.counts == nil }
    """, addr=servers["plain"].addr)
    assert res == [True, True, True]


def test_grpc_load_compiles_source_text_with_imports(run, servers, grpc_stage):
    res = run("""
        local src = [[
            syntax = "proto3";
            package alias;
            import "helloworld.proto";
            import "google/protobuf/empty.proto";
            service Greeter2 { rpc SayHello (helloworld.HelloRequest) returns (helloworld.HelloReply); }
        ]]
        assert(grpc.load(src, { args.proto }))
        assert(grpc.load(src, { args.proto }))  -- again: a no-op
        local ok, err = grpc.load("syntax = \\"proto3\\"; message {")
        local ok2, err2 = grpc.loadfile("/nonexistent/x.proto")
        -- the method is known now; the server does not implement it
        local _, conn = grpc.connect(args.addr)
        local ok3, err3, st3 = conn:unary("/alias.Greeter2/SayHello", { name = "x" })
        return { ok = ok == nil, err = err, ok2 = ok2 == nil, err2 = err2,
                 err3 = err3, code3 = st3.code }
    """, proto=grpc_stage["proto"], addr=servers["plain"].addr)
    assert res["ok"] and "cannot compile the source given to grpc.load" in res["err"]
    assert res["ok2"] and "/nonexistent/x.proto" in res["err2"]
    assert "no such file" in res["err2"]
    assert res["err3"].startswith("UNIMPLEMENTED (12)") and res["code3"] == 12


def test_server_client_and_bidi_streaming(run, servers):
    res = run("""
        local ok, conn, err = grpc.connect(args.addr)
        assert(ok, err)
        local out = {}

        local ok, s = conn:new_stream("/routeguide.RouteGuide/ListFeatures")
        assert(ok, s)
        assert(s:send({ lo = { latitude = 400000000, longitude = -750000000 },
                        hi = { latitude = 405000000, longitude = -745000000 } }))
        assert(s:close_send())
        local names = {}
        for _ = 1, 100 do
            local ok, f = s:recv()
            assert(ok, f)
            if not f then break end
            names[#names + 1] = f.name
        end
        out.list = names
        s:close()

        local ok, s = conn:new_stream("/routeguide.RouteGuide/RecordRoute")
        assert(ok, s)
        for i = 0, 2 do
            assert(s:send({ latitude = 400000000 + i * 5000000, longitude = -750000000 }))
        end
        assert(s:close_send())
        local ok, summary = s:recv()
        assert(ok, summary)
        local ok, none = s:recv()
        out.summary, out.after_end = summary, { ok, none == nil }
        s:close()

        local ok, s = conn:new_stream("/routeguide.RouteGuide/RouteChat")
        assert(ok, s)
        local chat = {}
        for i = 1, 3 do
            assert(s:send({ location = { latitude = i, longitude = i }, message = "note-" .. i }))
            local ok, note = s:recv()
            assert(ok, note)
            chat[#chat + 1] = note.message
        end
        assert(s:close_send())
        local ok, last = s:recv()
        out.chat, out.chat_end = chat, { ok, last == nil }
        assert(s:close())
        local ok2, err2 = s:send({})
        out.after_close = err2
        return out
    """, addr=servers["plain"].addr)
    assert res["list"] == ["feature-0-0", "feature-0-1", "feature-1-0", "feature-1-1"]
    assert res["summary"] == {"point_count": 3, "feature_count": 3, "distance": 10000}
    assert res["after_end"] == [True, True]
    assert res["chat"] == ["echo: note-1", "echo: note-2", "echo: note-3"]
    assert res["chat_end"] == [True, True]
    assert "closed" in res["after_close"]


def test_calls_of_the_wrong_kind_are_refused_with_a_hint(run, servers):
    res = run("""
        local ok, conn = grpc.connect(args.addr)
        local ok1, e1 = conn:unary("/routeguide.RouteGuide/RouteChat", {})
        local ok2, e2 = conn:new_stream("/helloworld.Greeter/SayHello")
        return { e1, e2, ok1, ok2 }
    """, addr=servers["plain"].addr)
    assert "bidirectional-streaming method: call it with conn:new_stream" in res[0]
    assert "unary method: call it with conn:unary" in res[1]
    assert res[2] is False and res[3] is False


TLS_CALL = """
    local ok, conn, err = grpc.connect(args.addr, {
        host = "example.com",
        ca = grpc.readfile(args.certs .. "/" .. args.ca),
        cert = args.client == "1" and grpc.readfile(args.certs .. "/client.pem") or nil,
        priv_key = args.client == "1" and grpc.readfile(args.certs .. "/client.key") or nil,
    })
    if not ok then
        return { connect_err = err, rc = conn }
    end
    local ok, res, st = conn:unary("/grpc.examples.echo.Echo/UnaryEcho", { message = "hello" })
    if not ok then
        return { call_err = res }
    end
    local ok, s = conn:new_stream("/grpc.examples.echo.Echo/ServerStreamingEcho")
    assert(ok, s)
    assert(s:send({ message = "tls" }))
    assert(s:close_send())
    local got = {}
    while true do
        local ok, m = s:recv()
        assert(ok, m)
        if not m then break end
        got[#got + 1] = m.message
    end
    return { message = res.message, stream = got }
"""


def test_tls_unary_and_streaming(run, servers, grpc_stage):
    res = run(TLS_CALL, addr=servers["tls"].addr, certs=grpc_stage["certs"], ca="ca.pem")
    assert res == {"message": "hello", "stream": ["tls 0", "tls 1", "tls 2"]}


def test_mtls_with_a_client_certificate(run, servers, grpc_stage):
    res = run(TLS_CALL, addr=servers["mtls"].addr, certs=grpc_stage["certs"],
              ca="ca.pem", client="1")
    assert res == {"message": "hello", "stream": ["tls 0", "tls 1", "tls 2"]}


def test_mtls_without_a_client_certificate_fails_cleanly(run, servers, grpc_stage):
    res = run(TLS_CALL, addr=servers["mtls"].addr, certs=grpc_stage["certs"], ca="ca.pem")
    err = res.get("connect_err") or res.get("call_err")
    assert err, res
    # with TLS 1.3 the client finishes its handshake before the server checks
    # for a certificate, so the refusal arrives with the first call, as a
    # transport error tonic names UNAVAILABLE, CANCELLED or UNKNOWN
    assert err.startswith(("UNAVAILABLE (14)", "CANCELLED (1)", "UNKNOWN (2)")) \
        or "cannot connect" in err, err
    assert "connection" in err, err


def test_wrong_ca_fails_cleanly(run, servers, grpc_stage):
    res = run(TLS_CALL, addr=servers["tls"].addr, certs=grpc_stage["certs"],
              ca="other_ca.pem", client="1")
    assert res["rc"] == 100
    assert "cannot connect to " + servers["tls"].addr in res["connect_err"]
    assert "certificate" in res["connect_err"].lower()


def test_deadline_exceeded_per_call_and_by_default(run, servers):
    res = run("""
        local ok, conn = grpc.connect(args.addr)
        local t0 = ngx.now()
        local ok1, e1, st1 = conn:unary("/resty.test.Probe/Sleep", { ms = 3000 }, { timeout = 0.2 })
        ngx.update_time()
        local took1 = ngx.now() - t0
        local ok, c2 = grpc.connect(args.addr, { timeout = 0.3 })
        local ok2, e2, st2 = c2:unary("/resty.test.Probe/Sleep", { ms = 3000 })
        local ok3 = c2:unary("/resty.test.Probe/Sleep", { ms = 10 })
        return { ok1, e1, st1.code, st1.status, took1, ok2, st2.status, ok3 }
    """, addr=servers["plain"].addr)
    assert res[0] is False
    assert res[1].startswith("DEADLINE_EXCEEDED (4): ")
    assert res[2] == 4 and res[3] == "DEADLINE_EXCEEDED"
    assert res[4] < 2
    assert res[5] is False and res[6] == "DEADLINE_EXCEEDED"
    assert res[7] is True


@pytest.mark.parametrize("code,name", [(3, "INVALID_ARGUMENT"), (5, "NOT_FOUND"),
                                       (7, "PERMISSION_DENIED"), (14, "UNAVAILABLE"),
                                       (16, "UNAUTHENTICATED")])
def test_status_codes_reach_lua_with_name_number_message_and_trailers(run, servers, code, name):
    res = run("""
        local ok, conn = grpc.connect(args.addr)
        local ok, err, st = conn:unary("/resty.test.Probe/Fail",
                                       { code = tonumber(args.code), message = "it broke" })
        return { ok, err, st }
    """, addr=servers["plain"].addr, code=code)
    assert res[0] is False
    assert res[1] == "%s (%d): it broke" % (name, code)
    assert res[2]["code"] == code and res[2]["status"] == name
    assert res[2]["message"] == "it broke"
    assert res[2]["metadata"]["x-fail-detail"] == "detail"


def test_metadata_both_ways(run, servers):
    res = run("""
        local ok, conn = grpc.connect(args.addr, { metadata = { ["x-default"] = "d", ["x-both"] = "conn" } })
        local ok, res, md = conn:unary("/resty.test.Probe/Metadata", {},
            { metadata = { ["x-call"] = "c", ["x-both"] = "call" }, response_metadata = true })
        assert(ok, res)
        return { seen = res.metadata, md = md }
    """, addr=servers["plain"].addr)
    seen = res["seen"]
    assert seen["x-default"] == "d" and seen["x-call"] == "c" and seen["x-both"] == "call"
    assert res["md"]["x-resp-header"] == "from-server"


def test_bad_input_gives_clear_errors(run, servers):
    closed = harness.free_port()
    res = run("""
        local out = {}
        local ok, conn = grpc.connect(args.addr)
        local _, e = conn:unary("/no.Such/Method", {})
        out.unknown = e
        _, e = conn:unary("/helloworld.Greeter/SayHello", { nosuch = 1 })
        out.unknown_field = e
        _, e = conn:unary("/helloworld.Greeter/SayHello", { name = { 1, 2 } })
        out.wrong_type = e
        _, e = conn:unary("/helloworld.Greeter/SayHello", { name = function() end })
        out.unencodable = e
        local ok2, rc, e2 = grpc.connect("127.0.0.1:" .. args.closed, { connect_timeout = 2 })
        out.unreachable = { ok2, rc, e2 }
        _, _, e = grpc.connect("bad target with spaces")
        out.bad_target = e
        _, _, e = grpc.connect(args.addr, { nosuch = 1 })
        out.bad_opt = e
        conn:close()
        _, e = conn:unary("/helloworld.Greeter/SayHello", {})
        out.closed = e
        -- still healthy afterwards
        local ok3, c3 = grpc.connect(args.addr)
        out.after = select(2, c3:unary("/helloworld.Greeter/SayHello", { name = "x" })).message
        return out
    """, addr=servers["plain"].addr, closed=closed)
    assert "unknown method '/no.Such/Method'" in res["unknown"]
    assert "does not fit message helloworld.HelloRequest" in res["unknown_field"]
    assert "nosuch" in res["unknown_field"]
    assert "does not fit message helloworld.HelloRequest" in res["wrong_type"]
    assert "cannot encode the table" in res["unencodable"]
    assert res["unreachable"][0] is False and res["unreachable"][1] == 100
    assert "cannot connect to 127.0.0.1:%d" % closed in res["unreachable"][2]
    assert "bad target" in res["bad_target"]
    assert "unknown connect option 'nosuch'" in res["bad_opt"]
    assert "connection is closed" in res["closed"]
    assert res["after"] == "Hello x!"


def test_dropped_streams_and_connections_are_cleaned_up(run, servers):
    res = run("""
        collectgarbage("collect")
        collectgarbage("collect")
        local c0, s0 = grpc.open_count()
        do
            local ok, conn = grpc.connect(args.addr)
            for i = 1, 5 do
                local ok, s = conn:new_stream("/routeguide.RouteGuide/RouteChat")
                assert(ok, s)
                assert(s:send({ message = "x" }))
            end
            local c1, s1 = grpc.open_count()
            assert(s1 == s0 + 5 and c1 == c0 + 1, s1 .. " " .. c1)
        end
        collectgarbage("collect")
        collectgarbage("collect")
        local c2, s2 = grpc.open_count()
        return { c0, s0, c2, s2 }
    """, addr=servers["plain"].addr)
    assert res[2] == res[0] and res[3] == res[1]


def test_server_killed_mid_stream_then_reconnect_when_it_comes_back(run, servers):
    srv = tonic_server()
    port = srv.port
    got = {}

    def stream():
        got["res"] = run("""
            local ok, conn, err = grpc.connect(args.addr)
            assert(ok, err)
            local ok, s = conn:new_stream("/resty.test.Probe/Ticks")
            assert(s:send({ count = 10000, interval_ms = 20 }))
            assert(s:close_send())
            local n = 0
            for _ = 1, 10000 do
                local ok, t, st = s:recv()
                if not ok then
                    return { n = n, err = t }
                end
                if not t then
                    return { n = n, ended = true }
                end
                n = n + 1
            end
            return { n = n }
        """, timeout=60, addr=srv.addr)

    t = threading.Thread(target=stream)
    t.start()
    time.sleep(1.0)
    srv.kill()
    t.join(30)
    assert not t.is_alive()
    res = got["res"]
    assert res["n"] > 5, res
    assert "err" in res, res

    call = """
        local ok, conn, err = grpc.connect(args.addr)
        if not ok then return { err = err } end
        local ok, res, st = conn:unary("/helloworld.Greeter/SayHello", { name = "back" },
                                       { timeout = 2 })
        if not ok then return { err = res } end
        return { message = res.message }
    """
    down = run(call, addr="127.0.0.1:%d" % port)
    assert "UNAVAILABLE" in down["err"] or "cannot connect" in down["err"]
    srv2 = tonic_server("--listen", "127.0.0.1:%d" % port)
    try:
        ok = None
        for _ in range(50):
            r = run(call, addr="127.0.0.1:%d" % port)
            if r.get("message"):
                ok = r["message"]
                break
            time.sleep(0.2)
        assert ok == "Hello back!"
    finally:
        srv2.stop()


def test_a_thousand_concurrent_unary_calls_across_two_workers(stage, grpc_stage, servers):
    init = """
        ngx.timer.at(0, function()
            local grpc = require "resty.ffi.grpc"
            local ok, conn, err = grpc.connect("%s")
            if not ok then
                ngx.shared.results:set("err" .. ngx.worker.id(), err)
                return
            end
            local threads = {}
            for i = 1, 500 do
                threads[i] = ngx.thread.spawn(function()
                    local ok, res = conn:unary("/helloworld.Greeter/SayHello",
                                               { name = tostring(i) })
                    return ok and res.message == "Hello " .. i .. "!"
                end)
            end
            local good = 0
            for i = 1, 500 do
                local _, fine = ngx.thread.wait(threads[i])
                if fine then good = good + 1 end
            end
            ngx.shared.results:set("ok" .. ngx.worker.id(), good)
        end)
    """ % servers["plain"].addr
    server = """
    location /results {
        content_by_lua_block {
            local d = ngx.shared.results
            ngx.print(require("cjson").encode({ ok0 = d:get("ok0"), ok1 = d:get("ok1"),
                                                err0 = d:get("err0"), err1 = d:get("err1") }))
        }
    }
    """
    with harness.Nginx(stage, server, http=http_block(grpc_stage["proto"], init,
                                                         "lua_shared_dict results 1m;"),
                       workers=2) as n:
        res = None
        for _ in range(150):
            res = json.loads(n.get("/results")[1])
            if "ok0" in res and "ok1" in res:
                break
            time.sleep(0.2)
        assert (res.get("ok0"), res.get("ok1")) == (500, 500), (res, n.error_log()[-2000:])


def test_protos_compiled_in_init_by_lua_serve_every_worker(stage, grpc_stage, servers):
    http = """
    init_by_lua_block {
        local grpc = require "resty.ffi.grpc"
        assert(grpc.loadfile("%s/helloworld.proto"))
    }
    """ % grpc_stage["proto"]
    server = """
    location /hello {
        content_by_lua_block {
            local grpc = require "resty.ffi.grpc"
            local ok, conn, err = grpc.connect("%s")
            assert(ok, err)
            local ok, res = conn:unary("/helloworld.Greeter/SayHello", { name = "init" })
            ngx.print(ok and res.message or res)
        }
    }
    """ % servers["plain"].addr
    with harness.Nginx(stage, server, http=http, workers=2) as n:
        for _ in range(4):
            assert n.get("/hello") == (200, b"Hello init!")


def test_runtime_cfg_threads_and_spin_serve_sequential_and_concurrent_calls(stage, grpc_stage,
                                                                           servers):
    http = http_block(grpc_stage["proto"], 'require("resty.ffi.grpc").CFG = "threads=2,spin_us=50"')
    server = """
    location /calls {
        content_by_lua_block {
            local grpc = require "resty.ffi.grpc"
            local ok, conn, err = grpc.connect("%s")
            assert(ok, err)
            local good = 0
            for i = 1, 300 do
                local ok, res = conn:unary("/helloworld.Greeter/SayHello", { name = tostring(i) })
                if ok and res.message == "Hello " .. i .. "!" then good = good + 1 end
            end
            local threads = {}
            for i = 1, 100 do
                threads[i] = ngx.thread.spawn(conn.unary, conn, "/helloworld.Greeter/SayHello",
                                              { name = "c" .. i })
            end
            for i = 1, 100 do
                local _, ok, res = ngx.thread.wait(threads[i])
                if ok and res.message == "Hello c" .. i .. "!" then good = good + 1 end
            end
            ngx.print(good)
        }
    }
    """ % servers["plain"].addr
    with harness.Nginx(stage, server, http=http, workers=1) as n:
        assert n.get("/calls") == (200, b"400")
        assert "ffi-grpc" in " ".join(harness.thread_names(n.worker_pids()[0]))


def test_python_grpcio_helloworld_server(run, grpc_stage):
    srv = Server([sys.executable, os.path.join(harness.ROOT, "tests", "grpc",
                                               "helloworld_server.py"),
                  grpc_stage["proto"]]).start()
    try:
        res = run("""
            local ok, conn, err = grpc.connect(args.addr)
            assert(ok, err)
            local out = { msgs = {} }
            for i = 1, 20 do
                local ok, res, md = conn:unary("/helloworld.Greeter/SayHello",
                                               { name = "py" .. i }, { response_metadata = true })
                assert(ok, res)
                out.msgs[i] = res.message
                out.served_by = md["x-served-by"]
            end
            return out
        """, addr=srv.addr)
    finally:
        srv.stop()
    assert res["msgs"] == ["Hello py%d from grpcio!" % i for i in range(1, 21)]
    assert res["served_by"] == "grpcio"
