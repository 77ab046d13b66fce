#!/usr/bin/env python3
"""Hold N idle, logged-in PostgreSQL client sessions open against one endpoint.

Part of the proxy benchmark (bench/proxy.sh): it measures what a proxy's memory
(RSS) costs per idle client. psycopg is not installed on the bench machine, so
this speaks the few messages of the v3 startup handshake over raw sockets
(StartupMessage, then read until ReadyForQuery); only trust authentication is
supported, which is what the benchmark configures.

Usage: idle_clients.py HOST PORT USER DATABASE COUNT READY_FILE RELEASE_FILE

Once all COUNT sessions are logged in (each has seen ReadyForQuery) it writes
the count to READY_FILE, then waits until RELEASE_FILE exists (or 600 s pass),
sends Terminate on every socket and exits. Exit status 1 if any session failed.
"""

import os
import socket
import struct
import sys
import time

PROTOCOL_V3 = 196608


def startup_message(user: str, database: str) -> bytes:
    body = struct.pack("!I", PROTOCOL_V3)
    for key, value in (("user", user), ("database", database),
                       ("application_name", "idle_clients")):
        body += key.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def read_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("server closed the connection during startup")
        buf += chunk
    return buf


def login(host: str, port: int, user: str, database: str) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=30)
    sock.sendall(startup_message(user, database))
    while True:
        header = read_exact(sock, 5)
        kind, length = header[:1], struct.unpack("!I", header[1:])[0]
        body = read_exact(sock, length - 4)
        if kind == b"R":
            (code,) = struct.unpack("!I", body[:4])
            if code != 0:
                raise ConnectionError(f"authentication method {code} requested; only trust is supported")
        elif kind == b"E":
            raise ConnectionError("error during startup: " + body.decode(errors="replace"))
        elif kind == b"Z":
            return sock
        # 'S' ParameterStatus, 'K' BackendKeyData, 'N' notice: ignore.


def main() -> int:
    host, port, user, database, count, ready_file, release_file = sys.argv[1:8]
    port, count = int(port), int(count)
    socks = []
    started = time.monotonic()
    try:
        for _ in range(count):
            socks.append(login(host, port, user, database))
    except (OSError, ConnectionError) as exc:
        print(f"idle_clients: session {len(socks) + 1} failed: {exc}", file=sys.stderr)
        for s in socks:
            s.close()
        return 1
    elapsed = time.monotonic() - started
    with open(ready_file, "w") as f:
        f.write(f"{len(socks)} {elapsed:.2f}\n")
    deadline = time.monotonic() + 600
    while not os.path.exists(release_file) and time.monotonic() < deadline:
        time.sleep(0.2)
    # A session that the peer closed meanwhile would fail here; count them.
    dead = 0
    for s in socks:
        try:
            s.sendall(b"X\0\0\0\4")
        except OSError:
            dead += 1
        s.close()
    if dead:
        print(f"idle_clients: {dead} sessions were closed by the peer while idle", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
