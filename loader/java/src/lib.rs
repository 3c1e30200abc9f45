//! libffi_java.so: resty-ffi's Java loader.
//!
//! `ngx.load_ffi("ffi_java", "pkg.Class[?],method[,rest]")` loads this
//! library as a runtime; its `libffi_init` embeds a JVM (one per worker,
//! created on first use) and starts the Java runtime the cfg names. The
//! loader knows Java and the C ABI of the core, nothing of nginx or Lua.
//!
//! - [`abi`]: `libffi_init` and every call into the core;
//! - [`cfg`]: the cfg string;
//! - [`jvm`]: finding libjvm and creating the JVM inside the worker;
//! - [`jvmti`]: counting the JVM's OutOfMemoryErrors (JVMTI);
//! - [`load`]: loading the class and starting it in its style;
//! - [`natives`]: the native methods of `resty.ffi.Native`;
//!
//! Java parts live in `java/resty/ffi/`: the API runtimes use (`Queue`,
//! `Task`, `Log`), `Boot` (class loading, style, errors), `Serve` (the
//! handler style's pollers) and `ReloadingClassLoader` (`?`). build.rs
//! compiles them with javac; the loader defines them in the JVM it creates.

pub mod abi;
pub mod cfg;
pub mod error;
pub mod jvm;
pub mod jvmti;
pub mod load;
pub mod natives;

pub use error::Error;
