/* Binding of the real libc functions. See real.h for why a hook never waits. */
#include "real.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdatomic.h>

/* The read/write family starts on stubs (io.c) that bind on first use, so
 * the hot path calls through tk_real without testing for NULL. */
#define STUB(field) .field = tk_stub_##field
struct tk_real_fns tk_real = {
    STUB(read), STUB(write), STUB(recv), STUB(recvfrom), STUB(recvmsg), STUB(recvmmsg),
    STUB(send), STUB(sendto), STUB(sendmsg), STUB(sendmmsg), STUB(readv), STUB(writev),
    STUB(read_chk), STUB(recv_chk), STUB(recvfrom_chk),
};

/* 0 = unbound, 1 = a thread is binding, 2 = bound. */
static atomic_int bind_state;

/* Refuse a symbol that resolves into this very library (possible with
 * unusual link orders): it would recurse forever. Such a symbol stays on
 * the raw system call fallback. The library's extent comes from the
 * linker's own symbols: no dladdr, which scans symbol tables. */
extern const char __ehdr_start[];
extern const char _end[];

static void *lookup(const char *name)
{
    const char *p = dlsym(RTLD_NEXT, name);
    if (p >= __ehdr_start && p < _end)
        return NULL;
    return (void *)p;
}

/* A symbol that cannot be found keeps what it had: NULL (the hooks then
 * make the raw system call) or its stub. */
#define BIND(field, sym)                                                  \
    do {                                                                  \
        void *p_ = lookup(sym);                                           \
        if (p_)                                                           \
            tk_real.field = (__typeof__(tk_real.field))p_;                \
    } while (0)

void tk_real_bind(void)
{
    int expected = 0;
    if (!atomic_compare_exchange_strong(&bind_state, &expected, 1))
        return; /* bound already, or being bound (maybe by this very thread) */

    int saved = errno;
    BIND(socket, "socket");
    BIND(accept, "accept");
    BIND(accept4, "accept4");
    BIND(connect, "connect");
    BIND(setsockopt, "setsockopt");
    BIND(listen, "listen");
    BIND(close, "close");
    BIND(dup, "dup");
    BIND(dup2, "dup2");
    BIND(dup3, "dup3");
    BIND(fcntl, "fcntl");
    BIND(fcntl64, "fcntl64");
    BIND(close_range, "close_range");
    BIND(closefrom, "closefrom");
    BIND(read, "read");
    BIND(write, "write");
    BIND(recv, "recv");
    BIND(recvfrom, "recvfrom");
    BIND(recvmsg, "recvmsg");
    BIND(recvmmsg, "recvmmsg");
    BIND(send, "send");
    BIND(sendto, "sendto");
    BIND(sendmsg, "sendmsg");
    BIND(sendmmsg, "sendmmsg");
    BIND(readv, "readv");
    BIND(writev, "writev");
    BIND(sendfile, "sendfile");
    BIND(sendfile64, "sendfile64");
    BIND(read_chk, "__read_chk");
    BIND(recv_chk, "__recv_chk");
    BIND(recvfrom_chk, "__recvfrom_chk");
    errno = saved;
    atomic_store(&bind_state, 2);
}
