"""Dead peers: what keepalive is for (issue 3).

Two network namespaces made by the test, a veth pair between them (netns.py).
A python3 program in namespace a, under the shim, talks to a plain peer in
namespace b; then the peer vanishes (its traffic is dropped in both
directions, no RST, no ICMP) and the program must learn it from the kernel:

- idle: keepalive finds it within KEEPIDLE + KEEPINTVL x KEEPCNT (+1 s), and
  the program's blocked recv() fails with ETIMEDOUT (client and accepted
  sockets, IPv4 and IPv6);
- unacknowledged data written after the peer vanished: TCP_USER_TIMEOUT
  ends it within its limit (+1 s), recv() fails with ETIMEDOUT;
- without the shim, the same program is still waiting, with no error, after
  all those limits + 2 s.

Times are CLOCK_MONOTONIC, printed by the program itself, so the test's own
scheduling does not blur them.
"""
import os
import select
import time

import helpers
from helpers import Fail, check, script, timeout
from netns import NetPair

KEEPIDLE, KEEPINTVL, KEEPCNT = 1, 1, 2
KEEP_LIMIT = KEEPIDLE + KEEPINTVL * KEEPCNT          # 3 s
USER_TIMEOUT = 2                                      # s
SLACK = 1.0          # the "+1 s"
EARLY = 0.05         # jiffies; the program's clock starts after the kernel's
PEER_PORT, PROG_PORT = 5000, 5001

# The peer, in namespace b, not under the shim: listens on argv[2:] (port
# argv[1]), holds every connection it accepts or makes, never closes one.
# A line "HOST PORT" on stdin: connect there and hold it.
PEER = r'''
import select, socket, sys
listeners, held = [], []
for host in sys.argv[2:]:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, int(sys.argv[1])))
    s.listen(16)
    listeners.append(s)
print("listening", flush=True)
while True:
    r, _, _ = select.select(listeners + held + [sys.stdin], [], [], 60)
    for s in r:
        if s is sys.stdin:
            line = sys.stdin.readline()
            if not line:
                sys.exit(0)
            host, port = line.split()
            held.append(socket.create_connection((host, int(port)), timeout=5))
            print("connected", flush=True)
        elif s in listeners:
            held.append(s.accept()[0])
        else:
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if not data:
                held.remove(s)
                s.close()
'''

# The program under test, in namespace a: an ordinary blocking client
# (connect HOST PORT) or server (accept HOST PORT) that never sets a socket
# option. `idle`: blocks in recv() at once; `write`: waits for a line on
# stdin, sends 1000 bytes, then blocks in recv(). Prints what recv() ended
# with and when.
PROG = r'''
import errno, socket, struct, sys, time
role, host, port, behaviour = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
now = lambda: "%.6f" % time.monotonic()
if role == "connect":
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect((host, port))
else:
    ls = socket.socket(fam, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, port))
    ls.listen(4)
    ls.settimeout(10)
    print("listening", now(), flush=True)
    s = ls.accept()[0]
s.settimeout(None)
print("connected", now(), flush=True)
T = socket.IPPROTO_TCP
print("options so_keepalive=%d keepidle=%d keepintvl=%d keepcnt=%d user_timeout=%d" % (
    s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), s.getsockopt(T, socket.TCP_KEEPIDLE),
    s.getsockopt(T, socket.TCP_KEEPINTVL), s.getsockopt(T, socket.TCP_KEEPCNT),
    s.getsockopt(T, socket.TCP_USER_TIMEOUT)), flush=True)
if behaviour == "write":
    sys.stdin.readline()
    t = now()
    n = s.send(b"x" * 1000)
    print("wrote", n, t, flush=True)
while True:
    try:
        data = s.recv(65536)
    except OSError as e:
        t = now()
        ti = s.getsockopt(T, socket.TCP_INFO, 104)
        print("error", errno.errorcode.get(e.errno, str(e.errno)), t,
              "last_ack_recv_ms=%d" % struct.unpack_from("I", ti, 56)[0], flush=True)
        break
    if not data:
        print("eof", now(), flush=True)
        break
'''


class Lines:
    """Whole lines from a child's stdout, read with os.read (no hidden
    buffer, so select() tells the truth), each wait bounded."""

    def __init__(self, p, name):
        self.p, self.name, self.buf = p, name, b""
        self.fd = p.stdout.fileno()

    def ready(self):
        return b"\n" in self.buf

    def fill(self, left):
        r, _, _ = select.select([self.fd], [], [], max(0.0, left))
        if not r:
            return False
        chunk = os.read(self.fd, 65536)
        if not chunk:
            _, err = helpers.finish(self.p)
            raise Fail("%s exited (%s) before printing a whole line; stdout %r, stderr %r"
                       % (self.name, self.p.returncode, self.buf[-300:], err[-800:]))
        self.buf += chunk
        return True

    def line(self, deadline, what):
        while not self.ready():
            if not self.fill(deadline - time.monotonic()):
                _, err = helpers.finish(self.p)
                raise Fail("%s: timed out waiting for %s; stdout %r, stderr %r"
                           % (self.name, what, self.buf[-300:], err[-800:]))
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()


class Prog:
    """One program under test in namespace a."""

    def __init__(self, pair, name, role, host, port, behaviour, shim, env):
        self.name = name
        argv = script(PROG, "prog.py") + [role, host, str(port), behaviour]
        if shim:
            argv = ["env", "LD_PRELOAD=" + helpers.lib()] + argv
        self.p = pair.spawn("a", argv, env=env)
        self.out = Lines(self.p, name)
        self.connected = self.wrote = self.ended = None
        self.options = {}
        self.how = self.extra = None

    def line(self, deadline, what):
        return self.out.line(deadline, what)

    def expect(self, word, deadline):
        line = self.line(deadline, "%r" % word)
        if not line.startswith(word + " "):
            _, err = helpers.finish(self.p)
            raise Fail("%s printed %r, expected %r...; stderr: %r"
                       % (self.name, line, word, err[-800:]))
        return line.split()[1:]

    def wait_connected(self, deadline):
        self.connected = float(self.expect("connected", deadline)[0])
        self.options = dict(kv.split("=") for kv in self.expect("options", deadline))
        self.options = {k: int(v) for k, v in self.options.items()}

    def go(self, deadline):
        self.p.stdin.write("go\n")
        self.p.stdin.flush()
        n, t = self.expect("wrote", deadline)
        check(int(n) == 1000, "%s: send() wrote %s bytes, expected 1000" % (self.name, n))
        self.wrote = float(t)

    def wait_end(self, deadline):
        """The end of the program's recv(): sets .how ('ETIMEDOUT', 'eof',
        ...), .ended (monotonic) and .extra (last_ack_recv_ms)."""
        words = self.line(deadline, "the end of its recv()").split()
        if words[0] == "error":
            self.how, self.ended = words[1], float(words[2])
            self.extra = int(words[3].split("=")[1])
        elif words[0] == "eof":
            self.how, self.ended = "eof", float(words[1])
        else:
            raise Fail("%s printed %r" % (self.name, " ".join(words)))


def _start(pair, shim, env, specs):
    """The peer in b, then the programs in a; returns (peer, [Prog]) once
    every program is connected. specs: (name, role, family, behaviour)."""
    hosts = [pair.addr4["b"]] + ([pair.addr6["b"]] if pair.ipv6 else [])
    peer = pair.spawn("b", script(PEER, "peer.py") + [str(PEER_PORT)] + hosts)
    peer_out = Lines(peer, "the peer in namespace b")
    deadline = time.monotonic() + 15
    peer_out.line(deadline, "'listening'")
    progs = []
    for name, role, fam, behaviour in specs:
        if fam == 6 and not pair.ipv6:
            continue
        if role == "connect":
            host = pair.addr6["b"] if fam == 6 else pair.addr4["b"]
            pr = Prog(pair, name, role, host, PEER_PORT, behaviour, shim, env)
        else:
            host = pair.addr6["a"] if fam == 6 else pair.addr4["a"]
            pr = Prog(pair, name, role, host, PROG_PORT, behaviour, shim, env)
            pr.expect("listening", deadline)
            peer.stdin.write("%s %d\n" % (host, PROG_PORT))
            peer.stdin.flush()
            peer_out.line(deadline, "'connected' (to %s)" % name)
        pr.wait_connected(deadline)
        progs.append(pr)
    return peer, progs


def _ipv6_note(pair):
    return "" if pair.ipv6 else "; " + pair.ipv6_note


KEEP_ENV = {"TCPKEEP_KEEPIDLE": KEEPIDLE, "TCPKEEP_KEEPINTVL": KEEPINTVL,
            "TCPKEEP_KEEPCNT": KEEPCNT}
UT_ENV = {"TCPKEEP_USER_TIMEOUT": "%ds" % USER_TIMEOUT}


@timeout(30)
def test_dead_peer_keepalive():
    """Idle connections to a peer that vanished (client IPv4 and IPv6, and an
    accepted IPv4 one), under the shim with KEEPIDLE=1 KEEPINTVL=1 KEEPCNT=2:
    each recv() fails with ETIMEDOUT within 3 s (+1 s) of the vanish, and no
    sooner than 3 s after the peer was last heard from."""
    pair = NetPair()
    try:
        pair.setup()
        _, progs = _start(pair, True, KEEP_ENV, [
            ("IPv4 client", "connect", 4, "idle"), ("IPv6 client", "connect", 6, "idle"),
            ("IPv4 accepted socket", "accept", 4, "idle")])
        for pr in progs:
            o = pr.options
            check(o["so_keepalive"] == 1 and o["keepidle"] == KEEPIDLE and
                  o["keepintvl"] == KEEPINTVL and o["keepcnt"] == KEEPCNT,
                  "%s: the kernel has %r on the program's socket, expected keepalive on, "
                  "%d/%d/%d" % (pr.name, o, KEEPIDLE, KEEPINTVL, KEEPCNT))
        t_v, method = pair.vanish()
        deadline = t_v + KEEP_LIMIT + SLACK + 2
        for pr in progs:
            pr.wait_end(deadline)
        report = []
        for pr in progs:
            after_v, after_c = pr.ended - t_v, pr.ended - pr.connected
            what = ("%s: %s %.3f s after the vanish (%.3f s after connecting, peer last "
                    "heard %.3f s before)" % (pr.name, pr.how, after_v, after_c,
                                              pr.extra / 1000.0 if pr.extra is not None
                                              else float("nan")))
            check(pr.how == "ETIMEDOUT", "%s; expected ETIMEDOUT" % what)
            check(after_v <= KEEP_LIMIT + SLACK,
                  "%s: later than KEEPIDLE+KEEPINTVLxKEEPCNT = %d s + %g s"
                  % (what, KEEP_LIMIT, SLACK))
            check(after_c >= KEEP_LIMIT - EARLY and pr.extra >= (KEEP_LIMIT - EARLY) * 1000,
                  "%s: EARLIER than %d s after the peer was last heard from"
                  % (what, KEEP_LIMIT))
            report.append(what)
        return ("peer vanished by %s; limit %d+%dx%d = %d s (+%g s): %s; %s%s"
                % (method, KEEPIDLE, KEEPINTVL, KEEPCNT, KEEP_LIMIT, SLACK, "; ".join(report),
                   pair.dropped(), _ipv6_note(pair)))
    finally:
        pair.close()


@timeout(30)
def test_dead_peer_user_timeout():
    """Data written after the peer vanished, never acknowledged, under the
    shim with TCPKEEP_USER_TIMEOUT=2s (keepalive at the kernel's 2-hour
    default, so it plays no part): recv() fails with ETIMEDOUT 2 s (+1 s)
    after the write (IPv4 and IPv6 clients)."""
    pair = NetPair()
    try:
        pair.setup()
        _, progs = _start(pair, True, UT_ENV, [
            ("IPv4 client", "connect", 4, "write"), ("IPv6 client", "connect", 6, "write")])
        for pr in progs:
            o = pr.options
            check(o["user_timeout"] == USER_TIMEOUT * 1000 and o["keepidle"] >= 60,
                  "%s: the kernel has %r on the program's socket, expected user_timeout=%d "
                  "and the default keepidle" % (pr.name, o, USER_TIMEOUT * 1000))
        t_v, method = pair.vanish()
        for pr in progs:
            pr.go(time.monotonic() + 5)
        report = []
        for pr in progs:
            pr.wait_end(pr.wrote + USER_TIMEOUT + SLACK + 2)
            after_w = pr.ended - pr.wrote
            what = ("%s (wrote 1000 bytes %.3f s after the vanish): %s %.3f s after the write"
                    % (pr.name, pr.wrote - t_v, pr.how, after_w))
            check(pr.how == "ETIMEDOUT", "%s; expected ETIMEDOUT" % what)
            check(after_w <= USER_TIMEOUT + SLACK, "%s: later than the user timeout %d s + %g s"
                  % (what, USER_TIMEOUT, SLACK))
            check(after_w >= USER_TIMEOUT - EARLY, "%s: EARLIER than the user timeout %d s"
                  % (what, USER_TIMEOUT))
            report.append(what)
        return ("peer vanished by %s; TCP_USER_TIMEOUT %d s (+%g s), kernel keepidle %d s: "
                "%s; %s%s" % (method, USER_TIMEOUT, SLACK, progs[0].options["keepidle"],
                              "; ".join(report), pair.dropped(), _ipv6_note(pair)))
    finally:
        pair.close()


@timeout(30)
def test_dead_peer_without_shim_waits():
    """The same programs, the same TCPKEEP_* variables, no LD_PRELOAD: the
    idle ones and the ones with unacknowledged data are all still blocked in
    recv(), with no error, 5 s after the peer vanished (the limits above + 2 s);
    ss in namespace a still shows every connection established."""
    pair = NetPair()
    env = dict(KEEP_ENV, **UT_ENV)
    try:
        pair.setup()
        _, progs = _start(pair, False, env, [
            ("IPv4 idle client", "connect", 4, "idle"), ("IPv6 idle client", "connect", 6, "idle"),
            ("IPv4 idle accepted socket", "accept", 4, "idle"),
            ("IPv4 writing client", "connect", 4, "write"),
            ("IPv6 writing client", "connect", 6, "write")])
        for pr in progs:
            check(pr.options["so_keepalive"] == 0 and pr.options["user_timeout"] == 0,
                  "%s: without the shim the socket has %r" % (pr.name, pr.options))
        t_v, method = pair.vanish()
        for pr in progs:
            if pr.name.endswith("writing client"):
                pr.go(time.monotonic() + 5)
        wait = max(KEEP_LIMIT, USER_TIMEOUT) + 2
        until = t_v + wait
        for pr in progs:   # anything at all from a program means it stopped waiting
            if pr.out.ready() or pr.out.fill(0):
                raise Fail("without the shim %s printed %r" % (pr.name, pr.out.buf))
        while True:
            left = until - time.monotonic()
            if left <= 0:
                break
            r, _, _ = select.select([pr.out.fd for pr in progs], [], [], left)
            for pr in progs:
                if pr.out.fd in r:
                    pr.out.fill(0)
                    raise Fail("without the shim %s printed %r %.3f s after the vanish "
                               "(expected it to be still waiting in recv())"
                               % (pr.name, pr.out.buf, time.monotonic() - t_v))
        checked = time.monotonic() - t_v
        for pr in progs:
            check(pr.p.poll() is None, "without the shim %s exited (%s)"
                  % (pr.name, pr.p.returncode))
        ss = pair.ss("a")
        estab = [ln for ln in ss if ln.startswith("ESTAB")]
        check(len(estab) == len(progs),
              "ss in namespace a shows %d established connections, expected %d: %r"
              % (len(estab), len(progs), ss))
        timers = sorted(set(ln.split("timer:(")[1].split(",")[0] for ln in estab
                            if "timer:(" in ln))
        return ("peer vanished by %s; without the shim all %d programs (%s) still blocked in "
                "recv() with no error %.3f s after the vanish (keepalive limit %d s, user "
                "timeout %d s, +2 s); ss: %d ESTAB, timers %s; %s%s"
                % (method, len(progs), ", ".join(pr.name for pr in progs), checked, KEEP_LIMIT,
                   USER_TIMEOUT, len(estab), "/".join(timers) or "none", pair.dropped(),
                   _ipv6_note(pair)))
    finally:
        pair.close()
