/* Monotonic time in nanoseconds.
 * The hot path stamps with the coarse clock (a vDSO read, no system call),
 * which lags the precise one by up to one tick; the watchdog adds that tick
 * (tk_clock_coarse_res_ns) to every stamp so that it never cuts early. */
#ifndef TK_CLOCK_H
#define TK_CLOCK_H

#include <stdint.h>
#include <time.h>

#define TK_NS_PER_MS 1000000ULL
#define TK_NS_PER_S 1000000000ULL

static inline uint64_t tk_ts_ns(const struct timespec *ts)
{
    return (uint64_t)ts->tv_sec * TK_NS_PER_S + (uint64_t)ts->tv_nsec;
}

static inline uint64_t tk_now_coarse_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return tk_ts_ns(&ts);
}

static inline uint64_t tk_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return tk_ts_ns(&ts);
}

static inline uint64_t tk_clock_coarse_res_ns(void)
{
    struct timespec ts;
    if (clock_getres(CLOCK_MONOTONIC_COARSE, &ts) != 0)
        return 10 * TK_NS_PER_MS; /* a tick at HZ=100, the slowest kernel */
    return tk_ts_ns(&ts);
}

#endif
