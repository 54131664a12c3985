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
#include <stddef.h>
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
#include "mem.h"
#include "rules.h"
#include "stats.h"
#include "tcpinfo.h"
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

static void release_dup(int d);

/* The watchdog's private dup is held under dup_lock, which fork() takes
 * first (tk_watchdog_fork_*): a child never inherits one it would not know
 * to close. The watchdog never waits for the table lock while holding it. */
static pthread_mutex_t dup_lock = PTHREAD_MUTEX_INITIALIZER;

/* Above the numbers a program expects to get back (close(1); dup(p)). */
#define TK_DUP_FD_MIN 100

/* A private dup of fd if it is still the socket `cookie` names, else -1;
 * *busy if the process is out of descriptors (look again later). Acting
 * on the dup is safe whatever happens to the number fd meanwhile. */
static int dup_if_same(int fd, uint64_t cookie, bool *busy)
{
    *busy = false;
    if (fd < 0)
        return -1;
    pthread_mutex_lock(&dup_lock);
    int d = (int)syscall(SYS_fcntl, fd, F_DUPFD_CLOEXEC, TK_DUP_FD_MIN);
    if (d < 0 && errno == EINVAL) /* RLIMIT_NOFILE below the minimum */
        d = (int)syscall(SYS_fcntl, fd, F_DUPFD_CLOEXEC, 0);
    if (d < 0) {
        *busy = errno == EMFILE || errno == ENFILE; /* else EBADF: closed behind our back */
        pthread_mutex_unlock(&dup_lock);
        return -1;
    }
    tk_set_private_fd(TK_PRIVATE_WATCHDOG, d);
    if (tk_socket_cookie(d) == cookie)
        return d;
    release_dup(d);
    return -1;
}

static void release_dup(int d)
{
    syscall(SYS_close, d);
    tk_set_private_fd(TK_PRIVATE_WATCHDOG, -1);
    pthread_mutex_unlock(&dup_lock);
}

void tk_watchdog_fork_prepare(void)
{
    pthread_mutex_lock(&dup_lock);
}

void tk_watchdog_fork_parent(void)
{
    pthread_mutex_unlock(&dup_lock);
}

void tk_watchdog_fork_child_early(void)
{
    pthread_mutex_init(&dup_lock, NULL);
}

/* What the kernel says about the candidate's fd; `*dup_fd` gets a dup of
 * it (or -1) for the caller to shut down and release. */
static void observe(const struct tk_candidate *cand, struct tk_observation *obs, int *dup_fd)
{
    memset(obs, 0, sizeof(*obs));
    bool busy;
    *dup_fd = dup_if_same(cand->fd, cand->cookie, &busy);
    obs->no_look = busy;
    if (*dup_fd < 0)
        return;
    obs->same_socket = true;
    tk_read_tcp_info(*dup_fd, obs);
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

/* Ends the connection behind the dup `d` (the program's fd stays open):
 * shutdown, or a reset by disconnecting it (connect to AF_UNSPEC), which a
 * kernel may refuse while a thread waits on the socket. */
static const char *end_connection(int fd, int d, uint8_t action)
{
    if (action == TK_ACTION_RESET) {
        struct sockaddr unspec = { .sa_family = AF_UNSPEC };
        if (syscall(SYS_connect, d, &unspec, (socklen_t)sizeof(unspec)) == 0)
            return "reset";
        int err = errno;
        tk_log(TK_LOG_WARN, "fd %d: the reset was refused (%s); shut down instead", fd,
               strerror(err));
    }
    if (shutdown(d, SHUT_RDWR) != 0) {
        int err = errno;
        tk_log(TK_LOG_INFO, "fd %d: the shutdown failed: %s", fd, strerror(err));
    }
    return "shut down";
}

static void describe(int d, char *local, char *peer, size_t size)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(d, (struct sockaddr *)&ss, &len) == 0)
        format_addr(&ss, local, size);
    len = sizeof(ss);
    if (getpeername(d, (struct sockaddr *)&ss, &len) == 0)
        format_addr(&ss, peer, size);
}

static void cut(const struct tk_candidate *cand, int d, const struct tk_decision *dec)
{
    char local[64] = "?", peer[64] = "?";
    const char *how = cand->set.action == TK_ACTION_RESET ? "reset" : "shut down";
    bool say = tk_log_enabled(TK_LOG_INFO);
    if (say)
        describe(d, local, peer, sizeof(local));
    /* Logged first: the program may exit the moment it reads end-of-file,
     * taking this thread with it before a line written afterwards. */
    if (say)
        tk_log(TK_LOG_INFO, "fd %d %s -> %s: %s for %.3f s, %s", cand->fd, local, peer,
               tk_reason_token[dec->reason], (double)dec->held_ns / 1e9, how);
    tk_count(&tk_stats.cuts[dec->reason], 1);
    end_connection(cand->fd, d, cand->set.action);
}

/* Dry run: report each due reason once, cut nothing. */
static void would_cut(struct tk_candidate *cand, int d, const struct tk_decision *dec)
{
    char local[64] = "?", peer[64] = "?";
    if (tk_log_enabled(TK_LOG_WARN)) {
        describe(d, local, peer, sizeof(local));
        tk_log(TK_LOG_WARN, "fd %d %s -> %s: %s for %.3f s, would be %s (dry run)", cand->fd,
               local, peer, tk_reason_token[dec->reason], (double)dec->held_ns / 1e9,
               cand->set.action == TK_ACTION_RESET ? "reset" : "shut down");
    }
    tk_count(&tk_stats.would_cut[dec->reason], 1);
    cand->dry_said |= (uint8_t)(1u << dec->reason);
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
        /* In a dry run each due reason is reported, then the next one is
         * looked for (one bit per reason: at most TK_REASONS rounds). */
        while (decisions[i].verdict == TK_VERDICT_CUT && batch[i].set.dry_run) {
            would_cut(&batch[i], d, &decisions[i]);
            decisions[i] = tk_schedule_decide(&batch[i], &obs, now, &tk_policy);
        }
        if (decisions[i].verdict == TK_VERDICT_CUT)
            cut(&batch[i], d, &decisions[i]);
        if (d >= 0)
            release_dup(d);
    }
}

/* ---- A new rules file: every connection's settings again ---- */

struct reapply {
    uint64_t cookie;
    int fd;
    unsigned own;
    struct tk_settings set;
};

struct regather {
    struct reapply *list;
    size_t n, cap;
    uint64_t now;
};

static void resettle(struct tk_conn *c, void *ctx)
{
    struct regather *g = ctx;
    if (!c->set)
        return;
    /* Every record leaves the old rules, cut ones too: they are freed next. */
    const struct tk_settings *s = c->kind == TK_KIND_SOCKET ? &tk_cfg.set
                                                            : tk_settings_for(&c->key);
    if (!s) /* the environment's filter does not change: cannot happen */
        s = &tk_cfg.set;
    c->set = s;
    if (c->kind != TK_KIND_CONN)
        return;
    tk_schedule_rewatch(c, g->now);
    if (g->list && g->n < g->cap && c->fd >= 0)
        g->list[g->n++] = (struct reapply){ c->cookie, c->fd, c->own_opts, *s };
}

static void apply_again(const struct reapply *r)
{
    bool busy;
    int d = dup_if_same(r->fd, r->cookie, &busy);
    if (d < 0)
        return;
    tk_apply_options(d, &r->set, r->own, true);
    release_dup(d);
}

/* Under the lock (released and taken again while options are set). */
static void install_rules(struct tk_rules *rules, pthread_mutex_t *lock)
{
    struct tk_rules *old = tk_rules_current;
    tk_rules_current = rules;
    struct regather g = { NULL, 0, tk_table_count(), tk_clock_now() };
    size_t bytes = g.cap * sizeof(struct reapply);
    if (g.cap)
        g.list = tk_mem_alloc(bytes);
    tk_table_foreach(resettle, &g);
    if (old)
        tk_rules_free(old); /* no record points into it any more */
    tk_watchdog_notify(g.now);
    pthread_mutex_unlock(lock);
    for (size_t i = 0; i < g.n; i++)
        apply_again(&g.list[i]);
    if (g.list)
        tk_mem_free(g.list, bytes);
    pthread_mutex_lock(lock);
}

/* The chores beside cuts: the rules file (checked once a second) and the
 * stats file (written every 2 s). Returns when they are next due. */
#define TK_RULES_POLL_NS TK_NS_PER_S
#define TK_RULES_SETTLE_NS (250 * TK_NS_PER_MS)
#define TK_STATS_EVERY_NS (2 * TK_NS_PER_S)
static uint64_t next_rules_poll, next_stats;

static uint64_t chores(uint64_t now, pthread_mutex_t *lock)
{
    uint64_t next = UINT64_MAX;
    if (tk_cfg.config_path[0]) {
        if (now >= next_rules_poll) {
            next_rules_poll = now + TK_RULES_POLL_NS;
            pthread_mutex_unlock(lock);
            struct tk_rules *fresh = tk_rules_file_poll();
            if (tk_rules_file_settling())
                next_rules_poll = now + TK_RULES_SETTLE_NS;
            pthread_mutex_lock(lock);
            if (fresh)
                install_rules(fresh, lock);
        }
        next = next_rules_poll;
    }
    if (tk_stats_enabled()) {
        if (now >= next_stats) {
            next_stats = now + TK_STATS_EVERY_NS;
            pthread_mutex_unlock(lock);
            tk_stats_write();
            pthread_mutex_lock(lock);
        }
        if (next_stats < next)
            next = next_stats;
    }
    return next;
}

bool tk_watchdog_has_chores(void)
{
    return tk_cfg.config_path[0] || tk_stats_enabled();
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
        uint64_t chores_due = chores(now, lock);
        now = tk_clock_now();
        unsigned n = tk_schedule_collect(now, &tk_policy, batch, TK_BATCH);
        if (n == 0) {
            uint64_t next = tk_schedule_next();
            if (chores_due < next)
                next = chores_due;
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
    /* The child's first stats file waits 2 s, and its watchdog starts only
     * for connections it must watch (or at its own first socket): a child
     * that only execs leaves no file. */
    next_rules_poll = 0;
    next_stats = tk_clock_now() + TK_STATS_EVERY_NS;
    if (tk_schedule_next() != UINT64_MAX)
        start();
}
