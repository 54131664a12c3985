/* Hooks that end or copy descriptors: close, dup, dup2, dup3, fcntl
 * (F_DUPFD, F_DUPFD_CLOEXEC), close_range, closefrom. They keep the table in
 * step and step around the shim's own descriptors. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "real.h"
#include "shim.h"
#include "table.h"

#define EXPORT __attribute__((visibility("default")))

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

EXPORT int close(int fd)
{
    if (tk_owns_private_fd(fd)) { /* without the shim it would not exist */
        errno = EBADF;
        return -1;
    }
    /* Unbind first: once the real close returns, another thread may get
     * the same number back from accept and bind it. */
    tk_before_close(fd);
    return TK_REAL(close) ? tk_real.close(fd) : (int)syscall(SYS_close, fd);
}

EXPORT int dup(int oldfd)
{
    int r = TK_REAL(dup) ? tk_real.dup(oldfd) : (int)syscall(SYS_dup, oldfd);
    if (r >= 0)
        tk_after_dup(oldfd, r);
    return r;
}

EXPORT int dup2(int oldfd, int newfd)
{
    int r = TK_REAL(dup2) ? tk_real.dup2(oldfd, newfd) : (int)syscall(SYS_dup2, oldfd, newfd);
    if (r >= 0)
        tk_after_dup(oldfd, r);
    return r;
}

EXPORT int dup3(int oldfd, int newfd, int flags)
{
    int r = TK_REAL(dup3) ? tk_real.dup3(oldfd, newfd, flags)
                          : (int)syscall(SYS_dup3, oldfd, newfd, flags);
    if (r >= 0)
        tk_after_dup(oldfd, r);
    return r;
}

/* fcntl's third argument has the type the command takes: a pointer for the
 * lock and owner commands (and, as glibc does, any command we do not know),
 * an int for the rest. Forwarding one size for all would pass garbage. */
static int takes_int(int cmd)
{
    switch (cmd) {
    case F_DUPFD: case F_DUPFD_CLOEXEC: case F_SETFD: case F_SETFL:
    case F_SETOWN: case F_SETSIG: case F_SETLEASE: case F_NOTIFY:
    case F_SETPIPE_SZ: case F_ADD_SEALS:
    case F_GETFD: case F_GETFL: case F_GETOWN: case F_GETSIG:
    case F_GETLEASE: case F_GETPIPE_SZ: case F_GET_SEALS:
        return 1;
    default:
        return 0;
    }
}

static int do_fcntl(int (*real)(int, int, ...), int fd, int cmd, va_list ap)
{
    int r;
    if (takes_int(cmd)) {
        int arg = va_arg(ap, int);
        r = real ? real(fd, cmd, arg) : (int)syscall(SYS_fcntl, fd, cmd, arg);
    } else {
        void *arg = va_arg(ap, void *);
        r = real ? real(fd, cmd, arg) : (int)syscall(SYS_fcntl, fd, cmd, arg);
    }
    if (r >= 0 && (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC))
        tk_after_dup(fd, r);
    return r;
}

EXPORT int fcntl(int fd, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    int r = do_fcntl(TK_REAL(fcntl), fd, cmd, ap);
    va_end(ap);
    return r;
}

EXPORT int fcntl64(int fd, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    int r = do_fcntl(TK_REAL(fcntl64), fd, cmd, ap);
    va_end(ap);
    return r;
}

static int real_close_range(unsigned first, unsigned last, int flags)
{
    return TK_REAL(close_range) ? tk_real.close_range(first, last, flags)
                                : (int)syscall(SYS_close_range, first, last, flags);
}

/* close_range over [first, last], leaving out the shim's own descriptors. */
static int close_range_around_private(unsigned first, unsigned last, int flags)
{
    int mine[TK_PRIVATE_FDS];
    int n = tk_private_fds_in(first, last, mine);
    int rc = 0;
    unsigned from = first;
    for (int i = 0; i <= n; i++) {
        unsigned to = i < n ? (unsigned)mine[i] - 1 : last;
        if (i < n && (unsigned)mine[i] == from) {
            from = (unsigned)mine[i] + 1;
            continue;
        }
        if (from <= to && from <= last) {
            int r = real_close_range(from, to, flags);
            if (r != 0)
                rc = r;
        }
        if (i < n)
            from = (unsigned)mine[i] + 1;
    }
    return rc;
}

EXPORT int close_range(unsigned first, unsigned last, int flags)
{
    if (first > last) /* let the real call say EINVAL */
        return real_close_range(first, last, flags);
    if (!(flags & CLOSE_RANGE_CLOEXEC))
        tk_before_close_range(first, last);
    return close_range_around_private(first, last, flags);
}

EXPORT void closefrom(int lowfd)
{
    if (lowfd < 0)
        lowfd = 0;
    tk_before_close_range((unsigned)lowfd, UINT_MAX);
    int mine[TK_PRIVATE_FDS];
    if (tk_private_fds_in((unsigned)lowfd, UINT_MAX, mine) == 0 && TK_REAL(closefrom)) {
        tk_real.closefrom(lowfd);
        return;
    }
    int saved = errno;
    close_range_around_private((unsigned)lowfd, UINT_MAX, 0);
    errno = saved;
}
