/* Loading the configuration, once, and keeping the shim sane across fork. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "log.h"
#include "real.h"
#include "rules.h"
#include "stats.h"
#include "shim.h"

struct tk_config tk_cfg;
struct tk_policy tk_policy;
bool tk_deferred;
struct tk_rules *tk_rules_current;

enum { STATE_NEW, STATE_LOADING, STATE_ON, STATE_OFF };
static atomic_int state;

static const char *get_env(const char *name)
{
    /* In a set-user-ID program this returns NULL: the environment of the
     * user who started it does not get to choose a file we append to. */
    return secure_getenv(name);
}

static void report_bad(const char *var, const char *value, const char *expected, void *ctx)
{
    (void)ctx;
    tk_log_stderr("%s=\"%s\": %s; tcpkeep is disabled in this process", var, value, expected);
}

static sigset_t fork_saved_mask;

static void fork_prepare(void)
{
    tk_watchdog_fork_prepare(); /* first: the watchdog never waits for the table with it */
    sigset_t old;
    tk_table_lock(&old); /* the child gets a consistent table */
    fork_saved_mask = old;
}

static void fork_parent(void)
{
    sigset_t old = fork_saved_mask;
    tk_table_unlock(&old);
    tk_watchdog_fork_parent();
}

static void fork_child(void)
{
    sigset_t old = fork_saved_mask, still_blocked;
    tk_table_after_fork_child(); /* a fresh lock: no other thread exists here */
    tk_watchdog_fork_child_early();
    tk_log_after_fork_child();
    tk_stats_after_fork_child();
    tk_table_lock(&still_blocked);
    tk_watchdog_after_fork_child();
    tk_table_unlock(&old);
}

static void load(void)
{
    int saved = errno;
    tk_real_bind();
    if (tk_config_load(&tk_cfg, get_env, report_bad, NULL) != 0) {
        atomic_store(&state, STATE_OFF);
        errno = saved;
        return;
    }
    tk_log_open(tk_cfg.log_dest, tk_cfg.log_level);
    tk_policy.activity = tk_cfg.activity;
    tk_deferred = tk_cfg.has_filter || tk_cfg.config_path[0];
    if (tk_cfg.config_path[0])
        tk_rules_current = tk_rules_file_open(tk_cfg.config_path, &tk_cfg.set);
    tk_stats_init(tk_cfg.stats_path);
    tk_clock_init();
    /* A stamp may lag the truth by a coarse tick plus the hot path's grain,
     * and TCP_INFO's times by a tick: the watchdog adds this before judging. */
    tk_policy.slack_ns = tk_clock_coarse_res_ns() + TK_STAMP_GRAIN_NS;
    pthread_atfork(fork_prepare, fork_parent, fork_child);
    tk_log(TK_LOG_DEBUG, "loaded: idle timeout %llu ms, keepalive %s%s",
           (unsigned long long)tk_cfg.set.idle_ms, tk_cfg.set.keepalive ? "on" : "off",
           tk_cfg.set.dry_run ? ", dry run" : "");
    atomic_store(&state, STATE_ON);
    errno = saved;
}

bool tk_active(void)
{
    int s = atomic_load_explicit(&state, memory_order_acquire);
    if (__builtin_expect(s == STATE_ON, 1))
        return true;
    if (s == STATE_NEW) {
        int expected = STATE_NEW;
        if (atomic_compare_exchange_strong(&state, &expected, STATE_LOADING))
            load();
        s = atomic_load(&state);
    }
    return s == STATE_ON;
}

__attribute__((constructor)) static void tk_constructor(void)
{
    tk_active();
}
