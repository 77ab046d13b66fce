//! Routing through the proxy, checked against real servers: which node served each kind of
//! statement, reads spread over two replicas, read-your-writes while replicas lag,
//! `BEGIN READ ONLY` on a replica, a replica outage, and `--no-read-split`.
//!
//! How a test knows the node: `pg_is_in_recovery()` is VOLATILE in pg_proc, so a statement
//! calling it is (rightly, by the design's rule) sent to the primary. Tests therefore read
//! it through the view `whereami` (the classifier does not look into views), or use the
//! STABLE `current_setting('in_hot_standby')` ('on' on a standby) and `inet_server_port()`.

use std::collections::HashSet;
use std::time::Duration;

use tandem_tests::{init_tracing, wait_until, Cluster, ClusterOptions};
use tokio_postgres::Client;

/// View through which reads learn where they ran.
const WHEREAMI: &str = "CREATE VIEW whereami AS SELECT pg_is_in_recovery() AS standby";

/// Whether `sql` ran on a standby; its first column is `pg_is_in_recovery()` (`t`) or
/// `current_setting('in_hot_standby')` (`on`).
async fn on_replica(client: &Client, sql: &str) -> anyhow::Result<bool> {
    let rows = client.simple_query(sql).await?;
    for m in rows {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            return Ok(matches!(r.get(0), Some("t") | Some("on")));
        }
    }
    Err(anyhow::anyhow!("no row from {sql}"))
}

/// Waits until this client's reads are served by replicas again after its writes (the
/// proxy keeps them on the primary until a replica has replayed them).
async fn reads_back_on_replicas(client: &Client) -> anyhow::Result<()> {
    for _ in 0..100 {
        if on_replica(client, "SELECT standby FROM whereami").await? {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(anyhow::anyhow!("reads did not return to the replicas"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_go_where_they_belong() -> anyhow::Result<()> {
    init_tracing();
    let c = Cluster::start(ClusterOptions::default())?;
    let client = c.connect().await?;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); CREATE SEQUENCE s; CREATE VIEW whereami AS SELECT pg_is_in_recovery() AS standby")
        .await?;
    c.wait_replicated()?;
    // The CREATEs were this client's writes: its reads stay on the primary until the proxy's
    // health probe has seen a replica replay them (read-your-writes), up to one interval.
    reads_back_on_replicas(&client).await?;

    // Plain reads, simple and extended protocol, go to a replica.
    assert!(on_replica(&client, "SELECT standby FROM whereami").await?);
    let row = client.query_one("SELECT standby FROM whereami", &[]).await?;
    assert!(row.get::<_, bool>(0), "extended-protocol read on a replica");

    // Reads spread over both replicas.
    // (Bounded by count, not by one round: a replica whose health probe has not yet seen
    // the latest WAL is skipped for this client's reads until it has.)
    let mut ports = HashSet::new();
    for _ in 0..300 {
        let row = client.query_one("SELECT inet_server_port()", &[]).await?;
        ports.insert(row.get::<_, i32>(0) as u16);
        if c.replicas.iter().all(|r| ports.contains(&r.port())) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let names: HashSet<_> = ports.iter().filter_map(|p| c.node_name(*p)).collect();
    assert!(names.contains("replica1") && names.contains("replica2"), "reads spread: {names:?}");

    // Writes and anything with effects go to the primary. A VOLATILE function makes a
    // statement a write, even this read-only one.
    assert!(!on_replica(&client, "SELECT pg_is_in_recovery()").await?);
    let row = client.query_one("INSERT INTO t VALUES (1, 'a') RETURNING pg_is_in_recovery()", &[]).await?;
    assert!(!row.get::<_, bool>(0), "INSERT on the primary");
    for sql in [
        "SELECT current_setting('in_hot_standby') FROM t WHERE id = 1 FOR UPDATE",
        "SELECT current_setting('in_hot_standby') FROM t WHERE id = 1 FOR SHARE",
        "SELECT current_setting('in_hot_standby'), nextval('s')",
        "/* tandem:primary */ SELECT current_setting('in_hot_standby')",
        "WITH x AS (INSERT INTO t VALUES (2, 'b') RETURNING id) SELECT current_setting('in_hot_standby') FROM x",
        "SELECT current_setting('in_hot_standby'), pg_advisory_xact_lock(1)",
        "SELECT current_setting('in_hot_standby'), random()",
    ] {
        assert!(!on_replica(&client, sql).await?, "{sql} must run on the primary");
    }

    // Inside an explicit transaction everything goes to the primary.
    client.batch_execute("BEGIN").await?;
    assert!(!on_replica(&client, "SELECT standby FROM whereami").await?);
    client.batch_execute("COMMIT").await?;
    let mut client = client;
    {
        let tx = client.transaction().await?;
        let row = tx.query_one("SELECT standby FROM whereami", &[]).await?;
        assert!(!row.get::<_, bool>(0), "extended protocol in a transaction");
        tx.commit().await?;
    }

    // ... unless it is read only (once the writes above are on the replicas: the client
    // reads its own writes).
    reads_back_on_replicas(&client).await?;
    client.batch_execute("BEGIN READ ONLY").await?;
    assert!(on_replica(&client, "SELECT standby FROM whereami").await?, "BEGIN READ ONLY on a replica");
    assert!(on_replica(&client, "SELECT current_setting('in_hot_standby')").await?);
    client.batch_execute("COMMIT").await?;
    {
        let tx = client.build_transaction().read_only(true).start().await?;
        let row = tx.query_one("SELECT standby FROM whereami", &[]).await?;
        assert!(row.get::<_, bool>(0), "START TRANSACTION READ ONLY on a replica");
        tx.commit().await?;
    }

    // psql through the proxy.
    reads_back_on_replicas(&client).await?;
    assert_eq!(c.psql("SELECT standby FROM whereami")?, "t");
    assert_eq!(c.psql("INSERT INTO t VALUES (3, 'c') RETURNING pg_is_in_recovery()")?, "f");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_see_own_writes_while_replicas_lag() -> anyhow::Result<()> {
    init_tracing();
    let c = Cluster::start(ClusterOptions::default())?;
    let writer = c.connect().await?;
    writer.batch_execute(&format!("CREATE TABLE ryw (id int); {WHEREAMI}")).await?;
    c.wait_replicated()?;
    for r in &c.replicas {
        r.psql("postgres", "SELECT pg_wal_replay_pause()")?;
    }
    for i in 0..5 {
        writer.execute("INSERT INTO ryw VALUES ($1)", &[&i]).await?;
        let row = writer.query_one("SELECT count(*) FROM ryw", &[]).await?;
        assert_eq!(row.get::<_, i64>(0), i64::from(i) + 1, "the writer sees its write");
    }
    // Another client is not held back: it reads a lagging replica.
    let other = c.connect().await?;
    let row = other.query_one("SELECT count(*), (SELECT standby FROM whereami) FROM ryw", &[]).await?;
    assert!(row.get::<_, bool>(1), "the other client reads a replica");
    assert_eq!(row.get::<_, i64>(0), 0, "replay is paused, so the replica lags");

    for r in &c.replicas {
        r.psql("postgres", "SELECT pg_wal_replay_resume()")?;
    }
    c.wait_replicated()?;
    // Once the replicas caught up, the writer's reads go back to them.
    let mut back = false;
    for _ in 0..100 {
        let row = writer.query_one("SELECT count(*), (SELECT standby FROM whereami) FROM ryw", &[]).await?;
        assert_eq!(row.get::<_, i64>(0), 5);
        if row.get::<_, bool>(1) {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back, "reads return to the replicas after they caught up");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_split_and_replica_outage() -> anyhow::Result<()> {
    init_tracing();
    let mut c = Cluster::start(ClusterOptions { replicas: 1, ..Default::default() })?;
    c.primary.psql("postgres", WHEREAMI)?;
    c.wait_replicated()?;
    let client = c.connect().await?;
    assert!(on_replica(&client, "SELECT standby FROM whereami").await?);

    // The only replica stops: reads go to the primary, with no error for the client.
    c.replicas[0].stop();
    for _ in 0..20 {
        assert!(!on_replica(&client, "SELECT standby FROM whereami").await?);
    }
    c.replicas[0].restart()?;
    wait_until("the replica back in rotation", Duration::from_secs(20), || {
        let out = c.psql("SELECT standby FROM whereami").ok()?;
        (out == "t").then_some(())
    })?;
    drop(client);

    // --no-read-split: everything on the primary.
    c.restart_proxy_with(&["--no-read-split"])?;
    let client = c.connect().await?;
    for _ in 0..5 {
        assert!(!on_replica(&client, "SELECT standby FROM whereami").await?);
    }
    Ok(())
}
