/* Unit tests of the watchdog's logic with a fake clock: the deadline queue
 * (shim/queue.c) and the scheduling decisions (shim/schedule.c) over the
 * real connection table. No thread, no socket: "now" is whatever the test
 * says, and the kernel's answers are made up. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <limits.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "schedule.h"
#include "table.h"

#define MS 1000000ULL
#define SEC 1000000000ULL
#define T0 (1000 * SEC) /* the fake clock's start: well clear of zero */

static const struct tk_policy policy = { 30 * SEC, 12 * MS };

/* ---------------------------------------------------------------------------
 * Helpers */

/* A failed assertion leaves the test by longjmp, maybe holding the lock:
 * the teardown lets go of it, or every later test would deadlock. */
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

static unsigned qlen(void)
{
    lock();
    unsigned n = tk_queue_length();
    unlock();
    return n;
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

static uint64_t rng_state;
static uint64_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ULL;
}

/* A watched connection on fd, last active at `last`. */
static struct tk_conn *conn(int fd, uint64_t cookie, uint64_t last, const struct tk_policy *p)
{
    lock();
    struct tk_conn *c = tk_table_bind(fd, cookie, TK_KIND_SOCKET, last);
    assert_non_null(c);
    tk_schedule_watch(c, p, last);
    unlock();
    return c;
}

static unsigned collect(uint64_t now, const struct tk_policy *p, struct tk_candidate *out,
                        unsigned max)
{
    lock();
    unsigned n = tk_schedule_collect(now, p, out, max);
    unlock();
    return n;
}

static void settle(const struct tk_candidate *cand, enum tk_verdict v, uint64_t next,
                   uint64_t now)
{
    struct tk_decision d = { v, next, 0 };
    lock();
    tk_schedule_settle(cand, &d, now);
    unlock();
}

static uint64_t next_check(void)
{
    lock();
    uint64_t t = tk_schedule_next();
    unlock();
    return t;
}

static bool queued(const struct tk_conn *c)
{
    return c->heap_index != TK_NOT_QUEUED;
}

/* Every test starts and ends with nothing in flight, queued or tracked. */
static int reset(void **state)
{
    (void)state;
    if (held)
        unlock();
    lock();
    tk_schedule_after_fork_child(0); /* forgets what is in flight */
    tk_table_unbind_range(0, UINT_MAX);
    tk_table_oom = false;
    unlock();
    assert_int_equal(count(), 0);
    assert_int_equal(qlen(), 0);
    assert_int_equal(next_check(), UINT64_MAX);
    return 0;
}

/* ---------------------------------------------------------------------------
 * The deadline queue against a sorted reference */

#define Q_RECORDS 1500

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void check_queue(struct tk_conn *recs, const bool *in, unsigned n_in, int step)
{
    if (tk_queue_length() != n_in)
        fail_msg("step %d: length %u, expected %u", step, tk_queue_length(), n_in);
    uint64_t min = UINT64_MAX;
    static bool seen[Q_RECORDS];
    memset(seen, 0, sizeof(seen));
    for (unsigned i = 0; i < Q_RECORDS; i++) {
        if (!in[i]) {
            if (queued(&recs[i]))
                fail_msg("step %d: record %u queued, expected not", step, i);
            continue;
        }
        if (recs[i].check_at_ns < min)
            min = recs[i].check_at_ns;
        unsigned h = recs[i].heap_index;
        if (h >= n_in || seen[h])
            fail_msg("step %d: record %u at heap position %u of %u", step, i, h, n_in);
        seen[h] = true;
    }
    struct tk_conn *first = tk_queue_first();
    if (n_in == 0) {
        if (first)
            fail_msg("step %d: empty queue has a first", step);
        return;
    }
    if (!first || first->check_at_ns != min || !in[first - recs])
        fail_msg("step %d: first %llu, expected %llu", step,
                 first ? (unsigned long long)first->check_at_ns : 0ULL,
                 (unsigned long long)min);
}

static void test_queue_heap_order(void **state)
{
    (void)state;
    struct tk_conn *recs = calloc(Q_RECORDS, sizeof(*recs));
    bool *in = calloc(Q_RECORDS, sizeof(*in));
    uint64_t *key = calloc(Q_RECORDS, sizeof(*key));
    assert_non_null(recs);
    for (unsigned i = 0; i < Q_RECORDS; i++)
        recs[i].heap_index = TK_NOT_QUEUED;
    rng_state = 0x853c49e6748fea9bULL;
    unsigned n_in = 0;
    lock();
    for (int step = 0; step < 6000; step++) {
        unsigned i = (unsigned)(rnd() % Q_RECORDS);
        /* Keys from a narrow range, so that ties happen. */
        uint64_t k = T0 + (rnd() % 500) * MS;
        unsigned op = (unsigned)(rnd() % 10);
        if (!in[i] && op < 6) { /* insert */
            tk_queue_set(&recs[i], k);
            in[i] = true;
            key[i] = k;
            n_in++;
        } else if (in[i] && op < 8) { /* move, earlier or later */
            tk_queue_set(&recs[i], k);
            key[i] = k;
        } else if (in[i]) {
            tk_queue_remove(&recs[i]);
            in[i] = false;
            n_in--;
        } else {
            tk_queue_remove(&recs[i]); /* not queued: no-op */
        }
        if (in[i] && recs[i].check_at_ns != key[i])
            fail_msg("step %d: record %u due %llu, expected %llu", step, i,
                     (unsigned long long)recs[i].check_at_ns, (unsigned long long)key[i]);
        check_queue(recs, in, n_in, step);
    }
    assert_true(n_in > 100);

    /* Drained in order, the queue gives exactly the sorted reference. */
    uint64_t *sorted = calloc(n_in, sizeof(*sorted));
    unsigned m = 0;
    for (unsigned i = 0; i < Q_RECORDS; i++)
        if (in[i])
            sorted[m++] = key[i];
    qsort(sorted, m, sizeof(*sorted), cmp_u64);
    for (unsigned j = 0; j < m; j++) {
        struct tk_conn *c = tk_queue_first();
        assert_non_null(c);
        if (c->check_at_ns != sorted[j])
            fail_msg("drain %u: %llu, expected %llu", j, (unsigned long long)c->check_at_ns,
                     (unsigned long long)sorted[j]);
        tk_queue_remove(c);
        assert_false(queued(c));
    }
    assert_null(tk_queue_first());
    assert_int_equal(tk_queue_length(), 0);
    unlock();
    free(sorted);
    free(key);
    free(in);
    free(recs);
}

/* ---------------------------------------------------------------------------
 * Which connections are due */

static void test_watch_places_at_idle_end(void **state)
{
    (void)state;
    struct tk_conn *c = conn(5, 101, T0, &policy);
    assert_int_equal(c->kind, TK_KIND_CONN);
    assert_true(queued(c));
    assert_int_equal(c->check_at_ns, T0 + policy.slack_ns + policy.idle_ns);
    assert_int_equal(next_check(), T0 + policy.slack_ns + policy.idle_ns);

    /* Nothing to cut: watched, never queued. */
    struct tk_policy never = { 0, 12 * MS };
    struct tk_conn *d = conn(6, 102, T0, &never);
    assert_int_equal(d->kind, TK_KIND_CONN);
    assert_false(queued(d));
    assert_int_equal(qlen(), 1);
    struct tk_candidate out[4];
    assert_int_equal(collect(T0 + 1000 * SEC, &never, out, 4), 1); /* only c */
    assert_int_equal(out[0].cookie, 101);
}

static void test_collect_due_time(void **state)
{
    (void)state;
    struct tk_candidate out[4];
    struct tk_conn *c = conn(5, 201, T0, &policy);
    uint64_t due = T0 + policy.slack_ns + policy.idle_ns;

    assert_int_equal(collect(T0, &policy, out, 4), 0);
    assert_int_equal(collect(T0 + policy.idle_ns, &policy, out, 4), 0);
    assert_int_equal(collect(due - 1, &policy, out, 4), 0);
    assert_true(queued(c));
    assert_int_equal(c->checking, 0);

    assert_int_equal(collect(due, &policy, out, 4), 1);
    assert_int_equal(out[0].cookie, 201);
    assert_int_equal(out[0].fd, 5);
    assert_int_equal(out[0].last_call_ns, T0);
    assert_false(queued(c));
    assert_int_equal(c->checking, 1);
    assert_int_equal(next_check(), UINT64_MAX);
    /* In flight: not handed out twice. */
    assert_int_equal(collect(due + 3600 * SEC, &policy, out, 4), 0);

    /* And a connection collected late is still collected. */
    struct tk_conn *d = conn(6, 202, T0, &policy);
    assert_int_equal(collect(due + 5 * SEC, &policy, out, 4), 1);
    assert_int_equal(out[0].cookie, 202);
    assert_int_equal(d->checking, 1);
}

/* The program moved data after the connection was queued: requeued at its
 * new idle end, not handed out. */
static void test_collect_requeues_active(void **state)
{
    (void)state;
    struct tk_candidate out[4];
    struct tk_conn *c = conn(5, 301, T0, &policy);
    uint64_t due = T0 + policy.slack_ns + policy.idle_ns;
    atomic_store(&c->last_call_ns, T0 + 10 * SEC);
    assert_int_equal(collect(due, &policy, out, 4), 0);
    assert_true(queued(c));
    assert_int_equal(c->checking, 0);
    uint64_t due2 = T0 + 10 * SEC + policy.slack_ns + policy.idle_ns;
    assert_int_equal(c->check_at_ns, due2);
    assert_int_equal(next_check(), due2);
    assert_int_equal(collect(due2 - 1, &policy, out, 4), 0);
    assert_int_equal(collect(due2, &policy, out, 4), 1);
    assert_int_equal(out[0].cookie, 301);
    assert_int_equal(out[0].last_call_ns, T0 + 10 * SEC);
}

static void test_collect_batch_limit(void **state)
{
    (void)state;
    struct tk_candidate out[16];
    /* Ten due, at distinct times, bound in scrambled order. */
    static const int order[10] = { 7, 2, 9, 0, 4, 8, 1, 6, 3, 5 };
    for (int i = 0; i < 10; i++)
        conn(10 + order[i], 400 + (uint64_t)order[i], T0 + (uint64_t)order[i] * SEC, &policy);
    uint64_t now = T0 + 100 * SEC;
    assert_int_equal(collect(now, &policy, out, 0), 0);
    assert_int_equal(qlen(), 10);
    uint64_t seen = 0;
    unsigned got = 0;
    for (int round = 0; round < 4; round++) {
        memset(out, 0xff, sizeof(out));
        unsigned n = collect(now, &policy, out, 3);
        assert_int_equal(n, round < 3 ? 3 : 1);
        assert_int_equal(out[n].cookie, UINT64_MAX); /* nothing written past n */
        for (unsigned j = 0; j < n; j++) {
            /* Earliest first. */
            assert_int_equal(out[j].cookie, 400 + got);
            assert_int_equal(out[j].fd, 10 + (int)got);
            seen |= 1ULL << (out[j].cookie - 400);
            got++;
        }
    }
    assert_int_equal(seen, 0x3ff);
    assert_int_equal(qlen(), 0);
}

/* Many due at once, more than any internal bound on what is in flight:
 * each is handed out exactly once, batches never exceed max. */
static void test_collect_many_in_flight(void **state)
{
    (void)state;
    enum { N = 3000 };
    static struct tk_candidate out[N];
    static unsigned times[N];
    for (int i = 0; i < N; i++)
        conn(i, 100000 + (uint64_t)i, T0 + (uint64_t)i * MS, &policy);
    uint64_t now = T0 + 1000 * SEC;
    unsigned total = 0;
    for (int round = 0; round < 100 && total < N; round++) {
        unsigned n = collect(now, &policy, out, N);
        assert_true(n <= N);
        assert_true(n > 0);
        for (unsigned j = 0; j < n; j++) {
            unsigned i = (unsigned)(out[j].cookie - 100000);
            assert_true(i < N);
            times[i]++;
        }
        for (unsigned j = 0; j < n; j++)
            settle(&out[j], TK_VERDICT_FORGET, 0, now);
        total += n;
    }
    assert_int_equal(total, N);
    for (int i = 0; i < N; i++)
        if (times[i] != 1)
            fail_msg("connection %d handed out %u times", i, times[i]);
    assert_int_equal(collect(now + 3600 * SEC, &policy, out, N), 0);
}

/* ---------------------------------------------------------------------------
 * Settling a verdict */

static void test_settle_wait(void **state)
{
    (void)state;
    struct tk_candidate out[2];
    struct tk_conn *c = conn(5, 501, T0, &policy);
    uint64_t due = T0 + policy.slack_ns + policy.idle_ns;
    assert_int_equal(collect(due, &policy, out, 2), 1);
    uint64_t later = due + 7 * SEC;
    settle(&out[0], TK_VERDICT_WAIT, later, due);
    assert_int_equal(c->checking, 0);
    assert_int_equal(c->kind, TK_KIND_CONN);
    assert_true(queued(c));
    assert_int_equal(c->check_at_ns, later);
    assert_int_equal(next_check(), later);
    assert_int_equal(collect(later - 1, &policy, out, 2), 0);
    assert_int_equal(collect(later, &policy, out, 2), 1);
    assert_int_equal(out[0].cookie, 501);
}

static void test_settle_cut(void **state)
{
    (void)state;
    struct tk_candidate out[2];
    struct tk_conn *c = conn(5, 601, T0, &policy);
    uint64_t due = T0 + policy.slack_ns + policy.idle_ns;
    assert_int_equal(collect(due, &policy, out, 2), 1);
    settle(&out[0], TK_VERDICT_CUT, 0, due);
    assert_int_equal(c->kind, TK_KIND_CUT);
    assert_int_equal(c->checking, 0);
    assert_false(queued(c));
    assert_ptr_equal(tk_slot_get(5), c); /* still bound: the program closes it */
    /* Never handed out again, even after more "activity". */
    atomic_store(&c->last_call_ns, due + SEC);
    for (uint64_t t = due; t < due + 10 * policy.idle_ns; t += policy.idle_ns / 2)
        assert_int_equal(collect(t, &policy, out, 2), 0);
    assert_int_equal(next_check(), UINT64_MAX);
    /* The program's close then drops it. */
    lock();
    assert_true(tk_table_unbind(5));
    unlock();
    assert_null(find(601));
}

static void test_settle_forget(void **state)
{
    (void)state;
    struct tk_candidate out[2];
    struct tk_conn *c = conn(5, 701, T0, &policy);
    uint64_t due = T0 + policy.slack_ns + policy.idle_ns;
    assert_int_equal(collect(due, &policy, out, 2), 1);
    settle(&out[0], TK_VERDICT_FORGET, 0, due);
    assert_int_equal(c->kind, TK_KIND_DONE);
    assert_int_equal(c->checking, 0);
    assert_false(queued(c));
    assert_int_equal(collect(due + 3600 * SEC, &policy, out, 2), 0);
    assert_ptr_equal(tk_slot_get(5), c);
}

/* The fd no longer refers to the socket: its binding goes. */
static void test_settle_stale_only_fd(void **state)
{
    (void)state;
    struct tk_candidate out[2];
    conn(5, 801, T0, &policy);
    uint64_t due = T0 + policy.slack_ns + policy.idle_ns;
    assert_int_equal(collect(due, &policy, out, 2), 1);
    settle(&out[0], TK_VERDICT_STALE, 0, due);
    assert_null(tk_slot_get(5));
    assert_null(find(801));
    assert_int_equal(count(), 0);
    assert_int_equal(qlen(), 0);
}

/* Another descriptor still holds the socket: checked again through it. */
static void test_settle_stale_other_fd(void **state)
{
    (void)state;
    struct tk_candidate out[2];
    struct tk_conn *c = conn(5, 802, T0, &policy);
    lock();
    tk_table_dup(5, 9);
    unlock();
    uint64_t due = T0 + policy.slack_ns + policy.idle_ns;
    assert_int_equal(collect(due, &policy, out, 2), 1);
    assert_int_equal(out[0].fd, 5);
    uint64_t now = due + 3 * MS;
    settle(&out[0], TK_VERDICT_STALE, 0, now);
    assert_null(tk_slot_get(5));
    assert_ptr_equal(find(802), c);
    assert_int_equal(c->refs, 1);
    assert_int_equal(c->fd, 9);
    assert_true(queued(c));
    assert_true(c->check_at_ns <= now);
    assert_int_equal(collect(now, &policy, out, 2), 1);
    assert_int_equal(out[0].cookie, 802);
    assert_int_equal(out[0].fd, 9);
}

/* The number was reused by another tracked socket meanwhile: that socket's
 * binding is left alone. */
static void test_settle_stale_reused_fd(void **state)
{
    (void)state;
    struct tk_candidate out[2];
    struct tk_conn *a = conn(5, 803, T0, &policy);
    lock();
    tk_table_dup(5, 9);
    unlock();
    uint64_t due = T0 + policy.slack_ns + policy.idle_ns;
    assert_int_equal(collect(due, &policy, out, 2), 1);
    struct tk_conn *b = conn(5, 804, due, &policy); /* fd 5 is a new socket now */
    settle(&out[0], TK_VERDICT_STALE, 0, due);
    assert_ptr_equal(tk_slot_get(5), b);
    assert_int_equal(b->refs, 1);
    assert_int_equal(b->kind, TK_KIND_CONN);
    assert_ptr_equal(find(803), a);
    assert_int_equal(a->fd, 9);
    assert_int_equal(count(), 2);
}

/* Closed while the watchdog looked: settling any verdict is harmless, even
 * when the record's memory went to another connection. */
static void test_settle_after_close(void **state)
{
    (void)state;
    static const enum tk_verdict verdicts[] = {
        TK_VERDICT_WAIT, TK_VERDICT_CUT, TK_VERDICT_FORGET, TK_VERDICT_STALE,
    };
    for (int v = 0; v < 4; v++) {
        struct tk_candidate out[2];
        uint64_t cookie = 900 + (uint64_t)v;
        struct tk_conn *c = conn(5, cookie, T0, &policy);
        uint64_t due = T0 + policy.slack_ns + policy.idle_ns;
        assert_int_equal(collect(due, &policy, out, 2), 1);
        lock();
        assert_true(tk_table_unbind(5));
        unlock();
        assert_int_equal(qlen(), 0);
        /* The freed record is recycled for another socket, on fd 5 again. */
        struct tk_conn *d = conn(5, cookie + 100, due, &policy);
        assert_ptr_equal(d, c);
        uint64_t d_due = d->check_at_ns;
        settle(&out[0], verdicts[v], due + SEC, due);
        assert_ptr_equal(tk_slot_get(5), d);
        assert_int_equal(d->cookie, cookie + 100);
        assert_int_equal(d->kind, TK_KIND_CONN);
        assert_int_equal(d->refs, 1);
        assert_true(queued(d));
        assert_int_equal(d->check_at_ns, d_due);
        assert_null(find(cookie));
        lock();
        tk_table_unbind(5);
        unlock();
        assert_int_equal(count(), 0);
        assert_int_equal(qlen(), 0);
    }
}

/* ---------------------------------------------------------------------------
 * Forked child: what the parent's watchdog was looking at is requeued. */

static void test_after_fork_child(void **state)
{
    (void)state;
    struct tk_candidate out[8];
    struct tk_conn *a = conn(5, 1001, T0, &policy);
    struct tk_conn *b = conn(6, 1002, T0 + 1 * MS, &policy);
    struct tk_conn *c = conn(7, 1003, T0 + 2 * MS, &policy);
    struct tk_conn *d = conn(8, 1004, T0 + 3 * MS, &policy);
    struct tk_conn *e = conn(9, 1005, T0 + 500 * SEC, &policy); /* not due */
    uint64_t now = T0 + 40 * SEC;
    assert_int_equal(collect(now, &policy, out, 8), 4);
    settle(&out[1], TK_VERDICT_WAIT, now + 9 * SEC, now); /* b: settled */
    settle(&out[3], TK_VERDICT_CUT, 0, now);               /* d: settled, cut */
    lock();
    tk_table_unbind(7); /* c: closed while in flight */
    unlock();
    assert_false(queued(a));

    uint64_t child_now = now + 5 * MS;
    lock();
    tk_schedule_after_fork_child(child_now);
    unlock();
    /* a was in flight: back in the queue, now. */
    assert_int_equal(a->checking, 0);
    assert_true(queued(a));
    assert_int_equal(a->check_at_ns, child_now);
    /* The rest as they were. */
    assert_int_equal(b->check_at_ns, now + 9 * SEC);
    assert_int_equal(d->kind, TK_KIND_CUT);
    assert_false(queued(d));
    assert_null(find(1003));
    (void)c;
    assert_true(queued(e));
    assert_int_equal(qlen(), 3);

    /* The child's watchdog takes it from there. */
    assert_int_equal(collect(child_now, &policy, out, 8), 1);
    assert_int_equal(out[0].cookie, 1001);
    /* A parent's candidate settled in the child: harmless. */
    settle(&out[0], TK_VERDICT_WAIT, child_now + SEC, child_now);
    assert_int_equal(a->check_at_ns, child_now + SEC);
}

/* ---------------------------------------------------------------------------
 * The verdict */

static struct tk_observation kernel(uint8_t state, uint32_t recv_ms, uint32_t sent_ms)
{
    struct tk_observation o = { true, true, state, recv_ms, sent_ms };
    return o;
}

static struct tk_decision decide(uint64_t last_call, const struct tk_observation *o,
                                 uint64_t now, const struct tk_policy *p)
{
    struct tk_candidate cand = { .cookie = 4242, .fd = 5, .last_call_ns = last_call };
    return tk_schedule_decide(&cand, o, now, p);
}

static void test_decide_stale(void **state)
{
    (void)state;
    uint64_t now = T0 + 100 * SEC;
    struct tk_observation o = kernel(TCP_ESTABLISHED, 90000, 90000);
    o.same_socket = false;
    assert_int_equal(decide(T0, &o, now, &policy).verdict, TK_VERDICT_STALE);
    o.have_info = false;
    assert_int_equal(decide(T0, &o, now, &policy).verdict, TK_VERDICT_STALE);
    o = kernel(TCP_CLOSE, 0, 0);
    o.same_socket = false;
    assert_int_equal(decide(now, &o, now, &policy).verdict, TK_VERDICT_STALE);
}

static void test_decide_established(void **state)
{
    (void)state;
    const uint64_t idle = policy.idle_ns, slack = policy.slack_ns;
    uint64_t now = T0 + 100 * SEC;
    /* Idle both ways, in the kernel's view and the program's. */
    struct tk_observation o = kernel(TCP_ESTABLISHED, 40000, 45000);
    struct tk_decision d = decide(now - 50 * SEC, &o, now, &policy);
    assert_int_equal(d.verdict, TK_VERDICT_CUT);
    assert_true(d.idle_ns >= idle);
    assert_int_equal(d.idle_ns, 40 * SEC); /* since the kernel's last data */

    d = decide(now - 35 * SEC, &o, now, &policy);
    assert_int_equal(d.verdict, TK_VERDICT_CUT);
    assert_int_equal(d.idle_ns, 35 * SEC); /* since the program's last call */

    /* The kernel received data a second ago (another process, say). */
    o = kernel(TCP_ESTABLISHED, 1000, 50000);
    d = decide(now - 50 * SEC, &o, now, &policy);
    assert_int_equal(d.verdict, TK_VERDICT_WAIT);
    assert_int_equal(d.next_check_ns, now - 1 * SEC + idle + slack);

    /* ... or sent some half a second ago. */
    o = kernel(TCP_ESTABLISHED, 90000, 500);
    d = decide(now - 50 * SEC, &o, now, &policy);
    assert_int_equal(d.verdict, TK_VERDICT_WAIT);
    assert_int_equal(d.next_check_ns, now - 500 * MS + idle + slack);

    /* The program's calls are the more recent. */
    o = kernel(TCP_ESTABLISHED, 90000, 90000);
    d = decide(now - 5 * SEC, &o, now, &policy);
    assert_int_equal(d.verdict, TK_VERDICT_WAIT);
    assert_int_equal(d.next_check_ns, now - 5 * SEC + idle + slack);

    /* Right at the limit, the slack not yet passed: wait; past it: cut. */
    o = kernel(TCP_ESTABLISHED, 90000, 90000);
    d = decide(now - idle - slack + 1, &o, now, &policy);
    assert_int_equal(d.verdict, TK_VERDICT_WAIT);
    assert_true(d.next_check_ns > now);
    d = decide(now - idle - slack, &o, now, &policy);
    assert_int_equal(d.verdict, TK_VERDICT_CUT);
}

static void test_decide_handshake(void **state)
{
    (void)state;
    uint64_t now = T0 + 100 * SEC;
    static const uint8_t states[] = { TCP_SYN_SENT, TCP_SYN_RECV };
    for (int i = 0; i < 2; i++) {
        struct tk_observation o = kernel(states[i], 90000, 90000);
        struct tk_decision d = decide(now - 50 * SEC, &o, now, &policy);
        assert_int_equal(d.verdict, TK_VERDICT_WAIT);
        assert_true(d.next_check_ns > now);
        assert_true(d.next_check_ns <= now + 1 * SEC); /* soon */
        /* With a tiny limit, no later than the limit. */
        struct tk_policy fast = { 20 * MS, 1 * MS };
        d = decide(now - 50 * SEC, &o, now, &fast);
        assert_int_equal(d.verdict, TK_VERDICT_WAIT);
        assert_true(d.next_check_ns > now);
        assert_true(d.next_check_ns <= now + 20 * MS);
    }
}

static void test_decide_closed_states(void **state)
{
    (void)state;
    uint64_t now = T0 + 100 * SEC;
    static const uint8_t forget[] = { TCP_CLOSE, TCP_TIME_WAIT, TCP_LAST_ACK, TCP_CLOSING,
                                      TCP_LISTEN };
    for (size_t i = 0; i < sizeof(forget); i++) {
        struct tk_observation o = kernel(forget[i], 90000, 90000);
        if (decide(now - 50 * SEC, &o, now, &policy).verdict != TK_VERDICT_FORGET)
            fail_msg("state %u not forgotten", forget[i]);
        o = kernel(forget[i], 0, 0); /* even with recent data */
        if (decide(now, &o, now, &policy).verdict != TK_VERDICT_FORGET)
            fail_msg("state %u (recent) not forgotten", forget[i]);
    }
    /* Half-closed connections can still hang for ever: cut them. */
    static const uint8_t cut[] = { TCP_CLOSE_WAIT, TCP_FIN_WAIT1, TCP_FIN_WAIT2 };
    for (size_t i = 0; i < sizeof(cut); i++) {
        struct tk_observation o = kernel(cut[i], 90000, 90000);
        struct tk_decision d = decide(now - 50 * SEC, &o, now, &policy);
        if (d.verdict != TK_VERDICT_CUT)
            fail_msg("state %u idle not cut (verdict %d)", cut[i], d.verdict);
        assert_true(d.idle_ns >= policy.idle_ns);
        o = kernel(cut[i], 100, 100);
        d = decide(now - 50 * SEC, &o, now, &policy);
        assert_int_equal(d.verdict, TK_VERDICT_WAIT);
    }
}

static void test_decide_without_info(void **state)
{
    (void)state;
    const uint64_t idle = policy.idle_ns, slack = policy.slack_ns;
    uint64_t now = T0 + 100 * SEC;
    /* Whatever the fields say, they were not read. */
    struct tk_observation o = { true, false, TCP_CLOSE, 0, 0 };
    struct tk_decision d = decide(now - 40 * SEC, &o, now, &policy);
    assert_int_equal(d.verdict, TK_VERDICT_CUT);
    assert_int_equal(d.idle_ns, 40 * SEC);
    d = decide(now - 29 * SEC, &o, now, &policy);
    assert_int_equal(d.verdict, TK_VERDICT_WAIT);
    assert_int_equal(d.next_check_ns, now - 29 * SEC + idle + slack);
}

/* Over a grid of limits, slacks, states and ages: a cut never comes before
 * the last activity (the program's or the kernel's) + the limit, always
 * comes once that + the slack has passed, and a wait is for a time after
 * now, no later than the limit + slack after the last activity. */
static void test_decide_property_grid(void **state)
{
    (void)state;
    static const uint64_t idles[] = { 1 * MS, 100 * MS, 1 * SEC, 30 * SEC, 3600 * SEC };
    static const uint64_t slacks[] = { 0, 1 * MS, 4 * MS, 12 * MS };
    static const uint8_t states[] = { TCP_ESTABLISHED, TCP_CLOSE_WAIT, TCP_FIN_WAIT1,
                                      TCP_FIN_WAIT2 };
    /* Ages in ms: around every limit, and never-ish. */
    static const uint64_t ages_ms[] = { 0,    1,    2,     5,     12,    13,      99,
                                        100,  101,  112,   113,   999,   1000,    1012,
                                        1013, 5000, 29999, 30000, 30012, 30013,   31000,
                                        3599999, 3600000, 3600012, 3600013, 7200000 };
    static const uint32_t kernel_ms[] = { 0,     1,     13,    100,    101,     113,
                                          1000,  1013,  29999, 30012,  30013,   3600013,
                                          86400000, UINT32_MAX };
    const uint64_t now = 200000 * SEC;
    unsigned cuts = 0, waits = 0;
    for (size_t ii = 0; ii < sizeof(idles) / sizeof(idles[0]); ii++)
    for (size_t si = 0; si < sizeof(slacks) / sizeof(slacks[0]); si++) {
        struct tk_policy p = { idles[ii], slacks[si] };
        for (size_t st = 0; st <= sizeof(states); st++) /* the last: no TCP_INFO */
        for (size_t ai = 0; ai < sizeof(ages_ms) / sizeof(ages_ms[0]); ai++)
        for (size_t ri = 0; ri < sizeof(kernel_ms) / sizeof(kernel_ms[0]); ri++)
        for (size_t wi = 0; wi < sizeof(kernel_ms) / sizeof(kernel_ms[0]); wi++) {
            bool info = st < sizeof(states);
            struct tk_observation o = { true, info, info ? states[st] : 0,
                                        kernel_ms[ri], kernel_ms[wi] };
            uint64_t call = now - ages_ms[ai] * MS;
            /* The reference: the latest activity anyone saw. */
            uint64_t last = call;
            if (info) {
                uint64_t k = (kernel_ms[ri] < kernel_ms[wi] ? kernel_ms[ri] : kernel_ms[wi]);
                if (k * MS < now && now - k * MS > last)
                    last = now - k * MS;
            }
            struct tk_decision d = decide(call, &o, now, &p);
            if (d.verdict == TK_VERDICT_CUT) {
                cuts++;
                if (now - last < p.idle_ns)
                    fail_msg("cut %llu ns after activity, limit %llu (state %zu ai %zu)",
                             (unsigned long long)(now - last),
                             (unsigned long long)p.idle_ns, st, ai);
                if (d.idle_ns < p.idle_ns || d.idle_ns != now - last)
                    fail_msg("cut reports idle %llu, truly %llu",
                             (unsigned long long)d.idle_ns,
                             (unsigned long long)(now - last));
            } else if (d.verdict == TK_VERDICT_WAIT) {
                waits++;
                if (now - last >= p.idle_ns + p.slack_ns)
                    fail_msg("idle %llu ns >= limit %llu + slack %llu, not cut",
                             (unsigned long long)(now - last),
                             (unsigned long long)p.idle_ns, (unsigned long long)p.slack_ns);
                if (d.next_check_ns <= now)
                    fail_msg("wait until %llu, not after now %llu",
                             (unsigned long long)d.next_check_ns, (unsigned long long)now);
                if (d.next_check_ns < last + p.idle_ns ||
                    d.next_check_ns > last + p.idle_ns + p.slack_ns)
                    fail_msg("wait until %llu, idle end %llu (+ slack %llu)",
                             (unsigned long long)d.next_check_ns,
                             (unsigned long long)(last + p.idle_ns),
                             (unsigned long long)p.slack_ns);
            } else {
                fail_msg("verdict %d for an open connection", d.verdict);
            }
        }
    }
    assert_true(cuts > 1000);
    assert_true(waits > 1000);
}

/* ---------------------------------------------------------------------------
 * The whole loop on a fake clock: connections active at random moments,
 * some seen through the program's calls, some only by the kernel, some
 * closed along the way; a simulated watchdog wakes when tk_schedule_next()
 * says. Every connection left open is cut exactly once, no earlier than its
 * last activity + the limit and no later than that + the slack + the
 * kernel's 1 ms granularity. */

#define SIM_CONNS 300
#define SIM_EVENTS 8

struct sim_conn {
    int fd;
    uint64_t cookie;
    uint64_t events[SIM_EVENTS]; /* activity times, ascending; 0 = none */
    bool kernel_only[SIM_EVENTS];
    unsigned next_event;
    uint64_t close_at; /* 0 = stays open */
    bool closed;
    uint64_t last_activity, last_kernel;
    uint64_t cut_at;
    unsigned cuts;
    struct tk_conn *c;
};

static struct sim_conn sim[SIM_CONNS];

static void test_simulated_watchdog(void **state)
{
    (void)state;
    const struct tk_policy p = { 2 * SEC, 12 * MS };
    rng_state = 0x2545f4914f6cdd1dULL;
    for (int i = 0; i < SIM_CONNS; i++) {
        struct sim_conn *s = &sim[i];
        memset(s, 0, sizeof(*s));
        s->fd = 3 + i;
        s->cookie = 70000 + (uint64_t)i;
        uint64_t t = T0;
        unsigned n = (unsigned)(rnd() % SIM_EVENTS);
        for (unsigned j = 0; j < n; j++) {
            t += 1 + rnd() % (3 * SEC); /* gaps both under and over the limit */
            s->events[j] = t;
            s->kernel_only[j] = rnd() % 3 == 0;
        }
        if (rnd() % 8 == 0)
            s->close_at = T0 + rnd() % (10 * SEC);
        s->last_activity = s->last_kernel = T0;
        s->c = conn(s->fd, s->cookie, T0, &p);
    }
    uint64_t now = T0;
    static struct tk_candidate batch[16];
    static struct tk_decision decisions[16];
    for (int iter = 0; iter < 1000000; iter++) {
        /* The next thing to happen: activity, a close, or the watchdog. */
        uint64_t next = next_check();
        for (int i = 0; i < SIM_CONNS; i++) {
            struct sim_conn *s = &sim[i];
            if (s->closed)
                continue;
            if (s->next_event < SIM_EVENTS && s->events[s->next_event] &&
                s->events[s->next_event] < next)
                next = s->events[s->next_event];
            if (s->close_at && s->close_at < next)
                next = s->close_at;
        }
        if (next == UINT64_MAX)
            break;
        assert_true(next >= now);
        now = next;
        for (int i = 0; i < SIM_CONNS; i++) {
            struct sim_conn *s = &sim[i];
            if (s->closed)
                continue;
            while (s->next_event < SIM_EVENTS && s->events[s->next_event] &&
                   s->events[s->next_event] <= now) {
                unsigned j = s->next_event++;
                if (s->cuts)
                    continue; /* shut down: nothing moves any more */
                s->last_activity = s->last_kernel = now;
                if (!s->kernel_only[j]) /* the hot path's store, no lock */
                    atomic_store_explicit(&s->c->last_call_ns, now, memory_order_relaxed);
            }
            if (s->close_at && s->close_at <= now) {
                lock();
                assert_true(tk_table_unbind(s->fd));
                unlock();
                s->closed = true;
            }
        }
        /* The watchdog: collect, look (outside the lock), settle. */
        unsigned n;
        while ((n = collect(now, &p, batch, 16)) > 0) {
            for (unsigned j = 0; j < n; j++) {
                int i = (int)(batch[j].cookie - 70000);
                assert_true(i >= 0 && i < SIM_CONNS);
                struct sim_conn *s = &sim[i];
                assert_int_equal(batch[j].fd, s->fd);
                struct tk_observation o = { 0 };
                /* Sometimes the program closes it while the watchdog looks. */
                if (!s->closed && s->close_at && rnd() % 4 == 0) {
                    lock();
                    assert_true(tk_table_unbind(s->fd));
                    unlock();
                    s->closed = true;
                }
                if (!s->closed) {
                    o.same_socket = true;
                    o.have_info = (i % 5) != 0; /* some without TCP_INFO */
                    o.tcp_state = TCP_ESTABLISHED;
                    /* The kernel reports whole milliseconds, rounded down. */
                    o.last_data_recv_ms = (uint32_t)((now - s->last_kernel) / MS);
                    o.last_data_sent_ms = (uint32_t)((now - s->last_kernel) / MS) + 7;
                }
                decisions[j] = tk_schedule_decide(&batch[j], &o, now, &p);
                if (decisions[j].verdict == TK_VERDICT_CUT) {
                    s->cuts++;
                    s->cut_at = now;
                }
            }
            lock();
            for (unsigned j = 0; j < n; j++)
                tk_schedule_settle(&batch[j], &decisions[j], now);
            unlock();
        }
    }
    assert_int_equal(next_check(), UINT64_MAX);
    unsigned cut = 0;
    for (int i = 0; i < SIM_CONNS; i++) {
        struct sim_conn *s = &sim[i];
        if (s->closed && !s->cuts)
            continue;
        if (s->cuts != 1)
            fail_msg("connection %d cut %u times", i, s->cuts);
        cut++;
        /* Without TCP_INFO only the program's calls count. */
        uint64_t last = s->last_activity;
        if (i % 5 == 0) {
            last = T0;
            for (unsigned j = 0; j < SIM_EVENTS && s->events[j] && s->events[j] <= s->cut_at;
                 j++)
                if (!s->kernel_only[j])
                    last = s->events[j];
        }
        if (s->cut_at < last + p.idle_ns)
            fail_msg("connection %d cut %lld ns before its limit", i,
                     (long long)(last + p.idle_ns - s->cut_at));
        if (s->cut_at > last + p.idle_ns + p.slack_ns + 1 * MS)
            fail_msg("connection %d cut %llu ns after its limit", i,
                     (unsigned long long)(s->cut_at - last - p.idle_ns));
    }
    assert_true(cut > SIM_CONNS / 2);
}

/* A record cut while queued again (e.g. bound anew by cookie and watched)
 * is dropped from the queue by collect, not handed out a second time. */
static void test_collect_skips_cut_record(void **state)
{
    (void)state;
    struct tk_candidate out[2];
    struct tk_conn *c = conn(5, 611, T0, &policy);
    uint64_t due = T0 + policy.slack_ns + policy.idle_ns;
    assert_int_equal(collect(due, &policy, out, 2), 1);
    settle(&out[0], TK_VERDICT_CUT, 0, due);
    lock();
    tk_queue_set(c, due); /* back in the queue by some other path */
    unlock();
    assert_int_equal(collect(due + SEC, &policy, out, 2), 0);
    assert_false(queued(c));
    assert_int_equal(c->kind, TK_KIND_CUT);
}

/* With no limit, decide never cuts and never asks to look again. */
static void test_decide_no_limit(void **state)
{
    (void)state;
    const struct tk_policy none = { 0, 12 * MS };
    struct tk_observation obs = { .same_socket = true, .have_info = true,
                                  .tcp_state = TCP_ESTABLISHED,
                                  .last_data_recv_ms = 1000000, .last_data_sent_ms = 1000000 };
    struct tk_candidate cand = { .cookie = 1, .fd = 5, .last_call_ns = T0 };
    struct tk_decision d = tk_schedule_decide(&cand, &obs, T0 + 1000 * SEC, &none);
    assert_int_equal(d.verdict, TK_VERDICT_WAIT);
    assert_true(d.next_check_ns == UINT64_MAX);
    obs.tcp_state = TCP_SYN_SENT;
    d = tk_schedule_decide(&cand, &obs, T0 + 1000 * SEC, &none);
    assert_int_equal(d.verdict, TK_VERDICT_WAIT);
    assert_true(d.next_check_ns == UINT64_MAX);
}

/* A call the program made after collect counts when the watchdog decides. */
static void test_refresh_sees_late_call(void **state)
{
    (void)state;
    struct tk_candidate out[2];
    struct tk_conn *c = conn(5, 621, T0, &policy);
    uint64_t due = T0 + policy.slack_ns + policy.idle_ns;
    assert_int_equal(collect(due, &policy, out, 2), 1);
    assert_int_equal(out[0].last_call_ns, T0);
    atomic_store(&c->last_call_ns, due); /* the program reads, outside the lock */
    tk_schedule_refresh(&out[0]);
    assert_int_equal(out[0].last_call_ns, due);
    struct tk_observation obs = { .same_socket = true };
    struct tk_decision d = tk_schedule_decide(&out[0], &obs, due + MS, &policy);
    assert_int_equal(d.verdict, TK_VERDICT_WAIT);
    /* A record reused for another socket is not read. */
    out[0].last_call_ns = T0;
    out[0].cookie = 999;
    tk_schedule_refresh(&out[0]);
    assert_int_equal(out[0].last_call_ns, T0);
    out[0].cookie = 621;
    settle(&out[0], TK_VERDICT_WAIT, due + SEC, due);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, reset, reset)
    const struct CMUnitTest tests[] = {
        T(test_queue_heap_order),
        T(test_watch_places_at_idle_end),
        T(test_collect_due_time),
        T(test_collect_requeues_active),
        T(test_collect_batch_limit),
        T(test_collect_many_in_flight),
        T(test_settle_wait),
        T(test_settle_cut),
        T(test_settle_forget),
        T(test_settle_stale_only_fd),
        T(test_settle_stale_other_fd),
        T(test_settle_stale_reused_fd),
        T(test_settle_after_close),
        T(test_after_fork_child),
        T(test_decide_stale),
        T(test_decide_established),
        T(test_decide_handshake),
        T(test_decide_closed_states),
        T(test_decide_without_info),
        T(test_decide_property_grid),
        T(test_simulated_watchdog),
        T(test_collect_skips_cut_record),
        T(test_decide_no_limit),
        T(test_refresh_sees_late_call),
    };
    return cmocka_run_group_tests_name("schedule", tests, NULL, NULL);
}
