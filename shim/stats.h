/* Counters, and the TCPKEEP_STATS file.
 *
 * The counters are relaxed atomics bumped on the cold path and by the
 * watchdog (never the hot path). The file is a JSON object written to a
 * temporary file beside it and renamed over it, by the watchdog every 2 s
 * and once more at exit (a destructor); no signal handler is installed.
 *
 *   {"pid":4242,"tracked_now":3,"tracked_total":17,"keepalive_set":17,
 *    "cuts":{"idle":2,"read_idle":0,"write_idle":0,"first_byte":1,
 *            "half_closed":0,"lifetime":0},
 *    "would_cut":{...same keys...},"option_errors":0,
 *    "updated":"2026-11-23T10:15:02Z"}
 */
#ifndef TK_STATS_H
#define TK_STATS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "reason.h"

struct tk_stats {
    _Atomic uint64_t tracked_now;   /* connections (not listeners) in the table */
    _Atomic uint64_t tracked_total; /* connections ever tracked (accepted or made) */
    _Atomic uint64_t keepalive_set; /* sockets on which the shim set SO_KEEPALIVE */
    _Atomic uint64_t option_errors; /* setsockopt calls of the shim that failed */
    _Atomic uint64_t cuts[TK_REASONS];
    _Atomic uint64_t would_cut[TK_REASONS];
};
extern struct tk_stats tk_stats;

static inline void tk_count(_Atomic uint64_t *counter, int64_t delta)
{
    atomic_fetch_add_explicit(counter, (uint64_t)delta, memory_order_relaxed);
}

/* At load: remember the path (with %p), "" = no file. */
void tk_stats_init(const char *path_template);
bool tk_stats_enabled(void);
/* Writes the file now (temp + rename). Any thread; keeps errno; serialised
 * internally so the watchdog and the exit destructor do not interleave. */
void tk_stats_write(void);
/* In a forked child: its own counters (tracked_now kept: the table is
 * inherited), its own file (%p). */
void tk_stats_after_fork_child(void);

#endif
