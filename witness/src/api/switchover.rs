//! `/v1/switchover`: asking for a planned switchover, cancelling one, and the proxies'
//! quiet reports during its prepare phase.
//!
//! Place in the data flow: `tandem switchover` → **`POST /v1/switchover`** → checked here
//! (an unfit target is refused at once, with the reason) → `RequestSwitchover` in Raft → the
//! leader's steps (`crate::switchover`). Proxies in phase `pausing` → **`POST
//! /v1/switchover/quiet`** → the leader's in-memory [`crate::switchover::quiet`] record.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use tandem_core::NodeId;

use super::{authorize, ApiError};
use crate::node::{now_ms, Witness};
use crate::state::{Command, OperationKind, Outcome, Phase};
use crate::WitnessError;

/// Default time the proxies get to go quiet.
pub const DEFAULT_PAUSE_TIMEOUT_MS: u64 = 3000;
/// Longest pause timeout accepted (clients wait that long at most).
const MAX_PAUSE_TIMEOUT_MS: u64 = 60_000;

/// `POST /v1/switchover`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SwitchoverRequest {
    /// The standby to promote.
    to: NodeId,
    /// Not before this time (milliseconds since the Unix epoch).
    #[serde(default)]
    at_ms: Option<u64>,
    /// How long the proxies may take to go quiet.
    #[serde(default)]
    pause_timeout_ms: Option<u64>,
}

fn leader_only(w: &Witness) -> Result<(), ApiError> {
    if w.is_leader() {
        Ok(())
    } else {
        Err(WitnessError::NotLeader { leader: w.leader_addr() }.into())
    }
}

fn conflict(reason: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, reason)
}

/// Opens a switchover; 409 with the reason when it cannot go ahead (another operation, a
/// target that is not a fit standby, no agent for the primary, maintenance).
pub(super) async fn request(
    State(w): State<Arc<Witness>>,
    headers: HeaderMap,
    Json(req): Json<SwitchoverRequest>,
) -> Result<Json<Outcome>, ApiError> {
    authorize(&w, &headers)?;
    leader_only(&w)?;
    let pause_timeout_ms = req.pause_timeout_ms.unwrap_or(DEFAULT_PAUSE_TIMEOUT_MS);
    if pause_timeout_ms == 0 || pause_timeout_ms > MAX_PAUSE_TIMEOUT_MS {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("0 < pause_timeout_ms <= {MAX_PAUSE_TIMEOUT_MS}")));
    }
    let state = w.state.borrow().clone();
    let scheduled = req.at_ms.is_some_and(|t| t > now_ms());
    if let (Some(from), false) = (state.primary.clone(), scheduled) {
        // An immediate switchover is checked now, so the operator hears why at once (the
        // leader checks again before pausing anything).
        let agent = crate::switchover::agent_of(&w, &from).map_err(conflict)?;
        let node = agent.node().await.map_err(|e| conflict(format!("{from}'s agent: {e}")))?;
        if !node.running || node.standby_signal {
            return Err(conflict(format!("{from}'s agent says it does not run as a primary")));
        }
        if state.operation.is_none() {
            crate::switchover::check_target(&w, &state, &from, &req.to).map_err(conflict)?;
        }
    }
    let command = Command::RequestSwitchover { to: req.to, not_before_ms: req.at_ms, pause_timeout_ms };
    let outcome = w.propose(w.request_id(), command).await?;
    if !outcome.applied {
        return Err(conflict(outcome.reason.unwrap_or_else(|| "refused".into())));
    }
    Ok(Json(outcome))
}

/// `DELETE /v1/switchover`: cancels a switchover that has not stopped the primary yet
/// (scheduled, checking or pausing); the proxies resume on the primary.
pub(super) async fn cancel(State(w): State<Arc<Witness>>, headers: HeaderMap) -> Result<Json<Outcome>, ApiError> {
    authorize(&w, &headers)?;
    let command = Command::SwitchoverAborted {
        reason: "cancelled by an operator".into(),
        primary_running: true,
        cancelled: true,
    };
    let outcome = w.propose(w.request_id(), command).await?;
    if !outcome.applied {
        return Err(conflict(outcome.reason.unwrap_or_else(|| "refused".into())));
    }
    Ok(Json(outcome))
}

/// `POST /v1/switchover/quiet`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct QuietReport {
    /// The proxy (its lease holder id).
    holder: String,
    /// The switchover (its `started_ms`).
    operation: u64,
    /// Clients connected to the proxy (for the summary).
    #[serde(default)]
    clients: u64,
}

/// A proxy says it is paused with nothing running; 409 when no such switchover is pausing
/// (the proxy then follows the state it watches).
pub(super) async fn quiet(
    State(w): State<Arc<Witness>>,
    headers: HeaderMap,
    Json(report): Json<QuietReport>,
) -> Result<StatusCode, ApiError> {
    authorize(&w, &headers)?;
    leader_only(&w)?;
    let state = w.state.borrow().clone();
    let pausing = state.operation.as_ref().is_some_and(|op| {
        op.kind == OperationKind::Switchover && op.started_ms == report.operation && op.phase == Phase::Pausing
    });
    if !pausing {
        return Err(conflict("no such switchover is pausing"));
    }
    w.quiet.lock().unwrap_or_else(|p| p.into_inner()).record(report.operation, &report.holder, report.clients);
    Ok(StatusCode::NO_CONTENT)
}
