# SPDX-License-Identifier: MIT
"""Every call that can fail, failing: nothing is guessed.

Beside test_crash.py (killed at every state-changing call), each operation
runs once traced, to list its calls that read or change state: every bpf(2)
command, and the openat, getdents64, flock, mkdir, unlink and rename calls on
the pin directory and the cgroups. Then, for each of them in turn, the same
operation runs from the same start with that call failing (strace injects an
errno that call really returns: EMFILE, ENOMEM, EACCES, EPERM, EAGAIN,
ENOSPC, EINTR, taken in turn). After each:

- the command succeeded, or it printed one line naming what failed and
  exited non-zero;
- nothing is left that keepalive can no longer see or remove: every
  keepalive link the kernel has on the test's cgroups is pinned under the
  state's root, and `status` reads the state;
- the same command, run again without a fault, makes the state exactly what
  it means (policies, links from the kernel, pins; real sockets at the end
  of each operation and every tenth point).

The points are independent, so two workers (this machine's two cores) take
every other point, each with a pin path and cgroups of its own: most of a
point is loading programs and making maps, which one core does at a time.
"""
import concurrent.futures
import json
import os
import re
import subprocess

import pytest

from conftest import require_privilege, require_tool
from support import BPFFS, Keepalive, bpffs_mounted, run, unique
from test_crash import LOOPBACK_RULE, NEXT_OBJECT, Scenario

ERRNOS = {
    "bpf": ["EMFILE", "ENOMEM", "EPERM", "EAGAIN", "EACCES"],
    "openat": ["EMFILE", "EACCES", "ENOMEM"],
    "getdents64": ["ENOMEM", "EINTR"],
    "flock": ["EINTR", "ENOLCK"],
    "mkdir": ["EACCES", "ENOSPC", "EPERM"],
    "mkdirat": ["EACCES", "ENOSPC", "EPERM"],
    "unlink": ["EACCES", "EPERM"],
    "unlinkat": ["EACCES", "EPERM"],
    "rename": ["EACCES", "EPERM", "ENOSPC"],
    "renameat": ["EACCES", "EPERM", "ENOSPC"],
    "renameat2": ["EACCES", "EPERM", "ENOSPC"],
}
TOTALS = []


def fault_points(argv, env, paths):
    """(syscall, n) for each call of the command that touches state: every
    bpf(2), and the file calls on `paths` (n counts every call of that name,
    as strace's injection does)."""
    trace = subprocess.run(["strace", "-f", "-qq", "-e", "trace=" + ",".join(ERRNOS), "-o", "/dev/stdout", *argv],
                           capture_output=True, text=True, env=env, timeout=60)
    counts, points = {}, []
    for line in trace.stdout.splitlines():
        match = re.match(r"(?:\d+\s+)?(\w+)\((.*)", line)
        if not match or match.group(1) not in ERRNOS:
            continue
        call, arguments = match.groups()
        counts[call] = counts.get(call, 0) + 1
        # getdents64 and flock take a descriptor: counted, and injected only
        # where the command touches state at all (they never run in its libraries' loading).
        if call == "bpf" or call in ("getdents64", "flock") or any(p in arguments for p in paths):
            points.append((call, counts[call]))
    return points


def failing_at(argv, env, call, n, errno):
    return subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "-e", f"inject={call}:error={errno}:when={n}",
                           *argv], capture_output=True, text=True, env=env, timeout=60)


def kernel_links(scenario):
    """Every cgroup link the kernel has on the scenario's cgroups, with its pins."""
    ids = {os.stat(path).st_ino for path in scenario.paths.values()}
    for _ in range(20):  # bpftool fails when a link of another process (the other worker's) goes while it lists them
        listed = run(["bpftool", "-j", "-f", "link", "show"], check=False)
        if listed.returncode == 0:
            return [link for link in json.loads(listed.stdout)
                    if link.get("type") == "cgroup" and link.get("cgroup_id") in ids]
    raise AssertionError(f"bpftool link show: {listed.stderr}")


def check_nothing_orphaned(scenario):
    """Every keepalive link on the test's cgroups is pinned where keepalive looks."""
    root = scenario.keepalive.pin_path
    for link in kernel_links(scenario):
        pins = link.get("pinned", [])
        assert any(p.startswith(root + "/") for p in pins), f"a link keepalive cannot see: {link}"


def check_status(scenario, expected, env):
    """What `status` reads from the kernel is what `expected` says, with nothing it could not repair."""
    report = json.loads(run(scenario.argv("status", "--json"), env=env).stdout)
    assert report["failed"] == [], report
    in_force = {p["cgroup"]: (p["keepidle"], p["precedence"]) for p in report["policies"]}
    assert in_force == {scenario.rel(name): value[:2] for name, value in expected.items()}, report
    assert all(p["covered"] for p in report["policies"]), report
    # Rules the programs would read from anywhere but the policy's rule slot show only here (and in sockets).
    assert not [line for line in report["repaired"] if "rule" in line], report


WORKERS = 2


def inject_everywhere(scenarios, case, expected, env=None):
    """Every fault point of the command `case(scenario)` gives (from the state
    its setup makes), each with an errno in turn; the workers' scenarios take
    every other point."""
    first = scenarios[0]
    setup, command = case(first)
    setup()
    points = fault_points(command, env, [first.keepalive.pin_path] + list(first.paths.values()))
    assert points, "the command touched nothing"
    errnos, turn = [], {}
    for call, _ in points:
        errnos.append(ERRNOS[call][turn.get(call, 0) % len(ERRNOS[call])])
        turn[call] = turn.get(call, 0) + 1
    first.reset()

    def worker(number):
        scenario = scenarios[number]
        setup, command = case(scenario)
        for index in range(number, len(points), len(scenarios)):
            inject_one(scenario, setup, command, points[index], errnos[index], expected, env,
                       f"({index + 1} of {len(points)})", thorough=index % 10 == 0 or index == len(points) - 1)

    with concurrent.futures.ThreadPoolExecutor(len(scenarios)) as pool:
        for done in [pool.submit(worker, number) for number in range(len(scenarios))]:
            done.result()  # a worker's failure is the test's
    TOTALS.append(len(points))
    print(f"{len(points)} fault points")
    return len(points)


def inject_one(scenario, setup, command, point, errno, expected, env, of, thorough):
    """One fault point: the command from setup's state with that call failing, then the checks."""
    call, n = point
    scenario.reset()
    setup()
    failed = failing_at(command, env, call, n, errno)
    where = f"{call} #{n} failing with {errno} {of}"
    if failed.returncode != 0:
        # One line: the whole of a command's stderr, the last of the agent's log.
        lines = failed.stderr.strip().splitlines()
        assert lines and lines[-1].startswith("keepalive: error: "), f"{where}: {failed.stderr}"
        assert len(lines) == 1 or "agent" in command, f"{where}: {failed.stderr}"
    try:
        check_nothing_orphaned(scenario)
        # Exit 0 means done: the state must be what the command meant now.
        # A failure is finished by the same command run again.
        if failed.returncode != 0:
            run(command, env=env)
        if thorough:
            scenario.check(expected, env=env)  # the kernel's attachments, pins and real sockets too
        else:
            check_status(scenario, expected, env)
    except AssertionError as failure:
        raise AssertionError(f"{where}: {failure}") from None


@pytest.fixture
def scenarios(cgroups, tmp_path):
    """A scenario for each worker: a pin path, cgroups and files of its own."""
    require_privilege()
    require_tool("strace", "bpftool")
    if not bpffs_mounted():
        run(["mount", "-t", "bpf", "-o", "mode=0700", "bpf", BPFFS])
    tools = [Keepalive(os.path.join(BPFFS, unique("pin"))) for _ in range(WORKERS)]
    try:
        made = []
        for number, tool in enumerate(tools):
            directory = tmp_path / f"worker{number}"
            directory.mkdir()
            made.append(Scenario(tool, cgroups, directory))
        yield made
    finally:
        for tool in tools:
            tool.cleanup()


def test_first_attach(scenarios):
    inject_everywhere(scenarios, lambda s: (lambda: None, s.argv("attach", s.paths["q"], "--keepidle", "11")),
                      {"q": (11, "application")})


def test_attach_update(scenarios):
    inject_everywhere(scenarios, lambda s: (lambda: s.attach("p/c1", "--keepidle", "11"),
                                            s.argv("attach", s.paths["p/c1"], "--keepidle", "12")),
                      {"p/c1": (12, "application")})


def test_rules_change(scenarios):
    """A change of rules failing at any call: the same command run again leaves the programs reading
    the new rules (the thorough checks probe them), and status finds nothing of the rules to repair."""
    inject_everywhere(scenarios, lambda s: (lambda: s.attach("p", "--keepidle", "13", "--rule", LOOPBACK_RULE.format(21)),
                                            s.argv("attach", s.paths["p"], "--keepidle", "13",
                                                   "--rule", LOOPBACK_RULE.format(22))),
                      {"p": (13, "application", 22)})


def test_attach_a_parent_of_linked_children(scenarios):
    def case(s):
        def setup():
            s.attach("p/c1", "--keepidle", "11")
            s.attach("p/c2", "--keepidle", "12", "--precedence", "policy")
        return setup, s.argv("attach", s.paths["p"], "--keepidle", "13")

    inject_everywhere(scenarios, case,
                      {"p": (13, "application"), "p/c1": (11, "application"), "p/c2": (12, "policy")})


def test_precedence_change(scenarios):
    def case(s):
        def setup():
            s.attach("p", "--keepidle", "13")
            s.attach("p/c1", "--keepidle", "11", "--precedence", "policy")
        return setup, s.argv("attach", s.paths["p"], "--keepidle", "13", "--precedence", "policy")

    inject_everywhere(scenarios, case, {"p": (13, "policy"), "p/c1": (11, "policy")})


def test_detach_a_parent(scenarios):
    def case(s):
        def setup():
            s.attach("p", "--keepidle", "13", "--precedence", "policy")
            s.attach("p/c1", "--keepidle", "11")
        return setup, s.argv("detach", s.paths["p"])

    inject_everywhere(scenarios, case, {"p/c1": (11, "application")})


def test_detach_all(scenarios):
    def case(s):
        def setup():
            s.attach("p", "--keepidle", "13")
            s.attach("p/c1", "--keepidle", "11", "--precedence", "policy")
        return setup, s.argv("detach", "--all")

    inject_everywhere(scenarios, case, {})
    assert not any(os.path.exists(s.keepalive.pin_path) for s in scenarios)


def test_agent_pass(scenarios):
    def case(s):
        before = s.agent_file("a.yaml", [("p", 14), ("p/c2", 17)])
        after = s.agent_file("b.yaml", [("q", 15), ("p/c1", 16)])
        return (lambda: run(s.argv("agent", "--config", before, "--once"))), s.argv("agent", "--config", after, "--once")

    inject_everywhere(scenarios, case, {"q": (15, "application"), "p/c1": (16, "application")})


def test_upgrade(scenarios):
    upgraded = {**os.environ, "KEEPALIVE_BPF_OBJECT": NEXT_OBJECT}

    def case(s):
        def setup():
            s.attach("p", "--keepidle", "13")
            s.attach("p/c1", "--keepidle", "11", "--precedence", "policy")
        return setup, s.argv("status")

    inject_everywhere(scenarios, case, {"p": (13, "application"), "p/c1": (11, "policy")}, env=upgraded)
