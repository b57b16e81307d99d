# SPDX-License-Identifier: MIT
"""The pinned state under adversity: one test per way enforcement used to be
lost silently (issue 13's findings), each reproducing the situation for real.
"""
import json
import os
import signal
import socket
import subprocess
import time

import pytest

from support import (BPFFS, KEEPALIVE, PYTHON, bpffs_mounted, free_port, in_cgroup, metric, probe, run, unique,
                     wait_until)

NO_DAC_OVERRIDE = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def status_paths(keepalive):
    return {e["cgroup"] for e in keepalive.status()}


# 1. Policies are dropped only when their own cgroup is proven gone.

def test_a_cgroup_root_cannot_read_keeps_its_policy(keepalive, cgroups):
    delegated = cgroups.make()
    app = cgroups.make(cgroups.rel(delegated) + "/app")
    keepalive("attach", app, "--keepidle", "21")
    os.chown(delegated, 65534, 65534)
    os.chmod(delegated, 0o700)  # its owner shuts everyone else out
    try:
        # root as a hardened unit runs it: no capability reads through permissions.
        report = json.loads(keepalive("status", "--json", prefix=NO_DAC_OVERRIDE).stdout)
        assert [e["cgroup"] for e in report["policies"]] == [cgroups.rel(app)]
        assert report["dropped"] == []
        assert any(cgroups.rel(app) in line and "Permission denied" in line for line in report["kept_unknown"])
        other = cgroups.make()
        keepalive("attach", other, prefix=NO_DAC_OVERRIDE)  # another command: the same
    finally:
        os.chmod(delegated, 0o755)
    assert status_paths(keepalive) == {cgroups.rel(app), cgroups.rel(other)}
    assert probe("pair", cgroup=app)["connected"]["keepidle"] == 21


def test_an_agent_out_of_descriptors_keeps_every_policy(keepalive, cgroups, tmp_path):
    base = cgroups.make()
    pods = [cgroups.make(cgroups.rel(base) + f"/pod{i}") for i in range(5)]
    cli_owned = cgroups.make()
    keepalive("attach", cli_owned, "--keepidle", "31")
    config = tmp_path / "keepalive.yaml"
    config.write_text(f'policies:\n  - cgroup: "{cgroups.rel(base)}/*"\n    keepidle: 22\n')
    port = free_port()
    # The agent under a small descriptor limit, and a client holding as many
    # metrics connections open as the agent accepts.
    log = tmp_path / "agent.log"
    agent = subprocess.Popen(["prlimit", "--nofile=64:64", KEEPALIVE, "agent", "--config", str(config),
                              "--pin-path", keepalive.pin_path, "--metrics-address", f"127.0.0.1:{port}"],
                             stderr=log.open("w"))
    held = []
    try:
        wait_until(lambda: "ready:" in log.read_text(), what="agent ready")
        for _ in range(200):
            try:
                held.append(socket.create_connection(("127.0.0.1", port), timeout=1))
            except OSError:
                break
        agent.send_signal(signal.SIGHUP)  # a full pass, with descriptors scarce
        time.sleep(1.5)
        assert status_paths(keepalive) == {cgroups.rel(p) for p in pods} | {cgroups.rel(cli_owned)}
        assert agent.poll() is None, log.read_text()
    finally:
        for s in held:
            s.close()
        agent.kill()
        agent.wait()
    assert probe("pair", cgroup=pods[0])["connected"]["keepidle"] == 22


# 3. The agent notices its pinned state vanished, and restores it.

def test_the_agent_restores_its_state_after_detach_all(agent, keepalive, cgroups):
    cg = cgroups.make()
    process, _ = agent(f"policies:\n  - cgroup: {cgroups.rel(cg)}\n    keepidle: 23\n")
    mark = process.mark()
    keepalive("detach", "--all")
    gone = time.monotonic()
    process.wait_for("vanished or was replaced", timeout=3, start=mark)
    wait_until(lambda: status_paths(keepalive) == {cgroups.rel(cg)}, timeout=3, what="policy restored")
    print(f"restored {time.monotonic() - gone:.2f} s after detach --all")
    assert time.monotonic() - gone < 3
    assert probe("pair", cgroup=cg)["connected"]["keepidle"] == 23
    metrics = process.scrape()
    assert metric(metrics, "keepalive_policies") == 1
    assert metric(metrics, "keepalive_sockets_configured_total", cgroup=cgroups.rel(cg)) == 3


def test_the_agent_restores_its_state_after_bpffs_is_unmounted(agent, keepalive, cgroups):
    cg = cgroups.make()
    process, _ = agent(f"policies:\n  - cgroup: {cgroups.rel(cg)}\n    keepidle: 24\n")
    others = [n for n in os.listdir(BPFFS) if n not in ("maps.debug", "progs.debug") and n != os.path.basename(keepalive.pin_path)]
    if others:
        pytest.skip(f"other pins in {BPFFS} ({others}): unmounting would remove them")
    mark = process.mark()
    run(["umount", "--lazy", BPFFS])  # a plain umount fails: the agent holds its claim open
    process.wait_for("vanished or was replaced", timeout=3, start=mark)
    wait_until(lambda: os.path.exists(keepalive.pin_path) and status_paths(keepalive) == {cgroups.rel(cg)},
               timeout=3, what="state re-made on a new bpffs")
    assert probe("pair", cgroup=cg)["connected"]["keepidle"] == 24


# 4. Two agents on one pin path.

def test_a_second_agent_refuses_to_start(agent, keepalive, cgroups):
    cg = cgroups.make()
    first, config = agent(f"policies:\n  - cgroup: {cgroups.rel(cg)}\n    keepidle: 25\n")
    second = run([KEEPALIVE, "agent", "--config", str(config), "--pin-path", keepalive.pin_path], check=False,
                 timeout=5)
    assert second.returncode != 0
    assert f"another keepalive agent (pid {first.proc.pid}) is enforcing the state at {keepalive.pin_path}" in second.stderr
    assert first.proc.poll() is None
    assert probe("pair", cgroup=cg)["connected"]["keepidle"] == 25


# 5. A reload at capacity: the stale policies go before the new ones come.

def test_reload_from_one_full_glob_to_another(agent, keepalive, cgroups):
    count = 33_000  # twice this is over the map's 65536 policies
    x, y = cgroups.make(), cgroups.make()
    for base in (x, y):
        for i in range(count):
            os.mkdir(os.path.join(base, str(i)))
    process, config = agent(f'policies:\n  - cgroup: "{cgroups.rel(x)}/*"\n', metrics=False, wait=False)
    process.wait_for("ready:", timeout=120)
    mark = process.mark()
    config.write_text(f'policies:\n  - cgroup: "{cgroups.rel(y)}/*"\n')
    process.signal(signal.SIGHUP)
    process.wait_for("reloaded", start=mark)
    wait_until(lambda: len(keepalive.status()) == count and all(
        e["cgroup"].startswith(cgroups.rel(y)) for e in keepalive.status()), timeout=120, interval=1,
        what="the new glob in force")
    assert not [l for l in process.lines[mark:] if "policy map is full" in l or " error " in l]
    assert probe("pair", cgroup=os.path.join(y, "7"))["connected"]["keepalive"] == 1
    process.stop()


# 6. One odd cgroup never blocks the others; cgroups vanishing mid-pass are no error.

def test_a_cgroup_name_that_is_not_utf8(agent, keepalive, cgroups):
    base = cgroups.make()
    odd = os.path.join(base.encode(), b"pod-\xff")
    os.mkdir(odd)
    normal = cgroups.make(cgroups.rel(base) + "/pod-normal")
    agent(f'policies:\n  - cgroup: "{cgroups.rel(base)}/*"\n    keepidle: 26\n')
    assert status_paths(keepalive) == {cgroups.rel(normal), cgroups.rel(base) + "/pod-\\xff"}
    assert probe("pair", cgroup=normal)["connected"]["keepidle"] == 26
    out = json.loads(run(in_cgroup(odd, [PYTHON, os.path.join(os.path.dirname(__file__), "helpers", "sockprobe.py"),
                                         "pair"])).stdout)
    assert out["connected"]["keepidle"] == 26


def test_cgroups_coming_and_going_fast_are_no_error(agent, keepalive, cgroups):
    base = cgroups.make()
    keep = cgroups.make(cgroups.rel(base) + "/keep")
    process, _ = agent(f'policies:\n  - cgroup: "{cgroups.rel(base)}/*"\n    keepidle: 27\n')
    mark = process.mark()
    for i in range(3000):
        path = os.path.join(base, f"churn{i}")
        os.mkdir(path)
        os.rmdir(path)
    time.sleep(1.5)
    problems = [l for l in process.lines[mark:] if " error " in l or "failed" in l]
    assert problems == []
    assert process.get("/livez")[0] == 200
    assert status_paths(keepalive) == {cgroups.rel(keep)}
    assert probe("pair", cgroup=keep)["connected"]["keepidle"] == 27


# 7. The inotify limit: said so, and a periodic rescan covers what is unwatched.

def test_the_inotify_limit_is_logged_and_rescans_cover(agent, keepalive, cgroups):
    base = cgroups.make()
    tenants = [cgroups.make(cgroups.rel(base) + f"/t{i}") for i in range(30)]
    with open("/proc/sys/fs/inotify/max_user_watches") as f:
        before = f.read().strip()
    try:
        with open("/proc/sys/fs/inotify/max_user_watches", "w") as f:
            f.write("12")
        process, _ = agent(f'policies:\n  - cgroup: "{cgroups.rel(base)}/*/app"\n    keepidle: 28\n')
        process.wait_for(r"inotify watch limit is reached \(raise fs.inotify.max_user_watches\)")
        app = cgroups.make(cgroups.rel(tenants[-1]) + "/app")  # below a directory left unwatched
        start = time.monotonic()
        wait_until(lambda: cgroups.rel(app) in status_paths(keepalive), timeout=12, interval=0.2,
                   what="covered by the rescan")
        print(f"covered by the rescan {time.monotonic() - start:.1f} s after mkdir")
    finally:
        with open("/proc/sys/fs/inotify/max_user_watches", "w") as f:
            f.write(before)
    assert probe("pair", cgroup=app)["connected"]["keepidle"] == 28


# 8. No depth limit below a policy.

def test_a_socket_forty_levels_below_its_policy(keepalive, cgroups):
    top = cgroups.make()
    leaf = cgroups.make(cgroups.rel(top) + "/" + "/".join(f"l{i}" for i in range(40)))
    keepalive("attach", top, "--keepidle", "29")
    assert probe("pair", cgroup=leaf)["connected"]["keepidle"] == 29


# 9. Input.

@pytest.mark.parametrize("target", ["", ".", "a/..", "./"])
def test_paths_that_only_look_like_the_root_are_refused(keepalive, cgroups, target):
    result = keepalive("attach", target, check=False)
    assert result.returncode != 0 and "name the root cgroup explicitly as /" in result.stderr
    assert not os.path.exists(keepalive.pin_path)


def test_user_timeout_minus_one_as_documented(keepalive, cgroups):
    cg = cgroups.make()
    keepalive("attach", cg, "--keepidle", "5", "--user-timeout", "-1")
    [entry] = keepalive.status()
    assert entry["user_timeout_derived"] is True and entry["user_timeout"] == (5 + 15 * 9) * 1000


@pytest.mark.parametrize("pin_path,problem", [
    ("", "must be an absolute path"),
    ("relative/dir", "must be an absolute path"),
    ("/tmp/{u}", "is not on a BPF filesystem"),
])
def test_pin_paths_not_on_bpffs_are_refused(cgroups, pin_path, problem):
    path = pin_path.format(u=unique("pin"))
    result = run([KEEPALIVE, "attach", cgroups.make(), "--pin-path", path], check=False)
    assert result.returncode != 0 and problem in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (path and os.path.exists(path))


@pytest.mark.parametrize("owner,mode,problem", [(65534, 0o700, "owned by uid 65534"),
                                                (0, 0o777, "lets others write")])
def test_pin_directories_others_could_change_are_refused(keepalive, cgroups, owner, mode, problem):
    if not bpffs_mounted():
        run(["mount", "-t", "bpf", "-o", "mode=0700", "bpf", BPFFS])  # the session leaves it as it found it
    os.mkdir(keepalive.pin_path)
    os.chown(keepalive.pin_path, owner, owner)
    os.chmod(keepalive.pin_path, mode)
    result = keepalive("attach", cgroups.make(), check=False)
    assert result.returncode != 0 and problem in result.stderr
    assert os.listdir(keepalive.pin_path) == []
    os.rmdir(keepalive.pin_path)


def test_bpffs_mounted_by_keepalive_is_root_only(tmp_path):
    # In a mount namespace of its own, without bpffs: what keepalive mounts there.
    script = f"umount {BPFFS} 2>/dev/null; {KEEPALIVE} prepare --pin-path {BPFFS}/ka && stat -c %a {BPFFS}"
    result = run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script])
    assert int(result.stdout.splitlines()[-1], 8) & 0o777 == 0o700  # bpffs adds the sticky bit itself


def test_nul_in_a_policy_file_is_refused(tmp_path):
    config = tmp_path / "nul.yaml"
    config.write_text('policies:\n  - cgroup: "a\\0b"\n')
    result = run([KEEPALIVE, "agent", "--config", str(config), "--check"], check=False)
    assert result.returncode != 0
    assert f"{config}:2: 'cgroup' must not contain a NUL character" in result.stderr


# 10. precedence: policy, whatever the buffer; invalid values fail as they would.

def appset(cgroup, *assignments):
    return probe("appset", *assignments, cgroup=cgroup)


def test_policy_precedence_holds_for_a_buffer_longer_than_a_page(keepalive, cgroups):
    cg = cgroups.make()
    keepalive("attach", cg, "--keepidle", "20", "--precedence", "policy")
    out = appset(cg, "keepidle=300@5000", "keepintvl=60@64")
    assert [c[2] for c in out["calls"]] == [0, 0]
    assert out["connected"]["keepidle"] == 20 and out["connected"]["keepintvl"] == 15


@pytest.mark.parametrize("assignment", ["keepidle=0", "keepidle=99999", "keepintvl=0", "keepcnt=128",
                                        "user_timeout=-5"])
def test_invalid_values_still_fail_under_policy_precedence(keepalive, cgroups, assignment):
    covered, outside = cgroups.make(), cgroups.make()
    keepalive("attach", covered, "--keepidle", "20", "--keepintvl", "4", "--keepcnt", "3",
              "--user-timeout", "9000", "--precedence", "policy")
    without = appset(outside, assignment)["calls"][0][2]
    with_policy = appset(covered, assignment)["calls"][0][2]
    assert without == with_policy == 22  # EINVAL, as the kernel says without keepalive


# A state is used only from the cgroup root it was made from: a cgroup
# namespace (or another --cgroup-root) sees other paths, which would look gone.

def test_a_state_made_from_one_cgroup_root_is_refused_from_another(keepalive, cgroups):
    app = cgroups.make()
    keepalive("attach", app, "--keepidle", "23")
    subtree = cgroups.make()  # a cgroup2 directory, as a container's namespace root would be
    result = keepalive("status", "--cgroup-root", subtree, check=False)
    assert result.returncode != 0
    assert "rooted at cgroup id 1, but this process sees it rooted at id" in result.stderr, result.stderr
    assert status_paths(keepalive) == {cgroups.rel(app)}
    assert probe("pair", cgroup=app)["connected"]["keepidle"] == 23
