/* The hot path: the read/write family.
 *
 * Each wrapper looks the fd up first (atomic loads only). An untracked fd
 * goes straight to the real function as a tail call: a load, a branch and a
 * jump. A tracked one calls the real function and, if at least one byte
 * moved, stamps the connection's read or write field with tk_stamp() (the
 * TSC), storing only when the stamp moved on by a grain so that threads on
 * different connections do not write shared cache lines; a read of
 * end-of-file is noted, and a write counts itself in and out. No lock, no
 * allocation, no system call of our own, errno untouched: safe in signal
 * handlers and in a forked child. */
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "clock.h"
#include "real.h"
#include "table.h"

#define EXPORT __attribute__((visibility("default")))

/* Store a new stamp only when it moved on by a grain (see TK_STAMP_GRAIN
 * in clock.h): the line is written about once a millisecond per
 * connection, not on every call. The watchdog allows for the grain. */
static inline void stamp(_Atomic uint64_t *field)
{
    uint64_t now = tk_stamp();
    if ((now - atomic_load_explicit(field, memory_order_relaxed)) >> TK_STAMP_GRAIN_SHIFT)
        atomic_store_explicit(field, now, memory_order_relaxed);
}

/* A read returned end-of-file: the peer may have closed its side (the
 * watchdog confirms with the socket's state). Only the first one counts. */
static __attribute__((noinline, cold)) void note_eof(struct tk_conn *c)
{
    if (!atomic_load_explicit(&c->eof_at, memory_order_relaxed))
        atomic_store_explicit(&c->eof_at, tk_stamp(), memory_order_relaxed);
}

/* Whether a read that returned 0 asked for any byte at all. */
static size_t iov_bytes(const struct iovec *iov, int cnt)
{
    size_t n = 0;
    for (int i = 0; iov && i < cnt; i++)
        n += iov[i].iov_len;
    return n;
}

/* The stamp a call leaves: reads and writes are told apart (read-idle,
 * write-idle); a read of end-of-file is noted. */
#define TK_MOVED(c, r, dir, eof_cond)                \
    do {                                             \
        if ((r) > 0)                                 \
            stamp(&(c)->dir);                        \
        else if ((r) == 0 && (eof_cond))             \
            note_eof(c);                             \
    } while (0)

/* Around the real call. A write call counts itself in and out: under
 * TCPKEEP_ACTIVITY=calls the peer's acknowledgements count as progress only
 * while the program is in one (a slow reader is not idle; data moved by a
 * splice() the shim cannot see is not the program's activity). Reads do
 * nothing here. `dir` is the stamp field, last_read or last_write. */
#define TK_ENTER_last_read(c) ((void)0)
#define TK_LEAVE_last_read(c) ((void)0)
#define TK_ENTER_last_write(c) atomic_fetch_add_explicit(&(c)->writing, 1, memory_order_relaxed)
#define TK_LEAVE_last_write(c) atomic_fetch_sub_explicit(&(c)->writing, 1, memory_order_relaxed)

static inline void touch(int fd, int is_read)
{
    struct tk_conn *c = tk_slot_get(fd);
    if (c)
        stamp(is_read ? &c->last_read : &c->last_write);
}

/* The real function, or the raw system call while binding is under way. */
#define CALL(field, fallback, ...) \
    (TK_REAL(field) ? tk_real.field(__VA_ARGS__) : (fallback))

/* WRAP(type, name, field, (params), (args), fallback syscall)
 *
 * name:          the common case, an untracked fd: a tail call through
 *                tk_real (no NULL test: see tk_stub_ below).
 * name_tracked:  calls the real function, then stamps the record (the extra
 *                arguments come last, so the call's own stay in their
 *                registers). If the fd was closed and its record reused for
 *                another connection while the call blocked, that one gets
 *                the stamp: it may be cut later than due, never earlier.
 * tk_stub_field: what tk_real holds until the real function is bound (and
 *                for good if it cannot be): binds, then calls the real
 *                function, or makes the raw system call while binding is
 *                under way (re-entered from dlsym, say). */
#define WRAP(type, name, field, params, args, fallback, dir, eof_cond)         \
    __attribute__((visibility("hidden"), noinline)) type tk_stub_##field params \
    {                                                                          \
        tk_real_bind();                                                        \
        __typeof__(tk_real.field) real = tk_real.field;                        \
        type r = real != tk_stub_##field ? real args : (type)(fallback);       \
        struct tk_conn *c = tk_slot_get(fd);                                   \
        if (c)                                                                 \
            TK_MOVED(c, r, dir, eof_cond);                                     \
        return r;                                                              \
    }                                                                          \
    static __attribute__((noinline)) type name##_tracked(                      \
        TK_UNPAREN params, struct tk_conn *c, __typeof__(tk_real.field) real)  \
    {                                                                          \
        TK_ENTER_##dir(c);                                                     \
        type r = real args;                                                    \
        TK_LEAVE_##dir(c);                                                     \
        TK_MOVED(c, r, dir, eof_cond);                                         \
        return r;                                                              \
    }                                                                          \
    EXPORT type name params                                                    \
    {                                                                          \
        struct tk_conn *c = tk_slot_get(fd);                                   \
        if (__builtin_expect(c != NULL, 0))                                    \
            return name##_tracked(TK_UNPAREN args, c, tk_real.field);          \
        return tk_real.field args;                                             \
    }
#define TK_UNPAREN(...) __VA_ARGS__

WRAP(ssize_t, read, read, (int fd, void *buf, size_t n), (fd, buf, n),
     syscall(SYS_read, fd, buf, n),
     last_read, n > 0)
WRAP(ssize_t, write, write, (int fd, const void *buf, size_t n), (fd, buf, n),
     syscall(SYS_write, fd, buf, n),
     last_write, 0)
WRAP(ssize_t, recv, recv, (int fd, void *buf, size_t n, int flags), (fd, buf, n, flags),
     syscall(SYS_recvfrom, fd, buf, n, flags, NULL, NULL),
     last_read, n > 0)
WRAP(ssize_t, recvfrom, recvfrom,
     (int fd, void *buf, size_t n, int flags, __SOCKADDR_ARG addr, socklen_t *len),
     (fd, buf, n, flags, addr, len),
     syscall(SYS_recvfrom, fd, buf, n, flags, TK_SA(addr), len),
     last_read, n > 0)
WRAP(ssize_t, recvmsg, recvmsg, (int fd, struct msghdr *msg, int flags), (fd, msg, flags),
     syscall(SYS_recvmsg, fd, msg, flags),
     last_read, msg && iov_bytes(msg->msg_iov, (int)msg->msg_iovlen) > 0)
WRAP(int, recvmmsg, recvmmsg,
     (int fd, struct mmsghdr *vec, unsigned vlen, int flags, struct timespec *timeout),
     (fd, vec, vlen, flags, timeout),
     syscall(SYS_recvmmsg, fd, vec, vlen, flags, timeout),
     last_read, 0)
WRAP(ssize_t, send, send, (int fd, const void *buf, size_t n, int flags), (fd, buf, n, flags),
     syscall(SYS_sendto, fd, buf, n, flags, NULL, 0),
     last_write, 0)
WRAP(ssize_t, sendto, sendto,
     (int fd, const void *buf, size_t n, int flags, __CONST_SOCKADDR_ARG addr, socklen_t len),
     (fd, buf, n, flags, addr, len),
     syscall(SYS_sendto, fd, buf, n, flags, TK_SA(addr), len),
     last_write, 0)
WRAP(ssize_t, sendmsg, sendmsg, (int fd, const struct msghdr *msg, int flags),
     (fd, msg, flags), syscall(SYS_sendmsg, fd, msg, flags),
     last_write, 0)
WRAP(int, sendmmsg, sendmmsg, (int fd, struct mmsghdr *vec, unsigned vlen, int flags),
     (fd, vec, vlen, flags), syscall(SYS_sendmmsg, fd, vec, vlen, flags),
     last_write, 0)
WRAP(ssize_t, readv, readv, (int fd, const struct iovec *iov, int cnt), (fd, iov, cnt),
     syscall(SYS_readv, fd, iov, cnt),
     last_read, iov_bytes(iov, cnt) > 0)
WRAP(ssize_t, writev, writev, (int fd, const struct iovec *iov, int cnt), (fd, iov, cnt),
     syscall(SYS_writev, fd, iov, cnt),
     last_write, 0)

/* The fortified variants that _FORTIFY_SOURCE builds call instead. */
WRAP(ssize_t, __read_chk, read_chk, (int fd, void *buf, size_t n, size_t buflen),
     (fd, buf, n, buflen), syscall(SYS_read, fd, buf, n),
     last_read, n > 0)
WRAP(ssize_t, __recv_chk, recv_chk, (int fd, void *buf, size_t n, size_t buflen, int flags),
     (fd, buf, n, buflen, flags), syscall(SYS_recvfrom, fd, buf, n, flags, NULL, NULL),
     last_read, n > 0)
WRAP(ssize_t, __recvfrom_chk, recvfrom_chk,
     (int fd, void *buf, size_t n, size_t buflen, int flags, __SOCKADDR_ARG addr,
      socklen_t *len),
     (fd, buf, n, buflen, flags, addr, len),
     syscall(SYS_recvfrom, fd, buf, n, flags, TK_SA(addr), len),
     last_read, n > 0)

/* sendfile moves data between two descriptors: either may be a connection. */
#define SENDFILE(name, field)                                                  \
    EXPORT ssize_t name(int out_fd, int in_fd, off_t *offset, size_t count)    \
    {                                                                          \
        ssize_t r = CALL(field, syscall(SYS_sendfile, out_fd, in_fd, offset, count), \
                         out_fd, in_fd, offset, count);                        \
        if (r > 0) {                                                           \
            touch(out_fd, 0);                                                  \
            touch(in_fd, 1);                                                   \
        }                                                                      \
        return r;                                                              \
    }
SENDFILE(sendfile, sendfile)
SENDFILE(sendfile64, sendfile64)
