//! A readiness fd for runtimes that run an event loop (asyncio, tokio,
//! epoll): an eventfd that becomes readable when tasks wait, so the loop can
//! wait on the queue itself instead of parking a thread in `poll` and
//! handing tasks over.
//!
//! Protocol (the same "armed" handshake as the completion queue's):
//! 1. the loop drains the queue with non-blocking polls;
//! 2. it arms the fd ([`ReadyFd::arm`] through the queue), which reports
//!    whether tasks arrived meanwhile; if none, it waits for the fd;
//! 3. a post that finds the fd armed disarms it and writes to it, so a burst
//!    of posts costs one write; finishing the queue always writes.
//!
//! The fd is created on first request and lives as long as the queue
//! (forever). Readiness may be spurious; a task is never missed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use crate::Error;

#[derive(Default)]
pub struct ReadyFd {
    fd: OnceLock<i32>,
    armed: AtomicBool,
}

impl ReadyFd {
    /// The eventfd, created on first call.
    pub fn fd(&self) -> Result<i32, Error> {
        if let Some(fd) = self.fd.get() {
            return Ok(*fd);
        }
        // SAFETY: eventfd has no memory arguments.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(Error::Wake(format!(
                "eventfd: {}",
                std::io::Error::last_os_error()
            )));
        }
        if self.fd.set(fd).is_err() {
            // another thread won the race: keep its fd, close ours
            // SAFETY: fd is ours and unused.
            unsafe { libc::close(fd) };
        }
        Ok(*self.fd.get().expect("set above"))
    }

    /// Marks the loop as about to wait on the fd.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Takes the armed mark back; true when it was still set (no write is
    /// coming for it).
    pub fn disarm(&self) -> bool {
        self.armed.swap(false, Ordering::AcqRel)
    }

    /// After a post: writes to the fd if the loop is waiting on it.
    pub fn notify_if_armed(&self) {
        if self.fd.get().is_some() && self.disarm() {
            self.notify();
        }
    }

    /// Makes the fd readable.
    pub fn notify(&self) {
        if let Some(&fd) = self.fd.get() {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a local; EAGAIN (counter full)
            // still leaves the fd readable, which is all a wake needs.
            unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
        }
    }
}
