"""The idle cut: legacy programs (nc, socat) under the shim, plain peers."""
import os
import re
import socket
import subprocess
import time

from helpers import (LATE_READER, Active, Fail, check, compile_c, cut_window, connect, finish,
                     free_port, handshake_time, kernel_last_data_recv, lib, need, read_until_end,
                     spawn, expect_line, script, tmpdir, wait_eof, wait_listen, which)


def _nc_server(port, limit):
    p = spawn(["nc", "-l", "127.0.0.1", str(port)], env={"TCPKEEP_IDLE_TIMEOUT": limit},
              stdout=subprocess.DEVNULL)
    wait_listen(port, proc=p)
    return p


def _idle_client_cut(limit_text, limit, wait):
    """nc -l under the shim with TCPKEEP_IDLE_TIMEOUT=limit_text; an idle
    plain client, waiting at most `wait` s for its end: (the cut_window
    description, how the client saw the end)."""
    port = free_port()
    srv = _nc_server(port, limit_text)
    s, t0 = connect(port)
    end, _, how = wait_eof(s, wait)
    msg = cut_window(end and end - t0, limit, "idle client cut")
    s.close()
    finish(srv)
    return msg, how


def test_idle_client_cut():
    """nc -l under the shim (limit 1s); an idle plain client sees EOF on time."""
    return "%s, seen as %s by the client" % _idle_client_cut("1s", 1.0, 3.0)


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
    t0 = handshake_time(conn)
    end, _, how = wait_eof(conn, 3.0)
    msg = cut_window(end and end - t0, 1.0, "nc client's connection cut", "the handshake",
                     early=0.01)
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
    return _idle_client_cut("300ms", 0.3, 2.0)[0]


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
    # From the kernel's record of the last arrival (this process may have
    # read it late); the FIN does not count as data.
    idle = kernel_last_data_recv(s) if end else None
    msg = cut_window(idle, 1.0, "cut", "the last byte arrived", early=0.01)
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


EXIT_ON_EOF_SERVER = r"""
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

/* A legacy server that exits the moment its client is gone. */
int main(int argc, char **argv)
{
    (void)argc;
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[1])) };
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(ls, (struct sockaddr *)&sa, sizeof(sa)) || listen(ls, 4))
        return 1;
    printf("listening\n");
    fflush(stdout);
    int c = accept(ls, NULL, NULL);
    char buf[64];
    while (read(c, buf, sizeof(buf)) > 0)
        ;
    _exit(0);
}
"""


def _log_lines(path):
    """The lines of the shim's log file; none when it was never written."""
    try:
        with open(path) as f:
            return f.read().splitlines()
    except OSError:
        return []


def _check_log_line(line, pid, port, cport, limit):
    check(re.match(r"^tcpkeep\[%d\]: " % pid, line), "log line prefix: %r" % line)
    check("127.0.0.1:%d" % port in line and "127.0.0.1:%d" % cport in line,
          "log line does not name both addresses (:%d, :%d): %r" % (port, cport, line))
    check(re.search(r"\bfd \d+", line), "log line does not name the fd: %r" % line)
    m = re.search(r"(\d+\.\d+) ?s\b", line)
    check(m and limit <= float(m.group(1)) <= limit + 0.5, "log line idle time: %r" % line)


def test_info_log_line():
    """TCPKEEP_LOG=<file> TCPKEEP_LOG_LEVEL=info: one line per cut, naming
    the fd, both addresses and the idle time, nothing on stderr; and the
    line is there even when the program exits the moment it sees the end of
    the connection (nc, and 8 C servers that _exit on EOF), also when strace
    makes the watchdog's writes slow."""
    prog = compile_c(EXIT_ON_EOF_SERVER, "exit_on_eof")
    d = tmpdir()
    env = {"TCPKEEP_IDLE_TIMEOUT": "300ms", "TCPKEEP_LOG_LEVEL": "info"}
    lost, lines, msg = [], [], ""
    for i in range(9):  # one at a time: the race is likelier on an idle CPU
        port = free_port()
        log = os.path.join(d, "log.%d" % i)
        argv = ["nc", "-l", "127.0.0.1", str(port)] if i == 0 else [prog, str(port)]
        name = os.path.basename(argv[0])
        srv = spawn(argv, env=dict(env, TCPKEEP_LOG=log), stdout=subprocess.DEVNULL)
        wait_listen(port, proc=srv)
        s, t0 = connect(port)
        cport = s.getsockname()[1]
        end, _, _ = wait_eof(s, 2.0)
        m = cut_window(end and end - t0, 0.3, "idle client cut")
        msg = msg or m
        s.close()
        try:
            srv.wait(3)  # it exits by itself on EOF
        except subprocess.TimeoutExpired:
            pass
        out, err = finish(srv)
        check(not err.strip(), "%s: stderr with TCPKEEP_LOG=file: %r" % (name, err[-300:]))
        got = _log_lines(log)
        if not got:
            lost.append(name)
            continue
        check(len(got) == 1, "%s: expected one log line, got %r" % (name, got))
        _check_log_line(got[0], srv.pid, port, cport, 0.3)
        lines.append(got[0])
    # The same with the scheduling made deterministic: strace delays every
    # write by 0.2 s (a slow log device, a preempted watchdog). The line
    # must still be there when the program exits on EOF.
    slow_lost, slow_order = 0, ""
    if which("strace"):
        for i in range(3):
            port = free_port()
            log = os.path.join(d, "slow.%d" % i)
            trace = os.path.join(d, "trace.%d" % i)
            srv = spawn(["strace", "-f", "-qq", "-o", trace, "-e",
                         "trace=shutdown,write,writev,pwrite64,exit_group", "-e",
                         "inject=write,writev,pwrite64:delay_enter=200000",
                         "-E", "LD_PRELOAD=" + lib(), "-E", "TCPKEEP_LOG=" + log]
                        + [a for kv in env.items() for a in ("-E", "%s=%s" % kv)]
                        + [prog, str(port)],
                        shim=False, stdout=subprocess.DEVNULL)
            wait_listen(port, limit=10, proc=srv)
            s, t0 = connect(port)
            end, _, _ = wait_eof(s, 5.0)
            s.close()
            check(end is not None, "under strace: the idle client was not cut")
            try:
                srv.wait(5)
            except subprocess.TimeoutExpired:
                pass
            finish(srv)
            got = _log_lines(log)
            if not got:
                slow_lost += 1
                with open(trace) as f:
                    slow_order = " / ".join(
                        re.sub(r"^\d+\s+", "", ln.strip())[:40] for ln in f
                        if "shutdown" in ln or "exit_group" in ln or "write(" in ln)[:300]
    if lost or slow_lost:
        raise Fail("the info line is missing from the log after %d of 9 cuts (%s)%s: the "
                   "program exited on EOF before the watchdog wrote it; lines seen: %r"
                   % (len(lost), ", ".join(lost) or "-",
                      "; and after %d of 3 with writes delayed 0.2 s (strace: %s)"
                      % (slow_lost, slow_order) if slow_lost else "", lines[:1]))
    return "%s; 9 cuts, each logged, e.g. %s%s" % (
        msg, lines[0], "; 3 more with writes delayed 0.2 s, each logged" if which("strace")
        else "")


def test_late_read_restarts_the_clock():
    """A server reads a byte 0.8 s after it arrived (limit 1s): the read is
    activity, so the cut comes no earlier than 1 s after the read, not 1 s
    after the byte arrived (which is all the kernel's TCP_INFO knows: this
    test fails if the hot path's stamp is lost)."""
    srv = spawn(script(LATE_READER), env={"TCPKEEP_IDLE_TIMEOUT": "1s"})
    try:
        port = int(expect_line(srv, "ready").split()[1])
        s, _ = connect(port)
        s.sendall(b"x")
        read_at = float(expect_line(srv, "read ").split()[1])
        end = expect_line(srv, "end ", limit=4).split()
        s.close()
    finally:
        finish(srv)
    check(end[2] == "eof", "the server's connection ended with %r, not end-of-file" % end[2:])
    return cut_window(float(end[1]) - read_at, 1.0, "cut", "the server's late read")
