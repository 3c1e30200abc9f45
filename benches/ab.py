#!/usr/bin/env python3
"""A/B under load: two (or more) builds of resty-ffi side by side, one
nginx each, wrk alternating between every build's plain Lua location and
its echo-call locations, several rounds; medians and every round printed.

On a shared or noisy machine a full bench run's absolute numbers swing;
measuring the builds in turn within seconds of each other, round after
round, is what lets a change be kept or dropped (benches/README.md, "Under
load"). Each build is a checkout with `cargo build --release` done (its
lua/, tests/lua/, benches/lua/ and target/release/libresty_ffi.so and
libffi_echo.so are staged).

    python3 benches/ab.py --build old=/path/to/old/checkout --build new=. \
        [--variant 't1=threads=1|spin_us = 0'] [--conns 64] [--rounds 5] \
        [--dur 2] [--workers 1]

A variant is NAME=CFG|OPTS: the echo runtime's cfg and the Lua table
fields passed to resty.ffi.load (default: call=threads=2|). CPU is per
request: `cpu` every thread of the workers, `main` their main threads.
"""
import argparse
import os
import shutil
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, HERE)
import harness  # noqa: E402
import run as bench  # noqa: E402


def main_thread_ns(pid):
    """On-CPU ns of process `pid`'s main thread."""
    try:
        with open("/proc/%d/task/%d/schedstat" % (pid, pid)) as f:
            return int(f.read().split()[0])
    except OSError:
        return 0


def stage_for(root):
    """A harness stage with `root`'s Lua and echo libraries."""
    st = harness.Stage()
    shutil.rmtree(st.lua)
    shutil.copytree(os.path.join(root, "lua"), st.lua)
    shutil.copytree(os.path.join(root, "tests", "lua"), st.lua, dirs_exist_ok=True)
    shutil.copytree(os.path.join(root, "benches", "lua"), st.lua, dirs_exist_ok=True)
    for lib in ("libresty_ffi.so", "libffi_echo.so"):
        st.add_lib(os.path.join(root, "target", "release", lib))
    st.world_readable()
    return st


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--build", action="append", required=True)
    p.add_argument("--variant", action="append",
                   help="name=cfg|opts, e.g. t1=threads=1|  (default: call=threads=2|)")
    p.add_argument("--conns", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--dur", type=int, default=2)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--no-plain", action="store_true")
    a = p.parse_args()
    variants = []
    for v in a.variant or ["call=threads=2|"]:
        name, rest = v.split("=", 1)
        cfg, opts = rest.split("|", 1)
        variants.append((name, cfg, opts))
    sides = []
    try:
        for b in a.build:
            name, root = b.split("=", 1)
            st = stage_for(root)
            lines = ["location = /plain { content_by_lua_block { require('bench.run').plain() } }"]
            for vn, cfg, opts in variants:
                lines.append("location = /call/%s { content_by_lua_block { require('bench.run')"
                             ".call('ffi_echo', %s, { %s }) } }" % (vn, bench.lua_str(cfg), opts))
            ng = harness.Nginx(st, "\n".join(lines) + "\n", workers=a.workers, log_level="warn")
            ng.start()
            sides.append((name, st, ng))
        targets = []
        for name, st, ng in sides:
            if not a.no_plain:
                targets.append((name, "plain", ng))
            for vn, _, _ in variants:
                targets.append((name, vn, ng))
        def path_of(loc):
            return "/plain" if loc == "plain" else "/call/" + loc

        for _, loc, ng in targets:   # warm up: loads the runtimes
            bench.wrk(ng.url(path_of(loc)), 16, 1)
        res = {(n, loc): [] for n, loc, _ in targets}
        for r in range(a.rounds):
            order = targets if r % 2 == 0 else targets[::-1]
            for n, loc, ng in order:
                path = path_of(loc)
                pids = ng.worker_pids()
                c0, m0 = bench.cpu_ns(pids), sum(main_thread_ns(x) for x in pids)
                w = bench.wrk(ng.url(path), a.conns, a.dur)
                c1, m1 = bench.cpu_ns(pids), sum(main_thread_ns(x) for x in pids)
                req = w["requests"] or 1
                w["cpu"] = (c1 - c0) / 1e3 / req
                w["main"] = (m1 - m0) / 1e3 / req
                res[(n, loc)].append(w)
                print("r%d %-6s %-8s %9.0f req/s  cpu %6.2f  main %6.2f  err %d" % (
                    r, n, loc, w["rps"], w["cpu"], w["main"], w["errors"]), flush=True)
        print("== median over %d rounds, c%d, %d worker(s), load %s" % (
            a.rounds, a.conns, a.workers, open("/proc/loadavg").read().split()[:3]))
        for n, loc, _ in targets:
            rs = res[(n, loc)]
            line = "%-6s %-8s %9.0f req/s  cpu %6.2f  main %6.2f" % (
                n, loc, statistics.median(w["rps"] for w in rs),
                statistics.median(w["cpu"] for w in rs), statistics.median(w["main"] for w in rs))
            if not a.no_plain and loc != "plain":
                ratios = [w["rps"] / pw["rps"] for w, pw in zip(rs, res[(n, "plain")])]
                line += "  vs plain %.0f%% (rounds %s)" % (
                    100 * statistics.median(ratios), " ".join("%.0f" % (100 * x) for x in ratios))
            print(line)
    finally:
        for _, st, ng in sides:
            ng.stop()
            st.remove()


if __name__ == "__main__":
    main()
