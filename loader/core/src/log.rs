//! The core's own log lines, and a rate limit for lines a misbehaving
//! runtime could otherwise repeat without bound.
//!
//! Lines go to stderr, which nginx points at its error.log.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::spin::now_ns;

/// Writes one line at error level.
pub fn error(msg: &str) {
    eprintln!("{msg}");
}

/// True at most once a second per `last` (which holds the time of the last
/// `true`, in ns since the process's first `now_ns`, plus one).
pub fn every_second(last: &AtomicU64) -> bool {
    let now = now_ns() + 1;
    let prev = last.load(Ordering::Relaxed);
    if prev != 0 && now.saturating_sub(prev) < 1_000_000_000 {
        return false;
    }
    last.compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
}
