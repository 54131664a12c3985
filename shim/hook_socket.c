/* Hooks that make TCP sockets and set their options: socket, listen,
 * accept, accept4, connect, setsockopt.
 * Cold path: options are set and the table updated here, never in io.c. */
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "real.h"
#include "shim.h"
#include "sockopt.h"
#include "table.h"

#define EXPORT __attribute__((visibility("default")))

EXPORT int socket(int domain, int type, int protocol)
{
    int fd = TK_REAL(socket) ? tk_real.socket(domain, type, protocol)
                             : (int)syscall(SYS_socket, domain, type, protocol);
    if (fd < 0)
        return fd;
    if (tk_is_tcp_args(domain, type, protocol) && tk_active())
        tk_track_socket(fd);
    else
        tk_forget(fd);
    return fd;
}

/* A socket accepted from a listener the shim made inherits its options
 * (and any the program set on the listener since); track_conn gives one
 * from a listener we did not see made (inherited across exec) its own. */
static void accepted(int listener, int fd, const struct sockaddr *addr, const socklen_t *len)
{
    if (!tk_active()) {
        tk_forget(fd);
        return;
    }
    if (!tk_slot_get(listener)) {
        /* The peer address, when the program asked for it, rules out UNIX
         * sockets without a system call. */
        if (addr && len && *len >= sizeof(sa_family_t) &&
            addr->sa_family != AF_INET && addr->sa_family != AF_INET6) {
            tk_forget(fd);
            return;
        }
        if (!tk_is_tcp_fd(fd)) {
            tk_forget(fd);
            return;
        }
    }
    tk_track_conn(fd, listener, TK_DIR_IN, NULL);
}

EXPORT int accept(int fd, __SOCKADDR_ARG addr, socklen_t *len)
{
    int r = TK_REAL(accept) ? tk_real.accept(fd, TK_SA(addr), len)
                            : (int)syscall(SYS_accept, fd, TK_SA(addr), len);
    if (r >= 0)
        accepted(fd, r, TK_SA(addr), len);
    return r;
}

EXPORT int accept4(int fd, __SOCKADDR_ARG addr, socklen_t *len, int flags)
{
    int r = TK_REAL(accept4) ? tk_real.accept4(fd, TK_SA(addr), len, flags)
                             : (int)syscall(SYS_accept4, fd, TK_SA(addr), len, flags);
    if (r >= 0)
        accepted(fd, r, TK_SA(addr), len);
    return r;
}

EXPORT int connect(int fd, __CONST_SOCKADDR_ARG addr, socklen_t len)
{
    int r = TK_REAL(connect) ? tk_real.connect(fd, TK_SA(addr), len)
                             : (int)syscall(SYS_connect, fd, TK_SA(addr), len);
    int err = errno;
    /* In progress or interrupted, the handshake goes on in the kernel. */
    const struct sockaddr *to = TK_SA(addr);
    if ((r == 0 || err == EINPROGRESS || err == EINTR) && to &&
        ((to->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) ||
         (to->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6))) &&
        tk_slot_get(fd))
        tk_track_conn(fd, -1, TK_DIR_OUT, to);
    errno = err;
    return r;
}

EXPORT int listen(int fd, int backlog)
{
    int r = TK_REAL(listen) ? tk_real.listen(fd, backlog)
                            : (int)syscall(SYS_listen, fd, backlog);
    if (r == 0 && tk_slot_get(fd)) {
        int err = errno;
        tk_listening(fd);
        errno = err;
    }
    return r;
}

/* The program's own keepalive options: remembered, so that the shim leaves
 * them as the program set them; swallowed under TCPKEEP_OVERRIDE=on. */
EXPORT int setsockopt(int fd, int level, int name, const void *val, socklen_t len)
{
    unsigned bit;
    if (tk_slot_get(fd) && (bit = tk_option_bit(level, name)) && tk_own_option(fd, bit))
        return 0;
    return TK_REAL(setsockopt) ? tk_real.setsockopt(fd, level, name, val, len)
                               : (int)syscall(SYS_setsockopt, fd, level, name, val, len);
}
