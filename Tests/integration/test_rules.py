# SPDX-License-Identifier: MIT
"""Rules by destination: one cgroup's connections get different values by
where they go. Real sockets from a cgroup in one network namespace to
servers on addresses of the documentation ranges (192.0.2.0/24,
198.51.100.0/24, 2001:db8::/32) in another, each socket's values read back
from the kernel; on the cut cable a rule's values decide when a connection
dies.
"""
import json
import os
import subprocess

import pytest

from conftest import require_tool
from cutcable import CASES, PEER_ADDR, POLICY_ADDR, run_case
from support import PYTHON, SOCKPROBE, in_cgroup, keepalive_values, metric, probe, run, values

NEAR_V6, FAR_V6 = "2001:db8::1", "2001:db8::2"
DB_V4, DB_V6, OFF_V6 = "198.51.100.2", "2001:db8:1::2", "2001:db8:2::2"  # on the far end's loopback
UPPER_V4 = "198.51.100.130"  # also there: in the /24, not in its lower /25
UNTOUCHED = {"keepalive": 0, "keepidle": 7200, "keepintvl": 75, "keepcnt": 9, "user_timeout": 0}

DB = "name=db,remote=198.51.100.0/24,remote=2001:db8:1::/48,remote_ports=5432,keepidle=5,keepintvl=2,keepcnt=3,user_timeout=20000"
DB_OTHER_PORTS = "remote=198.51.100.0/24,keepidle=7"
OFF = "remote=2001:db8:2::/48,keepalive=off"
TLS = "local_ports=8443,keepidle=30"


@pytest.fixture
def routed(netns_pair):
    """The pair with IPv6 on the veth and the far end's extra addresses routed."""
    pair = netns_pair
    for ns, addr in ((pair.near, NEAR_V6), (pair.far, FAR_V6)):
        dev = run(["ip", "-n", ns, "-o", "link", "show", "type", "veth"]).stdout.split(":")[1].strip().split("@")[0]
        run(["ip", "-n", ns, "addr", "add", f"{addr}/64", "dev", dev, "nodad"])
    for addr in (f"{DB_V4}/32", f"{UPPER_V4}/32", f"{DB_V6}/128", f"{OFF_V6}/128"):
        run(["ip", "-n", pair.far, "addr", "add", addr, "dev", "lo"])
    run(["ip", "-n", pair.near, "route", "add", "198.51.100.0/24", "via", PEER_ADDR])
    run(["ip", "-n", pair.near, "-6", "route", "add", "2001:db8::/32", "via", FAR_V6])
    run(["ip", "-n", pair.far, "-6", "route", "add", "2001:db8::/32", "via", NEAR_V6])
    return pair


def serve(namespace, ports, cgroup=None):
    """helpers/sockprobe.py serve in `namespace` (and `cgroup`), once it listens."""
    server = subprocess.Popen(in_cgroup(cgroup, ["ip", "netns", "exec", namespace, PYTHON, SOCKPROBE, "serve"]
                                        + [str(p) for p in ports]),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline() == "listening\n"
    return server


def connect(namespace, host, port, cgroup=None):
    """One connection from `namespace` (and `cgroup`): its values, read back."""
    argv = ["ip", "netns", "exec", namespace, PYTHON, SOCKPROBE, "connect", host, str(port)]
    result = json.loads(run(in_cgroup(cgroup, argv)).stdout)
    assert result["errno"] == 0, result
    return keepalive_values(result["options"])


def test_each_destination_gets_its_rules_values(routed, keepalive, cgroups):
    cg = cgroups.make()
    attached = keepalive("attach", cg, "--keepidle", "60", "--rule", DB, "--rule", DB_OTHER_PORTS, "--rule", OFF).stdout
    assert "rule=[name=db,remote=198.51.100.0/24,remote=2001:db8:1::/48,remote_ports=5432," in attached, attached
    server = serve(routed.far, [5432, 80])
    try:
        seen = {
            "db v4": connect(routed.near, DB_V4, 5432, cg),
            "db v6": connect(routed.near, DB_V6, 5432, cg),
            "db v4-mapped": connect(routed.near, f"::ffff:{DB_V4}", 5432, cg),
            "db, another port": connect(routed.near, DB_V4, 80, cg),
            "off": connect(routed.near, OFF_V6, 5432, cg),
            "no rule (v4)": connect(routed.near, PEER_ADDR, 5432, cg),
            "no rule (v6)": connect(routed.near, FAR_V6, 5432, cg),
        }
    finally:
        server.kill()
        server.wait()
    policy = values(60, 15, 9, (60 + 15 * 9) * 1000)
    assert seen == {
        "db v4": values(5, 2, 3, 20000),
        "db v6": values(5, 2, 3, 20000),
        "db v4-mapped": values(5, 2, 3, 20000),
        "db, another port": values(7, 15, 9, (7 + 15 * 9) * 1000),
        "off": UNTOUCHED,
        "no rule (v4)": policy,
        "no rule (v6)": policy,
    }, seen
    [status] = keepalive.status()
    rules = [(r["index"], r["name"], r["sockets_matched"], r["keepalive"]) for r in status["rules"]]
    assert rules == [(1, "db", 3, True), (2, None, 1, True), (3, None, 1, False)], status["rules"]
    assert status["sockets_configured"] == 2 + 3 + 1  # the policy's own and its rules', not keepalive: off
    text = keepalive("status").stdout
    assert (f"rule 1 (db) of {cgroups.rel(cg)}: remote=198.51.100.0/24,2001:db8:1::/48 remote_ports=5432 -> "
            "keepidle=5 keepintvl=2 keepcnt=3 user_timeout=20000; 3 sockets matched, 0 reaped") in text, text


def test_nested_and_overlapping_blocks_give_the_first_rule_that_holds_the_address(routed, keepalive, cgroups):
    """The program finds the rules whose blocks hold an address by the
    intervals all blocks cut the address space into: a block inside
    another, one that a port narrows, the IPv4 all that is no IPv6 address,
    and a lone address at the edge of a block."""
    cg = cgroups.make()
    rules = [f"remote={DB_V4}/32,remote_ports=80,keepidle=11",     # inside the next two, one port only
             "remote=198.51.100.0/25,keepidle=12",                  # the lower half
             "remote=198.51.100.0/24,remote=2001:db8:1::/48,keepidle=13",
             "remote=2001:db8:1::3/128,remote=198.51.100.131,keepidle=14",  # edges no peer uses
             "remote=0.0.0.0/0,keepidle=15"]                       # every IPv4 peer, no IPv6 one
    keepalive("attach", cg, "--keepidle", "60", *[a for rule in rules for a in ("--rule", rule)])
    server = serve(routed.far, [5432, 80])
    try:
        seen = {(host, port): connect(routed.near, host, port, cg)["keepidle"]
                for host, port in ((DB_V4, 80), (DB_V4, 5432), (f"::ffff:{DB_V4}", 5432), (UPPER_V4, 5432),
                                   (DB_V6, 5432), (PEER_ADDR, 80), (FAR_V6, 80))}
    finally:
        server.kill()
        server.wait()
    assert seen == {(DB_V4, 80): 11, (DB_V4, 5432): 12, (f"::ffff:{DB_V4}", 5432): 12, (UPPER_V4, 5432): 13,
                    (DB_V6, 5432): 13, (PEER_ADDR, 80): 15, (FAR_V6, 80): 60}, seen


def test_an_accepted_socket_gets_the_rule_of_its_local_port_and_the_listener_the_policys(routed, keepalive, cgroups):
    cg = cgroups.make()
    keepalive("attach", cg, "--keepidle", "60", "--rule", TLS, "--rule", "local_ports=9443,keepalive=off")
    server = serve(routed.near, [8443, 8080, 9443], cgroup=cg)
    try:
        for port in (8443, 8080, 9443):
            connect(routed.far, POLICY_ADDR, port)
        seen = json.loads(server.stdout.readline())
        sockets = json.loads(keepalive("inspect", cg, "--json").stdout)
    finally:
        server.kill()
        server.wait()
    policy = values(60, 15, 9, (60 + 15 * 9) * 1000)
    assert keepalive_values(seen["8443"]["accepted"]) == values(30, 15, 9, (30 + 15 * 9) * 1000), seen
    assert keepalive_values(seen["8443"]["listening"]) == policy, seen  # a listener keeps the policy's
    assert keepalive_values(seen["8080"]["accepted"]) == policy, seen
    # keepalive: off takes back what the socket inherited from its listener (the policy's).
    off = seen["9443"]["accepted"]
    assert (off["keepalive"], off["user_timeout"]) == (0, 0), seen
    # The clients have gone: the accepted sockets are in CLOSE_WAIT, still held.
    by_port = sorted((s["state"] == "LISTEN", s["local"].rsplit(":", 1)[1], s["rule"]) for s in sockets)
    assert by_port == [(False, "8080", None), (False, "8443", "1"), (False, "9443", "2"),
                       (True, "8080", None), (True, "8443", None), (True, "9443", None)], by_port


@pytest.mark.parametrize("case", ["keepalive-probes", "user-timeout-pending-data"])
@pytest.mark.parametrize("side", ["connect", "accept"])
def test_on_the_cut_cable_the_rules_values_decide_when_it_dies(netns_pair, keepalive, cgroups, agent, case, side):
    """The policy alone would wait an hour; the rule for this peer (connect)
    or this port (accept) finds it dead on its own values."""
    policy, configured, send = CASES[case]
    options = ",".join(f"{k}={v}" for k, v in policy.items())
    match = f"remote={PEER_ADDR}/32,remote_ports=7777" if side == "connect" else "local_ports=7777"
    cg = cgroups.make()
    keepalive("attach", cg, "--keepidle", "3600", "--rule", "remote=203.0.113.0/24,keepidle=1",
              "--rule", f"name=peer,{match},{options}")
    result = run_case(netns_pair, side, send, wait=3 * configured + 5, cgroup=cg)
    assert result is not None and result["error"] in ("ETIMEDOUT", "EHOSTUNREACH"), result
    assert abs(result["elapsed"] - configured) <= 0.1 * configured + 1.0, (result, configured)
    [event] = json.loads(keepalive("events", "--json").stdout)
    assert event["rule"] == "peer" and event["reason"] == ("user_timeout" if send else "keepalive"), event
    [status] = keepalive.status()
    assert [r["reaped"] for r in status["rules"]] == [0, 1], status["rules"]
    # The agent's metrics say it by rule too (they cover every policy in force, the CLI's too).
    process, _ = agent("policies: []\n")
    text = process.scrape()
    labels = {"cgroup": cgroups.rel(cg), "rule": "peer"}
    reason = "user_timeout" if send else "keepalive"
    assert metric(text, "keepalive_rule_dead_connections_total", **labels, reason=reason) == 1, text
    assert metric(text, "keepalive_rule_sockets_matched_total", **labels) == 1, text


def test_bad_rules_are_one_line_errors_and_change_nothing(keepalive, cgroups):
    cg = cgroups.make()
    keepalive("attach", cg, "--keepidle", "60", "--rule", DB)
    before = keepalive.status()
    for rule, problem in [
        ("remote=198.51.100.0/33", "the prefix length must be 0..32"),
        ("remote=198.51.100.1/24", "has host bits set (the block is 198.51.100.0/24)"),
        ("remote=2001:db8::/32,remote_ports=65536", "'65536' is not a port (1..65535)"),
        ("remote=2001:db8::/32,keepcnt=500", "keepcnt: 500 is out of range"),
        ("keepidle=5", "a rule needs remote, remote_ports or local_ports"),
    ]:
        result = keepalive("attach", cg, "--keepidle", "30", "--rule", DB, "--rule", rule, check=False)
        assert result.returncode != 0 and problem in result.stderr, result.stderr
        assert "(rule 2)" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    many = [arg for i in range(17) for arg in ("--rule", f"remote_ports={i + 1}")]
    result = keepalive("attach", cg, *many, check=False)
    assert result.returncode != 0 and "17 rules: a policy holds at most 16" in result.stderr, result.stderr
    assert keepalive.status() == before


def rule_set_maps(keepalive):
    """ka_rule_sets as the kernel has it: rule slot -> inner map id (bpftool lists the occupied slots)."""
    dump = json.loads(run(["bpftool", "-j", "map", "dump", "pinned", os.path.join(keepalive.pin_path, "ka_rule_sets")]).stdout)
    return {int.from_bytes(bytes(int(b, 16) for b in e["key"]), "little"): e["value"] if isinstance(e["value"], int)
            else int.from_bytes(bytes(int(b, 16) for b in e["value"]), "little") for e in dump}


def test_the_programs_read_each_rule_set_at_its_slot_and_userspaces_copy_without_it(keepalive, cgroups):
    """Each policy with rules has its set alone at its rule slot of ka_rule_sets, swapped for a new one
    when the rules change and gone with them. With the set there gone (an outside hand), the programs
    read userspace's copy (ka_rules): the rule still applies."""
    require_tool("bpftool")
    cg, other = cgroups.make(), cgroups.make()
    loopback = "remote=127.0.0.0/8,keepidle={}"
    keepalive("attach", cg, "--keepidle", "60", "--rule", loopback.format(7))
    keepalive("attach", other, "--keepidle", "60", "--rule", DB)
    sets = rule_set_maps(keepalive)
    assert len(sets) == 2, sets
    keepalive("attach", cg, "--keepidle", "60", "--rule", loopback.format(8))
    after = rule_set_maps(keepalive)
    assert after.keys() == sets.keys() and len(set(after.values()) - set(sets.values())) == 1, (sets, after)
    assert probe("pair", cgroup=cg)["connected"]["keepidle"] == 8
    slot = next(k for k in after if after[k] not in sets.values())
    run(["bpftool", "map", "delete", "pinned", os.path.join(keepalive.pin_path, "ka_rule_sets"),
         "key", *[str(b) for b in slot.to_bytes(4, "little")]])
    assert probe("pair", cgroup=cg)["connected"]["keepidle"] == 8
    keepalive("detach", cg)
    keepalive("detach", other)
    assert rule_set_maps(keepalive) == {}


def test_a_policy_whose_rules_an_outside_hand_removed_gets_its_own_values_and_its_set_goes(keepalive, cgroups):
    """ka_rules' record of a policy deleted by an outside hand: the programs still read the set at its rule
    slot, until the next command says the policy lost its rules, takes that set away, then writes the policy
    without them. Its own values apply, and no set is left behind."""
    require_tool("bpftool")
    cg = cgroups.make()
    keepalive("attach", cg, "--keepidle", "60", "--rule", "remote=127.0.0.0/8,keepidle=7")
    assert len(rule_set_maps(keepalive)) == 1
    run(["bpftool", "map", "delete", "pinned", os.path.join(keepalive.pin_path, "ka_rules"),
         "key", *[str(b) for b in os.stat(cg).st_ino.to_bytes(8, "little")]])
    assert probe("pair", cgroup=cg)["connected"]["keepidle"] == 7
    result = keepalive("status")
    assert "had lost its rules" in result.stdout + result.stderr, result
    assert rule_set_maps(keepalive) == {}
    assert probe("pair", cgroup=cg)["connected"]["keepidle"] == 60
    keepalive("detach", cg)
