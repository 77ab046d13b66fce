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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_the_window_is_applied_whole() -> Result<()> {
    let (pg, c) = replica_with_table().await?;
    let (tx, _rx) = watch::channel(Lsn::ZERO);
    let mut a = Applier::connect(&pg.config(), "postgres", SOURCE, tx, None).await?;
    // 20,000 rows: more answers than the in-flight window and more bytes
    // than one write, so the applier flushes and reads mid-batch.
    let rows: Vec<Change> = (0..20_000).map(insert).collect();
    assert!(matches!(a.apply(&txn(0x200, rows)).await?, Applied::Committed { statements: 20_000 }));
    let n: i64 = c.query_one("SELECT count(*) FROM t", &[]).await?.get(0);
    assert_eq!(n, 20_000);
    assert_eq!(session::read_progress(&c, SOURCE).await?, Some(Lsn(0x200)));
    Ok(())
}
