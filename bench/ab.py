#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Two builds of keepalive side by side on the connection path, in one run.

    python3 bench/ab.py BEFORE AFTER [ROUNDS]

Each binary gets a pin path and cgroups of its own (a default policy; 16
rules, the last matching); the rounds take turns, A then B then A..., each
measuring the program's ns per run from the kernel's accounting
(bench.cost_per_run), and then both in one connrate process (its rate
table's overhead over no program). Medians per build; the spread is the
round-to-round range. Run as root; removes what it made.
"""
import os
import shutil
import statistics
import subprocess
import sys

import bench
from bench import BASE, LAST_RULE_MATCHING, connrate_modes, cost_per_run, mkcg, remove_tree, sh


def attach(binary, pin, cgroup, *args):
    sh(binary, "attach", cgroup, *args, "--pin-path", pin)


def main():
    before, after = sys.argv[1], sys.argv[2]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    builds = {"A": (before, bench.PIN + "-a"), "B": (after, bench.PIN + "-b")}
    stats_before = sh("sysctl", "-n", "kernel.bpf_stats_enabled").strip()
    rows = {}
    try:
        plain = mkcg("plain")
        cases = {}
        for name, (binary, pin) in builds.items():
            default, rules = mkcg(f"{name}-default"), mkcg(f"{name}-rules")
            attach(binary, pin, default)
            attach(binary, pin, rules, *[a for rule in LAST_RULE_MATCHING for a in ("--rule", rule)])
            cases[name] = {"default policy": default, "16 rules, the last matching": rules}
        sh("sysctl", "-q", "kernel.bpf_stats_enabled=1")
        for _ in range(rounds):
            for name, (_, pin) in builds.items():
                for case, cgroup in cases[name].items():
                    cost = cost_per_run(cgroup, pin=os.path.join(pin, "keepalive_sockops"))[0]
                    rows.setdefault((case, name), []).append(cost)
        sh("sysctl", "-q", "kernel.bpf_stats_enabled=0")
        modes = {"none": (plain, "plain", "raw")}
        for name in builds:
            for case, cgroup in cases[name].items():
                modes[f"{name}: {case}"] = (cgroup, "plain", "raw")
        rates = connrate_modes(modes, float(os.environ.get("BENCH_SECONDS", "30")))
    finally:
        sh("sysctl", "-q", f"kernel.bpf_stats_enabled={stats_before}")
        for binary, pin in builds.values():
            subprocess.run([binary, "detach", "--all", "--pin-path", pin], capture_output=True)
            shutil.rmtree(pin, ignore_errors=True)
        if os.path.isdir(BASE):
            remove_tree(BASE)
    cpu = open("/proc/cpuinfo").read().split("model name")[1].split(":")[1].split("\n")[0].strip()
    print(f"A: {before}\nB: {after}\n{os.cpu_count()} CPUs, {cpu}, Linux {os.uname().release}; {rounds} rounds\n")
    print(f"{'ns per run of sock_ops':40} {'A median':>9} {'B median':>9}   A range / B range")
    for case in cases["A"]:
        a, b = rows[(case, "A")], rows[(case, "B")]
        print(f"{case:40} {statistics.median(a):9.1f} {statistics.median(b):9.1f}   "
              f"{min(a):.1f}-{max(a):.1f} / {min(b):.1f}-{max(b):.1f}")
    print(f"\n{'rate table (one process)':40} {'conn/s':>9} {'overhead':>9}")
    for name, rate, overhead, q1, q3 in rates:
        shown = "" if overhead is None else f"{overhead:+.2f} %"
        print(f"{name:40} {rate:9.0f} {shown:>9}")


if __name__ == "__main__":
    main()
