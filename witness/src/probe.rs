//! Probing the PostgreSQL nodes: the first step of the witness's data flow.
//!
//! Every witness probes every node each `probe_interval` over a kept SQL session (so a probe
//! costs one round trip, not a backend fork): `SELECT pg_is_in_recovery()` and the node's
//! position, the whole probe (connect included) bounded by `probe_timeout`, with a TCP user
//! timeout and keepalives on the socket. A frozen server still completes the TCP handshake,
//! which is why a full query is timed. A failed probe drops the session; the next probe
//! reconnects. The result is each node's [`NodeView`], which this witness reports to the
//! leader and serves in `/v1/cluster`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tandem_core::{Lsn, NodeSpec};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::config::{ProbeLogin, Timing};

/// What this witness last saw of one node.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodeView {
    /// The last probe succeeded.
    pub reachable: bool,
    /// `pg_is_in_recovery()` at the last success.
    pub in_recovery: Option<bool>,
    /// Its position at the last success (primary: current WAL LSN; standby: replayed).
    pub lsn: Option<Lsn>,
    /// Milliseconds it has been failing (0 when reachable).
    pub failing_for_ms: u64,
    /// The last probe's round trip in milliseconds.
    pub probe_ms: Option<u64>,
    /// Why the last probe failed.
    pub error: Option<String>,
    /// Since when it fails (local monotonic clock; not serialized).
    #[serde(skip)]
    pub failing_since: Option<Instant>,
}

/// This witness's views, by node name, shared with the API and the reporter.
pub type Views = Arc<Mutex<BTreeMap<String, NodeView>>>;

/// Probes every node until `stop`, updating `views`.
pub async fn run(nodes: Vec<NodeSpec>, login: ProbeLogin, timing: Timing, views: Views, stop: CancellationToken) {
    let mut tasks = tokio::task::JoinSet::new();
    for node in nodes {
        let (login, timing, views, stop) = (login.clone(), timing.clone(), views.clone(), stop.clone());
        tasks.spawn(async move { probe_node(node, login, timing, views, stop).await });
    }
    while tasks.join_next().await.is_some() {}
}

async fn probe_node(node: NodeSpec, login: ProbeLogin, timing: Timing, views: Views, stop: CancellationToken) {
    let mut session: Option<Client> = None;
    let mut ticker = tokio::time::interval(timing.probe_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let name = node.name.as_str().to_owned();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let started = Instant::now();
        let result = tokio::time::timeout(timing.probe_timeout, probe_once(&node, &login, &timing, &mut session)).await;
        let outcome = match result {
            Ok(Ok(seen)) => Ok(seen),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("no answer within {} ms", timing.probe_timeout.as_millis())),
        };
        let now = Instant::now();
        let mut all = views.lock().unwrap_or_else(|p| p.into_inner());
        let view = all.entry(name.clone()).or_default();
        match outcome {
            Ok((in_recovery, lsn)) => {
                *view = NodeView {
                    reachable: true,
                    in_recovery: Some(in_recovery),
                    lsn,
                    failing_for_ms: 0,
                    probe_ms: Some(now.duration_since(started).as_millis() as u64),
                    error: None,
                    failing_since: None,
                };
            }
            Err(error) => {
                session = None;
                let since = *view.failing_since.get_or_insert(started);
                view.reachable = false;
                view.failing_for_ms = now.duration_since(since).as_millis() as u64;
                view.probe_ms = None;
                view.error = Some(error);
            }
        }
    }
}

/// One probe: (in recovery, position).
async fn probe_once(
    node: &NodeSpec,
    login: &ProbeLogin,
    timing: &Timing,
    session: &mut Option<Client>,
) -> Result<(bool, Option<Lsn>), String> {
    if session.as_ref().is_none_or(|c| c.is_closed()) {
        *session = Some(connect(node, login, timing).await?);
    }
    let client = session.as_ref().ok_or("no session")?;
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
             ELSE pg_current_wal_lsn() END)::text",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    let lsn = row.get::<_, Option<String>>(1).and_then(|t| t.parse().ok());
    Ok((row.get(0), lsn))
}

async fn connect(node: &NodeSpec, login: &ProbeLogin, timing: &Timing) -> Result<Client, String> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&node.addr.host)
        .port(node.addr.port)
        .user(&login.user)
        .dbname(&login.database)
        .application_name("tandem_witness")
        .connect_timeout(timing.probe_timeout)
        .tcp_user_timeout(timing.probe_timeout * 4)
        .keepalives_idle(Duration::from_secs(5));
    if let Some(p) = &login.password {
        cfg.password(p);
    }
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}
