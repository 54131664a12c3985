#!/bin/sh
# Installs Debian packages the project needs, if they are missing.
#
#   install-deps.sh                      what `make check` and `make demo` need
#                                        (and, optional, systemd for systemd-analyze)
#   install-deps.sh [--name NAME] [--optional "PKG..."] PKG...
#                                        these (install-bench-deps.sh uses this)
#
# On Debian as root: apt-get, only when something is missing (so repeated
# runs are fast and work offline), with service starts forbidden for the
# run so that installing nginx or redis starts no system server. Otherwise:
# lists what is missing and fails. One line of output on success. Optional
# packages are installed when the archive has them; their absence is fine.
#
# Exit status: 0 everything required present (or installed), 1 not.

me=install-deps
optional=
optional_default="systemd"   # systemd-analyze verify, for test_systemd; absent in many containers
while [ $# -gt 0 ]; do
    case $1 in
    --name)     me=$2; shift 2 ;;
    --optional) optional=$2; shift 2 ;;
    *)          break ;;
    esac
done
required="$*"
[ -n "$required" ] || optional=${optional:-$optional_default}
[ -n "$required" ] || required="build-essential uthash-dev libcmocka-dev netcat-openbsd socat
iproute2 python3 procps strace valgrind redis-server redis-tools nginx-light memcached wrk curl
libkeepalive0 libjemalloc2"

installed() {
    # "install ok installed" or "hold ok installed"; not "deinstall ok config-files".
    dpkg -s "$1" 2>/dev/null | grep -q '^Status: [a-z]* ok installed$'
}

header() {
    for d in /usr/include /usr/local/include; do
        [ -f "$d/$1" ] && return 0
    done
    return 1
}

libfile() {
    for d in /usr/lib/x86_64-linux-gnu /usr/lib /usr/local/lib /lib; do
        [ -e "$d/$1" ] && return 0
    done
    return 1
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
    util-linux)      command -v prlimit ;;
    strace)          command -v strace ;;
    valgrind)        command -v valgrind ;;
    redis-server)    command -v redis-server ;;
    redis-tools)     command -v redis-benchmark ;;
    nginx-light)     command -v nginx || [ -x /usr/sbin/nginx ] ;;
    memcached)       command -v memcached || [ -x /usr/sbin/memcached ] ;;
    wrk)             command -v wrk ;;
    curl)            command -v curl ;;
    linux-perf)      command -v perf ;;
    libkeepalive0)   libfile libkeepalive.so ;;
    libjemalloc2)    libfile libjemalloc.so.2 ;;
    systemd)         command -v systemd-analyze ;;
    *)               false ;;
    esac >/dev/null 2>&1
}

have() {
    if command -v dpkg >/dev/null 2>&1; then installed "$1"; else provided "$1"; fi
}

missing=
for p in $required; do
    have "$p" || missing="$missing $p"
done
optional_missing=
for p in $optional; do
    have "$p" || optional_missing="$optional_missing $p"
done
missing=${missing# }
optional_missing=${optional_missing# }

if [ -z "$missing" ] && [ -z "$optional_missing" ]; then
    echo "$me: all dependencies present ($(echo $required $optional | wc -w | tr -d ' ') packages)"
    exit 0
fi

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    if [ -z "$missing" ]; then
        echo "$me: optional, not installed: $optional_missing"
        exit 0
    fi
    echo "$me: missing: $missing" >&2
    if command -v apt-get >/dev/null 2>&1; then
        echo "$me: run as root, or: sudo apt-get install $missing" >&2
    else
        echo "$me: no apt-get here: install the equivalents of these Debian packages" >&2
    fi
    exit 1
fi

log=$(mktemp "${TMPDIR:-/tmp}/$me.XXXXXX") || exit 1
policy_made=
cleanup() {
    rm -f "$log"
    if [ -n "$policy_made" ]; then rm -f /usr/sbin/policy-rc.d; fi
}
trap cleanup EXIT
trap 'exit 1' HUP INT TERM

DEBIAN_FRONTEND=noninteractive
export DEBIAN_FRONTEND
# Wait for another apt/dpkg run (another `make check` at the same time).
apt_opts="-o DPkg::Lock::Timeout=300 -o Acquire::Retries=3"

# No package's install may start a system service (nginx on port 80, say).
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# temporary, from libtcpkeep scripts/install-deps.sh\nexit 101\n' \
        >/usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d && policy_made=1
fi

# shellcheck disable=SC2086 # word splitting of the option and package lists is wanted
apt-get $apt_opts update >"$log" 2>&1 || true

# Optional ones only if the archive has them.
extra=
for p in $optional_missing; do
    if apt-cache show "$p" >/dev/null 2>&1; then extra="$extra $p"; fi
done

# shellcheck disable=SC2086
if [ -n "$missing$extra" ] &&
   ! apt-get $apt_opts install -y --no-install-recommends $missing $extra >>"$log" 2>&1; then
    # An optional package must not sink the required ones: try without it.
    # shellcheck disable=SC2086
    [ -n "$missing" ] && apt-get $apt_opts install -y --no-install-recommends $missing >>"$log" 2>&1
fi

still=
for p in $missing; do
    have "$p" || still="$still $p"
done
if [ -n "$still" ]; then
    cat "$log" >&2
    echo "$me: still missing after apt-get:$still" >&2
    exit 1
fi
echo "$me: installed ${missing:-nothing required}${extra:+; optional:$extra}"
exit 0
