//! `tandem replicator` against servers that accept TLS connections only (pg_hba `hostssl`,
//! plain TCP rejected): with `sslmode=require` in its DSNs it copies, streams and applies as
//! it does over plain TCP, and the connections it holds on the primary (replication stream,
//! SQL sessions) and on the replica (writer sessions) are encrypted (`pg_stat_ssl`).

mod replicator_support;

use std::time::Duration;

use anyhow::Result;
use replicator_support::{wait_converged, wait_copied, Replicator};
use tandem_tests::cluster::server_cert;
use tandem_tests::{init_tracing, PgOptions, PgServer};

/// `(sessions, all encrypted)` of the Tandem connections on `pg` whose application_name
/// matches `pattern`.
fn tandem_sessions_encrypted(pg: &PgServer, pattern: &str) -> Result<String> {
    pg.psql(
        "postgres",
        &format!(
            "SELECT count(*) || ',' || coalesce(bool_and(s.ssl), false) FROM pg_stat_ssl s \
             JOIN pg_stat_activity a USING (pid) WHERE a.application_name LIKE '{pattern}'"
        ),
    )
}

#[test]
fn replicator_over_tls_only_servers() -> Result<()> {
    init_tracing();
    let certs = tempfile::tempdir()?;
    let (cert, key) = server_cert(certs.path())?;
    let primary = PgServer::start("primary", PgOptions::tls_only(&cert, &key))?;
    primary.psql("postgres", "CREATE DATABASE app")?;
    primary.psql(
        "app",
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g",
    )?;
    let r1 = PgServer::start("r1", PgOptions::tls_only(&cert, &key))?;
    let dir = tempfile::tempdir()?;
    let mut rep = Replicator::new(dir.path(), &primary, &[("r1", &r1)], "sync", &["app"], &[]);
    for arg in rep.args.iter_mut().filter(|a| a.contains("postgres://")) {
        arg.push_str("?sslmode=require");
    }
    rep.start()?;
    wait_copied(&rep, &[&r1], "app", Duration::from_secs(120))?;
    primary.psql(
        "app",
        "INSERT INTO t SELECT g, 'v' || g FROM generate_series(101, 200) g; UPDATE t SET v = 'u' WHERE id <= 10",
    )?;
    let sums = wait_converged(&rep, &primary, &[&r1], "app", Duration::from_secs(60))?;
    assert!(sums.iter().any(|(t, c)| t == "public.t" && c.starts_with("200:")), "{sums:?}");

    let on_primary = tandem_sessions_encrypted(&primary, "tandem%")?;
    let (count, encrypted) = on_primary.split_once(',').unwrap_or_default();
    assert!(count.parse::<u32>().unwrap_or(0) >= 2, "replication stream and SQL session: {on_primary}");
    assert_eq!(encrypted, "true", "on the primary: {on_primary}");
    let on_replica = tandem_sessions_encrypted(&r1, "tandem-apply")?;
    let (count, encrypted) = on_replica.split_once(',').unwrap_or_default();
    assert!(count.parse::<u32>().unwrap_or(0) >= 1, "writer session: {on_replica}");
    assert_eq!(encrypted, "true", "on the replica: {on_replica}");
    rep.stop()?;
    Ok(())
}
