#!/bin/sh
# Installs what `make check` and `make demo` need, if it is missing.
# Run by `make deps`. On Debian as root: apt-get, only when something is
# missing (so repeated runs are fast and work offline). Otherwise: lists
# what is missing and fails. One line of output on success.
#
# Exit status: 0 everything present (or installed), 1 something missing
# that could not be installed.

PACKAGES="build-essential uthash-dev libcmocka-dev netcat-openbsd socat iproute2 python3 procps strace valgrind
redis-server redis-tools nginx-light memcached wrk curl"

me=install-deps

installed() {
    # "install ok installed" or "hold ok installed"; not "deinstall ok config-files".
    dpkg -s "$1" 2>/dev/null | grep -q '^Status: [a-z]* ok installed$'
}

# Without dpkg (not Debian): look for what each package provides.
provided() {
    case $1 in
    build-essential) command -v gcc && command -v make && command -v g++ ;;
    uthash-dev)      header uthash.h ;;
    libcmocka-dev)   header cmocka.h ;;
    netcat-openbsd)  command -v nc ;;
    socat)           command -v socat ;;
    iproute2)        command -v ss ;;
    python3)         command -v python3 ;;
    procps)          command -v ps && command -v pgrep ;;
    strace)          command -v strace ;;
    valgrind)        command -v valgrind ;;
    redis-server)    command -v redis-server ;;
    redis-tools)     command -v redis-benchmark ;;
    nginx-light)     command -v nginx || [ -x /usr/sbin/nginx ] ;;
    memcached)       command -v memcached || [ -x /usr/sbin/memcached ] ;;
    wrk)             command -v wrk ;;
    curl)            command -v curl ;;
    *)               false ;;
    esac >/dev/null 2>&1
}

header() {
    for d in /usr/include /usr/local/include; do
        [ -f "$d/$1" ] && return 0
    done
    return 1
}

missing=
if command -v dpkg >/dev/null 2>&1; then
    for p in $PACKAGES; do
        installed "$p" || missing="$missing $p"
    done
else
    for p in $PACKAGES; do
        provided "$p" || missing="$missing $p"
    done
fi
missing=${missing# }

if [ -z "$missing" ]; then
    echo "$me: all dependencies present ($(echo "$PACKAGES" | wc -w | tr -d ' ') packages)"
    exit 0
fi

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "$me: missing: $missing" >&2
    if command -v apt-get >/dev/null 2>&1; then
        echo "$me: run as root, or: sudo apt-get install $missing" >&2
    else
        echo "$me: no apt-get here: install the equivalents of these Debian packages" >&2
    fi
    exit 1
fi

log=$(mktemp "${TMPDIR:-/tmp}/install-deps.XXXXXX") || exit 1
trap 'rm -f "$log"' EXIT
trap 'exit 1' HUP INT TERM

DEBIAN_FRONTEND=noninteractive
export DEBIAN_FRONTEND
# Wait for another apt/dpkg run (another `make check` at the same time).
apt_opts="-o DPkg::Lock::Timeout=300 -o Acquire::Retries=3"

# shellcheck disable=SC2086 # word splitting of the option and package lists is wanted
if apt-get $apt_opts update >"$log" 2>&1 &&
   apt-get $apt_opts install -y --no-install-recommends $missing >>"$log" 2>&1; then
    still=
    for p in $missing; do
        installed "$p" || still="$still $p"
    done
    if [ -z "$still" ]; then
        echo "$me: installed $missing"
        exit 0
    fi
    cat "$log" >&2
    echo "$me: still missing after apt-get:$still" >&2
    exit 1
fi
cat "$log" >&2
echo "$me: apt-get failed; missing: $missing" >&2
exit 1
