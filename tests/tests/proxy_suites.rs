//! Regressions found by running asyncpg's own test suite through the proxy
//! (`tests/drivers/run_asyncpg_suite.sh`), each checked against a real PostgreSQL: a COPY
//! that stalled after a CopyData larger than the proxy's buffer mark, session-mode prepared
//! statements that SQL could not name, the proxy's own FATAL hiding the server's, the pid in
//! notifications, startup settings neither checked nor reported as the server reports them,
//! `DROP DATABASE` (and the other statements that need a database to themselves) refused
//! because of the proxy's idle pooled connections, and startup
//! `options` (`-c name=value`) ignored.

use bytes::Bytes;
use futures::SinkExt;
use tandem_tests::wire::{msg, query, Msg, RawClient};
use tandem_tests::{init_tracing, Cluster, ClusterOptions};

/// A StartupMessage for `postgres`/`postgres` with extra settings, as drivers send them.
fn startup_with(settings: &[(&str, &str)]) -> Vec<u8> {
    tandem_tests::wire::startup_with("postgres", "postgres", settings)
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// Parse + Sync of a named statement without parameters.
fn parse(name: &str, sql: &str) -> Vec<u8> {
    let body = [cstr(name), cstr(sql), vec![0, 0]].concat();
    [msg(b'P', &body), msg(b'S', &[])].concat()
}

fn parameter(msgs: &[Msg], name: &str) -> Option<String> {
    msgs.iter().filter(|m| m.tag == b'S').find_map(|m| {
        let mut parts = m.body.split(|b| *b == 0);
        let n = parts.next()?;
        let v = parts.next()?;
        (n == name.as_bytes()).then(|| String::from_utf8_lossy(v).into_owned())
    })
}

fn errors(msgs: &[Msg]) -> Vec<String> {
    msgs.iter().filter_map(Msg::sqlstate).collect()
}

fn session_cluster() -> anyhow::Result<Cluster> {
    Cluster::start(ClusterOptions { replicas: 0, pool_mode: "session", ..Default::default() })
}

/// Session pooling keeps a client's statement names on its server connection, so SQL that
/// names them works as on PostgreSQL (asyncpg: test_prepare_explicitly_named).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_statements_are_visible_to_sql() -> anyhow::Result<()> {
    init_tracing();
    let c = session_cluster()?;
    let mut cl = RawClient::login(c.proxy_port, "postgres", "postgres").await?;
    cl.send(&parse("foobar", "SELECT 1")).await?;
    assert_eq!(errors(&cl.until_ready().await?), Vec::<String>::new());
    let out = cl.simple("EXECUTE foobar").await?;
    assert_eq!(tandem_tests::wire::first_column(&out), vec![Some("1".to_string())], "{out:?}");
    let out = cl.simple("SELECT count(*) FROM pg_prepared_statements WHERE name = 'foobar'").await?;
    assert_eq!(tandem_tests::wire::first_column(&out), vec![Some("1".to_string())]);
    // DEALLOCATE frees the name: a new Parse of it succeeds.
    assert_eq!(errors(&cl.simple("DEALLOCATE foobar").await?), Vec::<String>::new());
    cl.send(&parse("foobar", "SELECT 2")).await?;
    assert_eq!(errors(&cl.until_ready().await?), Vec::<String>::new());
    assert_eq!(tandem_tests::wire::first_column(&cl.simple("EXECUTE foobar").await?), vec![Some("2".to_string())]);
    // Close removes it from the server too.
    cl.send(&[msg(b'C', &[&b"S"[..], &cstr("foobar")].concat()), msg(b'S', &[])].concat()).await?;
    let out = cl.until_ready().await?;
    assert!(out.iter().any(|m| m.tag == b'3'), "CloseComplete: {out:?}");
    assert_eq!(errors(&cl.simple("EXECUTE foobar").await?), vec!["26000".to_string()]);
    // A redefinition while it exists is refused, as PostgreSQL does.
    cl.send(&parse("again", "SELECT 3")).await?;
    cl.until_ready().await?;
    cl.send(&parse("again", "SELECT 4")).await?;
    assert_eq!(errors(&cl.until_ready().await?), vec!["42P05".to_string()]);
    Ok(())
}

/// A client's own notifications carry the pid it was given (asyncpg: test_listen_01), which
/// in session mode is its own backend's, and a backend terminated under a client leaves the
/// client with the server's 57P01 only (asyncpg: test_execute_script_interrupted_by_server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_and_termination_look_like_postgres() -> anyhow::Result<()> {
    init_tracing();
    let c = session_cluster()?;
    let mut cl = RawClient::connect(c.proxy_port).await?;
    cl.send(&startup_with(&[])).await?;
    let greeting = cl.until_ready().await?;
    let key = greeting.iter().find(|m| m.tag == b'K').expect("BackendKeyData");
    let pid = i32::from_be_bytes([key.body[0], key.body[1], key.body[2], key.body[3]]);
    let own = tandem_tests::wire::first_column(&cl.simple("SELECT pg_backend_pid()").await?);
    assert_eq!(own, vec![Some(pid.to_string())], "session mode: the client's pid is its backend's");
    cl.simple("LISTEN chan").await?;
    let out = cl.simple("NOTIFY chan, 'hi'").await?;
    let note = out.iter().find(|m| m.tag == b'A').expect("own notification");
    assert_eq!(i32::from_be_bytes([note.body[0], note.body[1], note.body[2], note.body[3]]), pid);

    // Another client's notification carries that client's pid (asyncpg: test_listen_02).
    let mut other = RawClient::connect(c.proxy_port).await?;
    other.send(&startup_with(&[])).await?;
    let greeting = other.until_ready().await?;
    let key = greeting.iter().find(|m| m.tag == b'K').expect("BackendKeyData");
    let other_pid = i32::from_be_bytes([key.body[0], key.body[1], key.body[2], key.body[3]]);
    other.simple("NOTIFY chan, 'from the other'").await?;
    let mut note = None;
    for _ in 0..50 {
        let out = cl.simple("SELECT 1").await?;
        note = out.into_iter().find(|m| m.tag == b'A');
        if note.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let note = note.expect("the other client's notification");
    assert_eq!(i32::from_be_bytes([note.body[0], note.body[1], note.body[2], note.body[3]]), other_pid);

    cl.send(&query("SELECT pg_terminate_backend(pg_backend_pid())")).await?;
    let out = cl.until_closed().await?;
    assert_eq!(errors(&out), vec!["57P01".to_string()], "{out:?}");
    Ok(())
}

/// Under transaction pooling a notification still names the client that sent it, after
/// that client released the backend and after it disconnected (PostgreSQL delivers it at
/// the sender's commit; psycopg2: test_notify_*, asyncpg: test_listen_02).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_name_the_sender_after_it_released_the_backend() -> anyhow::Result<()> {
    init_tracing();
    let c = Cluster::start(ClusterOptions {
        replicas: 0,
        proxy_args: vec!["--pool-size".into(), "2".into()],
        ..Default::default()
    })?;
    let pid_of = |greeting: &[Msg]| {
        let key = greeting.iter().find(|m| m.tag == b'K').expect("BackendKeyData");
        i32::from_be_bytes([key.body[0], key.body[1], key.body[2], key.body[3]])
    };
    let mut listener = RawClient::connect(c.proxy_port).await?;
    listener.send(&startup_with(&[])).await?;
    listener.until_ready().await?;
    listener.simple("LISTEN chan").await?;
    let next_note = async |listener: &mut RawClient| -> anyhow::Result<(i32, String)> {
        for _ in 0..100 {
            let out = listener.simple("SELECT 1").await?;
            if let Some(note) = out.into_iter().find(|m| m.tag == b'A') {
                let pid = i32::from_be_bytes([note.body[0], note.body[1], note.body[2], note.body[3]]);
                let payload = note.body[4..].split(|b| *b == 0).nth(1).unwrap_or_default();
                return Ok((pid, String::from_utf8_lossy(payload).into_owned()));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        anyhow::bail!("no notification")
    };
    for (i, how) in ["autocommit, still connected", "in a transaction, then gone"].iter().enumerate() {
        let mut sender = RawClient::connect(c.proxy_port).await?;
        sender.send(&startup_with(&[])).await?;
        let sender_pid = pid_of(&sender.until_ready().await?);
        if i == 0 {
            sender.simple("NOTIFY chan, 'first'").await?;
        } else {
            sender.simple("BEGIN").await?;
            sender.simple("NOTIFY chan, 'second'").await?;
            sender.simple("COMMIT").await?;
            sender.send(&msg(b'X', &[])).await?;
            sender.until_closed().await?;
        }
        let (pid, payload) = next_note(&mut listener).await?;
        assert_eq!(pid, sender_pid, "{how}: the notification names the sender");
        assert_eq!(payload, if i == 0 { "first" } else { "second" });
    }
    Ok(())
}

/// Startup settings are reported the way the server reports them, and refused the way the
/// server refuses them (asyncpg: test_get_settings_01).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_settings_are_checked_by_the_server() -> anyhow::Result<()> {
    init_tracing();
    let c = Cluster::start(ClusterOptions { replicas: 0, ..Default::default() })?;
    for _ in 0..2 {
        // Twice: the second login takes the verdict from the pool's cache.
        let mut cl = RawClient::connect(c.proxy_port).await?;
        cl.send(&startup_with(&[
            ("client_encoding", "'utf-8'"),
            ("DateStyle", "iso, dmy"),
            ("application_name", "suite app"),
        ]))
        .await?;
        let greeting = cl.until_ready().await?;
        assert_eq!(parameter(&greeting, "application_name").as_deref(), Some("suite app"));
        assert_eq!(parameter(&greeting, "client_encoding").as_deref(), Some("UTF8"));
        assert_eq!(parameter(&greeting, "DateStyle").as_deref(), Some("ISO, DMY"));
        let out = cl.simple("SELECT to_char(date '2024-02-01', 'DD') || ' ' || date '2024-02-01'::text").await?;
        assert_eq!(tandem_tests::wire::first_column(&out), vec![Some("01 2024-02-01".to_string())]);
    }
    // Every reported setting the client chose is reported as the server has it, not as the
    // pool's connections have it: libpq and psycopg2 escape string literals by
    // standard_conforming_strings (reporting "on" for "off" let a backslash in a value
    // end its literal), and target_session_attrs reads default_transaction_read_only.
    let mut cl = RawClient::connect(c.proxy_port).await?;
    cl.send(&startup_with(&[
        ("options", "-c standard_conforming_strings=off"),
        ("default_transaction_read_only", "on"),
        ("timezone", "Europe/Paris"),
    ]))
    .await?;
    let greeting = cl.until_ready().await?;
    assert_eq!(parameter(&greeting, "standard_conforming_strings").as_deref(), Some("off"));
    assert_eq!(parameter(&greeting, "default_transaction_read_only").as_deref(), Some("on"));
    assert_eq!(parameter(&greeting, "TimeZone").as_deref(), Some("Europe/Paris"));
    let out = cl
        .simple(
            "SELECT current_setting('standard_conforming_strings') || ' ' \
             || current_setting('default_transaction_read_only') || ' ' || 'a\\\\b'",
        )
        .await?;
    assert_eq!(
        tandem_tests::wire::first_column(&out),
        vec![Some("off on a\\b".to_string())],
        "backslash escapes apply"
    );
    // application_name as PostgreSQL reports it: truncated to 63 bytes (with a notice that
    // says so, tokio-postgres: notices), non-ASCII cleaned.
    for name in ["x".repeat(70), "café".to_string()] {
        let mut greetings = Vec::new();
        for port in [c.primary.port(), c.proxy_port] {
            let mut cl = RawClient::connect(port).await?;
            cl.send(&startup_with(&[("application_name", &name)])).await?;
            let greeting = cl.until_ready().await?;
            let notices: Vec<_> = greeting.iter().filter(|m| m.tag == b'N').map(|m| m.body.clone()).collect();
            greetings.push((parameter(&greeting, "application_name"), notices));
        }
        assert_eq!(greetings[1], greetings[0], "application_name {name:?}: proxy vs PostgreSQL");
    }
    // A client without those settings still sees the server's defaults.
    let mut plain = RawClient::connect(c.proxy_port).await?;
    plain.send(&startup_with(&[])).await?;
    let greeting = plain.until_ready().await?;
    assert_eq!(parameter(&greeting, "standard_conforming_strings").as_deref(), Some("on"));
    assert_eq!(parameter(&greeting, "default_transaction_read_only").as_deref(), Some("off"));

    let mut cl = RawClient::connect(c.proxy_port).await?;
    cl.send(&startup_with(&[("client_encoding", "no-such-encoding")])).await?;
    let out = cl.until_closed().await?;
    assert_eq!(errors(&out), vec!["22023".to_string()], "{out:?}");
    assert!(out.iter().all(|m| m.tag != b'Z'), "no session for refused settings");
    Ok(())
}

/// `options` (libpq's `options=`, `PGOPTIONS`) carries `-c name=value` settings; they apply
/// to every transaction of the session, whichever pooled connection runs it, as they would
/// on PostgreSQL. A switch the proxy cannot honour is refused with PostgreSQL's SQLSTATE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_options_are_applied() -> anyhow::Result<()> {
    init_tracing();
    let c = Cluster::start(ClusterOptions { replicas: 0, ..Default::default() })?;
    c.psql("CREATE SCHEMA opts; CREATE TABLE opts.t AS SELECT 42 AS v")?;
    let conninfo =
        format!("{} options='-c search_path=opts,public --statement-timeout=4321'", c.dsn("postgres", "postgres"));
    // Another client holds a connection in a transaction, so psql's statements do not all
    // run on the connection that first got its settings.
    let holder = c.connect().await?;
    holder.batch_execute("BEGIN; SELECT 1").await?;
    let out = c.psql_raw(&conninfo, &[], "SHOW search_path; SHOW statement_timeout; SELECT v FROM t;")?;
    assert!(out.status.success(), "psql failed: {}\n{}", out.stderr, out.stdout);
    assert_eq!(out.stdout.lines().collect::<Vec<_>>(), vec!["opts,public", "4321ms", "42"]);
    holder.batch_execute("COMMIT").await?;

    // tokio-postgres sends the same parameter.
    let mut cfg: tokio_postgres::Config = c.dsn("postgres", "postgres").parse()?;
    cfg.options("-c search_path=opts");
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    for _ in 0..3 {
        let row = client.query_one("SELECT v FROM t", &[]).await?;
        assert_eq!(row.get::<_, i32>(0), 42);
    }

    let bad = format!("{} options='-B 100'", c.dsn("postgres", "postgres"));
    let mut raw = tandem_tests::wire::RawClient::connect(c.proxy_port).await?;
    raw.send(&startup_with(&[("options", "-B 100")])).await?;
    let out = raw.until_closed().await?;
    assert_eq!(errors(&out), vec!["42601".to_string()], "{out:?}");
    let psql_bad = c.psql_raw(&bad, &[], "SELECT 1")?;
    assert!(!psql_bad.status.success());
    assert!(psql_bad.stderr.contains("unsupported command-line argument"), "{}", psql_bad.stderr);
    Ok(())
}

/// A CopyData message larger than the proxy's buffer high-water mark used to leave the
/// client unread once the buffer drained (asyncpg: test_copy_records_to_table_* hung).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_with_messages_larger_than_the_buffer_mark() -> anyhow::Result<()> {
    init_tracing();
    let c = Cluster::start(ClusterOptions { replicas: 0, ..Default::default() })?;
    let client = c.connect().await?;
    client.batch_execute("CREATE TABLE big (v text)").await?;
    let row = format!("{}\n", "x".repeat(2 << 20));
    for round in 1..=3u64 {
        let sink = client.copy_in("COPY big FROM STDIN").await?;
        futures::pin_mut!(sink);
        // One CopyData message per row, sent back to back.
        for _ in 0..2 {
            sink.feed(Bytes::from(row.clone())).await?;
        }
        let n = tokio::time::timeout(std::time::Duration::from_secs(30), sink.finish()).await??;
        assert_eq!(n, 2);
        assert_eq!(c.primary.psql("postgres", "SELECT count(*) FROM big")?, (2 * round).to_string());
    }
    Ok(())
}

/// `DROP DATABASE` is not refused because of the proxy's own idle pooled connections to
/// the database (asyncpg: TestIntrospection teardown, test_type_cache_invalidation_in_pool).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_database_closes_idle_pooled_connections() -> anyhow::Result<()> {
    init_tracing();
    for pool_mode in ["transaction", "session"] {
        let c = Cluster::start(ClusterOptions { replicas: 0, pool_mode, ..Default::default() })?;
        drop_database_body(&c).await?;
    }
    Ok(())
}

async fn drop_database_body(c: &Cluster) -> anyhow::Result<()> {
    let admin = c.connect().await?;
    for round in 0..2 {
        admin.batch_execute("CREATE DATABASE drop_me").await?;
        {
            let user = c.connect_as("postgres", "drop_me").await?;
            user.batch_execute("CREATE TABLE t (x int)").await?;
            assert_eq!(user.query_one("SELECT 1", &[]).await?.get::<_, i32>(0), 1);
        }
        // No pause: in session mode the ended session's connection may still be resetting
        // (DISCARD ALL) when the DROP arrives.
        let sql = if round == 0 { "DROP DATABASE \"drop_me\"" } else { "drop database if exists DROP_ME" };
        admin.batch_execute(sql).await?;
    }
    assert_eq!(c.primary.psql("postgres", "SELECT count(*) FROM pg_database WHERE datname = 'drop_me'")?, "0");

    // The other statements PostgreSQL refuses while someone is connected to a database:
    // copying it as a template and renaming it, also sent with the extended protocol (as
    // pgjdbc sends everything).
    admin.batch_execute("CREATE DATABASE tpl").await?;
    use_database(c, "tpl").await?;
    // Unnamed statement: Parse, Bind, Execute, Sync.
    let mut raw = RawClient::login(c.proxy_port, "postgres", "postgres").await?;
    let unnamed = [
        msg(b'P', &[cstr(""), cstr("CREATE DATABASE tpl_copy TEMPLATE tpl"), vec![0, 0]].concat()),
        msg(b'B', &[cstr(""), cstr(""), vec![0, 0, 0, 0, 0, 0]].concat()),
        msg(b'E', &[cstr(""), vec![0, 0, 0, 0]].concat()),
        msg(b'S', &[]),
    ]
    .concat();
    raw.send(&unnamed).await?;
    assert_eq!(errors(&raw.until_ready().await?), Vec::<String>::new());
    use_database(c, "tpl").await?;
    admin.execute("ALTER DATABASE tpl RENAME TO tpl_renamed", &[]).await?;
    use_database(c, "tpl_copy").await?;
    admin.execute("DROP DATABASE tpl_copy", &[]).await?;
    let names = c.primary.psql(
        "postgres",
        "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database WHERE datname LIKE 'tpl%'",
    )?;
    assert_eq!(names, "tpl_renamed");
    Ok(())
}

/// Leaves the proxy with an idle pooled connection to `database`.
async fn use_database(c: &Cluster, database: &str) -> anyhow::Result<()> {
    let user = c.connect_as("postgres", database).await?;
    assert_eq!(user.query_one("SELECT current_database()::text", &[]).await?.get::<_, String>(0), database);
    Ok(())
}
