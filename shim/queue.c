/* The watchdog's deadline queue: a binary min-heap of records ordered by
 * check_at_ns, each record knowing its own position so that a close can
 * remove it in O(log n). The watchdog pops only what is due, so its work per
 * wake-up grows with the number of due connections, not the table's size. */
#include "mem.h"
#include "table.h"

static struct tk_conn **heap;
static unsigned heap_len, heap_cap;

static void place(unsigned i, struct tk_conn *c)
{
    heap[i] = c;
    c->heap_index = i;
}

static void sift_up(unsigned i)
{
    struct tk_conn *c = heap[i];
    while (i > 0) {
        unsigned parent = (i - 1) / 2;
        if (heap[parent]->check_at_ns <= c->check_at_ns)
            break;
        place(i, heap[parent]);
        i = parent;
    }
    place(i, c);
}

static void sift_down(unsigned i)
{
    struct tk_conn *c = heap[i];
    for (;;) {
        unsigned child = 2 * i + 1;
        if (child >= heap_len)
            break;
        if (child + 1 < heap_len && heap[child + 1]->check_at_ns < heap[child]->check_at_ns)
            child++;
        if (c->check_at_ns <= heap[child]->check_at_ns)
            break;
        place(i, heap[child]);
        i = child;
    }
    place(i, c);
}

static int grow(void)
{
    unsigned cap = heap_cap ? heap_cap * 2 : 1024;
    struct tk_conn **bigger = tk_mem_alloc(cap * sizeof(*bigger));
    if (!bigger)
        return -1;
    for (unsigned i = 0; i < heap_len; i++)
        bigger[i] = heap[i];
    tk_mem_free(heap, heap_cap * sizeof(*heap));
    heap = bigger;
    heap_cap = cap;
    return 0;
}

void tk_queue_set(struct tk_conn *c, uint64_t check_at_ns)
{
    if (c->heap_index != TK_NOT_QUEUED) {
        uint64_t before = c->check_at_ns;
        c->check_at_ns = check_at_ns;
        if (check_at_ns < before)
            sift_up(c->heap_index);
        else
            sift_down(c->heap_index);
        return;
    }
    if (heap_len == heap_cap && grow() != 0) {
        tk_table_oom = true;
        return;
    }
    c->check_at_ns = check_at_ns;
    place(heap_len++, c);
    sift_up(heap_len - 1);
}

void tk_queue_remove(struct tk_conn *c)
{
    unsigned i = c->heap_index;
    if (i == TK_NOT_QUEUED)
        return;
    c->heap_index = TK_NOT_QUEUED;
    struct tk_conn *last = heap[--heap_len];
    if (i == heap_len)
        return;
    place(i, last);
    if (i > 0 && heap[(i - 1) / 2]->check_at_ns > last->check_at_ns)
        sift_up(i);
    else
        sift_down(i);
}

struct tk_conn *tk_queue_first(void)
{
    return heap_len ? heap[0] : NULL;
}

unsigned tk_queue_length(void)
{
    return heap_len;
}
