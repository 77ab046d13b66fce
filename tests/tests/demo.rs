//! `tandem demo` end to end: the whole local cluster from one command; it switches over live
//! (`tandem switchover`) and survives a kill -9 of its primary (writes through the proxy
//! resume on a standby).

use std::net::TcpListener;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tandem_tests::{free_port, init_tracing, wait_until, TandemProcess};

const WAIT: Duration = Duration::from_secs(120);

/// A base port with the 10 after it free too (the demo takes 11 consecutive ports).
fn free_run() -> Result<u16> {
    for _ in 0..50 {
        let base = free_port();
        if base > 65_000 {
            continue;
        }
        if (base..base + 11).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return Ok(base);
        }
    }
    anyhow::bail!("no run of 11 free ports")
}

/// Stops the demo with SIGTERM (it stops its servers) even when the test fails.
struct Demo(TandemProcess);

impl Drop for Demo {
    fn drop(&mut self) {
        self.0.terminate();
        let _ = self.0.wait_exit(Duration::from_secs(60));
    }
}

fn psql(port: u16, sql: &str) -> Result<String> {
    let dsn = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=3");
    let out = tandem_tests::cluster::run_pg_client(
        "psql",
        |cmd| {
            cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", &dsn, "-f", "-"]);
        },
        sql,
    )?;
    anyhow::ensure!(out.status.success(), "{}", out.stderr);
    Ok(out.stdout.trim().to_owned())
}

#[test]
fn the_demo_switches_over_live_and_survives_a_kill_9_of_its_primary() -> Result<()> {
    init_tracing();
    let port = free_run()?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("demo");
    let port_s = port.to_string();
    let demo = Demo(TandemProcess::spawn(&["demo", "--port", &port_s, "--data-dir", data.to_str().context("dir")?])?);
    wait_until("the demo is ready", WAIT, || demo.0.log().contains("Press Ctrl-C").then_some(()))
        .with_context(|| demo.0.log_tail())?;
    psql(port, "CREATE TABLE t (id int)")?;
    psql(port, "INSERT INTO t SELECT generate_series(1, 100)")?;
    let witnesses: Vec<String> = (5..8).map(|i| format!("--witness={}=127.0.0.1:{}", i - 4, port + i)).collect();
    // A live switchover to replica1: the old primary comes back as its standby.
    let out = std::process::Command::new(tandem_tests::tandem_bin())
        .args(["switchover", "--to", "replica1", "--yes"])
        .args(&witnesses)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}\n{}", String::from_utf8_lossy(&out.stderr), demo.0.log_tail());
    assert!(text.contains("Done: switchover: primary → replica1") && text.contains("primary restarted as a standby"));
    eprintln!("{text}");
    psql(port, "INSERT INTO t VALUES (100 + 1)")?;
    let pid: i32 = std::fs::read_to_string(data.join("replica1").join("postmaster.pid"))?
        .lines()
        .next()
        .context("pid")?
        .trim()
        .parse()?;
    let killed = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)?;
    wait_until("a write through the demo's proxy after the kill", WAIT, || {
        psql(port, "INSERT INTO t VALUES (102)").ok()
    })
    .with_context(|| demo.0.log_tail())?;
    eprintln!("demo: writes resumed {:?} after kill -9 of the primary", killed.elapsed());
    // In a transaction: read on the new primary (an autocommit read may go to the other
    // standby, which follows the new primary a moment later).
    assert_eq!(psql(port, "BEGIN; SELECT count(*) FROM t; COMMIT;")?, "102");
    let mut args = vec!["status".to_string()];
    args.extend(witnesses);
    let out = std::process::Command::new(tandem_tests::tandem_bin()).args(&args).output()?;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("epoch 3") && table.contains("fenced") && table.contains("failover: replica1 →"), "{table}");
    Ok(())
}
