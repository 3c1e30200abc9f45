//! Echo runtime for resty-ffi: answers each request with its own bytes.
//!
//! It exists for tests, benchmarks, and as the template of a Rust runtime:
//! it uses only the three lua-resty-ffi functions, so it runs under
//! lua-resty-ffi too.
//!
//! cfg (optional, comma separated): `threads=N` polling threads (default 2),
//! `fail_init` to make `libffi_init` return 7, `init_sleep=MS` to take MS ms
//! in `libffi_init` (a slow load), `tag=X` only to make a distinct cfg.
//!
//! A request starting with `!` is a command, so tests can drive every path:
//! - `!sleep:MS:rest`  answer `rest` after MS ms, without blocking other tasks
//! - `!wait:MS:rest`   answer `rest` after MS ms, on a thread of its own that
//!   looks every 10 ms whether the caller still waits (the core's optional
//!   `resty_ffi_task_cancelled`): once it does not, it logs "echo call
//!   cancelled after K ms" and answers rc=1 "cancelled"
//! - `!block:MS:rest`  answer `rest` after MS ms, blocking this runtime
//!   thread (so queued tasks wait: fills the queue on purpose)
//! - `!fail:RC:msg`    answer rc=RC with `msg`
//! - `!hang:`          never answer (until unload, then rc=1 "unloaded")
//! - `!nil:`           answer rc=0 with a NULL response
//! - `!cstr:text`      answer a NUL-terminated `text` with rsp_len 0
//! - `!nonul:RC:text`  answer rc=RC with rsp_len 0 (NUL-terminated) but no
//!   NUL anywhere: the buffer is `text` repeated to its usable size, as
//!   runtimes in the wild (lua-resty-ffi-soap) send error texts
//! - `!panic:msg`      panic while serving; the panic is caught and becomes
//!   an answer with rc=1 (what every Rust runtime should do)
//! - `!stray:text`     first "answer" a pointer that is not a task (the core
//!   must refuse it and free the response), then answer `text`
//! - `!twice:MS:text`  answer `text`, then MS ms later answer the same task
//!   again with `second:text` (breaks the ABI: the core must drop it)
//! - `!log:LEVEL:msg`  log `msg` at nginx level LEVEL through the core's
//!   optional `resty_ffi_log` (looked up at run time, so the runtime still
//!   runs under lua-resty-ffi), then answer `logged`
//! - `!flood:N:msg`    log N lines as fast as possible, then answer `flooded`
//! - `!floodn:N:msg`   the same with N distinct lines (`msg 1`, `msg 2`...)
//! - `!len:N:MS:text`  after MS ms answer `text` claiming length N (N may be
//!   negative or larger than the buffer: the core must refuse it)
//!
//! - `!stream:N:SIZE:MS` answer in N chunks of SIZE bytes, MS ms apart, on
//!   a thread of its own (chunk i starts with i as 8 digits, then letters),
//!   through the core's optional `resty_ffi_respond_chunk`; when the reader
//!   goes away it stops and logs "echo stream cancelled after K of N chunks"
//! - `!streamfail:N:RC:msg` N chunks "c1".."cN", then rc=RC with `msg`
//! - `!streambad:` misuses the chunk ABI (negative length, a made-up
//!   handle, a chunk after the final answer) and answers / logs what each
//!   returned
//!
//! Anything else is echoed byte for byte.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

extern "C" {
    fn ngx_http_lua_ffi_task_poll(tq: *mut c_void) -> *mut c_void;
    fn ngx_http_lua_ffi_get_req(task: *mut c_void, len: *mut c_int) -> *mut c_char;
    fn ngx_http_lua_ffi_respond(task: *mut c_void, rc: c_int, rsp: *mut c_char, rsp_len: c_int);
}

/// A task or queue pointer moved to another thread.
#[derive(Clone, Copy)]
struct Ptr(*mut c_void);
// SAFETY: the core's tasks and queues may be used from any thread (ABI).
unsafe impl Send for Ptr {}

fn malloc_copy(bytes: &[u8], nul: bool) -> *mut c_char {
    let size = bytes.len() + nul as usize;
    // SAFETY: fresh allocation of `size` (>= 1) bytes filled within bounds;
    // the core frees it with free() after respond.
    unsafe {
        let p = libc::malloc(size.max(1)) as *mut u8;
        if p.is_null() {
            return p.cast();
        }
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
        if nul {
            *p.add(bytes.len()) = 0;
        }
        p.cast()
    }
}

fn respond(task: Ptr, rc: c_int, body: Option<&[u8]>) {
    let (rsp, len) = match body {
        // NUL-terminated too: rsp_len 0 means "measure with strlen", so an
        // empty answer must still be a valid C string.
        Some(b) => (malloc_copy(b, true), b.len() as c_int),
        None => (std::ptr::null_mut(), 0),
    };
    // SAFETY: task came from poll and is answered exactly once, here.
    unsafe { ngx_http_lua_ffi_respond(task.0, rc, rsp, len) }
}

fn request<'a>(task: Ptr) -> &'a [u8] {
    let mut len: c_int = 0;
    // SAFETY: task is live until we respond; the bytes live as long.
    unsafe {
        let req = ngx_http_lua_ffi_get_req(task.0, &mut len);
        if req.is_null() {
            &[]
        } else {
            std::slice::from_raw_parts(req.cast::<u8>(), len as usize)
        }
    }
}

type LogFn = unsafe extern "C" fn(c_int, *const c_char, c_int);

/// Logs through the core's `resty_ffi_log` when the process has it.
fn log_line(level: c_int, msg: &[u8]) {
    static LOG: std::sync::OnceLock<Option<LogFn>> = std::sync::OnceLock::new();
    let f = LOG.get_or_init(|| {
        // SAFETY: looking up a symbol by a NUL-terminated name; when found
        // it is the core's resty_ffi_log, with this signature.
        unsafe {
            let p = libc::dlsym(libc::RTLD_DEFAULT, c"resty_ffi_log".as_ptr());
            (!p.is_null()).then(|| std::mem::transmute::<*mut c_void, LogFn>(p))
        }
    });
    if let Some(f) = f {
        // SAFETY: msg is valid for its length during the call.
        unsafe { f(level, msg.as_ptr().cast(), msg.len() as c_int) }
    }
}

type CancelledFn = unsafe extern "C" fn(*mut c_void) -> c_int;

/// Whether the caller stopped waiting for `task` (the core's optional
/// `resty_ffi_task_cancelled`, looked up at run time; never without it).
fn cancelled(task: Ptr) -> bool {
    static CANCELLED: std::sync::OnceLock<Option<CancelledFn>> = std::sync::OnceLock::new();
    let f = CANCELLED.get_or_init(|| {
        // SAFETY: looking up a symbol by a NUL-terminated name; when found
        // it is the core's resty_ffi_task_cancelled, with this signature.
        unsafe {
            let p = libc::dlsym(libc::RTLD_DEFAULT, c"resty_ffi_task_cancelled".as_ptr());
            (!p.is_null()).then(|| std::mem::transmute::<*mut c_void, CancelledFn>(p))
        }
    });
    // SAFETY: the core accepts any value and looks only at task handles.
    f.is_some_and(|f| unsafe { f(task.0) } == 1)
}

/// `!wait`: answers `body` after `ms` ms, or "cancelled" as soon as the
/// caller stops waiting.
fn wait(task: Ptr, ms: u64, body: &[u8]) {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_millis(ms) {
        if cancelled(task) {
            let after = t0.elapsed().as_millis();
            log_line(
                5,
                format!("echo call cancelled after {after} ms").as_bytes(),
            );
            return respond(task, 1, Some(b"cancelled"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    respond(task, 0, Some(body));
}

type ChunkFn = unsafe extern "C" fn(*mut c_void, *const c_char, c_int) -> c_int;

/// Sends a chunk through the core's `resty_ffi_respond_chunk` (looked up at
/// run time, so the runtime still loads under lua-resty-ffi, which has no
/// streaming): 0 taken, 1 cancelled, -1 refused, -2 no streaming here.
fn chunk(task: Ptr, data: &[u8], len: c_int) -> c_int {
    static CHUNK: std::sync::OnceLock<Option<ChunkFn>> = std::sync::OnceLock::new();
    let f = CHUNK.get_or_init(|| {
        // SAFETY: looking up a symbol by a NUL-terminated name; when found
        // it is the core's resty_ffi_respond_chunk, with this signature.
        unsafe {
            let p = libc::dlsym(libc::RTLD_DEFAULT, c"resty_ffi_respond_chunk".as_ptr());
            (!p.is_null()).then(|| std::mem::transmute::<*mut c_void, ChunkFn>(p))
        }
    });
    match f {
        // SAFETY: data is valid for max(len, 0) bytes during the call (the
        // core refuses negative lengths without reading).
        Some(f) => unsafe { f(task.0, data.as_ptr().cast(), len) },
        None => -2,
    }
}

/// Chunk `i` of a `!stream`: its index as 8 digits, then letters.
fn stream_chunk(i: usize, size: usize) -> Vec<u8> {
    let mut c: Vec<u8> = format!("{i:08}").into_bytes();
    c.resize(size.max(8), b'a' + (i % 26) as u8);
    c.truncate(size.max(1));
    c
}

fn stream(task: Ptr, n: usize, size: usize, ms: u64) {
    for i in 1..=n {
        if ms > 0 {
            std::thread::sleep(Duration::from_millis(ms));
        }
        let c = stream_chunk(i, size);
        match chunk(task, &c, c.len() as c_int) {
            0 => {}
            1 => {
                log_line(
                    5,
                    format!("echo stream cancelled after {} of {n} chunks", i - 1).as_bytes(),
                );
                return respond(task, 1, Some(b"cancelled"));
            }
            rc => return respond(task, 1, Some(format!("chunk refused: {rc}").as_bytes())),
        }
    }
    respond(task, 0, None);
}

fn split_once(s: &[u8], sep: u8) -> (&[u8], &[u8]) {
    match s.iter().position(|&b| b == sep) {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, &[]),
    }
}

fn number(s: &[u8]) -> Option<i64> {
    std::str::from_utf8(s).ok()?.parse().ok()
}

fn serve(task: Ptr, hung: &Mutex<Vec<Ptr>>) {
    let req = request(task);
    let Some(cmd) = req.strip_prefix(b"!") else {
        return respond(task, 0, Some(req));
    };
    let (name, rest) = split_once(cmd, b':');
    match name {
        b"sleep" => {
            let (ms, body) = split_once(rest, b':');
            let ms = number(ms).unwrap_or(0).max(0) as u64;
            let body = body.to_vec();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(ms));
                respond(task, 0, Some(&body));
            });
        }
        b"wait" => {
            let (ms, body) = split_once(rest, b':');
            let ms = number(ms).unwrap_or(0).max(0) as u64;
            let body = body.to_vec();
            std::thread::spawn(move || wait(task, ms, &body));
        }
        b"block" => {
            let (ms, body) = split_once(rest, b':');
            std::thread::sleep(Duration::from_millis(number(ms).unwrap_or(0).max(0) as u64));
            respond(task, 0, Some(body));
        }
        b"fail" => {
            let (rc, msg) = split_once(rest, b':');
            respond(task, number(rc).unwrap_or(1) as c_int, Some(msg));
        }
        b"hang" => hung.lock().unwrap_or_else(|e| e.into_inner()).push(task),
        b"nil" => respond(task, 0, None),
        b"panic" => panic!("{}", String::from_utf8_lossy(rest)),
        b"stray" => {
            // a pointer to a task-sized block that was never a task
            let bogus = [0u64; 8];
            let rsp = malloc_copy(b"stray answer", true);
            // SAFETY: deliberately wrong, to test the core's defence: it
            // checks the pointer before using it and frees rsp.
            unsafe { ngx_http_lua_ffi_respond(bogus.as_ptr() as *mut c_void, 0, rsp, 0) };
            respond(task, 0, Some(rest));
        }
        b"log" => {
            let (level, msg) = split_once(rest, b':');
            log_line(number(level).unwrap_or(4) as c_int, msg);
            respond(task, 0, Some(b"logged"));
        }
        b"flood" => {
            let (n, msg) = split_once(rest, b':');
            for _ in 0..number(n).unwrap_or(0).max(0) {
                log_line(5, msg);
            }
            respond(task, 0, Some(b"flooded"));
        }
        b"floodn" => {
            let (n, msg) = split_once(rest, b':');
            for i in 0..number(n).unwrap_or(0).max(0) {
                log_line(5, &[msg, format!(" {i}").as_bytes()].concat());
            }
            respond(task, 0, Some(b"flooded"));
        }
        b"twice" => {
            let (ms, body) = split_once(rest, b':');
            let ms = number(ms).unwrap_or(0).max(0) as u64;
            let second = [b"second:", body].concat();
            respond(task, 0, Some(body));
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(ms));
                respond(task, 0, Some(&second));
            });
        }
        b"len" => {
            let (n, rest) = split_once(rest, b':');
            let (ms, body) = split_once(rest, b':');
            let n = number(n).unwrap_or(0) as c_int;
            let ms = number(ms).unwrap_or(0).max(0) as u64;
            let rsp = Ptr(malloc_copy(body, false).cast());
            std::thread::spawn(move || {
                let (task, rsp) = (task, rsp);
                std::thread::sleep(Duration::from_millis(ms));
                // SAFETY: deliberately wrong length, to test the core's
                // check against the buffer's malloc()ed size.
                unsafe { ngx_http_lua_ffi_respond(task.0, 0, rsp.0.cast(), n) }
            });
        }
        b"nonul" => {
            let (rc, text) = split_once(rest, b':');
            let text = if text.is_empty() { &b"x"[..] } else { text };
            // SAFETY: a fresh allocation filled to its usable size, so it
            // holds no NUL; the core must bound its read by that size.
            let rsp = unsafe {
                let p = libc::malloc(text.len()) as *mut u8;
                if !p.is_null() {
                    let usable = libc::malloc_usable_size(p.cast());
                    for i in 0..usable {
                        *p.add(i) = text[i % text.len()];
                    }
                }
                p
            };
            let rc = number(rc).unwrap_or(1) as c_int;
            // SAFETY: answered once; the missing NUL is the point.
            unsafe { ngx_http_lua_ffi_respond(task.0, rc, rsp.cast(), 0) }
        }
        b"stream" => {
            let (n, rest) = split_once(rest, b':');
            let (size, ms) = split_once(rest, b':');
            let n = number(n).unwrap_or(1).max(0) as usize;
            let size = number(size).unwrap_or(16).clamp(1, 1 << 24) as usize;
            let ms = number(ms).unwrap_or(0).max(0) as u64;
            std::thread::spawn(move || stream(task, n, size, ms));
        }
        b"streamfail" => {
            let (n, rest) = split_once(rest, b':');
            let (rc, msg) = split_once(rest, b':');
            for i in 1..=number(n).unwrap_or(0).max(0) {
                let c = format!("c{i}");
                chunk(task, c.as_bytes(), c.len() as c_int);
            }
            respond(task, number(rc).unwrap_or(1) as c_int, Some(msg));
        }
        b"streambad" => {
            let neg = chunk(task, b"x", -1);
            let bogus = chunk(Ptr(0x1000 as *mut c_void), b"x", 1);
            respond(task, 0, Some(format!("neg={neg} bogus={bogus}").as_bytes()));
            let after = chunk(task, b"late", 4);
            log_line(
                5,
                format!("echo chunk after the final answer: {after}").as_bytes(),
            );
        }
        b"cstr" => {
            let rsp = malloc_copy(rest, true);
            // SAFETY: answered once; rsp is NUL-terminated, so len 0.
            unsafe { ngx_http_lua_ffi_respond(task.0, 0, rsp, 0) }
        }
        _ => respond(task, 0, Some(req)),
    }
}

fn run(tq: Ptr, hung: Arc<Mutex<Vec<Ptr>>>) {
    loop {
        // SAFETY: tq is the queue libffi_init was given, valid forever.
        let task = unsafe { ngx_http_lua_ffi_task_poll(tq.0) };
        if task.is_null() {
            break;
        }
        let task = Ptr(task);
        // A panic must not kill the thread nor leave the call unanswered.
        let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| serve(task, &hung)));
        if let Err(e) = served {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            respond(
                task,
                1,
                Some(format!("echo runtime panicked: {msg}").as_bytes()),
            );
        }
    }
    // The queue is finished: answer what was left hanging so nothing leaks.
    let left = std::mem::take(&mut *hung.lock().unwrap_or_else(|e| e.into_inner()));
    for task in left {
        respond(task, 1, Some(b"unloaded before answering"));
    }
}

/// # Safety
/// Called by the loader per the runtime ABI: `cfg` is NULL or a
/// NUL-terminated string, `tq` a task queue.
#[no_mangle]
pub unsafe extern "C" fn libffi_init(cfg: *mut c_char, tq: *mut c_void) -> c_int {
    let cfg = if cfg.is_null() {
        String::new()
    } else {
        // SAFETY: per the ABI, cfg is NUL-terminated and valid during init.
        unsafe { CStr::from_ptr(cfg) }
            .to_string_lossy()
            .into_owned()
    };
    let tq = Ptr(tq);
    // No panic may cross the C ABI: one becomes a failed init.
    std::panic::catch_unwind(move || init(&cfg, tq)).unwrap_or_else(|_| {
        eprintln!("ffi_echo: libffi_init panicked");
        5
    })
}

fn init(cfg: &str, tq: Ptr) -> c_int {
    let mut threads = 2;
    for opt in cfg.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match opt.split_once('=') {
            Some(("threads", n)) => match n.parse::<usize>() {
                Ok(n) if (1..=256).contains(&n) => threads = n,
                _ => {
                    eprintln!("ffi_echo: bad threads={n} (want 1..256)");
                    return 2;
                }
            },
            None if opt == "fail_init" => return 7,
            Some(("init_sleep", ms)) => {
                std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
            }
            Some(("tag", _)) => {}
            _ => {
                eprintln!("ffi_echo: unknown cfg option '{opt}'");
                return 3;
            }
        }
    }
    let hung = Arc::new(Mutex::new(Vec::new()));
    for i in 0..threads {
        let hung = hung.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("ffi-echo-{i}"))
            .spawn(move || run(tq, hung));
        if let Err(e) = spawned {
            eprintln!("ffi_echo: cannot start thread: {e}");
            return 4;
        }
    }
    0
}
