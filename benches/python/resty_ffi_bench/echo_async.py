"""Echo runtime in the loader's handler style, `async def`: the loader runs
it on the runtime's asyncio loop, one coroutine per call (the sync
handler of echo_handler.py runs on handler threads instead).

A call whose coroutine never awaits anything is answered within the loop
turn that took it: what this measures is the loop's way to the call and
back (benches/README.md, "Python async def handlers").
"""


async def handle(req):
    return req


def init(cfg, tq):
    return handle
