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
/* Sets SO_KEEPALIVE and the TCP_KEEP* / TCP_USER_TIMEOUT values of `set`,
 * skipping those in `own` (TK_OPT_* the program set itself) unless
 * set->override. `again`: a new rules file changed the settings of a live
 * connection, so SO_KEEPALIVE is set either way. A failure is logged at
 * debug and counted. Returns true if it turned SO_KEEPALIVE on. */
bool tk_apply_options(int fd, const struct tk_settings *set, unsigned own, bool again);
/* The TK_OPT_* bit of a setsockopt(level, name) the shim also sets, or 0. */
unsigned tk_option_bit(int level, int name);
/* Whether `set` gives a value for that option (so override swallows it). */
bool tk_settings_sets(const struct tk_settings *set, unsigned bit);

#endif
