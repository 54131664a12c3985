/* Unit tests of the watchdog's logic with a fake clock: the deadline queue
 * (shim/queue.c) and the scheduling decisions (shim/schedule.c) over the
 * real connection table. No thread, no socket: "now" is whatever the test
 * says, and the kernel's answers are made up. The specification is issue 5,
 * "Idle policies": every limit is met no earlier than its limit, the first
 * one due wins, and what counts as activity follows TCPKEEP_ACTIVITY. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <limits.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "schedule.h"
#include "stats.h"
#include "table.h"
#include "locked_table.h"

/* stats.c is not linked (it needs the logger): schedule.c and table.c
 * count into this. */

#define MS 1000000ULL
#define SEC 1000000000ULL
#define T0 (1000 * SEC) /* the fake clock's start: well clear of zero */
#define SLACK (12 * MS)
#define NEVER UINT64_MAX
#define BIT(r) (1u << (r))
/* schedule.c's TK_ACK_DELAY_NS: how long after the last data sent its ACK
 * may come, at most, when nothing is in flight (the progress estimate). */
#define ACK_DELAY (40 * MS)

static const struct tk_policy both = { SLACK, TK_ACTIVITY_BOTH };
static const struct tk_policy calls = { SLACK, TK_ACTIVITY_CALLS };
static const struct tk_policy kern = { SLACK, TK_ACTIVITY_KERNEL };
/* Indexed by enum tk_activity. */
static const struct tk_policy *const modes[3] = { &both, &calls, &kern };
static const char *const mode_name[3] = { "both", "calls", "kernel" };

/* Settings records point at: they must outlive the records. */
static const struct tk_settings idle30 = { .idle_ms = 30000 };
static const struct tk_settings no_policy = { .keepalive = true, .keepidle_s = 60 };

/* ---------------------------------------------------------------------------
 * Helpers */

static uint64_t rng_state;
static uint64_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ULL;
}

/* A connection accepted (TK_DIR_IN) or made (TK_DIR_OUT) at `born` on fd,
 * managed by `set`; returns what tk_schedule_watch said through *queued. */
static struct tk_conn *conn_full(int fd, uint64_t cookie, uint64_t born,
                                 const struct tk_settings *set, uint8_t direction, bool *queued)
{
    lock();
    struct tk_conn *c = tk_table_bind(fd, cookie);
    assert_non_null(c);
    c->key.direction = direction;
    bool q = tk_schedule_watch(c, set, born);
    unlock();
    if (queued)
        *queued = q;
    return c;
}

static struct tk_conn *conn(int fd, uint64_t cookie, uint64_t born, const struct tk_settings *set)
{
    return conn_full(fd, cookie, born, set, TK_DIR_OUT, NULL);
}

static unsigned collect(uint64_t now, const struct tk_policy *p, struct tk_candidate *out,
                        unsigned max)
{
    lock();
    unsigned n = tk_schedule_collect(now, p, out, max);
    unlock();
    return n;
}

static void settle_d(const struct tk_candidate *cand, const struct tk_decision *d, uint64_t now)
{
    lock();
    tk_schedule_settle(cand, d, now);
    unlock();
}

static void settle(const struct tk_candidate *cand, enum tk_verdict v, uint64_t next,
                   uint64_t now)
{
    struct tk_decision d = { .verdict = v, .next_check_ns = next, .reason = TK_REASON_IDLE,
                             .seen = cand->seen };
    settle_d(cand, &d, now);
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

static uint64_t stat_now(void)
{
    return atomic_load(&tk_stats.tracked_now);
}

static uint64_t stat_total(void)
{
    return atomic_load(&tk_stats.tracked_total);
}

/* Every test starts and ends with nothing in flight, queued or tracked. */
static int reset(void **state)
{
    (void)state;
    release_lock_if_held();
    lock();
    tk_schedule_after_fork_child(0); /* forgets what is in flight */
    tk_table_unbind_range(0, UINT_MAX);
    tk_table_oom = false;
    unlock();
    assert_int_equal(count(), 0);
    assert_int_equal(qlen(), 0);
    assert_int_equal(next_check(), UINT64_MAX);
    assert_int_equal(stat_now(), 0);
    atomic_store(&tk_stats.tracked_total, 0);
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
    assert_non_null(in);
    assert_non_null(key);
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
    assert_non_null(sorted);
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
 * Watching a connection: queued at its earliest deadline, counted */

static void test_watch_places_at_first_deadline(void **state)
{
    (void)state;
    bool q;
    struct tk_conn *c = conn_full(5, 101, T0, &idle30, TK_DIR_OUT, &q);
    assert_true(q);
    assert_int_equal(c->kind, TK_KIND_CONN);
    assert_ptr_equal(c->set, &idle30);
    assert_int_equal(c->born_ns, T0);
    assert_true(queued(c));
    /* Born now: no stamp, so the idle clock starts at the birth itself. */
    assert_int_equal(c->check_at_ns, T0 + 30 * SEC);
    assert_int_equal(next_check(), T0 + 30 * SEC);

    /* Nothing to cut: watched, never queued. */
    struct tk_conn *d = conn_full(6, 102, T0, &no_policy, TK_DIR_IN, &q);
    assert_false(q);
    assert_int_equal(d->kind, TK_KIND_CONN);
    assert_false(queued(d));
    assert_int_equal(qlen(), 1);
    struct tk_candidate out[4];
    assert_int_equal(collect(T0 + 1000 * SEC, &both, out, 4), 1); /* only c */
    assert_int_equal(out[0].cookie, 101);

    /* Several policies: the earliest of them. */
    static const struct tk_settings many = { .idle_ms = 30000, .read_ms = 20000,
                                             .write_ms = 25000, .lifetime_ms = 40000 };
    struct tk_conn *e = conn(7, 103, T0, &many);
    assert_int_equal(e->check_at_ns, T0 + 20 * SEC);
    static const struct tk_settings first_byte = { .idle_ms = 30000, .first_byte_ms = 4000 };
    struct tk_conn *f = conn_full(8, 104, T0, &first_byte, TK_DIR_IN, NULL);
    assert_int_equal(f->check_at_ns, T0 + 4 * SEC);
    struct tk_conn *g = conn_full(9, 105, T0, &first_byte, TK_DIR_OUT, NULL);
    assert_int_equal(g->check_at_ns, T0 + 30 * SEC); /* first-byte: accepted ones only */
    static const struct tk_settings life = { .lifetime_ms = 10000 };
    struct tk_conn *h = conn(10, 106, T0, &life);
    assert_int_equal(h->check_at_ns, T0 + 10 * SEC);
}

/* tracked_now / tracked_total: a connection counts once it is watched (a
 * listener or a socket never connected does not), and leaves tracked_now
 * with its last descriptor, whatever became of it. */
static void test_watch_counts_tracked(void **state)
{
    (void)state;
    lock();
    struct tk_conn *listener = tk_table_bind(3, 150);
    unlock();
    assert_non_null(listener);
    assert_int_equal(stat_now(), 0);
    assert_int_equal(stat_total(), 0);

    struct tk_conn *a = conn(5, 151, T0, &idle30);
    struct tk_conn *b = conn_full(6, 152, T0, &no_policy, TK_DIR_IN, NULL);
    struct tk_conn *c = conn(7, 153, T0, &idle30);
    assert_int_equal(stat_now(), 3);
    assert_int_equal(stat_total(), 3);
    /* Watched again (its settings looked up anew): not counted twice. */
    lock();
    tk_schedule_watch(a, &idle30, T0 + SEC);
    tk_table_dup(5, 15);
    unlock();
    assert_int_equal(stat_now(), 3);
    assert_int_equal(stat_total(), 3);

    /* Cut, then closed: still counted until the close. */
    struct tk_candidate out[4];
    assert_int_equal(collect(T0 + 40 * SEC, &both, out, 4), 2);
    settle(&out[0], TK_VERDICT_CUT, 0, T0 + 40 * SEC);
    settle(&out[1], TK_VERDICT_FORGET, 0, T0 + 40 * SEC);
    assert_int_equal(stat_now(), 3);
    lock();
    tk_table_unbind(5);
    unlock();
    assert_int_equal(stat_now(), 3); /* fd 15 still holds a */
    lock();
    tk_table_unbind(15);
    tk_table_unbind(6);
    tk_table_unbind(3); /* the listener: never counted */
    unlock();
    assert_int_equal(stat_now(), 1);
    lock();
    tk_table_unbind(7);
    unlock();
    assert_int_equal(stat_now(), 0);
    assert_int_equal(stat_total(), 3);
    (void)b;
    (void)c;
    (void)listener;
}

/* ---------------------------------------------------------------------------
 * Which connections are due */

static void test_collect_due_time(void **state)
{
    (void)state;
    struct tk_candidate out[4];
    static const struct tk_settings set = { .idle_ms = 30000, .lifetime_ms = 600000,
                                            .lifetime_jitter = 10, .dry_run = true };
    struct tk_conn *c = conn_full(5, 201, T0, &set, TK_DIR_IN, NULL);
    c->seen.read_ns = T0 - 5 * SEC; /* before its birth: changes nothing */
    atomic_store(&c->writing, 1);
    c->dry_said = BIT(TK_REASON_LIFETIME);
    uint64_t due = T0 + 30 * SEC;
    assert_int_equal(c->check_at_ns, due);

    assert_int_equal(collect(T0, &both, out, 4), 0);
    assert_int_equal(collect(due - 1, &both, out, 4), 0);
    assert_true(queued(c));
    assert_int_equal(c->checking, 0);

    assert_int_equal(collect(due, &both, out, 4), 1);
    /* The candidate is a copy of the record. */
    assert_int_equal(out[0].cookie, 201);
    assert_int_equal(out[0].fd, 5);
    assert_ptr_equal(out[0].rec, c);
    assert_int_equal(out[0].last_read_ns, 0);
    assert_int_equal(out[0].last_write_ns, 0);
    assert_int_equal(out[0].eof_ns, 0);
    assert_int_equal(out[0].born_ns, T0);
    assert_int_equal(out[0].seen.read_ns, T0 - 5 * SEC);
    assert_memory_equal(&out[0].set, &set, sizeof(set));
    assert_int_equal(out[0].jitter, c->jitter);
    assert_int_equal(out[0].direction, TK_DIR_IN);
    assert_int_equal(out[0].dry_said, BIT(TK_REASON_LIFETIME));
    assert_int_equal(out[0].writing, 1);
    assert_false(queued(c));
    assert_int_equal(c->checking, 1);
    assert_int_equal(next_check(), UINT64_MAX);
    /* In flight: not handed out twice. */
    assert_int_equal(collect(due + 3600 * SEC, &both, out, 4), 0);

    /* And a connection collected late is still collected. */
    struct tk_conn *d = conn(6, 202, T0, &idle30);
    assert_int_equal(collect(due + 5 * SEC, &both, out, 4), 1);
    assert_int_equal(out[0].cookie, 202);
    assert_int_equal(d->checking, 1);
}

/* The program moved data after the connection was queued: requeued at its
 * new deadline, not handed out. */
static void test_collect_requeues_active(void **state)
{
    (void)state;
    struct tk_candidate out[4];
    struct tk_conn *c = conn(5, 301, T0, &idle30);
    uint64_t due = T0 + 30 * SEC;
    atomic_store(&c->last_read, T0 + 10 * SEC);
    assert_int_equal(collect(due, &both, out, 4), 0);
    assert_true(queued(c));
    assert_int_equal(c->checking, 0);
    uint64_t due2 = T0 + 10 * SEC + SLACK + 30 * SEC;
    assert_int_equal(c->check_at_ns, due2);
    assert_int_equal(next_check(), due2);
    atomic_store(&c->last_write, T0 + 20 * SEC);
    assert_int_equal(collect(due2, &both, out, 4), 0);
    uint64_t due3 = T0 + 20 * SEC + SLACK + 30 * SEC;
    assert_int_equal(c->check_at_ns, due3);
    assert_int_equal(collect(due3 - 1, &both, out, 4), 0);
    assert_int_equal(collect(due3, &both, out, 4), 1);
    assert_int_equal(out[0].cookie, 301);
    assert_int_equal(out[0].last_read_ns, T0 + 10 * SEC);
    assert_int_equal(out[0].last_write_ns, T0 + 20 * SEC);
    settle(&out[0], TK_VERDICT_WAIT, due3 + SEC, due3);

    /* In kernel mode the program's calls do not count, even for collect:
     * handed out for the kernel to say. */
    atomic_store(&c->last_read, due3 + SEC);
    assert_int_equal(collect(due3 + SEC, &kern, out, 4), 1);
    assert_int_equal(out[0].cookie, 301);
}

static void test_collect_batch_limit(void **state)
{
    (void)state;
    struct tk_candidate out[16];
    /* Ten due, at distinct times, bound in scrambled order. */
    static const int order[10] = { 7, 2, 9, 0, 4, 8, 1, 6, 3, 5 };
    for (int i = 0; i < 10; i++)
        conn(10 + order[i], 400 + (uint64_t)order[i], T0 + (uint64_t)order[i] * SEC, &idle30);
    uint64_t now = T0 + 100 * SEC;
    assert_int_equal(collect(now, &both, out, 0), 0);
    assert_int_equal(qlen(), 10);
    uint64_t seen = 0;
    unsigned got = 0;
    for (int round = 0; round < 4; round++) {
        memset(out, 0xff, sizeof(out));
        unsigned n = collect(now, &both, out, 3);
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
    memset(times, 0, sizeof(times));
    for (int i = 0; i < N; i++)
        conn(i, 100000 + (uint64_t)i, T0 + (uint64_t)i * MS, &idle30);
    assert_int_equal(stat_now(), N);
    uint64_t now = T0 + 1000 * SEC;
    unsigned total = 0;
    for (int round = 0; round < 100 && total < N; round++) {
        unsigned n = collect(now, &both, out, N);
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
    assert_int_equal(collect(now + 3600 * SEC, &both, out, N), 0);
}

/* A record cut while queued again (e.g. bound anew by cookie and watched)
 * is dropped from the queue by collect, not handed out a second time; so is
 * one that is not managed (no settings). */
static void test_collect_skips_cut_record(void **state)
{
    (void)state;
    struct tk_candidate out[2];
    struct tk_conn *c = conn(5, 611, T0, &idle30);
    uint64_t due = T0 + 30 * SEC;
    assert_int_equal(collect(due, &both, out, 2), 1);
    settle(&out[0], TK_VERDICT_CUT, 0, due);
    lock();
    tk_queue_set(c, due); /* back in the queue by some other path */
    unlock();
    assert_int_equal(collect(due + SEC, &both, out, 2), 0);
    assert_false(queued(c));
    assert_int_equal(c->kind, TK_KIND_CUT);

    struct tk_conn *d = conn(6, 612, T0, &idle30);
    d->set = NULL;
    assert_int_equal(collect(due + SEC, &both, out, 2), 0);
    assert_false(queued(d));
}

/* ---------------------------------------------------------------------------
 * Settling a verdict */

static void test_settle_wait_keeps_what_was_learned(void **state)
{
    (void)state;
    struct tk_candidate out[2];
    static const struct tk_settings set = { .idle_ms = 30000, .read_ms = 35000,
                                            .dry_run = true };
    struct tk_conn *c = conn(5, 501, T0, &set);
    c->dry_said = BIT(TK_REASON_LIFETIME);
    uint64_t due = T0 + 30 * SEC;
    assert_int_equal(collect(due, &both, out, 2), 1);
    uint64_t later = due + 7 * SEC;
    struct tk_decision d = { .verdict = TK_VERDICT_WAIT, .next_check_ns = later };
    d.seen = (struct tk_seen){ .read_ns = T0 + 1 * SEC, .write_ns = T0 + 2 * SEC,
                               .progress_ns = T0 + 3 * SEC, .acked = 4242,
                               .closewait_ns = T0 + 4 * SEC, .poll_ns = due + SEC,
                               .got_byte = 1 };
    /* The watchdog reported idle in a dry run meanwhile. */
    out[0].dry_said |= BIT(TK_REASON_IDLE);
    settle_d(&out[0], &d, due);
    assert_int_equal(c->checking, 0);
    assert_int_equal(c->kind, TK_KIND_CONN);
    assert_memory_equal(&c->seen, &d.seen, sizeof(d.seen));
    assert_int_equal(c->dry_said, BIT(TK_REASON_IDLE) | BIT(TK_REASON_LIFETIME));
    assert_true(queued(c));
    assert_int_equal(c->check_at_ns, later);
    assert_int_equal(next_check(), later);
    assert_int_equal(collect(later - 1, &both, out, 2), 0);
    assert_int_equal(collect(later, &both, out, 2), 1);
    assert_int_equal(out[0].cookie, 501);
    /* What was learned comes back in the next candidate. */
    assert_memory_equal(&out[0].seen, &d.seen, sizeof(d.seen));
    assert_int_equal(out[0].dry_said, BIT(TK_REASON_IDLE) | BIT(TK_REASON_LIFETIME));

    /* Nothing left to look for (every reason reported): out of the queue. */
    settle(&out[0], TK_VERDICT_WAIT, UINT64_MAX, later);
    assert_false(queued(c));
    assert_int_equal(c->kind, TK_KIND_CONN);
    assert_int_equal(c->checking, 0);
}

static void test_settle_cut(void **state)
{
    (void)state;
    struct tk_candidate out[2];
    struct tk_conn *c = conn(5, 601, T0, &idle30);
    uint64_t due = T0 + 30 * SEC;
    assert_int_equal(collect(due, &both, out, 2), 1);
    settle(&out[0], TK_VERDICT_CUT, 0, due);
    assert_int_equal(c->kind, TK_KIND_CUT);
    assert_int_equal(c->checking, 0);
    assert_false(queued(c));
    assert_ptr_equal(tk_slot_get(5), c); /* still bound: the program closes it */
    /* Never handed out again, even after more "activity", or a rules change. */
    atomic_store(&c->last_read, due + SEC);
    lock();
    tk_schedule_rewatch(c, due + SEC);
    unlock();
    assert_false(queued(c));
    for (uint64_t t = due; t < due + 300 * SEC; t += 15 * SEC)
        assert_int_equal(collect(t, &both, out, 2), 0);
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
    struct tk_conn *c = conn(5, 701, T0, &idle30);
    uint64_t due = T0 + 30 * SEC;
    assert_int_equal(collect(due, &both, out, 2), 1);
    settle(&out[0], TK_VERDICT_FORGET, 0, due);
    assert_int_equal(c->kind, TK_KIND_DONE);
    assert_int_equal(c->checking, 0);
    assert_false(queued(c));
    assert_int_equal(collect(due + 3600 * SEC, &both, out, 2), 0);
    assert_ptr_equal(tk_slot_get(5), c);
}

/* The fd no longer refers to the socket: its binding goes. */
static void test_settle_stale_only_fd(void **state)
{
    (void)state;
    struct tk_candidate out[2];
    conn(5, 801, T0, &idle30);
    uint64_t due = T0 + 30 * SEC;
    assert_int_equal(collect(due, &both, out, 2), 1);
    assert_int_equal(stat_now(), 1);
    settle(&out[0], TK_VERDICT_STALE, 0, due);
    assert_null(tk_slot_get(5));
    assert_null(find(801));
    assert_int_equal(count(), 0);
    assert_int_equal(qlen(), 0);
    assert_int_equal(stat_now(), 0);
}

/* Another descriptor still holds the socket: checked again through it. */
static void test_settle_stale_other_fd(void **state)
{
    (void)state;
    struct tk_candidate out[2];
    struct tk_conn *c = conn(5, 802, T0, &idle30);
    lock();
    tk_table_dup(5, 9);
    unlock();
    uint64_t due = T0 + 30 * SEC;
    assert_int_equal(collect(due, &both, out, 2), 1);
    assert_int_equal(out[0].fd, 5);
    uint64_t now = due + 3 * MS;
    settle(&out[0], TK_VERDICT_STALE, 0, now);
    assert_null(tk_slot_get(5));
    assert_ptr_equal(find(802), c);
    assert_int_equal(c->refs, 1);
    assert_int_equal(c->fd, 9);
    assert_true(queued(c));
    assert_true(c->check_at_ns <= now);
    assert_int_equal(stat_now(), 1);
    assert_int_equal(collect(now, &both, out, 2), 1);
    assert_int_equal(out[0].cookie, 802);
    assert_int_equal(out[0].fd, 9);
}

/* The number was reused by another tracked socket meanwhile: that socket's
 * binding is left alone. */
static void test_settle_stale_reused_fd(void **state)
{
    (void)state;
    struct tk_candidate out[2];
    struct tk_conn *a = conn(5, 803, T0, &idle30);
    lock();
    tk_table_dup(5, 9);
    unlock();
    uint64_t due = T0 + 30 * SEC;
    assert_int_equal(collect(due, &both, out, 2), 1);
    struct tk_conn *b = conn(5, 804, due, &idle30); /* fd 5 is a new socket now */
    settle(&out[0], TK_VERDICT_STALE, 0, due);
    assert_ptr_equal(tk_slot_get(5), b);
    assert_int_equal(b->refs, 1);
    assert_int_equal(b->kind, TK_KIND_CONN);
    assert_ptr_equal(find(803), a);
    assert_int_equal(a->fd, 9);
    assert_int_equal(count(), 2);
    assert_int_equal(stat_now(), 2);
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
        struct tk_conn *c = conn(5, cookie, T0, &idle30);
        uint64_t due = T0 + 30 * SEC;
        assert_int_equal(collect(due, &both, out, 2), 1);
        lock();
        assert_true(tk_table_unbind(5));
        unlock();
        assert_int_equal(qlen(), 0);
        /* The freed record is recycled for another socket, on fd 5 again. */
        struct tk_conn *d = conn(5, cookie + 100, due, &idle30);
        assert_ptr_equal(d, c);
        uint64_t d_due = d->check_at_ns;
        out[0].seen.read_ns = due; /* must not land in the new record */
        out[0].dry_said = 0x3f;
        settle(&out[0], verdicts[v], due + SEC, due);
        assert_ptr_equal(tk_slot_get(5), d);
        assert_int_equal(d->cookie, cookie + 100);
        assert_int_equal(d->kind, TK_KIND_CONN);
        assert_int_equal(d->refs, 1);
        assert_int_equal(d->checking, 0);
        assert_int_equal(d->seen.read_ns, 0);
        assert_int_equal(d->dry_said, 0);
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
 * New settings (a rules file changed): looked at again now */

static void test_rewatch(void **state)
{
    (void)state;
    struct tk_candidate out[2];
    struct tk_conn *c = conn(5, 1101, T0, &idle30);
    uint16_t jitter = c->jitter;
    static const struct tk_settings shorter = { .idle_ms = 5000 };
    lock();
    c->set = &shorter;
    tk_schedule_rewatch(c, T0 + SEC);
    unlock();
    assert_true(queued(c));
    assert_int_equal(c->check_at_ns, T0 + SEC);
    assert_int_equal(c->jitter, jitter); /* its lifetime draw stays */
    assert_int_equal(c->born_ns, T0);
    /* Collect judges it by the new settings. */
    assert_int_equal(collect(T0 + SEC, &both, out, 2), 0);
    assert_int_equal(c->check_at_ns, T0 + 5 * SEC);
    assert_int_equal(collect(T0 + 5 * SEC, &both, out, 2), 1);
    assert_int_equal(out[0].set.idle_ms, 5000);
    settle(&out[0], TK_VERDICT_WAIT, T0 + 6 * SEC, T0 + 5 * SEC);

    /* In flight (the watchdog is looking): left to the settle. */
    assert_int_equal(collect(T0 + 6 * SEC, &both, out, 2), 1);
    lock();
    tk_schedule_rewatch(c, T0 + 6 * SEC);
    unlock();
    assert_false(queued(c));
    settle(&out[0], TK_VERDICT_WAIT, T0 + 7 * SEC, T0 + 6 * SEC);
    assert_int_equal(c->check_at_ns, T0 + 7 * SEC);

    /* A socket not connected yet, or a cut one: nothing to look at. */
    lock();
    struct tk_conn *s = tk_table_bind(6, 1102);
    tk_schedule_rewatch(s, T0 + SEC);
    unlock();
    assert_false(queued(s));
}

/* ---------------------------------------------------------------------------
 * Forked child: what the parent's watchdog was looking at is requeued. */

static void test_after_fork_child(void **state)
{
    (void)state;
    struct tk_candidate out[8];
    struct tk_conn *a = conn(5, 1001, T0, &idle30);
    struct tk_conn *b = conn(6, 1002, T0 + 1 * MS, &idle30);
    struct tk_conn *c = conn(7, 1003, T0 + 2 * MS, &idle30);
    struct tk_conn *d = conn(8, 1004, T0 + 3 * MS, &idle30);
    struct tk_conn *e = conn(9, 1005, T0 + 500 * SEC, &idle30); /* not due */
    uint64_t now = T0 + 40 * SEC;
    assert_int_equal(collect(now, &both, out, 8), 4);
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
    assert_int_equal(stat_now(), 4); /* the table is inherited: so is the count */

    /* The child's watchdog takes it from there. */
    assert_int_equal(collect(child_now, &both, out, 8), 1);
    assert_int_equal(out[0].cookie, 1001);
    /* A parent's candidate settled in the child: harmless. */
    settle(&out[0], TK_VERDICT_WAIT, child_now + SEC, child_now);
    assert_int_equal(a->check_at_ns, child_now + SEC);
}

/* ---------------------------------------------------------------------------
 * The program's latest stamps, read just before deciding */

static void test_refresh_sees_late_calls(void **state)
{
    (void)state;
    struct tk_candidate out[2];
    struct tk_conn *c = conn(5, 621, T0, &idle30);
    uint64_t due = T0 + 30 * SEC;
    atomic_store(&c->last_write, T0 + SEC);
    assert_int_equal(collect(due + 2 * SEC, &both, out, 2), 1);
    assert_int_equal(out[0].last_read_ns, 0);
    assert_int_equal(out[0].last_write_ns, T0 + SEC);
    /* The program reads and writes (and reads end-of-file), outside the lock. */
    atomic_store(&c->last_read, due);
    atomic_store(&c->last_write, due + 1);
    atomic_store(&c->eof_at, due + 2);
    atomic_store(&c->writing, 1);
    tk_schedule_refresh(&out[0]);
    assert_int_equal(out[0].writing, 1);
    atomic_store(&c->writing, 0);
    tk_schedule_refresh(&out[0]);
    assert_int_equal(out[0].writing, 0);
    assert_int_equal(out[0].last_read_ns, due);
    assert_int_equal(out[0].last_write_ns, due + 1);
    assert_int_equal(out[0].eof_ns, due + 2);
    struct tk_observation obs = { .same_socket = true };
    struct tk_decision d = tk_schedule_decide(&out[0], &obs, due + MS, &both);
    assert_int_equal(d.verdict, TK_VERDICT_WAIT);
    /* A stamp never goes back; the first end-of-file stays the first. */
    atomic_store(&c->last_read, T0);
    out[0].eof_ns = due - 5;
    tk_schedule_refresh(&out[0]);
    assert_int_equal(out[0].last_read_ns, due);
    assert_int_equal(out[0].eof_ns, due - 5);
    /* A record reused for another socket is not read. */
    out[0].last_read_ns = T0;
    out[0].cookie = 999;
    atomic_store(&c->last_read, due + 10);
    tk_schedule_refresh(&out[0]);
    assert_int_equal(out[0].last_read_ns, T0);
    out[0].rec = NULL;
    tk_schedule_refresh(&out[0]);
    assert_int_equal(out[0].last_read_ns, T0);
    out[0].cookie = 621;
    settle(&out[0], TK_VERDICT_WAIT, due + SEC, due);
}

/* ---------------------------------------------------------------------------
 * The verdict. A candidate born at T0, and the kernel's view of its socket
 * in absolute times, turned into TCP_INFO's "milliseconds ago" at each
 * moment asked. Every time used is a whole millisecond, so the kernel's
 * rounding down loses nothing. */

struct kview {
    bool no_info;        /* TCP_INFO could not be read */
    uint8_t state;       /* 0: TCP_ESTABLISHED */
    uint64_t recv_at, sent_at, ack_at; /* 0: never */
    uint64_t bytes_acked, bytes_received;
    uint32_t unacked, rtt_us;
};

static struct tk_candidate cand_of(const struct tk_settings *set, uint8_t direction)
{
    struct tk_candidate c;
    memset(&c, 0, sizeof(c));
    c.cookie = 4242;
    c.fd = 5;
    c.born_ns = T0;
    c.set = *set;
    c.direction = direction;
    return c;
}

static uint32_t age_ms(uint64_t now, uint64_t at)
{
    if (!at)
        return UINT32_MAX; /* the kernel's "never": a huge age */
    if (at > now)
        fail_msg("the test asks at %llu about %llu, in the future", (unsigned long long)now,
                 (unsigned long long)at);
    return (uint32_t)((now - at) / MS);
}

static struct tk_observation observe_at(const struct kview *k, uint64_t now)
{
    struct tk_observation o;
    memset(&o, 0, sizeof(o));
    o.same_socket = true;
    if (k->no_info)
        return o;
    o.have_info = true;
    o.tcp_state = k->state ? k->state : TCP_ESTABLISHED;
    o.last_data_recv_ms = age_ms(now, k->recv_at);
    o.last_data_sent_ms = age_ms(now, k->sent_at);
    o.last_ack_recv_ms = age_ms(now, k->ack_at);
    o.bytes_acked = k->bytes_acked;
    o.bytes_received = k->bytes_received;
    o.unacked = k->unacked;
    o.rtt_us = k->rtt_us;
    return o;
}

/* k NULL: as collect judges it, without asking the kernel. */
static struct tk_decision decide_at(const struct tk_candidate *c, const struct kview *k,
                                    uint64_t now, const struct tk_policy *p)
{
    if (!k)
        return tk_schedule_decide(c, NULL, now, p);
    struct tk_observation o = observe_at(k, now);
    return tk_schedule_decide(c, &o, now, p);
}

static uint64_t max_u64(uint64_t a, uint64_t b)
{
    return a > b ? a : b;
}

/* The latest moment anything in c or k happened: the earliest the test
 * may ask about. */
static uint64_t latest_event(const struct tk_candidate *c, const struct kview *k)
{
    uint64_t t = c->born_ns;
    t = max_u64(t, c->last_read_ns);
    t = max_u64(t, c->last_write_ns);
    t = max_u64(t, c->eof_ns);
    t = max_u64(t, c->seen.read_ns);
    t = max_u64(t, c->seen.write_ns);
    t = max_u64(t, c->seen.progress_ns);
    t = max_u64(t, c->seen.closewait_ns);
    if (k) {
        t = max_u64(t, k->recv_at);
        t = max_u64(t, k->sent_at);
        t = max_u64(t, k->ack_at);
    }
    return t;
}

/* Whether the decision without the kernel is a lower bound of the one with
 * it. Not when the kernel mode has no TCP_INFO (then "look again after the
 * smallest limit", whatever was seen), nor when the observation is what
 * first shows the peer's close (collect cannot know that: the poll finds
 * it). */
static bool null_is_lower_bound(const struct tk_candidate *c, const struct kview *k,
                                const struct tk_policy *p)
{
    if (k->no_info && p->activity == TK_ACTIVITY_KERNEL)
        return false;
    if (!k->no_info && k->state == TCP_CLOSE_WAIT && !c->seen.closewait_ns && !c->eof_ns &&
        c->set.half_closed_ms)
        return false;
    /* An end-of-file the socket's state denies (the program's own
     * shutdown(SHUT_RD)): collect cannot know it is denied. See
     * test_decide_half_closed_denied_eof. */
    if (!k->no_info && k->state != TCP_CLOSE_WAIT && c->eof_ns && c->set.half_closed_ms)
        return false;
    return true;
}

static const char *verdict_name(enum tk_verdict v)
{
    static const char *const names[] = { "WAIT", "CUT", "FORGET", "STALE", "LOOK" };
    return (unsigned)v < 5 ? names[v] : "?";
}

/* The first policy due is `reason`, at exactly `due`, having held `held`
 * by then. Before it (from the latest event on): never a cut, and a look
 * again after now and no later than due; a whole millisecond before: a
 * look again at exactly due; at it and after: the cut, for that reason.
 * k NULL (collect's view, without the kernel): LOOK instead of the cut,
 * the reason being the kernel's to confirm. With k, the decision without
 * the kernel is never later. */
#define expect_cut_at(c, k, p, due, reason, held) \
    expect_cut_at_(c, k, p, due, reason, held, __LINE__)
static void expect_cut_at_(const struct tk_candidate *c, const struct kview *k,
                           const struct tk_policy *p, uint64_t due, enum tk_reason reason,
                           uint64_t held, int line)
{
    uint64_t from = latest_event(c, k);
    if (due <= from)
        fail_msg("line %d: due %llu not after the last event %llu", line,
                 (unsigned long long)due, (unsigned long long)from);
    const char *mode = mode_name[p->activity];
    struct tk_decision d;
    for (int i = 0; i <= 16; i++) {
        uint64_t now = from + (due - 1 - from) / 16 * (uint64_t)i;
        now -= (now - from) % MS; /* whole milliseconds after from */
        d = decide_at(c, k, now, p);
        if (d.verdict != TK_VERDICT_WAIT)
            fail_msg("line %d (%s): %s (%s) %lld ns before due", line, mode,
                     verdict_name(d.verdict), tk_reason_token[d.reason],
                     (long long)(due - now));
        if (d.next_check_ns <= now || d.next_check_ns > due)
            fail_msg("line %d (%s): at due - %llu ns, look again at due %+lld ns", line, mode,
                     (unsigned long long)(due - now), (long long)(d.next_check_ns - due));
        if (k && null_is_lower_bound(c, k, p)) {
            struct tk_decision n = decide_at(c, NULL, now, p);
            if (n.verdict == TK_VERDICT_WAIT && n.next_check_ns > d.next_check_ns)
                fail_msg("line %d (%s): collect's bound %llu later than the decision %llu",
                         line, mode, (unsigned long long)n.next_check_ns,
                         (unsigned long long)d.next_check_ns);
        }
    }
    if (due - MS >= from) {
        d = decide_at(c, k, due - MS, p);
        if (d.verdict != TK_VERDICT_WAIT || d.next_check_ns != due)
            fail_msg("line %d (%s): 1 ms before due: %s, look again at due %+lld ns", line,
                     mode, verdict_name(d.verdict), (long long)(d.next_check_ns - due));
    }
    d = decide_at(c, k, due - 1, p);
    if (d.verdict != TK_VERDICT_WAIT)
        fail_msg("line %d (%s): %s 1 ns before due", line, mode, verdict_name(d.verdict));
    for (uint64_t late = 0; late <= 5 * SEC; late += 5 * SEC) {
        d = decide_at(c, k, due + late, p);
        if (!k) {
            if (d.verdict != TK_VERDICT_LOOK)
                fail_msg("line %d (%s): at due + %llu s without the kernel: %s, expected "
                         "LOOK", line, mode, (unsigned long long)(late / SEC),
                         verdict_name(d.verdict));
            continue;
        }
        if (d.verdict != TK_VERDICT_CUT || d.reason != reason || d.held_ns != held + late)
            fail_msg("line %d (%s): at due + %llu s: %s %s held %llu ns, expected CUT %s "
                     "held %llu", line, mode, (unsigned long long)(late / SEC),
                     verdict_name(d.verdict), tk_reason_token[d.reason],
                     (unsigned long long)d.held_ns, tk_reason_token[reason],
                     (unsigned long long)(held + late));
        if (k && null_is_lower_bound(c, k, p)) {
            struct tk_decision n = decide_at(c, NULL, due + late, p);
            if (n.verdict != TK_VERDICT_LOOK)
                fail_msg("line %d (%s): collect would not hand it out at due (%s)", line,
                         mode, verdict_name(n.verdict));
        }
    }
}

/* Nothing is ever due: a wait for ever, now and much later. */
#define expect_never(c, k, p) expect_never_(c, k, p, __LINE__)
static void expect_never_(const struct tk_candidate *c, const struct kview *k,
                          const struct tk_policy *p, int line)
{
    uint64_t from = latest_event(c, k);
    for (uint64_t late = 0; late <= 1000000 * SEC; late = late * 10 + SEC) {
        struct tk_decision d = decide_at(c, k, from + late, p);
        if (d.verdict != TK_VERDICT_WAIT || d.next_check_ns != NEVER)
            fail_msg("line %d (%s): %s (%s), look again at %llu: expected never", line,
                     mode_name[p->activity], verdict_name(d.verdict),
                     tk_reason_token[d.reason], (unsigned long long)d.next_check_ns);
    }
}

/* ---- No policy ---- */

static void test_decide_no_policy(void **state)
{
    (void)state;
    struct tk_candidate c = cand_of(&no_policy, TK_DIR_IN);
    struct kview k = { .recv_at = T0, .sent_at = T0 };
    for (int m = 0; m < 3; m++) {
        expect_never(&c, NULL, modes[m]);
        expect_never(&c, &k, modes[m]);
    }
    k.state = TCP_SYN_SENT;
    expect_never(&c, &k, &both);
    k.no_info = true;
    expect_never(&c, &k, &kern);
    /* Only options, and an end-of-file: still nothing to cut. */
    c.eof_ns = T0 + SEC;
    expect_never(&c, NULL, &both);
}

/* ---- Idle, read-idle, write-idle ---- */

static void test_decide_idle_alone(void **state)
{
    (void)state;
    struct tk_candidate c = cand_of(&idle30, TK_DIR_IN);
    /* No activity at all: from the birth (an exact time, no slack). */
    for (int m = 0; m < 3; m++)
        expect_cut_at(&c, NULL, modes[m], T0 + 30 * SEC, TK_REASON_IDLE, 30 * SEC);
    struct kview quiet = { .recv_at = 0, .sent_at = 0 };
    for (int m = 0; m < 3; m++)
        expect_cut_at(&c, &quiet, modes[m], T0 + 30 * SEC, TK_REASON_IDLE, 30 * SEC);
    /* The kernel's times of the handshake: they lag by up to the slack. */
    quiet.recv_at = quiet.sent_at = T0;
    expect_cut_at(&c, &quiet, &both, T0 + SLACK + 30 * SEC, TK_REASON_IDLE, 30 * SEC);
    expect_cut_at(&c, &quiet, &kern, T0 + SLACK + 30 * SEC, TK_REASON_IDLE, 30 * SEC);
    expect_cut_at(&c, &quiet, &calls, T0 + 30 * SEC, TK_REASON_IDLE, 30 * SEC);

    /* The program read last, then wrote: the later one counts, + slack. */
    c.last_read_ns = T0 + 5 * SEC;
    c.last_write_ns = T0 + 3 * SEC;
    struct kview k = { .recv_at = T0 + 1 * SEC, .sent_at = T0 + 2 * SEC };
    expect_cut_at(&c, &k, &both, T0 + 5 * SEC + SLACK + 30 * SEC, TK_REASON_IDLE, 30 * SEC);
    expect_cut_at(&c, NULL, &both, T0 + 5 * SEC + SLACK + 30 * SEC, TK_REASON_IDLE, 30 * SEC);
    c.last_write_ns = T0 + 7 * SEC;
    expect_cut_at(&c, &k, &both, T0 + 7 * SEC + SLACK + 30 * SEC, TK_REASON_IDLE, 30 * SEC);
    /* The kernel saw data later than the program's calls (another process
     * sharing the socket, say): either way counts. */
    k.recv_at = T0 + 9 * SEC;
    expect_cut_at(&c, &k, &both, T0 + 9 * SEC + SLACK + 30 * SEC, TK_REASON_IDLE, 30 * SEC);
    k.sent_at = T0 + 11 * SEC;
    expect_cut_at(&c, &k, &both, T0 + 11 * SEC + SLACK + 30 * SEC, TK_REASON_IDLE, 30 * SEC);

    /* Learned from the kernel, kept in seen: what collect goes by. */
    struct tk_decision d = decide_at(&c, &k, T0 + 20 * SEC, &both);
    assert_int_equal(d.seen.read_ns, T0 + 9 * SEC);
    assert_int_equal(d.seen.write_ns, T0 + 11 * SEC);
    c.seen = d.seen;
    expect_cut_at(&c, NULL, &both, T0 + 11 * SEC + SLACK + 30 * SEC, TK_REASON_IDLE, 30 * SEC);

    /* A half-closed state does not stop the idle clock. */
    static const uint8_t open_states[] = { TCP_CLOSE_WAIT, TCP_FIN_WAIT1, TCP_FIN_WAIT2 };
    for (size_t i = 0; i < sizeof(open_states); i++) {
        k.state = open_states[i];
        expect_cut_at(&c, &k, &both, T0 + 11 * SEC + SLACK + 30 * SEC, TK_REASON_IDLE,
                      30 * SEC);
    }
}

static void test_decide_read_alone(void **state)
{
    (void)state;
    static const struct tk_settings set = { .read_ms = 10000 };
    struct tk_candidate c = cand_of(&set, TK_DIR_OUT);
    struct kview silent = { 0 };
    for (int m = 0; m < 3; m++) {
        expect_cut_at(&c, NULL, modes[m], T0 + 10 * SEC, TK_REASON_READ_IDLE, 10 * SEC);
        expect_cut_at(&c, &silent, modes[m], T0 + 10 * SEC, TK_REASON_READ_IDLE, 10 * SEC);
    }
    /* Writes, the program's or the kernel's, do not count. */
    c.last_read_ns = T0 + 5 * SEC;
    c.last_write_ns = T0 + 60 * SEC;
    struct kview k = { .recv_at = T0 + 2 * SEC, .sent_at = T0 + 61 * SEC };
    c.born_ns = T0;
    /* Asked from the latest event (the writes) on: already due then. */
    struct tk_decision d = decide_at(&c, &k, T0 + 61 * SEC, &both);
    assert_int_equal(d.verdict, TK_VERDICT_CUT);
    assert_int_equal(d.reason, TK_REASON_READ_IDLE);
    assert_int_equal(d.held_ns, 61 * SEC - 5 * SEC - SLACK);
    c.last_write_ns = T0 + 11 * SEC;
    k.sent_at = T0 + 11 * SEC;
    expect_cut_at(&c, &k, &both, T0 + 5 * SEC + SLACK + 10 * SEC, TK_REASON_READ_IDLE,
                  10 * SEC);
    expect_cut_at(&c, &k, &calls, T0 + 5 * SEC + SLACK + 10 * SEC, TK_REASON_READ_IDLE,
                  10 * SEC);
    expect_cut_at(&c, &k, &kern, T0 + 2 * SEC + SLACK + 10 * SEC, TK_REASON_READ_IDLE,
                  10 * SEC);
}

static void test_decide_write_alone(void **state)
{
    (void)state;
    static const struct tk_settings set = { .write_ms = 10000 };
    struct tk_candidate c = cand_of(&set, TK_DIR_IN);
    struct kview silent = { 0 };
    for (int m = 0; m < 3; m++) {
        expect_cut_at(&c, NULL, modes[m], T0 + 10 * SEC, TK_REASON_WRITE_IDLE, 10 * SEC);
        expect_cut_at(&c, &silent, modes[m], T0 + 10 * SEC, TK_REASON_WRITE_IDLE, 10 * SEC);
    }
    /* Reads, the program's or the kernel's, do not count. */
    c.last_write_ns = T0 + 4 * SEC;
    c.last_read_ns = T0 + 13 * SEC;
    struct kview k = { .recv_at = T0 + 13 * SEC, .sent_at = T0 + 3 * SEC };
    expect_cut_at(&c, &k, &both, T0 + 4 * SEC + SLACK + 10 * SEC, TK_REASON_WRITE_IDLE,
                  10 * SEC);
    expect_cut_at(&c, &k, &calls, T0 + 4 * SEC + SLACK + 10 * SEC, TK_REASON_WRITE_IDLE,
                  10 * SEC);
    expect_cut_at(&c, &k, &kern, T0 + 3 * SEC + SLACK + 10 * SEC, TK_REASON_WRITE_IDLE,
                  10 * SEC);
}

/* Idle, read-idle and write-idle together: the first due wins, with its
 * own token and how long its own condition held. */
static void test_decide_idle_read_write_together(void **state)
{
    (void)state;
    static const struct tk_settings set = { .idle_ms = 30000, .read_ms = 10000,
                                            .write_ms = 20000, .dry_run = true };
    struct tk_candidate c = cand_of(&set, TK_DIR_OUT);
    struct kview k = { .recv_at = T0, .sent_at = T0 };
    /* Read-idle first. */
    c.last_read_ns = T0 + 2 * SEC;
    c.last_write_ns = T0 + 1 * SEC;
    uint64_t read_due = T0 + 2 * SEC + SLACK + 10 * SEC;
    uint64_t write_due = T0 + 1 * SEC + SLACK + 20 * SEC;
    uint64_t idle_due = T0 + 2 * SEC + SLACK + 30 * SEC;
    expect_cut_at(&c, &k, &both, read_due, TK_REASON_READ_IDLE, 10 * SEC);
    /* Reported already (a dry run): the next one due. */
    c.dry_said = BIT(TK_REASON_READ_IDLE);
    expect_cut_at(&c, &k, &both, write_due, TK_REASON_WRITE_IDLE, 20 * SEC);
    c.dry_said |= BIT(TK_REASON_WRITE_IDLE);
    expect_cut_at(&c, &k, &both, idle_due, TK_REASON_IDLE, 30 * SEC);
    c.dry_said |= BIT(TK_REASON_IDLE);
    expect_never(&c, &k, &both);
    expect_never(&c, NULL, &both);
    c.dry_said = BIT(TK_REASON_WRITE_IDLE); /* bits for other reasons change nothing */
    expect_cut_at(&c, &k, &both, read_due, TK_REASON_READ_IDLE, 10 * SEC);
    c.dry_said = BIT(TK_REASON_LIFETIME) | BIT(TK_REASON_FIRST_BYTE) |
                 BIT(TK_REASON_HALF_CLOSED);
    expect_cut_at(&c, &k, &both, read_due, TK_REASON_READ_IDLE, 10 * SEC);
    c.dry_said = 0;

    /* Write-idle first: reads kept coming. */
    c.last_read_ns = T0 + 15 * SEC;
    expect_cut_at(&c, &k, &both, write_due, TK_REASON_WRITE_IDLE, 20 * SEC);

    /* Idle first: a shorter idle limit than either. */
    static const struct tk_settings idle_first = { .idle_ms = 5000, .read_ms = 10000,
                                                   .write_ms = 20000 };
    c.set = idle_first;
    c.last_read_ns = T0 + 2 * SEC;
    c.last_write_ns = T0 + 3 * SEC;
    expect_cut_at(&c, &k, &both, T0 + 3 * SEC + SLACK + 5 * SEC, TK_REASON_IDLE, 5 * SEC);

    /* Ties: idle and read-idle due at the same moment (reads only). */
    static const struct tk_settings tie = { .idle_ms = 10000, .read_ms = 10000 };
    c.set = tie;
    c.last_write_ns = 0;
    struct tk_decision d = decide_at(&c, &k, T0 + 2 * SEC + SLACK + 10 * SEC, &both);
    assert_int_equal(d.verdict, TK_VERDICT_CUT);
    assert_true(d.reason == TK_REASON_IDLE || d.reason == TK_REASON_READ_IDLE);
    assert_int_equal(d.held_ns, 10 * SEC);
}

/* ---- TCPKEEP_ACTIVITY: whose stamps count ---- */

static void test_decide_activity_modes(void **state)
{
    (void)state;
    static const struct tk_settings sets[3] = {
        { .idle_ms = 30000 }, { .read_ms = 30000 }, { .write_ms = 30000 } };
    static const enum tk_reason reasons[3] = { TK_REASON_IDLE, TK_REASON_READ_IDLE,
                                              TK_REASON_WRITE_IDLE };
    for (int s = 0; s < 3; s++) {
        struct tk_candidate c = cand_of(&sets[s], TK_DIR_IN);
        /* The program's calls the more recent, both ways. */
        c.last_read_ns = T0 + 10 * SEC;
        c.last_write_ns = T0 + 10 * SEC;
        struct kview k = { .recv_at = T0 + 5 * SEC, .sent_at = T0 + 5 * SEC };
        uint64_t by_calls = T0 + 10 * SEC + SLACK + 30 * SEC;
        uint64_t by_kernel = T0 + 5 * SEC + SLACK + 30 * SEC;
        expect_cut_at(&c, &k, &both, by_calls, reasons[s], 30 * SEC);
        expect_cut_at(&c, &k, &calls, by_calls, reasons[s], 30 * SEC);
        expect_cut_at(&c, &k, &kern, by_kernel, reasons[s], 30 * SEC);
        /* The kernel's the more recent (data the program never read, or
         * moved by calls the shim cannot see). */
        c.last_read_ns = c.last_write_ns = T0 + 5 * SEC;
        k.recv_at = k.sent_at = T0 + 10 * SEC;
        expect_cut_at(&c, &k, &both, by_calls, reasons[s], 30 * SEC);
        expect_cut_at(&c, &k, &calls, by_kernel, reasons[s], 30 * SEC);
        expect_cut_at(&c, &k, &kern, by_calls, reasons[s], 30 * SEC);

        /* Without the kernel (collect): what was seen before counts in
         * both and kernel modes, the program's stamps in both and calls. */
        c.seen.read_ns = c.seen.write_ns = T0 + 12 * SEC;
        c.last_read_ns = c.last_write_ns = T0 + 8 * SEC;
        expect_cut_at(&c, NULL, &both, T0 + 12 * SEC + SLACK + 30 * SEC, reasons[s], 30 * SEC);
        expect_cut_at(&c, NULL, &calls, T0 + 8 * SEC + SLACK + 30 * SEC, reasons[s], 30 * SEC);
        expect_cut_at(&c, NULL, &kern, T0 + 12 * SEC + SLACK + 30 * SEC, reasons[s], 30 * SEC);

        /* TCP_INFO could not be read: calls and both go by the stamps;
         * kernel mode cannot judge, so it waits the smallest limit. */
        memset(&c.seen, 0, sizeof(c.seen));
        struct kview none = { .no_info = true };
        expect_cut_at(&c, &none, &both, T0 + 8 * SEC + SLACK + 30 * SEC, reasons[s], 30 * SEC);
        expect_cut_at(&c, &none, &calls, T0 + 8 * SEC + SLACK + 30 * SEC, reasons[s], 30 * SEC);
        uint64_t late = T0 + 3600 * SEC;
        struct tk_decision d = decide_at(&c, &none, late, &kern);
        assert_int_equal(d.verdict, TK_VERDICT_WAIT);
        assert_int_equal(d.next_check_ns, late + 30 * SEC);
    }
}

/* ---- Slow readers: tcpi_bytes_acked progress ---- */

/* The peer keeps acknowledging: neither write-idle nor idle, in every
 * mode, however old the program's last write (the write call still under
 * way); read-idle still applies. */
static void test_decide_progress_keeps_alive(void **state)
{
    (void)state;
    static const struct tk_settings sets[3] = {
        { .idle_ms = 30000 }, { .write_ms = 30000 }, { .read_ms = 30000 } };
    for (int m = 0; m < 3; m++) {
        for (int s = 0; s < 3; s++) {
            struct tk_candidate c = cand_of(&sets[s], TK_DIR_OUT);
            /* One long blocking write, started at T0 + 1 s. */
            c.writing = 1;
            c.last_read_ns = c.last_write_ns = T0 + 1 * SEC;
            c.seen.read_ns = c.seen.write_ns = T0 + 1 * SEC;
            c.seen.acked = 1000;
            c.seen.progress_ns = T0 + 1 * SEC;
            uint64_t now = T0 + 40 * SEC;
            /* Nothing new sent meanwhile (as far as the kernel's send time
             * goes), so that only the progress can keep it alive. */
            struct kview k = { .recv_at = T0 + 1 * SEC, .sent_at = T0 + 1 * SEC,
                               .ack_at = now - 100 * MS, .bytes_acked = 5000,
                               .unacked = 4, .rtt_us = 300 };
            struct tk_decision d = decide_at(&c, &k, now, modes[m]);
            /* Progress: at the last ACK, as something is still in flight. */
            assert_int_equal(d.seen.acked, 5000);
            assert_int_equal(d.seen.progress_ns, now - 100 * MS);
            if (s == 2) {
                if (d.verdict != TK_VERDICT_CUT || d.reason != TK_REASON_READ_IDLE)
                    fail_msg("%s: a slow reader's silence is still read-idle",
                             mode_name[m]);
                assert_int_equal(d.held_ns, now - (T0 + 1 * SEC + SLACK));
                continue;
            }
            if (d.verdict != TK_VERDICT_WAIT)
                fail_msg("%s, %s: cut (%s) while the peer acknowledges", mode_name[m],
                         s ? "write" : "idle", tk_reason_token[d.reason]);
            assert_int_equal(d.next_check_ns, now - 100 * MS + SLACK + 30 * SEC);
            /* Remembered: collect goes by it too. */
            c.seen = d.seen;
            expect_cut_at(&c, NULL, modes[m], now - 100 * MS + SLACK + 30 * SEC,
                          s ? TK_REASON_WRITE_IDLE : TK_REASON_IDLE, 30 * SEC);
        }
    }
}

/* Under TCPKEEP_ACTIVITY=calls, acknowledgements count only while the
 * program is inside a write call: data it moved with calls the shim cannot
 * see (splice) is not its activity. The progress is still learned. */
static void test_decide_progress_calls_needs_write_call(void **state)
{
    (void)state;
    static const struct tk_settings sets[2] = { { .idle_ms = 30000 }, { .write_ms = 30000 } };
    for (int s = 0; s < 2; s++) {
        enum tk_reason why = s ? TK_REASON_WRITE_IDLE : TK_REASON_IDLE;
        struct tk_candidate c = cand_of(&sets[s], TK_DIR_OUT);
        c.last_read_ns = c.last_write_ns = T0 + 1 * SEC;
        c.seen.acked = 1000;
        uint64_t now = T0 + 40 * SEC;
        struct kview k = { .recv_at = T0 + 1 * SEC, .sent_at = T0 + 1 * SEC,
                           .ack_at = now - 100 * MS, .bytes_acked = 5000, .unacked = 4,
                           .rtt_us = 300 };
        struct tk_decision d = decide_at(&c, &k, now, &calls);
        assert_int_equal(d.seen.progress_ns, now - 100 * MS);
        if (d.verdict != TK_VERDICT_CUT || d.reason != why)
            fail_msg("calls, no write call under way: %s, expected CUT %s",
                     verdict_name(d.verdict), tk_reason_token[why]);
        assert_int_equal(d.held_ns, now - (T0 + 1 * SEC + SLACK));
        /* The other modes count it regardless. */
        assert_int_equal(decide_at(&c, &k, now, &both).verdict, TK_VERDICT_WAIT);
        assert_int_equal(decide_at(&c, &k, now, &kern).verdict, TK_VERDICT_WAIT);
        /* From the learned progress, once a write call is under way. */
        c.seen = d.seen;
        assert_int_equal(decide_at(&c, NULL, now, &calls).verdict, TK_VERDICT_LOOK);
        c.writing = 2;
        expect_cut_at(&c, NULL, &calls, now - 100 * MS + SLACK + 30 * SEC, why, 30 * SEC);
    }
}

/* A stuck peer (zero window): nothing acknowledged since the last progress,
 * though ACKs (window probes) keep coming: idle from the last progress. */
static void test_decide_stuck_peer(void **state)
{
    (void)state;
    static const struct tk_settings set = { .idle_ms = 30000, .write_ms = 60000 };
    for (int m = 0; m < 3; m++) {
        struct tk_candidate c = cand_of(&set, TK_DIR_OUT);
        c.writing = 1; /* blocked in write */
        c.last_write_ns = T0 + 1 * SEC;
        c.seen.acked = 5000;
        c.seen.progress_ns = T0 + 20 * SEC;
        c.seen.write_ns = T0 + 1 * SEC;
        /* bytes_acked as before; the last ACK received recent (probes). */
        struct kview k = { .recv_at = T0, .sent_at = T0 + 1 * SEC, .ack_at = T0 + 45 * SEC,
                           .bytes_acked = 5000, .unacked = 0, .rtt_us = 300 };
        expect_cut_at(&c, &k, modes[m], T0 + 20 * SEC + SLACK + 30 * SEC, TK_REASON_IDLE,
                      30 * SEC);
        struct tk_decision d = decide_at(&c, &k, T0 + 46 * SEC, modes[m]);
        assert_int_equal(d.seen.progress_ns, T0 + 20 * SEC);
        assert_int_equal(d.seen.acked, 5000);
        c.dry_said = BIT(TK_REASON_IDLE);
        c.set.dry_run = true;
        expect_cut_at(&c, &k, modes[m], T0 + 20 * SEC + SLACK + 60 * SEC,
                      TK_REASON_WRITE_IDLE, 60 * SEC);
    }
}

/* When nothing is in flight, the progress is the ACK of the last data sent:
 * no later than one round trip plus the ACK delay after it left, even if
 * ACKs of probes came later; never later than the last ACK either. */
static void test_decide_progress_estimate(void **state)
{
    (void)state;
    static const struct tk_settings set = { .write_ms = 30000 };
    uint64_t now = T0 + 40 * SEC;
    struct tk_candidate c = cand_of(&set, TK_DIR_OUT);
    c.seen.acked = 1;
    c.writing = 1;
    /* Probes answered at T0 + 39 s; the data left at T0 + 20 s. */
    struct kview k = { .recv_at = T0, .sent_at = T0 + 20 * SEC, .ack_at = T0 + 39 * SEC,
                       .bytes_acked = 9001, .unacked = 0, .rtt_us = 5000 };
    uint64_t capped = T0 + 20 * SEC + 5 * MS + ACK_DELAY;
    for (int m = 0; m < 3; m++) {
        struct tk_decision d = decide_at(&c, &k, now, modes[m]);
        assert_int_equal(d.seen.progress_ns, capped);
        assert_int_equal(d.seen.acked, 9001);
        assert_int_equal(d.verdict, TK_VERDICT_WAIT);
        /* In calls mode the kernel's send time does not count, the
         * progress does. */
        assert_int_equal(d.next_check_ns, capped + SLACK + 30 * SEC);
    }
    /* The last ACK came before that bound: it is the progress. */
    k.ack_at = T0 + 20 * SEC + 10 * MS;
    struct tk_decision d = decide_at(&c, &k, now, &both);
    assert_int_equal(d.seen.progress_ns, T0 + 20 * SEC + 10 * MS);
    /* Something in flight: the last ACK is the progress. */
    k.ack_at = T0 + 39 * SEC;
    k.unacked = 2;
    d = decide_at(&c, &k, now, &both);
    assert_int_equal(d.seen.progress_ns, T0 + 39 * SEC);
    /* It never goes back. */
    c.seen = d.seen;
    k.bytes_acked = 9500;
    k.unacked = 0;
    d = decide_at(&c, &k, now + SEC, &both);
    assert_int_equal(d.seen.progress_ns, T0 + 39 * SEC);
    assert_int_equal(d.seen.acked, 9500);
    /* Fewer bytes acked than seen (cannot happen; a counter reset): no
     * progress, nothing forgotten. */
    k.bytes_acked = 10;
    k.ack_at = now + SEC;
    c.seen = d.seen;
    d = decide_at(&c, &k, now + 2 * SEC, &both);
    assert_int_equal(d.seen.progress_ns, T0 + 39 * SEC);
    assert_int_equal(d.seen.acked, 9500);
}

/* ---- First byte ---- */

static void test_decide_first_byte(void **state)
{
    (void)state;
    static const struct tk_settings set = { .first_byte_ms = 5000 };
    struct tk_candidate in = cand_of(&set, TK_DIR_IN);
    struct kview k = { .recv_at = 0, .sent_at = T0 };
    /* Accepted, silent: exactly the limit after accept returned. */
    for (int m = 0; m < 3; m++) {
        expect_cut_at(&in, NULL, modes[m], T0 + 5 * SEC, TK_REASON_FIRST_BYTE, 5 * SEC);
        expect_cut_at(&in, &k, modes[m], T0 + 5 * SEC, TK_REASON_FIRST_BYTE, 5 * SEC);
    }
    /* The program's own writes do not disarm it. */
    in.last_write_ns = T0 + 2 * SEC;
    k.sent_at = T0 + 2 * SEC;
    for (int m = 0; m < 3; m++)
        expect_cut_at(&in, &k, modes[m], T0 + 5 * SEC, TK_REASON_FIRST_BYTE, 5 * SEC);

    /* Made by the program: never. */
    struct tk_candidate out = cand_of(&set, TK_DIR_OUT);
    for (int m = 0; m < 3; m++) {
        expect_never(&out, NULL, modes[m]);
        expect_never(&out, &k, modes[m]);
    }

    /* The program read a byte: disarmed in calls and both, not in kernel
     * mode (which goes by what the kernel received). */
    struct tk_candidate rd = in;
    rd.last_read_ns = T0 + 1 * SEC;
    struct kview nothing_received = { .sent_at = T0, .bytes_received = 0 };
    expect_never(&rd, &nothing_received, &both);
    expect_never(&rd, &nothing_received, &calls);
    expect_never(&rd, NULL, &both);
    expect_cut_at(&rd, &nothing_received, &kern, T0 + 5 * SEC, TK_REASON_FIRST_BYTE,
                  5 * SEC);

    /* The kernel received a byte the program has not read: disarmed in
     * kernel and both, not in calls mode. */
    struct kview received = { .recv_at = T0 + 1 * SEC, .sent_at = T0, .bytes_received = 1 };
    expect_never(&in, &received, &both);
    expect_never(&in, &received, &kern);
    expect_cut_at(&in, &received, &calls, T0 + 5 * SEC, TK_REASON_FIRST_BYTE, 5 * SEC);
    struct tk_decision d = decide_at(&in, &received, T0 + 2 * SEC, &both);
    assert_int_equal(d.seen.got_byte, 1);
    /* Once seen, remembered: collect goes by it. */
    struct tk_candidate got = in;
    got.seen = d.seen;
    expect_never(&got, NULL, &both);
    expect_never(&got, NULL, &kern);
    expect_cut_at(&got, NULL, &calls, T0 + 5 * SEC, TK_REASON_FIRST_BYTE, 5 * SEC);

    /* Beside idle: the first due wins, the other after it. */
    static const struct tk_settings with_idle = { .idle_ms = 3000, .first_byte_ms = 5000,
                                                  .dry_run = true };
    struct tk_candidate both_limits = cand_of(&with_idle, TK_DIR_IN);
    struct kview silent = { 0 };
    expect_cut_at(&both_limits, &silent, &both, T0 + 3 * SEC, TK_REASON_IDLE, 3 * SEC);
    both_limits.dry_said = BIT(TK_REASON_IDLE);
    expect_cut_at(&both_limits, &silent, &both, T0 + 5 * SEC, TK_REASON_FIRST_BYTE, 5 * SEC);
    both_limits.dry_said = BIT(TK_REASON_FIRST_BYTE);
    both_limits.last_write_ns = T0 + 2 * SEC;
    expect_cut_at(&both_limits, &silent, &both, T0 + 2 * SEC + SLACK + 3 * SEC,
                  TK_REASON_IDLE, 3 * SEC);
}

/* ---- Half-closed ---- */

static void test_decide_half_closed(void **state)
{
    (void)state;
    static const struct tk_settings set = { .half_closed_ms = 2000 };
    struct tk_candidate c = cand_of(&set, TK_DIR_IN);

    /* The program read end-of-file: from then on, no slack (an exact stamp). */
    c.eof_ns = T0 + 10 * SEC;
    for (int m = 0; m < 3; m++)
        expect_cut_at(&c, NULL, modes[m], T0 + 12 * SEC, TK_REASON_HALF_CLOSED, 2 * SEC);
    /* The socket says CLOSE_WAIT: confirmed, same time. */
    struct kview cw = { .state = TCP_CLOSE_WAIT, .recv_at = T0, .sent_at = T0 };
    for (int m = 0; m < 3; m++)
        expect_cut_at(&c, &cw, modes[m], T0 + 12 * SEC, TK_REASON_HALF_CLOSED, 2 * SEC);
    /* Without TCP_INFO, the end-of-file alone (calls and both modes). */
    struct kview none = { .no_info = true };
    expect_cut_at(&c, &none, &both, T0 + 12 * SEC, TK_REASON_HALF_CLOSED, 2 * SEC);
    expect_cut_at(&c, &none, &calls, T0 + 12 * SEC, TK_REASON_HALF_CLOSED, 2 * SEC);

    /* Denied when TCP_INFO says the connection is established: no cut,
     * and a look again after the poll interval (limit / 2). */
    struct kview est = { .recv_at = T0, .sent_at = T0 };
    for (int m = 0; m < 3; m++) {
        for (uint64_t now = T0 + 10 * SEC; now < T0 + 100 * SEC; now += 7 * SEC) {
            struct tk_decision d = decide_at(&c, &est, now, modes[m]);
            if (d.verdict != TK_VERDICT_WAIT)
                fail_msg("%s: half-closed cut while established", mode_name[m]);
            assert_int_equal(d.seen.poll_ns, now + 1 * SEC);
            assert_int_equal(d.next_check_ns, now + 1 * SEC);
            assert_int_equal(d.seen.closewait_ns, 0);
        }
    }

    /* Any byte the program writes restarts the clock. */
    c.last_write_ns = T0 + 11 * SEC;
    expect_cut_at(&c, &cw, &both, T0 + 11 * SEC + SLACK + 2 * SEC, TK_REASON_HALF_CLOSED,
                  2 * SEC);
    expect_cut_at(&c, &cw, &calls, T0 + 11 * SEC + SLACK + 2 * SEC, TK_REASON_HALF_CLOSED,
                  2 * SEC);
    expect_cut_at(&c, NULL, &both, T0 + 11 * SEC + SLACK + 2 * SEC, TK_REASON_HALF_CLOSED,
                  2 * SEC);
    /* In kernel mode, what the kernel sent does (the program's call not). */
    expect_cut_at(&c, &cw, &kern, T0 + 12 * SEC, TK_REASON_HALF_CLOSED, 2 * SEC);
    cw.sent_at = T0 + 13 * SEC;
    expect_cut_at(&c, &cw, &kern, T0 + 13 * SEC + SLACK + 2 * SEC, TK_REASON_HALF_CLOSED,
                  2 * SEC);
    /* And acknowledged progress (a server streaming to a client that
     * half-closed). */
    struct tk_candidate s = cand_of(&set, TK_DIR_IN);
    s.eof_ns = T0 + 10 * SEC;
    s.seen.acked = 100;
    s.seen.progress_ns = T0 + 14 * SEC;
    s.writing = 1;
    for (int m = 0; m < 3; m++)
        expect_cut_at(&s, NULL, modes[m], T0 + 14 * SEC + SLACK + 2 * SEC,
                      TK_REASON_HALF_CLOSED, 2 * SEC);
}

/* The peer's close noticed by the watchdog (CLOSE_WAIT), the program never
 * having read end-of-file: the clock starts when it was noticed. */
static void test_decide_half_closed_close_wait(void **state)
{
    (void)state;
    static const struct tk_settings set = { .half_closed_ms = 2000 };
    for (int m = 0; m < 3; m++) {
        struct tk_candidate c = cand_of(&set, TK_DIR_OUT);
        struct kview cw = { .state = TCP_CLOSE_WAIT, .recv_at = T0 + 1 * SEC,
                            .sent_at = T0 + 1 * SEC };
        uint64_t noticed = T0 + 20 * SEC;
        struct tk_decision d = decide_at(&c, &cw, noticed, modes[m]);
        assert_int_equal(d.verdict, TK_VERDICT_WAIT);
        assert_int_equal(d.seen.closewait_ns, noticed);
        assert_int_equal(d.next_check_ns, noticed + 2 * SEC);
        c.seen = d.seen;
        expect_cut_at(&c, &cw, modes[m], noticed + 2 * SEC, TK_REASON_HALF_CLOSED, 2 * SEC);
        expect_cut_at(&c, NULL, modes[m], noticed + 2 * SEC, TK_REASON_HALF_CLOSED, 2 * SEC);
        /* Seen again later: the first sighting stays. */
        d = decide_at(&c, &cw, noticed + SEC, modes[m]);
        assert_int_equal(d.seen.closewait_ns, noticed);
        /* An end-of-file read earlier than the sighting counts from itself. */
        c.eof_ns = noticed - 500 * MS;
        expect_cut_at(&c, &cw, modes[m], noticed + 1500 * MS, TK_REASON_HALF_CLOSED, 2 * SEC);
    }
}

/* Before the peer's close is noticed: the watchdog polls for it (limit / 2,
 * between 250 ms and 10 s) from the birth or the last look. */
static void test_decide_half_closed_poll(void **state)
{
    (void)state;
    static const struct {
        uint64_t limit_ms, poll_ns;
    } cases[] = {
        { 100, 250 * MS }, { 400, 250 * MS }, { 1000, 500 * MS }, { 2000, 1 * SEC },
        { 8000, 4 * SEC }, { 40000, 10 * SEC }, { 100000, 10 * SEC },
        { 3600000, 10 * SEC },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct tk_settings set = { .half_closed_ms = cases[i].limit_ms };
        struct tk_candidate c = cand_of(&set, TK_DIR_IN);
        /* Never looked: from the birth. */
        struct tk_decision d = decide_at(&c, NULL, T0, &both);
        if (d.verdict != TK_VERDICT_WAIT || d.next_check_ns != T0 + cases[i].poll_ns)
            fail_msg("limit %llu ms: first poll at %+lld ns, expected %llu",
                     (unsigned long long)cases[i].limit_ms,
                     (long long)(d.next_check_ns - T0), (unsigned long long)cases[i].poll_ns);
        /* A look: established, so the next look one interval later. */
        struct kview est = { .recv_at = T0, .sent_at = T0 };
        uint64_t now = T0 + 3 * SEC;
        d = decide_at(&c, &est, now, &both);
        assert_int_equal(d.verdict, TK_VERDICT_WAIT);
        assert_int_equal(d.seen.poll_ns, now + cases[i].poll_ns);
        assert_int_equal(d.next_check_ns, now + cases[i].poll_ns);
        /* Collect goes by the time the last look set. */
        c.seen = d.seen;
        d = decide_at(&c, NULL, now + MS, &both);
        assert_int_equal(d.verdict, TK_VERDICT_WAIT);
        assert_int_equal(d.next_check_ns, now + cases[i].poll_ns);
        /* Another policy due sooner wins. */
        c.set.idle_ms = 1;
        d = decide_at(&c, NULL, T0 + MS / 2, &both);
        assert_int_equal(d.next_check_ns, T0 + SLACK + MS); /* seen.read_ns + slack */
        c.set.idle_ms = 0;
        /* Reported already (dry run): no poll either. */
        c.dry_said = BIT(TK_REASON_HALF_CLOSED);
        c.set.dry_run = true;
        expect_never(&c, NULL, &both);
        expect_never(&c, &est, &both);
    }
}

/* ---- Lifetime ---- */

static void test_decide_lifetime(void **state)
{
    (void)state;
    static const struct tk_settings set = { .lifetime_ms = 60000 };
    struct tk_candidate c = cand_of(&set, TK_DIR_IN);
    /* Jitter 0: exact, whatever the draw and the activity. */
    static const uint16_t draws[] = { 0, 1, 32768, 65535 };
    for (size_t i = 0; i < sizeof(draws) / sizeof(draws[0]); i++) {
        c.jitter = draws[i];
        struct kview silent = { 0 };
        for (int m = 0; m < 3; m++) {
            expect_cut_at(&c, NULL, modes[m], T0 + 60 * SEC, TK_REASON_LIFETIME, 60 * SEC);
            expect_cut_at(&c, &silent, modes[m], T0 + 60 * SEC, TK_REASON_LIFETIME, 60 * SEC);
        }
        c.last_read_ns = c.last_write_ns = T0 + 59 * SEC;
        struct kview busy = { .recv_at = T0 + 59 * SEC, .sent_at = T0 + 59 * SEC,
                              .ack_at = T0 + 59 * SEC, .bytes_acked = 100,
                              .bytes_received = 100, .unacked = 1 };
        for (int m = 0; m < 3; m++)
            expect_cut_at(&c, &busy, modes[m], T0 + 60 * SEC, TK_REASON_LIFETIME, 60 * SEC);
        c.last_read_ns = c.last_write_ns = 0;
    }
    /* Beside an idle limit that comes later. */
    static const struct tk_settings with_idle = { .idle_ms = 50000, .lifetime_ms = 60000 };
    c = cand_of(&with_idle, TK_DIR_OUT);
    struct kview silent = { 0 };
    c.last_read_ns = T0 + 30 * SEC;
    expect_cut_at(&c, &silent, &both, T0 + 60 * SEC, TK_REASON_LIFETIME, 60 * SEC);
    c.last_read_ns = T0 + 5 * SEC;
    expect_cut_at(&c, &silent, &both, T0 + 5 * SEC + SLACK + 50 * SEC, TK_REASON_IDLE,
                  50 * SEC);
}

/* The lifetime is drawn in [L, L x (1 + J/100)]: the ends exactly at the
 * draws 0 and 65535, in between otherwise, never shorter than L. */
static void test_decide_lifetime_jitter(void **state)
{
    (void)state;
    static const unsigned jitters[] = { 1, 20, 50, 100 };
    const uint64_t L = 60 * SEC;
    for (size_t j = 0; j < sizeof(jitters) / sizeof(jitters[0]); j++) {
        struct tk_settings set = { .lifetime_ms = 60000, .lifetime_jitter = jitters[j] };
        struct tk_candidate c = cand_of(&set, TK_DIR_IN);
        struct kview silent = { 0 };
        uint64_t top = L + L / 100 * jitters[j];
        c.jitter = 0;
        expect_cut_at(&c, NULL, &both, T0 + L, TK_REASON_LIFETIME, L);
        expect_cut_at(&c, &silent, &both, T0 + L, TK_REASON_LIFETIME, L);
        c.jitter = 65535;
        expect_cut_at(&c, NULL, &both, T0 + top, TK_REASON_LIFETIME, top);
        expect_cut_at(&c, &silent, &both, T0 + top, TK_REASON_LIFETIME, top);
        /* The middle draw: halfway, to within a nanosecond per step. */
        c.jitter = 32768;
        struct tk_decision d = decide_at(&c, NULL, T0, &both);
        double expect = (double)L * (1.0 + jitters[j] / 100.0 * 32768.0 / 65535.0);
        if (d.next_check_ns <= T0 + L || d.next_check_ns >= T0 + top ||
            (double)(d.next_check_ns - T0) < expect - 2.0 ||
            (double)(d.next_check_ns - T0) > expect + 2.0)
            fail_msg("jitter %u%%, draw 32768: lifetime %llu ns, expected about %.0f",
                     jitters[j], (unsigned long long)(d.next_check_ns - T0), expect);
        expect_cut_at(&c, &silent, &both, d.next_check_ns, TK_REASON_LIFETIME,
                      d.next_check_ns - T0);
        /* Every draw: within the range, and the larger the draw the later. */
        uint64_t prev = 0;
        for (uint32_t draw = 0; draw <= 65535; draw += 97) {
            c.jitter = (uint16_t)draw;
            d = decide_at(&c, NULL, T0, &both);
            uint64_t life = d.next_check_ns - T0;
            if (life < L || life > top || life < prev)
                fail_msg("jitter %u%%, draw %u: lifetime %llu ns out of [%llu, %llu] or "
                         "before the previous draw's", jitters[j], draw,
                         (unsigned long long)life, (unsigned long long)L,
                         (unsigned long long)top);
            prev = life;
        }
    }
    /* The largest limit and jitter: no overflow. */
    struct tk_settings huge = { .lifetime_ms = TK_DURATION_MAX_MS, .lifetime_jitter = 100 };
    struct tk_candidate c = cand_of(&huge, TK_DIR_IN);
    c.jitter = 65535;
    struct tk_decision d = decide_at(&c, NULL, T0, &both);
    assert_int_equal(d.next_check_ns, T0 + 2 * TK_DURATION_MAX_MS * MS);
    c.jitter = 0;
    d = decide_at(&c, NULL, T0, &both);
    assert_int_equal(d.next_check_ns, T0 + TK_DURATION_MAX_MS * MS);
}

/* Each connection's draw is its own, made once when it is watched. */
static void test_watch_draws_jitter_once(void **state)
{
    (void)state;
    static const struct tk_settings set = { .lifetime_ms = 100000, .lifetime_jitter = 50 };
    enum { N = 256 };
    static uint16_t draws[N];
    unsigned low = 0, high = 0;
    for (int i = 0; i < N; i++) {
        struct tk_conn *c = conn(10 + i, 5000 + (uint64_t)i, T0 + (uint64_t)i * MS, &set);
        draws[i] = c->jitter;
        low += c->jitter < 32768;
        high += c->jitter >= 32768;
        /* Queued at its own lifetime. */
        struct tk_candidate cand = cand_of(&set, TK_DIR_OUT);
        cand.born_ns = c->born_ns;
        cand.jitter = c->jitter;
        assert_int_equal(c->check_at_ns, decide_at(&cand, NULL, c->born_ns, &both).next_check_ns);
        assert_true(c->check_at_ns >= c->born_ns + 100 * SEC);
        assert_true(c->check_at_ns <= c->born_ns + 150 * SEC);
    }
    /* Spread over the range, not all alike. */
    unsigned distinct = 0;
    for (int i = 0; i < N; i++) {
        bool dup = false;
        for (int j = 0; j < i && !dup; j++)
            dup = draws[j] == draws[i];
        distinct += !dup;
    }
    assert_true(distinct > N * 9 / 10);
    assert_true(low > N / 4 && high > N / 4);
    /* A rules change keeps the draw. */
    struct tk_conn *c = find(5000);
    lock();
    tk_schedule_rewatch(c, T0 + SEC);
    unlock();
    assert_int_equal(c->jitter, draws[0]);
}

/* ---- What the socket's state says ---- */

static void test_decide_stale(void **state)
{
    (void)state;
    struct tk_candidate c = cand_of(&idle30, TK_DIR_IN);
    uint64_t now = T0 + 100 * SEC;
    struct kview k = { .recv_at = T0, .sent_at = T0 };
    struct tk_observation o = observe_at(&k, now);
    o.same_socket = false;
    for (int m = 0; m < 3; m++) {
        assert_int_equal(tk_schedule_decide(&c, &o, now, modes[m]).verdict, TK_VERDICT_STALE);
        o.have_info = false;
        assert_int_equal(tk_schedule_decide(&c, &o, now, modes[m]).verdict, TK_VERDICT_STALE);
        o.have_info = true;
    }
    o.tcp_state = TCP_CLOSE;
    c.last_read_ns = now;
    assert_int_equal(tk_schedule_decide(&c, &o, now, &both).verdict, TK_VERDICT_STALE);
}

static void test_decide_handshake(void **state)
{
    (void)state;
    uint64_t now = T0 + 100 * SEC;
    static const uint8_t states[] = { TCP_SYN_SENT, TCP_SYN_RECV };
    static const struct tk_settings fast = { .idle_ms = 30000, .first_byte_ms = 20 };
    for (int i = 0; i < 2; i++) {
        for (int m = 0; m < 3; m++) {
            struct tk_candidate c = cand_of(&idle30, TK_DIR_IN);
            struct kview k = { .state = states[i], .recv_at = T0, .sent_at = T0 };
            struct tk_decision d = decide_at(&c, &k, now, modes[m]);
            assert_int_equal(d.verdict, TK_VERDICT_WAIT);
            assert_true(d.next_check_ns > now);
            assert_true(d.next_check_ns <= now + 100 * MS); /* soon */
            /* With a tiny limit, no later than the smallest limit. */
            c = cand_of(&fast, TK_DIR_IN);
            d = decide_at(&c, &k, now, modes[m]);
            assert_int_equal(d.verdict, TK_VERDICT_WAIT);
            assert_true(d.next_check_ns > now);
            assert_true(d.next_check_ns <= now + 20 * MS);
        }
    }
}

static void test_decide_closed_states(void **state)
{
    (void)state;
    uint64_t now = T0 + 100 * SEC;
    static const uint8_t forget[] = { TCP_CLOSE, TCP_TIME_WAIT, TCP_LAST_ACK, TCP_CLOSING,
                                      TCP_LISTEN };
    static const struct tk_settings all = { .idle_ms = 30000, .read_ms = 1000,
                                            .write_ms = 1000, .first_byte_ms = 1000,
                                            .half_closed_ms = 1000, .lifetime_ms = 1000 };
    struct tk_candidate c = cand_of(&all, TK_DIR_IN);
    c.eof_ns = T0 + SEC;
    for (size_t i = 0; i < sizeof(forget); i++) {
        for (int m = 0; m < 3; m++) {
            struct kview k = { .state = forget[i], .recv_at = T0, .sent_at = T0 };
            if (decide_at(&c, &k, now, modes[m]).verdict != TK_VERDICT_FORGET)
                fail_msg("state %u not forgotten (%s)", forget[i], mode_name[m]);
            k.recv_at = k.sent_at = now; /* even with recent data */
            if (decide_at(&c, &k, now, modes[m]).verdict != TK_VERDICT_FORGET)
                fail_msg("state %u (recent) not forgotten", forget[i]);
        }
    }
    /* Half-closed connections can still hang for ever: idle cuts them. */
    static const uint8_t cut[] = { TCP_CLOSE_WAIT, TCP_FIN_WAIT1, TCP_FIN_WAIT2 };
    c = cand_of(&idle30, TK_DIR_IN);
    for (size_t i = 0; i < sizeof(cut); i++) {
        struct kview k = { .state = cut[i], .recv_at = now - 90 * SEC, .sent_at = now - 90 * SEC };
        c.last_read_ns = now - 50 * SEC;
        struct tk_decision d = decide_at(&c, &k, now, &both);
        if (d.verdict != TK_VERDICT_CUT || d.reason != TK_REASON_IDLE)
            fail_msg("state %u idle not cut (verdict %d)", cut[i], d.verdict);
        assert_int_equal(d.held_ns, 50 * SEC - SLACK);
        k.recv_at = now - 100 * MS;
        d = decide_at(&c, &k, now, &both);
        assert_int_equal(d.verdict, TK_VERDICT_WAIT);
    }
}

/* ---- Properties over random candidates and observations ---- */

static uint64_t rnd_time(uint64_t from, uint64_t to) /* whole ms in [from, to] */
{
    return from + (rnd() % ((to - from) / MS + 1)) * MS;
}

static uint64_t rnd_limit_ms(void)
{
    static const uint64_t choices[] = { 1, 50, 250, 1000, 5000, 30000, 100000 };
    return rnd() % 2 ? choices[rnd() % (sizeof(choices) / sizeof(choices[0]))] : 0;
}

static uint64_t poll_interval(uint64_t limit_ms)
{
    uint64_t p = limit_ms * MS / 2;
    return p < 250 * MS ? 250 * MS : p > 10 * SEC ? 10 * SEC : p;
}

static uint64_t min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

/* What may hold for reason r, from the inputs alone: when its condition
 * truly began (UINT64_MAX: not applicable) and its limit (for lifetime,
 * the shortest and longest it may be drawn). */
struct ref {
    uint64_t since[TK_REASONS];
    uint64_t limit_min[TK_REASONS], limit_max[TK_REASONS];
};

static struct ref reference(const struct tk_candidate *c, const struct kview *k,
                            const struct tk_seen *s, const struct tk_policy *p)
{
    struct ref r;
    bool calls_count = p->activity != TK_ACTIVITY_KERNEL;
    bool kernel_counts = p->activity != TK_ACTIVITY_CALLS;
    uint64_t born = c->born_ns, rd = born, wr = born;
    if (calls_count) {
        rd = max_u64(rd, c->last_read_ns);
        wr = max_u64(wr, c->last_write_ns);
    }
    if (kernel_counts) {
        rd = max_u64(rd, s->read_ns);
        wr = max_u64(wr, s->write_ns);
    }
    if (p->activity != TK_ACTIVITY_CALLS || c->writing)
        wr = max_u64(wr, s->progress_ns);
    const struct tk_settings *set = &c->set;
    const uint64_t limits[TK_REASONS] = { set->idle_ms, set->read_ms, set->write_ms,
                                          set->first_byte_ms, set->half_closed_ms,
                                          set->lifetime_ms };
    for (int i = 0; i < TK_REASONS; i++) {
        r.since[i] = UINT64_MAX;
        r.limit_min[i] = r.limit_max[i] = limits[i] * MS;
    }
    r.limit_max[TK_REASON_LIFETIME] += limits[TK_REASON_LIFETIME] * MS / 100 *
                                       set->lifetime_jitter;
    r.since[TK_REASON_IDLE] = max_u64(rd, wr);
    r.since[TK_REASON_READ_IDLE] = rd;
    r.since[TK_REASON_WRITE_IDLE] = wr;
    bool got = (calls_count && c->last_read_ns) || (kernel_counts && s->got_byte);
    if (c->direction == TK_DIR_IN && !got)
        r.since[TK_REASON_FIRST_BYTE] = born;
    uint64_t h = s->closewait_ns;
    if (c->eof_ns && (!h || c->eof_ns < h))
        h = c->eof_ns;
    if (!k->no_info && k->state != TCP_CLOSE_WAIT)
        h = 0; /* the socket's state denies it */
    if (h)
        r.since[TK_REASON_HALF_CLOSED] = max_u64(h, wr);
    r.since[TK_REASON_LIFETIME] = born;
    for (int i = 0; i < TK_REASONS; i++)
        if (!limits[i] || (c->set.dry_run && (c->dry_said & BIT(i))))
            r.since[i] = UINT64_MAX;
    return r;
}

/* What a failing random case was, to reproduce it. */
static void dump_case(const struct tk_candidate *c, const struct kview *k, uint64_t now,
                      const struct tk_policy *p)
{
#define REL(t) ((t) ? (long long)((t) - T0) / (long long)MS : -1LL)
    print_message("case: now %lld ms, mode %s, dir %u, set idle %llu read %llu write %llu "
                  "first %llu half %llu life %llu/%u%%, jitter %u, dry_said %#x, writing %u\n",
                  REL(now), mode_name[p->activity], c->direction,
                  (unsigned long long)c->set.idle_ms, (unsigned long long)c->set.read_ms,
                  (unsigned long long)c->set.write_ms, (unsigned long long)c->set.first_byte_ms,
                  (unsigned long long)c->set.half_closed_ms,
                  (unsigned long long)c->set.lifetime_ms, c->set.lifetime_jitter, c->jitter,
                  c->dry_said, c->writing);
    print_message("  stamps (ms after T0, -1 none): read %lld write %lld eof %lld; seen read "
                  "%lld write %lld progress %lld closewait %lld poll %lld got %u\n",
                  REL(c->last_read_ns), REL(c->last_write_ns), REL(c->eof_ns),
                  REL(c->seen.read_ns), REL(c->seen.write_ns), REL(c->seen.progress_ns),
                  REL(c->seen.closewait_ns), REL(c->seen.poll_ns), c->seen.got_byte);
    print_message("  kernel: info %d state %u recv %lld sent %lld ack %lld acked %llu "
                  "received %llu unacked %u rtt %u us\n", !k->no_info, k->state,
                  REL(k->recv_at), REL(k->sent_at), REL(k->ack_at),
                  (unsigned long long)k->bytes_acked, (unsigned long long)k->bytes_received,
                  k->unacked, k->rtt_us);
#undef REL
}

static const struct tk_candidate *cur_cand;
static const struct kview *cur_kview;
static uint64_t cur_now;
static const struct tk_policy *cur_policy;
#define case_fail(...) \
    do { \
        dump_case(cur_cand, cur_kview, cur_now, cur_policy); \
        fail_msg(__VA_ARGS__); \
    } while (0)

static void check_learned(const struct tk_candidate *c, const struct kview *k, uint64_t now,
                          const struct tk_seen *s, int iter)
{
    const struct tk_seen *was = &c->seen;
    bool info = !k->no_info;
    if (s->read_ns != max_u64(was->read_ns, info ? k->recv_at : 0) ||
        s->write_ns != max_u64(was->write_ns, info ? k->sent_at : 0))
        case_fail("iter %d: learned data times wrong", iter);
    if (s->got_byte != (was->got_byte || (info && k->bytes_received > 0)))
        case_fail("iter %d: learned got_byte %u", iter, s->got_byte);
    uint64_t cw = was->closewait_ns ? was->closewait_ns
                                    : info && k->state == TCP_CLOSE_WAIT ? now : 0;
    if (s->closewait_ns != cw)
        case_fail("iter %d: closewait %llu, expected %llu", iter,
                 (unsigned long long)s->closewait_ns, (unsigned long long)cw);
    if (s->acked != max_u64(was->acked, info ? k->bytes_acked : 0))
        case_fail("iter %d: acked %llu", iter, (unsigned long long)s->acked);
    /* Progress only moves forward, and never past the last ACK. */
    if (s->progress_ns < was->progress_ns)
        case_fail("iter %d: progress went back", iter);
    if (s->progress_ns != was->progress_ns &&
        (!info || k->bytes_acked <= was->acked || s->progress_ns > k->ack_at))
        case_fail("iter %d: progress %llu without a new ACK before it", iter,
                 (unsigned long long)s->progress_ns);
}

/* Over random candidates, settings, modes and observations: a cut is never
 * before its own limit, comes once any limit + the slack has passed, says
 * how long its condition held; a wait is for a moment after now and no
 * later than the earliest limit + slack; collect's decision (no kernel) is
 * never later than the one with the kernel. */
static void test_decide_property_random(void **state)
{
    (void)state;
    rng_state = 0x9e3779b97f4a7c15ULL;
    unsigned cuts[TK_REASONS] = { 0 }, waits = 0;
    static const uint8_t states[] = { TCP_ESTABLISHED, TCP_CLOSE_WAIT, TCP_FIN_WAIT1,
                                      TCP_FIN_WAIT2 };
    static const unsigned jitters[] = { 0, 10, 100 };
    for (int iter = 0; iter < 300000; iter++) {
        struct tk_settings set = { 0 };
        set.idle_ms = rnd_limit_ms();
        set.read_ms = rnd_limit_ms();
        set.write_ms = rnd_limit_ms();
        set.first_byte_ms = rnd_limit_ms();
        set.half_closed_ms = rnd_limit_ms();
        set.lifetime_ms = rnd_limit_ms();
        if (set.lifetime_ms)
            set.lifetime_jitter = jitters[rnd() % 3];
        const struct tk_policy *p = modes[rnd() % 3];
        struct tk_candidate c = cand_of(&set, rnd() % 2 ? TK_DIR_IN : TK_DIR_OUT);
        uint64_t now = T0 + (rnd() % 200000) * MS;
        c.jitter = (uint16_t)rnd();
        c.writing = rnd() % 2;
        c.last_read_ns = rnd() % 3 ? rnd_time(T0, now) : 0;
        c.last_write_ns = rnd() % 3 ? rnd_time(T0, now) : 0;
        c.eof_ns = rnd() % 4 == 0 ? rnd_time(T0, now) : 0;
        c.seen.read_ns = rnd() % 2 ? rnd_time(T0, now) : 0;
        c.seen.write_ns = rnd() % 2 ? rnd_time(T0, now) : 0;
        c.seen.got_byte = rnd() % 4 == 0;
        c.seen.acked = 1000;
        c.seen.progress_ns = rnd() % 3 == 0 ? rnd_time(T0, now) : 0;
        if (set.half_closed_ms && rnd() % 2) /* a look before now set it */
            c.seen.poll_ns = rnd_time(T0, now) + poll_interval(set.half_closed_ms);
        if (rnd() % 4 == 0) {
            c.dry_said = (uint8_t)(rnd() & 0x3f);
            c.set.dry_run = true;
        }
        struct kview k = { 0 };
        k.no_info = rnd() % 6 == 0;
        k.state = states[rnd() % 4];
        /* Once in CLOSE_WAIT, a socket never shows an open peer again. */
        if ((k.no_info || k.state == TCP_CLOSE_WAIT) && rnd() % 3 == 0)
            c.seen.closewait_ns = rnd_time(T0, now);
        k.recv_at = rnd() % 4 ? rnd_time(T0, now) : 0;
        k.sent_at = rnd() % 4 ? rnd_time(T0, now) : 0;
        k.bytes_received = rnd() % 3 ? 1 + rnd() % 1000 : 0;
        k.bytes_acked = 1000;
        k.ack_at = rnd() % 2 ? rnd_time(T0, now) : 0;
        if (rnd() % 3 == 0) {
            k.bytes_acked += 1 + rnd() % 5000;
            k.ack_at = rnd_time(T0, now);
            k.unacked = (uint32_t)(rnd() % 3);
            k.rtt_us = (uint32_t)(rnd() % 100000);
        }

        cur_cand = &c;
        cur_kview = &k;
        cur_now = now;
        cur_policy = p;
        struct tk_decision d = decide_at(&c, &k, now, p);
        bool any = set.idle_ms || set.read_ms || set.write_ms || set.first_byte_ms ||
                   set.half_closed_ms || set.lifetime_ms;
        if (!any) {
            if (d.verdict != TK_VERDICT_WAIT || d.next_check_ns != NEVER)
                case_fail("iter %d: no policy, yet %s", iter, verdict_name(d.verdict));
            continue;
        }
        if (k.no_info && p->activity == TK_ACTIVITY_KERNEL) {
            uint64_t smallest = UINT64_MAX;
            const uint64_t l[] = { set.idle_ms, set.read_ms, set.write_ms,
                                   set.first_byte_ms, set.half_closed_ms, set.lifetime_ms };
            for (int i = 0; i < 6; i++)
                if (l[i])
                    smallest = min_u64(smallest, l[i] * MS);
            if (d.verdict != TK_VERDICT_WAIT || d.next_check_ns != now + smallest)
                case_fail("iter %d: kernel mode without TCP_INFO: %s, next %+lld", iter,
                         verdict_name(d.verdict), (long long)(d.next_check_ns - now));
            continue;
        }
        check_learned(&c, &k, now, &d.seen, iter);
        struct ref r = reference(&c, &k, &d.seen, p);
        uint64_t must = UINT64_MAX; /* by then some cut is overdue */
        for (int i = 0; i < TK_REASONS; i++) {
            if (r.since[i] == UINT64_MAX)
                continue;
            uint64_t bound = r.since[i] + r.limit_max[i] + (i == TK_REASON_LIFETIME ? 0 : SLACK);
            must = min_u64(must, bound);
        }
        if (d.verdict == TK_VERDICT_CUT) {
            enum tk_reason why = d.reason;
            if ((unsigned)why >= TK_REASONS || r.since[why] == UINT64_MAX)
                case_fail("iter %d: cut for %d, which does not apply", iter, why);
            if (now < r.since[why] + r.limit_min[why])
                case_fail("iter %d: %s cut %llu ns before its limit (mode %s)", iter,
                         tk_reason_token[why],
                         (unsigned long long)(r.since[why] + r.limit_min[why] - now),
                         mode_name[p->activity]);
            if (d.held_ns < r.limit_min[why] || d.held_ns > now - r.since[why])
                case_fail("iter %d: %s held %llu ns: limit %llu, truly %llu", iter,
                         tk_reason_token[why], (unsigned long long)d.held_ns,
                         (unsigned long long)r.limit_min[why],
                         (unsigned long long)(now - r.since[why]));
            cuts[why]++;
        } else if (d.verdict == TK_VERDICT_WAIT) {
            waits++;
            if (now >= must)
                case_fail("iter %d: not cut %llu ns after a limit + slack (mode %s)", iter,
                         (unsigned long long)(now - must), mode_name[p->activity]);
            if (d.next_check_ns <= now || d.next_check_ns > must)
                case_fail("iter %d: look again at now %+lld ns, a limit is due at now %+lld",
                         iter, (long long)(d.next_check_ns - now), (long long)(must - now));
        } else {
            case_fail("iter %d: %s for an open connection", iter, verdict_name(d.verdict));
        }
        if (null_is_lower_bound(&c, &k, p)) {
            struct tk_decision n = decide_at(&c, NULL, now, p);
            uint64_t by = d.verdict == TK_VERDICT_CUT ? now : d.next_check_ns;
            if (n.verdict != TK_VERDICT_WAIT && n.verdict != TK_VERDICT_LOOK)
                case_fail("iter %d: %s without the kernel", iter, verdict_name(n.verdict));
            if (n.verdict == TK_VERDICT_WAIT && n.next_check_ns > by)
                case_fail("iter %d: collect's decision waits until now %+lld ns, the "
                         "kernel's says now %+lld ns", iter,
                         (long long)(n.next_check_ns - now), (long long)(by - now));
        }
    }
    for (int i = 0; i < TK_REASONS; i++)
        if (cuts[i] < 1000)
            fail_msg("only %u cuts for %s: the random cases miss it", cuts[i],
                     tk_reason_token[i]);
    assert_true(waits > 10000);
}

/* ---------------------------------------------------------------------------
 * The whole loop on a fake clock: connections active at random moments,
 * some seen through the program's calls, some only by the kernel, some
 * closed along the way; a simulated watchdog wakes when tk_schedule_next()
 * says. Every connection left open is cut exactly once: for idle, no
 * earlier than its last activity + the limit and no later than that + the
 * slack + the kernel's 1 ms granularity; for lifetime, exactly at its own
 * drawn lifetime; and never after another reason was due. */

#define SIM_CONNS 300
#define SIM_EVENTS 8

struct sim_conn {
    int fd;
    uint64_t cookie;
    uint64_t events[SIM_EVENTS]; /* activity times, ascending; 0 = none */
    bool kernel_only[SIM_EVENTS];
    bool is_write[SIM_EVENTS];
    unsigned next_event;
    uint64_t close_at; /* 0 = stays open */
    bool closed;
    uint64_t last_kernel;
    uint64_t cut_at;
    enum tk_reason reason;
    unsigned cuts;
    struct tk_conn *c;
};

static struct sim_conn sim[SIM_CONNS];
static const struct tk_settings sim_set = { .idle_ms = 2000, .lifetime_ms = 4000,
                                            .lifetime_jitter = 25 };

static void test_simulated_watchdog(void **state)
{
    (void)state;
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
            s->is_write[j] = rnd() % 2;
        }
        if (rnd() % 8 == 0)
            s->close_at = T0 + rnd() % (10 * SEC);
        s->last_kernel = T0;
        s->c = conn(s->fd, s->cookie, T0, &sim_set);
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
                s->last_kernel = now;
                if (!s->kernel_only[j]) /* the hot path's store, no lock */
                    atomic_store_explicit(s->is_write[j] ? &s->c->last_write : &s->c->last_read,
                                          now, memory_order_relaxed);
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
        while ((n = collect(now, &both, batch, 16)) > 0) {
            for (unsigned j = 0; j < n; j++) {
                int i = (int)(batch[j].cookie - 70000);
                assert_true(i >= 0 && i < SIM_CONNS);
                struct sim_conn *s = &sim[i];
                assert_int_equal(batch[j].fd, s->fd);
                struct tk_observation o;
                memset(&o, 0, sizeof(o));
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
                    o.last_ack_recv_ms = o.last_data_sent_ms;
                }
                tk_schedule_refresh(&batch[j]);
                decisions[j] = tk_schedule_decide(&batch[j], &o, now, &both);
                if (decisions[j].verdict == TK_VERDICT_CUT) {
                    s->cuts++;
                    s->cut_at = now;
                    s->reason = decisions[j].reason;
                }
            }
            lock();
            for (unsigned j = 0; j < n; j++)
                tk_schedule_settle(&batch[j], &decisions[j], now);
            unlock();
        }
    }
    assert_int_equal(next_check(), UINT64_MAX);
    unsigned cut[TK_REASONS] = { 0 };
    const uint64_t idle = sim_set.idle_ms * MS;
    for (int i = 0; i < SIM_CONNS; i++) {
        struct sim_conn *s = &sim[i];
        if (s->closed && !s->cuts)
            continue;
        if (s->cuts != 1)
            fail_msg("connection %d cut %u times", i, s->cuts);
        cut[s->reason]++;
        /* The last activity before the cut; without TCP_INFO only the
         * program's calls count. */
        uint64_t last = T0;
        for (unsigned j = 0; j < SIM_EVENTS && s->events[j] && s->events[j] <= s->cut_at; j++)
            if (i % 5 != 0 || !s->kernel_only[j])
                last = s->events[j];
        struct tk_candidate life = cand_of(&sim_set, TK_DIR_OUT);
        life.set.idle_ms = 0;
        life.jitter = s->c->jitter;
        uint64_t life_due = decide_at(&life, NULL, T0, &both).next_check_ns;
        uint64_t idle_late = last + idle + SLACK + 1 * MS;
        if (s->reason == TK_REASON_IDLE) {
            if (s->cut_at < last + idle)
                fail_msg("connection %d cut %lld ns before its idle limit", i,
                         (long long)(last + idle - s->cut_at));
            if (s->cut_at > idle_late)
                fail_msg("connection %d cut %llu ns after its idle limit", i,
                         (unsigned long long)(s->cut_at - last - idle));
            if (s->cut_at > life_due)
                fail_msg("connection %d cut for idle after its lifetime", i);
        } else if (s->reason == TK_REASON_LIFETIME) {
            if (s->cut_at != life_due)
                fail_msg("connection %d cut for lifetime at %+lld ns from its lifetime", i,
                         (long long)(s->cut_at - life_due));
            if (life_due < T0 + 4 * SEC || life_due > T0 + 5 * SEC)
                fail_msg("connection %d: lifetime %llu ns", i,
                         (unsigned long long)(life_due - T0));
            if (s->cut_at > idle_late)
                fail_msg("connection %d cut for lifetime after it was idle", i);
        } else {
            fail_msg("connection %d cut for %s", i, tk_reason_token[s->reason]);
        }
    }
    assert_true(cut[TK_REASON_IDLE] > SIM_CONNS / 4);
    assert_true(cut[TK_REASON_LIFETIME] > 10);
}

/* ---------------------------------------------------------------------------
 * Found while writing these tests. The half-closed poll was fixed in
 * schedule.c meanwhile (TK_VERDICT_LOOK); the others fail until it is. */

/* Runs fn in a forked child (a copy of the table and queue), for a call
 * that might never return: waits at most timeout_ms, then kills it. Returns
 * the child's exit status, or -1 if it had to be killed. */
static int run_bounded(int (*fn)(void), unsigned timeout_ms)
{
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(fn());
    int status = 0;
    for (unsigned waited = 0; waited < timeout_ms; waited += 10) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        struct timespec ts = { 0, 10 * 1000000L };
        nanosleep(&ts, NULL);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return -1;
}

static const struct tk_settings half_closed_only = { .half_closed_ms = 2000 };

/* In the child: collect at the first poll, a look (established), settle,
 * collect at the next poll. Exit 0 if both polls were handed out. */
static int poll_twice(void)
{
    struct tk_candidate out[2];
    sigset_t old;
    uint64_t poll = T0 + 1 * SEC;
    tk_table_lock(&old);
    unsigned n = tk_schedule_collect(poll, &both, out, 2);
    tk_table_unlock(&old);
    if (n != 1 || out[0].cookie != 1201)
        return 10 + (int)n;
    struct kview est = { .recv_at = T0, .sent_at = T0 };
    struct tk_observation o = observe_at(&est, poll);
    struct tk_decision d = tk_schedule_decide(&out[0], &o, poll, &both);
    if (d.verdict != TK_VERDICT_WAIT || d.next_check_ns != poll + 1 * SEC)
        return 20;
    tk_table_lock(&old);
    tk_schedule_settle(&out[0], &d, poll);
    n = tk_schedule_collect(poll + 1 * SEC, &both, out, 2);
    tk_table_unlock(&old);
    return n == 1 ? 0 : 30 + (int)n;
}

/* TCPKEEP_HALF_CLOSED_TIMEOUT: the watchdog polls for the peer's close.
 * When the poll is due, collect must hand the connection out so that the
 * kernel is asked. (Once, decide without an observation answered WAIT with
 * the passed poll time: collect requeued it at that time and took it first
 * again, for ever, holding the table lock with every signal blocked.) Run
 * in a child, so that a regression fails instead of hanging. */
static void test_collect_hands_out_due_half_closed_poll(void **state)
{
    (void)state;
    struct tk_conn *c = conn_full(5, 1201, T0, &half_closed_only, TK_DIR_IN, NULL);
    assert_true(queued(c));
    assert_int_equal(c->check_at_ns, T0 + 1 * SEC);
    int rc = run_bounded(poll_twice, 5000);
    if (rc == -1)
        fail_msg("tk_schedule_collect at the half-closed poll time did not return within "
                 "5 s: a WAIT whose next_check_ns has passed is requeued at that time "
                 "and collected again, for ever");
    if (rc != 0)
        fail_msg("the half-closed poll: child exit %d (1x: first collect gave x, 20: the "
                 "look, 3x: second collect gave x)", rc);
}

/* A rules file turned dry-run off (TCPKEEP_CONFIG, dry-run=off): the
 * reasons reported while it was on must cut now. dry_said is kept in the
 * record across the change, and tk_schedule_decide skips those reasons
 * whatever set.dry_run says, so such a connection is never cut for them. */
static void test_decide_dry_said_ignored_without_dry_run(void **state)
{
    (void)state;
    static const struct tk_settings set = { .idle_ms = 30000, .lifetime_ms = 600000 };
    struct tk_candidate c = cand_of(&set, TK_DIR_IN);
    c.dry_said = BIT(TK_REASON_IDLE) | BIT(TK_REASON_LIFETIME); /* said while it was on */
    c.set.dry_run = false;
    struct kview silent = { 0 };
    struct tk_decision d = decide_at(&c, &silent, T0 + 40 * SEC, &both);
    if (d.verdict != TK_VERDICT_CUT || d.reason != TK_REASON_IDLE)
        fail_msg("dry run off, idle 40 s > 30 s, a dry-run report of idle remembered: %s "
                 "(next %+lld ns); expected CUT idle", verdict_name(d.verdict),
                 (long long)(d.next_check_ns - (T0 + 40 * SEC)));
    /* Collect hands it out. */
    d = decide_at(&c, NULL, T0 + 40 * SEC, &both);
    assert_int_equal(d.verdict, TK_VERDICT_LOOK);
    c.last_read_ns = T0 + 599 * SEC;
    d = decide_at(&c, &silent, T0 + 600 * SEC, &both);
    assert_int_equal(d.verdict, TK_VERDICT_CUT);
    assert_int_equal(d.reason, TK_REASON_LIFETIME);
}

/* The program's own shutdown(SHUT_RD) makes its reads return end-of-file
 * while the peer's side is open: the socket's state (ESTABLISHED) denies it,
 * and the watchdog polls. When the peer does close later, the clock must
 * start then (issue 5: "from the moment the shim notices that the peer has
 * closed its side"), not at the denied end-of-file: tk_schedule_decide takes
 * h = the earlier of closewait_ns and eof_ns, so the cut comes 11 s after
 * the close with a 100 s limit. Collect (no observation) likewise goes by
 * the denied end-of-file and stops polling until eof + limit. */
static void test_decide_half_closed_denied_eof(void **state)
{
    (void)state;
    static const struct tk_settings set = { .half_closed_ms = 100000 };
    struct tk_candidate c = cand_of(&set, TK_DIR_IN);
    c.eof_ns = T0 + 1 * SEC; /* shutdown(fd, SHUT_RD), then a read */
    struct kview est = { .recv_at = T0, .sent_at = T0 };
    struct tk_decision d = decide_at(&c, &est, T0 + 50 * SEC, &both);
    assert_int_equal(d.verdict, TK_VERDICT_WAIT);
    assert_int_equal(d.next_check_ns, T0 + 60 * SEC); /* polls */
    c.seen = d.seen;
    /* The peer closes at T0 + 85 s; the next look sees it at T0 + 90 s. */
    struct kview cw = { .state = TCP_CLOSE_WAIT, .recv_at = T0, .sent_at = T0 };
    uint64_t noticed = T0 + 90 * SEC;
    d = decide_at(&c, &cw, noticed, &both);
    if (d.verdict != TK_VERDICT_WAIT || d.next_check_ns < noticed + 100 * SEC)
        fail_msg("the peer's close noticed at +90 s, limit 100 s: %s, due at +%llu ms "
                 "(counted from the end-of-file the socket denied at +1 s)",
                 verdict_name(d.verdict), (unsigned long long)((d.next_check_ns - T0) / MS));
    c.seen = d.seen;
    d = decide_at(&c, &cw, T0 + 101 * SEC, &both);
    if (d.verdict == TK_VERDICT_CUT)
        fail_msg("cut as half-closed 11 s after the peer's close was noticed, limit 100 s");
    /* Collect keeps polling after a denial. */
    c = cand_of(&set, TK_DIR_IN);
    c.eof_ns = T0 + 1 * SEC;
    d = decide_at(&c, &est, T0 + 50 * SEC, &both);
    c.seen = d.seen;
    d = decide_at(&c, NULL, T0 + 50 * SEC, &both);
    if (d.verdict != TK_VERDICT_WAIT || d.next_check_ns > T0 + 60 * SEC)
        fail_msg("collect after a denied end-of-file: %s, next at +%llu ms: the poll at "
                 "+60000 ms is skipped", verdict_name(d.verdict),
                 (unsigned long long)((d.next_check_ns - T0) / MS));
}

/* A connection the program made shows tcpi_bytes_acked = 1 from the
 * handshake on (its SYN; an accepted one shows 0). That is not outgoing
 * data acknowledged, yet the first look counts it as progress: with the
 * peer sending (each of its segments an ACK, so tcpi_last_ack_recv is
 * recent) and nothing in flight, the progress is estimated at the
 * handshake + rtt + the ACK delay, and write-idle and idle (both and kernel
 * modes; calls mode too during a write call) come that much late. */
static void test_decide_syn_is_not_progress(void **state)
{
    (void)state;
    static const struct tk_settings set = { .write_ms = 10000 };
    struct tk_candidate c = cand_of(&set, TK_DIR_OUT);
    /* The handshake at T0 (tcpi_last_data_sent counts from it); the peer's
     * data keeps arriving; the program never writes. */
    uint64_t now = T0 + 10 * SEC + SLACK;
    struct kview k = { .recv_at = now - MS, .sent_at = T0, .ack_at = now - MS,
                       .bytes_acked = 1, .bytes_received = 5000, .unacked = 0,
                       .rtt_us = 50 };
    for (int m = 0; m < 3; m++) {
        struct tk_decision d = decide_at(&c, &k, now, modes[m]);
        if (d.seen.progress_ns)
            fail_msg("%s: the SYN's acknowledgement taken for progress at +%llu ms",
                     mode_name[m], (unsigned long long)((d.seen.progress_ns - T0) / MS));
        if (d.verdict != TK_VERDICT_CUT || d.reason != TK_REASON_WRITE_IDLE)
            fail_msg("%s: nothing written for 10 s + slack, yet %s", mode_name[m],
                     verdict_name(d.verdict));
    }
    /* The first data byte acknowledged (2: the SYN and it) is progress. */
    k.bytes_acked = 2;
    k.sent_at = T0 + 5 * SEC;
    k.ack_at = T0 + 5 * SEC + MS;
    struct tk_decision d = decide_at(&c, &k, now, &both);
    assert_int_equal(d.seen.progress_ns, T0 + 5 * SEC + MS);
    assert_int_equal(d.verdict, TK_VERDICT_WAIT);
}

/* LOOK (collect's "ask the kernel") settled as such: looked at again now. */
static void test_settle_look(void **state)
{
    (void)state;
    struct tk_candidate out[2];
    struct tk_conn *c = conn(5, 1401, T0, &idle30);
    uint64_t due = T0 + 30 * SEC;
    assert_int_equal(collect(due, &both, out, 2), 1);
    struct tk_decision d = decide_at(&out[0], NULL, due, &both);
    assert_int_equal(d.verdict, TK_VERDICT_LOOK);
    d.seen.read_ns = T0 + 1 * SEC;
    settle_d(&out[0], &d, due + MS);
    assert_int_equal(c->checking, 0);
    assert_int_equal(c->kind, TK_KIND_CONN);
    assert_true(queued(c));
    assert_int_equal(c->check_at_ns, due + MS);
    assert_int_equal(c->seen.read_ns, T0 + 1 * SEC);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, reset, reset)
    const struct CMUnitTest tests[] = {
        T(test_queue_heap_order),
        T(test_watch_places_at_first_deadline),
        T(test_watch_counts_tracked),
        T(test_collect_due_time),
        T(test_collect_requeues_active),
        T(test_collect_batch_limit),
        T(test_collect_many_in_flight),
        T(test_collect_skips_cut_record),
        T(test_settle_wait_keeps_what_was_learned),
        T(test_settle_cut),
        T(test_settle_forget),
        T(test_settle_stale_only_fd),
        T(test_settle_stale_other_fd),
        T(test_settle_stale_reused_fd),
        T(test_settle_after_close),
        T(test_rewatch),
        T(test_after_fork_child),
        T(test_refresh_sees_late_calls),
        T(test_decide_no_policy),
        T(test_decide_idle_alone),
        T(test_decide_read_alone),
        T(test_decide_write_alone),
        T(test_decide_idle_read_write_together),
        T(test_decide_activity_modes),
        T(test_decide_progress_keeps_alive),
        T(test_decide_progress_calls_needs_write_call),
        T(test_decide_stuck_peer),
        T(test_decide_progress_estimate),
        T(test_decide_first_byte),
        T(test_decide_half_closed),
        T(test_decide_half_closed_close_wait),
        T(test_decide_half_closed_poll),
        T(test_decide_lifetime),
        T(test_decide_lifetime_jitter),
        T(test_watch_draws_jitter_once),
        T(test_decide_stale),
        T(test_decide_handshake),
        T(test_decide_closed_states),
        T(test_decide_property_random),
        T(test_simulated_watchdog),
        T(test_settle_look),
        T(test_collect_hands_out_due_half_closed_poll),
        T(test_decide_half_closed_denied_eof),
        T(test_decide_syn_is_not_progress),
        T(test_decide_dry_said_ignored_without_dry_run),
    };
    return cmocka_run_group_tests_name("schedule", tests, NULL, NULL);
}
