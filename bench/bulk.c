/* Bulk transfer over loopback TCP in 64 KiB calls.
 *
 *   bulk --api send|writev --seconds S [--chunk BYTES]
 *        [--baton IN,OUT --slices N --slice-seconds T]
 *
 * A sender thread sends with send() (or writev() of four iovecs), a
 * receiver thread reads with recv() (or readv() of four iovecs), for S
 * seconds, or in N slices of T seconds taking turns with other processes
 * (struct baton in common.h): a slice ends when the receiver has everything
 * the sender sent, so that no work spills into another process's turn.
 * Prints the throughput and the process's CPU time per MB. Both ends live in
 * this process: every call is an interposed call on a tracked socket under
 * the preload. */
#include <pthread.h>
#include <sched.h>
#include <sys/uio.h>

#include "common.h"

#define IOVS 4

struct side {
    int fd;
    int use_vec;
    size_t chunk;
    _Atomic uint64_t bytes;
    uint64_t calls;
};

static struct side snd, rcv;
static pthread_barrier_t ready, slice_start, slice_end;

#define WARMUP_CALLS 256 /* lets TCP grow its buffers before the clock starts */
static long n_slices;
static _Atomic uint64_t slice_end_ns, warm_bytes;

static void *sender(void *arg)
{
    (void)arg;
    char *buf = malloc(snd.chunk);
    if (!buf)
        die("malloc");
    memset(buf, 'b', snd.chunk);
    struct iovec iov[IOVS];
    for (int i = 0; i < IOVS; i++) {
        iov[i].iov_base = buf + i * (snd.chunk / IOVS);
        iov[i].iov_len = snd.chunk / IOVS;
    }
    for (int i = 0; i < WARMUP_CALLS; i++) {
        ssize_t r = snd.use_vec ? writev(snd.fd, iov, IOVS) : send(snd.fd, buf, snd.chunk, 0);
        if (r <= 0)
            die("send");
        atomic_fetch_add(&snd.bytes, (uint64_t)r);
    }
    while (atomic_load(&rcv.bytes) < atomic_load(&snd.bytes))
        sched_yield();
    atomic_store(&warm_bytes, atomic_load(&snd.bytes));
    pthread_barrier_wait(&ready);
    for (long s = 0; s < n_slices; s++) {
        pthread_barrier_wait(&slice_start);
        uint64_t end = atomic_load(&slice_end_ns);
        while (now_ns() < end) {
            ssize_t r = snd.use_vec ? writev(snd.fd, iov, IOVS) : send(snd.fd, buf, snd.chunk, 0);
            if (r <= 0)
                die("send");
            atomic_fetch_add(&snd.bytes, (uint64_t)r);
            snd.calls++;
        }
        /* The slice ends when everything sent has been received. */
        while (atomic_load(&rcv.bytes) < atomic_load(&snd.bytes))
            sched_yield();
        pthread_barrier_wait(&slice_end);
    }
    shutdown(snd.fd, SHUT_WR);
    free(buf);
    return NULL;
}

static void *receiver(void *arg)
{
    (void)arg;
    char *buf = malloc(rcv.chunk);
    if (!buf)
        die("malloc");
    struct iovec iov[IOVS];
    for (int i = 0; i < IOVS; i++) {
        iov[i].iov_base = buf + i * (rcv.chunk / IOVS);
        iov[i].iov_len = rcv.chunk / IOVS;
    }
    for (;;) {
        ssize_t r = rcv.use_vec ? readv(rcv.fd, iov, IOVS) : recv(rcv.fd, buf, rcv.chunk, 0);
        if (r < 0)
            die("recv");
        if (r == 0)
            break;
        atomic_fetch_add(&rcv.bytes, (uint64_t)r);
        rcv.calls++;
    }
    free(buf);
    return NULL;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    const char *api = arg_str(argc, argv, "--api", "send");
    double seconds = arg_double(argc, argv, "--seconds", 1.0);
    long chunk = arg_long(argc, argv, "--chunk", 65536);
    if (seconds <= 0 || seconds > 600 || chunk < IOVS || chunk > (64L << 20))
        die("--seconds (0, 600], --chunk 4..64M");
    int use_vec = strcmp(api, "writev") == 0;
    if (!use_vec && strcmp(api, "send") != 0)
        die("--api: send or writev, not \"%s\"", api);
    struct baton b;
    baton_parse(argc, argv, &b, seconds);
    n_slices = b.slices;

    int port;
    int lfd = listen_tcp(0, 16, &port);
    snd.use_vec = rcv.use_vec = use_vec;
    snd.chunk = rcv.chunk = (size_t)chunk;
    snd.fd = connect_tcp(port, 0);
    if (snd.fd < 0)
        die("connect");
    rcv.fd = accept(lfd, NULL, NULL);
    if (rcv.fd < 0)
        die("accept");
    pthread_barrier_init(&ready, NULL, 2);
    pthread_barrier_init(&slice_start, NULL, 2);
    pthread_barrier_init(&slice_end, NULL, 2);
    pthread_t ts, tr;
    pthread_create(&tr, NULL, receiver, NULL);
    pthread_create(&ts, NULL, sender, NULL);
    pthread_barrier_wait(&ready);
    if (b.in >= 0)
        printf("ready\n"); /* set up and warmed up: the driver may start the ring */
    uint64_t busy = 0, cpu = 0;
    for (long s = 0; s < b.slices; s++) {
        baton_take(&b);
        uint64_t c0 = cpu_ns(), t0 = now_ns();
        atomic_store(&slice_end_ns, t0 + (uint64_t)(b.slice_s * 1e9));
        pthread_barrier_wait(&slice_start);
        pthread_barrier_wait(&slice_end);
        busy += now_ns() - t0;
        cpu += cpu_ns() - c0;
        baton_pass(&b);
    }
    pthread_join(ts, NULL);
    pthread_join(tr, NULL);
    close(snd.fd);
    close(rcv.fd);
    close(lfd);
    uint64_t bytes = atomic_load(&rcv.bytes) - atomic_load(&warm_bytes);
    double mb = (double)bytes / 1e6;
    printf("{\"api\": \"%s\", \"MBps\": %.1f, \"cpu_ns_per_MB\": %.1f, \"bytes\": %llu, "
           "\"send_calls\": %llu, \"recv_calls\": %llu, \"seconds\": %.3f}\n",
           api, busy ? mb / ((double)busy / 1e9) : 0.0, mb > 0 ? (double)cpu / mb : 0.0,
           (unsigned long long)bytes, (unsigned long long)snd.calls,
           (unsigned long long)rcv.calls, (double)busy / 1e9);
    return 0;
}
