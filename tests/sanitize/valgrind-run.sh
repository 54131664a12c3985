#!/bin/sh
# Runs tests/sanitize/idle_pair.c under valgrind (memcheck) with the shim
# preloaded, an idle timeout and an info log to a file:
#
#   sh tests/sanitize/valgrind-run.sh LIB PROG OUTDIR
#
# Fails on any memcheck error, on a definite leak, when the program fails
# (the pair was not cut, or cut early), or when the shim's log shows no cut.
# valgrind puts its own preload libraries first and the program's
# LD_PRELOAD after them, which is what we want here.
set -u

lib=${1:?usage: valgrind-run.sh LIB PROG OUTDIR}
prog=${2:?PROG}
out=${3:?OUTDIR}
me=check-valgrind
limit_ms=300

command -v valgrind >/dev/null 2>&1 || {
    echo "$me: valgrind is not installed (scripts/install-deps.sh installs it)" >&2; exit 1; }
[ -f "$lib" ] || { echo "$me: $lib not found" >&2; exit 1; }
mkdir -p "$out" || exit 1
vlog=$out/valgrind.log
tlog=$out/tcpkeep.log
rm -f "$vlog" "$tlog"

# The launcher (Debian's /usr/bin/valgrind script, then valgrind.bin) also
# gets the shim, harmlessly: it makes no socket. The tool itself is static.
LD_PRELOAD=$lib TCPKEEP_IDLE_TIMEOUT=${limit_ms}ms TCPKEEP_LOG=$tlog TCPKEEP_LOG_LEVEL=info \
    valgrind --tool=memcheck --error-exitcode=99 --exit-on-first-error=no \
             --leak-check=full --errors-for-leak-kinds=definite --show-leak-kinds=definite \
             --track-origins=yes --track-fds=no --log-file="$vlog" \
             "$prog" $limit_ms
rc=$?

bad=
case $rc in
0) ;;
99) bad="memcheck found errors or a definite leak" ;;
*) bad="the program failed (status $rc)" ;;
esac
grep -q "ERROR SUMMARY: 0 errors" "$vlog" || bad=${bad:-"memcheck found errors"}
grep -q "definitely lost: [1-9]" "$vlog" && bad=${bad:-"a definite leak"}
cuts=$(grep -c "shut down" "$tlog" 2>/dev/null)
[ "${cuts:-0}" -ge 1 ] || bad=${bad:-"the shim's log shows no cut ($tlog)"}
if [ -n "$bad" ]; then
    cat "$vlog"
    [ -f "$tlog" ] && sed 's/^/    log: /' "$tlog"
    echo "$me: FAILED: $bad"
    exit 1
fi
sed 's/^/    log: /' "$tlog"
grep -E "ERROR SUMMARY|definitely lost|in use at exit" "$vlog" | sed 's/^==[0-9]*== */    valgrind: /'
echo "$me: no memcheck error, no definite leak"
