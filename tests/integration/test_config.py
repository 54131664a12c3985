"""Bad configuration: one line on stderr, then a pure pass-through."""
import json
import re

from helpers import Fail, run, script

ECHO_PROG = r"""
import json, os, socket, time
ls = socket.socket()
ls.bind(("127.0.0.1", 0)); ls.listen(4)
c = socket.socket()
c.connect(ls.getsockname())
a, _ = ls.accept()
c.sendall(b"hello"); echo_in = a.recv(5); a.sendall(echo_in); echo = c.recv(5)
T = socket.IPPROTO_TCP
kernel_idle = int(open("/proc/sys/net/ipv4/tcp_keepalive_time").read())
opts = [dict(keepalive=s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
             keepidle=s.getsockopt(T, socket.TCP_KEEPIDLE),
             keepcnt=s.getsockopt(T, socket.TCP_KEEPCNT)) for s in (c, a)]
time.sleep(0.7)      # longer than any limit the test sets
a.setblocking(False)
try:
    cut = a.recv(1) == b""
except BlockingIOError:
    cut = False
print("RESULT " + json.dumps(dict(pid=os.getpid(), echo=echo.decode(), opts=opts, cut=cut,
                                  kernel_idle=kernel_idle)), flush=True)
"""

CASES = [
    ({"TCPKEEP_KEEPCNT": "abc", "TCPKEEP_IDLE_TIMEOUT": "300ms", "TCPKEEP_KEEPIDLE": "77"},
     r'TCPKEEP_KEEPCNT="abc": expected an integer 1\.\.127; tcpkeep is disabled in this process'),
    ({"TCPKEEP_KEEPCNT": "abc", "TCPKEEP_IDLE_TIMEOUT": "300ms", "TCPKEEP_LOG": "off"},
     r'TCPKEEP_KEEPCNT="abc": expected an integer 1\.\.127; tcpkeep is disabled in this process'),
    ({"TCPKEEP_IDLE_TIMEOUT": "5x", "TCPKEEP_KEEPIDLE": "77"},
     r'TCPKEEP_IDLE_TIMEOUT="5x": expected [^;]+; tcpkeep is disabled in this process'),
    ({"TCPKEEP_KEEPIDLE": "40000", "TCPKEEP_IDLE_TIMEOUT": "300ms"},
     r'TCPKEEP_KEEPIDLE="40000": expected [^;]*32767[^;]*; tcpkeep is disabled in this process'),
]


def test_bad_values_pass_through():
    """TCPKEEP_KEEPCNT=abc (also with TCPKEEP_LOG=off), TCPKEEP_IDLE_TIMEOUT=5x,
    TCPKEEP_KEEPIDLE=40000: exactly one line on stderr, the program works,
    no keepalive, no option, no cut."""
    argv = script(ECHO_PROG)
    lines = []
    for env, tail in CASES:
        rc, out, err = run(argv, env=env, limit=20)
        label = " ".join("%s=%s" % kv for kv in env.items())
        m = re.search(r"^RESULT (.*)$", out, re.M)
        if rc != 0 or not m:
            raise Fail("%s: the program failed (status %s): %r" % (label, rc, err[-600:]))
        res = json.loads(m.group(1))
        want = re.compile(r"^tcpkeep\[%d\]: %s$" % (res["pid"], tail))
        errs = err.splitlines()
        if len(errs) != 1 or not want.match(errs[0]) or not err.endswith("\n"):
            raise Fail("%s: stderr is %r, expected exactly one line matching %s"
                       % (label, err, want.pattern))
        if res["echo"] != "hello":
            raise Fail("%s: echo %r" % (label, res["echo"]))
        for o in res["opts"]:
            if o["keepalive"] != 0 or o["keepidle"] != res["kernel_idle"]:
                raise Fail("%s: options were set though tcpkeep is disabled: %s" % (label, o))
        if res["cut"]:
            raise Fail("%s: the idle connection was cut though tcpkeep is disabled" % label)
        lines.append(errs[0])
    return "%d bad configurations: one line each, pass-through (e.g. %s)" % (len(CASES), lines[0])
