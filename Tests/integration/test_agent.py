# SPDX-License-Identifier: MIT
"""keepalive agent as a real process: policy file, new cgroups, SIGHUP, metrics, restarts."""
import os
import re
import signal
import subprocess
import time

import pytest

from support import KEEPALIVE, attached_programs, in_cgroup, probe, run, unique


def status_by_cgroup(keepalive):
    return {e["cgroup"]: e for e in keepalive.status()}


def test_glob_covers_existing_and_new_cgroups_at_once(agent, keepalive, cgroups):
    base = cgroups.make()
    existing = cgroups.make(cgroups.rel(base) + "/existing")
    process, _ = agent(f'policies:\n  - cgroup: "{cgroups.rel(base)}/*"\n    keepidle: 33\n')
    assert probe("pair", cgroup=existing)["connected"]["keepidle"] == 33

    mark = process.mark()
    start = time.monotonic()
    new = cgroups.make(cgroups.rel(base) + "/new-pod")
    process.wait_for(re.escape(f"attached policy on {cgroups.rel(new)}:"), timeout=2, start=mark)
    elapsed = time.monotonic() - start
    print(f"new cgroup covered {elapsed * 1000:.1f} ms after mkdir")
    assert elapsed < 2
    assert probe("pair", cgroup=new)["connected"]["keepidle"] == 33
    # The base itself is not matched by base/*; one link per covered cgroup.
    assert cgroups.rel(base) not in status_by_cgroup(keepalive)


def test_policy_for_a_cgroup_that_does_not_exist_yet(agent, keepalive, cgroups):
    base = cgroups.make()
    later = cgroups.rel(base) + "/later/deeper"
    process, _ = agent(f"policies:\n  - cgroup: {later}\n    keepidle: 44\n")
    assert keepalive.status() == []
    path = cgroups.make(later)
    process.wait_for(re.escape(f"attached policy on {later}:"), timeout=2)
    assert probe("pair", cgroup=path)["connected"]["keepidle"] == 44


def test_systemd_unit_resolved_to_its_cgroup(agent, keepalive, cgroups):
    slice_name, unit = unique("u") + ".slice", unique("svc") + ".service"
    process, _ = agent(f"policies:\n  - unit: {unit}\n    keepidle: 55\n")
    cgroups.make(slice_name)
    path = cgroups.make(f"{slice_name}/{unit}")
    process.wait_for(re.escape(f"attached policy on {slice_name}/{unit}:"), timeout=2)
    assert probe("pair", cgroup=path)["connected"]["keepidle"] == 55


def test_sighup_applies_the_file_as_a_diff(agent, keepalive, cgroups):
    a, b, c = cgroups.make(), cgroups.make(), cgroups.make()
    process, config = agent(f"policies:\n  - cgroup: {cgroups.rel(a)}\n    keepidle: 10\n"
                            f"  - cgroup: {cgroups.rel(b)}\n    keepidle: 20\n")
    links_before = [p["id"] for p in attached_programs(a)]
    config.write_text(f"policies:\n  - cgroup: {cgroups.rel(a)}\n    keepidle: 11\n"
                      f"  - cgroup: {cgroups.rel(c)}\n    keepcnt: 4\n")
    mark = process.mark()
    process.signal(signal.SIGHUP)
    process.wait_for("reloaded", start=mark)
    process.wait_for(re.escape(f"detached policy from {cgroups.rel(b)}"), start=mark)
    status = status_by_cgroup(keepalive)
    assert set(status) == {cgroups.rel(a), cgroups.rel(c)}
    assert status[cgroups.rel(a)]["keepidle"] == 11 and status[cgroups.rel(c)]["keepcnt"] == 4
    assert [p["id"] for p in attached_programs(a)] == links_before  # updated in place
    assert probe("pair", cgroup=a)["connected"]["keepidle"] == 11
    assert probe("pair", cgroup=b)["connected"]["keepalive"] == 0


BAD_FILES = {
    "broken YAML": ("policies:\n  - cgroup: [unclosed\n", 2),
    "unknown key": ("policies:\n  - cgroup: x\n    keepidel: 5\n", 3),
    "out of range": ("policies:\n  - cgroup: x\n    keepcnt: 500\n", 3),
    "wrong type": ("policies:\n  - cgroup: x\n    keepidle: fast\n", 3),
    "not a list": ("policies:\n  cgroup: x\n", 2),
    "no target": ("policies:\n  - keepidle: 5\n", 2),
}


def test_sighup_with_bad_files_changes_nothing(agent, keepalive, cgroups):
    a = cgroups.make()
    good = f"policies:\n  - cgroup: {cgroups.rel(a)}\n    keepidle: 10\n"
    process, config = agent(good)
    before = keepalive.status()
    for kind, (text, line) in BAD_FILES.items():
        config.write_text(text)
        mark = process.mark()
        process.signal(signal.SIGHUP)
        logged = process.wait_for("reload rejected", start=mark)
        assert f"{config}:{line}:" in logged, (kind, logged)
        assert process.proc.poll() is None, kind
        assert keepalive.status() == before, kind
    assert probe("pair", cgroup=a)["connected"]["keepidle"] == 10
    metrics = process.scrape()
    assert f'keepalive_reloads_total{{result="failure"}} {len(BAD_FILES)}' in metrics


def test_metrics_after_real_connections(agent, keepalive, cgroups):
    a = cgroups.make()
    process, _ = agent(f"policies:\n  - cgroup: {cgroups.rel(a)}\n")
    for _ in range(2):
        probe("pair", cgroup=a)  # a listening, a connected and an accepted socket each
    metrics = process.scrape()
    assert f'keepalive_sockets_configured_total{{cgroup="{cgroups.rel(a)}"}} 6' in metrics
    assert re.search(r"^keepalive_policies 1(\.0)?$", metrics, re.M)
    assert 'keepalive_setsockopt_errors_total{option="keepidle"} 0' in metrics
    assert re.search(r'keepalive_build_info\{version="[^"]+"\} 1', metrics)
    assert 'keepalive_reloads_total{result="success"} 0' in metrics
    probe("pair", cgroup=a)
    assert f'keepalive_sockets_configured_total{{cgroup="{cgroups.rel(a)}"}} 9' in process.scrape()


def test_kill9_keeps_enforcement_and_restart_adopts_it(agent, keepalive, cgroups):
    base = cgroups.make()
    pods = [cgroups.make(cgroups.rel(base) + f"/pod{i}") for i in range(3)]
    text = f'policies:\n  - cgroup: "{cgroups.rel(base)}/*"\n    keepidle: 21\n'
    first, _ = agent(text)
    attachments = {p: attached_programs(p) for p in pods}
    assert all(len(a) == 1 for a in attachments.values())
    first.proc.kill()
    first.proc.wait()
    assert probe("pair", cgroup=pods[0])["connected"]["keepidle"] == 21  # still enforced
    second, _ = agent(text)
    assert {p: attached_programs(p) for p in pods} == attachments  # adopted, nothing re-attached
    assert not [l for l in second.lines if "attached policy" in l or "updated policy" in l]
    assert probe("pair", cgroup=pods[1])["connected"]["keepidle"] == 21


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_exit_zero_within_a_second_leaving_policies(agent, keepalive, cgroups, sig):
    a = cgroups.make()
    process, _ = agent(f"policies:\n  - cgroup: {cgroups.rel(a)}\n    keepidle: 12\n")
    start = time.monotonic()
    process.signal(sig)
    assert process.proc.wait(timeout=5) == 0
    assert time.monotonic() - start < 1.0
    assert probe("pair", cgroup=a)["connected"]["keepidle"] == 12


def test_policies_set_with_the_cli_are_left_alone(agent, keepalive, cgroups):
    mine, theirs = cgroups.make(), cgroups.make()
    keepalive("attach", theirs, "--keepidle", "66")
    process, config = agent(f"policies:\n  - cgroup: {cgroups.rel(mine)}\n")
    config.write_text("policies: []\n")
    process.signal(signal.SIGHUP)
    process.wait_for(re.escape(f"detached policy from {cgroups.rel(mine)}"))
    assert set(status_by_cgroup(keepalive)) == {cgroups.rel(theirs)}


def test_invalid_file_at_start_is_refused(keepalive, cgroups, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("policies:\n  - cgroup: x\n    keepidle: 0.5\n")
    result = run([KEEPALIVE, "agent", "--config", str(config), "--pin-path", keepalive.pin_path], check=False)
    assert result.returncode != 0
    assert result.stderr.strip() == f"keepalive: error: {config}:3: 'keepidle' must be a whole number"
    assert not os.path.exists(keepalive.pin_path)


def test_cli_selects_by_unit_and_pid(keepalive, cgroups):
    slice_name, unit = unique("u") + ".slice", unique("svc") + ".service"
    cgroups.make(slice_name)
    unit_path = cgroups.make(f"{slice_name}/{unit}")
    keepalive("attach", "--unit", unit, "--keepidle", "77")
    assert probe("pair", cgroup=unit_path)["connected"]["keepidle"] == 77

    other = cgroups.make()
    sleeper = subprocess.Popen(in_cgroup(other, ["sleep", "60"]))
    try:
        for _ in range(100):
            if str(sleeper.pid) in open(os.path.join(other, "cgroup.procs")).read():
                break
            time.sleep(0.01)
        keepalive("attach", "--pid", str(sleeper.pid), "--keepidle", "88")
        assert probe("pair", cgroup=other)["connected"]["keepidle"] == 88
        keepalive("detach", "--pid", str(sleeper.pid))
    finally:
        sleeper.kill()
        sleeper.wait()
    keepalive("detach", "--unit", unit)
    assert keepalive.status() == []
    result = keepalive("attach", "--unit", "no-such-" + unit, check=False)
    assert result.returncode != 0 and "no cgroup for unit" in result.stderr
