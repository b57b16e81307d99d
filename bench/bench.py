#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""keepalive's cost on the connection path, measured side by side in one run.

Run by `make bench` as root. Prints a table; changes nothing it does not undo:
every cgroup and bpffs pin it makes has a unique name and is removed, and
kernel.bpf_stats_enabled is restored.
"""
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "Tests", "integration"))
from support import KEEPALIVE, PREVIOUS_KEEPALIVE, bpffs_mounted, cgroup2_mount  # noqa: E402  (the tests' helpers)
import memory  # noqa: E402  (bench/memory.py)
import pods  # noqa: E402  (bench/pods.py)

CONNRATE = os.path.join(ROOT, "build", "bench", "connrate")
EMPTY_PROGRAM = os.path.join(ROOT, "build", "bench", "empty.bpf.o")
PRELOAD = ":".join(os.path.join(ROOT, "build", "lib", l) for l in ("libkeepalive.so", "libkeepalive_listen.so"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "45"))  # for all the rate modes together
BATCH_MS = int(os.environ.get("BENCH_BATCH_MS", "20"))
TAG = uuid.uuid4().hex[:8]
PIN = f"/sys/fs/bpf/ka-bench-{TAG}"


MOUNT = cgroup2_mount() or sys.exit("bench: no cgroup2 mount")
BASE = os.path.join(MOUNT, f"ka-bench-{TAG}")


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def keepalive(*args):
    return sh(KEEPALIVE, *args, "--pin-path", PIN)


def previous_keepalive(*args):
    """The release before this one (make previous), with a pin path of its own."""
    return sh(PREVIOUS_KEEPALIVE, *args, "--pin-path", PIN + "-previous")


# Rules none of the benchmark's loopback connections matches: as many rules
# and blocks as a policy holds (16 of 8), so the most bounds to search.
MISSING_RULES = [",".join(f"remote=10.{rule}.{block}.0/24" for block in range(8)) + ",keepidle=5" for rule in range(16)]
# The same, but the last one matches them: every rule before it tried. With
# the default policy's values (keepidle 15) an accepted socket holds them from
# its listener, as without rules, so the row measures the finding of the
# rule; with values of its own, each accepted socket is set anew as well.
LAST_RULE_MATCHING = MISSING_RULES[:15] + ["remote=127.0.0.0/8,keepidle=15"]
LAST_RULE_OWN_VALUES = MISSING_RULES[:15] + ["remote=127.0.0.0/8,keepidle=5"]


def connections_made(cgroup, setup="plain", seconds=1.0):
    """Every connection one mode alone made in `cgroup` in about `seconds`."""
    return connrate_modes({"alone": (cgroup, setup, "raw")}, seconds, made=True)[0]


def without_reaped_hook(measure):
    """`measure` with the reaped-connection tracepoint detached (unpinned), then repaired by a command."""
    os.unlink(os.path.join(PIN, "link-reaped"))
    try:
        return measure()
    finally:
        keepalive("status")  # every command repairs the state: the link is made again


def mkcg(relative):
    path = os.path.join(BASE, relative) if relative else BASE
    os.makedirs(path, exist_ok=True)
    return path


def remove_tree(path):
    for dirpath, _, _ in sorted(os.walk(path), key=lambda w: -w[0].count("/")):
        os.rmdir(dirpath)


# --- connection rate: every mode in one process, taking turns -----------------

def connrate_modes(modes, seconds, env=None, made=False):
    """Runs bench/connrate over `modes` ({name: (cgroup or None, setup, calls)}); its rows:
    (name, conn/s, median overhead %, first quartile, third quartile), or with
    `made` each mode's count of connections, its warm-up's too."""
    specs = [f"{name}={cgroup or '-'},{setup},{calls}" for name, (cgroup, setup, calls) in modes.items()]
    out = sh(CONNRATE, str(seconds), str(BATCH_MS), *specs, env={**os.environ, **(env or {})})
    rows = []
    for line in out.splitlines():
        name, rate, median, q1, q3, baseline, count = line.split("\t")
        overhead = None if name == baseline else float(median)
        rows.append(int(count) if made else (name, float(rate), overhead, float(q1), float(q3)))
    return rows


def rate_table():
    """All modes side by side in one process (bench/connrate.c): each takes its
    turn for BATCH_MS, in a new order every round, and is compared with the
    baseline of the same round, so the VM's drifting speed cancels out. The
    preload libraries are loaded for the whole run; the other modes bypass
    them with raw system calls."""
    plain, policy_app, policy_pol, empty = mkcg("plain"), mkcg("bpf-app"), mkcg("bpf-policy"), mkcg("empty")
    rules_missing, rules_last, previous = mkcg("bpf-rules-missing"), mkcg("bpf-rules-last"), mkcg("bpf-previous")
    rules_own, observe_paths, observe_only = mkcg("bpf-rules-own"), mkcg("bpf-observe-paths"), mkcg("bpf-observe-only")
    keepalive("attach", policy_app)
    keepalive("attach", observe_paths, "--observe-paths")
    keepalive("attach", observe_only, "--observe")
    keepalive("attach", policy_pol, "--precedence", "policy")
    keepalive("attach", rules_missing, *[a for rule in MISSING_RULES for a in ("--rule", rule)])
    keepalive("attach", rules_last, *[a for rule in LAST_RULE_MATCHING for a in ("--rule", rule)])
    keepalive("attach", rules_own, *[a for rule in LAST_RULE_OWN_VALUES for a in ("--rule", rule)])
    previous_keepalive("attach", previous)
    sh("bpftool", "prog", "load", EMPTY_PROGRAM, PIN + "-empty", "type", "sockops")
    sh("bpftool", "cgroup", "attach", empty, "sock_ops", "pinned", PIN + "-empty", "multi")
    modes = {
        NONE: (plain, "plain", "raw"),
        "empty sock_ops program (the kernel's floor)": (empty, "plain", "raw"),
        SELF_KEEPALIVE: (plain, "keepalive", "raw"),
        SELF_POLICY: (plain, "policy", "raw"),
        "preload (libkeepalive + _listen)": (plain, "plain", "libc"),
        BPF: (policy_app, "plain", "raw"),
        BPF_PREVIOUS: (previous, "plain", "raw"),
        BPF_RULES_MISSING: (rules_missing, "plain", "raw"),
        BPF_RULES_LAST: (rules_last, "plain", "raw"),
        BPF_RULES_OWN: (rules_own, "plain", "raw"),
        BPF_OBSERVE_PATHS: (observe_paths, "plain", "raw"),
        BPF_OBSERVE_ONLY: (observe_only, "plain", "raw"),
        GO_NONE: (plain, "go", "raw"),
        "BPF, Go-style client, precedence application": (policy_app, "go", "raw"),
        "BPF, Go-style client, precedence policy": (policy_pol, "go", "raw"),
    }
    rows = connrate_modes(modes, SECONDS, env={"LD_PRELOAD": PRELOAD})
    # The reaped-connection hook runs on connections that end with an error
    # (here: the accepted end of every connection gets the client's RST).
    # Detached: the same two modes again.
    without = without_reaped_hook(lambda: connrate_modes({NONE: modes[NONE], BPF_NO_HOOK: modes[BPF]}, SECONDS / 3))
    return rows + without[1:]


NONE = "none"
GO_NONE = "none, Go-style client"
SELF_KEEPALIVE = "the program sets SO_KEEPALIVE itself"
SELF_POLICY = "the program sets the default policy itself"
BPF = "BPF, default policy (reaped hook attached)"
BPF_NO_HOOK = "BPF, default policy, reaped hook detached"
BPF_PREVIOUS = "BPF, default policy, previous release"
BPF_RULES_MISSING = "BPF, 16 rules of 8 blocks, none matching"
BPF_RULES_LAST = "BPF, 16 rules, the last matching"
BPF_RULES_OWN = "BPF, 16 rules, the last giving keepidle 5"
BPF_OBSERVE_PATHS = "BPF, default policy observing paths"
BPF_OBSERVE_ONLY = "BPF, observing only (sets nothing)"
OBSERVE_COST = "sock_ops, default policy observing paths"
EMPTY_COST = "empty sock_ops program (the accounting's own floor)"


# --- the program's own cost, from the kernel's accounting ---------------------

def program_id(pin):
    return json.loads(sh("bpftool", "-j", "prog", "show", "pinned", pin))["id"]


def prog_stats(prog_id):
    info = json.loads(sh("bpftool", "-j", "prog", "show", "id", str(prog_id)))
    return info.get("run_time_ns", 0), info.get("run_cnt", 0)


def cost_per_run(cgroup, setup="plain", pin=None):
    """ns per run of a pinned program (keepalive's sock_ops by default) while a
    process in `cgroup` connects, and its runs per connection."""
    prog_id = program_id(pin or os.path.join(PIN, "keepalive_sockops"))
    t0, n0 = prog_stats(prog_id)
    connections = connections_made(cgroup, setup)
    t1, n1 = prog_stats(prog_id)
    runs = n1 - n0
    return (t1 - t0) / runs if runs else float("nan"), runs / max(connections, 1)


def median_cost(cgroup, rounds=5, **kw):
    """Medians over rounds: (ns per run, runs per connection)."""
    costs = [cost_per_run(cgroup, **kw) for _ in range(rounds)]
    return statistics.median(c[0] for c in costs), statistics.median(c[1] for c in costs)


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
    # Keep reading its log: a full pipe would block the agent mid-pass.
    threading.Thread(target=lambda: [None for _ in agent.stderr], daemon=True).start()
    os.unlink(config)
    return agent, applied


def idle_usage(pid, seconds=5.0):
    """The agent's CPU (% of one core) while nothing happens, and its resident memory (MiB)."""
    before = cpu_seconds(pid)
    time.sleep(seconds)
    cpu = (cpu_seconds(pid) - before) / seconds * 100
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    return cpu, rss / 1024


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def coverage_latency(pods, name):
    """Seconds from the mkdir of a cgroup the agent's glob matches to its link being pinned."""
    path = os.path.join(pods, name)
    start = time.monotonic()
    os.mkdir(path)
    link = os.path.join(PIN, "links", str(os.stat(path).st_ino))
    while not os.path.exists(link):
        time.sleep(0.0002)
        if time.monotonic() - start > 10:
            sys.exit(f"bench: {path} not covered within 10 s")
    return time.monotonic() - start


def churn_cpu(pid, pods, per_second=100, seconds=10.0):
    """The agent's CPU (% of one core) while cgroups are made and removed, `per_second` each."""
    made, before, start = [], cpu_seconds(pid), time.monotonic()
    for i in range(int(per_second * seconds)):
        time.sleep(max(0.0, start + i / per_second - time.monotonic()))
        path = os.path.join(pods, f"churn{i}")
        os.mkdir(path)
        made.append(path)
        if len(made) > per_second // 2:  # each lives half a second
            os.rmdir(made.pop(0))
    elapsed = time.monotonic() - start
    used = cpu_seconds(pid) - before
    for path in made:
        os.rmdir(path)
    return used / elapsed * 100


def agent_row(pods, agent, applied, count):
    """The agent at `count` policies: start, idle cost, a new cgroup's coverage, churn."""
    cpu, rss = idle_usage(agent.pid)
    latencies = [coverage_latency(pods, f"new{i}") for i in range(100)]
    churn = churn_cpu(agent.pid, pods)
    for i in range(100):
        os.rmdir(os.path.join(pods, f"new{i}"))
    return {"count": count, "applied": applied, "idle_cpu": cpu, "rss": rss,
            "latency_ms": statistics.median(latencies) * 1000,
            "latency_p90_ms": statistics.quantiles(latencies, n=10)[-1] * 1000, "churn_cpu": churn}


def scale_rows():
    rows, agent = [], None
    for count in (1, 100, 10000):
        pods = mkcg("scale")
        for i in range(count):
            os.mkdir(os.path.join(pods, f"pod{i}"))
        process, applied = run_agent("scale/*")
        try:
            cost = median_cost(os.path.join(pods, "pod0"))[0]
            if count == 10000:
                agent = agent_row(pods, process, applied, count)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait()
            keepalive("detach", "--all")
            remove_tree(pods)
        rows.append((f"{count} policies", cost))
    for depth in (1, 4, 8):
        top = mkcg("depth")
        keepalive("attach", top)
        leaf = mkcg("depth/" + "/".join(f"l{i}" for i in range(1, depth)))
        try:
            rows.append((f"depth {depth} (policy {depth - 1} levels up)", median_cost(leaf)[0]))
        finally:
            keepalive("detach", "--all")
            remove_tree(top)
    return rows, agent


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
        costs = [("sock_ops, default policy", *median_cost(mkcg("bpf-app"))),
                 ("sock_ops, 16 rules of 8 blocks, none matching", *median_cost(mkcg("bpf-rules-missing"))),
                 ("sock_ops, 16 rules, the last matching", *median_cost(mkcg("bpf-rules-last"))),
                 ("sock_ops, 16 rules, the last giving keepidle 5", *median_cost(mkcg("bpf-rules-own"))),
                 (EMPTY_COST, *median_cost(mkcg("empty"), pin=PIN + "-empty")),
                 ("setsockopt, precedence policy, Go-style client",
                  *median_cost(mkcg("bpf-policy"), setup="go", pin=os.path.join(PIN, "keepalive_setsockopt"))),
                 (OBSERVE_COST, *median_cost(mkcg("bpf-observe-paths")))]
        keepalive("detach", "--all")
        scale, agent = scale_rows()
        pod_figures = pods.pod_figures(PIN + "-pods")
        memory_figures = memory.in_guests(KEEPALIVE)
    finally:
        sh("sysctl", "-q", f"kernel.bpf_stats_enabled={stats_before}")
        subprocess.run([KEEPALIVE, "detach", "--all", "--pin-path", PIN], capture_output=True)
        subprocess.run([PREVIOUS_KEEPALIVE, "detach", "--all", "--pin-path", PIN + "-previous"], capture_output=True)
        shutil.rmtree(PIN + "-previous", ignore_errors=True)
        if os.path.exists(PIN + "-empty"):
            subprocess.run(["bpftool", "cgroup", "detach", os.path.join(BASE, "empty"), "sock_ops",
                            "pinned", PIN + "-empty"], capture_output=True)
            os.unlink(PIN + "-empty")
        shutil.rmtree(PIN, ignore_errors=True)
        if os.path.isdir(BASE):
            remove_tree(BASE)
        if not bpffs_before and bpffs_mounted():
            subprocess.run(["umount", "/sys/fs/bpf"], capture_output=True)
    report(rates, costs, scale, agent, pod_figures, memory_figures)


def report(rates, costs, scale, agent, pod_figures, memory_figures):
    cpu = open("/proc/cpuinfo").read().split("model name")[1].split(":")[1].split("\n")[0].strip()
    print(f"keepalive benchmark: {os.uname().release}, {os.cpu_count()} CPUs ({cpu}), "
          f"modes taking turns in {BATCH_MS} ms batches for {SECONDS:.0f} s, each against its baseline in the same round\n")
    print(f"{'loopback connect+accept+close, both ends covered':48} {'conn/s':>9} {'overhead':>9} {'quartiles':>16}")
    for name, rate, overhead, q1, q3 in rates:
        if overhead is None:
            print(f"{name:48} {rate:9.0f} {'-':>9}")
        else:
            print(f"{name:48} {rate:9.0f} {overhead:+8.1f}% {q1:+7.1f} to {q3:+.1f}")
    # A run as the kernel accounts it includes the accounting's own clock
    # reads and the call into the program, which an empty program costs as
    # much: what a program adds to a connection is its time above that floor.
    floor = next(ns for name, ns, _ in costs if name == EMPTY_COST)
    own = {name: (ns - floor) * per_conn for name, ns, per_conn in costs}
    print(f"\n{'BPF program cost (kernel.bpf_stats_enabled)':58} {'ns/run':>8} {'runs/conn':>10} {'ns/conn':>8} "
          f"{'above floor':>12}")
    for name, ns, per_conn in costs:
        print(f"{name:58} {ns:8.0f} {per_conn:10.2f} {ns * per_conn:8.0f} {own[name]:12.0f}")
    print(f"\n{'sock_ops cost by policies in force and cgroup depth':58} {'ns/run':>8}")
    for name, ns in scale:
        print(f"{name:58} {ns:8.0f}")
    if agent:
        print(f"\nagent with {agent['count']} policies (a glob over {agent['count']} cgroups): applied at start in "
              f"{agent['applied']:.2f} s; idle CPU {agent['idle_cpu']:.2f}% over 5 s; RSS {agent['rss']:.1f} MiB")
        print(f"a new matching cgroup covered (mkdir to link pinned), 100 times: median {agent['latency_ms']:.1f} ms, "
              f"90th percentile {agent['latency_p90_ms']:.1f} ms")
        print(f"churn of 100 cgroups/s made and 100/s removed, 10 s: agent CPU {agent['churn_cpu']:.1f}% of one core")
    pod_targets = pods.report(pod_figures)
    memory_targets = memory.report(*memory_figures)
    overhead = {name: o for name, _, o, q1, q3 in rates if o is not None}
    spread = {name: q3 - q1 for name, _, o, q1, q3 in rates if o is not None}
    ns_per_conn = own[costs[0][0]]
    # The rules' cost in points of a connection's time: the program's extra
    # nanoseconds per connection (the kernel's accounting, a median of five
    # rounds) over the time one connection takes without keepalive (the rate
    # table's). The rate table itself cannot resolve half a point: its
    # quartiles span several.
    connection_ns = 1e9 / next(rate for name, rate, *_ in rates if name == NONE)
    rule_points = {name: (own[cost[0]] - ns_per_conn) / connection_ns * 100
                   for name, cost in zip((BPF_RULES_MISSING, BPF_RULES_LAST, BPF_RULES_OWN), costs[1:4])}
    observe_ns = own[OBSERVE_COST]
    print(f"\nobserving paths: {overhead[BPF_OBSERVE_PATHS] - overhead[BPF]:+.1f} points over the default policy "
          f"in the rate table, {observe_ns - ns_per_conn:+.0f} ns per connection of the program's time "
          f"(it runs on each segment sent: {next(c for n, _, c in costs if n == OBSERVE_COST):.1f} runs per connection)")
    print("\ntargets")
    targets = [
        (f"BPF no more expensive than the program doing it itself ({overhead[BPF]:+.1f}% vs {overhead[SELF_POLICY]:+.1f}%)",
         overhead[BPF] <= overhead[SELF_POLICY]),
        (f"BPF within 2 points of SO_KEEPALIVE alone ({overhead[BPF] - overhead[SELF_KEEPALIVE]:+.1f} points)",
         overhead[BPF] - overhead[SELF_KEEPALIVE] <= 2.0),
        (f"the program's own cost at most 600 ns per connection, its time above the empty program's "
         f"({ns_per_conn:.0f} ns; {costs[0][1] * costs[0][2]:.0f} with the floor's {floor:.0f} ns a run)",
         ns_per_conn <= 600),
        (f"a policy without rules within run-to-run noise of the previous release's "
         f"({overhead[BPF] - overhead[BPF_PREVIOUS]:+.1f} points, IQR {max(spread[BPF], spread[BPF_PREVIOUS]):.1f} points)",
         abs(overhead[BPF] - overhead[BPF_PREVIOUS]) <= max(spread[BPF], spread[BPF_PREVIOUS])),
        (f"16 rules at most 0.5 point over none, by the program's time ({rule_points[BPF_RULES_MISSING]:+.2f} points "
         f"none matching, {rule_points[BPF_RULES_LAST]:+.2f} the last matching; the rate table's medians "
         f"{overhead[BPF_RULES_MISSING] - overhead[BPF]:+.1f} and {overhead[BPF_RULES_LAST] - overhead[BPF]:+.1f}; "
         f"not counted: {rule_points[BPF_RULES_OWN]:+.2f} when the rule gives values of its own, "
         f"which each accepted socket is then set to)",
         max(rule_points[BPF_RULES_MISSING], rule_points[BPF_RULES_LAST]) <= 0.5),
        (f"the reaped hook within run-to-run noise ({overhead[BPF] - overhead[BPF_NO_HOOK]:+.1f} points, "
         f"IQR {max(spread[BPF], spread[BPF_NO_HOOK]):.1f} points)",
         abs(overhead[BPF] - overhead[BPF_NO_HOOK]) <= max(spread[BPF], spread[BPF_NO_HOOK])),
    ]
    if agent:
        targets += [
            (f"a new cgroup covered within 50 ms with {agent['count']} present (median {agent['latency_ms']:.1f} ms)",
             agent["latency_ms"] <= 50),
            (f"agent CPU under 10% of a core under churn ({agent['churn_cpu']:.1f}%)", agent["churn_cpu"] < 10),
        ]
    for text, met in targets + pod_targets + memory_targets:
        print(f"  {'PASS' if met else 'FAIL'}  {text}")


if __name__ == "__main__":
    main()
