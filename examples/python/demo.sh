#!/usr/bin/env bash
# Adds the Python examples to the demo (ci/demo.sh runs every
# examples/*/demo.sh with STAGE set): copies this folder into the stage,
# serves examples/python/nginx.conf from there, and names the requests the
# demo shows ("PATH [BODY]" per line) and the streams it shows with curl -N
# (a PATH per line).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cp -r "$here" "$STAGE/python"
sed "s#/opt/resty-ffi/examples/python#$STAGE/python#g" "$here/nginx.conf" \
    > "$STAGE/demo.d/python.conf"
cat > "$STAGE/demo.d/python.locations" <<'LOCATIONS'
/python/echo hello-from-a-lua-resty-ffi-cffi-runtime
/python/echo-handler hello-from-a-handler
/python/hello?name=nginx
/python/fetch?url=http://127.0.0.1:@PORT@/
LOCATIONS
# streams: shown with curl -N and each line's arrival time
cat > "$STAGE/demo.d/python.streams" <<'STREAMS'
/python/sse?prompt=hello
STREAMS
