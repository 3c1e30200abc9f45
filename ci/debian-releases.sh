# Sourced by ci/debian-root.sh, ci/debian-build.sh and ci/package.sh: what
# each supported Debian release gives the package, in one place
# (tests/harness.py's RELEASES says the same for the tests).

# debian_release N: sets `codename`, `py` (the python3.X whose libpython
# the Python loader links) and `libnode` (the package of the libnode the
# Node.js loader is built for) for Debian N; exits 2 for another release.
debian_release() {
    case $1 in
        12) codename=bookworm; py=3.11; libnode=libnode108 ;;
        13) codename=trixie; py=3.13; libnode=libnode115 ;;
        *) echo "$(basename "$0"): Debian '$1' is not supported (--debian 12 or 13)" >&2
           exit 2 ;;
    esac
}
