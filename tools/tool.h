/* tcpkeep-tool: the `tcpkeep stats` and `tcpkeep inspect` commands, which
 * the wrapper scripts/tcpkeep runs. Not linked with the shim, never run
 * under it. */
#ifndef TK_TOOL_H
#define TK_TOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Exit statuses. */
enum { TOOL_OK = 0, TOOL_FAILED = 1, TOOL_USAGE = 2 };

#define STATS_USAGE "usage: tcpkeep stats PATH"
#define INSPECT_USAGE "usage: tcpkeep inspect PID [--json]"

/* "tcpkeep: CMD: message" on stderr. */
void tool_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The message, then the usage line, on stderr; returns TOOL_USAGE. */
int tool_usage_error(const char *cmd, const char *usage, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

int cmd_stats(int argc, char **argv);   /* argv[0] = "stats" */
int cmd_inspect(int argc, char **argv); /* argv[0] = "inspect" */

/* One TCP socket as the kernel's socket diagnostics report it. */
struct diag_sock {
    uint8_t family;        /* AF_INET or AF_INET6 */
    uint8_t state;         /* kernel TCP state, 1..13 */
    uint16_t local_port;   /* host order */
    uint16_t peer_port;
    uint8_t local_addr[16]; /* network order; IPv4 in the first 4 bytes */
    uint8_t peer_addr[16];
    uint64_t inode;
    bool have_info;        /* the tcp_info times below are valid */
    uint32_t last_data_recv_ms;
    uint32_t last_data_sent_ms;
};

/* Calls `found` for every TCP socket (IPv4, then IPv6) of the current
 * network namespace except those in TIME_WAIT, through one
 * NETLINK_SOCK_DIAG dump per family. Returns 0, or -errno. */
typedef void (*diag_found_fn)(const struct diag_sock *sock, void *ctx);
int sock_diag_dump_tcp(diag_found_fn found, void *ctx);

/* "ESTABLISHED", "LISTEN", ... ("UNKNOWN" outside the kernel's range). */
const char *tcp_state_name(unsigned state);
enum { TCP_STATE_ESTABLISHED = 1, TCP_STATE_SYN_SENT = 2, TCP_STATE_CLOSE = 7,
       TCP_STATE_LISTEN = 10 };

/* "1.2.3.4:80", "[::1]:80" (an IPv4-mapped address as IPv4), or with
 * port 0 on a listener "0.0.0.0:*". */
void format_endpoint(char *out, size_t size, int family, const uint8_t addr[16],
                     uint16_t port, bool port_wildcard);

#endif
