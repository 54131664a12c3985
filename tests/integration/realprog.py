"""Helpers for test_real_programs.py: unmodified Debian programs under the
shim, each with its ordinary workload, a periodically active client and an
idle client at the same time, and an unshimmed twin as the control.

What a test measures, at the client (plain sockets in the test process):
- the idle client ends (EOF or reset) between the limit and limit +
  CUT_SLACK after it connected, and the program then releases its side of
  the connection (closes its descriptor, or exits);
- the active client (one request/response every `period` < limit, for
  several limits) gets every answer right and is never ended;
- the shim's own log (TCPKEEP_LOG, level info) names the idle client's
  connection and no other one;
- on the unshimmed twin, an idle client is still open, and still served,
  after the same window: the cut comes from the shim.
"""
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time

from helpers import CUT_SLACK, Fail, PYTHON, connect, cut_window, spawn, tmpdir, wait_eof

LIMIT = 1.0          # TCPKEEP_IDLE_TIMEOUT for every program here
PERIOD = 0.3         # the active client's request interval (< LIMIT)
ACTIVE_FOR = 3.0     # how long the active client keeps going (3 limits)


def shim_env(logpath, limit=LIMIT):
    return {"TCPKEEP_IDLE_TIMEOUT": "%dms" % int(limit * 1000),
            "TCPKEEP_LOG": logpath, "TCPKEEP_LOG_LEVEL": "info"}


def find_prog(name, dirs=("/usr/sbin", "/usr/bin", "/sbin", "/bin")):
    """The path of an installed program (also in sbin dirs a user's PATH may
    lack), or None."""
    for d in os.environ.get("PATH", "").split(":") + list(dirs):
        p = os.path.join(d, name)
        if d and os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    return None


def is_elf(path):
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def debian_python():
    """Debian's own python3 interpreter binary (not a pyenv bash shim), so
    that the program under the shim is python itself; else the runner's
    interpreter (a real binary too)."""
    for p in ("/usr/bin/python3",):
        real = os.path.realpath(p)
        if is_elf(real):
            return real
    return os.path.realpath(PYTHON)


# --------------------------------------------------------------------------
# processes

def descendants(pid):
    """PIDs of every live descendant of pid (from /proc)."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        ppid = int(st[st.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def stop(p, sig=signal.SIGTERM, limit=3.0):
    """Stop a server we started, by PID: `sig` to it, a bounded wait, then
    SIGKILL to it and to whatever it forked (nginx workers, socat children)
    that is still there. Returns its exit status (None if it was killed)."""
    if p is None:
        return None
    kids = descendants(p.pid) if p.poll() is None else []
    if p.poll() is None:
        try:
            os.kill(p.pid, sig)
        except ProcessLookupError:
            pass
    try:
        rc = p.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        rc = None
    for pid in [p.pid] + kids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        p.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    return rc


def start_server(argv, port, shim, logdir, name, env=None, cwd=None, limit=10.0):
    """Start a server as a foreground process (stdout/stderr to files in
    logdir); wait (bounded) until it listens on 127.0.0.1:port."""
    out = open(os.path.join(logdir, "%s.out" % name), "w")
    extra = dict(env or {})
    if shim:
        extra.update(shim_env(os.path.join(logdir, "%s.tcpkeep.log" % name)))
    try:
        p = spawn(argv, shim=shim, env=extra, stdin=subprocess.DEVNULL, stdout=out,
                  stderr=subprocess.STDOUT, cwd=cwd)
    finally:
        out.close()
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if listening(port):
            return p
        if p.poll() is not None:
            break
        time.sleep(0.02)
    rc = stop(p)
    raise Fail("%s (%s) did not listen on port %d within %g s (exit %s): %s"
               % (name, "shim" if shim else "no shim", port, limit, rc,
                  tail(os.path.join(logdir, "%s.out" % name))))


def tail(path, n=600):
    try:
        with open(path, errors="replace") as f:
            return repr(f.read()[-n:])
    except OSError:
        return "(no output)"


# --------------------------------------------------------------------------
# the kernel's view of a connection

def _proc_net_tcp():
    """[(local port, remote port, state hex, inode)] from /proc/net/tcp{,6}."""
    rows = []
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    p = line.split()
                    if len(p) < 10:
                        continue
                    rows.append((int(p[1].rsplit(":", 1)[1], 16),
                                 int(p[2].rsplit(":", 1)[1], 16), p[3], int(p[9])))
        except OSError:
            pass
    return rows


def wait_listen_port(port, proc, limit=5.0):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if listening(port):
            return
        if proc.poll() is not None:
            raise Fail("the program exited (%s) before listening on %d" % (proc.returncode, port))
        time.sleep(0.01)
    raise Fail("nothing listening on port %d after %g s" % (port, limit))


def listening(port):
    return any(lp == port and st == "0A" for lp, _, st, _ in _proc_net_tcp())


def _diag_inode(family, laddr, lport, raddr, rport):
    """The inode of the TCP socket with exactly that local and remote end,
    by an inet_diag lookup (one socket, not a dump): 0 when no process owns
    it (an orphan, or TIME-WAIT), None when there is no such socket."""
    la = socket.inet_pton(family, laddr).ljust(16, b"\0")
    ra = socket.inet_pton(family, raddr).ljust(16, b"\0")
    sockid = struct.pack("!HH16s16s", lport, rport, la, ra) + struct.pack(
        "=III", 0, 0xffffffff, 0xffffffff)    # any interface, INET_DIAG_NOCOOKIE
    req = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 0xffffffff) + sockid
    msg = struct.pack("=IHHII", 16 + len(req), 20, 1, 1, 0) + req  # SOCK_DIAG_BY_FAMILY
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 4) as nl:  # NETLINK_SOCK_DIAG
        nl.settimeout(2)
        nl.sendto(msg, (0, 0))
        data = nl.recv(8192)
    _, mtype = struct.unpack_from("=IH", data, 0)
    if mtype == 2:   # NLMSG_ERROR: no such socket (ENOENT)
        return None
    # inet_diag_msg: family, state, timer, retrans, sockid (sport, dport,
    # ...), expires, rqueue, wqueue, uid, inode. A lookup that finds no
    # connection answers with the listener: not this socket.
    state = data[16 + 1]
    sport, dport = struct.unpack_from("!HH", data, 16 + 4)
    if state == 10 or (sport, dport) != (lport, rport):
        return None
    return struct.unpack_from("=I", data, 16 + 68)[0]


def held(lport, rport, laddr="127.0.0.1", raddr="127.0.0.1"):
    """Whether some process still holds a descriptor for the socket from
    laddr:lport to raddr:rport."""
    fam = socket.AF_INET6 if ":" in laddr else socket.AF_INET
    return bool(_diag_inode(fam, laddr, lport, raddr, rport))


def wait_released(lport, rport, limit):
    """Seconds until no process holds that socket, or None (bounded)."""
    t0 = time.monotonic()
    while True:
        if not held(lport, rport):
            return time.monotonic() - t0
        if time.monotonic() - t0 > limit:
            return None
        time.sleep(0.01)


# --------------------------------------------------------------------------
# clients

class Ended(Exception):
    """The peer ended the connection (EOF or reset)."""


class Client:
    """A plain (unshimmed) client connection with a small buffered reader;
    every read is bounded by `limit` s."""

    def __init__(self, port, host="127.0.0.1", limit=5.0):
        self.sock, self.t0 = connect(port, host, limit)
        self.sock.settimeout(limit)
        self.port = port
        self.lport = self.sock.getsockname()[1]
        self.buf = b""

    def send(self, data):
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise Ended("send failed: %s" % e)

    def _more(self):
        try:
            d = self.sock.recv(65536)
        except socket.timeout:
            raise Fail("no answer within %g s" % self.sock.gettimeout())
        except ConnectionResetError:
            raise Ended("reset")
        if not d:
            raise Ended("eof")
        self.buf += d

    def readline(self):
        while b"\n" not in self.buf:
            self._more()
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def readexact(self, n):
        while len(self.buf) < n:
            self._more()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Idle(Client):
    """A client that connects and sends nothing. A thread waits for the end
    (bounded) and then for the program to release its side of the
    connection, while this side stays open (so the program's side stays
    visible in FIN-WAIT-2 until the program closes it)."""

    def __init__(self, port, window, host="127.0.0.1"):
        Client.__init__(self, port, host)
        self.window = window
        self.end = self.how = self.released = self.held_before = self.looked_at = None
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self):
        # Before the cut the program's side must show as held (accepted), or
        # the release check below proves nothing: look every 20 ms until it
        # does, then wait for the end.
        end = how = None
        while end is None and time.monotonic() - self.t0 < self.window:
            self.looked_at = time.monotonic() - self.t0
            if held(self.port, self.lport):
                self.held_before = self.looked_at
                break
            end, _, how = wait_eof(self.sock, 0.02)
        if end is None:
            end, _, how = wait_eof(self.sock, self.window - (time.monotonic() - self.t0))
        if end is not None:
            self.end, self.how = end - self.t0, how
            self.released = wait_released(self.port, self.lport, 2.0)

    def join(self):
        self.thread.join(self.window + 3.0)

    def check_cut(self, what, limit=LIMIT):
        """Cut on time and then released by the program: a description."""
        self.join()
        msg = cut_window(self.end, limit, "%s cut" % what)
        if self.held_before is None:
            raise Fail("%s, but before the cut no process showed as holding the program's "
                       "side of the connection (inet_diag lookups up to %.3f s after "
                       "connecting): cannot check that the program closed it"
                       % (msg, self.looked_at or 0))
        if self.released is None:
            raise Fail("%s (%s), but the program still holds its side of the connection "
                       "2 s later (it did not close it)" % (msg, self.how))
        return "%s (%s; the program closed its side %.3f s later)" % (msg, self.how,
                                                                     self.released)


class Control(Client):
    """An idle client of the unshimmed twin: it must still be open, and
    still served, after the window in which the shimmed one was cut."""

    def check(self, what, proto=None, at_least=LIMIT + CUT_SLACK + 0.5):
        left = self.t0 + at_least - time.monotonic()
        end, _, how = wait_eof(self.sock, max(left, 0.02))
        age = time.monotonic() - self.t0
        if end is not None:
            raise Fail("%s without the shim ended (%s) %.3f s after connecting: the control "
                       "is broken" % (what, how, end - self.t0))
        if proto is not None:
            try:
                proto.exchange(self, 0)
            except Ended as e:
                raise Fail("%s without the shim: ended (%s) at its first request %.3f s "
                           "after connecting" % (what, e, age))
        return "without the shim, %s still open%s after %.2f s" % (
            what, " and served" if proto else "", age)


class Proto:
    """A request/response pair of a program's protocol: request(c, i) gives
    the bytes of request i, reply(c, i) reads and checks its answer (Fail
    if wrong). Requests may be pipelined."""

    def __init__(self, request, reply):
        self.request, self.reply = request, reply

    def exchange(self, c, i):
        c.send(self.request(c, i))
        self.reply(c, i)


class Active:
    """Sends request i every `period` s for `duration` s on one connection,
    without waiting for the answers (pipelined), while a reader checks every
    answer in order. The client's own traffic thus never pauses for longer
    than `period`, even when a loaded machine makes the program slow to
    answer: the kernel's view keeps the connection active. Records how many
    answers came right, the longest wait for one, and whether the peer ended
    the connection or answered wrong."""

    def __init__(self, port, proto, period=PERIOD, duration=ACTIVE_FOR, host="127.0.0.1"):
        self.client = Client(port, host)
        self.client.sock.settimeout(duration + 10)
        self.proto, self.period, self.duration = proto, period, duration
        self.sent = self.answered = 0
        self.max_wait = self.max_send_gap = 0.0
        self.ended = self.error = None
        self._sent_at = {}
        self._lock = threading.Lock()
        self._queue = []
        self._cv = threading.Condition(self._lock)
        self._done = False
        self.threads = [threading.Thread(target=self._send, daemon=True),
                        threading.Thread(target=self._read, daemon=True)]
        for t in self.threads:
            t.start()

    def _fail(self, kind, msg):
        with self._lock:
            if self.ended is None and self.error is None:
                setattr(self, kind, msg)
            self._done = True
            self._cv.notify_all()

    def _send(self):
        c = self.client
        stop = c.t0 + self.duration
        i = 0
        try:
            while time.monotonic() < stop:
                t = time.monotonic()
                with self._lock:
                    if self._done:
                        return
                    self._sent_at[i] = t
                    self.max_send_gap = max(self.max_send_gap, t - self._sent_at.get(i - 1, c.t0))
                c.send(self.proto.request(c, i))
                with self._lock:
                    self.sent = i + 1
                    self._cv.notify_all()
                i += 1
                time.sleep(max(0.0, min(t + self.period, stop) - time.monotonic()))
        except Ended as e:
            self._fail("ended", "ended (%s) at request %d, %.3f s after connecting"
                       % (e, i, time.monotonic() - c.t0))
        except Exception as e:  # noqa: B902
            self._fail("error", "sending request %d: %s: %s" % (i, type(e).__name__, e))
        finally:
            with self._lock:
                self._done = True
                self._cv.notify_all()

    def _read(self):
        c = self.client
        i = 0
        try:
            while True:
                with self._lock:
                    while i >= self.sent and not self._done:
                        self._cv.wait(1.0)
                    if i >= self.sent:
                        return
                self.proto.reply(c, i)
                now = time.monotonic()
                with self._lock:
                    self.max_wait = max(self.max_wait, now - self._sent_at[i])
                    self.answered = i + 1
                i += 1
        except Ended as e:
            self._fail("ended", "ended (%s) %.3f s after connecting, waiting for answer %d "
                       "(sent %.3f s before)" % (e, time.monotonic() - c.t0, i,
                                                 time.monotonic() - self._sent_at[i]))
        except Fail as e:
            self._fail("error", "answer %d: %s" % (i, e))
        except Exception as e:  # noqa: B902 (a protocol surprise is a failure)
            self._fail("error", "answer %d: %s: %s" % (i, type(e).__name__, e))
        finally:
            self.client.close()   # at once: left open, it would (rightly) be cut

    def check(self, what):
        for t in self.threads:
            t.join(self.duration + 15)
        self.client.close()
        if any(t.is_alive() for t in self.threads):
            raise Fail("%s: still running after %g s" % (what, self.duration + 15))
        if self.ended:
            stalled = ""
            if self.max_send_gap >= LIMIT:
                stalled = " (NB: the test client itself paused %.3f s between requests: a " \
                          "stalled test process, not a shim fault)" % self.max_send_gap
            raise Fail("%s (a request every %g s, limit %g s) %s, after %d right answers%s"
                       % (what, self.period, LIMIT, self.ended, self.answered, stalled))
        if self.error:
            raise Fail("%s: wrong answer: %s" % (what, self.error))
        if self.answered != self.sent or self.sent < 3:
            raise Fail("%s: %d answers to %d requests in %g s" % (what, self.answered, self.sent,
                                                                  self.duration))
        return "%s kept: %d requests over %g s, all answered right (slowest answer %.3f s)" % (
            what, self.sent, self.duration, self.max_wait)


# --------------------------------------------------------------------------
# the shim's log

_CUT = re.compile(r"tcpkeep\[(\d+)\]: fd (\d+) (\S+) -> (\S+): idle for ([\d.]+) s, shut down")


def _port(addr):
    return int(addr.rpartition(":")[2])


def shim_log(path):
    """(cuts [(pid, local port, peer port, idle s)], other lines)."""
    cuts, other = [], []
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return cuts, other
    for line in lines:
        m = _CUT.search(line)
        if m:
            cuts.append((int(m.group(1)), _port(m.group(3)), _port(m.group(4)),
                         float(m.group(5))))
        elif line.strip():
            other.append(line.strip())
    return cuts, other


def log_summary(path):
    """The shim's log in brief, for a failure's message."""
    cuts, other = shim_log(path)
    return "the shim logged %d cut(s) (pid, local port, peer port, idle s): %s%s" % (
        len(cuts), cuts[:6], "; and: %r" % other[:4] if other else "")


def check_shim_log(path, idle_ports, extra_cuts=0, extra_peer=None):
    """The shim logged a cut of each idle client's connection (by its port)
    and of nothing else but up to `extra_cuts` connections to `extra_peer`
    (a proxy's backend legs), and no other line. A description."""
    cuts, other = shim_log(path)
    if other:
        raise Fail("the shim logged something unexpected: %r" % other[:5])
    named = [c for c in cuts if c[2] in idle_ports or c[1] in idle_ports]
    missing = [p for p in idle_ports if not any(p in (c[1], c[2]) for c in named)]
    if missing:
        raise Fail("the shim's log names no cut of the idle connection(s) with port(s) %s; "
                   "cuts logged (pid, local port, peer port, idle s): %s" % (missing, cuts))
    rest = [c for c in cuts if c not in named]
    bad = [c for c in rest if c[2] != extra_peer]
    if bad or len(rest) > extra_cuts:
        raise Fail("the shim cut connection(s) besides the idle client's (pid, local port, "
                   "peer port, idle s): %s" % rest)
    return "the shim logged %d cut(s) (idle %s s)%s" % (
        len(cuts), "/".join("%.3f" % c[3] for c in cuts),
        ", the idle client's and its backend leg" if rest else ", the idle client's only")


# --------------------------------------------------------------------------
# HTTP/1.1, just enough for a keep-alive client

def http_reply(c):
    """Read one HTTP/1.1 answer with a Content-Length on Client c:
    (status, headers dict, body)."""
    status = c.readline().decode("latin-1").rstrip("\r\n")
    parts = status.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise Fail("bad status line %r" % status)
    headers = {}
    while True:
        line = c.readline().decode("latin-1").rstrip("\r\n")
        if not line:
            break
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if "content-length" not in headers:
        raise Fail("no Content-Length in the answer: %r" % headers)
    body = c.readexact(int(headers["content-length"]))
    return int(parts[1]), headers, body


def http_proto(path, expected, host="localhost"):
    """GET path on a keep-alive connection; the answer must be the file."""
    def request(c, i):
        return ("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: tcpkeep-test\r\n\r\n"
                % (path, host)).encode()

    def reply(c, i):
        st, _, body = http_reply(c)
        if st != 200 or body != expected:
            raise Fail("GET %s: status %d, %d bytes, expected 200 and the file's %d bytes"
                       % (path, st, len(body), len(expected)))
    return Proto(request, reply)


def make_tmpdir():
    d = tmpdir()
    os.chmod(d, 0o755)  # nginx workers may run as another user
    return d
