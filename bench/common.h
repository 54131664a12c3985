/* Small helpers shared by the benchmark programs. Every program prints one
 * line of JSON (or "key value" progress lines) for bench/run.py to read.
 * Loopback only: every address here is in 127.0.0.0/8. */
#ifndef TKB_COMMON_H
#define TKB_COMMON_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
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

#endif
