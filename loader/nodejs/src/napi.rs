//! Raw N-API, looked up at run time, and a thin layer over it ([`Env`]).
//!
//! libnode is dlopened by the loader (see libnode.rs), never linked, so
//! the N-API functions are not declared `extern`: [`load`] takes each one
//! from libnode with dlsym into a table ([`Api`]) once. N-API is stable
//! across Node versions; every function used here exists in Node 18.
//!
//! [`Env`] wraps a `napi_env` for the thread that owns it (N-API is not
//! thread-safe: an `Env` is only used inside a callback Node made on that
//! env's thread) and turns statuses into `Result`s. All unsafe code that
//! calls N-API lives in this file.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

pub type RawEnv = *mut c_void;
pub type RawValue = *mut c_void;
pub type RawRef = *mut c_void;
/// The `napi_callback_info` of one native call.
#[repr(transparent)]
#[derive(Debug, Clone, Copy)]
pub struct CallbackInfo(*mut c_void);

/// A `napi_async_context` (from [`Env::async_context`]), for callback scopes.
#[derive(Debug, Clone, Copy)]
pub struct AsyncCtx(*mut c_void);
pub type Status = c_int;
pub type Callback = unsafe extern "C" fn(RawEnv, CallbackInfo) -> RawValue;
pub type Finalize = unsafe extern "C" fn(RawEnv, *mut c_void, *mut c_void);
pub type CallJs = unsafe extern "C" fn(RawEnv, RawValue, *mut c_void, *mut c_void);

const OK: Status = 0;
const PENDING_EXCEPTION: Status = 10;

/// `napi_valuetype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Undefined,
    Null,
    Boolean,
    Number,
    String,
    Symbol,
    Object,
    Function,
    External,
    BigInt,
}

macro_rules! api {
    ($( fn $name:ident($($ty:ty),*); )*) => {
        /// The N-API functions the loader calls, from libnode.
        #[allow(non_snake_case)]
        pub struct Api {
            $( pub $name: unsafe extern "C" fn($($ty),*) -> Status, )*
        }

        impl Api {
            /// # Safety
            /// `lib` is a handle from dlopen of a libnode.
            // SAFETY: its one caller, `load`, passes its own caller's
            // handle, which node.rs keeps open for the process's life.
            unsafe fn from(lib: *mut c_void) -> Result<Api, String> {
                Ok(Api {
                    $( $name: {
                        let name = concat!(stringify!($name), "\0");
                        // SAFETY: dlsym with a live handle and a C string.
                        let p = unsafe { libc::dlsym(lib, name.as_ptr().cast()) };
                        if p.is_null() {
                            return Err(format!("libnode has no {}", stringify!($name)));
                        }
                        // SAFETY: N-API declares the function with exactly
                        // this signature (js_native_api.h, node_api.h).
                        unsafe { std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($ty),*) -> Status>(p) }
                    }, )*
                })
            }
        }
    };
}

api! {
    fn napi_get_undefined(RawEnv, *mut RawValue);
    fn napi_get_null(RawEnv, *mut RawValue);
    fn napi_get_boolean(RawEnv, bool, *mut RawValue);
    fn napi_typeof(RawEnv, RawValue, *mut c_int);
    fn napi_create_function(RawEnv, *const c_char, usize, Option<Callback>, *mut c_void, *mut RawValue);
    fn napi_create_object(RawEnv, *mut RawValue);
    fn napi_set_named_property(RawEnv, RawValue, *const c_char, RawValue);
    fn napi_get_named_property(RawEnv, RawValue, *const c_char, *mut RawValue);
    fn napi_get_cb_info(RawEnv, CallbackInfo, *mut usize, *mut RawValue, *mut RawValue, *mut *mut c_void);
    fn napi_call_function(RawEnv, RawValue, RawValue, usize, *const RawValue, *mut RawValue);
    fn napi_get_value_bigint_uint64(RawEnv, RawValue, *mut u64, *mut bool);
    fn napi_create_bigint_uint64(RawEnv, u64, *mut RawValue);
    fn napi_get_value_double(RawEnv, RawValue, *mut f64);
    fn napi_get_value_int32(RawEnv, RawValue, *mut i32);
    fn napi_create_double(RawEnv, f64, *mut RawValue);
    fn napi_create_int32(RawEnv, i32, *mut RawValue);
    fn napi_create_string_utf8(RawEnv, *const c_char, usize, *mut RawValue);
    fn napi_get_value_string_utf8(RawEnv, RawValue, *mut c_char, usize, *mut usize);
    fn napi_coerce_to_string(RawEnv, RawValue, *mut RawValue);
    fn napi_create_buffer_copy(RawEnv, usize, *const c_void, *mut *mut c_void, *mut RawValue);
    fn napi_is_buffer(RawEnv, RawValue, *mut bool);
    fn napi_get_buffer_info(RawEnv, RawValue, *mut *mut c_void, *mut usize);
    fn napi_is_arraybuffer(RawEnv, RawValue, *mut bool);
    fn napi_get_arraybuffer_info(RawEnv, RawValue, *mut *mut c_void, *mut usize);
    fn napi_is_promise(RawEnv, RawValue, *mut bool);
    fn napi_throw_error(RawEnv, *const c_char, *const c_char);
    fn napi_throw_type_error(RawEnv, *const c_char, *const c_char);
    fn napi_is_exception_pending(RawEnv, *mut bool);
    fn napi_get_and_clear_last_exception(RawEnv, *mut RawValue);
    fn napi_create_reference(RawEnv, RawValue, u32, *mut RawRef);
    fn napi_get_reference_value(RawEnv, RawRef, *mut RawValue);
    fn napi_open_handle_scope(RawEnv, *mut *mut c_void);
    fn napi_close_handle_scope(RawEnv, *mut c_void);
    fn napi_async_init(RawEnv, RawValue, RawValue, *mut *mut c_void);
    fn napi_open_callback_scope(RawEnv, RawValue, *mut c_void, *mut *mut c_void);
    fn napi_close_callback_scope(RawEnv, *mut c_void);
    fn napi_get_uv_event_loop(RawEnv, *mut *mut c_void);
    fn napi_create_threadsafe_function(RawEnv, RawValue, RawValue, RawValue, usize, usize, *mut c_void, Option<Finalize>, *mut c_void, Option<CallJs>, *mut *mut c_void);
    fn napi_call_threadsafe_function(*mut c_void, *mut c_void, c_int);
}

static API: OnceLock<Api> = OnceLock::new();

/// Takes the N-API functions from the libnode behind `lib` (a dlopen
/// handle); later calls keep the first table.
///
/// # Safety
/// `lib` is a live dlopen handle of a libnode that stays loaded forever.
// SAFETY: unsafe only for that contract; node.rs calls it with the handle
// it dlopened (RTLD_GLOBAL) and never closes.
pub unsafe fn load(lib: *mut c_void) -> Result<(), String> {
    if API.get().is_some() {
        return Ok(());
    }
    // SAFETY: per this function's contract.
    let api = unsafe { Api::from(lib) }?;
    let _ = API.set(api);
    Ok(())
}

fn api() -> &'static Api {
    API.get()
        .expect("N-API is used only after libnode was loaded")
}

/// A JS exception caught by [`Env`]: the value, with its text and stack.
#[derive(Debug, Clone)]
pub struct JsError {
    /// `name: message` (or the thrown value as a string).
    pub text: String,
    /// The stack, or the text when there is none.
    pub stack: String,
}

/// A call failed: a JS exception, or an N-API status (bad arguments).
#[derive(Debug, Clone)]
pub enum Fail {
    Js(JsError),
    Status(&'static str, Status),
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text())
    }
}

impl Fail {
    /// One-line text.
    pub fn text(&self) -> String {
        match self {
            Fail::Js(e) => e.text.clone(),
            Fail::Status(what, s) => format!("{what} failed (napi status {s})"),
        }
    }
    /// The stack for the log (the text when there is none).
    pub fn stack(&self) -> String {
        match self {
            Fail::Js(e) => e.stack.clone(),
            Fail::Status(..) => self.text(),
        }
    }
}

pub type JsResult<T> = std::result::Result<T, Fail>;

/// A JS value of the env it came from, valid in the handle scope it was
/// made in.
#[derive(Debug, Clone, Copy)]
pub struct Value(pub RawValue);

/// A `napi_env` on its own thread, inside a callback Node made.
#[derive(Debug, Clone, Copy)]
pub struct Env(pub RawEnv);

/// A persistent reference (never deleted: the loader's references live as
/// long as the runtime they belong to, which is the process).
#[derive(Debug, Clone, Copy)]
pub struct Ref(pub RawRef);

// SAFETY: a Ref is only dereferenced through an Env of its own thread; the
// pointer itself may be stored anywhere.
unsafe impl Send for Ref {}
// SAFETY: as above.
unsafe impl Sync for Ref {}

impl Env {
    fn check(self, what: &'static str, s: Status) -> JsResult<()> {
        match s {
            OK => Ok(()),
            PENDING_EXCEPTION => Err(self.take_exception().unwrap_or(Fail::Status(what, s))),
            _ => {
                // a failed call may still leave an exception behind
                match self.take_exception() {
                    Some(f) => Err(f),
                    None => Err(Fail::Status(what, s)),
                }
            }
        }
    }

    /// Takes the pending exception, if any, as a [`Fail`].
    pub fn take_exception(self) -> Option<Fail> {
        let mut pending = false;
        // SAFETY: env is live on this thread (type invariant).
        unsafe { (api().napi_is_exception_pending)(self.0, &mut pending) };
        if !pending {
            return None;
        }
        let mut v = std::ptr::null_mut();
        // SAFETY: as above; v receives the exception.
        unsafe { (api().napi_get_and_clear_last_exception)(self.0, &mut v) };
        Some(Fail::Js(self.describe(Value(v))))
    }

    /// The text and stack of a thrown value.
    pub fn describe(self, e: Value) -> JsError {
        let text = self.to_text(e);
        let stack = match self.type_of(e) {
            Type::Object | Type::Function => self
                .get(e, c"stack")
                .ok()
                .filter(|s| self.type_of(*s) == Type::String)
                .and_then(|s| self.string(s).ok()),
            _ => None,
        };
        JsError {
            stack: stack.unwrap_or_else(|| text.clone()),
            text,
        }
    }

    /// `String(v)`, never failing (an exception while converting is dropped).
    pub fn to_text(self, v: Value) -> String {
        let mut s = std::ptr::null_mut();
        // SAFETY: env live; v a value of this env.
        let st = unsafe { (api().napi_coerce_to_string)(self.0, v.0, &mut s) };
        if st != OK {
            let _ = self.take_exception();
            return "(a value that cannot be converted to a string)".into();
        }
        self.string(Value(s)).unwrap_or_default()
    }

    pub fn type_of(self, v: Value) -> Type {
        let mut t: c_int = 0;
        // SAFETY: env live; v a value of this env.
        unsafe { (api().napi_typeof)(self.0, v.0, &mut t) };
        match t {
            0 => Type::Undefined,
            1 => Type::Null,
            2 => Type::Boolean,
            3 => Type::Number,
            4 => Type::String,
            5 => Type::Symbol,
            6 => Type::Object,
            7 => Type::Function,
            8 => Type::External,
            _ => Type::BigInt,
        }
    }

    pub fn undefined(self) -> Value {
        let mut v = std::ptr::null_mut();
        // SAFETY: env live.
        unsafe { (api().napi_get_undefined)(self.0, &mut v) };
        Value(v)
    }

    pub fn null(self) -> Value {
        let mut v = std::ptr::null_mut();
        // SAFETY: env live.
        unsafe { (api().napi_get_null)(self.0, &mut v) };
        Value(v)
    }

    pub fn boolean(self, b: bool) -> Value {
        let mut v = std::ptr::null_mut();
        // SAFETY: env live.
        unsafe { (api().napi_get_boolean)(self.0, b, &mut v) };
        Value(v)
    }

    pub fn object(self) -> JsResult<Value> {
        let mut v = std::ptr::null_mut();
        // SAFETY: env live.
        let s = unsafe { (api().napi_create_object)(self.0, &mut v) };
        self.check("napi_create_object", s).map(|_| Value(v))
    }

    /// A JS function calling `cb`.
    pub fn function(self, name: &CStr, cb: Callback) -> JsResult<Value> {
        let mut v = std::ptr::null_mut();
        // SAFETY: env live; name is NUL-terminated (length: NAPI_AUTO_LENGTH).
        let s = unsafe {
            (api().napi_create_function)(
                self.0,
                name.as_ptr(),
                usize::MAX,
                Some(cb),
                std::ptr::null_mut(),
                &mut v,
            )
        };
        self.check("napi_create_function", s).map(|_| Value(v))
    }

    pub fn set(self, obj: Value, name: &CStr, v: Value) -> JsResult<()> {
        // SAFETY: env live; obj and v values of this env; name NUL-terminated.
        let s = unsafe { (api().napi_set_named_property)(self.0, obj.0, name.as_ptr(), v.0) };
        self.check("napi_set_named_property", s)
    }

    pub fn get(self, obj: Value, name: &CStr) -> JsResult<Value> {
        let mut v = std::ptr::null_mut();
        // SAFETY: env live; obj a value of this env; name NUL-terminated.
        let s = unsafe { (api().napi_get_named_property)(self.0, obj.0, name.as_ptr(), &mut v) };
        self.check("napi_get_named_property", s).map(|_| Value(v))
    }

    /// The arguments of a native call (missing ones are `undefined`), and
    /// the function's data pointer.
    pub fn args<const N: usize>(
        self,
        info: CallbackInfo,
    ) -> JsResult<([Value; N], usize, *mut c_void)> {
        let mut argc = N;
        let mut argv = [std::ptr::null_mut(); N];
        let mut data = std::ptr::null_mut();
        // SAFETY: env live; info is this call's; argv has argc slots.
        let s = unsafe {
            (api().napi_get_cb_info)(
                self.0,
                info,
                &mut argc,
                argv.as_mut_ptr(),
                std::ptr::null_mut(),
                &mut data,
            )
        };
        self.check("napi_get_cb_info", s)?;
        Ok((argv.map(Value), argc, data))
    }

    /// `f.call(recv, ...args)`.
    pub fn call(self, recv: Value, f: Value, args: &[Value]) -> JsResult<Value> {
        let mut v = std::ptr::null_mut();
        let raw: Vec<RawValue> = args.iter().map(|a| a.0).collect();
        // SAFETY: env live; every value is of this env; raw has args.len() items.
        let s = unsafe {
            (api().napi_call_function)(self.0, recv.0, f.0, raw.len(), raw.as_ptr(), &mut v)
        };
        self.check("napi_call_function", s).map(|_| Value(v))
    }

    /// A call with one argument and no Vec (the hot path).
    pub fn call1(self, recv: Value, f: Value, arg: Value) -> JsResult<Value> {
        let mut v = std::ptr::null_mut();
        // SAFETY: env live; values of this env; one argument.
        let s = unsafe { (api().napi_call_function)(self.0, recv.0, f.0, 1, &arg.0, &mut v) };
        self.check("napi_call_function", s).map(|_| Value(v))
    }

    /// A u64 from a BigInt or a non-negative integral Number.
    pub fn u64(self, v: Value) -> Option<u64> {
        match self.type_of(v) {
            Type::BigInt => {
                let (mut n, mut lossless) = (0u64, false);
                // SAFETY: env live; v is a BigInt.
                let s = unsafe {
                    (api().napi_get_value_bigint_uint64)(self.0, v.0, &mut n, &mut lossless)
                };
                (s == OK && lossless).then_some(n)
            }
            Type::Number => {
                let f = self.f64(v)?;
                (f >= 0.0 && f.fract() == 0.0 && f < 2f64.powi(64)).then_some(f as u64)
            }
            _ => None,
        }
    }

    pub fn f64(self, v: Value) -> Option<f64> {
        let mut f = 0.0;
        // SAFETY: env live; v a value of this env.
        let s = unsafe { (api().napi_get_value_double)(self.0, v.0, &mut f) };
        (s == OK).then_some(f)
    }

    pub fn i32(self, v: Value) -> Option<i32> {
        let mut n = 0;
        // SAFETY: env live; v a value of this env.
        let s = unsafe { (api().napi_get_value_int32)(self.0, v.0, &mut n) };
        (s == OK).then_some(n)
    }

    pub fn bigint(self, n: u64) -> JsResult<Value> {
        let mut v = std::ptr::null_mut();
        // SAFETY: env live.
        let s = unsafe { (api().napi_create_bigint_uint64)(self.0, n, &mut v) };
        self.check("napi_create_bigint_uint64", s).map(|_| Value(v))
    }

    pub fn number(self, n: f64) -> JsResult<Value> {
        let mut v = std::ptr::null_mut();
        // SAFETY: env live.
        let s = unsafe { (api().napi_create_double)(self.0, n, &mut v) };
        self.check("napi_create_double", s).map(|_| Value(v))
    }

    pub fn int(self, n: i32) -> JsResult<Value> {
        let mut v = std::ptr::null_mut();
        // SAFETY: env live.
        let s = unsafe { (api().napi_create_int32)(self.0, n, &mut v) };
        self.check("napi_create_int32", s).map(|_| Value(v))
    }

    /// A JS string from UTF-8 bytes (invalid sequences become U+FFFD).
    pub fn str_from(self, bytes: &[u8]) -> JsResult<Value> {
        let mut v = std::ptr::null_mut();
        // SAFETY: env live; bytes readable for len.
        let s = unsafe {
            (api().napi_create_string_utf8)(self.0, bytes.as_ptr().cast(), bytes.len(), &mut v)
        };
        self.check("napi_create_string_utf8", s).map(|_| Value(v))
    }

    /// The UTF-8 length of a string value.
    pub fn utf8_len(self, v: Value) -> JsResult<usize> {
        let mut len = 0;
        // SAFETY: env live; a NULL buffer asks for the length only.
        let s = unsafe {
            (api().napi_get_value_string_utf8)(self.0, v.0, std::ptr::null_mut(), 0, &mut len)
        };
        self.check("napi_get_value_string_utf8", s).map(|_| len)
    }

    /// Writes a string value's UTF-8 into `out`, which must hold exactly
    /// [`Env::utf8_len`] bytes plus the NUL N-API adds (`out.len()` is that
    /// length + 1).
    pub fn utf8_into(self, v: Value, out: &mut [u8]) -> JsResult<usize> {
        let mut n = 0;
        // SAFETY: env live; out is writable for out.len() bytes.
        let s = unsafe {
            (api().napi_get_value_string_utf8)(
                self.0,
                v.0,
                out.as_mut_ptr().cast(),
                out.len(),
                &mut n,
            )
        };
        self.check("napi_get_value_string_utf8", s).map(|_| n)
    }

    pub fn string(self, v: Value) -> JsResult<String> {
        let len = self.utf8_len(v)?;
        let mut buf = vec![0u8; len + 1];
        let n = self.utf8_into(v, &mut buf)?;
        buf.truncate(n);
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// A Buffer holding a copy of `bytes`.
    pub fn buffer(self, bytes: &[u8]) -> JsResult<Value> {
        let mut v = std::ptr::null_mut();
        let mut data = std::ptr::null_mut();
        // SAFETY: env live; bytes readable for len; Node copies them.
        let s = unsafe {
            (api().napi_create_buffer_copy)(
                self.0,
                bytes.len(),
                bytes.as_ptr().cast(),
                &mut data,
                &mut v,
            )
        };
        self.check("napi_create_buffer_copy", s).map(|_| Value(v))
    }

    /// The bytes of a Buffer, any TypedArray or DataView, or an
    /// ArrayBuffer; None for other values. Valid while `v` is alive and
    /// no JS runs.
    pub fn bytes<'a>(self, v: Value) -> Option<&'a [u8]> {
        let (mut is_view, mut is_ab) = (false, false);
        let (mut data, mut len) = (std::ptr::null_mut(), 0usize);
        // SAFETY: env live; v a value of this env.
        unsafe { (api().napi_is_buffer)(self.0, v.0, &mut is_view) };
        let s = if is_view {
            // SAFETY: as above; v is an ArrayBufferView.
            unsafe { (api().napi_get_buffer_info)(self.0, v.0, &mut data, &mut len) }
        } else {
            // SAFETY: as above.
            unsafe { (api().napi_is_arraybuffer)(self.0, v.0, &mut is_ab) };
            if !is_ab {
                return None;
            }
            // SAFETY: as above; v is an ArrayBuffer.
            unsafe { (api().napi_get_arraybuffer_info)(self.0, v.0, &mut data, &mut len) }
        };
        if s != OK {
            return None;
        }
        if len == 0 || data.is_null() {
            return Some(&[]);
        }
        // SAFETY: N-API returned the backing store, valid while v lives and
        // no JS runs (it cannot be detached meanwhile).
        Some(unsafe { std::slice::from_raw_parts(data as *const u8, len) })
    }

    pub fn is_promise(self, v: Value) -> bool {
        let mut b = false;
        // SAFETY: env live; v a value of this env.
        unsafe { (api().napi_is_promise)(self.0, v.0, &mut b) };
        b
    }

    /// Throws an Error (`type_error`: a TypeError) with `msg`.
    pub fn throw(self, type_error: bool, msg: &str) {
        let msg = std::ffi::CString::new(msg.replace('\0', " ")).unwrap_or_default();
        // SAFETY: env live; msg NUL-terminated; code may be NULL.
        unsafe {
            if type_error {
                (api().napi_throw_type_error)(self.0, std::ptr::null(), msg.as_ptr());
            } else {
                (api().napi_throw_error)(self.0, std::ptr::null(), msg.as_ptr());
            }
        }
    }

    pub fn reference(self, v: Value) -> JsResult<Ref> {
        let mut r = std::ptr::null_mut();
        // SAFETY: env live; one strong reference, never deleted (see Ref).
        let s = unsafe { (api().napi_create_reference)(self.0, v.0, 1, &mut r) };
        self.check("napi_create_reference", s).map(|_| Ref(r))
    }

    pub fn deref(self, r: Ref) -> JsResult<Value> {
        let mut v = std::ptr::null_mut();
        // SAFETY: env live; r a reference made in this env.
        let s = unsafe { (api().napi_get_reference_value)(self.0, r.0, &mut v) };
        self.check("napi_get_reference_value", s).map(|_| Value(v))
    }

    /// The env's libuv loop.
    pub fn uv_loop(self) -> JsResult<*mut c_void> {
        let mut l = std::ptr::null_mut();
        // SAFETY: env live.
        let s = unsafe { (api().napi_get_uv_event_loop)(self.0, &mut l) };
        self.check("napi_get_uv_event_loop", s).map(|_| l)
    }

    /// An async context named `name`, for [`Env::scope`].
    pub fn async_context(self, name: &str) -> JsResult<(Ref, AsyncCtx)> {
        let resource = self.object()?;
        let name = self.str_from(name.as_bytes())?;
        let mut ctx = std::ptr::null_mut();
        // SAFETY: env live; values of this env.
        let s = unsafe { (api().napi_async_init)(self.0, resource.0, name.0, &mut ctx) };
        self.check("napi_async_init", s)?;
        Ok((self.reference(resource)?, AsyncCtx(ctx)))
    }

    /// Runs `body` in a handle scope and a callback scope (so promise
    /// reactions and process.nextTick callbacks run when it closes, as
    /// after any callback Node makes), from a libuv callback.
    pub fn scope<R>(self, resource: Ref, ctx: AsyncCtx, body: impl FnOnce() -> R) -> R {
        let mut hs = std::ptr::null_mut();
        // SAFETY: env live; scopes are closed below in reverse order.
        unsafe { (api().napi_open_handle_scope)(self.0, &mut hs) };
        let mut cs = std::ptr::null_mut();
        let res = self
            .deref(resource)
            .map(|v| v.0)
            .unwrap_or(std::ptr::null_mut());
        // SAFETY: as above; res and ctx come from async_context.
        let opened = unsafe { (api().napi_open_callback_scope)(self.0, res, ctx.0, &mut cs) } == OK;
        let r = body();
        if opened {
            // SAFETY: cs was opened above on this env.
            unsafe { (api().napi_close_callback_scope)(self.0, cs) };
        }
        // an exception thrown by a reaction while the scope closed: Node
        // reports it through process 'uncaughtException' (the bootstrap
        // logs it); nothing must stay pending
        let _ = self.take_exception();
        // SAFETY: hs was opened above.
        unsafe { (api().napi_close_handle_scope)(self.0, hs) };
        r
    }

    /// A thread-safe function calling `call_js(env, _, context, data)` on
    /// this env's thread for each [`call_threadsafe`]; it keeps the loop
    /// alive.
    pub fn threadsafe_function(self, name: &str, call_js: CallJs) -> JsResult<usize> {
        let name = self.str_from(name.as_bytes())?;
        let mut f = std::ptr::null_mut();
        // SAFETY: env live; no JS function (call_js does the work); queue
        // unbounded; one thread count, never released.
        let s = unsafe {
            (api().napi_create_threadsafe_function)(
                self.0,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                name.0,
                0,
                1,
                std::ptr::null_mut(),
                None,
                std::ptr::null_mut(),
                Some(call_js),
                &mut f,
            )
        };
        self.check("napi_create_threadsafe_function", s)
            .map(|_| f as usize)
    }
}

/// Hands `data` to a thread-safe function made by
/// [`Env::threadsafe_function`], whose `call_js` takes it back as a
/// `Box<T>`; callable from any thread. False (and `data` dropped) if Node
/// refused it (the loop is closing).
pub fn call_threadsafe<T>(tsfn: usize, data: Box<T>) -> bool {
    let p = Box::into_raw(data);
    // SAFETY: tsfn came from napi_create_threadsafe_function and is never
    // released; blocking mode on an unbounded queue never blocks.
    let ok =
        unsafe { (api().napi_call_threadsafe_function)(tsfn as *mut c_void, p.cast(), 1) == OK };
    if !ok {
        // SAFETY: Node did not take p: it is still ours, made above.
        drop(unsafe { Box::from_raw(p) });
    }
    ok
}
