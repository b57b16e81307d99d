# SPDX-License-Identifier: MIT
"""The kernel memory of keepalive's pinned state on this machine: run as root,
on the machine itself (2 CPUs) or inside a guest with many (bench.py boots
them through Tests/kernels/guest.py). Prints one JSON line.

    memory.py KEEPALIVE [POLICIES RULE_SETS]

Makes POLICIES cgroups (default 100) and puts a policy on each through one
`keepalive agent --once`, RULE_SETS of them (default 10) with 16 rules, on a
pin path of its own, and reports: Percpu (per-CPU memory) and the slab's
unreclaimable memory from /proc/meminfo before and after, what `status`
reports of the state's maps, how long the first attach took to make the
state (its BPF_MAP_CREATE and BPF_MAP_UPDATE_ELEM calls, the counters'
chunk put in place among them, timed by strace -T on a second, fresh state
with one policy), and the CPUs the kernel counts as possible. Removes everything.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "integration"))
from support import cgroup2_mount  # noqa: E402  (the tests' helpers, in the guests' image too)

KEEPALIVE, POLICIES, RULE_SETS = None, 100, 10  # main() takes them from its arguments
TAG = uuid.uuid4().hex[:8]
PIN = f"/sys/fs/bpf/ka-mem-{TAG}"


def meminfo():
    with open("/proc/meminfo") as f:
        return {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in f)}


def possible_cpus():
    with open("/sys/devices/system/cpu/possible") as f:
        last = f.read().strip().split("-")[-1]
    return int(last) + 1


def state_making_seconds(base):
    """The time of a first attach's BPF_MAP_CREATE and BPF_MAP_UPDATE_ELEM calls, summed, on a fresh state."""
    pin = PIN + "-first"
    cgroup = os.path.join(base, "first")
    os.makedirs(cgroup)
    try:
        trace = subprocess.run(["strace", "-f", "-T", "-e", "trace=bpf", "-o", "/dev/stdout", KEEPALIVE, "attach",
                                cgroup, "--pin-path", pin], capture_output=True, text=True, check=True).stdout
        return sum(float(m) for m in re.findall(r"bpf\(BPF_MAP_(?:CREATE|UPDATE_ELEM),.*<([\d.]+)>", trace))
    finally:
        subprocess.run([KEEPALIVE, "detach", "--all", "--pin-path", pin], capture_output=True)
        os.rmdir(cgroup)


def main():
    global KEEPALIVE, POLICIES, RULE_SETS
    KEEPALIVE = sys.argv[1]
    POLICIES = int(sys.argv[2]) if len(sys.argv) > 2 else POLICIES
    RULE_SETS = int(sys.argv[3]) if len(sys.argv) > 3 else RULE_SETS
    mount = cgroup2_mount() or sys.exit("memory.py: no cgroup2 mount")
    base = os.path.join(mount, f"ka-mem-{TAG}")
    config = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    try:
        entries = []
        for i in range(POLICIES):
            os.makedirs(os.path.join(base, f"p{i}"))
            entry = f"  - cgroup: {os.path.relpath(base, mount)}/p{i}\n    keepidle: 30\n"
            if i < RULE_SETS:
                entry += "    rules:\n" + "".join(f"      - {{ remote: [\"10.{r}.0.0/16\"], keepidle: 5 }}\n" for r in range(16))
            entries.append(entry)
        config.write("policies:\n" + "".join(entries))
        config.close()
        before = meminfo()
        subprocess.run([KEEPALIVE, "agent", "--config", config.name, "--once", "--pin-path", PIN], check=True,
                       capture_output=True)
        after = meminfo()
        status = json.loads(subprocess.run([KEEPALIVE, "status", "--json", "--pin-path", PIN], check=True,
                                           capture_output=True, text=True).stdout)
        print(json.dumps({
            "cpus": possible_cpus(),
            "policies": len(status["policies"]),
            "rule_sets": sum(1 for p in status["policies"] if p["rules"]),
            "percpu_bytes": after["Percpu"] - before["Percpu"],
            "slab_unreclaimable_bytes": after["SUnreclaim"] - before["SUnreclaim"],
            "maps_bytes": status["programs"].get("kernel_memory_bytes"),
            "first_attach_state_seconds": state_making_seconds(base),
        }))
    finally:
        subprocess.run([KEEPALIVE, "detach", "--all", "--pin-path", PIN], capture_output=True)
        shutil.rmtree(PIN, ignore_errors=True)
        os.unlink(config.name)
        for directory in sorted((d for d, _, _ in os.walk(base)), key=len, reverse=True):
            os.rmdir(directory)


# --- on the host: the same in guests of many CPUs ------------------------------

GUEST_SERIES, GUEST_CPUS = "6.12", (16, 64)
TARGET_CPUS, TARGET_BYTES = 192, 16 * 1024 * 1024


def in_guests(keepalive):
    """memory.py's figures here and in 6.12 guests of 16 and 64 vCPUs, and by a line through
    the guests' two at 192 and 256 CPUs: (rows, the figures' dict by CPUs)."""
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
    sys.path.insert(0, os.path.join(root, "Tests", "kernels"))
    import guest
    here = json.loads(subprocess.run([sys.executable, __file__, keepalive], check=True, capture_output=True,
                                     text=True).stdout)
    figures = {}
    kernel = guest.prepare([GUEST_SERIES])[0]
    os.makedirs(guest.KERNELS, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=guest.KERNELS) as directory:
        image = guest.project_image(directory)
        for cpus in GUEST_CPUS:
            result = guest.boot(kernel, [image], args="cmd:python3 bench/memory.py build/bin/keepalive",
                                cpus=cpus, memory_mb=4096, timeout=1200)
            line = re.search(r"^(\{.*\})$", result.console, re.M) if result.returncode == 0 else None
            if not line:
                raise RuntimeError(f"memory guest of {cpus} CPUs: {result.tail(40)}")
            figures[cpus] = json.loads(line.group(1))
    (a, b), (c, d) = ((figures[n]["cpus"], figures[n]["maps_bytes"]) for n in GUEST_CPUS)
    per_cpu = (d - b) / (c - a)
    for cpus in (TARGET_CPUS, 256):
        figures[cpus] = {"cpus": cpus, "maps_bytes": b + per_cpu * (cpus - a), "computed": True,
                         "percpu_bytes": figures[c]["percpu_bytes"] / c * cpus}
    return here, figures, kernel.release


def report(here, figures, release):
    """The rows bench.py prints, and the target's (text, met)."""
    mib = lambda value: f"{value / 1048576:.2f}"
    print(f"\nkernel memory of the pinned state: 100 policies, 10 with 16 rules (bench/memory.py)")
    print(f"{'where':44} {'CPUs':>5} {'maps (MiB)':>11} {'Percpu +MiB':>12} {'first attach':>13}")
    print(f"{'this machine, ' + os.uname().release:44} {here['cpus']:5} {mib(here['maps_bytes']):>11} "
          f"{mib(here['percpu_bytes']):>12} {here['first_attach_state_seconds'] * 1000:10.1f} ms")
    for cpus, figure in sorted(figures.items()):
        where = f"computed from the {GUEST_CPUS[0]} and {GUEST_CPUS[1]}" if figure.get("computed") \
            else f"guest, Linux {release} (TCG)"
        creation = "" if figure.get("computed") else f"{figure['first_attach_state_seconds'] * 1000:10.1f} ms"
        print(f"{where:44} {cpus:5} {mib(figure['maps_bytes']):>11} {mib(figure['percpu_bytes']):>12} {creation:>13}")
    at = figures[TARGET_CPUS]
    worst = max(at["maps_bytes"], at["percpu_bytes"])
    return [(f"kernel memory at most 16 MiB on {TARGET_CPUS} CPUs with 100 policies and 10 rule sets "
             f"({mib(worst)} MiB, computed from guests of {GUEST_CPUS[0]} and {GUEST_CPUS[1]} vCPUs)",
             worst <= TARGET_BYTES)]


if __name__ == "__main__":
    main()
