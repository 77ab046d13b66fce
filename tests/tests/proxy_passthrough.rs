//! Pass-through authentication (`--auth passthrough`): with a primary whose pg_hba.conf
//! mixes trust, password, md5 and SCRAM-SHA-256 per role, every role logs in through the
//! proxy as it does directly; the client is asked what the server asks (when the proxy
//! knows the secret from auth_query), a wrong password gets the server's 28P01, and the
//! pool opens further server connections for the user with what the login left.

use tandem_tests::wire::{startup, RawClient};
use tandem_tests::{init_tracing, Cluster, ClusterOptions, PgOptions};
use tokio_postgres::NoTls;

/// (role, password, pg_hba method, authentication request code PostgreSQL sends).
const ROLES: &[(&str, &str, &str, i32)] = &[
    ("r_trust", "", "trust", 0),
    ("r_pass", "pw_pass", "password", 3),
    ("r_md5", "pw_md5", "md5", 5),
    ("r_scram", "pw_scram", "scram-sha-256", 10),
];

/// The first authentication request code the proxy sends `user`.
async fn first_request(port: u16, user: &str) -> anyhow::Result<i32> {
    let mut client = RawClient::connect(port).await?;
    client.send(&startup(user, "postgres")).await?;
    let m = client.recv().await?.ok_or_else(|| anyhow::anyhow!("closed"))?;
    anyhow::ensure!(m.tag == b'R' && m.body.len() >= 4, "not an authentication request: {m:?}");
    Ok(i32::from_be_bytes([m.body[0], m.body[1], m.body[2], m.body[3]]))
}

/// Logs in as `user` with `password` through the proxy on `port`.
async fn login(port: u16, user: &str, password: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let dsn = format!("host=127.0.0.1 port={port} user={user} password='{password}' dbname=postgres");
    let (client, conn) = tokio_postgres::connect(&dsn, NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// Every role logs in, twice at once (two server connections), and a wrong password fails.
async fn check_roles(c: &Cluster, relayed: bool) -> anyhow::Result<()> {
    let port = c.proxy_port;
    for &(user, password, method, code) in ROLES {
        if relayed {
            assert_eq!(first_request(port, user).await?, code, "{user} ({method}) is asked what the server asks");
        }
        let a = login(port, user, password).await?;
        let b = login(port, user, password).await?;
        a.batch_execute("BEGIN").await?;
        b.batch_execute("BEGIN").await?;
        let pa: i32 = a.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
        let pb: i32 = b.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
        assert_ne!(pa, pb, "{user}: two server connections");
        let who: String = b.query_one("SELECT current_user::text", &[]).await?.get(0);
        assert_eq!(who, user);
        if method != "trust" {
            let err = login(port, user, "wrong").await.err().ok_or_else(|| anyhow::anyhow!("{user}: wrong pw"))?;
            assert_eq!(err.code().map(|c| c.code()), Some("28P01"), "{user} ({method}): {err}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pg_hba_method_logs_in_through_the_proxy() -> anyhow::Result<()> {
    init_tracing();
    let hba = ROLES.iter().map(|(role, _, method, _)| format!("host all {role} 127.0.0.1/32 {method}")).collect();
    let mut c = Cluster::start(ClusterOptions {
        replicas: 0,
        pg: PgOptions { hba, ..Default::default() },
        proxy_args: vec!["--auth".into(), "passthrough".into()],
        ..Default::default()
    })?;
    c.primary.psql(
        "postgres",
        "CREATE ROLE r_trust LOGIN; CREATE ROLE r_pass LOGIN PASSWORD 'pw_pass';\n\
         CREATE ROLE r_scram LOGIN PASSWORD 'pw_scram';\n\
         SET password_encryption = 'md5'; CREATE ROLE r_md5 LOGIN PASSWORD 'pw_md5';",
    )?;
    // Secrets from auth_query (the default): md5 and SCRAM are relayed as they are.
    check_roles(&c, true).await?;
    // No secrets: the proxy asks for the password in clear text and logs in with it.
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("tandem.toml");
    std::fs::write(&config, "[proxy]\nauth_query = \"\"\n")?;
    c.restart_proxy_with(&["--config", &config.to_string_lossy()])?;
    check_roles(&c, false).await?;
    Ok(())
}
