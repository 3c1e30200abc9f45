//! Cancelling calls whose Lua side gave up, so the server sees the call
//! end (RST_STREAM) instead of working for nobody.
//!
//! Two ways reach a call. The core marks a task cancelled when its Lua
//! side stops waiting (the wait timed out, the worker exits) and signals
//! the queue's space fd: the queue's loop then [`sweep`]s the unary calls
//! and the stream sends and receives in flight and ends those whose task
//! says so. A coroutine that is killed
//! (ngx.thread.kill, its request ended) never tells the core: for that,
//! each unary call and each stream carries an id Lua took from [`new_id`]
//! and keeps in a guard; when the guard is collected, Lua calls [`cancel`]
//! with that id, directly through FFI (it never blocks, so it works from a
//! GC finalizer in any phase).
//!
//! Guarantees: a unary call registered with [`watch`] ends as soon as it is
//! cancelled (its tonic future is dropped, which resets the HTTP/2 stream);
//! an open stream is closed. A cancel that arrives before the runtime took
//! the call (the call was still queued) is remembered, and the call ends at
//! once when it starts; at most [`MAX_EARLY`] such early cancels are kept
//! (a cancel of a call that had just finished looks the same and would
//! otherwise stay forever). Ids are unique in the process.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use tokio::sync::oneshot;

use crate::abi::TaskHandle;

/// Early cancels kept for calls not started yet (oldest forgotten first).
pub const MAX_EARLY: usize = 4096;

enum Slot {
    /// a unary call in flight (sending ends it), and its task
    Running(oneshot::Sender<()>, Option<TaskHandle>),
    /// cancelled before it started
    Cancelled,
}

#[derive(Default)]
struct Registry {
    slots: HashMap<u64, Slot>,
    early: VecDeque<u64>,
}

fn lock() -> MutexGuard<'static, Registry> {
    static R: OnceLock<Mutex<Registry>> = OnceLock::new();
    R.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh call id (never 0, which means "cannot be cancelled").
pub fn new_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// A unary call's registration: [`Watch::cancelled`] completes when the
/// call is cancelled; dropping it unregisters the call.
pub struct Watch {
    id: u64,
    rx: Option<oneshot::Receiver<()>>,
}

/// Registers call `id` of `task` as running (id 0: a watch that never
/// fires).
pub fn watch(id: u64, task: Option<TaskHandle>) -> Watch {
    if id == 0 {
        return Watch { id, rx: None };
    }
    let (tx, rx) = oneshot::channel();
    let mut r = lock();
    if let Some(Slot::Cancelled) = r.slots.remove(&id) {
        // cancelled while queued: the dropped sender fires it at once
        return Watch {
            id: 0,
            rx: Some(rx),
        };
    }
    // asked under the lock a sweep takes: a cancel before this is seen
    // here, one after it finds the slot in its sweep
    if task.is_some_and(|t| t.cancelled()) {
        return Watch {
            id: 0,
            rx: Some(rx),
        };
    }
    r.slots.insert(id, Slot::Running(tx, task));
    Watch { id, rx: Some(rx) }
}

/// Woken each time the queue's space fd fires: a streamed answer's reader
/// made room (or went away), so a stream waiting to offer a chunk tries
/// again.
pub fn space() -> &'static tokio::sync::Notify {
    static N: OnceLock<tokio::sync::Notify> = OnceLock::new();
    N.get_or_init(tokio::sync::Notify::new)
}

/// Ends the unary calls in flight whose task the core marks cancelled
/// (after the queue's space fd said some task was), and wakes the streams
/// waiting for room.
pub fn sweep() {
    space().notify_waiters();
    let mut r = lock();
    let gone: Vec<u64> = r
        .slots
        .iter()
        .filter_map(|(&id, slot)| match slot {
            Slot::Running(_, Some(task)) if task.cancelled() => Some(id),
            _ => None,
        })
        .collect();
    for id in gone {
        if let Some(Slot::Running(tx, _)) = r.slots.remove(&id) {
            let _ = tx.send(());
        }
    }
}

impl Watch {
    /// Completes when the call is cancelled; never, if it is not.
    pub async fn cancelled(&mut self) {
        match &mut self.rx {
            Some(rx) => {
                let _ = rx.await;
            }
            None => std::future::pending().await,
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self.id != 0 {
            let mut r = lock();
            if let Some(Slot::Running(..)) = r.slots.get(&self.id) {
                r.slots.remove(&self.id);
            }
        }
    }
}

/// Cancels call `id`: closes its stream, ends its unary call, or (not
/// started yet) makes it end as it starts.
pub fn cancel(id: u64) {
    if id == 0 {
        return;
    }
    // lock order: this registry, then the streams' (see `unless_cancelled`)
    let mut r = lock();
    if crate::stream::close(id) {
        return;
    }
    match r.slots.remove(&id) {
        Some(Slot::Running(tx, _)) => {
            let _ = tx.send(());
        }
        _ => {
            r.slots.insert(id, Slot::Cancelled);
            r.early.push_back(id);
            while r.early.len() > MAX_EARLY {
                if let Some(old) = r.early.pop_front() {
                    if let Some(Slot::Cancelled) = r.slots.get(&old) {
                        r.slots.remove(&old);
                    }
                }
            }
        }
    }
}

/// Runs `register` (which makes stream `id` reachable by [`cancel`])
/// unless `id` was cancelled already; under this registry's lock, so a
/// cancel either finds the stream or is found here.
pub fn unless_cancelled<T>(id: u64, register: impl FnOnce() -> T) -> Option<T> {
    let mut r = lock();
    if let Some(Slot::Cancelled) = r.slots.get(&id) {
        r.slots.remove(&id);
        return None;
    }
    Some(register())
}

/// Calls registered or cancelled early (tests: nothing is left behind).
#[cfg(test)]
fn len() -> usize {
    lock().slots.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn fired(w: &mut Watch) -> bool {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_millis(20), w.cancelled())
                .await
                .is_ok()
        })
    }

    // one test: the registry is process-wide and tests run in parallel
    #[test]
    fn cancel_reaches_running_and_queued_calls_and_leaves_nothing_behind() {
        let before = len();
        let a = new_id();
        let mut w = watch(a, None);
        assert!(!fired(&mut w), "not cancelled yet");
        cancel(a);
        assert!(fired(&mut w), "a running call is cancelled");
        drop(w);

        let b = new_id();
        cancel(b); // still queued
        let mut w = watch(b, None);
        assert!(fired(&mut w), "a call cancelled while queued ends at once");
        drop(w);

        let c = new_id();
        drop(watch(c, None)); // finished normally
        sweep(); // no task to ask about: nothing happens
        assert_eq!(len(), before, "finished and cancelled calls are gone");

        let d = new_id();
        cancel(d);
        assert!(unless_cancelled(d, || ()).is_none());
        assert_eq!(unless_cancelled(new_id(), || 7), Some(7));

        let mut w = watch(0, None);
        cancel(0);
        assert!(!fired(&mut w), "id 0 cannot be cancelled");

        for _ in 0..MAX_EARLY + 10 {
            cancel(new_id());
        }
        assert!(len() <= before + MAX_EARLY, "early cancels are bounded");
    }
}
