#!/usr/bin/env bash
# Builds the Debian package: target/debian/resty-ffi_<version>_amd64.deb.
#
# Everything goes where Debian's nginx-lua looks by default, so an
# nginx.conf needs no lua_package_path, lua_package_cpath or
# LD_LIBRARY_PATH:
#   /usr/share/lua/5.1/                  resty_ffi.lua, resty/ffi.lua, resty/ffi/*.lua
#   /usr/lib/x86_64-linux-gnu/lua/5.1/   libresty_ffi.so, the loaders and runtimes,
#                                        plus lua-resty-ffi's loader names as links
#   /usr/share/java/resty-ffi.jar        the Java API, to compile runtimes against
#   /usr/share/doc/resty-ffi/            README, docs, copyright
# Built with dpkg-deb (a plain, well-kept tool) from a staged root.
# RESTY_FFI_SKIP_BUILD=1 packages what target/release already holds.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
arch=$(dpkg --print-architecture)
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)

if [ "${RESTY_FFI_SKIP_BUILD:-0}" != 1 ]; then
    cargo build --release --workspace
fi

out=target/debian
stage=$out/root
rm -rf "$stage"
lib=$stage/usr/lib/$multiarch/lua/5.1
share=$stage/usr/share/lua/5.1
doc=$stage/usr/share/doc/resty-ffi
mkdir -p "$lib" "$share" "$doc" "$stage/DEBIAN"

# Lua: the whole lua/ tree (resty_ffi.lua, resty/ffi.lua, resty/ffi/*.lua)
cp -r lua/. "$share/"

# Libraries: the core, every loader and runtime the workspace builds, and
# the Java API jar loader/java's build leaves next to libffi_java.so.
required=(libresty_ffi.so libffi_python3.so libffi_java.so libffi_nodejs.so
          libffi_grpc.so libffi_echo.so resty-ffi.jar)
for f in "${required[@]}"; do
    [ -f "target/release/$f" ] || { echo "package: target/release/$f is missing" >&2; exit 1; }
done
for so in target/release/lib*.so; do
    install -m 0644 "$so" "$lib/"
    # release builds keep line tables for profiling; the package need not
    if command -v strip >/dev/null 2>&1; then
        strip --strip-debug "$lib/$(basename "$so")"
    fi
done
# lua-resty-ffi's names for our loaders, for code that bypasses our Lua
# layer's aliases (resty_ffi.lua resolves them by itself)
ln -sf libffi_python3.so "$lib/libresty_ffi_python.so"
ln -sf libffi_java.so "$lib/libresty_ffi_java.so"
mkdir -p "$stage/usr/share/java"
install -m 0644 target/release/resty-ffi.jar "$stage/usr/share/java/resty-ffi.jar"

cp README.md "$doc/"
[ -d docs ] && cp -r docs "$doc/"
cat > "$doc/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: resty-ffi

Files: *
License: BSD-2-Clause
EOF

installed_kib=$(du -sk "$stage/usr" | cut -f1)
# the Node.js loader is built for one libnode (Debian 12: libnode108)
libnode=$(grep -ao 'libnode\.so\.1[0-9][0-9]' target/release/libffi_nodejs.so | head -n1 | sed 's/\.so\.//')
[ -n "$libnode" ] || { echo "package: no libnode.so.N named in libffi_nodejs.so" >&2; exit 1; }
recommends="default-jre-headless, $libnode"
cat > "$stage/DEBIAN/control" <<EOF
Package: resty-ffi
Version: $version
Architecture: $arch
Maintainer: resty-ffi developers <resty-ffi@localhost>
Section: httpd
Priority: optional
Installed-Size: $installed_kib
Depends: libc6 (>= 2.36), libgcc-s1, libnginx-mod-http-lua, lua-resty-core, lua-cjson, libpython3.11
Recommends: $recommends, python3-cffi
Suggests: nginx-light | nginx
Description: call Python, Java, Node.js, Rust and Go from nginx-lua without blocking
 resty-ffi lets OpenResty / nginx-lua code call runtimes written in
 Python, Java, JavaScript, Rust or Go in-process: a Lua coroutine hands a request to the
 runtime's own threads and yields; the answer resumes it. Works with
 Debian's stock nginx and libnginx-mod-http-lua: nothing is recompiled.
 Runtimes written for lua-resty-ffi load unchanged (ngx.load_ffi).
 .
 This package holds the core, the Python, Java and Node.js loaders, the gRPC
 runtime, the Rust echo runtime and the Lua modules, where Debian's
 nginx-lua finds them with no paths configured.
EOF

find "$stage" -type d -exec chmod 0755 {} +
deb=$out/resty-ffi_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$root/$deb"
