"""The shim inside real processes: other preloads, unshare(CLONE_NEWUSER)
before any socket, a daemon that closes every descriptor."""
import os
import re
import subprocess

from helpers import (C_COMMON, EchoServer, Fail, Skip, check, compile_c, connect, cut_window,
                     timeout, expect_keepalive_timer, finish, free_port, lib, run, spawn, tmpdir,
                     wait_eof, wait_listen)

OTHER_PRELOADS = [
    ("libkeepalive", ["/usr/lib/libkeepalive.so", "/usr/lib/x86_64-linux-gnu/libkeepalive.so"]),
    ("jemalloc", ["/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"]),
    ("tcmalloc", ["/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
                  "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4"]),
]


def test_preload_stacking():
    """libtcpkeep with another preload (Debian's libkeepalive0, jemalloc,
    tcmalloc: those installed), in both orders: nc -l works, keepalive timer
    ~77 s, idle client cut on time (limit 1s)."""
    found = [(n, next(p for p in paths if os.path.isfile(p))) for n, paths in OTHER_PRELOADS
             if any(os.path.isfile(p) for p in paths)]
    if not found:
        raise Skip("none of libkeepalive0, libjemalloc2, libtcmalloc-minimal4 is installed")
    done = []
    for name, other in found:
        for order in ("first", "last"):
            pre = [other, lib()] if order == "first" else [lib(), other]
            port = free_port()
            srv = spawn(["nc", "-l", "127.0.0.1", str(port)], shim=False,
                        env={"LD_PRELOAD": " ".join(pre), "TCPKEEP_IDLE_TIMEOUT": "1s",
                             "TCPKEEP_KEEPIDLE": "77"},
                        stdout=subprocess.DEVNULL)
            wait_listen(port, proc=srv)
            s, t0 = connect(port)
            label = "%s %s" % (name, order)
            expect_keepalive_timer(port, s.getsockname()[1], 77, label)
            end, _, _ = wait_eof(s, 3.0)
            cut_window(end and end - t0, 1.0, "%s: idle client cut" % label)
            s.close()
            out, err = finish(srv)
            check(srv.returncode in (0, -9), "%s: nc exit status %s: %r"
                  % (label, srv.returncode, err[-300:]))
            check(not err.strip(), "%s: stderr %r" % (label, err[-300:]))
            done.append("%s %.3f s" % (label, end - t0))
    return "timer ~77 s and cut on time with " + ", ".join(done) + " (limit 1 s)"


UNSHARE_PROG = C_COMMON + r"""
#include <sched.h>

int main(int argc, char **argv)
{
    (void)argc;
    /* unshare(CLONE_NEWUSER) fails with EINVAL in a multithreaded process:
     * the shim must not have started a thread yet. */
    int r = unshare(CLONE_NEWUSER);
    printf("unshare=%s", r == 0 ? "ok" : strerrorname_np(errno));
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[1])) };
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    double t0 = now();
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        printf(" connect=%s\n", strerrorname_np(errno));
        return 0;
    }
    struct pollfd p = { fd, POLLIN, 0 };
    char c;
    double cut = -1;
    if (poll(&p, 1, 3000) > 0 && read(fd, &c, 1) <= 0)
        cut = now() - t0;
    printf(" cut_after=%.3f\n", cut);
    return 0;
}
"""


def test_unshare_newuser_before_sockets():
    """A process that calls unshare(CLONE_NEWUSER) before opening any socket
    (possible only while single-threaded) can, under the shim; its idle
    connection is then cut on time (limit 300ms)."""
    prog = compile_c(UNSHARE_PROG, "unshare")
    echo = EchoServer()
    try:
        rc, plain, err = run([prog, str(echo.port)], shim=False)
        if "unshare=ok" not in plain:
            raise Skip("unshare(CLONE_NEWUSER) fails here even without the shim: %s"
                       % plain.strip())
        rc, out, err = run([prog, str(echo.port)], env={"TCPKEEP_IDLE_TIMEOUT": "300ms"})
    finally:
        echo.stop()
    check(rc == 0 and "unshare=ok" in out,
          "under the shim: %r (status %s, stderr %r): the shim started a thread (or did "
          "something) before main" % (out.strip(), rc, err[-300:]))
    m = re.search(r"cut_after=(-?[\d.]+)", out)
    check(m, "no result: %r" % out)
    cut = float(m.group(1))
    msg = cut_window(cut if cut >= 0 else None, 0.3, "then its idle connection cut")
    return "unshare(CLONE_NEWUSER) ok under the shim; " + msg


DAEMON_PROG = C_COMMON + r"""
static struct sockaddr_in sa;

static double idle_conn(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    double t0 = now();
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
        return -2;
    struct pollfd p = { fd, POLLIN, 0 };
    char c;
    double cut = -1;
    if (poll(&p, 1, 3000) > 0 && read(fd, &c, 1) <= 0)
        cut = now() - t0;
    close(fd);
    return cut;
}

int main(int argc, char **argv)
{
    (void)argc;
    sa.sin_family = AF_INET;
    sa.sin_port = htons(atoi(argv[1]));
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    printf("first_cut=%.3f", idle_conn());
    /* The daemon idiom: close everything but stdio, then closefrom. */
    int closed = 0, ebadf = 0, other = 0;
    for (int fd = 3; fd < 1024; fd++) {
        if (close(fd) == 0)
            closed++;
        else if (errno == EBADF)
            ebadf++;
        else
            other++;
    }
    closefrom(3);
    printf(" closed=%d ebadf=%d other=%d", closed, ebadf, other);
    printf(" second_cut=%.3f\n", idle_conn());
    return 0;
}
"""


def test_daemon_closes_every_fd():
    """A daemon closes fds 3..1023 one by one, then closefrom(3), between
    two idle connections (limit 300ms, TCPKEEP_LOG=file at info): close()
    results are the same as without the shim, both connections are cut on
    time, and both cuts are in the log."""
    prog = compile_c(DAEMON_PROG, "daemon")
    log = os.path.join(tmpdir(), "tcpkeep.log")
    echo = EchoServer()
    try:
        rc0, plain, err0 = run([prog, str(echo.port)], shim=False)
        rc, out, err = run([prog, str(echo.port)], env={
            "TCPKEEP_IDLE_TIMEOUT": "300ms", "TCPKEEP_LOG": log, "TCPKEEP_LOG_LEVEL": "info"})
    finally:
        echo.stop()
    check(rc == 0 and "second_cut" in out, "status %s, stdout %r, stderr %r"
          % (rc, out, err[-300:]))
    f = dict(re.findall(r"(\w+)=(-?[\d.]+)", out))
    f0 = dict(re.findall(r"(\w+)=(-?[\d.]+)", plain))
    same = [k for k in ("closed", "ebadf", "other") if f.get(k) != f0.get(k)]
    check(not same, "close() results differ: with the shim %s, without %s"
          % ({k: f.get(k) for k in ("closed", "ebadf", "other")},
             {k: f0.get(k) for k in ("closed", "ebadf", "other")}))
    m1 = cut_window(float(f["first_cut"]) if float(f["first_cut"]) >= 0 else None, 0.3,
                    "first connection cut")
    m2 = cut_window(float(f["second_cut"]) if float(f["second_cut"]) >= 0 else None, 0.3,
                    "after closing every fd, the second cut")
    try:
        with open(log) as fh:
            lines = fh.read().splitlines()
    except OSError:
        lines = []
    cuts = [ln for ln in lines if "idle for" in ln]
    check(len(cuts) == 2, "expected 2 cut lines in the log, got %r" % lines)
    return "%s; %s; both logged; close() results as without the shim (%s closed, %s EBADF)" \
        % (m1, m2, f["closed"], f["ebadf"])


FORK_LOCK_PROG = r"""
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile int stop;

/* Churns the shim's cold path (its table lock) all the time. */
static void *churn(void *arg)
{
    (void)arg;
    while (!stop) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        int d = dup(fd);
        close(d);
        close(fd);
    }
    return NULL;
}

int main(void)
{
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, churn, NULL);
    int forks = 0, hung = 0, bad = 0;
    for (int i = 0; i < 100; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            /* The child takes the same lock: a lock copied while held
             * would hang it here. */
            int fd = socket(AF_INET, SOCK_STREAM, 0);
            int d = dup(fd);
            close(d);
            _exit(close(fd) == 0 ? 0 : 1);
        }
        forks++;
        int status = 0;
        for (int w = 0; w < 2000; w++) {      /* up to 2 s per child */
            pid_t r = waitpid(pid, &status, WNOHANG);
            if (r == pid)
                break;
            if (w == 1999) {
                hung++;
                kill(pid, SIGKILL);
                waitpid(pid, &status, 0);
            }
            struct timespec ts = { 0, 1000000 };
            nanosleep(&ts, NULL);
        }
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            bad++;
        if (hung)
            break;
    }
    stop = 1;
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    printf("forks=%d hung=%d bad=%d\n", forks, hung, bad);
    return 0;
}
"""


def test_fork_while_threads_hold_the_lock():
    """100 forks while two threads churn socket/dup/close (the shim's table
    lock): every child can take the lock and exits (no deadlock, no crash)."""
    prog = compile_c(FORK_LOCK_PROG, "forklock", extra=["-pthread"])
    rc, out, err = run([prog], env={"TCPKEEP_IDLE_TIMEOUT": "10s"}, limit=25)
    f = dict(re.findall(r"(\w+)=(\d+)", out))
    check(rc == 0 and f, "status %s, stdout %r, stderr %r" % (rc, out, err[-300:]))
    check(f["hung"] == "0", "a forked child deadlocked in the shim: %s" % out.strip())
    check(f["bad"] == "0", "forked children failed or crashed: %s" % out.strip())
    return "%s forks under lock churn, no child hung or failed" % f["forks"]


FORK_PROBE = r"""
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#define PAIRS 300
int main(void){
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    bind(l, (void*)&a, sizeof a); listen(l, 512);
    socklen_t al = sizeof a; getsockname(l, (void*)&a, &al);
    int maxfd = l;
    for (int i = 0; i < PAIRS; i++) {
        int c = socket(AF_INET, SOCK_STREAM, 0);
        connect(c, (void*)&a, sizeof a);
        int s = accept(l, NULL, NULL);
        if (s > maxfd) maxfd = s; if (c > maxfd) maxfd = c;
    }
    printf("parent's highest fd %d\n", maxfd); fflush(stdout);
    int leaks = 0, forks = 0;
    for (int round = 0; round < 3000 && leaks < 3; round++) {
        pid_t p = fork();
        if (p == 0) {
            int found = -1;
            /* The child's own watchdog (it has watched connections) holds
             * a dup for microseconds at a time; an inherited one would
             * stay open for good: look twice, 20 ms apart. */
            for (int fd = maxfd + 1; fd < maxfd + 16; fd++)
                if (fcntl(fd, F_GETFD) >= 0) {
                    usleep(20000);
                    if (fcntl(fd, F_GETFD) >= 0) { found = fd; break; }
                }
            if (found >= 0) {
                struct sockaddr_in ln, pn; socklen_t n1 = sizeof ln, n2 = sizeof pn;
                getsockname(found, (void*)&ln, &n1); getpeername(found, (void*)&pn, &n2);
                printf("child %d holds fd %d it never opened: a socket %d -> %d\n", getpid(), found,
                       ntohs(ln.sin_port), ntohs(pn.sin_port));
                fflush(stdout);
                _exit(1);
            }
            _exit(0);
        }
        int st; waitpid(p, &st, 0); forks++;
        if (WIFEXITED(st) && WEXITSTATUS(st) == 1) leaks++;
    }
    printf("%d forks, %d children inherited the watchdog's private dup\n", forks, leaks);
    return 0;
}
"""


@timeout(120)
def test_fork_child_gets_no_watchdog_dup():
    """The watchdog looks at a connection through a private dup. A fork()
    at that moment must not copy the dup into the child: the child could
    not close it (it is the shim's) and would keep the parent's connection
    open. 300 watched pairs polled every 0.5 s (TCPKEEP_HALF_CLOSED_TIMEOUT)
    while the parent forks 3,000 times: no child holds a descriptor above
    the parent's own. Before fork() waited for the dup, 3 in 571 did."""
    prog = compile_c(FORK_PROBE, "fork_probe")
    rc, out, err = run([prog], env={"TCPKEEP_HALF_CLOSED_TIMEOUT": "1s"}, limit=100)
    check(rc == 0, "status %s: %r %r" % (rc, out[-300:], err[-300:]))
    last = out.strip().splitlines()[-1]
    check(last.endswith(", 0 children inherited the watchdog's private dup"), out[-400:])
    return last
