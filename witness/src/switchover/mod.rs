//! Planned switchover: the leader's steps from `tandem switchover --to NODE` to a new epoch,
//! with no client error — a two-phase commit across the proxies.
//!
//! Place in the data flow: `RequestSwitchover` opens the operation in Raft → **these steps,
//! on the leader** → `Promoted` commits the new epoch (the commit: proxies resume on the new
//! primary) or `SwitchoverAborted` ends it (proxies resume on the old one). Each phase is
//! committed before its work starts, and every step is idempotent, so a new leader resumes
//! where the old one stopped:
//!
//! 1. **checking** (waits for `--at`): the old primary's agent answers and it runs as a
//!    primary; the target is a reachable standby within `max_lag_on_switchover`. Then a
//!    `CHECKPOINT` on the old primary, so the shutdown checkpoint written later, while every
//!    client waits, has little left to flush.
//! 2. **pausing** (prepare): every proxy sees the phase on its watch, closes its PAUSE gate
//!    (running transactions finish, new ones wait) and reports quiet ([`quiet`]). Every proxy
//!    that may hold a write lease must be quiet within the pause timeout, or it is aborted.
//! 3. **stopping**: no more write leases; the old primary's agent stops it cleanly (fast
//!    shutdown): its WAL senders ship everything, the shutdown checkpoint included, before
//!    it exits. Its last checkpoint is the switchover's final position.
//! 4. **catching_up**: the target replays past that position (it has every commit).
//! 5. **promoting**: `pg_promote()`, slots for its followers (the old primary's included),
//!    the commit quorum; then `Promoted` — epoch + 1: the proxies switch and resume.
//! 6. Afterwards: standbys follow the new primary; the old primary, stopped at a point the
//!    new primary has, restarts as its standby through its agent (no pg_rewind) and is
//!    marked `Rejoined`.
//!
//! An abort before `promoting` restarts the old primary if it was stopped; the proxies then
//! resume on it. From `promoting` on it can only finish.

pub mod quiet;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_core::agent::{StandbyStart, StartRequest};
use tandem_core::{standby_slot_name, Lsn, NodeAddr, NodeId};

use crate::agent_client::AgentClient;
use crate::failover::sql::{self, NodeSession};
use crate::node::{now_ms, Witness};
use crate::state::{ClusterState, Command, Operation, Phase};

/// Bound on one SQL connection or statement.
const NODE_TIMEOUT: Duration = Duration::from_millis(1500);
/// How often the leader looks at quiet reports and the target's position.
const POLL: Duration = Duration::from_millis(5);
/// Clock difference allowed between two leaders' lease and phase timestamps.
const CLOCK_SLACK_MS: u64 = 500;
/// How long the old primary may take to stream from the new one after its restart.
const REJOIN_WAIT: Duration = Duration::from_secs(30);

/// Why a run of the steps stopped before the end.
enum Halt {
    /// Scheduled for later (`--at`).
    NotYet,
    /// Ends the switchover without a new primary.
    Abort {
        /// Why (history, status, the CLI).
        reason: String,
        /// Whether the old primary runs (never stopped, or started again).
        primary_running: bool,
    },
    /// Promoting cannot finish for now (retried; the reason is shown).
    Blocked(String),
    /// This witness cannot go on (leadership lost, a write's outcome unknown).
    Lost(String),
}

fn abort(reason: impl Into<String>) -> Halt {
    Halt::Abort { reason: reason.into(), primary_running: true }
}

/// Runs (or resumes) the switchover in `state`. Called by the leader's loop.
pub async fn drive(w: &Arc<Witness>, state: &ClusterState) {
    let Some(op) = state.operation.clone() else { return };
    match run(w, state, &op).await {
        Ok(()) | Err(Halt::NotYet) => {}
        Err(Halt::Abort { reason, primary_running }) => {
            tracing::warn!(%reason, primary_running, "switchover aborted");
            let command = Command::SwitchoverAborted { reason, primary_running, cancelled: false };
            if let Err(e) = w.propose(w.request_id(), command).await {
                tracing::warn!(error = %e, "committing the switchover's abort (the leader retries)");
            }
        }
        Err(Halt::Blocked(reason)) => {
            if op.blocked.as_ref() != Some(&reason) {
                tracing::error!(%reason, "switchover blocked");
                let _ = w.propose(w.request_id(), Command::FailoverBlocked { reason }).await;
            }
        }
        Err(Halt::Lost(reason)) => tracing::warn!(%reason, "switchover interrupted here; the leader resumes it"),
    }
}

async fn commit(w: &Witness, command: Command) -> Result<(), Halt> {
    match w.propose(w.request_id(), command).await {
        Ok(o) if o.applied => Ok(()),
        Ok(o) => Err(Halt::Lost(o.reason.unwrap_or_else(|| "refused".into()))),
        Err(e) => Err(Halt::Lost(e.to_string())),
    }
}

async fn enter(w: &Witness, phase: Phase) -> Result<(), Halt> {
    tracing::info!(phase = phase.as_str(), "switchover phase");
    commit(w, Command::FailoverPhase { phase, to: None }).await
}

/// The agent beside `node`, from the cluster file's `agent` (`[[cluster.nodes]]`).
pub fn agent_of(w: &Witness, node: &NodeId) -> Result<AgentClient, String> {
    let spec = w.cfg.cluster.nodes.iter().find(|n| &n.name == node).ok_or_else(|| format!("{node} is not a node"))?;
    let addr = spec.agent.as_deref().ok_or_else(|| {
        format!(
            "{node} has no agent (`agent = \"HOST:PORT\"` of its [[cluster.nodes]] entry, a `tandem agent` beside \
             it): a switchover stops the primary cleanly through it"
        )
    })?;
    AgentClient::new(addr, w.cfg.cluster.token.as_deref(), NODE_TIMEOUT).map_err(|e| e.to_string())
}

fn addr_of(state: &ClusterState, node: &NodeId) -> Result<NodeAddr, String> {
    let n = state.nodes.get(node).ok_or_else(|| format!("{node} is not a node of the cluster"))?;
    n.addr.parse().map_err(|e| format!("{node}: address {:?}: {e}", n.addr))
}

async fn session(w: &Witness, state: &ClusterState, node: &NodeId) -> Result<NodeSession, String> {
    let addr = addr_of(state, node)?;
    NodeSession::connect(node.as_str(), &addr, &w.cfg.probe, NODE_TIMEOUT).await.map_err(|e| e.to_string())
}

async fn run(w: &Arc<Witness>, state: &ClusterState, op: &Operation) -> Result<(), Halt> {
    let from = op.from.clone().ok_or_else(|| abort("the switchover names no old primary"))?;
    let to = op.to.clone().ok_or_else(|| abort("the switchover names no target"))?;
    let agent = agent_of(w, &from).map_err(abort)?;
    let mut phase = op.phase;
    if phase == Phase::Checking {
        if op.not_before_ms.is_some_and(|t| now_ms() < t) {
            return Err(Halt::NotYet);
        }
        precheck(w, state, &from, &to, &agent).await.map_err(abort)?;
        match session(w, state, &from).await {
            Ok(s) => match s.checkpoint().await {
                Ok(()) => tracing::info!(node = %from, "checkpoint before pausing"),
                Err(e) => tracing::warn!(error = %e, "checkpoint before pausing"),
            },
            Err(e) => return Err(abort(format!("the primary does not answer: {e}"))),
        }
        enter(w, Phase::Pausing).await?;
        phase = Phase::Pausing;
    }
    let mut paused = None;
    if phase == Phase::Pausing {
        paused = Some(wait_quiet(w, op).await?);
        // The target may have died while the proxies were finishing: abort before stopping.
        check_target(w, &w.state.borrow().clone(), &from, &to).map_err(abort)?;
        enter(w, Phase::Stopping).await?;
        phase = Phase::Stopping;
    }
    let mut stopped_at = None;
    if phase < Phase::Promoting {
        // Repeated by every run before promoting: stopping a stopped server just reports.
        let lsn = match agent.stop().await {
            Ok(reply) => reply.control.checkpoint,
            Err(e) => return Err(restart(&agent, format!("stopping {from} cleanly failed: {e}")).await),
        };
        tracing::info!(node = %from, checkpoint = %lsn, "old primary stopped cleanly");
        if phase == Phase::Stopping {
            enter(w, Phase::CatchingUp).await?;
            phase = Phase::CatchingUp;
        }
        stopped_at = Some(lsn);
    }
    let target = match session(w, state, &to).await {
        Ok(s) => s,
        Err(e) if phase == Phase::CatchingUp => return Err(restart(&agent, format!("the target: {e}")).await),
        Err(e) => return Err(Halt::Blocked(e)),
    };
    if let (Phase::CatchingUp, Some(lsn)) = (phase, stopped_at) {
        if let Err(reason) = catch_up(&target, lsn, w.cfg.failover.catch_up_timeout).await {
            return Err(restart(&agent, reason).await);
        }
        commit(w, Command::FailoverPhase { phase: Phase::Promoting, to: Some(to.clone()) }).await?;
    }
    target.promote().await.map_err(|e| Halt::Blocked(e.to_string()))?;
    crate::failover::prepare_new_primary(state, &to, &target, &[&from])
        .await
        .map_err(|e| Halt::Blocked(e.to_string()))?;
    let mut note = Vec::new();
    if let Some(lsn) = stopped_at {
        note.push(format!("{from} stopped at {lsn}"));
    }
    note.extend(paused);
    commit(w, Command::Promoted { from: from.clone(), to: to.clone(), note: Some(note.join("; ")) }).await?;
    tracing::warn!(old = %from, new = %to, "switchover done: new primary published");
    let published = w.state.borrow().clone();
    crate::failover::repoint_standbys(w, &published).await;
    finish_restart(w, &published);
    Ok(())
}

/// Restarts a switchover's old primary as a standby until it rejoined, in a task of its own
/// (it waits for streaming; the leader's loop must go on judging the primary). Called after
/// the commit and again by the leader's reconcile tick while `restart_as_standby` is set
/// (the leader that finished the switchover may have died, or the restart failed).
pub fn finish_restart(w: &Arc<Witness>, state: &ClusterState) {
    let Some(node) = state.restart_as_standby.clone() else { return };
    if state.nodes.get(&node).map(|n| n.role) != Some(crate::state::NodeRole::Fenced) {
        return;
    }
    if w.restarting.swap(true, std::sync::atomic::Ordering::AcqRel) {
        return; // one at a time
    }
    let (w, state) = (w.clone(), state.clone());
    tokio::spawn(async move {
        let outcome = match agent_of(&w, &node) {
            Ok(agent) => rejoin_old_primary(&w, &state, &node, &agent).await,
            Err(e) => Err(e),
        };
        if let Err(e) = outcome {
            tracing::warn!(%node, error = %e, "restarting the old primary as a standby (retried)");
        }
        w.restarting.store(false, std::sync::atomic::Ordering::Release);
    });
}

/// Before anything pauses: may this switchover go ahead?
async fn precheck(
    w: &Witness,
    state: &ClusterState,
    from: &NodeId,
    to: &NodeId,
    agent: &AgentClient,
) -> Result<(), String> {
    let node = agent.node().await.map_err(|e| format!("{from}'s agent: {e}"))?;
    if !node.running || node.standby_signal {
        return Err(format!("{from}'s agent says it does not run as a primary"));
    }
    check_target(w, state, from, to)
}

/// The target is a reachable standby, no further behind the primary than
/// `max_lag_on_switchover` (by this witness's probes).
pub fn check_target(w: &Witness, state: &ClusterState, from: &NodeId, to: &NodeId) -> Result<(), String> {
    if state.nodes.get(to).map(|n| n.role) != Some(crate::state::NodeRole::Standby) {
        return Err(format!("{to} is not a standby"));
    }
    let views = w.views.lock().unwrap_or_else(|p| p.into_inner());
    let target = views.get(to.as_str()).filter(|v| v.reachable && v.in_recovery == Some(true));
    let Some(target) = target else { return Err(format!("{to} is not a reachable standby")) };
    let primary = views.get(from.as_str()).filter(|v| v.reachable && v.in_recovery == Some(false));
    let Some(primary) = primary else { return Err(format!("{from} is not a reachable primary")) };
    let (Some(p), Some(t)) = (primary.lsn, target.lsn) else {
        return Err(format!("the positions of {from} and {to} are not known yet"));
    };
    let lag = p.bytes_since(t);
    let limit = w.cfg.failover.max_lag_on_switchover;
    if lag > limit {
        return Err(format!("{to} is {lag} bytes behind {from} (max_lag_on_switchover {limit})"));
    }
    Ok(())
}

/// Prepare: waits until every proxy that may hold a write lease reported quiet. Returns the
/// history's note ("2 proxies paused (17 clients)").
async fn wait_quiet(w: &Witness, op: &Operation) -> Result<String, Halt> {
    // When pausing began, from the state as it is now (`op` may predate the phase).
    let state = w.state.borrow().clone();
    let since = state.operation.as_ref().and_then(|o| o.entered(Phase::Pausing)).unwrap_or_else(now_ms);
    let timeout = Duration::from_millis(op.pause_timeout_ms);
    let left = timeout.saturating_sub(Duration::from_millis(now_ms().saturating_sub(since)));
    let deadline = Instant::now() + left;
    loop {
        let state = w.state.borrow().clone();
        if state.operation.as_ref().map(|o| o.started_ms) != Some(op.started_ms) {
            return Err(Halt::Lost("the switchover ended elsewhere".into()));
        }
        let must = quiet::must_be_quiet(&state, since, CLOCK_SLACK_MS);
        let answered = w.quiet.lock().unwrap_or_else(|p| p.into_inner()).of(op.started_ms);
        let missing: Vec<&String> = must.iter().filter(|h| !answered.contains_key(*h)).collect();
        if missing.is_empty() {
            let clients: u64 = answered.values().sum();
            tracing::info!(proxies = answered.len(), clients, "every proxy is quiet");
            return Ok(format!("{} proxies paused ({clients} clients)", answered.len()));
        }
        if Instant::now() >= deadline {
            return Err(abort(format!(
                "proxies not quiet within {} ms (a transaction still running, or no answer): {missing:?}",
                timeout.as_millis()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the target replayed the old primary's shutdown checkpoint (its last record).
async fn catch_up(target: &NodeSession, stopped_at: Lsn, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let p = target.positions().await.map_err(|e| e.to_string())?;
        if p.replayed.is_some_and(|r| r > stopped_at) {
            tracing::info!(replayed = ?p.replayed, %stopped_at, "the target has the old primary's final WAL");
            return Ok(());
        }
        if !p.in_recovery {
            return Err("the target left recovery by itself".into());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the target replayed only up to {:?} of {stopped_at} within {} ms",
                p.replayed,
                timeout.as_millis()
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Aborting after the stop: the old primary starts again as it was, then the proxies may
/// resume on it. Not running afterwards: the failure detector and a failover take over.
async fn restart(agent: &AgentClient, reason: String) -> Halt {
    let primary_running = match agent.start(&StartRequest { standby: None }).await {
        Ok(_) => true,
        Err(e) => {
            tracing::error!(error = %e, "starting the old primary again after an aborted switchover");
            false
        }
    };
    Halt::Abort { reason, primary_running }
}

/// After the commit: the old primary (stopped cleanly at a point the new primary has) starts
/// as the new primary's standby, then the group marks it a standby again.
async fn rejoin_old_primary(
    w: &Witness,
    state: &ClusterState,
    from: &NodeId,
    agent: &AgentClient,
) -> Result<(), String> {
    let to = state.primary.clone().ok_or("no primary")?;
    let to = &to;
    let new_primary = addr_of(state, to)?;
    let standby = StandbyStart {
        primary_conninfo: sql::conninfo_for(&new_primary, &w.cfg.probe, from.as_str()),
        slot: standby_slot_name(from),
        restore_command: None,
    };
    agent.start(&StartRequest { standby: Some(standby) }).await.map_err(|e| e.to_string())?;
    let primary = session(w, state, to).await?;
    let deadline = Instant::now() + REJOIN_WAIT;
    while !primary.streams_to(from.as_str()).await.map_err(|e| e.to_string())? {
        if Instant::now() >= deadline {
            return Err(format!("{from} does not stream from {to} after {} s", REJOIN_WAIT.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    commit(w, Command::Rejoined { node: from.clone() }).await.map_err(|_| "marking it rejoined".to_owned())?;
    tracing::info!(node = %from, primary = %to, "old primary rejoined as a standby");
    // It was left out of the new primary's commit quorum while it was stopped (waiting for
    // it would have stalled every commit); a quorum member again, it counts again.
    let rejoined = w.state.borrow().clone();
    let value = crate::failover::quorum_value(crate::failover::quorum_in_force(&rejoined), to);
    primary.set_quorum(&value).await.map_err(|e| e.to_string())?;
    tracing::info!(synchronous_standby_names = %value, "commit quorum with the rejoined standby");
    Ok(())
}
