/* State shared by the hooks: the configuration, whether the shim is on,
 * and the cold-path operations the hooks call into. */
#ifndef TK_SHIM_H
#define TK_SHIM_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "schedule.h"

extern struct tk_config tk_cfg;
extern struct tk_policy tk_policy;
/* Options wait for accept/connect, when a connection's ports and peer are
 * known (TCPKEEP_PORTS, _PEERS, _DIRECTION or a rules file are set). */
extern bool tk_deferred;
/* The rules file's current rules, or NULL. Under the table lock. */
struct tk_rules;
extern struct tk_rules *tk_rules_current;
/* What applies to a connection, or NULL if it is not managed. Under the lock. */
const struct tk_settings *tk_settings_for(const struct tk_conn_key *key);

/* Loads the configuration on first use (the constructor, or an earlier
 * hook); true when the shim is on. False while another thread is loading
 * it, and for good when the configuration was bad: pass everything through. */
bool tk_active(void);

/* Cold path, each keeps errno. */
void tk_track_socket(int fd);                /* fd: a TCP socket just made by socket() */
/* fd: a TCP connection just accepted from `listener` (TK_DIR_IN) or being
 * connected to `peer` (TK_DIR_OUT, listener -1). */
struct sockaddr;
void tk_track_conn(int fd, int listener, uint8_t direction, const struct sockaddr *peer);
/* fd (a tracked socket) now listens: with port or direction rules only,
 * its own port decides for every connection it will accept. */
void tk_listening(int fd);
/* setsockopt of an option the shim sets (TK_OPT_* bit): remember that the
 * program set it; true if the call is to be swallowed (override). */
bool tk_own_option(int fd, unsigned bit);
void tk_forget(int fd);                     /* fd: just returned by a call, not ours */
void tk_after_dup(int oldfd, int newfd);    /* newfd now refers to oldfd's file */
void tk_before_close(int fd);
void tk_before_close_range(unsigned first, unsigned last);

/* Descriptors the shim itself holds (the log file, the watchdog's
 * temporary dup): the program's close() of one fails with EBADF, as it
 * would without the shim, and close_range() steps around them. A number
 * that comes back from a wrapped call (dup2 onto it, or reused after a close
 * we did not see) is the program's again. */
#define TK_PRIVATE_FDS 2
#define TK_PRIVATE_LOG 0
#define TK_PRIVATE_WATCHDOG 1
bool tk_is_private_fd(int fd);
/* For close(): fd is private and still ours (checked, not just remembered). */
bool tk_owns_private_fd(int fd);
int tk_private_fds_in(unsigned first, unsigned last, int out[TK_PRIVATE_FDS]);
void tk_set_private_fd(int which, int fd);

/* The watchdog (watchdog.c). Under the table lock. check_at_ns: when a
 * connection is due, or UINT64_MAX just to have the thread running (it
 * also watches the rules file and writes the stats). */
void tk_watchdog_notify(uint64_t check_at_ns);
/* True if the watchdog must run even with nothing due. */
bool tk_watchdog_has_chores(void);
void tk_watchdog_after_fork_child(void);
/* fork(): the watchdog's private dup must not be copied into the child. */
void tk_watchdog_fork_prepare(void);
void tk_watchdog_fork_parent(void);
void tk_watchdog_fork_child_early(void);

#endif
