# SPDX-License-Identifier: MIT
"""The privileged suites on the unified cgroup layout, the one most hosts
boot (Debian 12, Ubuntu 22.04+, Fedora, RHEL 9: /sys/fs/cgroup is the
cgroup2 mount), where this machine is hybrid (cgroup2 at
/sys/fs/cgroup/unified).

A Debian 12 machine booted by systemd-nspawn with the unified hierarchy
(SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1), on the tree the deployment tests use,
runs the suites in which the layout matters, with this build bound in
read-only: BPF (attach, detach, status by path), the agent (discovery,
targets, its start), and the crashes whose repair walks a tree of cgroups
by path (a parent over its children, detach, detach --all, the agent's
reload). The other crash points (a first attach, an update, rules, an
upgrade) change only the pinned state, the same on both layouts, and took
226 of the run's 358 s at 3f00ae4: the host's run covers them. The
suites of what the programs do with a socket (existing sockets, precedence,
reaped connections) run on the host only: the programs see cgroup ids, never
the mount. It sees its
own subtree as the root (a cgroup namespace); cgroup ids are the host's.
"""
import pytest

from conftest import require_privilege, require_tool
from machines import NspawnMachine

CRASHES_BY_PATH = ["test_attach_a_parent_of_linked_children", "test_precedence_change", "test_detach_a_parent",
                   "test_detach_all", "test_agent_reload"]
SUITES = ["test_bpf.py", "test_agent.py", "test_agent_lifecycle.py",
          *(f"test_crash.py::{test}" for test in CRASHES_BY_PATH)]


@pytest.fixture
def unified_machine():
    require_privilege()
    require_tool("systemd-nspawn", "nsenter")
    machine = NspawnMachine(unified=True)
    try:
        yield machine
    finally:
        machine.close()


def test_the_privileged_suites_pass_on_the_unified_layout(unified_machine):
    machine = unified_machine
    assert machine.sh("stat -fc %T /sys/fs/cgroup").stdout.strip() == "cgroup2fs"
    assert "cgroup2 /sys/fs/cgroup " in machine.sh("grep ' - cgroup2 ' /proc/self/mountinfo | awk '{print $9, $5, $10}'").stdout + " "
    suites = " ".join(f"Tests/integration/{suite}" for suite in SUITES)
    result = machine.sh(f"CI=true PYTHONDONTWRITEBYTECODE=1 python3 -m pytest -p no:cacheprovider -q {suites} 2>&1",
                        check=False, timeout=1200)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    print(f"unified layout: {summary}")
    assert result.returncode == 0 and " passed" in summary and "skipped" not in summary, result.stdout[-6000:]
