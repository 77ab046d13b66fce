//! The protocol through the proxy: COPY both ways, cancel of a long query, LISTEN/NOTIFY,
//! errors inside transactions, notices, extended-protocol pipelining with tokio-postgres,
//! and large results.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt, TryStreamExt};
use tandem_tests::{init_tracing, Cluster, ClusterOptions};
use tokio::sync::mpsc;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, Notification};

/// Connects through the proxy and forwards notifications to a channel.
async fn connect_listening(c: &Cluster) -> anyhow::Result<(Client, mpsc::UnboundedReceiver<Notification>)> {
    let (client, mut conn) = tokio_postgres::connect(&c.dsn("postgres", "postgres"), tokio_postgres::NoTls).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let AsyncMessage::Notification(n) = m {
                let _ = tx.send(n);
            }
        }
    });
    Ok((client, rx))
}

/// SQLSTATE of a tokio-postgres error.
fn code(e: &tokio_postgres::Error) -> Option<&SqlState> {
    e.code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_errors_pipelining_and_large_results() -> anyhow::Result<()> {
    init_tracing();
    let c = Cluster::start(ClusterOptions::default())?;
    let r = copy_errors_body(&c).await;
    if r.is_err() {
        eprintln!("--- proxy log ---\n{}", c.proxy.log_tail());
    }
    r
}

async fn copy_errors_body(c: &Cluster) -> anyhow::Result<()> {
    let client = c.connect().await?;
    client.batch_execute("CREATE TABLE c (id int PRIMARY KEY, v text)").await?;

    // COPY FROM STDIN through the proxy.
    let sink = client.copy_in("COPY c FROM STDIN").await?;
    futures::pin_mut!(sink);
    let mut data = String::new();
    for i in 0..5000 {
        data.push_str(&format!("{i}\tvalue {i}\n"));
    }
    sink.send(Bytes::from(data)).await?;
    assert_eq!(sink.finish().await?, 5000);
    assert_eq!(c.primary.psql("postgres", "SELECT count(*) FROM c")?, "5000");
    // A bad row fails the COPY with the server's error; the session goes on.
    let sink = client.copy_in("COPY c FROM STDIN").await?;
    futures::pin_mut!(sink);
    sink.send(Bytes::from_static(b"9999\tok\nnot-a-number\tbad\n")).await?;
    let err = sink.finish().await.expect_err("bad COPY data must fail");
    assert_eq!(code(&err), Some(&SqlState::INVALID_TEXT_REPRESENTATION), "{err}");
    assert_eq!(c.primary.psql("postgres", "SELECT count(*) FROM c")?, "5000");

    // COPY TO STDOUT.
    c.wait_replicated()?;
    let stream = client.copy_out("COPY (SELECT * FROM c ORDER BY id) TO STDOUT").await?;
    let chunks: Vec<Bytes> = stream.try_collect().await?;
    let text: Vec<u8> = chunks.concat();
    let text = String::from_utf8(text)?;
    assert_eq!(text.lines().count(), 5000);
    assert_eq!(text.lines().next(), Some("0\tvalue 0"));
    // psql's \copy both ways.
    let out = c.psql("\\copy (SELECT id FROM c WHERE id < 3 ORDER BY id) TO STDOUT")?;
    assert_eq!(out, "0\n1\n2");
    c.psql("CREATE TABLE c2 (x int);\n\\copy c2 FROM STDIN\n1\n2\n\\.\n")?;
    assert_eq!(c.primary.psql("postgres", "SELECT sum(x) FROM c2")?, "3");

    // An error inside a transaction: the transaction is aborted until ROLLBACK, nothing of
    // it stays, and the client carries on.
    client.batch_execute("BEGIN; INSERT INTO c VALUES (-1, 'tx')").await?;
    let err = client.batch_execute("SELECT 1/0").await.expect_err("division by zero");
    assert_eq!(code(&err), Some(&SqlState::DIVISION_BY_ZERO));
    let err = client.batch_execute("SELECT 1").await.expect_err("aborted transaction");
    assert_eq!(code(&err), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    client.batch_execute("ROLLBACK").await?;
    assert_eq!(c.primary.psql("postgres", "SELECT count(*) FROM c WHERE id = -1")?, "0");
    let mut client = client;
    {
        let tx = client.transaction().await?;
        tx.execute("INSERT INTO c VALUES (-2, 'tx')", &[]).await?;
        let err = tx.execute("INSERT INTO c VALUES (-2, 'dup')", &[]).await.expect_err("duplicate");
        assert_eq!(code(&err), Some(&SqlState::UNIQUE_VIOLATION));
        // Dropping the transaction rolls back.
    }
    assert_eq!(c.primary.psql("postgres", "SELECT count(*) FROM c WHERE id = -2")?, "0");
    assert_eq!(client.query_one("SELECT 7", &[]).await?.get::<_, i32>(0), 7);
    // Errors outside transactions, simple and extended.
    let err = client.simple_query("SELECT * FROM nope").await.expect_err("no table");
    assert_eq!(code(&err), Some(&SqlState::UNDEFINED_TABLE));
    let err = client.prepare("SELEC 1").await.expect_err("syntax");
    assert_eq!(code(&err), Some(&SqlState::SYNTAX_ERROR));

    // Pipelining: many requests in flight on one connection, an error among them; each
    // gets its own answer, in order.
    let stmt = client.prepare("SELECT v FROM c WHERE id = $1").await?;
    let futures = (0..60).map(|i| {
        let (client, stmt) = (&client, &stmt);
        async move {
            if i == 30 {
                client.query_one("SELECT 1/0", &[]).await.map(|_| String::new())
            } else if i % 10 == 0 {
                client
                    .query_one("INSERT INTO c VALUES ($1, 'p') RETURNING v", &[&(10_000 + i)])
                    .await
                    .map(|r| r.get::<_, String>(0))
            } else {
                client.query_one(stmt, &[&i]).await.map(|r| r.get::<_, String>(0))
            }
        }
    });
    let results = futures::future::join_all(futures).await;
    for (i, r) in results.iter().enumerate() {
        match (i, r) {
            (30, Err(e)) => assert_eq!(code(e), Some(&SqlState::DIVISION_BY_ZERO)),
            (i, Ok(v)) if i % 10 == 0 => assert_eq!(v, "p"),
            (i, Ok(v)) => assert_eq!(v, &format!("value {i}")),
            (i, Err(e)) => panic!("request {i} failed: {e}"),
        }
    }
    assert_eq!(c.primary.psql("postgres", "SELECT count(*) FROM c WHERE id >= 10000")?, "5");

    // A large result streams through (about 20 MB).
    let rows = client.query("SELECT repeat('x', 1000) FROM generate_series(1, 20000)", &[]).await?;
    assert_eq!(rows.len(), 20000);
    assert_eq!(rows[19999].get::<_, String>(0).len(), 1000);
    // Empty query and notices.
    assert!(client.simple_query("").await.is_ok());
    let out =
        c.psql_raw(&c.dsn("postgres", "postgres"), &[], "DO $$ BEGIN RAISE NOTICE 'hello from %', 'plpgsql'; END $$")?;
    assert!(out.status.success() && out.stderr.contains("hello from plpgsql"), "{out:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_a_long_query() -> anyhow::Result<()> {
    init_tracing();
    let c = Cluster::start(ClusterOptions { replicas: 1, ..Default::default() })?;
    let client = c.connect().await?;
    for (what, sql) in [
        // pg_sleep is VOLATILE: it runs on the primary.
        ("primary", "SELECT pg_sleep(30)"),
        // A long read runs on the replica.
        ("replica", "SELECT count(*) FROM generate_series(1, 2000000000)"),
    ] {
        let token = client.cancel_token();
        let started = Instant::now();
        let canceller = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            token.cancel_query(tokio_postgres::NoTls).await
        });
        let err = client.simple_query(sql).await.expect_err("cancelled");
        canceller.await??;
        assert_eq!(code(&err), Some(&SqlState::QUERY_CANCELED), "{what}: {err}");
        assert!(started.elapsed() < Duration::from_secs(15), "{what}: cancel took {:?}", started.elapsed());
        // The session goes on.
        assert_eq!(client.query_one("SELECT 1", &[]).await?.get::<_, i32>(0), 1);
    }
    // Inside a transaction: the cancel aborts the transaction, ROLLBACK recovers.
    client.batch_execute("BEGIN").await?;
    let token = client.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(tokio_postgres::NoTls).await
    });
    let err = client.simple_query("SELECT pg_sleep(30)").await.expect_err("cancelled");
    canceller.await??;
    assert_eq!(code(&err), Some(&SqlState::QUERY_CANCELED));
    client.batch_execute("ROLLBACK").await?;
    // A cancel while idle hits nothing.
    client.cancel_token().cancel_query(tokio_postgres::NoTls).await?;
    assert_eq!(client.query_one("SELECT 2", &[]).await?.get::<_, i32>(0), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify() -> anyhow::Result<()> {
    init_tracing();
    for mode in ["session", "transaction"] {
        let c = Cluster::start(ClusterOptions { replicas: 1, pool_mode: mode, ..Default::default() })?;
        let (listener, mut notes) = connect_listening(&c).await?;
        listener.batch_execute("LISTEN jobs").await?;
        let sender = c.connect().await?;
        for i in 0..3 {
            sender.batch_execute(&format!("NOTIFY jobs, 'job {i}'")).await?;
            // The listener keeps working meanwhile.
            assert_eq!(listener.query_one("SELECT 1", &[]).await?.get::<_, i32>(0), 1);
        }
        // Also from outside the proxy, straight to the primary.
        c.primary.psql("postgres", "SELECT pg_notify('jobs', 'direct')")?;
        let mut got = Vec::new();
        while got.len() < 4 {
            let n = tokio::time::timeout(Duration::from_secs(10), notes.recv())
                .await
                .map_err(|_| anyhow::anyhow!("{mode}: only {got:?} arrived"))?
                .ok_or_else(|| anyhow::anyhow!("{mode}: connection closed"))?;
            assert_eq!(n.channel(), "jobs");
            got.push(n.payload().to_owned());
        }
        assert_eq!(got, ["job 0", "job 1", "job 2", "direct"], "{mode}");
        listener.batch_execute("UNLISTEN *").await?;
    }
    Ok(())
}
