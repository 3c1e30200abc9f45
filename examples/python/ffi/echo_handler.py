"""Echo runtime in the handler style: the loader polls, Python only answers.

`ngx.load_ffi("ffi_python3", "/path/to/examples/python/ffi.echo_handler,init")`
calls `init(cfg, tq)`; returning a callable (instead of 0) tells the loader
to run the poll loop itself and call `handle(req)` per request on a pool of
threads (`handle.threads` of them). Return bytes, str or None; raise to
answer with an error (rc 1, "ExceptionType: text").

`init_async` returns the same handler as `async def`: the loader runs it on
an asyncio loop owned by this runtime (cfg "...ffi.echo_handler,init_async").
"""

import resty_ffi


def handle(req):
    return req


handle.threads = 2


async def handle_async(req):
    return req


def init(cfg, tq):
    prefix = resty_ffi.cfg_string(cfg)
    if prefix:
        def prefixed(req):
            return prefix.encode() + req
        prefixed.threads = handle.threads
        return prefixed
    return handle


def init_async(cfg, tq):
    return handle_async
