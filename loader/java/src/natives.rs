//! The native methods of `resty.ffi.Native`, registered with
//! RegisterNatives when the JVM is created (no mangled symbol names, no
//! `System.loadLibrary`).
//!
//! Each body runs inside `catch_unwind`: a panic becomes a Java
//! `RuntimeException`, never an unwind into the JVM. A queue argument is
//! checked against the queues the core handed out (a wrong one throws
//! `IllegalArgumentException`); task handles are guarded by
//! `resty.ffi.Task`, which passes each one to `respond` exactly once.
//!
//! Streaming: `chunk` / `tryChunk` read the `byte[]` in place (a JNI
//! critical region, no JNI call inside it, released before anything can
//! block) and the core copies it; only a chunk that must wait for window
//! room is first copied out, so the blocking wait holds no critical region.
//!
//! Out of memory: a JNI call that allocates on the Java heap (a new
//! `byte[]`) fails with an OutOfMemoryError pending; the native returns
//! at once and Java sees the error thrown, making no further JNI call
//! meanwhile. `respondError` is the answer of last resort when the heap is
//! full: it joins the exception's name and message in malloc()ed memory,
//! and falls back to a fixed text if even reading them fails.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

use jni::objects::{JByteArray, JClass, JString, ReleaseMode};
use jni::sys::{jboolean, jbyteArray, jint, jlong, JNI_FALSE, JNI_TRUE};
use jni::{JNIEnv, NativeMethod};

use crate::abi::{self, Chunk, TaskRef};

/// Runs `body`; a panic throws RuntimeException and returns `dflt`.
fn guarded<'l, R>(env: &mut JNIEnv<'l>, dflt: R, body: impl FnOnce(&mut JNIEnv<'l>) -> R) -> R {
    match catch_unwind(AssertUnwindSafe(|| body(env))) {
        Ok(r) => r,
        Err(p) => {
            let msg = format!(
                "ffi_java: panic in a native method: {}",
                abi::panic_text(&*p)
            );
            abi::log(resty_ffi_loader::ERR, &msg);
            let _ = env.throw_new("java/lang/RuntimeException", msg);
            dflt
        }
    }
}

fn checked_queue(env: &mut JNIEnv<'_>, tq: jlong) -> Option<usize> {
    let tq = tq as usize;
    if abi::is_queue(tq) {
        Some(tq)
    } else {
        let _ = env.throw_new(
            "java/lang/IllegalArgumentException",
            format!("resty.ffi: {tq:#x} is not a task queue (pass the tq your init was given)"),
        );
        None
    }
}

extern "system" fn poll<'l>(mut env: JNIEnv<'l>, _: JClass<'l>, tq: jlong) -> jlong {
    guarded(&mut env, 0, |env| match checked_queue(env, tq) {
        Some(tq) => abi::poll(tq).map_or(0, TaskRef::into_handle),
        None => 0,
    })
}

extern "system" fn try_poll<'l>(mut env: JNIEnv<'l>, _: JClass<'l>, tq: jlong) -> jlong {
    guarded(&mut env, 0, |env| match checked_queue(env, tq) {
        Some(tq) => abi::try_poll(tq).map_or(0, TaskRef::into_handle),
        None => 0,
    })
}

extern "system" fn finished<'l>(mut env: JNIEnv<'l>, _: JClass<'l>, tq: jlong) -> jboolean {
    guarded(&mut env, JNI_FALSE, |env| match checked_queue(env, tq) {
        Some(tq) if abi::finished(tq) => JNI_TRUE,
        _ => JNI_FALSE,
    })
}

extern "system" fn is_queue<'l>(mut env: JNIEnv<'l>, _: JClass<'l>, tq: jlong) -> jboolean {
    guarded(&mut env, JNI_FALSE, |_| {
        if abi::is_queue(tq as usize) {
            JNI_TRUE
        } else {
            JNI_FALSE
        }
    })
}

extern "system" fn request<'l>(mut env: JNIEnv<'l>, _: JClass<'l>, task: jlong) -> jbyteArray {
    guarded(&mut env, std::ptr::null_mut(), |env| {
        // SAFETY: resty.ffi.Task passes only unanswered handles from poll;
        // the TaskRef is forgotten below, not answered.
        let Some(t) = (unsafe { TaskRef::from_handle(task) }) else {
            return std::ptr::null_mut();
        };
        let out = match t.request() {
            None => std::ptr::null_mut(),
            Some(bytes) => env
                .byte_array_from_slice(bytes)
                .map(|a| a.into_raw())
                .unwrap_or(std::ptr::null_mut()),
        };
        // still Java's to answer
        let _ = t.into_handle();
        out
    })
}

extern "system" fn respond<'l>(
    mut env: JNIEnv<'l>,
    _: JClass<'l>,
    task: jlong,
    rc: jint,
    rsp: JByteArray<'l>,
) {
    guarded(&mut env, (), |env| {
        // SAFETY: resty.ffi.Task passes each handle here exactly once.
        let Some(t) = (unsafe { TaskRef::from_handle(task) }) else {
            return;
        };
        if rsp.is_null() {
            return t.respond_with(rc, None, |_| Ok(()));
        }
        let len = env.get_array_length(&rsp).unwrap_or(0).max(0) as usize;
        t.respond_with(rc, Some(len), |buf| {
            // SAFETY: i8 and u8 have the same size and alignment.
            let buf = unsafe { &mut *(buf as *mut [u8] as *mut [i8]) };
            env.get_byte_array_region(&rsp, 0, buf)
                .map_err(|e| format!("ffi_java: reading the answer: {e}"))
        });
    })
}

/// The text when even the error's name cannot be read.
const NO_MEMORY: &str = "java.lang.OutOfMemoryError (no memory left to describe the error)";

/// A Java string argument as Rust text; None if null or unreadable (an
/// error it leaves pending is cleared: the caller answers anyway).
fn text_of(env: &mut JNIEnv<'_>, s: &JString<'_>) -> Option<String> {
    if s.is_null() {
        return None;
    }
    match env.get_string(s) {
        Ok(t) => Some(t.into()),
        Err(_) => {
            let _ = env.exception_clear();
            None
        }
    }
}

extern "system" fn respond_error<'l>(
    mut env: JNIEnv<'l>,
    _: JClass<'l>,
    task: jlong,
    rc: jint,
    name: JString<'l>,
    message: JString<'l>,
) {
    guarded(&mut env, (), |env| {
        // SAFETY: resty.ffi.Task passes each handle here (or to respond)
        // exactly once.
        let Some(t) = (unsafe { TaskRef::from_handle(task) }) else {
            return;
        };
        let text = match (text_of(env, &name), text_of(env, &message)) {
            (Some(n), Some(m)) => format!("{n}: {m}"),
            (Some(n), None) => n,
            (None, _) => NO_MEMORY.to_string(),
        };
        t.respond(rc, Some(text.as_bytes()));
    })
}

extern "system" fn out_of_memory_events<'l>(mut env: JNIEnv<'l>, _: JClass<'l>) -> jlong {
    guarded(&mut env, 0, |_| crate::jvmti::out_of_memory_events())
}

extern "system" fn log_line<'l>(mut env: JNIEnv<'l>, _: JClass<'l>, level: jint, msg: JString<'l>) {
    guarded(&mut env, (), |env| {
        let text: String = match env.get_string(&msg) {
            Ok(s) => s.into(),
            Err(_) => return,
        };
        for l in text.lines() {
            abi::log(level, l);
        }
    })
}

extern "system" fn name_thread<'l>(mut env: JNIEnv<'l>, _: JClass<'l>, name: JString<'l>) {
    guarded(&mut env, (), |env| {
        if let Ok(s) = env.get_string(&name) {
            abi::name_thread(&String::from(s));
        }
    })
}

fn chunk_code(c: Chunk) -> jint {
    match c {
        Chunk::Taken => 0,
        Chunk::Cancelled => 1,
        Chunk::Full => 2,
        Chunk::Stale => -1,
    }
}

/// Offers `data` as the next chunk of `t`'s answer; with `block`, waits
/// while the stream's window is full (never [`Chunk::Full`] then).
fn offer(env: &mut JNIEnv<'_>, t: &TaskRef, data: &JByteArray<'_>, block: bool) -> Chunk {
    // SAFETY: no JNI call is made while the elements are held, and
    // try_chunk never blocks (a short lock in the core, which copies).
    let fast = match unsafe { env.get_array_elements_critical(data, ReleaseMode::NoCopyBack) } {
        Ok(elems) => {
            // SAFETY: i8 and u8 have the same size and alignment; the
            // slice lives as long as `elems`.
            let bytes =
                unsafe { std::slice::from_raw_parts(elems.as_ptr().cast::<u8>(), elems.len()) };
            Some(t.try_chunk(bytes))
        }
        Err(_) => None,
    };
    match fast {
        Some(c) if c != Chunk::Full || !block => return c,
        Some(_) => {}
        None => {
            let _ = env.exception_clear();
        }
    }
    // the window is full: copy the bytes out, then wait in the core
    let len = env.get_array_length(data).unwrap_or(0).max(0) as usize;
    let mut buf = vec![0u8; len];
    // SAFETY: i8 and u8 have the same size and alignment.
    let ibuf = unsafe { &mut *(buf.as_mut_slice() as *mut [u8] as *mut [i8]) };
    if env.get_byte_array_region(data, 0, ibuf).is_err() {
        return Chunk::Stale;
    }
    t.chunks().offer(&buf, block)
}

fn chunk_native<'l>(env: &mut JNIEnv<'l>, task: jlong, data: JByteArray<'l>, block: bool) -> jint {
    if data.is_null() {
        let _ = env.throw_new(
            "java/lang/NullPointerException",
            "resty.ffi: a chunk is null",
        );
        return -1;
    }
    // SAFETY: the core validates the handle (a stale one is refused); the
    // TaskRef is forgotten below, never answered here.
    let Some(t) = (unsafe { TaskRef::from_handle(task) }) else {
        return -1;
    };
    let c = offer(env, &t, &data, block);
    let _ = t.into_handle();
    chunk_code(c)
}

extern "system" fn chunk<'l>(
    mut env: JNIEnv<'l>,
    _: JClass<'l>,
    task: jlong,
    data: JByteArray<'l>,
) -> jint {
    guarded(&mut env, -1, |env| chunk_native(env, task, data, true))
}

extern "system" fn try_chunk<'l>(
    mut env: JNIEnv<'l>,
    _: JClass<'l>,
    task: jlong,
    data: JByteArray<'l>,
) -> jint {
    guarded(&mut env, -1, |env| chunk_native(env, task, data, false))
}

extern "system" fn cancelled<'l>(mut env: JNIEnv<'l>, _: JClass<'l>, task: jlong) -> jboolean {
    guarded(&mut env, JNI_TRUE, |_| {
        // SAFETY: the core looks any value up (a stale handle reads as
        // cancelled); the TaskRef is forgotten below.
        let Some(t) = (unsafe { TaskRef::from_handle(task) }) else {
            return JNI_TRUE;
        };
        let c = t.cancelled();
        let _ = t.into_handle();
        if c {
            JNI_TRUE
        } else {
            JNI_FALSE
        }
    })
}

extern "system" fn await_space<'l>(
    mut env: JNIEnv<'l>,
    _: JClass<'l>,
    tq: jlong,
    ms: jint,
) -> jboolean {
    guarded(&mut env, JNI_FALSE, |env| match checked_queue(env, tq) {
        Some(tq) if abi::await_space(tq, ms) => JNI_TRUE,
        _ => JNI_FALSE,
    })
}

/// The table handed to RegisterNatives for `resty/ffi/Native`.
pub fn table() -> Vec<NativeMethod> {
    let m = |name: &str, sig: &str, f: *mut c_void| NativeMethod {
        name: name.into(),
        sig: sig.into(),
        fn_ptr: f,
    };
    vec![
        m("poll", "(J)J", poll as *mut c_void),
        m("tryPoll", "(J)J", try_poll as *mut c_void),
        m("finished", "(J)Z", finished as *mut c_void),
        m("isQueue", "(J)Z", is_queue as *mut c_void),
        m("request", "(J)[B", request as *mut c_void),
        m("respond", "(JI[B)V", respond as *mut c_void),
        m(
            "respondError",
            "(JILjava/lang/String;Ljava/lang/String;)V",
            respond_error as *mut c_void,
        ),
        m(
            "outOfMemoryEvents",
            "()J",
            out_of_memory_events as *mut c_void,
        ),
        m("chunk", "(J[B)I", chunk as *mut c_void),
        m("tryChunk", "(J[B)I", try_chunk as *mut c_void),
        m("cancelled", "(J)Z", cancelled as *mut c_void),
        m("awaitSpace", "(JI)Z", await_space as *mut c_void),
        m("log", "(ILjava/lang/String;)V", log_line as *mut c_void),
        m(
            "nameThread",
            "(Ljava/lang/String;)V",
            name_thread as *mut c_void,
        ),
    ]
}
