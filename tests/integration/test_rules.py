"""Rules: TCPKEEP_PORTS, TCPKEEP_PEERS, TCPKEEP_DIRECTION, the program's own
options (TCPKEEP_OVERRIDE), and the rules file TCPKEEP_CONFIG with its hot
reload.

Each connection is checked three ways: the options getsockopt reads back in
the program right after accept/connect (rules_util.HUB), the keepalive timer
the kernel shows in `ss -tno`, and whether it is cut when idle (limit 1 s)
or still open 1 s after the managed ones were cut. Without the rules (the
v1 behaviour) every connection would carry the shim's options and be cut:
each excluded connection below fails then. Several servers run at once, so
each test waits for the cut window only once.
"""
import os
import sys
import socket
import subprocess
import time

import helpers
from helpers import (CUT_SLACK, Fail, check, connect, cut_window, finish, handshake_time,
                     need, spawn, ss_conns, timeout, tmpdir, wait_listen)
from realprog import find_prog, stop
from rules_util import (CUT_LINE, Hub, Watch, consecutive_free_ports, expect_no_timer,
                        expect_timer, free_ports, kernel_defaults, keepalive_remaining,
                        lines_for, parse_lines, plain_listener, read_text, untouched,
                        wait_until)

LIMIT = 1.0
KEEPIDLE = 77
WATCH = LIMIT + CUT_SLACK + 1.0   # an excluded connection must outlive this


def rules_env(log, **rules):
    env = {"TCPKEEP_IDLE_TIMEOUT": "1s", "TCPKEEP_KEEPIDLE": str(KEEPIDLE),
           "TCPKEEP_LOG": log, "TCPKEEP_LOG_LEVEL": "info"}
    env.update(rules)
    return env


def managed_opts(**extra):
    o = kernel_defaults()
    o.update(keepalive=1, keepidle=KEEPIDLE)
    o.update(extra)
    return o


class Case:
    """One connection of a hub, and what the rules say about it."""

    def __init__(self, label, hub, managed, direction, lport, pport, sock, t0, early=0.0):
        self.label, self.hub, self.managed = label, hub, managed
        self.dir, self.lport, self.pport = direction, lport, pport
        self.sock, self.t0, self.early = sock, t0, early
        self.watch = Watch(sock, WATCH)


def inbound(label, hub, port, managed, host="127.0.0.1"):
    """A plain client connects to the hub's listener."""
    s, t0 = connect(port, host)
    return Case(label, hub, managed, "in", port, s.getsockname()[1], s, t0)


def outbound(label, hub, ls, managed):
    """The hub's connection to one of our plain listeners: accept it. Its
    clock starts at the handshake (the kernel's record, jiffy precision)."""
    try:
        a, peer = ls.accept()
    except socket.timeout:
        raise Fail("%s: the hub did not connect to our listener" % label)
    t0 = handshake_time(a)
    return Case(label, hub, managed, "out", peer[1], ls.getsockname()[1], a, t0, early=0.015)


def check_cases(cases, want_managed=None):
    """Options, ss timers, cuts and log lines of every case, all at once;
    Fail listing every problem. Returns a short summary."""
    want_managed = want_managed or managed_opts()
    problems = []
    infos = {}
    for c in cases:
        # nc reports no options: its connections are judged by ss, cut and log.
        infos[c] = c.hub.conn(c.dir, c.lport, c.pport) if isinstance(c.hub, Hub) else None
    # One ss snapshot, taken before the first cut can come.
    snap = {(x["lport"], x["pport"]): x for x in ss_conns() if x["state"].startswith("ESTAB")}
    for c in cases:
        opts = infos[c]["opts"] if infos[c] else (want_managed if c.managed
                                                  else kernel_defaults())
        if c.managed and opts != want_managed:
            problems.append("%s: getsockopt in the program shows %s, expected the shim's %s"
                            % (c.label, opts, want_managed))
        if not c.managed and not untouched(opts):
            problems.append("%s: excluded, but getsockopt in the program shows %s (kernel "
                            "defaults %s): the shim set options on it"
                            % (c.label, opts, kernel_defaults()))
        x = snap.get((c.lport, c.pport))
        if x is None:
            problems.append("%s: ss shows no established %d -> %d" % (c.label, c.lport, c.pport))
            continue
        rem = keepalive_remaining(x)
        if c.managed and (rem is None or not KEEPIDLE - 3 <= rem <= KEEPIDLE):
            problems.append("%s: ss timer %s, expected keepalive ~%d s: %r"
                            % (c.label, rem, KEEPIDLE, x["line"]))
        if not c.managed and rem is not None:
            problems.append("%s: excluded, but ss shows a keepalive timer: %r"
                            % (c.label, x["line"]))
    cut = []
    for c in cases:
        end, how = c.watch.join(WATCH + 2)
        if c.managed:
            try:
                cut.append("%s %.3f s" % (c.label, cut_window(
                    end and end - c.t0, LIMIT, c.label, early=c.early) and end - c.t0))
            except Fail as e:
                problems.append(str(e))
        elif end is not None:
            problems.append("%s: excluded, but ended (%s) %.3f s after connecting"
                            % (c.label, how, end - c.t0))
    # The shim's log: one idle line per managed connection, none for the others.
    by_hub = {}
    for c in cases:
        by_hub.setdefault(c.hub, []).append(c)
    for hub, cs in by_hub.items():
        lines = parse_lines(read_text(hub.log), CUT_LINE)
        for c in cs:
            mine = lines_for(lines, c.lport, c.pport)
            if c.managed and [x["reason"] for x in mine] != ["idle"]:
                problems.append("%s: expected one `idle` cut line in the log, got %r (log: %r)"
                                % (c.label, [x["line"] for x in mine],
                                   read_text(hub.log)[-400:]))
            if not c.managed and mine:
                problems.append("%s: excluded, but logged as cut: %r"
                                % (c.label, mine[0]["line"]))
    if problems:
        raise Fail("; ".join(problems))
    n_ex = sum(1 for c in cases if not c.managed)
    return "managed (options, ss ~%d s, cut): %s; %d excluded: no option, no timer, open " \
        "after %.1f s" % (KEEPIDLE, ", ".join(cut), n_ex, WATCH)


def start_hub(d, name, spec, **rules):
    log = os.path.join(d, name + ".log")
    hub = Hub(spec, rules_env(log, **rules), stderr_path=os.path.join(d, name + ".err"))
    hub.log = log
    return hub


def v4(port, **kw):
    return dict(kw, host="127.0.0.1", port=port)


def v6(port, **kw):
    return dict(kw, host="::1", port=port)


# --------------------------------------------------------------------------
# TCPKEEP_PORTS, TCPKEEP_PEERS, TCPKEEP_DIRECTION


@timeout(40)
def test_rules_ports_two_listeners():
    """A server listening on two ports, TCPKEEP_PORTS=<first>: the connection
    on the first gets SO_KEEPALIVE + 77 s (program's getsockopt and ss) and
    is cut at 1 s; the one on the second has the kernel's defaults, no
    timer, and is never cut. The listener on the listed port gets the
    options on listen() (every connection it accepts matches); the other
    carries none."""
    d = tmpdir()
    p1, p2 = free_ports(2)
    hub = start_hub(d, "hub", {"listen": [v4(p1), v4(p2)]}, TCPKEEP_PORTS=str(p1))
    cases = [inbound("listed port %d" % p1, hub, p1, True),
             inbound("other port %d" % p2, hub, p2, False)]
    lo = hub.listener_opts(p1)
    check(lo == managed_opts(), "with TCPKEEP_PORTS=%d the listener on it carries %s; "
          "expected the shim's %s (set on listen)" % (p1, lo, managed_opts()))
    lo = hub.listener_opts(p2)
    check(untouched(lo), "with TCPKEEP_PORTS=%d the listener on %d carries options %s; "
          "expected none from the shim" % (p1, p2, lo))
    return check_cases(cases) + "; the listed listener got the options on listen, the other none"


@timeout(40)
def test_rules_ports_range_and_list():
    """TCPKEEP_PORTS=1,A-B over three consecutive ports A, B=A+1, C=A+2: A
    and B are managed, C is not."""
    d = tmpdir()
    a, b, c = consecutive_free_ports(3)
    hub = start_hub(d, "hub", {"listen": [v4(a), v4(b), v4(c)]},
                    TCPKEEP_PORTS="1,%d-%d" % (a, b))
    cases = [inbound("range start %d" % a, hub, a, True),
             inbound("range end %d" % b, hub, b, True),
             inbound("past the range %d" % c, hub, c, False)]
    return "TCPKEEP_PORTS=1,%d-%d: %s" % (a, b, check_cases(cases))


@timeout(40)
def test_rules_ports_outbound_by_peer_port():
    """Connections the program makes are matched by the peer's port: nc
    (client) to a listed port gets a timer and is cut, nc to another port is
    left alone; the hub's connections checked by getsockopt, one of them
    bound to a local port that IS listed (127.0.0.2:Q1) while its peer's is
    not: excluded, since only the server's port counts."""
    need("nc")
    d = tmpdir()
    q1, q2 = free_ports(2)
    ls1, ls2 = plain_listener("127.0.0.1", q1), plain_listener("127.0.0.1", q2)
    env = rules_env(os.path.join(d, "nc.log"), TCPKEEP_PORTS=str(q1))
    hub = start_hub(d, "hub", {"connect": [v4(q1), v4(q2, bind=["127.0.0.2", q1])],
                               "wait_go": True}, TCPKEEP_PORTS=str(q1))
    cases = []
    for ls, port, managed in ((ls1, q1, True), (ls2, q2, False)):
        nc = spawn(["nc", "127.0.0.1", str(port)], env=env, stdout=subprocess.DEVNULL)
        nc.log = env["TCPKEEP_LOG"]
        cases.append(outbound("nc -> listed %d" % port if managed else "nc -> other %d" % port,
                              nc, ls, managed))
    hub.go()
    cases.append(outbound("hub -> listed %d" % q1, hub, ls1, True))
    cases.append(outbound("hub from local port %d -> other %d" % (q1, q2), hub, ls2, False))
    return check_cases(cases) + " (nc: by ss, cut and log; the hub: by getsockopt too)"


@timeout(40)
def test_rules_peers_v4_v6_bare():
    """TCPKEEP_PEERS over IPv4 and IPv6 listeners of the same program, four
    servers at once: 127.0.0.1/32 manages the IPv4 client only; a bare ::1
    the IPv6 client only; a bare 127.0.0.1 the IPv4 client only;
    10.0.0.0/8,::2/128 neither."""
    d = tmpdir()
    hubs = []
    for name, peers, m4, m6 in (("v4cidr", "127.0.0.1/32", True, False),
                                ("v6bare", "::1", False, True),
                                ("v4bare", "127.0.0.1", True, False),
                                ("none", "10.0.0.0/8,::2/128", False, False)):
        p4, p6 = free_ports(2)
        hub = start_hub(d, name, {"listen": [v4(p4), v6(p6)]}, TCPKEEP_PEERS=peers)
        hubs.append((hub, peers, p4, p6, m4, m6))
    # Every server is up: all the clocks start now, within a few ms.
    cases = []
    for hub, peers, p4, p6, m4, m6 in hubs:
        cases.append(inbound("PEERS=%s, IPv4 peer" % peers, hub, p4, m4))
        cases.append(inbound("PEERS=%s, IPv6 peer" % peers, hub, p6, m6, host="::1"))
    return check_cases(cases)


@timeout(40)
def test_rules_peers_ipv4_mapped():
    """An AF_INET6 listener that takes IPv4 connections (bound to
    ::ffff:127.0.0.1, V6ONLY off): its peer ::ffff:127.0.0.1 matches
    TCPKEEP_PEERS=127.0.0.0/8; an IPv6 peer ::1 of the same program does
    not. And TCPKEEP_PEERS=::1/128 excludes the mapped peer."""
    d = tmpdir()
    hubs = []
    for name, peers, m_mapped, m6 in (("v4net", "127.0.0.0/8", True, False),
                                      ("v6only", "::1/128", False, True)):
        pm, p6 = free_ports(2)
        hub = start_hub(d, name, {"listen": [dict(host="::ffff:127.0.0.1", port=pm, dual=True),
                                             v6(p6)]}, TCPKEEP_PEERS=peers)
        hubs.append((hub, peers, pm, p6, m_mapped, m6))
    cases = []
    for hub, peers, pm, p6, m_mapped, m6 in hubs:
        cases.append(inbound("PEERS=%s, IPv4-mapped peer" % peers, hub, pm, m_mapped))
        cases.append(inbound("PEERS=%s, IPv6 peer" % peers, hub, p6, m6, host="::1"))
    for c in cases:
        if "mapped" in c.label:
            peer = c.hub.conn("in", c.lport, c.pport)["peer"]
            check(peer.startswith("::ffff:"), "%s: the program sees peer %r, not an "
                  "IPv4-mapped address: the test is broken" % (c.label, peer))
    return check_cases(cases)


@timeout(40)
def test_rules_direction():
    """TCPKEEP_DIRECTION=in / out / both on programs that accept and connect:
    only the connections of the named direction are managed; also socat as a
    proxy with DIRECTION=out: its upstream connection has the timer and is
    cut, its client's connection has none."""
    need("socat")
    d = tmpdir()
    # socat: client -> [socat] -> upstream; the upstream side must be cut, not the client's.
    sp, up = free_ports(2)
    uls = plain_listener("127.0.0.1", up)
    log = os.path.join(d, "socat.log")
    socat = spawn(["socat", "TCP-LISTEN:%d,bind=127.0.0.1,reuseaddr" % sp, "TCP:127.0.0.1:%d" % up],
                  env=rules_env(log, TCPKEEP_DIRECTION="out"), stdout=subprocess.DEVNULL)
    wait_listen(sp, proc=socat)
    cli, t_cli = connect(sp)
    try:
        ua, upeer = uls.accept()
    except socket.timeout:
        raise Fail("socat did not connect upstream")
    t_up = handshake_time(ua)
    w = Watch(ua, WATCH)
    time.sleep(0.1)
    up_timer = expect_timer(upeer[1], up, KEEPIDLE, "socat's upstream connection (out)")
    expect_no_timer(sp, cli.getsockname()[1], "socat's client connection (in)")
    # The hubs, while socat's connection waits for its cut: all started
    # first, then all their connections at once.
    hubs = []
    for direction, m_in, m_out in (("in", True, False), ("out", False, True),
                                   ("both", True, True)):
        p, q = free_ports(2)
        ls = plain_listener("127.0.0.1", q)
        hub = start_hub(d, direction, {"listen": [v4(p)], "connect": [v4(q)], "wait_go": True},
                        TCPKEEP_DIRECTION=direction)
        hubs.append((hub, direction, p, ls, m_in, m_out))
    cases = []
    for hub, direction, p, ls, m_in, m_out in hubs:
        hub.go()
        cases.append(outbound("DIRECTION=%s, outbound" % direction, hub, ls, m_out))
        cases.append(inbound("DIRECTION=%s, inbound" % direction, hub, p, m_in))
    hubs = check_cases(cases)
    end, how = w.join(WATCH + 1)
    socat_cut = cut_window(end and end - t_up, LIMIT, "socat's upstream connection cut",
                           "the handshake", early=0.015)
    lines = parse_lines(read_text(log), CUT_LINE)
    check(len(lines) == 1 and lines[0]["pport"] == up,
          "socat's log: expected one cut line for the upstream connection, got %r"
          % [x["line"] for x in lines])
    finish(socat)
    return "%s; socat DIRECTION=out: upstream timer %.0f s, %s, client side no timer" % (
        hubs, up_timer, socat_cut)


@timeout(40)
def test_rules_combined_must_all_match():
    """TCPKEEP_PORTS=P, TCPKEEP_PEERS=127.0.0.0/8, TCPKEEP_DIRECTION=in: of
    four connections of one program, each failing at most one condition,
    only the one matching all three is managed: in/P/127.0.0.1 managed;
    in/other port, in/P over ::1, and out to 127.0.0.2:P excluded."""
    d = tmpdir()
    p, p2 = free_ports(2)
    ls = plain_listener("127.0.0.2", p)
    hub = start_hub(d, "hub", {"listen": [v4(p), v4(p2), v6(p)], "connect": [
        dict(host="127.0.0.2", port=p)]},
        TCPKEEP_PORTS=str(p), TCPKEEP_PEERS="127.0.0.0/8", TCPKEEP_DIRECTION="in")
    cases = [outbound("out to 127.0.0.2:%d (direction fails)" % p, hub, ls, False),
             inbound("in on %d from 127.0.0.1 (all match)" % p, hub, p, True),
             inbound("in on %d (port fails)" % p2, hub, p2, False),
             inbound("in on %d from ::1 (peer fails)" % p, hub, p, False, host="::1")]
    return check_cases(cases)


# --------------------------------------------------------------------------
# the program's own options, TCPKEEP_OVERRIDE

OWN = {"keepalive": 0, "keepidle": 500, "keepintvl": 50, "keepcnt": 9, "user_timeout": 1234}
SHIM = {"TCPKEEP_KEEPIDLE": "77", "TCPKEEP_KEEPINTVL": "13", "TCPKEEP_KEEPCNT": "4",
        "TCPKEEP_USER_TIMEOUT": "7500ms"}
SHIM_OPTS = dict(keepalive=1, keepidle=77, keepintvl=13, keepcnt=4, user_timeout=7500)


def _own_hubs(d, override, own, extra_listen=()):
    """Servers and clients that set options themselves, at every point:
    on the listener before listen, after listen, on the accepted socket;
    on an outbound socket before and after connect. Returns
    [(label, hub, direction, lport, pport, sock)] and the rules' ports."""
    ports = free_ports(6)
    q = ports[5]
    ls = plain_listener("127.0.0.1", q)
    listed = ",".join(str(x) for x in ports)
    env = dict(SHIM, TCPKEEP_PORTS=listed, TCPKEEP_LOG=os.path.join(d, "log"))
    if override:
        env["TCPKEEP_OVERRIDE"] = "on"
    conns = []
    for mode, port in (("before", ports[0]), ("after", ports[1]), ("accepted", ports[2])):
        hub = Hub({"listen": [v4(port, own=mode)], "own": own}, env,
                  stderr_path=os.path.join(d, mode + ".err"))
        s, _ = connect(port)
        conns.append(("set on the %s" % {"before": "listener before listen",
                                         "after": "listener after listen",
                                         "accepted": "accepted socket"}[mode],
                      hub, "in", port, s.getsockname()[1], s))
    for mode in ("before", "after"):
        hub = Hub({"connect": [v4(q, own=mode)], "own": own}, env,
                  stderr_path=os.path.join(d, "out-" + mode + ".err"))
        a, peer = ls.accept()
        conns.append(("set %s connect" % mode, hub, "out", peer[1], q, a))
    # Not listed: TCPKEEP_OVERRIDE must not touch it, the program's values apply.
    other = free_ports(1)[0]
    while str(other) in listed.split(","):
        other = free_ports(1)[0]
    hub = Hub({"listen": [v4(other, own="accepted")], "own": own}, env,
              stderr_path=os.path.join(d, "other.err"))
    s, _ = connect(other)
    conns.append(("excluded port, set on the accepted socket", hub, "in", other,
                  s.getsockname()[1], s))
    return conns


def _redis(d, port, env, extra=()):
    server = find_prog("redis-server")
    if not server:
        return None
    out = open(os.path.join(d, "redis-%d.out" % port), "w")
    try:
        p = spawn([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--daemonize", "no", "--dir", d, "--logfile", ""]
                  + list(extra), env=env, stdin=subprocess.DEVNULL, stdout=out,
                  stderr=subprocess.STDOUT)
    finally:
        out.close()
    wait_listen(port, proc=p, limit=10)
    return p


def _redis_ping(s):
    s.sendall(b"PING\r\n")
    s.settimeout(3)
    return s.recv(100)


@timeout(40)
def test_rules_program_own_options_kept():
    """With rules set, a program that sets its own options (TCP_KEEPIDLE 500
    and friends, SO_KEEPALIVE off) keeps them wherever it set them: on the
    listener before or after listen, on the accepted socket, on an outbound
    socket before or after connect; the shim's own options fill only what the
    program did not set (SO_KEEPALIVE, when the program set only the
    timing). redis-server (tcp-keepalive 300 by default) keeps its 300 s."""
    d = tmpdir()
    problems, seen = [], []
    own_idle = {"keepidle": 500}
    for label, hub, direction, lport, pport, s in _own_hubs(d, False, own_idle):
        info = hub.conn(direction, lport, pport)
        excluded = label.startswith("excluded")
        want = dict(kernel_defaults() if excluded else SHIM_OPTS, keepidle=500)
        if info["opts"] != want:
            problems.append("%s (own TCP_KEEPIDLE 500): getsockopt %s, expected %s"
                            % (label, info["opts"], want))
        else:
            seen.append(label)
        if any(info["own"].values()):
            problems.append("%s: the program's setsockopt failed: %s" % (label, info["own"]))
        rem, line = _timer(lport, pport)
        if excluded:
            if rem is not None:
                problems.append("%s: ss shows a keepalive timer: %r" % (label, line))
        elif rem is None or not 497 <= rem <= 500:
            problems.append("%s: ss keepalive timer %s, expected ~500 s: %r" % (label, rem, line))
    # All five set by the program on the accepted socket: all five stay.
    full = _own_hubs(d, False, OWN)
    for label, hub, direction, lport, pport, s in full:
        if "accepted" not in label:
            continue
        info = hub.conn(direction, lport, pport)
        if info["opts"] != OWN:
            problems.append("%s (all five options): getsockopt %s, expected the program's %s"
                            % (label, info["opts"], OWN))
    redis = ""
    if find_prog("redis-server"):
        _, rem, line = _redis_timer(d, {})
        if rem is None or not 295 <= rem <= 300:
            problems.append("redis-server (tcp-keepalive 300) under TCPKEEP_PORTS: ss timer %s, "
                            "expected its own ~300 s: %r" % (rem, line))
        else:
            redis = "; redis-server keeps its 300 s (ss %.0f s)" % rem
    if problems:
        raise Fail("; ".join(problems))
    return "own values kept (%s); all five own options kept on the accepted socket%s" % (
        ", ".join(seen), redis)


def _timer(lport, pport):
    for x in ss_conns():
        if x["lport"] == lport and x["pport"] == pport and x["state"].startswith("ESTAB"):
            return keepalive_remaining(x), x["line"]
    return None, "(no such established connection in ss)"


def _redis_timer(d, env):
    """redis-server (tcp-keepalive 300) on a free port, shimmed with
    TCPKEEP_PORTS naming that port plus env: its answer to PING on one
    connection and that connection's ss keepalive timer (seconds, ss line)."""
    port = free_ports(1)[0]
    srv = _redis(d, port, dict(SHIM, TCPKEEP_PORTS=str(port), **env))
    s, _ = connect(port)
    pong = _redis_ping(s)
    rem, line = _timer(port, s.getsockname()[1])
    stop(srv)
    return pong, rem, line


@timeout(40)
def test_rules_override_on():
    """TCPKEEP_OVERRIDE=on with rules: wherever the program sets SO_KEEPALIVE
    off, TCP_KEEPIDLE 500, KEEPINTVL 50, KEEPCNT 9, USER_TIMEOUT 1234 (on
    the listener before/after listen, the accepted socket, an outbound socket
    before/after connect), each setsockopt returns 0 but getsockopt shows the
    shim's 1/77/13/4/7500; on a connection the rules exclude, the program's
    values apply. redis-server's own 300 s loses to the shim's 77 s."""
    d = tmpdir()
    problems, seen = [], []
    for label, hub, direction, lport, pport, s in _own_hubs(d, True, OWN):
        info = hub.conn(direction, lport, pport)
        excluded = label.startswith("excluded")
        want = OWN if excluded else SHIM_OPTS
        if info["opts"] != want:
            problems.append("%s: getsockopt %s, expected %s" % (label, info["opts"], want))
        else:
            seen.append(label)
        if any(info["own"].values()):
            problems.append("%s: the program's setsockopt did not return 0: errno %s"
                            % (label, info["own"]))
        if not excluded:
            rem, line = _timer(lport, pport)
            if rem is None or not 74 <= rem <= 77:
                problems.append("%s: ss keepalive timer %s, expected the shim's ~77 s: %r"
                                % (label, rem, line))
    redis = ""
    if find_prog("redis-server"):
        pong, rem, line = _redis_timer(d, {"TCPKEEP_OVERRIDE": "on"})
        if not pong.startswith(b"+PONG"):
            problems.append("redis-server under TCPKEEP_OVERRIDE=on answered %r" % pong)
        if rem is None or not 74 <= rem <= 77:
            problems.append("redis-server (tcp-keepalive 300) with TCPKEEP_OVERRIDE=on: ss timer "
                            "%s, expected the shim's ~77 s: %r" % (rem, line))
        else:
            redis = "; redis-server's 300 s overridden (ss %.0f s)" % rem
    if problems:
        raise Fail("; ".join(problems))
    return "setsockopt returned 0, shim's values kept (%s)%s" % (", ".join(seen), redis)


# --------------------------------------------------------------------------
# TCPKEEP_CONFIG

EXAMPLE = """\
# MATCH: SETTINGS
port=%(redis)d: idle=5m keepidle=60
direction=out: idle=0
peer=127.0.0.0/8 port=%(a)d-%(b)d: read=1s first-byte=500ms action=reset
*: idle=1s
"""


@timeout(40)
def test_rules_config_example():
    """The issue's example rules file on real servers, TCPKEEP_KEEPIDLE=77 in
    the environment: redis on the port of line 2 gets keepidle 60 and its
    5 m idle (not cut at 1 s by `*`: first match wins); the hub's outbound
    connection gets idle=0 (kept); on port A of line 4 a silent client is
    reset at 0.5 s (first-byte) and a client that sent one byte and then
    only receives is reset 1 s after it (read-idle: `*`'s idle would never
    cut it, the server writes every 0.3 s); a silent client on another port
    is shut down at 1 s (`*`)."""
    need("redis-server")
    d = tmpdir()
    a, b = consecutive_free_ports(2)
    r, o, q = free_ports(3, avoid=(a, b))
    path = os.path.join(d, "rules.conf")
    with open(path, "w") as f:
        f.write(EXAMPLE % dict(redis=r, a=a, b=b))
    env = {"TCPKEEP_CONFIG": path, "TCPKEEP_KEEPIDLE": "77", "TCPKEEP_LOG_LEVEL": "info"}
    redis_log = os.path.join(d, "redis.tcpkeep.log")
    srv = _redis(d, r, dict(env, TCPKEEP_LOG=redis_log), ["--tcp-keepalive", "0"])
    ls = plain_listener("127.0.0.1", q)
    hub_log = os.path.join(d, "hub.log")
    hub = Hub({"listen": [v4(a, tick=True), v4(o)], "connect": [v4(q)]},
              dict(env, TCPKEEP_LOG=hub_log), stderr_path=os.path.join(d, "hub.err"))
    out_sock, out_peer = ls.accept()
    t_out = handshake_time(out_sock)
    rc, t_rc = connect(r)
    x, t_x = connect(a)
    z, t_z = connect(a)
    z.sendall(b"z")
    t_z = time.monotonic()
    oc, t_oc = connect(o)
    watches = {k: Watch(s, 3.5) for k, s in (("redis", rc), ("out", out_sock), ("x", x),
                                             ("z", z), ("o", oc))}
    time.sleep(0.1)
    problems = []
    for who, lp, pp, want in (("redis (port rule keepidle=60)", r, rc.getsockname()[1], 60),
                              ("outbound (env keepidle 77)", out_peer[1], q, 77),
                              ("silent client on the `*` port", o, oc.getsockname()[1], 77)):
        try:
            expect_timer(lp, pp, want, who)
        except Fail as e:
            problems.append(str(e))
    ends = {k: w.join(5) for k, w in watches.items()}
    for k in ("redis", "out"):
        if ends[k][0] is not None:
            problems.append("%s connection ended (%s) though its rule keeps it: first match "
                            "must win over `*: idle=1s`" % (k, ends[k][1]))
    for k, t0, lim, how in (("x", t_x, 0.5, "reset"), ("z", t_z, 1.0, "reset"),
                            ("o", t_oc, 1.0, "eof")):
        end, got = ends[k]
        try:
            cut_window(end and end - t0, lim, "client %s cut" % k)
            if got != how:
                problems.append("client %s ended by %s, expected %s" % (k, got, how))
        except Fail as e:
            problems.append(str(e))
    rc.settimeout(3)
    try:
        pong = _redis_ping(rc)
    except OSError as e:
        pong = repr(e)
    if not str(pong).startswith("b'+PONG"):
        problems.append("redis did not answer PING after the idle window: %r" % (pong,))
    lines = parse_lines(read_text(hub_log), CUT_LINE)
    got = sorted((x["lport"], x["pport"], x["reason"], x["action"]) for x in lines)
    want = sorted([(a, x.getsockname()[1], "first-byte", "reset"),
                   (a, z.getsockname()[1], "read-idle", "reset"),
                   (o, oc.getsockname()[1], "idle", "shut down")])
    if got != want:
        problems.append("hub's cut lines %s, expected %s (log %r)"
                        % (got, want, read_text(hub_log)[-500:]))
    if parse_lines(read_text(redis_log), CUT_LINE):
        problems.append("redis logged a cut: %r" % read_text(redis_log)[-300:])
    stop(srv)
    if problems:
        raise Fail("; ".join(problems))
    return ("redis ss 60 s and kept; outbound kept (idle=0); first-byte reset %.3f s, "
            "read-idle reset %.3f s, `*` idle shut down %.3f s"
            % (ends["x"][0] - t_x, ends["z"][0] - t_z, ends["o"][0] - t_oc))


BAD_FILES = [
    # (file text, bad line number, what the message must say: the same
    # "expected ..." as the environment variable of that meaning)
    ("# comment\n*: idle=0 keepidle=99\nport=1: idel=5s\n", 3,
     'unknown key "idel"; expected one of idle, read, write,'),
    ("port=70000: idle=1s\n*: idle=0\n", 1,
     'port="70000": expected ports 1..65535 and ranges such as 80,443,8000-8100'),
    ("*: keepidle=99\npeer=10.0.0.0/33: idle=1s\n", 2,
     'peer="10.0.0.0/33": expected IPv4 or IPv6 addresses or CIDRs such as '
     '10.0.0.0/8,::1/128'),
    ("*: idle=5x\n", 1, 'idle="5x": expected a duration such as 30s, 1500ms, 5m or 1h'),
    ("# x\nport=80 idle=1s\n", 2, "; expected "),
    ("direction=sideways: idle=1s\n", 1, 'direction="sideways": expected in, out or both'),
    ("\n\n*: keepidle=abc\n", 3,
     'keepidle="abc": expected whole seconds 1..32767, such as 60 or 2m'),
]


@timeout(40)
def test_rules_config_bad_line():
    """A rules file with a bad line: exactly one stderr line
    `tcpkeep[PID]: FILE:LINE: ...; the rules file is ignored` with the right
    line number (7 kinds of bad line), and the environment's settings stay
    in force (keepidle 77, idle 1 s, not the file's 99 / 0); a missing file
    at start: `tcpkeep[PID]: FILE: No such file or directory; the rules file
    is ignored`."""
    import re
    d = tmpdir()
    problems = []
    runs = []
    for i, (text, line, say) in enumerate(BAD_FILES):
        path = os.path.join(d, "bad%d.conf" % i)
        with open(path, "w") as f:
            f.write(text)
        port = free_ports(1)[0]
        err = os.path.join(d, "bad%d.err" % i)
        hub = Hub({"listen": [v4(port)], "run_for": 10},
                  {"TCPKEEP_CONFIG": path, "TCPKEEP_IDLE_TIMEOUT": "1s",
                   "TCPKEEP_KEEPIDLE": "77"}, stderr_path=err)
        runs.append((hub, path, line, port, err, text, say))
    # The first one also carries a connection: the environment's settings apply.
    hub, path, line, port, err, _, _ = runs[0]
    s, t0 = connect(port)
    w = Watch(s, 3)
    time.sleep(0.1)
    try:
        expect_timer(port, s.getsockname()[1], 77, "with the rules file ignored")
    except Fail as e:
        problems.append(str(e))
    end, how = w.join(4)
    try:
        env_cut = cut_window(end and end - t0, 1.0, "idle client cut (environment's 1 s)")
    except Fail as e:
        problems.append(str(e))
        env_cut = ""
    time.sleep(0.2)
    missing = os.path.join(d, "missing.conf")
    port = free_ports(1)[0]
    merr = os.path.join(d, "missing.err")
    mhub = Hub({"listen": [v4(port)], "run_for": 10}, {"TCPKEEP_CONFIG": missing}, stderr_path=merr)
    time.sleep(0.3)
    for hub, path, line, port, err, text, say in runs:
        got = hub.stderr_text().splitlines()
        rx = re.compile(r"^tcpkeep\[%d\]: %s:%d: \S.*; the rules file is ignored$"
                        % (hub.pid, re.escape(path), line))
        if len(got) != 1 or not rx.match(got[0]) or say not in got[0]:
            problems.append("file %r: stderr %r, expected one line matching %s and saying %r"
                            % (text, got, rx.pattern, say))
    got = mhub.stderr_text().splitlines()
    want = "tcpkeep[%d]: %s: No such file or directory; the rules file is ignored" % (
        mhub.pid, missing)
    if got != [want]:
        problems.append("missing file: stderr %r, expected [%r]" % (got, want))
    if problems:
        raise Fail("; ".join(problems))
    return "%d bad files: one line each with the line number; environment in force (%s); " \
        "missing file: one line" % (len(BAD_FILES), env_cut)


def _rewrite_in_place(path, text):
    """Same inode: write over the old bytes, then cut the tail."""
    ino = os.stat(path).st_ino
    with open(path, "r+") as f:
        f.seek(0)
        f.write(text)
        f.truncate()
    check(os.stat(path).st_ino == ino, "in-place rewrite changed the inode")


def _replace_by_rename(path, text):
    tmp = path + ".new"
    with open(tmp, "w") as f:
        f.write(text)
    ino = os.stat(path).st_ino
    os.rename(tmp, path)
    check(os.stat(path).st_ino != ino, "rename kept the inode")


def _reload(write):
    d = tmpdir()
    p1, p2 = free_ports(2)
    path = os.path.join(d, "rules.conf")
    with open(path, "w") as f:
        f.write("# before\n*: keepidle=77\n")
    hub = Hub({"listen": [v4(p1), v4(p2)]},
              {"TCPKEEP_CONFIG": path, "TCPKEEP_LOG": os.path.join(d, "log"),
               "TCPKEEP_LOG_LEVEL": "info"}, stderr_path=os.path.join(d, "err"))
    c1, t1 = connect(p1)
    c2, t2 = connect(p2)
    w1, w2 = Watch(c1, 6), Watch(c2, 6)
    time.sleep(0.2)
    expect_timer(p1, c1.getsockname()[1], 77, "before the change, port %d" % p1)
    expect_timer(p2, c2.getsockname()[1], 77, "before the change, port %d" % p2)
    time.sleep(0.3)
    tw = time.monotonic()
    write(path, "# after\nport=%d: keepidle=50\n*: idle=1s keepidle=77\n" % p1)

    def rearmed():
        rem, _ = _timer(p1, c1.getsockname()[1])
        return rem is not None and rem <= 50.2 and time.monotonic()
    t_re = wait_until(rearmed, 2.0 + CUT_SLACK + 0.5, 0.05)
    problems = []
    if not t_re:
        problems.append("the existing connection on port %d: keepalive timer %r in ss %.1f s "
                        "after the change, expected ~50 s" % (p1, _timer(p1, c1.getsockname()[1]),
                                                             2.0 + CUT_SLACK + 0.5))
    end2, how2 = w2.join(7)
    if end2 is None:
        problems.append("the existing idle connection on port %d was not cut within %.1f s of "
                        "the change that gave it idle=1s" % (p2, 6 - (tw - t2)))
    elif end2 < tw or end2 - t2 < 1.0:
        problems.append("the connection on port %d ended (%s) %.3f s after connecting, %.3f s "
                        "after the change: too early" % (p2, how2, end2 - t2, end2 - tw))
    elif end2 - tw > 2.0 + CUT_SLACK:
        problems.append("the connection on port %d was cut %.3f s after the change: later than "
                        "2 s + %g" % (p2, end2 - tw, CUT_SLACK))
    # New connections follow the new file too.
    c3, t3 = connect(p2)
    c4, _ = connect(p1)
    w3 = Watch(c3, 3)
    time.sleep(0.1)
    try:
        expect_timer(p1, c4.getsockname()[1], 50, "a new connection on port %d" % p1)
    except Fail as e:
        problems.append(str(e))
    end3, _ = w3.join(4)
    try:
        new_cut = cut_window(end3 and end3 - t3, 1.0, "a new idle connection on port %d cut" % p2)
    except Fail as e:
        problems.append(str(e))
        new_cut = ""
    if w1.end is not None:
        problems.append("the connection on port %d (keepidle=50, no idle) ended (%s)"
                        % (p1, w1.how))
    err = hub.stderr_text()
    if err.strip():
        problems.append("stderr: %r" % err[-400:])
    if problems:
        raise Fail("; ".join(problems))
    return ("existing connection re-armed to ~50 s %.3f s after the change; existing idle "
            "connection cut %.3f s after it; %s" % (t_re - tw, end2 - tw, new_cut))


@timeout(40)
def test_rules_config_reload_in_place():
    """The rules file rewritten in place (same inode) while the program runs:
    within 2 s an existing connection's keepalive is re-set (ss shows ~50 s,
    was 77) and an existing idle connection given idle=1s is cut; new
    connections follow the new file."""
    return _reload(_rewrite_in_place)


@timeout(40)
def test_rules_config_reload_rename():
    """The same, with the new file renamed over the old one (new inode)."""
    return _reload(_replace_by_rename)


@timeout(60)
def test_rules_config_bad_version_and_delete():
    """A running program's rules file replaced by a bad version: one warning
    `FILE:2: ...; the previous rules stay in force`, and the previous rules
    keep working (a new connection on the idle=1s port is cut at 1 s, one on
    the other port gets the file's keepidle 77, not the environment's 55);
    then the file deleted: one warning `FILE: No such file or directory; the
    previous rules stay in force`, the rules still work; then a good file
    again: it takes effect."""
    import re
    d = tmpdir()
    p1, p2 = free_ports(2)
    path = os.path.join(d, "rules.conf")
    with open(path, "w") as f:
        f.write("port=%d: idle=1s\n*: keepidle=77\n" % p2)
    err = os.path.join(d, "err")
    hub = Hub({"listen": [v4(p1), v4(p2)]},
              {"TCPKEEP_CONFIG": path, "TCPKEEP_KEEPIDLE": "55"}, stderr_path=err)
    c0, _ = connect(p1)   # keeps the process (and its watchdog) busy with a connection
    time.sleep(0.2)
    expect_timer(p1, c0.getsockname()[1], 77, "at start")
    bad_rx = re.compile(r"^tcpkeep\[%d\]: %s:2: \S.*; the previous rules stay in force$"
                        % (hub.pid, re.escape(path)))
    gone = "tcpkeep[%d]: %s: No such file or directory; the previous rules stay in force" % (
        hub.pid, path)
    problems = []

    def still_in_force(stage):
        c1, t1 = connect(p2)
        c2, _ = connect(p1)
        w = Watch(c1, 3)
        time.sleep(0.1)
        try:
            expect_timer(p1, c2.getsockname()[1], 77, "%s, a new connection on port %d"
                         % (stage, p1))
        except Fail as e:
            problems.append(str(e))
        end, _ = w.join(4)
        try:
            return cut_window(end and end - t1, 1.0, "%s, a new idle connection on port %d cut"
                              % (stage, p2))
        except Fail as e:
            problems.append(str(e))
            return ""

    def lines():
        return read_text(err).splitlines()

    t_bad = time.monotonic()
    _rewrite_in_place(path, "port=%d: idle=1s\n*: keepidle=77 bogus=1\n" % p2)
    seen = wait_until(lambda: any(bad_rx.match(x) for x in lines()), 2.0 + CUT_SLACK)
    if not seen:
        problems.append("no warning for the bad version within %.1f s; stderr %r"
                        % (2.0 + CUT_SLACK, lines()))
    t_seen_bad = time.monotonic() - t_bad
    after_bad = still_in_force("after the bad version")
    time.sleep(max(0.0, 3.2 - (time.monotonic() - t_bad)))  # three looks at the same version
    n_bad = sum(1 for x in lines() if bad_rx.match(x))
    t_del = time.monotonic()
    os.unlink(path)
    seen = wait_until(lambda: gone in lines(), 2.0 + CUT_SLACK)
    if not seen:
        problems.append("no warning for the deleted file within %.1f s; stderr %r"
                        % (2.0 + CUT_SLACK, lines()))
    t_seen_del = time.monotonic() - t_del
    after_del = still_in_force("after deleting the file")
    time.sleep(max(0.0, 3.2 - (time.monotonic() - t_del)))
    all_lines = lines()
    n_gone = all_lines.count(gone)
    if n_bad != 1 or n_gone != 1 or len(all_lines) != 2:
        problems.append("expected exactly one warning per version (bad version %d, deleted %d); "
                        "stderr %r" % (n_bad, n_gone, all_lines))
    # A good file again takes effect.
    with open(path, "w") as f:
        f.write("*: keepidle=44\n")
    t_new = time.monotonic()

    def fresh():
        c, _ = connect(p1)
        time.sleep(0.05)
        rem, _ = _timer(p1, c.getsockname()[1])
        c.close()
        return rem is not None and 41 <= rem <= 44
    if not wait_until(fresh, 2.0 + CUT_SLACK, 0.2):
        problems.append("a good file written after the deletion did not take effect within "
                        "%.1f s (new connections' keepidle not 44)" % (2.0 + CUT_SLACK))
    rem, _ = _timer(p1, c0.getsockname()[1])
    if problems:
        raise Fail("; ".join(problems))
    return ("bad version: one warning after %.2f s, previous rules kept (%s); deleted: one "
            "warning after %.2f s, rules kept (%s); a new good file took effect %.2f s after "
            "it was written" % (t_seen_bad, after_bad, t_seen_del, after_del,
                                time.monotonic() - t_new))


CUT_THEN_RELOAD = r"""
import os, socket, sys, time
rules = sys.argv[1]
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(4)
c = socket.create_connection(s.getsockname())
a, _ = s.accept()
a.settimeout(5)
print("cut", a.recv(1) == b"", flush=True)        # the rule's idle limit ends it
with open(rules + ".new", "w") as f:
    f.write("*: idle=0 keepidle=50\n")
os.rename(rules + ".new", rules)                  # the old rule set is freed
time.sleep(2.5)
for sock in (a, c):                               # records of cut connections
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 33)
print("alive", a.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), flush=True)
"""


@timeout(30)
def test_rules_reload_after_cut():
    """Connections cut under a rule, still held by the program, when a new
    rules file replaces the old one: their records must leave the freed
    rule set too. The program's setsockopt on them afterwards read the freed
    settings and crashed (SIGSEGV) before the fix; now it works and the
    program's own value stands."""
    d = tmpdir()
    rules = os.path.join(d, "cut.rules")
    with open(rules, "w") as f:
        f.write("*: idle=1s\n")
    prog = os.path.join(d, "cut_then_reload.py")
    with open(prog, "w") as f:
        f.write(CUT_THEN_RELOAD)
    p = spawn([sys.executable, prog, rules], env={"TCPKEEP_CONFIG": rules})
    out, err = p.communicate(timeout=20)
    check(p.returncode == 0, "the program ended with status %s (a negative one is a signal); "
          "stdout %r stderr %r" % (p.returncode, out, err[-400:]))
    check("cut True" in out and "alive 33" in out, "unexpected output %r" % out)
    return "cut connections held through a reload: setsockopt afterwards works (%s)" % \
        out.strip().replace("\n", ", ")
