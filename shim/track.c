/* The cold path: what the socket and descriptor hooks do to the table.
 * Every function here keeps errno and returns at once, with one load, when
 * the descriptors involved are not tracked. */
#include <errno.h>

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

void tk_track(int fd, enum tk_kind kind)
{
    int saved = errno;
    if (tk_is_private_fd(fd))
        release_private(fd);
    uint64_t cookie = tk_socket_cookie(fd);
    sigset_t old;
    tk_table_lock(&old);
    struct tk_conn *c = cookie ? tk_table_bind(fd, cookie, kind, tk_stamp()) : NULL;
    if (!c)
        tk_table_unbind(fd); /* whatever the number held before is stale */
    else if (kind == TK_KIND_CONN && c->kind == TK_KIND_CONN && tk_policy.idle_ns) {
        tk_schedule_watch(c, &tk_policy, tk_now_ns());
        tk_watchdog_notify(c->check_at_ns);
    }
    tk_table_unlock(&old);
    errno = saved;
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

void tk_connected(int fd)
{
    struct tk_conn *c = tk_slot_get(fd);
    if (!c)
        return;
    int saved = errno;
    sigset_t old;
    tk_table_lock(&old);
    c = tk_slot_get(fd); /* again, under the lock */
    if (c && c->kind == TK_KIND_SOCKET) {
        atomic_store_explicit(&c->last_call_ns, tk_stamp(), memory_order_relaxed);
        c->kind = TK_KIND_CONN;
        if (tk_policy.idle_ns) {
            tk_schedule_watch(c, &tk_policy, tk_now_ns());
            tk_watchdog_notify(c->check_at_ns);
        }
    }
    tk_table_unlock(&old);
    errno = saved;
}
