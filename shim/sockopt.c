/* Socket questions and options; see sockopt.h. */
#include "sockopt.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>

#include "log.h"

bool tk_is_tcp_args(int domain, int type, int protocol)
{
    /* SOCK_NONBLOCK and SOCK_CLOEXEC ride in `type`: mask them off, and
     * compare for equality (SOCK_SEQPACKET and SOCK_RAW share bits). */
    int base = type & ~(SOCK_NONBLOCK | SOCK_CLOEXEC);
    return (domain == AF_INET || domain == AF_INET6) && base == SOCK_STREAM &&
           (protocol == 0 || protocol == IPPROTO_TCP);
}

bool tk_is_tcp_fd(int fd)
{
    int saved = errno;
    int domain = 0, protocol = 0, type = 0;
    socklen_t len = sizeof(int);
    bool tcp = getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) == 0 &&
               (domain == AF_INET || domain == AF_INET6) &&
               (len = sizeof(int), getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0) &&
               type == SOCK_STREAM &&
               (len = sizeof(int), getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &protocol, &len) == 0) &&
               protocol == IPPROTO_TCP;
    errno = saved;
    return tcp;
}

uint64_t tk_socket_cookie(int fd)
{
    int saved = errno;
    uint64_t cookie = 0;
    socklen_t len = sizeof(cookie);
    if (getsockopt(fd, SOL_SOCKET, SO_COOKIE, &cookie, &len) != 0)
        cookie = 0;
    errno = saved;
    return cookie;
}

static void set_int(int fd, int level, int name, const char *label, int value)
{
    if (setsockopt(fd, level, name, &value, sizeof(value)) != 0)
        tk_log(TK_LOG_DEBUG, "fd %d: setsockopt %s=%d failed: %s", fd, label, value,
               strerror(errno));
}

void tk_apply_options(int fd, const struct tk_config *cfg)
{
    int saved = errno;
    if (cfg->keepalive)
        set_int(fd, SOL_SOCKET, SO_KEEPALIVE, "SO_KEEPALIVE", 1);
    if (cfg->keepidle_s)
        set_int(fd, IPPROTO_TCP, TCP_KEEPIDLE, "TCP_KEEPIDLE", cfg->keepidle_s);
    if (cfg->keepintvl_s)
        set_int(fd, IPPROTO_TCP, TCP_KEEPINTVL, "TCP_KEEPINTVL", cfg->keepintvl_s);
    if (cfg->keepcnt)
        set_int(fd, IPPROTO_TCP, TCP_KEEPCNT, "TCP_KEEPCNT", cfg->keepcnt);
    if (cfg->user_timeout_ms)
        set_int(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, "TCP_USER_TIMEOUT", (int)cfg->user_timeout_ms);
    errno = saved;
}
