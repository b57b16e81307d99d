# SPDX-License-Identifier: MIT
"""Fixtures for tests against the real kernel.

Every cgroup, bpffs pin, network namespace and process a test makes has a
unique name and is removed afterwards, also when the test fails. Privileged
tests fail (never skip) when CI=true and the privilege or a kernel feature
is missing. Shared code is in support.py.
"""
import os
import shutil
import subprocess

import pytest

from support import (BPFFS, IN_CI, AgentProcess, Cgroups, Keepalive, NetnsPair, bpffs_mounted, cgroup2_mount,
                     unique)


def require_privilege():
    """Root, cgroup2 and a BPF-capable kernel: missing is a failure in CI, a skip elsewhere."""
    problems = []
    if os.geteuid() != 0:
        problems.append("not root")
    if not cgroup2_mount():
        problems.append("no cgroup2 mount")
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        problems.append("kernel without BTF")
    if problems:
        message = "privileged test needs: " + ", ".join(problems)
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def require_tool(*names):
    """Tools a test runs: missing is a failure in CI (make installs them), a skip elsewhere."""
    missing = [name for name in names if not shutil.which(name)]
    if missing:
        message = "test needs: " + ", ".join(missing) + " (make deps installs them)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def cgroups():
    require_privilege()
    made = Cgroups()
    try:
        yield made
    finally:
        made.cleanup()


@pytest.fixture(scope="session", autouse=True)
def restore_bpffs_mount():
    """keepalive mounts bpffs when it needs it; the suite leaves the mount as it found it."""
    was_mounted = bpffs_mounted()
    yield
    if not was_mounted and os.geteuid() == 0 and bpffs_mounted():
        leftovers = [n for n in os.listdir(BPFFS) if n not in ("maps.debug", "progs.debug")]
        if not leftovers:
            subprocess.run(["umount", BPFFS], check=False)


@pytest.fixture
def keepalive():
    require_privilege()
    tool = Keepalive(os.path.join(BPFFS, unique("pin")))
    try:
        yield tool
    finally:
        tool.cleanup()


@pytest.fixture
def agent(keepalive, tmp_path):
    """Starts agents on a policy text with the test's pin path; stops them all at the end."""
    started = []

    def start(policy_text, metrics=True, wait=True, env=None, args=()):
        config = tmp_path / f"keepalive-{len(started)}.yaml"
        config.write_text(policy_text)
        process = AgentProcess(str(config), keepalive.pin_path, metrics, env=env, args=args)
        started.append(process)
        if wait:
            process.wait_for("ready:")
        return process, config

    try:
        yield start
    finally:
        for process in started:
            process.stop()


@pytest.fixture
def processes():
    """Processes a test starts; killed at the end."""
    started = []
    try:
        yield started
    finally:
        for p in started:
            p.kill()
            p.wait()


@pytest.fixture
def netns_pair():
    require_privilege()
    pair = NetnsPair("192.0.2.1", "192.0.2.2")  # TEST-NET-1, inside our namespaces only
    try:
        yield pair
    finally:
        pair.close()


def pytest_terminal_summary(terminalreporter):
    """Prints the fault-injection count and the dead-peer suite's measured
    detection times, when they ran."""
    write = terminalreporter.write_line
    from test_faults import TOTALS
    if TOTALS:
        write(f"fault injection: {sum(TOTALS)} points tried over {len(TOTALS)} operations")
    from cutcable import RESULTS
    if not RESULTS:
        return
    write("")
    write("dead-peer detection: measured against configured")
    write(f"{'mode':34} {'case':28} {'configured':>10} {'measured':>9}  result")
    for mode, case, configured, measured, error in RESULTS:
        shown = f"{measured:.2f} s" if measured is not None else "-"
        write(f"{mode:34} {case:28} {configured:>8.1f} s {shown:>9}  {error}")
