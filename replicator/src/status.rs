//! Replication status: what operators and the witness group read.
//!
//! Place in the data flow: beside it. Every apply task reports how far its
//! database's change log goes and what its replica has applied
//! ([`ReplicaReporter`]); an HTTP endpoint serves
//! `GET /status` (JSON, per replica and database: applied LSN, lag in bytes
//! and seconds, apply rate, mode) and `GET /metrics` (Prometheus text,
//! `tandem_replicator_*` series).
//!
//! Lag in bytes is the distance between the newest commit in the database's
//! change log and the replica's applied commit. Lag in seconds is how long
//! the replica has been behind: the time since it last had everything the
//! change log held (0 when it has), measured on this host's monotonic clock,
//! so it needs no clock agreement with the primary.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tandem_core::Lsn;
use tokio_util::sync::CancellationToken;

type Labels = Vec<(String, String)>;

/// Shared, live replication status of one replicator process.
pub struct StatusBoard {
    mode: String,
    state: Mutex<BoardState>,
    metrics: Metrics,
}

#[derive(Default)]
struct BoardState {
    /// Newest commit LSN per database (its change log's end).
    sources: BTreeMap<String, Lsn>,
    replicas: BTreeMap<(String, String), ReplicaState>,
}

struct ReplicaState {
    applied_lsn: Lsn,
    /// Since when the replica lacks a commit the change log holds.
    behind_since: Option<Instant>,
    applied_transactions: u64,
    window_start: Instant,
    window_count: u64,
    rate: f64,
    last_error: Option<String>,
}

struct Metrics {
    registry: Registry,
    source_lsn: Gauge,
    sync_mode: Gauge,
    applied_lsn: Family<Labels, Gauge>,
    lag_bytes: Family<Labels, Gauge>,
    lag_seconds: Family<Labels, Gauge<f64, AtomicU64>>,
    apply_rate: Family<Labels, Gauge<f64, AtomicU64>>,
    applied_transactions: Family<Labels, Counter>,
    apply_errors: Family<Labels, Counter>,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tandem_replicator");
        let m = Metrics {
            source_lsn: Gauge::default(),
            sync_mode: Gauge::default(),
            applied_lsn: Family::default(),
            lag_bytes: Family::default(),
            lag_seconds: Family::default(),
            apply_rate: Family::default(),
            applied_transactions: Family::default(),
            apply_errors: Family::default(),
            registry: Registry::default(),
        };
        registry.register("source_lsn", "Newest LSN seen from the primary (as a byte position)", m.source_lsn.clone());
        registry.register(
            "sync_mode",
            "1 when commits wait for replicas (sync mode), 0 in async mode",
            m.sync_mode.clone(),
        );
        registry.register(
            "applied_lsn",
            "Commit LSN applied on the replica database (as a byte position)",
            m.applied_lsn.clone(),
        );
        registry.register(
            "lag_bytes",
            "WAL bytes between the primary's newest commit and the replica",
            m.lag_bytes.clone(),
        );
        registry.register(
            "lag_seconds",
            "Primary commit-time distance between the newest and the applied transaction",
            m.lag_seconds.clone(),
        );
        registry.register("apply_rate", "Transactions applied per second, recent", m.apply_rate.clone());
        registry.register(
            "applied_transactions",
            "Transactions applied on the replica database",
            m.applied_transactions.clone(),
        );
        registry.register("apply_errors", "Failed apply attempts on the replica database", m.apply_errors.clone());
        Metrics { registry, ..m }
    }
}

/// One replica database's line in `GET /status`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ReplicaStatus {
    /// Replica name (from `--replica NAME=DSN`).
    pub replica: String,
    /// Database on that replica.
    pub database: String,
    /// Newest commit LSN applied there.
    pub applied_lsn: Lsn,
    /// WAL bytes it is behind the primary's newest commit.
    pub lag_bytes: u64,
    /// Seconds (primary commit time) it is behind.
    pub lag_seconds: f64,
    /// Recent transactions per second applied.
    pub apply_rate: f64,
    /// Transactions applied since this process started.
    pub applied_transactions: u64,
    /// The last apply error, cleared by the next success.
    pub last_error: Option<String>,
}

/// The whole `GET /status` answer.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StatusReport {
    /// `sync` or `async`.
    pub mode: String,
    /// Newest commit LSN over all databases.
    pub source_lsn: Lsn,
    /// One entry per (replica, database).
    pub replicas: Vec<ReplicaStatus>,
}

/// Handle an apply task reports through, for one (replica, database).
#[derive(Clone)]
pub struct ReplicaReporter {
    board: Arc<StatusBoard>,
    key: (String, String),
    labels: Labels,
}

impl StatusBoard {
    /// A board for a replicator running in `mode` (`"sync"` or `"async"`).
    pub fn new(mode: impl Into<String>) -> Arc<StatusBoard> {
        let mode = mode.into();
        let metrics = Metrics::new();
        metrics.sync_mode.set(i64::from(mode == "sync"));
        Arc::new(StatusBoard { mode, state: Mutex::new(BoardState::default()), metrics })
    }

    fn state(&self) -> MutexGuard<'_, BoardState> {
        // A panic while holding the lock cannot leave the plain numbers inconsistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers an apply task and returns its reporting handle.
    pub fn replica(self: &Arc<Self>, replica: &str, database: &str) -> ReplicaReporter {
        let key = (replica.to_owned(), database.to_owned());
        self.state().replicas.entry(key.clone()).or_insert_with(|| ReplicaState {
            applied_lsn: Lsn::ZERO,
            behind_since: None,
            applied_transactions: 0,
            window_start: Instant::now(),
            window_count: 0,
            rate: 0.0,
            last_error: None,
        });
        ReplicaReporter {
            board: self.clone(),
            labels: vec![("replica".to_owned(), replica.to_owned()), ("database".to_owned(), database.to_owned())],
            key,
        }
    }

    /// The change log of `database` holds commits up to `lsn`.
    pub fn record_source(&self, database: &str, lsn: Lsn) {
        let mut st = self.state();
        let entry = st.sources.entry(database.to_owned()).or_insert(Lsn::ZERO);
        if lsn <= *entry {
            return;
        }
        *entry = lsn;
        let now = Instant::now();
        for ((_, db), r) in st.replicas.iter_mut() {
            if db == database && r.applied_lsn < lsn && r.behind_since.is_none() {
                r.behind_since = Some(now);
            }
        }
    }

    /// The current status.
    pub fn report(&self) -> StatusReport {
        let st = self.state();
        let now = Instant::now();
        let replicas = st
            .replicas
            .iter()
            .map(|((replica, database), r)| {
                let source = st.sources.get(database).copied().unwrap_or(Lsn::ZERO);
                ReplicaStatus {
                    replica: replica.clone(),
                    database: database.clone(),
                    applied_lsn: r.applied_lsn,
                    lag_bytes: source.bytes_since(r.applied_lsn),
                    lag_seconds: r.behind_since.map_or(0.0, |t| now.duration_since(t).as_secs_f64()),
                    apply_rate: current_rate(r, now),
                    applied_transactions: r.applied_transactions,
                    last_error: r.last_error.clone(),
                }
            })
            .collect();
        StatusReport {
            mode: self.mode.clone(),
            source_lsn: st.sources.values().copied().max().unwrap_or(Lsn::ZERO),
            replicas,
        }
    }

    /// Prometheus text exposition of the current status.
    pub fn metrics_text(&self) -> String {
        let report = self.report();
        let m = &self.metrics;
        m.source_lsn.set(report.source_lsn.0 as i64);
        for r in &report.replicas {
            let labels = vec![("replica".to_owned(), r.replica.clone()), ("database".to_owned(), r.database.clone())];
            m.applied_lsn.get_or_create(&labels).set(r.applied_lsn.0 as i64);
            m.lag_bytes.get_or_create(&labels).set(r.lag_bytes as i64);
            m.lag_seconds.get_or_create(&labels).set(r.lag_seconds);
            m.apply_rate.get_or_create(&labels).set(r.apply_rate);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &m.registry);
        out
    }
}

/// Rate over the current window; decays towards 0 when nothing is applied.
fn current_rate(r: &ReplicaState, now: Instant) -> f64 {
    let elapsed = now.duration_since(r.window_start);
    if elapsed > Duration::from_secs(2) {
        r.window_count as f64 / elapsed.as_secs_f64()
    } else {
        r.rate
    }
}

impl ReplicaReporter {
    /// `txns` more transactions were applied, up to commit `lsn`.
    pub fn record_applied(&self, lsn: Lsn, txns: u64) {
        {
            let mut guard = self.board.state();
            let st = &mut *guard;
            let source = st.sources.get(&self.key.1).copied().unwrap_or(Lsn::ZERO);
            let Some(r) = st.replicas.get_mut(&self.key) else {
                return;
            };
            r.applied_lsn = r.applied_lsn.max(lsn);
            if r.applied_lsn >= source {
                r.behind_since = None;
            }
            r.applied_transactions += txns;
            r.window_count += txns;
            r.last_error = None;
            let now = Instant::now();
            let elapsed = now.duration_since(r.window_start);
            if elapsed >= Duration::from_secs(1) {
                r.rate = r.window_count as f64 / elapsed.as_secs_f64();
                r.window_start = now;
                r.window_count = 0;
            }
        }
        self.board.metrics.applied_transactions.get_or_create(&self.labels).inc_by(txns);
    }

    /// The change log of this reporter's database holds commits up to `lsn`.
    pub fn record_source(&self, lsn: Lsn) {
        self.board.record_source(&self.key.1, lsn);
    }

    /// The replica's progress as read from its progress row (at start).
    pub fn record_position(&self, lsn: Lsn) {
        let mut st = self.board.state();
        if let Some(r) = st.replicas.get_mut(&self.key) {
            r.applied_lsn = r.applied_lsn.max(lsn);
        }
    }

    /// An apply attempt failed (it will be retried).
    pub fn record_error(&self, error: &str) {
        {
            let mut st = self.board.state();
            if let Some(r) = st.replicas.get_mut(&self.key) {
                r.last_error = Some(error.to_owned());
            }
        }
        self.board.metrics.apply_errors.get_or_create(&self.labels).inc();
    }
}

/// The HTTP routes (`/status`, `/metrics`) over `board`.
pub fn router(board: Arc<StatusBoard>) -> Router {
    Router::new().route("/status", get(status_handler)).route("/metrics", get(metrics_handler)).with_state(board)
}

async fn status_handler(State(board): State<Arc<StatusBoard>>) -> Json<StatusReport> {
    Json(board.report())
}

async fn metrics_handler(State(board): State<Arc<StatusBoard>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], board.metrics_text())
}

/// Serves the status endpoint on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    board: Arc<StatusBoard>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "status endpoint listening");
    }
    axum::serve(listener, router(board)).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_lag_and_progress() {
        let board = StatusBoard::new("sync");
        let r = board.replica("r1", "app");
        board.record_source("app", Lsn(1000));
        r.record_applied(Lsn(400), 2);
        std::thread::sleep(Duration::from_millis(20));
        let rep = board.report();
        assert_eq!(rep.mode, "sync");
        let s = &rep.replicas[0];
        assert_eq!((s.applied_lsn, s.lag_bytes, s.applied_transactions), (Lsn(400), 600, 2));
        assert!(s.lag_seconds >= 0.02, "{}", s.lag_seconds);
        r.record_applied(Lsn(1000), 1);
        let s = &board.report().replicas[0];
        assert_eq!((s.lag_bytes, s.lag_seconds), (0, 0.0));
    }

    #[test]
    fn metrics_have_the_prefix_and_labels() {
        let board = StatusBoard::new("async");
        let r = board.replica("r1", "app");
        r.record_applied(Lsn(7), 3);
        r.record_error("boom");
        let text = board.metrics_text();
        assert!(
            text.contains("tandem_replicator_applied_transactions_total{replica=\"r1\",database=\"app\"} 3"),
            "{text}"
        );
        assert!(text.contains("tandem_replicator_sync_mode 0"), "{text}");
        assert!(text.contains("tandem_replicator_apply_errors_total"), "{text}");
        assert!(text.contains("# EOF"), "{text}");
    }
}
