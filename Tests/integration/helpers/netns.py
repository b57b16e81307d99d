# SPDX-License-Identifier: MIT
"""What the helpers that run in a test's network namespace share."""
import ctypes
import os

CLONE_NEWNET = 0x40000000


def enter_netns(name):
    """Moves this process into the namespace `ip netns` named `name` (setns(2))."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
    finally:
        os.close(fd)
