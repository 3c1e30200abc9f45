#!/usr/bin/env bash
# Adds gRPC to the demo (ci/demo.sh runs every examples/*/demo.sh with STAGE
# and ROOT set): starts the tonic test server on a free loopback port (it
# stops by itself once the stage folder is removed), serves
# examples/grpc/nginx.conf pointed at it, and names the requests to show.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$STAGE/grpc"
cp -r "$here/proto" "$STAGE/grpc/proto"
out=$STAGE/grpc/server.out
"$ROOT/target/release/grpc_test_server" --listen 127.0.0.1:0 --while-exists "$STAGE" \
    > "$out" 2>&1 &
addr=""
for _ in $(seq 100); do
    addr=$(sed -n 's/^listening on //p' "$out")
    [ -n "$addr" ] && break
    sleep 0.1
done
if [ -z "$addr" ]; then
    echo "grpc_test_server did not start: $(cat "$out")" >&2
    exit 1
fi
sed -e "s#/opt/resty-ffi/examples/grpc#$STAGE/grpc#g" -e "s#127.0.0.1:50051#$addr#g" \
    "$here/nginx.conf" > "$STAGE/demo.d/grpc.conf"
cat > "$STAGE/demo.d/grpc.locations" <<'LOCATIONS'
/grpc/hello?name=nginx
/grpc/features
LOCATIONS
