/* The watchdog thread: sleeps until the earliest deadline, asks the kernel
 * about each connection that may be idle, and shuts down the idle ones.
 *
 * It touches the table only under its lock, and never acts on a descriptor
 * number directly: it dups the fd, checks that the dup is the socket it
 * tracked (SO_COOKIE), and shuts down the dup, so a number closed and
 * reused meanwhile is never hit. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"
#include "shim.h"
#include "sockopt.h"

#define TK_BATCH 256
#define TK_STACK_SIZE (128 * 1024)

static pthread_cond_t wake;
static bool cond_ready, running, start_failed;
static uint64_t sleeping_until; /* when the thread will look next; 0 while busy */

static void init_cond(void)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&wake, &attr);
    pthread_condattr_destroy(&attr);
    cond_ready = true;
}

/* What the kernel says about the candidate's fd; `*dup_fd` gets a dup of
 * it (or -1) for the caller to shut down and close. */
static void observe(const struct tk_candidate *cand, struct tk_observation *obs, int *dup_fd)
{
    memset(obs, 0, sizeof(*obs));
    *dup_fd = -1;
    if (cand->fd < 0)
        return;
    int d = (int)syscall(SYS_fcntl, cand->fd, F_DUPFD_CLOEXEC, 0);
    if (d < 0)
        return; /* EBADF: closed behind our back */
    tk_set_private_fd(TK_PRIVATE_WATCHDOG, d);
    if (tk_socket_cookie(d) != cand->cookie) {
        tk_set_private_fd(TK_PRIVATE_WATCHDOG, -1);
        syscall(SYS_close, d);
        return;
    }
    obs->same_socket = true;
    *dup_fd = d;
    struct tcp_info info;
    socklen_t len = sizeof(info);
    memset(&info, 0, sizeof(info));
    if (getsockopt(d, IPPROTO_TCP, TCP_INFO, &info, &len) == 0) {
        obs->have_info = true;
        obs->tcp_state = info.tcpi_state;
        obs->last_data_recv_ms = info.tcpi_last_data_recv;
        obs->last_data_sent_ms = info.tcpi_last_data_sent;
    }
}

static void format_addr(const struct sockaddr_storage *ss, char *out, size_t size)
{
    char host[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
        port = ntohs(in->sin_port);
        snprintf(out, size, "%s:%u", host, port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        port = ntohs(in6->sin6_port);
        snprintf(out, size, "[%s]:%u", host, port);
    } else {
        snprintf(out, size, "?");
    }
}

static void cut(int fd, int d, uint64_t idle_ns)
{
    char local[64] = "?", peer[64] = "?";
    bool say = tk_log_enabled(TK_LOG_INFO);
    if (say) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        if (getsockname(d, (struct sockaddr *)&ss, &len) == 0)
            format_addr(&ss, local, sizeof(local));
        len = sizeof(ss);
        if (getpeername(d, (struct sockaddr *)&ss, &len) == 0)
            format_addr(&ss, peer, sizeof(peer));
    }
    /* Logged first: the program may exit the moment it reads end-of-file,
     * taking this thread with it before a line written afterwards. */
    if (say)
        tk_log(TK_LOG_INFO, "fd %d %s -> %s: idle for %.3f s, shut down", fd, local, peer,
               (double)idle_ns / 1e9);
    if (shutdown(d, SHUT_RDWR) != 0) {
        int err = errno;
        tk_log(TK_LOG_INFO, "fd %d: the shutdown failed: %s", fd, strerror(err));
    }
}

/* Said once: from now on only the kernel's TCP_INFO tells activity. */
static void warn_if_stamps_ignored(void)
{
    static bool said;
    if (!said && tk_clock_stamps_ignored()) {
        said = true;
        tk_log(TK_LOG_WARN, "the CPU's time stamp counter is not reliable here: idle "
               "time is judged from the kernel's TCP_INFO alone");
    }
}

static void check_batch(struct tk_candidate *batch, struct tk_decision *decisions, unsigned n)
{
    warn_if_stamps_ignored();
    for (unsigned i = 0; i < n; i++) {
        struct tk_observation obs;
        int d;
        observe(&batch[i], &obs, &d);
        uint64_t now = tk_clock_now();
        tk_schedule_refresh(&batch[i]);
        decisions[i] = tk_schedule_decide(&batch[i], &obs, now, &tk_policy);
        if (decisions[i].verdict == TK_VERDICT_CUT)
            cut(batch[i].fd, d, decisions[i].idle_ns);
        if (d >= 0) {
            syscall(SYS_close, d);
            tk_set_private_fd(TK_PRIVATE_WATCHDOG, -1);
        }
    }
}

static void *watchdog_main(void *arg)
{
    (void)arg;
    static struct tk_candidate batch[TK_BATCH];
    static struct tk_decision decisions[TK_BATCH];
    pthread_setname_np(pthread_self(), "tcpkeep");
    /* Every signal is blocked: inherited from the creator, which holds the
     * table lock. Lock without touching the mask again. */
    pthread_mutex_t *lock = tk_table_mutex();
    pthread_mutex_lock(lock);
    for (;;) {
        uint64_t now = tk_clock_now();
        unsigned n = tk_schedule_collect(now, &tk_policy, batch, TK_BATCH);
        if (n == 0) {
            uint64_t next = tk_schedule_next();
            sleeping_until = next;
            if (next == UINT64_MAX) {
                pthread_cond_wait(&wake, lock);
            } else {
                struct timespec ts = { (time_t)(next / TK_NS_PER_S),
                                       (long)(next % TK_NS_PER_S) };
                pthread_cond_timedwait(&wake, lock, &ts);
            }
            sleeping_until = 0;
            continue;
        }
        pthread_mutex_unlock(lock);
        check_batch(batch, decisions, n);
        pthread_mutex_lock(lock);
        now = tk_clock_now();
        for (unsigned i = 0; i < n; i++)
            tk_schedule_settle(&batch[i], &decisions[i], now);
    }
    return NULL;
}

static void start(void)
{
    if (!cond_ready)
        init_cond();
    pthread_attr_t attr;
    pthread_t thread;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, TK_STACK_SIZE);
    int rc = pthread_create(&thread, &attr, watchdog_main, NULL);
    if (rc != 0) { /* a program with a large static TLS needs a bigger stack */
        rc = pthread_create(&thread, NULL, watchdog_main, NULL);
        if (rc == 0)
            pthread_detach(thread);
    }
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        start_failed = true;
        tk_log(TK_LOG_ERROR, "cannot start the watchdog thread: %s; idle connections "
               "will not be shut down", strerror(rc));
        return;
    }
    running = true;
    sleeping_until = 0;
}

void tk_watchdog_notify(uint64_t check_at_ns)
{
    if (!running) {
        if (!start_failed)
            start();
        return;
    }
    if (check_at_ns < sleeping_until)
        pthread_cond_signal(&wake);
}

void tk_watchdog_after_fork_child(void)
{
    running = false;
    sleeping_until = 0;
    init_cond();
    tk_schedule_after_fork_child(tk_clock_now());
    if (tk_schedule_next() != UINT64_MAX)
        start();
}
