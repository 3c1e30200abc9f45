#!/usr/bin/env bash
# The test command: sets up the machine, checks the Lua with luacheck
# (.luacheckrc), then runs the Rust unit tests and the suites that drive a
# real nginx; then the core, Python, Java and Node.js suites again inside a
# Debian 13 root, against its nginx 1.26 / lua-nginx-module 0.10.28 /
# lua-resty-core 0.1.31 / Python 3.13 / OpenJDK 21 / libnode115 (Node 20)
# and the package built for it
# (RESTY_FFI_DEBIAN, tests/harness.py). The Debian 13 package is built
# first, in its cached build root (ci/package.sh --debian 13), so the time
# that takes shows on its own; tests/test_package.py installs it (and the
# host's Debian 12 package) into clean roots of each release.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
luacheck -q .
cargo build --release --workspace
cargo test --release --workspace
t0=$(date +%s)
bash ci/package.sh --debian 13
echo "ci: Debian 13 roots and package ready in $(( $(date +%s) - t0 )) s"
RESTY_FFI_SKIP_BUILD=0 python3 -m pytest -v tests "$@"
RESTY_FFI_DEBIAN=13 RESTY_FFI_SKIP_BUILD=1 python3 -m pytest -v \
    tests/test_calls.py tests/test_concurrency.py tests/test_hardening.py \
    tests/test_python.py tests/test_java.py tests/test_nodejs.py "$@"
