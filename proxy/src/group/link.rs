//! Renewing the write lease from the witness group.
//!
//! Every `L / 4` the proxy posts `POST /v1/lease` to the witness it believes leads (a
//! follower answers 421 with the leader's address, which is tried next), each request
//! bounded by `L / 4`. A grant extends the [`WriteLease`] from the moment the request was
//! SENT. A 409 (the group refuses: the primary is declared failed) ends the lease at once.
//! A grant naming a different primary than the one this proxy writes to is refused here
//! too: until the proxy follows the group's topology (the failover issue), writes stop
//! rather than go to a node the group does not call primary.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::WriteLease;
use crate::context::ProxyContext;

/// What the group answers to a lease request.
#[derive(Debug, Deserialize)]
struct Grant {
    epoch: tandem_core::Epoch,
    /// (name, host:port) of the epoch's primary.
    primary: Option<(String, String)>,
    duration_ms: u64,
}

/// An error body from the group.
#[derive(Debug, Deserialize)]
struct GroupError {
    error: String,
    leader: Option<String>,
}

/// Renews `lease` until `stop`.
pub async fn run(ctx: Arc<ProxyContext>, lease: Arc<WriteLease>, stop: CancellationToken) {
    let cfg = ctx.cfg.clone();
    let period = Duration::from_millis((cfg.write_lease_ms / 4).max(10));
    let Ok(http) = reqwest::Client::builder().timeout(period).connect_timeout(period).build() else {
        tracing::error!("cannot build the HTTP client for the witness group");
        return;
    };
    let holder = cfg.listen.to_string();
    let mut leader: Option<String> = None;
    let mut counter = 0u64;
    let mut was_valid = false;
    loop {
        counter += 1;
        let request_id = format!("lease-{holder}-{}-{counter}", std::process::id());
        let mut targets: Vec<String> = leader.iter().cloned().collect();
        targets.extend(cfg.witnesses.iter().filter(|w| Some(*w) != leader.as_ref()).cloned());
        for addr in targets {
            let sent = Instant::now();
            // Whether it holds a lease as it asks: a refused request that says "no" proves to
            // the group that this proxy writes no more in the epoch (it asks one at a time).
            let body = serde_json::json!({"holder": holder, "duration_ms": cfg.write_lease_ms,
                "request_id": request_id, "holds_lease": lease.is_valid()});
            let mut req = http.post(format!("http://{addr}/v1/lease")).json(&body);
            if let Some(t) = &cfg.witness_token {
                req = req.bearer_auth(t);
            }
            let Ok(resp) = req.send().await else { continue };
            let status = resp.status();
            if status.is_success() {
                let Ok(grant) = resp.json::<Grant>().await else { continue };
                leader = Some(addr);
                accept(&ctx, &lease, sent, grant);
                break;
            }
            let err = resp.json::<GroupError>().await.ok();
            if status == reqwest::StatusCode::MISDIRECTED_REQUEST {
                leader = err.and_then(|e| e.leader);
                continue;
            }
            if status == reqwest::StatusCode::CONFLICT {
                lease.revoke();
                tracing::debug!(reason = ?err.map(|e| e.error), "the witness group refuses the write lease");
                break;
            }
        }
        let renewed = lease.remaining().is_some_and(|left| left > period * 3);
        let valid = lease.is_valid();
        if valid != was_valid {
            if valid {
                tracing::info!(epoch = %lease.epoch(), "write lease from the witness group: writes allowed");
            } else {
                tracing::warn!("no valid write lease from the witness group: writes to the primary are refused");
            }
            was_valid = valid;
        }
        // After a failed renewal, try again soon (an election takes a fraction of a second).
        let pause = if renewed { period } else { period.min(Duration::from_millis(100)) };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
            _ = lease.renewal_requested() => {}
        }
    }
}

fn accept(ctx: &ProxyContext, lease: &WriteLease, sent: Instant, grant: Grant) {
    let ours = ctx.router.topology().primary.addr.to_string();
    match &grant.primary {
        Some((_, addr)) if addr == &ours => {
            lease.grant(sent, Duration::from_millis(grant.duration_ms), grant.epoch);
        }
        other => {
            lease.revoke();
            tracing::error!(group = ?other, proxy = %ours, "the witness group names another primary: refusing writes");
        }
    }
}
