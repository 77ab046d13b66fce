//! A client of the witness group's API, for the CLI (and later proxies and the replicator).
//!
//! It knows every witness's address and asks them in turn, so any one of them being down
//! is no error; every call is bounded by a timeout. `tandem rejoin` asks it where the new
//! primary is and whether the node is fenced ([`WitnessClient::rejoin_target`]) before
//! touching anything, and tells the group once the node streams
//! ([`WitnessClient::confirm_rejoin`]).

use std::time::Duration;

use tandem_core::NodeId;

use crate::api::ClusterView;
use crate::state::NodeRole;

/// Why the group could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No witness answered.
    #[error("no witness answered ({0})")]
    NoAnswer(String),
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Setup(String),
    /// The group's state forbids what was asked; says why.
    #[error("{0}")]
    Refused(String),
    /// The group answered a request with an error.
    #[error("the witness group refused: {0}")]
    Rejected(String),
}

/// Where a fenced node rejoins, as the group says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejoinTarget {
    /// The current primary's name.
    pub primary: NodeId,
    /// Its `host:port`.
    pub addr: String,
}

/// Checks, in the group's state, that `node` may rejoin: it is fenced, it is not the
/// primary, no operation is under way, and there is a primary to follow.
pub fn rejoin_target(view: &ClusterView, node: &NodeId) -> Result<RejoinTarget, ClientError> {
    let state = &view.state;
    let refuse = |why: String| Err(ClientError::Refused(format!("refusing to rejoin {node}: {why}")));
    if state.nodes.is_empty() {
        return refuse("the witness group has no cluster state yet (it has not bootstrapped)".into());
    }
    let Some(n) = state.nodes.get(node) else {
        let known: Vec<&str> = state.nodes.keys().map(NodeId::as_str).collect();
        return refuse(format!("the witness group knows no such node (nodes: {})", known.join(", ")));
    };
    if state.primary.as_ref() == Some(node) || n.role == NodeRole::Primary {
        return refuse("it is the group's primary; a primary is never rejoined".into());
    }
    if n.role != NodeRole::Fenced {
        let role = format!("{:?}", n.role).to_lowercase();
        return refuse(format!("its role is {role}, not fenced: only a fenced old primary rejoins"));
    }
    if let Some(op) = &state.operation {
        return refuse(format!("a {} is under way ({}); wait until it ends", op.kind, op.phase.as_str()));
    }
    let Some(primary) = state.primary.as_ref().and_then(|p| state.nodes.get(p)) else {
        return refuse("the group has no primary to follow".into());
    };
    Ok(RejoinTarget { primary: primary.name.clone(), addr: primary.addr.clone() })
}

/// Asks the witnesses at `addrs`.
#[derive(Clone, Debug)]
pub struct WitnessClient {
    addrs: Vec<String>,
    http: reqwest::Client,
}

impl WitnessClient {
    /// A client of the witnesses at `addrs` (`host:port`), each call bounded by `timeout`.
    pub fn new(addrs: Vec<String>, timeout: Duration) -> Result<WitnessClient, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        Ok(WitnessClient { addrs, http })
    }

    /// The cluster as the leader sees it (or, with no leader, as the first witness that
    /// answers sees it).
    pub async fn cluster(&self) -> Result<ClusterView, ClientError> {
        let mut errors = Vec::new();
        let mut first = None;
        for addr in &self.addrs {
            match self.get(addr).await {
                Ok(view) => {
                    let leader = view.leader;
                    if leader == Some(view.witness) {
                        return Ok(view);
                    }
                    let leader_addr =
                        leader.and_then(|l| view.witnesses.iter().find(|w| w.id == l)).map(|w| w.addr.clone());
                    if let Some(addr) = leader_addr {
                        if let Ok(v) = self.get(&addr).await {
                            return Ok(v);
                        }
                    }
                    first.get_or_insert(view);
                }
                Err(e) => errors.push(format!("{addr}: {e}")),
            }
        }
        first.ok_or_else(|| ClientError::NoAnswer(errors.join("; ")))
    }

    /// POSTs `body` to `path` on the leader (a follower's 421 names it), with the cluster's
    /// bearer `token`. `Ok((status, body))` for any answer from the leader; an error when no
    /// witness answered.
    pub async fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
        token: Option<&str>,
    ) -> Result<(u16, serde_json::Value), ClientError> {
        self.send(reqwest::Method::POST, path, Some(body), token).await
    }

    /// DELETEs `path` on the leader, as [`Self::post`] does.
    pub async fn delete(&self, path: &str, token: Option<&str>) -> Result<(u16, serde_json::Value), ClientError> {
        self.send(reqwest::Method::DELETE, path, None, token).await
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
        token: Option<&str>,
    ) -> Result<(u16, serde_json::Value), ClientError> {
        let mut errors = Vec::new();
        let mut targets: Vec<String> = self.addrs.clone();
        let mut i = 0;
        while i < targets.len() && i < self.addrs.len() + 3 {
            let addr = targets[i].clone();
            i += 1;
            let mut req = self.http.request(method.clone(), format!("http://{addr}{path}"));
            if let Some(body) = body {
                req = req.json(body);
            }
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    errors.push(format!("{addr}: {e}"));
                    continue;
                }
            };
            let status = resp.status().as_u16();
            let answer: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
            if status == 421 {
                if let Some(leader) = answer["leader"].as_str() {
                    targets.insert(i, leader.to_owned());
                }
                continue;
            }
            return Ok((status, answer));
        }
        Err(ClientError::NoAnswer(errors.join("; ")))
    }

    /// The group's [`rejoin_target`] for `node`.
    pub async fn rejoin_target(&self, node: &NodeId) -> Result<RejoinTarget, ClientError> {
        rejoin_target(&self.cluster().await?, node)
    }

    /// Tells the group that `node` is a standby again (`POST /v1/rejoin` on the leader;
    /// `token` is the cluster's bearer token).
    pub async fn confirm_rejoin(&self, node: &NodeId, token: Option<&str>) -> Result<(), ClientError> {
        let (status, answer) = self.post("/v1/rejoin", &serde_json::json!({ "node": node }), token).await?;
        if (200..300).contains(&status) {
            return Ok(());
        }
        let error = answer["error"].as_str().unwrap_or("no reason given");
        Err(ClientError::Rejected(format!("POST /v1/rejoin: HTTP {status}: {error}")))
    }

    async fn get(&self, addr: &str) -> Result<ClusterView, reqwest::Error> {
        self.http.get(format!("http://{addr}/v1/cluster")).send().await?.error_for_status()?.json().await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::state::{ClusterState, NodeState, Operation, Phase};

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn view(roles: &[(&str, NodeRole)], primary: Option<&str>) -> ClusterView {
        let mut state = ClusterState::default();
        for (i, (name, role)) in roles.iter().enumerate() {
            let addr = format!("127.0.0.1:{}", 5432 + i);
            state.nodes.insert(id(name), NodeState { name: id(name), addr, role: *role, priority: 1 });
        }
        state.primary = primary.map(id);
        ClusterView {
            witness: 1,
            leader: Some(1),
            term: 1,
            millis_since_quorum_ack: None,
            state,
            witnesses: Vec::new(),
            probes: BTreeMap::new(),
        }
    }

    #[test]
    fn only_a_fenced_node_rejoins_and_follows_the_primary() {
        let v = view(&[("pg1", NodeRole::Fenced), ("pg2", NodeRole::Primary), ("pg3", NodeRole::Standby)], Some("pg2"));
        assert_eq!(
            rejoin_target(&v, &id("pg1")).unwrap(),
            RejoinTarget { primary: id("pg2"), addr: "127.0.0.1:5433".into() }
        );
        let refused = |node: &str| match rejoin_target(&v, &id(node)) {
            Err(ClientError::Refused(why)) => why,
            other => panic!("{node}: {other:?}"),
        };
        assert!(refused("pg2").contains("primary"), "{}", refused("pg2"));
        assert!(refused("pg3").contains("standby, not fenced"), "{}", refused("pg3"));
        assert!(refused("pg9").contains("no such node"), "{}", refused("pg9"));
        let empty = view(&[], None);
        assert!(
            matches!(rejoin_target(&empty, &id("pg1")), Err(ClientError::Refused(why)) if why.contains("bootstrapped"))
        );

        let mut busy = v;
        busy.state.operation = Some(Operation {
            kind: crate::state::OperationKind::Failover,
            phase: Phase::CatchingUp,
            not_before_ms: None,
            pause_timeout_ms: 0,
            from: Some(id("pg2")),
            to: None,
            started_ms: 0,
            phase_started_ms: Vec::new(),
            blocked: None,
            manual: false,
        });
        assert!(
            matches!(rejoin_target(&busy, &id("pg1")), Err(ClientError::Refused(why)) if why.contains("under way"))
        );
    }
}
