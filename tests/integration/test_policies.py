"""Idle policies (issue 5): read-idle, write-idle and idle; slow readers and
stuck peers; first byte; half-closed; lifetime and its jitter; the reset
action; the activity modes (calls, kernel, both), also at 10,000
connections; the dry run. Real programs under the shim (socat, nc, python3,
small C programs where a test needs an exact syscall pattern); plain
clients in the test process. Every cut is also checked in the shim's log:
one line naming the connection and the reason token.

Each test says how it would fail without the feature it covers."""
import errno
import json
import os
import re
import signal
import socket
import subprocess
import time

from helpers import (CUT_SLACK, LATE_READER, Fail, check, compile_c, connect, cut_window,
                     expect_line, expect_keepalive_timer, finish, free_port, kernel_last_data_recv,
                     keepalive_remaining, lib, need, read_line, script, spawn, ss_find, timeout,
                     tmpdir, wait_eof, wait_listen)
from realprog import stop
from policy_util import (MANY_CLIENT, MANY_SERVER, RESET_SERVER, SERVER, SLOW_WRITER, Peer,
                         check_log, cpu_seconds, describe_end, drive, expect_kept, lines_until,
                         log_bounds, parse_log, poll_line, read_log, ready)

LIMIT = 1.0          # every policy's limit here, unless a test says otherwise
INFO = {"TCPKEEP_LOG_LEVEL": "info"}


def _server(args, env, logdir, name, info=True):
    """The Python SERVER under the shim, logging to a file; (proc, port, log)."""
    log = os.path.join(logdir, name + ".log")
    extra = dict(env, TCPKEEP_LOG=log)
    if info:
        extra.update(INFO)
    p = spawn(script(SERVER, name + ".py") + list(args), env=extra)
    return p, ready(p), log


def _server_events(p, kind, limit=0.5):
    """{peer port: time} of the server's `kind` lines ("eof", "accepted",
    "streamed"...) read so far, for up to `limit` s more."""
    out = getattr(p, "_events", None)
    if out is None:
        out = p._events = []
    end = time.monotonic() + limit
    while True:
        line = poll_line(p, max(0.0, end - time.monotonic()))
        if line is None:
            break
        out.append(line.split())
    return {int(w[1]): float(w[-1]) for w in out if w and w[0] == kind}


def _wait_event(p, kind, port, limit):
    """The time of the server's `kind` line for `port`, waiting up to
    `limit` s for it; None if it does not come."""
    end = time.monotonic() + limit
    while True:
        t = _server_events(p, kind, 0.001).get(port)
        if t is not None or time.monotonic() >= end:
            return t
        _server_events(p, kind, min(0.05, max(0.001, end - time.monotonic())))


def _cut(p, limit, what, since=None, since_what="connecting", hi=None, hows=("eof",)):
    """p's connection was ended (how in hows) between limit and hi (default
    limit + CUT_SLACK) after `since` (default: just before it connected)."""
    if p.ended is None:
        raise Fail("%s: not cut; %s" % (what, describe_end(p)))
    if p.how not in hows:
        raise Fail("%s: ended by %s, expected %s" % (what, p.how, " or ".join(hows)))
    start = p.t0 if since is None else since
    slack = CUT_SLACK if hi is None else hi - limit
    return cut_window(p.ended - start, limit, what, since_what, slack=slack, early=0.01)


# --------------------------------------------------------------------------
# read-idle, write-idle, idle

# Ends by itself after 4 s (longer than the test looks), so no shell outlives the test long.
WRITER_LOOP = "i=0; while [ $i -lt 20 ]; do printf x; sleep 0.2; i=$((i+1)); done"


def _socat(kind, env, logdir, name):
    """socat under the shim: 'writer' writes a byte every 0.2 s and never
    reads the connection (-U); 'reader' reads it into /dev/null and never
    writes to it (-u)."""
    port = free_port()
    log = os.path.join(logdir, name + ".log")
    listen = "TCP-LISTEN:%d,bind=127.0.0.1,reuseaddr" % port
    if kind == "writer":
        argv = ["socat", "-U", listen, "SYSTEM:" + WRITER_LOOP]
    else:
        argv = ["socat", "-u", listen, "STDOUT"]
    p = spawn(argv, env=dict(env, TCPKEEP_LOG=log, **INFO), stdout=subprocess.DEVNULL)
    wait_listen(port, proc=p)
    return p, port, log


@timeout(40)
def test_policies_read_write_idle():
    """socat writing every 0.2 s but never reading, and socat reading a byte
    every 0.2 s but never writing, each under READ_TIMEOUT, WRITE_TIMEOUT and
    IDLE_TIMEOUT = 1s: only the writer under READ is cut (read-idle) and only
    the reader under WRITE (write-idle); under IDLE neither is (data moves
    one way), while a silent client is (idle). Without read/write idle
    nothing is cut (v1 only knew idle); a policy that ignored the direction
    would cut the kept ones."""
    need("socat")
    d = tmpdir()
    cases = [  # name, program, variable, client sends?, expected reason
        ("writer READ_TIMEOUT", "writer", "TCPKEEP_READ_TIMEOUT", False, "read-idle"),
        ("reader READ_TIMEOUT", "reader", "TCPKEEP_READ_TIMEOUT", True, None),
        ("reader WRITE_TIMEOUT", "reader", "TCPKEEP_WRITE_TIMEOUT", True, "write-idle"),
        ("writer WRITE_TIMEOUT", "writer", "TCPKEEP_WRITE_TIMEOUT", False, None),
        ("writer IDLE_TIMEOUT", "writer", "TCPKEEP_IDLE_TIMEOUT", False, None),
        ("reader IDLE_TIMEOUT", "reader", "TCPKEEP_IDLE_TIMEOUT", True, None),
        ("silent client, IDLE_TIMEOUT", "reader", "TCPKEEP_IDLE_TIMEOUT", False, "idle"),
    ]
    started = [_socat(kind, {var: "1s"}, d, "s%d" % i)
               for i, (_, kind, var, _, _) in enumerate(cases)]
    runs = [(name, kind, active, reason, p, log, Peer(port, active=active, name=name))
            for (name, kind, _, active, reason), (p, port, log) in zip(cases, started)]
    peers = [r[-1] for r in runs]
    drive(peers, 3.2)   # > 3 limits
    done, bad = [], []
    for name, kind, active, reason, p, log, c in runs:
        try:
            if reason:
                msg = _cut(c, LIMIT, name + ": cut", hows=("eof", "reset") if active else ("eof",))
                exp = [(c.port, reason, "shut down") + log_bounds(LIMIT)]
            else:
                msg = expect_kept(c, name)
                if kind == "writer" and c.got < 10:
                    raise Fail("%s: the client got only %d bytes in 3.2 s: the writer did not "
                               "write every 0.2 s" % (name, c.got))
                exp = []
            cuts, other = read_log(log)
            # socat's SYSTEM address forks: its child keeps the connection
            # too and may cut it as well (or first); the reader is one process.
            pid = p.pid if kind == "reader" else None
            done.append("%s (%s)" % (msg, check_log(cuts, other, exp, name, pid=pid,
                                                    shared=kind == "writer")))
        except Fail as e:
            bad.append(str(e))
    for r in runs:
        stop(r[4], signal.SIGKILL)   # and the writers' shell loops
        r[-1].close()
    if bad:
        raise Fail("; ".join(bad))
    return "; ".join(done)


# --------------------------------------------------------------------------
# slow readers, stuck peers

def _slow_reader(env, what):
    """SLOW_WRITER under WRITE_TIMEOUT=1s and IDLE_TIMEOUT=1s (and env): its
    one blocking write of 48 MiB goes to a client that reads 64 KiB every
    50 ms for 3 s (the write cannot finish: it stays blocked), then stops
    reading: the cut must come the limit after the last progress (the
    program's own kernel's tcpi_bytes_acked, watched by a thread of the
    program every 5 ms). A description, or Fail."""
    prog = compile_c(SLOW_WRITER, "slow_writer")
    log = os.path.join(tmpdir(), "slow.log")
    srv = spawn([prog, "48"], env=dict(env, TCPKEEP_WRITE_TIMEOUT="1s", TCPKEEP_IDLE_TIMEOUT="1s",
                                       TCPKEEP_LOG=log, **INFO))
    try:
        port = ready(srv)
        s, t0 = connect(port)
        expect_line(srv, "accepted")
        got, gap, last = 0, 0.0, time.monotonic()
        stop = time.monotonic() + 3.0
        while time.monotonic() < stop:
            data = s.recv(65536)
            now = time.monotonic()
            if not data:
                raise Fail("%s: the slow reader saw EOF %.3f s after connecting" % (what, now - t0))
            got += len(data)
            gap, last = max(gap, now - last), now
            line = poll_line(srv, 0.001)
            if line is not None:
                raise Fail("%s: the program's blocking write returned (%s) %.3f s after the "
                           "client connected, while the client was still reading %d KiB every "
                           "50 ms (%d KiB so far): a slow reader was cut"
                           % (what, line, now - t0, 64, got >> 10))
            time.sleep(0.05)
        check(gap < 0.5, "%s: the reader waited %.3f s for data at one point: not steady"
              % (what, gap))
        # The stuck peer: stop reading. The window closes once the receive
        # buffer is full; the last data to arrive is the last progress.
        t_stop = time.monotonic()
        line = poll_line(srv, LIMIT + CUT_SLACK + 3.0)
        if line is None:
            raise Fail("%s: kept while the client read (%d KiB over 3 s); then the client "
                       "stopped reading, and the program's write was still blocked %.1f s later: "
                       "the stuck peer was not cut" % (what, got >> 10,
                                                        time.monotonic() - t_stop))
        w = line.split()
        check(w[0] == "write", "%s: unexpected line %r" % (what, line))
        res, err, t_cut = int(w[1]), int(w[2]), float(w[3])
        last_arrival = time.monotonic() - kernel_last_data_recv(s)
        progress = float(expect_line(srv, "progress", 2).split()[1])
        msg = cut_window(t_cut - progress, LIMIT, "stuck peer cut (the blocked write returned)",
                         "the program's tcpi_bytes_acked last advanced", early=0.01)
        msg += " (%.3f s after the last data reached the client)" % (t_cut - last_arrival)
        check(res > 0 or err == errno.EPIPE,
              "%s: the blocked write returned %d errno %s" % (what, res, errno.errorcode.get(err)))
        cuts, other = read_log(log)
        logged = check_log(cuts, other, [(s.getsockname()[1], ("idle", "write-idle"), "shut down",
                                          LIMIT, LIMIT + CUT_SLACK + 0.1)], what, pid=srv.pid)
        s.close()
    finally:
        finish(srv)
    return ("%s: kept through 3 s (3 limits) of slow reading (%d KiB, longest wait %.3f s, "
            "the program blocked in one write throughout); then the client stopped reading: "
            "%s, %s (%s)" % (what, got >> 10, gap, msg,
                             "write returned %d" % res if res > 0 else "EPIPE", logged))


@timeout(30)
def test_policies_slow_reader_and_stuck_peer():
    """Default activity: a program in one long blocking write to a slow but
    steady reader is neither write-idle nor idle; once the reader stops
    (zero window) it is cut 1 s after the last progress, within the bound.
    Fails without the kernel's progress (the program's only call never
    returns), and if the stuck peer is never cut or cut early."""
    return _slow_reader({}, "activity both")


@timeout(30)
def test_policies_slow_reader_calls_mode():
    """The same under TCPKEEP_ACTIVITY=calls. Reading of the issue: the
    slow-reader rule ("even when the program sits in one long blocking
    write", Netty's observeOutput) is about the program's own pending write,
    so it holds in calls mode too: tcpi_bytes_acked advancing during the
    program's write is the program writing. Here it is the only signal (the
    write never returns): fails without bytes_acked."""
    return _slow_reader({"TCPKEEP_ACTIVITY": "calls"}, "activity calls")


# --------------------------------------------------------------------------
# first byte

@timeout(30)
def test_policies_first_byte():
    """A Python server under FIRST_BYTE_TIMEOUT=1s: a client that sends
    nothing is cut at 1 s (first-byte); a client that sent one byte, then
    nothing, is kept; so is the connection the program made itself (its
    peer never sends). Without the policy nothing is cut; applied to every
    connection, the program's own would be."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(4)
    ls.settimeout(5)
    srv, port, log = _server(["--connect", str(ls.getsockname()[1])],
                             {"TCPKEEP_FIRST_BYTE_TIMEOUT": "1s"}, tmpdir(), "first_byte")
    try:
        out_sock, _ = ls.accept()
    except socket.timeout:
        _, err = finish(srv)
        raise Fail("the program did not connect: %r" % err[-400:])
    out = Peer.wrap(out_sock, time.monotonic(), "the program's own connection")
    silent = Peer(port, name="silent client")
    one = Peer(port, first=b"x", name="client that sent one byte")
    drive([silent, one, out], 2.6)
    msg = _cut(silent, LIMIT, "silent client cut")
    kept = [expect_kept(one, one.name), expect_kept(out, out.name)]
    cuts, other = read_log(log)
    logged = check_log(cuts, other, [(silent.port, "first-byte", "shut down") + log_bounds(LIMIT)],
                       "first byte", pid=srv.pid)
    finish(srv)
    for p in (silent, one, out):
        p.close()
    ls.close()
    return "%s (%s); %s" % (msg, logged, "; ".join(kept))


# --------------------------------------------------------------------------
# half-closed

@timeout(40)
def test_policies_half_closed():
    """HALF_CLOSED_TIMEOUT=1s, clients that send a line and shutdown(SHUT_WR):
    (a) a Python server reads EOF and keeps the socket: cut 1 s after its
    read returned 0; (b) one that then streams a line every 0.2 s for 3 s is
    kept while it writes, cut 1 s after its last write; (c) one that never
    reads (the socket sits in CLOSE_WAIT) is cut 1 s after the shim notices
    (allowed up to 1 s to notice). Afterwards each program still accepts a
    new client, and none used more than half a CPU (the watchdog polling
    for CLOSE_WAIT must not spin). Without the policy none is cut; if writes
    did not restart the clock, (b) would be cut mid-stream."""
    d = tmpdir()
    env = {"TCPKEEP_HALF_CLOSED_TIMEOUT": "1s"}
    a, pa, loga = _server([], env, d, "hc_a")
    b, pb, logb = _server(["--stream-on", "eof", "--count", "15", "--period", "0.2"], env, d,
                          "hc_b")
    c, pc, logc = _server(["--never-read"], env, d, "hc_c")
    peers = [Peer(pa, name="(a) read EOF, kept the socket"),
             Peer(pb, name="(b) streaming to the half-closed client"),
             Peer(pc, name="(c) never reads: CLOSE_WAIT")]
    fin = []
    for p in peers:
        p.sock.sendall(b"hello\n")
        fin.append(time.monotonic())
        p.sock.shutdown(socket.SHUT_WR)
    t_start = time.monotonic()
    drive(peers, 3.0 + LIMIT + CUT_SLACK + 2.0, until_all_ended=True)
    res, bad = [], []
    elapsed = time.monotonic() - t_start
    for name, srv in (("(a)", a), ("(b)", b), ("(c)", c)):
        try:
            used = cpu_seconds(srv.pid)
        except OSError:
            bad.append("%s: the program exited" % name)
            continue
        if used > 0.5 * elapsed + 0.5:
            bad.append("%s: the program used %.2f s of CPU in %.2f s: the shim spins"
                       % (name, used, elapsed))
    try:
        eof_a = _server_events(a, "eof").get(peers[0].port)
        check(eof_a is not None, "(a): the server never read EOF")
        res.append(_cut(peers[0], LIMIT, "(a) cut", eof_a, "the server read EOF"))
        res.append(check_log(*read_log(loga), [(peers[0].port, "half-closed", "shut down")
                                               + log_bounds(LIMIT)], "(a)", pid=a.pid))
    except Fail as e:
        bad.append(str(e))
    try:
        p = peers[1]
        ev = _server_events(b, "eof")
        eof_b = ev.get(p.port)
        last_w = _server_events(b, "streamed").get(p.port)
        lines = p.got // len(b"line 0\n")
        check(eof_b is not None, "(b): the server never read EOF")
        if last_w is None or (p.ended is not None and p.ended < last_w):
            raise Fail("(b): %s while the server was still streaming (%d lines, about %d "
                       "bytes, of 15 received): a write did not restart the half-closed clock"
                       % (describe_end(p), lines, p.got))
        res.append("(b) kept %.2f s after its EOF while the server streamed 15 lines"
                   % (last_w - eof_b))
        res.append(_cut(p, LIMIT, "then cut", last_w, "its last write"))
        res.append(check_log(*read_log(logb), [(p.port, "half-closed", "shut down", LIMIT,
                                                3.0 + LIMIT + CUT_SLACK + 1.0)], "(b)",
                             pid=b.pid))
    except Fail as e:
        bad.append(str(e))
    try:
        res.append(_cut(peers[2], LIMIT, "(c) cut", fin[2], "the client's FIN",
                        hi=LIMIT + 1.0 + CUT_SLACK))
        res.append(check_log(*read_log(logc), [(peers[2].port, "half-closed", "shut down", LIMIT,
                                                LIMIT + 1.0 + CUT_SLACK)], "(c)", pid=c.pid))
    except Fail as e:
        bad.append(str(e))
    for name, srv, port in (("(a)", a, pa), ("(b)", b, pb), ("(c)", c, pc)):
        probe = Peer(port, name="probe")
        if _wait_event(srv, "accepted", probe.port, 2.0) is None:
            bad.append("%s: afterwards the program did not accept a new client within 2 s: "
                       "hung" % name)
        probe.close()
    for p in (a, b, c):
        finish(p)
    for p in peers:
        p.close()
    if bad:
        raise Fail("; ".join(bad))
    return "; ".join(res)


# --------------------------------------------------------------------------
# lifetime, jitter

@timeout(30)
def test_policies_max_lifetime():
    """socat echoing (PIPE) under MAX_LIFETIME=1s: a client busy every 0.2 s,
    and answered, is cut at the age of 1 s (lifetime). Without the policy a
    busy connection is never cut."""
    need("socat")
    port = free_port()
    log = os.path.join(tmpdir(), "lifetime.log")
    srv = spawn(["socat", "TCP-LISTEN:%d,bind=127.0.0.1,reuseaddr" % port, "PIPE"],
                env=dict(TCPKEEP_MAX_LIFETIME="1s", TCPKEEP_LOG=log, **INFO),
                stdout=subprocess.DEVNULL)
    wait_listen(port, proc=srv)
    p = Peer(port, active=True, name="busy client")
    drive([p], LIMIT + CUT_SLACK + 1.5)
    msg = _cut(p, LIMIT, "busy client cut", hows=("eof", "reset"))
    check(p.got >= 3, "the busy client got %d echoed bytes: socat did not echo" % p.got)
    logged = check_log(*read_log(log), [(p.port, "lifetime", "shut down") + log_bounds(LIMIT)],
                       "lifetime", pid=srv.pid)
    finish(srv)
    p.close()
    return "%s, after %d bytes echoed (%s)" % (msg, p.got, logged)


@timeout(30)
def test_policies_lifetime_jitter():
    """A Python echo server under MAX_LIFETIME=1s, MAX_LIFETIME_JITTER=100:
    20 busy clients connected at once are each cut between 1 s and 2 s of
    age (+ the slack), and not all together (spread over more than 0.1 s).
    Without jitter they would all end within a few ms of each other."""
    n = 20
    srv, port, log = _server(["--echo"], {"TCPKEEP_MAX_LIFETIME": "1s",
                                          "TCPKEEP_MAX_LIFETIME_JITTER": "100"},
                             tmpdir(), "jitter")
    peers = [Peer(port, active=True, period=0.3, name="client %d" % i) for i in range(n)]
    drive(peers, 2 * LIMIT + CUT_SLACK + 1.5, until_all_ended=True)
    ages = []
    for p in peers:
        _cut(p, LIMIT, p.name + " cut", hi=2 * LIMIT + CUT_SLACK, hows=("eof", "reset"))
        ages.append(p.ended - p.t0)
    spread = max(ages) - min(ages)
    check(spread > 0.1, "all %d cuts within %.3f s of each other (ages %.3f..%.3f s): no jitter"
          % (n, spread, min(ages), max(ages)))
    logged = check_log(*read_log(log), [(p.port, "lifetime", "shut down", LIMIT,
                                         2 * LIMIT + CUT_SLACK) for p in peers], "jitter",
                       pid=srv.pid)
    finish(srv)
    for p in peers:
        p.close()
    ages.sort()
    return "%d busy clients cut at ages %.3f..%.3f s (median %.3f, limit 1 s, jitter 100%%); " \
        "the log: %d lifetime lines" % (n, ages[0], ages[-1], ages[n // 2],
                                        logged.count("lifetime"))


@timeout(30)
def test_policies_jitter_without_lifetime():
    """nc -l with MAX_LIFETIME_JITTER=10 and no MAX_LIFETIME (and
    IDLE_TIMEOUT=300ms, KEEPIDLE=77): one stderr line naming the variable,
    then a pure pass-through: the idle client is not cut, no keepalive.
    With MAX_LIFETIME=5s the same jitter is accepted: no line, keepalive
    set. Fails if the combination is not rejected, or rejected loudly but
    the shim stays active."""
    env = {"TCPKEEP_MAX_LIFETIME_JITTER": "10", "TCPKEEP_IDLE_TIMEOUT": "300ms",
           "TCPKEEP_KEEPIDLE": "77"}
    port = free_port()
    srv = spawn(["nc", "-l", "127.0.0.1", str(port)], env=env, stdout=subprocess.DEVNULL)
    wait_listen(port, proc=srv)
    s, t0 = connect(port)
    cport = s.getsockname()[1]
    end, _, how = wait_eof(s, 1.3)
    if end is not None:
        raise Fail("jitter without lifetime: the idle client was cut (%s) %.3f s after "
                   "connecting: the shim was not disabled" % (how, end - t0))
    c = ss_find(port, cport)
    check(keepalive_remaining(c) is None,
          "jitter without lifetime: nc's accepted socket has a keepalive timer: %r" % c["line"])
    s.close()
    _, err = finish(srv)
    lines = err.splitlines()
    want = r'^tcpkeep\[%d\]: TCPKEEP_MAX_LIFETIME_JITTER="10": expected [^;]+; ' \
           r'tcpkeep is disabled in this process$' % srv.pid
    if len(lines) != 1 or not re.match(want, lines[0]):
        raise Fail("jitter without lifetime: stderr is %r, expected one line matching %s"
                   % (err[-600:], want))

    port = free_port()
    srv = spawn(["nc", "-l", "127.0.0.1", str(port)],
                env=dict(env, TCPKEEP_MAX_LIFETIME="5s", TCPKEEP_IDLE_TIMEOUT="0"),
                stdout=subprocess.DEVNULL)
    wait_listen(port, proc=srv)
    s, _ = connect(port)
    time.sleep(0.2)
    timer = expect_keepalive_timer(port, s.getsockname()[1], 77, "nc with lifetime and jitter")
    s.close()
    _, err2 = finish(srv)
    check(not err2.strip(), "with MAX_LIFETIME=5s and jitter 10: stderr %r" % err2[-400:])
    return "stderr: %s; idle client kept 1.3 s (limit 0.3 s), no keepalive timer; with a " \
        "lifetime set, no error and keepalive %s" % (lines[0], timer)


# --------------------------------------------------------------------------
# reset

@timeout(30)
def test_policies_action_reset():
    """ACTION=reset, IDLE_TIMEOUT=1s, MAX_LIFETIME=1500ms, a C server with a
    thread blocked in read() per client: the silent client is reset at 1 s
    (idle), the busy one at 1.5 s (lifetime); both see ECONNRESET; each
    server thread's read ends with an error or EOF and its descriptor is
    still open (fcntl F_GETFD succeeds): the shim never closed it. With
    shutdown the clients would see EOF; a shim that closed the descriptor
    would make fcntl fail with EBADF."""
    prog = compile_c(RESET_SERVER, "reset_server")
    log = os.path.join(tmpdir(), "reset.log")
    srv = spawn([prog, "2"], env=dict(TCPKEEP_ACTION="reset", TCPKEEP_IDLE_TIMEOUT="1s",
                                      TCPKEEP_MAX_LIFETIME="1500ms", TCPKEEP_LOG=log, **INFO))
    port = ready(srv)
    silent = Peer(port, name="silent client")
    busy = Peer(port, active=True, name="busy client")
    drive([silent, busy], 1.5 + CUT_SLACK + 1.5, until_all_ended=True)
    res = [_cut(silent, LIMIT, "silent client reset", hows=("reset",)),
           _cut(busy, 1.5, "busy client reset", hows=("reset",))]
    ends = {}
    for line in lines_until(srv, "end", 3) + lines_until(srv, "end", 3):
        w = line.split()
        if w[0] == "end":
            ends[int(w[1])] = w
    for p in (silent, busy):
        w = ends.get(p.port)
        check(w is not None, "the server printed no end for %s: %r" % (p.name, ends))
        r, e, fl, fe = int(w[3]), int(w[4]), int(w[6]), int(w[7])
        if fl < 0:
            raise Fail("%s: after the reset fcntl(fd %s, F_GETFD) failed with %s: the "
                       "program's descriptor was closed" % (p.name, w[2], errno.errorcode.get(fe)))
        check(r <= 0, "%s: read returned %d" % (p.name, r))
        res.append("%s: the server's read returned %s, its fd %s still open"
                   % (p.name, "0 (EOF)" if r == 0 else "-1 " + errno.errorcode.get(e, str(e)),
                      w[2]))
    res.append(check_log(*read_log(log), [(silent.port, "idle", "reset") + log_bounds(LIMIT),
                                          (busy.port, "lifetime", "reset") + log_bounds(1.5)],
                         "reset", pid=srv.pid))
    finish(srv)
    silent.close()
    busy.close()
    return "; ".join(res)


# --------------------------------------------------------------------------
# activity modes

MODES = [("calls", "TCPKEEP_ACTIVITY=calls"), ("both", "TCPKEEP_ACTIVITY=both"),
         (None, "TCPKEEP_ACTIVITY unset"), ("kernel", "TCPKEEP_ACTIVITY=kernel")]


def _modes(args, active, cut_modes, what):
    """One SERVER(args) under IDLE_TIMEOUT=1s per activity mode, one client
    each (sending a byte every 0.2 s if `active`) for 3.2 s: cut at 1 s
    (idle) in `cut_modes`, kept in the others. (results, failures)."""
    d = tmpdir()
    started = []
    for mode, label in MODES:
        env = {"TCPKEEP_IDLE_TIMEOUT": "1s"}
        if mode:
            env["TCPKEEP_ACTIVITY"] = mode
        started.append(_server(args, env, d, "mode_%s" % mode))
    runs = [(mode, label, p, log, Peer(port, active=active, name="%s, %s" % (what, label)))
            for (mode, label), (p, port, log) in zip(MODES, started)]
    drive([r[-1] for r in runs], 3.2)
    res, bad = [], []
    for mode, label, p, log, c in runs:
        try:
            if mode in cut_modes:
                msg = _cut(c, LIMIT, c.name + ": cut", hows=("eof", "reset"))
                exp = [(c.port, "idle", "shut down") + log_bounds(LIMIT)]
            else:
                msg = expect_kept(c, c.name)
                exp = []
            res.append("%s (%s)" % (msg, check_log(*read_log(log), exp, label, pid=p.pid)))
        except Fail as e:
            bad.append(str(e))
        if not active and mode not in cut_modes and c.got < 12 * len(b"line 0\n"):
            bad.append("%s: only %d bytes arrived in 3.2 s: the program did not write every "
                       "0.2 s" % (c.name, c.got))
    for r in runs:
        finish(r[2])
        r[-1].close()
    return res, bad


@timeout(30)
def test_policies_activity_calls():
    """A Python server that never reads, a client sending a byte every 0.2 s:
    under ACTIVITY=calls the program's calls saw nothing, cut at 1 s; under
    both, unset (= both) and kernel the kernel saw the data: kept 3.2 s.
    Without the calls mode it would be kept; a mode that ignored the kernel
    would cut the others."""
    res, bad = _modes(["--never-read"], True, ("calls",), "peer sends, program never reads")
    if bad:
        raise Fail("; ".join(bad))
    return "; ".join(res)


@timeout(30)
def test_policies_activity_splice_out():
    """A Python server writing with os.splice() from a pipe (a line every
    0.2 s; splice is not a call the shim interposes) to a silent client:
    kept 3.2 s under kernel, both and unset (the kernel saw the data leave).
    Under calls it is cut at 1 s: reading of the issue, calls "counts only
    what the program itself read or wrote" through the calls the shim
    interposes; kernel mode exists for programs that move data through
    calls the shim cannot see, naming splice; the slow-reader rule
    (bytes_acked) covers the program's own pending write, and there is none
    here. Fails if kernel mode ignored TCP_INFO (cut), or calls mode counted
    the kernel's send times or acknowledgements (kept)."""
    res, bad = _modes(["--stream-on", "accept", "--count", "20", "--via", "splice"], False,
                      ("calls",), "program writes with splice()")
    if bad:
        raise Fail("; ".join(bad))
    return "; ".join(res)


@timeout(30)
def test_policies_activity_splice_in():
    """A Python server reading with os.splice() into a pipe, a client
    sending a byte every 0.2 s: kept 3.2 s under kernel, both and unset (the
    kernel saw the data arrive); cut at 1 s under calls: "calls counts only
    what the program itself read or wrote" through the calls the shim sees,
    and nothing outgoing was acknowledged. Fails if kernel mode ignored
    TCP_INFO, or calls mode used the kernel's receive times."""
    res, bad = _modes(["--read-via", "splice"], True, ("calls",), "program reads with splice()")
    if bad:
        raise Fail("; ".join(bad))
    return "; ".join(res)


@timeout(30)
def test_policies_activity_kernel_late_read():
    """A byte arrives, the program reads it 0.8 s later (IDLE_TIMEOUT=1s).
    ACTIVITY=kernel counts only what TCP_INFO saw (the arrival): cut 1 s
    after the byte was sent, i.e. 0.2 s after the read. ACTIVITY=both counts
    the read too: cut 1 s after the read. Fails if kernel mode counted the
    program's read, or both mode ignored it."""
    argv = script(LATE_READER, "late_reader.py")
    runs = []
    for mode in ("kernel", "both"):
        p = spawn(argv, env={"TCPKEEP_IDLE_TIMEOUT": "1s", "TCPKEEP_ACTIVITY": mode})
        port = ready(p)
        s, _ = connect(port)
        runs.append([mode, p, s, None])
    for r in runs:
        r[3] = time.monotonic()
        r[2].sendall(b"x")
    res = []
    for mode, p, s, t_send in runs:
        read_at = float(expect_line(p, "read ", 5).split()[1])
        end = expect_line(p, "end ", 4).split()
        check(end[2] == "eof", "%s: the program's connection ended with %r, not EOF"
              % (mode, end[2:]))
        t_end = float(end[1])
        if mode == "kernel":
            res.append("kernel: " + cut_window(t_end - t_send, LIMIT, "cut", "the byte was sent",
                                               early=0.01)
                       + " (%.3f s after the program's read)" % (t_end - read_at))
        else:
            res.append("both: " + cut_window(t_end - read_at, LIMIT, "cut",
                                             "the program's late read", early=0.01))
        s.close()
        finish(p)
    return "; ".join(res)


# --------------------------------------------------------------------------
# 10,000 connections due at once

MANY = 10000
MANY_LIMIT = 2.0     # longer than accepting 10,000 connections takes on a loaded machine


def _many(mode):
    """MANY_SERVER under IDLE_TIMEOUT=2s (and ACTIVITY=mode), MANY_CLIENT
    unshimmed: 10,000 accepted connections, one byte written to each in one
    loop so all are due together; every one must be cut (the program sees
    IN|RDHUP) no earlier than the limit after its write, no later than the
    limit + CUT_SLACK after (the contract: + 0.25 s; the count beyond that
    is reported)."""
    server = compile_c(MANY_SERVER, "many_server")
    client = compile_c(MANY_CLIENT, "many_client")
    log = os.path.join(tmpdir(), "many.log")
    env = {"TCPKEEP_IDLE_TIMEOUT": "%dms" % (MANY_LIMIT * 1000), "TCPKEEP_LOG": log}
    if mode:
        env["TCPKEEP_ACTIVITY"] = mode
    srv = spawn([server, str(MANY), str(MANY_LIMIT)], env=env)
    cli = None
    try:
        port = ready(srv)
        cli = spawn([client, str(MANY), str(port)], shim=False)
        conn = expect_line(cli, "", 30)
        check(conn.startswith("connected"), "the client: %r" % conn)
        head = lines_until(srv, "accepted", 30)
        errs = [ln for ln in head if ln.startswith("error")]
        check(not errs, "the program: %r" % errs)
        lines = lines_until(srv, "done", MANY_LIMIT + 4 + 30)
    finally:
        if cli is not None:
            finish(cli)
        finish(srv)
    rows = [ln.split() for ln in lines if ln.startswith("c ")]
    check(len(rows) == MANY, "the program reported %d connections, expected %d"
          % (len(rows), MANY))
    name = "ACTIVITY=%s" % (mode or "unset")
    tacc = [float(r[2]) for r in rows]
    tb = [float(r[3]) for r in rows]
    ta = [float(r[4]) for r in rows]
    tc = [float(r[5]) for r in rows]
    werr = [int(r[6]) for r in rows]
    pre = [i for i in range(MANY) if werr[i]]
    if pre:
        ages = sorted(tb[i] - tacc[i] for i in pre)
        if ages[0] < MANY_LIMIT - 0.01:
            raise Fail("%s: %d of %d connections were already cut when the program wrote to "
                       "them (%s), %.3f..%.3f s after their accept (limit %g s): cut EARLY"
                       % (name, len(pre), MANY, errno.errorcode.get(werr[pre[0]], werr[pre[0]]),
                          ages[0], ages[-1], MANY_LIMIT))
        raise Fail("%s: test set-up: accepting the %d connections took %.3f s, longer than the "
                   "limit %g s, so %d were (rightly) cut before the write that was to make them "
                   "all due at once" % (name, MANY, max(tacc) - min(tacc), MANY_LIMIT, len(pre)))
    uncut = [i for i in range(MANY) if tc[i] == 0]
    if uncut:
        raise Fail("%s: %d of %d connections not cut within %g s + 4 s of the write"
                   % (name, len(uncut), MANY, MANY_LIMIT))
    lo = [tc[i] - ta[i] for i in range(MANY)]    # the shortest possible idle time
    hi = sorted(tc[i] - tb[i] for i in range(MANY))   # the longest
    early = [x for x in lo if x < MANY_LIMIT - 0.01]
    if early:
        raise Fail("%s: %d of %d connections cut EARLY: %.3f s after the write (limit %g s)"
                   % (name, len(early), MANY, min(early), MANY_LIMIT))
    over = sum(1 for x in hi if x > MANY_LIMIT + 0.25)
    if hi[-1] > MANY_LIMIT + CUT_SLACK:
        raise Fail("%s: %d of %d connections cut later than the limit + %g s; the last %.3f s "
                   "after its write (limit %g s; %d later than limit + 0.25 s)"
                   % (name, sum(1 for x in hi if x > MANY_LIMIT + CUT_SLACK), MANY,
                      CUT_SLACK, hi[-1], MANY_LIMIT, over))
    cuts, other = read_log(log)
    check(not cuts and not other, "%s: the shim logged at warn: %r" % (name, (cuts + other)[:4]))
    return ("%s: %d connections (accepted in %.2f s), all due within %.3f s of each other, all "
            "cut %.3f..%.3f s after their write (limit %g s, median %.3f; %d beyond limit + "
            "0.25 s)" % (name, MANY, max(tacc) - min(tacc), max(ta) - min(tb), min(lo), hi[-1],
                         MANY_LIMIT, hi[MANY // 2], over))


@timeout(90)
def test_policies_10k_calls():
    """10,000 idle connections due at once, ACTIVITY=calls: each cut in
    [limit, limit + 0.25 s (+ test slack)]."""
    return _many("calls")


@timeout(90)
def test_policies_10k_kernel():
    """The same under ACTIVITY=kernel (a TCP_INFO per connection at the cut)."""
    return _many("kernel")


@timeout(90)
def test_policies_10k_both():
    """The same under ACTIVITY=both (the default)."""
    return _many("both")


# --------------------------------------------------------------------------
# dry run

@timeout(40)
def test_policies_dry_run():
    """Python echo servers under IDLE_TIMEOUT=1s, FIRST_BYTE_TIMEOUT=500ms,
    DRY_RUN=on (and =1), default log (stderr, warn): a silent client, one
    that sent a byte (echoed), one busy every 0.2 s, for 2.6 s: nothing is
    cut (the silent client is still answered); stderr holds exactly one
    warn line per connection and reason, with the idle time: the silent
    client's first-byte and idle (two lines), the other's idle; none for the
    busy one; the stats file counts them as would_cut. Without the dry run
    the two would be cut; a line per check instead of per reason would
    repeat."""
    d = tmpdir()
    runs = []
    for value in ("on", "1"):
        stats = os.path.join(d, "stats.%s.json" % value)
        env = {"TCPKEEP_IDLE_TIMEOUT": "1s", "TCPKEEP_FIRST_BYTE_TIMEOUT": "500ms",
               "TCPKEEP_DRY_RUN": value, "TCPKEEP_STATS": stats}
        p = spawn(script(SERVER, "dry_%s.py" % value) + ["--echo"], env=env)
        port = ready(p)
        peers = [Peer(port, name="DRY_RUN=%s silent client" % value),
                 Peer(port, first=b"x", name="DRY_RUN=%s client that sent a byte" % value),
                 Peer(port, active=True, name="DRY_RUN=%s busy client" % value)]
        runs.append((value, p, stats, peers))
    drive([c for r in runs for c in r[3]], 2.6)
    # Every instance at once from here: a client left waiting while another
    # instance is checked would pass the idle limit and add a line.
    for value, p, stats, peers in runs:
        for c in peers:
            expect_kept(c, c.name + " (dry run)")
    for value, p, stats, (silent, one, busy) in runs:
        silent.sock.sendall(b"ping\n")
    for value, p, stats, (silent, one, busy) in runs:
        silent.sock.settimeout(3)
        try:
            got = silent.sock.recv(16)
        except OSError as e:
            raise Fail("%s: no answer after the dry run window: %s" % (silent.name, e))
        check(got == b"ping\n", "%s: answered %r to ping" % (silent.name, got))
    for value, p, stats, peers in runs:
        p.stdin.close()      # the server exits normally: the stats file is written at exit
        p.stdin = None       # (communicate() in finish() would flush the closed pipe)
    res = []
    for value, p, stats, (silent, one, busy) in runs:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            pass
        _, err = finish(p)
        cuts, other = parse_log(err)
        dry = "would be shut down (dry run)"
        logged = check_log(cuts, other,
                           [(silent.port, "first-byte", dry) + log_bounds(0.5),
                            (silent.port, "idle", dry) + log_bounds(LIMIT),
                            (one.port, "idle", dry) + log_bounds(LIMIT)],
                           "DRY_RUN=%s stderr" % value, pid=p.pid)
        try:
            with open(stats) as f:
                st = json.load(f)
        except (OSError, ValueError) as e:
            raise Fail("DRY_RUN=%s: the lines are right (%s), but the stats file %s: %s"
                       % (value, logged, stats, e))
        want = {"idle": 2, "first_byte": 1}
        wc = st.get("would_cut", {})
        cut_counts = st.get("cuts", {})
        if any(wc.get(k) != v for k, v in want.items()) or any(cut_counts.values()):
            raise Fail("DRY_RUN=%s: stats would_cut=%r cuts=%r, expected would_cut idle 2, "
                       "first_byte 1 and no cut" % (value, wc, cut_counts))
        for c in (silent, one, busy):
            c.close()
        res.append("DRY_RUN=%s: 3 clients kept 2.6 s, the silent one still answered; stderr: %s; "
                   "stats would_cut idle 2, first_byte 1" % (value, logged))
    return "; ".join(res)


REFUSED_SERVER = r"""
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(4)
print("port", s.getsockname()[1], flush=True)
c, _ = s.accept()
c.settimeout(10)
try:
    data = c.recv(10)
    print("read", "eof" if not data else repr(data), flush=True)
except OSError as e:
    print("read error", e.errno, flush=True)
"""


@timeout(40)
def test_policies_action_reset_refused():
    """ACTION=reset where the kernel refuses connect(AF_UNSPEC) with EBUSY
    (this kernel never does; strace injects the error into every connect of
    the server, the watchdog's included): the shim falls back to shutdown,
    says so at warn, and the client sees end-of-file, not a reset. Without
    the fallback the connection would stay open (no cut) or be reset."""
    need("strace")
    srv = spawn(["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=connect",
                 "-e", "inject=connect:error=EBUSY", "-E", "LD_PRELOAD=" + lib(),
                 *script(REFUSED_SERVER, "refused.py")], shim=False,
                env=dict(TCPKEEP_ACTION="reset", TCPKEEP_IDLE_TIMEOUT="1s",
                         TCPKEEP_LOG_LEVEL="info"))
    port = int(read_line(srv.stdout, 20, "the server's port").split()[1])
    client, t0 = connect(port)
    when, _, how = wait_eof(client, 1 + CUT_SLACK + 5)
    check(when is not None, "not cut within %.1f s" % (time.monotonic() - t0))
    check(how == "eof", "the client saw %s, expected end-of-file from the fallback" % how)
    out, err = srv.communicate(timeout=10)
    warn = [l for l in err.splitlines() if "the reset was refused" in l]
    check(len(warn) == 1 and "Device or resource busy" in warn[0]
          and warn[0].endswith("; shut down instead"),
          "expected one fallback warning, stderr: %r" % err[-600:])
    return "reset refused (EBUSY injected): shut down instead, client saw end-of-file %.3f s " \
           "after connecting (limit 1 s); %s" % (when - t0, warn[0])
