"""Helpers for test_rules.py, test_stats.py and test_dropin.py: a small
server-and-client program (the "hub") that reports what the kernel holds
for each of its connections, plain peers in the test process, and checks
on the shim's log lines and stats file.

The hub is a Python program run under the shim. It is given a JSON spec:
listeners (IPv4, IPv6, dual-stack), outbound connections (made at start, or
with "wait_go" when the test calls Hub.go()), and options the program sets itself (on a listener before or after listen, on an accepted
socket, on an outbound socket before or after connect). For every socket it
prints one line with the options getsockopt reads back right after
listen / accept / connect, and for every connection the moment it ended:

    LISTEN <port> <opts json>
    CONN <in|out> <local port> <peer port> <peer host> <opts json> <own json>
    END <in|out> <local port> <peer port> <eof|reset|...> <monotonic time>
    READY

It reads everything it receives; `tick` listeners also write a byte every
0.3 s to each of their connections; `hold` listeners keep a connection
open (unread) after its end-of-file instead of closing it.
"""
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

import helpers
from helpers import Fail, check, keepalive_remaining, script, spawn, ss_conns, wait_eof

HUB = r"""
import json, os, selectors, socket, sys, time
T = socket.IPPROTO_TCP
spec = json.loads(sys.argv[1])
OWN = {"keepalive": (socket.SOL_SOCKET, socket.SO_KEEPALIVE),
       "keepidle": (T, socket.TCP_KEEPIDLE), "keepintvl": (T, socket.TCP_KEEPINTVL),
       "keepcnt": (T, socket.TCP_KEEPCNT), "user_timeout": (T, socket.TCP_USER_TIMEOUT)}

def out(*words):
    print(" ".join(str(w) for w in words), flush=True)

def opts(s):
    return json.dumps({k: s.getsockopt(lv, o) for k, (lv, o) in OWN.items()},
                      separators=(",", ":"))

def set_own(s, values):
    # What each of the program's own setsockopt calls returned.
    res = {}
    for k, v in (values or {}).items():
        lv, o = OWN[k]
        try:
            s.setsockopt(lv, o, v)
            res[k] = 0
        except OSError as e:
            res[k] = e.errno
    return json.dumps(res, separators=(",", ":"))

sel = selectors.DefaultSelector()
listeners = []
for ld in spec.get("listen", []):
    fam = socket.AF_INET6 if ":" in ld["host"] else socket.AF_INET
    ls = socket.socket(fam, socket.SOCK_STREAM)
    if fam == socket.AF_INET6:
        ls.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if ld.get("dual") else 1)
    if ld.get("own") == "before":
        set_own(ls, spec.get("own"))
    ls.bind((ld["host"], ld["port"]))
    ls.listen(64)
    if ld.get("own") == "after":
        set_own(ls, spec.get("own"))
    out("LISTEN", ld["port"], opts(ls))
    sel.register(ls, selectors.EVENT_READ, ("listen", ld))
    listeners.append(ls)

conns = {}     # fd -> [socket, direction, lport, pport, tick]
held = []

def add(s, direction, ld_or_cd):
    s.setblocking(False)
    lp, pp = s.getsockname()[1], s.getpeername()[1]
    conns[s.fileno()] = [s, direction, lp, pp, bool(ld_or_cd.get("tick")),
                         bool(ld_or_cd.get("hold"))]
    sel.register(s, selectors.EVENT_READ, ("conn", None))

# With wait_go, the outbound connections wait for a line on stdin, so that a
# test can start several programs first and then start every clock at once.
if spec.get("wait_go"):
    out("READY")
    sys.stdin.readline()
for cd in spec.get("connect", []):
    fam = socket.AF_INET6 if ":" in cd["host"] else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    own = "{}"
    if cd.get("own") == "before":
        own = set_own(s, spec.get("own"))
    if cd.get("bind"):
        s.bind(tuple(cd["bind"]))
    s.settimeout(5)
    s.connect((cd["host"], cd["port"]))
    if cd.get("own") == "after":
        own = set_own(s, spec.get("own"))
    out("CONN", "out", s.getsockname()[1], cd["port"], cd["host"], opts(s), own)
    add(s, "out", cd)
if not spec.get("wait_go"):
    out("READY")

next_tick = time.monotonic() + 0.3
end_at = time.monotonic() + spec.get("run_for", 60)
while time.monotonic() < end_at:
    wait = max(0.0, next_tick - time.monotonic())
    for key, _ in sel.select(wait):
        kind, ld = key.data
        if kind == "listen":
            c, peer = key.fileobj.accept()
            own = "{}"
            if ld.get("own") == "accepted":
                own = set_own(c, spec.get("own"))
            out("CONN", "in", c.getsockname()[1], peer[1], peer[0], opts(c), own)
            add(c, "in", ld)
            continue
        s = key.fileobj
        info = conns[s.fileno()]
        try:
            data = s.recv(65536)
            how = "eof" if not data else None
        except BlockingIOError:
            continue
        except OSError as e:
            data, how = b"", type(e).__name__
        if data:
            continue
        out("END", info[1], info[2], info[3], how, "%.6f" % time.monotonic())
        sel.unregister(s)
        del conns[s.fileno()]
        if info[5]:
            held.append(s)
        else:
            s.close()
    now = time.monotonic()
    if now >= next_tick:
        next_tick = now + 0.3
        for info in list(conns.values()):
            if info[4]:
                try:
                    info[0].send(b".")
                except OSError:
                    pass
"""


def hub_argv():
    return script(HUB, "hub.py")


class Hub:
    """The hub under the shim: start(), then conn()/end() wait (bounded)
    for its report on one connection."""

    def __init__(self, spec, env, shim=True, argv_prefix=(), stderr_path=None):
        self.spec = spec
        self.lines = []
        self.stderr_path = stderr_path
        err = subprocess.PIPE
        if stderr_path:
            err = open(stderr_path, "w")
        try:
            self.p = spawn(list(argv_prefix) + hub_argv() + [json.dumps(spec)], shim=shim,
                           env=env, stderr=err)
        finally:
            if stderr_path:
                err.close()
        self.pid = self.p.pid
        self.wait_line(lambda w: w[0] == "READY", 10, "READY")
        for ld in spec.get("listen", []):
            helpers.wait_listen(ld["port"], v6=":" in ld["host"], proc=self.p)

    def go(self):
        """Let a hub started with wait_go make its outbound connections."""
        self.p.stdin.write("GO\n")
        self.p.stdin.flush()

    def kill_all(self):
        """Kill the hub and whatever runs under it (the hub itself, when it
        was started under strace), by PID."""
        from realprog import stop
        stop(self.p, sig=signal.SIGKILL, limit=2)

    def _pump(self, end):
        line = helpers._next_line(self.p.stdout, end)
        if line is None:
            raise EOFError
        self.lines.append(line.split())
        return self.lines[-1]

    def wait_line(self, pred, limit, what):
        for w in self.lines:
            if pred(w):
                return w
        end = time.monotonic() + limit
        try:
            while True:
                w = self._pump(end)
                if pred(w):
                    return w
        except (TimeoutError, EOFError) as e:
            raise Fail("the hub (pid %d) did not report %s within %g s (%s); its lines: %r%s"
                       % (self.pid, what, limit, "exited" if isinstance(e, EOFError)
                          else "timed out", [" ".join(x) for x in self.lines[-6:]],
                          self._err_tail()))

    def _err_tail(self):
        if self.p.poll() is None:
            return ""
        try:
            err = self.p.stderr.read() if self.p.stderr else open(self.stderr_path).read()
        except (OSError, ValueError):
            err = ""
        return "; stderr: %r" % err[-600:]

    def conn(self, direction, lport=None, pport=None, limit=5):
        """The CONN report: dict(dir, lport, pport, peer, opts, own)."""
        w = self.wait_line(lambda w: w[0] == "CONN" and w[1] == direction
                           and (lport is None or int(w[2]) == lport)
                           and (pport is None or int(w[3]) == pport), limit,
                           "the %s connection %s -> %s" % (direction, lport, pport))
        return dict(dir=w[1], lport=int(w[2]), pport=int(w[3]), peer=w[4],
                    opts=json.loads(w[5]), own=json.loads(w[6]))

    def listener_opts(self, port):
        w = self.wait_line(lambda w: w[0] == "LISTEN" and int(w[1]) == port, 5,
                           "its listener on %d" % port)
        return json.loads(w[2])

    def ended(self, lport, pport):
        """(how, monotonic time) if the hub has reported this connection's
        end so far (without waiting), else None."""
        self.poll_lines()
        for w in self.lines:
            if w[0] == "END" and int(w[2]) == lport and int(w[3]) == pport:
                return w[4], float(w[5])
        return None

    def poll_lines(self):
        try:
            while True:
                self._pump(time.monotonic() + 0.001)
        except (TimeoutError, EOFError):
            pass

    def stderr_text(self):
        """Everything the hub printed on stderr (kills it first)."""
        helpers.kill(self.p)
        if self.stderr_path:
            with open(self.stderr_path, errors="replace") as f:
                return f.read()
        try:
            return self.p.stderr.read() or ""
        except (OSError, ValueError):
            return ""


# --------------------------------------------------------------------------
# plain peers in the test process


class Watch:
    """Waits on a thread (bounded) for the end of a plain socket, so that
    several connections can be watched at once with exact end times."""

    def __init__(self, sock, limit):
        self.sock, self.end, self.how = sock, None, None
        self.thread = threading.Thread(target=self._run, args=(limit,), daemon=True)
        self.thread.start()

    def _run(self, limit):
        self.end, _, self.how = wait_eof(self.sock, limit)

    def join(self, limit=None):
        self.thread.join(limit)
        return self.end, self.how


def plain_listener(host, port, backlog=16):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    ls = socket.socket(fam, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, port))
    ls.listen(backlog)
    ls.settimeout(5)
    return ls


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def consecutive_free_ports(n, lo=20000, hi=None):
    """n consecutive ports free on 127.0.0.1 and ::1 right now (bounded
    search), below the kernel's ephemeral range so that no other test's
    connection takes one of them meanwhile."""
    import random
    if hi is None:
        hi = max(lo + 1000, _ephemeral_low())
    for _ in range(200):
        base = random.randrange(lo, hi - n)
        ok = True
        for port in range(base, base + n):
            for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
                try:
                    with socket.socket(fam, socket.SOCK_STREAM) as s:
                        s.bind((host, port))
                except OSError:
                    ok = False
                    break
            if not ok:
                break
        if ok:
            return list(range(base, base + n))
    raise Fail("no %d consecutive free ports found" % n)


def free_ports(n, avoid=()):
    """n distinct ports, each free on both 127.0.0.1 and ::1, none in avoid."""
    got = []
    while len(got) < n:
        p = consecutive_free_ports(1)[0]
        if p not in got and p not in avoid:
            got.append(p)
    return got


def kernel_defaults():
    def rd(name):
        with open("/proc/sys/net/ipv4/" + name) as f:
            return int(f.read())
    return dict(keepalive=0, keepidle=rd("tcp_keepalive_time"),
                keepintvl=rd("tcp_keepalive_intvl"), keepcnt=rd("tcp_keepalive_probes"),
                user_timeout=0)


def untouched(opts):
    """True if getsockopt shows exactly the kernel's defaults: no option
    from the shim (nor from the program)."""
    return opts == kernel_defaults()


def ss_timer(lport, pport):
    """(remaining keepalive seconds or None, the ss line) for the
    established connection lport -> pport; Fail if ss does not show it."""
    for c in ss_conns():
        if c["lport"] == lport and c["pport"] == pport and c["state"].startswith("ESTAB"):
            return keepalive_remaining(c), c["line"]
    raise Fail("ss shows no established connection %d -> %d" % (lport, pport))


def expect_timer(lport, pport, want, who, tol=3):
    rem, line = ss_timer(lport, pport)
    if rem is None:
        raise Fail("%s: ss shows no keepalive timer: %r" % (who, line))
    if not (want - tol <= rem <= want):
        raise Fail("%s: keepalive timer %.3f s, expected about %d s: %r" % (who, rem, want, line))
    return rem


def expect_no_timer(lport, pport, who):
    rem, line = ss_timer(lport, pport)
    if rem is not None:
        raise Fail("%s: ss shows a keepalive timer though the shim must leave it alone: %r"
                   % (who, line))


def wait_until(pred, limit, step=0.05):
    """Poll pred() until it returns something true (returned) or `limit`
    seconds pass (None)."""
    end = time.monotonic() + limit
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= end:
            return None
        time.sleep(step)


# --------------------------------------------------------------------------
# log lines

REASONS = ("idle", "read-idle", "write-idle", "first-byte", "half-closed", "lifetime")
REASON_KEYS = tuple(r.replace("-", "_") for r in REASONS)
CUT_LINE = re.compile(r"^tcpkeep\[(\d+)\]: fd (\d+) (\S+) -> (\S+): (%s) for (\d+\.\d{3}) s, "
                      r"(shut down|reset)$" % "|".join(REASONS))
DRY_LINE = re.compile(r"^tcpkeep\[(\d+)\]: fd (\d+) (\S+) -> (\S+): (%s) for (\d+\.\d{3}) s, "
                      r"would be (shut down|reset) \(dry run\)$" % "|".join(REASONS))


def read_text(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def parse_lines(text, rx):
    """[dict(pid, fd, local, peer, lport, pport, reason, secs, action)] of
    the lines matching rx."""
    out = []
    for line in text.splitlines():
        m = rx.match(line)
        if m:
            out.append(dict(pid=int(m.group(1)), fd=int(m.group(2)), local=m.group(3),
                            peer=m.group(4), lport=_port_of(m.group(3)),
                            pport=_port_of(m.group(4)), reason=m.group(5),
                            secs=float(m.group(6)), action=m.group(7), line=line))
    return out


def _port_of(addr):
    tail = addr.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def lines_for(lines, lport, pport):
    return [x for x in lines if x["lport"] == lport and x["pport"] == pport]


# --------------------------------------------------------------------------
# the stats file

STATS_KEYS = {"pid", "tracked_now", "tracked_total", "keepalive_set", "cuts", "would_cut",
              "option_errors", "updated"}
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|\+00:00)$")


def read_stats(path):
    """The parsed stats file, None if absent; Fail if present but not a
    valid stats object."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        obj = json.loads(text)
    except ValueError:
        raise Fail("%s is not valid JSON: %r" % (path, text[:300]))
    check_stats_shape(obj, path)
    return obj


def check_stats_shape(obj, path):
    check(isinstance(obj, dict), "%s: not a JSON object: %r" % (path, obj))
    missing = STATS_KEYS - set(obj)
    check(not missing, "%s: keys missing: %s (got %s)" % (path, sorted(missing), sorted(obj)))
    for k in ("cuts", "would_cut"):
        check(isinstance(obj[k], dict) and set(REASON_KEYS) <= set(obj[k]),
              "%s: %s must hold the keys %s: %r" % (path, k, REASON_KEYS, obj[k]))
        for r in REASON_KEYS:
            check(isinstance(obj[k][r], int) and obj[k][r] >= 0,
                  "%s: %s.%s is not a count: %r" % (path, k, r, obj[k][r]))
    for k in ("pid", "tracked_now", "tracked_total", "keepalive_set", "option_errors"):
        check(isinstance(obj[k], int) and not isinstance(obj[k], bool) and obj[k] >= 0,
              "%s: %s is not a count: %r" % (path, k, obj[k]))
    check(isinstance(obj["updated"], str) and ISO_UTC.match(obj["updated"]),
          "%s: updated is not an ISO 8601 UTC time: %r" % (path, obj["updated"]))


def updated_epoch(obj):
    import calendar
    s = obj["updated"].replace("+00:00", "Z")
    base = s[:19]
    frac = s[19:-1]
    t = calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S"))
    return t + (float(frac) if frac else 0.0)


def wait_stats(path, pred, limit, what):
    """Poll the stats file (bounded) until pred(obj) holds; return obj, or
    Fail naming the last content seen."""
    last = [None]

    def look():
        obj = read_stats(path)
        last[0] = obj
        return obj if obj is not None and pred(obj) else None
    obj = wait_until(look, limit, 0.05)
    if obj is None:
        raise Fail("%s: not seen in %s within %g s; last content: %s"
                   % (what, path, limit, json.dumps(last[0]) if last[0] else "(no file)"))
    return obj


def zero_reasons():
    return {k: 0 for k in REASON_KEYS}


def env_without(*names):
    """extra-env entries that remove names from the child's environment."""
    return {n: None for n in names}


def is_file(path):
    return os.path.isfile(path)
