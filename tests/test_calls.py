"""Single calls through a real nginx: payloads, errors, phases, loading."""

import os

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
