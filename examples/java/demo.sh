#!/usr/bin/env bash
# Adds the Java examples to the demo (ci/demo.sh runs every
# examples/*/demo.sh with STAGE set): builds the examples jar with Maven,
# stages it, passes it to the workers as CLASSPATH (demo.d/*.main is
# included in nginx.conf's main context), serves examples/java/nginx.conf
# and names the requests the demo shows ("PATH [BODY]" per line).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
log=$(mktemp)
(cd "$here" && mvn -q -B -Dstyle.color=never package) > "$log" 2>&1 || { cat "$log"; exit 1; }
rm -f "$log"
mkdir -p "$STAGE/java"
cp "$here/target/resty-ffi-examples.jar" "$STAGE/java/"
echo "env CLASSPATH=$STAGE/java/resty-ffi-examples.jar;" > "$STAGE/demo.d/java.main"
cp "$here/nginx.conf" "$STAGE/demo.d/java.conf"
cat > "$STAGE/demo.d/java.locations" <<'LOCATIONS'
/java/echo hello-from-a-jnr-ffi-runtime-in-lua-resty-ffi-style
/java/echo-handler hello-from-a-java-handler
/java/markdown # Markdown *rendered* by commonmark-java
LOCATIONS
