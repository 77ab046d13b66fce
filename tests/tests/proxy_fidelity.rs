//! A client cannot tell the proxy from PostgreSQL: each test reproduces one difference once
//! found between a direct connection and one through the proxy (issue 14) and asserts what
//! PostgreSQL itself does, in both pool modes where the difference was in both.

use tandem_tests::cluster::one;
use tandem_tests::wire::{first_column, first_error, msg, startup_with, Msg, RawClient};
use tandem_tests::{init_tracing, Cluster, ClusterOptions};

/// A cluster of one primary and the proxy in `mode`, with `extra` proxy flags.
fn cluster(mode: &'static str, extra: &[&str]) -> anyhow::Result<Cluster> {
    Cluster::start(ClusterOptions {
        replicas: 0,
        pool_mode: mode,
        proxy_args: extra.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
}

/// Logs in with `settings` in the StartupMessage; returns the client and its greeting.
async fn login(c: &Cluster, settings: &[(&str, &str)]) -> anyhow::Result<(RawClient, Vec<Msg>)> {
    let mut client = RawClient::connect(c.proxy_port).await?;
    client.send(&startup_with("postgres", "postgres", settings)).await?;
    let greeting = client.until_ready().await?;
    anyhow::ensure!(first_error(&greeting).is_none(), "login failed: {:?}", first_error(&greeting));
    Ok((client, greeting))
}

/// The value of the last ParameterStatus for `name` in `msgs`.
fn status(msgs: &[Msg], name: &str) -> Option<String> {
    msgs.iter().filter(|m| m.tag == b'S').rev().find_map(|m| {
        let mut parts = m.body.split(|b| *b == 0);
        let n = parts.next()?;
        let v = parts.next()?;
        (n == name.as_bytes()).then(|| String::from_utf8_lossy(v).into_owned())
    })
}

/// The single value a simple query returns, plus every message seen up to its answer.
async fn value(client: &mut RawClient, sql: &str) -> anyhow::Result<(String, Vec<Msg>)> {
    let msgs = client.simple(sql).await?;
    anyhow::ensure!(first_error(&msgs).is_none(), "{sql}: {:?}", first_error(&msgs));
    let v = first_column(&msgs).into_iter().next().flatten().unwrap_or_default();
    Ok((v, msgs))
}

/// Runs statements that must succeed, returning all messages.
async fn run(client: &mut RawClient, sql: &str) -> anyhow::Result<Vec<Msg>> {
    let msgs = client.simple(sql).await?;
    anyhow::ensure!(first_error(&msgs).is_none(), "{sql}: {:?}", first_error(&msgs));
    Ok(msgs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_returns_to_the_login_value() -> anyhow::Result<()> {
    init_tracing();
    for mode in ["transaction", "session"] {
        let c = Cluster::start(ClusterOptions::one_backend(mode))?;
        let (mut a, greeting) = login(&c, &[("DateStyle", "SQL, DMY")]).await?;
        assert_eq!(status(&greeting, "DateStyle").as_deref(), Some("SQL, DMY"));
        let mut seen = Vec::new();
        for sql in ["SET datestyle = ISO", "RESET datestyle", "SET DateStyle TO DEFAULT", "RESET ALL", "DISCARD ALL"] {
            seen.extend(run(&mut a, "SET datestyle = 'Postgres'").await?);
            seen.extend(run(&mut a, sql).await?);
            let (v, msgs) = value(&mut a, "SHOW datestyle").await?;
            seen.extend(msgs);
            if sql.starts_with("SET datestyle") {
                assert_eq!(v, "ISO, DMY", "{mode}: {sql}");
                continue;
            }
            assert_eq!(v, "SQL, DMY", "{mode}: after {sql}");
            assert_eq!(status(&seen, "DateStyle").as_deref(), Some("SQL, DMY"), "{mode}: reported after {sql}");
        }
        // Inside a transaction the next statement sees it too, and a rollback undoes it.
        run(&mut a, "SET datestyle = ISO").await?;
        run(&mut a, "BEGIN").await?;
        run(&mut a, "RESET datestyle").await?;
        assert_eq!(value(&mut a, "SHOW datestyle").await?.0, "SQL, DMY", "{mode}: in a transaction");
        run(&mut a, "ROLLBACK").await?;
        assert_eq!(value(&mut a, "SHOW datestyle").await?.0, "ISO, DMY", "{mode}: rolled back");
        // The extended protocol (pgjdbc sends everything so): the restore follows the Sync,
        // so the transaction's next statement sees it.
        run(&mut a, "SET datestyle = ISO").await?;
        run(&mut a, "BEGIN").await?;
        let bind = b"\0\0\0\0\0\0\0\0";
        let reset = [msg(b'P', b"\0RESET datestyle\0\0\0"), msg(b'B', bind), msg(b'E', b"\0\0\0\0\0")];
        a.send(&[reset.concat(), msg(b'S', b"")].concat()).await?;
        assert!(first_error(&a.until_ready().await?).is_none());
        assert_eq!(value(&mut a, "SHOW datestyle").await?.0, "SQL, DMY", "{mode}: extended RESET");
        run(&mut a, "COMMIT").await?;
        run(&mut a, "RESET datestyle").await?;
        if mode == "transaction" {
            // Another client on the same backend gets the server's default, and the first
            // keeps its login value after that.
            let (mut b, _) = login(&c, &[]).await?;
            assert_eq!(value(&mut b, "SHOW datestyle").await?.0, "ISO, MDY");
        }
        assert_eq!(value(&mut a, "SHOW datestyle").await?.0, "SQL, DMY", "{mode}: later");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_application_name_is_an_empty_one() -> anyhow::Result<()> {
    init_tracing();
    for mode in ["transaction", "session"] {
        let c = cluster(mode, &[])?;
        let (mut client, greeting) = login(&c, &[]).await?;
        assert_eq!(status(&greeting, "application_name").as_deref(), Some(""), "{mode}: greeting");
        assert_eq!(value(&mut client, "SHOW application_name").await?.0, "", "{mode}");
        let (v, _) =
            value(&mut client, "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()").await?;
        assert_eq!(v, "", "{mode}: pg_stat_activity");
        let (mut named, greeting) = login(&c, &[("application_name", "mine")]).await?;
        assert_eq!(status(&greeting, "application_name").as_deref(), Some("mine"), "{mode}");
        assert_eq!(value(&mut named, "SHOW application_name").await?.0, "mine", "{mode}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_statements_go_but_sql_prepared_ones_stay() -> anyhow::Result<()> {
    init_tracing();
    for mode in ["transaction", "session"] {
        let c = cluster(mode, &[])?;
        c.primary.psql("postgres", "CREATE TABLE t (a int); INSERT INTO t VALUES (1)")?;
        let client = c.connect().await?;
        let stmt = client.prepare("SELECT * FROM t").await?;
        client.batch_execute("PREPARE mine AS SELECT a FROM t").await?;
        assert_eq!(client.query(&stmt, &[]).await?.len(), 1);
        client.batch_execute("ALTER TABLE t ADD COLUMN b int").await?;
        let err = client.query(&stmt, &[]).await.expect_err("PostgreSQL refuses the old statement");
        assert_eq!(err.code().map(|c| c.code()), Some("0A000"), "{mode}: {err}");
        // The client's own SQL statement is still there, as in PostgreSQL.
        assert_eq!(one(&client, "EXECUTE mine").await?, "1", "{mode}");
        if mode == "session" {
            // Transaction mode keeps it under a Tandem name (see sql_prepare_is_shared_...).
            let names = one(&client, "SELECT string_agg(name, ',') FROM pg_prepared_statements WHERE from_sql");
            assert_eq!(names.await?, "mine", "{mode}");
        }
        let fresh = client.prepare("SELECT * FROM t").await?;
        assert_eq!(fresh.columns().len(), 2, "{mode}: a new Parse sees the new column");
        assert_eq!(client.query(&fresh, &[]).await?.len(), 1);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_before_startup_closes_silently() -> anyhow::Result<()> {
    init_tracing();
    let c = cluster("transaction", &[])?;
    for prefix in [&b""[..], &b"X"[..]] {
        let mut client = RawClient::connect(c.proxy_port).await?;
        // node-postgres's end() before it logged in; sent in two pieces the second time.
        if !prefix.is_empty() {
            client.send(prefix).await?;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        client.send(&msg(b'X', b"")[prefix.len()..]).await?;
        let answer = client.until_closed().await?;
        assert!(answer.is_empty(), "PostgreSQL answers nothing, the proxy sent {answer:?}");
    }
    let (mut client, _) = login(&c, &[]).await?;
    assert_eq!(value(&mut client, "SELECT 1").await?.0, "1");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_idle_connections_to_template_databases() -> anyhow::Result<()> {
    init_tracing();
    for mode in ["transaction", "session"] {
        let c = cluster(mode, &[])?;
        let client = c.connect_as("postgres", "template1").await?;
        assert_eq!(one(&client, "SELECT current_database()").await?, "template1");
        if mode == "session" {
            // The session holds its backend, as a direct connection would, until it ends.
            drop(client);
        }
        // CREATE DATABASE copies template1, which nobody else may be connected to.
        let made = c.primary.psql("postgres", &format!("CREATE DATABASE made_{mode}"));
        assert!(made.is_ok(), "{mode}: {made:?}");
        let through = c.psql(&format!("CREATE DATABASE through_{mode}"));
        assert!(through.is_ok(), "{mode}: {through:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_terminated_backend_is_not_a_node_failure() -> anyhow::Result<()> {
    init_tracing();
    let c = Cluster::start(ClusterOptions { replicas: 1, ..Default::default() })?;
    // A read-only transaction runs on the replica, a read-write one on the primary.
    for (begin, server) in [("BEGIN READ ONLY", &c.replicas[0]), ("BEGIN", &c.primary)] {
        let client = c.connect().await?;
        client.batch_execute(begin).await?;
        let pid = one(&client, "SELECT pg_backend_pid()").await?;
        server.psql("postgres", &format!("SELECT pg_terminate_backend({pid})"))?;
        let err = client.batch_execute("SELECT 1").await.expect_err("the backend is gone");
        assert!(err.is_closed() || err.code().is_some(), "{begin}: {err}");
        // Other clients go on using that node at once.
        let other = c.connect().await?;
        let recovery = if begin == "BEGIN" { "false" } else { "true" };
        other.batch_execute(begin).await?;
        assert_eq!(one(&other, "SELECT pg_is_in_recovery()::text").await?, recovery, "{begin}");
        other.batch_execute("COMMIT").await?;
    }
    let log = c.proxy.log();
    assert!(!log.contains("taken out of rotation"), "one lost backend took a node out:\n{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_clients_get_their_backends_pid() -> anyhow::Result<()> {
    init_tracing();
    let c = Cluster::start(ClusterOptions { replicas: 1, pool_mode: "session", ..Default::default() })?;
    let (mut client, greeting) = login(&c, &[]).await?;
    let key = greeting.iter().find(|m| m.tag == b'K').map(|m| m.body.clone()).unwrap_or_default();
    anyhow::ensure!(key.len() == 8, "BackendKeyData {key:?}");
    let pid = i32::from_be_bytes([key[0], key[1], key[2], key[3]]);
    assert_eq!(value(&mut client, "SELECT pg_backend_pid()").await?.0, pid.to_string());
    // A notification the client sends itself names that pid too.
    run(&mut client, "LISTEN ch").await?;
    let msgs = run(&mut client, "NOTIFY ch").await?;
    let note = msgs.iter().find(|m| m.tag == b'A').map(|m| m.body.clone()).unwrap_or_default();
    assert_eq!(note.get(..4), Some(&pid.to_be_bytes()[..]), "notification {msgs:?}");
    // Cancel keys still go through the proxy.
    client.send(&tandem_tests::wire::query("SELECT pg_sleep(30)")).await?;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut cancel = RawClient::connect(c.proxy_port).await?;
    let mut pkt = 16u32.to_be_bytes().to_vec();
    pkt.extend_from_slice(&80_877_102u32.to_be_bytes());
    pkt.extend_from_slice(&key);
    cancel.send(&pkt).await?;
    let answer = client.until_ready().await?;
    assert_eq!(first_error(&answer).map(|e| e.0).as_deref(), Some("57014"), "{answer:?}");
    // Another client terminates it by that pid, as on PostgreSQL.
    let (mut other, _) = login(&c, &[]).await?;
    assert_eq!(value(&mut other, &format!("SELECT pg_terminate_backend({pid})")).await?.0, "t");
    let last = client.until_closed().await?;
    assert_eq!(first_error(&last).map(|e| e.0).as_deref(), Some("57P01"), "{last:?}");
    Ok(())
}

/// Peak resident memory of process `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap_or_default();
    Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
}

/// Logs in and starts `COPY big FROM STDIN`.
async fn copy_in(c: &Cluster) -> anyhow::Result<RawClient> {
    let (mut client, _) = login(c, &[]).await?;
    client.send(&tandem_tests::wire::query("COPY big FROM STDIN")).await?;
    let started = client.recv().await?;
    anyhow::ensure!(started.as_ref().is_some_and(|m| m.tag == b'G'), "no CopyInResponse: {started:?}");
    Ok(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_copy_data_streams_through() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("tandem.toml");
    // A small limit for whole messages: CopyData is not held whole, so it does not apply.
    std::fs::write(&config, "[proxy]\nmax_message_size = 1048576\n")?;
    let config = config.to_string_lossy().into_owned();
    let c = cluster("transaction", &["--config", &config])?;
    c.primary.psql("postgres", "CREATE UNLOGGED TABLE big (t text)")?;
    let before = peak_rss_kib(c.proxy.pid())?;
    let mut client = copy_in(&c).await?;
    // 64 MiB in one CopyData message: 65,536 lines of 1 KiB.
    let line = format!("{}\n", "x".repeat(1023));
    let body = line.repeat(64 * 1024);
    client.send(&msg(b'd', body.as_bytes())).await?;
    client.send(&msg(b'c', b"")).await?;
    let done = client.until_ready().await?;
    assert!(first_error(&done).is_none(), "{:?}", first_error(&done));
    assert_eq!(c.primary.psql("postgres", "SELECT count(*) FROM big")?, "65536");
    let grew = peak_rss_kib(c.proxy.pid())?.saturating_sub(before);
    assert!(grew < 24 * 1024, "the proxy's peak memory grew by {grew} KiB for a 64 MiB message");

    // Beyond PostgreSQL's own limit: refused as PostgreSQL does, and logged.
    let mut client = copy_in(&c).await?;
    client.send(&[b'd', 0x40, 0, 0, 0]).await?;
    let refused = client.until_closed().await?;
    assert_eq!(first_error(&refused).map(|e| e.0).as_deref(), Some("08P01"), "{refused:?}");
    // Any other message beyond max_message_size: refused and logged too.
    let (mut client, _) = login(&c, &[]).await?;
    client.send(&tandem_tests::wire::query(&format!("SELECT '{}'", "y".repeat(2 << 20)))).await?;
    let refused = client.until_closed().await?;
    assert_eq!(first_error(&refused).map(|e| e.0).as_deref(), Some("54000"), "{refused:?}");
    let log = c.proxy.log();
    assert!(log.contains("longer than PostgreSQL accepts"), "{log}");
    assert!(log.contains("larger than max_message_size"), "{log}");
    Ok(())
}

/// A protocol-level Parse of `name` (no parameter types) and a Sync.
fn parse_and_sync(name: &str, sql: &str) -> Vec<u8> {
    let body = [name.as_bytes(), b"\0", sql.as_bytes(), b"\0\0\0"].concat();
    [msg(b'P', &body), msg(b'S', b"")].concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_execute_finds_protocol_statements_in_transaction_mode() -> anyhow::Result<()> {
    init_tracing();
    let c = cluster("transaction", &["--pool-size", "3"])?;
    let sql = "SELECT $1::int + 1 AS next";
    let (mut a, _) = login(&c, &[]).await?;
    a.send(&parse_and_sync("a1", sql)).await?;
    assert!(first_error(&a.until_ready().await?).is_none());
    // A holds the connection that has the statement; C gets the other one.
    run(&mut a, "BEGIN").await?;
    let (mut b, _) = login(&c, &[]).await?;
    b.send(&parse_and_sync("sqlx_s_1", sql)).await?;
    assert!(first_error(&b.until_ready().await?).is_none());
    assert_eq!(value(&mut b, "EXECUTE sqlx_s_1(41)").await?.0, "42");
    // sqlx's describe of a query! macro.
    let (plan, _) = value(&mut b, "EXPLAIN (VERBOSE, FORMAT JSON) EXECUTE sqlx_s_1(NULL)").await?;
    assert!(plan.contains("\"Output\""), "{plan}");
    assert_eq!(value(&mut b, "execute SQLX_S_1 (1); EXECUTE sqlx_s_1 (2)").await?.0, "2");
    assert_eq!(value(&mut a, "EXECUTE a1(1)").await?.0, "2");
    // The extended protocol (drivers' statement caches), named and unnamed, on a third
    // connection that has neither statement yet, while A and B hold the other two.
    run(&mut b, "BEGIN").await?;
    let (mut d, _) = login(&c, &[]).await?;
    d.send(&parse_and_sync("d1", sql)).await?;
    assert!(first_error(&d.until_ready().await?).is_none());
    for name in ["__asyncpg_stmt_1__", ""] {
        let body = [name.as_bytes(), b"\0EXECUTE d1(9)\0\0\0"].concat();
        let bind = [b"\0", name.as_bytes(), b"\0\0\0\0\0\0\0"].concat();
        d.send(&[msg(b'P', &body), msg(b'B', &bind), msg(b'E', b"\0\0\0\0\0"), msg(b'S', b"")].concat()).await?;
        let out = d.until_ready().await?;
        assert!(first_error(&out).is_none(), "{name:?}: {:?}", first_error(&out));
        assert_eq!(first_column(&out), vec![Some("10".to_string())], "{name:?}");
    }
    run(&mut b, "COMMIT").await?;
    run(&mut a, "COMMIT").await?;
    // Names the client never prepared, and dropped ones, fail as in PostgreSQL.
    let missing = b.simple("EXECUTE nosuch").await?;
    assert_eq!(first_error(&missing).map(|e| e.0).as_deref(), Some("26000"));
    run(&mut b, "DEALLOCATE sqlx_s_1").await?;
    let gone = b.simple("EXECUTE sqlx_s_1(1)").await?;
    assert_eq!(first_error(&gone).map(|e| e.0).as_deref(), Some("26000"));
    assert_eq!(value(&mut a, "SELECT 1").await?.0, "1");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_prepare_is_shared_in_transaction_mode() -> anyhow::Result<()> {
    init_tracing();
    let c = cluster("transaction", &["--pool-size", "2"])?;
    let (mut a, _) = login(&c, &[]).await?;
    let pid = value(&mut a, "SELECT pg_backend_pid()").await?.0;
    run(&mut a, "PREPARE p1 (int) AS SELECT $1 * 2").await?;
    // Not pinned: D's transaction takes A's connection, A runs on the other one and p1
    // follows it there.
    let (mut d, _) = login(&c, &[]).await?;
    run(&mut d, "BEGIN").await?;
    assert_eq!(value(&mut d, "SELECT pg_backend_pid()").await?.0, pid, "D has A's connection");
    assert_ne!(value(&mut a, "SELECT pg_backend_pid()").await?.0, pid);
    assert_eq!(value(&mut a, "EXECUTE p1(21)").await?.0, "42");
    // D has no p1 of its own, though its connection has A's statement.
    assert_eq!(first_error(&d.simple("EXECUTE p1(1)").await?).map(|e| e.0).as_deref(), Some("26000"));
    run(&mut d, "ROLLBACK").await?;
    assert_eq!(value(&mut a, "EXPLAIN (COSTS OFF) EXECUTE p1(1)").await?.0, "Result");
    let dup = a.simple("PREPARE p1 AS SELECT 1").await?;
    assert_eq!(first_error(&dup).map(|e| e.0).as_deref(), Some("42P05"));
    let bad = a.simple("PREPARE p2 AS SELEC 1").await?;
    assert_eq!(first_error(&bad).map(|e| e.0).as_deref(), Some("42601"));
    assert_eq!(first_error(&a.simple("EXECUTE p2").await?).map(|e| e.0).as_deref(), Some("26000"));
    run(&mut a, "DEALLOCATE p1").await?;
    assert_eq!(first_error(&a.simple("EXECUTE p1(1)").await?).map(|e| e.0).as_deref(), Some("26000"));
    Ok(())
}
