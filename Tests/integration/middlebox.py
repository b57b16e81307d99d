# SPDX-License-Identifier: MIT
"""A middlebox with an idle limit: three network namespaces, a client's and a
server's on either side of a router that forwards through conntrack with the
established timeout set to `limit` seconds and strict TCP tracking
(nf_conntrack_tcp_loose 0: a flow it forgot is not picked up mid-stream).
What conntrack no longer knows is dropped (`kind` "drop": the client's next
segment goes unanswered, as through a NAT or cloud load balancer that forgot
the flow) or answered with a reset (`kind` "reset", as some firewalls and
load balancers do). The router's sysctls are its namespace's own: the host's
are not touched. Everything is removed on close.
"""
import json
import os
import subprocess
import uuid

from support import HELPERS, PREFIX, PYTHON, in_cgroup, run, wait_until
from cutcable import read_line

IDLEPATH = os.path.join(HELPERS, "idlepath.py")
PORT = 7070

# side -> (IPv4 address, router's IPv4, IPv6 address, router's IPv6): documentation ranges.
ADDRESSES = {
    "client": ("198.51.100.1", "198.51.100.254", "2001:db8:c::1", "2001:db8:c::fe"),
    "server": ("203.0.113.1", "203.0.113.254", "2001:db8:5::1", "2001:db8:5::fe"),
}


class Middlebox:
    def __init__(self, limit, kind):
        tag = uuid.uuid4().hex[:6]
        self.tag, self.limit, self.kind = tag, limit, kind
        self.client, self.router, self.server = (f"{PREFIX}ns-{tag}-{n}" for n in ("c", "r", "s"))
        self.made, self.processes = [], []
        self.generation, self.router_ends = 0, {}
        for ns in (self.client, self.router):
            self._add_namespace(ns)
        self._link("client")
        self._add_namespace(self.server)
        self._link("server")
        for key in ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"):
            self._sysctl(self.router, key, 1)
        verdict = "drop" if kind == "drop" else "reject with tcp reset"
        run(["ip", "netns", "exec", self.router, "nft", "-f", "-"], input=f"""
table inet ka_test_middlebox {{
  chain forward {{
    type filter hook forward priority 0; policy accept;
    ct state invalid meta l4proto tcp {verdict}
  }}
}}
""")
        # The table loaded conntrack into the namespace: its own timeouts exist now.
        self._sysctl(self.router, "net.netfilter.nf_conntrack_tcp_timeout_established", limit)
        self._sysctl(self.router, "net.netfilter.nf_conntrack_tcp_loose", 0)

    def _add_namespace(self, ns):
        run(["ip", "netns", "add", ns])
        self.made.append(ns)
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        self._sysctl(ns, "net.ipv6.conf.all.accept_dad", 0)
        self._sysctl(ns, "net.ipv6.conf.default.accept_dad", 0)

    def _link(self, side):
        ns = self.client if side == "client" else self.server
        own, router = f"ka{self.tag}{side[0]}{self.generation}", f"ka{self.tag}{side[0]}{self.generation}r"
        self.router_ends[side] = router
        run(["ip", "link", "add", own, "netns", ns, "type", "veth", "peer", "name", router, "netns", self.router])
        v4, router_v4, v6, router_v6 = ADDRESSES[side]
        for where, dev, a4, a6 in ((ns, own, v4, v6), (self.router, router, router_v4, router_v6)):
            run(["ip", "-n", where, "addr", "add", f"{a4}/24", "dev", dev])
            run(["ip", "-n", where, "addr", "add", f"{a6}/64", "dev", dev, "nodad"])
            run(["ip", "-n", where, "link", "set", dev, "up"])
        run(["ip", "-n", ns, "route", "add", "default", "via", router_v4])
        run(["ip", "-n", ns, "-6", "route", "add", "default", "via", router_v6])

    @staticmethod
    def _sysctl(ns, key, value):
        run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"{key}={value}"])

    def server_address(self, family=4):
        return ADDRESSES["server"][0 if family == 4 else 2]

    def start_server(self, family=4, cgroup=None):
        server = subprocess.Popen(in_cgroup(cgroup, [PYTHON, IDLEPATH, "--netns", self.server, "echo",
                                                     self.server_address(family), str(PORT)]),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
        self.processes.append(server)
        assert read_line(server, 10) == "listening", server.stderr.read1().decode()
        return server

    def client_address(self, family=4):
        return ADDRESSES["client"][0 if family == 4 else 2]

    def connect(self, cgroup, family=4):
        """A client connection from `cgroup`, through the router; a Client."""
        proc = subprocess.Popen(in_cgroup(cgroup, [PYTHON, IDLEPATH, "--netns", self.client, "client",
                                                   self.server_address(family), str(PORT)]),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
        self.processes.append(proc)
        assert read_line(proc, 10) == "connected", proc.stderr.read1().decode() if proc.poll() is not None else ""
        return Client(proc)

    def reboot_server(self, family=4):
        """The server's machine restarts: its namespace and sockets go without a word on the wire (the
        router's conntrack still knows the flows), and a new one answers at the same address."""
        run(["ip", "netns", "exec", self.server, "nft", "-f", "-"], input="""
table inet ka_test_down {
  chain output { type filter hook output priority -300; policy drop; }
}
""")  # the dying server's FIN never leaves
        for proc in self.processes[:]:
            if "echo" in proc.args and IDLEPATH in proc.args:
                proc.kill()
                proc.wait()
                self.processes.remove(proc)
        run(["ip", "netns", "del", self.server])
        self.made.remove(self.server)
        # The namespace goes in the background, and its veth's router end with it.
        gone = self.router_ends["server"]
        wait_until(lambda: subprocess.run(["ip", "-n", self.router, "link", "show", gone],
                                          capture_output=True).returncode != 0, what=f"{gone} removed")
        self.generation += 1
        self._add_namespace(self.server)
        self._link("server")
        self.start_server(family)

    def close(self):
        for proc in self.processes:
            proc.kill()
            proc.wait()
        for ns in self.made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


class Client:
    def __init__(self, proc):
        self.proc = proc

    def ask(self, command, timeout=60):
        self.proc.stdin.write(command.encode() + b"\n")
        line = read_line(self.proc, timeout)
        assert line, f"no answer to {command}: {self.proc.stderr.read1().decode() if self.proc.poll() else ''}"
        return json.loads(line)
