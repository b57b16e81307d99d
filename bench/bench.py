#!/usr/bin/env python3
"""keepalive's cost on the connection path, measured side by side in one run.

Run by `make bench` as root. Prints a table; changes nothing it does not undo:
every cgroup and bpffs pin it makes has a unique name and is removed, and
kernel.bpf_stats_enabled is restored.
"""
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "Tests", "integration"))
from support import KEEPALIVE, bpffs_mounted, cgroup2_mount, in_cgroup  # noqa: E402  (the tests' helpers)

CONNRATE = os.path.join(ROOT, "build", "bench", "connrate")
EMPTY_PROGRAM = os.path.join(ROOT, "build", "bench", "empty.bpf.o")
PRELOAD = ":".join(os.path.join(ROOT, "build", "lib", l) for l in ("libkeepalive.so", "libkeepalive_listen.so"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "15"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "0.4"))
TAG = uuid.uuid4().hex[:8]
PIN = f"/sys/fs/bpf/ka-bench-{TAG}"


MOUNT = cgroup2_mount() or sys.exit("bench: no cgroup2 mount")
BASE = os.path.join(MOUNT, f"ka-bench-{TAG}")


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def keepalive(*args):
    return sh(KEEPALIVE, *args, "--pin-path", PIN)


def connrate(cgroup=None, env=None, go=False, seconds=SECONDS):
    """Connections per second of one fresh process, in `cgroup` if given."""
    argv = [CONNRATE, str(seconds)] + (["--go"] if go else [])
    return float(sh(*in_cgroup(cgroup, argv), env={**os.environ, **(env or {})}))


def mkcg(relative):
    path = os.path.join(BASE, relative) if relative else BASE
    os.makedirs(path, exist_ok=True)
    return path


def remove_tree(path):
    for dirpath, _, _ in sorted(os.walk(path), key=lambda w: -w[0].count("/")):
        os.rmdir(dirpath)


# --- connection rate, interleaved rounds --------------------------------------

def rate_table():
    plain, policy_app, policy_pol, empty = mkcg("plain"), mkcg("bpf-app"), mkcg("bpf-policy"), mkcg("empty")
    keepalive("attach", policy_app)
    keepalive("attach", policy_pol, "--precedence", "policy")
    sh("bpftool", "prog", "load", EMPTY_PROGRAM, PIN + "-empty", "type", "sockops")
    sh("bpftool", "cgroup", "attach", empty, "sock_ops", "pinned", PIN + "-empty", "multi")
    modes = {
        "none": lambda: connrate(plain),
        "empty sock_ops program (the kernel's floor)": lambda: connrate(empty),
        "preload (libkeepalive + _listen)": lambda: connrate(plain, env={"LD_PRELOAD": PRELOAD}),
        "BPF, default policy": lambda: connrate(policy_app),
        "none, Go-style client": lambda: connrate(plain, go=True),
        "BPF, Go-style client, precedence application": lambda: connrate(policy_app, go=True),
        "BPF, Go-style client, precedence policy": lambda: connrate(policy_pol, go=True),
    }
    samples = {name: [] for name in modes}
    for name, run in modes.items():
        run()  # warm-up
    for _ in range(ROUNDS):
        order = list(modes)
        random.shuffle(order)  # interleaved, in a different order each round
        for name in order:
            samples[name].append(modes[name]())
    medians = {name: statistics.median(values) for name, values in samples.items()}
    rows = []
    for name, median in medians.items():
        base = medians["none, Go-style client" if "Go-style" in name else "none"]
        spread = statistics.quantiles(samples[name], n=4) if len(samples[name]) >= 4 else [median] * 3
        rows.append((name, median, (1 - median / base) * 100, spread[0], spread[2]))
    return rows


# --- the program's own cost, from the kernel's accounting ---------------------

def program_ids():
    """ids of the pinned programs by pin name."""
    return {name: json.loads(sh("bpftool", "-j", "prog", "show", "pinned", os.path.join(PIN, name)))["id"]
            for name in ("keepalive_sockops", "keepalive_setsockopt")}


def prog_stats(prog_id):
    info = json.loads(sh("bpftool", "-j", "prog", "show", "id", str(prog_id)))
    return info.get("run_time_ns", 0), info.get("run_cnt", 0)


def cost_per_run(cgroup, go=False, program="keepalive_sockops"):
    """ns per run of one of our programs while a process in `cgroup` connects."""
    prog_id = program_ids()[program]
    t0, n0 = prog_stats(prog_id)
    connections = connrate(cgroup, go=go, seconds=1.0)
    t1, n1 = prog_stats(prog_id)
    runs = n1 - n0
    return (t1 - t0) / runs if runs else float("nan"), runs / max(connections, 1)


def median_cost(cgroup, rounds=5, **kw):
    costs = [cost_per_run(cgroup, **kw)[0] for _ in range(rounds)]
    return statistics.median(costs)


# --- policies at scale, through the real agent -------------------------------

def run_agent(pattern):
    config = os.path.join(tempfile.gettempdir(), f"ka-bench-{TAG}.yaml")
    with open(config, "w") as f:
        f.write(f'policies:\n  - cgroup: "{os.path.relpath(BASE, MOUNT)}/{pattern}"\n')
    start = time.monotonic()
    agent = subprocess.Popen([KEEPALIVE, "agent", "--config", config, "--pin-path", PIN],
                             stderr=subprocess.PIPE, text=True)
    for line in agent.stderr:
        if "ready:" in line:
            break
    applied = time.monotonic() - start
    os.unlink(config)
    return agent, applied


def idle_usage(pid, seconds=5.0):
    def cpu_ticks():
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    before = cpu_ticks()
    time.sleep(seconds)
    cpu = (cpu_ticks() - before) / os.sysconf("SC_CLK_TCK") / seconds * 100
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    return cpu, rss / 1024


def scale_rows():
    rows, agent_row = [], None
    for count in (1, 100, 10000):
        pods = mkcg("scale")
        for i in range(count):
            os.mkdir(os.path.join(pods, f"pod{i}"))
        agent, applied = run_agent("scale/*")
        try:
            cost = median_cost(os.path.join(pods, "pod0"))
            if count == 10000:
                cpu, rss = idle_usage(agent.pid)
                agent_row = (count, applied, cpu, rss)
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait()
            keepalive("detach", "--all")
            remove_tree(pods)
        rows.append((f"{count} policies", cost))
    for depth in (1, 4, 8):
        top = mkcg("depth")
        keepalive("attach", top)
        leaf = mkcg("depth/" + "/".join(f"l{i}" for i in range(1, depth)))
        try:
            rows.append((f"depth {depth} (policy {depth - 1} levels up)", median_cost(leaf)))
        finally:
            keepalive("detach", "--all")
            remove_tree(top)
    return rows, agent_row


def main():
    if os.geteuid() != 0:
        sys.exit("bench: run as root (make bench)")
    stats_before = sh("sysctl", "-n", "kernel.bpf_stats_enabled").strip()
    bpffs_before = bpffs_mounted()  # keepalive mounts it when needed; left as found
    mkcg(None)
    try:
        sh("sysctl", "-q", "kernel.bpf_stats_enabled=0")  # accounting costs time on every run: off for rates
        rates = rate_table()
        sh("sysctl", "-q", "kernel.bpf_stats_enabled=1")
        costs = [("sock_ops, default policy (per run)", *cost_per_run(mkcg("bpf-app"))),
                 ("setsockopt, precedence policy, Go-style client (per run)",
                  *cost_per_run(mkcg("bpf-policy"), go=True, program="keepalive_setsockopt"))]
        keepalive("detach", "--all")
        scale, agent = scale_rows()
    finally:
        sh("sysctl", "-q", f"kernel.bpf_stats_enabled={stats_before}")
        subprocess.run([KEEPALIVE, "detach", "--all", "--pin-path", PIN], capture_output=True)
        if os.path.exists(PIN + "-empty"):
            subprocess.run(["bpftool", "cgroup", "detach", os.path.join(BASE, "empty"), "sock_ops",
                            "pinned", PIN + "-empty"], capture_output=True)
            os.unlink(PIN + "-empty")
        shutil.rmtree(PIN, ignore_errors=True)
        if os.path.isdir(BASE):
            remove_tree(BASE)
        if not bpffs_before and bpffs_mounted():
            subprocess.run(["umount", "/sys/fs/bpf"], capture_output=True)
    report(rates, costs, scale, agent)


def report(rates, costs, scale, agent):
    cpu = open("/proc/cpuinfo").read().split("model name")[1].split(":")[1].split("\n")[0].strip()
    print(f"keepalive benchmark: {os.uname().release}, {os.cpu_count()} CPUs ({cpu}), "
          f"{ROUNDS} interleaved rounds of {SECONDS} s, medians\n")
    print(f"{'loopback connect+accept+close':48} {'conn/s':>9} {'overhead':>9} {'IQR':>17}")
    for name, median, overhead, q1, q3 in rates:
        shown = "-" if name.startswith("none") else f"{overhead:+.1f}%"
        print(f"{name:48} {median:9.0f} {shown:>9} {q1:8.0f}-{q3:<8.0f}")
    print(f"\n{'BPF program cost (kernel.bpf_stats_enabled)':58} {'ns/run':>8} {'runs/conn':>10}")
    for name, ns, per_conn in costs:
        print(f"{name:58} {ns:8.0f} {per_conn:10.2f}")
    print(f"\n{'sock_ops cost by policies in force and cgroup depth':58} {'ns/run':>8}")
    for name, ns in scale:
        print(f"{name:58} {ns:8.0f}")
    if agent:
        count, applied, cpu_pct, rss = agent
        print(f"\nagent with {count} policies: applied at start in {applied:.2f} s; "
              f"idle CPU {cpu_pct:.2f}% over 5 s; RSS {rss:.1f} MiB")


if __name__ == "__main__":
    main()
