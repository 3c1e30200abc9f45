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
//! When the last call in flight has just been answered, the loop looks
//! for the caller's next call before it arms the fd and parks: it polls
//! with the core's `resty_ffi_task_poll_spin`, which spins within the
//! queue's poll budget (ffi.load's `poll_spin_us`, default 50 µs; 0 turns
//! this off; `grpc.LOAD_OPTS`), counted as a spinning poller, never longer,
//! and closes itself for a while after repeated misses (on one CPU it
//! yields once instead). A sequential caller's next call then needs no
//! wake-up of this thread (no eventfd write and read, no epoll return), and
//! because the core saw a spinning poller take it, the caller may spin for
//! the answer within its own adaptive budget (ffi.load's `spin_us`) instead
//! of parking: on a machine where a call is answered within that budget,
//! neither side of the bridge sleeps. Measured in benches/README.md
//! section 5. (An earlier spin of this loop's own, cfg `spin_us`, polled
//! without being counted, so callers always parked: it gained nothing
//! clear and is gone.)
//!
//! Beside the loop, a task waits on the queue's space fd, which the core
//! signals when a task's caller stopped waiting (timed out): it then ends
//! those calls (cancel.rs), so their servers see them cancelled.
//!
//! Operations (first byte of a request): `C` connect, `U` unary call, `S`
//! new stream, `W` send, `M` every message of a stream as a streamed
//! answer (Lua's `rt:__stream`), `E` close_send, `P` compile a .proto
//! (grpc.load from a phase that can yield).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::io::unix::AsyncFd;
use tokio::runtime::Runtime;

use crate::abi::{clear_eventfd, Armed, Queue, QueueFd, Task};
use crate::error::Error;

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

struct Cfg {
    threads: usize,
}

fn parse_cfg(cfg: &str) -> Result<Cfg, Error> {
    let mut out = Cfg { threads: 1 };
    for opt in cfg.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match opt.split_once('=') {
            Some(("threads", n)) => match n.parse::<usize>() {
                Ok(n) if (1..=64).contains(&n) => out.threads = n,
                _ => return Err(Error::Init(format!("bad threads={n} (want 1..64)"))),
            },
            Some(("spin_us", _)) => {
                return Err(Error::Init(
                    "cfg spin_us is gone: the queue loop spins within ffi.load's \
                     poll_spin_us (grpc.LOAD_OPTS = { poll_spin_us = N }, 0: off)"
                        .into(),
                ))
            }
            _ => {
                return Err(Error::Init(format!(
                    "unknown cfg option '{opt}' (known: threads=N)"
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
        serve(queue, ready).await;
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
struct Calls {
    queue: Queue,
    /// calls taken and not yet answered
    in_flight: AtomicUsize,
    /// a call was taken while another was in flight since the loop was
    /// last idle: the caller is not sequential
    overlapped: AtomicBool,
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

async fn serve(queue: Queue, ready: AsyncFd<QueueFd>) {
    let calls = Arc::new(Calls {
        queue,
        in_flight: AtomicUsize::new(0),
        overlapped: AtomicBool::new(false),
    });
    loop {
        while let Some(task) = queue.try_poll() {
            tokio::spawn(handle(task, InFlight::new(&calls)));
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

/// Times the last call in flight was answered and the next one looked for
/// (all queues of the process), and times one was found: [`loop_stats`].
static IDLE_LOOKS: AtomicU64 = AtomicU64::new(0);
static TAKEN_LOOKING: AtomicU64 = AtomicU64::new(0);

/// How often, in this process, the last call in flight was answered and
/// the next call looked for, and how often one was found then (posted
/// before or during the spin) rather than by the loop after a wake-up.
pub fn loop_stats() -> (u64, u64) {
    (
        IDLE_LOOKS.load(Ordering::Relaxed),
        TAKEN_LOOKING.load(Ordering::Relaxed),
    )
}

/// Counts a call in flight until it is answered ([`InFlight::answered`])
/// or unwound by a panic (dropped).
struct InFlight(Option<Arc<Calls>>);

impl InFlight {
    fn new(calls: &Arc<Calls>) -> Self {
        if calls.in_flight.fetch_add(1, Ordering::AcqRel) > 0 {
            calls.overlapped.store(true, Ordering::Relaxed);
        }
        InFlight(Some(calls.clone()))
    }

    /// The call was answered. If it was the last in flight and the calls
    /// since the loop was last idle came one at a time, nothing else of
    /// this queue runs on this thread and the caller is likely sequential:
    /// look for its next call right away, within the queue's poll budget,
    /// before this task ends (a spinning caller posts it within
    /// microseconds; the queue's loop would start looking only after a hop
    /// through tokio's scheduler, often too late for the core to count it
    /// as spinning). Concurrent callers get no spin: their calls come in
    /// bursts, one flush per nginx event-loop cycle, and a spin between
    /// bursts burns the CPU nginx needs (as the core's own pollers stay
    /// lazy while posts are deferred).
    /// The next call found so comes back, to be served by the same tokio
    /// task (no spawn, no trip through the scheduler).
    fn answered(mut self) -> Option<(Task, InFlight)> {
        let calls = self.0.take()?;
        if calls.in_flight.fetch_sub(1, Ordering::AcqRel) != 1
            || calls.overlapped.swap(false, Ordering::Relaxed)
        {
            return None;
        }
        IDLE_LOOKS.fetch_add(1, Ordering::Relaxed);
        let task = calls.queue.poll_spin()?;
        TAKEN_LOOKING.fetch_add(1, Ordering::Relaxed);
        Some((task, InFlight::new(&calls)))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(calls) = self.0.take() {
            calls.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Serves a call, then each next call of a sequential caller found on
/// answering the previous one.
async fn handle(mut task: Task, mut in_flight: InFlight) {
    loop {
        answer(task).await;
        match in_flight.answered() {
            Some((next, counted)) => (task, in_flight) = (next, counted),
            None => return,
        }
    }
}

/// Serves one task and answers it.
async fn answer(task: Task) {
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
    fn cfg_takes_threads_and_refuses_the_rest() {
        assert_eq!(parse_cfg("").unwrap().threads, 1);
        assert_eq!(parse_cfg(" threads=3 , ").unwrap().threads, 3);
        assert!(parse_cfg("threads=0").is_err());
        let e = parse_cfg("threads=2,spin_us=50").err().unwrap().to_string();
        assert!(e.contains("poll_spin_us"), "{e}");
        let e = parse_cfg("fast").err().unwrap().to_string();
        assert!(e.contains("unknown cfg option 'fast'"), "{e}");
    }
}
