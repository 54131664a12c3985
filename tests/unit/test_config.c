/* Unit tests of shim/config.c: the parsers of every TCPKEEP_* value and
 * tk_config_load() driven through a fake getenv. See CONTRACT.md,
 * "Environment" and "Bad input". */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
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
 * tk_config_load through a fake environment */

#define N_VARS 8
static const char *const var_names[N_VARS] = {
    "TCPKEEP_IDLE_TIMEOUT", "TCPKEEP_KEEPALIVE", "TCPKEEP_KEEPIDLE", "TCPKEEP_KEEPINTVL",
    "TCPKEEP_KEEPCNT", "TCPKEEP_USER_TIMEOUT", "TCPKEEP_LOG", "TCPKEEP_LOG_LEVEL",
};

static const char *fake_env[N_VARS]; /* value per var_names[i], NULL = unset */
static unsigned env_asked[N_VARS];
static unsigned env_asked_other;

static const char *fake_getenv(const char *name)
{
    for (int i = 0; i < N_VARS; i++) {
        if (strcmp(name, var_names[i]) == 0) {
            env_asked[i]++;
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

#define MAX_REPORTS 16
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
    return 0;
}

static void assert_defaults(const struct tk_config *c)
{
    assert_int_equal(c->idle_timeout_ms, 0);
    assert_true(c->keepalive);
    assert_int_equal(c->keepidle_s, 0);
    assert_int_equal(c->keepintvl_s, 0);
    assert_int_equal(c->keepcnt, 0);
    assert_int_equal(c->user_timeout_ms, 0);
    assert_int_equal(c->log_level, TK_LOG_WARN);
    assert_string_equal(c->log_dest, "stderr");
}

static void test_load_defaults(void **state)
{
    (void)state;
    struct tk_config cfg;
    struct reports rs = { 0 };
    memset(&cfg, 0xa5, sizeof(cfg)); /* garbage in: every field must be set */
    assert_int_equal(tk_config_load(&cfg, fake_getenv, record_report, &rs), 0);
    assert_int_equal(rs.n, 0);
    assert_defaults(&cfg);
    /* Every documented variable was looked up, once, and nothing else. */
    for (int i = 0; i < N_VARS; i++)
        if (env_asked[i] != 1)
            fail_msg("%s looked up %u times", var_names[i], env_asked[i]);
    assert_int_equal(env_asked_other, 0);

    struct tk_config d;
    memset(&d, 0x5a, sizeof(d));
    tk_config_defaults(&d);
    assert_defaults(&d);
}

static void test_load_all_good(void **state)
{
    (void)state;
    struct tk_config cfg;
    struct reports rs = { 0 };
    env_set("TCPKEEP_IDLE_TIMEOUT", "1500ms");
    env_set("TCPKEEP_KEEPALIVE", "off");
    env_set("TCPKEEP_KEEPIDLE", "2m");
    env_set("TCPKEEP_KEEPINTVL", "15");
    env_set("TCPKEEP_KEEPCNT", "5");
    env_set("TCPKEEP_USER_TIMEOUT", "30s");
    env_set("TCPKEEP_LOG", "/var/log/app tcpkeep.log");
    env_set("TCPKEEP_LOG_LEVEL", "debug");
    assert_int_equal(tk_config_load(&cfg, fake_getenv, record_report, &rs), 0);
    assert_int_equal(rs.n, 0);
    assert_int_equal(cfg.idle_timeout_ms, 1500);
    assert_false(cfg.keepalive);
    assert_int_equal(cfg.keepidle_s, 120);
    assert_int_equal(cfg.keepintvl_s, 15);
    assert_int_equal(cfg.keepcnt, 5);
    assert_int_equal(cfg.user_timeout_ms, 30000);
    assert_string_equal(cfg.log_dest, "/var/log/app tcpkeep.log");
    assert_int_equal(cfg.log_level, TK_LOG_DEBUG);

    /* A second set, other spellings and ends of the ranges. */
    env_set("TCPKEEP_IDLE_TIMEOUT", "1h");
    env_set("TCPKEEP_KEEPALIVE", "1");
    env_set("TCPKEEP_KEEPIDLE", "32767");
    env_set("TCPKEEP_KEEPINTVL", "1000ms");
    env_set("TCPKEEP_KEEPCNT", "127");
    env_set("TCPKEEP_USER_TIMEOUT", "596h");
    env_set("TCPKEEP_LOG", "off");
    env_set("TCPKEEP_LOG_LEVEL", "error");
    assert_int_equal(tk_config_load(&cfg, fake_getenv, record_report, &rs), 0);
    assert_int_equal(rs.n, 0);
    assert_int_equal(cfg.idle_timeout_ms, 3600000);
    assert_true(cfg.keepalive);
    assert_int_equal(cfg.keepidle_s, 32767);
    assert_int_equal(cfg.keepintvl_s, 1);
    assert_int_equal(cfg.keepcnt, 127);
    assert_int_equal(cfg.user_timeout_ms, 596ULL * 3600000);
    assert_string_equal(cfg.log_dest, "off");
    assert_int_equal(cfg.log_level, TK_LOG_ERROR);

    /* And a third: 0 where 0 means "never" / "kernel's". */
    env_setup(NULL);
    env_set("TCPKEEP_IDLE_TIMEOUT", "0");
    env_set("TCPKEEP_USER_TIMEOUT", "0");
    env_set("TCPKEEP_KEEPALIVE", "on");
    env_set("TCPKEEP_LOG", "stderr");
    env_set("TCPKEEP_LOG_LEVEL", "info");
    assert_int_equal(tk_config_load(&cfg, fake_getenv, record_report, &rs), 0);
    assert_int_equal(rs.n, 0);
    assert_int_equal(cfg.idle_timeout_ms, 0);
    assert_int_equal(cfg.user_timeout_ms, 0);
    assert_true(cfg.keepalive);
    assert_string_equal(cfg.log_dest, "stderr");
    assert_int_equal(cfg.log_level, TK_LOG_INFO);
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
        struct reports rs = { 0 };
        env_set("TCPKEEP_USER_TIMEOUT", cases[i].s);
        int bad = tk_config_load(&cfg, fake_getenv, record_report, &rs);
        if (cases[i].ok) {
            if (bad != 0 || cfg.user_timeout_ms != cases[i].ms)
                fail_msg("TCPKEEP_USER_TIMEOUT=%s: bad=%d ms=%u", cases[i].s, bad,
                         cfg.user_timeout_ms);
        } else {
            if (bad != 1 || rs.n != 1)
                fail_msg("TCPKEEP_USER_TIMEOUT=%s accepted (ms=%u)", cases[i].s,
                         cfg.user_timeout_ms);
            assert_string_equal(rs.r[0].var, "TCPKEEP_USER_TIMEOUT");
            assert_int_equal(cfg.user_timeout_ms, 0);
        }
    }
}

static void test_load_log_path_length(void **state)
{
    (void)state;
    static char path[5000];
    struct tk_config cfg;
    struct reports rs = { 0 };
    memset(path, 'a', sizeof(path));
    path[0] = '/';
    path[sizeof(cfg.log_dest) - 1] = '\0'; /* the longest that fits */
    env_set("TCPKEEP_LOG", path);
    assert_int_equal(tk_config_load(&cfg, fake_getenv, record_report, &rs), 0);
    assert_int_equal(rs.n, 0);
    assert_string_equal(cfg.log_dest, path);

    path[sizeof(cfg.log_dest) - 1] = 'a';
    path[sizeof(cfg.log_dest)] = '\0'; /* one too long: refused, not truncated */
    assert_int_equal(tk_config_load(&cfg, fake_getenv, record_report, &rs), 1);
    assert_int_equal(rs.n, 1);
    assert_string_equal(rs.r[0].var, "TCPKEEP_LOG");
    assert_string_equal(cfg.log_dest, "stderr");
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
        { "TCPKEEP_KEEPALIVE", "yes", NULL, { "on", "off" } },
        { "TCPKEEP_KEEPALIVE", "ON", NULL, { "on", "off" } },
        { "TCPKEEP_KEEPALIVE", "", NULL, { "on", "off" } },
        { "TCPKEEP_KEEPIDLE", "1500ms", NULL, { "seconds", "32767" } },
        { "TCPKEEP_KEEPIDLE", "0", NULL, { "seconds", "32767" } },
        { "TCPKEEP_KEEPINTVL", "32768", NULL, { "seconds", "32767" } },
        { "TCPKEEP_KEEPINTVL", "abc", NULL, { "seconds", "32767" } },
        { "TCPKEEP_KEEPCNT", "abc", "expected an integer 1..127", { 0 } },
        { "TCPKEEP_KEEPCNT", "0", "expected an integer 1..127", { 0 } },
        { "TCPKEEP_KEEPCNT", "128", "expected an integer 1..127", { 0 } },
        { "TCPKEEP_KEEPCNT", "", "expected an integer 1..127", { 0 } },
        { "TCPKEEP_USER_TIMEOUT", "1.5s", NULL, { "duration" } },
        { "TCPKEEP_USER_TIMEOUT", "597h", NULL, { "duration" } },
        { "TCPKEEP_LOG", "", NULL, { "stderr", "off", "path" } },
        { "TCPKEEP_LOG_LEVEL", "WARN", NULL, { "error", "warn", "info", "debug" } },
        { "TCPKEEP_LOG_LEVEL", "verbose", NULL, { "error", "warn", "info", "debug" } },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct tk_config cfg;
        struct reports rs = { 0 };
        env_setup(NULL);
        env_set(cases[i].var, cases[i].value);
        int bad = tk_config_load(&cfg, fake_getenv, record_report, &rs);
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
    struct reports rs = { 0 };
    env_set("TCPKEEP_IDLE_TIMEOUT", "10s");     /* good */
    env_set("TCPKEEP_KEEPALIVE", "yes");        /* bad */
    env_set("TCPKEEP_KEEPIDLE", "60");          /* good */
    env_set("TCPKEEP_KEEPCNT", "abc");          /* bad */
    env_set("TCPKEEP_LOG_LEVEL", "info");       /* good */
    assert_int_equal(tk_config_load(&cfg, fake_getenv, record_report, &rs), 2);
    assert_int_equal(rs.n, 2);
    /* Both named, each with its own value and text, in the table's order. */
    assert_string_equal(rs.r[0].var, "TCPKEEP_KEEPALIVE");
    assert_string_equal(rs.r[0].value, "yes");
    assert_string_equal(rs.r[1].var, "TCPKEEP_KEEPCNT");
    assert_string_equal(rs.r[1].value, "abc");
    assert_string_equal(rs.r[1].expected, "expected an integer 1..127");
    assert_string_not_equal(rs.r[0].expected, rs.r[1].expected);
    /* The good ones still parsed. */
    assert_int_equal(cfg.idle_timeout_ms, 10000);
    assert_true(cfg.keepalive);
    assert_int_equal(cfg.keepidle_s, 60);
    assert_int_equal(cfg.keepcnt, 0);
    assert_int_equal(cfg.log_level, TK_LOG_INFO);
}

static void test_load_all_bad(void **state)
{
    (void)state;
    static const char *const values[N_VARS] = {
        "soon", "maybe", "0", "99999s", "-3", "forever", "", "loud",
    };
    struct tk_config cfg;
    struct reports rs = { 0 };
    for (int i = 0; i < N_VARS; i++)
        fake_env[i] = values[i];
    assert_int_equal(tk_config_load(&cfg, fake_getenv, record_report, &rs), N_VARS);
    assert_int_equal(rs.n, N_VARS);
    for (int i = 0; i < N_VARS; i++) {
        assert_string_equal(rs.r[i].var, var_names[i]);
        assert_string_equal(rs.r[i].value, values[i]);
    }
    assert_defaults(&cfg);
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
                                             "debug", "1", "0", "127", "32767" };
        snprintf(buf, cap, "%s", words[rnd() % 10]);
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
    }
    /* The generator reached both sides of every parser. */
    print_message("fuzz: %u durations, %u integers, %u second counts accepted of 200000\n",
                  accepted_dur, accepted_int, accepted_sec);
    assert_true(accepted_dur > 1000);
    assert_true(accepted_int > 100);
    assert_true(accepted_sec > 100);
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
        cmocka_unit_test_setup(test_load_defaults, env_setup),
        cmocka_unit_test_setup(test_load_all_good, env_setup),
        cmocka_unit_test_setup(test_load_user_timeout_limit, env_setup),
        cmocka_unit_test_setup(test_load_log_path_length, env_setup),
        cmocka_unit_test_setup(test_load_each_bad, env_setup),
        cmocka_unit_test_setup(test_load_two_bad, env_setup),
        cmocka_unit_test_setup(test_load_all_bad, env_setup),
        cmocka_unit_test(test_fuzz_parsers),
    };
    return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
