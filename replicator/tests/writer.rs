//! The hand-written writer session and the pipelined applier on it, against
//! a real PostgreSQL 15 server: one Sync per batch, error skipping, recovery.

mod common;

use std::sync::Arc;

use anyhow::Result;
use bytes::Bytes;
use common::Pg;
use tandem_core::Lsn;
use tandem_replicator::apply::writer::{conn::text_column, Event, WriterSession};
use tandem_replicator::apply::{session, Applied, Applier};
use tandem_replicator::change::{Change, Column, Datum, Relation, ReplicaIdentity, Transaction, Tuple};
use tokio::sync::watch;

const SOURCE: &str = "test-source";

/// Every event still to come, as short strings.
async fn collect(s: &mut WriterSession<&'static str>) -> Result<Vec<String>> {
    s.write_out().await?;
    let mut got = Vec::new();
    while let Some(e) = s.next_event().await? {
        got.push(match e {
            Event::Done { tag, rows, rolled_back } => {
                format!("done {} {rows}{}", tag.unwrap_or("-"), if rolled_back { " rb" } else { "" })
            }
            Event::Row(_) => continue,
            Event::Failed { tag, error } => format!("failed {} {}", tag.unwrap_or("-"), error.code),
            Event::Skipped(tag) => format!("skipped {}", tag.unwrap_or("-")),
            Event::Ready(s) => format!("ready {s:?}"),
        });
    }
    Ok(got)
}

/// One batch: BEGIN, an insert per id, COMMIT, Sync.
fn batch(s: &mut WriterSession<&'static str>, ids: &[&'static str]) -> Result<()> {
    let p = s.pipeline();
    p.bind_execute("begin", [], Some("begin"))?;
    for id in ids {
        p.bind_execute("ins", [Some(id.as_bytes())], Some(*id))?;
    }
    p.bind_execute("commit", [], Some("commit"))?;
    p.sync();
    Ok(())
}

async fn ids(c: &tokio_postgres::Client) -> Result<Vec<i32>> {
    Ok(c.query("SELECT id FROM t ORDER BY id", &[]).await?.iter().map(|r| r.get(0)).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_mid_batch_applies_nothing_of_it_or_after_it_until_rollback() -> Result<()> {
    let pg = Pg::start("pw")?;
    let c = pg.connect("postgres").await?;
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY)").await?;
    let mut s: WriterSession<&'static str> = WriterSession::connect(&pg.config(), "postgres").await?;
    let p = s.pipeline();
    p.parse("begin", "BEGIN")?;
    p.parse("commit", "COMMIT")?;
    p.parse("ins", "INSERT INTO t VALUES ($1)")?;
    batch(&mut s, &["1", "2"])?;
    // "3" twice: the duplicate fails; "4" and the COMMIT are never run.
    batch(&mut s, &["3", "3", "4"])?;
    // Pipelined behind the failure: its BEGIN fails in the failed transaction.
    batch(&mut s, &["5"])?;
    assert_eq!(
        collect(&mut s).await?,
        [
            "done begin 0",
            "done 1 1",
            "done 2 1",
            "done commit 0",
            "ready Idle",
            "done begin 0",
            "done 3 1",
            "failed 3 23505",
            "skipped 4",
            "skipped commit",
            "ready Failed",
            "failed begin 25P02",
            "skipped 5",
            "skipped commit",
            "ready Failed",
        ]
    );
    assert_eq!(ids(&c).await?, [1, 2]);

    // After ROLLBACK the session works again, prepared statements intact.
    s.simple_query("ROLLBACK").await?;
    batch(&mut s, &["3", "4"])?;
    let got = collect(&mut s).await?;
    assert_eq!(got.last().map(String::as_str), Some("ready Idle"));
    assert_eq!(ids(&c).await?, [1, 2, 3, 4]);
    let rows = s.query("SELECT count(*)::text, $1::text FROM t", &[Some("x")]).await?;
    assert_eq!(text_column(&rows[0], 0)?.as_deref(), Some("4"));
    assert_eq!(text_column(&rows[0], 1)?.as_deref(), Some("x"));
    // A failing query of the session's own is an error, not a broken session.
    assert!(s.query("SELECT nope", &[]).await.is_err());
    assert!(s.simple_query("SELECT 1").await.is_ok());
    assert!(!s.is_closed());
    Ok(())
}

fn rel() -> Arc<Relation> {
    let col = |name: &str, is_key| Column { name: name.into(), type_oid: 23, type_modifier: -1, is_key };
    Arc::new(Relation {
        oid: 1,
        schema: "public".into(),
        name: "t".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![col("id", true), col("v", false)],
    })
}

fn insert(id: i32) -> Change {
    Change::Insert {
        rel: rel(),
        new: Tuple(vec![Datum::Text(Bytes::from(id.to_string())), Datum::Text(Bytes::from_static(b"v"))]),
    }
}

fn txn(lsn: u64, changes: Vec<Change>) -> Transaction {
    Transaction {
        xid: lsn as u32,
        commit_lsn: Lsn(lsn),
        end_lsn: Lsn(lsn + 8),
        commit_time_us: 0,
        database: "postgres".into(),
        changes,
    }
}

async fn replica_with_table() -> Result<(Pg, tokio_postgres::Client)> {
    let pg = Pg::start("pw")?;
    let c = pg.connect("postgres").await?;
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)").await?;
    session::ensure_progress_table(&c).await?;
    session::write_progress(&c, SOURCE, Lsn(0x100)).await?;
    Ok((pg, c))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_batches_behind_a_failed_one_do_not_commit() -> Result<()> {
    let (pg, c) = replica_with_table().await?;
    let (tx, rx) = watch::channel(Lsn::ZERO);
    let mut a = Applier::connect(&pg.config(), "postgres", SOURCE, tx, None).await?;
    // Three batches in flight at once; the middle one hits a duplicate key.
    a.push(&txn(0x200, vec![insert(1)])).await?;
    a.seal(false).await?;
    a.push(&txn(0x300, vec![insert(2), insert(2)])).await?;
    a.seal(false).await?;
    a.push(&txn(0x400, vec![insert(3)])).await?;
    a.seal(false).await?;
    assert_eq!(a.sealed_in_flight(), 3);
    assert!(a.finish().await.is_err());
    assert_eq!(ids(&c).await?, [1]);
    assert_eq!(session::read_progress(&c, SOURCE).await?, Some(Lsn(0x200)));
    assert_eq!(a.progress(), Lsn(0x200));
    assert_eq!(*rx.borrow(), Lsn(0x200));

    // The same applier carries on: the batch after the bad one applies now.
    assert!(matches!(a.apply(&txn(0x400, vec![insert(3)])).await?, Applied::Committed { statements: 1 }));
    assert_eq!(ids(&c).await?, [1, 3]);
    assert_eq!(session::read_progress(&c, SOURCE).await?, Some(Lsn(0x400)));
    Ok(())
}

fn update(id: i32, v: &str) -> Change {
    Change::Update {
        rel: rel(),
        old: None,
        new: Tuple(vec![Datum::Text(Bytes::from(id.to_string())), Datum::Text(Bytes::from(v.to_owned()))]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_the_window_is_applied_whole() -> Result<()> {
    let (pg, c) = replica_with_table().await?;
    let (tx, _rx) = watch::channel(Lsn::ZERO);
    let mut a = Applier::connect(&pg.config(), "postgres", SOURCE, tx, None).await?;
    // 20,000 rows go in as multi-row INSERTs ...
    let rows: Vec<Change> = (0..20_000).map(insert).collect();
    assert!(matches!(a.apply(&txn(0x200, rows)).await?, Applied::Committed { statements: 20_000 }));
    // ... and 20,000 UPDATEs of distinct rows are 20,000 statements: more
    // answers than the in-flight window and more bytes than one write, so
    // the applier flushes and reads mid-batch.
    let rows: Vec<Change> = (0..20_000).map(|i| update(i, "w")).collect();
    assert!(matches!(a.apply(&txn(0x300, rows)).await?, Applied::Committed { statements: 20_000 }));
    let n: i64 = c.query_one("SELECT count(*) FROM t WHERE v = 'w'", &[]).await?.get(0);
    assert_eq!(n, 20_000);
    assert_eq!(session::read_progress(&c, SOURCE).await?, Some(Lsn(0x300)));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_batches_end_like_statement_by_statement() -> Result<()> {
    let (pg, c) = replica_with_table().await?;
    // `u` has a unique index besides its key: its UPDATEs must all run, in
    // order (dropping the first would make the second collide with row 1's old email).
    c.batch_execute(
        "CREATE TABLE u (id int PRIMARY KEY, email text UNIQUE); INSERT INTO u VALUES (1, 'a'), (2, 'b');          CREATE TABLE h (n text, v text)",
    )
    .await?;
    let col = |name: &str, is_key| Column { name: name.into(), type_oid: 25, type_modifier: -1, is_key };
    let u = Arc::new(Relation {
        oid: 2,
        schema: "public".into(),
        name: "u".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![col("id", true), col("email", false)],
    });
    let h = Arc::new(Relation {
        oid: 3,
        schema: "public".into(),
        name: "h".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![col("n", false), col("v", false)],
    });
    let tuple = |a: &str, b: Option<&str>| {
        Tuple(vec![
            Datum::Text(Bytes::from(a.to_owned())),
            b.map_or(Datum::Null, |b| Datum::Text(Bytes::from(b.to_owned()))),
        ])
    };
    let u_set = |id: &str, email: &str| Change::Update { rel: u.clone(), old: None, new: tuple(id, Some(email)) };
    let h_ins = |n: &str, v: Option<&str>| Change::Insert { rel: h.clone(), new: tuple(n, v) };
    let (tx, _rx) = watch::channel(Lsn::ZERO);
    let mut a = Applier::connect(&pg.config(), "postgres", SOURCE, tx, None).await?;
    // A TPC-B-like stream: hot rows of `t` updated again and again, history
    // rows, interleaved tables; all in one batch.
    let mut txns = vec![txn(0x200, (1..=3).map(insert).collect())];
    for i in 0..30u64 {
        let mut changes = vec![update(1 + (i % 3) as i32, &format!("v{i}")), h_ins(&i.to_string(), None)];
        if i == 10 {
            changes.extend([u_set("1", "c"), u_set("2", "a"), u_set("1", "d")]);
        }
        changes.push(h_ins(&format!("{i}b"), Some("x")));
        txns.push(txn(0x300 + i * 0x10, changes));
    }
    assert!(matches!(a.apply_batch(&txns).await?, Applied::Committed { .. }));
    let t_rows: Vec<(i32, String)> =
        c.query("SELECT id, v FROM t ORDER BY id", &[]).await?.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(t_rows, [(1, "v27".into()), (2, "v28".into()), (3, "v29".into())]);
    let u_rows: Vec<(i32, String)> =
        c.query("SELECT id, email FROM u ORDER BY id", &[]).await?.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(u_rows, [(1, "d".into()), (2, "a".into())]);
    let h_rows: i64 = c.query_one("SELECT count(*) FROM h WHERE (v IS NULL) = (n NOT LIKE '%b')", &[]).await?.get(0);
    assert_eq!(h_rows, 60);
    // What ran: 3 UPDATEs of `t` (the others were superseded), all 3 of `u`
    // (the writer's backend reports its counts when it exits).
    drop(a);
    let mut updated = Vec::new();
    for _ in 0..50 {
        updated = c
            .query(
                "SELECT relname::text, n_tup_upd FROM pg_stat_user_tables WHERE relname IN ('t', 'u') ORDER BY 1",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
            .collect();
        if updated.iter().all(|(_, n)| *n > 0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(updated, [("t".to_owned(), 3), ("u".to_owned(), 3)]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_facts_follow_the_catalog() -> Result<()> {
    use tandem_replicator::apply::facts::TableFacts;
    use tandem_replicator::apply::replies::Tag;

    let pg = Pg::start("pw")?;
    let c = pg.connect("postgres").await?;
    c.batch_execute(
        "CREATE TABLE a (id int PRIMARY KEY, v text); \
         CREATE TABLE b (id int PRIMARY KEY, e text UNIQUE); \
         CREATE TABLE f (id int, v text); ALTER TABLE f REPLICA IDENTITY FULL",
    )
    .await?;
    let named = |name: &str| Relation {
        oid: 1,
        schema: "public".into(),
        name: name.into(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![],
    };
    let mut s: WriterSession<Tag> = WriterSession::connect(&pg.config(), "postgres").await?;
    let facts = TableFacts::load(&mut s).await?;
    assert!(facts.independent);
    assert!(facts.collapsible(&named("a")));
    assert!(!facts.collapsible(&named("b")), "a unique index besides the key");
    assert!(!facts.collapsible(&named("f")), "identity FULL");
    assert!(!facts.collapsible(&named("missing")));

    c.batch_execute("CREATE TABLE kid () INHERITS (a)").await?;
    let facts = TableFacts::load(&mut s).await?;
    assert!(!facts.independent, "inheritance");
    assert!(!facts.collapsible(&named("a")));

    c.batch_execute(
        "DROP TABLE kid; \
         CREATE FUNCTION noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$; \
         CREATE TRIGGER t BEFORE UPDATE ON a FOR EACH ROW EXECUTE FUNCTION noop()",
    )
    .await?;
    assert!(TableFacts::load(&mut s).await?.independent, "an ordinary trigger does not fire on the writer");
    c.batch_execute("ALTER TABLE a ENABLE ALWAYS TRIGGER t").await?;
    assert!(!TableFacts::load(&mut s).await?.independent, "an ALWAYS trigger does");
    Ok(())
}
