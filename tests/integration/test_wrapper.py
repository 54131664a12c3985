"""The wrapper scripts/tcpkeep (skipped until it exists)."""
import json
import os
import re
import subprocess
import time

from helpers import (PYTHON, ROOT, Fail, Skip, check, compile_c, connect, cut_window,
                     expect_keepalive_timer, finish, free_port, lib, read_line, run, spawn,
                     tmpdir, wait_eof, wait_listen, which)

WRAPPER = os.path.join(ROOT, "scripts", "tcpkeep")


def _wrapper():
    if not os.path.isfile(WRAPPER):
        raise Skip("scripts/tcpkeep is missing: the wrapper has not landed yet")
    if os.access(WRAPPER, os.X_OK):
        return [WRAPPER]
    return ["sh", WRAPPER]


def _env(extra=None):
    # The wrapper is not run under the shim; it must find the library under
    # test, which TCPKEEP_LIBRARY names.
    env = {"TCPKEEP_LIBRARY": lib()}
    env.update(extra or {})
    return env


def test_wrapper_idle_and_keepidle():
    """tcpkeep --idle 1s --keepidle 61 -- nc -l: the 61 s timer in ss, and an
    idle client cut on time."""
    w = _wrapper()
    port = free_port()
    srv = spawn(w + ["--idle", "1s", "--keepidle", "61", "--", "nc", "-l", "127.0.0.1",
                     str(port)], shim=False, env=_env(), stdout=subprocess.DEVNULL)
    wait_listen(port, proc=srv)
    s, t0 = connect(port)
    time.sleep(0.1)
    timer = expect_keepalive_timer(port, s.getsockname()[1], 61, "nc -l under the wrapper")
    end, _, _ = wait_eof(s, 3.0)
    msg = cut_window(end and end - t0, 1.0, "idle client cut")
    s.close()
    out, err = finish(srv)
    check(not err.strip(), "stderr from the wrapped nc: %r" % err[-400:])
    return "%s; keepalive timer %s" % (msg, timer)


def test_wrapper_bad_value():
    """A bad value: exit status 2, one tcpkeep[PID] line naming it, and the
    command (which would create a file) is not started."""
    w = _wrapper()
    d = tmpdir()
    seen = []
    for args, var, value in ((["--keepcnt", "abc"], "TCPKEEP_KEEPCNT", "abc"),
                             (["--idle", "5x"], "TCPKEEP_IDLE_TIMEOUT", "5x"),
                             (["--keepidle=40000"], "TCPKEEP_KEEPIDLE", "40000")):
        marker = os.path.join(d, "started-%d" % len(seen))
        p = spawn(w + args + ["--", "touch", marker], shim=False, env=_env(),
                  stdin=subprocess.DEVNULL)
        try:
            out, err = p.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            finish(p)
            raise Fail("tcpkeep %s did not finish" % " ".join(args))
        label = "tcpkeep %s" % " ".join(args)
        check(p.returncode == 2, "%s: exit status %s, expected 2 (stderr %r)"
              % (label, p.returncode, err))
        check(not os.path.exists(marker), "%s: the command was started" % label)
        lines = err.splitlines()
        want = re.compile(r'^tcpkeep\[%d\]: %s="%s": expected .+$'
                          % (p.pid, re.escape(var), re.escape(value)))
        check(len(lines) == 1 and want.match(lines[0]),
              "%s: stderr %r, expected one line matching %s" % (label, err, want.pattern))
        check(out == "", "%s: stdout %r" % (label, out))
        seen.append(lines[0])
    return "exit 2, command not started, one line each: %s" % " | ".join(seen)


def test_wrapper_keeps_ld_preload():
    """An LD_PRELOAD already set stays, and the library is added after it;
    the TCPKEEP_* variables reach the command."""
    w = _wrapper()
    other = compile_c("int tcpkeep_test_harmless = 1;\n", "libharmless", shared=True)
    rc, out, err = run(w + ["--idle", "1s", "--keepcnt", "5", "--", "env"], shim=False,
                       env=_env({"LD_PRELOAD": other}))
    check(rc == 0, "exit status %s: %r" % (rc, err[-400:]))
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    pre = re.split(r"[ :]+", env.get("LD_PRELOAD", "").strip())
    check(other in pre, "the LD_PRELOAD already set was dropped: %r" % env.get("LD_PRELOAD"))
    mine = [e for e in pre if os.path.basename(e) == "libtcpkeep.so"]
    check(len(mine) == 1 and os.path.realpath(mine[0]) == os.path.realpath(lib()),
          "libtcpkeep.so not added once: LD_PRELOAD=%r" % env.get("LD_PRELOAD"))
    check(pre.index(other) < pre.index(mine[0]),
          "the library was not appended: LD_PRELOAD=%r" % env.get("LD_PRELOAD"))
    check(env.get("TCPKEEP_IDLE_TIMEOUT") and env.get("TCPKEEP_KEEPCNT") == "5",
          "TCPKEEP_* not passed on: %r" % {k: v for k, v in env.items()
                                           if k.startswith("TCPKEEP_")})
    check(not err.strip(), "stderr %r" % err)
    found = "TCPKEEP_LIBRARY"
    built = os.path.join(ROOT, "build", "libtcpkeep.so")
    if os.path.realpath(lib()) == os.path.realpath(built):
        # Without TCPKEEP_LIBRARY, it finds the build tree's library.
        rc, out2, err2 = run(w + ["--", "env"], shim=False)
        env2 = dict(line.split("=", 1) for line in out2.splitlines() if "=" in line)
        pre2 = env2.get("LD_PRELOAD", "")
        check(rc == 0 and os.path.realpath(pre2.strip()) == os.path.realpath(built),
              "without TCPKEEP_LIBRARY: status %s, LD_PRELOAD=%r, stderr %r"
              % (rc, pre2, err2[-300:]))
        found += " and in the build tree"
    return "LD_PRELOAD=%s (library found through %s)" % (env["LD_PRELOAD"], found)


# --------------------------------------------------------------------------
# issue 5: the new options and the stats / inspect commands

PRINT_ENV = ("import json, os; print(json.dumps({k: v for k, v in os.environ.items() "
             "if k.startswith('TCPKEEP_') or k == 'LD_PRELOAD'}))")

NEW_OPTIONS = [  # (arguments, variable, value the command must see)
    (["--read", "5s"], "TCPKEEP_READ_TIMEOUT", "5s"),
    (["--write=6s"], "TCPKEEP_WRITE_TIMEOUT", "6s"),
    (["--first-byte", "1500ms"], "TCPKEEP_FIRST_BYTE_TIMEOUT", "1500ms"),
    (["--half-closed", "2s"], "TCPKEEP_HALF_CLOSED_TIMEOUT", "2s"),
    (["--lifetime", "1h"], "TCPKEEP_MAX_LIFETIME", "1h"),
    (["--lifetime-jitter", "10"], "TCPKEEP_MAX_LIFETIME_JITTER", "10"),
    (["--action", "reset"], "TCPKEEP_ACTION", "reset"),
    (["--activity=calls"], "TCPKEEP_ACTIVITY", "calls"),
    (["--ports", "80,443,8000-8100"], "TCPKEEP_PORTS", "80,443,8000-8100"),
    (["--peers", "10.0.0.0/8,::1/128"], "TCPKEEP_PEERS", "10.0.0.0/8,::1/128"),
    (["--direction", "in"], "TCPKEEP_DIRECTION", "in"),
    (["--override", "on"], "TCPKEEP_OVERRIDE", "on"),
    (["--dry-run"], "TCPKEEP_DRY_RUN", "on"),
]


def _print_env(w, args, extra=None):
    rc, out, err = run(w + args + ["--", PYTHON, "-c", PRINT_ENV], shim=False,
                       env=_env(extra))
    check(rc == 0, "tcpkeep %s: exit %s, stderr %r" % (" ".join(args), rc, err[-400:]))
    try:
        return json.loads(out.strip().splitlines()[-1]), err
    except (ValueError, IndexError):
        raise Fail("tcpkeep %s: the command printed %r" % (" ".join(args), out[-400:]))


def test_wrapper_new_options_reach_command():
    """Every new option (--read ... --stats, both spellings) sets its
    TCPKEEP_ variable in the command's environment; --dry-run sets on,
    --dry-run=off sets off."""
    w = _wrapper()
    d = tmpdir()
    rules = os.path.join(d, "rules")
    with open(rules, "w") as f:
        f.write("# test rules\n*: idle=30s\n")
    stats = os.path.join(d, "s.%p.json")
    args, want = [], {}
    for a, var, value in NEW_OPTIONS:
        args += a
        want[var] = value
    args += ["--config", rules, "--stats=" + stats]
    want.update(TCPKEEP_CONFIG=rules, TCPKEEP_STATS=stats)
    env, err = _print_env(w, args)
    wrong = {k: (env.get(k), v) for k, v in want.items() if env.get(k) != v}
    check(not wrong, "variables the command saw vs. expected: %r" % wrong)
    check(not err.strip(), "stderr %r" % err[-400:])
    env2, _ = _print_env(w, ["--dry-run", "--dry-run=off"])
    check(env2.get("TCPKEEP_DRY_RUN") == "off", "--dry-run=off: TCPKEEP_DRY_RUN=%r"
          % env2.get("TCPKEEP_DRY_RUN"))
    return "%d variables set as given" % len(want)


NEW_BAD_VALUES = [  # (arguments, variable, bad value)
    (["--read", "5x"], "TCPKEEP_READ_TIMEOUT", "5x"),
    (["--write", "-1s"], "TCPKEEP_WRITE_TIMEOUT", "-1s"),
    (["--first-byte", "1.5s"], "TCPKEEP_FIRST_BYTE_TIMEOUT", "1.5s"),
    (["--half-closed", "soon"], "TCPKEEP_HALF_CLOSED_TIMEOUT", "soon"),
    (["--lifetime", "1d"], "TCPKEEP_MAX_LIFETIME", "1d"),
    (["--lifetime", "1h", "--lifetime-jitter=101"], "TCPKEEP_MAX_LIFETIME_JITTER", "101"),
    (["--action", "explode"], "TCPKEEP_ACTION", "explode"),
    (["--activity", "all"], "TCPKEEP_ACTIVITY", "all"),
    (["--ports", "70000"], "TCPKEEP_PORTS", "70000"),
    (["--peers", "10.0.0.0/33"], "TCPKEEP_PEERS", "10.0.0.0/33"),
    (["--direction", "sideways"], "TCPKEEP_DIRECTION", "sideways"),
    (["--override", "sometimes"], "TCPKEEP_OVERRIDE", "sometimes"),
    (["--dry-run=maybe"], "TCPKEEP_DRY_RUN", "maybe"),
]


def test_wrapper_new_options_bad_value():
    """A bad value for a new option: the library's one line naming the
    variable, exit status 2, and the command (which would create a file) is
    not started."""
    w = _wrapper()
    d = tmpdir()
    seen = []
    for args, var, value in NEW_BAD_VALUES:
        marker = os.path.join(d, "started-%d" % len(seen))
        label = "tcpkeep %s" % " ".join(args)
        rc, out, err = run(w + args + ["--", "touch", marker], shim=False, env=_env())
        check(not os.path.exists(marker), "%s: the command was started (exit %s, stderr %r)"
              % (label, rc, err))
        check(rc == 2, "%s: exit status %s, expected 2 (stderr %r)" % (label, rc, err))
        lines = err.splitlines()
        want = re.compile(r'^tcpkeep\[\d+\]: %s="%s": expected .+; the command was not started$'
                          % (re.escape(var), re.escape(value)))
        check(len(lines) == 1 and want.match(lines[0]),
              "%s: stderr %r, expected one line matching %s" % (label, err, want.pattern))
        check(out == "", "%s: stdout %r" % (label, out))
        seen.append(lines[0].split(": ", 1)[1])
    return "exit 2, not started, e.g. %s" % " | ".join(seen[:4])


def test_wrapper_test_run_leaves_no_trace():
    """The wrapper's test run of the library writes no file: with --stats
    DIR/s.%p.json only the command's own file may appear, and with --log
    FILE --log-level debug every line in FILE is the command's."""
    w = _wrapper()
    d = tmpdir()
    log = os.path.join(d, "tcpkeep.log")
    stats = os.path.join(d, "s.%p.json")
    p = spawn(w + ["--log", log, "--log-level", "debug", "--stats", stats, "--",
                   PYTHON, "-c", "import os; print(os.getpid())"],
              shim=False, env=_env(), stdin=subprocess.DEVNULL)
    try:
        out, err = p.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        finish(p)
        raise Fail("the wrapped command did not finish")
    check(p.returncode == 0, "exit %s, stderr %r" % (p.returncode, err[-400:]))
    pid = int(out.split()[0])
    with open(log) as f:
        lines = f.read().splitlines()
    check(lines, "no line in the log at debug level: was the library loaded?")
    others = [line for line in lines if not line.startswith("tcpkeep[%d]: " % pid)]
    check(not others, "log lines from another process than the command (%d): %r"
          % (pid, others[:3]))
    files = sorted(os.listdir(d))
    extra = [f for f in files if f not in ("tcpkeep.log", "s.%d.json" % pid)]
    check(not extra, "files the test run left: %r" % extra)
    return "log: %d line(s), all from the command; files: %s" % (len(lines), ", ".join(files))


def test_wrapper_stats_and_inspect():
    """tcpkeep stats PATH and tcpkeep inspect PID [--json] run the tool
    found beside the library; a bad usage exits 2; after --, "stats" is a
    command like any other; --help shows both commands and every option."""
    w = _wrapper()
    d = tmpdir()
    path = os.path.join(d, "stats.json")
    reasons = ("idle", "read_idle", "write_idle", "first_byte", "half_closed", "lifetime")
    with open(path, "w") as f:
        json.dump({"pid": 77, "tracked_now": 1, "tracked_total": 2, "keepalive_set": 2,
                   "cuts": dict.fromkeys(reasons, 0), "would_cut": dict.fromkeys(reasons, 1),
                   "option_errors": 0, "updated": "2026-01-02T03:04:05Z"}, f)
    rc, out, err = run(w + ["stats", path], shim=False, env=_env())
    check(rc == 0 and out.startswith("process") and "77 (updated 2026-01-02T03:04:05Z)" in out,
          "tcpkeep stats: exit %s, stdout %r, stderr %r" % (rc, out, err))
    rc, out, err = run(w + ["stats", os.path.join(d, "none.json")], shim=False, env=_env())
    check(rc == 1 and err.startswith("tcpkeep: stats: "), "missing file: exit %s, %r" % (rc, err))

    srv = spawn([PYTHON, "-c", "import socket, sys; s = socket.socket(); "
                 "s.bind(('127.0.0.1', 0)); s.listen(1); print('ready', flush=True); "
                 "sys.stdin.read()"], shim=True, env={"TCPKEEP_KEEPIDLE": "61"})
    try:
        read_line(srv.stdout, 10, "the server's ready line")
        rc, out, err = run(w + ["inspect", str(srv.pid), "--json"], shim=False, env=_env())
    finally:
        finish(srv)
    check(rc == 0, "tcpkeep inspect: exit %s, stderr %r" % (rc, err))
    socks = json.loads(out)
    check(len(socks) == 1 and socks[0]["state"] == "LISTEN" and socks[0]["keepidle"] == 61
          and socks[0]["libtcpkeep"] is True, "tcpkeep inspect --json: %r" % socks)
    rc, out, err = run(w + ["inspect"], shim=False, env=_env())
    check(rc == 2 and "usage: tcpkeep inspect PID [--json]" in err,
          "tcpkeep inspect without a pid: exit %s, %r" % (rc, err))
    if not which("stats"):
        rc, out, err = run(w + ["--", "stats"], shim=False, env=_env())
        check(rc == 127 and "stats: command not found" in err,
              "tcpkeep -- stats: exit %s, %r" % (rc, err))
    rc, out, err = run(w + ["--help"], shim=False, env=_env())
    missing = [s for s in ["tcpkeep stats PATH", "tcpkeep inspect PID [--json]"]
               + [a[0].split("=")[0] for a, _, _ in NEW_OPTIONS] + ["--config", "--stats"]
               if s not in out]
    check(rc == 0 and not missing, "--help: exit %s, missing %r" % (rc, missing))
    return "stats table, inspect --json %r, usage exit 2, --help complete" % socks[0]["local"]
