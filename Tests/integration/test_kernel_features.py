# SPDX-License-Identifier: MIT
"""What this kernel gives, as docs/kernels.md's table says, and each part at work.

Runs on the machine's own kernel with the rest of the suite, and inside each
of Debian's kernels that test_kernels.py boots. Every kernel: the feature
report equals the table's column for its series (a feature silently off, or
claimed and not working, fails), the options read back on both ends, the
most specific of nested policies, the agent covering a cgroup made after it
started, a vanished peer detected on time, paths observed, a crash repaired and an upgrade in
place. Each feature that is on is shown at work; each that is off is refused
with one line naming it, and nothing in force changes.
"""
import json
import os
import platform
import re
import subprocess
import time

import pytest

from cutcable import CASES, read_line, run_case
from middlebox import IDLEPATH, Client
from support import BUILD, KEEPALIVE, PYTHON, ROOT, hold, in_cgroup, keepalive_values, probe, socket_values, values
from test_crash import crash_points, killed_at

TABLE = os.path.join(ROOT, "docs", "kernels.md")
NEXT_OBJECT = os.path.join(BUILD, "test", "keepalive-next.bpf.o")
BOUNDED_DEPTH = 32  # KA_BOUNDED_DEPTH, bpf/keepalive_policy.h


def series():
    """This kernel's series as the table's columns name them ("5.10", "6.12")."""
    return ".".join(platform.release().split(".")[:2])


def table():
    """docs/kernels.md's table: {feature key: {series: "on"/"off"}}, and the program build row."""
    with open(TABLE) as f:
        lines = [line.strip() for line in f if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    kernels = header[3:]
    rows = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        key = cells[0].strip("`")
        rows[key] = dict(zip(kernels, cells[3:]))
    return rows


@pytest.fixture(scope="module")
def expected():
    rows = table()
    column = series()
    if column not in rows["enforcement"]:
        pytest.fail(f"docs/kernels.md has no column for Linux {column}: add what this kernel gives to its table")
    return {key: row[column] for key, row in rows.items()}


@pytest.fixture
def features(keepalive):
    report = keepalive.report()["kernel"]
    return {key: value["on"] for key, value in report["features"].items()}


def refused(keepalive, args, feature):
    """A command that asks for what the kernel lacks: one line naming it, exit 1, nothing changed."""
    before = keepalive.report()
    result = keepalive(*args, check=False)
    assert result.returncode != 0 and result.stdout == "", result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("keepalive: error: ") and feature in lines[0], result.stderr
    after = keepalive.report()
    assert after["policies"] == before["policies"] and after["programs"] == before["programs"]
    return lines[0]


def test_status_reports_what_the_table_says(keepalive, expected):
    report = keepalive.report()["kernel"]
    assert report["release"] == platform.release()
    found = {key: "on" if value["on"] else "off" for key, value in report["features"].items()}
    wanted = {key: value for key, value in expected.items() if key not in ("enforcement", "program build")}
    assert found == wanted, f"Linux {platform.release()}: status says {found}, docs/kernels.md says {wanted}"
    assert report["build"] == expected["program build"]
    text = keepalive("status").stdout.splitlines()
    assert text[0] == f"kernel {platform.release()}: the programs' {report['build']} build" + (
        "; every feature on" if all(value == "on" for value in wanted.values()) else "")
    off = [line for line in text[1:] if ": off: " in line]
    assert len(off) == list(wanted.values()).count("off"), text
    for line in off:  # "NAME: off: this kernel has no WHAT (Linux X.Y)"
        assert re.fullmatch(r".+: off: this kernel has no .+ \(Linux \d+\.\d+\)", line), line


def test_new_connections_get_the_policy_on_both_ends(keepalive, cgroups):
    cg = cgroups.make()
    keepalive("attach", cg, "--keepidle", "30", "--keepintvl", "5", "--keepcnt", "3", "--user-timeout", "20000",
              "--syncnt", "3")
    for family in ("4", "6"):
        pair = probe("pair", "--family", family, cgroup=cg)
        for side in ("listening", "connected", "accepted"):
            assert keepalive_values(pair[side]) == values(30, 5, 3, 20000), (family, side, pair[side])
        assert pair["connected"]["syncnt"] == 3, pair["connected"]
    [row] = keepalive.status()
    assert row["sockets_configured"] == 6, row


def test_the_most_specific_policy_wins_at_any_depth_the_kernel_reaches(keepalive, cgroups, features):
    top = cgroups.make()
    keepalive("attach", top, "--keepidle", "30")
    inner = cgroups.make(cgroups.rel(top) + "/a")
    keepalive("attach", inner, "--keepidle", "40")
    deeper = os.path.join(inner, "b", "c")
    os.makedirs(deeper)
    # Below the inner policy: at the deepest level the walk reaches, and one further.
    reach = 40 if features["unlimited_depth"] else BOUNDED_DEPTH
    levels = [inner] + [os.path.join(inner, *["d"] * n) for n in (reach, reach + 1)]
    os.makedirs(levels[-1])
    found = probe("across", top, deeper, *levels)
    assert found[top]["connected"]["keepidle"] == 30
    assert found[deeper]["connected"]["keepidle"] == 40
    assert found[levels[1]]["connected"]["keepidle"] == 40, f"a socket {reach} levels below its policy"
    beyond = found[levels[2]]["connected"]["keepidle"]
    if features["unlimited_depth"]:
        assert beyond == 40
    else:  # the named limit, exactly: 33 levels down the walk stops short of both policies
        assert beyond == 7200, f"{reach + 1} levels below its policy, on a kernel without bpf_loop"


def test_the_agent_covers_a_cgroup_made_after_it_started(keepalive, cgroups, agent):
    base = cgroups.make()
    process, _ = agent(f'policies:\n  - cgroup: "{cgroups.rel(base)}/*"\n    keepidle: 33\n')
    mark = process.mark()
    made = cgroups.make(cgroups.rel(base) + "/late")
    process.wait_for(re.escape(f"attached policy on {cgroups.rel(made)}:"), start=mark, timeout=20)
    assert probe("pair", cgroup=made)["connected"]["keepidle"] == 33
    metrics = process.scrape()
    for key, on in json.loads(keepalive("status", "--json").stdout)["kernel"]["features"].items():
        assert f'keepalive_kernel_feature{{feature="{key}"}} {1 if on["on"] else 0}' in metrics, key


def test_the_agent_enforces_what_it_can_of_a_file(keepalive, cgroups, agent, features):
    """An entry that asks for what the kernel lacks is left out and said once; the rest is enforced."""
    wants, has = cgroups.make(), cgroups.make()
    process, _ = agent("policies:\n"
                       f"  - cgroup: {cgroups.rel(wants)}\n    keepidle: 21\n    precedence: policy\n"
                       f"  - cgroup: {cgroups.rel(has)}\n    keepidle: 22\n")
    assert probe("pair", cgroup=has)["connected"]["keepidle"] == 22
    if features["precedence"]:
        assert probe("pair", cgroup=wants)["connected"]["keepidle"] == 21
    else:
        process.wait_for(r"policy entry at .*:2 is not enforced: precedence: policy: this kernel has no ")
        assert probe("pair", cgroup=wants)["connected"]["keepidle"] == 7200
        assert {row["cgroup"] for row in keepalive.status()} == {cgroups.rel(has)}


def test_precedence(keepalive, cgroups, features):
    cg = cgroups.make()
    keepalive("attach", cg, "--keepidle", "30")
    args = ("attach", cg, "--keepidle", "30", "--precedence", "policy")
    if not features["precedence"]:
        refused(keepalive, args, "precedence: policy: this kernel has no ")
        return
    keepalive(*args)
    result = probe("appset", "keepalive=1", "keepidle=600", cgroup=cg)
    assert result["calls"] == [["keepalive", 1, 0], ["keepidle", 600, 0]]
    assert result["connected"]["keepidle"] == 30


def test_rules(keepalive, cgroups, features):
    cg = cgroups.make()
    keepalive("attach", cg, "--keepidle", "30")
    args = ("attach", cg, "--keepidle", "30", "--rule", "remote=127.0.0.0/8,keepidle=7")
    if not features["rules"]:
        refused(keepalive, args, "rules by destination: this kernel has no ")
        return
    keepalive(*args)
    pair = probe("pair", cgroup=cg)
    assert pair["connected"]["keepidle"] == pair["accepted"]["keepidle"] == 7
    assert pair["listening"]["keepidle"] == 30
    # A changed rule set is a new inner map swapped in at the policy's rule slot.
    keepalive("attach", cg, "--keepidle", "30", "--rule", "remote=127.0.0.0/8,keepidle=8")
    assert probe("pair", cgroup=cg)["connected"]["keepidle"] == 8
    assert json.loads(keepalive("status", "--json").stdout)["repaired"] == []


@pytest.mark.parametrize("option, value", [("window_clamp", 20000), ("maxseg", 1200)])
def test_options_bpf_setsockopt_takes_only_on_some_kernels(keepalive, cgroups, features, option, value):
    cg = cgroups.make()
    keepalive("attach", cg, "--keepidle", "30")
    args = ("attach", cg, f"--{option.replace('_', '-')}", str(value))
    if not features[option]:
        refused(keepalive, args, f"{option}: this kernel has no ")
        return
    keepalive(*args)
    connected = probe("pair", cgroup=cg)["connected"]
    # The MSS in force is the smaller of the one asked for and the path's.
    assert connected[option] == value if option == "window_clamp" else connected[option] <= value, connected


def test_existing_sockets_and_inspect(keepalive, cgroups, processes, features):
    cg = cgroups.make()
    pid = hold(cg, processes)
    if not features["existing_sockets"]:
        keepalive("attach", cg, "--keepidle", "30")
        refused(keepalive, ("attach", cg, "--keepidle", "31", "--existing"), "existing sockets: this kernel has no ")
        refused(keepalive, ("inspect", cg), "inspect: this kernel has no ")
        assert [v["keepidle"] for v in socket_values(pid)] == [7200, 7200]  # untouched
        return
    keepalive("attach", cg, "--keepidle", "31", "--existing")
    assert [v["keepidle"] for v in socket_values(pid)] == [31, 31]
    rows = json.loads(keepalive("inspect", cg, "--json").stdout)
    assert sorted(row["keepidle"] for row in rows if row["state"] == "ESTABLISHED") == [31, 31], rows


def test_a_vanished_peer_is_detected_on_time_and_counted_where_the_kernel_can(keepalive, cgroups, netns_pair,
                                                                                  features):
    policy, configured, send = CASES["keepalive-probes"]
    cg = cgroups.make()
    keepalive("attach", cg, *[arg for k, v in policy.items() for arg in (f"--{k.replace('_', '-')}", str(v))])
    result = run_case(netns_pair, "connect", send, wait=3 * configured + 5, cgroup=cg)
    assert result is not None, f"still blocked after {3 * configured + 5} s"
    assert result["error"] == "ETIMEDOUT" and abs(result["elapsed"] - configured) <= 0.1 * configured + 1.0, result
    [row] = keepalive.status()
    events = json.loads(keepalive("events", "--json").stdout)
    if features["reaped_counting"]:
        assert (row["reaped"], row["reaped_keepalive"], len(events)) == (1, 1, 1), (row, events)
    else:
        assert (row["reaped"], events) == (0, []), (row, events)


def test_a_crash_is_repaired_and_an_upgrade_takes_over_in_place(keepalive, cgroups):
    """attach killed at its first, middle and last state-changing call, then run again; then another
    build's programs replace these on every link."""
    cg = cgroups.make()
    argv = [KEEPALIVE, "attach", cg, "--keepidle", "44", "--pin-path", keepalive.pin_path]
    points = crash_points(argv, os.environ)
    keepalive("detach", "--all")
    assert len(points) >= 3, points
    for call, n in (points[0], points[len(points) // 2], points[-1]):
        killed = killed_at(argv, os.environ, call, n)
        assert killed.returncode != 0, (call, n, killed)
        keepalive("attach", cg, "--keepidle", "44")
        assert [row["keepidle"] for row in keepalive.status()] == [44]
        assert probe("pair", cgroup=cg)["connected"]["keepidle"] == 44, (call, n)
        keepalive("detach", "--all")
    keepalive("attach", cg, "--keepidle", "45")
    before = keepalive.report()["programs"]
    upgraded = keepalive("status", "--json", env={**os.environ, "KEEPALIVE_BPF_OBJECT": NEXT_OBJECT})
    after = json.loads(upgraded.stdout)["programs"]
    assert after["version"] == before["version"] + 1, (before, after)
    assert probe("pair", cgroup=cg)["connected"]["keepidle"] == 45


def test_the_states_kernel_memory_follows_the_policies_in_force(keepalive, cgroups, tmp_path, features):
    """Counters are kept in chunks of 256 slots, per CPU, made as slots are taken
    and given back by the next repair once no policy uses them."""
    memory = lambda: keepalive.report()["programs"]["kernel_memory_bytes"]
    base = cgroups.make()
    keepalive("attach", base)
    one = memory()
    # No bound on `one` itself: before Linux 6.4 the kernel's account of a hash
    # map is its maximum (about 85 MB for the policies'), not what it holds.
    for i in range(256):
        os.mkdir(os.path.join(base, f"c{i}"))
    config = tmp_path / "keepalive.yaml"
    config.write_text(f'policies:\n  - cgroup: "{cgroups.rel(base)}/*"\n')
    keepalive("agent", "--config", str(config), "--once")
    assert len(keepalive.report()["policies"]) == 257
    second_chunk = memory()
    assert second_chunk > one, (one, second_chunk)
    with_rules = second_chunk
    if features["rules"]:
        keepalive("attach", base, "--rule", "remote=10.0.0.0/8,keepidle=5")
        with_rules = memory()
        assert with_rules > second_chunk, (second_chunk, with_rules)
        keepalive("attach", base)
    for i in range(256):
        os.rmdir(os.path.join(base, f"c{i}"))
    # The next command's repair drops the removed cgroups' policies and frees both chunks.
    assert memory() == one, (one, second_chunk, with_rules)
    assert re.search(r"^programs .*; its maps take \d+ KiB of kernel memory$", keepalive("status").stdout, re.M)


def test_paths_are_observed_where_the_kernel_can(keepalive, cgroups, netns_pair, features):
    """A connection that survives a probe's gap and then dies of a vanished peer: both seen,
    and the death, no longer than a gap survived, not taken for the path's idle limit."""
    cg = cgroups.make()
    flags = ["--observe-paths", "--keepidle", "2", "--keepintvl", "1", "--keepcnt", "2"]
    if not features["reaped_counting"]:
        refused = keepalive("attach", cg, *flags, check=False)
        assert refused.returncode != 0 and "reaped-connection counting" in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1 and keepalive.status() == []
        return
    keepalive("attach", cg, *flags)
    server = subprocess.Popen([PYTHON, IDLEPATH, "--netns", netns_pair.far, "echo", "192.0.2.2", "7070"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    try:
        assert read_line(server, 10) == "listening"
        client = Client(subprocess.Popen(
            in_cgroup(cg, [PYTHON, IDLEPATH, "--netns", netns_pair.near, "client", "192.0.2.2", "7070"]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0))
        try:
            assert read_line(client.proc, 10) == "connected"
            assert client.ask("ping") == {"ok": True}
            time.sleep(2.6)  # a probe after 2 s, answered
            assert client.ask("ping") == {"ok": True}
            netns_pair.silence(netns_pair.far)
            assert client.ask("wait", timeout=20)["error"] == "ETIMEDOUT"
        finally:
            client.proc.kill()
            client.proc.wait()
    finally:
        server.kill()
        server.wait()
    [path] = json.loads(keepalive("paths", "--json").stdout)
    assert path["path"] == "192.0.2.2:7070" and path["survivals"] >= 1 and path["survived_ms"] >= 2000, path
    # When it fails: what the reaped program recorded of the death, if anything.
    assert path["timeouts"] == 1 and (path["died_ms"] is not None) + path["not_idle"] == 1, (
        path, keepalive("events").stdout, keepalive("status").stdout)
