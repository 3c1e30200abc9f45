//! `require("resty_ffi")`: the native module JavaScript sees, in Node's
//! main thread and in every worker_thread (Node links it into each
//! environment as `process._linkedBinding("resty_ffi")`; the bootstrap
//! makes `require` find it).
//!
//! lua-resty-ffi's API, for runtimes in its shape (threads that poll):
//! - `poll_task(tq)`: blocks this thread for the next task; a BigInt
//!   handle, `0n` once the queue is finished (`rt:__unload()`);
//! - `get_req(task)`: the request as a string (UTF-8; `null` for nil),
//!   `get_req_buf(task)` as a Buffer (any bytes);
//! - `respond(task, rc, rsp)`: answers once; `rsp` a string, a Buffer /
//!   TypedArray / ArrayBuffer, or null/undefined for nil;
//! - `log(level, msg)`: a line in nginx's error.log at nginx level `level`
//!   (4 error ... 8 debug).
//!
//! and, for the bootstrap only (main thread): `_setup(load, track)`, which
//! makes the thread-safe function `libffi_init` posts load jobs through;
//! `_loaded(id, rc, text)`, a job's outcome; `_serve(tq, handler, name)`,
//! the handler style (serve.rs); `_answer(id, value)` / `_fail(id, error)`,
//! a handler's settled Promise or ended stream; `_chunk(id, value)`, one
//! chunk of a streamed answer; `_cancelled(id)`, whether a call in flight
//! was given up.

use std::collections::HashMap;
use std::ffi::{c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::SyncSender;
use std::sync::{Mutex, OnceLock};

use crate::abi::{self, TaskRef};
use crate::napi::{self, CallbackInfo, Env, RawEnv, RawValue, Ref, Value};
use crate::{serve, Error};

/// A load job: what `libffi_init` asks Node's main thread to do.
pub struct Job {
    pub id: u64,
    pub module: String,
    pub reload: bool,
    pub func: String,
    pub rest: Option<String>,
    pub tq: usize,
}

/// What the main thread's bootstrap handed over in `_setup`.
struct Main {
    tsfn: usize,
    load: Ref,
}

static MAIN: OnceLock<Main> = OnceLock::new();

/// Jobs waiting for their outcome, by id.
type Waiters = HashMap<u64, SyncSender<Result<(), Error>>>;

static PENDING: Mutex<Option<Waiters>> = Mutex::new(None);

fn pending() -> std::sync::MutexGuard<'static, Option<Waiters>> {
    PENDING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Queues `job` for the main thread; its outcome comes through `reply`.
pub fn submit(job: Job, reply: SyncSender<Result<(), Error>>) -> Result<(), Error> {
    let main = MAIN
        .get()
        .ok_or_else(|| Error::Internal("Node's bootstrap did not set up the loader".into()))?;
    let id = job.id;
    pending().get_or_insert_with(HashMap::new).insert(id, reply);
    if !napi::call_threadsafe(main.tsfn, Box::new(job)) {
        pending().as_mut().map(|p| p.remove(&id));
        return Err(Error::Internal(
            "Node refused the load job (its loop is closing)".into(),
        ));
    }
    Ok(())
}

/// Forgets a job whose caller stopped waiting.
pub fn forget(id: u64) {
    pending().as_mut().map(|p| p.remove(&id));
}

fn finish(id: u64, outcome: Result<(), Error>) {
    let tx = pending().as_mut().and_then(|p| p.remove(&id));
    if let Some(tx) = tx {
        let _ = tx.send(outcome);
    }
}

/// Runs a native function body: panics and errors become JS exceptions.
fn guarded(raw: RawEnv, name: &str, body: impl FnOnce(Env) -> Result<Value, String>) -> RawValue {
    let env = Env(raw);
    match catch_unwind(AssertUnwindSafe(|| body(env))) {
        Ok(Ok(v)) => v.0,
        Ok(Err(msg)) => {
            let _ = env.take_exception();
            env.throw(true, &format!("resty_ffi.{name}: {msg}"));
            std::ptr::null_mut()
        }
        Err(p) => {
            env.throw(
                false,
                &format!("resty_ffi.{name}: panic: {}", abi::panic_text(&*p)),
            );
            std::ptr::null_mut()
        }
    }
}

fn fail_text(f: napi::Fail) -> String {
    f.text()
}

// ---- lua-resty-ffi's API -------------------------------------------------

/// # Safety
/// Called only by Node through N-API, on the thread that owns `raw`, with
/// that call's live callback info; `guarded` keeps panics and errors from
/// crossing into Node (they become JS exceptions).
unsafe extern "C" fn poll_task(raw: RawEnv, info: CallbackInfo) -> RawValue {
    guarded(raw, "poll_task", |env| {
        let ([tq], _, _) = env.args::<1>(info).map_err(fail_text)?;
        let tq = env
            .u64(tq)
            .map(|t| t as usize)
            .filter(|t| abi::is_queue(*t))
            .ok_or("the argument is not the task queue the runtime was given")?;
        let handle = abi::poll(tq).map_or(0, |t| t.into_handle() as u64);
        env.bigint(handle).map_err(fail_text)
    })
}

/// The task behind a handle (None for 0 or a non-number).
fn task_of(env: Env, v: Value) -> Option<TaskRef> {
    let h = env.u64(v)?;
    // SAFETY: the core resolves handles itself: one that is not a live,
    // unanswered task reads as no request and an answer to it is dropped
    // and logged (the core's handles carry a generation).
    unsafe { TaskRef::from_handle(h as i64) }
}

/// # Safety
/// Called only by Node through N-API, on the thread that owns `raw`, with
/// that call's live callback info; `guarded` keeps panics and errors from
/// crossing into Node (they become JS exceptions).
unsafe extern "C" fn get_req(raw: RawEnv, info: CallbackInfo) -> RawValue {
    guarded(raw, "get_req", |env| {
        let ([t], _, _) = env.args::<1>(info).map_err(fail_text)?;
        let task = task_of(env, t).ok_or("the argument is not a task")?;
        let v = match task.request() {
            Some(b) => env.str_from(b),
            None => Ok(env.null()),
        };
        let _ = task.into_handle();
        v.map_err(fail_text)
    })
}

/// # Safety
/// Called only by Node through N-API, on the thread that owns `raw`, with
/// that call's live callback info; `guarded` keeps panics and errors from
/// crossing into Node (they become JS exceptions).
unsafe extern "C" fn get_req_buf(raw: RawEnv, info: CallbackInfo) -> RawValue {
    guarded(raw, "get_req_buf", |env| {
        let ([t], _, _) = env.args::<1>(info).map_err(fail_text)?;
        let task = task_of(env, t).ok_or("the argument is not a task")?;
        let v = match task.request() {
            Some(b) => env.buffer(b),
            None => Ok(env.null()),
        };
        let _ = task.into_handle();
        v.map_err(fail_text)
    })
}

/// # Safety
/// Called only by Node through N-API, on the thread that owns `raw`, with
/// that call's live callback info; `guarded` keeps panics and errors from
/// crossing into Node (they become JS exceptions).
unsafe extern "C" fn respond(raw: RawEnv, info: CallbackInfo) -> RawValue {
    guarded(raw, "respond", |env| {
        let ([t, rc, rsp], _, _) = env.args::<3>(info).map_err(fail_text)?;
        let task = task_of(env, t).ok_or("the first argument is not a task")?;
        let rc = env.i32(rc).unwrap_or(0);
        answer(env, task, rc, rsp).map_err(|e| e.to_string())?;
        Ok(env.undefined())
    })
}

/// What a JS answer is, as bytes to copy.
pub enum Body<'a> {
    Nil,
    Bytes(&'a [u8]),
    Str(usize),
}

/// Reads a JS value as an answer body; Err names what it was.
pub fn body<'a>(env: Env, v: Value) -> Result<Body<'a>, napi::Type> {
    use napi::Type;
    match env.type_of(v) {
        Type::Undefined | Type::Null => Ok(Body::Nil),
        Type::String => env.utf8_len(v).map(Body::Str).map_err(|_| Type::String),
        Type::Object => env.bytes(v).map(Body::Bytes).ok_or(Type::Object),
        t => Err(t),
    }
}

/// Answers `task` with `rc` and the JS value `v` (string, bytes or nil);
/// another kind of value answers rc 1 saying what it was, and is an Err.
pub fn answer(env: Env, task: TaskRef, rc: i32, v: Value) -> Result<(), String> {
    match body(env, v) {
        Ok(Body::Nil) => task.respond(rc, None),
        Ok(Body::Bytes(b)) => task.respond(rc, Some(b)),
        Ok(Body::Str(len)) => task.respond_with(rc, Some(len), |buf| {
            // N-API writes a NUL after the text: through a scratch buffer
            // of len + 1, then into the answer
            SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                s.resize(len + 1, 0);
                let n = env.utf8_into(v, &mut s).map_err(|e| e.text())?;
                buf[..n].copy_from_slice(&s[..n]);
                Ok(())
            })
        }),
        Err(t) => {
            let why = format!(
                "the answer is a {} ({}): answer a string, a Buffer (or any TypedArray / ArrayBuffer), or null",
                type_name(t),
                env.to_text(v)
            );
            task.respond(1, Some(why.as_bytes()));
            return Err(why);
        }
    }
    Ok(())
}

pub fn type_name(t: napi::Type) -> &'static str {
    use napi::Type;
    match t {
        Type::Boolean => "boolean",
        Type::Number => "number",
        Type::Symbol => "symbol",
        Type::Function => "function",
        Type::BigInt => "bigint",
        Type::External => "external",
        _ => "object",
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// # Safety
/// Called only by Node through N-API, on the thread that owns `raw`, with
/// that call's live callback info; `guarded` keeps panics and errors from
/// crossing into Node (they become JS exceptions).
unsafe extern "C" fn log(raw: RawEnv, info: CallbackInfo) -> RawValue {
    guarded(raw, "log", |env| {
        let ([level, msg], _, _) = env.args::<2>(info).map_err(fail_text)?;
        let level = env
            .i32(level)
            .filter(|l| (1..=8).contains(l))
            .ok_or("level must be 1..8 (nginx's: 4 error, 5 warn, 6 notice, 7 info, 8 debug)")?;
        let text = env.to_text(msg);
        abi::log(level, &text);
        Ok(env.undefined())
    })
}

// ---- the bootstrap's ------------------------------------------------------

/// # Safety
/// Called only by Node through N-API, on the thread that owns `raw`, with
/// that call's live callback info; `guarded` keeps panics and errors from
/// crossing into Node (they become JS exceptions).
unsafe extern "C" fn setup(raw: RawEnv, info: CallbackInfo) -> RawValue {
    guarded(raw, "_setup", |env| {
        let ([load, track, on_space], _, _) = env.args::<3>(info).map_err(fail_text)?;
        if MAIN.get().is_some() {
            return Err("already set up".into());
        }
        let load = env.reference(load).map_err(fail_text)?;
        let track = env.reference(track).map_err(fail_text)?;
        let on_space = env.reference(on_space).map_err(fail_text)?;
        let tsfn = env
            .threadsafe_function("resty_ffi load", run_job)
            .map_err(fail_text)?;
        serve::init(env, track, on_space).map_err(fail_text)?;
        let _ = MAIN.set(Main { tsfn, load });
        Ok(env.undefined())
    })
}

/// On the main thread, for each submitted job: calls the bootstrap's
/// `load(id, module, reload, func, rest, tq)`, which reports through
/// `_loaded`.
///
/// # Safety
/// Called only by N-API's thread-safe function on Node's main thread, with
/// the `data` passed to `submit` (a Box taken back once here, or NULL at
/// teardown); panics are caught and finish the job with an error.
unsafe extern "C" fn run_job(raw: RawEnv, _js: RawValue, _ctx: *mut c_void, data: *mut c_void) {
    if data.is_null() {
        return;
    }
    // SAFETY: data is the Box made in `submit`, handed over once.
    let job = unsafe { Box::from_raw(data.cast::<Job>()) };
    let id = job.id;
    let env = Env(raw);
    let r = catch_unwind(AssertUnwindSafe(|| -> napi::JsResult<()> {
        let main = MAIN.get().expect("set up before any job");
        let load = env.deref(main.load)?;
        let rest = env.str_from(job.rest.as_deref().unwrap_or("").as_bytes())?;
        let args = [
            env.number(id as f64)?,
            env.str_from(job.module.as_bytes())?,
            env.boolean(job.reload),
            env.str_from(job.func.as_bytes())?,
            rest,
            env.bigint(job.tq as u64)?,
        ];
        env.call(env.undefined(), load, &args)?;
        Ok(())
    }));
    match r {
        Ok(Ok(())) => {}
        Ok(Err(f)) => finish(
            id,
            Err(Error::Internal(format!(
                "the bootstrap's load failed: {}",
                f.stack()
            ))),
        ),
        Err(p) => finish(
            id,
            Err(Error::Internal(format!("panic: {}", abi::panic_text(&*p)))),
        ),
    }
}

/// # Safety
/// Called only by Node through N-API, on the thread that owns `raw`, with
/// that call's live callback info; `guarded` keeps panics and errors from
/// crossing into Node (they become JS exceptions).
unsafe extern "C" fn loaded(raw: RawEnv, info: CallbackInfo) -> RawValue {
    guarded(raw, "_loaded", |env| {
        let ([id, rc, text], _, _) = env.args::<3>(info).map_err(fail_text)?;
        let id = env.u64(id).ok_or("bad job id")?;
        let rc = env.i32(rc).unwrap_or(10);
        let outcome = if rc == 0 {
            Ok(())
        } else {
            Err(Error::Load {
                rc,
                text: env.to_text(text),
            })
        };
        finish(id, outcome);
        Ok(env.undefined())
    })
}

/// # Safety
/// Called only by Node through N-API, on the thread that owns `raw`, with
/// that call's live callback info; `guarded` keeps panics and errors from
/// crossing into Node (they become JS exceptions).
unsafe extern "C" fn serve_fn(raw: RawEnv, info: CallbackInfo) -> RawValue {
    guarded(raw, "_serve", |env| {
        let ([tq, handler, name], _, _) = env.args::<3>(info).map_err(fail_text)?;
        let tq = env
            .u64(tq)
            .map(|t| t as usize)
            .filter(|t| abi::is_queue(*t))
            .ok_or("not a task queue of this loader")?;
        let name = env.to_text(name);
        serve::start(env, tq, handler, name)?;
        Ok(env.undefined())
    })
}

/// # Safety
/// Called only by Node through N-API, on the thread that owns `raw`, with
/// that call's live callback info; `guarded` keeps panics and errors from
/// crossing into Node (they become JS exceptions).
unsafe extern "C" fn answer_fn(raw: RawEnv, info: CallbackInfo) -> RawValue {
    guarded(raw, "_answer", |env| {
        let ([id, v], _, _) = env.args::<2>(info).map_err(fail_text)?;
        if let Some(id) = env.u64(id) {
            serve::settle(env, id, Ok(v));
        }
        Ok(env.undefined())
    })
}

/// # Safety
/// Called only by Node through N-API, on the thread that owns `raw`, with
/// that call's live callback info; `guarded` keeps panics and errors from
/// crossing into Node (they become JS exceptions).
unsafe extern "C" fn chunk_fn(raw: RawEnv, info: CallbackInfo) -> RawValue {
    guarded(raw, "_chunk", |env| {
        let ([id, v], _, _) = env.args::<2>(info).map_err(fail_text)?;
        let id = env.u64(id).ok_or("bad stream id")?;
        let code = serve::chunk(env, id, v)?;
        env.int(code).map_err(fail_text)
    })
}

/// # Safety
/// Called only by Node through N-API, on the thread that owns `raw`, with
/// that call's live callback info; `guarded` keeps panics and errors from
/// crossing into Node (they become JS exceptions).
unsafe extern "C" fn fail_fn(raw: RawEnv, info: CallbackInfo) -> RawValue {
    guarded(raw, "_fail", |env| {
        let ([id, e], _, _) = env.args::<2>(info).map_err(fail_text)?;
        if let Some(id) = env.u64(id) {
            serve::settle(env, id, Err(e));
        }
        Ok(env.undefined())
    })
}

/// # Safety
/// Called only by Node through N-API, on the thread that owns `raw`, with
/// that call's live callback info; `guarded` keeps panics and errors from
/// crossing into Node (they become JS exceptions).
unsafe extern "C" fn cancelled_fn(raw: RawEnv, info: CallbackInfo) -> RawValue {
    guarded(raw, "_cancelled", |env| {
        let ([id], _, _) = env.args::<1>(info).map_err(fail_text)?;
        let id = env.u64(id).ok_or("bad call id")?;
        env.int(serve::cancelled(id)).map_err(fail_text)
    })
}

type Native = unsafe extern "C" fn(RawEnv, CallbackInfo) -> RawValue;

const FUNCTIONS: &[(&CStr, Native)] = &[
    (c"poll_task", poll_task),
    (c"get_req", get_req),
    (c"get_req_buf", get_req_buf),
    (c"respond", respond),
    (c"log", log),
    (c"_setup", setup),
    (c"_loaded", loaded),
    (c"_serve", serve_fn),
    (c"_answer", answer_fn),
    (c"_fail", fail_fn),
    (c"_chunk", chunk_fn),
    (c"_cancelled", cancelled_fn),
];

/// The module's init, run by Node for each environment (main thread and
/// every worker_thread) on first `process._linkedBinding("resty_ffi")`.
///
/// # Safety
/// Called by Node with a live env and the exports object.
pub unsafe extern "C" fn init(raw: RawEnv, exports: RawValue) -> RawValue {
    let env = Env(raw);
    let r = catch_unwind(AssertUnwindSafe(|| -> napi::JsResult<()> {
        for (name, f) in FUNCTIONS {
            let v = env.function(name, *f)?;
            env.set(Value(exports), name, v)?;
        }
        Ok(())
    }));
    match r {
        Ok(Ok(())) => exports,
        Ok(Err(f)) => {
            env.throw(
                false,
                &format!("resty_ffi: cannot set up the module: {}", f.text()),
            );
            std::ptr::null_mut()
        }
        Err(p) => {
            env.throw(
                false,
                &format!("resty_ffi: panic: {}", abi::panic_text(&*p)),
            );
            std::ptr::null_mut()
        }
    }
}
