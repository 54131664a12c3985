/* The cold path: what the socket and descriptor hooks do to the table.
 * Every function here keeps errno and returns at once, with one load, when
 * the descriptors involved are not tracked. */
#include <errno.h>
#include <sys/socket.h>

#include "rules.h"
#include "stats.h"

#include "clock.h"
#include "log.h"
#include "shim.h"
#include "sockopt.h"
#include "table.h"

static _Atomic int private_fds[TK_PRIVATE_FDS] = { -1, -1 };

bool tk_is_private_fd(int fd)
{
    for (int i = 0; i < TK_PRIVATE_FDS; i++)
        if (fd == atomic_load_explicit(&private_fds[i], memory_order_relaxed))
            return true;
    return false;
}

static void release_private(int fd)
{
    for (int i = 0; i < TK_PRIVATE_FDS; i++) {
        int expected = fd;
        atomic_compare_exchange_strong(&private_fds[i], &expected, -1);
    }
}

bool tk_owns_private_fd(int fd)
{
    if (!tk_is_private_fd(fd))
        return false;
    if (fd == atomic_load_explicit(&private_fds[TK_PRIVATE_LOG], memory_order_relaxed))
        return tk_log_owns(fd);
    return true; /* the watchdog's dup lives for microseconds */
}

int tk_private_fds_in(unsigned first, unsigned last, int out[TK_PRIVATE_FDS])
{
    int n = 0;
    for (int i = 0; i < TK_PRIVATE_FDS; i++) {
        int fd = atomic_load_explicit(&private_fds[i], memory_order_relaxed);
        if (fd >= 0 && (unsigned)fd >= first && (unsigned)fd <= last)
            out[n++] = fd;
    }
    if (n == 2 && out[0] > out[1]) {
        int t = out[0];
        out[0] = out[1];
        out[1] = t;
    }
    return n;
}

void tk_set_private_fd(int which, int fd)
{
    atomic_store_explicit(&private_fds[which], fd, memory_order_relaxed);
}

const struct tk_settings *tk_settings_for(const struct tk_conn_key *key)
{
    if (tk_cfg.has_filter && !tk_match_conn(&tk_cfg.filter, key))
        return NULL;
    const struct tk_settings *rule = tk_rules_current ? tk_rules_lookup(tk_rules_current, key)
                                                      : NULL;
    return rule ? rule : &tk_cfg.set;
}

/* Start the watchdog now if it has more to do than cuts. */
static void wake_for_chores(void)
{
    if (tk_watchdog_has_chores())
        tk_watchdog_notify(UINT64_MAX);
}

void tk_track_socket(int fd)
{
    int saved = errno;
    if (tk_is_private_fd(fd))
        release_private(fd);
    /* Without rules every TCP socket gets the options when it is made, so
     * that the program's own later setsockopt wins (the contract). */
    bool keepalive = !tk_deferred && tk_apply_options(fd, &tk_cfg.set, 0, false);
    if (keepalive)
        tk_count(&tk_stats.keepalive_set, 1);
    uint64_t cookie = tk_socket_cookie(fd);
    sigset_t old;
    tk_table_lock(&old);
    struct tk_conn *c = cookie ? tk_table_bind(fd, cookie) : NULL;
    if (!c) {
        tk_table_unbind(fd); /* whatever the number held before is stale */
    } else {
        if (!tk_deferred)
            c->set = &tk_cfg.set; /* so that override holds from the start */
        c->shim_keepalive = keepalive;
        wake_for_chores();
    }
    tk_table_unlock(&old);
    errno = saved;
}

void tk_track_conn(int fd, int listener, uint8_t direction, const struct sockaddr *peer)
{
    int saved = errno;
    if (tk_is_private_fd(fd))
        release_private(fd);
    uint64_t cookie = tk_socket_cookie(fd);
    /* Ports and peer matter only to rules: no system call for them otherwise. */
    struct tk_conn_key key;
    struct sockaddr_storage local, remote;
    bool have_local = false;
    if (tk_deferred) {
        socklen_t len = sizeof(local);
        have_local = getsockname(fd, (struct sockaddr *)&local, &len) == 0;
        len = sizeof(remote);
        if (!peer && getpeername(fd, (struct sockaddr *)&remote, &len) == 0)
            peer = (struct sockaddr *)&remote;
    } else {
        peer = NULL;
    }
    tk_conn_key_set(&key, direction, have_local ? (struct sockaddr *)&local : NULL, peer);

    struct tk_settings set;
    unsigned own = 0;
    bool apply = false, inherited_keepalive = false;
    sigset_t old;
    tk_table_lock(&old);
    struct tk_conn *c = tk_slot_get(fd);
    if (!c || c->cookie != cookie) /* connect() keeps socket()'s record */
        c = cookie ? tk_table_bind(fd, cookie) : NULL;
    if (!c) {
        tk_table_unbind(fd);
    } else if (c->kind == TK_KIND_SOCKET) {
        struct tk_conn *from = listener >= 0 ? tk_slot_get(listener) : NULL;
        if (from) {
            c->own_opts |= from->own_opts;
            c->shim_keepalive = from->shim_keepalive;
            inherited_keepalive = from->shim_keepalive && !tk_deferred;
        }
        c->key = key;
        const struct tk_settings *s = tk_settings_for(&key);
        if (!s) {
            tk_table_unbind(fd); /* not managed: passed through from now on */
        } else {
            set = *s;
            own = c->own_opts;
            /* Without rules the options came with socket(), or with the
             * listener; one accepted from a listener we did not see made
             * (inherited across exec) gets them now. */
            apply = tk_deferred || (direction == TK_DIR_IN && !from);
            if (tk_schedule_watch(c, s, tk_now_ns()))
                tk_watchdog_notify(c->check_at_ns);
            else
                wake_for_chores();
        }
    }
    tk_table_unlock(&old);
    if (inherited_keepalive)
        tk_count(&tk_stats.keepalive_set, 1);
    if (apply && tk_apply_options(fd, &set, own, false))
        tk_count(&tk_stats.keepalive_set, 1);
    errno = saved;
}

void tk_listening(int fd)
{
    /* Every connection this listener accepts has its port and comes in;
     * only a peer list or a rules file can still tell them apart, and
     * then each gets its options when accepted. */
    if (!tk_deferred || tk_cfg.filter.n_peers || tk_cfg.config_path[0])
        return;
    int saved = errno;
    struct sockaddr_storage local;
    socklen_t len = sizeof(local);
    if (getsockname(fd, (struct sockaddr *)&local, &len) != 0) {
        errno = saved;
        return;
    }
    struct tk_conn_key key;
    tk_conn_key_set(&key, TK_DIR_IN, (struct sockaddr *)&local, NULL);
    if (!tk_match_conn(&tk_cfg.filter, &key)) {
        errno = saved;
        return;
    }
    sigset_t old;
    tk_table_lock(&old);
    struct tk_conn *c = tk_slot_get(fd);
    unsigned own = c ? c->own_opts : 0;
    tk_table_unlock(&old);
    if (c && tk_apply_options(fd, &tk_cfg.set, own, false)) {
        tk_count(&tk_stats.keepalive_set, 1);
        tk_table_lock(&old);
        if (tk_slot_get(fd) == c)
            c->shim_keepalive = 1;
        tk_table_unlock(&old);
    }
    errno = saved;
}

bool tk_own_option(int fd, unsigned bit)
{
    int saved = errno;
    bool swallow = false;
    sigset_t old;
    tk_table_lock(&old);
    struct tk_conn *c = tk_slot_get(fd);
    if (c) {
        c->own_opts |= bit;
        swallow = c->set && c->set->override && tk_settings_sets(c->set, bit);
    }
    tk_table_unlock(&old);
    errno = saved;
    return swallow;
}

/* Drop fd's binding, if it has one (one load when it has none). */
static void unbind(int fd)
{
    if (!tk_slot_get(fd))
        return;
    int saved = errno;
    sigset_t old;
    tk_table_lock(&old);
    tk_table_unbind(fd);
    tk_table_unlock(&old);
    errno = saved;
}

void tk_forget(int fd)
{
    if (tk_is_private_fd(fd))
        release_private(fd);
    unbind(fd);
}

void tk_after_dup(int oldfd, int newfd)
{
    if (tk_is_private_fd(newfd))
        release_private(newfd);
    if (!tk_slot_get(oldfd) && !tk_slot_get(newfd))
        return;
    int saved = errno;
    sigset_t old;
    tk_table_lock(&old);
    tk_table_dup(oldfd, newfd);
    tk_table_unlock(&old);
    errno = saved;
}

void tk_before_close(int fd)
{
    unbind(fd);
}

void tk_before_close_range(unsigned first, unsigned last)
{
    int saved = errno;
    sigset_t old;
    tk_table_lock(&old);
    tk_table_unbind_range(first, last);
    tk_table_unlock(&old);
    errno = saved;
}
