//! libffi_nodejs.so: resty-ffi's Node.js loader.
//!
//! `ngx.load_ffi("ffi_nodejs", "[dir/]module[?],func[,rest]")` loads this
//! library as a runtime; its `libffi_init` starts Node.js (Debian's libnode,
//! one per worker, on its own thread, on first use) and starts the
//! JavaScript runtime the cfg names. The loader knows Node and the C ABI of
//! the core, nothing of nginx or Lua.
//!
//! - [`abi`]: `libffi_init` and every call into the core;
//! - [`cfg`]: the cfg string;
//! - [`libnode`]: finding and opening libnode;
//! - [`napi`]: N-API, looked up in libnode at run time;
//! - [`node`]: the Node thread;
//! - [`host`]: the C++ host object (host/host.cc: the node.h and libuv
//!   calls), carried inside this library and loaded after libnode;
//! - [`load`]: handing a load to Node's main thread and waiting for it;
//! - [`binding`]: `require("resty_ffi")`, the native module JavaScript sees;
//! - [`serve`]: the handler style on Node's event loop.
//!
//! JavaScript parts live in `js/bootstrap.js`: Node's main script (module
//! loading, the style, `require("resty_ffi")` in every thread, console and
//! warnings into error.log, uncaught errors logged, not fatal).

pub mod abi;
pub mod binding;
pub mod cfg;
pub mod error;
pub mod host;
pub mod libnode;
pub mod load;
pub mod napi;
pub mod node;
pub mod serve;

pub use error::Error;
