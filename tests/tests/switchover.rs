//! Planned switchover end to end: real PostgreSQL 15 (a primary, two Tandem standbys), a
//! `tandem agent` beside each, the WAL relay in the commit quorum, three witnesses and the
//! proxy, all real processes. `tandem switchover` under pgbench (`-M prepared` and `-M
//! simple`) and a checker client through the proxy: no client error, every acknowledged
//! write on every node, the old primary back as a standby without pg_rewind; and the
//! failures in the middle (a proxy that never goes quiet, the witness leader, the target)
//! end in one primary and no client error.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tandem_tests::checker::{violations, Writers};
use tandem_tests::ha::{checked_ids as ids, in_recovery, Ha, WAIT};
use tandem_tests::{init_tracing, pg_bin_dir, tandem_bin, wait_until, PgServer};

const TABLE: &str = "CREATE TABLE checked (id bigint)";

/// `tandem switchover ARGS --yes` against the group, in a thread: its output.
fn switchover_cli(ha: &Ha, args: &[&str]) -> std::thread::JoinHandle<std::io::Result<Output>> {
    let mut all: Vec<String> = vec!["switchover".into(), "--yes".into()];
    all.extend(args.iter().map(|a| a.to_string()));
    for (i, p) in ha.witness_ports.iter().enumerate() {
        all.extend(["--witness".into(), format!("{}=127.0.0.1:{p}", i + 1)]);
    }
    std::thread::spawn(move || Command::new(tandem_bin()).args(&all).output())
}

fn finish(cli: std::thread::JoinHandle<std::io::Result<Output>>) -> Result<(bool, String)> {
    let out = cli.join().map_err(|_| anyhow::anyhow!("cli thread"))??;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

/// pgbench through the proxy for `secs`, protocol `mode`, `clients` clients.
fn pgbench(ha: &Ha, mode: &str, clients: u32, secs: u32) -> Result<Child> {
    Ok(Command::new(pg_bin_dir()?.join("pgbench"))
        .args(["-n", "-M", mode, "-c", &clients.to_string(), "-T", &secs.to_string()])
        .arg(ha.dsn())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?)
}

/// pgbench's outcome: (transactions processed, failed transactions, whole output).
fn pgbench_result(child: Child) -> Result<(u64, u64, String)> {
    let out = child.wait_with_output()?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let field = |label: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.contains(label))?;
        line.split(':').nth(1)?.split_whitespace().next()?.split('/').next()?.parse().ok()
    };
    let processed = field("number of transactions actually processed").context("pgbench printed no count")?;
    let failed = field("number of failed transactions").unwrap_or(0);
    anyhow::ensure!(out.status.success() && !text.contains("aborted"), "pgbench: {text}");
    Ok((processed, failed, text))
}

/// The tables' contents on a node, as one checksum line.
fn checksum(pg: &PgServer) -> Result<String> {
    pg.psql(
        "postgres",
        "SELECT (SELECT count(*) || ':' || coalesce(sum(abalance), 0) FROM pgbench_accounts) || '/' || \
         (SELECT count(*) || ':' || coalesce(sum(delta), 0) FROM pgbench_history) || '/' || \
         (SELECT count(*) || ':' || coalesce(sum(id), 0) FROM checked)",
    )
}

/// The timeline a node writes (primary) or receives (standby).
fn timeline(pg: &PgServer) -> Option<u32> {
    let sql = "SELECT CASE WHEN pg_is_in_recovery() THEN (SELECT received_tli FROM pg_stat_wal_receiver) \
               ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END";
    pg.psql("postgres", sql).ok()?.parse().ok()
}

/// Waits until every node has the same tables as `primary` (standbys replayed its writes).
fn converged(ha: &Ha, primary: &str) -> Result<String> {
    let want = checksum(ha.node(primary))?;
    for n in ["pg1", "s1", "s2"].into_iter().filter(|n| *n != primary) {
        wait_until(&format!("{n} has {primary}'s rows"), WAIT, || (checksum(ha.node(n)).ok()? == want).then_some(()))
            .with_context(|| format!("{n}: {:?} vs {want}\n{}", checksum(ha.node(n)), ha.node(n).log_tail()))?;
    }
    Ok(want)
}

#[test]
fn switchover_and_back_under_pgbench_fails_no_transaction() -> Result<()> {
    init_tracing();
    let mut ha = Ha::start("sync")?;
    ha.psql(TABLE)?;
    let init = Command::new(pg_bin_dir()?.join("pgbench")).args(["-i", "-q", "-s", "1"]).arg(ha.dsn()).output()?;
    anyhow::ensure!(init.status.success(), "pgbench -i: {}", String::from_utf8_lossy(&init.stderr));
    let prepared = pgbench(&ha, "prepared", 6, 25)?;
    let simple = pgbench(&ha, "simple", 2, 25)?;
    let writers = Writers::start(&ha.dsn(), "checked", 2);
    wait_until("load before the switchover", WAIT, || (writers.acked() >= 100).then_some(()))?;
    // A session pinned to its server connection (LISTEN), and a plain one, both idle.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let connect = |dsn: String| async move {
        let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        anyhow::Ok(client)
    };
    let (pinned, pinned_conn, plain) = rt.block_on(async {
        let (pinned, conn) = tokio_postgres::connect(&ha.dsn(), tokio_postgres::NoTls).await?;
        let pinned_conn = tokio::spawn(conn);
        pinned.batch_execute("LISTEN switchover_test").await?;
        let plain = connect(ha.dsn()).await?;
        plain.batch_execute("SET application_name = 'kept'").await?;
        anyhow::Ok((pinned, pinned_conn, plain))
    })?;

    let (ok, out) = finish(switchover_cli(&ha, &["--to", "s1"]))?;
    assert!(ok, "{out}\n{}", ha.logs());
    assert!(out.contains("pausing") && out.contains("Done: switchover: pg1 → s1"), "{out}");
    assert!(out.contains("Write pause:") && out.contains("New primary: s1 (epoch 2)"), "{out}");
    assert!(out.contains("pg1 restarted as a standby"), "{out}\n{}", ha.logs());
    eprintln!("{out}");
    ha.node_mut("pg1").started_by_tandem();
    let state = ha.state()?;
    assert_eq!((state["primary"].as_str(), state["epoch"].as_u64()), (Some("s1"), Some(2)));
    assert_eq!(state["nodes"]["pg1"]["role"], "standby");
    assert_eq!(in_recovery(ha.node("pg1")), Some(true), "pg1 follows s1 without pg_rewind");
    // The plain session goes on, on s1, its setting kept; the pinned one's server state
    // (its LISTEN) stayed on pg1: it was told so when pg1 stopped (FATAL 57P01, like a
    // server's own shutdown, saying why), not moved silently without it.
    rt.block_on(async {
        let row = plain.query_one("SELECT current_setting('application_name'), pg_is_in_recovery()", &[]).await?;
        assert_eq!((row.get::<_, String>(0), row.get::<_, bool>(1)), ("kept".to_owned(), false));
        plain.execute("INSERT INTO checked VALUES (-9)", &[]).await?;
        assert!(pinned.simple_query("SELECT 1").await.is_err(), "the pinned session's state is gone");
        let err = pinned_conn.await?.expect_err("its connection ended with an error");
        let db = err.as_db_error().with_context(|| format!("a server error, not {err:?}"))?;
        assert_eq!(db.code().code(), "57P01", "{db:?}");
        assert!(db.message().contains("switching over"), "{}", db.message());
        anyhow::Ok(())
    })?;
    let before = writers.acked();
    wait_until("writes after the switchover", WAIT, || (writers.acked() >= before + 100).then_some(()))?;

    // And back, with the load still running.
    let (ok, out) = finish(switchover_cli(&ha, &["--to", "pg1"]))?;
    assert!(ok, "{out}\n{}", ha.logs());
    assert!(out.contains("Done: switchover: s1 → pg1") && out.contains("s1 restarted as a standby"), "{out}");
    eprintln!("{out}");
    ha.node_mut("s1").started_by_tandem();
    let before = writers.acked();
    wait_until("writes after switching back", WAIT, || (writers.acked() >= before + 100).then_some(()))?;

    let (p_done, p_failed, p_text) = pgbench_result(prepared)?;
    let (s_done, s_failed, _) = pgbench_result(simple)?;
    let outcomes = writers.stop();
    eprintln!(
        "pgbench -M prepared: {p_done} transactions, {p_failed} failed; -M simple: {s_done}, {s_failed} failed; \
         checker: acked {}, failed {}, unknown {} {:?}",
        outcomes.acked.len(),
        outcomes.failed.len(),
        outcomes.unknown.len(),
        outcomes.errors
    );
    assert_eq!((p_failed, s_failed), (0, 0), "{p_text}");
    assert!(outcomes.failed.is_empty() && outcomes.unknown.is_empty(), "{:?}", outcomes.errors);
    let state = ha.state()?;
    assert_eq!((state["primary"].as_str(), state["epoch"].as_u64()), (Some("pg1"), Some(3)));
    let v = violations(&ids(ha.node("pg1"))?, &outcomes);
    assert!(v.is_empty(), "{v:?}");
    // Every node: the same rows, and the newest timeline.
    converged(&ha, "pg1")?;
    // s1, left out of pg1's commit quorum while it was stopped, is a member again once it
    // rejoined (the relay's configured members: s1, s2 and itself).
    wait_until("s1 back in pg1's commit quorum", WAIT, || {
        let names = ha.node("pg1").psql("postgres", "SHOW synchronous_standby_names").ok()?;
        (names == r#"ANY 1 ("s1", "s2", "tandem_relay")"#).then_some(())
    })
    .with_context(|| ha.node("pg1").psql("postgres", "SHOW synchronous_standby_names").unwrap_or_default())?;
    let tli = timeline(ha.node("pg1")).context("pg1's timeline")?;
    assert_eq!(tli, 3, "two promotions: timeline 3");
    for n in ["s1", "s2"] {
        wait_until(&format!("{n} on timeline {tli}"), WAIT, || (timeline(ha.node(n))? == tli).then_some(()))?;
    }
    Ok(())
}

/// Holds a transaction open through the proxy on `dsn` for `hold` (the PAUSE gate waits for
/// it), in a thread.
fn hold_transaction(dsn: String, hold: Duration) -> std::thread::JoinHandle<Result<String>> {
    std::thread::spawn(move || {
        let sql = format!("BEGIN; INSERT INTO checked VALUES (-7); SELECT pg_sleep({}); COMMIT;", hold.as_secs_f64());
        tandem_tests::ha::psql_at(&dsn, &sql)
    })
}

fn phase(ha: &Ha) -> Option<String> {
    ha.state().ok()?["operation"]["phase"].as_str().map(str::to_owned)
}

#[test]
fn a_proxy_that_never_goes_quiet_aborts_it_and_no_other_client_errs() -> Result<()> {
    init_tracing();
    let mut ha = Ha::start("sync")?;
    ha.psql(TABLE)?;
    let second = ha.start_proxy()?;
    let writers = Writers::start(&ha.dsn(), "checked", 2);
    wait_until("load", WAIT, || (writers.acked() >= 50).then_some(()))?;
    // A transaction on the second proxy keeps it from going quiet; the proxy is then killed
    // mid-prepare, so it never answers.
    let held = hold_transaction(ha.dsn_for(second), Duration::from_secs(30));
    wait_until("the held transaction runs", WAIT, || {
        ha.node("pg1")
            .psql("postgres", "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(30%'")
            .ok()
            .filter(|n| n != "0")
    })?;
    let cli = switchover_cli(&ha, &["--to", "s2", "--pause-timeout-ms", "2000"]);
    wait_until("pausing", WAIT, || (phase(&ha)? == "pausing").then_some(()))?;
    let (mut p, _) = ha.extra_proxies.pop().context("second proxy")?;
    p.kill9();
    let (ok, out) = finish(cli)?;
    assert!(!ok && out.contains("switchover aborted") && out.contains("not quiet"), "{out}");
    assert!(held.join().map_err(|_| anyhow::anyhow!("thread"))?.is_err(), "its proxy was killed");
    let state = ha.state()?;
    assert_eq!((state["primary"].as_str(), state["epoch"].as_u64()), (Some("pg1"), Some(1)));
    assert_eq!(in_recovery(ha.node("pg1")), Some(false));
    no_client_error(&ha, writers, "pg1")?;

    // Refused at once, with the reason: an unknown target, the primary itself; a scheduled
    // one shows in the state and is withdrawn by --cancel.
    let (ok, out) = finish(switchover_cli(&ha, &["--to", "nope"]))?;
    assert!(!ok && out.contains("not a standby"), "{out}");
    let (ok, out) = finish(switchover_cli(&ha, &["--to", "s1", "--at", "+600s"]))?;
    assert!(ok && out.contains("Scheduled: it starts in 600 s"), "{out}");
    wait_until("the scheduled switchover in the state", WAIT, || (phase(&ha)? == "checking").then_some(()))?;
    let (ok, out) = finish(switchover_cli(&ha, &["--cancel"]))?;
    assert!(ok && out.contains("Cancelled"), "{out}");
    wait_until("no operation", WAIT, || ha.state().ok()?["operation"].is_null().then_some(()))?;
    // One scheduled a second ahead runs when its time comes.
    let (ok, out) = finish(switchover_cli(&ha, &["--to", "s1", "--at", "+1s"]))?;
    assert!(ok, "{out}");
    let state = ha.wait_epoch(2, WAIT)?;
    assert_eq!(state["primary"], "s1");
    wait_until("writes on s1", WAIT, || ha.psql("INSERT INTO checked VALUES (-8)").ok())?;
    // A target whose replay lags past max_lag_on_switchover (16 MiB) is refused, saying so.
    ha.node("s2").psql("postgres", "SELECT pg_wal_replay_pause()")?;
    ha.psql("INSERT INTO checked SELECT -g FROM generate_series(10, 400009) g")?;
    let (ok, out) = finish(switchover_cli(&ha, &["--to", "s2"]))?;
    assert!(!ok && out.contains("bytes behind") && out.contains("max_lag_on_switchover"), "{out}");
    ha.node("s2").psql("postgres", "SELECT pg_wal_replay_resume()")?;
    let leader = ha.leader()?;
    let (_, metrics) = tandem_tests::ha::http(ha.witness_ports[leader], "GET", "/metrics", None, None)?;
    assert!(metrics.contains("tandem_witness_switchovers_in_history 1\n"), "{metrics}");
    assert!(metrics.contains("tandem_witness_operation_in_progress 0\n"), "{metrics}");
    Ok(())
}

/// A cluster under a checker's load, in the prepare phase of a switchover to `to` that a 2 s
/// transaction keeps there (pause timeout 8 s).
struct Pausing {
    ha: Ha,
    writers: Writers,
    held: std::thread::JoinHandle<Result<String>>,
    cli: std::thread::JoinHandle<std::io::Result<Output>>,
}

fn pausing_switchover(to: &str) -> Result<Pausing> {
    let ha = Ha::start("sync")?;
    ha.psql(TABLE)?;
    let writers = Writers::start(&ha.dsn(), "checked", 2);
    wait_until("load", WAIT, || (writers.acked() >= 50).then_some(()))?;
    let held = hold_transaction(ha.dsn(), Duration::from_secs(2));
    wait_until("the held transaction runs", WAIT, || {
        ha.node("pg1")
            .psql("postgres", "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(2%'")
            .ok()
            .filter(|n| n != "0")
    })?;
    let cli = switchover_cli(&ha, &["--to", to, "--pause-timeout-ms", "8000"]);
    wait_until("pausing", WAIT, || (phase(&ha)? == "pausing").then_some(()))?;
    Ok(Pausing { ha, writers, held, cli })
}

/// The checker's writes go on; none failed or unknown, every acknowledged one on `primary`.
fn no_client_error(ha: &Ha, writers: Writers, primary: &str) -> Result<()> {
    let before = writers.acked();
    wait_until(&format!("writes on {primary}"), WAIT, || (writers.acked() >= before + 50).then_some(()))
        .with_context(|| ha.logs())?;
    let outcomes = writers.stop();
    assert!(outcomes.failed.is_empty() && outcomes.unknown.is_empty(), "{:?}", outcomes.errors);
    let v = violations(&ids(ha.node(primary))?, &outcomes);
    assert!(v.is_empty(), "{v:?}");
    Ok(())
}

#[test]
fn the_witness_leader_killed_mid_switchover_leaves_one_primary() -> Result<()> {
    init_tracing();
    let Pausing { mut ha, writers, held, cli } = pausing_switchover("s1")?;
    let leader = ha.leader()?;
    ha.kill_witness(leader);
    let started = Instant::now();
    let _ = finish(cli)?; // its witness may have been the one killed
    let state = wait_until("the switchover ends", WAIT, || {
        let s = ha.state().ok()?;
        s["operation"].is_null().then_some(s)
    })
    .with_context(|| ha.logs())?;
    eprintln!("ended {:?} after the kill: {:?}", started.elapsed(), state["history"].as_array().and_then(|h| h.last()));
    held.join().map_err(|_| anyhow::anyhow!("thread"))??;
    let primary = state["primary"].as_str().context("primary")?.to_owned();
    let primaries: Vec<&str> =
        ["pg1", "s1", "s2"].into_iter().filter(|n| in_recovery(ha.node(n)) == Some(false)).collect();
    assert_eq!(primaries, vec![primary.as_str()], "exactly one primary");
    no_client_error(&ha, writers, &primary)
}

#[test]
fn the_target_killed_mid_switchover_aborts_on_the_old_primary() -> Result<()> {
    init_tracing();
    let Pausing { mut ha, writers, held, cli } = pausing_switchover("s1")?;
    ha.node_mut("s1").kill9();
    let (ok, out) = finish(cli)?;
    assert!(!ok && out.contains("switchover aborted"), "{out}\n{}", ha.logs());
    held.join().map_err(|_| anyhow::anyhow!("thread"))??;
    let state = ha.state()?;
    assert_eq!((state["primary"].as_str(), state["epoch"].as_u64()), (Some("pg1"), Some(1)));
    assert_eq!(in_recovery(ha.node("pg1")), Some(false));
    assert_eq!(in_recovery(ha.node("s2")), Some(true));
    no_client_error(&ha, writers, "pg1")
}
