/* Short connections, as a web server sees them: accept, close.
 *
 *   churn server [--max-seconds S]
 *       Listens on 127.0.0.1 (a free port, printed as "port N"), then
 *       accepts and at once closes every connection, until killed (or after
 *       S seconds, a safety net). Run under the preload or not.
 *   churn client --ports A[,B..] --seconds S [--slices N] [--threads T]
 *       Never under the preload. T threads each connect, wait for the
 *       server's end-of-file, close, again, for S seconds; from 127.0.0.2,
 *       127.0.0.3, ... one address per thread. With several servers, the
 *       N time slices go to them in turn (A, B, A, B, ...), so that they
 *       are measured under the same conditions. Prints connections per
 *       second for each server.
 *
 * The server closes first (its FIN tells the client the connection was
 * accepted and closed); the client then closes with RST (SO_LINGER 0), which
 * ends the server's side too, so that no TIME_WAIT state piles up in the
 * kernel from one run to the next. */
#include <pthread.h>
#include <signal.h>

#include "common.h"

static int server(int argc, char **argv)
{
    long max_s = arg_long(argc, argv, "--max-seconds", 300);
    alarm((unsigned)max_s);
    int port;
    int lfd = listen_tcp(0, 4096, &port);
    printf("port %d\n", port);
    fflush(stdout);
    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE || errno == ENFILE)
                continue;
            die("accept");
        }
        close(fd);
    }
}

#define MAX_PORTS 4

struct worker {
    int src;
    uint64_t conns[MAX_PORTS], errors;
};

static pthread_barrier_t slice_start, slice_end;
static int ports[MAX_PORTS], n_ports;
static long n_slices;
static _Atomic int cur_port;           /* index into ports, for this slice */
static _Atomic uint64_t slice_end_ns;

static void *client_main(void *arg)
{
    struct worker *w = arg;
    struct linger lg = { 1, 0 };
    for (long s = 0; s < n_slices; s++) {
        pthread_barrier_wait(&slice_start);
        int idx = atomic_load(&cur_port);
        uint64_t end = atomic_load(&slice_end_ns);
        while (now_ns() < end) {
            int fd = connect_tcp(ports[idx], w->src);
            if (fd < 0) {
                if (++w->errors > 1000)
                    die("connect keeps failing");
                usleep(1000);
                continue;
            }
            char c;
            ssize_t r;
            do
                r = read(fd, &c, 1);
            while (r < 0 && errno == EINTR);
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
            close(fd);
            w->conns[idx]++;
        }
        pthread_barrier_wait(&slice_end);
    }
    return NULL;
}

/* churn client --ports A[,B..] --seconds S [--slices N] [--threads T]:
 * the slices go to the servers in turn (A, B, A, B, ...), S seconds in all. */
static int client(int argc, char **argv)
{
    const char *list = arg_str(argc, argv, "--ports", arg_str(argc, argv, "--port", ""));
    double seconds = arg_double(argc, argv, "--seconds", 1.0);
    int threads = (int)arg_long(argc, argv, "--threads", 2);
    n_slices = arg_long(argc, argv, "--slices", 1);
    for (const char *p = list; *p && n_ports < MAX_PORTS;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v <= 0 || v > 65535)
            die("--ports: a comma-separated list of ports, not \"%s\"", list);
        ports[n_ports++] = (int)v;
        p = *end == ',' ? end + 1 : end;
    }
    if (n_ports == 0 || seconds <= 0 || seconds > 600 || threads < 1 || threads > 64 ||
        n_slices < n_ports || n_slices > 100000)
        die("--ports P[,P..], --seconds (0, 600], --threads 1..64, --slices >= ports");
    struct worker *ws = calloc((size_t)threads, sizeof(*ws));
    pthread_t *ts = calloc((size_t)threads, sizeof(*ts));
    if (!ws || !ts)
        die("calloc");
    pthread_barrier_init(&slice_start, NULL, (unsigned)threads + 1);
    pthread_barrier_init(&slice_end, NULL, (unsigned)threads + 1);
    for (int i = 0; i < threads; i++) {
        ws[i].src = 2 + i;
        pthread_create(&ts[i], NULL, client_main, &ws[i]);
    }
    uint64_t busy[MAX_PORTS] = { 0 }, slice_ns = (uint64_t)(seconds / (double)n_slices * 1e9);
    for (long s = 0; s < n_slices; s++) {
        int idx = (int)(s % n_ports);
        atomic_store(&cur_port, idx);
        uint64_t t0 = now_ns();
        atomic_store(&slice_end_ns, t0 + slice_ns);
        pthread_barrier_wait(&slice_start);
        pthread_barrier_wait(&slice_end);
        busy[idx] += now_ns() - t0;
    }
    uint64_t errors = 0, conns[MAX_PORTS] = { 0 };
    for (int i = 0; i < threads; i++) {
        pthread_join(ts[i], NULL);
        errors += ws[i].errors;
        for (int k = 0; k < n_ports; k++)
            conns[k] += ws[i].conns[k];
    }
    printf("{\"conns_per_s\": [");
    for (int k = 0; k < n_ports; k++)
        printf("%s%.1f", k ? ", " : "", busy[k] ? (double)conns[k] / ((double)busy[k] / 1e9) : 0.0);
    printf("], \"conns\": [");
    for (int k = 0; k < n_ports; k++)
        printf("%s%llu", k ? ", " : "", (unsigned long long)conns[k]);
    printf("], \"errors\": %llu}\n", (unsigned long long)errors);
    return 0;
}

int main(int argc, char **argv)
{
    return server_client_main(argc, argv, server, client,
                              "churn server | churn client --ports A[,B] --seconds S "
                              "[--slices N] [--threads T]");
}
