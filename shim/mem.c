/* mmap-backed allocation; see mem.h. */
#include "mem.h"

#include <errno.h>
#include <sys/mman.h>

void *tk_mem_alloc(size_t size)
{
    int saved = errno;
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    errno = saved;
    return p == MAP_FAILED ? NULL : p;
}

void tk_mem_free(void *p, size_t size)
{
    int saved = errno;
    if (p)
        munmap(p, size);
    errno = saved;
}
