#!/usr/bin/env bash
# Builds the Debian package: target/debian/resty-ffi_<version>~deb<N>_amd64.deb.
#
#   ci/package.sh                 for the Debian the host runs
#   ci/package.sh --debian 13|12  for that release, compiled inside a cached
#                                 debootstrap root of it (ci/debian-root.sh
#                                 --kind build) with the host's Rust
#                                 toolchain and cargo home bind-mounted, so
#                                 the Python loader links that release's
#                                 libpython (PYO3_PYTHON) and the libraries
#                                 need no newer glibc than it has
#
# Everything goes where Debian's nginx-lua looks by default, so an
# nginx.conf needs no lua_package_path, lua_package_cpath or
# LD_LIBRARY_PATH:
#   /usr/share/lua/5.1/                  resty_ffi.lua, resty/ffi.lua, resty/ffi/*.lua
#   /usr/lib/x86_64-linux-gnu/lua/5.1/   libresty_ffi.so, the loaders and runtimes,
#                                        plus lua-resty-ffi's loader names as links
#   /usr/share/java/resty-ffi.jar        the Java API, to compile runtimes against
#                                        (a link to resty-ffi-<version>.jar)
#   /usr/share/doc/resty-ffi/            README, docs, copyright, changelog.gz
# Built with dpkg-deb (a plain, well-kept tool) from a staged root.
# Dependencies are named for the release: the libpython the Python loader
# is linked against (read from the library itself), the glibc its symbols
# need. RESTY_FFI_SKIP_BUILD=1 packages what is already built (the host's
# target/release, or ci/debian-build.sh's target/debian<N>-release).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
host_release=$(cut -d. -f1 /etc/debian_version)
release=$host_release
while [ $# -gt 0 ]; do
    case $1 in
        --debian) release=$2; shift 2 ;;
        *) echo "package: unknown argument $1 (--debian 12|13)" >&2; exit 2 ;;
    esac
done
# shellcheck source=ci/debian-releases.sh
. ci/debian-releases.sh
debian_release "$release"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)~deb$release
arch=$(dpkg --print-architecture)
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)

if [ "$release" = "$host_release" ]; then
    release_dir=target/release
    if [ "${RESTY_FFI_SKIP_BUILD:-0}" != 1 ]; then
        # what building needs (README, "Building"), as the other commands do
        bash ci/setup.sh
        cargo build --release --workspace
    fi
else
    release_dir=target/debian$release-release
    if [ "${RESTY_FFI_SKIP_BUILD:-0}" != 1 ]; then
        bash ci/debian-build.sh --debian "$release" >&2
    fi
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
    [ -f "$release_dir/$f" ] || { echo "package: $release_dir/$f is missing" >&2; exit 1; }
done
for so in "$release_dir"/lib*.so; do
    install -m 0644 "$so" "$lib/"
    # release builds keep line tables for profiling; the package need not
    if command -v strip >/dev/null 2>&1; then
        strip --strip-unneeded "$lib/$(basename "$so")"
    fi
done
# lua-resty-ffi's names for our loaders, for code that bypasses our Lua
# layer's aliases (resty_ffi.lua resolves them by itself)
ln -sf libffi_python3.so "$lib/libresty_ffi_python.so"
ln -sf libffi_java.so "$lib/libresty_ffi_java.so"
# Java policy: name-version.jar, and the plain name as a link to it
mkdir -p "$stage/usr/share/java"
jar_version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
install -m 0644 "$release_dir/resty-ffi.jar" "$stage/usr/share/java/resty-ffi-$jar_version.jar"
ln -sf "resty-ffi-$jar_version.jar" "$stage/usr/share/java/resty-ffi.jar"

cp README.md "$doc/"
[ -d docs ] && cp -r docs "$doc/"
# a native package's changelog, in Debian's format, pointing at
# CHANGELOG.md (shipped next to it) for what changed
maintainer="resty-ffi developers <maintainers@users.noreply.r-seed-1f0d516b.example>"
when=$(date -R -u -d "@${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")
cp CHANGELOG.md "$doc/"
printf 'resty-ffi (%s) unstable; urgency=medium\n\n  * See CHANGELOG.md in this folder.\n\n -- %s  %s\n' \
    "$version" "$maintainer" "$when" | gzip -9n > "$doc/changelog.gz"
{
    cat <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: resty-ffi

Files: *
Copyright: $(sed -n 's/^Copyright (c) //p' LICENSE)
License: BSD-2-Clause
EOF
    # the license text, after its title and copyright lines
    sed -n '/^Redistribution/,$p' LICENSE | sed 's/^$/./; s/^/ /'
} > "$doc/copyright"

installed_kib=$(du -sk "$stage/usr" | cut -f1)
# the libpython the Python loader is linked against, the libnode the
# Node.js loader opens (it names libnode.so.N), and the newest glibc symbol
# version any library uses
libpython=$(objdump -p "$lib/libffi_python3.so" | sed -n 's/^ *NEEDED *\(libpython[0-9.]*\)\.so.*/\1/p')
libnode_built=$(grep -ao 'libnode\.so\.1[0-9][0-9]' "$lib/libffi_nodejs.so" | head -n1 | sed 's/\.so\.//')
for got in "$libpython:libpython$py" "$libnode_built:$libnode"; do
    [ "${got%%:*}" = "${got#*:}" ] || {
        echo "package: the loaders were built for ${got%%:*}, not Debian $release's ${got#*:} (another PYO3_PYTHON or libnode-dev?)" >&2
        exit 1
    }
done
glibc=$(objdump -T "$lib"/*.so | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n1)
# ffi_java's JVM and ffi_nodejs's libnode (that release's Node) are found
# at run time: recommended, not required
recommends="default-jre-headless, $libnode"
cat > "$stage/DEBIAN/control" <<EOF
Package: resty-ffi
Version: $version
Architecture: $arch
Maintainer: $maintainer
Section: httpd
Priority: optional
Installed-Size: $installed_kib
Depends: libc6 (>= $glibc), libgcc-s1, libnginx-mod-http-lua | openresty, lua-resty-core | openresty, lua-cjson | openresty, $libpython
Recommends: $recommends, python3-cffi
Suggests: nginx-light | nginx
Description: call Python, Java, Node.js, Rust and Go from nginx-lua without blocking
 resty-ffi lets OpenResty / nginx-lua code call runtimes written in
 Python, Java, JavaScript, Rust or Go in-process: a Lua coroutine hands a
 request to the runtime's own threads and yields; the answer resumes it.
 Works with Debian's stock nginx and libnginx-mod-http-lua: nothing is
 recompiled.
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
