#!/bin/sh
# make demo: libtcpkeep on a legacy-style server.
#
# Starts a python3 echo server that never times out its clients, under the
# shim through scripts/tcpkeep with an embedded default (idle limit 2 s,
# keepalive 60/10/5, log level info); connects an idle client and an active
# one (a line every 0.5 s); prints the keepalive timer the kernel shows for
# the server's accepted sockets, when the idle client was cut off, and that
# the active one is still connected; stops what it started, by PID.
# Exit status 0 if all of that is as it should be, 1 otherwise.
# Takes about 5 s; every wait is bounded.

set -u

IDLE=2          # s: TCPKEEP_IDLE_TIMEOUT
KEEPIDLE=60     # s
KEEPINTVL=10    # s
KEEPCNT=5
RUN_FOR=4       # s: how long the active client keeps talking

root=$(cd -P -- "$(dirname -- "$0")/.." && pwd -P) || exit 1
lib=$root/build/libtcpkeep.so
wrapper=$root/scripts/tcpkeep

fail() {
    echo "demo FAILED: $*" >&2
    exit 1
}

[ -f "$lib" ] || fail "$lib is missing: run make first"
python=$(command -v python3) || fail "python3 is missing: run make deps"
command -v ss >/dev/null 2>&1 || fail "ss is missing (iproute2): run make deps"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tcpkeep-demo.XXXXXX") || fail "cannot make a temporary directory"
job_pid=
server_pid=

stop_pid() {
    # TERM, up to 2 s, then KILL.
    [ -n "$1" ] || return 0
    kill -s 0 "$1" 2>/dev/null || return 0
    kill "$1" 2>/dev/null
    n=0
    while kill -s 0 "$1" 2>/dev/null && [ "$n" -lt 20 ]; do
        sleep 0.1
        n=$((n + 1))
    done
    kill -s 0 "$1" 2>/dev/null && kill -s KILL "$1" 2>/dev/null
    return 0
}

cleanup() {
    stop_pid "$server_pid"
    [ "$job_pid" != "$server_pid" ] && stop_pid "$job_pid"
    [ -n "$job_pid" ] && wait "$job_pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' HUP INT TERM

# The legacy server: threaded, line echo, no timeout of any kind. Writes
# "PORT PID" to the file named by its argument once it listens.
cat >"$tmp/server.py" <<'EOF'
import os, socketserver, sys

class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(line)

class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

srv = Server(("127.0.0.1", 0), Echo)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write("%d %d\n" % (srv.server_address[1], os.getpid()))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
srv.serve_forever()
EOF

# The clients and the checks (not under the shim).
cat >"$tmp/clients.py" <<'EOF'
import ctypes, os, re, socket, struct, subprocess, sys, threading, time

port, server_pid = int(sys.argv[1]), int(sys.argv[2])
idle_limit, keepidle, keepintvl, keepcnt, run_for = map(int, sys.argv[3:8])
MARGIN = 0.25          # the contract: cut no later than the limit + 0.25 s
SLACK = 0.10           # scheduling of this script and of the FIN on loopback
failures = []

def problem(msg):
    failures.append(msg)
    print("  PROBLEM: " + msg)

idle = socket.create_connection(("127.0.0.1", port), timeout=5)
t_idle = time.monotonic()
active = socket.create_connection(("127.0.0.1", port), timeout=5)
t_active = time.monotonic()
idle_port, active_port = idle.getsockname()[1], active.getsockname()[1]
print("connected an idle client (127.0.0.1:%d) and an active client (127.0.0.1:%d, "
      "one line every 0.5 s)" % (idle_port, active_port))

# The idle client only waits for the server to hang up.
cut = {}
def wait_idle():
    idle.settimeout(idle_limit + 3)
    try:
        data = idle.recv(1)
        cut["after"] = time.monotonic() - t_idle
        cut["how"] = "end of file" if data == b"" else "unexpected data %r" % data
    except socket.timeout:
        cut["after"] = None
    except OSError as e:
        cut["after"] = time.monotonic() - t_idle
        cut["how"] = "error: %s" % e
waiter = threading.Thread(target=wait_idle, daemon=True)
waiter.start()

def ss_timer(text):
    """ss's print_ms_timer: [Nmin][Nsec | N.NNNms | NNNms] -> seconds."""
    m = re.fullmatch(r"(?:(\d+)min)?(?:(\d+)sec|(\d+)\.(\d+)ms|(\d+)ms)?", text)
    if not m or not text:
        return None
    mins, secs, s2, frac, ms = m.groups()
    v = int(mins or 0) * 60 + int(secs or 0)
    if s2 is not None:
        v += int(s2) + int(frac) / 10 ** len(frac)
    if ms is not None:
        v += int(ms) / 1000
    return v

def read_options(inode):
    """The server socket's options, through pidfd_getfd (needs ptrace rights)."""
    fd = None
    for name in os.listdir("/proc/%d/fd" % server_pid):
        try:
            if os.readlink("/proc/%d/fd/%s" % (server_pid, name)) == "socket:[%s]" % inode:
                fd = int(name)
                break
        except OSError:
            pass
    if fd is None:
        raise OSError("socket inode %s not found in /proc/%d/fd" % (inode, server_pid))
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(server_pid)
    try:
        mine = libc.syscall(438, pidfd, fd, 0)      # SYS_pidfd_getfd
        if mine < 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    finally:
        os.close(pidfd)
    try:
        s = socket.socket(fileno=mine)
        try:
            return fd, (s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                        s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                        s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                        s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT))
        finally:
            s.detach()
    finally:
        os.close(mine)

def show_kernel_view():
    out = subprocess.run(["ss", "-tnoe", "state", "established", "sport", "=", ":%d" % port],
                         capture_output=True, text=True, timeout=5).stdout
    try:
        default = int(open("/proc/sys/net/ipv4/tcp_keepalive_time").read())
    except (OSError, ValueError):
        default = None
    print("the kernel's view (ss -tnoe) of the server's accepted sockets, %.2f s in:"
          % (time.monotonic() - t_idle))
    seen = {}
    for line in out.splitlines():
        m = re.search(r"127\.0\.0\.1:%d\s+127\.0\.0\.1:(\d+)" % port, line)
        if m:
            seen[int(m.group(1))] = line
    for label, cport in (("idle client  ", idle_port), ("active client", active_port)):
        line = seen.get(cport)
        if line is None:
            problem("no established server socket for the %s (port %d)" % (label.strip(), cport))
            continue
        t = re.search(r"timer:\((\w+),([^,]*),(\d+)\)", line)
        if not t:
            problem("the %s's server socket has no timer: SO_KEEPALIVE is not set"
                    % label.strip())
            continue
        kind, left, probes = t.group(1), ss_timer(t.group(2)), t.group(3)
        if kind != "keepalive":
            # e.g. "on" while a line is in flight: say so, it is not an error
            print("  %s: timer %s (%s), not the keepalive timer at this instant"
                  % (label, kind, t.group(0)))
            continue
        print("  %s: keepalive timer, first probe in %s s, %s probes sent  [%s]"
              % (label, "?" if left is None else "%.1f" % left, probes, t.group(0)))
        if left is None or left > keepidle + 1 or left < keepidle - 10:
            problem("the keepalive timer should show about %d s (TCPKEEP_KEEPIDLE)" % keepidle)
        if label.startswith("idle"):
            ino = re.search(r"ino:(\d+)", line)
            try:
                if not ino:
                    raise OSError("no inode in ss output")
                fd, (ka, ki, kv, kc) = read_options(ino.group(1))
                print("  options on the server's fd %d (pidfd_getfd + getsockopt): SO_KEEPALIVE %s, "
                      "TCP_KEEPIDLE %d s, TCP_KEEPINTVL %d s, TCP_KEEPCNT %d"
                      % (fd, "on" if ka else "off", ki, kv, kc))
                if (bool(ka), ki, kv, kc) != (True, keepidle, keepintvl, keepcnt):
                    problem("expected SO_KEEPALIVE on, %d/%d/%d" % (keepidle, keepintvl, keepcnt))
            except (OSError, AttributeError) as e:
                print("  (ss cannot show KEEPINTVL or KEEPCNT, and reading them from the "
                      "server failed: %s)" % e)
    if default is not None:
        print("  (without the shim: no keepalive at all; the kernel's own TCP_KEEPIDLE is %d s)"
              % default)

# The active client: a line every 0.5 s, each echoed back, for run_for s.
sent = echoed = 0
shown = False
rfile = active.makefile("rb")
deadline = t_active + run_for
while True:
    now = time.monotonic()
    if not shown and now - t_idle >= 0.95:
        show_kernel_view()
        shown = True
    if now >= deadline:
        break
    try:
        sent += 1
        active.sendall(b"line %d\n" % sent)
        if rfile.readline() == b"line %d\n" % sent:
            echoed += 1
    except OSError as e:
        problem("active client: %s after %.2f s" % (e, time.monotonic() - t_active))
        break
    next_at = t_active + 0.5 * sent
    time.sleep(max(0.0, min(next_at, deadline) - time.monotonic()))
if not shown:
    show_kernel_view()

# Still connected? One more line must come back.
try:
    active.sendall(b"still there?\n")
    alive = rfile.readline() == b"still there?\n"
except OSError:
    alive = False
alive_after = time.monotonic() - t_active

waiter.join(timeout=max(0.0, t_idle + idle_limit + 3.5 - time.monotonic()))
after = cut.get("after")
if after is None:
    problem("the idle client was not cut off within %d s" % (idle_limit + 3))
else:
    print("idle client:   cut off after %.2f s (%s); limit %d s, due by %.2f s"
          % (after, cut.get("how"), idle_limit, idle_limit + MARGIN))
    if after < idle_limit - 0.01:
        problem("cut off before the limit")
    elif after > idle_limit + MARGIN + SLACK:
        problem("cut off %.2f s late" % (after - idle_limit - MARGIN))
    if cut.get("how") != "end of file":
        problem("the idle client saw %s, not end of file" % cut.get("how"))

if alive and echoed == sent:
    print("active client: still connected after %.2f s, %d of %d lines echoed"
          % (alive_after, echoed, sent))
else:
    problem("active client: connected %s after %.2f s, %d of %d lines echoed"
            % ("yes" if alive else "no", alive_after, echoed, sent))

try:
    os.kill(server_pid, 0)
    print("server:        still running, as a legacy server should")
except OSError:
    problem("the server process is gone")

rfile.close()
active.close()
idle.close()
sys.exit(1 if failures else 0)
EOF

echo "tcpkeep demo: a python3 echo server that never times out its clients, run as"
echo "  tcpkeep --idle ${IDLE}s --keepidle $KEEPIDLE --keepintvl $KEEPINTVL --keepcnt $KEEPCNT --log-level info -- python3 server.py"

TCPKEEP_LIBRARY=$lib "$wrapper" --idle "${IDLE}s" --keepidle "$KEEPIDLE" \
    --keepintvl "$KEEPINTVL" --keepcnt "$KEEPCNT" --log-level info \
    -- "$python" "$tmp/server.py" "$tmp/port" 2>"$tmp/server.log" &
job_pid=$!

n=0
while [ ! -s "$tmp/port" ] && [ "$n" -lt 100 ]; do
    if ! kill -s 0 "$job_pid" 2>/dev/null; then
        cat "$tmp/server.log" >&2
        fail "the server exited before it listened"
    fi
    sleep 0.05
    n=$((n + 1))
done
[ -s "$tmp/port" ] || { cat "$tmp/server.log" >&2; fail "the server did not listen within 5 s"; }
read -r port server_pid <"$tmp/port" || fail "cannot read the server's port"
echo "server: pid $server_pid, listening on 127.0.0.1:$port"

if command -v timeout >/dev/null 2>&1; then
    bound="timeout 20"
else
    bound=
fi
# shellcheck disable=SC2086 # $bound is a command prefix or nothing
(
    unset LD_PRELOAD
    exec $bound "$python" "$tmp/clients.py" "$port" "$server_pid" \
        "$IDLE" "$KEEPIDLE" "$KEEPINTVL" "$KEEPCNT" "$RUN_FOR"
)
status=$?

# What the shim itself said (TCPKEEP_LOG_LEVEL=info: one line per cut).
if [ -s "$tmp/server.log" ]; then
    echo "the shim's log (server's stderr):"
    sed 's/^/  /' "$tmp/server.log"
fi
if ! grep -q 'idle for .* shut down' "$tmp/server.log"; then
    echo "  PROBLEM: the shim logged no idle cut at level info"
    status=1
fi

stop_pid "$server_pid"
[ "$job_pid" != "$server_pid" ] && stop_pid "$job_pid"
wait "$job_pid" 2>/dev/null
echo "stopped the server (pid $server_pid)"
server_pid=
job_pid=

if [ "$status" -ne 0 ]; then
    fail "see the PROBLEM lines above"
fi
echo "demo OK: the idle connection was cut on time, the active one kept, keepalive set as configured"
