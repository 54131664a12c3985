/* Logging: one line per event, "tcpkeep[PID]: ...", to stderr, a file, or
 * nowhere (TCPKEEP_LOG), filtered by TCPKEEP_LOG_LEVEL. Cold path only:
 * formatting uses vsnprintf, which is not async-signal-safe. */
#ifndef TK_LOG_H
#define TK_LOG_H

#include "config.h"

/* Opens the destination; on failure falls back to stderr with a warning. */
void tk_log_open(const char *dest, enum tk_log_level level);
/* After fork: the pid in the prefix changes. */
void tk_log_after_fork_child(void);
/* True if a message at `level` would be written (skip costly formatting). */
int tk_log_enabled(enum tk_log_level level);
void tk_log(enum tk_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Always to stderr, whatever TCPKEEP_LOG says (bad configuration). */
void tk_log_stderr(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* True if fd is the log file we opened and still refers to it. */
#include <stdbool.h>
bool tk_log_owns(int fd);

#endif
