#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A real client and server whose sockets' options are read back from the kernel.

Prints one JSON object on stdout. Tests start it in a cgroup when a BPF
policy is to cover it.

    sockprobe.py pair [--family 4|6|mapped]
        listen, connect, accept; options of the listening, connected and accepted sockets
    sockprobe.py across CGROUP...
        a pair in each cgroup directory in turn, moving itself there first:
        {cgroup: pair}, one process for many cgroups
    sockprobe.py connect HOST PORT [--nonblock]
        result of one connect: {"errno": N, "options": {...}}
    sockprobe.py other
        options of a UDP socket and of a connected UNIX stream socket
    sockprobe.py threads N PER_THREAD
        N threads connecting at once; every connected socket's options
    sockprobe.py loop SECONDS
        connect and accept over and over for SECONDS; how many connected and
        accepted sockets had each keepidle ({"connected": {"33": 812}, ...})
    sockprobe.py serve PORT...
        listens on each port (IPv4 and IPv6), prints "listening", accepts one
        connection on each, prints {port: {"listening": ..., "accepted": ...}}
        and holds the sockets until its stdin closes
    sockprobe.py appset NAME=VALUE[@LENGTH]...
        connect, then set options itself as programs do (keepalive, keepidle,
        keepintvl, keepcnt, user_timeout), in order; each call's result
        (0 or errno) and the connected socket's options afterwards. With
        @LENGTH the value is passed in a buffer of that many bytes.
"""
import argparse
import errno
import json
import os
import socket
import sys
import tempfile
import threading

TCP_OPTIONS = {
    "keepidle": socket.TCP_KEEPIDLE,
    "keepintvl": socket.TCP_KEEPINTVL,
    "keepcnt": socket.TCP_KEEPCNT,
    "user_timeout": 18,  # TCP_USER_TIMEOUT
    "syncnt": socket.TCP_SYNCNT,
    "maxseg": socket.TCP_MAXSEG,
    "window_clamp": socket.TCP_WINDOW_CLAMP,
    "defer_accept": socket.TCP_DEFER_ACCEPT,
    "notsent_lowat": 25,  # TCP_NOTSENT_LOWAT, set by the tests' foreign BPF program
}


def options(sock):
    result = {"keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)}
    if sock.type == socket.SOCK_STREAM and sock.family in (socket.AF_INET, socket.AF_INET6):
        for name, opt in TCP_OPTIONS.items():
            result[name] = sock.getsockopt(socket.IPPROTO_TCP, opt)
    return result


def pair(family):
    if family == "4":
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        target = listener.getsockname()
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    else:
        listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        if family == "mapped":
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            listener.bind(("::", 0))
            target = ("::ffff:127.0.0.1", listener.getsockname()[1])
        else:
            listener.bind(("::1", 0))
            target = listener.getsockname()[:2]
        client = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    listener.listen(8)
    client.connect(target)
    accepted, _ = listener.accept()
    return {"listening": options(listener), "connected": options(client), "accepted": options(accepted)}


def across(cgroups):
    results = {}
    for cgroup in cgroups:
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))  # a socket belongs to its creator's cgroup then
        results[cgroup] = pair("4")
    return results


def connect(host, port, nonblock):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM | (socket.SOCK_NONBLOCK if nonblock else 0))
    code = sock.connect_ex((host, port))
    return {"errno": code, "errno_name": errno.errorcode.get(code, "0"), "options": options(sock)}


def serve(ports):
    listeners = {}
    for port in ports:
        listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("::", port))
        listener.listen(8)
        listeners[port] = listener
    print("listening", flush=True)
    held, seen = [], {}
    for port, listener in listeners.items():
        accepted, _ = listener.accept()
        held.append(accepted)
        seen[str(port)] = {"listening": options(listener), "accepted": options(accepted)}
    print(json.dumps(seen), flush=True)
    sys.stdin.read()
    return None


def other():
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.connect(("127.0.0.1", 9))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "s")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        server.listen(1)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(path)
        accepted, _ = server.accept()
        return {"udp": options(udp), "unix_client": options(client),
                "unix_listener": options(server), "unix_accepted": options(accepted)}


def threads(count, per_thread):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    results, lock, start = [], threading.Lock(), threading.Barrier(count)

    def worker():
        start.wait()
        for _ in range(per_thread):
            with socket.create_connection(listener.getsockname()) as s:
                o = options(s)
            with lock:
                results.append(o)

    def acceptor():
        for _ in range(count * per_thread):
            listener.accept()[0].close()

    acc = threading.Thread(target=acceptor)
    acc.start()
    workers = [threading.Thread(target=worker) for _ in range(count)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    acc.join()
    return {"connected": results}


SETTABLE = {
    "keepalive": (socket.SOL_SOCKET, socket.SO_KEEPALIVE),
    "keepidle": (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
    "keepintvl": (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
    "keepcnt": (socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
    "user_timeout": (socket.IPPROTO_TCP, 18),
}


def appset(assignments):
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    calls = []
    for assignment in assignments:
        name, value = assignment.split("=")
        value, _, length = value.partition("@")
        level, opt = SETTABLE[name]
        argument = int(value)
        if length:  # an int, then padding: the kernel reads the first 4 bytes
            argument = int(value).to_bytes(4, sys.byteorder, signed=True) + bytes(int(length) - 4)
        try:
            client.setsockopt(level, opt, argument)
            calls.append([name, int(value), 0])
        except OSError as e:
            calls.append([name, int(value), e.errno])
    return {"calls": calls, "connected": options(client)}


def loop(seconds):
    import time
    listener = socket.create_server(("127.0.0.1", 0))
    seen = {"connected": {}, "accepted": {}}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        for side, sock in (("connected", client), ("accepted", accepted)):
            idle = str(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
                       if sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) else 0)
            seen[side][idle] = seen[side].get(idle, 0) + 1
        client.close()
        accepted.close()
    return seen


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("pair")
    p.add_argument("--family", choices=["4", "6", "mapped"], default="4")
    c = sub.add_parser("connect")
    c.add_argument("host")
    c.add_argument("port", type=int)
    c.add_argument("--nonblock", action="store_true")
    sub.add_parser("other")
    t = sub.add_parser("threads")
    t.add_argument("count", type=int)
    t.add_argument("per_thread", type=int)
    ac = sub.add_parser("across")
    ac.add_argument("cgroups", nargs="+")
    lp = sub.add_parser("loop")
    lp.add_argument("seconds", type=float)
    sv = sub.add_parser("serve")
    sv.add_argument("ports", nargs="+", type=int)
    a = sub.add_parser("appset")
    a.add_argument("assignments", nargs="+")
    args = parser.parse_args()
    if args.mode == "pair":
        out = pair(args.family)
    elif args.mode == "connect":
        out = connect(args.host, args.port, args.nonblock)
    elif args.mode == "other":
        out = other()
    elif args.mode == "appset":
        out = appset(args.assignments)
    elif args.mode == "serve":
        serve(args.ports)
        return
    elif args.mode == "across":
        out = across(args.cgroups)
    elif args.mode == "loop":
        out = loop(args.seconds)
    else:
        out = threads(args.count, args.per_thread)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
