/* Bulk transfer over loopback TCP in 64 KiB calls.
 *
 *   bulk --api send|writev --seconds S [--chunk BYTES]
 *
 * A sender thread sends for S seconds with send() (or writev() of four
 * iovecs), then shuts down its side; a receiver thread reads with recv()
 * (or readv() of four iovecs) until end-of-file. Prints the throughput the
 * receiver saw. Both ends live in this process: every call is an
 * interposed call on a tracked socket under the preload. */
#include <pthread.h>
#include <sys/uio.h>

#include "common.h"

#define IOVS 4

struct side {
    int fd;
    int cpu; /* >= 0: pin the thread to this CPU */
    int use_vec;
    size_t chunk;
    double seconds;
    uint64_t bytes, elapsed_ns, calls;
};

static pthread_barrier_t start_barrier;

static void pin(int cpu)
{
    if (cpu < 0)
        return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

static void *sender(void *arg)
{
    struct side *s = arg;
    char *buf = malloc(s->chunk);
    if (!buf)
        die("malloc");
    memset(buf, 'b', s->chunk);
    pin(s->cpu);
    struct iovec iov[IOVS];
    for (int i = 0; i < IOVS; i++) {
        iov[i].iov_base = buf + i * (s->chunk / IOVS);
        iov[i].iov_len = s->chunk / IOVS;
    }
    pthread_barrier_wait(&start_barrier);
    uint64_t t0 = now_ns(), limit = (uint64_t)(s->seconds * 1e9);
    while (now_ns() - t0 < limit) {
        ssize_t r = s->use_vec ? writev(s->fd, iov, IOVS) : send(s->fd, buf, s->chunk, 0);
        if (r <= 0)
            die("send");
        s->bytes += (uint64_t)r;
        s->calls++;
        /* A short write leaves the rest for the next call: same cost either way. */
    }
    shutdown(s->fd, SHUT_WR);
    free(buf);
    return NULL;
}

static void *receiver(void *arg)
{
    struct side *s = arg;
    char *buf = malloc(s->chunk);
    if (!buf)
        die("malloc");
    pin(s->cpu);
    struct iovec iov[IOVS];
    for (int i = 0; i < IOVS; i++) {
        iov[i].iov_base = buf + i * (s->chunk / IOVS);
        iov[i].iov_len = s->chunk / IOVS;
    }
    pthread_barrier_wait(&start_barrier);
    uint64_t t0 = now_ns();
    for (;;) {
        ssize_t r = s->use_vec ? readv(s->fd, iov, IOVS) : recv(s->fd, buf, s->chunk, 0);
        if (r < 0)
            die("recv");
        if (r == 0)
            break;
        s->bytes += (uint64_t)r;
        s->calls++;
    }
    s->elapsed_ns = now_ns() - t0;
    free(buf);
    return NULL;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *api = arg_str(argc, argv, "--api", "send");
    double seconds = arg_double(argc, argv, "--seconds", 1.0);
    long chunk = arg_long(argc, argv, "--chunk", 65536);
    if (seconds <= 0 || seconds > 600 || chunk < IOVS || chunk > (64L << 20))
        die("--seconds (0, 600], --chunk 4..64M");
    int use_vec = strcmp(api, "writev") == 0;
    if (!use_vec && strcmp(api, "send") != 0)
        die("--api: send or writev, not \"%s\"", api);

    int port;
    int lfd = listen_tcp(0, 16, &port);
    struct side snd = { .use_vec = use_vec, .chunk = (size_t)chunk, .seconds = seconds };
    struct side rcv = snd;
    long pin_mode = arg_long(argc, argv, "--pin", -1); /* -1 none, 0 same CPU, 1 two CPUs */
    snd.cpu = pin_mode >= 0 ? 0 : -1;
    rcv.cpu = pin_mode == 0 ? 0 : pin_mode == 1 ? 1 : -1;
    snd.fd = connect_tcp(port, 0);
    if (snd.fd < 0)
        die("connect");
    rcv.fd = accept(lfd, NULL, NULL);
    if (rcv.fd < 0)
        die("accept");
    pthread_barrier_init(&start_barrier, NULL, 3);
    pthread_t ts, tr;
    pthread_create(&tr, NULL, receiver, &rcv);
    pthread_create(&ts, NULL, sender, &snd);
    pthread_barrier_wait(&start_barrier);
    uint64_t cpu0 = cpu_ns();
    pthread_join(ts, NULL);
    pthread_join(tr, NULL);
    uint64_t cpu = cpu_ns() - cpu0;
    close(snd.fd);
    close(rcv.fd);
    close(lfd);
    double mbps = (double)rcv.bytes / ((double)rcv.elapsed_ns / 1e9) / 1e6;
    printf("{\"api\": \"%s\", \"MBps\": %.1f, \"cpu_ns_per_MB\": %.1f, \"bytes\": %llu, "
           "\"send_calls\": %llu, \"recv_calls\": %llu}\n",
           api, mbps, rcv.bytes ? (double)cpu / ((double)rcv.bytes / 1e6) : 0.0,
           (unsigned long long)rcv.bytes, (unsigned long long)snd.calls,
           (unsigned long long)rcv.calls);
    return 0;
}
