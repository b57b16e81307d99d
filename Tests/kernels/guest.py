# SPDX-License-Identifier: MIT
"""Debian's own kernels, booted under QEMU, each running a suite of this build.

A guest boots a kernel from Debian's archive (the `linux-image-*-cloud-amd64`
packages: BTF on, virtio as modules) with an initramfs of a static busybox and
the modules it needs, which mounts two read-only disks and switches to the
first: the Debian 12 tree `make` debootstraps for the deployment tests
(python3, pytest, iproute2, nftables, bpftool, strace), and a copy of this
build and its tests at /mnt/project. `Tests/kernels/run-suite` then runs
pytest there and prints its result on the serial console, which is all the
host reads.

Packages come from the Debian mirror the machine's own apt sources name,
through an apt state of our own under build/kernels/apt: the machine's apt is
never touched. The newest package of each series is taken, and kept under
build/kernels for the next run.

Measured on these machines (see docs/kernels.md): under TCG, the 6.12 kernel
oopsed early in boot (in SLUB's kmem_cache_alloc, or a double fault) in about
one boot in four, with one vCPU or many; with CMPXCHG16B hidden from the
kernel (`clearcpuid=141`, X86_FEATURE_CX16) SLUB takes its locked path and
every boot tried passed. (Hiding it from the CPU instead, `-cpu qemu64,-cx16`,
also works, but Swift's runtime uses the instruction: keepalive would die of
SIGILL.) A guest that still stops before its suite starts is booted again
(never one whose suite ran and failed).
"""
import base64
import glob
import json
import lzma
import os
import re
import shutil
import subprocess
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.path.join(ROOT, "build")
KERNELS = os.path.join(BUILD, "kernels")
ROOTFS = os.path.join(BUILD, "rootfs", "bookworm")
HERE = os.path.dirname(os.path.abspath(__file__))

# series -> (suite, package name pattern). The newest matching package is taken.
SERIES = {
    "5.10": ("bullseye", r"linux-image-5\.10\.0-[0-9]+-cloud-amd64"),
    "6.1": ("bookworm", r"linux-image-6\.1\.0-[0-9]+-cloud-amd64"),
    "6.12": ("bookworm-backports", r"linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64"),
}
# What the guest loads before it mounts its disks (and its tests use), with
# what they depend on (modules.dep).
MODULES = ["virtio_pci", "virtio_blk", "veth", "nf_tables"]
START, END = "KA-GUEST-START", "KA-GUEST-END"
QEMU = "qemu-system-x86_64"
lock = threading.RLock()


def run(cmd, **kw):
    result = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if result.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return result.stdout


def debian_mirror():
    """The Debian mirror the machine's apt sources name (not the security one)."""
    texts = []
    for path in ["/etc/apt/sources.list"] + glob.glob("/etc/apt/sources.list.d/*.list") + \
            glob.glob("/etc/apt/sources.list.d/*.sources"):
        try:
            with open(path) as f:
                texts.append(f.read())
        except OSError:
            pass
    for line in "\n".join(texts).splitlines():
        if re.match(r"^(deb |URIs:)", line) and "security" not in line:
            for word in line.split()[1:]:
                if re.match(r"https?://", word):
                    return word
    raise RuntimeError("no Debian mirror in /etc/apt/sources.list*")


class Apt:
    """apt-get with a state of its own under build/kernels/apt."""

    def __init__(self):
        self.dir = os.path.join(KERNELS, "apt")
        for sub in ("lists/partial", "archives/partial"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        sources = os.path.join(self.dir, "sources.list")
        mirror = debian_mirror()
        with open(sources, "w") as f:
            f.writelines(f"deb {mirror} {suite} main\n" for suite, _ in SERIES.values())
        self.options = ["-o", f"Dir::Etc::sourcelist={sources}", "-o", "Dir::Etc::sourceparts=-",
                        "-o", f"Dir::State::Lists={self.dir}/lists", "-o", f"Dir::Cache::Archives={self.dir}/archives",
                        "-o", "Debug::NoLocking=1"]
        self.updated = False

    def update(self):
        if not self.updated:
            run(["apt-get", *self.options, "-qq", "update"], timeout=600)
            self.updated = True

    def newest(self, pattern):
        """(package, version) of the newest package whose name matches `pattern`."""
        self.update()
        names = run(["apt-cache", *self.options, "search", "--names-only", f"^{pattern}$"]).split("\n")
        candidates = []
        for name in (line.split(" ")[0] for line in names if line.strip()):
            version = run(["apt-cache", *self.options, "show", "--no-all-versions", name])
            candidates.append((name, re.search(r"^Version: (\S+)", version, re.M).group(1)))
        if not candidates:
            raise RuntimeError(f"no package matches {pattern} in {debian_mirror()}")
        best = candidates[0]
        for candidate in candidates[1:]:
            if subprocess.run(["dpkg", "--compare-versions", candidate[1], "gt", best[1]]).returncode == 0:
                best = candidate
        return best

    def download(self, package, into):
        run(["apt-get", *self.options, "-qq", "download", package], cwd=into, timeout=600)


class Kernel:
    """One series' newest cloud kernel, unpacked, with the initramfs its guests boot."""

    def __init__(self, series, apt=None):
        self.series = series
        self.dir = os.path.join(KERNELS, series)
        ready = os.path.join(self.dir, "ready")
        if not os.path.exists(ready):
            self._prepare(apt or Apt())
            with open(ready, "w") as f:
                f.write(self.release)
        with open(ready) as f:
            self.release = f.read().strip()
        self.vmlinuz = os.path.join(self.dir, "tree", "boot", f"vmlinuz-{self.release}")
        self.initrd = os.path.join(self.dir, "initrd.cpio")
        with lock:  # made again when /init changed (the kernel package is kept)
            if os.path.getmtime(self.initrd) < os.path.getmtime(os.path.join(HERE, "init")):
                self._initramfs(os.path.join(self.dir, "tree"))

    def _prepare(self, apt):
        suite, pattern = SERIES[self.series]
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        package, _ = apt.newest(pattern)
        apt.download(package, self.dir)
        [deb] = glob.glob(os.path.join(self.dir, "*.deb"))
        tree = os.path.join(self.dir, "tree")
        run(["dpkg-deb", "-x", deb, tree])
        os.remove(deb)
        self.release = package[len("linux-image-"):]
        run(["depmod", "-b", tree, self.release])
        self._initramfs(tree)

    def _initramfs(self, tree):
        """busybox, the modules in load order (decompressed: busybox insmod reads them whole), /init."""
        staging = os.path.join(self.dir, "initramfs")
        shutil.rmtree(staging, ignore_errors=True)
        modules_dir = os.path.join(tree, "lib", "modules", self.release)
        os.makedirs(os.path.join(staging, "bin"))
        os.makedirs(os.path.join(staging, "modules"))
        shutil.copy("/bin/busybox", os.path.join(staging, "bin", "busybox"))
        shutil.copy(os.path.join(HERE, "init"), os.path.join(staging, "init"))
        order = []
        for module in load_order(modules_dir, MODULES):
            name = os.path.basename(module).split(".ko")[0] + ".ko"
            source = os.path.join(modules_dir, module)
            with (lzma.open(source) if module.endswith(".xz") else open(source, "rb")) as f:
                data = f.read()
            with open(os.path.join(staging, "modules", name), "wb") as out:
                out.write(data)
            order.append(name)
        with open(os.path.join(staging, "modules", "order"), "w") as f:
            f.write("\n".join(order) + "\n")
        cpio(staging, os.path.join(self.dir, "initrd.cpio"))
        shutil.rmtree(staging)


def load_order(modules_dir, wanted):
    """Module files (relative to modules_dir) to insmod, each after what it depends on."""
    deps = {}
    with open(os.path.join(modules_dir, "modules.dep")) as f:
        for line in f:
            module, _, rest = line.partition(":")
            deps[module] = rest.split()
    by_name = {os.path.basename(m).split(".ko")[0]: m for m in deps}
    with open(os.path.join(modules_dir, "modules.builtin")) as f:
        builtin = {os.path.basename(line.strip()).split(".ko")[0] for line in f}
    order = []

    def visit(module):
        if module in order:
            return
        for dep in reversed(deps[module]):  # modules.dep lists the deepest last
            visit(dep)
        order.append(module)

    for name in wanted:
        if name in builtin:
            continue
        if name not in by_name:
            raise RuntimeError(f"module {name} is not in {modules_dir} (built in?)")
        visit(by_name[name])
    return order


def cpio(directory, output):
    files = run(["sh", "-c", "find . | sort"], cwd=directory)
    with open(output, "wb") as out:
        subprocess.run(["cpio", "--quiet", "-o", "-H", "newc"], input=files.encode(), cwd=directory, stdout=out,
                       check=True)


def ext4_image(directory, output, spare_mb=64):
    """A read-only ext4 image of `directory` (mkfs.ext4 -d: no mount needed)."""
    size = int(run(["du", "-sm", "--apparent-size", directory]).split()[0])
    tmp = output + ".tmp"
    if os.path.exists(tmp):
        os.remove(tmp)
    with open(tmp, "wb") as f:
        f.truncate((size * 5 // 4 + spare_mb) * 1024 * 1024)
    run(["mkfs.ext4", "-q", "-F", "-E", "root_owner=0:0", "-d", directory, tmp])
    os.rename(tmp, output)
    return output


def rootfs_image():
    """The deployment tests' Debian 12 tree as a disk, made again when the tree is."""
    stamp = os.path.join(ROOTFS, ".complete")
    if not os.path.exists(stamp):
        raise RuntimeError(f"no Debian tree at {ROOTFS}: `make test` builds it")
    image = os.path.join(KERNELS, "rootfs.img")
    with lock:
        if not os.path.exists(image) or os.path.getmtime(image) < os.path.getmtime(stamp):
            os.makedirs(KERNELS, exist_ok=True)
            ext4_image(ROOTFS, image)
    return image


# What the guests need of the project, at the same paths under /mnt/project.
PROJECT_FILES = ["build/bin/keepalive", "build/lib", "build/test/keepalive-next.bpf.o", "Tests/integration",
                 "Tests/kernels", "docs/kernels.md", "debian/changelog", "bench/memory.py"]


def project_image(directory):
    """This build and its tests, as a disk made in `directory`."""
    staging = os.path.join(directory, "project")
    for path in PROJECT_FILES:
        source, target = os.path.join(ROOT, path), os.path.join(staging, path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.isdir(source):
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        elif path == "build/bin/keepalive":
            run(["strip", "-o", target, source])  # half the size: the guest reads it from an emulated disk
        else:
            shutil.copy2(source, target)
    image = ext4_image(staging, os.path.join(directory, "project.img"))
    shutil.rmtree(staging)
    return image


_kvm = None


def kvm_works():
    """Whether a guest runs under KVM here: /dev/kvm may be there while its guests hang
    (nested virtualisation); a kernel that prints nothing within seconds says so."""
    global _kvm
    with lock:
        if _kvm is None:
            _kvm = False
            if os.access("/dev/kvm", os.R_OK | os.W_OK):
                kernel = Kernel("5.10")
                try:
                    out = subprocess.run([QEMU, "-enable-kvm", "-cpu", "host", "-m", "256", "-nographic",
                                          "-no-reboot", "-kernel", kernel.vmlinuz, "-append",
                                          "console=ttyS0 panic=-1 init=/nonexistent"],
                                         capture_output=True, text=True, timeout=6).stdout
                except subprocess.TimeoutExpired as e:
                    out = (e.stdout or b"").decode(errors="replace")
                _kvm = "Linux version" in out
    return _kvm


class Result:
    def __init__(self, kernel, console, seconds, boots):
        self.kernel, self.console, self.seconds, self.boots = kernel, console, seconds, boots
        match = re.search(END + r" rc=([0-9]+)", console)
        self.returncode = int(match.group(1)) if match else None
        summary = re.search(r"KA-GUEST-SUMMARY (.*)", console)
        self.summary = json.loads(summary.group(1)) if summary else None

    @property
    def started(self):
        return START in self.console

    def tail(self, lines=80):
        return "\n".join(self.console.splitlines()[-lines:])


def boot(kernel, disks, args="", cpus=1, memory_mb=2048, timeout=600, attempts=3, console_log=None):
    """Boots `kernel` with the rootfs and `disks`; returns its Result. `args` go to the
    suite (pytest arguments, or a command: see run-suite). A guest that stops before its
    suite starts is booted again, at most `attempts` times in all."""
    accel = ["-enable-kvm", "-cpu", "host"] if kvm_works() else ["-accel", "tcg", "-cpu", "qemu64"]
    drives = []
    for disk in [rootfs_image()] + list(disks):
        drives += ["-drive", f"file={disk},format=raw,if=virtio,readonly=on"]
    encoded = base64.b64encode(args.encode()).decode()
    append = f"console=ttyS0 panic=-1 loglevel=4 clearcpuid=141 ka.args={encoded}"
    argv = [QEMU, *accel, "-m", str(memory_mb), "-smp", str(cpus), "-nographic", "-no-reboot", "-nic", "none",
            "-kernel", kernel.vmlinuz, "-initrd", kernel.initrd, *drives, "-append", append]
    started = time.monotonic()
    for attempt in range(1, attempts + 1):
        try:
            out = subprocess.run(argv, capture_output=True, timeout=timeout).stdout
        except subprocess.TimeoutExpired as e:
            out = e.stdout or b""
        console = out.decode(errors="replace").replace("\r", "")
        if console_log:
            with open(console_log, "a") as f:
                f.write(f"=== boot {attempt}: {' '.join(argv)}\n{console}\n")
        result = Result(kernel, console, time.monotonic() - started, attempt)
        if result.started:
            return result
    return result


def prepare(series_list):
    """Every series' kernel, fetched once (one apt update for all)."""
    apt = None
    kernels = []
    for series in series_list:
        if not os.path.exists(os.path.join(KERNELS, series, "ready")):
            apt = apt or Apt()
        kernels.append(Kernel(series, apt))
    return kernels


if __name__ == "__main__":  # make kernels: fetch and prepare every series
    for k in prepare(list(SERIES)):
        print(f"{k.series}: {k.release}")
    print(f"rootfs image: {rootfs_image()}")
