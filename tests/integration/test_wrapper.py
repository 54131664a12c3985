"""The wrapper scripts/tcpkeep (skipped until it exists)."""
import os
import re
import subprocess
import time

from helpers import (ROOT, Fail, Skip, check, compile_c, connect, cut_window,
                     expect_keepalive_timer, finish, free_port, lib, run, spawn, tmpdir,
                     wait_eof, wait_listen)

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
