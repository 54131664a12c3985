/* Small helpers shared by the benchmark programs. Every program prints one
 * line of JSON (or "key value" progress lines) for bench/run.py to read.
 * Loopback only: every address here is in 127.0.0.0/8. */
#ifndef TKB_COMMON_H
#define TKB_COMMON_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* CPU time (user + system) of the whole process so far. */
static inline uint64_t cpu_ns(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ((uint64_t)ru.ru_utime.tv_sec + (uint64_t)ru.ru_stime.tv_sec) * 1000000000ULL +
           ((uint64_t)ru.ru_utime.tv_usec + (uint64_t)ru.ru_stime.tv_usec) * 1000ULL;
}

__attribute__((noreturn, format(printf, 1, 2))) static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "bench: ");
    vfprintf(stderr, fmt, ap);
    if (errno)
        fprintf(stderr, ": %s", strerror(errno));
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

/* A listening TCP socket on 127.0.0.1, port chosen by the kernel when
 * port == 0; *port_out gets the port. */
static inline int listen_tcp(int port, int backlog, int *port_out)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        die("socket");
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0)
        die("bind 127.0.0.1:%d", port);
    if (listen(fd, backlog) != 0)
        die("listen");
    socklen_t len = sizeof(a);
    if (getsockname(fd, (struct sockaddr *)&a, &len) != 0)
        die("getsockname");
    if (port_out)
        *port_out = ntohs(a.sin_port);
    return fd;
}

/* A connected TCP socket to 127.0.0.1:port; from 127.0.0.<src_host> when
 * src_host > 0 (bind before connect, port left to connect()). */
static inline int connect_tcp(int port, int src_host)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    if (src_host > 0) {
        int one = 1;
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
        struct sockaddr_in s = { .sin_family = AF_INET };
        s.sin_addr.s_addr = htonl(0x7f000000u | (uint32_t)src_host);
        if (bind(fd, (struct sockaddr *)&s, sizeof(s)) != 0) {
            int e = errno;
            close(fd);
            errno = e;
            return -1;
        }
    }
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

static inline void set_nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* Raise RLIMIT_NOFILE to n (the hard limit too, which needs root). */
static inline void raise_nofile(rlim_t n)
{
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur >= n)
        return;
    struct rlimit want = { n, rl.rlim_max > n ? rl.rlim_max : n };
    if (setrlimit(RLIMIT_NOFILE, &want) != 0) {
        want.rlim_cur = rl.rlim_max; /* not root: as far as the hard limit goes */
        want.rlim_max = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &want);
    }
}

static inline long arg_long(int argc, char **argv, const char *name, long dflt)
{
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0) {
            char *end;
            errno = 0;
            long v = strtol(argv[i + 1], &end, 10);
            if (errno || *end || end == argv[i + 1])
                die("%s: bad number \"%s\"", name, argv[i + 1]);
            return v;
        }
    return dflt;
}

static inline double arg_double(int argc, char **argv, const char *name, double dflt)
{
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0) {
            char *end;
            errno = 0;
            double v = strtod(argv[i + 1], &end);
            if (errno || *end || end == argv[i + 1])
                die("%s: bad number \"%s\"", name, argv[i + 1]);
            return v;
        }
    return dflt;
}

static inline const char *arg_str(int argc, char **argv, const char *name, const char *dflt)
{
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return argv[i + 1];
    return dflt;
}

/* Taking turns with other benchmark processes ("baton" mode): the driver
 * joins the processes in a ring of pipes; a process runs one time slice of
 * its benchmark when the byte arrives on its `in` pipe, then passes the byte
 * on to the next one. With and without the shim then take turns every few
 * tens of milliseconds under the same conditions, instead of run after run.
 *   --baton IN,OUT --slices N --slice-seconds T */
struct baton {
    int in, out;  /* -1, -1: no ring, just N slices back to back */
    long slices;
    double slice_s;
};

static inline void baton_parse(int argc, char **argv, struct baton *b, double seconds)
{
    b->in = b->out = -1;
    b->slices = 1;
    b->slice_s = seconds;
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], "--baton") == 0 &&
            sscanf(argv[i + 1], "%d,%d", &b->in, &b->out) != 2)
            die("--baton IN,OUT");
    if (b->in >= 0) {
        b->slices = arg_long(argc, argv, "--slices", 20);
        b->slice_s = arg_double(argc, argv, "--slice-seconds", 0.025);
        if (b->slices < 1 || b->slices > 100000 || b->slice_s <= 0 || b->slice_s > 60)
            die("--slices 1..100000, --slice-seconds (0, 60]");
    }
}

#include <poll.h>

static inline void baton_take(const struct baton *b)
{
    if (b->in < 0)
        return;
    struct pollfd p = { .fd = b->in, .events = POLLIN };
    int r;
    do
        r = poll(&p, 1, 120000); /* bounded: a ring whose peer died */
    while (r < 0 && errno == EINTR);
    char c;
    if (r <= 0 || read(b->in, &c, 1) != 1)
        die("baton: no turn within 120 s");
}

static inline void baton_pass(const struct baton *b)
{
    if (b->out < 0)
        return;
    char c = 'b';
    ssize_t r;
    do
        r = write(b->out, &c, 1);
    while (r < 0 && errno == EINTR);
    /* EPIPE after the ring's last turn: nobody is left to take it. */
}

/* Read or write exactly n bytes (blocking fd); -1 on error or early EOF. */
static inline int write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t r = write(fd, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* main() of a program with two roles, `prog server ...` and `prog client
 * ...`: line-buffered JSON out, EPIPE instead of SIGPIPE, then the role. */
static inline int server_client_main(int argc, char **argv, int (*server)(int, char **),
                                     int (*client)(int, char **), const char *usage)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    if (argc >= 2 && strcmp(argv[1], "server") == 0)
        return server(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "client") == 0)
        return client(argc, argv);
    fprintf(stderr, "usage: %s\n", usage);
    return 2;
}

#endif
