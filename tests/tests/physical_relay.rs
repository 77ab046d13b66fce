//! Physical replication with the WAL relay, end to end against real PostgreSQL 15: standbys
//! made by `tandem replica add`, `tandem replicator` (physical mode) in the primary's sync
//! quorum, the relay's WAL served back through `restore_command`, its crashes and refusals.

mod replicator_support;

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use replicator_support::{pgbench, Load, Replicator, BENCH_DB};
use tandem_tests::{init_tracing, wait_until, PgOptions, PgServer};

const WAIT: Duration = Duration::from_secs(60);

/// A primary with `bench` initialised, two Tandem standbys reading the relay at
/// `<relay dir>/wal` (s1 by path, s2 over HTTP from the relay's status endpoint), and the
/// relay's arguments (not started).
fn cluster(relay_dir: &Path, mode: &str) -> Result<(PgServer, Vec<PgServer>, Replicator)> {
    let primary = PgServer::start("primary", PgOptions::default())?;
    primary.psql("postgres", "CREATE DATABASE bench")?;
    pgbench(&primary, &["-i", "-s", "1", "-q"])?;
    let mut relay = Replicator::new(relay_dir, &primary, &[], mode, &[], &["--replication", "physical"]);
    let wal = relay_dir.join("wal");
    let s1 = primary.start_tandem_standby("s1", wal.to_str().context("relay dir")?)?;
    let s2 = primary.start_tandem_standby("s2", &format!("http://127.0.0.1:{}", relay.status_port))?;
    relay.add_replica("s1", &s1);
    relay.add_replica("s2", &s2);
    Ok((primary, vec![s1, s2], relay))
}

fn member<'a>(status: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    if status["relay"]["name"] == name {
        return Some(&status["relay"]);
    }
    status["standbys"].as_array()?.iter().find(|m| m["name"] == name)
}

/// Waits until the relay's status shows every named member streaming.
fn wait_streaming(relay: &Replicator, names: &[&str]) -> Result<serde_json::Value> {
    wait_until("members streaming in the relay's status", WAIT, || {
        let s = relay.status().ok()?;
        names.iter().all(|n| member(&s, n).is_some_and(|m| m["state"] == "streaming")).then_some(s)
    })
    .with_context(|| format!("relay log:\n{}", relay.log_tail()))
}

/// Waits until the relay's flush position (as the primary reports it) reaches `target`.
fn wait_relay_flushed(relay: &Replicator, target: &str, what: &str) -> Result<()> {
    let target: tandem_core::Lsn = target.parse()?;
    wait_until(what, WAIT, || {
        let s = relay.status().ok()?;
        let flushed: tandem_core::Lsn = s["relay"]["flushed"].as_str()?.parse().ok()?;
        (flushed >= target).then_some(())
    })
    .with_context(|| relay.log_tail())
}

fn count(pg: &PgServer, table: &str) -> Option<u64> {
    pg.psql(BENCH_DB, &format!("SELECT count(*) FROM {table}")).ok()?.parse().ok()
}

#[test]
fn relay_joins_the_quorum_and_a_lone_standby_catches_up_from_it() -> Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let (mut primary, mut standbys, mut relay) = cluster(dir.path(), "sync")?;
    relay.start()?;
    let status = wait_streaming(&relay, &["tandem_relay", "s1", "s2"])?;
    assert_eq!(status["replication"], "physical");
    assert_eq!(status["relay"]["timeline"], 1, "{status}");
    assert_eq!(member(&status, "s1").context("s1")?["timeline"], 1, "{status}");
    assert_eq!(
        primary.psql("postgres", "SHOW synchronous_standby_names")?,
        r#"ANY 1 ("s1", "s2", "tandem_relay")"#,
        "the relay set the quorum"
    );
    // Standbys are exact copies: they have pgbench's tables and every row.
    primary.psql(BENCH_DB, "CREATE TABLE acked (id int PRIMARY KEY)")?;
    primary.psql(BENCH_DB, "INSERT INTO acked SELECT generate_series(1, 100)")?;
    for s in &standbys {
        wait_until("standby has the rows", WAIT, || (count(s, "acked") == Some(100)).then_some(()))?;
        assert_eq!(count(s, "pgbench_accounts"), Some(100_000));
    }

    // Both standbys down: commits are acknowledged by the relay alone (ANY 1).
    for s in standbys.iter_mut() {
        s.stop();
    }
    let stopped = wait_until("standbys disconnected in status", WAIT, || {
        let s = relay.status().ok()?;
        ["s1", "s2"].iter().all(|n| member(&s, n).is_some_and(|m| m["state"] != "streaming")).then_some(s)
    })?;
    for n in ["s1", "s2"] {
        let m = member(&stopped, n).context("member")?;
        assert_ne!(m["state"], "streaming");
    }
    primary.psql(BENCH_DB, "INSERT INTO acked SELECT generate_series(101, 600)")?;
    let lag = wait_until("a stopped standby shows lag", WAIT, || {
        let s = relay.status().ok()?;
        let lag = member(&s, "s1")?["lag_bytes"].as_u64()?;
        (lag > 0).then_some(lag)
    })?;
    assert!(lag > 0, "a stopped standby never reports lag 0");

    // The primary dies (the relay, on its own host, lives on). Its standbys come back with
    // nothing to stream from: everything acknowledged must come from the relay's WAL
    // (restore_command → tandem wal-fetch: s1 from the directory, s2 over HTTP).
    primary.kill9();
    for s in standbys.iter_mut() {
        s.restart()?;
    }
    for s in &standbys {
        wait_until("standby replayed every acknowledged commit from the relay", WAIT, || {
            (count(s, "acked") == Some(600)).then_some(())
        })
        .with_context(|| format!("standby log:\n{}", s.log_tail()))?;
        let log = std::fs::read_to_string(s.log_path())?;
        assert!(log.contains("restored log file"), "the standby read the relay's WAL:\n{}", s.log_tail());
    }
    Ok(())
}

#[test]
fn relay_killed_under_load_resumes_without_a_gap_and_commits_go_on() -> Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let (primary, standbys, mut relay) = cluster(dir.path(), "sync")?;
    relay.start()?;
    wait_streaming(&relay, &["tandem_relay", "s1", "s2"])?;
    let load = Load::start(&primary, 8)?;
    std::thread::sleep(Duration::from_secs(2));
    relay.kill9();
    // Its pg_receivewal dies with it (no unsupervised receiver holding the slot).
    let wal_dir = dir.path().join("wal").display().to_string();
    wait_until("the killed relay's receiver to exit", WAIT, || {
        tandem_tests::kit::procs::pids_with_cmdline(&wal_dir).is_empty().then_some(())
    })?;
    // The standbys still meet ANY 1: pgbench must finish with every transaction committed.
    relay.start()?;
    let committed = load.finish()?;
    assert!(committed > 0);
    let target: String = primary.psql("postgres", "SELECT pg_current_wal_lsn()")?;
    wait_relay_flushed(&relay, &target, "the restarted relay flushed everything")?;
    assert_contiguous(&dir.path().join("wal"))?;
    let history = count(&primary, "pgbench_history").context("history")?;
    for s in &standbys {
        wait_until("standby equal to the primary", WAIT, || {
            (count(s, "pgbench_history") == Some(history)).then_some(())
        })?;
    }
    Ok(())
}

/// Every segment from the oldest to the newest is present once.
fn assert_contiguous(wal: &Path) -> Result<()> {
    let mut segs: Vec<u64> = std::fs::read_dir(wal)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.len() >= 24 && n[..24].bytes().all(|b| b.is_ascii_hexdigit()))
        .map(|n| u64::from_str_radix(&n[8..24], 16).map_err(anyhow::Error::from))
        .collect::<Result<_>>()?;
    segs.sort_unstable();
    for pair in segs.windows(2) {
        let next = if pair[0] & 0xFF == 0xFF { (pair[0] & !0xFF) + 0x1_0000_0000 } else { pair[0] + 1 };
        if pair[1] != next {
            bail!("relay WAL has a gap or a duplicate between {:016X} and {:016X}", pair[0], pair[1]);
        }
    }
    Ok(())
}

#[test]
fn a_torn_relay_tail_is_streamed_again() -> Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let (primary, _standbys, mut relay) = cluster(dir.path(), "async")?;
    relay.start()?;
    wait_streaming(&relay, &["tandem_relay"])?;
    primary.psql(BENCH_DB, "CREATE TABLE t AS SELECT generate_series(1, 1000) AS id")?;
    let target: String = primary.psql("postgres", "SELECT pg_current_wal_lsn()")?;
    wait_relay_flushed(&relay, &target, "relay has the table")?;
    relay.kill9();
    let wal = dir.path().join("wal");
    let partial = std::fs::read_dir(&wal)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "partial"))
        .context("a .partial segment")?;
    let name = partial.file_stem().and_then(|s| s.to_str()).context("name")?.to_owned();
    // Torn: cut in the middle of what was written.
    let f = std::fs::OpenOptions::new().write(true).open(&partial)?;
    f.set_len(4096 + 100)?;
    drop(f);
    relay.start()?;
    wait_relay_flushed(&relay, &target, "relay repaired and caught up")?;
    assert!(relay.log().contains("torn WAL segment tail"), "{}", relay.log_tail());
    // What the relay holds now equals the primary's own segment up to the target.
    let target: tandem_core::Lsn = target.parse()?;
    let upto = (target.0 % (16 * 1024 * 1024)) as usize;
    let ours = std::fs::read(wal.join(format!("{name}.partial"))).or_else(|_| std::fs::read(wal.join(&name)))?;
    let theirs = std::fs::read(primary.data_dir().join("pg_wal").join(&name))?;
    let first_diff = ours.iter().zip(theirs.iter()).take(upto).position(|(a, b)| a != b);
    assert!(
        upto > 0 && first_diff.is_none(),
        "relay segment {name} differs from the primary's at {first_diff:?} (compared {upto} bytes)\n{}",
        relay.log()
    );
    Ok(())
}

#[test]
fn relay_refuses_another_systems_wal_and_clean_stop_leaves_no_wait() -> Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let (primary, mut standbys, mut relay) = cluster(dir.path(), "sync")?;
    relay.start()?;
    wait_streaming(&relay, &["tandem_relay", "s1", "s2"])?;
    // Standbys down, relay stopped cleanly: the primary must not wait for anyone gone.
    for s in standbys.iter_mut() {
        s.stop();
    }
    relay.stop()?;
    assert_eq!(primary.psql("postgres", "SHOW synchronous_standby_names")?, "");
    assert!(relay.log().contains("commits asynchronously"), "{}", relay.log_tail());
    primary.psql(BENCH_DB, "CREATE TABLE after_stop (id int)")?; // would hang if it waited

    // Another PostgreSQL system (its own initdb) behind the same relay directory.
    let other_dir = tempfile::tempdir()?;
    let other = tandem_localpg::LocalServer::at(other_dir.path().join("other"), tandem_tests::free_port());
    other.init(&tandem_localpg::ServerSettings { port: other.port, extra: vec!["wal_level = replica".into()] })?;
    other.start()?;
    let stop_other = StopOnDrop(&other);
    let mut wrong = Replicator::new(dir.path(), &primary, &[], "async", &[], &["--replication", "physical"]);
    wrong.args[2] = format!("postgres://postgres@127.0.0.1:{}/postgres", other.port);
    let args: Vec<&str> = wrong.args.iter().map(String::as_str).collect();
    let mut p = tandem_tests::TandemProcess::spawn(&args)?;
    let code = p.wait_exit(WAIT)?;
    assert!(!code.success());
    assert!(p.log().contains("refusing to mix two systems' WAL"), "{}", p.log_tail());
    drop(stop_other);
    Ok(())
}

/// Stops a LocalServer when dropped.
struct StopOnDrop<'a>(&'a tandem_localpg::LocalServer);
impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.stop();
    }
}
