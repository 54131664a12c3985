/* The TSC calibration (shim/clock.c) against a fake TSC and a fake
 * CLOCK_MONOTONIC: stamps convert accurately, a preempted sample or a busy
 * machine never turns the TSC off, and a real jump does, without making any
 * stamp from before it look older than it is. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

/* The fake time sources: the TSC ticks twice per nanosecond, plus a jump. */
static uint64_t fake_ns;
static uint64_t fake_jump;        /* ticks added to the TSC (a restored VM) */
static uint64_t fake_preempt_ns;  /* the clock read takes this long */
static bool fake_invariant = true;

static uint64_t fake_tsc(void)
{
    return 1000000 + 2 * fake_ns + fake_jump;
}

static uint64_t fake_read_ns(void)
{
    uint64_t now = fake_ns;
    fake_ns += fake_preempt_ns; /* the thread was preempted around the read */
    return now;
}

#define TK_READ_TSC() fake_tsc()
#define TK_READ_NS() fake_read_ns()
#define TK_INVARIANT_TSC() fake_invariant
#include "../../shim/clock.c"

#define MS 1000000ULL
#define SEC 1000000000ULL
#define T0 (5000 * SEC)

static int reset(void **state)
{
    (void)state;
    fake_ns = T0;
    fake_jump = 0;
    fake_preempt_ns = 0;
    fake_invariant = true;
    tk_clock_init();
    return 0;
}

/* The watchdog's step: time passes, then it takes its "now". */
static uint64_t advance(uint64_t ns)
{
    fake_ns += ns;
    return tk_clock_now();
}

static void assert_near(uint64_t got, uint64_t want, uint64_t tolerance)
{
    uint64_t diff = got > want ? got - want : want - got;
    if (diff > tolerance)
        fail_msg("got %llu, want %llu (+-%llu)", (unsigned long long)got,
                 (unsigned long long)want, (unsigned long long)tolerance);
}

static void test_steady_tsc_converts(void **state)
{
    (void)state;
    uint64_t at = fake_ns + 200 * MS;
    advance(200 * MS);
    uint64_t stamp = fake_tsc();
    advance(300 * MS); /* before the first check: calibrated from the first point */
    assert_near(tk_stamp_to_ns(stamp), at, 1000);
    for (int i = 0; i < 20; i++)
        advance(700 * MS);
    assert_false(tk_clock_stamps_ignored());
    assert_near(tk_stamp_to_ns(stamp), at, 1000);
    /* A stamp a hair ahead of the watchdog's now (another CPU) is "now". */
    assert_int_equal(tk_stamp_to_ns(fake_tsc() + 10), fake_ns);
}

static void test_preempted_samples_do_not_distrust(void **state)
{
    (void)state;
    advance(1500 * MS);
    fake_preempt_ns = 400 * 1000; /* every read 0.4 ms late: a busy machine */
    for (int i = 0; i < 10; i++)
        advance(1100 * MS);
    assert_false(tk_clock_stamps_ignored());
    /* Even a TSC jump proves nothing from samples that loose. */
    fake_jump = 100 * MS;
    for (int i = 0; i < 5; i++)
        advance(1100 * MS);
    assert_false(tk_clock_stamps_ignored());
}

static void test_one_loose_sample_among_good_ones(void **state)
{
    (void)state;
    for (int i = 0; i < 5; i++) {
        advance(1100 * MS);
        fake_preempt_ns = 500 * 1000; /* one preempted sample... */
        advance(1100 * MS);
        fake_preempt_ns = 0;          /* ...then good ones again */
    }
    assert_false(tk_clock_stamps_ignored());
}

static void test_jump_distrusts_without_early_cuts(void **state)
{
    (void)state;
    advance(1200 * MS);
    uint64_t before_at = fake_ns;
    uint64_t before = fake_tsc();
    advance(1200 * MS); /* a good check: the last good point */
    uint64_t good_at = fake_ns;
    fake_jump = 200 * MS; /* the VM is restored: the TSC leaps 100 ms ahead */
    uint64_t after = fake_tsc() + 2 * 10 * MS;
    advance(1200 * MS); /* one failed check: not yet */
    assert_false(tk_clock_stamps_ignored());
    advance(1200 * MS); /* two in a row: distrusted */
    assert_true(tk_clock_stamps_ignored());
    uint64_t distrusted_at = fake_ns;
    /* A stamp from before the last good point keeps its true time. */
    assert_near(tk_stamp_to_ns(before), before_at, 1000);
    assert_true(good_at > before_at);
    /* A later one counts as no older than the distrust: never early. */
    assert_int_equal(tk_stamp_to_ns(after), distrusted_at);
    assert_int_equal(tk_stamp_to_ns(fake_tsc()), distrusted_at);
}

static void test_backwards_tsc_distrusts(void **state)
{
    (void)state;
    advance(1200 * MS);
    advance(1200 * MS);
    fake_jump = (uint64_t)-(int64_t)(4 * SEC); /* the TSC goes back 2 s */
    advance(1200 * MS);
    advance(1200 * MS);
    assert_true(tk_clock_stamps_ignored());
}

static void test_no_invariant_tsc(void **state)
{
    (void)state;
    fake_invariant = false;
    tk_clock_init();
    assert_true(tk_clock_stamps_ignored());
    uint64_t stamp = fake_tsc();
    advance(5 * SEC);
    assert_int_equal(tk_stamp_to_ns(stamp), T0);
}

int main(void)
{
#if !defined(__x86_64__)
    return 0; /* stamps are nanoseconds elsewhere: nothing to calibrate */
#endif
#define T(f) cmocka_unit_test_setup(f, reset)
    const struct CMUnitTest tests[] = {
        T(test_steady_tsc_converts),
        T(test_preempted_samples_do_not_distrust),
        T(test_one_loose_sample_among_good_ones),
        T(test_jump_distrusts_without_early_cuts),
        T(test_backwards_tsc_distrusts),
        T(test_no_invariant_tsc),
    };
    return cmocka_run_group_tests_name("clock", tests, NULL, NULL);
}
