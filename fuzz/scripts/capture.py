#!/usr/bin/env python3
"""Captures real PostgreSQL 15 protocol traffic as fuzz seeds.

Starts a throw-away PostgreSQL 15 cluster (as the `postgres` OS user, trust
auth, loopback only, a free port), puts a byte-logging TCP relay in front of
it, runs a psql session and `pgbench -M prepared` / `-M extended` / `-M simple`
through the relay, and writes what each side sent into fuzz/seeds/<target>/.

  python3 fuzz/scripts/capture.py            # from the repo root, as root

Seeds written (one file per connection):
  startup/   the first client packet body (length word removed): StartupMessage
  frame/     the raw client->server and server->client byte streams
  session/   the client->server stream after the startup packet (typed messages)
"""
import os, shutil, socket, subprocess, sys, tempfile, threading, time, pwd

BIN = "/usr/lib/postgresql/15/bin"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = os.path.join(ROOT, "seeds")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def as_postgres(*cmd, **kw):
    return subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True, **kw)


class Relay:
    """Forwards 127.0.0.1:port -> 127.0.0.1:upstream, recording both directions."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns = []  # (client->server bytes, server->client bytes)
        self.lock = threading.Lock()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            s = socket.create_connection(("127.0.0.1", self.upstream))
            rec = [bytearray(), bytearray()]
            with self.lock:
                self.conns.append(rec)
            threading.Thread(target=self.pump, args=(c, s, rec[0]), daemon=True).start()
            threading.Thread(target=self.pump, args=(s, c, rec[1]), daemon=True).start()

    @staticmethod
    def pump(src, dst, log):
        try:
            while True:
                b = src.recv(65536)
                if not b:
                    break
                log += b
                dst.sendall(b)
        except OSError:
            pass
        finally:
            for x in (src, dst):
                try:
                    x.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def main():
    work = tempfile.mkdtemp(prefix="tandem-capture-")
    pw = pwd.getpwnam("postgres")
    os.chown(work, pw.pw_uid, pw.pw_gid)
    data = os.path.join(work, "data")
    port = free_port()
    as_postgres(f"{BIN}/initdb", "-D", data, "-A", "trust", "-U", "postgres", stdout=subprocess.DEVNULL)
    as_postgres(f"{BIN}/pg_ctl", "-D", data, "-w", "-l", os.path.join(work, "log"), "-o",
                f"-p {port} -k {work} -c listen_addresses=127.0.0.1", "start", stdout=subprocess.DEVNULL)
    try:
        relay = Relay(port)
        env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(relay.port), PGUSER="postgres",
                   PGDATABASE="postgres", PGSSLMODE="disable", PGGSSENCMODE="disable")
        psql_script = """
create table t(id int primary key, v text);
insert into t values (1, 'a'), (2, 'b');
select * from t where id = 1;
begin; update t set v = 'c' where id = 2; commit;
set application_name = 'seed';
prepare s(int) as select v from t where id = $1;
execute s(1);
deallocate s;
select 1/0;
copy t to stdout;
\\copy t from stdin
3\tc
\\.
listen chan; notify chan, 'x';
select now(), random(), nextval(pg_get_serial_sequence('pgbench_accounts', 'aid')) where false;
"""
        subprocess.run(["psql", "-X", "-v", "ON_ERROR_STOP=0", "-f", "-"], input=psql_script.encode(),
                       env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run(["pgbench", "-i", "-s", "1", "-q"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for mode in ("prepared", "extended", "simple"):
            subprocess.run(["pgbench", "-M", mode, "-t", "3", "-c", "1", "-n"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        relay.sock.close()
    finally:
        as_postgres(f"{BIN}/pg_ctl", "-D", data, "-m", "immediate", "stop", stdout=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)

    for d in ("startup", "frame", "session"):
        os.makedirs(os.path.join(SEEDS, d), exist_ok=True)
    n = 0
    for i, (c2s, s2c) in enumerate(relay.conns):
        c2s, s2c = bytes(c2s), bytes(s2c)
        if len(c2s) < 8:
            continue
        length = int.from_bytes(c2s[:4], "big")
        write(os.path.join(SEEDS, "startup", f"capture-{i}"), c2s[4:length])
        # Cap sizes so the committed seeds stay small (the pgbench -i COPY is large).
        write(os.path.join(SEEDS, "frame", f"capture-c2s-{i}"), c2s[:16384])
        write(os.path.join(SEEDS, "frame", f"capture-s2c-{i}"), s2c[:16384])
        write(os.path.join(SEEDS, "session", f"capture-{i}"), c2s[length:][:16384])
        n += 1
    print(f"captured {n} connections into {SEEDS}")


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


if __name__ == "__main__":
    sys.exit(main())
