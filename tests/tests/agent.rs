//! `tandem agent` against real PostgreSQL 15: the planned switchover's moves, made by hand.
//!
//! Primary `pg1` with a streaming standby `s1`, and an agent for `pg1`. The agent stops
//! `pg1` cleanly (its final WAL, the shutdown checkpoint included, reaches `s1`), `s1` is
//! promoted, and the agent starts `pg1` again as a standby of `s1` — streaming on `s1`'s new
//! timeline without pg_rewind, with every row. Along the way: the token, idempotent stops
//! and starts, and bad requests.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use tandem_tests::ha::http;
use tandem_tests::{free_port, init_tracing, wait_until, PgOptions, PgServer, TandemProcess};

const WAIT: Duration = Duration::from_secs(60);
const TOKEN: &str = "secret";

/// One agent request: (status, JSON body). Every answer of the agent, errors included, is JSON.
fn call(port: u16, method: &str, path: &str, body: Option<&str>, token: Option<&str>) -> Result<(u16, Value)> {
    let (code, text) = http(port, method, path, body, token)?;
    let value = serde_json::from_str(&text).with_context(|| format!("{method} {path}: {code} {text:?} is no JSON"))?;
    Ok((code, value))
}

/// An agent request that must answer 200.
fn ok(port: u16, method: &str, path: &str, body: Option<&str>) -> Result<Value> {
    let (code, value) = call(port, method, path, body, Some(TOKEN))?;
    ensure!(code == 200, "{method} {path}: {code} {value}");
    Ok(value)
}

/// An agent request that must fail with `code` and a JSON error text; returns the text.
fn refused(port: u16, method: &str, path: &str, body: Option<&str>, token: Option<&str>, code: u16) -> Result<String> {
    let (got, value) = call(port, method, path, body, token)?;
    ensure!(got == code, "{method} {path}: expected {code}, got {got} {value}");
    value["error"].as_str().map(str::to_owned).with_context(|| format!("no error text in {value}"))
}

fn sql_count(server: &PgServer) -> Result<u64> {
    Ok(server.psql("postgres", "SELECT count(*) FROM t")?.parse()?)
}

/// The timeline `server` writes WAL on (a primary), from its current WAL file's name.
fn current_timeline(server: &PgServer) -> Result<u32> {
    let file = server.psql("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())")?;
    Ok(u32::from_str_radix(file.get(..8).context("WAL file name")?, 16)?)
}

/// `tandem agent` for `server` (as node `name`, with [`TOKEN`]) and its port, once it listens.
fn spawn_agent(name: &str, server: &PgServer) -> Result<(TandemProcess, u16)> {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let data_dir = server.data_dir().to_str().context("data dir")?;
    let agent = TandemProcess::spawn(&[
        "agent",
        "--node",
        name,
        "--data-dir",
        data_dir,
        "--listen",
        &listen,
        "--token",
        TOKEN,
    ])?;
    agent.wait_for_port(port, WAIT)?;
    Ok((agent, port))
}

#[test]
fn the_agent_stops_a_primary_cleanly_and_restarts_it_as_a_standby_of_the_promoted_one() -> Result<()> {
    init_tracing();
    // a. pg1 with a streaming standby s1, and pg1's agent.
    let mut pg1 = PgServer::start("pg1", PgOptions::default())?;
    pg1.psql("postgres", "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10)")?;
    let s1 = pg1.start_standby("s1")?;
    wait_until("pg1 lists s1 streaming", WAIT, || {
        let state = pg1.psql("postgres", "SELECT state FROM pg_stat_replication WHERE application_name = 's1'");
        (state.ok()? == "streaming").then_some(())
    })?;
    let (agent, port) = spawn_agent("pg1", &pg1)?;

    // b. The report needs no token; stop and start do.
    let (code, node) = call(port, "GET", "/v1/node", None, None)?;
    ensure!(code == 200, "GET /v1/node: {code} {node}");
    ensure!(node["node"] == "pg1" && node["running"] == true && node["standby_signal"] == false, "{node}");
    ensure!(node["control"]["state"] == "in production", "{node}");
    let why = refused(port, "POST", "/v1/stop", Some("{}"), None, 401)?;
    ensure!(why.contains("bearer token"), "{why}");
    refused(port, "POST", "/v1/stop", Some("{}"), Some("wrong"), 401)?;
    let standby_of_s1 = json!({"standby": {
        "primary_conninfo": format!("host=127.0.0.1 port={} user=postgres application_name=pg1", s1.port()),
        "slot": "tandem_standby_pg1",
    }})
    .to_string();
    let why = refused(port, "POST", "/v1/start", Some(&standby_of_s1), Some(TOKEN), 409)?;
    ensure!(why.contains("running as a primary"), "{why}");
    ensure!(pg1.psql("postgres", "SELECT pg_is_in_recovery()")? == "f", "pg1 still runs as the primary");

    pg1.psql("postgres", "INSERT INTO t SELECT generate_series(11, 1000)")?;
    let stopped = ok(port, "POST", "/v1/stop", Some("{}"))?;
    ensure!(stopped["stopped_now"] == true && stopped["control"]["state"] == "shut down", "{stopped}");
    let checkpoint = stopped["control"]["checkpoint"].as_str().context("checkpoint")?.to_owned();
    ensure!(stopped["control"]["redo"] == checkpoint.as_str(), "a shutdown checkpoint redoes from itself: {stopped}");
    ensure!(!pg1.data_dir().join("postmaster.pid").exists(), "postmaster.pid is gone");
    let again = ok(port, "POST", "/v1/stop", None)?;
    ensure!(again["stopped_now"] == false && again["control"]["checkpoint"] == checkpoint.as_str(), "{again}");
    let node = ok(port, "GET", "/v1/node", None)?;
    ensure!(node["running"] == false && node["control"]["state"] == "shut down", "{node}");

    // c. The clean shutdown shipped pg1's last WAL: s1 replays past the shutdown checkpoint.
    wait_until("s1 replays past pg1's shutdown checkpoint", WAIT, || {
        let past = s1.psql("postgres", &format!("SELECT pg_last_wal_replay_lsn() > '{checkpoint}'::pg_lsn"));
        (past.ok()? == "t").then_some(())
    })
    .with_context(|| s1.log_tail())?;
    ensure!(sql_count(&s1)? == 1000, "s1 has every row pg1 committed");
    ensure!(s1.psql("postgres", "SELECT pg_promote()")? == "t", "s1 promoted");
    s1.psql("postgres", "SELECT pg_create_physical_replication_slot('tandem_standby_pg1', true)")?;
    s1.psql("postgres", "INSERT INTO t SELECT generate_series(1001, 1100)")?;

    // d. pg1 starts as a standby of s1 and streams from it, no rewind needed.
    let started = ok(port, "POST", "/v1/start", Some(&standby_of_s1))?;
    pg1.started_by_tandem();
    ensure!(started["started_now"] == true && started["in_recovery"] == true, "{started}");
    wait_until("s1 lists pg1 streaming", WAIT, || {
        let state = s1.psql("postgres", "SELECT state FROM pg_stat_replication WHERE application_name = 'pg1'");
        (state.ok()? == "streaming").then_some(())
    })
    .with_context(|| pg1.log_tail())?;
    ensure!(pg1.psql("postgres", "SELECT pg_is_in_recovery()")? == "t", "pg1 is a standby");
    let timeline = current_timeline(&s1)?;
    ensure!(timeline == 2, "s1 promoted onto timeline 2, not {timeline}");
    let received = pg1.psql("postgres", "SELECT received_tli FROM pg_stat_wal_receiver")?;
    ensure!(received == timeline.to_string(), "pg1 receives timeline {received}, s1 writes {timeline}");
    let slot = s1.psql("postgres", "SELECT active FROM pg_replication_slots WHERE slot_name = 'tandem_standby_pg1'")?;
    ensure!(slot == "t", "pg1 streams through its slot ({slot:?})");
    wait_until("pg1 has every row of s1", WAIT, || (sql_count(&pg1).ok()? == 1100).then_some(()))
        .with_context(|| pg1.log_tail())?;
    ensure!(sql_count(&s1)? == 1100, "s1 has 1100 rows");
    ensure!(pg1.psql("postgres", "SHOW cluster_name")? == "pg1", "pg1 kept its name");
    let again = ok(port, "POST", "/v1/start", Some(&standby_of_s1))?;
    ensure!(again["started_now"] == false && again["in_recovery"] == true, "{again}");
    let node = ok(port, "GET", "/v1/node", None)?;
    ensure!(node["running"] == true && node["standby_signal"] == true, "{node}");

    // e. Bad requests: 400 with a JSON error, the server untouched.
    let why = refused(port, "POST", "/v1/start", Some("{\"standby\": "), Some(TOKEN), 400)?;
    ensure!(why.contains("bad request body"), "{why}");
    let why = refused(port, "POST", "/v1/start", Some("{\"standby\": null, \"force\": true}"), Some(TOKEN), 400)?;
    ensure!(why.contains("unknown field"), "{why}");
    refused(port, "POST", "/v1/stop", Some("{\"force\": true}"), Some(TOKEN), 400)?;
    refused(port, "GET", "/v1/nothing", None, None, 404)?;
    refused(port, "GET", "/v1/stop", None, Some(TOKEN), 405)?;
    ensure!(pg1.psql("postgres", "SELECT pg_is_in_recovery()")? == "t", "pg1 still runs as a standby");
    ensure!(agent.try_status()?.is_none(), "the agent is still running:\n{}", agent.log_tail());
    eprintln!("--- tandem agent ---\n{}", agent.log());
    Ok(())
}

#[test]
fn a_crashed_primary_is_no_clean_stop_and_is_not_started_as_a_standby() -> Result<()> {
    init_tracing();
    let mut pg = PgServer::start("pg", PgOptions::default())?;
    let (_agent, port) = spawn_agent("pg", &pg)?;
    // kill -9 leaves the control file "in production" and a stale postmaster.pid.
    let pid_file = pg.data_dir().join("postmaster.pid");
    let stale = std::fs::read(&pid_file)?;
    pg.kill9();
    std::fs::write(&pid_file, stale)?;

    let why = refused(port, "POST", "/v1/stop", None, Some(TOKEN), 409)?;
    ensure!(why.contains("did not shut down cleanly") && why.contains("in production"), "{why}");
    ensure!(!pid_file.exists(), "the stale postmaster.pid was removed");
    let standby = json!({"standby": {"primary_conninfo": "host=127.0.0.1 port=1", "slot": "tandem_standby_pg"}});
    let why = refused(port, "POST", "/v1/start", Some(&standby.to_string()), Some(TOKEN), 409)?;
    ensure!(why.contains("tandem rejoin"), "{why}");
    ensure!(!pg.data_dir().join("standby.signal").exists(), "nothing was written");

    // As configured it starts (crash recovery) and is a primary again.
    let started = ok(port, "POST", "/v1/start", Some("{}"))?;
    pg.started_by_tandem();
    ensure!(started["started_now"] == true && started["in_recovery"] == false, "{started}");
    ensure!(pg.psql("postgres", "SELECT pg_is_in_recovery()")? == "f", "a primary again");
    let stopped = ok(port, "POST", "/v1/stop", None)?;
    ensure!(stopped["stopped_now"] == true && stopped["control"]["state"] == "shut down", "{stopped}");
    Ok(())
}
