#!/usr/bin/env python3
"""A/B in sequence: section 1's loop of calls, two (or more) builds side
by side, round after round.

    python3 benches/seq_ab.py --build before=/path/to/old/checkout \\
        --build after=. [--runtimes rust-echo,python-handler] \\
        [--rounds 6] [--calls 50000] [--payload 512]

Each build is a checkout with its libraries built (`cargo build --release`,
and whatever its run.py stages: the Python, Java and Node loaders). One
process per build imports that checkout's benches/run.py, stages it as a
full run does and keeps its nginx (`Bench`) up; this driver then runs one
`/seq` loop per runtime on each build in turn, the order alternating from
round to round. Printed per loop: wall µs per call, p50, p99, and the
share of calls answered while the caller spun (with the runtime-thread
wake-ups and `moved_off` of that loop); then per runtime and build the
median round and how many rounds fell into a slow mode (a mean above 1.5x
the loop's own p50: a mode the loop settles in for a while, see
benches/README.md, "Fifth session").

Why: this VM's vCPUs move under the numbers (the bridge's round trip was
0.6 µs one minute and 1.6 the next), so only loops taken within seconds
of each other compare.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


def serve(root, runtimes):
    """Child: stage `root`'s build, start its bench nginx, print one JSON
    line ({"port": ..., "urls": {runtime: /seq url}}) and wait to be
    killed."""
    sys.path.insert(0, os.path.join(root, "benches"))
    import run  # noqa: E402  (that checkout's run.py)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    a = run.parse_args(["--quick", "--no-build", "--no-chart", "--runtimes", runtimes])
    stage, ctx, rts, skipped = run.stage_all(a)
    try:
        with run.Bench(stage, ctx, rts) as b:
            urls = {}
            for rt in rts:
                q = urllib.parse.urlencode(dict(lib=rt["lib"], cfg=b.cfg(rt),
                                                **rt.get("opts", {})))
                urls[rt["name"]] = "http://127.0.0.1:%d/seq?%s" % (b.nginx.port, q)
            print(json.dumps({"urls": urls, "skipped": sorted(skipped)}), flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stage.remove()


def loop(url, calls, payload):
    with urllib.request.urlopen("%s&n=%d&payload=%d" % (url, calls, payload),
                                timeout=600) as r:
        return json.load(r)


def spun(d):
    if "spun" not in d:
        return ""
    done = d["spun"] + d["parked"]
    return "  spun %5.1f%%  wake-ups %d  moved %s" % (
        100.0 * d["spun"] / done if done else 0, d["thread_wakeups"], d.get("moved_off", "-"))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--build", action="append", default=[], help="NAME=CHECKOUT")
    p.add_argument("--runtimes", default="rust-echo")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--calls", type=int, default=50000)
    p.add_argument("--payload", type=int, default=512)
    p.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)  # ROOT RUNTIMES (child)
    a = p.parse_args()
    if a.serve:
        return serve(*a.serve)
    if len(a.build) < 1:
        p.error("give --build NAME=CHECKOUT, once per build")
    if not (0 < a.calls <= 10**7 and 0 < a.rounds <= 1000):
        p.error("--calls or --rounds out of range")
    names = a.runtimes.split(",")
    builds, children = [], []
    try:
        for b in a.build:
            name, root = b.split("=", 1)
            child = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--serve",
                 os.path.abspath(root), a.runtimes], stdout=subprocess.PIPE)
            children.append(child)
            line = child.stdout.readline()
            if not line:
                raise SystemExit("%s: its bench nginx did not start" % name)
            info = json.loads(line)
            missing = [n for n in names if n not in info["urls"]]
            if missing:
                raise SystemExit("%s: %s not built there" % (name, ", ".join(missing)))
            builds.append((name, info["urls"]))
        for name, urls in builds:   # warm up: loads the runtimes
            for n in names:
                loop(urls[n], min(a.calls, 2000), a.payload)
        res = {}
        for r in range(a.rounds):
            order = builds if r % 2 == 0 else builds[::-1]
            for n in names:
                for name, urls in order:
                    d = loop(urls[n], a.calls, a.payload)
                    res.setdefault((n, name), []).append(d)
                    print("r%d %-15s %-8s wall %6.2f  p50 %6.2f  p99 %7.2f%s" % (
                        r, n, name, d["wall_us_per_call"], d["p50_us"], d["p99_us"],
                        spun(d)), flush=True)
        print("== %d rounds of %d calls, %d B, load %s" % (
            a.rounds, a.calls, a.payload, open("/proc/loadavg").read().split()[:3]))
        for n in names:
            for name, _ in builds:
                ds = res[(n, name)]
                mid = sorted(ds, key=lambda d: d["wall_us_per_call"])[len(ds) // 2]
                slow = sum(d["wall_us_per_call"] > 1.5 * d["p50_us"] for d in ds)
                print("%-15s %-8s wall %6.2f (p50 %5.2f, p99 %6.2f)  slow rounds %d of %d  "
                      "walls %s" % (n, name, mid["wall_us_per_call"], mid["p50_us"],
                                    mid["p99_us"], slow, len(ds),
                                    " ".join("%.2f" % d["wall_us_per_call"] for d in ds)))
    finally:
        for c in children:
            c.terminate()
        for c in children:
            try:
                c.wait(timeout=30)
            except subprocess.TimeoutExpired:
                c.kill()


if __name__ == "__main__":
    sys.exit(main())
