"""resty_ffi._serve: the poll loop behind the handler style.

A runtime's init may return a handler instead of 0; the loader then calls
`start(handler, tq, module)` and this module serves the queue:

- a plain callable, `handle(req: bytes) -> bytes | str | None`, runs on a
  pool of threads that each poll the queue (`handle.threads`, default 4);
- an `async def handle(req)` runs on an asyncio loop the runtime owns, in
  its own thread; the loop waits on the queue's readiness fd (no poller
  thread, no hand-over), takes tasks in batches and starts a coroutine per
  task, so many requests are in flight at once.

  Sequential calls: waking the sleeping loop through the fd, then the
  parked caller through nginx, costs two thread wake-ups a call (~70 µs
  here, against ~1.3 µs for a sync handler whose thread spins in `poll`).
  So when the loop has answered its last call in flight, the calls since
  it last slept came one at a time, and it has nothing else to do (no
  callback ready, no timer due within 1 ms, no I/O ready: it was about to
  sleep), it first looks for the caller's next call with
  `resty_ffi.poll_spin`: a spin within the queue's poll budget (ffi.load's
  `poll_spin_us`, 50 µs by default), GIL released, counted by the core as
  a spinning poller so the caller spins for the answer too, and closed by
  the core's gate for a while after misses (on one CPU it yields once).
  A call found so is served in the next loop turn, with no trip through
  the fd; only when nothing came does the loop arm the fd and sleep. This
  is the selector's `select` (`_Selector`), so timers and I/O keep their
  turns: the loop polls its I/O every turn, and spins only where it would
  have slept. Calls in flight together (a burst: concurrent callers, nginx
  under load) stop the looks until the loop next sleeps: a spin between
  bursts takes the CPU nginx needs. (A lone call between bursts still
  starts them again; the core's gate closes them after misses.)

A handler that is a generator function or an async generator function, or
that returns an iterator or an async iterator, *streams*: each item (bytes,
bytearray, memoryview or str) is sent as a chunk (`task.respond_chunk`),
then the task ends with rc 0. A plain call gets the chunks joined.

- Sync iterators run on the handler thread that called the handler; a
  chunk beyond the stream's window blocks that thread (GIL released) until
  the reader catches up.
- Async iterators run on an asyncio loop (the runtime's, or for a sync
  handler one the runtime starts on first need) and never block it: a
  chunk the window refuses (`try_respond_chunk` -> 2) waits for the queue's
  space fd, then is offered again.
- Cancellation (the stream closed, the client gone, a timeout): the
  iterator is closed, `close()` / `aclose()`, so a generator sees
  `GeneratorExit` at its `yield`; an async iterator awaiting something
  (the next token) is cancelled at once, `CancelledError` where it awaits,
  because the core signals the space fd when a stream is cancelled and
  the loop then looks at its streams (`task.cancelled`). A sync generator
  learns it at its next `yield`. The task then ends (rc 1, "cancelled").

A plain call given up (its timeout, its client gone, its light thread
killed) cancels an `async def` handler's coroutine the same way: the core
signals the space fd for a plain call too, and the loop looks at its calls
in flight as at its streams, so the coroutine sees `CancelledError` where
it awaits, at once. The task then ends (rc 1, "cancelled", to nobody: the
core frees an answer nobody waits for); a coroutine that catches the error
and answers anyway answers nobody too. Nothing is logged for it. A sync
handler running on a thread cannot be interrupted: it runs to its end
(a native runtime can watch `task.cancelled`). Costs nothing per call:
the calls in flight are the loop's own bookkeeping, looked at only when
the space fd says something was cancelled or made room.

An exception in the handler (or a response of the wrong type) becomes an
error answer, rc 1 with "ExceptionType: text", plus a traceback in
error.log; the runtime keeps serving. Mid-stream, the chunks already sent
stay sent and the error ends the stream.

Shutdown: when the queue is finished (`rt:__unload()`), pollers see None
and end; the asyncio loop first lets the requests in flight finish, then
stops and closes; so does the loop a sync handler started for async
iterators, once its threads ended. Threads are named `py<i>-<module>`
(that loop: `py99-<module>`; see top -H).
"""

import asyncio
import inspect
import os
import selectors
import sys
import threading
import traceback

import resty_ffi

DEFAULT_THREADS = 4
BATCH = 64
# The loop looks for a sequential caller's next call (a spin of up to the
# queue's poll budget, 50 µs by default) only when no timer is due sooner.
LOOK_BEFORE = 0.001
# Of every asyncio runtime of this process: how often a loop looked for
# the next call (`looks`) and found it so (`found`). For tests and benches.
LOOKS = {"looks": 0, "found": 0}

# What a handler answers in one piece (an iterator that is none of these streams).
_WHOLE = (bytes, bytearray, memoryview, str)
CANCELLED = "resty_ffi: cancelled: nobody waits for the answer any more"


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
    return any(inspect.iscoroutinefunction(f) or inspect.isasyncgenfunction(f)
               for f in (handler, getattr(handler, "__call__", None)))


def _is_iterator(rsp):
    return (rsp is not None and not isinstance(rsp, _WHOLE)
            and hasattr(type(rsp), "__next__"))


def _is_async_iterator(rsp):
    return hasattr(type(rsp), "__anext__")


def _close(name, it):
    """close() a sync iterator that has one (GeneratorExit at its yield)."""
    close = getattr(it, "close", None)
    if close is None:
        return
    try:
        close()
    except BaseException as exc:  # a generator that yields on close, ...
        print("%s: closing the stream's generator raised %s" % (
            name, _describe(exc)), file=sys.stderr)


async def _aclose(name, ait):
    """aclose() an async iterator that has one."""
    aclose = getattr(ait, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except BaseException as exc:
        print("%s: closing the stream's async generator raised %s" % (
            name, _describe(exc)), file=sys.stderr)


def _stream_sync(name, task, it):
    """Sends the items of sync iterator `it` as chunks of `task`'s answer,
    on this (handler) thread, then ends the task."""
    try:
        for item in it:
            if task.respond_chunk(item) == 1:  # blocks while the window is full
                _close(name, it)
                task.respond(1, CANCELLED)
                return
    except BaseException as exc:  # from the generator, or a bad item
        _close(name, it)
        _fail(name, task, exc)
        return
    task.respond(0)


async def _on_loop(it):
    """A sync iterator returned by an async handler, iterated on the loop
    (it must not block); closed with the stream."""
    try:
        for item in it:
            yield item
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def _thread_name(index, module):
    return ("py%d-%s" % (index, module.rsplit(".", 1)[-1]))[:15]


class SyncRuntime:
    """A sync handler served by `threads` threads polling the queue; async
    iterators it returns go to an asyncio loop started on first need."""

    def __init__(self, handler, tq, name, threads):
        self.handler = handler
        self.tq = tq
        self.name = name
        self.threads = threads
        self.lock = threading.Lock()
        self.running = threads
        self.loop = None  # an AsyncRunner for async iterators

    def start(self):
        for i in range(self.threads):
            threading.Thread(target=self._worker, args=(i,), daemon=True,
                             name=_thread_name(i, self.name)).start()

    def _worker(self, index):
        resty_ffi.name_thread(_thread_name(index, self.name))
        try:
            self._serve()
        finally:
            with self.lock:
                self.running -= 1
                last = self.running == 0
            if last and self.loop is not None:
                self.loop.finish_soon()

    def _serve(self):
        name = self.name
        while True:
            task = resty_ffi.poll(self.tq)
            if task is None:
                return
            try:
                rsp = self.handler(task.req)
                # bytes, str or None are answered as they are, without the
                # checks for awaitables and iterators (1.2 µs a call)
                whole = rsp is None or isinstance(rsp, _WHOLE)
                if not whole and inspect.isawaitable(rsp):
                    raise TypeError("the handler returned an awaitable; declare "
                                    "it `async def` so the loader runs it on "
                                    "asyncio")
            except BaseException as exc:  # the runtime keeps serving
                _fail(name, task, exc)
                continue
            if whole:
                _answer(name, task, rsp)
            elif _is_async_iterator(rsp):
                self._async_loop().submit(task, rsp)
            elif _is_iterator(rsp):
                _stream_sync(name, task, rsp)
            else:
                _answer(name, task, rsp)
            del task, rsp

    def _async_loop(self):
        with self.lock:
            if self.loop is None:
                self.loop = AsyncRunner(None, self.tq, self.name, serve=False)
                self.loop.start()
            return self.loop


class Streams:
    """The streams one asyncio loop produces for one queue, and the plain
    calls it serves.

    One reader of the queue's space fd per queue (an eventfd read by two
    loops would lose wake-ups): on readable it wakes every producer that
    waits for window room (they offer again; readiness may be spurious)
    and cancels the asyncio task of every stream or call nobody waits for
    any more (the core signals the fd when a task is cancelled), so a
    generator awaiting its next item, or a handler awaiting anything,
    sees CancelledError at once. `calls` is the runner's calls in flight
    (asyncio task -> resty_ffi.Task), None without. Loop thread only.
    """

    def __init__(self, loop, tq, name, calls=None):
        self.loop = loop
        self.name = name
        self.fd = resty_ffi.queue_space_fd(tq)
        self.live = {}       # resty_ffi.Task -> the asyncio task serving it
        self.calls = calls
        self.waiting = []    # futures of producers waiting for room
        loop.add_reader(self.fd, self._space)

    def _space(self):
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            pass
        waiting, self.waiting = self.waiting, []
        for fut in waiting:
            if not fut.done():
                fut.set_result(None)
        gone = {self.live.pop(t) for t in [t for t in self.live if t.cancelled]}
        if self.calls:
            # a stream served by a call's coroutine is in both: cancel once
            gone.update(f for f, t in self.calls.items()
                        if t is not None and t.cancelled)
        for fut in gone:
            if not fut.done():
                fut.cancel()

    async def stream(self, task, ait):
        """Sends the items of async iterator `ait` as chunks of `task`'s
        answer, then ends the task. Runs as (part of) an asyncio task of
        its own, which `_space` cancels when the stream is."""
        me = asyncio.current_task()
        self.live[task] = me
        name = self.name
        try:
            async for item in ait:
                rc = task.try_respond_chunk(item)
                while rc == 2:  # window full: wait for room, offer again
                    fut = self.loop.create_future()
                    self.waiting.append(fut)
                    await fut
                    rc = task.try_respond_chunk(item)
                if rc == 1:
                    raise asyncio.CancelledError()
        except asyncio.CancelledError as exc:
            self.live.pop(task, None)
            if task.cancelled:  # ours: nobody waits any more
                if hasattr(me, "uncancel") and me.cancelling():
                    me.uncancel()
                await _aclose(name, ait)
                if not task.answered:
                    task.respond(1, CANCELLED)
                return
            await _aclose(name, ait)
            _fail(name, task, exc)
            return
        except BaseException as exc:  # from the generator, or a bad item
            self.live.pop(task, None)
            await _aclose(name, ait)
            _fail(name, task, exc)
            return
        self.live.pop(task, None)
        task.respond(0)


class _Selector(selectors.DefaultSelector):
    """The loop's selector, with the runner's look for the next call before
    each select that may block (see `AsyncRunner._before_select`)."""

    runner = None

    def select(self, timeout=None):
        runner = self.runner
        if runner is not None and runner.serving:
            return runner._before_select(super().select, timeout)
        return super().select(timeout)


class AsyncRunner:
    """An asyncio loop in its own thread, woken by the queue's ready fd
    (with `serve`; without, it only runs the streams handed to `submit`).

    The fd is armed (`queue_arm`) only when the loop is about to sleep; a
    post then writes it. Otherwise the loop takes what is queued itself,
    every turn (`_before_select`), so a loop kept busy still sees its
    calls, and no post pays for a write nobody needs."""

    def __init__(self, handler, tq, name, serve=True):
        self.handler = handler
        self.tq = tq
        self.name = name
        self.serve = serve
        self.selector = _Selector()
        self.loop = asyncio.SelectorEventLoop(self.selector)
        # asyncio task -> the resty_ffi.Task it serves (None: a stream
        # handed over by submit, which Streams follows itself)
        self.inflight = {}
        self.finishing = False
        self.fd = resty_ffi.queue_fd(tq) if serve else None
        self.serving = serve      # the queue is not finished yet
        self.armed = False        # a post will write the fd
        self.answered = False     # a call answered since the last look
        self.overlapped = False   # calls in flight together since the last sleep
        self.streams = Streams(self.loop, tq, name, self.inflight)

    def start(self):
        threading.Thread(target=self._run_loop, daemon=True,
                         name=_thread_name(0 if self.serve else 99, self.name)
                         ).start()

    def submit(self, task, ait):
        """From another thread: stream `ait` as `task`'s answer."""
        self.loop.call_soon_threadsafe(
            self._spawn_one, self.streams.stream(task, ait))

    def finish_soon(self):
        """From another thread: stop once the streams in flight end."""
        self.loop.call_soon_threadsafe(self._finish)

    def _run_loop(self):
        resty_ffi.name_thread(_thread_name(0 if self.serve else 99, self.name))
        asyncio.set_event_loop(self.loop)
        if self.serve:
            self.loop.add_reader(self.fd, self._ready)
            self.selector.runner = self
        try:
            self.loop.run_forever()
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()

    def _ready(self):
        """The fd is readable: a post found it armed (and disarmed it)."""
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            pass
        self.armed = False
        self._take()

    def _take(self):
        """Starts a coroutine for every task queued now; True if any."""
        took = False
        while True:
            tasks = resty_ffi.drain(self.tq, BATCH)
            if not tasks:
                return took
            took = True
            self._spawn(tasks)
            if len(tasks) < BATCH:
                return took

    def _before_select(self, select, timeout):
        """Runs in the loop's select, `timeout` as the loop computed it (0:
        callbacks are ready; None or more: nothing to do for that long).

        Takes what is queued; when the loop would sleep, first looks for a
        sequential caller's next call (`poll_spin`), then arms the fd."""
        if self.armed:
            return select(timeout)
        if self._take() or timeout == 0:
            return select(0)
        if self.answered:
            self.answered = False
            if (not self.overlapped and not self.inflight
                    and (timeout is None or timeout > LOOK_BEFORE)):
                events = select(0)
                if events:  # I/O first; look again when the loop is idle
                    self.answered = True
                    return events
                LOOKS["looks"] += 1
                task = resty_ffi.poll_spin(self.tq)
                if task is not None:
                    LOOKS["found"] += 1
                    self._spawn((task,))
                    return []
        waiting = resty_ffi.queue_arm(self.tq)
        if waiting < 0:
            self.serving = False
            self.loop.remove_reader(self.fd)
            self._finish()
            return select(0)
        if waiting > 0:
            self._take()
            return select(0)
        self.armed = True
        self.overlapped = False
        return select(timeout)

    def _spawn(self, tasks):
        for task in tasks:
            fut = self.loop.create_task(self._serve(task))
            self.inflight[fut] = task
        if len(self.inflight) > 1:
            self.overlapped = True

    def _spawn_one(self, coro, task=None):
        fut = self.loop.create_task(coro)
        self.inflight[fut] = task
        fut.add_done_callback(self._done)

    def _done(self, fut):
        self.inflight.pop(fut, None)
        if self.finishing and not self.inflight:
            self.loop.stop()

    def _finish(self):
        self.finishing = True
        if not self.inflight:
            self.loop.stop()

    async def _serve(self, task):
        """Serves one call, then leaves the calls in flight (here, not in a
        done callback: one would cost the loop another turn before it may
        look for the next call)."""
        try:
            await self._call(task)
        finally:
            self.answered = True
            self._done(asyncio.current_task())

    async def _call(self, task):
        try:
            rsp = self.handler(task.req)
            if inspect.isawaitable(rsp):
                rsp = await rsp
        except asyncio.CancelledError as exc:
            if not task.cancelled:  # not ours: an error like any other
                _fail(self.name, task, exc)
                return
            me = asyncio.current_task()
            if hasattr(me, "uncancel") and me.cancelling():
                me.uncancel()
            if not task.answered:
                task.respond(1, CANCELLED)
            return
        except BaseException as exc:  # the runtime keeps serving
            _fail(self.name, task, exc)
            return
        if _is_async_iterator(rsp):
            await self.streams.stream(task, rsp)
        elif _is_iterator(rsp):
            await self.streams.stream(task, _on_loop(rsp))
        else:
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
    SyncRuntime(handler, tq, name, threads).start()
