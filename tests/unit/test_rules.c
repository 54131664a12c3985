/* Unit tests of shim/rules.c (the rules file's syntax, first-match lookup)
 * and shim/rules_file.c (reading it, and watching it change) against real
 * files in a temporary directory. tk_log and tk_log_stderr are stubbed here
 * to capture what would be logged; tk_mem_alloc/tk_mem_free are wrapped
 * (-Wl,--wrap) to inject failures and to count what is not given back. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "rules.h"

/* ---------------------------------------------------------------------------
 * Stubs and wrappers */

struct logged {
    bool to_stderr;
    enum tk_log_level level;
    char text[2048];
};

/* A changed file is read once it looks the same at two polls (the
 * watchdog polls again 250 ms after seeing a change): poll like that. */
static struct tk_rules *poll_settled(void)
{
    struct tk_rules *r = tk_rules_file_poll();
    if (!r && tk_rules_file_settling())
        r = tk_rules_file_poll();
    return r;
}

static struct logged logs[64];
static int n_logs;

static void capture(bool to_stderr, enum tk_log_level level, const char *fmt, va_list ap)
{
    assert_true(n_logs < (int)(sizeof(logs) / sizeof(logs[0])));
    struct logged *l = &logs[n_logs++];
    l->to_stderr = to_stderr;
    l->level = level;
    vsnprintf(l->text, sizeof(l->text), fmt, ap);
    errno = EDOM; /* the callers must keep errno themselves */
}

void tk_log(enum tk_log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    capture(false, level, fmt, ap);
    va_end(ap);
}

void tk_log_stderr(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    capture(true, TK_LOG_ERROR, fmt, ap);
    va_end(ap);
}

void *__real_tk_mem_alloc(size_t size);
void __real_tk_mem_free(void *p, size_t size);
void *__wrap_tk_mem_alloc(size_t size);
void __wrap_tk_mem_free(void *p, size_t size);

static int alloc_fail_at = -1; /* the call number that fails, -1 = none */
static int alloc_calls;
static long long bytes_out; /* allocated and not yet freed */

void *__wrap_tk_mem_alloc(size_t size)
{
    if (alloc_calls++ == alloc_fail_at)
        return NULL;
    void *p = __real_tk_mem_alloc(size);
    if (p)
        bytes_out += (long long)size;
    return p;
}

void __wrap_tk_mem_free(void *p, size_t size)
{
    if (p)
        bytes_out -= (long long)size;
    __real_tk_mem_free(p, size);
}

static int reset_counters(void **state)
{
    (void)state;
    n_logs = 0;
    alloc_calls = 0;
    alloc_fail_at = -1;
    bytes_out = 0;
    return 0;
}

static int check_no_leak(void **state)
{
    (void)state;
    if (bytes_out != 0)
        fail_msg("%lld bytes from tk_mem_alloc not given back", bytes_out);
    return 0;
}

/* ---------------------------------------------------------------------------
 * Helpers */

static struct tk_settings base_settings(void)
{
    struct tk_settings s;
    memset(&s, 0, sizeof(s));
    s.keepalive = true;
    return s;
}

static struct tk_rules *parse_with(const char *text, const struct tk_settings *base)
{
    unsigned line = 99;
    char msg[512] = "untouched";
    struct tk_rules *r = tk_rules_parse(text, strlen(text), base, &line, msg, sizeof(msg));
    if (!r)
        fail_msg("rules \"%s\" refused: line %u: %s", text, line, msg);
    assert_string_equal(msg, "");
    assert_int_equal(line, 0);
    return r;
}

static struct tk_rules *parse(const char *text)
{
    struct tk_settings base = base_settings();
    return parse_with(text, &base);
}

/* Parses text that must fail on `line` with a message equal to `want`
 * (or, with want starting with '~', containing the rest). */
static void expect_error_len(const char *text, size_t len, const struct tk_settings *base,
                             unsigned want_line, const char *want)
{
    unsigned line = 9999;
    char msg[512] = "untouched";
    struct tk_rules *r = tk_rules_parse(text, len, base, &line, msg, sizeof(msg));
    if (r)
        fail_msg("rules \"%s\" accepted (%u rules)", text, r->n);
    if (line != want_line)
        fail_msg("rules \"%s\": error on line %u, expected %u (%s)", text, line, want_line,
                 msg);
    if (want[0] == '~' ? !strstr(msg, want + 1) : strcmp(msg, want) != 0)
        fail_msg("rules \"%s\":\n  said     %s\n  expected %s", text, msg, want);
}

static void expect_error(const char *text, unsigned want_line, const char *want)
{
    struct tk_settings base = base_settings();
    expect_error_len(text, strlen(text), &base, want_line, want);
}

static struct tk_conn_key key(uint8_t dir, const char *peer, uint16_t server_port)
{
    struct tk_conn_key k;
    memset(&k, 0, sizeof(k));
    k.direction = dir;
    k.server_port = server_port;
    if (peer && strchr(peer, ':')) {
        k.peer_family = AF_INET6;
        assert_int_equal(inet_pton(AF_INET6, peer, k.peer_addr), 1);
    } else if (peer) {
        k.peer_family = AF_INET;
        assert_int_equal(inet_pton(AF_INET, peer, k.peer_addr), 1);
    }
    return k;
}

/* The line number of the rule that applies to k, 0 for none. */
static unsigned rule_for(const struct tk_rules *r, struct tk_conn_key k)
{
    const struct tk_settings *s = tk_rules_lookup(r, &k);
    if (!s)
        return 0;
    for (unsigned i = 0; i < r->n; i++)
        if (s == &r->rule[i].set)
            return r->rule[i].line;
    fail_msg("lookup returned a pointer outside the set");
    return 0;
}

/* ---------------------------------------------------------------------------
 * Parsing */

static void test_issue_example(void **state)
{
    (void)state;
    static const char text[] =
        "# MATCH: SETTINGS\n"
        "port=6379: idle=5m keepidle=60\n"
        "direction=out: idle=0\n"
        "peer=10.0.0.0/8 port=8000-8100: read=30s first-byte=5s action=reset\n"
        "*: idle=30s\n";
    struct tk_settings base = base_settings();
    base.idle_ms = 7000;
    struct tk_rules *r = parse_with(text, &base);
    assert_int_equal(r->n, 4);
    assert_true(r->bytes >= sizeof(*r) + 4 * sizeof(r->rule[0]));

    const struct tk_rule *x = &r->rule[0];
    assert_int_equal(x->line, 2);
    assert_int_equal(x->match.n_ports, 1);
    assert_int_equal(x->match.ports[0].lo, 6379);
    assert_int_equal(x->match.ports[0].hi, 6379);
    assert_int_equal(x->match.n_peers, 0);
    assert_int_equal(x->match.direction, TK_DIR_ANY);
    assert_int_equal(x->set.idle_ms, 300000);
    assert_int_equal(x->set.keepidle_s, 60);
    assert_true(x->set.keepalive);

    x = &r->rule[1];
    assert_int_equal(x->line, 3);
    assert_int_equal(x->match.direction, TK_DIR_OUT);
    assert_int_equal(x->match.n_ports, 0);
    assert_int_equal(x->set.idle_ms, 0);

    x = &r->rule[2];
    assert_int_equal(x->line, 4);
    assert_int_equal(x->match.n_peers, 1);
    assert_int_equal(x->match.peers[0].family, AF_INET);
    assert_int_equal(x->match.peers[0].prefix, 8);
    assert_int_equal(x->match.n_ports, 1);
    assert_int_equal(x->match.ports[0].lo, 8000);
    assert_int_equal(x->match.ports[0].hi, 8100);
    assert_int_equal(x->set.read_ms, 30000);
    assert_int_equal(x->set.first_byte_ms, 5000);
    assert_int_equal(x->set.action, TK_ACTION_RESET);
    assert_int_equal(x->set.idle_ms, 7000); /* from the base */

    x = &r->rule[3];
    assert_int_equal(x->line, 5);
    assert_int_equal(x->match.n_ports, 0);
    assert_int_equal(x->match.n_peers, 0);
    assert_int_equal(x->match.direction, TK_DIR_ANY);
    assert_int_equal(x->set.idle_ms, 30000);

    /* First match wins. */
    assert_int_equal(rule_for(r, key(TK_DIR_OUT, "10.1.1.1", 6379)), 2);
    assert_int_equal(rule_for(r, key(TK_DIR_IN, "192.0.2.1", 6379)), 2);
    assert_int_equal(rule_for(r, key(TK_DIR_OUT, "10.1.1.1", 8080)), 3);
    assert_int_equal(rule_for(r, key(TK_DIR_IN, "10.1.1.1", 8080)), 4);
    assert_int_equal(rule_for(r, key(TK_DIR_IN, "11.1.1.1", 8080)), 5);
    assert_int_equal(rule_for(r, key(TK_DIR_IN, "::1", 8080)), 5);
    assert_int_equal(rule_for(r, key(TK_DIR_IN, NULL, 0)), 5);
    tk_rules_free(r);
}

/* Every key, its field, and the ends of its range. */
static void test_every_key(void **state)
{
    (void)state;
    struct tk_rules *r = parse(
        "*: idle=1s read=2s write=3s first-byte=4s half-closed=5s lifetime=6s "
        "lifetime-jitter=7 action=reset keepalive=off keepidle=8 keepintvl=9 keepcnt=10 "
        "user-timeout=11s override=on dry-run=on\n"
        "*: idle=1500ms read=5m write=1h first-byte=0 half-closed=1000000000s lifetime=1ms "
        "lifetime-jitter=100 action=shutdown keepalive=on keepidle=32767 keepintvl=1000ms "
        "keepcnt=127 user-timeout=2147483647ms override=off dry-run=0\n"
        "*: keepalive=1 override=1 dry-run=1 lifetime-jitter=0 user-timeout=0 keepcnt=1 "
        "keepidle=9h keepintvl=1\n"
        "*: keepalive=0 override=0 dry-run=off action=shutdown\n");
    assert_int_equal(r->n, 4);
    const struct tk_settings *s = &r->rule[0].set;
    assert_int_equal(s->idle_ms, 1000);
    assert_int_equal(s->read_ms, 2000);
    assert_int_equal(s->write_ms, 3000);
    assert_int_equal(s->first_byte_ms, 4000);
    assert_int_equal(s->half_closed_ms, 5000);
    assert_int_equal(s->lifetime_ms, 6000);
    assert_int_equal(s->lifetime_jitter, 7);
    assert_int_equal(s->action, TK_ACTION_RESET);
    assert_false(s->keepalive);
    assert_int_equal(s->keepidle_s, 8);
    assert_int_equal(s->keepintvl_s, 9);
    assert_int_equal(s->keepcnt, 10);
    assert_int_equal(s->user_timeout_ms, 11000);
    assert_true(s->override);
    assert_true(s->dry_run);

    s = &r->rule[1].set;
    assert_int_equal(s->idle_ms, 1500);
    assert_int_equal(s->read_ms, 300000);
    assert_int_equal(s->write_ms, 3600000);
    assert_int_equal(s->first_byte_ms, 0);
    assert_int_equal(s->half_closed_ms, TK_DURATION_MAX_MS);
    assert_int_equal(s->lifetime_ms, 1);
    assert_int_equal(s->lifetime_jitter, 100);
    assert_int_equal(s->action, TK_ACTION_SHUTDOWN);
    assert_true(s->keepalive);
    assert_int_equal(s->keepidle_s, 32767);
    assert_int_equal(s->keepintvl_s, 1);
    assert_int_equal(s->keepcnt, 127);
    assert_int_equal(s->user_timeout_ms, 2147483647u);
    assert_false(s->override);
    assert_false(s->dry_run);

    s = &r->rule[2].set;
    assert_true(s->keepalive);
    assert_true(s->override);
    assert_true(s->dry_run);
    assert_int_equal(s->keepcnt, 1);
    assert_int_equal(s->keepidle_s, 32400);
    assert_int_equal(s->keepintvl_s, 1);

    s = &r->rule[3].set;
    assert_false(s->keepalive);
    assert_false(s->override);
    assert_false(s->dry_run);
    tk_rules_free(r);
}

/* Each rule's settings are the base with the line's keys laid over it. */
static void test_base_inheritance(void **state)
{
    (void)state;
    struct tk_settings base;
    memset(&base, 0, sizeof(base));
    base.idle_ms = 11;
    base.read_ms = 12;
    base.write_ms = 13;
    base.first_byte_ms = 14;
    base.half_closed_ms = 15;
    base.lifetime_ms = 16;
    base.lifetime_jitter = 17;
    base.user_timeout_ms = 18;
    base.keepidle_s = 19;
    base.keepintvl_s = 20;
    base.keepcnt = 21;
    base.keepalive = true;
    base.override = true;
    base.dry_run = true;
    base.action = TK_ACTION_RESET;
    struct tk_rules *r = parse_with("*:\n"
                                    "port=1 :\n"
                                    "port=2: idle=1s\n"
                                    "port=3: lifetime=0 lifetime-jitter=0 keepalive=off\n",
                                    &base);
    assert_int_equal(r->n, 4);
    assert_memory_equal(&r->rule[0].set, &base, sizeof(base));
    assert_memory_equal(&r->rule[1].set, &base, sizeof(base));

    struct tk_settings want = base;
    want.idle_ms = 1000;
    assert_memory_equal(&r->rule[2].set, &want, sizeof(want));

    want = base;
    want.lifetime_ms = 0;
    want.lifetime_jitter = 0;
    want.keepalive = false;
    assert_memory_equal(&r->rule[3].set, &want, sizeof(want));
    tk_rules_free(r);

    /* The base's jitter needs a lifetime on every line that drops it. */
    struct tk_settings jittery = base_settings();
    jittery.lifetime_ms = 3600000;
    jittery.lifetime_jitter = 10;
    r = parse_with("*: idle=1s\n", &jittery);
    assert_int_equal(r->rule[0].set.lifetime_jitter, 10);
    tk_rules_free(r);
    static const char dropped[] = "port=80: idle=1s\n*: lifetime=0\n";
    expect_error_len(dropped, strlen(dropped), &jittery, 2,
                     "lifetime-jitter is 10% but lifetime is 0; expected a lifetime= too "
                     "(or lifetime-jitter=0)");
}

/* IPv6 peers hold ':'; only a word's last ':' ends the MATCH part. */
static void test_ipv6_colons(void **state)
{
    (void)state;
    struct tk_rules *r = parse("peer=::1/128: idle=5s\n"
                               "peer=fe80::1 port=22: idle=0\n"
                               "peer=2001:db8::/32 direction=in : idle=1s\n"
                               "peer=::ffff:10.0.0.0/104: idle=2s\n"
                               "peer=::1,127.0.0.1 port=80,443 direction=out: idle=3s\n");
    assert_int_equal(r->n, 5);
    uint8_t want[16];

    const struct tk_rule *x = &r->rule[0];
    assert_int_equal(x->match.n_peers, 1);
    assert_int_equal(x->match.peers[0].family, AF_INET6);
    assert_int_equal(x->match.peers[0].prefix, 128);
    inet_pton(AF_INET6, "::1", want);
    assert_memory_equal(x->match.peers[0].addr, want, 16);
    assert_int_equal(x->set.idle_ms, 5000);

    x = &r->rule[1];
    assert_int_equal(x->match.peers[0].family, AF_INET6);
    inet_pton(AF_INET6, "fe80::1", want);
    assert_memory_equal(x->match.peers[0].addr, want, 16);
    assert_int_equal(x->match.n_ports, 1);
    assert_int_equal(x->match.ports[0].lo, 22);
    assert_int_equal(x->set.idle_ms, 0);

    x = &r->rule[2];
    assert_int_equal(x->match.peers[0].prefix, 32);
    assert_int_equal(x->match.direction, TK_DIR_IN);
    assert_int_equal(x->set.idle_ms, 1000);

    x = &r->rule[3];
    assert_int_equal(x->match.peers[0].family, AF_INET);
    assert_int_equal(x->match.peers[0].prefix, 8);

    x = &r->rule[4];
    assert_int_equal(x->match.n_peers, 2);
    assert_int_equal(x->match.n_ports, 2);
    assert_int_equal(x->match.direction, TK_DIR_OUT);
    tk_rules_free(r);
}

static void test_ipv6_colon_errors(void **state)
{
    (void)state;
    /* With no space after the ':' the line has no MATCH end. */
    expect_error("peer=::1:idle=5s\n", 1,
                 "no word ends with ':'; expected MATCH: SETTINGS, such as "
                 "\"port=6379: idle=5m\" (a space after the ':')");
    expect_error("peer=fe80::2 :idle=4s\n", 1,
                 "~no word ends with ':'");
    /* An address ending in "::" loses one ':' to the MATCH end. */
    expect_error("peer=fe80:: idle=5s\n", 1,
                 "peer=\"fe80:\": expected IPv4 or IPv6 addresses or CIDRs such as "
                 "10.0.0.0/8,::1/128");
    struct tk_rules *r = parse("peer=fe80::/128 : idle=5s\npeer=fe80::: idle=6s\n");
    assert_int_equal(r->n, 2);
    assert_int_equal(r->rule[1].match.peers[0].family, AF_INET6);
    assert_int_equal(r->rule[1].set.idle_ms, 6000);
    tk_rules_free(r);
}

static void test_comments_blanks_crlf(void **state)
{
    (void)state;
    static const char text[] =
        "\n"
        "   \t \r\n"
        "# a comment\n"
        "   # an indented one\n"
        "port=80: idle=5s # the rest of this line is a comment: idle=9s\n"
        "\tport=81:\tidle=6s\t\r\n"
        "port=82: idle=7s#no space before it\r\n"
        "port=83:# nothing after the colon but a comment\n"
        "port=84: idle=8s \r \t\r\n"
        "#port=85: idle=9s\n"
        "port=86: idle=10s"; /* no newline at the end */
    struct tk_rules *r = parse(text);
    assert_int_equal(r->n, 6);
    static const struct { unsigned line; uint16_t port; uint64_t idle; } want[] = {
        { 5, 80, 5000 }, { 6, 81, 6000 }, { 7, 82, 7000 }, { 8, 83, 0 }, { 9, 84, 8000 },
        { 11, 86, 10000 },
    };
    for (unsigned i = 0; i < 6; i++) {
        assert_int_equal(r->rule[i].line, want[i].line);
        assert_int_equal(r->rule[i].match.ports[0].lo, want[i].port);
        assert_int_equal(r->rule[i].set.idle_ms, want[i].idle);
    }
    tk_rules_free(r);

    /* Nothing but blanks and comments: a valid set with no rule. */
    static const char *const empty[] = { "", "\n", "\r\n\r\n", "# x\n  # y: idle=1s\n",
                                         " \t ", "#" };
    for (size_t i = 0; i < sizeof(empty) / sizeof(empty[0]); i++) {
        r = parse(empty[i]);
        assert_int_equal(r->n, 0);
        struct tk_conn_key k = key(TK_DIR_IN, "127.0.0.1", 80);
        assert_null(tk_rules_lookup(r, &k));
        tk_rules_free(r);
    }

    /* A NUL inside a comment is no problem; inside a rule it is. */
    static const char nul_comment[] = "*: idle=1s # a\0b\n";
    struct tk_settings base = base_settings();
    unsigned line;
    char msg[256];
    r = tk_rules_parse(nul_comment, sizeof(nul_comment) - 1, &base, &line, msg, sizeof(msg));
    assert_non_null(r);
    assert_int_equal(r->n, 1);
    tk_rules_free(r);
    static const char nul_rule[] = "# fine\n*: idle=1s\0 read=2s\n";
    expect_error_len(nul_rule, sizeof(nul_rule) - 1, &base, 2, "a NUL byte; expected text");

    /* Only len bytes are read: what follows is not part of the file. */
    static const char longer[] = "*: idle=1s\n*: idle=oops\n";
    r = tk_rules_parse(longer, 11, &base, &line, msg, sizeof(msg));
    assert_non_null(r);
    assert_int_equal(r->n, 1);
    tk_rules_free(r);
    r = tk_rules_parse(longer, 9, &base, &line, msg, sizeof(msg)); /* "*: idle=1" */
    assert_non_null(r);
    assert_int_equal(r->rule[0].set.idle_ms, 1000);
    tk_rules_free(r);
}

static void test_first_match_wins(void **state)
{
    (void)state;
    struct tk_rules *r = parse("port=22: idle=0\n"
                               "port=22 direction=in: idle=1s\n" /* shadowed by line 1 */
                               "peer=10.0.0.0/8 direction=in: idle=2s\n"
                               "peer=10.1.0.0/16: idle=3s\n"
                               "peer=::/0: idle=4s\n"
                               "direction=out: idle=5s\n");
    assert_int_equal(rule_for(r, key(TK_DIR_IN, "10.1.2.3", 22)), 1);
    assert_int_equal(rule_for(r, key(TK_DIR_IN, "10.1.2.3", 80)), 3);
    assert_int_equal(rule_for(r, key(TK_DIR_OUT, "10.1.2.3", 80)), 4);
    assert_int_equal(rule_for(r, key(TK_DIR_OUT, "10.2.2.3", 80)), 6);
    assert_int_equal(rule_for(r, key(TK_DIR_IN, "2001:db8::1", 80)), 5);
    assert_int_equal(rule_for(r, key(TK_DIR_IN, "192.0.2.1", 80)), 0);
    assert_int_equal(rule_for(r, key(TK_DIR_IN, NULL, 80)), 0);
    assert_int_equal(rule_for(r, key(TK_DIR_OUT, NULL, 80)), 6);
    const struct tk_conn_key k = key(TK_DIR_OUT, "10.1.2.3", 80);
    assert_int_equal(tk_rules_lookup(r, &k)->idle_ms, 3000);
    assert_null(tk_rules_lookup(NULL, &k));
    tk_rules_free(r);
    tk_rules_free(NULL);
}

#define KEYS "idle, read, write, first-byte, half-closed, lifetime, lifetime-jitter, " \
             "action, keepalive, keepidle, keepintvl, keepcnt, user-timeout, override, dry-run"
#define DURATION "expected a duration such as 30s, 1500ms, 5m or 1h"
#define SECONDS "expected whole seconds 1..32767, such as 60 or 2m"
#define PORTS "expected ports 1..65535 and ranges such as 80,443,8000-8100"
#define PEERS "expected IPv4 or IPv6 addresses or CIDRs such as 10.0.0.0/8,::1/128"
#define NO_COLON "no word ends with ':'; expected MATCH: SETTINGS, such as " \
                 "\"port=6379: idle=5m\" (a space after the ':')"

static void test_errors(void **state)
{
    (void)state;
    static const struct { const char *text; unsigned line; const char *msg; } cases[] = {
        /* The shape of a line. */
        { "port=80 idle=5s", 1, NO_COLON },
        { "*:idle=5s", 1, NO_COLON },
        { "*", 1, NO_COLON },
        { "port=80", 1, NO_COLON },
        { ": idle=5s", 1, "nothing before ':'; expected * or port=, peer=, direction=" },
        { ":", 1, "nothing before ':'; expected * or port=, peer=, direction=" },
        /* MATCH */
        { "host=x: idle=5s", 1,
          "unknown match \"host=x\"; expected *, port=, peer= or direction=" },
        { "port: idle=5s", 1, "unknown match \"port\"; expected *, port=, peer= or direction=" },
        { "idle=5s port=80: idle=1s", 1,
          "unknown match \"idle=5s\"; expected *, port=, peer= or direction=" },
        { "Port=80: idle=1s", 1,
          "unknown match \"Port=80\"; expected *, port=, peer= or direction=" },
        { "* port=80: idle=1s", 1,
          "\"port=80\" after \"*\"; expected * alone, or port=, peer=, direction=" },
        { "port=80 *: idle=1s", 1,
          "\"*\" with other matches; expected * alone, or port=, peer=, direction=" },
        { "* *: idle=1s", 1,
          "\"*\" with other matches; expected * alone, or port=, peer=, direction=" },
        { "port=80 port=443: idle=1s", 1,
          "port= given twice; expected each of port=, peer=, direction= at most once, "
          "with a list such as port=80,443" },
        { "peer=::1 peer=::2 : idle=1s", 1, "~peer= given twice" },
        { "direction=in direction=out: idle=1s", 1, "~direction= given twice" },
        { "port=70000: idle=5s", 1, "port=\"70000\": " PORTS },
        { "port=: idle=5s", 1, "port=\"\": " PORTS },
        { "port=80,,443: idle=5s", 1, "port=\"80,,443\": " PORTS },
        { "port=1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,"
          "29,30,31,32,33: idle=1s", 1,
          "~: expected at most 32 ports and ranges, such as 80,443,8000-8100" },
        { "peer=10.0.0.0/33: idle=5s", 1, "peer=\"10.0.0.0/33\": " PEERS },
        { "peer=localhost: idle=5s", 1, "peer=\"localhost\": " PEERS },
        { "peer=: idle=5s", 1, "peer=\"\": " PEERS },
        { "direction=sideways: idle=5s", 1,
          "direction=\"sideways\": expected in, out or both" },
        /* SETTINGS */
        { "*: idel=5s", 1, "unknown key \"idel\"; expected one of " KEYS },
        { "*: IDLE=5s", 1, "unknown key \"IDLE\"; expected one of " KEYS },
        { "*: =5s", 1, "unknown key \"\"; expected one of " KEYS },
        { "*: port=80", 1, "unknown key \"port\"; expected one of " KEYS },
        { "*: idle", 1, "\"idle\" is not KEY=VALUE; expected settings such as idle=30s" },
        { "*: idle=5s idle=6s", 1, "idle= given twice; expected each key at most once per line" },
        { "*: dry-run=on dry-run=on", 1, "~dry-run= given twice" },
        { "*: idle=5x", 1, "idle=\"5x\": " DURATION },
        { "*: idle=", 1, "idle=\"\": " DURATION },
        { "*: idle=5s:", 1, "idle=\"5s:\": " DURATION },
        { "*: idle=5 s", 1, "\"s\" is not KEY=VALUE; expected settings such as idle=30s" },
        { "*: read=-1", 1, "read=\"-1\": " DURATION },
        { "*: write=1.5s", 1, "write=\"1.5s\": " DURATION },
        { "*: first-byte=soon", 1, "first-byte=\"soon\": " DURATION },
        { "*: half-closed=1d", 1, "half-closed=\"1d\": " DURATION },
        { "*: lifetime=277778h", 1, "lifetime=\"277778h\": " DURATION },
        { "*: lifetime=1h lifetime-jitter=101", 1,
          "lifetime-jitter=\"101\": expected a percentage 0..100" },
        { "*: lifetime=1h lifetime-jitter=10%", 1,
          "lifetime-jitter=\"10%\": expected a percentage 0..100" },
        { "*: action=kill", 1, "action=\"kill\": expected shutdown or reset" },
        { "*: keepalive=yes", 1, "keepalive=\"yes\": expected on or off" },
        { "*: keepidle=0", 1, "keepidle=\"0\": " SECONDS },
        { "*: keepidle=32768", 1, "keepidle=\"32768\": " SECONDS },
        { "*: keepintvl=1500ms", 1, "keepintvl=\"1500ms\": " SECONDS },
        { "*: keepcnt=128", 1, "keepcnt=\"128\": expected an integer 1..127" },
        { "*: keepcnt=0", 1, "keepcnt=\"0\": expected an integer 1..127" },
        { "*: user-timeout=597h", 1,
          "user-timeout=\"597h\": expected a duration up to 596h, such as 30s or 1500ms" },
        { "*: user-timeout=2147483648ms", 1, "~user-timeout=\"2147483648ms\": expected" },
        { "*: override=maybe", 1, "override=\"maybe\": expected on or off" },
        { "*: dry-run=true", 1, "dry-run=\"true\": expected on, off, 1 or 0" },
        /* A jitter needs a lifetime. */
        { "*: lifetime-jitter=10", 1,
          "lifetime-jitter is 10% but lifetime is 0; expected a lifetime= too "
          "(or lifetime-jitter=0)" },
        { "*: lifetime=0 lifetime-jitter=1", 1, "~lifetime-jitter is 1% but lifetime is 0" },
        /* The line number is the file's, comments and blanks counted. */
        { "# c\n\n*: idle=1s\n\r\n  # d\nport=80: idle=1x\n*: idle=2s\n", 6,
          "idle=\"1x\": " DURATION },
        { "*: idle=1s\r\n*: idle=1s\r\n*: keepcnt=200\r\n", 3,
          "keepcnt=\"200\": expected an integer 1..127" },
        /* What was found is shown safely: escaped, and cut when long. */
        { "*: idle=\x01\"\\\xff", 1, "idle=\"\\x01\\\"\\\\\\xff\": " DURATION },
        { "*: idle=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
          1, "idle=\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...\": "
             DURATION },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        expect_error(cases[i].text, cases[i].line, cases[i].msg);
}

static void test_long_token(void **state)
{
    (void)state;
    static char text[8192];
    /* The longest word accepted is 2047 bytes: a 32-peer list fits easily. */
    size_t len = (size_t)snprintf(text, sizeof(text), "peer=");
    for (int i = 0; i < TK_MATCH_PEERS_MAX; i++)
        len += (size_t)snprintf(text + len, sizeof(text) - len, "%s%s", i ? "," : "",
                                "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255/128");
    assert_true(len < 2047);
    snprintf(text + len, sizeof(text) - len, ": idle=1s\n");
    struct tk_rules *r = parse(text);
    assert_int_equal(r->rule[0].match.n_peers, TK_MATCH_PEERS_MAX);
    tk_rules_free(r);

    memset(text, 'x', 3000);
    memcpy(text, "*: idle=", 8);
    text[3000] = '\0';
    expect_error(text, 1, "~ is 2997 bytes long; expected at most 2047");
}

/* TK_RULES_MAX rules are fine; one more is an error on its own line. */
static void test_rule_limit(void **state)
{
    (void)state;
    static char text[64 * 1024];
    size_t len = 0;
    unsigned line = 0, line_257 = 0;
    for (int i = 1; i <= TK_RULES_MAX + 1; i++) {
        len += (size_t)snprintf(text + len, sizeof(text) - len, "# rule %d\n", i);
        line++;
        len += (size_t)snprintf(text + len, sizeof(text) - len, "port=%d: idle=%ds\n", i, i);
        line++;
        if (i == TK_RULES_MAX + 1)
            line_257 = line;
        if (i == TK_RULES_MAX) {
            struct tk_rules *r = parse(text);
            assert_int_equal(r->n, TK_RULES_MAX);
            assert_int_equal(r->rule[TK_RULES_MAX - 1].set.idle_ms, TK_RULES_MAX * 1000);
            assert_int_equal(r->rule[TK_RULES_MAX - 1].line, line);
            assert_true(r->bytes >= sizeof(*r) + TK_RULES_MAX * sizeof(r->rule[0]));
            struct tk_conn_key k = key(TK_DIR_IN, "127.0.0.1", TK_RULES_MAX);
            assert_int_equal(rule_for(r, k), line);
            tk_rules_free(r);
        }
    }
    /* Comments after the last rule do not count. */
    snprintf(text + len, sizeof(text) - len, "# end\n\n");
    expect_error(text, line_257, "more than 256 rules; expected at most 256");
    assert_int_equal(TK_RULES_MAX, 256);
}

/* A bad value reads the same in the rules file as in the environment. */
static const char *env_value;
static const char *env_name;
static const char *one_var_getenv(const char *name)
{
    if (strcmp(name, env_name) == 0)
        return env_value;
    if (strcmp(name, "TCPKEEP_MAX_LIFETIME") == 0)
        return "1h"; /* so that a jitter stands on its own */
    return NULL;
}

static char env_expected[256];
static void keep_expected(const char *var, const char *value, const char *expected, void *ctx)
{
    (void)var;
    (void)value;
    (void)ctx;
    snprintf(env_expected, sizeof(env_expected), "%s", expected);
}

static void test_same_as_environment(void **state)
{
    (void)state;
    static const struct { const char *key, *var, *bad, *good; } twins[] = {
        { "idle", "TCPKEEP_IDLE_TIMEOUT", "5x", "90m" },
        { "read", "TCPKEEP_READ_TIMEOUT", "-1", "1500ms" },
        { "write", "TCPKEEP_WRITE_TIMEOUT", "1.5s", "2h" },
        { "first-byte", "TCPKEEP_FIRST_BYTE_TIMEOUT", "", "5" },
        { "half-closed", "TCPKEEP_HALF_CLOSED_TIMEOUT", "1000000001", "1000000000" },
        { "lifetime", "TCPKEEP_MAX_LIFETIME", "forever", "24h" },
        { "lifetime-jitter", "TCPKEEP_MAX_LIFETIME_JITTER", "200", "50" },
        { "action", "TCPKEEP_ACTION", "close", "reset" },
        { "keepalive", "TCPKEEP_KEEPALIVE", "yes", "off" },
        { "keepidle", "TCPKEEP_KEEPIDLE", "1500ms", "2m" },
        { "keepintvl", "TCPKEEP_KEEPINTVL", "32768", "1000ms" },
        { "keepcnt", "TCPKEEP_KEEPCNT", "0", "127" },
        { "user-timeout", "TCPKEEP_USER_TIMEOUT", "597h", "596h" },
        { "override", "TCPKEEP_OVERRIDE", "ON", "on" },
        { "dry-run", "TCPKEEP_DRY_RUN", "2", "1" },
        { "port", "TCPKEEP_PORTS", "0-10", "80,8000-8100" },
        { "peer", "TCPKEEP_PEERS", "::1/129", "::ffff:10.0.0.0/104,2001:db8::/32" },
        { "direction", "TCPKEEP_DIRECTION", "any", "out" },
    };
    struct tk_settings base = base_settings();
    base.lifetime_ms = 3600000;
    for (size_t i = 0; i < sizeof(twins) / sizeof(twins[0]); i++) {
        bool is_match = i >= 15;
        char text[256];
        /* The bad value: the same "expected ..." text. */
        env_name = twins[i].var;
        env_value = twins[i].bad;
        struct tk_config cfg;
        assert_int_equal(tk_config_load(&cfg, one_var_getenv, keep_expected, NULL), 1);
        if (is_match)
            snprintf(text, sizeof(text), "%s=%s: idle=1s\n", twins[i].key, twins[i].bad);
        else
            snprintf(text, sizeof(text), "*: %s=%s\n", twins[i].key, twins[i].bad);
        char want[512];
        snprintf(want, sizeof(want), "%s=\"%s\": %s", twins[i].key, twins[i].bad,
                 env_expected);
        expect_error_len(text, strlen(text), &base, 1, want);

        /* The good value: the same result. */
        env_value = twins[i].good;
        assert_int_equal(tk_config_load(&cfg, one_var_getenv, keep_expected, NULL), 0);
        if (is_match)
            snprintf(text, sizeof(text), "%s=%s: idle=1s\n", twins[i].key, twins[i].good);
        else
            snprintf(text, sizeof(text), "*: %s=%s\n", twins[i].key, twins[i].good);
        struct tk_rules *r = parse_with(text, &base);
        if (is_match) {
            assert_memory_equal(&r->rule[0].match, &cfg.filter, sizeof(cfg.filter));
        } else {
            struct tk_settings want_set = base;
            /* Lay the environment's one value over the base, field by field. */
            const struct tk_settings *e = &cfg.set;
            struct tk_settings dflt;
            struct tk_config d;
            tk_config_defaults(&d);
            dflt = d.set;
            dflt.lifetime_ms = 3600000; /* one_var_getenv's */
#define TAKE(f) if (e->f != dflt.f) want_set.f = e->f
            TAKE(idle_ms); TAKE(read_ms); TAKE(write_ms); TAKE(first_byte_ms);
            TAKE(half_closed_ms); TAKE(lifetime_ms); TAKE(lifetime_jitter);
            TAKE(user_timeout_ms); TAKE(keepidle_s); TAKE(keepintvl_s); TAKE(keepcnt);
            TAKE(keepalive); TAKE(override); TAKE(dry_run); TAKE(action);
#undef TAKE
            if (memcmp(&r->rule[0].set, &want_set, sizeof(want_set)) != 0)
                fail_msg("%s=%s: not what %s=%s gives", twins[i].key, twins[i].good,
                         twins[i].var, twins[i].good);
        }
        tk_rules_free(r);
    }
}

static void test_parse_edges(void **state)
{
    (void)state;
    struct tk_settings base = base_settings();
    /* No place for the line or the message: still a clean failure. */
    static const char bad[] = "*: idle=5x\n";
    assert_null(tk_rules_parse(bad, strlen(bad), &base, NULL, NULL, 0));
    /* A short buffer: cut, terminated. */
    char tiny[8];
    memset(tiny, 'z', sizeof(tiny));
    unsigned line = 0;
    assert_null(tk_rules_parse(bad, strlen(bad), &base, &line, tiny, sizeof(tiny)));
    assert_int_equal(line, 1);
    assert_int_equal(strlen(tiny), sizeof(tiny) - 1);
    assert_memory_equal(tiny, "idle=\"5", 7);
    /* Out of memory: no line to blame. */
    alloc_fail_at = alloc_calls;
    char msg[128];
    line = 77;
    assert_null(tk_rules_parse("*: idle=1s\n", 11, &base, &line, msg, sizeof(msg)));
    assert_int_equal(line, 0);
    assert_string_equal(msg, "out of memory");
    alloc_fail_at = -1;
    /* A set holds only what it needs. */
    struct tk_rules *r = parse("*: idle=1s\n# x\n\n*: idle=2s\n");
    assert_int_equal(r->n, 2);
    assert_int_equal(r->bytes, sizeof(*r) + 2 * sizeof(r->rule[0]));
    tk_rules_free(r);
}

/* Damaged rules files: never a crash, never a read past len (the text ends
 * right before an inaccessible page), and every answer is well formed: a
 * set of at most as many rules as lines, or a line in range and a message. */
static uint64_t rng = 0x853c49e6748fea9bULL;
static uint64_t rnd(void) /* xorshift64* */
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * 2685821657736338717ULL;
}

static void test_fuzz_parse(void **state)
{
    (void)state;
    static const char *const pieces[] = {
        "*: idle=30s\n", "port=6379: idle=5m keepidle=60\n", "direction=out: idle=0\n",
        "peer=10.0.0.0/8 port=8000-8100: read=30s first-byte=5s action=reset\n",
        "peer=::1/128: idle=5s\n", "peer=fe80::1 port=22: idle=0 # ssh\n", "# comment\n",
        "\r\n", "   \t\n", "*: lifetime=1h lifetime-jitter=10 dry-run=on override=off\n",
        "*: keepalive=off keepintvl=5 keepcnt=3 user-timeout=20s half-closed=9s write=1s\n",
        "port=1-65535 peer=::ffff:192.0.2.0/120 direction=in : idle=1s\n",
    };
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    char *region = mmap(NULL, 4 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                        -1, 0);
    assert_true(region != MAP_FAILED);
    assert_int_equal(mprotect(region + 3 * page, page, PROT_NONE), 0);
    char *limit = region + 3 * page;
    static char text[3 * 4096];
    struct tk_settings base = base_settings();
    unsigned accepted = 0, refused = 0;
    for (int iter = 0; iter < 20000; iter++) {
        size_t len = 0;
        int n_pieces = (int)(rnd() % 6);
        for (int i = 0; i < n_pieces; i++) {
            const char *piece = pieces[rnd() % (sizeof(pieces) / sizeof(pieces[0]))];
            size_t plen = strlen(piece);
            if (len + plen < 3 * page - 64) {
                memcpy(text + len, piece, plen);
                len += plen;
            }
        }
        int damage = (int)(rnd() % 4);
        for (int d = 0; d < damage && len > 0; d++) {
            static const char junk[] = ":=#,-/ \t\r\n*0a\x00\xff";
            text[rnd() % len] = junk[rnd() % (sizeof(junk) - 1)];
        }
        if (rnd() % 8 == 0 && len > 0)
            len = rnd() % len; /* cut anywhere, mid-line too */
        char *at = limit - len;
        memcpy(at, text, len);
        unsigned lines = 1;
        for (size_t i = 0; i < len; i++)
            lines += text[i] == '\n';
        unsigned line = 12345;
        char msg[256];
        struct tk_rules *r = tk_rules_parse(at, len, &base, &line, msg, sizeof(msg));
        if (r) {
            accepted++;
            assert_true(r->n <= lines);
            for (unsigned i = 0; i < r->n; i++)
                assert_true(r->rule[i].line >= 1 && r->rule[i].line <= lines);
            tk_rules_free(r);
        } else {
            refused++;
            if (line < 1 || line > lines || strlen(msg) < 5)
                fail_msg("refused with line %u of %u, message \"%s\"", line, lines, msg);
        }
    }
    munmap(region, 4 * page);
    print_message("fuzz: %u accepted, %u refused\n", accepted, refused);
    assert_true(accepted > 2000 && refused > 2000);
}

/* ---------------------------------------------------------------------------
 * The file: tk_rules_file_open and tk_rules_file_poll */

static char dir[64];
static char file[128];

static int make_dir(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/test_rules.XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    snprintf(file, sizeof(file), "%s/rules", dir);
    reset_counters(NULL);
    return 0;
}

static int remove_dir(void **state)
{
    char path[192];
    static const char *const names[] = { "rules", "rules.tmp", "fifo", "big" };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        unlink(path);
    }
    rmdir(file); /* left a directory by a failed test_file_not_regular */
    rmdir(dir);
    return check_no_leak(state);
}

/* Writes the file in place (same inode), with its mtime set to `stamp`
 * seconds so that a same-size rewrite is still a new version. */
static void write_in_place(const char *text, time_t stamp)
{
    int fd = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    size_t len = strlen(text);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    if (stamp) {
        struct timespec times[2] = { { .tv_sec = stamp }, { .tv_sec = stamp } };
        assert_int_equal(futimens(fd, times), 0);
    }
    assert_int_equal(close(fd), 0);
}

/* Writes a new file beside it and renames it over: a new inode. */
static void write_by_rename(const char *text)
{
    char tmp[192];
    snprintf(tmp, sizeof(tmp), "%s/rules.tmp", dir);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    size_t len = strlen(text);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    assert_int_equal(close(fd), 0);
    assert_int_equal(rename(tmp, file), 0);
}

static ino_t inode_of(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return st.st_ino;
}

/* Runs open or poll with errno set to a marker, and checks it is kept. */
static struct tk_rules *open_keeping_errno(const struct tk_settings *base)
{
    errno = 4242;
    struct tk_rules *r = tk_rules_file_open(file, base);
    assert_int_equal(errno, 4242);
    return r;
}

static struct tk_rules *poll_keeping_errno(void)
{
    errno = 4343;
    struct tk_rules *r = poll_settled();
    assert_int_equal(errno, 4343);
    return r;
}

static void expect_logs(int n)
{
    if (n_logs != n) {
        for (int i = 0; i < n_logs; i++)
            print_message("log %d: %s\n", i, logs[i].text);
        fail_msg("%d messages, expected %d", n_logs, n);
    }
}

static void expect_log(int i, bool to_stderr, enum tk_log_level level, const char *fmt_path_first,
                       const char *rest)
{
    char want[1024];
    snprintf(want, sizeof(want), fmt_path_first, file);
    strncat(want, rest, sizeof(want) - strlen(want) - 1);
    assert_true(i < n_logs);
    assert_int_equal(logs[i].to_stderr, to_stderr);
    if (!to_stderr)
        assert_int_equal(logs[i].level, level);
    assert_string_equal(logs[i].text, want);
}

static void test_file_open_good(void **state)
{
    (void)state;
    write_in_place("*: idle=5s\nport=22: idle=0\n", 0);
    struct tk_settings base = base_settings();
    base.keepcnt = 9;
    struct tk_rules *r = open_keeping_errno(&base);
    assert_non_null(r);
    assert_int_equal(r->n, 2);
    assert_int_equal(r->rule[0].set.idle_ms, 5000);
    assert_int_equal(r->rule[0].set.keepcnt, 9);
    /* Nothing on stderr; one info line for a log that is open. */
    expect_logs(1);
    expect_log(0, false, TK_LOG_INFO, "%s", ": 2 rules loaded");

    /* Unchanged: nothing new, nothing said, as often as asked, and cheap:
     * the file is not read again (nothing allocated for it). */
    n_logs = 0;
    int calls = alloc_calls;
    for (int i = 0; i < 5; i++)
        assert_null(poll_keeping_errno());
    expect_logs(0);
    assert_int_equal(alloc_calls, calls);
    tk_rules_free(r);
}

static void test_file_open_bad(void **state)
{
    (void)state;
    struct tk_settings base = base_settings();
    write_in_place("# rules\n*: idle=5s\nport=22: idel=0\n", 0);
    assert_null(open_keeping_errno(&base));
    expect_logs(1);
    expect_log(0, true, 0, "%s",
               ":3: unknown key \"idel\"; expected one of " KEYS "; the rules file is ignored");
    /* Already said: the same version is not warned about again. */
    n_logs = 0;
    assert_null(poll_keeping_errno());
    expect_logs(0);
    /* Fixed: taken at the next poll. */
    write_in_place("# rules\n*: idle=5s\nport=22: idle=0\n", 0);
    struct tk_rules *r = poll_keeping_errno();
    assert_non_null(r);
    assert_int_equal(r->n, 2);
    expect_logs(1);
    expect_log(0, false, TK_LOG_INFO, "%s", ": 2 rules loaded");
    tk_rules_free(r);
}

static void test_file_open_missing(void **state)
{
    (void)state;
    struct tk_settings base = base_settings();
    unlink(file);
    assert_null(open_keeping_errno(&base));
    expect_logs(1);
    expect_log(0, true, 0, "%s", ": No such file or directory; the rules file is ignored");
    /* Still missing: said once already. */
    n_logs = 0;
    for (int i = 0; i < 3; i++)
        assert_null(poll_keeping_errno());
    expect_logs(0);
    /* It appears: taken. */
    write_by_rename("*: idle=1s\n");
    struct tk_rules *r = poll_keeping_errno();
    assert_non_null(r);
    assert_int_equal(r->rule[0].set.idle_ms, 1000);
    expect_logs(1);
    expect_log(0, false, TK_LOG_INFO, "%s", ": 1 rules loaded");
    tk_rules_free(r);
}

static void test_file_not_regular(void **state)
{
    (void)state;
    struct tk_settings base = base_settings();
    /* A directory, then a FIFO (which must not block the caller). */
    assert_int_equal(mkdir(file, 0755), 0);
    assert_null(open_keeping_errno(&base));
    expect_logs(1);
    expect_log(0, true, 0, "%s", ": not a regular file; the rules file is ignored");
    assert_int_equal(rmdir(file), 0);

    char fifo[192];
    snprintf(fifo, sizeof(fifo), "%s/fifo", dir);
    assert_int_equal(mkfifo(fifo, 0644), 0);
    n_logs = 0;
    errno = 1;
    assert_null(tk_rules_file_open(fifo, &base));
    assert_int_equal(errno, 1);
    expect_logs(1);
    assert_true(logs[0].to_stderr);
    assert_non_null(strstr(logs[0].text, "/fifo: not a regular file; the rules file is ignored"));
}

static void test_file_too_large(void **state)
{
    (void)state;
    struct tk_settings base = base_settings();
    /* Exactly 1 MiB of comments and one rule: fine. */
    static char text[1024 * 1024 + 2];
    memset(text, '#', sizeof(text));
    for (size_t i = 99; i < sizeof(text); i += 100)
        text[i] = '\n';
    memcpy(text, "*: idle=3s\n", 11);
    text[1024 * 1024] = '\0';
    write_in_place(text, 0);
    struct tk_rules *r = open_keeping_errno(&base);
    assert_non_null(r);
    assert_int_equal(r->n, 1);
    tk_rules_free(r);
    /* One byte more: refused at the next poll, the previous stay. */
    text[1024 * 1024] = '\n';
    text[1024 * 1024 + 1] = '\0';
    n_logs = 0;
    write_in_place(text, 0);
    assert_null(poll_keeping_errno());
    expect_logs(1);
    expect_log(0, false, TK_LOG_WARN, "%s", ": larger than 1 MiB; the previous rules stay in force");
    n_logs = 0;
    assert_null(poll_keeping_errno());
    expect_logs(0);
    /* And at open. */
    assert_null(open_keeping_errno(&base));
    expect_logs(1);
    expect_log(0, true, 0, "%s", ": larger than 1 MiB; the rules file is ignored");
}

static void test_file_rewrites(void **state)
{
    (void)state;
    struct tk_settings base = base_settings();
    base.keepintvl_s = 33;
    write_in_place("*: idle=1s\n", 1000000);
    ino_t first_inode = inode_of(file);
    struct tk_rules *r = open_keeping_errno(&base);
    assert_non_null(r);
    assert_int_equal(r->rule[0].set.idle_ms, 1000);
    /* The caller's base may change after open: the copy taken at open counts. */
    base.keepintvl_s = 44;
    tk_rules_free(r);

    /* In place, another size. */
    n_logs = 0;
    write_in_place("*: idle=22s\n", 1000000);
    assert_int_equal(inode_of(file), first_inode);
    r = poll_keeping_errno();
    assert_non_null(r);
    assert_int_equal(r->rule[0].set.idle_ms, 22000);
    assert_int_equal(r->rule[0].set.keepintvl_s, 33);
    expect_logs(1);
    expect_log(0, false, TK_LOG_INFO, "%s", ": 1 rules loaded");
    tk_rules_free(r);
    assert_null(poll_keeping_errno());

    /* In place, the same size: only the mtime tells. */
    n_logs = 0;
    write_in_place("*: idle=33s\n", 1000001);
    r = poll_keeping_errno();
    assert_non_null(r);
    assert_int_equal(r->rule[0].set.idle_ms, 33000);
    tk_rules_free(r);
    assert_null(poll_keeping_errno());

    /* Replaced by a rename. */
    write_by_rename("*: idle=44s\n");
    assert_true(inode_of(file) != first_inode);
    r = poll_keeping_errno();
    assert_non_null(r);
    assert_int_equal(r->rule[0].set.idle_ms, 44000);
    tk_rules_free(r);
    assert_null(poll_keeping_errno());

    /* A bad new version: the previous stay, one warning for it. */
    n_logs = 0;
    write_by_rename("*: idle=55s\nport=99999: idle=1s\n");
    for (int i = 0; i < 3; i++)
        assert_null(poll_keeping_errno());
    expect_logs(1);
    expect_log(0, false, TK_LOG_WARN, "%s",
               ":2: port=\"99999\": " PORTS "; the previous rules stay in force");
    /* Another bad version: warned about too, once. */
    n_logs = 0;
    write_in_place("*: idle=5x\n", 1000002);
    for (int i = 0; i < 3; i++)
        assert_null(poll_keeping_errno());
    expect_logs(1);
    expect_log(0, false, TK_LOG_WARN, "%s",
               ":1: idle=\"5x\": " DURATION "; the previous rules stay in force");
    /* Fixed. */
    n_logs = 0;
    write_by_rename("*: idle=66s\n");
    r = poll_keeping_errno();
    assert_non_null(r);
    assert_int_equal(r->rule[0].set.idle_ms, 66000);
    expect_logs(1);
    tk_rules_free(r);

    /* Deleted: one warning, however long it stays away. */
    n_logs = 0;
    assert_int_equal(unlink(file), 0);
    for (int i = 0; i < 4; i++)
        assert_null(poll_keeping_errno());
    expect_logs(1);
    expect_log(0, false, TK_LOG_WARN, "%s",
               ": No such file or directory; the previous rules stay in force");
    /* Back, even with the very content it had: a new version, taken. */
    n_logs = 0;
    write_by_rename("*: idle=66s\n");
    r = poll_keeping_errno();
    assert_non_null(r);
    assert_int_equal(r->rule[0].set.idle_ms, 66000);
    expect_logs(1);
    expect_log(0, false, TK_LOG_INFO, "%s", ": 1 rules loaded");
    tk_rules_free(r);
    /* Deleted again: warned again (it is a new absence). */
    n_logs = 0;
    assert_int_equal(unlink(file), 0);
    assert_null(poll_keeping_errno());
    assert_null(poll_keeping_errno());
    expect_logs(1);
    /* Back as an empty file: a valid set with no rule. */
    n_logs = 0;
    write_in_place("", 0);
    r = poll_keeping_errno();
    assert_non_null(r);
    assert_int_equal(r->n, 0);
    expect_log(0, false, TK_LOG_INFO, "%s", ": 0 rules loaded");
    tk_rules_free(r);
}

/* An unreadable file: warned once, like a missing one. Root reads anything. */
static void test_file_unreadable(void **state)
{
    (void)state;
    struct tk_settings base = base_settings();
    write_in_place("*: idle=1s\n", 0);
    struct tk_rules *r = open_keeping_errno(&base);
    assert_non_null(r);
    tk_rules_free(r);
    if (geteuid() == 0) {
        print_message("running as root: no permission to lose, skipped\n");
        return;
    }
    n_logs = 0;
    write_by_rename("*: idle=2s\n"); /* a new version... */
    assert_int_equal(chmod(file, 0), 0); /* ...that cannot be read */
    assert_null(poll_keeping_errno());
    assert_null(poll_keeping_errno());
    expect_logs(1);
    expect_log(0, false, TK_LOG_WARN, "%s", ": Permission denied; the previous rules stay in force");
    assert_int_equal(chmod(file, 0644), 0);
    /* chmod changed the ctime: a new version. */
    r = poll_keeping_errno();
    assert_non_null(r);
    assert_int_equal(r->rule[0].set.idle_ms, 2000);
    tk_rules_free(r);
}

/* A relative path keeps naming the same file after the program changes
 * directory (daemons chdir("/")); messages still show it as given. */
static void test_file_relative_path(void **state)
{
    (void)state;
    struct tk_settings base = base_settings();
    char old_cwd[4096];
    assert_non_null(getcwd(old_cwd, sizeof(old_cwd)));
    write_in_place("*: idle=1s\n", 0);
    assert_int_equal(chdir(dir), 0);
    struct tk_rules *r = tk_rules_file_open("rules", &base);
    assert_int_equal(chdir("/"), 0);
    assert_non_null(r);
    tk_rules_free(r);
    assert_string_equal(logs[0].text, "rules: 1 rules loaded");

    n_logs = 0;
    assert_null(poll_settled()); /* not "deleted": it is still there */
    expect_logs(0);
    write_by_rename("*: idle=2s\nport=80: idle=3s\n");
    r = poll_settled();
    assert_non_null(r);
    assert_int_equal(r->n, 2);
    tk_rules_free(r);
    expect_logs(1);
    assert_string_equal(logs[0].text, "rules: 2 rules loaded");
    n_logs = 0;
    write_by_rename("*: idle=2x\n");
    assert_null(poll_settled());
    expect_logs(1);
    assert_string_equal(logs[0].text, "rules:1: idle=\"2x\": " DURATION
                                      "; the previous rules stay in force");
    assert_int_equal(chdir(old_cwd), 0);
}

/* No file to watch: open(NULL) and poll say nothing and return nothing. */
static void test_file_none(void **state)
{
    (void)state;
    struct tk_settings base = base_settings();
    errno = 5;
    assert_null(tk_rules_file_open(NULL, &base));
    assert_null(poll_settled());
    assert_null(tk_rules_file_open("", &base));
    assert_null(poll_settled());
    assert_int_equal(errno, 5);
    expect_logs(0);
}

/* Out of memory while reading: the file is not taken, and said so once. */
static void test_file_no_memory(void **state)
{
    (void)state;
    struct tk_settings base = base_settings();
    write_in_place("*: idle=1s\n", 0);
    alloc_fail_at = alloc_calls; /* the read buffer */
    assert_null(open_keeping_errno(&base));
    expect_logs(1);
    expect_log(0, true, 0, "%s", ": out of memory; the rules file is ignored");
    alloc_fail_at = alloc_calls + 1; /* the set, after the buffer */
    n_logs = 0;
    write_in_place("*: idle=2s\n", 1000000);
    assert_null(poll_keeping_errno());
    expect_logs(1);
    expect_log(0, false, TK_LOG_WARN, "%s", ": out of memory; the previous rules stay in force");
    alloc_fail_at = -1;
}

/* Parsing tests must free all they allocate; file tests get a directory of their own. */
#define PARSE_TEST(test) cmocka_unit_test_setup_teardown(test, reset_counters, check_no_leak)
#define FILE_TEST(test) cmocka_unit_test_setup_teardown(test, make_dir, remove_dir)

int main(void)
{
    const struct CMUnitTest tests[] = {
        PARSE_TEST(test_issue_example),
        PARSE_TEST(test_every_key),
        PARSE_TEST(test_base_inheritance),
        PARSE_TEST(test_ipv6_colons),
        PARSE_TEST(test_ipv6_colon_errors),
        PARSE_TEST(test_comments_blanks_crlf),
        PARSE_TEST(test_first_match_wins),
        PARSE_TEST(test_errors),
        PARSE_TEST(test_long_token),
        PARSE_TEST(test_rule_limit),
        PARSE_TEST(test_same_as_environment),
        PARSE_TEST(test_parse_edges),
        PARSE_TEST(test_fuzz_parse),
        FILE_TEST(test_file_none),
        FILE_TEST(test_file_open_good),
        FILE_TEST(test_file_open_bad),
        FILE_TEST(test_file_open_missing),
        FILE_TEST(test_file_not_regular),
        FILE_TEST(test_file_too_large),
        FILE_TEST(test_file_rewrites),
        FILE_TEST(test_file_unreadable),
        FILE_TEST(test_file_relative_path),
        FILE_TEST(test_file_no_memory),
    };
    return cmocka_run_group_tests_name("rules", tests, NULL, NULL);
}
