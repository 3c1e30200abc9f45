//! resty-ffi core: the bridge between an nginx worker's Lua code and runtime
//! threads written in any language that speaks the C ABI.
//!
//! The core knows no language. It owns the pieces every call crosses:
//!
//! - [`handle`]: the address-like values runtimes hold for tasks;
//! - [`task`]: one call in flight, with the single atomic that decides who
//!   finishes it (the caller still spinning, or the dispatcher after a park);
//! - [`queue`]: the bounded task queue of one loaded runtime, polled by the
//!   runtime's threads;
//! - [`completion`]: a Lua VM's channel of answers to parked calls, and the
//!   "is the dispatcher asleep" flag that folds many answers into one wake;
//! - [`wake`]: the private unix socket that tells the nginx side to look;
//! - [`log`]: log lines of runtimes and of the core, written by nginx;
//! - [`log_limit`]: repeats collapsed and the rate bounded, so a flood of
//!   lines does not flood error.log;
//! - [`ready`]: an eventfd that tells event-loop runtimes tasks wait;
//! - [`runtime`]: loading a runtime library and starting it;
//! - [`spin`]: the bounded, self-disabling spin both sides use before parking;
//! - [`stream`]: answers in chunks, their window and cancellation;
//! - [`stats`]: counters of the call path (spun, parked, wakes);
//! - [`abi`]: every `extern "C"` function, the only place the C world enters.

pub mod abi;
pub mod completion;
pub mod error;
pub mod handle;
pub mod log;
pub mod log_limit;
pub mod needed;
pub mod queue;
pub mod ready;
pub mod runtime;
pub mod spin;
pub mod stats;
pub mod stream;
pub mod task;
pub mod wake;

pub use error::Error;
