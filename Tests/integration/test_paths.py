# SPDX-License-Identifier: MIT
"""Paths' idle limits, observed through a real middlebox (middlebox.py): a
router whose conntrack forgets idle flows after LIMIT seconds and then drops
what it no longer knows, or answers it with a reset.

Connections idle below the limit survive and those above it die; `keepalive
paths` reports bounds that contain the limit the test set, and its verdict
follows the policy's idle time across it. A peer that restarts is not taken
for the path, a path with too little evidence says so, and a policy that
does not observe records nothing.
"""
import datetime
import json
import os
import subprocess
import time

import pytest

from conftest import require_tool
from middlebox import Middlebox
from support import metric

LIMIT = 3  # seconds: the router's established-flow timeout


@pytest.fixture
def middlebox():
    require_tool("nft", "ip", "sysctl")
    made = []

    def make(kind, limit=LIMIT):
        made.append(Middlebox(limit, kind))
        return made[-1]

    try:
        yield make
    finally:
        for box in made:
            box.close()


def paths(keepalive, *args):
    return json.loads(keepalive("paths", "--json", *args).stdout)


def events(keepalive):
    return json.loads(keepalive("events", "--json").stdout)


def missing_death(keepalive, path, died):
    """What tells a death the reaped program never recorded from one it ran past: the policy's reaped
    counts, and the program's runs the kernel skipped (recursion_misses, shown when not 0)."""
    [policy] = [p for p in keepalive.report()["policies"] if p["cgroup"] == path["cgroup"]]
    program = subprocess.run(["bpftool", "-j", "prog", "show", "pinned",
                              os.path.join(keepalive.pin_path, "keepalive_reaped")], capture_output=True, text=True)
    return f"path {json.dumps(path)}; events {json.dumps(died)}; policy {json.dumps(policy)}; reaped program {program.stdout}"


def test_dropping_middlebox_bounds_contain_the_limit_and_the_verdict_follows_the_policy(
        keepalive, cgroups, middlebox):
    box = middlebox("drop")
    box.start_server()
    cgroup = cgroups.make()
    # Below the limit: the probes keep the flow in the router, past several limits.
    keepalive("attach", cgroup, "--observe-paths", "--keepidle", "2", "--keepintvl", "1", "--keepcnt", "2")
    below = box.connect(cgroup)
    assert below.ask("ping") == {"ok": True}
    time.sleep(3.5 * LIMIT)
    assert below.ask("ping") == {"ok": True}
    [path] = paths(keepalive, cgroup)
    assert path["path"] == f"{box.server_address()}:7070" and not path["accepted"]
    assert path["survivals"] >= 3 and 2000 <= path["survived_ms"] < LIMIT * 1000
    assert path["died_ms"] is None and path["verdict"] == "below"
    seen = datetime.datetime.fromisoformat(path["last_seen"].replace("Z", "+00:00")).timestamp()
    assert abs(seen - time.time()) < 5, path  # the last probe's answer, a moment ago

    # Above it: the first probe comes after the router forgot the flow, and the connection dies of it.
    keepalive("attach", cgroup, "--observe-paths", "--keepidle", "5", "--keepintvl", "1", "--keepcnt", "2")
    above = box.connect(cgroup)
    assert above.ask("ping") == {"ok": True}
    assert above.ask("wait", timeout=30)["error"] == "ETIMEDOUT"
    [path] = paths(keepalive, cgroup)
    died = events(keepalive)  # the death, with the gap it died of (and, when it fails, what the kernel saw)
    assert path["survived_ms"] < LIMIT * 1000 < (path["died_ms"] or 0) <= 5000 * 9 // 8, \
        missing_death(keepalive, path, died)
    assert (path["died_by"], path["timeouts"], path["resets"], path["not_idle"]) == ("timeout", 1, 0, 0), path
    assert path["verdict"] == "above" and path["keepidle"] == 5
    [event] = died
    assert (event["reason"], event["idle_gap_ms"]) == ("keepalive", path["died_ms"])
    text = keepalive("paths", cgroup).stdout
    assert f"keepidle 5 s, but connections to {box.server_address()}:7070 died after" in text, text
    suggested = path["suggested_rule"]
    assert suggested.startswith(f"remote={box.server_address()},remote_ports=7070,keepidle="), suggested
    assert int(suggested.rsplit("=", 1)[1]) * 1000 * 9 // 8 < path["died_ms"]

    # The rule it suggests takes these connections below the limit again.
    keepalive("attach", cgroup, "--observe-paths", "--keepidle", "5", "--rule", suggested)
    [path] = paths(keepalive, cgroup)
    assert path["verdict"] == "below" and path["keepidle"] == int(suggested.rsplit("=", 1)[1])
    assert "lower it" not in keepalive("paths", cgroup).stdout


@pytest.mark.parametrize("family", [4, 6])
def test_resetting_middlebox_observed_by_a_policy_that_sets_nothing(keepalive, cgroups, middlebox, family):
    box = middlebox("reset")
    box.start_server(family)
    cgroup = cgroups.make()
    keepalive("attach", cgroup, "--observe", "--keepidle", "5")
    client = box.connect(cgroup, family)
    assert client.ask("options")["keepalive"] == 0  # observing only: the socket is as its program left it
    assert client.ask("ping") == {"ok": True}
    time.sleep(LIMIT - 1)
    assert client.ask("ping") == {"ok": True}      # idle below the limit: answered
    time.sleep(LIMIT + 1.5)
    assert client.ask("ping") == {"ok": False, "error": "ECONNRESET"}  # above: the router resets it
    [path] = paths(keepalive)
    address = box.server_address(family)
    assert path["path"] == (f"[{address}]:7070" if family == 6 else f"{address}:7070")
    assert (LIMIT - 1) * 1000 <= path["survived_ms"] < LIMIT * 1000 < path["died_ms"] < (LIMIT + 2) * 1000
    assert (path["died_by"], path["resets"], path["timeouts"]) == ("reset", 1, 0)
    assert path["verdict"] == "above"  # the policy it would enforce: keepidle 5
    [event] = events(keepalive)  # a reset is listed where the policy observes paths, never counted
    assert (event["reason"], event["idle_gap_ms"]) == ("reset", path["died_ms"])
    [status] = keepalive.status()
    assert status["observe"] == "only" and status["sockets_configured"] == 1  # counted as it would be set


def test_accepted_connections_are_observed_by_their_local_port(keepalive, cgroups, middlebox):
    box = middlebox("drop")
    server_cgroup = cgroups.make()
    keepalive("attach", server_cgroup, "--observe-paths", "--keepidle", "30")
    box.start_server(cgroup=server_cgroup)
    client = box.connect(None)
    assert client.ask("ping") == {"ok": True}
    time.sleep(LIMIT - 1)
    assert client.ask("ping") == {"ok": True}  # the server's answer: a survival on its side
    [path] = paths(keepalive, server_cgroup)
    assert path["accepted"] and path["path"] == f"{box.client_address()} -> :7070", path
    assert path["port"] == 7070 and path["survivals"] == 1 and path["survived_ms"] >= (LIMIT - 1) * 1000


def test_a_peer_that_restarts_is_not_taken_for_an_idle_limit(keepalive, cgroups, middlebox):
    box = middlebox("drop", limit=60)
    box.start_server()
    cgroup = cgroups.make()
    keepalive("attach", cgroup, "--observe-paths", "--keepidle", "30")
    client = box.connect(cgroup)
    assert client.ask("ping") == {"ok": True}
    time.sleep(2.2)
    assert client.ask("ping") == {"ok": True}
    box.reboot_server()
    time.sleep(1.3)
    # The new server knows nothing of the connection: it resets the first segment after a 1.3 s gap.
    assert client.ask("ping") == {"ok": False, "error": "ECONNRESET"}
    [path] = paths(keepalive, cgroup)
    assert path["resets"] == 1 and path["not_idle"] == 1 and path["died_ms"] is None
    [event] = events(keepalive)
    assert event["reason"] == "reset" and 1300 <= event["idle_gap_ms"] < 2200
    assert path["survived_ms"] >= 2200 and path["verdict"] == "not enough evidence"
    assert path["suggested_rule"] is None


def test_no_evidence_busy_connections_and_policies_that_do_not_observe(keepalive, cgroups, middlebox):
    box = middlebox("drop", limit=60)
    box.start_server()
    observing, plain = cgroups.make(), cgroups.make()
    keepalive("attach", observing, "--observe-paths")
    keepalive("attach", plain)
    assert paths(keepalive) == []
    assert keepalive("paths").stdout == "no paths observed\n"
    busy, unobserved = box.connect(observing), box.connect(plain)
    for _ in range(10):  # never idle for a second: no gap to learn from
        assert busy.ask("ping") == {"ok": True} and unobserved.ask("ping") == {"ok": True}
        time.sleep(0.2)
    assert paths(keepalive) == []
    time.sleep(1.5)
    assert busy.ask("ping") == {"ok": True} and unobserved.ask("ping") == {"ok": True}
    [path] = paths(keepalive)  # the observing policy's only
    assert path["cgroup"] == cgroups.rel(observing) and path["survivals"] == 1
    assert path["verdict"] == "not enough evidence"  # survived 1.5 s, probes after the default's 15 s
    only_plain = keepalive("paths", plain)
    assert only_plain.stdout == "no paths observed\n"
    assert "no policy here observes paths" in only_plain.stderr


def test_bad_arguments_change_nothing(keepalive, cgroups):
    cgroup = cgroups.make()
    keepalive("attach", cgroup, "--observe-paths")
    for args, message in ((["--ipv4-prefix", "33"], "--ipv4-prefix must be 0..32"),
                          ([cgroups.make()], "no policy on")):
        result = keepalive("paths", *args, check=False)
        assert result.returncode != 0 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    both = keepalive("attach", cgroup, "--observe", "--observe-paths", check=False)
    assert both.returncode == 0  # observe implies observing paths
    assert keepalive.status()[0]["observe"] == "only"


def test_the_agent_observes_from_its_file_and_exports_the_bounds(keepalive, cgroups, middlebox, agent):
    box = middlebox("reset")
    box.start_server()
    cgroup = cgroups.make()
    process, _ = agent(f"""
policies:
  - cgroup: {cgroups.rel(cgroup)}
    keepidle: 5
    observe_paths: true
""")
    [status] = keepalive.status()
    assert status["observe"] == "paths" and status["keepidle"] == 5
    client = box.connect(cgroup)
    assert client.ask("options")["keepidle"] == 5  # observing and setting
    assert client.ask("ping") == {"ok": True}
    time.sleep(LIMIT - 1)
    assert client.ask("ping") == {"ok": True}
    time.sleep(LIMIT + 1.5)
    assert client.ask("ping") == {"ok": False, "error": "ECONNRESET"}
    [path] = paths(keepalive)
    text = process.scrape()
    labels = {"cgroup": cgroups.rel(cgroup), "path": path["path"]}
    assert metric(text, "keepalive_path_survived_idle_seconds", **labels) == path["survived_ms"] / 1000
    assert metric(text, "keepalive_path_died_idle_seconds", **labels) == path["died_ms"] / 1000
    assert metric(text, "keepalive_path_below_limit", **labels) == 0  # keepidle 5 s: above
    process.wait_for("reaped connection.* reset, .*after an idle gap of")
