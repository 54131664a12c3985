"""Two network namespaces joined by a veth pair, made by the test itself,
and ways to make one side vanish.

    pair = NetPair()                  # Skip when not root or iproute2 is missing
    try:
        pair.setup()                  # Skip when namespaces or the veth cannot be made
        p = pair.spawn("b", [...])    # a process inside namespace b
        t, how = pair.vanish()        # from now on a hears nothing from b
    finally:
        pair.close()                  # kills its processes, deletes both namespaces

Every address is private and lives only inside the two namespaces
(10.213.0.1/30 - 10.213.0.2/30 and the ULA fd74:6370:6b00::1/64 - ::2/64);
no packet can leave them: the only link is the veth between them, and the
namespaces have no other route. Names carry the PID and a random part, so a
crashed run never blocks the next one. Every command is bounded.
"""
import json
import os
import secrets
import subprocess
import time

import helpers
from helpers import Fail, Skip

V4 = ("10.213.0.1", "10.213.0.2", 30)
V6 = ("fd74:6370:6b00::1", "fd74:6370:6b00::2", 64)
SIDES = ("a", "b")


def _run(argv, limit=10):
    """Run an iproute2 command: (returncode, combined output)."""
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=limit)
    except subprocess.TimeoutExpired:
        return 124, "%s: timed out after %s s" % (" ".join(argv), limit)
    except OSError as e:
        return 127, "%s: %s" % (argv[0], e)
    return r.returncode, (r.stdout + r.stderr).strip()


class NetPair:
    def __init__(self):
        if os.geteuid() != 0:
            raise Skip("not root: creating network namespaces needs CAP_NET_ADMIN")
        for prog in ("ip", "tc"):
            if not helpers.which(prog) and not os.access("/usr/sbin/" + prog, os.X_OK) \
                    and not os.access("/sbin/" + prog, os.X_OK):
                raise Skip("%s (iproute2) is not installed" % prog)
        tag = "%d%s" % (os.getpid() % 100000, secrets.token_hex(2))
        self.ns = {"a": "tcpkeep-dp-%s-a" % tag, "b": "tcpkeep-dp-%s-b" % tag}
        self.dev = {"a": "tkd%sa" % tag, "b": "tkd%sb" % tag}   # <= 15 characters
        self.addr4 = {"a": V4[0], "b": V4[1]}
        self.addr6 = {"a": V6[0], "b": V6[1]}
        self.ipv6 = False
        self.ipv6_note = ""
        self.method = self.kind = None
        self.procs = []
        self.made = []

    # -- setup ------------------------------------------------------------

    def _ip(self, *args, side=None, what=None, skip=False):
        argv = [self._prog("ip")] + (["-n", self.ns[side]] if side else []) + list(args)
        rc, out = _run(argv)
        if rc != 0 and what:
            raise (Skip if skip else Fail)("%s: `%s` failed: %s" % (what, " ".join(argv), out))
        return rc, out

    @staticmethod
    def _prog(name):
        for d in ("/usr/sbin", "/sbin", "/usr/bin", "/bin"):
            if os.access(os.path.join(d, name), os.X_OK):
                return os.path.join(d, name)
        return helpers.which(name) or name

    def setup(self):
        for side in SIDES:
            self._ip("netns", "add", self.ns[side], what="cannot create a network namespace",
                     skip=True)
            self.made.append(self.ns[side])
        self._ip("link", "add", self.dev["a"], "netns", self.ns["a"], "type", "veth",
                 "peer", "name", self.dev["b"], "netns", self.ns["b"],
                 what="cannot create a veth pair (needs CAP_NET_ADMIN and veth support)",
                 skip=True)
        for side in SIDES:
            self._ip("link", "set", "lo", "up", side=side, what="loopback up")
            self._ip("addr", "add", "%s/%d" % (self.addr4[side], V4[2]), "dev",
                     self.dev[side], side=side, what="IPv4 address")
        # IPv6 is optional: a kernel booted with ipv6.disable=1 still runs the IPv4 part.
        self.ipv6 = True
        for side in SIDES:
            rc, out = self._ip("-6", "addr", "add", "%s/%d" % (self.addr6[side], V6[2]),
                               "dev", self.dev[side], "nodad", side=side)
            if rc != 0:
                self.ipv6, self.ipv6_note = False, "IPv6 not available here (%s)" % out
                break
        for side in SIDES:
            self._ip("link", "set", self.dev[side], "up", side=side, what="veth up")
        # Permanent neighbour entries: no ARP / neighbour discovery to fail
        # when the wire goes dead, so the only thing the client's kernel sees
        # is silence (a failed neighbour lookup would report EHOSTUNREACH).
        mac = {}
        for side in SIDES:
            _, out = self._ip("-j", "link", "show", "dev", self.dev[side], side=side,
                              what="read the veth's MAC address")
            mac[side] = json.loads(out)[0]["address"]
        for side, other in (("a", "b"), ("b", "a")):
            self._ip("neigh", "replace", self.addr4[other], "lladdr", mac[other], "dev",
                     self.dev[side], "nud", "permanent", side=side, what="IPv4 neighbour")
            if self.ipv6:
                self._ip("-6", "neigh", "replace", self.addr6[other], "lladdr", mac[other],
                         "dev", self.dev[side], "nud", "permanent", side=side,
                         what="IPv6 neighbour")
        return self

    # -- processes ----------------------------------------------------------

    def spawn(self, side, argv, env=None, stdin=subprocess.PIPE):
        """Start argv inside namespace `side` through `ip netns exec` (which
        execs it: the PID is the program's). No LD_PRELOAD for ip itself:
        put `env LD_PRELOAD=...` into argv to run the program under the shim.
        `env` is added to a clean environment (no TCPKEEP_*, no LD_PRELOAD)."""
        p = helpers.spawn([self._prog("ip"), "netns", "exec", self.ns[side]] + list(argv),
                          shim=False, env=env, stdin=stdin)
        self.procs.append(p)
        return p

    def ss(self, side):
        """`ss -tnoH` inside namespace `side`: its lines."""
        rc, out = _run([self._prog("ip"), "netns", "exec", self.ns[side], "ss", "-tnoH"])
        return out.splitlines() if rc == 0 else ["ss failed: " + out]

    # -- the wire goes dead ---------------------------------------------------

    def vanish(self):
        """Make b vanish for a: from now on a hears nothing from b, and a's
        own kernel is told nothing (no RST, no ICMP, no carrier change, and
        its transmissions still "succeed"). Tries, in order:

        - netem: `tc qdisc add dev <veth> root netem loss 100%` on both ends;
        - blackhole: the blackhole qdisc on both ends (built in whenever
          CONFIG_NET_SCHED is: it drops every packet and reports success to
          the sender, exactly as netem's loss does);
        - route: blackhole routes to a's addresses inside b: a's packets
          still reach b, but b's kernel can send nothing back (plain routing,
          nothing else needed).

        Taking b's link down is NOT used unless forced (DEAD_PEER_DROP=down):
        a veth pair shares its carrier, so a's end goes NO-CARRIER, a's kernel
        swaps in the noop qdisc and fails its own transmissions locally (the
        write sits on the persist timer instead of being retransmitted), and
        TCP_USER_TIMEOUT then fires about a second late: a local link failure,
        not a vanished peer.

        DEAD_PEER_DROP=netem|blackhole|route|down forces one method.
        Returns (monotonic time just before the drop was put in place,
        description)."""
        tc = self._prog("tc")
        tried = []
        force = os.environ.get("DEAD_PEER_DROP", "")
        methods = [m for m in ("netem", "blackhole", "route", "down")
                   if m == force or (not force and m != "down")]
        if not methods:
            raise Fail("DEAD_PEER_DROP=%r: expected netem, blackhole, route or down" % force)
        for m in methods:
            t = time.monotonic()
            if m in ("netem", "blackhole"):
                kind = ["netem", "loss", "100%"] if m == "netem" else ["blackhole"]
                cmds = [[tc, "-n", self.ns[side], "qdisc", "add", "dev", self.dev[side],
                         "root"] + kind for side in ("b", "a")]
                desc = "`tc qdisc add dev <veth> root %s` on both ends" % " ".join(kind)
            elif m == "route":
                cmds = [[self._prog("ip"), "-n", self.ns["b"], "route", "add", "blackhole",
                         self.addr4["a"] + "/32"]]
                if self.ipv6:
                    cmds.append([self._prog("ip"), "-n", self.ns["b"], "-6", "route", "add",
                                 "blackhole", self.addr6["a"] + "/128"])
                desc = "blackhole routes to a in b (b can no longer answer)"
            else:
                cmds = [[self._prog("ip"), "-n", self.ns["b"], "link", "set", self.dev["b"],
                         "down"]]
                desc = "`ip link set <veth> down` in b (a's end loses its carrier too)"
            err = None
            for cmd in cmds:
                rc, out = _run(cmd)
                if rc != 0:
                    err = "%s: %s" % (m, out.splitlines()[0] if out else rc)
                    break
            if err is None:
                self.method, self.kind = desc + (" (%s)" % "; ".join(tried) if tried else ""), m
                return t, self.method
            tried.append(err)
            if m in ("netem", "blackhole"):   # undo a half-done attempt
                for side in SIDES:
                    _run([tc, "-n", self.ns[side], "qdisc", "del", "dev", self.dev[side],
                          "root"])
        raise Fail("cannot make the peer vanish: %s" % "; ".join(tried))

    def dropped(self):
        """What the drop method discarded, from the kernels' counters: a
        short text for the report."""
        kind = getattr(self, "kind", None)
        if kind in ("netem", "blackhole"):
            parts = []
            for side in SIDES:
                rc, out = _run([self._prog("tc"), "-n", self.ns[side], "-s", "-j", "qdisc",
                                "show", "dev", self.dev[side]])
                try:
                    n = sum(q.get("drops", 0) for q in json.loads(out))
                except (ValueError, TypeError, AttributeError):
                    n = "?"
                parts.append("%s's end %s" % (side, n))
            return "the qdisc dropped " + ", ".join(parts) + " packets"
        if kind == "route":
            rc, out = _run([self._prog("ip"), "netns", "exec", self.ns["b"], "cat",
                            "/proc/net/snmp"])
            lines, n = out.splitlines(), "?"
            for head, vals in zip(lines, lines[1:]):
                if head.startswith("Ip: ") and vals.startswith("Ip: ") and \
                        "OutNoRoutes" in head.split():
                    n = vals.split()[head.split().index("OutNoRoutes")]
                    break
            return "b's kernel had no route back for %s IPv4 packets (IP OutNoRoutes)" % n
        if kind == "down":
            rc, out = self._ip("-s", "-j", "link", "show", "dev", self.dev["a"], side="a")
            try:
                st = json.loads(out)[0]["stats64"]["tx"]["dropped"]
            except (ValueError, LookupError, TypeError):
                st = "?"
            return "a's veth tx dropped %s packets" % st
        return ""

    # -- teardown -----------------------------------------------------------

    def close(self):
        """Kill the processes started here (by PID), delete both namespaces
        (which deletes the veth pair). Safe to call twice."""
        while self.procs:
            helpers.finish(self.procs.pop())
        while self.made:
            ns = self.made.pop()
            for _ in range(20):    # EBUSY while a killed process is still leaving it
                rc, out = _run([self._prog("ip"), "netns", "del", ns])
                if rc == 0 or not os.path.exists(os.path.join("/run/netns", ns)):
                    break
                time.sleep(0.1)
            else:
                raise Fail("could not delete network namespace %s: %s" % (ns, out))
