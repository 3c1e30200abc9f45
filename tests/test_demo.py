"""The demo (README's first command) runs and shows every language answering.

Runs `bash ci/demo.sh` with the build the suite made, and checks that nginx
answered from Rust, Go (plain and streaming), Python (plain and SSE
streaming), Java, Node.js and gRPC, and served /metrics.
"""

import os
import re
import subprocess

import harness


def test_the_demo_shows_every_language_answering(stage):
    env = dict(os.environ, RESTY_FFI_SKIP_BUILD="1")
    p = subprocess.run(["bash", "ci/demo.sh"], cwd=harness.ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    out = p.stdout
    assert p.returncode == 0, out[-3000:] + p.stderr[-3000:]
    for want in (r"rust echo \(worker \d+\): bytes from curl",
                 r"go upper: GOPHER",
                 r"grpc unary: Hello nginx!",
                 r"echo: hello-from-a-java-handler",
                 r"echo: hello-from-a-handler",
                 r"hello-from-lua-resty-ffi's-demo/echo.js",
                 r"resty_ffi_calls_total\{"):
        assert re.search(want, out), (want, out[-3000:])
    # the Go stream: five tokens, in order, arriving over time
    stamps = [float(t) for t, i in re.findall(r"\+(\d+\.\d+)s\s+(\d):token", out)]
    assert len(stamps) == 5, out[-3000:]
    assert stamps[-1] - stamps[0] >= 0.3, stamps
    # the Python SSE example: a token per event, arriving over time
    stamps = [float(t) for t in re.findall(r'\+(\d+\.\d+)s\s+data: \{"token": ', out)]
    assert len(stamps) == 28, out[-3000:]
    assert stamps[-1] - stamps[0] >= 0.5, stamps
    assert re.search(r"\+\d+\.\d+s\s+event: done", out), out[-3000:]
