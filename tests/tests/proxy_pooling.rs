//! Pooling through the proxy: named prepared statements in transaction mode (many clients,
//! few server connections), SET tracked and replayed, LISTEN and temp tables pinning a
//! client to its server connection, pgbench `-M prepared` with zero failures, and session
//! mode keeping one server session per client.

use std::collections::HashSet;

use tandem_tests::cluster::one;
use tandem_tests::{init_tracing, Cluster, ClusterOptions, POOLED_SESSION};
use tokio_postgres::SimpleQueryMessage;

/// Number of failed transactions pgbench reports (PostgreSQL 15 prints the line).
fn pgbench_failures(out: &str) -> Option<u64> {
    let line = out.lines().find(|l| l.starts_with("number of failed transactions"))?;
    line.split(':').nth(1)?.split_whitespace().next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_and_settings_survive_transaction_pooling() -> anyhow::Result<()> {
    init_tracing();
    // Two server connections per node for six clients: statements and settings must be
    // carried from one server connection to the next.
    let c =
        Cluster::start(ClusterOptions { proxy_args: vec!["--pool-size".into(), "2".into()], ..Default::default() })?;
    c.primary.psql("postgres", "CREATE TABLE p (client int, i int)")?;
    c.wait_replicated()?;

    let mut tasks = Vec::new();
    for k in 0..6i32 {
        let client = c.connect().await?;
        tasks.push(tokio::spawn(async move {
            // Every client's first statement gets tokio-postgres's name `s0`, each with a
            // different text: the proxy must keep them apart.
            let mul = client.prepare(&format!("SELECT $1::int * {}", k + 2)).await?;
            let ins = client.prepare("INSERT INTO p VALUES ($1, $2)").await?;
            let set = format!("SET application_name = 'client{k}'");
            client.batch_execute(&set).await?;
            for i in 0..40i32 {
                let row = client.query_one(&mul, &[&i]).await?;
                anyhow::ensure!(row.get::<_, i32>(0) == i * (k + 2), "client {k} got another's statement");
                client.execute(&ins, &[&k, &i]).await?;
                let app = one(&client, "SHOW application_name").await?;
                anyhow::ensure!(app == format!("client{k}"), "client {k} sees application_name {app}");
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    assert_eq!(c.primary.psql("postgres", "SELECT count(*), count(DISTINCT client) FROM p")?, "240|6");

    // SET in a rolled-back transaction is forgotten, SET LOCAL is not kept, RESET removes.
    let client = c.connect().await?;
    client.batch_execute("SET search_path = nosuch, public").await?;
    client.batch_execute("BEGIN; SET search_path = rolled_back; ROLLBACK").await?;
    client.batch_execute("BEGIN; SET LOCAL work_mem = '7MB'; COMMIT").await?;
    for _ in 0..6 {
        assert_eq!(one(&client, "SHOW search_path").await?, "nosuch, public");
        assert_eq!(one(&client, "SHOW work_mem").await?, "4MB");
    }
    client.batch_execute("RESET search_path").await?;
    for _ in 0..4 {
        assert_eq!(one(&client, "SHOW search_path").await?, "\"$user\", public");
    }
    // Another client never sees those settings on a shared server connection.
    let other = c.connect().await?;
    for _ in 0..6 {
        assert_eq!(one(&other, "SHOW search_path").await?, "\"$user\", public");
        assert_ne!(one(&other, "SHOW application_name").await?, "client0");
    }
    // DEALLOCATE ALL / DISCARD ALL do not break later statements.
    let stmt = client.prepare("SELECT 41 + 1").await?;
    client.batch_execute("DISCARD ALL").await?;
    let stmt2 = client.prepare("SELECT 41 + 1").await?;
    assert_eq!(client.query_one(&stmt2, &[]).await?.get::<_, i32>(0), 42);
    drop(stmt);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_and_temp_tables_pin_the_client() -> anyhow::Result<()> {
    init_tracing();
    let c = Cluster::start(ClusterOptions {
        replicas: 1,
        proxy_args: vec!["--pool-size".into(), "3".into()],
        ..Default::default()
    })?;
    // Temp table: every later statement needs the same server session.
    let temp = c.connect().await?;
    temp.batch_execute("CREATE TEMP TABLE tt (x int); INSERT INTO tt VALUES (1)").await?;
    let mut pids = HashSet::new();
    // Other clients keep the pool busy meanwhile.
    let noise = c.connect().await?;
    for i in 0..10 {
        temp.execute("INSERT INTO tt VALUES ($1)", &[&i]).await?;
        let row = temp.query_one("SELECT count(*), pg_backend_pid() FROM tt", &[]).await?;
        assert_eq!(row.get::<_, i64>(0), i64::from(i) + 2);
        pids.insert(row.get::<_, i32>(1));
        noise.batch_execute("SELECT 1; BEGIN; SELECT 2; COMMIT").await?;
    }
    assert_eq!(pids.len(), 1, "a client with a temp table keeps its server session");

    // Temporary types and domains pin too (tokio-postgres: custom_range, custom_domain,
    // enum_): another client takes the connection they were made on, and the type must
    // still be there for its creator.
    for (create, use_it) in [
        ("CREATE TYPE pg_temp.fr AS RANGE (subtype = float8, subtype_diff = float8mi)", "SELECT '[1,2]'::fr::text"),
        ("CREATE TYPE pg_temp.e AS ENUM ('a')", "SELECT 'a'::e::text"),
        ("CREATE DOMAIN pg_temp.d AS int", "SELECT 7::d::text"),
    ] {
        let creator = c.connect().await?;
        creator.batch_execute(create).await?;
        // Parked last, the creator's connection is the next one handed out.
        noise.batch_execute("BEGIN; SELECT 1").await?;
        let got = one(&creator, use_it).await?;
        assert!(["[1,2]", "a", "7"].contains(&got.as_str()), "{create}: {got}");
        noise.batch_execute("COMMIT").await?;
    }

    // LISTEN: same.
    let listener = c.connect().await?;
    listener.batch_execute("LISTEN ch").await?;
    let first = one(&listener, "SELECT pg_backend_pid()").await?;
    for _ in 0..5 {
        noise.batch_execute("BEGIN; SELECT 2; COMMIT").await?;
        assert_eq!(one(&listener, "SELECT pg_backend_pid()").await?, first);
    }
    let listening =
        c.primary.psql("postgres", &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {first}"))?;
    assert_eq!(listening, "1");
    // A client that is not pinned moves between server sessions.
    let mut seen = HashSet::new();
    for _ in 0..10 {
        seen.insert(one(&noise, "SELECT pg_backend_pid()").await?);
    }
    assert!(!seen.contains(&first), "pinned session is not lent to others");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared_runs_without_failures() -> anyhow::Result<()> {
    init_tracing();
    let c =
        Cluster::start(ClusterOptions { proxy_args: vec!["--pool-size".into(), "3".into()], ..Default::default() })?;
    // Initialization through the proxy too (DDL, COPY, VACUUM).
    c.pgbench(&["-i", "-s", "1", "-q", "postgres"])?;
    assert_eq!(c.primary.psql("postgres", "SELECT count(*) FROM pgbench_accounts")?, "100000");
    c.wait_replicated()?;
    // The first run vacuums and truncates pgbench_history through the proxy; later ones
    // skip that (-n) so the history rows of both tpcb-like runs stay.
    for mode in [
        &["-M", "prepared"][..],
        &["-n", "-M", "prepared", "-S"],
        &["-n", "-M", "extended"],
        &["-n", "-M", "simple", "-S"],
    ] {
        let mut args = vec!["-c", "6", "-j", "2", "-t", "60"];
        args.extend_from_slice(mode);
        args.push("postgres");
        eprintln!("pgbench {args:?}");
        let out = c.pgbench(&args)?;
        assert_eq!(pgbench_failures(&out), Some(0), "pgbench {mode:?}:\n{out}");
        assert!(out.contains("number of transactions actually processed: 360/360"), "pgbench {mode:?}:\n{out}");
    }
    // The tpcb-like runs committed on the primary: 2 × 360 history rows.
    assert_eq!(c.primary.psql("postgres", "SELECT count(*) FROM pgbench_history")?, "720");
    assert_eq!(c.primary_sessions_in("idle in transaction")?, 0);
    Ok(())
}

/// One server connection for four clients: every transaction end hands the connection to a
/// waiting client (parked connections go back to bb8 when someone waits), none times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_connection_serves_many_clients() -> anyhow::Result<()> {
    init_tracing();
    let c = Cluster::start(ClusterOptions::one_backend("transaction"))?;
    c.primary.psql("postgres", "CREATE DATABASE one")?;
    c.pgbench(&["-i", "-s", "1", "-q", "one"])?;
    for mode in ["prepared", "simple"] {
        let out = c.pgbench(&["-n", "-c", "4", "-j", "2", "-t", "50", "-M", mode, "one"])?;
        assert_eq!(pgbench_failures(&out), Some(0), "pgbench -M {mode}:\n{out}");
        assert!(out.contains("number of transactions actually processed: 200/200"), "pgbench -M {mode}:\n{out}");
    }
    assert_eq!(c.primary.psql("one", "SELECT count(*) FROM pgbench_history")?, "400");
    Ok(())
}

/// Transaction pooling hands a client the server connection it used last when that one is
/// free, so with enough connections each client keeps one backend (warm, with its statements
/// prepared) instead of whichever connection was released last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_prefers_the_clients_previous_connection() -> anyhow::Result<()> {
    init_tracing();
    let c = Cluster::start(ClusterOptions { replicas: 0, ..Default::default() })?;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(c.connect().await?);
    }
    let mut seen: Vec<HashSet<String>> = vec![HashSet::new(); clients.len()];
    // Open transactions at once: four server connections, one per client.
    for (client, pids) in clients.iter().zip(seen.iter_mut()) {
        client.batch_execute("BEGIN").await?;
        pids.insert(one(client, "SELECT pg_backend_pid()").await?);
    }
    for client in &clients {
        client.batch_execute("COMMIT").await?;
    }
    for _round in 0..5 {
        // One at a time, in turn: a plain LIFO pool would give every client the connection
        // released last.
        for (client, pids) in clients.iter().zip(seen.iter_mut()) {
            pids.insert(one(client, "SELECT pg_backend_pid()").await?);
        }
    }
    for (i, pids) in seen.iter().enumerate() {
        assert_eq!(pids.len(), 1, "client {i} ran on backends {pids:?}");
    }
    let all: HashSet<&String> = seen.iter().flatten().collect();
    assert_eq!(all.len(), clients.len(), "one backend per client: {all:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_keeps_one_server_session() -> anyhow::Result<()> {
    init_tracing();
    let c = Cluster::start(ClusterOptions { replicas: 1, pool_mode: "session", ..Default::default() })?;
    c.primary.psql("postgres", "CREATE TABLE s (x int)")?;
    let client = c.connect().await?;
    client.batch_execute("SET application_name = 'sess'").await?;
    let mut pids = HashSet::new();
    for i in 0..5 {
        let row = client.query_one("INSERT INTO s VALUES ($1) RETURNING pg_backend_pid()", &[&i]).await?;
        pids.insert(row.get::<_, i32>(0));
        assert_eq!(one(&client, "SHOW application_name").await?, "sess");
    }
    assert_eq!(pids.len(), 1, "session mode: one primary session per client");
    let stmt = client.prepare("SELECT count(*) FROM s").await?;
    for _ in 0..3 {
        assert_eq!(client.query_one(&stmt, &[]).await?.get::<_, i64>(0), 5);
    }
    // After the client leaves, its session is reset before anyone else gets it.
    drop(stmt);
    drop(client);
    let next = c.connect().await?;
    for _ in 0..3 {
        assert_ne!(one(&next, "SHOW application_name").await?, "sess");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_server_connections_close_after_server_idle_timeout() -> anyhow::Result<()> {
    init_tracing();
    let c = Cluster::start(ClusterOptions {
        replicas: 0,
        proxy_args: vec!["--server-idle-timeout-ms".into(), "1000".into()],
        ..Default::default()
    })?;
    // Four overlapping transactions need four server connections; after COMMIT they are
    // parked in the pool, idle on the server.
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(c.connect().await?);
    }
    for client in &clients {
        client.batch_execute("BEGIN; SELECT 1").await?;
    }
    for client in &clients {
        client.batch_execute("COMMIT").await?;
    }
    assert_eq!(c.primary_sessions_in("idle")?, 4, "four parked server connections");

    // Unused for the idle timeout (1 s; the reaper looks every 250 ms), they are closed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut idle = c.primary_sessions_in("idle")?;
    while idle > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        idle = c.primary_sessions_in("idle")?;
    }
    assert_eq!(idle, 0, "idle server connections were not closed");

    // The clients never noticed: the next statement opens a fresh server connection.
    for client in &clients {
        assert_eq!(one(client, "SELECT 41 + 1").await?, "42");
    }
    assert!(c.primary_sessions_in("idle")? >= 1);
    Ok(())
}

/// A parked server connection whose backend was terminated while idle (it sent 57P01 and
/// closed) is noticed at checkout and thrown away: the client's next statement runs on
/// another connection and never sees that FATAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_connection_terminated_while_parked_is_not_handed_out() -> anyhow::Result<()> {
    init_tracing();
    let c = Cluster::start(ClusterOptions { replicas: 0, ..Default::default() })?;
    let client = c.connect().await?;
    let first = one(&client, "SELECT pg_backend_pid()::text").await?;
    assert_eq!(c.primary_sessions_in("idle")?, 1, "the connection is parked");
    let terminated = c.primary.psql("postgres", &format!("SELECT pg_terminate_backend({first}, 5000)"))?;
    assert_eq!(terminated, "t");
    for _ in 0..3 {
        let pid = one(&client, "SELECT pg_backend_pid()::text").await?;
        assert_ne!(pid, first, "the terminated backend served a statement");
    }
    Ok(())
}

/// With two worker threads each has half of every pool. New clients go to the worker with
/// the fewest, so in session mode as many clients as `--pool-size` all get a server session
/// at once (none waits while the other worker has a connection free); one more waits, and
/// the proxy never opens more than the pool size in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_threads_split_the_pool_without_making_clients_wait() -> anyhow::Result<()> {
    use std::time::Duration;
    init_tracing();
    let c = Cluster::start(ClusterOptions {
        replicas: 0,
        pool_mode: "session",
        proxy_args: ["--threads", "2", "--pool-size", "4"].map(String::from).to_vec(),
        ..Default::default()
    })?;
    let mut clients = Vec::new();
    let mut pids = HashSet::new();
    for i in 0..4 {
        let client = c.connect().await?;
        let pid = tokio::time::timeout(Duration::from_secs(10), one(&client, "SELECT pg_backend_pid()")).await;
        pids.insert(pid.map_err(|_| anyhow::anyhow!("client {i} waited for a server connection"))??);
        clients.push(client);
    }
    assert_eq!(pids.len(), 4, "one server session per client: {pids:?}");

    // A fifth client waits for a session to end (at login: it is greeted with its backend's
    // pid).
    let dsn = c.dsn("postgres", "postgres");
    let waiting = tokio::spawn(async move {
        let (fifth, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        anyhow::Ok((one(&fifth, "SELECT pg_backend_pid()").await?, fifth))
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "a fifth client got a server connection beyond --pool-size 4");
    let admin = c.connect_as("postgres", "tandem").await?;
    let pools = admin.simple_query("SHOW POOLS").await?;
    let row = pools.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) if r.get("database") == Some("postgres") => {
            Some((r.get("sv_active").map(str::to_owned), r.get("cl_waiting").map(str::to_owned)))
        }
        _ => None,
    });
    // One row for the pool, summed over both workers.
    assert_eq!(row, Some((Some("4".into()), Some("1".into()))), "{pools:?}");

    drop(clients);
    let (pid, _fifth) = tokio::time::timeout(Duration::from_secs(10), waiting).await???;
    assert!(pids.contains(&pid), "the fifth client reuses a released session, got backend {pid}");
    let opened =
        c.primary.psql("postgres", &format!("SELECT count(*) FROM pg_stat_activity WHERE {POOLED_SESSION}"))?;
    assert!(opened.parse::<u32>()? <= 4, "{opened} pooled sessions open");
    Ok(())
}
