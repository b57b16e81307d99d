"""The outcome users want: a connection whose peer vanished fails on time.

Two network namespaces joined by a veth pair; one end of a TCP connection in
each. After a last exchange the peer's namespace drops every packet (nftables),
so the peer vanishes without FIN or RST. The end under test blocks in recv; we
measure when the kernel gives up, for both modes and both sides, and show that
without a policy it is still hanging at three times the configured time.
"""
import json
import os
import select
import subprocess
import time

import pytest

from support import HELPERS, LIB, PYTHON, in_cgroup, preload_env

DEADPEER = os.path.join(HELPERS, "deadpeer.py")
POLICY_ADDR, PEER_ADDR, PORT = "192.0.2.1", "192.0.2.2", 7777  # the netns_pair fixture's addresses

# name -> (policy values, seconds the policy says detection takes, send data after the cut)
CASES = {
    "keepalive-probes": ({"keepidle": 2, "keepintvl": 1, "keepcnt": 3, "user_timeout": 0}, 2.0 + 1 * 3, False),
    "user-timeout-pending-data": ({"keepidle": 2, "keepintvl": 1, "keepcnt": 3, "user_timeout": 3000}, 3.0, True),
    "derived-user-timeout": ({"keepidle": 2, "keepintvl": 1, "keepcnt": 3}, 2.0 + 1 * 3, False),
}

RESULTS = []  # rows for the summary printed at the end of the run


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


def run_case(pair, side, send, wait, cgroup=None, env=None, observe=None):
    """Connects the two ends, cuts the path, and returns the waiter's result (None if still blocked).
    `observe(waiter)`, if given, runs once the waiter's connection died, while it still lives."""
    if side == "connect":  # the end under test connects; the peer listens
        peer_args = ["--netns", pair.far, "peer", "listen", PEER_ADDR, str(PORT)]
        waiter_args = ["--netns", pair.near, "waiter", "connect", PEER_ADDR, str(PORT)]
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


def within_tolerance(measured, configured):
    return abs(measured - configured) <= 0.1 * configured + 1.0


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("side", ["connect", "accept"])
def test_bpf_policy_detects_vanished_peer(netns_pair, keepalive, cgroups, case, side):
    policy, configured, send = CASES[case]
    cg = cgroups.make()
    keepalive("attach", cg, *[arg for k, v in policy.items() for arg in (f"--{k.replace('_', '-')}", str(v))])

    def reaped(waiter):
        with open(f"/proc/{waiter.pid}/comm") as f:
            command = f.read().strip()
        return json.loads(keepalive("events", "--json").stdout), keepalive.status(), waiter.pid, command

    result = run_case(netns_pair, side, send, wait=3 * configured + 5, cgroup=cg, observe=reaped)
    check(f"bpf ({'connect' if side == 'connect' else 'accept'})", case, configured, result)
    # keepalive saw it too: one reaped connection, as it was.
    (events, [status], pid, command), reason = result["observed"], "user_timeout" if send else "keepalive"
    [event] = events
    assert (event["reason"], event["pid"], event["command"]) == (reason, pid, command), event
    assert event["cgroup"] == event["policy_cgroup"] == cgroups.rel(cg)
    local, remote = (POLICY_ADDR, PEER_ADDR) if side == "connect" else (POLICY_ADDR + f":{PORT}", PEER_ADDR)
    assert event["local"].startswith(local + ":" if side == "connect" else local) and event["remote"].startswith(remote)
    assert (event["remote"] if side == "connect" else event["local"]).endswith(f":{PORT}")
    assert abs(event["silent_ms"] / 1000 - configured) <= 1.0, (event, configured)
    user_timeout = policy.get("user_timeout", (2 + 1 * 3) * 1000)
    assert (event["keepidle"], event["keepintvl"], event["keepcnt"], event["user_timeout"]) == (2, 1, 3, user_timeout)
    assert (status["reaped"], status[f"reaped_{reason}"]) == (1, 1), status


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("side", ["connect", "accept"])
def test_preload_detects_vanished_peer(netns_pair, case, side):
    policy, configured, send = CASES[case]
    library = "libkeepalive.so" if side == "connect" else "libkeepalive_listen.so"
    variables = {f"TCP_{k.upper()}": v for k, v in policy.items()}
    result = run_case(netns_pair, side, send, wait=3 * configured + 5,
                      env=preload_env(os.path.join(LIB, library), **variables))
    check(f"preload ({library})", case, configured, result)


def check(mode, case, configured, result):
    assert result is not None, f"{mode} {case}: still blocked after {3 * configured + 5} s"
    RESULTS.append((mode, case, configured, result["elapsed"], result["error"]))
    print(f"{mode} {case}: {result['error']} after {result['elapsed']} s, configured {configured} s")
    assert result["error"] in ("ETIMEDOUT", "EHOSTUNREACH"), result
    assert within_tolerance(result["elapsed"], configured), (
        f"{mode} {case}: {result['elapsed']} s, configured {configured} s")


@pytest.mark.parametrize("case", CASES)
def test_without_policy_the_connection_still_hangs(netns_pair, case):
    _, configured, send = CASES[case]
    result = run_case(netns_pair, "connect", send, wait=3 * configured)
    assert result is None, f"without a policy the connection ended anyway: {result}"
    RESULTS.append(("none (baseline)", case, configured, None, f"still hanging at {3 * configured} s"))


