#!/usr/bin/env bash
# Set-up for the Node.js loader (loader/nodejs) and its examples/tests.
#
# The loader embeds Debian 12's libnode108 (Node 18). On a user's Debian
# machine that is `apt install libnode108` (plus libnode-dev to build). Here
# another `nodejs` package (not Debian's) may be installed that Provides
# `nodejs-legacy`, which libnode108 Conflicts with; that nodejs must stay.
# So:
# - the packages that install alongside any nodejs come from apt as usual:
#   libnode108's libraries (libuv1, c-ares, ICU, nghttp2, brotli, OpenSSL),
#   libuv1-dev (node.h includes uv.h), and node-acorn, node-cjs-module-lexer,
#   node-undici (libnode loads them from /usr/share/nodejs at start, or
#   aborts the process);
# - libnode108 and libnode-dev themselves, when dpkg does not have them, are
#   fetched with `apt-get download` and unpacked with `dpkg -x` into a
#   private prefix, RESTY_FFI_LIBNODE_PREFIX (default
#   /var/cache/resty-ffi/libnode), readable by everyone (nginx workers run
#   as `nobody`). build.rs and the loader look there after Debian's paths.
# - npm (the machine's own nodejs, or Debian's npm when there is none)
#   installs the npm packages the tests and the example use
#   (examples/nodejs/package.json) into RESTY_FFI_NODE_MODULES (default
#   /var/cache/resty-ffi/node), world-readable, once per package.json.
#
# Idempotent: installed packages are skipped, the prefix is unpacked once
# per package version (a stamp records it).
set -euo pipefail

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
prefix=${RESTY_FFI_LIBNODE_PREFIX:-/var/cache/resty-ffi/libnode}

updated=0
apt_update() {
    if [ "$updated" = 0 ]; then
        $SUDO apt-get update -qq
        updated=1
    fi
}

need=(libuv1 libuv1-dev libc-ares2 libicu72 libnghttp2-14 libbrotli1 libssl3
      zlib1g node-acorn node-cjs-module-lexer node-undici)
command -v npm >/dev/null 2>&1 || need+=(npm)
missing=()
for p in "${need[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt_update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

# npm packages for the example and the tests, from the npm registry
here=$(cd "$(dirname "$0")" && pwd)
pkg="$here/../examples/nodejs/package.json"
modules=${RESTY_FFI_NODE_MODULES:-/var/cache/resty-ffi/node}
want=$(sha256sum "$pkg" | cut -d' ' -f1)
if [ ! -f "$modules/.resty-ffi-package" ] || [ "$(cat "$modules/.resty-ffi-package")" != "$want" ]; then
    $SUDO mkdir -p "$modules"
    $SUDO cp "$pkg" "$modules/package.json"
    (cd "$modules" && $SUDO npm install --no-audit --no-fund --omit=dev --loglevel=error)
    echo "$want" | $SUDO tee "$modules/.resty-ffi-package" >/dev/null
    $SUDO chmod -R a+rX "$modules"
    d=$modules
    while [ "$d" != / ]; do $SUDO chmod a+x "$d"; d=$(dirname "$d"); done
fi

# Debian's own libnode, when it can be installed, needs no private prefix.
if dpkg -s libnode108 >/dev/null 2>&1 && dpkg -s libnode-dev >/dev/null 2>&1; then
    exit 0
fi

version() {
    apt-cache policy "$1" | sed -n 's/^ *Candidate: *//p'
}
want="$(version libnode108) $(version libnode-dev)"
if [ "$want" = "  " ] || [[ "$want" == *"(none)"* ]]; then
    apt_update
    want="$(version libnode108) $(version libnode-dev)"
fi
stamp="$prefix/.resty-ffi-libnode"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
        && [ -e "$prefix/usr/lib/x86_64-linux-gnu/libnode.so.108" ] \
        && [ -e "$prefix/usr/include/node/node.h" ]; then
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
(cd "$work" && apt-get download -qq libnode108 libnode-dev 2>/dev/null) || {
    apt_update
    (cd "$work" && apt-get download -qq libnode108 libnode-dev)
}
$SUDO rm -rf "$prefix"
$SUDO mkdir -p "$prefix"
for deb in "$work"/*.deb; do
    $SUDO dpkg -x "$deb" "$prefix"
done
echo "$want" | $SUDO tee "$stamp" >/dev/null
# workers (user nobody) must read everything in it
$SUDO chmod -R a+rX "$prefix"
d=$prefix
while [ "$d" != / ]; do $SUDO chmod a+x "$d"; d=$(dirname "$d"); done
echo "libnode unpacked into $prefix"
