/* TSC calibration for the activity stamps; see clock.h. */
#include "clock.h"

#if defined(__x86_64__)
#include <cpuid.h>
#endif

/* How stamps are read: nanoseconds (before init, and off x86-64), the
 * calibrated TSC, or not at all (the TSC is not to be trusted). */
enum { STAMPS_NS, STAMPS_TSC, STAMPS_IGNORED };
static int stamps = STAMPS_NS;

/* Calibration: a first point at load, the latest at the watchdog's last
 * tk_clock_now(). Written by the watchdog only (and tk_clock_init). */
static uint64_t base_tsc, base_ns;
static uint64_t ref_tsc, ref_ns;
static double ns_per_tick;
/* When the TSC was found unreliable: every stamp counts as no older. */
static uint64_t distrusted_at_ns;

static void distrust(uint64_t now_ns)
{
    stamps = STAMPS_IGNORED;
    distrusted_at_ns = now_ns;
}

/* Disagreement between the TSC and CLOCK_MONOTONIC that we tolerate, and
 * the shortest interval over which we measure it. */
#define TK_TSC_TOLERANCE 0.002
#define TK_TSC_CHECK_MIN_NS (50 * TK_NS_PER_MS)

static bool invariant_tsc(void)
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
 * taken as the middle of two TSC reads around it. If the thread was
 * preempted in between (the two reads far apart), try again, and keep the
 * tightest of a few. */
static void sample(uint64_t *tsc, uint64_t *ns)
{
#if defined(__x86_64__)
    uint64_t best_gap = UINT64_MAX;
    for (int i = 0; i < 4 && best_gap > 2000; i++) {
        uint64_t before = __rdtsc();
        uint64_t now = tk_now_ns();
        uint64_t after = __rdtsc();
        if (after - before < best_gap) {
            best_gap = after - before;
            *tsc = before + (after - before) / 2;
            *ns = now;
        }
    }
#else
    *tsc = 0;
    *ns = tk_now_ns();
#endif
}

void tk_clock_init(void)
{
    sample(&base_tsc, &base_ns);
    ref_tsc = base_tsc;
    ref_ns = base_ns;
#if defined(__x86_64__)
    stamps = STAMPS_TSC;
    if (!invariant_tsc())
        distrust(base_ns);
#endif
}

bool tk_clock_stamps_ignored(void)
{
    return stamps == STAMPS_IGNORED;
}

uint64_t tk_clock_now(void)
{
    uint64_t tsc, ns;
    sample(&tsc, &ns);
    if (stamps == STAMPS_TSC) {
        bool sane = tsc > base_tsc && ns > base_ns;
        if (sane && ns - base_ns >= TK_TSC_CHECK_MIN_NS) {
            double lifetime = (double)(ns - base_ns) / (double)(tsc - base_tsc);
            if (ns_per_tick > 0 && ns - ref_ns >= TK_TSC_CHECK_MIN_NS) {
                double recent = tsc > ref_tsc ? (double)(ns - ref_ns) / (double)(tsc - ref_tsc) : 0;
                if (recent < lifetime * (1 - TK_TSC_TOLERANCE) ||
                    recent > lifetime * (1 + TK_TSC_TOLERANCE))
                    sane = false;
            }
            if (sane)
                ns_per_tick = lifetime;
        }
        if (!sane)
            distrust(ns);
    }
    ref_tsc = tsc;
    ref_ns = ns;
    return ns;
}

uint64_t tk_stamp_to_ns(uint64_t stamp)
{
    if (stamps == STAMPS_NS)
        return stamp;
    if (stamps == STAMPS_IGNORED)
        return distrusted_at_ns;
    uint64_t tsc = stamp;
    if (tsc >= ref_tsc)
        return ref_ns; /* taken on another CPU a hair ahead: "now" */
    double per_tick = ns_per_tick;
    if (per_tick <= 0) { /* not calibrated yet: count from the first point */
        if (ref_tsc <= base_tsc)
            return ref_ns;
        per_tick = (double)(ref_ns - base_ns) / (double)(ref_tsc - base_tsc);
    }
    uint64_t age = (uint64_t)((double)(ref_tsc - tsc) * per_tick);
    return age < ref_ns ? ref_ns - age : 0;
}

uint64_t tk_clock_coarse_res_ns(void)
{
    struct timespec ts;
    if (clock_getres(CLOCK_MONOTONIC_COARSE, &ts) != 0)
        return 10 * TK_NS_PER_MS; /* a tick at HZ=100, the slowest kernel */
    return tk_ts_ns(&ts);
}
