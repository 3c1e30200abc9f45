"""resty_ffi._serve: the poll loop behind the handler style.

A runtime's init may return a handler instead of 0; the loader then calls
`start(handler, tq, module)` and this module serves the queue:

- a plain callable, `handle(req: bytes) -> bytes | str | None`, runs on a
  pool of threads that each poll the queue (`handle.threads`, default 4);
- an `async def handle(req)` runs on an asyncio loop the runtime owns, in
  its own thread; the loop waits on the queue's readiness fd (no poller
  thread, no hand-over), takes tasks in batches and starts a coroutine per
  task, so many requests are in flight at once.

An exception in the handler (or a response of the wrong type) becomes an
error answer, rc 1 with "ExceptionType: text", plus a traceback in
error.log; the runtime keeps serving.

Shutdown: when the queue is finished (`rt:__unload()`), pollers see None
and end; the asyncio loop first lets the requests in flight finish, then
stops and closes. Threads are named `py<i>-<module>` (see top -H).
"""

import asyncio
import inspect
import os
import sys
import threading
import traceback

import resty_ffi

DEFAULT_THREADS = 4
BATCH = 64


def _describe(exc):
    return "%s: %s" % (type(exc).__name__, exc)


def _fail(name, task, exc):
    print("%s: handler raised %s\n%s" % (
        name, _describe(exc),
        "".join(traceback.format_exception(exc)).rstrip()), file=sys.stderr)
    if not task.answered:
        task.respond(1, _describe(exc))


def _answer(name, task, rsp):
    try:
        task.respond(0, rsp)
    except Exception as exc:  # wrong response type: tell the caller
        _fail(name, task, exc)


def _is_async(handler):
    return (inspect.iscoroutinefunction(handler)
            or inspect.iscoroutinefunction(getattr(handler, "__call__", None)))


def _thread_name(index, module):
    return ("py%d-%s" % (index, module.rsplit(".", 1)[-1]))[:15]


def _sync_worker(handler, tq, name, index):
    resty_ffi.name_thread(_thread_name(index, name))
    while True:
        task = resty_ffi.poll(tq)
        if task is None:
            return
        try:
            rsp = handler(task.req)
            if inspect.isawaitable(rsp):
                raise TypeError("the handler returned an awaitable; declare it "
                                "`async def` so the loader runs it on asyncio")
        except BaseException as exc:  # the runtime keeps serving
            _fail(name, task, exc)
            continue
        _answer(name, task, rsp)
        del task


class AsyncRunner:
    """An asyncio loop in its own thread, woken by the queue's ready fd."""

    def __init__(self, handler, tq, name):
        self.handler = handler
        self.tq = tq
        self.name = name
        self.loop = asyncio.new_event_loop()
        self.inflight = set()
        self.finishing = False
        self.fd = resty_ffi.queue_fd(tq)

    def start(self):
        threading.Thread(target=self._run_loop, daemon=True,
                         name=_thread_name(0, self.name)).start()

    def _run_loop(self):
        resty_ffi.name_thread(_thread_name(0, self.name))
        asyncio.set_event_loop(self.loop)
        self.loop.add_reader(self.fd, self._ready)
        self.loop.call_soon(self._ready)
        try:
            self.loop.run_forever()
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()

    def _ready(self):
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            pass
        while True:
            tasks = resty_ffi.drain(self.tq, BATCH)
            self._spawn(tasks)
            if len(tasks) == BATCH:
                continue
            waiting = resty_ffi.queue_arm(self.tq)
            if waiting == 0:
                return  # a post makes the fd readable
            if waiting < 0:
                self.loop.remove_reader(self.fd)
                self._finish()
                return

    def _spawn(self, tasks):
        for task in tasks:
            fut = self.loop.create_task(self._serve(task))
            self.inflight.add(fut)
            fut.add_done_callback(self._done)

    def _done(self, fut):
        self.inflight.discard(fut)
        if self.finishing and not self.inflight:
            self.loop.stop()

    def _finish(self):
        self.finishing = True
        if not self.inflight:
            self.loop.stop()

    async def _serve(self, task):
        try:
            rsp = await self.handler(task.req)
        except BaseException as exc:  # CancelledError too: answer, go on
            _fail(self.name, task, exc)
            return
        _answer(self.name, task, rsp)


def start(handler, tq, name):
    """Serves queue `tq` with `handler`; returns once threads are started."""
    if _is_async(handler):
        AsyncRunner(handler, tq, name).start()
        return
    threads = getattr(handler, "threads", DEFAULT_THREADS)
    if (not isinstance(threads, int) or isinstance(threads, bool)
            or not 1 <= threads <= 256):
        raise ValueError("handler.threads must be an int in 1..256, got %r"
                         % (threads,))
    for i in range(threads):
        threading.Thread(target=_sync_worker, args=(handler, tq, name, i),
                         daemon=True, name=_thread_name(i, name)).start()
