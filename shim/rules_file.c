/* The rules file on disk: read at load, watched by the watchdog (rules.h).
 *
 * open() is called once at load and poll() only by the watchdog thread, so
 * the state below needs no lock. read and close go straight to the kernel:
 * inside the library those names are our own hooks. */
#include "rules.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "log.h"
#include "mem.h"

#define RULES_FILE_MAX (1024 * 1024)
#define MSG_MAX 512

/* Enough to tell one version of the file from another, whether it was
 * rewritten in place (size, mtime, ctime) or replaced by a rename (inode). */
struct file_identity {
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtim, ctim;
};

static void identity_of(const struct stat *st, struct file_identity *id)
{
    memset(id, 0, sizeof(*id));
    id->dev = st->st_dev;
    id->ino = st->st_ino;
    id->size = st->st_size;
    id->mtim = st->st_mtim;
    id->ctim = st->st_ctim;
}

static bool identity_equal(const struct file_identity *a, const struct file_identity *b)
{
    return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
           a->mtim.tv_sec == b->mtim.tv_sec && a->mtim.tv_nsec == b->mtim.tv_nsec &&
           a->ctim.tv_sec == b->ctim.tv_sec && a->ctim.tv_nsec == b->ctim.tv_nsec;
}

/* What was last looked at, so that each version is read, and warned
 * about, once. */
enum seen { SEEN_NOTHING, SEEN_VERSION, SEEN_ERROR };
static struct {
    bool watching;
    char path[4096];      /* as the user gave it, for messages */
    char open_path[4096]; /* absolute: the program may chdir later */
    struct tk_settings base;
    enum seen seen;
    struct file_identity version; /* SEEN_VERSION */
    int error;                    /* SEEN_ERROR: the errno warned about */
    bool settling;                /* a new version was seen once, not read yet */
    struct file_identity pending; /* its identity then */
} rf;

/* One attempt at reading and parsing the file. */
struct attempt {
    struct tk_rules *rules;       /* the parsed set, or NULL */
    bool have_version;            /* the file was opened: `version` is its identity */
    bool changed_while_read;      /* another version appeared during the read */
    struct file_identity version;
    int error;                    /* errno of a failed system call, else 0 */
    unsigned line;                /* with msg: the bad line, 0 = the whole file */
    char msg[MSG_MAX];
};

static void close_raw(int fd)
{
    syscall(SYS_close, fd);
}

/* Reads up to cap bytes; -1 with errno on failure. Bounded: each round
 * either moves data, ends, or is one of a few interruptions. */
static ssize_t read_all(int fd, char *buf, size_t cap)
{
    size_t got = 0;
    int interruptions = 0;
    while (got < cap) {
        ssize_t n = syscall(SYS_read, fd, buf + got, cap - got);
        if (n < 0 && errno == EINTR && ++interruptions < 16)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        got += (size_t)n;
    }
    return (ssize_t)got;
}

static void read_and_parse(struct attempt *a)
{
    memset(a, 0, sizeof(*a));
    /* O_NONBLOCK: a FIFO named by mistake must not stall the watchdog. */
    int fd = open(rf.open_path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        a->error = errno;
        return;
    }
    struct stat before, after;
    if (fstat(fd, &before) != 0) {
        a->error = errno;
        close_raw(fd);
        return;
    }
    a->have_version = true;
    identity_of(&before, &a->version);
    if (!S_ISREG(before.st_mode)) {
        snprintf(a->msg, sizeof(a->msg), "not a regular file");
        close_raw(fd);
        return;
    }
    if (before.st_size > RULES_FILE_MAX) {
        snprintf(a->msg, sizeof(a->msg), "larger than 1 MiB");
        close_raw(fd);
        return;
    }
    /* One byte more than allowed, to see a file that grew past it. */
    char *buf = tk_mem_alloc(RULES_FILE_MAX + 1);
    if (!buf) {
        snprintf(a->msg, sizeof(a->msg), "out of memory");
        close_raw(fd);
        return;
    }
    ssize_t len = read_all(fd, buf, RULES_FILE_MAX + 1);
    if (len < 0) {
        a->error = errno;
    } else if (len > RULES_FILE_MAX) {
        snprintf(a->msg, sizeof(a->msg), "larger than 1 MiB");
    } else {
        /* Rewritten in place while we read: what we have may be half of it. */
        struct file_identity now;
        if (fstat(fd, &after) == 0) {
            identity_of(&after, &now);
            a->changed_while_read = !identity_equal(&a->version, &now);
        }
        a->rules = tk_rules_parse(buf, (size_t)len, &rf.base, &a->line, a->msg, sizeof(a->msg));
    }
    tk_mem_free(buf, RULES_FILE_MAX + 1);
    close_raw(fd);
}

/* "FILE:LINE: MSG" or "FILE: REASON" of a failed attempt, into out. */
static void describe_failure(const struct attempt *a, char *out, size_t size)
{
    if (a->error) {
        char reason[128];
        snprintf(out, size, "%s: %s", rf.path, strerror_r(a->error, reason, sizeof(reason)));
    } else if (a->line) {
        snprintf(out, size, "%s:%u: %s", rf.path, a->line, a->msg);
    } else {
        snprintf(out, size, "%s: %s", rf.path, a->msg);
    }
}

/* Remembers what was looked at; true if it is news (not warned about yet). */
static bool remember(const struct attempt *a)
{
    if (a->have_version) {
        bool news = rf.seen != SEEN_VERSION || !identity_equal(&rf.version, &a->version);
        rf.seen = SEEN_VERSION;
        rf.version = a->version;
        return news;
    }
    bool news = rf.seen != SEEN_ERROR || rf.error != a->error;
    rf.seen = SEEN_ERROR;
    rf.error = a->error;
    return news;
}

/* A relative path made absolute against today's directory: daemons often
 * chdir("/") after the library has loaded. Left as given if that fails. */
static void anchor_path(const char *path, char *out, size_t size)
{
    char cwd[4096];
    strcpy(out, path); /* path is shorter than size */
    if (path[0] == '/' || !getcwd(cwd, sizeof(cwd)))
        return;
    size_t cwd_len = strlen(cwd), path_len = strlen(path);
    if (cwd_len + 1 + path_len >= size)
        return;
    memcpy(out, cwd, cwd_len);
    out[cwd_len] = '/';
    memcpy(out + cwd_len + 1, path, path_len + 1);
}

struct tk_rules *tk_rules_file_open(const char *path, const struct tk_settings *base)
{
    int saved = errno;
    memset(&rf, 0, sizeof(rf));
    if (!path || !path[0] || strlen(path) >= sizeof(rf.path)) {
        errno = saved;
        return NULL;
    }
    strcpy(rf.path, path);
    anchor_path(path, rf.open_path, sizeof(rf.open_path));
    rf.base = *base;
    rf.watching = true;

    struct attempt a;
    /* A few tries if the file is being rewritten just now. */
    for (int tries = 0; tries < 3; tries++) {
        read_and_parse(&a);
        if (!a.changed_while_read)
            break;
        if (tries < 2) {
            tk_rules_free(a.rules);
            a.rules = NULL;
        }
    }
    remember(&a);
    if (a.rules) {
        tk_log(TK_LOG_INFO, "%s: %u rules loaded", rf.path, a.rules->n);
    } else {
        char what[MSG_MAX + 4096 + 32];
        describe_failure(&a, what, sizeof(what));
        tk_log_stderr("%s; the rules file is ignored", what);
    }
    errno = saved;
    return a.rules;
}

struct tk_rules *tk_rules_file_poll(void)
{
    if (!rf.watching)
        return NULL;
    int saved = errno;
    struct stat st;
    struct attempt a;
    if (stat(rf.open_path, &st) == 0) {
        struct file_identity id;
        identity_of(&st, &id);
        if (rf.seen == SEEN_VERSION && identity_equal(&rf.version, &id)) {
            rf.settling = false;
            errno = saved;
            return NULL; /* the usual case: nothing changed */
        }
        /* A file rewritten in place is empty or half-written for a moment:
         * read a new version only once it looks the same at two polls. */
        if (!rf.settling || !identity_equal(&rf.pending, &id)) {
            rf.settling = true;
            rf.pending = id;
            errno = saved;
            return NULL;
        }
        rf.settling = false;
        read_and_parse(&a);
        if (a.changed_while_read) {
            /* Still being written: look again at the next poll. */
            tk_rules_free(a.rules);
            errno = saved;
            return NULL;
        }
    } else {
        memset(&a, 0, sizeof(a));
        a.error = errno;
    }

    bool news = remember(&a);
    if (a.rules) {
        if (news) {
            tk_log(TK_LOG_INFO, "%s: %u rules loaded", rf.path, a.rules->n);
        } else { /* the version in force, seen again between stat and open */
            tk_rules_free(a.rules);
            a.rules = NULL;
        }
    } else if (news) {
        char what[MSG_MAX + 4096 + 32];
        describe_failure(&a, what, sizeof(what));
        tk_log(TK_LOG_WARN, "%s; the previous rules stay in force", what);
    }
    errno = saved;
    return a.rules;
}

bool tk_rules_file_settling(void)
{
    return rf.settling;
}
