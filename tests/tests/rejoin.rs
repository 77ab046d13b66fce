//! `tandem rejoin` against real PostgreSQL 15, on a failover made by hand (no witness
//! group): primary `a` with a Tandem standby `b`; `b` is promoted, then `a` goes on
//! committing alone (the lost transactions) and is fenced the way a failover fences it
//! (`ALTER SYSTEM SET default_transaction_read_only`). `tandem rejoin a --new-primary b`
//! must list those transactions, make `a` a standby streaming from `b` on its own port —
//! by pg_rewind, or by a re-clone when pg_rewind cannot (no `wal_log_hints`).

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tandem_tests::{init_tracing, wait_until, PgOptions, PgServer, TandemProcess};

const WAIT: Duration = Duration::from_secs(60);

/// Two servers whose histories forked, and the xids `a` committed after the fork.
struct Diverged {
    a: PgServer,
    b: PgServer,
    lost_xids: Vec<u64>,
    _relay: tempfile::TempDir,
}

/// `a` (with `opts`) and its standby `b`, one shared row; `b` promoted; `lost` rows
/// committed on `a` alone, each in its own transaction; `a` fenced.
fn diverge(opts: PgOptions, lost: usize) -> Result<Diverged> {
    let a = PgServer::start("a", opts)?;
    a.psql("postgres", "CREATE TABLE t (id int PRIMARY KEY, xid bigint); INSERT INTO t VALUES (1, txid_current())")?;
    let relay = tempfile::tempdir()?;
    let b = a.start_tandem_standby("b", relay.path().to_str().context("relay dir")?)?;
    wait_until("b has the shared row", WAIT, || {
        (b.psql("postgres", "SELECT count(*) FROM t").ok()? == "1").then_some(())
    })?;
    ensure!(b.psql("postgres", "SELECT pg_promote()")? == "t", "b promoted");
    let mut lost_xids = Vec::new();
    for i in 0..lost {
        let xid = a.psql("postgres", &format!("INSERT INTO t VALUES ({}, txid_current()) RETURNING xid", 100 + i))?;
        lost_xids.push(xid.parse().with_context(|| format!("xid {xid:?}"))?);
    }
    a.psql("postgres", "ALTER SYSTEM SET default_transaction_read_only = on")?;
    Ok(Diverged { a, b, lost_xids, _relay: relay })
}

/// Runs `tandem rejoin a --new-primary b` and returns what it printed.
fn rejoin(d: &mut Diverged) -> Result<String> {
    let data_dir = d.a.data_dir().to_str().context("data dir")?.to_owned();
    let mut p = TandemProcess::spawn(&["rejoin", "a", "--data-dir", &data_dir, "--new-primary", &d.b.addr()])?;
    let status = p.wait_exit(WAIT)?;
    let out = p.log();
    eprintln!("--- tandem rejoin a ---\n{out}");
    // Whatever happened, the server in a's data directory is now the one tandem started.
    d.a.started_by_tandem();
    ensure!(status.success(), "tandem rejoin failed ({status}):\n{out}\n--- a's log ---\n{}", d.a.log_tail());
    Ok(out)
}

/// `a` listed exactly the lost transactions, streams from `b` on its own port, has `b`'s
/// new rows and none of its lost ones, and is no longer fenced by a setting.
fn check_rejoined(d: &Diverged, out: &str) -> Result<()> {
    let (a, b) = (&d.a, &d.b);
    for xid in &d.lost_xids {
        ensure!(out.contains(&format!("lost transaction: xid {xid} ")), "xid {xid} not listed:\n{out}");
    }
    ensure!(out.matches("lost transaction: xid").count() == d.lost_xids.len(), "listed more than was lost:\n{out}");
    ensure!(out.contains(&format!("lost transactions: {}", d.lost_xids.len())), "the count:\n{out}");
    ensure!(out.contains("in sync mode none of them was acknowledged"), "the sync-mode note:\n{out}");

    ensure!(a.psql("postgres", "SELECT pg_is_in_recovery()")? == "t", "a is in recovery");
    let state = b.psql("postgres", "SELECT state FROM pg_stat_replication WHERE application_name = 'a'")?;
    ensure!(state == "streaming", "b lists a as {state:?}");
    ensure!(a.psql("postgres", "SHOW port")? == a.port().to_string(), "a kept its port");
    ensure!(a.psql("postgres", "SHOW cluster_name")? == "a", "a kept its cluster_name");
    ensure!(a.psql("postgres", "SHOW default_transaction_read_only")? == "off", "the fence setting is gone");
    let slot = b.psql("postgres", "SELECT active FROM pg_replication_slots WHERE slot_name = 'tandem_standby_a'")?;
    ensure!(slot == "t", "a streams through its slot on b ({slot:?})");

    b.psql("postgres", "INSERT INTO t VALUES (1000, txid_current())")?;
    wait_until("a replays b's new row", WAIT, || {
        (a.psql("postgres", "SELECT count(*) FROM t WHERE id = 1000").ok()? == "1").then_some(())
    })
    .with_context(|| a.log_tail())?;
    ensure!(a.psql("postgres", "SELECT count(*) FROM t WHERE id >= 100 AND id < 1000")? == "0", "lost rows gone");
    ensure!(a.psql("postgres", "SELECT count(*) FROM t")? == "2", "a has exactly b's rows");
    Ok(())
}

/// The entries of `dir` whose names start with `prefix`.
fn entries_starting(dir: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

#[test]
fn a_fenced_old_primary_rejoins_by_pg_rewind_and_lists_what_it_lost() -> Result<()> {
    init_tracing();
    let mut d = diverge(PgOptions::default(), 3)?;
    let out = rejoin(&mut d)?;
    ensure!(out.contains("path: pg_rewind"), "the path taken:\n{out}");
    check_rejoined(&d, &out)?;
    let parent = d.a.data_dir().parent().context("parent")?;
    ensure!(entries_starting(parent, "data.old-").is_empty(), "nothing moved aside");
    ensure!(entries_starting(parent, "data.rejoin-conf").is_empty(), "the saved configuration is cleaned up");
    Ok(())
}

#[test]
fn a_crashed_old_primary_with_a_stale_pid_file_is_recovered_and_rewound() -> Result<()> {
    init_tracing();
    let mut d = diverge(PgOptions::default(), 2)?;
    // The old primary died (kill -9) and left its postmaster.pid behind.
    let pid_file = d.a.data_dir().join("postmaster.pid");
    let stale = std::fs::read(&pid_file)?;
    d.a.kill9();
    std::fs::write(&pid_file, stale)?;
    let out = rejoin(&mut d)?;
    ensure!(!out.contains("stopped the node's server"), "nothing ran to stop:\n{out}");
    ensure!(out.contains("removed the postmaster.pid of a server that is gone"), "the stale pid file:\n{out}");
    ensure!(out.contains("complete crash recovery"), "pg_rewind ran crash recovery itself:\n{out}");
    ensure!(out.contains("path: pg_rewind"), "and rewound:\n{out}");
    check_rejoined(&d, &out)
}

#[test]
fn an_old_primary_pg_rewind_cannot_handle_is_recloned() -> Result<()> {
    init_tracing();
    // Without wal_log_hints (and without data checksums) pg_rewind refuses the target.
    let opts = PgOptions { settings: vec![("wal_log_hints".into(), "off".into())], ..PgOptions::default() };
    let mut d = diverge(opts, 2)?;
    let out = rejoin(&mut d)?;
    ensure!(out.contains("re-cloned from the new primary"), "the path taken:\n{out}");
    ensure!(out.contains("wal_log_hints"), "pg_rewind's reason is shown:\n{out}");
    check_rejoined(&d, &out)?;
    let parent = d.a.data_dir().parent().context("parent")?;
    let aside = entries_starting(parent, "data.old-");
    ensure!(aside.len() == 1, "the old data directory is kept aside: {aside:?}");
    ensure!(out.contains(&aside[0]), "and the output says where:\n{out}");
    Ok(())
}

/// Runs `tandem rejoin NODE --witness ...` and returns (succeeded, output).
fn rejoin_via_group(node: &str, data_dir: &Path, witness: &str) -> Result<(bool, String)> {
    let dir = data_dir.to_str().context("data dir")?;
    let mut p = TandemProcess::spawn(&["rejoin", node, "--data-dir", dir, "--witness", witness])?;
    let status = p.wait_exit(WAIT)?;
    Ok((status.success(), p.log()))
}

#[test]
fn the_group_refuses_to_rejoin_its_primary_or_a_standby_and_touches_nothing() -> Result<()> {
    init_tracing();
    let a = PgServer::start("a", PgOptions::default())?;
    let relay = tempfile::tempdir()?;
    let b = a.start_tandem_standby("b", relay.path().to_str().context("relay dir")?)?;
    let witness_port = tandem_tests::free_port();
    let witness_addr = format!("127.0.0.1:{witness_port}");
    let witness_dir = tempfile::tempdir()?;
    let data = witness_dir.path().join("w1").display().to_string();
    let (node_a, node_b, w1) = (format!("a={}", a.addr()), format!("b={}", b.addr()), format!("1={witness_addr}"));
    let witness = TandemProcess::spawn(&[
        "witness",
        "--id",
        "1",
        "--data-dir",
        &data,
        "--node",
        &node_a,
        "--node",
        &node_b,
        "--primary-node",
        "a",
        "--witness",
        &w1,
    ])?;
    witness.wait_for_port(witness_port, WAIT)?;
    let pid = a.postmaster_pid();

    // Until the group has bootstrapped its state it knows no nodes (and refuses for that).
    let (ok, out) = wait_until("the group to refuse a as its primary", WAIT, || {
        let (ok, out) = rejoin_via_group("a", a.data_dir(), &witness_addr).ok()?;
        out.contains("it is the group's primary").then_some((ok, out))
    })
    .with_context(|| witness.log_tail())?;
    ensure!(!ok, "refused:\n{out}");
    let (ok, out) = rejoin_via_group("b", b.data_dir(), &witness_addr)?;
    ensure!(!ok && out.contains("its role is standby, not fenced"), "b is a standby:\n{out}");

    ensure!(a.postmaster_pid() == pid, "a's server was not restarted");
    ensure!(a.psql("postgres", "SELECT pg_is_in_recovery()")? == "f", "a is still the primary");
    ensure!(b.psql("postgres", "SELECT pg_is_in_recovery()")? == "t", "b is still a standby");
    Ok(())
}

/// The `lost transaction: xid N` numbers in `tandem rejoin`'s output.
fn listed_xids(out: &str) -> Vec<u64> {
    out.match_indices("lost transaction: xid ")
        .filter_map(|(i, m)| out[i + m.len()..].split_whitespace().next()?.parse().ok())
        .collect()
}

#[test]
fn after_a_real_failover_the_group_names_the_new_primary_and_learns_the_rejoin() -> Result<()> {
    init_tracing();
    let mut ha = tandem_tests::ha::Ha::start("sync")?;
    ha.psql("CREATE TABLE acked (id int PRIMARY KEY, xid bigint)")?;
    for i in 1..=20 {
        ha.psql(&format!("INSERT INTO acked VALUES ({i}, txid_current())"))?;
    }
    let acked_xids: Vec<u64> =
        ha.psql("SELECT xid FROM acked")?.lines().filter_map(|l| l.trim().parse().ok()).collect();
    ha.node_mut("pg1").kill9();
    let state = ha.wait_epoch(2, WAIT)?;
    ensure!(state["nodes"]["pg1"]["role"] == "fenced", "pg1 fenced: {state}");
    let new_primary = state["primary"].as_str().context("primary")?.to_owned();

    let data_dir = ha.node("pg1").data_dir().to_str().context("data dir")?.to_owned();
    let relay = ha.relay_dir().join("wal").display().to_string();
    let mut args = vec!["rejoin", "pg1", "--data-dir", &data_dir, "--relay", &relay];
    let witnesses: Vec<String> = ha.witness_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    for w in &witnesses {
        args.extend(["--witness", w.as_str()]);
    }
    let mut p = TandemProcess::spawn(&args)?;
    let status = p.wait_exit(WAIT)?;
    let out = p.log();
    eprintln!("--- tandem rejoin pg1 ---\n{out}");
    ha.node_mut("pg1").started_by_tandem();
    ensure!(status.success(), "tandem rejoin failed ({status}):\n{out}\n{}", ha.node("pg1").log_tail());

    let primary_addr = ha.node(&new_primary).addr();
    ensure!(out.contains(&format!("the witness group's primary is {new_primary} at {primary_addr}")), "{out}");
    ensure!(out.contains("the witness group lists pg1 as a standby again"), "{out}");
    // Sync mode: whatever pg1 loses, no client was told it committed.
    let lost = listed_xids(&out);
    ensure!(out.contains(&format!("lost transactions: {}", lost.len())), "{out}");
    ensure!(lost.iter().all(|x| !acked_xids.contains(x)), "an acknowledged xid listed as lost: {lost:?}");

    let state = ha.state()?;
    ensure!(state["nodes"]["pg1"]["role"] == "standby", "the group lists pg1 as a standby: {state}");
    let streaming = ha
        .node(&new_primary)
        .psql("postgres", "SELECT state FROM pg_stat_replication WHERE application_name = 'pg1'")?;
    ensure!(streaming == "streaming", "pg1 streams from {new_primary} ({streaming:?})");
    ensure!(ha.node("pg1").psql("postgres", "SHOW restore_command")?.contains("wal-fetch"), "pg1 reads the relay");
    ha.psql("INSERT INTO acked VALUES (21, txid_current())")?;
    wait_until("pg1 has every acknowledged row", WAIT, || {
        (ha.node("pg1").psql("postgres", "SELECT count(*) FROM acked").ok()? == "21").then_some(())
    })
    .with_context(|| ha.node("pg1").log_tail())?;

    // And back: a forced failover to the rejoined pg1.
    let mut args: Vec<String> = vec!["failover".into(), "--to".into(), "pg1".into(), "--yes".into()];
    for (i, p) in ha.witness_ports.iter().enumerate() {
        args.extend(["--witness".into(), format!("{}=127.0.0.1:{p}", i + 1)]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p = TandemProcess::spawn(&args)?;
    let status = p.wait_exit(WAIT)?;
    ensure!(status.success() && p.log().contains("New primary: pg1"), "{}\n{}", p.log(), ha.logs());
    let state = ha.wait_epoch(3, WAIT)?;
    ensure!(state["primary"] == "pg1" && state["nodes"][&new_primary]["role"] == "fenced", "{state}");
    wait_until("writes through the proxy on pg1", WAIT, || {
        ha.psql("INSERT INTO acked VALUES (22, txid_current())").ok()
    })
    .with_context(|| ha.logs())?;
    ensure!(ha.node("pg1").psql("postgres", "SELECT count(*) FROM acked")? == "22", "every row on pg1");
    Ok(())
}
