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
}

/// Written by runtime threads.
#[derive(Default)]
struct Runtime {
    wakes: AtomicU64,
}

static CALLER: CachePadded<Caller> = CachePadded::new(Caller {
    posted: AtomicU64::new(0),
    refused: AtomicU64::new(0),
    answered_spinning: AtomicU64::new(0),
    parked: AtomicU64::new(0),
    drained: AtomicU64::new(0),
});
static RUNTIME: CachePadded<Runtime> = CachePadded::new(Runtime {
    wakes: AtomicU64::new(0),
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
pub fn wake_written() {
    bump(&RUNTIME.wakes);
}

/// The counters in the order `resty_ffi_stats` copies them: posted,
/// refused, answered_spinning, parked, drained, wakes, stray_answers.
pub fn snapshot() -> [u64; 7] {
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    [
        load(&CALLER.posted),
        load(&CALLER.refused),
        load(&CALLER.answered_spinning),
        load(&CALLER.parked),
        load(&CALLER.drained),
        load(&RUNTIME.wakes),
        crate::task::stray_answers(),
    ]
}
