/* TCP_INFO through the kernel's own layout; see tcpinfo.h. */
#include "tcpinfo.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <linux/tcp.h>

/* Whether the kernel filled a field: older kernels return a shorter struct. */
#define HAS(len, field) ((len) >= offsetof(struct tcp_info, field) + sizeof(((struct tcp_info *)0)->field))

bool tk_read_tcp_info(int fd, struct tk_observation *obs)
{
    int saved = errno;
    struct tcp_info info;
    socklen_t len = sizeof(info);
    memset(&info, 0, sizeof(info));
    bool ok = getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) == 0;
    errno = saved;
    if (!ok)
        return false;
    obs->have_info = true;
    obs->tcp_state = info.tcpi_state;
    obs->last_data_recv_ms = info.tcpi_last_data_recv;
    obs->last_data_sent_ms = info.tcpi_last_data_sent;
    obs->last_ack_recv_ms = info.tcpi_last_ack_recv;
    obs->unacked = info.tcpi_unacked;
    obs->rtt_us = info.tcpi_rtt;
    if (HAS(len, tcpi_bytes_received)) {
        obs->bytes_acked = info.tcpi_bytes_acked;
        obs->bytes_received = info.tcpi_bytes_received;
    }
    obs->window_closed = HAS(len, tcpi_snd_wnd) && info.tcpi_snd_wnd == 0;
    return true;
}
