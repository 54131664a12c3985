"""The README's deployment examples: the systemd drop-in passes
`systemd-analyze verify` (and a broken copy does not), and every variable in
it and in the Dockerfile lines is one the library reads and accepts.

The examples sit in README.md between marker comments:
<!-- systemd-dropin:start --> ... <!-- systemd-dropin:end --> and
<!-- dockerfile:start --> ... <!-- dockerfile:end -->, as indented code.
"""
import json
import os
import re
import shlex

from helpers import ROOT, Fail, Skip, check, run, script, tmpdir, which

README = os.path.join(ROOT, "README.md")
MAKEFILE = os.path.join(ROOT, "Makefile")

# Variables whose value is a file path: a test run points them into a temp
# dir, and the empty string is their bad value (any other string is a path).
PATH_VALUED = ("TCPKEEP_STATS", "TCPKEEP_CONFIG", "TCPKEEP_LOG")
LIBKEEPALIVE_NAMES = ("KEEPALIVE", "KEEPIDLE", "KEEPINTVL", "KEEPCNT")


def _readme():
    with open(README) as f:
        return f.read()


def _block(name):
    """The indented code between the `name` markers, without its indent."""
    text = _readme()
    start, end = "<!-- %s:start -->" % name, "<!-- %s:end -->" % name
    check(text.count(start) == 1 and text.count(end) == 1,
          "README.md must hold exactly one %s and one %s" % (start, end))
    body = text[text.index(start) + len(start):text.index(end)]
    lines = []
    for line in body.split("\n"):
        if line.strip() and not line.startswith("    "):
            raise Fail("README.md, %s example: a line that is not indented code: %r"
                       % (name, line))
        lines.append(line[4:])
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    check(lines, "README.md: the %s example is empty" % name)
    return lines


def _documented_names():
    """The variables in the README's configuration table."""
    names = set(re.findall(r"^\| `([A-Z_]+)` \|", _readme(), re.M))
    check("TCPKEEP_IDLE_TIMEOUT" in names, "README.md: no configuration table found")
    return names


def _install_libdir():
    """Where `make install` puts the library by default: $(PREFIX)/lib."""
    with open(MAKEFILE) as f:
        mk = f.read()
    prefix = re.search(r"^PREFIX\s*\?=\s*(\S+)\s*$", mk, re.M)
    libdir = re.search(r"^LIBDIR\s*\?=\s*(\S+)\s*$", mk, re.M)
    check(prefix and libdir, "Makefile: no PREFIX ?= / LIBDIR ?= lines")
    return libdir.group(1).replace("$(PREFIX)", prefix.group(1))


def _build_output():
    """What `make` builds the library as, relative to the tree: build/libtcpkeep.so."""
    with open(MAKEFILE) as f:
        mk = f.read()
    build = re.search(r"^BUILD\s*\?=\s*(\S+)\s*$", mk, re.M)
    target = re.search(r"^LIB\s*:?=\s*(\S+)\s*$", mk, re.M)
    check(build and target, "Makefile: no BUILD ?= / LIB := lines")
    return target.group(1).replace("$(BUILD)", build.group(1))


# --------------------------------------------------------------------------
# systemd

def _unescape_specifiers(value, where):
    """systemd expands %-specifiers in Environment=; the examples may use
    only %% (a literal %), so that the library sees exactly what the README
    says it sees."""
    out, i = [], 0
    while i < len(value):
        if value[i] == "%":
            if value[i + 1:i + 2] != "%":
                raise Fail("%s: %r holds the unit-file specifier %r: systemd would replace it"
                           " (write %%%% for a literal %%)" % (where, value, value[i:i + 2]))
            out.append("%")
            i += 2
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def _environment(lines, where):
    """The assignments of the Environment= lines, as systemd would pass them."""
    env = {}
    for line in lines:
        if not line.startswith("Environment="):
            continue
        for word in shlex.split(line[len("Environment="):]):
            name, eq, value = word.partition("=")
            check(eq and re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name),
                  "%s: %r is not an assignment" % (where, word))
            env[name] = _unescape_specifiers(value, where)
    return env


def _systemd_analyze():
    path = which("systemd-analyze")
    if not path:
        raise Skip("systemd-analyze is not installed (scripts/install-deps.sh installs the"
                   " optional package systemd)")
    return path


def _verify(analyze, unit_dir, unit):
    """Runs systemd-analyze verify on unit_dir/unit, its drop-ins included.
    Returns the complaints: a non-zero status, and every line that names
    the unit or its directory (warnings such as an unknown key leave the
    status 0, so they must be looked for)."""
    # The trailing ':' keeps the system's unit path too (the default
    # targets a service depends on); ours comes first.
    rc, out, err = run([analyze, "verify", os.path.join(unit_dir, unit)], shim=False,
                       env={"SYSTEMD_UNIT_PATH": unit_dir + ":", "SYSTEMD_LOG_COLOR": "0"},
                       limit=60)
    complaints = [line for line in (out + err).splitlines()
                  if unit_dir in line or unit in line]
    if rc != 0:
        complaints.insert(0, "exit status %d" % rc)
    return complaints


def _write_unit(unit_dir, unit, dropin_name, dropin_lines):
    with open(os.path.join(unit_dir, unit), "w") as f:
        # Minimal, and valid on its own: verify checks the command exists.
        f.write("[Unit]\nDescription=legacy server (test)\n\n"
                "[Service]\nExecStart=/bin/sleep infinity\n")
    d = os.path.join(unit_dir, unit + ".d")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, dropin_name), "w") as f:
        f.write("\n".join(dropin_lines) + "\n")


def test_systemd_dropin_verifies():
    """The README's drop-in, beside a minimal unit, passes systemd-analyze
    verify; copies broken in the drop-in (a misspelt key, an emptied
    ExecStart=) do not, which proves verify read it."""
    analyze = _systemd_analyze()
    lines = _block("systemd-dropin")
    m = re.match(r"^# (/etc/systemd/system/([A-Za-z0-9@_.-]+\.service)\.d/([A-Za-z0-9_.-]+\.conf))$",
                 lines[0])
    check(m, "README.md: the drop-in's first line should be a comment naming its path,"
          " /etc/systemd/system/UNIT.service.d/NAME.conf; it is %r" % lines[0])
    path, unit, dropin = m.groups()
    check("[Service]" in lines, "the drop-in has no [Service] section")
    unit_dir = tmpdir()

    _write_unit(unit_dir, unit, dropin, lines)
    complaints = _verify(analyze, unit_dir, unit)
    check(not complaints, "systemd-analyze verify on the README's drop-in: %s"
          % " | ".join(complaints))

    # Broken copies must be caught by the same check.
    env_at = next(i for i, line in enumerate(lines) if line.startswith("Environment="))
    misspelt = list(lines)
    misspelt[env_at] = "Environmnet=" + lines[env_at][len("Environment="):]
    _write_unit(unit_dir, unit, dropin, misspelt)
    caught_key = _verify(analyze, unit_dir, unit)
    check(any(dropin in c for c in caught_key),
          "a drop-in with a misspelt key was not reported (%r): verify is not reading the"
          " drop-in" % caught_key)
    _write_unit(unit_dir, unit, dropin, lines + ["ExecStart="])
    caught_exec = _verify(analyze, unit_dir, unit)
    check(caught_exec and caught_exec[0].startswith("exit status"),
          "a drop-in that empties ExecStart= passed verify (%r): the drop-in is not merged"
          " into the unit" % caught_exec)

    env = _environment(lines, "README.md's drop-in")
    want = os.path.join(_install_libdir(), "libtcpkeep.so")
    check(env.get("LD_PRELOAD") == want,
          "the drop-in preloads %r, but make install puts the library in %r"
          % (env.get("LD_PRELOAD"), want))
    accepted = _library_accepts(env, "README.md's drop-in")
    return ("%s verifies; a misspelt key (%s) and an emptied ExecStart= (%s) are caught; %s"
            % (path, caught_key[0], caught_exec[-1], accepted))


# --------------------------------------------------------------------------
# Dockerfile

def _instructions(lines):
    """[(INSTRUCTION, arguments)] with continuation lines joined."""
    out, cur = [], ""
    for line in lines:
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        cur += line.rstrip()
        if cur.endswith("\\"):
            cur = cur[:-1] + " "
            continue
        word, _, rest = cur.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        cur = ""
    check(not cur, "the Dockerfile lines end with a continuation")
    return out


def test_dockerfile_lines_consistent():
    """The README's Dockerfile lines: the library is built with make in a
    stage that installs what make needs, copied to where LD_PRELOAD points,
    and every ENV variable is one the library reads and accepts."""
    ins = _instructions(_block("dockerfile"))
    stages, current = {}, None
    env, copies = {}, []
    for word, args in ins:
        if word == "FROM":
            m = re.match(r"^(\S+)(?:\s+AS\s+(\S+))?$", args, re.I)
            check(m, "FROM %s: cannot read it" % args)
            current = m.group(2) or m.group(1)
            stages[current] = []
        check(current is not None, "%s before any FROM" % word)
        stages[current].append((word, args))
        if word == "ENV":
            words = shlex.split(args)
            check(words and all("=" in w for w in words),
                  "ENV %s: use the NAME=value form" % args)
            for w in words:
                k, _, v = w.partition("=")
                env[k] = v
        elif word == "COPY":
            copies.append(shlex.split(args))

    preload = env.get("LD_PRELOAD", "")
    check(preload.endswith("/libtcpkeep.so"),
          "the Dockerfile sets LD_PRELOAD=%r, not a path to libtcpkeep.so" % preload)
    built = _build_output()
    placed = None
    for c in copies:
        src_from = [a[len("--from="):] for a in c if a.startswith("--from=")]
        paths = [a for a in c if not a.startswith("--")]
        if len(paths) != 2:
            continue
        src, dest = paths
        if dest.endswith("/"):
            dest += os.path.basename(src)
        if dest == preload:
            placed = (src_from[0] if src_from else None, src)
    check(placed, "no COPY puts the library at LD_PRELOAD's path %s" % preload)
    stage, src = placed
    check(stage in stages, "COPY --from=%s: no such stage" % stage)
    check(src.endswith("/" + built), "COPY takes %s, but make builds %s" % (src, built))
    stage_text = " ".join(args for word, args in stages[stage] if word == "RUN")
    check(re.search(r"\bmake\b", stage_text), "stage %s never runs make" % stage)
    for pkg in ("build-essential", "uthash-dev"):
        check(re.search(r"\b%s\b" % re.escape(pkg), stage_text),
              "stage %s does not install %s, which make needs" % (stage, pkg))

    accepted = _library_accepts(env, "README.md's Dockerfile")
    return "COPY %s:%s -> %s = LD_PRELOAD; %s" % (stage, src, preload, accepted)


# --------------------------------------------------------------------------
# the library itself

STATS_PROG = r"""
import socket
ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen(1)
c = socket.create_connection(ls.getsockname()); a, _ = ls.accept()
c.sendall(b"x"); a.recv(1)
print("ok", flush=True)
"""


def _library_accepts(env, where):
    """Every TCPKEEP_ (and libkeepalive) variable of an example is in the
    README's table, the library accepts the example's values (no line on
    stderr), and reads each of them (a bad value gets its one error line:
    a misspelt name would be silently ignored). With TCPKEEP_STATS, a
    program with a TCP connection leaves the file its %p names."""
    names = sorted(k for k in env if k.startswith("TCPKEEP_") or k in LIBKEEPALIVE_NAMES)
    check(names, "%s sets no TCPKEEP_ variable" % where)
    documented = _documented_names()
    missing = [n for n in names if n not in documented and n not in LIBKEEPALIVE_NAMES]
    check(not missing, "%s uses %s, not in the README's configuration table"
          % (where, ", ".join(missing)))

    d = tmpdir()
    values = {n: env[n] for n in names}
    if "TCPKEEP_STATS" in values:
        values["TCPKEEP_STATS"] = os.path.join(d, os.path.basename(values["TCPKEEP_STATS"]))
    if values.get("TCPKEEP_LOG") not in (None, "stderr", "off"):
        values["TCPKEEP_LOG"] = os.path.join(d, "tcpkeep.log")
    if "TCPKEEP_CONFIG" in values:
        values["TCPKEEP_CONFIG"] = os.path.join(d, "tcpkeep.rules")
        open(values["TCPKEEP_CONFIG"], "w").close()

    true = which("true") or "/bin/true"
    rc, out, err = run([true], env=values, limit=20)
    check(rc == 0 and err == "", "%s: /bin/true under the library with %s: status %s,"
          " stderr %r" % (where, " ".join("%s=%s" % kv for kv in sorted(values.items())),
                          rc, err))

    for n in names:
        bad = "" if n in PATH_VALUED else "x!"
        rc, out, err = run([true], env={n: bad}, limit=20)
        want = re.compile(r'^tcpkeep\[\d+\]: %s="%s": expected [^;]+; tcpkeep is disabled'
                          r' in this process$' % (re.escape(n), re.escape(bad)))
        lines = err.splitlines()
        check(rc == 0 and len(lines) == 1 and want.match(lines[0]),
              "%s: %s=%r should get the library's one error line (the library does not read"
              " this variable?); stderr %r" % (where, n, bad, err))

    said = "the library accepts %s" % ", ".join(names)
    if "TCPKEEP_STATS" in values:
        # A process with a TCP connection writes the file at exit, at the
        # path its pid makes of the template.
        fresh = tmpdir()  # the /bin/true runs above wrote theirs into d
        template = values["TCPKEEP_STATS"] = os.path.join(
            fresh, os.path.basename(values["TCPKEEP_STATS"]))
        check("%p" in template, "%s: TCPKEEP_STATS=%r has no %%p: forked children would"
              " overwrite one file" % (where, env["TCPKEEP_STATS"]))
        rc, out, err = run(script(STATS_PROG), env=values, limit=20)
        check(rc == 0 and out.strip() == "ok" and err == "",
              "%s: a TCP program under its variables: status %s, stdout %r, stderr %r"
              % (where, rc, out, err))
        written = [f for f in os.listdir(fresh) if f.endswith(".json")]
        pattern = re.compile("^%s$" % re.escape(os.path.basename(template)).replace(
            re.escape("%p"), r"(\d+)"))
        got = [(f, pattern.match(f)) for f in written]
        check(len(got) == 1 and got[0][1], "%s: TCPKEEP_STATS=%s: files written: %r"
              % (where, template, written))
        with open(os.path.join(fresh, got[0][0])) as f:
            stats = json.load(f)
        check(stats.get("pid") == int(got[0][1].group(1)),
              "%s: %s holds pid %r" % (where, got[0][0], stats.get("pid")))
        said += "; TCPKEEP_STATS wrote %s" % got[0][0]
    return said

