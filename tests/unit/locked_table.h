/* Shared by the unit tests that drive the table (test_table.c,
 * test_schedule.c): the table's calls wrapped in its lock, as the shim makes
 * them, and the counters table.c bumps (stats.c is not linked: it needs the
 * logger). Included once per test program. */
#ifndef TK_TEST_LOCKED_TABLE_H
#define TK_TEST_LOCKED_TABLE_H

#include <signal.h>
#include <stdbool.h>

#include "stats.h"
#include "table.h"

struct tk_stats tk_stats;

/* A failed assertion leaves the test by longjmp, maybe holding the lock:
 * the teardown calls release_lock_if_held(), or every later test would
 * deadlock. */
static sigset_t saved_mask;
static bool held;

static void lock(void)
{
    tk_table_lock(&saved_mask);
    held = true;
}

static void unlock(void)
{
    held = false;
    tk_table_unlock(&saved_mask);
}

static void release_lock_if_held(void)
{
    if (held)
        unlock();
}

static struct tk_conn *find(uint64_t cookie)
{
    lock();
    struct tk_conn *c = tk_table_find(cookie);
    unlock();
    return c;
}

static unsigned count(void)
{
    lock();
    unsigned n = tk_table_count();
    unlock();
    return n;
}

static unsigned qlen(void)
{
    lock();
    unsigned n = tk_queue_length();
    unlock();
    return n;
}

#endif
