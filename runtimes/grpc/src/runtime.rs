//! The tokio runtime the library owns, and the loop that serves a task
//! queue on it.
//!
//! The runtime starts with the first `libffi_init` of the process (a nginx
//! worker) and lives as long as the process. With one thread (the
//! default) it is a current-thread runtime driven by a thread of ours: a
//! call's task, the HTTP/2 connection and the sockets then share one thread
//! and hand nothing to each other across threads (measured against the
//! multi-threaded runtime with one worker: 8-10% less CPU per call,
//! benches/README.md section 5). Each queue gets one loop task
//! that waits on the queue's readiness eventfd (no thread parked in
//! `poll`), takes every waiting task without blocking, and spawns one tokio
//! task per call, which answers it. When the queue is finished (unload) the
//! loop ends; calls still running answer as they finish.
//!
//! Optionally (cfg `spin_us=N`), when the last call in flight has just
//! been answered, the loop looks for the caller's next call for N µs before
//! it arms the fd and parks, so a sequential caller's next call needs no
//! wake-up. Off by default: on the 2-CPU machines measured, it gained
//! nothing clear (the caller, the server and this thread already share two
//! CPUs); never on when the process may use one CPU only.
//!
//! Beside the loop, a task waits on the queue's space fd, which the core
//! signals when a task's caller stopped waiting (timed out): it then ends
//! those calls (cancel.rs), so their servers see them cancelled.
//!
//! Operations (first byte of a request): `C` connect, `U` unary call, `S`
//! new stream, `W` send, `M` every message of a stream as a streamed
//! answer (Lua's `rt:__stream`), `E` close_send, `P` compile a .proto
//! (grpc.load from a phase that can yield).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::runtime::Runtime;
use tokio::sync::Notify;

use crate::abi::{clear_eventfd, Armed, Queue, QueueFd, Task};
use crate::error::Error;

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

struct Cfg {
    threads: usize,
    spin: Duration,
}

fn parse_cfg(cfg: &str) -> Result<Cfg, Error> {
    let one_cpu = std::thread::available_parallelism().map_or(true, |n| n.get() < 2);
    let mut out = Cfg {
        threads: 1,
        spin: Duration::ZERO,
    };
    for opt in cfg.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match opt.split_once('=') {
            Some(("threads", n)) => match n.parse::<usize>() {
                Ok(n) if (1..=64).contains(&n) => out.threads = n,
                _ => return Err(Error::Init(format!("bad threads={n} (want 1..64)"))),
            },
            Some(("spin_us", n)) => match n.parse::<u64>() {
                Ok(n) if n <= 100_000 => {
                    out.spin = Duration::from_micros(if one_cpu { 0 } else { n })
                }
                _ => return Err(Error::Init(format!("bad spin_us={n} (want 0..100000)"))),
            },
            _ => {
                return Err(Error::Init(format!(
                    "unknown cfg option '{opt}' (known: threads=N, spin_us=N)"
                )))
            }
        }
    }
    Ok(out)
}

/// Starts the runtime (first call only) and a loop serving `queue`.
pub fn start(cfg: &str, queue: Queue) -> Result<(), Error> {
    let cfg = parse_cfg(cfg)?;
    let n = cfg.threads;
    let rt = match RUNTIME.get() {
        Some(rt) => rt,
        None => build(n)?,
    };
    let _guard = rt.enter();
    let ready = queue.watch()?;
    let cancels = queue.watch_cancels()?;
    let sweeper = rt.spawn(sweep_on_cancels(cancels));
    rt.spawn(async move {
        serve(queue, ready, cfg.spin).await;
        sweeper.abort();
    });
    Ok(())
}

/// Builds the process's runtime. One thread (the default): a current-thread
/// runtime driven by a thread of ours, so a call's tasks, h2 and the socket
/// all run on one thread with no cross-thread wake-ups inside tokio; more:
/// tokio's multi-threaded runtime with that many workers.
fn build(threads: usize) -> Result<&'static Runtime, Error> {
    let fail = |e: std::io::Error| Error::Init(format!("cannot start the tokio runtime: {e}"));
    if threads > 1 {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("ffi-grpc")
            .enable_all()
            .build()
            .map_err(fail)?;
        return Ok(RUNTIME.get_or_init(|| rt));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(fail)?;
    let rt = RUNTIME.get_or_init(|| rt);
    std::thread::Builder::new()
        .name("ffi-grpc".into())
        .spawn(move || rt.block_on(std::future::pending::<()>()))
        .map_err(fail)?;
    Ok(rt)
}

/// What a queue's loop shares with the calls it spawned.
#[derive(Default)]
struct Calls {
    /// calls taken and not yet answered
    in_flight: AtomicUsize,
    /// the last call in flight was answered
    idle: Notify,
}

/// Sweeps the calls in flight each time the core says a task of the
/// queue was cancelled. Aborted when the queue's loop ends.
async fn sweep_on_cancels(cancels: AsyncFd<QueueFd>) {
    loop {
        match cancels.readable().await {
            Ok(mut guard) => {
                clear_eventfd(cancels.get_ref());
                guard.clear_ready();
                crate::cancel::sweep();
            }
            Err(e) => {
                eprintln!("ffi_grpc: waiting on the queue's space fd failed: {e}");
                return;
            }
        }
    }
}

async fn serve(queue: Queue, ready: AsyncFd<QueueFd>, spin: Duration) {
    let calls = Arc::new(Calls::default());
    let mut just_idle = false;
    loop {
        while let Some(task) = queue.try_poll() {
            tokio::spawn(handle(task, InFlight::new(&calls)));
        }
        if just_idle && !spin.is_zero() && calls.in_flight.load(Ordering::Acquire) == 0 {
            just_idle = false;
            if let Some(task) = spin_for_next(&queue, spin) {
                tokio::spawn(handle(task, InFlight::new(&calls)));
                continue;
            }
        }
        match queue.arm() {
            Armed::Tasks => continue,
            Armed::Finished => return,
            Armed::Wait => tokio::select! {
                r = ready.readable() => match r {
                    Ok(mut guard) => {
                        clear_eventfd(ready.get_ref());
                        guard.clear_ready();
                    }
                    Err(e) => {
                        eprintln!("ffi_grpc: waiting on the task queue failed: {e}");
                        return;
                    }
                },
                // only a loop that spins wants to hear of it (else it is a
                // wake-up of this task, a poll and an arm per sequential call)
                _ = calls.idle.notified(), if !spin.is_zero() => just_idle = true,
            },
        }
    }
}

/// Counts a call in flight until dropped (answered, or unwound by a panic).
struct InFlight(Arc<Calls>);

impl InFlight {
    fn new(calls: &Arc<Calls>) -> Self {
        calls.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(calls.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_one();
        }
    }
}

/// Right after the last call in flight was answered (nothing else of ours
/// to run), looks for the caller's next call for up to `spin` before the
/// loop parks. Blocking the thread is fine then: the caller's next call is
/// usually a few µs away, and a wake-up costs tens.
fn spin_for_next(queue: &Queue, spin: Duration) -> Option<Task> {
    let t0 = Instant::now();
    let mut i: u32 = 0;
    while t0.elapsed() < spin {
        if let Some(task) = queue.try_poll() {
            return Some(task);
        }
        i = i.wrapping_add(1);
        if i.is_multiple_of(64) {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
    None
}

async fn handle(task: Task, _in_flight: InFlight) {
    if task.request().first() == Some(&b'M') {
        return crate::stream::messages(task).await;
    }
    let req = task.request();
    let handle = task.handle();
    let Some((&op, rest)) = req.split_first() else {
        return task.respond(100, Some(b"ffi_grpc: empty request"));
    };
    let done: Result<Option<Vec<u8>>, Error> = match op {
        b'U' => crate::call::unary(rest, handle).await.map(Some),
        b'W' => crate::stream::send(rest, handle)
            .await
            .map(|_| Some(Vec::new())),
        b'S' => crate::stream::open(rest).map(|id| Some(id.to_string().into_bytes())),
        b'E' => crate::stream::close_send(rest).map(|_| Some(Vec::new())),
        b'P' => match crate::protos::parse_load(rest) {
            Ok(load) => crate::protos::compile_async(load)
                .await
                .map(|_| Some(Vec::new())),
            Err(e) => Err(e),
        },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cfg_takes_threads_and_spin_and_refuses_the_rest() {
        let c = parse_cfg("").unwrap();
        assert_eq!((c.threads, c.spin), (1, Duration::ZERO));
        let c = parse_cfg(" threads=3 , spin_us=0").unwrap();
        assert_eq!(c.threads, 3);
        assert!(parse_cfg("threads=0").is_err());
        assert!(parse_cfg("spin_us=-1").is_err());
        let e = parse_cfg("fast").err().unwrap().to_string();
        assert!(e.contains("unknown cfg option 'fast'"), "{e}");
    }
}
