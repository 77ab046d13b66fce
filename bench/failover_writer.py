#!/usr/bin/env python3
"""The failover benchmark's writer (bench/failover.sh): inserts unique ids through the proxy
in a tight loop and records the outcome of every insert with its timestamps.

Usage: failover_writer.py DSN OUT_TSV [WRITERS]

WRITERS (default 2) sessions, each one insert at a time in autocommit:
`INSERT INTO failover_writes (id) VALUES (%s) RETURNING current_setting('cluster_name')`,
so every acknowledgement says which server committed it (pg1 before the failover, the new
primary after it). Ids are unique across the writers (one counter). Until SIGTERM/SIGINT.

One line per insert or connection attempt in OUT_TSV (wall clock, seconds since the epoch,
the same clock `date +%s.%N` and the witnesses' history use):

    start  end  id  outcome  node_or_detail

outcome: `ack` (the answer arrived: the row is owed; the last column names the server),
`fail` (an ERROR on a live session, e.g. 25006 while the proxy holds no write lease: the
insert did not happen), `unknown` (the session broke, a FATAL, or no answer within
STATEMENT_TIMEOUT: it may or may not have happened), `connfail` (no session; no id used).

psycopg 3 (`pip install 'psycopg[binary]'`), asyncio: a client-side bound on every connect
and statement, so a hung server cannot stall the measurement. No server-side prepared
statements (prepare_threshold=None): the same unnamed statement every time.
"""

import asyncio
import signal
import sys
import time

try:
    import psycopg
except ImportError:
    print("failover_writer.py: psycopg is not installed (pip install 'psycopg[binary]')", file=sys.stderr)
    sys.exit(2)

CONNECT_TIMEOUT = 1.0
STATEMENT_TIMEOUT = 5.0
PAUSE_AFTER_FAIL = 0.01
PAUSE_AFTER_CONNFAIL = 0.02
SQL = "INSERT INTO failover_writes (id) VALUES (%s) RETURNING current_setting('cluster_name')"


def clean(s) -> str:
    return " ".join(str(s).split())[:200]


async def writer(dsn: str, out, stop: asyncio.Event, counter: list) -> None:
    conn = None
    while not stop.is_set():
        if conn is None or conn.closed:
            t0 = time.time()
            try:
                conn = await asyncio.wait_for(
                    psycopg.AsyncConnection.connect(dsn, autocommit=True, prepare_threshold=None), CONNECT_TIMEOUT
                )
            except (Exception, asyncio.TimeoutError) as e:
                out.write(f"{t0:.6f}\t{time.time():.6f}\t\tconnfail\t{clean(type(e).__name__ + ': ' + str(e))}\n")
                conn = None
                await asyncio.sleep(PAUSE_AFTER_CONNFAIL)
                continue
        counter[0] += 1
        i = counter[0]
        t0 = time.time()
        try:
            cur = await asyncio.wait_for(conn.execute(SQL, (i,)), STATEMENT_TIMEOUT)
            row = await cur.fetchone()
            out.write(f"{t0:.6f}\t{time.time():.6f}\t{i}\tack\t{row[0] if row else ''}\n")
        except asyncio.TimeoutError:
            out.write(f"{t0:.6f}\t{time.time():.6f}\t{i}\tunknown\ttimeout after {STATEMENT_TIMEOUT} s\n")
            await close(conn)
            conn = None
        except psycopg.Error as e:
            t1 = time.time()
            diag = getattr(e, "diag", None)
            severity = diag.severity_nonlocalized if diag else None
            code = (diag.sqlstate if diag else None) or getattr(e, "sqlstate", None) or ""
            if severity == "ERROR" and not conn.closed and not conn.broken:
                out.write(f"{t0:.6f}\t{t1:.6f}\t{i}\tfail\t{code} {clean(e)}\n")
                await asyncio.sleep(PAUSE_AFTER_FAIL)
            else:
                out.write(f"{t0:.6f}\t{t1:.6f}\t{i}\tunknown\t{code} {clean(e)}\n")
                await close(conn)
                conn = None
    if conn is not None:
        await close(conn)


async def close(conn) -> None:
    try:
        await asyncio.wait_for(conn.close(), 1.0)
    except (Exception, asyncio.TimeoutError):
        pass


async def main() -> None:
    dsn, path = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    counter = [0]
    with open(path, "w", buffering=1) as out:
        await asyncio.gather(*(writer(dsn, out, stop, counter) for _ in range(n)))


if __name__ == "__main__":
    asyncio.run(main())
