//! Starting one Java runtime: what `libffi_init` does for a cfg.
//!
//! Parse the cfg, create the JVM (first time only), then, on a short-lived
//! thread attached to the JVM (not the worker's main thread), call
//! `resty.ffi.Boot.start`, which loads the class (through a fresh class
//! loader with `?`), picks the style from the method's signature and starts
//! it:
//! - `public static int method(String cfg, long tq)`: the compat style; the
//!   runtime started its own pollers (jnr-ffi, FFM, or `resty.ffi.Queue`)
//!   and the int is the return code (0 = ok);
//! - `public static Function<byte[], byte[]> method(String cfg)` (or
//!   returning `CompletionStage<byte[]>`): the handler style;
//!   `resty.ffi.Serve` polls and calls it.

use jni::objects::{JObject, JString, JValue};

use crate::{cfg, jvm, Error};

/// Starts the runtime `cfg` names on queue `tq`.
pub fn start(cfg_text: &str, tq: usize) -> Result<(), Error> {
    let spec = cfg::parse(cfg_text).map_err(|reason| Error::Cfg {
        cfg: cfg_text.into(),
        reason,
    })?;
    let jvm = jvm::get()?;
    std::thread::Builder::new()
        .name("java-init".into())
        .stack_size(8 << 20)
        .spawn(move || start_on_this_thread(jvm, &spec, tq))
        .map_err(|e| Error::Internal(format!("cannot start a thread: {e}")))?
        .join()
        .map_err(|p| Error::Internal(format!("panic: {}", crate::abi::panic_text(&*p))))?
}

fn start_on_this_thread(jvm: &jvm::Jvm, spec: &cfg::Spec, tq: usize) -> Result<(), Error> {
    let mut env = jvm.vm.attach_current_thread()?;
    let class = env.new_string(&spec.class)?;
    let method = env.new_string(&spec.method)?;
    let rest = match &spec.rest {
        Some(r) => JObject::from(env.new_string(r)?),
        None => JObject::null(),
    };
    let ret = env.call_static_method(
        &jvm.boot,
        "start",
        "(Ljava/lang/String;ZLjava/lang/String;Ljava/lang/String;J)Ljava/lang/String;",
        &[
            JValue::Object(&class),
            JValue::Bool(spec.reload.into()),
            JValue::Object(&method),
            JValue::Object(&rest),
            JValue::Long(tq as i64),
        ],
    );
    let ret = match ret.and_then(|v| v.l()) {
        Ok(r) => r,
        Err(e) => return Err(jvm::describe(&mut env, e, "resty.ffi.Boot.start")),
    };
    if ret.is_null() {
        return Ok(());
    }
    let text: String = env.get_string(&JString::from(ret))?.into();
    Err(Error::from_boot(&text))
}
