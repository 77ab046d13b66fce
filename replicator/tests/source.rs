//! The replication source against a real PostgreSQL 15: checks, publication,
//! slot with exported snapshot, streaming and decoding of every change kind,
//! resume from the confirmed position, and sync-mode flush gated on replicas.
//!
//! A minimal server helper lives here until the shared test kit lands.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tandem_core::Lsn;
use tandem_replicator::change::{self, Change, Datum, ReplicaIdentity, Transaction, Tuple};
use tandem_replicator::config::Mode;
use tandem_replicator::source::{
    primary, stream_database, AppliedLsn, ChangeSink, HeldSnapshot, ReplicationConnection, StreamOptions, StreamStats,
};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

const PASSWORD: &str = "s3cret-pw";

fn pg_bin() -> PathBuf {
    if let Ok(p) = std::env::var("PG_BIN") {
        return PathBuf::from(p);
    }
    PathBuf::from("/usr/lib/postgresql/15/bin")
}

/// One PostgreSQL server in a temporary directory, stopped on drop.
struct Pg {
    _dir: tempfile::TempDir,
    data: PathBuf,
    port: u16,
}

fn as_postgres(cmd: &str, args: &[&str]) {
    let status = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(pg_bin().join(cmd))
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run PostgreSQL binary");
    assert!(status.success(), "{cmd} {args:?} failed");
}

impl Pg {
    fn start() -> Pg {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status().unwrap();
        as_postgres(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--pwfile",
                pwfile.to_str().unwrap(),
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let opts = format!(
            "-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c wal_level=logical \
             -c max_replication_slots=10 -c max_wal_senders=10 -c fsync=off -c wal_sender_timeout=60s",
            dir.path().display()
        );
        let log = dir.path().join("log");
        as_postgres("pg_ctl", &["-D", data.to_str().unwrap(), "-l", log.to_str().unwrap(), "-o", &opts, "-w", "start"]);
        Pg { _dir: dir, data, port }
    }

    fn dsn(&self) -> String {
        format!("postgres://postgres:{PASSWORD}@127.0.0.1:{}/postgres", self.port)
    }

    fn config(&self) -> tokio_postgres::Config {
        self.dsn().parse().unwrap()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin().join("pg_ctl"))
            .args(["-D", self.data.to_str().unwrap_or_default(), "-m", "immediate", "stop"])
            .stdout(std::process::Stdio::null())
            .status();
    }
}

/// An in-memory change log with the same contract as `ChangeLog`.
#[derive(Clone, Default)]
struct MemSink {
    records: Arc<Mutex<Vec<(Lsn, Bytes)>>>,
    notify: Arc<Notify>,
}

impl ChangeSink for MemSink {
    type Error = std::io::Error;
    fn last_lsn(&self) -> Lsn {
        self.records.lock().unwrap().last().map(|r| r.0).unwrap_or(Lsn::ZERO)
    }
    fn append(&self, lsn: Lsn, payload: Bytes) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send {
        // Queued at the call, as the contract asks.
        {
            let mut r = self.records.lock().unwrap();
            if r.last().is_none_or(|l| lsn > l.0) {
                r.push((lsn, payload));
            }
        }
        self.notify.notify_waiters();
        std::future::ready(Ok(()))
    }
}

impl MemSink {
    async fn wait_for(&self, n: usize) -> Vec<Transaction> {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let notified = self.notify.notified();
                {
                    let r = self.records.lock().unwrap();
                    if r.len() >= n {
                        return r.iter().map(|(_, b)| change::decode(b).unwrap()).collect();
                    }
                }
                notified.await;
            }
        })
        .await
        .expect("transactions did not arrive")
    }
}

async fn sql(pg: &Pg) -> tokio_postgres::Client {
    primary::connect_sql(&pg.config(), "postgres", "tandem-test").await.unwrap()
}

fn opts(slot: &str, mode: Mode) -> StreamOptions {
    StreamOptions {
        database: "postgres".into(),
        slot: slot.into(),
        publication: "tandem".into(),
        mode,
        sync_quorum: 1,
        feedback_interval: Duration::from_secs(1),
        buffer: 16,
    }
}

/// Runs the stream loop in a task until the returned token is cancelled.
fn spawn_stream(
    conn: ReplicationConnection,
    slot: &str,
    mode: Mode,
    sink: MemSink,
    applied: Vec<AppliedLsn>,
) -> (CancellationToken, tokio::task::JoinHandle<()>, watch::Receiver<StreamStats>) {
    let stop = CancellationToken::new();
    let (stats_tx, stats) = watch::channel(StreamStats::default());
    let o = opts(slot, mode);
    let s = stop.clone();
    let task = tokio::spawn(async move {
        stream_database(conn, Lsn::ZERO, &o, &sink, applied, &stats_tx, &s).await.unwrap();
    });
    (stop, task, stats)
}

fn text(s: &str) -> Datum {
    Datum::Text(Bytes::copy_from_slice(s.as_bytes()))
}

async fn confirmed_flush(client: &tokio_postgres::Client, slot: &str) -> Lsn {
    primary::slot_state(client, slot).await.unwrap().unwrap().confirmed_flush
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_every_change_kind_and_resumes_after_confirmed() {
    let pg = Pg::start();
    let client = sql(&pg).await;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             CREATE TABLE nokey (x int, y text); ALTER TABLE nokey REPLICA IDENTITY FULL;
             INSERT INTO t VALUES (100, 'before the slot');",
        )
        .await
        .unwrap();

    primary::check_primary(&client, 1, 1).await.unwrap();
    assert_eq!(
        primary::list_databases(&client, &[]).await.unwrap().iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
        ["postgres"]
    );
    assert!(primary::ensure_publication(&client, "tandem").await.unwrap());
    assert!(!primary::ensure_publication(&client, "tandem").await.unwrap());

    // Slot with an exported snapshot: the snapshot sees the row committed before it.
    let mut conn = ReplicationConnection::connect(&pg.config(), "postgres", "tandem_test").await.unwrap();
    let sys = conn.identify_system().await.unwrap();
    assert_eq!(sys.database.as_deref(), Some("postgres"));
    let held = HeldSnapshot::create(conn, "tandem_t", false).await.unwrap();
    assert!(held.consistent_point() > Lsn::ZERO);
    client.batch_execute("INSERT INTO t VALUES (101, 'after the slot')").await.unwrap();
    let copy = sql(&pg).await;
    copy.batch_execute(&format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '{}'",
        held.snapshot_name()
    ))
    .await
    .unwrap();
    let ids: Vec<i32> =
        copy.query("SELECT id FROM t ORDER BY id", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, [100], "the exported snapshot must not see later commits");
    copy.batch_execute("COMMIT").await.unwrap();
    let conn = held.release();

    let sink = MemSink::default();
    let (stop, task, stats) = spawn_stream(conn, "tandem_t", Mode::Async, sink.clone(), vec![]);

    client
        .batch_execute(
            "BEGIN;
             UPDATE t SET v = 'changed' WHERE id = 101;
             INSERT INTO nokey VALUES (1, 'one');
             UPDATE nokey SET y = 'uno' WHERE x = 1;
             DELETE FROM t WHERE id = 100;
             COMMIT;
             BEGIN;
             TRUNCATE nokey;
             SELECT pg_logical_emit_message(true, 'tandem', 'x');
             SELECT pg_logical_emit_message(false, 'tandem', 'not in the log');
             COMMIT;",
        )
        .await
        .unwrap();
    let txns = sink.wait_for(3).await;

    // The insert after the slot was created, exactly once.
    let t0 = &txns[0];
    assert_eq!(t0.changes.len(), 1);
    let Change::Insert { rel, new } = &t0.changes[0] else { panic!("{:?}", t0.changes[0]) };
    assert_eq!((rel.schema.as_str(), rel.name.as_str()), ("public", "t"));
    assert_eq!(rel.replica_identity, ReplicaIdentity::Default);
    assert_eq!(
        rel.columns.iter().map(|c| (c.name.as_str(), c.type_oid, c.is_key)).collect::<Vec<_>>(),
        [("id", 23, true), ("v", 25, false)]
    );
    assert_eq!(new, &Tuple(vec![text("101"), text("after the slot")]));

    let t1 = &txns[1];
    assert!(t1.commit_lsn > t0.commit_lsn && t1.end_lsn > t1.commit_lsn);
    assert_eq!(t1.database, "postgres");
    let rels: Vec<_> = t1.changes.iter().map(|c| c.relations()[0].name.clone()).collect();
    assert_eq!(rels, ["t", "nokey", "nokey", "t"]);
    let nokey = t1.changes[1].relations()[0].clone();
    assert_eq!(nokey.replica_identity, ReplicaIdentity::Full);
    let t_rel = t1.changes[0].relations()[0].clone();
    assert_eq!(
        t1.changes,
        [
            Change::Update { rel: t_rel.clone(), old: None, new: Tuple(vec![text("101"), text("changed")]) },
            Change::Insert { rel: nokey.clone(), new: Tuple(vec![text("1"), text("one")]) },
            Change::Update {
                rel: nokey.clone(),
                old: Some(Tuple(vec![text("1"), text("one")])),
                new: Tuple(vec![text("1"), text("uno")]),
            },
            Change::Delete { rel: t_rel.clone(), old: Tuple(vec![text("100"), Datum::Null]) },
        ]
    );
    assert_eq!(
        txns[2].changes,
        [
            Change::Truncate { rels: vec![nokey.clone()], cascade: false, restart_identity: false },
            Change::Message { prefix: "tandem".into(), content: Bytes::from_static(b"x") },
        ]
    );

    // Async mode: the slot confirms what the change log holds.
    let last_end = txns[2].end_lsn;
    tokio::time::timeout(Duration::from_secs(10), async {
        while confirmed_flush(&client, "tandem_t").await < last_end {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("slot never confirmed the flushed position");
    assert_eq!(stats.borrow().transactions, 3);

    // Kill the stream without a goodbye, commit more, and reconnect.
    task.abort();
    let _ = task.await;
    drop(stop);
    client.batch_execute("INSERT INTO t VALUES (102, 'while down')").await.unwrap();
    let sink2 = MemSink::default();
    let conn = loop {
        primary::release_slot(&client, "tandem_t").await.unwrap();
        let mut c = ReplicationConnection::connect(&pg.config(), "postgres", "tandem_test").await.unwrap();
        // Probe: START_REPLICATION fails while the old walsender still holds the slot.
        match primary::slot_state(&client, "tandem_t").await.unwrap().unwrap().active_pid {
            None => break c,
            Some(_) => {
                c.simple_query("SELECT 1").await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let (stop2, task2, _) = spawn_stream(conn, "tandem_t", Mode::Async, sink2.clone(), vec![]);
    let again = sink2.wait_for(1).await;
    assert!(again[0].commit_lsn > last_end, "re-delivered a flushed transaction: {:?}", again[0]);
    let Change::Insert { new, .. } = &again[0].changes[0] else { panic!() };
    assert_eq!(new.0[0], text("102"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink2.records.lock().unwrap().len(), 1);
    stop2.cancel();
    task2.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mode_holds_commits_until_a_replica_applied_them() {
    let pg = Pg::start();
    let client = sql(&pg).await;
    client.batch_execute("CREATE TABLE s (id int PRIMARY KEY)").await.unwrap();
    primary::ensure_publication(&client, "tandem").await.unwrap();
    let conn = ReplicationConnection::connect(&pg.config(), "postgres", "tandem_sync_1").await.unwrap();
    let held = HeldSnapshot::create(conn, "tandem_s", false).await.unwrap();
    let conn = held.release();

    let (applied_tx, applied_rx) = watch::channel(Lsn::ZERO);
    let sink = MemSink::default();
    let (stop, task, _) = spawn_stream(conn, "tandem_s", Mode::Sync, sink.clone(), vec![applied_rx]);

    let value = primary::sync_standby_value(&["tandem_sync_1".into()]);
    assert_eq!(value, "FIRST 1 (\"tandem_sync_1\")");
    primary::set_sync_standbys(&client, &value).await.unwrap();
    assert!(primary::is_our_sync_value(&primary::show_sync_standbys(&client).await.unwrap(), "tandem_sync"));

    let writer = sql(&pg).await;
    let commit = tokio::spawn(async move { writer.batch_execute("INSERT INTO s VALUES (1)").await.unwrap() });
    let txn = sink.wait_for(1).await.remove(0);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!commit.is_finished(), "commit returned before any replica applied it");

    applied_tx.send(txn.commit_lsn).unwrap();
    tokio::time::timeout(Duration::from_secs(5), commit).await.expect("commit still waiting after apply").unwrap();

    // Release the primary before stopping (otherwise the drop would hang nothing, but be tidy).
    primary::set_sync_standbys(&client, "").await.unwrap();
    stop.cancel();
    task.await.unwrap();
}

/// A replica side that copies nothing and "applies" by reading the change log.
#[derive(Default)]
struct FakeSide {
    copies: Mutex<Vec<tandem_replicator::seam::SnapshotInfo>>,
    seen: Arc<Mutex<Vec<Transaction>>>,
}

impl tandem_replicator::seam::ReplicaSide for FakeSide {
    fn needs_copy<'a>(
        &'a self,
        _: &'a tokio_postgres::Config,
        _: &'a tandem_replicator::ReplicaConfig,
        _: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<bool, tandem_replicator::seam::BoxError>> {
        Box::pin(async { Ok(false) })
    }
    fn initial_copy<'a>(
        &'a self,
        _: &'a tokio_postgres::Config,
        _: &'a tandem_replicator::ReplicaConfig,
        snap: &'a tandem_replicator::seam::SnapshotInfo,
    ) -> futures::future::BoxFuture<'a, Result<(), tandem_replicator::seam::BoxError>> {
        self.copies.lock().unwrap().push(snap.clone());
        Box::pin(async { Ok(()) })
    }
    fn spawn_applier(
        &self,
        _: &tandem_replicator::ReplicaConfig,
        _: &str,
        log: tandem_replicator::changelog::ChangeLog,
        shutdown: CancellationToken,
    ) -> Result<AppliedLsn, tandem_replicator::seam::BoxError> {
        let (tx, rx) = watch::channel(Lsn::ZERO);
        let mut reader = log.reader(Lsn::ZERO)?;
        let seen = self.seen.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    n = reader.next() => n,
                };
                let Ok((lsn, bytes)) = next else { return };
                seen.lock().unwrap().push(change::decode(&bytes).unwrap());
                let _ = tx.send(lsn);
            }
        });
        Ok(rx)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_copies_streams_and_gates_commits_in_sync_mode() {
    let pg = Pg::start();
    let client = sql(&pg).await;
    client.batch_execute("CREATE TABLE r (id int PRIMARY KEY)").await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut cfg = tandem_replicator::ReplicatorConfig::new(
        pg.dsn(),
        vec!["r1=postgres://postgres@127.0.0.1:1".parse().unwrap()],
        Mode::Sync,
        data.path().to_owned(),
    );
    cfg.feedback_interval_ms = 1000;
    cfg.replication = tandem_replicator::Replication::Logical;
    let cfg = Arc::new(cfg);

    for round in 1..=2 {
        let side = Arc::new(FakeSide::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(tandem_replicator::run_with(cfg.clone(), stop.clone(), side.clone()));
        tokio::time::timeout(Duration::from_secs(20), async {
            while !primary::is_our_sync_value(&primary::show_sync_standbys(&client).await.unwrap(), "tandem_replicator")
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("sync standby names never set");
        // The commit returns because the (fake) replica applied it.
        tokio::time::timeout(Duration::from_secs(10), client.batch_execute(&format!("INSERT INTO r VALUES ({round})")))
            .await
            .expect("commit not released in sync mode")
            .unwrap();
        let copies = side.copies.lock().unwrap().clone();
        assert_eq!(copies.len(), if round == 1 { 1 } else { 0 }, "initial copy only on slot creation");
        let seen = side.seen.lock().unwrap().clone();
        let ids: Vec<_> = seen
            .iter()
            .flat_map(|t| t.changes.iter())
            .map(|c| match c {
                Change::Insert { new, .. } => new.0[0].clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        let want: Vec<_> = (1..=round).map(|i| text(&i.to_string())).collect();
        assert_eq!(ids, want, "round {round}: every commit once, in order");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap().unwrap();
    }
    primary::set_sync_standbys(&client, "").await.unwrap();
}
