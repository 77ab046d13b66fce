//! Raft RPC handlers: the receiving end of `raft/network.rs`.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};

use crate::node::Witness;
use crate::raft::{TypeConfig, WitnessId};

pub(super) async fn append(
    State(w): State<Arc<Witness>>,
    Json(req): Json<AppendEntriesRequest<TypeConfig>>,
) -> Json<Result<AppendEntriesResponse<WitnessId>, RaftError<WitnessId>>> {
    Json(w.raft.append_entries(req).await)
}

pub(super) async fn vote(
    State(w): State<Arc<Witness>>,
    Json(req): Json<VoteRequest<WitnessId>>,
) -> Json<Result<VoteResponse<WitnessId>, RaftError<WitnessId>>> {
    Json(w.raft.vote(req).await)
}

pub(super) async fn snapshot(
    State(w): State<Arc<Witness>>,
    Json(req): Json<InstallSnapshotRequest<TypeConfig>>,
) -> Json<Result<InstallSnapshotResponse<WitnessId>, RaftError<WitnessId, InstallSnapshotError>>> {
    Json(w.raft.install_snapshot(req).await)
}
