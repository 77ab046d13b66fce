//! `tandem replicator --mode sync` end to end, through the real binary: the
//! replicator puts itself into the primary's `synchronous_standby_names`;
//! with `--sync-quorum 2` every commit the primary acknowledges is readable
//! on both replicas at once, also under pgbench load and after the replicator
//! was killed with -9 and restarted; checksums equal at the end. With
//! `--sync-quorum 1`, a replica down (even across a replicator restart)
//! holds nothing up.

mod replicator_support;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use replicator_support::*;
use tandem_tests::{init_tracing, PgServer};

const COPY_TIMEOUT: Duration = Duration::from_secs(180);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(180);

/// Commits `count` rows one by one on the primary (ids from `first`) and
/// checks right after each commit returns that every replica shows it.
async fn probe(primary: &PgServer, replicas: &[&PgServer], first: i32, count: i32) -> Result<()> {
    let p = primary.connect("postgres", BENCH_DB).await?;
    let mut rs = Vec::new();
    for r in replicas {
        rs.push((r.name(), r.connect("postgres", BENCH_DB).await?));
    }
    for id in first..first + count {
        // A commit waiting for ever on the primary is a failure, not a hang.
        tokio::time::timeout(Duration::from_secs(60), p.execute("INSERT INTO sync_probe (id) VALUES ($1)", &[&id]))
            .await
            .with_context(|| format!("commit of id {id} not acknowledged within 60 s"))??;
        for (name, c) in &rs {
            let seen: i64 = c.query_one("SELECT count(*) FROM sync_probe WHERE id = $1", &[&id]).await?.get(0);
            ensure!(seen == 1, "commit of id {id} acknowledged by the primary but not visible on {name}");
        }
    }
    Ok(())
}

#[test]
fn sync_mode_end_to_end() -> Result<()> {
    init_tracing();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let primary = bench_primary()?;
    primary.psql(BENCH_DB, "CREATE TABLE sync_probe (id int PRIMARY KEY, at timestamptz DEFAULT now())")?;
    let r1 = replica("r1")?;
    let r2 = replica("r2")?;
    let dir = tempfile::tempdir()?;
    let mut rep = Replicator::new(
        dir.path(),
        &primary,
        &[("r1", &r1), ("r2", &r2)],
        "sync",
        &[BENCH_DB],
        &["--sync-quorum", "2"],
    );
    rep.start()?;
    wait_copied(&rep, &[&r1, &r2], BENCH_DB, COPY_TIMEOUT)?;

    // The replicator manages synchronous_standby_names: its stream of bench.
    let oid = primary.psql("postgres", "SELECT oid FROM pg_database WHERE datname = 'bench'")?;
    let want = format!("FIRST 1 (\"tandem_replicator_{oid}\")");
    tandem_tests::wait_until("synchronous_standby_names", Duration::from_secs(30), || {
        (primary.psql("postgres", "SHOW synchronous_standby_names").ok()? == want).then_some(())
    })?;
    let state = primary.psql(
        "postgres",
        &format!("SELECT sync_state FROM pg_stat_replication WHERE application_name = 'tandem_replicator_{oid}'"),
    )?;
    assert_eq!(state, "sync");

    // Idle primary: every acknowledged commit is on both replicas at once.
    rt.block_on(probe(&primary, &[&r1, &r2], 0, 30))?;

    // The same under pgbench load.
    let load = Load::start(&primary, 10)?;
    std::thread::sleep(Duration::from_secs(1));
    rt.block_on(probe(&primary, &[&r1, &r2], 100, 30)).with_context(|| rep.log_tail())?;

    // kill -9 of the replicator in the middle of the load: commits wait
    // (sync), then resume once it is back; nothing lost, nothing doubled.
    rep.kill9();
    std::thread::sleep(Duration::from_secs(1));
    rep.start()?;
    rt.block_on(probe(&primary, &[&r1, &r2], 200, 30)).with_context(|| rep.log_tail())?;
    let txns = load.finish()?;
    println!("sync: pgbench committed {txns} transactions (quorum 2), 90 probe commits checked on both replicas");
    assert!(txns > 0);
    let sums = wait_converged(&rep, &primary, &[&r1, &r2], BENCH_DB, CONVERGE_TIMEOUT)?;
    assert_eq!(history_rows(&primary)?, txns);
    let history = sums.iter().find(|(t, _)| t == "public.pgbench_history").context("history")?;
    assert!(history.1.starts_with(&format!("{txns}:")), "{history:?}");
    let probes = sums.iter().find(|(t, _)| t == "public.sync_probe").context("probe")?;
    assert!(probes.1.starts_with("90:"), "{probes:?}");

    let status = rep.status()?;
    assert_eq!(status["mode"], "sync");
    let (_, metrics) = rep.http_get("/metrics")?;
    assert!(metrics.contains("tandem_replicator_sync_mode 1"), "{metrics}");

    // A clean stop leaves the primary waiting for nobody.
    rep.stop()?;
    assert_eq!(primary.psql("postgres", "SHOW synchronous_standby_names")?, "");
    primary.psql(BENCH_DB, "CREATE TABLE after_clean_stop (id int)")?;
    drop(rt);
    Ok(())
}

/// With `--sync-quorum 1` a replica that is down holds nothing up: commits
/// are acknowledged once the other replica applied them, also after the
/// replicator restarted while that replica was still down; the replica
/// catches up when it returns.
#[test]
fn sync_quorum_survives_a_replica_down() -> Result<()> {
    init_tracing();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let primary = bench_primary()?;
    primary.psql(BENCH_DB, "CREATE TABLE sync_probe (id int PRIMARY KEY, at timestamptz DEFAULT now())")?;
    let r1 = replica("r1")?;
    let mut r2 = replica("r2")?;
    let dir = tempfile::tempdir()?;
    let mut rep = Replicator::new(dir.path(), &primary, &[("r1", &r1), ("r2", &r2)], "sync", &[BENCH_DB], &[]);
    rep.start()?;
    wait_copied(&rep, &[&r1, &r2], BENCH_DB, COPY_TIMEOUT)?;

    r2.kill9();
    rt.block_on(probe(&primary, &[&r1], 0, 20)).with_context(|| rep.log_tail())?;
    rep.kill9();
    rep.start()?;
    rt.block_on(probe(&primary, &[&r1], 100, 20)).with_context(|| rep.log_tail())?;
    rep.check_alive()?;

    r2.restart()?;
    wait_converged(&rep, &primary, &[&r1, &r2], BENCH_DB, CONVERGE_TIMEOUT)?;
    assert_eq!(r2.psql(BENCH_DB, "SELECT count(*) FROM sync_probe")?, "40");
    drop(rt);
    Ok(())
}
