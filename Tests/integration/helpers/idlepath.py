#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Both ends of TCP connections that idle across a middlebox, for the path tests.

    idlepath.py --netns NAME echo HOST PORT
    idlepath.py --netns NAME client HOST PORT

Before anything else the process enters the network namespace with setns(2)
(tests start the client in a cgroup when a BPF policy is to cover it).

`echo` listens and answers every line with the same line, on every
connection, until killed; it prints "listening" first. Its connections
linger 0: killed, it leaves no socket behind (a reset, if anything gets out).

`client` connects, prints "connected", then reads commands on stdin, one per
line, and answers each with one JSON line on stdout:

    ping                 sends a line, waits for it back: {"ok": true} or
                         {"ok": false, "error": "ECONNRESET"} ...
    wait                 blocks in recv until the connection ends (keepalive
                         or a reset): {"error": "ETIMEDOUT", "after": seconds}
    options              the socket's options: {"keepalive": 0/1, "keepidle": ...}
"""
import argparse
import errno
import json
import socket
import struct
import sys
import threading
import time

from netns import enter_netns  # helpers/netns.py


def echo(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = socket.socket(family)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((host, port))
    server.listen(16)
    print("listening", flush=True)

    def serve(conn):
        with conn:
            for line in conn.makefile("rb"):
                conn.sendall(line)

    while True:
        conn, _ = server.accept()
        # Killed, it leaves nothing behind to retransmit a FIN: its end goes at once (a reboot).
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def error_name(exc):
    return errno.errorcode.get(exc.errno, str(exc.errno)) if isinstance(exc, OSError) and exc.errno else type(exc).__name__


def client(host, port):
    conn = socket.create_connection((host, port), timeout=10)
    conn.settimeout(None)
    print("connected", flush=True)
    for command in sys.stdin:
        command = command.strip()
        if command == "ping":
            try:
                conn.sendall(b"ping\n")
                conn.settimeout(30)
                reply = conn.recv(16)
                conn.settimeout(None)
                answer = {"ok": reply == b"ping\n"} if reply else {"ok": False, "error": "EOF"}
            except OSError as exc:
                answer = {"ok": False, "error": error_name(exc)}
        elif command == "wait":
            start = time.monotonic()
            try:
                data = conn.recv(16)
                answer = {"error": None, "data": data.decode()}
            except OSError as exc:
                answer = {"error": error_name(exc)}
            answer["after"] = round(time.monotonic() - start, 3)
        elif command == "options":
            get = conn.getsockopt
            answer = {
                "keepalive": get(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                "keepidle": get(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                "keepintvl": get(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                "keepcnt": get(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                "user_timeout": get(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
            }
        else:
            answer = {"unknown": command}
        print(json.dumps(answer), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--netns")
    parser.add_argument("role", choices=["echo", "client"])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    args = parser.parse_args()
    if args.netns:
        enter_netns(args.netns)
    (echo if args.role == "echo" else client)(args.host, args.port)


if __name__ == "__main__":
    main()
