//! The bridge alone, without nginx (bench section 6).
//!
//! A small host that does what the Lua layer does, through the same C
//! functions: it opens libresty_ffi.so with RTLD_GLOBAL, loads a runtime
//! with `resty_ffi_runtime_load`, posts tasks with `resty_ffi_post`, waits
//! with `resty_ffi_wait` (spinning when nothing else is parked, as Lua does)
//! and, when a call parks, sleeps on the wake-up socket and drains the
//! completion queue like the dispatcher. So the code path measured is
//! production's, minus nginx and LuaJIT.
//!
//! Two measurements, one JSON record each on stdout:
//! - `roundtrip`: N sequential calls, per-call latency p50 / p99 / mean and
//!   CPU per call (the whole process: host plus runtime threads);
//! - `batch`: post B calls, then collect all answers, repeated until N
//!   calls; calls per second and CPU per call.
//!
//! Usage: `bench-bridge-host --core PATH --lib PATH [--cfg S] [--name S]
//! [--payload BYTES] [--calls N] [--batch B] [--spin-us US]
//! [--poll-spin-us US]`.

mod abi;

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use abi::{process_cpu_ns, Core, Runtime, Task};

struct Args {
    core: String,
    lib: String,
    cfg: Option<String>,
    name: String,
    payload: usize,
    calls: usize,
    batch: usize,
    spin_us: i32,
    poll_spin_us: i32,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        core: String::new(),
        lib: String::new(),
        cfg: None,
        name: "runtime".into(),
        payload: 512,
        calls: 100_000,
        batch: 64,
        spin_us: -1,
        poll_spin_us: -1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<i64>().map_err(|_| format!("bad {flag} {v}"));
        match flag.as_str() {
            "--core" => a.core = v,
            "--lib" => a.lib = v,
            "--cfg" => a.cfg = Some(v),
            "--name" => a.name = v,
            "--payload" => a.payload = num(&v)?.max(0) as usize,
            "--calls" => a.calls = num(&v)?.max(1) as usize,
            "--batch" => a.batch = num(&v)?.clamp(1, 60_000) as usize,
            "--spin-us" => a.spin_us = num(&v)? as i32,
            "--poll-spin-us" => a.poll_spin_us = num(&v)? as i32,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if a.core.is_empty() || a.lib.is_empty() {
        return Err("give --core PATH and --lib PATH".into());
    }
    Ok(a)
}

/// The dispatcher's side: sleeps on the wake socket, drains answers.
struct Dispatcher<'c> {
    core: &'c Core,
    wake: UnixStream,
    buf: Vec<Task>,
}

impl<'c> Dispatcher<'c> {
    fn new(core: &'c Core) -> Result<Self, String> {
        let wake = core.wake_channel()?;
        wake.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        Ok(Dispatcher {
            core,
            wake,
            buf: vec![Task::default(); 64],
        })
    }

    /// Hands parked answers to `done` until `want` of them came.
    fn collect(&mut self, mut want: usize, mut done: impl FnMut(Task)) -> Result<(), String> {
        let mut byte = [0u8; 256];
        while want > 0 {
            let n = self.core.drain(&mut self.buf);
            for &t in &self.buf[..n] {
                done(t);
            }
            want = want.saturating_sub(n);
            if want == 0 || n == self.buf.len() {
                continue;
            }
            if self.core.prepare_sleep() == 0 {
                match self.wake.read(&mut byte) {
                    Ok(0) => return Err("wake socket closed".into()),
                    Ok(_) => {}
                    Err(e) => return Err(format!("no answer within 10 s: {e}")),
                }
            }
        }
        Ok(())
    }
}

fn check(core: &Core, t: Task, payload: &[u8]) -> Result<(), String> {
    let (rc, rsp) = core.result(t);
    let ok = rc == 0 && rsp == payload;
    core.free(t);
    if ok {
        Ok(())
    } else {
        Err(format!("bad answer: rc={rc}, {} bytes", rsp.len()))
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn roundtrip(
    core: &Core,
    rt: &Runtime<'_>,
    d: &mut Dispatcher<'_>,
    a: &Args,
    payload: &[u8],
) -> Result<serde_json::Value, String> {
    let mut lat = Vec::with_capacity(a.calls);
    let mut parked = 0usize;
    let cpu0 = process_cpu_ns();
    let t0 = Instant::now();
    for i in 0..a.calls {
        let start = Instant::now();
        let t = rt
            .post(payload, i as f64)
            .map_err(|e| format!("post failed: {e}"))?;
        if core.wait(t, true) {
            check(core, t, payload)?;
        } else {
            parked += 1;
            let mut res = Ok(());
            d.collect(1, |t| {
                res = if core.id(t) == i as f64 {
                    check(core, t, payload)
                } else {
                    core.free(t);
                    Err("answer to another call".into())
                }
            })?;
            res?;
        }
        lat.push(start.elapsed().as_nanos() as u64);
    }
    let wall = t0.elapsed().as_nanos() as f64;
    let cpu = (process_cpu_ns() - cpu0) as f64;
    lat.sort_unstable();
    let n = a.calls as f64;
    Ok(serde_json::json!({
        "bench": "bridge", "mode": "roundtrip", "runtime": a.name,
        "payload": a.payload, "calls": a.calls, "workers": 0,
        "cpus": cpus(),
        "wall_us_per_call": wall / n / 1000.0,
        "cpu_us_per_call": cpu / n / 1000.0,
        "p50_us": percentile(&lat, 0.50), "p99_us": percentile(&lat, 0.99),
        "parked_share": parked as f64 / n,
    }))
}

fn batch(
    core: &Core,
    rt: &Runtime<'_>,
    d: &mut Dispatcher<'_>,
    a: &Args,
    payload: &[u8],
) -> Result<serde_json::Value, String> {
    let rounds = a.calls.div_ceil(a.batch);
    let mut tasks = Vec::with_capacity(a.batch);
    let cpu0 = process_cpu_ns();
    let t0 = Instant::now();
    for r in 0..rounds {
        tasks.clear();
        for i in 0..a.batch {
            let id = (r * a.batch + i) as f64;
            tasks.push(
                rt.post(payload, id)
                    .map_err(|e| format!("post failed: {e}"))?,
            );
        }
        let mut parked = 0;
        for &t in &tasks {
            // as Lua does once calls are parked: no spinning, park at once
            if core.wait(t, false) {
                check(core, t, payload)?;
            } else {
                parked += 1;
            }
        }
        let mut res = Ok(());
        d.collect(parked, |t| {
            if res.is_ok() {
                res = check(core, t, payload);
            } else {
                core.free(t);
            }
        })?;
        res?;
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = (process_cpu_ns() - cpu0) as f64;
    let n = (rounds * a.batch) as f64;
    Ok(serde_json::json!({
        "bench": "bridge", "mode": "batch", "runtime": a.name,
        "payload": a.payload, "calls": n as u64, "batch": a.batch, "workers": 0,
        "cpus": cpus(),
        "rps": n / wall,
        "wall_us_per_call": wall * 1e6 / n,
        "cpu_us_per_call": cpu / n / 1000.0,
    }))
}

/// CPUs this process may run on.
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn main() {
    let run = || -> Result<(), String> {
        let a = parse_args()?;
        let core = Core::open(&a.core)?;
        let rt = core.load_runtime(&a.lib, a.cfg.as_deref(), a.spin_us, a.poll_spin_us)?;
        let mut d = Dispatcher::new(&core)?;
        let payload: Vec<u8> = (0..a.payload).map(|i| b'a' + (i % 26) as u8).collect();
        // warm-up: threads started, caches and spin gates settled
        let warm = Args {
            calls: a.calls.min(2000),
            ..parse_args()?
        };
        roundtrip(&core, &rt, &mut d, &warm, &payload)?;
        println!("{}", roundtrip(&core, &rt, &mut d, &a, &payload)?);
        println!("{}", batch(&core, &rt, &mut d, &a, &payload)?);
        drop(rt);
        Ok(())
    };
    if let Err(e) = run() {
        eprintln!("bench-bridge-host: {e}");
        std::process::exit(1);
    }
}
