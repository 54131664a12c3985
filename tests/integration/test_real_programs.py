"""Real, unmodified Debian programs under the shim (limit 1 s), each with
its ordinary workload, an active client (a request every 0.3 s for 3 s) and
an idle client at the same time: the workload's results are right (and the
same as without the shim), the idle client is cut on time and the program
closes its side, the active clients are never cut, the shim logs the idle
cut and no other; an unshimmed twin of the same program keeps its idle
client (the control: the cut comes from the shim).

redis-server + redis-benchmark, nginx + wrk/curl, memcached, socat
(forking proxy), python3 http.server, a python3 asyncio server, netcat as
server (nc -l) and as client (nc).
"""
import hashlib
import json
import os
import random
import re
import socket
import subprocess
import threading
import time

import realprog
from helpers import (CUT_SLACK, PYTHON, Fail, Skip, check, cut_window, free_port,
                     handshake_time, run, spawn, timeout, wait_eof)
from realprog import (LIMIT, Active, Client, Control, Ended, Idle, Proto, check_shim_log,
                      debian_python, find_prog, http_proto, log_summary, make_tmpdir,
                      start_server, stop)

WINDOW = LIMIT + CUT_SLACK + 1.0   # how long an idle client waits for its end


def need_prog(*names):
    paths = []
    for n in names:
        p = find_prog(n)
        if not p:
            raise Skip("%s is not installed (scripts/install-deps.sh installs it)" % n)
        paths.append(p)
    return paths


def sha(data):
    return hashlib.sha256(data).hexdigest()


def sha_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def write_random(path, size, seed):
    data = random.Random(seed).randbytes(size)
    with open(path, "wb") as f:
        f.write(data)
    return data


def matrix(name, port, ctl_port, proto, workload, log, backend=None):
    """The common part: idle + active clients on the shimmed program and an
    idle one on its unshimmed twin while `workload()` runs (it returns a
    description, or raises Fail); then every check. (The idle client's
    port, a description.)"""
    idle = Idle(port, WINDOW)
    ctl = Control(ctl_port) if ctl_port else None
    act = Active(port, proto)
    try:
        t = time.monotonic()
        wmsg = workload()
        wdur = time.monotonic() - t
        idle_msg = idle.check_cut("idle client")
        act_msg = act.check("active client")
        ctl_msg = ctl.check("an idle client", proto) if ctl else None
        log_msg = check_shim_log(log, [idle.lport], *(backend or ()))
    except Fail as e:
        raise Fail("%s: %s [idle client port %d, active client port %d; %s]"
                   % (name, e, idle.lport, act.client.lport, log_summary(log)))
    for c in (idle, ctl):
        if c:
            c.close()
    return idle.lport, "%s: %s (%.2f s); %s; %s; %s%s" % (
        name, wmsg, wdur, idle_msg, act_msg, log_msg, "; " + ctl_msg if ctl_msg else "")


def check_alive(name, *procs):
    for p in procs:
        if p.poll() is not None:
            raise Fail("%s exited (status %s) during the test" % (name, p.returncode))


def start_twins(procs, d, name, argv_for):
    """The program (argv_for(port)) under the shim and its unshimmed twin,
    each on a free port, output and logs in d as NAME-shim.* and
    NAME-plain.* (added to procs): {True: the shimmed one's port, False:
    the twin's}."""
    ports = {}
    for shim in (True, False):
        port = free_port()
        ports[shim] = port
        procs.append(start_server(argv_for(port), port, shim, d,
                                  "%s-%s" % (name, "shim" if shim else "plain")))
    return ports


def write_file(d, name, text):
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write(text)
    return path


# The frame of the client workloads: nconn threads each run worker(k) (it
# stores its result in res[k]), then the JSON of summary() on stdout.
WORKLOAD_FRAME = r"""
import hashlib, json, random, socket, sys, threading
port = int(sys.argv[1])
res = {}
%s
ts = [threading.Thread(target=worker, args=(k,)) for k in range(nconn)]
for t in ts: t.start()
for t in ts: t.join(60)
print(json.dumps(summary()))
"""


def run_workload(wl, port, what):
    """Run the workload program wl (unshimmed) against port; its summary."""
    rc, out, err = run([PYTHON, wl, str(port)], shim=False, limit=60)
    check(rc == 0, "%s workload exit %d: %r" % (what, rc, err[-600:]))
    return json.loads(out.strip().splitlines()[-1])


def spawn_curls(curl, url, outs):
    """One curl fetch of url into each path of outs, all at once."""
    return [(out, spawn([curl, "-sS", "--fail", "-o", out, url], shim=False,
                        stdin=subprocess.DEVNULL)) for out in outs]


def curl_sums(fetches):
    """Wait for each fetch of spawn_curls (30 s each); the sha256 of each file."""
    sums = []
    for path, p in fetches:
        try:
            _, cerr = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            raise Fail("curl did not finish within 30 s")
        check(p.returncode == 0, "curl exit %d: %r" % (p.returncode, cerr))
        sums.append(sha_file(path))
    return sums


# --------------------------------------------------------------------------
# redis-server + redis-benchmark

def resp(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def resp_reply(c):
    line = c.readline()
    kind, body = line[:1], line[1:].rstrip(b"\r\n")
    if kind == b"$":
        n = int(body)
        return None if n < 0 else c.readexact(n + 2)[:-2]
    if kind == b"-":
        raise Fail("redis error reply: %r" % body)
    if kind in (b"+", b":"):
        return body
    raise Fail("unexpected redis reply %r" % line[:80])


def redis_cmd(c, *args):
    c.send(resp(*args))
    return resp_reply(c)


def _redis_payload(c, i):
    return ("tcpkeep-%d-%d-" % (c.lport, i)).encode() * 20


def _redis_reply(c, i):
    if resp_reply(c) != b"PONG":
        raise Fail("PING did not get PONG")
    got = resp_reply(c)
    if got != _redis_payload(c, i):
        raise Fail("ECHO returned %r..., expected %r..." % (got and got[:40],
                                                          _redis_payload(c, i)[:40]))


# PING, then ECHO of a payload that changes every time.
REDIS = Proto(lambda c, i: resp("PING") + resp("ECHO", _redis_payload(c, i)), _redis_reply)


BENCH_N = 10000
BENCH_TESTS = ("set", "get", "incr", "lpush")


def redis_bench(bench, port):
    """Run redis-benchmark against port; then what the server says it did."""
    rc, out, err = run([bench, "-h", "127.0.0.1", "-p", str(port), "-c", "10", "-n",
                        str(BENCH_N), "-t", ",".join(BENCH_TESTS)], shim=False, limit=90)
    text = out + err
    if rc != 0 or re.search(r"\berror\b", text, re.I):
        raise Fail("redis-benchmark (port %d) exit %d: %r" % (port, rc, text[-600:]))
    done = {m.group(1): int(m.group(2)) for m in
            re.finditer(r"====== (\S+) ======\s+(\d+) requests completed in", text)}
    c = Client(port)
    try:
        info = redis_cmd(c, "INFO", "all").decode()
        res = {"completed": done,
               "counter": redis_cmd(c, "GET", "counter:__rand_int__"),
               "key": redis_cmd(c, "GET", "key:__rand_int__"),
               "llen": redis_cmd(c, "LLEN", "mylist")}
    finally:
        c.close()
    calls = dict(re.findall(r"^cmdstat_([^:]+):calls=(\d+)", info, re.M))
    res["calls"] = {k: int(calls.get(k, 0)) for k in BENCH_TESTS + ("config|get",)}
    for k in ("rejected_connections", "total_error_replies", "unexpected_error_replies"):
        m = re.search(r"^%s:(\d+)" % k, info, re.M)
        res[k] = int(m.group(1)) if m else None
    return res


@timeout(60)
def test_real_redis_benchmark():
    """redis-server (its own `timeout 0`) under the shim, driven by
    redis-benchmark: every request completed, same counts and data as an
    unshimmed redis-server; idle client cut, active client kept."""
    server, bench = need_prog("redis-server", "redis-benchmark")
    d = make_tmpdir()
    procs = []
    try:
        ports = start_twins(procs, d, "redis", lambda port: [
            server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--daemonize", "no", "--timeout", "0",
            "--dir", d, "--logfile", ""])
        got = {}

        def workload():
            got[True] = redis_bench(bench, ports[True])
            return "redis-benchmark %s" % " ".join(
                "%s %d" % (k, v) for k, v in sorted(got[True]["completed"].items()))

        _, msg = matrix("redis-server", ports[True], ports[False], REDIS, workload,
                     os.path.join(d, "redis-shim.tcpkeep.log"))
        got[False] = redis_bench(bench, ports[False])
        check_alive("redis-server", *procs)
        want = {t.upper(): BENCH_N for t in BENCH_TESTS}
        for shim in (True, False):
            r = got[shim]
            who = "with the shim" if shim else "without the shim"
            check(r["completed"] == want, "redis-benchmark %s completed %s, expected %s"
                  % (who, r["completed"], want))
            check(r["counter"] == str(BENCH_N).encode() and r["llen"] == str(BENCH_N).encode(),
                  "%s: INCR counter = %r, LPUSH list length = %r, expected %d each"
                  % (who, r["counter"], r["llen"], BENCH_N))
            check(r["rejected_connections"] == 0 and r["total_error_replies"] == 0,
                  "%s: rejected_connections=%s total_error_replies=%s"
                  % (who, r["rejected_connections"], r["total_error_replies"]))
        check(got[True] == got[False], "redis-benchmark results differ: with the shim %s, "
              "without %s" % (got[True], got[False]))
        return "%s; results identical without the shim (%s)" % (
            msg, ", ".join("%s=%d" % kv for kv in sorted(got[True]["calls"].items())))
    finally:
        for p in procs:
            stop(p)


# --------------------------------------------------------------------------
# nginx + wrk + curl

NGINX_CONF = """
%(user)s
worker_processes 2;
pid %(d)s/nginx.pid;
error_log %(d)s/error.log warn;
events { worker_connections 512; }
http {
    access_log off;
    sendfile on;
    keepalive_timeout 75s;
    default_type application/octet-stream;
    client_body_temp_path %(d)s/body;
    %(temps)s
    server {
        listen 127.0.0.1:%(port)d;
        root %(root)s;
    }
}
"""


def nginx_conf(nginx, d, port, root):
    v = subprocess.run([nginx, "-V"], capture_output=True, text=True, timeout=10).stderr
    temps = ["%s_temp_path %s/%s;" % (m, d, m) for m in ("proxy", "fastcgi", "uwsgi", "scgi")
             if "--without-http_%s_module" % m not in v]
    path = os.path.join(d, "nginx.conf")
    with open(path, "w") as f:
        f.write(NGINX_CONF % {"d": d, "port": port, "root": root, "temps": "\n    ".join(temps),
                              "user": "user root;" if os.geteuid() == 0 else ""})
    return path


def nginx_errors(d):
    try:
        with open(os.path.join(d, "error.log"), errors="replace") as f:
            return [ln for ln in f.read().splitlines()
                    if re.search(r"\[(error|crit|alert|emerg)\]", ln)]
    except OSError:
        return []


@timeout(60)
def test_real_nginx():
    """nginx (2 workers, sendfile) under the shim serving files: wrk for 2 s
    with no socket error and no non-2xx answer, curl fetches of a 4 MB file
    with the right sha256; idle client cut, keep-alive client kept."""
    nginx, wrk, curl = need_prog("nginx", "wrk", "curl")
    root = make_tmpdir()
    small = write_random(os.path.join(root, "small.bin"), 4096, 1)
    big = write_random(os.path.join(root, "big.bin"), 4 << 20, 2)
    procs, dirs = [], {}
    try:
        ports = {}
        for shim in (True, False):
            d = make_tmpdir()
            port = free_port()
            ports[shim], dirs[shim] = port, d
            conf = nginx_conf(nginx, d, port, root)
            procs.append(start_server([nginx, "-p", d, "-c", conf, "-e", d + "/error.log",
                                       "-g", "daemon off;"], port, shim, d, "nginx"))
        base = "http://127.0.0.1:%d/" % ports[True]

        def workload():
            fetches = spawn_curls(curl, base + "big.bin",
                                  [os.path.join(dirs[True], "fetch%d" % i) for i in range(3)])
            rc, out, err = run([wrk, "-t2", "-c8", "-d2s", base + "small.bin"], shim=False,
                               limit=30)
            check(rc == 0, "wrk exit %d: %r" % (rc, (out + err)[-500:]))
            m = re.search(r"(\d+) requests in ([\d.]+)s", out)
            check(m and int(m.group(1)) > 0, "wrk made no request: %r" % out[-500:])
            check("Socket errors" not in out and "Non-2xx" not in out,
                  "wrk saw errors under the shim: %r" % out[-600:])
            bad = [s for s in curl_sums(fetches) if s != sha(big)]
            check(not bad, "curl fetched %d of 3 copies of big.bin with a wrong sha256"
                  % len(bad))
            return ("wrk %s requests in %s s, no error; 3 curl fetches of the 4 MB file, "
                    "sha256 %s... as the file" % (m.group(1), m.group(2), sha(big)[:12]))

        _, msg = matrix("nginx", ports[True], ports[False], http_proto("/small.bin", small),
                     workload, os.path.join(dirs[True], "nginx.tcpkeep.log"))
        check_alive("nginx", *procs)
        for shim in (True, False):
            errs = nginx_errors(dirs[shim])
            check(not errs, "nginx (%s) logged errors: %r"
                  % ("shim" if shim else "no shim", errs[:4]))
        return msg + "; nginx error.log clean"
    finally:
        for p in procs:
            stop(p, sig=15)


# --------------------------------------------------------------------------
# memcached

MEMCACHED_WORKLOAD = WORKLOAD_FRAME % r"""
nconn, nops = 4, 300

def worker(k):
    rnd = random.Random(k)
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    f = s.makefile("rb")
    ok = bad = 0
    for i in range(nops):
        key = b"w%d:%d" % (k, i)
        val = rnd.randbytes(rnd.choice([1, 100, 1000, 10000, 100000]))
        s.sendall(b"set %s %d 0 %d\r\n%s\r\n" % (key, i, len(val), val))
        if f.readline() != b"STORED\r\n":
            bad += 1
            continue
        s.sendall(b"get %s\r\n" % key)
        hdr = f.readline().split()
        if hdr[:3] != [b"VALUE", key, b"%d" % i] or int(hdr[3]) != len(val):
            bad += 1
            continue
        data = f.read(len(val) + 2)
        if data[:-2] != val or f.readline() != b"END\r\n":
            bad += 1
            continue
        ok += 1
    s.sendall(b"set c%d 0 0 1\r\n0\r\n" % k)
    f.readline()
    for i in range(200):
        s.sendall(b"incr c%d 1\r\n" % k)
        if f.readline() != b"%d\r\n" % (i + 1):
            bad += 1
    s.close()
    res[k] = (ok, bad)

def summary():
    return {"ok": sum(v[0] for v in res.values()), "bad": sum(v[1] for v in res.values()),
            "conns": len(res), "expected": nconn * nops}
"""


def _mc_val(c, i):
    return (b"%d:%d:" % (c.lport, i)) * (1 + i * 37 % 200)


def _mc_request(c, i):
    key, val = b"active:%d:%d" % (c.lport, i), _mc_val(c, i)
    return b"set %s 7 0 %d\r\n%s\r\nget %s\r\n" % (key, len(val), val, key)


def _mc_reply(c, i):
    key, val = b"active:%d:%d" % (c.lport, i), _mc_val(c, i)
    r = c.readline()
    if r != b"STORED\r\n":
        raise Fail("set: %r" % r)
    hdr = c.readline()
    if hdr != b"VALUE %s 7 %d\r\n" % (key, len(val)):
        raise Fail("get: %r" % hdr)
    if c.readexact(len(val) + 2) != val + b"\r\n" or c.readline() != b"END\r\n":
        raise Fail("get returned a different value")


MEMCACHED = Proto(_mc_request, _mc_reply)   # set a value, get it back


@timeout(60)
def test_real_memcached():
    """memcached (text protocol, 4 threads) under the shim: 4 clients x 300
    set/get round trips of values up to 100 KB and 200 incr each, all
    right; idle client cut, active client kept."""
    memcached, = need_prog("memcached")
    d = make_tmpdir()
    wl = write_file(d, "workload.py", MEMCACHED_WORKLOAD)
    procs = []
    try:
        as_root = ["-u", "root"] if os.geteuid() == 0 else []
        ports = start_twins(procs, d, "memcached", lambda port: [
            memcached, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-t", "4", "-m", "128",
            "-c", "1024"] + as_root)

        def workload():
            r = run_workload(wl, ports[True], "memcached")
            check(r["bad"] == 0 and r["ok"] == r["expected"] and r["conns"] == 4,
                  "memcached workload: %s" % r)
            return "%d set/get round trips and 800 incr, all values right" % r["ok"]

        _, msg = matrix("memcached", ports[True], ports[False], MEMCACHED, workload,
                     os.path.join(d, "memcached-shim.tcpkeep.log"))
        check_alive("memcached", *procs)
        return msg
    finally:
        for p in procs:
            stop(p)


# --------------------------------------------------------------------------
# socat: a forking proxy in front of an echo backend

ECHO_WORKLOAD = WORKLOAD_FRAME % r"""
nconn, size = 4, 2 << 20

def worker(k):
    data = random.Random(k).randbytes(size)
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    def send():
        for i in range(0, size, 65536):
            s.sendall(data[i:i + 65536])
    t = threading.Thread(target=send)
    t.start()
    h, got = hashlib.sha256(), 0
    while got < size:
        b = s.recv(1 << 20)
        if not b:
            break
        h.update(b)
        got += len(b)
    t.join(30)
    s.close()
    res[k] = (got, h.hexdigest() == hashlib.sha256(data).hexdigest())

def summary():
    return {"conns": len(res), "bytes": sum(v[0] for v in res.values()),
            "good": sum(1 for v in res.values() if v[0] == size and v[1]),
            "expected": nconn, "size": size}
"""


def _line(c, i):
    return b"line %d from %d %s\n" % (i, c.lport, b"y" * (i * 13 % 300))


def _line_reply(c, i):
    got = c.readline()
    if got != _line(c, i):
        raise Fail("echoed %r, sent %r" % (got[:60], _line(c, i)[:60]))


LINE_ECHO = Proto(_line, _line_reply)


@timeout(60)
def test_real_socat_forking_proxy():
    """socat TCP-LISTEN,fork -> TCP (a forking proxy, the shim in both the
    accepted and the connected leg) in front of an unshimmed socat echo:
    4 clients echo 2 MB each through it intact; idle client cut by its
    child, active client kept."""
    socat, = need_prog("socat")
    d = make_tmpdir()
    wl = write_file(d, "workload.py", ECHO_WORKLOAD)
    procs = []
    try:
        bport = free_port()
        procs.append(start_server([socat, "TCP-LISTEN:%d,bind=127.0.0.1,reuseaddr,fork" % bport,
                                   "EXEC:cat"], bport, False, d, "socat-backend"))
        ports = start_twins(procs, d, "socat", lambda port: [
            socat, "TCP-LISTEN:%d,bind=127.0.0.1,reuseaddr,fork" % port,
            "TCP:127.0.0.1:%d" % bport])

        def workload():
            r = run_workload(wl, ports[True], "echo")
            check(r["good"] == r["expected"] == r["conns"],
                  "through the proxy: %s (each should echo %d bytes intact)" % (r, r["size"]))
            return "%d clients echoed %d MB each through the proxy, sha256 intact" % (
                r["good"], r["size"] >> 20)

        _, msg = matrix("socat proxy", ports[True], ports[False], LINE_ECHO, workload,
                     os.path.join(d, "socat-shim.tcpkeep.log"), backend=(1, bport))
        check_alive("socat", *procs)
        return msg
    finally:
        for p in procs:
            stop(p)


# --------------------------------------------------------------------------
# python3 http.server

@timeout(60)
def test_real_python_http_server():
    """python3 -m http.server (Debian's python3, HTTP/1.1, threaded) under
    the shim: 4 parallel curl fetches of a 3 MB file with the right sha256;
    idle client cut, keep-alive client kept."""
    curl, = need_prog("curl")
    py = debian_python()
    root = make_tmpdir()
    small = write_random(os.path.join(root, "small.bin"), 2048, 3)
    big = write_random(os.path.join(root, "big.bin"), 3 << 20, 4)
    d = make_tmpdir()
    procs = []
    try:
        ports = start_twins(procs, d, "http", lambda port: [
            py, "-m", "http.server", "-b", "127.0.0.1", "-d", root, "-p", "HTTP/1.1", str(port)])

        def workload():
            fetches = spawn_curls(curl, "http://127.0.0.1:%d/big.bin" % ports[True],
                                  [os.path.join(d, "fetch%d" % i) for i in range(4)])
            for got in curl_sums(fetches):
                check(got == sha(big), "curl fetched big.bin with a wrong sha256")
            return "4 parallel curl fetches of the 3 MB file, sha256 %s... as the file" % (
                sha(big)[:12])

        _, msg = matrix("python3 http.server", ports[True], ports[False],
                     http_proto("/small.bin", small), workload,
                     os.path.join(d, "http-shim.tcpkeep.log"))
        check_alive("python3 http.server", *procs)
        return msg + " (%s)" % py
    finally:
        for p in procs:
            stop(p)


# --------------------------------------------------------------------------
# a python3 asyncio server

ASYNCIO_SERVER = r"""
import asyncio, random, sys

async def handle(reader, writer):
    peer = writer.get_extra_info("peername")[1]
    how = "eof"
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            if line.startswith(b"BULK "):
                _, n, seed = line.split()
                data = random.Random(int(seed)).randbytes(int(n))
                writer.write(b"%d\n" % len(data))
                writer.write(data)
            else:
                writer.write(line)
            await writer.drain()
    except ConnectionError as e:
        how = type(e).__name__
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass
        print("closed %d %s" % (peer, how), flush=True)

async def main():
    srv = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    async with srv:
        await srv.serve_forever()

asyncio.run(main())
"""

ASYNCIO_WORKLOAD = WORKLOAD_FRAME % r"""
nconn, rounds = 6, 300

def worker(k):
    rnd = random.Random(k)
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    f = s.makefile("rb")
    ok = 0
    for i in range(rounds):
        line = b"%d %d %s\n" % (k, i, bytes(rnd.randrange(97, 123) for _ in range(rnd.randrange(1, 2000))))
        s.sendall(line)
        ok += f.readline() == line
    for seed in (k, k + 100):
        n = 500000 + seed
        s.sendall(b"BULK %d %d\n" % (n, seed))
        ok += int(f.readline()) == n and f.read(n) == random.Random(seed).randbytes(n)
    s.close()
    res[k] = ok

def summary():
    return {"ok": sum(res.values()), "expected": nconn * (rounds + 2), "conns": len(res)}
"""


@timeout(60)
def test_real_python_asyncio_server():
    """A python3 asyncio (epoll) line-echo server under the shim: 6 clients
    x 300 echoes + 2 bulk answers of 0.5 MB, all right; the idle client is
    cut, the server sees it as end-of-file and closes it; active kept."""
    py = debian_python()
    d = make_tmpdir()
    srv = write_file(d, "server.py", ASYNCIO_SERVER)
    wl = write_file(d, "workload.py", ASYNCIO_WORKLOAD)
    procs = []
    try:
        ports = start_twins(procs, d, "asyncio", lambda port: [py, srv, str(port)])

        def workload():
            r = run_workload(wl, ports[True], "asyncio")
            check(r["ok"] == r["expected"] and r["conns"] == 6, "asyncio workload: %s" % r)
            return "%d echoes and bulk answers, all right" % r["ok"]

        lport, msg = matrix("python3 asyncio server", ports[True], ports[False], LINE_ECHO,
                            workload, os.path.join(d, "asyncio-shim.tcpkeep.log"))
        check_alive("asyncio server", *procs)
        with open(os.path.join(d, "asyncio-shim.out")) as f:
            out = f.read()
        check("closed %d eof" % lport in out,
              "the asyncio server did not report end-of-file on the idle connection "
              "(port %d): %r" % (lport, out[-400:]))
        return msg + "; the server's handler saw end-of-file and closed (%s)" % py
    finally:
        for p in procs:
            stop(p)


# --------------------------------------------------------------------------
# netcat, both roles

CHUNK, CHUNKS, PACE = 32768, 15, 0.2   # a 480 KB upload paced over 3 s


def paced_upload(send, seed):
    """Send CHUNKS chunks, one every PACE s; returns the data sent."""
    data = random.Random(seed).randbytes(CHUNK * CHUNKS)
    t = time.monotonic()
    for i in range(CHUNKS):
        send(data[i * CHUNK:(i + 1) * CHUNK])
        time.sleep(max(0.0, t + (i + 1) * PACE - time.monotonic()))
    return data


def _nc_idle_server(nc, d, name, shim):
    port = free_port()
    p = spawn([nc, "-l", "127.0.0.1", str(port)], shim=shim,
              env=realprog.shim_env(os.path.join(d, name + ".tcpkeep.log")) if shim else None,
              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    realprog.wait_listen_port(port, p)
    return p, port


@timeout(45)
def test_real_nc_server():
    """nc -l under the shim: a client downloads 1 MB (nc's stdin) while it
    uploads 480 KB paced over 3 s (nc's stdout): both intact, never cut;
    another nc -l with an idle client: cut on time and nc exits; an
    unshimmed nc -l keeps its idle client."""
    nc, = need_prog("nc")
    d = make_tmpdir()
    down = write_random(os.path.join(d, "down.bin"), 1 << 20, 5)
    procs = []
    log_a, log_b = os.path.join(d, "nc-a.tcpkeep.log"), os.path.join(d, "nc-b.tcpkeep.log")
    try:
        # the busy one
        port = free_port()
        with open(os.path.join(d, "down.bin"), "rb") as fin, \
                open(os.path.join(d, "up.out"), "wb") as fout:
            a = spawn([nc, "-l", "127.0.0.1", str(port)], env=realprog.shim_env(log_a),
                      stdin=fin, stdout=fout, stderr=subprocess.PIPE)
        procs.append(a)
        realprog.wait_listen_port(port, a)
        # the idle one and its unshimmed twin
        b, bport = _nc_idle_server(nc, d, "nc-b", True)
        c, cport = _nc_idle_server(nc, d, "nc-c", False)
        procs += [b, c]

        busy = Client(port)
        idle = Idle(bport, WINDOW)
        ctl = Control(cport)
        got = {}

        def reader():
            h, n, end = hashlib.sha256(), 0, None
            try:
                while True:
                    x = busy.sock.recv(1 << 20)
                    if not x:
                        end = "eof"
                        break
                    h.update(x)
                    n += len(x)
            except (ConnectionResetError, socket.timeout) as e:
                end = type(e).__name__
            got.update(n=n, sha=h.hexdigest(), end=end, t=time.monotonic())
        rt = threading.Thread(target=reader, daemon=True)
        rt.start()
        try:
            up = paced_upload(busy.send, 6)
        except Ended as e:
            raise Fail("the busy nc connection ended during the paced upload (%s) %.3f s "
                       "after connecting" % (e, time.monotonic() - busy.t0))
        t_shut = time.monotonic()
        busy.sock.shutdown(socket.SHUT_WR)
        rt.join(10)
        try:
            rc = a.wait(timeout=5)
        except subprocess.TimeoutExpired:
            raise Fail("nc -l did not exit within 5 s of the client's end-of-file")
        check(got.get("end") == "eof" and got["t"] >= t_shut,
              "the busy connection ended (%s) before the client finished (%.3f s before)"
              % (got.get("end"), t_shut - got.get("t", t_shut)))
        check(got["n"] == len(down) and got["sha"] == sha(down),
              "download through nc -l: %d bytes, sha256 %s; expected %d bytes, %s"
              % (got["n"], got["sha"][:12], len(down), sha(down)[:12]))
        upsum = sha_file(os.path.join(d, "up.out"))
        check(rc == 0 and upsum == sha(up), "nc -l exit %d; it wrote an upload with sha256 "
              "%s, expected %s" % (rc, upsum[:12], sha(up)[:12]))
        busy.close()
        idle_msg = idle.check_cut("idle client")
        try:
            brc = b.wait(timeout=2)
        except subprocess.TimeoutExpired:
            raise Fail("%s, but nc -l did not exit within 2 s" % idle_msg)
        ctl_msg = ctl.check("an idle client")
        log_msg = check_shim_log(log_b, [idle.lport])
        cuts, other = realprog.shim_log(log_a)
        check(not cuts and not other, "the shim cut the busy nc connection: %s %s"
              % (cuts, other))
        return ("busy nc -l: 1 MB down and 480 KB up paced over %.1f s, both sha256 intact, "
                "never cut; %s, nc exited %d; %s; %s" % (t_shut - busy.t0, idle_msg, brc,
                                                         log_msg, ctl_msg))
    except Fail as e:
        raise Fail("%s [busy nc -l: %s; idle nc -l: %s]" % (e, log_summary(log_a),
                                                          log_summary(log_b)))
    finally:
        for p in procs:
            stop(p)


@timeout(45)
def test_real_nc_client():
    """nc (client) under the shim to a plain server: 1 MB down (nc's stdout)
    while 480 KB go up paced over 3 s (nc's stdin): both intact, never cut;
    another nc left idle: the server sees its end on time and nc exits; an
    unshimmed nc is not cut."""
    nc, = need_prog("nc")
    d = make_tmpdir()
    down = random.Random(7).randbytes(1 << 20)
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(8)
    ls.settimeout(5)
    port = ls.getsockname()[1]
    procs = []
    conns = []

    def start(name, shim, stdout):
        env = realprog.shim_env(os.path.join(d, name + ".tcpkeep.log")) if shim else None
        p = spawn([nc, "127.0.0.1", str(port)], shim=shim, env=env, stdin=subprocess.PIPE,
                  stdout=stdout, stderr=subprocess.PIPE, text=False)
        procs.append(p)
        try:
            conn, _ = ls.accept()
        except socket.timeout:
            raise Fail("nc (%s) did not connect within 5 s: %r" % (name, realprog.stop(p)))
        conns.append(conn)
        conn.settimeout(10)
        return p, conn, handshake_time(conn)

    try:
        with open(os.path.join(d, "down.out"), "wb") as fout:
            a, ca, _ = start("nc-a", True, fout)
        b, cb, tb = start("nc-b", True, subprocess.DEVNULL)
        c, cc, tc = start("nc-c", False, subprocess.DEVNULL)
        idle = {}

        def watch(name, conn, t0):
            end, _, how = wait_eof(conn, WINDOW)
            idle[name] = (end and end - t0, how)
        watchers = [threading.Thread(target=watch, args=("b", cb, tb), daemon=True),
                    threading.Thread(target=watch, args=("c", cc, tc), daemon=True)]
        for w in watchers:
            w.start()

        got = {}

        def server():   # send 1 MB, read the upload, then close
            try:
                ca.sendall(down)
                h, n = hashlib.sha256(), 0
                while n < CHUNK * CHUNKS:
                    x = ca.recv(1 << 20)
                    if not x:
                        break
                    h.update(x)
                    n += len(x)
                got.update(n=n, sha=h.hexdigest(), t=time.monotonic())
            except OSError as e:
                got.update(err=repr(e))
            ca.close()
        st = threading.Thread(target=server, daemon=True)
        st.start()

        def to_nc(chunk):
            a.stdin.write(chunk)
            a.stdin.flush()
        t_up = time.monotonic()
        try:
            up = paced_upload(to_nc, 8)
        except BrokenPipeError:
            raise Fail("nc exited during the paced upload, %.3f s in (status %s)"
                       % (time.monotonic() - t_up, a.poll()))
        a.stdin.close()
        st.join(10)
        try:
            rc = a.wait(timeout=5)
        except subprocess.TimeoutExpired:
            raise Fail("nc did not exit within 5 s of the server closing")
        check("err" not in got, "the server's side of the busy nc connection: %s"
              % got.get("err"))
        check(got.get("n") == len(up) and got.get("sha") == sha(up),
              "upload through nc: %s bytes, expected %d intact" % (got.get("n"), len(up)))
        dsum = sha_file(os.path.join(d, "down.out"))
        check(rc == 0 and dsum == sha(down), "nc exit %d; it wrote a download with sha256 %s, "
              "expected %s" % (rc, dsum[:12], sha(down)[:12]))

        for w in watchers:
            w.join(WINDOW + 2)
        end_b, how_b = idle.get("b", (None, None))
        idle_msg = cut_window(end_b, LIMIT, "idle nc's connection cut", "the handshake",
                              early=0.01)
        try:
            brc = b.wait(timeout=2)
        except subprocess.TimeoutExpired:
            raise Fail("%s, but that nc did not exit within 2 s" % idle_msg)
        end_c, how_c = idle.get("c", (None, None))
        check(end_c is None, "the unshimmed idle nc's connection ended (%s) %.3f s after the "
              "handshake: the control is broken" % (how_c, end_c or 0))
        check(c.poll() is None, "the unshimmed idle nc exited (%s)" % c.returncode)
        ctl_age = time.monotonic() - tc
        log_msg = check_shim_log(os.path.join(d, "nc-b.tcpkeep.log"), [port])
        cuts, other = realprog.shim_log(os.path.join(d, "nc-a.tcpkeep.log"))
        check(not cuts and not other, "the shim cut the busy nc connection: %s %s"
              % (cuts, other))
        return ("busy nc: 1 MB down and 480 KB up paced over %.1f s, both sha256 intact, "
                "never cut; %s (seen as %s by the server), nc exited %d; %s; without the "
                "shim, the idle nc still connected after %.2f s"
                % (got["t"] - t_up, idle_msg, how_b, brc, log_msg, ctl_age))
    except Fail as e:
        raise Fail("%s [busy nc: %s; idle nc: %s]" % (
            e, log_summary(os.path.join(d, "nc-a.tcpkeep.log")),
            log_summary(os.path.join(d, "nc-b.tcpkeep.log"))))
    finally:
        for p in procs:
            stop(p)
        for s in conns + [ls]:
            s.close()
