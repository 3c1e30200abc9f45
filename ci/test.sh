#!/usr/bin/env bash
# The test command: sets up the machine, checks the Lua with luacheck
# (.luacheckrc), then runs the Rust unit tests and the suites that drive a
# real nginx.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
luacheck -q .
cargo build --release --workspace
cargo test --release --workspace
RESTY_FFI_SKIP_BUILD=0 python3 -m pytest -v tests "$@"
