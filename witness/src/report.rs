//! Each witness tells the leader what its probes see.
//!
//! Place in the data flow: probes → **report** → the leader's detector. Every probe
//! interval a follower sends its view of every node to the leader (`POST /v1/report`,
//! bounded by the probe interval so a slow leader never piles requests up); the leader
//! records its own view directly. A report that does not arrive simply goes stale, and a
//! stale report is no vote for "failed".

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::node::Witness;
use crate::probe::NodeView;

/// The body of `POST /v1/report`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    /// The reporting witness.
    pub witness: u64,
    /// Per node: has the last probe failed, and for how long.
    pub nodes: std::collections::BTreeMap<String, ReportedNode>,
}

/// One node in a report.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReportedNode {
    /// The last probe succeeded.
    pub reachable: bool,
    /// How long it has been failing, in milliseconds.
    pub failing_for_ms: u64,
}

impl From<&NodeView> for ReportedNode {
    fn from(v: &NodeView) -> Self {
        ReportedNode { reachable: v.reachable, failing_for_ms: v.failing_for_ms }
    }
}

/// Sends this witness's views to the leader every probe interval until `stop`.
pub async fn run(w: Arc<Witness>, stop: CancellationToken) {
    let Ok(http) = reqwest::Client::builder().timeout(w.cfg.timing.probe_interval).build() else {
        tracing::error!("cannot build the HTTP client for reports");
        return;
    };
    let mut ticker = tokio::time::interval(w.cfg.timing.probe_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if w.is_leader() {
            continue;
        }
        let Some(leader) = w.leader_addr() else { continue };
        let nodes = {
            let views = w.views.lock().unwrap_or_else(|p| p.into_inner());
            views.iter().map(|(k, v)| (k.clone(), ReportedNode::from(v))).collect()
        };
        let report = Report { witness: w.cfg.id, nodes };
        let mut req = http.post(format!("http://{leader}/v1/report")).json(&report);
        if let Some(token) = &w.cfg.cluster.token {
            req = req.bearer_auth(token);
        }
        if let Err(e) = req.send().await {
            tracing::debug!(error = %e, "report to the leader");
        }
    }
}
