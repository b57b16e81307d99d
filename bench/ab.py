#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Builds of keepalive side by side on the connection path, in one run.

    python3 bench/ab.py [--rounds N] BUILD_A BUILD_B [BUILD_C ...]

Each binary gets a pin path and cgroups of its own (a default policy; 16
rules of 8 blocks, none matching; the same, the last matching); the rounds take turns, A then B then A..., each
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
from bench import BASE, LAST_RULE_MATCHING, MISSING_RULES, connrate_modes, cost_per_run, mkcg, remove_tree, sh


def attach(binary, pin, cgroup, *args):
    sh(binary, "attach", cgroup, *args, "--pin-path", pin)


def main():
    args = sys.argv[1:]
    rounds = 8
    if args[:1] == ["--rounds"]:
        rounds, args = int(args[1]), args[2:]
    if len(args) < 2:
        sys.exit(__doc__)
    builds = {chr(ord("A") + i): (binary, f"{bench.PIN}-{i}") for i, binary in enumerate(args)}
    stats_before = sh("sysctl", "-n", "kernel.bpf_stats_enabled").strip()
    rows = {}
    try:
        plain = mkcg("plain")
        cases = {}
        for name, (binary, pin) in builds.items():
            default, missing, last = mkcg(f"{name}-default"), mkcg(f"{name}-missing"), mkcg(f"{name}-last")
            attach(binary, pin, default)
            attach(binary, pin, missing, *[a for rule in MISSING_RULES for a in ("--rule", rule)])
            attach(binary, pin, last, *[a for rule in LAST_RULE_MATCHING for a in ("--rule", rule)])
            cases[name] = {"default policy": default, "16 rules of 8 blocks, none matching": missing,
                           "16 rules, the last matching": last}
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
    for name, (binary, _) in builds.items():
        print(f"{name}: {binary}")
    print(f"{os.cpu_count()} CPUs, {cpu}, Linux {os.uname().release}; {rounds} rounds\n")
    print(f"{'ns per run of sock_ops, medians':40}" + "".join(f"{name:>8}" for name in builds) + "   ranges")
    for case in cases["A"]:
        runs = [rows[(case, name)] for name in builds]
        print(f"{case:40}" + "".join(f"{statistics.median(r):8.1f}" for r in runs) + "   "
              + " / ".join(f"{min(r):.0f}-{max(r):.0f}" for r in runs))
    print(f"\n{'rate table (one process)':40} {'conn/s':>9} {'overhead':>9}")
    for name, rate, overhead, q1, q3 in rates:
        shown = "" if overhead is None else f"{overhead:+.2f} %"
        print(f"{name:40} {rate:9.0f} {shown:>9}")


if __name__ == "__main__":
    main()
