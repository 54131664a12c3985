/* A short idle cut, for running under valgrind with the shim preloaded
 * (make check-valgrind):
 *
 *   idle_pair LIMIT_MS
 *
 * With TCPKEEP_IDLE_TIMEOUT=LIMIT_MS set, it makes a listener, connects to
 * it and accepts (both ends are tracked), moves data both ways through
 * several of the interposed calls, dups and closes copies, then leaves the
 * pair idle and waits for the shim's watchdog to shut both ends down: each
 * end must read end-of-file no earlier than the limit (and within a bound
 * that allows for valgrind's slowness). Exit status 0 when all went as
 * expected, 1 otherwise (with a line on stderr saying what). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define SLACK_S 10.0 /* valgrind runs everything ~20-50x slower */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    fprintf(stderr, "idle_pair: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* Sends n bytes on `a` with one call of the given kind, reads them on `b`. */
static void exchange(int a, int b, int kind)
{
    char out[16] = "tcpkeep-valgrnd", in[16];
    ssize_t n;
    struct iovec iov = { out, sizeof(out) };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
    switch (kind) {
    case 0: n = write(a, out, sizeof(out)); break;
    case 1: n = send(a, out, sizeof(out), 0); break;
    case 2: n = writev(a, &iov, 1); break;
    default: n = sendmsg(a, &msg, 0); break;
    }
    if (n != (ssize_t)sizeof(out))
        die("send");
    size_t got = 0;
    while (got < sizeof(in)) {
        struct iovec riov = { in + got, sizeof(in) - got };
        struct msghdr rmsg = { .msg_iov = &riov, .msg_iovlen = 1 };
        switch (kind) {
        case 0: n = read(b, in + got, sizeof(in) - got); break;
        case 1: n = recv(b, in + got, sizeof(in) - got, 0); break;
        case 2: n = readv(b, &riov, 1); break;
        default: n = recvmsg(b, &rmsg, 0); break;
        }
        if (n <= 0)
            die("receive");
        got += (size_t)n;
    }
    if (memcmp(in, out, sizeof(in)) != 0) {
        fprintf(stderr, "idle_pair: the bytes came back different\n");
        exit(1);
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: idle_pair LIMIT_MS\n");
        return 2;
    }
    double limit = atoi(argv[1]) / 1000.0;

    int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (ls < 0)
        die("socket");
    struct sockaddr_in addr = { .sin_family = AF_INET };
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (bind(ls, (struct sockaddr *)&addr, sizeof(addr)) != 0 || listen(ls, 4) != 0 ||
        getsockname(ls, (struct sockaddr *)&addr, &len) != 0)
        die("listen");
    int cli = socket(AF_INET, SOCK_STREAM, 0);
    if (cli < 0 || connect(cli, (struct sockaddr *)&addr, sizeof(addr)) != 0)
        die("connect");
    struct sockaddr_in peer;
    len = sizeof(peer);
    int srv = accept4(ls, (struct sockaddr *)&peer, &len, SOCK_CLOEXEC);
    if (srv < 0)
        die("accept");

    /* Activity both ways, through each family of calls, and through copies
     * of the descriptors that are then closed (the cold path). */
    for (int kind = 0; kind < 4; kind++) {
        exchange(cli, srv, kind);
        exchange(srv, cli, kind);
    }
    int d = dup(srv);
    int f = fcntl(cli, F_DUPFD_CLOEXEC, 10);
    if (d < 0 || f < 0)
        die("dup");
    double idle_from = now(); /* just before the last bytes move */
    exchange(d, f, 0);
    close(d);
    close(f);

    /* Idle: both ends must see end-of-file once the watchdog cuts. */
    int fds[2] = { cli, srv };
    double ended[2] = { -1, -1 };
    while (ended[0] < 0 || ended[1] < 0) {
        double left = idle_from + limit + SLACK_S - now();
        if (left <= 0)
            break;
        struct pollfd p[2] = { { cli, POLLIN, 0 }, { srv, POLLIN, 0 } };
        int r = poll(p, 2, (int)(left * 1000) + 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            die("poll");
        for (int i = 0; i < 2; i++) {
            if (ended[i] >= 0 || !(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            char c;
            ssize_t n = read(fds[i], &c, 1);
            if (n > 0) {
                fprintf(stderr, "idle_pair: unexpected data on an idle connection\n");
                return 1;
            }
            ended[i] = now() - idle_from;
        }
    }
    close(cli);
    close(srv);
    close(ls);

    int ok = 1;
    for (int i = 0; i < 2; i++) {
        const char *who = i ? "server end" : "client end";
        if (ended[i] < 0) {
            fprintf(stderr, "idle_pair: %s not cut within %.1f s of going idle (limit %.3f s)\n",
                    who, limit + SLACK_S, limit);
            ok = 0;
        } else if (ended[i] < limit) {
            fprintf(stderr, "idle_pair: %s cut %.3f s after going idle: EARLIER than the "
                    "limit %.3f s\n", who, ended[i], limit);
            ok = 0;
        }
    }
    if (ok)
        printf("idle_pair: both ends cut, %.3f and %.3f s after going idle (limit %.3f s)\n",
               ended[0], ended[1], limit);
    return ok ? 0 : 1;
}
