//! The operation in progress: a failover or a planned switchover, phase by phase.
//!
//! Place in the data flow: a request (`DeclarePrimaryFailed`, `tandem failover`, `tandem
//! switchover`) opens an [`Operation`] in the replicated state → the leader's steps
//! (`failover/`, `switchover/`) commit each phase before its work starts → `Promoted` ends
//! it with a new epoch (or `SwitchoverAborted` ends a switchover with none). Pure logic, no
//! I/O: a new leader reads the phase here and resumes.

use serde::{Deserialize, Serialize};
use tandem_core::{Epoch, NodeId};

use super::{ClusterState, NodeRole, Outcome};

/// Which operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OperationKind {
    /// The primary failed (or an operator forced it): fence, catch up, promote.
    Failover,
    /// Planned: pause the proxies, stop the primary cleanly, promote, resume (zero errors).
    Switchover,
}

impl OperationKind {
    /// Its name in status output and history.
    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::Failover => "failover",
            OperationKind::Switchover => "switchover",
        }
    }
}

impl std::fmt::Display for OperationKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The phases of an operation, in order (a failover uses `fencing` on, a switchover
/// `checking` to `stopping` and then the same `catching_up` and `promoting`). Each is
/// committed before its work starts, so a new leader resumes at the phase the old one
/// reached (every phase's work is idempotent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Switchover: waiting for its time (`--at`), then checking the target is fit.
    Checking,
    /// Switchover (prepare): every proxy holds new transactions and reports quiet.
    Pausing,
    /// Switchover: the old primary shuts down cleanly, sending its final WAL.
    Stopping,
    /// Failover: stop everything that could acknowledge a write for the old primary.
    Fencing,
    /// Standbys replay what the relay holds (failover) or the old primary's final WAL
    /// (switchover); a failover chooses its candidate.
    CatchingUp,
    /// `pg_promote()` on the chosen standby (`to` is fixed from here on).
    Promoting,
}

impl Phase {
    /// Its name in status output and history.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Checking => "checking",
            Phase::Pausing => "pausing",
            Phase::Stopping => "stopping",
            Phase::Fencing => "fencing",
            Phase::CatchingUp => "catching_up",
            Phase::Promoting => "promoting",
        }
    }
}

/// An operation in progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// Failover or switchover.
    pub kind: OperationKind,
    /// Its current phase.
    pub phase: Phase,
    /// The node being replaced.
    pub from: Option<NodeId>,
    /// The node taking over: asked for (`tandem failover --to`, always for a switchover) or,
    /// from `promoting` on, chosen. Never changes once promoting.
    pub to: Option<NodeId>,
    /// When it started (milliseconds since the Unix epoch, the leader's clock). Also the
    /// operation's identity in the proxies' quiet reports.
    pub started_ms: u64,
    /// When each phase was entered (leader's clock), for the history's durations.
    #[serde(default)]
    pub phase_started_ms: Vec<(Phase, u64)>,
    /// Why it cannot go on right now (e.g. too few quorum members reachable to be sure the
    /// candidate holds every acknowledged commit); cleared when it moves again.
    #[serde(default)]
    pub blocked: Option<String>,
    /// Forced by an operator (`tandem failover`) rather than by the failure detector.
    #[serde(default)]
    pub manual: bool,
    /// Switchover: not before this time (`tandem switchover --at`; milliseconds since the
    /// Unix epoch, the leader's clock).
    #[serde(default)]
    pub not_before_ms: Option<u64>,
    /// Switchover: how long the proxies may take to go quiet before it is aborted.
    #[serde(default)]
    pub pause_timeout_ms: u64,
}

impl Operation {
    /// When `phase` was entered, if it was.
    pub fn entered(&self, phase: Phase) -> Option<u64> {
        self.phase_started_ms.iter().find(|(p, _)| *p == phase).map(|(_, at)| *at)
    }

    /// Whether the proxies may still renew write leases: the old primary is the primary
    /// and nothing stops it yet (a switchover before `stopping`). A refused renewal would
    /// end the lease of a proxy whose transactions are still finishing at the PAUSE gate.
    pub fn leases_allowed(&self) -> bool {
        self.kind == OperationKind::Switchover && self.phase <= Phase::Pausing
    }
}

impl ClusterState {
    /// Opens a failover of the current primary.
    pub(super) fn begin_failover(&mut self, at_ms: u64, to: Option<NodeId>, manual: bool) {
        self.operation = Some(Operation {
            kind: OperationKind::Failover,
            phase: Phase::Fencing,
            from: self.primary.clone(),
            to,
            started_ms: at_ms,
            phase_started_ms: vec![(Phase::Fencing, at_ms)],
            blocked: None,
            manual,
            not_before_ms: None,
            pause_timeout_ms: 0,
        });
        let event = if manual { "failover requested" } else { "failover started" };
        self.record(at_ms, event, self.primary.clone());
    }

    /// `RequestFailover`: an operator forces a failover.
    pub(super) fn request_failover(&mut self, at_ms: u64, to: &Option<NodeId>) -> Outcome {
        if self.operation.is_some() {
            return self.refused("another operation is in progress");
        }
        if let Some(to) = to {
            if let Err(reason) = self.check_standby(to) {
                return self.refused(reason);
            }
        }
        if self.primary.is_none() {
            return self.refused("the cluster has no primary");
        }
        self.begin_failover(at_ms, to.clone(), true);
        self.changed()
    }

    /// `RequestSwitchover`: opens a switchover to `to` in phase `checking`.
    pub(super) fn request_switchover(
        &mut self,
        at_ms: u64,
        to: &NodeId,
        not_before_ms: Option<u64>,
        pause_timeout_ms: u64,
    ) -> Outcome {
        if let Some(op) = &self.operation {
            return self.refused(format!("a {} is in progress ({})", op.kind, op.phase.as_str()));
        }
        if self.maintenance {
            return self.refused("the cluster is paused (maintenance): `tandem resume` first");
        }
        if self.primary_failed_ms.is_some() {
            return self.refused("the primary is declared failed: a failover, not a switchover, replaces it");
        }
        if let Err(reason) = self.check_standby(to) {
            return self.refused(reason);
        }
        if self.primary.is_none() {
            return self.refused("the cluster has no primary");
        }
        self.operation = Some(Operation {
            kind: OperationKind::Switchover,
            phase: Phase::Checking,
            from: self.primary.clone(),
            to: Some(to.clone()),
            started_ms: at_ms,
            phase_started_ms: vec![(Phase::Checking, at_ms)],
            blocked: None,
            manual: true,
            not_before_ms,
            pause_timeout_ms,
        });
        let event = match not_before_ms {
            Some(t) if t > at_ms => format!("switchover to {to} scheduled in {} s", (t - at_ms) / 1000),
            _ => format!("switchover to {to} requested"),
        };
        self.record(at_ms, &event, self.primary.clone());
        self.changed()
    }

    fn check_standby(&self, to: &NodeId) -> Result<(), String> {
        match self.nodes.get(to) {
            Some(n) if n.role == NodeRole::Standby => Ok(()),
            Some(_) => Err(format!("{to} is not a standby")),
            None => Err(format!("{to} is not a node of this cluster")),
        }
    }

    /// `FailoverPhase`: the operation enters its next phase (only forward).
    pub(super) fn enter_phase(&mut self, at_ms: u64, phase: Phase, to: &Option<NodeId>) -> Outcome {
        let Some(op) = self.operation.as_mut() else { return self.refused("no operation in progress") };
        if phase < op.phase {
            return self.refused(format!("already past {}", phase.as_str()));
        }
        let switchover_phase = matches!(phase, Phase::Checking | Phase::Pausing | Phase::Stopping);
        if (op.kind == OperationKind::Switchover) != switchover_phase && phase < Phase::CatchingUp {
            let reason = format!("a {} has no phase {}", op.kind, phase.as_str());
            return self.refused(reason);
        }
        if op.phase == Phase::Promoting && op.to != *to {
            return self.refused("the standby being promoted cannot change");
        }
        if op.kind == OperationKind::Switchover && to.is_some() && op.to != *to {
            return self.refused("a switchover's target cannot change");
        }
        if phase == Phase::Promoting && to.is_none() && op.to.is_none() {
            return self.refused("promoting needs the chosen standby");
        }
        if phase != op.phase {
            op.phase_started_ms.push((phase, at_ms));
        }
        op.phase = phase;
        if to.is_some() {
            op.to = to.clone();
        }
        op.blocked = None;
        self.changed()
    }

    /// `FailoverBlocked`: the operation cannot go on for now.
    pub(super) fn block(&mut self, at_ms: u64, reason: &str) -> Outcome {
        let Some(op) = self.operation.as_mut() else { return self.refused("no operation in progress") };
        if op.blocked.as_deref() == Some(reason) {
            return self.refused("already blocked for this reason");
        }
        op.blocked = Some(reason.to_owned());
        let event = format!("{} blocked: {reason}", op.kind);
        self.record(at_ms, &event, None);
        self.changed()
    }

    /// `SwitchoverAborted`: the switchover ends before promoting; the old primary stays (or
    /// is again) the primary. When it is not running, a failover takes over once it is
    /// declared failed (at once if it already was).
    pub(super) fn abort_switchover(
        &mut self,
        at_ms: u64,
        reason: &str,
        primary_running: bool,
        cancelled: bool,
    ) -> Outcome {
        match &self.operation {
            Some(op) if cancelled && op.kind == OperationKind::Switchover && op.phase > Phase::Pausing => {
                return self.refused(
                    "too late to cancel: the primary is being stopped; the switchover finishes or aborts by itself",
                )
            }
            Some(op) if op.kind == OperationKind::Switchover && op.phase < Phase::Promoting => {}
            Some(op) if op.kind == OperationKind::Switchover => {
                return self.refused("the target is being promoted: the switchover can only finish")
            }
            _ => return self.refused("no switchover in progress"),
        }
        self.operation = None;
        self.record(at_ms, &format!("switchover aborted: {reason}"), None);
        if primary_running {
            self.primary_failed_ms = None;
        } else if self.primary_failed_ms.is_some() && !self.maintenance {
            self.begin_failover(at_ms, None, false);
        }
        self.changed()
    }

    /// `DeclarePrimaryFailed` met a switchover: one that has not stopped the primary yet
    /// gives way to a failover (the primary failed by itself); one that stopped it goes on.
    pub(super) fn primary_failed_during(&mut self, at_ms: u64) {
        let Some(op) = &self.operation else {
            if !self.maintenance {
                self.begin_failover(at_ms, None, false);
            }
            return;
        };
        if op.kind == OperationKind::Switchover && op.phase <= Phase::Pausing {
            self.operation = None;
            self.record(at_ms, "switchover abandoned: the primary failed before it was stopped", None);
            if !self.maintenance {
                self.begin_failover(at_ms, None, false);
            }
        }
    }

    /// `Promoted`: the new epoch begins with `to` as primary; `from` is fenced until it
    /// rejoins (a switchover's leader restarts it as a standby and then says so).
    pub(super) fn promoted(&mut self, at_ms: u64, from: &NodeId, to: &NodeId, note: &Option<String>) -> Outcome {
        let Some(op) = self.operation.take() else { return self.refused("no operation in progress") };
        if op.from.as_ref() != Some(from) || op.to.as_ref() != Some(to) || op.phase != Phase::Promoting {
            self.operation = Some(op);
            return self.refused("not the operation in progress");
        }
        self.epoch = Epoch(self.epoch.0 + 1);
        self.primary = Some(to.clone());
        if let Some(n) = self.nodes.get_mut(from) {
            n.role = NodeRole::Fenced;
        }
        if let Some(n) = self.nodes.get_mut(to) {
            n.role = NodeRole::Primary;
        }
        self.primary_failed_ms = None;
        self.leases.clear();
        // A failover's old primary may hold commits the new one lacks (pg_rewind, `tandem
        // rejoin`); a switchover's stopped cleanly at a point the new primary has.
        self.restart_as_standby = (op.kind == OperationKind::Switchover).then(|| from.clone());
        let mut event = format!("{}: {}", op.kind, phase_durations(&op, at_ms));
        if let Some(note) = note {
            event.push_str(&format!("; {note}"));
        }
        self.record(at_ms, &event, Some(from.clone()));
        self.changed()
    }
}

/// "fencing 12 ms, catching_up 40 ms, promoting 300 ms (total 352 ms)" for the history.
/// A switchover's `checking` (which may wait for `--at`) is left out of the total.
fn phase_durations(op: &Operation, done_ms: u64) -> String {
    let mut parts = Vec::new();
    for (i, (phase, at)) in op.phase_started_ms.iter().enumerate() {
        let end = op.phase_started_ms.get(i + 1).map(|(_, t)| *t).unwrap_or(done_ms);
        if *phase != Phase::Checking {
            parts.push(format!("{} {} ms", phase.as_str(), end.saturating_sub(*at)));
        }
    }
    let start = op.entered(Phase::Pausing).unwrap_or(op.started_ms);
    let total = done_ms.saturating_sub(start);
    format!(
        "{} → {} ({}; total {total} ms)",
        op.from.as_ref().map(NodeId::as_str).unwrap_or("?"),
        op.to.as_ref().map(NodeId::as_str).unwrap_or("?"),
        parts.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::super::tests::{bootstrapped, id, req};
    use super::super::Command;
    use super::*;

    fn switchover(s: &mut ClusterState, rid: &str, to: &str) -> Outcome {
        s.apply(&req(rid, Command::RequestSwitchover { to: id(to), not_before_ms: None, pause_timeout_ms: 2000 }))
    }

    fn phase(s: &mut ClusterState, rid: &str, phase: Phase) -> Outcome {
        s.apply(&req(rid, Command::FailoverPhase { phase, to: None }))
    }

    #[test]
    fn a_switchover_checks_pauses_stops_and_promotes_its_target() {
        let mut s = bootstrapped();
        assert!(!switchover(&mut s, "bad1", "pg1").applied, "the primary is no target");
        assert!(!switchover(&mut s, "bad2", "nope").applied);
        assert!(switchover(&mut s, "s", "pg2").applied);
        let op = s.operation.clone().unwrap();
        assert_eq!((op.kind, op.phase, op.to.clone()), (OperationKind::Switchover, Phase::Checking, Some(id("pg2"))));
        assert!(!switchover(&mut s, "s2", "pg2").applied, "one operation at a time");
        assert!(!s.apply(&req("f", Command::RequestFailover { to: None })).applied);
        // A failover's phase is not a switchover's.
        assert!(!phase(&mut s, "x", Phase::Fencing).applied);
        assert!(phase(&mut s, "p", Phase::Pausing).applied);
        // Proxies finishing their transactions at the gate keep their leases while pausing...
        assert!(s.apply(&req("l1", Command::GrantLease { holder: "p1".into(), duration_ms: 2000 })).applied);
        assert!(phase(&mut s, "st", Phase::Stopping).applied);
        // ...and get none once the primary is being stopped.
        assert!(!s.apply(&req("l2", Command::GrantLease { holder: "p1".into(), duration_ms: 2000 })).applied);
        // The stopped primary is declared failed: the switchover goes on, no failover.
        s.apply(&req("d", Command::DeclarePrimaryFailed { primary: id("pg1"), witnesses: vec![1, 2] }));
        assert_eq!(s.operation.as_ref().map(|o| o.kind), Some(OperationKind::Switchover));
        assert!(phase(&mut s, "c", Phase::CatchingUp).applied);
        let to_other = Command::FailoverPhase { phase: Phase::Promoting, to: Some(id("pg3")) };
        assert!(!s.apply(&req("o", to_other)).applied, "the target is fixed");
        assert!(phase(&mut s, "pr", Phase::Promoting).applied);
        let abort = Command::SwitchoverAborted { reason: "late".into(), primary_running: true, cancelled: false };
        assert!(!s.apply(&req("a", abort)).applied, "no abort once promoting");
        assert!(s.apply(&req("done", Command::Promoted { from: id("pg1"), to: id("pg2"), note: None })).applied);
        assert_eq!((s.epoch, s.primary.clone()), (Epoch(2), Some(id("pg2"))));
        assert_eq!(s.nodes[&id("pg1")].role, NodeRole::Fenced);
        assert!(s.primary_failed_ms.is_none() && s.operation.is_none());
        let event = &s.history.back().unwrap().event;
        assert!(event.starts_with("switchover: pg1 → pg2 (pausing"), "{event}");
        assert_eq!(s.restart_as_standby, Some(id("pg1")), "the leader restarts it as a standby");
        assert!(s.apply(&req("j", Command::Rejoined { node: id("pg1") })).applied);
        assert_eq!(s.restart_as_standby, None);
    }

    #[test]
    fn an_aborted_switchover_leaves_the_primary_or_hands_over_to_a_failover() {
        let mut s = bootstrapped();
        assert!(switchover(&mut s, "s", "pg2").applied);
        assert!(phase(&mut s, "p", Phase::Pausing).applied);
        let abort = |rid: &str, running| {
            req(rid, Command::SwitchoverAborted { reason: "r".into(), primary_running: running, cancelled: false })
        };
        assert!(s.apply(&abort("a", true)).applied);
        assert!(s.operation.is_none() && s.epoch == Epoch(1));
        assert!(s.history.back().unwrap().event.contains("aborted"));
        // Aborted after the stop with the primary not running again: the failover follows.
        assert!(switchover(&mut s, "s2", "pg2").applied);
        phase(&mut s, "p2", Phase::Pausing);
        phase(&mut s, "st2", Phase::Stopping);
        s.apply(&req("d", Command::DeclarePrimaryFailed { primary: id("pg1"), witnesses: vec![1, 2] }));
        assert!(s.apply(&abort("a2", false)).applied);
        assert_eq!(s.operation.as_ref().map(|o| (o.kind, o.phase)), Some((OperationKind::Failover, Phase::Fencing)));
    }

    #[test]
    fn a_primary_failing_before_the_stop_turns_a_switchover_into_a_failover() {
        let mut s = bootstrapped();
        assert!(switchover(&mut s, "s", "pg2").applied);
        phase(&mut s, "p", Phase::Pausing);
        s.apply(&req("d", Command::DeclarePrimaryFailed { primary: id("pg1"), witnesses: vec![1, 2] }));
        assert_eq!(s.operation.as_ref().map(|o| o.kind), Some(OperationKind::Failover));
    }

    #[test]
    fn no_switchover_in_maintenance_or_with_the_primary_failed() {
        let mut s = bootstrapped();
        s.apply(&req("m", Command::SetMaintenance { on: true }));
        assert!(!switchover(&mut s, "s", "pg2").applied);
        s.apply(&req("m2", Command::SetMaintenance { on: false }));
        s.apply(&req("d", Command::DeclarePrimaryFailed { primary: id("pg1"), witnesses: vec![1, 2] }));
        // The declaration opened a failover: no switchover beside it.
        let refused = switchover(&mut s, "s2", "pg2");
        assert!(!refused.applied && refused.reason.unwrap().contains("failover is in progress"));
    }
}
