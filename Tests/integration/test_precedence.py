# SPDX-License-Identifier: MIT
"""Precedence: who wins when a program sets keepalive options itself."""
import signal

import pytest

from support import attached_programs, keepalive_values, probe

# Go's dialer and listener: SO_KEEPALIVE on, then their own idle and interval, after connect.
GO_SEQUENCE = ["keepalive=1", "keepidle=300", "keepintvl=300"]
ALL_OPTIONS = ["keepalive=1", "keepidle=300", "keepintvl=60", "keepcnt=5", "user_timeout=1000"]


def setsockopt_programs(path):
    return [p for p in attached_programs(path) if p.get("attach_type") == "cgroup_setsockopt"]


def appset(cgroup, *assignments):
    out = probe("appset", *assignments, cgroup=cgroup)
    assert [c[2] for c in out["calls"]] == [0] * len(assignments), out["calls"]  # every call succeeds
    return keepalive_values(out["connected"])


POLICY = ["--keepidle", "20", "--keepintvl", "4", "--keepcnt", "3", "--user-timeout", "25000"]
POLICY_VALUES = {"keepalive": 1, "keepidle": 20, "keepintvl": 4, "keepcnt": 3, "user_timeout": 25000}


def test_application_precedence_lets_the_program_win(keepalive, cgroups):
    cg = cgroups.make()
    keepalive("attach", cg, *POLICY)
    assert appset(cg, *ALL_OPTIONS) == {"keepalive": 1, "keepidle": 300, "keepintvl": 60, "keepcnt": 5,
                                        "user_timeout": 1000}
    assert appset(cg, "keepalive=0")["keepalive"] == 0
    assert setsockopt_programs(cg) == []  # no cost where no policy asks for it


@pytest.mark.parametrize("sequence", [GO_SEQUENCE, ALL_OPTIONS, ["keepalive=0"], ["keepidle=1", "keepalive=0"]])
def test_policy_precedence_holds_against_the_program(keepalive, cgroups, sequence):
    cg = cgroups.make()
    keepalive("attach", cg, *POLICY, "--precedence", "policy")
    assert appset(cg, *sequence) == POLICY_VALUES
    assert len(setsockopt_programs(cg)) == 1


def test_options_left_at_the_system_default_stay_the_programs(keepalive, cgroups):
    cg = cgroups.make()
    keepalive("attach", cg, "--keepidle", "20", "--keepcnt", "0", "--user-timeout", "0", "--precedence", "policy")
    values = appset(cg, "keepalive=0", "keepidle=300", "keepcnt=5", "user_timeout=1000")
    assert values == {"keepalive": 1, "keepidle": 20, "keepintvl": 15, "keepcnt": 5, "user_timeout": 1000}


def test_other_options_and_non_tcp_sockets_are_not_rewritten(keepalive, cgroups):
    cg = cgroups.make()
    keepalive("attach", cg, *POLICY, "--precedence", "policy")
    out = probe("other", cgroup=cg)  # UDP and UNIX sockets: keepalive stays off
    assert all(o["keepalive"] == 0 for o in out.values())


def test_precedence_changes_in_place_and_nests(keepalive, cgroups):
    parent = cgroups.make()
    child = cgroups.make(cgroups.rel(parent) + "/child")
    keepalive("attach", parent, *POLICY)
    keepalive("attach", child, *POLICY, "--precedence", "policy")
    assert len(setsockopt_programs(child)) == 1 and setsockopt_programs(parent) == []
    assert appset(child, *GO_SEQUENCE) == POLICY_VALUES
    assert appset(parent, *GO_SEQUENCE)["keepidle"] == 300

    keepalive("attach", parent, *POLICY, "--precedence", "policy")  # the parent's link now covers both
    assert len(setsockopt_programs(parent)) == 1 and setsockopt_programs(child) == []
    assert appset(parent, *GO_SEQUENCE) == POLICY_VALUES

    keepalive("attach", parent, *POLICY, "--precedence", "application")  # handed back down to the child
    assert setsockopt_programs(parent) == [] and len(setsockopt_programs(child)) == 1
    assert appset(child, *GO_SEQUENCE) == POLICY_VALUES
    assert appset(parent, *GO_SEQUENCE)["keepidle"] == 300
    sockops = [p for p in attached_programs(parent) if p.get("attach_type") == "cgroup_sock_ops"]
    assert len(sockops) == 1  # the sock_ops link never moved

    keepalive("detach", child)
    assert setsockopt_programs(child) == [] and setsockopt_programs(parent) == []


def test_status_and_inspect_show_precedence(keepalive, cgroups):
    a, b = cgroups.make(), cgroups.make()
    keepalive("attach", a, "--precedence", "policy")
    keepalive("attach", b)
    by_cgroup = {e["cgroup"]: e for e in keepalive.status()}
    assert by_cgroup[cgroups.rel(a)]["precedence"] == "policy"
    assert by_cgroup[cgroups.rel(b)]["precedence"] == "application"
    lines = keepalive("status").stdout.splitlines()
    column = next(line for line in lines if line.startswith("CGROUP")).index("PRECEDENCE")
    shown = {line.split()[0]: line[column:].split()[0] for line in lines if line.startswith(cgroups.rel(a)[:8])}
    assert shown[cgroups.rel(a)] == "policy" and shown[cgroups.rel(b)] == "application"


def test_bad_precedence_is_refused(keepalive, cgroups):
    cg = cgroups.make()
    result = keepalive("attach", cg, "--precedence", "kernel", check=False)
    assert result.returncode != 0
    assert result.stderr.strip() == "keepalive: error: --precedence 'kernel' is neither 'application' nor 'policy'"
    assert keepalive.status() == []


def test_agent_file_sets_precedence(agent, keepalive, cgroups):
    cg = cgroups.make()
    rel = cgroups.rel(cg)
    process, config = agent(f"policies:\n  - cgroup: {rel}\n    keepidle: 20\n    precedence: policy\n")
    assert appset(cg, *GO_SEQUENCE)["keepidle"] == 20
    config.write_text(f"policies:\n  - cgroup: {rel}\n    keepidle: 20\n    precedence: sometimes\n")
    mark = process.mark()
    process.signal(signal.SIGHUP)
    assert f"{config}:4:" in process.wait_for("reload rejected", start=mark)
    assert keepalive.status()[0]["precedence"] == "policy"
