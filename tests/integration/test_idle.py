"""The idle cut: legacy programs (nc, socat) under the shim, plain peers."""
import os
import re
import socket
import subprocess
import time

from helpers import (Active, Fail, check, cut_window, connect, finish, free_port, need,
                     read_until_end, spawn, tmpdir, wait_eof, wait_listen)


def _nc_server(port, limit):
    p = spawn(["nc", "-l", "127.0.0.1", str(port)], env={"TCPKEEP_IDLE_TIMEOUT": limit},
              stdout=subprocess.DEVNULL)
    wait_listen(port, proc=p)
    return p


def test_idle_client_cut():
    """nc -l under the shim (limit 1s); an idle plain client sees EOF on time."""
    port = free_port()
    srv = _nc_server(port, "1s")
    s, t0 = connect(port)
    end, _, how = wait_eof(s, 3.0)
    msg = cut_window(end and end - t0, 1.0, "idle client cut")
    s.close()
    finish(srv)
    return "%s, seen as %s by the client" % (msg, how)


def test_idle_nc_client_cut():
    """nc (client) under the shim (limit 1s) to a plain server: the server
    sees EOF on time."""
    port = free_port()
    ls = socket.socket()
    ls.bind(("127.0.0.1", port))
    ls.listen(4)
    ls.settimeout(5)
    cli = spawn(["nc", "127.0.0.1", str(port)], env={"TCPKEEP_IDLE_TIMEOUT": "1s"},
                stdout=subprocess.DEVNULL)
    try:
        conn, _ = ls.accept()
    except socket.timeout:
        _, err = finish(cli)
        raise Fail("nc did not connect: %r" % err)
    t0 = time.monotonic()
    end, _, how = wait_eof(conn, 3.0)
    msg = cut_window(end and end - t0, 1.0, "nc client's connection cut",
                     "the server accepted it", early=0.005)
    conn.close()
    ls.close()
    finish(cli)
    return "%s, seen as %s by the server" % (msg, how)


def test_active_client_kept():
    """A client sending a byte every 0.3 s for 3 s (limit 1s) is never cut;
    once it stops it is cut about 1 s later."""
    port = free_port()
    srv = _nc_server(port, "1s")
    s, t0 = connect(port)
    a = Active(s, period=0.3)
    if not a.run(3.0):
        raise Fail("active client cut (%s) after %.3f s of activity, %.3f s after its last "
                   "byte" % (a.how, a.ended - t0, a.ended - a.last_send))
    end, _, how = wait_eof(s, 3.0)
    msg = cut_window(end and end - a.last_send, 1.0, "cut", "its last byte")
    s.close()
    finish(srv)
    return "kept for 3 s of activity; %s" % msg


def test_ms_limit():
    """TCPKEEP_IDLE_TIMEOUT=300ms: an idle client is cut between 0.3 and 0.8 s."""
    port = free_port()
    srv = _nc_server(port, "300ms")
    s, t0 = connect(port)
    end, _, _ = wait_eof(s, 2.0)
    msg = cut_window(end and end - t0, 0.3, "idle client cut")
    s.close()
    finish(srv)
    return msg


def test_server_writes_keep_alive():
    """Activity in the other direction counts: socat under the shim writes a
    byte every 0.3 s to a client that never sends; kept for 3 s, then cut
    about 1 s after the last byte."""
    need("socat")
    port = free_port()
    loop = "i=0; while [ $i -lt 10 ]; do printf x; sleep 0.3; i=$((i+1)); done; sleep 20"
    srv = spawn(["socat", "-U", "TCP-LISTEN:%d,bind=127.0.0.1,reuseaddr" % port,
                 "SYSTEM:%s" % loop], env={"TCPKEEP_IDLE_TIMEOUT": "1s"},
                stdout=subprocess.DEVNULL)
    wait_listen(port, proc=srv)
    s, t0 = connect(port)
    arrivals, end, how = read_until_end(s, 6.0)
    got = sum(n for _, n in arrivals)
    last = arrivals[-1][0] if arrivals else t0
    if got < 8 or last - t0 < 2.5:
        raise Fail("the silent client got %d bytes over %.2f s before %s, expected ~10 "
                   "over 3 s: cut while the server was writing?"
                   % (got, last - t0, how or "the end of the wait"))
    msg = cut_window(end and end - last, 1.0, "cut", "the last byte arrived", early=0.005)
    s.close()
    finish(srv)
    return "server wrote %d bytes over %.2f s, client kept; %s" % (got, last - t0, msg)


def test_listener_never_cut_zero_never_cuts():
    """A listening socket idle for 1 s past a 300ms limit still accepts (and
    its connection is cut on time); TCPKEEP_IDLE_TIMEOUT=0 never cuts."""
    port = free_port()
    srv = _nc_server(port, "300ms")
    time.sleep(1.0)
    s, t0 = connect(port)
    end, _, _ = wait_eof(s, 2.0)
    msg = cut_window(end and end - t0, 0.3, "then its connection cut")
    s.close()
    out, err = finish(srv)
    if err.strip():
        raise Fail("nc -l printed on stderr: %r" % err[-300:])

    port = free_port()
    srv = _nc_server(port, "0")
    s, t0 = connect(port)
    end, _, how = wait_eof(s, 1.5)
    if end is not None:
        raise Fail("TCPKEEP_IDLE_TIMEOUT=0: connection ended (%s) after %.3f s" % (how, end - t0))
    s.close()
    finish(srv)
    return "listener idle 1 s (limit 0.3 s) accepted; %s; limit 0: idle 1.5 s, not cut" % msg


def test_info_log_line():
    """TCPKEEP_LOG=<file> TCPKEEP_LOG_LEVEL=info: one line per cut, naming
    the fd, both addresses and the idle time; nothing on stderr."""
    log = os.path.join(tmpdir(), "tcpkeep.log")
    port = free_port()
    srv = spawn(["nc", "-l", "127.0.0.1", str(port)], stdout=subprocess.DEVNULL,
                env={"TCPKEEP_IDLE_TIMEOUT": "300ms", "TCPKEEP_LOG": log,
                     "TCPKEEP_LOG_LEVEL": "info"})
    wait_listen(port, proc=srv)
    s, t0 = connect(port)
    cport = s.getsockname()[1]
    end, _, _ = wait_eof(s, 2.0)
    msg = cut_window(end and end - t0, 0.3, "idle client cut")
    s.close()
    time.sleep(0.1)
    out, err = finish(srv)
    try:
        with open(log) as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise Fail("no log file: %s" % e)
    check(not err.strip(), "stderr with TCPKEEP_LOG=file: %r" % err[-300:])
    check(len(lines) == 1, "expected one log line, got %r" % lines)
    line = lines[0]
    check(re.match(r"^tcpkeep\[%d\]: " % srv.pid, line), "log line prefix: %r" % line)
    check("127.0.0.1:%d" % port in line and "127.0.0.1:%d" % cport in line,
          "log line does not name both addresses (:%d, :%d): %r" % (port, cport, line))
    check(re.search(r"\bfd \d+", line), "log line does not name the fd: %r" % line)
    m = re.search(r"(\d+\.\d+) ?s\b", line)
    check(m and 0.3 <= float(m.group(1)) <= 0.8, "log line idle time: %r" % line)
    return "%s; logged: %s" % (msg, line)
