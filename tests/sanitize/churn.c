/* Connection churn for the sanitizer builds (make check-tsan, check-asan):
 *
 *   churn SECONDS THREADS
 *
 * Run with the shim preloaded and a tiny TCPKEEP_IDLE_TIMEOUT (5ms). Each
 * thread makes loopback connections (connect and accept: both ends
 * tracked), moves a byte, keeps the last RING pairs open and idle, and
 * closes the oldest pair as it makes a new one, with a random pause of up
 * to 4 ms. So the shim's cold path (socket, connect, accept, close, record
 * reuse) runs on several threads at the very moments the watchdog thread
 * checks and cuts the idle pairs: what the integration tests only brush.
 * A pair may be cut before it is used or closed (EOF, EPIPE): that is the
 * point, and not an error. Exit status 0 unless a call that must not fail does. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RING 8
#define MAX_THREADS 16

static struct sockaddr_in addr;
static int ls;
static double secs;
static pthread_mutex_t pairing = PTHREAD_MUTEX_INITIALIZER;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *worker(void *arg)
{
    unsigned seed = (unsigned)(size_t)arg;
    int ring[RING][2];
    for (int i = 0; i < RING; i++)
        ring[i][0] = ring[i][1] = -1;
    long made = 0;
    double end = now() + secs;
    for (int i = 0; now() < end; i = (i + 1) % RING, made++) {
        if (ring[i][0] >= 0) {
            close(ring[i][0]);
            close(ring[i][1]);
        }
        int c = socket(AF_INET, SOCK_STREAM, 0);
        if (c < 0) {
            perror("churn: socket");
            exit(1);
        }
        /* connect and accept under one lock: this thread accepts its own. */
        pthread_mutex_lock(&pairing);
        if (connect(c, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
            perror("churn: connect");
            exit(1);
        }
        int s = accept(ls, NULL, NULL);
        pthread_mutex_unlock(&pairing);
        if (s < 0) {
            perror("churn: accept");
            exit(1);
        }
        char b = 'x';
        if (write(c, &b, 1) == 1 && read(s, &b, 1) < 0) {
            perror("churn: read");
            exit(1);
        }
        ring[i][0] = c;
        ring[i][1] = s;
        usleep((useconds_t)(rand_r(&seed) % 4000));
    }
    for (int i = 0; i < RING; i++)
        if (ring[i][0] >= 0) {
            close(ring[i][0]);
            close(ring[i][1]);
        }
    return (void *)made;
}

int main(int argc, char **argv)
{
    if (argc != 3 || atoi(argv[2]) < 1 || atoi(argv[2]) > MAX_THREADS) {
        fprintf(stderr, "usage: churn SECONDS THREADS (1..%d)\n", MAX_THREADS);
        return 2;
    }
    secs = atof(argv[1]);
    int nthreads = atoi(argv[2]);
    signal(SIGPIPE, SIG_IGN); /* a write to a pair cut a moment ago: EPIPE */
    ls = socket(AF_INET, SOCK_STREAM, 0);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (ls < 0 || bind(ls, (struct sockaddr *)&addr, sizeof(addr)) != 0 ||
        listen(ls, 64) != 0 || getsockname(ls, (struct sockaddr *)&addr, &len) != 0) {
        perror("churn: listen");
        return 1;
    }
    pthread_t t[MAX_THREADS];
    for (int i = 0; i < nthreads; i++)
        if (pthread_create(&t[i], NULL, worker, (void *)(size_t)(i + 1)) != 0) {
            fprintf(stderr, "churn: pthread_create failed\n");
            return 1;
        }
    long total = 0;
    for (int i = 0; i < nthreads; i++) {
        void *made;
        pthread_join(t[i], &made);
        total += (long)made;
    }
    close(ls);
    printf("churn: %ld connections made and closed by %d threads in %g s\n", total, nthreads,
           secs);
    return 0;
}
