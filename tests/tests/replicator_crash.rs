//! Faults, async mode, through the real binary: `kill -9` of the replicator
//! during its first initial copy and twice under pgbench load, a torn tail
//! left in its change log, `kill -9` of a replica server, a replicator
//! restart while that replica is down, and the replica's return. At the end
//! every table has the primary's checksum on both replicas: no transaction
//! lost, none applied twice (pgbench_history has no key, so a duplicate
//! changes its row count and checksum).

mod replicator_support;

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result};
use replicator_support::*;
use tandem_tests::{init_tracing, wait_until};

const COPY_TIMEOUT: Duration = Duration::from_secs(180);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(180);

/// Appends what a crash in the middle of writing leaves behind: a complete
/// record whose checksum does not match, then a record header whose payload
/// never made it to disk.
fn tear_tail(segment: &std::path::Path) -> Result<u64> {
    let mut f = std::fs::OpenOptions::new().append(true).open(segment)?;
    let mut junk = Vec::new();
    // len 8 | crc (wrong) | lsn | 8 payload bytes
    junk.extend_from_slice(&8u32.to_le_bytes());
    junk.extend_from_slice(&0xdead_beefu32.to_le_bytes());
    junk.extend_from_slice(&u64::MAX.to_le_bytes());
    junk.extend_from_slice(b"garbage!");
    // len 4096 | crc | lsn | only 10 bytes of payload
    junk.extend_from_slice(&4096u32.to_le_bytes());
    junk.extend_from_slice(&1u32.to_le_bytes());
    junk.extend_from_slice(&(u64::MAX - 1).to_le_bytes());
    junk.extend_from_slice(&[0x55; 10]);
    f.write_all(&junk)?;
    f.sync_all()?;
    Ok(junk.len() as u64)
}

#[test]
fn crashes_torn_tail_and_replica_loss_under_load() -> Result<()> {
    init_tracing();
    let primary = bench_primary()?;
    let r1 = replica("r1")?;
    let mut r2 = replica("r2")?;
    let dir = tempfile::tempdir()?;
    let mut rep = Replicator::new(dir.path(), &primary, &[("r1", &r1), ("r2", &r2)], "async", &[BENCH_DB], &[]);
    // kill -9 in the middle of the first initial copy: the next start copies
    // again (in a fresh snapshot) and joins the stream from there.
    rep.start()?;
    wait_until("the initial copy to start", Duration::from_secs(60), || {
        rep.log().contains("initial copy replica=").then_some(())
    })?;
    // Killed as soon as the copy is seen to start (a fixed pause here let a fast machine
    // finish the copy first).
    assert!(!is_copied(&r1, BENCH_DB) || !is_copied(&r2, BENCH_DB), "copy finished too early");
    rep.kill9();
    rep.start()?;
    wait_copied(&rep, &[&r1, &r2], BENCH_DB, COPY_TIMEOUT)?;

    let load = Load::start(&primary, 25)?;
    // kill -9 twice while pgbench runs, restarting in between.
    for _ in 0..2 {
        std::thread::sleep(Duration::from_secs(3));
        rep.check_alive()?;
        rep.kill9();
        std::thread::sleep(Duration::from_millis(500));
        rep.start()?;
    }

    // A crash mid-write: kill -9, then leave a torn record at the log's end.
    std::thread::sleep(Duration::from_secs(2));
    rep.kill9();
    let segs = segments(dir.path(), BENCH_DB)?;
    let last = segs.last().context("the change log has no segment")?;
    let junk = tear_tail(last)?;
    rep.start()?;
    // Recovery on open cuts exactly the torn bytes (or more, had the kill
    // itself left a partial record), and the stream goes on from before them.
    let cut: u64 = wait_until("the torn tail to be cut", Duration::from_secs(30), || {
        let log = rep.log();
        let line = log.lines().find(|l| l.contains("cutting torn tail of the change log"))?;
        line.split_whitespace().find_map(|w| w.strip_prefix("cut_bytes="))?.parse().ok()
    })?;
    assert!(cut >= junk, "cut {cut} bytes, appended {junk}");

    // kill -9 of a replica server; the replicator reports it and goes on.
    std::thread::sleep(Duration::from_secs(1));
    r2.kill9();
    wait_until("r2's apply error in the status", Duration::from_secs(30), || {
        let s = rep.status().ok()?;
        let e = s["replicas"].as_array()?.iter().find(|e| e["replica"] == "r2")?.clone();
        (!e["last_error"].is_null()).then_some(())
    })?;
    // The replicator restarts while r2 is still down: r1 goes on being fed.
    rep.kill9();
    rep.start()?;
    let r1_rows = history_rows(&r1)?;
    wait_until("r1 to be fed without r2", Duration::from_secs(30), || {
        (history_rows(&r1).ok()? > r1_rows).then_some(())
    })?;
    rep.check_alive()?;
    r2.restart()?;

    let txns = load.finish()?;
    println!("crash: pgbench committed {txns} transactions through 4 replicator kills, a torn tail and a replica kill");
    assert!(txns > 100, "pgbench committed only {txns} transactions");
    assert_eq!(history_rows(&primary)?, txns);
    let sums = wait_converged(&rep, &primary, &[&r1, &r2], BENCH_DB, CONVERGE_TIMEOUT)?;
    let history = sums.iter().find(|(t, _)| t == "public.pgbench_history").context("history")?;
    assert!(history.1.starts_with(&format!("{txns}:")), "{history:?}");
    wait_until("r2's error to clear", Duration::from_secs(30), || {
        let s = rep.status().ok()?;
        s["replicas"].as_array()?.iter().all(|e| e["last_error"].is_null() && e["lag_bytes"] == 0).then_some(())
    })?;
    rep.stop()?;
    Ok(())
}
