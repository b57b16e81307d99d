# SPDX-License-Identifier: MIT
"""attach --existing and inspect: sockets that were open before the policy existed."""
import json
import os
import subprocess
import uuid

import pytest

from support import KERNEL_DEFAULT, PYTHON, hold, in_cgroup, run, socket_values, values

# A server that joins a cgroup (and optionally a network namespace), accepts
# `count` connections, prints its port and holds everything open.
SERVER = """
import os, socket, sys, time, ctypes
netns, count = sys.argv[1], int(sys.argv[2])
if netns != "-":
    fd = os.open("/run/netns/" + netns, os.O_RDONLY)
    assert ctypes.CDLL(None).setns(fd, 0x40000000) == 0
    socket.socket().close()
    os.system("ip link set lo up")
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
held = []
if netns != "-":  # a connection of its own, inside the namespace
    held.append(socket.create_connection(listener.getsockname()))
for _ in range(count):
    held.append(listener.accept()[0])
print("held", flush=True)
time.sleep(600)
"""


def start_server(cgroup, count, netns="-"):
    proc = subprocess.Popen(in_cgroup(cgroup, [PYTHON, "-c", SERVER, netns, str(count)]),
                            stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    return proc, port


def start_busybox_nc(cgroup, port):
    return subprocess.Popen(in_cgroup(cgroup, ["/bin/busybox", "nc", "127.0.0.1", str(port)]),
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)


def wait_held(server):
    assert server.stdout.readline().strip() == "held"


def test_existing_sockets_get_the_nearest_policy_and_outsiders_stay_untouched(keepalive, cgroups, processes):
    parent = cgroups.make()
    child = cgroups.make(cgroups.rel(parent) + "/child")
    server, port = start_server(parent, count=2)
    processes.append(server)
    inside = start_busybox_nc(child, port)     # static binary, in the child cgroup
    outside = start_busybox_nc(None, port)     # not in the subtree at all
    processes += [inside, outside]
    wait_held(server)
    assert socket_values(inside.pid) == [KERNEL_DEFAULT]

    keepalive("attach", child, "--keepidle", "31", "--user-timeout", "0")  # new sockets only
    assert socket_values(inside.pid) == [KERNEL_DEFAULT]
    result = keepalive("attach", parent, "--keepidle", "22", "--keepintvl", "3", "--keepcnt", "4", "--existing")
    # listener + 2 accepted (server, in parent) + the busybox client (child)
    assert "updated 4 existing sockets in 1 network namespaces" in result.stdout, result.stdout

    assert socket_values(inside.pid) == [values(31, 15, 9, 0)]             # the child's own policy
    assert socket_values(server.pid) == [values(22, 3, 4, 34000)] * 3      # listener and accepted
    assert socket_values(outside.pid) == [KERNEL_DEFAULT]                  # outside the subtree


def test_inspect_reports_values_from_the_kernel(keepalive, cgroups, processes):
    cg = cgroups.make()
    server, port = start_server(cg, count=1)
    processes.append(server)
    client = start_busybox_nc(cg, port)
    processes.append(client)
    wait_held(server)

    before = json.loads(keepalive("inspect", cg, "--json").stdout)
    assert len(before) == 3 and all(not s["keepalive"] and s["keepidle"] == 7200 for s in before)
    assert all(s["precedence"] is None for s in before)  # no policy yet
    keepalive("attach", cg, "--keepidle", "41", "--existing")
    after = json.loads(keepalive("inspect", cg, "--json").stdout)
    by_command = {}
    for s in after:
        by_command.setdefault(s["command"], []).append(s)
    python = os.path.basename(PYTHON)[:15]  # /proc/PID/comm
    assert sorted(by_command) == sorted(["busybox", python])
    [nc] = by_command["busybox"]
    assert nc["pid"] == client.pid and nc["state"] == "ESTABLISHED"
    assert nc["remote"] == f"127.0.0.1:{port}"
    assert sorted(s["state"] for s in by_command[python]) == ["ESTABLISHED", "LISTEN"]
    for s in after:
        assert (s["keepalive"], s["keepidle"], s["keepintvl"], s["keepcnt"], s["user_timeout"]) == \
            (True, 41, 15, 9, 176000)
        assert s["precedence"] == "application"
    # The same values the processes see on their own sockets.
    assert socket_values(client.pid) == [values(41, 15, 9, 176000)]
    table = keepalive("inspect", cg).stdout
    assert f"{client.pid}" in table and "busybox" in table and "ESTABLISHED" in table


def test_existing_sockets_in_another_network_namespace(keepalive, cgroups, processes):
    netns = f"ka-test-ns-{uuid.uuid4().hex[:8]}"
    run(["ip", "netns", "add", netns])
    try:
        cg = cgroups.make()
        server, _ = start_server(cg, count=1, netns=netns)  # connects to itself inside the namespace
        processes.append(server)
        wait_held(server)
        result = keepalive("attach", cg, "--keepidle", "23", "--existing")
        assert "updated 3 existing sockets in 2 network namespaces" in result.stdout, result.stdout
        assert socket_values(server.pid) == [values(23, 15, 9, 158000)] * 3
        listed = json.loads(keepalive("inspect", cg, "--json").stdout)
        assert len(listed) == 3 and {s["pid"] for s in listed} == {server.pid}
    finally:
        for p in processes:
            p.kill()
            p.wait()
        processes.clear()
        run(["ip", "netns", "del", netns], check=False)


@pytest.mark.parametrize("precedence", ["application", "policy"])
def test_a_socket_whose_program_set_keepalive_keeps_it_unless_the_policy_takes_precedence(keepalive, cgroups,
                                                                                           processes, precedence):
    cgroup = cgroups.make()
    own, plain = hold(cgroup, processes, own=True), hold(cgroup, processes)
    result = keepalive("attach", cgroup, "--keepidle", "23", "--precedence", precedence, "--existing")
    policy = values(23, 15, 9, (23 + 15 * 9) * 1000)
    if precedence == "application":
        assert "; 1 kept the keepalive their program set" in result.stdout, result.stdout
        assert socket_values(own)[0] == {**KERNEL_DEFAULT, "keepalive": 1, "keepidle": 77}
    else:
        assert socket_values(own)[0] == policy
    assert socket_values(own)[1] == policy      # its accepted end never had keepalive on
    assert socket_values(plain) == [policy] * 2
