# SPDX-License-Identifier: MIT
"""Pods through a real containerd, for `make bench`: how soon a new pod's
policy is in force, and what the agent costs under pod churn and at rest.

The bench plays kubelet (Tests/integration/runtimes.py): 100 pods running,
then 50 new ones, each created as kubelet does (its cgroup, RunPodSandbox,
CreateContainer, StartContainer at once, never waiting for keepalive). Each
new pod's container connects first thing; with `existing: false` only the
sock_ops program can have configured that connect, so a configured socket
proves the policy was in force before the container started.
"""
import datetime
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "Tests", "integration"))
from runtimes import Containerd, client_command, pids_named  # noqa: E402  (the tests' helpers)
from support import KEEPALIVE, cgroup2_mount, socket_values  # noqa: E402

RUNNING, NEW = 100, 50
CHURN_PER_SECOND, CHURN_SECONDS = 5, 20
POLICY = {"keepalive": 1, "keepidle": 31, "keepintvl": 5, "keepcnt": 3, "user_timeout": 46000}


def cpu_seconds(cgroup):
    """CPU time of everything in `cgroup`, to the microsecond: threads that
    ended count too (a sum over /proc/PID/task would lose them: the
    runtime's idle worker threads end after some seconds)."""
    with open(os.path.join(cgroup, "cpu.stat")) as f:
        return next(int(line.split()[1]) for line in f if line.startswith("usage_usec")) / 1e6


class Agent:
    """`keepalive agent` on a pods: entry, in a cgroup of its own (for its CPU
    time); its log read as it comes, with the wall-clock time of each
    "attached policy on pod" line."""

    LINE = re.compile(r"^(\S+) info attached policy on pod (\S+) ")

    def __init__(self, endpoint, pin, directory):
        self.config = os.path.join(directory, "keepalive.yaml")
        with open(self.config, "w") as f:
            f.write(f"runtime:\n  cri: {endpoint}\npolicies:\n  - pods: {{ labels: {{ bench: new }} }}\n"
                    "    keepidle: 31\n    keepintvl: 5\n    keepcnt: 3\n    existing: false\n")
        self.attached, self.ready = {}, threading.Event()
        self.cgroup = os.path.join(cgroup2_mount(), f"keepalive-bench-agent-{os.getpid()}")
        os.mkdir(self.cgroup)
        self.process = None
        try:
            self.process = subprocess.Popen([KEEPALIVE, "agent", "--config", self.config, "--pin-path", pin],
                                            stderr=subprocess.PIPE, text=True)
            with open(os.path.join(self.cgroup, "cgroup.procs"), "w") as f:
                f.write(str(self.process.pid))
            threading.Thread(target=self._read, daemon=True).start()
            if not self.ready.wait(30):
                raise RuntimeError("bench: the agent did not start")
        except BaseException:
            self.stop()
            raise

    def _read(self):
        for line in self.process.stderr:
            if "ready:" in line:
                self.ready.set()
            match = self.LINE.match(line)
            if match:
                at = datetime.datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S.%fZ")
                self.attached[match.group(2)] = at.replace(tzinfo=datetime.timezone.utc).timestamp()

    def stop(self):
        if self.process:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait()
        os.rmdir(self.cgroup)


def new_pods(containerd, agent):
    """50 new matching pods: (RunPodSandbox return to policy in force, s) and
    whether the container's first connect was configured, for each."""
    results = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        for index in range(NEW):
            pod = containerd.run_pod(f"new-{index}", "bench", labels={"bench": "new"})
            returned = time.time()
            containerd.start_container(pod, "app", client_command(port))
            path = cgroup2_mount() + pod["cgroup"]
            deadline = time.monotonic() + 10
            while not [v for pid in pids_named(path, "nc") for v in socket_values(pid)]:
                if time.monotonic() > deadline:
                    sys.exit(f"bench: pod new-{index}'s connection not found")
                time.sleep(0.01)
            configured = [v for pid in pids_named(path, "nc") for v in socket_values(pid)] == [POLICY]
            listener.accept()[0].close()  # the client exits: its pod stays, idle
            while f"bench/new-{index}" not in agent.attached:
                if time.monotonic() > deadline:
                    sys.exit(f"bench: pod new-{index} never got its policy")
                time.sleep(0.01)
            results.append((agent.attached[f"bench/new-{index}"] - returned, configured))
    return results


def churn(containerd, cgroup):
    """The agent's CPU (% of one core) while pods are created and removed,
    CHURN_PER_SECOND each, each living about a second."""
    made, stop, errors = [], threading.Event(), []

    def remove():
        while not stop.is_set() or made:
            if made and (stop.is_set() or time.monotonic() - made[0][1] > 1):
                try:
                    containerd.remove_pod(made.pop(0)[0])
                except Exception as error:  # noqa: BLE001 - reported below
                    errors.append(error)
            else:
                time.sleep(0.01)

    remover = threading.Thread(target=remove)
    before, start = cpu_seconds(cgroup), time.monotonic()
    remover.start()
    for index in range(CHURN_PER_SECOND * CHURN_SECONDS):
        time.sleep(max(0.0, start + index / CHURN_PER_SECOND - time.monotonic()))
        made.append((containerd.run_pod(f"churn-{index}", "bench", labels={"bench": "new"}), time.monotonic()))
    elapsed = time.monotonic() - start
    used = cpu_seconds(cgroup) - before
    stop.set()
    remover.join()
    if errors:
        sys.exit(f"bench: removing churned pods failed: {errors[0]}")
    return used / elapsed * 100, CHURN_PER_SECOND * CHURN_SECONDS / elapsed


def idle(cgroup, seconds=30.0):
    before, start = cpu_seconds(cgroup), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(cgroup) - before) / (time.monotonic() - start) * 100


def pod_figures(pin):
    """Everything the pods section of `make bench` prints, measured."""
    containerd = Containerd()
    agent = None
    try:
        for index in range(RUNNING):
            containerd.run_pod(f"running-{index}", "bench", labels={"bench": "old"})
        agent = Agent(containerd.endpoint, pin, containerd.dir)
        idle_cpu = idle(agent.cgroup)
        latencies = new_pods(containerd, agent)
        churn_cpu, rate = churn(containerd, agent.cgroup)
        return {"latencies": latencies, "idle_cpu": idle_cpu, "churn_cpu": churn_cpu, "churn_rate": rate}
    finally:
        if agent:
            agent.stop()
        containerd.close()
        subprocess.run([KEEPALIVE, "detach", "--all", "--pin-path", pin], capture_output=True)


def report(figures):
    """The section's lines and its targets ((text, met) pairs)."""
    times = [t for t, _ in figures["latencies"]]
    before = sum(1 for _, configured in figures["latencies"] if configured)
    print(f"\npods through containerd (CRI, cgroupfs driver): {RUNNING} running, {NEW} new ones")
    print(f"RunPodSandbox's return to the policy in force: median {statistics.median(times) * 1000:.1f} ms, "
          f"maximum {max(times) * 1000:.1f} ms")
    print(f"first connect of the first container configured by the sock_ops program: {before} of {NEW}")
    print(f"agent CPU: {figures['idle_cpu']:.3f}% of one core at rest (30 s), {figures['churn_cpu']:.1f}% under a churn of "
          f"{figures['churn_rate']:.1f} pods/s created and as many removed ({CHURN_SECONDS} s)")
    return [
        (f"a new pod's policy in force before its first container starts ({before} of {NEW})", before == NEW),
        (f"agent CPU under 5% of a core under pod churn ({figures['churn_cpu']:.1f}%)", figures["churn_cpu"] < 5),
        # At rest the agent only runs its 1 s heartbeat and asks CRI for its version every 10 s.
        (f"agent CPU at rest below 0.1% of a core ({figures['idle_cpu']:.3f}%)", figures["idle_cpu"] < 0.1),
    ]
