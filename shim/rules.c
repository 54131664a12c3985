/* The rules file's text: parsing and first-match lookup (see rules.h).
 * Pure, like config.c: no system call but the allocation, no logging. */
#include "rules.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "mem.h"

#define KEY_LIST "idle, read, write, first-byte, half-closed, lifetime, lifetime-jitter, " \
                 "action, keepalive, keepidle, keepintvl, keepcnt, user-timeout, override, dry-run"

/* A token longer than this cannot be any valid one (32 IPv6 CIDRs fit). */
#define TOKEN_MAX 2048
/* How much of a bad token a message shows. */
#define SHOW_MAX 64

enum value_kind { V_DURATION, V_PERCENT, V_ACTION, V_SWITCH, V_DRY_RUN, V_SECONDS, V_COUNT,
                  V_USER_TIMEOUT };

static const struct setting_key {
    const char *name;
    enum value_kind kind;
    size_t offset; /* into struct tk_settings */
} setting_keys[] = {
    { "idle", V_DURATION, offsetof(struct tk_settings, idle_ms) },
    { "read", V_DURATION, offsetof(struct tk_settings, read_ms) },
    { "write", V_DURATION, offsetof(struct tk_settings, write_ms) },
    { "first-byte", V_DURATION, offsetof(struct tk_settings, first_byte_ms) },
    { "half-closed", V_DURATION, offsetof(struct tk_settings, half_closed_ms) },
    { "lifetime", V_DURATION, offsetof(struct tk_settings, lifetime_ms) },
    { "lifetime-jitter", V_PERCENT, offsetof(struct tk_settings, lifetime_jitter) },
    { "action", V_ACTION, offsetof(struct tk_settings, action) },
    { "keepalive", V_SWITCH, offsetof(struct tk_settings, keepalive) },
    { "keepidle", V_SECONDS, offsetof(struct tk_settings, keepidle_s) },
    { "keepintvl", V_SECONDS, offsetof(struct tk_settings, keepintvl_s) },
    { "keepcnt", V_COUNT, offsetof(struct tk_settings, keepcnt) },
    { "user-timeout", V_USER_TIMEOUT, offsetof(struct tk_settings, user_timeout_ms) },
    { "override", V_SWITCH, offsetof(struct tk_settings, override) },
    { "dry-run", V_DRY_RUN, offsetof(struct tk_settings, dry_run) },
};
#define N_SETTING_KEYS (sizeof(setting_keys) / sizeof(setting_keys[0]))

/* Where a parse stands, and what went wrong. */
struct parser {
    char *msg;
    size_t msgsize;
    bool failed;
};

__attribute__((format(printf, 2, 3)))
static void fail(struct parser *p, const char *fmt, ...)
{
    p->failed = true;
    if (!p->msg || p->msgsize == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->msg, p->msgsize, fmt, ap);
    va_end(ap);
}

/* A token as a message shows it: at most SHOW_MAX bytes, anything not
 * printable ASCII as \xNN, '"' and '\' escaped, so a line of the log is
 * one line whatever the file holds. */
static const char *show(char *buf, size_t cap, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0, shown = len > SHOW_MAX ? SHOW_MAX : len;
    for (size_t i = 0; i < shown && o + 5 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            buf[o++] = '\\';
            buf[o++] = (char)c;
        } else if (c < 0x20 || c > 0x7e) {
            buf[o++] = '\\';
            buf[o++] = 'x';
            buf[o++] = hex[c >> 4];
            buf[o++] = hex[c & 15];
        } else {
            buf[o++] = (char)c;
        }
    }
    if (shown < len && o + 4 <= cap) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o] = '\0';
    return buf;
}

#define SHOW_BUF (SHOW_MAX * 4 + 8)

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r';
}

static unsigned count_items(const char *s)
{
    unsigned n = 1;
    for (; *s; s++)
        n += *s == ',';
    return n;
}

static void bad_value(struct parser *p, const char *key, const char *value,
                      const char *expected)
{
    char shown[SHOW_BUF];
    fail(p, "%s=\"%s\": %s", key, show(shown, sizeof(shown), value, strlen(value)), expected);
}

/* One key=value of the SETTINGS part into *set. */
static void parse_setting(struct parser *p, const char *key, const char *value,
                          struct tk_settings *set, uint32_t *seen)
{
    const struct setting_key *sk = NULL;
    for (size_t i = 0; i < N_SETTING_KEYS && !sk; i++)
        if (strcmp(key, setting_keys[i].name) == 0)
            sk = &setting_keys[i];
    if (!sk) {
        char shown[SHOW_BUF];
        fail(p, "unknown key \"%s\"; expected one of " KEY_LIST,
             show(shown, sizeof(shown), key, strlen(key)));
        return;
    }
    uint32_t bit = 1u << (sk - setting_keys);
    if (*seen & bit) {
        fail(p, "%s= given twice; expected each key at most once per line", sk->name);
        return;
    }
    *seen |= bit;

    void *field = (char *)set + sk->offset;
    const char *expected = NULL; /* set when the value is bad */
    uint64_t ms;
    long n;
    bool on;
    uint8_t u8;
    switch (sk->kind) {
    case V_DURATION:
        if (tk_parse_duration_ms(value, &ms) != TK_PARSE_OK)
            expected = EXPECT_DURATION;
        else
            memcpy(field, &ms, sizeof(ms));
        break;
    case V_PERCENT:
        if (tk_parse_int_range(value, 0, 100, &n) != TK_PARSE_OK)
            expected = EXPECT_PERCENT;
        else
            *(unsigned *)field = (unsigned)n;
        break;
    case V_ACTION:
        if (tk_parse_action(value, &u8) != TK_PARSE_OK)
            expected = EXPECT_ACTION;
        else
            *(uint8_t *)field = u8;
        break;
    case V_SWITCH:
    case V_DRY_RUN:
        if (tk_parse_switch(value, &on) != TK_PARSE_OK)
            expected = sk->kind == V_DRY_RUN ? EXPECT_DRY_RUN : EXPECT_ON_OFF;
        else
            *(bool *)field = on;
        break;
    case V_SECONDS:
        if (tk_parse_whole_seconds(value, 1, 32767, &n) != TK_PARSE_OK)
            expected = EXPECT_SECONDS;
        else
            *(int *)field = (int)n;
        break;
    case V_COUNT:
        if (tk_parse_int_range(value, 1, 127, &n) != TK_PARSE_OK)
            expected = EXPECT_COUNT;
        else
            *(int *)field = (int)n;
        break;
    case V_USER_TIMEOUT:
        /* The kernel takes an int of milliseconds. */
        if (tk_parse_duration_ms(value, &ms) != TK_PARSE_OK || ms > 2147483647ULL)
            expected = EXPECT_USER_TIMEOUT;
        else
            *(unsigned *)field = (unsigned)ms;
        break;
    }
    if (expected)
        bad_value(p, sk->name, value, expected);
}

enum { MATCH_PORT = 1, MATCH_PEER = 2, MATCH_DIRECTION = 4, MATCH_STAR = 8 };

/* One token of the MATCH part into *m. */
static void parse_match(struct parser *p, const char *tok, struct tk_match *m, unsigned *seen)
{
    char shown[SHOW_BUF];
    if (strcmp(tok, "*") == 0) {
        if (*seen) {
            fail(p, "\"*\" with other matches; expected * alone, or port=, peer=, direction=");
            return;
        }
        *seen |= MATCH_STAR;
        return;
    }
    if (*seen & MATCH_STAR) {
        fail(p, "\"%s\" after \"*\"; expected * alone, or port=, peer=, direction=",
             show(shown, sizeof(shown), tok, strlen(tok)));
        return;
    }
    const char *eq = strchr(tok, '=');
    size_t key_len = eq ? (size_t)(eq - tok) : strlen(tok);
    static const struct { const char *name; unsigned bit; } keys[] = {
        { "port", MATCH_PORT }, { "peer", MATCH_PEER }, { "direction", MATCH_DIRECTION },
    };
    unsigned bit = 0;
    const char *name = NULL;
    for (size_t i = 0; i < 3 && eq; i++)
        if (strlen(keys[i].name) == key_len && memcmp(tok, keys[i].name, key_len) == 0) {
            bit = keys[i].bit;
            name = keys[i].name;
        }
    if (!bit) {
        fail(p, "unknown match \"%s\"; expected *, port=, peer= or direction=",
             show(shown, sizeof(shown), tok, strlen(tok)));
        return;
    }
    if (*seen & bit) {
        fail(p, "%s= given twice; expected each of port=, peer=, direction= at most once, "
                "with a list such as port=80,443", name);
        return;
    }
    *seen |= bit;

    const char *value = eq + 1;
    if (bit == MATCH_PORT) {
        if (tk_parse_ports(value, m) != TK_PARSE_OK)
            bad_value(p, name, value,
                      count_items(value) > TK_MATCH_PORTS_MAX ? EXPECT_PORTS_MANY
                                                              : EXPECT_PORTS);
    } else if (bit == MATCH_PEER) {
        if (tk_parse_peers(value, m) != TK_PARSE_OK)
            bad_value(p, name, value,
                      count_items(value) > TK_MATCH_PEERS_MAX ? EXPECT_PEERS_MANY
                                                              : EXPECT_PEERS);
    } else if (tk_parse_direction(value, &m->direction) != TK_PARSE_OK) {
        bad_value(p, name, value, EXPECT_DIRECTION);
    }
}

/* Splits [s, end) at whitespace: the next token's start and length, or false. */
static bool next_token(const char **s, const char *end, const char **tok, size_t *len)
{
    const char *c = *s;
    while (c < end && is_space(*c))
        c++;
    if (c == end)
        return false;
    const char *t = c;
    while (c < end && !is_space(*c))
        c++;
    *tok = t;
    *len = (size_t)(c - t);
    *s = c;
    return true;
}

/* The meaningful part of a line: up to a '#', if any. */
static const char *content_end(const char *line, const char *eol)
{
    const char *hash = memchr(line, '#', (size_t)(eol - line));
    return hash ? hash : eol;
}

static bool has_token(const char *line, const char *end)
{
    const char *tok;
    size_t len;
    return next_token(&line, end, &tok, &len);
}

/* One line that holds a rule: its MATCH and SETTINGS into *rule. */
static void parse_rule(struct parser *p, const char *s, const char *end, struct tk_rule *rule)
{
    char tok[TOKEN_MAX];
    char shown[SHOW_BUF];
    const char *t;
    size_t len;
    unsigned match_seen = 0;
    uint32_t keys_seen = 0;
    bool in_match = true;

    if (memchr(s, '\0', (size_t)(end - s))) {
        fail(p, "a NUL byte; expected text");
        return;
    }
    /* The line's shape first: a word out of place is no news when the ':'
     * that ends MATCH is missing altogether (or lost with no space after it). */
    bool has_match_end = false;
    for (const char *c = s; !has_match_end && next_token(&c, end, &t, &len);)
        has_match_end = t[len - 1] == ':';
    if (!has_match_end) {
        fail(p, "no word ends with ':'; expected MATCH: SETTINGS, such as "
                "\"port=6379: idle=5m\" (a space after the ':')");
        return;
    }
    while (!p->failed && next_token(&s, end, &t, &len)) {
        if (len >= sizeof(tok)) {
            fail(p, "\"%s\" is %zu bytes long; expected at most %zu",
                 show(shown, sizeof(shown), t, len), len, sizeof(tok) - 1);
            return;
        }
        memcpy(tok, t, len);
        tok[len] = '\0';
        if (in_match) {
            /* IPv6 addresses hold ':', so only a token's last ':' ends MATCH. */
            bool last = tok[len - 1] == ':';
            if (last)
                tok[--len] = '\0';
            if (len > 0)
                parse_match(p, tok, &rule->match, &match_seen);
            if (last) {
                in_match = false;
                if (!p->failed && !match_seen)
                    fail(p, "nothing before ':'; expected * or port=, peer=, direction=");
            }
            continue;
        }
        char *eq = strchr(tok, '=');
        if (!eq) {
            fail(p, "\"%s\" is not KEY=VALUE; expected settings such as idle=30s",
                 show(shown, sizeof(shown), tok, len));
            return;
        }
        *eq = '\0';
        parse_setting(p, tok, eq + 1, &rule->set, &keys_seen);
    }
    if (p->failed)
        return;
    if (rule->set.lifetime_jitter != 0 && rule->set.lifetime_ms == 0)
        fail(p, "lifetime-jitter is %u%% but lifetime is 0; expected a lifetime= too "
                "(or lifetime-jitter=0)", rule->set.lifetime_jitter);
}

struct tk_rules *tk_rules_parse(const char *text, size_t len, const struct tk_settings *base,
                                unsigned *bad_line, char *msg, size_t msgsize)
{
    struct parser p = { .msg = msg, .msgsize = msgsize, .failed = false };
    const char *end = text + len;
    unsigned line_no;
    if (bad_line)
        *bad_line = 0;
    if (msg && msgsize)
        msg[0] = '\0';

    /* Size the set for the lines that hold a rule (the limit is checked below). */
    size_t candidates = 0;
    for (const char *line = text; line < end && candidates < TK_RULES_MAX;) {
        const char *nl = memchr(line, '\n', (size_t)(end - line));
        const char *eol = nl ? nl : end;
        candidates += has_token(line, content_end(line, eol));
        line = nl ? nl + 1 : end;
    }
    size_t bytes = sizeof(struct tk_rules) + candidates * sizeof(struct tk_rule);
    struct tk_rules *r = tk_mem_alloc(bytes);
    if (!r) {
        fail(&p, "out of memory");
        return NULL;
    }
    r->bytes = bytes;
    r->n = 0;

    line_no = 0;
    for (const char *line = text; line < end && !p.failed;) {
        const char *nl = memchr(line, '\n', (size_t)(end - line));
        const char *eol = nl ? nl : end;
        const char *stop = content_end(line, eol);
        line_no++;
        if (has_token(line, stop)) {
            if (r->n == TK_RULES_MAX) {
                fail(&p, "more than %d rules; expected at most %d", TK_RULES_MAX,
                     TK_RULES_MAX);
                break;
            }
            struct tk_rule *rule = &r->rule[r->n];
            memset(&rule->match, 0, sizeof(rule->match));
            rule->set = *base;
            rule->line = line_no;
            parse_rule(&p, line, stop, rule);
            if (!p.failed)
                r->n++;
        }
        line = nl ? nl + 1 : end;
    }
    if (p.failed) {
        if (bad_line)
            *bad_line = line_no;
        tk_rules_free(r);
        return NULL;
    }
    return r;
}

void tk_rules_free(struct tk_rules *r)
{
    if (r)
        tk_mem_free(r, r->bytes);
}

const struct tk_settings *tk_rules_lookup(const struct tk_rules *r, const struct tk_conn_key *k)
{
    if (!r)
        return NULL;
    for (unsigned i = 0; i < r->n; i++)
        if (tk_match_conn(&r->rule[i].match, k))
            return &r->rule[i].set;
    return NULL;
}
