# SPDX-License-Identifier: MIT
"""Real container runtimes for the container and pod tests: containerd with
its CRI plugin (what kubelet talks to), played as kubelet through CRI from
Python (grpcio), and podman's Docker-compatible API service.

Facts these follow are measured in ../shared/reference/container-runtimes.md.
Each runtime keeps its state in a directory of its own; on close it is
stopped and everything it made goes: pods and containers, shims, its state,
/run/containerd/s and /var/lib/cni (when it made them), the cgroups of its
pods in every hierarchy, podman's networks and libpod_parent cgroups, and
net.ipv4.ip_forward as found.
"""
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid

from support import BUILD, HELPERS, PREFIX, remove_cgroup_tree, run, unique, wait_until

CRI_STUBS = os.path.join(BUILD, "test", "cri")
IMAGE_TAR = os.path.join(BUILD, "test", "image.tar")
IMAGE_NAME = "localhost/keepalive-test-pause:1"
BUSYBOX = "/bin/busybox"
BUSYBOX_APPLETS = ["sh", "nc", "sleep", "cat", "echo", "true"]
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"


def cgroup_mounts():
    """Every cgroup mount point (v1 controllers and the v2 one): a failed
    sandbox leaves its directories in all of them."""
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if " - cgroup" in line]


# --- the test image: pause plus busybox-static, as an OCI image layout ---------

def _blob(layout, data):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs", "sha256", digest), "wb") as f:
        f.write(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _layer():
    """A tar of /pause and busybox with its applets, built in memory."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, mode in (("bin", 0o755), ("etc", 0o755), ("tmp", 0o1777)):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)
        tar.add(os.path.join(BUILD, "test", "pause"), "pause")
        tar.add(BUSYBOX, "bin/busybox")
        for applet in BUSYBOX_APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
        passwd = b"root:x:0:0:root:/:/bin/sh\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size = len(passwd)
        tar.addfile(info, io.BytesIO(passwd))
    return out.getvalue()


def build_image(path=IMAGE_TAR, name=IMAGE_NAME):
    """The sandbox and app image as an OCI image-layout tar that `ctr images
    import` and `podman load` both read: no registry is ever asked."""
    if os.path.exists(path):
        return path
    layout = tempfile.mkdtemp(prefix=PREFIX + "image-")
    try:
        os.makedirs(os.path.join(layout, "blobs", "sha256"))
        layer = _layer()
        layer_ref = _blob(layout, layer)
        config = {"architecture": "amd64", "os": "linux",
                  "config": {"Entrypoint": ["/pause"], "Env": ["PATH=/bin"]},
                  "rootfs": {"type": "layers", "diff_ids": [layer_ref["digest"]]}}
        config_ref = _blob(layout, json.dumps(config).encode())
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_ref},
                    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer_ref}]}
        manifest_ref = _blob(layout, json.dumps(manifest).encode())
        index = {"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest_ref,
            "annotations": {"io.containerd.image.name": name,
                            "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]}}]}
        with open(os.path.join(layout, "index.json"), "w") as f:
            json.dump(index, f)
        with open(os.path.join(layout, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)
        with tarfile.open(path + ".tmp", "w") as tar:
            for entry in sorted(os.listdir(layout)):
                tar.add(os.path.join(layout, entry), entry)
        os.rename(path + ".tmp", path)
        return path
    finally:
        shutil.rmtree(layout, ignore_errors=True)


# --- containerd and CRI --------------------------------------------------------

def cri_modules():
    """The Python CRI stubs `make` generates from the vendored api.proto."""
    if CRI_STUBS not in sys.path:
        sys.path.insert(0, CRI_STUBS)
    import api_pb2
    import api_pb2_grpc
    return api_pb2, api_pb2_grpc


CONTAINERD_CONFIG = """version = 2
root = "{root}/root"
state = "{root}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.opt"]

[grpc]
  address = "{socket}"
[ttrpc]
  address = "{root}/containerd.sock.ttrpc"
[debug]
  address = "{root}/debug.sock"
[metrics]
  address = ""

[plugins."io.containerd.runtime.v1.linux"]
  runtime_root = "{root}/runtime-v1"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{image}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  # Without CAP_SYS_RESOURCE runc cannot lower oom_score_adj: every sandbox would fail.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{root}/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/bin/runc"
        Root = "{root}/runc"
        SystemdCgroup = false
"""

SHIM_SOCKETS = "/run/containerd/s"
CNI_RESULTS = "/var/lib/cni"
KUBEPODS = "kubepods"


class Containerd:
    """A containerd with its CRI plugin and a state of its own, the test image
    imported, and a kubelet's calls to it (`run_pod`, `remove_pod`, ...).
    Its socket is in its own directory, or with `usual_socket` where a node's
    containerd has it (/run/containerd/containerd.sock, which must be free)."""

    def __init__(self, usual_socket=False):
        self.tag = unique("containerd")
        self.dir = tempfile.mkdtemp(prefix=self.tag + "-", dir="/var/tmp")
        self.leftovers = [path for path in ("/run/containerd", CNI_RESULTS) if not os.path.exists(path)]
        self.socket = os.path.join("/run/containerd" if usual_socket else self.dir, "containerd.sock")
        if usual_socket and os.path.exists(self.socket):
            raise AssertionError(f"{self.socket} exists: this machine runs a containerd of its own")
        self.endpoint = "unix://" + self.socket
        self.process, self.channel, self.pods = None, None, {}
        self.kubepods = [os.path.join(m, KUBEPODS) for m in cgroup_mounts()
                         if not os.path.exists(os.path.join(m, KUBEPODS))]
        try:
            with open(os.path.join(self.dir, "config.toml"), "w") as f:
                f.write(CONTAINERD_CONFIG.format(root=self.dir, socket=self.socket, image=IMAGE_NAME))
            os.makedirs(os.path.join(self.dir, "cni"))
            self.start()
            run(["ctr", "--address", self.socket, "-n", "k8s.io", "images", "import", build_image()])
        except BaseException:
            self.close()
            raise

    def start(self):
        """Starts containerd (again, on the same state); returns once CRI answers."""
        import grpc
        log = open(os.path.join(self.dir, "containerd.log"), "a")
        self.process = subprocess.Popen(["containerd", "--config", os.path.join(self.dir, "config.toml")],
                                        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        api, stubs = cri_modules()
        self.channel = grpc.insecure_channel(self.endpoint)
        self.runtime = stubs.RuntimeServiceStub(self.channel)

        def answers():
            if self.process.poll() is not None:
                raise AssertionError(f"containerd exited {self.process.returncode}: {self.log()}")
            try:
                return self.runtime.Version(api.VersionRequest(version="v1"), timeout=1).runtime_name
            except grpc.RpcError:
                return None

        wait_until(answers, timeout=20, what="containerd's CRI")

    def stop(self):
        """Stops containerd gracefully (its shims and containers stay, as on a node)."""
        if self.channel:
            self.channel.close()
            self.channel = None
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self):
        with open(os.path.join(self.dir, "containerd.log"), errors="replace") as f:
            return f.read()[-3000:]

    # --- kubelet's calls ---

    @staticmethod
    def make_pod_cgroup(uid, qos="besteffort"):
        """The pod's cgroup, as kubelet's pod container manager makes it before
        RunPodSandbox (below the cgroup2 mount)."""
        from support import cgroup2_mount
        cgroup = f"/{KUBEPODS}/{qos}/pod{uid}" if qos != "guaranteed" else f"/{KUBEPODS}/pod{uid}"
        os.makedirs(cgroup2_mount() + cgroup, exist_ok=True)
        return cgroup

    def run_pod(self, name, namespace="default", labels=None, annotations=None, qos="besteffort", uid=None):
        """RunPodSandbox as kubelet makes it (host network, cgroupfs driver): the
        pod's cgroup is made first (unless its uid says it was made already).
        Returns the pod: its sandbox id, uid and cgroup (below the cgroup2 mount)."""
        api, _ = cri_modules()
        uid = uid or str(uuid.uuid4())
        cgroup = self.make_pod_cgroup(uid, qos)
        labels = {**(labels or {}), "io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": namespace,
                  "io.kubernetes.pod.uid": uid}
        config = api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name=name, namespace=namespace, uid=uid, attempt=0),
            hostname="", log_directory=os.path.join(self.dir, "logs", uid), labels=labels,
            annotations=annotations or {},
            linux=api.LinuxPodSandboxConfig(
                cgroup_parent=cgroup,
                security_context=api.LinuxSandboxSecurityContext(
                    namespace_options=api.NamespaceOption(network=api.NODE, pid=api.POD, ipc=api.POD))))
        reply = self.runtime.RunPodSandbox(api.RunPodSandboxRequest(config=config), timeout=60)
        pod = {"id": reply.pod_sandbox_id, "uid": uid, "name": name, "namespace": namespace, "cgroup": cgroup,
               "config": config, "containers": []}
        self.pods[pod["id"]] = pod
        return pod

    def start_container(self, pod, name, command, labels=None):
        """CreateContainer and StartContainer of the test image running `command`."""
        api, _ = cri_modules()
        config = api.ContainerConfig(
            metadata=api.ContainerMetadata(name=name, attempt=0), image=api.ImageSpec(image=IMAGE_NAME),
            command=command, labels=labels or {}, log_path=f"{name}.log",
            linux=api.LinuxContainerConfig(security_context=api.LinuxContainerSecurityContext(
                namespace_options=api.NamespaceOption(network=api.NODE, pid=api.POD, ipc=api.POD))))
        created = self.runtime.CreateContainer(api.CreateContainerRequest(
            pod_sandbox_id=pod["id"], config=config, sandbox_config=pod["config"]), timeout=60)
        self.runtime.StartContainer(api.StartContainerRequest(container_id=created.container_id), timeout=60)
        pod["containers"].append(created.container_id)
        return created.container_id

    def container_pid(self, container_id):
        api, _ = cri_modules()
        status = self.runtime.ContainerStatus(api.ContainerStatusRequest(container_id=container_id, verbose=True),
                                              timeout=10)
        return json.loads(status.info["info"])["pid"]

    def remove_pod(self, pod):
        """What kubelet does when a pod goes: containers stopped and removed,
        then the sandbox; its cgroup removed last."""
        api, _ = cri_modules()
        for container in pod["containers"]:
            self.runtime.StopContainer(api.StopContainerRequest(container_id=container, timeout=0), timeout=60)
            self.runtime.RemoveContainer(api.RemoveContainerRequest(container_id=container), timeout=60)
        self.runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod["id"]), timeout=60)
        self.runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod["id"]), timeout=60)
        self.pods.pop(pod["id"], None)
        from support import cgroup2_mount
        remove_cgroup_tree(cgroup2_mount() + pod["cgroup"])

    # --- teardown ---

    def close(self):
        if self.process and self.process.poll() is not None and self.pods:
            try:
                self.start()  # to remove what it runs
            except AssertionError:
                pass
        if self.channel:
            for pod in list(self.pods.values()):
                try:
                    self.remove_pod(pod)
                except Exception:  # noqa: BLE001 - teardown goes on; what stays is killed below
                    pass
        self.stop()
        # Shims of sandboxes it could not remove (their cgroups are killed below).
        run(["pkill", "-KILL", "-f", f"containerd-shim.*{self.dir}"], check=False)
        for mount in cgroup_mounts():
            for path in self.kubepods:
                if path.startswith(mount + "/"):
                    remove_cgroup_tree(path)
        for mount in self.kubepods:
            remove_cgroup_tree(mount)
        subprocess.run(["umount", "-R", os.path.join(self.dir, "state")], capture_output=True)
        for path in self.leftovers:
            shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def pids_named(cgroup, command):
    """Pids of the processes called `command` in a cgroup subtree (absolute path)."""
    found = []
    for directory, _, _ in os.walk(cgroup):
        try:
            with open(os.path.join(directory, "cgroup.procs")) as f:
                pids = [int(p) for p in f.read().split()]
        except OSError:
            continue
        for pid in pids:
            try:
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().strip() == command:
                        found.append(pid)
            except OSError:
                pass
    return found


def pair_command(port):
    """A container command holding one connection to itself: a busybox nc
    server and a client (stdin kept open: at EOF busybox nc drops it)."""
    return ["/bin/sh", "-c", f"sleep 3600 | nc -l -p {port} & sleep 0.3; sleep 3600 | nc 127.0.0.1 {port}"]


def client_command(port):
    """A container command whose first act is to connect to the host's `port`."""
    return ["/bin/sh", "-c", f"sleep 3600 | nc 127.0.0.1 {port}"]


# --- podman's Docker-compatible API service ------------------------------------

PODMAN_CONF = """[containers]
# Without CAP_SYS_RESOURCE podman's default rlimits cannot be set.
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{root}/events.log"
lock_type = "file"
tmp_dir = "{root}/tmp"
static_dir = "{root}/static"
volume_path = "{root}/volumes"
[network]
network_config_dir = "{root}/networks"
"""
STORAGE_CONF = """[storage]
driver = "overlay"
runroot = "{root}/run"
graphroot = "{root}/graph"
"""


class PodmanService:
    """`podman system service` on a socket of its own, with a storage and a
    configuration of its own (runc, cgroupfs), the test image loaded.
    Containers run with the host's network: nothing touches netavark or
    net.ipv4.ip_forward."""

    def __init__(self):
        self.tag = unique("podman-api")
        self.dir = tempfile.mkdtemp(prefix=self.tag + "-", dir="/var/tmp")
        self.socket = os.path.join(self.dir, "podman.sock")
        self.endpoint = "unix://" + self.socket
        self.env = {**os.environ, "CONTAINERS_CONF": os.path.join(self.dir, "containers.conf"),
                    "CONTAINERS_STORAGE_CONF": os.path.join(self.dir, "storage.conf")}
        self.parents = [os.path.join(m, "libpod_parent") for m in cgroup_mounts()
                        if not os.path.exists(os.path.join(m, "libpod_parent"))]
        self.leftovers = [p for p in ("/run/containers/networks", "/var/lib/containers/cache") if not os.path.exists(p)]
        with open(IP_FORWARD) as f:
            self.ip_forward = f.read()
        self.service = None
        try:
            for name, text in (("containers.conf", PODMAN_CONF), ("storage.conf", STORAGE_CONF)):
                with open(os.path.join(self.dir, name), "w") as f:
                    f.write(text.format(root=self.dir))
            self("load", "--quiet", "--input", build_image())
            self.service = subprocess.Popen(["podman", "system", "service", "--time=0", self.endpoint],
                                            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_until(lambda: self._pings(), timeout=20, what="podman's API")
        except BaseException:
            self.close()
            raise

    def __call__(self, *args, check=True, timeout=120):
        return run(["podman", *args], check=check, env=self.env, timeout=timeout)

    def _pings(self):
        if self.service.poll() is not None:
            raise AssertionError(f"podman system service exited {self.service.returncode}")
        import socket
        try:
            with socket.socket(socket.AF_UNIX) as client:
                client.settimeout(2)
                client.connect(self.socket)
                client.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
                return client.recv(64).startswith(b"HTTP/1.0 200") or False
        except OSError:
            return False

    def run_container(self, name, command, labels=None):
        """`podman run -d` of the test image running `command` (in place of its
        entrypoint, as CRI's command does); returns its id."""
        flags = [f"--label={k}={v}" for k, v in (labels or {}).items()]
        return self("run", "-d", "--name", name, "--network", "host", "--entrypoint", json.dumps(command), *flags,
                    IMAGE_NAME).stdout.strip()

    def cgroup(self, container):
        """The container's cgroup, as podman reports it (below the cgroup2 mount)."""
        return self("inspect", "--format", "{{.State.CgroupPath}}", container).stdout.strip()

    def close(self):
        if self.service and self.service.poll() is None:
            self.service.terminate()
            try:
                self.service.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.service.kill()
                self.service.wait()
        self("rm", "--force", "--all", "--time", "0", check=False)
        self("system", "reset", "--force", check=False)  # this store only: its own storage.conf
        for line in open("/proc/self/mountinfo").read().splitlines():
            mount = line.split()[4]
            if mount.startswith(self.dir + "/"):
                subprocess.run(["umount", "-l", mount], capture_output=True)
        for path in self.parents:
            remove_cgroup_tree(path)
        for path in self.leftovers:
            shutil.rmtree(path, ignore_errors=True)
        with open(IP_FORWARD, "w") as f:
            f.write(self.ip_forward)
        shutil.rmtree(self.dir, ignore_errors=True)
