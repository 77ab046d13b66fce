//! Automatic (and forced) failover: the leader's steps from "primary failed" to a new epoch.
//!
//! Place in the data flow: probe → detector → `DeclarePrimaryFailed` opens the operation in
//! Raft → **these steps, on the leader** → `Promoted` commits the new epoch → proxies, the
//! relay and the standbys follow it. Each phase is committed before its work starts and
//! every step is idempotent, so a new leader resumes where the old one stopped:
//!
//! 1. **fencing**: the old primary, if it answers, turns read-only, waits on a standby that
//!    never comes, and loses its sessions; every reachable standby is detached from it
//!    (`primary_conninfo = ''`); the relay stops receiving and says how far its WAL goes.
//!    Write leases are refused from the moment the failure was declared.
//! 2. **catching_up**: is it safe ([`choose::safety`])? Sync mode needs N − k + 1 quorum
//!    members consulted, or it refuses and says why; async mode waits out the leases. Then the
//!    standbys replay up to the furthest position any consulted member holds (the relay's WAL
//!    arrives through their `restore_command`) and the candidate is chosen.
//! 3. **promoting** (the candidate is fixed from here): `pg_promote()`, slots for its
//!    followers and the commit quorum set on it before it takes a single write.
//! 4. **publish**: `Promoted` — epoch + 1, the old primary fenced, a history entry with each
//!    phase's duration. Then the other standbys are pointed at the new primary.
//!
//! [`reconcile`] keeps it so afterwards: a fenced node that answers as a primary is fenced
//! again (the "zombie" thawed after a freeze), and a standby left pointing elsewhere (down
//! during the failover) is re-pointed.

pub mod choose;
pub mod relay;
pub mod sql;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_core::{standby_slot_name, NodeAddr, NodeId};

use crate::node::Witness;
use crate::state::{ClusterState, Command, NodeRole, Operation, Phase};
use choose::{Consulted, Safety};
use sql::NodeSession;

/// Bound on one statement or connection during a failover.
const NODE_TIMEOUT: Duration = Duration::from_millis(1500);
/// How often positions are read while standbys catch up.
const CATCH_UP_POLL: Duration = Duration::from_millis(20);

/// Why a run of the steps stopped before the end.
enum Stop {
    /// It cannot go on for now (recorded in the state; retried).
    Blocked(String),
    /// This witness cannot go on (leadership lost, a write's outcome unknown): whoever
    /// leads next resumes.
    Lost(String),
}

/// Runs (or resumes) the failover in `state`, if any. Called by the leader's loop.
pub async fn drive(w: &Arc<Witness>, state: &ClusterState) {
    let Some(op) = state.operation.clone() else { return };
    match run(w, state, &op).await {
        Ok(()) => {}
        Err(Stop::Blocked(reason)) => {
            if op.blocked.as_ref() != Some(&reason) {
                tracing::error!(%reason, "failover blocked");
                let _ = w.propose(w.request_id(), Command::FailoverBlocked { reason }).await;
            }
        }
        Err(Stop::Lost(reason)) => tracing::warn!(%reason, "failover interrupted here; the leader resumes it"),
    }
}

async fn commit(w: &Witness, command: Command) -> Result<(), Stop> {
    match w.propose(w.request_id(), command).await {
        Ok(o) if o.applied => Ok(()),
        Ok(o) => Err(Stop::Lost(o.reason.unwrap_or_else(|| "refused".into()))),
        Err(e) => Err(Stop::Lost(e.to_string())),
    }
}

fn node_addr(state: &ClusterState, name: &NodeId) -> Result<NodeAddr, Stop> {
    let node = state.nodes.get(name).ok_or_else(|| Stop::Blocked(format!("{name} is not a node of the cluster")))?;
    node.addr.parse().map_err(|e| Stop::Blocked(format!("{name}: address {:?}: {e}", node.addr)))
}

async fn run(w: &Arc<Witness>, state: &ClusterState, op: &Operation) -> Result<(), Stop> {
    let from = op.from.clone().ok_or_else(|| Stop::Blocked("the failover names no old primary".into()))?;
    let started = Instant::now();
    let (consulted, mut sessions) = fence(w, state, &from).await;
    let mut note = None;
    let to = if op.phase == Phase::Promoting {
        op.to.clone().ok_or_else(|| Stop::Blocked("promoting, but no standby chosen".into()))?
    } else {
        if op.phase == Phase::Fencing {
            commit(w, Command::FailoverPhase { phase: Phase::CatchingUp, to: None }).await?;
        }
        let quorum = quorum_in_force(state);
        let safety = choose::safety(quorum.as_ref(), &consulted);
        match &safety {
            Safety::Refuse(reason) => return Err(Stop::Blocked(reason.clone())),
            Safety::Async => {
                let longest = state.leases.values().filter(|l| l.epoch == state.epoch).map(|l| l.duration_ms).max();
                let wait = choose::lease_wait(Duration::from_millis(longest.unwrap_or(0)));
                tracing::info!(wait_ms = wait.as_millis() as u64, "async mode: waiting out the write leases");
                // Or less: once this leader can prove every lease ended.
                let deadline = started + wait;
                while Instant::now() < deadline && !w.leases_all_ended(state, wait) {
                    tokio::time::sleep(CATCH_UP_POLL).await;
                }
            }
            Safety::Sync => tracing::info!("sync mode: enough quorum members fenced; no lease wait needed"),
        }
        let chosen = catch_up(w, op, &consulted, &sessions, &safety).await?;
        if safety == Safety::Async {
            note = Some(loss_window(w, &from, &chosen, &sessions).await);
        }
        commit(w, Command::FailoverPhase { phase: Phase::Promoting, to: Some(chosen.clone()) }).await?;
        chosen
    };
    let session = match sessions.remove(&to) {
        Some(s) => s,
        None => NodeSession::connect(to.as_str(), &node_addr(state, &to)?, &w.cfg.probe, NODE_TIMEOUT)
            .await
            .map_err(|e| Stop::Blocked(e.to_string()))?,
    };
    session.promote().await.map_err(|e| Stop::Blocked(e.to_string()))?;
    prepare_new_primary(state, &to, &session, &[]).await.map_err(|e| Stop::Blocked(e.to_string()))?;
    commit(w, Command::Promoted { from: from.clone(), to: to.clone(), note }).await?;
    tracing::warn!(old = %from, new = %to, "failover done: new primary published");
    let published = w.state.borrow().clone();
    repoint_standbys(w, &published).await;
    Ok(())
}

/// Async mode: how far the promoted standby is behind the old primary's last position any
/// probe of this witness saw (acknowledged commits in between are lost).
async fn loss_window(w: &Witness, from: &NodeId, chosen: &NodeId, sessions: &BTreeMap<NodeId, NodeSession>) -> String {
    let last = w.views.lock().unwrap_or_else(|p| p.into_inner()).get(from.as_str()).and_then(|v| v.lsn);
    let replayed = match sessions.get(chosen) {
        Some(s) => s.positions().await.ok().and_then(|p| p.replayed),
        None => None,
    };
    match (last, replayed) {
        (Some(l), Some(r)) => format!(
            "async mode: {chosen} replayed {r}, the old primary was last seen at {l}: {} bytes of WAL (and the \
             commits in them) may be lost",
            l.bytes_since(r)
        ),
        _ => "async mode: the loss window is unknown (no position of the old primary)".into(),
    }
}

/// Step 1 (repeated by every run: idempotent). Returns what the fence learned and the
/// sessions to the standbys it detached.
async fn fence(w: &Witness, state: &ClusterState, from: &NodeId) -> (Consulted, BTreeMap<NodeId, NodeSession>) {
    let login = &w.cfg.probe;
    // The old primary, if it answers: nothing more may commit there (best effort: it is
    // usually dead).
    if let Ok(addr) = node_addr(state, from) {
        match NodeSession::connect(from.as_str(), &addr, login, w.cfg.timing.probe_timeout).await {
            Ok(s) => match s.fence_primary().await {
                Ok(true) => tracing::warn!(node = %from, "old primary answers: fenced (read-only, sessions ended)"),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "fencing the old primary"),
            },
            Err(e) => tracing::info!(reason = %e, "old primary unreachable (not fenced in SQL)"),
        }
    }
    let mut consulted = Consulted::default();
    let mut sessions = BTreeMap::new();
    let standbys = state.nodes.values().filter(|n| n.role == NodeRole::Standby && &n.name != from);
    let detaching = standbys.map(|n| async move {
        let addr: NodeAddr = n.addr.parse().map_err(|e| format!("{}: {e}", n.name))?;
        let s = NodeSession::connect(n.name.as_str(), &addr, login, NODE_TIMEOUT).await.map_err(|e| e.to_string())?;
        let p = s.positions().await.map_err(|e| e.to_string())?;
        if p.in_recovery {
            s.detach().await.map_err(|e| e.to_string())?;
        }
        let p = s.positions().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((n.name.clone(), n.priority, p, s))
    });
    let relay = state
        .replicator
        .as_ref()
        .filter(|r| !r.addr.is_empty())
        .map(|r| relay::fence(&r.addr, state.epoch, w.cfg.cluster.token.as_deref(), NODE_TIMEOUT * 2));
    let (detached, relay) = tokio::join!(futures::future::join_all(detaching), async {
        match relay {
            Some(f) => Some(f.await),
            None => None,
        }
    });
    for d in detached {
        match d {
            Ok((name, priority, p, s)) => {
                tracing::info!(node = %name, received = ?p.received, replayed = ?p.replayed, "standby detached");
                consulted.standbys.insert(name.clone(), (p, priority));
                sessions.insert(name, s);
            }
            Err(e) => tracing::warn!(error = %e, "standby not reached by the fence"),
        }
    }
    match relay {
        Some(Ok(r)) => {
            tracing::info!(flushed = ?r.flushed, "relay fenced");
            consulted.relay = Some((r.slot, r.flushed));
        }
        Some(Err(e)) => tracing::warn!(error = %e, "relay not reached by the fence"),
        None => {}
    }
    (consulted, sessions)
}

/// Step 2: waits until a candidate replayed everything any consulted member holds.
async fn catch_up(
    w: &Witness,
    op: &Operation,
    consulted: &Consulted,
    sessions: &BTreeMap<NodeId, NodeSession>,
    safety: &Safety,
) -> Result<NodeId, Stop> {
    let target = choose::target(consulted);
    let wanted = op.to.as_ref();
    let deadline = Instant::now() + w.cfg.failover.catch_up_timeout;
    let mut current = consulted.standbys.clone();
    loop {
        if let Some(chosen) = choose::choose(&current, target, wanted) {
            tracing::info!(%chosen, target = ?target, "candidate chosen");
            return Ok(chosen);
        }
        if Instant::now() >= deadline {
            return match safety {
                Safety::Async => {
                    let last = op.from.as_ref().and_then(|f| {
                        w.views.lock().unwrap_or_else(|p| p.into_inner()).get(f.as_str()).and_then(|v| v.lsn)
                    });
                    choose::best_within_lag(&current, last, w.cfg.failover.max_lag_on_failover, wanted)
                        .map_err(Stop::Blocked)
                }
                _ => Err(Stop::Blocked(format!(
                    "no eligible standby replayed up to {} within {} ms (positions: {:?})",
                    target.map(|t| t.to_string()).unwrap_or_default(),
                    w.cfg.failover.catch_up_timeout.as_millis(),
                    current.iter().map(|(n, (p, _))| (n.as_str(), p.replayed)).collect::<Vec<_>>()
                ))),
            };
        }
        tokio::time::sleep(CATCH_UP_POLL).await;
        for (name, session) in sessions {
            if let Ok(p) = session.positions().await {
                if let Some(entry) = current.get_mut(name) {
                    entry.0 = p;
                }
            }
        }
    }
}

/// Before the new primary takes a write: slots for the nodes that will stream from it (the
/// standbys and `also`: a switchover's old primary), and the commit quorum without itself
/// (so RPO 0 holds from its first commit).
pub(crate) async fn prepare_new_primary(
    state: &ClusterState,
    to: &NodeId,
    session: &NodeSession,
    also: &[&NodeId],
) -> Result<(), sql::NodeError> {
    let mut followers: Vec<&NodeId> =
        state.nodes.values().filter(|n| n.role == NodeRole::Standby && &n.name != to).map(|n| &n.name).collect();
    followers.extend(also);
    let mut slots: Vec<String> = followers.iter().map(|n| standby_slot_name(n)).collect();
    let quorum = quorum_in_force(state);
    if let Some(slot) = state.replicator.as_ref().and_then(|r| r.slot.clone()) {
        slots.push(slot);
    }
    session.ensure_slots(&slots).await?;
    let value = quorum_value(quorum, to);
    session.set_quorum(&value).await?;
    tracing::info!(node = %to, synchronous_standby_names = %value, slots = ?slots, "new primary prepared");
    Ok(())
}

/// `synchronous_standby_names` for `primary` under `quorum` (never waiting for itself).
pub(crate) fn quorum_value(quorum: Option<crate::state::Quorum>, primary: &NodeId) -> String {
    match quorum {
        Some(q) if q.k > 0 => {
            let members: Vec<String> = q.members.into_iter().filter(|m| m != primary.as_str()).collect();
            any_value(q.k.min(members.len()), &members)
        }
        _ => String::new(),
    }
}

/// The commit quorum the primary of this epoch runs with: the relay's configured members
/// that are standbys now (a fenced old primary or the primary itself never is one), plus the
/// relay; `k` no more than there are members. The same rule sets it on a new primary.
pub(crate) fn quorum_in_force(state: &ClusterState) -> Option<crate::state::Quorum> {
    let r = state.replicator.as_ref()?;
    let q = r.quorum.as_ref()?;
    let members: Vec<String> = q
        .members
        .iter()
        .filter(|m| {
            r.slot.as_deref() == Some(m.as_str())
                || state.nodes.values().any(|n| n.name.as_str() == m.as_str() && n.role == NodeRole::Standby)
        })
        .cloned()
        .collect();
    Some(crate::state::Quorum { k: q.k.min(members.len()), members })
}

/// `ANY k ("a", "b")`, empty when there is nobody to wait for.
fn any_value(k: usize, members: &[String]) -> String {
    if k == 0 || members.is_empty() {
        return String::new();
    }
    let list: Vec<String> = members.iter().map(|m| format!("\"{}\"", m.replace('"', "\"\""))).collect();
    format!("ANY {k} ({})", list.join(", "))
}

/// Points every standby at the current primary (best effort; [`reconcile`] retries).
pub(crate) async fn repoint_standbys(w: &Witness, state: &ClusterState) {
    let Some(primary) = state.primary.as_ref() else { return };
    let Ok(primary_addr) = node_addr(state, primary) else { return };
    let standbys = state.nodes.values().filter(|n| n.role == NodeRole::Standby);
    let jobs = standbys.map(|n| {
        let primary_addr = primary_addr.clone();
        async move {
            let addr: NodeAddr = n.addr.parse().map_err(|e| format!("{}: {e}", n.name))?;
            let s = NodeSession::connect(n.name.as_str(), &addr, &w.cfg.probe, NODE_TIMEOUT)
                .await
                .map_err(|e| e.to_string())?;
            let current = s.primary_conninfo().await.map_err(|e| e.to_string())?;
            let wanted = sql::conninfo_for(&primary_addr, &w.cfg.probe, n.name.as_str());
            if current == wanted {
                return Ok(false);
            }
            s.follow(&wanted, &standby_slot_name(&n.name)).await.map_err(|e| e.to_string())?;
            tracing::info!(node = %n.name, primary = %primary_addr, "standby now follows the new primary");
            Ok::<_, String>(true)
        }
    });
    for r in futures::future::join_all(jobs).await {
        if let Err(e) = r {
            // A standby that is down is retried every second: not a warning each time.
            tracing::debug!(error = %e, "re-pointing a standby (retried)");
        }
    }
}

/// Keeps the cluster as published (leader only, no operation in progress): a fenced node
/// that answers as a primary is fenced again; after a failover, standbys follow the
/// current primary.
pub async fn reconcile(w: &Witness, state: &ClusterState) {
    if state.operation.is_some() {
        return;
    }
    for node in state.nodes.values().filter(|n| n.role == NodeRole::Fenced) {
        let primary_again = {
            let views = w.views.lock().unwrap_or_else(|p| p.into_inner());
            views.get(node.name.as_str()).is_some_and(|v| v.reachable && v.in_recovery == Some(false))
        };
        if !primary_again {
            continue;
        }
        let Ok(addr) = node.addr.parse::<NodeAddr>() else { continue };
        if let Ok(s) = NodeSession::connect(node.name.as_str(), &addr, &w.cfg.probe, NODE_TIMEOUT).await {
            match s.fence_primary().await {
                Ok(true) => {
                    tracing::warn!(node = %node.name, "a fenced old primary answered as a primary: fenced again")
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "fencing a returning old primary"),
            }
        }
    }
    if state.epoch.0 > 1 {
        repoint_standbys(w, state).await;
    }
}
