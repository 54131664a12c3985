#!/bin/sh
# Installs what `make bench` needs, if it is missing: nginx-light and wrk
# (the web-server benchmark), valgrind (instruction counts), linux-perf when
# the distribution has it, python3 (the driver), procps/util-linux (prlimit).
# Run by `make bench` and `make bench-smoke`. On Debian as root: apt-get,
# only for what `dpkg -s` says is missing, so repeated runs are fast and work
# offline. Elsewhere: lists what is missing and fails.
#
# Installing nginx must not start a system nginx on port 80: when the
# machine has no /usr/sbin/policy-rc.d, a temporary one that forbids service
# starts is put in place for the apt-get run and removed afterwards.
#
# Exit status: 0 all present (or installed); 1 something required is missing.

REQUIRED="build-essential python3 procps util-linux valgrind nginx-light wrk"
OPTIONAL="linux-perf"

me=install-bench-deps

installed() {
    dpkg -s "$1" 2>/dev/null | grep -q '^Status: [a-z]* ok installed$'
}

provided() {
    case $1 in
    build-essential) command -v gcc && command -v make ;;
    python3)         command -v python3 ;;
    procps)          command -v ps ;;
    util-linux)      command -v prlimit ;;
    valgrind)        command -v valgrind ;;
    nginx-light)     command -v nginx || [ -x /usr/sbin/nginx ] ;;
    wrk)             command -v wrk ;;
    linux-perf)      command -v perf ;;
    *)               false ;;
    esac >/dev/null 2>&1
}

have() {
    if command -v dpkg >/dev/null 2>&1; then installed "$1"; else provided "$1"; fi
}

missing=
for p in $REQUIRED; do
    have "$p" || missing="$missing $p"
done
optional_missing=
for p in $OPTIONAL; do
    have "$p" || optional_missing="$optional_missing $p"
done
missing=${missing# }
optional_missing=${optional_missing# }

if [ -z "$missing" ] && [ -z "$optional_missing" ]; then
    echo "$me: all benchmark dependencies present"
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

log=$(mktemp "${TMPDIR:-/tmp}/install-bench-deps.XXXXXX") || exit 1
policy_made=
cleanup() {
    rm -f "$log"
    if [ -n "$policy_made" ]; then rm -f /usr/sbin/policy-rc.d; fi
}
trap cleanup EXIT
trap 'exit 1' HUP INT TERM

DEBIAN_FRONTEND=noninteractive
export DEBIAN_FRONTEND
apt_opts="-o DPkg::Lock::Timeout=300 -o Acquire::Retries=3"

if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# temporary, from libtcpkeep scripts/install-bench-deps.sh\nexit 101\n' \
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
