/* The rules file (TCPKEEP_CONFIG): parsing, matching, and watching it.
 *
 *     # MATCH: SETTINGS
 *     port=6379: idle=5m keepidle=60
 *     peer=10.0.0.0/8 port=8000-8100: read=30s first-byte=5s action=reset
 *     *: idle=30s
 *
 * Each line's settings are resolved once, at parse time, over the
 * environment's (struct tk_settings), so the watchdog and the cold path
 * only pick the first matching line's struct. */
#ifndef TK_RULES_H
#define TK_RULES_H

#include <stddef.h>

#include "config.h"

#define TK_RULES_MAX 256

struct tk_rule {
    struct tk_match match;     /* all parts unset for "*" */
    struct tk_settings set;    /* the environment's, with this line's keys over them */
    unsigned line;             /* 1-based line number in the file */
};

struct tk_rules {
    size_t bytes;              /* for tk_rules_free */
    unsigned n;
    struct tk_rule rule[];
};

/* Parses a rules file's text (not NUL-terminated; len bytes). Settings not
 * named on a line come from `base`. Returns a set from tk_mem_alloc, or NULL
 * with *bad_line (1-based; the first rule past TK_RULES_MAX for too many
 * rules; 0 when the problem is not one line: no memory) and msg (what was
 * wrong and what was expected, e.g.
 * `unknown key "idel"; expected one of idle, read, write, ...`). */
struct tk_rules *tk_rules_parse(const char *text, size_t len, const struct tk_settings *base,
                                unsigned *bad_line, char *msg, size_t msgsize);
void tk_rules_free(struct tk_rules *r);

/* The settings of the first line that matches k, or NULL if none does. */
const struct tk_settings *tk_rules_lookup(const struct tk_rules *r, const struct tk_conn_key *k);

/* ---- The file itself (rules_file.c) ----
 *
 * tk_rules_file_open: at load, reads the file once. A bad or missing file:
 * one stderr line "tcpkeep[PID]: FILE:LINE: MSG; the rules file is ignored"
 * (or "FILE: REASON; ..."), the environment's settings stay in force, and
 * the file is still watched, so a fixed version takes effect later.
 * Returns the parsed set or NULL. */
struct tk_rules *tk_rules_file_open(const char *path, const struct tk_settings *base);

/* The watchdog, at most once a second: if the file changed since the last
 * look (rewritten in place or replaced by a rename: device, inode, size,
 * mtime and ctime are compared), parses it again. Returns a new set for the
 * caller to install (the caller frees the old one), or NULL when there is
 * nothing new. A bad new version, or a deleted file, logs one warning
 * (tk_log, TK_LOG_WARN; once per version) and returns NULL: the previous
 * rules stay in force. */
struct tk_rules *tk_rules_file_poll(void);
/* A changed version was seen and will be read at the next poll, if it has
 * not changed again by then (a file rewritten in place is empty or
 * half-written for a moment): the watchdog polls again soon. */
bool tk_rules_file_settling(void);

#endif
