"""Fixtures for tests against the real kernel.

Every cgroup, bpffs pin and network namespace a test makes has a unique name
and is removed afterwards, also when the test fails. Privileged tests fail
(never skip) when CI=true and the privilege or a kernel feature is missing.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.path.join(ROOT, "build")
LIB = os.path.join(BUILD, "lib")
KEEPALIVE = os.path.join(BUILD, "bin", "keepalive")
HELPERS = os.path.join(os.path.dirname(__file__), "helpers")
SOCKPROBE = os.path.join(HELPERS, "sockprobe.py")
BPFFS = "/sys/fs/bpf"
IN_CI = os.environ.get("CI") == "true"
PREFIX = "ka-test-"

# The interpreter itself, never a wrapper script (pyenv shims re-exec shells).
PYTHON = os.path.realpath(sys.executable)


def unique(kind):
    return f"{PREFIX}{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def cgroup2_mount():
    """The cgroup2 mount point, from mountinfo (hybrid systems: not /sys/fs/cgroup)."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            dash = fields.index("-")
            if fields[dash + 1] == "cgroup2":
                return fields[4]
    return None


# What getsockopt reports for a socket nobody configured, and for the seed's defaults.
KERNEL_DEFAULT = {"keepalive": 0, "keepidle": 7200, "keepintvl": 75, "keepcnt": 9, "user_timeout": 0}
SEED_DEFAULT = {"keepalive": 1, "keepidle": 15, "keepintvl": 15, "keepcnt": 9, "user_timeout": 150000}


def keepalive_values(options):
    """The keepalive part of a probe's options."""
    return {k: options[k] for k in ("keepalive", "keepidle", "keepintvl", "keepcnt", "user_timeout")}


def values(idle, intvl, cnt, user_timeout):
    return {"keepalive": 1, "keepidle": idle, "keepintvl": intvl, "keepcnt": cnt, "user_timeout": user_timeout}


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


def run(cmd, check=True, env=None, timeout=60, **kw):
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, **kw)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def probe(*args, env=None, cgroup=None):
    """Runs the socket probe; returns its JSON."""
    cmd = [PYTHON, SOCKPROBE] + (["--cgroup", cgroup] if cgroup else []) + list(args)
    result = run(cmd, env=env)
    return json.loads(result.stdout)


# --- cgroups -------------------------------------------------------------------

def kill_cgroup_processes(path):
    for dirpath, dirnames, _ in os.walk(path, topdown=False):
        try:
            with open(os.path.join(dirpath, "cgroup.procs")) as f:
                pids = [int(p) for p in f.read().split()]
        except OSError:
            continue
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def remove_cgroup_tree(path):
    if not os.path.isdir(path):
        return
    kill_cgroup_processes(path)
    for _ in range(50):
        try:
            for dirpath, dirnames, _ in os.walk(path, topdown=False):
                os.rmdir(dirpath)
            return
        except OSError:
            time.sleep(0.05)  # killed processes take a moment to leave
    raise AssertionError(f"could not remove cgroup {path}")


class Cgroups:
    """Makes unique cgroups under the cgroup2 mount; removes them all at teardown."""

    def __init__(self):
        self.mount = cgroup2_mount()
        self.made = []

    def make(self, relative=None):
        relative = relative or unique("cg")
        path = os.path.join(self.mount, relative)
        os.makedirs(path)
        top = os.path.join(self.mount, relative.split("/")[0])
        if top not in self.made:
            self.made.append(top)
        return path

    def cleanup(self):
        for top in reversed(self.made):
            remove_cgroup_tree(top)


@pytest.fixture
def cgroups():
    require_privilege()
    made = Cgroups()
    try:
        yield made
    finally:
        made.cleanup()


# --- bpffs ---------------------------------------------------------------------

def bpffs_mounted():
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == BPFFS and " - bpf " in line for line in f)


@pytest.fixture(scope="session", autouse=True)
def restore_bpffs_mount():
    """keepalive mounts bpffs when it needs it; the suite leaves the mount as it found it."""
    was_mounted = bpffs_mounted()
    yield
    if not was_mounted and os.geteuid() == 0 and bpffs_mounted():
        leftovers = [n for n in os.listdir(BPFFS) if n not in ("maps.debug", "progs.debug")]
        if not leftovers:
            subprocess.run(["umount", BPFFS], check=False)


class Keepalive:
    """The keepalive command with a pin root of the test's own."""

    def __init__(self, pin_path):
        self.pin_path = pin_path

    def __call__(self, *args, check=True, env=None, user=None):
        cmd = [KEEPALIVE] + list(args) + ["--pin-path", self.pin_path]
        if user:
            cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--inh-caps=-all"] + cmd
        return run(cmd, check=check, env=env)

    def status(self):
        return json.loads(self("status", "--json").stdout)

    def cleanup(self):
        if os.path.exists(self.pin_path):
            self("detach", "--all", check=False)
        if os.path.exists(self.pin_path):
            shutil.rmtree(self.pin_path, ignore_errors=True)


@pytest.fixture
def keepalive():
    require_privilege()
    tool = Keepalive(os.path.join(BPFFS, unique("pin")))
    try:
        yield tool
    finally:
        tool.cleanup()


def attached_programs(cgroup_path):
    """Programs attached at exactly this cgroup, as bpftool reports them."""
    out = run(["bpftool", "-j", "cgroup", "show", cgroup_path]).stdout.strip()
    return json.loads(out) if out else []


def pytest_terminal_summary(terminalreporter):
    """Prints the dead-peer suite's measured detection times, when it ran."""
    try:
        from test_dead_peer import RESULTS
    except ImportError:
        return
    if not RESULTS:
        return
    write = terminalreporter.write_line
    write("")
    write("dead-peer detection: measured against configured")
    write(f"{'mode':34} {'case':28} {'configured':>10} {'measured':>9}  result")
    for mode, case, configured, measured, error in RESULTS:
        shown = f"{measured:.2f} s" if measured is not None else "-"
        write(f"{mode:34} {case:28} {configured:>8.1f} s {shown:>9}  {error}")
