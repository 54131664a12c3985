"""Security: in a set-user-ID process the configuration comes from
secure_getenv (so nobody can make a privileged program append to a file of
their choosing through TCPKEEP_LOG), and the log file is opened
O_APPEND|O_CLOEXEC|O_NOFOLLOW (a symlink is not followed, appends never
truncate, an exec'd program does not inherit the descriptor).

The set-user-ID test needs root: ld.so preloads into a set-user-ID program
only a library named without a slash, found in a standard directory and
itself set-user-ID (ld.so(8), "secure-execution mode"), so the test puts a
set-user-ID copy of the library under a unique name into the system library
directory for the few seconds it runs, and removes it in `finally`. It also
tries the other way into a set-user-ID process, /etc/ld.so.preload, by an
overlay mounted on /etc in a private mount namespace (nothing outside the
test sees it)."""
import os
import secrets
import shutil
import subprocess

from helpers import EchoServer, Skip, check, compile_c, lib, run, tmpdir, which
from lifecycle_util import fields

PROBE = r"""
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/* Every open descriptor: number, target, and the open flags (octal, from
 * /proc/self/fdinfo). */
static void list_fds(const char *who)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    int self = d ? dirfd(d) : -1;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.' || atoi(e->d_name) == self)
            continue;
        char path[64], target[512] = "", info[64], line[128];
        unsigned flags = 0;
        snprintf(path, sizeof(path), "/proc/self/fd/%s", e->d_name);
        ssize_t n = readlink(path, target, sizeof(target) - 1);
        target[n > 0 ? n : 0] = 0;
        snprintf(info, sizeof(info), "/proc/self/fdinfo/%s", e->d_name);
        FILE *f = fopen(info, "r");
        while (f && fgets(line, sizeof(line), f))
            sscanf(line, "flags: %o", &flags);
        if (f)
            fclose(f);
        printf("%s fd=%s flags=%o target=%s\n", who, e->d_name, flags, target);
    }
    if (d)
        closedir(d);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    if (strcmp(argv[1], "listfds") == 0) {
        list_fds("child");
        return 0;
    }
    if (strcmp(argv[1], "exec") == 0) {
        /* The parent's descriptors, then an exec'd program's, made without
         * the preload so that it has no log of its own. */
        list_fds("parent");
        char *env[256];
        int n = 0;
        for (char **e = environ; *e && n < 255; e++)
            if (strncmp(*e, "LD_PRELOAD=", 11) != 0)
                env[n++] = *e;
        env[n] = NULL;
        pid_t pid = fork();
        if (pid == 0) {
            char *args[] = { argv[0], "listfds", NULL };
            execve(argv[0], args, env);
            _exit(127);
        }
        int st;
        waitpid(pid, &st, 0);
        printf("child_status=%d\n", st);
        return 0;
    }
    /* probe PORT: who am I, is the library here, what did it configure? */
    char line[512];
    int loaded = 0;
    FILE *m = fopen("/proc/self/maps", "r");
    while (m && fgets(line, sizeof(line), m))
        if (strstr(line, "libtcpkeep") && strstr(line, ".so"))
            loaded = 1;
    if (m)
        fclose(m);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[2])) };
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        printf("connect failed: %s\n", strerror(errno));
        return 1;
    }
    int ka = -1, idle = -1;
    socklen_t l = sizeof(ka);
    getsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &ka, &l);
    l = sizeof(idle);
    getsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, &l);
    struct pollfd p = { fd, POLLIN, 0 };
    char c;
    int cut = poll(&p, 1, 800) > 0 && read(fd, &c, 1) <= 0;
    printf("secure=%lu uid=%d euid=%d loaded=%d keepalive=%d keepidle=%d cut=%d\n",
           getauxval(AT_SECURE), (int)getuid(), (int)geteuid(), loaded, ka, idle, cut);
    return 0;
}
"""

NOBODY = 65534
ENV = {"TCPKEEP_LOG_LEVEL": "debug", "TCPKEEP_IDLE_TIMEOUT": "300ms", "TCPKEEP_KEEPIDLE": "77"}


def _probe():
    prog = compile_c(PROBE, "probe")
    os.chmod(os.path.dirname(prog), 0o755)     # mkdtemp made it 0700
    return prog


def _as_nobody(argv, env):
    """argv as uid/gid 65534 (no groups), with exactly `env` (and PATH)."""
    envs = ["%s=%s" % kv for kv in sorted(env.items())]
    return ["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups", "--",
            "env", "-i", "PATH=/usr/bin:/bin"] + envs + list(argv)


def _system_libdir():
    """The standard directory ld.so searches first on this system."""
    try:
        arch = subprocess.run(["cc", "-print-multiarch"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except OSError:
        arch = ""
    for d in (["/usr/lib/" + arch, "/lib/" + arch] if arch else []) + ["/usr/lib64", "/usr/lib"]:
        if os.path.isdir(d) and not os.path.islink(d):
            return d
    raise Skip("no standard library directory found")


def _kernel_keepidle():
    with open("/proc/sys/net/ipv4/tcp_keepalive_time") as f:
        return int(f.read())


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None


def _run_probe(argv, what, limit=15):
    rc, out, err = run(argv, shim=False, limit=limit)
    f = fields(out)
    check(rc == 0 and "secure" in f, "%s: status %s, stdout %r, stderr %r"
          % (what, rc, out[-300:], err[-300:]))
    return f, err


def test_security_setuid_ignores_environment():
    """A set-user-ID-root program run by uid 65534 with LD_PRELOAD naming a
    set-user-ID copy of the library in the system directory (the only way
    ld.so preloads into it): the library is loaded (keepalive on) but every
    TCPKEEP_* variable is ignored: TCPKEEP_LOG=<new file> is not created,
    TCPKEEP_LOG=<root's file> is not appended to, no idle cut, kernel's
    keepidle. The same program without the set-user-ID bit, same user and
    environment: the file is created, keepidle 77, idle cut. Then the same
    through /etc/ld.so.preload (an overlay in a private mount namespace)."""
    if os.geteuid() != 0:
        raise Skip("needs root: to make a set-user-ID-root program and put a set-user-ID "
                   "library in the system library directory, which is what ld.so requires "
                   "to preload into a set-user-ID program")
    if not which("setpriv"):
        raise Skip("setpriv (util-linux) is not installed")
    probe = _probe()
    d = os.path.dirname(probe)
    suid = os.path.join(d, "probe_suid")
    shutil.copy(probe, suid)
    os.chown(suid, 0, 0)
    os.chmod(suid, 0o4755)
    logdir = tmpdir()
    os.chmod(logdir, 0o777)                       # the control (uid 65534) may create files
    rootfile = os.path.join(d, "root-only.log")   # d is 0755: root's file, 0644
    with open(rootfile, "w") as fh:
        fh.write("ROOT ONLY\n")
    os.chmod(rootfile, 0o644)
    before = os.stat(rootfile)
    echo = EchoServer()
    name = "libtcpkeep-it-%d-%s.so" % (os.getpid(), secrets.token_hex(4))
    installed = os.path.join(_system_libdir(), name)
    msgs = []
    try:
        shutil.copy(lib(), installed)
        os.chown(installed, 0, 0)
        os.chmod(installed, 0o4755)
        port = str(echo.port)
        keepidle0 = _kernel_keepidle()

        # The control: not set-user-ID, same user, same environment.
        plain_log = os.path.join(logdir, "plain.log")
        f, err = _run_probe(_as_nobody([probe, "probe", port],
                                       dict(ENV, LD_PRELOAD=name, TCPKEEP_LOG=plain_log)),
                            "control (not set-user-ID)")
        check(f["secure"] == "0" and f["loaded"] == "1",
              "control: the library was not preloaded by name from %s: %r" % (installed, f))
        content = _read(plain_log)
        check(content is not None and "loaded" in content,
              "control: without the set-user-ID bit TCPKEEP_LOG=%s should be created with a "
              "debug line, found %r (stderr %r)" % (plain_log, content, err[-300:]))
        check(f["keepidle"] == "77" and f["cut"] == "1",
              "control: the environment was not applied: %r" % f)
        msgs.append("not set-user-ID: log created, keepidle 77, idle cut")

        # Set-user-ID: a new file, then root's file.
        for target, what in ((os.path.join(logdir, "suid.log"), "a new file"),
                             (rootfile, "root's existing file")):
            f, err = _run_probe(_as_nobody([suid, "probe", port],
                                           dict(ENV, LD_PRELOAD=name, TCPKEEP_LOG=target)),
                                "set-user-ID probe")
            if f["euid"] != "0":
                raise Skip("the set-user-ID bit is not honoured here (nosuid mount or "
                           "no_new_privs): %r" % f)
            check(f["secure"] == "1", "set-user-ID: AT_SECURE is %s" % f["secure"])
            check(f["loaded"] == "1", "set-user-ID: the set-user-ID library %s in the system "
                  "directory was not preloaded, so the test proves nothing: %r"
                  % (installed, f))
            if target == rootfile:
                now = os.stat(rootfile)
                check(_read(rootfile) == "ROOT ONLY\n" and now.st_size == before.st_size
                      and now.st_mtime_ns == before.st_mtime_ns,
                      "set-user-ID: TCPKEEP_LOG made the program append to root's file %s: "
                      "%r" % (rootfile, _read(rootfile)))
            else:
                check(not os.path.lexists(target),
                      "set-user-ID: TCPKEEP_LOG made the program create %s: %r"
                      % (target, _read(target)))
            check(f["keepalive"] == "1" and f["keepidle"] == str(keepidle0) and f["cut"] == "0",
                  "set-user-ID: the TCPKEEP_* environment was applied (keepidle %s, idle cut "
                  "%s; expected the kernel's %d and no cut): %r"
                  % (f["keepidle"], f["cut"], keepidle0, f))
            check("tcpkeep" not in err, "set-user-ID: stderr %r" % err[-300:])
            msgs.append("set-user-ID, TCPKEEP_LOG=%s: untouched" % what)
        msgs[-2:] = ["set-user-ID (AT_SECURE, library loaded: keepalive on): %s and %s "
                     "untouched, TCPKEEP_IDLE_TIMEOUT and TCPKEEP_KEEPIDLE ignored (keepidle "
                     "%d, no cut)" % ("a new file", "root's file", keepidle0)]
    finally:
        try:
            os.unlink(installed)
        except FileNotFoundError:
            pass
        echo.stop()
    check(not os.path.exists(installed), "could not remove %s" % installed)
    msgs.append(_via_ld_so_preload(probe, suid, logdir))
    return "; ".join(msgs)


def _via_ld_so_preload(probe, suid, logdir):
    """The same, with the library named in /etc/ld.so.preload (loaded into
    set-user-ID programs from any path, no set-user-ID bit needed): an
    overlay on /etc in a private mount namespace. Returns a description;
    says why if the namespace or overlay cannot be made here."""
    if not which("unshare"):
        return "(/etc/ld.so.preload variant not run: no unshare)"
    d = tmpdir()
    os.chmod(d, 0o755)
    libcopy = os.path.join(d, "libtcpkeep.so")
    shutil.copy(lib(), libcopy)
    os.chmod(libcopy, 0o755)
    upper, work = os.path.join(d, "upper"), os.path.join(d, "work")
    os.mkdir(upper)
    os.mkdir(work)
    with open(os.path.join(upper, "ld.so.preload"), "w") as fh:
        fh.write(libcopy + "\n")
    echo = EchoServer()
    res = {}
    try:
        for label, prog in (("plain", probe), ("suid", suid)):
            target = os.path.join(logdir, "preload-%s.log" % label)
            env = dict(ENV, TCPKEEP_LOG=target)
            inner = " ".join("'%s'" % a for a in _as_nobody([prog, "probe", str(echo.port)],
                                                            env))
            cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   "mount -t overlay overlay -o lowerdir=/etc,upperdir=%s,workdir=%s /etc "
                   "|| exit 99; exec %s" % (upper, work, inner)]
            rc, out, err = run(cmd, shim=False, limit=15)
            if rc == 99 or (rc != 0 and "unshare" in err):
                return "(/etc/ld.so.preload variant not run: cannot mount an overlay on /etc " \
                    "in a private mount namespace here: %s)" % err.strip()[-200:]
            f = fields(out)
            check(rc == 0 and f.get("loaded") == "1",
                  "/etc/ld.so.preload (%s): the library was not loaded: status %s, %r, %r"
                  % (label, rc, out[-300:], err[-300:]))
            res[label] = (f, _read(target), err)
    finally:
        echo.stop()
    check(not os.path.exists("/etc/ld.so.preload") or
          libcopy not in (_read("/etc/ld.so.preload") or ""),
          "the overlay leaked out of the mount namespace: /etc/ld.so.preload names %s" % libcopy)
    (fp, logp, errp), (fs, logs, _) = res["plain"], res["suid"]
    check(fp["secure"] == "0" and logp is not None and "loaded" in logp,
          "/etc/ld.so.preload control (not set-user-ID): log not created: %r %r %r"
          % (fp, logp, errp[-200:]))
    check(fs["secure"] == "1" and fs["euid"] == "0", "/etc/ld.so.preload set-user-ID run: %r"
          % fs)
    check(logs is None, "/etc/ld.so.preload: the set-user-ID program created TCPKEEP_LOG: %r"
          % logs)
    check(fs["keepidle"] != "77" and fs["cut"] == "0",
          "/etc/ld.so.preload: the set-user-ID program applied TCPKEEP_*: %r" % fs)
    return "through /etc/ld.so.preload too: the set-user-ID program ignored TCPKEEP_* (no " \
        "log created, keepidle %s, no cut), the plain one created its log" % fs["keepidle"]


def test_security_log_symlink_not_followed():
    """TCPKEEP_LOG naming a symlink (to an existing file, and a dangling one)
    under the shim (debug level, limit 300ms): the link is not followed (the
    target keeps its content, the dangling target is not created); one line
    on stderr says the log cannot be opened, the log then goes to stderr,
    and the shim still works (idle cut)."""
    probe = _probe()
    d = tmpdir()
    target = os.path.join(d, "target")
    with open(target, "w") as fh:
        fh.write("ORIGINAL\n")
    before = os.stat(target)
    link = os.path.join(d, "link")
    os.symlink(target, link)
    dangling = os.path.join(d, "dangling")
    missing = os.path.join(d, "would-be-created")
    os.symlink(missing, dangling)
    echo = EchoServer()
    try:
        out = {}
        for path in (link, dangling):
            rc, o, err = run([probe, "probe", str(echo.port)],
                             env=dict(ENV, TCPKEEP_LOG=path), limit=15)
            f = fields(o)
            check(rc == 0 and f.get("loaded") == "1", "status %s, %r, %r"
                  % (rc, o[-300:], err[-300:]))
            out[path] = (f, err)
    finally:
        echo.stop()
    now = os.stat(target)
    check(_read(target) == "ORIGINAL\n" and now.st_mtime_ns == before.st_mtime_ns,
          "TCPKEEP_LOG=<symlink>: the link was followed, its target now holds %r"
          % _read(target))
    check(not os.path.lexists(missing), "TCPKEEP_LOG=<dangling symlink>: the link was "
          "followed, %s was created: %r" % (missing, _read(missing)))
    for path, (f, err) in out.items():
        lines = err.splitlines()
        said = [ln for ln in lines if 'TCPKEEP_LOG="%s"' % path in ln and "cannot open" in ln]
        check(len(said) == 1, "TCPKEEP_LOG=%s (symlink): expected one 'cannot open' line on "
              "stderr, got %r" % (path, lines[:6]))
        check(any("loaded" in ln for ln in lines) and any("shut down" in ln for ln in lines),
              "TCPKEEP_LOG=%s (symlink): the log did not go to stderr instead: %r"
              % (path, lines[:6]))
        check(f["keepidle"] == "77" and f["cut"] == "1",
              "TCPKEEP_LOG=%s (symlink): the shim stopped working: %r" % (path, f))
    return "a symlink and a dangling symlink as TCPKEEP_LOG: not followed (target unchanged, " \
        "nothing created), one line on stderr (%s), log on stderr, idle cut as configured" \
        % said[0].split(": ", 1)[-1]


def test_security_log_append_and_cloexec():
    """TCPKEEP_LOG=<file that already has a line>: two runs under the shim
    (limit 300ms, info) append their cut lines after it (nothing truncated);
    the program's log descriptor has O_APPEND and O_CLOEXEC (fdinfo), and a
    program it fork+execs (without the preload) has no descriptor on the
    log file (/proc/self/fd)."""
    probe = _probe()
    log = os.path.join(tmpdir(), "tk.log")
    with open(log, "w") as fh:
        fh.write("EXISTING LINE\n")
    env = dict(ENV, TCPKEEP_LOG=log, TCPKEEP_LOG_LEVEL="info")
    echo = EchoServer()
    try:
        for i in range(2):
            rc, out, err = run([probe, "probe", str(echo.port)], env=env, limit=15)
            f = fields(out)
            check(rc == 0 and f.get("cut") == "1", "run %d: status %s, %r, %r"
                  % (i, rc, out[-300:], err[-300:]))
    finally:
        echo.stop()
    lines = (_read(log) or "").splitlines()
    cuts = [ln for ln in lines if "shut down" in ln]
    check(lines[:1] == ["EXISTING LINE"], "the log file's first line is gone: %r" % lines[:4])
    pids = {ln.split("]")[0] for ln in cuts}
    check(len(cuts) == 2 and len(pids) == 2,
          "expected one cut line from each of 2 runs after the existing line, got %r" % lines)

    rc, out, err = run([probe, "exec"], env=env, limit=15)
    check(rc == 0 and "child_status=0" in out, "exec: status %s, %r, %r"
          % (rc, out[-400:], err[-300:]))
    real = os.path.realpath(log)
    mine = [fields(ln) for ln in out.splitlines() if ln.startswith("parent ")
            and ln.endswith("target=" + real)]
    check(len(mine) == 1, "the program under the shim should hold exactly one descriptor on "
          "the log, found %r in %r" % (mine, out))
    inherited = [ln for ln in out.splitlines() if ln.startswith("child ") and real in ln]
    child_fds = [ln for ln in out.splitlines() if ln.startswith("child ")]
    check(child_fds, "the exec'd child listed no descriptors: %r" % out)
    check(not inherited, "the exec'd program inherited the log descriptor: %r" % inherited)
    flags = int(mine[0]["flags"], 8)
    want = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
    check(flags & want == want and flags & os.O_ACCMODE == os.O_WRONLY,
          "the log descriptor's flags are %o: expected O_WRONLY|O_APPEND|O_CLOEXEC|O_NOFOLLOW"
          % flags)
    return "2 runs appended a cut line each after the existing line; the log fd %s has " \
        "flags %o (O_WRONLY|O_APPEND|O_CLOEXEC|O_NOFOLLOW); the exec'd program holds fds %s, " \
        "none on the log" % (mine[0]["fd"], flags, ",".join(fields(ln)["fd"] for ln in child_fds))
