//! Bounded spinning before parking, and the gate that turns it off when it
//! does not pay.
//!
//! Waking a parked thread costs 20-40 µs on small VMs, so both sides of a
//! call spin for a short, bounded time first. Spinning only helps when the
//! other side runs on another CPU at the same time: with one CPU it starves
//! the thread it waits for. So when the process may use a single CPU a gate
//! does not spin: it yields the CPU once (`sched_yield`), which hands it to
//! the other side if that side is runnable (just woken, or itself
//! yielding), and looks once more. A spin that keeps missing (answers slower than the budget)
//! switches itself off for a while, so slow runtimes pay nothing.
//!
//! On more CPUs a spin only pauses; it never calls `sched_yield` (it did
//! every 64 pauses, as crossbeam's `Backoff::snooze`). On a busy machine a
//! yield is not a short step aside: the kernel's scheduler (EEVDF, Linux
//! 6.6 and later) pushes the yielding thread's deadline back a whole slice
//! each time, so a spinner that yields runs last, for milliseconds. The
//! poller that `post` counted on to take the next task (a spinner wakes no
//! sleeper) then sat behind every other runnable thread, and so did an
//! nginx worker spinning for its answer: with one CPU kept busy by an
//! unrelated loop, `wrk -c16` against one call per request fell to 2-4.5k
//! req/s against 20k+ for plain Lua (the worker on CPU 7% of the time).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Consecutive misses after which a gate closes.
const MISSES_TO_CLOSE: u32 = 16;
/// How long a closed gate stays closed.
const CLOSED_FOR: Duration = Duration::from_millis(100);

/// The calling thread's CPU mask; `None` when the kernel will not tell
/// (more CPUs than a `cpu_set_t` holds).
#[cold]
fn own_mask() -> Option<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most
    // size_of::<cpu_set_t>() bytes into it and we pass exactly that size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        (libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0)
            .then_some(set)
    }
}

/// Sets the calling thread's CPU mask; whether the kernel took it.
#[cold]
fn set_own_mask(set: &libc::cpu_set_t) -> bool {
    // SAFETY: sched_setaffinity reads exactly size_of::<cpu_set_t>() bytes
    // of `set`, a valid reference.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) == 0 }
}

/// True when this process may run on more than one CPU right now.
pub fn multi_cpu() -> bool {
    // SAFETY: CPU_COUNT reads a cpu_set_t the kernel filled.
    own_mask().is_none_or(|set| unsafe { libc::CPU_COUNT(&set) } > 1)
}

/// The CPU this thread runs on now (-1: unknown). glibc answers from the
/// thread's rseq area or the vDSO: nanoseconds, no system call.
pub fn current_cpu() -> i32 {
    // SAFETY: sched_getcpu takes no arguments and only reads.
    unsafe { libc::sched_getcpu() }
}

/// Least time between two moves of one thread (`move_off_cpu`).
const MOVE_EVERY_NS: u64 = 1_000_000;

thread_local! {
    /// When this thread last moved itself (`now_ns`; 0: never).
    static MOVED_AT: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Moves the calling thread off `cpu` onto another CPU it may use, then
/// gives it back its own CPU mask (the kernel leaves a running thread
/// where it is when its mask widens, so it stays moved until the scheduler
/// places it again). Returns whether it moved: not when `cpu` is its only
/// CPU, not more than once a millisecond per thread, not when the kernel
/// refuses.
///
/// Why: a runtime thread that sleeps and is woken by the nginx thread it
/// serves can be placed by the kernel on that thread's CPU, and then the
/// two take turns on one CPU (a context switch per call) while the other
/// CPUs idle; neither side's spin can pay off then, so both stop spinning,
/// and nothing breaks the pattern (seen on a 2-vCPU KVM guest: 4-6 µs a
/// call instead of 0.7, `perf sched timehist` showing both on CPU 0).
#[cold]
pub fn move_off_cpu(cpu: i32) -> bool {
    if cpu < 0 || cpu as usize >= libc::CPU_SETSIZE as usize {
        return false;
    }
    let now = now_ns().max(1);
    if MOVED_AT.with(|m| {
        let at = m.get();
        at != 0 && now.saturating_sub(at) < MOVE_EVERY_NS
    }) {
        return false;
    }
    let Some(own) = own_mask() else {
        return false;
    };
    let mut elsewhere = own;
    // SAFETY: `cpu` is below CPU_SETSIZE (checked above), as CPU_ISSET and
    // CPU_CLR need; both only touch the cpu_set_t passed.
    unsafe {
        if !libc::CPU_ISSET(cpu as usize, &own) || libc::CPU_COUNT(&own) < 2 {
            return false;
        }
        libc::CPU_CLR(cpu as usize, &mut elsewhere);
    }
    MOVED_AT.with(|m| m.set(now));
    if !set_own_mask(&elsewhere) {
        return false;
    }
    // (a thread whose own mask cannot be set back keeps the narrower one;
    // the kernel accepted `own` a moment ago, as the thread's allowed set)
    set_own_mask(&own);
    true
}

/// Monotonic nanoseconds since the first call in this process.
pub fn now_ns() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Spins until `done()` holds or `budget` has passed; returns whether it held.
///
/// Pauses only: no `sched_yield` inside (see the module doc). A peer
/// sharing this CPU gets it back when the bounded budget ends, or from the
/// scheduler's own preemption.
pub fn spin_until(budget: Duration, mut done: impl FnMut() -> bool) -> bool {
    if done() {
        return true;
    }
    if budget.is_zero() {
        return false;
    }
    let deadline = Instant::now() + budget;
    loop {
        for _ in 0..16 {
            if done() {
                return true;
            }
            std::hint::spin_loop();
        }
        if Instant::now() >= deadline {
            return done();
        }
    }
}

/// Shortest adaptive budget. Twice the service time is too short when
/// the runtime thread still has to come back to `poll` for the call (see
/// `TaskQueue::post`): with 2 µs, Java's way back (JNI, the poll loop)
/// missed for 3-14% of calls, each then parked (java-handler 3.5 -> 1.9 µs
/// a call with 5 µs).
const MIN_ADAPTIVE_NS: u64 = 5_000;

/// A spin budget that closes itself after repeated misses.
///
/// Thread-safe; all operations are lock-free and never block.
#[derive(Debug)]
pub struct SpinGate {
    budget_ns: u64,
    misses: AtomicU32,
    closed_until_ns: AtomicU64,
    /// Running average of observed answer times (0: none observed, or not
    /// adaptive). Written by [`SpinGate::observe`].
    recent_ns: AtomicU64,
    /// One CPU only: yield once instead of spinning.
    yield_only: bool,
}

impl SpinGate {
    /// A gate with `budget` (zero: never spins); on a single usable CPU it
    /// yields once instead of spinning.
    pub fn new(budget: Duration) -> Self {
        SpinGate {
            budget_ns: budget.as_nanos() as u64,
            misses: AtomicU32::new(0),
            closed_until_ns: AtomicU64::new(0),
            recent_ns: AtomicU64::new(0),
            yield_only: !multi_cpu(),
        }
    }

    /// A gate that spins within `budget` whatever the CPUs (tests).
    #[cfg(test)]
    pub fn spinning(budget: Duration) -> Self {
        SpinGate {
            yield_only: false,
            ..SpinGate::new(budget)
        }
    }

    /// True when this gate yields once rather than spinning (one CPU).
    pub fn yields(&self) -> bool {
        self.yield_only
    }

    /// The budget to spin now: zero when disabled or closed after misses;
    /// otherwise twice the recent answer time within the limit, and zero
    /// when recent answers took longer than the limit.
    pub fn budget(&self) -> Duration {
        if self.budget_ns == 0 {
            return Duration::ZERO;
        }
        let until = self.closed_until_ns.load(Ordering::Relaxed);
        if until != 0 && now_ns() < until {
            return Duration::ZERO;
        }
        let recent = self.recent_ns.load(Ordering::Relaxed);
        if recent == 0 {
            return Duration::from_nanos(self.budget_ns);
        }
        if recent > self.budget_ns {
            return Duration::ZERO;
        }
        Duration::from_nanos((recent * 2).clamp(MIN_ADAPTIVE_NS, self.budget_ns))
    }

    /// Feeds the time one answer took (post to respond) into the average.
    /// The gate keeps adapting while it spins nothing: parked calls report
    /// their answer times too, so a runtime that gets fast is spun for again.
    pub fn observe(&self, answer_ns: u64) {
        let old = self.recent_ns.load(Ordering::Relaxed);
        let new = if old == 0 {
            answer_ns
        } else {
            // exponential average, weight 1/8 for the newest sample
            (old * 7 + answer_ns) / 8
        };
        self.recent_ns.store(new.max(1), Ordering::Relaxed);
    }

    /// Forgets the misses and opens a closed gate: the spins that missed
    /// were made where they could not succeed (see `move_off_cpu`).
    pub fn reopen(&self) {
        self.misses.store(0, Ordering::Relaxed);
        self.closed_until_ns.store(0, Ordering::Relaxed);
    }

    /// Records whether the last spin found what it waited for.
    pub fn record(&self, hit: bool) {
        if hit {
            if self.misses.load(Ordering::Relaxed) != 0 {
                self.misses.store(0, Ordering::Relaxed);
            }
            return;
        }
        if self.misses.fetch_add(1, Ordering::Relaxed) + 1 >= MISSES_TO_CLOSE {
            self.misses.store(0, Ordering::Relaxed);
            self.closed_until_ns
                .store(now_ns() + CLOSED_FOR.as_nanos() as u64, Ordering::Relaxed);
        }
    }

    /// Spins on `done` within the current budget and records the outcome.
    pub fn spin(&self, mut done: impl FnMut() -> bool) -> bool {
        let budget = self.budget();
        if budget.is_zero() {
            return false;
        }
        let hit = if self.yield_only {
            done() || {
                std::thread::yield_now();
                done()
            }
        } else {
            spin_until(budget, done)
        };
        self.record(hit);
        hit
    }
}

/// The calling thread's CPUs, for tests.
#[cfg(test)]
pub(crate) mod cpus {
    /// The CPUs this thread may run on.
    pub fn allowed() -> Vec<usize> {
        let set = super::own_mask().expect("sched_getaffinity");
        (0..libc::CPU_SETSIZE as usize)
            // SAFETY: c is below CPU_SETSIZE; CPU_ISSET only reads `set`.
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
            .collect()
    }

    /// Lets this thread run on `cpus` only.
    pub fn pin(cpus: &[usize]) {
        // SAFETY: cpu_set_t is plain data; every c comes from `allowed`,
        // below CPU_SETSIZE, as CPU_SET needs.
        let set = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &c in cpus {
                libc::CPU_SET(c, &mut set);
            }
            set
        };
        assert!(super::set_own_mask(&set), "sched_setaffinity");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_closes_after_repeated_misses_and_reopens_later() {
        let gate = SpinGate {
            budget_ns: 1_000,
            misses: AtomicU32::new(0),
            closed_until_ns: AtomicU64::new(0),
            recent_ns: AtomicU64::new(0),
            yield_only: false,
        };
        for _ in 0..MISSES_TO_CLOSE {
            assert!(!gate.budget().is_zero());
            assert!(!gate.spin(|| false));
        }
        assert!(gate.budget().is_zero(), "gate must close after misses");
        std::thread::sleep(CLOSED_FOR + Duration::from_millis(20));
        assert!(!gate.budget().is_zero(), "gate must reopen");
        assert!(gate.spin(|| true));
    }

    #[test]
    fn budget_follows_recent_answer_times_within_the_limit() {
        let gate = SpinGate {
            budget_ns: 20_000,
            misses: AtomicU32::new(0),
            closed_until_ns: AtomicU64::new(0),
            recent_ns: AtomicU64::new(0),
            yield_only: false,
        };
        assert_eq!(
            gate.budget(),
            Duration::from_micros(20),
            "no data: the limit"
        );
        gate.observe(3_000);
        assert_eq!(gate.budget(), Duration::from_micros(6));
        gate.observe(500);
        // (3000 * 7 + 500) / 8 = 2687 -> 5374 ns
        assert_eq!(gate.budget(), Duration::from_nanos(5_374));
        for _ in 0..64 {
            gate.observe(100);
        }
        assert_eq!(gate.budget(), Duration::from_nanos(MIN_ADAPTIVE_NS));
        for _ in 0..200 {
            gate.observe(1_000_000);
        }
        assert!(gate.budget().is_zero(), "slow answers: do not spin at all");
        for _ in 0..200 {
            gate.observe(4_000);
        }
        assert_eq!(
            gate.budget(),
            Duration::from_nanos(8_000),
            "fast again: spin again"
        );
    }

    #[test]
    fn one_cpu_gate_yields_once_instead_of_spinning() {
        let gate = SpinGate {
            budget_ns: 1_000_000_000,
            misses: AtomicU32::new(0),
            closed_until_ns: AtomicU64::new(0),
            recent_ns: AtomicU64::new(0),
            yield_only: true,
        };
        let mut calls = 0;
        let t0 = Instant::now();
        assert!(!gate.spin(|| {
            calls += 1;
            false
        }));
        assert_eq!(calls, 2, "looks before and after one yield");
        assert!(t0.elapsed() < Duration::from_millis(100), "no spinning");
    }

    #[test]
    fn a_thread_moves_off_a_cpu_once_a_millisecond_and_keeps_its_mask() {
        std::thread::spawn(|| {
            let own = cpus::allowed();
            assert!(own.len() >= 2, "this test needs 2 CPUs, has {own:?}");
            let c = own[0];
            cpus::pin(&[c]);
            assert_eq!(current_cpu(), c as i32);
            assert!(!move_off_cpu(c as i32), "its only CPU: stays");
            assert_eq!(current_cpu(), c as i32);
            // widening the mask leaves the thread where it runs
            cpus::pin(&own);
            assert_eq!(current_cpu(), c as i32);
            assert!(move_off_cpu(c as i32), "moves off");
            assert_ne!(current_cpu(), c as i32);
            assert_eq!(cpus::allowed(), own, "its own mask back");
            let here = current_cpu();
            assert!(!move_off_cpu(here), "not twice within a millisecond");
            assert_eq!(current_cpu(), here);
            assert!(!move_off_cpu(-1) && !move_off_cpu(libc::CPU_SETSIZE));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn zero_budget_never_spins() {
        let gate = SpinGate::new(Duration::ZERO);
        let mut calls = 0;
        assert!(!gate.spin(|| {
            calls += 1;
            false
        }));
        assert_eq!(calls, 0);
    }
}
