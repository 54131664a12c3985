/* Interposition and nothing else: a preload library that exports the same
 * functions as libtcpkeep and forwards each one to the next definition
 * (libc), bound with dlsym(RTLD_NEXT). Measured beside the shim, it tells
 * how much of the shim's overhead is interposition itself (the PLT jump into
 * a preloaded library and an indirect jump onwards) and how much is the
 * shim's own work.
 *
 * Benchmark use only: no fallback for a call made while dlsym itself runs
 * (nothing in the benchmarks does that). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <stddef.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

#define FUNCS(X)                                                                          \
    X(int, socket, (int d, int t, int p), (d, t, p))                                       \
    X(int, accept, (int fd, __SOCKADDR_ARG a, socklen_t *l), (fd, a, l))               \
    X(int, accept4, (int fd, __SOCKADDR_ARG a, socklen_t *l, int f), (fd, a, l, f))    \
    X(int, connect, (int fd, __CONST_SOCKADDR_ARG a, socklen_t l), (fd, a, l))         \
    X(int, close, (int fd), (fd))                                                          \
    X(int, dup, (int fd), (fd))                                                            \
    X(int, dup2, (int a, int b), (a, b))                                                   \
    X(int, dup3, (int a, int b, int f), (a, b, f))                                         \
    X(int, close_range, (unsigned a, unsigned b, int f), (a, b, f))                        \
    X(ssize_t, read, (int fd, void *b, size_t n), (fd, b, n))                              \
    X(ssize_t, write, (int fd, const void *b, size_t n), (fd, b, n))                       \
    X(ssize_t, recv, (int fd, void *b, size_t n, int f), (fd, b, n, f))                    \
    X(ssize_t, recvfrom, (int fd, void *b, size_t n, int f, __SOCKADDR_ARG a, socklen_t *l), \
      (fd, b, n, f, a, l))                                                             \
    X(ssize_t, recvmsg, (int fd, struct msghdr *m, int f), (fd, m, f))                     \
    X(int, recvmmsg, (int fd, struct mmsghdr *v, unsigned n, int f, struct timespec *t),   \
      (fd, v, n, f, t))                                                                    \
    X(ssize_t, send, (int fd, const void *b, size_t n, int f), (fd, b, n, f))              \
    X(ssize_t, sendto,                                                                     \
      (int fd, const void *b, size_t n, int f, __CONST_SOCKADDR_ARG a, socklen_t l),       \
      (fd, b, n, f, a, l))                                                             \
    X(ssize_t, sendmsg, (int fd, const struct msghdr *m, int f), (fd, m, f))               \
    X(int, sendmmsg, (int fd, struct mmsghdr *v, unsigned n, int f), (fd, v, n, f))        \
    X(ssize_t, readv, (int fd, const struct iovec *v, int n), (fd, v, n))                  \
    X(ssize_t, writev, (int fd, const struct iovec *v, int n), (fd, v, n))                 \
    X(ssize_t, sendfile, (int o, int i, off_t *off, size_t n), (o, i, off, n))             \
    X(ssize_t, sendfile64, (int o, int i, off_t *off, size_t n), (o, i, off, n))           \
    X(ssize_t, __read_chk, (int fd, void *b, size_t n, size_t bl), (fd, b, n, bl))         \
    X(ssize_t, __recv_chk, (int fd, void *b, size_t n, size_t bl, int f), (fd, b, n, bl, f)) \
    X(ssize_t, __recvfrom_chk,                                                             \
      (int fd, void *b, size_t n, size_t bl, int f, __SOCKADDR_ARG a, socklen_t *l),       \
      (fd, b, n, bl, f, a, l))

#define DECLARE(type, name, params, args) static void *real_##name;
FUNCS(DECLARE)
static void *real_fcntl, *real_fcntl64, *real_closefrom;

static void bind_all(void)
{
#define BIND(type, name, params, args) real_##name = dlsym(RTLD_NEXT, #name);
    FUNCS(BIND)
    real_fcntl = dlsym(RTLD_NEXT, "fcntl");
    real_fcntl64 = dlsym(RTLD_NEXT, "fcntl64");
    real_closefrom = dlsym(RTLD_NEXT, "closefrom");
}

__attribute__((constructor)) static void init(void)
{
    bind_all();
}

/* Each wrapper: load the pointer, (bind if a hook ran before the
 * constructor), jump: the pointer is called with the wrapper's own
 * prototype, so the compiler emits a plain tail call. */
#define DEFINE(type, name, params, args)                                       \
    EXPORT type name params                                                    \
    {                                                                          \
        if (__builtin_expect(real_##name == NULL, 0))                          \
            bind_all();                                                        \
        return ((type(*) params)real_##name) args;                                  \
    }
FUNCS(DEFINE)

/* Like glibc's own fcntl: the optional argument is taken as a pointer. */
EXPORT int fcntl(int fd, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    if (!real_fcntl)
        bind_all();
    return ((int (*)(int, int, void *))real_fcntl)(fd, cmd, arg);
}

EXPORT int fcntl64(int fd, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    if (!real_fcntl64)
        bind_all();
    return ((int (*)(int, int, void *))real_fcntl64)(fd, cmd, arg);
}

EXPORT void closefrom(int lowfd)
{
    if (!real_closefrom)
        bind_all();
    ((void (*)(int))real_closefrom)(lowfd);
}
