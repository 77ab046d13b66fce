//! Calling a node's agent (`tandem agent`): report, stop, start its PostgreSQL server.
//!
//! Place in the flow: the witness leader (a switchover) → **`http://AGENT/v1/...`** → the
//! agent on the node's host → signals / pg_ctl. A switchover stops the old primary cleanly
//! through [`AgentClient::stop`] (the reply's checkpoint is the end of its WAL) and later
//! starts it as a standby of the new primary with [`AgentClient::start`]. Bodies are
//! [`tandem_core::agent`]'s.

use std::time::Duration;

use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use tandem_core::agent::{AgentErrorBody, NodeReport, StartReply, StartRequest, StopReply};

/// Bound on a stop or start: the agent allows a fast shutdown 60 s and `pg_ctl start` 60 s
/// (crash recovery included), plus a margin for the rest.
pub const LONG_TIMEOUT: Duration = Duration::from_secs(75);

/// Why a call to an agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentClientError {
    /// No answer: connection refused, timed out, cut off.
    #[error("agent at {addr}: {source}")]
    Transport {
        /// The agent's `host:port`.
        addr: String,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },
    /// The agent answered with an error status (409: the server's state forbids it, 401: the
    /// token, 400: the request, 5xx: the operation failed).
    #[error("agent at {addr}: HTTP {status}: {error}")]
    Status {
        /// The agent's `host:port`.
        addr: String,
        /// The HTTP status.
        status: StatusCode,
        /// The agent's `error` text (or the raw body when it sent no JSON error).
        error: String,
    },
    /// The agent answered 2xx with a body that is not the expected JSON.
    #[error("agent at {addr}: unreadable answer: {detail}")]
    Decode {
        /// The agent's `host:port`.
        addr: String,
        /// What could not be read.
        detail: String,
    },
}

impl AgentClientError {
    /// The HTTP status of an error answer (none when there was no answer).
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            AgentClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client of one node's agent.
#[derive(Clone, Debug)]
pub struct AgentClient {
    http: reqwest::Client,
    addr: String,
    token: Option<String>,
    timeout: Duration,
}

impl AgentClient {
    /// A client of the agent at `addr` (`host:port`), sending `token` as the bearer token.
    /// `timeout` bounds [`AgentClient::node`] and every connection attempt; a stop or start
    /// may take up to [`LONG_TIMEOUT`] (or `timeout` when that is longer).
    pub fn new(addr: &str, token: Option<&str>, timeout: Duration) -> Result<AgentClient, AgentClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .build()
            .map_err(|source| AgentClientError::Transport { addr: addr.to_owned(), source })?;
        Ok(AgentClient { http, addr: addr.to_owned(), token: token.map(str::to_owned), timeout })
    }

    /// The agent's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `GET /v1/node`: the server as its host sees it.
    pub async fn node(&self) -> Result<NodeReport, AgentClientError> {
        self.call(self.http.get(self.url("node")).timeout(self.timeout)).await
    }

    /// `POST /v1/stop`: a clean fast shutdown (409 when the server crashed instead).
    pub async fn stop(&self) -> Result<StopReply, AgentClientError> {
        let req = self.http.post(self.url("stop")).json(&serde_json::json!({}));
        self.call(req.timeout(self.long())).await
    }

    /// `POST /v1/start`: as configured, or as a standby of `req.standby`'s primary.
    pub async fn start(&self, req: &StartRequest) -> Result<StartReply, AgentClientError> {
        self.call(self.http.post(self.url("start")).json(req).timeout(self.long())).await
    }

    fn url(&self, endpoint: &str) -> String {
        format!("http://{}/v1/{endpoint}", self.addr)
    }

    fn long(&self) -> Duration {
        LONG_TIMEOUT.max(self.timeout)
    }

    async fn call<T: DeserializeOwned>(&self, mut req: reqwest::RequestBuilder) -> Result<T, AgentClientError> {
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let transport = |source| AgentClientError::Transport { addr: self.addr.clone(), source };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(transport)?;
        if !status.is_success() {
            let error = serde_json::from_slice::<AgentErrorBody>(&body)
                .map(|b| b.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).trim().to_owned());
            return Err(AgentClientError::Status { addr: self.addr.clone(), status, error });
        }
        serde_json::from_slice(&body)
            .map_err(|e| AgentClientError::Decode { addr: self.addr.clone(), detail: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;
    use axum::routing::{get, post};
    use axum::{Json, Router};

    /// A stand-in agent: `/v1/node` answers, `/v1/stop` refuses with the agent's error body,
    /// `/v1/start` echoes whether the token came and answers plain text on a bad one.
    async fn fake_agent() -> String {
        let app = Router::new()
            .route(
                "/v1/node",
                get(|| async {
                    Json(serde_json::json!({"node": "pg1", "data_dir": "/d", "running": true, "standby_signal": false,
                        "control": {"state": "in production", "checkpoint": "0/3000028", "checkpoint_tli": 1, "redo": null}}))
                }),
            )
            .route(
                "/v1/stop",
                post(|| async {
                    (axum::http::StatusCode::CONFLICT, Json(serde_json::json!({"error": "not shut down cleanly"})))
                }),
            )
            .route(
                "/v1/start",
                post(|headers: HeaderMap, Json(req): Json<StartRequest>| async move {
                    if headers.get("authorization").is_none_or(|v| v != "Bearer t") {
                        return Err((axum::http::StatusCode::UNAUTHORIZED, "no token"));
                    }
                    Ok(Json(StartReply { started_now: true, in_recovery: req.standby.is_some() }))
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    #[tokio::test]
    async fn answers_and_errors_carry_the_agents_words() {
        let addr = fake_agent().await;
        let with_token = AgentClient::new(&addr, Some("t"), Duration::from_secs(5)).unwrap();
        let report = with_token.node().await.unwrap();
        assert!(report.running && report.control.unwrap().checkpoint == "0/3000028".parse().unwrap());

        let err = with_token.stop().await.unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::CONFLICT));
        assert!(err.to_string().contains("not shut down cleanly"), "{err}");

        let reply = with_token.start(&StartRequest::default()).await.unwrap();
        assert!(reply.started_now && !reply.in_recovery);
        let without = AgentClient::new(&addr, None, Duration::from_secs(5)).unwrap();
        let err = without.start(&StartRequest::default()).await.unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));
        assert!(err.to_string().contains("no token"), "{err}");

        let nobody = AgentClient::new("127.0.0.1:1", None, Duration::from_millis(500)).unwrap();
        assert!(matches!(nobody.node().await, Err(AgentClientError::Transport { .. })));
    }
}
