//! What keeps a flood of log lines from flooding error.log: identical lines
//! are collapsed and the rate of the rest is bounded, per worker process.
//!
//! Lines are judged in one-second windows. The first occurrence of a line
//! in a window is written (within the bounds below); the same line again
//! (same level, same bytes) is only counted, and when the window ends one
//! line says `<line> (repeated 9,312 times in the last second)`. Beyond
//! [`RATE_LINES`] lines or [`RATE_BYTES`] bytes a second, only lines not
//! seen lately are still written (the first occurrence of every distinct
//! line, so a new kind of error is never hidden behind an old one), up to
//! the hard bounds [`FIRST_LINES`] / [`FIRST_BYTES`]; the rest are dropped
//! and counted, and the window's end says how many.
//!
//! The judge is a plain value driven with explicit times, so its rules are
//! tested without clocks; [`crate::log`] holds the process's one instance.
//! Which runtime a line comes from is unknown to the core (`resty_ffi_log`
//! has no runtime argument), so the bound is the worker's, shared by its
//! runtimes; the first-occurrence rule keeps one runtime's flood from
//! hiding another's new lines.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

/// Length of a window, in ns.
pub const WINDOW_NS: u64 = 1_000_000_000;
/// Lines a second written whatever they are (repeats aside).
pub const RATE_LINES: u32 = 100;
/// Bytes a second written whatever they are.
pub const RATE_BYTES: usize = 64 * 1024;
/// Lines a second at most, first occurrences included.
pub const FIRST_LINES: u32 = 5000;
/// Bytes a second at most, first occurrences included.
pub const FIRST_BYTES: usize = 2 * 1024 * 1024;
/// Distinct written lines whose repeats a window tracks.
const MAX_TRACKED: usize = 1024;
/// Distinct lines remembered as seen (then forgotten all at once).
const MAX_SEEN: usize = 65536;

/// What to do with a line.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Write it.
    Write,
    /// A repeat: counted, said at the window's end.
    Collapse,
    /// Over the rate: dropped and counted.
    Drop,
}

struct Repeat {
    level: i32,
    msg: Box<[u8]>,
    count: u64,
}

/// The judge of one process's log lines.
#[derive(Default)]
pub struct Limiter {
    /// When the window started, in ns plus one (0: no window yet).
    start: u64,
    lines: u32,
    bytes: usize,
    repeats: HashMap<u64, Repeat>,
    seen: HashSet<u64>,
    dropped: u64,
    /// The most severe level (lowest number) among the dropped lines.
    dropped_level: i32,
    /// Whether this window collapsed or dropped a line: it has something
    /// to say when it ends.
    owes: bool,
}

fn fingerprint(level: i32, msg: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    level.hash(&mut h);
    msg.hash(&mut h);
    h.finish()
}

/// 9312 as "9,312".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Limiter {
    /// Judges one line logged at `now` (ns). Lines the window that ended
    /// has to say (repeats, drops) are pushed to `out` first.
    pub fn admit(
        &mut self,
        now: u64,
        level: i32,
        msg: &[u8],
        out: &mut Vec<(i32, Vec<u8>)>,
    ) -> Verdict {
        self.roll(now, out);
        let key = fingerprint(level, msg);
        if let Some(r) = self.repeats.get_mut(&key) {
            r.count += 1;
            self.owes = true;
            return Verdict::Collapse;
        }
        if self.seen.len() >= MAX_SEEN {
            self.seen.clear();
        }
        let first = self.seen.insert(key);
        let fits = |lines: u32, bytes: usize| self.lines < lines && self.bytes + msg.len() <= bytes;
        if !(fits(RATE_LINES, RATE_BYTES) || first && fits(FIRST_LINES, FIRST_BYTES)) {
            self.dropped += 1;
            self.owes = true;
            self.dropped_level = if self.dropped == 1 {
                level
            } else {
                self.dropped_level.min(level)
            };
            return Verdict::Drop;
        }
        self.lines += 1;
        self.bytes += msg.len();
        if self.repeats.len() < MAX_TRACKED {
            self.repeats.insert(
                key,
                Repeat {
                    level,
                    msg: msg.into(),
                    count: 0,
                },
            );
        }
        Verdict::Write
    }

    /// Ends the window if it began a second or more before `now`, pushing
    /// what it has to say to `out`.
    pub fn roll(&mut self, now: u64, out: &mut Vec<(i32, Vec<u8>)>) {
        let now = now + 1;
        if self.start == 0 {
            self.start = now;
            return;
        }
        let elapsed = now.saturating_sub(self.start);
        if elapsed < WINDOW_NS {
            return;
        }
        let span = if elapsed < 2 * WINDOW_NS {
            "in the last second".to_string()
        } else {
            format!(
                "in the last {} seconds",
                (elapsed + WINDOW_NS / 2) / WINDOW_NS
            )
        };
        for r in self.repeats.drain().map(|(_, r)| r) {
            if r.count > 0 {
                let mut line = r.msg.into_vec();
                let times = if r.count == 1 { "time" } else { "times" };
                line.extend_from_slice(
                    format!(" (repeated {} {times} {span})", thousands(r.count)).as_bytes(),
                );
                out.push((r.level, line));
            }
        }
        if self.dropped > 0 {
            out.push((
                self.dropped_level,
                format!(
                    "resty_ffi: {} runtime log lines dropped {span}: past {RATE_LINES} \
                     lines a second only lines not seen lately are written, at most \
                     {FIRST_LINES} a second",
                    thousands(self.dropped)
                )
                .into_bytes(),
            ));
        }
        self.start = now;
        self.lines = 0;
        self.bytes = 0;
        self.dropped = 0;
        self.owes = false;
    }

    /// When the window has something to say: ns from `now` until it ends
    /// (0 if it is over), else None.
    pub fn owed_in(&self, now: u64) -> Option<u64> {
        if !self.owes {
            return None;
        }
        let end = self.start.saturating_sub(1) + WINDOW_NS;
        Some(end.saturating_sub(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = WINDOW_NS;

    fn text(out: &[(i32, Vec<u8>)]) -> Vec<String> {
        out.iter()
            .map(|(_, l)| String::from_utf8_lossy(l).into_owned())
            .collect()
    }

    #[test]
    fn identical_lines_are_written_once_and_counted_at_the_windows_end() {
        let mut l = Limiter::default();
        let mut out = Vec::new();
        assert_eq!(l.admit(0, 4, b"boom", &mut out), Verdict::Write);
        assert_eq!(l.owed_in(0), None, "nothing to say yet");
        for i in 0..9312 {
            assert_eq!(l.admit(i, 4, b"boom", &mut out), Verdict::Collapse);
        }
        // the same text at another level is another line
        assert_eq!(l.admit(10, 5, b"boom", &mut out), Verdict::Write);
        assert!(out.is_empty());
        assert_eq!(
            l.owed_in(S / 2),
            Some(S / 2),
            "the window ends in half a second"
        );
        assert_eq!(l.admit(S + 1, 4, b"later", &mut out), Verdict::Write);
        assert_eq!(
            text(&out),
            ["boom (repeated 9,312 times in the last second)"]
        );
        assert_eq!(out[0].0, 4);
        // a new window writes the line again, once
        out.clear();
        assert_eq!(l.admit(S + 2, 4, b"boom", &mut out), Verdict::Write);
        assert_eq!(l.admit(S + 3, 4, b"boom", &mut out), Verdict::Collapse);
        l.roll(5 * S, &mut out);
        assert_eq!(text(&out), ["boom (repeated 1 time in the last 4 seconds)"]);
    }

    #[test]
    fn past_the_rate_only_first_occurrences_are_written_up_to_the_hard_bound() {
        let mut l = Limiter::default();
        let mut out = Vec::new();
        // seen before the flood
        assert_eq!(l.admit(0, 4, b"old kind", &mut out), Verdict::Write);
        l.roll(S, &mut out);
        let verdicts: Vec<Verdict> = (0..8000)
            .map(|i| l.admit(S + 1, 4, format!("line {i}").as_bytes(), &mut out))
            .collect();
        let written = verdicts.iter().filter(|v| **v == Verdict::Write).count();
        assert_eq!(written, FIRST_LINES as usize, "first occurrences, bounded");
        // past the rate, a line seen before is dropped...
        assert_eq!(l.admit(S + 2, 4, b"old kind", &mut out), Verdict::Drop);
        l.roll(2 * S + 1, &mut out);
        // ...and next second, lines seen last second are the rate's only
        for i in 0..RATE_LINES {
            let v = l.admit(2 * S + 2, 4, format!("line {i}").as_bytes(), &mut out);
            assert_eq!(v, Verdict::Write);
        }
        assert_eq!(l.admit(2 * S + 3, 4, b"line 7000", &mut out), Verdict::Drop);
        assert_eq!(
            l.admit(2 * S + 3, 3, b"a new line", &mut out),
            Verdict::Write
        );
        out.clear();
        l.roll(3 * S + 3, &mut out);
        assert_eq!(
            text(&out).last().map(String::as_str),
            Some(
                "resty_ffi: 1 runtime log lines dropped in the last second: past 100 \
                 lines a second only lines not seen lately are written, at most 5000 \
                 a second"
            )
        );
    }

    #[test]
    fn bytes_are_bounded_as_lines_are() {
        let mut l = Limiter::default();
        let mut out = Vec::new();
        let big = vec![b'x'; 4000];
        let mut written = 0;
        for i in 0..2000u32 {
            let mut line = big.clone();
            line.extend_from_slice(&i.to_le_bytes());
            if l.admit(0, 4, &line, &mut out) == Verdict::Write {
                written += 4004;
            }
        }
        assert!(written <= FIRST_BYTES, "{written}");
        assert!(written > FIRST_BYTES - 4004, "{written}");
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
