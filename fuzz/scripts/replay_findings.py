#!/usr/bin/env python3
"""Replays the session fuzz target's findings against a real proxy and PostgreSQL 15.

Starts a throw-away PostgreSQL 15 cluster (user postgres, loopback, free port)
and `tandem proxy` in transaction mode in front of it, then checks over raw
sockets that a client sees through the proxy exactly what PostgreSQL itself
answers, and that pgbench runs in every query mode. Stops everything it started.

  python3 fuzz/scripts/replay_findings.py /path/to/tandem
"""
import os, pwd, shutil, socket, struct, subprocess, sys, tempfile, time

BIN = "/usr/lib/postgresql/15/bin"


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def pg(*c):
    subprocess.run(["runuser", "-u", "postgres", "--", *c], check=True, stdout=subprocess.DEVNULL)


def msg(t, b=b""):
    return t + struct.pack("!I", len(b) + 4) + b


P = lambda name, q: msg(b"P", name + b"\0" + q + b"\0\0\0")
B = lambda portal, stmt: msg(b"B", portal + b"\0" + stmt + b"\0\0\0\0\0\0\0")
E = lambda portal: msg(b"E", portal + b"\0\0\0\0\0")
D = lambda kind, name: msg(b"D", kind + name + b"\0")
Q = lambda q: msg(b"Q", q + b"\0")
S, H = msg(b"S"), msg(b"H")


class Client:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        body = struct.pack("!I", 196608) + b"user\0postgres\0database\0postgres\0\0"
        self.s.sendall(struct.pack("!I", len(body) + 4) + body)
        self.buf = b""
        self.read_until_z()

    def read_until_z(self, timeout=3.0):
        """Reads messages up to and including a ReadyForQuery; returns tags (Z with its status)."""
        self.s.settimeout(timeout)
        out = []
        while True:
            while len(self.buf) >= 5:
                l = struct.unpack("!I", self.buf[1:5])[0]
                if len(self.buf) < 1 + l:
                    break
                t, body, self.buf = chr(self.buf[0]), self.buf[5:1 + l], self.buf[1 + l:]
                out.append(t + (chr(body[0]) if t == "Z" else ""))
                if t == "Z":
                    return "".join(out)
            try:
                d = self.s.recv(65536)
            except socket.timeout:
                return "".join(out) + "<timeout>"
            if not d:
                return "".join(out) + "<eof>"
            self.buf += d

    def read_quiet(self, secs=0.5):
        """Reads whatever arrives within `secs` (no ReadyForQuery expected)."""
        self.s.settimeout(secs)
        try:
            self.buf += self.s.recv(65536)
        except socket.timeout:
            pass
        out, rest = [], self.buf
        while len(rest) >= 5 and len(rest) >= 1 + struct.unpack("!I", rest[1:5])[0]:
            l = struct.unpack("!I", rest[1:5])[0]
            out.append(chr(rest[0])); rest = rest[1 + l:]
        self.buf = rest
        return "".join(out)


def scenario(port, steps):
    c = Client(port)
    seen = []
    for payload, wait_z in steps:
        c.s.sendall(payload)
        seen.append(c.read_until_z() if wait_z else c.read_quiet())
    c.s.close()
    return seen


SCENARIOS = {
    # Bind/Execute of BEGIN answered before the client's Sync: the Sync must reach
    # the server (status T), and the connection must not go back to the pool.
    "execute-begin-then-sync": [(P(b"", b"begin") + B(b"", b"") + E(b"") + H, False), (S, True),
                                (Q(b"select txid_current_if_assigned() is null"), True), (Q(b"rollback"), True)],
    # A Query after a failed Parse is skipped until Sync; afterwards the session works.
    "query-after-error": [(P(b"", b"selec 1") + Q(b"select 1") + S, True), (Q(b"select 2"), True),
                          (P(b"s1", b"select 1") + B(b"", b"s1") + E(b"") + S, True)],
    # Execute and Sync sent after the error of a Describe arrived.
    "late-messages-after-error": [(D(b"P", b"nope") + H, False), (E(b"") + S, True), (Q(b"select 3"), True)],
}


def main():
    tandem = sys.argv[1]
    work = tempfile.mkdtemp(prefix="tandem-replay-")
    pw = pwd.getpwnam("postgres"); os.chown(work, pw.pw_uid, pw.pw_gid)
    data, port, pport = work + "/d", free_port(), free_port()
    pg(f"{BIN}/initdb", "-D", data, "-A", "trust", "-U", "postgres")
    pg(f"{BIN}/pg_ctl", "-D", data, "-w", "-l", work + "/log", "-o",
       f"-p {port} -k {work} -c listen_addresses=127.0.0.1", "start")
    proxy = None
    failures = 0
    try:
        proxy = subprocess.Popen([tandem, "proxy", "--listen", f"127.0.0.1:{pport}", "--primary", f"127.0.0.1:{port}",
                                  "--pool-size", os.environ.get("POOL_SIZE", "4"), "--no-read-split"],
                                 stdout=open(work + "/proxy.log", "wb"), stderr=subprocess.STDOUT)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", pport)).close(); break
            except OSError:
                time.sleep(0.1)
        for name, steps in SCENARIOS.items():
            direct, proxied = scenario(port, steps), scenario(pport, steps)
            ok = direct == proxied
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {name}: postgres {direct} proxy {proxied}")
        env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(pport), PGUSER="postgres", PGDATABASE="postgres")
        subprocess.run(["pgbench", "-i", "-q", "-s", "1"], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for mode in ("simple", "extended", "prepared"):
            r = subprocess.run(["pgbench", "-n", "-M", mode, "-c", os.environ.get("CLIENTS", "4"), "-t", "200"], env=env, capture_output=True, text=True)
            ok = r.returncode == 0 and "failed transactions: 0" in r.stdout
            failures += not ok
            line = [l for l in r.stdout.splitlines() if l.startswith("number of transactions actually processed")]
            print(f"{'ok  ' if ok else 'FAIL'} pgbench -M {mode}: {line[0] if line else ''} {r.stderr.strip()[-300:]}")
    finally:
        if proxy:
            proxy.terminate(); proxy.wait(10)
        pg(f"{BIN}/pg_ctl", "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(work, ignore_errors=True)
    print(f"{failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
