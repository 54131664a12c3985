"""Keepalive: the timer the kernel shows (ss) and the exact option values."""
import json
import socket
import subprocess
import time

from helpers import (Fail, check, connect, expect_keepalive_timer, expect_line, finish,
                     free_port, keepalive_remaining, script, spawn, ss_find, wait_listen)

KEEPIDLE = 77


def _kernel_default(name):
    with open("/proc/sys/net/ipv4/" + name) as f:
        return int(f.read())


def _nc_server(port, shim, env=None):
    p = spawn(["nc", "-l", "127.0.0.1", str(port)], shim=shim, env=env,
              stdout=subprocess.DEVNULL)
    wait_listen(port, proc=p)
    return p


def test_keepalive_timer_accepted():
    """nc -l under the shim with TCPKEEP_KEEPIDLE=77: ss shows ~77 s on the
    accepted socket; the plain client has none; without the shim, none."""
    port = free_port()
    srv = _nc_server(port, True, {"TCPKEEP_KEEPIDLE": KEEPIDLE})
    s, _ = connect(port)
    cport = s.getsockname()[1]
    time.sleep(0.2)  # let nc accept
    rem = expect_keepalive_timer(port, cport, KEEPIDLE, "accepted socket of nc -l under the shim")
    plain = ss_find(cport, port)
    check(keepalive_remaining(plain) is None,
          "the plain client's socket has a keepalive timer: %r" % plain["line"])
    s.close()
    finish(srv)

    port = free_port()
    srv = _nc_server(port, False, {"TCPKEEP_KEEPIDLE": KEEPIDLE})
    s, _ = connect(port)
    cport = s.getsockname()[1]
    time.sleep(0.2)
    c = ss_find(port, cport)
    check(keepalive_remaining(c) is None,
          "without the shim nc's accepted socket has a keepalive timer: %r" % c["line"])
    s.close()
    finish(srv)
    return "ss shows keepalive %s under the shim (TCPKEEP_KEEPIDLE=%d), none without" \
        % (rem, KEEPIDLE)


def test_keepalive_timer_connected():
    """nc (client) under the shim: its connected socket shows ~77 s; without
    the shim, no timer."""
    results = []
    for shim in (True, False):
        port = free_port()
        ls = socket.socket()
        ls.bind(("127.0.0.1", port))
        ls.listen(4)
        ls.settimeout(5)
        cli = spawn(["nc", "127.0.0.1", str(port)], shim=shim,
                    env={"TCPKEEP_KEEPIDLE": KEEPIDLE},
                    stdout=subprocess.DEVNULL)
        try:
            conn, (_, cport) = ls.accept()
        except socket.timeout:
            _, err = finish(cli)
            raise Fail("nc did not connect: %r" % err)
        time.sleep(0.1)
        if shim:
            results.append(expect_keepalive_timer(cport, port, KEEPIDLE,
                                                  "nc's connected socket under the shim"))
        else:
            c = ss_find(cport, port)
            check(keepalive_remaining(c) is None,
                  "without the shim nc's socket has a keepalive timer: %r" % c["line"])
        finish(cli)
        conn.close()
        ls.close()
    return "ss shows keepalive %s on nc's connected socket, none without the shim" \
        % results[0]


OPTS_PROG = r"""
import json, socket, sys
T = socket.IPPROTO_TCP
def opts(s):
    return dict(keepalive=s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                keepidle=s.getsockopt(T, socket.TCP_KEEPIDLE),
                keepintvl=s.getsockopt(T, socket.TCP_KEEPINTVL),
                keepcnt=s.getsockopt(T, socket.TCP_KEEPCNT),
                user_timeout=s.getsockopt(T, socket.TCP_USER_TIMEOUT))
mode, port = sys.argv[1], int(sys.argv[2])
if mode in ("server", "server_own", "listener"):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if mode == "server_own":   # set on the listener: accepted sockets inherit it
        ls.setsockopt(T, socket.TCP_KEEPIDLE, 500)
    ls.bind(("127.0.0.1", port))
    ls.listen(4)
    if mode == "listener":
        print("OPTS " + json.dumps(opts(ls)), flush=True)
        sys.exit(0)
    print("listening", flush=True)
    ls.settimeout(10)
    c, _ = ls.accept()
    print("OPTS " + json.dumps(opts(c)), flush=True)
    c.close()
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if mode == "own":
        s.setsockopt(T, socket.TCP_KEEPIDLE, 500)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0)
    s.connect(("127.0.0.1", port))
    print("OPTS " + json.dumps(opts(s)), flush=True)
    s.close()
"""


def _opts(argv, mode, port, shim, env):
    p = spawn(argv + [mode, str(port)], shim=shim, env=env)
    try:
        if mode in ("server", "server_own"):
            expect_line(p, "listening")
            wait_listen(port, proc=p)
            c, _ = connect(port)
            line = expect_line(p, "OPTS ")
            c.close()
        else:
            line = expect_line(p, "OPTS ")
    finally:
        out, err = finish(p)
    check(not err.strip(), "unexpected stderr from the program: %r" % err[-500:])
    return json.loads(line[len("OPTS "):])


def test_socket_options_exact():
    """getsockopt from a Python program under the shim, on its own socket."""
    argv = script(OPTS_PROG)
    kidle = _kernel_default("tcp_keepalive_time")
    kintvl = _kernel_default("tcp_keepalive_intvl")
    kcnt = _kernel_default("tcp_keepalive_probes")
    full = {"TCPKEEP_KEEPIDLE": "77", "TCPKEEP_KEEPINTVL": "13s", "TCPKEEP_KEEPCNT": "4",
            "TCPKEEP_USER_TIMEOUT": "7500ms"}
    cases = [
        ("client, all set", "client", True, full,
         dict(keepalive=1, keepidle=77, keepintvl=13, keepcnt=4, user_timeout=7500)),
        ("accepted, all set", "server", True, full,
         dict(keepalive=1, keepidle=77, keepintvl=13, keepcnt=4, user_timeout=7500)),
        ("listening socket, all set", "listener", True, full,
         dict(keepalive=1, keepidle=77, keepintvl=13, keepcnt=4, user_timeout=7500)),
        ("accepted, listener set its own", "server_own", True, full,
         dict(keepalive=1, keepidle=500, keepintvl=13, keepcnt=4, user_timeout=7500)),
        ("client, 2m/3s", "client", True, {"TCPKEEP_KEEPIDLE": "2m", "TCPKEEP_USER_TIMEOUT": "3s"},
         dict(keepalive=1, keepidle=120, keepintvl=kintvl, keepcnt=kcnt, user_timeout=3000)),
        ("client, defaults", "client", True, {},
         dict(keepalive=1, keepidle=kidle, keepintvl=kintvl, keepcnt=kcnt, user_timeout=0)),
        ("client, keepalive off", "client", True, {"TCPKEEP_KEEPALIVE": "off"},
         dict(keepalive=0, keepidle=kidle, keepintvl=kintvl, keepcnt=kcnt, user_timeout=0)),
        ("client, no shim", "client", False, full,
         dict(keepalive=0, keepidle=kidle, keepintvl=kintvl, keepcnt=kcnt, user_timeout=0)),
        ("client sets its own", "own", True, full,
         dict(keepalive=0, keepidle=500, keepintvl=13, keepcnt=4, user_timeout=7500)),
    ]
    port = free_port()
    ls = socket.socket()
    ls.bind(("127.0.0.1", port))
    ls.listen(16)
    bad = []
    for label, mode, shim, env, want in cases:
        got = _opts(argv, mode, port if mode in ("client", "own") else free_port(), shim, env)
        if got != want:
            bad.append("%s: got %s, expected %s" % (label, got, want))
    ls.close()
    if bad:
        raise Fail("; ".join(bad))
    return "%d cases exact (SO_KEEPALIVE/IDLE/INTVL/CNT/USER_TIMEOUT 1/77/13/4/7500 with all " \
        "set, on connected, listening and accepted sockets; defaults; off; no shim; the " \
        "program's own values win)" % len(cases)
