/* The hot path: the read/write family.
 *
 * Each wrapper calls the real function and, if at least one byte moved,
 * stamps the connection's activity: atomic loads to find the record from the
 * fd, and a relaxed store of the coarse monotonic clock, only when the stamp
 * changes (so threads on different connections never write shared lines).
 * No lock, no allocation, no system call, errno untouched: safe in signal
 * handlers and after fork. An untracked fd costs one load and a branch. */
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

/* Call the real function, or the raw system call while binding is under way. */
#define CALL(name, fallback, ...) \
    (TK_REAL(name) ? tk_real.name(__VA_ARGS__) : (fallback))

EXPORT ssize_t read(int fd, void *buf, size_t n)
{
    ssize_t r = CALL(read, syscall(SYS_read, fd, buf, n), fd, buf, n);
    if (r > 0)
        touch(fd);
    return r;
}

EXPORT ssize_t write(int fd, const void *buf, size_t n)
{
    ssize_t r = CALL(write, syscall(SYS_write, fd, buf, n), fd, buf, n);
    if (r > 0)
        touch(fd);
    return r;
}

EXPORT ssize_t recv(int fd, void *buf, size_t n, int flags)
{
    ssize_t r = CALL(recv, syscall(SYS_recvfrom, fd, buf, n, flags, NULL, NULL),
                     fd, buf, n, flags);
    if (r > 0)
        touch(fd);
    return r;
}

EXPORT ssize_t recvfrom(int fd, void *buf, size_t n, int flags, __SOCKADDR_ARG addr,
                        socklen_t *len)
{
    ssize_t r = CALL(recvfrom, syscall(SYS_recvfrom, fd, buf, n, flags, TK_SA(addr), len),
                     fd, buf, n, flags, TK_SA(addr), len);
    if (r > 0)
        touch(fd);
    return r;
}

EXPORT ssize_t recvmsg(int fd, struct msghdr *msg, int flags)
{
    ssize_t r = CALL(recvmsg, syscall(SYS_recvmsg, fd, msg, flags), fd, msg, flags);
    if (r > 0)
        touch(fd);
    return r;
}

EXPORT int recvmmsg(int fd, struct mmsghdr *vec, unsigned vlen, int flags,
                    struct timespec *timeout)
{
    int r = CALL(recvmmsg, (int)syscall(SYS_recvmmsg, fd, vec, vlen, flags, timeout),
                 fd, vec, vlen, flags, timeout);
    if (r > 0)
        touch(fd);
    return r;
}

EXPORT ssize_t send(int fd, const void *buf, size_t n, int flags)
{
    ssize_t r = CALL(send, syscall(SYS_sendto, fd, buf, n, flags, NULL, 0), fd, buf, n, flags);
    if (r > 0)
        touch(fd);
    return r;
}

EXPORT ssize_t sendto(int fd, const void *buf, size_t n, int flags,
                      __CONST_SOCKADDR_ARG addr, socklen_t len)
{
    ssize_t r = CALL(sendto, syscall(SYS_sendto, fd, buf, n, flags, TK_SA(addr), len),
                     fd, buf, n, flags, TK_SA(addr), len);
    if (r > 0)
        touch(fd);
    return r;
}

EXPORT ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
    ssize_t r = CALL(sendmsg, syscall(SYS_sendmsg, fd, msg, flags), fd, msg, flags);
    if (r > 0)
        touch(fd);
    return r;
}

EXPORT int sendmmsg(int fd, struct mmsghdr *vec, unsigned vlen, int flags)
{
    int r = CALL(sendmmsg, (int)syscall(SYS_sendmmsg, fd, vec, vlen, flags),
                 fd, vec, vlen, flags);
    if (r > 0)
        touch(fd);
    return r;
}

EXPORT ssize_t readv(int fd, const struct iovec *iov, int cnt)
{
    ssize_t r = CALL(readv, syscall(SYS_readv, fd, iov, cnt), fd, iov, cnt);
    if (r > 0)
        touch(fd);
    return r;
}

EXPORT ssize_t writev(int fd, const struct iovec *iov, int cnt)
{
    ssize_t r = CALL(writev, syscall(SYS_writev, fd, iov, cnt), fd, iov, cnt);
    if (r > 0)
        touch(fd);
    return r;
}

EXPORT ssize_t sendfile(int out_fd, int in_fd, off_t *offset, size_t count)
{
    ssize_t r = CALL(sendfile, syscall(SYS_sendfile, out_fd, in_fd, offset, count),
                     out_fd, in_fd, offset, count);
    if (r > 0) {
        touch(out_fd);
        touch(in_fd);
    }
    return r;
}

EXPORT ssize_t sendfile64(int out_fd, int in_fd, off_t *offset, size_t count)
{
    ssize_t r = CALL(sendfile64, syscall(SYS_sendfile, out_fd, in_fd, offset, count),
                     out_fd, in_fd, offset, count);
    if (r > 0) {
        touch(out_fd);
        touch(in_fd);
    }
    return r;
}

/* The fortified variants that _FORTIFY_SOURCE builds call instead. */
EXPORT ssize_t __read_chk(int fd, void *buf, size_t n, size_t buflen)
{
    ssize_t r = CALL(read_chk, syscall(SYS_read, fd, buf, n), fd, buf, n, buflen);
    if (r > 0)
        touch(fd);
    return r;
}

EXPORT ssize_t __recv_chk(int fd, void *buf, size_t n, size_t buflen, int flags)
{
    ssize_t r = CALL(recv_chk, syscall(SYS_recvfrom, fd, buf, n, flags, NULL, NULL),
                     fd, buf, n, buflen, flags);
    if (r > 0)
        touch(fd);
    return r;
}

EXPORT ssize_t __recvfrom_chk(int fd, void *buf, size_t n, size_t buflen, int flags,
                              struct sockaddr *addr, socklen_t *len)
{
    ssize_t r = CALL(recvfrom_chk, syscall(SYS_recvfrom, fd, buf, n, flags, addr, len),
                     fd, buf, n, buflen, flags, addr, len);
    if (r > 0)
        touch(fd);
    return r;
}
