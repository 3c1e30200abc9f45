//! Starting one Node runtime: what `libffi_init` does for a cfg.
//!
//! Parse the cfg, start Node (first time only), then hand the job to
//! Node's main thread (through a thread-safe function) and wait for its
//! outcome. There the bootstrap (js/bootstrap.js) resolves and requires
//! the module (`?`: afresh; an ES module through `import()`), calls
//! `func(cfg, tq)` (awaiting a Promise) and picks the style from what it
//! returns:
//! - a number: the compat style; the runtime started its own
//!   worker_threads that poll with `require("resty_ffi")`, and the number
//!   is the return code (0 = ok);
//! - a function: the handler style, served by serve.rs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::time::Duration;

use crate::binding::{self, Job};
use crate::{cfg, node, Error};

/// How long a load may take (module code and `func` run in it).
const LOAD_TIMEOUT: Duration = Duration::from_secs(60);

static NEXT_JOB: AtomicU64 = AtomicU64::new(1);

/// Starts the runtime `cfg` names on queue `tq`.
pub fn start(cfg_text: &str, tq: usize) -> Result<(), Error> {
    let spec = cfg::parse(cfg_text).map_err(|reason| Error::Cfg {
        cfg: cfg_text.into(),
        reason,
    })?;
    node::get()?;
    let id = NEXT_JOB.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = sync_channel(1);
    let module = spec.module.clone();
    binding::submit(
        Job {
            id,
            module: spec.module,
            reload: spec.reload,
            func: spec.func,
            rest: spec.rest,
            tq,
        },
        tx,
    )?;
    match rx.recv_timeout(LOAD_TIMEOUT) {
        Ok(outcome) => outcome,
        Err(RecvTimeoutError::Timeout) => {
            binding::forget(id);
            Err(Error::Timeout {
                module,
                secs: LOAD_TIMEOUT.as_secs(),
            })
        }
        Err(RecvTimeoutError::Disconnected) => {
            Err(Error::Internal("the load job was dropped".into()))
        }
    }
}
