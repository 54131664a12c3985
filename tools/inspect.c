/* `tcpkeep inspect PID [--json]`: the TCP sockets of a running process,
 * with the keepalive options the kernel holds for each, their idle times,
 * and whether libtcpkeep is loaded in the process.
 *
 * Sockets: the inodes behind /proc/PID/fd/N, matched against one socket
 * diagnostics dump of the machine (sock_diag.c) for addresses, state and
 * tcp_info. Options: a duplicate of each descriptor through pidfd_getfd,
 * then getsockopt. A socket the dump did not show (another network
 * namespace we cannot enter, or not yet connected) is read through that
 * duplicate as well. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "tool.h"

#define UNKNOWN (-1)

struct sock_row {
    int fd;
    uint64_t inode;
    bool tcp;              /* known to be a TCP socket: listed */
    bool have_addrs;       /* family, addresses, state below are valid */
    uint8_t family;
    uint8_t state;
    uint16_t local_port, peer_port;
    uint8_t local_addr[16], peer_addr[16];
    bool have_times;
    double last_recv_s, last_sent_s;
    /* UNKNOWN when they could not be read */
    int keepalive, keepidle, keepintvl, keepcnt;
    long long user_timeout_ms;
};

struct row_list {
    struct sock_row *rows;
    size_t n, cap;
};

struct target {
    int pid;
    char comm[64];
    int loaded;            /* 1, 0, UNKNOWN */
    char lib_path[PATH_MAX];
    char maps_error[128];
    char netns_error[128]; /* why we could not enter its network namespace */
    double uptime_ms;      /* a tcp_info time beyond this is not a real one */
};

/* ---- the descriptors ---------------------------------------------------- */

static bool parse_socket_link(const char *link, uint64_t *inode)
{
    const char *prefix = "socket:[";
    size_t plen = strlen(prefix);
    if (strncmp(link, prefix, plen) != 0)
        return false;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(link + plen, &end, 10);
    if (errno || end == link + plen || strcmp(end, "]") != 0)
        return false;
    *inode = v;
    return true;
}

static bool parse_fd_name(const char *name, int *fd)
{
    long v = 0;
    if (!*name)
        return false;
    for (const char *c = name; *c; c++) {
        if (*c < '0' || *c > '9' || v > INT_MAX / 10)
            return false;
        v = v * 10 + (*c - '0');
    }
    if (v > INT_MAX)
        return false;
    *fd = (int)v;
    return true;
}

static bool push_row(struct row_list *l, const struct sock_row *r)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        struct sock_row *rows = realloc(l->rows, cap * sizeof(*rows));
        if (!rows)
            return false;
        l->rows = rows;
        l->cap = cap;
    }
    l->rows[l->n++] = *r;
    return true;
}

/* Every socket descriptor of the process; -errno on failure. */
static int list_sockets(int pid, struct row_list *out)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/fd", pid);
    int dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return -errno;
    DIR *dir = fdopendir(dfd);
    if (!dir) {
        int err = errno;
        close(dfd);
        return -err;
    }
    int rc = 0;
    struct dirent *e;
    /* readdir ends: the directory holds the process's descriptors */
    while ((e = readdir(dir)) != NULL) {
        int fd;
        if (!parse_fd_name(e->d_name, &fd))
            continue;
        char link[64];
        ssize_t n = readlinkat(dfd, e->d_name, link, sizeof(link) - 1);
        if (n < 0)
            continue; /* closed meanwhile */
        link[n] = '\0';
        struct sock_row r;
        memset(&r, 0, sizeof(r));
        if (!parse_socket_link(link, &r.inode))
            continue;
        r.fd = fd;
        r.keepalive = r.keepidle = r.keepintvl = r.keepcnt = UNKNOWN;
        r.user_timeout_ms = UNKNOWN;
        if (!push_row(out, &r)) {
            rc = -ENOMEM;
            break;
        }
    }
    closedir(dir);
    return rc;
}

static int by_inode(const void *a, const void *b)
{
    const struct sock_row *x = a, *y = b;
    if (x->inode != y->inode)
        return x->inode < y->inode ? -1 : 1;
    return x->fd < y->fd ? -1 : x->fd > y->fd;
}

static int by_fd(const void *a, const void *b)
{
    const struct sock_row *x = a, *y = b;
    return x->fd < y->fd ? -1 : x->fd > y->fd;
}

/* ---- the dump ---------------------------------------------------------- */

struct match_ctx {
    struct row_list *list; /* sorted by inode */
    double uptime_ms;
};

static void set_times(struct sock_row *r, uint32_t recv_ms, uint32_t sent_ms, double uptime_ms)
{
    /* A listener has no data times, and a socket that never connected has
     * times counted from the kernel's epoch: beyond the uptime, not real. */
    if (r->state == TCP_STATE_LISTEN || r->state == TCP_STATE_CLOSE ||
        r->state == TCP_STATE_SYN_SENT)
        return;
    if (uptime_ms > 0 && (recv_ms > uptime_ms || sent_ms > uptime_ms))
        return;
    r->have_times = true;
    r->last_recv_s = recv_ms / 1000.0;
    r->last_sent_s = sent_ms / 1000.0;
}

static void on_diag_sock(const struct diag_sock *s, void *ctx_)
{
    struct match_ctx *ctx = ctx_;
    struct row_list *l = ctx->list;
    /* binary search for the first row with this inode */
    size_t lo = 0, hi = l->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (l->rows[mid].inode < s->inode)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (size_t i = lo; i < l->n && l->rows[i].inode == s->inode; i++) {
        struct sock_row *r = &l->rows[i]; /* every descriptor of a dup'ed socket */
        r->tcp = true;
        r->have_addrs = true;
        r->family = s->family;
        r->state = s->state;
        r->local_port = s->local_port;
        r->peer_port = s->peer_port;
        memcpy(r->local_addr, s->local_addr, 16);
        memcpy(r->peer_addr, s->peer_addr, 16);
        if (s->have_info)
            set_times(r, s->last_data_recv_ms, s->last_data_sent_ms, ctx->uptime_ms);
    }
}

/* True if the process lives in another network namespace than ours. */
static bool other_netns(int pid)
{
    char path[64];
    struct stat mine, theirs;
    snprintf(path, sizeof(path), "/proc/%d/ns/net", pid);
    if (stat("/proc/self/ns/net", &mine) != 0 || stat(path, &theirs) != 0)
        return false; /* cannot tell: the dump of ours, then the fallback */
    return mine.st_ino != theirs.st_ino || mine.st_dev != theirs.st_dev;
}

/* Runs the dump in the process's network namespace if we can enter it;
 * sockets the dump does not show are read one by one later. */
static void match_with_dump(struct target *t, struct row_list *l)
{
    if (other_netns(t->pid)) {
        char path[64];
        snprintf(path, sizeof(path), "/proc/%d/ns/net", t->pid);
        int ns = open(path, O_RDONLY | O_CLOEXEC);
        int err = ns < 0 ? errno : 0;
        if (ns >= 0 && setns(ns, CLONE_NEWNET) != 0)
            err = errno;
        if (ns >= 0)
            close(ns);
        if (err) {
            /* Each socket is then read through its duplicate: nothing is lost
             * unless that is refused too (read_options says so then). */
            snprintf(t->netns_error, sizeof(t->netns_error), "%s", strerror(err));
            return;
        }
    }
    struct match_ctx ctx = {.list = l, .uptime_ms = t->uptime_ms};
    int rc = sock_diag_dump_tcp(on_diag_sock, &ctx);
    if (rc < 0)
        tool_error("inspect", "note: the socket diagnostics dump failed (%s): each socket "
                   "is read through pidfd_getfd instead", strerror(-rc));
}

/* ---- each socket through its duplicate ---------------------------------- */

static int get_int_opt(int fd, int level, int name)
{
    int v = 0;
    socklen_t len = sizeof(v);
    if (getsockopt(fd, level, name, &v, &len) != 0 || len != sizeof(v))
        return UNKNOWN;
    return v;
}

static void copy_sockaddr(const struct sockaddr_storage *ss, uint8_t addr[16], uint16_t *port)
{
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
        memcpy(addr, &in->sin_addr, 4);
        *port = ntohs(in->sin_port);
    } else {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
        memcpy(addr, &in6->sin6_addr, 16);
        *port = ntohs(in6->sin6_port);
    }
}

/* What the dump could not give, from the socket itself. */
static void read_from_socket(struct sock_row *r, int sock, double uptime_ms)
{
    struct sockaddr_storage local, peer;
    socklen_t llen = sizeof(local), plen = sizeof(peer);
    memset(&local, 0, sizeof(local));
    memset(&peer, 0, sizeof(peer));
    if (getsockname(sock, (struct sockaddr *)&local, &llen) != 0)
        return;
    if (getpeername(sock, (struct sockaddr *)&peer, &plen) != 0)
        peer.ss_family = local.ss_family; /* not connected: the zero address */
    struct tcp_info info;
    socklen_t ilen = sizeof(info);
    memset(&info, 0, sizeof(info));
    if (getsockopt(sock, IPPROTO_TCP, TCP_INFO, &info, &ilen) != 0)
        return;
    r->family = (uint8_t)local.ss_family;
    copy_sockaddr(&local, r->local_addr, &r->local_port);
    copy_sockaddr(&peer, r->peer_addr, &r->peer_port);
    r->state = info.tcpi_state;
    r->have_addrs = true;
    if (ilen >= offsetof(struct tcp_info, tcpi_last_data_recv) + sizeof(uint32_t))
        set_times(r, info.tcpi_last_data_recv, info.tcpi_last_data_sent, uptime_ms);
}

/* True if the socket is TCP, by the name sockfs gives its protocol ("TCP",
 * "TCPv6"); this needs no more access than reading the fd link did. */
static int sock_is_tcp_by_name(int pid, int fd)
{
    char path[64], name[32];
    snprintf(path, sizeof(path), "/proc/%d/fd/%d", pid, fd);
    ssize_t n = getxattr(path, "system.sockprotoname", name, sizeof(name) - 1);
    if (n <= 0)
        return UNKNOWN;
    name[n] = '\0';
    return strcmp(name, "TCP") == 0 || strcmp(name, "TCPv6") == 0;
}

static int sock_is_tcp_by_options(int sock)
{
    int domain = get_int_opt(sock, SOL_SOCKET, SO_DOMAIN);
    int proto = get_int_opt(sock, SOL_SOCKET, SO_PROTOCOL);
    if (domain == UNKNOWN || proto == UNKNOWN)
        return UNKNOWN;
    return (domain == AF_INET || domain == AF_INET6) && proto == IPPROTO_TCP;
}

static int sys_pidfd_open(int pid)
{
#ifdef SYS_pidfd_open
    return (int)syscall(SYS_pidfd_open, pid, 0);
#else
    (void)pid;
    errno = ENOSYS;
    return -1;
#endif
}

static int sys_pidfd_getfd(int pidfd, int fd)
{
#ifdef SYS_pidfd_getfd
    return (int)syscall(SYS_pidfd_getfd, pidfd, fd, 0);
#else
    (void)pidfd;
    (void)fd;
    errno = ENOSYS;
    return -1;
#endif
}

/* The process a thread id belongs to: pidfd_open takes only that. */
static int thread_group_of(int pid)
{
    char path[64], line[128];
    int tgid = pid;
    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return pid;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "Tgid: %d", &tgid) == 1)
            break;
    fclose(f);
    return tgid > 0 ? tgid : pid;
}

static void read_options(struct target *t, struct row_list *l)
{
    int pidfd = sys_pidfd_open(thread_group_of(t->pid));
    int refused = pidfd < 0 ? errno : 0;
    for (size_t i = 0; i < l->n; i++) {
        struct sock_row *r = &l->rows[i];
        if (!r->tcp) {
            /* Not in the dump: a TCP socket elsewhere, or not TCP at all. */
            int tcp = sock_is_tcp_by_name(t->pid, r->fd);
            if (tcp == 0)
                continue;
            if (tcp == 1)
                r->tcp = true;
        }
        if (refused)
            continue;
        int sock = sys_pidfd_getfd(pidfd, r->fd);
        if (sock < 0) {
            if (errno != EBADF)
                refused = errno; /* the same answer for every other one */
            continue;            /* EBADF: closed meanwhile */
        }
        struct stat st;
        /* the number may have been reused since we read its link */
        if (fstat(sock, &st) == 0 && (uint64_t)st.st_ino == r->inode) {
            if (!r->tcp && sock_is_tcp_by_options(sock) == 1)
                r->tcp = true;
            if (r->tcp) {
                if (!r->have_addrs)
                    read_from_socket(r, sock, t->uptime_ms);
                r->keepalive = get_int_opt(sock, SOL_SOCKET, SO_KEEPALIVE);
                r->keepidle = get_int_opt(sock, IPPROTO_TCP, TCP_KEEPIDLE);
                r->keepintvl = get_int_opt(sock, IPPROTO_TCP, TCP_KEEPINTVL);
                r->keepcnt = get_int_opt(sock, IPPROTO_TCP, TCP_KEEPCNT);
                int ut = get_int_opt(sock, IPPROTO_TCP, TCP_USER_TIMEOUT);
                r->user_timeout_ms = ut; /* UNKNOWN stays UNKNOWN */
                if (r->keepalive != UNKNOWN)
                    r->keepalive = r->keepalive != 0;
            }
        }
        close(sock);
    }
    if (pidfd >= 0)
        close(pidfd);
    bool any_tcp = false;
    for (size_t i = 0; i < l->n && !any_tcp; i++)
        any_tcp = l->rows[i].tcp;
    if (refused && any_tcp) {
        const char *why = refused == ENOSYS
            ? "this kernel has no pidfd_getfd (Linux 5.6 or later needed)"
            : refused == EPERM || refused == EACCES
            ? "pidfd_getfd needs ptrace access to the process: run this as root, "
              "or as its user where kernel.yama.ptrace_scope allows it"
            : "pidfd_open or pidfd_getfd failed";
        tool_error("inspect", "note: the socket options of pid %d are shown as \"?\": %s (%s)%s%s%s",
                   t->pid, strerror(refused), why,
                   t->netns_error[0] ? "; it is in another network namespace, which we cannot "
                                       "enter (" : "",
                   t->netns_error, t->netns_error[0] ? "), so its addresses are unknown too" : "");
    }
}

/* ---- the process --------------------------------------------------------- */

static void read_comm(struct target *t)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/comm", t->pid);
    strcpy(t->comm, "?");
    FILE *f = fopen(path, "re");
    if (!f)
        return;
    if (fgets(t->comm, sizeof(t->comm), f)) {
        t->comm[strcspn(t->comm, "\n")] = '\0';
        for (char *c = t->comm; *c; c++)
            if ((unsigned char)*c < 0x20 || (unsigned char)*c >= 0x7f || *c == '"' || *c == '\\')
                *c = '?'; /* for the terminal, and the JSON needs no escapes */
    }
    fclose(f);
}

/* libtcpkeep is loaded if a mapping's file name starts with "libtcpkeep". */
static void read_maps(struct target *t)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/maps", t->pid);
    t->loaded = UNKNOWN;
    FILE *f = fopen(path, "re");
    if (!f) {
        snprintf(t->maps_error, sizeof(t->maps_error), "%s", strerror(errno));
        return;
    }
    t->loaded = 0;
    char *line = NULL;
    size_t cap = 0;
    /* bounded by the file, which ends */
    while (getline(&line, &cap, f) > 0) {
        char *file = strchr(line, '/'); /* the fields before the path have no '/' */
        if (!file)
            continue;
        file[strcspn(file, "\n")] = '\0';
        const char *base = strrchr(file, '/') + 1;
        if (strncmp(base, "libtcpkeep", strlen("libtcpkeep")) == 0) {
            t->loaded = 1;
            snprintf(t->lib_path, sizeof(t->lib_path), "%s", file);
            break;
        }
    }
    free(line);
    fclose(f);
}

static double read_uptime_ms(void)
{
    double up = 0;
    FILE *f = fopen("/proc/uptime", "re");
    if (f) {
        if (fscanf(f, "%lf", &up) != 1)
            up = 0;
        fclose(f);
    }
    return up * 1000.0;
}

/* ---- output ---------------------------------------------------------------- */

enum { COL_FD, COL_LOCAL, COL_PEER, COL_STATE, COL_KEEPALIVE, COL_IDLE, COL_INTVL, COL_CNT,
       COL_USER_TIMEOUT, COL_LAST_RECV, COL_LAST_SENT, COLS };
static const char *const col_title[COLS] = {
    "FD", "LOCAL", "PEER", "STATE", "KEEPALIVE", "IDLE", "INTVL", "CNT", "USER-TIMEOUT",
    "LAST-RECV", "LAST-SENT",
};
#define CELL 64

static void endpoints(const struct sock_row *r, char *local, char *peer, size_t size)
{
    bool listener = r->state == TCP_STATE_LISTEN;
    format_endpoint(local, size, r->family, r->local_addr, r->local_port, false);
    format_endpoint(peer, size, r->family, r->peer_addr, r->peer_port, listener);
}

static void int_cell(char *out, int v, const char *unit)
{
    if (v == UNKNOWN)
        snprintf(out, CELL, "?");
    else
        snprintf(out, CELL, "%d%s", v, unit);
}

static void row_cells(const struct sock_row *r, char cells[COLS][CELL])
{
    snprintf(cells[COL_FD], CELL, "%d", r->fd);
    if (r->have_addrs) {
        endpoints(r, cells[COL_LOCAL], cells[COL_PEER], CELL);
        snprintf(cells[COL_STATE], CELL, "%s", tcp_state_name(r->state));
    } else {
        strcpy(cells[COL_LOCAL], "?");
        strcpy(cells[COL_PEER], "?");
        strcpy(cells[COL_STATE], "?");
    }
    snprintf(cells[COL_KEEPALIVE], CELL, "%s",
             r->keepalive == UNKNOWN ? "?" : r->keepalive ? "on" : "off");
    int_cell(cells[COL_IDLE], r->keepidle, "s");
    int_cell(cells[COL_INTVL], r->keepintvl, "s");
    int_cell(cells[COL_CNT], r->keepcnt, "");
    if (r->user_timeout_ms == UNKNOWN)
        strcpy(cells[COL_USER_TIMEOUT], "?");
    else
        snprintf(cells[COL_USER_TIMEOUT], CELL, "%lldms", r->user_timeout_ms);
    if (r->have_times) {
        snprintf(cells[COL_LAST_RECV], CELL, "%.3fs", r->last_recv_s);
        snprintf(cells[COL_LAST_SENT], CELL, "%.3fs", r->last_sent_s);
    } else {
        strcpy(cells[COL_LAST_RECV], "-");
        strcpy(cells[COL_LAST_SENT], "-");
    }
}

static void print_cell(const char *text, size_t width, bool last)
{
    if (last)
        printf("%s\n", text);
    else
        printf("%-*s  ", (int)width, text);
}

static void print_text(const struct target *t, const struct row_list *l)
{
    printf("pid %d (%s): ", t->pid, t->comm);
    if (t->loaded == 1)
        printf("libtcpkeep loaded (%s)\n", t->lib_path);
    else if (t->loaded == 0)
        printf("libtcpkeep not loaded\n");
    else
        printf("libtcpkeep unknown (cannot read /proc/%d/maps: %s)\n", t->pid, t->maps_error);

    size_t width[COLS];
    char cells[COLS][CELL];
    for (int c = 0; c < COLS; c++)
        width[c] = strlen(col_title[c]);
    for (size_t i = 0; i < l->n; i++) {
        if (!l->rows[i].tcp)
            continue;
        row_cells(&l->rows[i], cells);
        for (int c = 0; c < COLS; c++)
            if (strlen(cells[c]) > width[c])
                width[c] = strlen(cells[c]);
    }
    for (int c = 0; c < COLS; c++)
        print_cell(col_title[c], width[c], c + 1 == COLS);
    for (size_t i = 0; i < l->n; i++) {
        if (!l->rows[i].tcp)
            continue;
        row_cells(&l->rows[i], cells);
        for (int c = 0; c < COLS; c++)
            print_cell(cells[c], width[c], c + 1 == COLS);
    }
}

static void json_int(const char *key, long long v, bool known)
{
    if (known)
        printf(",\"%s\":%lld", key, v);
    else
        printf(",\"%s\":null", key);
}

static void print_json(const struct target *t, const struct row_list *l)
{
    bool first = true;
    printf("[");
    for (size_t i = 0; i < l->n; i++) {
        const struct sock_row *r = &l->rows[i];
        if (!r->tcp)
            continue;
        printf("%s\n  {\"fd\":%d", first ? "" : ",", r->fd);
        first = false;
        if (r->have_addrs) {
            char local[CELL], peer[CELL];
            endpoints(r, local, peer, sizeof(local));
            printf(",\"local\":\"%s\",\"peer\":\"%s\",\"state\":\"%s\"", local, peer,
                   tcp_state_name(r->state));
        } else {
            printf(",\"local\":null,\"peer\":null,\"state\":null");
        }
        if (r->keepalive == UNKNOWN)
            printf(",\"keepalive\":null");
        else
            printf(",\"keepalive\":%s", r->keepalive ? "true" : "false");
        json_int("keepidle", r->keepidle, r->keepidle != UNKNOWN);
        json_int("keepintvl", r->keepintvl, r->keepintvl != UNKNOWN);
        json_int("keepcnt", r->keepcnt, r->keepcnt != UNKNOWN);
        json_int("user_timeout_ms", r->user_timeout_ms, r->user_timeout_ms != UNKNOWN);
        if (r->have_times)
            printf(",\"last_data_recv_s\":%.3f,\"last_data_sent_s\":%.3f", r->last_recv_s,
                   r->last_sent_s);
        else
            printf(",\"last_data_recv_s\":null,\"last_data_sent_s\":null");
        printf(",\"libtcpkeep\":%s}",
               t->loaded == UNKNOWN ? "null" : t->loaded ? "true" : "false");
    }
    printf(first ? "]\n" : "\n]\n");
}

/* ---- the command ---------------------------------------------------------- */

static bool parse_pid(const char *s, int *pid)
{
    long v = 0;
    if (!*s || strlen(s) > 10)
        return false;
    for (const char *c = s; *c; c++) {
        if (*c < '0' || *c > '9')
            return false;
        v = v * 10 + (*c - '0');
    }
    if (v <= 0 || v > INT_MAX)
        return false;
    *pid = (int)v;
    return true;
}

static bool process_exists(int pid)
{
    char path[64];
    struct stat st;
    snprintf(path, sizeof(path), "/proc/%d", pid);
    return stat(path, &st) == 0;
}

static const char inspect_help[] =
    INSPECT_USAGE "\n\n"
    "Lists the TCP sockets of process PID: descriptor, local and peer address,\n"
    "state, the keepalive options the kernel holds for each (SO_KEEPALIVE,\n"
    "TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT, TCP_USER_TIMEOUT), the seconds\n"
    "since data was last received and sent, and whether libtcpkeep is loaded in\n"
    "the process. --json prints a JSON array, one object per socket, with null\n"
    "for what could not be read. Reading the options needs ptrace access to the\n"
    "process (your own process, or root); without it they show as \"?\".\n";

int cmd_inspect(int argc, char **argv)
{
    bool json = false;
    const char *pid_arg = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(inspect_help, stdout);
            return TOOL_OK;
        }
        if (strcmp(argv[i], "--json") == 0)
            json = true;
        else if (argv[i][0] == '-' && argv[i][1] != '\0')
            return tool_usage_error("inspect", INSPECT_USAGE, "unknown option %s", argv[i]);
        else if (pid_arg)
            return tool_usage_error("inspect", INSPECT_USAGE, "one PID only");
        else
            pid_arg = argv[i];
    }
    struct target t;
    memset(&t, 0, sizeof(t));
    if (!pid_arg)
        return tool_usage_error("inspect", INSPECT_USAGE, "no PID given");
    if (!parse_pid(pid_arg, &t.pid))
        return tool_usage_error("inspect", INSPECT_USAGE, "\"%s\" is not a process id",
                                pid_arg);
    if (!process_exists(t.pid)) {
        tool_error("inspect", "no process with pid %d", t.pid);
        return TOOL_FAILED;
    }

    struct row_list l = {0};
    int rc = list_sockets(t.pid, &l);
    if (rc == -ENOENT || rc == -ESRCH) {
        tool_error("inspect", "no process with pid %d", t.pid);
        return TOOL_FAILED;
    }
    if (rc < 0) {
        bool denied = rc == -EACCES || rc == -EPERM;
        tool_error("inspect", "cannot read the descriptors of pid %d: %s%s", t.pid,
                   strerror(-rc), denied ? " (run it as the process's user or as root)" : "");
        free(l.rows);
        return TOOL_FAILED;
    }
    read_comm(&t);
    read_maps(&t);
    t.uptime_ms = read_uptime_ms();

    qsort(l.rows, l.n, sizeof(*l.rows), by_inode);
    match_with_dump(&t, &l);
    qsort(l.rows, l.n, sizeof(*l.rows), by_fd);
    read_options(&t, &l);

    if (json)
        print_json(&t, &l);
    else
        print_text(&t, &l);
    free(l.rows);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        tool_error("inspect", "writing the output: %s", strerror(errno));
        return TOOL_FAILED;
    }
    return TOOL_OK;
}
