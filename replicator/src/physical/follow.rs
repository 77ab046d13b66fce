//! Which primary the relay streams from, and when it must not stream at all.
//!
//! Place in the data flow: witness group → **here** → the receiver's supervisor
//! ([`super::receiver::supervise`]). Without a group the relay streams from its configured
//! primary forever. With one, the group decides: the relay streams from the primary of the
//! newest epoch, stops while a failover is in progress, and after a failover streams from
//! the new primary (which the failover gave a slot for the relay). A restarted relay asks
//! the group before it streams, so it never goes back to an old primary.
//!
//! The failover's leader fences the relay directly (`POST /fence {epoch}`): the receiver is
//! stopped before the answer, which carries the end of the WAL the relay holds — the old
//! primary has lost this quorum member, and the catch-up target includes everything the
//! relay acknowledged. A fence holds until the group publishes a newer epoch.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use tandem_core::Lsn;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::receiver::SharedReceiverState;

/// What the receiver should do now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Target {
    /// The group's epoch (0 without a group).
    pub epoch: u64,
    /// The primary to stream from (`host`, `port`); none: the configured DSN as it is.
    pub primary: Option<(String, u16)>,
    /// Do not stream: a failover is in progress.
    pub fenced: bool,
}

/// The relay's source, shared by the group follower, the fence endpoint and the supervisor.
pub struct Source {
    tx: watch::Sender<Target>,
    /// A leader's fence holds until an epoch newer than this one is published.
    fenced_for: std::sync::Mutex<Option<u64>>,
}

impl Source {
    /// A source starting at `initial`.
    pub fn new(initial: Target) -> Arc<Source> {
        Arc::new(Source { tx: watch::channel(initial).0, fenced_for: std::sync::Mutex::new(None) })
    }

    /// Watches the target.
    pub fn subscribe(&self) -> watch::Receiver<Target> {
        self.tx.subscribe()
    }

    /// The target now.
    pub fn current(&self) -> Target {
        self.tx.borrow().clone()
    }

    fn fence(&self, epoch: u64) {
        *self.fenced_for.lock().unwrap_or_else(|p| p.into_inner()) = Some(epoch);
        self.tx.send_modify(|t| t.fenced = true);
    }

    /// Applies what the group says, unless a leader's fence still holds for that epoch.
    fn follow(&self, target: Target) {
        let held = *self.fenced_for.lock().unwrap_or_else(|p| p.into_inner());
        if held.is_some_and(|e| target.epoch <= e) {
            return;
        }
        self.tx.send_if_modified(|t| {
            let changed = *t != target;
            *t = target;
            changed
        });
    }
}

/// `configured` with its host and port replaced by `primary`'s (when given): the same login,
/// database and TLS settings, towards the group's primary.
pub fn retarget(configured: &tokio_postgres::Config, primary: Option<&(String, u16)>) -> tokio_postgres::Config {
    let Some((host, port)) = primary else { return configured.clone() };
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(host).port(*port);
    if let Some(u) = configured.get_user() {
        cfg.user(u);
    }
    if let Some(p) = configured.get_password() {
        cfg.password(p);
    }
    if let Some(d) = configured.get_dbname() {
        cfg.dbname(d);
    }
    if let Some(o) = configured.get_options() {
        cfg.options(o);
    }
    if let Some(t) = configured.get_connect_timeout() {
        cfg.connect_timeout(*t);
    }
    cfg.ssl_mode(configured.get_ssl_mode());
    cfg
}

/// The group's view → a target. Parsed as plain JSON (the replicator does not link the
/// witness crate).
fn target_of(state: &serde_json::Value) -> Option<Target> {
    let epoch = state["epoch"].as_u64()?;
    // A failover stops the relay until its new epoch; a planned switchover does not: the
    // relay keeps streaming from the old primary until it stops, its final WAL included.
    if !state["operation"].is_null() && state["operation"]["kind"] != "switchover" {
        return Some(Target { epoch, primary: None, fenced: true });
    }
    let primary = state["primary"].as_str()?;
    let addr = state["nodes"][primary]["addr"].as_str()?;
    let (host, port) = addr.rsplit_once(':')?;
    Some(Target { epoch, primary: Some((host.to_owned(), port.parse().ok()?)), fenced: false })
}

/// Asks the group (any witness) once, for the relay's start.
pub async fn ask(witnesses: &[String]) -> Option<Target> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().ok()?;
    for addr in witnesses {
        let Ok(resp) = http.get(format!("http://{addr}/v1/cluster")).send().await else { continue };
        let Ok(view) = resp.json::<serde_json::Value>().await else { continue };
        if view["state"]["nodes"].as_object().is_some_and(|n| !n.is_empty()) {
            if let Some(t) = target_of(&view["state"]) {
                return Some(t);
            }
        }
    }
    None
}

/// Follows the group's state (long poll) until `stop`.
pub async fn watch_group(source: Arc<Source>, witnesses: Vec<String>, stop: CancellationToken) {
    let Ok(http) = reqwest::Client::builder().timeout(Duration::from_secs(35)).build() else { return };
    let mut revision: Option<u64> = None;
    let mut next = 0usize;
    loop {
        let addr = &witnesses[next % witnesses.len().max(1)];
        let url = match revision {
            Some(r) => format!("http://{addr}/v1/cluster/watch?revision={r}&timeout_ms=30000"),
            None => format!("http://{addr}/v1/cluster"),
        };
        let answer = tokio::select! {
            _ = stop.cancelled() => return,
            r = http.get(&url).send() => r,
        };
        let view = match answer {
            Ok(r) if r.status().is_success() => r.json::<serde_json::Value>().await.ok(),
            _ => None,
        };
        let Some(view) = view else {
            next += 1;
            revision = None;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            continue;
        };
        revision = view["state"]["revision"].as_u64();
        if let Some(t) = target_of(&view["state"]) {
            if t != source.current() {
                tracing::info!(epoch = t.epoch, primary = ?t.primary, fenced = t.fenced, "the witness group moves the relay");
            }
            source.follow(t);
        }
    }
}

/// `POST /fence {"epoch": E}`.
#[derive(Debug, Deserialize)]
struct FenceRequest {
    epoch: u64,
}

/// What the fence endpoint needs.
#[derive(Clone)]
pub struct FenceState {
    /// The source to fence.
    pub source: Arc<Source>,
    /// The receiver's state (to wait until it stopped).
    pub receiver: SharedReceiverState,
    /// The relay's slot (its quorum name).
    pub slot: String,
    /// The relay's WAL directory.
    pub wal_dir: std::path::PathBuf,
    /// Bytes per WAL segment.
    pub seg_size: u64,
    /// The bearer token a fence must carry, if the cluster has one.
    pub token: Option<String>,
}

/// The fence route.
pub fn router(state: FenceState) -> Router {
    Router::new().route("/fence", post(fence_handler)).with_state(state)
}

async fn fence_handler(
    State(st): State<FenceState>,
    headers: HeaderMap,
    Json(req): Json<FenceRequest>,
) -> Result<Json<serde_json::Value>, (StatusCode, String)> {
    if !tandem_core::bearer_allows(st.token.as_deref(), headers.get("authorization").map(|v| v.as_bytes())) {
        return Err((StatusCode::UNAUTHORIZED, "a valid bearer token is required".into()));
    }
    st.source.fence(req.epoch);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    while st.receiver.lock().map(|s| s.running).unwrap_or(false) {
        if tokio::time::Instant::now() >= deadline {
            return Err((StatusCode::SERVICE_UNAVAILABLE, "the receiver did not stop".into()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // What a standby must have replayed to hold all the relay holds: just past the start of
    // its last record (replay positions are record ends).
    let last = super::waldump::last_record_start(&st.wal_dir, st.seg_size)
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("reading the end of the relay's WAL: {e}")))?;
    let flushed = last.map(|l| Lsn(l.0 + 1));
    tracing::warn!(epoch = req.epoch, flushed = ?flushed, "fenced by the witness group's leader: not streaming until a new epoch");
    Ok(Json(serde_json::json!({ "slot": st.slot, "flushed": flushed.map(|l| l.to_string()) })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_group_state_decides_and_a_fence_holds_until_a_newer_epoch() {
        let state = serde_json::json!({"epoch": 1, "operation": null, "primary": "pg1",
            "nodes": {"pg1": {"addr": "127.0.0.1:5432"}}});
        let t = target_of(&state).unwrap();
        assert_eq!(t, Target { epoch: 1, primary: Some(("127.0.0.1".into(), 5432)), fenced: false });
        let failing = serde_json::json!({"epoch": 1, "operation": {"phase": "fencing"}, "primary": "pg1", "nodes": {}});
        assert!(target_of(&failing).unwrap().fenced);
        let switching = serde_json::json!({"epoch": 1, "operation": {"kind": "switchover", "phase": "pausing"},
            "primary": "pg1", "nodes": {"pg1": {"addr": "127.0.0.1:5432"}}});
        assert_eq!(target_of(&switching), Some(t.clone()), "a switchover leaves the relay streaming");

        let source = Source::new(t.clone());
        source.fence(1);
        source.follow(t.clone());
        assert!(source.current().fenced, "the same epoch does not lift a leader's fence");
        let next = Target { epoch: 2, primary: Some(("127.0.0.1".into(), 5433)), fenced: false };
        source.follow(next.clone());
        assert_eq!(source.current(), next);
    }
}
