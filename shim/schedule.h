/* The watchdog's decisions, without system calls or threads, so that unit
 * tests can drive them with a fake clock.
 *
 * A watched connection sits in the deadline queue at the earliest time it
 * could be idle. When that time comes, tk_schedule_collect() either requeues
 * it (the program's calls moved data meanwhile) or hands it out as a
 * candidate; the watchdog then asks the kernel (identity, TCP_INFO) and
 * tk_schedule_decide() gives the verdict, applied by tk_schedule_settle(). */
#ifndef TK_SCHEDULE_H
#define TK_SCHEDULE_H

#include <stdbool.h>
#include <stdint.h>

#include "table.h"

struct tk_policy {
    uint64_t idle_ns;  /* the limit; 0 = nothing is ever cut */
    uint64_t slack_ns; /* one clock tick: stamps and TCP_INFO lag by up to this */
};

struct tk_candidate {
    uint64_t cookie;
    int fd;
    uint64_t last_call_ns; /* the program's last call, in CLOCK_MONOTONIC ns */
    struct tk_conn *rec;   /* to re-read the stamp just before deciding (records
                              are never unmapped; check the cookie first) */
};

/* What the kernel said about the socket behind a candidate's fd. */
struct tk_observation {
    bool same_socket;       /* the fd still refers to the candidate's socket */
    bool have_info;         /* TCP_INFO was read */
    uint8_t tcp_state;      /* TCP_ESTABLISHED, ... */
    uint32_t last_data_recv_ms, last_data_sent_ms;
};

enum tk_verdict {
    TK_VERDICT_WAIT,   /* not idle long enough: look again at next_check_ns */
    TK_VERDICT_CUT,    /* idle for the limit: shut it down */
    TK_VERDICT_FORGET, /* closed by the network: nothing left to watch */
    TK_VERDICT_STALE,  /* the fd is no longer this socket: drop the binding */
};

struct tk_decision {
    enum tk_verdict verdict;
    uint64_t next_check_ns; /* for WAIT */
    uint64_t idle_ns;       /* for CUT: how long nothing moved */
};

/* The program's latest stamp for a candidate, read without the lock just
 * before deciding: a call made since collect counts. Watchdog thread only. */
void tk_schedule_refresh(struct tk_candidate *cand);

/* Under the table lock. */
/* c was just made or connected (its stamp is "now"): queue it at now + the
 * limit. Takes the time from the caller so that only the watchdog thread
 * ever reads the TSC calibration. */
void tk_schedule_watch(struct tk_conn *c, const struct tk_policy *p, uint64_t now_ns);
unsigned tk_schedule_collect(uint64_t now_ns, const struct tk_policy *p,
                             struct tk_candidate *out, unsigned max);
void tk_schedule_settle(const struct tk_candidate *cand, const struct tk_decision *d,
                        uint64_t now_ns);
uint64_t tk_schedule_next(void); /* earliest check time, or UINT64_MAX */
/* In a forked child: requeue what the parent's watchdog was looking at. */
void tk_schedule_after_fork_child(uint64_t now_ns);

/* Pure. */
struct tk_decision tk_schedule_decide(const struct tk_candidate *cand,
                                      const struct tk_observation *obs,
                                      uint64_t now_ns, const struct tk_policy *p);

#endif
