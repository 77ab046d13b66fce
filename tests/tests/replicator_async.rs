//! `tandem replicator --mode async` end to end, through the real binary:
//! initial copy of data and roles to two replicas, pgbench TPC-B load with
//! DDL issued mid-stream, table-by-table checksums equal on every replica,
//! sequences, read-only replicas, the status endpoint, a clean SIGTERM exit,
//! and a third replica added while the load runs.

mod replicator_support;

use std::time::Duration;

use anyhow::{Context, Result};
use replicator_support::*;
use tandem_tests::{init_tracing, wait_until};

const COPY_TIMEOUT: Duration = Duration::from_secs(180);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(180);

/// The status entry of `replica` for `db`.
fn entry<'a>(status: &'a serde_json::Value, replica: &str, db: &str) -> Option<&'a serde_json::Value> {
    status["replicas"].as_array()?.iter().find(|r| r["replica"] == replica && r["database"] == db)
}

#[test]
fn async_mode_end_to_end() -> Result<()> {
    init_tracing();
    let primary = bench_primary()?;
    // A role owning a table with a sequence: globals, owners and sequences must come along.
    primary.psql("postgres", "CREATE ROLE app_owner LOGIN PASSWORD 'secret'")?;
    primary.psql(
        BENCH_DB,
        "CREATE TABLE app_data (id serial PRIMARY KEY, body text); \
         ALTER TABLE app_data OWNER TO app_owner; \
         INSERT INTO app_data (body) SELECT 'row ' || g FROM generate_series(1, 500) g",
    )?;
    let r1 = replica("r1")?;
    let r2 = replica("r2")?;
    let dir = tempfile::tempdir()?;
    // No --database: every non-template database (postgres and bench) is replicated.
    let mut rep = Replicator::new(dir.path(), &primary, &[("r1", &r1), ("r2", &r2)], "async", &[], &[]);
    rep.start()?;
    for db in [BENCH_DB, "postgres"] {
        wait_copied(&rep, &[&r1, &r2], db, COPY_TIMEOUT)?;
    }

    // Initial copy: with the primary idle, the replicas hold exactly its data.
    let copied = wait_converged(&rep, &primary, &[&r1, &r2], BENCH_DB, CONVERGE_TIMEOUT)?;
    let names: Vec<&str> = copied.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        names,
        [
            "public.app_data",
            "public.pgbench_accounts",
            "public.pgbench_branches",
            "public.pgbench_history",
            "public.pgbench_tellers"
        ]
    );
    assert!(copied[1].1.starts_with("100000:"), "{copied:?}");
    for r in [&r1, &r2] {
        assert_eq!(
            r.psql("postgres", "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'app_owner'")?,
            "t",
            "role copied to {}",
            r.name()
        );
        assert_eq!(r.psql(BENCH_DB, "SELECT tableowner FROM pg_tables WHERE tablename = 'app_data'")?, "app_owner");
        // Ordinary sessions cannot write on a replica.
        let err =
            r.psql(BENCH_DB, "INSERT INTO app_data (body) VALUES ('sneaky')").expect_err("a replica must be read-only");
        assert!(format!("{err:#}").contains("read-only transaction"), "{err:#}");
    }

    // pgbench load with DDL and other changes in the middle of it.
    let before = history_rows(&primary)?;
    assert_eq!(before, 0);
    let load = Load::start(&primary, 8)?;
    std::thread::sleep(Duration::from_secs(2));
    primary.psql(
        BENCH_DB,
        "ALTER TABLE pgbench_history ADD COLUMN note text DEFAULT 'mid-stream'; \
         CREATE TABLE ddl_made (id int PRIMARY KEY, v text); \
         INSERT INTO ddl_made SELECT g, md5(g::text) FROM generate_series(1, 100) g; \
         CREATE INDEX history_aid ON pgbench_history (aid)",
    )?;
    primary.psql(
        BENCH_DB,
        "UPDATE app_data SET body = body || ' updated' WHERE id % 7 = 0; \
         DELETE FROM app_data WHERE id % 11 = 0; \
         INSERT INTO app_data (body) SELECT 'more ' || g FROM generate_series(1, 50) g",
    )?;
    let txns = load.finish()?;
    println!("async: pgbench committed {txns} transactions during the first load");
    assert!(txns > 50, "pgbench committed only {txns} transactions");
    assert_eq!(history_rows(&primary)?, txns, "one history row per pgbench transaction");
    let sums = wait_converged(&rep, &primary, &[&r1, &r2], BENCH_DB, CONVERGE_TIMEOUT)?;
    assert_eq!(sums.len(), 6, "ddl_made is replicated too: {sums:?}");
    let history = sums.iter().find(|(t, _)| t == "public.pgbench_history").context("history")?;
    assert!(history.1.starts_with(&format!("{txns}:")), "{history:?}");
    for r in [&r1, &r2] {
        assert_eq!(
            r.psql(BENCH_DB, "SELECT count(*) FROM pg_indexes WHERE indexname = 'history_aid'")?,
            "1",
            "CREATE INDEX replayed on {}",
            r.name()
        );
    }

    // Sequence values follow (copied periodically, every 10 s).
    let want_seq = primary.psql(BENCH_DB, "SELECT last_value FROM app_data_id_seq")?;
    assert_eq!(want_seq, "550");
    for r in [&r1, &r2] {
        wait_until("sequence value on the replica", Duration::from_secs(40), || {
            (r.psql(BENCH_DB, "SELECT last_value FROM app_data_id_seq").ok()? == want_seq).then_some(())
        })?;
    }

    // Status endpoint: every (replica, database) caught up, in async mode.
    let status = wait_until("status to show no lag", Duration::from_secs(20), || {
        let s = rep.status().ok()?;
        let bench_ok = ["r1", "r2"].iter().all(|r| entry(&s, r, BENCH_DB).is_some_and(|e| e["lag_bytes"] == 0));
        bench_ok.then_some(s)
    })?;
    assert_eq!(status["mode"], "async");
    assert_eq!(status["replicas"].as_array().map(Vec::len), Some(4), "{status}");
    for r in ["r1", "r2"] {
        let e = entry(&status, r, BENCH_DB).context("entry")?;
        assert!(e["applied_transactions"].as_u64() >= Some(txns), "{e}");
        assert_eq!(e["lag_seconds"], 0.0, "{e}");
        assert!(e["last_error"].is_null(), "{e}");
        assert!(e["applied_lsn"].as_str().is_some_and(|l| l.contains('/')), "{e}");
    }
    let (code, metrics) = rep.http_get("/metrics")?;
    assert_eq!(code, 200);
    for series in [
        "tandem_replicator_applied_lsn{",
        "tandem_replicator_lag_bytes{",
        "tandem_replicator_lag_seconds{",
        "tandem_replicator_apply_rate{",
        "tandem_replicator_applied_transactions_total{",
        "tandem_replicator_sync_mode 0",
    ] {
        assert!(metrics.contains(series), "{series} missing from:\n{metrics}");
    }
    assert!(metrics.contains("replica=\"r2\""), "{metrics}");

    // A replica added while the load runs: restart with a third --replica.
    let r3 = replica("r3")?;
    let load = Load::start(&primary, 8)?;
    std::thread::sleep(Duration::from_secs(2));
    rep.stop()?;
    rep.add_replica("r3", &r3);
    rep.start()?;
    wait_copied(&rep, &[&r3], BENCH_DB, COPY_TIMEOUT)?;
    let more = load.finish()?;
    println!("async: {more} more while r3 was added");
    let sums = wait_converged(&rep, &primary, &[&r1, &r2, &r3], BENCH_DB, CONVERGE_TIMEOUT)?;
    let history = sums.iter().find(|(t, _)| t == "public.pgbench_history").context("history")?;
    assert!(history.1.starts_with(&format!("{}:", txns + more)), "{history:?}");
    // Only the new replica was copied; the others resumed from their progress.
    let copies: Vec<String> = rep
        .log()
        .lines()
        .filter(|l| l.contains("initial copy replica=") && l.contains("bench"))
        .map(str::to_owned)
        .collect();
    assert!(
        copies.len() == 1 && copies[0].contains("replica=r3"),
        "{copies:#?}\n{}",
        rep.log()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("r3"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    rep.stop()?;
    Ok(())
}
