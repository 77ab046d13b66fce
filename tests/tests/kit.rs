//! Proves the test kit against real PostgreSQL: primaries, streaming standbys, crash and
//! restart, psql, options, and that nothing is left running after `Drop`.

use std::time::Duration;

use tandem_tests::kit::procs::{children_of, is_alive, pids_with_cmdline};
use tandem_tests::{init_tracing, tandem_bin, wait_until, PgOptions, PgServer, TandemProcess};

/// `wait_until` as an Option, for assertions with custom messages.
fn eventually<T>(timeout: Duration, f: impl FnMut() -> Option<T>) -> Option<T> {
    wait_until("condition", timeout, f).ok()
}

#[tokio::test]
async fn standby_replays_rows_from_primary() -> anyhow::Result<()> {
    init_tracing();
    let primary = PgServer::start("primary", PgOptions::default())?;
    assert_eq!(primary.psql("postgres", "SHOW wal_level")?, "logical");
    assert_eq!(primary.psql("postgres", "SELECT pg_is_in_recovery()")?, "f");

    let standby = primary.start_standby("standby")?;
    assert_ne!(standby.port(), primary.port());
    assert_eq!(standby.psql("postgres", "SELECT pg_is_in_recovery()")?, "t");

    let client = primary.connect("postgres", "postgres").await?;
    client.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'hello')").await?;

    let seen = eventually(Duration::from_secs(30), || {
        standby.psql("postgres", "SELECT v FROM t WHERE id = 1").ok().filter(|v| v == "hello")
    });
    assert_eq!(seen.as_deref(), Some("hello"), "standby log:\n{}", standby.log_tail());

    let sc = standby.connect("postgres", "postgres").await?;
    let row = sc.query_one("SELECT pg_is_in_recovery()", &[]).await?;
    assert!(row.get::<_, bool>(0));
    // The standby streams from the primary under its cluster_name.
    let app = primary.psql("postgres", "SELECT application_name FROM pg_stat_replication")?;
    assert_eq!(app, "standby");
    Ok(())
}

#[test]
fn kill9_then_restart_keeps_port_and_data() -> anyhow::Result<()> {
    init_tracing();
    let mut pg = PgServer::start("crashy", PgOptions::default())?;
    let port = pg.port();
    pg.psql("postgres", "CREATE TABLE k (x int); INSERT INTO k VALUES (7)")?;
    let pid = pg.postmaster_pid().expect("postmaster.pid");
    let children = children_of(pid);
    assert!(!children.is_empty(), "postmaster has background workers");

    pg.kill9();
    assert!(!is_alive(pid));
    assert!(children.iter().all(|c| !is_alive(*c)));
    assert!(pg.psql("postgres", "SELECT 1").is_err(), "server is down after kill9");

    pg.restart()?;
    assert_eq!(pg.port(), port);
    assert_eq!(pg.psql("postgres", "SELECT x FROM k")?, "7");
    assert_ne!(pg.postmaster_pid(), Some(pid));

    // A clean stop and start works too, and stop is idempotent.
    pg.stop();
    pg.stop();
    assert!(!pg.is_running());
    pg.restart()?;
    assert_eq!(pg.psql("postgres", "SELECT count(*) FROM k")?, "1");
    Ok(())
}

#[test]
fn psql_returns_rows_and_reports_errors() -> anyhow::Result<()> {
    init_tracing();
    let pg = PgServer::start("psql", PgOptions::default())?;
    let out = pg.psql(
        "postgres",
        "CREATE TABLE p (a int, b text);\n\
         INSERT INTO p VALUES (1, 'x'), (2, 'y');\n\
         SELECT a, b FROM p ORDER BY a;",
    )?;
    assert_eq!(out, "1|x\n2|y");
    assert_eq!(pg.psql("postgres", "SELECT 1; SELECT 2")?, "1\n2");

    let err = pg.psql("postgres", "SELECT * FROM no_such_table").unwrap_err().to_string();
    assert!(err.contains("no_such_table") && err.contains("does not exist"), "{err}");
    // ON_ERROR_STOP: nothing after the failing statement runs.
    assert!(pg.psql("postgres", "SELECT 1/0; CREATE TABLE after_err (x int)").is_err());
    assert_eq!(pg.psql("postgres", "SELECT count(*) FROM pg_class WHERE relname = 'after_err'")?, "0");
    assert!(pg.psql("no_such_db", "SELECT 1").is_err());
    Ok(())
}

#[tokio::test]
async fn options_apply_hba_and_settings() -> anyhow::Result<()> {
    init_tracing();
    let opts = PgOptions {
        wal_level_logical: false,
        hba: vec!["host all alice 127.0.0.1/32 scram-sha-256".into()],
        settings: vec![("work_mem".into(), "7MB".into())],
    };
    let pg = PgServer::start("opts", opts)?;
    assert_eq!(pg.psql("postgres", "SHOW wal_level")?, "replica");
    assert_eq!(pg.psql("postgres", "SHOW work_mem")?, "7MB");
    // The kit's common settings apply to every server.
    assert_eq!(pg.psql("postgres", "SHOW fsync")?, "off");
    assert_eq!(pg.psql("postgres", "SHOW max_connections")?, "200");
    assert_eq!(pg.psql("postgres", "SHOW listen_addresses")?, "127.0.0.1");
    pg.psql("postgres", "CREATE ROLE alice LOGIN PASSWORD 'secret'")?;

    // alice's line comes before the trust lines, so she needs her password.
    assert!(pg.connect("alice", "postgres").await.is_err());
    let dsn = format!("{} password=secret", pg.dsn("alice", "postgres"));
    let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let row = client.query_one("SELECT current_user::text", &[]).await?;
    assert_eq!(row.get::<_, String>(0), "alice");

    // Everyone else is trusted on loopback, via both connection-string forms.
    let via_url = tokio_postgres::connect(&pg.url("postgres", "postgres"), tokio_postgres::NoTls).await;
    assert!(via_url.is_ok());
    assert_eq!(pg.addr(), format!("127.0.0.1:{}", pg.port()));
    assert_eq!(pg.host(), "127.0.0.1");
    assert_eq!(pg.name(), "opts");
    Ok(())
}

#[test]
fn drop_leaves_no_postgres_process() -> anyhow::Result<()> {
    init_tracing();
    let pg = PgServer::start("dropme", PgOptions::default())?;
    let standby = pg.start_standby("dropme-standby")?;
    let mut pids = Vec::new();
    let mut dirs = Vec::new();
    for server in [&pg, &standby] {
        let pid = server.postmaster_pid().expect("postmaster.pid");
        pids.push(pid);
        pids.extend(children_of(pid));
        dirs.push(server.data_dir().to_path_buf());
    }
    // Children may include short-lived backends, so only the postmasters must be alive here.
    let postmasters = [pg.postmaster_pid(), standby.postmaster_pid()];
    assert!(postmasters.iter().flatten().all(|p| is_alive(*p)));
    assert!(!pids_with_cmdline(&dirs[0].to_string_lossy()).is_empty());

    drop(standby);
    drop(pg);

    let gone = eventually(Duration::from_secs(30), || pids.iter().all(|p| !is_alive(*p)).then_some(()));
    assert!(gone.is_some(), "processes left: {:?}", pids.iter().filter(|p| is_alive(**p)).collect::<Vec<_>>());
    for dir in &dirs {
        assert!(pids_with_cmdline(&dir.to_string_lossy()).is_empty());
        assert!(!dir.exists(), "{} removed", dir.display());
    }
    Ok(())
}

#[test]
fn drop_during_panic_stops_server() {
    init_tracing();
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let pg = PgServer::start("panicky", PgOptions::default()).expect("start");
        let pid = pg.postmaster_pid().expect("pid");
        tx.send((pid, pg.data_dir().to_path_buf())).expect("send");
        panic!("test failure while a server runs");
    })
    .join();
    assert!(result.is_err());
    let (pid, dir) = rx.recv().expect("pid");
    assert!(!is_alive(pid));
    assert!(!dir.exists());
}

#[test]
fn tandem_binary_runs_when_built() -> anyhow::Result<()> {
    init_tracing();
    if !tandem_bin().is_file() {
        eprintln!("skipping: {} not built (cargo build -p tandem)", tandem_bin().display());
        return Ok(());
    }
    let mut p = TandemProcess::spawn(&["--help"])?;
    // The CLI is still being written; only that the binary starts and exits is checked.
    p.wait_exit(Duration::from_secs(30))?;
    Ok(())
}
