//! Operating the proxy: the admin console (`dbname=tandem`: SHOW POOLS/CLIENTS/SERVERS/
//! NODES/STATS, PAUSE, RESUME), the Prometheus `/metrics` endpoint, and graceful shutdown
//! on SIGTERM (a running transaction finishes, then the process exits 0).

use std::io::{Read, Write};
use std::time::Duration;

use tandem_tests::{init_tracing, Cluster, ClusterOptions};
use tokio_postgres::{Client, SimpleQueryMessage};

/// Rows of a simple query as column-name → value maps.
async fn rows(client: &Client, sql: &str) -> anyhow::Result<Vec<Vec<(String, String)>>> {
    let mut out = Vec::new();
    for m in client.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(r) = m {
            let cols = r.columns().iter().enumerate();
            out.push(cols.map(|(i, c)| (c.name().to_owned(), r.get(i).unwrap_or("").to_owned())).collect());
        }
    }
    Ok(out)
}

/// The value of column `col` in `row`.
fn col<'a>(row: &'a [(String, String)], col: &str) -> &'a str {
    row.iter().find(|(n, _)| n == col).map(|(_, v)| v.as_str()).unwrap_or("")
}

/// `GET /metrics` with a hand-written HTTP/1.0 request (no HTTP client in the test deps).
fn scrape(port: u16) -> anyhow::Result<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_console_pause_resume_and_metrics() -> anyhow::Result<()> {
    init_tracing();
    let c = Cluster::start(ClusterOptions { metrics: true, ..Default::default() })?;
    let client = c.connect().await?;
    client.batch_execute("CREATE TABLE a (x int); INSERT INTO a VALUES (1)").await?;
    c.wait_replicated()?;
    // Another client reads (the writer's own reads stay on the primary until the replicas
    // have caught up with its write).
    let reader = c.connect().await?;
    for _ in 0..10 {
        reader.query_one("SELECT count(*) FROM a", &[]).await?;
    }
    let admin = c.connect_as("postgres", "tandem").await?;

    let nodes = rows(&admin, "SHOW NODES").await?;
    let names: Vec<_> = nodes.iter().map(|r| (col(r, "node"), col(r, "role"), col(r, "healthy"))).collect();
    assert_eq!(
        names,
        [("primary", "primary", "true"), ("replica1", "replica", "true"), ("replica2", "replica", "true")]
    );
    let pools = rows(&admin, "SHOW POOLS").await?;
    assert!(pools.iter().all(|r| col(r, "pool_mode") == "transaction" && col(r, "database") == "postgres"));
    assert!(pools.iter().any(|r| col(r, "node") == "primary"), "{pools:?}");
    assert!(pools.iter().any(|r| col(r, "node").starts_with("replica")), "{pools:?}");
    let clients = rows(&admin, "SHOW CLIENTS").await?;
    assert!(clients.iter().any(|r| col(r, "database") == "postgres" && col(r, "requests") != "0"), "{clients:?}");
    assert!(clients.iter().any(|r| col(r, "database") == "tandem"));
    let servers = rows(&admin, "SHOW SERVERS").await?;
    assert!(servers.iter().any(|r| col(r, "addr") == c.primary.addr()), "{servers:?}");
    let stats = rows(&admin, "SHOW STATS").await?;
    let total = |node: &str| -> u64 {
        stats
            .iter()
            .find(|r| col(r, "node") == node)
            .map(|r| col(r, "total_requests").parse().unwrap_or(0))
            .unwrap_or(0)
    };
    assert!(total("primary") >= 1 && total("replica1") + total("replica2") >= 10, "{stats:?}");
    assert!(rows(&admin, "SHOW VERSION").await?[0][0].1.starts_with("tandem"));
    let err = admin.simple_query("SHOW NONSENSE").await.expect_err("unknown command");
    assert_eq!(err.code().map(|c| c.code()), Some("42601"));
    let err = admin.query("SHOW NODES", &[]).await.expect_err("extended protocol");
    assert_eq!(err.code().map(|c| c.code()), Some("0A000"));
    // psql works against the console too.
    let out = c.psql_raw(&c.dsn("postgres", "tandem"), &[], "SHOW NODES;")?;
    assert!(out.status.success() && out.stdout.contains("replica2"), "{out:?}");

    // PAUSE waits for the running transaction, then holds new work until RESUME.
    client.batch_execute("BEGIN; INSERT INTO a VALUES (2)").await?;
    let pause = tokio::spawn({
        let admin = c.connect_as("postgres", "tandem").await?;
        async move { admin.simple_query("PAUSE").await.map(|_| admin) }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!pause.is_finished(), "PAUSE returned while a transaction was running");
    client.batch_execute("INSERT INTO a VALUES (3); COMMIT").await?;
    let admin2 = tokio::time::timeout(Duration::from_secs(10), pause).await???;
    let held = tokio::spawn({
        let other = c.connect().await?;
        async move { other.query_one("SELECT count(*) FROM a", &[]).await.map(|r| r.get::<_, i64>(0)) }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!held.is_finished(), "a new transaction ran while paused");
    admin2.simple_query("RESUME").await?;
    let count = tokio::time::timeout(Duration::from_secs(10), held).await???;
    assert!(count >= 1);
    assert_eq!(c.primary.psql("postgres", "SELECT count(*) FROM a")?, "3");

    // Prometheus metrics.
    let port = c.metrics_port.ok_or_else(|| anyhow::anyhow!("no metrics port"))?;
    let body = scrape(port)?;
    assert!(body.starts_with("HTTP/1.") && body.contains(" 200 "), "{body}");
    for series in [
        "tandem_clients",
        "tandem_client_connections_total",
        "tandem_queries_routed_total{node=\"replica1\",role=\"replica\"}",
        "tandem_queries_routed_total{node=\"primary\",role=\"primary\"}",
        "tandem_query_duration_seconds_bucket",
        "tandem_server_connections{node=\"primary\",state=\"idle\"}",
    ] {
        assert!(body.contains(series), "missing {series} in\n{body}");
    }
    // Every series is Tandem's own.
    let payload = body.split("\r\n\r\n").nth(1).unwrap_or("");
    let samples: Vec<&str> = payload.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    assert!(samples.len() > 5, "{payload}");
    assert!(samples.iter().all(|l| l.starts_with("tandem_")), "{payload}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_running_transaction_finish() -> anyhow::Result<()> {
    init_tracing();
    let mut c = Cluster::start(ClusterOptions { replicas: 0, ..Default::default() })?;
    c.primary.psql("postgres", "CREATE TABLE g (x int)")?;
    let busy = c.connect().await?;
    let idle = c.connect().await?;
    busy.batch_execute("BEGIN; INSERT INTO g VALUES (1)").await?;

    c.proxy.terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // New clients are turned away at once.
    assert!(c.connect().await.is_err(), "the listener is closed");
    // The running transaction goes on and commits.
    busy.batch_execute("INSERT INTO g VALUES (2)").await?;
    busy.batch_execute("COMMIT").await?;
    let status = c.proxy.wait_exit(Duration::from_secs(20))?;
    assert!(status.success(), "exit status {status}\n{}", c.proxy.log_tail());
    assert_eq!(c.primary.psql("postgres", "SELECT count(*) FROM g")?, "2");
    // The idle client was told the proxy is going away.
    let err = idle.simple_query("SELECT 1").await.expect_err("closed");
    assert!(err.code().map(|c| c.code()) == Some("57P01") || err.is_closed(), "{err}");
    assert_eq!(c.primary_sessions_in("idle in transaction")?, 0);
    Ok(())
}

/// PAUSE holds every new transaction, also those of a client pinned to its server
/// connection (here by a temp table), and of clients on every worker thread; RESUME lets
/// them run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_pinned_sessions_on_every_worker() -> anyhow::Result<()> {
    init_tracing();
    let c = Cluster::start(ClusterOptions {
        replicas: 0,
        proxy_args: ["--threads", "2", "--pool-size", "4"].map(String::from).to_vec(),
        ..Default::default()
    })?;
    let pinned = c.connect().await?;
    pinned.batch_execute("CREATE TEMP TABLE t (x int)").await?;
    let mut plain = Vec::new();
    for _ in 0..3 {
        plain.push(c.connect().await?);
    }
    let admin = c.connect_as("postgres", "tandem").await?;
    tokio::time::timeout(Duration::from_secs(10), admin.simple_query("PAUSE")).await??;

    let held_pinned = tokio::spawn(async move {
        pinned.batch_execute("INSERT INTO t VALUES (1)").await?;
        pinned.query_one("SELECT count(*) FROM t", &[]).await.map(|r| r.get::<_, i64>(0))
    });
    let mut held = Vec::new();
    for client in plain {
        held.push(tokio::spawn(async move { client.query_one("SELECT 1", &[]).await.map(|r| r.get::<_, i32>(0)) }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!held_pinned.is_finished(), "a pinned session started a transaction while paused");
    assert!(held.iter().all(|h| !h.is_finished()), "a session started a transaction while paused");

    admin.simple_query("RESUME").await?;
    assert_eq!(tokio::time::timeout(Duration::from_secs(10), held_pinned).await???, 1);
    for h in held {
        assert_eq!(tokio::time::timeout(Duration::from_secs(10), h).await???, 1);
    }
    Ok(())
}

/// A node given as primary that is in recovery (a standby) is not healthy as a primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_in_recovery_is_not_healthy() -> anyhow::Result<()> {
    init_tracing();
    let c = Cluster::start(ClusterOptions { replicas: 1, ..Default::default() })?;
    // A second proxy whose primary is the standby.
    let port = tandem_tests::free_port();
    let listen = format!("127.0.0.1:{port}");
    let primary = format!("primary={}", c.replicas[0].addr());
    let replica = format!("replica1={}", c.primary.addr());
    let args =
        ["proxy", "--listen", &listen, "--primary", &primary, "--replica", &replica, "--health-interval-ms", "100"];
    let proxy = tandem_tests::TandemProcess::spawn(&args)?;
    proxy.wait_for_port(port, Duration::from_secs(20))?;
    let (admin, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=postgres dbname=tandem"),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(conn);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let nodes = rows(&admin, "SHOW NODES").await?;
        let primary_row = nodes.iter().find(|r| col(r, "role") == "primary").cloned().unwrap_or_default();
        if col(&primary_row, "healthy") == "false" {
            break;
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "a primary in recovery still healthy: {nodes:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(proxy.log().contains("the primary is in recovery"), "{}", proxy.log_tail());
    Ok(())
}

/// When the primary moves (here by RELOAD; the witness group's topology takes the same
/// path), a session pinned to the old primary ends with 57P01 at its next statement instead
/// of writing there, and other sessions' writes go to the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_pinned_to_a_moved_primary_ends() -> anyhow::Result<()> {
    init_tracing();
    let c = Cluster::start(ClusterOptions { replicas: 1, ..Default::default() })?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("tandem.toml");
    let port = tandem_tests::free_port();
    let write_config = |primary: &str, replica: &str| {
        std::fs::write(
            &file,
            format!(
                "[proxy]\nlisten = \"127.0.0.1:{port}\"\n[proxy.primary]\nname = \"old\"\naddr = \"{primary}\"\n\
                 [[proxy.replicas]]\nname = \"r\"\naddr = \"{replica}\"\n"
            ),
        )
    };
    write_config(&c.primary.addr(), &c.replicas[0].addr())?;
    let proxy = tandem_tests::TandemProcess::spawn(&["--config", &file.to_string_lossy(), "proxy"])?;
    proxy.wait_for_port(port, Duration::from_secs(20))?;
    let connect = |db: &'static str| async move {
        let (client, conn) = tokio_postgres::connect(
            &format!("host=127.0.0.1 port={port} user=postgres dbname={db}"),
            tokio_postgres::NoTls,
        )
        .await?;
        tokio::spawn(conn);
        anyhow::Ok(client)
    };
    let pinned = connect("postgres").await?;
    pinned.batch_execute("LISTEN moved").await?; // pins the session to the primary
                                                 // The primary moves (to the standby's address: only where writes would go matters here).
    write_config(&c.replicas[0].addr(), &c.primary.addr())?;
    let admin = connect("tandem").await?;
    admin.simple_query("RELOAD").await?;
    let err = pinned.batch_execute("SELECT 1").await.expect_err("a session left on the old primary must end");
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "57P01", "{db:?}");
    assert!(db.message().contains("the primary moved"), "{db:?}");
    // A new session's write goes to the new "primary" (a standby: refused there as read-only).
    let fresh = connect("postgres").await?;
    let err = fresh.batch_execute("CREATE TABLE after_move (x int)").await.expect_err("standby refuses writes");
    assert_eq!(err.as_db_error().map(|d| d.code().code()), Some("25006"), "{err:?}");
    drop(proxy);
    Ok(())
}
