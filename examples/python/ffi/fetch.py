"""An asyncio runtime doing real concurrent network I/O: HTTP/1.1 GETs.

`ngx.load_ffi("ffi_python3", "/path/to/examples/python/ffi.fetch,init")`,
then `rt:get("http://127.0.0.1:8080/path")` answers the response body (or
fails with rc 1 and the error). Every call is one coroutine on the
runtime's own asyncio loop, so a hundred slow backends cost one thread, and
the nginx worker never blocks. Standard library only (asyncio streams).

cfg rest (optional): a timeout in seconds, default 10.
"""

import asyncio
import urllib.parse

import resty_ffi

TIMEOUT = 10.0


class FetchError(Exception):
    pass


async def get(url, timeout):
    u = urllib.parse.urlsplit(url)
    if u.scheme != "http" or not u.hostname:
        raise FetchError("only http://host[:port]/path URLs, got %r" % url)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(u.hostname, u.port or 80), timeout)
    try:
        path = u.path or "/"
        if u.query:
            path += "?" + u.query
        writer.write(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                      % (path, u.netloc)).encode("latin-1"))
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or status[1] != b"200":
        raise FetchError("%s answered %s" % (url, b" ".join(status[1:]).decode()))
    if b"transfer-encoding: chunked" in head.lower():
        raise FetchError("chunked responses are not supported by this example")
    return body


def init(cfg, tq):
    text = resty_ffi.cfg_string(cfg)
    timeout = float(text) if text else TIMEOUT

    async def handle(req):
        return await get(req.decode(), timeout)

    return handle
