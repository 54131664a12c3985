/* Time, for the hot path's activity stamps and for the watchdog.
 *
 * The hot path stamps with tk_stamp(): on x86-64 the TSC itself (one
 * instruction, no vDSO call), elsewhere the coarse monotonic clock in
 * nanoseconds. The watchdog turns stamps into CLOCK_MONOTONIC nanoseconds
 * with tk_stamp_to_ns(), calibrating the TSC against the kernel's clock over
 * the process's life. If the CPU has no invariant TSC, or the TSC ever
 * disagrees with the kernel's clock (a VM restored from a snapshot, say),
 * the watchdog stops reading the program's stamps: every stamp then counts
 * as no older than that moment, and from there on the kernel's TCP_INFO
 * alone says when data last moved. A clock jump can make a cut late, never
 * early. Until tk_clock_init() runs (unit tests), stamps are nanoseconds. */
#ifndef TK_CLOCK_H
#define TK_CLOCK_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>
#if defined(__x86_64__)
#include <x86intrin.h>
#endif

#define TK_NS_PER_MS 1000000ULL
#define TK_NS_PER_S 1000000000ULL
/* The hot path stores a stamp only when it moved on by 2^20 units (about a
 * millisecond of TSC ticks at >= 1 GHz, or of nanoseconds), so a stored
 * stamp may lag the last call by up to TK_STAMP_GRAIN_NS. */
#define TK_STAMP_GRAIN_SHIFT 20
#define TK_STAMP_GRAIN_NS (2 * TK_NS_PER_MS)

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

/* The hot path's stamp: see above. */
static inline uint64_t tk_stamp(void)
{
#if defined(__x86_64__)
    return __rdtsc();
#else
    return tk_now_coarse_ns();
#endif
}

/* Once, at load: check the TSC and take the first calibration point. */
void tk_clock_init(void);
/* The watchdog's "now": CLOCK_MONOTONIC, sampled together with the TSC so
 * that the following tk_stamp_to_ns() calls convert against it. Also checks
 * that the TSC still agrees with the kernel's clock. The calibration belongs
 * to the watchdog thread: only it calls tk_clock_now and tk_stamp_to_ns
 * (and a forked child before it has other threads). */
uint64_t tk_clock_now(void);
/* A stamp in CLOCK_MONOTONIC nanoseconds, as of the last tk_clock_now(). */
uint64_t tk_stamp_to_ns(uint64_t stamp);
/* True once the TSC was found unreliable (logged once by the watchdog). */
bool tk_clock_stamps_ignored(void);
/* How far a coarse stamp may lag the true time: one clock tick. */
uint64_t tk_clock_coarse_res_ns(void);

#endif
