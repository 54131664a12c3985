/* Configuration: strict parsing of the TCPKEEP_* environment (see CONTRACT.md).
 * Pure functions, no system calls except in tk_config_load's getenv callback,
 * so the unit tests and the fuzzer can drive them directly. */
#ifndef TK_CONFIG_H
#define TK_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum tk_log_level { TK_LOG_ERROR = 0, TK_LOG_WARN, TK_LOG_INFO, TK_LOG_DEBUG };

/* Largest duration accepted anywhere: ~31.7 years, far from uint64 overflow in ns. */
#define TK_DURATION_MAX_MS 1000000000000ULL

struct tk_config {
    uint64_t idle_timeout_ms;   /* 0 = never */
    bool keepalive;             /* set SO_KEEPALIVE */
    int keepidle_s;             /* 0 = leave the kernel's */
    int keepintvl_s;            /* 0 = leave the kernel's */
    int keepcnt;                /* 0 = leave the kernel's */
    unsigned user_timeout_ms;   /* 0 = leave the kernel's */
    enum tk_log_level log_level;
    char log_dest[4096];        /* "stderr", "off" or a path */
};

/* Parse results. TK_PARSE_OK is 0 so callers can test for failure with != 0. */
enum tk_parse_result { TK_PARSE_OK = 0, TK_PARSE_BAD, TK_PARSE_RANGE };

enum tk_parse_result tk_parse_duration_ms(const char *s, uint64_t *out_ms);
enum tk_parse_result tk_parse_int_range(const char *s, long min, long max, long *out);
enum tk_parse_result tk_parse_whole_seconds(const char *s, long min, long max, long *out);
enum tk_parse_result tk_parse_switch(const char *s, bool *out);
enum tk_parse_result tk_parse_log_level(const char *s, enum tk_log_level *out);

void tk_config_defaults(struct tk_config *cfg);

/* Reads every variable through `get` (secure_getenv in the library).
 * For each bad value calls `report(variable, value, expected, ctx)`.
 * Returns the number of bad values; cfg holds the good ones. */
typedef const char *(*tk_getenv_fn)(const char *name);
typedef void (*tk_report_fn)(const char *var, const char *value,
                             const char *expected, void *ctx);
int tk_config_load(struct tk_config *cfg, tk_getenv_fn get,
                   tk_report_fn report, void *ctx);

#endif
