"""Helpers for the integration tests: processes under the shim, ports,
bounded waits, `ss` parsing, C helpers compiled at test time.

Every process a test starts goes through spawn(), which records it; the
runner calls cleanup() after each test, which kills (by PID) whatever is
still running. Every wait here is bounded.
"""
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PYTHON = sys.executable or "python3"

# Cut timing, as the contract says: never before the limit; the shim itself
# is allowed limit + 0.25 s, the tests limit + 0.5 s (client-side scheduling).
CUT_SLACK = float(os.environ.get("TCPKEEP_TEST_CUT_SLACK", "0.5"))  # sanitizer builds run slower


class Fail(Exception):
    """The test measured something the contract does not allow."""


class Skip(Exception):
    """The test cannot run here (missing tool, missing wrapper, ...)."""


def lib():
    path = os.environ.get("TCPKEEP_TEST_LIB", "")
    if not path or not os.path.isfile(path):
        raise Fail("library not found: %r (build it with make)" % path)
    return os.path.abspath(path)


def check(cond, msg):
    if not cond:
        raise Fail(msg)


def timeout(seconds):
    """Decorator: the runner's hard timeout for this test."""
    def deco(fn):
        fn.timeout = seconds
        return fn
    return deco


# --------------------------------------------------------------------------
# processes

_procs = []
_tmpdirs = []


def env_for(shim=True, extra=None, base=None):
    """The environment for a child: no TCPKEEP_* or LD_PRELOAD inherited
    from the caller; LD_PRELOAD = the library when `shim`; then `extra`."""
    env = dict(os.environ if base is None else base)
    for k in list(env):
        if k.startswith("TCPKEEP_") or k == "LD_PRELOAD":
            del env[k]
    if shim:
        env["LD_PRELOAD"] = lib()
    env["PYTHONUNBUFFERED"] = "1"
    for k, v in (extra or {}).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = str(v)
    return env


def spawn(argv, shim=True, env=None, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
          stderr=subprocess.PIPE, text=True, cwd=None, pass_fds=()):
    """Start argv (under the shim unless shim=False), with `env` added to a
    clean environment. Recorded for cleanup()."""
    p = subprocess.Popen(argv, env=env_for(shim, env), stdin=stdin, stdout=stdout,
                         stderr=stderr, text=text, cwd=cwd, pass_fds=pass_fds)
    _procs.append(p)
    return p


def run(argv, shim=True, env=None, input=None, limit=20, cwd=None):
    """Run argv to completion (bounded): (returncode, stdout, stderr)."""
    p = spawn(argv, shim=shim, env=env, cwd=cwd,
              stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL)
    try:
        out, err = p.communicate(input=input, timeout=limit)
    except subprocess.TimeoutExpired:
        kill(p)
        out, err = p.communicate(timeout=5)
        raise Fail("%s did not finish within %s s; stdout=%r stderr=%r"
                   % (" ".join(map(str, argv[:3])), limit, out[-400:], err[-400:]))
    return p.returncode, out, err


def kill(p):
    """Kill one process we started, by its PID, and reap it (bounded)."""
    if p.poll() is None:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        p.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def finish(p, limit=5):
    """Kill p if still running and return its (stdout, stderr)."""
    kill(p)
    try:
        out, err = p.communicate(timeout=limit)
    except (subprocess.TimeoutExpired, ValueError, OSError):
        out, err = "", ""
    return out or "", err or ""


def cleanup():
    while _procs:
        p = _procs.pop()
        kill(p)
        for f in (p.stdin, p.stdout, p.stderr):
            try:
                if f:
                    f.close()
            except OSError:
                pass
    while _tmpdirs:
        d = _tmpdirs.pop()
        subprocess.run(["rm", "-rf", "--", d], check=False)


def tmpdir():
    d = tempfile.mkdtemp(prefix="tcpkeep-it-")
    _tmpdirs.append(d)
    return d


def script(code, name="prog.py"):
    """Write a Python program to a temp file; return the argv to run it."""
    path = os.path.join(tmpdir(), name)
    with open(path, "w") as f:
        f.write(code)
    return [PYTHON, path]


def compile_c(source, name="prog", shared=False, extra=()):
    """Compile C source into a temp dir; return the output path."""
    if not which("cc"):
        raise Skip("no C compiler (cc)")
    d = tmpdir()
    src = os.path.join(d, name + ".c")
    out = os.path.join(d, name + (".so" if shared else ""))
    with open(src, "w") as f:
        f.write(source)
    cmd = ["cc", "-O1", "-g", "-Wall", "-D_GNU_SOURCE", "-o", out, src]
    if shared:
        cmd[1:1] = ["-shared", "-fPIC"]
    cmd += list(extra)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise Fail("cc failed for %s: %s" % (name, r.stderr[-1500:]))
    return out


def which(prog):
    for d in os.environ.get("PATH", "/usr/bin:/bin").split(":"):
        if os.access(os.path.join(d, prog), os.X_OK):
            return os.path.join(d, prog)
    return None


def need(*progs):
    for prog in progs:
        if not which(prog):
            raise Skip("%s is not installed" % prog)


# Lines are read from the pipe's raw descriptor with os.read, into a buffer
# kept on the stream object: select() on a Python file object misses lines
# that its own buffer already holds, which made a test wait for a line it had.


def _next_line(stream, end):
    """The next line of stream (without the newline), None at EOF, or raise
    Fail at the deadline `end` (time.monotonic())."""
    fd = stream.fileno()
    buf = getattr(stream, "_tk_lines", None)
    if buf is None:
        buf = stream._tk_lines = bytearray()
    while b"\n" not in buf:
        left = end - time.monotonic()
        if left <= 0:
            raise TimeoutError
        r, _, _ = select.select([fd], [], [], left)
        if not r:
            raise TimeoutError
        chunk = os.read(fd, 65536)
        if not chunk:
            if not buf:
                return None
            line = bytes(buf)
            buf.clear()
            return line.decode(errors="replace")
        buf.extend(chunk)
    i = buf.index(b"\n")
    line = bytes(buf[:i])
    del buf[:i + 1]
    return line.decode(errors="replace")


def read_line(stream, limit=5, what="a line"):
    """One line from a child's pipe, bounded."""
    try:
        line = _next_line(stream, time.monotonic() + limit)
    except TimeoutError:
        raise Fail("timed out after %s s waiting for %s" % (limit, what))
    if line is None:
        raise Fail("EOF while waiting for %s" % what)
    return line


def lines_until(p, prefix, limit=5):
    """Every stdout line of p up to and including the first starting with
    prefix (bounded); Fail on timeout or EOF."""
    end = time.monotonic() + limit
    seen = []
    try:
        while True:
            line = _next_line(p.stdout, end)
            if line is None:
                break
            seen.append(line)
            if line.startswith(prefix):
                return seen
    except TimeoutError:
        pass
    _, err = finish(p)
    raise Fail("no %r line from the program within %s s; stdout=%r stderr=%r"
               % (prefix, limit, seen[-5:], err[-600:]))


def expect_line(p, prefix, limit=5):
    """Read p's stdout until a line starting with prefix (bounded); return it."""
    return lines_until(p, prefix, limit)[-1]


# --------------------------------------------------------------------------
# ports and sockets

def free_port(family=socket.AF_INET):
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _listening(port, v6):
    path = "/proc/net/tcp6" if v6 else "/proc/net/tcp"
    try:
        with open(path) as f:
            next(f)
            for line in f:
                parts = line.split()
                if len(parts) > 3 and parts[3] == "0A" and \
                        int(parts[1].rsplit(":", 1)[1], 16) == port:
                    return True
    except OSError:
        pass
    return False


def wait_listen(port, v6=False, limit=5, proc=None):
    """Wait (bounded) until something listens on port; fail early if
    `proc` exits meanwhile."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if _listening(port, v6):
            return
        if proc is not None and proc.poll() is not None:
            out, err = finish(proc)
            raise Fail("server exited (%s) before listening on %d: %r %r"
                       % (proc.returncode, port, out[-300:], err[-600:]))
        time.sleep(0.01)
    raise Fail("nothing listening on port %d after %s s" % (port, limit))


# Clocks start BEFORE the event the shim stamps (connect, send) and stop
# AFTER the peer sees the end: a loaded machine can then only make a cut
# look later, never earlier than it was.

def connect(port, host="127.0.0.1", limit=5):
    """A plain (not shimmed) client connection: (socket, monotonic time
    just before connect was called)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(limit)
    t = time.monotonic()
    s.connect((host, port))
    return s, t


def _tcp_info_u32(sock, offset):
    import struct
    return struct.unpack_from("I", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104),
                              offset)[0]


def kernel_last_data_recv(sock):
    """Seconds since data last arrived on sock, by the kernel (TCP_INFO
    tcpi_last_data_recv; since the handshake if none has). Jiffy precision."""
    return _tcp_info_u32(sock, 52) / 1000.0


def handshake_time(sock):
    """Monotonic time the handshake completed, by the kernel's record (valid
    while no data has arrived on sock). Jiffy precision: allow ~10 ms."""
    t = time.monotonic()
    return t - kernel_last_data_recv(sock)


def wait_eof(sock, limit):
    """Read (and discard) until EOF or reset, at most `limit` s. Returns
    (monotonic time of the end or None, bytes read, how: 'eof'|'reset')."""
    arrivals, end, how = read_until_end(sock, limit)
    return end, sum(n for _, n in arrivals), how


def read_until_end(sock, limit):
    """Read until EOF or reset, at most `limit` s: ([(monotonic time, bytes)
    per arrival], end time or None, 'eof'|'reset'|None)."""
    stop = time.monotonic() + limit
    arrivals = []
    while True:
        left = stop - time.monotonic()
        if left <= 0:
            return arrivals, None, None
        r, _, _ = select.select([sock], [], [], left)
        if not r:
            continue
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return arrivals, time.monotonic(), "reset"
        except (BlockingIOError, InterruptedError):
            continue
        now = time.monotonic()
        if not data:
            return arrivals, now, "eof"
        arrivals.append((now, len(data)))


def cut_window(measured, limit, what="cut", since="connecting", slack=CUT_SLACK, early=0.0):
    """Fail unless limit <= measured <= limit + slack; else a description:
    "<what> <measured> s after <since> (limit <limit> s)".
    `early`: a few ms of tolerance when the clock was started on the peer's
    side of the last activity (the peer can see a byte, or the handshake,
    a moment before the shim's side stamps it)."""
    if measured is None:
        raise Fail("%s: not cut within %.2f s of %s (limit %g s)"
                   % (what, limit + slack + 1, since, limit))
    if measured < limit - early:
        raise Fail("%s %.3f s after %s: EARLIER than the limit %g s"
                   % (what, measured, since, limit))
    if measured > limit + slack:
        raise Fail("%s %.3f s after %s: later than the limit + %g s (limit %g s)"
                   % (what, measured, since, slack, limit))
    return "%s %.3f s after %s (limit %g s)" % (what, measured, since, limit)


class Active:
    """Keeps a plain client connection busy: one byte every `period` s for
    `duration` s, reading whatever comes back; records an early end."""

    def __init__(self, sock, period=0.3, echo=True):
        self.sock = sock
        self.period = period
        self.echo = echo
        self.last_send = None
        self.ended = None   # monotonic time the peer ended it, if it did
        self.how = None

    def run(self, duration):
        end = time.monotonic() + duration
        nxt = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= end:
                return True
            if now >= nxt:
                t = time.monotonic()
                try:
                    self.sock.send(b"x")
                except (BrokenPipeError, ConnectionResetError):
                    self.ended, self.how = time.monotonic(), "send failed"
                    return False
                self.last_send = t
                nxt = t + self.period
            r, _, _ = select.select([self.sock], [], [], max(0.0, min(nxt, end) - time.monotonic()))
            if r:
                try:
                    data = self.sock.recv(4096)
                except (ConnectionResetError, BrokenPipeError):
                    data, self.how = b"", "reset"
                if not data:
                    self.ended = time.monotonic()
                    self.how = self.how or "eof"
                    return False


class Conn:
    """One plain client connection driven by drive()."""

    def __init__(self, sock, t0, active=False):
        self.sock, self.t0, self.active = sock, t0, active
        self.next_send = t0
        self.last_send = None   # just before the last send
        self.last_recv = None
        self.ended = None
        self.how = None
        self.got = 0


def drive(conns, duration, period=0.3):
    """For `duration` s: each active Conn sends a byte every `period` s; all
    read what comes back; a Conn whose peer ends it gets .ended/.how."""
    stop = time.monotonic() + duration
    while True:
        now = time.monotonic()
        if now >= stop:
            return
        live = [c for c in conns if c.ended is None]
        if not live:
            return
        for c in live:
            if c.active and now >= c.next_send:
                t = time.monotonic()
                try:
                    c.sock.send(b"x")
                    c.last_send = t
                except (BrokenPipeError, ConnectionResetError):
                    c.ended, c.how = time.monotonic(), "send failed"
                    continue
                c.next_send = max(c.next_send + period, c.last_send + period / 2)
        live = [c for c in live if c.ended is None]
        wake = min([c.next_send for c in live if c.active] + [stop])
        r, _, _ = select.select([c.sock for c in live], [], [],
                                max(0.0, wake - time.monotonic()))
        for c in live:
            if c.sock in r:
                try:
                    data = c.sock.recv(4096)
                except (ConnectionResetError, BrokenPipeError):
                    data, c.how = b"", "reset"
                except (BlockingIOError, InterruptedError):
                    continue
                if data:
                    c.got += len(data)
                    c.last_recv = time.monotonic()
                else:
                    c.ended = time.monotonic()
                    c.how = c.how or "eof"


class EchoServer:
    """A plain (not shimmed) echo server on a thread in the test process."""

    def __init__(self, host="127.0.0.1"):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.ls = socket.socket(fam, socket.SOCK_STREAM)
        self.ls.bind((host, 0))
        self.ls.listen(128)
        self.port = self.ls.getsockname()[1]
        self.accepted = 0
        self._r, self._w = os.pipe()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        socks = [self.ls]
        while True:
            r, _, _ = select.select(socks + [self._r], [], [], 1.0)
            if self._r in r:
                break
            for s in r:
                if s is self.ls:
                    c, _ = self.ls.accept()
                    self.accepted += 1
                    socks.append(c)
                    continue
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if data:
                    try:
                        s.sendall(data)
                    except OSError:
                        data = b""
                if not data:
                    socks.remove(s)
                    s.close()
        for s in socks:
            s.close()

    def stop(self):
        os.write(self._w, b"x")
        self.thread.join(5)


# --------------------------------------------------------------------------
# ss

_TIMER = re.compile(r"timer:\((\w+),([^,()]*),(\d+)\)")


def parse_ss_time(s):
    """Seconds from iproute2's print_ms_timer output: '1min16sec', '16sec',
    '964ms', '2.964ms' (2.964 s: iproute2 6.1 prints seconds '.' ms 'ms'),
    '1min', '1min5.100ms'. None if it does not parse."""
    m = re.fullmatch(r"(?:(\d+)min)?(?:(\d+)(sec|\.))?(?:(\d+)ms)?", s.strip())
    if not m or not s.strip():
        return None
    mins, secs, sep, ms = m.groups()
    if sep == "." and ms is None:
        return None
    total = int(mins or 0) * 60 + int(secs or 0)
    if ms is not None:
        total += int(ms) / 1000.0
    return float(total)


def _split_addr(a):
    host, _, port = a.rpartition(":")
    return host.strip("[]"), int(port) if port.isdigit() else -1


def ss_conns():
    """Every TCP socket `ss -tnoH` shows: dicts with state, local, lport,
    peer, pport, timer (name, remaining seconds or None, probes) or None,
    line."""
    r = subprocess.run(["ss", "-tnoH"], capture_output=True, text=True, timeout=10)
    out = []
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) < 5:
            continue
        lhost, lport = _split_addr(parts[3])
        phost, pport = _split_addr(parts[4])
        m = _TIMER.search(line)
        timer = (m.group(1), parse_ss_time(m.group(2)), int(m.group(3)), m.group(2)) \
            if m else None
        out.append(dict(state=parts[0], local=lhost, lport=lport, peer=phost, pport=pport,
                        timer=timer, line=line.strip()))
    return out


def ss_find(lport, pport):
    """The established connection with that local and peer port, or Fail."""
    for c in ss_conns():
        if c["lport"] == lport and c["pport"] == pport and c["state"].startswith("ESTAB"):
            return c
    raise Fail("ss shows no established connection %d -> %d" % (lport, pport))


def keepalive_remaining(conn):
    """Remaining keepalive time for an ss_conns() entry, or None when ss
    shows no keepalive timer."""
    t = conn["timer"]
    if not t or t[0] != "keepalive":
        return None
    if t[1] is None:
        raise Fail("cannot parse the ss timer in %r" % conn["line"])
    return t[1]


def expect_keepalive_timer(lport, pport, keepidle, who):
    c = ss_find(lport, pport)
    rem = keepalive_remaining(c)
    if rem is None:
        raise Fail("%s: ss shows no keepalive timer: %r" % (who, c["line"]))
    # Armed when the connection was set up, a moment ago.
    if not (keepidle - 3 <= rem <= keepidle):
        raise Fail("%s: keepalive timer %.3f s, expected about %d s: %r"
                   % (who, rem, keepidle, c["line"]))
    return "%g s (ss: %s)" % (rem, c["timer"][3])


# A server that reads a byte 0.8 s after it arrived, then waits for the end
# of the connection: "ready PORT", "read TIME", "end TIME eof|data|error".
LATE_READER = r"""
import select, socket, sys, time
ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(1)
print("ready", ls.getsockname()[1], flush=True)
c, _ = ls.accept()
select.select([c], [], [], 5)
time.sleep(0.8)                  # the byte waits in the kernel's buffer
c.recv(1)
print("read %.6f" % time.monotonic(), flush=True)
c.settimeout(5)
try:
    d = c.recv(1)
    print("end %.6f %s" % (time.monotonic(), "eof" if d == b"" else "data"), flush=True)
except OSError as e:
    print("end %.6f %s" % (time.monotonic(), e), flush=True)
"""


# The start of the C test programs: the usual headers, a monotonic clock
# in seconds and a bounded check for the end of a connection (marked unused
# so that a program which needs neither compiles without a warning).
C_COMMON = r"""
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

__attribute__((unused))
static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Has the connection on fd ended (EOF or error)? Waits up to ms. */
__attribute__((unused))
static int ended_within(int fd, int ms)
{
    struct pollfd p = { fd, POLLIN, 0 };
    if (poll(&p, 1, ms) <= 0)
        return 0;
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT | MSG_PEEK);
    return n == 0 || (n < 0 && errno != EAGAIN);
}
"""
