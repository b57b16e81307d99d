# SPDX-License-Identifier: MIT
"""Upgrades in place: another build's programs replace the pinned ones on every
link (bpf_link_update) with no socket unconfigured in between, keepalive
0.1.0's pinned layout is migrated, and an older binary refuses newer state.

A later build is this one's bpf/keepalive.bpf.c compiled with the next
program version (build/test/keepalive-next.bpf.o, used through
KEEPALIVE_BPF_OBJECT); 0.1.0's layout is build/test/layout1.bpf.o, pinned
and linked here as 0.1.0 did.
"""
import ctypes
import json
import os
import re
import struct
import subprocess

from support import BUILD, ROOT, PREVIOUS_KEEPALIVE, PYTHON, SOCKPROBE, in_cgroup, keepalive_values, probe, program_version, run, values

NEXT_OBJECT = os.path.join(BUILD, "test", "keepalive-next.bpf.o")
# The release before this one, built by `make test` from the git history (Makefile: PREVIOUS_COMMIT).
PREVIOUS = PREVIOUS_KEEPALIVE
LAYOUT1_OBJECT = os.path.join(BUILD, "test", "layout1.bpf.o")
BPF_CGROUP_SOCK_OPS = 3


# The pinned layout this build writes (bpf/keepalive_policy.h).
LAYOUT = int(re.search(r"#define KA_STATE_LAYOUT\s+(\d+)", open(os.path.join(ROOT, "bpf", "keepalive_policy.h")).read()).group(1))


def require_previous():
    if not os.path.exists(PREVIOUS):
        raise AssertionError(f"{PREVIOUS} is missing: `make test` builds it (make previous)")
    return PREVIOUS


def upgraded():
    return {**os.environ, "KEEPALIVE_BPF_OBJECT": NEXT_OBJECT}


def program_of(keepalive, kind="links"):
    """{pin: program id} of the state's links of one kind, from bpftool."""
    directory = os.path.join(keepalive.pin_path, kind)
    return {pin: json.loads(run(["bpftool", "-j", "link", "show", "pinned", os.path.join(directory, pin)]).stdout)
            ["prog_id"] for pin in os.listdir(directory)}


def pinned_program_id(keepalive, name):
    return json.loads(run(["bpftool", "-j", "prog", "show", "pinned", os.path.join(keepalive.pin_path, name)])
                      .stdout)["id"]


def test_an_upgrade_under_live_connections_leaves_no_socket_unconfigured(keepalive, cgroups):
    parent = cgroups.make()
    child = cgroups.make(cgroups.rel(parent) + "/child")
    keepalive("attach", parent, "--keepidle", "33")
    keepalive("attach", child, "--keepidle", "34", "--precedence", "policy")
    before = program_of(keepalive)
    # Connections in a loop in both cgroups while another build takes over.
    loops = [subprocess.Popen(in_cgroup(cg, [PYTHON, SOCKPROBE, "loop", "3"]), stdout=subprocess.PIPE, text=True)
             for cg in (parent, child)]
    upgrade = keepalive("status", "--json", env=upgraded())
    seen = [json.loads(loop.communicate(timeout=30)[0]) for loop in loops]
    assert json.loads(upgrade.stdout)["programs"]["version"] == next_version()
    # Every socket made before, during and after the swap was configured.
    for idle, counts in zip(("33", "34"), seen):
        for side in ("connected", "accepted"):
            assert set(counts[side]) == {idle}, counts
            assert counts[side][idle] > 100, counts
    # The same links, now running the new programs.
    after = program_of(keepalive)
    assert after.keys() == before.keys()
    assert set(after.values()) == {pinned_program_id(keepalive, "keepalive_sockops")} != set(before.values())
    assert probe("pair", cgroup=child)["connected"]["keepidle"] == 34


def next_version():
    return program_version() + 1


def test_an_older_binary_refuses_newer_state_and_changes_nothing(keepalive, cgroups):
    cgroup = cgroups.make()
    keepalive("attach", cgroup, "--keepidle", "35", env=upgraded())
    links = program_of(keepalive)
    result = keepalive("attach", cgroups.make(), check=False)
    assert result.returncode != 0
    assert f"runs program version {next_version()}, newer than this keepalive's {next_version() - 1}" in result.stderr
    assert program_of(keepalive) == links
    assert [p["cgroup"] for p in json.loads(keepalive("status", "--json", env=upgraded()).stdout)["policies"]] \
        == [cgroups.rel(cgroup)]


class Libbpf:
    """The few libbpf calls keepalive 0.1.0 made to link and pin, through ctypes."""

    def __init__(self):
        self.lib = ctypes.CDLL("libbpf.so.1", use_errno=True)

    def check(self, result, what):
        if result < 0:
            raise OSError(ctypes.get_errno() or -result, what)
        return result

    def load_as_0_1_0(self, object_path, root):
        """What keepalive 0.1.0 did over any state: reuse each of its maps
        pinned by name (bpf_map__reuse_fd, which checks nothing), then load
        its object. Returns the load's result (negative: refused)."""
        self.lib.bpf_object__open_file.restype = ctypes.c_void_p
        self.lib.bpf_object__find_map_by_name.restype = ctypes.c_void_p
        obj = self.lib.bpf_object__open_file(object_path.encode(), None)
        assert obj, "open layout1.bpf.o"
        try:
            for name in ("ka_policies", "ka_sockets", "ka_errors"):
                pin = os.path.join(root, name)
                if os.path.exists(pin):
                    fd = self.check(self.lib.bpf_obj_get(pin.encode()), "bpf_obj_get")
                    map_ = self.lib.bpf_object__find_map_by_name(ctypes.c_void_p(obj), name.encode())
                    self.check(self.lib.bpf_map__reuse_fd(ctypes.c_void_p(map_), fd), "reuse " + name)
                    os.close(fd)
            return self.lib.bpf_object__load(ctypes.c_void_p(obj))
        finally:
            self.lib.bpf_object__close(ctypes.c_void_p(obj))

    def link_cgroup(self, program_pin, cgroup, link_pin):
        program = self.check(self.lib.bpf_obj_get(program_pin.encode()), "bpf_obj_get")
        directory = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
        try:
            link = self.check(self.lib.bpf_link_create(program, directory, BPF_CGROUP_SOCK_OPS, None), "link")
            self.check(self.lib.bpf_obj_pin(link, link_pin.encode()), "pin")
            os.close(link)
        finally:
            os.close(directory)
            os.close(program)


def pin_layout1(root, cgroup, keepidle, sockets):
    """keepalive 0.1.0's state: its maps and programs under its pin names, one
    policy (slot 0, `sockets` counted there) and its link."""
    os.makedirs(os.path.join(root, "links"))
    os.makedirs(os.path.join(root, "links-setsockopt"))
    staging = os.path.join(root, "staging")
    run(["bpftool", "prog", "loadall", LAYOUT1_OBJECT, staging, "pinmaps", root])
    os.rename(os.path.join(staging, "keepalive_sockops"), os.path.join(root, "prog"))
    os.rename(os.path.join(staging, "keepalive_setsockopt"), os.path.join(root, "prog-setsockopt"))
    os.rmdir(staging)
    cgroup_id = os.stat(cgroup).st_ino
    derived = (keepidle + 4 * 5) * 1000
    record = struct.pack("<7i3I", keepidle, 4, 5, derived, 0, 0, 0, 1, 0, 7)  # flags: derived user timeout
    run(["bpftool", "map", "update", "pinned", os.path.join(root, "ka_policies"),
         "key", *[str(b) for b in struct.pack("<Q", cgroup_id)], "value", *[str(b) for b in record]])
    run(["bpftool", "map", "update", "pinned", os.path.join(root, "ka_sockets"),
         "key", *[str(b) for b in struct.pack("<I", 0)], "value", *[str(b) for b in struct.pack("<Q", sockets)]])
    Libbpf().link_cgroup(os.path.join(root, "prog"), cgroup, os.path.join(root, "links", str(cgroup_id)))


def test_the_state_of_keepalive_0_1_0_is_migrated_in_place(keepalive, cgroups):
    cgroup = cgroups.make()
    pin_layout1(keepalive.pin_path, cgroup, keepidle=44, sockets=5)
    old = probe("pair", cgroup=cgroup)["connected"]
    assert (old["keepalive"], old["keepidle"], old["keepintvl"]) == (1, 44, 75)  # 0.1.0's program: keepidle only
    counted = json.loads(run(["bpftool", "-j", "map", "lookup", "pinned", os.path.join(keepalive.pin_path, "ka_sockets"),
                              "key", "0", "0", "0", "0"]).stdout)["value"]
    counted = int.from_bytes(bytes(int(b, 16) for b in counted), "little") if isinstance(counted, list) else counted
    assert counted > 5  # 0.1.0's program counted the probe's sockets too
    report = keepalive.report()
    [policy] = report["policies"]
    assert (policy["cgroup"], policy["keepidle"], policy["keepintvl"], policy["keepcnt"]) == (cgroups.rel(cgroup), 44, 4, 5)
    assert policy["sockets_configured"] == counted and policy["attached"] is True, policy
    # The same link, now running this binary's program; 0.1.0's pins are gone.
    [(pin, program)] = program_of(keepalive).items()
    assert pin == str(os.stat(cgroup).st_ino) and program == pinned_program_id(keepalive, "keepalive_sockops")
    assert not {"prog", "prog-setsockopt"} & set(os.listdir(keepalive.pin_path))
    for name in ("ka_policies", "ka_sockets"):  # 0.1.0's maps gone; guards against 0.1.0 under their names
        guard = json.loads(run(["bpftool", "-j", "map", "show", "pinned", os.path.join(keepalive.pin_path, name)]).stdout)
        assert (guard["type"], guard["bytes_key"], guard["bytes_value"]) == ("array", 4, 4), guard
    assert keepalive_values(probe("pair", cgroup=cgroup)["connected"]) == values(44, 4, 5, 64000)


def test_the_previous_release_state_is_migrated_in_place_under_live_connections(keepalive, cgroups):
    """The release before this one (pinned layout 2) over which this binary
    runs: its policies (layout 3 added the origin) and counters carried over,
    its links switched in place with no socket unconfigured, its map unpinned."""
    previous = require_previous()
    parent = cgroups.make()
    child = cgroups.make(cgroups.rel(parent) + "/child")
    run([previous, "attach", parent, "--keepidle", "33", "--pin-path", keepalive.pin_path])
    run([previous, "attach", child, "--keepidle", "34", "--precedence", "policy", "--pin-path", keepalive.pin_path])
    probe("pair", cgroup=parent)
    before = program_of(keepalive)
    assert "ka_policies_v2" in os.listdir(keepalive.pin_path)
    loops = [subprocess.Popen(in_cgroup(cg, [PYTHON, SOCKPROBE, "loop", "3"]), stdout=subprocess.PIPE, text=True)
             for cg in (parent, child)]
    report = keepalive.report()  # this binary: the upgrade
    seen = [json.loads(loop.communicate(timeout=30)[0]) for loop in loops]
    for idle, counts in zip(("33", "34"), seen):
        for side in ("connected", "accepted"):
            assert set(counts[side]) == {idle} and counts[side][idle] > 100, counts
    policies = {p["cgroup"]: p for p in report["policies"]}
    assert (policies[cgroups.rel(parent)]["keepidle"], policies[cgroups.rel(child)]["precedence"]) == (33, "policy")
    assert policies[cgroups.rel(parent)]["sockets_configured"] >= 3  # the count made under the previous release
    assert program_of(keepalive).keys() == before.keys()  # the same links, switched
    assert "ka_policies_v2" not in os.listdir(keepalive.pin_path)
    # The previous release over the new state: refused, nothing changed.
    refused = run([previous, "attach", cgroups.make(), "--pin-path", keepalive.pin_path], check=False)
    assert refused.returncode != 0 and f"has layout {LAYOUT}, written by a newer keepalive" in refused.stderr, refused.stderr
    assert {p["cgroup"] for p in keepalive.status()} == set(policies)


def test_layout_3s_counters_are_taken_over_into_cells_of_their_own(keepalive, cgroups):
    """Layout 3 kept counters in per-CPU arrays of every slot (ka_counters,
    ka_rule_counters); layout 4 in a cell per slot in use. A layout-3 state,
    made from today's by pinning those arrays as layout 3 had them and
    writing layout 3 into ka_meta, is taken over at the next command: each
    count moved into its cell, the arrays unpinned."""
    parent = cgroups.make()
    child = cgroups.make(cgroups.rel(parent) + "/child")
    keepalive("attach", parent, "--keepidle", "33")  # slot 0
    keepalive("attach", child, "--keepidle", "34", "--rule", "remote=127.0.0.0/8,keepidle=7")  # slot 1, rule slot 0
    root = keepalive.pin_path
    cpus = int(open("/sys/devices/system/cpu/possible").read().strip().split("-")[-1]) + 1
    counts = {"ka_counters": (65536, {0: 5, 1: 6}), "ka_rule_counters": (16384, {0: 7})}
    for name, (entries, slots) in counts.items():
        pin = os.path.join(root, name)
        run(["bpftool", "map", "create", pin, "type", "percpu_array", "key", "4", "value", "24", "entries",
             str(entries), "name", name])
        for slot, configured in slots.items():  # bpftool writes the value on every CPU
            value = struct.pack("<QQQ", configured, 1, 0)
            run(["bpftool", "map", "update", "pinned", pin, "key", *hexbytes(struct.pack("<I", slot)),
                 "value", *hexbytes(value)])
    meta = os.path.join(root, "ka_meta")
    current = bytes(int(b, 16) for b in json.loads(run(["bpftool", "-j", "map", "lookup", "pinned", meta, "key",
                                                       "0", "0", "0", "0"]).stdout)["value"])
    run(["bpftool", "map", "update", "pinned", meta, "key", "0", "0", "0", "0", "value",
         *hexbytes(struct.pack("<I", 3) + current[4:])])
    report = keepalive.report()
    policies = {p["cgroup"]: p for p in report["policies"]}
    assert (policies[cgroups.rel(parent)]["sockets_configured"], policies[cgroups.rel(parent)]["reaped"]) \
        == (5 * cpus, cpus)
    assert policies[cgroups.rel(child)]["sockets_configured"] == 6 * cpus
    assert policies[cgroups.rel(child)]["rules"][0]["sockets_matched"] == 7 * cpus
    assert not {"ka_counters", "ka_rule_counters"} & set(os.listdir(root))
    assert probe("pair", cgroup=child)["connected"]["keepidle"] == 7


def hexbytes(data):
    return [f"0x{b:02x}" for b in data]


def test_keepalive_0_1_0_refuses_todays_state_and_status_names_pins_it_does_not_know(keepalive, cgroups):
    """keepalive 0.1.0 knew nothing of versions: over any state it reused its
    maps by name and loaded (Libbpf.load_as_0_1_0 does what it did, with its
    maps as layout1.bpf.o has them). Today's state pins, under the names of
    its policy and socket maps, guards of another shape: its load fails, and
    nothing in force changes."""
    cgroup = cgroups.make()
    keepalive("attach", cgroup, "--keepidle", "45")
    pins, links = sorted(os.listdir(keepalive.pin_path)), program_of(keepalive)
    assert Libbpf().load_as_0_1_0(LAYOUT1_OBJECT, keepalive.pin_path) < 0
    assert sorted(os.listdir(keepalive.pin_path)) == pins and program_of(keepalive) == links
    assert keepalive.status()[0]["keepidle"] == 45
    assert probe("pair", cgroup=cgroup)["connected"]["keepidle"] == 45
    # A pin no layout of keepalive's has: named by status, and left alone.
    stranger = os.path.join(keepalive.pin_path, "ka_stranger")
    run(["bpftool", "map", "create", stranger, "type", "array", "key", "4", "value", "4", "entries", "1",
         "name", "stranger"])
    report = keepalive.report()
    assert report["kept_unknown"] == [f"{stranger}: belongs to no layout this keepalive knows; left alone"]
    assert f"kept: {stranger}: belongs to no layout" in keepalive("status").stdout
    kept = keepalive("detach", "--all").stderr
    assert os.path.exists(stranger) and stranger in kept
    os.unlink(stranger)
