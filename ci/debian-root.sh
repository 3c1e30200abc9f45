#!/usr/bin/env bash
# A clean Debian 12 root for the package test, made with debootstrap from
# Debian's packages (the mirror apt uses) and cached between runs.
#
# It holds what a user of Debian's nginx-lua already has (nginx-light,
# libnginx-mod-http-lua, lua-resty-core, lua-cjson) plus what the package
# depends on or recommends (libpython3.11, default-jre-headless, libnode108), so the
# test installs only the .deb itself. No Rust, no checkout, no build tools.
# Prints the root's path. RESTY_FFI_DEBIAN_ROOT overrides where.
set -euo pipefail
root=${RESTY_FFI_DEBIAN_ROOT:-/var/cache/resty-ffi/debian12-root}
want="nginx-light libnginx-mod-http-lua lua-resty-core lua-cjson libpython3.11 python3-cffi default-jre-headless libnode108"
stamp=$root/.resty-ffi-root

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "$root"
    exit 0
fi
command -v debootstrap >/dev/null 2>&1 || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
}
mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)
mirror=${mirror:-http://deb.debian.org/debian}
if [ ! -x "$root/usr/bin/apt-get" ]; then
    rm -rf "$root"
    mkdir -p "$(dirname "$root")"
    debootstrap --variant=minbase bookworm "$root" "$mirror" >&2
fi
# the same package sources as the host (bookworm, updates, security)
cp /etc/apt/sources.list.d/*.sources "$root/etc/apt/sources.list.d/" 2>/dev/null || true
mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
trap 'umount "$root/proc" 2>/dev/null || true' EXIT
# no daemons started inside the root by package scripts
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
chroot "$root" apt-get update -qq >&2
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -qq --no-install-recommends $want >&2
echo "$want" > "$stamp"
echo "$root"
