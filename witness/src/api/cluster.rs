//! `/v1/...`: what proxies, the replicator and the CLI ask of the group.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{authorize, ApiError};
use crate::node::{now_ms, Witness};
use crate::probe::NodeView;
use crate::report::Report;
use crate::state::{ClusterState, Command, ReplicatorState};

/// Longest a watch may wait.
const MAX_WATCH: Duration = Duration::from_secs(60);

/// What `GET /v1/cluster` returns: the state as applied on the answering witness, plus what
/// that witness sees itself.
#[derive(Debug, Serialize, Deserialize)]
pub struct ClusterView {
    /// The answering witness.
    pub witness: u64,
    /// The leader it knows of.
    pub leader: Option<u64>,
    /// The current Raft term.
    pub term: u64,
    /// On the leader: milliseconds since a quorum last acknowledged it.
    pub millis_since_quorum_ack: Option<u64>,
    /// The replicated state.
    pub state: ClusterState,
    /// The witnesses: role and, on the leader, milliseconds since each last acknowledged.
    pub witnesses: Vec<WitnessView>,
    /// This witness's probe results, by node.
    pub probes: BTreeMap<String, NodeView>,
}

/// One witness in [`ClusterView`].
#[derive(Debug, Serialize, Deserialize)]
pub struct WitnessView {
    /// Its id.
    pub id: u64,
    /// Its API address.
    pub addr: String,
    /// `leader`, `follower`, or `unknown`.
    pub role: String,
    /// The last Raft log index the leader knows it holds (leader's view; null elsewhere).
    pub matched_index: Option<u64>,
}

fn view(w: &Witness) -> ClusterView {
    let m = w.raft.metrics().borrow().clone();
    let replication = m.replication.clone().unwrap_or_default();
    let witnesses = w
        .cfg
        .cluster
        .witnesses
        .iter()
        .map(|spec| WitnessView {
            id: spec.id,
            addr: spec.addr.clone(),
            role: match m.current_leader {
                Some(l) if l == spec.id => "leader".into(),
                Some(_) => "follower".into(),
                None => "unknown".into(),
            },
            matched_index: replication.get(&spec.id).copied().flatten().map(|l| l.index),
        })
        .collect();
    ClusterView {
        witness: w.cfg.id,
        leader: m.current_leader,
        term: m.current_term,
        millis_since_quorum_ack: m.millis_since_quorum_ack,
        state: w.state.borrow().clone(),
        witnesses,
        probes: w.views.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    }
}

pub(super) async fn get_cluster(State(w): State<Arc<Witness>>) -> Json<ClusterView> {
    Json(view(&w))
}

/// `?revision=N&timeout_ms=T`.
#[derive(Debug, Deserialize)]
pub(super) struct WatchQuery {
    revision: u64,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// Returns as soon as the state's revision differs from `revision` (or at the timeout, with
/// the unchanged state).
pub(super) async fn watch(State(w): State<Arc<Witness>>, Query(q): Query<WatchQuery>) -> Json<ClusterView> {
    let wait = Duration::from_millis(q.timeout_ms.unwrap_or(30_000)).min(MAX_WATCH);
    let mut rx = w.state.clone();
    let _ = tokio::time::timeout(wait, rx.wait_for(|s| s.revision != q.revision)).await;
    Json(view(&w))
}

pub(super) async fn report(
    State(w): State<Arc<Witness>>,
    headers: HeaderMap,
    Json(report): Json<Report>,
) -> Result<StatusCode, ApiError> {
    authorize(&w, &headers)?;
    if w.cfg.cluster.witness(report.witness).is_none() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("unknown witness {}", report.witness)));
    }
    let primary = w.state.borrow().primary.clone();
    if let Some(primary) = primary {
        if let Some(n) = report.nodes.get(primary.as_str()) {
            let failing_for = (!n.reachable).then(|| Duration::from_millis(n.failing_for_ms));
            w.record_sighting(report.witness, primary.as_str(), failing_for);
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/lease`.
#[derive(Debug, Serialize, Deserialize)]
pub struct LeaseRequest {
    /// The proxy asking (a stable name for it, e.g. its listen address).
    pub holder: String,
    /// Lease length in milliseconds (the proxy counts it from when it SENT this request).
    pub duration_ms: u64,
    /// Idempotency key (retries of one renewal reuse it).
    pub request_id: String,
    /// Whether the proxy held a valid lease when it sent this request (older proxies do not
    /// say: assumed yes). Lets an async failover end its lease wait early.
    #[serde(default = "assumed_held")]
    pub holds_lease: bool,
}

fn assumed_held() -> bool {
    true
}

/// The answer to a lease request.
#[derive(Debug, Serialize, Deserialize)]
pub struct LeaseGrant {
    /// The epoch the lease is for.
    pub epoch: tandem_core::Epoch,
    /// That epoch's primary (name and `host:port`).
    pub primary: Option<(String, String)>,
    /// Granted length in milliseconds.
    pub duration_ms: u64,
}

/// Longest lease the group grants.
const MAX_LEASE_MS: u64 = 30_000;

pub(super) async fn lease(
    State(w): State<Arc<Witness>>,
    headers: HeaderMap,
    Json(req): Json<LeaseRequest>,
) -> Result<Json<LeaseGrant>, ApiError> {
    authorize(&w, &headers)?;
    if req.holder.is_empty() || req.duration_ms == 0 || req.duration_ms > MAX_LEASE_MS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("holder must be set and 0 < duration_ms <= {MAX_LEASE_MS}"),
        ));
    }
    let (holder, req_held) = (req.holder.clone(), req.holds_lease);
    let outcome =
        w.propose(req.request_id, Command::GrantLease { holder: req.holder, duration_ms: req.duration_ms }).await?;
    w.record_lease_answer(&holder, outcome.epoch, !outcome.applied, req_held);
    if !outcome.applied {
        return Err(ApiError::new(StatusCode::CONFLICT, outcome.reason.unwrap_or_else(|| "refused".into())));
    }
    let state = w.state.borrow().clone();
    let primary = state.primary.as_ref().and_then(|p| state.nodes.get(p)).map(|n| (n.name.to_string(), n.addr.clone()));
    Ok(Json(LeaseGrant { epoch: outcome.epoch, primary, duration_ms: req.duration_ms }))
}

pub(super) async fn replicator(
    State(w): State<Arc<Witness>>,
    headers: HeaderMap,
    Json(report): Json<ReplicatorState>,
) -> Result<StatusCode, ApiError> {
    authorize(&w, &headers)?;
    w.propose(w.request_id(), Command::ReportReplicator(report)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/maintenance`.
#[derive(Debug, Deserialize)]
pub(super) struct MaintenanceRequest {
    on: bool,
}

pub(super) async fn maintenance(
    State(w): State<Arc<Witness>>,
    headers: HeaderMap,
    Json(req): Json<MaintenanceRequest>,
) -> Result<Json<crate::state::Outcome>, ApiError> {
    authorize(&w, &headers)?;
    Ok(Json(w.propose(w.request_id(), Command::SetMaintenance { on: req.on }).await?))
}

/// `POST /v1/failover`: `{"to": NODE}` or `{}`.
#[derive(Debug, Deserialize)]
pub(super) struct FailoverRequest {
    #[serde(default)]
    to: Option<tandem_core::NodeId>,
}

/// Forces a failover (the leader runs it like an automatic one); 409 with the reason when
/// refused (another operation in progress, the target not a standby).
pub(super) async fn failover(
    State(w): State<Arc<Witness>>,
    headers: HeaderMap,
    Json(req): Json<FailoverRequest>,
) -> Result<Json<crate::state::Outcome>, ApiError> {
    authorize(&w, &headers)?;
    let outcome = w.propose(w.request_id(), Command::RequestFailover { to: req.to }).await?;
    if !outcome.applied {
        return Err(ApiError::new(StatusCode::CONFLICT, outcome.reason.unwrap_or_else(|| "refused".into())));
    }
    Ok(Json(outcome))
}

/// `POST /v1/rejoin`: `{"node": NODE}`, sent by `tandem rejoin` once the node streams from
/// the current primary.
#[derive(Debug, Deserialize)]
pub(super) struct RejoinRequest {
    node: tandem_core::NodeId,
}

/// Marks a fenced node a standby again; 409 when it is not fenced.
pub(super) async fn rejoin(
    State(w): State<Arc<Witness>>,
    headers: HeaderMap,
    Json(req): Json<RejoinRequest>,
) -> Result<Json<crate::state::Outcome>, ApiError> {
    authorize(&w, &headers)?;
    let outcome = w.propose(w.request_id(), Command::Rejoined { node: req.node }).await?;
    if !outcome.applied {
        return Err(ApiError::new(StatusCode::CONFLICT, outcome.reason.unwrap_or_else(|| "refused".into())));
    }
    Ok(Json(outcome))
}

pub(super) async fn health(State(w): State<Arc<Witness>>) -> impl IntoResponse {
    let m = w.raft.metrics().borrow().clone();
    let body = serde_json::json!({"witness": w.cfg.id, "leader": m.current_leader, "term": m.current_term, "now_ms": now_ms()});
    let status = if m.current_leader.is_some() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body))
}

pub(super) async fn metrics(State(w): State<Arc<Witness>>) -> impl IntoResponse {
    let m = w.raft.metrics().borrow().clone();
    let state = w.state.borrow().clone();
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP tandem_witness_{name} {help}\n# TYPE tandem_witness_{name} gauge\ntandem_witness_{name} {value}"
        );
    };
    gauge("is_leader", "1 on the Raft leader.", f64::from(u8::from(m.current_leader == Some(w.cfg.id))));
    gauge("term", "Current Raft term.", m.current_term as f64);
    gauge(
        "last_applied_index",
        "Last Raft log index applied here.",
        m.last_applied.map(|l| l.index).unwrap_or(0) as f64,
    );
    gauge("epoch", "The cluster's epoch (fencing token).", state.epoch.0 as f64);
    gauge(
        "primary_failed",
        "1 while the primary is declared failed.",
        f64::from(u8::from(state.primary_failed_ms.is_some())),
    );
    gauge(
        "maintenance",
        "1 while the cluster is paused (no automatic failover).",
        f64::from(u8::from(state.maintenance)),
    );
    let op = state.operation.as_ref();
    gauge("operation_in_progress", "1 while a failover or switchover runs.", f64::from(u8::from(op.is_some())));
    gauge(
        "operation_blocked",
        "1 while the failover in progress cannot go on (see tandem status for why).",
        f64::from(u8::from(op.is_some_and(|o| o.blocked.is_some()))),
    );
    let failovers = state.history.iter().filter(|h| h.event.starts_with("failover:")).count();
    gauge("failovers_in_history", "Failovers among the kept history entries.", failovers as f64);
    let switchovers = state.history.iter().filter(|h| h.event.starts_with("switchover:")).count();
    gauge("switchovers_in_history", "Switchovers among the kept history entries.", switchovers as f64);
    let views = w.views.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let _ = writeln!(out, "# HELP tandem_witness_node_reachable 1 when this witness's last probe of the node succeeded.\n# TYPE tandem_witness_node_reachable gauge");
    for (name, v) in &views {
        let _ = writeln!(out, "tandem_witness_node_reachable{{node=\"{name}\"}} {}", u8::from(v.reachable));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
