"""Shared pieces of test_lifecycle.py and test_security.py: a fast plain
(never shimmed) C peer that counts what it receives, a C prelude for the
programs run under the shim, a bounded run that takes a backtrace of a
hung process before killing it, and `ss -tnp` ownership checks."""
import os
import re
import select
import subprocess
import time

from helpers import C_COMMON, Fail, compile_c, finish, kill, spawn, which

# --------------------------------------------------------------------------
# The peer: one epoll loop, no shim. Every connection says what it is with
# its first byte:
#   'B' busy: any number of REQ-byte requests (the 'B' counts in the first),
#       each answered with the same bytes; it must end (EOF) on a request
#       boundary after at least one request. An EOF or reset anywhere else is
#       what a connection shut down under a program's feet looks like from the
#       other side: counted as busy_early (with the bytes seen).
#   'I' idle: a connection the program leaves idle (the shim is to cut it);
#       its EOF is counted as idle_eof. Anything it sends later is echoed.
#   'S' sink: every byte counted; "sink bytes=N" is printed at its EOF.
#   'E' echo: echoed.
#   'U' unseen: a connection the shim never saw made; its EOF is counted as
#       unseen_eof.
# A connection that ends before its first byte is counted as empty_eof.
# A line on stdin prints "stats k=v ..."; EOF on stdin ends the peer.

REQ = 64

PEER_C = r"""
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define REQ %(REQ)d
#define MAXFD 65536

struct conn { char kind; unsigned long got; unsigned long req_fill; unsigned long reqs;
              char req[REQ]; };
static struct conn conns[MAXFD];
static unsigned long accepted, busy_ok, busy_early, busy_reset, idle_eof, empty_eof,
    sink_eof, echo_eof, unseen_eof, requests, open_now, write_fail, last_early_got;

static void put_all(int fd, const char *b, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, b, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN) {   /* tiny replies: rare; wait a moment */
            usleep(200);
            continue;
        }
        if (w <= 0) {
            write_fail++;
            return;
        }
        b += w;
        n -= (size_t)w;
    }
}

static void finish_conn(int ep, int fd, int reset)
{
    struct conn *c = &conns[fd];
    switch (c->kind) {
    case 0: empty_eof++; break;
    case 'B':
        if (!reset && c->reqs > 0 && c->req_fill == 0) {
            busy_ok++;
        } else {
            if (reset) busy_reset++; else busy_early++;
            last_early_got = c->got;
        }
        break;
    case 'I': idle_eof++; break;
    case 'U': unseen_eof++; break;
    case 'S':
        sink_eof++;
        printf("sink bytes=%%lu reset=%%d\n", c->got, reset);
        fflush(stdout);
        break;
    default: echo_eof++; break;
    }
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
    open_now--;
    memset(c, 0, sizeof(*c));
}

int main(void)
{
    struct rlimit rl = { MAXFD, MAXFD };
    setrlimit(RLIMIT_NOFILE, &rl);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET };
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    socklen_t sl = sizeof(sa);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(ls, (struct sockaddr *)&sa, sizeof(sa)) || listen(ls, 4096) ||
        getsockname(ls, (struct sockaddr *)&sa, &sl)) {
        perror("peer: listen");
        return 1;
    }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = { .events = EPOLLIN };
    ev.data.fd = ls;
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    ev.data.fd = 0;
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev);
    printf("port %%d\n", ntohs(sa.sin_port));
    fflush(stdout);
    struct epoll_event evs[256];
    char buf[65536];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                for (;;) {
                    int c = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (c < 0)
                        break;
                    if (c >= MAXFD) {
                        close(c);
                        continue;
                    }
                    accepted++;
                    open_now++;
                    memset(&conns[c], 0, sizeof(conns[c]));
                    struct epoll_event ce = { .events = EPOLLIN | EPOLLRDHUP };
                    ce.data.fd = c;
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
                }
                continue;
            }
            if (fd == 0) {
                ssize_t r = read(0, buf, sizeof(buf));
                if (r <= 0)
                    return 0;
                printf("stats accepted=%%lu open=%%lu busy_ok=%%lu busy_early=%%lu "
                       "busy_reset=%%lu requests=%%lu idle_eof=%%lu empty_eof=%%lu sink_eof=%%lu "
                       "echo_eof=%%lu unseen_eof=%%lu write_fail=%%lu "
                       "last_early_got=%%lu\n", accepted,
                       open_now, busy_ok, busy_early, busy_reset, requests, idle_eof, empty_eof,
                       sink_eof, echo_eof, unseen_eof, write_fail, last_early_got);
                fflush(stdout);
                continue;
            }
            struct conn *c = &conns[fd];
            ssize_t r = read(fd, buf, sizeof(buf));
            if (r < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (r <= 0) {
                finish_conn(ep, fd, r < 0);
                continue;
            }
            if (!c->kind)
                c->kind = buf[0];
            c->got += (unsigned long)r;
            if (c->kind == 'B') {
                /* Answer each complete request with the same bytes. */
                ssize_t off = 0;
                while (off < r) {
                    size_t take = REQ - c->req_fill;
                    if ((size_t)(r - off) < take)
                        take = (size_t)(r - off);
                    memcpy(c->req + c->req_fill, buf + off, take);
                    c->req_fill += take;
                    off += (ssize_t)take;
                    if (c->req_fill == REQ) {
                        put_all(fd, c->req, REQ);
                        c->req_fill = 0;
                        c->reqs++;
                        requests++;
                    }
                }
            } else if (c->kind == 'I' || c->kind == 'E') {
                if (c->kind == 'E' || c->got > 1)
                    put_all(fd, buf, (size_t)r);
            }
        }
    }
}
""" % {"REQ": REQ}


class Peer:
    """The plain C peer (no shim). .port; .stats() -> dict; .lines: the
    other lines it printed (e.g. "sink bytes=N")."""

    def __init__(self):
        prog = compile_c(PEER_C, "peer")
        self.p = spawn([prog], shim=False)
        self.lines = []
        line = self._line(10)
        m = re.match(r"port (\d+)$", line)
        if not m:
            raise Fail("peer: unexpected first line %r" % line)
        self.port = int(m.group(1))

    def _line(self, limit):
        r, _, _ = select.select([self.p.stdout], [], [], limit)
        if not r:
            raise Fail("the plain peer printed nothing for %s s" % limit)
        line = self.p.stdout.readline()
        if not line:
            _, err = finish(self.p)
            raise Fail("the plain peer exited (%s): %r" % (self.p.returncode, err[-400:]))
        return line.rstrip("\n")

    def stats(self):
        self.p.stdin.write("stats\n")
        self.p.stdin.flush()
        while True:
            line = self._line(10)
            if line.startswith("stats "):
                return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}
            self.lines.append(line)

    def settled(self, limit=5.0, key="open", want=0, at_least=None):
        """Stats once `key` == want (every connection ended, by default),
        bounded; the last stats otherwise."""
        end = time.monotonic() + limit
        while True:
            s = self.stats()
            if s[key] == want or time.monotonic() > end:
                return s
            time.sleep(0.05)

    def wait_line(self, prefix, limit=5.0):
        """The first line starting with prefix (already printed or within
        `limit` s)."""
        end = time.monotonic() + limit
        while True:
            for ln in self.lines:
                if ln.startswith(prefix):
                    self.lines.remove(ln)
                    return ln
            left = end - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([self.p.stdout], [], [], left)
            if r:
                self.lines.append(self._line(1))

    def stop(self):
        try:
            self.p.stdin.close()
        except OSError:
            pass
        try:
            self.p.wait(timeout=3)
        except subprocess.TimeoutExpired:
            kill(self.p)


# --------------------------------------------------------------------------
# C prelude for the programs run under the shim.

C_PRELUDE = C_COMMON + r"""
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#define REQ %(REQ)d
static struct sockaddr_in peer_addr;

static void set_peer(const char *port)
{
    peer_addr.sin_family = AF_INET;
    peer_addr.sin_port = htons((unsigned short)atoi(port));
    inet_pton(AF_INET, "127.0.0.1", &peer_addr.sin_addr);
}

/* All of n bytes, retrying EINTR; returns n, or what moved before an
 * error/EOF (errno then says which, 0 for EOF). */
static ssize_t write_all(int fd, const char *b, size_t n)
{
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(fd, b + done, n - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return (ssize_t)done;
        done += (size_t)w;
    }
    return (ssize_t)done;
}

static ssize_t read_all(int fd, char *b, size_t n)
{
    size_t done = 0;
    while (done < n) {
        ssize_t r = read(fd, b + done, n - done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r == 0)
            errno = 0;
        if (r <= 0)
            return (ssize_t)done;
        done += (size_t)r;
    }
    return (ssize_t)done;
}

/* A blocking connect to the peer that survives EINTR (the handshake goes
 * on in the kernel: wait for it with poll). -1 with errno on failure. */
static int tcp_connect(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&peer_addr, sizeof(peer_addr)) == 0)
        return fd;
    if (errno != EINTR && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    for (;;) {
        struct pollfd p = { fd, POLLOUT, 0 };
        int r = poll(&p, 1, 10000);
        if (r < 0 && errno == EINTR)
            continue;
        int err = 0;
        socklen_t l = sizeof(err);
        if (r <= 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l) || err) {
            close(fd);
            errno = err ? err : ETIMEDOUT;
            return -1;
        }
        return fd;
    }
}

/* One request/response with the peer on a 'B' connection: 1 ok, 0 not.
 * *last gets the time just before the last call that moved data. */
static int exchange(int fd, unsigned seq, double *last)
{
    char req[REQ], resp[REQ];
    memset(req, 'a' + seq %% 26, sizeof(req));
    req[0] = 'B';
    memcpy(req + 1, &seq, sizeof(seq));
    *last = now();
    if (write_all(fd, req, REQ) != REQ)
        return 0;
    *last = now();
    if (read_all(fd, resp, REQ) != REQ)
        return 0;
    return memcmp(req, resp, REQ) == 0;
}
""" % {"REQ": REQ}


# --------------------------------------------------------------------------
# processes

def backtrace(pid, limit=15):
    """All threads' backtraces of a (hung) process, by gdb; a note if gdb
    is missing or fails."""
    if not which("gdb"):
        return "(gdb not installed: no backtrace)"
    try:
        r = subprocess.run(["gdb", "-p", str(pid), "-batch", "-nx", "-ex", "set pagination off",
                            "-ex", "thread apply all bt 25"], capture_output=True, text=True,
                           timeout=limit)
    except subprocess.TimeoutExpired:
        return "(gdb timed out)"
    lines = [ln for ln in r.stdout.splitlines()
             if ln.startswith(("Thread ", "#")) or "LWP" in ln]
    return "\n".join(lines[-120:]) or r.stderr[-800:]


def children_of(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def run_bounded(argv, env=None, limit=30, shim=True):
    """Run argv to completion: (rc, stdout, stderr). If it is still running
    after `limit` s: Fail with gdb backtraces of it (and of its children),
    taken before it is killed: the evidence of a deadlock."""
    p = spawn(argv, shim=shim, env=env, stdin=subprocess.DEVNULL)
    try:
        out, err = p.communicate(timeout=limit)
        return p.returncode, out, err
    except subprocess.TimeoutExpired:
        pass
    bts = ["== pid %d (%s)\n%s" % (p.pid, os.path.basename(argv[0]), backtrace(p.pid))]
    for c in children_of(p.pid)[:2]:
        bts.append("== child pid %d\n%s" % (c, backtrace(c)))
    for c in children_of(p.pid):
        try:
            os.kill(c, 9)
        except OSError:
            pass
    out, err = finish(p)
    raise Fail("%s still running after %s s (deadlock?); stdout %r; stderr %r; backtraces:\n%s"
               % (os.path.basename(argv[0]), limit, out[-600:], err[-400:], "\n".join(bts)))


def fields(text):
    """k=v pairs (last one wins) from a program's output."""
    return dict(re.findall(r"(\w+)=(-?[\w.]+)", text))


def ss_owned(pid=None, port=None):
    """TCP sockets in `ss -tanpH` (all states) owned by a process; each a dict
    (state, lport, pport, pids). Filtered by owner pid and/or by port (local
    or peer)."""
    # The port filter goes to ss (the kernel filters): a machine with 10^5
    # sockets in TIME_WAIT makes an unfiltered listing slow.
    flt = ["( sport = :%d or dport = :%d )" % (port, port)] if port is not None else []
    r = subprocess.run(["ss", "-tanpH"] + flt, capture_output=True, text=True, timeout=10)
    out = []
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) < 5:
            continue
        lport = int(parts[3].rsplit(":", 1)[1]) if parts[3].rsplit(":", 1)[1].isdigit() else -1
        pport = int(parts[4].rsplit(":", 1)[1]) if parts[4].rsplit(":", 1)[1].isdigit() else -1
        pids = [int(x) for x in re.findall(r"pid=(\d+)", line)]
        if pid is not None and pid not in pids:
            continue
        if port is not None and port not in (lport, pport):
            continue
        out.append(dict(state=parts[0], lport=lport, pport=pport, pids=pids, line=line.strip()))
    return out


# --------------------------------------------------------------------------
# An active plain client on its own thread, which can tell a shim that cut
# a busy connection from a test process that stalled (a loaded machine can
# stop it for longer than a short limit: then the cut was legitimate).

class ActiveClient:
    """Sends a byte every `period` s on sock and reads the echoes, on a
    thread, until stop(). Records the send times; .ended/.how if the peer
    ended the connection."""

    def __init__(self, sock, t0, period=0.1):
        import threading
        self.sock, self.t0, self.period = sock, t0, period
        self.sends = [t0]
        self.ended = self.how = None
        self.got = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop:
            t = time.monotonic()
            try:
                self.sock.send(b"x")
            except OSError as e:
                self.ended, self.how = time.monotonic(), "send: %s" % type(e).__name__
                return
            self.sends.append(t)
            end = t + self.period
            while not self._stop:
                left = end - time.monotonic()
                if left <= 0:
                    break
                r, _, _ = select.select([self.sock], [], [], left)
                if not r:
                    continue
                try:
                    data = self.sock.recv(4096)
                except OSError as e:
                    data, self.how = b"", type(e).__name__
                if not data:
                    self.ended = time.monotonic()
                    self.how = self.how or "eof"
                    return
                self.got += len(data)

    def stop(self):
        self._stop = True
        self._thread.join(5)

    def longest_silence(self):
        """The longest time the client let pass without sending, up to its
        end (or now)."""
        marks = self.sends + [self.ended or time.monotonic()]
        return max(b - a for a, b in zip(marks, marks[1:]))

    def verdict(self, limit, what):
        """None if never cut; Fail if cut although it never went `limit` s
        without sending (the shim cut a busy connection); Inconclusive if
        the test process itself stalled that long (a legitimate cut)."""
        if self.ended is None:
            return None
        silence = self.longest_silence()
        msg = ("%s: active client cut (%s) %.3f s after connecting, %.3f s after its last "
               "send; its longest silence %.3f s (limit %g s)"
               % (what, self.how, self.ended - self.t0, self.ended - self.sends[-1], silence,
                  limit))
        if silence < limit:
            raise Fail(msg + ": cut while busy")
        raise Inconclusive(msg + ": the test process itself stalled for the limit "
                           "(loaded machine), so the cut was legitimate")


class Inconclusive(Exception):
    """The machine stalled the test's own client for the whole limit."""


def retry_inconclusive(fn, tries=2):
    """Run fn(); if it is Inconclusive, once more; then Fail."""
    notes = []
    for _ in range(tries):
        try:
            res = fn()
        except Inconclusive as e:
            notes.append(str(e))
            continue
        return res + ("" if not notes else " (after a retry: %s)" % notes[0])
    raise Fail("inconclusive %d times: %s" % (tries, "; ".join(notes)))


class Lines:
    """Lines from a child's stdout pipe, read with os.read (no hidden
    buffer for select to miss), bounded. Use it instead of p.stdout."""

    def __init__(self, p):
        self.p, self.fd, self.buf, self.eof = p, p.stdout.fileno(), b"", False

    def get(self, limit, what="a line"):
        """The next line; Fail after `limit` s or at EOF."""
        end = time.monotonic() + limit
        while b"\n" not in self.buf:
            left = end - time.monotonic()
            if self.eof or left <= 0:
                raise Fail("%s waiting for %s (%s); unfinished %r"
                           % ("EOF" if self.eof else "timed out after %.1f s" % limit, what,
                              "exited %s" % self.p.poll() if self.p.poll() is not None
                              else "still running", self.buf[-200:]))
            r, _, _ = select.select([self.fd], [], [], left)
            if r:
                chunk = os.read(self.fd, 65536)
                self.eof = not chunk
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode(errors="replace")

    def until(self, want, limit, seen=None):
        """Lines until every line in `want` has come (bounded); all lines."""
        seen = [] if seen is None else seen
        end = time.monotonic() + limit
        while not all(w in seen for w in want):
            left = end - time.monotonic()
            try:
                seen.append(self.get(max(0.0, left), "%r" % [w for w in want
                                                              if w not in seen]))
            except Fail as e:
                raise Fail("%s; it printed %r" % (e, seen[-8:]))
        return seen
