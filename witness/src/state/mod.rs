//! The replicated cluster state: what every witness agrees on, changed only by committed
//! [`Command`]s.
//!
//! Place in the data flow: probes → leader's detector → **a command committed in Raft →
//! [`ClusterState::apply`] on every witness** → API readers (proxies, replicator, CLI).
//! Pure data and logic, no I/O: the Raft state machine (`raft/state_machine.rs`) stores
//! and snapshots it. Commands carry a request id; applying the same id twice is a no-op
//! that returns the first outcome, so a client that retries a write whose outcome it could
//! not learn (a leader that lost its quorum, a timeout) never applies it twice.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use tandem_core::{Epoch, Lsn, NodeId};

mod operation;

pub use operation::{Operation, OperationKind, Phase};

/// How many request ids are remembered for de-duplication.
const DEDUP_WINDOW: usize = 4096;
/// How many topology changes the history keeps.
const HISTORY_LEN: usize = 200;

/// A PostgreSQL node's role in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// Takes writes.
    Primary,
    /// A physical standby.
    Standby,
    /// A former primary that must not serve writes until `tandem rejoin`.
    Fenced,
}

/// One PostgreSQL node as the group knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// Its name.
    pub name: NodeId,
    /// `host:port`.
    pub addr: String,
    /// Its role.
    pub role: NodeRole,
    /// Failover priority (higher first among equally advanced standbys; 0 = never promote).
    pub priority: u32,
}

/// A topology change, for `tandem status` and post-mortems.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// When (milliseconds since the Unix epoch, the leader's clock).
    pub at_ms: u64,
    /// The epoch after the change.
    pub epoch: Epoch,
    /// What happened (`primary failed`, `bootstrap`, ...).
    pub event: String,
    /// The primary before.
    pub from: Option<NodeId>,
    /// The primary after.
    pub to: Option<NodeId>,
}

/// A write lease the group granted a proxy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The proxy's id (its address as it calls itself).
    pub holder: String,
    /// The epoch the lease is for: writes may go to that epoch's primary only.
    pub epoch: Epoch,
    /// Granted at (milliseconds since the Unix epoch, the leader's clock: for display; the
    /// proxy counts validity on its own monotonic clock from when it sent the request).
    pub granted_ms: u64,
    /// Its length in milliseconds.
    pub duration_ms: u64,
}

/// What the replicator registered and last reported.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicatorState {
    /// Where its status endpoint is.
    pub addr: String,
    /// `physical` or `logical`.
    pub replication: String,
    /// The epoch it streams for.
    pub epoch: Epoch,
    /// The position it holds durably (the relay's flush).
    pub flushed: Option<Lsn>,
    /// What each standby has received and replayed, as the relay last saw it.
    #[serde(default)]
    pub standbys: BTreeMap<String, StandbyPosition>,
    /// The commit quorum the relay keeps on the primary (`ANY k (members)`); none in async
    /// mode. Failover reads it to know how many members must be consulted (N − k + 1).
    #[serde(default)]
    pub quorum: Option<Quorum>,
    /// Its replication slot (and name in the quorum); a new primary gets one for it.
    #[serde(default)]
    pub slot: Option<String>,
}

/// `synchronous_standby_names = ANY k (members)`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quorum {
    /// How many members flush a commit before it is acknowledged.
    pub k: usize,
    /// The members' names (standbys' `cluster_name`s and the relay's slot name).
    pub members: Vec<String>,
}

impl Quorum {
    /// How many members must be consulted so that one of them holds every acknowledged
    /// commit: N − k + 1 (any k of N flushed it; N − k + 1 of N overlap any k).
    pub fn needed(&self) -> usize {
        (self.members.len() + 1).saturating_sub(self.k.max(1))
    }
}

/// One standby's positions in a replicator report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandbyPosition {
    /// Received (flushed to its disk).
    pub received: Option<Lsn>,
    /// Replayed.
    pub replayed: Option<Lsn>,
}

/// The whole replicated state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Fencing token: +1 at every change of primary.
    pub epoch: Epoch,
    /// +1 at every change a watcher cares about (topology, failure verdicts, maintenance);
    /// lease renewals and replicator reports do not move it.
    pub revision: u64,
    /// The PostgreSQL nodes, by name.
    pub nodes: BTreeMap<NodeId, NodeState>,
    /// The node that takes writes in this epoch.
    pub primary: Option<NodeId>,
    /// No automatic failover while set.
    pub maintenance: bool,
    /// The primary has been declared failed by a majority of witnesses (the failover issue
    /// acts on it), with when.
    pub primary_failed_ms: Option<u64>,
    /// The operation in progress.
    pub operation: Option<Operation>,
    /// Write leases, by holder.
    pub leases: BTreeMap<String, Lease>,
    /// The replicator, once registered.
    pub replicator: Option<ReplicatorState>,
    /// Topology changes, newest last.
    pub history: VecDeque<HistoryEntry>,
    /// An old primary a switchover stopped cleanly, to restart as a standby (through its
    /// agent; no pg_rewind needed) until it is `Rejoined`: the leader retries it.
    #[serde(default)]
    pub restart_as_standby: Option<NodeId>,
    /// Recently applied request ids and their outcomes.
    #[serde(default)]
    applied_requests: VecDeque<(String, Outcome)>,
}

/// A change to the state. Every variant is idempotent by its request id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// Sets up the cluster from the cluster file (only when it has no nodes yet).
    Bootstrap {
        /// The nodes, one of them primary.
        nodes: Vec<NodeState>,
    },
    /// A majority of witnesses failed to reach the primary for the failure timeout.
    DeclarePrimaryFailed {
        /// The primary that failed (ignored if it is no longer the primary).
        primary: NodeId,
        /// Which witnesses saw it fail.
        witnesses: Vec<u64>,
    },
    /// The primary answers again (before any failover acted).
    PrimaryRecovered {
        /// The primary.
        primary: NodeId,
    },
    /// Grants or renews a proxy's write lease for the current epoch.
    GrantLease {
        /// The proxy.
        holder: String,
        /// Its length.
        duration_ms: u64,
    },
    /// Registers the replicator or updates what it reports.
    ReportReplicator(ReplicatorState),
    /// Turns maintenance mode on or off.
    SetMaintenance {
        /// On or off.
        on: bool,
    },
    /// An operator forces a failover (`tandem failover [--to NODE]`), primary healthy or not.
    RequestFailover {
        /// The standby to promote, if the operator names one.
        to: Option<NodeId>,
    },
    /// An operator asks for a planned switchover to `to` (`tandem switchover`).
    RequestSwitchover {
        /// The standby to promote.
        to: NodeId,
        /// Not before this time (milliseconds since the Unix epoch), for `--at`.
        #[serde(default)]
        not_before_ms: Option<u64>,
        /// How long the proxies may take to go quiet before it is aborted.
        pause_timeout_ms: u64,
    },
    /// A switchover ends without a new primary (a proxy did not go quiet, the target is
    /// unfit or died, an operator cancelled it); proxies resume on the old primary.
    SwitchoverAborted {
        /// Why.
        reason: String,
        /// Whether the old primary runs (it was never stopped, or was started again).
        primary_running: bool,
        /// An operator cancelled it: refused once the primary is being stopped.
        #[serde(default)]
        cancelled: bool,
    },
    /// An operation (failover or switchover) enters its next phase (only forward; `to` is
    /// fixed once promoting).
    FailoverPhase {
        /// The phase entered.
        phase: Phase,
        /// The chosen standby (required from `promoting` on).
        to: Option<NodeId>,
    },
    /// A failover cannot go on for now, and why (shown in status and history).
    FailoverBlocked {
        /// The reason.
        reason: String,
    },
    /// The chosen standby accepts writes: the new epoch begins with it as primary, and the
    /// old primary is fenced until `tandem rejoin`.
    Promoted {
        /// The old primary.
        from: NodeId,
        /// The new primary.
        to: NodeId,
        /// What the history should also say (async mode: the possible loss window).
        #[serde(default)]
        note: Option<String>,
    },
    /// A fenced node is a standby of the current primary again (`tandem rejoin`).
    Rejoined {
        /// The node.
        node: NodeId,
    },
}

/// A command with its idempotency key and the leader's wall clock at proposal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Unique per logical request; retries reuse it.
    pub id: String,
    /// When the leader proposed it (milliseconds since the Unix epoch; for display only).
    pub at_ms: u64,
    /// The change.
    pub command: Command,
}

/// What applying a command did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// Whether it changed anything (false: refused or already so).
    pub applied: bool,
    /// Why not, when not.
    pub reason: Option<String>,
    /// The epoch after it.
    pub epoch: Epoch,
}

impl ClusterState {
    /// Applies `req` (once per request id) and returns what it did.
    pub fn apply(&mut self, req: &Request) -> Outcome {
        if let Some((_, outcome)) = self.applied_requests.iter().find(|(id, _)| id == &req.id) {
            return outcome.clone();
        }
        let outcome = self.apply_command(req);
        self.applied_requests.push_back((req.id.clone(), outcome.clone()));
        while self.applied_requests.len() > DEDUP_WINDOW {
            self.applied_requests.pop_front();
        }
        outcome
    }

    pub(super) fn done(&self) -> Outcome {
        Outcome { applied: true, reason: None, epoch: self.epoch }
    }

    /// A change watchers must see.
    pub(super) fn changed(&mut self) -> Outcome {
        self.revision += 1;
        self.done()
    }

    pub(super) fn refused(&self, reason: impl Into<String>) -> Outcome {
        Outcome { applied: false, reason: Some(reason.into()), epoch: self.epoch }
    }

    fn apply_command(&mut self, req: &Request) -> Outcome {
        match &req.command {
            Command::Bootstrap { nodes } => {
                if !self.nodes.is_empty() {
                    return self.refused("the cluster is already set up");
                }
                let primaries: Vec<&NodeState> = nodes.iter().filter(|n| n.role == NodeRole::Primary).collect();
                let [primary] = primaries.as_slice() else {
                    return self.refused("the cluster needs exactly one primary");
                };
                self.primary = Some(primary.name.clone());
                self.nodes = nodes.iter().map(|n| (n.name.clone(), n.clone())).collect();
                self.epoch = Epoch(1);
                self.record(req.at_ms, "bootstrap", None);
                self.changed()
            }
            Command::DeclarePrimaryFailed { primary, witnesses } => {
                if self.primary.as_ref() != Some(primary) {
                    return self.refused(format!("{primary} is not the primary"));
                }
                if self.primary_failed_ms.is_some() {
                    return self.refused("already declared failed");
                }
                self.primary_failed_ms = Some(req.at_ms);
                let event = format!("primary failed (seen by witnesses {witnesses:?})");
                self.record(req.at_ms, &event, Some(primary.clone()));
                self.primary_failed_during(req.at_ms);
                self.changed()
            }
            Command::PrimaryRecovered { primary } => {
                if self.primary.as_ref() != Some(primary) || self.primary_failed_ms.is_none() {
                    return self.refused("nothing to recover");
                }
                if self.operation.is_some() {
                    // Fencing may have begun: the old primary never comes back by itself.
                    return self.refused("a failover is in progress");
                }
                self.primary_failed_ms = None;
                self.record(req.at_ms, "primary answers again", Some(primary.clone()));
                self.changed()
            }
            Command::GrantLease { holder, duration_ms } => {
                if self.primary_failed_ms.is_some() {
                    return self.refused("the primary is declared failed: no write leases");
                }
                if let Some(op) = self.operation.as_ref().filter(|op| !op.leases_allowed()) {
                    return self.refused(format!("a {} is in progress: no write leases", op.kind));
                }
                let lease = Lease {
                    holder: holder.clone(),
                    epoch: self.epoch,
                    granted_ms: req.at_ms,
                    duration_ms: *duration_ms,
                };
                self.leases.insert(holder.clone(), lease);
                self.done()
            }
            Command::ReportReplicator(report) => {
                self.replicator = Some(report.clone());
                self.done()
            }
            Command::SetMaintenance { on } => {
                if self.maintenance == *on {
                    return self.refused(format!("maintenance is already {}", if *on { "on" } else { "off" }));
                }
                self.maintenance = *on;
                self.record(req.at_ms, if *on { "maintenance on" } else { "maintenance off" }, None);
                if !*on && self.primary_failed_ms.is_some() && self.operation.is_none() {
                    // The primary failed while paused: act on it now.
                    self.begin_failover(req.at_ms, None, false);
                }
                self.changed()
            }
            Command::RequestFailover { to } => self.request_failover(req.at_ms, to),
            Command::RequestSwitchover { to, not_before_ms, pause_timeout_ms } => {
                self.request_switchover(req.at_ms, to, *not_before_ms, *pause_timeout_ms)
            }
            Command::SwitchoverAborted { reason, primary_running, cancelled } => {
                self.abort_switchover(req.at_ms, reason, *primary_running, *cancelled)
            }
            Command::FailoverPhase { phase, to } => self.enter_phase(req.at_ms, *phase, to),
            Command::FailoverBlocked { reason } => self.block(req.at_ms, reason),
            Command::Promoted { from, to, note } => self.promoted(req.at_ms, from, to, note),
            Command::Rejoined { node } => {
                match self.nodes.get_mut(node) {
                    Some(n) if n.role == NodeRole::Fenced => n.role = NodeRole::Standby,
                    Some(_) => return self.refused(format!("{node} is not fenced")),
                    None => return self.refused(format!("{node} is not a node of this cluster")),
                }
                if self.restart_as_standby.as_ref() == Some(node) {
                    self.restart_as_standby = None;
                }
                self.record(req.at_ms, &format!("{node} rejoined as a standby"), None);
                self.changed()
            }
        }
    }

    /// Appends a history entry about the current primary.
    pub(super) fn record(&mut self, at_ms: u64, event: &str, from: Option<NodeId>) {
        self.history.push_back(HistoryEntry {
            at_ms,
            epoch: self.epoch,
            event: event.to_owned(),
            from,
            to: self.primary.clone(),
        });
        while self.history.len() > HISTORY_LEN {
            self.history.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn node(name: &str, role: NodeRole) -> NodeState {
        NodeState { name: name.parse().unwrap(), addr: "127.0.0.1:5432".into(), role, priority: 1 }
    }

    pub(super) fn req(id: &str, command: Command) -> Request {
        Request { id: id.into(), at_ms: 1000, command }
    }

    pub(super) fn bootstrapped() -> ClusterState {
        let mut s = ClusterState::default();
        let nodes = vec![node("pg1", NodeRole::Primary), node("pg2", NodeRole::Standby)];
        assert!(s.apply(&req("b", Command::Bootstrap { nodes })).applied);
        s
    }

    #[test]
    fn bootstrap_once_with_one_primary() {
        let mut s = ClusterState::default();
        let two = vec![node("a", NodeRole::Primary), node("b", NodeRole::Primary)];
        assert!(!s.apply(&req("1", Command::Bootstrap { nodes: two })).applied);
        let s2 = bootstrapped();
        assert_eq!(s2.epoch, Epoch(1));
        assert_eq!(s2.primary.as_ref().map(NodeId::as_str), Some("pg1"));
        let mut s3 = s2.clone();
        assert!(!s3.apply(&req("again", Command::Bootstrap { nodes: vec![node("x", NodeRole::Primary)] })).applied);
        assert_eq!(s3.history.len(), 1);
    }

    #[test]
    fn a_request_id_applies_once() {
        let mut s = bootstrapped();
        let decl = req("d1", Command::DeclarePrimaryFailed { primary: "pg1".parse().unwrap(), witnesses: vec![1, 2] });
        assert!(s.apply(&decl).applied);
        let history = s.history.len();
        // The same request again (a retry after an unknown outcome) returns the first outcome.
        assert!(s.apply(&decl).applied);
        assert_eq!(s.history.len(), history);
        // A new request for the same thing is refused.
        let again = req("d2", Command::DeclarePrimaryFailed { primary: "pg1".parse().unwrap(), witnesses: vec![1, 2] });
        assert!(!s.apply(&again).applied);
    }

    #[test]
    fn no_leases_while_the_primary_is_declared_failed() {
        let mut s = bootstrapped();
        assert!(s.apply(&req("l1", Command::GrantLease { holder: "p1".into(), duration_ms: 2000 })).applied);
        assert_eq!(s.leases["p1"].epoch, Epoch(1));
        // In maintenance a declared failure opens no failover, so the primary may recover.
        s.apply(&req("m", Command::SetMaintenance { on: true }));
        s.apply(&req("d", Command::DeclarePrimaryFailed { primary: "pg1".parse().unwrap(), witnesses: vec![1, 2] }));
        assert!(!s.apply(&req("l2", Command::GrantLease { holder: "p1".into(), duration_ms: 2000 })).applied);
        assert!(s.apply(&req("r", Command::PrimaryRecovered { primary: "pg1".parse().unwrap() })).applied);
        assert!(s.apply(&req("l3", Command::GrantLease { holder: "p1".into(), duration_ms: 2000 })).applied);
    }

    pub(super) fn id(s: &str) -> NodeId {
        s.parse().unwrap()
    }

    #[test]
    fn a_failover_goes_forward_only_and_fences_the_old_primary() {
        let mut s = bootstrapped();
        s.apply(&req("l", Command::GrantLease { holder: "p1".into(), duration_ms: 2000 }));
        assert!(
            s.apply(&req("d", Command::DeclarePrimaryFailed { primary: id("pg1"), witnesses: vec![1, 2] })).applied
        );
        let op = s.operation.clone().expect("declaring failed opens a failover");
        assert_eq!((op.phase, op.from.clone()), (Phase::Fencing, Some(id("pg1"))));
        // No recovery once fencing may have begun.
        assert!(!s.apply(&req("r", Command::PrimaryRecovered { primary: id("pg1") })).applied);
        assert!(s.apply(&req("c", Command::FailoverPhase { phase: Phase::CatchingUp, to: None })).applied);
        assert!(!s.apply(&req("back", Command::FailoverPhase { phase: Phase::Fencing, to: None })).applied);
        assert!(!s.apply(&req("p0", Command::FailoverPhase { phase: Phase::Promoting, to: None })).applied);
        assert!(s.apply(&req("p", Command::FailoverPhase { phase: Phase::Promoting, to: Some(id("pg2")) })).applied);
        // Once promoting, the candidate is fixed (a new leader must promote the same one).
        assert!(!s.apply(&req("p2", Command::FailoverPhase { phase: Phase::Promoting, to: Some(id("pg3")) })).applied);
        assert!(!s.apply(&req("x", Command::Promoted { from: id("pg1"), to: id("pg3"), note: None })).applied);
        assert!(s.apply(&req("done", Command::Promoted { from: id("pg1"), to: id("pg2"), note: None })).applied);
        assert_eq!(s.epoch, Epoch(2));
        assert_eq!(s.primary, Some(id("pg2")));
        assert_eq!(s.nodes[&id("pg1")].role, NodeRole::Fenced);
        assert_eq!(s.nodes[&id("pg2")].role, NodeRole::Primary);
        assert!(s.operation.is_none() && s.primary_failed_ms.is_none() && s.leases.is_empty());
        assert!(s.history.back().unwrap().event.contains("pg1 → pg2"), "{:?}", s.history.back());
        // Leases again, for the new epoch; the old primary stays fenced until it rejoins.
        assert!(s.apply(&req("l2", Command::GrantLease { holder: "p1".into(), duration_ms: 2000 })).applied);
        assert_eq!(s.leases["p1"].epoch, Epoch(2));
        assert!(s.apply(&req("j", Command::Rejoined { node: id("pg1") })).applied);
        assert_eq!(s.nodes[&id("pg1")].role, NodeRole::Standby);
        assert!(!s.apply(&req("j2", Command::Rejoined { node: id("pg1") })).applied);
    }

    #[test]
    fn maintenance_holds_an_automatic_failover_until_resumed() {
        let mut s = bootstrapped();
        s.apply(&req("m", Command::SetMaintenance { on: true }));
        s.apply(&req("d", Command::DeclarePrimaryFailed { primary: id("pg1"), witnesses: vec![1, 2] }));
        assert!(s.operation.is_none());
        s.apply(&req("m2", Command::SetMaintenance { on: false }));
        assert_eq!(s.operation.as_ref().map(|o| o.phase), Some(Phase::Fencing));
    }

    #[test]
    fn a_forced_failover_names_a_standby_or_none() {
        let mut s = bootstrapped();
        assert!(!s.apply(&req("f1", Command::RequestFailover { to: Some(id("pg1")) })).applied);
        assert!(!s.apply(&req("f2", Command::RequestFailover { to: Some(id("nope")) })).applied);
        assert!(s.apply(&req("f3", Command::RequestFailover { to: Some(id("pg2")) })).applied);
        let op = s.operation.clone().unwrap();
        assert!(op.manual && op.to == Some(id("pg2")));
        assert!(!s.apply(&req("f4", Command::RequestFailover { to: None })).applied);
        assert!(!s.apply(&req("l", Command::GrantLease { holder: "p".into(), duration_ms: 2000 })).applied);
    }

    #[test]
    fn quorum_needs_n_minus_k_plus_one() {
        let q = |k, n: usize| Quorum { k, members: (0..n).map(|i| i.to_string()).collect() };
        assert_eq!(q(1, 3).needed(), 3);
        assert_eq!(q(2, 3).needed(), 2);
        assert_eq!(q(3, 3).needed(), 1);
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut s = bootstrapped();
        s.apply(&req("m", Command::SetMaintenance { on: true }));
        let back: ClusterState = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
