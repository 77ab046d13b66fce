//! The relay reports to the witness group: where its status endpoint is, the position it
//! holds durably, and the epoch it streams for.
//!
//! Place in the data flow: beside the relay, towards the group. Once a second the relay
//! reads the cluster's epoch from any witness (`GET /v1/cluster`) and posts its report to
//! the leader (`POST /v1/replicator`; a follower answers 421 with the leader's address).
//! Failover reads the quorum it keeps (how many members to consult) and its slot (made on a
//! new primary before it takes writes). Every call is bounded; a group that does not answer is logged once
//! per outage and retried, never fatal.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::status::Board;

/// How often the relay reports.
const INTERVAL: Duration = Duration::from_secs(1);

/// What the relay says about itself besides its positions.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Its slot (its name in the commit quorum).
    pub slot: String,
    /// Sync mode: the quorum it keeps on the primary (`k`, members); failover needs it to
    /// know how many members to consult.
    pub quorum: Option<(usize, Vec<String>)>,
}

/// Reports to the witnesses at `witnesses` until `stop`.
pub async fn run(
    board: Arc<Board>,
    witnesses: Vec<String>,
    token: Option<String>,
    me: Identity,
    stop: CancellationToken,
) {
    let Ok(http) = reqwest::Client::builder().timeout(Duration::from_secs(2)).build() else {
        tracing::error!("cannot build the HTTP client for witness reports");
        return;
    };
    let mut failing = false;
    loop {
        match report_once(&http, &board, &witnesses, token.as_deref(), &me).await {
            Ok(()) if failing => {
                tracing::info!("reporting to the witness group again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                tracing::warn!(error = %e, "cannot report to the witness group (retrying)");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(INTERVAL) => {}
        }
    }
}

async fn report_once(
    http: &reqwest::Client,
    board: &Board,
    witnesses: &[String],
    token: Option<&str>,
    me: &Identity,
) -> Result<(), String> {
    let report = board.report();
    let mut errors = Vec::new();
    for addr in witnesses {
        let cluster: serde_json::Value = match http.get(format!("http://{addr}/v1/cluster")).send().await {
            Ok(r) => r.json().await.map_err(|e| e.to_string())?,
            Err(e) => {
                errors.push(format!("{addr}: {e}"));
                continue;
            }
        };
        let epoch = cluster["state"]["epoch"].as_u64().unwrap_or(0);
        let leader = cluster["leader"].as_u64();
        let leader_addr = cluster["witnesses"]
            .as_array()
            .and_then(|ws| ws.iter().find(|w| w["id"].as_u64() == leader))
            .and_then(|w| w["addr"].as_str())
            .unwrap_or(addr);
        let standbys: serde_json::Map<String, serde_json::Value> = report
            .standbys
            .iter()
            .map(|s| {
                let pos = serde_json::json!({
                    "received": s.received.map(|l| l.to_string()),
                    "replayed": s.replayed.map(|l| l.to_string()),
                });
                (s.name.clone(), pos)
            })
            .collect();
        let body = serde_json::json!({
            "addr": board.status_addr(),
            "replication": "physical",
            "epoch": epoch,
            "flushed": report.relay.flushed.map(|l| l.to_string()),
            "standbys": standbys,
            "slot": me.slot,
            "quorum": me.quorum.as_ref().map(|(k, members)| serde_json::json!({"k": k, "members": members})),
        });
        board.record_epoch(epoch);
        let mut req = http.post(format!("http://{leader_addr}/v1/replicator")).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => errors.push(format!("{leader_addr}: HTTP {}", r.status())),
            Err(e) => errors.push(format!("{leader_addr}: {e}")),
        }
    }
    Err(errors.join("; "))
}
