/* Unit tests of shim/table.c (with queue.c and mem.c): the connection
 * records, their cookie hash and the fd slots, driven the way the cold-path
 * hooks drive them, under tk_table_lock. Linked with
 * -Wl,--wrap=tk_mem_alloc so that allocation failures can be injected.
 * stats.c is not linked (it needs the logger): the counters table.c keeps
 * are defined here. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stats.h"
#include "table.h"
#include "locked_table.h"

/* ---------------------------------------------------------------------------
 * Allocation failure injection */

void *__real_tk_mem_alloc(size_t size);
void *__wrap_tk_mem_alloc(size_t size);

static bool alloc_fail;
static unsigned alloc_calls;

void *__wrap_tk_mem_alloc(size_t size)
{
    alloc_calls++;
    if (alloc_fail)
        return NULL;
    return __real_tk_mem_alloc(size);
}

/* ---------------------------------------------------------------------------
 * Helpers */

static struct tk_conn *t_bind(int fd, uint64_t cookie)
{
    lock();
    struct tk_conn *c = tk_table_bind(fd, cookie);
    unlock();
    return c;
}

/* What tk_schedule_watch does to a new record's kind and the counters. */
static void make_conn(struct tk_conn *c)
{
    assert_int_equal(c->kind, TK_KIND_SOCKET);
    c->kind = TK_KIND_CONN;
    tk_count(&tk_stats.tracked_now, 1);
    tk_count(&tk_stats.tracked_total, 1);
}

static uint64_t tracked_now(void)
{
    return atomic_load(&tk_stats.tracked_now);
}

static bool unbind(int fd)
{
    lock();
    bool r = tk_table_unbind(fd);
    unlock();
    return r;
}

static void dup_fd(int oldfd, int newfd)
{
    lock();
    tk_table_dup(oldfd, newfd);
    unlock();
}

static void unbind_range(unsigned first, unsigned last)
{
    lock();
    tk_table_unbind_range(first, last);
    unlock();
}

static void unbind_if(int fd, struct tk_conn *c)
{
    lock();
    tk_table_unbind_if(fd, c);
    unlock();
}

static struct tk_conn *qfirst(void)
{
    lock();
    struct tk_conn *c = tk_queue_first();
    unlock();
    return c;
}

/* Every test starts and ends with an empty table and queue. */
static int empty_table(void **state)
{
    (void)state;
    release_lock_if_held();
    alloc_fail = false;
    unbind_range(0, UINT_MAX);
    tk_table_oom = false;
    assert_int_equal(count(), 0);
    assert_int_equal(qlen(), 0);
    /* Every connection record went: none is counted as tracked. */
    assert_int_equal(tracked_now(), 0);
    atomic_store(&tk_stats.tracked_total, 0);
    return 0;
}

static uint64_t ck(int i) /* a distinct, scattered, nonzero cookie */
{
    return 0x100000001ULL * (uint64_t)(i + 1) ^ 0x5bd1e995ULL;
}

/* ---------------------------------------------------------------------------
 * Bind, find, unbind */

static void test_bind_find_unbind(void **state)
{
    (void)state;
    struct tk_conn *c = t_bind(5, 1001);
    assert_non_null(c);
    assert_ptr_equal(tk_slot_get(5), c);
    assert_ptr_equal(find(1001), c);
    assert_int_equal(c->cookie, 1001);
    assert_int_equal(c->fd, 5);
    assert_int_equal(c->refs, 1);
    assert_int_equal(c->kind, TK_KIND_SOCKET); /* a socket until watched */
    assert_int_equal(c->checking, 0);
    assert_int_equal(c->heap_index, TK_NOT_QUEUED);
    assert_null(c->set); /* not managed */
    assert_int_equal(atomic_load(&c->last_read), 0);
    assert_int_equal(atomic_load(&c->last_write), 0);
    assert_int_equal(atomic_load(&c->eof_at), 0);
    assert_int_equal(count(), 1);
    assert_int_equal(tracked_now(), 0); /* a socket is not a tracked connection */

    assert_null(tk_slot_get(4));
    assert_null(tk_slot_get(6));
    assert_null(tk_slot_get(-1));
    assert_null(find(1002));

    struct tk_conn *d = t_bind(6, 1002);
    assert_non_null(d);
    assert_ptr_not_equal(c, d);
    assert_int_equal(d->kind, TK_KIND_SOCKET);
    assert_ptr_equal(tk_slot_get(6), d);
    assert_ptr_equal(tk_slot_get(5), c);
    assert_int_equal(count(), 2);

    assert_true(unbind(5));
    assert_null(tk_slot_get(5));
    assert_null(find(1001));
    assert_ptr_equal(find(1002), d);
    assert_int_equal(count(), 1);
    assert_false(unbind(5)); /* not bound any more */
    assert_false(unbind(7)); /* never bound */
    assert_false(unbind(-1));
    assert_false(unbind((int)TK_MAX_FD));
    assert_false(unbind(INT_MAX));
    assert_true(unbind(6));
    assert_int_equal(count(), 0);
    assert_null(find(1002));
    assert_false(tk_table_oom);
}

/* A number reused for another socket behind our back (a close the shim did
 * not see): the new binding replaces the stale one. */
static void test_fresh_fd_replaces_stale(void **state)
{
    (void)state;
    struct tk_conn *a = t_bind(7, 2001);
    assert_non_null(a);
    struct tk_conn *b = t_bind(7, 2002);
    assert_non_null(b);
    assert_ptr_equal(tk_slot_get(7), b);
    assert_int_equal(b->cookie, 2002);
    assert_int_equal(b->refs, 1);
    assert_null(find(2001)); /* it went with its only descriptor */
    assert_int_equal(count(), 1);

    /* The stale socket was also reachable through a dup: it survives there. */
    a = t_bind(8, 2003);
    dup_fd(8, 9);
    assert_int_equal(a->refs, 2);
    struct tk_conn *c = t_bind(8, 2004);
    assert_ptr_equal(tk_slot_get(8), c);
    assert_ptr_equal(find(2003), a);
    assert_int_equal(a->refs, 1);
    assert_int_equal(a->fd, 9);
    assert_ptr_equal(tk_slot_get(9), a);
    assert_int_equal(count(), 3);
}

/* The same socket reaching us through a descriptor we did not see made
 * shares the record, keeping its state. */
static void test_bind_known_cookie_shares(void **state)
{
    (void)state;
    struct tk_conn *c = t_bind(3, 3001);
    make_conn(c);
    c->kind = TK_KIND_CUT;
    c->born_ns = 777;
    c->dry_said = 0x5;
    atomic_store(&c->last_read, 1000);
    atomic_store(&c->last_write, 1001);
    atomic_store(&c->eof_at, 1002);
    struct tk_conn *d = t_bind(4, 3001);
    assert_ptr_equal(c, d);
    assert_int_equal(c->refs, 2);
    assert_int_equal(c->kind, TK_KIND_CUT);
    assert_int_equal(c->born_ns, 777);
    assert_int_equal(c->dry_said, 0x5);
    assert_int_equal(atomic_load(&c->last_read), 1000);
    assert_int_equal(atomic_load(&c->last_write), 1001);
    assert_int_equal(atomic_load(&c->eof_at), 1002);
    assert_int_equal(count(), 1);
    assert_int_equal(tracked_now(), 1);
    assert_true(unbind(3));
    assert_ptr_equal(find(3001), c);
    assert_int_equal(c->fd, 4);
    assert_int_equal(c->refs, 1);
    assert_int_equal(tracked_now(), 1); /* still held through fd 4 */
    assert_true(unbind(4));
    assert_null(find(3001));
    assert_int_equal(tracked_now(), 0); /* a cut connection was still tracked */
}

/* ---------------------------------------------------------------------------
 * The dup family */

static void test_dup_shares_record(void **state)
{
    (void)state;
    struct tk_conn *c = t_bind(10, 4001);
    dup_fd(10, 11);
    dup_fd(11, 12);
    assert_ptr_equal(tk_slot_get(11), c);
    assert_ptr_equal(tk_slot_get(12), c);
    assert_int_equal(c->refs, 3);
    assert_int_equal(c->fd, 10);
    assert_int_equal(count(), 1);

    /* The record lives until its last descriptor goes; its representative
     * fd moves to another descriptor still bound to it. */
    assert_true(unbind(10));
    assert_ptr_equal(find(4001), c);
    assert_int_equal(c->refs, 2);
    assert_true(c->fd == 11 || c->fd == 12);
    assert_ptr_equal(tk_slot_get(c->fd), c);
    int other = c->fd == 11 ? 12 : 11;
    assert_true(unbind(c->fd));
    assert_ptr_equal(find(4001), c);
    assert_int_equal(c->refs, 1);
    assert_int_equal(c->fd, other);
    assert_ptr_equal(tk_slot_get(other), c);
    assert_true(unbind(other));
    assert_null(find(4001));
    assert_int_equal(count(), 0);
}

/* Unbinding a descriptor that is not the representative leaves it alone. */
static void test_dup_unbind_non_representative(void **state)
{
    (void)state;
    struct tk_conn *c = t_bind(50, 4101);
    dup_fd(50, 51);
    dup_fd(50, 52);
    assert_true(unbind(52));
    assert_int_equal(c->fd, 50);
    assert_int_equal(c->refs, 2);
    assert_true(unbind(50));
    assert_int_equal(c->fd, 51);
    assert_int_equal(c->refs, 1);
}

/* dup2(old, new) where new is tracked: new's record is dropped first. */
static void test_dup_onto_tracked(void **state)
{
    (void)state;
    struct tk_conn *x = t_bind(20, 5001);
    struct tk_conn *y = t_bind(21, 5002);
    assert_int_equal(count(), 2);
    dup_fd(20, 21);
    assert_null(find(5002));
    assert_ptr_equal(tk_slot_get(21), x);
    assert_int_equal(x->refs, 2);
    assert_int_equal(count(), 1);
    (void)y;

    /* Onto a descriptor that already shares the record: nothing changes. */
    dup_fd(20, 21);
    assert_int_equal(x->refs, 2);
    dup_fd(21, 20);
    assert_int_equal(x->refs, 2);
    assert_ptr_equal(tk_slot_get(20), x);
    assert_ptr_equal(tk_slot_get(21), x);
    assert_true(x->fd == 20 || x->fd == 21);

    /* Onto a tracked descriptor that still holds a record through a dup. */
    struct tk_conn *z = t_bind(22, 5003);
    dup_fd(22, 23);
    dup_fd(20, 22);
    assert_ptr_equal(find(5003), z);
    assert_int_equal(z->refs, 1);
    assert_int_equal(z->fd, 23);
    assert_ptr_equal(tk_slot_get(22), x);
    assert_int_equal(x->refs, 3);

    /* From an untracked descriptor onto a tracked one: the binding goes. */
    dup_fd(30, 21);
    assert_null(tk_slot_get(21));
    assert_int_equal(x->refs, 2);
    dup_fd(30, 23);
    assert_null(find(5003));
    assert_int_equal(count(), 1);
}

static void test_dup_same_fd(void **state)
{
    (void)state;
    struct tk_conn *c = t_bind(40, 6001);
    dup_fd(40, 40);
    assert_ptr_equal(tk_slot_get(40), c);
    assert_int_equal(c->refs, 1);
    assert_int_equal(c->fd, 40);
    assert_int_equal(count(), 1);
    /* Untracked onto itself: still nothing. */
    dup_fd(41, 41);
    assert_null(tk_slot_get(41));
    assert_int_equal(count(), 1);
}

/* Untracked onto untracked touches nothing, not even memory for slots. */
static void test_dup_untracked(void **state)
{
    (void)state;
    int far = 12345678; /* beyond every fd bound so far */
    unsigned calls = alloc_calls;
    dup_fd(42, far);
    dup_fd(far, 43);
    assert_int_equal(alloc_calls, calls);
    assert_null(tk_slot_get(far));
    assert_null(tk_slot_get(43));
    assert_int_equal(count(), 0);
    /* Out-of-range numbers either side are passed over. */
    struct tk_conn *c = t_bind(44, 6101);
    dup_fd(44, (int)TK_MAX_FD);
    dup_fd(44, -1);
    assert_null(tk_slot_get((int)TK_MAX_FD));
    assert_int_equal(c->refs, 1);
    assert_ptr_equal(tk_slot_get(44), c);
    /* 44 now refers to what an untracked (too high) fd does: unbound. */
    dup_fd((int)TK_MAX_FD, 44);
    assert_null(tk_slot_get(44));
    assert_null(find(6101));
    assert_int_equal(count(), 0);
}

/* ---------------------------------------------------------------------------
 * close_range and the watchdog's conditional unbind */

static void test_unbind_range(void **state)
{
    (void)state;
    for (int fd = 100; fd < 120; fd++)
        assert_non_null(t_bind(fd, ck(fd)));
    dup_fd(105, 130); /* survives the range through fd 130 */
    dup_fd(110, 101); /* 101 now shares 110's record; 101's own goes */
    assert_int_equal(count(), 19);

    unbind_range(200, 100); /* first > last: nothing */
    unbind_range(1000, 5000); /* past every bound fd: nothing */
    assert_int_equal(count(), 19);

    unbind_range(100, 109);
    for (int fd = 100; fd <= 109; fd++)
        assert_null(tk_slot_get(fd));
    for (int fd = 110; fd < 120; fd++)
        assert_non_null(tk_slot_get(fd));
    struct tk_conn *c = find(ck(105));
    assert_non_null(c);
    assert_int_equal(c->refs, 1);
    assert_int_equal(c->fd, 130);
    assert_int_equal(find(ck(110))->refs, 1);
    assert_int_equal(find(ck(110))->fd, 110);
    assert_int_equal(count(), 11);

    unbind_range(119, 119);
    assert_null(tk_slot_get(119));
    assert_int_equal(count(), 10);

    unbind_range(3, UINT_MAX); /* close_range(3, ~0U) */
    assert_int_equal(count(), 0);
    assert_null(tk_slot_get(130));
}

static void test_unbind_if(void **state)
{
    (void)state;
    struct tk_conn *x = t_bind(60, 7001);
    struct tk_conn *y = t_bind(61, 7002);
    unbind_if(60, y); /* 60 is not y's: nothing */
    assert_ptr_equal(tk_slot_get(60), x);
    assert_int_equal(x->refs, 1);
    unbind_if(62, x); /* not bound at all */
    unbind_if(-1, x);
    unbind_if((int)TK_MAX_FD, x);
    unbind_if(12345679, x); /* beyond every fd bound so far */
    assert_int_equal(count(), 2);

    dup_fd(60, 63);
    unbind_if(60, x);
    assert_null(tk_slot_get(60));
    assert_ptr_equal(find(7001), x);
    assert_int_equal(x->fd, 63);
    unbind_if(63, x);
    assert_null(find(7001));
    assert_ptr_equal(find(7002), y);
    assert_int_equal(count(), 1);
}

/* ---------------------------------------------------------------------------
 * Type-stable memory: records are recycled, never unmapped */

static const struct tk_settings some_settings = { .idle_ms = 1000 };

/* Every field a record's life may set, to something nonzero. */
static void dirty(struct tk_conn *c)
{
    atomic_store(&c->last_read, 11);
    atomic_store(&c->last_write, 12);
    atomic_store(&c->eof_at, 13);
    atomic_store(&c->writing, 2);
    c->born_ns = 14;
    memset(&c->seen, 0x5a, sizeof(c->seen)); /* every field, whatever they are */
    c->set = &some_settings;
    c->key.direction = TK_DIR_IN;
    c->key.peer_family = 2;
    c->key.server_port = 443;
    memset(c->key.peer_addr, 0xab, sizeof(c->key.peer_addr));
    c->jitter = 0xbeef;
    c->own_opts = TK_OPT_KEEPALIVE | TK_OPT_USER_TIMEOUT;
    c->shim_keepalive = 1;
    c->dry_said = 0x3f;
    c->checking = 1;
}

static void test_records_recycled(void **state)
{
    (void)state;
    struct tk_conn *c = t_bind(70, 8001);
    assert_non_null(c);
    make_conn(c);
    dirty(c);
    lock();
    tk_queue_set(c, 1000);
    unlock();
    assert_int_equal(tracked_now(), 1);
    assert_true(unbind(70));
    assert_int_equal(tracked_now(), 0);

    /* Still readable and writable, as the hot path may still hold it. */
    assert_int_equal(c->cookie, 0);
    assert_int_equal(c->fd, -1);
    assert_int_equal(c->refs, 0);
    assert_int_equal(c->heap_index, TK_NOT_QUEUED);
    assert_int_equal(qlen(), 0);
    atomic_store_explicit(&c->last_read, 999, memory_order_relaxed);
    atomic_store_explicit(&c->last_write, 998, memory_order_relaxed);
    atomic_store_explicit(&c->eof_at, 997, memory_order_relaxed);

    /* The next record reuses it, clean: a new socket, not managed, no
     * stamps, nothing learned, no lifetime draw, no options of its own. */
    struct tk_conn *d = t_bind(71, 8002);
    assert_ptr_equal(d, c);
    assert_int_equal(d->cookie, 8002);
    assert_int_equal(d->fd, 71);
    assert_int_equal(d->refs, 1);
    assert_int_equal(d->kind, TK_KIND_SOCKET);
    assert_int_equal(d->checking, 0);
    assert_int_equal(d->heap_index, TK_NOT_QUEUED);
    assert_int_equal(atomic_load(&d->last_read), 0);
    assert_int_equal(atomic_load(&d->last_write), 0);
    assert_int_equal(atomic_load(&d->eof_at), 0);
    /* Left alone: a write still blocked on the old socket decrements it. */
    assert_int_equal(atomic_load(&d->writing), 2);
    assert_int_equal(d->born_ns, 0);
    static const struct tk_seen nothing;
    assert_memory_equal(&d->seen, &nothing, sizeof(nothing));
    assert_null(d->set);
    static const struct tk_conn_key no_key;
    assert_memory_equal(&d->key, &no_key, sizeof(no_key));
    assert_int_equal(d->jitter, 0);
    assert_int_equal(d->own_opts, 0);
    assert_int_equal(d->shim_keepalive, 0);
    assert_int_equal(d->dry_said, 0);
    assert_null(find(8001));
    /* A socket going is not a tracked connection going. */
    assert_int_equal(tracked_now(), 0);
    assert_true(unbind(71));
    assert_int_equal(tracked_now(), 0);
    assert_non_null(t_bind(71, 8002));

    /* Churn: memory for records comes back, it does not grow. */
    unsigned calls = alloc_calls;
    for (int round = 0; round < 2000; round++) {
        struct tk_conn *e = t_bind(72, ck(round));
        assert_non_null(e);
        assert_int_equal(e->kind, TK_KIND_SOCKET);
        assert_int_equal(atomic_load(&e->last_read), 0);
        make_conn(e);
        dirty(e);
        assert_true(unbind(72));
    }
    assert_int_equal(alloc_calls, calls);
    assert_int_equal(count(), 1);
    assert_int_equal(tracked_now(), 0);
    assert_int_equal(atomic_load(&tk_stats.tracked_total), 2001);
}

/* tracked_now counts connection records (of any kind but a socket's) and
 * goes down once, with the last descriptor of each. */
static void test_tracked_now_on_free(void **state)
{
    (void)state;
    static const uint8_t kinds[] = { TK_KIND_CONN, TK_KIND_CUT, TK_KIND_DONE };
    for (int i = 0; i < 3; i++) {
        struct tk_conn *c = t_bind(200 + i, 12001 + (uint64_t)i);
        make_conn(c);
        c->kind = kinds[i];
    }
    struct tk_conn *sock = t_bind(210, 12010); /* a listener, say */
    assert_non_null(sock);
    assert_int_equal(tracked_now(), 3);
    dup_fd(200, 220);
    dup_fd(200, 221);
    dup_fd(210, 222);
    assert_int_equal(tracked_now(), 3);
    assert_true(unbind(200));
    assert_true(unbind(220));
    assert_int_equal(tracked_now(), 3); /* fd 221 still holds it */
    assert_true(unbind(221));
    assert_int_equal(tracked_now(), 2);
    assert_true(unbind(210));
    assert_true(unbind(222));
    assert_int_equal(tracked_now(), 2);
    /* A number reused behind our back frees the stale record: counted too. */
    assert_non_null(t_bind(201, 12020));
    assert_int_equal(tracked_now(), 1);
    /* dup2 onto a tracked descriptor, and the watchdog's stale unbind. */
    dup_fd(201, 202);
    assert_int_equal(tracked_now(), 0);
    assert_int_equal(count(), 1);
    struct tk_conn *c = t_bind(203, 12030);
    make_conn(c);
    unbind_if(203, c);
    assert_int_equal(tracked_now(), 0);
    /* close_range over several. */
    for (int fd = 230; fd < 240; fd++)
        make_conn(t_bind(fd, ck(fd)));
    assert_int_equal(tracked_now(), 10);
    unbind_range(230, 234);
    assert_int_equal(tracked_now(), 5);
    unbind_range(0, UINT_MAX);
    assert_int_equal(tracked_now(), 0);
    assert_int_equal(count(), 0);
    assert_int_equal(atomic_load(&tk_stats.tracked_total), 14);
}

/* tk_table_foreach visits every record once, whatever its kind or number
 * of descriptors, and nothing else. */
struct visit {
    unsigned calls;
    unsigned seen[64];
};

static void visit_record(struct tk_conn *c, void *ctx)
{
    struct visit *v = ctx;
    v->calls++;
    uint64_t i = c->cookie - 13000;
    if (i < 64)
        v->seen[i]++;
}

static void test_foreach(void **state)
{
    (void)state;
    struct visit v;
    memset(&v, 0, sizeof(v));
    lock();
    tk_table_foreach(visit_record, &v);
    unlock();
    assert_int_equal(v.calls, 0);
    for (int i = 0; i < 40; i++) {
        struct tk_conn *c = t_bind(300 + i, 13000 + (uint64_t)i);
        if (i % 3)
            make_conn(c);
    }
    for (int i = 0; i < 40; i += 4)
        dup_fd(300 + i, 400 + i);
    for (int i = 0; i < 40; i += 5)
        assert_true(unbind(300 + i));
    /* Gone: the multiples of 5, except those a dup keeps (multiples of 4). */
    lock();
    tk_table_foreach(visit_record, &v);
    unsigned expect = tk_table_count();
    unlock();
    assert_int_equal(v.calls, expect);
    for (int i = 0; i < 40; i++) {
        bool alive = i % 5 != 0 || i % 4 == 0;
        if (v.seen[i] != (alive ? 1u : 0u))
            fail_msg("record %d visited %u times", i, v.seen[i]);
    }
}

/* A queued record leaves the queue with its last descriptor, not before. */
static void test_unbind_dequeues(void **state)
{
    (void)state;
    struct tk_conn *a = t_bind(80, 9001);
    struct tk_conn *b = t_bind(81, 9002);
    dup_fd(80, 82);
    lock();
    tk_queue_set(a, 500);
    tk_queue_set(b, 300);
    unlock();
    assert_int_equal(qlen(), 2);
    assert_ptr_equal(qfirst(), b);
    assert_true(unbind(81));
    assert_int_equal(qlen(), 1);
    assert_ptr_equal(qfirst(), a);
    assert_true(unbind(80));
    assert_int_equal(qlen(), 1); /* fd 82 still holds it */
    assert_int_equal(a->check_at_ns, 500);
    assert_true(unbind(82));
    assert_int_equal(qlen(), 0);
    assert_null(qfirst());
}

/* ---------------------------------------------------------------------------
 * A random walk against a model of what the table must hold */

#define M_FDS 64
#define M_COOKIES 24

static uint64_t rng_state;

static uint64_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ULL;
}

static int model[M_FDS]; /* cookie index + 1 bound to each fd, 0 = none */
static uint64_t model_stamp[M_COOKIES]; /* last_read stored when the record was made */
static bool model_conn[M_COOKIES];      /* watched (counted in tracked_now) */

static uint64_t m_cookie(int i)
{
    return 0xc0de000000000000ULL + (uint64_t)i * 977;
}

static void model_unbind(int fd)
{
    model[fd] = 0;
}

static void check_model(int step)
{
    unsigned records = 0;
    int refs[M_COOKIES] = { 0 };
    for (int fd = 0; fd < M_FDS; fd++) {
        struct tk_conn *c = tk_slot_get(fd);
        if (!model[fd]) {
            if (c)
                fail_msg("step %d: fd %d bound, expected unbound", step, fd);
            continue;
        }
        int k = model[fd] - 1;
        refs[k]++;
        if (!c || c->cookie != m_cookie(k))
            fail_msg("step %d: fd %d bound to %p, expected cookie %d", step, fd, (void *)c, k);
    }
    for (int k = 0; k < M_COOKIES; k++) {
        struct tk_conn *c = tk_table_find(m_cookie(k));
        if (!refs[k]) {
            if (c)
                fail_msg("step %d: cookie %d still has a record", step, k);
            continue;
        }
        records++;
        if (!c)
            fail_msg("step %d: cookie %d lost its record", step, k);
        if (c->refs != (unsigned)refs[k])
            fail_msg("step %d: cookie %d refs %u, expected %d", step, k, c->refs, refs[k]);
        if (c->fd < 0 || c->fd >= M_FDS || model[c->fd] != k + 1)
            fail_msg("step %d: cookie %d representative fd %d is not one of its own", step, k,
                     c->fd);
        if (atomic_load(&c->last_read) != model_stamp[k])
            fail_msg("step %d: cookie %d last read changed", step, k);
        if ((c->kind == TK_KIND_CONN) != model_conn[k])
            fail_msg("step %d: cookie %d kind %u", step, k, c->kind);
        for (int fd = 0; fd < M_FDS; fd++)
            if (model[fd] == k + 1 && tk_slot_get(fd) != c)
                fail_msg("step %d: fd %d not on cookie %d's record", step, fd, k);
    }
    if (tk_table_count() != records)
        fail_msg("step %d: count %u, expected %u", step, tk_table_count(), records);
    uint64_t conns = 0;
    for (int k = 0; k < M_COOKIES; k++)
        conns += refs[k] && model_conn[k];
    if (atomic_load(&tk_stats.tracked_now) != conns)
        fail_msg("step %d: tracked_now %llu, expected %llu", step,
                 (unsigned long long)atomic_load(&tk_stats.tracked_now),
                 (unsigned long long)conns);
}

static void test_random_against_model(void **state)
{
    (void)state;
    rng_state = 0x243f6a8885a308d3ULL;
    memset(model, 0, sizeof(model));
    memset(model_conn, 0, sizeof(model_conn));
    uint64_t stamp = 1;
    lock();
    for (int step = 0; step < 20000; step++) {
        int fd = (int)(rnd() % M_FDS), fd2 = (int)(rnd() % M_FDS);
        int k = (int)(rnd() % M_COOKIES);
        switch (rnd() % 6) {
        case 0:
        case 1: { /* socket/accept: bind */
            model_unbind(fd);
            bool known = false;
            for (int i = 0; i < M_FDS; i++)
                known |= model[i] == k + 1;
            stamp++;
            struct tk_conn *c = tk_table_bind(fd, m_cookie(k));
            if (!c)
                fail_msg("step %d: bind failed", step);
            if (!known) { /* a new record: the hot path and the watch mark it */
                if (c->kind != TK_KIND_SOCKET || atomic_load(&c->last_read))
                    fail_msg("step %d: new record not clean", step);
                model_stamp[k] = stamp;
                atomic_store(&c->last_read, stamp);
                model_conn[k] = rnd() % 2;
                if (model_conn[k]) {
                    c->kind = TK_KIND_CONN;
                    tk_count(&tk_stats.tracked_now, 1);
                }
            }
            model[fd] = k + 1;
            break;
        }
        case 2: /* dup2(fd, fd2) */
            tk_table_dup(fd, fd2);
            if (fd != fd2)
                model[fd2] = model[fd];
            break;
        case 3: /* close */
            if (tk_table_unbind(fd) != (model[fd] != 0))
                fail_msg("step %d: unbind(%d) answered wrong", step, fd);
            model_unbind(fd);
            break;
        case 4: { /* close_range over a short span */
            int last = fd + (int)(rnd() % 8);
            tk_table_unbind_range((unsigned)fd, (unsigned)last);
            for (int i = fd; i <= last && i < M_FDS; i++)
                model_unbind(i);
            break;
        }
        case 5: { /* the watchdog finds fd stale for cookie k */
            struct tk_conn *c = tk_table_find(m_cookie(k));
            if (c) {
                tk_table_unbind_if(fd, c);
                if (model[fd] == k + 1)
                    model_unbind(fd);
            }
            break;
        }
        }
        check_model(step);
    }
    tk_table_unbind_range(0, M_FDS - 1);
    unlock();
    assert_int_equal(count(), 0);
}

/* ---------------------------------------------------------------------------
 * Out of memory: nothing new is tracked, nothing old is lost */

static void test_oom_hash(void **state)
{
    (void)state;
    /* Make sure a free record is there, so that it is the hash that fails. */
    assert_non_null(t_bind(91, 10101));
    assert_true(unbind(91));
    assert_int_equal(count(), 0);
    alloc_fail = true;
    assert_null(t_bind(92, 10102));
    assert_true(tk_table_oom);
    assert_null(tk_slot_get(92));
    assert_null(find(10102));
    assert_int_equal(count(), 0);
    alloc_fail = false;
    tk_table_oom = false;
    struct tk_conn *c = t_bind(92, 10102);
    assert_non_null(c);
    assert_ptr_equal(find(10102), c);
    assert_int_equal(count(), 1);
}

#define OOM_FDS 4096

/* Whatever runs out first (records, hash buckets), every bind either works
 * fully or leaves no trace. */
static void test_oom_many(void **state)
{
    (void)state;
    static struct tk_conn *got[OOM_FDS];
    got[0] = t_bind(0, ck(0)); /* the hash exists */
    assert_non_null(got[0]);
    alloc_fail = true;
    unsigned ok = 1, failed = 0;
    for (int fd = 1; fd < OOM_FDS; fd++) {
        got[fd] = t_bind(fd, ck(fd));
        if (got[fd])
            ok++;
        else
            failed++;
    }
    assert_true(failed > 0);
    assert_true(tk_table_oom);
    assert_int_equal(count(), ok);
    lock();
    for (int fd = 0; fd < OOM_FDS; fd++) {
        if (tk_slot_get(fd) != got[fd] || tk_table_find(ck(fd)) != got[fd])
            fail_msg("fd %d: slot %p, hash %p, bind gave %p", fd, (void *)tk_slot_get(fd),
                     (void *)tk_table_find(ck(fd)), (void *)got[fd]);
        if (got[fd] && (got[fd]->fd != fd || got[fd]->refs != 1))
            fail_msg("fd %d: record broken", fd);
    }
    unlock();
    alloc_fail = false;
    tk_table_oom = false;
    /* Memory back: the failed ones can be tracked now. */
    for (int fd = 0; fd < OOM_FDS; fd++)
        if (!got[fd])
            assert_non_null(t_bind(fd, ck(fd)));
    assert_int_equal(count(), OOM_FDS);
    assert_false(tk_table_oom);
}

/* The deadline heap cannot grow: the record stays unqueued, the rest intact. */
static void test_oom_queue(void **state)
{
    (void)state;
    /* Fill the heap to a capacity it must then grow past. */
    unsigned n = 0;
    struct tk_conn *c = NULL;
    lock();
    for (;;) {
        c = tk_table_bind((int)n, ck((int)n));
        assert_non_null(c);
        unsigned before = tk_queue_length();
        alloc_fail = true;
        tk_queue_set(c, 1000000 - n);
        alloc_fail = false;
        if (tk_queue_length() == before)
            break; /* the heap was full and could not grow */
        assert_false(tk_table_oom);
        n++;
        assert_true(n < 100000);
    }
    assert_true(tk_table_oom);
    assert_int_equal(c->heap_index, TK_NOT_QUEUED);
    assert_int_equal(tk_queue_length(), n);
    assert_int_equal(tk_queue_first()->check_at_ns, 1000000 - (n - 1));
    /* With memory again it queues. */
    tk_table_oom = false;
    tk_queue_set(c, 1);
    assert_int_equal(tk_queue_length(), n + 1);
    assert_ptr_equal(tk_queue_first(), c);
    unlock();
}

/* ---------------------------------------------------------------------------
 * Scale, and the edges of the fd range. Last: they raise the highest fd
 * ever bound, which the tests above would then scan. */

static void test_fd_range(void **state)
{
    (void)state;
    assert_null(t_bind(-1, 11001));
    assert_null(t_bind((int)TK_MAX_FD, 11002));
    assert_null(t_bind((int)TK_MAX_FD + 1, 11003));
    assert_null(t_bind(INT_MAX, 11004));
    assert_null(t_bind(INT_MIN, 11005));
    assert_false(tk_table_oom); /* refused, not out of memory */
    assert_int_equal(count(), 0);
    assert_null(find(11002));
    assert_null(tk_slot_get((int)TK_MAX_FD));
    assert_null(tk_slot_get(INT_MAX));
    assert_null(tk_slot_get(INT_MIN));

    struct tk_conn *top = t_bind((int)TK_MAX_FD - 1, 11006);
    assert_non_null(top);
    assert_ptr_equal(tk_slot_get((int)TK_MAX_FD - 1), top);
    dup_fd((int)TK_MAX_FD - 1, 0);
    assert_int_equal(top->refs, 2);
    assert_true(unbind((int)TK_MAX_FD - 1));
    assert_int_equal(top->fd, 0);
    unbind_range(0, TK_MAX_FD - 1);
    assert_int_equal(count(), 0);
}

static void test_many(void **state)
{
    (void)state;
    enum { N = 50000, DENSE = 45000 };
    /* Dense from 0, then spread up to fd 2^20: the slots grow many times. */
    static int fds[N];
    for (int i = 0; i < N; i++)
        fds[i] = i < DENSE ? i : DENSE + (i - DENSE) * (((1 << 20) - DENSE) / (N - DENSE));
    lock();
    for (int i = 0; i < N; i++) {
        struct tk_conn *c = tk_table_bind(fds[i], ck(i));
        if (!c)
            fail_msg("bind %d (fd %d) failed", i, fds[i]);
        c->born_ns = (uint64_t)i + 1;
    }
    assert_int_equal(tk_table_count(), N);
    for (int i = 0; i < N; i++) {
        struct tk_conn *c = tk_slot_get(fds[i]);
        if (!c || c->cookie != ck(i) || c->fd != fds[i] || tk_table_find(ck(i)) != c ||
            c->born_ns != (uint64_t)i + 1)
            fail_msg("entry %d (fd %d) wrong", i, fds[i]);
    }
    assert_null(tk_table_bind((int)TK_MAX_FD, ck(N)));
    assert_int_equal(tk_table_count(), N);

    /* Drop every other one. */
    for (int i = 0; i < N; i += 2)
        assert_true(tk_table_unbind(fds[i]));
    assert_int_equal(tk_table_count(), N / 2);
    for (int i = 0; i < N; i++) {
        struct tk_conn *c = tk_table_find(ck(i));
        if ((i % 2 == 0) != (c == NULL) || (i % 2 == 0) != (tk_slot_get(fds[i]) == NULL))
            fail_msg("entry %d after removals", i);
    }
    /* Rebind them: the records come from the free list. */
    for (int i = 0; i < N; i += 2)
        assert_non_null(tk_table_bind(fds[i], ck(i)));
    assert_int_equal(tk_table_count(), N);
    tk_table_unbind_range(0, UINT_MAX);
    assert_int_equal(tk_table_count(), 0);
    for (int i = 0; i < N; i++)
        if (tk_slot_get(fds[i]) || tk_table_find(ck(i)))
            fail_msg("entry %d survived close_range", i);
    unlock();
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, empty_table, empty_table)
    const struct CMUnitTest tests[] = {
        T(test_bind_find_unbind),
        T(test_fresh_fd_replaces_stale),
        T(test_bind_known_cookie_shares),
        T(test_dup_shares_record),
        T(test_dup_unbind_non_representative),
        T(test_dup_onto_tracked),
        T(test_dup_same_fd),
        T(test_dup_untracked),
        T(test_unbind_range),
        T(test_unbind_if),
        T(test_records_recycled),
        T(test_tracked_now_on_free),
        T(test_foreach),
        T(test_unbind_dequeues),
        T(test_random_against_model),
        T(test_oom_hash),
        T(test_oom_many),
        T(test_oom_queue),
        T(test_fd_range),
        T(test_many),
    };
    return cmocka_run_group_tests_name("table", tests, NULL, NULL);
}
