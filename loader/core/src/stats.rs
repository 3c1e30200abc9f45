//! Process-wide counters of the call path, for operators and for profiling
//! (is a call spun or parked, how many wakes do answers cost).
//!
//! Counters written by the worker's own thread sit apart from those written
//! by runtime threads, so counting costs no shared cache line on the hot path.

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

/// Written by the nginx worker thread only.
#[derive(Default)]
struct Caller {
    posted: AtomicU64,
    refused: AtomicU64,
    answered_spinning: AtomicU64,
    parked: AtomicU64,
    drained: AtomicU64,
    deferred: AtomicU64,
    thread_wakeups: AtomicU64,
}

/// Written by runtime threads.
#[derive(Default)]
struct Runtime {
    wakes: AtomicU64,
    moved_off: AtomicU64,
}

static CALLER: CachePadded<Caller> = CachePadded::new(Caller {
    posted: AtomicU64::new(0),
    refused: AtomicU64::new(0),
    answered_spinning: AtomicU64::new(0),
    parked: AtomicU64::new(0),
    drained: AtomicU64::new(0),
    deferred: AtomicU64::new(0),
    thread_wakeups: AtomicU64::new(0),
});
static RUNTIME: CachePadded<Runtime> = CachePadded::new(Runtime {
    wakes: AtomicU64::new(0),
    moved_off: AtomicU64::new(0),
});

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub fn posted() {
    bump(&CALLER.posted);
}
pub fn refused() {
    bump(&CALLER.refused);
}
pub fn answered_spinning() {
    bump(&CALLER.answered_spinning);
}
pub fn parked() {
    bump(&CALLER.parked);
}
pub fn drained(n: usize) {
    CALLER.drained.fetch_add(n as u64, Ordering::Relaxed);
}
/// A call was posted deferred (see `TaskQueue::post_deferred`).
pub fn deferred() {
    bump(&CALLER.deferred);
}
/// A post or flush signalled a sleeping runtime thread.
pub fn thread_wakeup() {
    bump(&CALLER.thread_wakeups);
}
pub fn wake_written() {
    bump(&RUNTIME.wakes);
}
/// A runtime thread moved itself off the CPU of the nginx thread it serves
/// (see `TaskQueue::step_aside`).
pub fn moved_off() {
    bump(&RUNTIME.moved_off);
}

/// The counters in the order `resty_ffi_stats` copies them: posted,
/// refused, answered_spinning, parked, drained, wakes, stray_answers,
/// log_lines_dropped, deferred, thread_wakeups, moved_off.
pub fn snapshot() -> [u64; 11] {
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    [
        load(&CALLER.posted),
        load(&CALLER.refused),
        load(&CALLER.answered_spinning),
        load(&CALLER.parked),
        load(&CALLER.drained),
        load(&RUNTIME.wakes),
        crate::task::stray_answers(),
        crate::log::dropped(),
        load(&CALLER.deferred),
        load(&CALLER.thread_wakeups),
        load(&RUNTIME.moved_off),
    ]
}

/// Upper bounds of the call latency histogram's buckets, in ns (a last,
/// unbounded bucket follows): 10 µs ... 10 s.
pub const BUCKETS_NS: [u64; 13] = [
    10_000,
    50_000,
    100_000,
    500_000,
    1_000_000,
    5_000_000,
    10_000_000,
    50_000_000,
    100_000_000,
    500_000_000,
    1_000_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// How a call ended, as the caller saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Error,
    /// A late answer to a call that timed out: counted as a timeout already.
    Late,
}

/// Counters of one runtime in this process. Calls are counted by the worker
/// thread; `in_flight` and `parked` may also move on a runtime thread (an
/// answer to a closed channel is freed there).
#[derive(Default)]
pub struct RuntimeStats {
    ok: AtomicU64,
    error: AtomicU64,
    timeout: AtomicU64,
    refused: AtomicU64,
    in_flight: AtomicU64,
    parked: AtomicU64,
    sum_ns: AtomicU64,
    buckets: [AtomicU64; BUCKETS_NS.len() + 1],
}

/// How many values [`RuntimeStats::snapshot`] gives.
pub const RUNTIME_STATS: usize = 9 + BUCKETS_NS.len() + 1;

impl RuntimeStats {
    pub fn task_taken(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }
    pub fn task_freed(&self, was_parked: bool) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        if was_parked {
            self.parked.fetch_sub(1, Ordering::Relaxed);
        }
    }
    pub fn parked(&self) {
        self.parked.fetch_add(1, Ordering::Relaxed);
    }
    pub fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }
    pub fn timed_out(&self) {
        self.timeout.fetch_add(1, Ordering::Relaxed);
    }
    /// A call ended with `outcome` after `ns`.
    pub fn finished(&self, outcome: Outcome, ns: u64) {
        let counter = match outcome {
            Outcome::Ok => &self.ok,
            Outcome::Error => &self.error,
            Outcome::Late => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        let i = BUCKETS_NS.partition_point(|&b| b < ns);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }
    /// ok, error, timeout, refused, in_flight, parked, queue_len,
    /// latency sum (ns), latency count, then each bucket's own count.
    pub fn snapshot(&self, queue_len: usize) -> [u64; RUNTIME_STATS] {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = [0u64; RUNTIME_STATS];
        let (ok, error) = (load(&self.ok), load(&self.error));
        out[..9].copy_from_slice(&[
            ok,
            error,
            load(&self.timeout),
            load(&self.refused),
            load(&self.in_flight),
            load(&self.parked),
            queue_len as u64,
            load(&self.sum_ns),
            ok + error,
        ]);
        for (o, b) in out[9..].iter_mut().zip(&self.buckets) {
            *o = load(b);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_land_in_their_buckets_and_late_answers_count_nothing() {
        let s = RuntimeStats::default();
        s.finished(Outcome::Ok, 5_000);
        s.finished(Outcome::Ok, 10_000);
        s.finished(Outcome::Error, 2_000_000);
        s.finished(Outcome::Ok, 60_000_000_000);
        s.finished(Outcome::Late, 1);
        let snap = s.snapshot(3);
        assert_eq!(&snap[..9], &[3, 1, 0, 0, 0, 0, 3, 60_002_015_000, 4]);
        let buckets = &snap[9..];
        assert_eq!(buckets[0], 2, "5 µs and 10 µs are <= 10 µs");
        assert_eq!(buckets[5], 1, "2 ms is <= 5 ms");
        assert_eq!(buckets[BUCKETS_NS.len()], 1, "60 s is past 10 s");
    }
}
