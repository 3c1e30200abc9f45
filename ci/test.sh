#!/usr/bin/env bash
# The test command: sets up the machine, then runs the Rust unit tests and
# the suites that drive a real nginx. The package for Debian 13 is built
# first, in its cached build root (ci/package.sh --debian 13), so the time
# that takes shows on its own; tests/test_package.py installs it (and the
# host's Debian 12 package) into clean roots of each release.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
cargo build --release --workspace
cargo test --release --workspace
t0=$(date +%s)
bash ci/package.sh --debian 13
echo "ci: Debian 13 roots and package ready in $(( $(date +%s) - t0 )) s"
RESTY_FFI_SKIP_BUILD=0 python3 -m pytest -v tests "$@"
