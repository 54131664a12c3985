/* The connection table: records, their cookie hash, the fd slots and the
 * lock. See table.h for who may touch what. */
#include "mem.h"

#include <stdbool.h>

#include <pthread.h>
#include <stddef.h>
#include <string.h>

/* uthash allocates bucket arrays as the table grows: from mmap, since a
 * close() in a signal handler may get here, and never fatally. */
#define uthash_malloc(sz) tk_mem_alloc(sz)
#define uthash_free(ptr, sz) tk_mem_free(ptr, sz)
#define HASH_NONFATAL_OOM 1
#define uthash_nonfatal_oom(obj) (hash_oom = true)
static bool hash_oom;

#include "stats.h"
#include "table.h"

_Atomic(struct tk_conn *) tk_slot[TK_MAX_FD];
bool tk_table_oom;

static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static struct tk_conn *by_cookie; /* uthash head */
static struct tk_conn *free_list; /* recycled records, linked through hh.next */
static unsigned record_count;
static int max_bound_fd = -1;

void tk_table_lock(sigset_t *old)
{
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, old);
    pthread_mutex_lock(&table_lock);
}

void tk_table_unlock(const sigset_t *old)
{
    pthread_mutex_unlock(&table_lock);
    pthread_sigmask(SIG_SETMASK, old, NULL);
}

pthread_mutex_t *tk_table_mutex(void)
{
    return &table_lock;
}

void tk_table_after_fork_child(void)
{
    pthread_mutex_init(&table_lock, NULL);
}

/* Records come from 64 KiB slabs and go back to a free list, never to the
 * system: the hot path may still hold a pointer to a record being freed. */
#define SLAB_BYTES (64 * 1024)

static struct tk_conn *record_alloc(void)
{
    if (!free_list) {
        struct tk_conn *slab = tk_mem_alloc(SLAB_BYTES);
        if (!slab)
            return NULL;
        for (size_t i = 0; i < SLAB_BYTES / sizeof(*slab); i++) {
            slab[i].hh.next = free_list;
            free_list = &slab[i];
        }
    }
    struct tk_conn *c = free_list;
    free_list = c->hh.next;
    return c;
}

static void record_free(struct tk_conn *c)
{
    if (c->kind != TK_KIND_SOCKET)
        tk_count(&tk_stats.tracked_now, -1);
    tk_queue_remove(c);
    HASH_DELETE(hh, by_cookie, c);
    __atomic_store_n(&c->cookie, 0, __ATOMIC_RELAXED); /* the hot path reads it unlocked */
    c->fd = -1;
    c->refs = 0;
    c->hh.next = free_list;
    free_list = c;
    record_count--;
}

static _Atomic(struct tk_conn *) *slot_ref(int fd)
{
    return (unsigned)fd < TK_MAX_FD ? &tk_slot[(unsigned)fd] : NULL;
}

/* Any other descriptor still bound to `c`, for when its current one goes. */
static int other_fd_of(const struct tk_conn *c, int gone)
{
    for (int fd = 0; fd <= max_bound_fd; fd++) {
        if (fd != gone && tk_slot_get(fd) == c)
            return fd;
    }
    return -1;
}

static void set_slot(int fd, _Atomic(struct tk_conn *) *slot, struct tk_conn *c)
{
    atomic_store_explicit(slot, c, memory_order_release);
    if (c && fd > max_bound_fd)
        max_bound_fd = fd;
    /* Keep the scans of other_fd_of and close_range short. */
    while (!c && fd == max_bound_fd && max_bound_fd >= 0 && !tk_slot_get(max_bound_fd))
        fd = --max_bound_fd;
}

static void unbind_slot(int fd, _Atomic(struct tk_conn *) *slot)
{
    struct tk_conn *c = atomic_load_explicit(slot, memory_order_relaxed);
    if (!c)
        return;
    set_slot(fd, slot, NULL);
    if (--c->refs == 0) {
        record_free(c);
        return;
    }
    if (c->fd == fd)
        c->fd = other_fd_of(c, fd);
}

bool tk_table_unbind(int fd)
{
    _Atomic(struct tk_conn *) *slot = slot_ref(fd);
    if (!slot || !atomic_load_explicit(slot, memory_order_relaxed))
        return false;
    unbind_slot(fd, slot);
    return true;
}

void tk_table_unbind_range(unsigned first, unsigned last)
{
    if (max_bound_fd < 0)
        return;
    if (last > (unsigned)max_bound_fd)
        last = (unsigned)max_bound_fd;
    for (unsigned fd = first; fd <= last; fd++)
        tk_table_unbind((int)fd);
}

void tk_table_unbind_if(int fd, struct tk_conn *c)
{
    _Atomic(struct tk_conn *) *slot = slot_ref(fd);
    if (slot && atomic_load_explicit(slot, memory_order_relaxed) == c)
        unbind_slot(fd, slot);
}

struct tk_conn *tk_table_find(uint64_t cookie)
{
    struct tk_conn *c = NULL;
    HASH_FIND(hh, by_cookie, &cookie, sizeof(cookie), c);
    return c;
}

struct tk_conn *tk_table_bind(int fd, uint64_t cookie)
{
    _Atomic(struct tk_conn *) *slot = slot_ref(fd);
    if (!slot)
        return NULL;
    unbind_slot(fd, slot);

    struct tk_conn *c = tk_table_find(cookie);
    if (c) { /* the same socket reached us through a descriptor we did not see made */
        c->refs++;
        set_slot(fd, slot, c);
        return c;
    }
    c = record_alloc();
    if (!c) {
        tk_table_oom = true;
        return NULL;
    }
    /* The watchdog may still read a recycled record's stamps and cookie
     * without the lock (and finds the cookie changed): store those
     * atomically, clear the rest. `writing` is left alone: a write still
     * blocked on the old socket decrements it when it returns. */
    memset(&c->check_at_ns, 0, sizeof(*c) - offsetof(struct tk_conn, check_at_ns));
    atomic_store_explicit(&c->last_read, 0, memory_order_relaxed);
    atomic_store_explicit(&c->last_write, 0, memory_order_relaxed);
    atomic_store_explicit(&c->eof_at, 0, memory_order_relaxed);
    __atomic_store_n(&c->cookie, cookie, __ATOMIC_RELAXED);
    c->heap_index = TK_NOT_QUEUED;
    c->fd = fd;
    c->refs = 1;
    c->kind = TK_KIND_SOCKET;
    hash_oom = false;
    HASH_ADD(hh, by_cookie, cookie, sizeof(c->cookie), c);
    if (hash_oom) {
        c->hh.next = free_list;
        free_list = c;
        tk_table_oom = true;
        return NULL;
    }
    record_count++;
    set_slot(fd, slot, c);
    return c;
}

void tk_table_dup(int oldfd, int newfd)
{
    if (oldfd == newfd) /* dup2(fd, fd) changes nothing */
        return;
    _Atomic(struct tk_conn *) *slot = slot_ref(newfd);
    if (slot)
        unbind_slot(newfd, slot);
    struct tk_conn *c = tk_slot_get(oldfd);
    if (!c)
        return;
    slot = slot_ref(newfd);
    if (!slot)
        return;
    c->refs++;
    set_slot(newfd, slot, c);
}

unsigned tk_table_count(void)
{
    return record_count;
}

void tk_table_foreach(void (*fn)(struct tk_conn *c, void *ctx), void *ctx)
{
    struct tk_conn *c, *tmp;
    HASH_ITER(hh, by_cookie, c, tmp)
        fn(c, ctx);
}
