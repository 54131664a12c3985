/* The watchdog's decisions, without system calls or threads, so that unit
 * tests can drive them with a fake clock.
 *
 * A watched connection sits in the deadline queue at the earliest time one
 * of its policies (idle, read-idle, write-idle, first-byte, half-closed,
 * lifetime) could be due, judged from what is known without asking the
 * kernel. When that time comes, tk_schedule_collect() either requeues it
 * (the program's calls moved data meanwhile) or hands it out as a
 * candidate; the watchdog then asks the kernel (identity, TCP_INFO) and
 * tk_schedule_decide() gives the verdict, applied by tk_schedule_settle(). */
#ifndef TK_SCHEDULE_H
#define TK_SCHEDULE_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "reason.h"
#include "table.h"

/* What holds for the whole process. */
struct tk_policy {
    uint64_t slack_ns; /* one clock tick: stamps and TCP_INFO lag by up to this */
    uint8_t activity;  /* enum tk_activity */
};

/* A connection as the watchdog judges it: a copy taken under the lock. */
struct tk_candidate {
    uint64_t cookie;
    int fd;
    struct tk_conn *rec;     /* to re-read the stamps just before deciding (records
                                are never unmapped; check the cookie first) */
    /* The program's calls, in CLOCK_MONOTONIC ns; 0 = none yet. */
    uint64_t last_read_ns, last_write_ns, eof_ns;
    uint32_t writing;        /* write calls in progress (calls mode: acks count then) */
    uint64_t born_ns;
    struct tk_seen seen;
    struct tk_settings set;
    uint16_t jitter;
    uint8_t direction;       /* enum tk_direction */
    uint8_t dry_said;        /* reasons not to report again (dry run) */
};

/* What the kernel said about the socket behind a candidate's fd. */
struct tk_observation {
    bool no_look;           /* could not look (out of descriptors): try again later */
    bool same_socket;       /* the fd still refers to the candidate's socket */
    bool have_info;         /* TCP_INFO was read */
    uint8_t tcp_state;      /* TCP_ESTABLISHED, ... */
    uint32_t last_data_recv_ms, last_data_sent_ms, last_ack_recv_ms;
    uint64_t bytes_acked, bytes_received;
    uint32_t unacked;       /* segments in flight */
    uint32_t rtt_us;        /* smoothed round-trip time */
    bool window_closed;     /* the peer advertises a zero window */
};

enum tk_verdict {
    TK_VERDICT_WAIT,   /* nothing due: look again at next_check_ns */
    TK_VERDICT_CUT,    /* a policy is due: cut it (or report it, in a dry run) */
    TK_VERDICT_FORGET, /* closed by the network: nothing left to watch */
    TK_VERDICT_STALE,  /* the fd is no longer this socket: drop the binding */
    TK_VERDICT_LOOK,   /* without an observation: something may be due, ask the kernel */
};

struct tk_decision {
    enum tk_verdict verdict;
    uint64_t next_check_ns; /* for WAIT; UINT64_MAX = no policy left */
    enum tk_reason reason;  /* for CUT */
    uint64_t held_ns;       /* for CUT: how long the condition has held (the age, for lifetime) */
    struct tk_seen seen;    /* what the kernel taught: kept in the record */
};

/* How often the watchdog looks for a peer's close when nothing else is due
 * (TCPKEEP_HALF_CLOSED_TIMEOUT only): limit / 2, between these bounds: an
 * end-of-file the program read is then found before its limit is up. */
#define TK_HALF_CLOSED_POLL_MIN_NS (250 * 1000000ULL)
#define TK_HALF_CLOSED_POLL_MAX_NS (10 * 1000000000ULL)

/* The program's latest stamps for a candidate, read without the lock just
 * before deciding: a call made since collect counts. Watchdog thread only. */
void tk_schedule_refresh(struct tk_candidate *cand);

/* Under the table lock. */
/* c (a new socket record) was just accepted or connected and is managed by
 * `set`: it becomes a watched connection, born now. Takes the time from the
 * caller so that only the watchdog thread ever reads the TSC calibration.
 * Returns true if it was queued (the watchdog must be told). */
bool tk_schedule_watch(struct tk_conn *c, const struct tk_settings *set, uint64_t now_ns);
/* Its settings changed (a new rules file): look at it again now. */
void tk_schedule_rewatch(struct tk_conn *c, uint64_t now_ns);
unsigned tk_schedule_collect(uint64_t now_ns, const struct tk_policy *p,
                             struct tk_candidate *out, unsigned max);
void tk_schedule_settle(const struct tk_candidate *cand, const struct tk_decision *d,
                        uint64_t now_ns);
uint64_t tk_schedule_next(void); /* earliest check time, or UINT64_MAX */
/* In a forked child: requeue what the parent's watchdog was looking at. */
void tk_schedule_after_fork_child(uint64_t now_ns);

/* Pure. `obs` NULL: judge from the program's stamps and what was seen
 * before (a lower bound of every deadline, for collect). */
struct tk_decision tk_schedule_decide(const struct tk_candidate *cand,
                                      const struct tk_observation *obs,
                                      uint64_t now_ns, const struct tk_policy *p);

#endif
