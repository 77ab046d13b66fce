//! Following the witness group's topology: the primary and the standbys of the newest epoch.
//!
//! A long poll (`GET /v1/cluster/watch?revision=N`, up to 30 s) on any witness returns when
//! the group's state changes. When the group's primary is not the proxy's (another address,
//! or a newer epoch), the proxy switches: new units go to the new primary, its health checks
//! restart, and sessions pinned to the old primary end at their next unit (57P01) instead of
//! writing there. The first answer also replaces the node list the proxy was started with,
//! so the group, not the flags, decides. Parsed as plain JSON: the proxy does not link the
//! witness crate (and openraft with it).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tandem_core::{Epoch, NodeAddr, NodeId, Role};
use tokio_util::sync::CancellationToken;

use crate::context::ProxyContext;
use crate::router::{Node, Topology};

/// How long one long poll may wait.
const POLL: Duration = Duration::from_secs(30);

/// Follows the group until `stop`.
pub async fn follow(ctx: Arc<ProxyContext>, stop: CancellationToken) {
    let Ok(http) = reqwest::Client::builder()
        .timeout(POLL + Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(1))
        .build()
    else {
        tracing::error!("cannot build the HTTP client for the witness group");
        return;
    };
    let mut revision: Option<u64> = None;
    let mut next = 0usize;
    let switchover = super::switchover::Participation::default();
    loop {
        let witnesses = &ctx.cfg.witnesses;
        let addr = &witnesses[next % witnesses.len().max(1)];
        let url = match revision {
            Some(r) => format!("http://{addr}/v1/cluster/watch?revision={r}&timeout_ms={}", POLL.as_millis()),
            None => format!("http://{addr}/v1/cluster"),
        };
        let answer = tokio::select! {
            _ = stop.cancelled() => return,
            r = http.get(&url).send() => r,
        };
        let view: Option<Value> = match answer {
            Ok(r) if r.status().is_success() => r.json().await.ok(),
            _ => None,
        };
        let Some(view) = view else {
            next += 1;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            continue;
        };
        // Watch the leader when it is known: a follower learns of a commit up to a heartbeat
        // later, and a switchover's clients wait for exactly that commit.
        if let Some(i) = leader_index(&view, witnesses) {
            next = i;
        }
        let state = &view["state"];
        revision = state["revision"].as_u64();
        if let Some(topo) = changed(&ctx, state) {
            tracing::warn!(epoch = %topo.epoch, primary = %topo.primary.id, addr = %topo.primary.addr,
                "the witness group's topology differs: switching");
            if let Err(e) = ctx.switch_topology(topo) {
                tracing::error!(error = %e, "switching topology");
            }
        }
        // After the switch: a switchover's commit resumes clients towards the new primary.
        switchover.observe(&ctx, state);
    }
}

/// Which of `witnesses` is the leader the answering witness names, if it is one of them.
fn leader_index(view: &Value, witnesses: &[String]) -> Option<usize> {
    let leader = view["leader"].as_u64()?;
    let addr = view["witnesses"].as_array()?.iter().find(|w| w["id"].as_u64() == Some(leader))?["addr"].as_str()?;
    witnesses.iter().position(|w| w == addr)
}

/// The topology the group's `state` describes, if it differs from the proxy's.
fn changed(ctx: &ProxyContext, state: &Value) -> Option<Arc<Topology>> {
    let epoch = Epoch(state["epoch"].as_u64()?);
    let primary_name = state["primary"].as_str()?;
    let nodes = state["nodes"].as_object()?;
    let node = |v: &Value, role: Role| -> Option<Arc<Node>> {
        let name: NodeId = v["name"].as_str()?.parse().ok()?;
        let addr: NodeAddr = v["addr"].as_str()?.parse().ok()?;
        Some(Arc::new(Node::new(name, addr, role, 1)))
    };
    let primary = node(nodes.get(primary_name)?, Role::Primary)?;
    let replicas: Vec<Arc<Node>> = nodes
        .values()
        .filter(|v| v["role"] == "standby" && v["name"] != primary_name)
        .filter_map(|v| node(v, Role::Replica))
        .collect();
    let current = ctx.router.topology();
    let same_nodes = current.primary.addr == primary.addr
        && current.replicas.len() == replicas.len()
        && current.replicas.iter().all(|r| replicas.iter().any(|n| n.addr == r.addr && n.id == r.id));
    if same_nodes && current.epoch >= epoch {
        return None;
    }
    if same_nodes {
        // Only the epoch moved: keep the node handles (and their health and pools).
        return Some(Arc::new(Topology {
            epoch,
            primary: current.primary.clone(),
            replicas: current.replicas.clone(),
        }));
    }
    Some(Arc::new(Topology { epoch, primary, replicas }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_is_watched_when_named() {
        let witnesses = vec!["127.0.0.1:7001".to_owned(), "127.0.0.1:7002".to_owned()];
        let view = serde_json::json!({"leader": 2, "witnesses": [
            {"id": 1, "addr": "127.0.0.1:7001"}, {"id": 2, "addr": "127.0.0.1:7002"}]});
        assert_eq!(leader_index(&view, &witnesses), Some(1));
        assert_eq!(leader_index(&serde_json::json!({"leader": null}), &witnesses), None);
        let elsewhere = serde_json::json!({"leader": 3, "witnesses": [{"id": 3, "addr": "10.0.0.3:7000"}]});
        assert_eq!(leader_index(&elsewhere, &witnesses), None);
    }
}
