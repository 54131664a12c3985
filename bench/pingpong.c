/* 1-byte ping-pong over loopback TCP with blocking read/write.
 *
 *   pingpong --pairs P --seconds S [--kind tcp|pipe] [--with-socket]
 *            [--baton IN,OUT --slices N --slice-seconds T]
 *       P connected pairs, each served by two threads (a client that writes
 *       one byte and reads the echo, a server that reads and echoes), all
 *       pairs at once, for S seconds (or, taking turns with other processes,
 *       N slices of T seconds: see struct baton in common.h). Prints the
 *       round-trip time: P x time / round trips (all pairs together), and
 *       the process's CPU time per round trip. 4 interposed calls per round
 *       trip.
 *   pingpong --pairs P --iters N [--kind tcp|pipe] [--with-socket]
 *       The same, N round trips per pair: deterministic, for callgrind.
 *       `pipe`: each pair is two pipes (untracked descriptors) instead of a
 *       TCP connection; with --with-socket the process first makes a TCP
 *       connection (which the shim tracks, so that its fd table covers the
 *       pipes' numbers too), as a server's pipes and files live beside its
 *       sockets.
 *   pingpong --single --iters N [--kind tcp|pipe]
 *       One thread, no waiting on another: write(a) read(b) write(b) read(a)
 *       per iteration, 4 interposed calls per iteration. A single-threaded
 *       program, for callgrind (glibc's read and write take a shorter path
 *       while a process has only one thread).
 *
 * Both ends live in this process, so under the preload every call of the
 * loop is an interposed call on a tracked socket. */
#include <pthread.h>

#include "common.h"

#define WARMUP 2000
#define CHECK_EVERY 32

struct pair {
    int client, server;       /* the ends the threads write to */
    int client_in, server_in; /* and read from (the same for TCP) */
    uint64_t iters;
    pthread_t ct, st;
};

static pthread_barrier_t ready, slice_start, slice_end;
static long n_slices;
static long fixed_iters; /* > 0: this many round trips, no slices */
static _Atomic uint64_t slice_end_ns;

static void *server_main(void *arg)
{
    struct pair *p = arg;
    char c;
    for (;;) {
        ssize_t r = read(p->server_in, &c, 1);
        if (r <= 0)
            break;
        if (write(p->server, &c, 1) != 1)
            break;
    }
    return NULL;
}

static int round_trip(int out, int in)
{
    char c = 'x';
    if (write(out, &c, 1) != 1)
        return -1;
    if (read(in, &c, 1) != 1)
        return -1;
    return 0;
}

static void *client_main(void *arg)
{
    struct pair *p = arg;
    for (int i = 0; i < WARMUP; i++)
        if (round_trip(p->client, p->client_in) != 0)
            die("warm-up round trip");
    pthread_barrier_wait(&ready); /* every pair warmed up before the clock starts */
    uint64_t n = 0;
    if (fixed_iters > 0) {
        pthread_barrier_wait(&slice_start);
        for (long i = 0; i < fixed_iters; i++)
            if (round_trip(p->client, p->client_in) != 0)
                die("round trip");
        n = (uint64_t)fixed_iters;
        pthread_barrier_wait(&slice_end);
    } else {
        for (long s = 0; s < n_slices; s++) {
            pthread_barrier_wait(&slice_start);
            uint64_t end = atomic_load(&slice_end_ns);
            do {
                for (int i = 0; i < CHECK_EVERY; i++)
                    if (round_trip(p->client, p->client_in) != 0)
                        die("round trip");
                n += CHECK_EVERY;
            } while (now_ns() < end);
            pthread_barrier_wait(&slice_end);
        }
    }
    p->iters = n;
    /* The server thread sees end-of-file and returns. */
    if (p->client == p->client_in)
        shutdown(p->client, SHUT_WR);
    else
        close(p->client);
    return NULL;
}

static void make_pair(int lfd, int port, struct pair *p, int use_pipes)
{
    if (use_pipes) {
        int up[2], down[2];
        if (pipe(up) != 0 || pipe(down) != 0)
            die("pipe");
        p->client = up[1];
        p->server_in = up[0];
        p->server = down[1];
        p->client_in = down[0];
        return;
    }
    p->client = p->client_in = connect_tcp(port, 0);
    if (p->client < 0)
        die("connect");
    p->server = p->server_in = accept(lfd, NULL, NULL);
    if (p->server < 0)
        die("accept");
    set_nodelay(p->client);
    set_nodelay(p->server);
}

static int run_threads(int pairs, const struct baton *b, const char *kind, int with_socket)
{
    int use_pipes = strcmp(kind, "pipe") == 0;
    if (!use_pipes && strcmp(kind, "tcp") != 0)
        die("--kind: tcp or pipe, not \"%s\"", kind);
    int port = 0;
    int lfd = use_pipes && !with_socket ? -1 : listen_tcp(0, 128, &port);
    int side[2] = { -1, -1 };
    if (use_pipes && with_socket) { /* a tracked connection, idle meanwhile */
        side[0] = connect_tcp(port, 0);
        side[1] = accept(lfd, NULL, NULL);
        if (side[0] < 0 || side[1] < 0)
            die("connect");
        char c = 'x';
        if (write(side[0], &c, 1) != 1 || read(side[1], &c, 1) != 1)
            die("side connection");
    }
    struct pair *ps = calloc((size_t)pairs, sizeof(*ps));
    if (!ps)
        die("calloc");
    n_slices = b->slices;
    pthread_barrier_init(&ready, NULL, (unsigned)pairs + 1);
    pthread_barrier_init(&slice_start, NULL, (unsigned)pairs + 1);
    pthread_barrier_init(&slice_end, NULL, (unsigned)pairs + 1);
    for (int i = 0; i < pairs; i++)
        make_pair(lfd, port, &ps[i], use_pipes);
    for (int i = 0; i < pairs; i++) {
        pthread_create(&ps[i].st, NULL, server_main, &ps[i]);
        pthread_create(&ps[i].ct, NULL, client_main, &ps[i]);
    }
    pthread_barrier_wait(&ready);
    if (b->in >= 0)
        printf("ready\n"); /* set up and warmed up: the driver may start the ring */
    uint64_t busy = 0, cpu = 0;
    long slices = fixed_iters > 0 ? 1 : b->slices;
    for (long s = 0; s < slices; s++) {
        baton_take(b);
        uint64_t c0 = cpu_ns(), t0 = now_ns();
        atomic_store(&slice_end_ns, t0 + (uint64_t)(b->slice_s * 1e9));
        pthread_barrier_wait(&slice_start);
        pthread_barrier_wait(&slice_end);
        busy += now_ns() - t0;
        cpu += cpu_ns() - c0;
        baton_pass(b);
    }
    uint64_t total = 0;
    for (int i = 0; i < pairs; i++) {
        pthread_join(ps[i].ct, NULL);
        pthread_join(ps[i].st, NULL);
        total += ps[i].iters;
        if (ps[i].client != ps[i].client_in)
            close(ps[i].client_in);
        else
            close(ps[i].client);
        close(ps[i].server);
        if (ps[i].server_in != ps[i].server)
            close(ps[i].server_in);
    }
    if (lfd >= 0)
        close(lfd);
    if (side[0] >= 0) {
        close(side[0]);
        close(side[1]);
    }
    printf("{\"rtt_ns\": %.1f, \"cpu_ns_per_rt\": %.1f, \"round_trips\": %llu, "
           "\"pairs\": %d, \"kind\": \"%s\", \"slices\": %ld, \"seconds\": %.3f}\n",
           total ? pairs * (double)busy / (double)total : 0.0,
           total ? (double)cpu / (double)total : 0.0, (unsigned long long)total, pairs, kind,
           slices, (double)busy / 1e9);
    return 0;
}

static int run_single(long iters, const char *kind)
{
    int a, b, a_in, b_in; /* write to a -> read from a_in, ... */
    int lfd = -1;
    if (strcmp(kind, "tcp") == 0) {
        int port;
        lfd = listen_tcp(0, 16, &port);
        a = connect_tcp(port, 0);
        if (a < 0)
            die("connect");
        b = accept(lfd, NULL, NULL);
        if (b < 0)
            die("accept");
        set_nodelay(a);
        set_nodelay(b);
        a_in = b; /* a's bytes arrive at b */
        b_in = a;
    } else if (strcmp(kind, "pipe") == 0) {
        int p1[2], p2[2];
        if (pipe(p1) != 0 || pipe(p2) != 0)
            die("pipe");
        a = p1[1];
        a_in = p1[0];
        b = p2[1];
        b_in = p2[0];
    } else {
        die("--kind: tcp or pipe, not \"%s\"", kind);
    }
    char c = 'x';
    uint64_t t0 = now_ns();
    for (long i = 0; i < iters; i++) {
        if (write(a, &c, 1) != 1 || read(a_in, &c, 1) != 1 ||
            write(b, &c, 1) != 1 || read(b_in, &c, 1) != 1)
            die("single ping-pong");
    }
    uint64_t t = now_ns() - t0;
    printf("{\"kind\": \"%s\", \"iters\": %ld, \"calls\": %ld, \"ns_per_iter\": %.1f}\n", kind,
           iters, 4 * iters, iters ? (double)t / (double)iters : 0.0);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--single") == 0)
            return run_single(arg_long(argc, argv, "--iters", 20000),
                              arg_str(argc, argv, "--kind", "tcp"));
    int pairs = (int)arg_long(argc, argv, "--pairs", 1);
    double seconds = arg_double(argc, argv, "--seconds", 1.0);
    fixed_iters = arg_long(argc, argv, "--iters", 0);
    if (pairs < 1 || pairs > 256 || seconds <= 0 || seconds > 600 || fixed_iters < 0)
        die("--pairs 1..256, --seconds (0, 600], --iters >= 0");
    struct baton b;
    baton_parse(argc, argv, &b, seconds);
    int with_socket = 0;
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--with-socket") == 0)
            with_socket = 1;
    return run_threads(pairs, &b, arg_str(argc, argv, "--kind", "tcp"), with_socket);
}
