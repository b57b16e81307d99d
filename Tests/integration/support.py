# SPDX-License-Identifier: MIT
"""What the integration tests share: paths, running keepalive and probes,
real cgroups, reading options back from the kernel, a running agent.

Fixtures live in conftest.py; everything here is plain code, imported as
`from support import ...` (bench/bench.py uses it too).
"""
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.path.join(ROOT, "build")
# The preload libraries under test: the build's own, or (make test-preload-sanitized)
# those built with ASan and UBSan, whose runtime must then come first in LD_PRELOAD.
LIB = os.environ.get("KEEPALIVE_TEST_PRELOAD_LIB", os.path.join(BUILD, "lib"))
PRELOAD_FIRST = os.environ.get("KEEPALIVE_TEST_PRELOAD_FIRST")
KEEPALIVE = os.path.join(BUILD, "bin", "keepalive")
PREVIOUS_KEEPALIVE = os.path.join(BUILD, "previous", "bin", "keepalive")  # the release before (make previous)
HELPERS = os.path.join(os.path.dirname(__file__), "helpers")
SOCKPROBE = os.path.join(HELPERS, "sockprobe.py")
HOLDER = os.path.join(HELPERS, "holder.py")
BPFFS = "/sys/fs/bpf"
IN_CI = os.environ.get("CI") == "true"
PREFIX = "ka-test-"
TCP_USER_TIMEOUT = 18

# The interpreter itself, never a wrapper script (pyenv shims re-exec shells).
PYTHON = os.path.realpath(sys.executable)

# What getsockopt reports for a socket nobody configured, and for the seed's defaults.
KERNEL_DEFAULT = {"keepalive": 0, "keepidle": 7200, "keepintvl": 75, "keepcnt": 9, "user_timeout": 0}
SEED_DEFAULT = {"keepalive": 1, "keepidle": 15, "keepintvl": 15, "keepcnt": 9, "user_timeout": 150000}
PRELOAD_VARIABLES = ["TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT", "TCP_USER_TIMEOUT", "TCP_SYNCNT",
                     "TCP_MAXSEG", "TCP_WINDOW_CLAMP", "TCP_DEFER_ACCEPT", "LIBKEEPALIVE_DEBUG"]


def release():
    """This release, as debian/changelog's newest entry names it."""
    with open(os.path.join(ROOT, "debian", "changelog")) as f:
        return f.readline().split("(")[1].split(")")[0]


def program_version():
    """The programs' version this build must record: the release as major * 10000 + minor * 100 + patch."""
    major, minor, patch = (int(re.match(r"\d+", part).group()) for part in release().split(".")[:3])
    return major * 10000 + minor * 100 + patch


def unique(kind):
    return f"{PREFIX}{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def cgroup2_mount():
    """The cgroup2 mount point, from mountinfo (hybrid systems: not /sys/fs/cgroup)."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[fields.index("-") + 1] == "cgroup2":
                return fields[4]
    return None


def bpffs_mounted(path=BPFFS):
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path and " - bpf " in line for line in f)


def run(cmd, check=True, env=None, timeout=60, **kw):
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, **kw)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def in_cgroup(cgroup, argv):
    """argv, started in `cgroup` (the shell joins it, then becomes the program)."""
    if not cgroup:
        return list(argv)
    return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', cgroup] + list(argv)


def probe(*args, env=None, cgroup=None):
    """Runs the socket probe (in `cgroup` if given); returns its JSON."""
    return json.loads(run(in_cgroup(cgroup, [PYTHON, SOCKPROBE] + list(args)), env=env).stdout)


def hold(cgroup, processes, own=False):
    """Starts helpers/holder.py in `cgroup` (added to `processes`); its pid once the connection is open."""
    holder = subprocess.Popen(in_cgroup(cgroup, [PYTHON, HOLDER] + (["own"] if own else [])),
                              stdout=subprocess.PIPE, text=True)
    processes.append(holder)
    assert holder.stdout.readline() == "held\n"
    return holder.pid


def keepalive_values(options):
    """The keepalive part of a probe's options."""
    return {k: options[k] for k in ("keepalive", "keepidle", "keepintvl", "keepcnt", "user_timeout")}


def values(idle, intvl, cnt, user_timeout):
    return {"keepalive": 1, "keepidle": idle, "keepintvl": intvl, "keepcnt": cnt, "user_timeout": user_timeout}


def preload_env(preload, **variables):
    """This environment without any keepalive variable, then LD_PRELOAD and `variables`."""
    env = {k: v for k, v in os.environ.items() if k not in PRELOAD_VARIABLES and k != "LD_PRELOAD"}
    if preload:
        env["LD_PRELOAD"] = f"{PRELOAD_FIRST}:{preload}" if PRELOAD_FIRST else preload
    env.update({k: str(v) for k, v in variables.items()})
    return env


# --- another process's sockets, read from the kernel -------------------------

def pidfd_getfd(pid, fd):
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        copy = libc.syscall(438, pidfd, fd, 0)  # pidfd_getfd
        if copy < 0:
            raise OSError(ctypes.get_errno(), "pidfd_getfd")
        return copy
    finally:
        os.close(pidfd)


def socket_fds(pid):
    fds = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                fds.append(int(name))
        except OSError:
            pass
    return fds


def options_of_fd(fd):
    s = socket.socket(fileno=fd)
    try:
        return {"keepalive": s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                "keepidle": s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                "keepintvl": s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                "keepcnt": s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                "user_timeout": s.getsockopt(socket.IPPROTO_TCP, TCP_USER_TIMEOUT)}
    finally:
        s.close()


TCP_CLOSE = 7  # tcpi_state of a socket neither connected, connecting nor listening


def socket_values(pid):
    """Keepalive values of every TCP socket a process holds that is connected
    or listening, read from its own fds. A socket the process made but has
    not connected yet is left out: keepalive sets its options when it
    connects, and reading it before (a busy machine can hold a process
    between socket() and connect() for milliseconds) would race the process."""
    values = []
    for fd in sorted(socket_fds(pid)):
        copy = pidfd_getfd(pid, fd)
        with socket.socket(fileno=os.dup(copy)) as s:
            tcp = s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL) == socket.IPPROTO_TCP
            opened = tcp and s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] != TCP_CLOSE
        if opened:
            values.append(options_of_fd(copy))
        else:
            os.close(copy)
    return values


def attached_programs(cgroup_path):
    """Programs attached at exactly this cgroup, as bpftool reports them."""
    out = run(["bpftool", "-j", "cgroup", "show", cgroup_path]).stdout.strip()
    return json.loads(out) if out else []


def wait_until(condition, timeout=10, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"{what}: not true within {timeout} s")


# --- cgroups -------------------------------------------------------------------

def kill_cgroup_processes(path):
    for dirpath, _, _ in os.walk(path, topdown=False):
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
    for _ in range(100):
        try:
            for dirpath, _, _ in os.walk(path, topdown=False):
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

    def rel(self, path):
        return os.path.relpath(path, self.mount)

    def cleanup(self):
        for top in reversed(self.made):
            remove_cgroup_tree(top)


# --- keepalive -----------------------------------------------------------------

class Keepalive:
    """The keepalive command with a pin root of the test's own."""

    def __init__(self, pin_path):
        self.pin_path = pin_path

    def __call__(self, *args, check=True, env=None, user=None, prefix=()):
        cmd = list(prefix) + [KEEPALIVE] + list(args) + ["--pin-path", self.pin_path]
        if user:
            cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--inh-caps=-all"] + cmd
        return run(cmd, check=check, env=env)

    def status(self):
        """The policies in force, as `status --json` lists them."""
        return json.loads(self("status", "--json").stdout)["policies"]

    def report(self):
        """All of `status --json`: programs, policies and what it repaired."""
        return json.loads(self("status", "--json").stdout)

    def cleanup(self):
        if os.path.exists(self.pin_path):
            self("detach", "--all", check=False)
        if os.path.exists(self.pin_path):
            shutil.rmtree(self.pin_path, ignore_errors=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AgentProcess:
    """A running `keepalive agent`; its log lines are collected as they come."""

    def __init__(self, config, pin_path, metrics=True, env=None, args=()):
        self.port = free_port() if metrics else None
        cmd = [KEEPALIVE, "agent", "--config", config, "--pin-path", pin_path, *args]
        if metrics:
            cmd += ["--metrics-address", f"127.0.0.1:{self.port}"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.lines, self.arrivals, self.cond = [], [], threading.Condition()
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self):
        for line in self.proc.stderr:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.arrivals.append(time.monotonic())
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_for(self, pattern, timeout=10, start=0):
        """The first log line from index `start` on that matches `pattern`."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines[start:]:
                    if re.search(pattern, line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.proc.poll() is not None:
                    raise AssertionError(f"no log line matching {pattern!r}:\n" + "\n".join(self.lines))
                self.cond.wait(min(remaining, 0.5))

    def mark(self):
        with self.cond:
            return len(self.lines)

    def timeline(self, since):
        """Its log lines from time.monotonic() `since` on, each with when it came (ms after `since`)."""
        with self.cond:
            return "\n".join(f"{(at - since) * 1000:+8.1f} ms  {line}"
                             for at, line in zip(self.arrivals, self.lines) if at >= since)

    def get(self, path):
        """(status, body) of GET path on the metrics listener."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def scrape(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            return response.read().decode()

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def metric(text, name, **labels):
    """The value of one series in Prometheus text, or None."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    series = f"{name}{{{wanted}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


# --- network namespaces --------------------------------------------------------

class NetnsPair:
    """Two namespaces, `near` and `far`, joined by veth; removed on close."""

    def __init__(self, near_address, far_address):
        tag = uuid.uuid4().hex[:6]
        self.near, self.far = f"{PREFIX}ns-{tag}-a", f"{PREFIX}ns-{tag}-b"
        self.made = []
        for ns in (self.near, self.far):
            run(["ip", "netns", "add", ns])
            self.made.append(ns)
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        veth_a, veth_b = f"kat{tag}a", f"kat{tag}b"
        run(["ip", "link", "add", veth_a, "netns", self.near, "type", "veth", "peer", "name", veth_b,
             "netns", self.far])
        for ns, dev, addr in ((self.near, veth_a, near_address), (self.far, veth_b, far_address)):
            run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev])
            run(["ip", "-n", ns, "link", "set", dev, "up"])

    def silence(self, namespace):
        """Drops every packet in and out of `namespace`: its end vanishes without FIN or RST."""
        run(["ip", "netns", "exec", namespace, "nft", "-f", "-"], input="""
table inet ka_test_vanish {
  chain input { type filter hook input priority -300; policy drop; }
  chain output { type filter hook output priority -300; policy drop; }
}
""")

    def close(self):
        for ns in self.made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
