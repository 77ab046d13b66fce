//! `tandem agent`: a small HTTP service beside one PostgreSQL server that stops and starts it.
//!
//! Place in the flow: witness leader → **agent** → pg_ctl / signals on this host. The
//! witnesses speak only SQL to the nodes, and a planned switchover needs two things SQL
//! cannot do: stop the old primary *cleanly* (a fast shutdown writes a shutdown checkpoint
//! and its WAL senders ship everything, that checkpoint included, to the standbys before the
//! postmaster exits), and later start it again as a standby of the new primary. Each node's
//! host runs one agent for its one data directory.
//!
//! Endpoints (bodies: [`tandem_core::agent`]): `GET /v1/node` → the server's state (running,
//! `standby.signal`, `pg_controldata`); `POST /v1/stop` → a clean fast shutdown (SIGINT, then
//! a 10 ms poll until the postmaster is gone; 409 when the control file then shows anything
//! but a clean shutdown); `POST /v1/start` → start as configured, or as a standby of the
//! primary given (standby settings and `standby.signal` written first). With a token, every
//! endpoint but `GET /v1/node` needs `Authorization: Bearer <token>`. One stop or start runs
//! at a time; the work itself ([`ops`]) is blocking and runs in `spawn_blocking`.

pub mod ops;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tandem_core::agent::{AgentErrorBody, NodeReport, StartReply, StartRequest, StopReply};
use tandem_core::NodeId;
use tokio_util::sync::CancellationToken;

/// What one agent serves.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The node's name in the cluster (its `cluster_name` when it runs as a standby).
    pub node: NodeId,
    /// The server's data directory (absolute).
    pub data_dir: PathBuf,
    /// Where the HTTP API listens.
    pub listen: SocketAddr,
    /// The bearer token `POST` requests must carry; none leaves them open (loopback only).
    pub token: Option<String>,
}

/// Why the agent stopped, or why a request failed (each maps to an HTTP status).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The API cannot listen on its address.
    #[error("agent cannot listen on {addr}: {source}")]
    Listen {
        /// The `--listen` address.
        addr: SocketAddr,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("agent HTTP server: {0}")]
    Serve(#[source] std::io::Error),
    /// The request body is not what the endpoint takes (400).
    #[error("bad request body: {0}")]
    BadRequest(String),
    /// No valid bearer token (401).
    #[error("a valid bearer token is required (Authorization: Bearer <token>)")]
    Unauthorized,
    /// No such endpoint (404) or method (405).
    #[error("{1}")]
    NoRoute(StatusCode, String),
    /// The server is in a state the request cannot be carried out in (409).
    #[error("{0}")]
    Conflict(String),
    /// After the stop the control file shows no clean shutdown: the server crashed (409).
    #[error("the server did not shut down cleanly: pg_controldata says {state:?}")]
    NotClean {
        /// `Database cluster state`.
        state: String,
    },
    /// The postmaster outlived the stop's bound.
    #[error("the postmaster (pid {pid}) was still running {secs} s after SIGINT (fast shutdown)")]
    StopTimeout {
        /// The postmaster's pid.
        pid: i32,
        /// How long the agent waited.
        secs: u64,
    },
    /// Sending the signal failed.
    #[error("cannot signal the postmaster (pid {pid}): {source}")]
    Signal {
        /// The postmaster's pid.
        pid: i32,
        /// The error.
        #[source]
        source: nix::errno::Errno,
    },
    /// `pg_controldata` failed or printed something unreadable.
    #[error("pg_controldata: {0}")]
    Control(String),
    /// Writing the standby settings failed.
    #[error(transparent)]
    Settings(#[from] super::RelayError),
    /// A PostgreSQL program (pg_ctl start) or file failed.
    #[error(transparent)]
    LocalPg(#[from] tandem_localpg::LocalPgError),
    /// The blocking task died.
    #[error("agent task failed: {0}")]
    Task(String),
}

impl AgentError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            AgentError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AgentError::Unauthorized => StatusCode::UNAUTHORIZED,
            AgentError::NoRoute(status, _) => *status,
            AgentError::Conflict(_) | AgentError::NotClean { .. } => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        (self.status(), Json(AgentErrorBody { error: self.to_string() })).into_response()
    }
}

/// The agent's shared state: its configuration and the lock that runs one operation at a time.
struct Agent {
    cfg: Arc<AgentConfig>,
    op: tokio::sync::Mutex<()>,
}

/// Serves the agent's API on `cfg.listen` until `stop`.
pub async fn run(cfg: Arc<AgentConfig>, stop: CancellationToken) -> Result<(), AgentError> {
    let addr = cfg.listen;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| AgentError::Listen { addr, source })?;
    tracing::info!(
        node = %cfg.node,
        data_dir = %cfg.data_dir.display(),
        %addr,
        token = cfg.token.is_some(),
        "agent listening"
    );
    axum::serve(listener, router(cfg))
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
        .map_err(AgentError::Serve)?;
    tracing::info!("agent stopped");
    Ok(())
}

/// The agent's routes.
pub fn router(cfg: Arc<AgentConfig>) -> Router {
    let agent = Arc::new(Agent { cfg, op: tokio::sync::Mutex::new(()) });
    Router::new()
        .route("/v1/node", get(node))
        .route("/v1/stop", post(stop))
        .route("/v1/start", post(start))
        .fallback(|uri: Uri| async move { AgentError::NoRoute(StatusCode::NOT_FOUND, format!("no endpoint {uri}")) })
        .method_not_allowed_fallback(|uri: Uri| async move {
            AgentError::NoRoute(StatusCode::METHOD_NOT_ALLOWED, format!("{uri} does not take this method"))
        })
        .with_state(agent)
}

async fn node(State(agent): State<Arc<Agent>>) -> Result<Json<NodeReport>, AgentError> {
    let cfg = agent.cfg.clone();
    blocking(move || Ok(ops::report(&cfg.node, &cfg.data_dir))).await.map(Json)
}

/// `POST /v1/stop` takes no parameters: `{}` (or an empty body).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StopRequest {}

async fn stop(State(agent): State<Arc<Agent>>, headers: HeaderMap, body: Bytes) -> Result<Json<StopReply>, AgentError> {
    authorize(&agent.cfg, &headers)?;
    let StopRequest {} = parse(&body)?;
    let _one_at_a_time = agent.op.lock().await;
    let started = Instant::now();
    let dir = agent.cfg.data_dir.clone();
    let result = blocking(move || ops::stop(&dir)).await;
    let ms = started.elapsed().as_millis() as u64;
    match &result {
        Ok(r) => tracing::info!(
            stopped_now = r.stopped_now,
            state = %r.control.state,
            checkpoint = %r.control.checkpoint,
            ms,
            "stop"
        ),
        Err(e) => tracing::warn!(error = %e, ms, "stop failed"),
    }
    result.map(Json)
}

async fn start(
    State(agent): State<Arc<Agent>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<StartReply>, AgentError> {
    authorize(&agent.cfg, &headers)?;
    let req: StartRequest = parse(&body)?;
    let _one_at_a_time = agent.op.lock().await;
    let started = Instant::now();
    let standby = req.standby.as_ref().map(|s| s.slot.clone());
    let cfg = agent.cfg.clone();
    let result = blocking(move || ops::start(&cfg.node, &cfg.data_dir, &req)).await;
    let ms = started.elapsed().as_millis() as u64;
    match &result {
        Ok(r) => tracing::info!(started_now = r.started_now, in_recovery = r.in_recovery, slot = ?standby, ms, "start"),
        Err(e) => tracing::warn!(error = %e, slot = ?standby, ms, "start failed"),
    }
    result.map(Json)
}

/// Checks the bearer token of a mutating request.
fn authorize(cfg: &AgentConfig, headers: &HeaderMap) -> Result<(), AgentError> {
    let given = headers.get(axum::http::header::AUTHORIZATION).map(|v| v.as_bytes());
    if tandem_core::bearer_allows(cfg.token.as_deref(), given) {
        Ok(())
    } else {
        tracing::warn!("request without a valid bearer token refused");
        Err(AgentError::Unauthorized)
    }
}

/// A JSON request body; an empty one is `{}`.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, AgentError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) { b"{}" } else { body };
    serde_json::from_slice(body).map_err(|e| AgentError::BadRequest(e.to_string()))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AgentError> + Send + 'static,
) -> Result<T, AgentError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| AgentError::Task(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_parsed_strictly_and_tokens_checked() {
        assert!(parse::<StopRequest>(b"").is_ok());
        assert!(parse::<StopRequest>(b" {} ").is_ok());
        assert!(matches!(parse::<StopRequest>(b"{\"force\": true}"), Err(AgentError::BadRequest(_))));
        assert!(matches!(parse::<StartRequest>(b"{\"standby\": "), Err(AgentError::BadRequest(_))));
        assert_eq!(parse::<StartRequest>(b"").unwrap(), StartRequest::default());

        let cfg = AgentConfig {
            node: "pg1".parse().unwrap(),
            data_dir: "/data".into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            token: Some("secret".into()),
        };
        let mut headers = HeaderMap::new();
        assert!(matches!(authorize(&cfg, &headers), Err(AgentError::Unauthorized)));
        headers.insert("authorization", "Bearer wrong".parse().unwrap());
        assert_eq!(authorize(&cfg, &headers).unwrap_err().status(), StatusCode::UNAUTHORIZED);
        headers.insert("authorization", "Bearer secret".parse().unwrap());
        authorize(&cfg, &headers).unwrap();
        authorize(&AgentConfig { token: None, ..cfg }, &HeaderMap::new()).unwrap();
    }
}
