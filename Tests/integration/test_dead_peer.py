# SPDX-License-Identifier: MIT
"""The outcome users want: a connection whose peer vanished fails on time.

On the cut cable (cutcable.py) we measure when the kernel gives up, for both
modes and both sides, and show that without a policy it is still hanging at
three times the configured time. In BPF mode keepalive reports each one.
"""
import json
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import require_privilege
from cutcable import CASES, PEER_ADDR, POLICY_ADDR, PORT, RESULTS, run_case
from support import LIB, NetnsPair, preload_env


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


def test_without_policy_the_connection_still_hangs():
    """Each case without any policy, the three at once (each on a cable of its own): they only wait."""
    require_privilege()
    pairs = []
    try:
        for _ in CASES:
            pairs.append(NetnsPair(POLICY_ADDR, PEER_ADDR))
        with ThreadPoolExecutor(len(CASES)) as pool:
            results = list(pool.map(lambda item: run_case(item[0], "connect", CASES[item[1]][2],
                                                          wait=3 * CASES[item[1]][1]), zip(pairs, CASES)))
    finally:
        for pair in pairs:
            pair.close()
    for case, result in zip(CASES, results):
        configured = CASES[case][1]
        assert result is None, f"{case}: without a policy the connection ended anyway: {result}"
        RESULTS.append(("none (baseline)", case, configured, None, f"still hanging at {3 * configured} s"))


