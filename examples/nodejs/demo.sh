#!/usr/bin/env bash
# Adds the Node.js examples to the demo (ci/demo.sh runs every
# examples/*/demo.sh with STAGE set): copies this folder and the npm
# packages ci/setup-nodejs.sh installed (escape-html) into the stage, passes
# them to the workers as NODE_PATH (demo.d/*.main is included in
# nginx.conf's main context), serves examples/nodejs/nginx.conf and names
# the requests the demo shows ("PATH [BODY]" per line).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
modules=${RESTY_FFI_NODE_MODULES:-/var/cache/resty-ffi/node}
mkdir -p "$STAGE/nodejs"
cp -r "$here/demo" "$here/html.js" "$STAGE/nodejs/"
cp -r "$modules/node_modules" "$STAGE/nodejs/node_modules"
echo "env NODE_PATH=$STAGE/nodejs:$STAGE/nodejs/node_modules;" > "$STAGE/demo.d/nodejs.main"
cp "$here/nginx.conf" "$STAGE/demo.d/nodejs.conf"
cat > "$STAGE/demo.d/nodejs.locations" <<'LOCATIONS'
/node/echo hello-from-lua-resty-ffi's-demo/echo.js
/node/escape <b>escaped by escape-html from npm</b>
/node/slow an-async-handler
LOCATIONS
