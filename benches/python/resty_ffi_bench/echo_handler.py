"""Echo runtime in the loader's handler style: Python writes only handle().

`init(cfg, tq)` returns the handler; the loader polls the queue and calls
it with each request's bytes, answering with what it returns.

For the streaming section, a request `!stream:N:SIZE` is answered by an
async generator yielding N chunks of SIZE bytes as fast as the window
lets it: the loader runs it on the runtime's asyncio loop (started on
first need), offering chunks with try_respond_chunk and waiting on the
queue's space fd when the window is full.
"""


async def stream(n, size):
    chunk = b"x" * size
    for _ in range(n):
        yield chunk


def handle(req):
    if req.startswith(b"!stream:"):
        n, size = req[len(b"!stream:"):].split(b":")
        return stream(int(n), int(size))
    return req


def init(cfg, tq):
    return handle
