/* Short connections, as a web server sees them: accept, close.
 *
 *   churn server [--max-seconds S]
 *       Listens on 127.0.0.1 (a free port, printed as "port N"), then
 *       accepts and at once closes every connection, until killed (or after
 *       S seconds, a safety net). Run under the preload or not.
 *   churn client --port N --seconds S [--threads T]
 *       Never under the preload. T threads each connect, wait for the
 *       server's end-of-file, close, again, for S seconds; from 127.0.0.2,
 *       127.0.0.3, ... one address per thread. Prints connections per second.
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

struct worker {
    int port, src;
    double seconds;
    uint64_t conns, errors, elapsed_ns;
};

static pthread_barrier_t start_barrier;

static void *client_main(void *arg)
{
    struct worker *w = arg;
    pthread_barrier_wait(&start_barrier);
    uint64_t t0 = now_ns(), limit = (uint64_t)(w->seconds * 1e9), t = t0;
    while ((t = now_ns()) - t0 < limit) {
        int fd = connect_tcp(w->port, w->src);
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
        struct linger lg = { 1, 0 };
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        close(fd);
        w->conns++;
    }
    w->elapsed_ns = t - t0;
    return NULL;
}

static int client(int argc, char **argv)
{
    int port = (int)arg_long(argc, argv, "--port", 0);
    double seconds = arg_double(argc, argv, "--seconds", 1.0);
    int threads = (int)arg_long(argc, argv, "--threads", 2);
    if (port <= 0 || port > 65535 || seconds <= 0 || seconds > 600 || threads < 1 ||
        threads > 64)
        die("--port 1..65535, --seconds (0, 600], --threads 1..64");
    struct worker *ws = calloc((size_t)threads, sizeof(*ws));
    pthread_t *ts = calloc((size_t)threads, sizeof(*ts));
    if (!ws || !ts)
        die("calloc");
    pthread_barrier_init(&start_barrier, NULL, (unsigned)threads);
    for (int i = 0; i < threads; i++) {
        ws[i] = (struct worker){ .port = port, .src = 2 + i, .seconds = seconds };
        pthread_create(&ts[i], NULL, client_main, &ws[i]);
    }
    double rate = 0;
    uint64_t total = 0, errors = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(ts[i], NULL);
        rate += (double)ws[i].conns / ((double)ws[i].elapsed_ns / 1e9);
        total += ws[i].conns;
        errors += ws[i].errors;
    }
    printf("{\"conns_per_s\": %.1f, \"conns\": %llu, \"errors\": %llu}\n", rate,
           (unsigned long long)total, (unsigned long long)errors);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    if (argc >= 2 && strcmp(argv[1], "server") == 0)
        return server(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "client") == 0)
        return client(argc, argv);
    fprintf(stderr, "usage: churn server | churn client --port N --seconds S [--threads T]\n");
    return 2;
}
