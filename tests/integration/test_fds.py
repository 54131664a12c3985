"""Descriptor identity: fds closed behind the shim's back and reused,
close_range, dup2 onto a tracked fd, dup'd descriptors."""
import re

from helpers import C_COMMON, EchoServer, Fail, check, compile_c, run, spawn, timeout

LIMIT = 0.5

FD_PROG = C_COMMON + r"""
#include <fcntl.h>
#include <sys/syscall.h>

static struct sockaddr_in peer;

static int tcp(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&peer, sizeof(peer)) != 0) {
        perror("connect");
        exit(2);
    }
    return fd;
}

/* A TCP connection made with raw system calls: the shim never sees it. */
static int tcp_unseen(void)
{
    int fd = (int)syscall(SYS_socket, AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || syscall(SYS_connect, fd, &peer, sizeof(peer)) != 0) {
        perror("raw connect");
        exit(2);
    }
    return fd;
}

/* Echo one byte every 100 ms for `secs` through `io` fds (all to the same
 * or different connections); returns 0 if any ends meanwhile. */
static int busy(const int *io, int n, double secs, double *last)
{
    double end = now() + secs;
    while (now() < end) {
        /* `last`: just before the final reads, which the shim stamps. */
        double t = now();
        for (int i = 0; i < n; i++) {
            char c = 'x';
            if (write(io[i], &c, 1) != 1 || read(io[i], &c, 1) != 1) {
                printf(" busy_fd%d_ended_after=%.3f", i, secs - (end - now()));
                return 0;
            }
        }
        *last = t;
        usleep(100000);
    }
    return 1;
}

/* Seconds from `since` until the connection on fd is cut, or -1. */
static double cut_after(int fd, double since, int max_ms)
{
    char c;
    struct pollfd p = { fd, POLLIN, 0 };
    if (poll(&p, 1, max_ms) <= 0)
        return -1;
    ssize_t n = read(fd, &c, 1);
    return n <= 0 ? now() - since : -2;
}

int main(int argc, char **argv)
{
    peer.sin_family = AF_INET;
    peer.sin_port = htons((unsigned short)atoi(argv[1]));
    inet_pton(AF_INET, "127.0.0.1", &peer.sin_addr);
    const char *what = argv[2];
    double last = 0;
    int ok = 1;
    printf("%s:", what);

    if (strcmp(what, "sysclose") == 0) {
        /* A idles most of the limit, is closed behind the shim's back, and
         * B gets its number: B must live by its own activity. */
        int a = tcp();
        usleep(400000);
        syscall(SYS_close, a);
        int b = tcp();
        printf(" a=%d b=%d", a, b);
        ok = b == a && busy(&b, 1, 1.5, &last);
        printf(" busy_ok=%d cut_after=%.3f", ok, ok ? cut_after(b, last, 3000) : -1);
    } else if (strcmp(what, "sysclose_unseen") == 0) {
        /* B reuses A's number without the shim seeing it made: the shim must
         * not cut B when A's deadline comes (the SO_COOKIE check). */
        int a = tcp();
        usleep(300000);
        syscall(SYS_close, a);
        int b = tcp_unseen();
        printf(" a=%d b=%d", a, b);
        ok = b == a;
        printf(" same_fd=%d not_cut=%d", ok, ok && !ended_within(b, 1500));
    } else if (strcmp(what, "close_range") == 0 || strcmp(what, "close_range_raw") == 0) {
        int a1 = tcp(), a2 = tcp();
        usleep(300000);
        if (what[11] == '_')
            syscall(SYS_close_range, a1, a2, 0);
        else
            close_range(a1, a2, 0);
        int b[2] = { tcp(), tcp() };
        printf(" a=%d,%d b=%d,%d", a1, a2, b[0], b[1]);
        ok = b[0] == a1 && b[1] == a2 && busy(b, 2, 1.5, &last);
        printf(" busy_ok=%d cut_after=%.3f cut_after2=%.3f", ok,
               ok ? cut_after(b[0], last, 3000) : -1, ok ? cut_after(b[1], last, 3000) : -1);
    } else if (strcmp(what, "dup2") == 0) {
        /* dup2 B onto A's number (A idle most of the limit), close B's
         * own number; the connection lives through A's number. */
        int a = tcp(), b = tcp();
        usleep(400000);
        int r = dup2(b, a);
        close(b);
        printf(" a=%d b=%d dup2=%d", a, b, r);
        ok = r == a && busy(&a, 1, 1.5, &last);
        printf(" busy_ok=%d cut_after=%.3f", ok, ok ? cut_after(a, last, 3000) : -1);
    } else if (strcmp(what, "dup") == 0) {
        /* Activity on the dup only keeps it; closing the original keeps it
         * tracked: idle through the dup is cut. */
        int c = tcp();
        int d = dup(c);
        ok = busy(&d, 1, 1.5, &last);
        close(c);
        printf(" c=%d d=%d busy_ok=%d cut_after=%.3f", c, d, ok,
               ok ? cut_after(d, last, 3000) : -1);
    } else if (strcmp(what, "fcntl_dupfd") == 0) {
        int c = tcp();
        int d = fcntl(c, F_DUPFD_CLOEXEC, 20);
        ok = busy(&d, 1, 1.5, &last);
        close(c);
        printf(" c=%d d=%d busy_ok=%d cut_after=%.3f", c, d, ok,
               ok ? cut_after(d, last, 3000) : -1);
    } else if (strcmp(what, "dup_close_both") == 0) {
        /* Closing both untracks it: a connection the shim never saw made
         * that takes the original's number is left alone. */
        int c = tcp();
        int d = dup(c);
        close(c);
        close(d);
        int e = tcp_unseen();
        printf(" c=%d d=%d e=%d", c, d, e);
        ok = e == c;
        printf(" same_fd=%d not_cut=%d", ok, ok && !ended_within(e, 1200));
    }
    printf("\n");
    return 0;
}
"""

SCENARIOS = ["sysclose", "sysclose_unseen", "close_range", "close_range_raw", "dup2", "dup",
             "fcntl_dupfd", "dup_close_both"]


def _fields(line):
    return dict(re.findall(r"(\w+)=([-\w.,]+)", line))


def test_fd_reuse_and_dup():
    """A C program under the shim (limit 500ms), one process per scenario:
    syscall(SYS_close) then a new connection on the same number; the same
    with a connection the shim never saw made; close_range (libc and raw);
    dup2 onto a tracked fd; dup and fcntl(F_DUPFD_CLOEXEC) (activity on the
    copy counts, closing the original keeps it tracked); dup + closing both."""
    prog = compile_c(FD_PROG, "fdreuse")
    echo = EchoServer()
    procs = [(name, spawn([prog, str(echo.port), name],
                          env={"TCPKEEP_IDLE_TIMEOUT": "%dms" % int(LIMIT * 1000)}))
             for name in SCENARIOS]
    problems, summary = [], []
    for name, p in procs:
        try:
            out, err = p.communicate(timeout=15)
        except Exception:  # noqa: B902 (timeout: report it)
            problems.append("%s: did not finish" % name)
            continue
        line = out.strip()
        f = _fields(line)
        if p.returncode != 0 or not line.startswith(name + ":"):
            problems.append("%s: status %s, output %r, stderr %r"
                            % (name, p.returncode, line, err[-300:]))
            continue
        if "same_fd" in f:
            if f["same_fd"] != "1":
                problems.append("%s: the fd number was not reused (%s)" % (name, line))
            elif f.get("not_cut") != "1":
                problems.append("%s: a connection the shim never tracked was cut (%s)"
                                % (name, line))
            else:
                summary.append("%s kept" % name)
            continue
        if f.get("busy_ok") != "1":
            problems.append("%s: the busy connection was cut (%s)" % (name, line))
            continue
        cuts = [float(f[k]) for k in ("cut_after", "cut_after2") if k in f]
        for c in cuts:
            if not (LIMIT <= c <= LIMIT + 0.5):
                problems.append("%s: idle cut %s s after the last byte, expected %.1f..%.1f "
                                "(%s)" % (name, "never" if c < 0 else "%.3f" % c, LIMIT,
                                          LIMIT + 0.5, line))
        summary.append("%s kept, cut %s" % (name, "/".join("%.3f" % c for c in cuts)))
    echo.stop()
    if problems:
        raise Fail("; ".join(problems))
    return "; ".join(summary) + " (limit %g s)" % LIMIT


SIGNAL_PROG = C_COMMON + r"""
#include <sys/time.h>

static struct sockaddr_in peer;
static int tracked = -1;
static volatile sig_atomic_t handler_writes, handler_errno_changed;

/* The self-pipe style: write to a tracked socket from a signal handler,
 * possibly interrupting the shim's own cold path in the main thread. */
static void on_alarm(int s)
{
    (void)s;
    int e = errno;
    errno = 4242;
    char c = 's';
    if (write(tracked, &c, 1) == 1)
        handler_writes++;
    char buf[64];
    while (recv(tracked, buf, sizeof(buf), MSG_DONTWAIT) > 0)
        ;
    if (errno != 4242 && errno != EAGAIN)
        handler_errno_changed++;
    errno = e;
}

static int tcp(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    while (fd >= 0 && connect(fd, (struct sockaddr *)&peer, sizeof(peer)) != 0) {
        if (errno != EINTR && errno != EALREADY && errno != EINPROGRESS) {
            if (errno == EISCONN)
                break;
            perror("connect");
            exit(2);
        }
        usleep(1000);
    }
    return fd;
}

int main(int argc, char **argv)
{
    (void)argc;
    peer.sin_family = AF_INET;
    peer.sin_port = htons((unsigned short)atoi(argv[1]));
    inet_pton(AF_INET, "127.0.0.1", &peer.sin_addr);
    tracked = tcp();
    struct sigaction act = { 0 };
    act.sa_handler = on_alarm;
    act.sa_flags = SA_RESTART;
    sigaction(SIGALRM, &act, NULL);
    struct itimerval it = { { 0, 1000 }, { 0, 1000 } };   /* every 1 ms */
    setitimer(ITIMER_REAL, &it, NULL);
    /* Meanwhile the main thread churns the cold path: socket, connect,
     * dup, close, all taking the shim's table lock. */
    double end = now() + 1.5;
    long loops = 0;
    while (now() < end) {
        int s = tcp();
        int d = dup(s);
        char c = 'm';
        while (write(d, &c, 1) < 0 && errno == EINTR)
            ;
        while (read(s, &c, 1) < 0 && errno == EINTR)
            ;
        close(d);
        close(s);
        loops++;
        /* A few hundred connections: spare the ephemeral ports. (usleep
         * returns early at each signal.) */
        double until = now() + 0.005;
        while (now() < until)
            usleep(1000);
    }
    struct itimerval off = { { 0, 0 }, { 0, 0 } };
    setitimer(ITIMER_REAL, &off, NULL);
    /* The handler's writes kept `tracked` busy; now it idles and is cut. */
    double last = now();
    char buf[64];
    struct pollfd p = { tracked, POLLIN, 0 };
    double cut = -1;
    while (poll(&p, 1, 3000) > 0) {
        double t = now();
        ssize_t n = read(tracked, buf, sizeof(buf));
        if (n <= 0) {
            cut = now() - last;
            break;
        }
        last = t;
    }
    printf("loops=%ld handler_writes=%d errno_changed=%d cut_after=%.3f\n", loops,
           (int)handler_writes, (int)handler_errno_changed, cut);
    return 0;
}
"""


@timeout(20)
def test_signal_handler_io():
    """A signal handler writes to a tracked socket every 1 ms while the main
    thread makes, dups and closes connections for 1.5 s (limit 300ms): no
    deadlock, no crash, errno kept in the handler, the handler's socket is
    kept while busy and cut on time once idle."""
    prog = compile_c(SIGNAL_PROG, "sighandler")
    echo = EchoServer()
    try:
        rc, out, err = run([prog, str(echo.port)], env={"TCPKEEP_IDLE_TIMEOUT": "300ms"},
                           limit=12)
    finally:
        echo.stop()
    f = _fields(out)
    if rc != 0 or "cut_after" not in f:
        raise Fail("status %s (crash or deadlock?), stdout %r, stderr %r"
                   % (rc, out[-300:], err[-300:]))
    check(int(f["loops"]) > 20 and int(f["handler_writes"]) > 100,
          "too little happened: %s" % out.strip())
    check(f["errno_changed"] == "0", "errno changed inside the handler: %s" % out.strip())
    cut = float(f["cut_after"])
    check(0.3 <= cut <= 0.8, "the handler's socket: cut %s after going idle, expected "
          "0.3..0.8 s (%s)" % ("never" if cut < 0 else "%.3f s" % cut, out.strip()))
    return "%s connections made and closed under %s handler writes; handler's socket cut " \
        "%.3f s after going idle (limit 0.3 s)" % (f["loops"], f["handler_writes"], cut)
