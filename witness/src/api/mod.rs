//! The witness's HTTP API (JSON, versioned paths).
//!
//! Place in the data flow: the witness's face. `raft.rs` carries Raft RPC between witnesses
//! (`/raft/...`); `cluster.rs` serves proxies, the replicator and the CLI (`/v1/...`): the
//! cluster state, a long-poll watch, probe reports, write leases, replicator reports,
//! maintenance, forced failover and rejoin, switchover (`switchover.rs`), `/health` and `/metrics`. Mutating endpoints need the cluster's token (when
//! one is configured) as a bearer credential. A write sent to a follower is answered 421
//! with where the leader is. Every error is a 4xx/5xx with a JSON body, never a panic.

mod cluster;
mod raft;
mod switchover;

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;

use crate::node::Witness;
use crate::WitnessError;

pub use cluster::{ClusterView, LeaseGrant, LeaseRequest, WitnessView};

/// All routes of one witness.
pub fn router(w: Arc<Witness>) -> Router {
    Router::new()
        .route("/raft/append", post(raft::append))
        .route("/raft/vote", post(raft::vote))
        .route("/raft/snapshot", post(raft::snapshot))
        .route("/v1/cluster", get(cluster::get_cluster))
        .route("/v1/cluster/watch", get(cluster::watch))
        .route("/v1/report", post(cluster::report))
        .route("/v1/lease", post(cluster::lease))
        .route("/v1/replicator", post(cluster::replicator))
        .route("/v1/maintenance", post(cluster::maintenance))
        .route("/v1/failover", post(cluster::failover))
        .route("/v1/switchover", post(switchover::request).delete(switchover::cancel))
        .route("/v1/switchover/quiet", post(switchover::quiet))
        .route("/v1/rejoin", post(cluster::rejoin))
        .route("/health", get(cluster::health))
        .route("/metrics", get(cluster::metrics))
        .with_state(w)
}

/// An API error as the client sees it.
#[derive(Debug, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    /// What went wrong.
    pub error: String,
    /// Where the leader is, when the request must go there.
    pub leader: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, error: impl Into<String>) -> ApiError {
        ApiError { status, error: error.into(), leader: None }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self)).into_response()
    }
}

impl From<WitnessError> for ApiError {
    fn from(e: WitnessError) -> ApiError {
        match e {
            WitnessError::NotLeader { leader } => ApiError {
                status: StatusCode::MISDIRECTED_REQUEST,
                error: "this witness is not the leader".into(),
                leader,
            },
            WitnessError::Unknown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the write's outcome is unknown (the leader may have lost its quorum): retry with the same request id",
            ),
            other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        }
    }
}

/// Checks the bearer token of a mutating request.
fn authorize(w: &Witness, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers.get(axum::http::header::AUTHORIZATION).map(|v| v.as_bytes());
    if tandem_core::bearer_allows(w.cfg.cluster.token.as_deref(), given) {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::UNAUTHORIZED, "a valid bearer token is required (the cluster's token)"))
    }
}
