/* Socket questions and options; see sockopt.h. */
#include "sockopt.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "log.h"
#include "stats.h"
#include "table.h"

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

static bool set_int(int fd, int level, int name, const char *label, int value)
{
    /* The raw call: our own setsockopt hook would take it for the program's. */
    if (syscall(SYS_setsockopt, fd, level, name, &value, (socklen_t)sizeof(value)) == 0)
        return true;
    tk_count(&tk_stats.option_errors, 1);
    tk_log(TK_LOG_DEBUG, "fd %d: setsockopt %s=%d failed: %s", fd, label, value, strerror(errno));
    return false;
}

bool tk_apply_options(int fd, const struct tk_settings *set, unsigned own, bool again)
{
    int saved = errno;
    if (set->override)
        own = 0;
    bool keepalive_on = false;
    if (!(own & TK_OPT_KEEPALIVE) && (set->keepalive || again))
        keepalive_on = set_int(fd, SOL_SOCKET, SO_KEEPALIVE, "SO_KEEPALIVE", set->keepalive) &&
                       set->keepalive;
    if (set->keepidle_s && !(own & TK_OPT_KEEPIDLE))
        set_int(fd, IPPROTO_TCP, TCP_KEEPIDLE, "TCP_KEEPIDLE", set->keepidle_s);
    if (set->keepintvl_s && !(own & TK_OPT_KEEPINTVL))
        set_int(fd, IPPROTO_TCP, TCP_KEEPINTVL, "TCP_KEEPINTVL", set->keepintvl_s);
    if (set->keepcnt && !(own & TK_OPT_KEEPCNT))
        set_int(fd, IPPROTO_TCP, TCP_KEEPCNT, "TCP_KEEPCNT", set->keepcnt);
    if (set->user_timeout_ms && !(own & TK_OPT_USER_TIMEOUT))
        set_int(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, "TCP_USER_TIMEOUT", (int)set->user_timeout_ms);
    errno = saved;
    return keepalive_on;
}

unsigned tk_option_bit(int level, int name)
{
    if (level == SOL_SOCKET && name == SO_KEEPALIVE)
        return TK_OPT_KEEPALIVE;
    if (level != IPPROTO_TCP)
        return 0;
    switch (name) {
    case TCP_KEEPIDLE:
        return TK_OPT_KEEPIDLE;
    case TCP_KEEPINTVL:
        return TK_OPT_KEEPINTVL;
    case TCP_KEEPCNT:
        return TK_OPT_KEEPCNT;
    case TCP_USER_TIMEOUT:
        return TK_OPT_USER_TIMEOUT;
    default:
        return 0;
    }
}

bool tk_settings_sets(const struct tk_settings *set, unsigned bit)
{
    switch (bit) {
    case TK_OPT_KEEPALIVE:
        return set->keepalive;
    case TK_OPT_KEEPIDLE:
        return set->keepidle_s != 0;
    case TK_OPT_KEEPINTVL:
        return set->keepintvl_s != 0;
    case TK_OPT_KEEPCNT:
        return set->keepcnt != 0;
    case TK_OPT_USER_TIMEOUT:
        return set->user_timeout_ms != 0;
    default:
        return false;
    }
}
