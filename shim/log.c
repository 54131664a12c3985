/* Logging; see log.h. */
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "shim.h"
#include "table.h"

/* Our own file descriptor goes above the ones a program expects to get. */
#define TK_LOG_FD_MIN 100

static int log_fd = -1;         /* -1: off; 2: stderr; else our file */
static dev_t log_dev;           /* identity of our file, to notice a fd   */
static ino_t log_ino;           /* closed behind our back and reused      */
static enum tk_log_level log_level = TK_LOG_WARN;
static pid_t log_pid;

void tk_log_after_fork_child(void)
{
    log_pid = getpid();
}

int tk_log_enabled(enum tk_log_level level)
{
    return log_fd >= 0 && level <= log_level;
}

/* Raw write: never through our hooks, never to a socket we track. */
static void emit(int fd, const char *buf, size_t len)
{
    if (fd == 2 && tk_slot_get(2))
        return; /* the program reused fd 2 for a TCP connection */
    while (len > 0) {
        ssize_t n = syscall(SYS_write, fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        buf += n;
        len -= (size_t)n;
    }
}

static void vformat_emit(int fd, const char *fmt, va_list ap)
{
    char line[1024];
    int saved = errno;
    int n = snprintf(line, sizeof(line), "tcpkeep[%d]: ", (int)log_pid);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    if (m < 0)
        m = 0;
    size_t len = (size_t)n + ((size_t)m < sizeof(line) - (size_t)n - 1
                                  ? (size_t)m : sizeof(line) - (size_t)n - 2);
    line[len++] = '\n';
    emit(fd, line, len);
    errno = saved;
}

static int still_ours(void)
{
    struct stat st;
    int saved = errno;
    int ours = fstat(log_fd, &st) == 0 && st.st_dev == log_dev && st.st_ino == log_ino;
    errno = saved;
    return ours;
}

bool tk_log_owns(int fd)
{
    if (fd <= 2 || fd != log_fd)
        return false;
    if (still_ours())
        return true;
    log_fd = -1; /* the number was closed behind our back and reused */
    tk_set_private_fd(TK_PRIVATE_LOG, -1);
    return false;
}

void tk_log(enum tk_log_level level, const char *fmt, ...)
{
    if (!tk_log_enabled(level))
        return;
    if (log_fd > 2 && !tk_log_owns(log_fd))
        return; /* closed by a call we could not see: stop writing there */
    va_list ap;
    va_start(ap, fmt);
    vformat_emit(log_fd, fmt, ap);
    va_end(ap);
}

void tk_log_stderr(const char *fmt, ...)
{
    if (!log_pid)
        log_pid = getpid();
    va_list ap;
    va_start(ap, fmt);
    vformat_emit(2, fmt, ap);
    va_end(ap);
}

void tk_log_open(const char *dest, enum tk_log_level level)
{
    int saved = errno;
    log_pid = getpid();
    log_level = level;
    if (strcmp(dest, "off") == 0) {
        log_fd = -1;
    } else if (strcmp(dest, "stderr") == 0) {
        log_fd = 2;
    } else {
        int fd = open(dest, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY,
                      0644);
        if (fd < 0) {
            log_fd = 2;
            tk_log_stderr("TCPKEEP_LOG=\"%s\": cannot open: %s; logging to stderr",
                          dest, strerror(errno));
        } else {
            int high = (int)syscall(SYS_fcntl, fd, F_DUPFD_CLOEXEC, TK_LOG_FD_MIN);
            if (high >= 0) {
                syscall(SYS_close, fd);
                fd = high;
            }
            struct stat st;
            fstat(fd, &st);
            log_dev = st.st_dev;
            log_ino = st.st_ino;
            log_fd = fd;
            tk_set_private_fd(TK_PRIVATE_LOG, fd);
        }
    }
    errno = saved;
}
