/* Strict parsing of the configuration. Nothing here allocates or logs:
 * bad values go back to the caller through the report callback. */
#include "config.h"

#include <string.h>

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

enum tk_parse_result tk_parse_log_level(const char *s, enum tk_log_level *out)
{
    static const char *const names[] = { "error", "warn", "info", "debug" };
    if (!s)
        return TK_PARSE_BAD;
    for (int i = 0; i < 4; i++) {
        if (strcmp(s, names[i]) == 0) {
            *out = (enum tk_log_level)i;
            return TK_PARSE_OK;
        }
    }
    return TK_PARSE_BAD;
}

void tk_config_defaults(struct tk_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->keepalive = true;
    cfg->log_level = TK_LOG_WARN;
    strcpy(cfg->log_dest, "stderr");
}

#define EXPECT_DURATION "expected a duration such as 30s, 1500ms, 5m or 1h"
#define EXPECT_SECONDS "expected whole seconds 1..32767, such as 60 or 2m"

int tk_config_load(struct tk_config *cfg, tk_getenv_fn get,
                   tk_report_fn report, void *ctx)
{
    int bad = 0;
    const char *v;
    long n;
    uint64_t ms;

    tk_config_defaults(cfg);

#define BAD(var, expected) do { report(var, v, expected, ctx); bad++; } while (0)

    if ((v = get("TCPKEEP_IDLE_TIMEOUT"))) {
        if (tk_parse_duration_ms(v, &ms) != TK_PARSE_OK)
            BAD("TCPKEEP_IDLE_TIMEOUT", EXPECT_DURATION);
        else
            cfg->idle_timeout_ms = ms;
    }
    if ((v = get("TCPKEEP_KEEPALIVE"))) {
        if (tk_parse_switch(v, &cfg->keepalive) != TK_PARSE_OK)
            BAD("TCPKEEP_KEEPALIVE", "expected on or off");
    }
    if ((v = get("TCPKEEP_KEEPIDLE"))) {
        if (tk_parse_whole_seconds(v, 1, 32767, &n) != TK_PARSE_OK)
            BAD("TCPKEEP_KEEPIDLE", EXPECT_SECONDS);
        else
            cfg->keepidle_s = (int)n;
    }
    if ((v = get("TCPKEEP_KEEPINTVL"))) {
        if (tk_parse_whole_seconds(v, 1, 32767, &n) != TK_PARSE_OK)
            BAD("TCPKEEP_KEEPINTVL", EXPECT_SECONDS);
        else
            cfg->keepintvl_s = (int)n;
    }
    if ((v = get("TCPKEEP_KEEPCNT"))) {
        if (tk_parse_int_range(v, 1, 127, &n) != TK_PARSE_OK)
            BAD("TCPKEEP_KEEPCNT", "expected an integer 1..127");
        else
            cfg->keepcnt = (int)n;
    }
    if ((v = get("TCPKEEP_USER_TIMEOUT"))) {
        /* The kernel takes an int of milliseconds. */
        if (tk_parse_duration_ms(v, &ms) != TK_PARSE_OK || ms > 2147483647ULL)
            BAD("TCPKEEP_USER_TIMEOUT",
                "expected a duration up to 596h, such as 30s or 1500ms");
        else
            cfg->user_timeout_ms = (unsigned)ms;
    }
    if ((v = get("TCPKEEP_LOG"))) {
        if (v[0] == '\0' || strlen(v) >= sizeof(cfg->log_dest))
            BAD("TCPKEEP_LOG", "expected stderr, off or a file path");
        else
            strcpy(cfg->log_dest, v);
    }
    if ((v = get("TCPKEEP_LOG_LEVEL"))) {
        if (tk_parse_log_level(v, &cfg->log_level) != TK_PARSE_OK)
            BAD("TCPKEEP_LOG_LEVEL", "expected error, warn, info or debug");
    }
#undef BAD
    return bad;
}
