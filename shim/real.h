/* The real libc functions behind every hook, bound once with dlsym(RTLD_NEXT).
 *
 * A hook may run before our constructor (another library's constructor
 * calling write), or while dlsym itself is running (dlsym may malloc, and a
 * preloaded malloc may read a file). Until a pointer is bound, TK_REAL()
 * falls back to the raw system call, which is what every one of these glibc
 * functions is a thin wrapper for. No hook ever waits for the binding. */
#ifndef TK_REAL_H
#define TK_REAL_H

#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>

struct tk_real_fns {
    int (*socket)(int, int, int);
    int (*accept)(int, __SOCKADDR_ARG, socklen_t *);
    int (*accept4)(int, __SOCKADDR_ARG, socklen_t *, int);
    int (*connect)(int, __CONST_SOCKADDR_ARG, socklen_t);
    int (*setsockopt)(int, int, int, const void *, socklen_t);
    int (*listen)(int, int);
    int (*close)(int);
    int (*dup)(int);
    int (*dup2)(int, int);
    int (*dup3)(int, int, int);
    int (*fcntl)(int, int, ...);
    int (*fcntl64)(int, int, ...);
    int (*close_range)(unsigned, unsigned, int);
    void (*closefrom)(int);
    ssize_t (*read)(int, void *, size_t);
    ssize_t (*write)(int, const void *, size_t);
    ssize_t (*recv)(int, void *, size_t, int);
    ssize_t (*recvfrom)(int, void *, size_t, int, __SOCKADDR_ARG, socklen_t *);
    ssize_t (*recvmsg)(int, struct msghdr *, int);
    int (*recvmmsg)(int, struct mmsghdr *, unsigned, int, struct timespec *);
    ssize_t (*send)(int, const void *, size_t, int);
    ssize_t (*sendto)(int, const void *, size_t, int, __CONST_SOCKADDR_ARG, socklen_t);
    ssize_t (*sendmsg)(int, const struct msghdr *, int);
    int (*sendmmsg)(int, struct mmsghdr *, unsigned, int);
    ssize_t (*readv)(int, const struct iovec *, int);
    ssize_t (*writev)(int, const struct iovec *, int);
    ssize_t (*sendfile)(int, int, off_t *, size_t);
    ssize_t (*sendfile64)(int, int, off_t *, size_t);
    ssize_t (*read_chk)(int, void *, size_t, size_t);
    ssize_t (*recv_chk)(int, void *, size_t, size_t, int);
    ssize_t (*recvfrom_chk)(int, void *, size_t, size_t, int,
                            __SOCKADDR_ARG, socklen_t *);
};

extern struct tk_real_fns tk_real;

/* glibc declares the address arguments of accept, connect, recvfrom and
 * sendto as transparent unions under _GNU_SOURCE; the hooks and the real
 * pointers take them in that type, and TK_SA() gives the plain pointer. */
#if defined __cplusplus || !__GNUC_PREREQ(2, 7) || !defined __USE_GNU
#define TK_SA(a) (a)
#else
#define TK_SA(a) ((a).__sockaddr__)
#endif

/* Stubs for the read/write family (io.c): tk_real's first values. */
ssize_t tk_stub_read(int, void *, size_t);
ssize_t tk_stub_write(int, const void *, size_t);
ssize_t tk_stub_recv(int, void *, size_t, int);
ssize_t tk_stub_recvfrom(int, void *, size_t, int, __SOCKADDR_ARG, socklen_t *);
ssize_t tk_stub_recvmsg(int, struct msghdr *, int);
int tk_stub_recvmmsg(int, struct mmsghdr *, unsigned, int, struct timespec *);
ssize_t tk_stub_send(int, const void *, size_t, int);
ssize_t tk_stub_sendto(int, const void *, size_t, int, __CONST_SOCKADDR_ARG, socklen_t);
ssize_t tk_stub_sendmsg(int, const struct msghdr *, int);
int tk_stub_sendmmsg(int, struct mmsghdr *, unsigned, int);
ssize_t tk_stub_readv(int, const struct iovec *, int);
ssize_t tk_stub_writev(int, const struct iovec *, int);
ssize_t tk_stub_read_chk(int, void *, size_t, size_t);
ssize_t tk_stub_recv_chk(int, void *, size_t, size_t, int);
ssize_t tk_stub_recvfrom_chk(int, void *, size_t, size_t, int, __SOCKADDR_ARG, socklen_t *);

/* Binds every symbol once; safe from any thread and from inside a hook. */
void tk_real_bind(void);

/* Pointer to the real function, binding first if needed; NULL means
 * "not bound yet (re-entered during binding): use the raw system call".
 * For the cold hooks; the read/write family uses its stubs instead. */
#define TK_REAL(name) \
    (__builtin_expect(tk_real.name != NULL, 1) ? tk_real.name : (tk_real_bind(), tk_real.name))

#endif
