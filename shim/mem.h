/* Memory for the table, from mmap: usable where malloc is not (a close()
 * hook running in a signal handler that interrupted malloc). */
#ifndef TK_MEM_H
#define TK_MEM_H

#include <stddef.h>

void *tk_mem_alloc(size_t size); /* zeroed; NULL on failure; errno kept */
void tk_mem_free(void *p, size_t size);

#endif
