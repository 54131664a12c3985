/* The watchdog's decisions; see schedule.h. */
#include "schedule.h"

#include <netinet/tcp.h>

#include "clock.h"

/* While a connection is being set up, look again soon: once established,
 * TCP_INFO's last-data times start from the handshake. */
#define TK_HANDSHAKE_RECHECK_NS (100 * 1000000ULL)

/* Candidates handed to the watchdog and not settled yet (one watchdog per
 * process), so that a forked child can requeue them. */
#define TK_INFLIGHT_MAX 1024
static uint64_t inflight[TK_INFLIGHT_MAX];
static unsigned inflight_len;

static uint64_t earliest_idle_end(uint64_t last_ns, const struct tk_policy *p)
{
    return last_ns + p->slack_ns + p->idle_ns;
}

void tk_schedule_watch(struct tk_conn *c, const struct tk_policy *p, uint64_t now_ns)
{
    c->kind = TK_KIND_CONN;
    if (p->idle_ns == 0)
        return;
    tk_queue_set(c, earliest_idle_end(now_ns, p));
}

unsigned tk_schedule_collect(uint64_t now_ns, const struct tk_policy *p,
                             struct tk_candidate *out, unsigned max)
{
    unsigned n = 0;
    if (max > TK_INFLIGHT_MAX - inflight_len)
        max = TK_INFLIGHT_MAX - inflight_len;
    struct tk_conn *c;
    while (n < max && (c = tk_queue_first()) && c->check_at_ns <= now_ns) {
        if (c->kind != TK_KIND_CONN || c->checking) { /* cut, done, or handed out */
            tk_queue_remove(c);
            continue;
        }
        uint64_t last = tk_stamp_to_ns(atomic_load_explicit(&c->last_call_ns, memory_order_relaxed));
        uint64_t due = earliest_idle_end(last, p);
        if (due > now_ns) { /* the program moved data since it was queued */
            tk_queue_set(c, due);
            continue;
        }
        tk_queue_remove(c);
        c->checking = 1;
        inflight[inflight_len++] = c->cookie;
        out[n].cookie = c->cookie;
        out[n].fd = c->fd;
        out[n].last_call_ns = last;
        out[n].rec = c;
        n++;
    }
    return n;
}

static void forget_inflight(uint64_t cookie)
{
    for (unsigned i = 0; i < inflight_len; i++) {
        if (inflight[i] == cookie) {
            inflight[i] = inflight[--inflight_len];
            return;
        }
    }
}

void tk_schedule_settle(const struct tk_candidate *cand, const struct tk_decision *d,
                        uint64_t now_ns)
{
    forget_inflight(cand->cookie);
    struct tk_conn *c = tk_table_find(cand->cookie);
    if (!c) /* closed while the watchdog looked at it */
        return;
    c->checking = 0;
    if (c->kind != TK_KIND_CONN)
        return;
    switch (d->verdict) {
    case TK_VERDICT_WAIT:
        tk_queue_set(c, d->next_check_ns);
        break;
    case TK_VERDICT_CUT:
        c->kind = TK_KIND_CUT;
        tk_queue_remove(c);
        break;
    case TK_VERDICT_FORGET:
        c->kind = TK_KIND_DONE;
        tk_queue_remove(c);
        break;
    case TK_VERDICT_STALE:
        /* Closed behind our back. Another descriptor may still hold it. */
        tk_table_unbind_if(cand->fd, c);
        c = tk_table_find(cand->cookie);
        if (c && c->fd >= 0)
            tk_queue_set(c, now_ns);
        break;
    }
}

void tk_schedule_refresh(struct tk_candidate *cand)
{
    struct tk_conn *c = cand->rec;
    if (!c || __atomic_load_n(&c->cookie, __ATOMIC_RELAXED) != cand->cookie)
        return;
    uint64_t last = tk_stamp_to_ns(atomic_load_explicit(&c->last_call_ns, memory_order_relaxed));
    if (last > cand->last_call_ns)
        cand->last_call_ns = last;
}

uint64_t tk_schedule_next(void)
{
    struct tk_conn *c = tk_queue_first();
    return c ? c->check_at_ns : UINT64_MAX;
}

void tk_schedule_after_fork_child(uint64_t now_ns)
{
    for (unsigned i = 0; i < inflight_len; i++) {
        struct tk_conn *c = tk_table_find(inflight[i]);
        if (c && c->checking) {
            c->checking = 0;
            if (c->kind == TK_KIND_CONN)
                tk_queue_set(c, now_ns);
        }
    }
    inflight_len = 0;
}

struct tk_decision tk_schedule_decide(const struct tk_candidate *cand,
                                      const struct tk_observation *obs,
                                      uint64_t now_ns, const struct tk_policy *p)
{
    struct tk_decision d = { TK_VERDICT_WAIT, UINT64_MAX, 0 };
    if (p->idle_ns == 0) /* no limit: nothing is ever cut */
        return d;
    if (!obs->same_socket) {
        d.verdict = TK_VERDICT_STALE;
        return d;
    }
    /* The latest moment data could have moved, by the program's calls... */
    uint64_t last = cand->last_call_ns + p->slack_ns;
    if (obs->have_info) {
        switch (obs->tcp_state) {
        case TCP_SYN_SENT:
        case TCP_SYN_RECV:
            d.next_check_ns = now_ns + (p->idle_ns < TK_HANDSHAKE_RECHECK_NS
                                            ? p->idle_ns : TK_HANDSHAKE_RECHECK_NS);
            return d;
        case TCP_ESTABLISHED:
        case TCP_CLOSE_WAIT:
        case TCP_FIN_WAIT1:
        case TCP_FIN_WAIT2:
            break;
        default: /* closed or closing: the network ended it */
            d.verdict = TK_VERDICT_FORGET;
            return d;
        }
        /* ...or by the kernel, in this process or another sharing the socket. */
        uint32_t ms = obs->last_data_recv_ms < obs->last_data_sent_ms
                          ? obs->last_data_recv_ms : obs->last_data_sent_ms;
        uint64_t ago = (uint64_t)ms * 1000000ULL;
        if (ago < now_ns) {
            uint64_t kernel_last = now_ns - ago + p->slack_ns;
            if (kernel_last > last)
                last = kernel_last;
        }
    }
    if (last + p->idle_ns > now_ns) {
        d.next_check_ns = last + p->idle_ns;
        return d;
    }
    d.verdict = TK_VERDICT_CUT;
    d.idle_ns = now_ns - (last - p->slack_ns);
    return d;
}
