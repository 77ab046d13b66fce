//! Automatic failover end to end: real PostgreSQL 15 (a primary, two Tandem standbys), the
//! WAL relay in the commit quorum, three witnesses and a proxy, all real processes. The
//! primary is killed (-9), frozen, or its standbys are down; a checker client records every
//! acknowledged insert through the proxy, and afterwards every one must be on the new
//! primary, and no two nodes may ever both accept writes through Tandem.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tandem_tests::checker::{violations, Writers};
use tandem_tests::ha::{checked_ids as ids, in_recovery, Ha, WAIT};
use tandem_tests::{init_tracing, wait_until};

const TABLE: &str = "CREATE TABLE checked (id bigint)";

/// The last history entry whose event contains `what`.
fn history_event(ha: &Ha, what: &str) -> Option<String> {
    let s = ha.state().ok()?;
    s["history"].as_array()?.iter().rev().find_map(|h| {
        let e = h["event"].as_str()?;
        e.contains(what).then(|| e.to_owned())
    })
}

#[test]
fn kill_9_of_the_primary_under_load_loses_no_acknowledged_write() -> Result<()> {
    init_tracing();
    let mut ha = Ha::start("sync")?;
    ha.psql(TABLE)?;
    ha.psql("CREATE TABLE load (id serial, at timestamptz DEFAULT now())")?;
    // pgbench through the proxy as the load (its clients end at the kill); the checker's
    // writers reconnect and record every outcome.
    let script = ha.dir.path().join("load.sql");
    std::fs::write(&script, "INSERT INTO load DEFAULT VALUES;\nSELECT count(*) FROM load WHERE id < 10;\n")?;
    let mut pgbench = std::process::Command::new(tandem_tests::pg_bin_dir()?.join("pgbench"))
        .args(["-n", "-c", "4", "-T", "60", "-f"])
        .arg(&script)
        .arg(ha.dsn())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let writers = Writers::start(&ha.dsn(), "checked", 4);
    wait_until("writes acknowledged before the kill", WAIT, || (writers.acked() >= 200).then_some(()))
        .with_context(|| ha.logs())?;
    let killed = Instant::now();
    ha.node_mut("pg1").kill9();
    let state = ha.wait_epoch(2, WAIT)?;
    let new_primary = state["primary"].as_str().context("primary")?.to_owned();
    assert_ne!(new_primary, "pg1");
    assert_eq!(state["nodes"]["pg1"]["role"], "fenced");
    let before = writers.acked();
    wait_until("writes acknowledged after the failover", WAIT, || (writers.acked() >= before + 200).then_some(()))
        .with_context(|| ha.logs())?;
    let outcomes = writers.stop();
    let _ = pgbench.kill();
    let _ = pgbench.wait();
    let resumed = outcomes.outage_after(killed).context("no write after the kill")?;
    eprintln!(
        "kill -9 → first acknowledged write through the proxy: {resumed:?}; acked {}, failed {}, unknown {} {:?}; {}",
        outcomes.acked.len(),
        outcomes.failed.len(),
        outcomes.unknown.len(),
        outcomes.errors,
        history_event(&ha, "failover").unwrap_or_default()
    );
    let on_new = ids(ha.node(&new_primary))?;
    let v = violations(&on_new, &outcomes);
    assert!(v.is_empty(), "{v:?}");
    // Exactly one primary among the survivors; the other standby follows the new one and
    // gets every row.
    let other = if new_primary == "s1" { "s2" } else { "s1" };
    assert_eq!(in_recovery(ha.node(&new_primary)), Some(false));
    assert_eq!(in_recovery(ha.node(other)), Some(true));
    let n = on_new.len();
    wait_until("the other standby follows the new primary", WAIT, || {
        (ids(ha.node(other)).ok()?.len() == n).then_some(())
    })
    .with_context(|| ha.node(other).log_tail())?;
    // The relay streams from the new primary: a commit there needs a quorum member, and the
    // relay's reported position moves past the failover.
    ha.psql("INSERT INTO checked VALUES (-1)")?;
    let history = history_event(&ha, "failover").context("history")?;
    assert!(history.contains(&format!("pg1 → {new_primary}")) && history.contains("promoting"), "{history}");
    // The new primary's quorum names the other standby and the relay, never itself; a clean
    // stop of the relay takes only the relay out.
    let names = ha.node(&new_primary).psql("postgres", "SHOW synchronous_standby_names")?;
    assert_eq!(names, format!("ANY 1 (\"{other}\", \"tandem_relay\")"));
    let mut relay = ha.relay.take().context("relay")?;
    relay.terminate();
    relay.wait_exit(WAIT)?;
    let names = ha.node(&new_primary).psql("postgres", "SHOW synchronous_standby_names")?;
    assert_eq!(names, format!("ANY 1 (\"{other}\")"));
    Ok(())
}

#[test]
fn commits_only_the_relay_holds_survive_when_the_standbys_were_down() -> Result<()> {
    init_tracing();
    let mut ha = Ha::start("sync")?;
    ha.psql(TABLE)?;
    ha.psql("INSERT INTO checked SELECT g FROM generate_series(1, 100) g")?;
    wait_until("both standbys have the first rows", WAIT, || {
        (ids(ha.node("s1")).ok()?.len() == 100 && ids(ha.node("s2")).ok()?.len() == 100).then_some(())
    })?;
    ha.node_mut("s1").stop();
    ha.node_mut("s2").stop();
    // ANY 1 (s1, s2, tandem_relay): only the relay acknowledges these.
    ha.psql("INSERT INTO checked SELECT g FROM generate_series(101, 600) g")?;
    ha.node_mut("pg1").kill9();
    // Declared failed, but with both standbys down only 1 of the 3 members can be consulted:
    // the failover refuses (ANY 1 of 3 needs all 3) and says why.
    let blocked = wait_until("the failover is blocked", WAIT, || history_event(&ha, "failover blocked"))
        .with_context(|| ha.logs())?;
    assert!(blocked.contains("3 needed"), "{blocked}");
    assert_eq!(ha.state()?["epoch"], 1, "nothing promoted while blocked");
    // The standbys come back (still pointing at the dead primary): the leader detaches them,
    // they replay the relay's WAL, and one is promoted with every acknowledged row.
    ha.node_mut("s1").restart()?;
    ha.node_mut("s2").restart()?;
    let state = ha.wait_epoch(2, WAIT)?;
    let new_primary = state["primary"].as_str().context("primary")?.to_owned();
    let rows = ids(ha.node(&new_primary))?;
    assert_eq!(rows.len(), 600, "rows on {new_primary}");
    assert_eq!(rows, (1..=600).collect::<Vec<i64>>());
    wait_until("writes through the proxy on the new primary", WAIT, || {
        ha.psql("INSERT INTO checked VALUES (601)").ok()
    })
    .with_context(|| ha.logs())?;
    Ok(())
}

#[test]
fn a_frozen_primary_with_a_queued_write_is_fenced_and_its_late_commit_never_shows() -> Result<()> {
    init_tracing();
    let ha = Ha::start("sync")?;
    ha.psql(TABLE)?;
    ha.psql("INSERT INTO checked VALUES (1)")?;
    ha.node("pg1").freeze();
    // A write queued at the frozen primary through the proxy.
    let queued = std::thread::spawn({
        let dsn = ha.dsn();
        move || {
            tandem_tests::cluster::run_pg_client(
                "psql",
                |cmd| {
                    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose", "-d", &dsn, "-f", "-"]);
                },
                "INSERT INTO checked VALUES (666)",
            )
        }
    });
    let state = ha.wait_epoch(2, WAIT)?;
    let new_primary = state["primary"].as_str().context("primary")?.to_owned();
    let out = queued.join().map_err(|_| anyhow::anyhow!("client thread"))??;
    assert!(!out.status.success(), "the queued write was acknowledged: {}", out.stdout);
    ha.node("pg1").thaw();
    // The thawed old primary is fenced again (it answers as a primary): read-only.
    wait_until("the old primary is fenced in SQL", WAIT, || {
        (ha.node("pg1").psql("postgres", "SHOW default_transaction_read_only").ok()? == "on").then_some(())
    })
    .with_context(|| ha.logs())?;
    wait_until("writes through the proxy", WAIT, || ha.psql("INSERT INTO checked VALUES (2)").ok())?;
    let through_proxy = ha.psql("SELECT count(*) FROM checked WHERE id = 666")?;
    assert_eq!(through_proxy, "0", "the zombie's late commit is visible through the proxy");
    assert_eq!(ids(ha.node(&new_primary))?, vec![1, 2]);
    assert_eq!(ha.state()?["nodes"]["pg1"]["role"], "fenced");
    Ok(())
}

#[test]
fn a_short_stall_or_one_witness_down_fails_nothing_over() -> Result<()> {
    init_tracing();
    let mut ha = Ha::start("sync")?;
    // A stall shorter than the failure timeout (1 s).
    for _ in 0..3 {
        ha.node("pg1").freeze();
        std::thread::sleep(Duration::from_millis(600));
        ha.node("pg1").thaw();
        wait_until("the primary answers", WAIT, || ha.node("pg1").psql("postgres", "SELECT 1").ok())?;
    }
    // One witness down (not the leader).
    let leader = ha.leader()?;
    let other = (leader + 1) % 3;
    ha.kill_witness(other);
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let s = ha.state()?;
        assert_eq!(s["epoch"], 1, "a failover happened: {:?}", s["history"]);
        assert!(s["primary_failed_ms"].is_null(), "declared failed: {:?}", s["history"]);
        std::thread::sleep(Duration::from_millis(100));
    }
    ha.psql("CREATE TABLE still_writable (id int)")?;
    Ok(())
}

#[test]
fn a_witness_leader_killed_mid_failover_is_finished_by_the_next() -> Result<()> {
    init_tracing();
    let mut ha = Ha::start("sync")?;
    ha.psql(TABLE)?;
    ha.psql("INSERT INTO checked SELECT g FROM generate_series(1, 50) g")?;
    let leader = ha.leader()?;
    ha.node_mut("pg1").kill9();
    wait_until("the failover starts", WAIT, || (!ha.state().ok()?["operation"].is_null()).then_some(()))?;
    ha.kill_witness(leader);
    let state = ha.wait_epoch(2, WAIT)?;
    let new_primary = state["primary"].as_str().context("primary")?.to_owned();
    let primaries: Vec<&str> = ["s1", "s2"].into_iter().filter(|n| in_recovery(ha.node(n)) == Some(false)).collect();
    assert_eq!(primaries, vec![new_primary.as_str()], "exactly one promoted");
    assert_eq!(ids(ha.node(&new_primary))?.len(), 50);
    wait_until("writes through the proxy", WAIT, || ha.psql("INSERT INTO checked VALUES (51)").ok())?;
    // A second failover right after the first: the new primary dies too; the last standby
    // takes over (ANY 1 of (other standby, relay): both consulted).
    ha.start_witness(leader)?;
    ha.node_mut(&new_primary).kill9();
    let state = ha.wait_epoch(3, WAIT)?;
    let third = state["primary"].as_str().context("primary")?.to_owned();
    assert!(third != new_primary && third != "pg1");
    let rows = ids(ha.node(&third))?;
    assert_eq!(rows.len(), 51, "{rows:?}");
    wait_until("writes after the second failover", WAIT, || ha.psql("INSERT INTO checked VALUES (52)").ok())
        .with_context(|| ha.logs())?;
    Ok(())
}

#[test]
fn async_mode_reports_the_loss_window_and_loses_only_the_last_moments() -> Result<()> {
    init_tracing();
    let mut ha = Ha::start("async")?;
    ha.psql(TABLE)?;
    let writers = Writers::start(&ha.dsn(), "checked", 4);
    wait_until("writes before the kill", WAIT, || (writers.acked() >= 300).then_some(()))?;
    let killed = Instant::now();
    ha.node_mut("pg1").kill9();
    let state = ha.wait_epoch(2, WAIT)?;
    let new_primary = state["primary"].as_str().context("primary")?.to_owned();
    let before = writers.acked();
    wait_until("writes after the failover", WAIT, || (writers.acked() >= before + 100).then_some(()))
        .with_context(|| ha.logs())?;
    let outcomes = writers.stop();
    let on_new: std::collections::BTreeSet<i64> = ids(ha.node(&new_primary))?.into_iter().collect();
    let lost: Vec<&(i64, Instant)> = outcomes.acked.iter().filter(|(id, _)| !on_new.contains(id)).collect();
    let event = history_event(&ha, "failover:").context("history")?;
    eprintln!(
        "async: outage {:?}; {} of {} acknowledged writes lost; {event}",
        outcomes.outage_after(killed),
        lost.len(),
        outcomes.acked.len()
    );
    assert!(event.contains("async mode:") && event.contains("may be lost"), "{event}");
    // What is lost was acknowledged in the last moments before the kill (the lag; an answer
    // sent before the kill may reach the client just after it), never once writes resumed.
    for (id, at) in &lost {
        let window = killed.checked_sub(Duration::from_secs(1)).unwrap_or(killed)..killed + Duration::from_millis(500);
        assert!(window.contains(at), "lost id {id} acked {:?} after the kill", at.checked_duration_since(killed));
    }
    Ok(())
}

#[test]
fn a_forced_failover_to_a_named_standby_waits_for_a_relay_killed_mid_way() -> Result<()> {
    init_tracing();
    let mut ha = Ha::start("sync")?;
    ha.psql(TABLE)?;
    ha.psql("INSERT INTO checked SELECT g FROM generate_series(1, 100) g")?;
    // The relay dies first: a forced failover cannot consult it (ANY 1 of 3 needs all 3) and
    // waits, saying why; the restarted relay answers the fence from its WAL directory before
    // it knows a primary, and the failover completes to the named standby.
    ha.kill_relay();
    let mut args: Vec<String> =
        vec!["failover".into(), "--to".into(), "s2".into(), "--yes".into(), "--wait-s".into(), "60".into()];
    for (i, p) in ha.witness_ports.iter().enumerate() {
        args.extend(["--witness".into(), format!("{}=127.0.0.1:{p}", i + 1)]);
    }
    let cli = std::thread::spawn(move || {
        let mut cmd = std::process::Command::new(tandem_tests::tandem_bin());
        cmd.args(&args);
        cmd.output()
    });
    let blocked =
        wait_until("the forced failover is blocked on the relay", WAIT, || history_event(&ha, "failover blocked"))
            .with_context(|| ha.logs())?;
    assert!(blocked.contains("tandem_relay") || blocked.contains("3 needed"), "{blocked}");
    ha.start_relay()?;
    let out = cli.join().map_err(|_| anyhow::anyhow!("cli thread"))??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("blocked:") && stdout.contains("New primary: s2"), "{stdout}");
    let state = ha.wait_epoch(2, WAIT)?;
    assert_eq!(state["primary"], "s2");
    assert_eq!(ids(ha.node("s2"))?.len(), 100);
    assert_eq!(in_recovery(ha.node("pg1")), Some(false), "pg1 still runs (as a fenced primary)");
    assert_eq!(ha.node("pg1").psql("postgres", "SHOW default_transaction_read_only")?, "on");
    wait_until("writes through the proxy on s2", WAIT, || ha.psql("INSERT INTO checked VALUES (101)").ok())
        .with_context(|| ha.logs())?;
    wait_until("s1 follows s2", WAIT, || (ids(ha.node("s1")).ok()?.len() == 101).then_some(()))?;
    Ok(())
}

#[test]
fn a_primary_cut_off_from_tandem_but_alive_is_fenced_and_never_acknowledges_again() -> Result<()> {
    init_tracing();
    let ha = Ha::start_partitionable("sync")?;
    ha.psql(TABLE)?;
    let writers = Writers::start(&ha.dsn(), "checked", 4);
    wait_until("writes before the cut", WAIT, || (writers.acked() >= 200).then_some(()))?;
    let link = ha.pg1_link.as_ref().context("partitionable")?;
    // pg1 keeps running and its standbys keep streaming from it; the witnesses, the proxy and
    // the relay lose it (connections hang, as across a network cut).
    link.set_blackhole(true);
    let state = ha.wait_epoch(2, WAIT)?;
    let new_primary = state["primary"].as_str().context("primary")?.to_owned();
    let before = writers.acked();
    wait_until("writes on the new primary", WAIT, || (writers.acked() >= before + 200).then_some(()))
        .with_context(|| ha.logs())?;
    // Behind the cut, pg1 is still up: a session on it directly commits locally but is never
    // acknowledged (its standbys were detached, the relay fenced).
    let psql = tandem_tests::pg_bin_dir()?.join("psql");
    let out = std::process::Command::new("timeout")
        .arg("3")
        .arg(&psql)
        .args(["-X", "-q", "-d", &ha.node("pg1").dsn("postgres", "postgres"), "-c", "INSERT INTO checked VALUES (-7)"])
        .output()?;
    assert_eq!(out.status.code(), Some(124), "pg1 answered a commit after the fence: {out:?}");
    // Healed: pg1 answers Tandem again, as a primary; it is fenced in SQL and stays out.
    link.set_blackhole(false);
    wait_until("the returning old primary is fenced", WAIT, || {
        (ha.node("pg1").psql("postgres", "SHOW default_transaction_read_only").ok()? == "on").then_some(())
    })
    .with_context(|| ha.logs())?;
    let outcomes = writers.stop();
    let v = violations(&ids(ha.node(&new_primary))?, &outcomes);
    assert!(v.is_empty(), "{v:?}");
    assert_eq!(ha.state()?["nodes"]["pg1"]["role"], "fenced");
    assert_eq!(ha.psql("SELECT count(*) FROM checked WHERE id = -7")?, "0");
    Ok(())
}

#[test]
fn paused_the_cluster_keeps_its_failed_primary_until_resumed() -> Result<()> {
    init_tracing();
    let mut ha = Ha::start("sync")?;
    let flags: Vec<String> =
        ha.witness_ports.iter().enumerate().map(|(i, p)| format!("--witness={}=127.0.0.1:{p}", i + 1)).collect();
    let tandem = |cmd: &str| -> Result<String> {
        let out = std::process::Command::new(tandem_tests::tandem_bin()).arg(cmd).args(&flags).output()?;
        anyhow::ensure!(out.status.success(), "tandem {cmd}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    assert!(tandem("pause")?.contains("Paused"));
    ha.node_mut("pg1").kill9();
    wait_until("the primary declared failed", WAIT, || {
        (!ha.state().ok()?["primary_failed_ms"].is_null()).then_some(())
    })?;
    let status = std::process::Command::new(tandem_tests::tandem_bin()).arg("status").args(&flags).output()?;
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(!status.status.success() && table.contains("MAINTENANCE") && table.contains("DECLARED FAILED"), "{table}");
    // No failover while paused.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let s = ha.state()?;
        assert!(s["operation"].is_null() && s["epoch"] == 1, "a failover while paused: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(tandem("resume")?.contains("Resumed"));
    let state = ha.wait_epoch(2, WAIT)?;
    assert_ne!(state["primary"], "pg1");
    wait_until("writes after the resumed failover", WAIT, || ha.psql("CREATE TABLE after_resume (id int)").ok())?;
    Ok(())
}
