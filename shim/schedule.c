/* The watchdog's decisions; see schedule.h. */
#include "schedule.h"

#include <netinet/tcp.h>

#include "clock.h"
#include "stats.h"

/* While a connection is being set up, look again soon: once established,
 * TCP_INFO's last-data times start from the handshake. */
#define TK_HANDSHAKE_RECHECK_NS (100 * 1000000ULL)
/* How long a peer holds back the ACK of the last segment before its window
 * closes: Linux acknowledges a filling receive queue at once, or after its
 * shortest delayed-ACK timeout (TCP_ATO_MIN, 40 ms). */
#define TK_ACK_DELAY_NS (40 * 1000000ULL)

/* Candidates handed to the watchdog and not settled yet (one watchdog per
 * process), so that a forked child can requeue them. */
#define TK_INFLIGHT_MAX 1024
static uint64_t inflight[TK_INFLIGHT_MAX];
static unsigned inflight_len;

static uint64_t max64(uint64_t a, uint64_t b) { return a > b ? a : b; }
static uint64_t min64(uint64_t a, uint64_t b) { return a < b ? a : b; }

/* `ms` ago, as a CLOCK_MONOTONIC time; 0 if before the clock's start (the
 * kernel reports "never" as a huge age). */
static uint64_t ago(uint64_t now_ns, uint32_t ms)
{
    uint64_t d = (uint64_t)ms * TK_NS_PER_MS;
    return d < now_ns ? now_ns - d : 0;
}

/* What this observation adds to what the kernel told us before. */
static struct tk_seen learn(const struct tk_candidate *c, const struct tk_observation *obs,
                            uint64_t now)
{
    struct tk_seen s = c->seen;
    if (!obs || !obs->have_info)
        return s;
    s.read_ns = max64(s.read_ns, ago(now, obs->last_data_recv_ms));
    s.write_ns = max64(s.write_ns, ago(now, obs->last_data_sent_ms));
    if (obs->bytes_received > 0)
        s.got_byte = 1;
    /* A connection the program made has its SYN counted as 1 byte acked. */
    uint64_t acked_before = s.acked ? s.acked : c->direction == TK_DIR_OUT;
    if (obs->bytes_acked > acked_before) {
        /* The peer acknowledged data since the last look; the last ACK it
         * sent is the latest that could have been. With nothing in flight,
         * or its window closed, the ACKs since may answer window probes,
         * retransmissions or keepalives: the progress was the ACK of the
         * last data sent, one round trip (plus an ACK delay) after it left. */
        uint64_t at = ago(now, obs->last_ack_recv_ms);
        if ((obs->unacked == 0 || obs->window_closed) && s.write_ns)
            at = min64(at, s.write_ns + (uint64_t)obs->rtt_us * 1000 + TK_ACK_DELAY_NS);
        s.progress_ns = max64(s.progress_ns, at);
        s.acked = obs->bytes_acked;
    }
    if (obs->tcp_state == TCP_CLOSE_WAIT && !s.closewait_ns)
        s.closewait_ns = now;
    if (obs->tcp_state != TCP_CLOSE_WAIT)
        s.open_ns = now;
    return s;
}

static uint64_t half_closed_poll_ns(uint64_t limit_ns)
{
    return min64(max64(limit_ns / 2, TK_HALF_CLOSED_POLL_MIN_NS), TK_HALF_CLOSED_POLL_MAX_NS);
}

/* The earliest policy due, over those enabled and not reported already. */
struct due {
    uint64_t at;    /* UINT64_MAX: none */
    uint64_t since; /* when its condition began */
    enum tk_reason reason;
};

/* Reasons already reported count only while the dry run lasts (a rules
 * file may turn it off). */
static unsigned said(const struct tk_candidate *c)
{
    return c->set.dry_run ? c->dry_said : 0;
}

static void consider(struct due *d, const struct tk_candidate *c, enum tk_reason r,
                     uint64_t limit_ms, uint64_t since)
{
    if (!limit_ms || (said(c) & (1u << r)))
        return;
    uint64_t at = since + limit_ms * TK_NS_PER_MS;
    if (at < d->at) {
        d->at = at;
        d->since = since;
        d->reason = r;
    }
}

static uint64_t lifetime_ns(const struct tk_candidate *c)
{
    uint64_t base = c->set.lifetime_ms * TK_NS_PER_MS;
    /* uniform in [L, L * (1 + J/100)], from the connection's own draw */
    unsigned __int128 extra = (unsigned __int128)base * c->set.lifetime_jitter * c->jitter;
    return base + (uint64_t)(extra / (100 * 65535));
}

struct tk_decision tk_schedule_decide(const struct tk_candidate *c,
                                      const struct tk_observation *obs,
                                      uint64_t now, const struct tk_policy *p)
{
    struct tk_decision d = { TK_VERDICT_WAIT, UINT64_MAX, TK_REASON_IDLE, 0, c->seen };
    const struct tk_settings *set = &c->set;
    uint64_t smallest = UINT64_MAX;
    const uint64_t limits[] = { set->idle_ms, set->read_ms, set->write_ms,
                                set->first_byte_ms, set->half_closed_ms, set->lifetime_ms };
    for (unsigned i = 0; i < sizeof(limits) / sizeof(limits[0]); i++)
        if (limits[i])
            smallest = min64(smallest, limits[i] * TK_NS_PER_MS);
    if (smallest == UINT64_MAX) /* no policy: nothing is ever cut */
        return d;

    bool confirmed = obs && obs->have_info;
    if (obs) {
        if (obs->no_look) {
            d.next_check_ns = now + min64(smallest, TK_NS_PER_S);
            return d;
        }
        if (!obs->same_socket) {
            d.verdict = TK_VERDICT_STALE;
            return d;
        }
        if (confirmed) {
            switch (obs->tcp_state) {
            case TCP_SYN_SENT:
            case TCP_SYN_RECV:
                d.next_check_ns = now + min64(smallest, TK_HANDSHAKE_RECHECK_NS);
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
        } else if (p->activity == TK_ACTIVITY_KERNEL) {
            /* Nothing to judge by: not idle as far as we can tell. */
            d.next_check_ns = now + smallest;
            return d;
        }
    }
    struct tk_seen s = learn(c, obs, now);
    d.seen = s;

    /* The latest moment data could have moved, each way, as the chosen
     * activity mode counts it. A stamp lags by up to slack. */
    bool calls = p->activity != TK_ACTIVITY_KERNEL;
    bool kernel = p->activity != TK_ACTIVITY_CALLS;
    uint64_t slack = p->slack_ns, born = c->born_ns;
    uint64_t rd = born, wr = born;
    if (calls) {
        if (c->last_read_ns)
            rd = max64(rd, c->last_read_ns + slack);
        if (c->last_write_ns)
            wr = max64(wr, c->last_write_ns + slack);
    }
    if (kernel) {
        if (s.read_ns)
            rd = max64(rd, s.read_ns + slack);
        if (s.write_ns)
            wr = max64(wr, s.write_ns + slack);
    }
    /* A slow reader is not idle. Under calls, only while the program is in
     * a write: acknowledged data it moved with calls we do not see (splice)
     * is not its activity. */
    if (s.progress_ns && (p->activity != TK_ACTIVITY_CALLS || c->writing))
        wr = max64(wr, s.progress_ns + slack);

    struct due due = { UINT64_MAX, 0, TK_REASON_IDLE };
    consider(&due, c, TK_REASON_IDLE, set->idle_ms, max64(rd, wr));
    consider(&due, c, TK_REASON_READ_IDLE, set->read_ms, rd);
    consider(&due, c, TK_REASON_WRITE_IDLE, set->write_ms, wr);
    if (c->direction == TK_DIR_IN) {
        bool got = (calls && c->last_read_ns) || (kernel && s.got_byte);
        if (!got)
            consider(&due, c, TK_REASON_FIRST_BYTE, set->first_byte_ms, born);
    }
    uint64_t poll = UINT64_MAX;
    if (set->half_closed_ms && !(said(c) & (1u << TK_REASON_HALF_CLOSED))) {
        /* Noticed when the program read end-of-file or we saw CLOSE_WAIT;
         * a read of end-of-file the socket's state denies does not count. */
        uint64_t h = s.closewait_ns;
        if (c->eof_ns && c->eof_ns > s.open_ns && (!h || c->eof_ns < h))
            h = c->eof_ns;
        if (confirmed && obs->tcp_state != TCP_CLOSE_WAIT)
            h = 0;
        if (h)
            consider(&due, c, TK_REASON_HALF_CLOSED, set->half_closed_ms, max64(h, wr));
        else {
            if (obs)
                d.seen.poll_ns = now + half_closed_poll_ns(set->half_closed_ms * TK_NS_PER_MS);
            poll = d.seen.poll_ns ? d.seen.poll_ns
                                  : born + half_closed_poll_ns(set->half_closed_ms * TK_NS_PER_MS);
        }
    }
    if (set->lifetime_ms && !(said(c) & (1u << TK_REASON_LIFETIME))) {
        uint64_t at = born + lifetime_ns(c);
        if (at < due.at) {
            due.at = at;
            due.since = born;
            due.reason = TK_REASON_LIFETIME;
        }
    }

    if (!obs && min64(due.at, poll) <= now) {
        d.verdict = TK_VERDICT_LOOK;
        return d;
    }
    if (due.at <= now) {
        d.verdict = TK_VERDICT_CUT;
        d.reason = due.reason;
        d.held_ns = now - min64(now, due.since);
        return d;
    }
    d.next_check_ns = min64(due.at, poll);
    return d;
}

/* A candidate's view of a record, under the lock. `convert`: the stamps are
 * TSC values to turn into ns (the watchdog thread only). */
static void fill(struct tk_candidate *cand, struct tk_conn *c, bool convert)
{
    uint64_t st[3] = {
        atomic_load_explicit(&c->last_read, memory_order_relaxed),
        atomic_load_explicit(&c->last_write, memory_order_relaxed),
        atomic_load_explicit(&c->eof_at, memory_order_relaxed),
    };
    for (int i = 0; i < 3; i++)
        st[i] = st[i] && convert ? tk_stamp_to_ns(st[i]) : 0;
    cand->cookie = c->cookie;
    cand->fd = c->fd;
    cand->rec = c;
    cand->last_read_ns = st[0];
    cand->last_write_ns = st[1];
    cand->eof_ns = st[2];
    cand->writing = atomic_load_explicit(&c->writing, memory_order_relaxed);
    cand->born_ns = c->born_ns;
    cand->seen = c->seen;
    cand->set = *c->set;
    cand->jitter = c->jitter;
    cand->direction = c->key.direction;
    cand->dry_said = c->dry_said;
}

/* A connection's own lifetime draw: a hash of its identity and birth. */
static uint16_t draw(uint64_t cookie, uint64_t now)
{
    uint64_t x = cookie * 0x9e3779b97f4a7c15ULL ^ now;
    x ^= x >> 31;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 29;
    return (uint16_t)(x >> 48);
}

static void requeue(struct tk_conn *c, uint64_t at)
{
    if (at == UINT64_MAX)
        tk_queue_remove(c);
    else
        tk_queue_set(c, at);
}

bool tk_schedule_watch(struct tk_conn *c, const struct tk_settings *set, uint64_t now_ns)
{
    if (c->kind == TK_KIND_SOCKET) {
        tk_count(&tk_stats.tracked_now, 1);
        tk_count(&tk_stats.tracked_total, 1);
    }
    c->kind = TK_KIND_CONN;
    c->set = set;
    c->born_ns = now_ns;
    c->jitter = draw(c->cookie, now_ns);
    struct tk_candidate cand;
    fill(&cand, c, false);
    struct tk_policy any = { 0, TK_ACTIVITY_BOTH };
    struct tk_decision d = tk_schedule_decide(&cand, NULL, now_ns, &any);
    uint64_t at = d.verdict == TK_VERDICT_WAIT ? d.next_check_ns : now_ns;
    requeue(c, at);
    return at != UINT64_MAX;
}

void tk_schedule_rewatch(struct tk_conn *c, uint64_t now_ns)
{
    if (c->kind == TK_KIND_CONN && !c->checking)
        tk_queue_set(c, now_ns);
}

unsigned tk_schedule_collect(uint64_t now_ns, const struct tk_policy *p,
                             struct tk_candidate *out, unsigned max)
{
    unsigned n = 0;
    if (max > TK_INFLIGHT_MAX - inflight_len)
        max = TK_INFLIGHT_MAX - inflight_len;
    struct tk_conn *c;
    while (n < max && (c = tk_queue_first()) && c->check_at_ns <= now_ns) {
        if (c->kind != TK_KIND_CONN || c->checking || !c->set) { /* cut, done, or handed out */
            tk_queue_remove(c);
            continue;
        }
        fill(&out[n], c, true);
        struct tk_decision d = tk_schedule_decide(&out[n], NULL, now_ns, p);
        if (d.verdict == TK_VERDICT_WAIT) { /* the program moved data since it was queued */
            requeue(c, d.next_check_ns);
            continue;
        }
        tk_queue_remove(c);
        c->checking = 1;
        inflight[inflight_len++] = c->cookie;
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
    c->seen = d->seen;
    c->dry_said |= cand->dry_said;
    switch (d->verdict) {
    case TK_VERDICT_WAIT:
        requeue(c, d->next_check_ns);
        break;
    case TK_VERDICT_CUT:
        c->kind = TK_KIND_CUT;
        tk_queue_remove(c);
        break;
    case TK_VERDICT_FORGET:
        c->kind = TK_KIND_DONE;
        tk_queue_remove(c);
        break;
    case TK_VERDICT_LOOK: /* not a verdict with an observation */
        tk_queue_set(c, now_ns);
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
    cand->writing = atomic_load_explicit(&c->writing, memory_order_relaxed);
    uint64_t *mine[3] = { &cand->last_read_ns, &cand->last_write_ns, &cand->eof_ns };
    _Atomic uint64_t *theirs[3] = { &c->last_read, &c->last_write, &c->eof_at };
    for (int i = 0; i < 3; i++) {
        uint64_t st = atomic_load_explicit(theirs[i], memory_order_relaxed);
        if (!st)
            continue;
        uint64_t ns = tk_stamp_to_ns(st);
        if (i == 2 ? !*mine[i] : ns > *mine[i])
            *mine[i] = ns;
    }
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
