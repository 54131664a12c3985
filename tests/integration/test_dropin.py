"""Drop-in for libkeepalive users: KEEPALIVE, KEEPIDLE, KEEPINTVL, KEEPCNT
honoured when the TCPKEEP_ twin is unset, parsed strictly, and Debian's
libkeepalive0 preloaded beside us.

Without the libkeepalive names, KEEPIDLE=77 leaves the kernel's 7200 s and
KEEPIDLE=abc prints nothing and changes nothing: every test here fails then
(checked against v1, f760982)."""
import os
import re
import subprocess
import time

from helpers import (CUT_SLACK, Fail, Skip, check, connect, cut_window, expect_keepalive_timer,
                     finish, lib, need, spawn, ss_find, timeout, tmpdir, keepalive_remaining,
                     wait_eof, wait_listen)
from rules_util import Hub, Watch, free_ports, kernel_defaults, plain_listener, read_text

LIBKEEPALIVE = ["/usr/lib/libkeepalive.so", "/usr/lib/x86_64-linux-gnu/libkeepalive.so",
                "/usr/lib/libkeepalive.so.0"]


def v4(port, **kw):
    return dict(kw, host="127.0.0.1", port=port)


def _opts(**kw):
    o = kernel_defaults()
    o.update(kw)
    return o


def _hub_pair(d, name, env, shim=True, preload=None):
    """A hub with a listener and an outbound connection to our listener;
    a plain client connects to it. Returns (hub, in-conn key, out-conn key,
    sockets to keep)."""
    p, q = free_ports(2)
    ls = plain_listener("127.0.0.1", q)
    extra = dict(env)
    if preload:
        extra["LD_PRELOAD"] = preload
    hub = Hub({"listen": [v4(p)], "connect": [v4(q)], "run_for": 30}, extra,
              shim=shim if not preload else False, stderr_path=os.path.join(d, name + ".err"))
    hub.err_path = os.path.join(d, name + ".err")
    a, peer = ls.accept()
    c, _ = connect(p)
    return hub, ("in", p, c.getsockname()[1]), ("out", peer[1], q), (ls, a, c)


def _opts_problems(label, hub, keys, want):
    """What differs from want in the getsockopt of each of the hub's sockets keys."""
    problems = []
    for key in keys:
        got = hub.conn(*key)["opts"]
        if got != want:
            problems.append("%s: %s socket: getsockopt %s, expected %s"
                            % (label, "accepted" if key[0] == "in" else "connected", got, want))
    return problems


DROPIN_CASES = [
    # (environment, expected getsockopt on accepted and connected sockets)
    ({"KEEPIDLE": "77"}, dict(keepalive=1, keepidle=77)),
    ({"KEEPIDLE": "77", "TCPKEEP_KEEPIDLE": "55"}, dict(keepalive=1, keepidle=55)),
    ({"KEEPINTVL": "13", "KEEPCNT": "9", "TCPKEEP_KEEPCNT": "4"},
     dict(keepalive=1, keepintvl=13, keepcnt=4)),
    ({"KEEPIDLE": "2m", "KEEPINTVL": "7", "KEEPCNT": "5"},
     dict(keepalive=1, keepidle=120, keepintvl=7, keepcnt=5)),
    ({"KEEPALIVE": "on"}, dict(keepalive=1)),
    ({"KEEPALIVE": "off"}, dict(keepalive=0)),
    ({"KEEPALIVE": "skip"}, dict(keepalive=0)),
    ({"KEEPALIVE": "off", "TCPKEEP_KEEPALIVE": "on"}, dict(keepalive=1)),
    ({"KEEPALIVE": "on", "TCPKEEP_KEEPALIVE": "off"}, dict(keepalive=0)),
    # The twin is set: KEEPIDLE is not read at all, garbage or not.
    ({"KEEPIDLE": "abc", "TCPKEEP_KEEPIDLE": "60"}, dict(keepalive=1, keepidle=60)),
]


@timeout(40)
def test_dropin_names_and_twins():
    """libkeepalive's names on their own (KEEPIDLE=77, KEEPIDLE=2m, KEEPINTVL,
    KEEPCNT, KEEPALIVE=on/off/skip), and with the TCPKEEP_ twin set (the twin
    wins, each variable on its own): exact getsockopt on accepted and
    connected sockets, nothing on stderr. nc -l with KEEPIDLE=77 alone: ss
    shows the 77 s timer; with KEEPALIVE=off or skip: no timer."""
    need("nc")
    d = tmpdir()
    runs = []
    for i, (env, want) in enumerate(DROPIN_CASES):
        runs.append((env, _opts(**want)) + _hub_pair(d, "case%d" % i, env))
    problems = []
    for env, want, hub, kin, kout, keep in runs:
        label = " ".join("%s=%s" % kv for kv in env.items())
        problems += _opts_problems(label, hub, (kin, kout), want)
    timers = []
    for env, want_timer in (({"KEEPIDLE": "77"}, True), ({"KEEPALIVE": "off"}, False),
                            ({"KEEPALIVE": "skip"}, False)):
        port = free_ports(1)[0]
        nc = spawn(["nc", "-l", "127.0.0.1", str(port)], env=env, stdout=subprocess.DEVNULL)
        wait_listen(port, proc=nc)
        s, _ = connect(port)
        time.sleep(0.2)
        label = "nc -l with %s" % " ".join("%s=%s" % kv for kv in env.items())
        try:
            if want_timer:
                timers.append(expect_keepalive_timer(port, s.getsockname()[1], 77, label))
            else:
                c = ss_find(port, s.getsockname()[1])
                check(keepalive_remaining(c) is None, "%s: ss shows a keepalive timer: %r"
                      % (label, c["line"]))
        except Fail as e:
            problems.append(str(e))
        _, err = finish(nc)
        if err.strip():
            problems.append("%s: stderr %r" % (label, err[-300:]))
        s.close()
    for env, want, hub, kin, kout, keep in runs:
        err = hub.stderr_text()
        if err.strip():
            problems.append("%s: stderr %r" % (env, err[-300:]))
    if problems:
        raise Fail("; ".join(problems))
    return "%d environments exact on accepted and connected sockets; nc -l KEEPIDLE=77: ss " \
        "%s; KEEPALIVE=off/skip: no timer" % (len(runs), timers[0])


BAD_CASES = [
    ({"KEEPIDLE": "abc"}, 'KEEPIDLE="abc": expected whole seconds 1..32767, such as 60 or 2m'),
    ({"KEEPINTVL": "0"}, 'KEEPINTVL="0": expected whole seconds 1..32767, such as 60 or 2m'),
    ({"KEEPIDLE": "1500ms"},
     'KEEPIDLE="1500ms": expected whole seconds 1..32767, such as 60 or 2m'),
    ({"KEEPCNT": "128"}, 'KEEPCNT="128": expected an integer 1..127'),
    ({"KEEPCNT": "4x"}, 'KEEPCNT="4x": expected an integer 1..127'),
    ({"KEEPALIVE": "maybe"}, 'KEEPALIVE="maybe": expected on, off or skip'),
]


@timeout(40)
def test_dropin_bad_values_pass_through():
    """KEEPIDLE=abc (and KEEPINTVL=0, KEEPIDLE=1500ms, KEEPCNT=128 and 4x,
    KEEPALIVE=maybe), where libkeepalive would silently use atoi's 0: exactly
    one stderr line `tcpkeep[PID]: KEEPIDLE="abc": expected whole seconds
    1..32767, such as 60 or 2m; tcpkeep is disabled in this process`, then a
    pure pass-through: kernel defaults on every socket (no SO_KEEPALIVE
    though it is on by default) and no cut despite TCPKEEP_IDLE_TIMEOUT=300ms."""
    d = tmpdir()
    runs = []
    for i, (env, msg) in enumerate(BAD_CASES):
        full = dict(env, TCPKEEP_IDLE_TIMEOUT="300ms")
        hub, kin, kout, keep = _hub_pair(d, "bad%d" % i, full)
        runs.append((env, msg, hub, kin, kout, keep, Watch(keep[2], 1.2), time.monotonic()))
    problems = []
    for env, msg, hub, kin, kout, keep, w, t0 in runs:
        label = " ".join("%s=%s" % kv for kv in env.items())
        for key in (kin, kout):
            got = hub.conn(*key)["opts"]
            if got != kernel_defaults():
                problems.append("%s: options set though tcpkeep is disabled: %s" % (label, got))
    for env, msg, hub, kin, kout, keep, w, t0 in runs:
        label = " ".join("%s=%s" % kv for kv in env.items())
        end, how = w.join(3)
        if end is not None:
            problems.append("%s: the idle connection was cut (%s) though tcpkeep is disabled"
                            % (label, how))
        err = hub.stderr_text()
        want = "tcpkeep[%d]: %s; tcpkeep is disabled in this process" % (hub.pid, msg)
        if err.splitlines() != [want] or not err.endswith("\n"):
            problems.append("%s: stderr %r, expected exactly %r" % (label, err, want + "\n"))
    if problems:
        raise Fail("; ".join(problems))
    return "%d bad values: one exact line each, pass-through (e.g. %s)" % (
        len(runs), BAD_CASES[0][1])


@timeout(40)
def test_dropin_with_libkeepalive0():
    """Debian's libkeepalive0 preloaded beside libtcpkeep, in both orders,
    with KEEPIDLE=77 KEEPINTVL=13 KEEPCNT=4 (read by both) and
    TCPKEEP_IDLE_TIMEOUT=1s: nc -l shows the 77 s timer and its idle client
    is cut on time; the hub's accepted and connected sockets read back
    1/77/13/4; nothing on stderr. With KEEPIDLE=abc (libkeepalive silently
    takes 0): our one error line, libkeepalive's SO_KEEPALIVE alone, the
    program runs."""
    other = next((p for p in LIBKEEPALIVE if os.path.isfile(p)), None)
    if not other:
        raise Skip("Debian's libkeepalive0 is not installed")
    need("nc")
    d = tmpdir()
    env = {"KEEPIDLE": "77", "KEEPINTVL": "13", "KEEPCNT": "4", "TCPKEEP_IDLE_TIMEOUT": "1s"}
    want = _opts(keepalive=1, keepidle=77, keepintvl=13, keepcnt=4)
    problems, done = [], []
    for order in ("libkeepalive first", "libtcpkeep first"):
        pre = [other, lib()] if order.startswith("libkeepalive") else [lib(), other]
        preload = " ".join(pre)
        hub, kin, kout, keep = _hub_pair(d, order.split()[0], env, preload=preload)
        problems += _opts_problems(order, hub, (kin, kout), want)
        port = free_ports(1)[0]
        nc = spawn(["nc", "-l", "127.0.0.1", str(port)], shim=False,
                   env=dict(env, LD_PRELOAD=preload), stdout=subprocess.DEVNULL)
        wait_listen(port, proc=nc)
        s, t0 = connect(port)
        try:
            timer = expect_keepalive_timer(port, s.getsockname()[1], 77, "nc -l, " + order)
            end, _, how = wait_eof(s, 1.0 + CUT_SLACK + 1.0)
            cut = cut_window(end and end - t0, 1.0, "nc's idle client cut")
            done.append("%s: %s, %s" % (order, timer, cut))
        except Fail as e:
            problems.append("%s: %s" % (order, e))
        _, err = finish(nc)
        if err.strip():
            problems.append("%s: nc's stderr %r" % (order, err[-300:]))
        err = hub.stderr_text()
        if err.strip():
            problems.append("%s: the hub's stderr %r" % (order, err[-300:]))
        s.close()
        # Garbage that libkeepalive takes as atoi's 0: we say so and step
        # aside; libkeepalive still does its part; the program runs.
        hub, kin, kout, keep = _hub_pair(d, "garbage-" + order.split()[0],
                                         {"KEEPIDLE": "abc", "TCPKEEP_IDLE_TIMEOUT": "1s"},
                                         preload=preload)
        for key in (kin, kout):
            got = hub.conn(*key)["opts"]
            if got != _opts(keepalive=1):
                problems.append("%s, KEEPIDLE=abc: getsockopt %s, expected libkeepalive's "
                                "SO_KEEPALIVE alone %s" % (order, got, _opts(keepalive=1)))
        err = hub.stderr_text()
        line = ('tcpkeep[%d]: KEEPIDLE="abc": expected whole seconds 1..32767, such as 60 or '
                '2m; tcpkeep is disabled in this process' % hub.pid)
        if err.splitlines() != [line]:
            problems.append("%s, KEEPIDLE=abc: stderr %r, expected exactly %r" % (order, err, line))
    if problems:
        raise Fail("; ".join(problems))
    return "; ".join(done) + "; hub sockets 1/77/13/4 in both orders; KEEPIDLE=abc: our one " \
        "line, libkeepalive's SO_KEEPALIVE, the program runs"
