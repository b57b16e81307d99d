# SPDX-License-Identifier: MIT
"""What keepalive reports of the dead connections it reaped, and what it does not.

Covered connections that die because the peer stopped answering are counted
and recorded (test_dead_peer.py checks each case's event); connections that
end otherwise, or that no policy covers, are not. A real program (redis-cli
SUBSCRIBE) shows up in `keepalive events`, and a real Prometheus server,
scraping the agent, finds the count with the right labels.
"""
import json
import os
import re
import subprocess
import urllib.parse
import urllib.request


from conftest import require_tool
from cutcable import CASES, PEER_ADDR, run_case
from support import LIB, PYTHON, free_port, in_cgroup, preload_env, run, wait_until

PROBES = CASES["keepalive-probes"][0]
POLICY_FLAGS = [arg for k, v in PROBES.items() for arg in (f"--{k.replace('_', '-')}", str(v))]
POLICY_YAML = "".join(f"    {k}: {v}\n" for k, v in PROBES.items())

# Connections that end in every way but a vanished peer: closed by either
# side, reset by the peer, refused, and a connect to nobody that gives up.
ENDINGS = """
import socket, struct
server = socket.create_server(("127.0.0.1", 0))
address = server.getsockname()
client = socket.create_connection(address); accepted, _ = server.accept()
client.sendall(b"x"); accepted.recv(1); client.close(); accepted.close()          # closed normally
client = socket.create_connection(address); accepted, _ = server.accept()
accepted.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
accepted.close()                                                                  # reset by the peer
try:
    client.recv(1)
except ConnectionResetError:
    pass
server.close()
try:
    socket.create_connection(address)                                             # refused
except ConnectionRefusedError:
    pass
print("done")
"""


def events(keepalive):
    return json.loads(keepalive("events", "--json").stdout)


def test_connections_that_end_otherwise_are_not_counted(keepalive, cgroups):
    cgroup = cgroups.make()
    keepalive("attach", cgroup, *POLICY_FLAGS)
    assert run(in_cgroup(cgroup, [PYTHON, "-c", ENDINGS])).stdout == "done\n"
    [status] = keepalive.status()
    assert status["sockets_configured"] >= 6  # they were covered
    assert events(keepalive) == [] and status["reaped"] == 0


def test_a_connection_no_policy_covers_is_not_reported(netns_pair, keepalive, cgroups):
    keepalive("attach", cgroups.make(), *POLICY_FLAGS)  # a state, but elsewhere
    outside = cgroups.make()
    env = preload_env(os.path.join(LIB, "libkeepalive.so"), **{f"TCP_{k.upper()}": v for k, v in PROBES.items()})
    result = run_case(netns_pair, "connect", False, wait=15, cgroup=outside, env=env)
    assert result and result["error"] == "ETIMEDOUT", result  # it died, of a vanished peer
    assert events(keepalive) == []
    assert [s["reaped"] for s in keepalive.status()] == [0]


def test_redis_cli_subscribed_to_a_vanished_server_shows_up(netns_pair, keepalive, cgroups, processes, tmp_path):
    require_tool("redis-server", "redis-cli")
    cgroup = cgroups.make()
    # redis-cli turns keepalive on itself (15 s idle): the policy's values must win.
    keepalive("attach", cgroup, *POLICY_FLAGS, "--precedence", "policy")
    server = subprocess.Popen(["ip", "netns", "exec", netns_pair.far, "redis-server", "--bind", PEER_ADDR,
                               "--port", "6379", "--protected-mode", "no", "--save", "", "--appendonly", "no",
                               "--dir", str(tmp_path)],  # protected mode: its namespace is private
                              stdout=subprocess.DEVNULL)
    processes.append(server)
    wait_until(lambda: run(["ip", "netns", "exec", netns_pair.far, "redis-cli", "-h", PEER_ADDR, "ping"],
                           check=False).stdout == "PONG\n", what="redis-server up")
    subscriber = subprocess.Popen(in_cgroup(cgroup, ["ip", "netns", "exec", netns_pair.near, "redis-cli", "-h",
                                                     PEER_ADDR, "subscribe", "news"]),
                                  stdout=subprocess.PIPE, text=True)
    processes.append(subscriber)
    assert subscriber.stdout.readline().strip() in ("subscribe", "Reading messages... (press Ctrl-C to quit)")
    netns_pair.silence(netns_pair.far)
    [event] = wait_until(lambda: events(keepalive), timeout=15, what="the subscriber's connection reaped")
    assert (event["reason"], event["remote"], event["cgroup"]) == ("keepalive", f"{PEER_ADDR}:6379",
                                                                   cgroups.rel(cgroup)), event
    assert abs(event["silent_ms"] / 1000 - CASES["keepalive-probes"][1]) <= 1.0, event
    # redis-cli gives up on the error and exits: no process holds the socket any more.
    assert subscriber.wait(timeout=5) != 0 and event["command"] in (None, "redis-cli"), event
    text = keepalive("events").stdout
    # CGROUP, WORKLOAD (none: a cgroup's policy), PROCESS, LOCAL, REMOTE, REASON
    assert re.search(rf"{cgroups.rel(cgroup)} +- +\S+ +\S+:\d+ +{PEER_ADDR}:6379 +keepalive", text), text


class Prometheus:
    """A Prometheus server of the test's own, on loopback, scraping one target every second."""

    def __init__(self, target, directory):
        self.port = free_port()
        config = os.path.join(directory, "prometheus.yml")
        with open(config, "w") as f:
            f.write(f"global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: keepalive\n"
                    f"    static_configs:\n      - targets: ['{target}']\n")
        self.process = subprocess.Popen(["prometheus", f"--config.file={config}",
                                         f"--storage.tsdb.path={os.path.join(directory, 'data')}",
                                         f"--web.listen-address=127.0.0.1:{self.port}"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.ready, timeout=30, what="prometheus ready")

    def get(self, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
            return response.read().decode()

    def ready(self):
        try:
            return "Ready" in self.get("/-/ready")
        except OSError:
            return False

    def query(self, expression):
        """The instant vector's samples: [(labels, value)]."""
        body = json.loads(self.get("/api/v1/query?query=" + urllib.parse.quote(expression)))
        return [(r["metric"], float(r["value"][1])) for r in body["data"]["result"]]

    def close(self):
        self.process.terminate()
        self.process.wait(timeout=30)


def test_prometheus_finds_the_reaped_connections_with_their_labels(netns_pair, agent, keepalive, cgroups, tmp_path):
    require_tool("prometheus", "promtool")
    cgroup = cgroups.make()
    process, _ = agent(f"policies:\n  - cgroup: {cgroups.rel(cgroup)}\n" + POLICY_YAML)
    lint = run(["promtool", "check", "metrics"], input=process.scrape(), check=False)
    assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), lint
    prometheus = Prometheus(f"127.0.0.1:{process.port}", str(tmp_path))
    try:
        # 25 connections die at once: more than the agent logs in a second.
        mark = process.mark()
        result = run_case(netns_pair, "connect", False, wait=15, cgroup=cgroup, count=25)
        assert result["errors"] == {"ETIMEDOUT": 25}, result
        expression = f'keepalive_dead_connections_total{{cgroup="{cgroups.rel(cgroup)}"}}'
        samples = wait_until(lambda: [s for s in prometheus.query(expression) if s[1] > 0] or None, timeout=15,
                             what="prometheus scraped the count")
        assert [(labels["reason"], value) for labels, value in samples] == [("keepalive", 25.0)], samples
        assert samples[0][0]["job"] == "keepalive"
    finally:
        prometheus.close()
    # The agent logged them, at most 10 lines a second and a count of the rest.
    def logged():
        lines = process.lines[mark:]
        reaped = [line for line in lines if " reaped connection " in line]
        suppressed = sum(int(m.group(1)) for line in lines if (m := re.search(r"suppressed (\d+) reaped", line)))
        return (reaped, suppressed) if len(reaped) + suppressed == 25 else None

    reaped, suppressed = wait_until(logged, what=f"25 reaped connections logged: {process.lines[mark:]}")
    assert suppressed > 0
    per_second = {}
    for line in reaped:
        per_second[line.split()[0]] = per_second.get(line.split()[0], 0) + 1
    assert max(per_second.values()) <= 10, per_second
    assert all(re.search(rf"on {cgroups.rel(cgroup)}: \S+ -> {PEER_ADDR}:\d+, keepalive, peer silent \d+ ms", line)
               for line in reaped), reaped
