#!/usr/bin/env python3
"""psycopg 3 against the Tandem proxy, compared with PostgreSQL itself.

Usage: psycopg_suite.py --direct DSN --proxy DSN [--mode transaction|session] [--only NAME]

Every check runs twice, first against the server directly (`--direct`, the primary) and then
through the proxy (`--proxy`), and must give the same result: the same rows, the same
SQLSTATEs, no hang, no dropped connection. A check returns plain data (lists, tuples,
strings); an exception becomes ("error", class name, SQLSTATE). Tables are suffixed per target
so the two runs do not see each other's data. Prints one line per check and exits 1 on any
mismatch, 2 when psycopg is not installed (the Rust test then skips).
"""

import hashlib
import signal
import sys
import threading
import time
import traceback

from compare import parse_args, report

try:
    import psycopg
    from psycopg import errors, pq
except ImportError:  # pragma: no cover - reported to the caller
    print("SKIP: psycopg is not installed (pip install 'psycopg[binary]')")
    sys.exit(2)

CHECK_TIMEOUT = 30
CHECKS = []


def check(modes=("transaction", "session")):
    """Registers a check for the given pool modes."""

    def wrap(f):
        CHECKS.append((f.__name__, f, modes))
        return f

    return wrap


def err(e):
    return ("error", type(e).__name__, getattr(e, "sqlstate", None))


def connect(dsn, **kw):
    kw.setdefault("autocommit", True)
    return psycopg.connect(dsn, connect_timeout=10, **kw)


# --- checks -------------------------------------------------------------------------------


@check()
def types_text_and_binary(dsn, t):
    out = []
    with connect(dsn) as conn:
        q = (
            "select %s::int, %s::text, %s::numeric, %s::bytea, %s::int[], %s::jsonb, "
            "'2024-01-02 03:04:05+00'::timestamptz, null::text, 'NaN'::float8, "
            "'{\"a\":[1,2]}'::json, '1 day'::interval"
        )
        params = (42, "h\u00e9llo", "12.50", b"\x00\x01\xff", [1, 2, None], psycopg.types.json.Jsonb({"k": 1}))
        for binary in (False, True):
            cur = conn.cursor(binary=binary)
            cur.execute(q, params)
            out.append([repr(v) for v in cur.fetchone()])
            out.append([(d.name, d.type_code) for d in cur.description])
        # binary parameters (%b)
        out.append(conn.execute("select %b::bytea, %b::int8, %b::text", (b"\x00" * 3, 7, "x")).fetchone())
    return out


@check()
def prepared_every_query(dsn, t):
    """prepare_threshold=0: a server-side prepared statement for every query."""
    out = []
    with connect(dsn, prepare_threshold=0) as conn:
        conn.execute(f"drop table if exists ps_{t}")
        conn.execute(f"create table ps_{t} (id int primary key, v text)")
        for i in range(30):
            conn.execute(f"insert into ps_{t} values (%s, %s)", (i, f"v{i}"))
        for i in range(0, 30, 7):
            out.append(conn.execute(f"select v from ps_{t} where id = %s", (i,)).fetchone())
        # A failing prepared query, then the same one again, then a good one.
        for _ in range(2):
            try:
                conn.execute(f"insert into ps_{t} values (%s, %s)", (1, "dup"))
            except psycopg.Error as e:
                out.append(err(e))
        # DROP/ROLLBACK make psycopg send DEALLOCATE ALL; statements must be re-prepared after.
        with conn.transaction():
            out.append(conn.execute(f"select count(*) from ps_{t}").fetchone())
        try:
            with conn.transaction():
                conn.execute(f"select v from ps_{t} where id = %s", (3,))
                raise RuntimeError("rollback")
        except RuntimeError:
            pass
        out.append(conn.execute(f"select v from ps_{t} where id = %s", (3,)).fetchone())
        conn.execute(f"drop table ps_{t}")
        conn.execute(f"create table ps_{t} (id int primary key, v text)")
        conn.execute(f"insert into ps_{t} values (%s, %s)", (3, "again"))
        out.append(conn.execute(f"select v from ps_{t} where id = %s", (3,)).fetchone())
        # (pg_prepared_statements differs on purpose: the server-side names are Tandem's.)
        conn.execute(f"drop table ps_{t}")
    return out


@check()
def executemany_and_returning(dsn, t):
    out = []
    with connect(dsn, prepare_threshold=0) as conn:
        conn.execute(f"drop table if exists em_{t}")
        conn.execute(f"create table em_{t} (id serial primary key, v int)")
        cur = conn.cursor()
        cur.executemany(f"insert into em_{t} (v) values (%s)", [(i,) for i in range(100)])
        out.append(cur.rowcount)
        cur.executemany(f"insert into em_{t} (v) values (%s) returning id, v", [(1000 + i,) for i in range(5)], returning=True)
        rows = []
        while True:
            rows.append(cur.fetchone())
            if not cur.nextset():
                break
        out.append(rows)
        try:
            cur.executemany(f"insert into em_{t} (id, v) values (%s, %s)", [(500, 1), (500, 2)])
        except psycopg.Error as e:
            out.append(err(e))
        out.append(conn.execute(f"select count(*), sum(v) from em_{t}").fetchone())
        conn.execute(f"drop table em_{t}")
    return out


@check()
def pipeline_mode(dsn, t):
    out = []
    with connect(dsn, prepare_threshold=0) as conn:
        conn.execute(f"drop table if exists pl_{t}")
        conn.execute(f"create table pl_{t} (id int primary key)")
        with conn.pipeline() as p:
            curs = [conn.execute(f"insert into pl_{t} values (%s) returning id", (i,)) for i in range(20)]
            p.sync()
            out.append([c.fetchone() for c in curs])
            c2 = conn.execute(f"select count(*) from pl_{t}")
        out.append(c2.fetchone())
        # An error in the middle: later statements are skipped, the pipeline recovers.
        try:
            with conn.pipeline():
                conn.execute(f"insert into pl_{t} values (%s)", (100,))
                conn.execute(f"insert into pl_{t} values (%s)", (1,))  # duplicate
                conn.execute(f"insert into pl_{t} values (%s)", (101,))
        except psycopg.Error as e:
            out.append(err(e))
        out.append(conn.execute(f"select array_agg(id order by id) from pl_{t} where id >= 100").fetchone())
        # Pipelines inside a transaction, with an error and a savepoint-less rollback.
        try:
            with conn.transaction():
                with conn.pipeline():
                    conn.execute(f"insert into pl_{t} values (200)")
                    conn.execute("select 1/0")
                    conn.execute(f"insert into pl_{t} values (201)")
        except psycopg.Error as e:
            out.append(err(e))
        out.append(conn.execute(f"select count(*) from pl_{t} where id >= 200").fetchone())
        # Same prepared statements again after the errors.
        with conn.pipeline():
            c3 = conn.execute(f"select count(*) from pl_{t} where id < %s", (10,))
            c4 = conn.execute("select %s::text", ("after",))
        out.append((c3.fetchone(), c4.fetchone()))
        conn.execute(f"drop table pl_{t}")
    return out


@check()
def copy_in_out(dsn, t):
    out = []
    with connect(dsn) as conn:
        conn.execute(f"drop table if exists cp_{t}")
        conn.execute(f"create table cp_{t} (id int primary key, v text, b bytea)")
        cur = conn.cursor()
        with cur.copy(f"copy cp_{t} (id, v, b) from stdin") as copy:
            for i in range(2000):
                copy.write_row((i, f"row {i}\ttab", bytes([i % 256])))
        out.append(cur.rowcount)
        with cur.copy(f"copy cp_{t} (id, v, b) from stdin (format binary)") as copy:
            copy.set_types(["int4", "text", "bytea"])
            for i in range(2000, 2100):
                copy.write_row((i, None, b"\x00\x01"))
        out.append(cur.rowcount)
        rows = []
        with cur.copy(f"copy (select id, v from cp_{t} where id % 500 = 0 order by id) to stdout") as copy:
            for row in copy.rows():
                rows.append(row)
        out.append(rows)
        h = hashlib.sha256()
        with cur.copy(f"copy (select * from cp_{t} order by id) to stdout (format binary)") as copy:
            for block in copy:
                h.update(block)
        out.append(h.hexdigest())
        # A bad row fails the COPY; the connection goes on.
        try:
            with cur.copy(f"copy cp_{t} (id, v) from stdin") as copy:
                copy.write(b"99999\tok\nnot-a-number\tx\n")
        except psycopg.Error as e:
            out.append(err(e))
        # The client aborts a COPY itself.
        try:
            with cur.copy(f"copy cp_{t} (id, v) from stdin") as copy:
                copy.write_row((100000, "x"))
                raise RuntimeError("client gives up")
        except (RuntimeError, psycopg.Error) as e:
            out.append(type(e).__name__ if isinstance(e, RuntimeError) else err(e))
        out.append(conn.execute(f"select count(*) from cp_{t}").fetchone())
        # COPY inside a transaction, then an error, then rollback.
        try:
            with conn.transaction():
                with cur.copy(f"copy cp_{t} (id) from stdin") as copy:
                    copy.write_row((300000,))
                conn.execute("select 1/0")
        except psycopg.Error as e:
            out.append(err(e))
        out.append(conn.execute(f"select count(*) from cp_{t} where id = 300000").fetchone())
        conn.execute(f"drop table cp_{t}")
    return out


@check()
def named_cursors(dsn, t):
    out = []
    with connect(dsn, autocommit=False) as conn:
        cur = conn.cursor(name="nc")
        cur.itersize = 7
        cur.execute("select g, repeat('x', g) from generate_series(1, 50) g")
        out.append(cur.fetchmany(3))
        out.append(len(list(cur)))
        cur.close()
        sc = conn.cursor(name="scroll", scrollable=True)
        sc.execute("select generate_series(1, 20)")
        sc.scroll(10)
        out.append(sc.fetchone())
        sc.scroll(-5)
        out.append(sc.fetchone())
        sc.scroll(0, mode="absolute")
        out.append(sc.fetchone())
        sc.close()
        conn.commit()
        # Binary named cursor with parameters.
        bc = conn.cursor(name="bin", binary=True)
        bc.execute("select g::int8, g::text from generate_series(1, %s) g", (5,))
        out.append(bc.fetchall())
        bc.close()
        conn.rollback()
        # An error while a named cursor is open.
        ec = conn.cursor(name="err")
        try:
            ec.execute("select 1/(g-3) from generate_series(1, 5) g")
            out.append(ec.fetchall())
        except psycopg.Error as e:
            out.append(err(e))
        conn.rollback()
        out.append(conn.execute("select 'recovered'").fetchone())
        conn.rollback()
    # WITH HOLD outlives the transaction (pins the client under transaction pooling).
    with connect(dsn, autocommit=False) as conn:
        hc = conn.cursor(name="hold", withhold=True)
        hc.execute("select generate_series(1, 10)")
        conn.commit()
        out.append(hc.fetchmany(4))
        out.append(hc.fetchall())
        hc.close()
        conn.commit()
    return out


@check()
def errors_and_recovery(dsn, t):
    out = []
    with connect(dsn, autocommit=False) as conn:
        for sql in ["selec 1", "select * from no_such_table", "select 1/0", "select 'x'::int"]:
            try:
                conn.execute(sql)
            except psycopg.Error as e:
                out.append(err(e))
            try:
                conn.execute("select 1")
            except psycopg.Error as e:
                out.append(err(e))
            conn.rollback()
        conn.execute("select 1")
        with conn.transaction():
            try:
                with conn.transaction():  # savepoint
                    conn.execute("select 1/0")
            except psycopg.Error as e:
                out.append(err(e))
            out.append(conn.execute("select 'after savepoint'").fetchone())
        conn.commit()
        try:
            conn.execute("select pg_terminate_backend(-1)")
        except psycopg.Error as e:
            out.append(err(e))
        conn.rollback()
        # Error fields survive the trip.
        try:
            conn.execute("do $$ begin raise exception using errcode = 'P0042', message = 'boom', "
                         "detail = 'd', hint = 'h'; end $$")
        except psycopg.Error as e:
            d = e.diag
            out.append((e.sqlstate, d.message_primary, d.message_detail, d.message_hint, d.severity))
        conn.rollback()
    return out


@check()
def notices(dsn, t):
    got = []
    with connect(dsn) as conn:
        conn.add_notice_handler(lambda d: got.append((d.severity, d.message_primary)))
        conn.execute("do $$ begin raise notice 'hello %', 1; raise warning 'careful'; end $$")
        conn.execute("set client_min_messages = debug1")
        conn.execute("do $$ begin raise debug 'dbg'; end $$")
        conn.execute("reset client_min_messages")
        conn.execute("do $$ begin raise debug 'hidden'; end $$")
    return got


@check(modes=("transaction", "session"))
def listen_notify(dsn, t):
    out = []
    with connect(dsn) as listener, connect(dsn) as sender:
        listener.execute(f"listen ch_{t}")
        sender.execute(f"notify ch_{t}, 'one'")
        sender.execute("select pg_notify(%s, %s)", (f"ch_{t}", "two"))
        for n in listener.notifies(timeout=10, stop_after=2):
            out.append((n.channel == f"ch_{t}", n.payload))
        listener.execute(f"unlisten ch_{t}")
        sender.execute(f"notify ch_{t}, 'three'")
        out.append([n.payload for n in listener.notifies(timeout=0.5)])
    return out


@check()
def cancel(dsn, t):
    out = []
    with connect(dsn) as conn:
        def later():
            time.sleep(0.5)
            conn.cancel_safe()

        th = threading.Thread(target=later)
        th.start()
        t0 = time.time()
        try:
            conn.execute("select pg_sleep(20)")
        except psycopg.Error as e:
            out.append(err(e))
        th.join()
        out.append(time.time() - t0 < 10)
        out.append(conn.execute("select 'still usable'").fetchone())
        # Cancel inside a transaction.
        with conn.transaction():
            th = threading.Thread(target=later)
            th.start()
            try:
                conn.execute("select pg_sleep(20)")
            except psycopg.Error as e:
                out.append(err(e))
            th.join()
            raise psycopg.Rollback()
        out.append(conn.execute("select 'after tx cancel'").fetchone())
    return out


@check()
def large_rows(dsn, t):
    out = []
    big = bytes(range(256)) * (6 * 4096)  # 6 MiB
    with connect(dsn, prepare_threshold=0) as conn:
        conn.execute(f"drop table if exists big_{t}")
        conn.execute(f"create table big_{t} (id int, b bytea, s text)")
        conn.execute(f"insert into big_{t} values (1, %s, repeat('y', 5000000))", (big,))
        row = conn.execute(f"select b, s from big_{t}").fetchone()
        out.append((hashlib.sha256(row[0]).hexdigest(), len(row[1])))
        row = conn.cursor(binary=True).execute(f"select b from big_{t}").fetchone()
        out.append(hashlib.sha256(row[0]).hexdigest())
        out.append(conn.execute("select length(repeat('z', 8000000))").fetchone())
        out.append(len(conn.execute("select repeat('q', 3000000) from generate_series(1, 3)").fetchall()))
        conn.execute(f"drop table big_{t}")
    return out


@check()
def many_connections(dsn, t):
    n_threads, per = 40, 15
    errors_seen = []
    with connect(dsn) as conn:
        conn.execute(f"drop table if exists mc_{t}")
        conn.execute(f"create table mc_{t} (th int, i int)")

    def work(k):
        try:
            with connect(dsn, prepare_threshold=0 if k % 2 else 5) as c:
                for i in range(per):
                    with c.transaction():
                        c.execute(f"insert into mc_{t} values (%s, %s)", (k, i))
                        c.execute(f"select count(*) from mc_{t} where th = %s", (k,)).fetchone()
                    c.execute("select %s::int + 1", (i,)).fetchone()
        except Exception as e:  # noqa: BLE001 - reported as data
            errors_seen.append(repr(e))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    with connect(dsn) as conn:
        res = conn.execute(f"select count(*), count(distinct th) from mc_{t}").fetchone()
        conn.execute(f"drop table mc_{t}")
    return [res, errors_seen]


@check()
def protocol_prepared_names(dsn, t):
    """Named statements at the protocol level: duplicates, skipped Parse, Close of unknown."""
    out = []
    with connect(dsn) as conn:
        pg = conn.pgconn

        def res(r):
            if r.status == pq.ExecStatus.FATAL_ERROR:
                return ("error", r.error_field(pq.DiagnosticField.SQLSTATE).decode())
            return (pq.ExecStatus(r.status).name, [r.get_value(i, 0) for i in range(r.ntuples)])

        out.append(res(pg.prepare(b"s1", b"select 1")))
        # (a) A second Parse of an existing name fails with 42P05 and keeps the old statement.
        out.append(res(pg.prepare(b"s1", b"select 2")))
        out.append(res(pg.exec_prepared(b"s1", None)))
        # The same name with the same text is a duplicate too.
        out.append(res(pg.prepare(b"s1", b"select 1")))
        # (c) Close of a name that does not exist is fine.
        if hasattr(pg, "close_prepared"):
            out.append(res(pg.close_prepared(b"never_prepared")))
            out.append(res(pg.close_prepared(b"s1")))
            out.append(res(pg.exec_prepared(b"s1", None)))
            out.append(res(pg.prepare(b"s1", b"select 3")))
            out.append(res(pg.exec_prepared(b"s1", None)))
        # DEALLOCATE (SQL) of a protocol-level statement.
        out.append(res(pg.prepare(b"s_dealloc", b"select 'd'")))
        out.append(res(pg.exec_(b"DEALLOCATE s_dealloc")))
        out.append(res(pg.exec_prepared(b"s_dealloc", None)))
        out.append(res(pg.exec_(b"DEALLOCATE s_dealloc")))
        out.append(res(pg.prepare(b"s_dealloc", b"select 'd2'")))
        out.append(res(pg.exec_prepared(b"s_dealloc", None)))
        # A Parse error does not create the statement.
        out.append(res(pg.prepare(b"s_bad", b"selec 1")))
        out.append(res(pg.exec_prepared(b"s_bad", None)))
        out.append(res(pg.describe_prepared(b"s_bad")))
        out.append(res(pg.prepare(b"s_bad", b"select 'good'")))
        out.append(res(pg.exec_prepared(b"s_bad", None)))
        d = pg.describe_prepared(b"s_bad")
        out.append((d.nparams, d.nfields, d.ftype(0)))
        # DEALLOCATE ALL forgets every statement.
        out.append(res(pg.exec_(b"DEALLOCATE ALL")))
        out.append(res(pg.exec_prepared(b"s_bad", None)))
        out.append(res(pg.prepare(b"s_bad", b"select 'again'")))
        out.append(res(pg.exec_prepared(b"s_bad", None)))
        # (b) In one pipeline: an error, then a Parse the server skips: the name must not exist.
        pg.enter_pipeline_mode()
        pg.send_query_params(b"select 1/0", None)
        pg.send_prepare(b"s_skipped", b"select 'skipped'")
        pg.pipeline_sync()
        pg.send_prepare(b"s_after", b"select 'after'")
        pg.pipeline_sync()
        results = []
        while len(results) < 4:
            pg.consume_input()
            while not pg.is_busy():
                r = pg.get_result()
                if r is None:
                    continue
                results.append(pq.ExecStatus(r.status).name)
                if r.status == pq.ExecStatus.PIPELINE_SYNC:
                    break
            time.sleep(0.005)
        pg.exit_pipeline_mode()
        out.append(results)
        out.append(res(pg.exec_prepared(b"s_skipped", None)))
        out.append(res(pg.exec_prepared(b"s_after", None)))
        out.append(res(pg.prepare(b"s_skipped", b"select 'now'")))
        out.append(res(pg.exec_prepared(b"s_skipped", None)))
        # Statements survive transactions and rollbacks.
        out.append(res(pg.exec_(b"BEGIN")))
        out.append(res(pg.prepare(b"s_tx", b"select 'tx'")))
        out.append(res(pg.exec_(b"ROLLBACK")))
        out.append(res(pg.exec_prepared(b"s_tx", None)))
        out.append(res(pg.exec_(b"BEGIN")))
        out.append(res(pg.exec_(b"select 1/0")))
        out.append(res(pg.prepare(b"s_tx2", b"select 'tx2'")))
        out.append(res(pg.exec_(b"ROLLBACK")))
        out.append(res(pg.exec_prepared(b"s_tx2", None)))
    return out


@check()
def sql_prepare_execute(dsn, t):
    out = []
    with connect(dsn) as conn:
        conn.execute("prepare sp(int) as select $1 * 2")
        out.append(conn.execute("execute sp(21)").fetchone())
        try:
            conn.execute("prepare sp(int) as select $1")
        except psycopg.Error as e:
            out.append(err(e))
        conn.execute("deallocate sp")
        try:
            conn.execute("execute sp(1)")
        except psycopg.Error as e:
            out.append(err(e))
    return out


@check()
def multi_statement_and_session_settings(dsn, t):
    out = []
    with connect(dsn) as conn:
        cur = conn.cursor()
        cur.execute("select 1; select 2, 3; set application_name = 'drv'; show application_name")
        sets = []
        while True:
            sets.append(cur.fetchall() if cur.description else cur.statusmessage)
            if not cur.nextset():
                break
        out.append(sets)
        out.append(conn.execute("show application_name").fetchone())
        conn.execute("set timezone = 'Asia/Tokyo'")
        out.append(conn.execute("select '2024-01-01 00:00:00+00'::timestamptz::text").fetchone())
        conn.execute("reset all")
        out.append(conn.execute("show timezone").fetchone() is not None)
        try:
            cur.execute("select 1; select 1/0; select 3")
        except psycopg.Error as e:
            out.append(err(e))
        out.append(conn.execute("select 'ok'").fetchone())
        out.append(pq.ExecStatus(conn.execute("").pgresult.status).name)
    return out


@check()
def transactions_and_isolation(dsn, t):
    out = []
    with connect(dsn) as conn:
        conn.execute(f"drop table if exists tx_{t}")
        conn.execute(f"create table tx_{t} (id int)")
    with connect(dsn, autocommit=False) as conn:
        conn.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
        out.append(conn.execute("show transaction_isolation").fetchone())
        conn.execute(f"insert into tx_{t} values (1)")
        conn.commit()
        conn.read_only = True
        out.append(conn.execute("show transaction_read_only").fetchone())
        try:
            conn.execute(f"insert into tx_{t} values (2)")
        except psycopg.Error as e:
            out.append(err(e))
        conn.rollback()
        conn.read_only = None
        conn.isolation_level = None
        out.append(conn.execute(f"select count(*) from tx_{t}").fetchone())
        conn.rollback()
    with connect(dsn) as conn:
        conn.execute(f"drop table tx_{t}")
    return out


# --- runner -------------------------------------------------------------------------------


class Timeout(Exception):
    pass


def on_alarm(signum, frame):
    raise Timeout()


def run_one(f, dsn, tag):
    signal.alarm(CHECK_TIMEOUT)
    try:
        return f(dsn, tag)
    except Timeout:
        return ("TIMEOUT",)
    except Exception as e:  # noqa: BLE001 - every failure is a result to compare
        return ("exception", type(e).__name__, getattr(e, "sqlstate", None), str(e).splitlines()[0] if str(e) else "")
    finally:
        signal.alarm(0)


def main():
    args = parse_args()
    signal.signal(signal.SIGALRM, on_alarm)
    print(f"psycopg {psycopg.__version__}, libpq {pq.version()}, mode {args.mode}")
    failed = 0
    for name, f, modes in CHECKS:
        if args.mode not in modes or (args.only and args.only not in name):
            continue
        t0 = time.time()
        want = run_one(f, args.direct, "d")
        got = run_one(f, args.proxy, "p")
        dt = time.time() - t0
        if not report(name, want, got, dt, args.v):
            failed += 1
    print(f"{failed} mismatches")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        sys.exit(3)
