#!/usr/bin/env bash
# Installs everything the demo, tests and benchmarks need on a fresh Debian 12
# machine. Idempotent: installed packages are skipped.
set -euo pipefail

need_pkgs=(nginx-light libnginx-mod-http-lua lua-resty-core lua-cjson
           lua-messagepack wrk python3.11 python3.11-venv libpython3.11-dev
           curl openssl lua-check g++ dpkg-dev lintian linux-perf)
missing=()
for p in "${need_pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
# Debian starts the packaged nginx on port 80. The project starts its own
# nginx on free loopback ports and never needs that one stopped; a machine
# that wants it stopped (a CI box) says RESTY_FFI_STOP_NGINX=1.
if [ "${RESTY_FFI_STOP_NGINX:-0}" = 1 ] && command -v systemctl >/dev/null 2>&1; then
    systemctl stop nginx >/dev/null 2>&1 || true
fi

python3 -c 'import pytest' 2>/dev/null || python3 -m pip install -q pytest
python3 -c 'import prometheus_client' 2>/dev/null || python3 -m pip install -q prometheus_client

# Per-language set-up scripts (ci/setup-*.sh) add what their runtimes need.
here=$(cd "$(dirname "$0")" && pwd)
for extra in "$here"/setup-*.sh; do
    [ -e "$extra" ] && bash "$extra"
done
true
