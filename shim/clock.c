/* TSC calibration for the activity stamps; see clock.h. */
#include "clock.h"

#if defined(__x86_64__)
#include <cpuid.h>
#endif

/* The time sources, replaceable by the unit test (tests/unit/test_clock.c). */
#ifndef TK_READ_TSC
#define TK_READ_TSC() __rdtsc()
#define TK_READ_NS() tk_now_ns()
#define TK_INVARIANT_TSC() invariant_tsc()
#endif

/* How stamps are read: nanoseconds (before init, and off x86-64), the
 * calibrated TSC, or not at all (the TSC is not to be trusted). */
enum { STAMPS_NS, STAMPS_TSC, STAMPS_IGNORED };
static int stamps = STAMPS_NS;

/* Calibration: a first point at load, the latest at the watchdog's last
 * tk_clock_now(), and the last point at which the TSC was judged good.
 * Written by the watchdog only (and tk_clock_init). */
static uint64_t base_tsc, base_ns;
static uint64_t ref_tsc, ref_ns;
static uint64_t good_tsc, good_ns;
static double ns_per_tick;
static int failed_checks;
/* When the TSC was found unreliable: stamps from after the last good point
 * count as no older than this. */
static uint64_t distrusted_at_ns;

static void distrust(uint64_t now_ns)
{
    stamps = STAMPS_IGNORED;
    distrusted_at_ns = now_ns;
}

/* The TSC is judged against CLOCK_MONOTONIC over intervals of at least a
 * second, from calibration points whose two TSC reads are close (a thread
 * preempted mid-sample proves nothing), and distrusted only after two
 * failed checks in a row: a busy machine must not turn the TSC off. */
#define TK_TSC_TOLERANCE 0.002
#define TK_TSC_CHECK_MIN_NS TK_NS_PER_S
#define TK_TSC_SAMPLE_MAX_GAP 20000 /* ticks: about 10 us at 2 GHz */
#define TK_TSC_FAILS_TO_DISTRUST 2

static __attribute__((unused)) bool invariant_tsc(void)
{
#if defined(__x86_64__)
    unsigned a, b, c, d;
    if (!__get_cpuid(0x80000000u, &a, &b, &c, &d) || a < 0x80000007u)
        return false;
    __get_cpuid(0x80000007u, &a, &b, &c, &d);
    return (d >> 8) & 1; /* constant rate, runs in every C-state */
#else
    return false;
#endif
}

/* A calibration point: the TSC at the moment of a CLOCK_MONOTONIC reading,
 * taken as the middle of two TSC reads around it; the tightest of a few
 * tries. Returns the distance between the two reads, in ticks. */
static uint64_t sample(uint64_t *tsc, uint64_t *ns)
{
#if defined(__x86_64__)
    uint64_t best_gap = UINT64_MAX;
    for (int i = 0; i < 4 && best_gap > 2000; i++) {
        uint64_t before = TK_READ_TSC();
        uint64_t now = TK_READ_NS();
        uint64_t after = TK_READ_TSC();
        if (after - before < best_gap) {
            best_gap = after - before;
            *tsc = before + (after - before) / 2;
            *ns = now;
        }
    }
    return best_gap;
#else
    *tsc = 0;
    *ns = tk_now_ns();
    return 0;
#endif
}

void tk_clock_init(void)
{
    ns_per_tick = 0;
    failed_checks = 0;
    distrusted_at_ns = 0;
    sample(&base_tsc, &base_ns);
    ref_tsc = good_tsc = base_tsc;
    ref_ns = good_ns = base_ns;
#if defined(__x86_64__)
    stamps = STAMPS_TSC;
    if (!TK_INVARIANT_TSC())
        distrust(base_ns);
#endif
}

bool tk_clock_stamps_ignored(void)
{
    return stamps == STAMPS_IGNORED;
}

/* Does the TSC still tick with CLOCK_MONOTONIC since the last good point? */
static void check_tsc(uint64_t tsc, uint64_t ns, uint64_t gap)
{
    if (gap > TK_TSC_SAMPLE_MAX_GAP)
        return;
    bool ok;
    if (tsc <= good_tsc || ns <= good_ns) {
        ok = false; /* went backwards */
    } else if (ns - good_ns < TK_TSC_CHECK_MIN_NS) {
        return; /* too soon to tell */
    } else {
        double lifetime = (double)(ns - base_ns) / (double)(tsc - base_tsc);
        double recent = (double)(ns - good_ns) / (double)(tsc - good_tsc);
        ok = good_tsc == base_tsc || (recent >= lifetime * (1 - TK_TSC_TOLERANCE) &&
                                      recent <= lifetime * (1 + TK_TSC_TOLERANCE));
        if (ok)
            ns_per_tick = lifetime;
    }
    if (ok) {
        failed_checks = 0;
        good_tsc = tsc;
        good_ns = ns;
    } else if (++failed_checks >= TK_TSC_FAILS_TO_DISTRUST) {
        distrust(ns);
    }
}

uint64_t tk_clock_now(void)
{
    uint64_t tsc, ns;
    uint64_t gap = sample(&tsc, &ns);
    if (stamps == STAMPS_TSC)
        check_tsc(tsc, ns, gap);
    ref_tsc = tsc;
    ref_ns = ns;
    return ns;
}

/* ns for a TSC stamp, counted back from the calibration point (at_tsc, at_ns). */
static uint64_t tsc_to_ns(uint64_t tsc, uint64_t at_tsc, uint64_t at_ns)
{
    if (tsc >= at_tsc)
        return at_ns; /* taken on another CPU a hair ahead: "now" */
    double per_tick = ns_per_tick;
    if (per_tick <= 0) { /* not calibrated yet: count from the first point */
        if (ref_tsc <= base_tsc)
            return at_ns;
        per_tick = (double)(ref_ns - base_ns) / (double)(ref_tsc - base_tsc);
    }
    uint64_t age = (uint64_t)((double)(at_tsc - tsc) * per_tick);
    return age < at_ns ? at_ns - age : 0;
}

uint64_t tk_stamp_to_ns(uint64_t stamp)
{
    if (stamps == STAMPS_NS)
        return stamp;
    if (stamps == STAMPS_IGNORED) {
        /* Taken before the last good point: that calibration still holds. */
        if (stamp <= good_tsc && ns_per_tick > 0)
            return tsc_to_ns(stamp, good_tsc, good_ns);
        return distrusted_at_ns;
    }
    return tsc_to_ns(stamp, ref_tsc, ref_ns);
}

uint64_t tk_clock_coarse_res_ns(void)
{
    struct timespec ts;
    if (clock_getres(CLOCK_MONOTONIC_COARSE, &ts) != 0)
        return 10 * TK_NS_PER_MS; /* a tick at HZ=100, the slowest kernel */
    return tk_ts_ns(&ts);
}
