//! The cluster description every part reads: the `[cluster]` table of `tandem.toml`.
//!
//! A deployment describes its PostgreSQL nodes and its witnesses once; the witness group
//! bootstraps its replicated state from it, and (as they move to the group) the proxy and
//! the replicator find their nodes here. Validated at load: unknown keys, duplicate names,
//! a missing or second primary and an even or oversized witness group are errors.

use std::collections::HashSet;

use crate::{NodeAddr, NodeId, Role};

/// `[cluster]`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// The PostgreSQL nodes (`[[cluster.nodes]]`), exactly one of them `primary`.
    pub nodes: Vec<NodeSpec>,
    /// The witnesses (`[[cluster.witnesses]]`): 3 or 5 (1 only for local experiments).
    #[serde(default)]
    pub witnesses: Vec<WitnessSpec>,
    /// Credential for the witnesses' mutating endpoints (proxies, replicator and CLI send it
    /// as a bearer token); none leaves them open (loopback demos only).
    #[serde(default)]
    pub token: Option<String>,
}

/// One PostgreSQL node.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Its name (standbys: their `cluster_name`).
    pub name: NodeId,
    /// `host:port`.
    pub addr: NodeAddr,
    /// Its role when the cluster is first set up.
    pub role: Role,
    /// Failover priority: higher first among equally advanced standbys; 0 = never promote.
    #[serde(default = "default_priority")]
    pub priority: u32,
    /// `host:port` of the node's agent (`tandem agent` on its host), which stops and starts
    /// its server for a switchover; none: the node has no agent.
    #[serde(default)]
    pub agent: Option<String>,
}

/// One witness.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessSpec {
    /// Its Raft id (1, 2, 3, ...).
    pub id: u64,
    /// `host:port` of its HTTP API (Raft RPC, cluster state, leases).
    pub addr: String,
}

fn default_priority() -> u32 {
    1
}

/// `HOST:PORT` with a numeric port.
fn has_port(addr: &str) -> bool {
    addr.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok())
}

/// Why a cluster description cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid [cluster]: {0}")]
pub struct ClusterError(pub String);

impl ClusterSpec {
    /// Checks everything that can be checked without connecting.
    pub fn validate(&self) -> Result<(), ClusterError> {
        let bad = |m: String| Err(ClusterError(m));
        if self.nodes.is_empty() {
            return bad("no nodes".into());
        }
        let mut names = HashSet::new();
        for n in &self.nodes {
            if !names.insert(&n.name) {
                return bad(format!("node {} is listed twice", n.name));
            }
            if let Some(agent) = &n.agent {
                if !has_port(agent) {
                    return bad(format!("node {} agent address {agent:?}: expected HOST:PORT", n.name));
                }
            }
        }
        let primaries = self.nodes.iter().filter(|n| n.role == Role::Primary).count();
        if primaries != 1 {
            return bad(format!("exactly one node must have role = \"primary\" (found {primaries})"));
        }
        let mut ids = HashSet::new();
        for w in &self.witnesses {
            if w.id == 0 {
                return bad("witness id 0 is reserved: use 1, 2, 3, ...".into());
            }
            if !ids.insert(w.id) {
                return bad(format!("witness id {} is listed twice", w.id));
            }
            if !has_port(&w.addr) {
                return bad(format!("witness {} address {:?}: expected HOST:PORT", w.id, w.addr));
            }
        }
        if !matches!(self.witnesses.len(), 0 | 1 | 3 | 5) {
            return bad(format!(
                "{} witnesses: use 3 or 5 (an even number adds no fault tolerance; 1 is for local experiments)",
                self.witnesses.len()
            ));
        }
        Ok(())
    }

    /// The node that starts as primary.
    pub fn initial_primary(&self) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.role == Role::Primary)
    }

    /// The witness with `id`.
    pub fn witness(&self, id: u64) -> Option<&WitnessSpec> {
        self.witnesses.iter().find(|w| w.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(witnesses: usize) -> ClusterSpec {
        let node = |name: &str, addr: &str, role, priority| NodeSpec {
            name: name.parse().unwrap(),
            addr: addr.parse().unwrap(),
            role,
            priority,
            agent: None,
        };
        ClusterSpec {
            nodes: vec![node("pg1", "10.0.0.1:5432", Role::Primary, 1), node("pg2", "10.0.0.2:5432", Role::Replica, 0)],
            witnesses: (1..=witnesses as u64).map(|id| WitnessSpec { id, addr: format!("10.0.1.{id}:7000") }).collect(),
            token: None,
        }
    }

    #[test]
    fn validates_nodes_and_witnesses() {
        spec(3).validate().unwrap();
        spec(1).validate().unwrap();
        assert!(spec(2).validate().unwrap_err().to_string().contains("use 3 or 5"));
        let mut s = spec(3);
        s.nodes[1].role = Role::Primary;
        assert!(s.validate().unwrap_err().to_string().contains("exactly one"));
        let mut s = spec(3);
        s.witnesses[2].id = 1;
        assert!(s.validate().unwrap_err().to_string().contains("twice"));
        let mut s = spec(3);
        s.witnesses[0].addr = "nowhere".into();
        assert!(s.validate().is_err());
        let mut s = spec(3);
        s.nodes[0].agent = Some("10.0.0.1:7475".into());
        s.validate().unwrap();
        s.nodes[1].agent = Some("10.0.0.2".into());
        assert!(s.validate().unwrap_err().to_string().contains("agent address"));
        assert_eq!(spec(3).initial_primary().unwrap().name.as_str(), "pg1");
    }

    #[test]
    fn json_round_trip() {
        let s = spec(3);
        let back: ClusterSpec = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
