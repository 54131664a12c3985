/* What the shim asks of a socket: is it TCP, what is its identity, and the
 * keepalive options. Cold path only; every function keeps errno. */
#ifndef TK_SOCKOPT_H
#define TK_SOCKOPT_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"

/* From socket()'s arguments alone, without a system call. */
bool tk_is_tcp_args(int domain, int type, int protocol);
/* For a descriptor we did not see made (accepted from an inherited listener). */
bool tk_is_tcp_fd(int fd);
/* SO_COOKIE, or 0 if it cannot be read. */
uint64_t tk_socket_cookie(int fd);
/* Sets SO_KEEPALIVE and the configured TCP_KEEP* / TCP_USER_TIMEOUT;
 * a failure is logged at debug and otherwise ignored. */
void tk_apply_options(int fd, const struct tk_config *cfg);

#endif
