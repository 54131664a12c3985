/* The counters and the TCPKEEP_STATS file; see stats.h. */
#include "stats.h"
#include "table.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

struct tk_stats tk_stats;

/* The path as given, with %p still in it; "" = no file. */
static char path_template[PATH_MAX];
/* Serialises writers: the watchdog's periodic write and the exit destructor. */
static pthread_mutex_t write_lock = PTHREAD_MUTEX_INITIALIZER;
/* A failure was logged and no write has succeeded since: stay quiet. */
static bool failure_logged;

/* How long a writer waits for another one to finish before giving up: a
 * file system that hangs must not hang the program's exit. */
#define TK_STATS_LOCK_WAIT_S 2

void tk_stats_init(const char *template)
{
    size_t len = strlen(template);
    if (len >= sizeof(path_template))
        len = 0; /* the configuration rejects this; never write a truncated path */
    memcpy(path_template, template, len);
    path_template[len] = '\0';
}

bool tk_stats_enabled(void)
{
    return path_template[0] != '\0';
}

/* %p -> the pid, %% -> %, anything else as it is. False if it does not fit. */
static bool expand_path(char *out, size_t size, pid_t pid)
{
    size_t n = 0;
    for (const char *s = path_template; *s; s++) {
        char pid_text[16];
        const char *piece = s;
        size_t piece_len = 1;
        if (s[0] == '%' && s[1] == 'p') {
            piece_len = (size_t)snprintf(pid_text, sizeof(pid_text), "%d", (int)pid);
            piece = pid_text;
            s++;
        } else if (s[0] == '%' && s[1] == '%') {
            s++;
        }
        if (n + piece_len >= size)
            return false;
        memcpy(out + n, piece, piece_len);
        n += piece_len;
    }
    out[n] = '\0';
    return true;
}

static int format_json(char *buf, size_t size, pid_t pid)
{
    char updated[32];
    struct tm tm;
    time_t now = time(NULL);
    if (!gmtime_r(&now, &tm) || strftime(updated, sizeof(updated), "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        strcpy(updated, "1970-01-01T00:00:00Z");

    size_t n = 0;
#define LOAD(counter) atomic_load_explicit(&(counter), memory_order_relaxed)
#define APPEND(...)                                                         \
    do {                                                                    \
        int m = snprintf(buf + n, n < size ? size - n : 0, __VA_ARGS__);    \
        if (m < 0)                                                          \
            return -1;                                                      \
        n += (size_t)m;                                                     \
    } while (0)
    APPEND("{\"pid\":%d,\"tracked_now\":%" PRIu64 ",\"tracked_total\":%" PRIu64
           ",\"keepalive_set\":%" PRIu64,
           (int)pid, LOAD(tk_stats.tracked_now), LOAD(tk_stats.tracked_total),
           LOAD(tk_stats.keepalive_set));
    for (int table = 0; table < 2; table++) {
        _Atomic uint64_t *counts = table == 0 ? tk_stats.cuts : tk_stats.would_cut;
        APPEND(",\"%s\":{", table == 0 ? "cuts" : "would_cut");
        for (int r = 0; r < TK_REASONS; r++)
            APPEND("%s\"%s\":%" PRIu64, r ? "," : "", tk_reason_key[r], LOAD(counts[r]));
        APPEND("}");
    }
    APPEND(",\"option_errors\":%" PRIu64 ",\"updated\":\"%s\"}\n",
           LOAD(tk_stats.option_errors), updated);
#undef APPEND
#undef LOAD
    return n < size ? (int)n : -1;
}

/* Raw system calls: the shim's own hooks have no business with this file. */
static int write_all(int fd, const char *buf, size_t len)
{
    for (int tries = 0; len > 0 && tries < 1000; tries++) {
        ssize_t w = syscall(SYS_write, fd, buf, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -1;
        if (w == 0) {
            errno = EIO;
            return -1;
        }
        buf += w;
        len -= (size_t)w;
    }
    if (len > 0) {
        errno = EIO;
        return -1;
    }
    return 0;
}

/* Writes the file; on failure returns the step that failed, errno set. */
static const char *write_file(const char *path, pid_t pid)
{
    char tmp[PATH_MAX + 32];
    char json[1024];
    int len = format_json(json, sizeof(json), pid);
    if (len < 0) {
        errno = EOVERFLOW;
        return "formatting";
    }
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)pid) >= sizeof(tmp)) {
        errno = ENAMETOOLONG;
        return "naming the temporary file";
    }
    int fd = (int)syscall(SYS_openat, AT_FDCWD, tmp,
                          O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0)
        return "creating the temporary file";
    if (write_all(fd, json, (size_t)len) != 0) {
        int err = errno;
        syscall(SYS_close, fd);
        unlink(tmp);
        errno = err;
        return "writing";
    }
    if (syscall(SYS_close, fd) != 0 && errno != EINTR) {
        int err = errno;
        unlink(tmp);
        errno = err;
        return "writing";
    }
    if (rename(tmp, path) != 0) {
        int err = errno;
        unlink(tmp);
        errno = err;
        return "renaming it into place";
    }
    return NULL;
}

void tk_stats_write(void)
{
    if (!tk_stats_enabled())
        return;
    int saved = errno;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += TK_STATS_LOCK_WAIT_S;
    if (pthread_mutex_timedlock(&write_lock, &until) != 0) {
        errno = saved;
        return;
    }
    pid_t pid = getpid();
    char path[PATH_MAX];
    const char *failed;
    if (!expand_path(path, sizeof(path), pid)) {
        errno = ENAMETOOLONG;
        failed = "expanding %p";
        strcpy(path, path_template);
    } else {
        failed = write_file(path, pid);
    }
    if (!failed) {
        failure_logged = false;
    } else if (!failure_logged) {
        failure_logged = true;
        tk_log(TK_LOG_WARN, "TCPKEEP_STATS: cannot write %s: %s (%s failed); "
               "no more warnings until a write succeeds", path, strerror(errno), failed);
    }
    pthread_mutex_unlock(&write_lock);
    errno = saved;
}

void tk_stats_after_fork_child(void)
{
    /* The parent's writer may have held the lock at fork: no other thread
     * exists here, so a fresh lock is the right one. */
    write_lock = (pthread_mutex_t)PTHREAD_MUTEX_INITIALIZER;
    failure_logged = false; /* a different file (%p), a fresh start */
    /* The child's own counters; the table, and so tracked_now, is inherited. */
    atomic_store_explicit(&tk_stats.tracked_total, 0, memory_order_relaxed);
    atomic_store_explicit(&tk_stats.keepalive_set, 0, memory_order_relaxed);
    atomic_store_explicit(&tk_stats.option_errors, 0, memory_order_relaxed);
    for (int r = 0; r < TK_REASONS; r++) {
        atomic_store_explicit(&tk_stats.cuts[r], 0, memory_order_relaxed);
        atomic_store_explicit(&tk_stats.would_cut[r], 0, memory_order_relaxed);
    }
}

/* The last word at a normal exit; a process killed by a signal leaves the
 * last periodic file (no signal handler is installed, by design). */
/* Only a process that had a TCP socket writes one: the shell or the helper
 * programs a wrapper script runs under the same LD_PRELOAD would otherwise
 * each leave a file of zeros (or, without %p, write zeros over the file of
 * the process that matters). */
static bool had_sockets(void)
{
    uint64_t any = atomic_load(&tk_stats.tracked_now) | atomic_load(&tk_stats.tracked_total) |
                   atomic_load(&tk_stats.keepalive_set) | atomic_load(&tk_stats.option_errors);
    return any || tk_table_count() > 0;
}

__attribute__((destructor)) static void tk_stats_at_exit(void)
{
    if (had_sockets())
        tk_stats_write();
}
