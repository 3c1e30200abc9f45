#!/usr/bin/env python3
"""Where a call's cost goes under load, in counts rather than times:
per request, the system calls and context switches of nginx's worker
threads (the event loop) and of the runtime's threads, and their on-CPU
time, for a plain Lua location and a Rust echo call side by side.

Times swing by 2-3x on a shared VM; counts per request barely move, so
they show what a change did to the hand-offs (futex wake-ups of runtime
threads, wake-socket writes and reads, epoll rounds) when req/s cannot.
Needs `perf` with syscall tracepoints (root).

    python3 benches/counts.py [--build .] [--workers 1,2] [--conns 16,64] \
        [--dur 6] [--cfg threads=2]

Each row: wrk runs `dur` seconds; perf counts the middle half of it.
"""
import argparse
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, HERE)
import harness  # noqa: E402
import run as bench  # noqa: E402
from ab import stage_for  # noqa: E402

SYSCALLS = ("futex", "epoll_wait", "recvfrom", "writev", "write")
EVENTS = ["syscalls:sys_enter_" + s for s in SYSCALLS] + ["context-switches", "task-clock"]
COLUMNS = SYSCALLS + ("context-switches", "task-clock")


def count(pids, seconds):
    """perf stat per thread of `pids` for `seconds`: {thread kind: {event: n}};
    kind is "main" for nginx's own threads, "runtime" for the others."""
    out = subprocess.run(
        ["perf", "stat", "-x,", "--per-thread", "-e", ",".join(EVENTS),
         "-p", ",".join(map(str, pids)), "--", "sleep", str(seconds)],
        capture_output=True, text=True, check=True).stderr
    sums = {"main": {}, "runtime": {}}
    for line in out.splitlines():
        f = line.split(",")
        if len(f) < 4 or not re.fullmatch(r"[\d.]+", f[1]):
            continue
        thread, value, event = f[0], float(f[1]), f[3]
        kind = "main" if thread.startswith("nginx-") else "runtime"
        name = event.replace("syscalls:sys_enter_", "")
        sums[kind][name] = sums[kind].get(name, 0) + value
    return sums


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--build", default=os.path.join(HERE, ".."))
    p.add_argument("--workers", default="1,2")
    p.add_argument("--conns", default="16,64")
    p.add_argument("--dur", type=float, default=6)
    p.add_argument("--cfg", default="threads=2")
    a = p.parse_args()
    if subprocess.run(["perf", "stat", "-e", EVENTS[0], "true"],
                      capture_output=True).returncode != 0:
        sys.exit("counts.py: perf with syscall tracepoints is needed (run as root)")
    rows = []
    for workers in map(int, a.workers.split(",")):
        st = stage_for(a.build)
        ng = harness.Nginx(st, (
            "location = /plain { content_by_lua_block { require('bench.run').plain() } }\n"
            "location = /call { content_by_lua_block { require('bench.run')"
            ".call('ffi_echo', %s, {}) } }\n") % bench.lua_str(a.cfg),
            workers=workers, log_level="warn")
        ng.start()
        try:
            bench.wrk(ng.url("/call"), 16, 1)  # loads the runtime
            for conns in map(int, a.conns.split(",")):
                for loc in ("plain", "call"):
                    wrk = subprocess.Popen(
                        ["wrk", "-t2", "-c%d" % conns, "-d%ds" % a.dur, ng.url("/" + loc)],
                        stdout=subprocess.PIPE, text=True)
                    time.sleep(a.dur / 4)
                    sums = count(ng.worker_pids(), a.dur / 2)
                    out = wrk.communicate()[0]
                    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
                    reqs = rps * a.dur / 2
                    for kind in ("main", "runtime"):
                        if kind == "runtime" and loc == "plain":
                            continue
                        vals = []
                        for c in COLUMNS:
                            v = sums[kind].get(c, 0) / reqs
                            # task-clock is in ms: per request in µs
                            vals.append(v * 1e3 if c == "task-clock" else v)
                        rows.append((workers, conns, loc, kind, rps, vals))
                        print("w%d c%-3d %-5s %-7s %7.0f req/s  %s" % (
                            workers, conns, loc, kind, rps, " ".join(
                                "%s %.3f" % (c, v) for c, v in zip(COLUMNS, vals))),
                              flush=True)
        finally:
            ng.stop()
            st.remove()
    print("\nPer request (`%s`, load average %s):\n" % (
        " ".join(sys.argv[1:]) or "defaults", " / ".join(open("/proc/loadavg").read().split()[:3])))
    print("| workers | conns | location | threads | req/s | " + " | ".join(COLUMNS[:-1])
          + " | CPU µs |")
    print("|---:|---:|---|---|---:|" + "---:|" * len(COLUMNS))
    for workers, conns, loc, kind, rps, vals in rows:
        print("| %d | %d | %s | %s | %.0f | %s |" % (
            workers, conns, loc, kind, rps, " | ".join("%.2f" % v for v in vals)))


if __name__ == "__main__":
    main()
