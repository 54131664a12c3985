"""tcpkeep-tool: `tcpkeep inspect PID [--json]` on real processes, and
`tcpkeep stats PATH` on a file written here (the library's own file is
tested in test_stats.py).

The tool is the one built beside the library under test
($(BUILD)/tcpkeep-tool), or TCPKEEP_TEST_TOOL."""
import json
import os
import re
import resource
import shlex
import shutil
import socket
import subprocess
import time

from helpers import (ROOT, Fail, Skip, check, compile_c, finish, lib, read_line, run,
                     script, spawn, timeout, tmpdir, which)

COLUMNS = ["FD", "LOCAL", "PEER", "STATE", "KEEPALIVE", "IDLE", "INTVL", "CNT", "USER-TIMEOUT",
           "LAST-RECV", "LAST-SENT"]
JSON_KEYS = {"fd", "local", "peer", "state", "keepalive", "keepidle", "keepintvl", "keepcnt",
             "user_timeout_ms", "last_data_recv_s", "last_data_sent_s", "libtcpkeep"}


def tool():
    path = os.environ.get("TCPKEEP_TEST_TOOL")
    if path:
        check(os.access(path, os.X_OK), "TCPKEEP_TEST_TOOL=%r is not an executable" % path)
        return path
    for path in (os.path.join(os.path.dirname(lib()), "tcpkeep-tool"),
                 os.path.join(ROOT, "build", "tcpkeep-tool")):
        if os.access(path, os.X_OK):
            return path
    raise Fail("tcpkeep-tool is not built beside %s (make all builds it)" % lib())


# A program that makes N connections to its own listener, says "ready" with
# what the test needs to find them, then waits for EOF on stdin (bounded).
PAIRS = r'''
import socket, sys, select
n = int(sys.argv[1])
ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen(1024)
port = ls.getsockname()[1]
pairs = []
for i in range(n):
    c = socket.create_connection(("127.0.0.1", port), timeout=5)
    a, _ = ls.accept()
    c.sendall(b"x"); a.recv(1)
    pairs.append((c, a))
c, a = pairs[0]
v6 = socket.socket(socket.AF_INET6)
try:
    v6.bind(("::1", 0)); v6.listen(1); v6_port = v6.getsockname()[1]; v6_fd = v6.fileno()
except OSError:
    v6_port = v6_fd = -1
unix = socket.socket(socket.AF_UNIX)
print("ready", port, ls.fileno(), c.fileno(), a.fileno(), c.getsockname()[1], v6_fd, v6_port,
      unix.fileno(), flush=True)
select.select([sys.stdin], [], [], 120)
'''


class Pairs:
    def __init__(self, n=1, shim=True, env=None, argv=None):
        argv = argv or script(PAIRS, "pairs.py") + [str(n)]
        self.p = spawn(argv, shim=shim, env=env)
        line = read_line(self.p.stdout, 20, "the program's ready line")
        f = line.split()
        if f[:1] != ["ready"]:
            _, err = finish(self.p)
            raise Fail("unexpected line from the program: %r (stderr %r)" % (line, err[-400:]))
        (self.port, self.listen_fd, self.client_fd, self.accepted_fd, self.client_port,
         self.v6_fd, self.v6_port, self.unix_fd) = map(int, f[1:])
        self.pid = self.p.pid
        with open("/proc/%d/comm" % self.pid) as f:
            self.comm = f.read().strip()

    def stop(self):
        finish(self.p)


def inspect(pid, *args, user=None, limit=20, env=None):
    argv = [tool(), "inspect", str(pid)] + list(args)
    if user is not None:
        argv = user + argv
    return run(argv, shim=False, env=env, limit=limit)


def parse_table(out, what):
    """(header line, {fd: row dict}) from the text output."""
    lines = out.splitlines()
    check(len(lines) >= 2, "%s: expected a header and a table, got %r" % (what, out))
    check(lines[1].split() == COLUMNS, "%s: column titles %r" % (what, lines[1]))
    starts = [lines[1].index(c) for c in COLUMNS]
    rows = {}
    for line in lines[2:]:
        cells = line.split()
        check(len(cells) == len(COLUMNS), "%s: row %r has %d cells" % (what, line, len(cells)))
        # aligned: every cell starts under its title
        for title, start, cell in zip(COLUMNS, starts, cells):
            check(line[start:start + len(cell)] == cell,
                  "%s: %s cell %r is not under its title in %r" % (what, title, cell, line))
        rows[int(cells[0])] = dict(zip(COLUMNS, cells))
    return lines[0], rows


def test_tool_inspect_shows_shim_options():
    """A python3 server and client under the shim with TCPKEEP_KEEPIDLE=77:
    inspect shows "libtcpkeep loaded (LIB)", and each socket with its
    addresses, state, keepalive on and TCP_KEEPIDLE 77; UNIX sockets are left
    out."""
    prog = Pairs(env={"TCPKEEP_KEEPIDLE": "77"})
    rc, out, err = inspect(prog.pid)
    prog.stop()
    check(rc == 0 and err == "", "exit %s, stderr %r" % (rc, err))
    header, rows = parse_table(out, "inspect")
    want = "pid %d (%s): libtcpkeep loaded (%s)" % (prog.pid, prog.comm, lib())
    check(header == want, "header %r, expected %r" % (header, want))
    c = rows.get(prog.client_fd)
    check(c is not None, "no row for the client fd %d: %r" % (prog.client_fd, out))
    expect = {"LOCAL": "127.0.0.1:%d" % prog.client_port, "PEER": "127.0.0.1:%d" % prog.port,
              "STATE": "ESTABLISHED", "KEEPALIVE": "on", "IDLE": "77s"}
    for k, v in expect.items():
        check(c[k] == v, "client row: %s is %r, expected %r (%r)" % (k, c[k], v, c))
    a = rows.get(prog.accepted_fd)
    check(a and a["LOCAL"] == "127.0.0.1:%d" % prog.port and a["STATE"] == "ESTABLISHED"
          and a["KEEPALIVE"] == "on" and a["IDLE"] == "77s",
          "accepted row: %r" % (a,))
    check(re.fullmatch(r"\d+\.\d{3}s", a["LAST-RECV"]) and float(a["LAST-RECV"][:-1]) < 30,
          "accepted row: LAST-RECV %r" % a["LAST-RECV"])
    lst = rows.get(prog.listen_fd)
    check(lst and lst["STATE"] == "LISTEN" and lst["PEER"] == "0.0.0.0:*"
          and lst["KEEPALIVE"] == "on", "listener row: %r" % (lst,))
    if prog.v6_fd >= 0:
        v6 = rows.get(prog.v6_fd)
        check(v6 and v6["LOCAL"] == "[::1]:%d" % prog.v6_port and v6["PEER"] == "[::]:*",
              "IPv6 listener row: %r" % (v6,))
    check(prog.unix_fd not in rows, "the UNIX socket fd %d is listed: %r" % (prog.unix_fd, out))
    return "%s; client %s" % (header, " ".join("%s=%s" % (k, c[k]) for k in COLUMNS[1:]))


def _kernel_keepidle():
    with open("/proc/sys/net/ipv4/tcp_keepalive_time") as f:
        return int(f.read())


def test_tool_inspect_without_shim():
    """The same program without the shim: "libtcpkeep not loaded",
    keepalive off, the kernel's TCP_KEEPIDLE."""
    prog = Pairs(shim=False)
    rc, out, err = inspect(prog.pid)
    prog.stop()
    check(rc == 0 and err == "", "exit %s, stderr %r" % (rc, err))
    header, rows = parse_table(out, "inspect")
    want = "pid %d (%s): libtcpkeep not loaded" % (prog.pid, prog.comm)
    check(header == want, "header %r, expected %r" % (header, want))
    c = rows.get(prog.client_fd)
    idle = "%ds" % _kernel_keepidle()
    check(c and c["KEEPALIVE"] == "off" and c["IDLE"] == idle and c["STATE"] == "ESTABLISHED",
          "client row %r, expected keepalive off and IDLE %s" % (c, idle))
    return "%s; client KEEPALIVE=%s IDLE=%s" % (header, c["KEEPALIVE"], c["IDLE"])


def test_tool_inspect_json():
    """--json: a JSON array python parses, one object per TCP socket with
    every field; keepidle 77, keepalive true, libtcpkeep true, the times
    numbers (null on the listener)."""
    prog = Pairs(env={"TCPKEEP_KEEPIDLE": "77", "TCPKEEP_USER_TIMEOUT": "5s"})
    rc, out, err = inspect(prog.pid, "--json")
    prog.stop()
    check(rc == 0 and err == "", "exit %s, stderr %r" % (rc, err))
    try:
        socks = json.loads(out)
    except ValueError as e:
        raise Fail("not JSON: %s: %r" % (e, out[:400]))
    check(isinstance(socks, list), "not an array: %r" % out[:200])
    by_fd = {}
    for s in socks:
        check(isinstance(s, dict) and set(s) == JSON_KEYS, "object keys %r" % sorted(s))
        by_fd[s["fd"]] = s
    c = by_fd.get(prog.client_fd)
    check(c is not None, "no object for fd %d: %r" % (prog.client_fd, out))
    expect = {"local": "127.0.0.1:%d" % prog.client_port, "peer": "127.0.0.1:%d" % prog.port,
              "state": "ESTABLISHED", "keepalive": True, "keepidle": 77,
              "user_timeout_ms": 5000, "libtcpkeep": True}
    for k, v in expect.items():
        check(c[k] == v, "%s is %r, expected %r (%r)" % (k, c[k], v, c))
    for k in ("keepintvl", "keepcnt"):
        check(isinstance(c[k], int) and c[k] > 0, "%s is %r" % (k, c[k]))
    for k in ("last_data_recv_s", "last_data_sent_s"):
        check(isinstance(c[k], (int, float)) and 0 <= c[k] < 30, "%s is %r" % (k, c[k]))
    lst = by_fd.get(prog.listen_fd)
    check(lst and lst["state"] == "LISTEN" and lst["last_data_recv_s"] is None,
          "listener object %r" % (lst,))
    check(prog.unix_fd not in by_fd, "the UNIX socket is listed")
    return "%d objects; client %s" % (len(socks), json.dumps(c, sort_keys=True))


def test_tool_inspect_no_such_process():
    """A pid with no process: "tcpkeep: inspect: no process with pid N",
    exit 1; a pid that is not a number: exit 2 with the usage line."""
    for _ in range(5):  # a pid that was just freed, unless reused at once
        p = subprocess.Popen(["true"])
        p.wait(5)
        pid = p.pid
        if not os.path.exists("/proc/%d" % pid):
            break
    check(not os.path.exists("/proc/%d" % pid), "no free pid found")
    rc, out, err = inspect(pid)
    check(rc == 1 and out == "" and err == "tcpkeep: inspect: no process with pid %d\n" % pid,
          "exit %s, stdout %r, stderr %r" % (rc, out, err))
    rc2, out2, err2 = run([tool(), "inspect", "12x"], shim=False)
    check(rc2 == 2 and "usage: tcpkeep inspect PID [--json]" in err2,
          "bad pid: exit %s, stderr %r" % (rc2, err2))
    return "exit 1: %s; bad pid: exit 2" % err.strip()


def _as_nobody():
    """The argv prefix that runs a command as user nobody, or Skip."""
    if os.geteuid() != 0:
        raise Skip("not root: cannot run the tool as another user")
    if which("setpriv"):
        return ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    if which("runuser"):
        return ["runuser", "-u", "nobody", "--"]
    raise Skip("neither setpriv nor runuser is installed")


def _public_tool_copy():
    """A copy of the tool that user nobody can run (the build tree may sit
    in a directory only root can enter)."""
    d = tmpdir()
    os.chmod(d, 0o755)
    path = os.path.join(d, "tcpkeep-tool")
    shutil.copy(tool(), path)
    os.chmod(path, 0o755)
    return path


def test_tool_inspect_permission_denied():
    """As user nobody on a root process: the permission message and a
    non-zero exit."""
    prefix = _as_nobody()
    copy = _public_tool_copy()
    prog = Pairs()
    rc, out, err = run(prefix + [copy, "inspect", str(prog.pid)], shim=False)
    prog.stop()
    want = ("tcpkeep: inspect: cannot read the descriptors of pid %d: Permission denied "
            "(run it as the process's user or as root)\n" % prog.pid)
    check(rc == 1 and err == want and out == "",
          "exit %s, stdout %r, stderr %r, expected %r" % (rc, out, err, want))
    return "exit 1: %s" % err.strip()


REFUSE_GETFD = r'''
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <sys/syscall.h>
/* Makes pidfd_getfd fail as the kernel does without ptrace access. */
long syscall(long number, ...)
{
    va_list ap;
    va_start(ap, number);
    long a = va_arg(ap, long), b = va_arg(ap, long), c = va_arg(ap, long);
    long d = va_arg(ap, long), e = va_arg(ap, long), f = va_arg(ap, long);
    va_end(ap);
    if (number == SYS_pidfd_getfd) {
        errno = EPERM;
        return -1;
    }
    long (*real)(long, ...) = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
    return real(number, a, b, c, d, e, f);
}
'''


def test_tool_inspect_getfd_refused():
    """pidfd_getfd refused (EPERM): addresses and states still shown, the
    options "?" (null in JSON), one note on stderr saying why, exit 0."""
    refuse = compile_c(REFUSE_GETFD, "librefuse", shared=True, extra=["-ldl"])
    prog = Pairs(env={"TCPKEEP_KEEPIDLE": "77"})
    rc, out, err = inspect(prog.pid, env={"LD_PRELOAD": refuse})
    rcj, outj, errj = inspect(prog.pid, "--json", env={"LD_PRELOAD": refuse})
    prog.stop()
    check(rc == 0, "exit %s, stderr %r" % (rc, err))
    lines = err.splitlines()
    check(len(lines) == 1 and lines[0].startswith("tcpkeep: inspect: note: ")
          and "Operation not permitted" in lines[0] and "ptrace" in lines[0],
          "stderr %r, expected one note naming the refusal" % err)
    _, rows = parse_table(out, "inspect")
    c = rows.get(prog.client_fd)
    check(c and c["STATE"] == "ESTABLISHED" and c["LOCAL"] == "127.0.0.1:%d" % prog.client_port
          and all(c[k] == "?" for k in ("KEEPALIVE", "IDLE", "INTVL", "CNT", "USER-TIMEOUT")),
          "client row %r" % (c,))
    socks = {s["fd"]: s for s in json.loads(outj)}
    cj = socks.get(prog.client_fd)
    check(rcj == 0 and cj and cj["keepalive"] is None and cj["keepidle"] is None
          and cj["state"] == "ESTABLISHED", "JSON: exit %s, %r" % (rcj, cj))
    return "options '?', note: %s" % lines[0]


def _need_netns_tools():
    if os.geteuid() != 0:
        raise Skip("not root: cannot make a network namespace")
    for prog in ("unshare", "ip", "setpriv"):
        if not which(prog) and not os.access("/usr/sbin/" + prog, os.X_OK) \
                and not os.access("/sbin/" + prog, os.X_OK):
            raise Skip("%s is not installed" % prog)


def test_tool_inspect_other_netns():
    """A program in its own network namespace: as root, inspect enters it
    for the dump; without CAP_SYS_ADMIN (setns refused) it reads each socket
    through pidfd_getfd: the same sockets, addresses and options either way."""
    _need_netns_tools()
    ip = which("ip") or ("/usr/sbin/ip" if os.access("/usr/sbin/ip", os.X_OK) else "/sbin/ip")
    inner = script(PAIRS, "pairs.py") + ["1"]
    # unshare and sh exec: the program keeps the pid spawn() saw
    shell = "%s link set lo up && exec %s" % (shlex.quote(ip), " ".join(map(shlex.quote, inner)))
    try:
        prog = Pairs(env={"TCPKEEP_KEEPIDLE": "77"}, argv=["unshare", "-n", "sh", "-c", shell])
    except Fail as e:
        raise Skip("cannot run a program in a new network namespace: %s" % e)
    mine = os.stat("/proc/self/ns/net").st_ino
    theirs = os.stat("/proc/%d/ns/net" % prog.pid).st_ino
    check(mine != theirs, "the program is in our network namespace")
    results = []
    for label, prefix in (("root", []),
                          ("no CAP_SYS_ADMIN", ["setpriv", "--bounding-set", "-sys_admin"])):
        rc, out, err = inspect(prog.pid, user=prefix or None)
        check(rc == 0, "%s: exit %s, stderr %r" % (label, rc, err))
        _, rows = parse_table(out, "inspect (%s)" % label)
        c = rows.get(prog.client_fd)
        check(c and c["LOCAL"] == "127.0.0.1:%d" % prog.client_port
              and c["STATE"] == "ESTABLISHED" and c["IDLE"] == "77s",
              "%s: client row %r in %r" % (label, c, out))
        results.append({fd: (r["LOCAL"], r["PEER"], r["STATE"], r["IDLE"])
                        for fd, r in rows.items()})
    prog.stop()
    check(results[0] == results[1], "root and setns-less views differ: %r vs %r"
          % (results[0], results[1]))
    return "%d sockets, the same with and without entering the namespace" % len(results[0])


@timeout(180)
def test_tool_inspect_fast_with_many_sockets():
    """With ~20,000 other TCP sockets on the machine (TIME_WAIT and
    established loopback pairs), inspect of a process with 200 connections
    lists every one of them, with the shim's keepidle, in under 1 s."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    established_pairs = max(0, min(5000, (soft - 1000) // 2))
    time_wait = 10000
    prog = Pairs(n=200, env={"TCPKEEP_KEEPIDLE": "77"})
    # Two loopback addresses of our own: connect() picks ports per
    # destination, so the established pairs do not reuse (and end) the
    # TIME_WAIT sockets' port pairs, and other tests' 127.0.0.1 is spared.
    listeners = []
    for host in ("127.0.0.2", "127.0.0.3"):
        ls = socket.socket()
        try:
            ls.bind((host, 0))
        except OSError:
            ls.close()
            host = "127.0.0.1"
            ls = socket.socket()
            ls.bind((host, 0))
        ls.listen(4096)
        listeners.append(ls)
    held = []
    try:
        # The accepted side closes first, so the TIME_WAIT sockets hold the
        # server's port, not ephemeral ports other tests may need.
        ls = listeners[0]
        for _ in range(time_wait):
            c = socket.create_connection(ls.getsockname(), timeout=5)
            a, _ = ls.accept()
            a.close()
            c.close()
        ls = listeners[1]
        for _ in range(established_pairs):
            c = socket.create_connection(ls.getsockname(), timeout=5)
            a, _ = ls.accept()
            held += [c, a]
        with open("/proc/net/sockstat") as f:
            tcp = [line for line in f if line.startswith("TCP:")][0].split()
        stat = dict(zip(tcp[1::2], map(int, tcp[2::2])))
        timings = []
        for args in ((), ("--json",)):
            t0 = time.monotonic()
            rc, out, err = inspect(prog.pid, *args)
            timings.append(time.monotonic() - t0)
            check(rc == 0 and err == "", "inspect %s: exit %s, stderr %r" % (args, rc, err[-300:]))
        socks = json.loads(out)
    finally:
        for s in held + listeners:
            s.close()
        prog.stop()
    est = [s for s in socks if s["state"] == "ESTABLISHED"]
    check(len(est) == 400, "%d established sockets listed, expected 400" % len(est))
    check(all(s["keepidle"] == 77 and s["keepalive"] for s in est),
          "not every connection shows keepidle 77: %r"
          % [s for s in est if s["keepidle"] != 77][:3])
    check(stat.get("inuse", 0) + stat.get("tw", 0) >= 18000,
          "only %r TCP sockets on the machine: the test did not load it" % stat)
    check(max(timings) < 1.0, "inspect took %.3f s (text) and %.3f s (--json) with %r"
          % (timings[0], timings[1], stat))
    return "%.3f s (text), %.3f s (--json) with TCP inuse %d, tw %d on the machine" % (
        timings[0], timings[1], stat.get("inuse", 0), stat.get("tw", 0))


STATS = {
    "pid": 4242, "tracked_now": 3, "tracked_total": 17, "keepalive_set": 16,
    "cuts": {"idle": 2, "read_idle": 0, "write_idle": 5, "first_byte": 1, "half_closed": 0,
             "lifetime": 12345678901},
    "would_cut": {"idle": 0, "read_idle": 7, "write_idle": 0, "first_byte": 0,
                  "half_closed": 3, "lifetime": 0, "from_a_newer_shim": 9},
    "option_errors": 4, "updated": "2026-11-23T10:15:02Z",
    "a_newer_key": [1, {"x": None}, "s\u00e9", -1.5e3, True],
}
REASONS = [("idle", "idle"), ("read-idle", "read_idle"), ("write-idle", "write_idle"),
           ("first-byte", "first_byte"), ("half-closed", "half_closed"),
           ("lifetime", "lifetime")]


def test_tool_stats_table():
    """stats PATH prints the file as a table: the process line, the
    counters, one row per reason token with cuts and would-cut counts;
    unknown keys are skipped."""
    d = tmpdir()
    path = os.path.join(d, "stats.json")
    with open(path, "w") as f:
        json.dump(STATS, f, indent=1)
    rc, out, err = run([tool(), "stats", path], shim=False)
    check(rc == 0 and err == "", "exit %s, stderr %r" % (rc, err))
    lines = out.splitlines()
    want = [
        r"process\s+4242 \(updated 2026-11-23T10:15:02Z\)",
        r"tracked now\s+3", r"tracked total\s+17", r"keepalive set\s+16",
        r"option errors\s+4", r"", r"reason\s+cuts\s+would cut",
    ] + [r"%s\s+%d\s+%d" % (tok, STATS["cuts"][key], STATS["would_cut"][key])
         for tok, key in REASONS]
    check(len(lines) == len(want), "%d lines, expected %d: %r" % (len(lines), len(want), out))
    for line, pattern in zip(lines, want):
        check(re.fullmatch(pattern, line), "line %r does not match %r" % (line, pattern))
    # the counts are right-aligned under their titles
    title = lines[6]
    for line in lines[7:]:
        check(len(line) == len(title), "row %r is not aligned with %r" % (line, title))
    return "table of %d lines, e.g. %r" % (len(lines), lines[-1])


def test_tool_stats_bad_files():
    """A missing, empty, non-JSON or incomplete file: one line
    "tcpkeep: stats: FILE: ..." on stderr, exit 1; no PATH: exit 2."""
    d = tmpdir()
    cases = {"missing": None, "empty": "", "garbage": "pid=4242\n",
             "incomplete": json.dumps({"pid": 1, "tracked_now": 0}),
             "negative": json.dumps(dict(STATS, tracked_now=-1)),
             "trailing": json.dumps(STATS) + " {}"}
    seen = []
    for name, text in cases.items():
        path = os.path.join(d, name + ".json")
        if text is not None:
            with open(path, "w") as f:
                f.write(text)
        rc, out, err = run([tool(), "stats", path], shim=False)
        lines = err.splitlines()
        check(rc == 1 and out == "" and len(lines) == 1
              and lines[0].startswith("tcpkeep: stats: %s: " % path),
              "%s file: exit %s, stdout %r, stderr %r" % (name, rc, out, err))
        seen.append(lines[0][len("tcpkeep: stats: %s: " % path):])
    check(seen[0] == "No such file or directory", "missing file: %r" % seen[0])
    rc, out, err = run([tool(), "stats"], shim=False)
    check(rc == 2 and "usage: tcpkeep stats PATH" in err, "no PATH: exit %s, %r" % (rc, err))
    return "exit 1 each: " + " | ".join(seen)
