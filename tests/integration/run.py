#!/usr/bin/env python3
"""Runs the integration tests: real programs under libtcpkeep over loopback.

    python3 tests/integration/run.py --lib build/libtcpkeep.so [-k SUBSTRING]... [-v]

Tests are the functions named test_* in tests/integration/test_*.py, run one
at a time, each in its own process with a hard timeout. A test returns a
short description of what it measured (PASS), raises helpers.Fail (FAIL) or
helpers.Skip (SKIP). One line per test, then the summary line
`N passed, N failed[, N skipped]`; the exit status is 1 if any failed.
"""
import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

DEFAULT_TIMEOUT = 30


def discover():
    """[(name, module, function name, timeout, import error)] in file and
    source order."""
    import helpers  # noqa: F401  (fail early if it does not import)
    tests = []
    for fname in sorted(os.listdir(HERE)):
        if not (fname.startswith("test_") and fname.endswith(".py")):
            continue
        try:
            mod = importlib.import_module(fname[:-3])
        except Exception as e:  # noqa: B902 (report it as a failing test)
            tests.append(("import_" + fname[5:-3], fname[:-3], None, DEFAULT_TIMEOUT,
                          "%s does not import: %s: %s" % (fname, type(e).__name__, e)))
            continue
        fns = [(getattr(mod, n).__code__.co_firstlineno, n) for n in dir(mod)
               if n.startswith("test_") and callable(getattr(mod, n))
               and getattr(getattr(mod, n), "__module__", None) == mod.__name__]
        for _, n in sorted(fns):
            fn = getattr(mod, n)
            tests.append((n[len("test_"):], mod.__name__, n,
                          getattr(fn, "timeout", DEFAULT_TIMEOUT), None))
    return tests


class Terminated(Exception):
    pass


def _on_term(signum, frame):
    raise Terminated("terminated by the runner (hard timeout)")


def run_one(module, func, result_path):
    """In the child: run one test, always clean up, write the verdict."""
    import helpers
    signal.signal(signal.SIGTERM, _on_term)
    verdict = {"status": "FAIL", "message": "did not finish"}
    try:
        fn = getattr(importlib.import_module(module), func)
        msg = fn()
        verdict = {"status": "PASS", "message": msg or "ok"}
    except helpers.Skip as e:
        verdict = {"status": "SKIP", "message": str(e)}
    except helpers.Fail as e:
        verdict = {"status": "FAIL", "message": str(e)}
    except BaseException as e:  # noqa: B902 (a broken test is a failure too)
        tb = traceback.format_exc().rstrip().splitlines()
        verdict = {"status": "FAIL", "message": "%s: %s" % (type(e).__name__, e),
                   "details": tb[-12:]}
    finally:
        try:
            helpers.cleanup()
        except BaseException as e:  # noqa: B902
            verdict.setdefault("details", []).append("cleanup: %r" % (e,))
        with open(result_path, "w") as f:
            json.dump(verdict, f)
    return 0


def kill_child(p):
    """Hard timeout: SIGTERM the test process (its finally block kills what
    it started), then SIGKILL its process group (only processes it started)."""
    try:
        os.kill(p.pid, signal.SIGTERM)
        p.wait(timeout=5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def one_line(s):
    return " ".join(str(s).split())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lib", default=os.path.join(HERE, "..", "..", "build", "libtcpkeep.so"))
    ap.add_argument("-k", action="append", default=[], metavar="SUBSTRING",
                    help="run only tests whose name contains SUBSTRING (repeatable)")
    ap.add_argument("-v", action="store_true", help="show each test's output on FAIL and PASS")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.one:
        module, func = args.one.split(":")
        return run_one(module, func, args.result)

    lib = os.path.abspath(args.lib)
    os.environ["TCPKEEP_TEST_LIB"] = lib
    tests = discover()
    if args.k:
        tests = [t for t in tests if any(k in t[0] for k in args.k)]
    if args.list:
        for t in tests:
            print(t[0])
        return 0

    counts = {"PASS": 0, "FAIL": 0, "SKIP": 0}
    if not os.path.isfile(lib):
        print("FAIL library: %s not found (run make)" % lib)
        counts["FAIL"] += 1
        tests = []
    started = time.monotonic()
    for name, module, func, limit, broken in tests:
        if broken:
            counts["FAIL"] += 1
            print("FAIL %s: %s" % (name, one_line(broken)), flush=True)
            continue
        fd, result = tempfile.mkstemp(prefix="tcpkeep-it-", suffix=".json")
        os.close(fd)
        t0 = time.monotonic()
        p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--one",
                              "%s:%s" % (module, func), "--result", result],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            out, _ = p.communicate(timeout=limit)
            timed_out = False
        except subprocess.TimeoutExpired:
            kill_child(p)
            out, _ = p.communicate()
            timed_out = True
        try:
            with open(result) as f:
                verdict = json.load(f)
        except (OSError, ValueError):
            verdict = {"status": "FAIL", "message": "the test process died (status %s)"
                       % p.returncode}
        finally:
            try:
                os.unlink(result)
            except OSError:
                pass
        if timed_out:
            verdict = {"status": "FAIL", "message": "hard timeout: still running after %d s"
                       % limit, "details": verdict.get("details", [])}
        status = verdict["status"]
        counts[status] += 1
        print("%s %s: %s" % (status, name, one_line(verdict["message"])), flush=True)
        details = list(verdict.get("details", []))
        if (status == "FAIL" or args.v) and out and out.strip():
            details += out.rstrip().splitlines()[-30:]
        if status == "FAIL" or args.v:
            for d in details:
                print("    " + d.rstrip(), flush=True)
        if args.v:
            print("    (%.2f s)" % (time.monotonic() - t0), flush=True)
    summary = "%d passed, %d failed" % (counts["PASS"], counts["FAIL"])
    if counts["SKIP"]:
        summary += ", %d skipped" % counts["SKIP"]
    if args.v:
        print("(%.1f s in all)" % (time.monotonic() - started))
    print(summary, flush=True)
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
