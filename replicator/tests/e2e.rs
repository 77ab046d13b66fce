//! The whole replicator (`tandem_replicator::run`) against real PostgreSQL 15:
//! initial copy, pgbench load, DDL mid-stream, checksums equal on the replica.

mod common;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::{table_checksum, Pg};
use tandem_core::NodeId;
use tandem_replicator::apply::session;
use tandem_replicator::{run, Mode, ReplicaConfig, ReplicatorConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const TABLES: [&str; 4] = ["pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"];

fn pgbench(pg: &Pg, args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("pgbench")
        .args(["-h", "127.0.0.1", "-p", &pg.port.to_string(), "-U", "postgres"])
        .args(args)
        .output()
        .context("running pgbench")?;
    if !out.status.success() {
        bail!("pgbench failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

async fn http_get(port: u16, path: &str) -> Result<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    Ok(body)
}

async fn wait_until_equal(primary: &Pg, replica: &Pg) -> Result<()> {
    let p = primary.connect("bench").await?;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let r = match replica.connect("bench").await {
            Ok(r) => r,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut equal = true;
        for t in TABLES {
            let want = table_checksum(&p, t).await?;
            match table_checksum(&r, t).await {
                Ok(got) if got == want => {}
                _ => equal = false,
            }
        }
        if equal {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("replica did not converge to the primary");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn replicate_pgbench(mode: Mode) -> Result<()> {
    let primary = Pg::start("pw")?;
    let replica = Pg::start("pw")?;
    primary.connect("postgres").await?.batch_execute("CREATE DATABASE bench").await?;
    pgbench(&primary, &["-i", "-s", "1", "-q", "bench"])?;

    let dir = tempfile::tempdir()?;
    let status_port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut cfg = ReplicatorConfig::new(
        format!("postgres://postgres@127.0.0.1:{}/postgres", primary.port),
        vec![ReplicaConfig {
            name: NodeId::new("r1")?,
            dsn: format!("postgres://postgres@127.0.0.1:{}/postgres", replica.port),
        }],
        mode,
        dir.path().to_path_buf(),
    );
    cfg.databases = vec!["bench".into()];
    cfg.replication = tandem_replicator::Replication::Logical;
    cfg.status_listen = Some(format!("127.0.0.1:{status_port}").parse()?);
    cfg.feedback_interval_ms = 500;
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(run(Arc::new(cfg), shutdown.clone()));

    // Wait for the initial copy (its progress row), then load the primary.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = replica.connect("bench").await {
            if session::read_progress(&r, "tandem").await.ok().flatten().is_some() {
                break;
            }
        }
        if Instant::now() > deadline || handle.is_finished() {
            bail!("initial copy did not finish");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pgbench(&primary, &["-n", "-c", "2", "-t", "150", "bench"])?;
    let p = primary.connect("bench").await?;
    p.batch_execute(
        "ALTER TABLE pgbench_history ADD COLUMN note text; \
         INSERT INTO pgbench_history (tid, bid, aid, delta, mtime, note) VALUES (1, 1, 1, 0, now(), 'after DDL')",
    )
    .await?;
    pgbench(&primary, &["-n", "-c", "2", "-t", "50", "bench"])?;
    if mode == Mode::Sync {
        // An acknowledged commit is already readable on the replica.
        let r = replica.connect("bench").await?;
        for i in 0..20 {
            let note = format!("sync {i}");
            p.execute(
                "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime, note) VALUES (1, 1, 1, 0, now(), $1)",
                &[&note],
            )
            .await?;
            let seen: i64 = r.query_one("SELECT count(*) FROM pgbench_history WHERE note = $1", &[&note]).await?.get(0);
            assert_eq!(seen, 1, "commit {i} acknowledged but not on the replica");
        }
    }
    wait_until_equal(&primary, &replica).await?;

    let status = http_get(status_port, "/status").await?;
    assert!(status.contains("\"replica\":\"r1\""), "{status}");
    let metrics = http_get(status_port, "/metrics").await?;
    assert!(metrics.contains("tandem_replicator_applied_transactions_total"), "{metrics}");

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), handle).await???;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_load_replicates_in_async_mode() -> Result<()> {
    replicate_pgbench(Mode::Async).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_load_replicates_in_sync_mode() -> Result<()> {
    replicate_pgbench(Mode::Sync).await
}
