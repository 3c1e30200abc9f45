//! The bounded task queue of one loaded runtime.
//!
//! Guarantees:
//! - `post` never blocks beyond a short mutex hold; it fails at once when the
//!   queue holds `max` tasks (`QueueFull`) or was finished (`Finished`).
//! - `poll` may be called from any number of runtime threads. It spins for
//!   the queue's poll budget (see [`crate::spin`]), then blocks until a task
//!   arrives or the queue is finished.
//! - Each posted task is returned by exactly one `poll`.
//! - After `finish`, tasks already posted are still handed out; once the
//!   queue is empty every `poll`, from every thread, returns `None`, now and
//!   forever. The queue's memory stays valid for the life of the process, so
//!   a runtime thread that polls once more after `None` is still safe.

use std::collections::VecDeque;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use crate::ready::ReadyFd;
use crate::spin::{now_ns, spin_until, SpinGate};
use crate::task::TaskPtr;
use crate::Error;

/// How long after a deferred post pollers stop spinning for tasks.
const LAZY_FOR: Duration = Duration::from_millis(20);
/// How long after it answered a poller counts as coming back for the
/// next task (`poller_returning`).
const RETURNING: Duration = Duration::from_micros(10);

/// The hand-off slot holds no task and no poller waits on it.
const SLOT_EMPTY: usize = 0;
/// A spinning poller waits on the hand-off slot (tasks are aligned, so no
/// task's address is 1).
const SLOT_WAITING: usize = 1;

struct Inner {
    tasks: VecDeque<TaskPtr>,
    sleepers: usize,
    /// Sleepers signalled by `post` that have not yet run (a woken thread
    /// needs a CPU before it can take the lock and count itself out): a
    /// post counts on them rather than signalling again, so a burst of
    /// posts costs one futex wake per sleeper, not one per post.
    woken: usize,
    finished: bool,
    /// Times a poller went to sleep (tests compare it with `signals`).
    #[cfg(test)]
    sleeps: usize,
}

pub struct TaskQueue {
    inner: Mutex<Inner>,
    ready_cond: Condvar,
    /// Mirrors `tasks.len()` so spinning pollers need not take the lock.
    len: CachePadded<AtomicUsize>,
    /// Pollers spinning right now (see `poll` and `post`).
    spinners: CachePadded<AtomicUsize>,
    /// A task handed from `post` straight to one spinning poller, or
    /// `SLOT_WAITING` while a poller waits for one, or `SLOT_EMPTY`. One
    /// cache line travels between the caller's CPU and the poller's,
    /// instead of the lock's, the deque's and the counters'.
    slot: CachePadded<AtomicUsize>,
    /// Answers' buffers the caller is done with, for a runtime thread to
    /// free (`free_later`): a stack linked through the buffers' first word.
    garbage: CachePadded<AtomicPtr<c_void>>,
    /// Sleeping pollers signalled by `post` so far.
    signals: AtomicUsize,
    /// Of `signals`, those sent by a poller passing a batch on (`pass_on`).
    chained: AtomicUsize,
    finished: AtomicBool,
    /// When the last deferred post was made (`spin::now_ns`; 0: never).
    /// Deferred posts mean the caller has other calls parked: it is under
    /// load. For `LAZY_FOR` after one, pollers do not spin for the next
    /// task: they sleep, and the caller's flush (once per event-loop cycle)
    /// wakes them for a whole batch. (An eager post now and then, when the
    /// caller's parked calls all happened to be answered, does not end it.)
    deferred_at: CachePadded<AtomicU64>,
    /// `LAZY_FOR` in ns (tests lengthen it).
    lazy_for_ns: u64,
    /// The CPU of the last caller that parked, reset (-1) by a post that
    /// finds a poller spinning in or coming back to `poll` (not by one
    /// handed over through the slot: a load there cost the bridge's round
    /// trip 0.1 µs). A poller on that CPU moves off it (`step_aside`).
    /// Written only when it changes, so in steady state the line stays
    /// shared.
    caller_cpu: CachePadded<AtomicI32>,
    /// When a poller last answered a task it took (`spin::now_ns`; 0:
    /// never), as the caller learns it when it reads the answer. Written
    /// and read by the caller only.
    poller_answered_ns: CachePadded<AtomicU64>,
    max: usize,
    poll_gate: SpinGate,
    /// The caller's spin for answers to this queue's tasks, adapted to
    /// their answer times. Lives here because tasks point at their queue,
    /// which is never freed (see module doc).
    pub caller_gate: SpinGate,
    /// Readiness fd for event-loop runtimes (see ready.rs).
    pub ready: ReadyFd,
    /// Readable after a stream of this queue made room in its window or
    /// a task of it was cancelled, for producers told "full" (see
    /// stream.rs) and loops that cancel what they serve.
    pub space: ReadyFd,
    /// Per-runtime call counters and latency histogram, written on every
    /// call by the caller: on lines of their own, away from what spinning
    /// pollers read.
    pub stats: CachePadded<crate::stats::RuntimeStats>,
}

impl TaskQueue {
    pub fn new(max: usize, poll_spin: Duration, caller_spin: Duration) -> TaskQueue {
        TaskQueue {
            inner: Mutex::new(Inner {
                tasks: VecDeque::new(),
                sleepers: 0,
                woken: 0,
                finished: false,
                #[cfg(test)]
                sleeps: 0,
            }),
            ready_cond: Condvar::new(),
            len: CachePadded::new(AtomicUsize::new(0)),
            spinners: CachePadded::new(AtomicUsize::new(0)),
            slot: CachePadded::new(AtomicUsize::new(SLOT_EMPTY)),
            garbage: CachePadded::new(AtomicPtr::new(std::ptr::null_mut())),
            signals: AtomicUsize::new(0),
            chained: AtomicUsize::new(0),
            finished: AtomicBool::new(false),
            deferred_at: CachePadded::new(AtomicU64::new(0)),
            lazy_for_ns: LAZY_FOR.as_nanos() as u64,
            caller_cpu: CachePadded::new(AtomicI32::new(-1)),
            poller_answered_ns: CachePadded::new(AtomicU64::new(0)),
            max: max.max(1),
            poll_gate: SpinGate::new(poll_spin),
            caller_gate: SpinGate::new(caller_spin),
            ready: ReadyFd::default(),
            space: ReadyFd::default(),
            stats: Default::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means a thread panicked while holding it; the
        // queue's data is still consistent (every update is one step).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `task`. Returns whether a poller will take it within
    /// microseconds: one was spinning, or one is on its way back to `poll`
    /// (`poller_returning`).
    pub fn post(&self, task: TaskPtr) -> Result<bool, Error> {
        // (read before the task is queued: a poller may take its line then)
        let returning = self.poller_returning(task.posted_ns());
        if self.hand_off(task) {
            return Ok(true);
        }
        let (wake, spinning) = {
            let mut inner = self.lock();
            self.push(&mut inner, task)?;
            // Wake a sleeper only for tasks the spinning pollers and the
            // sleepers already woken cannot take: a spinner that gives up
            // decrements `spinners` before it locks and looks at the queue,
            // and a woken sleeper looks at the queue before it sleeps
            // again, so no task is left without a poller.
            let spinners = self.spinners.load(Ordering::SeqCst);
            (self.take_wake(&mut inner, spinners), spinners > 0)
        };
        if !spinning && !returning {
            // the caller parks: a poller woken for it must not share its CPU
            self.note_caller_cpu(crate::spin::current_cpu());
        } else {
            self.note_caller_cpu(-1);
        }
        if wake {
            self.signal();
        }
        self.ready.notify_if_armed();
        Ok(spinning || returning)
    }

    /// Notes that a poller answered a task it took at `answered_ns` (the
    /// caller, reading that answer).
    pub fn poller_answered(&self, answered_ns: u64) {
        self.poller_answered_ns
            .store(answered_ns, Ordering::Relaxed);
    }

    /// Whether a poller answered within `RETURNING` before `now_ns`: it is
    /// on its way back to `poll` and takes the next task within
    /// microseconds, though it is not spinning yet. A caller that posts
    /// right after reading an answer (a loop of calls) races that poller
    /// back; when the post came first, the caller parked, and a parked
    /// call costs 15-20 µs against 1-2 spun (a Python handler thread's way
    /// back, GIL released, lost the race for 28% of calls). The caller may
    /// spin for it then; its spin gate bounds what that costs when the
    /// poller does not come back.
    fn poller_returning(&self, now_ns: u64) -> bool {
        let at = self.poller_answered_ns.load(Ordering::Relaxed);
        at != 0 && now_ns.saturating_sub(at) < RETURNING.as_nanos() as u64
    }

    /// Gives `task` to the poller waiting on the hand-off slot, if one is:
    /// it takes it without the lock, and nobody needs waking. Never once
    /// the queue is finished (`post` refuses then); a task handed over as
    /// it finishes is still served, as queued tasks are.
    fn hand_off(&self, task: TaskPtr) -> bool {
        // (a plain load first: most posts find nobody there, and a failed
        // compare-and-swap would still take the line for writing)
        if self.slot.load(Ordering::Relaxed) != SLOT_WAITING
            || self.finished.load(Ordering::Acquire)
            || self
                .slot
                .compare_exchange(
                    SLOT_WAITING,
                    task.as_raw() as usize,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return false;
        }
        // That poller is busy now: the next post must not count on it
        // (it leaves `spinners` to us, see `poll`).
        self.spinners.fetch_sub(1, Ordering::SeqCst);
        true
    }

    /// Stops waiting on the hand-off slot: the task handed over meanwhile,
    /// if any. Only the poller that set `SLOT_WAITING` calls it.
    fn leave_slot(&self) -> Option<TaskPtr> {
        match self.slot.swap(SLOT_EMPTY, Ordering::AcqRel) {
            SLOT_EMPTY | SLOT_WAITING => None,
            p => TaskPtr::from_raw(p as *mut c_void),
        }
    }

    /// Whether a sleeping poller must be woken for the tasks queued: only
    /// for tasks the spinning pollers and the sleepers already woken cannot
    /// take. If so, counts it as woken (the caller signals it once the lock
    /// is dropped).
    fn take_wake(&self, inner: &mut Inner, spinners: usize) -> bool {
        let wake = inner.sleepers > inner.woken && inner.tasks.len() > spinners + inner.woken;
        if wake {
            inner.woken += 1;
        }
        wake
    }

    /// Signals one sleeping poller (counted by `take_wake`).
    fn signal(&self) {
        self.signals.fetch_add(1, Ordering::Relaxed);
        crate::stats::thread_wakeup();
        self.ready_cond.notify_one();
    }

    fn push(&self, inner: &mut Inner, task: TaskPtr) -> Result<(), Error> {
        if inner.finished {
            return Err(Error::Finished);
        }
        if inner.tasks.len() >= self.max {
            return Err(Error::QueueFull { max: self.max });
        }
        inner.tasks.push_back(task);
        self.len.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Queues `task` without waking a sleeping poller: the caller will
    /// [`flush`](Self::flush) before it waits for anything (once for all the
    /// tasks it posts in one event-loop cycle). A poller that is awake
    /// (spinning, or running another task) still takes it at once. Pollers
    /// stop spinning for a while (`LAZY_FOR`).
    pub fn post_deferred(&self, task: TaskPtr) -> Result<(), Error> {
        // the time the task was made (a clock read of its own would be a
        // second one per call)
        self.deferred_at
            .store(task.posted_ns().max(1), Ordering::Relaxed);
        let mut inner = self.lock();
        self.push(&mut inner, task)
    }

    /// Wakes a sleeping poller for the tasks deferred posts left, if no
    /// poller is awake for them. One at most: the caller is nginx's event
    /// loop, and each futex wake costs it microseconds. A woken poller that
    /// finds more tasks than pollers wakes the next one itself (`poll`), so
    /// a batch still reaches as many threads as `post` would have woken,
    /// one hand-off later each. Event-loop runtimes waiting on the
    /// readiness fd are told too.
    pub fn flush(&self) {
        let wake = {
            let mut inner = self.lock();
            let spinners = self.spinners.load(Ordering::SeqCst);
            self.take_wake(&mut inner, spinners)
        };
        if wake {
            self.signal();
        }
        if !self.is_empty() {
            self.ready.notify_if_armed();
        }
    }

    /// Arms the readiness fd before an event loop waits on it. Returns
    /// `Some(n)` with the tasks waiting (0: wait on the fd now), `None`
    /// when the queue is finished and drained (stop).
    pub fn arm(&self) -> Option<usize> {
        self.ready.arm();
        let inner = self.lock();
        let n = inner.tasks.len();
        let finished = inner.finished;
        drop(inner);
        if n > 0 || finished {
            self.ready.disarm();
        }
        if n == 0 && finished {
            None
        } else {
            Some(n)
        }
    }

    /// Remembers the CPU of a caller about to park, or -1 (see
    /// `caller_cpu`).
    fn note_caller_cpu(&self, cpu: i32) {
        if self.caller_cpu.load(Ordering::Relaxed) != cpu {
            self.caller_cpu.store(cpu, Ordering::Relaxed);
        }
    }

    /// A poller that finds itself on the CPU of a caller that parked moves
    /// to another CPU it may use (`spin::move_off_cpu`), and the poll gate
    /// forgets the misses of spins made there. Asked only off the fast
    /// path: by a poller just woken (the kernel may have put it on its
    /// waker's CPU) or whose gate closed after misses. Not on one CPU (the
    /// gate yields there) and not under load (pollers do not spin then:
    /// sharing the caller's CPU costs nothing).
    #[cold]
    fn step_aside(&self) {
        if self.lazy() {
            return;
        }
        let caller = self.caller_cpu.load(Ordering::Relaxed);
        if caller < 0 || self.poll_gate.yields() || crate::spin::current_cpu() != caller {
            return;
        }
        if crate::spin::move_off_cpu(caller) {
            crate::stats::moved_off();
            self.poll_gate.reopen();
        }
    }

    /// The poll gate's budget; a gate closed by misses may have missed for
    /// sharing the caller's CPU, so the poller steps aside first.
    #[inline]
    fn spin_budget(&self) -> Duration {
        let budget = self.poll_gate.budget();
        if !budget.is_zero() {
            return budget;
        }
        self.step_aside();
        self.poll_gate.budget()
    }

    /// Whether posts were deferred lately (see `deferred_at`).
    fn lazy(&self) -> bool {
        let at = self.deferred_at.load(Ordering::Relaxed);
        at != 0 && now_ns().saturating_sub(at) < self.lazy_for_ns
    }

    fn idle(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0 && !self.finished.load(Ordering::Acquire)
    }

    /// Next task, blocking; `None` once finished and drained.
    ///
    /// Spins within the poll budget first (counted in `spinners`, so a post
    /// that a spinner will take wakes no sleeper); a poller that loses the
    /// race for a task spins again while budget is left, and only then
    /// sleeps on the condition variable.
    pub fn poll(&self) -> Option<TaskPtr> {
        let budget = if self.lazy() {
            Duration::ZERO
        } else {
            self.spin_budget()
        };
        let mut deadline = (!budget.is_zero()).then(|| Instant::now() + budget);
        let mut recorded = false;
        loop {
            let left = deadline.map_or(Duration::ZERO, |d| {
                d.saturating_duration_since(Instant::now())
            });
            if !left.is_zero() && self.idle() {
                self.spinners.fetch_add(1, Ordering::SeqCst);
                let mut handed = None;
                let hit = if self.poll_gate.yields() {
                    // one CPU: let the nginx side run once, then look
                    deadline = None;
                    std::thread::yield_now();
                    !self.idle()
                } else if self
                    .slot
                    .compare_exchange(
                        SLOT_EMPTY,
                        SLOT_WAITING,
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    )
                    .is_ok()
                {
                    // the one poller on the slot: a post hands it the task
                    let hit = spin_until(left, || {
                        self.slot.load(Ordering::Relaxed) > SLOT_WAITING || !self.idle()
                    });
                    handed = self.leave_slot();
                    hit
                } else {
                    spin_until(left, || !self.idle())
                };
                if handed.is_none() {
                    // (the post that handed us a task counted us out)
                    self.spinners.fetch_sub(1, Ordering::SeqCst);
                }
                if !recorded {
                    self.poll_gate.record(hit);
                    recorded = true;
                }
                if let Some(task) = handed {
                    task.mark_picked();
                    return Some(task);
                }
            }
            let mut inner = self.lock();
            if let Some(task) = self.pop(&mut inner) {
                return Some(self.pass_on(inner, task));
            }
            if inner.finished {
                return None;
            }
            if deadline.is_some_and(|d| Instant::now() < d) {
                continue; // lost the race to another poller: spin again
            }
            if !self.garbage.load(Ordering::Relaxed).is_null() {
                drop(inner);
                self.free_garbage();
                continue; // (the queue may have changed meanwhile)
            }
            loop {
                inner.sleepers += 1;
                #[cfg(test)]
                {
                    inner.sleeps += 1;
                }
                inner = self
                    .ready_cond
                    .wait(inner)
                    .unwrap_or_else(|e| e.into_inner());
                inner.sleepers -= 1;
                // (a spurious wake-up may take another's count: that only
                // costs one more signal later)
                inner.woken = inner.woken.saturating_sub(1);
                // (step_aside checks this too; asked here first so the lock
                // is dropped only when a move may follow)
                if self.caller_cpu.load(Ordering::Relaxed) == crate::spin::current_cpu() {
                    // woken onto the parked caller's CPU (move without the lock)
                    drop(inner);
                    self.step_aside();
                    inner = self.lock();
                }
                if let Some(task) = self.pop(&mut inner) {
                    return Some(self.pass_on(inner, task));
                }
                if inner.finished {
                    return None;
                }
            }
        }
    }

    /// A poller took `task`: if more tasks wait than awake pollers can
    /// take (a flush woke one poller for a batch), it wakes the next
    /// sleeper itself, so that hand-off costs a runtime thread and not the
    /// nginx event loop.
    fn pass_on(&self, mut inner: MutexGuard<'_, Inner>, task: TaskPtr) -> TaskPtr {
        let spinners = self.spinners.load(Ordering::SeqCst);
        let wake = self.take_wake(&mut inner, spinners);
        drop(inner);
        if wake {
            self.chained.fetch_add(1, Ordering::Relaxed);
            self.signal();
        }
        task
    }

    fn pop(&self, inner: &mut Inner) -> Option<TaskPtr> {
        let task = inner.tasks.pop_front()?;
        self.len.fetch_sub(1, Ordering::Release);
        task.mark_picked();
        Some(task)
    }

    /// Next task if one is waiting, without blocking.
    pub fn try_poll(&self) -> Option<TaskPtr> {
        if self.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut inner = self.lock();
        self.pop(&mut inner)
    }

    /// Next task, spinning within the poll budget but never blocking: for
    /// an event loop, which must not park in `poll` yet wants a call posted
    /// while it spins to be taken within microseconds. It counts as a
    /// spinning poller (so the caller spins for the answer, as it does for
    /// a thread spinning in `poll`) and feeds the same gate. `None`: nothing
    /// came within the budget (or the queue is finished: see `arm`).
    pub fn poll_spin(&self) -> Option<TaskPtr> {
        if let Some(task) = self.try_poll() {
            return Some(task);
        }
        let budget = self.spin_budget();
        if budget.is_zero() || !self.idle() {
            return self.try_poll();
        }
        self.spinners.fetch_add(1, Ordering::SeqCst);
        let hit = if self.poll_gate.yields() {
            std::thread::yield_now();
            !self.idle()
        } else {
            spin_until(budget, || !self.idle())
        };
        self.spinners.fetch_sub(1, Ordering::SeqCst);
        self.poll_gate.record(hit);
        self.try_poll()
    }

    /// Refuses new tasks; pollers drain what is queued, then get `None`.
    pub fn finish(&self) {
        let mut inner = self.lock();
        inner.finished = true;
        self.finished.store(true, Ordering::Release);
        drop(inner);
        self.ready_cond.notify_all();
        self.ready.notify();
        self.free_garbage();
    }

    /// Hands an answer's buffer (malloc()ed by a runtime thread, at least
    /// a pointer wide) to be freed by a runtime thread of this queue rather
    /// than by nginx's. glibc puts a freed block in the freeing thread's
    /// cache, so a block freed on a runtime thread is that thread's next
    /// answer buffer, with no lock taken. Freed on nginx's thread, every
    /// answer took the runtime arena's lock twice (its malloc, our free),
    /// and under load the two threads met there: futex waits and wakes on
    /// both sides.
    ///
    /// # Safety
    ///
    /// `p` is a live block from malloc() with at least 8 usable bytes, and
    /// nothing else will use or free it.
    pub unsafe fn free_later(&self, p: *mut c_void) {
        let mut head = self.garbage.load(Ordering::Relaxed);
        loop {
            // SAFETY: the block is ours (caller's contract) and has room
            // for the link; unaligned, as a runtime's block may be.
            unsafe { p.cast::<*mut c_void>().write_unaligned(head) };
            match self
                .garbage
                .compare_exchange_weak(head, p, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }

    /// Frees the buffers `free_later` got: runtime threads call it as they
    /// answer and before they sleep.
    pub fn free_garbage(&self) {
        if self.garbage.load(Ordering::Relaxed).is_null() {
            return;
        }
        let mut p = self.garbage.swap(std::ptr::null_mut(), Ordering::Acquire);
        while !p.is_null() {
            // SAFETY: every block on the stack came through `free_later`,
            // with the next block's address in its first word; taking the
            // whole stack at once makes each block ours alone, freed once.
            let next = unsafe { p.cast::<*mut c_void>().read_unaligned() };
            // SAFETY: see above: a malloc()ed block, freed exactly once.
            unsafe { libc::free(p) };
            p = next;
        }
    }

    /// How many times `post` signalled a sleeping poller.
    pub fn signals(&self) -> usize {
        self.signals.load(Ordering::Relaxed)
    }

    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    fn task(id: usize) -> TaskPtr {
        TaskPtr::new(&NO_QUEUE, None, id as f64, std::ptr::null(), 0, None).unwrap()
    }

    static NO_QUEUE: std::sync::LazyLock<TaskQueue> =
        std::sync::LazyLock::new(|| TaskQueue::new(1, Duration::ZERO, Duration::ZERO));

    #[test]
    fn a_poller_on_the_callers_cpu_moves_off_it_and_spins_again() {
        use crate::spin::{cpus, current_cpu};
        std::thread::spawn(|| {
            let q = TaskQueue::new(8, Duration::from_micros(200), Duration::ZERO);
            let own = cpus::allowed();
            assert!(own.len() >= 2, "this test needs 2 CPUs, has {own:?}");
            let c = own[0];
            // the caller posts from CPU c ...
            cpus::pin(&[c]);
            q.post(task(1)).unwrap();
            // ... and this poller runs there too, its spins having missed
            cpus::pin(&own);
            assert_eq!(current_cpu(), c as i32);
            for _ in 0..64 {
                q.poll_gate.record(false);
            }
            assert!(q.poll_gate.budget().is_zero(), "gate closed by misses");
            let moved = crate::stats::snapshot()[10];
            q.poll().unwrap().free();
            assert_ne!(current_cpu(), c as i32, "moved off the caller's CPU");
            assert!(!q.poll_gate.budget().is_zero(), "gate open again");
            assert!(crate::stats::snapshot()[10] > moved, "counted");
            assert_eq!(cpus::allowed(), own);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_post_just_after_a_pollers_own_answer_counts_on_it_coming_back() {
        // One round: a poller thread (asleep in poll) takes a task and
        // answers it while the caller spins for the answer, as a loop of
        // calls does; then the caller posts the next task at once. A queue
        // per round: its caller gate spins its whole second for the first
        // answer (none observed yet), however slowly the poller wakes.
        // Pollers never spin: only a returning poller makes post say yes.
        let round = |answered_by_taker: bool| {
            let q = TaskQueue::new(8, Duration::ZERO, Duration::from_secs(1));
            let on_q = |id| TaskPtr::new(&q, None, id, std::ptr::null(), 0, None).unwrap();
            std::thread::scope(|s| {
                let poller = s.spawn(|| {
                    let t = q.poll().unwrap();
                    if answered_by_taker {
                        t.respond(0, std::ptr::null_mut(), 0);
                    } else {
                        // handed to another thread to answer
                        s.spawn(move || t.respond(0, std::ptr::null_mut(), 0));
                    }
                });
                let t = on_q(1.0);
                assert!(!q.post(t).unwrap(), "nobody spins, nobody just answered");
                t.set_poller_spinning(true);
                assert!(t.wait(true), "answered within the caller's spin");
                t.free();
                let next = on_q(2.0);
                let returning = q.post(next).unwrap();
                poller.join().unwrap();
                q.poll().unwrap().free();
                next.free();
                returning
            })
        };
        // (a caller preempted for RETURNING between answer and post misses
        // it: one round of many must see it)
        assert!(
            (0..50).any(|_| round(true)),
            "the thread that took the call answered it: it is coming back"
        );
        assert!(
            !(0..5).any(|_| round(false)),
            "answered by a thread that did not take it: nobody is coming back"
        );
    }

    #[test]
    fn full_queue_refuses_at_once_and_finished_queue_refuses_always() {
        let q = TaskQueue::new(2, Duration::ZERO, Duration::ZERO);
        q.post(task(1)).unwrap();
        q.post(task(2)).unwrap();
        let extra = task(3);
        assert!(matches!(q.post(extra), Err(Error::QueueFull { max: 2 })));
        extra.free();
        q.finish();
        let late = task(4);
        assert!(matches!(q.post(late), Err(Error::Finished)));
        late.free();
        // queued tasks are still served after finish, then None forever
        q.poll().unwrap().free();
        q.poll().unwrap().free();
        assert!(q.poll().is_none());
        assert!(q.poll().is_none());
    }

    #[test]
    fn many_producers_and_consumers_see_each_task_exactly_once() {
        const PRODUCERS: usize = 4;
        const CONSUMERS: usize = 4;
        const PER_PRODUCER: usize = 20_000;
        let q = Arc::new(TaskQueue::new(
            64,
            Duration::from_micros(20),
            Duration::ZERO,
        ));
        let consumers: Vec<_> = (0..CONSUMERS)
            .map(|_| {
                let q = q.clone();
                std::thread::spawn(move || {
                    let mut seen = Vec::new();
                    while let Some(t) = q.poll() {
                        seen.push(t.id() as usize);
                        t.free();
                    }
                    seen
                })
            })
            .collect();
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for i in 0..PER_PRODUCER {
                        let t = task(p * PER_PRODUCER + i);
                        // bounded retry on a full queue: consumers drain it
                        let mut tries = 0;
                        loop {
                            match q.post(t) {
                                Ok(_) => break,
                                Err(Error::QueueFull { .. }) => {
                                    tries += 1;
                                    assert!(tries < 10_000_000, "consumers stalled");
                                    std::thread::yield_now();
                                }
                                Err(e) => panic!("{e}"),
                            }
                        }
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        q.finish();
        let mut all = HashSet::new();
        let mut total = 0;
        for c in consumers {
            for id in c.join().unwrap() {
                total += 1;
                assert!(all.insert(id), "task {id} polled twice");
            }
        }
        assert_eq!(total, PRODUCERS * PER_PRODUCER);
    }

    #[test]
    fn a_burst_of_posts_signals_a_sleeping_poller_once_not_once_per_post() {
        let q = Arc::new(TaskQueue::new(256, Duration::ZERO, Duration::ZERO));
        let poller = counting_pollers(&q, 1).pop().unwrap();
        // the poller is asleep on the condition variable
        assert!(crate::spin::spin_until(Duration::from_secs(5), || q
            .lock()
            .sleepers
            == 1));
        for i in 0..100 {
            q.post(task(i)).unwrap();
        }
        // The woken poller takes the lock only once it gets a CPU: until
        // then every post used to signal again (100 signals when it lagged
        // behind all 100 posts). Now each sleep is signalled at most once,
        // however the poller and the posts interleave.
        let signals = q.signals();
        let sleeps = q.lock().sleeps;
        assert!(
            signals >= 1 && signals <= sleeps,
            "{signals} signals for {sleeps} sleeps (100 posts)"
        );
        q.finish();
        assert_eq!(poller.join().unwrap(), 100);
    }

    /// `n` threads that poll `q` until it is finished, freeing each task;
    /// each returns how many it took.
    fn counting_pollers(q: &Arc<TaskQueue>, n: usize) -> Vec<std::thread::JoinHandle<usize>> {
        (0..n)
            .map(|_| {
                let q = q.clone();
                std::thread::spawn(move || {
                    let mut n = 0;
                    while let Some(t) = q.poll() {
                        t.free();
                        n += 1;
                    }
                    n
                })
            })
            .collect()
    }

    /// Waits until `n` pollers sleep on the queue.
    fn wait_sleepers(q: &TaskQueue, n: usize) {
        let t0 = Instant::now();
        while q.lock().sleepers < n {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "pollers never slept"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn deferred_posts_wake_nobody_until_the_flush_wakes_one_sleeper() {
        // a poll budget, to see that deferred posts turn spinning off
        let mut q = TaskQueue::new(256, Duration::from_millis(200), Duration::ZERO);
        // however slow this machine is, the batch is taken while lazy
        q.lazy_for_ns = 60_000_000_000;
        let q = Arc::new(q);
        let pollers = counting_pollers(&q, 2);
        // the pollers start spinning (nothing deferred yet); a spinner
        // takes task 0, and from then on the queue is lazy: they sleep
        q.post_deferred(task(0)).unwrap();
        q.flush();
        wait_sleepers(&q, 2);
        let before = q.signals();
        for i in 1..=100 {
            q.post_deferred(task(i)).unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(q.len(), 100, "nobody woke for deferred posts");
        assert_eq!(q.signals(), before, "deferred posts signal no one");
        let chained = q.chained.load(Ordering::Relaxed);
        q.flush();
        let t0 = Instant::now();
        while !q.is_empty() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the batch was not taken"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // lazy: both sleep again at once rather than spin their 200 ms
        let t0 = Instant::now();
        wait_sleepers(&q, 2);
        assert!(
            t0.elapsed() < Duration::from_millis(150),
            "pollers spun under deferred posts"
        );
        // every signal since the posts: the flush's, and those pollers sent
        // each other passing the batch on
        let flushed = q.signals() - before - (q.chained.load(Ordering::Relaxed) - chained);
        assert_eq!(flushed, 1, "the flush wakes one sleeper, not one per task");
        q.finish();
        let served: usize = pollers.into_iter().map(|p| p.join().unwrap()).sum();
        assert_eq!(served, 101);
    }

    #[test]
    fn finish_while_consumers_block_releases_them_all() {
        let q = Arc::new(TaskQueue::new(8, Duration::ZERO, Duration::ZERO));
        let consumers: Vec<_> = (0..6)
            .map(|_| {
                let q = q.clone();
                std::thread::spawn(move || q.poll().map(|t| t.free()).is_none())
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        q.finish();
        for c in consumers {
            assert!(
                c.join().unwrap(),
                "a blocked poller must get None on finish"
            );
        }
    }

    fn readable(fd: i32) -> bool {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no timeout.
        unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
    }

    fn reset(fd: i32) {
        let mut v = 0u64;
        // SAFETY: reads 8 bytes into a local.
        unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
    }

    #[test]
    fn ready_fd_wakes_an_armed_loop_once_per_burst_and_on_finish() {
        let q = TaskQueue::new(16, Duration::ZERO, Duration::ZERO);
        let fd = q.ready.fd().unwrap();
        assert!(!readable(fd));
        // not armed: posts do not write
        q.post(task(1)).unwrap();
        assert!(!readable(fd));
        assert_eq!(q.arm(), Some(1), "a task waits: do not sleep");
        q.try_poll().unwrap().free();
        assert_eq!(q.arm(), Some(0), "empty: wait on the fd");
        q.post(task(2)).unwrap();
        q.post(task(3)).unwrap();
        assert!(readable(fd));
        reset(fd);
        q.try_poll().unwrap().free();
        q.try_poll().unwrap().free();
        assert_eq!(q.arm(), Some(0));
        q.finish();
        assert!(readable(fd), "finish wakes the loop");
        assert_eq!(q.arm(), None, "finished and empty: stop");
    }

    #[test]
    fn a_burst_wakes_a_sleeping_poller_while_another_spins_so_slow_tasks_run_in_parallel() {
        const WORK: Duration = Duration::from_millis(500);
        let q = Arc::new(TaskQueue::new(
            16,
            Duration::from_millis(400),
            Duration::ZERO,
        ));
        let pollers: Vec<_> = (0..2)
            .map(|_| {
                let q = q.clone();
                std::thread::spawn(move || {
                    while let Some(t) = q.poll() {
                        std::thread::sleep(WORK);
                        t.free();
                    }
                })
            })
            .collect();
        // both pollers spin out their budget and sleep; one task wakes one
        // of them, which works, then spins again while the other sleeps
        std::thread::sleep(Duration::from_millis(450));
        q.post(task(0)).unwrap();
        std::thread::sleep(WORK + Duration::from_millis(50));
        // now: one spinner, one sleeper. The first task of the burst is the
        // spinner's; the second must wake the sleeper.
        let t0 = Instant::now();
        q.post(task(1)).unwrap();
        q.post(task(2)).unwrap();
        while !q.is_empty() {
            std::thread::yield_now();
        }
        q.finish();
        for p in pollers {
            p.join().unwrap();
        }
        let took = t0.elapsed();
        assert!(
            took < WORK * 8 / 5,
            "the burst ran one task after the other: {took:?}"
        );
    }

    #[test]
    fn a_flushed_batch_of_slow_tasks_reaches_every_sleeper_through_the_first_one_woken() {
        const WORK: Duration = Duration::from_millis(300);
        let q = Arc::new(TaskQueue::new(16, Duration::ZERO, Duration::ZERO));
        let pollers: Vec<_> = (0..2)
            .map(|_| {
                let q = q.clone();
                std::thread::spawn(move || {
                    let mut n = 0;
                    while let Some(t) = q.poll() {
                        std::thread::sleep(WORK);
                        t.free();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        wait_sleepers(&q, 2);
        for i in 0..2 {
            q.post_deferred(task(i)).unwrap();
        }
        let before = q.signals();
        q.flush();
        // the one woken takes a task and, seeing one more and a sleeper,
        // wakes the other before it works: both run at once
        let t0 = Instant::now();
        while !q.is_empty() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the batch was not taken"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // (finish's wake-ups are not counted in `signals`)
        q.finish();
        let served: Vec<usize> = pollers.into_iter().map(|p| p.join().unwrap()).collect();
        assert_eq!(served, vec![1, 1], "each poller took one of the two");
        assert_eq!(q.chained.load(Ordering::Relaxed), 1, "passed on once");
        assert_eq!(
            q.signals() - before,
            2,
            "the flush's one wake-up and the one passed on"
        );
    }

    #[test]
    fn a_post_hands_its_task_to_a_spinning_poller_without_the_lock() {
        let mut q = TaskQueue::new(16, Duration::ZERO, Duration::ZERO);
        // a poller that spins even if this machine has one CPU
        q.poll_gate = SpinGate::spinning(Duration::from_secs(20));
        let q = Arc::new(q);
        let poller = {
            let q = q.clone();
            std::thread::spawn(move || {
                q.poll().map(|t| {
                    let id = t.id();
                    t.free();
                    id
                })
            })
        };
        let t0 = Instant::now();
        while q.slot.load(Ordering::Relaxed) != SLOT_WAITING {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the poller never spun"
            );
            std::thread::yield_now();
        }
        // With the queue's lock held here, only the hand-off can get the
        // task to the poller: a post through the queue would block.
        let inner = q.lock();
        let poster = {
            let q = q.clone();
            std::thread::spawn(move || q.post(task(7)).unwrap())
        };
        let t0 = Instant::now();
        while !poller.is_finished() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the task was not handed over"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(inner);
        assert!(
            poster.join().unwrap(),
            "a handed-over task has a spinning poller"
        );
        assert_eq!(poller.join().unwrap(), Some(7.0));
        assert_eq!(q.slot.load(Ordering::Relaxed), SLOT_EMPTY);
        assert!(q.is_empty());
    }

    #[test]
    fn answer_buffers_handed_over_by_many_threads_are_freed_once_by_another() {
        const THREADS: usize = 4;
        const EACH: usize = 10_000;
        let q = Arc::new(TaskQueue::new(1, Duration::ZERO, Duration::ZERO));
        let done = Arc::new(AtomicBool::new(false));
        let collector = {
            let (q, done) = (q.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Acquire) {
                    q.free_garbage();
                }
            })
        };
        let posters: Vec<_> = (0..THREADS)
            .map(|i| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for n in 0..EACH {
                        // SAFETY: a fresh malloc()ed block of 8 + (0..64)
                        // bytes, given away at once.
                        unsafe {
                            let p = libc::malloc(8 + (i * EACH + n) % 64);
                            assert!(!p.is_null());
                            q.free_later(p);
                        }
                    }
                })
            })
            .collect();
        for p in posters {
            p.join().unwrap();
        }
        done.store(true, Ordering::Release);
        collector.join().unwrap();
        // (glibc aborts the process on a block freed twice)
        q.free_garbage();
        assert!(q.garbage.load(Ordering::Relaxed).is_null());
        // once finished, the queue frees what is left
        // SAFETY: as above.
        unsafe { q.free_later(libc::malloc(16)) };
        q.finish();
        assert!(q.garbage.load(Ordering::Relaxed).is_null());
    }

    #[test]
    fn finish_while_busy_serves_every_queued_task_first() {
        let q = Arc::new(TaskQueue::new(
            10_000,
            Duration::from_micros(10),
            Duration::ZERO,
        ));
        for i in 0..5_000 {
            q.post(task(i)).unwrap();
        }
        let consumers = counting_pollers(&q, 3);
        q.finish();
        let served: usize = consumers.into_iter().map(|c| c.join().unwrap()).sum();
        assert_eq!(served, 5_000);
        assert!(q.is_empty());
    }

    #[test]
    fn poll_spin_takes_a_task_posted_while_it_spins_counts_as_a_spinner_and_never_blocks() {
        let q = Arc::new(TaskQueue::new(
            16,
            Duration::from_millis(300),
            Duration::ZERO,
        ));
        // nothing comes: back within about the budget, with nothing
        let t0 = Instant::now();
        assert!(q.poll_spin().is_none());
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        // a post during the spin is taken, and the post saw a spinner (on
        // one CPU the gate yields instead of spinning: nothing to see)
        if q.poll_gate.yields() {
            return;
        }
        let spinner = {
            let q = q.clone();
            std::thread::spawn(move || q.poll_spin().map(TaskPtr::free).is_some())
        };
        while q.spinners.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        assert!(
            q.post(task(1)).unwrap(),
            "the post must see a spinning poller"
        );
        assert!(spinner.join().unwrap(), "the spinning poller took the task");
        q.finish();
        assert!(q.poll_spin().is_none(), "finished: nothing, at once");
    }
}
