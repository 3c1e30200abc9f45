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
//! Optionally (cfg `spin_us=N`), after activity (a task taken or answered)
//! the loop keeps checking the queue between the other tasks' turns
//! (`yield_now`) for N µs before it arms the fd and parks, so a caller's
//! next call, coming right after its answer, needs no wake-up. Off by
//! default: on 2-CPU machines shared by nginx, this runtime and the server,
//! measurements were slower with it (the spin takes the CPU the others
//! need); never on when the process may use one CPU only.
//!
//! Operations (first byte of a request): `C` connect, `U` unary call, `S`
//! new stream, `W` send, `R` recv, `E` close_send.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::runtime::Runtime;

use crate::abi::{clear_eventfd, Armed, Queue, QueueFd, Task};
use crate::error::Error;

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// Answers given so far: activity the spin watches for.
static ANSWERED: AtomicU64 = AtomicU64::new(0);

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
    rt.spawn(serve(queue, ready, cfg.spin));
    Ok(())
}

async fn serve(queue: Queue, ready: AsyncFd<QueueFd>, spin: Duration) {
    let mut active = Instant::now();
    let mut answered = ANSWERED.load(Ordering::Relaxed);
    loop {
        while let Some(task) = queue.try_poll() {
            tokio::spawn(handle(task));
            active = Instant::now();
        }
        if !spin.is_zero() {
            let now = ANSWERED.load(Ordering::Relaxed);
            if now != answered {
                answered = now;
                active = Instant::now();
            }
            if active.elapsed() < spin {
                tokio::task::yield_now().await;
                continue;
            }
        }
        match queue.arm() {
            Armed::Tasks => continue,
            Armed::Finished => return,
            Armed::Wait => match ready.readable().await {
                Ok(mut guard) => {
                    clear_eventfd(ready.get_ref());
                    guard.clear_ready();
                    active = Instant::now();
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
    ANSWERED.fetch_add(1, Ordering::Relaxed);
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
