# SPDX-License-Identifier: MIT
"""The cut cable: two network namespaces joined by a veth pair, one end of TCP
connections in each; after a last exchange the peer's namespace drops every
packet (nftables), so the peer vanishes without FIN or RST. The end under
test blocks in recv until the kernel gives up (helpers/deadpeer.py).
"""
import json
import os
import select
import subprocess
import time

from support import HELPERS, PYTHON, in_cgroup

DEADPEER = os.path.join(HELPERS, "deadpeer.py")
POLICY_ADDR, PEER_ADDR, PORT = "192.0.2.1", "192.0.2.2", 7777  # the netns_pair fixture's addresses

# name -> (policy values, seconds the policy says detection takes, send data after the cut)
CASES = {
    "keepalive-probes": ({"keepidle": 2, "keepintvl": 1, "keepcnt": 3, "user_timeout": 0}, 2.0 + 1 * 3, False),
    "user-timeout-pending-data": ({"keepidle": 2, "keepintvl": 1, "keepcnt": 3, "user_timeout": 3000}, 3.0, True),
    "derived-user-timeout": ({"keepidle": 2, "keepintvl": 1, "keepcnt": 3}, 2.0 + 1 * 3, False),
}

RESULTS = []  # the dead-peer suite's rows, for the summary conftest prints at the end of the run


def read_line(proc, timeout):
    """One line of a child's stdout, or None if none came within `timeout` seconds."""
    deadline, line = time.monotonic() + timeout, b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([proc.stdout], [], [], remaining)[0]:
            return None
        chunk = os.read(proc.stdout.fileno(), 1)
        if not chunk:
            return None
        line += chunk
    return line.decode().strip()


def spawn(args, env=None, cgroup=None):
    return subprocess.Popen(in_cgroup(cgroup, [PYTHON, DEADPEER] + args), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, bufsize=0)


def run_case(pair, side, send, wait, cgroup=None, env=None, observe=None, count=1):
    """Connects the two ends (`count` connections, connecting side only), cuts the path, and
    returns the waiter's result (None if still blocked). `observe(waiter)`, if given, runs once
    the waiter's connections died, while it still lives."""
    if side == "connect":  # the end under test connects; the peer listens
        peer_args = ["--netns", pair.far, "peer", "listen", PEER_ADDR, str(PORT)]
        waiter_args = ["--netns", pair.near, "waiter", "connect", PEER_ADDR, str(PORT), "--count", str(count)]
    else:                  # the end under test accepts; the peer connects
        peer_args = ["--netns", pair.far, "peer", "connect", POLICY_ADDR, str(PORT)]
        waiter_args = ["--netns", pair.near, "waiter", "listen", POLICY_ADDR, str(PORT)]
    if send:
        waiter_args.append("--send")
    procs = []
    try:
        if side == "connect":
            procs.append(spawn(peer_args))
            assert read_line(procs[-1], 10) == "listening"
            procs.append(spawn(waiter_args, env=env, cgroup=cgroup))
            waiter = procs[-1]
        else:
            procs.append(spawn(waiter_args, env=env, cgroup=cgroup))
            waiter = procs[-1]
            assert read_line(waiter, 10) == "listening"
            procs.append(spawn(peer_args))
        assert read_line(waiter, 10) == "ready", waiter.stderr.read1().decode() if waiter.poll() is not None else ""
        pair.silence(pair.far)
        waiter.stdin.write(b"go\n")
        line = read_line(waiter, wait)
        result = json.loads(line) if line else None
        if result and observe:
            result["observed"] = observe(waiter)
        return result
    finally:
        for p in procs:
            p.kill()
            p.wait()
