"""What the shim must leave alone: non-TCP descriptors, errno, programs whose
hooks run before the shim's constructor."""
import json
import os
import re
import socket
import time

from helpers import (Fail, check, compile_c, connect, expect_line, finish, free_port, lib,
                     need, run, script, spawn, tmpdir, wait_eof)

NON_TCP_PROG = r"""
import json, os, socket, sys, time
d = sys.argv[1]
fds = {}
keep = []
def note(name, s):
    keep.append(s)
    fds[name] = s.fileno() if hasattr(s, "fileno") else s
    return s

# The TCP connection: the positive control (options set, cut when idle).
tl = note("tcp_listen", socket.socket())
tl.bind(("127.0.0.1", 0)); tl.listen(4)
tc = note("tcp_client", socket.socket())
tc.connect(tl.getsockname())
ta = note("tcp_accepted", tl.accept()[0])

# UNIX stream: made by socket(), connected, accepted (with an address).
ul = note("unix_listen", socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
ul.bind(os.path.join(d, "sock")); ul.listen(4)
uc = note("unix_client", socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC))
uc.connect(os.path.join(d, "sock"))
ua = note("unix_accepted", ul.accept()[0])
p1, p2 = socket.socketpair()
note("unix_pair_a", p1); note("unix_pair_b", p2)
sq = note("unix_seqpacket", socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET))
# UDP over IPv4 and IPv6.
u4 = note("udp4", socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
u4.bind(("127.0.0.1", 0))
u6 = note("udp6", socket.socket(socket.AF_INET6, socket.SOCK_DGRAM))
u6.bind(("::1", 0))
r, w = os.pipe()
fds["pipe_r"], fds["pipe_w"] = r, w

# Data through each of them.
uc.sendall(b"u"); assert ua.recv(1) == b"u"
p1.sendall(b"p"); assert p2.recv(1) == b"p"
u4.sendto(b"d", u4.getsockname()); assert u4.recvfrom(1)[0] == b"d"
u6.sendto(b"d", u6.getsockname()[:2]); assert u6.recvfrom(1)[0] == b"d"
os.write(w, b"x"); assert os.read(r, 1) == b"x"

ka = {}
for name in ("unix_listen", "unix_client", "unix_accepted", "unix_pair_a", "unix_pair_b",
             "unix_seqpacket", "udp4", "udp6"):
    s = [k for k in keep if hasattr(k, "fileno") and k.fileno() == fds[name]][0]
    ka[name] = s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
ka["tcp_client"] = tc.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
ka["tcp_accepted"] = ta.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)

# Idle for 0.9 s with a 300 ms limit: the TCP pair is cut, the rest not.
time.sleep(0.9)
def works(f):
    try:
        return f()
    except OSError as e:
        return repr(e)
ta.settimeout(2)
tcp_cut = works(lambda: ta.recv(1) == b"")
for s in (uc, ua, p1, p2):
    s.settimeout(2)
unix_ok = works(lambda: uc.sendall(b"v") or ua.recv(1) == b"v" and
                (ua.sendall(b"w") or uc.recv(1) == b"w"))
pair_ok = works(lambda: p2.sendall(b"q") or p1.recv(1) == b"q")
pipe_ok = works(lambda: os.write(w, b"y") and os.read(r, 1) == b"y")
print("RESULT " + json.dumps(dict(fds=fds, keepalive=ka, tcp_cut=tcp_cut, unix_ok=unix_ok,
                                  pair_ok=pair_ok, pipe_ok=pipe_ok)), flush=True)
"""

_SYSCALL = re.compile(r"^(?:\d+\s+)?(setsockopt|getsockopt|shutdown)\((\d+),\s*([A-Z_0-9]+)"
                      r"(?:,\s*([A-Z_0-9]+))?")


def test_non_tcp_untouched():
    """Under the shim (limit 300ms) and strace: UNIX stream and seqpacket
    sockets, socketpairs, UDP and pipes get no setsockopt, no getsockopt but
    the program's own, and are not cut; the TCP pair gets SO_KEEPALIVE and
    is cut."""
    need("strace")
    d = tmpdir()
    trace = os.path.join(d, "trace")
    argv = script(NON_TCP_PROG)
    rc, out, err = run(["strace", "-f", "-qq", "-o", trace,
                        "-e", "trace=setsockopt,getsockopt,shutdown",
                        "-E", "LD_PRELOAD=" + lib(), "-E", "TCPKEEP_IDLE_TIMEOUT=300ms"]
                       + argv + [d], shim=False, limit=30)
    m = re.search(r"^RESULT (.*)$", out, re.M)
    if rc != 0 or not m:
        raise Fail("the program failed (status %s): %r" % (rc, err[-800:]))
    res = json.loads(m.group(1))
    fds = res["fds"]
    tcp = {fds[k] for k in ("tcp_listen", "tcp_client", "tcp_accepted")}
    other = {v: k for k, v in fds.items() if v not in tcp}
    with open(trace) as f:
        calls = [m.groups() for m in map(_SYSCALL.match, f) if m]
    problems = []
    sets = {}
    for name, fd, level, opt in calls:
        fd = int(fd)
        if name == "setsockopt":
            sets.setdefault(fd, set()).add(opt)
        if fd in other:
            if name == "getsockopt" and opt == "SO_KEEPALIVE":
                continue  # the program's own check
            problems.append("%s on %s (fd %d, %s %s)" % (name, other[fd], fd, level, opt))
    for k in ("tcp_listen", "tcp_client"):
        if "SO_KEEPALIVE" not in sets.get(fds[k], set()):
            problems.append("no setsockopt(SO_KEEPALIVE) on %s (fd %d): is strace seeing "
                            "the shim?" % (k, fds[k]))
    for k, v in res["keepalive"].items():
        want = 1 if k.startswith("tcp") else 0
        if v != want:
            problems.append("SO_KEEPALIVE=%d on %s" % (v, k))
    if res["tcp_cut"] is not True:
        problems.append("the idle TCP connection was not cut (control): %s" % res["tcp_cut"])
    for k in ("unix_ok", "pair_ok", "pipe_ok"):
        if res[k] is not True:
            problems.append("%s: %s: the descriptor was disturbed" % (k, res[k]))
    if problems:
        raise Fail("; ".join(problems))
    return ("setsockopt only on the TCP fds %s; %d non-TCP descriptors untouched; "
            "idle TCP cut, idle UNIX/pair/pipe kept" % (sorted(tcp), len(other)))


UNIX_SERVER = r"""
import os, socket, sys
ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
ls.bind(sys.argv[1]); ls.listen(4)
print("listening", flush=True)
c, _ = ls.accept()
while True:
    b = c.recv(100)
    if not b:
        break
    c.sendall(b)
print("server saw EOF", flush=True)
"""


def test_unix_idle_not_cut():
    """A UNIX stream server under the shim (limit 300ms): a client idle for
    1.2 s is not cut and still gets its echo."""
    path = os.path.join(tmpdir(), "s")
    srv = spawn(script(UNIX_SERVER) + [path], env={"TCPKEEP_IDLE_TIMEOUT": "300ms"})
    expect_line(srv, "listening")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    t0 = time.monotonic()
    end, _, how = wait_eof(s, 1.2)
    if end is not None:
        raise Fail("idle UNIX connection ended (%s) after %.3f s" % (how, end - t0))
    s.sendall(b"ping")
    got = s.recv(10)
    check(got == b"ping", "echo after the idle time: %r" % got)
    s.close()
    finish(srv)
    return "idle for 1.2 s with a 300 ms limit: not cut, echo works"


ERRNO_PROG = r"""
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <unistd.h>

#define SENTINEL 12345
static void report(const char *what, long r)
{
    int e = errno;
    printf("%-34s r=%-3ld errno=%s\n", what, r, e == SENTINEL ? "unchanged" : strerrorname_np(e));
    fflush(stdout);
}
#define T(what, call) do { errno = SENTINEL; long r_ = (long)(call); report(what, r_); } while (0)
static void on_alarm(int s) { (void)s; }

int main(int argc, char **argv)
{
    char buf[16];
    struct iovec iov = { buf, 1 };
    struct msghdr mh = { 0 };
    struct mmsghdr mm = { 0 };
    mh.msg_iov = &iov; mh.msg_iovlen = 1;
    mm.msg_hdr = mh;
    (void)argc;
    signal(SIGPIPE, SIG_IGN);
    int devnull = open("/dev/null", O_RDWR);

    T("read(-1)", read(-1, buf, 1));
    T("read(900) never opened", read(900, buf, 1));
    T("write(-1)", write(-1, buf, 1));
    T("recv(-1)", recv(-1, buf, 1, 0));
    T("recvfrom(-1)", recvfrom(-1, buf, 1, 0, NULL, NULL));
    T("recvmsg(-1)", recvmsg(-1, &mh, 0));
    T("recvmmsg(-1)", recvmmsg(-1, &mm, 1, 0, NULL));
    T("send(-1)", send(-1, buf, 1, 0));
    T("sendto(-1)", sendto(-1, buf, 1, 0, NULL, 0));
    T("sendmsg(-1)", sendmsg(-1, &mh, 0));
    T("sendmmsg(-1)", sendmmsg(-1, &mm, 1, 0));
    T("readv(-1)", readv(-1, &iov, 1));
    T("writev(-1)", writev(-1, &iov, 1));
    T("sendfile(-1, -1)", sendfile(-1, -1, NULL, 1));
    T("close(-1)", close(-1));
    T("close(900)", close(900));
    T("dup(-1)", dup(-1));
    T("dup2(-1, 100)", dup2(-1, 100));
    T("dup3(fd, fd, 0)", dup3(devnull, devnull, 0));
    T("fcntl(-1, F_GETFL)", fcntl(-1, F_GETFL));
    T("fcntl(-1, F_DUPFD)", fcntl(-1, F_DUPFD, 0));
    T("close_range(10, 5)", close_range(10, 5, 0));
    T("socket(AF_INET, 999)", socket(AF_INET, 999, 0));
    T("socket(AF_INET, STREAM, UDP)", socket(AF_INET, SOCK_STREAM, IPPROTO_UDP));
    T("accept(/dev/null)", accept(devnull, NULL, NULL));
    T("recv(/dev/null)", recv(devnull, buf, 1, 0));
    T("read(/dev/null) EOF", read(devnull, buf, 1));
    T("write(/dev/null) ok", write(devnull, buf, 1));

    struct sockaddr_in sa = { .sin_family = AF_INET };
    socklen_t sl = sizeof(sa);
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    T("bind", bind(ls, (struct sockaddr *)&sa, sizeof(sa)));
    T("listen", listen(ls, 8));
    getsockname(ls, (struct sockaddr *)&sa, &sl);
    int lone = socket(AF_INET, SOCK_STREAM, 0);
    T("accept(not listening)", accept(lone, NULL, NULL));
    T("accept4(bad flags)", accept4(ls, NULL, NULL, 0x4000000));
    T("recv(not connected)", recv(lone, buf, 1, 0));
    int c;
    T("socket ok", c = socket(AF_INET, SOCK_STREAM, 0));
    T("connect ok", connect(c, (struct sockaddr *)&sa, sizeof(sa)));
    T("connect again", connect(c, (struct sockaddr *)&sa, sizeof(sa)));
    int a;
    T("accept ok", a = accept(ls, NULL, NULL));
    T("fcntl(F_SETFL, O_NONBLOCK)", fcntl(c, F_SETFL, O_NONBLOCK));
    T("recv empty non-blocking", recv(c, buf, 1, 0));
    T("read empty non-blocking", read(c, buf, 1));
    T("recvfrom empty non-blocking", recvfrom(c, buf, 1, 0, NULL, NULL));
    T("recvmsg empty non-blocking", recvmsg(c, &mh, 0));
    T("readv empty non-blocking", readv(c, &iov, 1));
    T("recv(MSG_DONTWAIT) empty", recv(a, buf, 1, MSG_DONTWAIT));
    T("send ok", send(a, "x", 1, 0));
    T("recv ok", recv(c, buf, 1, 0));
    T("write ok", write(c, "y", 1));
    T("read ok", read(a, buf, 1));

    struct sigaction act = { 0 };
    act.sa_handler = on_alarm; /* no SA_RESTART */
    sigaction(SIGALRM, &act, NULL);
    struct itimerval it = { { 0, 0 }, { 0, 50000 } };
    setitimer(ITIMER_REAL, &it, NULL);
    T("recv interrupted", recv(a, buf, 1, 0));
    setitimer(ITIMER_REAL, &it, NULL);
    T("read interrupted", read(a, buf, 1));

    T("shutdown(SHUT_WR)", shutdown(a, SHUT_WR));
    T("send after shutdown", send(a, "x", 1, MSG_NOSIGNAL));
    T("write after shutdown", write(a, "x", 1));
    T("recv EOF", recv(c, buf, 1, 0));
    T("close ok", close(a));
    T("close twice", close(a));
    T("read closed", read(a, buf, 1));

    int r = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in refused = sa;
    refused.sin_port = htons((unsigned short)atoi(argv[1]));
    T("connect refused", connect(r, (struct sockaddr *)&refused, sizeof(refused)));
    int nb = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    T("connect non-blocking", connect(nb, (struct sockaddr *)&sa, sizeof(sa)));
    int nr = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    T("connect non-blocking refused", connect(nr, (struct sockaddr *)&refused, sizeof(refused)));
    usleep(100000);
    T("recv after refused", recv(nr, buf, 1, 0));
    T("dup ok", dup(c) >= 0);
    T("close_range ok", close_range(200, 300, 0));
    T("close(c) ok", close(c));
    return 0;
}
"""


def test_errno_untouched():
    """Failing (and succeeding) calls leave the same errno with and without
    the shim (watchdog running: limit 10s)."""
    prog = compile_c(ERRNO_PROG, "errno")
    refused = str(free_port())
    outs = {}
    for shim in (False, True):
        rc, out, err = run([prog, refused], shim=shim,
                           env={"TCPKEEP_IDLE_TIMEOUT": "10s", "TCPKEEP_KEEPIDLE": "30"})
        if rc != 0:
            raise Fail("errno program (shim=%s) exited %s: %r" % (shim, rc, err[-500:]))
        outs[shim] = out.splitlines()
    plain, shimmed = outs[False], outs[True]
    diffs = ["%s  |  with shim: %s" % (a.strip(), b.split("r=", 1)[-1].strip())
             for a, b in zip(plain, shimmed) if a != b]
    if len(plain) != len(shimmed):
        diffs.append("%d lines without the shim, %d with" % (len(plain), len(shimmed)))
    if diffs:
        raise Fail("errno differs: " + "; ".join(diffs))
    # The program itself works: the expected errors happened.
    want = {"read(-1)": "EBADF", "close(-1)": "EBADF", "recv empty non-blocking": "EAGAIN",
            "connect refused": "ECONNREFUSED", "recv interrupted": "EINTR",
            "send after shutdown": "EPIPE", "connect non-blocking": "EINPROGRESS",
            "send ok": "unchanged"}
    got = {}
    for line in plain:
        m = re.match(r"(.*?)\s+r=\S+\s+errno=(\S+)$", line)
        if m:
            got[m.group(1)] = m.group(2)
    bad = ["%s: %s (expected %s)" % (k, got.get(k), v) for k, v in want.items()
           if got.get(k) != v]
    if bad:
        raise Fail("the errno program does not behave as expected even without the shim: "
                   + "; ".join(bad))
    return "%d calls, identical errno with and without the shim (EBADF, EAGAIN, EINTR, " \
        "EPIPE, ECONNREFUSED, EINPROGRESS, unchanged on success)" % len(plain)


EARLY_LIB = r"""
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

int early_socket = -1;
__attribute__((constructor)) static void early(void)
{
    write(2, "early: write to stderr\n", 23);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    int ka = -1, idle = -1;
    socklen_t l = sizeof(ka);
    getsockopt(s, SOL_SOCKET, SO_KEEPALIVE, &ka, &l);
    l = sizeof(idle);
    getsockopt(s, IPPROTO_TCP, TCP_KEEPIDLE, &idle, &l);
    char msg[128];
    int n = snprintf(msg, sizeof(msg), "early: socket=%s keepalive=%d keepidle=%d\n",
                     s >= 0 ? "ok" : "failed", ka, idle);
    write(1, msg, (size_t)n);
    int d = dup(s);
    close(d);
    early_socket = s;
}
int early_fd(void) { return early_socket; }
"""

EARLY_MAIN = r"""
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
int early_fd(void);
int main(void)
{
    char msg[64];
    int n = snprintf(msg, sizeof(msg), "main: early fd %s\n", early_fd() >= 0 ? "ok" : "bad");
    write(1, msg, (size_t)n);
    return close(early_fd()) == 0 ? 0 : 3;
}
"""


def test_hook_before_constructor():
    """Another library's constructor calls write() and socket() before
    libtcpkeep's constructor has run: no crash, the output is right, and
    the socket gets the configured options."""
    so = compile_c(EARLY_LIB, "libearly", shared=True)
    d = os.path.dirname(so)
    prog = compile_c(EARLY_MAIN, "main", extra=["-L" + d, "-Wl,-rpath," + d, "-learly"])
    rc, out, err = run([prog], env={"TCPKEEP_KEEPIDLE": "77", "LD_DEBUG": "libs"})
    inits = [os.path.basename(m) for m in re.findall(r"calling init: (\S+)", err)]
    early_first = ("libearly.so" in inits and "libtcpkeep.so" in inits
                   and inits.index("libearly.so") < inits.index("libtcpkeep.so"))
    check(early_first, "libearly's constructor did not run before libtcpkeep's (%s): the "
          "test does not exercise what it should" % inits)
    rc, out, err = run([prog], env={"TCPKEEP_KEEPIDLE": "77"})
    want_out = "early: socket=ok keepalive=1 keepidle=77\nmain: early fd ok\n"
    check(rc == 0, "exit status %s (crash?); stderr=%r" % (rc, err[-400:]))
    check(out == want_out, "stdout %r, expected %r" % (out, want_out))
    check(err == "early: write to stderr\n", "stderr %r" % err)
    return "constructor order %s; no crash; write ok; early socket got keepalive=1 " \
        "keepidle=77" % " < ".join(i for i in inits if i in ("libearly.so", "libtcpkeep.so"))
