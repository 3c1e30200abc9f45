#!/usr/bin/env bash
# Compiles the packaged libraries (loader/*, runtimes/*) for another Debian
# release inside its cached build root (ci/debian-root.sh --kind build):
#
#   ci/debian-build.sh --debian 13|12
#
# The host's Rust toolchain (RUSTUP_HOME) is bind-mounted read-only and its
# cargo home (CARGO_HOME: registry cache, proxies) read-write, so the root
# needs no Rust of its own and crates downloaded once serve both; the host's
# CA bundle is bound over the root's so cargo reaches the crate registry as
# it does on the host. The target folder is cached per release under
# /var/cache/resty-ffi (debian<N>-target), so a later run, from any
# checkout, rebuilds only the workspace's own crates. Cargo judges those
# fresh by file times, so a checkout building after another checkout's
# newer build would get the other's libraries: the folder remembers which
# checkout built last (.resty-ffi-checkout), and another one first cleans
# the workspace's crates (cargo clean -p; dependencies stay). Each checkout
# is mounted at a path of its own (a hash of its host path). PYO3_PYTHON
# names that release's python3.X: the Python loader links its libpython.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/.." && pwd)
release=
while [ $# -gt 0 ]; do
    case $1 in
        --debian) release=$2; shift 2 ;;
        *) echo "debian-build.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
# shellcheck source=ci/debian-releases.sh
. "$here/debian-releases.sh"
debian_release "$release"
cache=${RESTY_FFI_ROOTS:-/var/cache/resty-ffi}
broot=$(bash "$here/debian-root.sh" --debian "$release" --kind build | tail -n1)
target=$cache/debian$release-target
cargo_home=${CARGO_HOME:-$HOME/.cargo}
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
mkdir -p "$target"

# the crates whose libraries the package ships
pkgs=()
for toml in "$src"/loader/*/Cargo.toml "$src"/runtimes/*/Cargo.toml; do
    pkgs+=(-p "$(sed -n 's/^name = "\(.*\)"/\1/p' "$toml" | head -n1)")
done

# shellcheck source=ci/debian-mounts.sh
. "$here/debian-mounts.sh"
enter_root "$broot"
trap 'leave_root' EXIT
in=/opt/resty-ffi
in_src=$in/src-$(printf %s "$src" | sha256sum | cut -c1-12)
mount_once "$src" "$broot$in_src" --bind
mount_once "$target" "$broot$in/target" --bind
mount_once "$cargo_home" "$broot$in/cargo" --bind
mount_once "$rustup_home" "$broot$in/rustup" --bind -o ro
# the toolchain the host's cargo would use here (rustup settings or override)
rust_env=()
toolchain=$(rustup show active-toolchain 2>/dev/null | cut -d' ' -f1 || true)
[ -n "$toolchain" ] && rust_env+=(RUSTUP_TOOLCHAIN="$toolchain")

# another checkout built last: its workspace crates may look fresh here
stamp=$target/.resty-ffi-checkout
clean=0
[ "$(cat "$stamp" 2>/dev/null)" = "$src" ] || clean=1

t0=$(date +%s)
json=$(mktemp)
trap 'leave_root; rm -f "$json"' EXIT
with_host_certs "$broot" chroot "$broot" env -i \
    HOME=/root PATH="$in/cargo/bin:/usr/bin:/bin" \
    CARGO_HOME="$in/cargo" RUSTUP_HOME="$in/rustup" "${rust_env[@]}" \
    CARGO_TARGET_DIR="$in/target" CARGO_TERM_COLOR=never \
    CARGO_HTTP_CAINFO=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    PYO3_PYTHON="/usr/bin/python$py" JAVA_HOME=/usr/lib/jvm/default-java \
    CLEAN="$clean" \
    sh -c 'cd "$1" && shift && { [ "$CLEAN" = 0 ] || cargo clean --release "$@" >&2; } &&
           cargo build --release --lib --message-format=json-render-diagnostics "$@"' \
    sh "$in_src" "${pkgs[@]}" > "$json"
echo "$src" > "$stamp"
# The target folder is shared by every checkout: copy out exactly the
# libraries this build made (and the Java API jar loader/java's build puts
# beside them) into this checkout's target/debian<N>-release.
out=$src/target/debian$release-release
rm -rf "$out"
mkdir -p "$out"
python3 - "$json" "$in/target" "$target" "$out" <<'PY'
import json, shutil, sys
log, inside, outside, out = sys.argv[1:]
for line in open(log):
    msg = json.loads(line) if line.startswith("{") else {}
    if msg.get("reason") == "compiler-artifact" and "cdylib" in msg["target"]["crate_types"]:
        for f in msg["filenames"]:
            if f.endswith(".so"):
                shutil.copy2(outside + f[len(inside):], out)
PY
cp "$target/release/resty-ffi.jar" "$out/"
echo "debian-build: Debian $release built in $(( $(date +%s) - t0 )) s ($out)"
