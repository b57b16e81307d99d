# SPDX-License-Identifier: MIT
"""Killed at any system call, repaired by the next run.

Each operation (attach new, update, a parent over linked children, a
precedence change, detach, detach --all, an agent reload, an upgrade) is
traced once to find its system calls that change state (bpf(2) commands
that write, unlink, rename, mkdir); then, for each of them, the operation
runs from the same start and is killed right there (strace injects
SIGKILL), the same command runs again, and the kernel's truth is checked:
bpftool's listing of every cgroup's programs, every pinned link's cgroup and
program, `status`, and real sockets read back with getsockopt.
"""
import json
import os
import re
import subprocess

import pytest

from conftest import require_tool
from support import BPFFS, BUILD, KEEPALIVE, attached_programs, bpffs_mounted, probe, program_version, run

WRITES = {"BPF_MAP_CREATE", "BPF_PROG_LOAD", "BPF_MAP_UPDATE_ELEM", "BPF_MAP_DELETE_ELEM", "BPF_OBJ_PIN",
          "BPF_LINK_CREATE", "BPF_LINK_UPDATE", "BPF_RAW_TRACEPOINT_OPEN"}
FILE_CALLS = ["unlink", "unlinkat", "rename", "renameat", "renameat2", "mkdir", "mkdirat"]
NEXT_OBJECT = os.path.join(BUILD, "test", "keepalive-next.bpf.o")
TREE = ["p", "p/c1", "p/c2", "q"]
LOOPBACK_RULE = "name=loopback,remote=127.0.0.0/8,keepidle={}"  # the probe's connections match it


def crash_points(argv, env):
    """(syscall, n) for each state-changing call the command makes, in order."""
    trace = subprocess.run(["strace", "-f", "-qq", "-e", "trace=bpf," + ",".join(FILE_CALLS), "-o", "/dev/stdout",
                            *argv], capture_output=True, text=True, env=env, timeout=60)
    counts, points = {}, []
    for line in trace.stdout.splitlines():
        match = re.match(r"(?:\d+\s+)?(\w+)\((\w+)?", line)
        if not match:
            continue
        call, first = match.groups()
        counts[call] = counts.get(call, 0) + 1
        if call != "bpf" or first in WRITES:
            points.append((call, counts[call]))
    return points


def killed_at(argv, env, call, n):
    return subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "-e", f"inject={call}:signal=KILL:when={n}",
                           *argv], capture_output=True, text=True, env=env, timeout=60)


class Scenario:
    """A start, a command, and the state the command must end in."""

    def __init__(self, keepalive, cgroups, tmp_path):
        self.keepalive, self.cgroups, self.tmp_path = keepalive, cgroups, tmp_path
        self.base = cgroups.make()
        self.paths = {name: cgroups.make(cgroups.rel(self.base) + "/" + name) for name in TREE}

    def rel(self, name):
        return self.cgroups.rel(self.paths[name])

    def attach(self, name, *flags, env=None):
        self.keepalive("attach", self.paths[name], *flags, env=env)

    def agent_file(self, name, entries):
        path = self.tmp_path / name
        path.write_text("policies:\n" + "".join(
            f"  - cgroup: {self.rel(cgroup)}\n    keepidle: {idle}\n" for cgroup, idle in entries))
        return str(path)

    def argv(self, *args):
        return [KEEPALIVE, *args, "--pin-path", self.keepalive.pin_path]

    def reset(self):
        self.keepalive.cleanup()

    def check(self, expected, env=None):
        """The state is what `expected` says ({name: (keepidle, precedence[, a loopback rule's keepidle])}),
        by the kernel's account, and real sockets (over the loopback) get what it says."""
        self.check_policies(expected, env)
        seen = probe("across", *self.paths.values())
        for name, path in self.paths.items():
            covering = [a for a in expected if name == a or name.startswith(a + "/")]
            out = seen[path]["connected"]
            entry = expected[max(covering, key=len)] if covering else (7200,)
            want = entry[2] if len(entry) > 2 else entry[0]
            assert out["keepidle"] == want, (name, out)

    def check_policies(self, expected, env=None):
        """The policies, the kernel's attachments and the pins are what `expected` says."""
        report = json.loads(run(self.argv("status", "--json"), env=env).stdout)
        assert report["failed"] == [], report
        in_force = {p["cgroup"]: (p["keepidle"], p["precedence"]) for p in report["policies"]}
        assert in_force == {self.rel(name): value[:2] for name, value in expected.items()}, report
        for name, path in self.paths.items():
            ancestors = [a for a in expected if name != a and name.startswith(a + "/")]
            programs = attached_programs(path)
            sockops = [p for p in programs if p.get("attach_type") == "cgroup_sock_ops"]
            setsockopt = [p for p in programs if p.get("attach_type") == "cgroup_setsockopt"]
            wants_sockops = name in expected and not ancestors
            wants_setsockopt = (name in expected and expected[name][1] == "policy"
                                and not [a for a in ancestors if expected[a][1] == "policy"])
            assert len(sockops) == int(wants_sockops), (name, programs)
            assert len(setsockopt) == int(wants_setsockopt), (name, programs)
        self.check_pins()

    def check_pins(self):
        """Every pinned link is at the cgroup its name says, running the pinned program."""
        root = self.keepalive.pin_path
        if not os.path.exists(root):
            return
        program_ids = {kind: json.loads(run(["bpftool", "-j", "prog", "show", "pinned", f"{root}/{name}"]).stdout)["id"]
                       for kind, name in (("links", "keepalive_sockops"), ("links-setsockopt", "keepalive_setsockopt"))}
        for kind, program in program_ids.items():
            for pin in os.listdir(os.path.join(root, kind)):
                link = json.loads(run(["bpftool", "-j", "link", "show", "pinned", f"{root}/{kind}/{pin}"]).stdout)
                assert link["cgroup_id"] == int(pin) and link["prog_id"] == program, (kind, pin, link)


def run_scenario(scenario, setup, command, expected, env=None):
    """Every crash point of `command` (from the state `setup` makes), then the check."""
    setup()
    points = crash_points(command, env)
    assert points, "the command changed nothing"
    for call, n in points:
        scenario.reset()
        setup()
        killed = killed_at(command, env, call, n)
        assert killed.returncode != 0, f"not killed at {call} #{n}: {killed.stderr}"
        subprocess.run(command, capture_output=True, env=env, timeout=60)  # the same command again
        try:
            scenario.check(expected, env=env)
        except AssertionError as failure:
            raise AssertionError(f"killed at {call} #{n} of {len(points)}: {failure}") from None
    return len(points)


@pytest.fixture
def scenario(keepalive, cgroups, tmp_path):
    require_tool("strace")
    # bpffs as every run but the first would find it (keepalive mounts it when
    # it is not): the traced run and the killed ones must make the same calls.
    if not bpffs_mounted():
        run(["mount", "-t", "bpf", "-o", "mode=0700", "bpf", BPFFS])
    return Scenario(keepalive, cgroups, tmp_path)


def test_first_attach_makes_the_state(scenario):
    s = scenario
    points = run_scenario(s, lambda: None, s.argv("attach", s.paths["q"], "--keepidle", "11"),
                          {"q": (11, "application")})
    print(f"{points} crash points")


def test_attach_new(scenario):
    s = scenario
    run_scenario(s, lambda: s.attach("q"), s.argv("attach", s.paths["p/c1"], "--keepidle", "11"),
                 {"q": (15, "application"), "p/c1": (11, "application")})


def test_attach_update(scenario):
    s = scenario
    run_scenario(s, lambda: s.attach("p/c1", "--keepidle", "11"),
                 s.argv("attach", s.paths["p/c1"], "--keepidle", "12"), {"p/c1": (12, "application")})


def test_rules_for_a_new_policy(scenario):
    s = scenario
    run_scenario(s, lambda: s.attach("q"),
                 s.argv("attach", s.paths["p"], "--keepidle", "13", "--rule", LOOPBACK_RULE.format(21)),
                 {"q": (15, "application"), "p": (13, "application", 21)})


def test_rules_change(scenario):
    """ka_rules, then the programs' copy at the rule slot, then the policy: the run again puts the new
    rules where the programs read them, wherever it was killed."""
    s = scenario
    run_scenario(s, lambda: s.attach("p", "--keepidle", "13", "--rule", LOOPBACK_RULE.format(21)),
                 s.argv("attach", s.paths["p"], "--keepidle", "13", "--rule", LOOPBACK_RULE.format(22)),
                 {"p": (13, "application", 22)})


def test_attach_a_parent_of_linked_children(scenario):
    s = scenario

    def setup():
        s.attach("p/c1", "--keepidle", "11")
        s.attach("p/c2", "--keepidle", "12", "--precedence", "policy")

    run_scenario(s, setup, s.argv("attach", s.paths["p"], "--keepidle", "13"),
                 {"p": (13, "application"), "p/c1": (11, "application"), "p/c2": (12, "policy")})


def test_precedence_change(scenario):
    s = scenario

    def setup():
        s.attach("p", "--keepidle", "13")
        s.attach("p/c1", "--keepidle", "11", "--precedence", "policy")

    run_scenario(s, setup, s.argv("attach", s.paths["p"], "--keepidle", "13", "--precedence", "policy"),
                 {"p": (13, "policy"), "p/c1": (11, "policy")})


def test_detach_a_parent(scenario):
    s = scenario

    def setup():
        s.attach("p", "--keepidle", "13", "--precedence", "policy")
        s.attach("p/c1", "--keepidle", "11", "--precedence", "policy")
        s.attach("p/c2", "--keepidle", "12")

    run_scenario(s, setup, s.argv("detach", s.paths["p"]), {"p/c1": (11, "policy"), "p/c2": (12, "application")})


def test_detach_all(scenario):
    s = scenario

    def setup():
        s.attach("p", "--keepidle", "13")
        s.attach("p/c1", "--keepidle", "11", "--precedence", "policy")
        s.attach("q", "--keepidle", "14")

    run_scenario(s, setup, s.argv("detach", "--all"), {})
    assert not os.path.exists(s.keepalive.pin_path)


def test_agent_reload(scenario):
    s = scenario
    before = s.agent_file("a.yaml", [("p", 14), ("p/c2", 17)])
    after = s.agent_file("b.yaml", [("q", 15), ("p/c1", 16)])
    run_scenario(s, lambda: run(s.argv("agent", "--config", before, "--once")),
                 s.argv("agent", "--config", after, "--once"),
                 {"q": (15, "application"), "p/c1": (16, "application")})


def test_upgrade_in_place(scenario):
    s = scenario
    upgraded = {**os.environ, "KEEPALIVE_BPF_OBJECT": NEXT_OBJECT}

    def setup():
        s.attach("p", "--keepidle", "13")
        s.attach("p/c1", "--keepidle", "11", "--precedence", "policy")

    points = run_scenario(s, setup, s.argv("status"), {"p": (13, "application"), "p/c1": (11, "policy")},
                          env=upgraded)
    print(f"{points} crash points")
    programs = json.loads(run(s.argv("status", "--json"), env=upgraded).stdout)["programs"]
    assert programs["version"] == program_version() + 1
