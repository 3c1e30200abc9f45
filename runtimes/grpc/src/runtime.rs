//! The tokio runtime the library owns, and the loop that serves a task
//! queue on it.
//!
//! The runtime starts with the first `libffi_init` of the process (a nginx
//! worker) and lives as long as the process. Each queue gets one loop task
//! that waits on the queue's readiness eventfd (no thread parked in
//! `poll`), takes every waiting task without blocking, and spawns one tokio
//! task per call, which answers it. When the queue is finished (unload) the
//! loop ends; calls still running answer as they finish.
//!
//! Operations (first byte of a request): `C` connect, `U` unary call, `S`
//! new stream, `W` send, `R` recv, `E` close_send.

use std::sync::OnceLock;

use tokio::io::unix::AsyncFd;
use tokio::runtime::Runtime;

use crate::abi::{clear_eventfd, Armed, Queue, QueueFd, Task};
use crate::error::Error;

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

fn threads(cfg: &str) -> Result<usize, Error> {
    let mut threads = 1;
    for opt in cfg.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match opt.split_once('=') {
            Some(("threads", n)) => match n.parse::<usize>() {
                Ok(n) if (1..=64).contains(&n) => threads = n,
                _ => return Err(Error::Init(format!("bad threads={n} (want 1..64)"))),
            },
            _ => {
                return Err(Error::Init(format!(
                    "unknown cfg option '{opt}' (known: threads=N)"
                )))
            }
        }
    }
    Ok(threads)
}

/// Starts the runtime (first call only) and a loop serving `queue`.
pub fn start(cfg: &str, queue: Queue) -> Result<(), Error> {
    let n = threads(cfg)?;
    let rt = match RUNTIME.get() {
        Some(rt) => rt,
        None => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(n)
                .thread_name("ffi-grpc")
                .enable_all()
                .build()
                .map_err(|e| Error::Init(format!("cannot start the tokio runtime: {e}")))?;
            RUNTIME.get_or_init(|| rt)
        }
    };
    let _guard = rt.enter();
    let ready = queue.watch()?;
    rt.spawn(serve(queue, ready));
    Ok(())
}

async fn serve(queue: Queue, ready: AsyncFd<QueueFd>) {
    loop {
        while let Some(task) = queue.try_poll() {
            tokio::spawn(handle(task));
        }
        match queue.arm() {
            Armed::Tasks => continue,
            Armed::Finished => return,
            Armed::Wait => match ready.readable().await {
                Ok(mut guard) => {
                    clear_eventfd(ready.get_ref());
                    guard.clear_ready();
                }
                Err(e) => {
                    eprintln!("ffi_grpc: waiting on the task queue failed: {e}");
                    return;
                }
            },
        }
    }
}

async fn handle(task: Task) {
    let req = task.request();
    let Some((&op, rest)) = req.split_first() else {
        return task.respond(100, Some(b"ffi_grpc: empty request"));
    };
    let done: Result<Option<Vec<u8>>, Error> = match op {
        b'U' => crate::call::unary(rest).await.map(Some),
        b'R' => crate::stream::recv(rest).await,
        b'W' => crate::stream::send(rest).await.map(|_| Some(Vec::new())),
        b'S' => crate::stream::open(rest).map(|id| Some(id.to_string().into_bytes())),
        b'E' => crate::stream::close_send(rest).map(|_| Some(Vec::new())),
        b'C' => match serde_json::from_slice(rest) {
            Ok(opts) => crate::conn::connect(opts)
                .await
                .map(|id| Some(id.to_string().into_bytes())),
            Err(e) => Err(Error::Request(format!("connect options: {e}"))),
        },
        other => Err(Error::Request(format!(
            "unknown operation '{}'",
            other as char
        ))),
    };
    match done {
        Ok(body) => task.respond(0, body.as_deref()),
        Err(e) => task.respond(e.rc(), Some(&e.body())),
    }
}
