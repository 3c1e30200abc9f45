#!/usr/bin/env bash
# Clean Debian roots (12 bookworm, 13 trixie) for building and testing the
# package on a Debian other than the host's, made with debootstrap from
# Debian's packages (the mirror apt uses here) and cached between runs
# under /var/cache/resty-ffi.
#
#   ci/debian-root.sh [--debian 12|13] [--kind run|build|suite]
#
# Kinds (each a folder of its own, printed on the last line):
#   run    what a user of Debian's nginx-lua already has (nginx-light,
#          libnginx-mod-http-lua, lua-resty-core, lua-cjson) plus what the
#          package depends on or recommends (that release's libpython, a
#          JRE, libnode): the package test installs only the .deb into a
#          copy of it.
#          No Rust, no checkout, no build tools.
#   build  run plus C and C++ compilers, that release's libpython-dev and
#          python, a JDK and libnode-dev: ci/package.sh --debian N compiles in it with the
#          host's Rust toolchain bind-mounted (ci/debian-build.sh).
#   suite  run plus python3.X-venv and a venv with
#          examples/python/requirements.txt (made by that release's Python),
#          for the nginx-facing suites run inside the root
#          (RESTY_FFI_DEBIAN=N, tests/harness.py).
# build and suite start as copies of run (one debootstrap per release).
# A stamp in each root records what it holds; a root whose stamp differs is
# brought up to date, not rebuilt. RESTY_FFI_ROOTS overrides where.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
host_release=$(cut -d. -f1 /etc/debian_version)
release=$host_release
kind=run
while [ $# -gt 0 ]; do
    case $1 in
        --debian) release=$2; shift 2 ;;
        --kind) kind=$2; shift 2 ;;
        *) echo "debian-root.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
# shellcheck source=ci/debian-releases.sh
. "$here/debian-releases.sh"
debian_release "$release"
cache=${RESTY_FFI_ROOTS:-/var/cache/resty-ffi}
run_pkgs="nginx-light libnginx-mod-http-lua lua-resty-core lua-cjson libpython$py python3-cffi default-jre-headless $libnode"
case $kind in
    run) root=$cache/debian$release-run; want=$run_pkgs ;;
    build) root=$cache/debian$release-build
           want="$run_pkgs gcc g++ libc6-dev pkg-config python$py libpython$py-dev default-jdk-headless libnode-dev" ;;
    suite) root=$cache/debian$release-suite; want="$run_pkgs python$py python$py-venv" ;;
    *) echo "debian-root.sh: unknown kind $kind (run, build, suite)" >&2; exit 2 ;;
esac
req=$here/../examples/python/requirements.txt
stamp_text="$want"
[ "$kind" = suite ] && stamp_text="$want venv:$(sha256sum "$req" | cut -d' ' -f1)"
stamp=$root/.resty-ffi-root

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_text" ]; then
    echo "$root"
    exit 0
fi
# shellcheck source=ci/debian-mounts.sh
. "$here/debian-mounts.sh"

if [ ! -x "$root/usr/bin/apt-get" ]; then
    if [ "$kind" != run ]; then
        base=$(bash "$0" --debian "$release" --kind run | tail -n1)
        [ -e "$root" ] && release_mounts "$root"
        rm -rf "$root"
        cp -a --one-file-system "$base" "$root"
        rm -f "$root/.resty-ffi-root"
    else
        command -v debootstrap >/dev/null 2>&1 || {
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
        }
        [ -e "$root" ] && release_mounts "$root"
        rm -rf "$root"
        mkdir -p "$(dirname "$root")"
        debootstrap --variant=minbase "$codename" "$root" "$(debian_mirror)" >&2
    fi
fi
# that release's suites (main, updates, security) from the host's mirrors
rm -f "$root/etc/apt/sources.list"
debian_sources "$codename" > "$root/etc/apt/sources.list.d/debian.sources"
cp /etc/apt/apt.conf.d/99artifact-registry "$root/etc/apt/apt.conf.d/" 2>/dev/null || true
# no daemons started inside the root by package scripts
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
enter_root "$root"
trap 'leave_root' EXIT
chroot "$root" apt-get update -qq >&2
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -qq --no-install-recommends $want >&2
chroot "$root" apt-get clean
if [ "$kind" = suite ]; then
    # a venv for the Python suite's examples, made by that release's Python
    # where the tests look for it (RESTY_FFI_VENV's default), world-readable
    venv=/var/cache/resty-ffi/venv
    cp "$req" "$root/tmp/resty-ffi-requirements.txt"
    [ -x "$root$venv/bin/python" ] || chroot "$root" "python$py" -m venv "$venv"
    with_host_certs "$root" chroot "$root" "$venv/bin/pip" install -q \
        --disable-pip-version-check -r /tmp/resty-ffi-requirements.txt >&2
    chmod -R a+rX "$root/var/cache/resty-ffi"
fi
echo "$stamp_text" > "$stamp"
echo "$root"
