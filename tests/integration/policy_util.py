"""Helpers for test_policies.py (issue 5, idle policies and dry run): the
shim's cut and dry-run log lines, plain client connections that record how
and when they ended, and the programs run under the shim (a Python server
with switchable behaviour, and C programs for exact syscall patterns).

Times are CLOCK_MONOTONIC seconds everywhere: Python's time.monotonic() in
the test process and the programs' own stamps (Python, or clock_gettime in
C) are on the same clock, so a program's "I read EOF at T" can be compared
with the moment the test's client saw the cut.
"""
import errno
import os
import re
import select
import time

from helpers import C_COMMON, CUT_SLACK, Fail, _next_line, connect, expect_line, lines_until

REASONS = ("idle", "read-idle", "write-idle", "first-byte", "half-closed", "lifetime")

# tcpkeep[PID]: fd N LOCAL -> PEER: REASON for S.SSS s, shut down|reset|
#               would be shut down (dry run)
_LINE = re.compile(r"^tcpkeep\[(\d+)\]: fd (\d+) (\S+) -> (\S+): ([a-z-]+) for (\d+\.\d+) s, "
                   r"(.+)$")
ACTIONS = ("shut down", "reset", "would be shut down (dry run)", "would be reset (dry run)")


def _port(addr):
    tail = addr.rpartition(":")[2]
    return int(tail) if tail.isdigit() else -1


class Cut:
    """One parsed cut or dry-run line of the shim's log."""

    def __init__(self, m, text):
        self.pid, self.fd = int(m.group(1)), int(m.group(2))
        self.local, self.peer = m.group(3), m.group(4)
        self.lport, self.pport = _port(self.local), _port(self.peer)
        self.reason, self.secs, self.action = m.group(5), float(m.group(6)), m.group(7)
        self.text = text

    def __repr__(self):
        return repr(self.text)


def parse_log(text):
    """(cut and dry-run lines as Cut, other non-empty lines)."""
    cuts, other = [], []
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if m and m.group(7) in ACTIONS:
            cuts.append(Cut(m, line.strip()))
        elif line.strip():
            other.append(line.strip())
    return cuts, other


def read_log(path):
    try:
        with open(path, errors="replace") as f:
            return parse_log(f.read())
    except OSError:
        return [], []


def check_log(cuts, other, expected, what, pid=None, allow_other=False, shared=False):
    """The log holds exactly the `expected` cut lines, in any order, and
    (unless allow_other) nothing else. expected: [(port, reasons, action,
    seconds_lo, seconds_hi)], port = the connection's port on the test's
    side (the program's peer or local port), reasons a token or a tuple of
    acceptable tokens. `shared`: the program forks and both processes hold
    the connection: the same line from each of them is tolerated (and
    reported). A description of what was found."""
    left = list(cuts)
    found = []
    dups = []
    for port, reasons, action, lo, hi in expected:
        reasons = (reasons,) if isinstance(reasons, str) else tuple(reasons)
        match = [c for c in left if port in (c.pport, c.lport) and c.reason in reasons]
        if not match:
            raise Fail("%s: no %s line for the connection with port %d in the shim's log; "
                       "lines: %r%s" % (what, "/".join(reasons), port, cuts[:8],
                                        "; other: %r" % other[:4] if other else ""))
        c = match[0]
        left.remove(c)
        for twin in match[1:]:
            if shared and twin.pid != c.pid and twin.action == c.action:
                left.remove(twin)
                dups.append(twin.pid)
        if c.action != action:
            raise Fail("%s: line ends %r, expected %r: %r" % (what, c.action, action, c.text))
        if pid is not None and c.pid != pid:
            raise Fail("%s: line names pid %d, the program is %d: %r" % (what, c.pid, pid, c.text))
        if not (lo - 0.0015 <= c.secs <= hi):
            raise Fail("%s: the line says %s for %.3f s, expected %.3f..%.3f: %r"
                       % (what, c.reason, c.secs, lo, hi, c.text))
        if c.reason not in REASONS:
            raise Fail("%s: reason %r is not one of %s: %r" % (what, c.reason, REASONS, c.text))
        found.append("%s %.3f s" % (c.reason, c.secs))
    if left:
        raise Fail("%s: unexpected cut line(s) in the shim's log: %r" % (what, left[:6]))
    if other and not allow_other:
        raise Fail("%s: unexpected line(s) in the shim's log: %r" % (what, other[:6]))
    if dups:
        found.append("also logged by pid %s, which shares the connection"
                     % ", ".join(map(str, dups)))
    return ", ".join(found) if found else "no cut logged"


def log_bounds(limit):
    """The seconds a cut line may give for a condition of `limit` s."""
    return limit, limit + CUT_SLACK


# --------------------------------------------------------------------------
# plain client connections

def _how(e):
    if isinstance(e, ConnectionResetError):
        return "reset"
    if isinstance(e, BrokenPipeError):
        return "epipe"
    return errno.errorcode.get(getattr(e, "errno", 0) or 0, type(e).__name__)


class Peer:
    """A plain (unshimmed) client connection. `active`: sends one byte every
    `period` s; always reads what comes. Records the end: .ended (monotonic
    time), .how ('eof', 'reset', 'epipe', an errno name)."""

    def __init__(self, port, active=False, period=0.2, first=b"", host="127.0.0.1", name=""):
        self.sock, self.t0 = connect(port, host)
        self.port = self.sock.getsockname()[1]
        self.name = name or "client :%d" % self.port
        self.active, self.period = active, period
        self.ended = self.how = None
        self.got = 0
        self.arrivals = []          # (monotonic time, bytes)
        self.last_send = None       # just before the last send
        self.next_send = self.t0 + period
        if first:
            self.last_send = time.monotonic()
            self.sock.sendall(first)

    def send(self, data):
        t = time.monotonic()
        try:
            self.sock.sendall(data)
        except OSError as e:
            self.end(_how(e))
            return False
        self.last_send = t
        return True

    def end(self, how):
        if self.ended is None:
            self.ended, self.how = time.monotonic(), how

    def age_at_end(self):
        return None if self.ended is None else self.ended - self.t0

    @classmethod
    def wrap(cls, sock, t0, name):
        """A Peer for a socket the test already has (e.g. one it accepted)."""
        p = cls.__new__(cls)
        p.sock, p.t0, p.port, p.name = sock, t0, sock.getsockname()[1], name
        p.active, p.period, p.ended, p.how, p.got, p.arrivals = False, 0.2, None, None, 0, []
        p.last_send, p.next_send = None, t0
        return p

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def drive(peers, duration, until_all_ended=False):
    """For `duration` s (bounded): active peers send a byte every period,
    every peer reads; a peer whose connection ends is recorded and left."""
    stop = time.monotonic() + duration
    while True:
        now = time.monotonic()
        live = [p for p in peers if p.ended is None]
        if now >= stop or (until_all_ended and not live) or not live:
            return
        for p in live:
            if p.active and now >= p.next_send:
                if p.send(b"x"):
                    p.next_send = max(p.next_send + p.period, now + p.period / 2)
        live = [p for p in live if p.ended is None]
        wake = min([p.next_send for p in live if p.active] + [stop])
        if not live:
            continue
        r, _, _ = select.select([p.sock for p in live], [], [], max(0.0, wake - time.monotonic()))
        for p in live:
            if p.sock not in r:
                continue
            try:
                data = p.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as e:
                p.end(_how(e))
                continue
            if not data:
                p.end("eof")
            else:
                p.got += len(data)
                p.arrivals.append((time.monotonic(), len(data)))


def describe_end(p):
    if p.ended is None:
        return "%s still open after %.2f s" % (p.name, time.monotonic() - p.t0)
    return "%s ended (%s) %.3f s after connecting" % (p.name, p.how, p.ended - p.t0)


def expect_kept(p, what):
    """p must still be open (its connection never ended)."""
    if p.ended is not None:
        raise Fail("%s: %s, expected it to be kept" % (what, describe_end(p)))
    return "%s kept %.1f s" % (what, time.monotonic() - p.t0)


def cpu_seconds(pid):
    """CPU time (user + system) a live process has used, from /proc."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def poll_line(proc, limit):
    """The program's next stdout line within `limit` s, or None (no Fail)."""
    try:
        return _next_line(proc.stdout, time.monotonic() + limit)
    except TimeoutError:
        return None


def ready(proc, limit=10):
    """Wait for the program's 'ready PORT' line; the port."""
    return int(expect_line(proc, "ready", limit).split()[1])


# --------------------------------------------------------------------------
# the programs under the shim

# A Python server (the real interpreter, unmodified) with switchable
# behaviour. It listens on 127.0.0.1:0 and prints "ready PORT". Every event
# is a line with the monotonic time:
#   accepted PEERPORT T | eof PEERPORT T | error PEERPORT ERRNO T |
#   wrote PEERPORT I T (after a streamed write) | streamed PEERPORT T
# It exits (normally: destructors run) when its stdin closes.
#   --never-read            never reads its connections
#   --echo                  writes back what it reads
#   --connect PORT          also makes one connection itself (read like the others)
#   --stream-on accept|eof  then writes one line every --period s, --count times
#   --via send|splice       how the streamed bytes go out (splice: from a pipe)
#   --read-via recv|splice  how it reads (splice: into a pipe, then drained)
SERVER = r"""
import errno, os, select, socket, sys, time
args = sys.argv[1:]
opt = {"--never-read": False, "--echo": False}
val = {"--connect": None, "--stream-on": None, "--via": "send", "--count": "0",
       "--period": "0.2", "--read-via": "recv"}
while args:
    a = args.pop(0)
    if a in opt:
        opt[a] = True
    elif a in val:
        val[a] = args.pop(0)
    else:
        sys.exit("unknown option " + a)
count, period = int(val["--count"]), float(val["--period"])

def say(*words):
    print(" ".join(str(w) for w in words), "%.6f" % time.monotonic(), flush=True)

ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(256)
print("ready", ls.getsockname()[1], flush=True)
poll = select.poll()
poll.register(ls, select.POLLIN)
poll.register(0, select.POLLIN)
conns = {}     # fd -> [sock, peer port, writes left, next write time]
if val["--connect"]:
    s = socket.create_connection(("127.0.0.1", int(val["--connect"])))
    conns[s.fileno()] = [s, int(val["--connect"]), 0, None]
    if not opt["--never-read"]:
        poll.register(s, select.POLLIN)
    say("connected", s.getsockname()[1])
pipe_r, pipe_w = os.pipe() if val["--via"] == "splice" else (None, None)
in_r, in_w = os.pipe() if val["--read-via"] == "splice" else (None, None)

def receive(sock):
    if in_r is None:
        return sock.recv(65536)
    n = os.splice(sock.fileno(), in_w, 65536)
    return os.read(in_r, n) if n else b""

def start_stream(c):
    c[2], c[3] = count, time.monotonic() + period

def stream_one(c):
    data = b"line %d\n" % (count - c[2])
    try:
        if pipe_r is not None:
            os.write(pipe_w, data)
            n = os.splice(pipe_r, c[0].fileno(), len(data))
            if n != len(data):
                raise OSError(errno.EIO, "short splice")
        else:
            c[0].sendall(data)
    except OSError as e:
        say("error", c[1], errno.errorcode.get(e.errno, e.errno))
        c[2], c[3] = 0, None
        return
    c[2] -= 1
    say("wrote", c[1], count - c[2])
    if c[2] == 0:
        say("streamed", c[1])
        c[3] = None
    else:
        c[3] += period

end = time.monotonic() + 120
while time.monotonic() < end:
    due = [c[3] for c in conns.values() if c[3] is not None]
    wait = max(0.0, min(due) - time.monotonic()) if due else 1.0
    for fd, ev in poll.poll(int(wait * 1000) + 1):
        if fd == 0:
            if not os.read(0, 4096):
                sys.exit(0)
        elif fd == ls.fileno():
            s, (_, pport) = ls.accept()
            c = conns[s.fileno()] = [s, pport, 0, None]
            say("accepted", pport)
            if not opt["--never-read"]:
                poll.register(s, select.POLLIN)
            if val["--stream-on"] == "accept":
                start_stream(c)
        else:
            c = conns[fd]
            try:
                data = receive(c[0])
            except OSError as e:
                say("error", c[1], errno.errorcode.get(e.errno, e.errno))
                poll.unregister(fd)
                continue
            if data and opt["--echo"]:
                try:
                    c[0].sendall(data)
                except OSError as e:
                    say("error", c[1], errno.errorcode.get(e.errno, e.errno))
                    poll.unregister(fd)
                    continue
            if not data:
                say("eof", c[1])
                poll.unregister(fd)      # keeps the socket open
                if val["--stream-on"] == "eof":
                    start_stream(c)
    now = time.monotonic()
    for c in list(conns.values()):
        if c[3] is not None and now >= c[3]:
            stream_one(c)
"""

# One long blocking write of MB megabytes to the one client it accepts;
# prints "accepted T" and, when the write returns, "write RESULT ERRNO T"
# and "progress T": the last time its kernel's tcpi_bytes_acked advanced, as
# seen by a thread that reads TCP_INFO every 5 ms (getsockopt moves no data).
SLOW_WRITER = C_COMMON + r"""
#include <linux/tcp.h>
#include <pthread.h>
#include <stdatomic.h>

static int conn;
static atomic_int write_done;
static double last_progress;

static void *watch_acks(void *arg)
{
    (void)arg;
    unsigned long long acked = 0;
    struct timespec pause = { 0, 5000000 };
    for (int i = 0; i < 12000 && !atomic_load(&write_done); i++) {   /* at most ~60 s */
        struct tcp_info ti;
        socklen_t len = sizeof(ti);
        memset(&ti, 0, sizeof(ti));
        if (getsockopt(conn, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0 &&
            ti.tcpi_bytes_acked != acked) {
            acked = ti.tcpi_bytes_acked;
            last_progress = now();
        }
        nanosleep(&pause, NULL);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    size_t len = (size_t)atoi(argc > 1 ? argv[1] : "48") << 20;
    signal(SIGPIPE, SIG_IGN);   /* a cut write must return, not kill us */
    struct sockaddr_in sa = { .sin_family = AF_INET };
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    socklen_t sl = sizeof(sa);
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    if (ls < 0 || bind(ls, (struct sockaddr *)&sa, sizeof(sa)) || listen(ls, 4) ||
        getsockname(ls, (struct sockaddr *)&sa, &sl))
        return 1;
    char *buf = malloc(len);
    if (!buf)
        return 1;
    memset(buf, 'x', len);
    printf("ready %d\n", ntohs(sa.sin_port));
    fflush(stdout);
    conn = accept(ls, NULL, NULL);
    if (conn < 0)
        return 1;
    printf("accepted %.6f\n", now());
    fflush(stdout);
    pthread_t t;
    if (pthread_create(&t, NULL, watch_acks, NULL))
        return 1;
    ssize_t r = write(conn, buf, len);
    int e = r < 0 ? errno : 0;
    double at = now();
    atomic_store(&write_done, 1);
    pthread_join(t, NULL);
    printf("write %zd %d %.6f\n", r, e, at);
    printf("progress %.6f\n", last_progress);
    fflush(stdout);
    char b;
    (void)read(0, &b, 1);   /* hold the socket until the test closes stdin */
    return 0;
}
"""

# Accepts N clients; a thread per client blocked in read() until read
# returns <= 0; then prints "end PEERPORT FD RESULT ERRNO T FCNTL FCNTL_ERRNO"
# (FCNTL = fcntl(fd, F_GETFD), which fails with EBADF if the descriptor was
# closed behind the program's back). Holds every descriptor until stdin closes.
RESET_SERVER = C_COMMON + r"""
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>

static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

static void *serve(void *arg)
{
    int fd = (int)(intptr_t)arg;
    struct sockaddr_in peer;
    socklen_t pl = sizeof(peer);
    int pport = getpeername(fd, (struct sockaddr *)&peer, &pl) ? -1 : ntohs(peer.sin_port);
    char buf[4096];
    ssize_t r = 0;
    int e = 0;
    for (long i = 0; i < 100000000L; i++) {   /* bounded; ends on EOF or error */
        r = read(fd, buf, sizeof(buf));
        if (r <= 0) {
            e = r < 0 ? errno : 0;
            break;
        }
    }
    double t = now();
    int fl = fcntl(fd, F_GETFD);
    int fe = fl < 0 ? errno : 0;
    pthread_mutex_lock(&out_lock);
    printf("end %d %d %zd %d %.6f %d %d\n", pport, fd, r, e, t, fl, fe);
    fflush(stdout);
    pthread_mutex_unlock(&out_lock);
    return NULL;
}

int main(int argc, char **argv)
{
    int n = atoi(argc > 1 ? argv[1] : "1");
    signal(SIGPIPE, SIG_IGN);
    struct sockaddr_in sa = { .sin_family = AF_INET };
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    socklen_t sl = sizeof(sa);
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    if (ls < 0 || bind(ls, (struct sockaddr *)&sa, sizeof(sa)) || listen(ls, 16) ||
        getsockname(ls, (struct sockaddr *)&sa, &sl))
        return 1;
    printf("ready %d\n", ntohs(sa.sin_port));
    fflush(stdout);
    for (int i = 0; i < n; i++) {
        struct sockaddr_in peer;
        socklen_t pl = sizeof(peer);
        int c = accept(ls, (struct sockaddr *)&peer, &pl);
        if (c < 0)
            return 1;
        pthread_mutex_lock(&out_lock);
        printf("accepted %d %.6f\n", ntohs(peer.sin_port), now());
        fflush(stdout);
        pthread_mutex_unlock(&out_lock);
        pthread_t t;
        if (pthread_create(&t, NULL, serve, (void *)(intptr_t)c))
            return 1;
        pthread_detach(t);
    }
    char b;
    (void)read(0, &b, 1);
    return 0;
}
"""

# Accepts N clients (raising its soft RLIMIT_NOFILE to the hard limit), then
# writes one byte to each, all in one loop, so that every connection is due
# at the same moment; then waits (epoll) for each to be cut, which the shim's
# shutdown shows as IN|RDHUP. Prints "c I T_ACCEPT T_BEFORE_WRITE
# T_AFTER_WRITE T_CUT WRITE_ERRNO" per connection (T_CUT 0: not cut within
# limit + 4 s; WRITE_ERRNO not 0: already cut when written to), then "done K".
MANY_SERVER = C_COMMON + r"""
#include <sys/epoll.h>
#include <sys/resource.h>

int main(int argc, char **argv)
{
    int n = atoi(argv[1]);
    double limit = atof(argv[2]);
    signal(SIGPIPE, SIG_IGN);   /* a connection cut too early must be reported, not kill us */
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < (rlim_t)n + 64) {
        printf("error RLIMIT_NOFILE hard limit %lu < %d\n", (unsigned long)rl.rlim_max, n + 64);
        return 2;
    }
    struct sockaddr_in sa = { .sin_family = AF_INET };
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    socklen_t sl = sizeof(sa);
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    if (ls < 0 || bind(ls, (struct sockaddr *)&sa, sizeof(sa)) || listen(ls, 4096) ||
        getsockname(ls, (struct sockaddr *)&sa, &sl))
        return 1;
    int *fds = calloc(n, sizeof(int));
    double *tb = calloc(n, sizeof(double)), *ta = calloc(n, sizeof(double));
    double *tc = calloc(n, sizeof(double)), *tacc = calloc(n, sizeof(double));
    int *werr = calloc(n, sizeof(int));
    if (!fds || !tb || !ta || !tc || !tacc || !werr)
        return 1;
    printf("ready %d\n", ntohs(sa.sin_port));
    fflush(stdout);
    double give_up = now() + 60;
    struct pollfd p = { .fd = ls, .events = POLLIN };
    for (int i = 0; i < n;) {
        if (now() > give_up) {
            printf("error accepted only %d of %d in 60 s\n", i, n);
            return 3;
        }
        if (poll(&p, 1, 1000) <= 0)
            continue;
        int c = accept(ls, NULL, NULL);
        if (c >= 0) {
            tacc[i] = now();
            fds[i++] = c;
        }
    }
    printf("accepted %d\n", n);
    fflush(stdout);
    int write_errors = 0;
    for (int i = 0; i < n; i++) {
        tb[i] = now();
        if (write(fds[i], "x", 1) != 1) {
            werr[i] = errno ? errno : -1;
            write_errors++;
        }
        ta[i] = now();
    }
    int ep = epoll_create1(0);
    for (int i = 0; i < n; i++) {
        struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP, .data.u32 = (unsigned)i };
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev))
            return 4;
    }
    int left = n;
    double stop = ta[n - 1] + limit + 4;
    static struct epoll_event evs[4096];
    while (left > 0) {
        double t = now();
        if (t >= stop)
            break;
        int k = epoll_wait(ep, evs, 4096, (int)((stop - t) * 1000) + 1);
        double seen = now();
        for (int j = 0; j < k; j++) {
            unsigned i = evs[j].data.u32;
            if (tc[i] == 0) {
                tc[i] = seen;
                left--;
                epoll_ctl(ep, EPOLL_CTL_DEL, fds[i], NULL);
            }
        }
    }
    for (int i = 0; i < n; i++)
        printf("c %d %.6f %.6f %.6f %.6f %d\n", i, tacc[i], tb[i], ta[i], tc[i], werr[i]);
    printf("done %d write_errors %d\n", n - left, write_errors);
    fflush(stdout);
    return 0;
}
"""

# The plain (unshimmed) side of MANY_SERVER's connections: connects N
# sockets to 127.0.0.1:PORT as fast as it can (C, so that the accepts, and
# the clocks they start, are close together), prints "connected N SECONDS",
# then holds them until its stdin closes.
MANY_CLIENT = C_COMMON + r"""
#include <sys/resource.h>

int main(int argc, char **argv)
{
    int n = atoi(argv[1]);
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[2])) };
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    double t0 = now();
    for (int i = 0; i < n; i++) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (s < 0 || connect(s, (struct sockaddr *)&sa, sizeof(sa))) {
            printf("error connection %d: %m\n", i);
            fflush(stdout);
            return 1;
        }
    }
    printf("connected %d %.3f\n", n, now() - t0);
    fflush(stdout);
    char b;
    (void)read(0, &b, 1);
    return 0;
}
"""
