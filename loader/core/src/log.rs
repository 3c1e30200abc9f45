//! Log lines for nginx's error.log, written by nginx itself.
//!
//! Any thread (a runtime's, the core's) may log with [`log`]. While a Lua
//! dispatcher is attached ([`attach`]), lines wait in a bounded queue and
//! the dispatcher hands them to nginx's own logger (`ngx.errlog.raw_log`)
//! at their level: they carry nginx's format, obey the `error_log` level and
//! follow `nginx -s reopen`. The queue wakes the dispatcher like an answer
//! does. Lines below the `error_log` level are dropped where they are made.
//!
//! Bounded: identical lines are collapsed and the rate of the rest is
//! bounded ([`crate::log_limit`]); past [`MAX_LINES`] lines or [`MAX_BYTES`]
//! bytes waiting, lines are dropped too. Drops are counted ([`dropped`]),
//! so a flood keeps memory and error.log flat.
//! With no dispatcher attached (before the first load, while the worker
//! exits, with `lua_code_cache off` between calls) a line goes straight to
//! stderr, which nginx points at its error_log file, in nginx's line format:
//! never lost silently.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::completion::Channel;
use crate::log_limit::{Limiter, Verdict};
use crate::spin::now_ns;

/// nginx's levels, as `ngx.ERR` and friends.
pub const EMERG: i32 = 1;
pub const ERR: i32 = 4;
pub const WARN: i32 = 5;
pub const DEBUG: i32 = 8;
const NAMES: [&str; 9] = [
    "stderr", "emerg", "alert", "crit", "error", "warn", "notice", "info", "debug",
];

pub const MAX_LINES: usize = 4096;
pub const MAX_BYTES: usize = 1 << 20;
/// Longer lines are cut to this many bytes.
pub const MAX_LINE: usize = 4000;

struct Lines {
    q: VecDeque<(i32, Box<[u8]>)>,
    bytes: usize,
}

static LINES: Mutex<Lines> = Mutex::new(Lines {
    q: VecDeque::new(),
    bytes: 0,
});
static SINK: Mutex<Option<&'static Channel>> = Mutex::new(None);
static LIMITER: Mutex<Option<Limiter>> = Mutex::new(None);
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Lines above this level (less severe) are dropped at once: the
/// `error_log` level of the attached dispatcher's nginx.
static FILTER: AtomicI32 = AtomicI32::new(DEBUG);

fn lines() -> MutexGuard<'static, Lines> {
    LINES.lock().unwrap_or_else(|e| e.into_inner())
}

fn sink() -> MutexGuard<'static, Option<&'static Channel>> {
    SINK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` on the process's limiter.
fn with_limiter<T>(f: impl FnOnce(&mut Limiter) -> T) -> T {
    let mut l = LIMITER.lock().unwrap_or_else(|e| e.into_inner());
    f(l.get_or_insert_with(Limiter::default))
}

/// Lines dropped so far: over the rate, or because the queue was full.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Logs one line at nginx level `level` (1 emerg ... 8 debug).
pub fn log(level: i32, msg: &[u8]) {
    let level = level.clamp(EMERG, DEBUG);
    if level > FILTER.load(Ordering::Relaxed) {
        return;
    }
    let msg = &msg[..msg.len().min(MAX_LINE)];
    let mut said = Vec::new();
    let (verdict, owed_before) = with_limiter(|l| {
        let now = now_ns();
        let owed = l.owed_in(now).is_some();
        (l.admit(now, level, msg, &mut said), owed)
    });
    for (level, line) in said {
        emit(level, &line);
    }
    match verdict {
        Verdict::Write => return emit(level, msg),
        Verdict::Collapse => {}
        Verdict::Drop => {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
    if !owed_before {
        // the window now has something to say when it ends: the dispatcher
        // asks when (roll_in_ms) and comes back then
        if let Some(ch) = *sink() {
            ch.wake_if_asleep();
        }
    }
}

/// Milliseconds until the window of collapsed or dropped lines ends and
/// has to be summed up (0: now), or None when it owes nothing.
pub fn roll_in_ms() -> Option<u64> {
    roll();
    with_limiter(|l| l.owed_in(now_ns())).map(|ns| ns.div_ceil(1_000_000))
}

/// Ends the limiter's window if it is over, writing what it has to say
/// (called as lines are taken, so a flood that stopped is still summed up).
fn roll() {
    let mut said = Vec::new();
    with_limiter(|l| l.roll(now_ns(), &mut said));
    for (level, line) in said {
        emit(level, &line);
    }
}

/// Queues one line for the dispatcher, or writes it to stderr without one.
fn emit(level: i32, msg: &[u8]) {
    let Some(ch) = *sink() else {
        return write_stderr(level, msg);
    };
    {
        let mut l = lines();
        if l.q.len() >= MAX_LINES || l.bytes + msg.len() > MAX_BYTES {
            drop(l);
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        l.bytes += msg.len();
        l.q.push_back((level, msg.into()));
    }
    ch.wake_if_asleep();
}

/// Logs at error level.
pub fn error(msg: &str) {
    log(ERR, msg.as_bytes());
}

/// Lines waiting, for the sink channel's `prepare_sleep`.
pub fn pending_for(ch: &Channel) -> usize {
    let attached = sink().is_some_and(|s| std::ptr::eq(s, ch));
    if attached {
        lines().q.len()
    } else {
        0
    }
}

/// Sets nginx's `error_log` level: lines above it are dropped at once,
/// attached or not.
pub fn set_filter(filter: i32) {
    FILTER.store(filter.clamp(EMERG, DEBUG), Ordering::Relaxed);
}

/// Makes `ch`'s dispatcher the writer of log lines; `filter` is nginx's
/// `error_log` level (lines above it are dropped at once).
pub fn attach(ch: &'static Channel, filter: i32) {
    set_filter(filter);
    *sink() = Some(ch);
}

/// The dispatcher of `ch` stops: lines go to stderr from now on, and those
/// waiting are written there now.
pub fn detach(ch: &Channel) {
    let mut s = sink();
    if s.is_some_and(|c| std::ptr::eq(c, ch)) {
        *s = None;
        drop(s);
        let waiting = {
            let mut l = lines();
            l.bytes = 0;
            std::mem::take(&mut l.q)
        };
        for (level, msg) in waiting {
            write_stderr(level, &msg);
        }
    }
}

/// Takes the next waiting line.
pub fn take() -> Option<(i32, Box<[u8]>)> {
    roll();
    let mut l = lines();
    let line = l.q.pop_front()?;
    l.bytes -= line.1.len();
    Some(line)
}

/// One line to stderr in nginx's error.log format.
fn write_stderr(level: i32, msg: &[u8]) {
    use std::io::Write;
    let mut line = format!(
        "{} [{}] {}#{}: ",
        now(),
        NAMES[level as usize],
        std::process::id(),
        // SAFETY: gettid has no preconditions.
        unsafe { libc::gettid() }
    )
    .into_bytes();
    line.extend_from_slice(msg);
    line.push(b'\n');
    let _ = std::io::stderr().write_all(&line);
}

fn now() -> String {
    let mut buf = [0u8; 32];
    // SAFETY: time/localtime_r/strftime write only into the locals given,
    // and strftime NUL-terminates within the buffer size it is told.
    let n = unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&t, &mut tm);
        libc::strftime(
            buf.as_mut_ptr().cast(),
            buf.len(),
            c"%Y/%m/%d %H:%M:%S".as_ptr(),
            &tm,
        )
    };
    String::from_utf8_lossy(&buf[..n]).into_owned()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_bounded_and_counted_and_detach_flushes() {
        let ch = Channel::open();
        attach(ch, DEBUG);
        let before = dropped();
        for i in 0..(MAX_LINES + 100) {
            log(WARN, format!("line {i}").as_bytes());
        }
        assert!(dropped() - before >= 100);
        assert!(pending_for(ch) <= MAX_LINES);
        let (level, first) = take().expect("a line");
        assert_eq!(level, WARN);
        assert!(first.starts_with(b"line "));
        detach(ch);
        assert_eq!(pending_for(ch), 0);
        assert!(take().is_none(), "detach wrote the rest to stderr");
        ch.close();
    }
}
