"""The bench command in quick mode, so it cannot rot.

Runs `benches/run.py --quick` (small N, one payload, one-second wrk runs)
and checks only that every section produced sane records and the chart;
speed goals live in the bench output, never in tests.
"""

import json
import os
import re
import subprocess
import sys

import harness


def run_quick(out):
    bench = os.path.join(harness.ROOT, "benches", "run.py")
    # building is not what is timed: on a clean clone it compiles what the
    # workspace build did not (the Go echo), and it must not eat the bound
    cmd = [sys.executable, bench, "--quick", "--out", out, "--no-build"]
    if os.environ.get("RESTY_FFI_SKIP_BUILD") != "1":
        build = subprocess.run([sys.executable, "-c",
                                "import sys; sys.path.insert(0, %r); sys.argv = [%r];"
                                " import run; run.build(run.parse_args([]))"
                                % (os.path.dirname(bench), bench)],
                               capture_output=True, text=True, timeout=1800)
        assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f), p.stdout


def sane_sequential(r):
    assert r["calls"] > 0 and r["payload"] == 512, r
    assert 0 < r["wall_us_per_call"] < 100_000, r
    assert 0 < r["p50_us"] <= r["p99_us"], r
    assert 0 < r["cpu_us_per_call"] < 100_000, r


def test_quick_bench_produces_sane_records_for_every_section(tmp_path):
    records, stdout = run_quick(str(tmp_path))
    by = lambda **kw: [r for r in records if all(r.get(k) == v for k, v in kw.items())]

    for section, cpus in (("1", None), ("2", 1)):
        for runtime in ("rust-echo", "go-echo", "socket-raw", "socket-msgpack"):
            recs = by(section=section, bench="sequential", runtime=runtime)
            assert len(recs) == 1, (section, runtime, stdout[-2000:])
            sane_sequential(recs[0])
            if cpus:
                assert recs[0]["cpus"] == cpus and recs[0]["pinned"]

    ping = by(section="3", bench="rpc-ping")
    assert len(ping) == 1
    sane_sequential(dict(ping[0], payload=512))
    delay = by(section="3", bench="rpc-delay")[0]
    assert delay["took_ms"] >= delay["delay_ms"]

    for runtime in ("plain", "yield", "rust-echo", "go-echo", "socket-raw", "socket-msgpack"):
        recs = by(section="4", bench="throughput", runtime=runtime)
        assert len(recs) == 1, (runtime, stdout[-2000:])
        assert recs[0]["rps"] > 0 and recs[0]["errors"] == 0, recs[0]
        assert recs[0]["cpu_us_per_request"] > 0

    for runtime in ("rust-echo", "go-echo"):
        rt = by(section="6", runtime=runtime, mode="roundtrip")
        batch = by(section="6", runtime=runtime, mode="batch")
        assert len(rt) == 1 and len(batch) == 1, stdout[-2000:]
        assert 0 < rt[0]["p50_us"] <= rt[0]["p99_us"]
        assert batch[0]["rps"] > 0

    for mode in ("sequential", "concurrent"):
        for runtime in ("lua-grpc", "tonic-native"):
            recs = by(section="5", bench="grpc-" + mode, runtime=runtime)
            assert len(recs) == 1, (mode, runtime, stdout[-2000:])
            assert recs[0]["calls"] > 0 and 0 < recs[0]["us_per_call"] < 100_000, recs[0]

    assert os.path.getsize(tmp_path / "echo.png") > 1000
    md = (tmp_path / "results.md").read_text()
    for heading in ("## 1 + 3.", "## 2.", "## 4.", "## 5.", "## 6.", "## Targets",
                    "## Section 4's gap: the yield, then the call"):
        assert heading in md
    # the floor table has a row per worker count and connection count run
    gap = md.split("## Section 4's gap")[1]
    assert gap.count("\n| 1 | ") >= 1, gap


def test_ab_compares_two_builds_side_by_side():
    """benches/ab.py, the A/B tool for call-path changes, so it cannot rot:
    this checkout against itself, one short round."""
    cmd = [sys.executable, os.path.join(harness.ROOT, "benches", "ab.py"),
           "--build", "a=" + harness.ROOT, "--build", "b=" + harness.ROOT,
           "--variant", "t1=threads=1|spin_us = 0", "--rounds", "1", "--dur", "1"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    summary = p.stdout.split("== median")[1].splitlines()[1:]
    assert [l.split()[:2] for l in summary] == [
        ["a", "plain"], ["a", "t1"], ["b", "plain"], ["b", "t1"]], p.stdout
    for line in summary:
        rps = float(line.split()[2])
        assert rps > 0, line
        if "t1" in line:
            assert "vs plain" in line, line


def test_seq_ab_compares_two_builds_loop_by_loop():
    """benches/seq_ab.py, the A/B tool for the sequential path, so it
    cannot rot: this checkout against itself, Rust echo, two short rounds;
    every loop shows the share of calls spun, and the summary a line per
    build with the slow rounds counted."""
    cmd = [sys.executable, os.path.join(harness.ROOT, "benches", "seq_ab.py"),
           "--build", "a=" + harness.ROOT, "--build", "b=" + harness.ROOT,
           "--runtimes", "rust-echo", "--rounds", "2", "--calls", "2000"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    loops = [l for l in p.stdout.splitlines() if re.match(r"r\d+ ", l)]
    assert len(loops) == 4, p.stdout
    for line in loops:
        share = float(line.split("spun")[1].split("%")[0])
        assert 0 <= share <= 100, line
    summary = p.stdout.split("== ")[1].splitlines()[1:]
    assert [l.split()[:2] for l in summary] == [["rust-echo", "a"], ["rust-echo", "b"]]
    for line in summary:
        assert float(line.split()[3]) > 0 and "slow rounds" in line, line


def test_counts_gives_each_threads_syscalls_per_request():
    """benches/counts.py, the per-request counts that explain the gap under
    load (benches/README.md), so it cannot rot: one worker, -c16."""
    cmd = [sys.executable, os.path.join(harness.ROOT, "benches", "counts.py"),
           "--workers", "1", "--conns", "16", "--dur", "2"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = {}
    for line in p.stdout.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 12 and cells[0] == "1":
            rows[(cells[2], cells[3])] = [float(c) for c in cells[4:]]
    assert set(rows) == {("plain", "main"), ("call", "main"), ("call", "runtime")}, p.stdout
    for key, (rps, futex, epoll, recv, writev, write, cs, cpu) in rows.items():
        assert rps > 0 and cpu > 0, (key, p.stdout)
        # every request reads its request and writes its answer
        if key[1] == "main":
            assert recv >= 0.5 and writev >= 0.5, (key, p.stdout)
    # the runtime's threads sleep and are woken in futex, and nginx's event
    # loop makes no futex call for a plain Lua answer
    assert rows[("call", "runtime")][1] > 0, p.stdout
    assert rows[("plain", "main")][1] < 0.01, p.stdout
