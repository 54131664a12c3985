/* The machine's TCP sockets through NETLINK_SOCK_DIAG (what ss(8) uses):
 * one dump per address family, with the tcp_info times of each socket.
 * Much faster than /proc/net/tcp with many sockets, TIME_WAIT ones least
 * of all: the kernel leaves those out of the reply for us. */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "tool.h"

/* Kernel TCP states (include/net/tcp_states.h), which the dump reports. */
static const char *const state_names[] = {
    "UNKNOWN", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2",
    "TIME_WAIT", "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING",
    "NEW_SYN_RECV", "BOUND_INACTIVE",
};
#define STATE_TIME_WAIT 6
#define STATE_NEW_SYN_RECV 12 /* request sockets: no descriptor, no inode */

const char *tcp_state_name(unsigned state)
{
    if (state >= sizeof(state_names) / sizeof(state_names[0]))
        return state_names[0];
    return state_names[state];
}

static bool is_v4_mapped(const uint8_t a[16])
{
    static const uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return memcmp(a, prefix, sizeof(prefix)) == 0;
}

void format_endpoint(char *out, size_t size, int family, const uint8_t addr[16],
                     uint16_t port, bool port_wildcard)
{
    char host[INET6_ADDRSTRLEN];
    char port_text[8];
    bool v6 = family == AF_INET6 && !is_v4_mapped(addr);
    if (family == AF_INET6 && !v6)
        inet_ntop(AF_INET, addr + 12, host, sizeof(host));
    else if (!inet_ntop(v6 ? AF_INET6 : AF_INET, addr, host, sizeof(host)))
        strcpy(host, "?");
    if (port_wildcard && port == 0)
        strcpy(port_text, "*");
    else
        snprintf(port_text, sizeof(port_text), "%u", (unsigned)port);
    snprintf(out, size, v6 ? "[%s]:%s" : "%s:%s", host, port_text);
}

/* Bounds: no single wait longer than this, and the whole dump not longer
 * than DUMP_LIMIT_S (a machine with a million sockets takes well under). */
#define RECV_TIMEOUT_S 5
#define DUMP_LIMIT_S 30

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void decode(const struct nlmsghdr *h, diag_found_fn found, void *ctx)
{
    if (h->nlmsg_len < NLMSG_LENGTH(sizeof(struct inet_diag_msg)))
        return;
    const struct inet_diag_msg *m = NLMSG_DATA(h);
    if (m->idiag_inode == 0)
        return; /* not (or no longer) attached to a descriptor */
    struct diag_sock s;
    memset(&s, 0, sizeof(s));
    s.family = m->idiag_family;
    s.state = m->idiag_state;
    s.local_port = ntohs(m->id.idiag_sport);
    s.peer_port = ntohs(m->id.idiag_dport);
    size_t addr_len = s.family == AF_INET ? 4 : 16;
    memcpy(s.local_addr, m->id.idiag_src, addr_len);
    memcpy(s.peer_addr, m->id.idiag_dst, addr_len);
    s.inode = m->idiag_inode;

    int attr_len = (int)(h->nlmsg_len - NLMSG_LENGTH(sizeof(*m)));
    for (const struct rtattr *a = (const struct rtattr *)(m + 1); RTA_OK(a, attr_len);
         a = RTA_NEXT(a, attr_len)) {
        if (a->rta_type != INET_DIAG_INFO)
            continue;
        size_t n = RTA_PAYLOAD(a);
        const unsigned char *info = RTA_DATA(a);
        size_t need = offsetof(struct tcp_info, tcpi_last_data_recv) + sizeof(uint32_t);
        if (n >= need) {
            memcpy(&s.last_data_sent_ms, info + offsetof(struct tcp_info, tcpi_last_data_sent),
                   sizeof(uint32_t));
            memcpy(&s.last_data_recv_ms, info + offsetof(struct tcp_info, tcpi_last_data_recv),
                   sizeof(uint32_t));
            s.have_info = true;
        }
    }
    found(&s, ctx);
}

static int dump_family(int nl, uint8_t family, uint32_t seq, diag_found_fn found, void *ctx,
                       double deadline)
{
    struct {
        struct nlmsghdr nlh;
        struct inet_diag_req_v2 req;
    } request;
    memset(&request, 0, sizeof(request));
    request.nlh.nlmsg_len = sizeof(request);
    request.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
    request.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    request.nlh.nlmsg_seq = seq;
    request.req.sdiag_family = family;
    request.req.sdiag_protocol = IPPROTO_TCP;
    request.req.idiag_states = ~((1u << STATE_TIME_WAIT) | (1u << STATE_NEW_SYN_RECV));
    request.req.idiag_ext = 1u << (INET_DIAG_INFO - 1);

    struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
    if (sendto(nl, &request, sizeof(request), 0, (struct sockaddr *)&kernel,
               sizeof(kernel)) < 0)
        return -errno;

    /* The kernel fills each reply up to 32 KiB; twice that never truncates. */
    static uint32_t buf[65536 / sizeof(uint32_t)];
    for (;;) {
        if (now_s() > deadline)
            return -ETIMEDOUT;
        struct iovec iov = {.iov_base = buf, .iov_len = sizeof(buf)};
        struct sockaddr_nl from;
        struct msghdr msg = {.msg_name = &from, .msg_namelen = sizeof(from),
                             .msg_iov = &iov, .msg_iovlen = 1};
        ssize_t n = recvmsg(nl, &msg, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return errno == EAGAIN ? -ETIMEDOUT : -errno;
        if (n == 0)
            return -EPIPE;
        if (msg.msg_flags & MSG_TRUNC)
            return -EMSGSIZE;
        if (from.nl_pid != 0)
            continue; /* not from the kernel */
        int len = (int)n;
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, len);
             h = NLMSG_NEXT(h, len)) {
            if (h->nlmsg_seq != seq)
                continue;
            if (h->nlmsg_type == NLMSG_DONE)
                return 0;
            if (h->nlmsg_type == NLMSG_ERROR) {
                const struct nlmsgerr *e = NLMSG_DATA(h);
                if (h->nlmsg_len < NLMSG_LENGTH(sizeof(*e)))
                    return -EPROTO;
                return e->error ? e->error : -EPROTO;
            }
            if (h->nlmsg_type == SOCK_DIAG_BY_FAMILY)
                decode(h, found, ctx);
        }
    }
}

int sock_diag_dump_tcp(diag_found_fn found, void *ctx)
{
    int nl = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (nl < 0)
        return -errno;
    struct timeval tv = {.tv_sec = RECV_TIMEOUT_S};
    setsockopt(nl, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    double deadline = now_s() + DUMP_LIMIT_S;
    int rc = dump_family(nl, AF_INET, 1, found, ctx, deadline);
    if (rc == 0)
        rc = dump_family(nl, AF_INET6, 2, found, ctx, deadline);
    close(nl);
    return rc;
}
