/* Unit tests of shim/config.c: the parsers of every TCPKEEP_* value (and of
 * libkeepalive's names), the connection filter, and tk_config_load() driven
 * through a fake getenv. See CONTRACT.md, "Environment" and "Bad input",
 * and issue 5. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "config.h"

#define SENTINEL_U64 0xdeadbeefcafef00dULL
#define SENTINEL_LONG -4242L

/* ---------------------------------------------------------------------------
 * Strings next to inaccessible pages, so that a parser reading one byte
 * before the string or past its terminating NUL faults at once. */

static char *guard_region; /* [PROT_NONE page][data page][PROT_NONE page] */
static size_t page_size;

static void guard_init(void)
{
    if (guard_region)
        return;
    page_size = (size_t)sysconf(_SC_PAGESIZE);
    void *p = mmap(NULL, 3 * page_size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(p != MAP_FAILED);
    guard_region = p;
    assert_int_equal(mprotect(guard_region, page_size, PROT_NONE), 0);
    assert_int_equal(mprotect(guard_region + 2 * page_size, page_size, PROT_NONE), 0);
}

/* A copy of s whose terminating NUL is the last readable byte. */
static const char *at_page_end(const char *s)
{
    guard_init();
    size_t len = strlen(s);
    assert_true(len + 1 <= page_size);
    char *dst = guard_region + 2 * page_size - (len + 1);
    memcpy(dst, s, len + 1);
    return dst;
}

/* A copy of s whose first byte is the first readable byte. */
static const char *at_page_start(const char *s)
{
    guard_init();
    size_t len = strlen(s);
    assert_true(len + 1 <= page_size);
    char *dst = guard_region + page_size;
    memcpy(dst, s, len + 1);
    return dst;
}

/* ---------------------------------------------------------------------------
 * Durations */

struct dur_case {
    const char *s;
    enum tk_parse_result r;
    uint64_t ms;
};

static void check_duration(const struct dur_case *t)
{
    uint64_t ms = SENTINEL_U64;
    enum tk_parse_result r = tk_parse_duration_ms(t->s, &ms);
    if (r != t->r)
        fail_msg("duration \"%s\": result %d, expected %d", t->s ? t->s : "(null)", r, t->r);
    if (t->r == TK_PARSE_OK) {
        if (ms != t->ms)
            fail_msg("duration \"%s\": %llu ms, expected %llu", t->s,
                     (unsigned long long)ms, (unsigned long long)t->ms);
    } else if (ms != SENTINEL_U64) {
        fail_msg("duration \"%s\": output written on failure", t->s ? t->s : "(null)");
    }
}

static void test_duration_good(void **state)
{
    (void)state;
    static const struct dur_case cases[] = {
        { "1500ms", TK_PARSE_OK, 1500 },
        { "30", TK_PARSE_OK, 30000 },
        { "30s", TK_PARSE_OK, 30000 },
        { "5m", TK_PARSE_OK, 300000 },
        { "1h", TK_PARSE_OK, 3600000 },
        { "0", TK_PARSE_OK, 0 },
        { "0ms", TK_PARSE_OK, 0 },
        { "0s", TK_PARSE_OK, 0 },
        { "0m", TK_PARSE_OK, 0 },
        { "0h", TK_PARSE_OK, 0 },
        { "1ms", TK_PARSE_OK, 1 },
        { "1", TK_PARSE_OK, 1000 },
        { "007s", TK_PARSE_OK, 7000 },
        { "00000000000000000000000000000001", TK_PARSE_OK, 1000 },
        { "250ms", TK_PARSE_OK, 250 },
        { "90m", TK_PARSE_OK, 5400000 },
        { "24h", TK_PARSE_OK, 86400000 },
        /* The largest value in each unit. */
        { "1000000000000ms", TK_PARSE_OK, TK_DURATION_MAX_MS },
        { "1000000000", TK_PARSE_OK, TK_DURATION_MAX_MS },
        { "1000000000s", TK_PARSE_OK, TK_DURATION_MAX_MS },
        { "16666666m", TK_PARSE_OK, 16666666ULL * 60000 },
        { "277777h", TK_PARSE_OK, 277777ULL * 3600000 },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        check_duration(&cases[i]);
}

static void test_duration_bad(void **state)
{
    (void)state;
    static const struct dur_case cases[] = {
        { "", TK_PARSE_BAD, 0 },
        { NULL, TK_PARSE_BAD, 0 },
        { "-1", TK_PARSE_BAD, 0 },
        { "-0", TK_PARSE_BAD, 0 },
        { "+5", TK_PARSE_BAD, 0 },
        { " 5", TK_PARSE_BAD, 0 },
        { "5 ", TK_PARSE_BAD, 0 },
        { "5 s", TK_PARSE_BAD, 0 },
        { "\t5", TK_PARSE_BAD, 0 },
        { "5\n", TK_PARSE_BAD, 0 },
        { "5x", TK_PARSE_BAD, 0 },
        { "5sec", TK_PARSE_BAD, 0 },
        { "5S", TK_PARSE_BAD, 0 },
        { "5MS", TK_PARSE_BAD, 0 },
        { "5H", TK_PARSE_BAD, 0 },
        { "5hh", TK_PARSE_BAD, 0 },
        { "5mss", TK_PARSE_BAD, 0 },
        { "5ms ", TK_PARSE_BAD, 0 },
        { "5us", TK_PARSE_BAD, 0 },
        { "5d", TK_PARSE_BAD, 0 },
        { "5m5s", TK_PARSE_BAD, 0 },
        { "1.5s", TK_PARSE_BAD, 0 },
        { "1,5s", TK_PARSE_BAD, 0 },
        { "1e3", TK_PARSE_BAD, 0 },
        { "0x10", TK_PARSE_BAD, 0 },
        { "s", TK_PARSE_BAD, 0 },
        { "ms", TK_PARSE_BAD, 0 },
        { "m", TK_PARSE_BAD, 0 },
        { "h", TK_PARSE_BAD, 0 },
        { "abc", TK_PARSE_BAD, 0 },
        { "\xef\xbc\x95", TK_PARSE_BAD, 0 }, /* a fullwidth digit five */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        check_duration(&cases[i]);
}

static void test_duration_range(void **state)
{
    (void)state;
    static const struct dur_case cases[] = {
        /* Overflowing uint64 outright. */
        { "99999999999999999999", TK_PARSE_RANGE, 0 },
        { "18446744073709551616", TK_PARSE_RANGE, 0 },
        { "99999999999999999999ms", TK_PARSE_RANGE, 0 },
        { "123456789012345678901234567890h", TK_PARSE_RANGE, 0 },
        /* Fitting uint64 but not the scale. */
        { "18446744073709551615", TK_PARSE_RANGE, 0 },
        { "18446744073709551615ms", TK_PARSE_RANGE, 0 },
        { "5124095576030432h", TK_PARSE_RANGE, 0 }, /* *3600000 wraps uint64 */
        /* Just above TK_DURATION_MAX_MS in each unit. */
        { "1000000000001ms", TK_PARSE_RANGE, 0 },
        { "1000000001", TK_PARSE_RANGE, 0 },
        { "1000000001s", TK_PARSE_RANGE, 0 },
        { "16666667m", TK_PARSE_RANGE, 0 },
        { "277778h", TK_PARSE_RANGE, 0 },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        check_duration(&cases[i]);
}

/* ---------------------------------------------------------------------------
 * Integers 1..127 (TCPKEEP_KEEPCNT) */

struct long_case {
    const char *s;
    enum tk_parse_result r;
    long v;
};

static void check_int(const struct long_case *t, long min, long max)
{
    long v = SENTINEL_LONG;
    enum tk_parse_result r = tk_parse_int_range(t->s, min, max, &v);
    if (r != t->r)
        fail_msg("int \"%s\" in %ld..%ld: result %d, expected %d", t->s ? t->s : "(null)",
                 min, max, r, t->r);
    if (t->r == TK_PARSE_OK && v != t->v)
        fail_msg("int \"%s\": %ld, expected %ld", t->s, v, t->v);
    if (t->r != TK_PARSE_OK && v != SENTINEL_LONG)
        fail_msg("int \"%s\": output written on failure", t->s ? t->s : "(null)");
}

static void test_int_range(void **state)
{
    (void)state;
    static const struct long_case cases[] = {
        { "1", TK_PARSE_OK, 1 },
        { "5", TK_PARSE_OK, 5 },
        { "127", TK_PARSE_OK, 127 },
        { "64", TK_PARSE_OK, 64 },
        /* Leading zeros are accepted, as for durations: the value is what counts. */
        { "007", TK_PARSE_OK, 7 },
        { "0127", TK_PARSE_OK, 127 },
        { "0000000000000000000000000000000000001", TK_PARSE_OK, 1 },
        { "0", TK_PARSE_RANGE, 0 },
        { "00", TK_PARSE_RANGE, 0 },
        { "128", TK_PARSE_RANGE, 0 },
        { "0128", TK_PARSE_RANGE, 0 },
        { "4294967297", TK_PARSE_RANGE, 0 }, /* 2^32 + 1: no truncation to 1 */
        { "18446744073709551617", TK_PARSE_RANGE, 0 }, /* 2^64 + 1 */
        { "99999999999999999999", TK_PARSE_RANGE, 0 },
        { "abc", TK_PARSE_BAD, 0 },
        { "", TK_PARSE_BAD, 0 },
        { NULL, TK_PARSE_BAD, 0 },
        { "-1", TK_PARSE_BAD, 0 },
        { "+1", TK_PARSE_BAD, 0 },
        { " 1", TK_PARSE_BAD, 0 },
        { "1 ", TK_PARSE_BAD, 0 },
        { "1s", TK_PARSE_BAD, 0 }, /* a count has no unit */
        { "1.0", TK_PARSE_BAD, 0 },
        { "0x7", TK_PARSE_BAD, 0 },
        { "5abc", TK_PARSE_BAD, 0 },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        check_int(&cases[i], 1, 127);
}

/* ---------------------------------------------------------------------------
 * Whole seconds 1..32767 (TCPKEEP_KEEPIDLE, TCPKEEP_KEEPINTVL) */

static void check_seconds(const struct long_case *t)
{
    long v = SENTINEL_LONG;
    enum tk_parse_result r = tk_parse_whole_seconds(t->s, 1, 32767, &v);
    if (r != t->r)
        fail_msg("seconds \"%s\": result %d, expected %d", t->s ? t->s : "(null)", r, t->r);
    if (t->r == TK_PARSE_OK && v != t->v)
        fail_msg("seconds \"%s\": %ld, expected %ld", t->s, v, t->v);
    if (t->r != TK_PARSE_OK && v != SENTINEL_LONG)
        fail_msg("seconds \"%s\": output written on failure", t->s ? t->s : "(null)");
}

static void test_whole_seconds(void **state)
{
    (void)state;
    static const struct long_case cases[] = {
        { "1", TK_PARSE_OK, 1 },
        { "60", TK_PARSE_OK, 60 },
        { "60s", TK_PARSE_OK, 60 },
        { "2m", TK_PARSE_OK, 120 },
        { "1h", TK_PARSE_OK, 3600 },
        { "9h", TK_PARSE_OK, 32400 },
        { "546m", TK_PARSE_OK, 32760 },
        { "1000ms", TK_PARSE_OK, 1 },
        { "32767000ms", TK_PARSE_OK, 32767 },
        { "32767", TK_PARSE_OK, 32767 },
        { "32767s", TK_PARSE_OK, 32767 },
        { "1500ms", TK_PARSE_RANGE, 0 },
        { "999ms", TK_PARSE_RANGE, 0 },
        { "1ms", TK_PARSE_RANGE, 0 },
        { "0", TK_PARSE_RANGE, 0 },
        { "0s", TK_PARSE_RANGE, 0 },
        { "0ms", TK_PARSE_RANGE, 0 },
        { "32768", TK_PARSE_RANGE, 0 },
        { "32768s", TK_PARSE_RANGE, 0 },
        { "547m", TK_PARSE_RANGE, 0 },
        { "10h", TK_PARSE_RANGE, 0 },
        { "4294967297", TK_PARSE_RANGE, 0 },
        { "99999999999999999999", TK_PARSE_RANGE, 0 },
        { "", TK_PARSE_BAD, 0 },
        { NULL, TK_PARSE_BAD, 0 },
        { "abc", TK_PARSE_BAD, 0 },
        { "-1", TK_PARSE_BAD, 0 },
        { "1.5", TK_PARSE_BAD, 0 },
        { "2 m", TK_PARSE_BAD, 0 },
        { "2min", TK_PARSE_BAD, 0 },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        check_seconds(&cases[i]);
}

/* ---------------------------------------------------------------------------
 * Switches and log levels */

static void test_switch(void **state)
{
    (void)state;
    static const struct { const char *s; int v; } good[] = {
        { "on", 1 }, { "1", 1 }, { "off", 0 }, { "0", 0 },
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        bool a = !good[i].v, b;
        assert_int_equal(tk_parse_switch(good[i].s, &a), TK_PARSE_OK);
        assert_int_equal(a, good[i].v);
        b = !good[i].v;
        assert_int_equal(tk_parse_switch(at_page_end(good[i].s), &b), TK_PARSE_OK);
        assert_int_equal(b, good[i].v);
    }
    static const char *const bad[] = {
        "ON", "Off", "OFF", "yes", "no", "true", "false", "", " on", "on ", "of", "onn",
        "01", "00", "2", "-1", "o", "offf",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        bool t = true, f = false;
        if (tk_parse_switch(bad[i], &t) == TK_PARSE_OK)
            fail_msg("switch \"%s\" accepted", bad[i]);
        assert_int_equal(tk_parse_switch(bad[i], &f), TK_PARSE_BAD);
        assert_true(t);  /* left alone */
        assert_false(f);
    }
    bool t = true;
    assert_int_equal(tk_parse_switch(NULL, &t), TK_PARSE_BAD);
    assert_true(t);
}

static void test_log_level(void **state)
{
    (void)state;
    static const struct { const char *s; enum tk_log_level v; } good[] = {
        { "error", TK_LOG_ERROR }, { "warn", TK_LOG_WARN },
        { "info", TK_LOG_INFO },   { "debug", TK_LOG_DEBUG },
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        enum tk_log_level l = (enum tk_log_level)99;
        assert_int_equal(tk_parse_log_level(good[i].s, &l), TK_PARSE_OK);
        assert_int_equal(l, good[i].v);
    }
    /* The order matters to the logger: a higher level says more. */
    assert_true(TK_LOG_ERROR < TK_LOG_WARN && TK_LOG_WARN < TK_LOG_INFO &&
                TK_LOG_INFO < TK_LOG_DEBUG);
    static const char *const bad[] = {
        "WARN", "Warn", "warning", "err", "errors", "", " info", "info ", "4", "0", "1",
        "trace", "debug\n", "inf",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        enum tk_log_level l = TK_LOG_INFO;
        if (tk_parse_log_level(bad[i], &l) != TK_PARSE_BAD)
            fail_msg("log level \"%s\" accepted", bad[i]);
        assert_int_equal(l, TK_LOG_INFO);
    }
    enum tk_log_level l = TK_LOG_INFO;
    assert_int_equal(tk_parse_log_level(NULL, &l), TK_PARSE_BAD);
    assert_int_equal(l, TK_LOG_INFO);
}

/* Every parser reads exactly the string: nothing before its first byte and
 * nothing past its NUL, whatever the input (an environment string can sit
 * at the start of a mapping). Each input is parsed from a copy that starts
 * right after an inaccessible page, then from one that ends right before
 * one: a read out of bounds faults, and the answers must match the
 * literal's. One test per parser, so that a failure names it. */
static const char *const bounds_inputs[] = {
    "", "0", "1", "5", "127", "128", "30s", "1500ms", "5m", "1h", "on", "off", "warn",
    "abc", "-1", " 5", "5 ", "5x", "99999999999999999999", "99999999999999999999ms",
    "18446744073709551616", "123456789012345678901234567890", "99999999999999999999x",
};
#define N_BOUNDS (sizeof(bounds_inputs) / sizeof(bounds_inputs[0]))

static const char *placed(size_t i, int where)
{
    return where ? at_page_start(bounds_inputs[i]) : at_page_end(bounds_inputs[i]);
}

static void test_duration_in_bounds(void **state)
{
    (void)state;
    for (int where = 0; where < 2; where++)
        for (size_t i = 0; i < N_BOUNDS; i++) {
            uint64_t a = 1, b = 1;
            assert_int_equal(tk_parse_duration_ms(placed(i, where), &a),
                             tk_parse_duration_ms(bounds_inputs[i], &b));
            assert_int_equal(a, b);
        }
}

static void test_int_in_bounds(void **state)
{
    (void)state;
    for (int where = 0; where < 2; where++)
        for (size_t i = 0; i < N_BOUNDS; i++) {
            long a = 1, b = 1;
            assert_int_equal(tk_parse_int_range(placed(i, where), 1, 127, &a),
                             tk_parse_int_range(bounds_inputs[i], 1, 127, &b));
            assert_int_equal(a, b);
        }
}

static void test_seconds_in_bounds(void **state)
{
    (void)state;
    for (int where = 0; where < 2; where++)
        for (size_t i = 0; i < N_BOUNDS; i++) {
            long a = 1, b = 1;
            assert_int_equal(tk_parse_whole_seconds(placed(i, where), 1, 32767, &a),
                             tk_parse_whole_seconds(bounds_inputs[i], 1, 32767, &b));
            assert_int_equal(a, b);
        }
}

static void test_switch_and_level_in_bounds(void **state)
{
    (void)state;
    for (int where = 0; where < 2; where++)
        for (size_t i = 0; i < N_BOUNDS; i++) {
            bool a = false, b = false;
            assert_int_equal(tk_parse_switch(placed(i, where), &a),
                             tk_parse_switch(bounds_inputs[i], &b));
            assert_int_equal(a, b);
            enum tk_log_level x = TK_LOG_WARN, y = TK_LOG_WARN;
            assert_int_equal(tk_parse_log_level(placed(i, where), &x),
                             tk_parse_log_level(bounds_inputs[i], &y));
            assert_int_equal(x, y);
        }
}

/* ---------------------------------------------------------------------------
 * The new words: TCPKEEP_ACTION, _ACTIVITY, _DIRECTION */

typedef enum tk_parse_result (*word_parser)(const char *, uint8_t *);

static void check_words(const char *what, word_parser parse, const char *const *good,
                        const uint8_t *values, size_t n_good, const char *const *bad,
                        size_t n_bad)
{
    for (size_t i = 0; i < n_good; i++) {
        uint8_t v = 0xee;
        if (parse(good[i], &v) != TK_PARSE_OK || v != values[i])
            fail_msg("%s \"%s\": not %u", what, good[i], values[i]);
        v = 0xee;
        assert_int_equal(parse(at_page_end(good[i]), &v), TK_PARSE_OK);
        assert_int_equal(v, values[i]);
        v = 0xee;
        assert_int_equal(parse(at_page_start(good[i]), &v), TK_PARSE_OK);
        assert_int_equal(v, values[i]);
    }
    for (size_t i = 0; i < n_bad; i++) {
        uint8_t v = 0xee;
        if (parse(bad[i], &v) != TK_PARSE_BAD)
            fail_msg("%s \"%s\" accepted", what, bad[i]);
        assert_int_equal(v, 0xee); /* left alone */
        assert_int_equal(parse(at_page_end(bad[i]), &v), TK_PARSE_BAD);
    }
    uint8_t v = 0xee;
    assert_int_equal(parse(NULL, &v), TK_PARSE_BAD);
    assert_int_equal(v, 0xee);
}

static void test_action_activity_direction(void **state)
{
    (void)state;
    static const char *const action_good[] = { "shutdown", "reset" };
    static const uint8_t action_values[] = { TK_ACTION_SHUTDOWN, TK_ACTION_RESET };
    static const char *const action_bad[] = {
        "", "Shutdown", "RESET", "reset ", " reset", "rst", "close", "shut", "resets", "0", "1",
    };
    check_words("action", tk_parse_action, action_good, action_values, 2, action_bad,
                sizeof(action_bad) / sizeof(action_bad[0]));

    static const char *const activity_good[] = { "both", "calls", "kernel" };
    static const uint8_t activity_values[] = { TK_ACTIVITY_BOTH, TK_ACTIVITY_CALLS,
                                               TK_ACTIVITY_KERNEL };
    static const char *const activity_bad[] = {
        "", "Both", "call", "kern", "any", "all", "calls,kernel", "kernel\n", "io",
    };
    check_words("activity", tk_parse_activity, activity_good, activity_values, 3,
                activity_bad, sizeof(activity_bad) / sizeof(activity_bad[0]));

    static const char *const direction_good[] = { "in", "out", "both" };
    static const uint8_t direction_values[] = { TK_DIR_IN, TK_DIR_OUT, TK_DIR_ANY };
    static const char *const direction_bad[] = {
        "", "IN", "inbound", "outbound", "any", "i", "o", "in,out", "in ", "accept",
    };
    check_words("direction", tk_parse_direction, direction_good, direction_values, 3,
                direction_bad, sizeof(direction_bad) / sizeof(direction_bad[0]));
    /* "both" is "not set": the filter's zero. */
    assert_int_equal(TK_DIR_ANY, 0);
}

/* ---------------------------------------------------------------------------
 * TCPKEEP_PORTS */

/* A match whose every byte is a marker, to see what a parser touched. */
static void marked(struct tk_match *m)
{
    memset(m, 0x5c, sizeof(*m));
}

static void assert_marked_except(const struct tk_match *m, const void *field, size_t size)
{
    struct tk_match ref;
    marked(&ref);
    const unsigned char *a = (const void *)m, *b = (const void *)&ref;
    size_t lo = (size_t)((const unsigned char *)field - a);
    for (size_t i = 0; i < sizeof(*m); i++)
        if ((i < lo || i >= lo + size) && a[i] != b[i])
            fail_msg("byte %zu of the match changed", i);
}

struct ports_case {
    const char *s;
    enum tk_parse_result r;
    unsigned n;
    struct tk_port_range want[4];
};

static void test_ports(void **state)
{
    (void)state;
    static const struct ports_case cases[] = {
        { "80", TK_PARSE_OK, 1, { { 80, 80 } } },
        { "80,443,8000-8100", TK_PARSE_OK, 3, { { 80, 80 }, { 443, 443 }, { 8000, 8100 } } },
        { "1-65535", TK_PARSE_OK, 1, { { 1, 65535 } } },
        { "65535", TK_PARSE_OK, 1, { { 65535, 65535 } } },
        { "1", TK_PARSE_OK, 1, { { 1, 1 } } },
        { "22-22", TK_PARSE_OK, 1, { { 22, 22 } } },
        { "0080", TK_PARSE_OK, 1, { { 80, 80 } } }, /* leading zeros, as everywhere */
        { "443,80", TK_PARSE_OK, 2, { { 443, 443 }, { 80, 80 } } },
        { "80,80", TK_PARSE_OK, 2, { { 80, 80 }, { 80, 80 } } },
        { "", TK_PARSE_BAD, 0, { { 0 } } },
        { ",", TK_PARSE_BAD, 0, { { 0 } } },
        { "80,", TK_PARSE_BAD, 0, { { 0 } } },
        { ",80", TK_PARSE_BAD, 0, { { 0 } } },
        { "80,,443", TK_PARSE_BAD, 0, { { 0 } } },
        { " 80", TK_PARSE_BAD, 0, { { 0 } } },
        { "80 ", TK_PARSE_BAD, 0, { { 0 } } },
        { "80, 443", TK_PARSE_BAD, 0, { { 0 } } },
        { "80 443", TK_PARSE_BAD, 0, { { 0 } } },
        { "80;443", TK_PARSE_BAD, 0, { { 0 } } },
        { "80-", TK_PARSE_BAD, 0, { { 0 } } },
        { "-80", TK_PARSE_BAD, 0, { { 0 } } },
        { "-", TK_PARSE_BAD, 0, { { 0 } } },
        { "80--90", TK_PARSE_BAD, 0, { { 0 } } },
        { "80-90-100", TK_PARSE_BAD, 0, { { 0 } } },
        { "80 - 90", TK_PARSE_BAD, 0, { { 0 } } },
        { "http", TK_PARSE_BAD, 0, { { 0 } } },
        { "8o", TK_PARSE_BAD, 0, { { 0 } } },
        { "0x50", TK_PARSE_BAD, 0, { { 0 } } },
        { "+80", TK_PARSE_BAD, 0, { { 0 } } },
        { "80:90", TK_PARSE_BAD, 0, { { 0 } } },
        { "80,70000,abc", TK_PARSE_BAD, 0, { { 0 } } }, /* syntax wins over range */
        { "99999999999999999999x", TK_PARSE_BAD, 0, { { 0 } } },
        { "0", TK_PARSE_RANGE, 0, { { 0 } } },
        { "65536", TK_PARSE_RANGE, 0, { { 0 } } },
        { "70000", TK_PARSE_RANGE, 0, { { 0 } } },
        { "80,0", TK_PARSE_RANGE, 0, { { 0 } } },
        { "0-10", TK_PARSE_RANGE, 0, { { 0 } } },
        { "100-99", TK_PARSE_RANGE, 0, { { 0 } } },
        { "1-65536", TK_PARSE_RANGE, 0, { { 0 } } },
        { "4294967376", TK_PARSE_RANGE, 0, { { 0 } } }, /* 2^32 + 80: no wrap to 80 */
        { "65616", TK_PARSE_RANGE, 0, { { 0 } } },      /* 2^16 + 80 */
        { "99999999999999999999", TK_PARSE_RANGE, 0, { { 0 } } },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct ports_case *t = &cases[i];
        for (int where = 0; where < 2; where++) {
            struct tk_match m;
            marked(&m);
            const char *s = where ? at_page_start(t->s) : at_page_end(t->s);
            enum tk_parse_result r = tk_parse_ports(s, &m);
            if (r != t->r)
                fail_msg("ports \"%s\": result %d, expected %d", t->s, r, t->r);
            if (r != TK_PARSE_OK) {
                assert_marked_except(&m, &m, 0); /* untouched */
                continue;
            }
            assert_int_equal(m.n_ports, t->n);
            for (unsigned k = 0; k < t->n; k++) {
                assert_int_equal(m.ports[k].lo, t->want[k].lo);
                assert_int_equal(m.ports[k].hi, t->want[k].hi);
            }
            /* Only the ports changed: peers and direction are other variables'. */
            struct tk_match ref;
            marked(&ref);
            assert_int_equal(m.n_peers, ref.n_peers);
            assert_int_equal(m.direction, ref.direction);
            assert_memory_equal(m.peers, ref.peers, sizeof(m.peers));
            assert_memory_equal(&m.ports[t->n], &ref.ports[t->n],
                                (TK_MATCH_PORTS_MAX - t->n) * sizeof(m.ports[0]));
        }
    }
    struct tk_match m;
    marked(&m);
    assert_int_equal(tk_parse_ports(NULL, &m), TK_PARSE_BAD);
    assert_marked_except(&m, &m, 0);
}

static void test_ports_limit(void **state)
{
    (void)state;
    char list[512] = "";
    size_t len = 0;
    for (int i = 1; i <= TK_MATCH_PORTS_MAX; i++)
        len += (size_t)snprintf(list + len, sizeof(list) - len, "%s%d", i > 1 ? "," : "",
                                1000 + i);
    struct tk_match m = { 0 };
    assert_int_equal(tk_parse_ports(list, &m), TK_PARSE_OK);
    assert_int_equal(m.n_ports, TK_MATCH_PORTS_MAX);
    assert_int_equal(m.ports[TK_MATCH_PORTS_MAX - 1].lo, 1000 + TK_MATCH_PORTS_MAX);
    snprintf(list + len, sizeof(list) - len, ",2000");
    marked(&m);
    assert_int_equal(tk_parse_ports(list, &m), TK_PARSE_RANGE);
    assert_marked_except(&m, &m, 0);
}

/* ---------------------------------------------------------------------------
 * TCPKEEP_PEERS */

struct cidr_want {
    int family;
    unsigned prefix;
    const char *addr; /* as inet_pton reads it in that family */
};

struct peers_case {
    const char *s;
    enum tk_parse_result r;
    unsigned n;
    struct cidr_want want[3];
};

static void assert_cidr(const struct tk_cidr *c, const struct cidr_want *w, const char *s)
{
    uint8_t addr[16] = { 0 };
    assert_int_equal(inet_pton(w->family, w->addr, addr), 1);
    if (c->family != w->family || c->prefix != w->prefix ||
        memcmp(c->addr, addr, sizeof(addr)) != 0) {
        char got[INET6_ADDRSTRLEN] = "?";
        inet_ntop(c->family == AF_INET ? AF_INET : AF_INET6, c->addr, got, sizeof(got));
        fail_msg("peers \"%s\": got family %d %s/%u, expected %d %s/%u", s, c->family, got,
                 c->prefix, w->family, w->addr, w->prefix);
    }
}

static void test_peers(void **state)
{
    (void)state;
    static const struct peers_case cases[] = {
        { "10.0.0.0/8", TK_PARSE_OK, 1, { { AF_INET, 8, "10.0.0.0" } } },
        { "192.0.2.7", TK_PARSE_OK, 1, { { AF_INET, 32, "192.0.2.7" } } },
        { "::1/128", TK_PARSE_OK, 1, { { AF_INET6, 128, "::1" } } },
        { "::1", TK_PARSE_OK, 1, { { AF_INET6, 128, "::1" } } },
        { "10.0.0.0/8,::1/128,192.0.2.7", TK_PARSE_OK, 3,
          { { AF_INET, 8, "10.0.0.0" }, { AF_INET6, 128, "::1" },
            { AF_INET, 32, "192.0.2.7" } } },
        { "2001:db8::/32", TK_PARSE_OK, 1, { { AF_INET6, 32, "2001:db8::" } } },
        { "0.0.0.0/0", TK_PARSE_OK, 1, { { AF_INET, 0, "0.0.0.0" } } },
        { "::/0", TK_PARSE_OK, 1, { { AF_INET6, 0, "::" } } },
        { "10.0.0.0/08", TK_PARSE_OK, 1, { { AF_INET, 8, "10.0.0.0" } } },
        /* Host bits past the prefix are dropped. */
        { "10.1.2.3/8", TK_PARSE_OK, 1, { { AF_INET, 8, "10.0.0.0" } } },
        { "10.255.255.255/9", TK_PARSE_OK, 1, { { AF_INET, 9, "10.128.0.0" } } },
        { "192.168.1.77/0", TK_PARSE_OK, 1, { { AF_INET, 0, "0.0.0.0" } } },
        { "2001:db8:ffff::1/33", TK_PARSE_OK, 1, { { AF_INET6, 33, "2001:db8:8000::" } } },
        { "fe80::1:2:3:4/64", TK_PARSE_OK, 1, { { AF_INET6, 64, "fe80::" } } },
        /* IPv4-mapped: stored as the IPv4 CIDR. */
        { "::ffff:10.0.0.0/104", TK_PARSE_OK, 1, { { AF_INET, 8, "10.0.0.0" } } },
        { "::ffff:192.0.2.7", TK_PARSE_OK, 1, { { AF_INET, 32, "192.0.2.7" } } },
        { "::ffff:192.0.2.7/128", TK_PARSE_OK, 1, { { AF_INET, 32, "192.0.2.7" } } },
        { "::ffff:0:0/96", TK_PARSE_OK, 1, { { AF_INET, 0, "0.0.0.0" } } },
        { "::ffff:c000:0207", TK_PARSE_OK, 1, { { AF_INET, 32, "192.0.2.7" } } },
        { "::ffff:10.1.2.3/104", TK_PARSE_OK, 1, { { AF_INET, 8, "10.0.0.0" } } },
        /* Shorter than the mapped block: it holds more than IPv4, stays IPv6. */
        { "::ffff:0:0/95", TK_PARSE_OK, 1, { { AF_INET6, 95, "::fffe:0:0" } } },
        /* The old IPv4-compatible form is not the mapped one. */
        { "::10.0.0.1", TK_PARSE_OK, 1, { { AF_INET6, 128, "::10.0.0.1" } } },
        { "", TK_PARSE_BAD, 0, { { 0 } } },
        { ",", TK_PARSE_BAD, 0, { { 0 } } },
        { "10.0.0.0/8,", TK_PARSE_BAD, 0, { { 0 } } },
        { ",::1", TK_PARSE_BAD, 0, { { 0 } } },
        { "10.0.0.0/8,,::1", TK_PARSE_BAD, 0, { { 0 } } },
        { "10.0.0.0/", TK_PARSE_BAD, 0, { { 0 } } },
        { "/8", TK_PARSE_BAD, 0, { { 0 } } },
        { "10.0.0/8", TK_PARSE_BAD, 0, { { 0 } } },
        { "10.0.0.256", TK_PARSE_BAD, 0, { { 0 } } },
        { "10.0.0.0/8/8", TK_PARSE_BAD, 0, { { 0 } } },
        { "10.0.0.0 /8", TK_PARSE_BAD, 0, { { 0 } } },
        { "10.0.0.0/ 8", TK_PARSE_BAD, 0, { { 0 } } },
        { " 10.0.0.0/8", TK_PARSE_BAD, 0, { { 0 } } },
        { "10.0.0.0/8 ", TK_PARSE_BAD, 0, { { 0 } } },
        { "10.0.0.0/+8", TK_PARSE_BAD, 0, { { 0 } } },
        { "10.0.0.0/-1", TK_PARSE_BAD, 0, { { 0 } } },
        { "10.0.0.0/0x8", TK_PARSE_BAD, 0, { { 0 } } },
        { "::1/12a", TK_PARSE_BAD, 0, { { 0 } } },
        { "fe80::1%eth0", TK_PARSE_BAD, 0, { { 0 } } },
        { "[::1]", TK_PARSE_BAD, 0, { { 0 } } },
        { "::1::2", TK_PARSE_BAD, 0, { { 0 } } },
        { ":::", TK_PARSE_BAD, 0, { { 0 } } },
        { "localhost", TK_PARSE_BAD, 0, { { 0 } } },
        { "10.0.0.0/33,bogus", TK_PARSE_BAD, 0, { { 0 } } },
        { "1111:2222:3333:4444:5555:6666:7777:8888:9999:aaaa:bbbb:cccc:dddd:eeee:ffff",
          TK_PARSE_BAD, 0, { { 0 } } },
        { "10.0.0.0/33", TK_PARSE_RANGE, 0, { { 0 } } },
        { "10.0.0.0/99999999999999999999", TK_PARSE_RANGE, 0, { { 0 } } },
        { "::1/129", TK_PARSE_RANGE, 0, { { 0 } } },
        { "::ffff:10.0.0.0/129", TK_PARSE_RANGE, 0, { { 0 } } },
        { "::1/128,10.0.0.0/4294967304", TK_PARSE_RANGE, 0, { { 0 } } }, /* 2^32 + 8 */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct peers_case *t = &cases[i];
        for (int where = 0; where < 2; where++) {
            struct tk_match m;
            marked(&m);
            const char *s = where ? at_page_start(t->s) : at_page_end(t->s);
            enum tk_parse_result r = tk_parse_peers(s, &m);
            if (r != t->r)
                fail_msg("peers \"%s\": result %d, expected %d", t->s, r, t->r);
            if (r != TK_PARSE_OK) {
                assert_marked_except(&m, &m, 0);
                continue;
            }
            assert_int_equal(m.n_peers, t->n);
            for (unsigned k = 0; k < t->n; k++)
                assert_cidr(&m.peers[k], &t->want[k], t->s);
            struct tk_match ref;
            marked(&ref);
            assert_int_equal(m.n_ports, ref.n_ports);
            assert_int_equal(m.direction, ref.direction);
            assert_memory_equal(m.ports, ref.ports, sizeof(m.ports));
        }
    }
    struct tk_match m;
    marked(&m);
    assert_int_equal(tk_parse_peers(NULL, &m), TK_PARSE_BAD);
    assert_marked_except(&m, &m, 0);
}

static void test_peers_limit(void **state)
{
    (void)state;
    char list[2048] = "";
    size_t len = 0;
    for (int i = 0; i < TK_MATCH_PEERS_MAX; i++)
        len += (size_t)snprintf(list + len, sizeof(list) - len, "%s%s", i ? "," : "",
                                i % 2 ? "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255/128"
                                      : "255.255.255.255/32");
    struct tk_match m = { 0 };
    assert_int_equal(tk_parse_peers(list, &m), TK_PARSE_OK);
    assert_int_equal(m.n_peers, TK_MATCH_PEERS_MAX);
    assert_int_equal(m.peers[TK_MATCH_PEERS_MAX - 1].family, AF_INET6);
    snprintf(list + len, sizeof(list) - len, ",::1");
    marked(&m);
    assert_int_equal(tk_parse_peers(list, &m), TK_PARSE_RANGE);
    assert_marked_except(&m, &m, 0);
}

/* ---------------------------------------------------------------------------
 * tk_conn_key_set and tk_match_conn */

static struct sockaddr_storage sa4(const char *addr, uint16_t port)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *in = (struct sockaddr_in *)&ss;
    in->sin_family = AF_INET;
    in->sin_port = htons(port);
    assert_int_equal(inet_pton(AF_INET, addr, &in->sin_addr), 1);
    return ss;
}

static struct sockaddr_storage sa6(const char *addr, uint16_t port)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port);
    assert_int_equal(inet_pton(AF_INET6, addr, &in6->sin6_addr), 1);
    return ss;
}

#define SA(ss) ((const struct sockaddr *)&(ss))

static void test_conn_key_set(void **state)
{
    (void)state;
    struct tk_conn_key k;
    struct sockaddr_storage local = sa4("127.0.0.1", 8080), peer = sa4("192.0.2.7", 55555);
    uint8_t want[16] = { 192, 0, 2, 7 };

    memset(&k, 0xa5, sizeof(k));
    tk_conn_key_set(&k, TK_DIR_IN, SA(local), SA(peer));
    assert_int_equal(k.direction, TK_DIR_IN);
    assert_int_equal(k.server_port, 8080); /* accepted: ours is the server's port */
    assert_int_equal(k.peer_family, AF_INET);
    assert_memory_equal(k.peer_addr, want, 16);

    memset(&k, 0xa5, sizeof(k));
    tk_conn_key_set(&k, TK_DIR_OUT, SA(local), SA(peer));
    assert_int_equal(k.direction, TK_DIR_OUT);
    assert_int_equal(k.server_port, 55555); /* made: the peer is the server */
    assert_int_equal(k.peer_family, AF_INET);

    /* IPv6, and IPv4-mapped IPv6 turned into IPv4. */
    struct sockaddr_storage l6 = sa6("::1", 443), p6 = sa6("2001:db8::42", 40000);
    memset(&k, 0xa5, sizeof(k));
    tk_conn_key_set(&k, TK_DIR_IN, SA(l6), SA(p6));
    assert_int_equal(k.server_port, 443);
    assert_int_equal(k.peer_family, AF_INET6);
    uint8_t want6[16];
    inet_pton(AF_INET6, "2001:db8::42", want6);
    assert_memory_equal(k.peer_addr, want6, 16);

    struct sockaddr_storage mapped = sa6("::ffff:192.0.2.7", 6379);
    memset(&k, 0xa5, sizeof(k));
    tk_conn_key_set(&k, TK_DIR_OUT, SA(l6), SA(mapped));
    assert_int_equal(k.server_port, 6379);
    assert_int_equal(k.peer_family, AF_INET);
    assert_memory_equal(k.peer_addr, want, 16); /* the rest zeroed */

    /* Unknown: NULL, or not an internet address. */
    memset(&k, 0xa5, sizeof(k));
    tk_conn_key_set(&k, TK_DIR_IN, NULL, NULL);
    assert_int_equal(k.direction, TK_DIR_IN);
    assert_int_equal(k.server_port, 0);
    assert_int_equal(k.peer_family, 0);
    uint8_t zero[16] = { 0 };
    assert_memory_equal(k.peer_addr, zero, 16);

    struct sockaddr_un un = { .sun_family = AF_UNIX, .sun_path = "/tmp/x" };
    memset(&k, 0xa5, sizeof(k));
    tk_conn_key_set(&k, TK_DIR_OUT, SA(local), (const struct sockaddr *)&un);
    assert_int_equal(k.server_port, 0);
    assert_int_equal(k.peer_family, 0);
    assert_memory_equal(k.peer_addr, zero, 16);

    memset(&k, 0xa5, sizeof(k));
    tk_conn_key_set(&k, TK_DIR_IN, (const struct sockaddr *)&un, SA(peer));
    assert_int_equal(k.server_port, 0);
    assert_int_equal(k.peer_family, AF_INET);

    /* A listener (no peer yet) still has its port. */
    memset(&k, 0xa5, sizeof(k));
    tk_conn_key_set(&k, TK_DIR_IN, SA(local), NULL);
    assert_int_equal(k.server_port, 8080);
    assert_int_equal(k.peer_family, 0);
}

static struct tk_conn_key key_for(uint8_t dir, const struct sockaddr_storage *peer,
                                  uint16_t server_port)
{
    struct tk_conn_key k;
    struct sockaddr_storage local = sa4("127.0.0.1", server_port);
    struct sockaddr_storage p = *peer;
    if (dir == TK_DIR_OUT) { /* the server's port is the peer's */
        if (p.ss_family == AF_INET)
            ((struct sockaddr_in *)&p)->sin_port = htons(server_port);
        else
            ((struct sockaddr_in6 *)&p)->sin6_port = htons(server_port);
    }
    tk_conn_key_set(&k, dir, SA(local), SA(p));
    assert_int_equal(k.server_port, server_port);
    return k;
}

static struct tk_match match_of(const char *ports, const char *peers, const char *direction)
{
    struct tk_match m;
    memset(&m, 0, sizeof(m));
    if (ports)
        assert_int_equal(tk_parse_ports(ports, &m), TK_PARSE_OK);
    if (peers)
        assert_int_equal(tk_parse_peers(peers, &m), TK_PARSE_OK);
    if (direction)
        assert_int_equal(tk_parse_direction(direction, &m.direction), TK_PARSE_OK);
    return m;
}

static void test_match_conn(void **state)
{
    (void)state;
    struct sockaddr_storage v4 = sa4("10.1.2.3", 0), other4 = sa4("11.0.0.1", 0);
    struct sockaddr_storage v6 = sa6("::1", 0), other6 = sa6("2001:db8::1", 0);
    struct sockaddr_storage mapped = sa6("::ffff:10.1.2.3", 0);
    struct tk_conn_key unknown;
    tk_conn_key_set(&unknown, TK_DIR_IN, NULL, NULL);

    /* Nothing set: everything matches, an unknown peer too. */
    struct tk_match any = match_of(NULL, NULL, NULL);
    struct tk_conn_key k = key_for(TK_DIR_IN, &v4, 80);
    assert_true(tk_match_conn(&any, &k));
    assert_true(tk_match_conn(&any, &unknown));
    k = key_for(TK_DIR_OUT, &v6, 1);
    assert_true(tk_match_conn(&any, &k));
    any = match_of(NULL, NULL, "both");
    assert_true(tk_match_conn(&any, &k));

    /* Ports and ranges, inclusive. */
    struct tk_match ports = match_of("80,443,8000-8100", NULL, NULL);
    static const struct { uint16_t port; bool in; } port_cases[] = {
        { 80, true }, { 443, true }, { 8000, true }, { 8050, true }, { 8100, true },
        { 79, false }, { 81, false }, { 7999, false }, { 8101, false }, { 0, false },
        { 65535, false },
    };
    for (size_t i = 0; i < sizeof(port_cases) / sizeof(port_cases[0]); i++)
        for (uint8_t dir = TK_DIR_IN; dir <= TK_DIR_OUT; dir++) {
            k = key_for(dir, &v4, port_cases[i].port);
            if (tk_match_conn(&ports, &k) != port_cases[i].in)
                fail_msg("port %u (dir %u): not %d", port_cases[i].port, dir,
                         port_cases[i].in);
        }
    assert_false(tk_match_conn(&ports, &unknown)); /* port unknown: 0 */

    /* Direction. */
    struct tk_match in = match_of(NULL, NULL, "in"), out = match_of(NULL, NULL, "out");
    k = key_for(TK_DIR_IN, &v4, 80);
    assert_true(tk_match_conn(&in, &k));
    assert_false(tk_match_conn(&out, &k));
    k = key_for(TK_DIR_OUT, &v4, 80);
    assert_false(tk_match_conn(&in, &k));
    assert_true(tk_match_conn(&out, &k));

    /* Peers: the family must agree; IPv4-mapped peers are IPv4. */
    struct tk_match p4 = match_of(NULL, "10.0.0.0/8", NULL);
    struct tk_match p6 = match_of(NULL, "::1/128", NULL);
    struct tk_match all6 = match_of(NULL, "::/0", NULL);
    struct tk_match all4 = match_of(NULL, "0.0.0.0/0", NULL);
    struct tk_match mapped_cidr = match_of(NULL, "::ffff:10.0.0.0/104", NULL);
    k = key_for(TK_DIR_IN, &v4, 80);
    assert_true(tk_match_conn(&p4, &k));
    assert_false(tk_match_conn(&p6, &k));
    assert_false(tk_match_conn(&all6, &k));
    assert_true(tk_match_conn(&all4, &k));
    assert_true(tk_match_conn(&mapped_cidr, &k));
    k = key_for(TK_DIR_IN, &other4, 80);
    assert_false(tk_match_conn(&p4, &k));
    assert_true(tk_match_conn(&all4, &k));
    k = key_for(TK_DIR_IN, &mapped, 80);
    assert_true(tk_match_conn(&p4, &k));
    assert_true(tk_match_conn(&mapped_cidr, &k));
    assert_false(tk_match_conn(&all6, &k));
    k = key_for(TK_DIR_IN, &v6, 80);
    assert_true(tk_match_conn(&p6, &k));
    assert_true(tk_match_conn(&all6, &k));
    assert_false(tk_match_conn(&p4, &k));
    assert_false(tk_match_conn(&all4, &k));
    k = key_for(TK_DIR_IN, &other6, 80);
    assert_false(tk_match_conn(&p6, &k));
    assert_true(tk_match_conn(&all6, &k));
    /* An unknown peer is in no list, not even the widest. */
    assert_false(tk_match_conn(&all4, &unknown));
    assert_false(tk_match_conn(&all6, &unknown));

    /* Prefixes that end inside a byte. */
    struct tk_match half = match_of(NULL, "10.0.0.0/9,2001:db8::/33", NULL);
    static const struct { const char *addr; bool in; } prefix_cases[] = {
        { "10.0.0.0", true }, { "10.127.255.255", true }, { "10.128.0.0", false },
        { "9.255.255.255", false }, { "2001:db8::", true },
        { "2001:db8:7fff:ffff::1", true }, { "2001:db8:8000::", false },
        { "2001:db9::", false },
    };
    for (size_t i = 0; i < sizeof(prefix_cases) / sizeof(prefix_cases[0]); i++) {
        struct sockaddr_storage ss = strchr(prefix_cases[i].addr, ':')
                                         ? sa6(prefix_cases[i].addr, 0)
                                         : sa4(prefix_cases[i].addr, 0);
        k = key_for(TK_DIR_OUT, &ss, 80);
        if (tk_match_conn(&half, &k) != prefix_cases[i].in)
            fail_msg("peer %s: not %d", prefix_cases[i].addr, prefix_cases[i].in);
    }

    /* Every part set must match. */
    struct tk_match all = match_of("6379", "10.0.0.0/8,::1", "out");
    k = key_for(TK_DIR_OUT, &v4, 6379);
    assert_true(tk_match_conn(&all, &k));
    k = key_for(TK_DIR_OUT, &v6, 6379);
    assert_true(tk_match_conn(&all, &k));
    k = key_for(TK_DIR_IN, &v4, 6379);
    assert_false(tk_match_conn(&all, &k));
    k = key_for(TK_DIR_OUT, &v4, 6380);
    assert_false(tk_match_conn(&all, &k));
    k = key_for(TK_DIR_OUT, &other4, 6379);
    assert_false(tk_match_conn(&all, &k));
}

/* ---------------------------------------------------------------------------
 * tk_config_load through a fake environment */

/* Every variable, in the order tk_config_load reads them: ours, then
 * libkeepalive's (each read only when our twin is unset). */
#define N_OURS 23
#define N_VARS 27
static const char *const var_names[N_VARS] = {
    "TCPKEEP_IDLE_TIMEOUT", "TCPKEEP_READ_TIMEOUT", "TCPKEEP_WRITE_TIMEOUT",
    "TCPKEEP_FIRST_BYTE_TIMEOUT", "TCPKEEP_HALF_CLOSED_TIMEOUT", "TCPKEEP_MAX_LIFETIME",
    "TCPKEEP_MAX_LIFETIME_JITTER", "TCPKEEP_ACTION", "TCPKEEP_ACTIVITY", "TCPKEEP_DIRECTION",
    "TCPKEEP_OVERRIDE", "TCPKEEP_DRY_RUN", "TCPKEEP_PORTS", "TCPKEEP_PEERS", "TCPKEEP_CONFIG",
    "TCPKEEP_STATS", "TCPKEEP_KEEPALIVE", "TCPKEEP_KEEPIDLE", "TCPKEEP_KEEPINTVL",
    "TCPKEEP_KEEPCNT", "TCPKEEP_USER_TIMEOUT", "TCPKEEP_LOG", "TCPKEEP_LOG_LEVEL",
    "KEEPALIVE", "KEEPIDLE", "KEEPINTVL", "KEEPCNT",
};

static const char *fake_env[N_VARS]; /* value per var_names[i], NULL = unset */
static unsigned env_asked[N_VARS];
static unsigned env_asked_other;
static int asked_order[64];
static unsigned n_asked;

static const char *fake_getenv(const char *name)
{
    for (int i = 0; i < N_VARS; i++) {
        if (strcmp(name, var_names[i]) == 0) {
            env_asked[i]++;
            if (n_asked < sizeof(asked_order) / sizeof(asked_order[0]))
                asked_order[n_asked++] = i;
            return fake_env[i];
        }
    }
    env_asked_other++;
    return NULL;
}

static int var_index(const char *name)
{
    for (int i = 0; i < N_VARS; i++)
        if (strcmp(name, var_names[i]) == 0)
            return i;
    fail_msg("no such variable %s", name);
    return -1;
}

static void env_set(const char *name, const char *value)
{
    fake_env[var_index(name)] = value;
}

struct report {
    char var[64];
    const char *value_ptr;
    char value[8192];
    char expected[256];
};

#define MAX_REPORTS 32
struct reports {
    int n;
    struct report r[MAX_REPORTS];
};

static void record_report(const char *var, const char *value, const char *expected, void *ctx)
{
    struct reports *rs = ctx;
    assert_non_null(var);
    assert_non_null(value);
    assert_non_null(expected);
    assert_true(rs->n < MAX_REPORTS);
    struct report *r = &rs->r[rs->n++];
    snprintf(r->var, sizeof(r->var), "%s", var);
    r->value_ptr = value;
    snprintf(r->value, sizeof(r->value), "%s", value);
    snprintf(r->expected, sizeof(r->expected), "%s", expected);
}

static int env_setup(void **state)
{
    (void)state;
    memset(fake_env, 0, sizeof(fake_env));
    memset(env_asked, 0, sizeof(env_asked));
    env_asked_other = 0;
    n_asked = 0;
    return 0;
}

/* Loads the fake environment into *cfg (cleared of reports first). */
static int load(struct tk_config *cfg, struct reports *rs)
{
    memset(rs, 0, sizeof(*rs));
    memset(env_asked, 0, sizeof(env_asked));
    env_asked_other = 0;
    n_asked = 0;
    return tk_config_load(cfg, fake_getenv, record_report, rs);
}

static void assert_default_settings(const struct tk_settings *s)
{
    assert_int_equal(s->idle_ms, 0);
    assert_int_equal(s->read_ms, 0);
    assert_int_equal(s->write_ms, 0);
    assert_int_equal(s->first_byte_ms, 0);
    assert_int_equal(s->half_closed_ms, 0);
    assert_int_equal(s->lifetime_ms, 0);
    assert_int_equal(s->lifetime_jitter, 0);
    assert_int_equal(s->user_timeout_ms, 0);
    assert_int_equal(s->keepidle_s, 0);
    assert_int_equal(s->keepintvl_s, 0);
    assert_int_equal(s->keepcnt, 0);
    assert_true(s->keepalive);
    assert_false(s->override);
    assert_false(s->dry_run);
    assert_int_equal(s->action, TK_ACTION_SHUTDOWN);
}

static void assert_defaults(const struct tk_config *c)
{
    assert_default_settings(&c->set);
    assert_int_equal(c->filter.n_ports, 0);
    assert_int_equal(c->filter.n_peers, 0);
    assert_int_equal(c->filter.direction, TK_DIR_ANY);
    assert_false(c->has_filter);
    assert_int_equal(c->activity, TK_ACTIVITY_BOTH);
    assert_int_equal(c->log_level, TK_LOG_WARN);
    assert_string_equal(c->log_dest, "stderr");
    assert_string_equal(c->config_path, "");
    assert_string_equal(c->stats_path, "");
}

static void test_load_defaults(void **state)
{
    (void)state;
    struct tk_config cfg;
    struct reports rs;
    memset(&cfg, 0xa5, sizeof(cfg)); /* garbage in: every field must be set */
    assert_int_equal(load(&cfg, &rs), 0);
    assert_int_equal(rs.n, 0);
    assert_defaults(&cfg);
    /* Every documented variable was looked up, once, in the documented
     * order, and nothing else. */
    for (int i = 0; i < N_VARS; i++)
        if (env_asked[i] != 1)
            fail_msg("%s looked up %u times", var_names[i], env_asked[i]);
    assert_int_equal(env_asked_other, 0);
    assert_int_equal(n_asked, N_VARS);
    for (int i = 0; i < N_VARS; i++)
        if (asked_order[i] != i)
            fail_msg("lookup %d was %s, expected %s", i, var_names[asked_order[i]],
                     var_names[i]);

    struct tk_config d;
    memset(&d, 0x5a, sizeof(d));
    tk_config_defaults(&d);
    assert_defaults(&d);
}

static void test_load_all_good(void **state)
{
    (void)state;
    struct tk_config cfg;
    struct reports rs;
    env_set("TCPKEEP_IDLE_TIMEOUT", "1500ms");
    env_set("TCPKEEP_READ_TIMEOUT", "30s");
    env_set("TCPKEEP_WRITE_TIMEOUT", "2m");
    env_set("TCPKEEP_FIRST_BYTE_TIMEOUT", "5");
    env_set("TCPKEEP_HALF_CLOSED_TIMEOUT", "250ms");
    env_set("TCPKEEP_MAX_LIFETIME", "1h");
    env_set("TCPKEEP_MAX_LIFETIME_JITTER", "10");
    env_set("TCPKEEP_ACTION", "reset");
    env_set("TCPKEEP_ACTIVITY", "calls");
    env_set("TCPKEEP_DIRECTION", "in");
    env_set("TCPKEEP_OVERRIDE", "on");
    env_set("TCPKEEP_DRY_RUN", "1");
    env_set("TCPKEEP_PORTS", "80,443,8000-8100");
    env_set("TCPKEEP_PEERS", "10.0.0.0/8,::1/128");
    env_set("TCPKEEP_CONFIG", "/etc/tcpkeep/rules");
    env_set("TCPKEEP_STATS", "/run/tcpkeep/%p.json");
    env_set("TCPKEEP_KEEPALIVE", "off");
    env_set("TCPKEEP_KEEPIDLE", "2m");
    env_set("TCPKEEP_KEEPINTVL", "15");
    env_set("TCPKEEP_KEEPCNT", "5");
    env_set("TCPKEEP_USER_TIMEOUT", "30s");
    env_set("TCPKEEP_LOG", "/var/log/app tcpkeep.log");
    env_set("TCPKEEP_LOG_LEVEL", "debug");
    assert_int_equal(load(&cfg, &rs), 0);
    assert_int_equal(rs.n, 0);
    assert_int_equal(cfg.set.idle_ms, 1500);
    assert_int_equal(cfg.set.read_ms, 30000);
    assert_int_equal(cfg.set.write_ms, 120000);
    assert_int_equal(cfg.set.first_byte_ms, 5000);
    assert_int_equal(cfg.set.half_closed_ms, 250);
    assert_int_equal(cfg.set.lifetime_ms, 3600000);
    assert_int_equal(cfg.set.lifetime_jitter, 10);
    assert_int_equal(cfg.set.action, TK_ACTION_RESET);
    assert_int_equal(cfg.activity, TK_ACTIVITY_CALLS);
    assert_int_equal(cfg.filter.direction, TK_DIR_IN);
    assert_true(cfg.set.override);
    assert_true(cfg.set.dry_run);
    assert_int_equal(cfg.filter.n_ports, 3);
    assert_int_equal(cfg.filter.ports[2].lo, 8000);
    assert_int_equal(cfg.filter.ports[2].hi, 8100);
    assert_int_equal(cfg.filter.n_peers, 2);
    assert_int_equal(cfg.filter.peers[0].family, AF_INET);
    assert_int_equal(cfg.filter.peers[1].family, AF_INET6);
    assert_true(cfg.has_filter);
    assert_string_equal(cfg.config_path, "/etc/tcpkeep/rules");
    assert_string_equal(cfg.stats_path, "/run/tcpkeep/%p.json");
    assert_false(cfg.set.keepalive);
    assert_int_equal(cfg.set.keepidle_s, 120);
    assert_int_equal(cfg.set.keepintvl_s, 15);
    assert_int_equal(cfg.set.keepcnt, 5);
    assert_int_equal(cfg.set.user_timeout_ms, 30000);
    assert_string_equal(cfg.log_dest, "/var/log/app tcpkeep.log");
    assert_int_equal(cfg.log_level, TK_LOG_DEBUG);
    /* Our twins are set: libkeepalive's names are not even looked at. */
    for (int i = N_OURS; i < N_VARS; i++)
        assert_int_equal(env_asked[i], 0);

    /* A second set, other spellings and ends of the ranges. */
    env_set("TCPKEEP_IDLE_TIMEOUT", "1h");
    env_set("TCPKEEP_READ_TIMEOUT", "0");
    env_set("TCPKEEP_WRITE_TIMEOUT", "1ms");
    env_set("TCPKEEP_FIRST_BYTE_TIMEOUT", "1000000000s");
    env_set("TCPKEEP_HALF_CLOSED_TIMEOUT", "277777h");
    env_set("TCPKEEP_MAX_LIFETIME", "1ms");
    env_set("TCPKEEP_MAX_LIFETIME_JITTER", "100");
    env_set("TCPKEEP_ACTION", "shutdown");
    env_set("TCPKEEP_ACTIVITY", "kernel");
    env_set("TCPKEEP_DIRECTION", "out");
    env_set("TCPKEEP_OVERRIDE", "off");
    env_set("TCPKEEP_DRY_RUN", "off");
    env_set("TCPKEEP_PORTS", "1-65535");
    env_set("TCPKEEP_PEERS", "::ffff:192.0.2.0/120");
    env_set("TCPKEEP_KEEPALIVE", "1");
    env_set("TCPKEEP_KEEPIDLE", "32767");
    env_set("TCPKEEP_KEEPINTVL", "1000ms");
    env_set("TCPKEEP_KEEPCNT", "127");
    env_set("TCPKEEP_USER_TIMEOUT", "596h");
    env_set("TCPKEEP_LOG", "off");
    env_set("TCPKEEP_LOG_LEVEL", "error");
    assert_int_equal(load(&cfg, &rs), 0);
    assert_int_equal(rs.n, 0);
    assert_int_equal(cfg.set.idle_ms, 3600000);
    assert_int_equal(cfg.set.read_ms, 0);
    assert_int_equal(cfg.set.write_ms, 1);
    assert_int_equal(cfg.set.first_byte_ms, TK_DURATION_MAX_MS);
    assert_int_equal(cfg.set.half_closed_ms, 277777ULL * 3600000);
    assert_int_equal(cfg.set.lifetime_ms, 1);
    assert_int_equal(cfg.set.lifetime_jitter, 100);
    assert_int_equal(cfg.set.action, TK_ACTION_SHUTDOWN);
    assert_int_equal(cfg.activity, TK_ACTIVITY_KERNEL);
    assert_int_equal(cfg.filter.direction, TK_DIR_OUT);
    assert_false(cfg.set.override);
    assert_false(cfg.set.dry_run);
    assert_int_equal(cfg.filter.n_ports, 1);
    assert_int_equal(cfg.filter.n_peers, 1);
    assert_int_equal(cfg.filter.peers[0].family, AF_INET);
    assert_int_equal(cfg.filter.peers[0].prefix, 24);
    assert_true(cfg.set.keepalive);
    assert_int_equal(cfg.set.keepidle_s, 32767);
    assert_int_equal(cfg.set.keepintvl_s, 1);
    assert_int_equal(cfg.set.keepcnt, 127);
    assert_int_equal(cfg.set.user_timeout_ms, 596ULL * 3600000);
    assert_string_equal(cfg.log_dest, "off");
    assert_int_equal(cfg.log_level, TK_LOG_ERROR);

    /* And a third: 0 where 0 means "never" / "kernel's"; on/off spelled out. */
    env_setup(NULL);
    env_set("TCPKEEP_IDLE_TIMEOUT", "0");
    env_set("TCPKEEP_MAX_LIFETIME", "0s");
    env_set("TCPKEEP_MAX_LIFETIME_JITTER", "0"); /* 0 needs no lifetime */
    env_set("TCPKEEP_USER_TIMEOUT", "0");
    env_set("TCPKEEP_KEEPALIVE", "on");
    env_set("TCPKEEP_DRY_RUN", "on");
    env_set("TCPKEEP_DIRECTION", "both");
    env_set("TCPKEEP_LOG", "stderr");
    env_set("TCPKEEP_LOG_LEVEL", "info");
    assert_int_equal(load(&cfg, &rs), 0);
    assert_int_equal(rs.n, 0);
    assert_int_equal(cfg.set.idle_ms, 0);
    assert_int_equal(cfg.set.lifetime_ms, 0);
    assert_int_equal(cfg.set.lifetime_jitter, 0);
    assert_int_equal(cfg.set.user_timeout_ms, 0);
    assert_true(cfg.set.keepalive);
    assert_true(cfg.set.dry_run);
    assert_int_equal(cfg.filter.direction, TK_DIR_ANY);
    assert_false(cfg.has_filter); /* "both" filters nothing */
    assert_string_equal(cfg.log_dest, "stderr");
    assert_int_equal(cfg.log_level, TK_LOG_INFO);
}

/* The six policy limits: same syntax, same message, each in its own field. */
static void test_load_durations(void **state)
{
    (void)state;
    static const char *const vars[] = {
        "TCPKEEP_IDLE_TIMEOUT", "TCPKEEP_READ_TIMEOUT", "TCPKEEP_WRITE_TIMEOUT",
        "TCPKEEP_FIRST_BYTE_TIMEOUT", "TCPKEEP_HALF_CLOSED_TIMEOUT", "TCPKEEP_MAX_LIFETIME",
    };
    static const struct { const char *s; bool ok; uint64_t ms; } values[] = {
        { "7s", true, 7000 }, { "0", true, 0 }, { "1500ms", true, 1500 },
        { "1000000000001ms", false, 0 }, { "5x", false, 0 }, { "", false, 0 },
        { "-1", false, 0 }, { "1.5s", false, 0 },
    };
    for (size_t v = 0; v < sizeof(vars) / sizeof(vars[0]); v++)
        for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
            struct tk_config cfg;
            struct reports rs;
            env_setup(NULL);
            env_set(vars[v], values[i].s);
            int bad = load(&cfg, &rs);
            uint64_t fields[] = { cfg.set.idle_ms, cfg.set.read_ms, cfg.set.write_ms,
                                  cfg.set.first_byte_ms, cfg.set.half_closed_ms,
                                  cfg.set.lifetime_ms };
            for (size_t f = 0; f < 6; f++) {
                uint64_t want = f == v && values[i].ok ? values[i].ms : 0;
                if (fields[f] != want)
                    fail_msg("%s=\"%s\": field %zu is %llu", vars[v], values[i].s, f,
                             (unsigned long long)fields[f]);
            }
            if (values[i].ok) {
                assert_int_equal(bad, 0);
                continue;
            }
            assert_int_equal(bad, 1);
            assert_int_equal(rs.n, 1);
            assert_string_equal(rs.r[0].var, vars[v]);
            assert_string_equal(rs.r[0].expected,
                                "expected a duration such as 30s, 1500ms, 5m or 1h");
        }
}

static void test_load_jitter(void **state)
{
    (void)state;
    struct tk_config cfg;
    struct reports rs;
    static const struct {
        const char *lifetime, *jitter;
        int bad;              /* reports */
        const char *bad_var;  /* the one reported */
        const char *expected; /* its text */
        unsigned jitter_set;  /* when good */
    } cases[] = {
        { "1h", "10", 0, NULL, NULL, 10 },
        { "1h", "0", 0, NULL, NULL, 0 },
        { "1h", "100", 0, NULL, NULL, 100 },
        { "1h", "007", 0, NULL, NULL, 7 },
        { NULL, "0", 0, NULL, NULL, 0 },
        { "0", "0", 0, NULL, NULL, 0 },
        { NULL, "00", 0, NULL, NULL, 0 },
        { "1h", "101", 1, "TCPKEEP_MAX_LIFETIME_JITTER", "expected a percentage 0..100", 0 },
        { "1h", "-1", 1, "TCPKEEP_MAX_LIFETIME_JITTER", "expected a percentage 0..100", 0 },
        { "1h", "10%", 1, "TCPKEEP_MAX_LIFETIME_JITTER", "expected a percentage 0..100", 0 },
        { "1h", "", 1, "TCPKEEP_MAX_LIFETIME_JITTER", "expected a percentage 0..100", 0 },
        { "1h", "0.5", 1, "TCPKEEP_MAX_LIFETIME_JITTER", "expected a percentage 0..100", 0 },
        /* A jitter without a lifetime. */
        { NULL, "10", 1, "TCPKEEP_MAX_LIFETIME_JITTER",
          "expected TCPKEEP_MAX_LIFETIME to be set too", 0 },
        { "0", "1", 1, "TCPKEEP_MAX_LIFETIME_JITTER",
          "expected TCPKEEP_MAX_LIFETIME to be set too", 0 },
        { "0ms", "100", 1, "TCPKEEP_MAX_LIFETIME_JITTER",
          "expected TCPKEEP_MAX_LIFETIME to be set too", 0 },
        /* A bad lifetime is reported once, not twice. */
        { "forever", "10", 1, "TCPKEEP_MAX_LIFETIME",
          "expected a duration such as 30s, 1500ms, 5m or 1h", 10 },
        /* Both bad: both reported. */
        { "forever", "1000", 2, "TCPKEEP_MAX_LIFETIME",
          "expected a duration such as 30s, 1500ms, 5m or 1h", 0 },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        env_setup(NULL);
        env_set("TCPKEEP_MAX_LIFETIME", cases[i].lifetime);
        env_set("TCPKEEP_MAX_LIFETIME_JITTER", cases[i].jitter);
        int bad = load(&cfg, &rs);
        if (bad != cases[i].bad || rs.n != cases[i].bad)
            fail_msg("lifetime %s jitter %s: %d reports, expected %d", cases[i].lifetime,
                     cases[i].jitter, rs.n, cases[i].bad);
        if (cases[i].bad) {
            assert_string_equal(rs.r[0].var, cases[i].bad_var);
            assert_string_equal(rs.r[0].expected, cases[i].expected);
            if (strcmp(cases[i].bad_var, "TCPKEEP_MAX_LIFETIME_JITTER") == 0)
                assert_int_equal(cfg.set.lifetime_jitter, 0);
        } else {
            assert_int_equal(cfg.set.lifetime_jitter, cases[i].jitter_set);
        }
    }
    /* The exact line a user sees comes from the variable, value and text. */
    env_setup(NULL);
    env_set("TCPKEEP_MAX_LIFETIME_JITTER", "20");
    assert_int_equal(load(&cfg, &rs), 1);
    assert_string_equal(rs.r[0].var, "TCPKEEP_MAX_LIFETIME_JITTER");
    assert_string_equal(rs.r[0].value, "20");
    assert_defaults(&cfg);
}

static void test_load_filter(void **state)
{
    (void)state;
    struct tk_config cfg;
    struct reports rs;
    static const struct {
        const char *ports, *peers, *direction;
        bool has_filter;
    } cases[] = {
        { NULL, NULL, NULL, false },
        { "80", NULL, NULL, true },
        { NULL, "::1", NULL, true },
        { NULL, NULL, "in", true },
        { NULL, NULL, "out", true },
        { NULL, NULL, "both", false },
        { "80", "10.0.0.0/8", "both", true },
        { "22,80", "10.0.0.0/8,::/0", "out", true },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        env_setup(NULL);
        env_set("TCPKEEP_PORTS", cases[i].ports);
        env_set("TCPKEEP_PEERS", cases[i].peers);
        env_set("TCPKEEP_DIRECTION", cases[i].direction);
        assert_int_equal(load(&cfg, &rs), 0);
        if (cfg.has_filter != cases[i].has_filter)
            fail_msg("ports %s peers %s direction %s: has_filter %d", cases[i].ports,
                     cases[i].peers, cases[i].direction, cfg.has_filter);
    }
    /* The filter that was loaded is the one that matches. */
    env_setup(NULL);
    env_set("TCPKEEP_PORTS", "6379");
    env_set("TCPKEEP_PEERS", "127.0.0.0/8");
    env_set("TCPKEEP_DIRECTION", "out");
    assert_int_equal(load(&cfg, &rs), 0);
    struct sockaddr_storage local = sa4("127.0.0.1", 40000), peer = sa4("127.0.0.1", 6379);
    struct tk_conn_key k;
    tk_conn_key_set(&k, TK_DIR_OUT, SA(local), SA(peer));
    assert_true(tk_match_conn(&cfg.filter, &k));
    tk_conn_key_set(&k, TK_DIR_IN, SA(peer), SA(local));
    assert_false(tk_match_conn(&cfg.filter, &k));
}

static void test_load_user_timeout_limit(void **state)
{
    (void)state;
    /* The kernel takes an int of milliseconds. */
    static const struct { const char *s; bool ok; unsigned ms; } cases[] = {
        { "2147483647ms", true, 2147483647u },
        { "2147483s", true, 2147483000u },
        { "35791m", true, 35791u * 60000u },
        { "596h", true, 596u * 3600000u },
        { "1ms", true, 1 },
        { "2147483648ms", false, 0 },
        { "2147484s", false, 0 },
        { "35792m", false, 0 },
        { "597h", false, 0 },
        { "4294967296ms", false, 0 }, /* 2^32: no wrap to 0 */
        { "4294967297ms", false, 0 },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct tk_config cfg;
        struct reports rs;
        env_set("TCPKEEP_USER_TIMEOUT", cases[i].s);
        int bad = load(&cfg, &rs);
        if (cases[i].ok) {
            if (bad != 0 || cfg.set.user_timeout_ms != cases[i].ms)
                fail_msg("TCPKEEP_USER_TIMEOUT=%s: bad=%d ms=%u", cases[i].s, bad,
                         cfg.set.user_timeout_ms);
        } else {
            if (bad != 1 || rs.n != 1)
                fail_msg("TCPKEEP_USER_TIMEOUT=%s accepted (ms=%u)", cases[i].s,
                         cfg.set.user_timeout_ms);
            assert_string_equal(rs.r[0].var, "TCPKEEP_USER_TIMEOUT");
            assert_int_equal(cfg.set.user_timeout_ms, 0);
        }
    }
}

/* TCPKEEP_LOG, TCPKEEP_CONFIG, TCPKEEP_STATS: refused when too long, never truncated. */
static void test_load_path_lengths(void **state)
{
    (void)state;
    static char path[5000];
    static const struct { const char *var; const char *dflt; } vars[] = {
        { "TCPKEEP_LOG", "stderr" }, { "TCPKEEP_CONFIG", "" }, { "TCPKEEP_STATS", "" },
    };
    for (size_t v = 0; v < 3; v++) {
        struct tk_config cfg;
        struct reports rs;
        env_setup(NULL);
        memset(path, 'a', sizeof(path));
        path[0] = '/';
        path[sizeof(cfg.log_dest) - 1] = '\0'; /* the longest that fits */
        env_set(vars[v].var, path);
        assert_int_equal(load(&cfg, &rs), 0);
        assert_int_equal(rs.n, 0);
        const char *got = v == 0 ? cfg.log_dest : v == 1 ? cfg.config_path : cfg.stats_path;
        assert_string_equal(got, path);

        path[sizeof(cfg.log_dest) - 1] = 'a';
        path[sizeof(cfg.log_dest)] = '\0'; /* one too long */
        assert_int_equal(load(&cfg, &rs), 1);
        assert_int_equal(rs.n, 1);
        assert_string_equal(rs.r[0].var, vars[v].var);
        got = v == 0 ? cfg.log_dest : v == 1 ? cfg.config_path : cfg.stats_path;
        assert_string_equal(got, vars[v].dflt);
    }
    assert_int_equal(sizeof(((struct tk_config *)0)->config_path), 4096);
    assert_int_equal(sizeof(((struct tk_config *)0)->stats_path), 4096);
}

/* One bad value per variable: exactly one report naming the variable, the
 * value and what was expected; every other setting keeps its default. */
static void test_load_each_bad(void **state)
{
    (void)state;
    static const struct {
        const char *var, *value;
        const char *expected_exact; /* or NULL */
        const char *mentions[4];    /* words the "expected" text must contain */
    } cases[] = {
        { "TCPKEEP_IDLE_TIMEOUT", "5x", NULL, { "duration" } },
        { "TCPKEEP_IDLE_TIMEOUT", "", NULL, { "duration" } },
        { "TCPKEEP_IDLE_TIMEOUT", "-1", NULL, { "duration" } },
        { "TCPKEEP_IDLE_TIMEOUT", "99999999999999999999", NULL, { "duration" } },
        { "TCPKEEP_READ_TIMEOUT", "soon",
          "expected a duration such as 30s, 1500ms, 5m or 1h", { 0 } },
        { "TCPKEEP_WRITE_TIMEOUT", "5 s",
          "expected a duration such as 30s, 1500ms, 5m or 1h", { 0 } },
        { "TCPKEEP_FIRST_BYTE_TIMEOUT", "1d",
          "expected a duration such as 30s, 1500ms, 5m or 1h", { 0 } },
        { "TCPKEEP_HALF_CLOSED_TIMEOUT", "277778h",
          "expected a duration such as 30s, 1500ms, 5m or 1h", { 0 } },
        { "TCPKEEP_MAX_LIFETIME", "1h30m",
          "expected a duration such as 30s, 1500ms, 5m or 1h", { 0 } },
        { "TCPKEEP_MAX_LIFETIME_JITTER", "101", "expected a percentage 0..100", { 0 } },
        { "TCPKEEP_MAX_LIFETIME_JITTER", "5", "expected TCPKEEP_MAX_LIFETIME to be set too",
          { 0 } },
        { "TCPKEEP_ACTION", "kill", "expected shutdown or reset", { 0 } },
        { "TCPKEEP_ACTION", "RESET", "expected shutdown or reset", { 0 } },
        { "TCPKEEP_ACTIVITY", "all", "expected both, calls or kernel", { 0 } },
        { "TCPKEEP_DIRECTION", "inbound", "expected in, out or both", { 0 } },
        { "TCPKEEP_DIRECTION", "", "expected in, out or both", { 0 } },
        { "TCPKEEP_OVERRIDE", "yes", "expected on or off", { 0 } },
        { "TCPKEEP_DRY_RUN", "true", "expected on, off, 1 or 0", { 0 } },
        { "TCPKEEP_PORTS", "70000",
          "expected ports 1..65535 and ranges such as 80,443,8000-8100", { 0 } },
        { "TCPKEEP_PORTS", "80, 443",
          "expected ports 1..65535 and ranges such as 80,443,8000-8100", { 0 } },
        { "TCPKEEP_PORTS", "",
          "expected ports 1..65535 and ranges such as 80,443,8000-8100", { 0 } },
        { "TCPKEEP_PORTS", "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,"
                           "25,26,27,28,29,30,31,32,33",
          "expected at most 32 ports and ranges, such as 80,443,8000-8100", { 0 } },
        { "TCPKEEP_PEERS", "10.0.0.0/33",
          "expected IPv4 or IPv6 addresses or CIDRs such as 10.0.0.0/8,::1/128", { 0 } },
        { "TCPKEEP_PEERS", "example.com",
          "expected IPv4 or IPv6 addresses or CIDRs such as 10.0.0.0/8,::1/128", { 0 } },
        { "TCPKEEP_PEERS", "1.0.0.1,1.0.0.2,1.0.0.3,1.0.0.4,1.0.0.5,1.0.0.6,1.0.0.7,1.0.0.8,"
                           "1.0.0.9,1.0.0.10,1.0.0.11,1.0.0.12,1.0.0.13,1.0.0.14,1.0.0.15,"
                           "1.0.0.16,1.0.0.17,1.0.0.18,1.0.0.19,1.0.0.20,1.0.0.21,1.0.0.22,"
                           "1.0.0.23,1.0.0.24,1.0.0.25,1.0.0.26,1.0.0.27,1.0.0.28,1.0.0.29,"
                           "1.0.0.30,1.0.0.31,1.0.0.32,1.0.0.33",
          "expected at most 32 addresses or CIDRs, such as 10.0.0.0/8,::1/128", { 0 } },
        { "TCPKEEP_CONFIG", "", "expected a file path", { 0 } },
        { "TCPKEEP_STATS", "", "expected a file path", { 0 } },
        /* v1's texts, byte for byte. */
        { "TCPKEEP_KEEPALIVE", "yes", "expected on or off", { 0 } },
        { "TCPKEEP_KEEPALIVE", "ON", "expected on or off", { 0 } },
        { "TCPKEEP_KEEPALIVE", "", "expected on or off", { 0 } },
        { "TCPKEEP_KEEPIDLE", "1500ms", "expected whole seconds 1..32767, such as 60 or 2m",
          { 0 } },
        { "TCPKEEP_KEEPIDLE", "0", NULL, { "seconds", "32767" } },
        { "TCPKEEP_KEEPINTVL", "32768", "expected whole seconds 1..32767, such as 60 or 2m",
          { 0 } },
        { "TCPKEEP_KEEPINTVL", "abc", NULL, { "seconds", "32767" } },
        { "TCPKEEP_KEEPCNT", "abc", "expected an integer 1..127", { 0 } },
        { "TCPKEEP_KEEPCNT", "0", "expected an integer 1..127", { 0 } },
        { "TCPKEEP_KEEPCNT", "128", "expected an integer 1..127", { 0 } },
        { "TCPKEEP_KEEPCNT", "", "expected an integer 1..127", { 0 } },
        { "TCPKEEP_USER_TIMEOUT", "1.5s",
          "expected a duration up to 596h, such as 30s or 1500ms", { 0 } },
        { "TCPKEEP_USER_TIMEOUT", "597h", NULL, { "duration" } },
        { "TCPKEEP_LOG", "", "expected stderr, off or a file path", { 0 } },
        { "TCPKEEP_LOG_LEVEL", "WARN", "expected error, warn, info or debug", { 0 } },
        { "TCPKEEP_LOG_LEVEL", "verbose", NULL, { "error", "warn", "info", "debug" } },
        /* libkeepalive's names: the same strictness, under their own names. */
        { "KEEPALIVE", "yes", "expected on, off or skip", { 0 } },
        { "KEEPALIVE", "1", "expected on, off or skip", { 0 } },
        { "KEEPALIVE", "", "expected on, off or skip", { 0 } },
        { "KEEPALIVE", "SKIP", "expected on, off or skip", { 0 } },
        { "KEEPIDLE", "abc", "expected whole seconds 1..32767, such as 60 or 2m", { 0 } },
        { "KEEPIDLE", "0", "expected whole seconds 1..32767, such as 60 or 2m", { 0 } },
        { "KEEPINTVL", "1500ms", "expected whole seconds 1..32767, such as 60 or 2m", { 0 } },
        { "KEEPINTVL", "32768", "expected whole seconds 1..32767, such as 60 or 2m", { 0 } },
        { "KEEPCNT", "128", "expected an integer 1..127", { 0 } },
        { "KEEPCNT", "five", "expected an integer 1..127", { 0 } },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct tk_config cfg;
        struct reports rs;
        env_setup(NULL);
        env_set(cases[i].var, cases[i].value);
        int bad = load(&cfg, &rs);
        if (bad != 1 || rs.n != 1)
            fail_msg("%s=\"%s\": returned %d with %d reports, expected 1 and 1", cases[i].var,
                     cases[i].value, bad, rs.n);
        assert_string_equal(rs.r[0].var, cases[i].var);
        assert_string_equal(rs.r[0].value, cases[i].value);
        assert_ptr_equal(rs.r[0].value_ptr, cases[i].value);
        if (strncmp(rs.r[0].expected, "expected ", 9) != 0 || strlen(rs.r[0].expected) < 12)
            fail_msg("%s: \"%s\" does not say what was expected", cases[i].var,
                     rs.r[0].expected);
        if (cases[i].expected_exact)
            assert_string_equal(rs.r[0].expected, cases[i].expected_exact);
        for (int w = 0; w < 4 && cases[i].mentions[w]; w++)
            if (!strstr(rs.r[0].expected, cases[i].mentions[w]))
                fail_msg("%s: \"%s\" does not mention %s", cases[i].var, rs.r[0].expected,
                         cases[i].mentions[w]);
        assert_defaults(&cfg); /* the bad value changed nothing */
    }
}

static void test_load_two_bad(void **state)
{
    (void)state;
    struct tk_config cfg;
    struct reports rs;
    env_set("TCPKEEP_IDLE_TIMEOUT", "10s");     /* good */
    env_set("TCPKEEP_KEEPALIVE", "yes");        /* bad */
    env_set("TCPKEEP_KEEPIDLE", "60");          /* good */
    env_set("TCPKEEP_KEEPCNT", "abc");          /* bad */
    env_set("TCPKEEP_LOG_LEVEL", "info");       /* good */
    assert_int_equal(load(&cfg, &rs), 2);
    assert_int_equal(rs.n, 2);
    /* Both named, each with its own value and text, in the table's order. */
    assert_string_equal(rs.r[0].var, "TCPKEEP_KEEPALIVE");
    assert_string_equal(rs.r[0].value, "yes");
    assert_string_equal(rs.r[1].var, "TCPKEEP_KEEPCNT");
    assert_string_equal(rs.r[1].value, "abc");
    assert_string_equal(rs.r[1].expected, "expected an integer 1..127");
    assert_string_not_equal(rs.r[0].expected, rs.r[1].expected);
    /* The good ones still parsed. */
    assert_int_equal(cfg.set.idle_ms, 10000);
    assert_true(cfg.set.keepalive);
    assert_int_equal(cfg.set.keepidle_s, 60);
    assert_int_equal(cfg.set.keepcnt, 0);
    assert_int_equal(cfg.log_level, TK_LOG_INFO);
}

static void test_load_all_bad(void **state)
{
    (void)state;
    static const char *const values[N_VARS] = {
        "soon", "5x", "-1", "1.5s", "", "forever", "101", "kill", "all", "up", "yes",
        "maybe", "0", "10.0.0.0/33", "", "", "maybe", "0", "99999s", "-3", "forever", "",
        "loud",
        /* libkeepalive's: bad too, but never read while ours are set */
        "garbage", "garbage", "garbage", "garbage",
    };
    struct tk_config cfg;
    struct reports rs;
    for (int i = 0; i < N_VARS; i++)
        fake_env[i] = values[i];
    assert_int_equal(load(&cfg, &rs), N_OURS);
    assert_int_equal(rs.n, N_OURS);
    for (int i = 0; i < N_OURS; i++) {
        assert_string_equal(rs.r[i].var, var_names[i]);
        assert_string_equal(rs.r[i].value, values[i]);
    }
    assert_defaults(&cfg);
    for (int i = N_OURS; i < N_VARS; i++)
        assert_int_equal(env_asked[i], 0);

    /* Ours unset: libkeepalive's four are read, and each reported. */
    for (int i = 16; i < 20; i++)
        fake_env[i] = NULL;
    assert_int_equal(load(&cfg, &rs), N_OURS);
    for (int i = 0; i < 4; i++) {
        assert_string_equal(rs.r[N_OURS - 4 + i].var, var_names[N_OURS + i]);
        assert_string_equal(rs.r[N_OURS - 4 + i].value, "garbage");
    }
    assert_defaults(&cfg);
}

/* libkeepalive's KEEPALIVE, KEEPIDLE, KEEPINTVL, KEEPCNT: honoured where
 * the TCPKEEP_ twin is unset, each on its own. */
static void test_load_libkeepalive(void **state)
{
    (void)state;
    struct tk_config cfg;
    struct reports rs;

    env_set("KEEPALIVE", "on");
    env_set("KEEPIDLE", "60");
    env_set("KEEPINTVL", "2m");
    env_set("KEEPCNT", "5");
    assert_int_equal(load(&cfg, &rs), 0);
    assert_true(cfg.set.keepalive);
    assert_int_equal(cfg.set.keepidle_s, 60);
    assert_int_equal(cfg.set.keepintvl_s, 120);
    assert_int_equal(cfg.set.keepcnt, 5);

    static const struct { const char *v; bool on; } switches[] = {
        { "on", true }, { "off", false }, { "skip", false },
    };
    for (size_t i = 0; i < 3; i++) {
        env_set("KEEPALIVE", switches[i].v);
        assert_int_equal(load(&cfg, &rs), 0);
        assert_int_equal(cfg.set.keepalive, switches[i].on);
    }

    /* Ours win, and theirs are then not read at all: a bad one is no error. */
    env_setup(NULL);
    env_set("TCPKEEP_KEEPALIVE", "on");
    env_set("TCPKEEP_KEEPIDLE", "30");
    env_set("TCPKEEP_KEEPINTVL", "7");
    env_set("TCPKEEP_KEEPCNT", "3");
    env_set("KEEPALIVE", "off");
    env_set("KEEPIDLE", "abc");
    env_set("KEEPINTVL", "60");
    env_set("KEEPCNT", "999");
    assert_int_equal(load(&cfg, &rs), 0);
    assert_true(cfg.set.keepalive);
    assert_int_equal(cfg.set.keepidle_s, 30);
    assert_int_equal(cfg.set.keepintvl_s, 7);
    assert_int_equal(cfg.set.keepcnt, 3);
    for (int i = N_OURS; i < N_VARS; i++)
        assert_int_equal(env_asked[i], 0);

    /* Each on its own: two of ours set, two of theirs used. */
    env_setup(NULL);
    env_set("TCPKEEP_KEEPALIVE", "off");
    env_set("TCPKEEP_KEEPINTVL", "9");
    env_set("KEEPALIVE", "on");
    env_set("KEEPIDLE", "45");
    env_set("KEEPINTVL", "60");
    env_set("KEEPCNT", "8");
    assert_int_equal(load(&cfg, &rs), 0);
    assert_false(cfg.set.keepalive);
    assert_int_equal(cfg.set.keepidle_s, 45);
    assert_int_equal(cfg.set.keepintvl_s, 9);
    assert_int_equal(cfg.set.keepcnt, 8);
    assert_int_equal(env_asked[var_index("KEEPALIVE")], 0);
    assert_int_equal(env_asked[var_index("KEEPIDLE")], 1);
    assert_int_equal(env_asked[var_index("KEEPINTVL")], 0);
    assert_int_equal(env_asked[var_index("KEEPCNT")], 1);

    /* Ours set but bad: still ours, theirs unread; one report. */
    env_setup(NULL);
    env_set("TCPKEEP_KEEPIDLE", "abc");
    env_set("KEEPIDLE", "60");
    assert_int_equal(load(&cfg, &rs), 1);
    assert_string_equal(rs.r[0].var, "TCPKEEP_KEEPIDLE");
    assert_int_equal(cfg.set.keepidle_s, 0);
    assert_int_equal(env_asked[var_index("KEEPIDLE")], 0);

    /* Theirs bad: reported under their own name, with our text. */
    env_setup(NULL);
    env_set("KEEPIDLE", "abc");
    assert_int_equal(load(&cfg, &rs), 1);
    assert_string_equal(rs.r[0].var, "KEEPIDLE");
    assert_string_equal(rs.r[0].value, "abc");
    assert_string_equal(rs.r[0].expected, "expected whole seconds 1..32767, such as 60 or 2m");
}

/* ---------------------------------------------------------------------------
 * Fuzz: random short strings through every parser, each answer checked
 * against a reference written here from the contract, independently. */

static uint64_t rng_state;

static uint64_t rnd(void) /* xorshift64* */
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ULL;
}

/* Reference duration: ^[0-9]+(|ms|s|m|h)$, value in ms or "too big".
 * Returns 0 for a syntax error, 1 for a value that fits, 2 for too big. */
static int ref_duration(const char *s, uint64_t *ms)
{
    size_t len = strlen(s), digits = 0;
    while (digits < len && s[digits] >= '0' && s[digits] <= '9')
        digits++;
    if (digits == 0)
        return 0;
    const char *u = s + digits;
    unsigned scale;
    if (u[0] == '\0' || (u[0] == 's' && u[1] == '\0'))
        scale = 1000;
    else if (u[0] == 'm' && u[1] == 's' && u[2] == '\0')
        scale = 1;
    else if (u[0] == 'm' && u[1] == '\0')
        scale = 60000;
    else if (u[0] == 'h' && u[1] == '\0')
        scale = 3600000;
    else
        return 0;
    /* Significant digits only; past 15 of them it cannot fit 1e12 ms. */
    size_t i = 0;
    while (i < digits - 1 && s[i] == '0')
        i++;
    if (digits - i > 15)
        return 2;
    unsigned __int128 v = 0;
    for (; i < digits; i++)
        v = v * 10 + (unsigned)(s[i] - '0');
    v *= scale;
    if (v > (unsigned __int128)1000000000000ULL)
        return 2;
    *ms = (uint64_t)v;
    return 1;
}

/* Reference integer: ^[0-9]+$. Returns 0 syntax error, 1 fits (value in *v), 2 huge. */
static int ref_digits(const char *s, uint64_t *v)
{
    size_t n = strlen(s);
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    size_t i = 0;
    while (i < n - 1 && s[i] == '0')
        i++;
    if (n - i > 18)
        return 2;
    uint64_t x = 0;
    for (; i < n; i++)
        x = x * 10 + (uint64_t)(s[i] - '0');
    *v = x;
    return 1;
}

static void random_string(char *buf, size_t cap)
{
    static const char alphabet[] = "0123456789000111msmshhms +-. \t";
    size_t len = rnd() % 12;
    int mode = (int)(rnd() % 8);
    if (mode == 0) { /* long runs of digits: overflow territory */
        len = 10 + rnd() % 20;
    }
    if (len >= cap)
        len = cap - 1;
    for (size_t i = 0; i < len; i++) {
        uint64_t r = rnd();
        if (mode == 0 && i + 2 < len)
            buf[i] = (char)('0' + r % 10);
        else if (r % 16 == 0)
            buf[i] = (char)(1 + (r >> 8) % 255); /* any byte but NUL */
        else
            buf[i] = alphabet[(r >> 8) % (sizeof(alphabet) - 1)];
    }
    buf[len] = '\0';
    if (mode == 1) { /* a known word, sometimes damaged */
        static const char *const words[] = { "on", "off", "error", "warn", "info",
                                             "debug", "1", "0", "127", "32767",
                                             "shutdown", "reset", "both", "calls",
                                             "kernel", "in", "out" };
        snprintf(buf, cap, "%s", words[rnd() % (sizeof(words) / sizeof(words[0]))]);
        if (rnd() % 2) {
            size_t l = strlen(buf);
            buf[rnd() % l] = (char)(1 + rnd() % 255);
        }
    }
}

static void test_fuzz_parsers(void **state)
{
    (void)state;
    rng_state = 0x9e3779b97f4a7c15ULL;
    char buf[40];
    unsigned accepted_dur = 0, accepted_int = 0, accepted_sec = 0;
    for (int iter = 0; iter < 200000; iter++) {
        random_string(buf, sizeof(buf));
        const char *s = at_page_end(buf);

        uint64_t want_ms = 0, got_ms = SENTINEL_U64;
        int ref = ref_duration(buf, &want_ms);
        enum tk_parse_result r = tk_parse_duration_ms(s, &got_ms);
        if ((r == TK_PARSE_OK) != (ref == 1))
            fail_msg("duration \"%s\": result %d, reference %d", buf, r, ref);
        if (r == TK_PARSE_OK && got_ms != want_ms)
            fail_msg("duration \"%s\": %llu ms, reference %llu", buf,
                     (unsigned long long)got_ms, (unsigned long long)want_ms);
        if (r != TK_PARSE_OK && got_ms != SENTINEL_U64)
            fail_msg("duration \"%s\": output written on failure", buf);
        if (ref == 2 && r != TK_PARSE_RANGE)
            fail_msg("duration \"%s\": too big but result %d", buf, r);
        accepted_dur += r == TK_PARSE_OK;

        uint64_t want_v = 0;
        long got = SENTINEL_LONG;
        ref = ref_digits(buf, &want_v);
        bool int_ok = ref == 1 && want_v >= 1 && want_v <= 127;
        r = tk_parse_int_range(s, 1, 127, &got);
        if ((r == TK_PARSE_OK) != int_ok)
            fail_msg("int \"%s\": result %d, reference %d", buf, r, int_ok);
        if (r == TK_PARSE_OK && (uint64_t)got != want_v)
            fail_msg("int \"%s\": %ld, reference %llu", buf, got, (unsigned long long)want_v);
        if (r != TK_PARSE_OK && got != SENTINEL_LONG)
            fail_msg("int \"%s\": output written on failure", buf);
        if (ref == 0 && r != TK_PARSE_BAD)
            fail_msg("int \"%s\": not a number but result %d", buf, r);
        if (ref != 0 && !int_ok && r != TK_PARSE_RANGE)
            fail_msg("int \"%s\": out of range but result %d", buf, r);
        accepted_int += r == TK_PARSE_OK;

        got = SENTINEL_LONG;
        ref = ref_duration(buf, &want_ms);
        bool sec_ok = ref == 1 && want_ms % 1000 == 0 && want_ms >= 1000 &&
                      want_ms <= 32767000;
        r = tk_parse_whole_seconds(s, 1, 32767, &got);
        if ((r == TK_PARSE_OK) != sec_ok)
            fail_msg("seconds \"%s\": result %d, reference %d", buf, r, sec_ok);
        if (r == TK_PARSE_OK && (uint64_t)got * 1000 != want_ms)
            fail_msg("seconds \"%s\": %ld, reference %llu ms", buf, got,
                     (unsigned long long)want_ms);
        if (r != TK_PARSE_OK && got != SENTINEL_LONG)
            fail_msg("seconds \"%s\": output written on failure", buf);
        accepted_sec += r == TK_PARSE_OK;

        bool b = true;
        bool sw_on = strcmp(buf, "on") == 0 || strcmp(buf, "1") == 0;
        bool sw_off = strcmp(buf, "off") == 0 || strcmp(buf, "0") == 0;
        r = tk_parse_switch(s, &b);
        if ((r == TK_PARSE_OK) != (sw_on || sw_off) || (r == TK_PARSE_OK && b != sw_on))
            fail_msg("switch \"%s\": result %d value %d", buf, r, b);
        if (r != TK_PARSE_OK && !b)
            fail_msg("switch \"%s\": output written on failure", buf);

        enum tk_log_level lv = (enum tk_log_level)77;
        int want_lv = !strcmp(buf, "error") ? 0 : !strcmp(buf, "warn") ? 1
                    : !strcmp(buf, "info") ? 2 : !strcmp(buf, "debug") ? 3 : -1;
        r = tk_parse_log_level(s, &lv);
        if ((r == TK_PARSE_OK) != (want_lv >= 0) || (r == TK_PARSE_OK && (int)lv != want_lv))
            fail_msg("log level \"%s\": result %d value %d", buf, r, (int)lv);
        if (r != TK_PARSE_OK && (int)lv != 77)
            fail_msg("log level \"%s\": output written on failure", buf);

        /* The new words: exact spellings only. */
        static const struct {
            enum tk_parse_result (*parse)(const char *, uint8_t *);
            const char *words[3];
            uint8_t values[3];
        } word_sets[] = {
            { tk_parse_action, { "shutdown", "reset", NULL },
              { TK_ACTION_SHUTDOWN, TK_ACTION_RESET, 0 } },
            { tk_parse_activity, { "both", "calls", "kernel" },
              { TK_ACTIVITY_BOTH, TK_ACTIVITY_CALLS, TK_ACTIVITY_KERNEL } },
            { tk_parse_direction, { "in", "out", "both" },
              { TK_DIR_IN, TK_DIR_OUT, TK_DIR_ANY } },
        };
        for (size_t w = 0; w < 3; w++) {
            int want = -1;
            for (int j = 0; j < 3; j++)
                if (word_sets[w].words[j] && strcmp(buf, word_sets[w].words[j]) == 0)
                    want = word_sets[w].values[j];
            uint8_t got8 = 0xee;
            r = word_sets[w].parse(s, &got8);
            if ((r == TK_PARSE_OK) != (want >= 0) || (r == TK_PARSE_OK && got8 != want) ||
                (r != TK_PARSE_OK && got8 != 0xee))
                fail_msg("word set %zu \"%s\": result %d value %u", w, buf, r, got8);
        }
    }
    /* The generator reached both sides of every parser. */
    print_message("fuzz: %u durations, %u integers, %u second counts accepted of 200000\n",
                  accepted_dur, accepted_int, accepted_sec);
    assert_true(accepted_dur > 1000);
    assert_true(accepted_int > 100);
    assert_true(accepted_sec > 100);
}

/* Reference port list: items ^[0-9]+(-[0-9]+)?$ joined by ',', each value
 * 1..65535, lo <= hi, at most TK_MATCH_PORTS_MAX items. */
static bool ref_ports(const char *s, struct tk_port_range *out, unsigned *n)
{
    char copy[4096];
    if (strlen(s) >= sizeof(copy))
        return false;
    strcpy(copy, s);
    *n = 0;
    char *item = copy;
    for (;;) {
        char *comma = strchr(item, ',');
        if (comma)
            *comma = '\0';
        char *dash = strchr(item, '-');
        if (dash)
            *dash = '\0';
        uint64_t lo, hi;
        if (ref_digits(item, &lo) != 1 || lo < 1 || lo > 65535)
            return false;
        hi = lo;
        if (dash && (ref_digits(dash + 1, &hi) != 1 || hi < 1 || hi > 65535 || hi < lo))
            return false;
        if (*n == TK_MATCH_PORTS_MAX)
            return false;
        out[*n].lo = (uint16_t)lo;
        out[*n].hi = (uint16_t)hi;
        (*n)++;
        if (!comma)
            return true;
        item = comma + 1;
    }
}

/* Reference peer list, bit by bit: each item ADDR or ADDR/PREFIX. */
static bool ref_peers(const char *s, struct tk_cidr *out, unsigned *n)
{
    char copy[4096];
    if (strlen(s) >= sizeof(copy))
        return false;
    strcpy(copy, s);
    *n = 0;
    char *item = copy;
    for (;;) {
        char *comma = strchr(item, ',');
        if (comma)
            *comma = '\0';
        char *slash = strchr(item, '/');
        if (slash)
            *slash = '\0';
        struct tk_cidr c;
        memset(&c, 0, sizeof(c));
        unsigned bits;
        if (strchr(item, ':')) {
            if (inet_pton(AF_INET6, item, c.addr) != 1)
                return false;
            c.family = AF_INET6;
            bits = 128;
        } else {
            if (inet_pton(AF_INET, item, c.addr) != 1)
                return false;
            c.family = AF_INET;
            bits = 32;
        }
        uint64_t prefix = bits;
        if (slash && (ref_digits(slash + 1, &prefix) != 1 || prefix > bits))
            return false;
        bool mapped = c.family == AF_INET6 && prefix >= 96;
        for (int i = 0; i < 10; i++)
            mapped = mapped && c.addr[i] == 0;
        mapped = mapped && c.addr[10] == 0xff && c.addr[11] == 0xff;
        if (mapped) {
            uint8_t v4[4];
            memcpy(v4, c.addr + 12, 4);
            memset(c.addr, 0, 16);
            memcpy(c.addr, v4, 4);
            c.family = AF_INET;
            prefix -= 96;
            bits = 32;
        }
        for (unsigned b = (unsigned)prefix; b < bits; b++)
            c.addr[b / 8] &= (uint8_t)~(0x80u >> (b % 8));
        c.prefix = (uint8_t)prefix;
        if (*n == TK_MATCH_PEERS_MAX)
            return false;
        out[(*n)++] = c;
        if (!comma)
            return true;
        item = comma + 1;
    }
}

/* Reference: does addr fall in c? Bit by bit. */
static bool ref_in_cidr(const struct tk_cidr *c, const uint8_t *addr)
{
    for (unsigned b = 0; b < c->prefix; b++) {
        unsigned mask = 0x80u >> (b % 8);
        if ((c->addr[b / 8] & mask) != (addr[b / 8] & mask))
            return false;
    }
    return true;
}

/* Lists built from pieces that are mostly valid, sometimes damaged. */
static void random_list(char *buf, size_t cap, bool peers)
{
    size_t len = 0;
    unsigned items = 1 + (unsigned)(rnd() % 4);
    if (rnd() % 64 == 0)
        items = 30 + (unsigned)(rnd() % 5); /* around the limit */
    buf[0] = '\0';
    for (unsigned i = 0; i < items && len + 64 < cap; i++) {
        if (i)
            buf[len++] = ',';
        uint64_t r = rnd();
        int w;
        if (!peers) {
            unsigned lo = (unsigned)(r % 4 == 0 ? r % 70000 : 1 + r % 9000);
            w = r % 3 == 0 ? snprintf(buf + len, cap - len, "%u-%u", lo,
                                      (unsigned)((r >> 20) % 3 == 0 ? lo : (r >> 24) % 70000))
                           : snprintf(buf + len, cap - len, "%u", lo);
        } else if (r % 3 == 0) {
            w = snprintf(buf + len, cap - len, "%u.%u.%u.%u", (unsigned)(r >> 8) % 260,
                         (unsigned)(r >> 16) % 256, (unsigned)(r >> 24) % 256,
                         (unsigned)(r >> 32) % 256);
        } else if (r % 3 == 1) {
            w = snprintf(buf + len, cap - len, "%s%x::%x", r & 0x100 ? "::ffff:" : "",
                         (unsigned)(r >> 16) & 0xffff, (unsigned)(r >> 32) & 0xffff);
            if ((r & 0x100) && w > 0) /* "::ffff:X::Y" is bad; make it mapped */
                w = snprintf(buf + len, cap - len, "::ffff:%u.%u.%u.%u",
                             (unsigned)(r >> 16) % 256, (unsigned)(r >> 24) % 256,
                             (unsigned)(r >> 32) % 256, (unsigned)(r >> 40) % 256);
        } else {
            w = snprintf(buf + len, cap - len, "%x:%x:%x:%x:%x:%x:%x:%x",
                         (unsigned)r & 0xffff, (unsigned)(r >> 16) & 0xffff, 0u, 0u, 0u,
                         (unsigned)(r >> 32) & 1 ? 0xffffu : 0u, (unsigned)(r >> 40) & 0xff,
                         (unsigned)(r >> 48) & 0xffff);
        }
        len += (size_t)w;
        if (peers && rnd() % 2)
            len += (size_t)snprintf(buf + len, cap - len, "/%u", (unsigned)(rnd() % 135));
    }
    /* Damage: a byte changed, dropped or added. */
    if (len > 0 && rnd() % 4 == 0) {
        static const char junk[] = ",-/:. 0a9x";
        size_t at = rnd() % len;
        switch (rnd() % 3) {
        case 0:
            buf[at] = junk[rnd() % (sizeof(junk) - 1)];
            break;
        case 1:
            memmove(buf + at, buf + at + 1, len - at);
            len--;
            break;
        default:
            if (len + 1 < cap) {
                memmove(buf + at + 1, buf + at, len - at);
                buf[at] = junk[rnd() % (sizeof(junk) - 1)];
                len++;
            }
        }
    }
    buf[len] = '\0';
}

static void test_fuzz_lists(void **state)
{
    (void)state;
    rng_state = 0x2545f4914f6cdd1dULL;
    static char buf[2048];
    unsigned ports_ok = 0, peers_ok = 0, matched = 0, mapped_seen = 0;
    for (int iter = 0; iter < 100000; iter++) {
        bool peers = iter % 2;
        random_list(buf, sizeof(buf), peers);
        const char *s = at_page_end(buf);
        struct tk_match m, ref_m;
        marked(&m);
        memset(&ref_m, 0, sizeof(ref_m));
        unsigned n = 0;
        if (!peers) {
            bool want = ref_ports(buf, ref_m.ports, &n);
            enum tk_parse_result r = tk_parse_ports(s, &m);
            if ((r == TK_PARSE_OK) != want)
                fail_msg("ports \"%s\": result %d, reference %d", buf, r, want);
            if (r != TK_PARSE_OK) {
                assert_marked_except(&m, &m, 0);
                continue;
            }
            ports_ok++;
            assert_int_equal(m.n_ports, n);
            assert_memory_equal(m.ports, ref_m.ports, n * sizeof(m.ports[0]));
            /* Matching against a few ports, checked by hand. */
            m.n_peers = 0;
            m.direction = TK_DIR_ANY;
            for (int j = 0; j < 4; j++) {
                struct tk_conn_key k = { .direction = TK_DIR_IN };
                uint64_t port = j == 0   ? m.ports[0].lo
                              : j == 1 ? (uint64_t)m.ports[0].hi + 1
                                       : rnd() % 65536;
                k.server_port = (uint16_t)port;
                bool in = false;
                for (unsigned p = 0; p < n; p++)
                    in = in || (k.server_port >= m.ports[p].lo && k.server_port <= m.ports[p].hi);
                if (tk_match_conn(&m, &k) != in)
                    fail_msg("ports \"%s\": port %u matched wrongly", buf, k.server_port);
                matched += in;
            }
            continue;
        }
        bool want = ref_peers(buf, ref_m.peers, &n);
        enum tk_parse_result r = tk_parse_peers(s, &m);
        if ((r == TK_PARSE_OK) != want)
            fail_msg("peers \"%s\": result %d, reference %d", buf, r, want);
        if (r != TK_PARSE_OK) {
            assert_marked_except(&m, &m, 0);
            continue;
        }
        peers_ok++;
        assert_int_equal(m.n_peers, n);
        for (unsigned p = 0; p < n; p++) {
            if (m.peers[p].family != ref_m.peers[p].family ||
                m.peers[p].prefix != ref_m.peers[p].prefix ||
                memcmp(m.peers[p].addr, ref_m.peers[p].addr, 16) != 0)
                fail_msg("peers \"%s\": item %u differs from the reference", buf, p);
            mapped_seen += strstr(buf, "::ffff:") && m.peers[p].family == AF_INET;
        }
        /* Keys near each CIDR: its own address with one bit flipped. */
        m.n_ports = 0;
        m.direction = TK_DIR_ANY;
        for (int j = 0; j < 4; j++) {
            const struct tk_cidr *c = &m.peers[rnd() % n];
            struct tk_conn_key k = { .direction = TK_DIR_OUT };
            k.peer_family = rnd() % 8 ? c->family : (c->family == AF_INET ? AF_INET6 : AF_INET);
            memcpy(k.peer_addr, c->addr, 16);
            unsigned width = k.peer_family == AF_INET ? 32 : 128;
            unsigned bit = (unsigned)(rnd() % width);
            if (rnd() % 2)
                k.peer_addr[bit / 8] ^= (uint8_t)(0x80u >> (bit % 8));
            bool in = false;
            for (unsigned p = 0; p < n; p++)
                in = in || (m.peers[p].family == k.peer_family &&
                            ref_in_cidr(&m.peers[p], k.peer_addr));
            if (tk_match_conn(&m, &k) != in)
                fail_msg("peers \"%s\": key matched wrongly (bit %u)", buf, bit);
            matched += in;
        }
    }
    print_message("fuzz: %u port lists, %u peer lists accepted of 50000 each, %u matches, "
                  "%u mapped\n", ports_ok, peers_ok, matched, mapped_seen);
    assert_true(ports_ok > 5000);
    assert_true(peers_ok > 5000);
    assert_true(mapped_seen > 100);
    assert_true(matched > 10000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_duration_good),
        cmocka_unit_test(test_duration_bad),
        cmocka_unit_test(test_duration_range),
        cmocka_unit_test(test_int_range),
        cmocka_unit_test(test_whole_seconds),
        cmocka_unit_test(test_switch),
        cmocka_unit_test(test_log_level),
        cmocka_unit_test(test_duration_in_bounds),
        cmocka_unit_test(test_int_in_bounds),
        cmocka_unit_test(test_seconds_in_bounds),
        cmocka_unit_test(test_switch_and_level_in_bounds),
        cmocka_unit_test(test_action_activity_direction),
        cmocka_unit_test(test_ports),
        cmocka_unit_test(test_ports_limit),
        cmocka_unit_test(test_peers),
        cmocka_unit_test(test_peers_limit),
        cmocka_unit_test(test_conn_key_set),
        cmocka_unit_test(test_match_conn),
        cmocka_unit_test_setup(test_load_defaults, env_setup),
        cmocka_unit_test_setup(test_load_all_good, env_setup),
        cmocka_unit_test_setup(test_load_durations, env_setup),
        cmocka_unit_test_setup(test_load_jitter, env_setup),
        cmocka_unit_test_setup(test_load_filter, env_setup),
        cmocka_unit_test_setup(test_load_user_timeout_limit, env_setup),
        cmocka_unit_test_setup(test_load_path_lengths, env_setup),
        cmocka_unit_test_setup(test_load_each_bad, env_setup),
        cmocka_unit_test_setup(test_load_two_bad, env_setup),
        cmocka_unit_test_setup(test_load_all_bad, env_setup),
        cmocka_unit_test_setup(test_load_libkeepalive, env_setup),
        cmocka_unit_test(test_fuzz_parsers),
        cmocka_unit_test(test_fuzz_lists),
    };
    return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
