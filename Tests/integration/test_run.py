# SPDX-License-Identifier: MIT
"""`keepalive run -- COMMAND`: one command for both modes. As root the command
runs in a cgroup of its own with the policy attached (any binary: a Python
client, a static busybox, a static Go binary); without privilege through
libkeepalive_socket.so. Values are read back from the kernel; the run's
cgroup and policy are gone after a normal exit, after SIGKILL of the
command, and (at the next keepalive command or the agent's next full pass)
after SIGKILL of keepalive.
"""
import json
import os
import signal
import socket
import subprocess
import time

import pytest

from support import (BUILD, KEEPALIVE, PYTHON, SOCKPROBE, cgroup2_mount, keepalive_values, options_of_fd,
                     pidfd_getfd, run, socket_fds, values, wait_until)

GOCLIENT = os.path.join(BUILD, "test", "goclient")
BUSYBOX = "/bin/busybox"
RUNS = "keepalive.run"
SEVEN = values(7, 3, 2, (7 + 3 * 2) * 1000)
UNPRIVILEGED = "65534"  # nobody
SYSTEM_PYTHON = "/usr/bin/python3"  # one nobody may run (the tests' own may live under /root)


def runs_present():
    parent = os.path.join(cgroup2_mount(), RUNS)
    return sorted(n for n in os.listdir(parent) if os.path.isdir(os.path.join(parent, n))) if os.path.isdir(parent) else []


def keepalive_run(keepalive, *args, user=None, **kw):
    """keepalive run with the test's pin path (its environment variable: run takes the rest as the command)."""
    env = {**os.environ, "KEEPALIVE_PIN_PATH": keepalive.pin_path}
    cmd = [KEEPALIVE, "run", *args]
    if user:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--inh-caps=-all"] + cmd
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, **kw)


@pytest.fixture
def no_runs_left(keepalive):
    parent = os.path.join(cgroup2_mount(), RUNS)
    before, had_parent = runs_present(), os.path.isdir(parent)
    yield
    keepalive("status")  # a finished run left behind is reaped by any command
    assert runs_present() == before
    assert had_parent or not os.path.isdir(parent)  # the last run takes its parent along


def test_a_python_client_is_covered_and_the_run_leaves_nothing(keepalive, no_runs_left):
    result = keepalive_run(keepalive, "--keepidle", "7", "--keepintvl", "3", "--keepcnt", "2", "--",
                           PYTHON, SOCKPROBE, "pair")
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert keepalive_values(seen["connected"]) == SEVEN and keepalive_values(seen["accepted"]) == SEVEN, seen
    assert result.stderr.startswith(f"keepalive: bpf mode: policy on {RUNS}/run-"), result.stderr
    assert keepalive.status() == [] and runs_present() == []


def test_exit_status_streams_and_environment_pass_through(keepalive, no_runs_left):
    env = {**os.environ, "KEEPALIVE_PIN_PATH": keepalive.pin_path, "RUN_VAR": "kept"}
    result = subprocess.run([KEEPALIVE, "run", "--quiet", "--", "sh", "-c",
                             'read line; echo "$line $RUN_VAR"; echo err >&2; exit 3'],
                            input="hello\n", capture_output=True, text=True, env=env, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (3, "hello kept\n", "err\n")
    # A signal the command dies of is the status keepalive ends with.
    result = subprocess.run([KEEPALIVE, "run", "--quiet", "--", "sh", "-c", "kill -USR1 $$"], env=env, timeout=60)
    assert result.returncode == -signal.SIGUSR1
    # The signals keepalive gets are passed on, each of them.
    proc = subprocess.Popen([KEEPALIVE, "run", "--quiet", "--", PYTHON, "-c", SIGNAL_RECORDER],
                            env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        for sig in FORWARDED:
            proc.send_signal(sig)
            assert proc.stdout.readline() == f"{sig.name}\n"
        assert proc.wait(timeout=10) == 42  # its handler of the last, SIGTERM
    finally:
        proc.kill()
        proc.wait()


FORWARDED = [signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM, signal.SIGCONT, signal.SIGTERM]
# Says each signal it gets, one line each; exits 42 on SIGTERM.
SIGNAL_RECORDER = f"""
import signal, sys
def got(number, frame):
    print(signal.Signals(number).name, flush=True)
    if number == signal.SIGTERM:
        sys.exit(42)
for number in {[int(s) for s in FORWARDED]}:
    signal.signal(number, got)
print("ready", flush=True)
while True:
    signal.pause()
"""


def test_a_static_busybox_client_is_covered(keepalive, no_runs_left):
    assert "NEEDED" not in run(["readelf", "-d", BUSYBOX]).stdout  # static: LD_PRELOAD could never reach it
    server = socket.create_server(("127.0.0.1", 0))
    env = {**os.environ, "KEEPALIVE_PIN_PATH": keepalive.pin_path}
    client = subprocess.Popen([KEEPALIVE, "run", "--keepidle", "7", "--keepintvl", "3", "--keepcnt", "2", "--",
                               BUSYBOX, "nc", "127.0.0.1", str(server.getsockname()[1])],
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        conn, _ = server.accept()
        [name] = runs_present()
        procs = os.path.join(cgroup2_mount(), RUNS, name, "cgroup.procs")
        # keepalive starts it there, then steps out: busybox alone is left.
        [nc] = wait_until(lambda: [int(p) for p in open(procs).read().split() if int(p) != client.pid] or None,
                          what="busybox alone in the run's cgroup")
        [fd] = socket_fds(nc)
        assert options_of_fd(pidfd_getfd(nc, fd)) == SEVEN
        conn.close()
        client.stdin.close()
        assert client.wait(timeout=10) == 0
    finally:
        for pid in [int(p) for n in runs_present()
                    for p in open(os.path.join(cgroup2_mount(), RUNS, n, "cgroup.procs")).read().split()]:
            os.kill(pid, signal.SIGKILL)
        client.kill()
        client.wait()
        server.close()


def test_a_static_go_binary_is_covered_and_precedence_policy_outranks_its_dialer(keepalive, no_runs_left):
    assert "NEEDED" not in run(["readelf", "-d", GOCLIENT]).stdout
    server = socket.create_server(("127.0.0.1", 0))
    address = f"127.0.0.1:{server.getsockname()[1]}"
    try:
        # Go's dialer turns keepalive on with its own 15 s idle after connecting: under
        # application precedence that stands (over the policy's user timeout), under policy ours.
        own = json.loads(keepalive_run(keepalive, "--keepidle", "7", "--keepintvl", "3", "--keepcnt", "2", "--",
                                       GOCLIENT, address).stdout)
        ours = json.loads(keepalive_run(keepalive, "--keepidle", "7", "--keepintvl", "3", "--keepcnt", "2",
                                        "--precedence", "policy", "--", GOCLIENT, address).stdout)
    finally:
        server.close()
    assert (own["keepalive"], own["keepidle"], own["user_timeout"]) == (1, 15, 13000), own
    assert ours == SEVEN, ours


def test_sigkill_of_the_command_still_cleans_up(keepalive, no_runs_left):
    env = {**os.environ, "KEEPALIVE_PIN_PATH": keepalive.pin_path}
    result = subprocess.run([KEEPALIVE, "run", "--quiet", "--", "sh", "-c", "kill -KILL $$"], env=env, timeout=60)
    assert result.returncode == -signal.SIGKILL
    assert keepalive.status() == [] and runs_present() == []


@pytest.mark.parametrize("reaper", ["command", "agent"])
def test_sigkill_of_keepalive_leaves_the_command_covered_until_the_next_command_reaps_it(keepalive, agent, no_runs_left,
                                                                                         reaper):
    """Reaped by the next keepalive command, or by a running agent's next
    full pass (its periodic check, every 5 minutes; here a reload's)."""
    env = {**os.environ, "KEEPALIVE_PIN_PATH": keepalive.pin_path}
    if reaper == "agent":
        process, _ = agent('policies:\n  - cgroup: "ka-test-nothing-here/*"\n')
    proc = subprocess.Popen([KEEPALIVE, "run", "--quiet", "--keepidle", "7", "--keepintvl", "3", "--keepcnt", "2", "--",
                             PYTHON, "-c", "import sys; sys.stdin.readline(); print(open('/proc/self/cgroup').read())"],
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    [name] = wait_until(runs_present, what="the run's cgroup")
    procs = os.path.join(cgroup2_mount(), RUNS, name, "cgroup.procs")
    command = wait_until(lambda: [int(p) for p in open(procs).read().split() if int(p) != proc.pid] or None,
                         what="the command alone in its cgroup")
    wait_until(lambda: str(proc.pid) not in open(procs).read().split(), what="keepalive out of the run's cgroup")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # The command runs on, covered: a connection it would open gets the policy.
    [policy] = keepalive.status()
    assert policy["cgroup"] == f"{RUNS}/{name}" and policy["keepidle"] == 7
    os.kill(command[0], signal.SIGKILL)
    wait_until(lambda: open(os.path.join(cgroup2_mount(), RUNS, name, "cgroup.events")).read().find("populated 0") >= 0,
               what="the run's cgroup empty")
    if reaper == "agent":
        # No keepalive command here: any would reap the run itself.
        process.signal(signal.SIGHUP)
        process.wait_for(rf"repaired: removed the finished run {RUNS}/{name} and its policy")
        assert keepalive.status() == [] and runs_present() == []
        return
    report = keepalive.report()
    assert f"removed the finished run {RUNS}/{name} and its policy" in report["repaired"], report
    assert report["policies"] == [] and runs_present() == []


def test_without_privilege_the_preload_library_covers_dynamic_programs(keepalive, tmp_path):
    os.chmod(tmp_path, 0o755)
    result = keepalive_run(keepalive, "--keepidle", "7", "--keepintvl", "3", "--keepcnt", "2", "--",
                           SYSTEM_PYTHON, SOCKPROBE, "pair", user=UNPRIVILEGED, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert keepalive_values(seen["connected"]) == SEVEN and keepalive_values(seen["accepted"]) == SEVEN, seen
    assert result.stderr.startswith("keepalive: preload mode ("), result.stderr
    # Static binaries (busybox, Go's): named as not covered, and run all the same.
    result = keepalive_run(keepalive, "--", BUSYBOX, "true", user=UNPRIVILEGED, cwd=tmp_path)
    assert result.returncode == 0 and f"{BUSYBOX} is statically linked" in result.stderr, result.stderr
    result = keepalive_run(keepalive, "--", GOCLIENT, "127.0.0.1:9", user=UNPRIVILEGED, cwd=tmp_path)
    assert f"{GOCLIENT} is statically linked" in result.stderr, result.stderr
    assert "connection refused" in result.stderr and result.returncode == 1, result.stderr  # it ran
    quiet = keepalive_run(keepalive, "--quiet", "--", BUSYBOX, "true", user=UNPRIVILEGED, cwd=tmp_path)
    assert quiet.stderr == ""


def test_a_forced_mode_that_cannot_work_is_one_line(keepalive):
    for args, user, problem in [
        (["--mode", "bpf"], UNPRIVILEGED, "--mode bpf: missing privilege"),
        (["--rule", "remote=192.0.2.0/24,keepidle=5"], UNPRIVILEGED, "--rule needs the bpf mode"),
        (["--mode", "preload", "--precedence", "policy"], None, "--precedence policy needs the bpf mode"),
        (["--observe"], UNPRIVILEGED, "--observe and --observe-paths need the bpf mode"),
        ([], None, "give the command after --"),
    ]:
        result = keepalive_run(keepalive, *args, *(["--", "true"] if args else []), user=user, cwd="/")
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0 and len(lines) == 1 and problem in lines[0], (args, result.stderr)
