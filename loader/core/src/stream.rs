//! Streaming answers: a call answered in chunks before its final answer.
//!
//! Every task slot carries a [`Stream`]: the chunks a runtime sent with
//! `resty_ffi_respond_chunk` and not yet read, and the flags both sides
//! use to wait for each other. It serves two kinds of call:
//!
//! - a *stream* (`rt:__stream(req)` in Lua, posted with a window): the
//!   reader takes chunks one by one while the runtime produces them. A
//!   producer beyond the window (unread bytes or chunks) waits: blocking
//!   ([`respond_chunk`] with `block`) or told "full" (non-blocking, for event
//!   loops, which then wait for their queue's space fd). A chunk that finds
//!   the reader waiting pushes a *notice* on the reader's completion
//!   channel, so the dispatcher resumes it; the final answer
//!   (`ngx_http_lua_ffi_respond`) travels as for any call, after every
//!   notice of the stream (same channel, FIFO).
//! - a *plain call* to a runtime that streams: chunks accumulate (no
//!   window: nobody reads them before the end) and the final answer
//!   becomes the chunks and the final bytes concatenated, so one streaming
//!   handler serves both kinds of call.
//!
//! Cancellation: the reader closing the stream, a call timing out, or the
//! Lua VM going away marks the task cancelled. Chunks queued are freed at
//! once, a waiting producer wakes, and every later chunk is refused with 1,
//! which tells the producer to stop and end the task as usual. The task
//! itself lives until that final answer (a runtime may still read its
//! request), like any call that timed out.
//!
//! Safety against stale handles: the state names the call it belongs to
//! (`owner`, the slot word while that call is live), set when the call is
//! posted and checked under the lock by every runtime-side operation, so a
//! chunk for a call that has ended never lands in the slot's next call.
//! Slots are never freed, so a stale handle only ever touches valid memory.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Default window of a stream: unread bytes and chunks beyond which a
/// producer waits.
pub const WINDOW_BYTES: usize = 1 << 20;
pub const WINDOW_CHUNKS: usize = 64;

/// How often a blocked producer looks again even without a signal (so a
/// reader that vanished without a word still frees it eventually).
const RECHECK: Duration = Duration::from_millis(100);

/// What a chunk offered by a runtime met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queued (or accumulated); the runtime may go on.
    Taken,
    /// Nobody waits any more: stop producing, then end the task.
    Cancelled,
    /// The window is full and the offer did not block: wait for the
    /// queue's space fd, then offer the same chunk again.
    Full,
    /// The handle names no live call.
    Stale,
}

#[derive(Default)]
struct State {
    /// The slot word of the call this state belongs to (0: none).
    owner: u64,
    /// Posted as a stream (read chunk by chunk) rather than a plain call.
    streaming: bool,
    chunks: VecDeque<Box<[u8]>>,
    bytes: usize,
    window_bytes: usize,
    window_chunks: usize,
    /// The chunks last handed to the reader: their bytes stay valid until
    /// the reader's next call.
    current: Vec<Box<[u8]>>,
    /// The reader found nothing and waits for a notice.
    reader_waiting: bool,
    /// A producer found the window full (blocked, or told `Full`).
    producer_waiting: bool,
}

impl State {
    fn room(&self) -> bool {
        self.bytes < self.window_bytes && self.chunks.len() < self.window_chunks
    }

    /// Whether a producer that waited for room should be woken: only once
    /// the reader has drained half the window, so a fast producer refills
    /// it in a burst instead of being woken (a futex wake, microseconds)
    /// for every chunk read.
    fn low_water(&self) -> bool {
        self.bytes <= self.window_bytes / 2 && self.chunks.len() <= self.window_chunks / 2
    }

    fn clear(&mut self) {
        self.chunks.clear();
        self.bytes = 0;
        self.current.clear();
        self.reader_waiting = false;
    }
}

/// The streaming side of one task slot (see the module doc).
#[derive(Default)]
pub struct Stream {
    state: Mutex<State>,
    space: Condvar,
    /// Nobody waits for this call's answer any more.
    cancelled: AtomicBool,
    /// Chunks were offered to this call (so a plain call's final answer
    /// must be concatenated, and a stream's state cleared on free).
    used: AtomicBool,
    /// The call is a stream (mirrors the state's flag, read without it).
    streaming: AtomicBool,
}

impl Stream {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new call takes the slot: `owner` is its live slot word; `window`
    /// is `Some((bytes, chunks))` for a stream, None for a plain call.
    pub fn reset(&self, owner: u64, window: Option<(usize, usize)>) {
        let mut st = self.lock();
        st.clear();
        st.owner = owner;
        st.streaming = window.is_some();
        let (b, c) = window.unwrap_or((usize::MAX, usize::MAX));
        st.window_bytes = b.max(1);
        st.window_chunks = c.max(1);
        st.producer_waiting = false;
        self.cancelled.store(false, Ordering::Release);
        self.used.store(window.is_some(), Ordering::Release);
        self.streaming.store(window.is_some(), Ordering::Release);
    }

    /// Whether the call is a stream.
    pub fn is_streaming(&self) -> bool {
        self.streaming.load(Ordering::Acquire)
    }

    /// Whether chunks were offered (or the call is a stream).
    pub fn used(&self) -> bool {
        self.used.load(Ordering::Acquire)
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// A runtime's chunk for the call whose live slot word is `owner`.
    /// `then` runs under the lock when the chunk was queued for a reader
    /// that waits (it pushes the notice). With `block`, waits for window
    /// room; without, answers [`Offer::Full`] and marks the producer
    /// waiting, so the reader signals the queue's space fd when it reads.
    pub fn offer(&self, owner: u64, data: &[u8], block: bool, then: impl FnOnce()) -> Offer {
        let mut st = self.lock();
        loop {
            if st.owner != owner {
                return Offer::Stale;
            }
            if self.is_cancelled() {
                return Offer::Cancelled;
            }
            if !st.streaming || st.room() {
                break;
            }
            st.producer_waiting = true;
            if !block {
                return Offer::Full;
            }
            st = self
                .space
                .wait_timeout(st, RECHECK)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        self.used.store(true, Ordering::Release);
        if data.is_empty() {
            return Offer::Taken;
        }
        st.bytes += data.len();
        st.chunks.push_back(data.into());
        if st.reader_waiting {
            st.reader_waiting = false;
            then();
        }
        Offer::Taken
    }

    /// Moves up to `out.len()` queued chunks to the reader: their bytes
    /// stay valid until the reader's next call on this stream. Returns how
    /// many; with none queued, the reader is marked waiting (the next chunk
    /// pushes a notice). The flag says a producer waited for room that is
    /// now there (signal the space fd).
    pub fn take(&self, out: &mut [(*const u8, usize)]) -> (usize, bool) {
        let mut st = self.lock();
        let st = &mut *st;
        st.current.clear();
        let n = out.len().min(st.chunks.len());
        if n == 0 {
            st.reader_waiting = true;
            return (0, false);
        }
        st.current.extend(st.chunks.drain(..n));
        for (o, c) in out.iter_mut().zip(&st.current) {
            *o = (c.as_ptr(), c.len());
            st.bytes -= c.len();
        }
        let woke = st.producer_waiting && st.low_water();
        if woke {
            st.producer_waiting = false;
            self.space.notify_all();
        }
        (n, woke)
    }

    /// One chunk (see [`take`](Self::take)), for tests.
    #[cfg(test)]
    fn next(&self) -> (Option<(*const u8, usize)>, bool) {
        let mut one = [(std::ptr::null(), 0)];
        let (n, woke) = self.take(&mut one);
        ((n == 1).then_some(one[0]), woke)
    }

    /// Nobody waits any more: frees the queued chunks and wakes a waiting
    /// producer. Returns whether a producer was waiting (signal the space
    /// fd). Idempotent.
    pub fn cancel(&self) -> bool {
        self.cancelled.store(true, Ordering::Release);
        let mut st = self.lock();
        st.clear();
        let woke = std::mem::take(&mut st.producer_waiting);
        self.space.notify_all();
        woke
    }

    /// The chunks of plain call `owner`, concatenated, taken out of the
    /// state (nothing if the state belongs to another call).
    pub fn take_all(&self, owner: u64) -> Vec<u8> {
        let mut st = self.lock();
        if st.owner != owner {
            return Vec::new();
        }
        let mut all = Vec::with_capacity(st.bytes);
        for c in st.chunks.drain(..) {
            all.extend_from_slice(&c);
        }
        st.bytes = 0;
        all
    }

    /// The call ended and its task is being freed: drop what is left.
    pub fn release(&self) {
        if self.used() {
            let mut st = self.lock();
            st.clear();
            st.owner = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn stream(window: Option<(usize, usize)>) -> Arc<Stream> {
        let s = Arc::new(Stream::default());
        s.reset(7, window);
        s
    }

    #[test]
    fn chunks_come_out_in_order_and_a_waiting_reader_is_notified_once() {
        let s = stream(Some((1 << 20, 64)));
        assert!(s.next().0.is_none(), "nothing yet: the reader now waits");
        let mut notices = 0;
        assert_eq!(s.offer(7, b"one", true, || notices += 1), Offer::Taken);
        assert_eq!(s.offer(7, b"two", true, || notices += 1), Offer::Taken);
        assert_eq!(notices, 1, "one notice wakes the reader for both");
        for want in [&b"one"[..], b"two"] {
            let (p, n) = s.next().0.unwrap();
            // SAFETY: valid until the next call on the stream.
            assert_eq!(unsafe { std::slice::from_raw_parts(p, n) }, want);
        }
        assert!(s.next().0.is_none());
    }

    #[test]
    fn a_producer_beyond_the_window_waits_until_the_reader_reads() {
        let s = stream(Some((10, 2)));
        assert_eq!(s.offer(7, b"aaaa", true, || {}), Offer::Taken);
        assert_eq!(s.offer(7, b"bbbb", true, || {}), Offer::Taken);
        assert_eq!(
            s.offer(7, b"cccc", false, || {}),
            Offer::Full,
            "2 chunks: full"
        );
        let p = {
            let s = s.clone();
            std::thread::spawn(move || s.offer(7, b"cccc", true, || {}))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!p.is_finished(), "the producer must wait for room");
        let (_, woke) = s.next();
        assert!(woke, "reading drained half the window: wake the producer");
        assert_eq!(p.join().unwrap(), Offer::Taken);
    }

    #[test]
    fn cancel_frees_chunks_wakes_the_producer_and_refuses_more() {
        let s = stream(Some((4, 64)));
        assert_eq!(s.offer(7, b"aaaa", true, || {}), Offer::Taken);
        let p = {
            let s = s.clone();
            std::thread::spawn(move || s.offer(7, b"bbbb", true, || {}))
        };
        std::thread::sleep(Duration::from_millis(30));
        assert!(s.cancel(), "the producer was waiting");
        assert_eq!(p.join().unwrap(), Offer::Cancelled);
        assert_eq!(s.offer(7, b"c", true, || {}), Offer::Cancelled);
        assert!(s.next().0.is_none(), "queued chunks were freed");
    }

    #[test]
    fn plain_calls_accumulate_without_a_window_and_stale_owners_are_refused() {
        let s = stream(None);
        for _ in 0..1000 {
            assert_eq!(
                s.offer(7, b"xy", false, || panic!("no reader")),
                Offer::Taken
            );
        }
        assert_eq!(s.offer(8, b"other call", true, || {}), Offer::Stale);
        assert_eq!(s.take_all(8).len(), 0, "another call's chunks");
        assert_eq!(s.take_all(7).len(), 2000);
        s.release();
        assert_eq!(s.offer(7, b"late", true, || {}), Offer::Stale);
    }
}
