"""Echo runtime in the loader's handler style: Python writes only handle().

`init(cfg, tq)` returns the handler; the loader polls the queue and calls
it with each request's bytes, answering with what it returns.
"""


def handle(req):
    return req


def init(cfg, tq):
    return handle
