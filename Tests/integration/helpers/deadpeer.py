#!/usr/bin/env python3
"""One end of a TCP connection whose peer vanishes, for the dead-peer tests.

    deadpeer.py [--netns NAME] ROLE connect|listen HOST PORT [--send]

Before anything else the process enters the network namespace with setns(2)
(tests start it in a cgroup when a BPF policy is to cover it). Then it
connects or listens and accepts, according to `connect|listen`.

ROLE `peer`: answers one "ping" with "pong", then holds the connection open,
silent, until killed.

ROLE `waiter`: sends "ping", reads "pong" (the last byte it will ever receive),
prints "ready", and waits for a line on stdin: the test cuts the path in
between. With --send it then writes data that can never be acknowledged. It
blocks in recv until the kernel gives up, and prints one JSON line: the error
and the seconds since the last byte received (or, with --send, since the send),
which is what the kernel's timers count from. It then holds the dead socket
open until killed, as a program that has not noticed yet would.
"""
import argparse
import ctypes
import errno
import json
import os
import socket
import sys
import time

CLONE_NEWNET = 0x40000000


def enter_netns(name):
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
    finally:
        os.close(fd)


def open_connection(how, host, port):
    if how == "connect":
        for _ in range(100):  # the peer may still be starting
            try:
                return socket.create_connection((host, port), timeout=5)
            except ConnectionRefusedError:
                time.sleep(0.05)
        raise SystemExit("peer never listened")
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(1)
    print("listening", flush=True)
    return listener.accept()[0]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--netns")
    parser.add_argument("role", choices=["peer", "waiter"])
    parser.add_argument("how", choices=["connect", "listen"])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--send", action="store_true")
    args = parser.parse_args()
    if args.netns:
        enter_netns(args.netns)

    conn = open_connection(args.how, args.host, args.port)
    conn.settimeout(None)
    if args.role == "peer":
        assert conn.recv(4) == b"ping"
        conn.sendall(b"pong")
        while True:
            time.sleep(3600)

    conn.sendall(b"ping")
    assert conn.recv(4) == b"pong"
    last_received = time.monotonic()
    print("ready", flush=True)
    sys.stdin.readline()
    start = last_received
    if args.send:
        conn.sendall(b"x" * 1000)
        start = time.monotonic()
    try:
        data = conn.recv(1)
        result = {"errno": 0, "error": "EOF" if not data else "data"}
    except OSError as e:
        result = {"errno": e.errno, "error": errno.errorcode.get(e.errno, str(e.errno))}
    result["elapsed"] = round(time.monotonic() - start, 3)
    print(json.dumps(result), flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
