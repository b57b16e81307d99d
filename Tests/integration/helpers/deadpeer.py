#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""One end of TCP connections whose peer vanishes, for the dead-peer tests.

    deadpeer.py [--netns NAME] ROLE connect|listen HOST PORT [--send] [--count N]

Before anything else the process enters the network namespace with setns(2)
(tests start it in a cgroup when a BPF policy is to cover it). Then it
connects or listens and accepts, according to `connect|listen`.

ROLE `peer`: answers each connection's "ping" with "pong", then holds them
open, silent, until killed.

ROLE `waiter`: opens --count connections (1 by default; more only with
`connect`); on each sends "ping" and reads "pong" (the last bytes it will ever
receive), prints "ready", and waits for a line on stdin: the test cuts the
path in between. With --send it then writes data that can never be
acknowledged. It blocks in recv until the kernel gives up on every
connection, and prints one JSON line: the first one's error and the seconds
since the last byte received (or, with --send, since the send), which is
what the kernel's timers count from; with several, how many ended with which
error. It then holds the dead sockets open until killed, as a program that
has not noticed yet would.
"""
import argparse
import errno
import json
import socket
import sys
import threading
import time

from netns import enter_netns  # helpers/netns.py


def connect(host, port):
    for _ in range(100):  # the peer may still be starting
        try:
            conn = socket.create_connection((host, port), timeout=5)
            conn.settimeout(None)
            return conn
        except ConnectionRefusedError:
            time.sleep(0.05)
    raise SystemExit("peer never listened")


def listener(host, port):
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((host, port))
    server.listen(128)
    print("listening", flush=True)
    return server


def peer(conn):
    assert conn.recv(4) == b"ping"
    conn.sendall(b"pong")


def wait_for_error(conn, start, results, index):
    try:
        data = conn.recv(1)
        result = {"errno": 0, "error": "EOF" if not data else "data"}
    except OSError as e:
        result = {"errno": e.errno, "error": errno.errorcode.get(e.errno, str(e.errno))}
    result["elapsed"] = round(time.monotonic() - start, 3)
    results[index] = result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--netns")
    parser.add_argument("role", choices=["peer", "waiter"])
    parser.add_argument("how", choices=["connect", "listen"])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--send", action="store_true")
    parser.add_argument("--count", type=int, default=1)
    args = parser.parse_args()
    if args.netns:
        enter_netns(args.netns)

    held = []
    if args.role == "peer":
        if args.how == "connect":
            held.append(connect(args.host, args.port))
            peer(held[-1])
        else:
            server = listener(args.host, args.port)
            while True:
                held.append(server.accept()[0])
                peer(held[-1])
        while True:
            time.sleep(3600)

    if args.how == "connect":
        conns = [connect(args.host, args.port) for _ in range(args.count)]
    else:
        conns = [listener(args.host, args.port).accept()[0]]
    for conn in conns:
        conn.sendall(b"ping")
        assert conn.recv(4) == b"pong"
    last_received = time.monotonic()
    print("ready", flush=True)
    sys.stdin.readline()
    start = last_received
    if args.send:
        for conn in conns:
            conn.sendall(b"x" * 1000)
        start = time.monotonic()
    results = [None] * len(conns)
    threads = [threading.Thread(target=wait_for_error, args=(conn, start, results, i)) for i, conn in enumerate(conns)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    summary = dict(results[0])
    if len(results) > 1:
        summary["errors"] = {r["error"]: sum(1 for x in results if x["error"] == r["error"]) for r in results}
    print(json.dumps(summary), flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
