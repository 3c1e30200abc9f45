//! gRPC client runtime for resty-ffi (libffi_grpc.so): tonic on a tokio
//! runtime the library owns, .proto files compiled at run time (protox),
//! messages as dynamic messages (prost-reflect) crossing to Lua in the
//! protobuf JSON mapping. lua/resty/ffi/grpc.lua is its Lua face.
//!
//! Layout: `abi` (the C ABI and every `unsafe`), `runtime` (tokio and the
//! queue loop), `protos` (descriptor pool), `codec` (dynamic messages and
//! JSON), `conn` (channels and handles), `call` (unary calls), `stream`
//! (streaming calls), `cancel` (calls the Lua side gave up on), `metadata`,
//! `error`.

mod abi;
mod call;
mod cancel;
mod codec;
mod conn;
mod error;
mod metadata;
mod protos;
mod runtime;
mod stream;

pub use error::Error;
