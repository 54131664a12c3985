/* Strict parsing of the configuration. Nothing here allocates or logs:
 * bad values go back to the caller through the report callback. */
#include "config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

/* Digits only, no sign, no space; stops at the first non-digit.
 * Returns the number of digits read, or -1 on overflow past `limit`. */
static int parse_digits(const char *s, uint64_t limit, uint64_t *out)
{
    uint64_t v = 0;
    int n = 0;
    while (s[n] >= '0' && s[n] <= '9') {
        uint64_t d = (uint64_t)(s[n] - '0');
        if (v > (limit - d) / 10)
            return -1;
        v = v * 10 + d;
        n++;
    }
    *out = v;
    return n;
}

enum tk_parse_result tk_parse_duration_ms(const char *s, uint64_t *out_ms)
{
    uint64_t v;
    if (!s)
        return TK_PARSE_BAD;
    int n = parse_digits(s, UINT64_MAX, &v);
    if (n == 0)
        return TK_PARSE_BAD;
    if (n < 0)
        return TK_PARSE_RANGE;
    const char *unit = s + n;
    uint64_t scale;
    if (strcmp(unit, "") == 0 || strcmp(unit, "s") == 0)
        scale = 1000;
    else if (strcmp(unit, "ms") == 0)
        scale = 1;
    else if (strcmp(unit, "m") == 0)
        scale = 60 * 1000;
    else if (strcmp(unit, "h") == 0)
        scale = 3600 * 1000;
    else
        return TK_PARSE_BAD;
    if (v > TK_DURATION_MAX_MS / scale)
        return TK_PARSE_RANGE;
    *out_ms = v * scale;
    return TK_PARSE_OK;
}

enum tk_parse_result tk_parse_int_range(const char *s, long min, long max, long *out)
{
    uint64_t v;
    if (!s)
        return TK_PARSE_BAD;
    int n = parse_digits(s, UINT64_MAX, &v);
    if (n < 0) /* more digits than fit: check the rest before saying so */
        return s[strspn(s, "0123456789")] == '\0' ? TK_PARSE_RANGE : TK_PARSE_BAD;
    if (n == 0 || s[n] != '\0')
        return TK_PARSE_BAD;
    if (v < (uint64_t)min || v > (uint64_t)max)
        return TK_PARSE_RANGE;
    *out = (long)v;
    return TK_PARSE_OK;
}

enum tk_parse_result tk_parse_whole_seconds(const char *s, long min, long max, long *out)
{
    uint64_t ms;
    enum tk_parse_result r = tk_parse_duration_ms(s, &ms);
    if (r != TK_PARSE_OK)
        return r;
    if (ms % 1000 != 0 || ms / 1000 < (uint64_t)min || ms / 1000 > (uint64_t)max)
        return TK_PARSE_RANGE;
    *out = (long)(ms / 1000);
    return TK_PARSE_OK;
}

enum tk_parse_result tk_parse_switch(const char *s, bool *out)
{
    if (!s)
        return TK_PARSE_BAD;
    if (strcmp(s, "on") == 0 || strcmp(s, "1") == 0) {
        *out = true;
        return TK_PARSE_OK;
    }
    if (strcmp(s, "off") == 0 || strcmp(s, "0") == 0) {
        *out = false;
        return TK_PARSE_OK;
    }
    return TK_PARSE_BAD;
}

/* A word from a fixed list and the value it stands for. */
struct word_value {
    const char *word;
    uint8_t value;
};

/* s as one of the words of table: its value into *out. */
static enum tk_parse_result parse_word(const char *s, const struct word_value *table,
                                       size_t n_words, uint8_t *out)
{
    if (!s)
        return TK_PARSE_BAD;
    for (size_t i = 0; i < n_words; i++) {
        if (strcmp(s, table[i].word) == 0) {
            *out = table[i].value;
            return TK_PARSE_OK;
        }
    }
    return TK_PARSE_BAD;
}

#define PARSE_WORD(s, table, out) parse_word(s, table, sizeof(table) / sizeof(table[0]), out)

enum tk_parse_result tk_parse_log_level(const char *s, enum tk_log_level *out)
{
    static const struct word_value levels[] = {
        { "error", TK_LOG_ERROR }, { "warn", TK_LOG_WARN },
        { "info", TK_LOG_INFO }, { "debug", TK_LOG_DEBUG },
    };
    uint8_t level;
    enum tk_parse_result r = PARSE_WORD(s, levels, &level);
    if (r == TK_PARSE_OK)
        *out = (enum tk_log_level)level;
    return r;
}

enum tk_parse_result tk_parse_action(const char *s, uint8_t *out)
{
    static const struct word_value actions[] = {
        { "shutdown", TK_ACTION_SHUTDOWN }, { "reset", TK_ACTION_RESET },
    };
    return PARSE_WORD(s, actions, out);
}

enum tk_parse_result tk_parse_activity(const char *s, uint8_t *out)
{
    static const struct word_value modes[] = {
        { "both", TK_ACTIVITY_BOTH }, { "calls", TK_ACTIVITY_CALLS },
        { "kernel", TK_ACTIVITY_KERNEL },
    };
    return PARSE_WORD(s, modes, out);
}

enum tk_parse_result tk_parse_direction(const char *s, uint8_t *out)
{
    static const struct word_value directions[] = {
        { "in", TK_DIR_IN }, { "out", TK_DIR_OUT }, { "both", TK_DIR_ANY },
    };
    return PARSE_WORD(s, directions, out);
}

/* One port 1..65535 at s, ending at `end`. */
static enum tk_parse_result parse_port(const char *s, const char *end, uint16_t *out)
{
    uint64_t v;
    int n = parse_digits(s, UINT64_MAX, &v);
    if (n < 0) /* absurdly many digits: still a number, just too big */
        return s + strspn(s, "0123456789") == end ? TK_PARSE_RANGE : TK_PARSE_BAD;
    if (n == 0 || s + n != end)
        return TK_PARSE_BAD;
    if (v < 1 || v > 65535)
        return TK_PARSE_RANGE;
    *out = (uint16_t)v;
    return TK_PARSE_OK;
}

/* A worse result wins: a syntax error over a range error. */
static enum tk_parse_result worse(enum tk_parse_result a, enum tk_parse_result b)
{
    return a == TK_PARSE_BAD || b == TK_PARSE_BAD ? TK_PARSE_BAD
         : a == TK_PARSE_RANGE || b == TK_PARSE_RANGE ? TK_PARSE_RANGE : TK_PARSE_OK;
}

/* One port or range LO-HI, [s, end), into the struct tk_port_range at out. */
static enum tk_parse_result parse_port_range(const char *s, const char *end, void *out)
{
    enum tk_parse_result r;
    const char *dash = memchr(s, '-', (size_t)(end - s));
    uint16_t lo = 0, hi = 0;
    if (dash) {
        r = worse(parse_port(s, dash, &lo), parse_port(dash + 1, end, &hi));
        if (lo && hi && lo > hi)
            r = worse(r, TK_PARSE_RANGE);
    } else {
        r = parse_port(s, end, &lo);
        hi = lo;
    }
    *(struct tk_port_range *)out = (struct tk_port_range){ .lo = lo, .hi = hi };
    return r;
}

typedef enum tk_parse_result (*item_parser)(const char *item, const char *end, void *out);

/* A comma-separated list of at most `max` items, each parsed by parse_item
 * into items[] (which has room for max + 1: the last takes every item past
 * the limit). Every item is looked at, so that a syntax error anywhere reads
 * as one. The number of items in *n. */
static enum tk_parse_result parse_list(const char *s, item_parser parse_item, void *items,
                                       size_t item_size, unsigned max, unsigned *n)
{
    enum tk_parse_result r = TK_PARSE_OK;
    *n = 0;
    if (!s)
        return TK_PARSE_BAD;
    for (const char *item = s;;) {
        const char *end = strchr(item, ',');
        if (!end)
            end = item + strlen(item);
        unsigned slot = *n < max ? *n : max;
        r = worse(r, parse_item(item, end, (char *)items + slot * item_size));
        if (*n >= max)
            r = worse(r, TK_PARSE_RANGE);
        (*n)++;
        if (*end == '\0')
            break;
        item = end + 1;
    }
    return r;
}

enum tk_parse_result tk_parse_ports(const char *s, struct tk_match *m)
{
    struct tk_port_range got[TK_MATCH_PORTS_MAX + 1];
    unsigned n;
    enum tk_parse_result r =
        parse_list(s, parse_port_range, got, sizeof(got[0]), TK_MATCH_PORTS_MAX, &n);
    if (r != TK_PARSE_OK)
        return r;
    memcpy(m->ports, got, n * sizeof(got[0]));
    m->n_ports = (uint8_t)n;
    return TK_PARSE_OK;
}

/* Clears the bits of addr past the first `prefix`. */
static void mask_host_bits(uint8_t *addr, unsigned addr_len, unsigned prefix)
{
    for (unsigned i = 0; i < addr_len; i++) {
        unsigned bits = prefix > i * 8 ? prefix - i * 8 : 0;
        if (bits < 8)
            addr[i] &= (uint8_t)(0xff00u >> bits);
    }
}

static const uint8_t v4mapped_prefix[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

/* One address or CIDR, [s, end), into the struct tk_cidr at out. */
static enum tk_parse_result parse_cidr(const char *s, const char *end, void *out)
{
    char addr_text[64];
    const char *slash = memchr(s, '/', (size_t)(end - s));
    const char *addr_end = slash ? slash : end;
    size_t addr_len = (size_t)(addr_end - s);
    if (addr_len == 0 || addr_len >= sizeof(addr_text))
        return TK_PARSE_BAD;
    memcpy(addr_text, s, addr_len);
    addr_text[addr_len] = '\0';

    struct tk_cidr c = { 0 };
    unsigned max_prefix;
    if (memchr(addr_text, ':', addr_len)) {
        if (inet_pton(AF_INET6, addr_text, c.addr) != 1)
            return TK_PARSE_BAD;
        c.family = AF_INET6;
        max_prefix = 128;
    } else {
        if (inet_pton(AF_INET, addr_text, c.addr) != 1)
            return TK_PARSE_BAD;
        c.family = AF_INET;
        max_prefix = 32;
    }

    unsigned prefix = max_prefix; /* a bare address is one host */
    if (slash) {
        uint64_t v;
        int n = parse_digits(slash + 1, UINT64_MAX, &v);
        const char *digits_end = slash + 1 + strspn(slash + 1, "0123456789");
        if (n == 0 || digits_end != end)
            return TK_PARSE_BAD;
        if (n < 0 || v > max_prefix)
            return TK_PARSE_RANGE;
        prefix = (unsigned)v;
    }

    /* An IPv4-mapped CIDR is the IPv4 one: peers are compared as IPv4. */
    if (c.family == AF_INET6 && prefix >= 96 &&
        memcmp(c.addr, v4mapped_prefix, sizeof(v4mapped_prefix)) == 0) {
        memmove(c.addr, c.addr + 12, 4);
        memset(c.addr + 4, 0, 12);
        c.family = AF_INET;
        prefix -= 96;
    }
    c.prefix = (uint8_t)prefix;
    mask_host_bits(c.addr, c.family == AF_INET ? 4 : 16, prefix);
    *(struct tk_cidr *)out = c;
    return TK_PARSE_OK;
}

enum tk_parse_result tk_parse_peers(const char *s, struct tk_match *m)
{
    struct tk_cidr got[TK_MATCH_PEERS_MAX + 1];
    unsigned n;
    enum tk_parse_result r =
        parse_list(s, parse_cidr, got, sizeof(got[0]), TK_MATCH_PEERS_MAX, &n);
    if (r != TK_PARSE_OK)
        return r;
    memcpy(m->peers, got, n * sizeof(got[0]));
    m->n_peers = (uint8_t)n;
    return TK_PARSE_OK;
}

static bool cidr_contains(const struct tk_cidr *c, const uint8_t *addr)
{
    unsigned whole = c->prefix / 8, rest = c->prefix % 8;
    if (memcmp(c->addr, addr, whole) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xff00u >> rest);
    return (c->addr[whole] & mask) == (addr[whole] & mask);
}

bool tk_match_conn(const struct tk_match *m, const struct tk_conn_key *k)
{
    if (m->direction != TK_DIR_ANY && k->direction != m->direction)
        return false;
    if (m->n_ports) {
        bool in_range = false;
        for (unsigned i = 0; i < m->n_ports && !in_range; i++)
            in_range = k->server_port >= m->ports[i].lo && k->server_port <= m->ports[i].hi;
        if (!in_range)
            return false;
    }
    if (m->n_peers) {
        if (k->peer_family != AF_INET && k->peer_family != AF_INET6)
            return false; /* an unknown peer is in no list */
        bool in_cidr = false;
        for (unsigned i = 0; i < m->n_peers && !in_cidr; i++)
            in_cidr = m->peers[i].family == k->peer_family &&
                      cidr_contains(&m->peers[i], k->peer_addr);
        if (!in_cidr)
            return false;
    }
    return true;
}

/* The port of an AF_INET / AF_INET6 address, host order; 0 if unknown. */
static uint16_t sockaddr_port(const struct sockaddr *sa)
{
    if (!sa)
        return 0;
    if (sa->sa_family == AF_INET) {
        struct sockaddr_in in;
        memcpy(&in, sa, sizeof(in));
        return ntohs(in.sin_port);
    }
    if (sa->sa_family == AF_INET6) {
        struct sockaddr_in6 in6;
        memcpy(&in6, sa, sizeof(in6));
        return ntohs(in6.sin6_port);
    }
    return 0;
}

void tk_conn_key_set(struct tk_conn_key *k, uint8_t direction,
                     const struct sockaddr *local, const struct sockaddr *peer)
{
    memset(k, 0, sizeof(*k));
    k->direction = direction;
    if (direction == TK_DIR_IN)
        k->server_port = sockaddr_port(local);
    else if (direction == TK_DIR_OUT)
        k->server_port = sockaddr_port(peer);
    if (!peer)
        return;
    if (peer->sa_family == AF_INET) {
        struct sockaddr_in in;
        memcpy(&in, peer, sizeof(in));
        k->peer_family = AF_INET;
        memcpy(k->peer_addr, &in.sin_addr, 4);
    } else if (peer->sa_family == AF_INET6) {
        struct sockaddr_in6 in6;
        memcpy(&in6, peer, sizeof(in6));
        if (memcmp(in6.sin6_addr.s6_addr, v4mapped_prefix, sizeof(v4mapped_prefix)) == 0) {
            k->peer_family = AF_INET;
            memcpy(k->peer_addr, in6.sin6_addr.s6_addr + 12, 4);
        } else {
            k->peer_family = AF_INET6;
            memcpy(k->peer_addr, in6.sin6_addr.s6_addr, 16);
        }
    }
}

void tk_config_defaults(struct tk_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->set.keepalive = true;
    cfg->set.action = TK_ACTION_SHUTDOWN;
    cfg->activity = TK_ACTIVITY_BOTH;
    cfg->filter.direction = TK_DIR_ANY;
    cfg->log_level = TK_LOG_WARN;
    strcpy(cfg->log_dest, "stderr");
}

/* What a bad value is told it should have been. The rules file (rules.c)
 * says the same things for its keys; test_rules checks they agree. */

_Static_assert(TK_MATCH_PORTS_MAX == 32 && TK_MATCH_PEERS_MAX == 32,
               "the messages above name the list limits");

static unsigned count_items(const char *s)
{
    unsigned n = 1;
    for (; *s; s++)
        n += *s == ',';
    return n;
}

/* The state of one tk_config_load call. */
struct loader {
    tk_getenv_fn get;
    tk_report_fn report;
    void *ctx;
    int bad;
};

static void bad_value(struct loader *l, const char *var, const char *value,
                      const char *expected)
{
    l->report(var, value, expected, l->ctx);
    l->bad++;
}

/* Each returns false if the variable was set but bad. */
static bool load_duration(struct loader *l, const char *var, uint64_t *out_ms)
{
    const char *v = l->get(var);
    uint64_t ms;
    if (!v)
        return true;
    if (tk_parse_duration_ms(v, &ms) != TK_PARSE_OK) {
        bad_value(l, var, v, EXPECT_DURATION);
        return false;
    }
    *out_ms = ms;
    return true;
}

static void load_seconds(struct loader *l, const char *var, const char *v, int *out_s)
{
    long n;
    if (tk_parse_whole_seconds(v, 1, 32767, &n) != TK_PARSE_OK)
        bad_value(l, var, v, EXPECT_SECONDS);
    else
        *out_s = (int)n;
}

static void load_count(struct loader *l, const char *var, const char *v, int *out)
{
    long n;
    if (tk_parse_int_range(v, 1, 127, &n) != TK_PARSE_OK)
        bad_value(l, var, v, EXPECT_COUNT);
    else
        *out = (int)n;
}

static void load_switch(struct loader *l, const char *var, const char *expected, bool *out)
{
    const char *v = l->get(var);
    if (v && tk_parse_switch(v, out) != TK_PARSE_OK)
        bad_value(l, var, v, expected);
}

static void load_path(struct loader *l, const char *var, const char *expected,
                      char *out, size_t out_size)
{
    const char *v = l->get(var);
    if (!v)
        return;
    if (v[0] == '\0' || strlen(v) >= out_size) /* refused, never truncated */
        bad_value(l, var, v, expected);
    else
        strcpy(out, v);
}

int tk_config_load(struct tk_config *cfg, tk_getenv_fn get,
                   tk_report_fn report, void *ctx)
{
    struct loader l = { .get = get, .report = report, .ctx = ctx, .bad = 0 };
    struct tk_settings *set = &cfg->set;
    const char *v;
    long n;
    uint64_t ms;

    tk_config_defaults(cfg);

    load_duration(&l, "TCPKEEP_IDLE_TIMEOUT", &set->idle_ms);
    load_duration(&l, "TCPKEEP_READ_TIMEOUT", &set->read_ms);
    load_duration(&l, "TCPKEEP_WRITE_TIMEOUT", &set->write_ms);
    load_duration(&l, "TCPKEEP_FIRST_BYTE_TIMEOUT", &set->first_byte_ms);
    load_duration(&l, "TCPKEEP_HALF_CLOSED_TIMEOUT", &set->half_closed_ms);
    bool lifetime_good = load_duration(&l, "TCPKEEP_MAX_LIFETIME", &set->lifetime_ms);
    if ((v = get("TCPKEEP_MAX_LIFETIME_JITTER"))) {
        if (tk_parse_int_range(v, 0, 100, &n) != TK_PARSE_OK)
            bad_value(&l, "TCPKEEP_MAX_LIFETIME_JITTER", v, EXPECT_PERCENT);
        else if (n != 0 && set->lifetime_ms == 0 && lifetime_good)
            /* (A bad lifetime was reported already: one line is enough.) */
            bad_value(&l, "TCPKEEP_MAX_LIFETIME_JITTER", v, EXPECT_JITTER_ALONE);
        else
            set->lifetime_jitter = (unsigned)n;
    }
    if ((v = get("TCPKEEP_ACTION")) && tk_parse_action(v, &set->action) != TK_PARSE_OK)
        bad_value(&l, "TCPKEEP_ACTION", v, EXPECT_ACTION);
    if ((v = get("TCPKEEP_ACTIVITY")) && tk_parse_activity(v, &cfg->activity) != TK_PARSE_OK)
        bad_value(&l, "TCPKEEP_ACTIVITY", v, EXPECT_ACTIVITY);
    if ((v = get("TCPKEEP_DIRECTION")) &&
        tk_parse_direction(v, &cfg->filter.direction) != TK_PARSE_OK)
        bad_value(&l, "TCPKEEP_DIRECTION", v, EXPECT_DIRECTION);
    load_switch(&l, "TCPKEEP_OVERRIDE", EXPECT_ON_OFF, &set->override);
    load_switch(&l, "TCPKEEP_DRY_RUN", EXPECT_DRY_RUN, &set->dry_run);
    if ((v = get("TCPKEEP_PORTS")) && tk_parse_ports(v, &cfg->filter) != TK_PARSE_OK)
        bad_value(&l, "TCPKEEP_PORTS", v,
                  count_items(v) > TK_MATCH_PORTS_MAX ? EXPECT_PORTS_MANY : EXPECT_PORTS);
    if ((v = get("TCPKEEP_PEERS")) && tk_parse_peers(v, &cfg->filter) != TK_PARSE_OK)
        bad_value(&l, "TCPKEEP_PEERS", v,
                  count_items(v) > TK_MATCH_PEERS_MAX ? EXPECT_PEERS_MANY : EXPECT_PEERS);
    cfg->has_filter = cfg->filter.n_ports || cfg->filter.n_peers ||
                      cfg->filter.direction != TK_DIR_ANY;
    load_path(&l, "TCPKEEP_CONFIG", EXPECT_PATH, cfg->config_path, sizeof(cfg->config_path));
    load_path(&l, "TCPKEEP_STATS", EXPECT_PATH, cfg->stats_path, sizeof(cfg->stats_path));

    /* v1's variables; their messages are part of the contract. */
    const char *keepalive = get("TCPKEEP_KEEPALIVE");
    if (keepalive && tk_parse_switch(keepalive, &set->keepalive) != TK_PARSE_OK)
        bad_value(&l, "TCPKEEP_KEEPALIVE", keepalive, EXPECT_ON_OFF);
    const char *keepidle = get("TCPKEEP_KEEPIDLE");
    if (keepidle)
        load_seconds(&l, "TCPKEEP_KEEPIDLE", keepidle, &set->keepidle_s);
    const char *keepintvl = get("TCPKEEP_KEEPINTVL");
    if (keepintvl)
        load_seconds(&l, "TCPKEEP_KEEPINTVL", keepintvl, &set->keepintvl_s);
    const char *keepcnt = get("TCPKEEP_KEEPCNT");
    if (keepcnt)
        load_count(&l, "TCPKEEP_KEEPCNT", keepcnt, &set->keepcnt);
    if ((v = get("TCPKEEP_USER_TIMEOUT"))) {
        /* The kernel takes an int of milliseconds. */
        if (tk_parse_duration_ms(v, &ms) != TK_PARSE_OK || ms > 2147483647ULL)
            bad_value(&l, "TCPKEEP_USER_TIMEOUT", v, EXPECT_USER_TIMEOUT);
        else
            set->user_timeout_ms = (unsigned)ms;
    }
    load_path(&l, "TCPKEEP_LOG", EXPECT_LOG, cfg->log_dest, sizeof(cfg->log_dest));
    if ((v = get("TCPKEEP_LOG_LEVEL")) && tk_parse_log_level(v, &cfg->log_level) != TK_PARSE_OK)
        bad_value(&l, "TCPKEEP_LOG_LEVEL", v, EXPECT_LOG_LEVEL);

    /* libkeepalive's names, for its users: each only where ours is unset,
     * and as strict as ours (libkeepalive itself ignores garbage). */
    if (!keepalive && (v = get("KEEPALIVE"))) {
        if (strcmp(v, "on") == 0)
            set->keepalive = true;
        else if (strcmp(v, "off") == 0 || strcmp(v, "skip") == 0)
            set->keepalive = false;
        else
            bad_value(&l, "KEEPALIVE", v, EXPECT_LIBKEEPALIVE);
    }
    if (!keepidle && (v = get("KEEPIDLE")))
        load_seconds(&l, "KEEPIDLE", v, &set->keepidle_s);
    if (!keepintvl && (v = get("KEEPINTVL")))
        load_seconds(&l, "KEEPINTVL", v, &set->keepintvl_s);
    if (!keepcnt && (v = get("KEEPCNT")))
        load_count(&l, "KEEPCNT", v, &set->keepcnt);
    return l.bad;
}
