# SPDX-License-Identifier: MIT
"""The agent never fails silently: a start that cannot enforce is one line and
a non-zero exit within 2 s; SIGTERM/SIGINT exit 0 within 2 s in every state;
/readyz and /livez say what the loop is doing; and a policy put on a cgroup
reaches the sockets already open there (`existing`).
"""
import os
import re
import signal
import subprocess
import time

import pytest

from support import BUILD, KERNEL_DEFAULT, KEEPALIVE, hold, run, socket_values, values, wait_until

REFUSED_OBJECT = os.path.join(BUILD, "test", "refused.bpf.o")


def start_failure(argv, env=None):
    started = time.monotonic()
    result = run(argv, check=False, env=env, timeout=10)
    return result, time.monotonic() - started


@pytest.fixture
def read_only(keepalive):
    """Makes the pin directory read-only (a bind mount over it), as a sandbox would."""
    mounted = []

    def make():
        run(["mount", "--bind", "-o", "ro", keepalive.pin_path, keepalive.pin_path])
        mounted.append(keepalive.pin_path)

    try:
        yield make
    finally:
        for path in mounted:
            subprocess.run(["umount", path], check=False)


@pytest.mark.parametrize("case", ["cgroup root", "pin path", "load", "pin"])
def test_a_start_that_cannot_enforce_is_one_line_and_a_non_zero_exit(keepalive, cgroups, tmp_path, read_only, case):
    cgroup = cgroups.make()
    config = tmp_path / "keepalive.yaml"
    config.write_text(f"policies:\n  - cgroup: {cgroups.rel(cgroup)}\n")
    argv = [KEEPALIVE, "agent", "--config", str(config), "--pin-path", keepalive.pin_path]
    env, expected = None, None
    if case == "cgroup root":
        env = {**os.environ, "KEEPALIVE_CGROUP_ROOT": str(tmp_path)}
        expected = f"'{tmp_path}' is not a cgroup2 mount"
    elif case == "pin path":
        argv[-1] = str(tmp_path / "pins")
        expected = "is not on a BPF filesystem"
    elif case == "load":
        env = {**os.environ, "KEEPALIVE_BPF_OBJECT": REFUSED_OBJECT}
        build = keepalive.report()["kernel"]["build"]  # the program's name carries its build's suffix
        program = "keepalive_sockops" + ("" if build == "full" else f"_{build}")
        expected = f"load BPF object keepalive, program {program}: R"  # R<n> invalid sock access
    else:  # the state is there, but a link for a new cgroup cannot be pinned
        keepalive("attach", cgroups.make())
        read_only()
        expected = "Read-only file system"
    result, elapsed = start_failure(argv, env)
    assert result.returncode != 0 and elapsed < 2.0, (result, elapsed)
    if case == "load":
        assert re.search(r"R\d+ invalid sock access off=\d+", result.stderr), result.stderr  # the verifier's verdict
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("keepalive: error: ") and expected in errors[0], result.stderr


def test_verbose_shows_the_whole_verifier_log(keepalive, cgroups):
    env = {**os.environ, "KEEPALIVE_BPF_OBJECT": REFUSED_OBJECT}
    quiet = keepalive("attach", cgroups.make(), check=False, env=env)
    verbose = keepalive("attach", cgroups.make(), "--verbose", check=False, env=env)
    assert quiet.returncode != 0 and len(quiet.stderr.splitlines()) == 1, quiet.stderr
    assert verbose.returncode != 0 and "processed" in verbose.stderr and "invalid sock access" in verbose.stderr


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.3])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_in_any_state_exits_zero_within_two_seconds(agent, keepalive, cgroups, sig, delay):
    base = cgroups.make()
    for i in range(200):  # a first pass that takes a moment
        cgroups.make(f"{cgroups.rel(base)}/c{i}")
    process, _ = agent(f'policies:\n  - cgroup: "{cgroups.rel(base)}/*"\n', wait=False)
    process.wait_for("starting keepalive")  # its first line: from here on it is the agent's to handle
    time.sleep(delay)
    started = time.monotonic()
    process.signal(sig)
    assert process.proc.wait(timeout=5) == 0, process.lines
    assert time.monotonic() - started < 2.0


def test_readyz_after_the_first_pass_livez_while_passes_succeed(agent, keepalive, cgroups, read_only):
    base = cgroups.make()
    process, _ = agent(f'policies:\n  - cgroup: "{cgroups.rel(base)}/*"\n')
    assert process.get("/readyz") == (200, "ready\n")
    assert process.get("/livez") == (200, "alive\n")
    read_only()
    cgroups.make(f"{cgroups.rel(base)}/new")  # its link cannot be pinned
    wait_until(lambda: process.get("/livez")[0] == 503, what="/livez failing")
    assert "Read-only file system" in process.get("/livez")[1]
    assert process.get("/readyz")[0] == 200  # ready stays: it says the first pass was done
    subprocess.run(["umount", keepalive.pin_path], check=True)
    process.signal(signal.SIGHUP)  # a full pass now, rather than the next periodic one
    wait_until(lambda: process.get("/livez")[0] == 200, what="/livez back")
    assert process.proc.poll() is None


def test_the_agent_covers_existing_sockets_as_the_policy_says(agent, keepalive, cgroups, processes):
    application, policy, off = cgroups.make(), cgroups.make(), cgroups.make()
    plain = {cg: hold(cg, processes) for cg in (application, policy, off)}
    own = {cg: hold(cg, processes, own=True) for cg in (application, policy)}
    agent("policies:\n"
          f"  - cgroup: {cgroups.rel(application)}\n    keepidle: 41\n"
          f"  - cgroup: {cgroups.rel(policy)}\n    keepidle: 42\n    precedence: policy\n"
          f"  - cgroup: {cgroups.rel(off)}\n    keepidle: 43\n    existing: false\n")
    policy_values = lambda idle: values(idle, 15, 9, (idle + 15 * 9) * 1000)
    assert socket_values(plain[application]) == [policy_values(41)] * 2
    assert socket_values(plain[policy]) == [policy_values(42)] * 2
    assert socket_values(plain[off]) == [KERNEL_DEFAULT] * 2
    # The program's own keepalive stays under application precedence, not under policy.
    assert socket_values(own[application])[0] == {**KERNEL_DEFAULT, "keepalive": 1, "keepidle": 77}
    assert socket_values(own[policy])[0] == policy_values(42)
