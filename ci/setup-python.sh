#!/usr/bin/env bash
# Set-up for the Python loader (loader/python3) and its examples/tests.
#
# - Debian's python3-cffi, so lua-resty-ffi's cffi runtimes run unchanged
#   with no venv (the loader embeds Debian's /usr/bin/python3.11);
# - a venv made with that same Python in a world-readable folder (nginx
#   workers run as `nobody`), holding examples/python/requirements.txt.
#   RESTY_FFI_VENV overrides where (default /var/cache/resty-ffi/venv).
#
# Idempotent and fast when done: a stamp records the requirements' hash.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
req="$here/../examples/python/requirements.txt"
venv=${RESTY_FFI_VENV:-/var/cache/resty-ffi/venv}
py=/usr/bin/python3.11

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

missing=()
for p in python3.11 python3.11-venv libpython3.11-dev python3-cffi; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

want=$(sha256sum "$req" | cut -d' ' -f1)
stamp="$venv/.resty-ffi-requirements"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
    exit 0
fi
$SUDO mkdir -p "$venv"
[ -x "$venv/bin/python" ] || $SUDO "$py" -m venv "$venv"
$SUDO "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
echo "$want" | $SUDO tee "$stamp" >/dev/null
# workers (user nobody) must read everything in it
$SUDO chmod -R a+rX "$venv"
d=$venv
while [ "$d" != / ]; do $SUDO chmod a+x "$d"; d=$(dirname "$d"); done
