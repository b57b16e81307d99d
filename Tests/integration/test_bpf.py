# SPDX-License-Identifier: MIT
"""Privileged mode: keepalive attach/detach/status against real cgroups and sockets."""
import json
import os
import socket
import subprocess

import pytest

from support import (BUILD, BPFFS, KERNEL_DEFAULT, PYTHON, SEED_DEFAULT, attached_programs, in_cgroup,
                     keepalive_values, options_of_fd, pidfd_getfd, probe, run, socket_fds, unique, values)

FOREIGN_OBJECT = os.path.join(BUILD, "test", "foreign.bpf.o")
FOREIGN_LOWAT = 123457


def our_attachments(path):
    """keepalive's sock_ops program attached at `path`, in whichever build the kernel runs (keepalive_sockops_cast, ...)."""
    return [p for p in attached_programs(path) if p.get("name", "").startswith("keepalive_sockops")]


@pytest.mark.parametrize("family", ["4", "6", "mapped"])
def test_default_policy_on_connected_accepted_and_listening_sockets(keepalive, cgroups, family):
    cg = cgroups.make()
    keepalive("attach", cg)
    out = probe("pair", "--family", family, cgroup=cg)
    for side in ("connected", "accepted", "listening"):
        assert keepalive_values(out[side]) == SEED_DEFAULT, side


def test_sockets_outside_the_cgroup_untouched(keepalive, cgroups):
    covered, other = cgroups.make(), cgroups.make()
    keepalive("attach", covered, "--keepidle", "33")
    out = probe("pair", cgroup=other)
    for side in ("connected", "accepted", "listening"):
        assert keepalive_values(out[side]) == KERNEL_DEFAULT, side


def test_custom_values_status_and_counter(keepalive, cgroups):
    cg = cgroups.make()
    relative = cgroups.rel(cg)
    result = keepalive("attach", relative, "--keepidle", "5", "--keepintvl", "2", "--keepcnt", "3",
                       "--syncnt", "2", "--maxseg", "1200", "--window-clamp", "50000")
    assert "created" in result.stdout
    out = probe("pair", cgroup=cg)
    assert keepalive_values(out["connected"]) == values(5, 2, 3, 11000)
    assert out["connected"]["syncnt"] == 2
    assert 0 < out["connected"]["maxseg"] <= 1200
    assert out["connected"]["window_clamp"] == 50000
    assert keepalive_values(out["accepted"]) == values(5, 2, 3, 11000)
    [entry] = keepalive.status()
    assert entry["cgroup"] == relative
    assert (entry["keepidle"], entry["keepintvl"], entry["keepcnt"], entry["user_timeout"]) == (5, 2, 3, 11000)
    assert entry["user_timeout_derived"] is True
    assert entry["sockets_configured"] == 3  # listening, connected, accepted
    table = keepalive("status").stdout
    assert relative in table and "11000 (derived)" in table


def test_explicit_and_system_default_user_timeout(keepalive, cgroups):
    a, b = cgroups.make(), cgroups.make()
    keepalive("attach", a, "--user-timeout", "4500")
    keepalive("attach", b, "--user-timeout", "0")
    assert probe("pair", cgroup=a)["connected"]["user_timeout"] == 4500
    assert probe("pair", cgroup=b)["connected"]["user_timeout"] == 0
    assert probe("pair", cgroup=b)["connected"]["keepalive"] == 1


def test_nested_policies_nearest_ancestor_wins(keepalive, cgroups):
    parent = cgroups.make()
    child = cgroups.make(cgroups.rel(parent) + "/child")
    grandchild = cgroups.make(cgroups.rel(child) + "/grandchild")
    sibling = cgroups.make(cgroups.rel(parent) + "/sibling")

    keepalive("attach", parent, "--keepidle", "10", "--user-timeout", "0")
    keepalive("attach", child, "--keepidle", "20", "--user-timeout", "0")
    assert probe("pair", cgroup=parent)["connected"]["keepidle"] == 10
    assert probe("pair", cgroup=sibling)["connected"]["keepidle"] == 10
    assert probe("pair", cgroup=child)["connected"]["keepidle"] == 20
    assert probe("pair", cgroup=grandchild)["connected"]["keepidle"] == 20
    # One attachment for the whole subtree, at its top.
    assert len(our_attachments(parent)) == 1
    assert our_attachments(child) == [] and our_attachments(grandchild) == []

    keepalive("detach", child)  # the child falls back to the parent's policy
    assert probe("pair", cgroup=grandchild)["connected"]["keepidle"] == 10

    keepalive("attach", child, "--keepidle", "20", "--user-timeout", "0")
    keepalive("detach", parent)  # coverage moves down to the child before the parent's link goes
    assert len(our_attachments(child)) == 1 and our_attachments(parent) == []
    assert probe("pair", cgroup=grandchild)["connected"]["keepidle"] == 20
    assert keepalive_values(probe("pair", cgroup=sibling)["connected"]) == KERNEL_DEFAULT

    keepalive("detach", child)  # the last one: kernel defaults
    assert keepalive_values(probe("pair", cgroup=grandchild)["connected"]) == KERNEL_DEFAULT
    assert our_attachments(child) == [] and our_attachments(parent) == []
    assert keepalive.status() == []


def test_child_policy_attached_first_then_parent(keepalive, cgroups):
    parent = cgroups.make()
    child = cgroups.make(cgroups.rel(parent) + "/child")
    keepalive("attach", child, "--keepidle", "20")
    assert len(our_attachments(child)) == 1
    keepalive("attach", parent, "--keepidle", "10")
    # The parent's link now covers the child: the child's own link is gone (no double run).
    assert len(our_attachments(parent)) == 1 and our_attachments(child) == []
    assert probe("pair", cgroup=child)["connected"]["keepidle"] == 20
    assert probe("pair", cgroup=parent)["connected"]["keepidle"] == 10
    entries = {e["cgroup"]: e for e in keepalive.status()}
    assert entries[cgroups.rel(parent)]["attached"] is True
    assert entries[cgroups.rel(child)]["attached"] is False


def test_update_in_place_without_second_attachment(keepalive, cgroups):
    cg = cgroups.make()
    keepalive("attach", cg, "--keepidle", "10")
    prog_ids = [p["id"] for p in our_attachments(cg)]
    result = keepalive("attach", cg, "--keepidle", "25")
    assert "updated" in result.stdout
    assert probe("pair", cgroup=cg)["connected"]["keepidle"] == 25
    assert [p["id"] for p in our_attachments(cg)] == prog_ids and len(prog_ids) == 1
    assert "unchanged" in keepalive("attach", cg, "--keepidle", "25").stdout


def load_foreign(pin):
    run(["bpftool", "prog", "load", FOREIGN_OBJECT, pin, "type", "sockops"])


def test_foreign_sock_ops_program_keeps_working(keepalive, cgroups):
    cg = cgroups.make()
    pin = os.path.join(BPFFS, unique("foreign"))
    load_foreign(pin)
    try:
        run(["bpftool", "cgroup", "attach", cg, "sock_ops", "pinned", pin, "multi"])
        try:
            before = probe("pair", cgroup=cg)["connected"]
            assert before["notsent_lowat"] == FOREIGN_LOWAT and before["keepalive"] == 0
            keepalive("attach", cg, "--keepidle", "12")
            both = probe("pair", cgroup=cg)
            for side in ("connected", "accepted"):
                assert both[side]["notsent_lowat"] == FOREIGN_LOWAT, side
                assert both[side]["keepidle"] == 12 and both[side]["keepalive"] == 1, side
            keepalive("detach", cg)
            after = probe("pair", cgroup=cg)["connected"]
            assert after["notsent_lowat"] == FOREIGN_LOWAT and after["keepalive"] == 0
        finally:
            run(["bpftool", "cgroup", "detach", cg, "sock_ops", "pinned", pin], check=False)
    finally:
        os.unlink(pin)


def test_statically_linked_client(keepalive, cgroups):
    busybox = "/bin/busybox"
    assert "NEEDED" not in run(["readelf", "-d", busybox]).stdout  # static: LD_PRELOAD could never reach it
    cg = cgroups.make()
    keepalive("attach", cg, "--keepidle", "21", "--keepintvl", "4", "--keepcnt", "2")
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    client = subprocess.Popen(in_cgroup(cg, [busybox, "nc", "127.0.0.1", str(port)]),
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        conn, _ = server.accept()
        accepted_outside = options_of_fd(os.dup(conn.fileno()))
        [fd] = socket_fds(client.pid)
        theirs = options_of_fd(pidfd_getfd(client.pid, fd))
        assert theirs == values(21, 4, 2, (21 + 8) * 1000)
        assert accepted_outside == KERNEL_DEFAULT  # the server is outside the cgroup
        conn.close()
    finally:
        client.kill()
        client.wait()
        server.close()


def test_rejected_input_changes_nothing(keepalive, cgroups):
    cg = cgroups.make()
    keepalive("attach", cg, "--keepidle", "10")
    before = keepalive.status()
    for bad in (["--keepidle", "abc"], ["--keepidle", "0x10"], ["--keepidle", "32768"], ["--keepcnt", "128"],
                ["--keepintvl", "-3"], ["--user-timeout", "-2"], ["--syncnt", "200"], ["--maxseg", "20"],
                ["--keepidle", "99999999999999999999"], ["--defer-accept", "5"]):
        result = keepalive("attach", cg, *bad, check=False)
        assert result.returncode != 0, bad
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("keepalive: error:"), (bad, result.stderr)
        assert bad[0] in lines[0], lines
        assert result.stdout == ""
    assert keepalive.status() == before
    assert probe("pair", cgroup=cg)["connected"]["keepidle"] == 10


def test_defer_accept_is_explained(keepalive, cgroups):
    cg = cgroups.make()
    result = keepalive("attach", cg, "--defer-accept", "5", check=False)
    assert result.returncode != 0 and "TCP_DEFER_ACCEPT cannot be set from BPF" in result.stderr


@pytest.mark.parametrize("target,message", [
    ("does-not-exist-{u}", "does not exist"),
    ("/tmp", "is not a cgroup v2 directory"),
    ("{cgroup2}/cgroup.procs", "is not a cgroup v2 directory"),  # a file of the hierarchy, on any layout
])
def test_bad_cgroup_refused(keepalive, cgroups, target, message):
    result = keepalive("attach", target.format(u=unique("x"), cgroup2=cgroups.mount), check=False)
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr


def test_detach_without_policy_fails(keepalive, cgroups):
    cg = cgroups.make()
    result = keepalive("detach", cg, check=False)
    assert result.returncode != 0 and "no policy" in result.stderr


def test_unprivileged_caller_refused(keepalive, cgroups):
    cg = cgroups.make()
    result = keepalive("attach", cg, check=False, user=65534)  # nobody
    assert result.returncode != 0
    assert "missing privilege" in result.stderr and "CAP_BPF" in result.stderr and "CAP_NET_ADMIN" in result.stderr
    assert not os.path.exists(keepalive.pin_path)


def test_enforcement_outlives_the_command_and_detach_all(keepalive, cgroups):
    a, b = cgroups.make(), cgroups.make()
    keepalive("attach", a)
    keepalive("attach", b, "--keepidle", "9")
    # Each attach was a separate process that has exited; the pins keep enforcing.
    assert os.path.exists(os.path.join(keepalive.pin_path, "keepalive_sockops"))
    assert keepalive_values(probe("pair", cgroup=a)["connected"]) == SEED_DEFAULT
    keepalive("detach", "--all")
    assert not os.path.exists(keepalive.pin_path)
    assert our_attachments(a) == [] and our_attachments(b) == []
    assert keepalive_values(probe("pair", cgroup=b)["connected"]) == KERNEL_DEFAULT


def test_removed_cgroup_is_pruned(keepalive, cgroups):
    keep, gone = cgroups.make(), cgroups.make()
    keepalive("attach", gone)
    os.rmdir(gone)
    # Every command starts by checking the state: status drops the policy of
    # the removed cgroup (proven gone: its path no longer exists) and says so.
    report = json.loads(keepalive("status", "--json").stdout)
    assert report["policies"] == []
    assert report["dropped"] == [f"{cgroups.rel(gone)} (cgroup removed)"]
    keepalive("attach", keep)
    assert [e["cgroup"] for e in keepalive.status()] == [cgroups.rel(keep)]
    assert sorted(os.listdir(os.path.join(keepalive.pin_path, "links"))) == [str(os.stat(keep).st_ino)]


# A listener made before a policy change, accepting after it.
LONG_LIVED_LISTENER = """
import json, socket, sys
listener = socket.create_server(("127.0.0.1", 0))
print("listening", flush=True)
for line in sys.stdin:
    if line.strip() == "own":  # the program changes its listener's idle itself
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 99)
        print("set", flush=True)
        continue
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    print(json.dumps([accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                      accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)]), flush=True)
"""


def test_accepted_sockets_follow_policy_changes_after_listen(keepalive, cgroups):
    cg = cgroups.make()
    keepalive("attach", cg, "--keepidle", "10")
    server = subprocess.Popen(in_cgroup(cg, [PYTHON, "-c", LONG_LIVED_LISTENER]), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "listening"

        def accept_one(command="accept"):
            server.stdin.write(command + "\n")
            server.stdin.flush()
            return json.loads(server.stdout.readline())

        assert accept_one() == [10, 1]           # inherited from the listener: nothing re-set
        keepalive("attach", cg, "--keepidle", "20")
        assert accept_one() == [20, 1]           # the listener still has 10; the new policy wins
        assert accept_one() == [20, 1]
        keepalive("attach", cg, "--keepidle", "10")
        assert accept_one() == [10, 1]           # and back
        server.stdin.write("own\n")
        server.stdin.flush()
        assert server.stdout.readline().strip() == "set"
        assert accept_one() == [10, 1]           # the policy again, at accept, whatever the listener had
    finally:
        server.kill()
        server.wait()
