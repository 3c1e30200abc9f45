"""Server-Sent Events from a Python async generator: a simulated language
model streams its answer token by token, and stops when the client leaves.

`require("resty.ffi").load("ffi_python3", "/path/to/examples/python/ffi.sse,init,0.05")`,
then `rt:__stream(prompt)` yields one SSE event per token
(`data: {"token": "..."}`), then `event: done`. The cfg rest is the delay
per token in seconds (default 0.05), standing in for the model's think
time. Location `/python/sse` of `examples/python/nginx.conf` relays the
events to the client as `text/event-stream`; try `curl -N`.

The generator runs on the runtime's asyncio loop, so a thousand clients
waiting for tokens cost one thread. When a client disconnects, nginx
closes the stream and the generator gets `CancelledError` where it awaits
the next token (or `GeneratorExit` at a `yield`): generation stops at once
instead of running on for nobody. It logs a line to error.log when that
happens.
"""

import asyncio
import json

import resty_ffi

ANSWER = ("resty-ffi relays every token from a Python async generator to "
          "the client the moment it is made, and stops the generator as "
          "soon as the client goes away.")


def init(cfg, tq):
    delay = float(resty_ffi.cfg_string(cfg) or 0.05)

    async def generate(prompt):
        prompt = (prompt or b"").decode(errors="replace")
        yield "event: start\ndata: %s\n\n" % json.dumps({"prompt": prompt})
        sent = 0
        try:
            for word in ANSWER.split(" "):
                await asyncio.sleep(delay)   # the model thinks
                yield "data: %s\n\n" % json.dumps({"token": word + " "})
                sent += 1
        except (asyncio.CancelledError, GeneratorExit):
            print("sse: the client left after %d tokens; generation stopped" % sent)
            raise
        yield "event: done\ndata: {}\n\n"

    return generate
