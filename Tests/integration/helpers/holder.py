# SPDX-License-Identifier: MIT
"""Holds a TCP connection open, as a long-lived client and server would.

    holder.py [own]

Listens on loopback, connects to itself and accepts; with `own` the client
turns keepalive on itself first (SO_KEEPALIVE, TCP_KEEPIDLE 77), as programs
with their own settings do. Prints "held" once all is open, then sleeps. Its
TCP sockets: the client, then the accepted one (the listener is closed).
"""
import socket
import sys
import time

server = socket.create_server(("127.0.0.1", 0))
client = socket.create_connection(server.getsockname())
if sys.argv[1:] == ["own"]:
    client.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 77)
accepted, _ = server.accept()
server.close()
print("held", flush=True)
while True:
    time.sleep(3600)
