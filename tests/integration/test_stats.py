"""TCPKEEP_STATS: the JSON file's keys and counts after known traffic, dry
runs, the periodic and atomic writes, %p with a forking server, the write
at exit, what a SIGKILL leaves, option errors.

Without the stats file every test here fails (no file); each also checks
what only its part provides: a new inode per version (temp file + rename,
not a rewrite in place), a count from less than 2 s before exit (the exit
write, not a periodic one), one file per process (%p), exact counts per
reason. All fail on v1 (f760982)."""
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

from helpers import (CUT_SLACK, Conn, Fail, check, connect, cut_window, drive, finish, lib,
                     need, run, script, spawn, timeout, tmpdir, wait_eof, wait_listen, which)
from realprog import stop
from rules_util import (CUT_LINE, DRY_LINE, REASON_KEYS, Hub, Watch, free_ports, parse_lines,
                        read_stats, read_text, updated_epoch, wait_stats, wait_until,
                        zero_reasons)

# The file is rewritten every 2 s: a change shows within this long.
PERIOD_WAIT = 2.0 + CUT_SLACK + 0.5


def v4(port, **kw):
    return dict(kw, host="127.0.0.1", port=port)


def _expect(obj, want, what):
    """Fail unless every key of want has that value in obj (nested dicts
    compared whole)."""
    bad = {k: (obj.get(k), v) for k, v in want.items() if obj.get(k) != v}
    if bad:
        raise Fail("%s: %s (got, expected); the file: %s"
                   % (what, "; ".join("%s %s != %s" % (k, g, w) for k, (g, w) in bad.items()),
                      json.dumps(obj)))


@timeout(40)
def test_stats_counts_by_reason():
    """A server under the shim (first-byte 1 s, idle 1.5 s, half-closed
    0.5 s, lifetime 2.5 s) and four clients, one per policy: a silent one, one
    that sends a byte then nothing, one active every 0.3 s, one that sends a
    byte and half-closes. Each is cut on time for its own reason, and the
    stats file then says: pid, tracked_total 4, tracked_now 1 (the server
    closes the three it saw end and holds the half-closed one), cuts 1 per
    reason used and 0 for read/write-idle, would_cut all 0, keepalive_set 6
    (the 4 connections and the 2 listeners), option_errors 0."""
    d = tmpdir()
    main, hold = free_ports(2)
    path = os.path.join(d, "stats.json")
    log = os.path.join(d, "log")
    hub = Hub({"listen": [v4(main), v4(hold, hold=True)]},
              {"TCPKEEP_STATS": path, "TCPKEEP_FIRST_BYTE_TIMEOUT": "1s",
               "TCPKEEP_IDLE_TIMEOUT": "1500ms", "TCPKEEP_HALF_CLOSED_TIMEOUT": "500ms",
               "TCPKEEP_MAX_LIFETIME": "2500ms", "TCPKEEP_LOG": log, "TCPKEEP_LOG_LEVEL": "info"},
              stderr_path=os.path.join(d, "err"))
    sa, ta = connect(main)
    sb, _ = connect(main)
    sb.sendall(b"b")
    tb = time.monotonic()
    sc, tc = connect(main)
    sd, _ = connect(hold)
    sd.sendall(b"d")
    sd.shutdown(socket.SHUT_WR)
    td = time.monotonic()
    conns = {"silent": Conn(sa, ta), "one byte": Conn(sb, tb), "active": Conn(sc, tc, True),
             "half-closed": Conn(sd, td)}
    drive(list(conns.values()), 2.5 + CUT_SLACK + 0.5, period=0.3)
    problems = []
    for name, lim in (("silent", 1.0), ("one byte", 1.5), ("active", 2.5), ("half-closed", 0.5)):
        c = conns[name]
        try:
            cut_window(c.ended and c.ended - c.t0, lim, "%s client cut" % name)
        except Fail as e:
            problems.append(str(e))
    if problems:
        # Tell a late cut from a server that no longer runs: can it still accept?
        probe, _ = connect(main)
        try:
            hub.conn("in", main, probe.getsockname()[1], limit=1.5)
        except Fail:
            problems.append("and the server no longer accepts a connection (its accept() did "
                            "not return within 1.5 s): hung inside the shim?")
        raise Fail("; ".join(problems))
    want = {"pid": hub.pid, "tracked_total": 4, "tracked_now": 1, "keepalive_set": 6,
            "option_errors": 0, "would_cut": zero_reasons(),
            "cuts": dict(zero_reasons(), first_byte=1, idle=1, lifetime=1, half_closed=1)}
    try:
        obj = wait_stats(path, lambda o: all(o.get(k) == v for k, v in want.items()),
                         PERIOD_WAIT, "the counts after the four cuts")
    except Fail:
        obj = read_stats(path)
        if obj is None:
            raise Fail("no stats file at %s %.1f s after the cuts" % (path, PERIOD_WAIT))
        _expect(obj, want, "the counts after the four cuts")
    reasons = sorted(x["reason"] for x in parse_lines(read_text(log), CUT_LINE))
    check(reasons == sorted(["first-byte", "idle", "lifetime", "half-closed"]),
          "the log's cut reasons: %r" % reasons)
    return "cuts on time and counted: %s; tracked_total 4, tracked_now 1, keepalive_set 6" % (
        json.dumps(obj["cuts"]))


@timeout(40)
def test_stats_dry_run_would_cut():
    """TCPKEEP_DRY_RUN=on, first-byte 0.5 s, idle 1 s: two silent clients are
    not cut; stderr has exactly one warn line per connection and reason
    (`... first-byte for S.SSS s, would be shut down (dry run)`, then idle),
    none for an active client, and none repeated 2 s later; the stats count
    would_cut first_byte 2, idle 2, and no cut."""
    d = tmpdir()
    port = free_ports(1)[0]
    path = os.path.join(d, "stats.json")
    err = os.path.join(d, "err")
    hub = Hub({"listen": [v4(port)]},
              {"TCPKEEP_STATS": path, "TCPKEEP_DRY_RUN": "on", "TCPKEEP_FIRST_BYTE_TIMEOUT": "500ms",
               "TCPKEEP_IDLE_TIMEOUT": "1s"}, stderr_path=err)
    s1, t1 = connect(port)
    s2, t2 = connect(port)
    s3, t3 = connect(port)
    conns = [Conn(s1, t1), Conn(s2, t2), Conn(s3, t3, True)]
    drive(conns, 3.5, period=0.3)
    problems = []
    for i, c in enumerate(conns):
        if c.ended is not None:
            problems.append("client %d ended (%s) %.3f s after connecting: a dry run cuts nothing"
                            % (i + 1, c.how, c.ended - c.t0))
    want = {"cuts": zero_reasons(), "would_cut": dict(zero_reasons(), first_byte=2, idle=2),
            "tracked_now": 3, "tracked_total": 3}
    try:
        obj = wait_stats(path, lambda o: all(o.get(k) == v for k, v in want.items()),
                         PERIOD_WAIT, "the dry run's counts")
    except Fail as e:
        problems.append(str(e))
        obj = None
    text = read_text(err)
    lines = parse_lines(text, DRY_LINE)
    got = sorted((x["pport"], x["reason"]) for x in lines)
    ports = [c.sock.getsockname()[1] for c in conns]
    want_lines = sorted([(ports[0], "first-byte"), (ports[0], "idle"),
                         (ports[1], "first-byte"), (ports[1], "idle")])
    if got != want_lines:
        problems.append("dry-run lines for (client port, reason) %s, expected %s; stderr %r"
                        % (got, want_lines, text[-800:]))
    others = [ln for ln in text.splitlines() if not DRY_LINE.match(ln)]
    if others:
        problems.append("other stderr lines: %r" % others[:3])
    for x in lines:
        lim = 0.5 if x["reason"] == "first-byte" else 1.0
        if not lim <= x["secs"] <= lim + CUT_SLACK:
            problems.append("dry-run line says %.3f s, expected %g..%g: %r"
                            % (x["secs"], lim, lim + CUT_SLACK, x["line"]))
        if x["pid"] != hub.pid or x["action"] != "shut down":
            problems.append("dry-run line: %r" % x["line"])
    if problems:
        raise Fail("; ".join(problems))
    return "nothing cut; 4 dry-run lines, e.g. %r; would_cut %s" % (
        lines[0]["line"], json.dumps(obj["would_cut"]))


@timeout(40)
def test_stats_periodic_atomic_listeners():
    """A server with three listeners (IPv4, IPv6, IPv4) and no connection:
    the file says tracked_now 0 and tracked_total 0 (listeners not counted).
    A client connects: within 2 s + slack the file shows it (1/1); a second
    client connects and the first leaves: 1 now, 2 in all. Meanwhile a
    reader polls the file every ~2 ms: hundreds of reads, never a missing
    file or an invalid JSON, every new version a new inode (temp file +
    rename, not rewritten in place), `updated` changing at most 2 s + slack
    apart and matching the wall clock."""
    d = tmpdir()
    p1, p2, p3 = free_ports(3)
    path = os.path.join(d, "stats.json")
    hub = Hub({"listen": [v4(p1), dict(host="::1", port=p2), v4(p3)]},
              {"TCPKEEP_STATS": path}, stderr_path=os.path.join(d, "err"))
    reads = []       # (monotonic, inode or None, parsed or error)
    stop_reader = threading.Event()

    def reader():
        end = time.monotonic() + 20
        while not stop_reader.is_set() and time.monotonic() < end:
            now = time.monotonic()
            try:
                with open(path) as f:
                    ino = os.fstat(f.fileno()).st_ino
                    text = f.read()
            except FileNotFoundError:
                reads.append((now, None, "missing", None))
                time.sleep(0.002)
                continue
            try:
                reads.append((now, ino, json.loads(text), time.time()))
            except ValueError:
                reads.append((now, ino, "invalid: %r" % text[:200], time.time()))
            time.sleep(0.002)
    th = threading.Thread(target=reader, daemon=True)
    th.start()
    try:
        first = wait_stats(path, lambda o: True, PERIOD_WAIT, "the first file")
        t_first = time.monotonic()
        _expect(first, {"pid": hub.pid, "tracked_now": 0, "tracked_total": 0},
                "three listeners, no connection")
        s1, tc1 = connect(p1)
        wait_stats(path, lambda o: o["tracked_now"] == 1 and o["tracked_total"] == 1,
                   PERIOD_WAIT, "one connection (tracked_now 1, tracked_total 1)")
        lag1 = time.monotonic() - tc1
        s2, tc2 = connect(p2, host="::1")
        s1.close()
        wait_stats(path, lambda o: o["tracked_now"] == 1 and o["tracked_total"] == 2,
                   PERIOD_WAIT, "second connection in, first one gone (1 now, 2 in all)")
        lag2 = time.monotonic() - tc2
        time.sleep(max(0.0, 6.5 - (time.monotonic() - t_first)))
    finally:
        stop_reader.set()
        th.join(5)
    problems = []
    seen = [r for r in reads if r[1] is not None]
    start = reads.index(seen[0]) if seen else len(reads)
    missing = sum(1 for r in reads[start:] if r[1] is None)
    invalid = [r[2] for r in reads if isinstance(r[2], str) and r[2].startswith("invalid")]
    if len(reads) < 300:
        problems.append("only %d reads of the file: the reader was starved" % len(reads))
    if missing:
        problems.append("the file was missing in %d of %d reads after it first appeared: not "
                        "replaced by a rename" % (missing, len(reads) - start))
    if invalid:
        problems.append("%d reads saw an invalid file, e.g. %s" % (len(invalid), invalid[0]))
    # Versions: each distinct inode in the order seen, with its first sighting.
    versions = []
    for r in seen:
        if not versions or versions[-1][1] != r[1]:
            versions.append((r[0], r[1], r[2], r[3]))
    inodes = [v[1] for v in versions]
    if len(set(inodes)) != len(inodes):
        problems.append("an inode came back (%s): the file is not replaced by a rename each "
                        "time" % inodes)
    gaps = [b[0] - a[0] for a, b in zip(versions, versions[1:])]
    if len(versions) < 3:
        problems.append("only %d versions of the file over %.1f s" % (
            len(versions), seen[-1][0] - seen[0][0] if seen else 0))
    if gaps and max(gaps) > 2.0 + CUT_SLACK:
        problems.append("the file was not rewritten for %.2f s (every 2 s expected); gaps %s"
                        % (max(gaps), ["%.2f" % g for g in gaps]))
    updates = []
    for v in versions:
        obj, wall = v[2], v[3]
        if not isinstance(obj, dict) or "updated" not in obj:
            continue
        skew = wall - updated_epoch(obj)
        if not -1.5 <= skew <= 2.0 + CUT_SLACK + 1.0:
            problems.append("updated %r is %.1f s from the wall clock at the read"
                            % (obj["updated"], skew))
        updates.append(obj["updated"])
    if len(set(updates)) < 3:
        problems.append("`updated` took only the values %s over %.1f s"
                        % (sorted(set(updates)), seen[-1][0] - seen[0][0] if seen else 0))
    if problems:
        raise Fail("; ".join(problems))
    return ("%d reads, all valid; %d versions, each a new inode, %.2f..%.2f s apart; listeners "
            "not counted; new connections shown after %.2f and %.2f s"
            % (len(reads), len(versions), min(gaps), max(gaps), lag1, lag2))


EXITING = r"""
import socket, sys, time
ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(8)
time.sleep(0.5)
pairs = []
for i in range(3):
    c = socket.socket()
    c.connect(ls.getsockname())
    pairs.append((c, ls.accept()[0]))
time.sleep(0.3)
c = socket.socket()                      # one more pair, just before exit
c.connect(ls.getsockname())
pairs.append((c, ls.accept()[0]))
sys.exit(0)
"""


@timeout(40)
def test_stats_written_at_exit():
    """A program that makes its last connection just before exit() (under
    1 s after start, so no periodic write can have seen it): its file says
    tracked_total 8 (4 made, 4 accepted). And nc as a client, which exits
    when its peer closes: its file says tracked_total 1 with its pid."""
    d = tmpdir()
    path = os.path.join(d, "py.json")
    t0 = time.monotonic()
    rc, out, err = run(script(EXITING), env={"TCPKEEP_STATS": path}, limit=10)
    took = time.monotonic() - t0
    check(rc == 0 and not err.strip(), "the program failed (%s): %r" % (rc, err[-400:]))
    obj = read_stats(path)
    check(obj is not None, "no stats file after the program exited (%.2f s run)" % took)
    _expect(obj, {"tracked_total": 8}, "after exit")
    msg = "python (%.2f s run): tracked_total 8" % took
    if which("nc"):
        port = free_ports(1)[0]
        ls = socket.socket()
        ls.bind(("127.0.0.1", port))
        ls.listen(1)
        ls.settimeout(5)
        npath = os.path.join(d, "nc.json")
        nc = spawn(["nc", "127.0.0.1", str(port)], env={"TCPKEEP_STATS": npath},
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        a, _ = ls.accept()
        a.close()
        try:
            nc.wait(5)
        except subprocess.TimeoutExpired:
            raise Fail("nc did not exit when its peer closed")
        obj = read_stats(npath)
        check(obj is not None, "no stats file after nc exited")
        _expect(obj, {"pid": nc.pid, "tracked_total": 1}, "nc's file after exit")
        msg += "; nc: pid %d, tracked_total 1" % nc.pid
    return msg


@timeout(40)
def test_stats_pid_forking_server():
    """socat TCP-LISTEN,fork under the shim with TCPKEEP_STATS=DIR/s.%p.json
    (idle 1 s), two idle clients: each is cut on time by its child, and
    there are three files, each named by the pid inside it: the parent's
    (tracked_total 2) and one per child (cuts.idle 1 each)."""
    need("socat")
    d = tmpdir()
    port = free_ports(1)[0]
    tmpl = os.path.join(d, "s.%p.json")
    srv = spawn(["socat", "TCP-LISTEN:%d,bind=127.0.0.1,reuseaddr,fork" % port, "PIPE"],
                env={"TCPKEEP_STATS": tmpl, "TCPKEEP_IDLE_TIMEOUT": "1s"},
                stdout=subprocess.DEVNULL)
    wait_listen(port, proc=srv)
    socks = [connect(port) for _ in range(2)]
    watches = [Watch(s, 3.0) for s, _ in socks]
    for (s, t0), w in zip(socks, watches):
        end, how = w.join(4)
        cut_window(end and end - t0, 1.0, "idle client of a socat child cut")

    def files():
        out = {}
        for name in os.listdir(d):
            m = re.fullmatch(r"s\.(\d+)\.json", name)
            if m:
                out[int(m.group(1))] = read_stats(os.path.join(d, name))
        return out

    def complete():
        f = files()
        parent = f.get(srv.pid)
        kids = {pid: o for pid, o in f.items() if pid != srv.pid}
        return (parent and parent["tracked_total"] == 2 and len(kids) == 2 and
                all(o["cuts"]["idle"] == 1 for o in kids.values())) and f
    got = wait_until(complete, PERIOD_WAIT, 0.1)
    f = files()
    others = sorted(n for n in os.listdir(d) if not re.fullmatch(r"s\.\d+\.json", n))
    finish(srv)
    if not got:
        raise Fail("expected the parent's file (pid %d, tracked_total 2) and two children's "
                   "(cuts.idle 1 each); files: %s"
                   % (srv.pid, {pid: dict(pid=o["pid"], tracked_total=o["tracked_total"],
                                          cuts=o["cuts"]) for pid, o in f.items()}))
    for pid, o in got.items():
        check(o["pid"] == pid, "file s.%d.json holds pid %d" % (pid, o["pid"]))
    check(not others, "other files in the directory: %s (%%p not replaced? temp files left?)"
          % others)
    kids = sorted(pid for pid in got if pid != srv.pid)
    return "parent %d: tracked_total 2; children %s: cuts.idle 1 each" % (srv.pid, kids)


# glibc's own handlers for its internal signals 32 and 33 (SIGCANCEL,
# SIGSETXID), installed in any process that starts a thread: not the shim's.
GLIBC_INTERNAL = (1 << 31) | (1 << 32)


def _sigcgt(pid):
    """The mask of signals with a handler in pid, glibc's internal ones left out."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("SigCgt:"):
                return int(line.split()[1], 16) & ~GLIBC_INTERNAL
    return None


@timeout(40)
def test_stats_sigkill_leaves_last_file():
    """nc -l under the shim with TCPKEEP_STATS and a client: the shim catches
    no signal nc does not (SigCgt as without the shim); after SIGKILL the
    last periodic file is there, valid, with nc's pid and its connection."""
    need("nc")
    d = tmpdir()
    path = os.path.join(d, "stats.json")
    masks = {}
    for shim in (False, True):
        port = free_ports(1)[0]
        srv = spawn(["nc", "-l", "127.0.0.1", str(port)], shim=shim,
                    env={"TCPKEEP_STATS": path} if shim else {}, stdout=subprocess.DEVNULL)
        wait_listen(port, proc=srv)
        s, _ = connect(port)
        if shim:
            obj = wait_stats(path, lambda o: o["tracked_total"] == 1, PERIOD_WAIT,
                             "nc's connection")
        else:
            time.sleep(0.2)
        masks[shim] = _sigcgt(srv.pid)
        if shim:
            os.kill(srv.pid, signal.SIGKILL)
            srv.wait(5)
            t_kill = time.time()
        finish(srv)
        s.close()
    check(masks[True] == masks[False], "signals caught by nc: %#x with the shim, %#x without: "
          "the shim installed a handler" % (masks[True], masks[False]))
    obj = read_stats(path)
    check(obj is not None, "no stats file after SIGKILL")
    _expect(obj, {"pid": srv.pid, "tracked_total": 1, "tracked_now": 1}, "after SIGKILL")
    age = t_kill - updated_epoch(obj)
    check(age <= 2.0 + CUT_SLACK + 1.0, "the file left behind was written %.1f s before the kill"
          % age)
    return "SigCgt %#x with and without the shim; after SIGKILL: %s" % (
        masks[True], json.dumps({k: obj[k] for k in ("pid", "tracked_now", "tracked_total",
                                                      "updated")}))


@timeout(40)
def test_stats_option_errors():
    """Every setsockopt made to fail (strace fault injection, EPERM) under a
    server that calls none itself, TCPKEEP_PORTS=<its port> so that the
    listener (at listen) and each accepted connection get SO_KEEPALIVE and
    TCP_USER_TIMEOUT: after two connections option_errors is 6 (2 + 2 x 2),
    exactly the failures strace saw, and keepalive_set 0; the server still
    serves."""
    need("strace")
    d = tmpdir()
    port = free_ports(1)[0]
    path = os.path.join(d, "stats.json")
    env = {"LD_PRELOAD": lib(), "TCPKEEP_STATS": path, "TCPKEEP_PORTS": str(port),
           "TCPKEEP_USER_TIMEOUT": "5s"}
    prefix = ["strace", "-f", "-qq", "-o", os.path.join(d, "trace"), "-e", "trace=setsockopt",
              "-e", "inject=setsockopt:error=EPERM"]
    for k, v in env.items():
        prefix += ["-E", "%s=%s" % (k, v)]
    hub = Hub({"listen": [v4(port)], "run_for": 20}, {}, shim=False, argv_prefix=prefix,
              stderr_path=os.path.join(d, "err"))
    try:
        return _option_errors(hub, port, path, d)
    finally:
        hub.kill_all()   # strace's tracee would outlive a SIGKILLed strace


def _option_errors(hub, port, path, d):
    socks = [connect(port)[0] for _ in range(2)]
    for s in socks:
        info = hub.conn("in", port, s.getsockname()[1])
        check(info["opts"]["keepalive"] == 0, "SO_KEEPALIVE is on though every setsockopt "
              "failed: is strace injecting? %s" % info["opts"])
    obj = wait_stats(path, lambda o: o["option_errors"] >= 6, PERIOD_WAIT,
                     "option_errors for the failed setsockopt calls")
    with open(os.path.join(d, "trace")) as f:
        failed = sum(1 for ln in f if "setsockopt(" in ln and "EPERM" in ln)
    check(failed == 6, "strace saw %d failed setsockopt calls, expected 6 (listener and two "
          "connections, 2 options each)" % failed)
    _expect(obj, {"option_errors": 6, "keepalive_set": 0, "tracked_now": 2},
            "after the listener and 2 connections whose 2 options each failed (strace saw "
            "%d failed calls)" % failed)
    return "option_errors 6 (strace: %d setsockopt failed with EPERM), keepalive_set 0" % failed
