# Sourced by ci/debian-root.sh and ci/debian-build.sh: where Debian's packages
# come from, and the few mounts a chroot into a Debian root needs.
#
# Every mount made here is undone by leave_root (or release_mounts before a
# root is removed or copied), so a root never goes away with a host folder
# still bound into it.

# The host's Debian mirror (debootstrap and the roots use it as apt does).
debian_mirror() {
    local m
    m=$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null |
        sed 's/^URIs: *//' | grep -v security | grep '/debian/*$' | head -n1 || true)
    echo "${m:-http://deb.debian.org/debian}"
}

debian_security_mirror() {
    local m
    m=$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null |
        sed 's/^URIs: *//' | grep security | head -n1 || true)
    echo "${m:-http://deb.debian.org/debian-security}"
}

# deb822 sources for one release: main, updates and security.
debian_sources() {
    cat <<EOF
Types: deb
URIs: $(debian_mirror)
Suites: $1 $1-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $(debian_security_mirror)
Suites: $1-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
}

_mounted_here=()

# mount_once SRC DEST [mount options...]: mounts unless DEST already is a
# mount point, and remembers it for leave_root.
mount_once() {
    local src=$1 dest=$2
    shift 2
    mountpoint -q "$dest" && return 0
    mkdir -p "$dest"
    mount "$@" "$src" "$dest"
    _mounted_here=("$dest" "${_mounted_here[@]}")
}

# /proc for the chroot (the JVM, Python and apt need it).
enter_root() {
    mount_once proc "$1/proc" -t proc
}

leave_root() {
    local m
    for m in "${_mounted_here[@]}"; do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    _mounted_here=()
}

# Unmounts everything mounted under a root (deepest first).
release_mounts() {
    local root m
    root=$(readlink -f "$1")
    awk -v r="$root/" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r |
        while read -r m; do umount "$m" 2>/dev/null || umount -l "$m"; done
}

# with_host_certs ROOT CMD...: runs CMD with the host's CA bundle bound
# read-only over the root's /etc/ssl/certs, so pip and cargo inside the
# root reach the package registries exactly as they do on the host.
with_host_certs() {
    local root=$1 rc=0
    shift
    mkdir -p "$root/etc/ssl/certs"
    mount --bind /etc/ssl/certs "$root/etc/ssl/certs"
    mount -o remount,bind,ro "$root/etc/ssl/certs"
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    CARGO_HTTP_CAINFO=/etc/ssl/certs/ca-certificates.crt \
        "$@" || rc=$?
    umount "$root/etc/ssl/certs"
    return $rc
}
