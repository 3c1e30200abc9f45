//! One call in flight from Lua to a runtime, and the handle a runtime holds.
//!
//! Tasks live in a process-wide table of slots that is never freed: a slot
//! is taken when Lua posts a call and given back when the answer has been
//! read. Runtimes never see a slot's address. They get a *handle*: the
//! slot's index plus the slot's generation, which grows each time the slot
//! is reused. A handle therefore names one call for ever: a runtime that
//! answers twice, answers late (after the slot went to another call) or
//! answers a pointer it made up is detected, its response freed and ignored,
//! and no other request ever sees it. Because slots are never freed, even a
//! stale handle only ever touches valid memory.
//!
//! Who finishes a call is decided by one atomic, the task's state:
//!
//! - `PENDING -> DONE`: the runtime answered while the caller was still
//!   spinning; the caller reads the answer and frees the task.
//! - `PENDING -> PARKED`: the caller gave up spinning first. The runtime's
//!   answer then pushes the task on its caller's completion channel, and the
//!   dispatcher frees it after handing the answer to the waiting coroutine
//!   (or to nobody, if that call timed out: late answers are freed the same
//!   way). A channel that was closed (its Lua VM is gone) frees it at once.
//!
//! Whoever loses the compare-and-swap knows the other side's move, so every
//! task is freed exactly once. The slot's own word (generation + LIVE /
//! ANSWERED / FREE) makes sure only the first answer to a handle counts.

use std::cell::UnsafeCell;
use std::os::raw::{c_char, c_int};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use crossbeam_utils::CachePadded;

use crate::completion::Channel;
use crate::queue::TaskQueue;
use crate::spin::now_ns;
use crate::stats::Outcome;
use crate::stream::{Offer, Stream};

const PENDING: u32 = 0;
const DONE: u32 = 1;
const PARKED: u32 = 2;

/// Slot word, low bits: what the slot holds now (the generation is above).
const FREE: u64 = 0;
const LIVE: u64 = 1;
const ANSWERED: u64 = 2;

const CHUNK: usize = 4096;
/// At most `CHUNK * MAX_CHUNKS` (4 Mi) calls in flight per process; a post
/// beyond that fails like a full queue.
const MAX_CHUNKS: usize = 1024;

/// The runtime's answer: written once by `respond`, read after the state
/// change that publishes it.
struct Answer {
    rc: c_int,
    rsp: *mut c_char,
    rsp_len: c_int,
    /// When answered (`spin::now_ns`; 0: not yet), with `BY_POLLER` set
    /// when the thread that took the task from the queue answered it: a
    /// poller, on its way back to `poll` (see `TaskQueue::post`). A bit of
    /// this word rather than a field: a slot one field larger moved the
    /// bridge's round trip from 1.79 to 1.96 µs.
    answered_ns: u64,
}

/// See `Answer::answered_ns` (now_ns counts from process start: bit 63 is
/// free for 292 years).
const BY_POLLER: u64 = 1 << 63;

thread_local! {
    /// The task this thread last took from a queue (`mark_picked`). A hint
    /// only: a thread that answers a task another thread took (a Go
    /// goroutine moved to another OS thread, a Java stage completed
    /// elsewhere) is not counted as a poller coming back, and a slot
    /// reused since may match by chance; either costs at most one caller
    /// spin within its gate's budget.
    static PICKED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// What the caller sets when it posts; read by the runtime and the caller.
struct Call {
    id: f64,
    /// The queue the task was posted to: never freed, so always valid.
    queue: *const TaskQueue,
    /// Where a parked call's answer goes (the posting Lua VM's channel),
    /// and the channel's generation when the call was posted.
    channel: Option<(&'static Channel, u64)>,
    /// Borrowed request bytes: the Lua side keeps the string referenced until
    /// the task is freed (late answers included), so no copy is made.
    req: *const u8,
    req_len: c_int,
}

pub struct Slot {
    index: u32,
    /// generation << 32 | FREE / LIVE / ANSWERED. On a line of its own: the
    /// runtime thread claims it while the caller spins on `state`.
    word: CachePadded<AtomicU64>,
    state: AtomicU32,
    /// When a runtime thread took the task from the queue (0: not yet).
    picked_ns: AtomicU64,
    /// When the caller posted the call (for the latency histogram).
    posted_ns: AtomicU64,
    /// Whether a runtime thread was spinning in poll when the task was
    /// posted: only then can the caller expect an answer within a spin.
    poller_spinning: AtomicBool,
    call: UnsafeCell<Call>,
    answer: UnsafeCell<Answer>,
    /// Chunks of a streamed answer (see stream.rs).
    stream: Stream,
}

impl Slot {
    fn new(index: u32) -> Slot {
        Slot {
            index,
            word: CachePadded::new(AtomicU64::new(FREE)),
            state: AtomicU32::new(PENDING),
            picked_ns: AtomicU64::new(0),
            posted_ns: AtomicU64::new(0),
            poller_spinning: AtomicBool::new(false),
            call: UnsafeCell::new(Call {
                id: 0.0,
                queue: std::ptr::null(),
                channel: None,
                req: std::ptr::null(),
                req_len: 0,
            }),
            answer: UnsafeCell::new(Answer {
                rc: 0,
                rsp: std::ptr::null_mut(),
                rsp_len: 0,
                answered_ns: 0,
            }),
            stream: Stream::default(),
        }
    }
}

/// The slot table: chunks are allocated on demand and never freed.
static CHUNKS: [AtomicPtr<Slot>; MAX_CHUNKS] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; MAX_CHUNKS];

struct FreeList {
    free: Vec<u32>,
    /// Slots handed out so far (the next fresh index).
    next: u32,
}

static FREE_LIST: Mutex<FreeList> = Mutex::new(FreeList {
    free: Vec::new(),
    next: 0,
});

fn slot(index: u32) -> Option<&'static Slot> {
    let (c, i) = (index as usize / CHUNK, index as usize % CHUNK);
    let chunk = CHUNKS.get(c)?.load(Ordering::Acquire);
    if chunk.is_null() {
        return None;
    }
    // SAFETY: a published chunk holds CHUNK initialised slots and is never
    // freed; i < CHUNK.
    Some(unsafe { &*chunk.add(i) })
}

fn take_slot() -> Option<&'static Slot> {
    let mut list = FREE_LIST.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = list.free.pop() {
        return slot(i);
    }
    let index = list.next;
    if index as usize >= CHUNK * MAX_CHUNKS {
        return None;
    }
    let c = index as usize / CHUNK;
    if (index as usize).is_multiple_of(CHUNK) {
        let chunk: Box<[Slot]> = (0..CHUNK)
            .map(|i| Slot::new((c * CHUNK + i) as u32))
            .collect();
        CHUNKS[c].store(Box::leak(chunk).as_mut_ptr(), Ordering::Release);
    }
    list.next += 1;
    slot(index)
}

/// Answers that arrived for a handle that is not live, and were dropped.
static STRAY_ANSWERS: AtomicU64 = AtomicU64::new(0);

/// How many answers were dropped because their handle was not live.
pub fn stray_answers() -> u64 {
    STRAY_ANSWERS.load(Ordering::Relaxed)
}

/// An owned pointer to a live task (the Lua side's view of a call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskPtr(NonNull<Slot>);

// SAFETY: a task is handed from thread to thread, never shared for writing:
// the queue gives it to one runtime thread, whose `respond` publishes the
// answer with a release CAS that the reader acquires.
unsafe impl Send for TaskPtr {}

/// The answer as the caller reads it.
#[derive(Debug)]
pub enum Response {
    /// What the runtime answered. `rsp` is owned by the task until
    /// [`TaskPtr::free`]; may be null.
    Ok {
        rc: c_int,
        rsp: *const c_char,
        len: usize,
    },
    /// The runtime's answer breaks the ABI; the text says how.
    Bad(&'static std::ffi::CStr),
}

impl TaskPtr {
    /// Takes a slot for a call to `queue` borrowing `req[..req_len]` (which
    /// may be null). `queue` must live for the rest of the process.
    /// `window` makes the call a stream read chunk by chunk (unread bytes
    /// and chunks a producer may get ahead): such a task is parked from the
    /// start, as its caller reads it through the completion channel. None
    /// when 4 Mi calls are already in flight.
    pub fn new(
        queue: &TaskQueue,
        channel: Option<&'static Channel>,
        id: f64,
        req: *const u8,
        req_len: c_int,
        window: Option<(usize, usize)>,
    ) -> Option<TaskPtr> {
        let s = take_slot()?;
        // SAFETY: a FREE slot belongs to the thread that took it from the
        // free list; nobody else writes it until it is published as LIVE
        // (and then handed to a runtime through the queue's mutex).
        unsafe {
            *s.call.get() = Call {
                id,
                queue,
                channel: channel.map(|c| (c, c.generation())),
                req,
                req_len: if req.is_null() { 0 } else { req_len.max(0) },
            };
            *s.answer.get() = Answer {
                rc: 0,
                rsp: std::ptr::null_mut(),
                rsp_len: 0,
                answered_ns: 0,
            };
        }
        let state = if window.is_some() { PARKED } else { PENDING };
        s.state.store(state, Ordering::Relaxed);
        s.picked_ns.store(0, Ordering::Relaxed);
        s.posted_ns.store(now_ns(), Ordering::Relaxed);
        s.poller_spinning.store(false, Ordering::Relaxed);
        queue.stats.task_taken();
        let gen = s.word.load(Ordering::Relaxed) >> 32;
        s.stream.reset(gen << 32 | LIVE, window);
        s.word.store(gen << 32 | LIVE, Ordering::Release);
        Some(TaskPtr(NonNull::from(s)))
    }

    /// The Lua side's pointer back: null -> None. The Lua layer only passes
    /// pointers it got from `resty_ffi_post` or `resty_ffi_drain` (whose
    /// notices have the lowest bit set: slots are aligned, so it is free).
    pub fn from_raw(p: *mut std::ffi::c_void) -> Option<TaskPtr> {
        NonNull::new(p.map_addr(|a| a & !1) as *mut Slot).map(TaskPtr)
    }

    /// Whether a pointer from `resty_ffi_drain` is a stream's notice
    /// rather than a final answer.
    pub fn is_notice(p: *mut std::ffi::c_void) -> bool {
        p.addr() & 1 == 1
    }

    pub fn as_raw(self) -> *mut std::ffi::c_void {
        self.0.as_ptr().cast()
    }

    /// The opaque handle a runtime gets: an address in the reserved range
    /// of [`crate::handle`], naming the slot and its generation.
    pub fn handle(self) -> *mut std::ffi::c_void {
        let s = self.slot();
        let gen = s.word.load(Ordering::Relaxed) >> 32;
        crate::handle::encode(s.index, gen) as *mut std::ffi::c_void
    }

    /// Resolves a runtime's handle to its slot and the slot's word as it is
    /// while that handle's call is live and unanswered; None when the
    /// handle is not one, or its call is not live any more.
    fn resolve(handle: *mut std::ffi::c_void) -> Option<(&'static Slot, u64)> {
        let (index, gen_low) = crate::handle::decode(handle as usize)?;
        let s = slot(index)?;
        let word = s.word.load(Ordering::Acquire);
        (word & 0xffff_ffff == LIVE && crate::handle::same_generation(word >> 32, gen_low))
            .then_some((s, word))
    }

    /// The request of the live task behind a runtime's handle.
    pub fn request_of(handle: *mut std::ffi::c_void) -> Option<(*const u8, c_int)> {
        let (s, live) = Self::resolve(handle)?;
        if s.word.load(Ordering::Acquire) != live {
            return None;
        }
        // SAFETY: the slot is live under this generation; its call was
        // written before the LIVE word was published (Release/Acquire).
        let c = unsafe { &*s.call.get() };
        Some((c.req, c.req_len))
    }

    /// A runtime's answer to a handle: the first answer to a live handle is
    /// stored; any other (second, late, made-up) is freed, counted and
    /// logged (at most once a second), and false is returned.
    pub fn respond_to(
        handle: *mut std::ffi::c_void,
        rc: c_int,
        rsp: *mut c_char,
        rsp_len: c_int,
    ) -> bool {
        let claimed = Self::resolve(handle).and_then(|(s, live)| {
            s.word
                .compare_exchange(
                    live,
                    live - LIVE + ANSWERED,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .ok()
                .map(|_| (s, live))
        });
        match claimed {
            Some((s, live)) => {
                let t = TaskPtr(NonNull::from(s));
                // read before answering: once answered, the caller may free
                // the slot
                let queue = t.call().queue;
                if s.stream.used() && !t.is_stream() {
                    let (rsp, rsp_len) = concatenated(&s.stream, live, rc, rsp, rsp_len);
                    t.respond(rc, rsp, rsp_len);
                } else {
                    t.respond(rc, rsp, rsp_len);
                }
                // SAFETY: queues are never freed (queue.rs).
                unsafe { &*queue }.free_garbage();
                true
            }
            None => {
                if !rsp.is_null() {
                    // SAFETY: the response is ours per the ABI even when the
                    // handle is bad; free it rather than leak it.
                    unsafe { libc::free(rsp.cast()) };
                }
                let n = STRAY_ANSWERS.fetch_add(1, Ordering::Relaxed) + 1;
                if crate::log::every_second(&STRAY_LOGGED) {
                    crate::log::error(&format!(
                        "resty_ffi: a runtime answered a task that is not waiting for an answer \
                         (answered twice, answered after unload or a made-up pointer {handle:p}); \
                         the answer was freed and dropped ({n} so far)"
                    ));
                }
                false
            }
        }
    }

    fn slot(&self) -> &'static Slot {
        // SAFETY: slots are never freed; a TaskPtr points at one.
        unsafe { &*self.0.as_ptr() }
    }

    fn call(&self) -> &Call {
        // SAFETY: written only by `new`, before the task was published.
        unsafe { &*self.slot().call.get() }
    }

    fn queue(&self) -> &TaskQueue {
        // SAFETY: queues are never freed (queue.rs), so the pointer taken
        // from a live reference in `new` is valid for the process's life.
        unsafe { &*self.call().queue }
    }

    pub fn id(self) -> f64 {
        self.call().id
    }

    /// Stores the runtime's answer and finishes the task's trip. Called once
    /// per task (the slot word was claimed by `respond_to`, or a test owns
    /// the task).
    ///
    /// After this returns the runtime must not touch the task again: the
    /// caller may already have freed it.
    pub fn respond(self, rc: c_int, rsp: *mut c_char, rsp_len: c_int) {
        let s = self.slot();
        // SAFETY: only the one thread that claimed the answer writes it,
        // once; readers wait for the state change below.
        unsafe {
            *s.answer.get() = Answer {
                rc,
                rsp,
                rsp_len,
                answered_ns: now_ns()
                    | if PICKED.with(|p| p.get()) == self.0.as_ptr() as usize {
                        BY_POLLER
                    } else {
                        0
                    },
            };
        }
        if s.state
            .compare_exchange(PENDING, DONE, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            match self.call().channel {
                Some((ch, gen)) => ch.push(self, gen),
                None => self.free(),
            }
        }
    }

    /// Whether the call is a stream (posted with a window).
    pub fn is_stream(self) -> bool {
        self.slot().stream.is_streaming()
    }

    /// A runtime's chunk for the call behind `handle` (see stream.rs):
    /// copied and queued for the reader, or accumulated for a plain call.
    pub fn offer_chunk(handle: *mut std::ffi::c_void, data: &[u8], block: bool) -> Offer {
        let Some((s, live)) = Self::resolve(handle) else {
            return Offer::Stale;
        };
        let t = TaskPtr(NonNull::from(s));
        let channel = t.call().channel;
        s.stream.offer(live, data, block, || {
            if let Some((ch, gen)) = channel {
                ch.push_notice(t, gen);
            }
        })
    }

    /// The queue of the live call behind `handle`.
    pub fn queue_of(handle: *mut std::ffi::c_void) -> Option<(&'static TaskQueue, f64)> {
        let (s, _) = Self::resolve(handle)?;
        // SAFETY: the call was written before the slot went live.
        let c = unsafe { &*s.call.get() };
        // SAFETY: queues are never freed (queue.rs).
        Some((unsafe { &*c.queue }, c.id))
    }

    /// Whether nobody waits for the call behind `handle` any more: it was
    /// cancelled (closed, timed out, its VM gone) or has ended. None when
    /// `handle` is not a handle at all.
    pub fn cancelled_of(handle: *mut std::ffi::c_void) -> Option<bool> {
        let (index, gen_low) = crate::handle::decode(handle as usize)?;
        let s = slot(index)?;
        let word = s.word.load(Ordering::Acquire);
        let live =
            word & 0xffff_ffff == LIVE && crate::handle::same_generation(word >> 32, gen_low);
        Some(!live || s.stream.is_cancelled())
    }

    /// Up to `out.len()` chunks of a stream for its reader (valid until
    /// the reader's next call on it); 0 when none is queued yet (a notice
    /// comes with the next).
    pub fn take_chunks(self, out: &mut [(*const u8, usize)]) -> usize {
        let (n, woke) = self.slot().stream.take(out);
        if woke {
            self.queue().space.notify();
        }
        n
    }

    /// The caller stopped waiting (stream closed, call timed out): queued
    /// chunks are freed and the runtime is told by its next chunk or by
    /// `resty_ffi_task_cancelled`. The task stays until the final answer.
    /// The queue's space fd is signalled even when no producer waited for
    /// room: an event loop awaiting its next item (an async generator
    /// between tokens) learns of the cancellation from the fd too, without
    /// polling every task.
    pub fn cancel(self) {
        self.slot().stream.cancel();
        self.queue().space.notify();
    }

    /// When the task was made (`spin::now_ns`).
    pub fn posted_ns(self) -> u64 {
        self.slot().posted_ns.load(Ordering::Relaxed)
    }

    /// Notes that a runtime thread took the task (for its service time).
    pub fn mark_picked(self) {
        self.slot().picked_ns.store(now_ns(), Ordering::Relaxed);
        PICKED.with(|p| p.set(self.0.as_ptr() as usize));
    }

    /// Notes whether a poller was spinning when the task was posted.
    pub fn set_poller_spinning(self, spinning: bool) {
        self.slot()
            .poller_spinning
            .store(spinning, Ordering::Relaxed);
    }

    /// Waits for the answer, spinning within the queue's caller budget when
    /// `may_spin` and a runtime thread was spinning in poll when the task
    /// was posted (a sleeping runtime takes longer to wake than any spin is
    /// worth). Returns true when answered (the caller reads and frees the
    /// task), false when parked (the answer will come through the
    /// completion channel).
    pub fn wait(self, may_spin: bool) -> bool {
        let s = self.slot();
        if may_spin
            && s.poller_spinning.load(Ordering::Relaxed)
            && self
                .queue()
                .caller_gate
                .spin(|| s.state.load(Ordering::Acquire) == DONE)
        {
            return true;
        }
        let answered = s
            .state
            .compare_exchange(PENDING, PARKED, Ordering::AcqRel, Ordering::Acquire)
            .is_err();
        if !answered {
            self.queue().stats.parked();
        }
        answered
    }

    /// The answer; valid once `wait` returned true or the task came out of
    /// the completion channel. Lengths are checked against the size of the
    /// runtime's allocation, so a wrong length is an error, not a read past
    /// the buffer.
    pub fn response(self) -> Response {
        // SAFETY: the answer was published by the AcqRel CAS in `respond`
        // (observed by `wait`) or by the completion channel's mutex.
        let a = unsafe { &*self.slot().answer.get() };
        if a.rsp.is_null() {
            return Response::Ok {
                rc: a.rc,
                rsp: a.rsp,
                len: 0,
            };
        }
        // SAFETY: per the ABI rsp came from malloc() and is ours now.
        let size = unsafe { libc::malloc_usable_size(a.rsp.cast()) };
        let len = if a.rsp_len < 0 {
            return Response::Bad(c"the runtime answered a negative length");
        } else if a.rsp_len > 0 {
            if a.rsp_len as usize > size {
                return Response::Bad(
                    c"the runtime answered a length larger than its answer buffer",
                );
            }
            a.rsp_len as usize
        } else {
            // SAFETY: we read at most `size` bytes of the runtime's buffer.
            let n = unsafe { libc::strnlen(a.rsp, size) };
            if n == size && crate::log::every_second(&NO_NUL_LOGGED) {
                // lua-resty-ffi reads such answers anyway (runtimes do send
                // them, error texts especially): keep the runtime's rc and
                // bytes, bounded by its allocation, and say so.
                let line = format!(
                    "resty_ffi: a runtime answered length 0 (NUL-terminated) with no NUL in its \
                     {size}-byte buffer; the whole buffer was taken as the answer (rc {})",
                    a.rc
                );
                crate::log::log(crate::log::WARN, line.as_bytes());
            }
            n
        };
        Response::Ok {
            rc: a.rc,
            rsp: a.rsp,
            len,
        }
    }

    /// Frees the task and the runtime's response buffer, exactly once, and
    /// gives the slot back under a new generation. An answered task reports
    /// its service time (taken to answered) to its queue's caller gate.
    pub fn free(self) {
        self.free_as(None)
    }

    /// Like [`free`](Self::free), counting the call in its runtime's stats
    /// as ending with `outcome`, its latency from post to answer.
    pub fn free_as(self, outcome: Option<Outcome>) {
        let s = self.slot();
        // SAFETY: freeing means the answer was published (or never written,
        // answered_ns 0): see `response`. This consumes the last pointer to
        // the call, so taking its response is ours to do.
        let (rsp, answered_ns, by_poller) = unsafe {
            let a = &mut *s.answer.get();
            let rsp = std::mem::replace(&mut a.rsp, std::ptr::null_mut());
            (
                rsp,
                a.answered_ns & !BY_POLLER,
                a.answered_ns & BY_POLLER != 0,
            )
        };
        if by_poller {
            self.queue().poller_answered(answered_ns);
        }
        let stats = &self.queue().stats;
        stats.task_freed(s.state.load(Ordering::Acquire) == PARKED);
        if let Some(o) = outcome {
            let posted = s.posted_ns.load(Ordering::Relaxed);
            stats.finished(o, answered_ns.saturating_sub(posted));
        }
        let picked_ns = s.picked_ns.load(Ordering::Relaxed);
        if answered_ns != 0 && picked_ns != 0 {
            self.queue()
                .caller_gate
                .observe(answered_ns.saturating_sub(picked_ns));
        }
        if !rsp.is_null() {
            let queue = self.queue();
            // SAFETY: rsp was malloc()ed by the runtime and is ours since
            // respond; it was taken out of the slot above, so freed once.
            // A runtime thread frees it (`free_later`) when it has room for
            // the link (asked of malloc: a runtime's length may lie) and
            // the queue still has threads (unload, which collects the
            // garbage, runs on this same nginx thread).
            unsafe {
                if !queue.is_finished() && libc::malloc_usable_size(rsp.cast()) >= 8 {
                    queue.free_later(rsp.cast());
                } else {
                    libc::free(rsp.cast());
                }
            }
        }
        let gen = (s.word.load(Ordering::Relaxed) >> 32).wrapping_add(1) & 0xffff_ffff;
        s.word.store(gen << 32 | FREE, Ordering::Release);
        s.stream.release();
        FREE_LIST
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .free
            .push(s.index);
    }
}

/// The final answer of a plain call that was sent chunks: the chunks and
/// the final bytes in one malloc()ed, NUL-terminated buffer, freeing the
/// runtime's. An error answer (rc != 0) is its final bytes alone: chunks
/// before an error are not the answer.
fn concatenated(
    stream: &Stream,
    live: u64,
    rc: c_int,
    rsp: *mut c_char,
    rsp_len: c_int,
) -> (*mut c_char, c_int) {
    let mut all = stream.take_all(live);
    if rc != 0 {
        return (rsp, rsp_len);
    }
    if !rsp.is_null() {
        // SAFETY: per the ABI rsp came from malloc() and is ours; we read
        // at most its usable size (a NUL-terminated answer up to its NUL).
        unsafe {
            let size = libc::malloc_usable_size(rsp.cast());
            let n = match rsp_len {
                n if n > 0 => (n as usize).min(size),
                0 => libc::strnlen(rsp, size),
                _ => 0,
            };
            all.extend_from_slice(std::slice::from_raw_parts(rsp.cast::<u8>(), n));
            libc::free(rsp.cast());
        }
    }
    let Ok(len) = c_int::try_from(all.len()) else {
        let msg = b"resty_ffi: the streamed answer of a plain call exceeds 2 GiB\0";
        return (malloc_bytes(msg), 0);
    };
    all.push(0);
    (malloc_bytes(&all), len)
}

/// A malloc()ed copy of `bytes` (the core frees answers with free()).
fn malloc_bytes(bytes: &[u8]) -> *mut c_char {
    // SAFETY: a fresh allocation of at least one byte, filled in bounds.
    unsafe {
        let p = libc::malloc(bytes.len().max(1)) as *mut u8;
        if !p.is_null() {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
        }
        p.cast()
    }
}

static STRAY_LOGGED: AtomicU64 = AtomicU64::new(0);
static NO_NUL_LOGGED: AtomicU64 = AtomicU64::new(0);

#[cfg(test)]
mod tests {
    use super::*;

    static QUEUE: std::sync::LazyLock<TaskQueue> = std::sync::LazyLock::new(|| {
        TaskQueue::new(1, std::time::Duration::ZERO, std::time::Duration::ZERO)
    });

    fn malloced(s: &[u8]) -> *mut c_char {
        // SAFETY: fresh allocation of s.len() bytes, filled from s.
        unsafe {
            let p = libc::malloc(s.len().max(1)) as *mut u8;
            std::ptr::copy_nonoverlapping(s.as_ptr(), p, s.len());
            p.cast()
        }
    }

    fn ok(r: Response) -> (c_int, usize) {
        match r {
            Response::Ok { rc, len, .. } => (rc, len),
            Response::Bad(e) => panic!("{e:?}"),
        }
    }

    #[test]
    fn answer_before_wait_is_seen_without_parking() {
        let t = TaskPtr::new(&QUEUE, None, 1.0, b"hi".as_ptr(), 2, None).unwrap();
        assert!(TaskPtr::respond_to(t.handle(), 0, malloced(b"yo"), 2));
        assert!(t.wait(false));
        assert_eq!(ok(t.response()), (0, 2));
        t.free();
    }

    #[test]
    fn nul_terminated_answer_length_is_measured() {
        let t = TaskPtr::new(&QUEUE, None, 1.0, std::ptr::null(), 5, None).unwrap();
        assert_eq!(
            TaskPtr::request_of(t.handle()).unwrap().1,
            0,
            "null request has length 0"
        );
        t.respond(3, malloced(b"abc\0"), 0);
        assert!(t.wait(false));
        assert_eq!(ok(t.response()), (3, 3));
        t.free();
    }

    #[test]
    fn lengths_beyond_the_buffer_or_negative_are_bad_answers() {
        for (len, body) in [(i32::MAX, &b"abc"[..]), (-5, b"abc")] {
            let t = TaskPtr::new(&QUEUE, None, 1.0, std::ptr::null(), 0, None).unwrap();
            // a buffer with no NUL in its whole usable size
            let size = 64;
            // SAFETY: fresh allocation filled to its usable size.
            let p = unsafe {
                let p = libc::malloc(size) as *mut u8;
                let usable = libc::malloc_usable_size(p.cast());
                std::ptr::write_bytes(p, b'x', usable);
                std::ptr::copy_nonoverlapping(body.as_ptr(), p, body.len());
                p
            };
            t.respond(0, p.cast(), len);
            assert!(t.wait(false));
            assert!(matches!(t.response(), Response::Bad(_)), "len {len}");
            t.free();
        }
    }

    #[test]
    fn nul_terminated_answer_without_nul_keeps_rc_and_buffer() {
        let t = TaskPtr::new(&QUEUE, None, 1.0, std::ptr::null(), 0, None).unwrap();
        // SAFETY: fresh allocation filled to its usable size, no NUL.
        let (p, usable) = unsafe {
            let p = libc::malloc(40) as *mut u8;
            let usable = libc::malloc_usable_size(p.cast());
            std::ptr::write_bytes(p, b'e', usable);
            (p, usable)
        };
        t.respond(1, p.cast(), 0);
        assert!(t.wait(false));
        assert_eq!(ok(t.response()), (1, usable));
        t.free();
    }

    #[test]
    fn second_and_late_answers_to_a_handle_are_dropped_even_when_the_slot_is_reused() {
        let t = TaskPtr::new(&QUEUE, None, 1.0, std::ptr::null(), 0, None).unwrap();
        let h = t.handle();
        assert!(TaskPtr::respond_to(h, 0, malloced(b"one"), 3));
        assert!(
            !TaskPtr::respond_to(h, 0, malloced(b"two"), 3),
            "second answer"
        );
        assert!(t.wait(false));
        t.free();
        // the slot goes to the next call; the old handle must not reach it
        let next = TaskPtr::new(&QUEUE, None, 2.0, std::ptr::null(), 0, None).unwrap();
        assert_ne!(next.handle(), h);
        assert!(TaskPtr::request_of(h).is_none());
        assert!(
            !TaskPtr::respond_to(h, 0, malloced(b"late"), 4),
            "late answer"
        );
        assert!(!next.wait(false), "the new call is still unanswered");
        // parked with no channel: the answer frees the task itself
        assert!(TaskPtr::respond_to(
            next.handle(),
            0,
            std::ptr::null_mut(),
            0
        ));
        assert!(!TaskPtr::respond_to(
            0x1234_0000_0000usize as *mut _,
            0,
            std::ptr::null_mut(),
            0
        ));
        assert!(!TaskPtr::respond_to(
            std::ptr::null_mut(),
            0,
            std::ptr::null_mut(),
            0
        ));
    }
}
