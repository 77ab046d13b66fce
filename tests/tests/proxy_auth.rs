//! Client authentication through the proxy against servers that demand passwords: SCRAM
//! for a user configured with `--user`, SCRAM and md5 for users whose secrets the proxy
//! fetches with `auth_query`, wrong passwords refused with 28P01, and the same logins
//! reaching both the primary and a replica.

use std::time::Duration;

use tandem_tests::{free_port, init_tracing, Cluster, ClusterOptions, PgOptions, TandemProcess};

/// Runs `sql` with psql as `user`/`password` through the proxy on `port`.
fn psql_as(c: &Cluster, port: u16, user: &str, password: &str, sql: &str) -> anyhow::Result<Result<String, String>> {
    let dsn = format!("host=127.0.0.1 port={port} user={user} password={password} dbname=postgres");
    let out = c.psql_raw(&dsn, &["-w"], sql)?;
    Ok(if out.status.success() { Ok(out.stdout.trim().to_owned()) } else { Err(out.stderr) })
}

#[test]
fn scram_and_md5_logins_through_the_proxy() -> anyhow::Result<()> {
    init_tracing();
    let pg = PgOptions {
        hba: vec!["host all alice,carol 127.0.0.1/32 scram-sha-256".into(), "host all bob 127.0.0.1/32 md5".into()],
        ..Default::default()
    };
    let c = Cluster::start(ClusterOptions {
        replicas: 1,
        pg,
        proxy_args: ["--auth", "scram", "--user", "alice=alice-pw"].map(String::from).to_vec(),
        ..Default::default()
    })?;
    c.primary.psql(
        "postgres",
        "CREATE ROLE alice LOGIN PASSWORD 'alice-pw';\n\
         CREATE ROLE carol LOGIN PASSWORD 'carol-pw';\n\
         SET password_encryption = 'md5';\n\
         CREATE ROLE bob LOGIN PASSWORD 'bob-pw';\n\
         CREATE TABLE t (x int); GRANT ALL ON t TO alice, bob, carol;",
    )?;
    c.wait_replicated()?;
    let port = c.proxy_port;

    // alice: configured in the proxy; carol: SCRAM secret fetched from the primary.
    for (user, pw) in [("alice", "alice-pw"), ("carol", "carol-pw")] {
        let out = psql_as(&c, port, user, pw, "INSERT INTO t VALUES (1); SELECT current_user;")?;
        assert_eq!(out.as_deref(), Ok(user), "{user} writes on the primary\n{}", c.proxy.log_tail());
        // A read reaches the replica, which demands the password too.
        let out = psql_as(&c, port, user, pw, "SELECT current_setting('in_hot_standby');")?;
        assert_eq!(out.as_deref(), Ok("on"), "{user} reads on the replica");
        let out = psql_as(&c, port, user, "wrong", "SELECT 1;")?;
        let err = out.expect_err("wrong password");
        assert!(err.contains("password authentication failed"), "{user}: {err}");
    }
    let out = psql_as(&c, port, "nobody", "x", "SELECT 1;")?;
    assert!(out.is_err(), "an unknown user is refused");

    // md5 proxy for bob, whose server secret is an md5 hash.
    let md5_port = free_port();
    let listen = format!("127.0.0.1:{md5_port}");
    let primary = format!("primary={}", c.primary.addr());
    let replica = format!("replica1={}", c.replicas[0].addr());
    let proxy = TandemProcess::spawn(&[
        "proxy",
        "--listen",
        &listen,
        "--primary",
        &primary,
        "--replica",
        &replica,
        "--auth",
        "md5",
    ])?;
    proxy.wait_for_port(md5_port, Duration::from_secs(20))?;
    let out = psql_as(&c, md5_port, "bob", "bob-pw", "INSERT INTO t VALUES (2); SELECT current_user;")?;
    assert_eq!(out.as_deref(), Ok("bob"), "{}", proxy.log_tail());
    let out = psql_as(&c, md5_port, "bob", "nope", "SELECT 1;")?;
    assert!(out.expect_err("wrong password").contains("password authentication failed"));
    assert_eq!(c.primary.psql("postgres", "SELECT count(*) FROM t")?, "3");
    Ok(())
}
