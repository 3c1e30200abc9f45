"""resty.ffi.grpc's one error shape, against real tonic servers.

Every call (connect, unary, new_stream, send, recv, close_send) fails as
resty.ffi calls do, `false, code, err`, plus the status as a fourth value:
a gRPC status code for what a server said, for transport failures
(UNAVAILABLE) and for deadlines and timeouts (DEADLINE_EXCEEDED);
grpc.BAD_INPUT (100) for calls refused before anything was sent. Each test
runs one category and checks the four values.
"""

import harness
from test_grpc import ENDED, grpc_stage, ngx, run, servers, tonic_server  # noqa: F401

# Lua: the four values of a failed call as a table (nil-safe).
SHAPE = """
    local function shape(ok, code, err, st)
        return { ok = ok, code = code or cjson.null, err = err or cjson.null,
                 status = st or cjson.null }
    end
"""


def assert_status(r, code, name, message_part):
    assert r["ok"] is False, r
    assert r["code"] == code, r
    assert r["err"].startswith("%s (%d): " % (name, code)), r
    assert message_part in r["err"], r
    st = r["status"]
    assert st["code"] == code and st["status"] == name, r
    assert message_part in st["message"], r
    assert r["err"] == "%s (%d): %s" % (name, code, st["message"]), r
    assert isinstance(st["metadata"], dict), r


def assert_bad_input(r, message_part):
    assert r["ok"] is False, r
    assert r["code"] == 100, r
    assert message_part in r["err"], r
    st = r["status"]
    assert st["code"] == 100 and st["status"] == "BAD_INPUT", r
    assert st["message"] == r["err"], r


def test_grpc_status_errors_carry_code_message_metadata_and_details(run, servers, grpc_stage):
    res = run(SHAPE + """
        local out = { bad_input = grpc.BAD_INPUT }
        local ok, conn = grpc.connect(args.addr)
        -- details: what the server sent as grpc-status-details-bin
        out.unary = shape(conn:unary("/resty.test.Probe/Fail",
            { code = 9, message = "not now", details = ngx.encode_base64("\\1\\2why") }))
        out.no_details = shape(conn:unary("/resty.test.Probe/Fail",
            { code = 5, message = "gone" }))
        -- a status that ends a stream: the server does not implement it
        assert(grpc.load([[
            syntax = "proto3"; package ghost; import "helloworld.proto";
            service Ghost { rpc Watch (helloworld.HelloRequest)
                            returns (stream helloworld.HelloReply); }
        ]], { args.proto }))
        local ok2, s = conn:new_stream("/ghost.Ghost/Watch")
        assert(ok2, s)
        s:send({ name = "x" })
        s:close_send()
        out.stream = shape(s:recv())
        return out
    """, addr=servers["plain"].addr, proto=grpc_stage["proto"])
    assert res["bad_input"] == 100
    assert_status(res["unary"], 9, "FAILED_PRECONDITION", "not now")
    st = res["unary"]["status"]
    assert st["message"] == "not now"
    assert st["metadata"]["x-fail-detail"] == "detail", st
    assert st["details"] == "AQJ3aHk=", st                 # base64 of \1\2why
    assert_status(res["no_details"], 5, "NOT_FOUND", "gone")
    assert "details" not in res["no_details"]["status"], res
    assert_status(res["stream"], 12, "UNIMPLEMENTED", "")


def test_transport_errors_are_unavailable(run, servers):
    closed = harness.free_port()
    srv = tonic_server()
    try:
        res = run(SHAPE + """
            local out = {}
            out.refused = shape(grpc.connect("127.0.0.1:" .. args.closed,
                                             { connect_timeout = 2 }))
            local ok, conn = grpc.connect(args.addr)
            assert(ok, conn)
            assert(conn:unary("/helloworld.Greeter/SayHello", { name = "up" }))
            return out
        """, addr=srv.addr, closed=closed)
        srv.kill()
        down = run(SHAPE + """
            local ok, conn, err, st = grpc.connect(args.addr)
            if not ok then return { connect = shape(ok, conn, err, st) } end
            return { call = shape(conn:unary("/helloworld.Greeter/SayHello",
                                             { name = "down" }, { timeout = 2 })) }
        """, addr=srv.addr)
    finally:
        srv.stop()
    assert_status(res["refused"], 14, "UNAVAILABLE", "cannot connect to 127.0.0.1:%d" % closed)
    # the worker's cached channel to the dead server: its calls fail alike
    r = down.get("call") or down.get("connect")
    assert_status(r, 14, "UNAVAILABLE", "")


def test_bad_input_is_refused_before_anything_is_sent(run, servers):
    res = run(SHAPE + ENDED + """
        local tag = "bad-" .. ngx.now() .. "-" .. ngx.worker.pid()
        local out = {}
        local ok, conn = grpc.connect(args.addr)
        local sleep = "/resty.test.Probe/Sleep"
        -- refused by the runtime (it knows the messages)
        out.unknown_method = shape(conn:unary("/no.Such/Method", {}))
        out.unknown_field = shape(conn:unary(sleep, { ms = 1, tag = tag, nosuch = 1 }))
        out.wrong_type = shape(conn:unary(sleep, { ms = "soon", tag = tag }))
        out.wrong_kind = shape(conn:new_stream(sleep))
        out.bad_md_key = shape(conn:unary(sleep, { ms = 1, tag = tag },
                                          { metadata = { ["bad key"] = "v" } }))
        -- refused in Lua
        out.unencodable = shape(conn:unary(sleep, { ms = 1, tag = tag, f = print }))
        out.bad_timeout = shape(conn:unary(sleep, { ms = 1, tag = tag }, { timeout = -1 }))
        out.bad_md = shape(conn:unary(sleep, { ms = 1, tag = tag }, { metadata = { 5 } }))
        out.bad_path = shape(conn:unary(42, {}))
        out.bad_option = shape(grpc.connect(args.addr, { nosuch = 1 }))
        out.bad_target = shape(grpc.connect(""))
        out.bad_tls = shape(grpc.connect(args.addr, { cert = "x" }))
        -- misuse: a closed stream, a closed connection
        local ok2, s = conn:new_stream("/routeguide.RouteGuide/RouteChat")
        s:close()
        out.closed_stream = { shape(s:send({})), shape(s:recv()), shape(s:close_send()) }
        conn:close()
        out.closed_conn = shape(conn:unary(sleep, { ms = 1, tag = tag }))
        local ok3, c2 = grpc.connect(args.addr)
        out.seen = ended(c2, tag, function() return true end)
        return out
    """, addr=servers["plain"].addr)
    assert_bad_input(res["unknown_method"], "unknown method '/no.Such/Method'")
    assert_bad_input(res["unknown_field"], "does not fit message resty.test.SleepRequest")
    assert_bad_input(res["wrong_type"], "does not fit message resty.test.SleepRequest")
    assert_bad_input(res["wrong_kind"], "unary method: call it with conn:unary")
    assert_bad_input(res["bad_md_key"], "bad metadata")
    assert_bad_input(res["unencodable"], "cannot encode the table")
    assert_bad_input(res["bad_timeout"], "timeout must be a number of seconds above 0")
    assert_bad_input(res["bad_md"], "metadata must be a table of strings")
    assert_bad_input(res["bad_path"], "path must be a string")
    assert_bad_input(res["bad_option"], "unknown connect option 'nosuch'")
    assert_bad_input(res["bad_target"], "target must be a string")
    assert_bad_input(res["bad_tls"], "opts.cert and opts.priv_key go together")
    for r in res["closed_stream"]:
        assert_bad_input(r, "stream is closed")
    assert_bad_input(res["closed_conn"], "connection is closed")
    # none of the tagged calls reached the server
    assert res["seen"] == {"started": 0, "finished": 0, "cancelled": 0}, res


def test_every_timeout_is_deadline_exceeded(run, servers):
    res = run(SHAPE + """
        local out = {}
        local ok, conn = grpc.connect(args.addr)
        local sleep = "/resty.test.Probe/Sleep"
        -- the call's deadline, and the connection's default one
        out.deadline = shape(conn:unary(sleep, { ms = 3000 }, { timeout = 0.2 }))
        local _, c2 = grpc.connect(args.addr, { timeout = 0.2 })
        out.default_deadline = shape(c2:unary(sleep, { ms = 3000 }))
        -- a stream's deadline covers the whole stream
        local _, s = conn:new_stream("/resty.test.Probe/Ticks", { timeout = 0.3 })
        s:send({ count = 100, interval_ms = 1000 })
        s:close_send()
        assert(s:recv())
        out.stream_deadline = shape(s:recv())
        -- no deadline: the bridge's own wait for the answer times out
        local saved = grpc.NO_DEADLINE_WAIT
        grpc.NO_DEADLINE_WAIT = 0.2
        out.wait = shape(conn:unary(sleep, { ms = 3000 }))
        local _, s2 = conn:new_stream("/resty.test.Probe/Ticks")
        s2:send({ count = 100, interval_ms = 1000 })
        s2:close_send()
        assert(s2:recv())
        out.stream_wait = shape(s2:recv())
        grpc.NO_DEADLINE_WAIT = saved
        return out
    """, addr=servers["plain"].addr)
    assert_status(res["deadline"], 4, "DEADLINE_EXCEEDED", "deadline of 0.200 s")
    assert_status(res["default_deadline"], 4, "DEADLINE_EXCEEDED", "deadline of 0.200 s")
    assert_status(res["stream_deadline"], 4, "DEADLINE_EXCEEDED", "deadline of 0.300 s")
    assert_status(res["wait"], 4, "DEADLINE_EXCEEDED", "timed out after 0.2 s")
    assert_status(res["stream_wait"], 4, "DEADLINE_EXCEEDED", "timed out after 0.2 s")


def test_load_errors_stay_nil_and_a_message(run):
    res = run("""
        local ok, err = grpc.load("syntax = \\"proto3\\"; message {")
        local ok2, err2 = grpc.loadfile("/nonexistent/x.proto")
        return { load = { ok == nil, err }, loadfile = { ok2 == nil, err2 } }
    """)
    # load/loadfile are not calls: true, or nil and why (as io.open)
    assert res["load"][0] is True and "cannot compile" in res["load"][1], res
    assert res["loadfile"][0] is True and "no such file" in res["loadfile"][1], res
