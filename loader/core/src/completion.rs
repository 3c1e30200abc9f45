//! Completion channels: where answers to parked calls wait for the nginx
//! side, one channel per Lua VM.
//!
//! A worker normally has one Lua VM, so one channel. With
//! `lua_code_cache off` every request gets a VM of its own, with its own
//! call ids and waiters: each VM opens its own channel, and an answer goes
//! to the channel of the VM that posted the call and nowhere else. When a
//! VM goes away its channel is closed: answers still queued, and those that
//! arrive later, are freed by the core.
//!
//! Channels are never freed: a closed one is kept for the next VM that
//! opens one, under a new generation. A task remembers its channel and the
//! generation it was posted under, so an answer for a closed (or reused)
//! channel is recognised and freed, and no reference count is touched on
//! the call path (runtime threads and the worker would fight over it).
//!
//! Runtime threads push answered tasks ([`Channel::push`]); the VM's
//! dispatcher drains them in batches ([`Channel::drain`]). The dispatcher
//! announces it is about to sleep with [`Channel::prepare_sleep`]; a push
//! that finds it asleep writes one byte to the channel's wake socket (see
//! [`crate::wake`]), so many answers fold into one wake and a busy
//! dispatcher is never woken at all.
//!
//! No lost wake-up: `prepare_sleep` sets "asleep" before it looks at the
//! queue under the lock, and `push` adds under the same lock before it
//! clears "asleep"; either the dispatcher sees the task or the pusher sees
//! "asleep". A spare byte only costs one empty drain. The wake byte is
//! written under the lock too, and the wake fd is closed only under it, so
//! a runtime thread never writes into an fd number nginx has reused.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::task::TaskPtr;
use crate::wake::{self, Listener};
use crate::Error;

/// Channels opened by this process (pid) so far. A channel opened in the
/// nginx master (`require` in init_by_lua) is inherited by every worker and
/// counts there as the worker's one VM.
static OPENED: Mutex<(i32, u64)> = Mutex::new((0, 0));

fn pid() -> i32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

struct Inner {
    /// Answered tasks, and notices (true) that a stream has a chunk.
    tasks: VecDeque<(TaskPtr, bool)>,
    closed: bool,
    /// Writable end of the wake socket (the accepted connection); -1: none.
    wake_fd: i32,
    listener: Option<Listener>,
}

pub struct Channel {
    inner: Mutex<Inner>,
    asleep: AtomicBool,
    /// The process that opened the channel.
    pid: AtomicI32,
    /// Bumped when the channel closes; written under `inner`'s lock.
    gen: AtomicU64,
}

/// Closed channels, ready for the next VM.
static SPARE: Mutex<Vec<&'static Channel>> = Mutex::new(Vec::new());

impl Channel {
    /// A channel for a new Lua VM: a closed one reused, or a new one.
    pub fn open() -> &'static Channel {
        let pid = pid();
        {
            let mut opened = OPENED.lock().unwrap_or_else(|e| e.into_inner());
            if opened.0 != pid {
                *opened = (pid, 0);
            }
            opened.1 += 1;
        }
        let spare = SPARE.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let ch: &'static Channel = spare.unwrap_or_else(|| {
            Box::leak(Box::new(Channel {
                inner: Mutex::new(Inner {
                    tasks: VecDeque::new(),
                    closed: true,
                    wake_fd: -1,
                    listener: None,
                }),
                asleep: AtomicBool::new(false),
                pid: AtomicI32::new(pid),
                gen: AtomicU64::new(0),
            }))
        });
        ch.pid.store(pid, Ordering::Relaxed);
        ch.asleep.store(false, Ordering::Relaxed);
        ch.lock().closed = false;
        ch
    }

    /// The generation posts are made under now.
    pub fn generation(&self) -> u64 {
        self.gen.load(Ordering::Acquire)
    }

    /// How many Lua VMs this process has had, as far as channels tell: the
    /// channels it opened, plus this one if it was inherited from the
    /// master. More than one means `lua_code_cache off`.
    pub fn vms(&self) -> u64 {
        let pid = pid();
        let opened = OPENED.lock().unwrap_or_else(|e| e.into_inner());
        let own = if opened.0 == pid { opened.1 } else { 0 };
        own + (self.pid.load(Ordering::Relaxed) != pid) as u64
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an answered task posted under generation `gen` for the
    /// dispatcher; wakes it if it sleeps. A task for a closed channel, or
    /// for an earlier generation of it, is freed at once.
    pub fn push(&self, task: TaskPtr, gen: u64) {
        let mut inner = self.lock();
        if inner.closed || self.gen.load(Ordering::Relaxed) != gen {
            drop(inner);
            task.free();
            return;
        }
        inner.tasks.push_back((task, false));
        if self.asleep.swap(false, Ordering::AcqRel) {
            crate::stats::wake_written();
            wake::notify(inner.wake_fd);
        }
    }

    /// Queues a notice that stream `task` (posted under generation `gen`)
    /// has a chunk for its reader; wakes the dispatcher if it sleeps. The
    /// task is not the notice's to free: its final answer comes after
    /// every notice, through [`push`](Self::push).
    pub fn push_notice(&self, task: TaskPtr, gen: u64) {
        let mut inner = self.lock();
        if inner.closed || self.gen.load(Ordering::Relaxed) != gen {
            return;
        }
        inner.tasks.push_back((task, true));
        if self.asleep.swap(false, Ordering::AcqRel) {
            crate::stats::wake_written();
            wake::notify(inner.wake_fd);
        }
    }

    /// Moves up to `out.len()` answered tasks into `out`; returns how many.
    /// A notice is the task's pointer with its lowest bit set (see
    /// [`TaskPtr::is_notice`]).
    pub fn drain(&self, out: &mut [*mut std::ffi::c_void]) -> usize {
        let mut inner = self.lock();
        let n = out.len().min(inner.tasks.len());
        for (slot, (task, notice)) in out.iter_mut().zip(inner.tasks.drain(..n)) {
            *slot = task.as_raw().map_addr(|a| a | notice as usize);
        }
        crate::stats::drained(n);
        n
    }

    /// Wakes the dispatcher if it sleeps (a log line for it is queued).
    pub fn wake_if_asleep(&self) {
        if self.asleep.swap(false, Ordering::AcqRel) {
            let inner = self.lock();
            crate::stats::wake_written();
            wake::notify(inner.wake_fd);
        }
    }

    /// Marks the dispatcher asleep unless answers (or, for the log sink,
    /// log lines) are waiting. Returns the number waiting: 0 means "sleep
    /// now, a push will wake you".
    pub fn prepare_sleep(&self) -> usize {
        self.asleep.store(true, Ordering::SeqCst);
        let n = self.lock().tasks.len() + crate::log::pending_for(self);
        if n > 0 {
            self.asleep.store(false, Ordering::SeqCst);
        }
        n
    }

    /// Starts listening for the dispatcher's wake connection; returns the
    /// socket path. Drops a listener that was never accepted.
    pub fn listen(&self) -> Result<String, Error> {
        let listener = wake::listen()?;
        let path = listener.path();
        let old = self.lock().listener.replace(listener);
        drop(old);
        Ok(path)
    }

    /// Accepts the dispatcher's connection (waiting at most a second),
    /// checks it comes from this process, and makes it the wake fd.
    pub fn accept(&self) -> Result<(), Error> {
        let listener = self
            .lock()
            .listener
            .take()
            .ok_or_else(|| Error::Wake("accept without listen".into()))?;
        let conn = listener.accept()?;
        let mut inner = self.lock();
        if inner.closed {
            wake::close_fd(conn);
        } else {
            let old = std::mem::replace(&mut inner.wake_fd, conn);
            wake::close_fd(old);
        }
        Ok(())
    }

    /// Writes a wake byte (the worker-exit timer uses it to stop the
    /// dispatcher).
    pub fn wake(&self) {
        wake::notify(self.lock().wake_fd);
    }

    /// Answers waiting now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().tasks.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The VM is gone: frees what waits and every answer that comes later,
    /// closes the wake socket, and keeps the channel for the next VM.
    pub fn close(&'static self) {
        let (tasks, fd, listener) = {
            let mut inner = self.lock();
            if inner.closed {
                return;
            }
            inner.closed = true;
            self.gen.fetch_add(1, Ordering::AcqRel);
            let fd = std::mem::replace(&mut inner.wake_fd, -1);
            (std::mem::take(&mut inner.tasks), fd, inner.listener.take())
        };
        wake::close_fd(fd);
        drop(listener);
        crate::log::detach(self);
        for (t, notice) in tasks {
            if !notice {
                t.free();
            }
        }
        SPARE.lock().unwrap_or_else(|e| e.into_inner()).push(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::TaskQueue;
    use std::time::Duration;

    static QUEUE: std::sync::LazyLock<TaskQueue> =
        std::sync::LazyLock::new(|| TaskQueue::new(8, Duration::ZERO, Duration::ZERO));

    #[test]
    fn answers_reach_the_channel_that_posted_and_a_closed_channel_frees_them() {
        let a = Channel::open();
        let b = Channel::open();
        assert!(b.vms() >= 2, "two channels: two VMs");
        let ta = TaskPtr::new(&QUEUE, Some(a), 1.0, std::ptr::null(), 0, None).unwrap();
        let tb = TaskPtr::new(&QUEUE, Some(b), 2.0, std::ptr::null(), 0, None).unwrap();
        assert!(!ta.wait(false) && !tb.wait(false), "both parked");
        ta.respond(0, std::ptr::null_mut(), 0);
        tb.respond(0, std::ptr::null_mut(), 0);
        let mut out = [std::ptr::null_mut(); 4];
        assert_eq!(a.drain(&mut out), 1);
        let got = TaskPtr::from_raw(out[0]).unwrap();
        assert_eq!(got.id(), 1.0);
        got.free();
        let late = TaskPtr::new(&QUEUE, Some(b), 3.0, std::ptr::null(), 0, None).unwrap();
        assert!(!late.wait(false));
        b.close();
        // (b may now serve another VM, under a new generation)
        late.respond(0, std::ptr::null_mut(), 0);
        assert!(b.is_empty(), "a late answer to a closed channel is freed");
        let again = Channel::open();
        let stale = TaskPtr::new(&QUEUE, Some(again), 4.0, std::ptr::null(), 0, None).unwrap();
        assert!(!stale.wait(false));
        again.close();
        let reused = Channel::open();
        stale.respond(0, std::ptr::null_mut(), 0);
        assert!(reused.is_empty(), "an answer from before a reuse is freed");
        reused.close();
        a.close();
    }
}
