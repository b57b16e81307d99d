# SPDX-License-Identifier: MIT
"""The shipped unit, unchanged, under a real systemd (PID 1 in systemd-nspawn).

It is installed with docs/operating.md's own commands; a small TCP server and client
(demo.service) is what the policy covers, and its sockets are read back from
the kernel (pidfd_getfd from the host, getsockopt).
"""
import json
import re
import time

import pytest

from conftest import require_privilege, require_tool
from machines import NspawnMachine
from support import KERNEL_DEFAULT, ROOT, SEED_DEFAULT, socket_fds, socket_values, values, wait_until

DEMO_UNIT = """[Unit]
Description=keepalive's test demo: a TCP server and a client connected to it
[Service]
ExecStart=/usr/bin/python3 /src/Tests/integration/helpers/holder.py
# Its only sockets are its TCP ones (the journal's stream would be one too).
StandardOutput=null
StandardError=null
"""
POLICY = """policies:
  - unit: demo.service
    keepidle: 33
    keepintvl: 4
    keepcnt: 5
"""
POLICY_VALUES = values(33, 4, 5, (33 + 4 * 5) * 1000)


def documented_install_commands():
    """The commands of docs/operating.md's systemd install block, but `make` (make test built everything)."""
    with open(f"{ROOT}/docs/operating.md") as f:
        text = f.read()
    block = re.search(r"## Install with systemd, without the package\n.*?```sh\n(.*?)```", text, re.S)
    assert block, "docs/operating.md has no '## Install with systemd, without the package' block"
    return [line for line in block.group(1).splitlines() if line.strip() and line.strip() != "make"]


@pytest.fixture
def machine_factory():
    require_privilege()
    require_tool("systemd-nspawn", "nsenter")
    made = []

    def boot(**options):
        machine = NspawnMachine(**options)
        made.append(machine)
        machine.write("/etc/systemd/system/demo.service", DEMO_UNIT)
        machine.sh("systemctl daemon-reload")
        return machine

    try:
        yield boot
    finally:
        for machine in made:
            machine.close()


def start_demo(machine, verb="start"):
    """(Re)starts demo.service; its host pid once it holds its connection."""
    machine.sh(f"systemctl {verb} demo")
    pid = wait_until(lambda: machine.pids("demo.service")[0] if machine.pids("demo.service") else None,
                     what="demo running")
    wait_until(lambda: len(socket_fds(pid)) == 2, what="demo's connection")
    return pid


def install(machine):
    """docs/operating.md's install commands, each of which must succeed."""
    for command in documented_install_commands():
        result = machine.sh(command, check=False)
        assert result.returncode == 0, (command, result.stderr, machine.journal("keepalive"))


def policies(machine):
    """{cgroup: keepidle} of the policies in force, as `keepalive status` reads them from the kernel."""
    return {p["cgroup"]: p["keepidle"] for p in json.loads(machine.sh("keepalive status --json").stdout)["policies"]}


def test_the_shipped_unit_enforces_reloads_and_stops(machine_factory):
    machine = machine_factory()
    pid = start_demo(machine)
    assert socket_values(pid) == [KERNEL_DEFAULT] * 2

    # `systemctl enable --now` returns once the first pass is done: the demo's
    # sockets, made before the agent, carry the shipped default policy.
    install(machine)
    assert machine.sh("systemctl is-active keepalive").stdout.strip() == "active"
    assert socket_values(pid) == [SEED_DEFAULT] * 2
    journal = machine.journal("keepalive")
    assert "ready:" in journal and "Failed to set thread priority" not in journal, journal
    exposure = machine.sh("systemd-analyze security keepalive.service --no-pager").stdout
    assert float(exposure.rsplit("level for keepalive.service:", 1)[1].split()[0]) <= 4.0, exposure

    # A good file: applied on reload; the restarted demo (a new cgroup) is covered.
    machine.write("/etc/keepalive/keepalive.yaml", POLICY)
    machine.sh("systemctl reload keepalive")
    wait_until(lambda: "reloaded /etc/keepalive/keepalive.yaml" in machine.journal("keepalive"), what="reload")
    pid = start_demo(machine, "restart")
    wait_until(lambda: socket_values(pid) == [POLICY_VALUES] * 2, timeout=5, what="demo under the new policy")
    assert policies(machine) == {"system.slice/demo.service": 33}

    # A bad file: one log line naming file and line; everything stays.
    machine.write("/etc/keepalive/keepalive.yaml", POLICY + "  - unit: [\n")
    machine.sh("systemctl reload keepalive")
    rejected = wait_until(lambda: re.search(r"reload rejected, policies unchanged: /etc/keepalive/keepalive.yaml:\d+",
                                            machine.journal("keepalive")), what="rejected reload")
    assert rejected
    assert machine.sh("systemctl is-active keepalive").stdout.strip() == "active"
    assert policies(machine) == {"system.slice/demo.service": 33}

    # stop: exit 0 within 2 s; the policies stay in force.
    started = time.monotonic()
    machine.sh("systemctl stop keepalive")
    assert time.monotonic() - started < 2.0
    shown = machine.sh("systemctl show keepalive -p Result -p ExecMainStatus").stdout.split()
    assert shown == ["Result=success", "ExecMainStatus=0"], shown
    assert policies(machine) == {"system.slice/demo.service": 33}

    # The demo restarted while the agent is down comes back in a new cgroup,
    # unconfigured; the agent's start covers it, the open connections too.
    machine.write("/etc/keepalive/keepalive.yaml", POLICY)
    pid = start_demo(machine, "restart")
    assert socket_values(pid) == [KERNEL_DEFAULT] * 2
    machine.sh("systemctl start keepalive")
    assert socket_values(pid) == [POLICY_VALUES] * 2


def test_a_host_without_bpffs_gets_one_outside_the_sandbox(machine_factory):
    machine = machine_factory(bpffs=False)
    assert machine.sh("findmnt -n -o FSTYPE /sys/fs/bpf").stdout.split() != ["bpf"]  # no bpffs there
    pid = start_demo(machine)
    install(machine)
    # Mounted in the machine's own mount namespace (systemd's, PID 1's), on
    # top of what was there, root only.
    mount = machine.sh("findmnt -n -o FSTYPE,OPTIONS /sys/fs/bpf").stdout.splitlines()[-1].split()
    assert mount[0] == "bpf" and "mode=700" in mount[1].split(","), mount
    assert socket_values(pid) == [SEED_DEFAULT] * 2


def test_read_only_pins_fail_the_unit_visibly(machine_factory):
    machine = machine_factory()
    start_demo(machine)
    install(machine)
    machine.sh("systemctl stop keepalive")
    start_demo(machine, "restart")  # a new cgroup: the next start must pin a link for it
    machine.write("/etc/systemd/system/keepalive.service.d/read-only.conf",
                  "[Service]\nReadOnlyPaths=/sys/fs/bpf/keepalive\n")
    machine.sh("systemctl daemon-reload")
    started = time.monotonic()
    result = machine.sh("systemctl start keepalive", check=False, timeout=30)
    assert result.returncode != 0 and time.monotonic() - started < 5, result
    wait_until(lambda: machine.sh("systemctl is-failed keepalive", check=False).stdout.strip() == "failed",
               timeout=30, interval=0.5, what="the unit failed")
    journal = machine.journal("keepalive")
    fatal = [line for line in journal.splitlines() if line.startswith("keepalive: error: ")]
    assert fatal and all("Read-only file system" in line for line in fatal), journal
    assert "Start request repeated too quickly" in journal, journal
