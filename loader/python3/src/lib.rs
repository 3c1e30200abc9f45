//! libffi_python3.so: resty-ffi's Python loader.
//!
//! `ngx.load_ffi("ffi_python3", "[venv=PATH:][dir/]pkg.module[?],func[,rest]")`
//! loads this library as a runtime; its `libffi_init` embeds CPython (one
//! interpreter per worker, created on first use) and starts the Python
//! runtime the cfg names. The loader knows Python and the C ABI of the core,
//! nothing of nginx or Lua.
//!
//! - [`abi`]: `libffi_init` and every call into the core (the only unsafe);
//! - [`cfg`]: the cfg string;
//! - [`interpreter`]: creating the interpreter inside the worker;
//! - [`paths`]: sys.path, dirs and venvs;
//! - [`load`]: import, call `func(cfg, tq)`, pick the style;
//! - [`module`]: `resty_ffi`, the native module Python runtimes use;
//!
//! Python parts live in `python/resty_ffi/`: `_serve.py` (the handler
//! style's poll loop and thread pool / asyncio loop) and `_log.py`
//! (`print` and `sys.stderr` into error.log).

pub mod abi;
pub mod cfg;
pub mod error;
pub mod interpreter;
pub mod load;
pub mod module;
pub mod paths;

pub use error::Error;
