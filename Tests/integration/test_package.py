# SPDX-License-Identifier: MIT
"""The Debian package, installed where it runs: a Debian 12 machine booted
with systemd as PID 1 (systemd-nspawn, the unified cgroup layout Debian 12
boots with), no network.

`make test` builds build/keepalive_<version>_<arch>.deb (make deb) and the
previous release's package, the same way from that release's own binary
(build/previous). Each test installs with apt-get from the file, as an
operator would, and reads what it checks from the machine and the kernel.
"""
import json
import os
import re
import subprocess
import time

import pytest

from conftest import require_privilege, require_tool
from machines import NspawnMachine
from support import BUILD, ROOT, SEED_DEFAULT, release, socket_values, values, wait_until

ARCH = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
PACKAGE = f"/src/build/keepalive_{release()}_{ARCH}.deb"
PREVIOUS = f"/src/build/keepalive_0.1.0_{ARCH}.deb"
APT = "DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Use-Pty=0"
PROBE = "/src/Tests/integration/helpers/sockprobe.py"
DEMO_UNIT = """[Unit]
Description=keepalive's test demo: a TCP server and a client connected to it
[Service]
ExecStart=/usr/bin/python3 /src/Tests/integration/helpers/holder.py
StandardOutput=null
StandardError=null
"""


@pytest.fixture
def machine():
    require_privilege()
    require_tool("systemd-nspawn", "nsenter")
    for deb in (PACKAGE, PREVIOUS):
        assert os.path.exists(BUILD + deb[len("/src/build"):]), f"{deb}: `make test` builds it (make deb)"
    booted = NspawnMachine(unified=True)
    try:
        booted.write("/etc/systemd/system/demo.service", DEMO_UNIT)
        booted.sh("systemctl daemon-reload")
        yield booted
    finally:
        booted.close()


def unit_pid(machine, unit, sockets=1):
    """The host pid of a unit's process once it holds `sockets` TCP sockets."""
    def held():
        procs = os.path.join(machine.cgroup(f"system.slice/{unit}"), "cgroup.procs")
        pids = [int(p) for p in open(procs).read().split()] if os.path.exists(procs) else []
        return next((pid for pid in pids if len(socket_values(pid)) >= sockets), None)
    return wait_until(held, what=f"{unit} holding {sockets} TCP sockets")


def demo(machine, verb="start"):
    """(Re)starts demo.service; its host pid once it holds its connection."""
    machine.sh(f"systemctl {verb} demo")
    return unit_pid(machine, "demo.service", sockets=2)


def active(machine):
    return machine.sh("systemctl is-active keepalive", check=False).stdout.strip()


def test_install_man_pages_completion_and_preload_by_bare_name(machine):
    install = machine.sh(f"{APT} install {PACKAGE}", timeout=120)
    assert "Setting up keepalive (" + release() + ")" in install.stdout, install.stdout
    # Enabled and started on install: the shipped policy covers the demo service.
    assert active(machine) == "active"
    assert machine.sh("systemctl is-enabled keepalive").stdout.strip() == "enabled"
    pid = demo(machine)
    wait_until(lambda: socket_values(pid) == [SEED_DEFAULT] * 2, what="the demo's connection covered")
    assert machine.sh("keepalive --version").stdout.strip() == release()
    # The installed unit verifies, its Documentation= man pages included.
    verify = machine.sh("systemd-analyze verify keepalive.service 2>&1", check=False)
    assert verify.returncode == 0 and verify.stdout == "", verify.stdout
    # Man pages render.
    for page, words in (("keepalive", "--keepidle"), ("keepalive.yaml", "policies"),
                        ("libkeepalive", "LD_PRELOAD=libkeepalive.so")):
        shown = machine.sh(f"MANPAGER=cat MANWIDTH=100 man {page} 2>&1").stdout
        assert "NAME" in shown and words in shown, (page, shown[:800])
    # The docs `keepalive --help` points to are where it says.
    assert "/usr/share/doc/keepalive" in machine.sh("keepalive --help").stdout
    shipped = machine.sh("ls /usr/share/doc/keepalive").stdout.split()
    assert {"README.md.gz", "using.md.gz", "operating.md.gz", "extending.md.gz"} <= set(shipped), shipped
    assert "keepidle" in machine.sh("zcat /usr/share/doc/keepalive/using.md.gz").stdout
    # Bash completes `keepalive att<TAB>`.
    completed = machine.sh("""bash -c 'source /usr/share/bash-completion/bash_completion
        source /usr/share/bash-completion/completions/keepalive
        COMP_WORDS=(keepalive att); COMP_CWORD=1; COMP_LINE="keepalive att"; COMP_POINT=13
        _keepalive keepalive att keepalive; echo "${COMPREPLY[*]}"'""").stdout.split()
    assert completed == ["attach"], completed
    # LD_PRELOAD by bare name, as libkeepalive's synopsis writes it: a real client's socket.
    out = json.loads(machine.sh(f"LD_PRELOAD=libkeepalive.so TCP_KEEPIDLE=7 python3 {PROBE} pair").stdout)
    assert out["connected"]["keepidle"] == 7 and out["connected"]["keepalive"] == 1
    assert out["accepted"]["keepalive"] == 0  # libkeepalive.so is the client's


def test_the_man_pages_examples(machine):
    """libkeepalive(8)'s examples as its EXAMPLES section writes them, and what
    its DESCRIPTION says of redis-cli."""
    machine.sh(f"{APT} install {PACKAGE}", timeout=120)
    machine.sh("systemctl stop keepalive && keepalive detach --all")  # only the libraries at work
    machine.sh("systemd-run --unit=web --working-directory=/tmp sh -c "
               "'LD_PRELOAD=libkeepalive_listen.so exec python3 -m http.server 8080'")
    web = unit_pid(machine, "web.service")
    # Its socket exists before listen(), the call the library wraps.
    wait_until(lambda: ":8080" in machine.sh("ss -Htln sport = :8080").stdout, what="the server listening")
    assert socket_values(web) == [SEED_DEFAULT]  # the listening socket
    trace = machine.sh("LD_PRELOAD=libkeepalive.so TCP_KEEPIDLE=2 strace -e trace=setsockopt,connect "
                       "curl -s -o /dev/null http://127.0.0.1:8080/ 2>&1").stdout
    assert re.search(r"TCP_KEEPIDLE, \[60\].*\n.*\n.*SO_KEEPALIVE, \[1\].*\n.*TCP_KEEPIDLE, \[2\], 4\) = 0\n.*"
                     r"TCP_KEEPINTVL, \[15\].*\n.*TCP_KEEPCNT, \[9\].*\n.*TCP_USER_TIMEOUT, \[137000\].*\nconnect\(", trace), trace
    # redis-cli sets keepalive itself after it connects: its own 15 s stays.
    machine.sh("systemctl start redis-server")
    machine.sh("systemd-run --unit=subscriber sh -c 'LD_PRELOAD=libkeepalive.so TCP_KEEPIDLE=30 "
               "exec redis-cli -h 127.0.0.1 SUBSCRIBE news'")
    [own] = socket_values(unit_pid(machine, "subscriber.service"))
    assert (own["keepidle"], own["user_timeout"]) == (15, 165000), own  # its idle; the library's derived timeout


def test_upgrade_from_the_previous_release_leaves_no_socket_unconfigured(machine):
    machine.sh(f"{APT} install {PREVIOUS}", timeout=120)
    assert active(machine) == "active" and machine.sh("keepalive --version").stdout.strip() == "0.1.0"
    machine.write("/etc/keepalive/keepalive.yaml", "policies:\n  - cgroup: system.slice\n    keepidle: 33\n")
    machine.sh("systemctl reload keepalive")
    wait_until(lambda: '"keepidle" : 33' in machine.sh("keepalive status --json").stdout, what="the reloaded file")
    machine.sh(f"systemd-run --unit=loop --property=StandardOutput=file:/run/loop.json python3 {PROBE} loop 8")
    time.sleep(1)
    upgrade = machine.sh(f"{APT} install {PACKAGE}", timeout=120)
    assert "Unpacking keepalive (" + release() + ") over (0.1.0)" in upgrade.stdout, upgrade.stdout
    wait_until(lambda: machine.sh("systemctl is-active loop", check=False).stdout.strip() != "active",
               timeout=30, what="the connection loop's end")
    seen = json.loads(machine.sh("cat /run/loop.json").stdout)
    for side in ("connected", "accepted"):
        assert set(seen[side]) == {"33"} and seen[side]["33"] > 100, seen  # every one configured, during the upgrade too
    assert active(machine) == "active" and machine.sh("keepalive --version").stdout.strip() == release()
    status = json.loads(machine.sh("keepalive status --json").stdout)
    assert status["programs"]["version"] > 2 and [p["keepidle"] for p in status["policies"]] == [33], status


def test_remove_and_purge_do_what_the_docs_say(machine):
    machine.sh(f"{APT} install {PACKAGE}", timeout=120)
    pid = demo(machine)
    wait_until(lambda: socket_values(pid) == [SEED_DEFAULT] * 2, what="the demo covered")
    # remove: the agent stops, every policy goes (nothing could show or remove them
    # once the binary is gone); the policy file stays.
    machine.sh(f"{APT} remove keepalive", timeout=120)
    assert active(machine) in ("inactive", "unknown")
    assert set(machine.sh("ls /sys/fs/bpf", check=False).stdout.split()) <= {"maps.debug", "progs.debug"}  # the kernel's own
    assert machine.sh("test -e /usr/sbin/keepalive", check=False).returncode != 0
    assert machine.sh("test -f /etc/keepalive/keepalive.yaml", check=False).returncode == 0
    pid = demo(machine, "restart")
    assert socket_values(pid)[0]["keepalive"] == 0  # new connections are no longer configured
    # purge: the policy file goes too.
    machine.sh(f"{APT} purge keepalive", timeout=120)
    assert machine.sh("test -e /etc/keepalive", check=False).returncode != 0
    assert machine.sh("systemctl list-unit-files keepalive.service --no-legend", check=False).stdout.strip() == ""


def test_a_downgrade_starts_the_older_release_afresh(machine):
    machine.sh(f"{APT} install {PACKAGE}", timeout=120)
    machine.sh("keepalive attach system.slice --keepidle 41")  # a policy of the command line's
    downgrade = machine.sh(f"{APT} install --allow-downgrades {PREVIOUS}", timeout=120)
    assert "Unpacking keepalive (0.1.0) over (" + release() + ")" in downgrade.stdout, downgrade.stdout
    # The newer binary removed its state before it went: the older one, which
    # would refuse it, starts on nothing and puts the file's policies back.
    assert active(machine) == "active" and machine.sh("keepalive --version").stdout.strip() == "0.1.0"
    pid = demo(machine)
    wait_until(lambda: socket_values(pid) == [SEED_DEFAULT] * 2, what="the demo covered by the older release")


def console_blocks(path, heading):
    """The ```console blocks under a `## heading...` of a markdown file, as
    [(command, [expected output lines])]."""
    with open(path) as f:
        text = f.read()
    steps = []
    for section in re.findall(rf"\n## {heading}[^\n]*\n(.*?)(?=\n## |\Z)", text, re.S):
        for block in re.findall(r"```console\n(.*?)```", section, re.S):
            for line in block.splitlines():
                if line.startswith(("# ", "$ ")):
                    steps.append((line[2:], []))
                else:
                    steps[-1][1].append(line)
    return steps


def same_line(expected, actual, header):
    """Equal but for what differs from run to run: a process id under a PID
    header, the programs' object hash, the kernel's release, the kernel
    memory the state takes (it grows with the CPUs)."""
    mask = lambda line: re.sub(r"take \d+ KiB", "take N KiB", re.sub(r"^kernel \S+:", "kernel RELEASE:",
                               re.sub(r"\([0-9a-f]{12}\)", "(HASH)", line))).split()
    want, got = mask(expected), mask(actual)
    if len(want) != len(got):
        return False
    names = header.split() if header else []
    return all(w == g or (i < len(names) and names[i] == "PID" and w.isdigit() and g.isdigit())
               for i, (w, g) in enumerate(zip(want, got)))


def test_the_readmes_first_five_minutes(machine):
    """README's first-five-minutes blocks, run as written on the unified layout
    with the package installed; each output as README shows it ('...' ends
    what is compared of one)."""
    machine.sh(f"{APT} install {PACKAGE}", timeout=120)
    steps = console_blocks(os.path.join(ROOT, "README.md"), "First five minutes")
    assert len(steps) >= 8, steps
    script = "\n".join(f"echo '@@step {n}'\n{command}" for n, (command, _) in enumerate(steps))
    machine.write("/root/readme.sh", script + "\n")
    out = machine.sh("cd /root && bash readme.sh 2>&1").stdout
    outputs = re.split(r"^@@step \d+\n", out, flags=re.M)[1:]
    assert len(outputs) == len(steps), out
    for (command, expected), actual in zip(steps, outputs):
        actual = actual.splitlines()
        shown = expected[:expected.index("...")] if "..." in expected else expected
        if "..." not in expected:
            assert len(actual) == len(expected), (command, actual)
        header = expected[0] if expected and "PID" in expected[0].split() else None
        for want, got in zip(shown, actual):
            assert same_line(want, got, header), (command, want, got)


def test_keepalive_run_makes_a_systemd_scope_and_leaves_none(machine):
    """Where systemd runs, `keepalive run` covers its command in a transient
    scope, which is gone, with its policy, when the command has exited."""
    machine.sh(f"{APT} install {PACKAGE}", timeout=120)
    # From a service of the machine's own (this shell's cgroup is the host's, outside the
    # machine's view): keepalive moves itself into the scope and back.
    result = machine.sh("systemd-run --quiet --wait --pipe --working-directory=/src -- "
                        f"keepalive run --keepidle 7 --keepintvl 3 --keepcnt 2 -- python3 {PROBE} pair")
    seen = json.loads(result.stdout)
    assert {k: seen["connected"][k] for k in ("keepalive", "keepidle", "keepintvl", "keepcnt", "user_timeout")} \
        == values(7, 3, 2, 13000), seen
    scope = re.match(r"keepalive: bpf mode: policy on \S*/(keepalive-run-[0-9a-f-]+\.scope): ",
                     result.stderr)
    assert scope, result.stderr
    status = json.loads(machine.sh("keepalive status --json").stdout)
    assert not any(p["cgroup"].endswith(scope.group(1)) for p in status["policies"]), status
    units = machine.sh("systemctl list-units --all --no-legend 'keepalive-run-*'").stdout
    assert units.strip() == "", units
