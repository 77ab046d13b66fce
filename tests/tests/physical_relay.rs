//! Physical replication with the WAL relay, end to end against real PostgreSQL 15: standbys
//! made by `tandem replica add`, `tandem replicator` (physical mode) in the primary's sync
//! quorum, the relay's WAL served back through `restore_command`, its crashes and refusals.

mod replicator_support;

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use replicator_support::{pgbench, Load, Replicator, BENCH_DB};
use tandem_replicator::physical::fetch::ValidWal;
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

/// Runs `tandem wal-fetch --from FROM NAME DEST --pgdata PGDATA` as PostgreSQL would (DEST
/// removed first; exit 0 = DEST is the relay's copy, 1 = not available) and returns its exit
/// code.
fn wal_fetch(from: &str, name: &str, dest: &Path, pgdata: &Path) -> Result<i32> {
    match std::fs::remove_file(dest) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let out = std::process::Command::new(tandem_tests::tandem_bin())
        .args(["wal-fetch", "--from", from, name])
        .arg(dest)
        .arg("--pgdata")
        .arg(pgdata)
        .output()
        .context("run tandem wal-fetch")?;
    let code = out.status.code().context("wal-fetch killed by a signal")?;
    if !out.stderr.is_empty() {
        tracing::info!(stderr = %String::from_utf8_lossy(&out.stderr), code, "tandem wal-fetch");
    }
    Ok(code)
}

/// pg_waldump's verdict on one copy of segment `name`.
fn valid_wal(name: &str, file: &Path) -> Result<ValidWal> {
    let program = tandem_localpg::tool("pg_waldump")?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(tandem_replicator::physical::fetch::valid_wal(&program, name, file)).map_err(anyhow::Error::msg)
}

fn current_lsn(pg: &PgServer) -> Result<(tandem_core::Lsn, String)> {
    let row = pg.psql("postgres", "SELECT pg_current_wal_lsn(), pg_walfile_name(pg_current_wal_lsn())")?;
    let (lsn, seg) = row.split_once('|').context("lsn|segment")?;
    Ok((lsn.parse()?, seg.to_owned()))
}

/// The relay's copy of the segment being written is served only when it holds more valid WAL
/// than the standby's own pg_wal copy. s1 streams on while the relay is down, so its own
/// segment holds commits the relay's shorter `.partial` does not: when the primary dies,
/// wal-fetch must leave it to s1's pg_wal, and promoted s1 has every acknowledged row.
/// s2 is down while the relay goes on: its own copy is the shorter one, and it catches up
/// from the relay's.
#[test]
fn wal_fetch_never_serves_a_partial_copy_shorter_than_the_standbys_own() -> Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let mut primary = PgServer::start("primary", PgOptions::default())?;
    primary.psql("postgres", "CREATE DATABASE bench")?;
    let wal = dir.path().join("wal");
    let wal_s = wal.to_str().context("relay dir")?.to_owned();
    let mut relay = Replicator::new(dir.path(), &primary, &[], "sync", &[], &["--replication", "physical"]);
    let mut s1 = primary.start_tandem_standby("s1", &wal_s)?;
    let mut s2 = primary.start_tandem_standby("s2", &wal_s)?;
    relay.add_replica("s1", &s1);
    relay.add_replica("s2", &s2);
    relay.start()?;
    wait_streaming(&relay, &["tandem_relay", "s1", "s2"])?;
    assert_eq!(primary.psql("postgres", "SHOW synchronous_standby_names")?, r#"ANY 1 ("s1", "s2", "tandem_relay")"#);

    // Rows 1-100: everyone has them.
    primary
        .psql(BENCH_DB, "CREATE TABLE acked (id int PRIMARY KEY); INSERT INTO acked SELECT generate_series(1, 100)")?;
    let (_, seg) = current_lsn(&primary)?;
    for s in [&s1, &s2] {
        wait_until("standby has rows 1-100", WAIT, || (count(s, "acked") == Some(100)).then_some(()))?;
    }
    // s2 goes down with its own, shorter, copy of the segment.
    s2.stop();
    assert!(s2.data_dir().join("pg_wal").join(&seg).is_file(), "s2 has its own copy of {seg}");
    // Rows 101-300: acknowledged by s1 and the relay.
    primary.psql(BENCH_DB, "INSERT INTO acked SELECT generate_series(101, 300)")?;
    let (lsn, _) = current_lsn(&primary)?;
    wait_relay_flushed(&relay, &lsn.to_string(), "relay has rows 101-300")?;
    wait_until("s1 has rows 101-300", WAIT, || (count(&s1, "acked") == Some(300)).then_some(()))?;
    // Over HTTP (the partial header), for s2: the relay's copy is longer than s2's: served.
    let scratch = tempfile::tempdir()?;
    let dest = scratch.path().join("RECOVERYXLOG");
    let http = format!("http://127.0.0.1:{}", relay.status_port);
    assert_eq!(wal_fetch(&http, &seg, &dest, s2.data_dir())?, 0, "the relay's longer copy is served to s2");

    // The relay dies (its receiver with it); rows 301-500 are acknowledged by s1 alone.
    relay.kill9();
    wait_until("the killed relay's receiver to exit", WAIT, || {
        tandem_tests::kit::procs::pids_with_cmdline(&wal_s).is_empty().then_some(())
    })?;
    let (relay_gone, _) = current_lsn(&primary)?;
    primary.psql(BENCH_DB, "INSERT INTO acked SELECT generate_series(301, 500)")?;
    let (_, last_seg) = current_lsn(&primary)?;
    assert_eq!(last_seg, seg, "the scenario stays in one segment");
    wait_until("s1 has rows 301-500", WAIT, || (count(&s1, "acked") == Some(500)).then_some(()))?;

    // Served, the relay's partial copy would make s1 stop early: its valid WAL ends before
    // rows 301-500, which s1's own copy holds.
    let relay_copy = wal.join(format!("{seg}.partial"));
    let s1_copy = s1.data_dir().join("pg_wal").join(&seg);
    let (relay_end, s1_end) = (valid_wal(&seg, &relay_copy)?, valid_wal(&seg, &s1_copy)?);
    let ValidWal::LastRecordAt(relay_last) = relay_end else { bail!("relay copy: {relay_end:?}") };
    let ValidWal::LastRecordAt(s1_last) = s1_end else { bail!("s1 copy: {s1_end:?}") };
    assert!(relay_last < relay_gone, "the relay's copy ends at {relay_last}, before {relay_gone}");
    assert!(s1_last >= relay_gone, "s1's copy ends at {s1_last}, with rows 301-500 (after {relay_gone})");

    // The primary dies. For s1, wal-fetch declines (exit 1: PostgreSQL reads s1's own
    // pg_wal); for s2 it serves the relay's copy.
    primary.kill9();
    assert_eq!(wal_fetch(&wal_s, &seg, &dest, s1.data_dir())?, 1, "s1 keeps its own, longer copy");
    assert!(!dest.exists(), "nothing left at %p when declining");
    assert_eq!(wal_fetch(&wal_s, &seg, &dest, s2.data_dir())?, 0, "s2 gets the relay's longer copy");

    // s1, its streaming gone (restore_command polled), is promoted and has every row.
    wait_until("s1's WAL receiver to stop", WAIT, || {
        (s1.psql("postgres", "SELECT count(*) FROM pg_stat_wal_receiver").ok()? == "0").then_some(())
    })?;
    assert_eq!(s1.psql("postgres", "SELECT pg_promote()")?, "t", "{}", s1.log_tail());
    assert_eq!(s1.psql("postgres", "SELECT pg_is_in_recovery()")?, "f");
    assert_eq!(count(&s1, "acked"), Some(500), "promoted s1 lost acknowledged rows\n{}", s1.log_tail());
    let s1_log = std::fs::read_to_string(s1.log_path())?;
    assert!(!s1_log.contains(&format!("restored log file \"{seg}\"")), "s1 never replays the relay's copy");

    // s2 comes back with no primary: it catches up to every row the relay has.
    s2.restart()?;
    wait_until("s2 caught up from the relay", WAIT, || (count(&s2, "acked") == Some(300)).then_some(()))
        .with_context(|| format!("s2 log:\n{}", s2.log_tail()))?;
    let s2_log = std::fs::read_to_string(s2.log_path())?;
    assert!(s2_log.contains(&format!("restored log file \"{seg}\"")), "s2 read the relay's copy:\n{}", s2.log_tail());
    s1.stop();
    Ok(())
}
