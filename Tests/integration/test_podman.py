# SPDX-License-Identifier: MIT
"""The DaemonSet's pod, as shipped, under a real container runtime (podman, runc).

The pod is the manifest's own template and ConfigMap (read from
deploy/kubernetes/keepalive.yaml, not a copy); only what names this run's
image and pin path is set. The image is `make image`'s. The policy it ships
(`kubepods.slice/*`) reaches a host process in a host cgroup made here.
"""
import copy
import os
import subprocess
import urllib.request

import pytest
import yaml

from conftest import require_privilege, require_tool
from machines import Podman
from runtimes import Containerd, pair_command, pids_named
from support import (BPFFS, ROOT, SEED_DEFAULT, bpffs_mounted, cgroup2_mount, free_port, hold, probe,
                     socket_values, unique, values, wait_until)

MANIFEST = os.path.join(ROOT, "deploy", "kubernetes", "keepalive.yaml")


def shipped_documents():
    with open(MANIFEST) as f:
        docs = {doc["kind"]: doc for doc in yaml.safe_load_all(f) if doc}
    return docs["ConfigMap"], docs["DaemonSet"]


def pod_from_daemonset(daemonset, name, image, pin_path):
    """The DaemonSet's pod template as a Pod (podman's kube play runs no DaemonSet)."""
    template = copy.deepcopy(daemonset["spec"]["template"])
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, **{k: v for k, v in template["metadata"].items() if k != "name"}},
           "spec": template["spec"]}
    [container] = pod["spec"]["containers"]
    container["image"] = image
    for variable in container["env"]:
        if variable["name"] == "KEEPALIVE_PIN_PATH":
            variable["value"] = pin_path
    return pod


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError:
        return None, ""


@pytest.fixture
def podman():
    require_privilege()
    require_tool("podman", "runc")
    made = Podman(host_pid=shipped_documents()[1]["spec"]["template"]["spec"].get("hostPID", False))
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def host_bpffs():
    """bpffs at /sys/fs/bpf, as systemd mounts it on a node (restored by the session fixture)."""
    if not bpffs_mounted():
        subprocess.run(["mount", "-t", "bpf", "-o", "mode=0700", "bpf", BPFFS], check=True)
    return BPFFS


@pytest.fixture
def pod_cgroup(cgroups):
    """A host cgroup under kubepods.slice, where the shipped policy looks for pods."""
    parent = os.path.join(cgroup2_mount(), "kubepods.slice")
    made_parent = not os.path.isdir(parent)
    path = cgroups.make(f"kubepods.slice/{unique('pod')}")
    if made_parent:
        cgroups.made.append(parent)  # removed too, after its child
    return path


@pytest.fixture
def node_containerd():
    """A containerd whose CRI socket is where a node's is: the DaemonSet mounts its directory."""
    require_tool("containerd", "ctr")
    runtime = Containerd(usual_socket=True)
    try:
        yield runtime
    finally:
        runtime.close()


def test_the_daemonset_pod_enforces_on_the_host_across_stop_and_start(host_bpffs, keepalive, node_containerd, podman,
                                                                       pod_cgroup, processes):
    configmap, daemonset = shipped_documents()
    holder = hold(pod_cgroup, processes)
    # A Kubernetes pod the shipped pods: entry selects, running before the agent.
    db = node_containerd.run_pod("db-0", "shop", labels={"tier": "db"})
    node_containerd.start_container(db, "app", pair_command(free_port()))
    name = unique("pod")
    image = podman.build_image()
    pod = pod_from_daemonset(daemonset, name, image, keepalive.pin_path)
    podman.play(pod, configmap=configmap)
    port = pod["spec"]["containers"][0]["ports"][0]["containerPort"]
    base = f"http://{podman.address(name)}:{port}"
    logs = lambda: podman("logs", f"{name}-agent", check=False).stderr
    wait_until(lambda: get(base + "/readyz")[0] == 200, timeout=20, what=f"/readyz (logs: {logs()})")
    assert get(base + "/livez")[0] == 200
    # The host process's connection, open before the pod: covered (existing: true).
    assert socket_values(holder) == [SEED_DEFAULT] * 2, logs()
    assert probe("pair", cgroup=pod_cgroup)["connected"]["keepidle"] == 15
    status, metrics = get(base + "/metrics")
    relative = os.path.relpath(pod_cgroup, cgroup2_mount())
    assert status == 200 and f'keepalive_sockets_configured_total{{cgroup="{relative}"}}' in metrics, metrics
    # The CRI pod, found through the mounted socket: its open connection got the entry's values.
    tight = values(30, 5, 3, (30 + 5 * 3) * 1000)
    db_sockets = lambda: [v for pid in pids_named(cgroup2_mount() + db["cgroup"], "nc") for v in socket_values(pid)]
    wait_until(lambda: db_sockets() == [tight] * 2, timeout=10, what=f"the CRI pod's sockets ({logs()})")
    assert 'namespace="shop",pod="db-0"' in get(base + "/metrics")[1]
    assert 'keepalive_runtime_up{runtime="cri"} 1' in get(base + "/metrics")[1]

    podman("pod", "stop", "--time", "5", name)
    assert probe("pair", cgroup=pod_cgroup)["connected"]["keepidle"] == 15  # pinned: no agent needed
    podman("pod", "start", name)
    base = f"http://{podman.address(name)}:{port}"
    wait_until(lambda: get(base + "/readyz")[0] == 200, timeout=20, what=f"/readyz after start ({logs()})")
    assert probe("pair", cgroup=pod_cgroup)["connected"]["keepidle"] == 15
    assert logs().count("ready:") == 2 and "error" not in logs(), logs()

    # Removed from the node as docs/operating.md says. The DaemonSet's pod gone,
    # the policies stay pinned; then the image's own binary, with the host's root
    # at /host as `kubectl debug node/NODE --profile=sysadmin` mounts it, removes them.
    podman("pod", "rm", "--force", "--time", "5", name)
    assert probe("pair", cgroup=pod_cgroup)["connected"]["keepidle"] == 15
    removed = podman("run", "--rm", "--privileged", "--network=none", "-v", "/:/host", image,
                     "detach", "--all", f"--pin-path=/host{keepalive.pin_path}",
                     f"--cgroup-root=/host{cgroup2_mount()}")
    assert not os.path.exists(keepalive.pin_path), (removed.stdout, removed.stderr)
    assert probe("pair", cgroup=pod_cgroup)["connected"]["keepalive"] == 0, removed.stderr
