# SPDX-License-Identifier: MIT
"""The shipped deployment files: valid, and consistent with what the agent relies on."""
import configparser
import os
import re
import subprocess
import tempfile

import yaml

from conftest import require_tool
from support import KEEPALIVE, PYTHON, ROOT, run

DEPLOY = os.path.join(ROOT, "deploy")
MANIFEST = os.path.join(DEPLOY, "kubernetes", "keepalive.yaml")
UNIT = os.path.join(DEPLOY, "systemd", "keepalive.service")


def manifests():
    with open(MANIFEST) as f:
        return {doc["kind"]: doc for doc in yaml.safe_load_all(f) if doc}


def test_kubernetes_manifests_validate_against_the_schema():
    result = run([PYTHON, "-m", "kubernetes_validate", "--strict", MANIFEST], check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "INFO" in result.stdout and "ERROR" not in result.stdout, result.stdout


def test_daemonset_gives_the_agent_what_it_needs():
    docs = manifests()
    pod = docs["DaemonSet"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["hostPID"] is True  # existing: true enters the host processes' network namespaces
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert {"operator": "Exists"} in pod["tolerations"]
    security = container["securityContext"]
    assert security["privileged"] is False
    assert {"BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN", "SYS_PTRACE"} <= set(security["capabilities"]["add"])
    assert security["capabilities"]["drop"] == ["ALL"] and security["readOnlyRootFilesystem"] is True
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["bpffs"]["mountPath"] == "/sys/fs/bpf" and volumes["bpffs"]["hostPath"]["path"] == "/sys/fs/bpf"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["KEEPALIVE_CGROUP_ROOT"] == mounts["host-cgroup2"]["mountPath"]
    assert volumes["host-cgroup2"]["hostPath"]["path"] == "/sys/fs/cgroup"
    assert env["KEEPALIVE_PIN_PATH"].startswith(mounts["bpffs"]["mountPath"] + "/")
    config_path = next(a.split("=", 1)[1] for a in container["args"] if a.startswith("--config="))
    assert os.path.dirname(config_path) == mounts["policy"]["mountPath"]
    assert os.path.basename(config_path) in docs["ConfigMap"]["data"]
    metrics_port = int(next(a for a in container["args"] if a.startswith("--metrics-address=")).rsplit(":", 1)[1])
    assert container["ports"][0]["containerPort"] == metrics_port


def check_policy(text, tmp_path, name):
    path = tmp_path / name
    path.write_text(text)
    result = run([KEEPALIVE, "agent", "--config", str(path), "--check"], check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_configmap_policy_is_accepted_by_the_agent(tmp_path):
    text = manifests()["ConfigMap"]["data"]["keepalive.yaml"]
    out = check_policy(text, tmp_path, "configmap.yaml")
    assert f"{len(yaml.safe_load(text)['policies'])} policy entries" in out
    assert any("pods" in entry for entry in yaml.safe_load(text)["policies"])  # selects pods through CRI


def test_shipped_default_policy_is_accepted_by_the_agent(tmp_path):
    with open(os.path.join(DEPLOY, "keepalive.yaml")) as f:
        assert "policy entries" in check_policy(f.read(), tmp_path, "default.yaml")


def test_shipped_default_policys_commented_examples_are_accepted_as_written(tmp_path):
    """Each example, uncommented ("# " removed from its lines), is a valid file."""
    with open(os.path.join(DEPLOY, "keepalive.yaml")) as f:
        lines = f.read().splitlines()
    examples = [line.replace("# ", "", 1) if re.match(r"^\s*# ( |-|runtime:)", line) and not re.match(r"^\s*# [A-Z]", line) else line
                for line in lines]
    text = "\n".join(examples) + "\n"
    entries = yaml.safe_load(text)["policies"]
    assert {"unit", "pods", "containers"} <= {key for entry in entries for key in entry}
    assert any("rules" in entry for entry in entries)
    assert "runtime" in yaml.safe_load(text)
    out = check_policy(text, tmp_path, "examples.yaml")
    assert f"{len(entries)} policy entries" in out


def test_check_rejects_a_bad_policy_without_privilege():
    with tempfile.TemporaryDirectory() as tmp:  # readable by nobody, unlike pytest's tmp_path
        os.chmod(tmp, 0o755)
        path = os.path.join(tmp, "bad.yaml")
        with open(path, "w") as f:
            f.write("policies:\n  - cgroup: x\n    keepcnt: 999\n")
        os.chmod(path, 0o644)
        result = run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                      KEEPALIVE, "agent", "--config", path, "--check"], check=False)
    assert result.returncode != 0
    assert f"{path}:3: keepcnt: 999 is out of range" in result.stderr


def unit_file():
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(UNIT)
    return parser


def test_systemd_unit_is_hardened_and_keeps_bpf_reachable():
    unit = unit_file()
    service = unit["Service"]
    assert service["Type"] == "notify" and "Wants" not in unit["Unit"]
    assert service["ExecStartPre"].startswith("+") and service["ExecStartPre"].endswith("keepalive prepare")
    assert "bpf" in service["SystemCallFilter"].split()
    assert "@system-service" in service["SystemCallFilter"].split()
    assert service["ReadWritePaths"] == "-/sys/fs/bpf/keepalive" and service["ProtectKernelTunables"] == "yes"
    caps = set(service["CapabilityBoundingSet"].split())
    assert {"CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"} <= caps and "CAP_SYS_RESOURCE" not in caps
    with open(UNIT) as f:
        comments = [line for line in f if line.startswith("#")]
    for cap in caps:  # each capability the unit keeps is said why
        assert any(line.split()[1:2] == [cap] for line in comments), cap
    assert service["ExecReload"].endswith("kill -HUP $MAINPID")
    assert "--config /etc/keepalive/keepalive.yaml" in service["ExecStart"]


def test_systemd_unit_verifies(tmp_path):
    with open(UNIT) as f:
        text = f.read().replace("/usr/sbin/keepalive", KEEPALIVE)
    copy = tmp_path / "keepalive.service"
    copy.write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(copy)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(copy)],
                              capture_output=True, text=True)
    exposure = float(security.stdout.rsplit("level for keepalive.service:", 1)[1].split()[0])
    assert exposure <= 4.0, security.stdout


def test_version_and_help_exit_zero():
    version = run([KEEPALIVE, "--version"], check=False)
    assert version.returncode == 0 and version.stdout.strip() and not version.stderr, version
    assert run([KEEPALIVE, "agent", "--help"], check=False).returncode == 0


def test_alert_rules_check_and_pass_their_unit_tests():
    require_tool("promtool")
    rules = os.path.join(DEPLOY, "prometheus")
    checked = run(["promtool", "check", "rules", os.path.join(rules, "alerts.yaml")], check=False)
    assert checked.returncode == 0 and "SUCCESS" in checked.stdout, checked.stdout + checked.stderr
    tested = run(["promtool", "test", "rules", "alerts_test.yaml"], check=False, cwd=rules)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_every_policy_file_the_docs_show_is_valid(tmp_path):
    """Each ```yaml block of README, docs/ and the man pages' sources that is a
    policy file (or a part of one: a list of entries) passes `agent --check`."""
    import glob
    import re
    sources = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.md"),
                                                                  recursive=True))
    checked = 0
    for source in sources:
        with open(source) as f:
            blocks = re.findall(r"```yaml\n(.*?)```", f.read(), re.S)
        for n, block in enumerate(blocks):
            if "policies:" not in block and not block.lstrip().startswith("- "):
                continue
            text = block if "policies:" in block else "policies:\n" + block
            path = tmp_path / f"{os.path.basename(source)}-{n}.yaml"
            path.write_text(text)
            result = run([KEEPALIVE, "agent", "--config", str(path), "--check"], check=False)
            assert result.returncode == 0, (source, block, result.stderr)
            checked += 1
    assert checked >= 4, checked
