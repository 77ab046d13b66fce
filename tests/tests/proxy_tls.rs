//! TLS at the proxy. Towards clients: with a certificate configured, `psql sslmode=require`
//! (and `verify-full` against that certificate) works and SHOW CLIENTS reports the session as
//! encrypted; without one, `sslmode=require` fails with libpq's clear error. Towards servers
//! (`--server-tls-mode`, libpq's sslmode): against a server that accepts TLS connections
//! only, every mode but `disable` logs in encrypted, and certificate checks refuse a server
//! signed by another CA.

use std::time::Duration;

use tandem_tests::cluster::{self_signed_cert, server_cert};
use tandem_tests::{free_port, init_tracing, Cluster, ClusterOptions, PgOptions, PgServer, TandemProcess};

#[test]
fn psql_sslmode_require_through_the_proxy() -> anyhow::Result<()> {
    init_tracing();
    let certs = tempfile::tempdir()?;
    let (cert, key) = self_signed_cert(certs.path())?;
    let c = Cluster::start(ClusterOptions {
        replicas: 0,
        proxy_args: vec![
            "--tls-cert".into(),
            cert.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
        ],
        ..Default::default()
    })?;
    let port = c.proxy_port;
    let require = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=require");
    let out = c.psql_raw(&require, &[], "SELECT 40 + 2;")?;
    assert!(out.status.success(), "{out:?}\n{}", c.proxy.log_tail());
    assert_eq!(out.stdout.trim(), "42");

    // The certificate is the one configured: verify-full with it as the root passes.
    let verify = format!(
        "host=localhost hostaddr=127.0.0.1 port={port} user=postgres dbname=postgres \
         sslmode=verify-full sslrootcert={}",
        cert.display()
    );
    let out = c.psql_raw(&verify, &[], "CREATE TABLE s (x int); INSERT INTO s VALUES (1); SELECT count(*) FROM s;")?;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout.trim(), "1");

    // The admin console sees its own TLS session.
    let admin = format!("host=127.0.0.1 port={port} user=postgres dbname=tandem sslmode=require");
    let out = c.psql_raw(&admin, &["-F", ","], "SHOW CLIENTS;")?;
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.lines().any(|l| l.contains(",tandem,") && l.contains(",true,")), "{}", out.stdout);
    // Plain connections still work.
    let plain = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=disable");
    assert!(c.psql_raw(&plain, &[], "SELECT 1;")?.status.success());

    // A proxy without TLS: sslmode=require fails clearly, prefer falls back to plain.
    let no_tls_port = free_port();
    let listen = format!("127.0.0.1:{no_tls_port}");
    let primary = format!("primary={}", c.primary.addr());
    let proxy = TandemProcess::spawn(&["proxy", "--listen", &listen, "--primary", &primary])?;
    proxy.wait_for_port(no_tls_port, std::time::Duration::from_secs(20))?;
    let require = format!("host=127.0.0.1 port={no_tls_port} user=postgres dbname=postgres sslmode=require");
    let out = c.psql_raw(&require, &[], "SELECT 1;")?;
    assert!(!out.status.success());
    assert!(out.stderr.contains("server does not support SSL"), "{out:?}");
    let prefer = format!("host=127.0.0.1 port={no_tls_port} user=postgres dbname=postgres sslmode=prefer");
    assert!(c.psql_raw(&prefer, &[], "SELECT 1;")?.status.success());
    Ok(())
}

/// A proxy in front of `primary` alone with `args` added; returns it and its port.
fn proxy_for(primary: &PgServer, args: &[&str]) -> anyhow::Result<(TandemProcess, u16)> {
    let port = free_port();
    let (listen, node) = (format!("127.0.0.1:{port}"), format!("primary={}", primary.addr()));
    let mut argv = vec!["proxy", "--listen", &listen, "--primary", &node, "--health-interval-ms", "100"];
    argv.extend_from_slice(args);
    let proxy = TandemProcess::spawn(&argv)?;
    proxy.wait_for_port(port, Duration::from_secs(20))?;
    Ok((proxy, port))
}

/// Through the proxy on `port`: whether this session's server connection, and the proxy's
/// health-check connection, are encrypted (`pg_stat_ssl`).
async fn server_side_ssl(port: u16) -> Result<(bool, bool), tokio_postgres::Error> {
    let dsn = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
    let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let own: bool = client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await?.get(0);
    let health: bool = client
        .query_one(
            "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name = 'tandem-health'",
            &[],
        )
        .await?
        .get(0);
    Ok((own, health))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_tls_modes() -> anyhow::Result<()> {
    init_tracing();
    let certs = tempfile::tempdir()?;
    let (cert, key) = server_cert(certs.path())?;
    let other_ca = tempfile::tempdir()?;
    let (other_cert, _) = self_signed_cert(other_ca.path())?;
    // TLS or nothing: plain TCP logins are rejected by pg_hba.
    let primary = PgServer::start("primary", PgOptions::tls_only(&cert, &key))?;
    let cert_path = cert.display().to_string();
    let other_path = other_cert.display().to_string();

    // The default, prefer, encrypts when the server offers TLS; so do require, verify-ca and
    // verify-full (with the server's certificate as the CA; it names 127.0.0.1).
    let modes: [&[&str]; 4] = [
        &[],
        &["--server-tls-mode", "require"],
        &["--server-tls-mode", "verify-ca", "--server-tls-ca-file", &cert_path],
        &["--server-tls-mode", "verify-full", "--server-tls-ca-file", &cert_path],
    ];
    for args in modes {
        let (proxy, port) = proxy_for(&primary, args)?;
        let mut seen = None;
        // The health check logs in on its own schedule; wait for it.
        for _ in 0..100 {
            let ssl = server_side_ssl(port).await;
            match ssl {
                Ok((own, true)) => {
                    seen = Some(own);
                    break;
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => panic!("{args:?}: {e}\n{}", proxy.log_tail()),
            }
        }
        assert_eq!(seen, Some(true), "{args:?}: pooled and health-check connections use TLS");
    }

    // disable: the server refuses the plain login, and the client gets its reason.
    let (proxy, port) = proxy_for(&primary, &["--server-tls-mode", "disable"])?;
    let err = server_side_ssl(port).await.expect_err("plain TCP is rejected");
    let db = err.as_db_error().unwrap_or_else(|| panic!("{err}\n{}", proxy.log_tail()));
    assert_eq!(db.code().code(), "28000", "{}", db.message());
    assert!(db.message().contains("no encryption"), "{}", db.message());

    // verify-ca against another CA: the certificate is refused, the client gets 08006.
    let (proxy, port) = proxy_for(&primary, &["--server-tls-mode", "verify-ca", "--server-tls-ca-file", &other_path])?;
    let err = server_side_ssl(port).await.expect_err("the certificate is not trusted");
    let db = err.as_db_error().unwrap_or_else(|| panic!("{err}\n{}", proxy.log_tail()));
    assert_eq!(db.code().code(), "08006", "{}", db.message());
    assert!(db.message().contains("certificate"), "{}", db.message());

    // A verifying mode without a CA file is a configuration error at start.
    let mut bad = TandemProcess::spawn(&["proxy", "--primary", &primary.addr(), "--server-tls-mode", "verify-full"])?;
    let status = bad.wait_exit(Duration::from_secs(20))?;
    assert!(!status.success());
    assert!(bad.log().contains("server_tls_ca_file"), "{}", bad.log());
    Ok(())
}
