# SPDX-License-Identifier: MIT
"""The three LD_PRELOAD libraries, against real sockets read back with getsockopt."""
import json
import os
import socket
import subprocess

import pytest

from support import KERNEL_DEFAULT, LIB, PYTHON, SEED_DEFAULT, SOCKPROBE, keepalive_values, preload_env, probe, run

CONNECT = os.path.join(LIB, "libkeepalive.so")
LISTEN = os.path.join(LIB, "libkeepalive_listen.so")
SOCKET = os.path.join(LIB, "libkeepalive_socket.so")
env_with = preload_env


@pytest.mark.parametrize("family", ["4", "6", "mapped"])
def test_connect_library_sets_connected_sockets_only(family):
    out = probe("pair", "--family", family, env=env_with(CONNECT))
    assert keepalive_values(out["connected"]) == SEED_DEFAULT
    assert keepalive_values(out["accepted"]) == KERNEL_DEFAULT
    assert keepalive_values(out["listening"]) == KERNEL_DEFAULT


@pytest.mark.parametrize("family", ["4", "6"])
def test_listen_library_sets_listening_and_accepted_sockets(family):
    out = probe("pair", "--family", family, env=env_with(LISTEN))
    assert keepalive_values(out["listening"]) == SEED_DEFAULT
    assert keepalive_values(out["accepted"]) == SEED_DEFAULT
    assert keepalive_values(out["connected"]) == KERNEL_DEFAULT


@pytest.mark.parametrize("family", ["4", "6"])
def test_socket_library_sets_every_tcp_socket(family):
    out = probe("pair", "--family", family, env=env_with(SOCKET))
    for side in ("listening", "accepted", "connected"):
        assert keepalive_values(out[side]) == SEED_DEFAULT, side


def test_both_libraries_together_like_the_seed():
    out = probe("pair", env=env_with(f"{CONNECT}:{LISTEN}"))
    for side in ("listening", "accepted", "connected"):
        assert keepalive_values(out[side]) == SEED_DEFAULT, side


def test_custom_values_and_derived_user_timeout():
    out = probe("pair", env=env_with(SOCKET, TCP_KEEPIDLE=5, TCP_KEEPINTVL=2, TCP_KEEPCNT=3))
    assert keepalive_values(out["connected"]) == {
        "keepalive": 1, "keepidle": 5, "keepintvl": 2, "keepcnt": 3, "user_timeout": (5 + 2 * 3) * 1000}


def test_explicit_user_timeout():
    out = probe("pair", env=env_with(CONNECT, TCP_KEEPIDLE=2, TCP_KEEPINTVL=3, TCP_KEEPCNT=3, TCP_USER_TIMEOUT=9000))
    assert out["connected"]["user_timeout"] == 9000


def test_user_timeout_zero_leaves_the_system_default():
    out = probe("pair", env=env_with(CONNECT, TCP_USER_TIMEOUT=0))
    assert out["connected"]["user_timeout"] == 0
    assert out["connected"]["keepalive"] == 1


def test_zero_leaves_each_system_default():
    out = probe("pair", env=env_with(CONNECT, TCP_KEEPIDLE=0, TCP_KEEPINTVL=0, TCP_KEEPCNT=0))
    c = out["connected"]
    assert (c["keepalive"], c["keepidle"], c["keepintvl"], c["keepcnt"]) == (1, 7200, 75, 9)
    assert c["user_timeout"] == (7200 + 75 * 9) * 1000  # derived from the kernel's values in force


def test_derived_user_timeout_is_capped_not_overflowed():
    out = probe("pair", env=env_with(CONNECT, TCP_KEEPIDLE=32767, TCP_KEEPINTVL=32767, TCP_KEEPCNT=127))
    assert out["connected"]["user_timeout"] == 2**31 - 1


def test_syncnt_on_connect_and_socket_only():
    env = dict(TCP_SYNCNT=3, TCP_DEFER_ACCEPT=5)
    connect = probe("pair", env=env_with(CONNECT, **env))
    listen = probe("pair", env=env_with(LISTEN, **env))
    sock = probe("pair", env=env_with(SOCKET, **env))
    assert connect["connected"]["syncnt"] == 3 and sock["connected"]["syncnt"] == 3
    assert listen["listening"]["syncnt"] != 3
    # TCP_DEFER_ACCEPT: listen and socket only (the kernel rounds seconds to retransmissions).
    assert listen["listening"]["defer_accept"] > 0 and sock["listening"]["defer_accept"] > 0
    assert connect["listening"]["defer_accept"] == 0


def test_maxseg_and_window_clamp():
    out = probe("pair", env=env_with(CONNECT, TCP_MAXSEG=1000, TCP_WINDOW_CLAMP=40000))
    assert 0 < out["connected"]["maxseg"] <= 1000  # loopback's MSS would be ~65483
    assert out["connected"]["window_clamp"] == 40000


def test_non_tcp_sockets_untouched():
    for lib in (CONNECT, LISTEN, SOCKET, f"{CONNECT}:{LISTEN}:{SOCKET}"):
        out = probe("other", env=env_with(lib))
        for name, options in out.items():
            assert options["keepalive"] == 0, (lib, name)


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize("lib", [CONNECT, SOCKET])
def test_refused_connect_keeps_errno(lib):
    port = closed_port()
    baseline = probe("connect", "127.0.0.1", str(port), env=env_with(None))
    out = probe("connect", "127.0.0.1", str(port), env=env_with(lib))
    assert baseline["errno_name"] == "ECONNREFUSED"
    assert out["errno_name"] == "ECONNREFUSED"
    assert out["options"]["keepalive"] == 1


@pytest.mark.parametrize("lib", [CONNECT, SOCKET])
def test_nonblocking_connect_keeps_einprogress(lib):
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        port = str(listener.getsockname()[1])
        baseline = probe("connect", "127.0.0.1", port, "--nonblock", env=env_with(None))
        out = probe("connect", "127.0.0.1", port, "--nonblock", env=env_with(lib))
    finally:
        listener.close()
    assert out["errno_name"] == baseline["errno_name"]
    assert out["errno_name"] in ("EINPROGRESS", "0")
    assert out["options"]["keepalive"] == 1


BAD_VALUES = ["", "abc", "15x", " 20", "+20", "99999999999999999999", "-5", "32768", "0x10"]


@pytest.mark.parametrize("value", BAD_VALUES)
def test_bad_value_falls_back_to_default_and_warns_on_stderr(value):
    env = env_with(CONNECT, TCP_KEEPIDLE=value, TCP_KEEPCNT=3, LIBKEEPALIVE_DEBUG=1)
    result = run([PYTHON, SOCKPROBE, "pair"], env=env)
    out = json.loads(result.stdout)  # stdout is the program's own: nothing of ours in it
    assert out["connected"]["keepidle"] == 15
    assert out["connected"]["keepcnt"] == 3
    # Derived from the values in force (15 + 15*3), not from the rejected one.
    assert out["connected"]["user_timeout"] == (15 + 15 * 3) * 1000
    warnings = [l for l in result.stderr.splitlines() if "TCP_KEEPIDLE" in l]
    assert len(warnings) == 1 and f"'{value}'" in warnings[0], result.stderr


def test_bad_values_of_every_option_are_rejected():
    env = env_with(SOCKET, TCP_KEEPINTVL="0", TCP_KEEPCNT="128", TCP_USER_TIMEOUT="-2",
                   TCP_SYNCNT="x", TCP_MAXSEG="50", TCP_WINDOW_CLAMP="1e3", TCP_DEFER_ACCEPT="-1")
    out = probe("pair", env=env)
    c = out["connected"]
    assert c["keepintvl"] == 75          # 0: the system default, a valid choice
    assert c["keepcnt"] == 9             # 128 rejected: the seed's default (also 9)
    assert c["user_timeout"] == (15 + 75 * 9) * 1000  # -2 rejected: derived, from the values in force
    assert c["maxseg"] > 50 and c["window_clamp"] != 1000
    assert out["listening"]["defer_accept"] == 0


def test_quiet_without_debug():
    result = run([PYTHON, SOCKPROBE, "pair"], env=env_with(CONNECT, TCP_KEEPIDLE="abc"))
    assert result.stderr == ""


def test_many_threads_connecting_at_once():
    out = probe("threads", "32", "20", env=env_with(CONNECT, TCP_KEEPIDLE=7, TCP_KEEPCNT=4))
    assert len(out["connected"]) == 640
    for options in out["connected"]:
        assert keepalive_values(options) == {
            "keepalive": 1, "keepidle": 7, "keepintvl": 15, "keepcnt": 4, "user_timeout": (7 + 60) * 1000}


@pytest.mark.parametrize("lib,symbol", [(CONNECT, "connect"), (LISTEN, "listen"), (SOCKET, "socket")])
def test_libraries_need_only_libc_and_export_only_their_wrapper(lib, symbol):
    dynamic = run(["readelf", "-d", lib]).stdout
    needed = [l.split("[")[1].rstrip("]") for l in dynamic.splitlines() if "(NEEDED)" in l]
    assert needed == ["libc.so.6"]
    exported = run(["nm", "-D", "--defined-only", "--just-symbols", lib]).stdout.split()
    assert exported == [symbol]


def test_a_real_program_works_unchanged():
    """A program that speaks on stdout (here: a tiny echo over TCP) is unaffected in output."""
    server = subprocess.Popen([PYTHON, "-c", (
        "import socket,sys\n"
        "s=socket.create_server(('127.0.0.1',0));print(s.getsockname()[1],flush=True)\n"
        "c,_=s.accept();c.sendall(c.recv(100));c.close()")],
        stdout=subprocess.PIPE, text=True, env=env_with(LISTEN, LIBKEEPALIVE_DEBUG=1))
    try:
        port = server.stdout.readline().strip()
        client = run([PYTHON, "-c", (
            "import socket,sys\n"
            f"c=socket.create_connection(('127.0.0.1',{port}));c.sendall(b'ping');print(c.recv(100).decode())")],
            env=env_with(CONNECT, LIBKEEPALIVE_DEBUG=1))
        assert client.stdout == "ping\n"
    finally:
        server.wait(timeout=10)


BAD_ADDRESS_CONNECT = """
import ctypes, errno, socket
libc = ctypes.CDLL(None, use_errno=True)
s = socket.socket()
result = libc.connect(s.fileno(), ctypes.c_void_p(8), 16)  # an address the kernel cannot read
print(result, errno.errorcode[ctypes.get_errno()])
"""


@pytest.mark.parametrize("lib", [CONNECT, SOCKET, f"{CONNECT}:{LISTEN}"])
def test_a_bad_address_is_efault_as_without_the_library(lib):
    baseline = run([PYTHON, "-c", BAD_ADDRESS_CONNECT], env=env_with(None))
    out = run([PYTHON, "-c", BAD_ADDRESS_CONNECT], env=env_with(lib), check=False)
    assert baseline.stdout == "-1 EFAULT\n"
    assert out.returncode == 0 and out.stdout == baseline.stdout, out.stderr
