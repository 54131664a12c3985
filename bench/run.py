#!/usr/bin/env python3
"""libtcpkeep benchmarks: every figure as shim / none, measured in one run.

    python3 bench/run.py --lib build/libtcpkeep.so --bindir build/bench [--smoke]

Runs the benchmark programs (built by bench/bench.mk) with the shim preloaded
("shim"), with nothing preloaded ("none") and, where it says so, with a
library that only forwards the same calls ("fwd", bench/forward_only.c). Runs
alternate none/shim/fwd, fwd/shim/none, ... so that drift of the machine
cancels; each ratio is taken within one round and the table shows the median
ratio over the rounds, with min and max. Instruction counts come from
callgrind, which is deterministic, so they are taken once, at two iteration
counts, and differenced (startup cancels).

Prints progress, then one table, and writes build/bench/results.{json,md}.
Exit status: 0 when every benchmark ran (targets missed or not), 1 when one
failed to run. Loopback only; every process it starts is stopped by its PID
before it returns; every wait is bounded.
"""

import argparse
import collections
import json
import math
import os
import platform
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

# Ratio benchmarks run in rounds (each mode once per round, the order
# alternating), at least `min` rounds, then more while the median's 95 %
# confidence interval is wider than +-TOLERANCE, up to `max` rounds or `budget`
# seconds for that benchmark.
TOLERANCE = 0.005
FULL = dict(
    rounds=dict(min=9, max=61, budget=40),         # ping-pong
    bulk_rounds=dict(min=9, max=61, budget=30),
    churn_rounds=dict(min=9, max=61, budget=30),
    nginx_rounds=dict(min=7, max=25, budget=60),
    slices=16,        # ping-pong and bulk: turns per process per round
    slice_s=0.03,     # seconds per turn
    churn_slices=20,  # churn: turns per round, shared by the two servers
    churn_s=1.0,      # seconds per churn round (both servers)
    churn_threads=2,
    nginx_s=2,        # wrk -d (whole seconds)
    nginx_conns=32,
    idle_target=100000,
    cpu_s=10.0,       # watchdog CPU sampling window
    batch=10000,      # connections due at once
    batch_limit_ms=3000,
    batches=2,
    cg_iters=20000,   # callgrind: N and 2N
    warmup=True,
)
ONE = dict(min=1, max=1, budget=0)
SMOKE = dict(
    rounds=ONE, bulk_rounds=ONE, churn_rounds=ONE, nginx_rounds=ONE,
    slices=2, slice_s=0.05, churn_slices=2, churn_s=0.2, churn_threads=2,
    nginx_s=1, nginx_conns=8, idle_target=1000, cpu_s=1.0, batch=300,
    batch_limit_ms=1000, batches=1, cg_iters=300, warmup=False,
)

SHIM_IDLE = "300s"  # the shim's idle timeout in the speed benchmarks: watchdog running


class BenchError(Exception):
    pass


def log(msg):
    print("bench: " + msg, flush=True)


# ---------------------------------------------------------------- processes

class Proc:
    """A child process we started, stopped by its own PID, never by name."""

    def __init__(self, argv, env, stdin=subprocess.DEVNULL, name=None):
        self.name = name or os.path.basename(argv[0])
        self.p = subprocess.Popen(argv, env=env, stdin=stdin, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, bufsize=0)
        self.lines = []
        self.buf = b""

    @property
    def pid(self):
        return self.p.pid

    def readline_until(self, pattern, timeout):
        """Read stdout lines until one matches `pattern`; the match or BenchError.
        Reads the pipe unbuffered (os.read), so select() sees what is unread."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        fd = self.p.stdout.fileno()
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                line = line.decode(errors="replace")
                self.lines.append(line)
                m = rx.search(line)
                if m:
                    return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.name}: no line matching {pattern!r} within "
                                 f"{timeout:.0f} s; got {self.lines[-3:]}")
            r, _, _ = select.select([fd], [], [], min(left, 0.5))
            if not r:
                if self.p.poll() is not None:
                    raise BenchError(f"{self.name} exited ({self.p.returncode}) before "
                                     f"{pattern!r}: {self.stderr_tail()}")
                continue
            data = os.read(fd, 65536)
            if not data:
                try:
                    self.p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
                raise BenchError(f"{self.name} closed its output ({self.p.returncode}) "
                                 f"before {pattern!r}: {self.stderr_tail()}")
            self.buf += data

    def stderr_tail(self):
        try:
            if self.p.poll() is not None:
                return (self.p.stderr.read() or b"").decode(errors="replace").strip()[-500:]
        except (OSError, ValueError):
            pass
        return ""

    def stop(self, sig=signal.SIGTERM, timeout=10):
        if self.p.poll() is None:
            try:
                os.kill(self.p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.p.pid, signal.SIGKILL)
                self.p.wait(timeout=10)
        for f in (self.p.stdout, self.p.stderr, self.p.stdin):
            try:
                if f:
                    f.close()
            except OSError:
                pass


def run_json(argv, env, timeout):
    """Run to completion; the last stdout line that is JSON."""
    try:
        r = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{' '.join(argv)}: still running after {timeout:.0f} s (killed)")
    if r.returncode != 0:
        raise BenchError(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()[-400:]}")
    for line in reversed(r.stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise BenchError(f"{' '.join(argv)}: no result line in {r.stdout[-300:]!r}")


def run_ring(argvs, envs, timeout):
    """Start the processes joined in a ring of pipes (see struct baton in
    bench/common.h), start the ring once all say "ready", and return each
    one's JSON result."""
    k = len(argvs)
    pipes = [os.pipe() for _ in range(k)]
    procs = []
    try:
        for i in range(k):
            rd, wr = pipes[i][0], pipes[(i + 1) % k][1]
            argv = argvs[i] + ["--baton", f"{rd},{wr}"]
            procs.append(subprocess.Popen(argv, env=envs[i], stdin=subprocess.DEVNULL,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          pass_fds=(rd, wr), bufsize=0))
        for rd, wr in pipes:  # the children have theirs
            os.close(rd)
        for _, wr in pipes[1:]:
            os.close(wr)
        kick = pipes[0][1]
        outs = [b""] * k
        deadline = time.monotonic() + timeout
        started = False
        open_fds = {p.stdout.fileno(): i for i, p in enumerate(procs)}
        while open_fds:
            if not started and all(b"ready\n" in o for o in outs):
                os.write(kick, b"x")
                os.close(kick)
                kick = None
                started = True
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{os.path.basename(argvs[0][0])}: ring not done in "
                                 f"{timeout:.0f} s")
            ready, _, _ = select.select(list(open_fds), [], [], min(left, 0.5))
            for fd in ready:
                data = os.read(fd, 65536)
                if data:
                    outs[open_fds[fd]] += data
                else:
                    del open_fds[fd]
        results = []
        for i, p in enumerate(procs):
            p.wait(timeout=max(1, deadline - time.monotonic()))
            err = p.stderr.read().decode(errors="replace")
            if p.returncode != 0:
                raise BenchError(f"{' '.join(argvs[i])}: exit {p.returncode}: {err[-300:]}")
            lines = [l for l in outs[i].decode().splitlines() if l.startswith("{")]
            if not lines:
                raise BenchError(f"{' '.join(argvs[i])}: no result line")
            results.append(json.loads(lines[-1]))
        return results
    finally:
        if "kick" in locals() and kick is not None:
            os.close(kick)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            for f in (p.stdout, p.stderr):
                if f:
                    f.close()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])  # kB
    raise BenchError(f"/proc/{pid}/status has no {field}")


def task_cpu(pid, tid):
    """(ns on CPU from schedstat or None, utime+stime in clock ticks)."""
    base = f"/proc/{pid}/task/{tid}"
    ns = None
    try:
        with open(base + "/schedstat") as f:
            ns = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    with open(base + "/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return ns, int(rest[11]) + int(rest[12])  # fields 14 and 15


def proc_cpu_ns(pid):
    """CPU time of every thread of pid, in ns (schedstat; 0 if unavailable)."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    except OSError:
        pass
    return total


def find_task(pid, comm):
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if f.read().strip() == comm:
                    return int(tid)
        except OSError:
            pass
    return None


def maps_has(pid, path):
    real = os.path.realpath(path)
    try:
        with open(f"/proc/{pid}/maps") as f:
            return any(real in line for line in f)
    except OSError:
        return False


# ---------------------------------------------------------------- statistics

def summary(values):
    return dict(median=statistics.median(values), min=min(values), max=max(values),
                n=len(values))


def median_ci(xs):
    """Distribution-free 95 % confidence interval of the median (order statistics)."""
    s = sorted(xs)
    n = len(s)
    if n < 6:
        return s[0], s[-1]
    k = 0.98 * math.sqrt(n)
    return s[max(0, math.floor(n / 2 - k))], s[min(n - 1, math.ceil(n / 2 + k))]


def fmt_ratio(s):
    return f"{s['median']:.3f} ({s['min']:.3f}..{s['max']:.3f})"


# ---------------------------------------------------------------- the benchmarks

class Bench:
    def __init__(self, args):
        self.args = args
        self.p = SMOKE if args.smoke else FULL
        self.bindir = os.path.abspath(args.bindir)
        self.lib = os.path.abspath(args.lib)
        self.fwd = os.path.abspath(args.fwd or os.path.join(self.bindir, "libforward.so"))
        self.rows = []      # (benchmark, figure, value, target, verdict)
        self.details = []   # free text lines for the details section
        self.results = collections.OrderedDict()
        self.failed = []
        base = {k: v for k, v in os.environ.items()
                if k != "LD_PRELOAD" and not k.startswith("TCPKEEP_")}
        base["LC_ALL"] = "C"
        self.env_none = base

    def env(self, mode, idle=SHIM_IDLE):
        e = dict(self.env_none)
        if mode == "shim":
            e["LD_PRELOAD"] = self.lib
            e["TCPKEEP_IDLE_TIMEOUT"] = idle
        elif mode == "fwd":
            e["LD_PRELOAD"] = self.fwd
        return e

    def prog(self, name):
        return os.path.join(self.bindir, name)

    def row(self, bench, figure, value, target, verdict):
        self.rows.append((bench, figure, value, target, verdict))

    def alternate(self, rounds, modes, fn):
        """fn(order) -> {mode: (figure, cpu figure)}, in rounds that alternate the
        order of the modes (none shim fwd, fwd shim none, ...): at least rounds["min"],
        then more while the median shim/none ratio is not yet known to within
        +-TOLERANCE, until rounds["max"] or rounds["budget"] seconds."""
        vals = {m: [] for m in modes}
        cpu = {m: [] for m in modes}
        t0 = time.monotonic()
        r = 0
        while r < rounds["max"]:
            if r >= rounds["min"]:
                lo, hi = median_ci([s / n for s, n in zip(vals["shim"], vals["none"])])
                if (hi - lo) / 2 <= TOLERANCE or time.monotonic() - t0 >= rounds["budget"]:
                    break
            order = modes if r % 2 == 0 else list(reversed(modes))
            got = fn(order)
            for m in order:
                v, c = got[m]
                vals[m].append(v)
                cpu[m].append(c)
            r += 1
        return vals, cpu

    @staticmethod
    def each(one):
        """A round function that runs `one(mode)` for each mode in turn."""
        return lambda order: {m: one(m) for m in order}

    def ratio_rows(self, key, bench, figure, vals, target, better, unit, cpu=None,
                   cpu_label="CPU per operation", scale=1.0):
        """Rows: shim/none with its target; fwd/none and the CPU-time ratios as
        information. Each ratio is taken within a round, then the median."""
        rs = [s / n for s, n in zip(vals["shim"], vals["none"])]
        s = summary(rs)
        s["ci95"] = median_ci(rs)
        ok = s["median"] <= target if better == "lower" else s["median"] >= target
        sign = "<=" if better == "lower" else ">="
        self.row(bench, figure + ", shim/none", fmt_ratio(s), f"{sign} {target:.2f}",
                 "PASS" if ok else "MISS")
        res = dict(ratio_shim=s, target=f"{sign} {target}", pass_=ok, unit=unit, raw=vals)
        if "fwd" in vals:
            fs = summary([f / n for f, n in zip(vals["fwd"], vals["none"])])
            self.row(bench, figure + ", fwd/none", fmt_ratio(fs), "(interposition only)",
                     "info")
            res["ratio_fwd"] = fs
        if cpu and all(c > 0 for v in cpu.values() for c in v):
            cs = summary([s / n for s, n in zip(cpu["shim"], cpu["none"])])
            self.row(bench, cpu_label + ", shim/none", fmt_ratio(cs), "(information)", "info")
            res["cpu_ratio_shim"] = cs
            res["cpu_raw"] = cpu
        self.results[key] = res
        med = {m: statistics.median(v) * scale for m, v in vals.items()}
        self.details.append(f"{bench}: {len(rs)} rounds; median {unit}: " +
                            ", ".join(f"{m} {med[m]:.4g}" for m in vals) +
                            f"; shim/none 95 % CI of the median "
                            f"{s['ci95'][0]:.3f}..{s['ci95'][1]:.3f}")

    # 1, 2: ping-pong ------------------------------------------------------
    def pingpong(self, pairs):
        key = f"pingpong{pairs}"
        p = self.p

        def round_(order):
            argv = [self.prog("pingpong"), "--pairs", str(pairs), "--slices", str(p["slices"]),
                    "--slice-seconds", str(p["slice_s"])]
            res = run_ring([argv] * len(order), [self.env(m) for m in order],
                           timeout=120 + 3 * p["slices"] * p["slice_s"] * len(order))
            return {m: (r["rtt_ns"], r["cpu_ns_per_rt"]) for m, r in zip(order, res)}

        if p["warmup"]:
            round_(["none", "shim", "fwd"])
        rounds = dict(p["rounds"])
        if pairs > 1 and not self.args.smoke:
            rounds["budget"] = rounds["budget"] * 7 // 6  # noisier: 16 threads on the cores
        vals, cpu = self.alternate(rounds, ["none", "shim", "fwd"], round_)
        name = "ping-pong, 1 pair" if pairs == 1 else f"ping-pong, {pairs} pairs in {2 * pairs} threads"
        self.ratio_rows(key, name, "round-trip time", vals, 1.02, "lower", "RTT in us",
                        cpu=cpu, cpu_label="process CPU per round trip", scale=1e-3)

    # 3: bulk ----------------------------------------------------------------
    def bulk(self, api):
        key = f"bulk_{api}"
        p = self.p

        def round_(order):
            argv = [self.prog("bulk"), "--api", api, "--slices", str(p["slices"]),
                    "--slice-seconds", str(p["slice_s"])]
            res = run_ring([argv] * len(order), [self.env(m) for m in order],
                           timeout=120 + 3 * p["slices"] * p["slice_s"] * len(order))
            return {m: (r["MBps"], r["cpu_ns_per_MB"]) for m, r in zip(order, res)}

        if p["warmup"]:
            round_(["none", "shim"])
        vals, cpu = self.alternate(p["bulk_rounds"], ["none", "shim"], round_)
        label = "send/recv" if api == "send" else "writev/readv"
        self.ratio_rows(key, f"bulk 64 KiB, {label}", "throughput", vals, 0.99, "higher",
                        "MB/s", cpu=cpu, cpu_label="process CPU per MB")

    # 4: nginx + wrk ---------------------------------------------------------
    def nginx(self):
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        wrk = shutil.which("wrk")
        if not os.path.exists(nginx) or not wrk:
            raise BenchError("nginx or wrk not installed (scripts/install-bench-deps.sh)")
        tmp = tempfile.mkdtemp(prefix="tkbench-nginx.")
        servers = {}
        try:
            os.chmod(tmp, 0o755)  # the worker may run as another user
            html = os.path.join(tmp, "html")
            os.mkdir(html)
            os.chmod(html, 0o755)
            with open(os.path.join(html, "small.html"), "w") as f:
                f.write("<html><body>" + "libtcpkeep benchmark page. " * 20 + "</body></html>\n")
            os.chmod(os.path.join(html, "small.html"), 0o644)
            for mode in ("none", "shim"):
                servers[mode] = self.start_nginx(nginx, tmp, mode)
            for mode, (proc, port, workers) in servers.items():
                if mode == "shim" and not all(maps_has(w, self.lib) for w in workers):
                    raise BenchError("nginx worker does not have the shim loaded")

            def one(mode):
                port, workers = servers[mode][1], servers[mode][2]
                c0 = sum(proc_cpu_ns(w) for w in workers)
                argv = [wrk, "-t1", f"-c{self.p['nginx_conns']}", f"-d{self.p['nginx_s']}s",
                        f"http://127.0.0.1:{port}/small.html"]
                try:
                    r = subprocess.run(argv, env=self.env_none, capture_output=True, text=True,
                                       timeout=self.p["nginx_s"] + 30,
                                       stdin=subprocess.DEVNULL)
                except subprocess.TimeoutExpired:
                    raise BenchError("wrk did not finish in time")
                m = re.search(r"Requests/sec:\s*([0-9.]+)", r.stdout)
                if r.returncode != 0 or not m:
                    raise BenchError(f"wrk failed: {r.stdout[-300:]} {r.stderr[-300:]}")
                if re.search(r"Non-2xx", r.stdout):
                    raise BenchError(f"nginx answered errors: {r.stdout[-300:]}")
                c1 = sum(proc_cpu_ns(w) for w in workers)
                rps = float(m.group(1))
                return rps, (c1 - c0) / max(1.0, rps * self.p["nginx_s"])

            if self.p["warmup"]:
                one("none")
                one("shim")
            vals, cpu = self.alternate(self.p["nginx_rounds"], ["none", "shim"], self.each(one))
            self.ratio_rows("nginx", "nginx + wrk, keep-alive", "requests/s", vals, 0.98,
                            "higher", "requests/s", cpu=cpu,
                            cpu_label="nginx worker CPU per request")
        finally:
            for proc, port, workers in servers.values():
                self.stop_nginx(proc, workers)
            shutil.rmtree(tmp, ignore_errors=True)

    def start_nginx(self, nginx, tmp, mode):
        for attempt in range(3):
            port = free_port()
            d = os.path.join(tmp, mode)
            os.makedirs(d, exist_ok=True)
            conf = os.path.join(d, "nginx.conf")
            with open(conf, "w") as f:
                f.write(f"""worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    keepalive_requests 100000000;
    default_type text/html;
    server {{
        listen 127.0.0.1:{port};
        root {tmp}/html;
    }}
}}
""")
            proc = Proc([nginx, "-p", d, "-c", conf, "-g", "daemon off;"], self.env(mode),
                        name=f"nginx ({mode})")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and proc.p.poll() is None:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        workers = self.children(proc.pid)
                        if workers:
                            return proc, port, workers
                except OSError:
                    pass
                time.sleep(0.05)
            err = ""
            try:
                with open(os.path.join(d, "error.log")) as f:
                    err = f.read()[-300:]
            except OSError:
                pass
            self.stop_nginx(proc, self.children(proc.pid))
            log(f"nginx ({mode}) did not start on port {port}: {err.strip()} {proc.stderr_tail()}")
        raise BenchError(f"nginx ({mode}) would not start")

    @staticmethod
    def children(pid):
        kids = []
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    kids += [int(x) for x in f.read().split()]
        except OSError:
            pass
        return kids

    def stop_nginx(self, proc, workers):
        proc.stop(signal.SIGTERM, timeout=10)  # the master stops its workers
        for w in workers:  # and if it could not, we do, by PID
            try:
                os.kill(w, 0)
            except OSError:
                continue
            time.sleep(0.5)
            try:
                os.kill(w, signal.SIGKILL)
            except OSError:
                pass

    # 5: accept + close churn -------------------------------------------------
    def churn(self):
        servers = {}
        try:
            for mode in ("none", "shim"):
                proc = Proc([self.prog("churn"), "server", "--max-seconds", "600"],
                            self.env(mode), name=f"churn server ({mode})")
                port = int(proc.readline_until(r"^port (\d+)", 10).group(1))
                servers[mode] = (proc, port)

            def round_(order):
                c0 = {m: proc_cpu_ns(servers[m][0].pid) for m in order}
                r = run_json([self.prog("churn"), "client",
                              "--ports", ",".join(str(servers[m][1]) for m in order),
                              "--seconds", str(self.p["churn_s"]),
                              "--slices", str(self.p["churn_slices"]),
                              "--threads", str(self.p["churn_threads"])],
                             self.env_none, timeout=60 + 2 * self.p["churn_s"])
                out = {}
                for i, m in enumerate(order):
                    if servers[m][0].p.poll() is not None:
                        raise BenchError(f"churn server ({m}) died")
                    cpu = (proc_cpu_ns(servers[m][0].pid) - c0[m]) / max(1, r["conns"][i])
                    out[m] = (r["conns_per_s"][i], cpu)
                return out

            if self.p["warmup"]:
                round_(["none", "shim"])
            vals, cpu = self.alternate(self.p["churn_rounds"], ["none", "shim"], round_)
            self.ratio_rows("churn", "accept + close churn", "connections/s", vals, 0.95,
                            "higher", "connections/s", cpu=cpu,
                            cpu_label="server CPU per connection")
        finally:
            for proc, _ in servers.values():
                proc.stop()

    # 6: many idle connections --------------------------------------------------
    def idle(self):
        target = self.p["idle_target"]
        # Raise our own limit (inherited by the children) if we may.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = target + 4096
        try:
            if hard < want:
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            elif soft < want:
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        per_proc = hard - 128
        count = min(target, per_proc)
        why = ""
        if count < target:
            why = (f"RLIMIT_NOFILE hard limit is {hard} and cannot be raised here "
                   f"(no CAP_SYS_RESOURCE), so one process holds at most {per_proc} sockets")
            count = (count // 1000) * 1000 if count >= 2000 else count
            log(f"idle: {why}: measuring {count} connections, not {target}")
        nclients = max(1, math.ceil(count / per_proc))
        res = dict(target=target, reached={}, limit_reason=why)
        rss = {}
        for mode in ("none", "shim"):
            server = None
            clients = []
            try:
                server = Proc([self.prog("idle"), "server", "--expect", str(count),
                               "--max-seconds", "600"],
                              self.env(mode, idle="1h"), name=f"idle server ({mode})")
                port = int(server.readline_until(r"^port (\d+)", 10).group(1))
                time.sleep(0.2)
                base = proc_status(server.pid, "RssAnon")
                t0 = time.monotonic()
                share = [count // nclients + (1 if i < count % nclients else 0)
                         for i in range(nclients)]
                for i, n in enumerate(share):
                    clients.append(Proc(
                        [self.prog("idle"), "client", "--port", str(port), "--count", str(n),
                         "--addrs", "8", "--addr-base", str(2 + 8 * i), "--max-seconds", "600"],
                        self.env_none, stdin=subprocess.PIPE, name=f"idle client {i}"))
                m = server.readline_until(rf"^(accepted {count}|error .*)$", 180)
                if m.group(1).startswith("error"):
                    raise BenchError(f"idle server ({mode}): {m.group(1)}")
                for c in clients:
                    c.readline_until(r"^connected \d+", 60)
                setup_s = time.monotonic() - t0
                time.sleep(0.5)
                full = proc_status(server.pid, "RssAnon")
                rss[mode] = (base, full)
                res["reached"][mode] = count
                self.details.append(f"idle {count} ({mode}): connected in {setup_s:.1f} s; "
                                    f"server RssAnon {base} kB before, {full} kB after")
                if mode == "shim":
                    if not maps_has(server.pid, self.lib):
                        raise BenchError("idle server does not have the shim loaded")
                    tid = find_task(server.pid, "tcpkeep")
                    if tid is None:
                        raise BenchError("no 'tcpkeep' thread in the idle server")
                    ns0, ticks0 = task_cpu(server.pid, tid)
                    pns0, pticks0 = task_cpu(server.pid, server.pid)
                    w0 = time.monotonic()
                    time.sleep(self.p["cpu_s"])
                    ns1, ticks1 = task_cpu(server.pid, tid)
                    wall = time.monotonic() - w0
                    hz = os.sysconf("SC_CLK_TCK")
                    if ns0 is not None and ns1 is not None:
                        cpu_s = (ns1 - ns0) / 1e9
                        how = "schedstat"
                    else:
                        cpu_s = (ticks1 - ticks0) / hz
                        how = "utime+stime"
                    pct = 100.0 * cpu_s / wall
                    res["watchdog_cpu"] = dict(cpu_s=cpu_s, wall_s=wall, percent=pct, how=how,
                                               ticks=ticks1 - ticks0)
                    self.row(f"{count:,} idle connections (limit 1 h)",
                             "watchdog CPU while nothing is due",
                             f"{pct:.4f} % of a core ({cpu_s * 1e3:.2f} ms in {wall:.0f} s)",
                             "< 1 %", "PASS" if pct < 1.0 else "MISS")
            finally:
                for c in clients:
                    try:
                        c.p.stdin.close()  # they close their sockets (RST) and exit
                    except OSError:
                        pass
                for c in clients:
                    try:
                        c.p.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        pass
                    c.stop()
                if server:
                    server.stop()
        grow = {m: (rss[m][1] - rss[m][0]) * 1024 for m in rss}
        per_conn = (grow["shim"] - grow["none"]) / count
        res["rss_anon_kB"] = rss
        res["bytes_per_conn"] = per_conn
        self.row(f"{count:,} idle connections",
                 "memory the shim adds per connection (RssAnon, shim - none)",
                 f"{per_conn:.1f} bytes", "<= 64 bytes", "PASS" if per_conn <= 64 else "MISS")
        if why:
            self.row(f"{target:,} idle connections", "not reached", f"{count:,} reached",
                     f"{target:,}", "MISS")
            self.details.append(f"idle: {why}")
        self.results["idle"] = res
        self.batch()

    def batch(self):
        n, limit = self.p["batch"], self.p["batch_limit_ms"]
        out = []
        for b in range(self.p["batches"]):
            server = client = None
            try:
                server = Proc([self.prog("idle"), "server", "--expect", str(n), "--stamp",
                               "--max-seconds", "300"],
                              self.env("shim", idle=f"{limit}ms"), name="batch server")
                port = int(server.readline_until(r"^port (\d+)", 10).group(1))
                r = run_json([self.prog("idle"), "client", "--port", str(port), "--count", str(n),
                              "--addrs", "4", "--limit-ms", str(limit), "--wait-s", "3"],
                             self.env_none, timeout=limit / 1000 + 120)
                server.readline_until(r"^stamped", 10)
                out.append(r)
            finally:
                if server:
                    server.stop()
        late_max = max(r["late_max_ms"] for r in out)
        late_p99 = max(r["late_p99_ms"] for r in out)
        late_min = min(r["late_min_ms"] for r in out)
        spread = max(r["stamp_spread_ms"] for r in out)
        bad = sum(r["missing"] + r["before_stamp"] for r in out)
        ok = late_max <= 250 and late_min >= 0 and bad == 0
        self.results["batch"] = dict(runs=out, late_max_ms=late_max, late_p99_ms=late_p99,
                                     late_min_ms=late_min)
        self.row(f"{n:,} due at once (limit {limit / 1000:g} s)",
                 "end-of-file after limit: max / p99 / min",
                 f"{late_max:.1f} / {late_p99:.1f} / {late_min:.1f} ms"
                 + (f", {bad} not cut" if bad else ""),
                 "max <= 250 ms, min >= 0", "PASS" if ok else "MISS")
        self.details.append(f"batch: {len(out)} batch(es) of {n}; the server's stamps (the "
                            f"last activity) were written within {spread:.0f} ms; lateness is "
                            f"measured by the client: end-of-file seen - stamp - limit")

    # 7, 9: callgrind ---------------------------------------------------------
    def callgrind(self):
        vg = shutil.which("valgrind")
        if not vg:
            raise BenchError("valgrind not installed")
        n = self.p["cg_iters"]
        outdir = os.path.join(self.bindir, "callgrind")
        os.makedirs(outdir, exist_ok=True)
        kinds = {
            "tcp": ["--pairs", "1", "--kind", "tcp", "--iters"],
            "pipe": ["--pairs", "1", "--kind", "pipe", "--iters"],
            "pipe+tcp": ["--pairs", "1", "--kind", "pipe", "--with-socket", "--iters"],
            "tcp1": ["--single", "--kind", "tcp", "--iters"],
        }
        jobs = []
        for kind, argv in kinds.items():
            for mode in ("none", "shim", "fwd"):
                for iters in (n, 2 * n):
                    out = os.path.join(outdir, f"{kind}.{mode}.{iters}.out")
                    jobs.append((kind, mode, iters, out,
                                 [vg, "--tool=callgrind", f"--callgrind-out-file={out}",
                                  self.prog("pingpong")] + argv + [str(iters)]))
        running = []
        done = {}
        pending = list(jobs)
        deadline = time.monotonic() + 600
        try:
            while pending or running:
                while pending and len(running) < 2:
                    kind, mode, iters, out, argv = pending.pop(0)
                    if os.path.exists(out):
                        os.unlink(out)
                    p = subprocess.Popen(argv, env=self.env(mode), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                         text=True)
                    running.append((p, (kind, mode, iters, out)))
                time.sleep(0.05)
                for p, job in list(running):
                    if p.poll() is None:
                        if time.monotonic() > deadline:
                            p.kill()
                            p.wait()
                            raise BenchError("callgrind runs took too long")
                        continue
                    running.remove((p, job))
                    err = p.stderr.read()
                    p.stderr.close()
                    if p.returncode != 0 or not os.path.exists(job[3]):
                        for q, _ in running:
                            q.kill()
                            q.wait()
                        raise BenchError(f"callgrind {job}: exit {p.returncode}: {err[-300:]}")
                    done[job[:3]] = parse_callgrind(job[3])
        finally:
            for q, _ in running:  # stopped early: stop what still runs, by PID
                if q.poll() is None:
                    q.kill()
                    q.wait()

        res = {}
        for kind in kinds:
            d = {}
            for mode in ("none", "shim", "fwd"):
                (t1, c1), (t2, c2) = done[(kind, mode, n)], done[(kind, mode, 2 * n)]
                d[mode] = (t2 - t1, {k: c2.get(k, 0) - c1.get(k, 0) for k in set(c1) | set(c2)})
            calls = 4 * n  # 4 interposed calls per round trip or iteration
            extra = {m: (d[m][0] - d["none"][0]) / calls for m in ("shim", "fwd")}
            res[kind] = dict(iters=[n, 2 * n], calls=calls,
                             instr_per_call_none=d["none"][0] / calls,
                             extra_shim=extra["shim"], extra_fwd=extra["fwd"])
            if kind in ("tcp", "tcp1"):
                res[kind]["where"] = where_cost(d, calls, self.lib)
        self.results["callgrind"] = res
        t, p1, p2, s1 = res["tcp"], res["pipe"], res["pipe+tcp"], res["tcp1"]
        self.row("callgrind: ping-pong, tracked TCP socket",
                 "extra instructions per interposed call, shim",
                 f"{t['extra_shim']:.1f}", "<= 40", "PASS" if t["extra_shim"] <= 40 else "MISS")
        self.row("callgrind: ping-pong, tracked TCP socket",
                 "extra instructions per interposed call, fwd", f"{t['extra_fwd']:.1f}",
                 "(interposition only)", "info")
        self.row("callgrind: ping-pong, pipe (untracked), no socket in the process",
                 "extra instructions per interposed call, shim",
                 f"{p1['extra_shim']:.1f}", "<= 12", "PASS" if p1["extra_shim"] <= 12 else "MISS")
        self.row("callgrind: ping-pong, pipe (untracked), no socket in the process",
                 "extra instructions per interposed call, fwd", f"{p1['extra_fwd']:.1f}",
                 "(interposition only)", "info")
        self.row("callgrind: ping-pong, pipe (untracked), beside a tracked socket",
                 "extra instructions per interposed call, shim",
                 f"{p2['extra_shim']:.1f}", "<= 12", "PASS" if p2["extra_shim"] <= 12 else "MISS")
        self.row("callgrind: single-threaded TCP ping-pong",
                 "extra instructions per call, shim (see note)", f"{s1['extra_shim']:.1f}",
                 "(information)", "info")
        self.details.append(
            f"callgrind: {n} and {2 * n} round trips, differenced; the program executes "
            f"{t['instr_per_call_none']:.1f} instructions per call without a preload "
            f"(its own loop + glibc's wrapper). The single-threaded variant: "
            f"{s1['extra_shim']:.1f} extra with the shim, {s1['extra_fwd']:.1f} with fwd.")

    # ------------------------------------------------------------------------
    def shim_version(self):
        """The shim's commit, and whether shim/ differs from it, if in a git tree."""
        top = os.path.dirname(os.path.dirname(self.lib))
        try:
            h = subprocess.run(["git", "-C", top, "log", "-1", "--format=%h", "--", "shim"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
            dirty = subprocess.run(["git", "-C", top, "status", "--porcelain", "--", "shim"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"
        if not h:
            return "not in a git tree"
        return f"shim/ at commit {h}" + (" with uncommitted changes" if dirty else "")

    def machine(self):
        cpu = "?"
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        cpu = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        mem = 0
        try:
            with open("/proc/meminfo") as f:
                mem = int(f.readline().split()[1]) / 1024 / 1024
        except OSError:
            pass
        virt = ""
        try:
            with open("/proc/cpuinfo") as f:
                if " hypervisor" in f.read():
                    virt = ", virtual machine"
        except OSError:
            pass
        libc = " ".join(platform.libc_ver())
        return (f"{os.cpu_count()} x {cpu}{virt}, {mem:.0f} GiB, Linux {platform.release()}, "
                f"{libc}")

    def run(self):
        t0 = time.monotonic()
        self.load0 = os.getloadavg()
        steps = [
            ("ping-pong, 1 pair", lambda: self.pingpong(1)),
            ("ping-pong, 8 pairs", lambda: self.pingpong(8)),
            ("bulk send/recv", lambda: self.bulk("send")),
            ("bulk writev/readv", lambda: self.bulk("writev")),
            ("nginx + wrk", self.nginx),
            ("accept + close churn", self.churn),
            ("idle connections", self.idle),
            ("callgrind", self.callgrind),
        ]
        only = set(self.args.only.split(",")) if self.args.only else None
        for name, fn in steps:
            if only and not any(o in name for o in only):
                continue
            s = time.monotonic()
            log(f"{name} ...")
            try:
                fn()
                log(f"{name}: done in {time.monotonic() - s:.1f} s")
            except Exception as e:  # report and go on with the next benchmark
                self.failed.append(name)
                self.row(name, "failed to run", str(e)[:200], "", "ERROR")
                log(f"{name}: FAILED: {e}")
        self.report(time.monotonic() - t0)
        return 1 if self.failed else 0

    def report(self, elapsed):
        mode = "smoke (tiny sizes; figures not meaningful)" if self.args.smoke else "full"
        machine = self.machine()
        head = ("benchmark", "figure", "median (min..max) / value", "target", "result")
        rows = [head] + [tuple(str(x) for x in r) for r in self.rows]
        w = [max(len(r[i]) for r in rows) for i in range(5)]
        print()
        print(f"libtcpkeep benchmarks ({mode}), {elapsed:.0f} s")
        print(f"machine: {machine}")
        load1 = os.getloadavg()
        version = self.shim_version()
        print(f"shim: {self.lib} ({version}); benchmark processes at nice "
              f"{os.getpriority(os.PRIO_PROCESS, 0)}; load average (1 min) "
              f"{self.load0[0]:.2f} at the start, {load1[0]:.2f} at the end")
        print()
        for i, r in enumerate(rows):
            print("  ".join(r[j].ljust(w[j]) for j in range(5)).rstrip())
            if i == 0:
                print("  ".join("-" * w[j] for j in range(5)))
        print()
        for d in self.details:
            print("  " + d)
        cg = self.results.get("callgrind", {}).get("tcp", {}).get("where")
        cg1 = self.results.get("callgrind", {}).get("tcp1", {}).get("where")
        for title, w in (("tracked TCP ping-pong (2 threads)", cg),
                         ("single-threaded TCP ping-pong", cg1)):
            if w:
                print()
                print(f"  where the cost goes (callgrind, {title}; shim - none, "
                      "instructions per interposed call, by function):")
                for obj, fn, v in w:
                    print(f"    {v:8.2f}  {fn}  [{obj}]")
        misses = [r for r in self.rows if r[4] == "MISS"]
        print()
        print(f"{sum(r[4] == 'PASS' for r in self.rows)} passed, {len(misses)} missed, "
              f"{len(self.failed)} failed to run")
        os.makedirs(self.bindir, exist_ok=True)
        suffix = "-smoke" if self.args.smoke else ""
        with open(os.path.join(self.bindir, f"results{suffix}.json"), "w") as f:
            json.dump(dict(machine=machine, shim=version, elapsed_s=elapsed,
                           smoke=self.args.smoke,
                           rows=self.rows, details=self.details, results=self.results),
                      f, indent=1, default=str)
        with open(os.path.join(self.bindir, f"results{suffix}.md"), "w") as f:
            f.write(f"Machine: {machine}. Shim: {version}. `make bench`, {elapsed:.0f} s; "
                    f"load average "
                    f"{self.load0[0]:.2f} at the start, {load1[0]:.2f} at the end.\n\n")
            f.write("| " + " | ".join(head) + " |\n")
            f.write("|" + "---|" * 5 + "\n")
            for r in self.rows:
                f.write("| " + " | ".join(str(x) for x in r) + " |\n")
            f.write("\n")
            for d in self.details:
                f.write(f"- {d}\n")
            for title, w in (("tracked TCP ping-pong (2 threads)", cg),
                             ("single-threaded TCP ping-pong", cg1)):
                if w:
                    f.write(f"\nWhere the cost goes, {title}: shim - none, instructions "
                            f"per interposed call\n\n| instructions | function | object |\n"
                            f"|---|---|---|\n")
                    for obj, fn, v in w:
                        f.write(f"| {v:.2f} | `{fn}` | {obj} |\n")
        log(f"results in {os.path.join(self.bindir, 'results' + suffix + '.md')} and .json")


# ---------------------------------------------------------------- callgrind files

def parse_callgrind(path):
    """(total Ir, Counter of self Ir by (object, function)) from a callgrind file."""
    names = {"ob": {}, "fn": {}, "fl": {}}
    cost = collections.Counter()
    ob = fn = ""
    skip = False
    total = None

    def name(kind, rest):
        m = re.match(r"\((\d+)\)\s*(.*)", rest)
        if not m:
            return rest
        if m.group(2):
            names[kind][m.group(1)] = m.group(2)
            return m.group(2)
        return names[kind].get(m.group(1), "?")

    with open(path) as f:
        for line in f:
            c = line[:1]
            if c.isdigit() or c in "+-*":
                if skip:  # the inclusive cost of a call: not this function's own
                    skip = False
                    continue
                parts = line.split()
                if len(parts) >= 2:
                    cost[(ob, fn)] += int(parts[1])
            elif line.startswith("ob="):
                ob = name("ob", line[3:].strip())
            elif line.startswith("fn="):
                fn = name("fn", line[3:].strip())
            elif line.startswith(("fl=", "fi=", "fe=")):
                name("fl", line[3:].strip())
            elif line.startswith("cob="):
                name("ob", line[4:].strip())
            elif line.startswith("cfn="):
                name("fn", line[4:].strip())
            elif line.startswith(("cfi=", "cfl=")):
                name("fl", line[4:].strip())
            elif line.startswith("calls="):
                skip = True
            elif line.startswith(("summary:", "totals:")):
                total = int(line.split()[1])
    if total is None:
        total = sum(cost.values())
    return total, cost


def where_cost(d, calls, lib):
    """Functions whose instruction count per call differs between shim and none."""
    none, shim = d["none"][1], d["shim"][1]
    rows = []
    for k in set(none) | set(shim):
        v = (shim.get(k, 0) - none.get(k, 0)) / calls
        if abs(v) >= 0.1:
            rows.append((os.path.basename(k[0]), k[1], round(v, 2)))
    rows.sort(key=lambda r: -abs(r[2]))
    return rows[:15]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lib", required=True, help="the shim, build/libtcpkeep.so")
    ap.add_argument("--bindir", required=True, help="where bench.mk put the programs")
    ap.add_argument("--fwd", help="the forward-only library (default BINDIR/libforward.so)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: does everything run?")
    ap.add_argument("--only", help="comma-separated substrings of benchmark names")
    ap.add_argument("--no-nice", action="store_true",
                    help="do not raise the benchmarks' priority (nice -10, when permitted)")
    args = ap.parse_args()
    for path in (args.lib,):
        if not os.path.exists(path):
            print(f"bench: {path}: not found (run make)", file=sys.stderr)
            return 1
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)

    def stop(signum, frame):  # unwind, so that every started process is stopped
        raise SystemExit(f"bench: signal {signum}")
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    if not args.no_nice:
        # Other work on a shared machine disturbs the figures less when the
        # benchmarks (with and without the shim alike) run at a higher priority.
        try:
            os.nice(-10)
        except OSError:
            pass
    return Bench(args).run()


if __name__ == "__main__":
    sys.exit(main())
