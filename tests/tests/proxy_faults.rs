//! Faults through the proxy: bad input as raw bytes (garbage before and after startup,
//! malformed and oversized messages, half-sent packets), clients vanishing mid-transaction,
//! mid-query and mid-COPY, a replica killed under read load, and the primary killed under
//! load (writes fail fast with a connection error, reads go on, nothing acknowledged is lost,
//! writes resume when it is back), a replica frozen mid-query (SIGSTOP), TCP keepalive on
//! server connections (for hosts that vanish without a reset), and the proxy itself killed
//! mid-transaction. Each misbehaving client gets an ErrorResponse or is closed, its
//! server connection is rolled back or discarded (checked in the primary's
//! pg_stat_activity), and every other client carries on.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tandem_tests::wire::{first_column, first_error, msg, query, startup, RawClient};
use tandem_tests::{init_tracing, wait_until, Cluster, ClusterOptions, POOLED_SESSION};

/// Logs in, sends `bytes`, and returns everything the proxy answers until it closes.
async fn after_login(port: u16, bytes: &[u8]) -> anyhow::Result<Vec<tandem_tests::wire::Msg>> {
    let mut c = RawClient::login(port, "postgres", "postgres").await?;
    c.send(bytes).await?;
    c.until_closed().await
}

/// Asserts that `msgs` hold a FATAL error with SQLSTATE `code`.
fn assert_fatal(what: &str, msgs: &[tandem_tests::wire::Msg], code: &str) {
    let e = msgs.iter().find(|m| m.tag == b'E');
    let e = e.unwrap_or_else(|| panic!("{what}: no ErrorResponse in {msgs:?}"));
    assert_eq!(e.field(b'C').as_deref(), Some(code), "{what}: {:?}", e.field(b'M'));
    assert_eq!(e.field(b'S').as_deref(), Some("FATAL"), "{what}");
}

/// A connection left dirty (in a transaction) would show a transaction start time older
/// than the statement's; checks a few fresh clients on the shared connections.
async fn pool_is_clean(c: &Cluster) -> anyhow::Result<()> {
    for _ in 0..4 {
        let client = c.connect().await?;
        // Simple protocol: one Query message, so a fresh transaction has now() equal to
        // statement_timestamp().
        let rows = client
            .simple_query(
                "SELECT now() = statement_timestamp(), pg_current_xact_id_if_assigned() IS NULL, count(*) FROM v",
            )
            .await?;
        let row = rows
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
                _ => None,
            })
            .ok_or_else(|| anyhow::anyhow!("no row"))?;
        assert_eq!(row.get(0), Some("t"), "a server connection was returned inside a transaction");
        assert_eq!(row.get(1), Some("t"));
        assert_eq!(row.get(2), Some("0"), "nothing of the vanished clients was committed");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_vanishing_clients() -> anyhow::Result<()> {
    init_tracing();
    // Two primary connections: the bystander's transaction holds one, everyone else shares
    // the other, so a connection returned dirty would be seen by the next client.
    let c = Cluster::start(ClusterOptions {
        replicas: 0,
        proxy_args: vec!["--pool-size".into(), "2".into()],
        ..Default::default()
    })?;
    c.primary.psql("postgres", "CREATE TABLE v (x int); CREATE TABLE w (x int)")?;
    let port = c.proxy_port;
    let bystander = c.connect().await?;
    bystander.batch_execute("BEGIN; INSERT INTO w VALUES (1)").await?;
    let bystander_pid: i32 = bystander.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);

    // --- before startup ---
    let mut raw = RawClient::connect(port).await?;
    raw.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await?;
    let msgs = raw.until_closed().await?;
    assert_fatal("HTTP request", &msgs, "08P01");

    let mut raw = RawClient::connect(port).await?;
    raw.send(&[0, 0, 0, 4, 1, 2, 3, 4]).await?;
    assert_fatal("startup length 4", &raw.until_closed().await?, "08P01");

    let mut raw = RawClient::connect(port).await?;
    raw.send(&[0, 0, 0, 8, 0, 2, 0, 0]).await?;
    assert_fatal("protocol 2.0", &raw.until_closed().await?, "08P01");

    let mut raw = RawClient::connect(port).await?;
    let mut junk = vec![0, 0, 0, 40, 0, 3, 0, 0];
    junk.extend_from_slice(b"user\0postgres"); // no terminators
    junk.resize(40, b'x');
    raw.send(&junk).await?;
    assert_fatal("unterminated startup parameters", &raw.until_closed().await?, "08P01");

    // Half a startup packet, then gone.
    let mut raw = RawClient::connect(port).await?;
    raw.send(&startup("postgres", "postgres")[..7]).await?;
    drop(raw);
    // Garbage straight after a valid SSLRequest refusal.
    let mut raw = RawClient::connect(port).await?;
    raw.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await?;
    assert_eq!(raw.read_byte().await?, b'N');
    raw.send(&[0xff; 64]).await?;
    assert_fatal("garbage after SSLRequest", &raw.until_closed().await?, "08P01");

    // --- after startup ---
    assert_fatal("unknown message type", &after_login(port, &msg(b'z', b"")).await?, "08P01");
    assert_fatal("length below 4", &after_login(port, &[b'Q', 0, 0, 0, 3]).await?, "08P01");
    let started = std::time::Instant::now();
    assert_fatal("oversized message", &after_login(port, &[b'Q', 0x7f, 0xff, 0xff, 0xff]).await?, "54000");
    assert!(started.elapsed() < Duration::from_secs(5), "refused without reading it");
    assert_fatal("query without NUL", &after_login(port, &msg(b'Q', b"SELECT 1")).await?, "08P01");
    assert_fatal("truncated Parse", &after_login(port, &msg(b'P', b"stmt\0SELECT 1")).await?, "08P01");
    let mut bad_bind = msg(b'B', b"\0nosuch\0\0\0\0\0\0\0");
    bad_bind.extend_from_slice(&msg(b'E', b"\0\0\0\0\0"));
    bad_bind.extend_from_slice(&msg(b'S', b""));
    let mut raw = RawClient::login(port, "postgres", "postgres").await?;
    raw.send(&bad_bind).await?;
    let msgs = raw.until_ready().await?;
    assert_eq!(first_error(&msgs).map(|e| e.0).as_deref(), Some("26000"), "{msgs:?}");
    assert_eq!(first_column(&raw.simple("SELECT 5").await?), [Some("5".to_string())]);
    // An extended-protocol error read with Flush before any Sync: the server skips to the
    // Sync, so the connection must stay with this client until then.
    let mut raw = RawClient::login(port, "postgres", "postgres").await?;
    let mut bytes = msg(b'P', b"\0SELEC 1\0\0\0");
    bytes.extend_from_slice(&msg(b'H', b""));
    raw.send(&bytes).await?;
    let e = raw.recv().await?.ok_or_else(|| anyhow::anyhow!("closed"))?;
    assert_eq!(e.sqlstate().as_deref(), Some("42601"));
    raw.send(&msg(b'S', b"")).await?;
    assert_eq!(raw.recv().await?.map(|m| m.tag), Some(b'Z'));
    assert_eq!(first_column(&raw.simple("SELECT 6").await?), [Some("6".to_string())]);
    // ... and the same client vanishing before its Sync.
    let mut raw = RawClient::login(port, "postgres", "postgres").await?;
    raw.send(&bytes).await?;
    assert_eq!(raw.recv().await?.and_then(|m| m.sqlstate()).as_deref(), Some("42601"));
    drop(raw);
    // Terminate followed by garbage.
    let mut bytes = msg(b'X', b"");
    bytes.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    let msgs = after_login(port, &bytes).await?;
    assert!(msgs.iter().all(|m| m.tag != b'E'), "{msgs:?}");

    // --- clients that vanish ---
    // Mid-transaction, after a write.
    let mut raw = RawClient::login(port, "postgres", "postgres").await?;
    raw.simple("BEGIN").await?;
    raw.simple("INSERT INTO v VALUES (1)").await?;
    drop(raw);
    // Mid-transaction with half a message sent.
    let mut raw = RawClient::login(port, "postgres", "postgres").await?;
    raw.simple("BEGIN; INSERT INTO v VALUES (2)").await?;
    raw.send(&query("INSERT INTO v VALUES (3)")[..9]).await?;
    drop(raw);
    // Mid-query, in a transaction.
    let mut raw = RawClient::login(port, "postgres", "postgres").await?;
    raw.simple("BEGIN; INSERT INTO v VALUES (4)").await?;
    raw.send(&query("SELECT pg_sleep(60)")).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(raw);
    // Mid-COPY.
    let mut raw = RawClient::login(port, "postgres", "postgres").await?;
    raw.send(&query("COPY v FROM STDIN")).await?;
    assert_eq!(raw.recv().await?.map(|m| m.tag), Some(b'G'));
    raw.send(&msg(b'd', b"5\n6\n")).await?;
    drop(raw);

    wait_until("vanished clients' server sessions to be cleaned", Duration::from_secs(20), || {
        let n = c
            .primary
            .psql(
                "postgres",
                &format!(
                    "SELECT count(*) FROM pg_stat_activity WHERE {POOLED_SESSION} \
                     AND pid <> {bystander_pid} AND (state LIKE 'idle in transaction%' \
                     OR query LIKE '%pg_sleep(60)%' OR query LIKE 'COPY v%') AND state <> 'idle'"
                ),
            )
            .ok()?;
        (n == "0").then_some(())
    })?;
    pool_is_clean(&c).await?;

    // The bystander never noticed.
    bystander.batch_execute("INSERT INTO w VALUES (2); COMMIT").await?;
    assert_eq!(c.primary.psql("postgres", "SELECT count(*) FROM w")?, "2");
    assert!(c.proxy.try_status()?.is_none(), "the proxy is still running");
    Ok(())
}

/// Whether `client`'s reads reach the replica on `port` again within 10 seconds (a replica
/// back from a fault is put back in rotation by its next good health check).
async fn serves_reads_again(client: &tokio_postgres::Client, port: u16) -> anyhow::Result<bool> {
    for _ in 0..200 {
        let served: i32 = client.query_one("SELECT inet_server_port()", &[]).await?.get(0);
        if served as u16 == port {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_killed_mid_load() -> anyhow::Result<()> {
    init_tracing();
    let mut c = Cluster::start(ClusterOptions::default())?;
    c.primary.psql("postgres", "CREATE TABLE r AS SELECT g AS id FROM generate_series(1, 1000) g")?;
    c.wait_replicated()?;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for k in 0..4 {
        let client = c.connect().await?;
        let (stop, done) = (stop.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let stmt = client.prepare("SELECT count(*), inet_server_port() FROM r WHERE id > $1").await?;
            let mut ports = HashSet::new();
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = if k % 2 == 0 {
                    client.query_one(&stmt, &[&0i32]).await
                } else {
                    client.query_one("SELECT count(*), inet_server_port() FROM r WHERE id > 0", &[]).await
                };
                match r {
                    Ok(row) => {
                        if row.get::<_, i64>(0) != 1000 {
                            errors.push("wrong count".to_string());
                        }
                        ports.insert(row.get::<_, i32>(1) as u16);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        errors.push(format!("{e:?}"));
                        break;
                    }
                }
            }
            anyhow::Ok((ports, errors))
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = done.load(Ordering::Relaxed);
    let killed_port = c.replicas[0].port();
    c.replicas[0].kill9();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = done.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let mut all_ports = HashSet::new();
    for t in tasks {
        let (ports, errors) = t.await??;
        assert!(errors.is_empty(), "clients got errors: {errors:?}\n--- proxy log ---\n{}", c.proxy.log_tail());
        all_ports.extend(ports);
    }
    assert!(before > 20 && after > before + 20, "reads went on: {before} then {after}");
    assert!(all_ports.contains(&killed_port) && all_ports.contains(&c.replicas[1].port()));

    // Now only replica2 serves; after a restart replica1 is back in rotation.
    let client = c.connect().await?;
    for _ in 0..10 {
        let port: i32 = client.query_one("SELECT inet_server_port()", &[]).await?.get(0);
        assert_ne!(port as u16, killed_port);
    }
    c.replicas[0].restart()?;
    assert!(serves_reads_again(&client, killed_port).await?, "the restarted replica serves reads again");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_killed_mid_load() -> anyhow::Result<()> {
    init_tracing();
    let mut c = Cluster::start(ClusterOptions::default())?;
    c.primary.psql("postgres", "CREATE TABLE w (id int PRIMARY KEY); CREATE TABLE r AS SELECT 1 AS one")?;
    c.wait_replicated()?;

    // Readers: autocommit reads, served by the replicas, must not notice the primary's death.
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let client = c.connect().await?;
        let (stop, reads) = (stop.clone(), reads.clone());
        readers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let row = client.query_one("SELECT one FROM r", &[]).await?;
                anyhow::ensure!(row.get::<_, i32>(0) == 1, "wrong row");
                reads.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }

    // A writer: every INSERT the proxy acknowledged must survive the crash.
    let writer = c.connect().await?;
    let mut acked = Vec::new();
    for id in 0..50 {
        writer.execute("INSERT INTO w VALUES ($1)", &[&id]).await?;
        acked.push(id);
    }
    // A client inside a transaction when the primary dies.
    let in_tx = c.connect().await?;
    in_tx.batch_execute("BEGIN; INSERT INTO w VALUES (2000)").await?;
    c.primary.kill9();
    let reads_at_kill = reads.load(Ordering::Relaxed);
    // Its transaction is gone with the server: the proxy says so (FATAL 08006) and closes the
    // client, as PostgreSQL's own crash would; the statement errors instead of hanging.
    tokio::time::timeout(Duration::from_secs(15), in_tx.batch_execute("INSERT INTO w VALUES (2001)"))
        .await
        .map_err(|_| anyhow::anyhow!("a statement in a transaction on the dead primary hung"))?
        .expect_err("the transaction's server is gone");
    assert!(in_tx.is_closed());

    // Writes fail fast with a connection-class error on the same client connection; no hang.
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(15), writer.execute("INSERT INTO w VALUES (1000)", &[]))
        .await
        .map_err(|_| anyhow::anyhow!("a write to the dead primary hung"))?
        .expect_err("a write without a primary cannot succeed");
    let code = err.code().map(|c| c.code().to_owned()).unwrap_or_default();
    assert!(code.starts_with("08") || code.starts_with("57P"), "SQLSTATE {code}: {err}");
    assert!(started.elapsed() < Duration::from_secs(10), "the error took {:?}", started.elapsed());

    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        reads.load(Ordering::Relaxed) > reads_at_kill + 20,
        "reads stopped with the primary\n--- proxy log ---\n{}",
        c.proxy.log_tail()
    );

    // The primary comes back (crash recovery): the same client connection writes again.
    c.primary.restart()?;
    let mut wrote = false;
    for _ in 0..100 {
        if writer.execute("INSERT INTO w VALUES (1001)", &[]).await.is_ok() {
            wrote = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(wrote, "writes did not resume after the primary restarted\n{}", c.proxy.log_tail());
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await??;
    }
    let ids = c.primary.psql("postgres", "SELECT string_agg(id::text, ',' ORDER BY id) FROM w WHERE id < 1000")?;
    assert_eq!(c.primary.psql("postgres", "SELECT count(*) FROM w WHERE id >= 2000")?, "0", "uncommitted rows");
    let expected = acked.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
    assert_eq!(ids, expected, "acknowledged writes lost");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_killed_mid_transaction() -> anyhow::Result<()> {
    init_tracing();
    let mut c = Cluster::start(ClusterOptions { replicas: 0, ..Default::default() })?;
    c.primary.psql("postgres", "CREATE TABLE k (id int)")?;
    let client = c.connect().await?;
    client.batch_execute("INSERT INTO k VALUES (1)").await?;
    client.batch_execute("BEGIN; INSERT INTO k VALUES (2)").await?;
    assert_eq!(c.primary_sessions_in("idle in transaction")?, 1);

    // kill -9 of the proxy: its server connections close, so PostgreSQL rolls the open
    // transaction back; the client sees its connection end instead of hanging.
    c.restart_proxy()?;
    let err = tokio::time::timeout(Duration::from_secs(10), client.batch_execute("COMMIT"))
        .await
        .map_err(|_| anyhow::anyhow!("COMMIT through a dead proxy hung"))?;
    assert!(err.is_err(), "COMMIT cannot succeed through a killed proxy");
    wait_until("the open transaction to be rolled back", Duration::from_secs(10), || {
        (c.primary_sessions_in("idle in transaction").ok()? == 0).then_some(())
    })?;
    assert_eq!(c.primary.psql("postgres", "SELECT string_agg(id::text, ',') FROM k")?, "1");

    // The restarted proxy serves new clients at once.
    let again = c.connect().await?;
    again.batch_execute("INSERT INTO k VALUES (3)").await?;
    assert_eq!(c.primary.psql("postgres", "SELECT string_agg(id::text, ',' ORDER BY id) FROM k")?, "1,3");
    Ok(())
}

/// Whether SHOW NODES reports `node` healthy.
async fn node_healthy(admin: &tokio_postgres::Client, node: &str) -> anyhow::Result<bool> {
    for m in admin.simple_query("SHOW NODES").await? {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            if r.get("node") == Some(node) {
                return Ok(r.get("healthy") == Some("true"));
            }
        }
    }
    anyhow::bail!("SHOW NODES has no {node}")
}

/// A replica whose host hangs (every process SIGSTOPped: sockets open, nothing answers) is
/// not a refused connection: the proxy learns of it only through its health check's
/// timeout. Until then, a read already sent to it waits; after it, reads go to the other
/// replica; when the host wakes, the waiting read completes without an error and the replica
/// is put back in rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_frozen_mid_query() -> anyhow::Result<()> {
    init_tracing();
    let c = Cluster::start(ClusterOptions::default())?;
    // pg_sleep is volatile, so a query calling it goes to the primary; a read that takes a
    // while has to call it through a function declared STABLE. Created through the proxy, it
    // makes the proxy reload its function table; until then calls go to the primary.
    let setup = c.connect().await?;
    setup
        .batch_execute(
            "CREATE TABLE r AS SELECT g AS id FROM generate_series(1, 100) g;
             CREATE FUNCTION slow_read(secs float8) RETURNS int STABLE LANGUAGE sql
                 AS 'SELECT 1 FROM pg_sleep(secs)'",
        )
        .await?;
    c.wait_replicated()?;
    let (frozen_port, other_port) = (c.replicas[0].port(), c.replicas[1].port());
    let mut known = false;
    for _ in 0..100 {
        let row = setup.query_one("SELECT inet_server_port() FROM slow_read(0)", &[]).await?;
        if row.get::<_, i32>(0) as u16 != c.primary.port() {
            known = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(known, "slow_read() is routed to a replica once the proxy knows it is STABLE");

    // Slow reads two at a time until at least one runs on replica1. Least outstanding
    // requests spreads them, but two picks at the same instant (on two worker threads) may
    // both see the replicas idle and choose the same one.
    let mut slow = Vec::new();
    let mut on_frozen = 0;
    for _attempt in 0..10 {
        for _ in 0..2 {
            let client = c.connect().await?;
            slow.push(tokio::spawn(async move {
                let row = client.query_one("SELECT count(*), inet_server_port() FROM r, slow_read(2)", &[]).await?;
                anyhow::Ok((row.get::<_, i64>(0), row.get::<_, i32>(1) as u16))
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        on_frozen = c.replicas[0]
            .psql(
                "postgres",
                "SELECT count(*) FROM pg_stat_activity
                 WHERE state = 'active' AND query LIKE '%slow_read(2)%' AND pid <> pg_backend_pid()",
            )?
            .parse()?;
        if on_frozen > 0 {
            break;
        }
    }
    assert!(on_frozen > 0, "no slow read ran on replica1");
    c.replicas[0].freeze();

    // The health check gives up on the frozen replica within its timeout (connect_timeout_ms,
    // 5 s by default).
    let admin = c.connect_as("postgres", "tandem").await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while node_healthy(&admin, "replica1").await? {
        assert!(std::time::Instant::now() < deadline, "replica1 still healthy\n{}", c.proxy.log_tail());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every read now goes to the other replica, answered in time.
    let reader = c.connect().await?;
    for _ in 0..20 {
        let row = tokio::time::timeout(
            Duration::from_secs(5),
            reader.query_one("SELECT count(*), inet_server_port() FROM r", &[]),
        )
        .await??;
        assert_eq!((row.get::<_, i64>(0), row.get::<_, i32>(1) as u16), (100, other_port));
    }
    // The slow reads on the healthy replica have finished; the ones on the frozen replica
    // wait, and complete without an error once it wakes.
    let waiting: Vec<_> = slow.iter().map(|t| !t.is_finished()).collect();
    assert_eq!(waiting.iter().filter(|w| **w).count(), on_frozen, "only the reads on the frozen replica wait");
    c.replicas[0].thaw();
    for (t, waited) in slow.into_iter().zip(waiting) {
        let result = tokio::time::timeout(Duration::from_secs(10), t).await???;
        assert_eq!(result, (100, if waited { frozen_port } else { other_port }));
    }

    // Thawed, the replica is back in rotation.
    assert!(serves_reads_again(&reader, frozen_port).await?, "the thawed replica serves reads again");
    Ok(())
}

/// Seconds left on the keepalive timers of established TCP connections on this machine whose
/// (local port, remote port) pass `which` (`/proc/net/tcp`: timer kind 2 is keepalive; times
/// are in USER_HZ = 100 ticks).
fn keepalive_timers(which: impl Fn(u16, u16) -> bool) -> Vec<f64> {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let port = |field: &str| u16::from_str_radix(field.split(':').nth(1)?, 16).ok();
    let parse = |line: &str| -> Option<f64> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, remote) = (port(fields.get(1)?)?, port(fields.get(2)?)?);
        let (timer, ticks) = fields.get(5)?.split_once(':')?;
        let established = *fields.get(3)? == "01";
        (which(local, remote) && established && timer == "02")
            .then(|| u64::from_str_radix(ticks, 16).ok().map(|t| t as f64 / 100.0))
            .flatten()
    };
    text.lines().skip(1).filter_map(parse).collect()
}

/// A peer whose host dies or is cut off sends no reset, and a connection waiting on it would
/// hang until the OS notices (two hours by default). Pooled server connections carry TCP
/// keepalive with a 10 s idle time (a vanished server fails them in about 25 s), client
/// connections with 30 s (a vanished client is closed in about a minute and the server
/// connection it held is freed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_probe_with_tcp_keepalive() -> anyhow::Result<()> {
    init_tracing();
    let c = Cluster::start(ClusterOptions { replicas: 0, ..Default::default() })?;
    let client = c.connect().await?;
    let one: i32 = client.query_one("SELECT 1", &[]).await?.get(0);
    assert_eq!(one, 1);
    // The kernel shows a keepalive timer once the last bytes sent are acknowledged (until
    // then it shows the retransmission timer).
    let (mut to_server, mut from_client) = (Vec::new(), Vec::new());
    for _ in 0..40 {
        to_server = keepalive_timers(|_, remote| remote == c.primary.port());
        from_client = keepalive_timers(|local, _| local == c.proxy_port);
        if to_server.iter().any(|&left| left <= 10.5) && from_client.iter().any(|&left| left <= 30.5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        to_server.iter().any(|&left| left > 0.0 && left <= 10.5),
        "a pooled connection to the primary has a keepalive timer of at most 10 s: {to_server:?}"
    );
    assert!(
        from_client.iter().any(|&left| left > 0.0 && left <= 30.5),
        "the client's connection has a keepalive timer of at most 30 s: {from_client:?}"
    );
    Ok(())
}
