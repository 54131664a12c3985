"""Server shapes: forking (socat, fork without exec), threaded with many
clients, IPv6, non-blocking connect, accept(fd, NULL, NULL)."""
import json
import socket
import subprocess
import time

from helpers import (Conn, Fail, check, compile_c, connect, cut_window, drive,
                     expect_keepalive_timer, expect_line, finish, free_port, need, script,
                     spawn, wait_eof, wait_listen, CUT_SLACK)


def _check_fleet(conns, limit, what):
    """Idle conns cut in [limit, limit + slack] after connecting; active ones
    not ended. Returns (min, max) idle cut times."""
    problems = []
    cuts = []
    for i, c in enumerate(conns):
        if c.active:
            if c.ended is not None:
                problems.append("active %s #%d cut (%s) %.3f s after connecting, %.3f s after "
                                "its last byte" % (what, i, c.how, c.ended - c.t0,
                                                   c.ended - (c.last_send or c.t0)))
        elif c.ended is None:
            problems.append("idle %s #%d not cut" % (what, i))
        else:
            d = c.ended - c.t0
            cuts.append(d)
            if not (limit <= d <= limit + CUT_SLACK):
                problems.append("idle %s #%d cut after %.3f s (%s)" % (what, i, d, c.how))
    if problems:
        raise Fail("; ".join(problems[:6]) + ("; ..." if len(problems) > 6 else "")
                   + " (limit %g s)" % limit)
    return (min(cuts), max(cuts)) if cuts else (None, None)


def _active_then_cut(conns, limit, what):
    """Stop the active conns and check each is cut limit..limit+slack after
    its last byte. Returns the max delay."""
    for c in conns:
        c.active = False
    drive(conns, limit + CUT_SLACK + 0.7)
    worst = 0.0
    for i, c in enumerate(conns):
        cut_window(c.ended and c.ended - c.last_send, limit, "%s #%d cut" % (what, i),
                   "its last byte")
        worst = max(worst, c.ended - c.last_send)
    return worst


def test_forking_socat():
    """socat TCP-LISTEN,fork EXEC:cat under the shim (limit 1s): two idle
    clients are cut by their children on time, an active one is kept."""
    need("socat")
    port = free_port()
    srv = spawn(["socat", "TCP-LISTEN:%d,bind=127.0.0.1,reuseaddr,fork" % port, "EXEC:cat"],
                env={"TCPKEEP_IDLE_TIMEOUT": "1s"}, stdout=subprocess.DEVNULL)
    wait_listen(port, proc=srv)
    conns = []
    for active in (False, True, False):
        s, t0 = connect(port)
        conns.append(Conn(s, t0, active))
    drive(conns, 3.0)
    lo, hi = _check_fleet(conns, 1.0, "client")
    active = [c for c in conns if c.active]
    check(active[0].got >= 8, "the active client got %d bytes of echo back in 3 s"
          % active[0].got)
    last = _active_then_cut(active, 1.0, "active client")
    finish(srv)
    return ("idle clients cut after %.3f and %.3f s (limit 1 s); active client echoed %d "
            "bytes over 3 s, kept, then cut %.3f s after its last byte"
            % (lo, hi, active[0].got, last))


THREADED_SERVER = r"""
import socketserver, sys
class H(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            b = self.request.recv(100)
            if not b:
                break
            self.request.sendall(b)
class S(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
s = S(("127.0.0.1", int(sys.argv[1])), H)
print("listening", flush=True)
s.serve_forever(poll_interval=0.05)
"""


def test_threaded_server_many_clients():
    """A Python threaded echo server under the shim (limit 1s), 40 clients:
    the 20 idle ones cut within [1.0, 1.5] s, the 20 active never cut in 3 s."""
    port = free_port()
    srv = spawn(script(THREADED_SERVER) + [str(port)], env={"TCPKEEP_IDLE_TIMEOUT": "1s"})
    expect_line(srv, "listening")
    wait_listen(port, proc=srv)
    conns = []
    for i in range(40):
        s, t0 = connect(port)
        conns.append(Conn(s, t0, active=(i % 2 == 1)))
    drive(conns, 3.0)
    lo, hi = _check_fleet(conns, 1.0, "client")
    active = [c for c in conns if c.active]
    starved = [c.got for c in active if c.got < 5]
    check(not starved, "active clients got too little echo: %s" % starved)
    last = _active_then_cut(active, 1.0, "active client")
    finish(srv)
    return ("20 idle cut in %.3f..%.3f s (limit 1 s); 20 active kept for 3 s, then cut at "
            "most %.3f s after their last byte" % (lo, hi, last))


MAPPED_SERVER = r"""
import json, socket, sys, time
ls = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
ls.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
ls.bind(("::ffff:127.0.0.1", int(sys.argv[1])))
ls.listen(4)
print("listening", flush=True)
c, peer = ls.accept()
print("ACCEPTED " + json.dumps(dict(peer=peer[0],
      keepalive=c.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
      keepidle=c.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE))), flush=True)
c.settimeout(10)
print("EOF" if c.recv(10) == b"" else "DATA", flush=True)
"""


def test_ipv6():
    """nc -l on ::1 under the shim: idle client cut, keepalive timer shown;
    and an IPv4-mapped connection accepted by an AF_INET6 socket."""
    port = free_port(socket.AF_INET6)
    srv = spawn(["nc", "-6", "-l", "::1", str(port)],
                env={"TCPKEEP_IDLE_TIMEOUT": "1s", "TCPKEEP_KEEPIDLE": "77"},
                stdout=subprocess.DEVNULL)
    wait_listen(port, v6=True, proc=srv)
    s, t0 = connect(port, host="::1")
    time.sleep(0.1)
    timer = expect_keepalive_timer(port, s.getsockname()[1], 77, "[::1] accepted by nc")
    end, _, _ = wait_eof(s, 3.0)
    msg6 = cut_window(end and end - t0, 1.0, "[::1] idle client cut")
    s.close()
    finish(srv)

    port = free_port()
    srv = spawn(script(MAPPED_SERVER) + [str(port)],
                env={"TCPKEEP_IDLE_TIMEOUT": "1s", "TCPKEEP_KEEPIDLE": "77"})
    expect_line(srv, "listening")
    s, t0 = connect(port)
    acc = json.loads(expect_line(srv, "ACCEPTED ")[len("ACCEPTED "):])
    check(acc["peer"].startswith("::ffff:127.0.0.1") and acc["keepalive"] == 1
          and acc["keepidle"] == 77, "IPv4-mapped accepted socket: %s" % acc)
    end, _, _ = wait_eof(s, 3.0)
    msgm = cut_window(end and end - t0, 1.0, "IPv4-mapped idle client cut")
    s.close()
    finish(srv)
    return "%s, timer %s; %s" % (msg6, timer, msgm)


FORK_SERVER = r"""
import os, socket, sys, time
mode, port = sys.argv[1], int(sys.argv[2])
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", port)); ls.listen(4)
print("listening", flush=True)
c, _ = ls.accept()
pid = os.fork()
if pid == 0:
    ls.close()
    if mode == "child_serves":
        while True:
            b = c.recv(100)
            if not b:
                break
            c.sendall(b)
        print("child saw EOF", flush=True)
    else:
        time.sleep(float(sys.argv[3]))   # holds its inherited copy, idle
        print("child done", flush=True)
    os._exit(0)
if mode == "child_serves":
    c.close()
else:
    while True:
        b = c.recv(100)
        if not b:
            break
        c.sendall(b)
    print("parent saw EOF", flush=True)
os.waitpid(pid, 0)
print("parent done", flush=True)
"""


def test_fork_child_serves():
    """A Python server under the shim forks per connection (no exec) and
    the parent closes its copy: the child cuts the idle client on time."""
    port = free_port()
    argv = script(FORK_SERVER)
    srv = spawn(argv + ["child_serves", str(port)], env={"TCPKEEP_IDLE_TIMEOUT": "1s"})
    expect_line(srv, "listening")
    s, t0 = connect(port)
    end, _, _ = wait_eof(s, 3.0)
    msg = cut_window(end and end - t0, 1.0, "idle client cut by the forked child")
    expect_line(srv, "child saw EOF")
    s.close()
    finish(srv)
    return msg


def test_fork_parent_busy_child_idle():
    """The parent keeps its copy and echoes an active client while a forked
    child holds the inherited copy idle for 4.5 s: not cut (the kernel's
    TCP_INFO view); cut on time once the client stops."""
    port = free_port()
    argv = script(FORK_SERVER)
    srv = spawn(argv + ["parent_busy", str(port), "4.5"], env={"TCPKEEP_IDLE_TIMEOUT": "1s"})
    expect_line(srv, "listening")
    s, t0 = connect(port)
    c = Conn(s, t0, active=True)
    drive([c], 3.0)
    if c.ended is not None:
        raise Fail("active client cut (%s) %.3f s after connecting, %.3f s after its last "
                   "byte, while the parent was busy and the child idle"
                   % (c.how, c.ended - t0, c.ended - c.last_send))
    check(c.got >= 8, "the parent echoed only %d bytes in 3 s" % c.got)
    check(srv.poll() is None, "the server exited early")
    c.active = False
    drive([c], 2.2)
    msg = cut_window(c.ended and c.ended - c.last_send, 1.0, "cut", "its last byte")
    finish(srv)
    return "kept for 3 s of activity with an idle forked child holding a copy; " + msg


NB_CLIENT = r"""
import errno, json, select, socket, struct, sys, time
port, limit = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
t_call = time.monotonic()
rc = s.connect_ex(("127.0.0.1", port))
print("CONNECTING", flush=True)
_, w, _ = select.select([], [s], [], 10)
t_seen = time.monotonic()
# When the handshake completed, by the kernel's clock: TCP_INFO's
# tcpi_last_data_recv counts from it while no data has come (this process
# may be scheduled much later than that under load).
ti = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
t_up = t_seen - struct.unpack_from("I", ti, 52)[0] / 1000.0
err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
T = socket.IPPROTO_TCP
ka = s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
idle = s.getsockopt(T, socket.TCP_KEEPIDLE)
r, _, _ = select.select([s], [], [], limit + 3)
try:
    data = s.recv(10) if r else None
except OSError as e:
    data = repr(e)
t_end = time.monotonic()
print("RESULT " + json.dumps(dict(rc=errno.errorcode.get(rc, rc), so_error=err, keepalive=ka,
      keepidle=idle, up=t_up - t_call, seen=t_seen - t_call,
      end=(t_end - t_call) if data == b"" else None,
      data=repr(data))), flush=True)
"""


def test_nonblocking_connect():
    """SOCK_NONBLOCK|SOCK_CLOEXEC socket under the shim, connect_ex ->
    EINPROGRESS: tracked, keepalive set, idle-cut on time; also when the
    handshake completes ~1 s later (the listener's queue is full, the SYN is
    retransmitted): cut a limit after it completes, not before."""
    argv = script(NB_CLIENT)
    env = {"TCPKEEP_IDLE_TIMEOUT": "300ms", "TCPKEEP_KEEPIDLE": "77"}
    msgs = []
    for late in (False, True):
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen(0)
        port = ls.getsockname()[1]
        filler = None
        if late:  # fill the accept queue: the next SYN is dropped
            filler, _ = connect(port)
        cli = spawn(argv + [str(port), "0.3"], env=env)
        expect_line(cli, "CONNECTING")
        if late:
            time.sleep(0.4)
            ls.accept()[0].close()  # room again for the retransmitted SYN
        line = expect_line(cli, "RESULT ", limit=8)
        res = json.loads(line[len("RESULT "):])
        finish(cli)
        ls.close()
        if filler:
            filler.close()
        label = "late handshake" if late else "non-blocking connect"
        check(res["rc"] in ("EINPROGRESS", 0) and res["so_error"] == 0,
              "%s: connect_ex %s, SO_ERROR %s" % (label, res["rc"], res["so_error"]))
        check(res["keepalive"] == 1 and res["keepidle"] == 77,
              "%s: keepalive=%s keepidle=%s" % (label, res["keepalive"], res["keepidle"]))
        if late:
            check(res["up"] >= 0.8, "late handshake: connected after %.3f s; the setup did "
                  "not delay the handshake" % res["up"])
        if res["end"] is None:
            raise Fail("%s: not cut (read returned %s)" % (label, res["data"]))
        # Measured from the handshake by the kernel's record of it, which is
        # in jiffies: a few ms of tolerance.
        msgs.append(cut_window(res["end"] - res["up"], 0.3,
                               "%s (%s) cut" % (label, res["rc"]),
                               "the handshake (%.3f s after connect, seen at %.3f s)"
                               % (res["up"], res["seen"]),
                               early=0.01))
    return "; ".join(msgs)


ACCEPT_NULL_SERVER = r"""
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    int ls;
    if (strncmp(argv[1], "fd:", 3) == 0) {
        ls = atoi(argv[1] + 3);                 /* inherited, made without the shim */
    } else {
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[1])) };
        inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
        ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int one = 1;
        setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(ls, (struct sockaddr *)&sa, sizeof(sa)) || listen(ls, 8)) {
            perror("bind/listen");
            return 1;
        }
    }
    printf("listening\n");
    fflush(stdout);
    for (int i = 0; i < 2; i++) {
        int c = i == 0 ? accept(ls, NULL, NULL)
                       : accept4(ls, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (c < 0) {
            perror("accept");
            return 1;
        }
        int ka = -1, idle = -1;
        socklen_t l = sizeof(ka);
        getsockopt(c, SOL_SOCKET, SO_KEEPALIVE, &ka, &l);
        l = sizeof(idle);
        getsockopt(c, IPPROTO_TCP, TCP_KEEPIDLE, &idle, &l);
        printf("accepted %s keepalive=%d keepidle=%d\n", i ? "accept4" : "accept", ka, idle);
        fflush(stdout);
        char buf[64];
        for (;;) {
            struct pollfd p = { c, POLLIN, 0 };
            if (poll(&p, 1, 5000) <= 0)
                break;
            if (read(c, buf, sizeof(buf)) <= 0)
                break;
        }
        printf("closed %d\n", i);
        fflush(stdout);
        close(c);
    }
    return 0;
}
"""


def test_accept_null_addr():
    """accept(fd, NULL, NULL) and accept4(fd, NULL, NULL, SOCK_NONBLOCK|
    SOCK_CLOEXEC) in a C server under the shim (limit 1s), on a listener it
    made and on one inherited from a process without the shim: no crash,
    keepalive set, idle clients cut on time."""
    prog = compile_c(ACCEPT_NULL_SERVER, "accept_null")
    env = {"TCPKEEP_IDLE_TIMEOUT": "1s", "TCPKEEP_KEEPIDLE": "77"}
    msgs = []
    for inherited in (False, True):
        port = free_port()
        ls = None
        if inherited:
            ls = socket.socket()
            ls.bind(("127.0.0.1", port))
            ls.listen(8)
            srv = spawn([prog, "fd:%d" % ls.fileno()], env=env, pass_fds=(ls.fileno(),))
        else:
            srv = spawn([prog, str(port)], env=env)
        expect_line(srv, "listening")
        wait_listen(port, proc=srv)
        for call in ("accept", "accept4"):
            s, t0 = connect(port)
            line = expect_line(srv, "accepted ")
            check(line == "accepted %s keepalive=1 keepidle=77" % call,
                  "%s%s: %r" % (call, " (inherited listener)" if inherited else "", line))
            end, _, _ = wait_eof(s, 3.0)
            m = cut_window(end and end - t0, 1.0, "%s(NULL, NULL)%s: cut" % (
                call, " on an inherited listener" if inherited else ""))
            msgs.append(m.split(" (limit")[0])
            s.close()
            expect_line(srv, "closed ")
        out, err = srv.communicate(timeout=5)
        check(srv.returncode == 0, "server exit status %s: %r" % (srv.returncode, err[-300:]))
        if ls:
            ls.close()
    return "; ".join(msgs) + " (limit 1 s), keepalive 1/77 on each"
