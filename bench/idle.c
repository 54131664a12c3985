/* Many idle connections.
 *
 *   idle server --expect N [--stamp] [--max-seconds S]
 *       Listens on 127.0.0.1 (a free port, printed as "port P"), accepts N
 *       connections and keeps them open doing nothing ("accepted K" every
 *       10,000 and at N). With --stamp, once all N are in, writes to each
 *       one 8 bytes: CLOCK_MONOTONIC just before the write. That write is the
 *       connection's last activity: from then on it is idle, and all N come
 *       due within the few milliseconds the loop takes. Then waits to be
 *       killed (or S seconds, a safety net).
 *   idle client --port P --count N [--addrs K] [--addr-base B]
 *               [--limit-ms L --wait-s W]
 *       Never under the preload. Connects N times from 127.0.0.B ..
 *       127.0.0.(B+K-1) (bind before connect, so that each source address
 *       has its own ephemeral ports), prints "connected N", then either
 *       waits for end-of-file on stdin (no --limit-ms), or reads each
 *       server stamp and the end-of-file that follows, for at most L ms + W
 *       s, and prints as JSON how late each end-of-file came after
 *       stamp + L. Connections close with RST (SO_LINGER 0) so that nothing
 *       lingers in TIME_WAIT.
 * Both raise RLIMIT_NOFILE as needed (the hard limit too, as root). */
#include <fcntl.h>
#include <signal.h>
#include <sys/epoll.h>

#include "common.h"

static int server(int argc, char **argv)
{
    long expect = arg_long(argc, argv, "--expect", 1000);
    long max_s = arg_long(argc, argv, "--max-seconds", 300);
    int stamp = 0;
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--stamp") == 0)
            stamp = 1;
    if (expect < 1 || expect > 1000000)
        die("--expect 1..1000000");
    alarm((unsigned)max_s);
    raise_nofile((rlim_t)expect + 1024);
    int *fds = malloc((size_t)expect * sizeof(int));
    if (!fds)
        die("malloc");
    int port;
    int lfd = listen_tcp(0, 4096, &port);
    printf("port %d\n", port);
    long n = 0;
    while (n < expect) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            printf("error accept after %ld: %s\n", n, strerror(errno));
            break;
        }
        fds[n++] = fd;
        if (n % 10000 == 0 || n == expect)
            printf("accepted %ld\n", n);
    }
    if (stamp) {
        uint64_t first = now_ns(), t = first;
        for (long i = 0; i < n; i++) {
            t = now_ns();
            if (write(fds[i], &t, sizeof(t)) != (ssize_t)sizeof(t))
                printf("error stamp %ld: %s\n", i, strerror(errno));
        }
        printf("stamped %ld in %.3f ms\n", n, (double)(t - first) / 1e6);
    }
    for (;;)
        pause();
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static int client(int argc, char **argv)
{
    int port = (int)arg_long(argc, argv, "--port", 0);
    long count = arg_long(argc, argv, "--count", 1000);
    int addrs = (int)arg_long(argc, argv, "--addrs", 8);
    int addr_base = (int)arg_long(argc, argv, "--addr-base", 2);
    long limit_ms = arg_long(argc, argv, "--limit-ms", -1);
    double wait_s = arg_double(argc, argv, "--wait-s", 5);
    long max_s = arg_long(argc, argv, "--max-seconds", 300);
    if (port <= 0 || port > 65535 || count < 1 || count > 1000000 || addrs < 1 ||
        addr_base < 2 || addr_base + addrs > 255)
        die("--port 1..65535, --count 1..1000000, 127.0.0.--addr-base .. +--addrs in 2..254");
    alarm((unsigned)max_s);
    raise_nofile((rlim_t)count + 1024);
    int *fds = malloc((size_t)count * sizeof(int));
    if (!fds)
        die("malloc");
    struct linger lg = { 1, 0 };
    uint64_t t0 = now_ns();
    long n = 0;
    for (; n < count; n++) {
        int fd = -1;
        for (int attempt = 0; attempt < 3 && fd < 0; attempt++)
            fd = connect_tcp(port, addr_base + (int)(n % addrs));
        if (fd < 0) {
            printf("error connect after %ld: %s\n", n, strerror(errno));
            break;
        }
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        fds[n] = fd;
    }
    printf("connected %ld in %.3f s\n", n, (double)(now_ns() - t0) / 1e9);
    fflush(stdout);
    if (limit_ms < 0) { /* hold until the driver closes our stdin */
        char c;
        while (read(0, &c, 1) > 0)
            ;
        return 0;
    }

    /* Measure: each connection first carries the server's stamp, then ends. */
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1");
    uint64_t *stamp = calloc((size_t)n, sizeof(uint64_t));
    unsigned char *got = calloc((size_t)n, 1); /* stamp bytes received */
    int64_t *late = malloc((size_t)n * sizeof(int64_t));
    if (!stamp || !got || !late)
        die("calloc");
    for (long i = 0; i < n; i++) {
        fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK);
        struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP, .data.u64 = (uint64_t)i };
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev) != 0)
            die("epoll_ctl");
    }
    long ended = 0, resets = 0, early = 0;
    uint64_t limit_ns = (uint64_t)limit_ms * 1000000ULL, first_stamp = UINT64_MAX, last_stamp = 0;
    uint64_t deadline = now_ns() + limit_ns + (uint64_t)(wait_s * 1e9) + 5000000000ULL;
    struct epoll_event evs[1024];
    while (ended < n && now_ns() < deadline) {
        int k = epoll_wait(ep, evs, 1024, 100);
        if (k < 0 && errno != EINTR)
            die("epoll_wait");
        for (int j = 0; j < k; j++) {
            long i = (long)evs[j].data.u64;
            for (;;) {
                unsigned char buf[64];
                ssize_t r = read(fds[i], buf, sizeof(buf));
                if (r > 0) {
                    for (ssize_t b = 0; b < r && got[i] < 8; b++)
                        ((unsigned char *)&stamp[i])[got[i]++] = buf[b];
                    continue;
                }
                if (r < 0 && (errno == EAGAIN || errno == EINTR))
                    break;
                uint64_t t = now_ns(); /* end-of-file or reset: the cut reached us */
                if (r < 0)
                    resets++;
                if (got[i] < 8) {
                    early++; /* ended before the stamp: not the idle cut */
                    late[ended++] = INT64_MAX;
                } else {
                    late[ended++] = (int64_t)(t - stamp[i]) - (int64_t)limit_ns;
                    if (stamp[i] < first_stamp)
                        first_stamp = stamp[i];
                    if (stamp[i] > last_stamp)
                        last_stamp = stamp[i];
                }
                epoll_ctl(ep, EPOLL_CTL_DEL, fds[i], NULL);
                break;
            }
        }
    }
    qsort(late, (size_t)ended, sizeof(int64_t), cmp_i64);
    long missing = n - ended;
    double ms = 1e6;
#define PCT(p) (ended ? (double)late[(size_t)((double)(ended - 1) * (p))] / ms : 0.0)
    printf("{\"count\": %ld, \"ended\": %ld, \"missing\": %ld, \"before_stamp\": %ld, "
           "\"resets\": %ld, \"stamp_spread_ms\": %.3f, \"late_min_ms\": %.3f, "
           "\"late_p50_ms\": %.3f, \"late_p99_ms\": %.3f, \"late_max_ms\": %.3f}\n",
           n, ended, missing, early, resets,
           last_stamp >= first_stamp ? (double)(last_stamp - first_stamp) / ms : 0.0,
           ended ? (double)late[0] / ms : 0.0, PCT(0.5), PCT(0.99),
           ended ? (double)late[ended - 1] / ms : 0.0);
    return 0;
}

int main(int argc, char **argv)
{
    return server_client_main(argc, argv, server, client,
                              "idle server --expect N [--stamp] | idle client --port P --count N");
}
