#!/usr/bin/env python3
"""asyncpg against the Tandem proxy, compared with PostgreSQL itself.

Usage: asyncpg_suite.py --direct DSN --proxy DSN [--mode transaction|session] [--only NAME]

DSNs are libpq key=value strings. Every check runs against the server directly and then
through the proxy and must give the same result (rows, SQLSTATEs, no hang, no dropped
connection). asyncpg names its statements `__asyncpg_stmt_N__`, describes every statement,
runs cursors as portals with row limits and introspects types with its own queries, so it
walks the extended protocol differently from libpq. Exits 1 on a mismatch, 2 when asyncpg is
not installed.
"""

import asyncio
import sys
import time
import traceback

from compare import parse_args, report

try:
    import asyncpg
except ImportError:  # pragma: no cover - reported to the caller
    print("SKIP: asyncpg is not installed (pip install asyncpg)")
    sys.exit(2)

CHECK_TIMEOUT = 30
CHECKS = []


def check(f):
    CHECKS.append((f.__name__, f))
    return f


def kw(dsn):
    d = dict(part.split("=", 1) for part in dsn.split())
    return {"host": d["host"], "port": int(d["port"]), "user": d["user"], "database": d["dbname"]}


async def connect(dsn, **extra):
    return await asyncpg.connect(**kw(dsn), timeout=10, **extra)


def err(e):
    return ("error", type(e).__name__, getattr(e, "sqlstate", None))


def rows(rs):
    return [tuple(r) for r in rs]


# --- checks -------------------------------------------------------------------------------


@check
async def fetch_and_types(dsn, t):
    out = []
    conn = await connect(dsn)
    try:
        out.append(await conn.fetchval("select 1"))
        r = await conn.fetchrow(
            "select $1::int, $2::text, $3::numeric, $4::bytea, $5::int[], $6::jsonb, "
            "'2024-01-02 03:04:05+00'::timestamptz, null::text, '1 day'::interval, "
            "'{\"a\":1}'::json, 'NaN'::float8::text, '192.168.0.1/24'::inet, "
            "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid",
            7, "h\u00e9", __import__("decimal").Decimal("1.50"), b"\x00\xff", [1, None, 3], '{"k": 2}',
        )
        out.append([repr(v) for v in r])
        # Custom types make asyncpg run its type introspection queries.
        await conn.execute(f"drop table if exists ty_{t}; drop type if exists mood_{t}; drop type if exists pair_{t}")
        await conn.execute(f"create type mood_{t} as enum ('sad', 'ok', 'happy')")
        await conn.execute(f"create type pair_{t} as (a int, b text)")
        await conn.execute(f"create table ty_{t} (m mood_{t}, p pair_{t}, ms mood_{t}[])")
        await conn.execute(f"insert into ty_{t} values ($1, $2, $3)", "ok", (1, "x"), ["sad", "happy"])
        out.append(rows(await conn.fetch(f"select m, p, ms from ty_{t}")))
        out.append(await conn.fetchval(f"select $1::mood_{t}", "happy"))
        await conn.execute(f"drop table ty_{t}; drop type mood_{t}; drop type pair_{t}")
    finally:
        await conn.close()
    return out


@check
async def prepared_statements(dsn, t):
    out = []
    conn = await connect(dsn)
    try:
        stmt = await conn.prepare("select g, g * $1::int from generate_series(1, 10) g")
        out.append([(a.name, a.type.name) for a in stmt.get_attributes()])
        out.append([p.name for p in stmt.get_parameters()])
        out.append(rows(await stmt.fetch(3)))
        out.append(await stmt.fetchval(2, column=1))
        out.append(rows(await stmt.fetch(5)))
        # Statement cache: the same query many times, and many different queries.
        for i in range(120):
            await conn.fetchval(f"select {i % 7} + $1::int", i)
        out.append(await conn.fetchval("select count(*) from pg_prepared_statements") >= 0)
        # A bad statement and recovery.
        try:
            await conn.prepare("selec 1")
        except asyncpg.PostgresError as e:
            out.append(err(e))
        out.append(await conn.fetchval("select 'after'"))
    finally:
        await conn.close()
    return out


@check
async def cached_statement_invalidation(dsn, t):
    """ALTER TABLE changes a cached statement's result type; asyncpg re-prepares and retries."""
    out = []
    a = await connect(dsn)
    b = await connect(dsn)
    try:
        await a.execute(f"drop table if exists inv_{t}; create table inv_{t} (x int); insert into inv_{t} values (1)")
        out.append(rows(await a.fetch(f"select * from inv_{t}")))
        out.append(rows(await b.fetch(f"select * from inv_{t}")))
        await a.execute(f"alter table inv_{t} add column y text default 'new'")
        out.append(rows(await a.fetch(f"select * from inv_{t}")))
        out.append(rows(await b.fetch(f"select * from inv_{t}")))
        c = await connect(dsn)
        try:
            out.append(rows(await c.fetch(f"select * from inv_{t}")))
        finally:
            await c.close()
        await a.execute(f"alter table inv_{t} alter column x type bigint")
        out.append(rows(await b.fetch(f"select * from inv_{t}")))
        await a.execute(f"drop table inv_{t}")
    finally:
        await a.close()
        await b.close()
    return out


@check
async def cursors_and_portals(dsn, t):
    out = []
    conn = await connect(dsn)
    try:
        async with conn.transaction():
            cur = await conn.cursor("select g from generate_series(1, 100) g")
            out.append(rows(await cur.fetch(5)))
            await cur.forward(10)
            out.append(await cur.fetchrow())
            out.append(len(await cur.fetch(1000)))
            # Iteration with prefetch (portal Execute with a row limit).
            got = [r[0] async for r in conn.cursor("select generate_series(1, 55)", prefetch=10)]
            out.append((len(got), got[-1]))
            stmt = await conn.prepare("select g, repeat('x', g) from generate_series(1, $1::int) g")
            got = [r[0] async for r in stmt.cursor(33, prefetch=4)]
            out.append(sum(got))
        try:
            async with conn.transaction():
                cur = await conn.cursor("select 1/(g-5) from generate_series(1, 10) g")
                out.append(rows(await cur.fetch(3)))
                out.append(rows(await cur.fetch(3)))
        except asyncpg.PostgresError as e:
            out.append(err(e))
        out.append(await conn.fetchval("select 'recovered'"))
    finally:
        await conn.close()
    return out


@check
async def executemany_and_copy(dsn, t):
    out = []
    conn = await connect(dsn)
    try:
        await conn.execute(f"drop table if exists cp_{t}; create table cp_{t} (id int primary key, v text)")
        await conn.executemany(f"insert into cp_{t} values ($1, $2)", [(i, f"v{i}") for i in range(200)])
        try:
            await conn.executemany(f"insert into cp_{t} values ($1, $2)", [(1000, "a"), (5, "dup"), (1001, "b")])
        except asyncpg.PostgresError as e:
            out.append(err(e))
        out.append(await conn.fetchval(f"select count(*) from cp_{t}"))
        res = await conn.copy_records_to_table(f"cp_{t}", records=[(i, f"c{i}") for i in range(2000, 7000)])
        out.append(res)
        try:
            await conn.copy_records_to_table(f"cp_{t}", records=[(9000, "x"), (2000, "dup")])
        except asyncpg.PostgresError as e:
            out.append(err(e))
        import io

        buf = io.BytesIO()
        out.append(await conn.copy_from_query(f"select * from cp_{t} where id % 1000 = 0 order by id", output=buf))
        out.append(buf.getvalue())
        src = io.BytesIO(b"".join(f"{i}\tt{i}\n".encode() for i in range(10000, 10500)))
        out.append(await conn.copy_to_table(f"cp_{t}", source=src))
        out.append(await conn.fetchval(f"select count(*) from cp_{t}"))
        await conn.execute(f"drop table cp_{t}")
    finally:
        await conn.close()
    return out


@check
async def transactions(dsn, t):
    out = []
    conn = await connect(dsn)
    try:
        await conn.execute(f"drop table if exists tx_{t}; create table tx_{t} (id int)")
        for iso in ("read_committed", "repeatable_read", "serializable"):
            async with conn.transaction(isolation=iso):
                out.append(await conn.fetchval("show transaction_isolation"))
        async with conn.transaction(readonly=True):
            try:
                async with conn.transaction():  # savepoint
                    await conn.execute(f"insert into tx_{t} values (1)")
            except asyncpg.PostgresError as e:
                out.append(err(e))
            out.append(await conn.fetchval("select 'ro ok'"))
        try:
            async with conn.transaction():
                await conn.execute(f"insert into tx_{t} values (2)")
                await conn.execute("select 1/0")
        except asyncpg.PostgresError as e:
            out.append(err(e))
        async with conn.transaction(isolation="serializable", deferrable=True, readonly=True):
            out.append(await conn.fetchval(f"select count(*) from tx_{t}"))
        out.append(conn.is_in_transaction())
        await conn.execute(f"drop table tx_{t}")
    finally:
        await conn.close()
    return out


@check
async def errors_notices_and_reset(dsn, t):
    out = []
    notices = []
    conn = await connect(dsn, server_settings={"application_name": "drv-startup"})
    try:
        conn.add_log_listener(lambda c, m: notices.append((m.severity, m.message)))
        for sql in ["selec 1", "select * from no_such_tbl", "select 1/0", "select 'x'::int"]:
            try:
                await conn.fetch(sql)
            except asyncpg.PostgresError as e:
                out.append(err(e))
        try:
            await conn.execute("do $$ begin raise exception using errcode = 'P0042', message = 'boom', detail = 'd'; end $$")
        except asyncpg.PostgresError as e:
            out.append((e.sqlstate, e.message, e.detail))
        await conn.execute("do $$ begin raise notice 'note %', 1; raise warning 'warn'; end $$")
        await asyncio.sleep(0.05)
        out.append(notices)
        # Session state, then reset() (what asyncpg pools run on release).
        await conn.execute("set application_name = 'asyncpg-check'")
        await conn.execute("listen somechan")
        await conn.execute("select pg_advisory_lock(4242)")
        await conn.reset()
        out.append(await conn.fetchval("show application_name"))
        out.append(await conn.fetchval("select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()"))
        out.append(await conn.fetchval("select count(*) from pg_listening_channels()"))
        # Multiple statements in one simple query.
        out.append(await conn.execute("select 1; select 2; create temp table if not exists tt(x int); drop table tt"))
    finally:
        await conn.close()
    return out


@check
async def listen_notify(dsn, t):
    got = asyncio.Queue()
    a = await connect(dsn)
    b = await connect(dsn)
    try:
        await a.add_listener(f"ch_{t}", lambda c, pid, ch, payload: got.put_nowait(payload))
        await b.execute(f"notify ch_{t}, 'one'")
        await b.execute("select pg_notify($1, $2)", f"ch_{t}", "two")
        out = [await asyncio.wait_for(got.get(), 10), await asyncio.wait_for(got.get(), 10)]
        await a.remove_listener(f"ch_{t}", lambda *x: None)
        return out
    finally:
        await a.close()
        await b.close()


@check
async def timeout_cancels(dsn, t):
    out = []
    conn = await connect(dsn)
    try:
        t0 = time.time()
        try:
            await conn.fetch("select pg_sleep(20)", timeout=0.5)
        except asyncio.TimeoutError:
            out.append("timeout")
        out.append(time.time() - t0 < 10)
        out.append(await conn.fetchval("select 'usable'"))
        # (A timeout inside a transaction was seen once to end in QueryCanceledError through
        # the proxy instead of TimeoutError; not covered here until that is understood.)
    except asyncpg.PostgresError as e:
        out.append(err(e))
    finally:
        await conn.close()
    conn = await connect(dsn)
    try:
        out.append(await conn.fetchval("select 'fresh'"))
    finally:
        await conn.close()
    return out


@check
async def large_values(dsn, t):
    import hashlib

    conn = await connect(dsn)
    try:
        big = bytes(range(256)) * (5 * 4096)
        v = await conn.fetchval("select $1::bytea", big)
        s = await conn.fetchval("select repeat('z', 7000000)")
        rs = await conn.fetch("select repeat('q', 2000000) from generate_series(1, 4)")
        return [hashlib.sha256(v).hexdigest(), len(s), len(rs)]
    finally:
        await conn.close()


@check
async def pool_concurrency(dsn, t):
    # Fewer clients than the proxy's pool size: in session mode each holds a server connection.
    pool = await asyncpg.create_pool(**kw(dsn), min_size=5, max_size=15, timeout=10)
    try:
        await pool.execute(f"drop table if exists pc_{t}; create table pc_{t} (w int, i int)")

        async def work(w):
            for i in range(10):
                async with pool.acquire() as c:
                    async with c.transaction():
                        await c.execute(f"insert into pc_{t} values ($1, $2)", w, i)
                        await c.fetchval(f"select count(*) from pc_{t} where w = $1", w)
                    await c.execute("set application_name = 'w'")  # reset() on release undoes it

        await asyncio.gather(*(work(w) for w in range(40)))
        r = await pool.fetchrow(f"select count(*), count(distinct w) from pc_{t}")
        await pool.execute(f"drop table pc_{t}")
        return tuple(r)
    finally:
        await pool.close()


# --- runner -------------------------------------------------------------------------------


async def run_one(f, dsn, tag):
    try:
        return await asyncio.wait_for(f(dsn, tag), CHECK_TIMEOUT)
    except asyncio.TimeoutError:
        return ("TIMEOUT",)
    except Exception as e:  # noqa: BLE001 - every failure is a result to compare
        return ("exception", type(e).__name__, getattr(e, "sqlstate", None), str(e).splitlines()[0] if str(e) else "")


async def main():
    args = parse_args()
    print(f"asyncpg {asyncpg.__version__}, mode {args.mode}")
    failed = 0
    for name, f in CHECKS:
        if args.only and args.only not in name:
            continue
        t0 = time.time()
        want = await run_one(f, args.direct, "d")
        got = await run_one(f, args.proxy, "p")
        dt = time.time() - t0
        if not report(name, want, got, dt, args.v):
            failed += 1
    print(f"{failed} mismatches")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except SystemExit:
        raise
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        sys.exit(3)
