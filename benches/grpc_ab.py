#!/usr/bin/env python3
"""A/B driver for benchmark section 5 (gRPC SayHello, Lua vs native tonic).

Compares builds of libffi_grpc.so (and, optionally, of the Lua tree) in the
same period, which is the only fair way on a shared machine: one
grpc_test_server, one nginx (1 worker) per variant, and native tonic
(grpc_bench_client), measured in rounds, the order rotated every round.
Prints every run and the medians. Same server, same calls, same checks as
run.py's section 5 (benches/lua/bench/grpc.lua).

    python3 benches/grpc_ab.py --variant old=/tmp/old --variant new=target/release \
        --calls 20000 --rounds 5

A variant is NAME=FOLDER[@CFG][?OPTS]: FOLDER holds libffi_grpc.so and
optionally lua/ (laid over the worktree's lua/) and libresty_ffi.so (the
core; else target/release's); CFG is the runtime's cfg (grpc.CFG, e.g.
threads=2), else --cfg; OPTS its ffi.load options as a query
(grpc.LOAD_OPTS: spin_us=N&poll_spin_us=N). The servers come from
target/release. Sequential runs print how the calls were answered (spun:
while the caller spun; parked, and the wake-up bytes that woke the
dispatcher for them); every run prints the load average.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, HERE)

import harness  # noqa: E402
from run import cpu_ns, grpc_nginx  # noqa: E402

RELEASE = os.path.join(ROOT, "target", "release")


def start_variant(name, folder, cfg, opts=""):
    stage = harness.Stage()
    core = os.path.join(folder, "libresty_ffi.so")
    stage.add_lib(core if os.path.exists(core) else os.path.join(RELEASE, "libresty_ffi.so"))
    stage.add_lib(os.path.join(folder, "libffi_grpc.so"))
    stage.add_tree(os.path.join(HERE, "lua"), "lua")
    if os.path.isdir(os.path.join(folder, "lua")):
        stage.add_tree(os.path.join(folder, "lua"), "lua")
    proto = stage.add_tree(os.path.join(ROOT, "examples", "grpc", "proto"), "proto")
    nginx = grpc_nginx(stage, proto)
    return {"name": name, "stage": stage, "nginx": nginx, "pids": nginx.worker_pids(),
            "cfg": cfg, "opts": urllib.parse.parse_qsl(opts)}


def run_lua(v, mode, a, addr, server_pid):
    q = {"addr": addr, "n": a.calls}
    if v["cfg"]:
        q["cfg"] = v["cfg"]
    q.update(v.get("opts", []))
    if mode == "conc":
        q["c"] = a.conc
    pids = v["pids"] + [server_pid]
    c0 = cpu_ns(pids)
    status, body = v["nginx"].get("/grpc/%s?%s" % (mode, urllib.parse.urlencode(q)),
                                  timeout=600)
    c1 = cpu_ns(pids)
    if status != 200:
        raise RuntimeError("%s %s: %d %s\n%s" % (v["name"], mode, status, body[:300],
                                                 v["nginx"].error_log()[-2000:]))
    r = json.loads(body)
    us = r["wall_us_per_call"] if mode == "seq" else r["us_per_call"]
    if "spun" in r:
        v["answered"] = "spun %d parked %d wakes %d" % (r["spun"], r["parked"], r["wakes"])
    return us, (c1 - c0) / 1e3 / r["calls"], r.get("p50_us")


def run_native(mode, a, addr, server_pid):
    conc = 1 if mode == "seq" else a.conc
    p = subprocess.run([os.path.join(RELEASE, "grpc_bench_client"), addr, str(a.calls),
                        str(conc)], capture_output=True, text=True, timeout=600, check=True)
    r = json.loads(p.stdout)
    return r["us_per_call"], None, None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME=FOLDER[@CFG][?OPTS] (libffi_grpc.so [+ lua/] [+ "
                         "libresty_ffi.so]); repeatable")
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--conc", type=int, default=64)
    ap.add_argument("--modes", default="seq,conc")
    ap.add_argument("--cfg", default="", help="the runtime's cfg (grpc.CFG)")
    a = ap.parse_args()
    if not a.variant:
        a.variant = ["current=" + RELEASE]
    server = subprocess.Popen([os.path.join(RELEASE, "grpc_test_server")],
                              stdout=subprocess.PIPE, text=True)
    variants = []
    try:
        line = server.stdout.readline()
        if not line.startswith("listening on "):
            raise RuntimeError("grpc_test_server did not start: %r" % line)
        addr = line.split()[-1]
        for spec in a.variant:
            name, folder = spec.split("=", 1)
            folder, _, opts = folder.partition("?")
            folder, _, cfg = folder.partition("@")
            variants.append(start_variant(name, folder, cfg or a.cfg, opts))
        names = [v["name"] for v in variants] + ["native"]
        for mode in a.modes.split(","):
            runs = {n: [] for n in names}
            cpu = {n: [] for n in names}
            p50s = {n: [] for n in names}
            loads = []
            for rnd in range(a.rounds):
                order = names[rnd % len(names):] + names[:rnd % len(names)]
                loads.append(os.getloadavg()[0])
                for n in order:
                    if n == "native":
                        us, c, p50 = run_native(mode, a, addr, server.pid)
                    else:
                        v = next(v for v in variants if v["name"] == n)
                        us, c, p50 = run_lua(v, mode, a, addr, server.pid)
                    runs[n].append(us)
                    if c is not None:
                        cpu[n].append(c)
                    if p50:
                        p50s[n].append(p50)
                    extra = ""
                    if n != "native" and v.get("answered"):
                        extra = "  " + v.pop("answered")
                    print("  %-5s round %d  %-10s %8.2f us/call%s%s%s  load %.2f" % (
                        mode, rnd, n, us,
                        "  cpu %.2f us/call" % c if c is not None else "",
                        "  p50 %.2f" % p50 if p50 else "", extra,
                        os.getloadavg()[0]), flush=True)
            nat = statistics.median(runs["native"])
            print("%s (%d calls, %d rounds, load %.1f-%.1f; median us/call, vs native's "
                  "median, median of each round's ratio to native; all runs):"
                  % (mode, a.calls, a.rounds, min(loads), max(loads)))
            for n in names:
                m = statistics.median(runs[n])
                ratio = statistics.median(x / y for x, y in zip(runs[n], runs["native"]))
                print("  %-10s %8.2f  %+5.0f%%  round %+5.0f%%  cpu %s  p50 %s  runs %s" % (
                    n, m, (m / nat - 1) * 100, (ratio - 1) * 100,
                    "%.2f" % statistics.median(cpu[n]) if cpu[n] else "-",
                    "%.1f" % statistics.median(p50s[n]) if p50s[n] else "-",
                    " ".join("%.1f" % x for x in runs[n])), flush=True)
    finally:
        for v in variants:
            v["nginx"].stop()
            v["stage"].remove()
        harness.terminate(server, 5)


if __name__ == "__main__":
    main()
