#!/usr/bin/env bash
# The demo: sets up the machine, builds, starts nginx with
# examples/demo/nginx.conf on a loopback port, shows nginx answering with
# results computed by each runtime, and stops it again.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
bash ci/setup.sh
if [ "${RESTY_FFI_SKIP_BUILD:-0}" != 1 ]; then
    cargo build --release --workspace
    (cd examples/go &&
        go build -buildmode=c-shared -o libffi_go_echo.so echo.go &&
        go build -buildmode=c-shared -o libffi_go_stream.so stream.go)
fi

# Workers run as nobody: stage what they load in a world-readable folder.
stage=$(mktemp -d /tmp/resty-ffi-demo-XXXXXX)
prefix=$stage/nginx
mkdir -p "$stage/lib" "$stage/demo.d" "$prefix/logs" "$prefix/tmp" "$prefix/conf"
cp -r lua "$stage/lua"
cp target/release/lib*.so examples/go/libffi_go_echo.so examples/go/libffi_go_stream.so \
    "$stage/lib/"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# optional demo parts: each language adds a conf snippet, its files and the
# requests to show (demo.d/*.locations: "PATH [BODY]" per line)
for part in examples/*/demo.sh; do
    [ -e "$part" ] && STAGE=$stage ROOT=$root bash "$part"
done
chmod -R a+rX "$stage"
sed -e "s#@PREFIX@#$prefix#g" -e "s#@STAGE@#$stage#g" -e "s#@PORT@#$port#g" \
    examples/demo/nginx.conf > "$prefix/conf/nginx.conf"
if [ "$(id -u)" -ne 0 ]; then sed -i '/^user /d' "$prefix/conf/nginx.conf"; fi

nginx -p "$prefix" -c "$prefix/conf/nginx.conf"
cleanup() {
    nginx -p "$prefix" -c "$prefix/conf/nginx.conf" -s quit 2>/dev/null || true
    sleep 1
    rm -rf "$stage"
}
trap cleanup EXIT
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done

show() {
    echo "\$ curl $*"
    curl -sS --max-time 30 "$@"
}
base=http://127.0.0.1:$port
show "$base/rust" -d 'bytes from curl'
show "$base/go?text=gopher"
show "$base/parallel"
# a stream: each line with its arrival time (blank lines, SSE's event
# separators, left out)
show_stream() {
    echo "\$ curl -N $1   # chunks as they are made, with arrival times"
    local start
    start=$(date +%s.%N)
    curl -sSN --max-time 30 "$1" | while IFS= read -r line; do
        [ -n "$line" ] || continue
        awk -v s="$start" -v n="$(date +%s.%N)" -v l="$line" 'BEGIN { printf "  +%.2fs  %s\n", n - s, l }'
    done
}
show_stream "$base/go-stream"
# streams of optional demo parts (demo.d/*.streams: a PATH per line)
cat "$stage"/demo.d/*.streams 2>/dev/null | sed "s#@PORT@#$port#g" |
while read -r path; do
    show_stream "$base$path"
    echo
done
cat "$stage"/demo.d/*.locations 2>/dev/null | sed "s#@PORT@#$port#g" |
while read -r path body; do
    if [ -n "$body" ]; then show "$base$path" -d "$body"; else show "$base$path"; fi
    echo
done
echo
sleep 1.2   # each worker publishes its metrics every second
echo "\$ curl $base/metrics | grep calls_total"
curl -sS "$base/metrics" | grep '^resty_ffi_calls_total' || true
echo
echo "nginx error.log (runtime output):"
grep -vE ' \[(notice|info)\] ' "$prefix/logs/error.log" | tail -n 20 || true
