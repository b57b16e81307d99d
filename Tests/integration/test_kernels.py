# SPDX-License-Identifier: MIT
"""The kernels a fleet runs: Debian's own, booted under QEMU, each running
test_kernel_features.py with this build (Tests/kernels/guest.py boots them:
bullseye's 5.10, bookworm's 6.1, bookworm-backports' 6.12). Each must pass
whole, skip nothing, and leave nothing behind: no cgroup, pin or network
namespace of a test.
"""
import os
import re
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import require_privilege, require_tool
from support import BUILD

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "kernels"))
import guest  # noqa: E402

SUITE = "Tests/integration/test_kernel_features.py"


@pytest.fixture(scope="module")
def booted():
    """Every series booted once, all at once (one vCPU each: three guests on a two-core
    machine finish sooner than two rounds, as each waits on timers and its disk part of
    the time)."""
    require_privilege()
    require_tool("qemu-system-x86_64", "mkfs.ext4", "cpio", "depmod")
    kernels = guest.prepare(list(guest.SERIES))
    os.makedirs(guest.KERNELS, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=guest.KERNELS) as directory:
        image = guest.project_image(directory)

        def boot(kernel):
            log = os.path.join(BUILD, "kernels", f"console-{kernel.series}.log")
            if os.path.exists(log):
                os.remove(log)
            return guest.boot(kernel, [image], args=SUITE, console_log=log)

        with ThreadPoolExecutor(len(kernels)) as pool:
            return dict(zip(guest.SERIES, pool.map(boot, kernels)))


@pytest.mark.parametrize("series", list(guest.SERIES))
def test_the_kernel_suite_passes(booted, series):
    result = booted[series]
    assert result.started, f"Linux {series} never reached its suite in {result.boots} boots:\n{result.tail()}"
    summary = re.findall(r"^=* ?(\d+ (?:passed|failed).*?) in [\d.]+s", result.console, re.M)
    print(f"Linux {result.kernel.release}: {summary[-1] if summary else '?'} ({result.seconds:.0f} s, "
          f"{result.boots} boot{'s' if result.boots > 1 else ''})")
    assert result.returncode == 0 and summary and "skipped" not in summary[-1], result.tail(120)
    left = re.search(r"KA-GUEST-LEFT(.*)", result.console).group(1).split()
    assert left == [], f"Linux {series}: left behind: {left}"
