#!/usr/bin/env bash
# Set-up for the Java loader (loader/java) and its examples/tests.
#
# - a JDK (javac builds the loader's small Java API; the JVM it embeds is
#   found at run time): Debian's default-jdk-headless when no javac exists;
# - Maven, which builds examples/java (its jars come from Maven Central).
#
# Idempotent: installed packages are skipped.
set -euo pipefail

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# javac 17 or later (the loader's API is compiled with --release 17)
javac_major() {
    javac -version 2>&1 | sed -n 's/^javac \([0-9]*\).*/\1/p'
}
missing=()
if ! command -v javac >/dev/null 2>&1 || [ "$(javac_major)" -lt 17 ]; then
    missing+=(default-jdk-headless)
fi
command -v mvn >/dev/null 2>&1 || missing+=(maven)
if [ ${#missing[@]} -gt 0 ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
