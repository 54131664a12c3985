/* The kernel's TCP_INFO, read whole: glibc's struct tcp_info stops before
 * the fields the watchdog needs (bytes acknowledged and received, the
 * peer's window), so this file alone uses the kernel's header. */
#ifndef TK_TCPINFO_H
#define TK_TCPINFO_H

#include <stdbool.h>

#include "schedule.h"

/* Fills obs's TCP_INFO fields and sets obs->have_info; false if TCP_INFO
 * cannot be read. Keeps errno. */
bool tk_read_tcp_info(int fd, struct tk_observation *obs);

#endif
