//! Counting the JVM's OutOfMemoryErrors, wherever they happen, through
//! JVMTI's ResourceExhausted event.
//!
//! Why: a handler's `CompletionStage` completes on the runtime's own
//! threads. When the heap is full, `CompletableFuture` cannot even
//! allocate the failure it would complete with, the thread dies and the
//! stage never completes: the loader, waiting on that stage, would leave
//! the call unanswered for good. The loader's Java side (`Serve`) reads
//! this count to learn that the JVM ran out of memory and answers stages
//! that outlive the error by a grace period (see docs/java.md).
//!
//! The event is enabled once, when the JVM is created, on a JVMTI
//! environment of our own (GetEnv; no agent, no attach). Its callback runs
//! on the thread that failed to allocate, inside the JVM: it only bumps an
//! atomic. The two capabilities used are ones HotSpot grants in the live
//! phase. Only the jvmtiInterface_1 slots and structures used here are
//! declared, at their places in jvmti.h (JVMTI 1.2, unchanged since).

use std::ffi::{c_char, c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicI64, Ordering};

use jni::sys::{jint, JNI_OK};
use jni::JavaVM;

static EVENTS: AtomicI64 = AtomicI64::new(0);

/// How many times the JVM ran out of a resource (Java heap, threads,
/// metaspace) since it was created; 0 forever if the event could not be
/// enabled.
pub fn out_of_memory_events() -> i64 {
    EVENTS.load(Ordering::Relaxed)
}

const JVMTI_VERSION_1_2: jint = 0x3001_0200;
const JVMTI_ENABLE: c_int = 1;
const JVMTI_EVENT_RESOURCE_EXHAUSTED: c_int = 80;
// slots of jvmtiInterface_1 (jvmti.h): the 2nd, 122nd and 142nd members
const SET_EVENT_NOTIFICATION_MODE: usize = 1;
const SET_EVENT_CALLBACKS: usize = 121;
const ADD_CAPABILITIES: usize = 141;
const TABLE_LEN: usize = 160;
// jvmtiEventCallbacks: one pointer per event from 50 (VMInit) on
const RESOURCE_EXHAUSTED_SLOT: usize = 30;
// jvmtiCapabilities: 128 bits; can_generate_resource_exhaustion_heap_events
// and _threads_events are bits 39 and 40
const CAPABILITY_WORD: usize = 1;
const CAPABILITY_BITS: u32 = (1 << 7) | (1 << 8);

type Table = [*const c_void; TABLE_LEN];
type JvmtiEnv = *mut *const Table;
type SetMode = unsafe extern "C" fn(JvmtiEnv, c_int, c_int, *mut c_void, ...) -> c_int;
type SetCallbacks = unsafe extern "C" fn(JvmtiEnv, *const c_void, jint) -> c_int;
type AddCapabilities = unsafe extern "C" fn(JvmtiEnv, *const [u32; 4]) -> c_int;

/// # Safety
/// Called only by the JVM (JVMTI ResourceExhausted) with the event's
/// arguments, none of which it reads; the body cannot unwind into the JVM
/// (catch_unwind).
unsafe extern "C" fn resource_exhausted(
    _jvmti: JvmtiEnv,
    _jni: *mut c_void,
    _flags: jint,
    _reserved: *const c_void,
    _description: *const c_char,
) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        EVENTS.fetch_add(1, Ordering::Relaxed);
    }));
}

/// Enables the count on `vm`; the error says which step failed.
pub fn watch(vm: &JavaVM) -> Result<(), String> {
    let raw = vm.get_java_vm_pointer();
    let mut env: *mut c_void = std::ptr::null_mut();
    // SAFETY: raw is the live JavaVM; GetEnv writes a jvmtiEnv* to env.
    let rc = unsafe {
        match (**raw).GetEnv {
            Some(get_env) => get_env(raw, &mut env, JVMTI_VERSION_1_2),
            None => return Err("no GetEnv in the JavaVM".into()),
        }
    };
    if rc != JNI_OK || env.is_null() {
        return Err(format!("GetEnv(JVMTI 1.2) returned {rc}"));
    }
    let env = env as JvmtiEnv;
    // SAFETY: a jvmtiEnv* points to a pointer to the JVMTI function table,
    // which has at least TABLE_LEN slots in every JVMTI 1.2+ JVM; each slot
    // read is transmuted to the function type jvmti.h declares for it.
    unsafe {
        let table = &**env;
        let add: AddCapabilities = std::mem::transmute(table[ADD_CAPABILITIES]);
        let set_callbacks: SetCallbacks = std::mem::transmute(table[SET_EVENT_CALLBACKS]);
        let set_mode: SetMode = std::mem::transmute(table[SET_EVENT_NOTIFICATION_MODE]);
        let mut caps = [0u32; 4];
        caps[CAPABILITY_WORD] = CAPABILITY_BITS;
        let rc = add(env, &caps);
        if rc != 0 {
            return Err(format!("AddCapabilities returned JVMTI error {rc}"));
        }
        let mut callbacks = [std::ptr::null::<c_void>(); RESOURCE_EXHAUSTED_SLOT + 1];
        callbacks[RESOURCE_EXHAUSTED_SLOT] = resource_exhausted as *const c_void;
        let size = std::mem::size_of_val(&callbacks) as jint;
        let rc = set_callbacks(env, callbacks.as_ptr().cast(), size);
        if rc != 0 {
            return Err(format!("SetEventCallbacks returned JVMTI error {rc}"));
        }
        let rc = set_mode(
            env,
            JVMTI_ENABLE,
            JVMTI_EVENT_RESOURCE_EXHAUSTED,
            std::ptr::null_mut(),
        );
        if rc != 0 {
            return Err(format!(
                "SetEventNotificationMode returned JVMTI error {rc}"
            ));
        }
    }
    Ok(())
}
