//! Client TLS at the proxy: with a certificate configured, `psql sslmode=require` (and
//! `verify-full` against that certificate) works and SHOW CLIENTS reports the session as
//! encrypted; without one, `sslmode=require` fails with libpq's clear error.

use tandem_tests::cluster::self_signed_cert;
use tandem_tests::{free_port, init_tracing, Cluster, ClusterOptions, TandemProcess};

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
