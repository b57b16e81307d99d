# SPDX-License-Identifier: MIT
"""Real deployments for the deploy tests: systemd as PID 1 (systemd-nspawn on
the Debian tree `make` caches under build/rootfs) and podman with runc.

Everything they make has a unique name and is removed on close, also when a
test fails: the machine's overlay, bpffs and cgroups (nspawn puts `payload`
and `supervisor` below the cgroup it runs in, so it runs in one of ours),
podman's containers, images, volumes and network, and net.ipv4.ip_forward is
put back as it was found.
"""
import os
import shutil
import signal
import subprocess
import tempfile

from support import BUILD, ROOT, cgroup2_mount, remove_cgroup_tree, run, unique, wait_until

ROOTFS = os.path.join(BUILD, "rootfs", "bookworm")
NSPAWN_RUNTIME = "/run/systemd/nspawn"
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"


def named_hierarchy(name):
    """Mount point of a named cgroup v1 hierarchy (hybrid hosts: name=systemd), or None."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            after = fields[fields.index("-") + 1:]
            if after[0] == "cgroup" and f"name={name}" in after[2].split(","):
                return fields[4]
    return None


class NspawnMachine:
    """A Debian 12 machine booted with systemd as PID 1 in systemd-nspawn.

    Its root is an overlay on the cached tree (nothing written to the tree),
    the repository is bound read-only at /src, and at /sys/fs/bpf (which
    nspawn's /sys lacks) it finds, with `bpffs`, a fresh bpffs of its own
    (systemd does not mount one in a container; never the host's own), else an
    empty directory, as sysfs has it where nothing is mounted there.
    """

    def __init__(self, bpffs=True, unified=False):
        if not os.path.isdir(os.path.join(ROOTFS, "usr", "lib", "systemd")):
            raise AssertionError(f"no Debian tree at {ROOTFS}: `make test` builds it")
        self.tag = unique("machine")
        self.runtime_existed = os.path.exists(NSPAWN_RUNTIME)
        self.dir = tempfile.mkdtemp(prefix=self.tag + "-", dir="/var/tmp")
        self.root = os.path.join(self.dir, "root")
        self.bpffs = os.path.join(self.dir, "bpffs")
        self.mount_bpffs = bpffs
        # systemd-nspawn gives the machine the unified layout (/sys/fs/cgroup
        # the cgroup2 mount, as Debian 12, Fedora and Ubuntu boot) on request.
        self.environment = {**os.environ, **({"SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"} if unified else {})}
        self.mounts, self.cgroups, self.nspawn, self.leader = [], [], None, None
        self.log = os.path.join(self.dir, "console.log")
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self):
        upper, work = os.path.join(self.dir, "upper"), os.path.join(self.dir, "work")
        for d in (upper, work, self.root):
            os.makedirs(d)
        run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={ROOTFS},upperdir={upper},workdir={work}",
             self.root])
        self.mounts.append(self.root)
        argv = ["systemd-nspawn", "--register=no", "--keep-unit", "--private-network",
                "--capability=CAP_BPF,CAP_PERFMON", "--system-call-filter=bpf",
                "--machine=" + self.tag[-24:], f"--bind-ro={ROOT}:/src", "-D", self.root, "-b", "--console=pipe"]
        os.makedirs(self.bpffs, mode=0o755)
        if self.mount_bpffs:
            run(["mount", "-t", "bpf", "-o", "mode=0700", "bpf", self.bpffs])
            self.mounts.append(self.bpffs)
        argv.insert(-4, f"--bind={self.bpffs}:/sys/fs/bpf")
        # nspawn makes its payload/ and supervisor/ cgroups below the one it runs in.
        joins = []
        for hierarchy in (cgroup2_mount(), named_hierarchy("systemd")):
            if hierarchy:
                path = os.path.join(hierarchy, self.tag)
                os.mkdir(path)
                self.cgroups.append(path)
                joins.append(path)
        script = "".join(f'echo $$ > "{path}/cgroup.procs" && ' for path in joins) + 'exec "$@"'
        with open(self.log, "w") as console:
            self.nspawn = subprocess.Popen(["sh", "-c", script, "sh"] + argv, stdin=subprocess.DEVNULL,
                                           stdout=console, stderr=subprocess.STDOUT, env=self.environment)
        self.leader = wait_until(self._find_leader, timeout=20, what="the machine's PID 1")
        wait_until(lambda: self.state() in ("running", "degraded"), timeout=60, interval=0.1,
                   what=f"the machine booted ({self.state()}; console: {self.console()})")

    def _find_leader(self):
        if self.nspawn.poll() is not None:
            raise AssertionError(f"systemd-nspawn exited {self.nspawn.returncode}: {self.console()}")
        children = run(["pgrep", "-P", str(self.nspawn.pid)], check=False).stdout.split()
        for pid in children:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == "systemd":
                    return int(pid)
        return None

    def console(self):
        with open(self.log, errors="replace") as f:
            return f.read()[-2000:]

    def state(self):
        return self.sh("systemctl is-system-running", check=False).stdout.strip()

    def sh(self, script, check=True, timeout=60):
        """Runs a shell script in the machine (all its namespaces), in /src."""
        return run(["nsenter", "-t", str(self.leader), "-a", "--", "sh", "-c", f"cd /src && {script}"],
                   check=check, timeout=timeout)

    def write(self, path, text, mode=0o644):
        """Writes a file into the machine's root."""
        target = os.path.join(self.root, path.lstrip("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w") as f:
            f.write(text)
        os.chmod(target, mode)

    def journal(self, unit):
        return self.sh(f"journalctl -u {unit} --no-pager -o cat", check=False).stdout

    def cgroup(self, relative):
        """A path of the machine's cgroup tree as the host sees it."""
        return os.path.join(cgroup2_mount(), self.tag, "payload", relative)

    def pids(self, unit):
        """Host pids of a service's processes."""
        with open(os.path.join(self.cgroup(f"system.slice/{unit}"), "cgroup.procs")) as f:
            return [int(p) for p in f.read().split()]

    def close(self):
        if self.nspawn and self.nspawn.poll() is None:
            if self.leader:
                subprocess.run(["nsenter", "-t", str(self.leader), "-a", "--", "systemctl", "poweroff"],
                               capture_output=True, timeout=30)
            try:
                self.nspawn.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.nspawn.send_signal(signal.SIGKILL)
                self.nspawn.wait()
        for path in reversed(self.cgroups):
            remove_cgroup_tree(path)
        for mount in reversed(self.mounts):
            subprocess.run(["umount", "-l", mount], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)
        if not self.runtime_existed:
            shutil.rmtree(NSPAWN_RUNTIME, ignore_errors=True)


class Podman:
    """podman with runc, as the deploy recipes say for a hybrid host (crun refuses
    it), through a containers.conf of its own: runc, and rlimits that need no
    CAP_SYS_RESOURCE. Everything it made goes on close."""

    KUBE_NETWORK = "podman-default-kube-network"

    def __init__(self, host_pid=False):
        self.tag = unique("podman")
        self.dir = tempfile.mkdtemp(prefix=self.tag + "-", dir="/var/tmp")
        conf = os.path.join(self.dir, "containers.conf")
        with open(conf, "w") as f:
            # podman 4.3's kube play drops a pod's hostPID: given here instead.
            f.write('[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
                    + ('pidns = "host"\n' if host_pid else "") + '[engine]\nruntime = "runc"\n')
        self.env = {**os.environ, "CONTAINERS_CONF": conf}
        with open(IP_FORWARD) as f:
            self.ip_forward = f.read()
        self.networks = set(self("network", "ls", "--format", "{{.Name}}").stdout.split())
        self.volumes = set(self("volume", "ls", "--format", "{{.Name}}").stdout.split())
        self.cgroup_parents = set(self._libpod_parents())
        self.images_before = set(self("images", "--quiet", "--no-trunc").stdout.split())
        self.images, self.pods = [], []

    def __call__(self, *args, check=True, timeout=120):
        return run(["podman", *args], check=check, env=self.env, timeout=timeout)

    def build_image(self):
        """`make image` under names of the test's own; returns the image's name."""
        image, base, installer = (f"localhost/{self.tag}:test", f"localhost/{self.tag}-base:test",
                                  f"localhost/{self.tag}-installer:test")
        self.images += [image, base, installer]
        run(["make", "--no-print-directory", "-C", ROOT, "image", f"IMAGE={image}", f"IMAGE_BASE={base}",
             f"IMAGE_INSTALLER={installer}"],
            env=self.env, timeout=300)
        return image

    def play(self, *documents, configmap=None):
        """`podman kube play` of these documents (and a ConfigMap file); returns the pod's name."""
        import yaml
        spec = os.path.join(self.dir, f"pod-{len(self.pods)}.yaml")
        with open(spec, "w") as f:
            yaml.safe_dump_all(documents, f)
        args = ["kube", "play"]
        if configmap:
            path = os.path.join(self.dir, f"configmap-{len(self.pods)}.yaml")
            with open(path, "w") as f:
                yaml.safe_dump(configmap, f)
            args += ["--configmap", path]
        name = documents[0]["metadata"]["name"]
        self.pods.append(name)
        self(*args, spec)
        return name

    def address(self, pod):
        """The pod's IP address on podman's network."""
        infra = self("pod", "inspect", pod, "--format", "{{.InfraContainerID}}").stdout.strip()
        networks = self("inspect", infra, "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}")
        return networks.stdout.split()[0]

    @staticmethod
    def _libpod_parents():
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split()[4] for line in f if " - cgroup" in line]
        return [os.path.join(m, "libpod_parent") for m in mounts if os.path.isdir(os.path.join(m, "libpod_parent"))]

    def close(self):
        for pod in self.pods:
            self("pod", "rm", "--force", "--time", "0", pod, check=False)
        for image in self.images:
            self("rmi", "--force", image, check=False)
        for image in set(self("images", "--quiet", "--no-trunc").stdout.split()) - self.images_before:
            self("rmi", "--force", image, check=False)  # kube play's pause image
        for volume in set(self("volume", "ls", "--format", "{{.Name}}").stdout.split()) - self.volumes:
            self("volume", "rm", "--force", volume, check=False)
        for network in set(self("network", "ls", "--format", "{{.Name}}").stdout.split()) - self.networks:
            self("network", "rm", "--force", network, check=False)
        for path in set(self._libpod_parents()) - self.cgroup_parents:
            remove_cgroup_tree(path)
        with open(IP_FORWARD, "w") as f:
            f.write(self.ip_forward)
        shutil.rmtree(self.dir, ignore_errors=True)
