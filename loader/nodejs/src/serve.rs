//! The handler style: `func(cfg)` returned `(req: Buffer) => answer`, and
//! the loader serves the queue with it on Node's main thread.
//!
//! JavaScript runs on one thread, so the handler runs on Node's event loop
//! (no thread of ours hands tasks over: waking a sleeping loop from another
//! thread costs 20-40 µs here, more than a whole call should). The loop
//! takes tasks itself:
//! - when the queue's readiness fd (an eventfd the core writes when a task
//!   arrives while the loop is armed) becomes readable, or while an idle
//!   handle keeps the loop turning, [`Server::pump`] takes what is queued
//!   (a batch), or else spins within the queue's poll budget for the next
//!   call (`resty_ffi_task_poll_spin`: counted as a spinning poller, so the
//!   Lua caller spins for the answer too, and the core's gate turns the
//!   spin off when it does not pay, or on a single CPU);
//! - tasks found: each runs the handler with a Buffer copy of the request
//!   (null for nil), inside one callback scope per batch (promise reactions
//!   and nextTicks run when it closes); the idle handle stays on, so the
//!   next loop turn (after timers and I/O) looks again;
//! - nothing within the spin: the idle handle stops, the fd is armed, and
//!   the loop sleeps in epoll until a post writes the fd.
//!
//! Answers: a Buffer / TypedArray / ArrayBuffer or a string (UTF-8) is
//! copied into the answer, null or undefined answers nil; any other object
//! goes to the bootstrap's `track(value, id)`: a Promise (or any thenable)
//! is answered when it settles, an async iterable (an async generator, say)
//! or a generator streams, each value one chunk
//! (`resty_ffi_try_respond_chunk` through `_chunk`; when the stream's
//! window is full the producer awaits the queue's space fd, watched here;
//! when the reader has gone the iterator is closed, its `finally` blocks
//! run). A throw or a rejection answers rc 1 with `Name: message` and logs
//! the stack at error level. Any other value answers rc 1 saying what it
//! was.
//!
//! A call given up (its timeout, its client gone): the core marks the task
//! cancelled and signals the queue's space fd. Every time that fd is
//! readable the bootstrap's `onSpace()` runs (not only when a producer
//! waits for room), and aborts the AbortSignal of each call in flight
//! whose handler took one and whose task [`cancelled`] says is given up.
//! A call that is answered costs nothing more: nothing looks at calls in
//! flight until the fd fires.
//!
//! Shutdown: when the queue is finished (`rt:__unload()`) and drained, the
//! watch and the idle handle are closed; Promises still pending answer
//! when they settle (the core drops answers nobody waits for).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::{c_int, c_void};

use crate::abi::{self, Chunk, TaskRef};
use crate::napi::{self, Env, Fail, Ref, Value};
use crate::{binding, host};

/// Tasks taken per callback scope.
const BATCH: usize = 64;

/// The longest one loop turn serves tasks before the loop runs its timers
/// and I/O again.
const TURN: std::time::Duration = std::time::Duration::from_millis(1);

/// One served queue. Lives on Node's main thread, for the life of the
/// process (a few hundred bytes per load; handles are closed at finish).
struct Server {
    env: Env,
    tq: usize,
    name: String,
    handler: Ref,
    fd: c_int,
    watch: Cell<*mut c_void>,
    idle: Cell<*mut c_void>,
    idling: Cell<bool>,
    /// The queue's space fd and its watch (for streams whose window is
    /// full, and calls given up).
    space_fd: c_int,
    space_watch: Cell<*mut c_void>,
}

/// What every server shares: the bootstrap's `track(value, id)` and
/// `onSpace()`, and one async context for callback scopes.
struct Shared {
    track: Ref,
    on_space: Ref,
    resource: Ref,
    ctx: napi::AsyncCtx,
}

thread_local! {
    static SHARED: RefCell<Option<Shared>> = const { RefCell::new(None) };
    /// Tasks whose handler returned a Promise, by id.
    static INFLIGHT: RefCell<HashMap<u64, (TaskRef, &'static Server)>> = RefCell::new(HashMap::new());
    static NEXT_ID: Cell<u64> = const { Cell::new(1) };
}

/// Called once by the bootstrap's `_setup`, on the main thread.
pub fn init(env: Env, track: Ref, on_space: Ref) -> napi::JsResult<()> {
    let (resource, ctx) = env.async_context("resty_ffi handler")?;
    SHARED.with(|s| {
        *s.borrow_mut() = Some(Shared {
            track,
            on_space,
            resource,
            ctx,
        })
    });
    Ok(())
}

fn scope_parts() -> Option<(Ref, napi::AsyncCtx, Ref)> {
    SHARED.with(|s| s.borrow().as_ref().map(|s| (s.resource, s.ctx, s.track)))
}

/// Serves queue `tq` with `handler` (the bootstrap checked it is a
/// function); `name` names the runtime in log lines.
pub fn start(env: Env, tq: usize, handler: Value, name: String) -> Result<(), String> {
    if scope_parts().is_none() {
        return Err("the bootstrap did not set up the loader".into());
    }
    let fd = abi::queue_fd(tq);
    let space_fd = abi::queue_space_fd(tq);
    if fd < 0 || space_fd < 0 {
        return Err("the core gave no readiness fd for the queue".into());
    }
    let uv_loop = env.uv_loop().map_err(|e| e.text())?;
    let handler = env.reference(handler).map_err(|e| e.text())?;
    let server: &'static Server = Box::leak(Box::new(Server {
        env,
        tq,
        name,
        handler,
        fd,
        watch: Cell::new(std::ptr::null_mut()),
        idle: Cell::new(std::ptr::null_mut()),
        idling: Cell::new(false),
        space_fd,
        space_watch: Cell::new(std::ptr::null_mut()),
    }));
    let data = server as *const Server as *mut c_void;
    // SAFETY: the loop is this thread's; data is the leaked server, which
    // outlives both handles.
    unsafe {
        server
            .idle
            .set((host::get().idle_new)(uv_loop, on_idle, data));
        server
            .watch
            .set((host::get().watch)(uv_loop, fd, on_readable, data));
        server
            .space_watch
            .set((host::get().watch)(uv_loop, space_fd, on_space, data));
    }
    if server.idle.get().is_null()
        || server.watch.get().is_null()
        || server.space_watch.get().is_null()
    {
        return Err("libuv refused a handle for the queue's fd".into());
    }
    // tasks may be queued already: look on the next loop turn
    server.start_idle();
    Ok(())
}

/// # Safety
/// Called only by libuv on Node's thread with the `data` given at
/// registration: the leaked `Server`, which lives for the process.
unsafe extern "C" fn on_readable(data: *mut c_void) {
    // SAFETY: data is the leaked Server (see start), used on its thread.
    let server = unsafe { &*(data as *const Server) };
    let mut buf = [0u8; 8];
    // SAFETY: reads at most 8 bytes into a local from the eventfd; EAGAIN
    // (already read) is harmless.
    unsafe { libc::read(server.fd, buf.as_mut_ptr().cast(), 8) };
    guard(server);
}

/// # Safety
/// Called only by libuv on Node's thread with the `data` given at
/// registration: the leaked `Server`, which lives for the process.
unsafe extern "C" fn on_space(data: *mut c_void) {
    // SAFETY: as for on_readable.
    let server = unsafe { &*(data as *const Server) };
    let mut buf = [0u8; 8];
    // SAFETY: as for on_readable.
    unsafe { libc::read(server.space_fd, buf.as_mut_ptr().cast(), 8) };
    // a producer waiting for room, or a call given up: the bootstrap looks
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let Some((resource, ctx, _)) = scope_parts() else {
            return;
        };
        let on_space = SHARED.with(|s| s.borrow().as_ref().map(|s| s.on_space));
        let env = server.env;
        env.scope(resource, ctx, || {
            if let Some(f) = on_space.and_then(|r| env.deref(r).ok()) {
                if let Err(f) = env.call(env.undefined(), f, &[]) {
                    abi::log(
                        resty_ffi_loader::ERR,
                        &format!("ffi_nodejs: onSpace: {}", f.stack()),
                    );
                }
            }
        });
    }));
    if let Err(p) = r {
        abi::log(
            resty_ffi_loader::ERR,
            &format!(
                "ffi_nodejs: panic in the space watch: {}",
                abi::panic_text(&*p)
            ),
        );
    }
}

/// # Safety
/// Called only by libuv on Node's thread with the `data` given at
/// registration: the leaked `Server`, which lives for the process.
unsafe extern "C" fn on_idle(data: *mut c_void) {
    // SAFETY: as for on_readable.
    let server = unsafe { &*(data as *const Server) };
    guard(server);
}

fn guard(server: &'static Server) {
    if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| server.pump())) {
        abi::log(
            resty_ffi_loader::ERR,
            &format!(
                "ffi_nodejs: {}: panic while serving: {}",
                server.name,
                abi::panic_text(&*p)
            ),
        );
    }
}

impl Server {
    fn start_idle(&self) {
        if !self.idling.replace(true) {
            // SAFETY: a live idle handle of this thread's loop.
            unsafe { (host::get().idle_start)(self.idle.get()) };
        }
    }

    fn stop_idle(&self) {
        if self.idling.replace(false) {
            // SAFETY: as above.
            unsafe { (host::get().idle_stop)(self.idle.get()) };
        }
    }

    /// Takes and runs tasks: a batch per callback scope, then, while calls
    /// keep coming within the spin (a caller waiting on each answer before
    /// it posts the next), more rounds in the same loop turn, bounded by
    /// [`TURN`] so timers and I/O of the loop still run.
    fn pump(&'static self) {
        if self.watch.get().is_null() {
            return; // closed
        }
        let Some(mut next) = abi::try_poll(self.tq).or_else(|| abi::poll_spin(self.tq)) else {
            return self.sleep();
        };
        let Some((resource, ctx, track)) = scope_parts() else {
            return;
        };
        let started = std::time::Instant::now();
        loop {
            self.env.scope(resource, ctx, || {
                self.run(next, track);
                for _ in 1..BATCH {
                    match abi::try_poll(self.tq) {
                        Some(t) => self.run(t, track),
                        None => break,
                    }
                }
            });
            if started.elapsed() >= TURN {
                break;
            }
            // right after the answers: the spin counts as a poller, so the
            // caller's next post finds one and spins for its answer too
            match abi::poll_spin(self.tq) {
                Some(t) => next = t,
                None => return self.sleep(),
            }
        }
        self.start_idle();
    }

    /// Nothing came: arm the fd and let the loop sleep, or close at finish.
    fn sleep(&self) {
        self.stop_idle();
        match abi::queue_arm(self.tq) {
            0 => {}
            n if n > 0 => self.start_idle(),
            _ => self.close(),
        }
    }

    fn close(&self) {
        let watch = self.watch.replace(std::ptr::null_mut());
        if !watch.is_null() {
            // SAFETY: live handles of this thread's loop, closed once.
            unsafe {
                (host::get().unwatch)(watch);
                (host::get().idle_close)(self.idle.get());
            }
        }
        // the space watch stays while streams of this queue may still run
        // (they end when their reader reads or goes away)
    }

    /// Runs the handler for one task and answers it, or hands what it
    /// returned to `track`.
    fn run(&'static self, task: TaskRef, track: Ref) {
        let env = self.env;
        let called = (|| {
            let req = match task.request() {
                Some(b) => env.buffer(b)?,
                None => env.null(),
            };
            let handler = env.deref(self.handler)?;
            env.call1(env.undefined(), handler, req)
        })();
        let v = match called {
            Ok(v) => v,
            Err(f) => return self.fail(task, &f),
        };
        // bytes, strings, nil and wrong primitives are answered here; other
        // objects (Promises, iterables) are the bootstrap's to follow
        if !matches!(
            binding::body(env, v),
            Err(napi::Type::Object | napi::Type::Function)
        ) {
            return self.answer(task, v);
        }
        let id = NEXT_ID.with(|n| n.replace(n.get() + 1));
        INFLIGHT.with(|m| m.borrow_mut().insert(id, (task, self)));
        let tracked = (|| {
            let track = env.deref(track)?;
            env.call(env.undefined(), track, &[v, env.number(id as f64)?])
        })();
        if let Err(f) = tracked {
            if let Some((task, _)) = INFLIGHT.with(|m| m.borrow_mut().remove(&id)) {
                self.fail(task, &f);
            }
        }
    }

    fn answer(&self, task: TaskRef, v: Value) {
        if let Err(why) = binding::answer(self.env, task, 0, v) {
            abi::log(
                resty_ffi_loader::ERR,
                &format!("ffi_nodejs: {}: handler: {why}", self.name),
            );
        }
    }

    fn fail(&self, task: TaskRef, f: &Fail) {
        abi::log(
            resty_ffi_loader::ERR,
            &format!("ffi_nodejs: {}: handler failed: {}", self.name, f.stack()),
        );
        task.respond(1, Some(f.text().as_bytes()));
    }
}

/// One chunk of a tracked stream: 0 taken, 1 nobody reads any more (close
/// the iterator, then end the task), 2 the window is full (await onSpace,
/// offer it again), -1 no such stream. Err: the value is not bytes.
pub fn chunk(env: Env, id: u64, v: Value) -> Result<i32, String> {
    INFLIGHT.with(|m| {
        let m = m.borrow();
        let Some((task, _)) = m.get(&id) else {
            return Ok(-1);
        };
        let outcome = match binding::body(env, v) {
            Ok(binding::Body::Bytes(b)) => task.try_chunk(b),
            Ok(binding::Body::Str(_)) => {
                let text = env.string(v).map_err(|e| e.text())?;
                task.try_chunk(text.as_bytes())
            }
            Ok(binding::Body::Nil) => Chunk::Taken,
            Err(t) => {
                return Err(format!(
                    "a stream yielded a {} ({}): yield strings or Buffers",
                    binding::type_name(t),
                    env.to_text(v)
                ))
            }
        };
        Ok(match outcome {
            Chunk::Taken => 0,
            Chunk::Cancelled => 1,
            Chunk::Full => 2,
            Chunk::Stale => -1,
        })
    })
}

/// Whether tracked call `id` was given up (1), still has a reader (0),
/// or is no call in flight (-1: answered already).
pub fn cancelled(id: u64) -> i32 {
    INFLIGHT.with(|m| match m.borrow().get(&id) {
        Some((task, _)) => task.cancelled() as i32,
        None => -1,
    })
}

/// A tracked value settled: `Ok(value)` (nil, bytes or a string: the
/// final answer) or `Err(reason)`.
pub fn settle(env: Env, id: u64, outcome: Result<Value, Value>) {
    let Some((task, server)) = INFLIGHT.with(|m| m.borrow_mut().remove(&id)) else {
        return;
    };
    match outcome {
        Ok(v) => server.answer(task, v),
        Err(e) => server.fail(task, &Fail::Js(env.describe(e))),
    }
}
