/* `tcpkeep stats PATH`: reads a TCPKEEP_STATS file and prints it as a table.
 *
 * The parser is small and strict for the flat shape the shim writes
 * (shim/stats.h): one object of non-negative integers, one string and two
 * objects of integers. Keys it does not know are skipped whatever their
 * value, so a newer shim's file still reads; anything that is not JSON, or
 * a known key with the wrong type, missing or given twice, is an error. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../shim/reason.h"
#include "tool.h"

/* Far above any real stats file; a bound on what a wrong PATH makes us read. */
#define STATS_FILE_MAX (1 << 20)
/* Nesting allowed in skipped values. */
#define JSON_DEPTH_MAX 32

enum counter_id {
    C_TRACKED_NOW, C_TRACKED_TOTAL, C_KEEPALIVE_SET, C_OPTION_ERRORS, C_COUNTERS
};
static const char *const counter_key[C_COUNTERS] = {
    "tracked_now", "tracked_total", "keepalive_set", "option_errors",
};

struct stats_file {
    uint64_t pid;
    uint64_t counter[C_COUNTERS];
    uint64_t cuts[TK_REASONS];
    uint64_t would_cut[TK_REASONS];
    char updated[64];
    /* which keys were seen: each exactly once */
    bool seen_pid, seen_updated, seen_counter[C_COUNTERS];
    bool seen_cuts, seen_would_cut;
    bool seen_cut[TK_REASONS], seen_would[TK_REASONS];
};

struct parser {
    const char *text, *pos, *end;
    char error[160];
};

static bool fail(struct parser *p, const char *what)
{
    if (p->error[0])
        return false; /* keep the first, innermost error */
    int line = 1, col = 1;
    for (const char *c = p->text; c < p->pos && c < p->end; c++) {
        if (*c == '\n') {
            line++;
            col = 1;
        } else {
            col++;
        }
    }
    snprintf(p->error, sizeof(p->error), "%s at line %d, column %d", what, line, col);
    return false;
}

static void skip_space(struct parser *p)
{
    while (p->pos < p->end &&
           (*p->pos == ' ' || *p->pos == '\t' || *p->pos == '\n' || *p->pos == '\r'))
        p->pos++;
}

static bool expect_char(struct parser *p, char c, const char *what)
{
    skip_space(p);
    if (p->pos >= p->end || *p->pos != c)
        return fail(p, what);
    p->pos++;
    return true;
}

static bool is_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* A JSON string; its raw content (escapes left as they are) in start, len. */
static bool parse_string(struct parser *p, const char **start, size_t *len)
{
    skip_space(p);
    if (p->pos >= p->end || *p->pos != '"')
        return fail(p, "expected a string");
    p->pos++;
    const char *s = p->pos;
    while (p->pos < p->end && *p->pos != '"') {
        unsigned char c = (unsigned char)*p->pos;
        if (c < 0x20)
            return fail(p, "control character in a string");
        if (c == '\\') {
            p->pos++;
            if (p->pos >= p->end)
                break;
            if (*p->pos == 'u') {
                for (int i = 1; i <= 4; i++)
                    if (p->pos + i >= p->end || !is_hex(p->pos[i]))
                        return fail(p, "bad \\u escape in a string");
                p->pos += 4;
            } else if (!strchr("\"\\/bfnrt", *p->pos)) {
                return fail(p, "bad escape in a string");
            }
        }
        p->pos++;
    }
    if (p->pos >= p->end)
        return fail(p, "unterminated string");
    *start = s;
    *len = (size_t)(p->pos - s);
    p->pos++;
    return true;
}

/* A JSON number, checked against the grammar; *is_count and *count when it
 * is a plain non-negative integer that fits in 64 bits. */
static bool parse_number(struct parser *p, bool *is_count, uint64_t *count)
{
    bool plain = true;
    uint64_t value = 0;
    if (p->pos < p->end && *p->pos == '-') {
        plain = false;
        p->pos++;
    }
    if (p->pos >= p->end || *p->pos < '0' || *p->pos > '9')
        return fail(p, "bad number");
    if (*p->pos == '0' && p->pos + 1 < p->end && p->pos[1] >= '0' && p->pos[1] <= '9')
        return fail(p, "number with a leading zero");
    while (p->pos < p->end && *p->pos >= '0' && *p->pos <= '9') {
        unsigned digit = (unsigned)(*p->pos - '0');
        if (value > (UINT64_MAX - digit) / 10)
            plain = false;
        else
            value = value * 10 + digit;
        p->pos++;
    }
    if (p->pos < p->end && *p->pos == '.') {
        plain = false;
        p->pos++;
        if (p->pos >= p->end || *p->pos < '0' || *p->pos > '9')
            return fail(p, "bad number");
        while (p->pos < p->end && *p->pos >= '0' && *p->pos <= '9')
            p->pos++;
    }
    if (p->pos < p->end && (*p->pos == 'e' || *p->pos == 'E')) {
        plain = false;
        p->pos++;
        if (p->pos < p->end && (*p->pos == '+' || *p->pos == '-'))
            p->pos++;
        if (p->pos >= p->end || *p->pos < '0' || *p->pos > '9')
            return fail(p, "bad number");
        while (p->pos < p->end && *p->pos >= '0' && *p->pos <= '9')
            p->pos++;
    }
    *is_count = plain;
    *count = value;
    return true;
}

static bool skip_value(struct parser *p, int depth);

static bool skip_container(struct parser *p, int depth, char close, bool keyed)
{
    if (depth >= JSON_DEPTH_MAX)
        return fail(p, "nested too deep");
    p->pos++; /* the opening bracket */
    skip_space(p);
    if (p->pos < p->end && *p->pos == close) {
        p->pos++;
        return true;
    }
    for (;;) {
        if (keyed) {
            const char *k;
            size_t klen;
            if (!parse_string(p, &k, &klen) || !expect_char(p, ':', "expected ':'"))
                return false;
        }
        if (!skip_value(p, depth + 1))
            return false;
        skip_space(p);
        if (p->pos < p->end && *p->pos == ',') {
            p->pos++;
            continue;
        }
        if (p->pos < p->end && *p->pos == close) {
            p->pos++;
            return true;
        }
        return fail(p, keyed ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static bool skip_literal(struct parser *p, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(p->end - p->pos) < n || memcmp(p->pos, word, n) != 0)
        return fail(p, "expected a JSON value");
    p->pos += n;
    return true;
}

static bool skip_value(struct parser *p, int depth)
{
    skip_space(p);
    if (p->pos >= p->end)
        return fail(p, "expected a JSON value");
    const char *s;
    size_t n;
    bool is_count;
    uint64_t count;
    switch (*p->pos) {
    case '{': return skip_container(p, depth, '}', true);
    case '[': return skip_container(p, depth, ']', false);
    case '"': return parse_string(p, &s, &n);
    case 't': return skip_literal(p, "true");
    case 'f': return skip_literal(p, "false");
    case 'n': return skip_literal(p, "null");
    default:  return parse_number(p, &is_count, &count);
    }
}

static bool key_is(const char *k, size_t klen, const char *name)
{
    return strlen(name) == klen && memcmp(k, name, klen) == 0;
}

static bool parse_count(struct parser *p, const char *key, uint64_t *out)
{
    char what[96];
    skip_space(p);
    bool is_count = false;
    const char *at = p->pos;
    if (p->pos < p->end && ((*p->pos >= '0' && *p->pos <= '9') || *p->pos == '-')) {
        if (!parse_number(p, &is_count, out))
            return false;
    }
    if (!is_count) {
        p->pos = at;
        snprintf(what, sizeof(what), "\"%s\" is not a non-negative integer", key);
        return fail(p, what);
    }
    return true;
}

static bool duplicate(struct parser *p, const char *key)
{
    char what[96];
    snprintf(what, sizeof(what), "\"%s\" given twice", key);
    return fail(p, what);
}

/* The members of an object whose '{' has been read, up to its '}': each
 * key, with the parser at its value, to member(). */
static bool parse_members(struct parser *p,
                          bool (*member)(struct parser *p, const char *k, size_t klen, void *ctx),
                          void *ctx)
{
    skip_space(p);
    if (p->pos < p->end && *p->pos == '}') {
        p->pos++;
        return true;
    }
    for (;;) {
        const char *k;
        size_t klen;
        if (!parse_string(p, &k, &klen) || !expect_char(p, ':', "expected ':'"))
            return false;
        if (!member(p, k, klen, ctx))
            return false;
        skip_space(p);
        if (p->pos < p->end && *p->pos == ',') {
            p->pos++;
            continue;
        }
        return expect_char(p, '}', "expected ',' or '}'");
    }
}

struct reason_counts {
    uint64_t *counts;
    bool *seen;
};

/* One "reason":N of a reasons object; a reason this tool does not know is skipped. */
static bool reason_member(struct parser *p, const char *k, size_t klen, void *ctx)
{
    struct reason_counts *rc = ctx;
    int r = 0;
    while (r < TK_REASONS && !key_is(k, klen, tk_reason_key[r]))
        r++;
    if (r == TK_REASONS)
        return skip_value(p, 1);
    if (rc->seen[r])
        return duplicate(p, tk_reason_key[r]);
    rc->seen[r] = true;
    return parse_count(p, tk_reason_key[r], &rc->counts[r]);
}

/* {"idle":N,...}: one count per reason. */
static bool parse_reasons(struct parser *p, const char *name, uint64_t *counts, bool *seen)
{
    char what[96];
    skip_space(p);
    if (p->pos >= p->end || *p->pos != '{') {
        snprintf(what, sizeof(what), "\"%s\" is not an object", name);
        return fail(p, what);
    }
    p->pos++;
    if (!parse_members(p, reason_member, &(struct reason_counts){ counts, seen }))
        return false;
    for (int r = 0; r < TK_REASONS; r++) {
        if (!seen[r]) {
            snprintf(what, sizeof(what), "\"%s\" has no \"%s\" count", name, tk_reason_key[r]);
            return fail(p, what);
        }
    }
    return true;
}

/* One top-level member of the stats file. */
static bool stats_member(struct parser *p, const char *k, size_t klen, void *ctx)
{
    struct stats_file *st = ctx;
    if (key_is(k, klen, "pid")) {
        if (st->seen_pid)
            return duplicate(p, "pid");
        st->seen_pid = true;
        return parse_count(p, "pid", &st->pid);
    }
    if (key_is(k, klen, "updated")) {
        const char *s;
        size_t n;
        if (st->seen_updated)
            return duplicate(p, "updated");
        st->seen_updated = true;
        skip_space(p);
        if (p->pos >= p->end || *p->pos != '"')
            return fail(p, "\"updated\" is not a string");
        if (!parse_string(p, &s, &n))
            return false;
        if (n >= sizeof(st->updated))
            n = sizeof(st->updated) - 1;
        for (size_t i = 0; i < n; i++) /* printable ASCII only, for the terminal */
            st->updated[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
        st->updated[n] = '\0';
        return true;
    }
    if (key_is(k, klen, "cuts")) {
        if (st->seen_cuts)
            return duplicate(p, "cuts");
        st->seen_cuts = true;
        return parse_reasons(p, "cuts", st->cuts, st->seen_cut);
    }
    if (key_is(k, klen, "would_cut")) {
        if (st->seen_would_cut)
            return duplicate(p, "would_cut");
        st->seen_would_cut = true;
        return parse_reasons(p, "would_cut", st->would_cut, st->seen_would);
    }
    for (int c = 0; c < C_COUNTERS; c++) {
        if (key_is(k, klen, counter_key[c])) {
            if (st->seen_counter[c])
                return duplicate(p, counter_key[c]);
            st->seen_counter[c] = true;
            return parse_count(p, counter_key[c], &st->counter[c]);
        }
    }
    return skip_value(p, 1); /* a key of a newer shim */
}

static bool parse_stats(struct parser *p, struct stats_file *st)
{
    if (!expect_char(p, '{', "expected a JSON object") || !parse_members(p, stats_member, st))
        return false;
    skip_space(p);
    if (p->pos != p->end)
        return fail(p, "text after the JSON object");
    /* in the order the shim writes them */
    const char *missing = !st->seen_pid ? "pid"
                        : !st->seen_counter[C_TRACKED_NOW] ? counter_key[C_TRACKED_NOW]
                        : !st->seen_counter[C_TRACKED_TOTAL] ? counter_key[C_TRACKED_TOTAL]
                        : !st->seen_counter[C_KEEPALIVE_SET] ? counter_key[C_KEEPALIVE_SET]
                        : !st->seen_cuts ? "cuts"
                        : !st->seen_would_cut ? "would_cut"
                        : !st->seen_counter[C_OPTION_ERRORS] ? counter_key[C_OPTION_ERRORS]
                        : !st->seen_updated ? "updated" : NULL;
    if (missing) {
        snprintf(p->error, sizeof(p->error), "no \"%s\" key", missing);
        return false;
    }
    return true;
}

/* The whole file, NUL-terminated; NULL with errno set (EFBIG: too large). */
static char *read_file(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return NULL;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int err = errno;
        close(fd);
        errno = err;
        return NULL;
    }
    if (S_ISDIR(st.st_mode)) {
        close(fd);
        errno = EISDIR;
        return NULL;
    }
    char *buf = malloc(STATS_FILE_MAX + 1);
    if (!buf) {
        close(fd);
        errno = ENOMEM;
        return NULL;
    }
    size_t n = 0;
    /* Bounded: each round reads at least one byte or ends the loop. */
    while (n <= STATS_FILE_MAX) {
        ssize_t r = read(fd, buf + n, STATS_FILE_MAX + 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int err = errno;
            free(buf);
            close(fd);
            errno = err;
            return NULL;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    if (n > STATS_FILE_MAX) {
        free(buf);
        errno = EFBIG;
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

static int digits(uint64_t v)
{
    int n = 1;
    while (v >= 10) {
        v /= 10;
        n++;
    }
    return n;
}

static void print_stats(const struct stats_file *st)
{
    printf("%-14s %" PRIu64 " (updated %s)\n", "process", st->pid, st->updated);
    printf("%-14s %" PRIu64 "\n", "tracked now", st->counter[C_TRACKED_NOW]);
    printf("%-14s %" PRIu64 "\n", "tracked total", st->counter[C_TRACKED_TOTAL]);
    printf("%-14s %" PRIu64 "\n", "keepalive set", st->counter[C_KEEPALIVE_SET]);
    printf("%-14s %" PRIu64 "\n", "option errors", st->counter[C_OPTION_ERRORS]);

    int cuts_w = 4, would_w = 9; /* the headers' widths */
    for (int r = 0; r < TK_REASONS; r++) {
        if (digits(st->cuts[r]) > cuts_w)
            cuts_w = digits(st->cuts[r]);
        if (digits(st->would_cut[r]) > would_w)
            would_w = digits(st->would_cut[r]);
    }
    printf("\n%-14s %*s  %*s\n", "reason", cuts_w, "cuts", would_w, "would cut");
    for (int r = 0; r < TK_REASONS; r++)
        printf("%-14s %*" PRIu64 "  %*" PRIu64 "\n", tk_reason_token[r],
               cuts_w, st->cuts[r], would_w, st->would_cut[r]);
}

static bool wants_help(const char *arg)
{
    return strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0;
}

int cmd_stats(int argc, char **argv)
{
    if (argc == 2 && wants_help(argv[1])) {
        printf("%s\n\nPrints the file that TCPKEEP_STATS=PATH makes libtcpkeep write (every 2 s\n"
               "and at exit) as a table: connections tracked now and in total, sockets\n"
               "given SO_KEEPALIVE, failed socket options, and per reason the connections\n"
               "cut and, with TCPKEEP_DRY_RUN=on, those that would have been cut.\n",
               STATS_USAGE);
        return TOOL_OK;
    }
    if (argc != 2)
        return tool_usage_error("stats", STATS_USAGE, argc < 2 ? "no PATH given"
                                                               : "one PATH only");
    const char *path = argv[1];
    if (path[0] == '\0')
        return tool_usage_error("stats", STATS_USAGE, "empty PATH");
    size_t len = 0;
    char *text = read_file(path, &len);
    if (!text) {
        if (errno == EFBIG)
            tool_error("stats", "%s: not a tcpkeep stats file: larger than %d bytes", path,
                       STATS_FILE_MAX);
        else
            tool_error("stats", "%s: %s", path, strerror(errno));
        return TOOL_FAILED;
    }
    struct parser p = {.text = text, .pos = text, .end = text + len};
    struct stats_file st;
    memset(&st, 0, sizeof(st));
    if (len == 0) {
        tool_error("stats", "%s: not a tcpkeep stats file: empty", path);
        free(text);
        return TOOL_FAILED;
    }
    if (memchr(text, '\0', len) || !parse_stats(&p, &st)) {
        tool_error("stats", "%s: not a tcpkeep stats file: %s", path,
                   p.error[0] ? p.error : "a NUL byte in it");
        free(text);
        return TOOL_FAILED;
    }
    free(text);
    print_stats(&st);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        tool_error("stats", "writing the output: %s", strerror(errno));
        return TOOL_FAILED;
    }
    return TOOL_OK;
}
