//! `tandem replicator` refuses to start, with a message saying what to fix,
//! when the primary cannot feed it or the command line is wrong — before it
//! creates anything on the primary.

mod replicator_support;

use std::time::Duration;

use anyhow::Result;
use replicator_support::Replicator;
use tandem_tests::{init_tracing, PgOptions, PgServer, TandemProcess};

/// Runs `tandem ARGS`, expects a failing exit within 60 s, returns its output.
fn fails_with(args: &[String]) -> Result<String> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p = TandemProcess::spawn(&args)?;
    let status = p.wait_exit(Duration::from_secs(60))?;
    assert!(!status.success(), "expected a failure, got {status}\n{}", p.log());
    Ok(p.log())
}

#[test]
fn primary_without_logical_wal_is_refused_with_a_clear_message() -> Result<()> {
    init_tracing();
    let primary = PgServer::start("plainwal", PgOptions { wal_level_logical: false, ..PgOptions::default() })?;
    let replica = PgServer::start("replica", PgOptions::default())?;
    let dir = tempfile::tempdir()?;
    let rep = Replicator::new(dir.path(), &primary, &[("r1", &replica)], "async", &[], &[]);
    let log = fails_with(&rep.args)?;
    assert!(log.contains("wal_level is \"replica\"; set wal_level = logical on the primary and restart it"), "{log}");
    // Nothing was created on the primary.
    assert_eq!(primary.psql("postgres", "SELECT count(*) FROM pg_replication_slots")?, "0");
    assert_eq!(primary.psql("postgres", "SELECT count(*) FROM pg_publication")?, "0");
    Ok(())
}

#[test]
fn role_without_replication_privilege_is_refused() -> Result<()> {
    init_tracing();
    let primary = PgServer::start("noreplrole", PgOptions::default())?;
    primary.psql("postgres", "CREATE ROLE plain LOGIN")?;
    let replica = PgServer::start("replica", PgOptions::default())?;
    let dir = tempfile::tempdir()?;
    let mut rep = Replicator::new(dir.path(), &primary, &[("r1", &replica)], "async", &[], &[]);
    rep.args[2] = primary.url("plain", "postgres");
    let log = fails_with(&rep.args)?;
    assert!(log.contains("role \"plain\" may not replicate; run ALTER ROLE \"plain\" REPLICATION"), "{log}");
    Ok(())
}

#[test]
fn bad_command_lines_are_explained() -> Result<()> {
    init_tracing();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let base = [
        "replicator",
        "--primary",
        "postgres://postgres@127.0.0.1:1",
        "--data-dir",
        "/nonexistent/tandem",
        "--replication",
        "logical",
    ];
    let mut a = s(&base);
    a.extend(s(&["--mode", "eventually", "--replica", "r1=postgres://postgres@127.0.0.1:2"]));
    assert!(fails_with(&a)?.contains("invalid mode \"eventually\": expected sync or async"));

    let mut a = s(&base);
    a.extend(s(&["--mode", "sync", "--replica", "postgres://postgres@127.0.0.1:2"]));
    assert!(fails_with(&a)?.contains("expected NAME=postgres://USER@HOST:PORT"));

    let mut a = s(&base);
    a.extend(s(&["--mode", "sync"]));
    assert!(fails_with(&a)?.contains("--replica NAME=DSN is required"));

    let mut a = s(&base);
    a.extend(s(&["--mode", "sync", "--sync-quorum", "2", "--replica", "r1=postgres://postgres@127.0.0.1:2"]));
    assert!(fails_with(&a)?.contains("sync_quorum 2 is larger than the number of replicas (1)"));

    // The same settings come from TANDEM_REPLICATOR_* variables.
    let mut p = TandemProcess::spawn_with_env(
        &["replicator"],
        &[
            ("TANDEM_REPLICATOR_PRIMARY", "postgres://postgres@127.0.0.1:1"),
            ("TANDEM_REPLICATOR_REPLICAS", "r1=postgres://postgres@127.0.0.1:2,r2=postgres://postgres@127.0.0.1:3"),
            ("TANDEM_REPLICATOR_DATA_DIR", "/nonexistent/tandem"),
            ("TANDEM_REPLICATOR_MODE", "sync"),
            ("TANDEM_REPLICATOR_SYNC_QUORUM", "3"),
            ("TANDEM_REPLICATOR_REPLICATION", "logical"),
        ],
    )?;
    assert!(!p.wait_exit(Duration::from_secs(60))?.success());
    assert!(p.log().contains("sync_quorum 3 is larger than the number of replicas (2)"), "{}", p.log());

    // Unreachable primary: a connection error naming the primary, not a hang.
    let dir = tempfile::tempdir()?;
    let mut a = s(&base);
    a[4] = dir.path().display().to_string();
    a.extend(s(&["--mode", "async", "--replica", "r1=postgres://postgres@127.0.0.1:2"]));
    let log = fails_with(&a)?;
    assert!(log.contains("on the primary"), "{log}");
    Ok(())
}
