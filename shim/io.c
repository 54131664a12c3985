/* The hot path: the read/write family.
 *
 * Each wrapper looks the fd up first (atomic loads only). An untracked fd
 * goes straight to the real function as a tail call: a load, a branch and a
 * jump. A tracked one calls the real function and, if at least one byte
 * moved, stamps the connection with the coarse monotonic clock, storing only
 * when the stamp changes so that threads on different connections do not
 * write shared cache lines. No lock, no allocation, no system call of our
 * own, errno untouched: safe in signal handlers and in a forked child. */
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "clock.h"
#include "real.h"
#include "table.h"

#define EXPORT __attribute__((visibility("default")))

static inline void touch(int fd)
{
    struct tk_conn *c = tk_slot_get(fd);
    if (!c)
        return;
    uint64_t now = tk_now_coarse_ns();
    if (atomic_load_explicit(&c->last_call_ns, memory_order_relaxed) != now)
        atomic_store_explicit(&c->last_call_ns, now, memory_order_relaxed);
}

/* The real function, or the raw system call while binding is under way. */
#define CALL(field, fallback, ...) \
    (TK_REAL(field) ? tk_real.field(__VA_ARGS__) : (fallback))

/* WRAP(type, name, field, (params), (args), fallback syscall, fds touched)
 * The exported function handles the common case (bound, untracked) with a
 * tail call; name_slow handles a tracked fd, and a call made before the
 * real function is bound. */
#define WRAP(type, name, field, params, args, fallback, ...)                    \
    static __attribute__((noinline, cold)) type name##_slow params             \
    {                                                                          \
        type r = CALL(field, (type)(fallback), TK_UNPAREN args);               \
        if (r > 0) {                                                           \
            int fds_[] = { __VA_ARGS__ };                                      \
            for (unsigned i_ = 0; i_ < sizeof(fds_) / sizeof(fds_[0]); i_++)   \
                touch(fds_[i_]);                                               \
        }                                                                      \
        return r;                                                              \
    }                                                                          \
    EXPORT type name params                                                    \
    {                                                                          \
        __typeof__(tk_real.field) real = tk_real.field;                        \
        if (__builtin_expect(real != NULL && tk_slot_get(fd) == NULL, 1))      \
            return real args;                                                  \
        return name##_slow args;                                               \
    }
#define TK_UNPAREN(...) __VA_ARGS__

WRAP(ssize_t, read, read, (int fd, void *buf, size_t n), (fd, buf, n),
     syscall(SYS_read, fd, buf, n), fd)
WRAP(ssize_t, write, write, (int fd, const void *buf, size_t n), (fd, buf, n),
     syscall(SYS_write, fd, buf, n), fd)
WRAP(ssize_t, recv, recv, (int fd, void *buf, size_t n, int flags), (fd, buf, n, flags),
     syscall(SYS_recvfrom, fd, buf, n, flags, NULL, NULL), fd)
WRAP(ssize_t, recvfrom, recvfrom,
     (int fd, void *buf, size_t n, int flags, __SOCKADDR_ARG addr, socklen_t *len),
     (fd, buf, n, flags, addr, len),
     syscall(SYS_recvfrom, fd, buf, n, flags, TK_SA(addr), len), fd)
WRAP(ssize_t, recvmsg, recvmsg, (int fd, struct msghdr *msg, int flags), (fd, msg, flags),
     syscall(SYS_recvmsg, fd, msg, flags), fd)
WRAP(int, recvmmsg, recvmmsg,
     (int fd, struct mmsghdr *vec, unsigned vlen, int flags, struct timespec *timeout),
     (fd, vec, vlen, flags, timeout),
     syscall(SYS_recvmmsg, fd, vec, vlen, flags, timeout), fd)
WRAP(ssize_t, send, send, (int fd, const void *buf, size_t n, int flags), (fd, buf, n, flags),
     syscall(SYS_sendto, fd, buf, n, flags, NULL, 0), fd)
WRAP(ssize_t, sendto, sendto,
     (int fd, const void *buf, size_t n, int flags, __CONST_SOCKADDR_ARG addr, socklen_t len),
     (fd, buf, n, flags, addr, len),
     syscall(SYS_sendto, fd, buf, n, flags, TK_SA(addr), len), fd)
WRAP(ssize_t, sendmsg, sendmsg, (int fd, const struct msghdr *msg, int flags),
     (fd, msg, flags), syscall(SYS_sendmsg, fd, msg, flags), fd)
WRAP(int, sendmmsg, sendmmsg, (int fd, struct mmsghdr *vec, unsigned vlen, int flags),
     (fd, vec, vlen, flags), syscall(SYS_sendmmsg, fd, vec, vlen, flags), fd)
WRAP(ssize_t, readv, readv, (int fd, const struct iovec *iov, int cnt), (fd, iov, cnt),
     syscall(SYS_readv, fd, iov, cnt), fd)
WRAP(ssize_t, writev, writev, (int fd, const struct iovec *iov, int cnt), (fd, iov, cnt),
     syscall(SYS_writev, fd, iov, cnt), fd)

/* The fortified variants that _FORTIFY_SOURCE builds call instead. */
WRAP(ssize_t, __read_chk, read_chk, (int fd, void *buf, size_t n, size_t buflen),
     (fd, buf, n, buflen), syscall(SYS_read, fd, buf, n), fd)
WRAP(ssize_t, __recv_chk, recv_chk, (int fd, void *buf, size_t n, size_t buflen, int flags),
     (fd, buf, n, buflen, flags), syscall(SYS_recvfrom, fd, buf, n, flags, NULL, NULL), fd)
WRAP(ssize_t, __recvfrom_chk, recvfrom_chk,
     (int fd, void *buf, size_t n, size_t buflen, int flags, __SOCKADDR_ARG addr,
      socklen_t *len),
     (fd, buf, n, buflen, flags, addr, len),
     syscall(SYS_recvfrom, fd, buf, n, flags, TK_SA(addr), len), fd)

/* sendfile moves data between two descriptors: either may be a connection. */
#define SENDFILE(name, field)                                                  \
    EXPORT ssize_t name(int out_fd, int in_fd, off_t *offset, size_t count)    \
    {                                                                          \
        ssize_t r = CALL(field, syscall(SYS_sendfile, out_fd, in_fd, offset, count), \
                         out_fd, in_fd, offset, count);                        \
        if (r > 0) {                                                           \
            touch(out_fd);                                                     \
            touch(in_fd);                                                      \
        }                                                                      \
        return r;                                                              \
    }
SENDFILE(sendfile, sendfile)
SENDFILE(sendfile64, sendfile64)
