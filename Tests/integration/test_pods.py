# SPDX-License-Identifier: MIT
"""Pods as targets, through a real containerd and its CRI plugin.

The test plays kubelet (runtimes.Containerd: RunPodSandbox with labels and
annotations, host network, cgroupfs driver; CreateContainer and
StartContainer of a locally built image). What keepalive did is read back
from the kernel: the policies in force (`status --json`) and the options of
the pods' own sockets (pidfd_getfd, getsockopt).
"""
import json
import os
import re
import signal
import socket
import subprocess
import time
import uuid

import pytest

from conftest import require_privilege, require_tool
from runtimes import Containerd, client_command, pair_command, pids_named
from support import KERNEL_DEFAULT, cgroup2_mount, free_port, socket_values, values, wait_until

TIGHT = values(31, 5, 3, (31 + 5 * 3) * 1000)


@pytest.fixture
def containerd():
    require_privilege()
    require_tool("containerd", "ctr", "runc")
    runtime = Containerd()
    try:
        yield runtime
    finally:
        runtime.close()


def policy_file(containerd, entries):
    return f"runtime:\n  cri: {containerd.endpoint}\npolicies:\n{entries}"


def pod_path(pod):
    return cgroup2_mount() + pod["cgroup"]


def pod_sockets(pod, count=2):
    """The options of the TCP sockets the pod's nc processes hold (a
    connected and an accepted one with pair_command), once all are open."""
    def held():
        pids = pids_named(pod_path(pod), "nc")
        found = [v for pid in pids for v in socket_values(pid)]
        return found if len(found) == count else None
    return wait_until(held, timeout=10, what=f"{count} TCP sockets in pod {pod['name']}")


def socket_cgroups(pod):
    """The pod's nc processes: each one's cgroup now, and the cgroups its TCP sockets were made in (ss)."""
    made = subprocess.run(["ss", "-tnp", "--cgroup"], capture_output=True, text=True).stdout.splitlines()
    lines = []
    for pid in pids_named(pod_path(pod), "nc"):
        with open(f"/proc/{pid}/cgroup") as f:
            now = [line.strip() for line in f if line.startswith("0::")]
        lines += [f"nc {pid} in {now}"] + [line for line in made if f"pid={pid}," in line]
    return "\n".join(lines)


def in_force(keepalive):
    """{cgroup: status entry} of the policies in force."""
    return {p["cgroup"]: p for p in keepalive.status()}


def rel(pod):
    return pod["cgroup"].lstrip("/")


def settings(keepalive):
    """The policies in force without their counters (which real connections move)."""
    counters = ("sockets_configured", "reaped", "reaped_keepalive", "reaped_user_timeout")
    return [{k: v for k, v in p.items() if k not in counters} for p in keepalive.status()]


def test_matching_pods_get_the_policy_and_others_do_not(containerd, agent, keepalive):
    process, _ = agent(policy_file(containerd, """  - pods:
      namespace: "sh*"
      labels: { tier: db }
    keepidle: 31
    keepintvl: 5
    keepcnt: 3
"""))
    db = containerd.run_pod("db-0", "shop", labels={"tier": "db"})
    web = containerd.run_pod("web-0", "shop", labels={"tier": "web"})
    elsewhere = containerd.run_pod("db-0", "other", labels={"tier": "db"})
    for pod in (db, web, elsewhere):
        containerd.start_container(pod, "app", pair_command(free_port()))
    process.wait_for(re.escape(f"attached policy on pod shop/db-0 ({rel(db)}): keepidle=31"))
    # Connect and accept, in a container started after the pod: covered through the pod's cgroup.
    assert pod_sockets(db) == [TIGHT] * 2
    assert pod_sockets(web) == [KERNEL_DEFAULT] * 2
    assert pod_sockets(elsewhere) == [KERNEL_DEFAULT] * 2
    policy = in_force(keepalive)[rel(db)]
    assert set(in_force(keepalive)) == {rel(db)}
    assert (policy["workload"], policy["namespace"], policy["pod"], policy["owner"]) == \
        ("pod shop/db-0", "shop", "db-0", "agent")

    # Gone with the pod: the policy goes as its cgroup does.
    containerd.remove_pod(db)
    process.wait_for(re.escape(f"detached policy from pod shop/db-0 ({rel(db)})"))
    assert in_force(keepalive) == {}

    # Identity in the metrics, with the kube-state-metrics label names (listen, connect, accept).
    again = containerd.run_pod("db-1", "shop", labels={"tier": "db"})
    containerd.start_container(again, "app", pair_command(free_port()))
    pod_sockets(again)
    assert (f'keepalive_sockets_configured_total{{cgroup="{rel(again)}",namespace="shop",pod="db-1"}} 3'
            in process.scrape())


def test_label_expressions_namespace_globs_and_the_last_entry(containerd, agent, keepalive):
    process, _ = agent(policy_file(containerd, """  - pods:
      expressions:
        - { key: env, operator: In, values: [prod, staging] }
        - { key: canary, operator: DoesNotExist }
    keepidle: 41
  - pods:
      namespace: "team-?"
      expressions: [ { key: env, operator: NotIn, values: [prod] }, { key: tier, operator: Exists } ]
    keepidle: 42
  - pods:
      name: "batch-*"
    keepidle: 43
"""))
    pods = {
        "prod": containerd.run_pod("api", "default", labels={"env": "prod"}),
        "staging": containerd.run_pod("api", "team-a", labels={"env": "staging", "tier": "x"}),
        "canary": containerd.run_pod("api-canary", "default", labels={"env": "prod", "canary": "1"}),
        "dev": containerd.run_pod("api", "team-b", labels={"env": "dev"}),
        "batch": containerd.run_pod("batch-7", "team-c", labels={"env": "prod"}),
        "long": containerd.run_pod("api", "team-ab", labels={"env": "dev", "tier": "x"}),
    }
    wanted = {"prod": 41, "staging": 42, "batch": 43}  # the later entry wins where two select
    wait_until(lambda: {k for k, p in pods.items() if rel(p) in in_force(keepalive)} == set(wanted),
               what="the selected pods' policies")
    force = in_force(keepalive)
    assert {k: force[rel(pods[k])]["keepidle"] for k in wanted} == wanted


def test_annotations_choose_within_what_the_entry_allows(containerd, agent, keepalive):
    process, _ = agent(policy_file(containerd, """  - pods: { namespace: open }
    keepidle: 31
    keepintvl: 5
    keepcnt: 3
  - pods: { namespace: closed }
    annotations: ignore
    keepidle: 32
"""))
    own = containerd.run_pod("own", "open", annotations={"keepalive.dev/keepidle": "7",
                                                           "keepalive.dev/user-timeout": "9000",
                                                           "keepalive.dev/precedence": "policy"})
    out = containerd.run_pod("out", "open", annotations={"keepalive.dev/enabled": "false"})
    bad = containerd.run_pod("bad", "open", annotations={"keepalive.dev/keepcnt": "lots",
                                                           "keepalive.dev/keepintvl": "6"})
    ignored = containerd.run_pod("ign", "closed", annotations={"keepalive.dev/keepidle": "7"})
    wait_until(lambda: len(in_force(keepalive)) == 3, what="three policies")
    force = in_force(keepalive)
    assert rel(out) not in force
    assert (force[rel(own)]["keepidle"], force[rel(own)]["keepintvl"], force[rel(own)]["user_timeout"],
            force[rel(own)]["precedence"]) == (7, 5, 9000, "policy")
    assert (force[rel(bad)]["keepintvl"], force[rel(bad)]["keepcnt"]) == (6, 3)  # the bad one ignored, the rest kept
    assert force[rel(ignored)]["keepidle"] == 32
    containerd.start_container(own, "app", pair_command(free_port()))
    assert pod_sockets(own) == [values(7, 5, 3, 9000)] * 2
    # A bad value is said once, naming the pod, the annotation, the value and why.
    problem = process.wait_for(r'pod open/bad annotation keepalive.dev/keepcnt="lots" ignored: .*not a whole number')
    process.signal(signal.SIGHUP)
    process.wait_for("reloaded")
    time.sleep(0.5)
    assert [line for line in process.lines if "keepalive.dev/keepcnt" in line] == [problem]


def test_the_agent_started_after_the_pods_covers_them_and_their_connections(containerd, agent, keepalive):
    pod = containerd.run_pod("db-0", "shop", labels={"tier": "db"})
    containerd.start_container(pod, "app", pair_command(free_port()))
    assert pod_sockets(pod) == [KERNEL_DEFAULT] * 2
    agent(policy_file(containerd, "  - pods: { labels: { tier: db } }\n    keepidle: 31\n    keepintvl: 5\n    keepcnt: 3\n"))
    assert pod_sockets(pod) == [TIGHT] * 2  # existing: true (the default): open connections too


def test_a_runtime_stopped_and_restarted_under_the_agent_loses_nothing(containerd, agent, keepalive):
    process, _ = agent(policy_file(containerd, "  - pods: { labels: { tier: db } }\n    keepidle: 31\n"))
    first = containerd.run_pod("db-0", "shop", labels={"tier": "db"})
    wait_until(lambda: rel(first) in in_force(keepalive), what="the first pod's policy")
    assert 'keepalive_runtime_up{runtime="cri"} 1' in process.scrape()

    containerd.stop()
    started = time.monotonic()
    wait_until(lambda: 'keepalive_runtime_up{runtime="cri"} 0' in process.scrape(), timeout=15, interval=0.5,
               what="runtime_up 0")
    print(f"runtime_up 0 after {time.monotonic() - started:.1f} s")
    process.wait_for(r"CRI at .*; every policy stays in force, retried")
    assert process.get("/livez")[0] == 200
    time.sleep(11)  # a retry pass while the runtime is away: nothing is withdrawn
    assert rel(first) in in_force(keepalive)

    containerd.start()
    wait_until(lambda: 'keepalive_runtime_up{runtime="cri"} 1' in process.scrape(), timeout=15, interval=0.5,
               what="runtime_up 1")
    process.wait_for("CRI answers again")
    assert len([line for line in process.lines if "every policy stays in force" in line]) == 1  # said once
    second = containerd.run_pod("db-1", "shop", labels={"tier": "db"})
    wait_until(lambda: {rel(first), rel(second)} <= set(in_force(keepalive)), what="both pods' policies")
    assert [line for line in process.lines if "detached" in line] == []


def test_a_pod_the_runtime_could_not_be_asked_about_is_asked_again_by_its_own_task(containerd, agent, keepalive):
    """kubelet makes a pod's cgroup while the runtime is away: the first ask
    fails, is said, and the pod's task asks again (every 2 s at most), so the
    pod has its policy soon after RunPodSandbox, not at a full pass (10 s)."""
    process, _ = agent(policy_file(containerd, "  - pods: { labels: { tier: db } }\n    keepidle: 31\n"))
    containerd.stop()
    uid = str(uuid.uuid4())
    containerd.make_pod_cgroup(uid)
    process.wait_for(rf"cannot identify the workload of \S*pod{uid}: .*; asked again")
    containerd.start()
    pod = containerd.run_pod("db-0", "shop", labels={"tier": "db"}, uid=uid)
    returned = time.monotonic()
    wait_until(lambda: rel(pod) in in_force(keepalive), timeout=30, interval=0.1, what="the pod's policy")
    took = time.monotonic() - returned
    print(f"policy in force {took:.2f} s after RunPodSandbox returned")
    assert took < 5, took
    process.wait_for(rf"resolved: identify \S*pod{uid}")


def test_the_first_connect_of_a_new_pod_is_configured_by_the_program(containerd, agent, keepalive):
    """The policy is in force on the pod's cgroup before its first application
    container starts: with existing: false, only the sock_ops program can
    have set the options of the container's very first connect."""
    process, _ = agent(policy_file(containerd, "  - pods: {}\n    keepidle: 31\n    keepintvl: 5\n    keepcnt: 3\n"
                                               "    existing: false\n"), args=["--verbose"])
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        for index in range(5):
            asked = time.monotonic()
            pod = containerd.run_pod(f"p{index}", "race")
            ran = time.monotonic()
            containerd.start_container(pod, "app", client_command(port))
            started = time.monotonic()
            # When it fails: what the agent did meanwhile, against the runtime's calls,
            # and the cgroup the socket was made in against its process's now.
            assert pod_sockets(pod, count=1) == [TIGHT], (
                f"pod {index}: RunPodSandbox returned after {(ran - asked) * 1000:.1f} ms, the container "
                f"started {(started - asked) * 1000:.1f} ms after the ask; the agent's log since the ask:\n"
                + process.timeline(asked) + "\n" + socket_cgroups(pod) + "\n" + keepalive("status").stdout)
            listener.accept()[0].close()


def test_attach_and_detach_by_pod_and_container(containerd, keepalive):
    db = containerd.run_pod("db-0", "shop")
    web = containerd.run_pod("web-0", "shop")
    db_app = containerd.start_container(db, "app", pair_command(free_port()))
    containerd.start_container(web, "app", pair_command(free_port()))
    containerd.start_container(web, "sidecar", pair_command(free_port()))
    endpoint = ["--runtime-endpoint", containerd.endpoint]
    no_docker = {**os.environ, "DOCKER_HOST": "", "CONTAINER_HOST": ""}

    out = keepalive("attach", "--pod", "shop/db-0", *endpoint, "--keepidle", "31", "--keepintvl", "5",
                    "--keepcnt", "3", "--existing").stdout
    assert out.startswith(f"created policy on pod shop/db-0 ({rel(db)}): keepidle=31"), out
    assert pod_sockets(db) == [TIGHT] * 2

    # A container by its name in CRI: its own cgroup, below its pod's.
    out = keepalive("attach", "--container", "sidecar", *endpoint, "--keepidle", "33", env=no_docker).stdout
    policy = next(p for p in keepalive.status() if p["container"] == "sidecar")
    assert (policy["namespace"], policy["pod"], policy["workload"]) == ("shop", "web-0", "container shop/web-0/sidecar")
    assert policy["cgroup"].startswith(rel(web) + "/") and "created policy on container shop/web-0/sidecar" in out

    # A name in two pods, a pod that does not exist: one line, nothing changes.
    before = settings(keepalive)
    for args, problem in ((["--container", "app"], "names 2 containers"),
                          (["--pod", "shop/nope"], "no pod shop/nope (looked in CRI at unix://"),
                          (["--pod", "shop"], "--pod takes NAMESPACE/NAME")):
        failed = keepalive("attach", *args, *endpoint, check=False, env=no_docker)
        assert failed.returncode != 0 and problem in failed.stderr, failed.stderr
        assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr
    assert settings(keepalive) == before
    # By id, the same container is unambiguous.
    keepalive("attach", "--container", db_app[:12], *endpoint, "--keepidle", "34", env=no_docker)

    listed = json.loads(keepalive("inspect", "--pod", "shop/db-0", *endpoint, "--json").stdout)
    assert {s["workload"] for s in listed} == {"container shop/db-0/app"}  # the nearest policy's
    assert keepalive("detach", "--pod", "shop/db-0", *endpoint).stdout.startswith("removed policy from pod shop/db-0")
    assert rel(db) not in in_force(keepalive)
