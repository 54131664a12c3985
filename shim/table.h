/* The connection table.
 *
 * One record per tracked TCP socket, keyed by its SO_COOKIE in a uthash
 * table; each descriptor that refers to it (dup'd ones included) points at
 * it from an fd-indexed slot array. Who touches what:
 *
 *   hot path (read/write family, any thread, signal handlers): tk_slot_get()
 *       and relaxed stores to rec->last_read, last_write, eof_at, writing.
 *   cold path (socket, accept, connect, close, dup*, fcntl, close_range) and
 *       the watchdog: everything else, between tk_table_lock/unlock, which
 *       block every signal while the lock is held.
 *
 * Records live in pooled memory that is never unmapped, so a hot-path store
 * racing with a close lands in a valid record (at worst a recycled one,
 * which then looks active a moment longer; it is never cut early by that). */
#ifndef TK_TABLE_H
#define TK_TABLE_H

#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <uthash.h>

#include "config.h"

enum tk_kind {
    TK_KIND_SOCKET = 0, /* made by socket(): listening or not yet connected */
    TK_KIND_CONN,       /* an accepted or connected connection: watched */
    TK_KIND_CUT,        /* shut down by the watchdog, waiting for the close */
    TK_KIND_DONE,       /* closed or reset by the network: nothing left to do */
};

#define TK_NOT_QUEUED UINT32_MAX

/* Options the program set itself (setsockopt), which the shim then leaves
 * alone unless TCPKEEP_OVERRIDE is on. */
enum {
    TK_OPT_KEEPALIVE = 1 << 0,
    TK_OPT_KEEPIDLE = 1 << 1,
    TK_OPT_KEEPINTVL = 1 << 2,
    TK_OPT_KEEPCNT = 1 << 3,
    TK_OPT_USER_TIMEOUT = 1 << 4,
};

/* What the watchdog last learned from the kernel (TCP_INFO) about a
 * connection; it only ever moves forward. Times in CLOCK_MONOTONIC ns,
 * 0 = not seen. */
struct tk_seen {
    uint64_t read_ns;      /* data last received */
    uint64_t write_ns;     /* data last sent */
    uint64_t progress_ns;  /* tcpi_bytes_acked last advanced (estimated, never early) */
    uint64_t acked;        /* tcpi_bytes_acked then */
    uint64_t closewait_ns; /* first seen in CLOSE_WAIT: the peer closed its side */
    uint64_t poll_ns;      /* look again by then even if nothing is due (half-closed) */
    uint64_t open_ns;      /* last seen with the peer's side open: an end-of-file
                              read before then was not the peer's (SHUT_RD) */
    uint8_t got_byte;      /* the kernel received data on it */
};

struct tk_settings;

struct tk_conn {
    /* Hot path: tk_stamp() of the last read / write that moved data, and
     * of the first read that returned end-of-file; 0 = none yet. */
    _Atomic uint64_t last_read;
    _Atomic uint64_t last_write;
    _Atomic uint64_t eof_at;
    _Atomic uint32_t writing;      /* hot path: write calls in progress on it */
    uint64_t cookie;               /* SO_COOKIE: identity, the hash key; read unlocked by
                                      the hot path, so written with __atomic_store_n */
    uint64_t check_at_ns;          /* when the watchdog looks at it next */
    uint64_t born_ns;              /* accepted or connected: every policy's clock starts here */
    struct tk_seen seen;
    const struct tk_settings *set; /* what applies to it; NULL = not managed */
    struct tk_conn_key key;        /* direction, server port, peer: for the rules */
    uint32_t heap_index;           /* position in the deadline heap, or TK_NOT_QUEUED */
    int fd;                        /* one descriptor that refers to it */
    uint32_t refs;                 /* descriptors that refer to it */
    uint16_t jitter;               /* its lifetime draw in [0, 65535]: drawn once */
    uint8_t kind;                  /* enum tk_kind */
    uint8_t checking;              /* the watchdog is looking at it outside the lock */
    uint8_t own_opts;              /* TK_OPT_*: set by the program itself */
    uint8_t shim_keepalive;        /* the shim set SO_KEEPALIVE on it (or its listener) */
    uint8_t dry_said;              /* dry run: reasons already logged, one bit each */
    UT_hash_handle hh;
};

/* The fd-indexed slots: one fixed array covering Linux's default limit on
 * open files (nr_open, 2^20), zero pages until used, so the hot path needs
 * no length load and the array never moves. fds at or above TK_MAX_FD are
 * never tracked (passed through). */
#define TK_MAX_FD (1u << 20)

extern _Atomic(struct tk_conn *) tk_slot[TK_MAX_FD];

/* The hot path: fd -> record or NULL, with one atomic load. */
static inline struct tk_conn *tk_slot_get(int fd)
{
    if ((unsigned)fd >= TK_MAX_FD)
        return NULL;
    return atomic_load_explicit(&tk_slot[(unsigned)fd], memory_order_acquire);
}

/* Lock with every signal blocked; `old` receives the mask to restore. */
void tk_table_lock(sigset_t *old);
void tk_table_unlock(const sigset_t *old);
/* The lock itself, for the watchdog's condition variable. */
#include <pthread.h>
pthread_mutex_t *tk_table_mutex(void);
/* After fork, in the child: the lock is free again, the table unchanged. */
void tk_table_after_fork_child(void);

/* Everything below needs the lock. */

/* `fd` was just returned by a wrapped call: drop whatever its slot held and
 * bind it to the record for `cookie`, made now if new (TK_KIND_SOCKET, no
 * stamps, not managed). Returns the record, or NULL when out of memory or
 * fd is out of range. */
struct tk_conn *tk_table_bind(int fd, uint64_t cookie);
/* `newfd` now refers to what `oldfd` does (dup family): drop newfd's stale
 * binding, then share oldfd's record if it has one. */
void tk_table_dup(int oldfd, int newfd);
/* `fd` no longer refers to its record; the record goes with its last fd.
 * Returns true if the fd was bound. */
bool tk_table_unbind(int fd);
/* close_range: unbind every fd in [first, last]. */
void tk_table_unbind_range(unsigned first, unsigned last);
/* Unbind fd only if it is bound to `c` (watchdog: fd found stale). */
void tk_table_unbind_if(int fd, struct tk_conn *c);
struct tk_conn *tk_table_find(uint64_t cookie);
/* Tracked records, of any kind. */
unsigned tk_table_count(void);
/* Calls fn for every record. */
void tk_table_foreach(void (*fn)(struct tk_conn *c, void *ctx), void *ctx);

/* Deadline queue: the watched connections ordered by check_at_ns. */
void tk_queue_set(struct tk_conn *c, uint64_t check_at_ns); /* insert or move */
void tk_queue_remove(struct tk_conn *c);
struct tk_conn *tk_queue_first(void); /* earliest, or NULL */
unsigned tk_queue_length(void);

/* Set when the table could not get memory; the shim then tracks nothing new. */
extern bool tk_table_oom;

#endif
