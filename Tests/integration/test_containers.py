# SPDX-License-Identifier: MIT
"""Containers as targets, through a real Docker-compatible API: podman's
`podman system service`, with a storage of the test's own.

Names, ids and labels are resolved through the API; the container's cgroup
is podman's own account of it (libpod State.CgroupPath). Options are read
back from the containers' own sockets.
"""
import json
import os
import re

import pytest

from conftest import require_privilege, require_tool
from runtimes import PodmanService, pair_command, pids_named
from support import KERNEL_DEFAULT, cgroup2_mount, free_port, socket_values, unique, values, wait_until

TIGHT = values(31, 5, 3, (31 + 5 * 3) * 1000)


@pytest.fixture
def podman_api():
    require_privilege()
    require_tool("podman", "runc")
    service = PodmanService()
    try:
        yield service
    finally:
        service.close()


def container_sockets(podman_api, container, count=2):
    path = cgroup2_mount() + podman_api.cgroup(container)

    def held():
        found = [v for pid in pids_named(path, "nc") for v in socket_values(pid)]
        return found if len(found) == count else None
    return wait_until(held, timeout=10, what=f"{count} TCP sockets in container {container}")


def test_attach_by_container_name_and_id(podman_api, keepalive):
    name = unique("redis")
    cid = podman_api.run_container(name, pair_command(free_port()))
    assert container_sockets(podman_api, name) == [KERNEL_DEFAULT] * 2
    docker = {**os.environ, "DOCKER_HOST": podman_api.endpoint}

    out = keepalive("attach", "--container", name, "--keepidle", "31", "--keepintvl", "5", "--keepcnt", "3",
                    "--existing", env=docker).stdout
    cgroup = podman_api.cgroup(name).lstrip("/")
    assert out.startswith(f"created policy on container {name} ({cgroup}): keepidle=31"), out
    assert container_sockets(podman_api, name) == [TIGHT] * 2
    [policy] = keepalive.status()
    assert (policy["cgroup"], policy["container"], policy["container_id"], policy["workload"]) == \
        (cgroup, name, cid, f"container {name}")

    # An id prefix names the same container; detach by it.
    assert keepalive("detach", "--container", cid[:12], env=docker).stdout.startswith(f"removed policy from container {name}")
    assert keepalive.status() == []

    # A name nobody has: one line naming where it looked; nothing changes.
    failed = keepalive("attach", "--container", "no-such-thing", check=False, env=docker)
    assert failed.returncode != 0
    assert f"no container 'no-such-thing' (looked in Docker-compatible API at {podman_api.endpoint}" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1
    # A socket that is not there at all, given explicitly.
    gone = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    failed = keepalive("attach", "--container", name, check=False, env=gone)
    assert failed.returncode != 0 and "Docker-compatible API at unix:///nonexistent/docker.sock" in failed.stderr
    assert keepalive.status() == []


def test_agent_containers_entries_select_by_name_and_labels(podman_api, agent, keepalive):
    process, _ = agent(f"""runtime:
  docker: {podman_api.endpoint}
policies:
  - containers:
      name: "cache-*"
      labels: {{ com.example.team: cache }}
    keepidle: 31
    keepintvl: 5
    keepcnt: 3
""")
    selected = unique("cache-a").replace("ka-test-", "cache-")
    other_team = unique("cache-b").replace("ka-test-", "cache-")
    other_name = unique("db")
    podman_api.run_container(selected, pair_command(free_port()), labels={"com.example.team": "cache"})
    podman_api.run_container(other_team, pair_command(free_port()), labels={"com.example.team": "db"})
    podman_api.run_container(other_name, pair_command(free_port()), labels={"com.example.team": "cache"})
    process.wait_for(re.escape(f"attached policy on container {selected} ("))
    assert container_sockets(podman_api, selected) == [TIGHT] * 2
    assert container_sockets(podman_api, other_team) == [KERNEL_DEFAULT] * 2
    assert container_sockets(podman_api, other_name) == [KERNEL_DEFAULT] * 2
    assert [p["container"] for p in keepalive.status()] == [selected]
    metrics = process.scrape()
    assert 'keepalive_runtime_up{runtime="docker"} 1' in metrics
    assert f'container="{selected}"' in metrics

    podman_api("rm", "--force", "--time", "0", selected)
    process.wait_for(re.escape(f"detached policy from container {selected}"))
    assert keepalive.status() == []
