/* Configuration: strict parsing of the TCPKEEP_* environment (see CONTRACT.md
 * and the README), and of the values a rules file may give (rules.h).
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

enum tk_action { TK_ACTION_SHUTDOWN = 0, TK_ACTION_RESET };
enum tk_activity { TK_ACTIVITY_BOTH = 0, TK_ACTIVITY_CALLS, TK_ACTIVITY_KERNEL };
/* Who made a connection: accepted (in) or made by the program (out). */
enum tk_direction { TK_DIR_ANY = 0, TK_DIR_IN, TK_DIR_OUT };

/* What applies to one connection: the environment's values, or those of the
 * first matching line of the rules file laid over them. Durations in ms,
 * 0 = off (or "leave the kernel's" for the socket options). */
struct tk_settings {
    uint64_t idle_ms;           /* TCPKEEP_IDLE_TIMEOUT   idle= */
    uint64_t read_ms;           /* TCPKEEP_READ_TIMEOUT   read= */
    uint64_t write_ms;          /* TCPKEEP_WRITE_TIMEOUT  write= */
    uint64_t first_byte_ms;     /* TCPKEEP_FIRST_BYTE_TIMEOUT  first-byte= */
    uint64_t half_closed_ms;    /* TCPKEEP_HALF_CLOSED_TIMEOUT half-closed= */
    uint64_t lifetime_ms;       /* TCPKEEP_MAX_LIFETIME   lifetime= */
    unsigned lifetime_jitter;   /* TCPKEEP_MAX_LIFETIME_JITTER lifetime-jitter=, percent 0..100 */
    unsigned user_timeout_ms;   /* TCPKEEP_USER_TIMEOUT   user-timeout= */
    int keepidle_s;             /* TCPKEEP_KEEPIDLE       keepidle= */
    int keepintvl_s;            /* TCPKEEP_KEEPINTVL      keepintvl= */
    int keepcnt;                /* TCPKEEP_KEEPCNT        keepcnt= */
    bool keepalive;             /* TCPKEEP_KEEPALIVE      keepalive= */
    bool override;              /* TCPKEEP_OVERRIDE       override= */
    bool dry_run;               /* TCPKEEP_DRY_RUN        dry-run= */
    uint8_t action;             /* TCPKEEP_ACTION         action=, enum tk_action */
};

/* Which connections are managed (TCPKEEP_PORTS, _PEERS, _DIRECTION, and the
 * MATCH part of a rule line). A list with no entries is not set: it matches
 * everything. */
#define TK_MATCH_PORTS_MAX 32
#define TK_MATCH_PEERS_MAX 32
struct tk_port_range { uint16_t lo, hi; };
struct tk_cidr {
    uint8_t family;   /* AF_INET or AF_INET6 */
    uint8_t prefix;   /* 0..32 or 0..128 */
    uint8_t addr[16]; /* network byte order; IPv4 in the first 4 bytes */
};
struct tk_match {
    uint8_t n_ports, n_peers;
    uint8_t direction; /* enum tk_direction; TK_DIR_ANY = not set */
    struct tk_port_range ports[TK_MATCH_PORTS_MAX];
    struct tk_cidr peers[TK_MATCH_PEERS_MAX];
};

/* What the shim knows about a connection when it decides what applies. */
struct tk_conn_key {
    uint8_t direction;     /* TK_DIR_IN or TK_DIR_OUT */
    uint8_t peer_family;   /* AF_INET (IPv4-mapped IPv6 peers too), AF_INET6, 0 = unknown */
    uint16_t server_port;  /* host order: the local port if in, the peer's if out */
    uint8_t peer_addr[16]; /* network byte order; IPv4 in the first 4 bytes */
};

struct tk_config {
    struct tk_settings set;     /* the environment's settings */
    struct tk_match filter;     /* TCPKEEP_PORTS / _PEERS / _DIRECTION */
    bool has_filter;            /* any of those three was set */
    uint8_t activity;           /* TCPKEEP_ACTIVITY, enum tk_activity */
    enum tk_log_level log_level;
    char log_dest[4096];        /* "stderr", "off" or a path */
    char config_path[4096];     /* TCPKEEP_CONFIG, "" = none */
    char stats_path[4096];      /* TCPKEEP_STATS, "" = none; may hold %p */
};

/* What a bad value was expected to be: the end of its one-line message,
 * the same for a variable and for a rules file's key. */
#define EXPECT_DURATION "expected a duration such as 30s, 1500ms, 5m or 1h"
#define EXPECT_SECONDS "expected whole seconds 1..32767, such as 60 or 2m"
#define EXPECT_COUNT "expected an integer 1..127"
#define EXPECT_USER_TIMEOUT "expected a duration up to 596h, such as 30s or 1500ms"
#define EXPECT_ON_OFF "expected on or off"
#define EXPECT_DRY_RUN "expected on, off, 1 or 0"
#define EXPECT_PERCENT "expected a percentage 0..100"
#define EXPECT_JITTER_ALONE "expected TCPKEEP_MAX_LIFETIME to be set too"
#define EXPECT_ACTION "expected shutdown or reset"
#define EXPECT_ACTIVITY "expected both, calls or kernel"
#define EXPECT_DIRECTION "expected in, out or both"
#define EXPECT_PORTS "expected ports 1..65535 and ranges such as 80,443,8000-8100"
#define EXPECT_PORTS_MANY "expected at most 32 ports and ranges, such as 80,443,8000-8100"
#define EXPECT_PEERS "expected IPv4 or IPv6 addresses or CIDRs such as 10.0.0.0/8,::1/128"
#define EXPECT_PEERS_MANY "expected at most 32 addresses or CIDRs, such as 10.0.0.0/8,::1/128"
#define EXPECT_PATH "expected a file path"
#define EXPECT_LOG "expected stderr, off or a file path"
#define EXPECT_LOG_LEVEL "expected error, warn, info or debug"
#define EXPECT_LIBKEEPALIVE "expected on, off or skip"

/* Parse results. TK_PARSE_OK is 0 so callers can test for failure with != 0. */
enum tk_parse_result { TK_PARSE_OK = 0, TK_PARSE_BAD, TK_PARSE_RANGE };

enum tk_parse_result tk_parse_duration_ms(const char *s, uint64_t *out_ms);
enum tk_parse_result tk_parse_int_range(const char *s, long min, long max, long *out);
enum tk_parse_result tk_parse_whole_seconds(const char *s, long min, long max, long *out);
enum tk_parse_result tk_parse_switch(const char *s, bool *out);
enum tk_parse_result tk_parse_log_level(const char *s, enum tk_log_level *out);
enum tk_parse_result tk_parse_action(const char *s, uint8_t *out);
enum tk_parse_result tk_parse_activity(const char *s, uint8_t *out);
enum tk_parse_result tk_parse_direction(const char *s, uint8_t *out); /* in|out|both */
/* "80,443,8000-8100" into m->ports; "10.0.0.0/8,::1/128,192.0.2.7" into m->peers. */
enum tk_parse_result tk_parse_ports(const char *s, struct tk_match *m);
enum tk_parse_result tk_parse_peers(const char *s, struct tk_match *m);

/* True if the connection matches every part of m that is set. */
bool tk_match_conn(const struct tk_match *m, const struct tk_conn_key *k);
/* Fills k from a connection's addresses (either may be NULL: unknown). */
struct sockaddr;
void tk_conn_key_set(struct tk_conn_key *k, uint8_t direction,
                     const struct sockaddr *local, const struct sockaddr *peer);

void tk_config_defaults(struct tk_config *cfg);

/* Reads every variable through `get` (secure_getenv in the library),
 * the libkeepalive names KEEPALIVE, KEEPIDLE, KEEPINTVL, KEEPCNT included
 * (each only when its TCPKEEP_ twin is unset). For each bad value calls
 * `report(variable, value, expected, ctx)`. Returns the number of bad
 * values; cfg holds the good ones. */
typedef const char *(*tk_getenv_fn)(const char *name);
typedef void (*tk_report_fn)(const char *var, const char *value,
                             const char *expected, void *ctx);
int tk_config_load(struct tk_config *cfg, tk_getenv_fn get,
                   tk_report_fn report, void *ctx);

#endif
