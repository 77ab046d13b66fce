//! Initial copy and apply against real PostgreSQL 15 servers.

mod common;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use common::{table_checksum, Pg};
use tandem_core::Lsn;
use tandem_replicator::apply::{session, Applied, Applier};
use tandem_replicator::change::{Change, Column, Datum, Relation, ReplicaIdentity, Transaction, Tuple};
use tandem_replicator::copy::{copy_database, progress_after_copy, CopyOutcome, CopyRequest};
use tokio::sync::watch;

const SOURCE: &str = "test-source";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_copy_brings_roles_schema_data_and_sequences() -> Result<()> {
    let primary = Pg::start("primary-secret")?;
    let replica = Pg::start("replica-secret")?;
    let p = primary.connect("postgres").await?;
    p.batch_execute("CREATE ROLE alice LOGIN PASSWORD 'alice-pw'; CREATE ROLE readers; GRANT readers TO alice").await?;
    p.batch_execute("CREATE DATABASE app OWNER alice").await?;
    let app = primary.connect("app").await?;
    app.batch_execute(
        "SET ROLE alice; \
         CREATE TABLE accounts (id serial PRIMARY KEY, name text NOT NULL, doc jsonb, big text); \
         CREATE TABLE entries (id bigserial PRIMARY KEY, account int REFERENCES accounts, amount numeric(12,2), at timestamptz DEFAULT now()); \
         CREATE TABLE \"Odd Name\" (\"k\"\"q\" int, v text); \
         CREATE VIEW totals AS SELECT account, sum(amount) FROM entries GROUP BY account; \
         INSERT INTO accounts (name, doc, big) SELECT 'acct ' || g, jsonb_build_object('g', g), repeat('x', 5000) FROM generate_series(1, 200) g; \
         INSERT INTO entries (account, amount) SELECT 1 + g % 200, g * 1.5 FROM generate_series(1, 2000) g; \
         INSERT INTO \"Odd Name\" VALUES (1, E'tab\\there'), (NULL, 'line\nbreak'), (3, NULL); \
         GRANT SELECT ON accounts TO readers; RESET ROLE",
    )
    .await?;

    // A snapshot exported by a repeatable-read transaction stands in for the
    // one slot creation exports; rows committed after it must not be copied.
    let holder = primary.connect("app").await?;
    holder.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ").await?;
    let snapshot: String = holder.query_one("SELECT pg_export_snapshot()", &[]).await?.get(0);
    let lsn: String = holder.query_one("SELECT pg_current_wal_lsn()::text", &[]).await?.get(0);
    let consistent_point: Lsn = lsn.parse()?;
    app.batch_execute("INSERT INTO accounts (name) VALUES ('after snapshot')").await?;

    let (pcfg, rcfg) = (primary.config(), replica.config());
    let req = CopyRequest {
        primary: &pcfg,
        replica: &rcfg,
        database: "app",
        snapshot: &snapshot,
        consistent_point,
        source: SOURCE,
    };
    let outcome = copy_database(&req).await?;
    assert_eq!(outcome, CopyOutcome::Copied { tables: 3, rows: 200 + 2000 + 3 });
    holder.batch_execute("COMMIT").await?;

    let r = replica.connect("app").await?;
    for table in ["accounts", "entries", "\"Odd Name\""] {
        let want = if table == "accounts" {
            let row = app
                .query_one(
                    "SELECT count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM accounts t WHERE name <> 'after snapshot'",
                    &[],
                )
                .await?;
            (row.get(0), row.get(1))
        } else {
            table_checksum(&app, table).await?
        };
        assert_eq!(table_checksum(&r, table).await?, want, "table {table}");
    }
    // Roles, ownership, grants, sequences, views.
    let owner: String = r.query_one("SELECT tableowner FROM pg_tables WHERE tablename = 'accounts'", &[]).await?.get(0);
    assert_eq!(owner, "alice");
    let member: bool = r.query_one("SELECT pg_has_role('alice', 'readers', 'MEMBER')", &[]).await?.get(0);
    assert!(member);
    let pw: Option<String> =
        r.query_one("SELECT rolpassword FROM pg_authid WHERE rolname = 'alice'", &[]).await?.get(0);
    assert!(pw.is_some_and(|p| p.starts_with("SCRAM-SHA-256$")));
    let seq: i64 = r.query_one("SELECT last_value FROM entries_id_seq", &[]).await?.get(0);
    assert_eq!(seq, 2000);
    let view_rows: i64 = r.query_one("SELECT count(*) FROM totals", &[]).await?.get(0);
    assert_eq!(view_rows, 200);
    let progress = session::read_progress(&r, SOURCE).await?;
    assert_eq!(progress, Some(progress_after_copy(consistent_point)));

    // The replica's own superuser kept its password (not the primary's).
    let rp = replica.connect("postgres").await?;
    let own: String = rp.query_one("SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'", &[]).await?.get(0);
    let theirs: String = p.query_one("SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'", &[]).await?.get(0);
    assert_ne!(own, theirs);

    // Ordinary sessions on the replica are read-only.
    let ro: String = r.query_one("SHOW default_transaction_read_only", &[]).await?.get(0);
    assert_eq!(ro, "on");
    assert!(r.batch_execute("INSERT INTO \"Odd Name\" VALUES (9, 'no')").await.is_err());

    // A second run finds the progress row and does nothing.
    let again = copy_database(&CopyRequest { snapshot: "unused", ..req }).await?;
    assert_eq!(again, CopyOutcome::AlreadyCopied { lsn: progress_after_copy(consistent_point) });
    Ok(())
}

fn text(s: &str) -> Datum {
    Datum::Text(Bytes::copy_from_slice(s.as_bytes()))
}

fn col(name: &str, type_oid: u32, is_key: bool) -> Column {
    Column { name: name.into(), type_oid, type_modifier: -1, is_key }
}

fn rel(oid: u32, name: &str, identity: ReplicaIdentity, columns: Vec<Column>) -> Arc<Relation> {
    Arc::new(Relation { oid, schema: "public".into(), name: name.into(), replica_identity: identity, columns })
}

fn txn(lsn: u64, changes: Vec<Change>) -> Transaction {
    Transaction {
        xid: lsn as u32,
        commit_lsn: Lsn(lsn),
        end_lsn: Lsn(lsn + 8),
        commit_time_us: lsn as i64 * 1000,
        database: "app".into(),
        changes,
    }
}

/// A replica database with tables and a progress row at 0/100, as an
/// initial copy would leave it.
async fn prepared_replica() -> Result<Pg> {
    let replica = Pg::start("pw")?;
    replica.connect("postgres").await?.batch_execute("CREATE DATABASE app").await?;
    let c = replica.connect("app").await?;
    c.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, name text, body text); \
         CREATE TABLE log (at int, msg text); \
         CREATE TABLE bag (a int, b jsonb, c json); ALTER TABLE bag REPLICA IDENTITY FULL; \
         CREATE TABLE pairs (x int NOT NULL, y int NOT NULL, v text); \
         CREATE UNIQUE INDEX pairs_xy ON pairs (x, y); ALTER TABLE pairs REPLICA IDENTITY USING INDEX pairs_xy",
    )
    .await?;
    session::ensure_progress_table(&c).await?;
    session::write_progress(&c, SOURCE, Lsn(0x100)).await?;
    Ok(replica)
}

/// Hand-built stream covering INSERT/UPDATE/DELETE/TRUNCATE, unchanged
/// TOAST, identities DEFAULT, INDEX and FULL, and DDL.
fn stream() -> Vec<Transaction> {
    let items = rel(
        1,
        "items",
        ReplicaIdentity::Default,
        vec![col("id", 23, true), col("name", 25, false), col("body", 25, false)],
    );
    let log = rel(2, "log", ReplicaIdentity::Default, vec![col("at", 23, false), col("msg", 25, false)]);
    let bag = rel(3, "bag", ReplicaIdentity::Full, vec![col("a", 23, true), col("b", 3802, true), col("c", 114, true)]);
    let pairs =
        rel(4, "pairs", ReplicaIdentity::Index, vec![col("x", 23, true), col("y", 23, true), col("v", 25, false)]);
    let big = "B".repeat(10_000);
    let ins = |r: &Arc<Relation>, vals: Vec<Datum>| Change::Insert { rel: r.clone(), new: Tuple(vals) };
    vec![
        // Before the progress row: must be skipped.
        txn(0x80, vec![ins(&log, vec![text("0"), text("before copy")])]),
        txn(
            0x200,
            vec![
                ins(&items, vec![text("1"), text("one"), text(&big)]),
                ins(&items, vec![text("2"), text("two"), Datum::Null]),
                ins(&items, vec![text("3"), text("three"), text("small")]),
                ins(&log, vec![text("1"), text("hello")]),
                ins(&log, vec![text("1"), text("hello")]),
                ins(&bag, vec![text("1"), text("{\"k\": 1}"), text("{\"j\":1}")]),
                ins(&bag, vec![text("1"), text("{\"k\": 1}"), text("{\"j\":1}")]),
                ins(&bag, vec![text("2"), Datum::Null, Datum::Null]),
                ins(&pairs, vec![text("1"), text("1"), text("a")]),
                ins(&pairs, vec![text("1"), text("2"), text("b")]),
            ],
        ),
        txn(
            0x300,
            vec![
                // Unchanged TOAST: body keeps its 10 kB value.
                Change::Update { rel: items.clone(), old: None, new: Tuple(vec![text("1"), text("uno"), Datum::Unchanged]) },
                // Key change: old key given.
                Change::Update {
                    rel: items.clone(),
                    old: Some(Tuple(vec![text("2"), Datum::Null, Datum::Null])),
                    new: Tuple(vec![text("20"), text("twenty"), text("moved")]),
                },
                Change::Delete { rel: items.clone(), old: Tuple(vec![text("3"), Datum::Null, Datum::Null]) },
                // FULL identity: one of two identical rows, and a row with NULLs.
                Change::Delete { rel: bag.clone(), old: Tuple(vec![text("1"), text("{\"k\": 1}"), text("{\"j\":1}")]) },
                Change::Update {
                    rel: bag.clone(),
                    old: Some(Tuple(vec![text("2"), Datum::Null, Datum::Null])),
                    new: Tuple(vec![text("2"), text("[1, 2]"), Datum::Null]),
                },
                // INDEX identity on two columns.
                Change::Update {
                    rel: pairs.clone(),
                    old: None,
                    new: Tuple(vec![text("1"), text("2"), text("bb")]),
                },
                Change::Delete { rel: pairs.clone(), old: Tuple(vec![text("1"), text("1"), Datum::Null]) },
            ],
        ),
        txn(
            0x400,
            vec![
                Change::Truncate { rels: vec![log.clone()], cascade: false, restart_identity: false },
                ins(&log, vec![text("2"), text("after truncate")]),
                Change::Message {
                    prefix: "tandem.ddl".into(),
                    content: Bytes::from(
                        serde_json::json!({
                            "query": "CREATE TABLE notes (id int PRIMARY KEY, t text); INSERT INTO notes VALUES (99, 'not replayed')",
                            "search_path": "public",
                            "role": "postgres",
                            "tag": "CREATE TABLE"
                        })
                        .to_string(),
                    ),
                },
                ins(
                    &rel(5, "notes", ReplicaIdentity::Default, vec![col("id", 23, true), col("t", 25, false)]),
                    vec![text("1"), text("created by DDL in the same transaction")],
                ),
                Change::Message { prefix: "other.app".into(), content: Bytes::from_static(b"ignored") },
            ],
        ),
    ]
}

async fn contents(c: &tokio_postgres::Client) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for q in [
        "SELECT id || ':' || name || ':' || coalesce(length(body)::text, 'null') FROM items ORDER BY id",
        "SELECT at || ':' || msg FROM log ORDER BY 1",
        "SELECT a || ':' || coalesce(b::text, 'null') || ':' || coalesce(c::text, 'null') FROM bag ORDER BY 1",
        "SELECT x || ',' || y || ':' || v FROM pairs ORDER BY 1",
        "SELECT id || ':' || t FROM notes ORDER BY 1",
    ] {
        for row in c.query(q, &[]).await? {
            out.push(row.get::<_, String>(0));
        }
    }
    Ok(out)
}

fn expected() -> Vec<String> {
    [
        "1:uno:10000",
        "20:twenty:5",
        "2:after truncate",
        "1:{\"k\": 1}:{\"j\":1}",
        "2:[1, 2]:null",
        "1,2:bb",
        "1:created by DDL in the same transaction",
    ]
    .map(String::from)
    .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_hand_built_transactions_exactly_once() -> Result<()> {
    let replica = prepared_replica().await?;
    let cfg = replica.config();
    let (tx, rx) = watch::channel(Lsn::ZERO);
    let mut applier = Applier::connect(&cfg, "app", SOURCE, tx.clone(), None).await?;
    assert_eq!(*rx.borrow(), Lsn(0x100));
    let txns = stream();
    let mut outcomes = Vec::new();
    for t in &txns {
        outcomes.push(applier.apply(t).await?);
    }
    assert_eq!(outcomes[0], Applied::Skipped);
    assert!(outcomes[1..].iter().all(|o| matches!(o, Applied::Committed { .. })), "{outcomes:?}");
    assert_eq!(*rx.borrow(), Lsn(0x400));
    let c = replica.connect("app").await?;
    assert_eq!(contents(&c).await?, expected());
    assert_eq!(session::read_progress(&c, SOURCE).await?, Some(Lsn(0x400)));

    // "Crash": a new process re-reads the stream from the start. Nothing is applied twice.
    drop(applier);
    let mut again = Applier::connect(&cfg, "app", SOURCE, tx.clone(), None).await?;
    assert_eq!(again.progress(), Lsn(0x400));
    assert_eq!(again.apply_batch(&txns).await?, Applied::Skipped);
    assert_eq!(contents(&c).await?, expected());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_writer_and_a_failed_batch_apply_nothing_twice() -> Result<()> {
    let replica = prepared_replica().await?;
    let cfg = replica.config();
    let (tx, _rx) = watch::channel(Lsn::ZERO);
    let txns = stream();
    // Two writers that both believe the replica is at 0/100 (an old process
    // still running next to its restarted successor).
    let mut a = Applier::connect(&cfg, "app", SOURCE, tx.clone(), None).await?;
    let mut b = Applier::connect(&cfg, "app", SOURCE, tx.clone(), None).await?;
    assert!(matches!(a.apply_batch(&txns[..3]).await?, Applied::Committed { .. }));
    // b's progress guard finds the batch applied and rolls back.
    assert_eq!(b.apply_batch(&txns[..3]).await?, Applied::Skipped);
    assert_eq!(b.progress(), Lsn(0x300));
    let c = replica.connect("app").await?;
    let (logs, _) = table_checksum(&c, "log").await?;
    assert_eq!(logs, 2, "keyless table rows must not be duplicated");

    // A batch that fails half-way leaves nothing behind and can be retried.
    let items = rel(
        1,
        "items",
        ReplicaIdentity::Default,
        vec![col("id", 23, true), col("name", 25, false), col("body", 25, false)],
    );
    let bad = txn(
        0x500,
        vec![
            Change::Insert { rel: items.clone(), new: Tuple(vec![text("7"), text("seven"), Datum::Null]) },
            Change::Insert { rel: items.clone(), new: Tuple(vec![text("7"), text("duplicate key"), Datum::Null]) },
        ],
    );
    assert!(a.apply(&bad).await.is_err());
    assert_eq!(a.progress(), Lsn(0x300));
    let seven: i64 = c.query_one("SELECT count(*) FROM items WHERE id = 7", &[]).await?.get(0);
    assert_eq!(seven, 0);
    assert!(matches!(a.apply(&txns[3]).await?, Applied::Committed { .. }));
    assert_eq!(contents(&c).await?, expected());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_task_follows_the_change_log() -> Result<()> {
    use tandem_replicator::apply::{run_apply_task, ApplyTask};
    use tandem_replicator::changelog::{ChangeLog, ChangeLogOptions};
    use tandem_replicator::status::StatusBoard;

    let replica = prepared_replica().await?;
    let dir = tempfile::tempdir()?;
    let log = ChangeLog::open(dir.path(), ChangeLogOptions::default())?;
    let board = StatusBoard::new("async");
    let (tx, mut rx) = watch::channel(Lsn::ZERO);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = ApplyTask {
        replica_name: "r1".into(),
        replica: replica.config(),
        database: "app".into(),
        source: SOURCE.into(),
        log: log.clone(),
        applied: tx,
        reporter: Some(board.replica("r1", "app")),
        retry_delay: Duration::from_millis(200),
        async_commit: true,
    };
    let handle = tokio::spawn(run_apply_task(task, shutdown.clone()));
    for t in stream() {
        board.record_source("app", t.commit_lsn);
        log.append(t.commit_lsn, tandem_replicator::change::encode(&t)).await?;
    }
    tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|l| *l >= Lsn(0x400))).await??;
    let c = replica.connect("app").await?;
    assert_eq!(contents(&c).await?, expected());
    let report = board.report();
    assert_eq!(report.replicas[0].applied_lsn, Lsn(0x400));
    assert_eq!(report.replicas[0].lag_bytes, 0);
    shutdown.cancel();
    handle.await??;
    Ok(())
}

/// The `tandem.ddl` messages (and row-change lines) a test_decoding slot saw, in order.
async fn decoded(c: &tokio_postgres::Client, slot: &str) -> Result<Vec<String>> {
    let rows = c.query("SELECT data FROM pg_logical_slot_get_changes($1, NULL, NULL)", &[&slot]).await?;
    Ok(rows
        .iter()
        .map(|r| r.get::<_, String>(0))
        .filter(|d| !d.starts_with("BEGIN") && !d.starts_with("COMMIT"))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_is_captured_on_the_primary_and_replayed_on_a_replica() -> Result<()> {
    use tandem_replicator::ddl::{install_capture, DdlMessage, DDL_PREFIX};

    let primary = Pg::start("pw")?;
    let admin = primary.connect("postgres").await?;
    admin.batch_execute("CREATE DATABASE app").await?;
    let p = primary.connect("app").await?;
    install_capture(&p).await?;
    install_capture(&p).await?; // idempotent
    p.query_one("SELECT pg_create_logical_replication_slot('t', 'test_decoding')", &[]).await?;

    let app = primary.connect("app").await?;
    app.batch_execute("SET search_path = public; CREATE TABLE t1 (id int PRIMARY KEY)").await?;
    app.batch_execute("CREATE TABLE t2 (x int); INSERT INTO t2 VALUES (1); CREATE INDEX t2_x ON t2 (x)").await?;
    app.batch_execute("CREATE TEMP TABLE tmp (x int)").await?;
    app.batch_execute("DROP TABLE tmp").await?;
    app.batch_execute("CREATE TABLE t3 AS SELECT 7 AS x").await?;
    app.batch_execute("SET tandem.skip_ddl = on; CREATE TABLE hidden (x int); RESET tandem.skip_ddl").await?;
    app.batch_execute("BEGIN; CREATE TABLE gone (x int); ROLLBACK").await?;
    app.batch_execute("ALTER TABLE t1 ADD COLUMN name text").await?;

    let lines = decoded(&p, "t").await?;
    let prefix = format!("message: transactional: 1 prefix: {DDL_PREFIX}, sz: ");
    let mut messages = Vec::new();
    for line in &lines {
        if let Some(rest) = line.strip_prefix(&prefix) {
            let content = rest.split_once(" content:").map(|(_, c)| c).unwrap_or_default();
            messages.push(DdlMessage::parse(content.as_bytes())?);
        }
    }
    let queries: Vec<&str> = messages.iter().map(|m| m.query.as_str()).collect();
    assert_eq!(
        queries,
        vec![
            "SET search_path = public; CREATE TABLE t1 (id int PRIMARY KEY)",
            "CREATE TABLE t2 (x int); INSERT INTO t2 VALUES (1); CREATE INDEX t2_x ON t2 (x)",
            "CREATE TABLE t3 AS SELECT 7 AS x",
            "ALTER TABLE t1 ADD COLUMN name text",
        ],
        "{lines:#?}"
    );
    assert_eq!(messages[0].search_path, "public");
    assert_eq!(messages[0].role, "postgres");
    // CREATE TABLE AS: the message comes before the table's rows.
    let msg_at = lines.iter().position(|l| l.contains("CREATE TABLE t3")).unwrap_or(usize::MAX);
    let row_at = lines.iter().position(|l| l.starts_with("table public.t3: INSERT")).unwrap_or(0);
    assert!(msg_at < row_at, "{lines:#?}");

    // Replay on a replica through the applier, one transaction per message.
    let replica = Pg::start("pw")?;
    replica.connect("postgres").await?.batch_execute("CREATE DATABASE app").await?;
    let r = replica.connect("app").await?;
    session::ensure_progress_table(&r).await?;
    session::write_progress(&r, SOURCE, Lsn(1)).await?;
    let (tx, _rx) = watch::channel(Lsn::ZERO);
    let mut applier = Applier::connect(&replica.config(), "app", SOURCE, tx, None).await?;
    for (i, m) in messages.iter().enumerate() {
        let content = Bytes::from(serde_json::to_vec(m)?);
        let t = txn(0x10 + i as u64, vec![Change::Message { prefix: DDL_PREFIX.into(), content }]);
        applier.apply(&t).await?;
    }
    let cols: Vec<String> = r
        .query(
            "SELECT table_name || '.' || column_name FROM information_schema.columns \
             WHERE table_schema = 'public' ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(cols, vec!["t1.id", "t1.name", "t2.x", "t3.x"]);
    // DML of the captured strings was not replayed: its rows come through the stream.
    assert_eq!(table_checksum(&r, "t2").await?.0, 0);
    assert_eq!(table_checksum(&r, "t3").await?.0, 0);
    let index: bool = r.query_one("SELECT to_regclass('public.t2_x') IS NOT NULL", &[]).await?.get(0);
    assert!(index);
    Ok(())
}
